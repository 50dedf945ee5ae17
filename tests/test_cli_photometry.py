"""Tests of ``astromix fit-photometry``."""

import json

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astromix.cli import main
from astromix.datasets import muse_hst_hdfs
from astromix.photometry import moffat_transform

MEASUREMENTS = ["fwhm", "beta", "scale", "bg", "dx", "dy", "dra", "ddec", "rms"]


def _wcs(n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.0, -27.8]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


@pytest.fixture
def pair(tmp_path):
    """A MUSE-like target (DATA/STAT/DQ) and an HST-like reference (PHOTFLAM) on one grid."""
    n = 64
    rng = np.random.default_rng(2)
    ref = np.zeros((n, n))
    ref[rng.integers(10, n - 10, 30), rng.integers(10, n - 10, 30)] = rng.uniform(1, 5, 30)
    f = np.fft.fftfreq(n, 0.2)
    q = np.hypot(f[None, :], f[:, None])
    k = moffat_transform(q, 0.8, 3.0) * np.exp(-2j * np.pi * 0.1 * f[None, :])
    photflam = 1e-19
    # target in 1e-20 erg/s/cm2/A: 1.5 x the reference in those units, plus 0.2
    tgt = 1.5 * np.fft.ifft2(np.fft.fft2(ref * photflam / 1e-20) * k).real + 0.2
    tgt += rng.normal(0, 0.01, tgt.shape)
    hdr = _wcs(n).to_header()
    dq = np.zeros((n, n), np.uint8)
    dq[0, :] = 1
    target = tmp_path / "muse.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(tgt.astype(np.float32), hdr, name="DATA"),
                  fits.ImageHDU(np.full((n, n), 1e-4, np.float32), hdr, name="STAT"),
                  fits.ImageHDU(dq, hdr, name="DQ")]).writeto(target)
    rhdr = hdr.copy()
    rhdr["PHOTFLAM"] = photflam
    rhdr["FILTER1"] = 28
    rhdr["FILTNAM1"] = "F606W"
    reference = tmp_path / "hst.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(ref, rhdr, name="SCI")]).writeto(reference)
    return str(target), str(reference)


