"""Replaying a CUDA program's launches: the host work of a call done once, not per call.

A :class:`~graphc.cuda_backend.CudaProgram` whose steps are all device kernels (no host
fallback, no loop) runs its first call through a :class:`Recorder`: every step runs as
usual, but each buffer it asks for is kept (a buffer whose storage the memory plan frees
is handed to a later request of as many bytes, in the same order on every
call), and each kernel launch is kept with its arguments, prepared once for the driver
(:func:`prepare`).  Later calls put the feeds in place and replay the launches: no Python
step, no allocation, no argument conversion per launch.  On a GPU the per-launch host cost
of numba-cuda's dispatcher (type dispatch and ``_prepare_args``, about 25 microseconds on
an H200's host) and of ``cuda.device_array`` (25-100 microseconds) were what a training
step's time went to (docs/cuda.md, "On a GPU").

Feeds.  A device array fed is bound as it is (no copy) while the same array is fed; fed a
different one, that input is copied into a buffer of the program's own from then on and
the launches are recorded again, once.  A host feed is copied into that buffer.  Outputs
are the program's own buffers: :meth:`CudaProgram.run_device`'s arrays are valid until
the program's next call (``program(feeds)`` copies them to the host, as before).

``GRAPHC_CUDA_REPLAY=0`` in the environment turns replaying off (every call runs the
steps, as before).
"""

from __future__ import annotations

import os

import numpy as np
from numba import config, cuda

ENABLED = os.environ.get("GRAPHC_CUDA_REPLAY", "1") != "0"
GRAPHS = os.environ.get("GRAPHC_CUDA_GRAPHS", "1") != "0"
SIMULATOR = bool(config.ENABLE_CUDASIM)


def address(array) -> int:
    """The device address of ``array``'s first element (the host address of the data
    under the simulator, where device arrays wrap NumPy arrays)."""
    if SIMULATOR:
        return array._ary.__array_interface__["data"][0]
    return array.__cuda_array_interface__["data"][0]


def copy_into(dst, src, on_device: bool) -> None:
    """``dst[...] = src``, ``src`` a host or (``on_device``) device array of ``dst``'s shape
    and dtype."""
    if dst.size == 0:
        return
    if not on_device:
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))
    elif address(src) != address(dst):
        if SIMULATOR:
            dst.copy_to_device(src)
            return
        from numba.cuda.cudadrv import driver
        if not getattr(src, "__cuda_memory__", False):  # CuPy, PyTorch: no copy made
            src = cuda.as_cuda_array(src)
        driver.device_to_device(dst, src, dst.nbytes)


def prepare(kernel, grid, block, args) -> tuple:
    """``(launch(), how)``: a call that launches ``kernel[grid, block](*args)`` again with
    the same arguments, and ``"prepared"`` or why it goes through the dispatcher."""
    if SIMULATOR:  # (the simulator's kernel[grid, block] configures the kernel itself)
        return (lambda: kernel[grid, block](*args)), "dispatcher (simulator)"
    configured = kernel[grid, block]  # numba-cuda's: a launch configuration of its own
    try:
        launch = _prepared(kernel, configured, args)
    except Exception as err:  # noqa: BLE001 -- another numba-cuda: its own path still works
        return (lambda: configured(*args)), f"dispatcher ({type(err).__name__}: {err})"
    return launch, "prepared"


def _prepared(kernel, configured, args):
    """The launch numba-cuda's ``_Kernel.launch`` makes (numba-cuda 0.2x-0.30: cuda.core's
    ``launch``), its arguments converted once."""
    from cuda.core import LaunchConfig
    from cuda.core import launch as core_launch
    from numba.cuda._compat import CUDA_CORE_GE_1_0
    compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))  # (compiled)
    if compiled.debug or compiled.extensions:
        raise RuntimeError("a debug kernel or argument extensions")
    stream, converted, writeback = configured.stream, [], []
    for ty, value in zip(compiled.argument_types, args):
        compiled._prepare_args(ty, value, stream, writeback, converted)
    if writeback:
        raise RuntimeError("a host array among the arguments")
    coop = "is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch"
    launch_config = LaunchConfig(grid=configured.griddim, block=configured.blockdim,
                                 shmem_size=0, **{coop: compiled.cooperative})
    function = compiled._codelibrary.get_cufunc().kernel
    converted = tuple(converted)

    def launch(on=stream):
        core_launch(on, launch_config, function, *converted)
    launch.prepared = True  # (capture() launches it on a graph builder)
    return launch


def capture(items) -> tuple:
    """``(replay(), how)``: the prepared launches ``items`` captured once into a CUDA graph,
    replayed by one graph launch on a stream that synchronizes with the default stream
    (so feeds copied in before and outputs copied out after are ordered with it).
    ``replay`` is None where they cannot be (a check among them, another cuda.core)."""
    if not all(getattr(item, "prepared", False) for item in items):
        return None, "not every launch is prepared (or a device value is read back)"
    try:
        from cuda.core import Device
        try:
            from cuda.core import StreamOptions
        except ImportError:
            from cuda.core.experimental import StreamOptions
        device = Device()
        device.set_current()
        stream = device.create_stream(options=StreamOptions(nonblocking=False))
        builder = stream.create_graph_builder()
        builder.begin_building()
        for item in items:
            item(builder)
        graph = builder.end_building().complete()
    except Exception as err:  # noqa: BLE001 -- no graphs here: the launches still replay
        return None, f"{type(err).__name__}: {err}"
    return (lambda: graph.launch(stream)), "graph"


