"""What `graphc bench` reports, without timing anything: the FLOP and byte counts of a step,
the ratio to the faster peer and the verdict, the children's environment, the console rows
and README's table generated from a fixed JSON result."""

import json
import pathlib
from types import SimpleNamespace

import bench_harness  # first: puts benchmarks/ on sys.path, loads run.py
import gemm_floor
import limits
import pytest
import report
from workloads import WORKLOADS

import graphc as gc

bench_run = bench_harness.bench_run  # benchmarks/run.py


def _step(problem):
    return [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]


def test_flops_of_the_w1_training_step():
    forward = 2 * 128 * (784 * 256 + 256 * 256 + 256 * 10)
    weight_grads = forward  # dW = h^T @ g: the same multiply-adds as h @ W
    input_grads = 2 * 128 * (256 * 256 + 256 * 10)  # g @ W^T for layers 2 and 3, not for x
    outputs = _step(WORKLOADS["W1"].problem())
    assert limits.step_flops(outputs) == forward + weight_grads + input_grads == 155_058_176
    params = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    # x (float32) and labels (int64) and the parameters read; loss and gradients written
    assert limits.step_bytes(outputs) == 128 * 784 * 4 + 128 * 8 + 2 * params * 4 + 4


def test_flops_of_a_scan_count_its_body_once_per_step():
    W = gc.param("W", (4, 4))
    h0 = gc.input("h0", (2, 4))
    (h, _), ys = gc.scan(lambda c, x: ((gc.tanh(c[0] @ W + x), c[1] + x), c[0] @ W),
                         (h0, h0), gc.input("xs", (5, 2, 4)))
    body = 2 * 2 * 4 * 4  # one matmul a step (the y and the carry share it)
    assert limits.step_flops([h]) == limits.step_flops([h, ys]) == 5 * body
    assert limits.step_flops([h, gc.sum(ys @ W)]) == 5 * body + 2 * 5 * 2 * 4 * 4


def test_flops_of_a_convolution_and_its_adjoints():
    x, w = gc.input("x", (2, 3, 8, 8)), gc.param("w", (4, 3, 3, 3))
    loss = gc.sum(gc.conv2d(x, w))
    forward = 2 * (2 * 4 * 6 * 6) * (3 * 3 * 3)
    assert limits.step_flops([loss]) == forward
    assert limits.step_flops([loss, *gc.grad(loss, [w])]) == 2 * forward
    assert limits.step_flops([loss, *gc.grad(loss, [x, w])]) == 3 * forward


def test_limit_is_the_roofline():
    peaks = {"gemm_flops_per_s": 100e9, "bandwidth_bytes_per_s": 10e9}
    assert limits.limit_seconds(2e9, 1e6, peaks) == (0.02, "gemm")
    assert limits.limit_seconds(0, 8e6, peaks) == (8e-4, "memory")


def test_the_limit_is_the_best_of_the_probes_and_the_footer_gives_their_range():
    first = {"gemm_n": 1024, "gemm_flops_per_s": 215e9, "bandwidth_bytes_per_s": 36e9}
    peaks = limits.best_peaks(first, {"gemm_flops_per_s": 363e9, "bandwidth_bytes_per_s": 30e9})
    peaks = limits.best_peaks(peaks, {"note": "child failed"})  # a failed probe: no change
    assert (peaks["gemm_flops_per_s"], peaks["bandwidth_bytes_per_s"]) == (363e9, 36e9)
    assert peaks["probes"] == [[215e9, 36e9], [363e9, 30e9]] and peaks["gemm_n"] == 1024
    assert limits.best_peaks({"note": "failed"}, first)["gemm_flops_per_s"] == 215e9
    info = {"peaks": peaks, "load_average_end": [0.5, 0.5, 0.5], "load_1min_max": 0.5,
            "busy": False}
    assert report.footer(info, [], 1.0).splitlines()[1] == (
        "limits: 2 probes, one before each workload: sgemm 215.0-363.0 GFLOP/s, float32 copy "
        "30.0-36.0 GB/s; each row's % of limit is of the best probe before it")


def _result(framework, ms, **extra):
    return {"framework": framework, "compile_s": 0.5, "note": "", "pid": 7,
            "times": [ms / 1e3] * 3, **extra}


