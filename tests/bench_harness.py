"""The benchmark harness as the tests load it: benchmarks/ (a folder of scripts, not a
package) on ``sys.path``, and benchmarks/run.py, the `graphc bench` driver, as
``bench_run`` (loaded once, under a name of its own)."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

_spec = importlib.util.spec_from_file_location("graphc_benchmarks_run",
                                               ROOT / "benchmarks" / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
