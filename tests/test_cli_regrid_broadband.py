"""Tests of ``astromix regrid`` and ``astromix broadband-image``."""

import functools
import types

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import centred_tan_wcs

from astromix.cli import main
from astromix.errors import InputError
from astromix.photometry import read_image

_wcs = functools.partial(centred_tan_wcs, crval=(53.0, -27.8))


@pytest.fixture
def images(tmp_path):
    """A fine reference (0.05"/px, 80 x 80, SCI + ERR) with sources, a coarse target (0.2"/px)."""
    rng = np.random.default_rng(4)
    n = 80
    y, x = np.mgrid[0:n, 0:n]
    ref = np.zeros((n, n))
    for _ in range(5):
        cx, cy = rng.uniform(25, 55, 2)
        ref += rng.uniform(1, 3) * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 2.0 ** 2)
    reference = tmp_path / "hst.fits"
    hdr = _wcs(0.05, n).to_header()
    hdr["BUNIT"] = "electron/s"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(ref, hdr, name="SCI"),
                  fits.ImageHDU(np.full((n, n), 0.1), hdr, name="ERR")]).writeto(reference)
    target = tmp_path / "muse.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(np.zeros((24, 24), np.float32), _wcs(0.2, 24).to_header(),
                                name="DATA")]).writeto(target)
    return str(reference), str(target), ref


def test_regrid_conserves_flux(images, tmp_path, capsys):
    reference, target, ref = images
    out = tmp_path / "sub" / "hst_on_muse.fits"
    assert main(["regrid", reference, target, "--output", str(out)]) == 0
    assert "area ratio 16" in capsys.readouterr().out
    img = read_image(out)
    assert img.shape == (24, 24)
    # the target's grid and WCS
    twcs = WCS(fits.getheader(target, "DATA")).celestial
    np.testing.assert_allclose(img.wcs.wcs.crval, twcs.wcs.crval)
    np.testing.assert_allclose(img.wcs.wcs.cdelt, twcs.wcs.cdelt)
    assert str(img.unit) == "electron / s"
    # the 80 x 80 fine pixels are the central 20 x 20 coarse ones: all the flux lands there
    good = ~img.mask
    assert good[2:22, 2:22].all()
    np.testing.assert_allclose(img.data[good].sum(), ref.sum(), rtol=1e-9)
    # variance: 0.1^2 per fine pixel, times the area ratio -> 16 x 0.01 per coarse pixel
    np.testing.assert_allclose(img.uncertainty.array[2:22, 2:22], 0.16, rtol=1e-6)
    # interp and adaptive conserve the total too, to a smaller accuracy
    for method in ("interp", "adaptive"):
        other = tmp_path / f"{method}.fits"
        assert main(["regrid", reference, target, "-o", str(other), "--method", method]) == 0
        o = read_image(other)
        np.testing.assert_allclose(o.data[~o.mask].sum(), ref.sum(), rtol=0.05)
    # the output exists: refused without --overwrite, replaced with it
    assert main(["regrid", reference, target, "--output", str(out)]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
    assert main(["regrid", reference, target, "--output", str(out), "--overwrite",
                 "--ext", "SCI", "--target-ext", "DATA"]) == 0


def test_regrid_keeps_the_photometric_keywords(images, tmp_path):
    """The regridded HST image keeps PHOTFLAM, EXPTIME, BUNIT, the filter...: converted with
    them, its total flux is that of the original, raw counts x PHOTFLAM / EXPTIME."""
    from astromix.photometry import hst_filter_name, rescale_to_flux_units

    _, target, ref = images
    reference = tmp_path / "hst_counts.fits"
    hdr = _wcs(0.05, 80).to_header()
    hdr.update({"BUNIT": "ELECTRONS", "EXPTIME": 400.0, "PHOTFLAM": 1.9e-19,
                "PHOTPLAM": 6001.3, "PHOTZPT": -21.1, "FILTNAM1": "F606W", "FILTNAM2": "",
                "PIXAR_SR": 5.9e-14})
    primary = fits.Header({"TELESCOP": "HST", "INSTRUME": "WFPC2"})
    fits.HDUList([fits.PrimaryHDU(header=primary),
                  fits.ImageHDU(ref, hdr, name="SCI")]).writeto(reference)
    out = tmp_path / "hst_on_muse.fits"
    assert main(["regrid", str(reference), target, "--output", str(out)]) == 0
    header = fits.getheader(out, "DATA")
    for key in ("PHOTFLAM", "PHOTPLAM", "PHOTZPT", "EXPTIME", "TELESCOP", "INSTRUME"):
        assert header[key] == (hdr.get(key) or primary[key]), key
    assert "PIXAR_SR" not in header     # the reference's pixel area: no longer true
    assert header["CDELT2"] == pytest.approx(0.2 / 3600)      # the target's own WCS
    assert hst_filter_name(header) == "F606W"
    img = read_image(out)
    flux = rescale_to_flux_units(img)
    np.testing.assert_allclose(flux.data[~flux.mask].sum(), ref.sum() * 1.9e-19 / 400.0,
                               rtol=1e-9)


def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"astromix {command}: error: ") and err.count("\n") == 1, err
    return err


