"""Regression tests of review findings in image photometry, regrid and their commands.

Each test fails on the code before the fix (see the docstrings): the image fit depended on
the data units, ``fix_scale=0`` gave errors of 0, regrid's variance was 1 / area ratio too
large when upsampling and surface brightnesses were multiplied by the area ratio, bad region
files were ignored, the commands' write errors were tracebacks, ``--save-fits`` was checked
after the other outputs were written, and the batch fit had no ``return_exceptions``.
"""

import errno
import functools
import glob
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import VarianceUncertainty
from conftest import centred_tan_wcs

from astromix.cli import main
from astromix.data import Exposure
from astromix.datasets import muse_hst_hdfs
from astromix.errors import InputError
from astromix.parallel import ItemFailure
from astromix.photometry import (
    fit_image_photometry,
    fit_image_photometry_batch,
    fit_star_photometry,
    read_image,
    regrid,
    rescale_to_flux_units,
)
from astromix.photometry.image import region_mask

KERNEL = ("fwhm", "beta", "dx", "dy")


_wcs = functools.partial(centred_tan_wcs, crval=(150.0, 2.0))


def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.startswith(f"astromix {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- 1. the image fit does not depend on the data units --------------------------------------------

@pytest.fixture(scope="module")
def hdfs():
    """The shipped MUSE / HST pair of the HDF-S, the HST image in MUSE's 1e-20 erg/s/cm2/A."""
    paths = muse_hst_hdfs()
    target = read_image(paths["muse"])
    reference = rescale_to_flux_units(read_image(paths["hst"]), unit=1e-20)
    base = fit_image_photometry(target, reference)
    return target, reference, base


def _scaled(exp, k):
    return Exposure(np.asarray(exp.data, dtype=np.float64) * k, mask=exp.mask, wcs=exp.wcs,
                    name=exp.name)


def test_hdfs_fit_reproduces_the_documented_values(hdfs):
    """The baseline of the invariance tests is the fit docs/photometry.rst quotes."""
    _, _, base = hdfs
    assert base.fwhm.value == pytest.approx(0.777, abs=2e-3)
    assert base.fwhm.error == pytest.approx(0.008, abs=1e-3)
    assert base.scale.value == pytest.approx(0.755, abs=2e-3)
    assert base.beta.value == pytest.approx(5.37, abs=0.02)


@pytest.mark.parametrize("k", [1e-20, 1.0, 1e6])
def test_image_fit_invariant_to_the_units_of_both_images(hdfs, k):
    """Both images times k (a change of flux unit, e.g. 1e-20 erg/s/cm2/A -> erg/s/cm2/A):
    fwhm, beta, dx, dy, scale and their errors unchanged; bg, rms and their errors times k.
    Before the fix, k = 1e-20 stopped the fit at its start (fwhm 0.5, beta 5, scale 1e-10,
    errors ~1e-55)."""
    target, reference, base = hdfs
    res = fit_image_photometry(_scaled(target, k), _scaled(reference, k))
    for name in KERNEL + ("scale",):
        m, b = getattr(res, name), getattr(base, name)
        assert m.value == pytest.approx(b.value, rel=1e-6, abs=1e-8), name
        assert m.error == pytest.approx(b.error, rel=1e-5), name
    assert res.bg.value / k == pytest.approx(base.bg.value, rel=1e-5)
    assert res.bg.error / k == pytest.approx(base.bg.error, rel=1e-5)
    assert res.rms.value / k == pytest.approx(base.rms.value, rel=1e-6)
    assert res.info["nfev"] > 2


@pytest.mark.parametrize("k", [1e-9, 1e8])
def test_image_fit_invariant_to_the_reference_units(hdfs, k):
    """The reference alone times k: scale / k, the rest unchanged (before the fix, k = 1e8
    gave fwhm and dx errors of ~1e-20 and k = 1e-9 sent dx to 1e17 arcsec)."""
    target, reference, base = hdfs
    res = fit_image_photometry(target, _scaled(reference, k))
    for name in KERNEL + ("bg",):
        m, b = getattr(res, name), getattr(base, name)
        assert m.value == pytest.approx(b.value, rel=1e-6, abs=1e-8), name
        assert m.error == pytest.approx(b.error, rel=1e-5), name
    assert res.scale.value * k == pytest.approx(base.scale.value, rel=1e-6)
    assert res.scale.error * k == pytest.approx(base.scale.error, rel=1e-5)
    # the covariance in the data units: cov(scale, bg) scales by 1 / k
    assert res.covariance[0, 1] * k == pytest.approx(base.covariance[0, 1], rel=1e-4)


def test_image_fit_fixed_scale_and_bg_stay_in_data_units(hdfs):
    """fix_scale and fix_bg are in the data units, whatever their size: holding them at the
    free fit's values (times 1e-20 for bg on images times 1e-20) gives its kernel again."""
    target, reference, base = hdfs
    k = 1e-20
    res = fit_image_photometry(_scaled(target, k), _scaled(reference, k),
                               fix_scale=base.scale.value, fix_bg=base.bg.value * k)
    assert (res.scale.value, res.bg.value) == (base.scale.value, base.bg.value * k)
    assert res.scale.fixed and res.scale.error == 0.0
    for name in KERNEL:
        assert getattr(res, name).value == pytest.approx(getattr(base, name).value, rel=1e-4,
                                                         abs=1e-5), name


def test_image_fit_warns_when_it_stops_at_its_start(hdfs, monkeypatch, caplog):
    """A least-squares run that stops at once (here: a huge gtol) leaves the start values;
    the fit says so (before the fix it returned them silently)."""
    import scipy.optimize

    real = scipy.optimize.least_squares

    def stop_at_once(*args, **kwargs):
        return real(*args, **{**kwargs, "gtol": 1e300})

    monkeypatch.setattr(scipy.optimize, "least_squares", stop_at_once)
    target, reference, _ = hdfs
    with caplog.at_level("WARNING", logger="astromix"):
        res = fit_image_photometry(target, reference)
    assert (res.fwhm.value, res.beta.value) == (0.5, 5.0)          # the start values
    assert "stopped at its start point" in caplog.text


# -- 2. fix_scale = 0 ------------------------------------------------------------------------------

def test_no_false_stuck_warning_when_only_scale_and_bg_are_free(caplog):
    """With the kernel and shift held at their true values only the linear scale and bg are
    fitted: their start (linear least squares) is the optimum, so stopping there is no failure
    (it had been reported as "stopped at its start point")."""
    from astromix.photometry import moffat_transform

    rng = np.random.default_rng(4)
    n = 64
    ref = np.zeros((n, n))
    ref[rng.integers(8, n - 8, 30), rng.integers(8, n - 8, 30)] = rng.uniform(1, 5, 30)
    f = np.fft.fftfreq(n, 0.2)
    blur = np.fft.ifft2(np.fft.fft2(ref) * moffat_transform(np.hypot(f[None, :], f[:, None]),
                                                            0.8, 3.0)).real
    tgt = 2.0 * blur + 0.5 + rng.normal(0.0, 0.05, (n, n))
    with caplog.at_level("WARNING", logger="astromix"):
        res = fit_image_photometry((tgt, _wcs(0.2, n)), (ref, _wcs(0.2, n)), fix_fwhm=0.8,
                                   fix_beta=3.0, fix_dx=0.0, fix_dy=0.0, reference_psf=None,
                                   taper=0, margin=0.0)
    assert res.info["free"] == ("scale", "bg")
    assert abs(res.scale.value - 2.0) < 3 * res.scale.error
    assert abs(res.bg.value - 0.5) < 3 * res.bg.error
    assert "stopped at its start point" not in caplog.text


def test_stuck_warning_lists_only_the_free_start_values(hdfs, monkeypatch, caplog):
    """The start-point warning gives the start values of the free parameters only."""
    import scipy.optimize

    real = scipy.optimize.least_squares
    monkeypatch.setattr(scipy.optimize, "least_squares",
                        lambda *a, **kw: real(*a, **{**kw, "gtol": 1e300}))
    target, reference, _ = hdfs
    with caplog.at_level("WARNING", logger="astromix"):
        fit_image_photometry(target, reference, fix_dx=0.0, fix_dy=0.0, fix_beta=4.0)
    assert "stopped at its start point" in caplog.text
    assert "(fwhm 0.5)" in caplog.text
    assert "dx" not in caplog.text and "beta" not in caplog.text


def test_fix_scale_zero_is_refused(hdfs):
    """With the scale held at 0 the kernel and shift have no effect on the model; they had
    been reported as 0.5 +- 0, 5 +- 0, 0 +- 0."""
    target, reference, _ = hdfs
    with pytest.raises(InputError, match=r"fix_scale = 0 .*fwhm, beta, dx, dy"):
        fit_image_photometry(target, reference, fix_scale=0.0)


def test_fix_scale_zero_with_the_kernel_fixed_fits_the_background():
    """Only bg left free: the model is bg, whose least-squares value is the target's mean."""
    rng = np.random.default_rng(3)
    n = 48
    tgt = 0.7 + rng.normal(0.0, 0.1, (n, n))
    ref = rng.uniform(0, 1, (n, n))
    res = fit_image_photometry((tgt, _wcs(0.2, n)), (ref, _wcs(0.2, n)), fix_scale=0.0,
                               fix_fwhm=0.6, fix_beta=3.0, fix_dx=0.0, fix_dy=0.0,
                               reference_psf=None, taper=0, margin=0.0)
    assert res.info["free"] == ("bg",)
    assert res.bg.value == pytest.approx(tgt.mean(), rel=1e-9)
    assert res.bg.error == pytest.approx(tgt.std(ddof=1) / n, rel=1e-3)


def test_covariance_of_undetermined_parameters_is_nan():
    """The covariance helper: errors independent of the columns' units, NaN for parameters
    in a null direction of J (a zero column, two equal columns)."""
    from astromix.photometry.image import _covariance

    rng = np.random.default_rng(0)
    j = rng.normal(size=(200, 3))
    truth = np.linalg.inv(j.T @ j)
    units = np.array([1e-30, 1.0, 1e20])
    cov, lost = _covariance(j * units, 2.0)
    assert not lost.any()
    np.testing.assert_allclose(cov, 2.0 * truth / np.outer(units, units), rtol=1e-10)
    cov, lost = _covariance(np.column_stack([j, np.zeros(200)]), 1.0)
    assert lost.tolist() == [False, False, False, True]
    assert np.isnan(cov[3]).all() and np.isnan(cov[:, 3]).all()
    np.testing.assert_allclose(cov[:3, :3], truth, rtol=1e-10)
    cov, lost = _covariance(np.column_stack([j, j[:, 0]]), 1.0)
    assert lost.tolist() == [True, False, False, True]
    assert np.isfinite(cov[1, 2])


# -- 3. regrid's variance --------------------------------------------------------------------------

@pytest.mark.parametrize("ref_scale, n_ref, tgt_scale, n_tgt", [
    (0.1, 240, 0.3, 80),       # downsampling: 9 reference pixels per target pixel
    (0.3, 80, 0.1, 240),       # upsampling: a target pixel is 1/9 of a reference pixel
])
def test_regrid_variance_matches_monte_carlo(ref_scale, n_ref, tgt_scale, n_tgt):
    """White noise of variance v: the STAT that regrid reports equals the empirical variance
    of the regridded noise (before the fix, 9 times too large when upsampling)."""
    v = 4.0
    rng = np.random.default_rng(11)
    noise = rng.normal(0.0, np.sqrt(v), (n_ref, n_ref))
    ref = Exposure(noise, uncertainty=VarianceUncertainty(np.full(noise.shape, v)),
                   wcs=_wcs(ref_scale, n_ref))
    out = regrid(ref, (np.zeros((n_tgt, n_tgt)), _wcs(tgt_scale, n_tgt)))
    good = ~out.mask
    stat = out.uncertainty.represent_as(VarianceUncertainty).array[good]
    empirical = np.var(out.data[good])
    ratio = (tgt_scale / ref_scale) ** 2
    # independent reference pixels: a v (a whole pixels summed) or a^2 v (a fraction a)
    assert np.median(stat) == pytest.approx(v * ratio * min(ratio, 1.0), rel=1e-6)
    # 6400 independent reference values either way: 1.8% standard error of the variance
    assert np.median(stat) / empirical == pytest.approx(1.0, abs=0.06)


# -- 4. regrid of a surface brightness -------------------------------------------------------------

@pytest.mark.parametrize("ref_scale, n_ref, tgt_scale, n_tgt", [(0.05, 80, 0.2, 20),
                                                                (0.2, 20, 0.05, 80)])
def test_regrid_keeps_a_constant_surface_brightness(ref_scale, n_ref, tgt_scale, n_tgt):
    """A constant image in MJy/sr stays that constant in MJy/sr on any grid (it had been
    multiplied by the pixel-area ratio, 16 or 1/16, with BUNIT kept)."""
    ref = Exposure(np.full((n_ref, n_ref), 3.5), wcs=_wcs(ref_scale, n_ref), unit="MJy/sr")
    out = regrid(ref, (np.zeros((n_tgt, n_tgt)), _wcs(tgt_scale, n_tgt)))
    good = ~out.mask
    assert good.sum() > n_tgt
    np.testing.assert_allclose(out.data[good], 3.5, rtol=1e-9)
    assert out.unit.is_equivalent("MJy/sr") and out.meta["surface_brightness"]
    # the same image per pixel is multiplied by the area ratio, as before
    per_px = regrid(Exposure(ref.data, wcs=ref.wcs, unit="Jy"),
                    (np.zeros((n_tgt, n_tgt)), _wcs(tgt_scale, n_tgt)))
    # (the local area ratio of the TAN projections differs from the nominal one by ~1e-8)
    np.testing.assert_allclose(per_px.data[good], 3.5 * (tgt_scale / ref_scale) ** 2,
                               rtol=1e-7)


def test_regrid_surface_brightness_variance_matches_monte_carlo():
    """The variance of a regridded surface brightness: that of the mean of 16 pixels."""
    v = 2.0
    rng = np.random.default_rng(12)
    noise = rng.normal(0.0, np.sqrt(v), (320, 320))
    ref = Exposure(noise, uncertainty=VarianceUncertainty(np.full(noise.shape, v)),
                   wcs=_wcs(0.05, 320), unit="MJy/sr")
    out = regrid(ref, (np.zeros((80, 80)), _wcs(0.2, 80)))
    stat = out.uncertainty.represent_as(VarianceUncertainty).array[~out.mask]
    assert np.median(stat) == pytest.approx(v / 16, rel=1e-6)
    assert np.median(stat) / np.var(out.data[~out.mask]) == pytest.approx(1.0, abs=0.06)


def test_regrid_command_keeps_mjy_per_sr(tmp_path, capsys):
    """``astromix regrid`` of a constant MJy/sr image (JWST i2d-like) onto a coarser grid."""
    ref, tgt, out = tmp_path / "i2d.fits", tmp_path / "t.fits", tmp_path / "o.fits"
    hdr = _wcs(0.05, 80).to_header()
    hdr["BUNIT"] = "MJy/sr"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full((80, 80), 0.25), hdr,
                                                   name="SCI")]).writeto(ref)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((20, 20)), _wcs(0.2, 20).to_header(),
                                                   name="DATA")]).writeto(tgt)
    assert main(["regrid", str(ref), str(tgt), "-o", str(out)]) == 0
    assert "not applied" in capsys.readouterr().out
    img = read_image(out)
    np.testing.assert_allclose(img.data[~img.mask], 0.25, rtol=1e-9)
    assert img.unit.is_equivalent("MJy/sr")


