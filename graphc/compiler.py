"""``gc.compile``: validate feeds, pick a backend, run.  Shared by every backend."""

from __future__ import annotations

import difflib
import time
from functools import partial

import numpy as np

from . import dtypes
from .dynamic import is_dynamic, matches, pattern_text, specialise
from .errors import BackendError, FeedError, ShapeError
from .graph import Graph, check_graph, format_graph
from .interpreter import evaluate_graph

BACKENDS = ("numpy", "numba", "cuda")
AVAILABLE = ("numpy", "cuda", "numba")  # the last is the default


def _validate(inputs, feeds: dict, accepted=None) -> dict[str, np.ndarray]:
    """Read-only arrays of the inputs' dtypes for ``inputs``, from ``feeds``.  ``accepted``:
    inputs by name that may be fed without effect (those of a graph the outputs were
    differentiated from); their feeds are checked, then dropped."""
    wanted = {t.op.label: t for t in inputs}
    accepted = {k: t for k, t in (accepted or {}).items() if k not in wanted}
    missing = [n for n in wanted if n not in feeds]
    unknown = sorted((n for n in feeds if n not in wanted and n not in accepted), key=str)
    if missing:  # with the unknown ones, which are often the missing ones misspelled
        raise FeedError(f"missing feed(s) for {', '.join(repr(n) for n in missing)}; "
                        f"the graph needs {_describe(wanted.values())}" +
                        (f"; and {_unknown(unknown, wanted, accepted)}" if unknown else ""))
    if unknown:
        raise FeedError(_unknown(unknown, wanted, accepted))
    for name, ts in accepted.items():
        if name in feeds:
            accepted_array(name, ts, feeds[name])
    return {name: _array(name, t, feeds[name]) for name, t in wanted.items()}


def accepted_array(name: str, inputs, value) -> None:
    """Check the feed ``value`` of an input the outputs were differentiated from: it must
    fit one of ``inputs``, those of that name (:func:`~graphc.passes.autodiff.
    differentiated_from` with ``every``), or raise the first one's FeedError."""
    errors = []
    for t in inputs:
        try:
            _array(name, t, value)
            return
        except FeedError as err:
            errors.append(err)
    raise errors[0]


def _unknown(names, wanted, accepted) -> str:
    known = [*wanted, *accepted]
    items = []
    for n in names:
        close = difflib.get_close_matches(n, known, n=1) if isinstance(n, str) else []
        items.append(repr(n) + (f" (did you mean {close[0]!r}?)" if close else ""))
    text = (f"unknown feed{'s' if len(names) > 1 else ''} {', '.join(items)}; the graph takes "
            f"{', '.join(repr(n) for n in wanted) or 'no inputs'}")
    if accepted:
        text += (f" and accepts {', '.join(repr(n) for n in accepted)} (inputs of the graph "
                 "it was differentiated from)")
    return text


