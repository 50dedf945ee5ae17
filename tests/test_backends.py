"""Backend registry, cross-backend agreement and analytic gradients."""

import functools
import os

import numpy as np
import pytest
from conftest import random_mixture, to_numpy

from astromix import AccuracySettings, BackendError, GaussianMixture, backends
from astromix.backends import _common

MODES = ["kurtosis", "variance", "none"]
OTHER = [b for b in backends.available_backends() if b != "numpy"]


class TestRegistry:
    def test_available(self):
        names = backends.available_backends()
        assert "numpy" in names
        assert set(names) <= set(backends.KNOWN_BACKENDS)

    def test_use_backend_is_scoped(self):
        before = backends.get_backend().name
        with backends.use_backend("numpy") as bk:
            assert bk.name == "numpy"
            assert backends.get_backend().name == "numpy"
        assert backends.get_backend().name == before

    def test_set_backend(self):
        before = backends.get_backend().name
        try:
            assert backends.set_backend("numpy").name == "numpy"
            assert backends.get_backend().name == "numpy"
        finally:
            backends.set_backend(before)

    def test_unknown(self):
        with pytest.raises(BackendError, match="unknown backend 'fortran'"):
            backends.set_backend("fortran")
        with pytest.raises(BackendError):
            with backends.use_backend("fortran"):
                pass

    def test_names_ignore_case(self):
        assert backends.get_backend(" NumPy ").name == "numpy"
        with backends.use_backend("NUMPY") as bk:
            assert bk is backends.get_backend("numpy")

    def test_bad_environment_is_not_kept(self, monkeypatch):
        # a misspelt ASTROMIX_BACKEND raises, and is read again once corrected
        monkeypatch.setitem(backends._global, "name", None)
        monkeypatch.setenv("ASTROMIX_BACKEND", "nunpy")
        with pytest.raises(BackendError, match="unknown backend 'nunpy'"):
            backends.get_backend()
        assert backends._global["name"] is None
        monkeypatch.setenv("ASTROMIX_BACKEND", "NumPy")
        assert backends.get_backend().name == "numpy"
        assert backends._global["name"] == "numpy"

    def test_default_follows_environment(self):
        expected = os.environ.get("ASTROMIX_BACKEND") or (
            "numba" if "numba" in backends.available_backends() else "numpy")
        assert backends._default_name() == expected

    def test_unavailable_reason(self):
        if "cupy" in backends.available_backends():
            pytest.skip("cupy is available here")
        with pytest.raises(BackendError, match="not available"):
            backends.get_backend("cupy")


