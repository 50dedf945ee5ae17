"""Tests of astromix.data.Exposure: construction, FITS readers, ASDF/HDF5 files, cutouts."""

import io
import os
import shutil
from pathlib import Path

import asdf
import numpy as np
import pytest
from asdf.tagged import TaggedDict
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import (
    InverseVariance,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS

from astromix import GaussianMixture, GaussianMixturePSF, InputError
from astromix.data import Exposure, ExposureWarning, read_exposures, write_exposures

h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(20240601)


# -- helpers --------------------------------------------------------------------------------------

def _tan_wcs(crval=(150.0, 2.0), crpix=(16.0, 11.0), scale=0.2, sip=False):
    """A TAN WCS (scale [arcsec/px]), optionally with a SIP distortion."""
    header = fits.Header()
    header["CTYPE1"] = "RA---TAN-SIP" if sip else "RA---TAN"
    header["CTYPE2"] = "DEC--TAN-SIP" if sip else "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = crval
    header["CRPIX1"], header["CRPIX2"] = crpix
    header["CD1_1"] = -scale / 3600 * np.cos(0.3)
    header["CD1_2"] = scale / 3600 * np.sin(0.3)
    header["CD2_1"] = scale / 3600 * np.sin(0.3)
    header["CD2_2"] = scale / 3600 * np.cos(0.3)
    if sip:
        header["A_ORDER"] = header["B_ORDER"] = 2
        header["A_2_0"], header["A_1_1"], header["A_0_2"] = 2.1e-5, -1.3e-5, 0.7e-5
        header["B_2_0"], header["B_1_1"], header["B_0_2"] = -0.9e-5, 1.7e-5, 2.4e-5
    return WCS(header)


def _gwcs(crval=(53.1, -27.8), scale=0.031, center=(40.0, 30.0), bbox=((-0.5, 79.5),
                                                                        (-0.5, 59.5))):
    """A small JWST-like gwcs: shift, affine (with a little shear), TAN, rotation to the sky."""
    from astropy import coordinates as coord
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gw

    s = scale / 3600
    matrix = np.array([[-s * 0.999, s * 0.02], [s * 0.015, s * 1.001]])
    forward = ((models.Shift(-center[0]) & models.Shift(-center[1]))
               | models.AffineTransformation2D(matrix=matrix)
               | models.Pix2Sky_TAN() | models.RotateNative2Celestial(*crval, 180.0))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    wcs = gw.WCS([(detector, forward), (sky, None)])
    wcs.bounding_box = bbox
    return wcs


def _psf(k=2, seed=3, **kwargs):
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.2, 1.0, k)
    mean = rng.uniform(-0.3, 0.3, (k, 2))
    sx, sy = rng.uniform(0.8, 4.0, (2, k))
    rho = rng.uniform(-0.5, 0.5, k)
    cov = np.empty((k, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sx ** 2, sy ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sx * sy
    return GaussianMixturePSF(GaussianMixture(amp, mean, cov), **kwargs)


def _exposure(shape=(21, 31), name="e1", **kwargs):
    data = RNG.normal(10.0, 1.0, shape)
    kwargs.setdefault("uncertainty", np.full(shape, 0.5))
    kwargs.setdefault("wcs", _tan_wcs())
    return Exposure(data, name=name, **kwargs)


class RecordingPSF:
    """A position-dependent PSF provider (like a PSFEx model) that records its calls."""

    def __init__(self):
        self.calls = []

    def mixture(self, x, y):
        self.calls.append((x, y))
        width = 1.0 + 0.01 * x + 0.02 * y
        return GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * width])


def _probe_points(exp, n=7, seed=0):
    rng = np.random.default_rng(seed)
    ny, nx = exp.shape
    return rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)


# -- construction and validation ------------------------------------------------------------------

def test_basic_construction_and_weight():
    exp = _exposure(band="r", exptime=90, zeropoint=30.5, meta={"a": 1}, unit="adu")
    assert exp.shape == (21, 31)
    assert exp.band == "r" and exp.exptime == 90.0 and exp.zeropoint == 30.5
    assert exp.name == "e1" and exp.unit == u.adu and exp.meta["a"] == 1
    assert isinstance(exp.uncertainty, StdDevUncertainty)
    assert exp.weight.dtype == np.float64
    np.testing.assert_allclose(exp.weight, 4.0)
    assert exp.weight is exp.weight  # cached
    with pytest.raises(ValueError):
        exp.weight[0, 0] = 1.0  # read-only
    assert not exp.mask.any()
    assert "e1" in repr(exp)


@pytest.mark.parametrize("unc, expected", [
    (StdDevUncertainty(np.full((4, 5), 2.0)), 0.25),
    (VarianceUncertainty(np.full((4, 5), 2.0)), 0.5),
    (InverseVariance(np.full((4, 5), 2.0)), 2.0),
    (np.full((4, 5), 0.1), 100.0),
    (None, 1.0),
])
def test_weight_of_each_uncertainty(unc, expected):
    exp = Exposure(np.ones((4, 5)), uncertainty=unc)
    np.testing.assert_allclose(exp.weight, expected)


def test_uncertainty_units_are_converted():
    exp = Exposure(np.ones((3, 3)) * u.Jy, uncertainty=StdDevUncertainty(np.full((3, 3), 100.0),
                                                                         unit=u.mJy))
    assert exp.unit == u.Jy
    np.testing.assert_allclose(exp.weight, 100.0)  # sigma = 0.1 Jy


def test_float32_data_kept_and_int_converted():
    assert Exposure(np.ones((3, 4), dtype=np.float32)).data.dtype == np.float32
    assert Exposure(np.ones((3, 4), dtype=np.int16)).data.dtype == np.float64


def test_nan_and_inf_pixels_masked_with_count():
    data = np.ones((6, 7))
    data[1, 1] = data[2, 5] = np.nan
    data[4, 3] = np.inf
    with pytest.warns(ExposureWarning, match=r"3 pixel\(s\) with non-finite data") as record:
        exp = Exposure(data, uncertainty=np.ones((6, 7)))
    assert len(record) == 1
    assert exp.mask.sum() == 3 and exp.mask[1, 1] and exp.mask[4, 3]
    assert np.all(np.isfinite(exp.data)) and exp.data[1, 1] == 0
    assert exp.weight[1, 1] == 0 and exp.weight[0, 0] == 1
    # Pixels the mask already holds are not counted.
    mask = np.zeros((6, 7), bool)
    mask[1, 1] = True
    with pytest.warns(ExposureWarning, match=r"2 pixel\(s\)"):
        Exposure(data, mask=mask)


def test_bad_uncertainty_pixels_masked_with_count():
    sigma = np.ones((5, 5))
    sigma[0, 0] = 0.0
    sigma[1, 1] = -2.0
    sigma[2, 2] = np.nan
    sigma[3, 3] = np.inf
    with pytest.warns(ExposureWarning, match=r"4 pixel\(s\) with zero, negative or non-finite "
                                             r"uncertainty"):
        exp = Exposure(np.ones((5, 5)), uncertainty=sigma)
    assert exp.mask.sum() == 4 and exp.weight[1, 1] == 0
    ivar = np.ones((5, 5))
    ivar[4, 4] = 0.0
    with pytest.warns(ExposureWarning, match=r"1 pixel\(s\)"):
        exp = Exposure(np.ones((5, 5)), uncertainty=InverseVariance(ivar))
    assert exp.mask[4, 4]


