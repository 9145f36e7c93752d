"""The house's rules, checked on the source: Ray is imported only in the runner wing, and the
imports between modules (and between rooms: the packages and modules right under ``pipeline``)
have no circles. Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WING = ROOT / "pipeline" / "runner"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, module: str, modules: dict[str, Path]) -> list[str]:
    """Absolute names of everything ``path`` imports (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for sub in node.body for n in ast.walk(sub))
    names = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return names


def _graph(key) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target in _imports(path, name, modules):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and key(target) != key(name):
                graph.setdefault(key(name), set()).add(key(target))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_ray_is_imported_only_in_the_runner_wing():
    offenders = []
    for base in ("pipeline", "jobs"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if WING in path.parents:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for target in _imports(path, name, {}):
                if target == "ray" or target.startswith("ray."):
                    offenders.append(f"{path.relative_to(ROOT)}: {target}")
    assert offenders == []


def test_no_import_circles_between_modules():
    assert _cycles(_graph(lambda m: m)) == []


def test_no_import_circles_between_rooms():
    assert _cycles(_graph(lambda m: ".".join(m.split(".")[:2]))) == []


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
