"""CuPy backend: the render and gradient kernels as raw CUDA C, on an NVIDIA GPU.

The kernels reproduce :mod:`astromix.backends.numpy_backend` (see
:mod:`astromix.backends._common` for the table and accumulator layouts):

* *which* pixels a Gaussian touches is decided exactly as in the reference
  (``_common``'s culling rule): the pixels of the box ``ceil(MX - HX) ..
  floor(MX + HX)`` x ``ceil(MY - HY) .. floor(MY + HY)`` clipped to the image
  whose float64 quadratic form ``q = dx (FXX dx + FXY dy) + dy (FXY dx + FYY
  dy)`` (``dx = i - MX``, ``dy = j - MY``) is ``<= n_sigma**2``.  In float64
  ``q`` is computed with explicitly rounded operations (``__dmul_rn``,
  ``__dadd_rn``) in NumPy's order, so the compiler cannot fuse them into FMAs
  and the test agrees bit for bit with NumPy's.  In float32 ``q`` is computed
  in float32, and recomputed that way in float64 only for the pixels where a
  rigorous bound on the float32 rounding error (``32 u max|F| (|dx| +
  |dy|)^2``) leaves the comparison undecided: same pixels, at float32 speed;
* the pixel values are computed in the working precision (float32 or float64)
  from the same offsets (``dx = i - MX`` in float64, then rounded), with
  ``E = exp(-q/2)`` (CUDA's ``expf`` / ``exp``) and the fourth-order factor
  ``P`` where the table's ``USE4`` flag is set.  They agree with NumPy to a few
  units in the last place (FMA contraction in float32 and a different ``exp``).

Work decomposition:

* ``render`` (default, ``render_kernel="tiles"``): a gather.  A first kernel
  writes every component's culling box (4 int32; from ``BOX_KERNEL_MIN``
  components on, below which each tile computes them).  Then one block of
  ``TILE**2`` threads per ``TILE x TILE`` image tile, one pixel per thread:
  the block reads the boxes in batches of ``BATCH`` (coalesced 16-byte rows);
  each of the first ``BATCH`` threads tests whether its component's box meets
  the tile, and those that do are compacted, in table order, into shared
  memory (warp ballots) with their constants.  Every thread then adds their
  values at its pixel, in table order, in a register, and writes the pixel
  once: no atomics, and the same bits at every call.
* ``render`` with ``render_kernel="atomic"``: a scatter.  A component's box is
  handled in chunks of 32 rows, and only the candidates of each row are
  visited: the analytic extent of the ellipse on that row, ``cx -/+ sqrt(FXX n^2
  - dy^2 INVDET) / FXX`` with ``cx = MX - FXY dy / FXX``, widened by one pixel on
  either side (a superset, the exact test above decides) and clipped to the box.
  Warp 0 of a block computes the 32 row intervals and their prefix sum into
  shared memory, then all threads of the block stride over the flattened
  candidates of the chunk.  One block per (component, chunk of rows) pair; the
  values are added into the image with ``atomicAdd`` (float64 ``atomicAdd``
  needs compute capability >= 6.0), so the summation order, hence the last
  bits, may change from call to call.  2.4x faster than the tile render on the
  scene of ``benchmarks/render.py`` (docs/performance.rst).
* ``accumulate``: one block of ``ACC_BLOCK`` threads per component, a window
  of ``TILE`` columns x ``ACC_BLOCK / TILE`` rows stepped over its culling
  box; each thread tests its pixel at every position of the window and sums
  the 14 terms in registers in the working precision (no barrier and no search
  inside the loop), and the block reduces them in float64 (warp shuffles, then
  the per-warp partial sums in a fixed order), so the accumulators are
  deterministic.  Every row of the accumulators is written (zeros for a
  component off the image), so they need no zero-filling.
* ``render_kernel="rows"`` and ``accumulate_kernel="rows"`` (row runs): a
  thread owns ``RUN`` consecutive pixels of a row and walks them with the exact
  recurrence of a Gaussian along a row (``E`` times ``r = exp(-(vx + FXX/2))``,
  ``r`` times ``exp(-FXX)``): two ``exp`` per run.  The run's pixels are NumPy's
  exactly: those at least one pixel inside the row's analytic extent, and the
  candidates at its ends that pass NumPy's float64 test.  The render tiles are
  ``RUN * RSEG`` columns x ``BATCH / RSEG`` rows (one run per thread), the
  components split into slices (summed afterwards in a fixed order) when the
  tiles are too few to fill the GPU.  On the H100 they execute 4x fewer
  instructions than the tile render but are bound by latency, not issue (see
  docs/performance.rst), so they are not the default.
* ``residual``: one grid-stride kernel writes ``R = 2 w (model - data)`` (over
  the model, in a chi2 call) and sums, per block in float64, the chi2 terms and
  the pixels with a non-finite datum or weight or a negative weight (the pixel
  check); the host adds the per-block sums (a fixed number of blocks, so the
  same bits at every call).  CuPy's ``ReductionKernel`` was not used: it reduces
  a whole image to one number in a single block of threads (0.4 ms for 10^6
  pixels on an H100).
* ``GaussianMixture.chi2`` takes :meth:`CupyBackend.chi2_stamp`: the table,
  render, residual, accumulate and the gradient's assembly (a kernel with the
  formulas of ``_common.assemble_gradient``) are queued back to back, and the
  host waits once, for one copy of the per-block sums and the gradients into
  page-locked memory.  ``GaussianMixture.render`` takes
  :meth:`CupyBackend.render_stamp`, the table and the tile render.
* The per-Gaussian table is built on the GPU from ``GPU_PREPARE_MIN``
  components on, by a kernel that rounds every float64 operation on its own in
  NumPy's order (``__dadd_rn``, ``__ddiv_rn``, ``__dsqrt_rn``, ...), so the table
  is ``_common.prepare``'s bit for bit; below that, on the host (Numba's
  compiled version where Numba is installed, else NumPy) and copied.

The module imports without CuPy (only :class:`CupyBackend` needs it), so that
the CUDA source, :data:`CUDA_SOURCE`, can be checked with ``nvcc`` anywhere.
"""

import functools
import math

import numpy as np

from ..errors import InputError
from . import _common as c
from ._cuda import install_hint

__all__ = ["CupyBackend", "CUDA_SOURCE", "KERNEL_NAMES"]


#: Names of the ``extern "C"`` kernels in :data:`CUDA_SOURCE`, by dtype character.
KERNEL_NAMES = {
    "render": {"f": "astromix_render_f32", "d": "astromix_render_f64"},
    "render_tiles": {"f": "astromix_render_tiles_f32", "d": "astromix_render_tiles_f64"},
    "render_rows": {"f": "astromix_render_rows_f32", "d": "astromix_render_rows_f64"},
    "sum_slices": {"f": "astromix_sum_slices_f32", "d": "astromix_sum_slices_f64"},
    "accumulate": {"f": "astromix_accumulate_f32", "d": "astromix_accumulate_f64"},
    "accumulate_rows": {"f": "astromix_accumulate_rows_f32",
                        "d": "astromix_accumulate_rows_f64"},
    "residual": {"f": "astromix_residual_f32", "d": "astromix_residual_f64"},
    "prepare": {"f": "astromix_prepare", "d": "astromix_prepare"},
    "boxes": {"f": "astromix_boxes", "d": "astromix_boxes"},
    "assemble": {"f": "astromix_assemble", "d": "astromix_assemble"},
}

#: Rows of a component handled per chunk (one warp computes their intervals).
CHUNK_ROWS = 32
#: Side of the square image tile of one block of the tile render [pixels]; the
#: block has TILE**2 threads.
TILE = 16
#: Components the tile render reads per batch (a multiple of 32, <= TILE**2).
#: 256 on the H100: 164 us for the benchmark scene against 195 us with 128
#: (docs/performance.rst).
BATCH = 256
#: Pixels of one row a thread of the row-run kernels walks with the recurrence
#: (at most 32: a bit mask of them).
RUN = 16
#: Runs per tile row in the row-run render: tiles of RUN * RSEG columns x
#: BATCH / RSEG rows, one run per thread.
RSEG = 4
#: Threads per block of the accumulate kernel: a window of TILE columns x
#: ACC_BLOCK / TILE rows (16 x 16) stepped over each component's box.
ACC_BLOCK = 256
#: The row-run render splits the components into slices (summed afterwards in a
#: fixed order) until there are this many blocks per multiprocessor ...
SLICE_BLOCKS_PER_SM = 6
#: ... into at most this many slices.
MAX_SLICES = 8
#: Threads per block of the row-run accumulate kernel (one block per component).
RUN_ACC_BLOCK = 128
#: From this many components on, the tile render reads the boxes written by a
#: kernel of their own; below it, each tile computes them (one launch fewer).
BOX_KERNEL_MIN = 512
#: From this many components on, the table is built on the GPU (one copy of the
#: 7 inputs per component and a kernel, cheaper than preparing on the host and
#: copying the 14 columns); below it, on the host (the launch costs more).
GPU_PREPARE_MIN = 2048
#: Largest grid y-dimension CUDA allows (render's chunk index; larger loops).
_MAX_GRID_Y = 65535

