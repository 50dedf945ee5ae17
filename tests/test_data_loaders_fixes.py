"""Regression tests of astromix.data fixes: MPDAF images, DECam narrow bands, SkyCoord frames,
truncated companion files, float16/longdouble data, ASDF/HDF5 update details, input errors."""

import gzip
import os
import shutil
import stat
from pathlib import Path

import asdf
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import FK4, FK5, SkyCoord
from astropy.io import fits
from astropy.nddata import VarianceUncertainty
from astropy.wcs import WCS
from astropy.wcs.wcsapi import SlicedLowLevelWCS

from astromix import InputError
from astromix.data import Exposure, read_exposures, write_exposures
from astromix.datasets import cfht_a370, get_path, muse_hst_hdfs

h5py = pytest.importorskip("h5py")

DECAM_Z = "decam_multiexposure/c4d_140818_232043_{kind}_z_ls9.N12.fits.gz"


def _decam(kind):
    return get_path(DECAM_Z.format(kind=kind))


def _decam_copy(tmp_path, kinds=("ooi", "oow", "ood")):
    """Copies of the shipped DECam z triplet in ``tmp_path``: {kind: path}."""
    out = {}
    for kind in kinds:
        out[kind] = tmp_path / os.path.basename(_decam(kind))
        shutil.copyfile(_decam(kind), out[kind])
    return out