def _agree(a, b, rtol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max()
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max() / scale)


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-6), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape, k", [((48, 53), 12), ((700, 650), 400)])
def test_backends_agree_with_numpy(other, mode, dtype, rtol, shape, k):
    """Render and chi2 + gradient of every backend match the NumPy reference.

    The large case takes the multi-threaded paths of the Numba backend.
    """
    rng = np.random.default_rng(11)
    g = random_mixture(rng, k, shape, negative=True)
    s = AccuracySettings(pixel_integration=mode)
    bk = backends.get_backend(other)
    ref = g.render(shape, dtype=dtype, settings=s, backend="numpy")
    img = bk.to_numpy(g.render(shape, dtype=dtype, settings=s, backend=other))
    assert img.dtype == dtype
    _agree(img, ref, rtol)
    data = (ref + rng.normal(0, 0.01, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    c_ref, g_ref = g.chi2(data, weight, gradient=True, settings=s, backend="numpy")
    c_oth, g_oth = g.chi2(bk.asarray(data), bk.asarray(weight), gradient=True, settings=s,
                          backend=other)
    assert c_oth == pytest.approx(c_ref, rel=rtol)
    for a, b in zip(g_oth, g_ref):
        _agree(a, b, 10 * rtol)


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("mode", ["kurtosis", "none"])
@pytest.mark.parametrize("nx", [1, 7, 15, 16, 17, 32, 37])
def test_every_image_width(other, mode, nx):
    """Narrow images and widths on either side of the Numba kernels' 16-pixel row chunks.

    The Numba kernels walk rows in whole chunks, extended past a component's box
    and, for a width that is not a multiple of 16, into a padded copy of the
    image: render, chi2 + gradient and the Jacobian images must still equal the
    NumPy reference, with components wider than the image and centres outside it.
    """
    from astromix.models._base import chain_coefficients

    rng = np.random.default_rng(nx)
    shape = (13, nx)
    g = random_mixture(rng, 20, shape, sigma_range=(0.3, 12.0), margin=-4.0, negative=True)
    s = AccuracySettings(pixel_integration=mode)
    bk = backends.get_backend(other)
    ref = g.render(shape, settings=s, backend="numpy")
    _agree(bk.to_numpy(g.render(shape, settings=s, backend=other)), ref, 1e-9)
    data = ref + rng.normal(0, 0.01, shape)
    weight = rng.uniform(0.5, 2.0, shape)
    c_ref, g_ref = g.chi2(data, weight, gradient=True, settings=s, backend="numpy")
    c_oth, g_oth = g.chi2(bk.asarray(data), bk.asarray(weight), gradient=True, settings=s,
                          backend=other)
    assert c_oth == pytest.approx(c_ref, rel=1e-9)
    for a, b in zip(g_oth, g_ref):
        _agree(bk.to_numpy(a), b, 1e-8)
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    coeff = chain_coefficients(table, rng.normal(size=(20, 3, 6)))
    jac = bk.to_numpy(bk.jacobian(table, coeff, shape, s))
    assert jac.shape == (3,) + shape
    _agree(jac, _common.Backend.jacobian(bk, table, coeff, shape, s), 1e-9)


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("shape", [(11, 11), (300, 300)])
def test_culling_box_beyond_int64(other, shape):
    """Components whose culling box edges lie past 2**63 px: a very broad one (cov =
    1e38 px^2, half-width ~5e19 px) and ones centred 1e20 px off the image.

    The broad one, with flux 2 pi cov, is a flat level of 1 per pixel to ~1e-34:
    render, chi2 and its amplitude gradient (2 sum (m - d) m / amp) take that value,
    the far ones add nothing, on the one-call stamp path (11x11) and the general one
    (300x300), and so does its Jacobian image.  Numba's box edges overflowed int64
    and dropped the broad one."""
    from astromix.models._base import chain_coefficients

    cov = 1e38
    amp = 2 * np.pi * cov
    g = GaussianMixture([amp, 1.0, 1.0], [[5.0, 5.0], [1e20, 5.0], [5.0, -1e20]],
                        [np.eye(2) * cov, np.eye(2), np.eye(2)])
    s = AccuracySettings()
    bk = backends.get_backend(other)
    for b in ("numpy", other):
        img = to_numpy(g.render(shape, backend=b))
        np.testing.assert_allclose(img, 1.0, rtol=1e-12)
        data = np.full(shape, 0.5)
        c, (d_amp, d_mean, d_cov) = g.chi2(bk.asarray(data) if b == other else data,
                                           np.ones(shape), gradient=True, backend=b)
        assert c == pytest.approx(0.25 * data.size, rel=1e-12)
        d_amp = to_numpy(d_amp)
        assert d_amp[0] == pytest.approx(2 * 0.5 * data.size / amp, rel=1e-12)
        assert d_amp[1:].tolist() == [0.0, 0.0]
        assert np.abs(to_numpy(d_mean)).max() < 1e-12
    # the Jacobian image of the sum of the amplitudes: sum_k model_k / amp_k = 1 / amp
    table = bk.prepare(g.amp, g.mean, g.cov, s)
    m = np.zeros((3, 1, 6))
    m[:, 0, 0] = 1.0
    jac = to_numpy(bk.jacobian(table, chain_coefficients(table, m), shape, s))
    np.testing.assert_allclose(jac, 1.0 / amp, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_finite_differences(backend, mode):
    """Analytic d chi2 / d(amp, mean, cov) against central differences (float64)."""
    rng = np.random.default_rng(5)
    amp = np.array([1.0, 0.7, -0.2])
    mean = np.array([[14.3, 15.1], [15.7, 14.2], [15.0, 15.5]])
    cov = np.array([[[0.4, 0.1], [0.1, 0.3]], [[5, 1.5], [1.5, 3]], [[1.2, -0.3], [-0.3, 0.9]]])
    shape = (30, 32)
    data = rng.normal(0, 0.01, shape)
    weight = rng.uniform(0.5, 2, shape)
    # n_sigma = 7 so that the culling edge moves nothing measurable
    s = AccuracySettings(pixel_integration=mode, n_sigma=7)

    def f(a, m, c):
        return GaussianMixture(a, m, c).chi2(data, weight, settings=s)

    _, (da, dm, dc) = GaussianMixture(amp, mean, cov).chi2(data, weight, gradient=True,
                                                           settings=s)
    h = 1e-6
    num_a = np.zeros(3)
    num_m = np.zeros((3, 2))
    num_c = np.zeros((3, 2, 2))
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        num_a[k] = (f(amp + e, mean, cov) - f(amp - e, mean, cov)) / (2 * h)
        for a in range(2):
            e = np.zeros((3, 2))
            e[k, a] = h
            num_m[k, a] = (f(amp, mean + e, cov) - f(amp, mean - e, cov)) / (2 * h)
            for b in range(2):
                e = np.zeros((3, 2, 2))
                e[k, a, b] += h / 2
                e[k, b, a] += h / 2
                num_c[k, a, b] = (f(amp, mean, cov + e) - f(amp, mean, cov - e)) / (2 * h)
    for ana, num in [(da, num_a), (dm, num_m), (dc, num_c)]:
        np.testing.assert_allclose(ana, num, rtol=1e-5, atol=1e-7 * np.abs(num).max())


def _rotated(s1, s2, theta):
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([s1 ** 2, s2 ** 2]) @ rot.T


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("mode", ["kurtosis", "none"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_numba_row_recurrence(mode, dtype, rtol):
    """The Numba kernels' row recurrence against the NumPy reference.

    Components at least ``REC_ROWS`` rows tall whose numbers stay normal are
    walked by recurrence down the rows (restarted every ``RESTART`` rows), the
    others with exponentials.  This mixture has both kinds in both dtypes: a
    component 299 rows tall (four restarts), one whose centre lies outside the
    image, moderately elliptical tilted ones (float32 falls back for one of
    them), a thin tilted one (both fall back) and small ones.
    """
    from astromix.backends import numba_backend as nb

    shape = (300, 180)
    amp = np.array([1.0, 0.5, 0.8, 0.6, 0.3, -0.2, 0.4])
    mean = np.array([[90.3, 150.2], [60.7, 80.4], [120.1, 200.6], [-8.4, 40.2],
                     [150.5, 20.3], [30.2, 250.7], [100.6, 110.1]])
    cov = np.array([_rotated(30, 30, 0), _rotated(25, 0.6, np.pi / 4), _rotated(12, 4, 0.4),
                    _rotated(9, 6, 2.0), _rotated(1.5, 1.0, 0.3), _rotated(40, 2.0, 1.2),
                    _rotated(3.0, 2.5, 0.7)])
    g = GaussianMixture(amp, mean, cov)
    s = AccuracySettings(pixel_integration=mode)
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    itemsize = np.dtype(dtype).itemsize
    rec = [row[_common.USE4] == 0 and nb._use_rec(row, *_common.box(row, shape), itemsize)
           for row in table]
    assert any(rec) and not all(rec)
    assert _common.box(table[0], shape)[1] - _common.box(table[0], shape)[0] > 4 * nb.RESTART
    ref = g.render(shape, settings=s, backend="numpy")
    _agree(g.render(shape, dtype=dtype, settings=s, backend="numba"), ref, rtol)
    rng = np.random.default_rng(3)
    data = ref + rng.normal(0, 1e-3, shape)
    weight = rng.uniform(0.5, 2.0, shape)
    c_ref, g_ref = g.chi2(data, weight, gradient=True, settings=s, backend="numpy")
    c_nb, g_nb = g.chi2(data.astype(dtype), weight.astype(dtype), gradient=True, settings=s,
                        backend="numba")
    assert c_nb == pytest.approx(c_ref, rel=10 * rtol)
    for a, b in zip(g_nb, g_ref):
        _agree(a, b, 100 * rtol)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("threshold", [1e-4, 0.0])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_numba_fourth_order_recurrence(threshold, dtype, rtol):
    """Components with the fourth-order factor walked by recurrence, the factor
    per pixel (``_render_rec`` with ``fourth``), against the NumPy reference:
    small ones (the factor's own regime: sigma 0.8-2 px, tilted, one centred off
    the image, one of negative amplitude; one of 21 rows, walked in float32
    too) and, with the factor on every component (threshold 0), a large one 200
    rows tall (three restarts), a wide elliptical one and a thin tilted one
    that keeps the exponentials."""
    from astromix.backends import numba_backend as nb

    shape = (200, 90)
    amp = np.array([1.0, 0.7, -0.4, 0.9, 0.5, 1.2, 2.0, 0.8, 0.6])
    mean = np.array([[20.3, 30.7], [50.6, 60.2], [52.1, 58.9], [-1.4, 120.3],
                     [70.2, 160.8], [25.8, 80.4], [45.5, 100.1], [30.4, 150.2], [60.3, 20.6]])
    cov = np.array([_rotated(1.2, 1.0, 0.3), _rotated(2.0, 1.4, 1.1), _rotated(1.6, 0.8, 2.5),
                    _rotated(1.5, 1.5, 0.0), _rotated(1.9, 1.2, -0.7), _rotated(2.1, 1.9, 0.4),
                    _rotated(25, 30, 0.2), _rotated(12, 4, 0.6), _rotated(15, 0.7, 0.9)])
    g = GaussianMixture(amp, mean, cov)
    s = AccuracySettings(fourth_order_threshold=threshold)
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    itemsize = np.dtype(dtype).itemsize
    kinds = [nb._box_kind(t, *shape, 0, itemsize) for t in table]
    walked = [k[4] == 1 and nb._use_rec(t, *k[:4], itemsize) for t, k in zip(table, kinds)]
    assert all(k[4] == 1 for k in kinds[:6]) and walked[5]
    # in float32 shorter than REC_ROWS32 (or 16 rows, for wider boxes)
    assert all(walked[:5]) == (dtype == np.float64)
    if threshold == 0.0:
        assert all(k[4] == 1 for k in kinds) and walked[6] and not walked[8]
        assert walked[7] == (dtype == np.float64)  # its q leaves float32's range
        assert kinds[6][:2] == (0, shape[0] - 1)  # 200 rows: three restarts
    ref = g.render(shape, settings=s, backend="numpy")
    _agree(g.render(shape, dtype=dtype, settings=s, backend="numba"), ref, rtol)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("signs", [(1, 1, 1, 1, 1), (1, -1, -1, 1, -1)])
def test_numba_recurrence_pairs(dtype, signs):
    """Two neighbouring components walked by recurrence over the same box are
    rendered together (``_render_rec_pair``): the image, and chi2 with its
    gradient (whose sums take the start rows the render kept), are the same bit
    for bit as when the pair is split by a component outside the image, which
    renders them in turn; and they agree with the NumPy reference.  One pair
    is wider than the image (clipped to all of it: three restarts), the other
    shares its variances and differs in its correlation (the same box inside
    the image); a fifth component is on its own.  With amplitudes of either
    sign (a positive one is folded into the walk's f, a negative one not)."""
    from astromix.backends import numba_backend as nb

    shape = (150, 77)
    amp = np.array([1.0, 0.6, 0.8, 0.5, 0.7]) * signs
    mean = np.array([[38.3, 70.6], [38.3, 70.6], [40.1, 51.2], [40.1, 51.2], [38.8, 160.4]])
    cov = np.array([_rotated(60, 50, 0.3), _rotated(70, 40, 0.5), [[20.0, 5.0], [5.0, 16.0]],
                    [[20.0, -4.0], [-4.0, 16.0]], _rotated(30, 25, 0.2)])
    g = GaussianMixture(amp, mean, cov)
    # the same components with one outside the image after each of the first pair's
    outside = GaussianMixture(np.insert(amp, [1, 3], 1.0),
                              np.insert(mean, [1, 3], [-500.0, -500.0], axis=0),
                              np.insert(cov, [1, 3], np.eye(2), axis=0))
    settings = AccuracySettings()
    itemsize = np.dtype(dtype).itemsize
    table = _common.prepare(g.amp, g.mean, g.cov, settings)
    kinds = [nb._box_kind(t, *shape, 0, itemsize) for t in table]
    assert kinds[0] == kinds[1] and kinds[2] == kinds[3] and kinds[0][4] == kinds[2][4] == 2
    assert kinds[0][:4] == (0, shape[0] - 1, 0, shape[1] - 1) != kinds[2][:4]
    assert kinds[2][0] > 0 and kinds[2][1] < shape[0] - 1 and kinds[4][:4] != kinds[2][:4]

    img = g.render(shape, dtype=dtype, backend="numba")
    np.testing.assert_array_equal(img, outside.render(shape, dtype=dtype, backend="numba"))
    rtol = 1e-5 if dtype == np.float32 else 1e-9
    ref = g.render(shape, backend="numpy")
    _agree(img, ref, rtol)
    rng = np.random.default_rng(8)
    data = (ref + rng.normal(0, 1e-3, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    c_pair, (a_pair, m_pair, v_pair) = g.chi2(data, weight, gradient=True, backend="numba")
    c_split, (a_split, m_split, v_split) = outside.chi2(data, weight, gradient=True,
                                                         backend="numba")
    assert c_pair == c_split
    keep = np.r_[0, 2, 3, 5, 6]
    for a, b in ((a_pair, a_split[keep]), (m_pair, m_split[keep]), (v_pair, v_split[keep])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("signs", [(1,) * 9, (1, -1, -1, 1, 1, -1, -1, 1, -1)])
def test_numba_union_pairs(dtype, signs):
    """Neighbours in the table taken by recurrence over different boxes are walked
    together over the union of their boxes when that costs less (``_pair_box``):
    in the general render (an image too large for the one-call path), whole or in
    bands of rows, the image agrees with the NumPy reference and with the same
    components rendered one at a time, and is exactly zero outside their boxes.
    Three pairs: two nested boxes with one centre, two centres 3-4 px apart, and
    two clipped by the image's right edge; a small component after a large one
    is not paired (its union would cost more), nor with the far one after it.
    The multi-exposure one-call path of scene fits (``_exposures_chi2``) pairs
    them too: its model, chi2 and gradient agree with NumPy's."""
    from astromix.backends import numba_backend as nb

    shape = (320, 250)
    amp = np.array([1.0, 0.7, 0.9, 0.6, 1.2, 0.4, 0.8, 0.5, 0.3]) * signs
    mean = np.array([[60.3, 70.6], [60.3, 70.6], [150.2, 120.4], [153.7, 117.1],
                     [100.5, 220.3], [100.5, 220.3], [245.0, 30.2], [247.5, 28.0],
                     [30.4, 280.9]])
    cov = np.array([_rotated(9, 7, 0.3), _rotated(10, 8, 0.5), _rotated(8, 8, 0.0),
                    _rotated(8.5, 7.5, 1.0), _rotated(20, 15, 0.2), _rotated(4, 4, 0.0),
                    _rotated(9, 8, 0.7), _rotated(10, 9, 0.1), _rotated(6, 5, 0.4)])
    g = GaussianMixture(amp, mean, cov)
    settings = AccuracySettings()
    itemsize = np.dtype(dtype).itemsize
    table = _common.prepare(g.amp, g.mean, g.cov, settings)
    kinds = [nb._box_kind(t, *shape, 0, itemsize) for t in table]
    assert all(k[4] == 2 for k in kinds)

    def pair(k, union=True):
        j0, j1, i0, i1 = kinds[k][:4]
        return nb._pair_box(table[k], table[k + 1], j0, j1, i0, i1, nb._chunks(i0, i1)[1], 0,
                            shape[0], shape[1], itemsize, union)

    for k in (0, 2, 6):
        a, b = kinds[k], kinds[k + 1]
        assert a[:4] != b[:4] and not pair(k, union=False)[4]
        assert pair(k) == (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]),
                           max(a[3], b[3]), True)
    assert kinds[6][3] == kinds[7][3] == shape[1] - 1  # clipped by the right edge
    assert not pair(4)[4] and not pair(5)[4]

    assert backends.get_backend("numba").render_stamp(g.amp, g.mean, g.cov, shape,
                                                      np.dtype(dtype), settings) is None
    img = g.render(shape, dtype=dtype, backend="numba")
    ref = g.render(shape, backend="numpy")
    tight = 5e-6 if dtype == np.float32 else 1e-12
    _agree(img, ref, tight)
    # one at a time: a component outside the image after each breaks every pair
    after = np.arange(1, len(amp) + 1)
    alone = GaussianMixture(np.insert(amp, after, 1.0), np.insert(mean, after, -500.0, axis=0),
                            np.insert(cov, after, np.eye(2), axis=0))
    _agree(img, alone.render(shape, dtype=dtype, backend="numba"), tight)
    inside = np.zeros(shape, dtype=bool)
    for j0, j1, i0, i1, _ in kinds:
        inside[j0:j1 + 1, i0:i1 + 1] = True
    assert np.all(img[~inside] == 0.0)
    # in two bands of rows, the second starting inside the first two pairs' boxes
    work = np.empty((shape[0], nb._work_width(shape[1])), dtype=dtype)
    banded = np.zeros(shape, dtype=dtype)
    for y0, y1 in ((0, 66), (66, shape[0])):
        nb._render_band(work, table, y0, y1, settings.n_sigma ** 2, banded)
    _agree(banded, ref, tight)
    assert np.all(banded[~inside] == 0.0)
    # the scene fits' one-call path over several exposures (_exposures_chi2),
    # its row bands on every thread: the model, chi2 and gradient of NumPy's
    bk = backends.get_backend("numba")
    rng = np.random.default_rng(3)
    data = (ref + rng.normal(0, 1e-3, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    layout = bk.exposures_layout([shape, shape])
    packed = [bk.pack_images([x, x], layout, dtype) for x in (data, weight)]
    chi2, _, acc = bk.exposures_chi2([table, table], layout, *packed, [0.0, 0.0], settings)
    # the model of the second exposure, from R = 2 w (model - data) left in its place
    nxp = layout["shapes"][1, 1]
    resid = bk.scratch((layout["size"],), dtype, "exposures")[layout["offsets"][1]:]
    resid = resid.reshape(shape[0], nxp)[:, :shape[1]].astype(np.float64)
    _agree(data + resid / (2.0 * weight), ref, 2 * tight)
    want, grads = g.chi2(data, weight, gradient=True, backend="numpy")
    np.testing.assert_allclose(chi2, want, rtol=1e-4 if dtype == np.float32 else 1e-10)
    for e in range(2):
        for got, ref_grad in zip(bk.assemble_gradient(table, acc[e]), grads):
            _agree(got, ref_grad, 1e-4 if dtype == np.float32 else 1e-9)


def _exp_half_ir(q, wide):
    """exp(-q/2) of float64 ``q`` (a length a multiple of 8) by the start rows' IR
    exponential (``_VectorIR.exp_half``), 8 lanes at a time."""
    import llvmlite.ir as llvmir
    from numba import njit, types
    from numba.extending import intrinsic

    from astromix.backends import numba_backend as nb

    @intrinsic
    def exp8(typingctx, src, dst, i):
        def codegen(context, builder, sig, args):
            ir = nb._VectorIR(context, builder, types.float64)
            (ps, pd), _ = ir.arrays(context, sig, args, (0, 1))
            vty = llvmir.VectorType(llvmir.DoubleType(), 8)
            ofs = builder.mul(ir.wide(args[2]), ir.isz)
            v = builder.load(ir.at(ps, ofs, vty), align=8)
            builder.store(ir.exp_half(v, wide), ir.at(pd, ofs, vty), align=8)
            return context.get_dummy_value()

        return types.none(src, dst, i), codegen

    @njit
    def run(src, dst):
        for i in range(0, src.shape[0], 8):
            exp8(src, dst, i)

    out = np.empty_like(q)
    run(q, out)
    return out


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_start_row_exponential():
    """The float64 exponential of the recurrence's start rows (``exp_half``, wide:
    its own 2**n from exponent bits) against ``math.exp`` over its whole range
    ``|q| <= QEXP64 = 1400``, ends included: within 2 ulp (measured: 1), finite
    and normal; the float32 rows' (repeated squaring) within 1e-9 relative for
    ``|q| <= QSAFE32``."""
    import math

    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(11)
    q = np.concatenate([rng.uniform(-1400.0, 1400.0, 20000), rng.uniform(-3.0, 3.0, 5000),
                        np.linspace(-1400.0, 1400.0, 2801), [-1400.0, 0.0, 1400.0]])
    q = np.concatenate([q, np.zeros(-len(q) % 8)])
    assert nb.QEXP64 == 1400.0
    out = _exp_half_ir(q, True)
    ref = np.array([math.exp(-0.5 * v) for v in q])
    assert np.all(np.isfinite(out)) and np.all(out >= np.finfo(np.float64).tiny)
    # math.exp is within 1 ulp itself, so 2 ulp of it bounds 1 ulp of the truth + 1
    assert np.max(np.abs(out - ref) / np.spacing(ref)) <= 2.0
    q32 = np.concatenate([rng.uniform(-nb.QSAFE32, nb.QSAFE32, 20000),
                          np.linspace(-nb.QSAFE32, nb.QSAFE32, 2000)])
    out = _exp_half_ir(q32, False)
    ref = np.exp(-0.5 * q32)
    assert np.max(np.abs(out / ref - 1.0)) < 1e-9


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_start_rows(dtype):
    """Start rows of the recurrence (``_rec_start``: float64 exponentials at one
    group of 8 columns in 8, products in between, rounded once) against NumPy's
    float64 ``exp`` of the same quadratic forms: within 1 ulp in float32, exactly
    zero outside the box, for 300 components of every shape the recurrence
    takes (round, elliptical, tilted, thin; boxes 1 to 190 columns wide, clipped
    by the image's edges), and for components narrow in x, whose start rows
    take exponentials at every group (float32: the products' own exponentials
    out of range); the scratch rows written up to START_SLACK columns past the
    row, not beyond."""
    from astromix.backends import numba_backend as nb

    shape = (200, 200)
    rng = np.random.default_rng(5)
    itemsize = np.dtype(dtype).itemsize
    checked = widths = stepped = exact = 0
    for m in range(400):
        s_major = rng.uniform(0.3, 25.0)
        cov = _rotated(s_major, s_major * rng.uniform(0.05, 1.0), rng.uniform(0, np.pi))
        if m >= 300:  # narrow in x, nearly upright: exact exponentials at every group
            cov = _rotated(rng.uniform(6.0, 25.0), rng.uniform(0.75, 0.85),
                           np.pi / 2 + rng.uniform(-0.05, 0.05))
        g = GaussianMixture([1.0], rng.uniform(-10.0, 210.0, (1, 2)), cov[None])
        t = _common.prepare(g.amp, g.mean, g.cov, AccuracySettings())[0]
        j0, j1, i0, i1 = nb._box(t, *shape)
        if j1 < j0 or i1 < i0 or not nb._rec_safe(t, j0, j1, i0, i1, nb.QSAFE32 if itemsize == 4
                                                  else nb.QSAFE64):
            continue
        s, nch = nb._chunks(i0, i1)
        n = nch * nb.CHUNK
        sc = np.full((4, n + nb.START_SLACK + 3), np.nan, dtype)
        dy = j0 - t[_common.MY]
        _start_rows(t, dy, s - t[_common.MX], i0 - s, i1 - s, n, sc)
        f, r = sc[1, :n], sc[2, :n]
        assert np.isnan(sc[[0, 3]]).all() and np.isnan(sc[1:3, n + nb.START_SLACK:]).all()
        dx = s - t[_common.MX] + np.arange(n)
        fxx, fxy, fyy = t[_common.FXX], t[_common.FXY], t[_common.FYY]
        wide = i1 - i0 >= nb.START_LANES  # two groups or more
        qexp = nb.QSAFE32 if itemsize == 4 else nb.QEXP64
        steps = 128.0 * fxx <= qexp and 16.0 * abs(fxy) <= qexp
        stepped += wide and steps
        exact += wide and not steps
        q = (fxx * dx + 2.0 * fxy * dy) * dx + fyy * dy * dy
        dq = 2.0 * (fxy * dx + fyy * dy) + fyy
        box = (np.arange(n) >= i0 - s) & (np.arange(n) <= i1 - s)
        # float64: the quadratic forms' own rounding (a few eps of their terms,
        # which reach 1300) and the products' from an exact group to up to 7
        # groups on: the ratio g's roundings and exp(-64 F_xx)'s 1 ulp each enter
        # f up to 7 * 8 / 2 times, f's own products 7 times, below 64 eps
        # (measured: 26)
        terms = np.abs(fxx * dx * dx) + np.abs(2.0 * fxy * dx * dy) + fyy * dy * dy
        eps = np.finfo(np.float64).eps
        for got, arg, size in ((f, q, terms), (r, dq, np.abs(dq) + 2 * np.abs(fxy * dx))):
            want = np.exp(-0.5 * arg[box])
            assert np.all(got[~box] == 0.0)
            if itemsize == 4:
                want = want.astype(dtype)
                assert np.max(np.abs(got[box] - want) / np.spacing(want)) <= 1.0
            else:
                tol = 2 * np.spacing(want) + (4 * eps * size[box] + 64 * eps) * want
                assert np.all(np.abs(got[box] - want) <= tol)
        checked += 1
        widths = max(widths, i1 - i0 + 1)
    assert checked > 100 and widths > 100 and stepped > 50
    assert exact > 20 if itemsize == 4 else exact == 0  # (none such takes float64's)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype, fxx, half", [(np.float32, 2.4, 8), (np.float64, 12.0, 10)])
def test_numba_start_rows_narrow_in_x(dtype, fxx, half):
    """A start row whose q stays in range (QSAFE32 = 160, QSAFE64 = 1300) over
    2 half + 1 >= 17 columns (three groups) while the products' step exp(-64
    F_xx) does not (128 F_xx above QSAFE32 / QEXP64): exact exponentials at
    every group, within 1 ulp (float32) or the terms' rounding (float64) of
    NumPy's."""
    from astromix.backends import numba_backend as nb

    t = np.zeros(14)
    t[_common.FXX], t[_common.FYY] = fxx, 1.0
    n = 32
    last = 2 * half
    sc = np.full((4, n + nb.START_SLACK), np.nan, dtype)
    _start_rows(t, 0.0, -float(half), 0, last, n, sc)
    dx = np.arange(-half, half + 1.0)
    for got, want in ((sc[1, :last + 1], np.exp(-0.5 * fxx * dx * dx)),
                      (sc[2, :last + 1], np.full(last + 1, np.exp(-0.5)))):  # dq = F_yy
        if dtype == np.float32:
            want = want.astype(dtype)
            assert np.max(np.abs(got - want) / np.spacing(want)) <= 1.0
        else:
            eps = np.finfo(np.float64).eps
            assert np.all(np.abs(got - want) <= (2.0 + 4.0 * fxx * dx * dx) * eps * want)
    assert np.all(sc[1:3, last + 1:n] == 0.0)


@functools.cache
def _start_rows_kernel():
    # _rec_start into sc's rows 1 (f) and 2 (r), callable from Python
    from numba import njit

    from astromix.backends import numba_backend as nb

    @njit
    def run(t, dy, x0, a, b, n, sc):
        nb._rec_start(t, dy, x0, a, b, n, sc, 1, 2)

    return run


def _start_rows(t, dy, x0, a, b, n, sc):
    _start_rows_kernel()(t, dy, x0, a, b, n, sc)


@functools.cache
def _sums_walk_kernel():
    # _sums_walk, callable from Python
    from numba import njit

    from astromix.backends import numba_backend as nb

    @njit
    def run(rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor):
        nb._sums_walk(rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor)

    return run


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_active_coefficients():
    """The Jacobian's (component, parameter) mask: any term not zero, as NumPy's any (NaN
    counts, -0.0 does not)."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(2)
    coeff = rng.normal(size=(9, 5, 14)) * (rng.random((9, 5, 14)) < 0.05)
    coeff[0, 0, 13] = np.nan
    coeff[1, 1, :] = -0.0
    coeff[2, 2, :] = 0.0
    coeff[2, 2, 0] = 1e-300
    want = np.any(coeff != 0.0, axis=2)
    assert want[0, 0] and not want[1, 1] and want[2, 2] and not want.all() and want.any()
    np.testing.assert_array_equal(nb._active_coefficients(coeff), want)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_walk_strips_tile_the_rows(monkeypatch):
    """The walks' strip widths (_walk_lanes, for any register budget) are ones that
    _VectorIR.strips tiles rows with (a whole number of CHUNKs) and it refuses others."""
    from astromix.backends import numba_backend as nb

    def covered(lanes, ncol):
        # the columns strips() walks: full strips, then one CHUNK when lanes is wider
        nfull = ncol // lanes
        return nfull * lanes + (nb.CHUNK if lanes > nb.CHUNK and nfull * lanes < ncol else 0)

    for budget in (16 * 16, 16 * 32, 32 * 64):
        monkeypatch.setattr(nb, "WALK_STATE_BYTES", budget // 2)
        for ncomp in (1, 2, 3, 5):
            for itemsize in (4, 8):
                lanes = nb._walk_lanes(ncomp, itemsize)
                for ncol in range(nb.CHUNK, 9 * nb.CHUNK, nb.CHUNK):
                    assert covered(lanes, ncol) == ncol, (budget, ncomp, itemsize, lanes)
    with pytest.raises(ValueError, match="do not tile"):
        nb._VectorIR.strips(None, None, 3 * nb.CHUNK, None)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("nrows", [1, 7, 8, 13, 64])
def test_numba_sums_walk_moments(dtype, rtol, nrows):
    """The gradient sums' walk (running sums in blocks of ``SUM_BLOCK`` rows,
    turned into moments in dy at each block's end) against the column sums of
    e = R f, e dy and e dy**2 computed directly in float64 from the same column
    state, row factors and residuals: a block count that is whole, one short
    and one over, rows on both sides of the centre, pixels below the floor
    (left out), and the sums added to what the columns held."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(nrows)
    ncol, col, j0, my = 48, 16, 5, 5 + 0.37 * nrows + 0.21
    rimg = rng.normal(size=(80, 80)).astype(dtype)
    sc = np.empty((3, ncol), dtype)
    sc[0] = rng.uniform(0.05, 1.0, ncol)
    sc[1] = rng.uniform(0.7, 1.3, ncol)
    pf = np.exp(-0.02 * np.arange(nb.RESTART))[None, :].astype(dtype)
    cs0 = rng.normal(size=(3, ncol)).astype(dtype)
    cs = cs0.copy()
    floor = dtype(0.08)
    _sums_walk_kernel()(rimg, j0, col, nrows, ncol, sc, cs, pf, my, floor)
    f = sc[0].astype(np.float64)
    want = cs0.astype(np.float64)
    masked = 0
    for m in range(nrows):
        inside = f >= floor
        masked += np.count_nonzero(~inside)
        e = np.where(inside, rimg[j0 + m, col:col + ncol] * f, 0.0)
        dy = j0 + m - my
        want += [e, e * dy, e * dy * dy]
        f = f * (sc[1].astype(np.float64) * np.float64(pf[0, m]))
    if nrows > 1:
        assert masked > 0
    for got, w in zip(cs, want):
        _agree(got, w, rtol)


def _band_pixels(table, shape, edges, n_sigma):
    """Pixels inside each component's culling ellipse per row band (NumPy, by the
    rule of ``_common.box``): the work of each band."""
    work = np.zeros(len(edges) - 1)
    for t in table:
        j0, j1, i0, i1 = _common.box(t, shape)
        if j1 < j0 or i1 < i0:
            continue
        dx = (np.arange(i0, i1 + 1) - t[_common.MX])[None, :]
        dy = (np.arange(j0, j1 + 1) - t[_common.MY])[:, None]
        q = (t[_common.FXX] * dx * dx + 2 * t[_common.FXY] * dx * dy
             + t[_common.FYY] * dy * dy)
        per_row = np.count_nonzero(q <= n_sigma ** 2, axis=1)
        band = np.searchsorted(edges, np.arange(j0, j1 + 1), side="right") - 1
        np.add.at(work, band, per_row)
    return work


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-5)])
def test_numba_bands_follow_the_sources(dtype, rtol):
    """The parallel kernels' row bands hold about equal work where the sources
    cluster (here 80 of 90 components in the top fifth of the image): counted
    independently as the pixels inside the components' culling ellipses per
    band, the busiest of 4 bands holds at most 1.3x the mean (4 bands of equal
    rows: over 2.5x); counting also a pass over every pixel of the bands' rows
    (``ROW_PIXEL_COST``), the bands that cost it are as even.  Rendered in
    those bands, the image agrees with NumPy's."""
    from astromix.backends import numba_backend as nb

    shape = (400, 256)
    rng = np.random.default_rng(11)
    g = random_mixture(rng, 90, shape, sigma_range=(0.6, 8.0))
    mean = g.mean.copy()
    mean[:80, 1] = rng.uniform(10.0, 80.0, 80)
    g = GaussianMixture(g.amp, mean, g.cov)
    s = AccuracySettings()
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    edges = nb._band_edges(table, shape[0], shape[1], 4)
    assert edges[0] == 0 and edges[-1] == shape[0] and np.all(np.diff(edges) >= 0)
    work = _band_pixels(table, shape, edges, s.n_sigma)
    assert work.max() <= 1.3 * work.mean(), work
    rows = _band_pixels(table, shape, np.linspace(0, shape[0], 5).astype(int), s.n_sigma)
    assert rows.max() > 2.5 * rows.mean(), rows
    img = np.zeros(shape, dtype=dtype)
    nb._render_parallel(img, table, edges, s.n_sigma ** 2)
    _agree(img, g.render(shape, settings=s, backend="numpy"), rtol)

    # where a band also passes over every pixel of its rows (a widened work image
    # zeroed and copied out: ROW_PIXEL_COST a pixel), the edges move down, the
    # band below the sources holding fewer rows: counting that pass too, the
    # busiest band holds at most 1.3x the mean (measured 1.11), against 3x with
    # the edges above
    def with_rows(e):
        return (_band_pixels(table, shape, e, s.n_sigma)
                + nb.ROW_PIXEL_COST * shape[1] * np.diff(e))

    costly = nb._band_edges(table, shape[0], shape[1], 4, nb.ROW_PIXEL_COST)
    assert np.all(costly[1:-1] > edges[1:-1]), (costly, edges)
    assert with_rows(costly).max() <= 1.3 * with_rows(costly).mean(), with_rows(costly)
    assert with_rows(edges).max() > 2.5 * with_rows(edges).mean()
    img = np.zeros((shape[0], nb._work_width(shape[1])), dtype=dtype)
    copy = np.full(shape, np.nan, dtype=dtype)
    nb._render_parallel(img, table, costly, s.n_sigma ** 2, copy)
    _agree(copy, g.render(shape, settings=s, backend="numpy"), rtol)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_estimate_work_matches_numpy_formula():
    """The compiled work estimate that decides one thread or bands: the ellipse
    area (0.785 of the box) of each component's box clipped to the image, summed,
    as NumPy computes it for 500 boxes inside, across and outside the image."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(4)
    table = np.zeros((500, _common.NPAR))
    table[:, [_common.MX, _common.MY]] = rng.uniform(-60.0, 320.0, (500, 2))
    table[:, [_common.HX, _common.HY]] = rng.uniform(0.5, 80.0, (500, 2))
    ny, nx = 200, 256
    mx, my = table[:, _common.MX], table[:, _common.MY]
    hx, hy = table[:, _common.HX], table[:, _common.HY]
    wx = np.clip(np.minimum(mx + hx, nx) - np.maximum(mx - hx, 0), 0, None)
    wy = np.clip(np.minimum(my + hy, ny) - np.maximum(my - hy, 0), 0, None)
    assert np.sum(wx == 0) > 10 and np.sum(wx * wy > 0) > 100
    assert nb.estimate_work(table, (ny, nx)) == pytest.approx(np.sum(0.785 * wx * wy), rel=1e-12)
    assert nb.estimate_work(table[:0], (ny, nx)) == 0.0
    # with a limit: the sum stops after the first block of 256 that reaches it,
    # and a limit above the total changes nothing
    part = np.cumsum(0.785 * wx * wy)
    limit = 0.5 * part[255]
    assert nb.estimate_work(table, (ny, nx), limit) == pytest.approx(part[255], rel=1e-12)
    assert nb.estimate_work(table, (ny, nx), part[255] * 1.01) == pytest.approx(part[-1],
                                                                                rel=1e-12)
    assert nb.estimate_work(table, (ny, nx), 2 * part[-1]) == pytest.approx(part[-1], rel=1e-12)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_work_width_rows_do_not_alias():
    """Work images are widened (``_work_width``) by whole chunks until no row
    starts within ``ALIAS_BYTES`` of the next row's or the one after's start,
    modulo 4096 bytes, in float32 and float64; only where the chunk-padded width
    would (so never for the 64-pixel stamp), and by at most a few chunks."""
    from astromix.backends import numba_backend as nb

    def aliases(w):
        d = np.array([k * w * isz % 4096 for isz in (4, 8) for k in (1, 2)])
        return bool(np.any(np.minimum(d, 4096 - d) < nb.ALIAS_BYTES))

    widened = 0
    for nx in range(1, 5000):
        w, p = nb._work_width(nx), nb._padded_width(nx)
        assert w % nb.CHUNK == 0 and p <= w <= p + 3 * nb.CHUNK, (nx, w)
        assert not aliases(w), (nx, w)
        assert (w > p) == aliases(p), (nx, w, p)
        widened += w > p
    assert nb._work_width(64) == 64 and nb._work_width(1024) == 1040
    assert 0 < widened < 5000 // 16


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-5)])
@pytest.mark.parametrize("nx", [512, 1024])
def test_numba_render_in_widened_work_image(dtype, rtol, nx):
    """Widths whose rows would alias (512 and 1024 pixels) are rendered in a wider
    work image and copied back: into a new image, a C-contiguous ``out`` or a
    strided one (which a width needing no widening takes through a work image
    too), the result agrees with NumPy's, components across the right edge
    included, and so it does rendered in row bands (each band zeroes its rows of
    the work image, here filled with NaN, and copies them back; the recurrence
    restarts at each band's first row, so the bits may differ)."""
    from astromix.backends import numba_backend as nb

    shape = (96, nx)
    rng = np.random.default_rng(nx)
    g = random_mixture(rng, 60, shape, sigma_range=(0.6, 12.0), margin=-4.0, negative=True)
    s = AccuracySettings()
    bk = backends.get_backend("numba")
    table = bk.prepare(g.amp, g.mean, g.cov, s)
    ref = g.render(shape, settings=s, backend="numpy")
    img = bk.render(table, shape, dtype, s, threads=1)
    assert img.shape == shape and img.dtype == dtype and img.flags.c_contiguous
    _agree(img, ref, rtol)
    out = np.full(shape, np.nan, dtype=dtype)
    assert bk.render(table, shape, dtype, s, out=out, threads=1) is out
    np.testing.assert_array_equal(out, img)
    # a strided (not C-contiguous) out, and one of a width that needs no widening
    strided = np.full((shape[0], nx + 7), np.nan, dtype=dtype)[:, 3:nx + 3]
    assert bk.render(table, shape, dtype, s, out=strided, threads=1) is strided
    np.testing.assert_array_equal(strided, img)
    narrow = (shape[0], 64)
    ref64 = g.render(narrow, settings=s, backend="numpy")
    strided = np.full((64, shape[0]), np.nan, dtype=dtype).T
    assert not strided.flags.c_contiguous
    _agree(bk.render(table, narrow, dtype, s, out=strided, threads=1), ref64, rtol)
    work = np.full((shape[0], nb._work_width(nx)), np.nan, dtype=dtype)
    banded = np.full(shape, np.nan, dtype=dtype)
    edges = nb._band_edges(table, shape[0], work.shape[1], 3)
    assert 0 < edges[1] < edges[2] < shape[0]
    nb._render_parallel(work, table, edges, s.n_sigma ** 2, banded)
    _agree(banded, ref, rtol)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_exposure_row_tasks_are_band_major():
    """The scene objective's row tasks: each exposure's rows split into one band
    per thread, in order and without gaps, listed band by band (so that Numba's
    static split of the task loop gives each thread one band of every exposure)."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(4)
    shapes = np.array([(120, 64), (200, 96), (90, 48)], dtype=np.int64)
    mixtures = [random_mixture(rng, k, tuple(sh)) for k, sh in zip((5, 30, 12), shapes)]
    tables = [_common.prepare(m.amp, m.mean, m.cov, AccuracySettings()) for m in mixtures]
    toff = np.cumsum([0] + [len(t) for t in tables]).astype(np.int64)
    nb_ = 3
    tasks = nb._exposure_rtasks(np.concatenate(tables), toff, shapes, nb_)
    assert tasks.shape == (nb_ * len(shapes), 3)
    for e, (ny, nx) in enumerate(shapes):
        mine = tasks[np.arange(nb_) * len(shapes) + e]
        assert np.all(mine[:, 0] == e)
        assert mine[0, 1] == 0 and mine[-1, 2] == ny
        np.testing.assert_array_equal(mine[1:, 1], mine[:-1, 2])
        edges = nb._band_edges(tables[e], ny, nx, nb_, nb.ROW_PIXEL_COST)
        np.testing.assert_array_equal(mine[:, 1:], np.column_stack([edges[:-1], edges[1:]]))


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_numba_float32_recurrence_width_rule():
    """float32 components 16-23 rows tall take the recurrence when their rows span
    more than one 16-pixel chunk, the exponentials when they fit in one; both
    agree with the NumPy reference (render, chi2 and gradients)."""
    from astromix.backends import numba_backend as nb

    shape = (60, 70)
    # 17 and 21 rows tall: 30 and 40 columns wide (recurrence), 11 wide (exponentials)
    cov = np.array([_rotated(3.0, 1.7, 0.0), _rotated(4.0, 2.1, 0.0), _rotated(1.0, 1.7, 0.0),
                    _rotated(2.5, 2.0, 0.3)])
    mean = np.array([[20.3, 15.6], [45.2, 40.1], [60.4, 20.7], [25.5, 44.2]])
    g = GaussianMixture(np.array([1.0, 0.7, 0.5, -0.3]), mean, cov)
    s = AccuracySettings(pixel_integration="none")
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    boxes = [_common.box(row, shape) for row in table]
    assert [16 <= j1 - j0 + 1 < nb.REC_ROWS32 for j0, j1, _, _ in boxes] == [True] * 4
    assert [i1 - i0 >= nb.CHUNK for _, _, i0, i1 in boxes] == [True, True, False, True]
    rec = [nb._use_rec(row, *box, 4) for row, box in zip(table, boxes)]
    assert rec == [True, True, False, True]
    ref = g.render(shape, settings=s, backend="numpy")
    _agree(g.render(shape, dtype=np.float32, settings=s, backend="numba"), ref, 1e-5)
    rng = np.random.default_rng(8)
    data = ref + rng.normal(0, 1e-3, shape)
    weight = rng.uniform(0.5, 2.0, shape)
    c_ref, g_ref = g.chi2(data, weight, gradient=True, settings=s, backend="numpy")
    c_nb, g_nb = g.chi2(data.astype(np.float32), weight.astype(np.float32), gradient=True,
                        settings=s, backend="numba")
    assert c_nb == pytest.approx(c_ref, rel=1e-4)
    for a, b in zip(g_nb, g_ref):
        _agree(a, b, 1e-3)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_recurrence_culls_the_reference_pixels(dtype):
    """On the recurrence path the culling ellipse is the set of pixels whose value is
    at least exp(-n_sigma^2 / 2) of the peak: component by component, the pixels
    rendered are exactly those of the reference rule (q <= n_sigma^2 in float64),
    for round, tilted and clipped components and two n_sigma."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(21)
    shape = (90, 77)
    g = random_mixture(rng, 24, shape, sigma_range=(4.0, 14.0), margin=-10.0)
    itemsize = np.dtype(dtype).itemsize
    checked = 0
    for n_sigma in (5.0, 3.5):
        s = AccuracySettings(pixel_integration="none", n_sigma=n_sigma)
        table = _common.prepare(g.amp, g.mean, g.cov, s)
        for k, row in enumerate(table):
            box = _common.box(row, shape)
            if box[1] < box[0] or box[3] < box[2] or not nb._use_rec(row, *box, itemsize):
                continue
            one = GaussianMixture(np.ones(1), g.mean[k:k + 1], g.cov[k:k + 1])
            ref = one.render(shape, settings=s, backend="numpy")
            img = one.render(shape, dtype=dtype, settings=s, backend="numba")
            np.testing.assert_array_equal(img != 0, ref != 0)
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(64, 64), (41, 37)])
def test_one_call_stamp_paths_match_general_path(other, dtype, shape, monkeypatch):
    """GaussianMixture.render and chi2 on a small image take the backend's one-call
    path where it has one (Numba; CuPy at any size): the same images, chi2 and gradients as the
    separate prepare / render / residual / accumulate calls, and the same errors
    and masking for bad pixels (which the one-call path hands back).  The same
    to rounding: Numba's general render also pairs neighbours over the union of
    their boxes, which its one-call path leaves out (``_render_rows``), so in
    float32 the images differ by ~2e-8 of the peak and the gradients by ~2e-7."""
    from astromix import InputError

    rng = np.random.default_rng(5)
    g = random_mixture(rng, 30, shape, sigma_range=(0.4, 15.0), negative=True)
    s = AccuracySettings()
    bk = backends.get_backend(other)
    data = (to_numpy(g.render(shape)) + rng.normal(0, 0.01, shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, shape).astype(dtype)
    d, w = bk.asarray(data), bk.asarray(weight)
    taken = bk.render_stamp(g.amp, g.mean, g.cov, shape, np.dtype(dtype), s) is not None
    assert taken == (other in ("numba", "cupy"))
    # CuPy's one-call chi2 queues the kernels back to back, at any image size
    chi2_taken = bk.chi2_stamp(g.amp, g.mean, g.cov, d, w, s, True) is not None
    assert chi2_taken == (other in ("numba", "cupy"))
    if other == "numba":  # a large image takes the general path
        assert bk.render_stamp(g.amp, g.mean, g.cov, (300, 300), np.dtype(dtype), s) is None
    img = bk.to_numpy(g.render(shape, dtype=dtype, settings=s, backend=other))
    c1, g1 = g.chi2(d, w, gradient=True, settings=s, backend=other)
    c0 = g.chi2(d, w, settings=s, backend=other)
    monkeypatch.setattr(type(bk), "render_stamp", lambda *args: None)
    monkeypatch.setattr(type(bk), "chi2_stamp", lambda *args: None)
    ref = bk.to_numpy(g.render(shape, dtype=dtype, settings=s, backend=other))
    assert img.dtype == ref.dtype == dtype and img.flags.c_contiguous
    single = dtype == np.float32
    _agree(img, ref, 1e-6 if single else 1e-12)
    c2, g2 = g.chi2(d, w, gradient=True, settings=s, backend=other)
    rel = 1e-7 if single else 1e-12
    assert c1 == pytest.approx(c2, rel=rel) and c0 == pytest.approx(c2, rel=rel)
    for a, b in zip(g1, g2):
        _agree(bk.to_numpy(a), bk.to_numpy(b), 1e-5 if single else 1e-10)
    # bad pixels: the one-call path hands them to the general one
    data[3, 4], weight[3, 4] = np.nan, 0.0  # masked: chi2 as with any value there
    expect = g.chi2(bk.asarray(np.where(weight > 0, data, 0)), bk.asarray(weight), settings=s,
                    backend=other)
    monkeypatch.undo()
    d, w = bk.asarray(data), bk.asarray(weight)
    assert bk.chi2_stamp(g.amp, g.mean, g.cov, d, w, s, False) is None
    assert g.chi2(d, w, settings=s, backend=other) == pytest.approx(expect, rel=1e-12)
    weight[5, 6] = -1.0
    with pytest.raises(InputError, match="negative"):
        g.chi2(bk.asarray(data), bk.asarray(weight), settings=s, backend=other)
    weight[5, 6], weight[3, 4] = 1.0, 1.0
    with pytest.raises(InputError, match="1 non-finite pixel"):
        g.chi2(bk.asarray(data), bk.asarray(weight), settings=s, backend=other)


def test_float32_gradient_close_to_float64(backend):
    rng = np.random.default_rng(8)
    g = random_mixture(rng, 6, (40, 40), margin=4, sigma_range=(1, 5))
    data = to_numpy(g.render((40, 40))) * 1.05 + rng.normal(0, 1e-3, (40, 40))
    w = np.ones_like(data)
    c64, g64 = g.chi2(data, w, gradient=True)
    c32, g32 = g.chi2(data.astype(np.float32), w.astype(np.float32), gradient=True)
    assert c32 == pytest.approx(c64, rel=1e-3)
    for a, b in zip(g32, g64):
        _agree(a, b, 1e-3)


def test_fourth_order_threshold_selects_components():
    g = GaussianMixture([1, 1], [[5, 5], [5, 5]], [np.eye(2) * 0.5, np.eye(2) * 30])
    t = _common.prepare(g.amp, g.mean, g.cov, AccuracySettings())
    assert t[:, _common.USE4].tolist() == [1.0, 0.0]
    t = _common.prepare(g.amp, g.mean, g.cov, AccuracySettings(fourth_order_threshold=0))
    assert t[:, _common.USE4].tolist() == [1.0, 1.0]
    t = _common.prepare(g.amp, g.mean, g.cov, AccuracySettings(pixel_integration="variance"))
    assert t[:, _common.USE4].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("mode", MODES)
def test_compiled_prepare_and_assembly_match_reference(other, mode):
    """A backend's own table preparation and gradient assembly equal _common's."""
    rng = np.random.default_rng(4)
    g = random_mixture(rng, 30, (50, 50), sigma_range=(0.3, 8))
    s = AccuracySettings(pixel_integration=mode)
    bk = backends.get_backend(other)
    ref = _common.prepare(g.amp, g.mean, g.cov, s)
    np.testing.assert_allclose(bk.prepare(g.amp, g.mean, g.cov, s), ref, rtol=1e-14, atol=0)
    acc = rng.normal(size=(30, _common.NACC))
    for a, b in zip(bk.assemble_gradient(ref, acc), _common.assemble_gradient(ref, acc)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
    # the unit-accumulator map: the same gradients by a matrix product
    unit = bk.unit_gradients(ref)
    assert unit.shape == (30, 6, _common.NACC)
    expect = _common.stack_gradients(*_common.assemble_gradient(ref, acc))
    got = np.einsum("kqm,km->kq", unit, acc)
    np.testing.assert_allclose(got, expect, rtol=1e-11, atol=1e-12 * np.abs(expect).max())


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("k", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("mode", MODES)
def test_numba_prepare_blocks_are_numpys_table_bit_for_bit(k, mode):
    """The compiled table takes its divisions and square roots in blocks of
    PREPARE_BLOCK components: every component of a partial, whole or several
    blocks equals _common.prepare's exactly (no reordered arithmetic)."""
    from astromix.backends import numba_backend as nb

    assert nb.PREPARE_BLOCK == 64
    rng = np.random.default_rng(k)
    a = rng.normal(size=(k, 2, 2))
    cov = a @ a.transpose(0, 2, 1) + 0.05 * np.eye(2)
    amp = rng.normal(size=k)
    mean = rng.uniform(-5, 70, size=(k, 2))
    s = AccuracySettings(pixel_integration=mode)
    got = backends.get_backend("numba").prepare(amp, mean, cov, s)
    np.testing.assert_array_equal(got, _common.prepare(amp, mean, cov, s))


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_pixel_counts_match_reference(other, dtype):
    """A backend's compiled data check counts what the NumPy expressions count."""
    rng = np.random.default_rng(8)
    data = rng.normal(size=(37, 41)).astype(dtype)
    weight = rng.uniform(0, 2, size=(37, 41)).astype(dtype)
    for arr, vals in ((data, [np.nan, np.inf, -np.inf]), (weight, [np.nan, np.inf, -1.0, 0.0])):
        idx = rng.choice(arr.size, size=(len(vals), 9), replace=False)
        for v, ii in zip(vals, idx):
            arr.flat[ii] = v
    bk = backends.get_backend(other)
    finite = np.isfinite(data)
    expect = (int(np.sum(~np.isfinite(weight))), int(np.sum(weight < 0)), int(np.sum(~finite)),
              int(np.sum(~finite & (weight > 0))))
    assert expect[0] == 18 and expect[1] == 9 and expect[2] == 27  # the injected pixels
    for d, w in ((data, weight), (data[:, ::2], weight[:, ::2])):  # and a strided view
        d, w = bk.asarray(d), bk.asarray(w)
        assert bk.bad_pixel_counts(d, w) == _common.Backend.bad_pixel_counts(bk, d, w)
    assert bk.bad_pixel_counts(bk.asarray(data), bk.asarray(weight)) == expect
    # no bad pixel: the negative weights made positive, the non-finite values 1
    clean = bk.asarray(np.abs(data[:5])), bk.asarray(np.abs(weight[:5]))
    clean = tuple(bk.xp.where(bk.xp.isfinite(x), x, 1.0).astype(dtype) for x in clean)
    assert bk.bad_pixel_counts(*clean) == (0, 0, 0, 0)


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_pixels_clean_flags_every_bad_pixel(dtype):
    """The one-call chi2's quick data check is False exactly where the counts are not
    all zero: one bad value at a time (NaN, +-inf data; NaN, +-inf, negative and
    subnormal negative weights; masked NaN data), in a strided view too."""
    from astromix.backends import numba_backend as nb

    rng = np.random.default_rng(12)
    data = rng.normal(size=(33, 48)).astype(dtype)
    weight = rng.uniform(0, 2, size=(33, 48)).astype(dtype)
    weight[0, :5] = 0.0
    tiny = np.finfo(dtype).smallest_subnormal
    cases = [("data", np.nan, 1.0), ("data", np.inf, 1.0), ("data", -np.inf, 0.5),
             ("data", np.nan, 0.0), ("weight", np.nan, None), ("weight", np.inf, None),
             ("weight", -np.inf, None), ("weight", -1.0, None), ("weight", -tiny, None)]
    assert nb._pixels_clean(data, weight) and nb._pixels_clean(data[:, ::3], weight[:, ::3])
    for where, value, w in cases:
        for j, i in ((0, 0), (17, 29), (32, 47)):
            d, wt = data.copy(), weight.copy()
            (d if where == "data" else wt)[j, i] = value
            if w is not None:
                wt[j, i] = w
            counts = _common.Backend.bad_pixel_counts(backends.get_backend("numpy"), d, wt)
            assert counts[:3] != (0, 0, 0)
            assert not nb._pixels_clean(d, wt), (where, value, w, j, i)
            assert not nb._pixels_clean(d[:, ::3], wt[:, ::3]) or i % 3


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_out_variants(other, dtype):
    """Backend.residual: R = 2 w (model - data) and chi2 against NumPy, written to a new
    array (the model untouched), to ``out``, in place of the model, and with ``out``
    sharing memory with the data (the Numba kernels assume no overlap)."""
    rng = np.random.default_rng(6)
    bk = backends.get_backend(other)
    model = rng.normal(size=(40, 48)).astype(dtype)
    data = rng.normal(size=(40, 48)).astype(dtype)
    weight = rng.uniform(0, 2, size=(40, 48)).astype(dtype)
    want_r = 2.0 * weight.astype(np.float64) * (model.astype(np.float64) - data)
    want_chi2 = float(np.sum(weight.astype(np.float64) * (model.astype(np.float64) - data) ** 2))
    rtol = 1e-5 if dtype == np.float32 else 1e-12

    def check(chi2, r):
        assert chi2 == pytest.approx(want_chi2, rel=rtol)
        np.testing.assert_allclose(bk.to_numpy(r), want_r, rtol=rtol, atol=rtol)

    m = bk.asarray(model.copy())
    d, w = bk.asarray(data), bk.asarray(weight)
    chi2, r = bk.residual(m, d, w)
    check(chi2, r)
    np.testing.assert_array_equal(bk.to_numpy(m), model)
    out = bk.asarray(np.zeros_like(model))
    chi2, r = bk.residual(m, d, w, out=out)
    check(chi2, r)
    m = bk.asarray(model.copy())
    chi2, r = bk.residual(m, d, w, out=m)
    assert r is m
    check(chi2, r)
    if other == "numba":  # out is the data's own array: the data are read as they were
        m, dd = model.copy(), data.copy()
        chi2, r = bk.residual(m, dd, w, out=dd)
        assert r is dd
        check(chi2, r)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, k", [((40, 45), 9), ((400, 380), 300)])
def test_jacobian_kernel(backend, mode, shape, k):
    """Backend.jacobian: the chained pixel derivatives of a mixture, against finite differences.

    With coefficients chaining each component's amplitude, centre and covariance
    to parameters, the Jacobian images are d render / d parameter: checked by central
    differences of the NumPy render of a mixture moved along each parameter (small
    case: in the large one, pixels crossing a culling ellipse's edge make the
    differences jump), against the NumPy reference implementation (the large case
    runs the Numba kernel on several threads), and at scattered points (NumPy,
    ``jacobian_points``) against the image.
    """
    from astromix.models._base import chain_coefficients

    rng = np.random.default_rng(5)
    g = random_mixture(rng, k, shape, sigma_range=(0.4, 5.0), negative=True)
    s = AccuracySettings(pixel_integration=mode)
    # three parameters: a common shift in x, a stretch of every covariance, a flux scale
    # on every other component (component derivatives m: (K, 3, 6))
    m = np.zeros((k, 3, 6))
    m[:, 0, 1] = 1.0
    m[:, 1, 3] = g.cov[:, 0, 0]
    m[:, 1, 4] = g.cov[:, 0, 1]
    m[:, 1, 5] = g.cov[:, 1, 1]
    m[::2, 2, 0] = g.amp[::2]

    def moved(t):
        amp = g.amp * np.where(np.arange(k) % 2 == 0, 1.0 + t[2], 1.0)
        return GaussianMixture(amp, g.mean + [t[0], 0.0], g.cov * (1.0 + t[1]))

    bk = backends.get_backend(backend)
    table = _common.prepare(g.amp, g.mean, g.cov, s)
    jac = bk.to_numpy(bk.jacobian(table, chain_coefficients(table, m), shape, s))
    assert jac.shape == (3,) + shape
    ref = _common.Backend.jacobian(bk, table, chain_coefficients(table, m), shape, s)
    _agree(jac, ref, 1e-9)
    h = 1e-5
    for p in range(3 if k < 50 else 0):
        up, down = np.zeros(3), np.zeros(3)
        up[p], down[p] = h, -h
        num = (moved(up).render(shape, settings=s, backend="numpy")
               - moved(down).render(shape, settings=s, backend="numpy")) / (2 * h)
        _agree(jac[p], num, 1e-5)
    yy, xx = rng.integers(0, shape[0], 50), rng.integers(0, shape[1], 50)
    pts = _common.jacobian_points(table, chain_coefficients(table, m), xx.astype(float),
                                  yy.astype(float), s.n_sigma)
    np.testing.assert_allclose(pts, jac[:, yy, xx], rtol=1e-9, atol=1e-9 * np.abs(jac).max())


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
def test_use_backend_blocks_left_out_of_order():
    """use_backend blocks that do not nest in time: asyncio tasks, and generators in one
    thread.  A thread-local stack popped from the top had given the task that opened
    'numpy' first the 'numba' of the other, and a generator still inside 'numba' saw
    'numpy' after another generator's block closed; each block sees its own backend."""
    import asyncio

    seen = {}

    async def task(name, delay_in, delay_out):
        await asyncio.sleep(delay_in)
        with backends.use_backend(name):
            await asyncio.sleep(delay_out)
            seen[name] = backends.get_backend().name

    async def main():
        await asyncio.gather(task("numpy", 0.0, 0.02), task("numba", 0.01, 0.05))

    before = backends.get_backend().name
    asyncio.run(main())
    assert seen == {"numpy": "numpy", "numba": "numba"}

    def gen(name):
        with backends.use_backend(name):
            yield backends.get_backend().name
            yield backends.get_backend().name

    g1, g2 = gen("numpy"), gen("numba")
    assert next(g1) == "numpy" and next(g2) == "numba"
    g1.close()                       # leaves its block while g2's is still open
    assert next(g2) == "numba"
    g2.close()
    assert backends.get_backend().name == before


@pytest.mark.skipif("numba" not in OTHER, reason="Numba is not installed")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode, var", [("none", 1.0), ("kurtosis", 4.0 - 1.0 / 12.0)])
def test_numba_keeps_pixels_exactly_on_the_culling_ellipse(mode, var, dtype):
    """A round Gaussian centred on a pixel puts pixels exactly on the n_sigma ellipse
    (q = 25: offsets (5, 0), (3, 4), ... with S = I in 'none' mode, (10, 0), (6, 8) with
    S = C + I/12 = 4 I in 'kurtosis' mode).  NumPy keeps them (q <= n_sigma**2); the
    numba recurrence's test on the value had dropped some by rounding: a float64 image
    3.7e-6 of the peak from NumPy's (the spec allows 1e-6) and not up-down symmetric."""
    s = AccuracySettings(pixel_integration=mode)
    g = GaussianMixture([1.0], [[12.0, 12.0]], [np.eye(2) * var])
    ref = g.render((25, 25), settings=s, backend="numpy")
    img = g.render((25, 25), dtype=dtype, settings=s, backend="numba")
    tol = 1e-12 if dtype == np.float64 else 1e-4       # float32: the spec's 1e-4
    assert np.abs(img - ref).max() <= tol * ref.max()
    assert np.abs(img - img[::-1]).max() <= tol * ref.max()
    yy, xx = np.mgrid[:25, :25]
    data = ref * 1.01 + 1e-3 * ref.max() * ((xx - 12.0) - 0.5 * (yy - 12.0)) / 12.0
    weight = np.ones_like(data)
    c0, g0 = g.chi2(data, weight, gradient=True, settings=s, backend="numpy")
    c1, g1 = g.chi2(data.astype(dtype), weight.astype(dtype), gradient=True, settings=s,
                    backend="numba")
    assert c1 == pytest.approx(c0, rel=1e3 * tol)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e3 * tol, atol=1e3 * tol * np.abs(b).max())
