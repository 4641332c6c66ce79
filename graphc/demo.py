"""``graphc demo``: the main job, end to end, in under a minute with no network.

Builds a model for the bundled handwritten digits (an MLP by default, or a small CNN or an
LSTM over the image rows), compiles its training step (printing the compile time),
checks its gradients against finite differences (printing the ``check_grad`` table),
trains it with a progress bar (printing test accuracy), renders its forward and backward
graphs with values, and writes ``<out>/index.html``: a self-contained report with the
diagrams, the loss curve, the gradient-check table and the timings.
"""

from __future__ import annotations

import html
import os
import time

import numpy as np

from . import data as datasets
from . import functions as F
from . import nn, optim, train
from .gradcheck import check_grad
from .graph import Graph
from .inputs import input
from .viz import render

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
    return F.softmax_cross_entropy(logits, y).named("loss"), logits, x, y


def _accuracy(logits, y):
    hit = F.equal(F.cast(_argmax(logits), "int64"), y)
    return F.mean(F.cast(hit, "float32"))


def _argmax(logits):
    """Index of the row maximum, built from comparisons (first maximum on ties)."""
    n, c = logits.shape
    is_max = F.greater_equal(logits, F.max(logits, axis=1, keepdims=True))
    order = F.constant(np.arange(c, 0, -1, dtype=np.float32))  # earlier index, larger
    return c - F.max(F.where(is_max, order, 0.0), axis=1)


def run(out_dir: str = "graphc-demo", kind: str = "mlp", epochs: int | None = None,
        out=print) -> dict:
    """Run the demo; print with ``out``; return its figures (accuracy, timings, files)."""
    epochs = EPOCHS[kind] if epochs is None else epochs
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    images, labels = datasets.load_digits()
    images = images.reshape((len(images),) + _shape(kind, 1)[1:])
    (x_train, y_train), (x_test, y_test) = datasets.train_test_split(images, labels)
    model = build_model(kind)
    out(f"graphc demo: a {kind.upper()} on {len(images)} handwritten digits "
        f"({len(x_train)} train, {len(x_test)} test), bundled in graphc.data\n")

    batch = 64
    x = input("x", _shape(kind, batch))
    y = input("y", (batch,), "int64")
    loss = F.softmax_cross_entropy(model(x, training=True), y)
    t0 = time.perf_counter()
    step = train.make_train_step(loss, optim.Adam(lr=optim.cosine(1e-2, 1000, 1e-4)),
                                 model=model)
    compile_s = time.perf_counter() - t0
    out(f"compiled the training step ({len(step.fn.graph)} nodes: forward, backward, "
        f"Adam update) with the {step.fn.backend} backend in {compile_s:.2f} s")

    small_loss, small_logits, *_ = _graphs(model, kind, 4)
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

    eval_n = 449
    test_loss, test_logits, _, ye = _graphs(model, kind, eval_n)
    ev = train.make_eval_step({"loss": test_loss, "accuracy": _accuracy(test_logits, ye)})
    t0 = time.perf_counter()
    history = train.fit(step, {"x": x_train, "y": y_train}, epochs=epochs,
                        val_data={"x": x_test, "y": y_test}, eval_step=ev)
    train_s = time.perf_counter() - t0
    accuracy = history["val_accuracy"][-1]
    out(f"trained {history.epochs} epochs in {train_s:.1f} s: test accuracy "
        f"{accuracy:.4f}, test loss {history['val_loss'][-1]:.4f}")

    t0 = time.perf_counter()
    picture_feeds = {"x": x_test[:2], "y": y_test[:2], **step.values}
    pic_loss, *_ = _graphs(model, kind, 2)
    pic_inputs = {t.op.label for t in Graph(pic_loss).inputs}
    picture_feeds = {k: v for k, v in picture_feeds.items() if k in pic_inputs}
    files = {
        "forward.svg": render(pic_loss, os.path.join(out_dir, "forward.svg"),
                              values=picture_feeds),
        "backward.svg": render(pic_loss, os.path.join(out_dir, "backward.svg"),
                               backward=True, values=picture_feeds),
        "layers.svg": render(pic_loss, os.path.join(out_dir, "layers.svg"), collapse=True),
    }
    render_s = time.perf_counter() - t0
    with open(os.path.join(out_dir, "loss.svg"), "w", encoding="utf-8") as fh:
        fh.write(loss_curve(history))
    timings = {"compile (training step)": compile_s, "gradient check": check_s,
               "training": train_s, "rendering": render_s,
               "total": time.perf_counter() - start}
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as fh:
        fh.write(report_html(kind, accuracy, history, report, timings, out_dir,
                             [*files, "loss.svg"]))
    out(f"rendered forward and backward graphs in {render_s:.2f} s")
    out(f"\nwrote {index} (and {', '.join([*files, 'loss.svg'])} beside it) in "
        f"{timings['total']:.1f} s")
    return {"accuracy": accuracy, "timings": timings, "index": index, "report_ok": report.ok,
            "files": [os.path.join(out_dir, f) for f in [*files, "loss.svg", "index.html"]]}


