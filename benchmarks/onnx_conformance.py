"""ONNX conformance counts for gc.from_onnx, as onnxruntime and tinygrad report them:
passed / supported / total.

    python benchmarks/onnx_conformance.py nodes                    # numpy backend, ~35 s
    python benchmarks/onnx_conformance.py nodes --backend numba    # ~75 s of CPU, cold cache
    python benchmarks/onnx_conformance.py models --backend numba [--only vgg19,resnet50]
    python benchmarks/onnx_conformance.py random --backend numpy   # vs onnxruntime

nodes: every node test of ONNX's backend suite (the onnx wheel's case generators); a test
is *supported* when graphc imports every op of its model, and passes when graphc's outputs
match at the suite's tolerances.  Failures are checked against tests/onnx_excluded.txt.
On numba every elementwise op is a generated kernel, however small (as in the tests:
tests/onnx_suite.numba_kernels_only).
models: the light model zoo in the onnx wheel against its reference outputs (the suite's
dummy input, arange / size).  random: the same models with their constant weights
(ConstantOfShape) replaced by random ones, against onnxruntime (an oracle only).
"""

import argparse
import contextlib
import pathlib
import re
import sys
import time
import unittest
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from onnx_suite import (  # noqa: E402
    backend_test,
    excluded,
    light_models,
    node_ops,
    numba_kernels_only,
    randomized,
)

import graphc as gc  # noqa: E402
from graphc.importers.onnx_backend import GraphcBackend, GraphcNumbaBackend  # noqa: E402
from graphc.importers.onnx_ops import SUPPORTED  # noqa: E402


def nodes(backend) -> None:
    from onnx.backend.test.loader import load_model_tests
    warnings.simplefilter("ignore")
    t0, cpu0 = time.perf_counter(), time.process_time()
    cases = load_model_tests(kind="node")
    supported = [c for c in cases if node_ops(c) <= set(SUPPORTED)]
    suite = backend_test(backend, supported, "__main__")
    suite._exclude_patterns.clear()  # run the excluded ones too, to check the list
    suite.exclude("_cuda$")
    tests = unittest.TestSuite()
    for case in suite.test_cases.values():
        tests.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(case))
    with numba_kernels_only() if backend.backend == "numba" else contextlib.nullcontext():
        result = unittest.TextTestRunner(stream=open("/dev/null", "w"), verbosity=0).run(tests)
    failed = {t.id().rsplit(".", 1)[-1] for t, _ in result.failures + result.errors}
    patterns = list(excluded())
    unlisted = sorted(n for n in failed if not any(re.search(p, n) for p in patterns))
    passing_listed = sorted(p for p in patterns if not any(re.search(p, n) for n in failed))
    ran = len(supported)
    print(f"node tests ({backend.backend}): {ran - len(failed)} passed / {ran} supported / "
          f"{len(cases)} total ({time.perf_counter() - t0:.0f} s, "
          f"{time.process_time() - cpu0:.0f} s of CPU)")
    missing = sorted({op for c in cases for op in node_ops(c)} - set(SUPPORTED))
    print(f"ops in the suite that graphc does not import: {len(missing)}")
    if unlisted or passing_listed:
        print("failing but not in tests/onnx_excluded.txt:", unlisted)
        print("listed but passing:", passing_listed)
    if "--errors" in sys.argv:
        for t, tb in result.failures + result.errors:
            lines = [x for x in tb.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", x)]
            print(t.id().rsplit(".", 1)[-1], "|", (lines or tb.splitlines())[-1][:200])


def _feeds(m) -> dict:
    out = {}
    for t in m.inputs.values():
        n = int(np.prod(t.shape))
        out[t.name] = (np.arange(n).reshape(t.shape) / n).astype(np.float32)
    return out


def models(backend: str, only) -> None:
    import onnx
    from onnx import numpy_helper
    passed, paths = 0, {k: v for k, v in light_models().items() if not only or k in only}
    for name, path in paths.items():
        t0, cpu0 = time.perf_counter(), time.process_time()
        m = gc.from_onnx(path)
        t1 = time.perf_counter()
        f = gc.compile(m.outputs, backend=backend)
        t2 = time.perf_counter()
        (y,) = f(**_feeds(m), **m.weights)
        t3 = time.perf_counter()
        ref = numpy_helper.to_array(onnx.load_tensor(path[:-5] + "_output_0.pb"))
        ok = np.allclose(y, ref, rtol=2e-3 if name == "densenet121" else 1e-3, atol=1e-7)
        passed += ok
        print(f"{name:14s} {'ok  ' if ok else 'FAIL'} import {t1 - t0:5.2f} s  compile "
              f"{t2 - t1:5.2f} s  run {t3 - t2:5.2f} s  (CPU {time.process_time() - cpu0:5.1f} s)  "
              f"max |err| {np.abs(y - ref).max():.2g}")
    print(f"light models ({backend}): {passed} passed / {len(paths)} supported / "
          f"{len(light_models())} total")


def random_vs_onnxruntime(backend: str, only) -> None:
    import onnxruntime as ort
    rng = np.random.default_rng(1)
    passed, paths = 0, {k: v for k, v in light_models().items() if not only or k in only}
    for name, path in paths.items():
        model = randomized(path)
        m = gc.from_onnx(model)
        feeds = {k: rng.standard_normal(t.shape).astype(np.float32)
                 for k, t in m.inputs.items()}
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (ref,) = session.run(None, feeds)
        t0 = time.perf_counter()
        (y,) = gc.compile(m.outputs, backend=backend)(
            **{m.inputs[k].name: v for k, v in feeds.items()}, **m.weights)
        err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
        ok = err < 1e-3
        passed += ok
        print(f"{name:14s} {'ok  ' if ok else 'FAIL'} max |err| / max |ref| {err:.2g}  "
              f"({len(m.params)} params, {time.perf_counter() - t0:.1f} s)")
    print(f"random weights vs onnxruntime ({backend}): {passed} passed / {len(paths)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["nodes", "models", "random"])
    parser.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    parser.add_argument("--only", default="", help="comma-separated light model names")
    parser.add_argument("--errors", action="store_true", help="nodes: print each failure")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    if args.part == "nodes":
        nodes(GraphcNumbaBackend if args.backend == "numba" else GraphcBackend)
    elif args.part == "models":
        models(args.backend, only)
    else:
        random_vs_onnxruntime(args.backend, only)


if __name__ == "__main__":
    main()
