"""Shared by tests/test_onnx_conformance.py and benchmarks/onnx_conformance.py: which ONNX
node tests graphc supports, the excluded ones (tests/onnx_excluded.txt) and the light
models shipped in the onnx wheel."""

from __future__ import annotations

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


def light_models() -> dict[str, str]:
    """{model name: path} of the light zoo models shipped in the onnx wheel."""
    import onnx
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return {re.sub(r"^light_|\.onnx$", "", f): os.path.join(folder, f)
            for f in sorted(os.listdir(folder)) if f.endswith(".onnx")}
