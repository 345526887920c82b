"""The import graph of jmeta: acyclic (function-level imports included), every module importable
in a fresh interpreter, and no private name reached across subpackages."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jmeta"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path):
    """``(target module, imported names, line)`` of every import in the module, at any depth
    (inside functions too); relative imports resolved."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            for sub in submodules:
                yield sub, (), node.lineno
            yield base, tuple(n for n in names if f"{base}.{n}" not in MODULES), node.lineno


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    """``module -> modules whose code runs when it imports them``. Importing ``a.b.c`` runs the
    packages ``a`` and ``a.b`` too, unless the importer lies inside them (then they are already
    being initialised: the ordinary sibling import of a package)."""
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        inside = set(_ancestors(name)) | ({name} if _is_package(name) else set())
        for target, _, _ in _imports(name, path):
            if not target.startswith("jmeta"):
                continue
            for t in [*_ancestors(target), target]:
                if t in MODULES and t not in inside and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def _subpackage(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or _is_package(name) else parts[0]


def test_no_private_name_is_imported_across_subpackages():
    """``jmeta.X`` may import its own private names; any other module of jmeta, and the scripts
    of benchmarks/, use public ones (a private module's public names are fair: they are what
    ``jmeta.X`` re-exports)."""
    scripts = {f"benchmarks.{p.stem}": p for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    found = []
    for name, path in {**MODULES, **scripts}.items():
        own = _subpackage(name)
        for target, names, line in _imports(name, path):
            if not target.startswith("jmeta") or _subpackage(target) == own:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} "
                             f"from {target}")
    assert not found, "\n".join(found)


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("first", ["jmeta.bench", "jmeta.cli", "jmeta.train", "jmeta.data",
                                   "jmeta.models", "jmeta.algorithms", "jmeta.inner"])
def test_each_entry_point_imports_first(first):
    """A package imported before anything else of jmeta: a cycle shows as an ImportError of a
    partially initialised module, whichever side is entered first."""
    proc = subprocess.run([sys.executable, "-c", f"import {first}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
