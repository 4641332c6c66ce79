"""A kernel module compiled by Numba to a native object, and loading it with llvmlite
(needs Numba; imported only when a kernel is compiled)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .errors import CodegenError

if TYPE_CHECKING:
    from .numba_codegen import KernelSpec

# The Numba type of each dtype: bool arrays are passed as uint8 pointers (Numba loads a
# boolean pointer as a raw byte); kernels read them as ``a[i] != 0`` and store bools (0/1).
NUMBA_TYPES = {"float32": "float32", "float64": "float64", "int32": "int32",
               "int64": "int64", "bool": "uint8"}

# ---------------------------------------------------------------------------------------
# Compiling a kernel module to a native object (needs Numba; imported only here)


@dataclass(frozen=True)
class NativeObject:
    """Relocatable native code for one kernel and the C symbol of its entry point."""

    code: bytes
    symbol: str
    externals: tuple[str, ...]


def import_kernel_module(path: str, spec: KernelSpec):
    """Execute the kernel file at ``path`` as a module (tracebacks point into the file)."""
    loader_spec = importlib.util.spec_from_file_location(f"graphc_kernels.{spec.name}", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def numba_signature(spec: KernelSpec):
    from numba import types
    args = [types.CPointer(getattr(types, NUMBA_TYPES[p[1]])) if p[0] == "ptr" else types.intp
            for p in spec.params]
    return types.void(*args)


def compile_object(spec: KernelSpec, path: str) -> NativeObject:
    """Compile the kernel module at ``path`` with Numba; return its native object.

    Numba's own calling convention is ``i32 f(ret*, excinfo*, args...)``; a small LLVM
    wrapper gives the kernel a plain C entry ``void graphc_<key>(args...)`` (our kernels
    cannot raise, so the status is dropped), everything else is internalized and dead
    code removed, so the object needs no Numba runtime symbol.
    """
    from numba import config, njit

    if config.DISABLE_JIT:
        raise RuntimeError("NUMBA_DISABLE_JIT is set, so Numba compiles nothing; unset it or "
                           "use backend='numpy'")
    module = import_kernel_module(path, spec)
    signature = numba_signature(spec)
    # no CPython or cfunc wrapper: the C entry is ours (emit_object), and Numba's wrappers
    # were most of the code it generated (80 -> 68 ms a kernel, 38 fused kernels)
    dispatcher = njit(error_model="numpy", fastmath=set(spec.fastmath), nogil=True,
                      boundscheck=False, no_cpython_wrapper=True,
                      no_cfunc_wrapper=True)(module.kernel)
    try:
        return emit_object(*optimized_ir(dispatcher, signature), spec)
    except _NumbaInternals:  # a Numba whose internals differ: compile as a user would
        dispatcher.compile(signature.args)
        cres = dispatcher.overloads[signature.args]
        return emit_object(cres.library.get_llvm_str(), cres.fndesc.llvm_func_name, spec)


_NumbaInternals = (AttributeError, TypeError, ImportError)


def optimized_ir(dispatcher, signature) -> tuple[str, str]:
    """The LLVM IR of ``dispatcher``'s function compiled for ``signature`` and optimized
    as Numba optimizes it, and the name of the function in it, without the step that then
    makes machine code in Numba's JIT engine: :func:`emit_object` makes the object once
    (the kernels of W1, W3, W4s and W5: 4.3 -> 3.9 s, 16 of 25 with the same machine
    code, the others differ as LLVM's code-generation preparation then ran once, not twice
    over the module).  Numba's own steps (``Flags.no_compile`` lowering, then its
    library's ``finalize``) through attributes that are not its public API; any of them
    missing raises one of ``_NumbaInternals`` and :func:`compile_object` compiles the
    public way."""
    from numba.core import compiler
    from numba.core.compiler_lock import global_compiler_lock

    functions = dispatcher._compiler
    flags = compiler.Flags()
    functions.targetdescr.options.parse_as_flags(flags, functions.targetoptions)
    flags = functions._customize_flags(flags)
    flags.no_compile = True  # lower to LLVM IR; no machine code in the JIT engine
    with global_compiler_lock:
        cres = compiler.compile_extra(
            functions.targetdescr.typing_context, functions.targetdescr.target_context,
            dispatcher.py_func, args=signature.args, return_type=signature.return_type,
            flags=flags, locals={}, pipeline_class=functions.pipeline_class)
        if cres.typing_error is not None:
            raise cres.typing_error
        library = cres.library
        optimize = library._optimize_final_module

        def inlined_then_optimized() -> None:
            inline_helpers(library._final_module, cres.fndesc.llvm_func_name)
            optimize()

        def finalized() -> None:  # in place of adding the module to the JIT engine
            library._finalized = True

        library._optimize_final_module = inlined_then_optimized
        library._finalize_final_module = finalized
        library.finalize()  # links what the function calls and optimizes the module
    return library.get_llvm_str(), cres.fndesc.llvm_func_name


def inline_helpers(module, entry: str) -> None:
    """Mark every function linked into ``module`` besides ``entry`` (the helpers of
    :mod:`graphc.fastmath` a kernel calls) ``alwaysinline``, so that LLVM inlines them
    before it vectorizes the kernel's loops.  Inlined by Numba instead (its
    ``inline="always"``), each call site was a copy of the helper's Numba IR, typed again
    in every kernel: W3's fused kernel, 3.0 -> 2.2 s to compile in a fresh process, with
    the same machine code's speed and bits (docs/codegen.md).  LLVM leaves a recursive function
    (``pairwise_sum``) a call."""
    for fn in module.functions:
        if not fn.is_declaration and fn.name != entry:
            fn.add_function_attribute("alwaysinline")


def _llvm_type(param) -> str:
    return "ptr" if param[0] == "ptr" else "i64"


def emit_object(llvm_ir: str, native: str, spec: KernelSpec) -> NativeObject:
    """Wrap Numba's native function ``native`` (in ``llvm_ir``) in a C entry point and emit
    an object file for the host CPU."""
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(llvm_ir)
    fn = module.get_function(native)
    args = [_llvm_type(p) for p in spec.params]
    declared = [a.type for a in fn.arguments]
    if len(declared) != len(args) + 2:
        raise CodegenError(f"unexpected Numba calling convention for {spec.name}: "
                           f"{len(declared)} arguments")
    symbol = spec.symbol
    formals = ", ".join(f"{t} %a{k}" for k, t in enumerate(args))
    actuals = ", ".join(f"{t} %a{k}" for k, t in enumerate(args))
    wrapper = llvm.parse_assembly(
        f'declare i32 @"{native}"(ptr, ptr, {", ".join(args)})\n'
        f"define void @{symbol}({formals}) {{\n"
        "  %ret = alloca [32 x i8], align 16\n"
        "  %exc = alloca [32 x i8], align 16\n"
        f'  %status = call i32 @"{native}"(ptr %ret, ptr %exc, {actuals})\n'
        "  ret void\n}\n")
    wrapper.triple, wrapper.data_layout = module.triple, module.data_layout
    module.link_in(wrapper)
    for g in list(module.functions) + list(module.global_variables):
        if not g.is_declaration and g.name != symbol:
            g.linkage = "internal"
    tm = target_machine()
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    mpm = llvm.create_new_module_pass_manager()
    mpm.add_global_dead_code_eliminate_pass()
    mpm.add_strip_dead_prototype_pass()
    mpm.run(module, pb)
    module.verify()
    externals = tuple(sorted(
        g.name for g in list(module.functions) + list(module.global_variables)
        if g.is_declaration and not g.name.startswith("llvm.")))
    return NativeObject(tm.emit_object(module), symbol, externals)


def object_from_ir(ir: str, symbol: str, optimize: bool = True) -> NativeObject:
    """An object for the host CPU from LLVM IR that defines ``symbol`` (a native loop or run
    of statements, :mod:`graphc.numba_loop`; llvmlite only, no Numba), its IR optimized at
    -O3 if ``optimize`` (straight-line calls gain little from it: 20,000 lines of the
    unrolled W4 at T=100 take 2.9 s to optimize and emit, 0.45 s to emit unoptimized)."""
    import llvmlite.binding as llvm

    tm = target_machine()
    module = llvm.parse_assembly(ir)
    module.triple, module.data_layout = tm.triple, str(tm.target_data)
    module.verify()
    if optimize:
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(module, pb)
    externals = tuple(sorted(
        f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm.")))
    return NativeObject(tm.emit_object(module), symbol, externals)


_TM = None


def target_machine():
    """A target machine for the host CPU with Numba's JIT settings."""
    global _TM
    if _TM is None:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        _TM = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=3, reloc="static" if target.name.startswith("x86") else "default",
            codemodel="jitdefault", jit=True)
    return _TM


