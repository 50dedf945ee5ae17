"""Tests of astromix.psffield.mixture_field (Gaussian-mixture PSF field) on GalSim fields."""

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from astropy.table import Table  # noqa: E402

from astromix import Exposure, GaussianMixturePSF  # noqa: E402
from astromix.errors import InputError  # noqa: E402
from astromix.io.psfex import read_psfex, write_psfex  # noqa: E402
from astromix.psffield.mixture_field import (  # noqa: E402
    MixturePSFFieldModel,
    fit_mixture_psf_field,
)
from astromix.psffield.validation import validate_psf_field  # noqa: E402

AMPS = (0.7, 0.3)
HELD_OUT = [(150.0, 150.0), (500.0, 500.0), (850.0, 200.0), (300.0, 800.0), (700.0, 650.0)]


def _covs(x, y):
    """The true covariances [px^2] of the two components at (x, y): linear in x and y."""
    u, v = x / 1000.0 - 0.5, y / 1000.0 - 0.5
    c_a = np.array([[2.0 + 0.6 * u, 0.25 * v], [0.25 * v, 2.2 - 0.3 * u]])
    c_b = np.array([[7.0 + 1.0 * u, 0.4 * v], [0.4 * v, 7.5 + 0.5 * v]])
    return c_a, c_b


def _profile(x, y):
    parts = []
    for amp, cov in zip(AMPS, _covs(x, y)):
        lo = np.linalg.cholesky(cov)
        parts.append(galsim.Gaussian(sigma=1.0).transform(lo[0, 0], lo[0, 1], lo[1, 0], lo[1, 1])
                     .withFlux(amp))
    return galsim.Add(parts)


def _truth(x, y, size=25):
    """GalSim's exact pixel-integrated rendering, unit sum."""
    arr = _profile(x, y).drawImage(scale=1.0, nx=size, ny=size).array
    return arr / arr.sum()


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(7)
    n = 60
    img = galsim.ImageD(1000, 1000)
    xs, ys = rng.uniform(25, 975, n), rng.uniform(25, 975, n)
    fluxes = 1e5 * rng.uniform(0.5, 2.0, n)
    for x, y, f in zip(xs, ys, fluxes):
        st = _profile(x, y).withFlux(f).drawImage(scale=1.0, center=galsim.PositionD(x + 1, y + 1),
                                                  nx=41, ny=41)
        b = st.bounds & img.bounds
        img[b] += st[b]
    arr = img.array + rng.normal(0, 1.0, img.array.shape)
    stars = Table({"x": xs + rng.normal(0, 0.2, n), "y": ys + rng.normal(0, 0.2, n)})
    model = fit_mixture_psf_field(arr, stars, weight=np.ones_like(arr), background=0.0,
                                  degree=1, n_components=2)
    return model, arr, xs, ys


def test_recovers_the_varying_mixture(field):
    model, _, xs, ys = field
    assert isinstance(model, MixturePSFFieldModel) and model.n_components == 2
    assert model.fit_info["n_used"] >= 57  # the pixel fit may reject a few
    for x, y in HELD_OUT:
        psf = model.mixture(x, y)
        assert isinstance(psf, GaussianMixturePSF)
        mix = psf.mixture
        assert mix.amp.sum() == pytest.approx(1.0)
        order = np.argsort(np.trace(mix.cov, axis1=1, axis2=2))
        np.testing.assert_allclose(mix.amp[order], AMPS, atol=0.02)
        for got, want in zip(mix.cov[order], _covs(x, y)):
            np.testing.assert_allclose(got, want, atol=0.03 * np.trace(want))
        truth = _truth(x, y)
        # the renderer's pixel integration agrees with GalSim's to ~3e-3 of the peak
        assert np.abs(model.image(x, y) - truth).max() / truth.max() < 4e-3
    good = np.asarray(model.stars["used"])
    assert np.max(np.hypot(model.stars["x_fit"][good] - xs[good],
                           model.stars["y_fit"][good] - ys[good])) < 0.03


