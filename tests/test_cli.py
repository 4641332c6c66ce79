"""The command line and the README's promises: `graphc demo` runs, the test command in the
README is the one CI runs, user errors are one line."""

import pathlib
import re
import subprocess
import sys

from graphc import cli, demo

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_writes_the_promised_report(tmp_path):
    """graphc demo as a new user runs it: every promised file, the HTML references the
    SVGs, the printed accuracy meets its bar, the gradient check passes."""
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "graphc.cli", "demo", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
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


def test_demo_rejects_an_unknown_model():
    result = subprocess.run([sys.executable, "-m", "graphc.cli", "demo", "--model", "gpt"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_console_script_help_lists_demo():
    result = subprocess.run([sys.executable, "-m", "graphc.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "demo" in result.stdout and "--debug" in result.stdout


def test_user_error_is_one_line(monkeypatch, capsys):
    def broken(args):
        import graphc as gc
        gc.input("a", (2, 3)) @ gc.input("b", (4, 5))
    monkeypatch.setattr(cli, "_demo", broken)  # parser() reads _demo when main() runs
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "matmul: inner dimensions differ" in err


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("graphc demo")
    assert "apt-get install -y graphviz" in commands[0]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci
