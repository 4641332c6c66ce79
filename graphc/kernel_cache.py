"""The on-disk kernel cache, and loading native kernels into this process.

Layout (``$GRAPHC_CACHE_DIR``, else the platform's user cache directory + ``graphc``:
:func:`graphc.disk_cache.cache_root`, which also holds the derived formulas)::

    kernels-<environment tag>/      one directory per (graphc codegen, Numba, llvmlite,
                                     host CPU and features, fastmath.py) combination
        sigmoid_f32_F_3fa2c1d09e.py  the kernel's source; line 1: "# graphc-kernel sha256=..."
        sigmoid_f32_F_3fa2c1d09e.o   native object: magic line, JSON header, payload

A kernel's file name ends in a hash of its source and signature, so a kernel is shared
by every graph and shape with the same body.  A warm load reads the object, checks its
checksum and links it into an in-process MCJIT engine with llvmlite: Numba is not
imported, which is what keeps a warm ``gc.compile`` fast.  On a miss the source is
written, compiled by Numba (:func:`graphc.numba_native.compile_object`) and the object
written.  :func:`compile_missing` compiles a graph's missing kernels first, in this
process and in worker processes at once (``$GRAPHC_COMPILE_WORKERS``).

Safety: every file is written to a temporary name in the same directory and moved into
place with ``os.replace``, so two processes compiling the same kernel at once each
produce a complete file and readers never see a partial one.  An entry is read only if
it is a regular file (opened without blocking, so a FIFO never hangs a compile) with the
right checksum; anything else (truncated, corrupt, a directory, a device, a FIFO, a
dangling link) is removed and rebuilt.  A cache directory that cannot be written is still
read; what it lacks is compiled into a temporary directory, reported once as a warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass

from .disk_cache import atomic_write, cache_root
from .numba_codegen import CODEGEN_VERSION, KernelSpec
from .numba_native import NativeObject
from .numba_workers import Pool, compiled_here, end_workers, start_worker

FORMAT = 1
_MAGIC = b"GRAPHC-KERNEL-OBJECT 1\n"
_SOURCE_TAG = "# graphc-kernel sha256="
# Environment variables that change what Numba generates, so they are part of the tag.
_NUMBA_ENV = ("NUMBA_OPT", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_LOOP_VECTORIZE",
              "NUMBA_SLP_VECTORIZE", "NUMBA_ENABLE_AVX", "NUMBA_BOUNDSCHECK")


_TAG: str | None = None


def environment_tag() -> str:
    """A hash of everything besides a kernel's source that its native code depends on."""
    global _TAG
    if _TAG is None:
        import llvmlite
        import llvmlite.binding as llvm
        _init_llvm()
        fastmath = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastmath.py")
        with open(fastmath, "rb") as f:
            fastmath_hash = hashlib.sha256(f.read()).hexdigest()
        parts = [f"graphc codegen {CODEGEN_VERSION} cache {FORMAT}",
                 f"numba {_numba_version()}", f"llvmlite {llvmlite.__version__}",
                 f"cpu {llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}",
                 f"{sys.platform} {struct.calcsize('P') * 8}", f"fastmath {fastmath_hash}"]
        parts += [f"{k}={os.environ.get(k, '')}" for k in _NUMBA_ENV]
        _TAG = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return _TAG


def _numba_version() -> str:
    """Numba's version, from its ``_version.py`` (the version and the git revision):
    neither Numba nor ``importlib.metadata`` is imported (0.2 s of a warm compile)."""
    import importlib.util
    spec = importlib.util.find_spec("numba")
    path = os.path.join(os.path.dirname(spec.origin), "_version.py")
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:  # an install without the file: ask its metadata
        import importlib.metadata
        return importlib.metadata.version("numba")


def kernel_dir() -> str:
    return os.path.join(cache_root(), f"kernels-{environment_tag()}")


# ---------------------------------------------------------------------------------------
# Files


