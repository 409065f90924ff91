"""The import graph of ``src/qkv``: no cycle and no private name taken from another module.

Every ``import`` and ``from ... import`` counts, at module level and inside functions (a lazy import still
ties the two modules together: it only moves the failure to run time), except under ``if TYPE_CHECKING:``.
An edge goes to the module named (``from .a import b`` -> ``a``, or ``a.b`` when that is a module), so a
package's ``__init__`` is a node like any other. A cycle is reported as the modules along it; a private
import as ``importer: from module import _name``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under ``root / "qkv"``."""
    files = {}
    for path in sorted((root / "qkv").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: set[str]):
    """Yield (target module, imported names) for each import in the file of module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, []
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target not in modules:
            continue
        plain = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in modules:                   # from package import submodule
                yield sub, []
            else:
                plain.append(alias.name)
        if plain:
            yield target, plain


def import_graph(root: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    """({module: modules it imports}, ["importer: from module import _name", ...])."""
    files = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in files}
    private = []
    for name, path in files.items():
        for target, names in imports_of(name, path, set(files)):
            if target != name:
                graph[name].add(target)
            private += [f"{name}: from {target} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and target != name]
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with one."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):                                # Tarjan's strongly connected components
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_within(graph, component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, by breadth-first search inside it."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component always has a cycle")


def test_no_import_cycle():
    found = cycles(import_graph()[0])
    assert not found, "import cycles in src/qkv:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_private_name_imported_across_modules():
    private = import_graph()[1]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_the_checker_sees_cycles_and_private_names(tmp_path):
    """The checker itself, on a tree made to hold what it must find (and what it must not)."""
    pkg = tmp_path / "qkv"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")          # inside a function counts
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom ..c import _hidden\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
                              "_hidden = 1\n")
    graph, private = import_graph(tmp_path)
    assert graph["qkv"] == {"qkv.a"} and graph["qkv.a"] == {"qkv.sub.b"}
    assert graph["qkv.c"] == set()                                            # TYPE_CHECKING is skipped
    assert cycles(graph) == [["qkv.a", "qkv.sub.b", "qkv.a"]]
    assert private == ["qkv.sub.b: from qkv.c import _hidden"]


@pytest.mark.parametrize("n", [2, 3])
def test_cycle_path_is_the_loop(n):
    graph = {f"m{i}": {f"m{(i + 1) % n}"} for i in range(n)} | {"x": {"m0"}}
    assert cycles(graph) == [[*(f"m{i}" for i in range(n)), "m0"]]
