"""ExposureWeightedPSF against drizzled star fields, injected geometry and analytic mixtures."""

import concurrent.futures
import json
import logging

import numpy as np
import pytest
from astropy.table import Table
from conftest import to_numpy

import astromix
from astromix import GaussianMixture, GaussianMixturePSF, InputError
from astromix.mosaic import (
    ExposureWeightedPSF,
    ImageProvider,
    InputExposure,
    PoppyProvider,
    StpsfProvider,
    decode_context,
    exposures_from_table,
    jwst_pc_matrix,
    order_exposures,
    psf_profile_metrics,
    psf_residual,
    read_association,
    read_psf_cube,
    simulate_drizzled_star_field,
    source_geometry,
    tan_wcs,
    write_psf_cube,
)

OS = 4
#: A chiral PSF (no mirror symmetry, no rotational symmetry) in detector pixels.
CHIRAL = GaussianMixture([0.6, 0.25, 0.15], [[0.0, 0.0], [0.9, 0.3], [-0.4, 1.1]],
                         [np.diag([0.8, 0.5]), [[0.6, 0.2], [0.2, 0.9]], np.eye(2) * 0.4])


def chiral_image(mixture=CHIRAL, n=81):
    c = (n - 1) / 2.0
    return to_numpy(GaussianMixture(mixture.amp, mixture.mean * OS + c,
                                    mixture.cov * OS ** 2).render((n, n)))


@pytest.fixture(scope="module")
def poppy_sim():
    provider = PoppyProvider("F200W", nlambda=1, fov_pixels=31, npix=128)
    return simulate_drizzled_star_field(provider, n_exposures=6, n_stars=9, rng=1)


@pytest.fixture(scope="module")
def chiral_provider():
    return ImageProvider(chiral_image(), oversampling=OS)


@pytest.fixture(scope="module")
def chiral_sim(chiral_provider):
    # exposure 3 is pointed 2.6" east: it covers only part of the star grid
    offsets = [(0.1, -0.2), (-0.3, 0.2), (0.2, 0.3), (2.6, 0.0), (-0.1, -0.1)]
    return simulate_drizzled_star_field(chiral_provider, n_exposures=5, n_stars=9,
                                        offsets=offsets, exposure_scale=0.05,
                                        exposure_shape=(120, 120), mosaic_scale=0.03,
                                        star_spacing=1.2, rng=3)


def positions(sim):
    return np.asarray(sim.stars["x"], float), np.asarray(sim.stars["y"], float)


def star_stamp(sim, x, y, h=12):
    i, j = int(round(x)), int(round(y))
    return sim.image[j - h:j + h + 1, i - h:i + h + 1], (x - i, y - j)


def model_of(sim, **kwargs):
    return ExposureWeightedPSF(sim.wcs, sim.exposures, sim.provider, context=sim.context,
                               **kwargs)


# -- context and geometry ---------------------------------------------------------------------
def test_decode_context_matches_drizzle(poppy_sim):
    from drizzle.utils import decode_context as drizzle_decode

    rng = np.random.default_rng(0)
    ny, nx = poppy_sim.image.shape
    xs, ys = rng.integers(0, nx, 200), rng.integers(0, ny, 200)
    mask = decode_context(poppy_sim.context, xs, ys)
    for row, ref in zip(mask, drizzle_decode(poppy_sim.context, xs, ys)):
        assert np.flatnonzero(row).tolist() == ref.tolist()
    # inputs beyond 32: a second plane, and the sign bit of int32
    ctx = np.zeros((2, 3, 3), dtype=np.int32)
    ctx[0, 1, 1] = np.int32(-2 ** 31) | 5
    ctx[1, 1, 1] = 2
    assert np.flatnonzero(decode_context(ctx, [1], [1])[0]).tolist() == [0, 2, 31, 33]
    with pytest.raises(InputError, match="outside"):
        decode_context(ctx, [5.0], [1.0])
    with pytest.raises(InputError, match="only 3 exposures"):
        decode_context(ctx, [1], [1], n_inputs=3)


