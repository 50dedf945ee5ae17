"""Tests of :mod:`astromix.io.psfex` against the DECam PSFEx models shipped with astromix."""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import to_numpy

from astromix import GaussianMixturePSF
from astromix.datasets import decam_multiexposure
from astromix.errors import InputError
from astromix.io.psfex import PSFExModel, read_psfex, write_psfex

#: 0-based pixel at the centre of the 41 x 51 cut-outs (the galaxy).
CENTRE = (20.0, 25.0)


@pytest.fixture(scope="module")
def exposures():
    return decam_multiexposure()


@pytest.fixture(scope="module")
def models(exposures):
    return [read_psfex(row["psfex"]) for row in exposures]


def gaussian_basis(sigma, n=63, samp=1.0):
    """A unit-peak circular Gaussian [image px] sampled every ``samp`` image px, centred."""
    v, u = (np.mgrid[:n, :n] - n // 2) * samp
    return np.exp(-(u ** 2 + v ** 2) / (2 * sigma ** 2))


# -- reading the DECam files -------------------------------------------------------------
def test_all_decam_models_read(exposures, models):
    assert len(models) == 8
    for row, psf in zip(exposures, models):
        assert psf.basis.shape == (6, 63, 63) and psf.basis.dtype == np.float64
        assert psf.nterms == 6 and psf.degree == 2 and psf.psf_samp == 1.0
        assert psf.shape == (63, 63) and psf.image_shape == (63, 63)
        assert psf.polzero.shape == psf.polscal.shape == (2,)
        assert psf.meta["LAYOUT"] == "merged"
        assert psf.meta["CCDNAME"] == row["ccdname"] and psf.meta["EXPNUM"] == row["expnum"]
        assert psf.meta["POLNAME1"] == "X_IMAGE" and psf.meta["POLNAME2"] == "Y_IMAGE"
        assert 0 < psf.meta["ACCEPTED"] <= psf.meta["LOADED"] and psf.meta["CHI2"] > 0
        assert 3.0 < psf.fwhm < 7.0
        assert psf.path == os.path.abspath(row["psfex"])
        assert "PSFExModel" in repr(psf)
        assert not psf.basis.flags.writeable


def test_polzero_is_in_the_cutout_frame(exposures, models):
    """legacypipe shifted POLZERO with the cut-out origin, exactly as the WCS CRPIX."""
    from astropy.table import Table as T

    from astromix import datasets

    ccds = T.read(datasets.get_path("decam_multiexposure/survey-ccds-1.fits.gz"))
    by_ccd = {}
    for row, psf in zip(exposures, models):
        # reduced coordinates at the cut-out centre stay O(1) (inside the CCD)
        xt, yt = psf.coefficients(*CENTRE)[[1, 3]]
        assert abs(xt) < 0.5 and abs(yt) < 0.5
        assert -700 < psf.polzero[0] < 50
        crpix = ccds[ccds["expnum"] == row["expnum"]][0]
        by_ccd.setdefault(row["ccdname"], []).append(
            (psf.polzero[0] - crpix["crpix1"], psf.polzero[1] - crpix["crpix2"]))
    for values in by_ccd.values():
        values = np.array(values)
        assert np.ptp(values, axis=0).max() < 1.0  # measured 0.7 px (star samples differ)


def test_polynomial_matches_hand_computation(exposures, models):
    """Coefficients and the PSF at a known position, from the raw FITS table."""
    row = Table.read(exposures["psfex"][0])[0]
    x, y = 17.0, 30.0
    xt = (x + 1 - row["polzero1"]) / row["polscal1"]
    yt = (y + 1 - row["polzero2"]) / row["polscal2"]
    expected = np.array([1.0, xt, xt * xt, yt, xt * yt, yt * yt])
    psf = models[0]
    np.testing.assert_allclose(psf.coefficients(x, y), expected, rtol=1e-14)
    mask = np.asarray(row["psf_mask"], dtype=np.float64)
    by_hand = (mask[0] + xt * mask[1] + xt ** 2 * mask[2] + yt * mask[3] + xt * yt * mask[4]
               + yt ** 2 * mask[5])
    np.testing.assert_allclose(psf.grid(x, y), by_hand, rtol=1e-12, atol=1e-15)
    # the image (psf_samp = 1, no offset) is that grid, normalised
    np.testing.assert_allclose(psf.image(x, y), by_hand / by_hand.sum(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(psf.image(x, y, normalize=False), by_hand, rtol=1e-12)


def test_coefficient_shapes(models):
    psf = models[1]
    assert psf.coefficients(1.0, 2.0).shape == (6,)
    assert psf.coefficients([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).shape == (3, 6)
    c = psf.coefficients(np.zeros((2, 3)), 5.0)
    assert c.shape == (2, 3, 6)
    np.testing.assert_allclose(c[1, 2], psf.coefficients(0.0, 5.0))
    with pytest.raises(InputError):
        psf.coefficients(np.nan, 1.0)
    with pytest.raises(InputError):
        psf.coefficients([1.0, 2.0], [1.0, 2.0, 3.0])


def test_galsim_reads_the_written_model_identically(models, tmp_path):
    """An independent implementation (GalSim's DES_PSFEx, 1-based positions)."""
    pytest.importorskip("galsim")
    import galsim
    import galsim.des

    for i in (0, 4):
        path = write_psfex(tmp_path / f"m{i}.psf", models[i])
        reader = galsim.des.DES_PSFEx(path)
        for x, y in (CENTRE, (3.0, 47.0), (-500.0, 900.0)):
            theirs = reader.getPSFArray(galsim.PositionD(x + 1, y + 1))
            ours = models[i].grid(x, y)
            assert np.abs(theirs - ours).max() < 1e-6 * ours.max()


def test_image_sum_and_fwhm(exposures, models):
    photutils = pytest.importorskip("photutils")
    from photutils.aperture import CircularAperture, aperture_photometry
    from photutils.psf import fit_fwhm

    del photutils
    for row, psf in zip(exposures, models):
        image = psf.image(*CENTRE)
        assert image.shape == (63, 63)
        assert image.sum() == pytest.approx(1.0, abs=1e-12)
        j, i = np.unravel_index(np.argmax(image), image.shape)
        assert (j, i) == (31, 31)
        # PSFEx's PSF_FWHM is twice the half-light radius of its stars (flux radius)
        yy, xx = np.mgrid[:63, :63]
        xc, yc = (image * xx).sum(), (image * yy).sum()
        radii = np.linspace(0.5, 10, 96)
        flux = [aperture_photometry(image, CircularAperture((xc, yc), r),
                                    method="exact")["aperture_sum"][0] for r in radii]
        r_half = np.interp(0.5, flux, radii)
        assert 2 * r_half == pytest.approx(psf.fwhm, rel=0.1), row["name"]  # measured 1-6 %
        # the width at half maximum agrees with the survey's seeing (CP median stellar FWHM)
        fwhm = float(np.squeeze(fit_fwhm(image, xypos=(31, 31), fit_shape=(11, 11))))
        assert fwhm == pytest.approx(row["fwhm"], rel=0.1), row["name"]  # measured < 5 %
        assert fwhm < psf.fwhm


def test_image_shape_and_centre_offset(models):
    psf = models[2]
    full = psf.image(*CENTRE)
    small = psf.image(*CENTRE, shape=(25, 21))
    np.testing.assert_allclose(small, full[31 - 12:31 + 13, 31 - 10:31 + 11]
                               / full[31 - 12:31 + 13, 31 - 10:31 + 11].sum(), rtol=1e-12)
    big = psf.image(*CENTRE, shape=(71, 70), normalize=False)
    assert big.shape == (71, 70) and big[35, 35] == pytest.approx(full.max() * psf.grid(
        *CENTRE).sum())
    assert np.all(big[:4] == 0)
    # a whole-pixel offset through the interpolating path equals a shift of the array
    shifted = psf.image(*CENTRE, center=(1.0, -2.0))
    np.testing.assert_allclose(shifted[5:-5, 5:-5], full[7:-3, 4:-6], atol=2e-5 * full.max())
    # a half-pixel offset moves the centroid by half a pixel
    half = psf.image(*CENTRE, center=(0.5, 0.0))
    yy, xx = np.mgrid[:63, :63]
    assert (half * xx).sum() - (full * xx).sum() == pytest.approx(0.5, abs=0.02)
    for bad in ((0, 5), (5,), "ab", (2.5, 3)):
        with pytest.raises(InputError, match="shape"):
            psf.image(*CENTRE, shape=bad)
    with pytest.raises(InputError, match="center"):
        psf.image(*CENTRE, center=(np.inf, 0))
    with pytest.raises(InputError):
        psf.image([1.0, 2.0], 3.0)


# -- PSF_SAMP != 1 -------------------------------------------------------------------------
@pytest.mark.parametrize("center", [None, (0.3, -0.2), (-0.45, 0.25)])
def test_half_pixel_sampling_against_analytic_gaussian(center):
    """A basis sampled at half pixels gives the Gaussian sampled at image pixels."""
    sigma = 1.6
    psf = PSFExModel(gaussian_basis(sigma, 63, 0.5)[None], (100.0, 100.0), (200.0, 200.0), 0,
                     psf_samp=0.5)
    assert psf.image_shape == (31, 31)
    image = psf.image(10.0, 10.0, center=center)
    dx, dy = center if center is not None else (0.0, 0.0)
    yy, xx = np.mgrid[:31, :31] - 15.0
    truth = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma ** 2))
    truth /= truth.sum()
    assert np.abs(image - truth).max() < 5e-4 * truth.max()
    # without normalisation: PSFEx's values are per image pixel, so the image samples
    # the unit-peak Gaussian of the basis as it is (its sum is the grid's / 4)
    raw = psf.image(10.0, 10.0, normalize=False, center=center)
    peak_truth = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma ** 2))
    assert np.abs(raw - peak_truth).max() < 5e-4
    assert raw.sum() == pytest.approx(2 * np.pi * sigma ** 2, rel=1e-3)


