"""Runs of a program's statements as native functions (issue 18, item 1: no Python per node
on the hot path), the way :mod:`graphc.numba_loop` runs a scan's steps.

The orchestrator's statements (:class:`graphc.numba_lowering.Lowering`) are of three kinds:

- *operations* :mod:`graphc.numba_loop` runs natively: kernel calls, GEMMs (and the
  products NumPy gives to ``gemv``), copies, zero fills, IEEE ``+ - * /``, full sums of
  up to 1,024 values in NumPy's order;
- *definitions* that read no computed value: allocations (``np.empty``, ``np.zeros``),
  views (``np.ndarray`` over an output's memory, transposes, reshapes, basic indexing),
  addresses (``_waddr``, ``_addr``, ``p + k``), ``del`` and ``blas_ready()``;
- anything else (another NumPy reduction, a comparison, a scan's loop, a kernel split
  over threads, a contiguous copy): *barriers*, run by Python where they stand.

A maximal run of operations (with the definitions among them) becomes one native call: the
definitions run first (they read no computed value, so moving them up changes nothing), then
the call, then the run's ``del`` statements; a barrier ends the run.  The call is given a
table of the run's per-call addresses (feeds, new arrays, their views), evaluated by Python
at the call, and the program's fixed table (buffers, kernels, constants), made once per set
of buffers.  The native variant of ``run`` is used when the feeds it reads by address are
C-contiguous and aligned (its layouts assume so); otherwise, and with
``GRAPHC_NATIVE_LOOPS=0``, the Python one.  Both compute the same bits
(``tests/test_native_segments.py``).
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import re

import numpy as np

from . import numba_loop as nl

# a run shorter than this stays Python (one statement gains nothing).  The call costs about
# 1 us and its table of addresses 0.02 us an array (ids; the native code reads the data
# address from the array object): benchmarks/native_runs.py, native / Python time, W1
# (runs of 2-10 statements) 0.980-0.993, W6 0.981-0.995, W5 0.969-1.012, the unrolled W4
# 0.859-0.904.  (With the addresses looked up in Python, 0.9 us an array: W6 1.42.)
MIN_OPERATIONS = 2

_ALLOC = re.compile(r"(\w+) = np\.(empty|zeros)\((\(.*?\)|\d+), np\.(\w+)\)")
_HOSTED = re.compile(r"(\w+) = np\.ndarray\((\(.*?\)), np\.(\w+), (\w+), (\d+)\)")
_ADDRESS = re.compile(r"(\w+) = (_waddr|_addr)\((\w+)\)")
_OFFSET = re.compile(r"(\w+) = (\w+) \+ (\d+)")


class Segments:
    """The native calls of one program: ``fixed`` (the fixed table's entries, as
    :class:`graphc.numba_loop.NativeLoop` has them), ``calls`` (name -> (function, ctypes
    array type of its per-call table)) and ``guard`` (the feeds read by address)."""

    def __init__(self, fixed, calls, guard):
        self.fixed, self.calls, self.guard = fixed, calls, guard

    def table(self, arrays):
        """The fixed table for the program's buffers ``arrays`` (layout order)."""
        values = [v if kind == "value" else arrays[v].__array_interface__["data"][0]
                  for kind, v in self.fixed]
        return (ctypes.c_int64 * max(len(values), 1))(*values)


def variant(lowering, inputs, pool, head: list[str], tail: list[str]):
    """``(source of run_native, Segments)`` for a program's lowering (after its kernels are
    loaded; ``head``, ``tail``: the signature and unpacking lines of its ``run``, and its
    return), or None where no run of operations is long enough."""
    if not nl.ENABLED:
        return None
    names = nl.names_of(lowering, [], [], pool)
    for t in inputs:
        var = lowering.var_name(t)
        names.arrays[var] = nl.Arr(_by_object(var, "_addr"), 0, t.shape, nl.c_strides(
            t.shape, np.dtype(t.dtype).itemsize), t.dtype)
    out, run, calls = [], _Run(), {}
    for line in lowering.lines:
        kind, op = _kind(line.strip(), names, lowering)
        if kind == "barrier":
            out += run.close(names, calls)
            out.append(line)
        else:
            run.items.append((kind, line, op))
    out += run.close(names, calls)
    if not calls:
        return None
    _link(calls)
    read = {v for _, _, values in calls.values() for v in values}
    guard = sorted(k for k, t in enumerate(inputs)
                   if {f"_addr({lowering.var_name(t)})", f"id({lowering.var_name(t)})"} & read)
    signature = head[0].replace("def run(", "def run_native(", 1)
    signature = signature[:signature.rindex(")")] + ", _fixed):"
    return "\n".join([signature] + head[1:] + out + tail), Segments(names.fixed, calls, guard)


