"""The layering of the package (issue 15): the module import graph, read from the source with
``ast`` (top-level and function-level imports alike), has no cycle; the IR, the op modules and
``passes/`` never reach a backend; ``graphc.errors`` sits at the bottom; and ``import graphc``
loads none of the heavy optional packages."""

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
# The imports that still point up the layers, each inside a function, with why.  The test
# fails when one is gone (delete its line) and when a new one closes a cycle; an entry for a
# module that does not exist (yet, or any more: files are being split) is skipped.  OPS
# stands for every module that defines an op (see op_modules).
OPS = "<op modules>"
LATE = {
    ("graphc.ir", "graphc.dynamic"): "Tensor.make defers a node with a dynamic operand",
    ("graphc.ir", "graphc.graph"): "Tensor's Jupyter display is its graph's",
    ("graphc.graph", "graphc.viz.render"): "Graph's Jupyter display draws the diagram",
    (OPS, "graphc.functions"): "vjp rules (structured_ops, fused_ops) build with gc.* functions",
    ("graphc.scan", "graphc.bptt"): "Scan's vjp is the backward loop bptt.py builds",
    ("graphc.scan", "graphc.interpreter"): "a loop's NumPy evaluation runs its body graph",
    ("graphc.dynamic", "graphc.passes.autodiff"): "a deferred node's vjp differentiates it",
    ("graphc.train_loop", "graphc.distributed"): "fit(workers=N) hands over to distributed.fit",
}


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
    module, else ``pkg``; parent packages are not counted."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = _parse(path)
    found = []
    for node in _statements(tree) if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base,
                       node.lineno) for alias in node.names]
    return [(module, line) for module, line in found if module in known and module != name]


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


def _cycle_text(graph, cycle) -> str:
    return "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def _late(graph) -> list[tuple[str, str]]:
    """The LATE imports between modules that exist, OPS expanded to the op modules that
    import its target (or, where none does, left as it is: stale)."""
    ops = op_modules(source_modules())
    late = []
    for a, b in LATE:
        if a == OPS:
            late += [(m, b) for m in sorted(ops) if b in graph[m]] or [(a, b)]
        elif a in graph and b in graph:
            late.append((a, b))
    return late


def test_the_import_graph_is_acyclic():
    """Top-level imports have no cycle at all; with function-level imports too, none but
    through the listed upward imports (LATE)."""
    top = import_graph(top_level=True)
    assert find_cycle(top) is None, _cycle_text(top, find_cycle(top))
    graph = import_graph()
    late = _late(graph)
    stale = [f"{a} -> {b}" for a, b in late if b not in graph.get(a, ())]
    assert not stale, f"no longer imported: delete from LATE: {stale}"
    early = [f"{a} -> {b} (line {top[a][b]})" for a, b in late if b in top[a]]
    assert not early, f"a LATE import is at the top of its module: {early}"
    for a, b in late:
        del graph[a][b]
    cycle = find_cycle(graph)
    assert cycle is None, _cycle_text(graph, cycle)


def test_the_op_modules_are_found():
    ops = op_modules(source_modules())
    assert {"graphc.elementwise_ops", "graphc.nn_ops", "graphc.fused_ops", "graphc.inputs",
            "graphc.scan"} <= ops and len(ops) >= 7, sorted(ops)
    assert is_backend("graphc.numba_backend") and is_backend("graphc.cuda_kernels")
    assert not is_backend("graphc.lowering") and not is_backend("graphc.ir")


def test_ir_ops_and_passes_never_reach_a_backend():
    """Not directly, nor through other modules' imports (the LATE ones aside: through
    Jupyter's display of a Tensor everything is reachable)."""
    graph = import_graph()
    for a, b in _late(graph):
        graph.get(a, {}).pop(b, None)
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
