"""gc.render with the real `dot`: the three gradient words on every backward edge, their
formulas and numbers, node styles, formats, Jupyter display, the check overlay, clusters."""

import html
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import gallery  # noqa: E402


def texts(svg: str) -> list[str]:
    """The text elements of an SVG, unescaped."""
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


@pytest.fixture(scope="module")
def micrograd_svg():
    loss, feeds = gallery.micrograd()
    return texts(gc.render(loss, backward=True, values=feeds).svg())


def test_every_backward_edge_has_the_three_labels(micrograd_svg):
    ups = [t for t in micrograd_svg if t.startswith("upstream ∂L/∂")]
    locals_ = [t for t in micrograd_svg if t.startswith("local ∂")]
    downs = [t for t in micrograd_svg if t.startswith("downstream ∂L/∂")]
    assert len(ups) == len(locals_) == len(downs) == 6  # six forward edges


def test_micrograd_formulas_and_numbers(micrograd_svg):
    for line in ("upstream ∂L/∂e = ∂d/∂e · ∂L/∂d = -2", "local ∂e/∂a = b = -3",
                 "downstream ∂L/∂a = ∂e/∂a · ∂L/∂e = 6", "local ∂e/∂b = a = 2",
                 "downstream ∂L/∂b = ∂e/∂b · ∂L/∂e = -4", "local ∂d/∂c = 1",
                 "downstream ∂L/∂c = ∂d/∂c · ∂L/∂d = -2", "upstream ∂L/∂L = 1",
                 "local ∂L/∂f = d = 4", "downstream ∂L/∂f = d · 1 = 4"):
        assert line in micrograd_svg, line


def test_local_formula_in_terms_of_the_output():
    loss, feeds = gallery.sigmoid_neuron()
    lines = texts(gc.render(loss, backward=True, values=feeds).svg())
    local = [t for t in lines if t.startswith("local ∂y/∂z")]
    assert local and local[0].startswith("local ∂y/∂z = y·(1 − y) = 0.2")


def test_softmax_edge_shows_its_jacobian():
    loss, feeds = gallery.softmax_cross_entropy()
    lines = texts(gc.render(loss, backward=True, values=feeds).svg())
    assert any(t.startswith("local ∂p/∂z = p_i (δ_ij − p_j)") for t in lines), lines


def test_a_matmul_edge_shows_the_numbers_of_its_local_derivative():
    # local ∂z/∂W = xᵀ: with values, the numbers of xᵀ (x transposed), in render and explore
    x, W = gc.input("x", (1, 2), "float64"), gc.param("W", (2, 3), dtype="float64")
    loss = gc.sum(x @ W)
    feeds = {"x": np.array([[0.5, -2.0]]), "W": np.arange(6.0).reshape(2, 3)}
    lines = texts(gc.render(loss, backward=True, values=feeds).svg())
    assert "local ∂matmul/∂W = xᵀ = [0.5, -2] (2×1)" in lines, lines
    assert "local ∂matmul/∂x = Wᵀ = [0, 3, 1, 4, 2, 5] (3×2)" in lines, lines
    page = gc.explore(loss, values=feeds).html()
    start = page.index("application/json\">") + len("application/json\">")
    data = json.loads(page[start:page.index("</script>", start)].replace("<\\/", "</"))
    (edge,) = [e for e in data["edges"] if e["local"] == "xᵀ"]
    assert edge["localValue"]["text"] == "[0.5, -2] (2×1)"


def test_an_op_box_shows_its_attributes_whole():
    # (shortened to 40 characters, max_pool2d's read "stride=(2 …")
    x, w = gc.input("x", (1, 2, 8, 8)), gc.param("w", (3, 2, 3, 3))
    y = gc.max_pool2d(gc.conv2d(x, w, padding=1), 2)
    source = gc.render(gc.sum(y)).source
    assert "max_pool2d(kernel=(2, 2), stride=(2, 2),\\n  padding=(0, 0))" in source, source
    assert "conv2d(stride=(1, 1), padding=(1, 1),\\n  dilation=(1, 1), groups=1)" in source