def test_masked_array_and_numeric_mask():
    data = np.ma.masked_array(np.ones((3, 3)), mask=np.eye(3, dtype=bool))
    assert Exposure(data).mask.sum() == 3
    assert Exposure(np.ones((3, 3)), mask=np.eye(3, dtype=np.uint8)).mask.sum() == 3


def _masked_inputs():
    from astropy.utils.masked import Masked

    img = np.arange(20.0).reshape(4, 5)
    img[0, 0] = 1e6  # a cosmic ray, masked in the data product
    bad = np.zeros((4, 5), bool)
    bad[0, 0] = True
    return [pytest.param(np.ma.MaskedArray(img, mask=bad), None, id="numpy-masked-array"),
            pytest.param(Masked(img, mask=bad), None, id="astropy-Masked-ndarray"),
            pytest.param(Masked(img * u.Jy, mask=bad), u.Jy, id="astropy-Masked-Quantity")]


@pytest.mark.parametrize("data, unit", _masked_inputs())
def test_masked_data_keeps_its_mask_with_mask_on_top(data, unit):
    """The mask of a NumPy masked array or an astropy Masked array / Quantity is
    kept, and combined with mask= (it was dropped: by mask=, and for astropy's
    Masked altogether); the masked pixel weighs nothing, and the unit is kept."""
    extra = np.zeros((4, 5), bool)
    extra[3, 4] = True  # a DQ mask on top
    expect_unmasked = np.ones((4, 5))
    expect_unmasked[0, 0] = 0.0
    for mask, masked in ((None, [[0, 0]]), (extra, [[0, 0], [3, 4]])):
        e = Exposure(data, mask=mask, uncertainty=np.full((4, 5), 0.5))
        assert np.argwhere(e.mask).tolist() == masked
        assert e.weight[0, 0] == 0.0 and e.weight[1, 1] == 4.0  # 1 / 0.5**2
        assert e.unit == unit
        np.testing.assert_array_equal(e.data[1:], np.arange(5.0, 20.0).reshape(3, 5))
    # converted to another unit, the mask stays
    if unit is not None:
        e = Exposure(data, unit="mJy")
        assert np.argwhere(e.mask).tolist() == [[0, 0]] and e.data[1, 1] == 6000.0


@pytest.mark.parametrize("kwargs, match", [
    ({"data": np.ones(5)}, "2-D image"),
    ({"data": np.ones((0, 3))}, "empty"),
    ({"data": np.array([["a", "b"]])}, "real numbers"),
    ({"uncertainty": np.ones((4, 4))}, "uncertainty has shape"),
    ({"mask": np.zeros((3, 3), bool)}, "mask has shape"),
    ({"mask": np.ones((4, 5), bool)}, "every pixel"),
    ({"uncertainty": UnknownUncertainty(np.ones((4, 5)))}, "StdDevUncertainty"),
    ({"exptime": -3.0}, "exptime"),
    ({"exptime": "long"}, "exptime"),
    ({"zeropoint": np.nan}, "zeropoint"),
    ({"band": 3}, "band"),
    ({"name": 7}, "name"),
    ({"meta": [1, 2]}, "meta"),
    ({"psf": "gaussian"}, "psf must be"),
    ({"psf_origin": (1.0,)}, "psf_origin"),
    ({"wcs": "not a wcs"}, "APE 14"),
])
def test_construction_errors(kwargs, match):
    kwargs = {"data": np.ones((4, 5)), **kwargs}
    with pytest.raises(InputError, match=match):
        Exposure(kwargs.pop("data"), **kwargs)


def test_all_masked_by_nan_is_an_error():
    with pytest.warns(ExposureWarning), pytest.raises(InputError, match="every pixel"):
        Exposure(np.full((3, 3), np.nan))


def test_wcs_must_be_celestial_and_equatorial():
    linear = WCS(naxis=2)
    linear.wcs.ctype = ["LINEAR", "LINEAR"]
    with pytest.raises(InputError, match="not a 2-D celestial WCS"):
        Exposure(np.ones((4, 5)), wcs=linear)
    galactic = WCS(naxis=2)
    galactic.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    with pytest.raises(InputError, match="not equatorial"):
        Exposure(np.ones((4, 5)), wcs=galactic)
    cube = WCS(naxis=3)
    cube.wcs.ctype = ["RA---TAN", "DEC--TAN", "WAVE"]
    exp = Exposure(np.ones((4, 5)), wcs=cube)  # the celestial part of a cube WCS is kept
    assert exp.wcs.naxis == 2


def test_setters_recheck_and_clear_the_cache():
    exp = _exposure()
    assert exp.weight[0, 0] == 4.0
    mask = np.zeros(exp.shape, bool)
    mask[0, 0] = True
    exp.mask = mask
    assert exp.weight[0, 0] == 0.0 and exp.weight[1, 1] == 4.0
    with pytest.raises(InputError, match="every pixel"):
        exp.mask = np.ones(exp.shape, bool)
    sigma = np.full(exp.shape, 2.0)
    sigma[3, 3] = 0.0
    with pytest.warns(ExposureWarning, match=r"1 pixel"):
        exp.uncertainty = sigma
    assert exp.weight[1, 1] == 0.25 and exp.weight[3, 3] == 0.0 and exp.mask[3, 3]
    with pytest.raises(InputError, match="psf must be"):
        exp.psf = 3


def test_flux_scale():
    exp = _exposure(zeropoint=25.0)
    assert exp.flux_scale(22.5) == pytest.approx(10 ** (0.4 * 2.5))
    assert _exposure().flux_scale(22.5) == 1.0
    with pytest.raises(InputError):
        exp.flux_scale(None)


# -- PSF ------------------------------------------------------------------------------------------

def test_psf_at_constant_and_providers():
    with pytest.raises(InputError, match="has no PSF"):
        _exposure().psf_at(1, 2)
    psf = _psf()
    assert _exposure(psf=psf).psf_at(3.0, 4.0) is psf
    wrapped = _exposure(psf=GaussianMixture([2.0], [[0, 0]], [np.eye(2)])).psf_at(0, 0)
    assert isinstance(wrapped, GaussianMixturePSF)
    provider = RecordingPSF()
    exp = _exposure(psf=provider, psf_origin=(100.0, 200.0))
    got = exp.psf_at(3.0, 4.0)
    assert isinstance(got, GaussianMixturePSF)
    assert provider.calls == [(103.0, 204.0)]
    calls = []

    def func(x, y):
        calls.append((x, y))
        return _psf()

    assert isinstance(_exposure(psf=func).psf_at(np.float32(1.5), 2), GaussianMixturePSF)
    assert calls == [(1.5, 2.0)]
    with pytest.raises(InputError, match="returned"):
        _exposure(psf=lambda x, y: "nope").psf_at(0, 0)
    with pytest.raises(InputError, match="not arrays"):
        _exposure(psf=psf).psf_at([1, 2], [3, 4])


