"""The on-disk kernel cache: reuse across processes and shapes, concurrent compiles, and
recovery from truncated or corrupt entries.

Cross-process behaviour runs in subprocesses, each with its own GRAPHC_CACHE_DIR; the
in-process tests forget the kernels loaded in memory first so that the disk is read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
from graphc import kernel_cache, numba_workers

SCRIPT = r"""
import json, sys
import numpy as np, graphc as gc
x = gc.input("x", (5, 7), "float64")
y = gc.sum(gc.sigmoid(x) * gc.softplus(x))
f = gc.compile([y, gc.grad(y, x)], backend="numba", optimize=False)
value, grad = f(x=np.linspace(-3, 3, 35).reshape(5, 7))
keys = ("kernels", "kernel_cache_hits", "kernel_cache_misses", "kernel_cache_rebuilt")
print(json.dumps({"stats": {k: f.stats[k] for k in keys}, "value": float(value),
                  "grad": grad.tolist(), "numba_imported": "numba" in sys.modules}))
"""


def run_script(cache_dir, script=SCRIPT, **env):
    env = {**os.environ, "GRAPHC_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def object_files(cache_dir):
    return sorted(p for p in cache_dir.rglob("*.o"))


@pytest.mark.slow
def test_kernels_are_reused_by_a_new_process_without_importing_numba(tmp_path):
    first = run_script(tmp_path)
    assert first["stats"]["kernels"] >= 3
    assert first["stats"]["kernel_cache_misses"] == first["stats"]["kernels"]
    second = run_script(tmp_path)
    assert second["stats"]["kernel_cache_misses"] == 0
    assert second["stats"]["kernel_cache_hits"] == second["stats"]["kernels"]
    assert not second["numba_imported"]  # a warm start links cached native code directly
    assert second["value"] == first["value"] and second["grad"] == first["grad"]


@pytest.mark.slow
def test_two_processes_compiling_the_same_graph_at_once_both_succeed(tmp_path):
    env = {**os.environ, "GRAPHC_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["value"] == results[1]["value"]
    assert results[0]["grad"] == results[1]["grad"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no debris
    third = run_script(tmp_path)
    assert third["stats"]["kernel_cache_misses"] == 0 and third["value"] == results[0]["value"]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory, and no kernels remembered in memory."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    kernel_cache.clear_memory()
    yield tmp_path
    kernel_cache.clear_memory()


def compile_and_run(dtype="float32"):
    x = gc.input("x", (6,), dtype)
    y = gc.elu(x, alpha=0.7) * gc.silu(x)
    f = gc.compile(y, backend="numba", optimize=False)
    return f, f(x=np.linspace(-2, 2, 6).astype(dtype))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip-a-byte"])
def test_a_damaged_object_file_is_detected_and_rebuilt(fresh_cache, damage):
    f, want = compile_and_run()
    files = object_files(fresh_cache)
    assert len(files) == f.stats["kernels"] == 2
    for path in files:
        data = path.read_bytes()
        path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                          "empty": b"",
                          "flip-a-byte": data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
                          }[damage])
    kernel_cache.clear_memory()
    f2, got = compile_and_run()
    assert f2.stats["kernel_cache_rebuilt"] == 2 and f2.stats["kernel_cache_hits"] == 0
    np.testing.assert_array_equal(got, want)
    for path in files:  # rewritten whole
        assert kernel_cache.decode_object(path.read_bytes()) is not None
    kernel_cache.clear_memory()
    f3, _ = compile_and_run()
    assert f3.stats["kernel_cache_hits"] == 2


def test_a_corrupt_source_file_is_rewritten(fresh_cache):
    f, want = compile_and_run()
    sources = sorted(fresh_cache.rglob("*.py"))
    good = [p.read_text() for p in sources]
    for p in sources:
        p.write_text(p.read_text()[:40] + "\nraise SystemExit('tampered')\n")
    kernel_cache.clear_memory()
    _, got = compile_and_run()
    np.testing.assert_array_equal(got, want)
    assert [p.read_text() for p in sources] == good
    assert all(p.read_text().startswith("# graphc-kernel sha256=") for p in sources)


def _damage(path, how):
    """Put something that is not a regular file of the right contents at ``path``."""
    path.unlink()
    if how == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    elif how == "dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "dangling":
        path.symlink_to(path.with_name("nowhere"))


def _without_blocking(fn, paths, seconds=120):
    """``fn()`` in a thread; fail (after unblocking any reader of a FIFO) if it hangs."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 -- re-raised below
            out["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for p in paths:  # a reader blocked in open() on a FIFO returns once a writer opens
            if p.is_fifo():
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
        pytest.fail(f"gc.compile blocked for {seconds} s on {[str(p) for p in paths]}")
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.parametrize("suffix", [".o", ".py"])
@pytest.mark.parametrize("how", ["directory", "dev-zero", "fifo", "dangling"])
def test_an_entry_that_is_not_a_regular_file_is_discarded_and_rebuilt(fresh_cache, suffix,
                                                                       how):
    _, want = compile_and_run()
    paths = sorted(fresh_cache.rglob(f"*{suffix}"))
    assert len(paths) == 2
    for p in paths:
        _damage(p, how)
    kernel_cache.clear_memory()
    f2, got = _without_blocking(compile_and_run, paths)
    np.testing.assert_array_equal(got, want)
    if suffix == ".o":
        assert f2.stats["kernel_cache_rebuilt"] == 2 and f2.stats["kernel_cache_hits"] == 0
    for p in paths:  # each entry is a regular file again
        assert stat.S_ISREG(os.lstat(p).st_mode), p
    kernel_cache.clear_memory()
    f3, again = compile_and_run()
    assert f3.stats["kernel_cache_hits"] == 2
    np.testing.assert_array_equal(again, want)


def _read_only(root, monkeypatch):
    """Make the tree at ``root`` read-only.  Tests may run as root, who ignores permission
    bits, so then writes under ``root`` are made to fail as they would for a user."""
    for p in [root, *root.rglob("*")]:
        os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
    if os.geteuid() != 0:
        return
    top = str(root)

    def under(p):
        return isinstance(p, (str, bytes, os.PathLike)) and \
            os.path.abspath(os.fsdecode(p)).startswith(top)

    def refuse(p):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(p))
    real = {name: getattr(os, name) for name in
            ("open", "access", "replace", "rename", "unlink", "remove", "rmdir", "mkdir")}

    def fake_open(p, flags, *args, **kwargs):
        if under(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(p)
        return real["open"](p, flags, *args, **kwargs)

    def fake_access(p, mode, *args, **kwargs):
        return False if under(p) and mode & os.W_OK else real["access"](p, mode, *args,
                                                                         **kwargs)

    def guarded(name):
        def call(*args, **kwargs):
            if any(under(a) for a in args[:2]):
                refuse(args[0])
            return real[name](*args, **kwargs)
        return call
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "access", fake_access)
    for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir"):
        monkeypatch.setattr(os, name, guarded(name))


