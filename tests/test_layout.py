"""The layout's rules, checked from the source: no import circles (imports under TYPE_CHECKING and inside
functions included), every package's map names every module in it, and the pure core loads no trio and no
venue."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "legguard"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every legguard module `name` imports, anywhere in the file. `from pkg import mod` counts as importing
    `pkg.mod` when that is a module, else `pkg` itself (whose `__init__` then runs)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("legguard"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(name)
    return {m for m in found if m in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_planted_circle() -> None:
    graph = _graph()
    graph["legguard.domain"] = {*graph["legguard.domain"], "legguard.fsm._core"}
    assert any("legguard.domain" in c and "legguard.fsm._core" in c for c in _cycles(graph))


def test_layers_import_only_downwards() -> None:
    order = ["legguard.domain", "legguard.fsm", "legguard.adapters", "legguard.engine", "legguard.cli"]

    def layer(module: str) -> int:
        return max(i for i, top in enumerate(order) if module == top or module.startswith(top + "."))

    graph = _graph()
    upward = [
        (m, t)
        for m, targets in graph.items()
        if m != "legguard"
        for t in targets
        if t != "legguard" and layer(t) > layer(m)
    ]
    assert upward == []


def test_the_domain_imports_nothing_else_of_legguard() -> None:
    assert _graph()["legguard.domain"] == set()


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: _module_name(p))
def test_each_package_map_names_every_module_in_it(init: Path) -> None:
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    members = [p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"]
    members += [f"{p.name}/" for p in init.parent.iterdir() if (p / "__init__.py").exists()]
    if init.parent == PACKAGE:  # the top map names its layers by their import names
        members = [f"legguard.{m.removesuffix('.py').rstrip('/')}" for m in members]
    missing = [m for m in members if f"`{m}" not in doc]
    assert missing == [], f"{_module_name(init)}'s map does not name {missing}"


def test_the_pure_core_loads_no_trio_and_no_venue() -> None:
    probe = (
        "import sys, legguard.fsm; "
        "print(sorted(m for m in sys.modules if m in ('trio', 'ccxt', 'aiohttp') or m.startswith('legguard.adapters')"
        " or m.startswith('legguard.engine')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
