"""Tests of :func:`astromix.psffield.spread_model` (SExtractor's SPREAD_MODEL).

Truths are independent of the code under test: GalSim draws the PSF, the stars
and the PSF-convolved exponential galaxies; the exponential convolution is
checked against GalSim's; the error against the scatter over noise
realisations; and, where ``source-extractor`` and ``psfex`` are installed,
the values against SExtractor's own ``SPREAD_MODEL`` on a GalSim field.
"""

import importlib.util
import os
import shutil

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astromix.errors import InputError
from astromix.io.psfex import PSFExModel, read_psfex
from astromix.psffield import (
    FLAG_SM_EDGE,
    FLAG_SM_FAILED,
    FLAG_SM_MASKED,
    PSFFieldModel,
    spread_model,
)
from astromix.psffield.spread_model import _convolve_exponential, _fwhm

FWHM = 3.5          # PSF FWHM [px]
PSF = galsim.Moffat(beta=3.0, fwhm=FWHM)
STAMP = 41


def psf_model(n=31):
    """A PSFEx-like model whose only basis image is GalSim's pixelated Moffat."""
    basis = PSF.drawImage(nx=n, ny=n, scale=1.0).array
    return PSFExModel(basis[None], polzero=(0, 0), polscal=(1, 1), degree=0, psf_samp=1.0)


def add_object(image, obj, x, y):
    """Draw ``obj`` (pixel-convolved by GalSim) centred at 0-based ``(x, y)``."""
    ix, iy = int(np.rint(x)), int(np.rint(y))
    stamp = obj.drawImage(nx=STAMP, ny=STAMP, scale=1.0, offset=(x - ix, y - iy)).array
    h = STAMP // 2
    image[iy - h:iy + h + 1, ix - h:ix + h + 1] += stamp


def make_field(r_halfs, flux, *, nper=6, sigma=1.0, seed=1, spacing=50):
    """Rows of stars (r_half = 0) and exponential galaxies; returns image, catalog."""
    rng = np.random.default_rng(seed)
    kinds = [0.0] + list(r_halfs)
    ny, nx = spacing * (len(kinds) + 1), spacing * (nper + 1)
    image = np.zeros((ny, nx))
    rows = []
    for k, r in enumerate(kinds):
        for j in range(nper):
            x = spacing * (j + 1) + rng.uniform(-0.5, 0.5)
            y = spacing * (k + 1) + rng.uniform(-0.5, 0.5)
            obj = PSF if r == 0 else galsim.Convolve(
                PSF, galsim.Exponential(half_light_radius=r * FWHM))
            add_object(image, obj.withFlux(flux), x, y)
            rows.append((x, y, r))
    noisy = image + rng.normal(0.0, sigma, image.shape)
    cat = Table(rows=rows, names=("x", "y", "r_half_over_fwhm"))
    return noisy, image, cat


@pytest.fixture(scope="module")
def field():
    noisy, clean, cat = make_field([0.25, 0.5, 1.0, 1.5], flux=3e3)
    out = spread_model(noisy, psf_model(), cat, weight=np.ones_like(noisy), size=25)
    return noisy, clean, out


# -- the ingredients against GalSim ------------------------------------------------------
@pytest.mark.parametrize("h", [0.2, 0.5, 1.0])
def test_exponential_convolution_matches_galsim(h):
    n = 41
    p = PSF.drawImage(nx=n, ny=n, scale=1.0).array
    truth = galsim.Convolve(PSF, galsim.Exponential(scale_radius=h)).drawImage(
        nx=n, ny=n, scale=1.0).array
    t = _convolve_exponential(p, h)
    assert np.max(np.abs(t - truth)) < 2e-3 * truth.max()
    assert abs(t.sum() - p.sum()) < 1e-3


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.5])
def test_fwhm_of_a_gaussian(sigma):
    """1% at any sub-pixel centring (half-pixel offsets included), sampled with and
    without the pixel response; the truths: 2 sqrt(2 ln 2) sigma, and GalSim's FWHM of
    the Gaussian convolved with the pixel."""
    gauss = galsim.Gaussian(sigma=sigma)
    truths = {"no_pixel": 2.0 * np.sqrt(2.0 * np.log(2.0)) * sigma,
              "auto": galsim.Convolve(gauss, galsim.Pixel(1.0)).calculateFWHM()}
    offsets = np.linspace(-0.5, 0.5, 5)
    for method, truth in truths.items():
        for dx in offsets:
            for dy in offsets:
                img = gauss.drawImage(nx=25, ny=25, scale=1.0, method=method,
                                      offset=(dx, dy)).array
                assert _fwhm(img) == pytest.approx(truth, rel=0.01), (method, dx, dy)