def _restore_writable(root):
    for p in [root, *root.rglob("*")]:
        os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o200)


def test_a_read_only_complete_cache_is_read(fresh_cache, monkeypatch):
    _, want = compile_and_run()
    before = {p: p.read_bytes() for p in fresh_cache.rglob("*") if p.is_file()}
    kernel_cache.clear_memory()
    with monkeypatch.context() as patch:
        _read_only(fresh_cache, patch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to write, so nothing to warn about
            f, got = compile_and_run()
    _restore_writable(fresh_cache)
    assert f.stats["kernel_cache_hits"] == 2 and f.stats["kernel_cache_misses"] == 0
    np.testing.assert_array_equal(got, want)
    assert {p: p.read_bytes() for p in fresh_cache.rglob("*") if p.is_file()} == before


def test_a_read_only_cache_missing_a_kernel_compiles_it_elsewhere(fresh_cache, monkeypatch):
    _, want = compile_and_run()
    missing = sorted(fresh_cache.rglob("silu*.o"))
    assert len(missing) == 1
    missing[0].unlink()
    before = sorted(fresh_cache.rglob("*"))
    kernel_cache.clear_memory()
    with monkeypatch.context() as patch:
        _read_only(fresh_cache, patch)
        with pytest.warns(RuntimeWarning, match="kernel cache"):
            f, got = compile_and_run()
    _restore_writable(fresh_cache)
    assert f.stats["kernel_cache_hits"] == 1 and f.stats["kernel_cache_misses"] == 1
    np.testing.assert_array_equal(got, want)
    assert sorted(fresh_cache.rglob("*")) == before  # nothing written into it


def test_kernels_are_shared_across_shapes_and_graphs(fresh_cache):
    compile_and_run()
    before = object_files(fresh_cache)
    x = gc.input("x", (3, 11, 2), "float32")
    f = gc.compile(gc.silu(x) + gc.elu(x, alpha=0.7), backend="numba",  # other shape, graph
                   optimize=False)
    assert f.stats["kernel_cache_misses"] == 0 and f.stats["kernel_cache_hits"] == 2
    assert object_files(fresh_cache) == before
    assert all(p.name.startswith(("elu_f32_F_", "silu_f32_F_")) for p in before)


def test_an_unusable_cache_directory_warns_and_still_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(blocker))
    kernel_cache.clear_memory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f, got = compile_and_run("float64")
    assert any("kernel cache" in str(w.message) for w in caught)
    np.testing.assert_allclose(got, gc.compile(f.graph.outputs[0], backend="numpy")(
        x=np.linspace(-2, 2, 6)), rtol=1e-12)
    kernel_cache.clear_memory()


