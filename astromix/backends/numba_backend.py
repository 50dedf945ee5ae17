"""Numba CPU backend: vectorised (SIMD) pixel loops, threads over row bands or components.

The pixel loops are written so that LLVM vectorises them: each row of a
component's culling ellipse is a contiguous slice indexed from 0, and ``exp`` is
a polynomial (there is no SVML on the reference machines, and a scalar
``math.exp`` in the loop runs ~10x slower).  ``exp(-q/2)`` for
``0 <= q <= n_sigma**2`` is computed as ``p(-q/32)**16`` (float32, ``p`` the
Taylor polynomial of ``exp`` of degree 5) or ``p(-q/64)**32`` (float64, degree
8).  Measured error: below 1e-6 of the component's peak in float32; in float64
below 3e-8 of the value itself for q <= 25 (n_sigma = 5) and 2e-5 at q = 49
(n_sigma = 7, where the value is 2e-11 of the peak).

Each component is evaluated over its culling box with rows of one length and
the ellipse applied as a mask (see ``_common``): with rows of varying length the
loop exits are mispredicted and the short rows cost ~35% more.  In render and
accumulate each row is walked in whole chunks of ``CHUNK`` pixels, the row
extended to the left (or the right, at the image's edge) to a multiple of
``CHUNK``: a pixel outside the box is outside the ellipse, so the mask gives it
exactly zero, and the compiler's vector loop has no scalar remainder (with it,
a 63-pixel row cost 60% more than a 64-pixel one).  An image whose width is not
a multiple of ``CHUNK`` is worked on in a zero-padded copy.

The gradient sums of a component without the fourth-order factor are
accumulated per column (three sums in ``dy`` in a scratch row) and reduced over
the columns once per component, not once per row: the per-row horizontal
reductions of the vector accumulators cost as much as the pixels (float32
accumulate on the 64x64 benchmark stamp, with both changes: 100 -> 71 us).

Components without the fourth-order factor that are at least ``REC_ROWS32`` /
``REC_ROWS64`` rows tall (float32 / float64; in float32 ``REC_ROWS32_WIDE`` rows
when the box is wider than one chunk) are walked down their rows by
recurrence instead of exponentials: with ``f = exp(-q/2)`` at one pixel and ``r``
the ratio to the pixel below, ``f(j+1) = f(j) r(j)`` and
``r(j) = r(j0) exp(-F_yy (j - j0))``, the last factor computed in float64 and
rounded once per row (``_row_factors``; a scalar ``exp`` per row had cost a
quarter of a float32 stamp's render), so each pixel costs two
multiplications.  The start row ``j0`` is computed again every ``RESTART``
rows, in float64 rounded once (``_start_row``): exact exponentials (in
float64 a polynomial times a power of two made from its exponent bits, 1 ulp
for ``|q| <= 1400``; in float32 a polynomial with repeated squaring, 1e-9 for
``|q| <= QSAFE32``) at one group of 8 columns in 8 and products from group to
group in between, since along a row ``q`` is quadratic and the row step of
``q`` linear (two exponentials per column, which they replaced, had cost a
quarter of the benchmark scene's float32 render).  The ellipse is
the set of pixels whose ``f`` is at least ``exp(-n_sigma**2 / 2)`` (one compare
on the value; the row's chord, which it replaced, cost 15% of the float32
stamp's render).  The render walks strips of 32 columns down all the rows
with ``f`` and ``r`` in vector registers (``_rec_walk``, LLVM IR of fixed-width
vectors: Numba's loops cannot keep a strip's state out of memory); passes of
two rows over row buffers of ``f``, which it replaced, were bound below ~96
columns by each column's chain of load, products and store (float32 stamp
render 15.3-17.9 -> 12.6-12.7 us, float64 20-28 -> 17 us; the image the same
bit for bit).  A positive amplitude is taken into ``f`` at the strip's start
(and into the floor), one product per pixel fewer: float32 stamp 11.7-12.0 ->
11.4-11.8 us, float64 16.4-16.7 -> 15.6-15.7 us; images move by 1e-7 of the
peak in float32, 2e-16 in float64.  Its work images are widened so that no row starts 4096 bytes
(modulo 4096) from the next (``_work_width``), where the processor's
store-to-load check would hold each row's loads for the last row's stores.
Two neighbours in the table with the same box (components wider than a small
image are clipped to all of it) are walked together, the image loaded and
stored once for both and the same bit for bit as from the two in turn
(``_render_rec_pair``); in the general render and the scene fits'
multi-exposure call (not the one-call stamp paths) two neighbours are also
walked over the union of their boxes when that costs less (``_pair_box``: the
benchmark scene's render on one thread 1.51-1.54 -> 1.35-1.38 ms in float32,
2.62-2.72 -> 2.22-2.29 ms in float64).  The gradient
sums walk their strips the same way, with their three column sums in registers
too (``_sums_walk``; float32 stamp chi2 + gradient 36-40 -> 34 us, float64
50-62 -> 46-50 us), accumulated as running sums within blocks of ``SUM_BLOCK``
rows (no product by ``dy`` per pixel, the moments in ``dy`` formed once per
block: float32 27.5-28.1 -> 25.3-26.6 us, float64 38.0-39.0 -> 35.3-37.1 us).
The recurrence is used
only where every ``f``, ``r`` and row factor over the box stays a normal
number (``|q| <= QSAFE32`` or ``QSAFE64``): thin tilted components, mostly in
float32, keep the exponentials.  Measured against
NumPy: float64 renders agree to 2e-13 of the peak (as before), float32 to
8e-7.  On the benchmark's 54-Gaussian stamp the float64 render went from 96 to
43 us and chi2 + gradient from 240 to 123 us, float32 from 45 to 34 us and
from 133 to 90 us (24-26 us and 69-73 us with the culling by value and, for
small images, the one-call paths ``_render_stamp`` / ``_chi2_stamp``).  The
fourth-order components are rendered by the same walk where the recurrence
applies (``_use_rec``), their factor computed per pixel from ``(v_x, v_y) = F
(dx, dy)`` moved down the rows by ``(F_xy, F_yy)`` (``_rec_walk4``), not by an
exponential per pixel (float64 stamp render 12.8-13.1 -> 11.7-11.8 us); they
accumulate their 14 sums in one flat loop over a copy of their box (the vector
sums reduced once per component, not per row).
The residual's rows and that box copy are
functions of their own whose array arguments are marked ``noalias``
(``_NoAliasCompiler``): inlined, they carry no runtime overlap checks, and the
in-place residual vectorises (float32 stamp chi2 + gradient 65-69 -> 53-56 us
with the render's start rows kept for the gradient sums).

Threads: one image is split into bands of rows rendered in parallel, each band
looping over the components that reach it, the bands' edges placed so that each
holds about the same work (``_band_edges``: where the sources are, and the
band's own pass over its rows); gradients are accumulated in
parallel over components.  Work below ``PARALLEL_MIN_WORK`` Gaussian-pixel
evaluations (a small stamp) runs on one thread, since starting threads would
cost more than it saves.
"""

import functools
import math
import os

import llvmlite.ir as llvmir
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from ..settings import BOX_C4, BOX_VARIANCE
from . import _common as c

__all__ = ["CHUNK", "PARALLEL_MIN_WORK", "NumbaBackend"]

#: os.getpid() of the process that last ran a parallel kernel (None: none yet).
_PARALLEL_PID = None


def _parallel_allowed():
    """False in a process forked from one that had run Numba's parallel kernels.

    GNU OpenMP (Numba's ``omp`` threading layer on Linux) is not fork-safe:
    Numba aborts such a child at its first parallel region ("fork() called from
    a process already using GNU OpenMP"), which is what a default
    ``ProcessPoolExecutor`` does after the parent has fitted something.  Such a
    child runs the kernels on its own thread instead.
    """
    return _PARALLEL_PID is None or _PARALLEL_PID == os.getpid()


def _mark_parallel():
    global _PARALLEL_PID
    _PARALLEL_PID = os.getpid()


#: Below this many Gaussian-pixel evaluations a call runs on one thread.
PARALLEL_MIN_WORK = 150_000
#: Pixels per chunk of a row (one AVX-512 float32 vector, two float64 ones).
CHUNK = 16

# Fast-math flags chosen so that freshly compiled and cached kernels compute the
# same numbers.  A kernel called by another is compiled twice: on its own, and
# as a copy linked into its caller's module and optimised again with it.  A
# process that compiles afresh runs the first (the call resolves to the
# definition already loaded), one that loads Numba's cache runs the copy in the
# caller's cached object.  With every flag, the second optimisation reordered
# products (reassociation: v * (r * p) into (v * p) * r) and hoisted products out
# of loops, away from the additions they had been fused with (contraction is
# per basic block), so the same call rounded differently in the two: float32
# images 3e-8 apart, the JWST 4-Gaussian PSF fit in two different optima, the
# demo's fluxes 0.25 sigma apart, between the first run after installing and
# every later one.  Now (tests/test_numba_cache.py):
# - no reassociation: the element-wise loops vectorise as before, at the same
#   speed;
# - exp's polynomials, the plain kernels' quadratic form and their render's sum
#   are written as _fmuladd, fused or not per target; elsewhere contraction
#   stays allowed (the copies agree there);
# - the two plain exponential kernels (_render_plain, _accumulate_moments),
#   where the copies had fused differently, fuse nothing else (_JIT_UNFUSED);
# - loops that sum into scalars vectorise only with reassociation (the sums'
#   order changes), so those few kernels keep every flag (_JIT_SUMS).
# Timings on the benchmark stamp are unchanged (float32 render 22.7-23.4 us,
# chi2 + gradient 69-72 us; runs of the old and new code alternated).
_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
_JIT = {"fastmath": _FASTMATH, "error_model": "numpy", "boundscheck": False, "nogil": True,
        "cache": True}
_JIT_SUMS = dict(_JIT, fastmath=True)
_JIT_UNFUSED = dict(_JIT, fastmath=_FASTMATH - {"contract"})


class _NoAliasCompiler(numba.core.compiler.Compiler):
    """Numba's default pipeline, with every array argument marked ``noalias``.

    For the row copies and the residual's rows, whose arrays never overlap (it
    served the recurrence's two-row passes over row buffers, before
    ``_rec_walk`` and ``_sums_walk`` kept their state in registers).
    Inlined by LLVM into their caller, the attribute becomes alias metadata
    that lets the vectoriser drop the runtime overlap checks it otherwise
    emits between every pair of stored and loaded arrays at the start of each
    pass (~100 instructions, against ~25 per 16 pixels).  Numba has the flag
    (``Flags.noalias``, set for its own parallel loop bodies) but no ``jit``
    option for it; a ``pipeline_class`` is its documented way to change a
    compilation.  Passing overlapping arrays to such a function is undefined.
    (A Numba without the flag compiles them as any other function: slower, the
    same numbers.)
    """

    def define_pipelines(self):
        if hasattr(self.state.flags, "noalias"):
            self.state.flags.noalias = True
        return super().define_pipelines()


_AMP, _MX, _MY, _SXX, _SXY, _SYY, _FXX, _FXY, _FYY, _NORM, _USE4, _INVDET, _HY, _HX = range(14)
_C4 = BOX_C4


def _exp_half(q):
    """exp(-q/2), dispatched on the dtype of ``q`` (see the module docstring)."""
    return math.exp(-0.5 * q)


