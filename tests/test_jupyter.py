"""graphc in Jupyter: importing it prints nothing, and graphs, tensors and diagrams display
as their diagram (scaled to the notebook's width) with their text form."""

import re
import subprocess
import sys
import textwrap

import pytest
from graphc.viz.render import html_svg

import graphc as gc


def render_module():
    """The module whose display function Graph calls now: graphc.viz.render (the attribute
    is its function). A doctest run imports viz/render.py a second time, as viz.render, and
    the last import's functions are the ones attached to Graph and Tensor."""
    return sys.modules[gc.Graph._repr_mimebundle_.__module__]


# A notebook kernel as tqdm.autonotebook detects it, without ipywidgets installed.
NOTEBOOK_WITHOUT_IPYWIDGETS = textwrap.dedent("""
    import sys, types, warnings
    class ZMQInteractiveShell:
        config = {"IPKernelApp": {}}
    sys.modules["ipykernel"] = types.ModuleType("ipykernel")
    sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    sys.modules["IPython"] = ipython
    sys.modules["ipywidgets"] = None
    warnings.simplefilter("always")
""")


@pytest.mark.slow
def test_import_and_progress_bar_in_a_notebook_without_ipywidgets_warn_nothing():
    code = NOTEBOOK_WITHOUT_IPYWIDGETS + textwrap.dedent("""
        import tqdm.autonotebook  # noqa: the check that this stub is a notebook for tqdm
    """)
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TqdmWarning" in probe.stderr  # the stub reproduces the red warning

    code = NOTEBOOK_WITHOUT_IPYWIDGETS + textwrap.dedent("""
        import numpy as np, graphc as gc, graphc.optim, graphc.train
        x = gc.input("x", (4, 2)); W = gc.param("W", (2, 1))
        step = gc.train.make_train_step(gc.mean(gc.square(x @ W)), gc.optim.SGD(lr=0.1),
                                        backend="numpy")
        gc.train.fit(step, {"x": np.ones((8, 2), np.float32)}, epochs=1, progress="bar")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "epoch 1/1" in result.stderr


def test_import_graphc_does_not_import_tqdm_or_networkx():
    code = "import sys, graphc; print(sorted({'tqdm', 'networkx'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "[]\n", result.stderr


def _model():
    x = gc.input("x", (2, 3))
    W = gc.param("W", (3, 1))
    return gc.sum(gc.tanh(x @ W).named("h"))


def test_graph_displays_its_diagram_and_text_form():
    g = gc.Graph(_model())
    bundle = g._repr_mimebundle_()
    assert bundle["text/plain"] == str(g) == gc.format_graph(g)
    page = bundle["text/html"]
    svg = re.search(r"<svg[^>]*>", page).group(0)
    assert 'style="max-width:100%;height:auto"' in svg and "viewBox=" in svg
    assert "<?xml" not in page and "<!DOCTYPE" not in page
    assert ">tanh<" in page or "tanh" in re.sub(r"<[^>]+>", " ", page)
    assert len(g) == 5 and "&lt;Graph: 5 nodes, 1 output(s)&gt;" in page
    assert "matmul = matmul(x, W)" in page  # the text form, below the diagram


def test_tensor_displays_the_graph_that_computes_it():
    loss = _model()
    bundle = loss._repr_mimebundle_()
    assert bundle["text/plain"] == repr(loss)
    assert "max-width:100%" in bundle["text/html"] and "matmul(x, W)" in bundle["text/html"]
    assert "Tensor(name=" in bundle["text/html"]


def test_big_graph_shows_its_text_form_only(monkeypatch):
    monkeypatch.setattr(render_module(), "MAX_DRAWN", 3)
    bundle = gc.Graph(_model())._repr_mimebundle_()
    assert "<svg" not in bundle["text/html"]
    assert "5 nodes: too many to draw here" in bundle["text/html"]


def test_wide_diagram_scales_to_the_notebook_width():
    """A chain of 12 ops, drawn left to right: Graphviz's size stays, the page scales it."""
    y = gc.input("x", (2,))
    for _ in range(12):
        y = gc.tanh(y)
    loss = gc.sum(y)
    diagram = gc.render(loss, direction="LR")
    width = float(re.search(r'<svg width="([0-9.]+)pt"', diagram.svg()).group(1))
    assert width > 1000
    bundle = diagram._repr_mimebundle_()
    assert bundle["image/svg+xml"] == diagram.svg()
    assert bundle["text/html"].startswith('<svg style="max-width:100%;height:auto" width=')
    assert 'viewBox="0.00 0.00 ' in bundle["text/html"]


def test_html_svg_keeps_everything_after_the_root_tag():
    assert html_svg('<?xml version="1.0"?>\n<svg width="9pt" viewBox="0 0 9 9"><g/></svg>') \
        == '<svg style="max-width:100%;height:auto" width="9pt" viewBox="0 0 9 9"><g/></svg>'


@pytest.mark.parametrize("make", [lambda: gc.Graph(_model()), _model])
def test_display_without_graphviz_falls_back_to_the_text_form(make, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    page = make()._repr_mimebundle_()["text/html"]
    assert "Graphviz&#x27;s `dot` program was not found" in page and "matmul(x, W)" in page