def test_ratio_is_to_the_faster_peer_and_the_verdict_against_it():
    workload = SimpleNamespace(name="W9", target=0.9)
    results = [_result("graphc[numba]", 9.0, flops=2_000_000_000, bytes=1000),
               _result("torch eager", 12.0), _result("torch nn.LSTM", 5.0),
               _result("jax jit", 10.0)]
    peaks = {"gemm_flops_per_s": 1e12, "bandwidth_bytes_per_s": 1e10}
    compiled = {"compile_cold_s": 1.5, "compile_warm_s": 0.1, "planned_peak_bytes": 10}
    rows = {r["framework"]: r for r in bench_run.report_rows(workload, results, compiled,
                                                             peaks)}
    graphc = rows["graphc[numba]"]
    assert graphc["best_peer"] == "jax jit"  # nn.LSTM is a reference row, not a peer
    assert graphc["ratio"] == pytest.approx(0.9) and graphc["met"] is True
    assert graphc["ratio_torch"] == pytest.approx(0.75)
    assert graphc["limit_ms"] == pytest.approx(2.0) and graphc["bound"] == "gemm"
    assert graphc["pct_of_limit"] == pytest.approx(100 * 2 / 9)
    assert graphc["compile_cold_s"] == 1.5 and graphc["planned_peak_bytes"] == 10
    assert rows["torch eager"]["ratio"] == pytest.approx(1.2)
    assert rows["torch eager"]["met"] is None and "compile_cold_s" not in rows["torch eager"]
    slower = bench_run.report_rows(workload, [_result("graphc[numba]", 9.5), *results[1:]],
                                   {}, {})
    assert slower[0]["met"] is False and slower[0]["ratio"] == pytest.approx(0.95)
    assert "pct_of_limit" not in slower[0]  # no FLOPs counted, no peaks measured


@pytest.mark.parametrize("ms, peer, target, target_us, met", [
    (8.0, 10.0, 0.8, None, True), (8.1, 10.0, 0.8, None, False),
    (8.0, None, 0.8, None, None),  # no peer timed: a ratio cannot be judged
    (None, 10.0, 0.8, None, None), (0.004, None, None, 5.0, True),
    (0.006, None, None, 5.0, False), (0.004, 1.0, 0.001, 5.0, False),
    (1.0, 1.0, None, None, None)])
def test_target_met(ms, peer, target, target_us, met):
    assert bench_run.target_met(ms, peer, target, target_us) is met


def test_best_peer_is_the_faster_timed_one():
    assert bench_run.best_peer({"torch eager": 3.0, "jax jit": 2.0}) == ("jax jit", 2.0)
    assert bench_run.best_peer({"torch eager": 3.0, "graphc[numba]": 1.0}) == (
        "torch eager", 3.0)
    assert bench_run.best_peer({"graphc[numba]": 1.0}) == (None, None)


def test_children_run_without_openblas_overrides():
    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "HOME": "/h"}
    child = bench_run.thread_env(2, env)
    assert "OPENBLAS_CORETYPE" not in child and "OPENBLAS_L2_SIZE" not in child
    assert child["HOME"] == "/h" and child["OPENBLAS_NUM_THREADS"] == "2"
    assert env["OPENBLAS_CORETYPE"] == "Haswell"  # the caller's environment is kept


def test_the_bench_writes_graphcs_bytecode_first(tmp_path, monkeypatch):
    """Where PYTHONDONTWRITEBYTECODE kept an editable install's sources uncompiled, the
    bench byte-compiles them before timing (as a pip install does), and says how many are
    cached; the module list covers graphc's subpackages."""
    import importlib.util
    names = {p.name for p in bench_run._graphc_sources()}
    assert {"compiler.py", "pipeline.py", "explore.py"} <= names  # graphc, passes, viz
    source = tmp_path / "mod.py"
    source.write_text("X = 1\n")
    cached = importlib.util.cache_from_source(str(source))
    monkeypatch.setattr(bench_run, "_graphc_sources", lambda: [source])
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert bench_run.bytecode_state().startswith("graphc's bytecode cached for 0 of 1 ")
    bench_run.write_bytecode()
    assert pathlib.Path(cached).exists()
    assert bench_run.bytecode_state().startswith("graphc's bytecode cached for 1 of 1 ")