def test_psfex_model_as_provider():
    psfex = pytest.importorskip("astromix.io.psfex")
    datasets = pytest.importorskip("astromix.datasets")
    if not hasattr(datasets, "decam_multiexposure"):
        pytest.skip("astromix.datasets.decam_multiexposure is not available")
    row = datasets.decam_multiexposure()[0]
    exp = Exposure.from_fits(row["image"], psf=psfex.read_psfex(row["psfex"]))
    psf = exp.psf_at(20.0, 25.0)
    assert isinstance(psf, GaussianMixturePSF)
    assert psf.mixture.amp.sum() == pytest.approx(1.0)


# -- coordinates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sip", [False, True])
def test_world_pixel_round_trip(sip):
    exp = _exposure(wcs=_tan_wcs(sip=sip))
    x, y = _probe_points(exp)
    ra, dec = exp.pixel_to_world(x, y)
    x2, y2 = exp.world_to_pixel(ra, dec)
    np.testing.assert_allclose(x2, x, atol=1e-7)
    np.testing.assert_allclose(y2, y, atol=1e-7)
    # Scalars give floats; SkyCoord and Quantity are accepted.
    xs, ys = exp.world_to_pixel(float(ra[0]), float(dec[0]))
    assert isinstance(xs, float) and xs == pytest.approx(x[0], abs=1e-7)
    xc, yc = exp.world_to_pixel(SkyCoord(ra[0] * u.deg, dec[0] * u.deg))
    assert xc == pytest.approx(x[0], abs=1e-7) and yc == pytest.approx(y[0], abs=1e-7)
    xq, _ = exp.world_to_pixel(ra[0] * u.deg, (dec[0] * u.deg).to(u.arcsec))
    assert xq == pytest.approx(x[0], abs=1e-7)


def test_no_wcs_is_pixel_only():
    exp = _exposure(wcs=None)
    for call in (lambda: exp.world_to_pixel(1, 2), lambda: exp.pixel_to_world(1, 2),
                 lambda: exp.contains(1, 2), lambda: exp.cutout(1, 2, 5)):
        with pytest.raises(InputError, match="has no WCS"):
            call()


def test_contains_and_margin():
    exp = _exposure()  # 31 x 21, reference pixel (15, 10) at (150, 2)
    ra, dec = exp.pixel_to_world(np.array([15.0, 0.0, -0.6, 30.4, 2.0]),
                                 np.array([10.0, 0.0, 5.0, 20.0, 10.0]))
    assert exp.contains(150.0, 2.0)
    np.testing.assert_array_equal(exp.contains(ra, dec), [True, True, False, True, True])
    np.testing.assert_array_equal(exp.contains(ra, dec, margin=3),
                                  [True, False, False, False, False])
    assert not exp.contains(200.0, 2.0)


def test_jacobian_and_pixel_scale():
    exp = _exposure(wcs=_tan_wcs(scale=0.25))
    assert exp.pixel_scale(15, 10) == pytest.approx(0.25, rel=1e-6)
    jac = exp.jacobian(15, 10)
    expected = 0.25 * np.array([[-np.cos(0.3), np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    np.testing.assert_allclose(jac, expected, atol=1e-7)
    assert exp.jacobian([1, 2, 3], [4, 5, 6]).shape == (3, 2, 2)


def test_gwcs_exposure():
    exp = Exposure(np.ones((60, 80)), wcs=_gwcs())
    x, y = _probe_points(exp)
    ra, dec = exp.pixel_to_world(x, y)
    x2, y2 = exp.world_to_pixel(ra, dec)
    np.testing.assert_allclose(x2, x, atol=1e-7)
    np.testing.assert_allclose(y2, y, atol=1e-7)
    assert exp.pixel_scale(40, 30) == pytest.approx(0.031, rel=1e-3)
    assert not exp.contains(53.3, -27.8)  # outside the bounding box: NaN -> False


# -- DECam community-pipeline files ---------------------------------------------------------------

def _decam_rows():
    """(image, invvar, dq, band, exptime, zeropoint) of the shipped DECam data set, or skip."""
    from astromix import datasets

    if hasattr(datasets, "decam_multiexposure"):
        table = datasets.decam_multiexposure()
        return [{"image": str(r["image"]), "invvar": str(r["invvar"]), "dq": str(r["dq"]),
                 "band": str(r["band"]), "exptime": float(r["exptime"]),
                 "zeropoint": float(r["zeropoint"])} for r in table]
    folder = Path(datasets.__file__).parent / "decam_multiexposure"
    images = sorted(p for p in folder.rglob("*_ooi_*") if "psfex" not in p.name)
    if not images:
        pytest.skip("the DECam multi-exposure data set is not shipped")
    return [{"image": str(p), "invvar": str(p).replace("_ooi_", "_oow_"),
             "dq": str(p).replace("_ooi_", "_ood_"), "band": None, "exptime": None,
             "zeropoint": None} for p in images]


@pytest.fixture(scope="module")
def decam_rows():
    return _decam_rows()


def test_decam_read(decam_rows):
    bands = []
    for row in decam_rows:
        exp = Exposure.from_fits(row["image"])
        header = fits.getheader(row["image"], 0)
        invvar = fits.getdata(row["invvar"], 1).astype(np.float64)
        dq = fits.getdata(row["dq"], 1)
        assert exp.meta["format"] == "DECam CP"
        assert exp.band == header["FILTER"].strip()[0]
        assert exp.exptime == header["EXPTIME"]
        if row["band"] is not None:
            assert exp.band == row["band"] and exp.exptime == row["exptime"]
        np.testing.assert_array_equal(exp.mask, dq != 0)
        good = dq == 0
        np.testing.assert_array_equal(exp.weight[good], invvar[good])
        assert np.all(exp.weight[~good] == 0)
        np.testing.assert_array_equal(exp.data, fits.getdata(row["image"], 1))
        assert os.path.samefile(exp.meta["weight_file"], row["invvar"])
        assert os.path.samefile(exp.meta["dq_file"], row["dq"])
        assert "_ooi_" in exp.name and exp.zeropoint is None
        bands.append(exp.band)
        # TPV WCS: pixel -> sky -> pixel closes to 1e-6 px.
        ny, nx = exp.shape
        x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, nx / 2 + 0.3, 7.7])
        y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, ny / 2 - 0.2, 31.1])
        ra, dec = exp.pixel_to_world(x, y)
        x2, y2 = exp.world_to_pixel(ra, dec)
        np.testing.assert_allclose(x2, x, atol=1e-6)
        np.testing.assert_allclose(y2, y, atol=1e-6)
        assert "TPV" in exp.wcs.to_header(relax=True)["CTYPE1"]
        # Jacobian: ~0.262 arcsec/px (0.2636 with the TPV scale terms), axes orthogonal.
        assert exp.pixel_scale(nx / 2, ny / 2) == pytest.approx(0.262, rel=0.015)
        jac = exp.jacobian(nx / 2, ny / 2)
        assert abs(jac[:, 0] @ jac[:, 1]) < 5e-3 * 0.262 ** 2  # skew < 0.3 deg
        # The galaxy of the data set lies on every exposure.
        assert exp.contains(*exp.pixel_to_world(nx / 2, ny / 2), margin=10)
    assert sorted(bands) == ["g", "g", "g", "r", "r", "z", "z", "z"]