# -- 5. region files that give no region -----------------------------------------------------------

GOOD = 'circle(150.0,2.0,1.45")'


@pytest.mark.parametrize("text", [
    "# Region file format: DS9\nfk5\ncircel(150.0,2.0,1.5\")\n",     # misspelt shape
    f"{GOOD}\n",                                                   # no coordinate frame
    "hello\n",                                                     # not a region file
])
def test_region_file_without_regions_is_refused(tmp_path, text):
    """The parser skips such lines with a warning; the file had been taken as no regions."""
    pytest.importorskip("regions")
    path = tmp_path / "bad.reg"
    path.write_text(text)
    with pytest.raises(InputError, match=r"bad\.reg.* gives no regions"):
        region_mask(str(path), _wcs(0.2, 40), (40, 40))


def test_region_file_skipped_lines_are_logged(tmp_path, caplog):
    """A file with one good and one misspelt line: the good region is used (the mask of that
    line alone: the ~165 pixels of the 1.45" = 7.25 px circle kept), the skipped line is
    logged (the parser's warnings had been dropped)."""
    pytest.importorskip("regions")
    path = tmp_path / "mixed.reg"
    path.write_text(f"# Region file format: DS9\nfk5\n{GOOD}\ncircel(150.0,2.0,1\")\n")
    with caplog.at_level("WARNING", logger="astromix"):
        mask = region_mask(str(path), _wcs(0.2, 40), (40, 40))
    np.testing.assert_array_equal(mask, region_mask(f"fk5; {GOOD}", _wcs(0.2, 40), (40, 40)))
    assert abs(np.count_nonzero(~mask) - np.pi * 7.25 ** 2) < 10
    assert "circel" in caplog.text and "mixed.reg" in caplog.text


