"""Vectorizable math for Numba kernels: exp, expm1, log, log1p, tanh, erf in float32/float64.

This llvmlite has no SVML, so ``math.exp`` inside a Numba loop is a scalar call to libm and
the loop cannot be vectorized.  The functions here are branch-free arithmetic (polynomials,
bit manipulation, and selects written as conditional expressions), so once LLVM inlines
them it vectorizes the loop that calls them.

Accuracy, measured by ``tests/test_numba_fastmath.py`` against 80-bit long double (mpmath
for float64 erf) over wide ranges (+-large, subnormals, NaN and +-inf), in ulps of the
result, float32 / float64: exp 0.83 / 0.84, expm1 1.78 / 2.25, log 0.80 / 0.77, log1p
1.17 / 1.19, tanh 2.72 / 2.95, erf 2.37 / 2.00; the tests assert 1, 2.5, 1, 1.5, 3.5 and 3
ulp.  Special values follow C99/NumPy: NaN propagates, ``exp(-inf) = 0``, ``log(0) =
-inf``, ``log(-1) = nan``, ``tanh(+-inf) = +-1``.

Each function comes in two precisions (``exp_f32``, ``exp_f64`` ...) because the float32
versions use fewer polynomial terms and float32 arithmetic, so they run twice as wide.
The generated kernels import them by name (``graphc.numba_codegen`` makes the names without
importing this module, which needs Numba, so that a warm start never loads Numba).

The polynomials: exp/expm1 use Cody-Waite reduction ``x = n ln2 + r`` (|r| <= ln2/2) and the
Taylor series of expm1(r) (degree 13 in float64, 8 in float32; truncation < 0.05 ulp).  log
follows fdlibm (``e_log.c`` / ``e_logf.c``): ``x = 2^k m`` with m in [sqrt(2)/2, sqrt(2)) and
a minimax series in ``s = f / (2 + f)``.  erf is ``x P(x^2)`` for |x| < 1.5 (float32: 1)
and ``1 - exp(-x^2) G(1/x) / x`` above, with P and G fitted by ``mpmath.chebyfit`` at 60
digits (G in the variable ``1/x - center`` for conditioning); the fit error is below 0.1 ulp.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Each helper is compiled once per process and linked into the kernels that call it, which
# mark it ``alwaysinline`` for LLVM (graphc.numba_native.inline_helpers): left to LLVM's
# inliner's own threshold, tanh_f64 and erf_* stay calls and the loop that calls them is
# not vectorized.
_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
# The parts of a helper (argument reduction, polynomials) and the two-line maximum/minimum
# are inlined by Numba, once into each helper that uses them: each separately compiled
# function costs a compile of its own (W1's cold compile: 0.94-0.97 s with everything
# inlined by Numba, 1.07-1.11 s with everything compiled on its own).
_INLINE = {**_OPTIONS, "inline": "always"}


# ---------------------------------------------------------------------------------------
# Bit casts (the exponent field is how 2^n is built and how log splits x = 2^k m)


@intrinsic
def f64_from_bits(typingctx, bits):
    """Reinterpret an int64 as a float64 (no conversion)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.bitcast(value, ir.DoubleType())
    return types.float64(bits), codegen


