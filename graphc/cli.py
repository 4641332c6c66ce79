"""The ``graphc`` command line.  User errors print one line and exit 1 (``--debug``: the
traceback)."""

from __future__ import annotations

import argparse
import os
import sys

from .compiler import BackendError, FeedError
from .ir import GraphError
from .viz import RenderError


def _demo(args) -> int:
    from .demo import BARS, run
    result = run(args.out, args.model, args.epochs)
    if result["accuracy"] < BARS[args.model] or not result["report_ok"]:
        print(f"graphc demo: the {args.model} missed its bar (test accuracy "
              f"{result['accuracy']:.4f} < {BARS[args.model]}) or its gradient check failed",
              file=sys.stderr)
        return 1
    return 0


def load_model(path: str):
    """Run a model file and call its ``build()``; returns what ``build()`` returns."""
    import runpy
    if not os.path.isfile(path):
        raise OSError(f"no such model file: {path}")
    namespace = runpy.run_path(path, run_name="graphc_model")
    build = namespace.get("build")
    if not callable(build):
        raise ValueError(f"{path} defines no build() function; see `graphc check --help`")
    return build()


def _build_model(path: str):
    built = load_model(path)
    if not (isinstance(built, tuple) and len(built) == 3):
        raise ValueError(f"{path}: build() must return (loss, wrt, feeds)")
    return built


