"""Compile workers: processes that compile kernels beside the process that needs them
(:func:`graphc.kernel_cache.compile_missing`), and the queue they share with it.

A worker (:func:`start_worker`) is Python running :func:`graphc.numba_native.serve`
without ``graphc/__init__``: it loads Numba, says ``ready``, then compiles one kernel per
request (:func:`ask`) until its input ends.

Which kernel a compiler takes next (:meth:`Pool.take`): the one that costs it most (the
longest first, so that the last ones to finish are short), its cost being its source's
length and, for each separately compiled helper of :mod:`graphc.fastmath` it calls
(``exp_f32``, ``tanh_f32``, ``pairwise_sum`` ...) that this compiler has not compiled yet,
:data:`HELPER_SECONDS`: Numba types and lowers a helper again in every process that calls
it.  A kernel whose new helpers another compiler has compiled or is compiling is left to
that one while there is other work; a worker with nothing else to take ends rather than
compile those helpers again, unless what is left would keep their owner busy for longer
than that takes.  So kernels that share a helper gather in one process: W1's two kernels
that call ``exp_f32`` used to run in both workers, each compiling ``exp_f32``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections import deque

from .numba_codegen import KernelSpec
from .numba_native import NativeObject, job

# Measured in a worker (benchmarks/compile_time.py's W1 kernels, one process): log_softmax
# (622 characters) took 0.30 s when it was the first kernel to call exp_f32 and 0.06 s
# after another had; W1's other kernels 0.04-0.08 s for 368-735 characters.
HELPER_SECONDS = 0.2
SECONDS_PER_CHAR = 1e-4
# fastmath's names that Numba inlines where they are called: no compile of their own
_INLINED = frozenset({"maximum", "minimum"})

# A worker runs graphc's modules without graphc/__init__ (SymPy and the rest of the
# package): the package is an empty module whose path is this directory.  It blocks SciPy,
# which Numba imports for its own BLAS check (numba.np.arraymath, about 0.15 s at every
# start) and which no kernel needs: graphc's kernels never call BLAS inside Numba.
_WORKER = """
import os, sys, types
sys.modules["scipy"] = None
package = types.ModuleType("graphc")
package.__path__ = [sys.argv[1]]
sys.modules["graphc"] = package
replies = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from graphc.numba_native import serve
serve(sys.stdin.buffer, replies)
"""


def start_worker() -> subprocess.Popen:
    """A compile worker process (:func:`graphc.numba_native.serve`); it writes ``ready``
    once it has loaded Numba."""
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen([sys.executable, "-c", _WORKER, here], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def ask(proc: subprocess.Popen, spec: KernelSpec, path: str) -> NativeObject | None:
    """The object a ready worker compiles for ``spec`` from the source at ``path``; None if
    it could not compile it.  A worker that died or garbled its reply raises OSError."""
    proc.stdin.write(job(spec, path))
    proc.stdin.flush()
    try:
        reply = json.loads(proc.stdout.readline() or b"{}")
        if "error" in reply:
            return None
        code = proc.stdout.read(reply["size"])
        if reply["symbol"] != spec.symbol or len(code) != reply["size"]:
            raise ValueError("a short or another kernel's reply")
        return NativeObject(code, spec.symbol, tuple(reply["externals"]))
    except (ValueError, KeyError, TypeError) as err:
        raise OSError(f"compile worker failed: {err or 'no reply'}") from err


def helpers(source: str) -> frozenset:
    """The separately compiled :mod:`graphc.fastmath` functions a kernel's source calls."""
    found = re.search(r"^from graphc\.fastmath import (.+)$", source, re.M)
    return frozenset(found.group(1).split(", ")) - _INLINED if found else frozenset()


def compiled_here() -> set:
    """The fastmath functions this process has compiled already (none if it has not
    loaded them)."""
    fastmath = sys.modules.get("graphc.fastmath")
    return {name for name, f in vars(fastmath).items()
            if getattr(f, "overloads", None)} if fastmath else set()


class Pool:
    """Kernels to compile, taken by this process (:meth:`take`) and by worker processes
    (``started`` ones first, then new ones up to ``workers``; a thread each hands its
    worker one kernel at a time and collects the object)."""

    def __init__(self, jobs, workers: int, started=()):
        self.jobs = deque(jobs)  # (spec, source path)
        self.calls = {spec.key: helpers(spec.source) for spec, _ in self.jobs}
        self.owner: dict[str, object] = {}  # helper -> the compiler that compiles it
        self.objects: dict[str, NativeObject] = {}
        self.procs: list = []
        self.busy = threading.Condition()
        self.running = 0  # kernels in workers now
        self.live = 0  # workers started and not ended
        for k in range(max(workers, len(started))):
            with contextlib.suppress(OSError):  # no worker: this process does it all
                self.procs.append(started[k] if k < len(started) else start_worker())
                with self.busy:
                    self.live += 1
                threading.Thread(target=self.drive, args=(self.procs[-1],),
                                 daemon=True).start()

    def take(self, me="this process", have: set | None = None, last_resort=True):
        """The next (spec, source path) for compiler ``me``, which has compiled the helpers
        ``have`` (updated with the kernel's), or None when none is left.  Unless
        ``last_resort``, also None when every kernel left calls helpers another compiler
        compiles and would keep it busy for less time than compiling them here takes."""
        have = set() if have is None else have
        with self.busy:
            if not self.jobs:
                return None
            theirs = {h for h, who in self.owner.items() if who is not me}
            new = {spec.key: self.calls[spec.key] - have for spec, _ in self.jobs}
            cost = {key: HELPER_SECONDS * len(calls) for key, calls in new.items()}
            free = [j for j in self.jobs if not new[j[0].key] & theirs] or list(self.jobs)
            spec, path = pick = max(free, key=lambda j: cost[j[0].key] + len(j[0].source)
                                    * SECONDS_PER_CHAR)
            backlog = SECONDS_PER_CHAR * sum(len(s.source) for s, _ in self.jobs)
            if new[spec.key] & theirs and not last_resort and backlog < cost[spec.key]:
                return None
            self.jobs.remove(pick)
            for helper in new[spec.key]:
                self.owner.setdefault(helper, me)
            have |= self.calls[spec.key]
            return pick

    def drive(self, proc) -> None:
        """Once the worker is ready, hand it kernels until none is left for it.  A worker
        that dies compiles nothing more (what it did not return, load compiles)."""
        have: set = set()
        try:
            if proc.stdout.readline() != b"ready\n":
                return
            while True:
                with self.busy:
                    item = self.take(proc, have, last_resort=False)
                    if item is None:
                        return
                    self.running += 1
                spec, path = item
                try:
                    obj = ask(proc, spec, path)
                    if obj is not None:
                        self.objects[spec.key] = obj
                finally:
                    with self.busy:
                        self.running -= 1
                        self.busy.notify_all()
        except (OSError, ValueError):  # ValueError: finish() closed the pipes
            return
        finally:
            with self.busy:
                self.live -= 1
                self.owner = {h: who for h, who in self.owner.items() if who is not proc}
                self.busy.notify_all()

    def finish(self) -> None:
        """Wait for the kernels in workers, then end every worker (one still starting
        up is killed: it has nothing left to do)."""
        with self.busy:
            self.busy.wait_for(lambda: self.running == 0)
        end_workers(self.procs)


def end_workers(procs) -> None:
    """Kill the worker processes ``procs`` and close their pipes."""
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