def test_half_pixel_sampling_mixture_is_in_image_pixels():
    """The fitted mixture is the Gaussian before the image pixel: variance sigma^2 - 1/12."""
    sigma = 1.6
    psf = PSFExModel(gaussian_basis(sigma, 63, 0.5)[None], (100.0, 100.0), (200.0, 200.0), 0,
                     psf_samp=0.5)
    mix = psf.mixture(10.0, 10.0, n_components=1)
    cov = mix.mixture.cov[0]
    assert cov[0, 0] == pytest.approx(sigma ** 2 - 1 / 12, abs=0.005)
    assert cov[1, 1] == pytest.approx(sigma ** 2 - 1 / 12, abs=0.005)
    assert abs(cov[0, 1]) < 1e-6
    np.testing.assert_allclose(mix.mixture.mean, 0.0, atol=1e-6)
    assert mix.fit_info["oversampling"] == 2.0
    # rendered (pixel-integrated) in image pixels it gives back the sampled Gaussian
    rendered = to_numpy(mix.mixture.shift(15, 15).render((31, 31)))
    truth = psf.image(10.0, 10.0)
    assert np.abs(rendered - truth).max() < 1e-3 * truth.max()
    assert mix.fit_info["image_max_residual_over_peak"] < 1e-3


#: A model written by PSFEx 3.21.1 itself, PSF_SAMP = 0.5 (see tests/data/README.rst).
REAL_PSFEX = os.path.join(os.path.dirname(__file__), "data", "psfex_3.21.1_moffat_samp0.5.psf")