def test_fit_photometry_bad_region_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("regions")
    paths = muse_hst_hdfs()
    reg = tmp_path / "typo.reg"
    reg.write_text("# Region file format: DS9\nfk5\ncircel(338.2396,-60.5574,6\")\n")
    assert main(["fit-photometry", paths["muse"], paths["hst"], "--regions", str(reg)]) == 2
    assert "gives no regions" in _one_line_error(capsys, "fit-photometry")


# -- 6. output errors of the commands --------------------------------------------------------------

@pytest.fixture
def small_pair(tmp_path):
    ref, tgt = tmp_path / "ref.fits", tmp_path / "tgt.fits"
    rng = np.random.default_rng(2)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(rng.uniform(0, 1, (40, 40)),
                                                   _wcs(0.05, 40).to_header(),
                                                   name="SCI")]).writeto(ref)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((10, 10)), _wcs(0.2, 10).to_header(),
                                                   name="DATA")]).writeto(tgt)
    return str(ref), str(tgt)


@pytest.fixture
def cube(tmp_path):
    """A 3-plane cube with a spectral axis and a filter file."""
    hdr = fits.Header()
    hdr.update(_wcs(0.2, 6).to_header())
    hdr["WCSAXES"] = 3
    hdr["CTYPE3"], hdr["CUNIT3"] = "AWAV", "Angstrom"
    hdr["CRVAL3"], hdr["CRPIX3"], hdr["CDELT3"] = 5000.0, 1.0, 1.0
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 6, 6)), hdr,
                                                   name="DATA")]).writeto(path)
    filt = tmp_path / "filter.dat"
    filt.write_text("5000 1\n5001 1\n5002 1\n")
    return str(path), str(filt)