def test_regrid_bad_input(images, tmp_path, capsys):
    reference, target, _ = images
    out = str(tmp_path / "o.fits")
    assert main(["regrid", reference, str(tmp_path / "missing.fits"), "-o", out]) == 2
    assert "no such file" in _one_line_error(capsys, "regrid")
    nowcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.ones((5, 5))).writeto(nowcs)
    assert main(["regrid", reference, str(nowcs), "-o", out]) == 2
    assert "celestial WCS" in _one_line_error(capsys, "regrid")
    far = tmp_path / "far.fits"
    fits.PrimaryHDU(np.ones((5, 5)), _wcs(0.2, 5, crval=(60.0, 10.0)).to_header()).writeto(far)
    assert main(["regrid", reference, str(far), "-o", out]) == 2
    assert "does not overlap" in _one_line_error(capsys, "regrid")
    assert main(["regrid", reference, target, "-o", out, "--method", "nearest"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "o.fits").exists()


WAVE = 5000.0 + np.arange(4.0)


@pytest.fixture
def cube(tmp_path):
    """A 4-plane MUSE-like cube (DATA, STAT, DQ) at 5000-5003 A and a triangle-ish filter."""
    rng = np.random.default_rng(5)
    data = rng.uniform(1, 2, (4, 6, 5))
    var = rng.uniform(0.1, 0.2, (4, 6, 5))
    dq = np.zeros((4, 6, 5), np.int16)
    dq[1, 2, 3] = 1                                     # one bad plane at one pixel
    w = _wcs(0.2, 6)
    hdr = fits.Header()
    hdr.update(w.to_header())
    hdr["WCSAXES"] = 3
    hdr["CTYPE3"], hdr["CUNIT3"] = "AWAV", "Angstrom"
    hdr["CRVAL3"], hdr["CRPIX3"], hdr["CDELT3"] = WAVE[0], 1.0, 1.0
    hdr["BUNIT"] = "10**(-20)*erg/s/cm**2/Angstrom"
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, hdr, name="DATA"),
                  fits.ImageHDU(var, hdr, name="STAT"),
                  fits.ImageHDU(dq, hdr, name="DQ")]).writeto(path)
    filt = tmp_path / "filter.dat"
    filt.write_text("# wavelength [A] throughput\n5000 0\n5001 1\n5002 1\n5003 0\n")
    return str(path), str(filt), data, var


def test_broadband_image_by_hand(cube, tmp_path, capsys):
    path, filt, data, var = cube
    out = tmp_path / "bb.fits"
    assert main(["broadband-image", path, filt, "--output", str(out)]) == 0
    assert "4 planes" in capsys.readouterr().out
    img = read_image(out)
    # each plane covers +-0.5 A: the filter integrated over them
    w = np.array([0.125, 0.875, 0.875, 0.125])
    expect = np.tensordot(w, data, axes=1) / w.sum()
    expect_var = np.tensordot(w ** 2, var, axes=1) / w.sum() ** 2
    wb = w[[0, 2, 3]]                                   # the pixel with a bad plane
    expect[2, 3] = np.dot(wb, data[[0, 2, 3], 2, 3]) / wb.sum()
    expect_var[2, 3] = np.dot(wb ** 2, var[[0, 2, 3], 2, 3]) / wb.sum() ** 2
    np.testing.assert_allclose(img.data, expect, rtol=1e-12)
    np.testing.assert_allclose(img.uncertainty.array, expect_var, rtol=1e-12)
    assert not img.mask.any() and img.shape == (6, 5)
    np.testing.assert_allclose(img.wcs.wcs.crval, [53.0, -27.8])
    assert "erg" in str(img.unit)