def test_decam_explicit_companions_and_zeropoint(decam_rows):
    row = decam_rows[0]
    auto = Exposure.from_fits(row["image"])
    given = Exposure.from_fits(row["image"], weight=row["invvar"], dq=row["dq"],
                               zeropoint=31.2, band="zz", name="first")
    np.testing.assert_array_equal(auto.weight, given.weight)
    assert given.zeropoint == 31.2 and given.band == "zz" and given.name == "first"
    assert given.flux_scale(22.5) == pytest.approx(10 ** (0.4 * 8.7))


def test_decam_mask_from_dq(decam_rows, tmp_path):
    row = decam_rows[0]
    paths = {}
    for key in ("image", "invvar", "dq"):
        paths[key] = tmp_path / os.path.basename(row[key])
        shutil.copyfile(row[key], paths[key])
    with fits.open(row["dq"]) as hdul:
        hdul[1].data[3:5, 10:13] = 4
        hdul[1].data[20, 20] = 1
        hdul.writeto(paths["dq"], overwrite=True)
    exp = Exposure.from_fits(paths["image"])
    assert exp.mask.sum() == 7 and exp.mask[3, 10] and exp.mask[20, 20]
    assert exp.weight[20, 20] == 0 and exp.weight[0, 0] > 0


def test_decam_missing_companions_warn(decam_rows, tmp_path):
    row = decam_rows[0]
    image = tmp_path / os.path.basename(row["image"])
    shutil.copyfile(row["image"], image)
    with pytest.warns(ExposureWarning, match="no DECam") as record:
        exp = Exposure.from_fits(image)
    assert len(record) == 2
    assert exp.uncertainty is None and not exp.mask.any()


@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_decam_tpv_round_trip(decam_rows, tmp_path, suffix):
    exposures = [Exposure.from_fits(row["image"]) for row in decam_rows]
    path = tmp_path / f"decam{suffix}"
    write_exposures(path, exposures)
    back = read_exposures(path)
    assert [e.name for e in back] == [e.name for e in exposures]
    for a, b in zip(exposures, back):
        x, y = _probe_points(a, n=9, seed=1)
        x = np.append(x, [-30.0, 500.0])  # also off the cut-out, where TPV matters more
        y = np.append(y, [-40.0, 700.0])
        ra, dec = a.pixel_to_world(x, y)
        for got, want in zip(b.world_to_pixel(ra, dec), a.world_to_pixel(ra, dec)):
            np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)
        np.testing.assert_allclose(b.pixel_to_world(x, y), (ra, dec), atol=1e-12, rtol=0)
        assert b.wcs.to_header(relax=True)["CTYPE1"] == "RA---TPV"
        np.testing.assert_array_equal(b.data, a.data)
        np.testing.assert_array_equal(b.weight, a.weight)
        np.testing.assert_array_equal(b.mask, a.mask)
        assert (b.band, b.exptime, b.meta["ccdname"]) == (a.band, a.exptime, a.meta["ccdname"])


# -- JWST-like files (built here, in the stdatamodels layout) -------------------------------------

PIXAR_SR = 2.29e-14


def _asdf_hdu(tree):
    """The ``ASDF`` extension as stdatamodels writes it: one row, column ASDF_METADATA."""
    buf = io.BytesIO()
    asdf.AsdfFile(tree).write_to(buf)
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)[None, :]
    column = fits.Column(name="ASDF_METADATA", format=f"{data.shape[1]}B", array=data)
    return fits.BinTableHDU.from_columns([column], name="ASDF")


def _write_jwst(path, *, i2d=False, pupil="CLEAR", with_asdf=True, bunit="MJy/sr",
                broken_asdf=False):
    ny, nx = 60, 80
    rng = np.random.default_rng(5)
    sci = rng.normal(1.0, 0.1, (ny, nx)).astype(np.float32)
    err = np.full((ny, nx), 0.1, dtype=np.float32)
    primary = fits.PrimaryHDU()
    primary.header.update({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCB1",
                           "FILTER": "F150W2" if pupil == "F162M" else "F200W",
                           "PUPIL": pupil, "EFFEXPTM": 1288.4, "EXPTIME": 1374.0})
    sci_hdu = fits.ImageHDU(sci, name="SCI")
    # A FITS WCS deliberately 36 arcsec off the gwcs, to tell which one is read.
    sci_hdu.header.update(_tan_wcs(crval=(53.11, -27.8), crpix=(41, 31), scale=0.031)
                          .to_header())
    sci_hdu.header.update({"BUNIT": bunit, "PIXAR_SR": PIXAR_SR, "PHOTMJSR": 0.45})
    hdus = [primary, sci_hdu, fits.ImageHDU(err, name="ERR")]
    if i2d:
        wht = np.full((ny, nx), 800.0, dtype=np.float32)
        wht[:, :4] = 0.0
        sci[:, :4] = np.nan
        err[:, :4] = np.nan
        hdus.append(fits.ImageHDU(wht, name="WHT"))
    else:
        dq = np.zeros((ny, nx), dtype=np.uint32)
        dq[5, 7] = 1  # DO_NOT_USE
        dq[9, 9] = 4  # JUMP_DET
        sci[5, 7] = np.nan
        hdus.append(fits.ImageHDU(dq, name="DQ"))
    if with_asdf:
        ndarray = TaggedDict({"source": "fits:SCI,1", "shape": [ny, nx], "datatype": "float32",
                              "byteorder": "big"}, "tag:stsci.edu:asdf/core/ndarray-1.1.0")
        tree = {"meta": {"wcs": _gwcs(), "telescope": "JWST",
                         "instrument": {"name": "NIRCAM", "filter": "F200W"}},
                "data": ndarray}
        hdu = _asdf_hdu(tree)
        if broken_asdf:
            raw = hdu.data["ASDF_METADATA"][0]
            raw[100:200] = 0  # corrupt the YAML
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return path


def test_jwst_cal_with_gwcs(tmp_path):
    path = _write_jwst(tmp_path / "jw_nrcb1_cal.fits")
    exp = Exposure.from_fits(path)
    reference = _gwcs()
    from gwcs import WCS as GWCS

    assert isinstance(exp.wcs, GWCS)
    assert exp.meta["format"] == "JWST" and "gwcs" in exp.meta["wcs_source"]
    x, y = _probe_points(exp)
    np.testing.assert_allclose(exp.pixel_to_world(x, y), reference.pixel_to_world_values(x, y),
                               atol=1e-12, rtol=0)
    ra, dec = exp.pixel_to_world(x, y)
    np.testing.assert_allclose(exp.world_to_pixel(ra, dec), (x, y), atol=1e-7)
    assert exp.band == "F200W" and exp.exptime == 1288.4
    assert exp.unit == u.MJy / u.sr
    assert exp.zeropoint == pytest.approx(-2.5 * np.log10(1e6 * PIXAR_SR / 3631.0))
    assert exp.zeropoint == pytest.approx(-6.10 - 2.5 * np.log10(PIXAR_SR), abs=0.005)
    assert exp.mask[5, 7] and exp.mask[9, 9] and exp.mask.sum() == 2  # DQ != 0
    np.testing.assert_array_equal(exp.weight[~exp.mask], 1 / np.float64(np.float32(0.1)) ** 2)
    assert exp.name == "jw_nrcb1_cal"