# The column indices and constants below must match _common and settings; they
# are substituted into the source by _source() (and checked by the tests).
_CUDA_TEMPLATE = r"""
// astromix CUDA kernels: render and gradient accumulators of a prepared
// Gaussian mixture table (float64, K x NPAR, see astromix.backends._common).
// Compiled by CuPy (NVRTC) at run time; no header is included.

#define AM_NPAR @NPAR@
#define AM_NACC @NACC@
#define AM_CH 32
#define AM_MAXWARPS 32
#define AM_TILE @TILE@
#define AM_BATCH @BATCH@
#define AM_RUN @RUN@
#define AM_RSEG @RSEG@
#define AM_C4 (@BOX_C4@)

#define AM_AMP @AMP@
#define AM_MX @MX@
#define AM_MY @MY@
#define AM_SXX @SXX@
#define AM_SXY @SXY@
#define AM_SYY @SYY@
#define AM_TWO_PI (@TWO_PI@)
#define AM_3C4 (@THREE_C4@)
#define AM_FXX @FXX@
#define AM_FXY @FXY@
#define AM_FYY @FYY@
#define AM_NORM @NORM@
#define AM_USE4 @USE4@
#define AM_INVDET @INVDET@
#define AM_HY @HY@
#define AM_HX @HX@

__device__ __forceinline__ float am_exp(float x) { return expf(x); }
__device__ __forceinline__ double am_exp(double x) { return exp(x); }

// The culling box, rows j0..j1 and columns i0..i1 (inclusive) clipped to the
// image; false when it misses the image.  As _common.box: ceil(M - H), floor(M + H).
__device__ __forceinline__ bool am_box(const double* t, int ny, int nx, int* j0, int* j1,
                                       int* i0, int* i1)
{
    const double my = t[AM_MY], hy = t[AM_HY], mx = t[AM_MX], hx = t[AM_HX];
    const double a = fmax(ceil(__dsub_rn(my, hy)), 0.0);
    const double b = fmin(floor(__dadd_rn(my, hy)), (double)(ny - 1));
    const double c = fmax(ceil(__dsub_rn(mx, hx)), 0.0);
    const double d = fmin(floor(__dadd_rn(mx, hx)), (double)(nx - 1));
    if (!(b >= a) || !(d >= c)) return false;
    *j0 = (int)a;
    *j1 = (int)b;
    *i0 = (int)c;
    *i1 = (int)d;
    return true;
}

// The per-Gaussian table of astromix.backends._common.prepare, bit for bit: each
// operation rounded on its own (__d*_rn, no FMA) in NumPy's order.  Component k
// from src[7k .. 7k + 6] = (amp, mean x, mean y, cov xx, xy, yx, yy); box_var is
// the settings' box variance, kurtosis whether the fourth-order factor may apply
// (where 3 |C4| (FXX^2 + FYY^2) >= threshold).  Grid-stride, one thread per component.
extern "C" __global__ void astromix_prepare(const double* __restrict__ src, int K,
                                            double n_sigma, double box_var, int kurtosis,
                                            double threshold, double* __restrict__ table)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < K; k += gridDim.x * blockDim.x) {
        const double* s = src + 7LL * k;
        double* t = table + (long long)k * AM_NPAR;
        const double sxx = __dadd_rn(s[3], box_var);
        const double sxy = __dmul_rn(0.5, __dadd_rn(s[4], s[5]));
        const double syy = __dadd_rn(s[6], box_var);
        const double det = __dsub_rn(__dmul_rn(sxx, syy), __dmul_rn(sxy, sxy));
        const double fxx = __ddiv_rn(syy, det), fyy = __ddiv_rn(sxx, det);
        t[AM_AMP] = s[0];
        t[AM_MX] = s[1];
        t[AM_MY] = s[2];
        t[AM_SXX] = sxx;
        t[AM_SXY] = sxy;
        t[AM_SYY] = syy;
        t[AM_FXX] = fxx;
        t[AM_FXY] = __ddiv_rn(-sxy, det);
        t[AM_FYY] = fyy;
        t[AM_NORM] = __ddiv_rn(1.0, __dmul_rn(AM_TWO_PI, __dsqrt_rn(det)));
        double use4 = 0.0;
        if (kurtosis) {
            const double sq = __dadd_rn(__dmul_rn(fxx, fxx), __dmul_rn(fyy, fyy));
            const double size = __dmul_rn(AM_3C4, sq);
            use4 = size >= threshold ? 1.0 : 0.0;
        }
        t[AM_USE4] = use4;
        t[AM_INVDET] = __ddiv_rn(1.0, det);
        t[AM_HY] = __dmul_rn(n_sigma, __dsqrt_rn(syy));
        t[AM_HX] = __dmul_rn(n_sigma, __dsqrt_rn(sxx));
    }
}

// The culling box of every component into box[4k .. 4k + 3] = (j0, j1, i0, i1), or
// (0, -1, 0, -1) when it misses the image (so that no tile meets it).  Grid-stride,
// one thread per component.  The tile render reads these 16-byte rows (coalesced)
// instead of recomputing every box from the table in every tile.
extern "C" __global__ void astromix_boxes(const double* __restrict__ table, int K, int ny,
                                          int nx, int* __restrict__ box)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < K; k += gridDim.x * blockDim.x) {
        int j0 = 0, j1 = -1, i0 = 0, i1 = -1;  // am_box leaves them when it returns false
        am_box(table + (long long)k * AM_NPAR, ny, nx, &j0, &j1, &i0, &i1);
        reinterpret_cast<int4*>(box)[k] = make_int4(j0, j1, i0, i1);
    }
}

// The ellipse's analytic extent on the row at dy = j - MY (centre cx = MX - FXY dy
// / FXX, half-width sqrt(FXX n^2 - INVDET dy^2) / FXX), widened by one pixel on
// either side and clipped to lo_min .. hi_max: the float64 numbers *a .. *b.
__device__ __forceinline__ void am_row_extent(double mx, double fxx, double fxy, double invdet,
                                              double nn, double dy, double lo_min,
                                              double hi_max, double* a, double* b)
{
    const double disc = fmax(fxx * nn - dy * dy * invdet, 0.0);
    const double half = sqrt(disc) / fxx;
    const double cx = mx - fxy * dy / fxx;
    *a = fmax(ceil(cx - half) - 1.0, lo_min);
    *b = fmin(floor(cx + half) + 1.0, hi_max);
}

// Candidate columns of row j: am_row_extent clipped to the box columns bi0..bi1.
// First column and width (0 when empty).  A superset: the exact q test decides.
__device__ __forceinline__ void am_row_bounds(const double* t, double n_sigma, int bi0, int bi1,
                                              int j, int* i0, int* w)
{
    double a, b;
    am_row_extent(t[AM_MX], t[AM_FXX], t[AM_FXY], t[AM_INVDET], n_sigma * n_sigma,
                  (double)j - t[AM_MY], (double)bi0, (double)bi1, &a, &b);
    *i0 = 0;
    *w = 0;
    if (!(b >= a)) return;
    *i0 = (int)a;
    *w = (int)(b - a) + 1;
}

// numpy_backend's float64 quadratic form, dx (FXX dx + FXY dy) + dy (FXY dx + FYY dy),
// rounded operation by operation in the same order (no FMA).
__device__ __forceinline__ double am_q_exact(double fxx, double fxy, double fyy, double dx,
                                             double dy)
{
    const double vx = __dadd_rn(__dmul_rn(fxx, dx), __dmul_rn(fxy, dy));
    const double vy = __dadd_rn(__dmul_rn(fxy, dx), __dmul_rn(fyy, dy));
    return __dadd_rn(__dmul_rn(dx, vx), __dmul_rn(dy, vy));
}

// Warp 0 fills the interval table of rows jc .. min(jc + 31, j1): s_i0[r] is
// the first candidate column of row jc + r and s_off[r] .. s_off[r + 1] its
// candidates in the flattened chunk (s_off[AM_CH] = number of candidates).
// Ends with a block barrier.
__device__ __forceinline__ void am_chunk(const double* t, double n_sigma, int bi0, int bi1,
                                         int jc, int j1, int* s_i0, int* s_off)
{
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const int j = jc + lane;
        int i0 = 0, w = 0;
        if (j <= j1) am_row_bounds(t, n_sigma, bi0, bi1, j, &i0, &w);
        int incl = w;
        for (int d = 1; d < 32; d <<= 1) {
            const int o = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += o;
        }
        s_i0[lane] = i0;
        s_off[lane + 1] = incl;
        if (lane == 0) s_off[0] = 0;
    }
    __syncthreads();
}

// The row r of the chunk holding flattened pixel p: s_off[r] <= p < s_off[r + 1].
__device__ __forceinline__ int am_find_row(const int* s_off, int p)
{
    int lo = 0, hi = AM_CH;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (s_off[mid] <= p) lo = mid; else hi = mid;
    }
    return lo;
}

// Per-component constants in the working precision T (and in double for the
// exact test of the float32 path).  Trivially constructible (init() fills it), so
// that the tile render can keep a batch of them in shared memory.
template <typename T>
struct AmGauss {
    double mx, my, dfxx, dfxy, dfyy, nn;
    T fxx, fxy, fyy, an, p0, c4, six_fxx, six_fyy, twelve_fxx, twelve_fyy;
    T nnt, qmargin, nnmargin;
    bool use4;
    __device__ __forceinline__ void init(const double* t, double n_sigma)
    {
        dfxx = t[AM_FXX];
        dfxy = t[AM_FXY];
        dfyy = t[AM_FYY];
        nn = n_sigma * n_sigma;
        mx = t[AM_MX];
        my = t[AM_MY];
        fxx = (T)dfxx;
        fxy = (T)dfxy;
        fyy = (T)dfyy;
        an = (T)(t[AM_AMP] * t[AM_NORM]);
        p0 = (T)(1.0 + AM_C4 * 3.0 * (dfxx * dfxx + dfyy * dfyy));
        c4 = (T)AM_C4;
        six_fxx = (T)(6.0 * dfxx);
        six_fyy = (T)(6.0 * dfyy);
        twelve_fxx = (T)(12.0 * dfxx);
        twelve_fyy = (T)(12.0 * dfyy);
        // float32 path: |q_float - q| <= qmargin (|dx| + |dy|)^2; 32 unit roundoffs
        // (2^-24) of max|F| bound the ~8 roundings of q with a factor 4 to spare.
        nnt = (T)nn;
        const double fmaxabs = fmax(fabs(dfxx), fmax(fabs(dfxy), fabs(dfyy)));
        qmargin = (T)(32.0 * 5.9604644775390625e-08 * fmaxabs);
        nnmargin = (T)(1e-6 * nn);
        use4 = t[AM_USE4] != 0.0;
    }
};

// The culling test and v, q of pixel offset (dxd, dyd) [float64].  float64: q as
// numpy_backend computes it (no FMA), so the test is NumPy's bit for bit.
__device__ __forceinline__ bool am_pixel(const AmGauss<double>& g, double dxd, double dyd,
                                         double* vx, double* vy, double* q)
{
    *vx = __dadd_rn(__dmul_rn(g.fxx, dxd), __dmul_rn(g.fxy, dyd));
    *vy = __dadd_rn(__dmul_rn(g.fxy, dxd), __dmul_rn(g.fyy, dyd));
    *q = __dadd_rn(__dmul_rn(dxd, *vx), __dmul_rn(dyd, *vy));
    return *q <= g.nn;
}

// float32: v and q in float32; the test from q unless it lies within the rounding
// bound of n^2, then from the float64 q (NumPy's test, bit for bit).
__device__ __forceinline__ bool am_pixel(const AmGauss<float>& g, double dxd, double dyd,
                                         float* vx, float* vy, float* q)
{
    const float dx = (float)dxd, dy = (float)dyd;
    *vx = g.fxx * dx + g.fxy * dy;
    *vy = g.fxy * dx + g.fyy * dy;
    *q = dx * *vx + dy * *vy;
    const float s = fabsf(dx) + fabsf(dy);
    if (fabsf(*q - g.nnt) > g.qmargin * s * s + g.nnmargin) return *q < g.nnt;
    return am_q_exact(g.dfxx, g.dfxy, g.dfyy, dxd, dyd) <= g.nn;
}

// Block (k, c): component k, chunks c, c + gridDim.y, ... of its rows.
template <typename T>
__device__ __forceinline__ void am_render(const double* __restrict__ table, int K, int ny, int nx,
                                          double n_sigma, T* __restrict__ img)
{
    __shared__ int s_i0[AM_CH];
    __shared__ int s_off[AM_CH + 1];
    const int k = blockIdx.x;
    if (k >= K) return;
    const double* t = table + (long long)k * AM_NPAR;
    int j0, j1, bi0, bi1;
    if (!am_box(t, ny, nx, &j0, &j1, &bi0, &bi1)) return;
    AmGauss<T> g;
    g.init(t, n_sigma);
    for (long long jcl = (long long)j0 + (long long)blockIdx.y * AM_CH; jcl <= j1;
         jcl += (long long)gridDim.y * AM_CH) {
        const int jc = (int)jcl;
        am_chunk(t, n_sigma, bi0, bi1, jc, j1, s_i0, s_off);
        const int total = s_off[AM_CH];
        for (int p = threadIdx.x; p < total; p += blockDim.x) {
            const int r = am_find_row(s_off, p);
            const int j = jc + r;
            const int i = s_i0[r] + (p - s_off[r]);
            T val;
            if (am_value(g, i, j, &val)) atomicAdd(img + (long long)j * nx + i, val);
        }
        __syncthreads();  // the next chunk overwrites the interval table
    }
}

// The value of component g at pixel (i, j), and whether the pixel is in its support.
template <typename T>
__device__ __forceinline__ bool am_value(const AmGauss<T>& g, int i, int j, T* val)
{
    T vx, vy, q;
    if (!am_pixel(g, (double)i - g.mx, (double)j - g.my, &vx, &vy, &q)) return false;
    T v = g.an * am_exp((T)(-0.5) * q);
    if (g.use4) {
        const T vx2 = vx * vx, vy2 = vy * vy;
        v *= g.p0 + g.c4 * (vx2 * (vx2 - g.six_fxx) + vy2 * (vy2 - g.six_fyy));
    }
    *val = v;
    return true;
}

// One batch of a tile gather: thread tid < AM_BATCH takes component k (when k <
// kend), reads its culling box (from the box kernel's rows, or computed here when
// box is null: cheaper than a launch for a few components) and tests whether it
// meets the tile tx0..tx1 x ty0..ty1.  The hits are numbered in table order (warp
// ballots): returns how many the batch has, and *slot is this thread's number
// among them when *hit.  s_count: AM_BATCH / 32 ints of shared memory.  Ends with
// a block barrier.
__device__ __forceinline__ int am_batch_hits(const double* __restrict__ table,
                                             const int* __restrict__ box, int k, int kend,
                                             int ny, int nx, int tx0, int tx1, int ty0, int ty1,
                                             int* s_count, int* bj0, int* bj1, int* bi0,
                                             int* bi1, bool* hit, int* slot)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    *bj0 = 0;
    *bj1 = -1;
    *bi0 = 0;
    *bi1 = -1;
    bool h = false;
    if (tid < AM_BATCH && k < kend) {
        if (box != nullptr) {
            const int4 b = reinterpret_cast<const int4*>(box)[k];
            *bj0 = b.x;
            *bj1 = b.y;
            *bi0 = b.z;
            *bi1 = b.w;
            h = true;
        } else {
            h = am_box(table + (long long)k * AM_NPAR, ny, nx, bj0, bj1, bi0, bi1);
        }
        h = h && *bj0 <= ty1 && *bj1 >= ty0 && *bi0 <= tx1 && *bi1 >= tx0;
    }
    const unsigned mask = __ballot_sync(0xffffffffu, h);
    if (lane == 0 && warp < AM_BATCH / 32) s_count[warp] = __popc(mask);
    __syncthreads();
    int n = 0, before = 0;
    for (int w = 0; w < AM_BATCH / 32; ++w) {
        if (w < warp) before += s_count[w];
        n += s_count[w];
    }
    *hit = h;
    *slot = before + __popc(mask & ((1u << lane) - 1u));
    return n;
}

// Tile render (a gather): block (bx, by) owns the AM_TILE x AM_TILE pixels at
// (bx AM_TILE, by AM_TILE), one per thread (blockDim.x == AM_TILE^2).  The block
// reads the boxes (astromix_boxes; computed here from the table when box is null,
// cheaper than a launch for a few components) in batches of AM_BATCH components: each of the
// first AM_BATCH threads tests whether its component's culling box meets the tile; those that do
// are compacted, in table order, into shared memory (warp ballots), and every
// thread then adds their values at its pixel.  Each pixel is summed in register in
// table order and written once: no atomics, the same bits at every call, and no
// zero-filling of the image beforehand.
template <typename T>
__device__ __forceinline__ void am_render_tiles(const double* __restrict__ table,
                                                const int* __restrict__ box, int K, int ny,
                                                int nx, double n_sigma, T* __restrict__ img)
{
    __shared__ AmGauss<T> s_g[AM_BATCH];
    __shared__ int s_box[AM_BATCH][4];
    __shared__ int s_count[AM_BATCH / 32];
    const int tid = threadIdx.x;
    const int tx0 = blockIdx.x * AM_TILE, ty0 = blockIdx.y * AM_TILE;
    const int tx1 = (tx0 + AM_TILE < nx ? tx0 + AM_TILE : nx) - 1;
    const int ty1 = (ty0 + AM_TILE < ny ? ty0 + AM_TILE : ny) - 1;
    const int i = tx0 + tid % AM_TILE, j = ty0 + tid / AM_TILE;
    const bool mine = i < nx && j < ny;
    T sum = (T)0;
    for (int base = 0; base < K; base += AM_BATCH) {
        const int k = base + tid;
        int bj0, bj1, bi0, bi1, slot;
        bool hit;
        const int n = am_batch_hits(table, box, k, K, ny, nx, tx0, tx1, ty0, ty1, s_count, &bj0,
                                    &bj1, &bi0, &bi1, &hit, &slot);
        if (hit) {
            s_g[slot].init(table + (long long)k * AM_NPAR, n_sigma);
            s_box[slot][0] = bj0;
            s_box[slot][1] = bj1;
            s_box[slot][2] = bi0;
            s_box[slot][3] = bi1;
        }
        __syncthreads();
        if (mine) {
            for (int m = 0; m < n; ++m) {
                if (j < s_box[m][0] || j > s_box[m][1] || i < s_box[m][2] || i > s_box[m][3])
                    continue;
                T val;
                if (am_value(s_g[m], i, j, &val)) sum += val;
            }
        }
        __syncthreads();  // the next batch overwrites the shared tables
    }
    if (mine) img[(long long)j * nx + i] = sum;
}

// The accumulator terms of one pixel (see astromix.backends._common), R E P ...,
// added to a[0 .. 5] (and a[6 .. 13] with USE4).
template <typename T, bool USE4>
__device__ __forceinline__ void am_acc_pixel(const AmGauss<T>& g, T rv, T vx, T vy, T q, T* a)
{
    const T re = rv * am_exp((T)(-0.5) * q);
    T rep = re;
    if (USE4) {
        const T vx2 = vx * vx, vy2 = vy * vy;
        const T px = (T)4 * vx2 * vx - g.twelve_fxx * vx;
        const T py = (T)4 * vy2 * vy - g.twelve_fyy * vy;
        const T rpx = re * px, rpy = re * py;
        a[6] += rpx;
        a[7] += rpy;
        a[8] += rpx * vx;
        a[9] += rpx * vy;
        a[10] += rpy * vx;
        a[11] += rpy * vy;
        a[12] += re * (vx2 - g.fxx);
        a[13] += re * (vy2 - g.fyy);
        rep = re * (g.p0 + g.c4 * (vx2 * (vx2 - g.six_fxx) + vy2 * (vy2 - g.six_fyy)));
    }
    a[0] += rep;
    a[1] += rep * vx;
    a[2] += rep * vy;
    a[3] += rep * vx * vx;
    a[4] += rep * vx * vy;
    a[5] += rep * vy * vy;
}

// The block's sums a[0 .. nm - 1] reduced in double (warp shuffles, then the per-warp
// partial sums in a fixed order) into acc[k, :] (zeros after nm): the same bits at
// every call.
template <typename T>
__device__ __forceinline__ void am_block_acc(const T* a, int nm, int k, double* __restrict__ acc)
{
    __shared__ double s_red[AM_MAXWARPS][AM_NACC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    for (int m = 0; m < nm; ++m) {
        double v = (double)a[m];
        for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
        if (lane == 0) s_red[warp][m] = v;
    }
    __syncthreads();
    if ((int)threadIdx.x < AM_NACC) {
        double s = 0.0;
        if ((int)threadIdx.x < nm)
            for (int w = 0; w < nwarps; ++w) s += s_red[w][threadIdx.x];
        acc[(long long)k * AM_NACC + threadIdx.x] = s;
    }
}

// Block k: component k, its 14 sums into acc[k, :] (columns 6-13 zero without
// USE4; the whole row zero when the box misses the image, so acc needs no
// zero-filling).  The block is a window of AM_TILE columns x (blockDim.x / AM_TILE)
// rows that steps over the culling box; each thread tests its pixel of every
// window position and sums in registers (no barrier, no search), then the block
// reduces the sums in double (warp shuffles, then the per-warp partial sums in a
// fixed order): the same bits at every call.
template <typename T, bool USE4>
__device__ __forceinline__ void am_accumulate_impl(const AmGauss<T>& g, int k, int j0, int j1,
                                                   int i0, int i1, int nx,
                                                   const T* __restrict__ R,
                                                   double* __restrict__ acc)
{
    T a[AM_NACC];
    for (int m = 0; m < AM_NACC; ++m) a[m] = (T)0;
    const int wrows = (int)blockDim.x / AM_TILE;
    const int tx = (int)threadIdx.x % AM_TILE, ty = (int)threadIdx.x / AM_TILE;
    if (ty < wrows) {
        for (int j = j0 + ty; j <= j1; j += wrows) {
            const double dyd = (double)j - g.my;
            const T* row = R + (long long)j * nx;
            for (int i = i0 + tx; i <= i1; i += AM_TILE) {
                T vx, vy, q;
                if (am_pixel(g, (double)i - g.mx, dyd, &vx, &vy, &q))
                    am_acc_pixel<T, USE4>(g, row[i], vx, vy, q, a);
            }
        }
    }
    am_block_acc<T>(a, USE4 ? AM_NACC : 6, k, acc);
}

template <typename T>
__device__ __forceinline__ void am_accumulate(const double* __restrict__ table, int K, int ny,
                                              int nx, double n_sigma, const T* __restrict__ R,
                                              double* __restrict__ acc)
{
    const int k = blockIdx.x;
    if (k >= K) return;
    const double* t = table + (long long)k * AM_NPAR;
    int j0, j1, i0, i1;
    if (!am_box(t, ny, nx, &j0, &j1, &i0, &i1)) {
        if ((int)threadIdx.x < AM_NACC) acc[(long long)k * AM_NACC + threadIdx.x] = 0.0;
        return;
    }
    AmGauss<T> g;
    g.init(t, n_sigma);
    if (g.use4)
        am_accumulate_impl<T, true>(g, k, j0, j1, i0, i1, nx, R, acc);
    else
        am_accumulate_impl<T, false>(g, k, j0, j1, i0, i1, nx, R, acc);
}

// d_amp, d_mean and d_cov of component k (astromix.backends._common.assemble_gradient,
// the same formulas) from its accumulators, into out[k], out[K + 2k + a] and
// out[3K + 4k + 2a + b]: three C-contiguous blocks, (K,), (K, 2) and (K, 2, 2).
extern "C" __global__ void astromix_assemble(const double* __restrict__ table,
                                             const double* __restrict__ acc, int K,
                                             double* __restrict__ out)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < K; k += gridDim.x * blockDim.x) {
        const double* t = table + (long long)k * AM_NPAR;
        const double* s = acc + (long long)k * AM_NACC;
        const double norm = t[AM_NORM], a = t[AM_AMP] * norm, c4 = AM_C4;
        const double fx[2] = {t[AM_FXX], t[AM_FXY]}, fy[2] = {t[AM_FXY], t[AM_FYY]};
        const double f[2][2] = {{fx[0], fx[1]}, {fy[0], fy[1]}};
        const double s0 = s[0], svv[2][2] = {{s[3], s[4]}, {s[4], s[5]}};
        const double spx = s[6], spy = s[7], spxv[2] = {s[8], s[9]}, spyv[2] = {s[10], s[11]};
        const double sqx = s[12], sqy = s[13];
        out[k] = norm * s0;
        for (int b = 0; b < 2; ++b)
            out[K + 2LL * k + b] = a * (s[1 + b] - c4 * (spx * fx[b] + spy * fy[b]));
        double g[2][2];
        for (int p = 0; p < 2; ++p)
            for (int q = 0; q < 2; ++q)
                g[p][q] = -0.5 * f[p][q] * s0 + 0.5 * svv[p][q]
                          - c4 * (fx[p] * spxv[q] + fy[p] * spyv[q])
                          + 6.0 * c4 * (sqx * fx[p] * fx[q] + sqy * fy[p] * fy[q]);
        for (int p = 0; p < 2; ++p)
            for (int q = 0; q < 2; ++q)
                out[3LL * K + 4LL * k + 2 * p + q] = a * (0.5 * (g[p][q] + g[q][p]));
    }
}

// R = 2 w (m - d) into r (which may be m, d or w: each element is read before it is
// written), and per block the sum in double of the chi2 terms w (m - d)^2 (each in
// T) and the number of pixels with a non-finite datum or weight or a negative
// weight, into part[2 blockIdx.x] and part[2 blockIdx.x + 1].  A pixel of weight 0
// contributes 0 and gets R = 0 whatever its datum.  Grid-stride over the n pixels;
// the per-block sums are in a fixed order, so the same grid gives the same bits.
__device__ __forceinline__ bool am_finite(float x) { return fabsf(x) <= 3.4028234663852886e38f; }
__device__ __forceinline__ bool am_finite(double x) { return fabs(x) <= 1.7976931348623157e308; }

template <typename T>
__device__ __forceinline__ void am_residual(const T* m, const T* d, const T* w, T* r,
                                            long long n, double* __restrict__ part)
{
    __shared__ double s_red[AM_MAXWARPS][2];
    double c2 = 0.0, bad = 0.0;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (long long)gridDim.x * blockDim.x) {
        const T wv = w[p], dv = d[p], mv = m[p];
        T rv = (T)0;
        if (!(am_finite(wv) && wv >= (T)0 && am_finite(dv))) bad += 1.0;
        if (wv > (T)0) {
            const T diff = mv - dv;
            const T wr = wv * diff;
            c2 += (double)(wr * diff);
            rv = wr + wr;
        }
        r[p] = rv;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        c2 += __shfl_down_sync(0xffffffffu, c2, o);
        bad += __shfl_down_sync(0xffffffffu, bad, o);
    }
    if (lane == 0) {
        s_red[warp][0] = c2;
        s_red[warp][1] = bad;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double a = 0.0, b = 0.0;
        for (int w2 = 0; w2 < (int)((blockDim.x + 31) >> 5); ++w2) {
            a += s_red[w2][0];
            b += s_red[w2][1];
        }
        part[2 * blockIdx.x] = a;
        part[2 * blockIdx.x + 1] = b;
    }
}

extern "C" __global__ void astromix_residual_f32(const float* m, const float* d, const float* w,
                                                 float* r, long long n, double* part)
{
    am_residual<float>(m, d, w, r, n, part);
}

extern "C" __global__ void astromix_residual_f64(const double* m, const double* d,
                                                 const double* w, double* r, long long n,
                                                 double* part)
{
    am_residual<double>(m, d, w, r, n, part);
}

// ---- row-run kernels ---------------------------------------------------------------
// A thread owns AM_RUN consecutive pixels of one row (a run) and walks them with
// the exact recurrence of a Gaussian along a row: from pixel i to i + 1, q grows
// by 2 vx + FXX, so E = exp(-q/2) is multiplied by r = exp(-(vx + FXX/2)), and r by
// c = exp(-FXX) (vx grows by FXX and vy by FXY).  Two exp per run instead of one
// per pixel.  The pixels a run adds are NumPy's exactly: the row's analytic
// extent, widened by one pixel on either side (am_row_bounds), is cut to the box
// and the run; the pixels at least one pixel inside the analytic extent are in
// (there nn - q >= FXX, far above float64 rounding), and the (at most) two
// candidates at either end are decided by NumPy's float64 test (am_q_exact).
// The recurrence starts at the first pixel that is in (q <= n^2 there: no
// underflow).  Per-component constants of the row kernels, in shared memory:
template <typename T>
struct AmRun {
    double mx, my, dfxx, dfxy, dfyy, invdet, hy;
    T fxx, fxy, fyy, an, p0, c4, six_fxx, six_fyy, half_fxx, cstep;
    float mxo, slope, bq;
    int ox, fast, use4, j0, j1, i0, i1;
    // ox: the column the float32 centre mxo is measured from (the tile's or the
    // box's first column), so that the run bounds are computed from small numbers.
    __device__ __forceinline__ void init(const double* t, int bj0, int bj1, int bi0, int bi1,
                                         int origin)
    {
        mx = t[AM_MX];
        my = t[AM_MY];
        dfxx = t[AM_FXX];
        dfxy = t[AM_FXY];
        dfyy = t[AM_FYY];
        invdet = t[AM_INVDET];
        hy = t[AM_HY];
        fxx = (T)dfxx;
        fxy = (T)dfxy;
        fyy = (T)dfyy;
        an = (T)(t[AM_AMP] * t[AM_NORM]);
        p0 = (T)(1.0 + AM_C4 * 3.0 * (dfxx * dfxx + dfyy * dfyy));
        c4 = (T)AM_C4;
        six_fxx = (T)(6.0 * dfxx);
        six_fyy = (T)(6.0 * dfyy);
        half_fxx = (T)(0.5 * dfxx);
        cstep = (T)exp(-dfxx);
        ox = origin;
        mxo = (float)(mx - (double)origin);
        slope = (float)(-dfxy / dfxx);
        bq = (float)(invdet / (dfxx * dfxx));
        // float32 bounds are within 1e-3 px of the analytic extent while the box
        // is below 1e4 px (a few float32 roundings of numbers below ~1e4); larger
        // components take the float64 bounds
        fast = t[AM_HX] < 4096.0 && fabs(mxo) < 4096.0f;
        use4 = t[AM_USE4] != 0.0;
        j0 = bj0;
        j1 = bj1;
        i0 = bi0;
        i1 = bi1;
    }
};

// The run of pixels x0 .. x0 + AM_RUN - 1 of row j: false when none of them is in
// the support; else bit p of *mask set for each pixel x0 + p in it, *pfirst the
// first such p, and E = exp(-q/2), the ratio r and vx, vy at that pixel.  The
// row's analytic extent is cx -/+ half with cx = MX - FXY dy / FXX and half^2 =
// (FXX n^2 - INVDET dy^2) / FXX^2 = bq (HY - |dy|)(HY + |dy|), HY^2 = n^2 SYY;
// in that form, with HY - |dy| in float64, the float32 half has a relative error
// of a few roundings even where the row touches the ellipse.
template <typename T>
__device__ __forceinline__ bool am_run(const AmRun<T>& g, double nn, int j, int x0,
                                       unsigned* mask, int* pfirst, T* e, T* r, T* vx, T* vy)
{
    if (j < g.j0 || j > g.j1) return false;
    const int s0 = max(x0, g.i0), s1 = min(x0 + AM_RUN - 1, g.i1);
    if (s0 > s1) return false;
    const double dy = (double)j - g.my;
    int lo, hi;
    if (g.fast) {
        const double ady = fabs(dy);
        const float h2 = g.bq * (float)(g.hy - ady) * (float)(g.hy + ady);
        const float half = sqrtf(fmaxf(h2, 0.0f));
        const float cx = g.mxo + g.slope * (float)dy;
        lo = (int)ceilf(cx - half) - 1 + g.ox;
        hi = (int)floorf(cx + half) + 1 + g.ox;
    } else {
        double lod, hid;
        am_row_extent(g.mx, g.dfxx, g.dfxy, g.invdet, nn, dy, (double)s0 - 3.0,
                      (double)s1 + 3.0, &lod, &hid);
        if (!(hid >= lod)) return false;
        lo = (int)lod;
        hi = (int)hid;
    }
    if (hi < s0 || lo > s1) return false;
    unsigned m = 0u;
    // the interior: at least one pixel inside the analytic extent
    const int a = max(lo + 2, s0), b = min(hi - 2, s1);
    if (b >= a) m = (0xffffffffu >> (31 - (b - x0))) & (0xffffffffu << (a - x0));
    // the candidates at the ends: NumPy's float64 test
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const int x = u < 2 ? lo + u : hi - 3 + u;
        if (x >= s0 && x <= s1 && !(x >= a && x <= b)) {
            if (am_q_exact(g.dfxx, g.dfxy, g.dfyy, (double)x - g.mx, dy) <= nn)
                m |= 1u << (x - x0);
        }
    }
    if (m == 0u) return false;
    const int p = __ffs(m) - 1;
    const T dx = (T)((double)(x0 + p) - g.mx), dyt = (T)dy;
    const T ux = g.fxx * dx + g.fxy * dyt, uy = g.fxy * dx + g.fyy * dyt;
    const T q = dx * ux + dyt * uy;
    *mask = m;
    *pfirst = p;
    *e = am_exp((T)(-0.5) * q);
    *r = am_exp(-(ux + g.half_fxx));
    *vx = ux;
    *vy = uy;
    return true;
}

// Row-run render (a gather): block (bx, by, bz) owns AM_RUN * AM_RSEG columns x
// blockDim.x / AM_RSEG rows at (bx AM_RUN AM_RSEG, by blockDim.x / AM_RSEG), and
// slice bz of the components (K bz / gridDim.z .. K (bz + 1) / gridDim.z - 1, so
// that a large image with few tiles still fills the GPU); thread t the run
// (t % AM_RSEG) of row (t / AM_RSEG), summed in registers, written to image bz of
// img (astromix_sum_slices adds the slices).  The components whose boxes meet the
// tile are gathered as in am_render_tiles (batches of AM_BATCH == blockDim.x,
// compacted in table order), so every pixel is summed in a fixed order and
// written once: the same bits at every call.
template <typename T>
__device__ __forceinline__ void am_render_rows(const double* __restrict__ table,
                                               const int* __restrict__ box, int K, int ny,
                                               int nx, double n_sigma, T* __restrict__ img)
{
    __shared__ AmRun<T> s_g[AM_BATCH];
    __shared__ int s_count[AM_BATCH / 32];
    const int tid = threadIdx.x;
    const int th = (int)blockDim.x / AM_RSEG;
    const int tx0 = blockIdx.x * (AM_RUN * AM_RSEG), ty0 = blockIdx.y * th;
    const int tx1 = min(tx0 + AM_RUN * AM_RSEG, nx) - 1, ty1 = min(ty0 + th, ny) - 1;
    const int j = ty0 + tid / AM_RSEG, x0 = tx0 + (tid % AM_RSEG) * AM_RUN;
    const double nn = n_sigma * n_sigma;
    const int kb = (int)((long long)K * blockIdx.z / gridDim.z);
    const int ke = (int)((long long)K * (blockIdx.z + 1) / gridDim.z);
    img += (long long)blockIdx.z * ny * nx;
    T sum[AM_RUN];
#pragma unroll
    for (int p = 0; p < AM_RUN; ++p) sum[p] = (T)0;
    for (int base = kb; base < ke; base += AM_BATCH) {
        const int k = base + tid;
        int bj0, bj1, bi0, bi1, slot;
        bool hit;
        const int n = am_batch_hits(table, box, k, ke, ny, nx, tx0, tx1, ty0, ty1, s_count, &bj0,
                                    &bj1, &bi0, &bi1, &hit, &slot);
        if (hit) {
            s_g[slot].init(table + (long long)k * AM_NPAR, bj0, bj1, bi0, bi1, tx0);
        }
        __syncthreads();
        if (j < ny) {
            for (int m = 0; m < n; ++m) {
                const AmRun<T>& g = s_g[m];
                unsigned mask;
                int pf;
                T e, r, vx, vy;
                if (!am_run(g, nn, j, x0, &mask, &pf, &e, &r, &vx, &vy)) continue;
                T v = g.an * e;
                const T cs = g.cstep;
                if (g.use4) {
                    const T fxx = g.fxx, fxy = g.fxy;
#pragma unroll
                    for (int p = 0; p < AM_RUN; ++p) {
                        if (p >= pf) {
                            const T vx2 = vx * vx, vy2 = vy * vy;
                            const T f = g.p0 + g.c4 * (vx2 * (vx2 - g.six_fxx) +
                                                       vy2 * (vy2 - g.six_fyy));
                            if ((mask >> p) & 1u) sum[p] += v * f;
                            v *= r;
                            r *= cs;
                            vx += fxx;
                            vy += fxy;
                        }
                    }
                } else {
#pragma unroll
                    for (int p = 0; p < AM_RUN; ++p) {
                        if (p >= pf) {
                            if ((mask >> p) & 1u) sum[p] += v;
                            v *= r;
                            r *= cs;
                        }
                    }
                }
            }
        }
        __syncthreads();  // the next batch overwrites the shared tables
    }
    if (j < ny) {
        T* row = img + (long long)j * nx;
#pragma unroll
        for (int p = 0; p < AM_RUN; ++p)
            if (x0 + p < nx) row[x0 + p] = sum[p];
    }
}

// img[i] = sum over z of part[z n + i], z = 0, 1, ... (a fixed order); grid-stride.
template <typename T>
__device__ __forceinline__ void am_sum_slices(const T* __restrict__ part, int nz, long long n,
                                              T* __restrict__ img)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        T v = part[i];
        for (int z = 1; z < nz; ++z) v += part[(long long)z * n + i];
        img[i] = v;
    }
}

// Row-run accumulate: block k sums component k's 14 terms (as am_acc_pixel) over
// the runs of AM_RUN pixels that tile its culling box, thread t taking runs t,
// t + blockDim.x, ... (row-major), each walked with the recurrence of am_run.
template <typename T, bool USE4>
__device__ __forceinline__ void am_accumulate_rows_impl(const AmRun<T>& g, double nn, int k,
                                                        int nx, const T* __restrict__ R,
                                                        double* __restrict__ acc)
{
    T a[AM_NACC];
#pragma unroll
    for (int m = 0; m < AM_NACC; ++m) a[m] = (T)0;
    const int nseg = (g.i1 - g.i0) / AM_RUN + 1;
    const int items = (g.j1 - g.j0 + 1) * nseg;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
        const int j = g.j0 + it / nseg, x0 = g.i0 + (it % nseg) * AM_RUN;
        unsigned mask;
        int pf;
        T e, r, vx, vy;
        if (!am_run(g, nn, j, x0, &mask, &pf, &e, &r, &vx, &vy)) continue;
        const T* row = R + (long long)j * nx + x0;
        const T cs = g.cstep, fxx = g.fxx, fxy = g.fxy;
#pragma unroll
        for (int p = 0; p < AM_RUN; ++p) {
            if (p >= pf) {
                if ((mask >> p) & 1u) {
                    const T re = row[p] * e;
                    T rep = re;
                    if (USE4) {
                        const T vx2 = vx * vx, vy2 = vy * vy;
                        const T px = (T)4 * vx2 * vx - (T)2 * g.six_fxx * vx;
                        const T py = (T)4 * vy2 * vy - (T)2 * g.six_fyy * vy;
                        const T rpx = re * px, rpy = re * py;
                        a[6] += rpx;
                        a[7] += rpy;
                        a[8] += rpx * vx;
                        a[9] += rpx * vy;
                        a[10] += rpy * vx;
                        a[11] += rpy * vy;
                        a[12] += re * (vx2 - fxx);
                        a[13] += re * (vy2 - g.fyy);
                        rep = re * (g.p0 + g.c4 * (vx2 * (vx2 - g.six_fxx) +
                                                   vy2 * (vy2 - g.six_fyy)));
                    }
                    a[0] += rep;
                    a[1] += rep * vx;
                    a[2] += rep * vy;
                    a[3] += rep * vx * vx;
                    a[4] += rep * vx * vy;
                    a[5] += rep * vy * vy;
                }
                e *= r;
                r *= cs;
                vx += fxx;
                vy += fxy;
            }
        }
    }
    am_block_acc<T>(a, USE4 ? AM_NACC : 6, k, acc);
}

template <typename T>
__device__ __forceinline__ void am_accumulate_rows(const double* __restrict__ table, int K,
                                                   int ny, int nx, double n_sigma,
                                                   const T* __restrict__ R,
                                                   double* __restrict__ acc)
{
    __shared__ AmRun<T> s_one;
    const int k = blockIdx.x;
    if (k >= K) return;
    const double* t = table + (long long)k * AM_NPAR;
    int j0, j1, i0, i1;
    if (!am_box(t, ny, nx, &j0, &j1, &i0, &i1)) {
        if ((int)threadIdx.x < AM_NACC) acc[(long long)k * AM_NACC + threadIdx.x] = 0.0;
        return;
    }
    if (threadIdx.x == 0) s_one.init(t, j0, j1, i0, i1, i0);
    __syncthreads();
    const AmRun<T> g = s_one;
    if (g.use4)
        am_accumulate_rows_impl<T, true>(g, n_sigma * n_sigma, k, nx, R, acc);
    else
        am_accumulate_rows_impl<T, false>(g, n_sigma * n_sigma, k, nx, R, acc);
}

extern "C" __global__ void astromix_render_rows_f32(const double* __restrict__ table,
                                                    const int* __restrict__ box, int K, int ny,
                                                    int nx, double n_sigma,
                                                    float* __restrict__ img)
{
    am_render_rows<float>(table, box, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_render_rows_f64(const double* __restrict__ table,
                                                    const int* __restrict__ box, int K, int ny,
                                                    int nx, double n_sigma,
                                                    double* __restrict__ img)
{
    am_render_rows<double>(table, box, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_sum_slices_f32(const float* __restrict__ part, int nz,
                                                   long long n, float* __restrict__ img)
{
    am_sum_slices<float>(part, nz, n, img);
}

extern "C" __global__ void astromix_sum_slices_f64(const double* __restrict__ part, int nz,
                                                   long long n, double* __restrict__ img)
{
    am_sum_slices<double>(part, nz, n, img);
}

extern "C" __global__ void astromix_accumulate_rows_f32(const double* __restrict__ table,
                                                        int K, int ny, int nx, double n_sigma,
                                                        const float* __restrict__ R,
                                                        double* __restrict__ acc)
{
    am_accumulate_rows<float>(table, K, ny, nx, n_sigma, R, acc);
}

extern "C" __global__ void astromix_accumulate_rows_f64(const double* __restrict__ table,
                                                        int K, int ny, int nx, double n_sigma,
                                                        const double* __restrict__ R,
                                                        double* __restrict__ acc)
{
    am_accumulate_rows<double>(table, K, ny, nx, n_sigma, R, acc);
}

extern "C" __global__ void astromix_render_f32(const double* __restrict__ table, int K, int ny,
                                               int nx, double n_sigma, float* __restrict__ img)
{
    am_render<float>(table, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_render_f64(const double* __restrict__ table, int K, int ny,
                                               int nx, double n_sigma, double* __restrict__ img)
{
    am_render<double>(table, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_render_tiles_f32(const double* __restrict__ table,
                                                     const int* __restrict__ box, int K,
                                                     int ny, int nx, double n_sigma,
                                                     float* __restrict__ img)
{
    am_render_tiles<float>(table, box, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_render_tiles_f64(const double* __restrict__ table,
                                                     const int* __restrict__ box, int K,
                                                     int ny, int nx, double n_sigma,
                                                     double* __restrict__ img)
{
    am_render_tiles<double>(table, box, K, ny, nx, n_sigma, img);
}

extern "C" __global__ void astromix_accumulate_f32(const double* __restrict__ table, int K,
                                                   int ny, int nx, double n_sigma,
                                                   const float* __restrict__ R,
                                                   double* __restrict__ acc)
{
    am_accumulate<float>(table, K, ny, nx, n_sigma, R, acc);
}

extern "C" __global__ void astromix_accumulate_f64(const double* __restrict__ table, int K,
                                                   int ny, int nx, double n_sigma,
                                                   const double* __restrict__ R,
                                                   double* __restrict__ acc)
{
    am_accumulate<double>(table, K, ny, nx, n_sigma, R, acc);
}
"""


