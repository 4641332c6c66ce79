"""The ``graphc`` command line.  User errors print one line and exit 1 (``--debug``: the
traceback)."""

from __future__ import annotations

import argparse
import sys

from .compiler import BackendError, FeedError
from .ir import GraphError


def _demo(args) -> int:
    from .demo import run
    run()
    return 0


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
