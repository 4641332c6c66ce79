"""The CUDA backend: a Python orchestrator per graph calling ``numba.cuda`` kernels.

``compile_graph(graph)`` lowers every node by a rule of its op class (``RULES``) to one step
of a plan run by :class:`CudaProgram`.  Values live on the device as contiguous
``DeviceNDArray``s: feeds are copied in (or taken as they are when already on the device,
see :func:`to_device`), constants are uploaded once at compile time, and only the outputs
are copied back.

=====================================  ===========================================
op                                     lowering
=====================================  ===========================================
elementwise                            one generated kernel per node from the op's
                                       stable SymPy form (:class:`CudaPrinter`)
fused groups                           one generated kernel per group instance storing
                                       every output (:func:`cuda_kernels.fused_source`);
                                       a sum output: its values stored with the summed
                                       axes last, then a row kernel
sum / max / min                        permute reduced axes last, then a row kernel
                                       (block tree reduction in shared memory; a few
                                       long rows: in pieces first)
softmax, log_softmax, logsumexp        row kernels on the (moved) last axes
matmul (2-D, batched)                  tiled shared-memory kernel
transpose, broadcast_to, concat, cast  strided copy kernel; reshape is a view
index / index_add                      gather / atomic scatter-add through an index
                                       map made at compile time
take / take_add                        row gather / atomic row scatter-add
conv2d and both its gradients          im2col (a gather through a compile-time index
                                       map) + the matmul kernel; col2im by atomics
max_pool2d                             window gather (padding -inf) + row max
max_pool2d_grad                        each window's first maximum gets its upstream value
                                       (atomics)
max_pool2d_select, dropout mask, ...   the op's NumPy ``evaluate`` on the host, with
                                       explicit copies: ``stats["host_fallbacks"]``
=====================================  ===========================================

Nodes that depend on no input are folded at compile time by the reference semantics.

>>> ok, why = available()   # (False, "no CUDA GPU ...") on a machine without one
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import BackendError, FeedError
from .graph import Graph
from .passes.pipeline import DEFAULT_PIPELINE
from .passes.pipeline import run as run_passes
from .scan import Scan, instance_key, run_loop, siblings

# numba-cuda's NumbaPerformanceWarning at each launch of fewer blocks than it likes (a small
# tensor's kernel); on an H200 every step of a small graph printed it
LOW_OCCUPANCY = r".*Grid size \d+ will likely result in GPU under-utilization"
SIMULATOR_HINT = ("set NUMBA_ENABLE_CUDASIM=1 in the environment before Python starts to run "
                  "the kernels under Numba's CUDA simulator (slow, for tests), or use "
                  "backend='numba'")


# ---------------------------------------------------------------------------------------
# Availability and device arrays


def available() -> tuple[bool, str]:
    """``(True, what)`` if CUDA kernels can run here (a GPU, or Numba's CUDA simulator),
    else ``(False, why)``."""
    try:
        import numba
        from numba import cuda
    except ImportError as err:  # pragma: no cover -- numba is a dependency
        return False, f"numba.cuda cannot be imported ({err})"
    _restore_row_stack()
    if numba.config.ENABLE_CUDASIM:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow"
    try:
        if cuda.is_available():
            name = cuda.get_current_device().name
            name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            return True, f"CUDA GPU {name}"
    except Exception as err:  # noqa: BLE001 -- any driver failure means "not usable"
        return False, f"no usable CUDA GPU ({type(err).__name__}: {err}); {SIMULATOR_HINT}"
    return False, f"no CUDA GPU or driver found on this machine; {SIMULATOR_HINT}"


def _restore_row_stack() -> None:
    """numba-cuda 0.30.4 overloads ``np.row_stack`` when it compiles its first kernel, and
    NumPy 2.5 removed that alias of ``np.vstack``: every kernel then failed with
    AttributeError (NVIDIA/numba-cuda#907, seen on an H200 with NumPy 2.5.2).  Put the
    alias back, as it was in NumPy < 2.5."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


def require() -> str:
    """The device description, or raise :class:`gc.BackendError` saying why not."""
    ok, why = available()
    if not ok:
        raise BackendError(f"backend 'cuda' cannot run: {why}; available: numpy, numba")
    return why


def is_device_array(value) -> bool:
    """Whether ``value`` is a CUDA device array (Numba's, or any ``__cuda_array_interface__``
    object under a GPU)."""
    if isinstance(value, np.ndarray):
        return False
    # the simulator's arrays have copy_to_host but no __cuda_array_interface__
    return hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host")


def to_device(array, dtype=None):
    """Copy a host array to the device once, e.g. parameters a training loop keeps
    resident; pass the result as a feed and it is used without a copy.

    >>> W = to_device(np.ones((3, 2), np.float32))        # doctest: +SKIP
    >>> f(x=X, W=W)                                       # doctest: +SKIP
    """
    require()
    from numba import cuda
    if is_device_array(array):
        return array
    host = np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d
    return cuda.to_device(host)


def device_feeds(feeds: dict, dtype=None) -> dict:
    """``{name: to_device(value)}`` for a dict of feeds."""
    return {name: to_device(value, dtype) for name, value in feeds.items()}


def host_stand_ins(feeds: dict) -> dict:
    """``feeds`` with each device array replaced by a zero-stride host array of its shape
    and dtype, for ``gc.compile``'s feed check (no copy, so the values of integer device
    feeds are not range-checked)."""
    return {k: np.broadcast_to(np.zeros((), np.dtype(v.dtype)), tuple(v.shape))
            if is_device_array(v) else v for k, v in feeds.items()}


def check_device_feed(name: str, value, tensor) -> None:
    """Raise ``gc.FeedError`` if a device feed's shape or dtype differs from ``tensor``'s
    (device feeds are used as they are: no conversion, no copy)."""
    if tuple(value.shape) != tensor.shape:
        raise FeedError(f"feed {name!r} has shape {tuple(value.shape)}, expected {tensor.shape}")
    if np.dtype(value.dtype) != np.dtype(tensor.dtype):
        raise FeedError(f"feed {name!r} is a device array of dtype {np.dtype(value.dtype)}, "
                        f"expected {tensor.dtype} (device feeds are not converted)")


# ---------------------------------------------------------------------------------------
# The program


class CudaProgram:
    """A lowered graph.  ``program(feeds)`` returns fresh host arrays, one per output;
    ``program.run_device(feeds)`` returns the device arrays (no copy back).  A program of
    device kernels alone records its first call and replays its launches after that
    (:mod:`graphc.cuda_replay`): its device outputs are then its own buffers, valid until
    its next call."""

    def __init__(self, lowering):  # a cuda_lowering.Lowering that has run
        from .cuda_replay import ENABLED, Replay
        self.lowering = lowering
        self.steps = lowering.steps
        self.inputs = lowering.inputs            # (name, slot, tensor)
        self.output_slots = lowering.output_slots
        self.constants = lowering.constants      # slot -> device array
        self.nslots = lowering.nslots
        self.source = lowering.source()
        replayable = all(s.kind not in ("host", "loop") for s in self.steps)
        self.replay = Replay(self) if ENABLED and replayable else None
        self.stats = {
            "device": lowering.device,
            "kernels": len(lowering.kernels),
            "kernel_steps": sum(s.kind == "kernel" for s in self.steps),
            "host_fallbacks": list(lowering.fallbacks),
            "lowered": dict(lowering.lowered),
            "cuda_fastmath": lowering.fastmath,
            "replayed": self.replay is not None,
        }

    def run_device(self, feeds: dict) -> list:
        if self.replay is not None:
            return self.replay(feeds)
        from numba import cuda  # here, not at import: `import graphc` loads no numba.cuda
        env = [None] * self.nslots
        for slot, value in self.constants.items():
            env[slot] = value
        for name, slot, t in self.inputs:
            value = feeds[name]
            on_device = self.device_feed(name, value, t)
            env[slot] = value if on_device else cuda.to_device(np.asarray(value, order="C"))
        self.run_steps(env)
        return [env[s] for s in self.output_slots]

    @staticmethod
    def device_feed(name: str, value, tensor) -> bool:
        """Whether feed ``value`` is a device array (checked against ``tensor``: raise
        ``gc.FeedError`` on another shape or dtype) rather than a host array."""
        if not is_device_array(value):
            return False
        check_device_feed(name, value, tensor)
        return True

    def run_steps(self, env: list, runtime=None) -> None:
        """Run every step on ``env`` (slot -> device value), each value dropped where the
        memory plan frees it; ``runtime``: what steps launch and allocate through."""
        from .cuda_lowering import DIRECT
        low = self.lowering
        low.runtime = DIRECT if runtime is None else runtime
        try:
            with warnings.catch_warnings():  # about graphc's launches, which users cannot change
                warnings.filterwarnings("ignore", message=LOW_OCCUPANCY)
                for step in self.steps:
                    step.run(env)
                    low.runtime.hold(env[step.slot])
                    for s in step.free:
                        low.runtime.drop(env[s])
                        env[s] = None
        finally:
            low.runtime = DIRECT

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        with np.errstate(all="ignore"):  # as the reference: IEEE results, no warnings
            return [np.array(d.copy_to_host(), copy=True) for d in self.run_device(feeds)]


def compile_graph(graph: Graph) -> CudaProgram:
    """Lower ``graph`` for the CUDA backend; raise ``gc.BackendError`` without a GPU."""
    device = require()
    # numba.cuda is imported with the lowering, when a graph is compiled, not with graphc
    from .cuda_lowering import Lowering
    from .cuda_rules import RULES
    return CudaProgram(Lowering(graph, device, ((Scan, rule_scan),) + RULES).run())


def rule_scan(low, t):
    """A scan: the first of an instance's outputs runs the loop and gives them all.  The
    body is optimized and compiled once, as a CUDA program of its own whose kernels are
    launched every step; carries and stacked values stay on the device."""
    members = siblings(low.graph.nodes)[instance_key(t)]
    if t is not members[0]:
        return (lambda env: None), low.line(t, "scan") + " [computed with "\
            f"{low.vname(members[0])}]", "loop"
    loop, outs = t.op.loop, [m.op.out for m in members]
    body = compile_graph(run_passes(loop.step_graph(outs), DEFAULT_PIPELINE)[0])
    ins = [low.slot[id(i)] for i in t.inputs]
    slots = [low.slot[id(m)] for m in members]

    def run(env):
        results = run_loop(loop, outs, [env[i] for i in ins], body.run_device, empty=low.empty)
        for k, r in zip(slots, results):
            env[k] = r
    return run, low.line(t, "scan") + f" [{loop.length} steps]", "loop"