def _real_psfex_truth(x, y, n):
    """The unit-flux GalSim Moffat the PSFEx file was fitted to, at 0-based (x, y), drawn on
    n x n image pixels (pixel response included), centred on the central pixel."""
    galsim = pytest.importorskip("galsim")
    X, Y = x + 1, y + 1  # the field's 1-based positions
    profile = galsim.Moffat(beta=3.0, fwhm=2.2 + 0.6 * X / 1000).shear(
        g1=0.05 * (Y / 1000 - 0.5), g2=0.02)
    return profile.drawImage(nx=n, ny=n, scale=1.0).array


@pytest.mark.parametrize("x, y", [(199.0, 299.0), (799.0, 699.0), (99.0, 899.0)])
def test_real_psfex_file_with_half_pixel_sampling(x, y):
    """PSFEx normalises PSF_MASK per image pixel (sum * PSF_SAMP^2 ~ 1), not to unit sum:
    the raw image of its own file is the stars' unit-flux PSF, here compared with the
    injected GalSim Moffat without any normalisation (before: 3.9 times too bright)."""
    psf = read_psfex(REAL_PSFEX)
    assert psf.psf_samp == 0.5 and psf.shape == (25, 25) and psf.image_shape == (13, 13)
    assert psf.meta["ACCEPTED"] == 227
    truth = _real_psfex_truth(x, y, 13)  # 0.986-0.992 of the flux on 13 x 13 px
    raw = psf.image(x, y, normalize=False)
    # measured: sums 0.981-0.988; max|raw - truth| 2.5-4.9% of the peak (PSFEx's own fit)
    assert raw.sum() == pytest.approx(truth.sum(), abs=0.02)
    assert np.abs(raw - truth).max() < 0.07 * truth.max()
    assert psf.grid(x, y).sum() * psf.psf_samp ** 2 == pytest.approx(1.0, abs=0.03)
    # the normalised paths: unit sum, the same shape
    image = psf.image(x, y)
    assert image.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(image, raw / raw.sum(), rtol=1e-12, atol=1e-15)


