"""Imported models, measured: ResNet-50 (ONNX) import, compile and inference; ResNet-18
(torchvision, via gc.from_torch) training step; graphc against onnxruntime and PyTorch eager.

    python benchmarks/import_bench.py                  # both parts, about 3-4 minutes
    python benchmarks/import_bench.py --part onnx50    # or --part train18
    python benchmarks/import_bench.py --part train18 --size 224   # about 3 minutes

onnx50: the light zoo ResNet-50 shipped in the onnx wheel (``onnx/backend/test/data/light``)
with its constant weights (``ConstantOfShape``) replaced by random ones and its final
softmax dropped (logits out), as ``benchmarks/onnx_conformance.py random`` does.  Its
input has a fixed batch of 1; for batch 16 the batch is re-declared (input and output
dimension 0 made the symbolic ``N``, the ``Reshape`` before the classifier given ``-1`` for
its ``[1, 2048]``) and graphc imports it with ``dims={"N": 16}``, onnxruntime runs the same
re-declared model.  graphc (Numba backend)
is timed for ``gc.from_onnx`` (import), ``gc.compile`` cold (``GRAPHC_CACHE_DIR`` a fresh
empty folder) and warm (the same folder, a new process), the first call, and inference;
onnxruntime (CPUExecutionProvider) and a torchvision ``resnet50`` in eval mode under
``torch.no_grad`` (random weights) for inference only.  The batch-1 outputs of graphc and
onnxruntime on the same input are compared (same weights), as a check that both compute
the same thing.

train18: a torchvision ``resnet18(num_classes=10)`` in train mode (batch statistics),
input 16 x 3 x SIZE x SIZE (``--size``, default 64), cross-entropy, plain SGD (lr 0.01):
graphc imports it with ``gc.from_torch`` and compiles the whole step (forward, backward,
update) with ``gc.train.make_train_step`` on Numba (kernel cache: this run's folder, so
the compile is cold unless onnx50 already built the same kernels); PyTorch eager does
``zero_grad``, forward, ``cross_entropy``, ``backward``, ``SGD.step``.

Method: every framework runs in its own child process (as ``graphc bench``), started with
one thread everywhere (OMP, OpenBLAS, MKL, Numba; PyTorch also ``set_num_threads(1)``) and
without ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` in its environment; a child is killed
after 240 s.  Timed calls follow one untimed warm-up call; each figure is the median over
at least ``--reps`` calls and ``--seconds`` of timed work (fewer if ``--max-seconds`` of
timing runs out first; the table gives the count).

torchvision's wheel here is a CUDA build whose compiled ops do not load with the CPU
torch, so :func:`torchvision_models` imports the pure-Python model definitions without
``torchvision/__init__.py`` (docs/import.md, "torchvision's models").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from onnx_suite import randomized  # noqa: E402  (imports onnx and numpy only when called)

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")
DROP_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
CHILD_TIMEOUT = 240.0
TRAIN_BATCH, CLASSES, LR = 16, 10, 0.01


# ---------------------------------------------------------------------------------------
# Helpers (children)


def torchvision_models():
    """``torchvision.models`` without ``torchvision/__init__.py``'s op registration."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise RuntimeError("torchvision is not installed")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")


def light_model_path(name: str) -> str:
    import onnx
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")