def test_empty_output_name_is_one_line(small_pair, cube, capsys):
    """``-o ""`` (e.g. an unset shell variable) had ended in FileNotFoundError tracebacks."""
    assert main(["regrid", *small_pair, "-o", ""]) == 2
    assert "empty" in _one_line_error(capsys, "regrid")
    assert main(["broadband-image", *cube, "-o", ""]) == 2
    assert "empty" in _one_line_error(capsys, "broadband-image")


def test_write_failure_is_one_line(small_pair, cube, tmp_path, monkeypatch, capsys):
    """A full disk while writing: one line with exit 2 (an OSError traceback before), and
    neither the output nor a temporary file is left."""
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", full)
    for command, inputs in (("regrid", small_pair), ("broadband-image", cube)):
        out = tmp_path / f"{command}.fits"
        assert main([command, *inputs, "-o", str(out)]) == 2
        err = _one_line_error(capsys, command)
        assert "cannot write" in err and "No space left on device" in err
        assert not out.exists() and not glob.glob(str(tmp_path / ".*tmp*"))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_output_folder_where_no_file_can_be_created(small_pair, capsys):
    """/proc passes os.access for root, but no file can be created there."""
    assert main(["regrid", *small_pair, "-o", "/proc/astromix-test.fits"]) == 2
    assert "cannot write in the output folder '/proc'" in _one_line_error(capsys, "regrid")