def _array(name: str, t, value) -> np.ndarray:
    """The feed ``value`` for input ``t`` as a read-only array of its dtype, or raise."""
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 -- report any unconvertible object
        raise FeedError(f"feed {name!r}: cannot convert {type(value).__name__} to an "
                        f"array ({err})") from None
    if array.shape != t.shape:
        if not is_dynamic(t.shape):
            raise FeedError(f"feed {name!r} has shape {array.shape}, expected {t.shape}")
        if not matches(array.shape, t.shape):
            raise FeedError(f"feed {name!r} has shape {array.shape}; expected "
                            f"{pattern_text(t.shape)}")
    have = array.dtype
    if have.kind not in "biuf" or dtypes.kind(_np_kind_name(have)) != dtypes.kind(t.dtype):
        raise FeedError(f"feed {name!r} has dtype {have}, expected {t.dtype} "
                        f"({'an' if dtypes.kind(t.dtype) == 'int' else 'a'} "
                        f"{dtypes.kind(t.dtype)} array)")
    if have.kind in "iu" and array.size and have != np.dtype(t.dtype):
        info = np.iinfo(t.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise FeedError(f"feed {name!r} has values outside the {t.dtype} range "
                            f"[{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # a finite float64 that float32 cannot hold: below
        converted = array.astype(t.dtype, copy=False)
    if have.kind == "f" and have.itemsize > converted.dtype.itemsize and array.size:
        over = np.isinf(converted) & np.isfinite(array)
        if over.any():
            raise FeedError(f"feed {name!r} has values outside the {t.dtype} range (e.g. "
                            f"{array[over].flat[0]:.6g}; largest {np.finfo(t.dtype).max:.6g})")
    array = converted.view()
    array.setflags(write=False)  # backends may never write into a user's array
    return array


def _donations(donate, inputs, n_outputs: int) -> dict:
    """``compile``'s ``donate`` (a name, names, or ``{name: output position}`` of
    ``inputs``), checked, as ``{name: output position or None}``."""
    pairs = dict(donate) if isinstance(donate, dict) else \
        dict.fromkeys([donate] if isinstance(donate, str) else donate)
    known = {t.op.label for t in inputs}
    unknown = [n for n in pairs if n not in known]
    if unknown:
        raise ValueError(f"compile: donate names {', '.join(map(repr, unknown))}, not an "
                         f"input of the graph; its inputs are "
                         f"{', '.join(map(repr, sorted(known, key=str))) or 'none'}")
    wrong = {n: k for n, k in pairs.items() if k is not None and
             not (isinstance(k, int) and 0 <= k < n_outputs)}
    if wrong:
        raise ValueError(f"compile: donate maps {wrong} to no output; the outputs are "
                         f"positions 0 to {n_outputs - 1}")
    return pairs


def _np_kind_name(dtype: np.dtype) -> str:
    return {"b": "bool", "i": "int64", "u": "int64", "f": "float64"}[dtype.kind]


def _describe(tensors) -> str:
    return ", ".join(f"{t.op.label} {t.shape} {t.dtype}" for t in tensors)


class Stats(dict):
    """``f.stats``: a dict (backend, node counts, per-pass reports, kernel and memory
    figures) that prints as a readable table."""

    def __str__(self) -> str:
        from .passes.pipeline import format_report
        head = (f"graphc {self['backend']}: {self['nodes_before']} nodes -> {self['nodes']} "
                f"after {', '.join(self['pipeline']) or 'no passes'}; compiled in "
                f"{self['compile_seconds']:.3f} s")
        lines = [head]
        if self["passes"]:
            lines.append(format_report(self["passes"]))
        rest = {k: v for k, v in self.items() if k not in
                ("backend", "nodes", "nodes_before", "pipeline", "passes", "compile_seconds")}
        lines += [f"{k}: {v}" for k, v in rest.items()]
        return "\n".join(lines)


def _device_feeds(inputs, feeds: dict, validate) -> dict:
    """``validate(inputs, feeds)`` with CUDA device arrays allowed: each is checked by name,
    shape and dtype against a host stand-in and passed on as it is (no conversion, no copy)."""
    from .cuda_backend import check_device_feed, host_stand_ins
    host = host_stand_ins(feeds)
    arrays = validate(inputs, host)
    for t in inputs:  # an accepted feed without effect is checked against its stand-in only
        name = t.op.label
        if name in feeds and host[name] is not feeds[name]:
            check_device_feed(name, feeds[name], t)
            arrays[name] = feeds[name]
    return arrays


class CompiledFunction:
    """A compiled graph: call it with feeds; ``source``, ``graph`` and ``stats`` describe it.

    Call as ``f(x=X, W=W)`` or ``f({"x": X, "W": W})``.  Returns a tuple of arrays, or a
    single array when the graph has one output.  ``graph`` is the optimized graph that was
    compiled; the feeds it takes are those of the graph as given (an input that
    optimization made unnecessary is still needed, and checked).  Inputs of a graph the
    outputs were differentiated from (``gc.grad(1 + z, z)`` needs no ``z``) may be fed:
    they are checked and have no effect; any other name is an unknown feed.  Integer
    labels fed to a loss are checked against its number of classes.
    """

    def __init__(self, outputs, backend: str, passes=(), donate=()):
        from .passes import pipeline  # graphc.passes imports graphc: import late
        start = time.perf_counter()
        from .passes.autodiff import differentiated_from
        if backend == "numba":  # on a first run, compile workers start loading Numba now
            from .kernel_cache import prestart
            prestart()
        given = check_graph(Graph(outputs))
        self.inputs = given.inputs
        self.donate = _donations(donate, given.inputs, len(given.outputs))
        self.accepted = differentiated_from(given.nodes, every=True)
        self._feed_checks = tuple({id(r): r for t in given.nodes for r in t.meta or ()
                                   if hasattr(r, "check_feeds")}.values())
        self.graph, report = pipeline.run(given, passes)
        self.backend = backend
        self.single = not isinstance(outputs, (list, tuple))
        self.source = format_graph(self.graph)
        self._program = None
        if backend == "numba":  # imported here: `import graphc` does not load Numba
            from .numba_backend import compile_graph
            self._program = compile_graph(self.graph, donate=self.donate)
            self.source = self._program.source
        elif backend == "cuda":
            from .cuda_backend import compile_graph as compile_cuda
            self._program = compile_cuda(self.graph)
            self.source = self._program.source
        self.stats = Stats({
            "backend": backend,
            "nodes_before": len(given.nodes),
            "nodes": len(self.graph.nodes),
            "pipeline": [r["pass"] for r in report],
            "passes": report,
            "compile_seconds": time.perf_counter() - start,
        })
        memory = next((r for r in reversed(report) if r["pass"] == "memory"), None)
        if memory is not None:
            self.stats["planned_peak_bytes"] = memory["planned_peak_bytes"]
            self.stats["naive_peak_bytes"] = memory["naive_peak_bytes"]
        if self._program is not None:
            self.stats.update(self._program.stats)

        # the fast path's checks, in the order the program takes its feeds: (name, shape,
        # dtype); on the Numba backend without NumPy fallbacks feeds are passed as they are
        # (its program only reads them), elsewhere as read-only views
        order = self._program.input_names if self.backend == "numba" else self.input_names
        shapes = {t.op.label: (t.shape, np.dtype(t.dtype)) for t in self.inputs}
        self._expect = tuple((n, *shapes[n]) for n in order)
        self._order = tuple(order)
        self._guard = self.backend != "numba" or bool(self.stats["numpy_fallbacks"])

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.op.label for t in self.inputs)

    def _fast(self, feeds: dict) -> list | None:
        """The feeds in program order when every one is an array of exactly the input's
        shape and dtype and no other name is fed (what ``_validate`` would accept as it
        is); else None, and ``_validate`` checks them and names any mistake."""
        if len(feeds) != len(self._expect):
            return None
        arrays = []
        for name, shape, dtype in self._expect:
            a = feeds.get(name)
            if type(a) is not np.ndarray:
                if not isinstance(a, np.generic):
                    return None
                a = np.asarray(a)  # a NumPy scalar: a new 0-d array
            if a.dtype is not dtype or a.shape != shape:
                return None
            if self._guard:
                a = a.view()
                a.setflags(write=False)  # backends may never write into a user's array
            arrays.append(a)
        return arrays

    def __call__(self, feeds=None, /, **kwargs):
        if feeds is not None:
            if not isinstance(feeds, dict):
                raise FeedError(f"feeds must be a dict of name -> array, got "
                                f"{type(feeds).__name__}")
            if kwargs:
                overlap = set(feeds) & set(kwargs)
                if overlap:
                    raise FeedError(f"feed(s) {sorted(overlap)} given twice")
                kwargs = {**feeds, **kwargs}
            else:
                kwargs = feeds
        fast = self._fast(kwargs)
        if fast is not None and self.backend == "numba" and not self._feed_checks:
            results = self._program.run(fast)  # fresh arrays that alias nothing
            return results[0] if self.single else tuple(results)
        if fast is not None:
            arrays = dict(zip(self._order, fast))
        elif self.backend == "cuda":  # device arrays (gc.to_device) are taken as they are
            arrays = _device_feeds(self.inputs, kwargs, partial(_validate,
                                                                accepted=self.accepted))
        else:
            arrays = _validate(self.inputs, kwargs, self.accepted)
        for check in self._feed_checks:  # host arrays only: labels in range
            check.check_feeds(arrays)
        if self._program is not None:  # returns fresh arrays that alias nothing
            results = self._program(arrays)
        else:
            results = evaluate_graph(self.graph, arrays)
            # Return fresh, writable arrays that never alias a feed or a constant.
            results = [np.array(r, copy=True) for r in results]
        return results[0] if self.single else tuple(results)

    def __repr__(self) -> str:
        return f"<CompiledFunction backend={self.backend} inputs={list(self.input_names)}>"


class DynamicFunction:
    """``gc.compile`` of a graph with dynamic dimensions: specialised and compiled once per
    distinct feed shape (``specialised`` maps the shapes of the dynamic inputs to the
    compiled function); ``graph``, ``source`` and ``stats`` describe the latest one
    (before the first call: the graph as given)."""

    def __init__(self, outputs, backend: str, passes, given, donate=()):
        from .passes.autodiff import differentiated_from
        self.outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        self.single = not isinstance(outputs, (list, tuple))
        self.backend, self.passes = backend, passes
        self.inputs = given.inputs
        self.donate = _donations(donate, given.inputs, len(given.outputs))
        self.dynamic = [t for t in given.inputs if is_dynamic(t.shape)]
        self.accepted = differentiated_from(given.nodes, every=True)
        self.specialised: dict[tuple, object] = {}
        self._latest = None
        self._given = given

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.op.label for t in self.inputs)

    @property
    def graph(self):
        return self._latest.graph if self._latest else self._given

    @property
    def source(self) -> str:
        return self._latest.source if self._latest else format_graph(self._given)

    @property
    def stats(self) -> dict:
        base = dict(self._latest.stats) if self._latest else {"backend": self.backend}
        return {**base, "specialisations": len(self.specialised)}

    def __call__(self, feeds=None, /, **kwargs):
        if feeds is not None:
            if not isinstance(feeds, dict):
                raise FeedError(f"feeds must be a dict of name -> array, got "
                                f"{type(feeds).__name__}")
            kwargs = {**feeds, **kwargs}
        host = kwargs
        if self.backend == "cuda":  # device arrays: checked here through host stand-ins
            from .cuda_backend import host_stand_ins
            host = host_stand_ins(kwargs)
        checked = _validate(self.inputs, host, self.accepted)
        arrays = checked if host is kwargs else {k: kwargs[k] for k in checked}
        shapes = {t.op.label: tuple(checked[t.op.label].shape) for t in self.dynamic}
        self._bind(shapes)
        key = tuple(shapes[t.op.label] for t in self.dynamic)
        fn = self.specialised.get(key)
        if fn is None:
            try:
                outs = specialise(self.outputs, shapes)
            except ShapeError as err:
                fed = ", ".join(f"{n!r} {s}" for n, s in shapes.items())
                raise FeedError(f"feeds of shapes {fed} do not fit the graph: {err}") from None
            fn = CompiledFunction(outs if not self.single else outs[0], self.backend,
                                  self.passes, self.donate)
            self.specialised[key] = fn
        self._latest = fn
        return fn({n: kwargs[n] if n in self.donate else arrays[n]  # donated: as fed
                   for n in fn.input_names if n in arrays})

    def _bind(self, shapes) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for t in self.dynamic:
            for d, size in zip(t.shape, shapes[t.op.label]):
                if not isinstance(d, str):
                    continue
                size0, name0 = seen.setdefault(d, (size, t.op.label))
                if size0 != size:
                    raise FeedError(
                        f"feeds {name0!r} and {t.op.label!r} disagree on dimension {d!r}: "
                        f"{size0} in {name0!r} {shapes[name0]} and {size} in "
                        f"{t.op.label!r} {shapes[t.op.label]}")

    def __repr__(self) -> str:
        return (f"<DynamicFunction backend={self.backend} inputs={list(self.input_names)} "
                f"specialised={len(self.specialised)}>")