@intrinsic
def bits_from_f64(typingctx, x):
    """Reinterpret a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(x), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """Reinterpret an int32 as a float32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], types.int32)
        return builder.bitcast(value, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def bits_from_f32(typingctx, x):
    """Reinterpret a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(x), codegen


def polynomial(name: str, coefs):
    """An njit function of x evaluating ``coefs`` (highest degree first) by Horner's rule,
    written out as one expression: a loop over the coefficients would be left un-unrolled
    for long polynomials, and an inner loop stops the outer loop from vectorizing."""
    namespace = {f"c{k}": c for k, c in enumerate(coefs)}
    expr = "c0"
    for k in range(1, len(coefs)):
        expr = f"({expr} * x + c{k})"
    exec(f"def {name}(x):\n    return {expr}\n", namespace)  # noqa: S102 -- numbers only
    return njit(**_INLINE)(namespace[name])


# ---------------------------------------------------------------------------------------
# float64

_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 6.93147180369123816490e-01  # low 21 bits zero: n * LN2_HI is exact
_F64_LN2_LO = 1.90821492927058770002e-10
_F64_ROUND = 6755399441055744.0  # 1.5 * 2^52: (t + R) - R rounds t to an integer
# expm1(r) = r + r^2/2! + ... + r^13/13!, highest degree first, without the constant term
_F64_EXPM1 = tuple(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64)))
                   for k in range(13, 0, -1))
_expm1_poly_f64 = polynomial("_expm1_poly_f64", _F64_EXPM1)


@njit(**_INLINE)
def _reduce_f64(x):
    """(n, r, s1, s2): x = n ln2 + r with |r| <= ln2/2 and 2^n = s1 * s2 (two factors, so
    that results near overflow and in the subnormal range are formed without overflow)."""
    xc = x if x < 709.8 else 709.8  # NaN -> 709.8: keeps the integer conversion defined
    xc = xc if xc > -745.2 else -745.2
    n = (xc * _F64_LOG2E + _F64_ROUND) - _F64_ROUND
    r = (xc - n * _F64_LN2_HI) - n * _F64_LN2_LO
    k = np.int64(n)
    k1 = k >> 1
    s1 = f64_from_bits((k1 + 1023) << 52)
    s2 = f64_from_bits((k - k1 + 1023) << 52)
    return n, r, s1, s2


@njit(**_OPTIONS)
def exp_f64(x):
    """e^x in float64."""
    n, r, s1, s2 = _reduce_f64(x)
    p = _expm1_poly_f64(r) * r + 1.0
    res = p * s1 * s2
    return x if x != x else res


@njit(**_OPTIONS)
def expm1_f64(x):
    """e^x - 1 in float64, accurate near 0."""
    n, r, s1, s2 = _reduce_f64(x)
    q = _expm1_poly_f64(r) * r
    s = s1 * s2
    small = s * q + (s - 1.0)  # exact scaling, one rounding: accurate for small n
    large = s1 * (s2 * (q + 1.0)) - 1.0  # near overflow s alone would be inf
    res = small if n < 60.0 else large
    return x if (x != x) | (x == 0.0) else res  # NaN, and -0 keeps its sign (as NumPy)


_F64_LG = (1.479819860511658591e-01, 1.531383769920937332e-01, 1.818357216161805012e-01,
           2.222219843214978396e-01, 2.857142874366239149e-01, 3.999999999940941908e-01,
           6.666666666666735130e-01)  # fdlibm Lg7 .. Lg1
_log_poly_f64 = polynomial("_log_poly_f64", _F64_LG)


@njit(**_OPTIONS)
def log_f64(x):
    """Natural logarithm in float64 (fdlibm's method)."""
    sub = x < 2.2250738585072014e-308  # subnormal (or <= 0): scale into the normal range
    xs = x * 18014398509481984.0 if sub else x
    bits = bits_from_f64(xs)
    k = ((bits >> 52) & 0x7FF) - (1023 + 54 if sub else 1023)
    m = f64_from_bits((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    big = m > 1.4142135623730951
    m = m * 0.5 if big else m
    dk = np.float64(k + 1 if big else k)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = z * _log_poly_f64(z)
    hfsq = 0.5 * f * f
    res = dk * _F64_LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _F64_LN2_LO)) - f)
    res = -np.inf if x == 0.0 else res
    res = np.nan if x < 0.0 else res
    return x if (x != x or x == np.inf) else res


@njit(**_OPTIONS)
def log1p_f64(x):
    """log(1 + x) in float64, accurate near 0: log(u) corrected by the rounding of u = 1+x."""
    u = 1.0 + x
    res = log_f64(u) - ((u - 1.0) - x) / u
    res = -np.inf if x == -1.0 else res
    res = np.nan if x < -1.0 else res
    return x if (x != x or x == np.inf) else res


@njit(**_OPTIONS)
def tanh_f64(x):
    """tanh in float64 as expm1(2|x|) / (expm1(2|x|) + 2), which has no cancellation."""
    ax = abs(x)
    e = expm1_f64(2.0 * ax)
    t = e / (e + 2.0)
    t = 1.0 if ax > 22.0 else t
    return np.copysign(t, x)


_F64_ERF_SMALL = (1.5889546007818838e-13, -4.9101179846805086e-12, 8.685870114391334e-11,
                  -1.2083048517022723e-09, 1.4765666857055745e-08, -1.6359841594724727e-07,
                  1.6461484722454145e-06, -1.4925602741550847e-05, 0.00012055330429899759,
                  -0.0008548326929470691, 0.005223977623179348, -0.02686617064480267,
                  0.11283791670952624, -0.37612638903183676, 1.1283791670955126)
_F64_ERFC_CENTER = 0.4166666666666667
_F64_ERFC_LARGE = (-2.8311323191896562, -0.6142656101220201, 2.864327651509596,
                   -1.7626488668206859, 0.44925504466490446, 0.26140714697923856,
                   -0.5427967456480509, 0.4957065929291319, -0.2623174042338059,
                   0.004595494708304529, 0.16509026978647826, -0.20376729036957764,
                   0.12901042040640387, 0.002530969441432698, -0.11966462441781067,
                   0.15748928402265278, -0.07111188400638536, -0.15836633495669133,
                   0.5243969628888799)
_erf_small_f64 = polynomial("_erf_small_f64", _F64_ERF_SMALL)
_erfc_large_f64 = polynomial("_erfc_large_f64", _F64_ERFC_LARGE)


@njit(**_OPTIONS)
def erf_f64(x):
    """The error function in float64."""
    ax = abs(x)
    u = ax * ax
    small = ax * _erf_small_f64(u)
    t = 1.0 / ax
    large = 1.0 - exp_f64(-u) * _erfc_large_f64(t - _F64_ERFC_CENTER) * t
    res = small if ax < 1.5 else large
    res = 1.0 if ax > 6.0 else res
    return np.copysign(res, x)


# ---------------------------------------------------------------------------------------
# float32

_F32 = np.float32
_F32_LOG2E = _F32(1.4426950408889634)
_F32_LN2_HI = _F32(0.693359375)  # Cephes: n * LN2_HI is exact for |n| < 2^11
_F32_LN2_LO = _F32(-2.12194440e-4)
_F32_ROUND = _F32(12582912.0)  # 1.5 * 2^23
_F32_EXPM1 = tuple(_F32(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))))
                   for k in range(8, 0, -1))
