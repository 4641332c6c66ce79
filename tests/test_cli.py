"""The command line and the README's promises: `graphc demo` runs, the test command in the
README is the one CI runs, user errors are one line."""

import pathlib
import re
import subprocess
import sys

import numpy as np

from graphc import cli, demo

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_prints_graph_and_loss(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "graph(" in out and "matmul(x, W1)" in out and "log_softmax" in out
    loss = float(re.search(r"loss at initialisation: ([0-9.]+)", out).group(1))
    # Two balanced classes and small initial weights: the loss starts near ln 2.
    assert abs(loss - np.log(2)) < 0.1


def test_demo_loss_matches_a_numpy_forward_pass():
    x, labels = demo.two_spirals(64)
    loss, _ = demo.build_mlp(64)
    params = __import__("graphc").init_params(loss, seed=0)
    h1 = np.maximum(x @ params["W1"] + params["b1"], 0)
    h2 = np.maximum(h1 @ params["W2"] + params["b2"], 0)
    z = (h2 @ params["W3"] + params["b3"]).astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -logp[np.arange(64), labels].mean() + 1e-4 * 0.5 * sum(
        float((params[k].astype(np.float64) ** 2).sum()) for k in ("W1", "W2", "W3"))
    assert abs(demo.run(out=lambda *_: None) - expected) < 1e-5


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
