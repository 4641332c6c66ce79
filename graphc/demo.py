"""``graphc demo``: the main job, end to end, in under a minute with no network.

Builds a model for the bundled handwritten digits (an MLP by default, or a small CNN or an
LSTM over the image rows), compiles its training step (printing the compile time),
checks its gradients against finite differences (printing the ``check_grad`` table),
trains it with a progress bar on a training split, watching a separate validation split,
then prints its accuracy on the held-out test split; renders its forward and backward
graphs with values, and writes ``<out>/index.html``: a self-contained report with the
forward and backward graphs in the interactive explorer (``gc.explore``; the static
diagrams are written beside it), the layers, the loss and accuracy curves (uPlot,
bundled), the gradient-check table and the timings.
"""

from __future__ import annotations

import html
import json
import os
import time
from importlib import resources

import numpy as np

from . import data as datasets
from . import functions as F
from . import losses, nn, optim, train
from .gradcheck import check_grad
from .graph import Graph
from .inputs import input
from .viz import render
from .viz.explore import explore

MODELS = ("mlp", "cnn", "lstm")
BARS = {"mlp": 0.95, "cnn": 0.95, "lstm": 0.90}  # test accuracy the demo promises
EPOCHS = {"mlp": 30, "cnn": 15, "lstm": 30}


def build_model(kind: str) -> nn.Module:
    """The demo's model for 8x8 digits."""
    if kind == "mlp":
        return nn.Sequential(nn.Dense(64, 64, activation="relu", name="fc1"),
                             nn.Dense(64, 32, activation="relu", name="fc2"),
                             nn.Dense(32, 10, name="out"), name="mlp")
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, activation="relu", name="conv1"),
                             nn.MaxPool2d(2, name="pool1"),
                             nn.Conv2d(8, 16, 3, padding=1, activation="relu", name="conv2"),
                             nn.MaxPool2d(2, name="pool2"), nn.Flatten(name="flat"),
                             nn.Dense(64, 10, name="out"), name="cnn")
    if kind == "lstm":
        return nn.Sequential(nn.LSTM(8, 48, returns="last", name="lstm"),
                             nn.Dense(48, 10, name="out"), name="rnn")
    raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODELS)}")


def _shape(kind: str, batch: int) -> tuple[int, ...]:
    return {"mlp": (batch, 64), "cnn": (batch, 1, 8, 8), "lstm": (batch, 8, 8)}[kind]


def _graphs(model, kind: str, batch: int):
    """(loss, logits, x, y) of the model on a batch of ``batch`` digits."""
    x = input("x", _shape(kind, batch))
    y = input("y", (batch,), "int64")
    logits = model(x)
    return losses.softmax_cross_entropy(logits, y).named("loss"), logits, x, y


def _splits(images, labels):
    """Train, validation (watched while training) and test (reported once, at the end)."""
    (x_rest, y_rest), test = datasets.train_test_split(images, labels)
    train_split, val = datasets.train_test_split(x_rest, y_rest, test_fraction=0.15, seed=1)
    return train_split, val, test


def run(out_dir: str = "graphc-demo", kind: str = "mlp", epochs: int | None = None,
        out=print) -> dict:
    """Run the demo; print with ``out``; return its figures (accuracy, timings, files)."""
    epochs = EPOCHS[kind] if epochs is None else epochs
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    start = time.perf_counter()
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--out {out_dir} is a file; the demo writes a folder of pages")
    os.makedirs(out_dir, exist_ok=True)
    images, labels = datasets.load_digits()
    images = images.reshape((len(images),) + _shape(kind, 1)[1:])
    splits = _splits(images, labels)
    (x_train, y_train), (x_val, _), (x_test, y_test) = splits
    model = build_model(kind)
    out(f"graphc demo: a {kind.upper()} on {len(images)} handwritten digits "
        f"({len(x_train)} train, {len(x_val)} validation, {len(x_test)} test), bundled in "
        f"graphc.data\n")
    step, compile_s = _compile_step(model, kind, out)
    report, check_s = _check_gradients(model, kind, step, y_train, out)
    history, test, train_s = _train_and_test(model, kind, step, splits, epochs, out)
    files, render_s = _pictures(model, kind, step, x_test, y_test, out_dir)
    timings = {"compile (training step)": compile_s, "gradient check": check_s,
               "training": train_s, "rendering": render_s,
               "total": time.perf_counter() - start}
    index = os.path.join(out_dir, "index.html")
    figures = {"accuracy": test["accuracy"], "test_loss": test["loss"],
               "epochs": history.epochs, "split": (len(x_train), len(x_val), len(x_test))}
    with open(index, "w", encoding="utf-8") as fh:
        fh.write(report_html(kind, figures, history, report, timings, out_dir, files))
    out(f"rendered forward and backward graphs (explorer and static) in {render_s:.2f} s")
    out(f"\nwrote {index} (and {', '.join(files)} beside it) in "
        f"{timings['total']:.1f} s")
    return {"accuracy": test["accuracy"], "timings": timings, "index": index,
            "report_ok": report.ok,
            "files": [os.path.join(out_dir, f) for f in [*files, "index.html"]]}


