"""The ``graphc`` command line.

Exit status: 0 success; 1 a failed check or an error in the user's model or input (one line
naming the user's ``file:line``); 2 a usage error (one line); 3 an error inside graphc (one
line saying so and how to report it).  ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback

from . import __version__
from .errors import BackendError, FeedError, GraphError, RenderError

# Exceptions graphc raises on purpose, with a message written for the user.
USER_ERRORS = (GraphError, FeedError, BackendError, RenderError, OSError)
INTERNAL = 3


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, with where to read more (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low, strict):
    """An argparse type: ``kind`` (int or float) > ``low`` (``strict``) or >= ``low``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            wanted = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, "
                                             f"got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT, NONNEGATIVE_INT = _number(int, 1, False), _number(int, 0, False)
POSITIVE, NONNEGATIVE = _number(float, 0, True), _number(float, 0, False)


# -- commands --------------------------------------------------------------------------------
def _demo(args) -> int:
    from .demo import BARS, EPOCHS, run
    result = run(args.out, args.model, args.epochs)
    epochs = args.epochs or EPOCHS[args.model]
    if not result["report_ok"]:
        print(f"graphc demo: the {args.model}'s gradient check failed (the table above names "
              f"the tensor); this is a bug in graphc, please report it", file=sys.stderr)
        return 1
    if result["accuracy"] < BARS[args.model]:
        print(f"graphc demo: the {args.model} reached test accuracy {result['accuracy']:.4f} "
              f"after {epochs} epoch{'s' * (epochs != 1)}, below its bar of {BARS[args.model]}"
              + (f"; train longer (default --epochs {EPOCHS[args.model]})"
                 if epochs < EPOCHS[args.model] else ""), file=sys.stderr)
        return 1
    return 0


def load_model(path: str):
    """Run a model file and call its ``build()``; returns what ``build()`` returns."""
    import runpy
    if not os.path.isfile(path):
        raise OSError(f"{path} is not a file" if os.path.exists(path) else
                      f"no such model file: {path}")
    folder = os.path.dirname(os.path.abspath(path))  # its own modules import, as with
    sys.path.insert(0, folder)                        # `python FILE.py`
    try:
        namespace = runpy.run_path(path, run_name="graphc_model")
    finally:
        sys.path.remove(folder)
    build = namespace.get("build")
    if not callable(build):
        raise ValueError("the file defines no build() function; see `graphc check --help`")
    return build()


def _build_model(path: str):
    if path.endswith(".onnx"):  # an ONNX file opens directly (gc.from_onnx)
        from .importers.onnx_import import build_from_file
        if not os.path.isfile(path):
            raise OSError(f"no such model file: {path}")
        return build_from_file(path)
    built = load_model(path)
    if not (isinstance(built, tuple) and len(built) == 3):
        raise ValueError("build() must return (loss, wrt, feeds)")
    return built


