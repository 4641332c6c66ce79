"""The layering of the package (issue 15): the module import graph, read from the source with
``ast`` (top-level and function-level imports alike, and ``importlib.import_module``,
``__import__`` and ``sys.modules`` lookups of a graphc module by name), has no cycle; the IR,
the op modules and ``passes/`` never reach a backend; ``graphc.errors`` sits at the bottom;
and ``import graphc`` loads none of the heavy optional packages."""

from __future__ import annotations

import ast
import functools
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Where each package's source lives (passes/ and viz/ install as graphc.passes and graphc.viz).
PACKAGES = {"graphc": ROOT / "graphc", "graphc.passes": ROOT / "passes",
            "graphc.viz": ROOT / "viz"}
# A backend module, by its last name: the Numba and CUDA code generators and runtimes.
# graphc/lowering.py is backend-neutral (naming, folding, operand kinds shared by the passes
# and every backend): it is core, and so it must not reach a backend either.
BACKEND = re.compile(r"(numba_\w*|cuda_\w*|kernel_cache|fastmath)")
HEAVY = ("numba", "numba.cuda", "networkx", "torch", "onnx", "ray")
def source_modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported(name: str, path: pathlib.Path, known, top_level=False) -> list[tuple[str, int]]:
    """The package modules that module ``name`` imports anywhere in its source (inside
    functions too; with ``top_level``, outside every function and class only), with the
    line of each import.  ``from pkg import x`` counts as importing ``pkg.x`` when that is a
    module, else ``pkg``; parent packages are not counted.  A module named by a string
    constant to ``importlib.import_module``, ``__import__`` or ``sys.modules`` is imported
    too (the name may be relative to this module's package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = _parse(path)
    found = []
    for node in _statements(tree) if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.level, node.module)
            found += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base,
                       node.lineno) for alias in node.names]
        elif (text := _named_import(node)) is not None:
            level = len(text) - len(text.lstrip("."))
            found.append((_absolute(package, level, text[level:] or None), node.lineno))
    return [(module, line) for module, line in found if module in known and module != name]


def _absolute(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``module`` imported ``level`` dots up from ``package``."""
    if not level:
        return module or ""
    parts = package.split(".")[:len(package.split(".")) - level + 1]
    return ".".join(parts + ([module] if module else []))


def _named_import(node) -> str | None:
    """The string constant that ``node`` imports by name: ``importlib.import_module(s)``,
    ``import_module(s)``, ``__import__(s)``, ``sys.modules[s]``, ``sys.modules.get(s)``."""
    def dotted(n) -> str:
        return f"{dotted(n.value)}.{n.attr}" if isinstance(n, ast.Attribute) else \
            getattr(n, "id", "")
    arg = None
    if isinstance(node, ast.Call) and node.args:
        if dotted(node.func).rpartition(".")[2] in ("import_module", "__import__") or \
                dotted(node.func) == "sys.modules.get":
            arg = node.args[0]
    elif isinstance(node, ast.Subscript) and dotted(node.value) == "sys.modules":
        arg = node.slice
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