@intrinsic
def _fmuladd(typingctx, a, b, c):
    # a * b + c as LLVM's llvm.fmuladd: one fused multiply-add where the target
    # has them, decided per target (not per loop shape, as contraction is: see
    # _FASTMATH), so every copy of a kernel rounds alike.  Arguments of one type.
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        name = "llvm.fmuladd.f32" if t == llvmir.FloatType() else "llvm.fmuladd.f64"
        fn = cgutils.get_or_insert_function(builder.module, llvmir.FunctionType(t, [t] * 3), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@njit(inline="always", **_JIT)
def _exp_half_f32(q):
    # exp(-q/2) = p(-q/32)**16, p the degree-5 Taylor polynomial of exp
    x = q * np.float32(-1.0 / 32.0)
    p = np.float32(1.0 / 120.0)
    p = _fmuladd(x, p, np.float32(1.0 / 24.0))
    p = _fmuladd(x, p, np.float32(1.0 / 6.0))
    p = _fmuladd(x, p, np.float32(0.5))
    p = _fmuladd(x, p, np.float32(1.0))
    p = _fmuladd(x, p, np.float32(1.0))
    p = p * p
    p = p * p
    p = p * p
    return p * p


@njit(inline="always", **_JIT)
def _exp_half_f64(q):
    # exp(-q/2) = p(-q/64)**32, p the degree-8 Taylor polynomial of exp
    x = q * (-1.0 / 64.0)
    p = 1.0 / 40320.0
    p = _fmuladd(x, p, 1.0 / 5040.0)
    p = _fmuladd(x, p, 1.0 / 720.0)
    p = _fmuladd(x, p, 1.0 / 120.0)
    p = _fmuladd(x, p, 1.0 / 24.0)
    p = _fmuladd(x, p, 1.0 / 6.0)
    p = _fmuladd(x, p, 0.5)
    p = _fmuladd(x, p, 1.0)
    p = _fmuladd(x, p, 1.0)
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


@overload(_exp_half, inline="always", fastmath=_FASTMATH)
def _exp_half_overload(q):
    if q == types.float32:
        return lambda q: _exp_half_f32(q)
    return lambda q: _exp_half_f64(q)



@njit(forceinline=True, **_JIT)
def _box(t, ny, nx):
    # Culling box of one component, clipped (the rule of _common.box).  Clipped in
    # float64 before the conversion to int64: ceil/floor of an edge beyond 2**63
    # (a half-width past ~9.2e18 px, cov > ~3.4e36 px^2, or a mean that far off)
    # overflowed it, and the component was dropped or spread over the image.  The
    # same boxes as clipping after the conversion: j0 in 0..ny, j1 in -1..ny-1.
    j0 = math.ceil(min(max(t[_MY] - t[_HY], 0.0), float(ny)))
    j1 = math.floor(max(min(t[_MY] + t[_HY], float(ny - 1)), -1.0))
    i0 = math.ceil(min(max(t[_MX] - t[_HX], 0.0), float(nx)))
    i1 = math.floor(max(min(t[_MX] + t[_HX], float(nx - 1)), -1.0))
    return j0, j1, i0, i1


@register_jitable
def _padded_width(nx):
    # nx rounded up to a multiple of CHUNK: the width the kernels work in (plain
    # Python where called from Python, compiled inline in the kernels)
    return (nx + CHUNK - 1) // CHUNK * CHUNK


#: Rows this many bytes apart (modulo 4096) or closer alias in the processor's
#: store-to-load check; see _work_width.
ALIAS_BYTES = 64


@register_jitable
def _work_width(nx):
    # The width of a work image for nx columns: _padded_width(nx), widened by
    # whole chunks until the start of no row one or two rows below another lies
    # within ALIAS_BYTES of it modulo 4096, in float32 or float64.  The recurrence
    # walks a strip of columns down the rows, storing row j and loading row j + 1
    # at once (_rec_walk); where these addresses agree modulo 4096 the processor
    # takes the load to depend on the store ("4K aliasing") and waits: on rows of
    # 1024 float32 (4096 bytes) a benchmark source renders 5x slower, on 512
    # (rows two apart) 2.4x.  (Rows four apart cost 10-20%, less than copying a
    # widened image back would on a sparsely covered one.)
    w = _padded_width(nx)
    while True:
        ok = True
        for isz in (4, 8):
            for k in (1, 2):
                d = (k * w * isz) % 4096
                if min(d, 4096 - d) < ALIAS_BYTES:
                    ok = False
        if ok:
            return w
        w += CHUNK


@njit(inline="always", **_JIT)
def _col(i):
    # A column index as int32, for offsets x0 + float(_col(i)) in loops that are not
    # walked in chunks: the same number as float(i), but AVX2 converts vectors of
    # int32 (vcvtdq2pd / vcvtdq2ps), not of int64.  Image widths are far below 2**31.
    return np.int32(i)


@njit(inline="always", **_JIT)
def _chunks(i0, i1):
    # (s, nch): a row's pixels i0..i1 are walked as nch chunks of CHUNK pixels
    # from column s, extended to the left (to the right at the image's left
    # edge).  The image's width is a multiple of CHUNK (see _padded_width), so
    # the chunks stay inside it.
    nch = (i1 - i0 + CHUNK) // CHUNK
    return max(i1 + 1 - nch * CHUNK, 0), nch


@njit(inline="always", **_JIT)
def _gauss(dx, b, cq, fxx, qmax):
    # exp(-q/2) of one pixel, 0 outside the culling ellipse; q = (F_xx dx + b) dx + cq
    q = _fmuladd(_fmuladd(fxx, dx, b), dx, cq)
    e = _exp_half(min(q, qmax))
    return e if q <= qmax else qmax - qmax


@njit(inline="always", **_JIT)
def _fourth_cst(t):
    # the fourth-order factor's constant term 1 + 3 c4 (F_xx^2 + F_yy^2) (_gauss4's
    # cst, per unit amplitude), in float64
    return 1.0 + _C4 * 3.0 * (t[_FXX] ** 2 + t[_FYY] ** 2)


@njit(inline="always", **_JIT)
def _gauss4(dx, dy, fxx, fxy, fyy, cst, c4, six_fxx, six_fyy, qmax):
    # (exp(-q/2) (0 outside the ellipse), the fourth-order factor P, v_x, v_y)
    vx = fxx * dx + fxy * dy
    vy = fxy * dx + fyy * dy
    q = dx * vx + dy * vy
    e = _exp_half(min(q, qmax))
    vx2 = vx * vx
    vy2 = vy * vy
    p = cst + c4 * (vx2 * (vx2 - six_fxx) + vy2 * (vy2 - six_fyy))
    return (e if q <= qmax else qmax - qmax), p, vx, vy


@njit(**_JIT_UNFUSED)
def _render_plain(img, t, j0, j1, s, nch, qmax):
    # Add one component without the fourth-order factor to rows j0..j1.
    dt = img.dtype.type
    fxx = dt(t[_FXX])
    fxy = dt(t[_FXY])
    fyy = dt(t[_FYY])
    normd = dt(t[_AMP] * t[_NORM])
    x0 = dt(s - t[_MX])
    for j in range(j0, j1 + 1):
        row = img[j, s:s + nch * CHUNK]
        dy = dt(j - t[_MY])
        # q = (F_xx dx + 2 F_xy dy) dx + F_yy dy^2, by Horner's rule
        b = dt(2.0) * fxy * dy
        cq = fyy * dy * dy
        for m in range(nch):
            for l in range(CHUNK):
                i = m * CHUNK + l
                row[i] = _fmuladd(normd, _gauss(x0 + dt(i), b, cq, fxx, qmax), row[i])


@njit(**_JIT)
def _render_use4(img, t, j0, j1, s, nch, qmax):
    # Add one component with the fourth-order factor to rows j0..j1.
    dt = img.dtype.type
    fxx = dt(t[_FXX])
    fxy = dt(t[_FXY])
    fyy = dt(t[_FYY])
    norm = t[_AMP] * t[_NORM]
    cstn = dt(norm * _fourth_cst(t))
    c4n = dt(norm * _C4)
    six_fxx = dt(6.0 * t[_FXX])
    six_fyy = dt(6.0 * t[_FYY])
    x0 = dt(s - t[_MX])
    for j in range(j0, j1 + 1):
        row = img[j, s:s + nch * CHUNK]
        dy = dt(j - t[_MY])
        for m in range(nch):
            for l in range(CHUNK):
                i = m * CHUNK + l
                e, p, vx, vy = _gauss4(x0 + dt(i), dy, fxx, fxy, fyy, cstn, c4n,
                                       six_fxx, six_fyy, qmax)
                row[i] += e * p


# -- the recurrence path (components without the fourth-order factor) -------------
#: Rows walked by recurrence between exact restarts (float32 error ~1e-6 of the peak).
RESTART = 64
#: The recurrence is used for a component only when |q| and the row step of q stay
#: below this over its box, so that exp(-q/2) and the ratios are normal numbers
#: (float32: exp(-80) = 1.8e-35 > 1.2e-38; float64: exp(-650) = 5e-283).
QSAFE32 = 160.0
QSAFE64 = 1300.0
#: Components shorter than this many rows are rendered with exponentials (float32 / float64).
REC_ROWS32 = 24
REC_ROWS64 = 8
#: float32 components whose rows span more than one chunk take the recurrence from
#: this many rows (its start row costs less per row than a chunk of exponentials).
REC_ROWS32_WIDE = 16
#: Two neighbours in the table walked together over the union of their boxes
#: (_pair_box) cost about this many times one component walked alone, per row of
#: whole chunks: they are paired when that is less than their own boxes' rows.
PAIR_UNION_COST = 1.4


_LOG2E = 1.4426950408889634
#: ln 2 in two parts (Cody and Waite): n * _LN2_HI is exact for |n| < 2**11.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: 1.5 * 2**52: y + _ROUND rounds y to an integer n, held in the low bits.
_ROUND = 6755399441055744.0
#: The bits of _ROUND as an int64.
_ROUND_BITS = 0x4338000000000000


@njit(inline="always", **_JIT)
def _q_step(fxx, fxy, fyy, dx, dy):
    # q = d^T F d at offset (dx, dy) and its row step q(dy + 1) - q(dy)
    return ((fxx * dx + 2.0 * fxy * dy) * dx + fyy * dy * dy,
            2.0 * (fxy * dx + fyy * dy) + fyy)


@njit(forceinline=True, **_JIT)
def _rec_safe(t, j0, j1, i0, i1, qsafe):
    # True when q and its row step q(j+1) - q(j) stay within +-qsafe over the box
    # (rows j0..j1+1): both are convex or linear, so the corners bound them.
    fxx, fxy, fyy = t[_FXX], t[_FXY], t[_FYY]
    m = 0.0
    for jj in (j0, j1 + 1):
        dy = jj - t[_MY]
        for ii in (i0, i1):
            q, dq = _q_step(fxx, fxy, fyy, ii - t[_MX], dy)
            m = max(m, q, abs(dq))
    # and the row factor exp(-F_yy k), k < RESTART rows into a block
    return m <= qsafe and fyy * min(j1 - j0 + 1, RESTART) <= 0.5 * qsafe


@njit(inline="always", **_JIT)
def _use_rec(t, j0, j1, i0, i1, itemsize):
    # The recurrence pays for its start row (float64 vectors: _start_row)
    # on components at least REC_ROWS rows tall, if its numbers stay normal.  In
    # float32 a box of one chunk's width takes the exponentials up to REC_ROWS32
    # rows, a wider one from REC_ROWS32_WIDE (float32 render of 30 components 17
    # rows tall, 17 wide: 6.2 -> 5.8 us, gradient sums 10.0 -> 7.8 us; 17 rows, 11
    # wide: 3.1 us by exponentials, 4.4 us by recurrence).
    if itemsize == 4:
        rows = j1 - j0 + 1
        one_chunk = i1 - i0 < CHUNK  # _chunks' nch == 1
        return (rows >= (REC_ROWS32 if one_chunk else REC_ROWS32_WIDE)
                and _rec_safe(t, j0, j1, i0, i1, QSAFE32))
    return j1 - j0 + 1 >= REC_ROWS64 and _rec_safe(t, j0, j1, i0, i1, QSAFE64)


@njit(inline="always", **_JIT)
def _ellipse_floor(n2, dt):
    # exp(-n_sigma^2 / 2) in dtype dt: on the recurrence path a pixel is inside the
    # culling ellipse (q <= n_sigma^2) when its f is at least this.  One compare on
    # a value already computed; it replaced the ellipse's chord per row (a float64
    # square root per row and two compares per pixel), which cost 15% of the
    # float32 stamp's render.  It differs from the exact test only for q within
    # the recurrence's rounding (~1e-6 in float32) of n_sigma^2, where the value
    # is 3.7e-6 of the component's peak (n_sigma = 5), as the chord differed in
    # its own rounding.  The floor is lowered by 1e-12 of itself, far above the
    # float64 recurrence's rounding (~1e-14) and far below float32's resolution,
    # so that pixels exactly on the ellipse (q = n_sigma^2, common: a round
    # Gaussian centred on a pixel) are kept, as NumPy's q <= n_sigma^2 keeps them;
    # taken or dropped by the rounding, they had made a round Gaussian's float64
    # image asymmetric and 3.7e-6 of the peak from NumPy's.
    return dt(math.exp(-0.5 * n2) * (1.0 - 1e-12))


@njit(pipeline_class=_NoAliasCompiler, **_JIT)
def _copy_row(a, b):
    # b[:] = a, the two not overlapping (a slice assignment would check for
    # overlap and copy through a temporary)
    for i in range(a.shape[0]):
        b[i] = a[i]


#: _work_width for calls from Python (its loops cost ~0.65 us a call there)
_work_width_py = functools.lru_cache(maxsize=1024)(_work_width)


def _vector_register_bytes():
    # Bytes of vector registers of the processor Numba compiles for: 32 x 64 with
    # AVX-512, 16 x 32 with AVX (Numba's NUMBA_CPU_FEATURES if set, else the
    # host's; a NUMBA_CPU_NAME without features is taken as AVX2), 16 x 16 else.
    from numba.core import config

    if config.CPU_FEATURES is not None:
        feats = {f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+")}
    elif config.CPU_NAME is not None and config.CPU_NAME != "host":
        feats = {"avx"}
    else:
        import llvmlite.binding as llvm

        feats = {k for k, v in llvm.get_host_cpu_features().items() if v}
    if "avx512f" in feats:
        return 32 * 64
    return 16 * 32 if "avx" in feats else 16 * 16


#: Bytes of vector registers that _rec_walk's column state may take: half of the
#: processor's (the rest for the products, the image row and the constants).
WALK_STATE_BYTES = _vector_register_bytes() // 2


def _walk_lanes(ncomp, itemsize):
    # Columns per strip of _rec_walk: 32 (two AVX-512 float32 vectors; 64 was
    # slower on the benchmark stamp), fewer where the state f, r of ncomp
    # components would not fit in WALK_STATE_BYTES (AVX2: float64 strips of 32
    # spilled, and the float64 stamp rendered 11% slower than by row passes)
    lanes = 2 * CHUNK
    while lanes > 8 and 2 * ncomp * lanes * itemsize > WALK_STATE_BYTES:
        lanes //= 2
    return lanes


class _VectorIR:
    """IR helpers of the walks (_rec_walk, _sums_walk) for one builder: i64
    offsets, typed pointers at byte offsets, broadcasts, and the strips of a box."""

    def __init__(self, context, builder, dtype):
        self.b = builder
        self.lty = context.get_value_type(dtype)
        self.i64 = llvmir.IntType(64)
        self.align = context.get_abi_sizeof(self.lty)
        self.isz = llvmir.Constant(self.i64, self.align)

    def arrays(self, context, sig, args, which):
        # (data pointers, row strides in bytes) of the array arguments ``which``
        arrays = [context.make_array(sig.args[n])(context, self.b, value=args[n])
                  for n in which]
        return ([x.data for x in arrays],
                [self.b.extract_value(x.strides, 0) for x in arrays])

    def wide(self, x):
        # an integer as i64
        return self.b.sext(x, self.i64) if x.type.width < 64 else x

    def at(self, base, offset, ty):
        # a pointer to a ty at base + offset bytes
        byte = self.b.gep(self.b.bitcast(base, llvmir.IntType(8).as_pointer()), [offset])
        return self.b.bitcast(byte, ty.as_pointer())

    def row(self, stride, n, offset):
        # the byte offset of row n (stride bytes apart) plus offset
        return self.b.add(self.b.mul(stride, llvmir.Constant(self.i64, n)), offset)

    def bcast(self, x, lanes):
        # x in every lane of a vector
        vty = llvmir.VectorType(x.type, lanes)
        undef = llvmir.Constant(vty, None)
        i32 = llvmir.IntType(32)
        return self.b.shuffle_vector(
            self.b.insert_element(undef, x, llvmir.Constant(i32, 0)), undef,
            llvmir.Constant(llvmir.VectorType(i32, lanes), [0] * lanes))

    def fmuladd(self, a, b, c):
        # a * b + c for float vectors by llvm.fmuladd (see _fmuladd)
        ty = a.type
        name = f"llvm.fmuladd.v{ty.count}{'f64' if ty.element == llvmir.DoubleType() else 'f32'}"
        fn = cgutils.get_or_insert_function(self.b.module, llvmir.FunctionType(ty, [ty] * 3),
                                            name)
        return self.b.call(fn, [a, b, c])

    def exp_half(self, q, wide):
        # exp(-q/2) of a float64 vector q, each lane on its own.  wide: the form
        # for |q| <= 1400, to 1 ulp (1e5 random and 5000 evenly spaced arguments
        # against mpmath; a table-and-gather form: 5 ulp): exp(y) = 2**n exp(r)
        # with y = -q/2, n = round(y / ln 2) by the 1.5 * 2**52 rounding trick, r
        # = y - n ln 2 in two parts (|r| <= ln(2) / 2), exp(r) the degree-13
        # Taylor polynomial (truncation 5e-18) and 2**n made from its exponent
        # bits; nothing in it needs a vector gather (LLVM's cost model for AMD
        # Zen 3 does not use AVX2's) or an int64 conversion (AVX2 has none).
        # Else p(-q/512)**256, p the degree-9 Taylor polynomial of exp: relative
        # error below 1e-9 for |q| <= QSAFE32 = 160 (1e-6 at 320), for float32.
        b = self.b
        lanes = q.type.count

        def k(x):
            return llvmir.Constant(q.type, [x] * lanes)

        if not wide:
            x = b.fmul(q, k(-1.0 / 512.0))
            p = k(1.0 / 362880.0)
            for c in (40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
                p = self.fmuladd(x, p, k(1.0 / c))
            for _ in range(8):
                p = b.fmul(p, p)
            return p
        ity = llvmir.VectorType(self.i64, lanes)

        def ki(x):
            return llvmir.Constant(ity, [x] * lanes)

        y = b.fmul(q, k(-0.5))
        t = self.fmuladd(y, k(_LOG2E), k(_ROUND))
        nd = b.fsub(t, k(_ROUND))
        r = self.fmuladd(nd, k(-_LN2_HI), y)
        r = self.fmuladd(nd, k(-_LN2_LO), r)
        p = k(1.0 / 6227020800.0)
        for c in (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0,
                  120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
            p = self.fmuladd(r, p, k(1.0 / c))
        bits = b.shl(b.add(b.sub(b.bitcast(t, ity), ki(_ROUND_BITS)), ki(1023)), ki(52))
        return b.fmul(p, b.bitcast(bits, q.type))

    def exp_half_scalars(self, xs, wide):
        # exp(-x/2) of the float64 scalars xs, in one vector (exp_half)
        i32 = llvmir.IntType(32)
        v = llvmir.Constant(llvmir.VectorType(llvmir.DoubleType(), len(xs)), None)
        for m, x in enumerate(xs):
            v = self.b.insert_element(v, x, llvmir.Constant(i32, m))
        e = self.exp_half(v, wide)
        return [self.b.extract_element(e, llvmir.Constant(i32, m)) for m in range(len(xs))]

    def narrow(self, x):
        # a float64 scalar in the arrays' dtype
        return self.b.fptrunc(x, self.lty) if self.lty != x.type else x

    def store_f64(self, value, base, offset):
        # a float64 vector stored at base + offset bytes in the arrays' dtype,
        # rounded once
        if self.lty != llvmir.DoubleType():
            value = self.b.fptrunc(value, llvmir.VectorType(self.lty, value.type.count))
        self.b.store(value, self.at(base, offset, value.type), align=self.align)

    def strips(self, ncol, lanes, strip):
        # strip(lanes, c0) for c0 = 0, lanes, ... below ncol (a multiple of CHUNK),
        # then strip(CHUNK, c0) for a last chunk when lanes is wider.  That covers
        # every column for lanes dividing CHUNK or equal to 1 or 2 CHUNKs (what
        # _walk_lanes gives): wider strips would leave more than one chunk over
        if not (lanes in (CHUNK, 2 * CHUNK) or (lanes < CHUNK and CHUNK % lanes == 0)):
            raise ValueError(f"strips of {lanes} columns do not tile rows of CHUNK = {CHUNK}")
        b = self.b
        nc = self.wide(ncol)
        width = llvmir.Constant(self.i64, lanes)
        nfull = b.sdiv(nc, width)
        with cgutils.for_range(b, nfull) as loop:
            strip(lanes, b.mul(loop.index, width))
        if lanes > CHUNK:
            done = b.mul(nfull, width)
            with b.if_then(b.icmp_signed("<", done, nc)):
                strip(CHUNK, done)


#: Columns of a start row computed together (_start_row): one float64 vector.
START_LANES = 8
#: Groups of START_LANES columns from one exact group to the next in a start row.
START_PERIOD = 8
#: Scratch columns past a start row's end that _start_row may write: the rows it
#: writes are this much wider than the image.
START_SLACK = START_LANES
#: |q| up to which the float64 start rows' exponential is exact to 1 ulp.
QEXP64 = 1400.0


def _start_codegen(wide):
    # LLVM IR of _start_row; wide: float64's exponential (see _VectorIR.exp_half)

    def codegen(context, builder, sig, args):
        sc, rf, rr, n, a, last, x0, dy, fxx, fxy, fyy, period = args
        b = builder
        ir = _VectorIR(context, builder, sig.args[0].dtype)
        lanes = START_LANES
        f64, i64 = llvmir.DoubleType(), ir.i64
        vd = llvmir.VectorType(f64, lanes)
        (s_data,), (s_row,) = ir.arrays(context, sig, args, (0,))
        n, a, last, period = (ir.wide(x) for x in (n, a, last, period))
        bases = [b.mul(ir.wide(x), s_row) for x in (rf, rr)]

        def k(x, ty=f64):
            return llvmir.Constant(ty, x)

        def vec(x):
            return ir.bcast(x, lanes)

        def store(value, base, col):
            ir.store_f64(value, s_data, b.add(base, b.mul(col, ir.isz)))

        zero = llvmir.Constant(vd, [0.0] * lanes)
        # column numbers as int32 lanes: AVX2 converts vectors of int32 to float64,
        # not of int64 (see _col)
        i32 = llvmir.IntType(32)
        iota = llvmir.Constant(llvmir.VectorType(i32, lanes), list(range(lanes)))

        def cols(col):
            return b.add(vec(b.trunc(col, i32)), iota)

        for base in bases:  # the padding left of the box (a < CHUNK)
            for col in range(0, CHUNK, lanes):
                store(zero, base, k(col, i64))
        # the first group at the box's first column (the row's last group if the
        # box is narrower than a group there); each group in the box or right of it
        g0 = b.select(b.icmp_signed("<", a, b.sub(n, k(lanes, i64))), a,
                      b.sub(n, k(lanes, i64)))
        ngroup = b.sdiv(b.sub(b.add(n, k(lanes - 1, i64)), g0), k(lanes, i64))
        nblock = b.sdiv(b.sub(b.add(ngroup, period), k(1, i64)), period)
        # the steps: exp(-64 F_xx) of a group's ratio g, exp(-8 F_xy) of r
        cstep, wstep = (vec(x) for x in ir.exp_half_scalars(
            [b.fmul(k(128.0), fxx), b.fmul(k(16.0), fxy)], wide))
        k1 = vec(b.fmul(b.fmul(k(2.0), fxy), dy))
        k2 = vec(b.fmul(b.fmul(fyy, dy), dy))
        k3 = vec(b.fmul(fyy, dy))
        vfxx, vfxy, vfyy, vx0 = vec(fxx), vec(fxy), vec(fyy), vec(x0)
        vfy = vec(b.fmul(fxy, dy))
        va, vlast = vec(b.trunc(a, i32)), vec(b.trunc(last, i32))
        fvar, rvar, gvar = (cgutils.alloca_once(b, vd) for _ in range(3))

        def inside(colv):
            return b.and_(b.icmp_signed(">=", colv, va), b.icmp_signed("<=", colv, vlast))

        with cgutils.for_range(b, nblock) as blk:
            k0 = b.mul(blk.index, period)
            col0 = b.add(g0, b.mul(k0, k(lanes, i64)))
            colv = cols(col0)
            dx = b.fadd(vx0, b.sitofp(colv, vd))
            q = b.fadd(b.fmul(b.fadd(b.fmul(vfxx, dx), k1), dx), k2)
            dq = b.fadd(b.fmul(vec(k(2.0)), b.fadd(b.fmul(vfxy, dx), k3)), vfyy)
            # q(i + lanes) - q(i), for columns whose next group's column is in the box
            dg = b.fadd(b.fmul(vec(k(2.0 * lanes)), b.fadd(b.fmul(vfxx, dx), vfy)),
                        b.fmul(vec(k(float(lanes * lanes))), vfxx))
            inb = inside(colv)
            ing = b.and_(inb, b.icmp_signed("<=", b.add(colv, vec(k(lanes, i32))), vlast))
            b.store(ir.exp_half(b.select(inb, q, zero), wide), fvar)
            b.store(ir.exp_half(b.select(inb, dq, zero), wide), rvar)
            b.store(ir.exp_half(b.select(ing, dg, zero), wide), gvar)
            left = b.sub(ngroup, k0)
            kn = b.select(b.icmp_signed("<", period, left), period, left)
            with cgutils.for_range(b, kn) as grp:
                col = b.add(col0, b.mul(grp.index, k(lanes, i64)))
                inb = inside(cols(col))
                f, r, g = b.load(fvar), b.load(rvar), b.load(gvar)
                store(b.select(inb, f, zero), bases[0], col)
                store(b.select(inb, r, zero), bases[1], col)
                b.store(b.fmul(f, g), fvar)
                b.store(b.fmul(r, wstep), rvar)
                b.store(b.fmul(g, cstep), gvar)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _start_row(typingctx, sc, rf, rr, n, a, last, x0, dy, fxx, fxy, fyy, period):
    """A start row of the recurrence: for the columns i < n (a multiple of CHUNK) at
    dx = x0 + i, dy, with q the quadratic form of (F_xx, F_xy, F_yy) and dq =
    q(dy + 1) - q(dy), sc[rf, i] = exp(-q/2) and sc[rr, i] = exp(-dq/2) for a <=
    i <= last (a < CHUNK), zero elsewhere, computed in float64 and rounded once
    to sc's dtype.  Columns n .. n + START_SLACK - 1 of those rows may be
    written.

    LLVM IR of float64 vectors of START_LANES columns, from the box's first
    column: exact exponentials (_VectorIR.exp_half; wide in float64) at one
    group in ``period``, and in between products from each group to the next,
    START_LANES columns on: f by exp(-(q(i + 8) - q(i))/2), itself stepped by
    exp(-64 F_xx), and r by exp(-8 F_xy) (q is quadratic and dq linear in i).
    The caller takes period = 1 where those steps' exponentials are out of
    range.  Two exponentials per column, which it replaced, had cost a quarter
    of the benchmark scene's float32 render.  Each lane's products walk away
    from the box, never into it, so a lane that leaves the box is only masked.
    """
    ints = (rf, rr, n, a, last, period)
    if not (isinstance(sc, types.Array) and sc.ndim == 2 and sc.layout == "C"
            and sc.dtype in (types.float32, types.float64)
            and all(isinstance(x, types.Integer) for x in ints)
            and all(x == types.float64 for x in (x0, dy, fxx, fxy, fyy))):
        return None
    sig = types.none(sc, rf, rr, n, a, last, x0, dy, fxx, fxy, fyy, period)
    return sig, _start_codegen(sc.dtype == types.float64)


@njit(forceinline=True, **_JIT)
def _rec_start(t, dy, x0, a, b, n, sc, rf, rr):
    # Row dy of a component into the scratch rows rf (f) and rr (r) of sc, columns
    # i < n at dx = x0 + i, the box's columns a <= i <= b (_start_row).  Its
    # steps' exponentials, exp(-64 F_xx) and exp(-8 F_xy), are in range of the
    # float64 exponential (QEXP64) and of float32's (QSAFE32, like every q and
    # dq over the box: _rec_safe) for all but components narrow in x, which take
    # exact exponentials at every group.
    fxx, fxy = t[_FXX], t[_FXY]
    qexp = QSAFE32 if sc.itemsize == 4 else QEXP64
    period = START_PERIOD if 128.0 * fxx <= qexp and 16.0 * abs(fxy) <= qexp else 1
    _start_row(sc, rf, rr, n, a, b, x0, dy, fxx, fxy, t[_FYY], period)


def _walk_codegen(ncomp, itemsize, fourth=False):
    # LLVM IR of _rec_walk for ncomp components of the given itemsize; fourth:
    # of _rec_walk4 (one component, its fourth-order factor per pixel)
    wide_lanes = _walk_lanes(2 if fourth else ncomp, itemsize)

    def codegen(context, builder, sig, args):
        if fourth:
            img, j0, col, nrows, ncol, sc, pf, x0, dy0, *coef, floor = args
            scal = []
        else:
            img, j0, col, nrows, ncol, sc, pf, normd, normd2, floor = args
            scal = [normd, normd2][:ncomp]
        ir = _VectorIR(context, builder, sig.args[0].dtype)
        lty, isz, align, wide, at, row = ir.lty, ir.isz, ir.align, ir.wide, ir.at, ir.row
        (a_data, s_data, p_data), (a_row, s_row, p_row) = ir.arrays(context, sig, args,
                                                                    (0, 5, 6))
        first = builder.add(builder.mul(wide(j0), a_row), builder.mul(wide(col), isz))

        def strip(lanes, c0):
            # columns c0 .. c0 + lanes - 1 of the box (c0 an i64), all rows
            vty = llvmir.VectorType(lty, lanes)

            def bcast(x):
                return ir.bcast(x, lanes)

            cofs = builder.mul(c0, isz)
            fvars, rvecs, f0s = [], [], []
            for m in range(ncomp):
                fvars.append(cgutils.alloca_once(builder, vty))
                f0s.append(builder.load(at(s_data, row(s_row, 2 * m, cofs), vty), align=align))
                rvecs.append(builder.load(at(s_data, row(s_row, 2 * m + 1, cofs), vty),
                                          align=align))
            amps = [bcast(a) for a in scal]
            zero = llvmir.Constant(vty, [0.0] * lanes)
            start = builder.add(first, cofs)
            if fourth:
                # v = (F_xx dx + F_xy dy, F_xy dx + F_yy dy) at the strip's first row,
                # dx = x0 + i, dy = dy0, as _gauss4's
                six = llvmir.Constant(llvmir.DoubleType(), 6.0)
                sfxx, sfyy = (bcast(ir.narrow(builder.fmul(six, x))) for x in (coef[0], coef[2]))
                fxx, fxy, fyy, cstn, c4n = (ir.narrow(x) for x in coef)
                i32 = llvmir.IntType(32)
                iota = llvmir.Constant(llvmir.VectorType(i32, lanes), list(range(lanes)))
                dx = builder.fadd(bcast(ir.narrow(x0)), builder.sitofp(
                    builder.add(bcast(builder.trunc(c0, i32)), iota), vty))
                d0 = bcast(ir.narrow(dy0))
                vx0 = ir.fmuladd(bcast(fxx), dx, builder.fmul(bcast(fxy), d0))
                vy0 = ir.fmuladd(bcast(fxy), dx, builder.fmul(bcast(fyy), d0))

            def term(m, v, jj, folded):
                # component m's value at the pixels of row jj, of walked value v
                if not fourth:
                    return v if folded else builder.fmul(amps[m], v)
                # the fourth-order factor cst + c4 (vx^2 (vx^2 - 6 F_xx) + vy^2
                # (vy^2 - 6 F_yy)) (_gauss4), v moved down jj rows
                mj = builder.sitofp(jj, lty)
                vx = builder.fadd(vx0, bcast(builder.fmul(mj, fxy)))
                vy = builder.fadd(vy0, bcast(builder.fmul(mj, fyy)))
                vx2, vy2 = builder.fmul(vx, vx), builder.fmul(vy, vy)
                poly = ir.fmuladd(vx2, builder.fsub(vx2, sfxx),
                                  builder.fmul(vy2, builder.fsub(vy2, sfyy)))
                return builder.fmul(v, ir.fmuladd(bcast(c4n), poly, bcast(cstn)))

            def rows(folded):
                # the row loop; folded[m]: component m's amplitude taken into its f
                fls = [bcast(builder.fmul(floor, a)) if fo else bcast(floor)
                       for a, fo in zip(scal, folded)] or [bcast(floor)]
                for m in range(ncomp):
                    builder.store(builder.fmul(f0s[m], amps[m]) if folded[m] else f0s[m],
                                  fvars[m])
                with cgutils.for_range(builder, wide(nrows)) as loop:
                    jj = loop.index
                    vs, ts = [], []
                    for m in range(ncomp):
                        vs.append(builder.load(fvars[m]))
                        pj = builder.load(at(p_data, row(p_row, m, builder.mul(jj, isz)), lty),
                                          align=align)
                        ts.append(builder.fmul(rvecs[m], bcast(pj)))
                    ptr = at(a_data, builder.add(start, builder.mul(jj, a_row)), vty)
                    acc = builder.load(ptr, align=align)
                    for m in range(ncomp):
                        inside = builder.fcmp_ordered(">=", vs[m], fls[m])
                        acc = builder.fadd(acc, builder.select(
                            inside, term(m, vs[m], jj, folded[m]), zero))
                    builder.store(acc, ptr, align=align)
                    for m in range(ncomp):
                        builder.store(builder.fmul(vs[m], ts[m]), fvars[m])

            def branch(folded):
                # a row loop for each combination of the amplitudes' signs
                if len(folded) == ncomp:
                    rows(folded)
                    return
                positive = builder.fcmp_ordered(">", scal[len(folded)],
                                                llvmir.Constant(lty, 0.0))
                with builder.if_else(positive) as (then, otherwise):
                    with then:
                        branch(folded + (True,))
                    with otherwise:
                        branch(folded + (False,))

            if fourth:
                rows((False,))  # the amplitude is in the factor's coefficients
            else:
                branch(())

        ir.strips(ncol, wide_lanes, strip)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _rec_walk(typingctx, ncomp, img, j0, col, nrows, ncol, sc, pf, normd, normd2, floor):
    """Add rows j0 .. j0 + nrows - 1, columns col .. col + ncol - 1 (a multiple of
    CHUNK) of the C-contiguous 2-d ``img``, by recurrence, for ncomp (1 or 2, a
    literal) components walked together: component c's column state is f =
    sc[2c, :ncol], r = sc[2c + 1, :ncol] (_rec_start), its row factors
    pf[c, :nrows], its amplitude normd (normd2), and pixel (j0 + m, col + i) gets
    ``normd f[i]`` where ``f[i] >= floor``, then f[i] <- f[i] (r[i] pf[c, m]), as
    in the module docstring.  ``sc`` is not written.

    LLVM IR of fixed-width vectors: strips of _walk_lanes columns, each walked
    down all the rows with its f and r in vector registers.  The two-row passes
    over row buffers that it replaced loaded and stored f at every pass, a chain
    whose latency bound each pass below ~96 columns; Numba's own loops cannot
    keep a strip's state out of memory (LLVM vectorises inner loops only, here
    the columns).  A component of positive amplitude walks ``normd f`` instead
    of f, against the floor ``normd floor`` (one product per pixel fewer); one
    of negative amplitude walks f as the passes did, operation for operation.
    Each component's choice is its own, so a pair's image is the same bit for
    bit as the two components' walked in turn.
    """
    if not (isinstance(ncomp, types.IntegerLiteral) and ncomp.literal_value in (1, 2)
            and isinstance(img, types.Array) and img.ndim == 2 and img.layout == "C"
            and isinstance(sc, types.Array) and sc.ndim == 2 and sc.dtype == img.dtype
            and isinstance(pf, types.Array) and pf.ndim == 2 and pf.dtype == img.dtype
            and all(isinstance(x, types.Integer) for x in (j0, col, nrows, ncol))):
        return None
    sig = types.none(ncomp, img, j0, col, nrows, ncol, sc, pf, normd, normd2, floor)
    body = _walk_codegen(ncomp.literal_value, img.dtype.bitwidth // 8)

    def codegen(context, builder, sig, args):
        return body(context, builder, sig.replace(args=sig.args[1:]), args[1:])

    return sig, codegen


@intrinsic
def _rec_walk4(typingctx, img, j0, col, nrows, ncol, sc, pf, x0, dy0, fxx, fxy, fyy, cstn,
               c4n, floor):
    """_rec_walk for one component with the fourth-order factor: pixel (j0 + m,
    col + i) gets ``f[i] P`` where ``f[i] >= floor``, P = cstn + c4n (vx^2 (vx^2
    - 6 F_xx) + vy^2 (vy^2 - 6 F_yy)) with (vx, vy) = F (dx, dy), dx = x0 + i,
    dy = dy0 + m, as _gauss4 (cstn and c4n carry the amplitude and norm).  The
    arguments after pf are float64, rounded to img's dtype where used (floor:
    img's dtype).  Its f, r and row factors are _rec_walk's; v is moved down
    the rows by F_xy and F_yy per row.  It replaced an exponential per pixel
    (_render_use4) where the recurrence applies (_use_rec).
    """
    if not (isinstance(img, types.Array) and img.ndim == 2 and img.layout == "C"
            and isinstance(sc, types.Array) and sc.ndim == 2 and sc.dtype == img.dtype
            and isinstance(pf, types.Array) and pf.ndim == 2 and pf.dtype == img.dtype
            and all(isinstance(x, types.Integer) for x in (j0, col, nrows, ncol))
            and all(x == types.float64 for x in (x0, dy0, fxx, fxy, fyy, cstn, c4n))
            and floor == img.dtype):
        return None
    sig = types.none(img, j0, col, nrows, ncol, sc, pf, x0, dy0, fxx, fxy, fyy, cstn, c4n,
                     floor)
    return sig, _walk_codegen(1, img.dtype.bitwidth // 8, fourth=True)


#: Rows of a block of _sums_walk's running sums, between their conversions to the
#: moments in dy (a block of B rows amplifies the rounding of the second
#: moment by at most ~B**2 / (4 sigma_y**2) where it straddles the centre).
SUM_BLOCK = 8


def _sums_codegen(itemsize):
    # LLVM IR of _sums_walk for the given itemsize
    # state f, r and the three running sums, as a pair's f, r; the three block
    # sums, touched once a block, may stay in memory
    wide_lanes = _walk_lanes(2, itemsize)

    def codegen(context, builder, sig, args):
        rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor = args
        b = builder
        ir = _VectorIR(context, builder, sig.args[0].dtype)
        lty, isz, align, wide, at, row = ir.lty, ir.isz, ir.align, ir.wide, ir.at, ir.row
        f64 = llvmir.DoubleType()
        i64 = ir.i64
        (a_data, s_data, c_data, p_data), (a_row, s_row, c_row, _) = ir.arrays(
            context, sig, args, (0, 5, 6, 7))
        first = b.add(b.mul(wide(j0), a_row), b.mul(wide(col), isz))
        j064 = wide(j0)
        nr = wide(nrows)
        blk = llvmir.Constant(i64, SUM_BLOCK)

        def strip(lanes, c0):
            vty = llvmir.VectorType(lty, lanes)

            def bcast(x):
                return ir.bcast(x, lanes)

            cofs = b.mul(c0, isz)
            r = b.load(at(s_data, row(s_row, 1, cofs), vty), align=align)
            fvar = cgutils.alloca_once(b, vty)
            b.store(b.load(at(s_data, cofs, vty), align=align), fvar)
            svars, pvars = [], []
            for m in range(3):
                svars.append(cgutils.alloca_once(b, vty))
                pvars.append(cgutils.alloca_once(b, vty))
                b.store(b.load(at(c_data, row(c_row, m, cofs), vty), align=align), svars[m])
            fl = bcast(floor)
            zero = llvmir.Constant(vty, [0.0] * lanes)
            start = b.add(first, cofs)

            def step(jj):
                # row jj into the running sums: after a block's L rows, P0 = sum
                # e, P1 = sum e k, P2 = sum e k (k + 1) / 2, k = L - u for its row u
                v = b.load(fvar)
                res = b.load(at(a_data, b.add(start, b.mul(jj, a_row)), vty), align=align)
                # P0 += e by a masked fused multiply-add: the additions' ports
                # (the compare's too) then carry two operations a row, the
                # multipliers' three (f's two products)
                p0 = b.load(pvars[0])
                x = b.select(b.fcmp_ordered(">=", v, fl), ir.fmuladd(res, v, p0), p0)
                b.store(x, pvars[0])
                for p in pvars[1:]:
                    x = b.fadd(b.load(p), x)
                    b.store(x, p)
                pj = b.load(at(p_data, b.mul(jj, isz), lty), align=align)
                b.store(b.fmul(v, b.fmul(r, bcast(pj))), fvar)

            def flush(end):
                # the block's moments added to the sums, its rows ending before
                # row j0 + end: dy = c - k with c = j0 + end - my (float64, rounded
                # once), sum e dy = c P0 - P1, sum e dy^2 = c^2 P0 - (2 c + 1) P1 + 2 P2
                c = b.fsub(b.sitofp(b.add(j064, end), f64), my)
                cc = bcast(ir.narrow(c))
                c2 = bcast(ir.narrow(b.fmul(c, c)))
                c21 = bcast(ir.narrow(b.fadd(b.fmul(llvmir.Constant(f64, 2.0), c),
                                          llvmir.Constant(f64, 1.0))))
                p0, p1, p2 = (b.load(p) for p in pvars)
                terms = (p0, ir.fmuladd(cc, p0, b.fneg(p1)),
                         ir.fmuladd(c2, p0, ir.fmuladd(b.fneg(c21), p1, b.fadd(p2, p2))))
                for m in range(3):
                    b.store(b.fadd(b.load(svars[m]), terms[m]), svars[m])
                for p in pvars:
                    b.store(zero, p)

            for p in pvars:
                b.store(zero, p)
            nfull = b.sdiv(nr, blk)
            with cgutils.for_range(b, nfull) as bl:  # whole blocks, unrolled
                base = b.mul(bl.index, blk)
                for u in range(SUM_BLOCK):
                    step(b.add(base, llvmir.Constant(i64, u)))
                flush(b.add(base, blk))
            done = b.mul(nfull, blk)
            with b.if_then(b.icmp_signed("<", done, nr)):
                with cgutils.for_range(b, b.sub(nr, done)) as loop:
                    step(b.add(done, loop.index))
                flush(nr)
            for m in range(3):
                b.store(b.load(svars[m]), at(c_data, row(c_row, m, cofs), vty), align=align)

        ir.strips(ncol, wide_lanes, strip)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _sums_walk(typingctx, rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor):
    """The gradient sums' recurrence (_accumulate_rec) over rows j0 .. j0 + nrows -
    1, columns col .. col + ncol - 1 (a multiple of CHUNK) of the C-contiguous
    residual image ``rimg``: with the column state f = sc[0, :ncol], r = sc[1,
    :ncol] of row j0 (_rec_start) and the row factors pf[0, :nrows], the column
    sums cs[0..2, :ncol] get ``e = R f``, ``e dy`` and ``e dy**2`` of every
    pixel whose f is at least ``floor``, dy = j - my.  ``sc`` is not written.

    LLVM IR of fixed-width vectors, as _rec_walk: each strip is walked down all
    the rows with f, r and its three sums in vector registers (the two-row
    passes over row buffers that it replaced loaded and stored all five at
    every pass).  Within blocks of SUM_BLOCK rows the sums are running sums,
    P0 += e (a masked fused multiply-add of R f), P1 += P0, P2 += P1, turned
    into the moments in dy at the block's end; the products e dy and e dy**2
    per pixel, which they replaced, had bound the walk by the multiplier ports
    (0.77-0.85 -> 0.55-0.62 ns a vector-row, one core).
    """
    if not (isinstance(rimg, types.Array) and rimg.ndim == 2 and rimg.layout == "C"
            and all(isinstance(x, types.Array) and x.ndim == 2 and x.dtype == rimg.dtype
                    for x in (sc, cs, pf))
            and all(isinstance(x, types.Integer) for x in (j0, col, nrows, ncol))
            and my == types.float64 and floor == rimg.dtype):
        return None
    sig = types.none(rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor)
    return sig, _sums_codegen(rimg.dtype.bitwidth // 8)


def _factors_codegen(context, builder, sig, args):
    # LLVM IR of _row_factors
    pf, c, fyy, nrows = args
    b = builder
    ir = _VectorIR(context, builder, sig.args[0].dtype)
    lanes = START_LANES
    f64, i64 = llvmir.DoubleType(), ir.i64
    vd = llvmir.VectorType(f64, lanes)
    (p_data,), (p_row,) = ir.arrays(context, sig, args, (0,))
    m = ir.wide(nrows)
    restart = llvmir.Constant(i64, RESTART)
    m = b.select(b.icmp_signed("<", m, restart), m, restart)
    ngroup = b.sdiv(b.add(m, llvmir.Constant(i64, lanes - 1)), llvmir.Constant(i64, lanes))
    base = b.mul(ir.wide(c), p_row)
    step = ir.bcast(ir.exp_half_scalars([b.fmul(llvmir.Constant(f64, 2.0 * lanes), fyy)],
                                        True)[0], lanes)
    q = b.fmul(ir.bcast(b.fmul(llvmir.Constant(f64, 2.0), fyy), lanes),
               llvmir.Constant(vd, [float(x) for x in range(lanes)]))
    var = cgutils.alloca_once(b, vd)
    b.store(ir.exp_half(q, True), var)
    with cgutils.for_range(b, ngroup) as grp:
        v = b.load(var)
        ir.store_f64(v, p_data,
                     b.add(base, b.mul(grp.index, llvmir.Constant(i64, lanes * ir.align))))
        b.store(b.fmul(v, step), var)
    return context.get_dummy_value()


@intrinsic
def _row_factors(typingctx, pf, c, fyy, nrows):
    """pf[c, m] = exp(-F_yy m) for m < min(nrows, RESTART), rounded once to pf's
    dtype (a scalar exp per row had cost 25% of the float32 stamp's render), in
    float64 vectors of START_LANES rows: exact exponentials (_VectorIR.exp_half,
    wide) for the first, then products by exp(-8 F_yy).  Entries up to the next
    multiple of START_LANES may be written (pf has RESTART columns or more).
    Its products one after the other, which it replaced, took 5% of the
    benchmark scene's float32 render."""
    if not (isinstance(pf, types.Array) and pf.ndim == 2 and pf.layout in "CA"
            and pf.dtype in (types.float32, types.float64)
            and isinstance(c, types.Integer) and isinstance(nrows, types.Integer)
            and fyy == types.float64):
        return None
    return types.none(pf, c, fyy, nrows), _factors_codegen


@njit(forceinline=True, **_JIT)
def _render_rec(img, t, j0, j1, i0, i1, s, nch, n2, sc, pf, keep, k, fourth=False):
    # Add one component to rows j0..j1, by the recurrence of the module
    # docstring: per column, f(j+1) = f(j) r(j) with r(j) = r(js) exp(-F_yy (j -
    # js)) (_row_factors), walked down the rows in vector registers (_rec_walk);
    # the ellipse is the set of pixels whose f is at least exp(-n_sigma^2 / 2)
    # (_ellipse_floor).  sc: (4, width) scratch of
    # which rows 0, 1 hold the start row's f, r; pf: (2, RESTART) scratch of which
    # row 0 holds the row factors.  keep: None, or a (K, 2, width) array in which
    # the start row j0's f and r are kept as component k's (for _accumulate_rec in
    # the same chi2 call).  fourth: a component with the fourth-order factor,
    # computed per pixel (_rec_walk4; its coefficients as _render_use4's).
    # Inlined (forceinline) into _render_rows: called, its array arguments'
    # reference counts cost ~60 ns a component.
    dt = img.dtype.type
    n = nch * CHUNK
    x0 = s - t[_MX]
    norm = t[_AMP] * t[_NORM]
    normd = dt(norm)
    floor = _ellipse_floor(n2, dt)
    _row_factors(pf, 0, t[_FYY], j1 - j0 + 1)
    for js in range(j0, j1 + 1, RESTART):
        je = min(js + RESTART, j1 + 1)
        _rec_start(t, js - t[_MY], x0, i0 - s, i1 - s, n, sc, 0, 1)
        if keep is not None and js == j0:
            _copy_row(sc[0, :n], keep[k, 0, :n])
            _copy_row(sc[1, :n], keep[k, 1, :n])
        if fourth:
            _rec_walk4(img, js, s, je - js, n, sc, pf, x0, js - t[_MY], t[_FXX], t[_FXY],
                       t[_FYY], norm * _fourth_cst(t), norm * _C4, floor)
        else:
            _rec_walk(1, img, js, s, je - js, n, sc, pf, normd, normd, floor)


@njit(forceinline=True, **_JIT)
def _render_rec_pair(img, t, u, j0, j1, i0, i1, s, nch, n2, sc, pf, keep, k):
    # _render_rec for components k (t) and k + 1 (u) over one box (rows j0..j1,
    # columns i0..i1; _pair_box), in one walk (state in sc's rows 0, 1 and 2, 3,
    # row factors in pf's rows 0 and 1): the image rows are loaded and stored
    # once for both, and each pixel gets the first component's term then the
    # second's.  When the box is both components' own, the image is the same bit
    # for bit as from the two in turn.  When it is the union of theirs (keep must
    # then be None), a component's pixels outside its own box lie outside its
    # ellipse, so its f there stays below the floor and adds nothing; within its
    # box f is walked from other start rows, to the recurrence's own rounding
    # (_pair_box keeps f and r normal over the whole box).  (When f was kept in
    # row buffers, each pass over fewer than ~96 columns
    # was bound by the latency of the chain f -> product -> store -> next pass's
    # load, and a second chain in the same pass came almost free: the benchmark's
    # 54-Gaussian stamp, 12 such pairs, its components' render 6-12% faster.)
    dt = img.dtype.type
    n = nch * CHUNK
    normd = dt(t[_AMP] * t[_NORM])
    normd2 = dt(u[_AMP] * u[_NORM])
    floor = _ellipse_floor(n2, dt)
    _row_factors(pf, 0, t[_FYY], j1 - j0 + 1)
    _row_factors(pf, 1, u[_FYY], j1 - j0 + 1)
    for js in range(j0, j1 + 1, RESTART):
        je = min(js + RESTART, j1 + 1)
        _rec_start(t, js - t[_MY], s - t[_MX], i0 - s, i1 - s, n, sc, 0, 1)
        _rec_start(u, js - u[_MY], s - u[_MX], i0 - s, i1 - s, n, sc, 2, 3)
        if keep is not None and js == j0:
            for m in range(4):
                _copy_row(sc[m, :n], keep[k + m // 2, m % 2, :n])
        _rec_walk(2, img, js, s, je - js, n, sc, pf, normd, normd2, floor)


@njit(inline="always", **_JIT)
def _box_kind(t, ny, nx, y0, itemsize):
    # (j0, j1, i0, i1, kind) of a component in rows [y0, ny): its box (_box, from
    # row y0) and which kernels render it and sum its gradient (_render_rows,
    # _accumulate_one): 0 none (empty box), 1 with the fourth-order factor (its
    # render by recurrence where _use_rec allows, _render_rec), 2 by
    # recurrence, 3 by exponentials
    j0, j1, i0, i1 = _box(t, ny, nx)
    j0 = max(j0, y0)
    if j1 < j0 or i1 < i0:
        return j0, j1, i0, i1, 0
    if t[_USE4] != 0.0:
        return j0, j1, i0, i1, 1
    return j0, j1, i0, i1, 2 if _use_rec(t, j0, j1, i0, i1, itemsize) else 3


@njit(inline="always", **_JIT)
def _pair_box(t, u, j0, j1, i0, i1, nch, y0, y1, nx, itemsize, union):
    # (j0, j1, i0, i1, paired): the box over which component t (taken by
    # recurrence over its box rows j0..j1, columns i0..i1, nch chunks) and its
    # neighbour u in the table are walked together (_render_rec_pair), and
    # whether they are.  They are when u is taken by recurrence over the same
    # box; or, where union is true, over the union of their boxes when its rows
    # of whole chunks, times PAIR_UNION_COST, are fewer than their own boxes'
    # together and the recurrence stays safe for both over it (_use_rec).  The
    # benchmark scene's 4500 recurrence components made 494 pairs of the same
    # box; with unions they make 2200 (334 of the same box), and its render on
    # one thread took 1.51-1.54 -> 1.35-1.38 ms in float32, 2.62-2.72 ->
    # 2.22-2.29 ms in float64 (alternated runs).
    b0, b1, b2, b3, kind = _box_kind(u, y1, nx, y0, itemsize)
    if kind != 2:
        return j0, j1, i0, i1, False
    if b0 == j0 and b1 == j1 and b2 == i0 and b3 == i1:
        return j0, j1, i0, i1, True
    if not union:
        return j0, j1, i0, i1, False
    uj0 = min(j0, b0)
    uj1 = max(j1, b1)
    ui0 = min(i0, b2)
    ui1 = max(i1, b3)
    own = (j1 - j0 + 1) * nch + (b1 - b0 + 1) * _chunks(b2, b3)[1]
    if (PAIR_UNION_COST * (uj1 - uj0 + 1) * _chunks(ui0, ui1)[1] < own
            and _use_rec(t, uj0, uj1, ui0, ui1, itemsize)
            and _use_rec(u, uj0, uj1, ui0, ui1, itemsize)):
        return uj0, uj1, ui0, ui1, True
    return j0, j1, i0, i1, False


@njit(**_JIT)
def _render_rows(img, table, y0, y1, n2, keep=None, union=None):
    # Add every component to rows [y0, y1) of img, in the table's order; keep: see
    # _render_rec.  Two neighbours in the table taken by recurrence are walked
    # together (_render_rec_pair) over the same box (components wider than a small
    # image are clipped to all of it) or, where union is given (True) and keep is
    # None, over the union of their boxes when that costs less (_pair_box).  The
    # general render (_render_band) and the scene fits' multi-exposure call
    # (_exposures_chi2) give union.  The one-call stamp paths leave it out, so
    # that their code has no union test (a compile-time choice): on the
    # benchmark's 64x64 stamp, whose boxes are small and whose components cost
    # mostly their start rows, the test and the union pairs together made the
    # render 2-3% slower, not faster; with the test compiled in but never
    # passing, 8-10% slower.
    nx = img.shape[1]
    dt = img.dtype.type
    qmax = dt(n2)
    sc = np.empty((4, nx + START_SLACK), dtype=img.dtype)
    pf = np.empty((2, RESTART), dtype=img.dtype)
    ncomp = table.shape[0]
    k = 0
    while k < ncomp:
        t = table[k]
        j0, j1, i0, i1, kind = _box_kind(t, y1, nx, y0, img.itemsize)
        if kind == 0:
            k += 1
            continue
        s, nch = _chunks(i0, i1)
        if kind == 1:
            if _use_rec(t, j0, j1, i0, i1, img.itemsize):
                _render_rec(img, t, j0, j1, i0, i1, s, nch, n2, sc, pf, None, k, True)
            else:
                _render_use4(img, t, j0, j1, s, nch, qmax)
        elif kind == 3:
            _render_plain(img, t, j0, j1, s, nch, qmax)
        else:
            pj0, pj1, pi0, pi1, paired = j0, j1, i0, i1, False
            if k + 1 < ncomp:
                pj0, pj1, pi0, pi1, paired = _pair_box(t, table[k + 1], j0, j1, i0, i1, nch,
                                                       y0, y1, nx, img.itemsize,
                                                       union is not None and keep is None)
            if paired:
                ps, pnch = _chunks(pi0, pi1)
                _render_rec_pair(img, t, table[k + 1], pj0, pj1, pi0, pi1, ps, pnch, n2, sc,
                                 pf, keep, k)
                k += 1
            else:
                _render_rec(img, t, j0, j1, i0, i1, s, nch, n2, sc, pf, keep, k)
        k += 1


#: Cost of a component's start row in a band, in rows of its box (the
#: recurrence's first row: _start_row).
START_ROW_COST = 4.0
#: Cost of a band's own pass over each pixel of its rows (zeroing the work
#: image's rows and copying them out, _render_band; zeroing and the residual,
#: _exposures_chi2), in pixels of a component's row.  Timed alone on 1024-wide
#: images: 2.1 (float32) and 2.7 (float64); 2.2-2.5 on 128-wide exposures.  The
#: two bands of the benchmark's clustered scene were most even on one thread
#: at 2.7 in float32 and 3.5 in float64.
ROW_PIXEL_COST = 3.0


@njit(**_JIT)
def _band_edges(table, ny, nx, nband, row_cost=0.0):
    # Row edges (nband + 1,) int64 splitting rows 0..ny into nband bands of about
    # equal work: a component costs its box's padded width (whole chunks) on each
    # of its rows, START_ROW_COST more on its first; every row costs row_cost
    # times nx more (a band's own pass over its rows: ROW_PIXEL_COST, or 0 where
    # the band has none).  Bands of equal rows left clustered sources to one
    # thread: 100 sources in the top 30% of a 1024x1024 image took as long on two
    # threads as on one.  Without the rows' own cost, the band below those
    # sources, with 700 empty rows to zero and copy, took 14-15% (float32) and
    # 16-20% (float64) longer than the band above on one thread.
    w = np.zeros(ny + 1)
    for k in range(table.shape[0]):
        j0, j1, i0, i1 = _box(table[k], ny, nx)
        if j1 < j0 or i1 < i0:
            continue
        width = float((i1 - i0 + CHUNK) // CHUNK * CHUNK)
        w[j0] += (1.0 + START_ROW_COST) * width
        w[j0 + 1] -= START_ROW_COST * width
        w[j1 + 1] -= width
    edges = np.empty(nband + 1, dtype=np.int64)
    # per-row work (a small floor per row, so empty rows still count), cumulated
    cum = np.empty(ny + 1)
    cum[0] = 0.0
    level = 0.0
    floor = 1.0 + row_cost * nx
    for j in range(ny):
        level += w[j]
        cum[j + 1] = cum[j] + level + floor
    total = cum[ny]
    edges[0] = 0
    j = 0
    for b in range(1, nband):
        target = total * b / nband
        while j < ny and cum[j + 1] <= target:
            j += 1
        # the edge nearer the target of the two rows around it
        e = j + 1 if j < ny and cum[j + 1] - target < target - cum[j] else j
        edges[b] = max(e, edges[b - 1])
    edges[nband] = ny
    return edges


@njit(**_JIT)
def _render_band(work, table, y0, y1, n2, img):
    # Rows [y0, y1) of every component into img (zeroed by the caller), or, when
    # img is not None, into the wider work image (_work_width) first: its rows
    # zeroed, rendered, then copied into img's.
    if img is None:
        _render_rows(work, table, y0, y1, n2, None, True)
        return
    nx = img.shape[1]
    work[y0:y1, :] = 0.0
    _render_rows(work, table, y0, y1, n2, None, True)
    for j in range(y0, y1):
        _copy_row(work[j, :nx], img[j])


@njit(parallel=True, **_JIT)
def _render_parallel(work, table, edges, n2, img=None):
    # rows edges[b]..edges[b + 1] as band b (_band_edges); img: see _render_band
    for b in prange(edges.shape[0] - 1):
        _render_band(work, table, edges[b], edges[b + 1], n2, img)


@njit(**_JIT)
def _jacobian_rows(out, table, coeff, active, y0, y1, n2):
    # Add every component's chained derivative terms to rows [y0, y1) of the
    # (P, ny, nx) float64 Jacobian images: out[p] += sum_m coeff[k, p, m] a_m.
    npar = out.shape[0]
    nx = out.shape[2]
    qmax = n2
    eb = np.empty(nx)
    pb = np.empty(nx)
    vxb = np.empty(nx)
    vyb = np.empty(nx)
    for k in range(table.shape[0]):
        t = table[k]
        j0, j1, i0, i1 = _box(t, y1, nx)
        j0 = max(j0, y0)
        if j1 < j0 or i1 < i0:
            continue
        fxx = t[_FXX]
        fxy = t[_FXY]
        fyy = t[_FYY]
        x0 = i0 - t[_MX]
        n = i1 - i0 + 1
        use4 = t[_USE4] != 0.0
        cst = 1.0 + _C4 * 3.0 * (fxx * fxx + fyy * fyy)
        six_fxx = 6.0 * fxx
        six_fyy = 6.0 * fyy
        for j in range(j0, j1 + 1):
            dy = j - t[_MY]
            if use4:
                for i in range(n):
                    eb[i], pb[i], vxb[i], vyb[i] = _gauss4(x0 + float(_col(i)), dy, fxx, fxy,
                                                           fyy, cst, _C4, six_fxx, six_fyy, qmax)
            else:
                # the Gaussian alone (the terms below are polynomials in dx), as render
                # computes it
                b = 2.0 * fxy * dy
                cq = fyy * dy * dy
                for i in range(n):
                    eb[i] = _gauss(x0 + float(_col(i)), b, cq, fxx, qmax)
            for p in range(npar):
                if not active[k, p]:
                    continue
                c = coeff[k, p]
                c0 = c[0]
                c1 = c[1]
                c2 = c[2]
                c3 = c[3]
                c4 = c[4]
                c5 = c[5]
                orow = out[p, j, i0:i1 + 1]
                if use4:
                    c6 = c[6]
                    c7 = c[7]
                    c8 = c[8]
                    c9 = c[9]
                    c10 = c[10]
                    c11 = c[11]
                    c12 = c[12]
                    c13 = c[13]
                    for i in range(n):
                        vx = vxb[i]
                        vy = vyb[i]
                        vx2 = vx * vx
                        vy2 = vy * vy
                        quad = c0 + vx * (c1 + c3 * vx + c4 * vy) + vy * (c2 + c5 * vy)
                        px = vx * (4.0 * vx2 - 12.0 * fxx)
                        py = vy * (4.0 * vy2 - 12.0 * fyy)
                        rest = (px * (c6 + c8 * vx + c9 * vy) + py * (c7 + c10 * vx + c11 * vy)
                                + c12 * (vx2 - fxx) + c13 * (vy2 - fyy))
                        orow[i] += eb[i] * (pb[i] * quad + rest)
                else:
                    # c0 + c1 vx + c2 vy + c3 vx^2 + c4 vx vy + c5 vy^2, with vx = fxx dx + u
                    # and vy = fxy dx + w (u = fxy dy, w = fyy dy constant in the row), as
                    # the row's quadratic in dx: 3 operations a pixel instead of 6
                    u = fxy * dy
                    w = fyy * dy
                    ca = c0 + u * (c1 + c3 * u + c4 * w) + w * (c2 + c5 * w)
                    cb = (c1 * fxx + c2 * fxy + 2.0 * (c3 * fxx * u + c5 * fxy * w)
                          + c4 * (fxx * w + fxy * u))
                    cc = fxx * (c3 * fxx + c4 * fxy) + c5 * fxy * fxy
                    for i in range(n):
                        dx = x0 + float(_col(i))
                        orow[i] += eb[i] * (ca + dx * (cb + cc * dx))


@njit(error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _active_coefficients(coeff):
    # (K, P) bool: coeff[k, p] has a term that is not zero (NaN counts; NumPy's any
    # over the last axis took ~5 us for a 38-component, 8-image stamp)
    ncomp, npar, nacc = coeff.shape
    active = np.zeros((ncomp, npar), dtype=np.bool_)
    for k in range(ncomp):
        for p in range(npar):
            for m in range(nacc):
                if coeff[k, p, m] != 0.0:
                    active[k, p] = True
                    break
    return active


@njit(parallel=True, **_JIT)
def _jacobian_parallel(out, table, coeff, active, edges, n2):
    # rows edges[b]..edges[b + 1] as band b (_band_edges)
    for b in prange(edges.shape[0] - 1):
        _jacobian_rows(out, table, coeff, active, edges[b], edges[b + 1], n2)


@njit(**_JIT_UNFUSED)
def _accumulate_moments(t, rimg, n2, out, j0, j1, s, nch, cs):
    # The six sums of a component without the fourth-order factor.  Moments in
    # the pixel offsets d: per column, three sums over the rows (R E, R E dy,
    # R E dy^2) in the scratch rows cs; the column sums in dx then give all six,
    # and the sums in v = F d follow exactly from F at the end.  Summing per
    # column keeps the vector accumulators in memory rather than reducing them
    # at the end of every row.
    dt = rimg.dtype.type
    qmax = dt(n2)
    fxx = dt(t[_FXX])
    fxy = dt(t[_FXY])
    fyy = dt(t[_FYY])
    x0 = dt(s - t[_MX])
    n = nch * CHUNK
    c0 = cs[0, :n]
    c1 = cs[1, :n]
    c2 = cs[2, :n]
    c0[:] = 0.0
    c1[:] = 0.0
    c2[:] = 0.0
    for j in range(j0, j1 + 1):
        row = rimg[j, s:s + n]
        dy = dt(j - t[_MY])
        b = dt(2.0) * fxy * dy
        cq = fyy * dy * dy
        for m in range(nch):
            for l in range(CHUNK):
                i = m * CHUNK + l
                re = row[i] * _gauss(x0 + dt(i), b, cq, fxx, qmax)
                red = re * dy
                c0[i] += re
                c1[i] += red
                c2[i] += red * dy
    _moments_out(t, float(x0), n, cs, out)


@njit(forceinline=True, **_JIT_SUMS)
def _moments_out(t, x0f, n, cs, out):
    # The six sums from the per-column sums cs[0..2, :n] (R E, R E dy, R E dy^2)
    # of a row segment starting at dx = x0f.
    c0 = cs[0, :n]
    c1 = cs[1, :n]
    c2 = cs[2, :n]
    m0 = 0.0
    mx = 0.0
    my = 0.0
    mxx = 0.0
    mxy = 0.0
    myy = 0.0
    for i in range(n):
        dx = x0f + i
        a0 = float(c0[i])
        a1 = float(c1[i])
        m0 += a0
        mx += a0 * dx
        mxx += a0 * dx * dx
        my += a1
        mxy += a1 * dx
        myy += float(c2[i])
    a, bb, cc = t[_FXX], t[_FXY], t[_FYY]
    out[0] += m0
    out[1] += a * mx + bb * my
    out[2] += bb * mx + cc * my
    out[3] += a * a * mxx + 2.0 * a * bb * mxy + bb * bb * myy
    out[4] += a * bb * mxx + (a * cc + bb * bb) * mxy + bb * cc * myy
    out[5] += bb * bb * mxx + 2.0 * bb * cc * mxy + cc * cc * myy


@njit(forceinline=True, **_JIT)
def _accumulate_rec(t, rimg, n2, out, j0, j1, i0, i1, s, nch, cs, sc, keep, k):
    # _accumulate_moments by the recurrence of _render_rec (_sums_walk).
    # keep: None, or the start rows that _render_rec kept when it rendered the
    # same table into an image of this width (rows 0..ny-1): taken instead of
    # computing them again (the benchmark stamp's chi2 + gradient: ~2 us of 55;
    # copied by slice assignment, which checks for overlap and copies through a
    # temporary, they had saved nothing).
    dt = rimg.dtype.type
    n = nch * CHUNK
    x0 = s - t[_MX]
    fyy = t[_FYY]
    f = sc[0, :n]
    r = sc[1, :n]
    c0 = cs[0, :n]
    c1 = cs[1, :n]
    c2 = cs[2, :n]
    c0[:] = 0.0
    c1[:] = 0.0
    c2[:] = 0.0
    floor = _ellipse_floor(n2, dt)
    pf = sc[2:3]
    _row_factors(pf, 0, fyy, j1 - j0 + 1)
    for js in range(j0, j1 + 1, RESTART):
        je = min(js + RESTART, j1 + 1)
        if keep is not None and js == j0:
            _copy_row(keep[k, 0, :n], f)
            _copy_row(keep[k, 1, :n], r)
        else:
            _rec_start(t, js - t[_MY], x0, i0 - s, i1 - s, n, sc, 0, 1)
        _sums_walk(rimg, js, s, je - js, n, sc, cs, pf, t[_MY], floor)
    _moments_out(t, x0, n, cs, out)


@njit(pipeline_class=_NoAliasCompiler, **_JIT)
def _copy_box_row(row, rb, dxb, dyb, x0, dy):
    # one row of a fourth-order component's box into _accumulate_one's flat
    # copies: residuals, dx = x0 + i and dy (the four arrays must not overlap)
    dt = row.dtype.type
    for i in range(row.shape[0]):
        rb[i] = row[i]
        dxb[i] = x0 + dt(_col(i))
        dyb[i] = dy


@njit(forceinline=True, **_JIT_SUMS)
def _accumulate_one(t, rimg, n2, out, cs, sc, keep=None, k=0):
    # The NACC sums of one component (layout in _common), accumulated in the
    # working dtype and added to ``out`` (float64); scratch of the working dtype:
    # cs (3, nx), sc (3, max(nx + START_SLACK, RESTART)): f, r and the row
    # factors.  Inlined (forceinline) into _accumulate_block, as are
    # _accumulate_rec and _moments_out into it: called, their array arguments'
    # reference counts had cost ~50 ns a component (the benchmark stamp's chi2 +
    # gradient 31.6-32.3 -> 29.1-29.6 us, the sums the same bit for bit).
    dt = rimg.dtype.type
    ny, nx = rimg.shape
    # the render's choice of kernel (_render_rows), which keep's start rows follow
    j0, j1, i0, i1, kind = _box_kind(t, ny, nx, 0, rimg.itemsize)
    if kind == 0:
        return
    s, nch = _chunks(i0, i1)
    if kind == 2:
        _accumulate_rec(t, rimg, n2, out, j0, j1, i0, i1, s, nch, cs, sc, keep, k)
        return
    if kind == 3:
        _accumulate_moments(t, rimg, n2, out, j0, j1, s, nch, cs)
        return
    qmax = dt(n2)
    fxx = dt(t[_FXX])
    fxy = dt(t[_FXY])
    fyy = dt(t[_FYY])
    s0 = dt(0.0)
    s1 = dt(0.0)
    s2 = dt(0.0)
    s3 = dt(0.0)
    s4 = dt(0.0)
    s5 = dt(0.0)
    # the fourth-order factor: sums in v, with the 14 accumulators of _common
    cst = dt(_fourth_cst(t))
    c4 = dt(_C4)
    six_fxx = dt(6.0 * t[_FXX])
    six_fyy = dt(6.0 * t[_FYY])
    twelve_fxx = dt(12.0 * t[_FXX])
    twelve_fyy = dt(12.0 * t[_FYY])
    s6 = dt(0.0)
    s7 = dt(0.0)
    s8 = dt(0.0)
    s9 = dt(0.0)
    s10 = dt(0.0)
    s11 = dt(0.0)
    s12 = dt(0.0)
    s13 = dt(0.0)
    # the box as one flat loop over copies of its residuals and offsets, so that
    # the 14 vector accumulators are reduced once per component, not once per row
    # (the 9 such components of the benchmark stamp: 11.6 -> 8.4 us in float32),
    # and only over the box's own columns, not its whole chunks (8.4 -> 6.0 us)
    x0 = dt(i0 - t[_MX])
    n = i1 - i0 + 1
    npx = (j1 - j0 + 1) * n
    buf = np.empty((3, npx), dtype=rimg.dtype)
    rb = buf[0]
    dxb = buf[1]
    dyb = buf[2]
    for j in range(j0, j1 + 1):
        o = (j - j0) * n
        _copy_box_row(rimg[j, i0:i1 + 1], rb[o:o + n], dxb[o:o + n], dyb[o:o + n], x0,
                      dt(j - t[_MY]))
    for i in range(npx):
        e, p, vx, vy = _gauss4(dxb[i], dyb[i], fxx, fxy, fyy, cst, c4, six_fxx, six_fyy, qmax)
        re = rb[i] * e
        rep = re * p
        vx2 = vx * vx
        vy2 = vy * vy
        s0 += rep
        s1 += rep * vx
        s2 += rep * vy
        s3 += rep * vx2
        s4 += rep * vx * vy
        s5 += rep * vy2
        rpx = re * (vx * (dt(4.0) * vx2 - twelve_fxx))
        rpy = re * (vy * (dt(4.0) * vy2 - twelve_fyy))
        s6 += rpx
        s7 += rpy
        s8 += rpx * vx
        s9 += rpx * vy
        s10 += rpy * vx
        s11 += rpy * vy
        s12 += re * (vx2 - fxx)
        s13 += re * (vy2 - fyy)
    out[6] += s6
    out[7] += s7
    out[8] += s8
    out[9] += s9
    out[10] += s10
    out[11] += s11
    out[12] += s12
    out[13] += s13
    out[0] += s0
    out[1] += s1
    out[2] += s2
    out[3] += s3
    out[4] += s4
    out[5] += s5


@njit(**_JIT)
def _accumulate_scratch(rimg):
    # (cs, sc): the work rows of _accumulate_one for one thread
    nx = rimg.shape[1]
    return np.empty((3, nx), dtype=rimg.dtype), np.empty((3, max(nx + START_SLACK, RESTART)),
                                                         dtype=rimg.dtype)


@njit(**_JIT)
def _accumulate_block(table, rimg, n2, acc, first, step, keep=None):
    # components first, first + step, ... of table, with one scratch
    cs, sc = _accumulate_scratch(rimg)
    for k in range(first, table.shape[0], step):
        _accumulate_one(table[k], rimg, n2, acc[k], cs, sc, keep, k)


@njit(**_JIT)
def _accumulate_serial(table, rimg, n2, acc, keep=None):
    _accumulate_block(table, rimg, n2, acc, 0, 1, keep)


@njit(parallel=True, **_JIT)
def _accumulate_parallel(table, rimg, n2, acc, nblock):
    # components interleaved over nblock blocks, each with its own scratch
    for b in prange(nblock):
        _accumulate_block(table, rimg, n2, acc, b, nblock)


@njit(pipeline_class=_NoAliasCompiler, **_JIT_SUMS)
def _residual_row(mr, dr, wr, b):
    # R = 2 w (m - (d - b)) in place of the model row mr; returns the row's chi2
    # (float64).  mr must not overlap dr or wr (_NoAliasCompiler): with R written
    # to the model's own row through a second array argument, the vectoriser's
    # overlap check failed at run time and the row ran as a scalar loop (the
    # 64x64 stamp's residual: 3.5 us, now 1.5)
    dt = mr.dtype.type
    s = 0.0
    for i in range(mr.shape[0]):
        r = mr[i] - (dr[i] - b)
        wrr = wr[i] * r
        mr[i] = dt(2.0) * wrr
        s += wrr * r
    return s


@njit(**_JIT)
def _residual_rows(model, data, weight, j, offset=0.0):
    # row j of the model replaced by R = 2 w (model - (data - offset)); returns
    # its chi2 (float64).  model must not overlap data or weight.
    return _residual_row(model[j], data[j], weight[j], model.dtype.type(offset))


@njit(**_JIT)
def _residual_serial(model, data, weight):
    s = 0.0
    for j in range(model.shape[0]):
        s += _residual_rows(model, data, weight, j)
    return s


@njit(parallel=True, **_JIT)
def _residual_parallel(model, data, weight):
    ny = model.shape[0]
    part = np.zeros(ny)
    for j in prange(ny):
        part[j] = _residual_rows(model, data, weight, j)
    return part.sum()


@njit(**_JIT)
def _exposure_rtasks(tables, toff, shapes, nb):
    # Row tasks (nb * E, 3) of _exposures_chi2: (e, y0, y1), exposure e's rows in
    # nb bands of equal work (_band_edges), band-major (band 0 of every exposure,
    # then band 1, ...).  With nb the number of threads, Numba's static split of
    # the task loop gives thread b band b of every exposure: 1/nb of the work.
    ne = shapes.shape[0]
    tasks = np.empty((nb * ne, 3), dtype=np.int64)
    for e in range(ne):
        edges = _band_edges(tables[toff[e]:toff[e + 1]], shapes[e, 0], shapes[e, 1], nb,
                            ROW_PIXEL_COST)
        for b in range(nb):
            tasks[b * ne + e, 0] = e
            tasks[b * ne + e, 1] = edges[b]
            tasks[b * ne + e, 2] = edges[b + 1]
    return tasks


@njit(parallel=True, **_JIT_SUMS)
def _exposures_chi2(model, data, weight, tables, toff, shapes, ioff, rtasks, atasks, n2,
                    background, fit_background, gradient, acc):
    # chi2 (and gradient sums) of several exposures in one call: images packed
    # in flat arrays (exposure e: ioff[e], shape shapes[e], width a multiple of
    # CHUNK), tables stacked (exposure e: rows toff[e]..toff[e+1]).  Row bands
    # rtasks (e, y0, y1) are rendered, their residuals taken, and component
    # blocks atasks (e, first, step) accumulated, each phase over all threads.
    # Neighbours are walked over the union of their boxes where that costs less
    # (_pair_box; the gradient sums keep no start rows): the benchmark scene
    # fit's (benchmarks/scene.py: 9 exposures of 128x128) float64 chi2 took
    # 0.89-0.98 -> 0.79-0.80 ms on two threads (alternated runs).
    ne = shapes.shape[0]
    nr = rtasks.shape[0]
    sums = np.zeros((nr, 3))
    for q in prange(nr):
        e, y0, y1 = rtasks[q, 0], rtasks[q, 1], rtasks[q, 2]
        ny, nx = shapes[e, 0], shapes[e, 1]
        img = model[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
        img[y0:y1, :] = 0.0
        _render_rows(img, tables[toff[e]:toff[e + 1]], y0, y1, n2, None, True)
        if fit_background[e]:
            d = data[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
            w = weight[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
            swr = 0.0
            sw = 0.0
            for j in range(y0, y1):
                for i in range(nx):
                    swr += float(w[j, i]) * (float(d[j, i]) - float(img[j, i]))
                    sw += float(w[j, i])
            sums[q, 0] = swr
            sums[q, 1] = sw
    bg = background.copy()
    for e in range(ne):
        if fit_background[e]:
            swr = 0.0
            sw = 0.0
            for q in range(nr):
                if rtasks[q, 0] == e:
                    swr += sums[q, 0]
                    sw += sums[q, 1]
            bg[e] = swr / sw
    for q in prange(nr):
        e, y0, y1 = rtasks[q, 0], rtasks[q, 1], rtasks[q, 2]
        ny, nx = shapes[e, 0], shapes[e, 1]
        img = model[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
        d = data[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
        w = weight[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
        c = 0.0
        for j in range(y0, y1):
            c += _residual_rows(img, d, w, j, bg[e])
        sums[q, 2] = c
    chi2 = np.zeros(ne)
    for q in range(nr):
        chi2[rtasks[q, 0]] += sums[q, 2]
    if gradient:
        for q in prange(atasks.shape[0]):
            e, first, step = atasks[q, 0], atasks[q, 1], atasks[q, 2]
            ny, nx = shapes[e, 0], shapes[e, 1]
            img = model[ioff[e]:ioff[e] + ny * nx].reshape((ny, nx))
            _accumulate_block(tables[toff[e]:toff[e + 1]], img, n2, acc[toff[e]:toff[e + 1]],
                              first, step)
    return chi2, bg


@njit(error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _bad_pixel_counts(data, weight):
    # Backend.bad_pixel_counts in one pass (no fastmath: it tests for NaN and inf)
    nw = 0
    nneg = 0
    nd = 0
    ndw = 0
    for j in range(data.shape[0]):
        for i in range(data.shape[1]):
            w = weight[j, i]
            d = data[j, i]
            if not math.isfinite(w):
                nw += 1
            elif w < 0:
                nneg += 1
            if not math.isfinite(d):
                nd += 1
                if w > 0:
                    ndw += 1
    return nw, nneg, nd, ndw


@njit(fastmath={"reassoc"}, error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _pixels_clean(data, weight):
    # True when every weight is finite and >= 0 and every datum finite: the sum
    # of d * 0 + w * 0 + (w - |w|) is then 0, and otherwise NaN (a non-finite
    # value times 0) or negative (2 w for a negative w; a sum of negative terms
    # cannot round to 0).  Only reassociation, so that the sum vectorises and
    # NaN, inf and the multiplications by 0 are kept; 0.9 us on 64x64 against
    # 1.5 us for the branching counts of _bad_pixel_counts, which are then
    # needed only when this is False.
    dt = data.dtype.type
    zero = dt(0.0)
    acc = zero
    for j in range(data.shape[0]):
        dr = data[j]
        wr = weight[j]
        for i in range(dr.shape[0]):
            w = wr[i]
            acc += dr[i] * zero + w * zero + (w - abs(w))
    return acc == zero


@njit(error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _pixel_counts(data, weight):
    # Backend.bad_pixel_counts: the vectorised clean test first, the branching
    # counts only when it fails (1024 x 1024: 0.14 -> 0.08 ms in float32, 0.20 ->
    # 0.15 ms in float64)
    return (0, 0, 0, 0) if _pixels_clean(data, weight) else _bad_pixel_counts(data, weight)


#: Components per block of _prepare's vectorised divisions and square roots
PREPARE_BLOCK = 64


@njit(error_model="numpy", boundscheck=False, cache=True)
def _prepare(amp, mean, cov, n_sigma, mode, threshold):
    # _common.prepare, compiled (no fastmath: the same float64 arithmetic, bit for
    # bit).  The divisions and square roots, which cost most of it, are taken in
    # blocks of PREPARE_BLOCK components over contiguous rows, where they vectorise;
    # one loop per component took 57 us for the 5400 components of the benchmark
    # scene, the blocks 35 us.
    k = amp.shape[0]
    table = np.empty((k, c.NPAR))
    box = 0.0 if mode == 0 else BOX_VARIANCE
    nb = max(min(k, PREPARE_BLOCK), 1)
    # rows: sxx, sxy, syy, det, then fxx, fxy, fyy, norm, 1 / det, hy, hx
    w = np.empty((11, nb))
    for s in range(0, k, nb):
        n = min(nb, k - s)
        for q in range(n):
            i = s + q
            sxx = cov[i, 0, 0] + box
            sxy = 0.5 * (cov[i, 0, 1] + cov[i, 1, 0])
            syy = cov[i, 1, 1] + box
            w[0, q] = sxx
            w[1, q] = sxy
            w[2, q] = syy
            w[3, q] = sxx * syy - sxy * sxy
        for q in range(n):
            det = w[3, q]
            w[4, q] = w[2, q] / det
            w[5, q] = -w[1, q] / det
            w[6, q] = w[0, q] / det
            w[7, q] = 1.0 / (2.0 * math.pi * math.sqrt(det))
            w[8, q] = 1.0 / det
            w[9, q] = n_sigma * math.sqrt(w[2, q])
            w[10, q] = n_sigma * math.sqrt(w[0, q])
        for q in range(n):
            i = s + q
            t = table[i]
            t[_AMP] = amp[i]
            t[_MX] = mean[i, 0]
            t[_MY] = mean[i, 1]
            t[_SXX] = w[0, q]
            t[_SXY] = w[1, q]
            t[_SYY] = w[2, q]
            t[_FXX] = w[4, q]
            t[_FXY] = w[5, q]
            t[_FYY] = w[6, q]
            t[_NORM] = w[7, q]
            use4 = 0.0
            if mode == 2:
                size = 3.0 * abs(_C4) * (w[4, q] ** 2 + w[6, q] ** 2)
                use4 = 1.0 if size >= threshold else 0.0
            t[_USE4] = use4
            t[_INVDET] = w[8, q]
            t[_HY] = w[9, q]
            t[_HX] = w[10, q]
    return table


@njit(error_model="numpy", cache=True)
def _component_gradient(t, s, res):
    # _common.assemble_gradient for one component (table row t, accumulators s):
    # res = d / d (amp, mean_x, mean_y, C_xx, C_xy, C_yy), C_xy being one of the
    # two symmetric off-diagonal entries of the matrix gradient.
    norm = t[_NORM]
    a = t[_AMP] * norm
    fxx, fxy, fyy = t[_FXX], t[_FXY], t[_FYY]
    res[0] = norm * s[0]
    res[1] = a * (s[1] - _C4 * (s[6] * fxx + s[7] * fxy))
    res[2] = a * (s[2] - _C4 * (s[6] * fxy + s[7] * fyy))
    # g[p, q] = -F_pq s0 / 2 + Svv_pq / 2 - C4 (F_xp Spx_q + F_yp Spy_q)
    #           + 6 C4 (s12 F_xp F_xq + s13 F_yp F_yq), symmetrised
    c6 = 6.0 * _C4
    gxx = (-0.5 * fxx * s[0] + 0.5 * s[3] - _C4 * (fxx * s[8] + fxy * s[10])
           + c6 * (s[12] * fxx * fxx + s[13] * fxy * fxy))
    gyy = (-0.5 * fyy * s[0] + 0.5 * s[5] - _C4 * (fxy * s[9] + fyy * s[11])
           + c6 * (s[12] * fxy * fxy + s[13] * fyy * fyy))
    gxy = (-0.5 * fxy * s[0] + 0.5 * s[4] - 0.5 * _C4 * (fxx * s[9] + fxy * s[11]
                                                          + fxy * s[8] + fyy * s[10])
           + c6 * (s[12] * fxx * fxy + s[13] * fxy * fyy))
    res[3] = a * gxx
    res[4] = a * gxy
    res[5] = a * gyy


@njit(error_model="numpy", cache=True)
def _assemble(table, acc):
    # _common.assemble_gradient, compiled
    k = table.shape[0]
    d_amp = np.empty(k)
    d_mean = np.empty((k, 2))
    d_cov = np.empty((k, 2, 2))
    res = np.empty(6)
    for n in range(k):
        _component_gradient(table[n], acc[n], res)
        d_amp[n] = res[0]
        d_mean[n, 0] = res[1]
        d_mean[n, 1] = res[2]
        d_cov[n, 0, 0] = res[3]
        d_cov[n, 0, 1] = res[4]
        d_cov[n, 1, 0] = res[4]
        d_cov[n, 1, 1] = res[5]
    return d_amp, d_mean, d_cov


@njit(error_model="numpy", cache=True)
def _unit_gradients(table):
    # _common.Backend.unit_gradients, compiled: the gradient map is linear in the
    # accumulators, so column m is the gradient of the unit accumulator e_m
    k = table.shape[0]
    out = np.empty((k, 6, c.NACC))
    s = np.zeros(c.NACC)
    res = np.empty(6)
    for n in range(k):
        for m in range(c.NACC):
            s[m] = 1.0
            _component_gradient(table[n], s, res)
            s[m] = 0.0
            for r in range(6):
                out[n, r, m] = res[r]
            out[n, 4, m] *= 2.0
    return out


#: Images of at most this many pixels (after padding to whole chunks) may take the
#: one-call paths (_render_stamp, _chi2_stamp), which allocate their work image.
STAMP_MAX_PIXELS = 1 << 16
#: _prepare's codes of AccuracySettings.pixel_integration
_MODES = {"kurtosis": 2, "variance": 1, "none": 0}


@njit(error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _render_stamp(amp, mean, cov, n_sigma, mode, threshold, img):
    # prepare + render into a zeroed image (width a multiple of CHUNK) on one
    # thread, in one call from Python: the separate calls, their checks and
    # allocations cost 6 of the 33 us of the benchmark's float32 stamp.  (The image
    # comes from Python: a dtype argument costs Numba's dispatcher ~4 us.)
    table = _prepare(amp, mean, cov, n_sigma, mode, threshold)
    _render_rows(img, table, 0, img.shape[0], n_sigma * n_sigma)


@njit(error_model="numpy", boundscheck=False, nogil=True, cache=True)
def _chi2_stamp(amp, mean, cov, n_sigma, mode, threshold, data, weight, gradient):
    # GaussianMixture.chi2 of a small image on one thread in one call: the data
    # checks, prepare, render, residual, accumulate and assemble.  Returns
    # (bad-pixel counts, chi2, d_amp, d_mean, d_cov); with a non-finite or negative
    # weight or non-finite data nothing else is computed (the caller takes the
    # general path, which raises or masks).
    counts = _pixel_counts(data, weight)
    d_amp = np.zeros(0)
    d_mean = np.zeros((0, 2))
    d_cov = np.zeros((0, 2, 2))
    if counts[0] + counts[1] + counts[2] > 0:
        return counts, 0.0, d_amp, d_mean, d_cov
    ny, nx = data.shape
    n2 = n_sigma * n_sigma
    table = _prepare(amp, mean, cov, n_sigma, mode, threshold)
    nxp = _work_width(nx)
    # the model, then R = 2 w (model - data) in place, zero in the padding columns
    model = np.zeros((ny, nxp), dtype=data.dtype)
    # the recurrence's start rows, kept by the render for the gradient sums
    keep = np.empty((table.shape[0], 2, nxp), dtype=data.dtype) if gradient else None
    _render_rows(model, table, 0, ny, n2, keep)
    if nxp == nx:
        value = _residual_serial(model, data, weight)
    else:
        view = model[:, :nx]
        value = 0.0
        for j in range(ny):
            value += _residual_rows(view, data, weight, j)
        model[:, nx:] = 0.0
    if gradient:
        acc = np.zeros((table.shape[0], c.NACC))
        _accumulate_serial(table, model, n2, acc, keep)
        d_amp, d_mean, d_cov = _assemble(table, acc)
    return counts, value, d_amp, d_mean, d_cov


def _one_thread_surely(k, shape):
    # True when k components on an image of this shape cannot reach
    # PARALLEL_MIN_WORK even if every one filled a quarter of it (no estimate needed)
    return shape[0] * shape[1] * 0.25 < PARALLEL_MIN_WORK / max(k, 1)


@functools.lru_cache(maxsize=1024)
def _stamp_width(ny, nx, k):
    # The work width (_work_width) of an (ny, nx) image of k components when it
    # takes the one-call paths (_render_stamp, _chi2_stamp: at most
    # STAMP_MAX_PIXELS pixels, surely one thread), else 0; cached, since these
    # checks in Python cost ~0.3 us of a 12 us float32 stamp
    if ny * _padded_width(nx) > STAMP_MAX_PIXELS or not _one_thread_surely(k, (ny, nx)):
        return 0
    return _work_width(nx)


def estimate_work(table, shape, limit=math.inf):
    """Approximate number of Gaussian-pixel evaluations (ellipse areas, clipped boxes).

    Parameters
    ----------
    table : array, shape (K, NPAR)
        Prepared components (:meth:`NumbaBackend.prepare`).
    shape : tuple of int
        (ny, nx) of the image.
    limit : float, optional
        Stop adding once the sum reaches this (checked every 256 components):
        the result is then at least ``limit`` but not the whole sum.  Enough to
        decide whether a call is worth its threads.

    Returns
    -------
    float
        The sum over components of pi/4 times the area of the culling box
        clipped to the image, in pixels.
    """
    if table.shape[0] == 0:
        return 0.0
    return _estimate_work(np.ascontiguousarray(table, dtype=np.float64), shape[0], shape[1],
                          float(limit))


@njit(error_model="numpy", cache=True)
def _estimate_work(table, ny, nx, limit):
    # estimate_work compiled: one loop instead of ten NumPy passes (the benchmark
    # scene's 5400 components: 45 -> ~9 us of a 1.2 ms render; ~0.1 us with the
    # limit of _threads, reached within the first block)
    total = 0.0
    k = table.shape[0]
    for s in range(0, k, 256):
        for i in range(s, min(s + 256, k)):
            mx, my, hx, hy = table[i, _MX], table[i, _MY], table[i, _HX], table[i, _HY]
            wx = max(min(mx + hx, nx) - max(mx - hx, 0.0), 0.0)
            wy = max(min(my + hy, ny) - max(my - hy, 0.0), 0.0)
            total += 0.785 * wx * wy
        if total >= limit:
            break
    return total


class NumbaBackend(c.Backend):
    """CPU backend compiled with Numba (float32 and float64, multi-threaded).

    Uses ``numba.get_num_threads()`` threads (set ``NUMBA_NUM_THREADS`` to change).
    The table preparation and gradient assembly are compiled too (the same
    arithmetic as :mod:`astromix.backends._common`), which matters for small
    stamps, where they would otherwise cost as much as the pixels.
    """

    name = "numba"
    xp = np

    def prepare(self, amp, mean, cov, settings):
        """Per-Gaussian table (float64, (K, NPAR)); see :func:`_common.prepare`.

        Compiled; the same float64 arithmetic as :func:`_common.prepare`, bit for bit.

        Parameters
        ----------
        amp : array-like, shape (K,)
            Amplitudes (total flux of each component).
        mean : array-like, shape (K, 2)
            Centres (x, y) [px].
        cov : array-like, shape (K, 2, 2)
            Covariances [px^2].
        settings : AccuracySettings
            ``n_sigma``, ``pixel_integration`` and ``fourth_order_threshold``
            are used.

        Returns
        -------
        table : ndarray, float64, shape (K, NPAR)
            The per-Gaussian table described in :mod:`astromix.backends._common`.
        """
        mode = _MODES[settings.pixel_integration]
        return _prepare(np.ascontiguousarray(amp, dtype=np.float64),
                        np.ascontiguousarray(mean, dtype=np.float64),
                        np.ascontiguousarray(cov, dtype=np.float64),
                        settings.n_sigma, mode, settings.fourth_order_threshold)

    @staticmethod
    def _stamp_mode(amp, shape, settings):
        # the pixel-integration mode code of _prepare when (amp, shape) takes the
        # one-call path (a small image that _threads would keep on one thread
        # without estimating the work), else None
        if not _stamp_width(shape[0], shape[1], len(amp)):
            return None
        return _MODES[settings.pixel_integration]

    def render_stamp(self, amp, mean, cov, shape, dtype, settings):
        """Small images (up to ``STAMP_MAX_PIXELS``, one thread): prepare and render in
        one compiled call; None otherwise.  See :meth:`Backend.render_stamp`.

        Parameters
        ----------
        amp : ndarray, float64, shape (K,)
            Amplitudes (C-contiguous, as :class:`astromix.GaussianMixture` keeps them).
        mean : ndarray, float64, shape (K, 2)
            Centres (x, y) [px].
        cov : ndarray, float64, shape (K, 2, 2)
            Covariances [px^2].
        shape : tuple of int
            ``(ny, nx)`` of the image [px].
        dtype : {numpy.float32, numpy.float64}
            Working precision and dtype of the result.
        settings : AccuracySettings

        Returns
        -------
        image : ndarray, shape (ny, nx), dtype ``dtype``, or None
            The pixel-integrated image, as from :meth:`prepare` and
            :meth:`render`; None when the image (padded to whole chunks) has more
            than ``STAMP_MAX_PIXELS`` pixels or could need more than one thread.
        """
        ny, nx = shape
        nxp = _stamp_width(ny, nx, len(amp))
        if not nxp:
            return None
        mode = _MODES[settings.pixel_integration]
        img = np.zeros((ny, nxp), dtype=dtype)
        _render_stamp(amp, mean, cov, settings.n_sigma, mode, settings.fourth_order_threshold,
                      img)
        return img if nxp == nx else np.ascontiguousarray(img[:, :nx])

    def chi2_stamp(self, amp, mean, cov, data, weight, settings, gradient):
        """Small images (as :meth:`render_stamp`): the pixel checks, render, residual and
        gradient in one compiled call; None otherwise or when a pixel needs the
        general path.  See :meth:`Backend.chi2_stamp`.

        Parameters
        ----------
        amp, mean, cov : ndarray, float64, shapes (K,), (K, 2), (K, 2, 2)
            As for :meth:`render_stamp` (centres [px], covariances [px^2]).
        data : ndarray, shape (ny, nx), float32 or float64
            The image.
        weight : ndarray, shape (ny, nx), the dtype of ``data``
            Inverse variance per pixel.
        settings : AccuracySettings
        gradient : bool
            Also compute the gradient.

        Returns
        -------
        chi2 : float, or (chi2, (d_amp, d_mean, d_cov)) with ``gradient``; or None
            ``sum w (model - data)**2`` and its derivatives (float64, shapes
            (K,), (K, 2), (K, 2, 2)), as :meth:`astromix.GaussianMixture.chi2`
            returns them.  None when the image is too large for this path, or
            any weight is non-finite or negative or any datum non-finite (the
            general path then raises or masks).
        """
        mode = self._stamp_mode(amp, data.shape, settings)
        if mode is None:
            return None
        counts, value, d_amp, d_mean, d_cov = _chi2_stamp(
            amp, mean, cov, settings.n_sigma, mode, settings.fourth_order_threshold,
            np.ascontiguousarray(data), np.ascontiguousarray(weight), bool(gradient))
        if counts[0] or counts[1] or counts[2]:
            return None
        if not gradient:
            return float(value)
        return float(value), (d_amp, d_mean, d_cov)

    def assemble_gradient(self, table, acc):
        """(d_amp, d_mean, d_cov) from accumulators; see :func:`_common.assemble_gradient`.

        Parameters
        ----------
        table : ndarray, float64, shape (K, NPAR)
            The table the accumulators were taken with.
        acc : array-like, shape (K, NACC)
            The accumulators from :meth:`accumulate` (converted to float64).

        Returns
        -------
        d_amp : ndarray, float64, shape (K,)
            Derivative with respect to each amplitude.
        d_mean : ndarray, float64, shape (K, 2)
            With respect to each centre (x, y) [per px].
        d_cov : ndarray, float64, shape (K, 2, 2)
            The symmetric matrix gradient with respect to each covariance
            [per px^2].
        """
        return _assemble(np.ascontiguousarray(table), np.ascontiguousarray(acc, dtype=np.float64))

    def unit_gradients(self, table):
        """(K, 6, NACC) map from accumulator terms to component gradients (compiled).

        See :meth:`Backend.unit_gradients`.

        Parameters
        ----------
        table : ndarray, shape (K, NPAR)
            Prepared components (:meth:`prepare`).

        Returns
        -------
        ndarray, float64, shape (K, 6, NACC)
            For each component, the derivatives of a pixel's value with respect
            to (amp, mean_x, mean_y, C_xx, C_xy, C_yy) per unit accumulator term
            (the C_xy row counting both off-diagonal entries).
        """
        return _unit_gradients(np.ascontiguousarray(table, dtype=np.float64))

    @staticmethod
    def _threads(table, shape, threads=None):
        if threads == 1:
            return 1  # the caller parallelises (e.g. over exposures)
        if _one_thread_surely(table.shape[0], shape):
            return 1
        nthreads = numba.get_num_threads()
        if (nthreads > 1 and estimate_work(table, shape, PARALLEL_MIN_WORK) >= PARALLEL_MIN_WORK
                and _parallel_allowed()):
            _mark_parallel()
            return nthreads
        return 1

    def _padded(self, shape, dtype, key):
        """A zeroed scratch image whose width is a multiple of ``CHUNK``, or None.

        The gradient sums walk rows in whole chunks (see the module docstring);
        an image whose width is not a multiple of ``CHUNK`` is worked on in this
        wider copy, whose extra columns are zero.  (The render widens its own
        work image further where rows would alias: see ``render``.)
        """
        ny, nx = shape
        nxp = _padded_width(nx)
        if nxp == nx:
            return None
        work = self.scratch((ny, nxp), dtype, key)
        work.fill(0)
        return work

    def render(self, table, shape, dtype, settings, out=None, threads=None):
        """Render a prepared mixture into a new (ny, nx) image of ``dtype`` (or ``out``).

        ``threads=1`` runs on the calling thread only (the kernels release the GIL,
        so callers may run several at once); by default large images use all
        of Numba's threads.

        Parameters
        ----------
        table : ndarray, shape (K, NPAR)
            The per-Gaussian table from :meth:`prepare` (converted to float64).
        shape : tuple of int
            ``(ny, nx)`` of the image [px].
        dtype : {numpy.float32, numpy.float64}
            Working precision and dtype of the result.
        settings : AccuracySettings
            Only ``n_sigma`` is used here (the pixel-integration mode is already
            in the table).
        out : ndarray, shape (ny, nx), dtype ``dtype``, optional
            Array to render into (every pixel overwritten).  A new array if omitted.
        threads : int, optional
            1: the calling thread only.  Otherwise (default None) all of Numba's
            threads when the work reaches ``PARALLEL_MIN_WORK`` and
            :meth:`parallel_available`, else one.

        Returns
        -------
        image : ndarray, shape (ny, nx), dtype ``dtype``
            The pixel-integrated mixture, in the units of the amplitudes
            (``out`` when given).
        """
        shape = ny, nx = tuple(shape)
        nw = _work_width_py(nx)
        # the walks need C-contiguous rows that do not alias (_work_width)
        direct = nw == nx and (out is None or out.flags.c_contiguous)
        if direct and out is None:
            img = np.zeros(shape, dtype=dtype)
        elif direct:
            img = out
            img.fill(0)
        else:
            # rendered into a work image (its rows zeroed, then copied, by each
            # band: _render_band), whose rows start where the kernels can use them
            img = np.empty(shape, dtype=dtype) if out is None else out
        work = img if direct else self.scratch((ny, nw), img.dtype, "render-pad")
        copy = None if direct else img
        table = np.ascontiguousarray(table, dtype=np.float64)
        n2 = settings.n_sigma ** 2
        nthreads = self._threads(table, shape, threads)
        if nthreads == 1:
            _render_band(work, table, 0, ny, n2, copy)
        else:
            # one band per thread: with bands of equal work, more bands only add
            # start rows (uniform benchmark scene: 2.6-2.8 ms in 2 bands, 2.7-3.3 in 8)
            nband = min(ny, nthreads)
            # (a band zeroes and copies its rows of a widened work image: their cost)
            edges = _band_edges(table, ny, nw, nband, 0.0 if copy is None else ROW_PIXEL_COST)
            _render_parallel(work, table, edges, n2, copy)
        return img

    def jacobian(self, table, coeff, shape, settings, threads=None):
        """Jacobian images ``(P, ny, nx)`` float64 of a model; see :meth:`Backend.jacobian`.

        One pass over each component's culling box per row evaluates the
        Gaussian and its polynomial terms once and adds them to every
        parameter's image; row bands run in parallel on large images.  (Its
        rows are not walked in whole chunks: extending the short rows of small
        components to 16 pixels made the eight parameter passes cost more than
        the remainder loops they save, 0.31 -> 0.45 ms on the Sersic stamp.)

        Parameters
        ----------
        table : ndarray, shape (K, NPAR)
            The per-Gaussian table (converted to float64).
        coeff : ndarray, shape (K, P, NACC)
            Chains each component's accumulator terms to the model's P
            parameters (see :func:`astromix.backends._common.jacobian_points`).
        shape : tuple of int
            ``(ny, nx)`` of the images [px].
        settings : AccuracySettings
            Only ``n_sigma`` is used.
        threads : int, optional
            As for :meth:`render`.

        Returns
        -------
        ndarray, float64, shape (P, ny, nx)
            The derivative of each pixel's value with respect to each parameter.
        """
        table = np.ascontiguousarray(table, dtype=np.float64)
        coeff = np.ascontiguousarray(coeff, dtype=np.float64)
        ny, nx = shape
        out = np.zeros((coeff.shape[1], ny, nx))
        active = _active_coefficients(coeff)
        n2 = float(settings.n_sigma ** 2)
        # the same threshold as render (not weighted by the number of images: a 64x64
        # stamp's 8 images take 0.33 ms on one thread, 0.17 ms on two, but 2.6-7.8 ms
        # when another process holds one of the two cores)
        nthreads = self._threads(table, shape, threads)
        if nthreads == 1:
            _jacobian_rows(out, table, coeff, active, 0, ny, n2)
        else:
            nband = min(ny, nthreads)
            _jacobian_parallel(out, table, coeff, active, _band_edges(table, ny, nx, nband), n2)
        return out

    def bad_pixel_counts(self, data, weight):
        """:meth:`Backend.bad_pixel_counts` in compiled passes (no temporaries).

        A vectorised test that every pixel is clean (``_pixels_clean``) comes
        first; the branching counts are taken only when it fails
        (``_pixel_counts``, as the one-call chi2 does).

        Parameters
        ----------
        data, weight : ndarray, shape (ny, nx), the same dtype
            The image and its inverse variance.

        Returns
        -------
        counts : tuple of 4 int
            Pixels with a non-finite weight, with a negative weight, with
            non-finite data, and with non-finite data and a positive weight.
        """
        return tuple(int(v) for v in _pixel_counts(data, weight))

    def parallel_available(self):
        """True when this process may run the parallel kernels on more than one thread.

        False with one Numba thread (e.g. ``numba.set_num_threads(1)`` in a
        worker) and in a process forked from one that had run them (see
        :func:`_parallel_allowed`).

        Returns
        -------
        bool
        """
        return numba.get_num_threads() > 1 and _parallel_allowed()

    def exposures_layout(self, shapes, nthreads=None):
        """Packing of several images for :meth:`exposures_chi2`.

        Parameters
        ----------
        shapes : sequence of (ny, nx)
            The exposures' image shapes.
        nthreads : int, optional
            Threads to balance the work over (default: ``numba.get_num_threads()``).

        Returns
        -------
        layout : dict
            ``shapes`` (E, 2) with widths padded to whole chunks (``_work_width``),
            ``offsets`` (E,) into the packed arrays, ``size``, ``nbands``
            (row bands per exposure, one per thread; their edges follow each
            call's tables, see ``_exposure_rtasks``) and the component-block
            tasks ``atasks``.
        """
        nthreads = nthreads or numba.get_num_threads()
        padded = np.array([(ny, _work_width_py(nx)) for ny, nx in shapes], dtype=np.int64)
        offsets = np.zeros(len(padded), dtype=np.int64)
        offsets[1:] = np.cumsum(padded[:, 0] * padded[:, 1])[:-1]
        nb = max(1, nthreads)
        # band-major, as the row tasks (_exposure_rtasks): thread b sums block b
        # of every exposure's components
        atasks = np.array([(e, b, nb) for b in range(nb) for e in range(len(padded))],
                          dtype=np.int64)
        return {"shapes": padded, "offsets": offsets,
                "size": int(np.sum(padded[:, 0] * padded[:, 1])),
                "nbands": nb, "atasks": atasks.reshape(-1, 3)}

    def pack_images(self, images, layout, dtype):
        """The images (a sequence of (ny, nx) arrays) packed as ``layout`` says, zero-padded.

        Parameters
        ----------
        images : sequence of ndarray, shapes (ny_e, nx_e)
            One image per exposure, in the order and shapes given to
            :meth:`exposures_layout`.
        layout : dict
            From :meth:`exposures_layout`.
        dtype : {numpy.float32, numpy.float64}
            dtype of the result.

        Returns
        -------
        ndarray, shape (layout["size"],), dtype ``dtype``
            Exposure e's rows at ``layout["offsets"][e]``, each
            ``layout["shapes"][e, 1]`` wide, the padding columns zero.
        """
        out = np.zeros(layout["size"], dtype=dtype)
        for img, (ny, nxp), o in zip(images, layout["shapes"], layout["offsets"]):
            view = out[o:o + ny * nxp].reshape(ny, nxp)
            view[:, :img.shape[1]] = img
        return out

    def exposures_chi2(self, tables, layout, data, weight, background, settings,
                       gradient=True):
        """chi2 of several exposures and their gradient sums, in one parallel call.

        Only where :meth:`parallel_available` (callers take the exposures one
        by one otherwise).

        The exposures' models are rendered in row bands, their backgrounds
        (where fitted) and residuals taken, and the gradient sums accumulated
        in blocks of components, each phase spread over all of Numba's threads
        (no Python between the kernels, and the work balanced across the
        exposures).  The arithmetic is that of :meth:`render`,
        :meth:`residual` and :meth:`accumulate` per exposure.

        Parameters
        ----------
        tables : list of ndarray
            The prepared tables (K_e, NPAR) of the E exposures.
        layout : dict
            From :meth:`exposures_layout`.
        data, weight : ndarray
            The exposures' images and inverse variances packed by
            :meth:`pack_images` (float32 or float64; padding weight 0).
        background : sequence of float or None
            Per exposure, a fixed background or None to fit it (the weighted
            mean residual).
        settings : AccuracySettings
            Only ``n_sigma`` is used.
        gradient : bool, optional
            Also accumulate the gradient sums (default True).

        Returns
        -------
        chi2 : ndarray, shape (E,)
        background : ndarray, shape (E,)
            The backgrounds used.
        acc : list of ndarray (K_e, NACC) float64, or None
            The gradient sums per exposure.
        """
        toff = np.zeros(len(tables) + 1, dtype=np.int64)
        toff[1:] = np.cumsum([len(t) for t in tables])
        stacked = (np.concatenate(tables) if len(tables) else np.zeros((0, c.NPAR)))
        stacked = np.ascontiguousarray(stacked, dtype=np.float64)
        fit_bg = np.array([b is None for b in background], dtype=np.bool_)
        fixed = np.array([0.0 if b is None else float(b) for b in background])
        acc = np.zeros((stacked.shape[0], c.NACC))
        model = self.scratch((layout["size"],), data.dtype, "exposures")
        rtasks = _exposure_rtasks(stacked, toff, layout["shapes"], layout["nbands"])
        _mark_parallel()
        chi2, bg = _exposures_chi2(model, data, weight, stacked, toff, layout["shapes"],
                                   layout["offsets"], rtasks, layout["atasks"],
                                   float(settings.n_sigma ** 2), fixed, fit_bg, bool(gradient),
                                   acc)
        accs = [acc[toff[e]:toff[e + 1]] for e in range(len(tables))] if gradient else None
        return chi2, bg, accs

    def residual(self, model, data, weight, out=None):
        """Return ``(chi2, R)`` with ``R = 2 w (model - data)``; chi2 summed in float64.

        ``R`` is written to ``out`` when given (which may be ``model`` itself).

        Parameters
        ----------
        model : ndarray, shape (ny, nx), float32 or float64
            The rendered model image.
        data : array-like, shape (ny, nx)
            The image (converted to ``model``'s dtype).
        weight : array-like, shape (ny, nx)
            Inverse variance per pixel (converted to ``model``'s dtype).
        out : ndarray, shape (ny, nx), ``model``'s dtype, optional
            Where ``R`` is written; a copy of ``model`` if omitted.

        Returns
        -------
        chi2 : float
            ``sum w (model - data)**2``, summed in float64.
        R : ndarray, shape (ny, nx), ``model``'s dtype
            ``2 w (model - data)``; ``out`` when given.
        """
        data = np.ascontiguousarray(data, dtype=model.dtype)
        weight = np.ascontiguousarray(weight, dtype=model.dtype)
        if out is None:
            rimg = model.copy()
        else:
            # the kernels write R over out's rows while reading data's and
            # weight's, and are compiled on the premise that these never overlap
            rimg = out
            if np.may_share_memory(rimg, data):
                data = data.copy()
            if np.may_share_memory(rimg, weight):
                weight = weight.copy()
            if rimg is not model:
                rimg[...] = model
        if model.size >= 1 << 18 and numba.get_num_threads() > 1 and _parallel_allowed():
            _mark_parallel()
            chi2 = _residual_parallel(rimg, data, weight)
        else:
            chi2 = _residual_serial(rimg, data, weight)
        return float(chi2), rimg

    def accumulate(self, table, rimg, settings, threads=None):
        """Gradient accumulators (K, NACC) float64 for the residual image ``rimg``.

        ``threads``: as for :meth:`render`.

        Parameters
        ----------
        table : ndarray, shape (K, NPAR)
            As for :meth:`render`.
        rimg : ndarray, shape (ny, nx), float32 or float64
            ``R = 2 w (model - data)`` from :meth:`residual`; its dtype is the
            working precision of the per-pixel arithmetic.
        settings : AccuracySettings
            Only ``n_sigma`` is used.
        threads : int, optional
            As for :meth:`render`.

        Returns
        -------
        acc : ndarray, float64, shape (K, NACC)
            The sums described in :mod:`astromix.backends._common`.
        """
        table = np.ascontiguousarray(table, dtype=np.float64)
        rimg = np.ascontiguousarray(rimg)
        work = self._padded(rimg.shape, rimg.dtype, "accumulate-pad")
        if work is not None:
            work[:, :rimg.shape[1]] = rimg
        else:
            work = rimg
        acc = np.zeros((table.shape[0], c.NACC), dtype=np.float64)
        n2 = settings.n_sigma ** 2
        nthreads = self._threads(table, rimg.shape, threads)
        if nthreads == 1:
            _accumulate_serial(table, work, n2, acc)
        else:
            _accumulate_parallel(table, work, n2, acc, min(table.shape[0], 4 * nthreads))
        return acc