_expm1_poly_f32 = polynomial("_expm1_poly_f32", _F32_EXPM1)
_F32_ONE, _F32_TWO, _F32_HALF, _F32_ZERO = _F32(1.0), _F32(2.0), _F32(0.5), _F32(0.0)


@njit(**_INLINE)
def _reduce_f32(x):
    xc = x if x < _F32(88.8) else _F32(88.8)
    xc = xc if xc > _F32(-104.0) else _F32(-104.0)
    n = (xc * _F32_LOG2E + _F32_ROUND) - _F32_ROUND
    r = (xc - n * _F32_LN2_HI) - n * _F32_LN2_LO
    k = np.int32(n)
    k1 = k >> np.int32(1)
    s1 = f32_from_bits((k1 + np.int32(127)) << np.int32(23))
    s2 = f32_from_bits((k - k1 + np.int32(127)) << np.int32(23))
    return n, r, s1, s2


@njit(**_OPTIONS)
def exp_f32(x):
    """e^x in float32."""
    n, r, s1, s2 = _reduce_f32(x)
    p = _expm1_poly_f32(r) * r + _F32_ONE
    res = p * s1 * s2
    return x if x != x else res


@njit(**_OPTIONS)
def expm1_f32(x):
    """e^x - 1 in float32, accurate near 0."""
    n, r, s1, s2 = _reduce_f32(x)
    q = _expm1_poly_f32(r) * r
    s = s1 * s2
    small = s * q + (s - _F32_ONE)
    large = s1 * (s2 * (q + _F32_ONE)) - _F32_ONE
    res = small if n < _F32(30.0) else large
    return x if (x != x) | (x == _F32(0.0)) else res  # NaN, and -0 keeps its sign


_F32_LG = (_F32(float.fromhex("0xf89e26.0p-26")), _F32(float.fromhex("0x91e9ee.0p-25")),
           _F32(float.fromhex("0xccce13.0p-25")), _F32(float.fromhex("0xaaaaaa.0p-24")))
_log_poly_f32 = polynomial("_log_poly_f32", _F32_LG)
_F32_LOG_LN2_HI = _F32(6.9313812256e-01)  # fdlibm e_logf.c
_F32_LOG_LN2_LO = _F32(9.0580006145e-06)


@njit(**_OPTIONS)
def log_f32(x):
    """Natural logarithm in float32 (fdlibm's logf method)."""
    sub = x < _F32(1.17549435e-38)
    xs = x * _F32(33554432.0) if sub else x  # 2^25
    bits = bits_from_f32(xs)
    k = ((bits >> np.int32(23)) & np.int32(0xFF)) - (np.int32(127 + 25) if sub
                                                     else np.int32(127))
    m = f32_from_bits((bits & np.int32(0x007FFFFF)) | np.int32(0x3F800000))
    big = m > _F32(1.41421356)
    m = m * _F32_HALF if big else m
    dk = _F32(k + np.int32(1) if big else k)
    f = m - _F32_ONE
    s = f / (_F32_TWO + f)
    z = s * s
    r = z * _log_poly_f32(z)
    hfsq = _F32_HALF * f * f
    res = dk * _F32_LOG_LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _F32_LOG_LN2_LO)) - f)
    res = _F32(-np.inf) if x == _F32_ZERO else res
    res = _F32(np.nan) if x < _F32_ZERO else res
    return x if (x != x or x == _F32(np.inf)) else res