def test_jwst_i2d_without_dq_masks_zero_weight(tmp_path):
    path = _write_jwst(tmp_path / "jw_i2d.fits", i2d=True, pupil="F162M")
    exp = Exposure.from_fits(path)  # NaN pixels have WHT == 0: masked without a warning
    assert exp.mask[:, :4].all() and not exp.mask[:, 4:].any()
    assert isinstance(exp.uncertainty, StdDevUncertainty)  # ERR preferred over WHT
    assert exp.band == "F150W2+F162M"


def test_jwst_fallback_to_fits_wcs(tmp_path):
    exp = Exposure.from_fits(_write_jwst(tmp_path / "no_asdf.fits", with_asdf=False))
    assert isinstance(exp.wcs, WCS) and exp.meta["wcs_source"] == "FITS header of SCI"
    assert exp.pixel_to_world(40, 30)[0] == pytest.approx(53.11, abs=1e-9)
    with pytest.warns(ExposureWarning, match="could not be read"):
        exp = Exposure.from_fits(_write_jwst(tmp_path / "broken.fits", broken_asdf=True))
    assert isinstance(exp.wcs, WCS)


def test_jwst_zeropoint_units():
    from astromix.data.loaders import jwst_zeropoint

    assert jwst_zeropoint(u.nJy) == pytest.approx(31.4, abs=1e-3)
    assert jwst_zeropoint(u.uJy) == pytest.approx(23.9, abs=1e-3)
    dn = jwst_zeropoint(u.DN / u.s, PIXAR_SR, 0.45)
    assert dn == pytest.approx(-2.5 * np.log10(0.45e6 * PIXAR_SR / 3631.0))
    assert jwst_zeropoint(u.MJy / u.sr) is None  # no pixel area
    assert jwst_zeropoint(None) is None


# -- HST-like files -------------------------------------------------------------------------------

PHOTFLAM = 7.8624e-20
PHOTPLAM = 5921.9


def _hand_zeropoint(photflam=PHOTFLAM, photplam=PHOTPLAM):
    # f_nu [erg/s/cm^2/Hz] of 1 count/s = PHOTFLAM * lambda^2 / c; AB = -2.5 log10 f_nu - 48.6
    f_nu = photflam * photplam ** 2 / 2.99792458e18
    return -2.5 * np.log10(f_nu) - 48.60


def _write_drz(path):
    ny, nx = 50, 60
    rng = np.random.default_rng(11)
    primary = fits.PrimaryHDU()
    primary.header.update({"TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC",
                           "FILTER1": "F606W", "FILTER2": "CLEAR2L", "EXPTIME": 2028.0})
    sci = fits.ImageHDU(rng.normal(0.0, 0.01, (ny, nx)).astype(np.float32), name="SCI")
    sci.header.update(_tan_wcs(crval=(189.2, 62.2), crpix=(30, 25), scale=0.05, sip=True)
                      .to_header(relax=True))
    sci.header.update({"BUNIT": "ELECTRONS/S", "PHOTFLAM": PHOTFLAM, "PHOTPLAM": PHOTPLAM})
    wht = rng.uniform(1500, 2100, (ny, nx)).astype(np.float32)
    wht[:3] = 0.0  # no coverage
    hdus = [primary, sci, fits.ImageHDU(wht, name="WHT"),
            fits.ImageHDU(np.ones((ny, nx), np.int32), name="CTX")]
    fits.HDUList(hdus).writeto(path)
    return wht


def _write_flt(path):
    ny, nx = 40, 45
    rng = np.random.default_rng(12)
    primary = fits.PrimaryHDU()
    primary.header.update({"TELESCOP": "HST", "INSTRUME": "WFC3", "DETECTOR": "UVIS",
                           "FILTER": "F814W", "EXPTIME": 500.0})
    hdus = [primary]
    errs = {}
    for ver in (1, 2):
        sci = fits.ImageHDU(rng.normal(100.0, 5.0, (ny, nx)).astype(np.float32), name="SCI",
                            ver=ver)
        sci.header.update(_tan_wcs(crval=(10.0, -5.0 + 0.001 * ver), crpix=(22, 20),
                                   scale=0.04, sip=True).to_header(relax=True))
        sci.header.update({"BUNIT": "ELECTRONS", "PHOTFLAM": PHOTFLAM * 1.1,
                           "PHOTPLAM": PHOTPLAM * 1.3})
        err = rng.uniform(4.0, 6.0, (ny, nx)).astype(np.float32)
        dq = np.zeros((ny, nx), np.int16)
        dq[ver, ver + 1] = 16
        errs[ver] = err
        hdus += [sci, fits.ImageHDU(err, name="ERR", ver=ver),
                 fits.ImageHDU(dq, name="DQ", ver=ver)]
    fits.HDUList(hdus).writeto(path)
    return errs


def test_hst_drz_with_wht(tmp_path):
    path = tmp_path / "j8xi01010_drz.fits"
    wht = _write_drz(path)
    exp = Exposure.from_fits(path)
    assert exp.meta["format"] == "HST" and exp.meta["weight_source"] == "WHT"
    assert exp.band == "F606W" and exp.exptime == 2028.0
    assert exp.unit == u.electron / u.s
    # Drizzled data are count rates: the zero point is that of 1 e-/s.
    assert exp.zeropoint == pytest.approx(-2.5 * np.log10(PHOTFLAM) - 5 * np.log10(PHOTPLAM)
                                          - 2.408)
    assert exp.zeropoint == pytest.approx(_hand_zeropoint(), abs=2e-3)
    assert exp.mask[:3].all() and not exp.mask[3:].any()
    np.testing.assert_array_equal(exp.weight[3:], wht[3:].astype(np.float64))
    assert exp.wcs.sip is not None


