"""gc.scan and gc.stop_gradient: forward and gradients against the unrolled graph, PyTorch
and finite differences; truncation; construction errors; the Numba and CUDA backends."""

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.scan import Scan

T, B, D, H = 3, 2, 2, 2
rng = np.random.default_rng(0)


def normal(*shape):
    return rng.standard_normal(shape) * 0.7


# ---------------------------------------------------------------------------------------
# Cells: fn(carry, x) -> (carry, y), closing over their weights


def rnn_cell(W, U, b):
    def cell(h, x):
        h = gc.tanh(x @ W + h @ U + b)
        return h, h
    return cell


def lstm_cell(W, U, b):
    def cell(carry, x):
        h, c = carry
        z = x @ W + h @ U + b
        i, f = gc.sigmoid(z[:, :H]), gc.sigmoid(z[:, H:2 * H])
        g, o = gc.tanh(z[:, 2 * H:3 * H]), gc.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * gc.tanh(c)
        return (h, c), h
    return cell


def gru_cell(W, U, b):
    def cell(h, x):
        a, u = x @ W + b, h @ U
        z = gc.sigmoid(a[:, :H] + u[:, :H])
        r = gc.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
        n = gc.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
        h = (1.0 - z) * n + z * h
        return h, h
    return cell


GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def unroll(fn, init, xs, reverse=False, cut=None):
    """The loop written out: one copy of the body per step.  ``cut(s)``: stop the carry's
    gradient into the s-th step run."""
    carry, ys = init, [None] * xs.shape[0]
    order = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
    for s, t in enumerate(order):
        if cut is not None and cut(s):
            carry = tuple(map(gc.stop_gradient, carry)) if isinstance(carry, tuple) else \
                gc.stop_gradient(carry)
        carry, ys[t] = fn(carry, xs[t])
    return carry, gc.stack(ys)


def model(kind, dtype="float64", steps=T):
    """(inputs, scanned loss, fn, init) for a cell of ``kind``."""
    n = GATES[kind] * H
    W, U = gc.input("W", (D, n), dtype), gc.input("U", (H, n), dtype)
    b = gc.input("b", (n,), dtype)
    xs, h0 = gc.input("xs", (steps, B, D), dtype), gc.input("h0", (B, H), dtype)
    init = (h0, gc.input("c0", (B, H), dtype)) if kind == "lstm" else h0
    return [W, U, b, xs, h0] + ([init[1]] if kind == "lstm" else []), CELLS[kind](W, U, b), init


def loss_of(carry, ys):
    last = carry[0] if isinstance(carry, tuple) else carry
    return gc.sum(ys * ys) + gc.sum(gc.sin(last))


def feeds_for(inputs, dtype="float64"):
    return {t.op.label: normal(*t.shape).astype(dtype) for t in inputs}


def close(got, want, rtol=1e-12):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------
# Forward and gradients against the unrolled graph, finite differences and PyTorch


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_forward_and_gradients_equal_the_unrolled_graph(kind):
    inputs, fn, init = model(kind)
    xs = inputs[3]
    loss = loss_of(*gc.scan(fn, init, xs))
    loss_u = loss_of(*unroll(fn, init, xs))
    f = gc.compile([loss] + gc.grad(loss, inputs), backend="numpy")
    f_u = gc.compile([loss_u] + gc.grad(loss_u, inputs), backend="numpy")
    feeds = feeds_for(inputs)
    close(f(feeds), f_u(feeds))
    scans = [t for t in f.graph.nodes if isinstance(t.op, Scan)]
    assert {id(t.op.loop) for t in scans} and len(f.graph.nodes) < len(f_u.graph.nodes) / 2


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_check_grad_passes_through_a_scanned_cell(kind):
    inputs, fn, init = model(kind)
    loss = loss_of(*gc.scan(fn, init, inputs[3]))
    report = gc.check_grad(loss, inputs, feeds_for(inputs), max_elements=6)
    assert report.ok, report