def test_every_contributing_exposure_is_counted(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    truth = np.asarray(sim.stars["covered"])
    clean = np.asarray(sim.stars["clean"])
    assert 0 < truth[:, 3].sum() < len(x)           # the offset exposure covers some stars
    table = model_of(sim).source_table(x, y)
    mask, _, _ = model_of(sim).contributors(x, y)
    np.testing.assert_array_equal(mask[clean], truth[clean])
    t = np.array([e.exptime for e in sim.exposures])
    np.testing.assert_array_equal(table["n_exposures"][clean], truth[clean].sum(1))
    np.testing.assert_allclose(table["total_weight"][clean], truth[clean] @ t)
    assert len(set(table["n_exposures"])) > 1


def test_geometry_matches_injected_wcs(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    det_xy, jac, inside = source_geometry(sim.wcs, sim.exposures, x, y)
    cd_m = sim.wcs.wcs.cdelt[:, None] * sim.wcs.wcs.pc
    for e, exp in enumerate(sim.exposures):
        cd_e = exp.wcs.wcs.cdelt[:, None] * exp.wcs.wcs.pc
        expected = np.linalg.solve(cd_m, cd_e)      # mosaic <- exposure on the tangent plane
        ok = inside[e]
        np.testing.assert_allclose(jac[e, ok], np.broadcast_to(expected, jac[e, ok].shape),
                                   atol=2e-4 * np.abs(expected).max())
        ex, ey = exp.wcs.world_to_pixel_values(sim.stars["ra"], sim.stars["dec"])
        np.testing.assert_allclose(det_xy[e, ok, 0], np.asarray(ex)[ok], atol=1e-6)
        np.testing.assert_allclose(det_xy[e, ok, 1], np.asarray(ey)[ok], atol=1e-6)
        # scale 0.05 / 0.03, parity of the aperture (vparity -1) equal to the mosaic's
        assert np.allclose(np.abs(np.linalg.det(jac[e, ok])), (0.05 / 0.03) ** 2, rtol=1e-3)
        assert np.all(np.linalg.det(jac[e, ok]) > 0)
        # rotation angle: roll_ref - vparity * v3i_yang
        a = np.degrees(np.arctan2(expected[1, 0], expected[0, 0]))
        roll = exp.meta["roll_ref"] + exp.meta["v3i_yang"]
        assert abs(((a - roll) + 180) % 360 - 180) < 1e-6 or \
            abs(((a + roll) + 180) % 360 - 180) < 1e-6


# -- the verification of the issue --------------------------------------------------------------
def test_exposure_weighted_psf_beats_single_exposures_and_unrotated_average(poppy_sim):
    sim = poppy_sim
    model = model_of(sim)
    x, y = positions(sim)
    ratios_single, ratios_unrot, resid = [], [], []
    for n in np.flatnonzero(np.asarray(sim.stars["clean"])):
        data, off = star_stamp(sim, x[n], y[n])
        ew = psf_residual(data, model.image(x[n], y[n], 25, offset=off))
        unrot = psf_residual(data, model.image(x[n], y[n], 25, offset=off, rotate=False))
        singles = [psf_residual(data, model.image(x[n], y[n], 25, offset=off,
                                                  exposures=[e]))["l1"]
                   for e in range(len(sim.exposures))]
        assert ew["l1"] < min(singles) and ew["l1"] < unrot["l1"]
        ratios_single.append(ew["l1"] / min(singles))
        ratios_unrot.append(ew["l1"] / unrot["l1"])
        f = ew["flux"]
        resid.append((data - f * model.image(x[n], y[n], 25, offset=off)) / data.max())
    assert np.median(ratios_single) < 0.6 and np.median(ratios_unrot) < 0.6
    # what is left is the aliasing of each star's sub-pixel phase: it averages out over stars
    resid = np.array(resid)
    assert np.sqrt(np.mean(resid.mean(0) ** 2)) < 0.5 * np.sqrt(np.mean(resid ** 2))


def test_parity_is_carried_by_the_wcs(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    flipped = []
    for exp in sim.exposures:
        m = exp.meta
        w = tan_wcs(exp.wcs.wcs.crval[0], exp.wcs.wcs.crval[1], 0.05,
                    jwst_pc_matrix(m["roll_ref"], m["v3i_yang"], +1),
                    exp.wcs.wcs.crpix - 1, exp.shape)
        flipped.append(InputExposure(exp.name, w, exp.exptime, shape=exp.shape))
    right = model_of(sim)
    wrong = ExposureWeightedPSF(sim.wcs, flipped, sim.provider)
    n = int(np.flatnonzero(np.asarray(sim.stars["clean"]))[0])
    data, off = star_stamp(sim, x[n], y[n])
    good = psf_residual(data, right.image(x[n], y[n], 25, offset=off))["l1"]
    bad = psf_residual(data, wrong.image(x[n], y[n], 25, offset=off))["l1"]
    assert good < 0.12 and bad > 2 * good


def test_calibrate_smoothing_recovers_the_missing_drop(poppy_sim):
    sim = poppy_sim
    sigma, info = model_of(sim).calibrate_smoothing(sim.stars, sim.image)
    assert sigma < 0.05 and info["n_stars"] == len(sim.stars)
    # without the drizzle drop (1 detector px = 1.033 mosaic px), the fit puts back its
    # second moment: sigma = 1.033 / sqrt(12) = 0.298
    sigma0, info0 = model_of(sim, pixfrac=0.0).calibrate_smoothing(sim.stars, sim.image)
    assert abs(sigma0 - 0.031 / 0.03 / np.sqrt(12)) < 0.04
    assert info0["chi2"] < 0.5 * info0["chi2_none"]
    model = model_of(sim)
    model.sigma = 0.5
    assert model.sigma == 0.5
    with pytest.raises(InputError):
        model.sigma = -1


def test_skipped_exposure_gives_no_nan(chiral_sim, caplog):
    sim = chiral_sim
    x, y = positions(sim)
    names = [e.name for e in sim.exposures]
    image = chiral_image()
    provider = ImageProvider({n: image for n in names[:-1]}, oversampling=OS, by="name",
                             missing="skip")
    n = int(np.flatnonzero(np.asarray(sim.stars["covered"])[:, -1])[0])
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        stamp = model.image(x[n], y[n], 21)
    assert "left out" in caplog.text
    assert np.all(np.isfinite(stamp)) and abs(stamp.sum() - 1) < 1e-12
    full = model_of(sim)
    others = [e for e in range(len(names) - 1)]
    np.testing.assert_allclose(stamp, full.image(x[n], y[n], 21, exposures=others), atol=1e-14)
    strict = ExposureWeightedPSF(sim.wcs, sim.exposures,
                                 ImageProvider({n: image for n in names[:-1]}, oversampling=OS,
                                               by="name"), context=sim.context)
    with pytest.raises(InputError, match=names[-1]):
        strict.image(x[n], y[n], 21)
    # no exposure at all: zeros, not NaN
    empty = np.zeros_like(sim.context)
    zero = ExposureWeightedPSF(sim.wcs, sim.exposures, sim.provider, context=empty)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        z = zero.cube(x[:2], y[:2], 9, executor="serial", progress=False)
    assert np.all(z == 0)


@pytest.mark.parametrize("dim", [1, 2, 7, 24, 25, 51, 64])
def test_any_dim(chiral_sim, dim):
    sim = chiral_sim
    x, y = positions(sim)
    model = model_of(sim)
    stamp = model.image(x[4], y[4], dim)
    assert stamp.shape == (dim, dim) and np.all(np.isfinite(stamp))
    assert abs(stamp.sum() - 1) < 1e-12
    if dim >= 24:
        big = model.image(x[4], y[4], dim + 26, offset=(0, 0))
        crop = big[13:13 + dim, 13:13 + dim]
        np.testing.assert_allclose(crop / crop.sum(), stamp / stamp.sum(),
                                   atol=1e-6 * stamp.max())


@pytest.mark.parametrize("sigma", [None, 0.6])
def test_oversampled_stamp_is_an_effective_psf(chiral_sim, sigma):
    """oversampling=N: each sample is the flux of the mosaic pixel centred on it (an ePSF),
    so every phase stamp[j::N, i::N] is the oversampling=1 stamp (independent truth: the
    PSF drawn at that sub-pixel offset) and photutils' ImagePSF integrates it to its flux.
    The stamp was scaled to unit sum: N**2 = 16 times too small."""
    from photutils.psf import ImagePSF

    sim = chiral_sim
    x, y = positions(sim)
    # subsample=8: the oversampling=1 stamp resampled as finely as the fine one
    model = model_of(sim, sigma=sigma, subsample=8)
    n, dim = 4, 25
    fine = model.image(x[4], y[4], n * (dim - 1) + 1, oversampling=n)
    assert fine.sum() == pytest.approx(n * n, rel=1e-12)
    for j, i in [(0, 0), (1, 3), (2, 1)]:
        coarse = model.image(x[4], y[4], dim, offset=(-i / n, -j / n))
        phase = fine[j::n, i::n]
        np.testing.assert_allclose(phase, coarse[:phase.shape[0], :phase.shape[1]],
                                   atol=1e-4 * coarse.max())
        assert phase.sum() == pytest.approx(1.0, abs=1e-6)
    # photutils: an oversampled PSF image must sum to the product of the oversamplings
    epsf = ImagePSF(fine, oversampling=n, flux=250.0, x_0=20.3, y_0=19.6)
    yy, xx = np.mgrid[:40, :40]
    assert epsf(xx, yy).sum() == pytest.approx(250.0, rel=1e-6)


def test_weights_are_exposure_times(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    model = model_of(sim, normalize=False)
    mask, _, _ = model.contributors(x[:1], y[:1])
    used = np.flatnonzero(mask[0])
    singles = np.array([model.image(x[0], y[0], 21, exposures=[e]) for e in used])
    t = np.array([sim.exposures[e].exptime for e in used])
    np.testing.assert_allclose(model.image(x[0], y[0], 21), np.tensordot(t, singles, 1) / t.sum(),
                               atol=1e-12)
    assert np.abs(model.image(x[0], y[0], 21) - singles.mean(0)).max() > 1e-4


def test_changing_pixfrac_or_detector_pixel_discards_prepared_psfs(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    model = model_of(sim)
    first = model.image(x[0], y[0], 21)
    assert model.n_unique_psfs > 0
    # the prepared exposure PSFs include the drop and the detector pixel: changing
    # either gives what a model built with the new value gives, not the cached images
    model.pixfrac = 0.0
    assert model.n_unique_psfs == 0
    np.testing.assert_array_equal(model.image(x[0], y[0], 21),
                                  model_of(sim, pixfrac=0.0).image(x[0], y[0], 21))
    assert np.abs(model.image(x[0], y[0], 21) - first).max() > 1e-3 * first.max()
    model.detector_pixel = not model.detector_pixel
    assert model.n_unique_psfs == 0
    np.testing.assert_array_equal(
        model.image(x[0], y[0], 21),
        model_of(sim, pixfrac=0.0, detector_pixel=model.detector_pixel).image(x[0], y[0], 21))
    with pytest.raises(InputError, match="pixfrac must lie in"):
        model.pixfrac = 2.0
    with pytest.raises(InputError, match="pixfrac must be a number"):
        model.pixfrac = "wide"
    assert model.pixfrac == 0.0
    with pytest.raises(InputError, match="sigma must be a number"):
        model.sigma = "wide"


def test_exposure_mixtures_are_cached_per_psf_and_options(chiral_sim, monkeypatch):
    import astromix.fitting

    calls = []

    def fake_fit(image, n_components, **kwargs):
        calls.append(kwargs)
        return object()

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", fake_fit)
    model = model_of(chiral_sim)
    exposure = chiral_sim.exposures[0]
    first = model.exposure_mixture(exposure, 60.0, 60.0, n_components=2, n_starts=1)
    assert model.exposure_mixture(exposure, 60.0, 60.0, n_components=2, n_starts=1) is first
    # other options are another fit, not the first one's result
    other = model.exposure_mixture(exposure, 60.0, 60.0, n_components=2, objective="chi2")
    assert other is not first and calls[-1]["objective"] == "chi2"
    assert model.exposure_mixture(exposure, 60.0, 60.0, n_components=2,
                                  objective="chi2") is other
    assert len(calls) == 2
    # options that cannot be hashed: fitted at each call
    model.exposure_mixture(exposure, 60.0, 60.0, n_components=2, weight=np.ones(3))
    model.exposure_mixture(exposure, 60.0, 60.0, n_components=2, weight=np.ones(3))
    assert len(calls) == 4


def test_mixture_route_matches_image_route(chiral_sim):
    sim = chiral_sim
    x, y = positions(sim)
    model = model_of(sim)
    n = 4
    gm = model.mixture(x[n], y[n], mixtures=lambda exp, dx, dy: GaussianMixturePSF(CHIRAL))
    mask, _, jac = model.contributors(x[n:n + 1], y[n:n + 1])
    used = np.flatnonzero(mask[0])
    assert isinstance(gm, GaussianMixturePSF) and gm.n_components == 3 * used.size
    assert abs(gm.mixture.flux - 1) < 1e-12
    # analytic second moments: sum_e w_e J_e (C + (1 + pixfrac^2) / 12) J_e^T / W
    _, mu, c = CHIRAL.moments()
    t = np.array([sim.exposures[e].exptime for e in used])
    expected = sum(w * jac[e, 0] @ (c + np.eye(2) / 6 + np.outer(mu, mu)) @ jac[e, 0].T
                   for w, e in zip(t, used)) / t.sum()
    centre = sum(w * jac[e, 0] @ mu for w, e in zip(t, used)) / t.sum()
    _, gcen, gcov = gm.mixture.moments()
    np.testing.assert_allclose(gcen, centre, atol=1e-12)
    np.testing.assert_allclose(gcov + np.outer(gcen, gcen), expected, atol=1e-10)
    # the image route: same moments (plus the mosaic pixel) and the same pixels within 2%
    dim = 41
    img = model.image(x[n], y[n], dim)
    yy, xx = np.mgrid[:dim, :dim] - (dim - 1) / 2.0
    m1 = np.array([(img * xx).sum(), (img * yy).sum()])
    m2 = np.array([[(img * xx * xx).sum(), (img * xx * yy).sum()],
                   [(img * xx * yy).sum(), (img * yy * yy).sum()]]) - np.outer(m1, m1)
    np.testing.assert_allclose(m1, centre, atol=0.01)
    np.testing.assert_allclose(m2, gcov + np.eye(2) / 12, atol=0.03 * np.abs(gcov).max())
    rendered = to_numpy(gm.mixture.shift(20, 20).render((dim, dim)))
    assert np.abs(rendered - img).max() < 0.02 * img.max()


# -- cubes, executors, files ---------------------------------------------------------------------
def test_cube_order_executor_and_files(chiral_sim, tmp_path):
    sim = chiral_sim
    x, y = positions(sim)
    order = np.array([5, 0, 8, 2])
    model = model_of(sim)
    cube = model.cube(x[order], y[order], 15, executor="serial", progress=False, chunk_size=3)
    assert cube.shape == (4, 15, 15)
    for k, n in enumerate(order):
        np.testing.assert_allclose(cube[k], model.image(x[n], y[n], 15), atol=1e-15)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = model.cube(x[order], y[order], 15, executor=pool, progress=False,
                              chunk_size=1)
    np.testing.assert_array_equal(threaded, cube)
    pooled = model.cube(x[order], y[order], 15, max_workers=2, progress=False, chunk_size=2)
    np.testing.assert_allclose(pooled, cube, atol=1e-8 * cube.max())
    sources = model.source_table(x[order], y[order])
    for name in ("psf.fits", "psf.asdf", "psf.npy"):
        path = tmp_path / name
        write_psf_cube(path, cube, sources, meta={"PSFDIM": 15})
        back, table, meta = read_psf_cube(path)
        np.testing.assert_array_equal(back, cube)
        if name != "psf.npy":
            np.testing.assert_array_equal(table["n_exposures"], sources["n_exposures"])
            assert meta["PSFDIM"] == 15
    with pytest.raises(InputError, match="overwrite"):
        write_psf_cube(tmp_path / "psf.fits", cube, overwrite=False)
    with pytest.raises(InputError, match="format"):
        write_psf_cube(tmp_path / "psf.txt", cube)
    with pytest.raises(InputError, match="empty"):
        model.cube([], [], 15)
    with pytest.raises(InputError, match="outside"):
        model.cube([1e5], [3.0], 15)
    with pytest.raises(InputError, match="dim"):
        model.image(x[0], y[0], 0)


def test_unique_psfs_are_computed_once():
    provider = PoppyProvider("F150W", nlambda=1, fov_pixels=15, npix=64, field_wfe=30.0,
                             position_bin=512)
    w = tan_wcs(10, 0, 0.031, jwst_pc_matrix(20, 0, -1), (1023.5, 1023.5), (2048, 2048))
    exps = [InputExposure(f"e{i}", w, 100.0, filter="F150W", detector="NRCA1")
            for i in range(3)]
    mw = tan_wcs(10, 0, 0.03, [[-1, 0], [0, 1]], (1100, 1100), (2201, 2201))
    model = ExposureWeightedPSF(mw, exps, provider)
    xs = np.array([900.0, 903.0, 906.0, 200.0])   # detector (775-781, 906-908) and (139, 1140)
    model.cube(xs, np.full(4, 900.0), 11, executor="serial", progress=False)
    # three identical exposures and two position bins: two PSFs, each computed once
    assert provider.n_computed == 2 and len(provider.cache) == 2
    a, b = (provider.cache[k] for k in sorted(provider.cache))
    assert np.abs(a - b).max() > 1e-3 * a.max()           # field-dependent astigmatism


def test_threads_asking_for_one_psf_share_its_computation():
    """Threads missing the same key at once: one computes it, the others wait and get
    the same image (it had been computed by each); a failed computation is not
    cached, so each thread then tries in turn and gets the error."""
    import threading
    import time

    from astromix.mosaic.providers import PSFProvider

    calls = []

    class Slow(PSFProvider):
        fail = False

        def compute(self, key, exposure):
            calls.append(threading.get_ident())
            time.sleep(0.05)
            if self.fail:
                raise InputError("no PSF here")
            return np.outer(np.hanning(9), np.hanning(9))

    w = tan_wcs(10, 0, 0.031, jwst_pc_matrix(20, 0, -1), (1023.5, 1023.5), (2048, 2048))
    exp = InputExposure("e0", w, 100.0, filter="F150W", detector="NRCA1")
    for fail in (False, True):
        provider = Slow(1)
        provider.fail = fail
        calls.clear()
        barrier = threading.Barrier(6)

        def ask(_, provider=provider, barrier=barrier):
            barrier.wait()
            try:
                return provider.psf(exp, 10.0, 20.0)[1]
            except InputError as exc:
                return exc

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(ask, range(6)))
        if not fail:
            assert len(calls) == 1 and provider.n_computed == 1
            assert all(g is got[0] for g in got) and got[0].sum() == pytest.approx(1.0)
        else:
            assert len(calls) == 6 and provider.n_computed == 0 and not provider.cache
            assert all(isinstance(g, InputError) for g in got)
        assert not provider._pending


# -- providers and tables ------------------------------------------------------------------------
def test_stpsf_provider_without_data(monkeypatch, tmp_path):
    monkeypatch.delenv("STPSF_PATH", raising=False)
    with pytest.raises(InputError, match="STPSF_PATH"):
        StpsfProvider()
    with pytest.raises(InputError, match="not a folder"):
        StpsfProvider(data_path=str(tmp_path / "missing"))


def test_image_provider_from_fits(tmp_path, chiral_sim):
    from astropy.io import fits

    path = tmp_path / "psf.fits"
    hdu = fits.PrimaryHDU(chiral_image())
    hdu.header["OVERSAMP"] = OS
    hdu.writeto(path)
    provider = ImageProvider(str(path))
    assert provider.oversampling == OS
    _, img = provider.psf(chiral_sim.exposures[0], 10, 10)
    assert abs(img.sum() - 1) < 1e-12
    with pytest.raises(InputError, match="oversampling"):
        ImageProvider(np.ones((5, 5)))
    with pytest.raises(InputError, match="NaN"):
        ImageProvider(np.full((5, 5), np.nan), oversampling=1)


class _DeviceArray:
    """Stands in for a CuPy array: NumPy may not convert it implicitly (CuPy's
    ``__array__`` raises TypeError), ``get()`` copies it to the host."""

    def __init__(self, a):
        self._a = np.array(a)
        self.__cuda_array_interface__ = {"shape": self._a.shape, "typestr": "<f8",
                                         "data": (0, False), "version": 3}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self):
        return self._a.copy()


def test_image_provider_takes_a_gpu_array(chiral_sim):
    """A PSF image held on the GPU (CuPy) is copied to the host by ImageProvider and
    psf_profile_metrics; the results equal those of the NumPy image."""
    image = chiral_image()
    with pytest.raises(TypeError):
        np.asarray(_DeviceArray(image))
    exp = chiral_sim.exposures[0]
    _, ref = ImageProvider(image, oversampling=OS).psf(exp, 10, 10)
    _, img = ImageProvider(_DeviceArray(image), oversampling=OS).psf(exp, 10, 10)
    np.testing.assert_array_equal(img, ref)
    assert psf_profile_metrics(_DeviceArray(image), 0.03) == psf_profile_metrics(image, 0.03)


def test_exposures_from_table_and_association(chiral_sim, tmp_path):
    sim = chiral_sim
    rows = []
    for exp in sim.exposures:
        m = exp.meta
        rows.append({"filename": exp.name + "_cal.fits", "effexptm": exp.exptime,
                     "ra_ref": exp.wcs.wcs.crval[0], "dec_ref": exp.wcs.wcs.crval[1],
                     "roll_ref": m["roll_ref"], "v3i_yang": m["v3i_yang"],
                     "vparity": m["vparity"], "pixel_scale": 0.05, "naxis1": exp.shape[1],
                     "naxis2": exp.shape[0], "detector": "nrca1", "filter": "F200W",
                     "date_obs": "2023-01-01", "time_obs": "00:00:00"})
    table = Table(rows=rows[::-1])
    csv = tmp_path / "exposures.csv"
    table.write(csv, format="ascii.csv")
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"products": [{"members": [
        {"expname": e.name + "_cal.fits", "exptype": "science"} for e in sim.exposures]
        + [{"expname": "bg_cal.fits", "exptype": "background"}]}]}))
    exps = order_exposures(exposures_from_table(str(csv)), read_association(str(asn)))
    assert [e.name for e in exps] == [e.name + "_cal" for e in sim.exposures]
    ra, dec = np.asarray(sim.stars["ra"]), np.asarray(sim.stars["dec"])
    for mine, truth in zip(exps, sim.exposures):
        assert mine.detector == "NRCA1" and mine.date == "2023-01-01T00:00:00"
        assert mine.exptime == truth.exptime
        np.testing.assert_allclose(mine.wcs.world_to_pixel_values(ra, dec),
                                   truth.wcs.world_to_pixel_values(ra, dec), atol=1e-6)
    # FITS keywords instead of the pointing
    w = sim.exposures[0].wcs.wcs
    t2 = Table(rows=[{"name": "a", "exptime": 10.0, "crval1": w.crval[0], "crval2": w.crval[1],
                      "crpix1": w.crpix[0], "crpix2": w.crpix[1], "pc1_1": w.pc[0, 0],
                      "pc1_2": w.pc[0, 1], "pc2_1": w.pc[1, 0], "pc2_2": w.pc[1, 1],
                      "cdelt1": w.cdelt[0], "cdelt2": w.cdelt[1]}])
    (e2,) = exposures_from_table(t2)
    np.testing.assert_allclose(e2.wcs.world_to_pixel_values(ra, dec),
                               sim.exposures[0].wcs.world_to_pixel_values(ra, dec), atol=1e-6)
    with pytest.raises(InputError, match="no WCS"):
        exposures_from_table(Table(rows=[{"name": "a", "exptime": 1.0}]))
    with pytest.raises(InputError, match="exposure time"):
        exposures_from_table(Table(rows=[{"name": "a", "crval1": 1.0}]))
    with pytest.raises(InputError, match="association member"):
        order_exposures(exps, ["nothere"])