def loss_curve(history, width=480, height=240) -> str:
    """The per-epoch training and test loss as a small standalone SVG line chart."""
    series = {k: history[k] for k in ("loss", "val_loss") if k in history}
    values = [v for s in series.values() for v in s]
    top, bottom = max(values), min(0.0, min(values))
    n = max(len(s) for s in series.values())
    pad = 36

    def point(i, v):
        px = pad + (width - 2 * pad) * (i / max(n - 1, 1))
        py = height - pad - (height - 2 * pad) * ((v - bottom) / ((top - bottom) or 1))
        return f"{px:.1f},{py:.1f}"

    colors = {"loss": "#2563eb", "val_loss": "#dc2626"}
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="Helvetica" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
             'stroke="#9ca3af"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#9ca3af"/>',
             f'<text x="{pad}" y="{pad - 8}">loss ({top:.3g} at the top)</text>',
             f'<text x="{width - pad}" y="{height - 10}" text-anchor="end">epoch {n}</text>']
    for k, (name, s) in enumerate(series.items()):
        pts = " ".join(point(i, v) for i, v in enumerate(s))
        lines.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" '
                     f'points="{pts}"/>')
        label = "train loss" if name == "loss" else "test loss"
        lines.append(f'<text x="{width - pad}" y="{pad + 14 * k}" text-anchor="end" '
                     f'fill="{colors[name]}">{label}: {s[-1]:.4f}</text>')
    lines.append("</svg>")
    return "\n".join(lines)


def report_html(kind, accuracy, history, report, timings, out_dir, svgs) -> str:
    """The self-contained report: SVGs inline (and linked), tables, timings."""
    def inline(name):
        with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
            text = fh.read()
        return text[text.index("<svg"):]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f} s</td></tr>"
                   for k, v in timings.items())
    sections = "".join(
        f'<h2>{title} <small><a href="{name}">{name}</a></small></h2>'
        f'<div class="figure">{inline(name)}</div>'
        for title, name in (("Loss curve", "loss.svg"), ("Layers", "layers.svg"),
                            ("Forward graph with values", "forward.svg"),
                            ("Backward graph: upstream, local and downstream gradients",
                             "backward.svg")) if name in svgs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graphc demo: {kind}</title>
<style>body{{font-family:Helvetica,Arial,sans-serif;margin:2em;max-width:1400px}}
.figure{{overflow-x:auto;border:1px solid #e5e7eb;padding:8px}}
pre{{background:#f9fafb;padding:1em;overflow-x:auto}}td{{padding:2px 12px}}</style>
</head><body>
<h1>graphc demo: {kind.upper()} on handwritten digits</h1>
<p>Test accuracy <b>{accuracy:.4f}</b> after {history.epochs} epochs
(test loss {history['val_loss'][-1]:.4f}).</p>
<h2>Timings</h2><table>{rows}</table>
<h2>Gradient check</h2><pre>{html.escape(str(report))}</pre>
{sections}
</body></html>
"""
