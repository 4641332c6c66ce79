"""``gc.check_grad``: compare symbolic gradients with central finite differences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from .compiler import accepted_array, compile
from .dynamic import feed_shapes, specialise
from .errors import FeedError, GraphError
from .graph import Graph, node_names
from .inputs import Input, constant, input
from .ir import Tensor, located


@dataclass
class TensorCheck:
    """The check of one tensor: elementwise (sampled or full) and one directional check."""

    name: str
    shape: tuple[int, ...]
    checked: int
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    directional_error: float
    ok: bool
    cause: str = ""
    directional_only: bool = False  # every checked element agreed; the direction did not


@dataclass
class EdgeCheck:
    """One forward edge z -> z.inputs[operand] checked on its own: the op's vector-Jacobian
    product u . dz/dx . v against a central difference of u . z(x + eps v)."""

    node: Tensor
    operand: int
    analytic: float
    numeric: float
    ok: bool
    names: tuple[str, str] = ("", "")  # the node's and the operand's display names


@dataclass
class GradCheckReport:
    """What :func:`check_grad` found; ``print(report)`` shows a table."""

    rows: list[TensorCheck]
    eps: float
    rtol: float
    atol: float
    dtype: str
    bad_edges: list[EdgeCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=0.0)

    @property
    def max_abs_error(self) -> float:
        return max((r.max_abs_error for r in self.rows), default=0.0)

    def __str__(self) -> str:
        head = ("tensor", "shape", "checked", "max abs err", "max rel err", "worst index",
                "directional", "ok")
        body = [(r.name, str(r.shape), str(r.checked), f"{r.max_abs_error:.3g}",
                 f"{r.max_rel_error:.3g}", str(r.worst_index), f"{r.directional_error:.3g}",
                 "yes" if r.ok else "NO") for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        def line(cells):
            return "  ".join(cells).rstrip()

        verdict = "ok" if self.ok else "FAILED"
        lines = [f"check_grad: {verdict} (central differences in {self.dtype}, eps={self.eps:g}, "
                 f"rtol={self.rtol:g}, atol={self.atol:g})",
                 line(h.ljust(w) for h, w in zip(head, widths))]
        lines += [line(c.ljust(w) for c, w in zip(row, widths)) for row in body]
        for r in self.rows:
            if r.directional_only:
                lines.append(f"{r.name}: {r.cause}")
            elif not r.ok:
                lines.append(f"{r.name}{list(r.worst_index)}: analytic {r.analytic:.6g}, "
                             f"numeric {r.numeric:.6g}; likely cause: {r.cause}")
        for e in self.bad_edges:
            lines.append(f"where: the derivative of {e.node.op.name} node {e.names[0]!r} with "
                         f"respect to operand {e.operand} ({e.names[1]!r}) fails on its own "
                         f"(u.J.v analytic {e.analytic:.6g}, numeric {e.numeric:.6g})")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    __repr__ = __str__


def _leaves(wrt) -> tuple[list[Tensor], bool]:
    single = isinstance(wrt, Tensor)
    wrt = [wrt] if single else list(wrt)
    for w in wrt:
        if not isinstance(w, Tensor) or not isinstance(w.op, Input):
            raise GraphError("check_grad perturbs feeds: every wrt must be a gc.input or "
                             f"gc.param, got {getattr(w, 'name', w)!r}")
        if not dtypes.is_float(w.dtype):
            raise GraphError(f"check_grad: {w.op.label!r} is {w.dtype}; only float inputs "
                             "have gradients")
    return wrt, single


def check_edges(y, feeds, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0) -> list[EdgeCheck]:
    """Check every float edge of ``y``'s graph on its own, in float64, at the values
    ``feeds`` give: localises a failing gradient to the op whose derivative is wrong (or
    that sits on a kink).  Nodes in the result are those of ``y``'s own graph."""
    from graphc.passes.autodiff import vjp
    from graphc.passes.precision import with_float_dtype
    memo: dict = {}  # y's nodes -> at the feeds' sizes, each checked at those
    (ys,) = specialise([y], feed_shapes(y, feeds), memo)
    (y64,), mapping = with_float_dtype([ys], "float64", "float32")
    original = {id(mapping[id(memo.get(id(old), old))]): old for old in Graph(y).nodes
                if id(memo.get(id(old), old)) in mapping}
    names = node_names(Graph(y))
    nodes = Graph(y64).nodes
    run = compile(list(nodes), backend="numpy")
    values = dict(zip(map(id, nodes), run({k: feeds[k] for k in run.input_names})))
    rng = np.random.default_rng(seed)
    checks = []
    for z in nodes:
        if not z.inputs or not dtypes.is_float(z.dtype) or id(z) not in original:
            continue  # (not in original: a node of a dynamic call's replay)
        holders = [input(f"p{i}", t.shape, t.dtype) for i, t in enumerate(z.inputs)]
        alone = Tensor.make(z.op, holders)
        at = {h.op.label: values[id(t)] for h, t in zip(holders, z.inputs)}
        f = compile(alone, backend="numpy")
        u = rng.standard_normal(z.shape)
        for k, h in enumerate(holders):
            if not dtypes.is_float(h.dtype):
                continue
            v = rng.standard_normal(h.shape)
            g = compile(vjp(alone, h, constant(u)), backend="numpy")
            analytic = float(np.sum(g({n: at[n] for n in g.input_names}) * v))
            shifted = [dict(at, **{h.op.label: at[h.op.label] + s * eps * v}) for s in (1, -1)]
            plus, minus = (float(np.sum(u * f(feed))) for feed in shifted)
            numeric = (plus - minus) / (2 * eps)
            z0 = original[id(z)]
            checks.append(EdgeCheck(z0, k, analytic, numeric,
                                    _close(analytic, numeric, rtol, atol),
                                    (names[id(z0)], names[id(z0.inputs[k])])))
    return checks


