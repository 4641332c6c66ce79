"""The on-disk kernel cache, and loading native kernels into this process.

Layout (``$GRAPHC_CACHE_DIR``, else the platform's user cache directory + ``graphc``)::

    kernels-<environment tag>/      one directory per (graphc codegen, Numba, llvmlite,
                                     host CPU and features, fastmath.py) combination
        sigmoid_f32_F_3fa2c1d09e.py  the kernel's source; line 1: "# graphc-kernel sha256=..."
        sigmoid_f32_F_3fa2c1d09e.o   native object: magic line, JSON header, payload

A kernel's file name ends in a hash of its source and signature, so a kernel is shared
by every graph and shape with the same body.  A warm load reads the object, checks its
checksum and links it into an in-process MCJIT engine with llvmlite: Numba is not
imported, which is what keeps a warm ``gc.compile`` fast.  On a miss the source is
written, compiled by Numba (:func:`graphc.numba_native.compile_object`) and the object
written.

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

from .numba_codegen import CODEGEN_VERSION, KernelSpec
from .numba_native import NativeObject

FORMAT = 1
_MAGIC = b"GRAPHC-KERNEL-OBJECT 1\n"
_SOURCE_TAG = "# graphc-kernel sha256="
# Environment variables that change what Numba generates, so they are part of the tag.
_NUMBA_ENV = ("NUMBA_OPT", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_LOOP_VECTORIZE",
              "NUMBA_SLP_VECTORIZE", "NUMBA_ENABLE_AVX", "NUMBA_BOUNDSCHECK")


def cache_root() -> str:
    """``$GRAPHC_CACHE_DIR``, else the platform's per-user cache directory for graphc."""
    env = os.environ.get("GRAPHC_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "graphc", "Cache")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "graphc")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"),
                        "graphc")


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


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
