"""The module import graph of ``src/saferlhf`` (built with ``ast``, nothing is imported) has no
cycles, library modules never import the demos or the CLI, and the layering of DESIGN §2 holds
(docs/architecture.md states the rules).

Every ``import`` counts, including those inside functions (a lazy import is still a
dependency); only imports under ``if TYPE_CHECKING:`` are left out. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Modules loaded by name
(``importlib.import_module`` strings, e.g. the CLI's stage table) are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "saferlhf"

# Modules allowed to import anything: the CLI and the demos built from the library.
APPLICATION = ("saferlhf.cli", "saferlhf.__main__", "saferlhf.recipes")
# Who may import the trainers: the trainers themselves, the application, and the package's
# public facade (``saferlhf/__init__.py`` exports the trainer classes).
TRAINER_USERS = ("saferlhf.trainers", *APPLICATION)
TRAINER_FACADE = "saferlhf"
# Packages below the trainers and what each must not import (DESIGN §2: data is the bottom
# layer; models and the pure maths sit on it; eval and guard use models and data).
FORBIDDEN = {
    "saferlhf.data": ("saferlhf.models", "saferlhf.rollout", "saferlhf.eval", "saferlhf.guard",
                      "saferlhf.losses", "saferlhf.lagrange"),
    "saferlhf.models": ("saferlhf.rollout", "saferlhf.eval", "saferlhf.guard"),
    "saferlhf.losses": ("saferlhf.data", "saferlhf.models", "saferlhf.rollout", "saferlhf.eval",
                        "saferlhf.guard"),
    "saferlhf.lagrange": ("saferlhf.data", "saferlhf.models", "saferlhf.rollout", "saferlhf.eval",
                          "saferlhf.guard"),
    "saferlhf.rollout": ("saferlhf.eval", "saferlhf.guard"),
    "saferlhf.processing": ("saferlhf.rollout", "saferlhf.eval", "saferlhf.guard"),
}
# Known exceptions to the trainer rule, each with its reason (none today). An entry that no
# longer matches an edge fails the test, so it is deleted once the code is fixed.
ALLOWED_TRAINER_IMPORTS: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------- graph building


def discover(src: Path, root: str = ROOT) -> dict[str, tuple[Path, bool]]:
    """``{module name: (file, is_package)}`` for every ``.py`` file of the package ``root``."""
    modules = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: dict) -> str | None:
    """``name`` or its longest prefix that is a module of the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def module_edges(name: str, path: Path, is_package: bool, modules: dict, root: str = ROOT) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imported_names(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            bases = [(alias.name, []) for alias in node.names]
        else:
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            bases = [(base, [alias.name for alias in node.names])]
        for base, names in bases:
            if base != root and not base.startswith(root + "."):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if subs:
                targets.update(subs)
            if not names or len(subs) < len(names):
                known = _known(base, modules)
                if known:
                    targets.add(known)
    targets.discard(name)
    return targets


def import_graph(src: Path = SRC, root: str = ROOT) -> dict[str, set[str]]:
    modules = discover(src, root)
    return {name: module_edges(name, path, is_pkg, modules, root) for name, (path, is_pkg) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle through the first module of a strongly connected component."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first back to start, inside the component
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every edge that breaks the rules at the top of this file, as readable lines."""
    problems = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if not _under(src, APPLICATION) and _under(dst, APPLICATION):
                problems.append(f"{src} -> {dst}: library code must not import the CLI or recipes/")
            if (_under(dst, ("saferlhf.trainers",)) and not _under(src, TRAINER_USERS)
                    and src != TRAINER_FACADE and (src, dst) not in ALLOWED_TRAINER_IMPORTS):
                problems.append(f"{src} -> {dst}: only trainers/, recipes/ and the CLI import trainers/")
            for layer, forbidden in FORBIDDEN.items():
                if _under(src, (layer,)) and _under(dst, forbidden):
                    problems.append(f"{src} -> {dst}: {layer} sits below {dst.rsplit('.', 1)[0]}")
    return problems


# ----------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g = import_graph()
    assert len(g) > 50 and "saferlhf.cli" in g and "saferlhf.losses" in g
    return g


def test_the_package_has_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_the_package_keeps_its_layers(graph):
    problems = layering_violations(graph)
    assert not problems, "layering violations:\n" + "\n".join("  " + p for p in problems)


def test_every_allowed_exception_is_still_needed(graph):
    stale = [f"{a} -> {b}" for a, b in ALLOWED_TRAINER_IMPORTS if b not in graph.get(a, set())]
    assert not stale, f"remove from ALLOWED_TRAINER_IMPORTS (the edge is gone): {stale}"


def test_lazy_edges_of_the_package_are_seen(graph):
    # imports inside functions are edges: the demo imports the image demo lazily
    assert "saferlhf.recipes.image_demo" in graph["saferlhf.recipes.text_demo"]
    # ``from saferlhf import losses as L`` is an edge to the submodule
    assert "saferlhf.losses" in graph["saferlhf.trainers.rl"]


# ----------------------------------------------------------------------------- the checker itself


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "saferlhf" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_through_lazy_and_relative_imports(tmp_path):
    src = _write_package(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from saferlhf.data import b\n",
        "data/b.py": "def f():\n    from .c import g\n    return g\n",
        "data/c.py": "import saferlhf.data.a\n",
        "data/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from saferlhf.data import a\n",
    })
    g = import_graph(src)
    assert g["saferlhf.data.b"] == {"saferlhf.data.c"} and g["saferlhf.data.d"] == set()
    assert find_cycles(g) == [["saferlhf.data.a", "saferlhf.data.b", "saferlhf.data.c", "saferlhf.data.a"]]


def test_checker_passes_an_acyclic_graph_and_flags_each_layering_rule():
    g = {
        "saferlhf": set(), "saferlhf.cli": {"saferlhf.recipes.demo"},
        "saferlhf.recipes.demo": {"saferlhf.trainers.sft"},
        "saferlhf.trainers.sft": {"saferlhf.data.x", "saferlhf.models.m"},
        "saferlhf.data.x": set(), "saferlhf.models.m": {"saferlhf.data.x"},
    }
    assert find_cycles(g) == [] and layering_violations(g) == []
    bad = dict(g, **{"saferlhf.data.x": {"saferlhf.models.m"}, "saferlhf.eval.e": {"saferlhf.trainers.sft"},
                     "saferlhf.guard.g": {"saferlhf.recipes.demo"}})
    assert find_cycles(bad) == [["saferlhf.data.x", "saferlhf.models.m", "saferlhf.data.x"]]
    problems = layering_violations(bad)
    assert any(p.startswith("saferlhf.guard.g -> saferlhf.recipes.demo: library") for p in problems)
    assert any(p.startswith("saferlhf.eval.e -> saferlhf.trainers.sft: only trainers/") for p in problems)
    assert any(p.startswith("saferlhf.data.x -> saferlhf.models.m: saferlhf.data sits below") for p in problems)