class _Probe:
    """Evaluates the loss and its gradients at perturbed feeds, in the check's dtype."""

    def __init__(self, y, wrt, feeds, dtype):
        from graphc.passes.autodiff import differentiated_from, grad
        from graphc.passes.precision import with_float_dtype
        # inputs of the graphs y is a gradient of: gc.compile takes feeds for them, and y's
        # derivative with respect to one it no longer reads is 0 (a constant Hessian)
        graph = Graph(y)
        given = {**differentiated_from(graph.nodes, every=True),
                 **{t.op.label: (t,) for t in graph.inputs}}  # to check the feeds against
        also = {k: dtype if dtypes.is_float(t[0].dtype) else t[0].dtype
                for k, t in given.items()}
        # dynamic dimensions at the feeds' sizes first: a deferred op (a scan over them)
        # replayed on the float64 copy would trace its body again, reading the float32
        # tensors it closes over
        shapes = feed_shapes(y, feeds)
        if shapes:
            y, *wrt = specialise([y, *wrt], shapes)
        if dtype == "float64":
            (y,), mapping = with_float_dtype([y], "float64", "float32")
            wrt = [mapping.get(id(w), w) for w in wrt]
        self.names = [w.op.label for w in wrt]
        self.f = compile(y, backend="numpy")
        self.g = compile(grad(y, wrt), backend="numpy")
        types = {t.op.label: t.dtype for t in Graph(y).inputs}
        also = {k: v for k, v in also.items() if k not in types}
        unknown = sorted(set(self.names) - set(types) - set(also))
        if unknown:
            raise GraphError(located(f"check_grad: y does not depend on {unknown}"))
        extra = sorted(set(feeds) - set(types) - set(also))
        if extra:
            raise FeedError(located(f"check_grad: unknown feed(s) {extra}; y takes "
                                    f"{sorted(types)}"))
        missing = sorted(set(types) - set(feeds))
        if missing:
            raise FeedError(located(f"check_grad: missing feed(s) {missing}; y takes "
                                    f"{sorted(types)}"))
        unfed = sorted(set(self.names) - set(feeds))
        if unfed:
            raise FeedError(located(f"check_grad: no feed for wrt {unfed}"))
        types |= also
        for k, v in feeds.items():  # a FeedError for a feed gc.compile would refuse
            accepted_array(k, given[k], v)
        self.feeds = {k: np.array(v, dtype=types[k]) if dtypes.is_float(types[k]) else v
                      for k, v in feeds.items()}  # copies: perturbing never touches the user's

    @staticmethod
    def _call(fn, feeds):
        """``fn`` on the feeds it takes (a gradient may not need every input)."""
        return fn({k: feeds[k] for k in fn.input_names if k in feeds})

    def loss(self, name=None, delta=None) -> float:
        feeds = self.feeds
        if name is not None:
            feeds = dict(feeds)
            feeds[name] = self.feeds[name] + delta
        return float(self._call(self.f, feeds))

    def grads(self) -> list[np.ndarray]:
        return [np.asarray(g, dtype=np.float64) for g in self._call(self.g, self.feeds)]

    def central(self, name, index, eps) -> float:
        delta = np.zeros_like(self.feeds[name])
        delta[index] = eps
        return (self.loss(name, delta) - self.loss(name, -delta)) / (2 * eps)

    def one_sided(self, name, index, eps) -> tuple[float, float]:
        delta = np.zeros_like(self.feeds[name])
        delta[index] = eps
        base = self.loss()
        return (self.loss(name, delta) - base) / eps, (base - self.loss(name, -delta)) / eps