def test_hst_flt_with_err_and_chip(tmp_path):
    path = tmp_path / "iabc01xyq_flt.fits"
    errs = _write_flt(path)
    for ver in (1, 2):
        exp = Exposure.from_fits(path, hdu=None if ver == 1 else ("SCI", 2))
        assert exp.meta["weight_source"] == "ERR" and exp.band == "F814W"
        np.testing.assert_allclose(exp.weight[~exp.mask],
                                   (1.0 / errs[ver].astype(np.float64) ** 2)[~exp.mask])
        assert exp.mask.sum() == 1 and exp.mask[ver, ver + 1]
        assert exp.name == "iabc01xyq_flt" + ("" if ver == 1 else "_sci2")
        assert exp.pixel_to_world(21, 19)[1] == pytest.approx(-5.0 + 0.001 * ver, abs=1e-9)
        # Counts (ELECTRONS): the zero point of one electron in 500 s.
        expected = _hand_zeropoint(PHOTFLAM * 1.1, PHOTPLAM * 1.3) + 2.5 * np.log10(500.0)
        assert exp.zeropoint == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("bunit, unit, kind", [
    ("ELECTRONS/S", u.electron / u.s, "rate"),
    ("ELECTRONS", u.electron, "counts"),
    ("DN/S", u.DN / u.s, "rate"),          # WFPC2: S is a second, not a siemens
    ("COUNTS/SEC", u.count / u.s, "rate"),
    ("CTS", u.count, "counts"),
    ("ADU", u.adu, "counts"),
    ("counts per second", None, "rate"),   # astropy cannot parse it: read from the words
    ("ERG/S/CM2/A", u.erg / u.s / u.cm ** 2 / u.AA, None),  # A: an angstrom
])
def test_hst_bunit_spellings(tmp_path, bunit, unit, kind):
    """Exposure.from_fits and rescale_to_flux_units read one BUNIT the same way:
    the zero point is that of one unit per second exactly when rescale_to_flux_units
    does not divide by EXPTIME (``count_kind``)."""
    from astromix.data.loaders import count_kind
    from astromix.photometry import rescale_to_flux_units

    path = tmp_path / "drz.fits"
    _write_drz(path)
    with fits.open(path, mode="update") as hdul:
        hdul["SCI"].header["BUNIT"] = bunit
    assert count_kind(bunit) == kind
    rate = kind != "counts"  # PHOTFLAM is per count rate
    flam = unit is not None and unit.is_equivalent(u.erg / u.s / u.cm ** 2 / u.AA)
    exp = Exposure.from_fits(path)
    assert exp.unit == unit if unit is not None else exp.unit is None
    zp_rate = _hand_zeropoint()
    expected = zp_rate if rate else zp_rate + 2.5 * np.log10(2028.0)
    if flam:   # data already in f_lambda: the AB magnitude of one erg/s/cm^2/A at PHOTPLAM
        expected = _hand_zeropoint(photflam=1.0)
    assert exp.zeropoint == pytest.approx(expected, abs=2e-3)
    assert exp.meta["zeropoint_for_rate"] is rate
    hdr = fits.Header({"PHOTFLAM": 2e-19, "EXPTIME": 1000.0, "BUNIT": bunit})
    out = rescale_to_flux_units((np.ones((2, 2)), hdr), unit=1e-20)
    # f_lambda data are not multiplied by PHOTFLAM: 1 erg/s/cm^2/A is 1e20 units of 1e-20
    assert out.data[0, 0] == pytest.approx(1e20 if flam else 20.0 if rate else 0.02)


def test_hst_flux_density_bunit_zeropoint(tmp_path):
    """An HST image whose BUNIT is already a flux density: its zero point is the AB
    magnitude of one such unit (f_nu: 8.90 - 2.5 log10(unit / Jy)), not PHOTFLAM's, which
    is per count rate (the zero point of ERG/S/CM2/A data had been off by 2.5
    log10(PHOTFLAM), ~47 mag)."""
    path = tmp_path / "drz.fits"
    _write_drz(path)
    for bunit, expected in (("Jy", 8.90), ("uJy", 23.90), ("nJy", 31.40),
                            ("1e-20 erg/s/cm2/Angstrom", _hand_zeropoint(photflam=1e-20))):
        with fits.open(path, mode="update") as hdul:
            hdul["SCI"].header["BUNIT"] = bunit
        exp = Exposure.from_fits(path)
        assert exp.zeropoint == pytest.approx(expected, abs=1e-3), bunit


# -- plain images and bad files -------------------------------------------------------------------

def test_plain_image(tmp_path):
    path = tmp_path / "plain.fits.gz"
    hdu = fits.PrimaryHDU(np.ones((12, 14), np.float32), header=_tan_wcs().to_header())
    hdu.header.update({"FILTER": "R", "EXPTIME": 30.0, "BUNIT": "adu"})
    hdu.writeto(path)
    exp = Exposure.from_fits(path)
    assert exp.name == "plain" and exp.band == "R" and exp.exptime == 30.0
    assert exp.unit == u.adu and exp.uncertainty is None and exp.meta["format"] == "FITS image"
    weight = tmp_path / "plain_weight.fits"
    fits.PrimaryHDU(np.full((12, 14), 4.0)).writeto(weight)
    assert np.all(Exposure.from_fits(path, weight=weight).weight == 4.0)
    fits.PrimaryHDU(np.full((5, 5), 4.0)).writeto(tmp_path / "small.fits")
    with pytest.raises(InputError, match="small.fits"):
        Exposure.from_fits(path, weight=tmp_path / "small.fits")


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.fits"
    with pytest.raises(InputError, match="missing.fits"):
        Exposure.from_fits(missing)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this is not a FITS file at all" * 100)
    with pytest.raises(InputError, match="junk.fits"):
        Exposure.from_fits(junk)
    no_wcs = tmp_path / "no_wcs.fits"
    fits.PrimaryHDU(np.ones((5, 6))).writeto(no_wcs)
    with pytest.raises(InputError, match="no_wcs.fits.*celestial"):
        Exposure.from_fits(no_wcs)
    no_image = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="D", array=np.ones(3))])]).writeto(no_image)
    with pytest.raises(InputError, match="table.fits"):
        Exposure.from_fits(no_image)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.ones((5, 6)), header=_tan_wcs().to_header()).writeto(good)
    with pytest.raises(InputError, match="no HDU"):
        Exposure.from_fits(good, hdu="SCI")


def test_truncated_file_is_refused(tmp_path):
    good = tmp_path / "good.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((50, 60)),
                                                   header=_tan_wcs().to_header())]).writeto(good)
    raw = good.read_bytes()
    bad = tmp_path / "cut.fits"
    bad.write_bytes(raw[:len(raw) - 5000])
    with pytest.raises(InputError, match="cut.fits.*truncated"):
        Exposure.from_fits(bad)


# -- ASDF and HDF5 files --------------------------------------------------------------------------

def _rich_exposure(name="rich", wcs=None, **kwargs):
    shape = (21, 31)
    data = RNG.normal(5.0, 1.0, shape).astype(np.float32)
    data[2, 3] = np.nan
    sigma = np.full(shape, 0.5)
    sigma[4, 4] = 0.0
    psf = _psf(3, flux=2.5, x_0=1.5, y_0=-0.5, name="thepsf")
    psf.xoff_1.fixed = False
    with pytest.warns(ExposureWarning):
        return Exposure(data, uncertainty=sigma, wcs=_tan_wcs(sip=True) if wcs is None else wcs,
                        psf=psf, band="i", exptime=300.0, zeropoint=29.75, name=name,
                        meta={"ok": [1, 2.5, "x"], "nested": {"a": None}, "arr": np.ones(3),
                              "header": fits.Header()}, unit="electron/s",
                        psf_origin=(12.0, -3.0), **kwargs)


