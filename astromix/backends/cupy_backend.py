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

Work decomposition: a component's box is handled in chunks of 32 rows.  Only
the candidates of each row are visited: the analytic extent of the ellipse on
that row, ``cx -/+ sqrt(FXX n^2 - dy^2 INVDET) / FXX`` with ``cx = MX - FXY dy /
FXX``, widened by one pixel on either side (a superset, the exact test above
decides) and clipped to the box.  Warp 0 of a block computes the 32 row
intervals and their prefix sum into shared memory, then all threads of the
block stride over the flattened candidates of the chunk (so no thread idles on
the ellipse's ragged edge).

* ``render``: one block per (component, chunk of rows) pair; the values are
  added into the image with ``atomicAdd`` (float64 ``atomicAdd`` needs compute
  capability >= 6.0).  The summation order, hence the last bits, may change from
  call to call.
* ``accumulate``: one block per component, looping over its chunks; each thread
  accumulates the 14 sums in the working precision, and the block reduces them
  in float64 (warp shuffles, then the per-warp partial sums in a fixed order),
  so the accumulators are deterministic.
* ``residual``: a CuPy elementwise kernel for ``R = 2 w (model - data)`` and a
  reduction kernel for chi2, summed in float64.

The module imports without CuPy (only :class:`CupyBackend` needs it), so that
the CUDA source, :data:`CUDA_SOURCE`, can be checked with ``nvcc`` anywhere.
"""

import numpy as np

from ..errors import InputError
from . import _common as c

__all__ = ["CupyBackend", "CUDA_SOURCE", "KERNEL_NAMES"]

#: Names of the ``extern "C"`` kernels in :data:`CUDA_SOURCE`, by dtype character.
KERNEL_NAMES = {
    "render": {"f": "astromix_render_f32", "d": "astromix_render_f64"},
    "accumulate": {"f": "astromix_accumulate_f32", "d": "astromix_accumulate_f64"},
}

#: Rows of a component handled per chunk (one warp computes their intervals).
CHUNK_ROWS = 32
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
#define AM_C4 (@BOX_C4@)

#define AM_AMP @AMP@
#define AM_MX @MX@
#define AM_MY @MY@
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

// Candidate columns of row j: the ellipse's analytic extent on the row, widened
// by one pixel on either side and clipped to the box columns bi0..bi1.  First
// column and width (0 when empty).  A superset: the exact q test decides.
__device__ __forceinline__ void am_row_bounds(const double* t, double n_sigma, int bi0, int bi1,
                                              int j, int* i0, int* w)
{
    const double mx = t[AM_MX], my = t[AM_MY], fxx = t[AM_FXX], fxy = t[AM_FXY];
    const double dy = (double)j - my;
    const double disc = fmax(fxx * (n_sigma * n_sigma) - dy * dy * t[AM_INVDET], 0.0);
    const double half = sqrt(disc) / fxx;
    const double cx = mx - fxy * dy / fxx;
    const double a = fmax(ceil(cx - half) - 1.0, (double)bi0);
    const double b = fmin(floor(cx + half) + 1.0, (double)bi1);
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
// exact test of the float32 path).
template <typename T>
struct AmGauss {
    double mx, my, dfxx, dfxy, dfyy, nn;
    T fxx, fxy, fyy, an, p0, c4, six_fxx, six_fyy, twelve_fxx, twelve_fyy;
    T nnt, qmargin, nnmargin;
    bool use4;
    __device__ __forceinline__ AmGauss(const double* t, double n_sigma)
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
    const AmGauss<T> g(t, n_sigma);
    for (long long jcl = (long long)j0 + (long long)blockIdx.y * AM_CH; jcl <= j1;
         jcl += (long long)gridDim.y * AM_CH) {
        const int jc = (int)jcl;
        am_chunk(t, n_sigma, bi0, bi1, jc, j1, s_i0, s_off);
        const int total = s_off[AM_CH];
        for (int p = threadIdx.x; p < total; p += blockDim.x) {
            const int r = am_find_row(s_off, p);
            const int j = jc + r;
            const int i = s_i0[r] + (p - s_off[r]);
            T vx, vy, q;
            if (!am_pixel(g, (double)i - g.mx, (double)j - g.my, &vx, &vy, &q)) continue;
            T val = g.an * am_exp((T)(-0.5) * q);
            if (g.use4) {
                const T vx2 = vx * vx, vy2 = vy * vy;
                val *= g.p0 + g.c4 * (vx2 * (vx2 - g.six_fxx) + vy2 * (vy2 - g.six_fyy));
            }
            atomicAdd(img + (long long)j * nx + i, val);
        }
        __syncthreads();  // the next chunk overwrites the interval table
    }
}

// Block k: component k; its 14 (or 6 without USE4) sums into acc[k, :].
template <typename T, bool USE4>
__device__ __forceinline__ void am_accumulate_impl(const double* t, const AmGauss<T>& g, int k,
                                                   int j0, int j1, int bi0, int bi1, int nx,
                                                   double n_sigma,
                                                   const T* __restrict__ R,
                                                   double* __restrict__ acc)
{
    __shared__ int s_i0[AM_CH];
    __shared__ int s_off[AM_CH + 1];
    __shared__ double s_red[AM_MAXWARPS][AM_NACC];
    T a[AM_NACC];
    for (int m = 0; m < AM_NACC; ++m) a[m] = (T)0;
    for (int jc = j0; jc <= j1; jc += AM_CH) {
        am_chunk(t, n_sigma, bi0, bi1, jc, j1, s_i0, s_off);
        const int total = s_off[AM_CH];
        for (int p = threadIdx.x; p < total; p += blockDim.x) {
            const int r = am_find_row(s_off, p);
            const int j = jc + r;
            const int i = s_i0[r] + (p - s_off[r]);
            T vx, vy, q;
            if (!am_pixel(g, (double)i - g.mx, (double)j - g.my, &vx, &vy, &q)) continue;
            const T re = R[(long long)j * nx + i] * am_exp((T)(-0.5) * q);
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
        __syncthreads();  // the next chunk overwrites the interval table
    }
    const int nm = USE4 ? AM_NACC : 6;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    for (int m = 0; m < nm; ++m) {
        double v = (double)a[m];
        for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
        if (lane == 0) s_red[warp][m] = v;
    }
    __syncthreads();
    if ((int)threadIdx.x < nm) {
        double s = 0.0;
        for (int w = 0; w < nwarps; ++w) s += s_red[w][threadIdx.x];
        acc[(long long)k * AM_NACC + threadIdx.x] = s;
    }
}

template <typename T>
__device__ __forceinline__ void am_accumulate(const double* __restrict__ table, int K, int ny,
                                              int nx, double n_sigma, const T* __restrict__ R,
                                              double* __restrict__ acc)
{
    const int k = blockIdx.x;
    if (k >= K) return;
    const double* t = table + (long long)k * AM_NPAR;
    int j0, j1, bi0, bi1;
    if (!am_box(t, ny, nx, &j0, &j1, &bi0, &bi1)) return;  // acc is zero-initialised
    const AmGauss<T> g(t, n_sigma);
    if (g.use4)
        am_accumulate_impl<T, true>(t, g, k, j0, j1, bi0, bi1, nx, n_sigma, R, acc);
    else
        am_accumulate_impl<T, false>(t, g, k, j0, j1, bi0, bi1, nx, n_sigma, R, acc);
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


def _source():
    from ..settings import BOX_C4

    subs = {"NPAR": c.NPAR, "NACC": c.NACC, "BOX_C4": repr(float(BOX_C4)),
            "AMP": c.AMP, "MX": c.MX, "MY": c.MY, "FXX": c.FXX, "FXY": c.FXY,
            "FYY": c.FYY, "NORM": c.NORM, "USE4": c.USE4, "INVDET": c.INVDET, "HY": c.HY,
            "HX": c.HX}
    src = _CUDA_TEMPLATE
    for key, value in subs.items():
        src = src.replace(f"@{key}@", str(value))
    return src


#: The CUDA C source of the four kernels (:data:`KERNEL_NAMES`), with the table
#: layout of :mod:`astromix.backends._common` substituted in.  Kernel arguments:
#: ``(const double* table, int K, int ny, int nx, double n_sigma, T* img)`` for
#: render (launch grid ``(K, chunks)``, block a multiple of 32 threads) and
#: ``(..., const T* R, double* acc)`` for accumulate (grid ``(K,)``), ``acc``
#: zero-initialised.
CUDA_SOURCE = _source()


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
        Threads per block of the render and accumulate kernels, a multiple of
        32 in [32, 1024].  Default 128.

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

    def __init__(self, block_size=128):
        try:
            import cupy
        except ImportError as exc:
            raise ImportError(f"CuPy is not installed ({exc})") from None
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
        self.xp = cupy
        self.block_size = block_size
        try:
            module = cupy.RawModule(code=CUDA_SOURCE)
            self._kernels = {kind: {ch: module.get_function(fname) for ch, fname in names.items()}
                             for kind, names in KERNEL_NAMES.items()}
        except Exception as exc:  # CompileException, driver errors
            raise RuntimeError(f"the CUDA kernels failed to compile: {exc}") from None
        self._residual_kernel = cupy.ElementwiseKernel(
            "T m, T d, T w", "T r",
            "T wr = w * (m - d); r = wr + wr;",
            "astromix_residual")
        self._chi2_kernel = cupy.ReductionKernel(
            "T m, T d, T w", "float64 y",
            "static_cast<double>((w * (m - d)) * (m - d))",
            "a + b", "y = a", "0",
            "astromix_chi2", reduce_type="float64")

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
        """Return ``x`` (a CuPy or NumPy array) as a NumPy array on the host."""
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

        Returns
        -------
        cupy.ndarray, shape (ny, nx), dtype ``dtype``

        Raises
        ------
        InputError
            On another dtype or a malformed table.
        """
        cp = self.xp
        dtype, ch = self._dtype_char(dtype)
        ny, nx = (int(s) for s in shape)
        if out is None:
            img = cp.zeros((ny, nx), dtype=dtype)
        else:
            img = out
            img.fill(0)
        table = self._table(table)
        k = table.shape[0]
        nchunks = _row_chunks(table, (ny, nx)) if k else 0
        if nchunks == 0 or nx <= 0:
            return img
        table_d = cp.asarray(table)
        self._kernels["render"][ch](
            (k, min(nchunks, _MAX_GRID_Y)), (self.block_size,),
            (table_d, np.int32(k), np.int32(ny), np.int32(nx),
             np.float64(settings.n_sigma), img))
        return img

    def residual(self, model, data, weight, out=None):
        """Chi-square and the residual image ``R = 2 w (model - data)`` (a new array;
        ``out`` is accepted for the common interface and not used).

        Parameters
        ----------
        model, data, weight : cupy.ndarray or array-like, shape (ny, nx)
            ``data`` and ``weight`` are converted to ``model``'s dtype.

        Returns
        -------
        chi2 : float
            ``sum w (model - data)**2``, each term computed in ``model``'s dtype
            and summed in float64.
        R : cupy.ndarray, shape (ny, nx), ``model``'s dtype
        """
        cp = self.xp
        model = cp.asarray(model)
        dtype = model.dtype
        data = cp.asarray(data, dtype=dtype)
        weight = cp.asarray(weight, dtype=dtype)
        rimg = self._residual_kernel(model, data, weight)
        chi2 = float(self._chi2_kernel(model, data, weight))
        return chi2, rimg

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
        _, ch = self._dtype_char(rimg.dtype)
        rimg = cp.ascontiguousarray(rimg)
        table = self._table(table)
        k = table.shape[0]
        acc = cp.zeros((k, c.NACC), dtype=np.float64)
        ny, nx = rimg.shape
        if k == 0 or ny == 0 or nx == 0:
            return acc
        table_d = cp.asarray(table)
        self._kernels["accumulate"][ch](
            (k,), (self.block_size,),
            (table_d, np.int32(k), np.int32(ny), np.int32(nx),
             np.float64(settings.n_sigma), rimg, acc))
        return acc
