"""Regression tests of a second review of the photometry helpers and commands.

Each test fails on the code before the fix (see the docstrings): the mask of a NumPy masked
array given as ``(data, wcs)`` or ``(data, header)`` and that of a masked cube were dropped, a
filter curve with a vertical edge (two samples at one wavelength) lost half the weight of
the plane on its red edge, ``fit-photometry`` labelled bg and rms with the unit the
reference was converted to instead of the target's, and its error for a reference without
PHOTFLAM named neither the file nor an option of the command.
"""

import functools
import json

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.masked import Masked
from conftest import centred_tan_wcs

from astromix.cli import main
from astromix.datasets import muse_hst_hdfs
from astromix.photometry import (
    filter_weights,
    fit_image_photometry,
    make_broadband_image,
    moffat_transform,
    regrid,
    rescale_to_flux_units,
)

_wcs = functools.partial(centred_tan_wcs, crval=(53.0, -27.8))
FLAM = u.erg / (u.s * u.cm ** 2 * u.AA)


# -- 1. masked arrays given as (data, wcs) and (data, header) --------------------------------------

def test_regrid_keeps_the_mask_of_a_masked_array():
    """A fine image of 1 per pixel with one masked 1e6 pixel, regridded 4 x 4 -> 1: every
    unmasked coarse pixel holds 16 (the masked value had survived, unmasked, before)."""
    data = np.ones((40, 40))
    data[20, 20] = 1e6
    masked = np.ma.masked_array(data, mask=data > 100)
    target = (np.zeros((10, 10)), _wcs(0.2, 10))
    out = regrid((masked, _wcs(0.05, 40)), target)
    # the fine pixel (20, 20) lies in the coarse pixel (5, 5), on the edges of (4, 4)
    assert out.mask[5, 5]
    np.testing.assert_allclose(out.data[~out.mask], 16.0, rtol=1e-7)
    # the same pixel marked bad as a NaN (the path that worked) masks the same pixels
    nan = data.copy()
    nan[20, 20] = np.nan
    np.testing.assert_array_equal(out.mask, regrid((nan, _wcs(0.05, 40)), target).mask)


def test_regrid_keeps_the_mask_of_an_astropy_masked_array():
    data = np.ones((40, 40))
    data[8, 30] = -1e6
    out = regrid((Masked(data, mask=data < 0), _wcs(0.05, 40)),
                 (np.zeros((10, 10)), _wcs(0.2, 10)))
    assert out.mask.any()
    np.testing.assert_allclose(out.data[~out.mask], 16.0, rtol=1e-7)


def test_rescale_to_flux_units_keeps_the_mask_of_a_masked_array():
    """(masked data, header): the masked pixel stays masked, the others are value x PHOTFLAM."""
    data = np.full((3, 4), 0.5)
    data[1, 2] = 1e6
    masked = np.ma.masked_array(data, mask=data > 100)
    out = rescale_to_flux_units((masked, fits.Header({"PHOTFLAM": 2e-19})), unit=1e-20)
    np.testing.assert_array_equal(out.mask, masked.mask)
    np.testing.assert_allclose(out.data[~out.mask], 0.5 * 2e-19 / 1e-20, rtol=1e-12)


def _blurred_pair(n=64, scale=1.5, bg=0.2, fwhm=0.8, beta=3.0):
    """A reference of point sources and a target = scale x (reference blurred by a Moffat
    kernel) + bg on one 0.2" grid, with a little noise."""
    rng = np.random.default_rng(7)
    ref = np.zeros((n, n))
    ref[rng.integers(10, n - 10, 30), rng.integers(10, n - 10, 30)] = rng.uniform(1, 5, 30)
    f = np.fft.fftfreq(n, 0.2)
    q = np.hypot(f[None, :], f[:, None])
    tgt = scale * np.fft.ifft2(np.fft.fft2(ref) * moffat_transform(q, fwhm, beta)).real + bg
    tgt += rng.normal(0, 0.005, tgt.shape)
    return tgt, ref


def test_fit_image_photometry_keeps_the_mask_of_a_masked_target():
    """A masked 1e5 pixel in the target: the fit gives the injected scale 1.5 and bg 0.2 (the
    pixel had entered the fit before, and pulled the scale far off)."""
    tgt, ref = _blurred_pair()
    tgt[20, 40] = 1e5
    masked = np.ma.masked_array(tgt, mask=tgt > 1e4)
    res = fit_image_photometry((masked, _wcs(0.2, 64)), (ref, _wcs(0.2, 64)),
                               reference_psf=None, fix_beta=3.0)
    assert res.scale.value == pytest.approx(1.5, abs=max(4 * res.scale.error, 0.01))
    assert res.bg.value == pytest.approx(0.2, abs=max(4 * res.bg.error, 0.005))
    assert res.fwhm.value == pytest.approx(0.8, abs=max(4 * res.fwhm.error, 0.01))


