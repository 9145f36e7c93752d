"""Command-line flags that set config keys, declared as data: each :class:`Flag` names the config
key it sets, so a job's parser and its overrides come from one table (``pipeline.train.flags``).
Flags default to None: the config file's value applies unless the flag is given.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "add_flags", "flag_overrides"]

_TYPES = {"str": str, "int": int, "float": float}


@dataclass(frozen=True)
class Flag:
    """``--name`` sets config ``key``. ``kind``: str / int / float, ``int_list`` / ``str_list``
    (comma-separated), or a ``switch`` (no value; sets ``key`` to ``switch``). ``append``:
    repeatable, the values form a list. ``negative_is_none``: a negative number means null."""

    name: str
    key: str
    kind: str = "str"
    help: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    switch: Any = None
    append: bool = False
    negative_is_none: bool = False

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def value(self, given: Any) -> Any:
        """The config value of the flag's parsed value (ValueError naming the flag)."""
        if self.kind in ("int_list", "str_list"):
            parts = [p.strip() for p in str(given).split(",") if p.strip()]
            if self.kind == "str_list":
                return parts
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ValueError(f"{self.name} {given!r}: expected comma-separated integers") from None
        if self.negative_is_none and given < 0:
            return None
        return list(given) if self.append else given


def add_flags(parser: argparse.ArgumentParser, groups: dict[str, Iterable[Flag]]) -> None:
    """One argument group per entry of ``groups``, one argument per flag."""
    for title, flags in groups.items():
        group = parser.add_argument_group(title)
        for f in flags:
            kw: dict[str, Any] = {"dest": f.dest, "default": None, "help": f.help}
            if f.switch is not None:
                kw["action"] = "store_true"
            else:
                if f.append:
                    kw["action"] = "append"
                if f.kind in _TYPES and f.kind != "str":
                    kw["type"] = _TYPES[f.kind]
                if f.choices:
                    kw["choices"] = list(f.choices)
                if f.metavar:
                    kw["metavar"] = f.metavar
            group.add_argument(f.name, **kw)


def flag_overrides(args: argparse.Namespace,
                   groups: dict[str, Iterable[Flag]]) -> list[tuple[list[str], Any]]:
    """``(key path, value)`` for every flag given on the command line, in table order."""
    out = []
    for flags in groups.values():
        for f in flags:
            given = getattr(args, f.dest)
            if given is None or (f.switch is not None and not given):
                continue
            out.append((f.key.split("."), f.switch if f.switch is not None else f.value(given)))
    return out