def _worse(a: float, b: float) -> float:
    """The larger error, where NaN (a NaN gradient or loss) counts as the largest."""
    return a if np.isnan(a) or b <= a else b


def _close(a, n, rtol, atol) -> bool:
    return abs(a - n) <= atol + rtol * max(abs(a), abs(n))


def _cause(probe, name, index, analytic, eps, rtol, atol, dtype) -> str:
    """The likeliest reason an element failed, by experiment at that element."""
    numeric = probe.central(name, index, eps)
    if not np.isfinite(analytic) or not np.isfinite(numeric):
        return (f"not finite: the {'gradient' if not np.isfinite(analytic) else 'loss'} is "
                "NaN or infinite here (log or sqrt of a negative number, 0/0, overflow); "
                "check the feeds")
    if dtype == "float32":
        return ("float32 precision: the check ran in float32 (dtype='float32'), where a "
                "difference quotient keeps only a few digits; run it in float64, the default")
    for other in (1e-4, 1e-6, 1e-8):
        if other != eps and _close(analytic, probe.central(name, index, other), rtol, atol):
            size, error = ("small", "round-off") if other > eps else ("large", "truncation")
            return (f"eps={eps:g} is too {size} here ({error} error dominates); with "
                    f"eps={other:g} they agree")
    h = max(eps, 1e-5)
    right, left = probe.one_sided(name, index, h)
    near_right, near_left = probe.one_sided(name, index, h / 4)
    # a kink's one-sided slopes stay apart as the step shrinks; a smooth f's close in with
    # it (by about h f'': eps=1e-3 once read x^3 at 0.5 as a kink)
    if not _close(right, left, 1e-3, 1e-6) and \
            abs(near_right - near_left) > 0.5 * abs(right - left):
        return (f"a kink: one-sided slopes differ ({left:.4g} from the left, {right:.4g} "
                "from the right), so f is not differentiable here (ReLU at 0, max at a tie, "
                "|x| at 0); move the point off the kink")
    return "the analytic gradient is wrong: a wrong derivative rule for an op on this path"


