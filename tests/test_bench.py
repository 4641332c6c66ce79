"""The benchmark harness (benchmarks/, `graphc bench`): every workload computes the same loss
and gradients in graphc, PyTorch eager and JAX, and the command runs end to end."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import bench_harness  # first: puts benchmarks/ on sys.path, loads run.py
import frameworks
import numpy as np
import pytest
from workloads import WORKLOADS

import graphc as gc
from graphc import cli

bench_run = bench_harness.bench_run  # benchmarks/run.py

# Small instances of every workload; a new workload needs an entry (the test fails without).
SMALL = {
    "W1": {"batch": 8, "widths": (12, 7, 5, 3)},
    "W2": {"batch": 6, "widths": (9, 11, 4)},
    "W3": {"rows": 4, "cols": 16},
    "W4": {"inputs": 5, "hidden": 6, "batch": 3, "steps": 4},
    "W4s": {"inputs": 5, "hidden": 6, "batch": 3, "steps": 4},
    "W5": {"batch": 5, "size": 20},  # conv 16, pool 8, conv 4, pool 2: dense 64-120-84-10
    "W6": {"inputs": 2, "hidden": 2},
}


def _results(name, seed=0):
    workload = WORKLOADS[name]
    problem = workload.problem(SMALL[name], seed=seed)
    step, _, backend = frameworks.graphc_step(problem, "numpy")
    assert backend == "numpy"
    return workload, problem, frameworks.as_numpy(step())


def _assert_same(result, expected, names):
    (loss, grads), (ref_loss, ref_grads) = result, expected
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-6)
    assert len(grads) == len(ref_grads) == len(names)
    for name, g, ref in zip(names, grads, ref_grads):
        assert g.shape == ref.shape, name
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_torch_matches_graphc(name):
    workload, problem, expected = _results(name)
    assert all(np.abs(g).max() > 0 for g in expected[1])  # every gradient is exercised
    for fn in [workload.torch, *workload.torch_extra.values()]:
        step, compile_s = frameworks.torch_step(problem, fn)
        _assert_same(frameworks.as_numpy(step()), expected, problem.wrt_names)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_jax_matches_graphc(name):
    pytest.importorskip("jax")
    workload, problem, expected = _results(name)
    step, compile_s = frameworks.jax_step(problem, workload.jax)
    assert compile_s > 0
    _assert_same(frameworks.as_numpy(step()), expected, problem.wrt_names)


def test_workloads_are_float32_with_seeded_data():
    for name in WORKLOADS:
        first, second = (WORKLOADS[name].problem(SMALL[name]) for _ in range(2))
        assert first.loss.dtype == "float32"
        for key, value in first.feeds.items():
            assert value.dtype in (np.float32, np.int64), key
            np.testing.assert_array_equal(value, second.feeds[key])


def test_lenet_has_the_issues_shapes():
    problem = WORKLOADS["W5"].problem()
    shapes = {name: problem.feeds[name].shape for name in problem.wrt_names}
    assert shapes == {"conv1_W": (6, 1, 5, 5), "conv1_b": (6,), "conv2_W": (16, 6, 5, 5),
                      "conv2_b": (16,), "fc1_W": (256, 120), "fc1_b": (120,),
                      "fc2_W": (120, 84), "fc2_b": (84,), "fc3_W": (84, 10), "fc3_b": (10,)}
    assert problem.feeds["x"].shape == (64, 1, 28, 28)
    assert WORKLOADS["W5"].target == 0.8  # issue 18: <= 0.8 of the faster peer


def test_thread_env_sets_every_library():
    env = bench_run.thread_env(3, {"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "NPROC"):
        assert env[var] == "3"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    one = bench_run.thread_env(1, {})
    assert one["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false" and one["NPROC"] == "1"


def test_jax_runs_where_graphc_runs():
    # a JAX with a CUDA plugin takes the GPU unless told: CPU benches keep it on the CPU
    assert bench_run.thread_env(2, {})["JAX_PLATFORMS"] == "cpu"
    assert "JAX_PLATFORMS" not in bench_run.thread_env(2, {}, backend="cuda")
    assert bench_run.thread_env(2, {"JAX_PLATFORMS": "cuda"})["JAX_PLATFORMS"] == "cuda"


def test_measure_warms_up_then_honours_min_steps_and_seconds():
    calls = []
    times = bench_run.measure(lambda: calls.append(1), min_steps=4, seconds=0.0)
    assert len(times) == 4 and len(calls) == 4 + bench_run.WARMUP_STEPS
    times = bench_run.measure(lambda: time.sleep(0.005), min_steps=1, seconds=0.03)
    assert sum(times) >= 0.03 and all(t >= 0.005 for t in times)


def test_missing_framework_and_backend_errors_become_rows(monkeypatch):
    workload = WORKLOADS["W1"]
    problem = workload.problem(SMALL["W1"])

    def no_jax(module):
        if module == "jax":
            raise frameworks.NotInstalled("jax not installed")
    monkeypatch.setattr(frameworks, "_require", no_jax)

    def no_backend(outputs, backend=None):
        raise gc.BackendError(f"backend {backend!r} cannot run here")
    monkeypatch.setattr(gc, "compile", no_backend)
    rows = {name: (step, note) for name, step, _, note in
            (bench_run.prepare(workload, problem, "cuda", framework)
             for framework in bench_run.framework_names(workload, "cuda"))}
    assert list(rows) == ["graphc[cuda]", "torch eager", "jax jit"]
    assert rows["jax jit"] == (None, "not installed")
    assert rows["graphc[cuda]"] == (None, "backend 'cuda' cannot run here")
    import torch
    if torch.cuda.is_available():  # the peers run on the GPU with graphc's cuda backend
        assert rows["torch eager"][0] is not None
    else:
        assert rows["torch eager"] == (None, f"torch {torch.__version__} has no CUDA GPU here")
    rows = {name: step for name, step, _, _ in
            (bench_run.prepare(workload, problem, "numpy", framework)
             for framework in bench_run.framework_names(workload, "numpy"))}
    assert rows["torch eager"] is not None  # on the CPU


@pytest.mark.slow
def test_bench_command_prints_the_table(tmp_path):
    out = tmp_path / "bench.json"
    command = subprocess.Popen(
        [sys.executable, "-m", "graphc.cli", "bench", "--workload", "W1", "--seconds", "0",
         "--steps", "3", "--backend", "numpy", "--threads", "1", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENBLAS_CORETYPE": "Prescott"})  # the children must not get it
    stdout, stderr = command.communicate(timeout=180)
    assert command.returncode == 0, stderr
    lines = [line for line in stdout.splitlines() if not line.startswith("warning:")]
    assert lines[0].startswith("graphc bench: ") and "1 threads" in lines[0]
    assert re.search(r" \((.+; )?(avx\w*|unknown)\), ", lines[0])  # (core; ISA)
    assert lines[1].startswith("children: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE removed")
    assert lines[2].startswith("limits: sgemm 1024^3 ") and "GB/s" in lines[2]
    assert lines[3].split() == ["workload", "framework", "ms/step", "ratio", "best", "peer",
                                "vs", "torch", "target", "met", "compile", "s", "warm", "s",
                                "%", "limit", "steps"]
    assert lines[4].startswith("W1") and "MLP 784-256-256-10" in lines[4]
    graphc_row = lines[5].split()
    assert graphc_row[0] == "graphc[numpy]" and graphc_row[-1] == "3"
    assert "<= 0.80" in lines[5] and graphc_row[graphc_row.index("0.80") + 1] in ("yes", "no")
    assert lines[6].split()[:2] == ["torch", "eager"]
    jax_row = next(line for line in lines if "jax jit" in line)
    assert ("not installed" in jax_row) == (importlib.util.find_spec("jax") is None)
    step_line = next(line for line in lines if line.strip().startswith("step:"))
    assert "155.1 MFLOP (matmul, conv), 2.56 MB in + out; limit " in step_line
    assert re.search(r"; peak memory planned \d+\.\d\d MB, torch eager \d+\.\d\d MB$", step_line)
    assert any(line.startswith("BLAS in each child: graphc[numpy]: ") for line in lines)
    if importlib.util.find_spec("threadpoolctl"):  # it reads the kernel OpenBLAS chose
        assert "openblas" in lines[1] and "Prescott" not in stdout
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["env_removed"] == ["OPENBLAS_CORETYPE",
                                                                  "OPENBLAS_L2_SIZE"]
    assert machine["peaks"]["gemm_flops_per_s"] > 1e8 and machine["load_1min_max"] >= 0
    rows = {r["framework"]: r for r in report["results"]}
    graphc = rows["graphc[numpy]"]
    assert graphc["steps"] >= 3 and graphc["ms_per_step"] > 0
    assert graphc["flops"] == 155058176 and graphc["bytes"] == 2557012
    assert graphc["compile_cold_s"] > 0 and graphc["compile_warm_s"] > 0
    problem = WORKLOADS["W1"].problem()
    f = gc.compile([problem.loss, *gc.grad(problem.loss, list(problem.wrt))], backend="numpy")
    assert graphc["planned_peak_bytes"] == f.stats["planned_peak_bytes"]
    assert graphc["pct_of_limit"] > 0
    assert rows["torch eager"]["ratio_torch"] == 1.0 and rows["torch eager"]["peak_bytes"] > 0
    assert graphc["best_peer"] in ("torch eager", "jax jit")
    assert rows[graphc["best_peer"]]["ratio"] == 1.0
    # Each framework was prepared and timed in a process of its own, not the command's.
    pids = [r["pid"] for r in report["results"]]
    assert len(set(pids)) == len(pids) == len(rows) and command.pid not in pids


@pytest.mark.slow
def test_missing_and_crashing_frameworks_become_note_rows(tmp_path, monkeypatch):
    # In the children: jax is not installed, torch crashes on import.
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["jax"] = None\n')
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        'raise RuntimeError("torch is broken here")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    args = bench_run.arg_parser().parse_args(
        ["--workload", "W1", "--seconds", "0", "--steps", "2", "--threads", "1"])
    torch, jax = bench_run.time_frameworks("W1", ["torch eager", "jax jit"], args,
                                           str(tmp_path), [])
    assert torch["note"] == "RuntimeError: torch is broken here" and torch["times"] == []
    assert jax["note"] == "not installed" and jax["times"] == []
    timed = {"framework": "graphc[numpy]", "compile_s": 0.1, "note": "", "pid": 1,
             "times": [0.002, 0.004, 0.003]}
    rows = bench_run.report_rows(WORKLOADS["W1"], [timed, torch, jax], {}, {})
    text = bench_run.report.table_rows("MLP", rows)
    torch_line = next(line for line in text.splitlines() if "torch eager" in line)
    assert torch_line.split(None, 2)[2] == "RuntimeError: torch is broken here"
    graphc_row = rows[0]  # still timed, with no peer to compare to
    assert graphc_row["ms_per_step"] == pytest.approx(3.0)
    assert graphc_row["ratio"] is None and graphc_row["met"] is None
    assert rows[1]["ms_per_step"] is None and rows[2]["steps"] == 0


def test_bench_without_benchmarks_folder_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli.os.path, "isfile", lambda path: False)
    assert cli.main(["bench"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "benchmarks/ folder" in err


def test_workloads_are_chosen_by_name_in_any_case():
    assert bench_run.selected(["w1,W4s", "w4S"]) == ["W1", "W4s", "W4s"]
    assert bench_run.selected([]) == list(WORKLOADS)
    with pytest.raises(ValueError, match="unknown workload.*W7.*choose from W1"):
        bench_run.selected(["W7"])
