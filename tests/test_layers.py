"""The package's shape: which package may import which, no import circle, small modules.

Imports are read from the source (every ``import`` statement, also those inside functions), so
a lazy import breaks a rule as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_deepcache"
HOST_MODULES = ("a1111", "forge", "sdnext")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from . import x`` gives ``pkg.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def ours() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = ours()


def internal_imports(name: str) -> set[str]:
    """The modules of this package that ``name`` imports; its own ancestor packages left out
    (Python has imported them before ``name``, so ``from . import x`` adds no edge to them)."""
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {i for i in imports_of(MODULES[name]) if i in MODULES and i not in ancestors}


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("lib_deepcache.engine")])
def test_the_engine_imports_no_host_no_webui_and_no_benchmark(name):
    forbidden = ("lib_deepcache.hosts", "lib_deepcache.bench", "modules", "gradio", "fastapi")
    bad = {i for i in imports_of(MODULES[name]) if i.split(".")[0] == "modules" or i in forbidden}
    bad |= {i for i in imports_of(MODULES[name]) if i.startswith(forbidden[:2])}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("host", HOST_MODULES)
def test_a_host_module_imports_no_other_host(host):
    others = {f"lib_deepcache.hosts.{other}" for other in HOST_MODULES if other != host}
    imported = imports_of(MODULES[f"lib_deepcache.hosts.{host}"])
    assert not imported & others


def test_the_benchmark_imports_no_host():
    for name in (n for n in MODULES if n.startswith("lib_deepcache.bench")):
        assert not {i for i in imports_of(MODULES[name]) if i.startswith("lib_deepcache.hosts")}


def test_no_import_circle():
    """Depth-first search over the modules' internal imports; a module re-entered while still
    on the stack closes a circle (a package's ``__init__`` importing its own modules is not one:
    they never import the ``__init__``)."""
    graph = {name: internal_imports(name) - {name} for name in MODULES}
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                circles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not circles


def test_the_import_reader_sees_a_circle_and_a_relative_import(tmp_path, monkeypatch):
    """The oracle above, checked on a hand-made package: ``a`` imports ``b`` lazily, ``b``
    imports ``a`` at the top."""
    package = tmp_path / "lib_deepcache" / "engine"
    package.mkdir(parents=True)
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("from ..engine import a\nfrom ..hosts import api_guard\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert "lib_deepcache.engine.b" in imports_of(package / "a.py")
    assert {"lib_deepcache.engine.a", "lib_deepcache.hosts.api_guard"} <= imports_of(
        package / "b.py"
    )


@pytest.mark.parametrize("path", [*MODULES.values(), ROOT / "scripts" / "deepcache.py"])
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    limit = 150 if path.parent.name == "scripts" else MAX_MODULE_LINES
    assert source.count("\n") <= limit
    long = [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
