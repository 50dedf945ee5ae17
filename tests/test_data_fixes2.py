"""Review fixes (second round) of astromix.data: FITS companions, MPDAF, cutouts, files.

1. A weight= / dq= file mirroring an HST/JWST multi-chip layout gave chip 2 the values of
   chip 1 (the companion HDU was looked up by EXTNAME alone).
2. A DATA + DQ file without STAT (an MPDAF image without variance, every ``astromix
   regrid`` output whose reference has no uncertainty) was read as a plain image: DQ lost.
3. Replacing a cutout's mask unmasked its bad pixels (NaN data, pixels outside the image).
4. HDF5 files that write_exposures did not create gave the exposures alphabetically.
5. A science image in the primary HDU made the weight file's empty primary "match".
6. Exposure.cutout accepted a position off the image (its docstring: InputError).
7. write_exposures(".asdf", group=...) accepted the keys ASDF reserves.
"""

import os
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from astromix import GaussianMixture
from astromix.cli import main
from astromix.data import Exposure, read_exposures, write_exposures
from astromix.datasets import cfht_a370, muse_hst_hdfs
from astromix.errors import InputError


def _tan_wcs(crpix=(25.0, 25.0), scale=1e-4):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    w.wcs.cdelt = [-scale, scale]
    return w


# -- 1. companion files: the HDU of the same chip ------------------------------------------------

def _mef(path, arrays, dtype, wcs=None):
    """An HST-like file: empty primary (TELESCOP HST), one ('SCI', k) HDU per array."""
    hdus = [fits.PrimaryHDU(header=fits.Header({"TELESCOP": "HST", "INSTRUME": "ACS"}))]
    for ver, arr in arrays:
        header = wcs.to_header() if wcs is not None else fits.Header()
        hdus.append(fits.ImageHDU(np.asarray(arr, dtype), header, name="SCI", ver=ver))
    fits.HDUList(hdus).writeto(path)
    return str(path)


def test_weight_and_dq_files_are_read_for_the_same_chip(tmp_path):
    shape = (20, 30)
    rng = np.random.default_rng(1)
    ivar = {1: rng.uniform(1.0, 2.0, shape), 2: rng.uniform(50.0, 100.0, shape)}
    flags = {1: np.zeros(shape, np.int16), 2: np.zeros(shape, np.int16)}
    flags[1][7, 7] = 4
    flags[2][3, 11] = 16
    sci = _mef(tmp_path / "j_flt.fits", [(1, np.ones(shape)), (2, np.full(shape, 2.0))],
               np.float32, _tan_wcs())
    wht = _mef(tmp_path / "j_ivm.fits", [(1, ivar[1]), (2, ivar[2])], np.float32)
    dq = _mef(tmp_path / "j_dq.fits", [(1, flags[1]), (2, flags[2])], np.int16)
    for ver in (1, 2):
        exp = Exposure.from_fits(sci, hdu=("SCI", ver), weight=wht, dq=dq)
        assert np.all(exp.data == ver)
        truth_mask = flags[ver] != 0
        np.testing.assert_array_equal(exp.mask, truth_mask)
        np.testing.assert_array_equal(exp.weight[~truth_mask],
                                      ivar[ver].astype(np.float32)[~truth_mask])


def test_companion_with_one_hdu_of_the_name_is_used_for_any_chip(tmp_path):
    shape = (20, 30)
    sci = _mef(tmp_path / "j_flt.fits", [(1, np.ones(shape)), (2, np.full(shape, 2.0))],
               np.float32, _tan_wcs())
    # the weight of chip 2 alone, in a file of its own (EXTVER 1)
    wht = _mef(tmp_path / "chip2_ivm.fits", [(1, np.full(shape, 9.0))], np.float32)
    exp = Exposure.from_fits(sci, hdu=("SCI", 2), weight=wht)
    assert np.all(exp.weight == 9.0)


def test_companion_with_other_chips_only_is_refused(tmp_path):
    shape = (20, 30)
    sci = _mef(tmp_path / "j_flt.fits", [(1, np.ones(shape)), (2, np.full(shape, 2.0))],
               np.float32, _tan_wcs())
    wht = _mef(tmp_path / "j_ivm.fits", [(1, np.ones(shape)), (3, np.ones(shape))],
               np.float32)
    with pytest.raises(InputError, match=r"j_ivm\.fits.*none of the image's EXTVER 2"):
        Exposure.from_fits(sci, hdu=("SCI", 2), weight=wht)


# -- 2. DATA + DQ without STAT --------------------------------------------------------------------