# -- stars and galaxies --------------------------------------------------------------------
def test_stars_are_zero_within_errors(field):
    _, _, out = field
    stars = out[out["r_half_over_fwhm"] == 0]
    pull = stars["spread_model"] / stars["spread_model_err"]
    assert np.all(stars["spread_model_flags"] == 0)
    assert np.all(np.abs(pull) < 3.0), pull
    assert abs(np.mean(pull)) < 1.5


def test_galaxies_grow_with_size_and_are_significant(field):
    _, _, out = field
    sizes = sorted(set(out["r_half_over_fwhm"]))
    medians = [np.median(out["spread_model"][out["r_half_over_fwhm"] == r]) for r in sizes]
    assert np.all(np.diff(medians) > 0), medians
    for r in sizes:
        sel = out[out["r_half_over_fwhm"] == r]
        if r >= 0.5:
            assert np.all(sel["spread_model"] > 5 * sel["spread_model_err"])
            assert np.all(sel["spread_model"] > 0.003)   # DES-like cut
    assert medians[1] > 0.0


def test_error_scales_as_one_over_flux():
    _, clean, cat = make_field([1.0], flux=1e3, nper=2)
    psf = psf_model()
    w = np.full(clean.shape, 0.25)
    a = spread_model(clean, psf, cat, weight=w)
    b = spread_model(4 * clean, psf, cat, weight=w)
    np.testing.assert_allclose(b["spread_model"], a["spread_model"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(b["spread_model_err"], a["spread_model_err"] / 4, rtol=1e-10)


def test_error_matches_scatter_over_noise_realisations():
    _, clean, cat = make_field([0.5], flux=2e3, nper=1)
    cat = cat[cat["r_half_over_fwhm"] > 0]
    psf = psf_model()
    rng = np.random.default_rng(7)
    sigma = 2.0
    w = np.full(clean.shape, 1 / sigma ** 2)
    values, errors = [], []
    for _ in range(200):
        out = spread_model(clean + rng.normal(0, sigma, clean.shape), psf, cat, weight=w,
                           size=25)
        values.append(out["spread_model"][0])
        errors.append(out["spread_model_err"][0])
    assert np.std(values) == pytest.approx(np.median(errors), rel=0.15)
    # and the noise-free value is the mean
    truth = spread_model(clean, psf, cat, weight=w, size=25)["spread_model"][0]
    assert abs(np.mean(values) - truth) < 4 * np.std(values) / np.sqrt(len(values))


def test_weightings_agree_for_constant_noise(field):
    noisy, _, out = field
    cat = out["x", "y"]
    iv = spread_model(noisy, psf_model(), cat, weight=np.full(noisy.shape, 4.0), size=25,
                      weighting="inverse-variance")
    np.testing.assert_allclose(iv["spread_model"], out["spread_model"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(iv["spread_model_err"], out["spread_model_err"] / 2, rtol=1e-9)


def test_psffieldmodel_and_default_noise(field):
    noisy, _, out = field
    psf = psf_model()
    pfm = PSFFieldModel(psf.basis, psf.polzero, psf.polscal, psf.degree)
    cat = out["x", "y"]
    via_field = spread_model(noisy, pfm, cat, weight=np.ones_like(noisy), size=25)
    np.testing.assert_allclose(via_field["spread_model"], out["spread_model"], rtol=1e-12)
    # the default noise (MAD of the image) is close to the true 1
    auto = spread_model(noisy, psf, cat, size=25)
    np.testing.assert_allclose(auto["spread_model"], out["spread_model"], rtol=1e-12)
    np.testing.assert_allclose(auto["spread_model_err"], out["spread_model_err"], rtol=0.1)


def test_background_and_fwhm_options(field):
    noisy, _, out = field
    cat = out["x", "y"]
    psf = psf_model()
    w = np.ones_like(noisy)
    shifted = spread_model(noisy + 100.0, psf, cat, weight=w, size=25, background=100.0)
    np.testing.assert_allclose(shifted["spread_model"], out["spread_model"], rtol=1e-8,
                               atol=1e-12)
    psf_fwhm = PSFExModel(psf.basis, (0, 0), (1, 1), 0, fwhm=FWHM)
    by_model = spread_model(noisy, psf_fwhm, cat, weight=w, size=25, fwhm="model")
    by_value = spread_model(noisy, psf, cat, weight=w, size=25, fwhm=FWHM)
    np.testing.assert_array_equal(by_model["spread_model"], by_value["spread_model"])
    # the local FWHM measured on the Moffat is close to its true FWHM
    np.testing.assert_allclose(by_value["spread_model"], out["spread_model"], rtol=0.1,
                               atol=2 * np.median(out["spread_model_err"]))
    larger = spread_model(noisy, psf, cat, weight=w, size=25, fwhm=2 * FWHM)
    gal = out["r_half_over_fwhm"] >= 0.5
    assert np.all(larger["spread_model"][gal] > out["spread_model"][gal])


# -- edges and masks ---------------------------------------------------------------------
def test_edges_and_masked_pixels(field):
    noisy, _, out = field
    psf = psf_model()
    star = out[out["r_half_over_fwhm"] == 0][0]
    x, y = float(star["x"]), float(star["y"])
    image = noisy.copy()
    image[int(y) + 3, int(x) - 2:int(x) + 3] = np.nan
    # a star 4.3 px from the left border (GalSim's 1-based centre)
    edge = galsim.ImageD(np.zeros_like(image), scale=1.0)
    PSF.withFlux(3e3).drawImage(image=edge, center=galsim.PositionD(5.3, y + 1))
    image += edge.array
    cat = Table({"x": [x, 4.3, -5.0, x], "y": [y, y, y, 1e4]})
    res = spread_model(image, psf, cat, weight=np.ones_like(image), size=25)
    flags = res["spread_model_flags"]
    assert flags[0] == FLAG_SM_MASKED
    assert abs(res["spread_model"][0]) < 3 * res["spread_model_err"][0]
    assert abs(res["spread_model"][0] - star["spread_model"]) < 2 * star["spread_model_err"]
    assert flags[1] == FLAG_SM_EDGE
    assert abs(res["spread_model"][1]) < 3 * res["spread_model_err"][1]
    for i in (2, 3):
        assert flags[i] & FLAG_SM_FAILED and flags[i] & FLAG_SM_EDGE
        assert np.isnan(res["spread_model"][i]) and np.isnan(res["spread_model_err"][i])
    # zero weight acts as a mask
    w = np.ones_like(noisy)
    w[int(y), int(x) + 6] = 0.0
    res = spread_model(noisy, psf, Table({"x": [x], "y": [y]}), weight=w, size=25)
    assert res["spread_model_flags"][0] == FLAG_SM_MASKED


def test_model_refusing_a_position_fails_that_source():
    class Refusing:
        image_shape = (25, 25)

        def image(self, x, y, *, shape=None, center=None):
            if x > 50:
                raise InputError("no PSF there")
            return psf_model().image(x, y, shape=shape, center=center)

    rng = np.random.default_rng(2)
    image = rng.normal(size=(100, 100))
    image[30, 30] += 100.0
    res = spread_model(image, Refusing(), Table({"x": [30.0, 70.0], "y": [30.0, 30.0]}),
                       weight=np.ones_like(image))
    assert res["spread_model_flags"].tolist() == [0, FLAG_SM_FAILED]
    assert np.isfinite(res["spread_model"][0]) and np.isnan(res["spread_model"][1])


def test_empty_data_fails_not_raises():
    psf = psf_model()
    image = np.zeros((60, 60))
    res = spread_model(image, psf, Table({"x": [30.0], "y": [30.0]}),
                       weight=np.ones_like(image))
    assert res["spread_model_flags"][0] == FLAG_SM_FAILED
    assert np.isnan(res["spread_model"][0])


# photutils' PSF photometry (x_fit), photutils' model parameters (x_0), DAOStarFinder
# before photutils 3 (xcentroid) and after
@pytest.mark.parametrize("cx, cy", [("x_fit", "y_fit"), ("x_0", "y_0"), ("xcentroid", "ycentroid"),
                                    ("x_centroid", "y_centroid")])
def test_catalog_columns_and_per_source_size(field, cx, cy):
    noisy, _, out = field
    psf = psf_model()
    cat = Table({cx: out["x"], cy: out["y"], "id": np.arange(len(out))})
    res = spread_model(noisy, psf, cat, weight=np.ones_like(noisy),
                       size=np.full(len(cat), 25))
    assert res.colnames == [cx, cy, "id", "spread_model", "spread_model_err",
                            "spread_model_flags"]
    np.testing.assert_allclose(res["spread_model"], out["spread_model"], rtol=1e-12)
    assert "spread_model" not in cat.colnames    # the input is not modified


def test_positions_from_photutils_psf_photometry(field):
    """The output of photutils' PSFPhotometry (>= 1.9): the fitted positions are in
    x_fit/y_fit (x_init/y_init: the guesses); SM is measured there, as with x/y columns
    holding the injected positions the fit recovers."""
    from photutils.psf import CircularGaussianPRF, PSFPhotometry

    noisy, _, out = field
    stars = out[out["r_half_over_fwhm"] == 0]
    # start 0.4 px off, on the rounded injected positions
    init = Table({"x": np.round(stars["x"]) + 0.4, "y": np.round(stars["y"]) - 0.4})
    phot = PSFPhotometry(CircularGaussianPRF(fwhm=FWHM), (11, 11), aperture_radius=5)
    res = phot(noisy, error=np.ones_like(noisy), init_params=init)
    assert {"x_fit", "y_fit", "x_init", "y_init"} <= set(res.colnames)
    assert "x" not in res.colnames and "x_0" not in res.colnames
    np.testing.assert_allclose(res["x_fit"], stars["x"], atol=0.05)   # the fit's truth
    np.testing.assert_allclose(res["y_fit"], stars["y"], atol=0.05)
    psf = psf_model()
    got = spread_model(noisy, psf, res, weight=np.ones_like(noisy), size=25)
    same = spread_model(noisy, psf, Table({"x": np.asarray(res["x_fit"]),
                                           "y": np.asarray(res["y_fit"])}),
                        weight=np.ones_like(noisy), size=25)
    np.testing.assert_array_equal(got["spread_model"], same["spread_model"])
    np.testing.assert_array_equal(got["spread_model_err"], same["spread_model_err"])
    # stars: SM ~ 0 within errors at the fitted positions
    assert np.all(np.abs(got["spread_model"]) < 4 * got["spread_model_err"])


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    (dict(image=np.zeros((2, 3, 4))), "2-d"),
    (dict(weight=np.ones((10, 10))), "weight shape"),
    (dict(weight=-np.ones((100, 100))), "finite and >= 0"),
    (dict(background=np.zeros((3, 3))), "background shape"),
    (dict(catalog=Table({"x": [50.0]})), "position columns"),
    (dict(catalog=Table({"x": [np.nan], "y": [50.0]})), "finite"),
    (dict(catalog=Table({"x": np.zeros(0), "y": np.zeros(0)})), "empty"),
    (dict(size=24), "odd"),
    (dict(size=1), "odd"),
    (dict(size=[25, 25]), "one per source"),
    (dict(fwhm=-1.0), "fwhm"),
    (dict(fwhm="model"), "no fwhm"),
    (dict(fwhm="psf"), "fwhm"),
    (dict(weighting="chi2"), "weighting"),
    (dict(model=object()), "image"),
    (dict(model=type("NoCenter", (), {"image": lambda self, x, y, shape=None: 0})()),
     "pass size="),
    (dict(model=type("NoCenter", (), {"image": lambda self, x, y, shape=None: 0})(),
          size=25), "center"),
    (dict(image=np.zeros((100, 100)), weight=None), "noise"),
])
def test_bad_input_raises(change, match):
    rng = np.random.default_rng(0)
    args = dict(image=rng.normal(size=(100, 100)), model=psf_model(),
                catalog=Table({"x": [50.0], "y": [50.0]}), weight=np.ones((100, 100)))
    args.update(change)
    image, model, catalog = args.pop("image"), args.pop("model"), args.pop("catalog")
    with pytest.raises(InputError, match=match):
        spread_model(image, model, catalog, **args)


# -- SExtractor's own SPREAD_MODEL ---------------------------------------------------------
def _benchmark_module():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "spread_model.py")
    spec = importlib.util.spec_from_file_location("_spread_model_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAVE_SEXTRACTOR = (shutil.which("source-extractor") or shutil.which("sex")) and \
    shutil.which("psfex")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SEXTRACTOR, reason="source-extractor and psfex not on PATH")
def test_against_sextractor_on_a_galsim_field(tmp_path):
    bench = _benchmark_module()
    rng = np.random.default_rng(3)
    n = 700
    image = np.zeros((n, n))
    truth = []
    xy = rng.uniform(30, n - 30, size=(400, 2))
    kept = []
    for p in xy:             # no close pairs
        if all(np.hypot(*(p - q)) > 30 for q in kept):
            kept.append(p)
    for k, (x, y) in enumerate(kept[:150]):
        flux = 10 ** rng.uniform(3.3, 4.5)
        r = 0.0 if k % 2 == 0 else rng.uniform(0.2, 1.2)
        obj = PSF if r == 0 else galsim.Convolve(
            PSF, galsim.Exponential(half_light_radius=r * FWHM))
        add_object(image, obj.withFlux(flux), x, y)
        truth.append((x, y, r))
    image += 200.0 + rng.normal(0, 3.0, image.shape)
    path = str(tmp_path / "field.fits")
    fits.writeto(path, image.astype(np.float32))
    res, joined = bench.compare(path, str(tmp_path), snr_min=30.0, degree=1, satur=1e9,
                                verbose=False)
    ok = joined[joined["compared"]]
    assert res["n_compared"] >= 40
    sig = np.hypot(ok["err_sex"], ok["err_astromix"])
    z = (ok["sm_astromix"] - ok["sm_sex"]) / sig
    assert np.median(np.abs(z)) < 2.0, res
    assert res["pearson_r"] > 0.95, res
    # SExtractor's values are 10-15% larger (see the module's Notes)
    assert 0.8 < res["slope_astromix_vs_sex"] < 1.05, res
    assert res["class_agreement"] >= 0.9, res
    # both separate the simulated stars from the galaxies of r_half >= 0.5 FWHM
    tx, ty, tr = (np.array(c) for c in zip(*truth))
    d = np.hypot(ok["x"][:, None] - tx[None], ok["y"][:, None] - ty[None])
    match = np.argmin(d, axis=1)
    close = d[np.arange(len(ok)), match] < 2
    r_true = tr[match][close]
    for name in ("sm_sex", "sm_astromix"):
        v = np.asarray(ok[name])[close]
        assert np.all(np.abs(v[r_true == 0]) < 0.004)
        assert np.all(v[r_true >= 0.5] > 0.005)
    psf = read_psfex(str(tmp_path / "pass1.psf"))
    assert psf.nterms == 3
