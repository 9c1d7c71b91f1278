"""No import circle among the package's modules (issue 13).

The package's imports are read statically, with ``ast``, from every module under ``e6observe/``.
What counts as "module A imports module B" (every kind below is a dependency in design terms;
the failure message names the kind and line of each edge of a circle):

* ``module``: an import statement that runs when A is imported (top level, also inside ``try``,
  ``if`` and class bodies);
* ``function``: an import statement inside a function. A lazy import made to break a circle
  still leaves the circle in the design: A cannot be understood or changed without B, and B
  not without A. Lazy imports of *third-party* packages (to keep start-up small) are not edges:
  only ``e6observe.*`` modules are;
* ``type``: an import under ``if TYPE_CHECKING:`` (a circle of types is a circle of modules);
* ``name``: a string constant that is exactly a module's dotted name
  (``importlib.import_module("e6observe.x")``, ``sys.modules.get("e6observe.x")``, a table of
  command modules): an import by name is an import.

``from P import n`` is an edge to ``P.n`` when that is a module, else to ``P``. The implicit
import of a module's parent packages is not an edge: a module depends on its package's
``__init__`` only when it names it.
"""

from __future__ import annotations

import ast
import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import e6observe

PACKAGE_DIR = Path(e6observe.__file__).resolve().parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # module | function | type | name
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind} import, line {self.line})"


def package_modules(pkg_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module in the tree."""
    root = pkg_dir.parent
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Walker(ast.NodeVisitor):
    def __init__(self, name: str, is_pkg: bool, modules: dict[str, tuple[Path, bool]], top: str) -> None:
        self.name = name
        self.package = name if is_pkg else name.rpartition(".")[0]
        self.modules = modules
        self.top = top
        self.edges: list[Edge] = []
        self._kind = ["module"]

    def _add(self, target: str, line: int, kind: str | None = None) -> None:
        if target in self.modules and target != self.name:
            self.edges.append(Edge(self.name, target, kind or self._kind[-1], line))

    def _nested(self, node: ast.AST, kind: str) -> None:
        self._kind.append(kind)
        self.generic_visit(node)
        self._kind.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "function" if self._kind[-1] != "type" else "type")

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._kind.append("type")
            for child in node.body:
                self.visit(child)
            self._kind.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        if target != self.top and not target.startswith(self.top + "."):
            return
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            self._add(sub if sub in self.modules else target, node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value.startswith(self.top + "."):
            self._add(node.value, node.lineno, "name")


def import_edges(pkg_dir: Path) -> list[Edge]:
    """Every import of one of the package's modules by another, as the module docstring says."""
    modules = package_modules(pkg_dir)
    edges: list[Edge] = []
    for name, (path, is_pkg) in modules.items():
        w = _Walker(name, is_pkg, modules, pkg_dir.name)
        w.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += w.edges
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The import circles: strongly connected groups of two or more modules, each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~60 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(found: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for group in found:
        members = set(group)
        lines.append("circle: " + ", ".join(group))
        seen = set()
        for e in edges:
            key = (e.source, e.target, e.kind)
            if e.source in members and e.target in members and key not in seen:
                seen.add(key)
                lines.append(f"    {e}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _package_edges() -> tuple[Edge, ...]:
    return tuple(import_edges(PACKAGE_DIR))


def test_no_import_circle_among_the_package_modules() -> None:
    edges = list(_package_edges())
    found = cycles(edges)
    assert not found, "import circles in e6observe:\n" + describe(found, edges)


def test_the_walk_sees_the_whole_package() -> None:
    # Not vacuous: every module file is a node, and known edges of each kind are found.
    edges = list(_package_edges())
    modules = package_modules(PACKAGE_DIR)
    assert len(modules) == len(list(PACKAGE_DIR.rglob("*.py")))
    pairs = {(e.source, e.target, e.kind) for e in edges}
    assert ("e6observe.recorder", "e6observe.metrics", "module") in pairs
    assert ("e6observe._api", "e6observe._otelctx", "function") in pairs  # a lazy import


def test_fork_registry_is_a_leaf() -> None:
    # Components register their resets with _fork; _fork knows none of them.
    edges = list(_package_edges())
    assert {e.target for e in edges if e.source == "e6observe._fork"} == {"e6observe._safe"}
    assert {e.target for e in edges if e.source == "e6observe._safe"} == set()


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


@pytest.mark.parametrize(
    "kind, a_source",
    [
        ("module", "from . import b\n"),
        ("function", "def f():\n    from .b import thing\n    return thing\n"),
        ("type", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n"),
        ("name", "import sys\nB = sys.modules.get('pkg.sub.b')\n"),
    ],
)
def test_each_kind_of_import_closes_a_circle(tmp_path: Path, kind: str, a_source: str) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": a_source,
        "pkg/sub/b.py": "import json\nfrom .. import c\n",
        "pkg/c.py": "from .sub import a\n",
    }
    pkg = _write(tmp_path, files)
    edges = import_edges(pkg)
    assert cycles(edges) == [["pkg.c", "pkg.sub.a", "pkg.sub.b"]]
    a_edges = [e for e in edges if e.source == "pkg.sub.a"]
    assert [(e.target, e.kind) for e in a_edges] == [("pkg.sub.b", kind)]
    assert f"pkg.sub.a -> pkg.sub.b ({kind} import" in describe(cycles(edges), edges)


def test_no_circle_without_the_closing_import(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "import os\nfrom pkg import c\n",
            "pkg/c.py": "'''Mentions pkg.a in prose only.'''\nX = 'pkg.a.x'\n",
        },
    )
    edges = import_edges(pkg)
    assert {(e.source, e.target) for e in edges} == {("pkg.a", "pkg.b"), ("pkg.b", "pkg.c")}
    assert cycles(edges) == []