def test_broadband_image_bad_input(cube, tmp_path, capsys):
    path, filt, _, _ = cube
    out = str(tmp_path / "bb.fits")
    assert main(["broadband-image", path, str(tmp_path / "nofilter.dat"), "-o", out]) == 2
    assert "no such filter file" in _one_line_error(capsys, "broadband-image")
    bad = tmp_path / "bad.dat"
    bad.write_text("1 2 3\nfoo bar\n")
    assert main(["broadband-image", path, str(bad), "-o", out]) == 2
    assert "cannot read the filter curve" in _one_line_error(capsys, "broadband-image")
    image = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((5, 5))).writeto(image)
    assert main(["broadband-image", str(image), filt, "-o", out]) == 2
    assert "is not a cube" in _one_line_error(capsys, "broadband-image")
    away = tmp_path / "away.dat"
    away.write_text("7000 1\n7100 1\n")
    assert main(["broadband-image", path, str(away), "-o", out]) == 2
    assert "does not overlap" in _one_line_error(capsys, "broadband-image")
    assert main(["broadband-image", str(tmp_path / "nocube.fits"), filt, "-o", out]) == 2
    assert "no such file" in _one_line_error(capsys, "broadband-image")
    assert not (tmp_path / "bb.fits").exists()


def test_broadband_image_unknown_bandpass_name(cube, tmp_path, capsys):
    path, _, _, _ = cube
    rc = main(["broadband-image", path, "no_such_band_xyz", "-o", str(tmp_path / "bb.fits")])
    assert rc == 2
    assert "synphot" in _one_line_error(capsys, "broadband-image")


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "regrid" in text and "broadband-image" in text


