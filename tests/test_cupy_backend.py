"""Tests of the CuPy (CUDA) backend.

Three levels, so that something is checked on every machine:

* with ``nvcc`` on the PATH: the CUDA source compiles to PTX for sm_80 and sm_90
  and defines the four kernels;
* with a C++ compiler: the CUDA source itself runs on the CPU under a small
  emulation layer (one OS thread per CUDA thread, real barriers and warp
  shuffles, blocks one after another) and is compared with the NumPy reference.
  This checks the kernels' indexing, culling, chunking and reductions, but not
  CUDA's own compiler, ``expf`` or atomics;
* with CuPy and a CUDA device: the backend against the NumPy reference.
"""

import ctypes
import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

from astromix import AccuracySettings, BackendError, GaussianMixture
from astromix.backends import _common, available_backends, cupy_backend, get_backend
from astromix.backends.numpy_backend import NumpyBackend

MODES = ("kurtosis", "variance", "none")
TOL = {np.float32: 1e-4, np.float64: 1e-6}


def _random_mixture(rng, k, shape, margin=8.0, smin=0.4, smax=6.0):
    """K random rotated Gaussians, some partly or wholly outside the image."""
    ny, nx = shape
    amp = rng.uniform(-0.5, 2.0, k)
    mean = np.column_stack([rng.uniform(-margin, nx - 1 + margin, k),
                            rng.uniform(-margin, ny - 1 + margin, k)])
    sig = rng.uniform(smin, smax, (k, 2))
    th = rng.uniform(0, np.pi, k)
    rot = np.stack([np.stack([np.cos(th), -np.sin(th)], -1),
                    np.stack([np.sin(th), np.cos(th)], -1)], -2)
    cov = np.einsum("kab,kb,kcb->kac", rot, sig ** 2, rot)
    return GaussianMixture(amp, mean, cov)


def _assert_close(got, ref, tol, what):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= tol * scale, f"{what}: max|diff| = {err:.3g} > {tol:g} * {scale:.3g}"