def test_mpdaf_image_without_variance_keeps_its_dq(tmp_path):
    src = muse_hst_hdfs()["muse"]
    path = tmp_path / "muse_nostat.fits"
    with fits.open(src) as hdul:
        data = hdul["DATA"].data.astype(np.float64)
        dq = hdul["DQ"].data.copy()
        fits.HDUList([hdul[0].copy(), hdul["DATA"].copy(), hdul["DQ"].copy()]).writeto(path)
    outside = dq != 0
    assert outside.sum() == 1803  # the pixels outside the MUSE field, 0 in DATA
    exp = Exposure.from_fits(path)
    assert exp.meta["format"] == "MPDAF" and exp.uncertainty is None
    np.testing.assert_array_equal(exp.mask, outside)
    np.testing.assert_array_equal(exp.data, data)
    assert np.all(exp.weight[outside] == 0.0) and np.all(exp.weight[~outside] == 1.0)


def test_regrid_output_without_stat_keeps_its_dq(tmp_path):
    pair = muse_hst_hdfs()
    out = tmp_path / "hst_on_muse.fits"
    assert main(["regrid", pair["hst"], pair["muse"], "-o", str(out)]) == 0
    with fits.open(out) as hdul:
        assert "STAT" not in hdul  # the HST reference has no uncertainty
        data = hdul["DATA"].data.copy()
        uncovered = hdul["DQ"].data != 0
    assert uncovered.sum() > 50_000  # most of the MUSE grid lies outside the HST image
    exp = Exposure.from_fits(out)
    np.testing.assert_array_equal(exp.mask, uncovered)
    np.testing.assert_array_equal(exp.data[~uncovered], data[~uncovered])
    assert not np.any(exp.weight[uncovered])


# -- 3. a cutout keeps its bad pixels bad ---------------------------------------------------------

def _bad_pixel_exposure():
    rng = np.random.default_rng(3)
    data = rng.normal(10.0, 1.0, (50, 50))
    sigma = np.full((50, 50), 0.5)
    data[24, 24] = np.nan          # bad data at the centre
    sigma[22, 26] = 0.0            # bad uncertainty
    user = np.zeros((50, 50), bool)
    user[26, 23] = True            # masked by the user
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = Exposure(data, uncertainty=sigma, mask=user, wcs=_tan_wcs(), name="e")
    return exp, data, sigma, user


@pytest.mark.parametrize("pixel, mode", [((24.0, 24.0), "trim"), ((21.0, 24.0), "partial"),
                                         ((1.0, 24.0), "partial")])
def test_cutout_mask_reset_keeps_bad_pixels_masked(pixel, mode):
    exp, data, sigma, user = _bad_pixel_exposure()
    ra, dec = exp.pixel_to_world(*pixel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cutout reports no masked pixel again
        cut = exp.cutout(ra, dec, 11, mode=mode)
    # the truth: astropy's Cutout2D of the original arrays (NaN outside the image)
    kw = {"mode": mode, "fill_value": np.nan}
    c_data = Cutout2D(data, pixel, 11, **kw).data
    c_sigma = Cutout2D(sigma, pixel, 11, **kw).data
    c_user = Cutout2D(user.astype(float), pixel, 11, **kw).data == 1
    bad = ~np.isfinite(c_data) | ~(c_sigma > 0)
    assert cut.shape == c_data.shape
    np.testing.assert_array_equal(cut.mask, bad | c_user)
    cut.mask = np.zeros(cut.shape, bool)  # replace the user mask
    np.testing.assert_array_equal(cut.mask, bad)
    assert np.all(cut.weight[bad] == 0.0) and np.all(cut.data[~np.isfinite(c_data)] == 0.0)
    np.testing.assert_array_equal(cut.weight[~bad], 1.0 / c_sigma[~bad] ** 2)
    np.testing.assert_array_equal(cut.data[np.isfinite(c_data)], c_data[np.isfinite(c_data)])


def test_cutout_of_real_mpdaf_image_keeps_the_field_edge_masked(tmp_path):
    path = muse_hst_hdfs()["muse"]
    with fits.open(path) as hdul:
        stat = hdul["STAT"].data.astype(np.float64)
        dq = hdul["DQ"].data
    exp = Exposure.from_fits(path)
    pixel = (3.0, 160.0)  # at the field's edge, 3 px from the image's
    cut = exp.cutout(*exp.pixel_to_world(*pixel), 15, mode="partial")
    c_stat = Cutout2D(stat, pixel, 15, mode="partial", fill_value=np.nan).data
    c_dq = Cutout2D(dq.astype(float), pixel, 15, mode="partial", fill_value=0.0).data
    unusable = ~(np.isfinite(c_stat) & (c_stat > 0))  # no variance: outside field or image
    assert unusable.any() and (c_dq != 0).any()
    np.testing.assert_array_equal(cut.mask, unusable | (c_dq != 0))
    cut.mask = np.zeros(cut.shape, bool)  # DQ was the reader's mask: only it is dropped
    np.testing.assert_array_equal(cut.mask, unusable)
    # the cutout written and read back keeps them too
    cut.write(tmp_path / "cut.h5")
    back = Exposure.read(tmp_path / "cut.h5")
    back.mask = np.zeros(cut.shape, bool)
    np.testing.assert_array_equal(back.mask, unusable)


# -- 4. HDF5 write order in any file --------------------------------------------------------------

def _small(name):
    return Exposure(np.ones((4, 5)), name=name)


def test_hdf5_order_in_a_forcepho_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    from astromix.io.forcepho import write_psf_mixture

    path = tmp_path / "scene.h5"
    write_psf_mixture(path, "F200W", GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0]))
    write_exposures(path, [_small("z_1"), _small("g_1"), _small("r_1")])
    assert [e.name for e in read_exposures(path)] == ["z_1", "g_1", "r_1"]
    write_exposures(path, [_small("g_1")], overwrite=True)  # a replaced exposure moves last
    assert [e.name for e in read_exposures(path)] == ["z_1", "r_1", "g_1"]
    write_exposures(path, [_small("a_2")])
    assert [e.name for e in read_exposures(path)] == ["z_1", "r_1", "g_1", "a_2"]
    with h5py.File(path, "r") as f:  # the forcepho band is kept
        assert "F200W" in f and sorted(f) == ["F200W", "a_2", "g_1", "r_1", "z_1"]


