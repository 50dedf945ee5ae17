"""Tests of ``astromix psf-mixture`` (forcepho's make_psf.py), run through ``main``.

The PSF is a cut-out of the shipped empirical JWST NIRCam F200W PSF (4x oversampled,
header OVERSAMP = 4), written to a temporary FITS file with its header.
"""

import contextlib
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import to_numpy

from astromix import InputError
from astromix.cli import main
from astromix.cli.psf_mixture import header_oversampling, output_paths, read_psf_image

h5py = pytest.importorskip("h5py")

#: A real FITS file shipped with the tests (61 x 61 SCI and ERR image extensions).
SHIPPED = Path(__file__).parent / "data" / "jwst_f200w_point_source.fits"

BAND = "F200W"
HALF = 100  # the cut-out is 201 x 201 image px around the centre of the 535 x 535 PSF
TRIM = 60  # leaves 81 x 81 image px (about 20 science px), as --trim 227 on the full PSF


def _run(argv):
    """main(argv) with its stdout and stderr captured: (code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("astromix psf-mixture: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def psf_fits(tmp_path_factory):
    from astromix.datasets import load_jwst_f200w_psf

    image, header = load_jwst_f200w_psf()
    c = image.shape[0] // 2
    cut = image[c - HALF:c + HALF + 1, c - HALF:c + HALF + 1]
    path = tmp_path_factory.mktemp("psf") / "psf_f200w.fits"
    fits.PrimaryHDU(cut.astype(np.float32), header=header).writeto(path)
    return path, cut


@pytest.fixture(scope="module")
def fitted(psf_fits, tmp_path_factory):
    """One run with every output: (code, out, err, outdir, h5 path)."""
    path, _ = psf_fits
    outdir = tmp_path_factory.mktemp("out") / "mixtures"  # created by the command
    h5 = outdir / "psf_nircam.h5"
    code, out, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                           "--trim", str(TRIM), "--ngauss", "3", "--outname", str(h5),
                           "--savefig", "--fitsout", "1", "--seed", "1"])
    return code, out, err, outdir, h5


def test_help_lists_command():
    code, out, _ = _run(["--help"])
    assert code == 0 and "psf-mixture" in out
    code, out, _ = _run(["psf-mixture", "--help"])
    assert code == 0
    for option in ("--band", "--psf_image", "--ext", "--oversample", "--trim", "--ngauss",
                   "--snr", "--outname", "--overwrite", "--savefig", "--fitsout", "--method",
                   "--ngauss_neg", "--seed"):
        assert option in out, option


def test_run_succeeds_and_reports(fitted):
    code, out, err, _, h5 = fitted
    assert code == 0, err
    assert "Traceback" not in err
    assert "oversampling 4 (header OVERSAMP)" in out
    assert "fitted 3 Gaussians in" in out
    table = out[out.index("   k       amp"):].splitlines()[1:4]
    assert [int(line.split()[0]) for line in table] == [0, 1, 2]
    assert "max|residual|/peak = " in out and "sum|residual|/flux = " in out
    assert f"wrote {h5} (group '{BAND}')" in out


def test_hdf5_group(fitted):
    from astromix.io.forcepho import read_psf_mixture

    code, out, _, _, h5 = fitted
    assert code == 0
    with h5py.File(h5, "r") as f:
        assert list(f) == [BAND]
        group = f[BAND]
        assert int(group.attrs["n_psf_per_source"]) == 9 * 3
        params = group["parameters"][()]
    assert params.shape == (1, 27)
    assert set(params.dtype.names) == {"amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy", "sersic_bin"}
    assert np.array_equal(params["sersic_bin"][0], np.repeat(np.arange(9), 3))
    mixture = read_psf_mixture(h5, BAND)
    assert len(mixture) == 3
    assert np.all(np.diff(mixture.amp) <= 0)  # sorted by decreasing amplitude
    # forcepho's amplitudes: the part of the PSF's flux the mixture holds (the 81 x 81
    # px fitted of the 201 x 201 cut-out; checked against the images in test_fits_output)
    assert 0.75 < mixture.flux < 1.0
    # The printed table holds the same numbers.
    rows = out[out.index("   k       amp"):].splitlines()[1:4]
    printed = np.array([[float(v) for v in line.split()[1:]] for line in rows])
    stored = np.column_stack([params[0, :3][n] for n in ("amp", "xcr", "ycr", "Cxx", "Cyy",
                                                         "Cxy")])
    np.testing.assert_allclose(printed, stored, atol=1e-5)
    # F200W: about 0.9-1.2 science px core width (2 px FWHM at 0.031"/px).
    _, _, cov = mixture.moments()
    assert 0.5 < np.sqrt(np.trace(cov) / 2) < 5


def test_fits_output(fitted, psf_fits):
    from astromix.io.forcepho import read_psf_mixture

    code, _, _, outdir, h5 = fitted
    _, cut = psf_fits
    assert code == 0
    png, fits_path = output_paths(str(h5), BAND)
    assert fits_path == str(outdir / f"psf_nircam_{BAND}.fits")
    with fits.open(fits_path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "TARGET", "MODEL", "RESIDUAL", "PARAMS"]
        target, model, resid = (hdul[n].data for n in ("TARGET", "MODEL", "RESIDUAL"))
        for img in (target, model, resid):
            assert img.shape == (81, 81)
        np.testing.assert_allclose(target, cut[TRIM:-TRIM, TRIM:-TRIM].astype(np.float32))
        np.testing.assert_allclose(resid, target - model, atol=1e-12)
        head = hdul[0].header
        assert head["BAND"] == BAND and head["NGAUSS"] == 3 and head["TRIM"] == TRIM
        assert head["OVERSAMP"] == 4.0
        assert head["MAXRESPK"] == pytest.approx(np.abs(resid).max() / target.max(), rel=1e-6)
        assert head["L1FLUX"] == pytest.approx(np.abs(resid).sum() / target.sum(), rel=1e-6)
        assert head["MAXRESPK"] < 0.15  # three Gaussians cannot follow the hexagonal rings
        table = hdul["PARAMS"].data
        assert list(table.columns.names) == ["amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy"]
        assert len(table) == 3
        centre = hdul["TARGET"].header["PSFCENX"], hdul["TARGET"].header["PSFCENY"]
        # the PSF centre is the centre of the trimmed image, (n - 1) / 2, as in forcepho's
        # make_psf (not the mixture's centroid, which its broad components pull off)
        assert centre == (40.0, 40.0)
        hdul_flux = hdul["MODEL"].header["PSFFLUX"]
        frac = hdul["MODEL"].header["FLUXFRAC"]
        # the header's flux is the fitted mixture's (the model image holds nearly all of it);
        # the default l1max objective on this 81-px cut-out gives up some of the halo
        assert hdul_flux == pytest.approx(model.sum(), rel=2e-3)
        assert 0.75 < hdul_flux / target.sum() < 1.05
        # the flux fraction: the mixture's flux over the whole input image's
        assert frac == pytest.approx(model.sum() / cut.sum(), rel=2e-3)
        assert hdul[0].header["FLUXFRAC"] == frac
    # The table is the HDF5 group's content, in science pixels, with forcepho's
    # amplitudes: they sum to the fraction of the input image's flux the mixture holds.
    mixture = read_psf_mixture(h5, BAND)
    assert mixture.flux == pytest.approx(model.sum() / cut.sum(), rel=2e-3)
    assert table["amp"].sum() == pytest.approx(frac, rel=1e-6)
    np.testing.assert_allclose(table["amp"], mixture.amp, rtol=1e-6)
    np.testing.assert_allclose(table["xcr"], mixture.mean[:, 0], atol=1e-6)
    np.testing.assert_allclose(table["Cxx"], mixture.cov[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(table["Cxy"], mixture.cov[:, 0, 1], rtol=1e-5, atol=1e-7)
    # The MODEL image is that mixture rendered in the oversampled pixels.
    from astromix import GaussianMixture

    amp = table["amp"] * hdul_flux / frac
    mean = np.column_stack([table["xcr"], table["ycr"]]) * 4 + centre
    cov = np.empty((3, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = table["Cxx"] * 16, table["Cyy"] * 16
    cov[:, 0, 1] = cov[:, 1, 0] = table["Cxy"] * 16
    rendered = to_numpy(GaussianMixture(amp, mean, cov).render(model.shape))
    np.testing.assert_allclose(rendered, model, atol=1e-6 * model.max())


def test_png_output(fitted):
    code, _, _, outdir, h5 = fitted
    assert code == 0
    png, _ = output_paths(str(h5), BAND)
    assert png == str(outdir / f"psf_nircam_{BAND}.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[1] > 3 * img.shape[0]  # five panels side by side
    # No temporary files are left behind.
    assert sorted(os.listdir(outdir)) == sorted(
        ["psf_nircam.h5", f"psf_nircam_{BAND}.png", f"psf_nircam_{BAND}.fits"])


def test_overwrite_0_refuses_before_fitting(fitted, psf_fits, tmp_path, monkeypatch):
    code, _, _, outdir, h5 = fitted
    assert code == 0
    path, _ = psf_fits
    copy = tmp_path / "psf.h5"
    shutil.copy2(h5, copy)
    before = copy.read_bytes()

    import astromix.fitting

    def no_fit(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before the fit")

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", no_fit)
    code, out, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                           "--trim", str(TRIM), "--ngauss", "3", "--outname", str(copy),
                           "--overwrite", "0", "--savefig", "--fitsout", "1"])
    assert code == 2
    line = _one_line_error(err)
    assert BAND in line and str(copy) in line and "--overwrite" in line
    assert copy.read_bytes() == before  # byte-identical
    assert sorted(os.listdir(tmp_path)) == ["psf.h5"]  # no PNG, no FITS, no temporary file


def test_new_band_with_overwrite_0_keeps_others(fitted, psf_fits, tmp_path):
    from astromix.io.forcepho import read_psf_mixture

    code, _, _, _, h5 = fitted
    assert code == 0
    path, _ = psf_fits
    copy = tmp_path / "psf.h5"
    shutil.copy2(h5, copy)
    old = read_psf_mixture(copy, BAND)
    # A second band, smaller and explicit oversampling, goes in beside the first.
    code, out, err = _run(["psf-mixture", "--band", "F200W_small", "--psf_image", str(path),
                           "--trim", "80", "--ngauss", "2", "--oversample", "4", "--snr", "50",
                           "--outname", str(copy), "--overwrite", "0"])
    assert code == 0, err
    assert "oversampling 4 (--oversample)" in out
    assert "chi2 = " in out
    with h5py.File(copy, "r") as f:
        assert sorted(f) == [BAND, "F200W_SMALL"]  # the group is --band in upper case
    assert read_psf_mixture(copy, BAND) == old
    assert len(read_psf_mixture(copy, "F200W_small")) == 2
    assert sorted(os.listdir(tmp_path)) == ["psf.h5"]  # no --savefig, --fitsout 0
    # --overwrite 1 (the default) replaces that band only.
    code, _, err = _run(["psf-mixture", "--band", "F200W_small", "--psf_image", str(path),
                         "--trim", "80", "--ngauss", "1", "--outname", str(copy)])
    assert code == 0, err
    assert len(read_psf_mixture(copy, "F200W_small")) == 1
    assert read_psf_mixture(copy, BAND) == old


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.fits"
    out = tmp_path / "out.h5"
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(missing),
                         "--outname", str(out)])
    assert code == 2
    line = _one_line_error(err)
    assert str(missing) in line and "does not exist" in line
    assert not out.exists()


def _write(path, hdus):
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize("make, ext, match", [
    (lambda p: _write(p, [fits.PrimaryHDU(np.ones((9, 9)))]), "3", "has no HDU 3"),
    (lambda p: _write(p, [fits.PrimaryHDU(np.ones((9, 9)))]), "SCI", "has no HDU 'SCI'"),
    (lambda p: _write(p, [fits.PrimaryHDU(np.ones((2, 9, 9)))]), "0", "3-d"),
    (lambda p: _write(p, [fits.PrimaryHDU()]), "0", "holds no data"),
    (lambda p: _write(p, [fits.PrimaryHDU(np.where(np.eye(9) > 0, np.nan, 1.0))]), "0",
     "9 NaN or infinite pixel"),
    (lambda p: _write(p, [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="D", array=np.ones(3))], name="TAB")]), "TAB",
     "not an image"),
    (lambda p: p.write_bytes(b"not a FITS file at all") and p, "0", "not a readable FITS"),
], ids=["hdu-number", "hdu-name", "cube", "no-data", "nan", "table", "not-fits"])
def test_bad_image(tmp_path, make, ext, match):
    path = make(tmp_path / "psf.fits")
    out = tmp_path / "out.h5"
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--ext", ext, "--outname", str(out)])
    assert code == 2
    line = _one_line_error(err)
    assert match in line and str(path) in line
    assert not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--ngauss", "2", "--ngauss_neg", "2"], "--ngauss_neg 2 must be smaller"),
    (["--trim", "40"], "--trim 40 leaves nothing"),
    (["--band", "a/b"], "not a valid band name"),
], ids=["ngauss_neg", "trim", "band"])
def test_bad_options(tmp_path, extra, match):
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    out = tmp_path / "out.h5"
    argv = ["psf-mixture", "--band", BAND, "--psf_image", str(path), "--outname", str(out)]
    code, _, err = _run(argv + extra)
    assert code == 2
    assert match in _one_line_error(err)
    assert not out.exists()


def test_outname_not_hdf5_refused(tmp_path):
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    out = tmp_path / "out.h5"
    out.write_text("precious, not HDF5")
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--outname", str(out)])
    assert code == 2
    assert "not a readable HDF5 file" in _one_line_error(err)
    assert out.read_text() == "precious, not HDF5"


@pytest.mark.parametrize("argv", [
    ["--overwrite", "2"], ["--fitsout", "yes"], ["--ngauss", "0"], ["--oversample", "-1"],
    ["--method", "nuts"],
])
def test_usage_errors(tmp_path, argv):
    base = ["psf-mixture", "--band", BAND, "--psf_image", "x.fits", "--outname",
            str(tmp_path / "o.h5")]
    code, _, err = _run(base + argv)
    assert code == 2
    assert "usage:" in err
    code, _, err = _run(["psf-mixture", "--psf_image", "x.fits", "--outname", "o.h5"])
    assert code == 2 and "--band" in err


def test_read_psf_image_by_name(tmp_path):
    data = np.arange(35.0).reshape(5, 7)
    path = _write(tmp_path / "psf.fits",
                  [fits.PrimaryHDU(header=fits.Header([("DET_SAMP", 2)])),
                   fits.ImageHDU(data, name="OVERDIST")])
    image, header, primary = read_psf_image(str(path), "overdist")
    assert np.array_equal(image, data) and image.dtype == np.float64
    assert header_oversampling(header, primary) == (2.0, "header DET_SAMP")


def test_header_oversampling(caplog):
    assert header_oversampling(fits.Header()) == (1.0, "default")
    assert header_oversampling(fits.Header([("OVERSAMP", 4)])) == (4.0, "header OVERSAMP")
    both = fits.Header([("OVERSAMP", 4), ("DET_SAMP", 4)])
    assert header_oversampling(both) == (4.0, "header DET_SAMP")
    # The first header that has a keyword decides.
    assert header_oversampling(fits.Header([("OVERSAMP", 2)]), both) == (2.0, "header OVERSAMP")
    with caplog.at_level(logging.WARNING, logger="astromix"):
        value = header_oversampling(fits.Header([("OVERSAMP", 1), ("DET_SAMP", 4)]))
    assert value == (4.0, "header DET_SAMP")
    assert "DET_SAMP" in caplog.text and "OVERSAMP" in caplog.text
    for bad in (0, -2, "four"):
        with pytest.raises(InputError, match="--oversample"):
            header_oversampling(fits.Header([("DET_SAMP", bad)]))


def _stpsf_like(path, oversample=4, sigma=1.5, size=25):
    # The layout of an STPSF/WebbPSF file (poppy's calc_psf, output "both"): the
    # oversampled PSF in the primary HDU (OVERSAMP and DET_SAMP = oversample),
    # then the DET_SAMP extension rebinned to detector pixels, whose header
    # poppy copies from the primary and sets OVERSAMP = 1 and CALCSAMP.
    n = size * oversample
    y, x = (np.mgrid[:n, :n] + 0.5) / oversample - size / 2.0
    over = np.exp(-(x * x + y * y) / (2.0 * sigma ** 2))
    det = over.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    head = fits.Header([("EXTNAME", "OVERSAMP"), ("OVERSAMP", oversample),
                        ("DET_SAMP", oversample), ("PIXELSCL", 0.031 / oversample)])
    dhead = head.copy()
    dhead["EXTNAME"] = "DET_SAMP"
    dhead["OVERSAMP"] = 1
    dhead["CALCSAMP"] = oversample
    dhead["PIXELSCL"] = 0.031
    return _write(path, [fits.PrimaryHDU(over, header=head), fits.ImageHDU(det, header=dhead)])


def test_header_oversampling_detector_sampled(tmp_path, caplog):
    """STPSF's extensions rebinned to detector pixels keep the calculation's
    DET_SAMP: their OVERSAMP (1) is the sampling, without a warning."""
    path = _stpsf_like(tmp_path / "stpsf.fits")
    image, header, primary = read_psf_image(str(path), "DET_SAMP")
    assert image.shape == (25, 25)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        assert header_oversampling(header, primary) == (1.0, "header OVERSAMP")
    assert caplog.text == ""
    image, header, primary = read_psf_image(str(path), 0)
    assert image.shape == (100, 100)
    assert header_oversampling(header, primary) == (4.0, "header DET_SAMP")
    # DET_DIST, or a CALCSAMP card, marks such an extension too; without
    # OVERSAMP it is at detector sampling
    for cards in ([("EXTNAME", "DET_DIST"), ("OVERSAMP", 1), ("DET_SAMP", 2)],
                  [("CALCSAMP", 2), ("OVERSAMP", 1), ("DET_SAMP", 2)]):
        assert header_oversampling(fits.Header(cards)) == (1.0, "header OVERSAMP")
    assert header_oversampling(fits.Header([("EXTNAME", "det_samp"), ("DET_SAMP", 4)]),
                               fits.Header([("DET_SAMP", 4)]))[0] == 1.0
    with pytest.raises(InputError, match="--psf-oversampling"):
        header_oversampling(fits.Header([("OVERSAMP", "four")]), option="--psf-oversampling")


def test_stpsf_extensions_in_fit_scene_and_providers(tmp_path):
    """fit-scene's PSF images and the mosaic ImageProvider read the oversampling as
    psf-mixture does: the fitted PSF has the PSF's width in detector pixels from
    either extension (had the detector-sampled one been taken at DET_SAMP = 4,
    the mixture would have been 4 times narrower)."""
    from astromix.cli.fit_scene import load_psf
    from astromix.mosaic.providers import ImageProvider

    path = _stpsf_like(tmp_path / "stpsf.fits", sigma=1.5)
    for hdu, oversampling in ((0, 4), ("DET_SAMP", 1)):
        assert ImageProvider(str(path), hdu=hdu).oversampling == oversampling
    # fit-scene takes the first image: a detector-sampled primary (poppy's
    # output "detector")
    with fits.open(path) as hdul:
        det = fits.PrimaryHDU(hdul["DET_SAMP"].data, header=hdul["DET_SAMP"].header)
    _write(tmp_path / "det.fits", [det])
    for name in ("stpsf.fits", "det.fits"):
        psf = load_psf(str(tmp_path / name), n_components=2)
        m = psf.mixture
        cov = (m.amp[:, None, None] * m.cov).sum(axis=0) / m.amp.sum()
        # a pixel-integrated Gaussian of sigma 1.5 px: variance 1.5^2 + 1/12 at most
        assert np.allclose(np.diag(cov), 1.5 ** 2, rtol=0.08), (name, cov)


def test_lower_case_band_writes_upper_case_group(psf_fits, tmp_path, monkeypatch):
    """forcepho's make_psf.py writes the group band.upper() and forcepho's PSFStore looks
    "F200W" up; the PNG/FITS names keep the band as typed, as make_psf.py's do."""
    from astromix.io.forcepho import read_psf_mixture

    path, _ = psf_fits
    h5 = tmp_path / "psf.h5"
    code, out, err = _run(["psf-mixture", "--band", "f200w", "--psf_image", str(path),
                           "--trim", "80", "--ngauss", "1", "--outname", str(h5),
                           "--fitsout", "1"])
    assert code == 0, err
    assert f"wrote {h5} (group 'F200W')" in out
    with h5py.File(h5, "r") as f:
        assert list(f) == ["F200W"]
        assert f["F200W"]["parameters"].shape == (1, 9)  # forcepho's PSFStore.lookup("F200W")
    assert len(read_psf_mixture(h5, "F200W")) == 1
    assert sorted(os.listdir(tmp_path)) == ["psf.h5", "psf_f200w.fits"]
    with fits.open(tmp_path / "psf_f200w.fits") as hdul:
        assert hdul[0].header["BAND"] == "F200W"
    # --overwrite 0 sees the band whatever its case, before any fit
    import astromix.fitting

    def no_fit(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before the fit")

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", no_fit)
    before = h5.read_bytes()
    code, _, err = _run(["psf-mixture", "--band", "F200w", "--psf_image", str(path),
                         "--outname", str(h5), "--overwrite", "0"])
    assert code == 2
    assert "already has band 'F200W'" in _one_line_error(err)
    assert h5.read_bytes() == before


def test_damaged_outname_refused_before_fitting(tmp_path, monkeypatch):
    """An HDF5 file whose root symbol-table node is damaged: refused with a one-line error
    naming it, before any fit, and left byte-identical."""
    from astromix import GaussianMixture
    from astromix.io.forcepho import write_psf_mixture

    out = tmp_path / "psf.h5"
    write_psf_mixture(out, "F090W", GaussianMixture([1.0], [[0, 0]], [np.eye(2)]))
    data = out.read_bytes()
    i = data.index(b"SNOD")  # the signature of the root group's symbol-table node
    out.write_bytes(data[:i] + b"XXXX" + data[i + 4:])
    before = out.read_bytes()
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    import astromix.fitting

    def no_fit(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before the fit")

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", no_fit)
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--outname", str(out)])
    assert code == 2
    line = _one_line_error(err)
    assert str(out) in line and "damaged" in line and repr(BAND) in line
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["psf.fits", "psf.h5"]


def _truncated(tmp_path):
    """The shipped file cut inside the data of its SCI extension (an interrupted copy)."""
    path = tmp_path / "truncated.fits"
    path.write_bytes(SHIPPED.read_bytes()[:10000])
    return path


def _bad_bitpix(tmp_path):
    """The shipped file with BITPIX -33 (no such FITS type) in its image extensions."""
    data = SHIPPED.read_bytes()
    card = b"BITPIX  =                  -32"
    assert data.count(card) == 2
    path = tmp_path / "bitpix.fits"
    path.write_bytes(data.replace(card, b"BITPIX  =                  -33"))
    return path


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("make", [_truncated, _bad_bitpix], ids=["truncated", "bitpix"])
def test_damaged_fits_image(tmp_path, make):
    path = make(tmp_path)
    out = tmp_path / "out.h5"
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--ext", "SCI", "--outname", str(out)])
    assert code == 2
    line = _one_line_error(err)
    assert str(path) in line and "could not be read" in line
    assert not out.exists()


@pytest.fixture
def no_fit(monkeypatch):
    """Make the fit fail loudly: the refusals below must come before it."""
    import astromix.fitting

    def fit(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before the fit")

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", fit)


@pytest.mark.parametrize("trim, ngauss, left", [(20, 2, 1), (19, 2, 3), (18, 5, 5)])
def test_trim_leaving_fewer_pixels_than_parameters_refused(tmp_path, no_fit, trim, ngauss,
                                                           left):
    """--trim 19 on a 41 x 41 image left 3 x 3 = 9 pixels for 2 Gaussians (12 parameters) and
    wrote an arbitrary fit; refused with the pixels left and the minimum (6 per Gaussian + 1)."""
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    out = tmp_path / "out.h5"
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path), "--outname",
                         str(out), "--trim", str(trim), "--ngauss", str(ngauss)])
    assert code == 2
    line = _one_line_error(err)
    assert 41 - 2 * trim == left
    assert f"--trim {trim} leaves {left} x {left} = {left * left} pixel(s)" in line
    assert f"{6 * ngauss} parameters) needs at least {6 * ngauss + 1}" in line
    assert str(path) in line
    assert not out.exists()


