"""The `pixelnet preset FILE` command: a preset's params as `dvc exp run` options.

A preset (pipeline/presets/*.yaml) holds the params that differ from params.yaml, by section.  The command
checks that params.yaml with them applied is valid, then prints them as `-S section.key=value` words for
`dvc exp run $(pixelnet preset pipeline/presets/cifar10.yaml)`, so that DVC records them as any other params.
Errors name the file at fault: the preset's own, or params.yaml's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pixelnet.command import run_command
from pixelnet.config import SECTIONS, Params, apply_overrides, load_params, read_yaml
from pixelnet.errors import ConfigError, PixelNetError


def preset_overrides(path: Path) -> list[str]:
    """The preset at `path` as `section.key=value` strings (values in YAML's flow form, as DVC parses them)."""
    try:
        raw = read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise PixelNetError(f"preset {path} not found: presets are in pipeline/presets/") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise PixelNetError(f"preset {path} is not valid YAML ({where}{problem}): fix it") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PixelNetError(f"preset {path} must map sections ({', '.join(SECTIONS)}) to keys and values")
    out = []
    for section, values in raw.items():
        if section not in SECTIONS:
            raise PixelNetError(f"preset {path}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        for key, value in values.items():
            word = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()  # as DVC reads -S
            if any(c.isspace() or c in "'\"$`\\;&|<>*?" for c in word):
                raise PixelNetError(f"preset {path}: {section}.{key} = {value!r} cannot be passed as one shell word; "
                                    "use a value without spaces or shell characters")
            out.append(f"{section}.{key}={word}")
    return out


def command(
    preset: Annotated[Path, typer.Argument(help="a preset file, e.g. pipeline/presets/cifar10.yaml")],
    params: Annotated[Path, typer.Option(help="the params file the preset changes")] = Path("params.yaml"),
) -> None:
    """Print a preset's params as `-S section.key=value` options for `dvc exp run`."""
    overrides = preset_overrides(preset)
    base = load_params(params)  # params.yaml's own faults name params.yaml; what is left is the preset's
    try:
        Params.from_mapping(apply_overrides(base.model_dump(), overrides))
    except ConfigError as e:
        raise ConfigError(f"preset {preset}: {e}; fix or remove that line of the preset") from None
    typer.echo(" ".join(f"-S {o}" for o in overrides))


if __name__ == "__main__":
    run_command(command, prog="pixelnet preset")
