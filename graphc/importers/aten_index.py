"""The ATen ops of indexing, masks, norms and resizing that ``gc.from_torch`` imports:
what losses (``F.cross_entropy``: ``gather``), attention masks (``arange``, ``tril``),
``F.normalize``, ``nn.GroupNorm`` and decoders (``F.interpolate``) export to.  Each is a rule
of :data:`ATEN` (the table :mod:`.aten_ops` starts), built from graphc's public functions.
"""

from __future__ import annotations

import numpy as np

from .. import functions as F
from .. import nn_functions as NF
from ..inputs import constant
from ..ir import Tensor
from .aten_ops import ATEN, _meta, _pair, _static, _unsupported, unbatched


def _arange(im, node, *args, **_):
    """arange(end), arange(start, end[, step]): a constant, torch's length and dtype."""
    if any(isinstance(a, Tensor) for a in args):
        _unsupported(node, "bounds computed from tensors")
    start, _end, step = (0, args[0], 1) if len(args) == 1 else (tuple(args) + (1,))[:3]
    (n,), dtype = _meta(node)
    return constant((start + np.arange(n, dtype=np.float64 if isinstance(step, float) or
                                       isinstance(start, float) else np.int64) * step
                     ).astype(dtype))


def _take_along(x, dim, index):
    """torch.gather: ``x``'s elements at ``index`` along ``dim`` (same rank; the other axes
    are positions in ``index``), one take of the flattened x; the gradient scatter-adds."""
    dim %= x.ndim
    strides = [int(np.prod(x.shape[a + 1:])) for a in range(x.ndim)]
    grid = np.indices(index.shape, dtype=np.int64)
    base = sum((grid[a] * strides[a] for a in range(x.ndim) if a != dim),
               np.zeros(index.shape, np.int64))
    flat = F.cast(index, "int64") * strides[dim] + constant(base)
    return F.take(F.reshape(x, (x.size,)), flat)


def _gather(im, node, x, dim, index, sparse_grad=False):
    return _take_along(x, dim, index)


def _extremum(reduce, arg):
    """max.dim / min.dim: (values, indices), the value taken at the index, so that its
    gradient goes to that one element as torch's does; max / min of everything."""
    def rule(im, node, x, dim=None, keepdim=False):
        if dim is None:
            return reduce(x)
        where = F.argmax(x, dim, True) if arg == "max" else F.argmin(x, dim, True)
        values = _take_along(x, dim, where)
        if not keepdim:
            values, where = F.reshape(values, _meta(node, 0)[0]), \
                F.reshape(where, _meta(node, 1)[0])
        return values, where
    return rule


def _index(im, node, x, indices):
    """x[..., i, j, ...]: index tensors (a constant bool mask as its positions) broadcast
    together, ``None`` entries full slices; NumPy's advanced indexing, one take of the
    indexed axes flattened, whose gradient scatter-adds."""
    key = []
    for i in indices:
        if i is not None and i.dtype == "bool":
            mask = _static(i)
            if mask is None or mask.ndim != 1:
                _unsupported(node, "a boolean index that is not a constant 1-D mask")
            i = constant(np.flatnonzero(mask))
        key.append(i)
    axes = [a for a, k in enumerate(key) if k is not None]
    if len(axes) == 1:
        return x[tuple(slice(None) if k is None else k for k in key)]
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = F.transpose(x, tuple(axes + rest))
    sizes = [x.shape[a] for a in axes]
    flat = None
    for k, (a, n) in enumerate(zip(axes, sizes)):
        i = F.cast(key[a], "int64")
        i = F.where(F.less(i, 0), i + n, i) * int(np.prod(sizes[k + 1:]))
        flat = i if flat is None else flat + i
    y = F.take(F.reshape(moved, (int(np.prod(sizes)),) + tuple(x.shape[a] for a in rest)),
               flat)
    if axes != list(range(axes[0], axes[-1] + 1)) or axes[0] == 0:
        return y  # NumPy: separated index axes go first
    b = flat.ndim  # adjacent ones stay in place: the sliced axes before them come first
    return F.transpose(y, tuple(range(b, b + axes[0])) + tuple(range(b))
                       + tuple(range(b + axes[0], y.ndim)))


def _group_norm(im, node, x, w, b, n, c, hw, groups, eps):
    """native_group_norm: layer norm over each group of channels and its positions, then
    the per-channel scale and shift."""
    y = F.reshape(NF.layer_norm(F.reshape(x, (n, groups, -1)), None, None, -1, eps),
                  x.shape)
    per_channel = (c,) + (1,) * (x.ndim - 2)
    y = y * F.reshape(w, per_channel) if w is not None else y
    return (y + F.reshape(b, per_channel) if b is not None else y), None, None


