"""Derived formulas kept between processes (graphc.disk_cache.remembered): a second
process reads what the first derived, returns the same expressions, and never runs
SymPy's simplify; damaged, foreign or unwritable entries are derived again."""

import json
import os
import subprocess
import sys

import sympy as sp

from graphc import derivation, disk_cache

x = sp.Symbol("x", real=True)
y = sp.Symbol("y", real=True)


def counting(result):
    calls = []

    def fn(*args):
        calls.append(args)
        return result(*args)
    fn.__qualname__ = fn.__name__ = f"counting_{id(calls)}"
    return disk_cache.remembered(fn), calls


def entries():
    folder = disk_cache.formulas_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_a_second_call_reads_the_result_with_its_assumptions_and_pieces(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    form = sp.Piecewise((sp.Float("0.044715") * x**3, x > 0), (sp.Rational(1, 2), True))
    f, calls = counting(lambda e: e + sp.exp(-x) / (1 + sp.exp(-x)) ** 2)
    first = f(form)
    second = f(form)
    assert len(calls) == 1 and second == first
    assert sp.srepr(second) == sp.srepr(first)  # real=True, the Float's digits, the pieces
    assert len(entries()) == 1
    assert f(form + 1) == form + 1 + sp.exp(-x) / (1 + sp.exp(-x)) ** 2 and len(calls) == 2


def test_damaged_or_foreign_entries_are_derived_again(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    f, calls = counting(lambda e: 2 * e)
    assert f(x) == 2 * x
    path = os.path.join(disk_cache.formulas_dir(), entries()[0])
    for damage in (b"", b"{\"function\": ", b"\x00\xff"):
        with open(path, "wb") as out:
            out.write(damage)
        assert f(x) == 2 * x
    with open(path) as entry:
        data = json.load(entry)  # written over: whole again
    data["args"] = [sp.srepr(y)]  # another call's arguments under this name
    data["result"] = sp.srepr(3 * y)
    with open(path, "w") as out:
        json.dump(data, out)
    assert f(x) == 2 * x and len(calls) == 5


def test_off_switch_and_unwritable_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("GRAPHC_FORMULA_CACHE", "0")
    f, calls = counting(lambda e: e**2)
    assert f(x) == x**2 and f(x) == x**2 and len(calls) == 2 and entries() == []
    monkeypatch.delenv("GRAPHC_FORMULA_CACHE")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(blocker))  # formulas-<tag> cannot be made
    assert f(x) == x**2 and f(x) == x**2 and len(calls) == 4


def test_a_result_that_does_not_read_back_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    class own_fn(sp.Function):  # a class of the caller's: not one of SymPy's names
        pass
    f, calls = counting(lambda e: own_fn(e))
    assert f(x) == own_fn(x) and entries() == []
    assert f(x) == own_fn(x) and len(calls) == 2
    g, _ = counting(lambda e: sp.Function("user_fn")(e))  # SymPy reads this one back
    assert g(x) == sp.Function("user_fn")(x) and len(entries()) == 1


def test_the_tag_follows_the_versions(monkeypatch):
    disk_cache.formulas_tag.cache_clear()
    before = disk_cache.formulas_tag()
    monkeypatch.setattr(sp, "__version__", sp.__version__ + ".test")
    disk_cache.formulas_tag.cache_clear()
    try:
        assert disk_cache.formulas_tag() != before
    finally:
        monkeypatch.undo()
        disk_cache.formulas_tag.cache_clear()
    assert disk_cache.formulas_tag() == before


def test_derivation_functions_are_remembered():
    for fn in (derivation.simplify, derivation.in_terms_of_output,
               derivation.ratio_to_output):
        assert getattr(fn, "uncached", None) is not None, fn


CHILD = r"""
import json, sys
import graphc as gc
from graphc import elementwise_ops
x = gc.input("x", (4, 8))
a, b = gc.input("a", (8,)), gc.input("b", (8,))
z = gc.silu(gc.gelu(gc.sigmoid(gc.tanh(x)), approximate="tanh"))
loss = gc.mean(gc.square(gc.softplus(z * a + b)))
grads = gc.grad(loss, [x, a, b])
defs = {d.name: [str(e) for e in d.derivatives]
        for d in elementwise_ops.REGISTRY.values() if "derivatives" in vars(d)}
print(json.dumps({"physics": "sympy.physics" in sys.modules, "defs": defs}))
"""


def test_a_second_process_derives_nothing_again(tmp_path):
    """W3's chain: the first process derives with sp.simplify (and so imports
    sympy.physics, 0.19 s); the second reads every formula and never imports it."""
    env = {**os.environ, "GRAPHC_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["physics"] and not runs[1]["physics"]
    assert runs[0]["defs"] == runs[1]["defs"] and len(runs[0]["defs"]) >= 5