# ---------------------------------------------------------------------------------------
# A compile worker: a process of its own compiling kernels (:func:`graphc.kernel_cache.
# compile_missing`), started without ``graphc/__init__`` so that it loads Numba only


def job(spec: KernelSpec, path: str) -> bytes:
    """The request line for a worker to compile ``spec`` from its source file ``path``."""
    return json.dumps({"name": spec.name, "symbol": spec.symbol, "path": path,
                       "params": spec.params, "fastmath": spec.fastmath}).encode() + b"\n"


def serve(requests, replies) -> None:
    """A worker's loop: ``ready``, then for each request line of ``requests`` (until its
    end) one JSON line on ``replies``: ``{"symbol", "externals", "size"}`` followed by
    ``size`` bytes of object code, or ``{"error"}`` (the parent compiles that kernel itself
    and reports the error)."""
    from numba import njit

    from . import fastmath  # noqa: F401 -- the helpers most kernels call
    njit("void()")(lambda: None)  # Numba's first compile loads its registries (~0.3 s)
    replies.write(b"ready\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        spec = SimpleNamespace(name=request["name"], symbol=request["symbol"],
                               params=tuple(map(tuple, request["params"])),
                               fastmath=tuple(request["fastmath"]))
        try:
            obj = compile_object(spec, request["path"])
        except Exception as err:  # noqa: BLE001 -- any failure: the parent compiles it
            replies.write(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode() + b"\n")
        else:
            replies.write(json.dumps({"symbol": obj.symbol, "externals": obj.externals,
                                      "size": len(obj.code)}).encode() + b"\n" + obj.code)
        replies.flush()