@functools.lru_cache(maxsize=None)
def _parse(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _statements(node):
    """The statements of ``node`` run at import time (not those inside a def or class)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield child
            yield from _statements(child)


def import_graph(top_level=False) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    modules = source_modules()
    graph = {}
    for name, path in modules.items():
        edges = {}
        for module, line in imported(name, path, modules, top_level):
            edges.setdefault(module, line)
        graph[name] = edges
    return graph


def find_cycle(graph) -> list | None:
    """One cycle of ``graph`` (a list of nodes, the first repeated at the end), or None."""
    state = {}  # node -> "open" while on the DFS path, "done" after

    def visit(node, path):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path)
                if cycle:
                    return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def reachable(graph, start) -> dict[str, list]:
    """Every node reachable from ``start``, with one path to it."""
    paths, todo = {start: [start]}, [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph[node]):
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                todo.append(nxt)
    return paths


def op_modules(modules) -> set[str]:
    """Modules that define a subclass of ``graphc.ir.Op`` (directly or through another)."""
    bases = {}  # class name -> (module, base names)
    for name, path in modules.items():
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef):
                names = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None)
                         for b in node.bases]
                bases.setdefault(node.name, []).append((name, names))
    ops, grew = {"Op"}, True
    while grew:
        new = {cls for cls, defs in bases.items()
               if any(set(b) & ops for _, b in defs)} - ops
        ops |= new
        grew = bool(new)
    return {module for cls in ops - {"Op"} for module, b in bases[cls] if set(b) & ops}


def is_backend(module: str) -> bool:
    return any(BACKEND.fullmatch(part) for part in module.split("."))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == [
        "a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) is None
    assert find_cycle({"a": {"a": 1}}) == ["a", "a"]


def test_imports_are_read_at_every_level(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from .ir import Tensor\nfrom . import dtypes as d\n"
                    "def f():\n    from .passes import fusion\n    import graphc.graph\n")
    known = {"graphc.ir", "graphc.dtypes", "graphc.passes.fusion", "graphc.graph",
             "graphc.passes"}
    assert imported("graphc.m", path, known) == [
        ("graphc.ir", 1), ("graphc.dtypes", 2), ("graphc.passes.fusion", 4),
        ("graphc.graph", 5)]


def test_imports_by_name_are_read_too(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import importlib, sys\n"
                    "def f(name):\n"
                    "    importlib.import_module('graphc.graph')\n"
                    "    __import__('graphc.passes.fusion')\n"
                    "    importlib.import_module('.dtypes', 'graphc')\n"
                    "    sys.modules['graphc.ir']\n"
                    "    sys.modules.get('graphc.viz')\n"
                    "    importlib.import_module(name)\n"  # not a constant: unknown
                    "    importlib.import_module('numpy')\n")
    known = {"graphc.ir", "graphc.dtypes", "graphc.passes.fusion", "graphc.graph",
             "graphc.viz"}
    assert sorted(imported("graphc.m", path, known)) == [
        ("graphc.dtypes", 5), ("graphc.graph", 3), ("graphc.ir", 6),
        ("graphc.passes.fusion", 4), ("graphc.viz", 7)]


def _cycle_text(graph, cycle) -> str:
    return "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_import_graph_is_acyclic():
    """No cycle among the top-level imports, nor with every import inside a function
    counted too: a module never imports one that imports it, early or late."""
    top = import_graph(top_level=True)
    assert find_cycle(top) is None, _cycle_text(top, find_cycle(top))
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, _cycle_text(graph, cycle)


def test_the_op_modules_are_found():
    ops = op_modules(source_modules())
    assert {"graphc.elementwise_ops", "graphc.nn_ops", "graphc.fused_ops", "graphc.inputs",
            "graphc.scan"} <= ops and len(ops) >= 7, sorted(ops)
    assert is_backend("graphc.numba_backend") and is_backend("graphc.cuda_kernels")
    assert not is_backend("graphc.lowering") and not is_backend("graphc.ir")


def test_ir_ops_and_passes_never_reach_a_backend():
    """Not directly, nor through other modules' imports (at any level)."""
    graph = import_graph()
    core = {"graphc.ir", "graphc.errors", "graphc.lowering"} | op_modules(source_modules())
    core |= {m for m in graph if m.startswith("graphc.passes")}
    assert len(core) > 15, sorted(core)
    bad = []
    for module in sorted(m for m in core if not is_backend(m)):
        for target, path in reachable(graph, module).items():
            if is_backend(target):
                bad.append(" -> ".join(path))
    assert not bad, "a core module reaches a backend:\n" + "\n".join(bad)


def test_errors_is_the_bottom():
    graph = import_graph()
    assert graph["graphc.errors"] == {}
    tree = ast.parse(PACKAGES["graphc"].joinpath("errors.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_import_graphc_loads_no_heavy_package_and_no_backend():
    code = ("import sys, graphc; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules)); "
            "print(' '.join(m for m in sys.modules if m.startswith('graphc.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    heavy, ours = result.stdout.split("\n")[:2]
    assert heavy.split() == [], f"import graphc loaded {heavy}"
    backends = [m for m in ours.split() if re.match(r"graphc\.(numba|cuda)_", m)]
    assert backends == [], f"import graphc loaded {backends}"
    assert "graphc.compiler" in ours.split()  # the list is real