def test_poppy_f200w_against_nexus_empirical_psf():
    """The PoppyProvider F200W mosaic PSF against the NEXUS empirical one (4x, 0.03"/px)."""
    from astromix.datasets import load_jwst_f200w_psf

    nexus, header = load_jwst_f200w_psf()
    provider = PoppyProvider("F200W", nlambda=3, fov_pixels=71)
    mw = tan_wcs(150, 2, 0.03, [[-1, 0], [0, 1]], (500, 500), (1001, 1001))
    exps = [InputExposure(f"e{i}", tan_wcs(150, 2, 0.031, jwst_pc_matrix(r, -0.5, -1),
                                           (1023.5, 1023.5), (2048, 2048)), 400.0,
                          filter="F200W") for i, r in enumerate((30, 30, 110, 110))]
    stamp = ExposureWeightedPSF(mw, exps, provider).image(500, 500, 281, oversampling=4)
    ours = psf_profile_metrics(stamp, 0.0075, centre=(140, 140))
    theirs = psf_profile_metrics(nexus, 0.0075, centre=(267, 267))
    assert abs(ours["fwhm"] / theirs["fwhm"] - 1) < 0.1
    # poppy has no detector scattering, jitter or real OPD: more light in the core
    assert ours["ee"][0.1] > theirs["ee"][0.1]
    assert abs(ours["ee"][0.3] - theirs["ee"][0.3]) < 0.1