def test_coarse_sampling():
    """PSF_SAMP = 2 (basis coarser than the image): interpolated, footprint doubled."""
    sigma = 3.0
    psf = PSFExModel(gaussian_basis(sigma, 31, 2.0)[None], (0.0, 0.0), (1.0, 1.0), 0,
                     psf_samp=2.0)
    assert psf.image_shape == (61, 61)
    image = psf.image(0.0, 0.0)
    yy, xx = np.mgrid[:61, :61] - 30.0
    truth = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    truth /= truth.sum()
    assert np.abs(image - truth).max() < 5e-3 * truth.max()


# -- Gaussian mixtures -----------------------------------------------------------------------
def test_mixture_reproduces_decam_models(models):
    """8 components reproduce each DECam model to a few 1e-3 of the peak."""
    residuals = []
    for psf in models:
        mix = psf.mixture(*CENTRE, n_components=8)
        assert isinstance(mix, GaussianMixturePSF) and mix.n_components == 8
        assert mix.mixture.amp.sum() == pytest.approx(1.0)
        image = psf.image(*CENTRE)
        rendered = to_numpy(mix.mixture.shift(31, 31).render(image.shape))
        resid = np.abs(rendered - image).max() / image.max()
        assert resid == pytest.approx(mix.fit_info["image_max_residual_over_peak"], rel=1e-6)
        residuals.append(resid)
    residuals = np.array(residuals)
    assert residuals.max() < 1e-2 and np.median(residuals) < 5e-3  # measured 2.5e-3 - 7.5e-3


def test_mixture_defaults_and_cache(models, monkeypatch):
    psf = read_psfex(models[5].path)  # a fresh model: empty cache
    fits = []
    fit = psf._fit_mixture
    monkeypatch.setattr(psf, "_fit_mixture", lambda *a: fits.append(a[:3]) or fit(*a))
    mix = psf.mixture(*CENTRE)
    assert mix.n_components == 4
    assert mix.fit_info["objective"] == "chi2" and mix.fit_info["trim"] == 11
    assert mix.fit_info["image_max_residual_over_peak"] < 0.04  # measured 1-2.6 %
    assert len(fits) == 1
    # cached: the same position (to 0.1 px) returns an equal copy without a new fit
    again = psf.mixture(CENTRE[0] + 0.02, CENTRE[1] - 0.03)
    assert len(fits) == 1
    np.testing.assert_array_equal(again.parameters, mix.parameters)
    assert again is not mix
    again.amp_0 = 0.0
    assert psf.mixture(*CENTRE).amp_0.value == mix.amp_0.value
    # the centre convention: PSFEx's centre at 0, centroid offset recorded
    centroid = mix.mixture.moments()[1]
    np.testing.assert_allclose(centroid, mix.fit_info["centroid_offset"], atol=1e-6)
    assert 0.05 < np.hypot(*mix.fit_info["centroid_offset"]) < 0.3
    assert len(fits) == 1
    recentred = psf.mixture(*CENTRE, recenter=True)  # another option: a new fit
    assert len(fits) == 2
    np.testing.assert_allclose(recentred.mixture.moments()[1], 0.0, atol=1e-6)
    with pytest.raises(InputError, match="oversampling"):
        psf.mixture(*CENTRE, oversampling=2)


