"""Kernels whose output the memory plan puts over an operand's buffer (Numba backend).

Writing through a second pointer to the same memory makes LLVM's overlap check fail and
the scalar loop run (W1's bias-add-ReLU: 9 us instead of 2, docs/perf.md); the lowering
then calls a variant of the kernel that writes the output through the operand's pointer.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_memory import mlp_step  # a ReLU MLP's training step: outputs and feeds

import graphc as gc
from graphc.numba_lowering import Lowering


def without_variants(monkeypatch, outputs, **options):
    """``outputs`` compiled as before the variants: every call through two pointers."""
    with monkeypatch.context() as m:
        m.setattr(Lowering, "in_place", lambda self, t, spec, *args: self.kernel(t, spec))
        return gc.compile(outputs, backend="numba", **options)


def variants(source: str) -> list[str]:
    """The kernels of ``source`` (f.source) that write an output through an operand."""
    kernels = re.split(r"^# ---- ", source, flags=re.M)[1:]
    return [k.split("\n", 1)[0] for k in kernels if in_place_lines(k)]


def in_place_lines(source: str) -> list[str]:
    return re.findall(r"^    (\w+ = \w+)  # in place: the same buffer$", source, re.M)


def test_a_fused_kernel_over_its_operand_writes_through_the_operand(monkeypatch):
    outputs, feeds = mlp_step(16, (20, 16, 16, 3))
    f = gc.compile(outputs, backend="numba")
    g = without_variants(monkeypatch, outputs)
    # bias + ReLU over the matmul it reads; ReLU's derivative over the gradient it reads
    assert {k.split("_f32")[0] for k in variants(f.source)} >= {"k_fused_add_relu",
                                                                "k_fused_relu_dx_masked_mul"}
    assert "out0 = a0" in in_place_lines(f.source)
    assert in_place_lines(g.source) == [] and variants(g.source) == []
    got, want = f(feeds), g(feeds)  # the same memory, the same arithmetic: the same bits
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    reference = gc.compile(outputs, backend="numpy")(feeds)
    for a, b in zip(got, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_an_elementwise_kernel_over_its_operand(monkeypatch, threads):
    """Unfused: sigmoid's kernel writes over the exp it reads (split over threads with 2:
    both pointers advance alike)."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
    x = gc.input("x", (1 << 20,))
    y = gc.sum(gc.sigmoid(gc.exp(x * 0.5)))
    passes = ("simplify", "cse", "dce", "memory")
    f = gc.compile(y, backend="numba", passes=passes)
    assert in_place_lines(f.source) == ["out = a0"]
    feeds = {"x": np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)}
    g = without_variants(monkeypatch, y, passes=passes)
    assert f(feeds).tobytes() == g(feeds).tobytes()
    np.testing.assert_allclose(f(feeds), gc.compile(y, backend="numpy")(feeds), rtol=1e-5)


def test_no_variant_where_output_and_operand_are_different_buffers():
    x = gc.input("x", (64, 64))
    y = gc.sigmoid(gc.exp(x))
    f = gc.compile([y, gc.exp(x)], backend="numba", passes=("simplify", "cse", "dce", "memory"))
    assert in_place_lines(f.source) == []


def same_memory_calls(source: str):
    """Each kernel call of ``source``'s ``run`` with the operands it reads at the address it
    writes an output to, where both addresses are computed there (``p = host + offset``, a
    buffer hosted in an output's fresh array): ``(kernel, output, operand)``."""
    at = dict(re.findall(r"^    (p\w+) = (p\w+ \+ \d+)$", source, re.M))
    found = []
    for kernel, args in re.findall(r"^    (k_\w+)\(([^)]*)\)$", source, re.M):
        params = re.search(rf"^# ---- {kernel}\n(?:.*\n)*?def kernel\(([^)]*)\)", source,
                           re.M).group(1).split(", ")
        named = dict(zip(params, args.split(", ")))
        for out, p in named.items():
            for a, q in named.items():
                if out.startswith("out") and a.startswith("a") and p in at and \
                        at.get(q) == at[p]:
                    found.append((kernel, out, a))
    return found


def test_outputs_hosted_over_an_operand_in_a_fresh_output_write_through_the_operand():
    """The plan may place a buffer in an output's fresh array (the W1-shaped step's first
    weight gradient hosts the second layer): a kernel writing over its operand there is a
    variant too, so both layers' bias-add-ReLU (and ReLU derivative) share one kernel."""
    outputs, feeds = mlp_step(128, (784, 256, 256, 10))
    f = gc.compile(outputs, backend="numba")
    calls = same_memory_calls(f.source)
    assert {c[0].split("_f32")[0] for c in calls} >= {"k_fused_add_relu",
                                                      "k_fused_relu_dx_masked_mul"}
    kernels = re.findall(r"^# ---- (k_\w+)$", f.source, re.M)
    for kernel, out, a in calls:
        assert f"{out} = {a}" in in_place_lines(f.source.split(f"# ---- {kernel}\n")[1]
                                                .split("# ---- ")[0]), kernel
    stems = [k.rsplit("_", 1)[0] for k in kernels]
    # 7: the loss picks log_softmax at the labels with a where kernel of its own
    assert len(stems) == len(set(stems)) == f.stats["kernels"] == 7, kernels
    reference = gc.compile(outputs, backend="numpy")(feeds)
    for a, b in zip(f(feeds), reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