def source_text(spec: KernelSpec) -> str:
    """The kernel file: a checksum line, then the generated source."""
    digest = hashlib.sha256(spec.source.encode()).hexdigest()
    return f"{_SOURCE_TAG}{digest}\n{spec.source}"


def read_entry(path: str) -> bytes | None | bool:
    """The bytes of the regular file at ``path``; None if nothing is there; False if what
    is there is not a readable regular file (never blocks: FIFOs are opened non-blocking
    and refused, like directories and devices)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return False if os.path.lexists(path) else None  # else a dangling symlink
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return False
    finally:
        os.close(fd)


def discard(path: str) -> None:
    """Remove a damaged entry, whatever it is; a failure leaves it (it is never read)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def source_ok(path: str, spec: KernelSpec) -> bool:
    return read_entry(path) == source_text(spec).encode()


def _digest(symbol: str, externals, code: bytes) -> str:
    """Checksum of an object entry: the payload and the header fields it is read with."""
    h = hashlib.sha256(json.dumps([symbol, list(externals)]).encode())
    h.update(code)
    return h.hexdigest()


def encode_object(obj: NativeObject) -> bytes:
    header = {"symbol": obj.symbol, "externals": list(obj.externals), "size": len(obj.code),
              "sha256": _digest(obj.symbol, obj.externals, obj.code)}
    return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + obj.code


def decode_object(data: bytes) -> NativeObject | None:
    """The object stored in ``data``, or None if it is truncated or corrupt."""
    if not data.startswith(_MAGIC):
        return None
    head, sep, code = data[len(_MAGIC):].partition(b"\n")
    try:
        header = json.loads(head)
        symbol, externals = str(header["symbol"]), tuple(map(str, header["externals"]))
        if not sep or len(code) != header["size"] or \
                _digest(symbol, externals, code) != header["sha256"]:
            return None
        return NativeObject(code, symbol, externals)
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------
# Native code in this process


def _init_llvm():
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


class _NativeLoader:
    """One MCJIT engine that native kernel objects are linked into."""

    def __init__(self):
        import llvmlite.binding as llvm
        _init_llvm()
        self._llvm = llvm
        tm = llvm.Target.from_default_triple().create_target_machine()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        self._addresses: dict[str, int] = {}

    def engine_address(self, name: str) -> int:
        return self._engine.get_function_address(name)

    def address(self, obj: NativeObject) -> int:
        addr = self._addresses.get(obj.symbol)
        if addr is None:
            missing = unresolved(obj)
            if missing:
                raise OSError(f"kernel needs symbols this process lacks: {', '.join(missing)}")
            self._engine.add_object_file(self._llvm.ObjectFileRef.from_data(obj.code))
            self._engine.finalize_object()
            addr = self._engine.get_function_address(obj.symbol)
            if not addr:
                raise OSError(f"native kernel object does not define {obj.symbol}")
            self._addresses[obj.symbol] = addr
        return addr


def link(symbol: str, build) -> int:
    """The address of ``symbol``, from the object ``build()`` makes, kept in the cache as
    ``<symbol>.native`` (a native loop or run of statements, graphc.numba_loop: its name
    hashes its IR); linked once a process."""
    global _LOADER
    with _LOCK:
        if _LOADER is None:
            _LOADER = _NativeLoader()
        home = kernel_dir()
        dirs = list(dict.fromkeys([home, _writable_dir(home)]))
        for path in (os.path.join(d, f"{symbol}.native") for d in dirs):
            data = read_entry(path)
            obj = decode_object(data) if data else None
            if obj is not None and obj.symbol == symbol:
                with contextlib.suppress(OSError):
                    return _LOADER.address(obj)
        obj = build()
        address = _LOADER.address(obj)
        with contextlib.suppress(OSError):
            _store(home, f"{symbol}.native", encode_object(obj))
        return address