# -- 2. masked cubes -------------------------------------------------------------------------------

def test_make_broadband_image_leaves_out_masked_values():
    """A cube of 1 with one masked 1e6 value (e.g. MPDAF's Cube.data): the image is 1 there
    (333334 = (1e6 + 3) / 4 before)."""
    wave = 5000.0 + np.arange(4.0)
    data = np.ones((4, 2, 2))
    data[1, 0, 0] = 1e6
    variance = np.ones_like(data)
    cube = np.ma.masked_array(data, mask=data > 100)
    img = make_broadband_image(cube, (wave, np.ones(4)), wave=wave, variance=variance)
    np.testing.assert_allclose(img.data, 1.0)
    # the variance of a weighted mean of independent planes: sum w^2 v / (sum w)^2, with the
    # masked plane left out at (0, 0); weights 0.5, 1, 1, 0.5 (half a plane beyond each end)
    w = np.array([0.5, 1.0, 1.0, 0.5])
    var = img.uncertainty.array
    assert var[0, 1] == pytest.approx(np.sum(w ** 2) / np.sum(w) ** 2)
    keep = np.array([0, 2, 3])
    assert var[0, 0] == pytest.approx(np.sum(w[keep] ** 2) / np.sum(w[keep]) ** 2)


def test_make_broadband_image_masked_variance_and_astropy_masked_cube():
    wave = 5000.0 + np.arange(4.0)
    data = np.ones((4, 2, 2))
    data[2, 1, 1] = 1e6
    variance = np.ma.masked_array(np.ones_like(data), mask=data > 100)
    img = make_broadband_image(data, (wave, np.ones(4)), wave=wave, variance=variance)
    np.testing.assert_allclose(img.data, 1.0)
    img = make_broadband_image(Masked(data * u.Jy, mask=data > 100), (wave, np.ones(4)),
                               wave=wave)
    np.testing.assert_allclose(img.data, 1.0)
    assert img.unit == u.Jy


def test_make_broadband_image_all_planes_masked_leaves_the_pixel_masked():
    wave = 5000.0 + np.arange(3.0)
    data = np.ones((3, 2, 2))
    mask = np.zeros(data.shape, bool)
    mask[:, 1, 0] = True
    img = make_broadband_image(np.ma.masked_array(data, mask=mask), (wave, np.ones(3)),
                               wave=wave)
    np.testing.assert_array_equal(img.mask, [[False, False], [True, False]])


# -- 3. filter curves with vertical edges ----------------------------------------------------------

def _top_hat_overlap(wave, step, lo, hi):
    """Exact overlap [A] of each plane [wave - step/2, wave + step/2] with [lo, hi]."""
    return np.clip(np.minimum(wave + step / 2, hi) - np.maximum(wave - step / 2, lo), 0, None)


@pytest.mark.parametrize("start", [4980.0, 4980.3])
def test_filter_weights_of_a_top_hat_with_vertical_edges(start):
    """Throughput 1 on [5000, 5100] A written with two samples at each edge: each plane's
    weight is its overlap with the band (the plane on the red edge had half of it)."""
    wave = start + 1.25 * np.arange(120)
    tophat = ([5000.0, 5000.0, 5100.0, 5100.0], [0.0, 1.0, 1.0, 0.0])
    weights, outside = filter_weights(wave, tophat)
    np.testing.assert_allclose(weights, _top_hat_overlap(wave, 1.25, 5000.0, 5100.0),
                               atol=1e-9)
    assert weights.sum() == pytest.approx(100.0)
    assert outside == pytest.approx(0.0, abs=1e-12)


def test_filter_weights_of_steps_and_slopes():
    """A curve with a step up inside it and a slope: 0.5 on [5000, 5010), 1 on [5010, 5020],
    then falling linearly to 0 at 5030 -- integrated by hand over planes of 4 A."""
    curve = ([5000.0, 5000.0, 5010.0, 5010.0, 5020.0, 5030.0],
             [0.0, 0.5, 0.5, 1.0, 1.0, 0.0])
    wave = 4990.0 + 4.0 * np.arange(12)

    def exact(a, b):
        # integral over [a, b] of the curve, by pieces
        total = 0.5 * max(0.0, min(b, 5010) - max(a, 5000))
        total += max(0.0, min(b, 5020) - max(a, 5010))
        lo, hi = max(a, 5020.0), min(b, 5030.0)
        if hi > lo:
            total += (hi - lo) * (1 - ((lo + hi) / 2 - 5020) / 10)
        return total

    truth = np.array([exact(w - 2.0, w + 2.0) for w in wave])
    weights, outside = filter_weights(wave, curve)
    np.testing.assert_allclose(weights, truth, atol=1e-12)
    assert weights.sum() == pytest.approx(5 + 10 + 5)
    assert outside == pytest.approx(0.0, abs=1e-12)