# -- writing ------------------------------------------------------------------------------
def test_round_trip(models, tmp_path):
    for psf in models[:3]:
        path = write_psfex(tmp_path / "model.psf", psf, overwrite=True)
        back = read_psfex(path)
        np.testing.assert_array_equal(back.basis, psf.basis)  # float32 data: exact
        np.testing.assert_array_equal(back.polzero, psf.polzero)
        np.testing.assert_array_equal(back.polscal, psf.polscal)
        assert (back.degree, back.psf_samp, back.fwhm) == (psf.degree, psf.psf_samp, psf.fwhm)
        assert back.meta["LAYOUT"] == "standard"
        for key in ("LOADED", "ACCEPTED", "CHI2", "EXPNUM", "CCDNAME"):
            assert back.meta[key] == psf.meta[key]
        np.testing.assert_array_equal(back.image(*CENTRE), psf.image(*CENTRE))
    # the standard layout, as PSFEx writes it
    with fits.open(path) as hdul:
        hdu = hdul[1]
        assert hdu.header["EXTNAME"] == "PSF_DATA" and len(hdu.data) == 1
        assert hdu.header["TDIM1"] == "(63, 63, 6)" and hdu.header["TFORM1"] == "23814E"
        for key in ("POLNAXIS", "POLGRP1", "POLNAME1", "POLZERO1", "POLSCAL1", "POLGRP2",
                    "POLNAME2", "POLZERO2", "POLSCAL2", "POLNGRP", "POLDEG1", "PSF_FWHM",
                    "PSF_SAMP", "PSFNAXIS", "PSFAXIS1", "PSFAXIS2", "PSFAXIS3"):
            assert key in hdu.header
    assert os.listdir(tmp_path) == ["model.psf"]  # no temporary file left


def test_write_from_arrays_gzip_and_float64(tmp_path):
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 15, 17))
    args = (basis, (10.5, 20.5), (30.0, 40.0), 1)
    path = write_psfex(tmp_path / "a.psf.gz", args, dtype=np.float64)
    with open(path, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip
    back = read_psfex(path)
    np.testing.assert_array_equal(back.basis, basis)
    assert back.shape == (15, 17) and back.degree == 1
    assert back.fwhm is not None and back.fwhm >= 0  # estimated when not given
    kwargs = {"basis": gaussian_basis(1.5, 21)[None], "polzero": (1, 1), "polscal": (1, 1),
              "degree": 0, "psf_samp": 0.5, "fwhm": 3.5, "meta": {"CHI2": 1.5, "OBJECT": "x"}}
    back = read_psfex(write_psfex(tmp_path / "b.psf", kwargs))
    assert back.psf_samp == 0.5 and back.fwhm == 3.5
    assert back.meta["CHI2"] == 1.5 and back.meta["OBJECT"] == "x"
    # the half-light diameter of a Gaussian is its FWHM (pixel values: sigma^2 + 1/12)
    back = read_psfex(write_psfex(tmp_path / "c.psf", kwargs | {"fwhm": None, "psf_samp": 1.0}))
    assert back.fwhm == pytest.approx(2.3548 * np.sqrt(1.5 ** 2 + 1 / 12), rel=0.01)


def test_write_refuses_and_is_atomic(models, tmp_path, monkeypatch):
    path = tmp_path / "m.psf"
    write_psfex(path, models[0])
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists"):
        write_psfex(path, models[1])
    with pytest.raises(InputError, match="does not exist"):
        write_psfex(tmp_path / "nope" / "m.psf", models[1])
    with pytest.raises(InputError, match="dtype"):
        write_psfex(tmp_path / "x.psf", models[1], dtype=np.int16)
    for bad in ("foo", object(), [1, 2]):  # not a dtype at all: numpy's TypeError
        with pytest.raises(InputError, match="dtype must be float32 or float64"):
            write_psfex(tmp_path / "x.psf", models[1], dtype=bad)
    with pytest.raises(InputError):
        write_psfex(tmp_path / "x.psf", "not a model")
    with pytest.raises(InputError):
        write_psfex(tmp_path / "x.psf", (np.ones((2, 5, 5)), (0, 0), (1, 1), 1))

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="disk full"):
        write_psfex(path, models[1], overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.psf"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX symbolic links")