def onnx_model(name: str, batch: int):
    """The light zoo model with random weights and without its final softmax
    (tests/onnx_suite.py's ``randomized``, as onnx_conformance.py uses it); for a batch
    other than 1, with the batch re-declared as the symbolic dimension ``N``."""
    from onnx import numpy_helper
    model = randomized(light_model_path(name))
    if batch != 1:
        for value in list(model.graph.input) + list(model.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "N"
        reshapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
        for i, t in enumerate(model.graph.initializer):
            if t.name in reshapes:
                shape = numpy_helper.to_array(t).copy()
                if shape[0] == 1:
                    shape[0] = -1
                    model.graph.initializer[i].CopyFrom(numpy_helper.from_array(shape, t.name))
        del model.graph.value_info[:]
    return model


def image_batch(batch: int, size: int = 224, seed: int = 1):
    import numpy as np
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def measure(call, reps: int, seconds: float, max_seconds: float) -> list[float]:
    """Seconds per call after one untimed warm-up call: at least ``reps`` calls and
    ``seconds`` of timed work, stopping early (after >= 1 call) past ``max_seconds``."""
    call()
    times: list[float] = []
    while len(times) < reps or sum(times) < seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if sum(times) >= max_seconds:
            break
    return times


def timed(args, call) -> dict:
    times = measure(call, args.reps, args.seconds, args.max_seconds)
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def set_torch_threads():
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


def blas_info() -> str:
    """The BLAS library NumPy uses, and its core type (threadpoolctl if available)."""
    try:
        from threadpoolctl import threadpool_info
        pools = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, "
                 f"{p.get('num_threads')} threads)" for p in threadpool_info()
                 if p.get("user_api") == "blas"]
        if pools:
            return "; ".join(pools)
    except ImportError:
        pass
    try:
        import numpy as np
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        text = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - information only
        return "unknown"
    try:  # OpenBLAS reports its kernel (core type) through openblas_get_config
        import ctypes
        import glob
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs",
                                      "libscipy_openblas*.so*"))
        for lib in libs:
            handle = ctypes.CDLL(lib)
            for prefix in ("scipy_openblas_get_config64_", "scipy_openblas_get_config",
                           "openblas_get_config64_", "openblas_get_config"):
                fn = getattr(handle, prefix, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    core = getattr(handle, prefix.replace("get_config", "get_corename"),
                                   None)
                    corename = ""
                    if core is not None:
                        core.restype = ctypes.c_char_p
                        corename = f", core {core().decode()}"
                    return f"{text}: {fn().decode().strip()}{corename}"
    except OSError:
        pass
    return text + " (threadpoolctl not installed)"


# ---------------------------------------------------------------------------------------
# Child tasks: each returns a JSON-able dict


def graphc_batches(args) -> dict:
    """graphc at the batches other than 1 (the re-declared model), warm cache."""
    import graphc as gc
    out = {}
    for batch in args.batches:
        if batch == 1:
            continue
        start = time.perf_counter()
        mb = gc.from_onnx(onnx_model(args.onnx_model, batch), dims={"N": batch})
        out[f"import_b{batch}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fb = gc.compile(mb.outputs, backend="numba")
        out[f"compile_b{batch}_s"] = time.perf_counter() - start
        (nb,) = [t.name for t in mb.inputs.values()]
        feeds = {nb: image_batch(batch), **mb.weights}
        out[f"b{batch}"] = timed(args, lambda fb=fb, feeds=feeds: fb(**feeds))
    return out


def graphc_onnx(args, with_cold_only: bool) -> dict:
    import numpy as np

    import graphc as gc
    out = {}
    model = onnx_model(args.onnx_model, 1)
    start = time.perf_counter()
    m = gc.from_onnx(model)
    out["import_s"] = time.perf_counter() - start
    start = time.perf_counter()
    f = gc.compile(m.outputs, backend="numba")
    out["compile_s"] = time.perf_counter() - start
    (name,) = [t.name for t in m.inputs.values()]
    x = image_batch(1)
    start = time.perf_counter()
    (y,) = f(**{name: x}, **m.weights)
    out["first_call_s"] = time.perf_counter() - start
    if with_cold_only:
        return out
    np.save(os.path.join(args.work, "graphc_b1.npy"), y)
    out["b1"] = timed(args, lambda: f(**{name: x}, **m.weights))
    return out


def ort_onnx(args) -> dict:
    import numpy as np
    import onnxruntime as ort
    out = {"version": ort.__version__}
    for batch in args.batches:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        start = time.perf_counter()
        session = ort.InferenceSession(onnx_model(args.onnx_model, batch).SerializeToString(),
                                       options, providers=["CPUExecutionProvider"])
        out[f"session_b{batch}_s"] = time.perf_counter() - start
        name = session.get_inputs()[0].name
        x = image_batch(batch)
        if batch == 1:
            (y,) = session.run(None, {name: x})
            np.save(os.path.join(args.work, "ort_b1.npy"), y)
        out[f"b{batch}"] = timed(args, lambda s=session, x=x, n=name: s.run(None, {n: x}))
    return out


def torch_resnet50(args) -> dict:
    torch = set_torch_threads()
    torch.manual_seed(0)
    net = getattr(torchvision_models(), args.torch_model)().eval()
    out = {"version": torch.__version__}
    for batch in args.batches:
        x = torch.from_numpy(image_batch(batch))

        def call(x=x):
            with torch.no_grad():
                return net(x)
        out[f"b{batch}"] = timed(args, call)
    return out


def train_data(size: int):
    import numpy as np
    rng = np.random.default_rng(2)
    x = rng.standard_normal((TRAIN_BATCH, 3, size, size)).astype(np.float32)
    y = rng.integers(0, CLASSES, TRAIN_BATCH).astype(np.int64)
    return x, y


def graphc_train(args) -> dict:
    torch = set_torch_threads()
    import graphc as gc
    torch.manual_seed(0)
    net = torchvision_models().resnet18(num_classes=CLASSES).train()
    x, y = train_data(args.size)
    out = {}
    start = time.perf_counter()
    m = gc.from_torch(net, (torch.from_numpy(x),))
    out["import_s"] = time.perf_counter() - start
    (xname,) = list(m.inputs)
    labels = gc.input("labels", (TRAIN_BATCH,), "int64")
    loss = gc.softmax_cross_entropy(m.outputs[0], labels)
    start = time.perf_counter()
    step = gc.train.make_train_step(loss, gc.optim.SGD(lr=LR), backend="numba",
                                    initial=m.weights)
    out["compile_s"] = time.perf_counter() - start
    batch = {xname: x, "labels": y}
    start = time.perf_counter()
    out["first_loss"] = float(step(batch)["loss"])
    out["first_call_s"] = time.perf_counter() - start
    out["params"] = len(m.params)
    out["step"] = timed(args, lambda: step(batch))
    return out


def torch_train(args) -> dict:
    torch = set_torch_threads()
    torch.manual_seed(0)
    net = torchvision_models().resnet18(num_classes=CLASSES).train()
    x, y = (torch.from_numpy(a) for a in train_data(args.size))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    first = []

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        first.append(float(loss))
    out = {"version": torch.__version__, "step": timed(args, step)}
    out["first_loss"] = first[0]
    return out


TASKS = {"graphc-cold": lambda a: graphc_onnx(a, True),
         "graphc-warm": lambda a: graphc_onnx(a, False), "graphc-batch": graphc_batches,
         "onnxruntime": ort_onnx, "torch-infer": torch_resnet50,
         "graphc-train": graphc_train, "torch-train": torch_train,
         "blas": lambda a: {"blas": blas_info()}}


# ---------------------------------------------------------------------------------------
# Parent


def child_env(cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update({k: "1" for k in THREAD_ENV})
    env["GRAPHC_CACHE_DIR"] = cache
    return env


def run_child(task: str, args, cache: str, quiet: bool = False) -> dict:
    result = os.path.join(args.work, f"{task}.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", task,
               "--work", args.work, "--reps", str(args.reps), "--seconds", repr(args.seconds),
               "--max-seconds", repr(args.max_seconds), "--size", str(args.size),
               "--batches", ",".join(map(str, args.batches)),
               "--onnx-model", args.onnx_model, "--torch-model", args.torch_model]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=child_env(cache), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {CHILD_TIMEOUT:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr or proc.stdout).splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}",
                "wall_s": wall}
    with open(result) as f:
        out = json.load(f)
    out["wall_s"] = wall
    if not quiet:
        print(f"  [{task}: {wall:.1f} s]", flush=True)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ms(r: dict | None, key: str, per: int = 1) -> str:
    if not r or key not in r:
        return "-"
    return f"{r[key]['median_s'] * 1e3 / per:.1f} (n={r[key]['n']})"


def secs(r: dict | None, key: str) -> str:
    return "-" if not r or key not in r else f"{r[key]:.2f}"


def report_onnx(args, res: dict) -> None:
    import numpy as np
    cold = res.get("graphc-cold", {})
    warm = {k: v for task in ("graphc-warm", "graphc-batch")
            for k, v in res.get(task, {}).items() if k != "error"}
    print(f"\n{args.onnx_model} (ONNX light zoo, random weights), 224 x 224, batch "
          f"{'/'.join(map(str, args.batches))}, one thread")
    for task in ("graphc-cold", "graphc-warm", "graphc-batch", "onnxruntime", "torch-infer"):
        if "error" in res.get(task, {}):
            print(f"  {task}: FAILED: {res[task]['error']}")
    print(f"  gc.from_onnx import: {secs(cold, 'import_s')} s (cold process), "
          f"{secs(warm, 'import_s')} s (warm process)")
    print(f"  gc.compile numba, batch 1: cold {secs(cold, 'compile_s')} s (empty kernel "
          f"cache) + first call {secs(cold, 'first_call_s')} s; warm "
          f"{secs(warm, 'compile_s')} s + first call {secs(warm, 'first_call_s')} s")
    for b in args.batches:
        if b != 1:
            print(f"  batch {b} (re-declared batch, dims={{'N': {b}}}): import "
                  f"{secs(warm, f'import_b{b}_s')} s, compile {secs(warm, f'compile_b{b}_s')} "
                  "s (same cache)")
    header = f"  {'ms per image (median, n calls)':<34}" + "".join(
        f"{'batch ' + str(b):>20}" for b in args.batches)
    print(header)
    for label, r in (("graphc numba", warm),
                     ("onnxruntime CPU", res.get("onnxruntime", {})),
                     ("torch eager (torchvision)", res.get("torch-infer", {}))):
        print(f"  {label:<34}" + "".join(f"{ms(r, f'b{b}', b):>20}" for b in args.batches))
    for ref_label, ref in (("onnxruntime", "onnxruntime"), ("torch eager", "torch-infer")):
        ratios = []
        for b in args.batches:
            g, o = warm.get(f"b{b}"), res.get(ref, {}).get(f"b{b}")
            ratios.append(f"{g['median_s'] / o['median_s']:.2f}" if g and o else "-")
        print(f"  {'graphc / ' + ref_label:<34}" + "".join(f"{x:>20}" for x in ratios))
    try:
        g = np.load(os.path.join(args.work, "graphc_b1.npy"))
        o = np.load(os.path.join(args.work, "ort_b1.npy"))
        print(f"  check: graphc vs onnxruntime batch-1 output, max |diff| / max |ort| = "
              f"{np.abs(g - o).max() / np.abs(o).max():.2g}")
    except OSError:
        pass


def report_train(args, res: dict) -> None:
    g, t = res.get("graphc-train", {}), res.get("torch-train", {})
    print(f"\nResNet-18 training step (torchvision, train mode), batch {TRAIN_BATCH} x 3 x "
          f"{args.size} x {args.size}, cross-entropy, SGD, one thread")
    for task, r in (("graphc-train", g), ("torch-train", t)):
        if "error" in r:
            print(f"  {task}: FAILED: {r['error']}")
    print(f"  graphc: gc.from_torch import {secs(g, 'import_s')} s, make_train_step (numba "
          f"compile) {secs(g, 'compile_s')} s, first step {secs(g, 'first_call_s')} s, "
          f"{g.get('params', '-')} params")
    print(f"  {'ms per step (median, n steps)':<34}")
    print(f"  {'graphc numba':<34}{ms(g, 'step'):>20}")
    print(f"  {'torch eager':<34}{ms(t, 'step'):>20}")
    if "step" in g and "step" in t:
        print(f"  {'graphc / torch eager':<34}"
              f"{g['step']['median_s'] / t['step']['median_s']:>20.2f}")
    if "first_loss" in g and "first_loss" in t:
        print(f"  first loss: graphc {g['first_loss']:.4f}, torch {t['first_loss']:.4f} "
              "(same weights and batch)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "onnx50", "train18"), default="all")
    p.add_argument("--batches", default="1,16", help="ResNet-50 batches (default 1,16)")
    p.add_argument("--size", type=int, default=64, help="ResNet-18 image size (default 64)")
    p.add_argument("--reps", type=int, default=5, help="at least this many timed calls")
    p.add_argument("--seconds", type=float, default=3.0, help="at least this much timing")
    p.add_argument("--max-seconds", type=float, default=45.0,
                   help="stop timing a figure past this (after >= 1 call)")
    p.add_argument("--onnx-model", default="resnet50", help=argparse.SUPPRESS)
    p.add_argument("--torch-model", default="resnet50", help=argparse.SUPPRESS)
    p.add_argument("--cache", help="kernel cache folder (default: a fresh temporary one)")
    p.add_argument("--child", choices=sorted(TASKS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in str(args.batches).split(",") if b]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        out = TASKS[args.child](args)
        with open(os.path.join(args.work, f"{args.child}.json"), "w") as f:
            json.dump(out, f)
        return 0
    t0 = time.perf_counter()
    args.work = tempfile.mkdtemp(prefix="graphc-import-bench-")
    cache = args.cache or os.path.join(args.work, "kernels")
    print(f"import_bench: {cpu_model()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}; load average {loadavg()}")
    print(f"  children: 1 thread ({', '.join(THREAD_ENV)}=1, torch.set_num_threads(1)), "
          f"without {', '.join(DROP_ENV)}; kernel cache {cache}"
          f"{' (given)' if args.cache else ' (fresh)'}")
    res: dict = {"blas": run_child("blas", args, cache, quiet=True)}
    print(f"  BLAS (in a child): {res['blas'].get('blas', res['blas'].get('error'))}",
          flush=True)
    try:
        if args.part in ("all", "onnx50"):
            for task in ("graphc-cold", "graphc-warm", "graphc-batch", "onnxruntime",
                         "torch-infer"):
                if task != "graphc-batch" or any(b != 1 for b in args.batches):
                    res[task] = run_child(task, args, cache)
            report_onnx(args, res)
        if args.part in ("all", "train18"):
            for task in ("graphc-train", "torch-train"):
                res[task] = run_child(task, args, cache)
            report_train(args, res)
    finally:
        print(f"\nload average at the end: {loadavg()}; {time.perf_counter() - t0:.0f} s "
              "in all")
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