def test_top_level_export():
    assert astromix.ExposureWeightedPSF is ExposureWeightedPSF
    assert astromix.models.ExposureWeightedPSF is ExposureWeightedPSF
    w = tan_wcs(1, 1, 0.03, np.eye(2), (0, 0))
    with pytest.raises(InputError, match="at least one exposure"):
        ExposureWeightedPSF(w, [], ImageProvider(np.ones((3, 3)), oversampling=1))
    with pytest.raises(InputError, match="PSFProvider"):
        ExposureWeightedPSF(w, [InputExposure("a", w, 1.0)], None)
    with pytest.raises(InputError, match="exptime"):
        InputExposure("a", w, 0.0)
    with pytest.raises(InputError, match="pixfrac"):
        ExposureWeightedPSF(w, [InputExposure("a", w, 1.0)],
                            ImageProvider(np.ones((3, 3)), oversampling=1), pixfrac=3)


def test_geometry_includes_sip_distortion():
    """A SIP term x' = u + a u^2 changes the local scale along x by 1 + 2 a u."""
    from astropy.wcs import WCS, Sip

    a = 2e-5
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [1024.5, 1024.5]
    w.wcs.cd = np.array([[-0.031, 0.0], [0.0, 0.031]]) / 3600
    coeff = np.zeros((3, 3))
    coeff[2, 0] = a
    w.sip = Sip(coeff, np.zeros((3, 3)), None, None, w.wcs.crpix)
    w.wcs.set()
    exp = InputExposure("sip", w, 100.0, shape=(2048, 2048))
    mw = tan_wcs(150.0, 2.0, 0.031, [[-1, 0], [0, 1]], (1023.5, 1023.5), (2048, 2048))
    # mosaic positions of detector x = 1023.5 + u (y at the reference row)
    u = np.array([0.0, 300.0, -500.0])
    ra, dec = w.pixel_to_world_values(1023.5 + u, np.full(3, 1023.5))
    mx, my = mw.world_to_pixel_values(ra, dec)
    det_xy, jac, inside = source_geometry(mw, [exp], mx, my)
    assert inside.all()
    np.testing.assert_allclose(det_xy[0, :, 0], 1023.5 + u, atol=1e-6)
    np.testing.assert_allclose(jac[0, :, 0, 0], 1 + 2 * a * u, rtol=1e-5)
    np.testing.assert_allclose(jac[0, :, 1, 1], 1.0, rtol=1e-5)