def test_write_through_symlink(models, tmp_path):
    """A symbolic link is followed and its target rewritten (as write_psf_mixture does),
    not replaced by a regular file."""
    target = tmp_path / "real.psf"
    write_psfex(target, models[0])
    link = tmp_path / "link.psf"
    link.symlink_to(target)
    out = write_psfex(link, models[1], overwrite=True)
    assert out == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(read_psfex(target).basis,
                                  models[1].basis.astype(np.float32))
    assert sorted(os.listdir(tmp_path)) == ["link.psf", "real.psf"]


# -- a constant PSF (no polynomial) ---------------------------------------------------------
def _constant_file(path, image, psfnaxis=3, **extra):
    """A standard PSFEx file of a constant PSF, as PSFEx writes it without context
    keys (POLNAXIS = 0, POLNGRP = 0, no POLGRP/POLNAME/POLZERO/POLSCAL/POLDEG)."""
    ny, nx = image.shape
    mask = image[None] if psfnaxis == 3 else image
    col = fits.Column(name="PSF_MASK", format=f"{mask.size}E", dim=str(mask.shape[::-1]),
                      array=mask[None].astype(np.float32))
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    cards = [("LOADED", 120), ("ACCEPTED", 111), ("CHI2", 1.07), ("POLNAXIS", 0),
             ("POLNGRP", 0), ("PSF_FWHM", 4.1), ("PSF_SAMP", 1.0), ("PSFNAXIS", psfnaxis),
             ("PSFAXIS1", nx), ("PSFAXIS2", ny)]
    if psfnaxis == 3:
        cards.append(("PSFAXIS3", 1))
    for key, value in cards + list(extra.items()):
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


@pytest.mark.parametrize("psfnaxis", [3, 2])
def test_constant_psf_file(models, tmp_path, psfnaxis):
    # the real N12 model at the cut-out centre, stored as a constant PSF
    truth = models[0].grid(*CENTRE)
    path = _constant_file(tmp_path / "const.psf", truth, psfnaxis)
    psf = read_psfex(path)
    assert psf.degree == 0 and psf.nterms == 1 and psf.basis.shape == (1,) + truth.shape
    np.testing.assert_allclose(psf.basis[0], truth, rtol=1e-6, atol=1e-7 * truth.max())
    assert psf.meta["LAYOUT"] == "standard" and psf.meta["ACCEPTED"] == 111
    assert "POLNAME1" not in psf.meta and psf.fwhm == pytest.approx(4.1)
    # the same PSF everywhere, and the same as the varying model at that position
    np.testing.assert_array_equal(psf.grid(0.0, 0.0), psf.grid(1500.0, -300.0))
    np.testing.assert_allclose(psf.image(5.0, 5.0), models[0].image(*CENTRE), rtol=1e-5,
                               atol=1e-6)
    # written back (as POLNAXIS = 2, POLDEG1 = 0, which PSFEx also reads) and read again
    again = read_psfex(write_psfex(tmp_path / "again.psf", psf))
    np.testing.assert_array_equal(again.basis, psf.basis)
    assert again.degree == 0


@pytest.mark.parametrize("psfnaxis, extra, match", [
    (3, {"PSFAXIS3": 6}, "PSFAXIS3 = 6 but a degree-0 polynomial has 1 terms"),
    (3, {"POLNAXIS": 1}, "POLNAXIS = 1"),
    (3, {"PSFNAXIS": 4}, "PSFNAXIS = 4"),
    (2, {"PSFAXIS1": 40}, "PSF_MASK has shape"),
])
def test_bad_constant_psf_files(models, tmp_path, psfnaxis, extra, match):
    path = _constant_file(tmp_path / "bad.psf", models[0].grid(*CENTRE), psfnaxis, **extra)
    with pytest.raises(InputError, match=match) as info:
        read_psfex(path)
    assert "bad.psf" in str(info.value)