def _source(**overrides):
    """The CUDA source with the table layout and the constants substituted in;
    ``overrides`` replace constants by name (e.g. ``RUN=8``, for tuning)."""
    from ..settings import BOX_C4

    subs = {"NPAR": c.NPAR, "NACC": c.NACC, "BOX_C4": repr(float(BOX_C4)),
            "AMP": c.AMP, "MX": c.MX, "MY": c.MY, "FXX": c.FXX, "FXY": c.FXY,
            "FYY": c.FYY, "NORM": c.NORM, "USE4": c.USE4, "INVDET": c.INVDET, "HY": c.HY,
            "HX": c.HX, "TILE": TILE, "BATCH": BATCH, "RUN": RUN, "RSEG": RSEG,
            "SXX": c.SXX, "SXY": c.SXY, "SYY": c.SYY, "TWO_PI": repr(2.0 * math.pi),
            "THREE_C4": repr(3.0 * abs(BOX_C4))}
    subs.update(overrides)
    src = _CUDA_TEMPLATE
    for key, value in subs.items():
        src = src.replace(f"@{key}@", str(value))
    return src


#: The CUDA C source of the kernels (:data:`KERNEL_NAMES`), with the table
#: layout of :mod:`astromix.backends._common` substituted in.  Kernel arguments:
#: ``(const double* table, int K, int ny, int nx, double n_sigma, T* img)`` for
#: the atomic render (grid ``(K, chunks)``, block a multiple of 32 threads);
#: ``(table, const int* box, K, ny, nx, n_sigma, img)`` for the tile render (grid
#: of TILE x TILE tiles, TILE**2 threads; ``box`` from ``astromix_boxes(table, K,
#: ny, nx, int* box)``, or null); ``(table, K, ny, nx, n_sigma, const T* R,
#: double* acc)`` for accumulate (grid ``(K,)``, a multiple of TILE threads);
#: ``(const double* src, K, n_sigma, box_variance, int kurtosis, threshold,
#: double* table)`` for prepare and ``(table, const double* acc, K, double* out)``
#: for assemble (grid-stride); residual as documented at its kernel.
CUDA_SOURCE = _source()


