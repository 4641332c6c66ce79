"""A kernel module compiled by Numba to a native object, and loading it with llvmlite
(needs Numba; imported only when a kernel is compiled)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .errors import CodegenError
from .numba_codegen import NUMBA_TYPES, KernelSpec

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
    code (Numba's CPython wrapper) removed, so the object needs no Numba runtime symbol.
    """
    from numba import config, njit

    if config.DISABLE_JIT:
        raise RuntimeError("NUMBA_DISABLE_JIT is set, so Numba compiles nothing; unset it or "
                           "use backend='numpy'")
    module = import_kernel_module(path, spec)
    signature = numba_signature(spec)
    dispatcher = njit(signature, error_model="numpy", fastmath=set(spec.fastmath),
                      nogil=True, boundscheck=False)(module.kernel)
    cres = dispatcher.overloads[signature.args]
    return emit_object(cres.library.get_llvm_str(), cres.fndesc.llvm_func_name, spec)


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