def test_check_grad_of_a_float32_scan_runs_the_body_in_float64():
    inputs, fn, init = model("rnn", "float32")
    loss = loss_of(*gc.scan(fn, init, inputs[3]))
    report = gc.check_grad(loss, inputs[:2], feeds_for(inputs, "float32"))
    assert report.ok and max(r.max_abs_error for r in report.rows) < 1e-8, report


@pytest.mark.slow  # importing torch
def test_lstm_gradients_equal_pytorch():
    torch = pytest.importorskip("torch")
    inputs, fn, init = model("lstm")
    loss = loss_of(*gc.scan(fn, init, inputs[3]))
    feeds = feeds_for(inputs)
    got = gc.compile([loss] + gc.grad(loss, inputs), backend="numpy")(feeds)
    tv = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    h, c, hs = tv["h0"], tv["c0"], []
    for t in range(T):
        z = tv["xs"][t] @ tv["W"] + h @ tv["U"] + tv["b"]
        i, f, g, o = z[:, :H].sigmoid(), z[:, H:2 * H].sigmoid(), z[:, 2 * H:3 * H].tanh(), \
            z[:, 3 * H:].sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        hs.append(h)
    want = (torch.stack(hs) ** 2).sum() + h.sin().sum()
    want.backward()
    close(got, [want.detach().numpy()] + [tv[t.op.label].grad.numpy() for t in inputs], 1e-10)


