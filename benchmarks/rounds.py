"""Frameworks timed in turns: a child process per framework, prepared one after the other,
then asked for a burst of steps each in turn, round after round.

Why: the machine's speed changes for seconds to minutes at a time (on this project's VM the
same sgemm probe gave 201 and 388 GFLOP/s within one `graphc bench` run), so frameworks
timed one after the other, each for all its seconds, can be compared across a change of
speed.  In turns, each round's bursts are seconds apart, and a framework's ratio to
another is the median over rounds of the ratio of their bursts' medians
(:func:`paired_ratio`): a slow spell moves both sides of the rounds it covers.

Only one child runs at a time: the others wait on their pipe, and a pause of
:data:`SETTLE_S` before each burst lets the previous child's BLAS and OpenMP threads stop
spinning (OpenBLAS's workers poll for about 2^28 cycles after a GEMM, ~0.1 s).  The order
of the children is rotated every round.

The protocol, one JSON line each way: the child says ``{"framework", "compile_s", "note",
"pid"}`` once prepared (and exits if it has nothing to time); then ``{"do": "time",
"seconds", "steps"}`` gets ``{"times": [...]}`` (seconds per step; the first burst after 3
untimed warm-up steps), and ``{"do": "finish"}`` gets the child's last figures and ends it.
A child that dies or garbles a reply gets a one-line note (its last stderr line) and no
times.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import time

ROUNDS = 5
SETTLE_S = 0.3


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Child:
    """One framework's child process (``command``), its replies on stdout and its stderr
    kept in a file for the note if it fails."""

    def __init__(self, command: list[str], env: dict, stderr_path: str):
        self.err = open(stderr_path, "w+")  # noqa: SIM115 -- closed by close()
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.note = ""

    def reply(self) -> dict | None:
        """The child's next reply, or None (then ``note`` says why) if it has none."""
        line = self.proc.stdout.readline()
        try:
            return json.loads(line)
        except ValueError:
            return self._failed()

    def ask(self, request: dict) -> dict | None:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:
            return self._failed()
        return self.reply()

    def _failed(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.err.seek(0)
        self.note = (last_line(self.err.read())
                     or f"child process exited with status {self.proc.returncode}")
        return None

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # (a child that died: a broken pipe)
                pipe.close()
        self.proc.wait()
        self.err.close()


def plan(seconds: float, steps: int) -> tuple[int, float, int]:
    """``(rounds, seconds, steps)`` of each burst for ``seconds`` and ``steps`` in all:
    :data:`ROUNDS` rounds (fewer when fewer steps are asked for)."""
    rounds = max(1, min(ROUNDS, steps))
    return rounds, seconds / rounds, math.ceil(steps / rounds)


def time_in_turns(children: list[Child], results: list[dict], seconds: float, steps: int,
                  after_round=None) -> None:
    """Time every child whose result has no note, in turns (:func:`plan`); fill each
    ``result``'s ``times`` (all bursts) and ``rounds`` (each burst's median, None where a
    child had no burst), then its last figures (``{"do": "finish"}``).  ``after_round()``
    is called after every round."""
    rounds, burst_s, burst_steps = plan(seconds, steps)
    live = [k for k, result in enumerate(results) if not result["note"]]
    for k in live:
        results[k]["rounds"] = [None] * rounds
    for r in range(rounds):
        for k in live[r % len(live):] + live[:r % len(live)] if live else []:
            time.sleep(SETTLE_S)
            reply = children[k].ask({"do": "time", "seconds": burst_s, "steps": burst_steps})
            if reply is None:
                results[k].update(note=children[k].note, times=[], rounds=None)
                continue
            results[k]["times"] += reply["times"]
            results[k]["rounds"][r] = statistics.median(reply["times"]) * 1e3
        live = [k for k in live if not results[k]["note"]]
        if after_round is not None:
            after_round()
    for k in live:
        reply = children[k].ask({"do": "finish"})
        if reply is None:
            results[k].update(note=children[k].note, times=[], rounds=None)
        else:
            results[k].update(reply)


def paired_ratios(rounds: list | None, peer_rounds: list | None) -> list[float]:
    """``rounds[r] / peer_rounds[r]`` (ms per step of two frameworks' bursts in round r) for
    every round that has both."""
    return [a / b for a, b in zip(rounds or [], peer_rounds or []) if a is not None and b]


def paired_ratio(rounds: list | None, peer_rounds: list | None) -> float | None:
    """The median of :func:`paired_ratios`, or None where no round has both."""
    pairs = paired_ratios(rounds, peer_rounds)
    return statistics.median(pairs) if pairs else None
