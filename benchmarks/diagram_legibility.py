"""How legible are the demo's diagrams?  Renders the `graphc demo` pictures (MLP, and the
LSTM with --lstm) with their initial parameters and prints, per SVG: its width and height
in pt, how many text lines are cut in the middle of a number or word, how many name a node
`%N`, and how many print raw SymPy `Piecewise(...)`.

    python benchmarks/diagram_legibility.py [--lstm [--ir]] [--out DIR]
"""

import argparse
import html
import os
import re
import tempfile
import time

import graphc as gc
from graphc import data as datasets
from graphc import demo


def texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def cut_mid_token(line: str) -> bool:
    """An ellipsis touching a letter, digit, '.' or '-': a number or name cut in two."""
    return re.search(r"[\w.\-+]…|…[\w.\-+]", line) is not None


def measure(svg: str) -> dict:
    width, height = (float(v) for v in re.search(
        r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    lines = texts(svg)
    return dict(width=width, height=height, lines=len(lines),
                cut=sum(cut_mid_token(t) for t in lines),
                pct=sum(bool(re.search(r"%\d+", t)) for t in lines),
                piecewise=sum("Piecewise" in t for t in lines))


def pictures(kind: str):
    model = demo.build_model(kind)
    images, labels = datasets.load_digits()
    images = images.reshape((len(images),) + demo._shape(kind, 1)[1:])
    loss, logits, *_ = demo._graphs(model, kind, 2)
    params = model.init_params(seed=0)
    inputs = {t.op.label for t in gc.Graph(loss).inputs}
    feeds = {k: v for k, v in {"x": images[:2], "y": labels[:2], **params}.items()
             if k in inputs}
    return loss, logits, feeds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lstm", action="store_true", help="also the LSTM demo's pictures")
    ap.add_argument("--ir", action="store_true", help="also the LSTM's IR view (slow)")
    ap.add_argument("--out", default=None, help="keep the SVGs in this folder")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp()
    os.makedirs(out, exist_ok=True)
    print(f"{'picture':<22}{'width pt':>10}{'height pt':>10}{'lines':>7}{'cut':>6}"
          f"{'%N':>6}{'Piecewise':>10}{'time s':>8}")
    for kind in ["mlp"] + (["lstm"] if args.lstm else []):
        loss, logits, feeds = pictures(kind)
        views = [("forward", loss, dict(values=feeds)),
                 ("backward", loss, dict(backward=True, values=feeds)),
                 ("ir", loss, dict(backward="ir", values=feeds)),
                 ("layers", logits, dict(collapse=True))]  # as the demo draws them
        for view, target, kw in views:
            if view == "ir" and kind == "lstm" and not args.ir:
                continue
            t0 = time.perf_counter()
            path = os.path.join(out, f"{kind}-{view}.svg")
            gc.render(target, path, **kw)
            seconds = time.perf_counter() - t0
            with open(path, encoding="utf-8") as fh:
                m = measure(fh.read())
            print(f"{kind + ' ' + view:<22}{m['width']:>10,.0f}{m['height']:>10,.0f}"
                  f"{m['lines']:>7}{m['cut']:>6}{m['pct']:>6}{m['piecewise']:>10}"
                  f"{seconds:>8.2f}")
    print(f"SVGs in {out}")


if __name__ == "__main__":
    main()