def test_numpy_and_numba_kernels_agree():
    from astromix.mosaic import _kernel

    rng = np.random.default_rng(4)
    imgs = [rng.random((40, 50)), rng.random((33, 31))]
    flat = np.concatenate([i.ravel() for i in imgs])
    offsets = np.array([0, imgs[0].size], dtype=np.int64)
    widths = np.array([50, 31], dtype=np.int64)
    heights = np.array([40, 33], dtype=np.int64)
    os_eff = np.array([8.0, 6.0])
    cen = np.array([[24.5, 19.5], [15.0, 16.0]])
    jinv = np.array([[[0.9, 0.3], [-0.3, 0.9]], [[-1.1, 0.0], [0.1, 1.0]]])
    coef = np.array([0.3, 0.7])
    t = np.arange(-12, 12) / 2.0
    ref = _kernel._accumulate_numpy(flat, offsets, widths, heights, os_eff, cen, jinv, coef, t,
                                    t + 0.25, np.zeros((24, 24)))
    got = _kernel.accumulate(flat, offsets, widths, heights, os_eff, cen, jinv, coef, t,
                             t + 0.25, np.zeros((24, 24)))
    assert np.count_nonzero(ref) > 100 and np.count_nonzero(ref == 0) > 10   # edges met
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_geometry_with_a_gwcs_exposure():
    """An exposure described by a gwcs (as JWST cal files are) gives the same geometry."""
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs

    pc = jwst_pc_matrix(35.0, -0.5, -1)
    fits_like = tan_wcs(150.0, 2.0, 0.05, pc, (49.5, 49.5), (100, 100))
    transform = ((models.Shift(-49.5) & models.Shift(-49.5))
                 | models.AffineTransformation2D(matrix=pc * 0.05 / 3600)
                 | models.Pix2Sky_TAN() | models.RotateNative2Celestial(150.0, 2.0, 180.0))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="icrs", unit=(u.deg, u.deg))
    g = gwcs_wcs.WCS([(cf.Frame2D(name="detector"), transform), (sky, None)])
    mw = tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (80, 80), (161, 161))
    x, y = np.array([80.0, 60.0]), np.array([80.0, 95.0])
    ref = source_geometry(mw, [InputExposure("fits", fits_like, 1.0, shape=(100, 100))], x, y)
    got = source_geometry(mw, [InputExposure("gwcs", g, 1.0, shape=(100, 100))], x, y)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6)
    assert got[2].all()


