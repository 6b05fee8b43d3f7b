"""The `pixelnet preset FILE` command: a preset's params as `dvc exp run` options.

A preset (pipeline/presets/*.yaml) holds the params that differ from
params.yaml, by section.  `pixelnet preset FILE` checks that params.yaml with
them applied is a valid set of params, then prints them as `-S section.key=value`
words on one line, for

    dvc exp run $(pixelnet preset pipeline/presets/cifar10.yaml)

so that DVC records the experiment's params as it does any other.

Errors name the file at fault: a preset that is not YAML, or that sets a
parameter params.yaml does not have or a value it refuses, is the preset's
error; params.yaml's own faults are reported as params.yaml's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pixelnet.command import run_command
from pixelnet.config import SECTIONS, apply_overrides, load_params, params_from_mapping, read_yaml
from pixelnet.errors import ConfigError, PixelNetError


def preset_overrides(path: Path) -> list[str]:
    """The preset at `path` as `section.key=value` strings (values in YAML's flow form, as DVC parses them)."""
    try:
        raw = read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise PixelNetError(f"preset {path} not found: presets are in pipeline/presets/") from None
    except yaml.YAMLError as e:
        raise PixelNetError(f"preset {path} is not valid YAML ({_yaml_problem(e)}): fix it") from None
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


def _yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what the YAML error is, in one line."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or " ".join(str(e).split()))


def _scalar(value) -> str:
    """`value` as YAML reads it back (DVC parses -S values as YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, (int, float)) else str(value)


def check_preset(preset: Path, overrides: list[str], params: Path) -> None:
    """Refuse a preset that does not give valid params, naming the preset (params.yaml's faults name params.yaml)."""
    load_params(params)
    raw = read_yaml(Path(params).read_text())
    try:
        params_from_mapping(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"preset {preset}: {e}; fix or remove that line of the preset") from None


def command(
    preset: Annotated[Path, typer.Argument(help="a preset file, e.g. pipeline/presets/cifar10.yaml")],
    params: Annotated[Path, typer.Option(help="the params file the preset changes")] = Path("params.yaml"),
) -> None:
    """Print a preset's params as `-S section.key=value` options for `dvc exp run`."""
    overrides = preset_overrides(preset)
    check_preset(preset, overrides, params)  # the preset must give valid params: say so here, not in a run
    typer.echo(" ".join(f"-S {o}" for o in overrides))


if __name__ == "__main__":
    run_command(command, prog="pixelnet preset")