@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_write_exposure_stat_is_the_variance(tmp_path, kind):
    """``regrid``'s writer stores STAT as a variance whatever the uncertainty's kind
    (an inverse variance had been written as it was)."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    from astromix.cli.regrid import write_exposure
    from astromix.data import Exposure

    sigma = np.linspace(0.5, 2.0, 36).reshape(6, 6)
    unc = {"std": StdDevUncertainty(sigma), "var": VarianceUncertainty(sigma ** 2),
           "ivar": InverseVariance(1.0 / sigma ** 2)}[kind]
    exp = Exposure(np.ones((6, 6)), uncertainty=unc, wcs=_wcs(0.2, 6))
    path = tmp_path / "out.fits"
    write_exposure(exp, path)
    with fits.open(path) as hdul:
        np.testing.assert_allclose(hdul["STAT"].data, sigma ** 2, rtol=1e-12)


def test_write_exposure_keeps_the_distortion(tmp_path):
    """An astropy WCS is written with its distortion: a SIP WCS (HST-like, 0.05"/px,
    quadratic terms of a few pixels at the edge) and the shipped DECam TPV WCS put
    every pixel, out to 2000 px, where the original does to 1e-6 px.  A plain
    ``to_header()`` had dropped the SIP cards (pixels moved by ~3 px)."""
    import warnings

    from astromix import datasets
    from astromix.cli.regrid import write_exposure
    from astromix.data import Exposure

    header = _wcs(0.05, 41).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header["A_ORDER"] = header["B_ORDER"] = 2
    header["A_2_0"], header["A_1_1"], header["B_0_2"] = 2e-6, -1e-6, 1.5e-6
    sip = WCS(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning on the community pipeline's cards
        decam = datasets.decam_multiexposure()[0]["image"]
        tpv = WCS(fits.getheader(decam, 1))
    x = np.array([0.0, 40.0, -1000.0, 2000.0, 1500.0])
    y = np.array([0.0, 50.0, 1200.0, -2000.0, 2000.0])
    for name, wcs in (("sip", sip), ("tpv", tpv)):
        path = tmp_path / f"{name}.fits"
        write_exposure(Exposure(np.ones((51, 41)), wcs=wcs), path)
        back = WCS(fits.getheader(path, "DATA"))
        bx, by = back.world_to_pixel_values(*wcs.pixel_to_world_values(x, y))
        assert np.hypot(bx - x, by - y).max() < 1e-6, name
    # the distortion matters there: without it the SIP pixels land pixels away
    plain = WCS(sip.to_header(relax=False))
    bx, by = plain.world_to_pixel_values(*sip.pixel_to_world_values(x, y))
    assert np.hypot(bx - x, by - y).max() > 1.0


def test_write_exposure_with_a_gwcs(tmp_path):
    """A gwcs exposure is written with gwcs's FITS TAN-SIP approximation: the file's
    WCS puts every pixel where the gwcs does, to 0.01 px (its world coordinates
    compared at the corners and centre); an object with no FITS form is refused
    and nothing is written."""
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gw

    from astromix.cli.regrid import write_exposure
    from astromix.data import Exposure

    s = 0.031 / 3600
    forward = ((models.Shift(-20.0) & models.Shift(-15.0))
               | models.AffineTransformation2D(matrix=[[-s * 0.999, s * 0.02],
                                                       [s * 0.015, s * 1.001]])
               | models.Pix2Sky_TAN() | models.RotateNative2Celestial(53.1, -27.8, 180.0))
    gwcs = gw.WCS([(cf.Frame2D(name="detector", unit=(u.pix, u.pix)), forward),
                   (cf.CelestialFrame(reference_frame=coord.ICRS(), name="world",
                                      unit=(u.deg, u.deg)), None)])
    exp = Exposure(np.arange(1200.0).reshape(30, 40), wcs=gwcs)
    path = tmp_path / "g.fits"
    write_exposure(exp, path)
    with fits.open(path) as hdul:
        back = WCS(hdul["DATA"].header)
        np.testing.assert_array_equal(hdul["DATA"].data, exp.data)
    x = np.array([0.0, 39.0, 0.0, 39.0, 19.5])
    y = np.array([0.0, 0.0, 29.0, 29.0, 14.5])
    ra, dec = gwcs(x, y)
    bx, by = back.world_to_pixel_values(ra, dec)
    assert np.hypot(bx - x, by - y).max() < 0.01

    # an image whose WCS object has no FITS form (Exposure itself takes only WCSs
    # that describe their axes; any object with these attributes is written)
    odd = types.SimpleNamespace(wcs=object(), shape=(3, 3), data=np.ones((3, 3)), unit=None,
                                uncertainty=None, mask=None)
    with pytest.raises(InputError, match=r"o\.fits.*\(object\) has no FITS form"):
        write_exposure(odd, tmp_path / "o.fits")
    assert not (tmp_path / "o.fits").exists()


def test_broadband_image_filter_outside_is_a_log_warning(cube, tmp_path, capsys):
    """A filter half outside the cube (a top hat over 5001.5-5005.5 A; the planes cover
    4999.5-5003.5 A): the warning is an 'astromix: WARNING' line naming the cube and the
    fraction (2 A of 4 A: 50%), not a Python warning with a source line."""
    import warnings

    path, _, _, _ = cube
    filt = tmp_path / "half.dat"
    filt.write_text("5001.5 1\n5005.5 1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["broadband-image", path, str(filt), "-o", str(tmp_path / "bb.fits")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert not caught, [str(w.message) for w in caught]
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("astromix: WARNING: cube.fits: 50.00% of the filter curve")
    assert "50.00% of the filter outside the cube" in captured.out


@pytest.mark.parametrize("ctype, crval, cdelt, cunit", [
    ("AWAV", WAVE[-1], -1.0, "Angstrom"),              # wavelength decreasing
    ("FREQ", 5.996e14, 1.0e11, "Hz"),                   # frequency increasing (radio habit)
])
def test_broadband_image_decreasing_wavelengths_name_the_cube(cube, tmp_path, capsys, ctype,
                                                              crval, cdelt, cunit):
    """A cube whose wavelengths decrease along the spectral axis is refused with a one-line
    error naming the file; it had been 'wave must increase strictly' alone."""
    path, filt, _, _ = cube
    with fits.open(path) as hdul:
        for hdu in hdul[1:]:
            hdu.header["CTYPE3"], hdu.header["CUNIT3"] = ctype, cunit
            hdu.header["CRVAL3"], hdu.header["CDELT3"] = crval, cdelt
        flipped = tmp_path / "flipped.fits"
        hdul.writeto(flipped)
    assert main(["broadband-image", str(flipped), filt, "-o", str(tmp_path / "bb.fits")]) == 2
    line = _one_line_error(capsys, "broadband-image")
    assert f"cube {str(flipped)!r}" in line and "do not increase strictly" in line
    assert not (tmp_path / "bb.fits").exists()