# -- simulate_drizzled_star_field: units, effective PSFs, missing PSFs, sizes, edge stars -------
def gaussian_provider(variance=1.0, **kwargs):
    """A circular Gaussian PSF of ``variance`` detector px^2, sampled OS times per pixel."""
    yy, xx = np.mgrid[:81, :81] - 40.0
    return ImageProvider(np.exp(-(xx ** 2 + yy ** 2) / (2 * variance * OS ** 2)),
                         oversampling=OS, **kwargs)


@pytest.mark.parametrize("mosaic_scale", [0.03, 0.062])
def test_simulated_mosaic_star_sums_to_its_flux(mosaic_scale):
    """The mosaic is a count rate per mosaic pixel: a star sums to its injected flux whatever
    the pixel scales (drizzle averages surface brightness: it had summed to flux times
    (exposure_scale / mosaic_scale)^2, 10.68 and 2.50 here)."""
    sim = simulate_drizzled_star_field(gaussian_provider(2.0), n_exposures=4, n_stars=4,
                                       rng=0, flux=10.0, exposure_scale=0.031,
                                       mosaic_scale=mosaic_scale)
    h = int(15 * 0.031 / mosaic_scale) + 3     # 15 detector px, well inside the star spacing
    sums = []
    for s in sim.stars[np.asarray(sim.stars["clean"]) & (sim.stars["n_exposures"] == 4)]:
        i, j = int(round(s["x"])), int(round(s["y"]))
        sums.append(sim.image[j - h:j + h + 1, i - h:i + h + 1].sum())
    assert len(sums) > 0
    np.testing.assert_allclose(sums, 10.0, rtol=1e-4)
    for img in sim.exposure_images:                   # count rates per detector pixel
        assert img.sum() == pytest.approx(10.0 * 4, rel=1e-4)