def test_broadband_image_of_a_line_on_the_red_edge_of_a_top_hat():
    """A cube that is 0 but for 10 in the plane at 5100 A, the red edge of the top-hat: the
    image is 10 x 0.625 / 100 (half that before)."""
    wave = 4980.0 + 1.25 * np.arange(120)
    cube = np.zeros((wave.size, 1, 1))
    cube[np.argmin(np.abs(wave - 5100.0)), 0, 0] = 10.0
    img = make_broadband_image(cube, ([5000.0, 5000.0, 5100.0, 5100.0], [0, 1, 1, 0]),
                               wave=wave)
    assert img.data[0, 0] == pytest.approx(10 * 0.625 / 100.0)


# -- 4. fit-photometry: the unit of bg and rms -----------------------------------------------------

def test_fit_photometry_bg_unit_is_the_targets_whatever_flux_unit(tmp_path):
    """The HDF-S MUSE image is in FSCALE = 1e-20 erg/s/cm2/A (no BUNIT; the dataset's README):
    with --flux-unit 1 the reference is converted to erg/s/cm2/A, but bg and rms stay in the
    target's 1e-20 erg/s/cm2/A (they had been labelled erg/s/cm2/A, 1e20 off)."""
    paths = muse_hst_hdfs()
    out = tmp_path / "fit.json"
    assert main(["fit-photometry", paths["muse"], paths["hst"], "--flux-unit", "1",
                 "--star", "338.2448972", "-60.5565334", "1.0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    for units in (doc["units"], doc["star"]["units"]):
        for key in ("bg", "rms"):
            assert u.Unit(units[key]).to(1e-20 * FLAM) == pytest.approx(1.0)


@pytest.fixture
def pair(tmp_path):
    """A target without any unit (no BUNIT, no FSCALE) and a reference with PHOTFLAM."""
    tgt, ref = _blurred_pair()
    hdr = _wcs(0.2, 64).to_header()
    target = tmp_path / "muse.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tgt, hdr, name="DATA")]).writeto(target)
    rhdr = hdr.copy()
    rhdr["PHOTFLAM"] = 1e-20
    reference = tmp_path / "hst.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(ref, rhdr, name="SCI")]).writeto(reference)
    return str(target), str(reference)


def test_fit_photometry_unknown_target_unit_is_not_the_flux_unit(pair, tmp_path):
    """A target of unknown unit: bg and rms carry no unit (they were given --flux-unit's)."""
    out = tmp_path / "fit.json"
    assert main(["fit-photometry", *pair, "--flux-unit", "1e-21", "--no-reference-psf",
                 "--fix-beta", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["units"]["bg"] == "" and doc["units"]["rms"] == ""
    # reference x 1e-20 / 1e-21 = 10 x reference: the injected 1.5 becomes 0.15
    assert doc["scale"]["value"] == pytest.approx(0.15, rel=0.02)


# -- 5. fit-photometry: a reference without PHOTFLAM -----------------------------------------------

def test_fit_photometry_flux_unit_without_photflam_names_the_file(pair, tmp_path, capsys):
    """--flux-unit X with a reference that has no PHOTFLAM: one line naming the reference and
    the command's remedies (it had said "give photflam= or a header", the library's words)."""
    target, reference = pair
    with fits.open(reference) as hdul:
        del hdul["SCI"].header["PHOTFLAM"]
        stripped = tmp_path / "hst_stripped.fits"
        hdul.writeto(stripped)
    assert main(["fit-photometry", target, str(stripped), "--flux-unit", "1e-20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(stripped) in err and "PHOTFLAM" in err
    assert "--flux-unit none" in err and "photflam=" not in err
    # the remedy it names is an option the command has
    assert main(["fit-photometry", target, str(stripped), "--flux-unit", "none",
                 "--no-reference-psf", "--fix-beta", "3"]) == 0


def test_fit_photometry_bad_flux_unit_names_the_option(pair, capsys):
    assert main(["fit-photometry", *pair, "--flux-unit", "Jy"]) == 2
    err = capsys.readouterr().err
    assert "--flux-unit Jy: unit Jy" in err and "flux density" in err