def _check(args) -> int:
    from .gradcheck import check_grad
    loss, wrt, feeds = _build_model(args.file)
    report = check_grad(loss, wrt, feeds, eps=args.eps, rtol=args.rtol, atol=args.atol,
                        full=args.full, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def _load_and_check(args, suffix: str):
    """The model file's (loss, wrt, feeds), the check report when --check asked for one,
    and the output path (FILE<suffix> in the current folder unless -o says otherwise)."""
    loss, wrt, feeds = _build_model(args.file)
    report = None
    if args.check:
        from .gradcheck import check_grad
        report = check_grad(loss, wrt, feeds)
        print(report)
    out = args.output or os.path.splitext(os.path.basename(args.file))[0] + suffix
    return loss, wrt, None if args.no_values else feeds, report, out


def _render(args) -> int:
    from .viz import render
    loss, wrt, values, report, out = _load_and_check(args, ".svg")
    view = False if args.forward_only else args.view
    render(loss, out, backward=view, values=values, check=report, wrt=wrt,
           collapse=True if args.collapse else None, direction=args.direction)
    print(f"wrote {out}")
    return 1 if report is not None and not report.ok else 0  # as `graphc check`


def _explore(args) -> int:
    from .viz.explore import explore
    loss, wrt, values, report, out = _load_and_check(args, ".html")
    explore(loss, out, values=values, wrt=wrt, check=report)
    print(f"wrote {out}")
    return 1 if report is not None and not report.ok else 0  # as `graphc check`


def _compile(args) -> int:
    from .compiler import compile
    from .passes.autodiff import grad
    loss, wrt, _ = _build_model(args.file)
    outputs = [loss, *grad(loss, wrt)] if args.grad else [loss]
    f = compile(outputs, backend=args.backend)
    print(f.source)
    print()
    stats = f.stats
    print(stats if isinstance(stats, str) else "\n".join(f"{k}: {v}" for k, v in
                                                       stats.items()))
    return 0


def _bench(args) -> int:
    """Run ``benchmarks/run.py``: a folder of the source tree, next to the package, that a
    non-editable install does not have."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "benchmarks", "run.py")
    if not os.path.isfile(path):
        raise OSError(f"graphc bench needs the source tree's benchmarks/ folder, not found at "
                      f"{os.path.dirname(path)} (install from a checkout with pip install -e .)")
    spec = importlib.util.spec_from_file_location("graphc_benchmarks_run", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    argv = [f"--workload={w}" for w in args.workload or ()]
    argv += [f"--{name.replace('_', '-')}={getattr(args, name)}"
             for name in ("threads", "seconds", "backend", "compile_repeats", "json",
                          "readme", "steps") if getattr(args, name) is not None]
    return run.main(argv)


# -- the parser: one function per subcommand ---------------------------------------------------
def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="the main job: compile, check, train, draw and report a model",
        description="Build a model for the bundled handwritten digits, compile its training "
                    "step, check its gradients against finite differences, train it with a "
                    "progress bar, render its forward and backward graphs with values and "
                    "write DIR/index.html, a self-contained report.")
    p.add_argument("--out", default="graphc-demo", metavar="DIR",
                   help="where to write the report (default: ./graphc-demo)")
    p.add_argument("--model", choices=("mlp", "cnn", "lstm"), default="mlp",
                   help="the model to train (default: mlp)")
    p.add_argument("--epochs", type=POSITIVE_INT,
                   help="training epochs, >= 1 (default: 30 for mlp and lstm, 15 for cnn)")
    p.set_defaults(func=_demo)


def _model_file(p):
    p.add_argument("file", metavar="FILE.py", help="a model file, or an ONNX file (.onnx: "
                   "the loss is the sum of its first output, the feeds random)")


def _add_check(sub):
    p = sub.add_parser(
        "check", help="check a model's gradients against finite differences",
        description="Load FILE.py, call its build() -> (loss, wrt, feeds), compare "
                    "gc.grad(loss, wrt) with central finite differences in float64, print "
                    "the report and exit 1 if any gradient is wrong. Example: "
                    "examples/mlp_check.py.")
    _model_file(p)
    p.add_argument("--eps", type=POSITIVE, default=1e-6,
                   help="finite-difference step, > 0 (default 1e-6)")
    p.add_argument("--rtol", type=NONNEGATIVE, default=1e-5,
                   help="relative tolerance, >= 0 (default 1e-5)")
    p.add_argument("--atol", type=NONNEGATIVE, default=1e-8,
                   help="absolute tolerance, >= 0 (default 1e-8)")
    p.add_argument("--full", action="store_true",
                   help="check every element (default: at most 64 per tensor)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0,
                   help="seed for sampled elements, >= 0")
    p.set_defaults(func=_check)


def _add_render(sub):
    p = sub.add_parser(
        "render", help="draw a model's forward and backward graphs with Graphviz",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`) and draw "
                    "its graph: every backward edge labelled with its upstream, local and "
                    "downstream gradient, with numbers from the feeds. Needs Graphviz's dot.")
    _model_file(p)
    p.add_argument("-o", "--output", type=_output(".svg", ".png", ".pdf", ".dot"),
                   help="output path: .svg .png .pdf .dot (default: FILE.svg in the current "
                        "folder)")
    p.add_argument("--view", choices=("combined", "backward", "ir"), default="combined",
                   help="combined (default): forward graph with labelled backward edges; "
                        "backward: gradients only; ir: the backward graph's IR nodes")
    p.add_argument("--forward-only", action="store_true", help="no backward graph")
    p.add_argument("--no-values", action="store_true", help="formulas only, no numbers")
    p.add_argument("--check", action="store_true",
                   help="run check_grad, colour what fails and exit 1 if it fails")
    p.add_argument("--collapse", action="store_true",
                   help="draw each gc.scope (layer) as one node (default: only graphs of "
                        "more than 100 nodes, and the picture says so)")
    p.add_argument("--direction", choices=("TB", "LR"), default=None,
                   help="layout direction (default: top to bottom for deep chains, "
                        "otherwise left to right)")
    p.set_defaults(func=_render)


def _output(*suffixes):
    """An argparse type: a path ending in one of ``suffixes`` (else a usage error, before
    the model is built)."""
    def path(text: str) -> str:
        if os.path.splitext(text)[1].lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r} must end in {' '.join(suffixes)}")
        return text
    return path


def _add_explore(sub):
    p = sub.add_parser(
        "explore", help="write a model's graph as an interactive HTML page",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`) and write "
                    "one self-contained HTML page (works offline) to explore its graph in a "
                    "browser: groups that expand and collapse, values, gradients, the "
                    "upstream, local and downstream gradient of every edge, a step mode.")
    _model_file(p)
    p.add_argument("-o", "--output", type=_output(".html", ".htm"),
                   help="output path (default: FILE.html in the current folder)")
    p.add_argument("--no-values", action="store_true", help="formulas only, no numbers")
    p.add_argument("--check", action="store_true",
                   help="run check_grad, colour what fails and exit 1 if it fails")
    p.set_defaults(func=_explore)


def _add_compile(sub):
    p = sub.add_parser(
        "compile", help="print the generated code and f.stats of a model file",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`), compile "
                    "the loss and its gradients and print the generated source and what "
                    "each pass did (f.stats).")
    _model_file(p)
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"), default="numba")
    p.add_argument("--no-grad", dest="grad", action="store_false",
                   help="compile the forward loss only")
    p.set_defaults(func=_compile)


def _add_bench(sub):
    p = sub.add_parser(
        "bench", help="time training steps against PyTorch eager and JAX jit",
        description="Time one training step (loss and gradients, float32) of workloads W1-W6 "
                    "in graphc, PyTorch eager and JAX jit (the `bench` extra), each framework "
                    "in its own process, the processes taking turns over 5 rounds; print "
                    "median ms/step, the ratio (by round) to the faster of "
                    "PyTorch eager and JAX jit next to the target and whether it is met, the "
                    "share of the machine's measured GEMM/bandwidth limit, compile seconds "
                    "(cold, warm), peak memory, the BLAS in use and the load average. Runs "
                    "benchmarks/run.py of the source tree.")
    p.add_argument("--workload", action="append", metavar="W",
                   help="W1, W2, W3, W4, W4s, W5, W6 or a comma-separated list (repeatable; "
                        "default: all)")
    p.add_argument("--threads", type=POSITIVE_INT,
                   help="threads for every framework, >= 1 (default 2)")
    p.add_argument("--seconds", type=NONNEGATIVE,
                   help="minimum timed seconds per framework and workload, over all its rounds "
                        "(default 5)")
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"),
                   help="graphc backend (default: gc.compile's default); with cuda, PyTorch "
                        "and JAX run on the GPU too")
    p.add_argument("--compile-repeats", type=NONNEGATIVE_INT, metavar="N",
                   help="cold/warm compile pairs per workload, medians (default 3; 0: none)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--readme", metavar="PATH",
                   help="print README's performance table from a --json file; run nothing")
    p.add_argument("--steps", type=POSITIVE_INT, help=argparse.SUPPRESS)  # tests: fewer than 50
    p.set_defaults(func=_bench)


SUBCOMMANDS = (_add_demo, _add_check, _add_render, _add_explore, _add_compile,
               _add_bench)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="graphc",
               description="graphc: a symbolic computation-graph compiler and visualizer for "
                           "neural networks.",
               epilog="Exit status: 0 ok; 1 a failed check, or an error in your model or "
                      "input; 2 a usage error; 3 an error inside graphc (please report it).")
    p.add_argument("--version", action="version", version=f"graphc {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():  # `graphc check FILE --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return p


# -- errors --------------------------------------------------------------------------------
def _graphc_dirs() -> tuple[str, ...]:
    """graphc's code: the package, passes/ and viz/, and the source tree's benchmarks/."""
    from . import passes, viz
    dirs = [os.path.dirname(os.path.abspath(m.__file__))
            for m in (sys.modules[__package__], passes, viz)]
    return tuple(d + os.sep for d in [*dirs, os.path.join(os.path.dirname(dirs[0]),
                                                          "benchmarks")])


def _library_dirs() -> tuple[str, ...]:
    import site
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    return tuple(os.path.abspath(p) + os.sep for p in prefixes)


def _user_location(err: BaseException) -> tuple[str | None, bool]:
    """(the user's innermost ``file:line`` in the traceback, whether the exception was raised
    in graphc's own code).  Files outside graphc and outside Python's and the installed
    packages' folders are the user's."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}", False
    graphc_dirs, library = _graphc_dirs(), _library_dirs()
    where, raised_in_graphc = None, False
    for frame in traceback.extract_tb(err.__traceback__):
        path = os.path.abspath(frame.filename)
        if path.startswith(graphc_dirs):
            raised_in_graphc = True
        elif not (frame.filename.startswith("<") or path.startswith(library)):
            where, raised_in_graphc = f"{frame.filename}:{frame.lineno}", False
    if where is None:  # graphc's IR records where the user built the node
        found = re.search(r"^\s*at (\S+:\d+)", str(err), re.M)
        where = found.group(1) if found else None
    return where, raised_in_graphc


def report_error(err: BaseException, command: str, model: str | None = None) -> int:
    """Print ``err`` as one line; return the exit status (1: the user's, 3: graphc's).
    ``model``: the model file the command read, named when the error has no line of the
    user's (a feed that does not fit, found after ``build()`` returned), not for a file
    it cannot read or write (the message names that one)."""
    where, in_graphc = _user_location(err)
    if not isinstance(err, (OSError, RenderError)):
        where = where or model
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, SyntaxError):
        message = err.msg
    if where and message.startswith(where):  # the message names the file already
        where = None
    ours = isinstance(err, USER_ERRORS) or (in_graphc and isinstance(err, (ValueError,
                                                                         TypeError)))
    if in_graphc and not ours:
        print(f"graphc {command}: internal error: {type(err).__name__}: {message} -- this is "
              f"a bug in graphc, not in your model; please report it with the output of "
              f"`graphc --debug {command} ...`", file=sys.stderr)
        return INTERNAL
    text = message if ours else f"{type(err).__name__}: {message}".rstrip(": ")
    print(f"graphc {command}: error: {where + ': ' if where else ''}{text} "
          f"(--debug shows the traceback)", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # `graphc compile x.py | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except Exception as err:
        if args.debug:
            raise
        return report_error(err, args.command, getattr(args, "file", None))


if __name__ == "__main__":
    sys.exit(main())