@functools.cache
def _numba_host():
    """The Numba backend, for the host-side table and gradient arithmetic; None
    where Numba is not installed."""
    try:
        from .numba_backend import NumbaBackend
    except ImportError:
        return None
    return NumbaBackend()


def _row_chunks(table, shape):
    """Largest number of 32-row chunks of any component's culling box (0: none in the image)."""
    ny, nx = shape
    my, hy, mx, hx = table[:, c.MY], table[:, c.HY], table[:, c.MX], table[:, c.HX]
    j0 = np.maximum(np.ceil(my - hy), 0.0)
    j1 = np.minimum(np.floor(my + hy), ny - 1.0)
    i0 = np.maximum(np.ceil(mx - hx), 0.0)
    i1 = np.minimum(np.floor(mx + hx), nx - 1.0)
    nrows = np.where(i1 >= i0, j1 - j0 + 1.0, 0.0)
    nmax = float(nrows.max()) if nrows.size else 0.0
    if not nmax >= 1.0:
        return 0
    return int(-(-int(nmax) // CHUNK_ROWS))


class CupyBackend(c.Backend):
    """GPU backend: raw CUDA kernels compiled by CuPy, float32 and float64.

    Images, residuals and accumulators live on the GPU as CuPy arrays; the
    per-Gaussian table (a small NumPy array) is copied to the device at each
    call.

    Parameters
    ----------
    block_size : int, optional
        Threads per block of the atomic render kernel, a multiple of 32 in
        [32, 1024].  Default 128.
    render_kernel : {"tiles", "rows", "atomic"}, optional
        The render kernel: ``"tiles"`` (default), a gather over image tiles that
        gives the same bits at every call; ``"rows"``, a gather in which each
        thread walks a run of ``RUN`` pixels of a row with the Gaussian's
        recurrence (two ``exp`` per run; also deterministic, as fast as
        ``"tiles"`` on an H100, see docs/performance.rst); or ``"atomic"``, a
        scatter with ``atomicAdd`` (faster on large images, last bits vary
        between calls).
    accumulate_kernel : {"pixels", "rows"}, optional
        The gradient-sum kernel: ``"pixels"`` (default; a window stepped over
        each component's box, one pixel per thread) or ``"rows"`` (runs of
        ``RUN`` pixels walked with the recurrence).  Both give the same bits at
        every call.

    Attributes
    ----------
    name : str
        ``"cupy"``.
    xp : module
        The :mod:`cupy` module.

    Raises
    ------
    ImportError
        If CuPy cannot be imported.
    RuntimeError
        If no CUDA device is visible, its compute capability is below 6.0, or
        the kernels fail to compile.  (The backend registry reports either as
        :class:`astromix.BackendError` "backend 'cupy' is not available: ...".)
    ValueError
        On a bad ``block_size``, ``render_kernel`` or ``accumulate_kernel``.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix import GaussianMixture
    >>> g = GaussianMixture([1.0], [[16.0, 16.0]], [np.eye(2) * 4])
    >>> img = g.render((32, 32), backend="cupy")       # doctest: +SKIP
    >>> type(img).__module__.split(".")[0]             # doctest: +SKIP
    'cupy'
    """

    name = "cupy"

    def __init__(self, block_size=128, render_kernel="tiles", accumulate_kernel="pixels"):
        try:
            import cupy
        except ImportError as exc:
            raise ImportError(f"CuPy is not installed ({exc}); {install_hint()}") from None
        try:
            ndev = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, no device, ...
            raise RuntimeError(f"no usable CUDA device ({type(exc).__name__}: {exc})") from None
        if ndev <= 0:
            raise RuntimeError("no CUDA device found")
        cc = int(cupy.cuda.Device().compute_capability)
        if cc < 60:
            raise RuntimeError(f"compute capability {cc // 10}.{cc % 10} < 6.0 "
                               "(float64 atomicAdd is needed)")
        block_size = int(block_size)
        if block_size % 32 or not 32 <= block_size <= 1024:
            raise ValueError(f"block_size must be a multiple of 32 in [32, 1024], got {block_size}")
        if render_kernel not in ("rows", "tiles", "atomic"):
            raise ValueError("render_kernel must be 'rows', 'tiles' or 'atomic', "
                             f"got {render_kernel!r}")
        if accumulate_kernel not in ("rows", "pixels"):
            raise ValueError("accumulate_kernel must be 'rows' or 'pixels', "
                             f"got {accumulate_kernel!r}")
        self.xp = cupy
        self.block_size = block_size
        self.render_kernel = render_kernel
        self.accumulate_kernel = accumulate_kernel
        try:
            module = cupy.RawModule(code=CUDA_SOURCE)
            self._kernels = {kind: {ch: module.get_function(fname) for ch, fname in names.items()}
                             for kind, names in KERNEL_NAMES.items()}
        except Exception as exc:  # CompileException, driver errors
            raise RuntimeError(f"the CUDA kernels failed to compile: {exc}") from None
        sm = self._sm = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
        #: Blocks of the residual kernel: enough to fill the GPU, and fixed, so
        #: that its per-block sums (hence chi2) have the same bits at every call.
        self._residual_blocks = 4 * sm

    # -- arrays -----------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """Return ``x`` as a CuPy array on the current device (copied from the host if needed).

        Parameters
        ----------
        x : array-like or cupy.ndarray
        dtype : dtype, optional

        Returns
        -------
        cupy.ndarray
        """
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """Return ``x`` (a CuPy or NumPy array) as a NumPy array on the host.

        Parameters
        ----------
        x : cupy.ndarray or array-like
            A device array is copied to the host; a host array is returned as
            by :func:`numpy.asarray`.

        Returns
        -------
        numpy.ndarray
            Same shape and dtype as ``x``.
        """
        return self.xp.asnumpy(x)

    # -- kernels ----------------------------------------------------------------
    @staticmethod
    def _dtype_char(dtype):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise InputError(f"dtype must be float32 or float64, got {dtype}")
        return dtype, dtype.char

    def _table(self, table):
        table = np.ascontiguousarray(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != c.NPAR:
            raise InputError(f"table must have shape (K, {c.NPAR}), got {table.shape}")
        return table

    def render(self, table, shape, dtype, settings, out=None, threads=None):
        """Render a prepared mixture into an image on the GPU (into ``out`` when given).

        Parameters
        ----------
        table : numpy.ndarray, float64, shape (K, NPAR)
            The per-Gaussian table from :func:`astromix.backends._common.prepare`.
        shape : tuple of int
            ``(ny, nx)`` of the image.
        dtype : {numpy.float32, numpy.float64}
            Working precision and dtype of the result.
        settings : AccuracySettings
            Only ``n_sigma`` is used here (the pixel-integration mode is already
            in the table).
        out : cupy.ndarray, shape (ny, nx), dtype ``dtype``, C-contiguous, optional
            Array to render into (every pixel overwritten).  A new array if omitted.
        threads : int, optional
            Ignored (accepted for the common interface).

        Returns
        -------
        cupy.ndarray, shape (ny, nx), dtype ``dtype``
            The pixel-integrated mixture, in the units of the amplitudes
            (``out`` when given).

        Raises
        ------
        InputError
            On another dtype or a malformed table.
        """
        cp = self.xp
        dtype, _ = self._dtype_char(dtype)
        shape = tuple(int(n) for n in shape)
        table = self._table(table)
        img = cp.empty(shape, dtype=dtype) if out is None else out
        self._render_into(table, cp.asarray(table), shape, dtype, settings, img)
        return img

    def _render_into(self, table, table_d, shape, dtype, settings, img):
        """Render the device table ``table_d`` (K rows) into the C-contiguous ``img``
        of ``shape`` and ``dtype``, every pixel written.  ``table`` is its host copy,
        needed by the atomic render only (None where the table was prepared on the
        GPU, with the tile render)."""
        ny, nx = shape
        k = table_d.shape[0]
        ch = np.dtype(dtype).char
        args = (table_d, np.int32(k), np.int32(ny), np.int32(nx), np.float64(settings.n_sigma),
                img)
        if k == 0 or ny == 0 or nx == 0:
            img.fill(0)
        elif self.render_kernel in ("rows", "tiles"):
            # null: the tiles compute the boxes of a few components themselves
            box = self._boxes(table_d, k, shape) if k >= BOX_KERNEL_MIN else np.uint64(0)
            if self.render_kernel == "rows":
                gx, gy = -(-nx // (RUN * RSEG)), -(-ny // (BATCH // RSEG))
                nz = self._slices(gx * gy, k)
                part = img if nz == 1 else self.xp.empty((nz, ny, nx), dtype=img.dtype)
                self._kernels["render_rows"][ch]((gx, gy, nz), (BATCH,),
                                                 (table_d, box) + args[1:5] + (part,))
                if nz > 1:
                    self._kernels["sum_slices"][ch](
                        (self._residual_blocks,), (256,),
                        (part, np.int32(nz), np.int64(ny * nx), img))
            else:
                self._kernels["render_tiles"][ch]((-(-nx // TILE), -(-ny // TILE)),
                                                  (TILE * TILE,), (table_d, box) + args[1:])
        else:
            img.fill(0)
            nchunks = _row_chunks(table, shape)
            if nchunks:
                self._kernels["render"][ch]((k, min(nchunks, _MAX_GRID_Y)),
                                            (self.block_size,), args)

    def _slices(self, ntiles, k):
        """Component slices of the row-run render: enough blocks for
        ``SLICE_BLOCKS_PER_SM`` per multiprocessor, at most ``MAX_SLICES``, and at
        least ``BATCH`` components in each."""
        want = -(-SLICE_BLOCKS_PER_SM * self._sm // ntiles)
        return max(1, min(want, MAX_SLICES, k // BATCH))

    def _prepare_device(self, amp, mean, cov, settings):
        """The (K, NPAR) table of :func:`astromix.backends._common.prepare`, built on
        the GPU (the same bits) from ``amp`` (K,), ``mean`` (K, 2) and ``cov`` (K, 2, 2),
        copied there in one go (CuPy stages the copy through its page-locked pool)."""
        cp = self.xp
        k = len(amp)
        src = np.empty((k, 7))
        src[:, 0] = amp
        src[:, 1:3] = mean
        src[:, 3:7] = np.reshape(cov, (k, 4))
        src_d = cp.asarray(src)
        table_d = cp.empty((k, c.NPAR), dtype=np.float64)
        if k:
            # 64 threads per block: the float64 divisions and square roots are long
            # dependent chains, so spread the components over more multiprocessors
            self._kernels["prepare"]["d"](
                (-(-k // 64),), (64,),
                (src_d, np.int32(k), np.float64(settings.n_sigma),
                 np.float64(settings.box_variance),
                 np.int32(settings.pixel_integration == "kurtosis"),
                 np.float64(settings.fourth_order_threshold), table_d))
        return table_d

    def _device_table(self, amp, mean, cov, settings):
        """(host table or None, device table): built on the GPU from
        ``GPU_PREPARE_MIN`` components on with the tile render, else on the host
        (:meth:`prepare`) and copied.  The same bits either way."""
        if self.render_kernel != "atomic" and len(amp) >= GPU_PREPARE_MIN:
            return None, self._prepare_device(amp, mean, cov, settings)
        table = self.prepare(amp, mean, cov, settings)
        return table, self.xp.asarray(table)

    def render_stamp(self, amp, mean, cov, shape, dtype, settings):
        """Prepare (on the GPU from ``GPU_PREPARE_MIN`` components on) and render in
        one go with the tile render; None with the atomic one (the general path).
        Any image size.  See :meth:`astromix.backends._common.Backend.render_stamp`.

        Parameters
        ----------
        amp : numpy.ndarray, float64, shape (K,)
            Amplitudes (total flux of each component).
        mean : numpy.ndarray, float64, shape (K, 2)
            Centres (x, y) [px].
        cov : numpy.ndarray, float64, shape (K, 2, 2)
            Covariances [px^2].
        shape : tuple of int
            ``(ny, nx)`` of the image [px].
        dtype : {numpy.float32, numpy.float64}
            Working precision and dtype of the result.
        settings : AccuracySettings

        Returns
        -------
        cupy.ndarray, shape (ny, nx), dtype ``dtype``, or None
            The pixel-integrated image, as from :meth:`prepare` and
            :meth:`render`; None with ``render_kernel="atomic"``.
        """
        if self.render_kernel == "atomic":
            return None
        img = self.xp.empty(tuple(int(n) for n in shape), dtype=dtype)
        table, table_d = self._device_table(amp, mean, cov, settings)
        self._render_into(table, table_d, img.shape, img.dtype, settings, img)
        return img

    def _boxes(self, table_d, k, shape):
        """Launch the box kernel: the (K, 4) int32 culling boxes (j0, j1, i0, i1) of the
        device table ``table_d`` in an image of ``shape``, on the GPU."""
        box = self.xp.empty((k, 4), dtype=np.int32)
        self._kernels["boxes"]["d"]((-(-k // 256),), (256,),
                                    (table_d, np.int32(k), np.int32(shape[0]),
                                     np.int32(shape[1]), box))
        return box

    def residual(self, model, data, weight, out=None):
        """Chi-square and the residual image ``R = 2 w (model - data)``.

        Parameters
        ----------
        model, data, weight : cupy.ndarray or array-like, shape (ny, nx)
            ``data`` and ``weight`` are converted to ``model``'s dtype.
        out : cupy.ndarray, shape (ny, nx), ``model``'s dtype, optional
            Where ``R`` is written; may be ``model``, ``data`` or ``weight``
            itself (chi2 is summed first, and each element of ``R`` is computed
            from the same element of the inputs).  A new array if omitted.

        Returns
        -------
        chi2 : float
            ``sum w (model - data)**2``, each term computed in ``model``'s dtype
            and summed in float64.
        R : cupy.ndarray, shape (ny, nx), ``model``'s dtype
            ``out`` when given.

        Raises
        ------
        InputError
            If ``model``'s dtype is not float32 or float64.
        """
        cp = self.xp
        model = cp.asarray(model)
        dtype = model.dtype
        data = cp.asarray(data, dtype=dtype)
        weight = cp.asarray(weight, dtype=dtype)
        if out is None:
            out = cp.empty_like(model)
        part = self._residual_partials(model, data, weight, out)
        return float(part.get()[0::2].sum()), out

    def _residual_partials(self, model, data, weight, out, extra=0):
        """Launch the residual kernel (``R`` into ``out``); its per-block (chi2, bad
        pixels) pairs, still on the GPU, as a (2 nblocks + extra,) float64 array
        (the ``extra`` elements at its end left for the caller)."""
        cp = self.xp
        _, ch = self._dtype_char(model.dtype)
        arrays = [cp.ascontiguousarray(a) for a in (model, data, weight)]
        direct = out.flags.c_contiguous
        r = out if direct else cp.empty_like(arrays[0])
        n = r.size
        nblocks = max(1, min(self._residual_blocks, -(-n // 256)))
        part = cp.empty(2 * nblocks + extra, dtype=np.float64)
        self._kernels["residual"][ch]((nblocks,), (256,), (*arrays, r, np.int64(n), part))
        if not direct:
            out[...] = r
        return part

    def chi2_stamp(self, amp, mean, cov, data, weight, settings, gradient):
        """The chi2 (and gradient) of :meth:`astromix.GaussianMixture.chi2` in one go.

        The table (built on the GPU from ``GPU_PREPARE_MIN`` components on),
        render, residual (with the pixel check), accumulate and the gradient's
        assembly are queued on the GPU back to back, and the host waits once, for
        one copy of the per-block sums and the gradients into page-locked
        memory.  Returns None, so that the general path raises its
        error or masks the data, when any pixel has a non-finite datum or weight
        or a negative weight.  Any image size (the name is the common
        interface's).

        Parameters
        ----------
        amp, mean, cov : numpy.ndarray, shapes (K,), (K, 2), (K, 2, 2)
        data, weight : cupy.ndarray, shape (ny, nx), one dtype (float32 or float64)
        settings : AccuracySettings
        gradient : bool

        Returns
        -------
        chi2 : float, or (chi2, (d_amp, d_mean, d_cov)) with ``gradient``; or None
        """
        dtype = data.dtype
        k = len(amp)
        model = self.scratch(data.shape, dtype, "chi2")
        table, table_d = self._device_table(amp, mean, cov, settings)
        self._render_into(table, table_d, data.shape, dtype, settings, model)
        extra = 7 * k if gradient else 0  # room for the gradients after the sums
        part = self._residual_partials(model, data, weight, model, extra=extra)
        nb = part.size - extra
        if gradient and k:
            acc = self._accumulate_into(table_d, k, model, settings)
            self._kernels["assemble"]["d"]((-(-k // 256),), (256,),
                                           (table_d, acc, np.int32(k), part[nb:]))
        # one copy back, into page-locked memory (no staging buffer on the way)
        host = self._pinned(part.size)
        part.get(out=host)
        if host[1:nb:2].any():
            return None
        value = float(host[0:nb:2].sum())
        if not gradient:
            return value
        grad = host[nb:]
        return value, (grad[:k], grad[k:3 * k].reshape(k, 2), grad[3 * k:].reshape(k, 2, 2))

    def _pinned(self, n):
        """A new page-locked (pinned) float64 host array of ``n`` elements, from
        CuPy's pinned-memory pool (returned to the pool when the array is freed)."""
        import cupyx

        return cupyx.empty_pinned((n,), dtype=np.float64)

    def prepare(self, amp, mean, cov, settings):
        """Per-Gaussian table (NumPy float64, (K, NPAR)), built on the host.

        Numba's compiled :meth:`astromix.backends.numba_backend.NumbaBackend.prepare`
        where Numba is installed (the same numbers; ten times faster than NumPy's
        on thousands of components), else :func:`astromix.backends._common.prepare`.

        Parameters
        ----------
        amp : array-like, shape (K,)
            Amplitudes (total flux of each component).
        mean : array-like, shape (K, 2)
            Centres (x, y) [px].
        cov : array-like, shape (K, 2, 2)
            Covariances [px^2].
        settings : AccuracySettings

        Returns
        -------
        table : numpy.ndarray, float64, shape (K, NPAR)
            The per-Gaussian table described in :mod:`astromix.backends._common`.
        """
        if _numba_host() is not None:
            return _numba_host().prepare(amp, mean, cov, settings)
        return c.prepare(amp, mean, cov, settings)

    def assemble_gradient(self, table, acc):
        """(d_amp, d_mean, d_cov) from the accumulators, on the host (Numba's compiled
        version where installed, else :func:`astromix.backends._common.assemble_gradient`).

        Parameters
        ----------
        table : numpy.ndarray, float64, shape (K, NPAR)
            The table the accumulators were taken with.
        acc : cupy.ndarray or numpy.ndarray, shape (K, NACC)
            The accumulators from :meth:`accumulate` (copied to the host).

        Returns
        -------
        d_amp : numpy.ndarray, float64, shape (K,)
            Derivative with respect to each amplitude.
        d_mean : numpy.ndarray, float64, shape (K, 2)
            With respect to each centre (x, y) [per px].
        d_cov : numpy.ndarray, float64, shape (K, 2, 2)
            The symmetric matrix gradient with respect to each covariance
            [per px^2].
        """
        acc = self.to_numpy(acc)
        if _numba_host() is not None:
            return _numba_host().assemble_gradient(table, acc)
        return c.assemble_gradient(table, acc)

    def accumulate(self, table, rimg, settings, threads=None):
        """Gradient accumulators of every component against a residual image.

        Parameters
        ----------
        table : numpy.ndarray, float64, shape (K, NPAR)
            As for :meth:`render`.
        rimg : cupy.ndarray, shape (ny, nx), float32 or float64
            ``R = 2 w (model - data)`` from :meth:`residual`; its dtype is the
            working precision of the per-pixel arithmetic.
        settings : AccuracySettings

        Returns
        -------
        cupy.ndarray, float64, shape (K, NACC)
            The sums described in :mod:`astromix.backends._common` (columns
            6-13 zero for components without the fourth-order factor).

        Raises
        ------
        InputError
            If ``rimg`` is not a 2-d float32/float64 image or the table is malformed.
        """
        cp = self.xp
        rimg = cp.asarray(rimg)
        if rimg.ndim != 2:
            raise InputError(f"residual image must be 2-d, got shape {rimg.shape}")
        self._dtype_char(rimg.dtype)
        table = self._table(table)
        return self._accumulate_into(cp.asarray(table), table.shape[0],
                                     cp.ascontiguousarray(rimg), settings)

    def _accumulate_into(self, table_d, k, rimg, settings):
        """Launch the accumulate kernel of the device table ``table_d`` (K rows) on the
        C-contiguous residual image ``rimg``; the (K, NACC) accumulators, on the GPU."""
        acc = self.xp.empty((k, c.NACC), dtype=np.float64)  # every row is written
        ny, nx = rimg.shape
        if k and ny and nx:
            rows = self.accumulate_kernel == "rows"
            self._kernels["accumulate_rows" if rows else "accumulate"][rimg.dtype.char](
                (k,), (RUN_ACC_BLOCK if rows else ACC_BLOCK,),
                (table_d, np.int32(k), np.int32(ny), np.int32(nx),
                 np.float64(settings.n_sigma), rimg, acc))
        return acc
