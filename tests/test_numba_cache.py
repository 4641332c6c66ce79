"""The on-disk kernel cache: reuse across processes and shapes, concurrent compiles, and
recovery from truncated or corrupt entries.

Cross-process behaviour runs in subprocesses, each with its own GRAPHC_CACHE_DIR; the
in-process tests forget the kernels loaded in memory first so that the disk is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import graphc as gc
from graphc import kernel_cache

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
    script = ("import sys, graphc as gc; x = gc.input('x', (2,)); "
              "gc.compile(x * 2.0, backend='numpy')(x=[1.0, 2.0]); "
              "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_object_format_round_trips_and_rejects_damage():
    obj = kernel_cache.NativeObject(b"\x7fELF" + bytes(range(200)), "graphc_x", ("sinf",))
    data = kernel_cache.encode_object(obj)
    assert kernel_cache.decode_object(data) == obj
    for bad in (data[:-1], data + b"x", data.replace(b"graphc_x", b"graphc_y"), b"",
                b"GRAPHC-KERNEL-OBJECT 1\nnot json\n"):
        assert kernel_cache.decode_object(bad) is None