def _check(args) -> int:
    from .gradcheck import check_grad
    loss, wrt, feeds = _build_model(args.file)
    report = check_grad(loss, wrt, feeds, eps=args.eps, rtol=args.rtol, atol=args.atol,
                        full=args.full, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def _render(args) -> int:
    from .viz import render
    loss, wrt, feeds = _build_model(args.file)
    report = None
    if args.check:
        from .gradcheck import check_grad
        report = check_grad(loss, wrt, feeds)
        print(report)
    out = args.output or os.path.splitext(os.path.basename(args.file))[0] + ".svg"
    view = False if args.forward_only else args.view
    render(loss, out, backward=view, values=None if args.no_values else feeds, check=report,
           wrt=wrt, collapse=args.collapse)
    print(f"wrote {out}")
    return 0


def _explore(args) -> int:
    from .viz.explore import explore
    loss, wrt, feeds = _build_model(args.file)
    report = None
    if args.check:
        from .gradcheck import check_grad
        report = check_grad(loss, wrt, feeds)
        print(report)
    out = args.output or os.path.splitext(os.path.basename(args.file))[0] + ".html"
    explore(loss, out, values=None if args.no_values else feeds, wrt=wrt, check=report)
    print(f"wrote {out}")
    return 0


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
    argv += [f"--{name}={getattr(args, name)}" for name in ("threads", "seconds", "backend",
                                                             "json", "steps")
             if getattr(args, name) is not None]
    return run.main(argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="graphc",
        description="graphc: a symbolic computation-graph compiler and visualizer for "
                    "neural networks.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="the main job: compile, check, train, draw and report a model",
        description="Build a model for the bundled handwritten digits, compile its training "
                    "step, check its gradients against finite differences, train it with a "
                    "progress bar, render its forward and backward graphs with values and "
                    "write DIR/index.html, a self-contained report.")
    demo.add_argument("--out", default="graphc-demo", metavar="DIR",
                      help="where to write the report (default: ./graphc-demo)")
    demo.add_argument("--model", choices=("mlp", "cnn", "lstm"), default="mlp",
                      help="the model to train (default: mlp)")
    demo.add_argument("--epochs", type=int, help="training epochs (default: per model)")
    demo.set_defaults(func=_demo)
    check = sub.add_parser(
        "check", help="check a model's gradients against finite differences",
        description="Load FILE.py, call its build() -> (loss, wrt, feeds), compare "
                    "gc.grad(loss, wrt) with central finite differences in float64, print "
                    "the report and exit 1 if any gradient is wrong. Example: "
                    "examples/mlp_check.py.")
    check.add_argument("file", metavar="FILE.py")
    check.add_argument("--eps", type=float, default=1e-6, help="finite-difference step")
    check.add_argument("--rtol", type=float, default=1e-5)
    check.add_argument("--atol", type=float, default=1e-8)
    check.add_argument("--full", action="store_true",
                       help="check every element (default: at most 64 per tensor)")
    check.add_argument("--seed", type=int, default=0, help="seed for sampled elements")
    check.set_defaults(func=_check)
    render = sub.add_parser(
        "render", help="draw a model's forward and backward graphs with Graphviz",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`) and draw "
                    "its graph: every backward edge labelled with its upstream, local and "
                    "downstream gradient, with numbers from the feeds. Needs Graphviz's dot.")
    render.add_argument("file", metavar="FILE.py")
    render.add_argument("-o", "--output", help="output path: .svg .png .pdf .dot "
                                               "(default: FILE.svg in the current folder)")
    render.add_argument("--view", choices=("combined", "backward", "ir"), default="combined",
                        help="combined (default): forward graph with labelled backward edges; "
                             "backward: gradients only; ir: the backward graph's IR nodes")
    render.add_argument("--forward-only", action="store_true", help="no backward graph")
    render.add_argument("--no-values", action="store_true", help="formulas only, no numbers")
    render.add_argument("--check", action="store_true",
                        help="run check_grad and colour what fails")
    render.add_argument("--collapse", action="store_true",
                        help="draw each gc.scope (layer) as one node")
    render.set_defaults(func=_render)
    explore = sub.add_parser(
        "explore", help="write a model's graph as an interactive HTML page",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`) and write "
                    "one self-contained HTML page (works offline) to explore its graph in a "
                    "browser: groups that expand and collapse, values, gradients, the "
                    "upstream, local and downstream gradient of every edge, a step mode.")
    explore.add_argument("file", metavar="FILE.py")
    explore.add_argument("-o", "--output", help="output path (default: FILE.html in the "
                                                "current folder)")
    explore.add_argument("--no-values", action="store_true", help="formulas only, no numbers")
    explore.add_argument("--check", action="store_true",
                         help="run check_grad and colour what fails")
    explore.set_defaults(func=_explore)
    comp = sub.add_parser(
        "compile", help="print the generated code and f.stats of a model file",
        description="Load FILE.py (build() -> (loss, wrt, feeds), as for `check`), compile "
                    "the loss and its gradients and print the generated source and what "
                    "each pass did (f.stats).")
    comp.add_argument("file", metavar="FILE.py")
    comp.add_argument("--backend", choices=("numpy", "numba", "cuda"), default="numba")
    comp.add_argument("--no-grad", dest="grad", action="store_false",
                      help="compile the forward loss only")
    comp.set_defaults(func=_compile)
    bench = sub.add_parser(
        "bench", help="time training steps against PyTorch eager and JAX jit",
        description="Time one training step (loss and gradients, float32) of workloads W1-W5 "
                    "in graphc, PyTorch eager and JAX jit (the `bench` extra), each framework "
                    "in its own process; print median ms/step, the ratio to PyTorch eager next "
                    "to its target, and compile seconds. Runs benchmarks/run.py of the "
                    "source tree.")
    bench.add_argument("--workload", action="append", metavar="W",
                       help="W1, W2, W3, W4, W5 or a comma-separated list (repeatable; default: "
                            "all)")
    bench.add_argument("--threads", type=int, help="threads for every framework (default 2)")
    bench.add_argument("--seconds", type=float,
                       help="minimum timed seconds per framework and workload (default 5)")
    bench.add_argument("--backend", choices=("numpy", "numba", "cuda"),
                       help="graphc backend (default: gc.compile's default)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--steps", type=int, help=argparse.SUPPRESS)  # tests: fewer than 50
    bench.set_defaults(func=_bench)
    return p


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
    except (GraphError, FeedError, BackendError, RenderError, OSError, ValueError,
            TypeError) as err:
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"graphc {args.command}: error: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
