"""The ``graphc`` command line.  User errors print one line and exit 1 (``--debug``: the
traceback)."""

from __future__ import annotations

import argparse
import os
import sys

from .compiler import BackendError, FeedError
from .ir import GraphError


def _demo(args) -> int:
    from .demo import run
    run()
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


def _check(args) -> int:
    from .gradcheck import check_grad
    built = load_model(args.file)
    if not (isinstance(built, tuple) and len(built) == 3):
        raise ValueError(f"{args.file}: build() must return (loss, wrt, feeds)")
    loss, wrt, feeds = built
    report = check_grad(loss, wrt, feeds, eps=args.eps, rtol=args.rtol, atol=args.atol,
                        full=args.full, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="graphc",
        description="graphc: a symbolic computation-graph compiler and visualizer for "
                    "neural networks.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job: build an MLP, print its graph, run it",
                          description="Build a small MLP, print its graph as text, run it "
                                      "on the NumPy reference interpreter and print the loss.")
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
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        return args.func(args)
    except (GraphError, FeedError, BackendError, OSError, ValueError, TypeError) as err:
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"graphc {args.command}: error: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
