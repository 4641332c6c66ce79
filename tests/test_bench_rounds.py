"""`graphc bench` times its frameworks in turns (benchmarks/rounds.py): the rounds, their
order, ratios paired by round, and a child that dies between rounds."""

import os

import bench_harness  # first: puts benchmarks/ on sys.path, loads run.py
import pytest
import rounds
from workloads import WORKLOADS

bench_run = bench_harness.bench_run


class FakeChild:
    """Answers like a framework's child: ``ms`` per step; dies at its ``die_at``-th burst."""

    def __init__(self, name, ms, log, die_at=None):
        self.name, self.ms, self.log, self.die_at = name, ms, log, die_at
        self.bursts, self.note = 0, ""

    def ask(self, request):
        self.log.append((self.name, request["do"]))
        if request["do"] == "finish":
            return {"blas": [self.name]}
        self.bursts += 1
        if self.bursts == self.die_at:
            self.note = "RuntimeError: died"
            return None
        return {"times": [self.ms / 1e3] * request["steps"]}


def result(name, note=""):
    return {"framework": name, "compile_s": 0.1, "note": note, "times": [], "pid": 1}


def test_plan_splits_seconds_and_steps_over_rounds():
    assert rounds.plan(2.0, 50) == (5, 0.4, 10)
    assert rounds.plan(0.0, 3) == (3, 0.0, 1)  # fewer steps than rounds: fewer rounds
    assert rounds.plan(1.0, 1) == (1, 1.0, 1)


def test_children_take_turns_in_a_rotating_order(monkeypatch):
    monkeypatch.setattr(rounds, "SETTLE_S", 0.0)
    log, after = [], []
    children = [FakeChild(n, ms, log) for n, ms in (("g", 1.0), ("t", 2.0), ("j", 4.0))]
    results = [result("g"), result("t"), result("j"), result("x", note="not installed")]
    rounds.time_in_turns(children + [None], results, 0.0, 3, lambda: after.append(1))
    timed = [name for name, do in log if do == "time"]
    assert timed == ["g", "t", "j", "t", "j", "g", "j", "g", "t"]  # 3 rounds, rotated
    assert [name for name, do in log if do == "finish"] == ["g", "t", "j"] and len(after) == 3
    assert results[0]["rounds"] == [1.0, 1.0, 1.0] and len(results[0]["times"]) == 3
    assert results[2]["blas"] == ["j"] and results[3]["times"] == []  # never asked


def test_a_child_that_dies_between_rounds_gets_a_note_and_no_times(monkeypatch):
    monkeypatch.setattr(rounds, "SETTLE_S", 0.0)
    log = []
    children = [FakeChild("g", 1.0, log), FakeChild("t", 2.0, log, die_at=2)]
    results = [result("g"), result("t")]
    rounds.time_in_turns(children, results, 0.0, 4)
    assert results[1]["note"] == "RuntimeError: died" and results[1]["times"] == []
    assert [name for name, do in log if do == "time"].count("t") == 2  # not asked again
    assert len(results[0]["rounds"]) == 4 and results[0]["blas"] == ["g"]


def test_ratios_are_paired_by_round_so_a_slow_spell_cancels():
    """graphc takes half the peer's time in every round, but a slow spell (2x) covered
    rounds 1-2 and ended in round 3 between graphc's burst and the peer's: the ratio of
    the medians says 1.0, the ratio paired by round 0.5 (what each round measured)."""
    graphc, peer = [2.0, 2.0, 2.0, 1.0, 1.0], [4.0, 4.0, 2.0, 2.0, 2.0]
    assert rounds.paired_ratio(graphc, peer) == 0.5
    assert rounds.paired_ratio([1.0, None], [None, 2.0]) is None
    assert rounds.paired_ratio(None, [1.0]) is None
    timed = [dict(result(name), times=[ms / 1e3 for ms in r], rounds=r) for name, r in
             (("graphc[numba]", graphc), ("torch eager", peer), ("jax jit", [8.0] * 5))]
    rows = bench_run.report_rows(WORKLOADS["W1"], timed, {}, {})
    row = rows[0]
    assert row["ms_per_step"] == pytest.approx(2.0)  # the median of all its steps ...
    assert row["best_peer"] == "torch eager"  # ... and torch eager's too, 1.0 apart
    assert row["ratio"] == pytest.approx(0.5) and row["ratio_torch"] == pytest.approx(0.5)
    assert row["met"] is True  # W1's target, 0.8, judged on the paired ratio
    assert row["ratio_rounds"] == [0.5, 0.5, 1.0, 0.5, 0.5]
    assert bench_run.report.step_line(rows).endswith("ratio to torch eager by round 0.50-1.00")


@pytest.mark.slow
def test_a_real_child_is_prepared_timed_and_finished(tmp_path):
    args = bench_run.arg_parser().parse_args(
        ["--workload", "W6", "--seconds", "0", "--steps", "2", "--threads", "1",
         "--backend", "numpy"])
    (graphc,) = bench_run.time_frameworks("W6", ["graphc[numpy]"], args, str(tmp_path), [])
    assert graphc["note"] == "" and len(graphc["times"]) == 2
    assert len(graphc["rounds"]) == 2 and all(ms > 0 for ms in graphc["rounds"])
    assert graphc["pid"] != os.getpid() and "blas" in graphc and graphc["flops"] > 0