def test_image_centre_and_callable(field):
    model, _, _, _ = field
    a = model.image(500.0, 500.0, shape=(21, 21), center=(0.3, -0.2))
    truth = _profile(500.0, 500.0).drawImage(scale=1.0, nx=21, ny=21,
                                             offset=galsim.PositionD(0.3, -0.2)).array
    assert np.abs(a - truth / truth.sum()).max() / a.max() < 4e-3
    # a PSF as a callable of position: what Exposure takes
    assert model(500.0, 500.0).mixture.amp.sum() == pytest.approx(1.0)
    from astropy.wcs import WCS
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [500.0, 500.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    exp = Exposure(np.zeros((1000, 1000)), wcs=wcs, psf=model, band="i")
    np.testing.assert_allclose(exp.psf_at(300.0, 800.0).mixture.cov,
                               model.mixture(300.0, 800.0).mixture.cov)
    with pytest.raises(InputError):
        model.mixture(np.nan, 3.0)
    # the polynomial terms and parameters refuse what mixture refuses (they had given NaN)
    assert model.coefficients([1.0, 2.0], 3.0).shape == (2, model.coefficients(1.0, 3.0).size)
    for call in (lambda: model.coefficients([1.0, np.inf], 3.0),
                 lambda: model.parameters(3.0, np.nan)):
        with pytest.raises(InputError, match="must be finite"):
            call()
    with pytest.raises(InputError, match="bad position"):
        model.coefficients([1.0, 2.0], [3.0, 4.0, 5.0])


def test_psfex_export_and_validation(field, tmp_path):
    model, arr, xs, ys = field
    psfex = model.to_psfex()
    assert psfex.meta["MIXPROJ"] < 5e-3
    back = read_psfex(write_psfex(tmp_path / "mix.psf", psfex))
    for x, y in HELD_OUT:
        np.testing.assert_allclose(back.image(x, y), model.image(x, y), atol=5e-3 * 0.1)
    stars = Table({"x": xs[:10], "y": ys[:10]})
    out = validate_psf_field(arr, model, stars, size=25, background=0.0)
    ok = out["flag"] == 0
    assert ok.sum() == 10
    assert np.all(np.abs(out["dsigma_over_sigma"][ok]) < 3e-3)
    assert np.all(np.abs(out["de1"][ok]) < 3e-3) and np.all(np.abs(out["de2"][ok]) < 3e-3)


def test_psf_at_sky_through_each_wcs(field):
    """Two exposures of one sky position: each PSF comes from its own pixel there."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from astromix.datasets import cfht_a370
    from astromix.psffield import psf_at_sky

    model, _, _, _ = field
    with warnings.catch_warnings():  # the 1990s header's RADECSYS and friends
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs_a = WCS(fits.getheader(cfht_a370())).celestial
    ra, dec = wcs_a.pixel_to_world_values(300.0, 700.0)
    wcs_b = wcs_a.deepcopy()  # a dithered exposure, rotated by 90 deg: the star at (600, 400)
    wcs_b.wcs.crval = [float(ra), float(dec)]
    wcs_b.wcs.crpix = [601.0, 401.0]
    wcs_b.wcs.cd = wcs_b.wcs.cd @ np.array([[0.0, -1.0], [1.0, 0.0]])
    wcs_b.wcs.set()
    exps = [Exposure(np.zeros((1000, 1000)), wcs=wcs_a, psf=model, band="I", name="a"),
            Exposure(np.zeros((1000, 1000)), wcs=wcs_b, psf=model, band="I", name="b"),
            Exposure(np.zeros((100, 100)), wcs=wcs_a, psf=model, band="I", name="c")]
    out = psf_at_sky(exps, float(ra), float(dec))
    assert list(out["name"]) == ["a", "b", "c"] and list(out["inside"]) == [True, True, False]
    np.testing.assert_allclose([out["x"][0], out["y"][0]], [300.0, 700.0], atol=1e-6)
    np.testing.assert_allclose([out["x"][1], out["y"][1]], [600.0, 400.0], atol=1e-6)
    assert out["psf"][2] is None
    for row, (x, y) in zip(out[:2], [(300.0, 700.0), (600.0, 400.0)]):
        np.testing.assert_allclose(row["psf"].mixture.cov, model.mixture(x, y).mixture.cov)
    images = psf_at_sky(exps[:2], float(ra), float(dec), kind="image", shape=(15, 15))
    np.testing.assert_allclose(np.asarray(images["psf"][1], dtype=float),
                               model.image(600.0, 400.0, shape=(15, 15)))
    with pytest.raises(InputError):
        psf_at_sky(exps, float(ra), float(dec), kind="cube")


def test_inputs():
    stars = Table({"x": [10.0], "y": [10.0]})
    with pytest.raises(InputError):
        fit_mixture_psf_field(np.zeros((50, 50)), stars, n_components=0)
    with pytest.raises(InputError):
        fit_mixture_psf_field(np.zeros((50, 50)), stars, pixel_model="pixels")


def test_undersampled_stars_from_moments():
    """FWHM 1.5 px stars: the mixture, forward-modelled, is right at any sub-pixel phase."""
    rng = np.random.default_rng(2)

    def prof(x, y):
        u, v = x / 1000 - 0.5, y / 1000 - 0.5
        return (galsim.Gaussian(fwhm=1.5 + 0.2 * u).shear(g1=0.05 * v, g2=0.03 * u)
                + galsim.Gaussian(fwhm=4.0).withFlux(0.25))

    n = 70
    img = galsim.ImageD(1000, 1000)
    xs, ys = rng.uniform(25, 975, n), rng.uniform(25, 975, n)
    for x, y in zip(xs, ys):
        st = prof(x, y).withFlux(5e4).drawImage(scale=1.0, center=galsim.PositionD(x + 1, y + 1),
                                                nx=41, ny=41)
        b = st.bounds & img.bounds
        img[b] += st[b]
    arr = img.array + rng.normal(0, 1, img.array.shape)
    stars = Table({"x": xs + rng.normal(0, 0.2, n), "y": ys + rng.normal(0, 0.2, n)})
    model = fit_mixture_psf_field(arr, stars, weight=np.ones_like(arr), background=0.0,
                                  degree=1, n_components=3, start="moments")
    assert model.fit_info["converged"] and model.fit_info["pixel_fit_info"] is None
    assert model.fit_info["n_used"] >= 65
    for x, y in [(500.0, 500.0), (200.0, 800.0), (800.0, 150.0)]:
        for off in [(0.0, 0.0), (0.5, 0.5), (0.3, -0.2)]:
            truth = prof(x, y).drawImage(nx=25, ny=25, scale=1.0, offset=off).array
            truth /= truth.sum()
            img = model.image(x, y, shape=(25, 25), center=off)
            # measured: at most 6.7e-3 of the peak (the pixel basis fails on these stars)
            assert np.abs(img - truth).max() / truth.max() < 1e-2
    with pytest.raises(InputError):
        fit_mixture_psf_field(arr, stars, start="psfex")


def test_moments_start_drops_a_star_whose_centroid_leaves_the_stamp_area():
    """A star 11 px from the border, catalogued 1.4 px inwards: its stamp fits around
    the catalogue position but not around the measured centroid.  start="moments"
    had kept it and then failed the whole fit ("a used star's stamp leaves the
    image"); it is now left out as an edge star, as start="pixel" does."""
    rng = np.random.default_rng(1)
    true = np.vstack([rng.uniform(30, 170, (14, 2)), [[11.0, 100.0]]])
    img = galsim.ImageD(200, 200, xmin=0, ymin=0, scale=1.0)
    for x, y in true:
        galsim.Gaussian(fwhm=3.0).withFlux(1e4).drawImage(
            image=img, center=galsim.PositionD(x, y), add_to_image=True)
    data = img.array + rng.normal(0.0, 1.0, img.array.shape)
    cat = true.copy()
    cat[-1, 0] = 12.4
    model = fit_mixture_psf_field(data, Table(cat, names=("x", "y")), degree=1,
                                  n_components=2, start="moments", background=0.0)
    assert not model.stars["used"][-1] and model.stars["used"][:-1].all()
    truth = galsim.Gaussian(fwhm=3.0).drawImage(nx=25, ny=25, scale=1.0).array
    assert np.abs(model.image(100.0, 100.0) / model.image(100.0, 100.0).sum()
                  - truth / truth.sum()).max() < 0.02 * truth.max() / truth.sum()


@pytest.mark.parametrize("start", ["moments", "pixel_model"])
def test_weight_and_background_are_checked_on_every_start(start):
    """The moments start and a given pixel model skip fit_psf_field's checks: a weight
    or background of the wrong shape had failed with NumPy's broadcasting error, and a
    negative weight had been blamed on HSM."""
    from astromix.psffield.model import fit_psf_field

    rng = np.random.default_rng(2)
    pos = rng.uniform(20, 100, (8, 2))
    img = galsim.ImageD(120, 120, xmin=0, ymin=0, scale=1.0)
    for x, y in pos:
        galsim.Gaussian(fwhm=3.0).withFlux(1e4).drawImage(
            image=img, center=galsim.PositionD(x, y), add_to_image=True)
    arr = img.array + rng.normal(0.0, 1.0, img.array.shape)
    stars = Table(pos, names=("x", "y"))
    kwargs = {"start": "moments", "degree": 0}
    if start == "pixel_model":
        kwargs = {"pixel_model": fit_psf_field(arr, stars, degree=0, background=0.0)}
    with pytest.raises(InputError, match=r"weight has shape \(60, 60\), the image \(120, 120\)"):
        fit_mixture_psf_field(arr, stars, weight=np.ones((60, 60)), **kwargs)
    with pytest.raises(InputError, match="weight must be finite and >= 0"):
        fit_mixture_psf_field(arr, stars, weight=-np.ones((120, 120)), **kwargs)
    with pytest.raises(InputError, match=r"background has shape \(10, 10\)"):
        fit_mixture_psf_field(arr, stars, background=np.zeros((10, 10)), **kwargs)


def test_cfht_field_is_positive_definite_over_the_image_and_exports():
    """The shipped CFHT image with --snr-min 10 (as psf-field's help recommends): the
    mixture had been positive definite at the stars only, indefinite at a corner of their
    bounding box, so to_psfex (psf-field's psf.psf, spread_model) raised InputError after
    the whole fit.  The covariances are now positive definite over the image and the box;
    the export works, and SPREAD_MODEL of the stars used is ~0 (a star is the PSF)."""
    pytest.importorskip("photutils")
    from astropy.io import fits

    from astromix.datasets import cfht_a370
    from astromix.psffield import (
        detect_sources,
        fit_psf_field,
        select_stars,
        spread_model,
    )

    data = fits.getdata(cfht_a370()).astype(float)
    stars = select_stars(detect_sources(data, saturation=12000), snr_range=(10, None),
                         reserve=0.2, seed=0)
    sel = stars[np.asarray(stars["selected"], bool)]
    pixel = fit_psf_field(data, sel, size=25, degree=2)
    mix = fit_mixture_psf_field(data, sel, n_components=4, pixel_model=pixel)
    ny, nx = data.shape
    lo, hi = mix.polzero - 1 - mix.polscal / 2, mix.polzero - 1 + mix.polscal / 2
    for x in np.linspace(min(lo[0], 0), max(hi[0], nx - 1), 9):
        for y in np.linspace(min(lo[1], 0), max(hi[1], ny - 1), 9):
            _, cov = mix.parameters(x, y)
            assert np.all(np.linalg.eigvalsh(cov) > 0), (x, y)
    psfex = mix.to_psfex()
    assert 0 < psfex.meta["MIXPROJ"] < 0.05
    used = mix.stars[np.asarray(mix.stars["used"], bool)]
    cat = Table({"x": used["x_fit"], "y": used["y_fit"]})
    sky = float(np.median(data))
    sm = spread_model(data, mix, cat, size=25, background=sky)["spread_model"]
    assert abs(np.median(sm)) < 2e-3


def _moffat_stars(seed, beta, flux):
    """16 GalSim Moffat stars (FWHM 3 px) at random positions in a 200 x 200 image with unit
    Gaussian noise: (image, Table of x, y)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(20, 180, (16, 2))
    img = galsim.ImageD(200, 200, xmin=0, ymin=0, scale=1.0)
    for x, y in pos:
        galsim.Moffat(beta=beta, fwhm=3.0).withFlux(flux).drawImage(
            image=img, center=galsim.PositionD(x, y), add_to_image=True)
    return img.array + rng.normal(0.0, 1.0, img.array.shape), Table(pos, names=("x", "y"))


def test_pixel_model_size_and_degree_and_pixel_fit_arguments():
    """With pixel_model=, a size or degree other than its own was dropped silently (the
    field took the model's); it is refused.  The pixel fit's accuracy and clip, which the
    docstring said could be passed on, never reached it: pixel_accuracy= and clip= do,
    the result being the pixel fit made directly with them."""
    from astromix.psffield.model import fit_psf_field

    arr, stars = _moffat_stars(seed=2, beta=3.0, flux=2e4)
    pixel = fit_psf_field(arr, stars, degree=0, size=15, background=0.0)
    for kwargs, match in (({"size": 25}, "size=25 differs from the pixel_model's size 15"),
                          ({"degree": 1}, "degree=1 differs from the pixel_model's degree 0"),
                          ({"pixel_accuracy": 0.2}, "accuracy set the pixel fit"),
                          ({"max_remove": 0.2}, "max_remove set the pixel fit")):
        with pytest.raises(InputError, match=match):
            fit_mixture_psf_field(arr, stars, n_components=2, background=0.0,
                                  pixel_model=pixel, **kwargs)
    same = fit_mixture_psf_field(arr, stars, n_components=2, background=0.0, pixel_model=pixel,
                                 size=15, degree=0, n_iter=2)
    assert (same.size, same.degree) == (15, 0)
    direct = fit_psf_field(arr, stars, degree=0, size=15, background=0.0, accuracy=0.3,
                           clip=1.5)
    default = fit_psf_field(arr, stars, degree=0, size=15, background=0.0)
    mix = fit_mixture_psf_field(arr, stars, n_components=2, background=0.0, degree=0, size=15,
                                pixel_accuracy=0.3, clip=1.5, n_iter=2)
    info = mix.fit_info["pixel_fit_info"]
    assert info["history"] == direct.fit_info["history"]
    assert info["history"] != default.fit_info["history"]


def test_same_data_same_field():
    """The starting mixture's least-squares fit had unseeded random starts, so the same
    call gave different fields (in CFHT runs: 36 or 37 stars used, chi2 differing by
    20%); the same data now give the same field, bit for bit."""
    import numba
    from threadpoolctl import threadpool_limits

    from astromix.psffield.model import fit_psf_field

    arr, stars = _moffat_stars(seed=4, beta=2.5, flux=5e4)
    pixel = fit_psf_field(arr, stars, degree=1, size=19, background=0.0)
    # on one thread (Numba's and BLAS's): sums split over threads may be added in
    # another order, and a clipping decision at the threshold can follow such a last-bit
    # difference (one CI run under load gave fields 4% apart with the oldest deps)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            fields = [fit_mixture_psf_field(arr, stars, n_components=3, background=0.0,
                                            pixel_model=pixel, n_iter=3) for _ in range(2)]
    finally:
        numba.set_num_threads(threads)
    # bit for bit: with numpy 1.26 (no longer supported) fit_psf_mixture's L-BFGS-B iterates
    # differed between runs in one process from identical chi2 values and gradients
    # (allocator state), and a clipping decision with them: fields up to 5% apart in CI
    np.testing.assert_array_equal(fields[0].cov_coeffs, fields[1].cov_coeffs)
    np.testing.assert_array_equal(fields[0].amp_coeffs, fields[1].amp_coeffs)
