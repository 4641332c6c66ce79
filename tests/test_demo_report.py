"""The demo's report (issue 14): a validation split apart from the test split, curves drawn
by the bundled uPlot with axes, the layers view showing the model's layers, the diagrams
scaled to fit."""

import html
import json
import re

import numpy as np
import pytest

import graphc as gc
from graphc import data as datasets
from graphc import demo
from graphc.train import History


def test_validation_split_is_apart_from_the_test_split():
    images, labels = datasets.load_digits()
    ids = np.arange(len(images))
    (train, _), (val, _), (test, _) = demo._splits(ids, labels)
    assert (len(train), len(val), len(test)) == (1146, 202, 449)
    assert not set(train) & set(val) and not set(val) & set(test) and not set(train) & set(test)
    assert len(set(train) | set(val) | set(test)) == len(images)
    # the test split is the one every example reports on
    assert set(test) == set(datasets.train_test_split(ids)[1][0])


@pytest.fixture
def report_page(tmp_path):
    history = History()
    for k in range(3):
        history.append({"loss": 1.0 / (k + 1), "accuracy": 0.5 + 0.1 * k,
                        "val_loss": 1.2 / (k + 1), "val_accuracy": 0.45 + 0.1 * k})
    x = gc.input("x", (3,))
    loss = gc.sum(gc.tanh(x)).named("loss")
    files = {name: gc.render(loss, tmp_path / name, **kw) for name, kw in (
        ("forward.svg", {}), ("backward.svg", {"backward": True}), ("layers.svg", {}))}
    files["explorer.html"] = gc.explore(loss, tmp_path / "explorer.html",
                                        values={"x": np.array([0.5, -1.0, 2.0])})
    figures = {"accuracy": 0.9, "test_loss": 0.3, "epochs": 3, "split": (1146, 202, 449)}
    return demo.report_html("mlp", figures, history, "check_grad: ok", {"total": 1.0},
                            str(tmp_path), files)


def test_curves_come_from_uplot_with_train_and_validation(report_page):
    assert "uPlot" in report_page and "new uPlot(" in report_page  # the library, inline
    assert "<polyline" not in report_page  # no hand-drawn chart
    data = json.loads(re.search(r'<script type="application/json" id="curves">(.*?)</script>',
                                report_page, re.S).group(1))
    assert data["epoch"] == [1, 2, 3]
    assert data["val_loss"] == pytest.approx([1.2, 0.6, 0.4])
    assert set(data) == {"epoch", "loss", "val_loss", "accuracy", "val_accuracy"}
    assert 'id="loss-plot"' in report_page and 'id="accuracy-plot"' in report_page
    assert "202 validation digits" in report_page and "449 test digits" in report_page


def test_graphs_are_in_the_explorer_with_the_static_diagrams_linked(report_page):
    frame = re.search(r'<iframe class="explorer"[^>]*srcdoc="([^"]*)"', report_page).group(1)
    page = html.unescape(frame)
    assert page.startswith("<!DOCTYPE html>") and "window.graphc" in page
    assert '"name":"loss"' in page  # the graph's data, forward and backward
    for name in ("forward.svg", "backward.svg", "layers.svg", "explorer.html"):
        assert f'href="{name}"' in report_page
    # only the layers picture is inline, scaled to fit
    assert report_page.count("<svg") == 1 and 'viewBox="' in report_page
    assert ".figure svg{max-width:100%;height:auto" in report_page


@pytest.mark.slow
def test_demo_run_writes_the_report(tmp_path):
    lines = []
    result = demo.run(str(tmp_path), "mlp", epochs=2, out=lines.append)
    text = "\n".join(lines)
    assert "1146 train, 202 validation, 449 test" in text
    assert re.search(r"validation accuracy 0\.\d+; test accuracy 0\.\d+, test loss", text)
    layers = (tmp_path / "layers.svg").read_text()
    assert "fc1" in layers and "fc2" in layers and ">out<" in layers
    assert "equal" not in layers and "where" not in layers  # not the loss's bookkeeping
    assert "6,570 params" not in layers  # not the whole model as one box
    page = (tmp_path / "index.html").read_text()
    assert "new uPlot(" in page and result["report_ok"]
    assert '<iframe class="explorer"' in page and (tmp_path / "explorer.html").exists()