def test_isa_level_and_busy_machine():
    assert bench_run.isa_level("flags\t: fpu sse avx avx2 avx512f") == "avx512f"
    assert bench_run.isa_level("flags\t: fpu sse avx avx2") == "avx2"
    assert bench_run.isa_level("flags\t: fpu sse") == "unknown"
    assert bench_run.busy([1.2, 0, 0], [], 2)  # at the start: any load counts
    assert not bench_run.busy([0.3, 0, 0], [[2.9, 0, 0], [3.0, 0, 0]], 2)  # the bench's own
    assert bench_run.busy([0.3, 0, 0], [[3.1, 0, 0]], 2)
    assert not bench_run.busy(None, [None], 2)


def test_the_header_names_the_core_and_its_family_and_model():
    info = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    assert bench_run.cpu_core(info).endswith("family 25 model 17")
    assert "family" not in bench_run.cpu_core("")
    machine = {"cpu": "AMD EPYC", "isa": "avx512f", "core": "znver4, family 25 model 17"}
    assert report.cpu_text(machine) == "AMD EPYC (znver4, family 25 model 17; avx512f)"
    assert report.cpu_text({"cpu": "AMD EPYC", "isa": "avx2"}) == "AMD EPYC (avx2)"


def test_rows_print_targets_in_microseconds():
    row = {"workload": "W6", "framework": "graphc[numba]", "ms_per_step": 0.00412,
           "ratio": 0.5, "best_peer": "torch eager", "ratio_torch": 0.5, "target": None,
           "target_us": 5.0, "met": True, "compile_s": 0.2, "compile_cold_s": 0.3,
           "compile_warm_s": 0.05, "steps": 1000, "note": ""}
    line = report.table_rows("tiny graph", [row]).splitlines()[1].split()
    assert line == ["graphc[numba]", "0.00412", "0.50", "torch", "eager", "0.50", "<=",
                    "5", "us", "yes", "0.30", "0.050", "1000"]
    step = report.table_rows("tiny graph", [{**row, "grad_cold_s": 0.261,
                                             "grad_warm_s": 0.029}]).splitlines()[-1]
    assert "graph + gc.grad 0.26 s cold, 0.029 s warm" in step


BLAS = [{"internal_api": "openblas", "version": "0.3.31", "architecture": "Haswell",
         "num_threads": 2, "library": "numpy.libs"}]
FIXED = {
    "machine": {"cpu": "AMD EPYC", "isa": "avx2", "threads": 2, "date": "2026-12-02 15:00 UTC",
                "load_average_start": [0.25, 0.5, 0.5], "load_1min_max": 2.31,
                "peaks": {"gemm_n": 1024, "gemm_flops_per_s": 95.25e9, "copy_bytes": 2**26,
                          "bandwidth_bytes_per_s": 12.06e9, "repeats": 10, "blas": BLAS}},
    "seconds": 3.0,
    "results": [
        {"workload": "W1", "framework": "graphc[numba]", "ms_per_step": 0.973, "ratio": 1.088,
         "best_peer": "torch eager", "target": 0.8, "met": False, "note": "",
         "pct_of_limit": 33.44, "compile_cold_s": 1.234, "compile_warm_s": 0.061,
         "planned_peak_bytes": 1607980},
        {"workload": "W1", "framework": "torch eager", "ms_per_step": 0.894, "note": "",
         "compile_s": 0.0, "peak_bytes": 2300000},
        {"workload": "W1", "framework": "jax jit", "ms_per_step": 1.133, "note": "",
         "compile_s": 0.25},
        {"workload": "W4", "framework": "graphc[numba]", "ms_per_step": 16.425,
         "ratio": 1.051, "best_peer": "torch eager", "target": 0.35, "met": False, "note": "",
         "pct_of_limit": 5.1},
        {"workload": "W4", "framework": "torch eager", "ms_per_step": 15.628, "note": "",
         "compile_s": 0.0},
        {"workload": "W4", "framework": "torch nn.LSTM", "ms_per_step": 5.805, "note": "",
         "compile_s": 0.0},
        {"workload": "W4", "framework": "jax jit", "ms_per_step": None,
         "note": "not installed", "compile_s": None}]}