def function_address(name: str) -> int:
    """The address of function ``name`` of an object :func:`link` linked (one object may
    define several: a program's native runs)."""
    with _LOCK:
        address = _LOADER.engine_address(name) if _LOADER is not None else 0
    if not address:
        raise OSError(f"no linked object defines {name}")
    return address


def unresolved(obj: NativeObject) -> list[str]:
    """External symbols of ``obj`` (from its IR and, for ELF, its symbol table) that the
    dynamic linker cannot find in this process; linking them would crash at call time."""
    names = set(obj.externals) | set(elf_undefined_symbols(obj.code))
    if not names or sys.platform == "win32":
        return []
    process = ctypes.CDLL(None)
    return sorted(n for n in names if not hasattr(process, n))


def elf_undefined_symbols(code: bytes) -> list[str]:
    """Undefined symbol names of an ELF64 little-endian object ([] for other formats)."""
    if code[:4] != b"\x7fELF" or code[4] != 2 or code[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", code, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", code, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", code, shoff + i * shentsize)
                for i in range(shnum)]
    names = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sec[6]]
        for off in range(sec[4], sec[4] + sec[5], 24):
            st_name, _info, _other, shndx = struct.unpack_from("<IBBH", code, off)
            if shndx == 0 and st_name:
                start = strtab[4] + st_name
                names.append(code[start:code.index(b"\0", start)].decode())
    return names


# ---------------------------------------------------------------------------------------
# The cache


@dataclass(frozen=True)
class Kernel:
    """A loaded kernel: ``fn`` is a ctypes function taking pointers and sizes (it releases
    the GIL while it runs); ``path`` is its source file."""

    spec: KernelSpec
    fn: object
    path: str


_LOCK = threading.RLock()
_MEMORY: dict[str, Kernel] = {}
_LOADER: _NativeLoader | None = None
_UNWRITABLE: set[str] = set()  # cache directories found read-only (warned once)
_FALLBACK_DIR: str | None = None


def clear_memory() -> None:
    """Forget the kernels loaded in this process (the next load reads the disk again)."""
    with _LOCK:
        _MEMORY.clear()


def _writable_dir(home: str) -> str:
    """Where new entries go: the cache directory, or a temporary one once it could not
    be written (a read-only cache is still read)."""
    global _FALLBACK_DIR
    if home not in _UNWRITABLE:
        return home
    if _FALLBACK_DIR is None:
        _FALLBACK_DIR = tempfile.mkdtemp(prefix="graphc-kernels-")
    return _FALLBACK_DIR


def _store(home: str, name: str, data: bytes) -> str:
    """Write entry ``name``; return its path (in a temporary directory if ``home`` cannot
    be written: that is reported once as a warning)."""
    directory = _writable_dir(home)
    path = os.path.join(directory, name)
    try:
        if directory == home:
            os.makedirs(home, exist_ok=True)
        if read_entry(path) is False:
            discard(path)
        atomic_write(path, data)
        return path
    except OSError as err:
        if directory != home:
            raise
        _UNWRITABLE.add(home)
        warnings.warn(f"graphc: cannot write the kernel cache {home} ({err}); kernels it "
                      "lacks are compiled again in every process", RuntimeWarning,
                      stacklevel=4)
        return _store(home, name, data)


def _cached_object(paths, spec: KernelSpec):
    """This kernel's object from the first of ``paths`` that holds it; None if none has
    it; False if a damaged entry was found (and removed)."""
    found = None
    for path in paths:
        data = read_entry(path)
        obj = decode_object(data) if data else None
        if obj is not None and obj.symbol == spec.symbol:
            return obj
        if data is not None:  # damaged, or another kernel's: removed and rebuilt
            discard(path)
            found = False
    return found