def test_symbolic_labels_without_values():
    loss, _ = gallery.micrograd()
    lines = texts(gc.render(loss, backward=True).svg())
    assert "local ∂e/∂a = b" in lines and "downstream ∂L/∂a = ∂e/∂a · ∂L/∂e" in lines


def test_number_formats():
    from graphc.viz.labels import number
    assert number(np.float64(3.14159265)) == "3.142"
    assert number(np.arange(8.0)) == "[0, 1, 2, 3, 4, 5, 6, 7]"
    assert number(np.arange(9.0)) == "mean 4, norm 14.28, min 0, max 8"
    assert number(np.array([-0.0, -1e-30 * 0])) == "[0, 0]" and number(-0.0) == "0"
    assert number(np.arange(9.0), 20) == "mean 4, …"  # whole fields, never half a number
    # a NaN made every field nan ("mean nan, norm nan, min nan, max nan"): say how many are
    # not finite, then the finite ones' range
    assert number(np.r_[np.arange(9.0), np.nan]) == "1 nan, finite: mean 4, min 0, max 8"
    assert number(np.r_[np.full(9, -np.inf), np.nan]) == "1 nan, 9 -inf"


def test_node_styles_and_parameter_counts():
    loss, feeds = gallery.mlp_l2()
    d = gc.render(loss, values=feeds)
    source = d.source
    assert "param W1" in source and "12 params" in source and "8 params" in source
    assert "input x" in source and "const " in source
    assert "peripheries=2" in source  # the output
    assert "#fef3c7" in source and "#dbeafe" in source  # params and inputs styled apart
    assert "cluster_" in source and "label=hidden" in source


def test_collapse_draws_each_scope_as_one_node():
    loss, feeds = gallery.mlp_l2()
    source = gc.render(loss, collapse=True).source
    assert "cluster_" not in source
    assert 'scope_hidden [label="hidden\\n12 params\\n2 ops"' in source, source
    assert 'scope_output [label="output\\n8 params\\n1 op"' in source, source


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".png", b"\x89PNG"),
                                           (".pdf", b"%PDF"), (".dot", b"digraph")])
def test_formats(tmp_path, suffix, magic):
    loss, feeds = gallery.micrograd()
    path = tmp_path / f"g{suffix}"
    gc.render(loss, path, backward=True, values=feeds)
    assert path.read_bytes().startswith(magic)


def test_unknown_format(tmp_path):
    loss, _ = gallery.micrograd()
    with pytest.raises(gc.RenderError, match=".svg"):
        gc.render(loss, tmp_path / "g.jpg")


def test_jupyter_display():
    loss, _ = gallery.micrograd()
    d = gc.render(loss)
    assert d._repr_svg_().lstrip().startswith("<?xml")
    assert "image/svg+xml" in d._repr_mimebundle_()


def test_missing_dot_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    loss, _ = gallery.micrograd()
    with pytest.raises(gc.RenderError, match="apt-get install graphviz"):
        gc.render(loss, tmp_path / "g.svg")