class Recorder:
    """What a program's steps call at run time while its first call is recorded (the
    lowering's ``runtime``; :class:`graphc.cuda_lowering.Direct` otherwise)."""

    def __init__(self):
        self.items: list = []          # launch() or a check, in call order
        self.args: list = []           # every launch's arguments, kept alive with it
        self.names: list[str] = []     # each item's kernel ("check": a value read back)
        self.how: dict[str, int] = {}  # "prepared" / why not -> launches
        self.owned: dict[int, tuple] = {}   # address -> (bytes, buffer of bytes)
        self.free: dict[int, list] = {}     # bytes -> buffers whose storage is dead
        self.released: set[int] = set()
        self.holders: dict[int, int] = {}   # address -> slots holding it

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not nbytes:  # zero-size buffers may share an address: never reused
            return cuda.device_array(shape, dtype)
        pool = self.free.get(nbytes)
        if pool:
            root = pool.pop()
            self.released.discard(address(root))
        else:
            root = cuda.device_array(nbytes, np.uint8)
            self.owned[address(root)] = (nbytes, root)
        return root.view(dtype).reshape(shape)

    def hold(self, value) -> None:
        """A slot holds ``value`` (a buffer, or a reshaped view of one: same address)."""
        if value is not None and value.size:
            at = address(value)
            self.holders[at] = self.holders.get(at, 0) + 1

    def drop(self, value) -> None:
        """The memory plan frees a slot holding ``value``; once no slot holds its buffer,
        a later request of as many bytes is given that buffer (inputs, constants
        and other arrays not made here are left alone)."""
        if value is None or value.size == 0:
            return
        at = address(value)
        left = self.holders.pop(at, 0) - 1
        if left > 0:
            self.holders[at] = left
        elif at in self.owned and at not in self.released:
            key, buffer = self.owned[at]
            self.released.add(at)
            self.free.setdefault(key, []).append(buffer)

    def launch(self, kernel, grid, block, args) -> None:
        run, how = prepare(kernel, grid, block, args)
        run()
        self.items.append(run)
        self.args.append(args)
        self.names.append(getattr(kernel, "graphc_name", None)
                          or (getattr(kernel, "py_func", None) or kernel.fn).__name__)
        self.how[how] = self.how.get(how, 0) + 1

    def check(self, fn) -> None:
        fn()
        self.items.append(fn)
        self.names.append("check")


class Replay:
    """The recorded launches of ``program`` (a CudaProgram whose steps are all kernels)."""

    def __init__(self, program):
        self.program = program
        self.items: list | None = None   # None: record at the next call
        self.outputs: list = []
        self.bound: dict[str, int] = {}   # input -> address of the device feed bound
        self.copied: dict[str, object] = {}  # input -> the program's buffer for it
        self.mine: set[int] = set()       # addresses of every buffer recorded so far
        self.recorder: Recorder | None = None
        self.graph = "off"  # or "graph", or why the launches are not one graph
        self.how: dict[str, int] = {}  # the recorded launches: "prepared" / why not -> count
        self.stats = {"recordings": 0, "replays": 0}

    def __call__(self, feeds: dict) -> list:
        if self.items is not None and self._feeds_in_place(feeds):
            for item in self.items:
                item()
            self.stats["replays"] += 1
            return list(self.outputs)
        return self._record(feeds)

    def _feeds_in_place(self, feeds) -> bool:
        """Copy the copied feeds in; False if a bound input is fed another array (it is
        copied from now on, and the launches must be recorded again)."""
        ok = True
        for name, _, t in self.program.inputs:
            value = feeds[name]
            on_device = self.program.device_feed(name, value, t)
            if name in self.copied:
                copy_into(self.copied[name], value, on_device)
            elif not on_device or address(value) != self.bound[name]:
                self.copied[name] = cuda.device_array(t.shape, np.dtype(t.dtype))
                ok = False
        return ok

    def _record(self, feeds) -> list:
        program, env = self.program, [None] * self.program.nslots
        for slot, value in program.constants.items():
            env[slot] = value
        self.items, bound = None, {}
        for name, slot, t in program.inputs:
            value = feeds[name]
            on_device = program.device_feed(name, value, t)
            if name not in self.copied and on_device and address(value) not in self.mine:
                env[slot] = value
                bound[name] = address(value)
            else:  # a host array, an input fed different arrays, or one of our outputs
                if name not in self.copied:
                    self.copied[name] = cuda.device_array(t.shape, np.dtype(t.dtype))
                copy_into(self.copied[name], value, on_device)
                env[slot] = self.copied[name]
        recorder = Recorder()
        program.run_steps(env, recorder)
        self.mine.update(recorder.owned)
        self.bound, self.items, self.how = bound, recorder.items, recorder.how
        if GRAPHS and not SIMULATOR:
            replay, self.graph = capture(self.items)
            self.items = self.items if replay is None else [replay]
        self.recorder = recorder  # its buffers and the launches' arguments stay allocated
        self.outputs = [env[s] for s in program.output_slots]
        self.stats["recordings"] += 1
        return list(self.outputs)