def _check_tensor(probe, name: str, g, rng, eps, rtol, atol, dtype, max_elements):
    """The report's row for input ``name`` (``g``: its analytic gradient): each element (a
    seeded random subset of ``max_elements`` of them when that is not None and the tensor
    has more) against central differences, then one random direction."""
    x = probe.feeds[name]
    flat = np.arange(x.size)
    if max_elements is not None and x.size > max_elements:
        flat = np.sort(rng.choice(x.size, max_elements, replace=False))
    worst = (-np.inf, (), 0.0, 0.0)  # (badness, index, analytic, numeric)
    max_abs, max_rel, ok = 0.0, 0.0, True
    for i in flat:
        index = np.unravel_index(i, x.shape)
        a, n = float(g[index]), probe.central(name, index, eps)
        err = abs(a - n)
        scale = max(abs(a), abs(n))
        rel = np.nan if np.isnan(err) else err / scale if scale > atol else 0.0  # ~0: by atol
        passed = _close(a, n, rtol, atol)
        ok &= passed
        max_abs, max_rel = _worse(max_abs, err), _worse(max_rel, rel)
        badness = err - (atol + rtol * scale) if np.isfinite(err) else np.inf
        if badness > worst[0]:
            worst = (badness, tuple(int(j) for j in index), a, n)
    v = rng.standard_normal(x.shape)
    directional = float(np.sum(v * g))
    numeric = (probe.loss(name, eps * v) - probe.loss(name, -eps * v)) / (2 * eps)
    direction_err = abs(directional - numeric)
    along = _close(directional, numeric, rtol, atol * np.sqrt(x.size))
    row = TensorCheck(name, x.shape, len(flat), max_abs, max_rel, *worst[1:],
                      direction_err, bool(ok and along))
    if ok and not along:  # the wrong entries are among those not sampled
        row.directional_only = True
        row.cause = (f"the {len(flat)} elements checked agree, but the derivative along a "
                     f"random direction over all {x.size} does not (analytic {directional:.6g},"
                     f" numeric {numeric:.6g}): a wrong entry among the {x.size - len(flat)} "
                     "not checked; check_grad(..., full=True) checks every element")
    elif not row.ok:
        row.cause = _cause(probe, name, worst[1], worst[2], eps, rtol, atol, dtype)
    return row


def check_grad(y, wrt, feeds, eps=1e-6, rtol=1e-5, atol=1e-8, *, full=False,
               max_elements=64, seed=0, dtype="float64") -> GradCheckReport:
    """Check gc.grad(y, wrt) against central finite differences.

    Every element is checked for tensors of at most ``max_elements`` elements (or with
    ``full=True``); larger tensors are checked on a seeded random subset.  Each tensor also
    gets a directional check, v . grad against (f(x + eps v) - f(x - eps v)) / 2 eps for a
    random v.  The graph is evaluated in ``dtype`` (float64 by default: float32 inputs and
    parameters are converted).

    >>> import numpy as np, graphc as gc
    >>> x = gc.input("x", (3,))
    >>> rep = gc.check_grad(gc.sum(gc.tanh(x)), x, {"x": np.array([0.1, -0.5, 2.0])})
    >>> rep.ok
    True
    """
    if not isinstance(y, Tensor) or y.shape != ():
        raise GraphError("check_grad: y must be a scalar tensor")
    if not isinstance(feeds, dict):
        raise FeedError(f"check_grad: feeds must be a dict of name -> array, got "
                        f"{type(feeds).__name__}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"check_grad: dtype must be 'float64' or 'float32', got {dtype!r}")
    if not (eps > 0 and rtol >= 0 and atol >= 0):  # (NaN fails too)
        raise ValueError(f"check_grad: eps must be > 0 and rtol, atol >= 0, got eps={eps!r}, "
                         f"rtol={rtol!r}, atol={atol!r}")
    wrt, _ = _leaves(wrt)
    probe = _Probe(y, wrt, feeds, dtype)
    grads = probe.grads()
    rng = np.random.default_rng(seed)
    rows = [_check_tensor(probe, name, g, rng, eps, rtol, atol, dtype,
                          None if full else max_elements)
            for name, g in zip(probe.names, grads)]
    report = GradCheckReport(rows, eps, rtol, atol, dtype)
    if not report.ok:  # localise: which op's derivative fails on its own?
        report.bad_edges = [e for e in check_edges(y, probe.feeds, eps, rtol, atol, seed)
                            if not e.ok]
        report.notes = _truncations(y)
    return report


def _truncations(y) -> list[str]:
    """Why a gradient through a truncated scan differs from finite differences by design."""
    from .scan import Scan
    names = node_names(Graph([y]))
    loops = {id(t.op.loop): t for t in Graph([y]).nodes
             if isinstance(t.op, Scan) and t.op.loop.truncate}
    return [f"scan node {names[id(t)]!r} truncates backpropagation through time "
            f"(truncate={t.op.loop.truncate}): its gradient is not the derivative that finite "
            "differences measure" for t in loops.values()]