def test_enough_pixels_after_trim_accepted(tmp_path, monkeypatch):
    """3 x 3 = 9 pixels are enough for one Gaussian (6 parameters): the fit is reached."""
    import astromix.fitting

    class Reached(Exception):
        pass

    def fit(image, *args, **kwargs):
        raise Reached(image.shape)

    monkeypatch.setattr(astromix.fitting, "fit_psf_mixture", fit)
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    with pytest.raises(Reached):
        main(["psf-mixture", "--band", BAND, "--psf_image", str(path), "--outname",
              str(tmp_path / "out.h5"), "--trim", "19", "--ngauss", "1"])


@pytest.mark.parametrize("outname, match", [
    ("", "--outname: the file name is empty"),
    ("   ", "--outname: the file name is empty"),
    ("{tmp}/sub/", "names a folder, not a file"),
    ("/proc/psf.h5", "cannot write in the output folder '/proc'"),
], ids=["empty", "blank", "slash", "proc"])
def test_bad_outname_refused_before_fitting(tmp_path, no_fit, outname, match):
    """--outname "" started the fit, then said " exists and is not a regular file";
    /proc/psf.h5 failed after the fit, naming the temporary file."""
    if outname.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--outname", outname.format(tmp=tmp_path)])
    assert code == 2
    assert match in _one_line_error(err)
    assert sorted(os.listdir(tmp_path)) == ["psf.fits"]


