"""Numba kernels of convolution and pooling: max pooling and its gradients, im2col and
col2im around the BLAS GEMMs of ``conv2d`` and its adjoints (the rules that call them:
``rule_max_pool`` and ``rule_conv`` in :mod:`graphc.numba_rules`)."""

from __future__ import annotations

import numpy as np

from .numba_codegen import SHORT, KernelSpec, ScalarPrinter, _module


def max_pool_kernel(kind: str, dtype: str, window=None) -> KernelSpec:
    """Max pooling of ``planes`` contiguous (H, W) planes, one window geometry per call
    (sizes, not part of the compiled code): ``"forward"`` writes each (Ho, Wo) window's
    maximum; ``"grad"`` writes an (H, W) plane per plane: each window's g added at the
    window's first maximum (the first NaN if the window has one), the reference's rule.
    Positions in the padding count as -inf and are never chosen (as PyTorch).

    ``window=(kh, kw, sh, sw)``: a kernel for that window and no padding, with the window
    unrolled and no bounds checks (its size arguments are then ignored), which LLVM
    vectorizes across output columns."""
    c = ScalarPrinter(dtype, {}).const
    lines = ["def kernel(out, x, g, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw):"
             if kind == "grad" else
             "def kernel(out, x, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw):"]
    if kind == "grad":
        lines += ["    for k in range(planes * h * w):",
                  f"        out[k] = {c(0)}"]
    if window is not None:
        return _max_pool_unrolled(kind, dtype, window, lines)
    lines += ["    for p in range(planes):",
              "        base = p * h * w",
              "        for oh in range(ho):",
              "            for ow in range(wo):",
              f"                m = -{c(np.inf)}",
              "                at = -1",
              "                for i in range(kh):",
              "                    ih = oh * sh - ph + i",
              "                    for j in range(kw):",
              "                        iw = ow * sw - pw + j",
              "                        if 0 <= ih < h and 0 <= iw < w:",
              "                            v = x[base + ih * w + iw]",
              "                            if m == m and (v > m or v != v or at == -1):",
              "                                m = v",
              "                                at = ih * w + iw"]  # padding is never the maximum
    if kind == "grad":
        lines += ["                if at >= 0:",
                  "                    out[base + at] += g[(p * ho + oh) * wo + ow]"]
    else:
        lines += ["                out[(p * ho + oh) * wo + ow] = m"]
    header = [f"# graphc kernel: max pooling {kind} over contiguous (H, W) planes, {dtype}"]
    source = _module(header, set(), lines)
    params = (("ptr", dtype),) * (3 if kind == "grad" else 2) + (("int",),) * 11
    return KernelSpec(f"max_pool_{kind}_{SHORT[dtype]}", source, params, ())


def _max_pool_unrolled(kind, dtype, window, lines) -> KernelSpec:
    kh, kw, sh, sw = window
    lines = lines + ["    for p in range(planes):",
                     "        base = p * h * w",
                     "        for oh in range(ho):",
                     f"            row = base + oh * {sh} * w",
                     "            for ow in range(wo):",
                     f"                b0 = row + ow * {sw}",
                     "                m = x[b0]",
                     "                at = 0"]
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            lines += [f"                v = x[b0 + {i} * w + {j}]",
                      "                take = (m == m) & ((v > m) | (v != v))",
                      "                m = v if take else m"]
            if kind == "grad":
                lines.append(f"                at = {i} * w + {j} if take else at")
    if kind == "grad":
        lines.append("                out[b0 + at] += g[(p * ho + oh) * wo + ow]")
    else:
        lines.append("                out[(p * ho + oh) * wo + ow] = m")
    header = [f"# graphc kernel: max pooling {kind}, {kh}x{kw} windows, stride {sh}x{sw}, no "
              f"padding, over contiguous (H, W) planes, {dtype}"]
    params = (("ptr", dtype),) * (3 if kind == "grad" else 2) + (("int",),) * 11
    return KernelSpec(f"max_pool_{kind}_{kh}x{kw}_{SHORT[dtype]}",
                      _module(header, set(), lines), params, ())


def max_pool_grad_tiles_kernel(dtype: str, window) -> KernelSpec:
    """The gradient of max pooling for ``window = (kh, kw)`` windows that tile the plane
    exactly (stride = window, no padding, h = ho*kh, w = wo*kw: the caller checks).  Each
    window zeroes its positions and stores ``0 + g`` at its first maximum (its first NaN
    if it has one): the reference's sums to the bit, without a zeroing pass over the
    plane, a read-modify-write scatter or a data-dependent branch (the position is an
    integer select; a select of the stored values compiled to branches, mispredicted at
    ties), in one loop over all windows (a row of windows is too short for vectors).
    W5's planes: 4x faster than :func:`max_pool_kernel`'s scatter (docs/perf.md)."""
    kh, kw = window
    zero = ScalarPrinter(dtype, {}).const(0)
    at = [f"b0 + {k // kw} * w + {k % kw}" for k in range(kh * kw)]
    lines = ["def kernel(out, x, g, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw):",
             "    b0 = 0  # the window's first position",
             "    ow = 0",
             "    for t in range(planes * ho * wo):"]
    lines += [f"        x{k} = x[{a}]" for k, a in enumerate(at)]
    lines += [f"        n{k} = x{k} != x{k}" for k in range(len(at))]
    lines += [f"        nan = {' | '.join(f'n{k}' for k in range(len(at)))}",
              f"        m = {_nested_max([f'x{k}' for k in range(len(at))])}",
              f"        gv = {zero} + g[t]",
              "        real = ~nan  # (~ of a bool is `not` in Numba, without a branch)"]
    lines += [f"        e{k} = n{k} | ((x{k} == m) & real)" for k in range(len(at) - 1)]
    lines.append(f"        at = {at[-1]}")  # the first match: selected from the last back
    lines += [f"        at = {at[k]} if e{k} else at" for k in range(len(at) - 2, -1, -1)]
    lines += [f"        out[{a}] = {zero}" for a in at]
    lines.append("        out[at] = gv")
    lines += ["        ow += 1",
              f"        b0 += {kw}",
              "        if ow == wo:  # the next row of windows",
              "            ow = 0",
              f"            b0 += {kh - 1} * w"]
    header = [f"# graphc kernel: max pooling grad, {kh}x{kw} windows tiling the plane exactly "
              f"(stride {kh}x{kw}, no padding), over contiguous (H, W) planes, {dtype}"]
    params = (("ptr", dtype),) * 3 + (("int",),) * 11
    return KernelSpec(f"max_pool_grad_tiles_{kh}x{kw}_{SHORT[dtype]}",
                      _module(header, set(), lines), params, ())