def test_hvp_and_grad_of_grad_equal_the_unrolled_graph():
    inputs, fn, init = model("rnn")
    W, U, xs = inputs[0], inputs[1], inputs[3]
    loss = loss_of(*gc.scan(fn, init, xs))
    loss_u = loss_of(*unroll(fn, init, xs))
    v = normal(*U.shape)
    second = [gc.hvp(loss, U, v), gc.grad(gc.sum(gc.grad(loss, W) ** 2), xs)]
    second_u = [gc.hvp(loss_u, U, v), gc.grad(gc.sum(gc.grad(loss_u, W) ** 2), xs)]
    feeds = feeds_for(inputs)
    close(gc.compile(second, backend="numpy")(feeds),
          gc.compile(second_u, backend="numpy")(feeds), 1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_remat_pipeline_recomputes_the_steps_instead_of_stacking_residuals(kind):
    from graphc.passes import pipeline
    inputs, fn, init = model(kind, steps=6)
    loss = loss_of(*gc.scan(fn, init, inputs[3], truncate=4))
    outs = [loss] + gc.grad(loss, inputs)
    stored = gc.compile(outs, backend="numpy")
    remat = gc.compile(outs, backend="numpy", passes=pipeline.REMAT_PIPELINE)
    reads = [{t.op.out[0] for t in f.graph.nodes if isinstance(t.op, Scan)
              and not t.op.loop.reverse} for f in (stored, remat)]
    assert "node" in reads[0] and "node" not in reads[1]  # residuals, or carries only
    (log,) = [e for e in remat.stats["passes"] if e["pass"] == "remat"]
    assert log["recomputed"] >= 3 and log["bytes_not_kept"] >= 3 * 6 * B * H * 8
    plans = [[e for e in f.stats["passes"] if e["pass"] == "memory"][0] for f in (stored, remat)]
    assert plans[1]["planned_peak_bytes"] < plans[0]["planned_peak_bytes"]
    feeds = feeds_for(inputs)
    close(remat(feeds), stored(feeds))
    loss_u = loss_of(*unroll(fn, init, inputs[3], cut=lambda s: s > 0 and s % 4 == 0))
    close(remat(feeds), gc.compile([loss_u] + gc.grad(loss_u, inputs), backend="numpy")(feeds))


def carry_loss(kind, steps):
    """A scanned cell's loss read from its final carry only (its ys unused)."""
    if kind == "nn.LSTM":  # float32, batch first: the scan reads a transpose of the input
        lstm = gc.nn.LSTM(D, H, name="lstm")
        _, (h, _) = lstm(gc.input("x", (B, steps, D)))
        return list(lstm.parameters().values()), gc.sum(gc.sin(h))
    inputs, fn, init = model(kind, steps=steps)
    carry, _ = gc.scan(fn, init, inputs[3])
    return inputs, gc.sum(gc.sin(carry[0] if isinstance(carry, tuple) else carry))


def planned_peak(f) -> int:
    return [e for e in f.stats["passes"] if e["pass"] == "memory"][0]["planned_peak_bytes"]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru", "nn.LSTM"])
def test_under_remat_the_planned_peak_grows_with_the_steps_by_the_carries_only(kind):
    # per step the remat pipeline keeps the carries (B x H each; an LSTM has h and c) and
    # nothing else: no input projection xs @ W, no gate gradients for the weights' matmuls
    from graphc.passes import pipeline
    peaks = {}
    for steps in (100, 200):
        inputs, loss = carry_loss(kind, steps)
        outs = [loss] + gc.grad(loss, [t for t in inputs if t.op.label != "xs"])
        for name in ("DEFAULT", "REMAT"):
            f = gc.compile(outs, backend="numpy", passes=getattr(pipeline, f"{name}_PIPELINE"))
            peaks[name, steps] = planned_peak(f)
    carries = (1 if kind in ("rnn", "gru") else 2) * B * H * (4 if kind == "nn.LSTM" else 8)
    assert peaks["REMAT", 200] - peaks["REMAT", 100] == 100 * carries
    assert peaks["DEFAULT", 200] - peaks["DEFAULT", 100] > 2 * 100 * carries


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("carry_only", [False, True])
def test_remat_gradients_equal_the_default_pipelines_and_the_unrolled_graphs(kind, carry_only):
    from graphc.passes import pipeline
    if carry_only:
        inputs, loss = carry_loss(kind, 5)
        carry, _ = unroll(*model(kind, steps=5)[1:], inputs[3])
        loss_u = gc.sum(gc.sin(carry[0] if isinstance(carry, tuple) else carry))
    else:
        inputs, fn, init = model(kind, steps=5)
        loss, loss_u = loss_of(*gc.scan(fn, init, inputs[3])), loss_of(*unroll(fn, init, inputs[3]))
    outs = [loss] + gc.grad(loss, inputs)
    feeds = feeds_for(inputs)
    got = gc.compile(outs, backend="numpy", passes=pipeline.REMAT_PIPELINE)(feeds)
    close(got, gc.compile(outs, backend="numpy")(feeds), 1e-10)
    close(got, gc.compile([loss_u] + gc.grad(loss_u, inputs), backend="numpy")(feeds), 1e-10)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_remat_of_hvp_and_grad_of_grad_equals_the_default_pipeline(kind):
    # the second-order backward loop reads residuals of the first, which read the forward's
    from graphc.passes import pipeline
    inputs, fn, init = model(kind, steps=4)
    W, U, xs = inputs[0], inputs[1], inputs[3]
    loss = loss_of(*gc.scan(fn, init, xs, reverse=True))
    second = [gc.hvp(loss, U, normal(*U.shape)), gc.grad(gc.sum(gc.grad(loss, W) ** 2), xs)]
    feeds = feeds_for(inputs)
    close(gc.compile(second, backend="numpy", passes=pipeline.REMAT_PIPELINE)(feeds),
          gc.compile(second, backend="numpy")(feeds), 1e-10)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_truncate_cuts_the_carry_gradient_as_stop_gradient_does(k, reverse):
    inputs, fn, init = model("rnn", steps=7)
    xs = inputs[3]
    loss = loss_of(*gc.scan(fn, init, xs, reverse=reverse, truncate=k))
    loss_u = loss_of(*unroll(fn, init, xs, reverse, cut=lambda s: s > 0 and s % k == 0))
    loss_full = loss_of(*gc.scan(fn, init, xs, reverse=reverse))
    feeds = feeds_for(inputs)
    got = gc.compile(gc.grad(loss, inputs), backend="numpy")(feeds)
    close(got, gc.compile(gc.grad(loss_u, inputs), backend="numpy")(feeds))
    full = gc.compile(gc.grad(loss_full, inputs), backend="numpy")(feeds)
    assert not np.allclose(got[1], full[1])  # the cut changes dL/dU


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_second_derivatives_through_truncate_are_those_of_stop_gradient(k, reverse):
    # the backward loop reads the carry each step got (a residual); differentiated again,
    # the residual's gradient is the carry's and is cut at the same steps: it was added
    # after the cut, so grad of grad and hvp were neither stop_gradient's nor the truth
    inputs, fn, init = model("rnn", steps=5)
    W, U, xs = inputs[0], inputs[1], inputs[3]
    cut = lambda s: s > 0 and s % k == 0  # noqa: E731
    losses = [loss_of(*gc.scan(fn, init, xs, reverse=reverse, truncate=k)),
              loss_of(*unroll(fn, init, xs, reverse, cut=cut))]
    v = normal(*U.shape)
    second = [[gc.hvp(loss, U, v), gc.grad(gc.sum(gc.grad(loss, W) ** 2), xs)]
              for loss in losses]
    feeds = feeds_for(inputs)
    for backend in ("numpy", "numba"):
        close(gc.compile(second[0], backend=backend)(feeds),
              gc.compile(second[1], backend="numpy")(feeds), 1e-9)


# ---------------------------------------------------------------------------------------
# Forms of the call: reverse, xs=None, tuples, closures, int carries and xs


def test_reverse_runs_from_the_last_step_and_keeps_ys_in_place():
    xs = gc.input("xs", (5, 2), "float64")
    zero = gc.constant(np.zeros(2))
    total, partial = gc.scan(lambda c, x: (c + x, c + x), zero, xs, reverse=True)
    X = normal(5, 2)
    got = gc.compile([total, partial], backend="numpy")(xs=X)
    close(got, [X.sum(0), np.cumsum(X[::-1], 0)[::-1]])


def test_xs_none_with_length_and_tuple_carries_xs_and_ys():
    count, ys = gc.scan(lambda c, x: (c + 1.0, None), gc.constant(0.0, dtype="float64"),
                        None, length=6)
    assert ys is None
    a, b = gc.input("a", (3, 2), "float64"), gc.input("b", (3,), "float64")
    (s, p), (y1, y2) = gc.scan(lambda c, x: ((c[0] + x[0], c[1] * x[1]), (c[0], x[1] * 2.0)),
                               (gc.constant(np.zeros(2)), gc.constant(1.0, dtype="float64")),
                               (a, b))
    A, Bv = normal(3, 2), normal(3)
    got = gc.compile([count, s, p, y1, y2], backend="numpy")(a=A, b=Bv)
    close(got, [6.0, A.sum(0), Bv.prod(), np.cumsum(A, 0) - A, 2 * Bv])


def test_int_carry_int_xs_and_a_closed_over_embedding_get_their_gradients():
    E = gc.input("E", (5, H), "float64")
    ids = gc.input("ids", (T, B), "int64")

    def fn(carry, i):
        h, n = carry
        return (gc.tanh(h + gc.take(E, i)), n + 1), h

    (h, n), hs = gc.scan(fn, (gc.constant(np.zeros((B, H))), gc.constant(0)), ids)
    loss = gc.sum(hs) + gc.sum(h * h)
    hu = gc.constant(np.zeros((B, H)))
    outs = []
    for t in range(T):
        outs.append(hu)
        hu = gc.tanh(hu + gc.take(E, ids[t]))
    loss_u = gc.sum(gc.stack(outs)) + gc.sum(hu * hu)
    feeds = {"E": normal(5, H), "ids": rng.integers(0, 5, (T, B))}
    got = gc.compile([n, gc.grad(loss, E)], backend="numpy")(feeds)
    close(got, [T, gc.compile(gc.grad(loss_u, E), backend="numpy")(feeds)])


def test_loop_invariant_work_in_the_body_is_computed_before_the_loop():
    W = gc.input("W", (H, H), "float64")
    h, _ = gc.scan(lambda h, x: (gc.tanh(h @ gc.transpose(W) + x), None),
                   gc.input("h0", (B, H), "float64"), gc.input("xs", (T, B, H), "float64"))
    (const,) = h.inputs[2:]
    assert const.op.name == "transpose" and const.inputs == (W,)
    assert not any(t.op.name == "transpose" for t in h.op.loop.graph.nodes)


def test_the_input_projection_is_one_matmul_before_the_loop():
    inputs, fn, init = model("lstm")
    W, xs = inputs[0], inputs[3]
    (h, _), _ = gc.scan(fn, init, xs)
    projected = [i for i in h.inputs if i.op.name == "matmul"]
    assert [p.inputs for p in projected] == [(xs, W)] and projected[0].shape == (T, B, 4 * H)
    assert xs not in h.inputs and W not in h.inputs
    body = [t.op.name for t in h.op.loop.graph.nodes]
    assert body.count("matmul") == 1  # h @ U only
    dW = gc.grad(gc.sum(h), W)
    assert not any(isinstance(t.op, Scan) and t.shape == W.shape for t in gc.Graph(dW).nodes)


@pytest.mark.parametrize("kind,reverse", [("rnn", False), ("lstm", True), ("gru", False)])
def test_weight_gradients_are_one_matmul_after_the_reverse_loop(kind, reverse):
    inputs, fn, init = model(kind, steps=5)
    U, xs = inputs[1], inputs[3]
    loss = loss_of(*gc.scan(fn, init, xs, reverse=reverse))
    grads = gc.grad(loss, inputs)
    (bwd,) = {t.op.loop for t in gc.Graph(grads).nodes
              if isinstance(t.op, Scan) and t.op.loop.reverse != reverse}
    # the reverse loop carries the carry's gradient only: no running sum of a weight's
    assert len(bwd.carry) == len(init if isinstance(init, tuple) else [init])
    consts = {id(p) for p in bwd.consts}
    for t in bwd.graph.nodes:  # each matmul left in the body reads a weight: g @ Uᵀ
        if t.op.name == "matmul":
            assert any(id(i) in consts or id(i.inputs[0] if i.inputs else i) in consts
                       for i in t.inputs), t
    dU = grads[1]
    outer = [t for t in gc.Graph(dU).nodes if t.op.name == "matmul" and t.shape == U.shape]
    assert [t.inputs[0].shape for t in outer] == [(H, 5 * B)]  # h_{t-1}ᵀ of all steps at once
    loss_u = loss_of(*unroll(fn, init, xs, reverse))
    feeds = feeds_for(inputs)
    close(gc.compile(grads, backend="numpy")(feeds),
          gc.compile(gc.grad(loss_u, inputs), backend="numpy")(feeds))


def test_identical_scans_are_one_node_and_different_ones_are_not():
    inputs, fn, init = model("rnn")
    a, b = gc.scan(fn, init, inputs[3]), gc.scan(fn, init, inputs[3])
    assert a[0] is b[0] and a[1] is b[1]
    c = gc.scan(fn, init, inputs[3], reverse=True)
    assert c[0] is not a[0]
    assert a[0].digest == gc.scan(fn, init, inputs[3])[0].digest != c[0].digest


def test_a_scan_inside_a_scan_body():
    xs = gc.input("xs", (3, 4), "float64")

    def outer(c, row):
        inner, _ = gc.scan(lambda s, v: (s + v * c, None), gc.constant(0.0, dtype="float64"),
                           row)
        return c + inner, inner

    c, ys = gc.scan(outer, gc.constant(1.0, dtype="float64"), xs)
    X = normal(3, 4)
    want_c, want_ys = 1.0, []
    for row in X:
        s = (row * want_c).sum()
        want_c, _ = want_c + s, want_ys.append(s)
    f = gc.compile([c, ys, gc.grad(c, xs)], backend="numpy")
    got = f(xs=X)
    close(got[:2], [want_c, want_ys])
    rep = gc.check_grad(c, xs, {"xs": X})
    assert rep.ok, rep


def test_the_text_form_prints_each_body_once_indented_with_its_inputs_and_outputs():
    xs = gc.input("xs", (3, 4), "float64")

    def outer(c, row):
        inner, _ = gc.scan(lambda s, v: (s + v * c, None), gc.constant(0.0, dtype="float64"),
                           row)
        return c + inner, inner

    c, ys = gc.scan(outer, gc.constant(1.0, dtype="float64"), xs)
    text = str(gc.Graph([c, ys]))
    assert text.count("body of scan, 3 steps {") == 1  # two outputs, one run, one body
    inner = [line for line in text.splitlines() if line.startswith(" " * 8)]
    assert inner == [
        "        body of scan, 4 steps {",
        "          carry scan1.carry0: f64[] = 0",
        "          x scan1.x0: f64[] = scan.x0[t]",
        "          const scan1.const0: f64[] = scan.carry0",
        "          mul = mul(scan1.x0, scan1.const0) : f64[]",
        "          add = add(scan1.carry0, mul)  : f64[]",
        "          return carry add; ys ()",
        "        }"]
    assert "      return carry add; ys scan\n    }\n  scan_2 = scan(1, xs, out=y0" in text
    backward = str(gc.Graph(gc.grad(c, xs)))
    assert "body of scan_2, 3 steps, reverse {" in backward
    assert "      x scan.carry0: f64[] = scan[t]" in backward  # the carries each step got


# ---------------------------------------------------------------------------------------
# Construction errors: raised at the call, naming the carry element and the user's line

H0 = gc.input("h0", (B, H), "float64")
XS = gc.input("xs", (T, B, H), "float64")
ERRORS = {
    "shape": (lambda: gc.scan(lambda h, x: (h[0], x), H0, XS), gc.ShapeError,
              r"scan: fn changes the shape of carry from \(2, 2\) to \(2,\)"),
    "dtype": (lambda: gc.scan(lambda c, x: ((c[0], gc.cast(c[1], "float32")), x),
                              (H0, H0), XS), gc.DTypeError,
              r"scan: fn changes the dtype of carry\[1\] from float64 to float32"),
    "lengths": (lambda: gc.scan(lambda h, x: (h, None), H0, (XS, XS[:2])), gc.ShapeError,
                r"scan: xs have unequal lengths along axis 0 \(xs\[0\] \(3, 2, 2\), "
                r"xs\[1\] \(2, 2, 2\)\)"),
    "non-tensor y": (lambda: gc.scan(lambda h, x: (h, 1.0), H0, XS), gc.GraphError,
                     "scan: fn returned float as y"),
    "non-tensor carry": (lambda: gc.scan(lambda c, x: ((c[0], 0.0), None), (H0, H0), XS),
                         gc.GraphError, r"scan: fn returned float as carry\[1\]"),
    "not a pair": (lambda: gc.scan(lambda h, x: h, H0, XS), gc.GraphError,
                   r"scan: fn must return a pair \(carry, y\), got Tensor"),
    "length": (lambda: gc.scan(lambda h, x: (h, None), H0, XS, length=5), gc.ShapeError,
               "scan: length=5 but xs have length 3"),
    "no length": (lambda: gc.scan(lambda h, x: (h, None), H0, None), gc.GraphError,
                  r"scan: xs=None needs length="),
    "init": (lambda: gc.scan(lambda h, x: (h, None), [H0, 0.0], XS), gc.GraphError,
             r"scan: init\[1\] is float, not a graphc Tensor"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_construction_errors_name_the_problem_and_the_users_line(case):
    make, error, message = ERRORS[case]
    with pytest.raises(error, match=message) as info:
        make()
    assert f"{os.path.basename(__file__)}:" in str(info.value)
    assert "gc.scan(" in str(info.value)  # the user's source line


def test_a_changed_carry_names_the_line_that_made_it():
    def fn(h, x):
        wrong = gc.sum(h, axis=0)
        return wrong, None
    with pytest.raises(gc.ShapeError, match=r"made at .*test_scan.py:\d+"):
        gc.scan(fn, H0, XS)


# ---------------------------------------------------------------------------------------
# stop_gradient


def test_stop_gradient_is_identity_forward_and_zero_backward():
    x = gc.input("x", (3,), "float64")
    y = x * gc.stop_gradient(x * x)
    X = np.array([1.0, -2.0, 0.5])
    for backend in ("numpy", "numba"):  # (unoptimized: simplify removes stop_gradient)
        val, g = gc.compile([y, gc.grad(gc.sum(y), x)], backend=backend, optimize=False)(x=X)
        close([val, g], [X ** 3, X ** 2])
    assert gc.grad(gc.sum(gc.stop_gradient(x)), x).op.name == "broadcast_to"  # zeros
    dot = gc.render(gc.sum(y), backward=True, values={"x": X}).source
    assert "stop_gradient" in dot
    with pytest.raises(gc.GraphError, match="stop_gradient: expected a graphc Tensor"):
        gc.stop_gradient(1.0)


# ---------------------------------------------------------------------------------------
# Numba: the body compiled once, results as the unrolled graph's to float32 rounding


@pytest.fixture(scope="module")
def rnn32():
    def compiled(steps):
        inputs, fn, init = model("rnn", "float32", steps)
        loss = loss_of(*gc.scan(fn, init, inputs[3]))
        return inputs, fn, init, gc.compile([loss] + gc.grad(loss, inputs), backend="numba")
    return compiled(T), compiled(3 * T)


@pytest.mark.slow  # compiles kernels
def test_numba_scan_matches_the_unrolled_graph(rnn32):
    inputs, fn, init, f = rnn32[0]
    loss_u = loss_of(*unroll(fn, init, inputs[3]))
    f_u = gc.compile([loss_u] + gc.grad(loss_u, inputs), backend="numpy")
    feeds = feeds_for(inputs, "float32")
    for g, w in zip(f(feeds), f_u(feeds)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
    assert f.stats["numpy_fallbacks"] == [] and f.stats["lowered"]["loop"] >= 2
    assert f"loop{''}" in f.source and f"{T} steps" in f.source


@pytest.mark.slow
def test_numba_body_is_compiled_once_whatever_the_length(rnn32):
    (_, _, _, f), (inputs, _, _, g) = rnn32
    assert len(g.graph.nodes) == len(f.graph.nodes)
    assert g.stats["kernels"] == f.stats["kernels"] and g.stats["kernel_cache_misses"] == 0
    feeds = feeds_for(inputs, "float32")
    assert g(feeds)[0].shape == ()


# ---------------------------------------------------------------------------------------
# CUDA (Numba's simulator, in a subprocess as tests/test_cuda_sim.py does)

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu() -> bool:
    from graphc import cuda_backend
    return not SIM and cuda_backend.available()[0]


@pytest.mark.slow  # compiles kernels
def test_numba_runs_the_remat_pipelines_loops_as_the_reference_does():
    from graphc.passes import pipeline
    inputs, fn, init = model("lstm", steps=5)
    loss = loss_of(*gc.scan(fn, init, inputs[3]))
    outs = [loss] + gc.grad(loss, inputs)
    f = gc.compile(outs, backend="numba", passes=pipeline.REMAT_PIPELINE)
    sums = [t for t in f.graph.nodes if isinstance(t.op, Scan) and t.op.loop.reverse and
            t.op.out[0] == "carry" and t.op.out[1] >= 2]
    assert len(sums) == 3  # W, U and b summed in the backward loop
    feeds = feeds_for(inputs)
    close(f(feeds), gc.compile(outs, backend="numpy")(feeds), 1e-10)


@pytest.mark.skipif(not SIM and not _gpu(),
                    reason="runs under NUMBA_ENABLE_CUDASIM=1 (see the next test) or on a GPU")
def test_cuda_scan_matches_numpy():
    from graphc.passes import pipeline

    from graphc import cuda_backend
    from graphc.graph import Graph
    inputs, fn, init = model("rnn", "float32", steps=3)
    loss = loss_of(*gc.scan(fn, init, inputs[3], reverse=True, truncate=2))
    outs = [loss] + gc.grad(loss, inputs)
    graph, _ = pipeline.run(Graph(outs), pipeline.DEFAULT_PIPELINE)
    program = cuda_backend.compile_graph(graph)
    reference = gc.compile(outs, backend="numpy")
    first = feeds_for(inputs, "float32")
    # a second call with other values: the loop bodies replay their recorded launches,
    # the carry and each step's slice of xs copied in (graphc.cuda_replay)
    for feeds in (first, {k: np.asarray(v) * 0.5 for k, v in first.items()}):
        for g, w in zip(program(feeds), reference(feeds)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
    assert program.stats["host_fallbacks"] == [] and program.stats["lowered"]["loop"] >= 2


@pytest.mark.slow
@pytest.mark.skipif(SIM, reason="this is the simulator run itself")
def test_cuda_scan_in_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                          f"{__file__}::test_cuda_scan_matches_numpy"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "1 passed" in run.stdout, \
        run.stdout[-3000:]


def test_numba_stats_count_the_scan_bodys_kernels(monkeypatch):
    # kernel loads stubbed: every load of the program and of its loop body is counted once,
    # as a miss on a cold compile and as a hit on a warm one (1 miss of 7 counted before)
    from graphc import kernel_cache
    inputs, fn, init = model("lstm", "float32", steps=3)
    loss = loss_of(*gc.scan(fn, init, inputs[3]))
    outputs = [loss] + gc.grad(loss, inputs[:3])
    for outcome in ("compiled", "memory"):
        names = []

        def load(spec, compile_object, names=names, outcome=outcome):
            names.append(spec.name)
            return kernel_cache.Kernel(spec, None, ""), outcome
        monkeypatch.setattr(kernel_cache, "load", load)
        monkeypatch.setattr(kernel_cache, "compile_missing", lambda specs, build: set())
        stats = gc.compile(outputs, backend="numba").stats
        hits, misses = (0, len(names)) if outcome == "compiled" else (len(names), 0)
        assert stats["lowered"]["loop"] >= 2 and len(names) > 2, (stats["lowered"], names)
        assert (stats["kernel_cache_hits"], stats["kernel_cache_misses"]) == (hits, misses)
        assert stats["kernels"] == len(set(names)), names


def test_a_tensor_leaked_out_of_one_body_into_another_is_an_error():
    # the carry placeholder kept from scan A's body was scan B's own carry placeholder (both
    # were interned as "scan.carry0"), so B silently added its carry to itself
    leak = []
    gc.scan(lambda c, x: (leak.append(c) or c + x, c), H0, XS)
    q0 = gc.input("q0", (B, H), "float64")
    with pytest.raises(gc.GraphError, match=r"scan: fn uses a tensor made inside the body "
                       r"of another scan .*test_scan.py:\d+") as info:
        gc.scan(lambda c, x: (c + leak[0], c), q0, XS)
    assert "gc.scan(lambda c, x: (c + leak[0], c)" in str(info.value)
    for use in (lambda t: gc.compile(t, backend="numpy"), gc.render, gc.explore):
        with pytest.raises(gc.GraphError, match="made inside the body of a scan"):
            use(gc.sum(leak[0] * 2.0))
    nested = []  # a tensor of the enclosing body, used by a nested scan's body: fine

    def outer(h, x):
        c, _ = gc.scan(lambda g, y: (g + y * h, None), h, x[None])
        nested.append(c)
        return c, None
    c, _ = gc.scan(outer, H0, XS)
    X = np.random.default_rng(0).standard_normal((T, B, H))
    got = gc.compile(c, backend="numpy")(h0=np.ones((B, H)), xs=X)
    want = np.ones((B, H))
    for x in X:
        want = want + x * want
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_the_gradient_of_a_nested_scan_is_drawn():
    # render labelled the backward's per-step residual outputs by a table that lacked them
    # (KeyError: 'node')
    W = gc.input("W", (2, 2), "float64")

    def outer(h, x):
        g, _ = gc.scan(lambda g, _: (gc.tanh(g @ W + x),) * 2, h, length=1)
        return g, g
    _, ys = gc.scan(outer, gc.input("h0", (2,), "float64"), gc.input("xs", (4, 2), "float64"))
    source = gc.render([gc.grad(gc.sum(ys), W)]).source
    assert "per step: body node" in source