@njit(**_OPTIONS)
def log1p_f32(x):
    """log(1 + x) in float32, accurate near 0."""
    u = _F32_ONE + x
    res = log_f32(u) - ((u - _F32_ONE) - x) / u
    res = _F32(-np.inf) if x == _F32(-1.0) else res
    res = _F32(np.nan) if x < _F32(-1.0) else res
    return x if (x != x or x == _F32(np.inf)) else res


@njit(**_OPTIONS)
def tanh_f32(x):
    """tanh in float32 as expm1(2|x|) / (expm1(2|x|) + 2)."""
    ax = abs(x)
    e = expm1_f32(_F32_TWO * ax)
    t = e / (e + _F32_TWO)
    t = _F32_ONE if ax > _F32(9.5) else t
    return np.copysign(t, x)


_F32_ERF_SMALL = tuple(_F32(c) for c in (  # |x| < 1: float32 Horner stays within 1 ulp
    7.875875062685488e-05, -0.000801686428716587, 0.005189087423433974, -0.026854212010626412,
    0.11283594715160218, -0.37612626666720334, 1.1283791658483509))
_F32_ERFC_CENTER = _F32(0.625)
_F32_ERFC_LARGE = tuple(_F32(c) for c in (
    0.023283422176507293, -0.04744434739875181, 0.046682595838698576, -0.024720721835485217,
    -0.010210687546557354, 0.049624086818681704, -0.07803525171042851, 0.07210148496618242,
    -0.0012945616536658802, -0.17158564701866785, 0.4895247876335057))
_erf_small_f32 = polynomial("_erf_small_f32", _F32_ERF_SMALL)
_erfc_large_f32 = polynomial("_erfc_large_f32", _F32_ERFC_LARGE)


@njit(**_OPTIONS)
def erf_f32(x):
    """The error function in float32."""
    ax = abs(x)
    u = ax * ax
    small = ax * _erf_small_f32(u)
    t = _F32_ONE / ax
    large = _F32_ONE - exp_f32(-u) * _erfc_large_f32(t - _F32_ERFC_CENTER) * t
    res = small if ax < _F32_ONE else large
    res = _F32_ONE if ax > _F32(4.0) else res
    return np.copysign(res, x)


# ---------------------------------------------------------------------------------------
# Dtype-generic helpers with NumPy's NaN semantics


@njit(**_INLINE)
def maximum(a, b):
    """np.maximum: NaN if either operand is NaN, else the second operand at a tie (as NumPy
    and the CUDA backend: maximum(-0.0, 0.0) is 0.0, maximum(0.0, -0.0) is -0.0)."""
    return a if (a > b) | (a != a) else b


@njit(**_INLINE)
def minimum(a, b):
    """np.minimum: NaN if either operand is NaN, else the second operand at a tie."""
    return a if (a < b) | (a != a) else b


# ---------------------------------------------------------------------------------------
# NumPy's summation order


@njit(error_model="numpy", nogil=True)
def pairwise_sum(x, base, n, zero):
    """``x[base:base + n]`` summed in NumPy's order (its pairwise sum for a contiguous
    reduction: blocks of at most 128 values with eight interleaved accumulators, halves at
    a multiple of eight above that), so a row sum equals ``np.add.reduce`` to the bit.
    Recursive, so not inlined; the eight accumulators vectorize without reassociation."""
    if n < 8:
        res = zero
        for i in range(n):
            res += x[base + i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = x[base], x[base + 1], x[base + 2], x[base + 3]
        r4, r5, r6, r7 = x[base + 4], x[base + 5], x[base + 6], x[base + 7]
        i = base + 8
        end = base + n - n % 8
        while i < end:
            r0 += x[i]
            r1 += x[i + 1]
            r2 += x[i + 2]
            r3 += x[i + 3]
            r4 += x[i + 4]
            r5 += x[i + 5]
            r6 += x[i + 6]
            r7 += x[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < base + n:
            res += x[i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return pairwise_sum(x, base, half, zero) + pairwise_sum(x, base + half, n - half, zero)