def test_fit_photometry_bad_outputs_refused_before_the_fit(tmp_path, capsys):
    """--json naming a folder, and a --plot format matplotlib cannot write, are refused
    before the fit and before anything is written (IsADirectoryError and a matplotlib
    ValueError after the fit, with --json already written, before the fix)."""
    paths = muse_hst_hdfs()
    folder = tmp_path / "adir"
    folder.mkdir()
    assert main(["fit-photometry", paths["muse"], paths["hst"], "--json", str(folder),
                 "--overwrite"]) == 2
    assert "is a folder" in _one_line_error(capsys, "fit-photometry")
    js = tmp_path / "fit.json"
    assert main(["fit-photometry", paths["muse"], paths["hst"], "--json", str(js),
                 "--plot", str(tmp_path / "fit.jpg2")]) == 2
    assert "cannot write .jpg2" in _one_line_error(capsys, "fit-photometry")
    assert not js.exists()
    assert main(["fit-photometry", paths["muse"], paths["hst"], "--json", ""]) == 2
    assert "--json: the file name is empty" in _one_line_error(capsys, "fit-photometry")


# -- 7. --save-fits checked with the other outputs -------------------------------------------------

def test_fit_photometry_save_fits_checked_first(tmp_path, capsys):
    """An existing <target>_image.fits in the --save-fits folder: refused before anything is
    written, with a message naming --overwrite (--json and --plot had been written first and
    the message named overwrite=True)."""
    paths = muse_hst_hdfs()
    folder = tmp_path / "fits"
    folder.mkdir()
    (folder / "IMAGE-HDFS-1.34_image.fits").write_bytes(b"")
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["fit-photometry", paths["muse"], paths["hst"], "--json", str(js), "--plot",
            str(png), "--save-fits", str(folder)]
    assert main(args) == 2
    err = _one_line_error(capsys, "fit-photometry")
    assert "IMAGE-HDFS-1.34_image.fits' exists (use --overwrite)" in err
    assert not js.exists() and not png.exists()
    assert sorted(os.listdir(folder)) == ["IMAGE-HDFS-1.34_image.fits"]
    assert main(args + ["--overwrite"]) == 0
    assert js.exists() and png.exists()
    assert sorted(os.listdir(folder)) == [f"IMAGE-HDFS-1.34_{k}.fits"
                                          for k in ("image", "model", "residual")]