def _gwcs(frame, crval=(150.1, 2.2), shape=(60, 80), scale=0.031, distortion=False):
    """A TAN gwcs onto the celestial ``frame``; with a polynomial distortion (no inverse)."""
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gw

    ny, nx = shape
    forward = models.Shift(-(nx - 1) / 2) & models.Shift(-(ny - 1) / 2)
    if distortion:
        px = models.Polynomial2D(2, c1_0=1, c0_1=0.0, c2_0=2e-4, c1_1=1e-4)
        py = models.Polynomial2D(2, c0_1=1, c1_0=0.0, c0_2=-1e-4, c2_0=5e-5)
        forward = forward | models.Mapping((0, 1, 0, 1)) | (px & py)
    matrix = np.array([[-1.0, 0.1], [0.05, 1.0]]) * scale / 3600
    forward = (forward | models.AffineTransformation2D(matrix=matrix) | models.Pix2Sky_TAN()
               | models.RotateNative2Celestial(crval[0], crval[1], 180.0))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=frame, name="sky", unit=(u.deg, u.deg))
    wcs = gw.WCS([(detector, forward), (sky, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    wcs.array_shape = shape
    return wcs


# -- 1. MPDAF (MUSE) images ---------------------------------------------------------------------

def test_mpdaf_muse_image_reads_stat_as_variance_and_masks_dq():
    path = muse_hst_hdfs()["muse"]
    with fits.open(path) as hdul:
        data = hdul["DATA"].data.astype(np.float64)
        var = hdul["STAT"].data.astype(np.float64)
        dq = hdul["DQ"].data
    outside = dq != 0                      # the 1803 pixels outside the MUSE field
    bad = outside | ~np.isfinite(var)
    assert outside.sum() == 1803 and np.all(data[outside] == 0.0)
    exp = Exposure.from_fits(path)         # no warning (the test suite turns them into errors)
    assert exp.meta["format"] == "MPDAF" and exp.meta["hdu"] == "DATA[1]"
    assert isinstance(exp.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(exp.data, data)
    np.testing.assert_array_equal(exp.mask, bad)
    assert np.all(exp.weight[outside] == 0.0)
    np.testing.assert_array_equal(exp.weight[~bad], 1.0 / var[~bad])
    # the HST image of the pair (DATA only) is still a plain image
    assert Exposure.from_fits(muse_hst_hdfs()["hst"]).meta["format"] == "FITS image"


# -- 2. DECam narrow-band filters ---------------------------------------------------------------

@pytest.mark.parametrize("filt, band", [
    ("N501 DECam c0010 5010.0 75.0", "N501"),
    ("N673 DECam c0011 6730.0 100.0", "N673"),
    ("VR DECam c0007 6300.0 2600.0", "VR"),
    ("z DECam SDSS c0004 9260.0 1520.0", "z"),
    ("Y DECam c0005 10095.0 1130.0", "Y"),
])
def test_decam_band_is_the_first_word_of_filter(tmp_path, filt, band):
    paths = _decam_copy(tmp_path)
    with fits.open(_decam("ooi")) as hdul:
        assert hdul[0].header["FILTER"] == "z DECam SDSS c0004 9260.0 1520.0"
        hdul[0].header["FILTER"] = filt
        hdul.writeto(paths["ooi"], overwrite=True)
    exp = Exposure.from_fits(paths["ooi"])
    assert exp.band == band and exp.meta["filter"] == filt


# -- 3. SkyCoord in the WCS's own frame ---------------------------------------------------------

def test_skycoord_goes_to_the_fk5_frame_of_the_cfht_a370_image():
    exp = Exposure.from_fits(cfht_a370())
    assert exp.wcs.wcs.radesys == "FK5"
    x = np.array([900.0, 17.3, 1800.0])
    y = np.array([900.0, 1700.2, 33.0])
    truth = exp.wcs.pixel_to_world(x, y)            # SkyCoord in FK5 J2000
    for coord in (truth, truth.icrs, truth.galactic):
        got = exp.world_to_pixel(coord)
        want = exp.wcs.world_to_pixel(coord)        # astropy's own answer
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got, (x, y), atol=1e-6, rtol=0)
    # plain numbers are (ra, dec) in the WCS's frame, as before
    np.testing.assert_allclose(exp.world_to_pixel(truth.ra.deg, truth.dec.deg), (x, y),
                               atol=1e-6, rtol=0)


def test_skycoord_in_an_fk4_wcs_and_gwcs_contains_and_cutout():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [50.0, 50.0]
    wcs.wcs.cdelt = [-1 / 3600, 1 / 3600]
    wcs.wcs.radesys, wcs.wcs.equinox = "FK4", 1950.0
    wcs.wcs.set()
    exp = Exposure(np.ones((100, 100)), wcs=wcs)
    coord = wcs.pixel_to_world(49, 49).icrs
    np.testing.assert_allclose(exp.world_to_pixel(coord), wcs.world_to_pixel(coord), atol=1e-6)
    np.testing.assert_allclose(exp.world_to_pixel(coord), (49.0, 49.0), atol=1e-6)
    assert exp.contains(coord, margin=40)
    assert exp.cutout(coord, size=5).psf_origin == (47.0, 47.0)
    for frame in (FK4(equinox="B1950"), FK5(equinox="J2000")):
        gexp = Exposure(np.ones((60, 80)), wcs=_gwcs(frame))
        truth = gexp.wcs.pixel_to_world(12.25, 40.5)
        coord = SkyCoord(truth).icrs
        np.testing.assert_allclose(gexp.world_to_pixel(coord), gexp.wcs.world_to_pixel(coord),
                                   atol=1e-6)
        np.testing.assert_allclose(gexp.world_to_pixel(coord), (12.25, 40.5), atol=1e-6)


# -- 4. Truncated companion files ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["gz", "plain"])
def test_truncated_decam_weight_file_is_named(tmp_path, mode):
    paths = _decam_copy(tmp_path, ("ooi", "ood"))
    raw = Path(_decam("oow")).read_bytes()
    if mode == "gz":
        weight = tmp_path / os.path.basename(_decam("oow"))
        weight.write_bytes(raw[:int(len(raw) * 0.7)])
    else:
        full = gzip.decompress(raw)
        weight = tmp_path / os.path.basename(_decam("oow")).replace(".fits.gz", ".fits")
        weight.write_bytes(full[:len(full) - 4000])
    with pytest.raises(InputError, match=r"weight file .*_oow_.* is truncated") as info:
        Exposure.from_fits(paths["ooi"])
    assert "_ooi_" not in str(info.value)
    # given explicitly: the weight file is blamed, not the (good) science file
    with pytest.raises(InputError, match=r"weight file .*_oow_.* is truncated") as info:
        Exposure.from_fits(_decam("ooi"), weight=weight)
    assert "_ooi_" not in str(info.value)


def test_truncated_multi_hdu_decam_image_says_truncated(tmp_path):
    raw = Path(_decam("ooi")).read_bytes()
    cut = tmp_path / os.path.basename(_decam("ooi"))
    cut.write_bytes(raw[:int(len(raw) * 0.8)])
    with fits.open(cut) as hdul:             # astropy reads only the primary, silently
        assert len(hdul) == 1
    with pytest.raises(InputError, match=r"_ooi_.*truncated"):
        Exposure.from_fits(cut)


# -- 5. float16 and longdouble data -------------------------------------------------------------

@pytest.mark.parametrize("dtype, held", [(np.float16, np.float32), (np.longdouble, np.float64)])
@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_float16_and_longdouble_become_storable(tmp_path, dtype, held, suffix):
    values = np.arange(12.0).reshape(3, 4) / 8.0       # exact in float16
    exp = Exposure(values.astype(dtype), uncertainty=np.full((3, 4), 0.5, dtype), name="d")
    assert exp.data.dtype == held
    np.testing.assert_array_equal(exp.data, values)
    path = tmp_path / f"d{suffix}"
    write_exposures(path, exp)
    back = read_exposures(path)[0]
    assert back.data.dtype == held
    np.testing.assert_array_equal(back.data, values)
    np.testing.assert_array_equal(back.weight, np.full((3, 4), 4.0))


# -- 6 and 8. ASDF update keeps history entries and the file's mode ------------------------------

def test_asdf_update_keeps_history_entries(tmp_path):
    path = tmp_path / "h.asdf"
    af = asdf.AsdfFile({"catalog": np.arange(3)})
    af.add_history_entry("reduced with pipeline v1.2", software={"name": "pipe",
                                                                "version": "1.2"})
    af.write_to(path)
    with asdf.open(path) as af:
        before = [dict(e) for e in af["history"]["entries"]]
    write_exposures(path, Exposure(np.ones((3, 3)), name="a"))
    write_exposures(path, Exposure(np.ones((3, 3)), name="b"))
    with asdf.open(path) as af:
        after = [dict(e) for e in af["history"]["entries"]]
        assert [e.name for e in af["exposures"]] == ["a", "b"]
        np.testing.assert_array_equal(af["catalog"], np.arange(3))
    assert after == before and before[0]["description"] == "reduced with pipeline v1.2"


@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_update_keeps_the_file_mode(tmp_path, suffix):
    umask = os.umask(0)
    os.umask(umask)
    default = 0o666 & ~umask
    mode = 0o600 if default != 0o600 else 0o640
    path = tmp_path / f"p{suffix}"
    write_exposures(path, Exposure(np.ones((3, 3)), name="a"))
    os.chmod(path, mode)
    write_exposures(path, Exposure(np.ones((3, 3)), name="b"))
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert [e.name for e in read_exposures(path)] == ["a", "b"]


# -- 7. HDF5 groups keep the written order ------------------------------------------------------

def test_hdf5_group_keeps_the_written_order(tmp_path):
    path = tmp_path / "g.h5"
    names = ["zeta", "alpha", "mid"]
    write_exposures(path, [Exposure(np.ones((3, 3)), name=n) for n in names],
                    group="scene/night1")
    assert [e.name for e in read_exposures(path, group="scene/night1")] == names
    write_exposures(path, Exposure(np.ones((3, 3)), name="beta"), group="scene/night1")
    assert [e.name for e in read_exposures(path, group="scene/night1")] == names + ["beta"]


# -- 9. The dimensionless unit in HDF5 ----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".asdf", ".h5"])
def test_dimensionless_unit_round_trip(tmp_path, suffix):
    path = tmp_path / f"u{suffix}"
    write_exposures(path, [Exposure(np.ones((3, 3)), unit=u.dimensionless_unscaled, name="d"),
                           Exposure(np.ones((3, 3)), name="none")])
    got = {e.name: e.unit for e in read_exposures(path)}
    assert got["d"] == u.dimensionless_unscaled and got["d"] is not None
    assert got["none"] is None


# -- 10. Input errors ---------------------------------------------------------------------------

def test_exptime_quantity_must_be_a_time():
    for bad in (5 * u.m, 2 * u.ct):
        with pytest.raises(InputError, match="exptime must be a time"):
            Exposure(np.ones((3, 3)), exptime=bad)
    assert Exposure(np.ones((3, 3)), exptime=2 * u.min).exptime == 120.0


def test_jacobian_step_must_be_positive():
    exp = Exposure(np.ones((10, 10)), wcs=_gwcs(FK5(), shape=(10, 10)))
    for step in (0, -0.1, np.nan, np.inf):
        with pytest.raises(InputError, match="step"):
            exp.jacobian(5, 5, step=step)
    assert exp.pixel_scale(5, 5) == pytest.approx(0.031 * np.sqrt(1.005), rel=1e-5)


def test_hdf5_group_through_a_dataset_or_an_exposure(tmp_path):
    path = tmp_path / "s.h5"
    write_exposures(path, Exposure(np.ones((3, 3)), name="a"))
    with h5py.File(path, "r+") as f:
        f.create_dataset("catalog", data=np.arange(3))
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"s\.h5.*'catalog'.*not a group"):
        write_exposures(path, Exposure(np.ones((3, 3)), name="b"), group="catalog/sub")
    with pytest.raises(InputError, match=r"s\.h5.*'a'.*is an astromix exposure"):
        write_exposures(path, Exposure(np.ones((3, 3)), name="b"), group="a")
    assert path.read_bytes() == before


def test_world_to_pixel_failure_of_the_wcs_is_an_input_error():
    gwcs = _gwcs(FK5(), distortion=True)      # no analytic inverse
    exp = Exposure(np.ones((60, 80)), wcs=gwcs)
    try:
        want = gwcs.world_to_pixel_values(150.1, 2.2)
    except Exception:
        want = None                           # gwcs 1.0: its numerical inverse fails
    if want is None:
        with pytest.raises(InputError, match="cannot map sky to pixels"):
            exp.world_to_pixel(150.1, 2.2)
        with pytest.raises(InputError, match="cannot map sky to pixels"):
            exp.contains(150.1, 2.2)
    else:
        np.testing.assert_allclose(exp.world_to_pixel(150.1, 2.2), want)

    class NoInverse(SlicedLowLevelWCS):
        """An APE 14 low-level WCS whose sky-to-pixel mapping fails."""

        def world_to_pixel_values(self, *world):
            raise NotImplementedError("no inverse")

    tan = WCS(naxis=2)
    tan.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    tan.wcs.crval, tan.wcs.cdelt = [150.0, 2.0], [-1e-4, 1e-4]
    stub = Exposure(np.ones((5, 5)), wcs=NoInverse(tan, Ellipsis))
    with pytest.raises(InputError, match="cannot map sky to pixels: NotImplementedError"):
        stub.world_to_pixel(150.0, 2.0)
    with pytest.raises(InputError, match="cannot map sky to pixels"):
        stub.contains(150.0, 2.0)