# -- bad input ------------------------------------------------------------------------------
def test_tdim_disagreeing_with_psfaxis_is_refused(tmp_path):
    """PSFAXIS1/2 swapped against the column's TDIM: the layout is unknown, so the file is
    refused, as GalSim's DES_PSFEx refuses it (before: silently reshaped, the basis
    scrambled: 76% of the peak off a centred Gaussian); a flat column without TDIM is laid
    out by PSFAXIS1/2/3."""
    ny, nx = 21, 25  # not square
    gauss = np.exp(-((np.arange(nx) - nx // 2) ** 2 + (np.arange(ny)[:, None] - ny // 2) ** 2)
                   / (2 * 2.0 ** 2))
    good = write_psfex(tmp_path / "good.psf", PSFExModel(gauss[None], (50, 50), (100, 100), 0))
    with fits.open(good) as hdul:
        assert hdul[1].header["TDIM1"] == "(25, 21, 1)"
        hdul[1].header["PSFAXIS1"], hdul[1].header["PSFAXIS2"] = ny, nx
        hdul.writeto(tmp_path / "bad_axes.psf")
    with pytest.raises(InputError, match=r"TDIM = \(25, 21, 1\).*PSFAXIS1/2/3 = 21, 25, 1") \
            as info:
        read_psfex(tmp_path / "bad_axes.psf")
    assert "bad_axes.psf" in str(info.value)
    # the same data in a flat column (no TDIM): PSFAXIS1/2/3 = (nx, ny, nterms) lay it out
    with fits.open(good) as hdul:
        header = hdul[1].header.copy()
        col = fits.Column(name="PSF_MASK", format=f"{nx * ny}E",
                          array=gauss.astype(np.float32).reshape(1, -1))
        flat = fits.BinTableHDU.from_columns([col], header=header, name="PSF_DATA")
        assert "TDIM1" not in flat.header and flat.header["PSFAXIS1"] == nx
        fits.HDUList([fits.PrimaryHDU(), flat]).writeto(tmp_path / "flat.psf")
    back = read_psfex(tmp_path / "flat.psf")
    assert back.shape == (ny, nx)
    np.testing.assert_allclose(back.basis[0], gauss, rtol=1e-6)


def _standard_file(tmp_path, models, name="std.psf", **changes):
    path = write_psfex(tmp_path / name, models[0])
    with fits.open(path) as hdul:
        header = hdul[1].header
        for key, value in changes.items():
            if value is None:
                del header[key]
            else:
                header[key] = value
        hdul.writeto(path, overwrite=True)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"POLDEG1": None}, "POLDEG1"),
    ({"POLZERO2": None}, "POLZERO2"),
    ({"POLNAXIS": 3}, "POLNAXIS"),
    ({"POLNGRP": 2}, "POLNGRP"),
    ({"POLGRP2": 2}, "POLGRP"),
    ({"POLNAME1": "MAG_AUTO"}, "POLNAME"),
    ({"POLDEG1": 3}, "PSFAXIS3"),
    ({"PSFAXIS1": 61}, "PSF_MASK has shape"),
    ({"PSFNAXIS": 2}, "PSFNAXIS"),
    ({"POLSCAL1": 0.0}, "POLSCAL"),
    ({"PSF_SAMP": -1.0}, "PSF_SAMP"),
    ({"POLZERO1": "abc"}, "POLZERO1"),
])
def test_bad_standard_files(models, tmp_path, changes, match):
    path = _standard_file(tmp_path, models, **changes)
    with pytest.raises(InputError, match=match) as info:
        read_psfex(path)
    assert "std.psf" in str(info.value)