def test_import_graphc_does_not_import_numba():
    # nor what a warm compile does not need: folding sigmoid(constant) evaluates a SymPy
    # expression with NumPy (scipy only for erf), the kernel directory's name needs
    # Numba's version (not importlib.metadata): each import cost a warm compile 0.2-1 s
    script = ("import sys, numpy as np, graphc as gc; from graphc import kernel_cache; "
              "x = gc.input('x', (2,)); c = gc.sigmoid(gc.constant(np.zeros(2))); "
              "print(gc.compile(x * c, backend='numpy')(x=[1.0, 2.0]).tolist()); "
              "kernel_cache.environment_tag(); "
              "print([m for m in ('numba', 'scipy', 'importlib.metadata') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0.5, 1.0]", "[]"]


def test_object_format_round_trips_and_rejects_damage():
    obj = kernel_cache.NativeObject(b"\x7fELF" + bytes(range(200)), "graphc_x", ("sinf",))
    data = kernel_cache.encode_object(obj)
    assert kernel_cache.decode_object(data) == obj
    for bad in (data[:-1], data + b"x", data.replace(b"graphc_x", b"graphc_y"), b"",
                b"GRAPHC-KERNEL-OBJECT 1\nnot json\n"):
        assert kernel_cache.decode_object(bad) is None


# -- compiling many kernels at once: this process and worker processes ---------------------

def _spec(stem, body, dtype="float32"):
    """A kernel ``out[i] = <body of x[i]>``; LEAN: whether the module was imported in a
    process without SymPy and graphc's IR."""
    from graphc.numba_codegen import KernelSpec
    source = ("import sys\n\nimport numpy as np\n\nfrom graphc.fastmath import exp_f32\n\n"
              'LEAN = "sympy" not in sys.modules and "graphc.ir" not in sys.modules\n'
              "\n\ndef kernel(out, x, n):\n    for i in range(n):\n"
              f"        out[i] = {body}\n")
    return KernelSpec(stem, source, (("ptr", dtype), ("ptr", dtype), ("int",)))


def _run_kernel(spec, x):
    kernel, _ = kernel_cache.load(spec, None)  # from disk: compiling would fail
    out = np.empty_like(x)
    kernel.fn(out.ctypes.data, x.ctypes.data, x.size)
    return out


def test_a_worker_compiles_without_the_rest_of_graphc(fresh_cache):
    # the worker loads graphc.fastmath and graphc.numba_native only (not graphc/__init__
    # and SymPy, 0.4 s); a kernel it cannot compile does not end it
    lean = _spec("test_lean", "np.float32(2.0) * exp_f32(x[i]) if LEAN else np.float32(-1)")
    failing = _spec("test_failing", "undefined_name * x[i]")
    proc = numba_workers.start_worker()
    try:
        assert proc.stdout.readline() == b"ready\n"
        home = kernel_cache.kernel_dir()
        assert numba_workers.ask(proc, failing, kernel_cache._source(home, failing)) is None
        obj = numba_workers.ask(proc, lean, kernel_cache._source(home, lean))
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert obj.symbol == lean.symbol and obj.externals == ()
    kernel_cache._store(home, f"{lean.name}.o", kernel_cache.encode_object(obj))
    x = np.linspace(-3, 3, 11, dtype=np.float32)
    np.testing.assert_allclose(_run_kernel(lean, x), 2 * np.exp(x), rtol=1e-6)  # LEAN


