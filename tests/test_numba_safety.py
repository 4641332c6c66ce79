"""Errors and safety of the Numba backend.

User names and constants never reach generated code (only identifiers made by graphc and
numbers do), a Numba typing failure is re-raised as a graphc error naming the node, the op
and the line of the generated kernel, and run-time errors name the node.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc import numba_codegen
from graphc.elementwise_ops import Elementwise, ElementwiseDef
from graphc.functable import FUNCTIONS, Fn
from graphc.ir import Tensor


@pytest.fixture(autouse=True)
def kernel_cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR",
                       str(tmp_path_factory.getbasetemp() / "graphc-kernel-cache"))


def code_lines(source: str) -> list[str]:
    """The lines of generated source that are code, not comments."""
    return [line for line in source.splitlines() if line.strip()
            and not line.strip().startswith("#")]


@pytest.mark.parametrize("names", [
    ("np", "run", "_bufs"), ("_ptrs", "_addr", "_contig"), ("in0_np", "v0_sigmoid", "kernel"),
    ("math", "os", "exec"), ("λ", "μ", "Ω")])
def test_input_names_cannot_shadow_or_inject(names):
    xs = [gc.input(n, (3,), "float64") for n in names]
    y = gc.sigmoid(xs[0]) * xs[1] + gc.softplus(xs[2])
    feeds = {n: np.linspace(-1, 1, 3) + k for k, n in enumerate(names)}
    f = gc.compile(y, backend="numba")
    np.testing.assert_allclose(f(feeds), gc.compile(y, backend="numpy")(feeds), rtol=1e-12)
    assert f.source.isascii()
    (header,) = [line for line in f.source.splitlines() if line.startswith("def run(")]
    params = header[len("def run("):-2].split(", ")
    assert params[-2:] == ["_bufs", "_ptrs"]
    for p in params[:-2]:  # feeds are bound to names graphc makes, never the bare user name
        assert p.startswith("in") and p.isidentifier() and p not in names, p


def test_a_hostile_custom_op_reaches_only_comments():
    evil = "evil\nimport os; os.system('echo pwned')  # \u2028"
    x_sym = sp.Symbol("__import__('os').system('echo pwned')", real=True)
    op = ElementwiseDef(evil, [x_sym], {}, x_sym * sp.exp(-x_sym) + 1)
    x = gc.input("x", (4,), "float64")
    y = Tensor.make(Elementwise(op), (x,))
    f = gc.compile(y, backend="numba")
    np.testing.assert_allclose(f(x=np.arange(4.0)), np.arange(4.0) * np.exp(-np.arange(4.0)) + 1,
                               rtol=1e-12)
    assert f.source.isascii()
    for line in code_lines(f.source):
        assert "pwned" not in line and "__import__" not in line and "os.system" not in line
    for name, kernel in f._program.kernels.items():
        assert name.isidentifier() and kernel.path.endswith(".py")
        assert "pwned" not in kernel.path and "\n" not in kernel.path


def test_constant_values_are_not_printed_into_code():
    x = gc.input("x", (3,), "float64")
    c = gc.constant(np.array([1234.5678, -8765.4321, 31415.9265]), name="secret")
    f = gc.compile(gc.tanh(x * c) + c, backend="numba")
    assert not any(s in f.source for s in ("1234.5678", "8765.4321", "31415.9265"))
    np.testing.assert_allclose(f(x=np.ones(3)), np.tanh(c.op.value.array) + c.op.value.array)


def test_comment_escapes_line_breaks_and_non_ascii():
    text = numba_codegen.comment("a\nb\rc\u2028d\x00é")
    assert "\n" not in text and "\r" not in text and text.isascii() and text.isprintable()
    assert numba_codegen.identifier("9 lives; rm -rf /").isidentifier()


sin_plus = gc.elementwise("t_numba_sin_plus", lambda x: sp.sin(x) * x + 1)


def test_a_numba_typing_failure_names_node_op_and_source_line(monkeypatch):
    # make the printer emit code Numba cannot type: np.linalg.norm of a scalar
    monkeypatch.setitem(FUNCTIONS, sp.sin, Fn("numpy.sin", "np.linalg.norm", "math.sin"))
    x = gc.input("x", (5,), "float64")
    y = sin_plus(gc.exp(x))  # the failing node, named t_numba_sin_plus
    with pytest.raises(gc.CodegenError) as info:
        gc.compile(y, backend="numba", optimize=False)  # the unfused kernel of that node
    err = info.value
    message = str(err)
    assert isinstance(err, gc.GraphError)
    assert "node t_numba_sin_plus " in message and "%" not in message
    assert "t_numba_sin_plus_f64_F_" in message and ".py:" in message  # kernel file:line
    assert "test_numba_safety.py" in message  # and the user's own line
    assert "TypingError" in message
    path, line = message.split("generated source: ")[1].split()[0].rsplit(":", 1)
    with open(path) as f:
        assert "np.linalg.norm" in f.read().splitlines()[int(line) - 1]


def test_a_run_time_error_names_the_node():
    x = gc.input("x", (4, 2), "float64")
    idx = gc.input("idx", (3,), "int32")
    f = gc.compile(gc.sigmoid(gc.take(x, idx)), backend="numba")
    f(x=np.zeros((4, 2)), idx=np.array([0, 3, -4], np.int32))
    with pytest.raises(gc.GraphError, match=r"take .*failed at run time"):
        f(x=np.zeros((4, 2)), idx=np.array([0, 4, 1], np.int32))


def test_feed_errors_are_the_same_as_the_reference():
    x = gc.input("x", (2, 3))
    f = gc.compile(gc.sigmoid(x), backend="numba")
    with pytest.raises(gc.FeedError, match="'x'"):
        f(x=np.zeros((3, 2), np.float32))
    with pytest.raises(gc.FeedError, match="missing"):
        f()


def test_numba_is_the_default_backend():
    x = gc.input("x", (2,))
    f = gc.compile(x * 2.0)
    assert f.stats["backend"] == "numba" and "def run(" in f.source
    np.testing.assert_array_equal(f(x=np.ones(2, np.float32)), [2.0, 2.0])
