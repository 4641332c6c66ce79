"""ONNX conformance: ONNX's own backend test suite (``onnx.backend.test``) judges
``gc.from_onnx`` through graphc's ONNX backends, on the node tests of every supported op
(exclusions with their reasons in tests/onnx_excluded.txt) on the NumPy interpreter and on
Numba (every elementwise op a generated kernel: tests/onnx_suite.numba_kernels_only), plus
the light model zoo shipped in the onnx wheel against its reference outputs.  Counts over
the whole suite: ``python benchmarks/onnx_conformance.py``; docs/import.md."""

import contextlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx_suite import (  # noqa: E402
    backend_test,
    light_models,
    load_node_cases,
    numba_kernels_only,
    randomized,
)

import graphc as gc  # noqa: E402
from graphc.importers.onnx_backend import GraphcBackend, GraphcNumbaBackend  # noqa: E402

_cases = load_node_cases()
# one test per node test and backend: OnnxBackendNodeModelTest::test_abs_cpu (numpy),
# NumbaOnnxBackendNodeModelTest::test_abs_cpu (numba: slow, about 65 s of CPU in all with
# an empty kernel cache, up to 4 s for one test: the kernels of mish)
globals().update(backend_test(GraphcBackend, _cases, __name__).test_cases)
_numba = {f"Numba{name}": pytest.mark.slow(case) for name, case in
          backend_test(GraphcNumbaBackend, _cases, __name__).test_cases.items()}
globals().update(_numba)


@pytest.fixture(autouse=True)
def _numba_kernels(request):
    if request.cls in _numba.values():
        with numba_kernels_only():
            yield
    else:
        yield


def test_numba_node_tests_run_generated_kernels():
    """With the default thresholds a small Abs is the NumPy ufunc; the Numba node tests
    compile it as a generated kernel."""
    from onnx import TensorProto, helper
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "xy"]
    model = helper.make_model(helper.make_graph([helper.make_node("Abs", ["x"], ["y"])], "g",
                                                info[:1], info[1:]))
    lowered = []
    for context in (contextlib.nullcontext, numba_kernels_only):
        rep = GraphcNumbaBackend.prepare(model)
        with context():
            (y,) = rep.run([np.array([-1.5, 0.0, 2.0], np.float32)])
        np.testing.assert_array_equal(y, [1.5, 0.0, 2.0])
        ((_, f),) = rep.compiled.values()
        lowered.append(f.stats["lowered"])
    assert lowered == [{"folded": 0, "numpy": 1}, {"folded": 0, "kernel": 1}]


LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]  # the light zoo models the onnx wheel ships


def _light_run(name, backend):
    from onnx import numpy_helper
    path = light_models()[name]
    m = gc.from_onnx(path)
    feeds = {}
    for t in m.inputs.values():  # the suite's dummy input: arange / size
        n = int(np.prod(t.shape))
        feeds[t.name] = (np.arange(n).reshape(t.shape) / n).astype(np.float32)
    out = gc.compile(m.outputs, backend=backend)(**feeds, **m.weights)
    ref = numpy_helper.to_array(onnx.load_tensor(path[:-len(".onnx")] + "_output_0.pb"))
    rtol = 2e-3 if name == "densenet121" else 1e-3  # the suite's tolerances (data/real)
    np.testing.assert_allclose(out[0], ref, rtol=rtol, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_light_model_numpy(name):
    _light_run(name, "numpy")


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_light_model_numba(name):
    _light_run(name, "numba")


def _random_run(name, backend):
    """The light model with random weights (tests/onnx_suite.randomized: its shipped weights
    are one constant, which tests little arithmetic), logits against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = randomized(light_models()[name])
    m = gc.from_onnx(model)
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in m.inputs.items()}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, feeds)
    (out,) = gc.compile(m.outputs, backend=backend)(
        **{m.inputs[k].name: v for k, v in feeds.items()}, **m.weights)
    assert np.abs(ref).max() > 1e-3  # random weights: the logits are not all one constant
    assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_random_weights_match_onnxruntime_numpy(name):
    _random_run(name, "numpy")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_random_weights_match_onnxruntime_numba(name):
    _random_run(name, "numba")


def test_light_models_are_all_listed():
    assert sorted(light_models()) == LIGHT