def test_simulated_effective_psf_is_not_convolved_with_the_pixel_again():
    """An effective PSF (pixel_integrated) of a Gaussian of variance 1 px^2 has variance
    1 + 1/12 at the pixel centres; the simulation had added the pixel again (1 + 2/12)."""
    provider = gaussian_provider(1.0 + 1.0 / 12.0, pixel_integrated=True)
    sim = simulate_drizzled_star_field(provider, n_exposures=1, n_stars=1, rng=0,
                                       roll_angles=[0.0], offsets=[(0.0, 0.0)],
                                       exptimes=[100.0], exposure_scale=0.031)
    img, exp = sim.exposure_images[0], sim.exposures[0]
    ex, ey = (float(v) for v in exp.wcs.world_to_pixel_values(sim.stars["ra"][0],
                                                               sim.stars["dec"][0]))
    jx, jy = int(round(ex)), int(round(ey))
    stamp = img[jy - 12:jy + 13, jx - 12:jx + 13]
    gy, gx = np.mgrid[-12:13, -12:13]
    m = stamp.sum()
    assert m == pytest.approx(1.0, rel=1e-6)
    for d in (gx - (ex - jx), gy - (ey - jy)):
        assert (stamp * d ** 2).sum() / m == pytest.approx(1.0 + 1.0 / 12.0, abs=2e-3)
    # without pixel_integrated the same image is a PSF: the pixel is added (1 + 2/12)
    sim2 = simulate_drizzled_star_field(gaussian_provider(1.0 + 1.0 / 12.0), n_exposures=1,
                                        n_stars=1, rng=0, roll_angles=[0.0],
                                        offsets=[(0.0, 0.0)], exptimes=[100.0],
                                        exposure_scale=0.031)
    stamp2 = sim2.exposure_images[0][jy - 12:jy + 13, jx - 12:jx + 13]
    assert (stamp2 * (gx - (ex - jx)) ** 2).sum() / stamp2.sum() == \
        pytest.approx(1.0 + 2.0 / 12.0, abs=2e-3)