def _check_same(a, b):
    assert type(b) is Exposure
    np.testing.assert_array_equal(b.data, a.data)
    assert b.data.dtype == a.data.dtype
    np.testing.assert_array_equal(b.mask, a.mask)
    np.testing.assert_array_equal(b.weight, a.weight)
    assert isinstance(b.uncertainty, InverseVariance)
    for key in ("name", "band", "exptime", "zeropoint", "unit", "psf_origin"):
        assert getattr(b, key) == getattr(a, key), key
    x, y = _probe_points(a, n=9, seed=4)
    ra, dec = a.pixel_to_world(x, y)
    for got, want in zip(b.world_to_pixel(ra, dec), a.world_to_pixel(ra, dec)):
        np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


def _check_same_psf(got, want):
    assert isinstance(got, GaussianMixturePSF)
    assert got.param_names == want.param_names and got.name == want.name
    for name in want.param_names:
        assert getattr(got, name).value == getattr(want, name).value, name
        assert getattr(got, name).fixed == getattr(want, name).fixed, name
    yy, xx = np.mgrid[-8:9, -7:8]
    np.testing.assert_array_equal(got(xx, yy), want(xx, yy))


@pytest.mark.parametrize("suffix", [".asdf", ".h5", ".hdf5"])
def test_round_trip_astropy_wcs(tmp_path, suffix):
    exp = _rich_exposure()
    path = tmp_path / f"one{suffix}"
    exp.write(path)
    back = Exposure.read(path)
    _check_same(exp, back)
    _check_same_psf(back.psf, exp.psf)
    assert back.wcs.sip is not None
    assert back.meta == {"ok": [1, 2.5, "x"], "nested": {"a": None}}  # JSON-compatible part


@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_round_trip_gwcs(tmp_path, suffix):
    from gwcs import WCS as GWCS

    exp = Exposure(RNG.normal(size=(60, 80)), uncertainty=VarianceUncertainty(
        np.full((60, 80), 0.04)), wcs=_gwcs(), name="nircam", band="F200W")
    path = tmp_path / f"gwcs{suffix}"
    write_exposures(path, exp)
    (back,) = read_exposures(path)
    assert isinstance(back.wcs, GWCS)
    _check_same(exp, back)
    assert back.wcs.bounding_box is not None
    assert back.psf is None and back.exptime is None and back.unit is None


def test_asdf_file_validates_and_is_tagged(tmp_path):
    path = tmp_path / "tagged.asdf"
    write_exposures(path, [_rich_exposure("a"), _rich_exposure("b")])
    with asdf.open(path, _force_raw_types=True) as af:
        nodes = af.tree["exposures"]
        assert [n._tag for n in nodes] == ["asdf://astromix.org/astromix/tags/exposure-1.0.0"] * 2
        assert "RA---TAN-SIP" in nodes[0]["fits_wcs"]
    from astromix.io.asdf import open_asdf

    with open_asdf(path) as af:  # schema validation
        assert [e.name for e in af["exposures"]] == ["a", "b"]


def test_callable_psf_not_stored_warns_once(tmp_path):
    exposures = [_exposure(name=f"p{i}", psf=RecordingPSF()) for i in range(3)]
    for suffix in (".asdf", ".h5"):
        path = tmp_path / f"providers{suffix}"
        with pytest.warns(ExposureWarning, match="not written") as record:
            write_exposures(path, exposures)
        assert len(record) == 1 and "p0" in str(record[0].message)
        assert all(e.psf is None for e in read_exposures(path))


def test_hdf5_psf_settings_and_files_without_newer_keys(tmp_path):
    from astromix import AccuracySettings

    settings = AccuracySettings(n_sigma=6.0, merge_tolerance=1e-4)
    path = tmp_path / "settings.h5"
    write_exposures(path, _exposure(psf=_psf(settings=settings)))
    (back,) = read_exposures(path)
    assert back.psf.settings == settings

    def drop_merge_tolerance(name, obj):
        if "settings_merge_tolerance" in obj.attrs:
            del obj.attrs["settings_merge_tolerance"]
            dropped.append(name)

    dropped = []
    with h5py.File(path, "r+") as f:       # as written before merge_tolerance existed
        f.visititems(drop_merge_tolerance)
    assert dropped
    (back,) = read_exposures(path)
    assert back.psf.settings == settings.with_(merge_tolerance=AccuracySettings().merge_tolerance)


def test_hdf5_replacing_a_group_keeps_the_others(tmp_path):
    path = tmp_path / "scene.h5"
    a, b = _exposure(name="a", band="g"), _exposure(name="b", band="r")
    write_exposures(path, [a, b])
    with h5py.File(path, "r+") as f:  # something else in the file, e.g. a forcepho PSF group
        f.create_group("F200W").attrs["keep"] = 1
        f.attrs["note"] = "file attribute"
    before = path.read_bytes()
    b2 = _exposure(name="b", band="z")
    with pytest.raises(InputError, match="already has exposure 'b'"):
        write_exposures(path, b2)
    assert path.read_bytes() == before
    write_exposures(path, b2, overwrite=True)
    back = {e.name: e for e in read_exposures(path)}
    assert back["a"].band == "g" and back["b"].band == "z"
    np.testing.assert_array_equal(back["a"].data, a.data)
    with h5py.File(path, "r") as f:
        assert f["F200W"].attrs["keep"] == 1 and f.attrs["note"] == "file attribute"
    with pytest.raises(InputError, match="not an astromix exposure"):
        write_exposures(path, _exposure(name="F200W"), overwrite=True)


def test_asdf_update_keeps_other_exposures_and_keys(tmp_path):
    path = tmp_path / "scene.asdf"
    write_exposures(path, [_exposure(name="a", band="g"), _exposure(name="b", band="r")])
    with asdf.open(path, lazy_load=False, memmap=False) as af:
        tree = dict(af.tree)
    tree["notes"] = {"fit": "v1"}
    asdf.AsdfFile({k: v for k, v in tree.items() if k not in ("asdf_library", "history")}
                  ).write_to(path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="overwrite=False"):
        write_exposures(path, _exposure(name="a", band="z"))
    assert path.read_bytes() == before
    write_exposures(path, [_exposure(name="a", band="z"), _exposure(name="c", band="i")],
                    overwrite=True)
    assert [(e.name, e.band) for e in read_exposures(path)] == [("a", "z"), ("b", "r"),
                                                                ("c", "i")]
    with asdf.open(path) as af:
        assert af["notes"] == {"fit": "v1"}


@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_groups(tmp_path, suffix):
    path = tmp_path / f"groups{suffix}"
    write_exposures(path, _exposure(name="a"), group="scene1")
    write_exposures(path, _exposure(name="a", band="r"), group="scene2")
    assert read_exposures(path) == []
    assert read_exposures(path, group="scene2")[0].band == "r"
    assert read_exposures(path, group="scene1")[0].band is None
    with pytest.raises(InputError, match="no"):
        read_exposures(path, group="scene3")