def compile(outputs, backend: str = "numba", *, passes=None,  # noqa: A001
            optimize: bool = True, donate=()) -> CompiledFunction:
    """Compile ``outputs`` (a tensor or a list of tensors) into a callable.

    ``backend``: ``"numpy"`` (the reference interpreter), ``"numba"`` (CPU, the default) or
    ``"cuda"`` (numba.cuda kernels; :class:`BackendError` on a machine without a GPU unless
    Numba's CUDA simulator is on, docs/cuda.md).  ``backend=None`` is ``"numba"``.

    ``passes``: the optimizing passes to run, in order (names of
    ``graphc.passes.pipeline.PASSES`` or functions ``Graph -> Graph``); by default
    ``DEFAULT_PIPELINE`` (simplify, cse, fusion, dce, memory).  ``optimize=False`` runs
    none.  ``print(f.stats)`` shows what each pass did.

    ``donate``: names of inputs whose fed arrays a call may write over (default none:
    feeds are never modified), or ``{name: output position}`` to say which output should
    take each.  On the Numba backend an output that is computed
    elementwise from a donated input, which nothing reads afterwards, is then written
    into that array and returned as it (``f.stats["donated"]`` counts them): a training
    step updates its parameters and optimizer state in place.  A donated feed that is not
    a writable, contiguous array owning its data, or that another feed views, is copied
    first and left as it was; the other backends copy.  After a call, a donated array
    holds either its value or an output, so keep what you need from it.

    >>> import graphc as gc, numpy as np
    >>> x = gc.input("x", (3,))
    >>> f = gc.compile(gc.sum(x * x), backend="numpy")
    >>> float(f(x=np.array([1.0, 2.0, 3.0])))
    14.0
    """
    backend = AVAILABLE[-1] if backend is None else backend
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cuda":  # fail before any work on a machine that cannot run it
        from .cuda_backend import require
        require()
    if not optimize and passes:
        raise ValueError("compile: optimize=False runs no passes; do not also give passes=")
    if passes is None:
        from .passes.pipeline import DEFAULT_PIPELINE
        passes = DEFAULT_PIPELINE if optimize else ()
    listed = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    if any(is_dynamic(leaf.shape) for t in listed if hasattr(t, "leaves")
           for leaf in t.leaves.values()):  # specialised per feed shape
        return DynamicFunction(outputs, backend, passes, check_graph(Graph(outputs)), donate)
    return CompiledFunction(outputs, backend, passes, donate)