# -- the CUDA source, without a GPU ----------------------------------------------------
def test_source_uses_the_table_layout():
    src = cupy_backend.CUDA_SOURCE
    assert "@" not in src  # every placeholder substituted
    for name in ("NPAR", "NACC", "AMP", "MX", "MY", "FXX", "FXY", "FYY", "NORM", "USE4",
                 "INVDET", "HY", "HX"):
        assert f"#define AM_{name} {getattr(_common, name)}\n" in src
    assert f"#define AM_CH {cupy_backend.CHUNK_ROWS}\n" in src
    for names in cupy_backend.KERNEL_NAMES.values():
        for fname in names.values():
            assert f'extern "C" __global__ void {fname}(' in src


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles_with_nvcc(tmp_path, arch):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH")
    archs = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True)
    if archs.returncode == 0 and arch.replace("sm_", "compute_") not in archs.stdout.split():
        pytest.skip(f"this nvcc does not support {arch}")
    cu = tmp_path / "astromix_kernels.cu"
    cu.write_text(cupy_backend.CUDA_SOURCE)
    ptx = tmp_path / "astromix_kernels.ptx"
    proc = subprocess.run([nvcc, f"-arch={arch}", "-ptx", str(cu), "-o", str(ptx)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    for names in cupy_backend.KERNEL_NAMES.values():
        for fname in names.values():
            assert f".entry {fname}(" in text


def test_registry_without_cupy():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed")
    with pytest.raises(BackendError, match="not available"):
        get_backend("cupy")
    assert "cupy" not in available_backends()


# CPU emulation of the CUDA features the kernels use.  Blocks run one after another
# (so __shared__ can be a function-local static); each CUDA thread is an OS thread.
_EMULATION = r"""
#include <math.h>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
struct am_dim3 { unsigned x, y, z; };
struct int4 { int x, y, z, w; };
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static thread_local am_dim3 threadIdx, blockIdx;
static am_dim3 blockDim, gridDim;
class am_barrier {
    std::mutex m; std::condition_variable cv; int n = 0, count = 0; long gen = 0;
public:
    void reset(int n_) { n = n_; count = 0; }
    void wait() {
        std::unique_lock<std::mutex> lk(m);
        long g = gen;
        if (++count == n) { count = 0; ++gen; cv.notify_all(); }
        else cv.wait(lk, [&] { return g != gen; });
    }
};
static am_barrier am_block_bar, am_warp_bar[32];
static double am_xbuf[1024];
static std::mutex am_atomic_mtx;
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
static inline void __syncthreads() { am_block_bar.wait(); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
template <class V> static V am_shfl(V v, int src, bool ok) {
    unsigned tid = threadIdx.x, w = tid / 32;
    am_xbuf[tid] = (double)v;
    am_warp_bar[w].wait();
    V r = ok ? (V)am_xbuf[w * 32 + src] : v;
    am_warp_bar[w].wait();
    return r;
}
template <class V> static V __shfl_up_sync(unsigned, V v, int d) {
    int lane = threadIdx.x % 32; return am_shfl(v, lane - d, lane >= d);
}
template <class V> static V __shfl_down_sync(unsigned, V v, int d) {
    int lane = threadIdx.x % 32; return am_shfl(v, lane + d, lane + d < 32);
}
static unsigned __ballot_sync(unsigned, int pred) {
    unsigned tid = threadIdx.x, w = tid / 32, m = 0;
    am_xbuf[tid] = pred ? 1.0 : 0.0;
    am_warp_bar[w].wait();
    for (unsigned l = 0; l < 32; ++l) if (am_xbuf[w * 32 + l] != 0.0) m |= 1u << l;
    am_warp_bar[w].wait();
    return m;
}
static int __popc(unsigned x) { return __builtin_popcount(x); }
static int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
template <class V> static V atomicAdd(V* p, V v) {
    std::lock_guard<std::mutex> g(am_atomic_mtx); V o = *p; *p = o + v; return o;
}
template <class F> static void am_launch(unsigned gx, unsigned gy, unsigned bs, F body,
                                        unsigned gz = 1) {
    gridDim = {gx, gy, gz}; blockDim = {bs, 1, 1};
    am_block_bar.reset(bs);
    for (auto& b : am_warp_bar) b.reset(32);
    std::vector<std::thread> th;
    for (unsigned t = 0; t < bs; ++t)
        th.emplace_back([=] {
            threadIdx = {t, 0, 0};
            for (unsigned bz = 0; bz < gz; ++bz)
                for (unsigned by = 0; by < gy; ++by)
                    for (unsigned bx = 0; bx < gx; ++bx) {
                        blockIdx = {bx, by, bz};
                        body();
                        am_block_bar.wait();
                    }
        });
    for (auto& x : th) x.join();
}
"""

_LAUNCHERS = r"""
// The boxes the tile gathers read: the box kernel's, or null (each tile computes them).
static int* emu_gather_boxes(const double* t, int K, int ny, int nx, int with_boxes,
                             std::vector<int>& box)
{
    if (!with_boxes) return nullptr;
    box.assign(4 * (size_t)K + 4, 0);
    int* b = box.data();
    am_launch((K + 63) / 64, 1, 64, [=] { astromix_boxes(t, K, ny, nx, b); });
    return b;
}
#define AM_WRAP(T, S) \
extern "C" void emu_render_##S(const double* t, int K, int ny, int nx, double ns, T* img, \
                               int gy, int bs) \
{ am_launch(K, gy, bs, [=] { astromix_render_##S(t, K, ny, nx, ns, img); }); } \
extern "C" void emu_accumulate_##S(const double* t, int K, int ny, int nx, double ns, \
                                   const T* R, double* acc, int bs) \
{ am_launch(K, 1, bs, [=] { astromix_accumulate_##S(t, K, ny, nx, ns, R, acc); }); } \
extern "C" void emu_render_tiles_##S(const double* t, int K, int ny, int nx, double ns, T* img, \
                                     int with_boxes) \
{ std::vector<int> box; int* b = emu_gather_boxes(t, K, ny, nx, with_boxes, box); \
  am_launch((nx + AM_TILE - 1) / AM_TILE, (ny + AM_TILE - 1) / AM_TILE, AM_TILE * AM_TILE, \
            [=] { astromix_render_tiles_##S(t, b, K, ny, nx, ns, img); }); } \
extern "C" void emu_render_rows_##S(const double* t, int K, int ny, int nx, double ns, T* img, \
                                    int with_boxes, int nz) \
{ std::vector<int> box; int* b = emu_gather_boxes(t, K, ny, nx, with_boxes, box); \
  const int tw = AM_RUN * AM_RSEG, th = AM_BATCH / AM_RSEG; \
  std::vector<T> part((size_t)nz * ny * nx, (T)NAN); T* pp = nz > 1 ? part.data() : img; \
  am_launch((nx + tw - 1) / tw, (ny + th - 1) / th, AM_BATCH, \
            [=] { astromix_render_rows_##S(t, b, K, ny, nx, ns, pp); }, nz); \
  if (nz > 1) \
      am_launch(3, 1, 32, [=] { astromix_sum_slices_##S(pp, nz, (long long)ny * nx, img); }); } \
extern "C" void emu_accumulate_rows_##S(const double* t, int K, int ny, int nx, double ns, \
                                        const T* R, double* acc, int bs) \
{ am_launch(K, 1, bs, [=] { astromix_accumulate_rows_##S(t, K, ny, nx, ns, R, acc); }); }
#define AM_WRAP_RESIDUAL(T, S) \
extern "C" void emu_residual_##S(const T* m, const T* d, const T* w, T* r, long long n, \
                                 double* part, int nb, int bs) \
{ am_launch(nb, 1, bs, [=] { astromix_residual_##S(m, d, w, r, n, part); }); }
extern "C" void emu_prepare(const double* src, int K, double ns, double bv, int kurt, double th,
                            double* table, int nb, int bs)
{ am_launch(nb, 1, bs, [=] { astromix_prepare(src, K, ns, bv, kurt, th, table); }); }
extern "C" void emu_boxes(const double* t, int K, int ny, int nx, int* box, int nb, int bs)
{ am_launch(nb, 1, bs, [=] { astromix_boxes(t, K, ny, nx, box); }); }
extern "C" void emu_assemble(const double* t, const double* acc, int K, double* out, int nb,
                             int bs)
{ am_launch(nb, 1, bs, [=] { astromix_assemble(t, acc, K, out); }); }
AM_WRAP_RESIDUAL(float, f32)
AM_WRAP_RESIDUAL(double, f64)
AM_WRAP(float, f32)
AM_WRAP(double, f64)
"""


class _EmulatedKernels:
    """The CUDA kernels compiled for the CPU with the emulation layer."""

    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(str(path))
        ptr = np.ctypeslib.ndpointer
        cint, cdbl = ctypes.c_int, ctypes.c_double
        lib.emu_boxes.argtypes = [ptr(np.float64, flags="C"), cint, cint, cint,
                                  ptr(np.int32, flags="C"), cint, cint]
        lib.emu_prepare.argtypes = [ptr(np.float64, flags="C"), cint, cdbl, cdbl, cint, cdbl,
                                    ptr(np.float64, flags="C"), cint, cint]
        lib.emu_assemble.argtypes = [ptr(np.float64, flags="C"), ptr(np.float64, flags="C"),
                                     cint, ptr(np.float64, flags="C"), cint, cint]
        for suffix, dtype in (("f32", np.float32), ("f64", np.float64)):
            getattr(lib, "emu_render_" + suffix).argtypes = [
                ptr(np.float64, flags="C"), cint, cint, cint, cdbl, ptr(dtype, flags="C"),
                cint, cint]
            getattr(lib, "emu_residual_" + suffix).argtypes = [
                ptr(dtype, flags="C"), ptr(dtype, flags="C"), ptr(dtype, flags="C"),
                ptr(dtype, flags="C"), ctypes.c_longlong, ptr(np.float64, flags="C"), cint, cint]
            getattr(lib, "emu_render_rows_" + suffix).argtypes = [
                ptr(np.float64, flags="C"), cint, cint, cint, cdbl, ptr(dtype, flags="C"),
                cint, cint]
            getattr(lib, "emu_render_tiles_" + suffix).argtypes = [
                ptr(np.float64, flags="C"), cint, cint, cint, cdbl, ptr(dtype, flags="C"),
                cint]
            for kind in ("accumulate", "accumulate_rows"):
                getattr(lib, f"emu_{kind}_" + suffix).argtypes = [
                    ptr(np.float64, flags="C"), cint, cint, cint, cdbl, ptr(dtype, flags="C"),
                    ptr(np.float64, flags="C"), cint]

    @staticmethod
    def _suffix(dtype):
        return "f32" if np.dtype(dtype) == np.float32 else "f64"

    def render(self, table, shape, dtype, settings, block=64, max_chunks=None):
        img = np.zeros(shape, dtype=dtype)
        chunks = cupy_backend._row_chunks(table, shape)
        if max_chunks is not None:
            chunks = min(chunks, max_chunks)
        if len(table) and chunks:
            getattr(self.lib, "emu_render_" + self._suffix(dtype))(
                np.ascontiguousarray(table), len(table), shape[0], shape[1],
                settings.n_sigma, img, chunks, block)
        return img

    def render_tiles(self, table, shape, dtype, settings, with_boxes=True, kind="tiles",
                     slices=1):
        """The tile render (``kind="rows"``: the row-run render, its components in
        ``slices`` slices), reading the box kernel's boxes (or computing them per
        tile: ``with_boxes=False``, the path for fewer than BOX_KERNEL_MIN)."""
        img = np.full(shape, np.nan, dtype=dtype)  # every pixel must be written
        extra = (int(slices),) if kind == "rows" else ()
        getattr(self.lib, f"emu_render_{kind}_" + self._suffix(dtype))(
            np.ascontiguousarray(table), len(table), shape[0], shape[1], settings.n_sigma, img,
            int(with_boxes), *extra)
        return img

    def residual(self, model, data, weight, out, nblocks=3, block=64):
        """(per-block sums (nblocks, 2), R in ``out``) of the residual kernel."""
        part = np.full(2 * nblocks, np.nan)
        getattr(self.lib, "emu_residual_" + self._suffix(model.dtype))(
            model, data, weight, out, model.size, part, nblocks, block)
        return part.reshape(nblocks, 2), out

    def prepare(self, amp, mean, cov, settings, nblocks=2, block=32):
        k = len(amp)
        src = np.column_stack([amp, mean, np.reshape(cov, (k, 4))])
        table = np.full((k, _common.NPAR), np.nan)
        self.lib.emu_prepare(np.ascontiguousarray(src), k, settings.n_sigma,
                             settings.box_variance, settings.pixel_integration == "kurtosis",
                             settings.fourth_order_threshold, table, nblocks, block)
        return table

    def boxes(self, table, shape, nblocks=2, block=32):
        box = np.full((len(table), 4), -7, dtype=np.int32)
        self.lib.emu_boxes(np.ascontiguousarray(table), len(table), shape[0], shape[1], box,
                           nblocks, block)
        return box

    def assemble(self, table, acc, nblocks=2, block=32):
        """(d_amp, d_mean, d_cov) of the assemble kernel."""
        k = len(table)
        out = np.full(7 * k, np.nan)
        self.lib.emu_assemble(np.ascontiguousarray(table), np.ascontiguousarray(acc), k, out,
                              nblocks, block)
        return out[:k], out[k:3 * k].reshape(k, 2), out[3 * k:].reshape(k, 2, 2)

    def accumulate(self, table, rimg, settings, block=64, kind="accumulate"):
        """The accumulate kernel (``kind="accumulate_rows"``: the row-run one)."""
        acc = np.full((len(table), _common.NACC), np.nan)  # every row must be written
        if len(table):
            getattr(self.lib, f"emu_{kind}_" + self._suffix(rimg.dtype))(
                np.ascontiguousarray(table), len(table), rimg.shape[0], rimg.shape[1],
                settings.n_sigma, np.ascontiguousarray(rimg), acc, block)
        return acc


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("cuda_emulation")
    cpp = folder / "kernels.cpp"
    cpp.write_text(_EMULATION + cupy_backend.CUDA_SOURCE + _LAUNCHERS)
    lib = folder / "kernels.so"
    proc = subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-pthread",
                           "-ffp-contract=off", str(cpp), "-o", str(lib)],
                          capture_output=True, text=True)
    # a compiler that is there but fails is a defect of the CUDA source (or of the
    # emulation layer), not a reason to skip
    assert proc.returncode == 0, f"the CPU emulation does not build: {proc.stderr[-2000:]}"
    return _EmulatedKernels(lib)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_kernels_match_numpy(emulated, mode, dtype):
    rng = np.random.default_rng(7)
    shape = (37, 53)
    gm = _random_mixture(rng, 20, shape)
    settings = AccuracySettings(pixel_integration=mode)
    table = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    if mode == "kurtosis":  # both code paths of the accumulate kernel
        assert 0 < table[:, _common.USE4].sum() < len(table)
    ref = NumpyBackend()
    want = ref.render(table, shape, dtype, settings)
    _assert_close(emulated.render(table, shape, dtype, settings), want, TOL[dtype], "render")
    for kind in ("tiles", "rows"):
        for with_boxes in (True, False):
            _assert_close(emulated.render_tiles(table, shape, dtype, settings, with_boxes, kind),
                          want, TOL[dtype], f"{kind} render")
    data = (want + rng.normal(0, 0.01, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    _, rimg = ref.residual(want, data, weight)
    acc_ref = ref.accumulate(table, rimg, settings)
    for kind in ("accumulate", "accumulate_rows"):
        acc = emulated.accumulate(table, rimg, settings, kind=kind)
        for got, exp, what in zip(_common.assemble_gradient(table, acc),
                                  _common.assemble_gradient(table, acc_ref),
                                  ("d_amp", "d_mean", "d_cov")):
            _assert_close(got, exp, TOL[dtype], f"{kind}: {what}")


@pytest.mark.parametrize("kind", ["accumulate", "accumulate_rows"])
@pytest.mark.parametrize("block", [32, 64, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_accumulate_clipped_and_outside(emulated, dtype, block, kind):
    """The accumulate kernels (a window of 16 columns x block/16 rows, or runs of
    RUN pixels) over components larger than them, clipped by the image edges, and
    entirely outside the image: NumPy's accumulators, and a zero row (written, not
    left) for the outside ones."""
    rng = np.random.default_rng(21)
    shape = (29, 41)
    amp = rng.uniform(0.5, 2.0, 6)
    mean = np.array([[20.3, 14.2], [-0.4, 3.3], [40.6, 28.9], [-30.0, 10.0], [20.0, 60.0],
                     [7.7, 21.1]])
    sig = np.array([[9.0, 5.0], [3.0, 2.0], [2.5, 4.0], [2.0, 2.0], [3.0, 1.5], [0.4, 0.5]])
    rho = np.array([0.3, -0.5, 0.0, 0.2, 0.0, 0.1])
    cov = np.empty((6, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sig[:, 0] ** 2, sig[:, 1] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sig[:, 0] * sig[:, 1]
    settings = AccuracySettings()
    table = _common.prepare(amp, mean, cov, settings)
    assert table[:, _common.USE4].any() and not table[:, _common.USE4].all()
    rimg = rng.normal(0.0, 1.0, shape).astype(dtype)
    want = NumpyBackend().accumulate(table, rimg, settings)
    got = emulated.accumulate(table, rimg, settings, block=block, kind=kind)
    assert np.all(got[3:5] == 0.0)  # (-30, 10) and (20, 60): no pixel in the image
    for m in range(_common.NACC):
        scale = np.abs(want[:, m]).max() + 1e-300
        assert np.abs(got[:, m] - want[:, m]).max() <= TOL[dtype] * scale * 10, m


@pytest.mark.parametrize("mode", MODES)
def test_emulated_prepare_kernel_is_numpys_table(emulated, mode):
    """The prepare kernel builds _common.prepare's table bit for bit (every
    operation rounded on its own, in NumPy's order), for every pixel-integration
    mode, with the fourth-order flag set on some components only."""
    rng = np.random.default_rng(3)
    gm = _random_mixture(rng, 300, (50, 60), smin=0.2, smax=8.0)
    settings = AccuracySettings(pixel_integration=mode, n_sigma=4.5)
    want = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    got = emulated.prepare(gm.amp, gm.mean, gm.cov, settings)
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))
    if mode == "kurtosis":
        assert 0 < want[:, _common.USE4].sum() < len(want)


def test_emulated_boxes_and_assemble_kernels(emulated):
    """The box kernel gives _common.box (and an empty box for a component off the
    image); the assemble kernel gives _common.assemble_gradient's three arrays."""
    rng = np.random.default_rng(5)
    shape = (30, 45)
    gm = _random_mixture(rng, 70, shape, margin=15.0, smin=0.3, smax=5.0)
    mean = np.vstack([gm.mean, [[-50.0, 10.0], [10.0, 80.0]]])
    cov = np.concatenate([gm.cov, np.tile(np.eye(2), (2, 1, 1))])
    amp = np.concatenate([gm.amp, [1.0, 1.0]])
    settings = AccuracySettings()
    table = _common.prepare(amp, mean, cov, settings)
    box = emulated.boxes(table, shape)
    for k, row in enumerate(table):
        j0, j1, i0, i1 = _common.box(row, shape)
        if j1 < j0 or i1 < i0:
            assert tuple(box[k]) == (0, -1, 0, -1)
        else:
            assert tuple(box[k]) == (j0, j1, i0, i1)
    assert tuple(box[-1]) == tuple(box[-2]) == (0, -1, 0, -1)
    acc = rng.normal(0.0, 1.0, (len(table), _common.NACC))
    for got, want in zip(emulated.assemble(table, acc), _common.assemble_gradient(table, acc)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_residual_kernel(emulated, dtype):
    """The residual kernel: chi2 and R = 2 w (model - data) as NumPy's, R written over the
    model itself, masked pixels (weight 0, NaN data) giving 0, and the count of pixels
    with a non-finite datum or weight or a negative weight (the pixel check)."""
    rng = np.random.default_rng(13)
    shape = (37, 41)  # more pixels than the 3 x 64 threads: the grid-stride loop
    model = rng.normal(size=shape).astype(dtype)
    data = rng.normal(size=shape).astype(dtype)
    weight = rng.uniform(0, 2, shape).astype(dtype)
    weight[::7, ::5] = 0.0
    want_r = (2 * weight.astype(np.float64) * (model - data.astype(np.float64)))
    want_chi2 = float(np.sum(weight.astype(np.float64) * (model.astype(np.float64) - data) ** 2))
    part, r = emulated.residual(model, data, weight, np.empty_like(model))
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    assert part[:, 0].sum() == pytest.approx(want_chi2, rel=rtol)
    np.testing.assert_allclose(r, want_r, rtol=rtol, atol=rtol)
    assert part[:, 1].sum() == 0
    inplace = model.copy()
    part2, r2 = emulated.residual(inplace, data, weight, inplace)
    np.testing.assert_array_equal(r2, r)  # the same bits, written over the model
    np.testing.assert_array_equal(part2, part)
    bad_d, bad_w = data.copy(), weight.copy()
    bad_d[0, 0] = np.nan
    bad_d[7, 5] = np.nan  # masked (weight 0): R = 0 there, but still counted
    bad_d[1, 1] = np.inf
    bad_w[2, 2], bad_w[4, 4], bad_w[5, 6] = np.nan, -1.0, np.inf
    part3, r3 = emulated.residual(model, bad_d, bad_w, np.empty_like(model))
    assert part3[:, 1].sum() == 6
    assert r3[7, 5] == 0.0 and r3[0, 0] == 0.0 and not np.isfinite(part3[:, 0].sum())


def _support_cases():
    """(settings, one-component table) pairs: random ones, and circles through pixel centres.

    In the second kind, pixels lie on the n-sigma ellipse up to the last bit of
    q, so the float32 kernels must fall back to NumPy's float64 test to agree.
    """
    rng = np.random.default_rng(11)
    shape = (41, 29)
    settings = AccuracySettings(n_sigma=3.5)
    gm = _random_mixture(rng, 12, shape, smin=0.3, smax=9.0)
    table = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    cases = [(settings, table[k:k + 1]) for k in range(len(table))]
    for var, r2, centre in ((3.0, 50, (14, 20)), (1.1, 25, (3.0, 7.0)), (0.7, 29, (20, 33)),
                            (2.2, 65, (10, 39)), (5.0, 10, (27.0, 0.0)),
                            # the edge of a wide Gaussian across the image, where the
                            # row-run kernels bound the rows in float32 (box < 4096 px)
                            # and in float64 (larger)
                            (2.5e5, 25 * 2.5e5, (14.3, 2520.7)),
                            (1e6, 25e6, (-4985.6, 20.2)), (1e6, 25e6, (14.3, 5020.2))):
        settings = AccuracySettings(n_sigma=float(np.sqrt(r2 / var)), pixel_integration="none")
        cases.append((settings, _common.prepare([1.0], [centre], [np.eye(2) * var], settings)))
    return shape, cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_kernels_touch_the_same_pixels(emulated, dtype):
    """Each component's support is exactly the reference's (float64 q test)."""
    shape, cases = _support_cases()
    ref = NumpyBackend()
    for k, (settings, one) in enumerate(cases):
        one = one.copy()
        one[0, _common.AMP] = 1.0
        want = ref.render(one, shape, dtype, settings) != 0
        # max_chunks=1: the render kernel's grid-stride loop over row chunks
        got = emulated.render(one, shape, dtype, settings, block=32, max_chunks=1) != 0
        assert np.array_equal(got, want), f"case {k}"
        got = emulated.render_tiles(one, shape, dtype, settings) != 0
        assert np.array_equal(got, want), f"tile render, case {k}"
        got = emulated.render_tiles(one, shape, dtype, settings, with_boxes=False) != 0
        assert np.array_equal(got, want), f"tile render (boxes per tile), case {k}"
        got = emulated.render_tiles(one, shape, dtype, settings, kind="rows") != 0
        assert np.array_equal(got, want), f"row-run render, case {k}"


def test_emulated_row_run_accumulate_sums_the_same_pixels(emulated):
    """The row-run accumulate sums over exactly the reference's support: with
    R = 1, the first accumulator is the sum of E over the support, and a pixel
    more or less on the n-sigma ellipse (E = exp(-n^2 / 2), 1e-7 of the sum)
    shows in float64."""
    shape, cases = _support_cases()
    ref = NumpyBackend()
    rimg = np.ones(shape)
    for k, (settings, one) in enumerate(cases):
        want = ref.accumulate(one, rimg, settings)
        got = emulated.accumulate(one, rimg, settings, kind="accumulate_rows")
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max(),
                                   err_msg=f"case {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_tile_render_batches(emulated, dtype):
    """The tile render over several batches of components (K > BATCH), with most
    components missing most tiles: the same image as NumPy, bit for bit in the
    support, and the same bits at a second call (each pixel is summed in table
    order, without atomics)."""
    rng = np.random.default_rng(12)
    shape = (40, 50)
    k = 2 * cupy_backend.BATCH + 37
    gm = _random_mixture(rng, k, shape, margin=12.0, smin=0.3, smax=3.0)
    settings = AccuracySettings()
    table = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    want = NumpyBackend().render(table, shape, dtype, settings)
    for kind in ("tiles", "rows"):
        got = emulated.render_tiles(table, shape, dtype, settings, kind=kind)
        _assert_close(got, want, TOL[dtype], f"{kind} render")
        assert np.array_equal(got != 0, want != 0)
        assert np.array_equal(emulated.render_tiles(table, shape, dtype, settings, kind=kind),
                              got)
        assert np.array_equal(emulated.render_tiles(table, shape, dtype, settings, False, kind),
                              got)
    # the row-run render with its components in 3 slices, summed in a fixed order
    got = emulated.render_tiles(table, shape, dtype, settings, kind="rows", slices=3)
    _assert_close(got, want, TOL[dtype], "rows render, 3 slices")
    assert np.array_equal(got != 0, want != 0)
    assert np.array_equal(emulated.render_tiles(table, shape, dtype, settings, kind="rows",
                                                slices=3), got)


# -- the backend on a GPU -------------------------------------------------------
@pytest.fixture(scope="module")
def cupy_bk():
    pytest.importorskip("cupy")
    try:
        return get_backend("cupy")
    except BackendError as exc:
        pytest.skip(str(exc))


def _mixture_and_data(seed, dtype, shape=(48, 64), k=30):
    rng = np.random.default_rng(seed)
    gm = _random_mixture(rng, k, shape)
    ref = gm.render(shape, dtype=dtype, backend="numpy")
    data = (ref + rng.normal(0, 0.01, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    return gm, data, weight


@pytest.mark.gpu
def test_backend_attributes(cupy_bk):
    import cupy

    assert cupy_bk.name == "cupy"
    assert cupy_bk.xp is cupy
    x = cupy_bk.asarray([1.0, 2.0], dtype=np.float32)
    assert isinstance(x, cupy.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(cupy_bk.to_numpy(x), [1.0, 2.0])
    assert "cupy" in available_backends()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_render_matches_numpy(cupy_bk, mode, dtype):
    import cupy

    settings = AccuracySettings(pixel_integration=mode)
    gm, _, _ = _mixture_and_data(1, dtype)
    want = gm.render((48, 64), dtype=dtype, settings=settings, backend="numpy")
    got = gm.render((48, 64), dtype=dtype, settings=settings, backend="cupy")
    assert isinstance(got, cupy.ndarray) and got.dtype == dtype and got.shape == (48, 64)
    _assert_close(cupy.asnumpy(got), want, TOL[dtype], "render")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chi2_gradient_matches_numpy(cupy_bk, mode, dtype):
    import cupy

    settings = AccuracySettings(pixel_integration=mode)
    gm, data, weight = _mixture_and_data(2, dtype)
    gm = gm.shift(0.3, -0.2)  # a non-zero residual
    c_ref, g_ref = gm.chi2(data, weight, gradient=True, settings=settings, backend="numpy")
    c_np, g_np = gm.chi2(data, weight, gradient=True, settings=settings, backend="cupy")
    c_cp, g_cp = gm.chi2(cupy.asarray(data), cupy.asarray(weight), gradient=True,
                         settings=settings, backend="cupy")
    for value, grads in ((c_np, g_np), (c_cp, g_cp)):
        assert isinstance(value, float)
        assert abs(value - c_ref) <= TOL[dtype] * abs(c_ref)
        for got, exp, what in zip(grads, g_ref, ("d_amp", "d_mean", "d_cov")):
            assert isinstance(got, np.ndarray) and got.shape == exp.shape
            _assert_close(got, exp, TOL[dtype], what)
    assert gm.chi2(data, weight, settings=settings, backend="cupy") == pytest.approx(
        c_ref, rel=TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_support_as_numpy(cupy_bk, dtype):
    import cupy

    shape, cases = _support_cases()
    for k, (settings, one) in enumerate(cases):
        one = one.copy()
        one[0, _common.AMP] = 1.0
        want = NumpyBackend().render(one, shape, dtype, settings) != 0
        got = cupy.asnumpy(cupy_bk.render(one, shape, dtype, settings)) != 0
        assert np.array_equal(got, want), f"case {k}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_image_many_row_chunks(cupy_bk, dtype):
    import cupy

    rng = np.random.default_rng(3)
    shape = (300, 260)
    gm = _random_mixture(rng, 40, shape, margin=40.0, smin=0.5, smax=40.0)
    want = gm.render(shape, dtype=dtype, backend="numpy")
    got = cupy.asnumpy(gm.render(shape, dtype=dtype, backend="cupy"))
    _assert_close(got, want, TOL[dtype], "render")
    data = (want + rng.normal(0, 1e-3, shape)).astype(dtype)
    weight = np.ones(shape, dtype)
    moved = gm.shift(0.5, 0.25)
    c_ref, g_ref = moved.chi2(data, weight, gradient=True, backend="numpy")
    c_got, g_got = moved.chi2(data, weight, gradient=True, backend="cupy")
    assert abs(c_got - c_ref) <= TOL[dtype] * abs(c_ref)
    for got, exp, what in zip(g_got, g_ref, ("d_amp", "d_mean", "d_cov")):
        _assert_close(got, exp, TOL[dtype], what)


@pytest.mark.gpu
def test_nothing_in_the_image(cupy_bk):
    import cupy

    settings = AccuracySettings()
    far = GaussianMixture([1.0, 2.0], [[-100.0, 5.0], [5.0, 500.0]], [np.eye(2), np.eye(2) * 4])
    table = _common.prepare(far.amp, far.mean, far.cov, settings)
    img = cupy_bk.render(table, (16, 16), np.float32, settings)
    assert img.dtype == np.float32 and not bool(cupy.any(img))
    acc = cupy_bk.accumulate(table, cupy.ones((16, 16), np.float32), settings)
    assert acc.shape == (2, _common.NACC) and not bool(cupy.any(acc))
    empty = np.zeros((0, _common.NPAR))
    assert not bool(cupy.any(cupy_bk.render(empty, (8, 8), np.float64, settings)))
    assert cupy_bk.accumulate(empty, cupy.ones((8, 8)), settings).shape == (0, _common.NACC)


@pytest.mark.gpu
def test_masked_data(cupy_bk):
    gm, data, weight = _mixture_and_data(4, np.float64)
    data[3, 4] = np.nan
    weight[3, 4] = 0.0
    c_ref, g_ref = gm.chi2(data, weight, gradient=True, backend="numpy")
    c_got, g_got = gm.chi2(data, weight, gradient=True, backend="cupy")
    assert np.isfinite(c_got) and abs(c_got - c_ref) <= 1e-6 * abs(c_ref)
    for got, exp, what in zip(g_got, g_ref, ("d_amp", "d_mean", "d_cov")):
        _assert_close(got, exp, 1e-6, what)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_run_kernels_match_numpy_on_the_gpu(cupy_bk, dtype):
    """``render_kernel="rows"`` and ``accumulate_kernel="rows"`` on the GPU: NumPy's
    image (same support), chi2 and gradient, with enough components and a large
    enough image for the render to split them into slices, the same bits twice."""
    import cupy

    from astromix.backends.cupy_backend import CupyBackend

    bk = CupyBackend(render_kernel="rows", accumulate_kernel="rows")
    rng = np.random.default_rng(31)
    shape = (600, 700)
    gm = _random_mixture(rng, 2500, shape, margin=20.0, smin=0.4, smax=12.0)
    settings = AccuracySettings()
    table = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    tiles = (-(-shape[1] // (cupy_backend.RUN * cupy_backend.RSEG))
             * -(-shape[0] // (cupy_backend.BATCH // cupy_backend.RSEG)))
    assert bk._slices(tiles, len(table)) > 1
    want = NumpyBackend().render(table, shape, dtype, settings)
    got = bk.render(table, shape, dtype, settings)
    assert bool(cupy.all(bk.render(table, shape, dtype, settings) == got))
    got = cupy.asnumpy(got)
    _assert_close(got, want, TOL[dtype], "rows render")
    assert np.array_equal(got != 0, want != 0)
    data = (want + rng.normal(0, 1e-3, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    _, rimg = NumpyBackend().residual(want, data, weight)
    acc_ref = NumpyBackend().accumulate(table, rimg, settings)
    acc = cupy.asnumpy(bk.accumulate(table, cupy.asarray(rimg), settings))
    for g, e, what in zip(_common.assemble_gradient(table, acc),
                          _common.assemble_gradient(table, acc_ref),
                          ("d_amp", "d_mean", "d_cov")):
        _assert_close(g, e, TOL[dtype], what)


@pytest.mark.gpu
def test_tile_render_deterministic_and_atomic_kernel_agrees(cupy_bk):
    """The default tile render gives the same bits at every call (so does chi2 with its
    gradient), and the atomic render kernel (``render_kernel="atomic"``) the same image
    to rounding."""
    import cupy

    from astromix.backends.cupy_backend import CupyBackend

    rng = np.random.default_rng(9)
    shape = (200, 230)
    gm = _random_mixture(rng, 400, shape, smin=0.4, smax=8.0)
    settings = AccuracySettings()
    table = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    atomic = CupyBackend(render_kernel="atomic")
    for dtype in (np.float32, np.float64):
        first = cupy.asnumpy(cupy_bk.render(table, shape, dtype, settings))
        assert np.array_equal(cupy.asnumpy(cupy_bk.render(table, shape, dtype, settings)), first)
        _assert_close(cupy.asnumpy(atomic.render(table, shape, dtype, settings)), first,
                      TOL[dtype], "atomic render")
        data = cupy.asarray(first * 1.02 + 1e-3)
        weight = cupy.ones(shape, dtype)
        c1, g1 = gm.chi2(data, weight, gradient=True, backend="cupy")
        c2, g2 = gm.chi2(data, weight, gradient=True, backend="cupy")
        assert c1 == c2
        for a, b in zip(g1, g2):
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="render_kernel"):
        CupyBackend(render_kernel="scatter")
    with pytest.raises(ValueError, match="accumulate_kernel"):
        CupyBackend(accumulate_kernel="window")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_prepare_is_numpys_table_and_feeds_render(cupy_bk, mode):
    """The table built on the GPU (render_stamp and chi2_stamp use it) is
    _common.prepare's bit for bit, so GaussianMixture.render gives the same bits as
    the backend's render of the host-built table; the atomic-render backend (host
    table) gives the same chi2 and gradient to rounding."""
    import cupy

    from astromix.backends.cupy_backend import CupyBackend

    rng = np.random.default_rng(17)
    shape = (70, 90)
    # enough components for render_stamp and chi2_stamp to build the table on the GPU
    gm = _random_mixture(rng, cupy_backend.GPU_PREPARE_MIN + 50, shape, smin=0.2, smax=9.0)
    settings = AccuracySettings(pixel_integration=mode)
    want = _common.prepare(gm.amp, gm.mean, gm.cov, settings)
    got = cupy.asnumpy(cupy_bk._prepare_device(gm.amp, gm.mean, gm.cov, settings))
    assert np.array_equal(got.view(np.uint64), want.view(np.uint64))
    for dtype in (np.float32, np.float64):
        img = gm.render(shape, dtype=dtype, settings=settings, backend="cupy")
        ref = cupy_bk.render(want, shape, dtype, settings)
        assert np.array_equal(cupy.asnumpy(img), cupy.asnumpy(ref))
        data = img * 1.03 + 2e-3
        weight = cupy.full(shape, 2.0, dtype)
        c_t, g_t = gm.chi2(data, weight, gradient=True, settings=settings, backend="cupy")
        atomic = CupyBackend(render_kernel="atomic")
        c_a, g_a = atomic.chi2_stamp(gm._amp, gm._mean, gm._cov, data, weight, settings, True)
        assert abs(c_a - c_t) <= TOL[dtype] * abs(c_t)
        for a, b, what in zip(g_a, g_t, ("d_amp", "d_mean", "d_cov")):
            _assert_close(a, b, TOL[dtype], what)


# nvidia-smi's header as printed by drivers 580 (CUDA 13.0) and 535 (CUDA 12.2), and its
# message when the driver is not loaded
_SMI_580 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
"""
_SMI_535 = """\
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""
_SMI_FAILED = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
               "driver. Make sure that the latest NVIDIA driver is installed and running.\n")


@pytest.mark.parametrize("text, version, wheel, hint", [
    (_SMI_580, (13, 0), "cupy-cuda13x", 'CUDA 13.0: pip install "astromix[gpu-cuda13]"'),
    (_SMI_535, (12, 2), "cupy-cuda12x", 'CUDA 12.2: pip install "astromix[gpu]"'),
    (_SMI_535.replace("12.2", "11.8"), (11, 8), "cupy-cuda11x",
     "CUDA 11.8: pip install cupy-cuda11x"),
    (_SMI_FAILED, None, None, "no NVIDIA driver found"),
])
def test_cupy_wheel_follows_the_driver(text, version, wheel, hint):
    """The CuPy wheel chosen for the CUDA version nvidia-smi reports (tox -e test-cupy
    installs it) and the install hint of the backend's ImportError."""
    from astromix.backends import _cuda

    assert _cuda.driver_cuda_version(text) == version
    assert _cuda.cupy_requirement(text) == wheel
    assert hint in _cuda.install_hint(text)
    if wheel is not None and wheel != "cupy-cuda11x":
        # the extra named in the hint installs that wheel
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if pyproject.exists():
            extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
            assert extras[_cuda.GPU_EXTRAS[version[0]]] == [wheel]


def test_cupy_wheel_without_nvidia_smi(monkeypatch):
    """No nvidia-smi on the PATH: no wheel, and the ImportError says so."""
    from astromix.backends import _cuda

    monkeypatch.setattr(_cuda.shutil, "which", lambda name: None)
    assert _cuda.driver_cuda_version() is None
    assert _cuda.cupy_requirement() is None
    assert _cuda.install_hint() == "no NVIDIA driver found (nvidia-smi)"
