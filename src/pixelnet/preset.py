"""The `pixelnet preset FILE` command: a preset's params as `dvc exp run` options.

A preset (pipeline/presets/*.yaml) holds the params that differ from
params.yaml, by section.  `pixelnet preset FILE` checks that params.yaml with
them applied is a valid set of params, then prints them as `-S section.key=value`
words on one line, for

    dvc exp run $(pixelnet preset pipeline/presets/cifar10.yaml)

so that DVC records the experiment's params as it does any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixelnet.command import run_command
from pixelnet.config import SECTIONS, load_params, read_yaml
from pixelnet.errors import PixelNetError


def preset_overrides(path: Path) -> list[str]:
    """The preset at `path` as `section.key=value` strings (values in YAML's flow form, as DVC parses them)."""
    try:
        raw = read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise PixelNetError(f"preset {path} not found: presets are in pipeline/presets/") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PixelNetError(f"preset {path} must map sections ({', '.join(SECTIONS)}) to keys and values")
    out = []
    for section, values in raw.items():
        if section not in SECTIONS:
            raise PixelNetError(f"preset {path}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        for key, value in values.items():
            word = _scalar(value)
            if any(c.isspace() or c in "'\"$`\\;&|<>*?" for c in word):
                raise PixelNetError(f"preset {path}: {section}.{key} = {value!r} cannot be passed as one shell word; "
                                    "use a value without spaces or shell characters")
            out.append(f"{section}.{key}={word}")
    return out


def _scalar(value) -> str:
    """`value` as YAML reads it back (DVC parses -S values as YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, (int, float)) else str(value)


def command(
    preset: Annotated[Path, typer.Argument(help="a preset file, e.g. pipeline/presets/cifar10.yaml")],
    params: Annotated[Path, typer.Option(help="the params file the preset changes")] = Path("params.yaml"),
) -> None:
    """Print a preset's params as `-S section.key=value` options for `dvc exp run`."""
    overrides = preset_overrides(preset)
    load_params(params, overrides)  # the preset must give valid params: say so here, not in the middle of a run
    typer.echo(" ".join(f"-S {o}" for o in overrides))


if __name__ == "__main__":
    run_command(command, prog="pixelnet preset")
