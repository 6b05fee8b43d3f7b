"""Frozen config dataclasses built from plain mappings, strictly.

`from_mapping(Cls, mapping)` rejects unknown keys, checks each value against
the field's annotation (int, float, str, bool, `Literal[...]`, unions of them, `X | None`) and
lets the class's `__post_init__` check ranges through `require`.  Every
message names the parameter as `section.key`, so a typo in params.yaml is an
error that points at the line to fix, never a silent default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pixelnet.errors import ConfigError


def require(condition: bool, section: str, key: str, expectation: str, value: Any) -> None:
    """Raise a ConfigError naming `section.key` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{section}.{key} {expectation}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], name)
        for tp_i in inner:  # e.g. bool | Literal["auto"]: the first that takes the value
            try:
                return _coerce(value, tp_i, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {' or '.join(_type_name(a) for a in inner)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {name}")


def from_mapping(cls: type, mapping: Any, *, section: str):
    """Build the frozen dataclass `cls` from `mapping`, checking every key and value (fields without a default
    must be there)."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {mapping!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        listed = ", ".join(f"{section}.{k}" for k in unknown)
        raise ConfigError(
            f"unknown parameter {listed}; valid keys in {section} are: {', '.join(sorted(allowed))}"
        )
    required = sorted(f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING and f.name not in mapping)
    if required:
        raise ConfigError(f"missing parameter(s) {', '.join(f'{section}.{k}' for k in required)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in mapping.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for checkpoints, manifests and MLflow)."""
    return dataclasses.asdict(obj)
