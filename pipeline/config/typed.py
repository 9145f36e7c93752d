"""Typed YAML sections: frozen dataclasses validated key by key, YAML reading and ``--set`` overrides.

The machinery behind every samsr config (``pipeline.config`` for refine / relabel,
``pipeline.train.config`` for training): a section is a frozen dataclass whose fields carry
an optional value check (:func:`checked`); :func:`build_section` checks the keys, coerces each
value by its annotation and runs the checks, and every error starts with the key path, e.g.
``refine.decode: must be one of 'full', 'strided' (got 'fast')``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any, Literal

import yaml

__all__ = ["checked", "positive", "non_negative", "unit", "nonempty", "build_section", "parse_override",
           "apply_overrides", "read_yaml"]


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def unit(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def nonempty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def checked(default: Any, check=None, **kw) -> Any:
    """A dataclass field with an optional value check ``check(value) -> error | None``."""
    return field(default=default, metadata={"check": check} if check else {}, **kw)


def _type_error(path: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{path}: must be {expected} (got {value!r})")


def _coerce(path: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{path}: must be one of {shown} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _type_error(path, "set", value)
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, inner[0], value)
    if value is None:
        raise _type_error(path, "set", value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(path, "true or false", value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, "an integer", value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(path, "a number", value)
        return float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise _type_error(path, "a string", value)
    elif tp is list or origin is list:
        if not isinstance(value, list | tuple):
            raise _type_error(path, "a list", value)
        args = typing.get_args(tp)
        return [_coerce(f"{path}[{i}]", args[0], v) for i, v in enumerate(value)] if args else list(value)
    elif tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(path, "a mapping", value)
        return dict(value)
    return value


def build_section(cls: type, data: Any, path: str) -> Any:
    """Validate the mapping ``data`` into the frozen dataclass ``cls`` (keys checked, values
    coerced by type, ``_f`` checks run); errors name ``path.key``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: must be a mapping of keys (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ValueError(f"{path}.{key}: unknown key (known: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        key_path = f"{path}.{name}"
        if name in data:
            value = _coerce(key_path, hints[name], data[name])
            check = f.metadata.get("check")
            if check is not None and value is not None:
                err = check(value)
                if err:
                    raise ValueError(f"{key_path}: {err} (got {value!r})")
            kwargs[name] = value
        elif f.default is None and f.metadata.get("check") is nonempty:
            raise ValueError(f"{key_path}: required")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value) with the value parsed as YAML (``4``, ``null``, ``true``)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set {text!r}: bad key path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"{key}: cannot parse value {raw!r} ({e})") from e
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[tuple[list[str], Any]]) -> dict:
    """Return a deep copy of the raw config mapping with each (path, value) set."""
    out = _deepcopy(dict(data))
    for parts, value in overrides:
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"{where}: is not a section, cannot set {'.'.join(parts)}")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj


def read_yaml(path: str) -> dict:
    """Read a YAML mapping from a local path or fsspec URL (an empty file is ``{}``)."""
    import fsspec

    try:
        with fsspec.open(path, "rt") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as e:
        raise ValueError(f"config file {path}: not found") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path}: invalid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: must hold a mapping (got {type(data).__name__})")
    return data