def test_a_layout_graphviz_cannot_finish_in_time_is_a_clear_error(monkeypatch, tmp_path):
    # dot ran for over 600 s on 100 scoped layers sharing one W, and gc.render with it
    from graphc.viz import layout
    monkeypatch.setattr(layout, "LAYOUT_SECONDS", 1e-4)
    loss, _ = gallery.micrograd()
    with pytest.raises(gc.RenderError, match=r"did not lay this diagram out in 0.0001 s; "
                                             r"draw less of it \(gc.render\(..., collapse"):
        gc.render(loss, tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()


def test_check_overlay_marks_the_wrong_derivative():
    wrong = gc.elementwise("t_viz_wrong_square", lambda x: x**2)
    wrong.__dict__["derivatives"] = (3 * wrong.args[0],)
    x = gc.input("x", (3,), "float64")
    h = wrong(gc.tanh(x)).named("h")
    loss = gc.sum(h * 2.0).named("L")
    feeds = {"x": np.array([0.3, -0.7, 1.1])}
    rep = gc.check_grad(loss, x, feeds)
    assert not rep.ok
    svg = gc.render(loss, backward=True, values=feeds, check=rep).svg()
    lines = texts(svg)
    assert "✗ this derivative fails gradient checking" in lines
    # the failing edge h -> tanh is drawn red, and so is the input whose gradient failed
    edge = svg[svg.index("local ∂h/∂"):]
    assert 'fill="#dc2626"' in svg[svg.rindex("<g id=", 0, svg.index("local ∂h/∂")):
                                    svg.index("local ∂h/∂")] or "#dc2626" in edge[:400]
    assert "#fecaca" in svg
    healthy = gc.render(loss, backward=True, values=feeds).svg()
    assert "fails gradient checking" not in healthy and "#fecaca" not in healthy


def test_backward_only_and_ir_views():
    loss, feeds = gallery.micrograd()
    only = texts(gc.render(loss, backward="backward", values=feeds).svg())
    assert "∂L/∂a" in only and "= 6" in only and "local ∂e/∂a = b = -3" in only
    ir = gc.render(loss, backward="ir", values=feeds).source
    assert "downstream of" in ir or "upstream of" in ir
    with pytest.raises(ValueError, match="backward must be"):
        gc.render(loss, backward="sideways")


def test_backward_needs_a_scalar_loss():
    x = gc.input("x", (3,))
    with pytest.raises(gc.GraphError, match="scalar"):
        gc.render(gc.exp(x), backward=True)


@pytest.mark.parametrize("draw", [gc.render, gc.explore])
def test_values_missing_or_unknown_feeds_are_feed_errors(draw):
    x, w = gc.input("x", (3,)), gc.param("w", (3,))
    loss = gc.sum(gc.tanh(x * w))
    one = np.ones(3, np.float32)
    with pytest.raises(gc.FeedError, match="values: missing feed.*'w'"):
        draw(loss, values={"x": one})
    with pytest.raises(gc.FeedError, match="values: unknown feed 'q'"):
        draw(loss, values={"x": one, "w": one, "q": one})


@pytest.mark.parametrize("call", [gc.render, gc.explore, gc.compile, gc.Graph])
@pytest.mark.parametrize("outputs", [3.0, None, [gc.constant(1.0), 2.0]])
def test_outputs_that_are_not_tensors_are_named(call, outputs):
    with pytest.raises(TypeError, match=r"graph outputs must be a graphc Tensor.*got "
                                        r"(a )?(float|NoneType)"):
        call(outputs)


def test_bad_wrt_check_and_paths_are_named(tmp_path):
    x, w = gc.input("x", (3,)), gc.param("w", (3,))
    loss = gc.sum(gc.tanh(x * w))
    for wrt in ("w", ["nope"], []):
        with pytest.raises(TypeError, match="wrt must"):
            gc.explore(loss, wrt=wrt)
        with pytest.raises(TypeError, match="wrt must"):
            gc.render(loss, backward=True, wrt=wrt)
    for draw in (gc.explore, gc.render):
        with pytest.raises(TypeError, match="check must be a gc.check_grad report, got int"):
            draw(loss, check=123)
    with pytest.raises(gc.RenderError, match=r"cannot write .*missing.*a\.html: No such"):
        gc.explore(loss, tmp_path / "missing" / "a.html")
    with pytest.raises(gc.RenderError, match=r"it is an HTML page"):
        gc.explore(loss, tmp_path / "a.svg")
    assert not list(tmp_path.iterdir())


def test_a_shared_scalar_constant_is_drawn_beside_each_user():
    """Interned, the 0.5 of every residual block is one node: drawn once it was wired across
    the whole picture; the explorer puts it in the scope that holds all its users."""
    h = gc.input("x", (2, 3))
    with gc.scope("net"):
        for i in range(3):
            with gc.scope(f"blk{i}"):
                h = gc.tanh(h @ gc.param(f"W{i}", (3, 3))) * 0.5 + h
    loss = gc.sum(h * h)
    source = gc.render(loss, backward=True, collapse=False).source
    copies = re.findall(r'(n\d+_n\d+) \[label="const 0.5', source)
    assert len(copies) == 3
    assert all(source.count(f"{c} -> ") == 1 for c in copies)
    assert "const 0.5" not in gc.render(loss, collapse=True).source  # not drawn collapsed
    from test_explore import page_data
    nodes = page_data(gc.explore(loss).html())["nodes"]
    assert [n["group"] for n in nodes if n["op"] == "constant"] == ["net"]


def test_long_labels_are_shortened():
    x = gc.input("x_with_a_rather_long_name", (3, 4, 5, 6))
    y = gc.transpose(x, (3, 2, 1, 0))
    source = gc.render(gc.sum(y * 1.5), values={"x_with_a_rather_long_name":
                                                np.ones((3, 4, 5, 6))}).source
    labels = re.findall(r'label="([^"]*)"', source)
    assert all(len(part) <= 90 for label in labels for part in label.split("\\n"))


def test_backslashes_in_names_are_drawn_as_they_are():
    r"""A name or scope holding a backslash (``a\lb\nc``) was read by dot as its escapes:
    the name drawn on three lines, left-aligned in part, in every view."""
    x = gc.input("x", (3,))
    with gc.scope("g\\rp"):
        h = gc.tanh(x).named("a\\lb\\nc")
    loss = gc.sum(h * h).named("loss")
    feeds = {"x": np.ones(3, np.float32)}
    for view in (False, True, "backward", "ir"):
        lines = texts(gc.render(loss, backward=view, values=feeds).svg())
        assert not {"a", "b", "c", "g", "rp"} & set(lines), view
        assert any("a\\lb\\nc" in line for line in lines), view
    lines = texts(gc.render(loss, backward=True, values=feeds).svg())
    assert "g\\rp" in lines and "local ∂a\\lb\\nc/∂x = 1 − a\\lb\\nc^2 = [0.4200, 0.4200, " \
        "0.4200]" in lines
    assert "g\\rp" in texts(gc.render(loss, collapse=True).svg())  # the collapsed layer


def test_cli_render(tmp_path):
    out = tmp_path / "mlp.svg"
    result = subprocess.run([sys.executable, "-m", "graphc.cli", "render",
                             "examples/mlp_check.py", "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    svg = out.read_text()
    assert "upstream" in svg and "local" in svg and "downstream" in svg


# -- legibility (issue 14): one naming scheme, formulas as people read them, layout ---------

@pytest.fixture(scope="module")
def demo_mlp():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from diagram_legibility import pictures
    return pictures("mlp")


def test_demo_mlp_backward_diagram_is_legible(demo_mlp):
    loss, _, feeds = demo_mlp
    svg = gc.render(loss, backward=True, values=feeds).svg()
    lines = texts(svg)
    assert not [t for t in lines if re.search(r"%\d", t)]  # no bare %N
    assert not [t for t in lines if "Piecewise" in t or "Ne(" in t or "Eq(" in t]
    assert any("= [" in t and " ≠ 0]" in t for t in lines), lines  # where's local, not Ne()
    assert not [t for t in lines if re.search(r"[\w.\-+]…|…[\w.\-+]", t)]  # none cut mid-token
    assert not [t for t in lines if re.search(r"(?<![\w.])-0(?![\w.])", t)]  # no "-0"
    assert any(t.startswith("local ∂fc1.relu/∂fc1.add = [fc1.relu > 0] = mean 0.42")
               for t in lines), lines
    assert "local ∂loss/∂sum_2 = 1/2 = 0.5" in lines  # the constant by its value
    assert "downstream ∂loss/∂sum_2 = 1/2 · 1 = 0.5" in lines  # not "∂loss/∂sum_2 = ∂loss/…"
    for t in lines:  # no label defines a gradient by itself
        m = re.match(r"(?:upstream|downstream) (∂\S+) = (.*)", t)
        assert not m or not re.search(re.escape(m.group(1)) + r"(?![\w.])", m.group(2)), t
    width = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
    assert width < 2500, width  # was 10,760 pt drawn left to right
    assert 'rankdir=TB' in gc.render(loss).source


def test_one_naming_scheme_in_printer_diagram_and_check(demo_mlp):
    loss, _, feeds = demo_mlp
    names = gc.graph.node_names(gc.Graph(loss))
    assert sorted(names.values()) == sorted(set(names.values()))  # unique
    assert {"fc1.matmul", "fc1.add", "fc1.relu", "out.add", "2", "loss"} <= set(names.values())
    assert names == gc.graph.node_names(gc.Graph(loss))  # stable
    text = gc.format_graph(loss)
    assert "fc1.relu = relu(fc1.add)" in text and "loss = div(sum_2, 2)" in text
    assert "%" not in text
    ir = gc.render(loss, backward="ir", values=feeds).source
    assert "%" not in ir and "local of fc1.relu" in ir and "∂fc1.relu/∂fc1.add" in ir


def test_piecewise_derivatives_read_as_conditions():
    x = gc.input("x", (3,), "float64")
    z = (x * 3.0).named("z")
    loss = gc.sum(gc.leaky_relu(z, 0.1).named("h") + gc.relu(z).named("r")).named("L")
    lines = texts(gc.render(loss, backward=True).svg())
    assert "local ∂r/∂z = [r > 0]" in lines
    assert "local ∂h/∂z = (1 if z > 0 else 0.1)" in lines


def test_gradcheck_names_nodes_as_the_diagram_does():
    wrong = gc.elementwise("t_viz_wrong_cube", lambda x: x**3)
    wrong.__dict__["derivatives"] = (2 * wrong.args[0] ** 2,)
    x = gc.input("x", (3,), "float64")
    with gc.scope("fc1"):
        h = wrong(gc.tanh(x * 2.0))
    rep = gc.check_grad(gc.sum(h), x, {"x": np.array([0.3, -0.7, 1.1])})
    assert "node 'fc1.t_viz_wrong_cube' with respect to operand 0 ('fc1.tanh')" in str(rep)


def test_direction_follows_the_shape_and_can_be_forced():
    loss, _ = gallery.micrograd()
    assert "rankdir=LR" in gc.render(loss).source  # shallow and wide
    assert "rankdir=TB" in gc.render(loss, direction="TB").source
    with pytest.raises(ValueError, match="direction"):
        gc.render(loss, direction="up")


def deep_scoped_chain(layers):
    h = gc.input("x", (2, 4))
    for i in range(layers):
        with gc.scope(f"layer{i}"):
            h = gc.tanh(h @ gc.param(f"W{i}", (4, 4)) + gc.param(f"b{i}", (4,)))
    return gc.sum(h)


def test_big_graphs_collapse_and_say_how_to_expand():
    big = gc.render(deep_scoped_chain(25)).source  # 126 nodes
    assert "scope_layer0" in big and "collapse=False" in big
    full = gc.render(deep_scoped_chain(25), collapse=False).source
    assert "scope_layer0" not in full and "collapse=False" not in full
    small = gc.render(deep_scoped_chain(3)).source
    assert "scope_layer0" not in small


def test_collapse_draws_the_layers_not_the_whole_model(demo_mlp):
    loss, logits, _ = demo_mlp
    source = gc.render(logits, collapse=True).source
    for layer, params in (("fc1", "4,160"), ("fc2", "2,080"), ("out", "330")):
        assert f'label="{layer}\\n{params} params' in source, source
    assert "6,570 params" not in source  # not the whole model as one box


def test_errors_name_nodes_as_the_diagrams_do():
    x = gc.input("x", (3,))
    with gc.scope("fc1"):
        mask = x > 0.0
    with pytest.raises(gc.GraphError, match="with respect to 'fc1.greater': it is bool"):
        gc.grad(gc.sum(x * gc.cast(mask, "float32")), mask)


def test_the_ir_view_draws_a_scan_and_its_reverse_scan():
    """backward="ir" of gc.nn.LSTM and of a plain scan: the reverse scan's residual outputs
    (its ("node", k) outputs) and the placeholders it does not read used to raise KeyError."""
    ys, _ = gc.nn.LSTM(3, 4, name="lstm")(gc.input("x", (2, 5, 3)))
    x, c0 = gc.input("x", (4, 3)), gc.input("c0", (3,))
    carry, _ = gc.scan(lambda c, xt: (gc.tanh(c * xt), c), c0, x)
    for loss in (gc.mean(ys), gc.sum(carry)):
        source = gc.render(loss, backward="ir").source
        assert "reverse scan over T=" in source and "stacked ×T=" in source


def test_a_dynamic_graph_draws_as_the_fixed_one_at_the_feeds_shapes():
    """With values, render and explore specialise a graph of dynamic dimensions to the
    feeds' shapes: the same names and local formulas (with numbers) as the fixed graph;
    without, nodes keep their scopes and no label defines itself."""
    def build(shape):
        x = gc.input("x", shape)
        with gc.scope("inner"):
            h = gc.relu(x @ gc.param("W", (3, 2)))
        return gc.mean(gc.log(gc.tanh(h) + 2.0))
    feeds = {"x": np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3),
             "W": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)}
    fixed, dynamic = build((5, 3)), build((None, 3))
    labels = [sorted(set(re.findall(r"local [^\\\n]*", gc.render(
        loss, backward=True, values=feeds).source))) for loss in (fixed, dynamic)]
    assert labels[0] == labels[1] and any("∂inner.matmul/∂x = Wᵀ = " in t for t in labels[1])
    page = gc.explore(dynamic, values=feeds).html()
    assert "inner.matmul" in page
    bare = gc.render(dynamic, backward=True).source
    assert "inner.relu" in bare and "∂mean/∂log = ∂mean/∂log" not in bare


def test_a_dynamic_graph_keeps_its_names_and_chain_rule_text():
    """y = mean(tanh(x)).named("y") of a (None, 3) x was drawn as div, its loss as L; an
    elementwise edge's downstream read "∂y/∂tanh · (1 - y**2)" (SymPy's text, and y the
    op's output symbol) where the fixed graph reads "∂tanh/∂x · ∂y/∂tanh"."""
    feeds = {"x": np.ones((4, 3), np.float32)}
    texts = []
    for shape in ((4, 3), (None, 3)):
        x = gc.input("x", shape)
        y = gc.mean(gc.tanh(x)).named("y")
        for values in (feeds, None):
            texts.append(re.findall(r"(?:downstream|upstream|local) [^\\\n]*",
                                    gc.render(y, backward=True, values=values).source))
        page = json.loads(re.search(r'application/json">(.*?)</script>',
                                    gc.explore(y, values=feeds).html(), re.S).group(1))
        assert page["lossName"] == "y" and "y" in {n["name"] for n in page["nodes"]}
        tanh_edge = [e for e in page["edges"] if "∂tanh/∂x" in e["down"]]
        assert tanh_edge and tanh_edge[0]["localMath"]
    assert texts[0] == texts[2] and "downstream ∂y/∂x = ∂tanh/∂x · ∂y/∂tanh" in texts[0]
    assert "downstream ∂y/∂x = ∂tanh/∂x · ∂y/∂tanh" in texts[3]