def test_workers_are_one_per_4_kernels_and_idle_cpu_unless_set(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("GRAPHC_COMPILE_WORKERS", raising=False)
    busy = [1.0]  # this process
    monkeypatch.setattr(kernel_cache, "busy_cpus", lambda: busy[0])
    assert [kernel_cache.compile_workers(n) for n in (1, 3, 4, 6, 12, 40)] == [0, 0, 1, 1, 3, 7]
    busy[0] = 5.0  # 3 of 8 CPUs idle
    assert [kernel_cache.compile_workers(n) for n in (12, 40)] == [3, 3]
    busy[0] = 8.0
    assert kernel_cache.compile_workers(40) == 0
    monkeypatch.setenv("GRAPHC_COMPILE_WORKERS", "2")  # set: the load is not asked
    assert [kernel_cache.compile_workers(n) for n in (4, 40)] == [1, 2]
    monkeypatch.setenv("GRAPHC_COMPILE_WORKERS", "0")
    assert kernel_cache.compile_workers(40) == 0
    assert 0 < kernel_cache.busy_cpus() < 10_000


def _compile_with(worker: str, fresh_cache, monkeypatch, kernels: int) -> list:
    """compile_missing of ``kernels`` good kernels and a failing one with the workers
    behaving as ``worker`` says: every good one is compiled and stored, the failing one is
    left to load(), which compiles it here and raises as before.  Returns the specs."""
    from graphc import numba_native as native
    if worker == "cannot start":
        monkeypatch.setattr(sys, "executable", str(fresh_cache / "no-python"))
    elif worker == "dies":
        monkeypatch.setattr(numba_workers, "_WORKER", "import os; os._exit(3)")
    specs = [_spec(f"test_scale{k}", f"x[i] * {k + 1}.0", "float64") for k in range(kernels)]
    bad = _spec("test_bad", "x[i] +* 1.0", "float64")
    half = kernels // 2
    compiled = kernel_cache.compile_missing(specs[:half] + [bad] + specs[half:],
                                            native.compile_object)
    assert compiled == {s.key for s in specs}
    x = np.linspace(-1, 1, 7)
    for k, spec in enumerate(specs):
        np.testing.assert_array_equal(_run_kernel(spec, x), x * (k + 1))
    with pytest.raises(SyntaxError):
        kernel_cache.load(bad, native.compile_object)
    return specs


@pytest.mark.parametrize("worker", ["works", "cannot start", "dies"])
def test_compile_missing_shares_the_kernels_with_workers(fresh_cache, monkeypatch, worker):
    from graphc import numba_native as native
    monkeypatch.setattr(kernel_cache, "compile_workers", lambda misses: 2)
    specs = _compile_with(worker, fresh_cache, monkeypatch, 6)
    assert kernel_cache.compile_missing(specs, native.compile_object) == set()  # all cached


@pytest.mark.parametrize("worker", ["works", "cannot start", "dies"])
def test_a_cold_process_lets_the_workers_compile_and_takes_what_they_leave(
        fresh_cache, monkeypatch, worker):
    # Numba not loaded here yet and kernels enough: one more worker, this process waits,
    # then compiles what no worker took (all of it when the workers cannot start or die)
    monkeypatch.setattr(kernel_cache, "compile_workers", lambda misses: 1)
    monkeypatch.delenv("GRAPHC_COMPILE_WORKERS", raising=False)
    monkeypatch.setattr(kernel_cache, "_numba_loaded", lambda: True)
    assert kernel_cache.compile_plan(9) == (1, False)  # Numba is loaded in this process
    monkeypatch.setattr(kernel_cache, "_numba_loaded", lambda: False)
    assert [kernel_cache.compile_plan(n) for n in (4, 5, 9)] == [(1, False), (2, True),
                                                                 (2, True)]
    monkeypatch.setenv("GRAPHC_COMPILE_WORKERS", "1")  # set: as many as it says
    assert kernel_cache.compile_plan(9) == (1, False)
    monkeypatch.delenv("GRAPHC_COMPILE_WORKERS")
    _compile_with(worker, fresh_cache, monkeypatch, 8)


def test_a_cold_compile_with_workers_counts_and_computes_as_without(fresh_cache, monkeypatch):
    monkeypatch.setattr(kernel_cache, "compile_workers", lambda misses: 1)
    x = gc.input("x", (5, 7), "float64")
    terms = [gc.sigmoid(x), gc.softplus(x) * 2.0, gc.tanh(x) - x, gc.elu(x, alpha=0.5)]
    y = gc.sum(terms[0] * terms[1] + terms[2] / (1.0 + gc.exp(terms[3])))
    outputs = [y, gc.grad(y, x)]
    feeds = {"x": np.linspace(-3, 3, 35).reshape(5, 7)}
    f = gc.compile(outputs, backend="numba", optimize=False)
    assert f.stats["kernels"] >= 6
    assert f.stats["kernel_cache_misses"] == f.stats["kernels"]
    assert len(object_files(fresh_cache)) == f.stats["kernels"]
    want = gc.compile(outputs, backend="numpy")(feeds)
    for got, ref in zip(f(feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    kernel_cache.clear_memory()
    again = gc.compile(outputs, backend="numba", optimize=False)
    assert again.stats["kernel_cache_hits"] == again.stats["kernels"] == f.stats["kernels"]


@pytest.mark.parametrize("internals", ["as expected", "missing"])
def test_a_kernel_is_lowered_and_optimized_without_numbas_jit_engine(fresh_cache, monkeypatch,
                                                                   internals):
    """compile_object takes Numba's optimized IR without the JIT engine's machine code
    (optimized_ir); where Numba's internals differ it compiles the public way, and the
    kernels compute the same either way."""
    from graphc import numba_native
    monkeypatch.setenv("GRAPHC_COMPILE_WORKERS", "0")  # compiled here, where the spy is
    made = []
    real = numba_native.optimized_ir

    def spy(dispatcher, signature):
        if internals == "missing":
            raise AttributeError("'_FunctionCompiler' object has no attribute 'x'")
        made.append(real(dispatcher, signature))
        return made[-1]

    monkeypatch.setattr(numba_native, "optimized_ir", spy)
    f, got = compile_and_run("float64")
    assert f.stats["kernel_cache_misses"] == f.stats["kernels"] >= 1
    assert len(made) == (f.stats["kernels"] if internals == "as expected" else 0)
    for ir, name in made:  # the function, in a module Numba optimized (loops vectorized)
        assert re.search(rf'^define [^@]*@"?{re.escape(name)}"?\(', ir, re.M)
    assert any("llvm.loop.isvectorized" in ir for ir, _ in made) or not made
    x = np.linspace(-2, 2, 6)
    want = np.where(x > 0, x, 0.7 * np.expm1(x)) * x / (1 + np.exp(-x))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_kernels_that_call_the_same_helper_gather_in_one_compiler():
    # W1's case: two kernels call exp_f32, the others no helper.  The first compiler to ask
    # takes the dearest (a kernel with exp_f32); the second leaves the other exp_f32
    # kernel to it while anything else is left, and ends rather than compile exp_f32 again
    # for a kernel that short; the owner takes it.
    def spec(stem, helper, length):
        source = (f"from graphc.fastmath import {helper}\n" if helper else "") + "#" * length
        return SimpleNamespace(key=stem, source=source)
    jobs = [(spec("exp_a", "maximum, exp_f32", 600), "a"), (spec("exp_b", "exp_f32", 700), "b"),
            (spec("plain_c", "", 735), "c"), (spec("plain_d", "maximum", 400), "d")]
    pool = numba_workers.Pool(jobs, workers=0)
    assert pool.calls["exp_a"] == {"exp_f32"} and pool.calls["plain_d"] == set()
    first, second = object(), object()
    have_first, have_second = set(), set()
    assert pool.take(first, have_first, last_resort=False)[1] == "b"
    assert have_first == {"exp_f32"} and pool.owner == {"exp_f32": first}
    assert pool.take(second, have_second, last_resort=False)[1] == "c"
    assert pool.take(second, have_second, last_resort=False)[1] == "d"
    assert pool.take(second, have_second, last_resort=False) is None  # exp_a is first's
    assert pool.take(second, have_second)[1] == "a"  # unless it is the last resort
    assert pool.take(first, have_first) is None
    # a long backlog is shared even if it costs a second compile of the helper
    pool = numba_workers.Pool([(spec(f"e{k}", "exp_f32", 700), k) for k in range(8)], 0)
    assert pool.take(first, set(), last_resort=False) is not None
    assert pool.take(second, set(), last_resort=False) is not None
    assert numba_workers.helpers("import numpy as np\n") == frozenset()


def test_a_first_run_starts_its_workers_before_lowering(fresh_cache, monkeypatch):
    # an empty kernel directory: gc.compile starts the workers before its passes, and
    # compile_missing hands them the kernels; none is left running after.  Once the
    # directory holds objects, no worker is started before lowering asks for kernels.
    monkeypatch.setattr(kernel_cache, "compile_workers", lambda misses: 1)
    started, pools = [], []
    real_start, real_pool = kernel_cache.start_worker, kernel_cache.Pool
    monkeypatch.setattr(kernel_cache, "start_worker",
                        lambda: started.append(real_start()) or started[-1])
    monkeypatch.setattr(kernel_cache, "Pool", lambda jobs, workers, given=():
                        pools.append(list(given)) or real_pool(jobs, workers, given))
    f, out = compile_and_run()
    x = np.linspace(-2, 2, 6)
    np.testing.assert_allclose(out, (np.where(x > 0, x, 0.7 * np.expm1(x)) * x
                                     / (1 + np.exp(-x))), rtol=1e-6)
    assert len(started) == 1 and pools == [started]
    assert started[0].poll() is not None and kernel_cache._STARTED == []
    kernel_cache.clear_memory()
    kernel_cache.prestart()
    assert len(started) == 1 and kernel_cache._STARTED == []
    kernel_cache.end_prestarted()
