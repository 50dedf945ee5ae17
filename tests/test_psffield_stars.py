"""Tests of astromix.psffield.stars: detection, LDAC reading, star selection, plot."""

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astromix.errors import InputError
from astromix.psffield import (
    FLAG_SATURATED,
    detect_sources,
    plot_size_magnitude,
    read_ldac,
    select_stars,
)

FWHM = 3.0          # px, of the Gaussian stars before pixel integration
# as drawn (convolved with the pixel box): variance + 1/12 px^2
FWHM_PIX = np.sqrt(FWHM ** 2 + 8 * np.log(2) / 12.0)
SAT = 20000.0


@pytest.fixture(scope="module")
def field():
    """(image, star xy, galaxy xy, saturated xy): a 480 x 480 px simulated field."""
    rng = np.random.default_rng(3)
    n = 480
    image = galsim.ImageF(n, n, scale=1.0)
    # jittered grid of cells: one object per cell, well separated
    cells = [(i, j) for i in range(8) for j in range(8)]
    rng.shuffle(cells)
    pos = np.array([[40 + 57 * i + rng.uniform(-8, 8), 40 + 57 * j + rng.uniform(-8, 8)]
                    for i, j in cells])
    stars, gals, sats = pos[:40], pos[40:60], pos[60:63]
    psf = galsim.Gaussian(fwhm=FWHM)
    for x, y in stars:
        flux = 10 ** rng.uniform(3.5, 5.0)
        psf.withFlux(flux).drawImage(image, center=(x + 1, y + 1), add_to_image=True)
    for x, y in gals:
        gal = galsim.Exponential(half_light_radius=rng.uniform(2.5, 5.0), flux=3e4)
        gal = gal.shear(g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3))
        galsim.Convolve(gal, psf).drawImage(image, center=(x + 1, y + 1), add_to_image=True)
    for x, y in sats:
        psf.withFlux(2e6).drawImage(image, center=(x + 1, y + 1), add_to_image=True)
    data = image.array.astype(float) + 100.0 + rng.normal(0.0, 5.0, (n, n))
    data = np.minimum(data, SAT)
    return data, stars, gals, sats


def _match(cat, xy, tol=1.5):
    """Index of the catalog row nearest to each position (-1 when farther than tol px)."""
    d = np.hypot(cat["x"][None, :] - xy[:, 0:1], cat["y"][None, :] - xy[:, 1:2])
    idx = np.argmin(d, axis=1)
    return np.where(d[np.arange(len(xy)), idx] < tol, idx, -1)


def test_detect_and_select_simulated(field):
    data, stars, gals, sats = field
    cat = detect_sources(data, saturation=0.99 * SAT)
    assert set(cat.colnames) >= {"id", "x", "y", "flux", "mag", "fwhm", "snr", "flags"}
    istar, igal, isat = _match(cat, stars), _match(cat, gals), _match(cat, sats)
    assert np.all(istar >= 0) and np.all(igal >= 0) and np.all(isat >= 0)
    # centroids to 0.1 px, 0-based
    assert np.max(np.hypot(cat["x"][istar] - stars[:, 0], cat["y"][istar] - stars[:, 1])) < 0.1
    assert np.all(cat["flags"][isat] & FLAG_SATURATED)
    assert not np.any(cat["flags"][istar] & FLAG_SATURATED)

    sel = select_stars(cat, seed=1)
    assert abs(sel.meta["fwhm_mode"] - FWHM_PIX) < 0.1
    assert np.all(sel["star"][istar])
    assert not np.any(sel["star"][igal])
    assert not np.any(sel["star"][isat])
    nstar = int(sel["star"].sum())
    assert nstar == len(stars)
    # reserve: 20% of the stars, a subset of them, reproducible
    assert sel["reserve"].sum() == round(0.2 * nstar)
    assert np.all(sel["star"][sel["reserve"]])
    assert np.array_equal(sel["selected"], sel["star"] & ~sel["reserve"])
    again = select_stars(cat, seed=1)
    assert np.array_equal(again["reserve"], sel["reserve"])
    other = select_stars(cat, rng=np.random.default_rng(2))
    assert not np.array_equal(other["reserve"], sel["reserve"])
    assert select_stars(cat, reserve=0.0)["reserve"].sum() == 0