def _compile_step(model, kind: str, out):
    """The training step (forward, backward, Adam update) on batches of 64, and its compile
    time."""
    batch = 64
    x = input("x", _shape(kind, batch))
    y = input("y", (batch,), "int64")
    logits = model(x, training=True)
    loss = losses.softmax_cross_entropy(logits, y)
    t0 = time.perf_counter()
    step = train.make_train_step(loss, optim.Adam(lr=optim.cosine(1e-2, 1000, 1e-4)),
                                 metrics={"accuracy": F.mean(train.correct(logits, y))},
                                 model=model)
    compile_s = time.perf_counter() - t0
    out(f"compiled the training step ({len(step.fn.graph)} nodes: forward, backward, "
        f"Adam update) with the {step.fn.backend} backend in {compile_s:.2f} s")
    return step, compile_s


def _check_gradients(model, kind: str, step, y_train, out):
    """``check_grad`` of every parameter on 4 random inputs, and its time."""
    small_loss, *_ = _graphs(model, kind, 4)
    # Random inputs and biases: blank pixels and zero biases put ReLUs exactly on their
    # kink and max-pool windows in ties, where finite differences are meaningless.
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=_shape(kind, 4)), "y": y_train[:4],
             **{k: v + rng.normal(0, 0.1, v.shape) if k.endswith("_b") else v
                for k, v in step.values.items()}}
    feeds = {k: v for k, v in feeds.items() if k in {t.op.label for t in
                                                      Graph(small_loss).inputs}}
    t0 = time.perf_counter()
    report = check_grad(small_loss, [t for t in Graph(small_loss).params], feeds,
                        max_elements=16)
    check_s = time.perf_counter() - t0
    out(f"\ngradient check of every parameter against central differences, on 4 random "
        f"inputs ({check_s:.2f} s):\n{report}\n")
    return report, check_s


def _train_and_test(model, kind: str, step, splits, epochs: int, out):
    """Train on the training split watching the validation split; evaluate on the test split.
    Returns (history, test figures, training time)."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    eval_loss, eval_logits, _, ye = _graphs(model, kind, len(x_val))
    ev = train.make_eval_step({"loss": eval_loss, "accuracy": train.correct(eval_logits, ye)})
    t0 = time.perf_counter()
    history = train.fit(step, {"x": x_train, "y": y_train}, epochs=epochs,
                        val_data={"x": x_val, "y": y_val}, eval_step=ev)
    train_s = time.perf_counter() - t0
    test = ev.evaluate({"x": x_test, "y": y_test}, step)
    out(f"trained {history.epochs} epoch{'s' * (history.epochs != 1)} in {train_s:.1f} s: "
        f"validation accuracy {history['val_accuracy'][-1]:.4f}; test accuracy "
        f"{test['accuracy']:.4f}, test loss {test['loss']:.4f}")
    return history, test, train_s


def _pictures(model, kind: str, step, x_test, y_test, out_dir: str):
    """The forward, backward and layer diagrams and the explorer of two test digits, written
    in ``out_dir``; returns ({file name: what render/explore returned}, rendering time)."""
    t0 = time.perf_counter()
    picture_feeds = {"x": x_test[:2], "y": y_test[:2], **step.values}
    pic_loss, pic_logits, *_ = _graphs(model, kind, 2)
    pic_inputs = {t.op.label for t in Graph(pic_loss).inputs}
    picture_feeds = {k: v for k, v in picture_feeds.items() if k in pic_inputs}
    files = {
        "forward.svg": render(pic_loss, os.path.join(out_dir, "forward.svg"),
                              values=picture_feeds),
        "backward.svg": render(pic_loss, os.path.join(out_dir, "backward.svg"),
                               backward=True, values=picture_feeds),
        # the model's layers, without the loss's bookkeeping
        "layers.svg": render(pic_logits, os.path.join(out_dir, "layers.svg"), collapse=True),
        "explorer.html": explore(pic_loss, os.path.join(out_dir, "explorer.html"),
                                 values=picture_feeds),
    }
    return files, time.perf_counter() - t0


def curves(history) -> dict:
    """The per-epoch series the report plots: ``{"epoch": [...], "loss": [...], ...}``."""
    keys = [k for k in ("loss", "val_loss", "accuracy", "val_accuracy") if k in history]
    return {"epoch": list(range(1, history.epochs + 1)),
            **{k: [float(v) for v in history[k]] for k in keys}}


def _asset(name: str) -> str:
    return resources.files("graphc.viz").joinpath("assets", name).read_text(encoding="utf-8")


_PLOTS = """
const D = JSON.parse(document.getElementById("curves").textContent);
const W = Math.min(560, document.body.clientWidth - 40);
function plot(title, keys, labels, el) {
  const colors = ["#2563eb", "#dc2626"];
  const series = [{label: "epoch"}].concat(keys.filter(k => k in D).map((k, i) => ({
    label: labels[i], stroke: colors[i], width: 2,
    value: (u, v) => v == null ? "-" : v.toFixed(4)})));
  const data = [D.epoch].concat(keys.filter(k => k in D).map(k => D[k]));
  new uPlot({title: title, width: W, height: 260, series: series,
             scales: {x: {time: false}},
             axes: [{label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100]},
                    {label: title}]}, data, el);
}
plot("loss", ["loss", "val_loss"], ["train", "validation"],
     document.getElementById("loss-plot"));
