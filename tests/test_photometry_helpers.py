"""Tests of astromix.photometry.helpers: reading, regridding, PHOTFLAM, broad-band images."""

import math

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS

from astromix.data import Exposure
from astromix.datasets import muse_hst_hdfs
from astromix.errors import InputError
from astromix.photometry import (
    PhotometryWarning,
    filter_weights,
    hst_filter_name,
    make_broadband_image,
    read_image,
    regrid,
    rescale_to_flux_units,
)

RA0, DEC0 = 53.16, -27.78


def tan_wcs(n, scale, rotation=0.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    th = math.radians(rotation)
    s = scale / 3600
    w.wcs.cd = s * np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
    w.wcs.set()
    return w


def sources(n=200, k=25, seed=3):
    """A fine image of Gaussian sources well inside it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n].astype(float)
    img = np.zeros((n, n))
    for _ in range(k):
        x0, y0 = rng.uniform(40, n - 40, 2)
        img += rng.uniform(1, 10) * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * 2.5 ** 2))
    return img


# -- read_image ---------------------------------------------------------------------------------

def test_read_image_muse_and_hst():
    paths = muse_hst_hdfs()
    muse = read_image(paths["muse"])
    with fits.open(paths["muse"]) as hdul:
        dq = hdul["DQ"].data
        stat = hdul["STAT"].data
    assert muse.shape == (331, 326) and muse.name == "IMAGE-HDFS-1.34"
    assert muse.mask[dq != 0].all()
    assert muse.mask[~np.isfinite(stat)].all()
    good = ~muse.mask
    np.testing.assert_allclose(muse.weight[good], 1.0 / stat[good], rtol=1e-6)
    assert muse.pixel_scale(163, 165) == pytest.approx(0.2, rel=1e-6)
    hst = read_image(paths["hst"])
    assert hst.shape == (500, 500) and hst.uncertainty is None and not hst.mask.any()
    assert hst.meta["header"]["PHOTFLAM"] == 1.89972e-18


def test_read_image_errors(tmp_path):
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((5, 5))).writeto(path)
    with pytest.raises(InputError, match="celestial WCS"):
        read_image(path)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.fits")
    with pytest.raises(InputError, match="no extension"):
        read_image(path, ext="SCI")
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 5, 5))).writeto(cube)
    with pytest.raises(InputError, match="not a 2-D image"):
        read_image(cube)


# -- regrid ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, tol", [("exact", 1e-6), ("adaptive", 5e-3), ("interp", 2e-2)])
def test_regrid_conserves_flux(method, tol):
    fine = sources()
    out = regrid((fine, tan_wcs(200, 0.05)), (np.zeros((60, 60)), tan_wcs(60, 0.2, 25.0)),
                 method=method)
    assert not out.mask[20:40, 20:40].any()
    assert out.meta["area_ratio"] == pytest.approx(16.0, rel=1e-6)
    assert np.sum(out.data[~out.mask]) == pytest.approx(fine.sum(), rel=tol)


@pytest.mark.parametrize("method", ["exact", "interp", "adaptive"])
def test_regrid_masks_the_pixels_over_a_masked_one(method):
    # 10 x 10 target pixels of 0.2" exactly on 40 x 40 reference pixels of 0.05": all fully
    # covered; the NaN reference pixel (20, 20) lies in target pixel (5, 5) only
    fine = np.ones((40, 40))
    target = (np.zeros((10, 10)), tan_wcs(10, 0.2))
    clean = regrid((fine, tan_wcs(40, 0.05)), target, method=method)
    assert not clean.mask.any()
    np.testing.assert_allclose(clean.data, 16.0, rtol=1e-6)
    fine[20, 20] = np.nan
    out = regrid((fine, tan_wcs(40, 0.05)), target, method=method)
    assert out.mask[5, 5]
    expected = np.zeros((10, 10), bool)
    expected[5, 5] = True
    if method == "exact":     # reproject's NaN also reaches pixels sharing an edge (rounding)
        near = np.zeros((10, 10), bool)
        near[4:7, 4:7] = True
        assert not out.mask[~near].any()
    else:
        np.testing.assert_array_equal(out.mask, expected)
    np.testing.assert_allclose(out.data[~out.mask], 16.0, rtol=1e-6)


@pytest.mark.parametrize("method", ["interp", "adaptive"])
def test_regrid_mask_holds_every_overlap_on_a_rotated_grid(method):
    # the truth: the exact overlap of each target pixel with the masked reference pixels and
    # with the reference (reproject_exact of an indicator image, an independent computation)
    import reproject

    fine = sources()
    mask = np.zeros(fine.shape, bool)
    mask[100, 100] = mask[60:63, 140] = True
    ref = Exposure(fine, mask=mask, wcs=tan_wcs(200, 0.05))
    tgt_wcs = tan_wcs(60, 0.2, 25.0)
    out = regrid(ref, (np.zeros((60, 60)), tgt_wcs), method=method)
    bad_frac, cover = reproject.reproject_exact((mask.astype(float), ref.wcs), tgt_wcs,
                                                shape_out=(60, 60))
    overlaps = (np.nan_to_num(bad_frac) * cover > 1e-6) | (cover < 1 - 1e-6)
    assert out.mask[overlaps].all()
    # the bounding box of a pixel rotated by 25 deg is 1.33 px wide: a thin extra margin only
    extra = out.mask & ~overlaps
    assert extra.sum() < 0.1 * overlaps.sum()


def test_regrid_masks_agree_on_the_hdfs_pair():
    # HST (FK5) onto MUSE (ICRS), 4.5 deg apart: the fully covered pixels are the same for
    # the three methods (interp and adaptive transform the frames as reproject does)
    paths = muse_hst_hdfs()
    ref, tgt = read_image(paths["hst"]), read_image(paths["muse"])
    exact = regrid(ref, tgt, method="exact")
    for method in ("interp", "adaptive"):
        out = regrid(ref, tgt, method=method)
        assert (out.mask != exact.mask).sum() <= 2, method


def test_regrid_masks_and_variance():
    fine = sources()
    mask = np.zeros(fine.shape, bool)
    mask[100, 100] = True
    ref = Exposure(fine, uncertainty=np.full(fine.shape, 0.1), mask=mask, wcs=tan_wcs(200, 0.05))
    out = regrid(ref, (np.zeros((60, 60)), tan_wcs(60, 0.2)))
    # the masked fine pixel (100, 100) lies in coarse pixel (29.9, 29.9) +- 1 -> masked there
    assert out.mask[29:31, 29:31].any() and out.mask.sum() < 60 * 60 - 49 * 49 + 5
    # 16 independent pixels of variance 0.01 per coarse pixel
    var = 1.0 / out.weight[~out.mask]
    np.testing.assert_allclose(np.median(var), 16 * 0.01, rtol=1e-6)
    # outside the reference: masked
    assert out.mask[0, 0] and out.mask[-1, -1]
    with pytest.raises(InputError, match="method"):
        regrid(ref, (np.zeros((60, 60)), tan_wcs(60, 0.2)), method="nearest")
    with pytest.raises(InputError, match="shape_out"):
        regrid(ref, tan_wcs(60, 0.2))
    assert regrid(ref, tan_wcs(60, 0.2), shape_out=(60, 60)).shape == (60, 60)


# -- rescale_to_flux_units -----------------------------------------------------------------------

def test_rescale_hdfs_against_the_hand_formula():
    path = muse_hst_hdfs()["hst"]
    out = rescale_to_flux_units(path, unit=1e-20)
    raw = fits.getdata(path, ext=1).astype(float)
    np.testing.assert_allclose(out.data, raw * 1.89972e-18 / 1e-20, rtol=1e-12)
    assert out.meta["filter"] == "F606W" and out.meta["photflam"] == 1.89972e-18
    assert out.unit == u.Unit(1e-20 * u.erg / u.s / u.cm ** 2 / u.AA)
    cgs = rescale_to_flux_units(path)
    assert cgs.unit == u.erg / u.s / u.cm ** 2 / u.AA
    np.testing.assert_allclose(cgs.data, raw * 1.89972e-18, rtol=1e-12)
    mjy = rescale_to_flux_units(path, unit="1e-17 W / (m2 nm)")   # 1 W/m2/nm = 100 erg/s/cm2/A
    np.testing.assert_allclose(mjy.data, raw * 1.89972e-18 / 100 / 1e-17, rtol=1e-12)


def test_rescale_keywords_counts_and_errors():
    data = np.full((3, 3), 2.0)
    hdr = fits.Header({"PHOTFLAM": 1e-19, "BUNIT": "ELECTRONS", "EXPTIME": 400.0,
                       "FILTER1": "CLEAR1L", "FILTER2": "F814W"})
    out = rescale_to_flux_units((data, hdr))
    np.testing.assert_allclose(out.data, 2.0 * 1e-19 / 400.0)
    assert out.meta["filter"] == "F814W"
    target = Exposure(np.zeros((3, 3)), unit="1e-20 erg / (s cm2 Angstrom)")
    out = rescale_to_flux_units((data, fits.Header({"PHOTFLAM": 1e-19, "BUNIT": "ELECTRONS/S",
                                                    "FILTER": "F160W"})), unit=target)
    np.testing.assert_allclose(out.data, 2.0 * 10.0)
    assert out.meta["filter"] == "F160W"
    hdu = fits.ImageHDU(data, header=fits.Header({"PHOTFLAM": 3e-18}))
    np.testing.assert_allclose(rescale_to_flux_units(hdu).data, 6e-18)
    np.testing.assert_allclose(rescale_to_flux_units(hdu, photflam=1e-18).data, 2e-18)
    with pytest.raises(InputError, match="no PHOTFLAM"):
        rescale_to_flux_units((data, fits.Header()))
    with pytest.raises(InputError, match="EXPTIME"):
        rescale_to_flux_units((data, fits.Header({"PHOTFLAM": 1e-19, "BUNIT": "COUNTS"})))
    with pytest.raises(InputError, match="not a flux density"):
        rescale_to_flux_units(hdu, unit="Jy")
    with pytest.raises(InputError, match="positive"):
        rescale_to_flux_units(hdu, photflam=-1.0)


@pytest.mark.parametrize("bunit, counts", [
    ("ELECTRONS/S", False), ("electron s-1", False), ("counts s-1", False),
    ("count / s", False), ("DN s**-1", False), ("DN/sec", False), ("e-/s", False),
    ("ELECTRONS", True), ("COUNTS", True), ("electron", True), ("DN", True), ("adu", True),
    ("", False),
])
def test_rescale_reads_bunit_rates_in_fits_form(bunit, counts):
    # the FITS standard writes a rate "count s-1" (astropy's to_string("fits")): a rate, not
    # counts to divide by EXPTIME
    data = np.full((2, 2), 3.0)
    hdr = fits.Header({"PHOTFLAM": 2e-19, "EXPTIME": 1000.0, "BUNIT": bunit})
    out = rescale_to_flux_units((data, hdr))
    np.testing.assert_allclose(out.data, 3.0 * 2e-19 / (1000.0 if counts else 1.0), rtol=1e-12)


def test_rescale_does_not_apply_photflam_twice():
    # the HDF-S WFPC2 image in count rates: once = raw * PHOTFLAM / 1e-20 (the hand formula);
    # a second call on the result converts units only
    path = muse_hst_hdfs()["hst"]
    raw = fits.getdata(path, ext=1).astype(float)
    once = rescale_to_flux_units(path, unit=1e-20)
    twice = rescale_to_flux_units(once, unit=1e-20)
    np.testing.assert_allclose(twice.data, raw * 1.89972e-18 / 1e-20, rtol=1e-12)
    np.testing.assert_allclose(rescale_to_flux_units(once).data, raw * 1.89972e-18,
                               rtol=1e-12)
    assert twice.unit == once.unit
    # an image whose BUNIT is already a flux density, beside a PHOTFLAM: not multiplied
    for bunit in ("erg/s/cm2/Angstrom", "ERG/S/CM2/A", "1e-20 erg / (s cm2 Angstrom)"):
        hdr = fits.Header({"PHOTFLAM": 1.9e-18, "BUNIT": bunit})
        value = 30.0 if bunit.startswith("1e-20") else 3e-19     # both 3e-19 erg/s/cm2/A
        out = rescale_to_flux_units((np.full((2, 2), value), hdr), unit=1e-20)
        np.testing.assert_allclose(out.data, 30.0, rtol=1e-12)
    # an Exposure with a flux-density unit and no header: no PHOTFLAM needed
    exp = Exposure(np.full((2, 2), 3.0), unit=u.W / u.m ** 2 / u.nm)  # = 100 erg/s/cm2/A
    np.testing.assert_allclose(rescale_to_flux_units(exp).data, 300.0, rtol=1e-12)
    # per frequency: f_lambda = f_nu c / lambda^2 at the pivot wavelength PHOTPLAM
    hdr = fits.Header({"PHOTFLAM": 1.9e-18, "PHOTPLAM": 6000.0, "BUNIT": "Jy"})
    out = rescale_to_flux_units((np.full((2, 2), 2.0), hdr))
    np.testing.assert_allclose(out.data, 2.0 * 1e-23 * 2.99792458e18 / 6000.0 ** 2,
                               rtol=1e-9)


@pytest.mark.parametrize("bunit, match", [
    ("Jy", "PHOTPLAM"), ("MJy/sr", "surface brightness"),
    ("erg/s/cm2/Angstrom/arcsec2", "surface brightness"), ("K", "neither"),
    ("Jy/beam", "neither"), ("mag", "neither"),
])
def test_rescale_refuses_units_photflam_does_not_apply_to(bunit, match):
    hdr = fits.Header({"PHOTFLAM": 1.9e-18, "BUNIT": bunit})
    with pytest.raises(InputError, match=match):
        rescale_to_flux_units((np.ones((2, 2)), hdr))


def test_rescale_refuses_counts_with_another_time_power():
    hdr = fits.Header({"PHOTFLAM": 2e-19, "EXPTIME": 1000.0, "BUNIT": "electron s-2"})
    with pytest.raises(InputError, match="neither counts nor a count rate"):
        rescale_to_flux_units((np.ones((2, 2)), hdr))


def test_hst_filter_name_variants():
    assert hst_filter_name(fits.Header({"FILTER1": 28, "FILTNAM1": "F606W"})) == "F606W"
    assert hst_filter_name(fits.Header({"FILTER1": "F555W", "FILTER2": "CLEAR2L"})) == "F555W"
    assert hst_filter_name(fits.Header({"FILTNAM1": "F450W", "FILTNAM2": "F606W"})) \
        == "F450W+F606W"
    assert hst_filter_name(fits.Header(), fits.Header({"FILTER": "F200W"})) == "F200W"
    assert hst_filter_name(fits.Header({"FILTER": "CLEAR"})) is None


# -- broad-band images -----------------------------------------------------------------------

def test_filter_weights_by_hand():
    wave = np.array([5000.0, 5010.0, 5030.0])        # non-uniform planes
    # planes span [4995, 5005], [5005, 5020], [5020, 5040]
    w, outside = filter_weights(wave, ([5000.0, 5040.0], [1.0, 1.0]))
    np.testing.assert_allclose(w, [5.0, 15.0, 20.0])
    assert outside == pytest.approx(0.0, abs=1e-12)
    # triangle 5000 -> 5020 (peak 1 at 5010): over [5005, 5020] it holds 1 - 0.125 = 0.875 of 10
    w, outside = filter_weights(wave, ([5000.0, 5010.0, 5020.0], [0.0, 1.0, 0.0]))
    np.testing.assert_allclose(w, [1.25, 8.75, 0.0])
    w, outside = filter_weights(wave * u.AA.to(u.nm) * u.nm, ([4990.0, 5050.0], [1.0, 1.0]))
    np.testing.assert_allclose(w, [10.0, 15.0, 20.0])
    assert outside == pytest.approx(15.0 / 60.0)


def test_broadband_image_weights_variance_and_nan():
    rng = np.random.default_rng(0)
    wave = np.array([5000.0, 5010.0, 5030.0])
    cube = rng.normal(10.0, 1.0, (3, 4, 5))
    var = rng.uniform(0.5, 2.0, (3, 4, 5))
    cube[1, 0, 0] = np.nan
    img = make_broadband_image(cube, ([5000.0, 5010.0, 5020.0], [0.0, 1.0, 0.0]), wave=wave,
                               variance=var)
    w = np.array([1.25, 8.75, 0.0])
    expect = np.tensordot(w, cube, 1) / w.sum()
    expect_var = np.tensordot(w ** 2, var, 1) / w.sum() ** 2
    np.testing.assert_allclose(img.data[1:, :], expect[1:, :])
    np.testing.assert_allclose(1.0 / img.weight[1:, :], expect_var[1:, :])
    # the NaN plane is left out of that pixel only
    assert img.data[0, 0] == pytest.approx(cube[0, 0, 0])
    assert 1.0 / img.weight[0, 0] == pytest.approx(var[0, 0, 0])
    assert img.meta["filter_fraction_outside"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(img.meta["weights"], w)


@pytest.mark.parametrize("chunk", [0, -1, 2.0, "4", True, None])
def test_broadband_chunk_must_be_a_positive_integer(chunk):
    cube = np.ones((4, 3, 3))
    with pytest.raises(InputError, match="chunk must be an integer >= 1"):
        make_broadband_image(cube, ([4990.0, 5050.0], [1.0, 1.0]),
                             wave=np.array([5000.0, 5010.0, 5020.0, 5030.0]), chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 2, 3, np.int64(64)])
def test_broadband_chunk_does_not_change_the_image(chunk):
    rng = np.random.default_rng(3)
    wave = np.array([5000.0, 5010.0, 5030.0, 5045.0, 5050.0])
    cube = rng.normal(10.0, 1.0, (5, 4, 3))
    var = rng.uniform(0.5, 2.0, cube.shape)
    curve = ([5000.0, 5010.0, 5040.0], [0.0, 1.0, 0.5])
    w, _ = filter_weights(wave, curve)
    img = make_broadband_image(cube, curve, wave=wave, variance=var, chunk=chunk)
    np.testing.assert_allclose(img.data, np.tensordot(w, cube, 1) / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(1.0 / img.weight, np.tensordot(w ** 2, var, 1) / w.sum() ** 2,
                               rtol=1e-12)


def test_broadband_warns_when_the_filter_leaves_the_cube(tmp_path):
    wave = np.arange(5000.0, 5101.0, 1.0)              # planes cover [4999.5, 5100.5]
    cube = np.ones((wave.size, 2, 2))
    # 0.4% of a flat filter outside: no warning; 1% outside: warning
    inside = make_broadband_image(cube, ([4999.1, 5100.5], [1.0, 1.0]), wave=wave)
    assert inside.meta["filter_fraction_outside"] == pytest.approx(0.4 / 101.4)
    with pytest.warns(PhotometryWarning, match="outside the cube"):
        out = make_broadband_image(cube, ([4998.5, 5100.5], [1.0, 1.0]), wave=wave)
    assert out.meta["filter_fraction_outside"] == pytest.approx(1.0 / 102.0)
    # a two-column file and a synphot bandpass give the same weights
    path = tmp_path / "filter.dat"
    path.write_text("# wavelength throughput\n5000 0\n5050 0.8\n5100 0\n")
    synphot = pytest.importorskip("synphot")
    Empirical1D, SpectralElement = synphot.Empirical1D, synphot.SpectralElement

    bp = SpectralElement(Empirical1D, points=[5000.0, 5050.0, 5100.0] * u.AA,
                         lookup_table=[0.0, 0.8, 0.0])
    a = make_broadband_image(cube, path, wave=wave)
    b = make_broadband_image(cube, bp, wave=wave)
    np.testing.assert_allclose(a.meta["weights"], b.meta["weights"])
    assert a.meta["weights"].sum() == pytest.approx(0.5 * 100 * 0.8)
    with pytest.raises(InputError, match="does not overlap"):
        make_broadband_image(cube, ([6000.0, 6100.0], [1.0, 1.0]), wave=wave,
                             warn_fraction=0.999)


def test_broadband_from_a_muse_like_fits_cube(tmp_path):
    nz, ny, nx = 20, 6, 7
    hdr = tan_wcs(nx, 0.2).to_header()
    w3 = WCS(naxis=3)
    w3.wcs.ctype = ["RA---TAN", "DEC--TAN", "AWAV"]
    w3.wcs.crval = [RA0, DEC0, 4750.0]
    w3.wcs.crpix = [4.0, 3.5, 1.0]
    w3.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600, 1.25]
    w3.wcs.cunit = ["deg", "deg", "Angstrom"]
    hdr = w3.to_header()
    data = np.arange(nz, dtype=np.float32)[:, None, None] * np.ones((nz, ny, nx), np.float32)
    stat = np.ones((nz, ny, nx), np.float32)
    dq = np.zeros((nz, ny, nx), np.uint8)
    dq[3, 2, 2] = 1
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, hdr, name="DATA"),
                  fits.ImageHDU(stat, hdr, name="STAT"),
                  fits.ImageHDU(dq, hdr, name="DQ")]).writeto(path)
    img = make_broadband_image(path, ([4750.0, 4760.0], [1.0, 1.0]))
    # planes 0..8 at 4750 + 1.25 k; the filter covers [4750, 4760]: plane 0 half, 1-7 full, 8 half
    w = img.meta["weights"]
    np.testing.assert_allclose(w[:9], [0.625] + [1.25] * 7 + [0.625])
    assert np.all(w[9:] == 0)
    assert img.data[0, 0] == pytest.approx(4.0)
    assert img.data[2, 2] != pytest.approx(4.0)        # the DQ-flagged plane is left out
    assert img.wcs.has_celestial and img.shape == (ny, nx)
    assert 1.0 / img.weight[0, 0] == pytest.approx((w ** 2).sum() / w.sum() ** 2)