def _nested_max(names) -> str:
    """``max`` of ``names`` as a balanced tree (any order: NaN is handled apart)."""
    if len(names) == 1:
        return names[0]
    half = len(names) // 2
    return f"max({_nested_max(names[:half])}, {_nested_max(names[half:])})"


_CONV_SIZES = "n, c, h, w, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw"
# The loops of im2col and col2im: batch, channel, kernel position (k), output row (ih the
# input row it reads); the kernels add the output column loop.
_CONV_LOOPS = ["    kk = c * kh * kw",
               "    pp = ho * wo",
               "    for b in range(n):",
               "        for ci in range(c):",
               "            base = (b * c + ci) * h",
               "            for p in range(kh):",
               "                for q in range(kw):",
               "                    k = (ci * kh + p) * kw + q",
               "                    for i in range(ho):",
               "                        ih = i * sh - ph + p * dh"]


def im2col_kernel(layout: str, dtype: str, padded: bool = True) -> KernelSpec:
    """im2col of a contiguous (N, C, H, W) array for one window geometry (sizes, not part
    of the compiled code): ``"cols"`` writes (N, K, P) (K = C*kh*kw row-major, P = Ho*Wo),
    the right operand of ``kernel @ cols``; ``"kmajor"`` writes (K, N*P), for one GEMM
    over the whole batch.  Positions in the padding read 0; ``padded=False`` (no padding:
    every window is inside the input) drops the bounds checks, and the column loop, a
    plain copy, vectorizes (W5: 2x faster, docs/perf.md)."""
    zero = ScalarPrinter(dtype, {}).const(0)
    store = ("cols[(b * kk + k) * pp + i * wo + j] = " if layout == "cols" else
             "cols[(k * n + b) * pp + i * wo + j] = ")
    lines = [f"def kernel(cols, x, {_CONV_SIZES}):", *_CONV_LOOPS,
             "                        for j in range(wo):",
             "                            iw = j * sw - pw + q * dw"]
    if padded:
        lines += [f"                            v = {zero}",
                  "                            if 0 <= ih < h and 0 <= iw < w:",
                  "                                v = x[(base + ih) * w + iw]",
                  f"                            {store}v"]
    else:
        lines.append(f"                            {store}x[(base + ih) * w + iw]")
    valid = "" if padded else ", no padding"
    header = [f"# graphc kernel: im2col into {layout} layout{valid}, {dtype}"]
    params = (("ptr", dtype), ("ptr", dtype)) + (("int",),) * 14
    return KernelSpec(f"im2col_{layout}{'' if padded else '_valid'}_{SHORT[dtype]}",
                      _module(header, set(), lines), params, ())


def col2im_kernel(dtype: str, padded: bool = True) -> KernelSpec:
    """The adjoint of :func:`im2col_kernel` (``"cols"`` layout): (N, K, P) added into a
    zeroed contiguous (N, C, H, W) array at the positions each window read (without
    bounds checks when ``padded`` is false)."""
    zero = ScalarPrinter(dtype, {}).const(0)
    add = "out[(base + ih) * w + iw] += cols[(b * kk + k) * pp + i * wo + j]"
    lines = [f"def kernel(out, cols, {_CONV_SIZES}):",
             "    for k in range(n * c * h * w):",
             f"        out[k] = {zero}", *_CONV_LOOPS]
    if padded:
        lines += ["                        if 0 <= ih < h:",
                  "                            for j in range(wo):",
                  "                                iw = j * sw - pw + q * dw",
                  "                                if 0 <= iw < w:",
                  f"                                    {add}"]
    else:
        lines += ["                        for j in range(wo):",
                  "                            iw = j * sw - pw + q * dw",
                  f"                            {add}"]
    valid = "" if padded else ", no padding"
    header = [f"# graphc kernel: col2im (adjoint of im2col){valid}, {dtype}"]
    params = (("ptr", dtype), ("ptr", dtype)) + (("int",),) * 14
    return KernelSpec(f"col2im{'' if padded else '_valid'}_{SHORT[dtype]}",
                      _module(header, set(), lines), params, ())