def _adaptive_max_pool(im, node, x, size):
    """Maximum over PyTorch's adaptive windows: a max pool when they tile the input,
    else one max per window."""
    (oh, ow), (h, w) = _pair(size), x.shape[2:]
    if h % oh == 0 and w % ow == 0:
        return NF.max_pool2d(x, (h // oh, w // ow)), None
    rows = []
    for i in range(oh):
        cells = [F.max(x[:, :, (i * h) // oh:-(-(i + 1) * h // oh),
                         (j * w) // ow:-(-(j + 1) * w // ow)], (2, 3))
                 for j in range(ow)]
        rows.append(F.stack(cells, -1))
    return F.stack(rows, -2), None


def _constant_pad(im, node, x, pad, value=0.0):
    """F.pad's constant mode: (before, after) pairs from the last axis back; a negative
    pad crops."""
    pairs = [(0, 0)] * x.ndim
    for k in range(len(pad) // 2):
        pairs[x.ndim - 1 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
    if any(a < 0 or b < 0 for a, b in pairs):
        x = x[tuple(slice(max(-a, 0), n - max(-b, 0)) for (a, b), n in zip(pairs, x.shape))]
    return F.pad(x, [(max(a, 0), max(b, 0)) for a, b in pairs], value=value)


def _vector_norm(im, node, x, order=2, dim=None, keepdim=False, **kw):
    """‖x‖_ord over ``dim``; the 2-norm's gradient is 0 where the norm is 0 (as torch's,
    not 0/0)."""
    order, dim = kw.get("ord", order), tuple(dim) if dim else None
    a = F.abs(x)
    if order == 2:
        s = F.sum(x * x, dim, keepdim)
        zero = F.equal(s, 0.0)
        return F.where(zero, 0.0, F.sqrt(F.where(zero, 1.0, s)))
    if order == 1:
        return F.sum(a, dim, keepdim)
    if order in (float("inf"), float("-inf")):
        return (F.max if order > 0 else F.min)(a, dim, keepdim)
    if not order > 0:
        _unsupported(node, f"ord={order}")
    return F.power(F.sum(F.power(a, order), dim, keepdim), 1.0 / order)


def _resize_index(n_in: int, n_out: int, scale) -> np.ndarray:
    """Nearest source row of each output row: floor(i * scale), scale = 1 / scale_factor
    when one was given, else n_in / n_out (as torch's 'nearest')."""
    s = 1.0 / scale if scale else n_in / n_out
    return np.minimum(np.floor(np.arange(n_out) * s).astype(np.int64), n_in - 1)


def _upsample_nearest(im, node, x, output_size, scale_factors=None):
    (oh, ow), (h, w) = _meta(node)[0][2:], x.shape[2:]
    sh, sw = scale_factors or (None, None)
    rows = x[:, :, _resize_index(h, oh, sh)]
    return rows[:, :, :, _resize_index(w, ow, sw)]


def _linear_matrix(n_in: int, n_out: int, align: bool, scale) -> np.ndarray:
    """(n_out, n_in): each output row's two source rows and weights, as torch's bilinear
    (half-pixel centres clamped at 0 unless ``align_corners``)."""
    if align:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        s = 1.0 / scale if scale else n_in / n_out
        src = np.maximum((np.arange(n_out) + 0.5) * s - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi, lam = np.minimum(lo + 1, n_in - 1), src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), hi), lam)
    return m


def _upsample_bilinear(im, node, x, output_size, align_corners, scale_factors=None):
    (oh, ow), (h, w) = _meta(node)[0][2:], x.shape[2:]
    sh, sw = scale_factors or (None, None)
    rows = F.matmul(constant(_linear_matrix(h, oh, align_corners, sh).astype(x.dtype)), x)
    return F.matmul(rows, constant(_linear_matrix(w, ow, align_corners, sw).T.astype(x.dtype)))


def _logical(kind):
    """and / or / xor of bool tensors (torch's logical_* and the bitwise ones on masks)."""
    def rule(im, node, a, b):
        if node.target.__name__.startswith("bitwise") and \
                "bool" not in (getattr(a, "dtype", None), getattr(b, "dtype", None)):
            _unsupported(node, "bitwise ops of integers")
        a, b = (F.not_equal(t, False if getattr(t, "dtype", "") == "bool" else 0)
                if isinstance(t, Tensor) else bool(t) for t in (a, b))
        if kind == "xor":
            return F.not_equal(a, b)
        return F.where(a, b, False) if kind == "and" else F.where(a, True, b)
    return rule



def _as_strided(im, node, x, size, stride, storage_offset=None):
    """A change of memory layout only (adaptive_avg_pool2d's 1 x 1 output of a
    channels-last input): the same shape, and the input's strides on every axis longer
    than 1.  graphc tensors have no strides; any other view is refused."""
    before = node.args[0].meta["val"].stride()
    if tuple(size) != x.shape or storage_offset not in (None, 0) or any(
            n > 1 and a != b for n, a, b in zip(size, stride, before)):
        _unsupported(node, f"a strided view (size {list(size)}, stride {list(stride)}) "
                           "other than a change of layout")
    return x


def _copy(im, node, dst, src, non_blocking=False):
    """dst's values replaced by src's (in dst's dtype, broadcast): what assignment into a
    slice exports to, before slice_scatter puts the slice back."""
    return F.broadcast_to(F.cast(src, dst.dtype) if src.dtype != dst.dtype else src,
                          dst.shape)


def _pieces(base, middle, dim, start, stop):
    """base with [start, stop) along dim replaced by middle (a concat of what is left)."""
    lead = (slice(None),) * dim
    parts = [base[lead + (slice(0, start),)]] if start > 0 else []
    parts.append(F.cast(middle, base.dtype) if middle.dtype != base.dtype else middle)
    if stop < base.shape[dim]:
        parts.append(base[lead + (slice(stop, base.shape[dim]),)])
    return F.concat(parts, dim) if len(parts) > 1 else parts[0]


def _slice_scatter(im, node, base, src, dim=0, start=None, end=None, step=1):
    """base with the slice [start:end] along dim replaced by src (``x[2:4] = ...``); the
    slice's old values get no gradient, as in torch."""
    dim %= base.ndim
    start, stop, step = slice(start, end, step).indices(base.shape[dim])
    if step != 1:
        _unsupported(node, f"a slice with step {step}")
    return _pieces(base, src, dim, start, max(stop, start))


def _select_scatter(im, node, base, src, dim, index):
    """base with position ``index`` along dim replaced by src (``x[:, 0] = ...``)."""
    dim %= base.ndim
    index %= base.shape[dim]
    shape = base.shape[:dim] + (1,) + base.shape[dim + 1:]
    return _pieces(base, F.reshape(src, shape), dim, index, index + 1)


def _diagonal(im, node, x, offset=0, dim1=0, dim2=1):
    """torch.diagonal (and torch.diag of a matrix, torch.trace): the diagonal of the plane
    (dim1, dim2) as a new last axis, ``x[..., rows, cols]`` with constant positions
    (:func:`_index`, whose gradient scatter-adds)."""
    d1, d2 = dim1 % x.ndim, dim2 % x.ndim
    rest = [a for a in range(x.ndim) if a not in (d1, d2)]
    n1, n2 = x.shape[d1], x.shape[d2]
    first1, first2 = max(-offset, 0), max(offset, 0)
    length = max(0, min(n1 - first1, n2 - first2))
    if length == 0:
        _unsupported(node, f"an empty diagonal (offset {offset} of a {n1} x {n2} plane)")
    steps = np.arange(length)
    return _index(im, node, F.transpose(x, (*rest, d1, d2)),
                  [None] * len(rest) + [constant(steps + first1), constant(steps + first2)])


def _sinc(im, node, x):
    """sin(pi x) / (pi x), 1 at 0, as torch decomposes it, but with the argument of the
    branch not taken at 0 replaced by 1, so that the gradient there is 0 (torch's), not
    the 0 * NaN of that branch's derivative at 0."""
    m = x * np.pi
    at_zero = F.equal(m, 0.0)
    safe = F.where(at_zero, 1.0, m)
    return F.where(at_zero, 1.0, F.sin(safe) / safe)


ATEN.update({
    "aten.sinc": _sinc,
    "aten.diagonal": _diagonal,
    "aten.arange": _arange,
    "aten.gather": _gather,
    "aten.max": _extremum(F.max, "max"),
    "aten.min": _extremum(F.min, "min"),
    "aten.index": _index,
    "aten.index_select": lambda im, node, x, dim, index: x[(slice(None),) * (dim % x.ndim)
                                                          + (index,)],
    "aten.constant_pad_nd": _constant_pad,
    "aten.native_group_norm": _group_norm,
    "aten.adaptive_max_pool2d": unbatched(_adaptive_max_pool),
    "aten.linalg_vector_norm": _vector_norm,
    "aten.upsample_nearest2d": _upsample_nearest,
    "aten.upsample_bilinear2d": _upsample_bilinear,
    "aten.isnan": lambda im, node, x: F.not_equal(x, x),
    "aten.isinf": lambda im, node, x: F.equal(F.abs(x), float("inf")),
    "aten.as_strided": _as_strided,
    "aten.copy": _copy,
    "aten.slice_scatter": _slice_scatter,
    "aten.select_scatter": _select_scatter,
    "aten.repeat": lambda im, node, x, repeats: F.tile(x, tuple(repeats)),
    "aten.logical_and": _logical("and"),
    "aten.logical_or": _logical("or"),
    "aten.logical_xor": _logical("xor"),
    "aten.bitwise_and": _logical("and"),
    "aten.bitwise_or": _logical("or"),
    "aten.bitwise_xor": _logical("xor"),
})