def load(spec: KernelSpec, compile_object) -> tuple[Kernel, str]:
    """The kernel for ``spec`` and where it came from: ``"memory"``, ``"disk"``,
    ``"compiled"`` (a miss) or ``"rebuilt"`` (the cached entry was damaged).

    ``compile_object(spec, source_path) -> NativeObject`` compiles on a miss; its errors
    propagate (the backend names the graph node)."""
    global _LOADER
    with _LOCK:
        kernel = _MEMORY.get(spec.key)
        if kernel is not None:
            return kernel, "memory"
        if _LOADER is None:
            _LOADER = _NativeLoader()
        home = kernel_dir()
        dirs = list(dict.fromkeys([home, _writable_dir(home)]))
        obj = _cached_object([os.path.join(d, f"{spec.name}.o") for d in dirs], spec)
        outcome = "rebuilt" if obj is False else "disk"
        source_path = next((path for path in (os.path.join(d, f"{spec.name}.py") for d in dirs)
                            if source_ok(path, spec)), None)
        if source_path is None:
            source_path = _store(home, f"{spec.name}.py", source_text(spec).encode())
        address = None
        if obj:
            try:
                address = _LOADER.address(obj)
            except OSError:
                outcome = "rebuilt"
        if address is None:
            obj = compile_object(spec, source_path)
            address = _LOADER.address(obj)
            with contextlib.suppress(OSError):  # not kept on disk; this process has it
                _store(home, f"{spec.name}.o", encode_object(obj))
            outcome = "compiled" if outcome == "disk" else outcome
        proto = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p if p[0] == "ptr" else ctypes.c_ssize_t
                                         for p in spec.params])
        kernel = Kernel(spec, proto(address), source_path)
        _MEMORY[spec.key] = kernel
        return kernel, outcome


# ---------------------------------------------------------------------------------------
# Compiling many kernels at once: this process and worker processes


def _missing(specs) -> list:
    """The distinct specs of ``specs`` that neither this process nor any cache directory
    holds an entry for (a damaged entry is left to :func:`load`, which rebuilds it)."""
    home = kernel_dir()
    dirs = list(dict.fromkeys([home, _writable_dir(home)]))
    found = {}
    for spec in specs:
        if spec.key not in _MEMORY and spec.key not in found and all(
                read_entry(os.path.join(d, f"{spec.name}.o")) is None for d in dirs):
            found[spec.key] = spec
    return list(found.values())


# A worker's start (Python, Numba, its first compile) costs about 0.9 s of CPU and a kernel
# 0.05-0.5 s: a worker is started for every KERNELS_PER_WORKER kernels missing.  W1's 6
# kernels on 2 idle CPUs: 0.93-0.97 s cold with a worker, 1.19-1.23 s without; on a busy
# machine a worker only adds its start-up, hence the cap by idle CPUs.
KERNELS_PER_WORKER = 4


