"""The command line: `graphc demo` runs; a mistake in the user's model or command line is one
line naming the user's file:line (exit 1) or option (exit 2); an error inside graphc says so
(exit 3); `--debug` shows the traceback; `python -m graphc` is the same program."""

import pathlib
import re
import subprocess
import sys

import pytest

import graphc as gc
from graphc import cli, demo

ROOT = pathlib.Path(__file__).resolve().parent.parent


def graphc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_demo_writes_the_promised_report(tmp_path):
    """graphc demo as a new user runs it: every promised file, the HTML references the
    SVGs, the printed accuracy meets its bar, the gradient check passes."""
    out = tmp_path / "report"
    result = graphc("demo", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = result.stdout
    assert re.search(r"compiled the training step .* in [0-9.]+ s", text)
    assert "check_grad: ok" in text and "fc1_W" in text
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", text).group(1))
    assert accuracy >= demo.BARS["mlp"]
    assert f"wrote {out / 'index.html'}" in text
    for name in ("index.html", "forward.svg", "backward.svg", "layers.svg", "explorer.html"):
        assert (out / name).stat().st_size > 500, name
    page = (out / "index.html").read_text()
    for name in ("forward.svg", "backward.svg", "layers.svg", "explorer.html"):
        assert f'href="{name}"' in page
    assert "<svg" in page and "new uPlot(" in page and "window.graphc" in page
    assert "check_grad: ok" in page and "Timings" in page
    backward = (out / "backward.svg").read_text()
    assert "upstream" in backward and "local" in backward and "downstream" in backward


def test_demo_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--model", "gpt"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "invalid choice: 'gpt'" in err and err.count("\n") == 1


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--debug" in out and "--version" in out
    for command in ("demo", "check", "render", "compile", "bench"):
        assert f"    {command} " in out


def test_user_error_is_one_line(monkeypatch, capsys):  # raised in the test file: its line
    def broken(args):
        import graphc as gc
        gc.input("a", (2, 3)) @ gc.input("b", (4, 5))
    monkeypatch.setattr(cli, "_demo", broken)  # parser() reads _demo when main() runs
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "matmul: inner dimensions differ" in err


# -- mistakes in the user's model file: one line, the user's file:line, exit 1 -------------------
MODELS = {
    "value": ("import numpy as np\nimport graphc as gc\n\n\ndef build():\n"
              "    x = np.arange(12).reshape(5, 2)\n",
              6, "ValueError: cannot reshape array of size 12 into shape (5,2)"),
    "runtime": ("def build():\n    raise RuntimeError('no data here')\n",
                2, "RuntimeError: no data here"),
    "syntax": ("def build(:\n    pass\n", 1, "SyntaxError: invalid syntax"),
    "import": ("import graphc_no_such_module\n", 1,
               "ModuleNotFoundError: No module named 'graphc_no_such_module'"),
    "shape": ("import graphc as gc\n\n\ndef build():\n"
              "    return gc.input('a', (2, 3)) @ gc.input('b', (4, 5))\n",
              5, "matmul: inner dimensions differ (3 != 4)"),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_error_in_model_file_is_one_line_with_its_file_and_line(kind, tmp_path, capsys):
    source, line, message = MODELS[kind]
    model = tmp_path / f"{kind}.py"
    model.write_text(source)
    assert cli.main(["check", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"graphc check: error: {model}:{line}: ")
    assert message in err and err.endswith("(--debug shows the traceback)")


def test_debug_shows_the_traceback(tmp_path, capsys):
    model = tmp_path / "m.py"
    model.write_text(MODELS["runtime"][0])
    for argv in (["check", str(model), "--debug"], ["--debug", "check", str(model)]):
        with pytest.raises(RuntimeError, match="no data here"):  # Python prints it
            cli.main(argv)
    assert capsys.readouterr().err == ""


def test_graphc_error_raised_later_names_the_users_line(tmp_path, capsys):
    """A feed error found when graphc runs the check: the message, no traceback."""
    model = tmp_path / "feeds.py"
    model.write_text("import numpy as np\nimport graphc as gc\n\n\ndef build():\n"
                     "    x = gc.input('x', (3,), 'float64')\n"
                     "    return gc.sum(gc.exp(x)), x, {'x': np.ones(4)}\n")
    assert cli.main(["check", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"graphc check: error: {model}: feed 'x' has shape (4,), expected (3,) "
                   "(--debug shows the traceback)")


@pytest.mark.parametrize("command", ["check", "render", "explore"])
def test_errors_after_build_name_the_model_file(command, tmp_path, capsys):
    model = tmp_path / "nonscalar.py"
    model.write_text("import numpy as np\nimport graphc as gc\n\n\ndef build(n):\n"
                     "    x = gc.input('x', (3,), 'float64')\n"
                     "    return gc.exp(x), x, {'x': np.ones(3)}\n")
    assert cli.main([command, str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"graphc {command}: error: {model}: build() missing 1 required "
                          "positional argument: 'n'"), err
    model.write_text(model.read_text().replace("build(n)", "build()"))
    assert cli.main([command, str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"graphc {command}: error: {model}: "), err
    assert "scalar" in err, err
    assert cli.main([command, str(tmp_path)]) == 1
    assert f"{tmp_path} is not a file" in capsys.readouterr().err


def test_error_inside_graphc_says_so_and_how_to_report_it(monkeypatch, capsys):
    # A KeyError raised by graphc's own code (here cli._demo reading BARS) is graphc's bug.
    monkeypatch.setattr(demo, "run", lambda *a: {"accuracy": 1.0, "report_ok": True})
    monkeypatch.setattr(demo, "BARS", {})
    assert cli.main(["demo"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("graphc demo: internal error: KeyError: 'mlp' -- this is a bug in "
                          "graphc, not in your model; please report it")
    assert "graphc --debug demo" in err


# -- every numeric option is validated by the parser: one line, exit 2 ---------------------------
@pytest.mark.parametrize("args, message", [
    (["demo", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["demo", "--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
    (["demo", "--epochs", "2.5"], "argument --epochs: expected an integer, got '2.5'"),
    (["check", "m.py", "--eps", "0"], "argument --eps: must be > 0, got 0"),
    (["check", "m.py", "--eps", "-1"], "argument --eps: must be > 0, got -1"),
    (["check", "m.py", "--eps", "nan"], "argument --eps: must be > 0, got nan"),
    (["check", "m.py", "--rtol", "-0.5"], "argument --rtol: must be >= 0, got -0.5"),
    (["check", "m.py", "--atol", "inf"], "argument --atol: must be >= 0, got inf"),
    (["check", "m.py", "--seed", "-3"], "argument --seed: must be >= 0, got -3"),
    (["bench", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["bench", "--seconds", "-1"], "argument --seconds: must be >= 0, got -1"),
    (["render", "m.py", "-o", "m.jpg"],
     "argument -o/--output: 'm.jpg' must end in .svg .png .pdf .dot"),
    (["explore", "m.py", "-o", "m.svg"], "argument -o/--output: 'm.svg' must end in .html .htm"),
])
def test_numeric_options_are_validated_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    assert stop.value.code == 2
    command = args[0]
    assert capsys.readouterr().err == (f"graphc {command}: error: {message} "
                                       f"(see graphc {command} --help)\n")


def test_demo_rejects_zero_epochs_at_the_api_too():
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        demo.run(epochs=0)


@pytest.mark.parametrize("accuracy, report_ok, message", [
    (0.5, True, "graphc demo: the mlp reached test accuracy 0.5000 after 3 epochs, below its "
                "bar of 0.95; train longer (default --epochs 30)"),
    (0.99, False, "graphc demo: the mlp's gradient check failed (the table above names the "
                  "tensor); this is a bug in graphc, please report it"),
])
def test_demo_says_which_promise_it_missed(accuracy, report_ok, message, monkeypatch, capsys):
    monkeypatch.setattr(demo, "run", lambda out, model, epochs: {"accuracy": accuracy,
                                                                "report_ok": report_ok})
    assert cli.main(["demo", "--epochs", "3"]) == 1
    assert capsys.readouterr().err == message + "\n"


# -- render --------------------------------------------------------------------------------------
KINK = ("import numpy as np\nimport graphc as gc\n\n\ndef build():\n"
        "    z = gc.input('z', (3,), 'float64')\n"
        "    return gc.sum(gc.relu(z)), z, {'z': np.array([1.0, 0.0, -1.0])}\n")


def test_render_check_exits_like_check_when_the_check_fails(tmp_path, capsys):
    model = tmp_path / "kink.py"
    model.write_text(KINK)
    assert cli.main(["check", str(model)]) == 1
    out = tmp_path / "kink.dot"
    assert cli.main(["render", str(model), "--check", "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "check_grad: FAILED" in printed
    assert f"wrote {out}" in printed and out.stat().st_size > 0  # the picture shows why


def test_render_into_a_missing_folder_names_the_users_path(tmp_path, capsys):
    model = tmp_path / "kink.py"
    model.write_text(KINK)
    out = tmp_path / "no" / "such" / "x.dot"
    assert cli.main(["render", str(model), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"graphc render: error: cannot write {out}: No such file or directory "
                   "(--debug shows the traceback)\n")


@pytest.mark.parametrize("direction", ["TB", "LR"])
def test_render_direction_can_be_forced(tmp_path, direction):
    model = tmp_path / "kink.py"
    model.write_text(KINK)
    out = tmp_path / "kink.dot"
    assert cli.main(["render", str(model), "--direction", direction, "-o", str(out)]) == 0
    assert f"rankdir={direction}" in out.read_text()


def test_explore_check_exits_like_check_when_the_check_fails(tmp_path, capsys):
    model = tmp_path / "kink.py"
    model.write_text(KINK)
    out = tmp_path / "kink.html"
    assert cli.main(["explore", str(model), "--check", "-o", str(out)]) == 1
    assert "check_grad: FAILED" in capsys.readouterr().out
    assert "window.graphc" in out.read_text()


def test_a_model_file_imports_the_modules_beside_it(tmp_path, capsys):
    # as `python FILE.py` does: `graphc explore` failed with ModuleNotFoundError
    (tmp_path / "layers_for_test.py").write_text(
        "import graphc as gc\n"
        "def block(x):\n    return gc.tanh(x @ gc.param('W', (3, 2), dtype='float64'))\n")
    model = tmp_path / "uses_helper.py"
    model.write_text("import numpy as np\nimport graphc as gc\n"
                     "from layers_for_test import block\n"
                     "def build():\n    x = gc.input('x', (4, 3), 'float64')\n"
                     "    loss = gc.mean(gc.square(block(x)))\n"
                     "    return loss, x, {'x': np.ones((4, 3)), **gc.init_params(loss)}\n")
    out = tmp_path / "uses_helper.html"
    assert cli.main(["explore", str(model), "-o", str(out)]) == 0
    assert "window.graphc" in out.read_text()
    assert str(tmp_path) not in sys.path  # not left behind
    sys.modules.pop("layers_for_test", None)


# -- python -m graphc, --version -----------------------------------------------------------------
def test_python_m_graphc_and_version():
    result = graphc("--version")
    assert result.returncode == 0 and result.stdout == f"graphc {gc.__version__}\n"


def test_no_command_prints_the_help(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().out.startswith("usage: graphc [-h] [--version] [--debug]")


def test_version_is_the_installed_distributions():
    from importlib.metadata import version
    assert gc.__version__ == version("graphc")


def test_a_check_error_names_the_model_file_not_the_launcher(tmp_path):
    """An error of a call the command line makes (check_grad's missing feed) used to be
    located at the console script's line (bin/graphc:8)."""
    model = tmp_path / "missing.py"
    model.write_text("import graphc as gc\n"
                     "def build():\n"
                     "    x, W = gc.input('x', (2,)), gc.param('W', (2,))\n"
                     "    return gc.sum(x * W), [W], {'W': [1.0, 2.0]}\n")
    launcher = tmp_path / "graphc"  # what pip writes for the console script
    launcher.write_text("import re\nimport sys\nfrom graphc.cli import main\n"
                        "if __name__ == '__main__':\n    sys.exit(main())\n")
    out = subprocess.run([sys.executable, str(launcher), "check", str(model)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "missing.py: check_grad: missing feed(s) ['x']" in out.stderr
    assert str(launcher) not in out.stderr


@pytest.mark.parametrize("content, text", [(b"garbage\n", "is not an ONNX model"),
                                           (b"", "an ONNX model with no outputs")])
def test_a_corrupt_or_empty_onnx_file_is_a_users_error(tmp_path, content, text):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "graphc", "check", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and text in out.stderr and "internal error" not in out.stderr
