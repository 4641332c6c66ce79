"""Fine-tune the last layer of a torchvision ResNet-18, imported with gc.from_torch.

    python examples/resnet18_finetune.py

A ResNet-18 from torchvision (random initialisation: no weights are downloaded), in
evaluation mode, is imported through torch.export (``gc.from_torch``); graphc then trains
its last layer (``fc.weight``, ``fc.bias``) on the bundled 8x8 digits, upsampled to 32x32
(each pixel repeated 4 x 4, three channels), with Adam while the rest stays frozen: the
gradient graph reaches only the two trained parameters, the forward pass is the whole
network.  Finally it draws the loss's graph with its backward edges (upstream, local and
downstream gradient on each) w.r.t. every parameter, each residual block collapsed to one
box (``gc.render(..., backward=True, collapse=2)``: stem, layer1.0 ... layer4.1, fc).

Figure (this machine: 2 cores, NumPy backend): test accuracy 12.0 % (the random last
layer) -> 72.2 % after 25 steps of 64 images, training loss 2.319 -> 1.269; 22.9 s in all,
of which the import (torch.export and graphc's nodes) takes 5.5 s; four times that on a
machine busy with other jobs.

torchvision's wheel here is a CUDA build whose compiled ops do not load with the CPU
torch (``import torchvision`` fails on ``torchvision::nms``); :func:`torchvision_models`
imports the pure-Python model definitions without them.
"""

import importlib
import importlib.util
import os
import sys
import time
import types

# One BLAS thread, as the other examples: on a busy 2-core machine OpenBLAS's spinning
# workers make each convolution ten times slower.  Set before NumPy loads; yours wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402
from graphc import data  # noqa: E402

BATCH, SIZE, STEPS, LR = 64, 32, 25, 0.03


def torchvision_models():
    """``torchvision.models``, skipping ``torchvision/__init__.py`` (which loads the
    compiled ops that the model definitions do not need)."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise SystemExit("this example needs torchvision: pip install torchvision")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__, package.__file__ = spec, spec.origin
        sys.modules["torchvision"] = package
    return importlib.import_module("torchvision.models")


def upsample(images):
    """(N, 8, 8) in [0, 1] -> (N, 3, 32, 32) in [-1, 1]: each pixel repeated 4 x 4."""
    big = images.repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)
    return np.repeat(big[:, None] * 2.0 - 1.0, 3, axis=1).astype(np.float32)


def main(steps=STEPS, progress=True, seed=0, backend="numpy", diagram="resnet18_backward.svg"):
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    net = torchvision_models().resnet18(num_classes=10).eval()
    images, labels = data.load_digits()
    (x_train, y_train), (x_test, y_test) = data.train_test_split(upsample(images), labels)

    m = gc.from_torch(net, (torch.zeros(BATCH, 3, SIZE, SIZE),))
    imported = time.perf_counter()
    y = gc.input("labels", (BATCH,), "int64")
    logits = m.outputs[0]
    loss = gc.softmax_cross_entropy(logits, y)
    last = [m.params["fc.weight"], m.params["fc.bias"]]
    step = gc.train.make_train_step(loss, gc.optim.Adam(lr=LR), last, backend=backend,
                                    initial=m.weights)
    evaluate = gc.train.make_eval_step({"acc": gc.train.correct(logits, y)}, backend=backend)
    test = {"x": x_test, "labels": y_test}
    before = evaluate.evaluate(test, step)["acc"]

    rng = np.random.default_rng(seed)
    losses = []
    for k in range(steps):
        idx = rng.choice(len(x_train), BATCH, replace=False)
        losses.append(step({"x": x_train[idx], "labels": y_train[idx]})["loss"])
        if progress and (k % 5 == 0 or k == steps - 1):
            print(f"step {k + 1:3d}: loss {losses[-1]:.3f}")
    after = evaluate.evaluate(test, step)["acc"]

    svg = gc.render(loss, diagram, backward=True, collapse=2).path if diagram else None
    results = {"test_accuracy_before": before, "test_accuracy": after, "steps": steps,
               "first_loss": losses[0], "last_loss": losses[-1],
               "params": len(m.params), "nodes": len(gc.Graph(m.outputs)),
               "import_seconds": imported - start, "seconds": time.perf_counter() - start,
               "diagram": str(svg) if svg else None}
    print(f"ResNet-18 (torchvision, random init) imported: {results['params']} params, "
          f"{results['nodes']} nodes, {results['import_seconds']:.1f} s; last layer "
          f"fine-tuned {steps} steps: test accuracy {before:.1%} -> {after:.1%}, loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}; {results['seconds']:.1f} s in all"
          + (f"; backward graph by block: {svg}" if svg else ""))
    return results


if __name__ == "__main__":
    main()