def compile_workers(misses: int) -> int:
    """How many worker processes compile ``misses`` kernels beside this process: one per
    KERNELS_PER_WORKER kernels and at most one per other CPU this process may run on; at
    most ``$GRAPHC_COMPILE_WORKERS`` if set (0: this process compiles alone), else at most
    the CPUs that no other runnable thread is using now (:func:`busy_cpus`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("GRAPHC_COMPILE_WORKERS", "").strip()
    cap = int(limit) if limit.isdigit() else round(cpus - busy_cpus())
    return max(0, min(cpus - 1, misses // KERNELS_PER_WORKER, cap))


def compile_plan(misses: int) -> tuple[int, bool]:
    """``(workers, wait)``: :func:`compile_workers`, and one more in place of this process
    (``wait``: it compiles only what no worker took) when Numba is not loaded here yet,
    the workers would have more than KERNELS_PER_WORKER kernels each and
    ``$GRAPHC_COMPILE_WORKERS`` is not set.  Loading Numba (and the SciPy its BLAS check
    imports) costs this process 0.3-0.5 s a worker without SciPy does not pay; W1's cold
    compile, 6 kernels on 2 CPUs, 7 alternating pairs: median 0.967 s with this process
    compiling, 0.910 s with two workers (faster in 6 pairs)."""
    workers = compile_workers(misses)
    if workers and not _numba_loaded() and misses > KERNELS_PER_WORKER * workers \
            and not os.environ.get("GRAPHC_COMPILE_WORKERS", "").strip():
        return workers + 1, True
    return workers, False


# Workers started before lowering asked for its kernels (:func:`prestart`).
_STARTED: list = []


def prestart() -> None:
    """Start compile workers now, while the graph is optimized and lowered, if this
    environment's kernel directory holds no kernel object yet (a first run: every kernel
    will be compiled): as many as :func:`compile_plan` gives for 2 * KERNELS_PER_WORKER + 1
    kernels.  :func:`compile_missing` hands them kernels; :func:`end_prestarted` ends any
    it did not take.  W1's cold compile on 2 CPUs (znver4), 11 rounds taking turns:
    median 1.135 s without, 1.054 s with (1.178 s before numba_workers' helper-aware
    order too)."""
    with _LOCK:
        if _STARTED:
            return
        with contextlib.suppress(OSError), os.scandir(kernel_dir()) as entries:
            if any(entry.name.endswith(".o") for entry in entries):
                return
        for _ in range(compile_plan(2 * KERNELS_PER_WORKER + 1)[0]):
            with contextlib.suppress(OSError):
                _STARTED.append(start_worker())


def end_prestarted() -> None:
    """End the workers :func:`prestart` started that no compile took."""
    with _LOCK:
        started, _STARTED[:] = list(_STARTED), []
    end_workers(started)


def _numba_loaded() -> bool:
    return "numba" in sys.modules


def busy_cpus() -> float:
    """Threads running or ready to run now, this one included (Linux: /proc/loadavg),
    else the 1-minute load average (which lags by up to a minute), else 1."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 1.0


def compile_missing(specs, compile_object) -> set[str]:
    """Compile the kernels of ``specs`` that no cache holds and store their objects, so
    that :func:`load` finds them on disk; return their keys.  This process compiles (with
    ``compile_object``) while :func:`compile_plan`'s worker processes (those
    :func:`prestart` started first) take kernels from the same queue, each the one that
    costs it most (:meth:`graphc.numba_workers.Pool.take`), or, told to wait, compiles only
    what they left.  A kernel that fails is left out: its :func:`load` compiles it again
    and reports the error."""
    with _LOCK:
        started, _STARTED[:] = list(_STARTED), []
        misses = _missing(specs)
        workers, wait = compile_plan(len(misses))
        if started and misses:  # they are loading Numba already: this process need not
            workers, wait = max(workers, len(started)), wait or not _numba_loaded()
        if not workers or not misses:
            end_workers(started)
            return set()
        home = kernel_dir()
        pool = Pool([(spec, _source(home, spec)) for spec in misses], workers, started)
        if wait:  # until the queue is empty and no worker holds a kernel, or none is left
            with pool.busy:
                pool.busy.wait_for(lambda: not pool.live or not (pool.jobs or pool.running))
        have = compiled_here()
        while (item := pool.take(have=have)) is not None:
            spec, path = item
            with contextlib.suppress(Exception):  # load() compiles it again, and reports
                pool.objects[spec.key] = compile_object(spec, path)
        pool.finish()
        for spec in misses:
            if spec.key in pool.objects:
                with contextlib.suppress(OSError):
                    _store(home, f"{spec.name}.o", encode_object(pool.objects[spec.key]))
        return set(pool.objects)


def _source(home: str, spec: KernelSpec) -> str:
    """The path of the kernel's source file, written if no cache directory holds it."""
    dirs = list(dict.fromkeys([home, _writable_dir(home)]))
    return next((path for path in (os.path.join(d, f"{spec.name}.py") for d in dirs)
                 if source_ok(path, spec)), None) or \
        _store(home, f"{spec.name}.py", source_text(spec).encode())