def test_fit_photometry_outputs(pair, tmp_path, capsys):
    target, reference = pair
    out_json = tmp_path / "out" / "fit.json"
    rc = main(["fit-photometry", target, reference, "--flux-unit", "1e-20", "--no-reference-psf",
               "--fix-beta", "3", "--json", str(out_json), "--plot", str(tmp_path / "fit.png"),
               "--save-fits", str(tmp_path / "fits")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "muse against hst" in text and "fwhm" in text
    doc = json.loads(out_json.read_text())
    for name in MEASUREMENTS:
        assert set(doc[name]) == {"value", "error", "fixed"}
    assert doc["beta"] == {"value": 3.0, "error": 0.0, "fixed": True}
    assert doc["method"] == "image" and doc["units"]["fwhm"] == "arcsec"
    assert doc["scale"]["value"] == pytest.approx(1.5, abs=4 * doc["scale"]["error"])
    assert doc["fwhm"]["value"] == pytest.approx(0.8, abs=4 * doc["fwhm"]["error"])
    assert doc["dx"]["value"] == pytest.approx(0.1, abs=4 * doc["dx"]["error"])
    assert doc["bg"]["value"] == pytest.approx(0.2, abs=4 * doc["bg"]["error"])
    assert (tmp_path / "fit.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "fits").iterdir()) == [
        "muse_image.fits", "muse_model.fits", "muse_residual.fits"]
    # existing outputs are refused before any fitting, without a traceback
    rc = main(["fit-photometry", target, reference, "--json", str(out_json)])
    err = capsys.readouterr().err
    assert rc == 2 and "exists" in err and "Traceback" not in err
    assert main(["fit-photometry", target, reference, "--json", str(out_json),
                 "--overwrite", "--model", "windowed"]) == 0


def test_fit_photometry_errors(pair, tmp_path, capsys):
    target, reference = pair
    assert main(["fit-photometry", target, str(tmp_path / "missing.fits")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["fit-photometry", target, reference, "--fix-beta", "0.5"]) == 2
    assert "fix_beta" in capsys.readouterr().err
    assert main(["fit-photometry", target, reference, "--flux-unit", "Jy"]) == 2
    assert "flux density" in capsys.readouterr().err
    assert main(["fit-photometry", target, reference, "--plot", str(tmp_path / "noext")]) == 2
    assert main(["fit-photometry", target]) == 2          # usage error


def test_fit_photometry_hdfs_with_star(tmp_path, capsys):
    paths = muse_hst_hdfs()
    out = tmp_path / "hdfs.json"
    # the reference is converted with its PHOTFLAM to MUSE's FSCALE (1e-20) by default
    rc = main(["fit-photometry", paths["muse"], paths["hst"],
               "--star", "338.2448972", "-60.5565334", "1.0", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert 0.6 < doc["fwhm"]["value"] < 0.9 and 0.6 < doc["scale"]["value"] < 0.9
    assert set(doc["star"]) >= set(MEASUREMENTS) | {"ra", "dec", "radius"}
    assert "star at" in capsys.readouterr().out
    # the target has no BUNIT: its unit is MUSE's FSCALE, 1e-20 erg/s/cm2/A, that of bg and rms
    flam = 1e-20 * u.erg / (u.s * u.cm ** 2 * u.AA)
    for key in ("bg", "rms"):
        assert u.Unit(doc["units"][key]).to(flam) == pytest.approx(1.0)
        assert u.Unit(doc["star"]["units"][key]).to(flam) == pytest.approx(1.0)


def _with_bunit(path, bunit, tmp_path):
    with fits.open(path) as hdul:
        hdul["DATA"].header["BUNIT"] = bunit
        out = tmp_path / "muse_bunit.fits"
        hdul.writeto(out)
    return str(out)


@pytest.mark.parametrize("option, bunit, expected", [
    ("auto", "1e-20 erg / (s cm2 Angstrom)", 1.5),   # the target's BUNIT
    ("auto", None, 15.0),                             # unknown unit: count rates, warned
    ("none", "1e-20 erg / (s cm2 Angstrom)", 15.0),   # no conversion asked
    ("1e-21", None, 0.15),                            # an explicit unit
])
def test_fit_photometry_flux_unit(pair, tmp_path, caplog, option, bunit, expected):
    """--flux-unit auto converts the PHOTFLAM reference to the target's unit when it is known."""
    target, reference = pair
    if bunit is not None:
        target = _with_bunit(target, bunit, tmp_path)
    out = tmp_path / f"fit_{option}.json"
    with caplog.at_level("WARNING", logger="astromix"):
        assert main(["fit-photometry", target, reference, "--flux-unit", option,
                     "--no-reference-psf", "--fix-beta", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["scale"]["value"] == pytest.approx(expected, rel=0.02)
    warned = "unit is unknown" in caplog.text
    assert warned == (option == "auto" and bunit is None)


def test_fit_photometry_after_astromix_regrid(pair, tmp_path, caplog):
    """The two-step path (astromix regrid, then fit-photometry) converts the regridded
    reference with its PHOTFLAM as the direct one: the injected scale 1.5."""
    target, reference = pair
    target = _with_bunit(target, "1e-20 erg / (s cm2 Angstrom)", tmp_path)
    regridded = tmp_path / "hst_on_muse.fits"
    assert main(["regrid", reference, target, "--output", str(regridded)]) == 0
    out = tmp_path / "fit.json"
    with caplog.at_level("WARNING", logger="astromix"):
        assert main(["fit-photometry", target, str(regridded), "--no-reference-psf",
                     "--fix-beta", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["scale"]["value"] == pytest.approx(1.5, abs=4 * doc["scale"]["error"])
    assert "PHOTFLAM" not in caplog.text


def test_fit_photometry_warns_for_hst_without_photflam(pair, tmp_path, caplog):
    target, reference = pair
    with fits.open(reference) as hdul:
        del hdul["SCI"].header["PHOTFLAM"]
        hdul[0].header["TELESCOP"] = "HST"
        hdul[0].header["INSTRUME"] = "ACS"
        stripped = tmp_path / "hst_stripped.fits"
        hdul.writeto(stripped)
    with caplog.at_level("WARNING", logger="astromix"):
        assert main(["fit-photometry", target, str(stripped), "--no-reference-psf",
                     "--fix-beta", "3"]) == 0
    assert "looks like an HST image (HST ACS) but has no PHOTFLAM" in caplog.text


def test_fit_photometry_star_bg_is_per_target_pixel(tmp_path):
    """--star's bg in the JSON is the offset in target = scale * reference(on the target's
    pixels) + bg: the reference's background of 0.5 per 0.05" pixel is 8 per 0.2" one."""
    from astromix.models.moffat import MoffatStar

    rng = np.random.default_rng(5)
    files = []
    for name, pixel, n, fwhm, flux, bg, sigma in (("target", 0.2, 41, 0.8, 500.0, 1.0, 0.05),
                                                  ("reference", 0.05, 164, 0.3, 100.0, 0.5,
                                                   0.01)):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [53.0, -27.8]
        w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
        w.wcs.cdelt = [-pixel / 3600, pixel / 3600]
        y, x = np.mgrid[:n, :n]
        c = (n - 1) / 2
        data = MoffatStar(flux, c, c, fwhm / pixel, 3.0)(x, y) + bg
        data += rng.normal(0, sigma, data.shape)
        hdr = w.to_header()
        path = tmp_path / f"{name}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, hdr, name="DATA"),
                      fits.ImageHDU(np.full(data.shape, sigma ** 2), hdr, name="STAT")]
                     ).writeto(path)
        files.append(str(path))
    out = tmp_path / "star.json"
    assert main(["fit-photometry", *files, "--flux-unit", "none", "--no-reference-psf",
                 "--star", "53.0", "-27.8", "2.0", "--json", str(out)]) == 0
    star = json.loads(out.read_text())["star"]
    assert star["scale"]["value"] == pytest.approx(5.0, abs=4 * star["scale"]["error"])
    truth = 1.0 - 5.0 * 0.5 * (0.2 / 0.05) ** 2
    assert star["bg"]["value"] == pytest.approx(truth, abs=4 * star["bg"]["error"])