plot("accuracy", ["accuracy", "val_accuracy"], ["train", "validation"],
     document.getElementById("accuracy-plot"));
"""

_STYLE = """body{font-family:Helvetica,Arial,sans-serif;margin:2em;max-width:1400px}
.figure{border:1px solid #e5e7eb;padding:8px;overflow:auto;max-height:90vh}
.figure svg{max-width:100%;height:auto;cursor:zoom-in}
.figure.full svg{max-width:none;cursor:zoom-out}
.plots{display:flex;flex-wrap:wrap;gap:24px}
iframe.explorer{width:100%;height:80vh;border:1px solid #d1d5db}
pre{background:#f9fafb;padding:1em;overflow-x:auto}td{padding:2px 12px}
small{font-weight:normal;color:#6b7280}"""


def _inline_svg(out_dir: str, name: str) -> str:
    with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
        text = fh.read()
    return text[text.index("<svg"):]


def report_html(kind, figures, history, report, timings, out_dir, files) -> str:
    """The self-contained report: curves drawn by the bundled uPlot, the layers picture,
    the forward and backward graphs in the explorer (``files["explorer.html"]``, a
    ``gc.Explorer``) with the static diagrams linked, the gradient check, the timings."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f} s</td></tr>"
                   for k, v in timings.items())
    sections = ""
    if "layers.svg" in files:
        sections += ('<h2>Layers <small><a href="layers.svg">layers.svg</a> · click the '
                     'picture to zoom</small></h2><div class="figure" '
                     'onclick="this.classList.toggle(\'full\')">'
                     f'{_inline_svg(out_dir, "layers.svg")}</div>')
    if "explorer.html" in files:
        static = " · ".join(f'<a href="{n}">{n}</a>' for n in ("forward.svg", "backward.svg")
                            if n in files)
        sections += (
            "<h2>Forward and backward graphs <small>explorer: click a node or an edge for its "
            "value, gradient and upstream, local and downstream formulas; expand a layer; "
            f'step through the passes · <a href="explorer.html">full window</a> · static '
            f"diagrams: {static}</small></h2>"
            f'<iframe class="explorer" title="graph explorer" sandbox="allow-scripts" '
            f'srcdoc="{html.escape(files["explorer.html"].html(), quote=True)}"></iframe>')
    n_train, n_val, n_test = figures["split"]
    data = json.dumps(curves(history)).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graphc demo: {kind}</title>
<style>{_asset("uPlot-1.6.32.min.css")}
{_STYLE}</style>
</head><body>
<h1>graphc demo: {kind.upper()} on handwritten digits</h1>
<p>Test accuracy <b>{figures["accuracy"]:.4f}</b> (test loss {figures["test_loss"]:.4f}) after
{figures["epochs"]} epochs on {n_train} training digits; {n_val} validation digits were
watched while training, the {n_test} test digits only once, at the end.</p>
<h2>Training curves</h2>
<div class="plots"><div id="loss-plot"></div><div id="accuracy-plot"></div></div>
<script type="application/json" id="curves">{data}</script>
<script>{_asset("uPlot-1.6.32.iife.min.js")}</script>
<script>{_PLOTS}</script>
<h2>Timings</h2><table>{rows}</table>
<h2>Gradient check</h2><pre>{html.escape(str(report))}</pre>
{sections}
<p><small>Curves drawn with uPlot 1.6.32 (MIT licence, bundled).</small></p>
</body></html>
"""