# -- 8. the batch fit ------------------------------------------------------------------------------

def test_batch_return_exceptions_keeps_the_other_results(hdfs, tmp_path):
    """One missing exposure among three: its slot holds an ItemFailure, the others are the
    fits of the single function (the keyword had been passed on to every fit, which failed)."""
    paths = muse_hst_hdfs()
    target, reference, base = hdfs
    missing = str(tmp_path / "missing.fits")
    out = fit_image_photometry_batch([paths["muse"], missing, paths["muse"]], reference,
                                     executor="serial", progress=False,
                                     return_exceptions=True)
    assert isinstance(out[1], ItemFailure) and out[1].index == 1
    assert out[1].label == "missing" and isinstance(out[1].exception, InputError)
    for res in (out[0], out[2]):
        assert res.fwhm.value == pytest.approx(base.fwhm.value, rel=1e-12)
        assert res.scale.value == pytest.approx(base.scale.value, rel=1e-12)
    with pytest.raises(InputError, match="missing"):
        fit_image_photometry_batch([missing], reference, executor="serial", progress=False)


def test_batch_misspelt_keyword_is_an_input_error(monkeypatch):
    """A misspelt keyword is refused before any fit, naming the keyword (a BatchError
    blaming the first exposure before)."""
    import astromix.photometry.batch as batch

    def never(*args, **kwargs):
        raise AssertionError("a fit was started")

    monkeypatch.setattr(batch, "_fit_one", never)
    with pytest.raises(InputError, match="fix_fwmh") as info:
        fit_image_photometry_batch(["a.fits", "b.fits"], "ref.fits", executor="serial",
                                   progress=False, fix_fwmh=0.7)
    assert "fix_fwhm" in str(info.value)


@pytest.mark.parametrize("k", [1e-20, 1e6])
def test_star_fit_invariant_to_the_units_of_both_images(hdfs, k):
    """The star fit on the HDF-S star of docs/photometry.rst: the fitter's tolerances had
    depended on the data units (scale 0.765 vs 0.712 between two unit versions)."""
    target, reference, _ = hdfs
    star = (338.24486679, -60.55653598)
    base = fit_star_photometry(_scaled(target, 1.0), _scaled(reference, 1.0), star, 2.0)
    res = fit_star_photometry(_scaled(target, k), _scaled(reference, k), star, 2.0)
    for name in ("scale", "fwhm", "beta", "dx", "dy"):
        a, b = getattr(base, name), getattr(res, name)
        assert b.value == pytest.approx(a.value, rel=1e-5, abs=1e-7), name
        assert b.error == pytest.approx(a.error, rel=1e-3), name
    assert res.bg.value == pytest.approx(k * base.bg.value, rel=1e-5, abs=1e-7 * abs(k))