def test_interrupted_hdf5_write_leaves_the_old_file(tmp_path, monkeypatch):
    import astromix.data.io as dio

    path = tmp_path / "scene.h5"
    write_exposures(path, [_exposure(name="a"), _exposure(name="b")])
    before = path.read_bytes()
    real = dio._fill_h5_group

    def boom(grp, payload):
        real(grp, payload)  # half the work is done in the temporary copy
        raise KeyboardInterrupt

    monkeypatch.setattr(dio, "_fill_h5_group", boom)
    with pytest.raises(KeyboardInterrupt):
        write_exposures(path, _exposure(name="b", band="z"), overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["scene.h5"]  # no temporary file left
    monkeypatch.undo()
    assert [e.band for e in read_exposures(path)] == [None, None]


def test_interrupted_asdf_write_leaves_the_old_file(tmp_path, monkeypatch):
    import astromix.data.io as dio

    path = tmp_path / "scene.asdf"
    write_exposures(path, _exposure(name="a"))
    before = path.read_bytes()

    def boom(asdf_module, tree, tmp):
        Path(tmp).write_bytes(b"#ASDF 1.0.0\n partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dio, "_write_asdf_tree", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_exposures(path, _exposure(name="b"))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["scene.asdf"]


def test_write_and_read_errors(tmp_path):
    exp = _exposure()
    with pytest.raises(InputError, match="unknown file type"):
        write_exposures(tmp_path / "x.fits", exp)
    with pytest.raises(InputError, match="needs a name"):
        write_exposures(tmp_path / "x.h5", _exposure(name=None))
    with pytest.raises(InputError, match="unique"):
        write_exposures(tmp_path / "x.h5", [exp, exp])
    with pytest.raises(InputError, match="group name"):
        write_exposures(tmp_path / "x.h5", _exposure(name="a/b"))
    with pytest.raises(InputError, match="no exposure to write"):
        write_exposures(tmp_path / "x.h5", [])
    with pytest.raises(InputError, match="does not exist"):
        read_exposures(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="junk.h5"):
        read_exposures(junk)
    with pytest.raises(InputError, match="refusing to replace"):
        write_exposures(junk, exp)
    assert junk.read_bytes() == b"not hdf5"
    junk_asdf = tmp_path / "junk.asdf"
    junk_asdf.write_bytes(b"not asdf")
    with pytest.raises(InputError, match="junk.asdf"):
        read_exposures(junk_asdf)
    with pytest.raises(InputError, match="refusing to replace"):
        write_exposures(junk_asdf, exp)
    path = tmp_path / "two.h5"
    write_exposures(path, [_exposure(name="a"), _exposure(name="b")])
    with pytest.raises(InputError, match="say which"):
        Exposure.read(path)
    assert Exposure.read(path, "b").name == "b"
    with pytest.raises(InputError, match="no exposure named"):
        Exposure.read(path, "c")


# -- cutouts --------------------------------------------------------------------------------------

def _check_cutout_world(exp, cut):
    x0, y0 = np.subtract(cut.psf_origin, exp.psf_origin)
    x, y = _probe_points(cut, n=8, seed=2)
    np.testing.assert_allclose(cut.pixel_to_world(x, y), exp.pixel_to_world(x + x0, y + y0),
                               atol=1e-11, rtol=0)
    ra, dec = exp.pixel_to_world(x + x0, y + y0)
    np.testing.assert_allclose(cut.world_to_pixel(ra, dec), (x, y), atol=1e-7)


@pytest.mark.parametrize("wcs", ["tan", "sip", "gwcs", "lookup"])
def test_cutout_keeps_world_coordinates_and_psf_positions(wcs):
    if wcs == "gwcs":
        w = _gwcs()
    elif wcs == "lookup":
        from astropy.wcs import DistortionLookupTable

        w = _tan_wcs(crpix=(40, 30), scale=0.05)
        rng = np.random.default_rng(1)
        for attr in ("cpdis1", "cpdis2"):
            table = rng.normal(0.0, 0.3, (9, 11)).astype(np.float32)
            setattr(w, attr, DistortionLookupTable(table, (1.0, 1.0), (1.0, 1.0), (10.0, 10.0)))
    else:
        w = _tan_wcs(crpix=(40, 30), sip=wcs == "sip")
    provider = RecordingPSF()
    data = RNG.normal(size=(60, 80))
    exp = Exposure(data, uncertainty=np.full((60, 80), 2.0), wcs=w, psf=provider, band="r",
                   name="big", psf_origin=(100.0, 50.0))
    ra, dec = exp.pixel_to_world(30.2, 21.7)
    cut = exp.cutout(ra, dec, (11, 15))
    assert cut.shape == (11, 15) and cut.name == "big" and cut.band == "r"
    assert cut.psf_origin == (100.0 + 23, 50.0 + 17)
    np.testing.assert_array_equal(cut.data, data[17:28, 23:38])
    assert np.all(cut.weight == 0.25)
    _check_cutout_world(exp, cut)
    # The PSF provider is still called in the original frame.
    cut.psf_at(2.0, 3.0)
    exp.psf_at(25.0, 20.0)
    assert provider.calls == [(125.0, 70.0), (125.0, 70.0)]
    # A cutout of a cutout adds the offsets.
    cut2 = cut.cutout(*cut.pixel_to_world(7, 5), 5)
    assert cut2.psf_origin == (cut.psf_origin[0] + 5, cut.psf_origin[1] + 3)
    _check_cutout_world(exp, cut2)


def test_cutout_modes_and_sizes():
    exp = _exposure(shape=(40, 50), wcs=_tan_wcs(crpix=(25, 20)))
    ra, dec = exp.pixel_to_world(1.0, 2.0)
    trimmed = exp.cutout(ra, dec, 9)
    assert trimmed.shape == (7, 6)
    partial = exp.cutout(ra, dec, 9, mode="partial")
    assert partial.shape == (9, 9) and partial.psf_origin == (-3.0, -2.0)
    assert partial.mask.sum() == 9 * 9 - 7 * 6 and np.all(partial.data[partial.mask] == 0)
    _check_cutout_world(exp, partial)
    with pytest.raises(InputError, match="leaves the image"):
        exp.cutout(ra, dec, 9, mode="strict")
    with pytest.raises(InputError, match="does not overlap"):
        exp.cutout(*exp.pixel_to_world(500.0, 500.0), 9)
    assert exp.cutout(*exp.pixel_to_world(25, 20), 2.0 * u.arcsec).shape == (10, 10)
    assert exp.cutout(*exp.pixel_to_world(25, 20), 7 * u.pix).shape == (7, 7)
    with pytest.raises(InputError, match="size"):
        exp.cutout(ra, dec, 0)
    with pytest.raises(InputError, match="size"):
        exp.cutout(ra, dec, 3 * u.s)
    with pytest.raises(InputError, match="mode"):
        exp.cutout(ra, dec, 5, mode="fill")


def test_cutout_of_gwcs_round_trips(tmp_path):
    exp = Exposure(RNG.normal(size=(60, 80)), wcs=_gwcs(), name="nrc")
    cut = exp.cutout(*exp.pixel_to_world(40, 30), 11)
    path = tmp_path / "cut.asdf"
    cut.write(path)
    back = Exposure.read(path)
    assert back.psf_origin == cut.psf_origin
    _check_cutout_world(exp, back)