class _Run:
    """The statements of the run being collected: (kind, line, operation) each."""

    def __init__(self):
        self.items = []

    def close(self, names, calls) -> list[str]:
        """The run's statements as the native variant has them; starts the next run."""
        items, self.items = self.items, []
        ops = [(line, op) for kind, line, op in items if kind == "op"]
        if len(ops) < MIN_OPERATIONS:  # as Python, in their order
            return [line for _, line, _ in items]
        percall: dict = {}
        ir = nl.module_ir([op for _, op in ops], names, percall)
        name = f"_seg{len(calls)}"
        values = sorted(percall, key=percall.get)
        calls[name] = (ir, ctypes.c_int64 * max(len(values), 1), values)  # linked: _link
        lines = [line for kind, line, _ in items if kind == "def" and
                 not line.strip().startswith("del ")]
        lines.append(f"    # {len(ops)} statements as one native call ({name}):")
        lines += [f"    #   {line.strip()}" for line, _ in ops]
        lines.append(f"    {name}(1, {name}_t({', '.join(values)}), _fixed)")
        return lines + [line for kind, line, _ in items if line.strip().startswith("del ")]


def _by_object(var: str, lookup: str) -> tuple:
    """The per-call slot of array ``var``'s data: the array object, whose data address the
    native code reads (``id(var)``), or where that layout was not found, its address
    looked up by Python."""
    return ("q", f"id({var})") if nl.ARRAY_DATA_OFFSET is not None else \
        ("p", f"{lookup}({var})")


_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64),
                          ctypes.POINTER(ctypes.c_int64))


def _link(calls: dict) -> None:
    """Compile the runs' functions as one object (one module: 14 instead of 19-25 ms for
    W1's five runs), not optimized (straight-line calls run once a call: the same time as
    at -O3, within the VM's noise, and half the compile time), and put each function in
    place of its IR in ``calls``: ``name -> (function, table type, values)``.  The module
    and its functions are named by the hash of its text (functions ``<module>_<k>``)."""
    from . import kernel_cache
    texts = [ir for ir, _, _ in calls.values()]
    symbol = "graphc_segs_" + hashlib.sha256("".join(texts).encode()).hexdigest()[:16]
    module = [line for line in texts[0].splitlines() if line.startswith("declare")]
    for k, ir in enumerate(texts):
        module += [line.replace("@drive(", f"@{symbol}_{k}(") for line in ir.splitlines()
                   if not line.startswith("declare")]
    module.append(f"define void @{symbol}() {{\n  ret void\n}}")
    nl.link("\n".join(module) + "\n", symbol, optimize=False)
    for k, name in enumerate(list(calls)):
        address = kernel_cache.function_address(f"{symbol}_{k}")
        calls[name] = (_PROTO(address), calls[name][1], calls[name][2])


def _kind(text: str, names, lowering):
    """``("op", operation)``, ``("def", None)`` (registering what it names) or
    ``("barrier", None)``."""
    if not text or text.startswith(("#", "del ")) or text == "blas_ready()" or \
            _definition(text, names, lowering):
        return "def", None
    try:
        return "op", nl.operation(text, names, lowering)
    except nl.Unsupported:
        return "barrier", None


def _definition(text: str, names, lowering) -> bool:
    """Register a definition line's name; False if ``text`` is not one."""
    if m := _ALLOC.fullmatch(text):
        shape = ast.literal_eval(m[3])
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        names.arrays[m[1]] = nl.Arr(_by_object(m[1], "_waddr"), 0, shape, nl.c_strides(
            shape, np.dtype(m[4]).itemsize), m[4])
        return True
    if m := _HOSTED.fullmatch(text):
        shape, dtype = ast.literal_eval(m[2]), "bool" if m[3] == "bool_" else m[3]
        host = names.arrays.get(m[4])
        if host is None:
            return False
        names.arrays[m[1]] = nl.Arr(host.slot, host.offset + int(m[5]), shape,
                                     nl.c_strides(shape, np.dtype(dtype).itemsize), dtype)
        return True
    if m := _ADDRESS.fullmatch(text):
        a = names.arrays.get(m[3])
        if a is None or not nl.contiguous(a):
            return False
        names.pointers[m[1]] = (a.slot, a.offset)
        return True
    if (m := _OFFSET.fullmatch(text)) and m[2] in names.pointers:
        slot, offset = names.pointers[m[2]]
        names.pointers[m[1]] = (slot, offset + int(m[3]))
        return True
    if (m := nl.VIEW.fullmatch(text)) and m[2] in names.arrays:
        try:
            names.arrays[m[1]] = nl.view(names.arrays[m[2]], m[3], m[4])
        except nl.Unsupported:
            return False
        return True
    if (m := re.fullmatch(r"(\w+) = (\w+)\[(\w+)\]", text)) and m[2] in names.arrays \
            and m[3] in lowering.namespace:
        try:
            names.arrays[m[1]] = nl.indexed(names.arrays[m[2]], lowering.namespace[m[3]])
        except nl.Unsupported:
            return False
        return True
    return False
