"""The import rules live in ``.importlinter`` (checked by ``lint-imports`` in ``make lint``); this
checks that they cover the whole house: every room of ``pipeline/`` but the runner wing is
forbidden to import Ray, and every package is checked for import circles."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cp.read(ROOT / ".importlinter")
    return cp


def _listed(cp, contract: str, key: str) -> set[str]:
    text = cp[f"importlinter:contract:{contract}"][key]
    return {line.strip() for line in text.splitlines() if line.strip()}


def _rooms() -> set[str]:
    pipeline = ROOT / "pipeline"
    rooms = {f"pipeline.{p.stem}" for p in pipeline.glob("*.py") if p.name != "__init__.py"}
    return rooms | {f"pipeline.{p.name}" for p in pipeline.iterdir() if (p / "__init__.py").is_file()}


def test_every_room_but_the_runner_is_forbidden_to_import_ray():
    cp = _contracts()
    assert _listed(cp, "ray-wing", "forbidden_modules") == {"ray"}
    assert _listed(cp, "ray-wing", "source_modules") == (_rooms() - {"pipeline.runner"}) | {"jobs"}


def test_every_package_is_checked_for_circles():
    cp = _contracts()
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pipeline").rglob("__init__.py")}
    assert _listed(cp, "no-circles", "ancestors") == packages
    assert cp["importlinter"].getboolean("exclude_type_checking_imports")