def test_hdf5_order_under_a_group_of_a_plain_h5py_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:  # no track_order anywhere
        f.create_group("scene").create_dataset("catalog", data=np.arange(3))
    write_exposures(path, [_small("y"), _small("b"), _small("m")], group="scene")
    write_exposures(path, [_small("b")], overwrite=True, group="scene")
    assert [e.name for e in read_exposures(path, group="scene")] == ["y", "m", "b"]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["scene/catalog"][()], np.arange(3))


def test_hdf5_files_without_write_counters_stay_readable(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "old.h5"
    write_exposures(path, [_small("z"), _small("a")])
    with h5py.File(path, "r+") as f:  # as written before the counter existed
        for name in ("z", "a"):
            for key in [k for k in f[name].attrs if "order" in k]:
                del f[name].attrs[key]
    assert [e.name for e in read_exposures(path)] == ["z", "a"]  # the root's creation order
    write_exposures(path, [_small("c")])
    assert [e.name for e in read_exposures(path)] == ["z", "a", "c"]


# -- 5. a weight file behind an empty primary ----------------------------------------------------

def test_weight_file_with_empty_primary_for_a_primary_hdu_image(tmp_path):
    path = cfht_a370()
    with fits.open(path) as hdul:
        assert hdul[0].data is not None and len(hdul) == 1  # the image is the primary HDU
        shape = hdul[0].data.shape
    ivar = np.random.default_rng(5).uniform(1.0, 3.0, shape).astype(np.float32)
    wht = tmp_path / "a370_wht.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(ivar, name="WHT")]).writeto(wht)
    exp = Exposure.from_fits(path, weight=wht)
    np.testing.assert_array_equal(exp.weight, ivar.astype(np.float64))
    assert exp.meta["weight_file"] == os.path.abspath(wht)


# -- 6. cutout positions off the image ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["trim", "partial"])
def test_cutout_refuses_a_position_off_the_image(mode):
    exp = Exposure(np.ones((40, 50)), wcs=_tan_wcs(), name="e")
    for px, py in ((-5.0, 20.0), (25.0, 40.2), (50.4, 3.0)):
        ra, dec = exp.pixel_to_world(px, py)
        assert not exp.contains(ra, dec)
        with pytest.raises(InputError, match="is not on exposure 'e'"):
            exp.cutout(ra, dec, 21, mode=mode)
    ra, dec = exp.pixel_to_world(-0.4, 20.0)  # in the border pixel: on the image
    assert exp.contains(ra, dec)
    truth = Cutout2D(np.ones((40, 50)), (-0.4, 20.0), 21, mode=mode, fill_value=0.0)
    assert exp.cutout(ra, dec, 21, mode=mode).shape == truth.shape


# -- 7. ASDF's reserved keys ---------------------------------------------------------------------

@pytest.mark.parametrize("key", ["asdf_library", "history"])
def test_asdf_reserved_keys_are_refused(tmp_path, key):
    asdf = pytest.importorskip("asdf")
    path = tmp_path / "scene.asdf"
    with pytest.raises(InputError, match=rf"scene\.asdf.*{key}.*reserve"):
        write_exposures(path, _small("a"), group=key)
    assert not path.exists()
    write_exposures(path, _small("a"))
    before = path.read_bytes()
    with pytest.raises(InputError, match=rf"scene\.asdf.*{key}"):
        write_exposures(path, _small("b"), group=key)
    assert path.read_bytes() == before
    with asdf.open(path) as af:
        assert [e.name for e in af.tree["exposures"]] == ["a"]
