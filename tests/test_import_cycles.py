"""No import cycles among the project's modules (lra_sfa, tasks, baselines), imports inside functions included.

A static check: every .py file is parsed (never imported), each ``import`` and
``from ... import`` anywhere in it (module level, functions, methods,
conditional blocks) that names a project module becomes an edge of the module
graph, and any strongly connected component of more than one module, or a
module importing itself, fails the test with its cycle spelled out. Importing
a submodule's parent package implicitly is not an edge: a package that
re-exports its children is the normal layout, and only an explicit import of
the package (``from lra_sfa.kernels import x``, x not a submodule) reaches
its __init__.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> the installed package name it ships as (DESIGN.md: tasks/ and baselines/ ship inside lra_sfa)
ROOTS = {"lra_sfa": "lra_sfa", "tasks": "lra_sfa.tasks", "baselines": "lra_sfa.baselines"}


def project_modules(repo: Path = REPO) -> dict[str, Path]:
    """{dotted module name: file} for every .py under the project's source folders."""
    modules = {}
    for folder, package in ROOTS.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement can bind: for ``from X import Y`` both X.Y and X (resolved later)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: the package of this module, climbed level - 1 times
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    """{module: the project modules it imports}."""
    modules = project_modules(repo)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            names = _imported(node, name, is_package)
            if isinstance(node, ast.ImportFrom):  # X.Y when Y is a submodule, else X itself
                *submodules, base = names
                hits = [target for target in submodules if target in modules]
                if len(hits) < len(submodules) and base in modules:
                    hits.append(base)
            else:
                hits = [_longest_module(target, modules) for target in names]
            graph[name].update(target for target in hits if target)
    return graph


def _longest_module(dotted: str, modules: dict) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a closed path of module names) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(component), graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A closed path through the component's first module, found by breadth-first search inside it."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    return component


def test_the_project_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values())  # the walk found the project and its imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    """A fixture project: a.py imports b at module level, b imports a inside a function, c only imports its
    package; the check reports a -> b -> a and nothing for the package."""
    pkg = tmp_path / "lra_sfa"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from lra_sfa.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lra_sfa import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n    return g\n")
    (pkg / "sub" / "c.py").write_text("import lra_sfa.sub\n")
    for folder in ("tasks", "baselines"):
        (tmp_path / folder).mkdir()
    graph = import_graph(tmp_path)
    assert graph["lra_sfa.a"] == {"lra_sfa.b"} and graph["lra_sfa.b"] == {"lra_sfa.a"}
    cycles = find_cycles(graph)
    assert cycles == [["lra_sfa.a", "lra_sfa.b", "lra_sfa.a"]]
