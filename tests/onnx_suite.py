"""Shared by tests/test_onnx_conformance.py and benchmarks/onnx_conformance.py: which ONNX
node tests graphc supports, the excluded ones (tests/onnx_excluded.txt), the switch that
makes the Numba backend compile every elementwise op, and the light models shipped in the
onnx wheel (and the same models with random weights).
benchmarks/import_bench.py uses it too."""

from __future__ import annotations

import contextlib
import os
import re

EXCLUDED_FILE = os.path.join(os.path.dirname(__file__), "onnx_excluded.txt")


def excluded() -> dict[str, str]:
    """{node test name pattern (a regex): reason}, from tests/onnx_excluded.txt."""
    out = {}
    with open(EXCLUDED_FILE) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                pattern, _, reason = line.partition(" ")
                out[pattern] = reason.strip()
    return out


def node_ops(case) -> set[str]:
    """The op types a node test's model uses (a domain other than ONNX's is named)."""
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in case.model.graph.node}


def load_node_cases() -> list:
    """ONNX's node test cases whose every op graphc imports.  Loading them takes about
    20 s of CPU: each case module computes its expected outputs at import."""
    from onnx.backend.test.loader import load_model_tests

    from graphc.importers.onnx_ops import SUPPORTED
    return [c for c in load_model_tests(kind="node") if node_ops(c) <= set(SUPPORTED)]


def backend_test(backend, cases, module_name: str):
    """An ``onnx.backend.test.BackendTest`` over ``cases`` only, CPU, the exclusions
    skipped with their reason."""
    from unittest import mock

    import onnx.backend.test
    import onnx.backend.test.runner as runner

    def load(data_dir=None, kind=None):
        return cases if kind == "node" else []

    with mock.patch.object(runner, "load_model_tests", load):
        suite = onnx.backend.test.BackendTest(backend, module_name)
    suite.exclude("_cuda$")
    for pattern in excluded():
        suite.exclude(pattern)
    return suite


@contextlib.contextmanager
def numba_kernels_only():
    """On the Numba backend, every elementwise op and sum as a generated kernel however
    small.  By default one ufunc-like op on fewer than ``KERNEL_MIN_SIZE`` elements runs as
    the NumPy ufunc, and the node tests' arrays are that small: Numba's code would go
    untested."""
    from graphc import numba_rules
    old = numba_rules.KERNEL_MIN_SIZE, numba_rules.NUMPY_FASTER
    numba_rules.KERNEL_MIN_SIZE, numba_rules.NUMPY_FASTER = 0, set()
    try:
        yield
    finally:
        numba_rules.KERNEL_MIN_SIZE, numba_rules.NUMPY_FASTER = old


def light_models() -> dict[str, str]:
    """{model name: path} of the light zoo models shipped in the onnx wheel."""
    import onnx
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return {re.sub(r"^light_|\.onnx$", "", f): os.path.join(folder, f)
            for f in sorted(os.listdir(folder)) if f.endswith(".onnx")}


def randomized(path: str, seed: int = 0):
    """The model with every ConstantOfShape of a constant shape (its weights) replaced by
    a random initializer (He-normal for kernels and matrices, uniform in [0.5, 1.5] for
    vectors: biases, batch-norm scales and variances stay positive), and without its final
    Softmax (the logits are compared)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    kept, new = [], []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            if len(shape) == 1:
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            new.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        else:
            kept.append(node)
    if kept[-1].op_type == "Softmax":  # compare logits: a softmax of them saturates
        softmax = kept.pop()
        producer = next(n for n in kept if softmax.input[0] in n.output)
        producer.output[list(producer.output).index(softmax.input[0])] = softmax.output[0]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new)
    return model