def test_bad_merged_files(exposures, tmp_path):
    table = Table.read(exposures["psfex"][0])
    broken = table.copy()
    broken.remove_column("polzero1")
    path = tmp_path / "nopolzero.fits"
    broken.write(path)
    with pytest.raises(InputError, match="nopolzero.fits.*polzero1"):
        read_psfex(path)
    # several CCDs in one table: ambiguous without ccdname= / row=
    other = table.copy()
    other["ccdname"] = ["S5"]
    other["polzero1"] = [123.0]
    from astropy.table import vstack

    merged = vstack([table, other])
    path = tmp_path / "two.fits"
    merged.write(path)
    with pytest.raises(InputError, match="N12, S5"):
        read_psfex(path)
    assert read_psfex(path, ccdname="S5").polzero[0] == 123.0
    assert read_psfex(path, row=0).meta["CCDNAME"] == "N12"
    with pytest.raises(InputError, match="available: N12, S5"):
        read_psfex(path, ccdname="N4")
    with pytest.raises(InputError, match="row"):
        read_psfex(path, row=2)
    with pytest.raises(InputError, match="not both"):
        read_psfex(path, row=0, ccdname="S5")
    # wrong shape of the basis
    bad = table.copy()
    bad["psfaxis3"] = [10]
    bad.write(tmp_path / "axis.fits")
    with pytest.raises(InputError, match="axis.fits.*PSFAXIS3"):
        read_psfex(tmp_path / "axis.fits")


def test_not_psfex_files(tmp_path):
    with pytest.raises(InputError, match="missing.psf.*no such file"):
        read_psfex(tmp_path / "missing.psf")
    text = tmp_path / "notes.psf"
    text.write_text("not a FITS file\n")
    with pytest.raises(InputError, match="notes.psf"):
        read_psfex(text)
    image = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((5, 5)))]).writeto(image)
    with pytest.raises(InputError, match="image.fits.*PSF_MASK"):
        read_psfex(image)
    with pytest.raises(InputError, match="path"):
        read_psfex(None)


@pytest.mark.parametrize("args, match", [
    ((np.ones((5, 5)), (0, 0), (1, 1), 0), "basis"),
    ((np.ones((3, 5, 5)), (0, 0), (1, 1), 2), "basis"),
    ((np.ones((1, 5, 5)), (0, 0), (0, 1), 0), "polscal"),
    ((np.ones((1, 5, 5)), (0, np.nan), (1, 1), 0), "polzero"),
    ((np.ones((1, 5, 5)), (0, 0, 0), (1, 1), 0), "polzero"),
    ((np.ones((1, 5, 5)), (0, 0), (1, 1), -1), "degree"),
    ((np.ones((1, 5, 5)), (0, 0), (1, 1), 0.5), "degree"),
    ((np.full((1, 5, 5), np.inf), (0, 0), (1, 1), 0), "non-finite"),
    ((np.ones((1, 5, 5)), (0, 0), (1, 1), 0, 0.0), "psf_samp"),
])
def test_constructor_refuses_bad_arrays(args, match):
    with pytest.raises(InputError, match=match):
        PSFExModel(*args)


def test_multi_extension_file_needs_hdu(tmp_path):
    """PSFEx run on a multi-extension catalog writes one PSF_DATA extension per CCD: without
    hdu= the file is ambiguous and refused (it had silently given the first CCD's model);
    with hdu= each extension's own model is read (Gaussians of sigma 1.5 and 3 px)."""
    yy, xx = np.mgrid[:25, :25] - 12.0
    hdus = [fits.PrimaryHDU()]
    for k, sigma in enumerate((1.5, 3.0)):
        single = write_psfex(tmp_path / f"ccd{k}.psf", PSFExModel(
            np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))[None], (1024.5, 2048.5),
            (2048, 4096), 0))
        with fits.open(single) as hdul:
            hdus.append(hdul[1].copy())
    path = tmp_path / "mosaic.psf"
    fits.HDUList(hdus).writeto(path)
    for kwargs in ({}, {"ccdname": "N2"}):
        with pytest.raises(InputError, match=r"mosaic\.psf: 2 extensions .*HDU 1 \(PSF_DATA\), "
                                             r"2 \(PSF_DATA\); choose one with hdu="):
            read_psfex(path, **kwargs)
    for index, sigma in ((1, 1.5), (2, 3.0)):
        img = read_psfex(path, hdu=index).image(100.0, 100.0)
        # second moment of the pixel-sampled Gaussian (sampled finely: sigma^2 to 1e-6)
        assert np.sqrt((img * xx ** 2).sum()) == pytest.approx(sigma, rel=1e-3)