def test_simulation_skips_an_exposure_without_psf(caplog):
    """ImageProvider(missing='skip') returns None for an exposure: it is left out with a
    warning naming it (as ExposureWeightedPSF does); it had crashed in render_point_source."""
    yy, xx = np.mgrid[:81, :81] - 40.0
    epsf = np.exp(-(xx ** 2 + yy ** 2) / 32)
    provider = ImageProvider({"sim_00": epsf, "sim_02": epsf}, oversampling=OS, by="name",
                             missing="skip")
    with caplog.at_level(logging.WARNING, logger="astromix"):
        sim = simulate_drizzled_star_field(provider, n_exposures=3, n_stars=4, rng=0,
                                           flux=5.0, exposure_scale=0.031)
    assert "sim_01" in caplog.text and "left out" in caplog.text
    assert [e.name for e in sim.exposures] == ["sim_00", "sim_02"]
    assert len(sim.exposure_images) == 2 and np.asarray(sim.stars["covered"]).shape == (4, 2)
    assert sim.stars["n_exposures"].max() == 2
    s = sim.stars[int(np.argmax(np.asarray(sim.stars["clean"])))]
    i, j = int(round(s["x"])), int(round(s["y"]))
    assert sim.image[j - 18:j + 19, i - 18:i + 19].sum() == pytest.approx(5.0, rel=1e-3)
    none = ImageProvider({"other": epsf}, oversampling=OS, by="name", missing="skip")
    with pytest.raises(InputError, match="no PSF for any"):
        simulate_drizzled_star_field(none, n_exposures=2, n_stars=1, rng=0)


@pytest.mark.parametrize("kwargs", [
    dict(exposure_shape=(0, 160)), dict(exposure_shape=(-5, 160)), dict(mosaic_scale=0.0),
    dict(mosaic_scale=-0.03), dict(exposure_scale=0.0), dict(exposure_scale=float("nan")),
    dict(mosaic_shape=(0, 0)), dict(n_stars=0), dict(n_exposures=0), dict(n_stars=2.5),
])
def test_simulation_refuses_non_positive_sizes(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InputError, match=name):
        simulate_drizzled_star_field(gaussian_provider(), **{"n_exposures": 2, "rng": 0,
                                                             **kwargs})


@pytest.mark.parametrize("x, y", [(4, 91), (91, 3), (91, 91)])
def test_compare_with_empirical_psf_near_the_low_edge(x, y):
    """A star near the mosaic's low edge gets a 2 min(x, y) + 1 px fit stamp; the empirical
    star had been pasted whole at negative slice starts (a broadcast ValueError).  The
    injected smoothing (the model smoothed by 0.6 mosaic px) is recovered."""
    from astromix.mosaic import compare_with_empirical_psf

    provider = gaussian_provider(2.0)
    sim = simulate_drizzled_star_field(provider, n_exposures=3, n_stars=4, rng=0)
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context)
    model.sigma = 0.6
    emp = model.image(x, y, 41, oversampling=OS)       # 11 mosaic px: h = 5
    model.sigma = None
    res = compare_with_empirical_psf(model, x, y, emp, OS, 0.03, radii=(0.05,), r_total=0.1)
    assert res["sigma"] == pytest.approx(0.6, abs=0.02) and model.sigma is None