def test_detect_masks_bad_pixels_and_weight(field):
    data = field[0].copy()
    data[200:203, 200:203] = np.nan
    weight = np.full(data.shape, 1 / 25.0)
    cat = detect_sources(data, weight=weight)
    assert np.all(np.isfinite(cat["x"]))
    near = np.hypot(cat["x"] - 201, cat["y"] - 201) < 10
    assert np.all(cat["flags"][near] & 8)
    with pytest.raises(InputError):
        detect_sources(data, weight=weight[:-1])
    with pytest.raises(InputError):
        detect_sources(np.zeros(5))


def test_read_ldac(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    fwhm = np.r_[np.full(30, 3.5) + rng.normal(0, 0.03, 30), rng.uniform(4.5, 9, 20)]
    flux = 10 ** rng.uniform(3, 5, n)
    cols = [
        fits.Column("NUMBER", "J", array=np.arange(1, n + 1)),
        fits.Column("X_IMAGE", "E", array=rng.uniform(1, 1000, n)),
        fits.Column("Y_IMAGE", "E", array=rng.uniform(1, 1000, n)),
        fits.Column("FLUX_APER", "3E", array=np.column_stack([flux, 2 * flux, 3 * flux])),
        fits.Column("FLUXERR_APER", "3E", array=np.column_stack([flux / 50] * 3)),
        fits.Column("FWHM_IMAGE", "E", array=fwhm),
        fits.Column("FLAGS", "I", array=np.r_[np.zeros(n - 1), 2]),
    ]
    head = fits.Column("Field Header Card", "80A", array=["SIMPLE  =                    T"])
    path = tmp_path / "cat.ldac"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([head], name="LDAC_IMHEAD"),
                  fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")]).writeto(path)
    cat = read_ldac(path)
    raw = Table.read(path, hdu="LDAC_OBJECTS")
    np.testing.assert_allclose(cat["x"], raw["X_IMAGE"] - 1)
    np.testing.assert_allclose(cat["y"], raw["Y_IMAGE"] - 1)
    np.testing.assert_allclose(cat["flux"], raw["FLUX_APER"][:, 0])
    np.testing.assert_allclose(cat["snr"], 50, rtol=1e-5)
    np.testing.assert_allclose(cat["mag"], -2.5 * np.log10(cat["flux"]))
    assert cat["flags"][-1] == 2 and cat["id"][0] == 1
    sel = select_stars(cat, seed=0)
    assert abs(sel.meta["fwhm_mode"] - 3.5) < 0.05
    assert sel["star"].sum() == 30 - (cat["flags"][:30] > 0).sum()

    bad = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((2, 2))).writeto(bad)
    with pytest.raises(InputError):
        read_ldac(bad)
    with pytest.raises(InputError):
        read_ldac(tmp_path / "missing.fits")


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_read_ldac_truncated(tmp_path):
    """A FITS_LDAC catalog cut inside its LDAC_OBJECTS data (an interrupted copy): InputError
    naming the file; astropy raises TypeError ("buffer is too small") for it."""
    n = 50
    cols = [fits.Column("NUMBER", "J", array=np.arange(1, n + 1)),
            fits.Column("X_IMAGE", "D", array=np.linspace(1, 100, n)),
            fits.Column("Y_IMAGE", "D", array=np.linspace(1, 100, n)),
            fits.Column("FLUX_AUTO", "D", array=np.full(n, 1e4)),
            fits.Column("FLUXERR_AUTO", "D", array=np.full(n, 1e2)),
            fits.Column("FWHM_IMAGE", "D", array=np.full(n, 3.5))]
    head = fits.Column("Field Header Card", "80A", array=["SIMPLE  =                    T"])
    whole = tmp_path / "whole.ldac"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([head], name="LDAC_IMHEAD"),
                  fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")]).writeto(whole)
    assert len(read_ldac(whole)) == n
    raw = whole.read_bytes()
    data_bytes = n * (4 + 5 * 8)  # the LDAC_OBJECTS rows, at the end of the file
    path = tmp_path / "cut.ldac"
    path.write_bytes(raw[:len(raw) - (-data_bytes % 2880) - data_bytes // 2])  # half the rows
    with pytest.raises(InputError, match="cut.ldac: cannot read FITS file"):
        read_ldac(path)


def _ldac_objects(x, y, fwhm):
    """An LDAC_OBJECTS table as SExtractor writes it (1-based X_IMAGE/Y_IMAGE)."""
    n = len(x)
    cols = [fits.Column("NUMBER", "J", array=np.arange(1, n + 1)),
            fits.Column("X_IMAGE", "D", array=np.asarray(x) + 1.0),
            fits.Column("Y_IMAGE", "D", array=np.asarray(y) + 1.0),
            fits.Column("FLUX_AUTO", "D", array=np.full(n, 1e4)),
            fits.Column("FLUXERR_AUTO", "D", array=np.full(n, 1e2)),
            fits.Column("FWHM_IMAGE", "D", array=np.full(n, fwhm)),
            fits.Column("FLAGS", "I", array=np.zeros(n))]
    return fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")


def test_read_ldac_multi_ccd(tmp_path):
    """SExtractor on a multi-extension image: one LDAC_IMHEAD + LDAC_OBJECTS pair per CCD
    (HDU 1-2, 3-4, 5-6).  Each CCD is read on its own (its injected positions and FWHM);
    without ``hdu`` the file is refused instead of silently read as its first CCD."""
    rng = np.random.default_rng(5)
    ccds = [(rng.uniform(0, 2000, n), rng.uniform(0, 4000, n), fwhm)
            for n, fwhm in [(5, 3.1), (7, 3.4), (4, 3.8)]]
    head = fits.Column("Field Header Card", "80A", array=["SIMPLE  =                    T"])
    hdus = [fits.PrimaryHDU()]
    for x, y, fwhm in ccds:
        hdus += [fits.BinTableHDU.from_columns([head], name="LDAC_IMHEAD"),
                 _ldac_objects(x, y, fwhm)]
    path = tmp_path / "mef.cat"
    fits.HDUList(hdus).writeto(path)
    for k, (x, y, fwhm) in enumerate(ccds):
        for hdu in (2 * k + 2, 2 * k + 2 - len(hdus)):    # the index, and counted from the end
            cat = read_ldac(path, hdu=hdu)
            assert len(cat) == len(x)
            np.testing.assert_allclose(cat["x"], x, rtol=0, atol=1e-9)
            np.testing.assert_allclose(cat["y"], y, rtol=0, atol=1e-9)
            np.testing.assert_allclose(cat["fwhm"], fwhm)
    with pytest.raises(InputError, match=r"mef.cat: 3 LDAC_OBJECTS extensions .* HDU 2, 4, 6; "
                                         r"choose one with hdu="):
        read_ldac(path)
    with pytest.raises(InputError, match=r"mef.cat: no HDU 7 \(the file has HDU 0 to 6\)"):
        read_ldac(path, hdu=7)
    with pytest.raises(InputError, match=r"mef.cat: HDU 3 is not an LDAC_OBJECTS extension; "
                                         r"LDAC_OBJECTS at HDU 2, 4, 6"):
        read_ldac(path, hdu=3)
    with pytest.raises(InputError, match="HDU index"):
        read_ldac(path, hdu="LDAC_OBJECTS")
    # a single-CCD catalog: read as before, with or without hdu
    single = tmp_path / "one.cat"
    fits.HDUList(hdus[:3]).writeto(single)
    x, y, _ = ccds[0]
    for hdu in (None, 2):
        np.testing.assert_allclose(read_ldac(single, hdu=hdu)["x"], x, rtol=0, atol=1e-9)


def test_psf_at_sky_refuses_several_positions():
    """psf_at_sky evaluates one sky position: arrays (or an array SkyCoord) get an
    InputError saying so, not a bare TypeError from float(); scalars still work."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    from astromix import Exposure
    from astromix.io.psfex import PSFExModel
    from astromix.psffield import psf_at_sky

    yy, xx = np.mgrid[:15, :15] - 7.0
    sigma = 1.5
    psf = PSFExModel(np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))[None], (0, 0), (1, 1), 0)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [21.0, 26.0]
    wcs.wcs.cdelt = [-0.262 / 3600, 0.262 / 3600]
    wcs.wcs.set()
    exp = Exposure(np.zeros((51, 41)), wcs=wcs, psf=psf)
    for args in [([150.0, 150.001], [2.0, 2.0]), (np.array([150.0]), 2.0),
                 (150.0, np.array([2.0, 2.0])),
                 (SkyCoord([150.0, 150.001] * u.deg, [2.0, 2.0] * u.deg),)]:
        with pytest.raises(InputError, match="psf_at_sky takes one sky position"):
            psf_at_sky([exp], *args)
    for args in [(150.0, 2.0), (np.float64(150.0), np.array(2.0)),
                 (SkyCoord(150.0 * u.deg, 2.0 * u.deg),)]:
        out = psf_at_sky([exp], *args, kind="image", shape=(15, 15))
        # CRPIX (21, 26), 1-based: the reference point at 0-based pixel (20, 25)
        np.testing.assert_allclose([out["x"][0], out["y"][0]], [20.0, 25.0], atol=1e-6)
        img = np.asarray(out["psf"][0], float)
        np.testing.assert_allclose(img, np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
                                   / np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)).sum(),
                                   atol=1e-6)


def test_select_refuses_bad_input():
    cat = Table({"mag": [1.0], "fwhm": [3.0], "snr": [5.0], "flags": [0]})
    with pytest.raises(InputError):
        select_stars(cat)                       # S/N below 20: nothing left
    with pytest.raises(InputError):
        select_stars(cat, snr_range=None, reserve=1.0)
    with pytest.raises(InputError):
        select_stars(Table({"mag": [1.0]}))


def test_cfht_a370_stars():
    from astromix.datasets import cfht_a370

    image = fits.getdata(cfht_a370())
    cat = detect_sources(image, saturation=12000.0)
    assert len(cat) > 1000
    sel = select_stars(cat, seed=0)
    # the stellar locus of this image is near 3.4 px (0.7 arcsec)
    assert 3.0 < sel.meta["fwhm_mode"] < 3.7
    assert sel["star"].sum() >= 40
    assert not np.any(sel["star"] & (sel["flags"] > 0))


def test_plot_size_magnitude(field):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = select_stars(detect_sources(field[0], saturation=0.99 * SAT), seed=0)
    ax = plot_size_magnitude(sel)
    assert len(ax.collections) >= 3
    labels = ax.get_legend_handles_labels()[1]
    assert any(x.startswith("reserve (") for x in labels)
    plt.close(ax.figure)
    # a selection without reserve stars (the column removed) plots without them
    sel.remove_column("reserve")
    ax = plot_size_magnitude(sel)
    labels = ax.get_legend_handles_labels()[1]
    assert any(x.startswith("stars (") for x in labels)
    assert not any(x.startswith("reserve") for x in labels)
    plt.close(ax.figure)



def test_detect_on_a_stripe_footprint_and_a_small_cutout(field):
    """Data only in a diagonal stripe (a dithered mosaic's footprint, NaN outside) or
    in a 12 x 12 cut-out around one star: every 64-px background box is more than
    10% masked or mostly star, where photutils' Background2D had raised a bare
    ValueError.  The stars well inside the stripe are found at their injected
    positions (to 0.1 px), and the noise (5 per pixel) is measured."""
    data, stars, _, _ = field
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    stripe = np.abs(xx - yy) < 40
    cat = detect_sources(np.where(stripe, data, np.nan), saturation=0.99 * SAT)
    inside = stars[np.abs(stars[:, 0] - stars[:, 1]) < 20]
    assert len(inside) >= 3
    idx = _match(cat, inside)
    assert np.all(idx >= 0)
    assert np.max(np.hypot(cat["x"][idx] - inside[:, 0], cat["y"][idx] - inside[:, 1])) < 0.1
    assert cat.meta["noise"] == pytest.approx(5.0, rel=0.1)

    star = stars[np.argmax(stars[:, 0] > 60)]          # one star in a 12 x 12 cut-out
    x0, y0 = np.round(star).astype(int)
    small = detect_sources(data[y0 - 6:y0 + 6, x0 - 6:x0 + 6], measure_size=9)
    assert len(small) == 1
    assert small["x"][0] == pytest.approx(star[0] - x0 + 6, abs=0.05)
    assert small["y"][0] == pytest.approx(star[1] - y0 + 6, abs=0.05)