def test_readme_table_from_a_fixed_result(tmp_path, capsys):
    expected = """\
`graphc bench --seconds 3` on 2026-12-02 15:00 UTC: graphc[numba], AMD EPYC (avx2), 2 threads, \
BLAS openblas 0.3.31 Haswell, 2 threads (numpy.libs); sgemm peak 95.2 GFLOP/s, float32 copy \
12.1 GB/s; 1-minute load average 0.25 at the start, up to 2.31 during the run.

| workload | graphc ms | torch eager ms | jax jit ms | ratio (best peer) | target | met \
| % of limit | graphc compile cold / warm s | JAX first call s | peak MB planned / torch |
|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|
| W1 | 0.973 | 0.894 | 1.133 | 1.09 (torch eager) | ≤ 0.80 | no | 33.4 | 1.23 / 0.06 | 0.25 \
| 1.61 / 2.30 |
| W4 | 16.425 | 15.628 | not installed | 1.05 (torch eager) | ≤ 0.35 | no | 5.1 |  |  |  |

W4 torch nn.LSTM: 5.805 ms"""
    assert report.readme_table(FIXED) == expected
    path = tmp_path / "results.json"
    path.write_text(json.dumps(FIXED))
    assert bench_run.main(["--readme", str(path)]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_header_and_footer_name_the_machine_blas_and_load():
    info = {**FIXED["machine"], "cores": 2, "usable_cores": 2, "python": "3.11.7",
            "versions": {"graphc": "0.1.0", "jax": None},
            "env_removed": ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"],
            "load_average_end": [2.5, 1.0, 0.5], "load_1min_max": 3.4, "busy": True}
    info["peaks"] = {**info["peaks"], "copy_threads": 2}
    assert report.header(info).splitlines() == [
        "graphc bench: AMD EPYC (avx2), 2 cores (2 usable), 2 threads; python 3.11.7, "
        "graphc 0.1.0, jax not installed; load average 0.25 0.50 0.50",
        "children: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE removed from the environment; BLAS of "
        "NumPy (graphc's matmuls): openblas 0.3.31 Haswell, 2 threads (numpy.libs)",
        "limits: sgemm 1024^3 95.2 GFLOP/s, float32 copy 12.1 GB/s (64 MiB, 2 threads), "
        "best of 10 each"]
    rows = [{"framework": "graphc[numba]", "blas": BLAS},
            {"framework": "torch eager", "blas": [{"internal_api": "mkl", "num_threads": 2,
                                                   "library": "torch"}]}]
    assert report.footer(info, rows, 1.0).splitlines() == [
        "BLAS in each child: graphc[numba]: openblas 0.3.31 Haswell, 2 threads (numpy.libs); "
        "torch eager: mkl, 2 threads (torch)",
        "load average at the end: 2.50 1.00 0.50; the 1-minute one reached 3.40",
        "warning: other work loaded the machine during the run (1-minute load average up to "
        "3.40 with this bench's 2 thread(s), more than 1.0 over them): timings are unreliable"]


def test_gemm_floor_times_every_matmul_of_the_step(capsys):
    # W1: 3 forward GEMMs, 3 weight gradients, 2 input gradients (x's is not needed)
    shapes = gemm_floor.gemm_shapes("W1")
    assert sorted(shapes) == sorted([(128, 784, 256), (128, 256, 256), (128, 256, 10),
                                     (784, 128, 256), (256, 128, 256), (256, 128, 10),
                                     (128, 10, 256), (128, 256, 256)])
    problem = WORKLOADS["W1"].problem()
    step = [problem.loss, *gc.grad(problem.loss, list(problem.wrt))]
    assert sum(2 * m * k * n for m, k, n in shapes) == limits.step_flops(step)
    gemm_floor.main(["--workload", "W6", "--no-jax", "--jax-step-ms", "0.01"])
    out = capsys.readouterr().out
    assert out.startswith("W6: ") and "sum: numpy " in out and "no ratio target" in out