def test_png_output_taken_by_a_folder_refused_before_fitting(tmp_path, no_fit):
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(np.ones((41, 41)))])
    png, _ = output_paths(str(tmp_path / "psf.h5"), BAND)
    os.mkdir(png)
    code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                         "--outname", str(tmp_path / "psf.h5"), "--savefig"])
    assert code == 2
    line = _one_line_error(err)
    assert repr(png) in line and "is a folder" in line
    assert not (tmp_path / "psf.h5").exists()


def _ring(n=41):
    """A positive PSF-like image that is zero within 10 px of its centre."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return np.where(np.hypot(x, y) > 10, np.exp(-np.hypot(x, y) / 8), 0.0)


@pytest.mark.parametrize("image, extra, match", [
    (np.zeros((41, 41)), ["--snr", "20"], "has no positive total flux (its pixels sum to 0)"),
    (-np.ones((41, 41)), ["--snr", "20"], "has no positive total flux (its pixels sum to -1681)"),
    (-np.ones((41, 41)), [], "has no positive total flux"),
    (_ring(), ["--trim", "14", "--snr", "20"], "has no positive pixel left to fit after trim=14"),
], ids=["zero-snr", "negative-snr", "negative", "trimmed-away"])
def test_image_without_flux_refused_naming_the_file(tmp_path, no_fit, image, extra, match):
    """An all-zero or negative PSF image with --snr gave a divide-by-zero RuntimeWarning and
    "weight (inverse variance) must be finite and >= 0" (no weight is given), without the
    file name; now refused before the fit, naming the file."""
    import warnings

    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(image)])
    out = tmp_path / "out.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        code, _, err = _run(["psf-mixture", "--band", BAND, "--psf_image", str(path),
                             "--outname", str(out), *extra])
    assert code == 2
    line = _one_line_error(err)
    assert f"PSF image {str(path)!r}, HDU 0 {match}" in line
    assert "weight" not in line
    assert not out.exists()


@pytest.mark.parametrize("value", ["1e300", "1e-300", "1e7"])
@pytest.mark.parametrize("where", ["option", "header"])
def test_oversampling_out_of_range_refused(tmp_path, no_fit, value, where):
    """--oversample 1e300 ran the fit, then ended in an OverflowError traceback."""
    header = fits.Header([("DET_SAMP", float(value))]) if where == "header" else None
    path = _write(tmp_path / "psf.fits", [fits.PrimaryHDU(_ring() + 1.0, header=header)])
    argv = ["psf-mixture", "--band", BAND, "--psf_image", str(path), "--outname",
            str(tmp_path / "out.h5")]
    code, _, err = _run(argv + (["--oversample", value] if where == "option" else []))
    assert code == 2
    line = _one_line_error(err)
    assert f"oversampling {float(value):g} is outside [1e-06, 1e+06]" in line
    assert ("(--oversample)" if where == "option" else "(header DET_SAMP; give --oversample)") \
        in line
    assert sorted(os.listdir(tmp_path)) == ["psf.fits"]
