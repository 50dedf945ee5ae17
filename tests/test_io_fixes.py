"""Review fixes of astromix.data.io (write_exposures / read_exposures).

* The pixels with bad data (non-finite) or bad uncertainty stayed masked only until the mask of
  an exposure read back was replaced: the full mask was written as the user's mask and the
  non-finite data as 0, so replacing the mask turned them into valid pixels of value 0.
* write_exposures(".h5") raised a bare TypeError for a name or band that is a numpy.str_
  (as taken from an astropy Table row, e.g. the shipped DECam exposure table).
"""

import warnings

import numpy as np
import pytest

from astromix import GaussianMixture, GaussianMixturePSF
from astromix.data import Exposure, ExposureWarning, read_exposures, write_exposures

SUFFIXES = [".h5", ".asdf"]


def _nan_exposure():
    data = np.arange(30.0).reshape(5, 6)
    data[1, 2], data[4, 0] = np.nan, -np.inf
    sigma = np.full((5, 6), 0.25)
    sigma[2, 1] = np.nan
    user = np.zeros((5, 6), bool)
    user[0, 0] = user[1, 2] = True  # one user-masked pixel is also bad data
    with pytest.warns(ExposureWarning):
        return Exposure(data, uncertainty=sigma, mask=user, name="e", band="r")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bad_pixels_stay_bad_when_the_mask_is_replaced(tmp_path, suffix):
    exp = _nan_exposure()
    path = tmp_path / f"e{suffix}"
    write_exposures(path, [exp])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading does not warn again about those pixels
        (back,) = read_exposures(path)
    np.testing.assert_array_equal(back.mask, exp.mask)
    np.testing.assert_array_equal(back.weight, exp.weight)
    np.testing.assert_array_equal(back.data, exp.data)
    new = np.zeros((5, 6), bool)
    new[4, 5] = True
    exp.mask = new
    back.mask = new
    truth = new.copy()
    truth[1, 2] = truth[4, 0] = truth[2, 1] = True  # bad data (NaN, -inf), bad uncertainty
    np.testing.assert_array_equal(exp.mask, truth)  # the original, as documented
    np.testing.assert_array_equal(back.mask, truth)
    np.testing.assert_array_equal(back.weight, exp.weight)
    assert back.weight[1, 2] == 0.0 and back.weight[0, 0] == 16.0


def test_hdf5_stores_the_user_mask_and_nan(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "e.h5"
    write_exposures(path, [_nan_exposure()])
    with h5py.File(path, "r") as f:
        mask = f["e/mask"][()]
        data = f["e/data"][()]
    user = np.zeros((5, 6), bool)
    user[0, 0] = user[1, 2] = True
    np.testing.assert_array_equal(mask, user)
    np.testing.assert_array_equal(np.argwhere(~np.isfinite(data)), [[1, 2], [4, 0]])
    assert np.isnan(data[1, 2]) and np.isnan(data[4, 0])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_decam_exposures_with_numpy_str_names_and_bands(tmp_path, suffix):
    """The shipped DECam exposures, named and banded from their table rows (numpy.str_), as
    astromix.cli.demo.load_decam_exposures does: the .h5 write raised TypeError."""
    from astromix.datasets import decam_multiexposure

    table = decam_multiexposure()
    psf = GaussianMixturePSF(GaussianMixture([0.7, 0.3], [[0, 0], [0, 0]],
                                             [np.eye(2) * 2.0, np.eye(2) * 6.0]),
                             name=np.str_("psf"))
    exposures = [Exposure.from_fits(row["image"], name=row["name"], band=row["band"],
                                    zeropoint=float(row["zeropoint"]), psf=psf)
                 for row in table[:3]]
    assert all(type(e.name) is np.str_ and type(e.band) is np.str_ for e in exposures)
    path = tmp_path / f"decam{suffix}"
    write_exposures(path, exposures)
    back = read_exposures(path)
    assert [e.name for e in back] == [str(n) for n in table["name"][:3]]
    assert [e.band for e in back] == [str(b) for b in table["band"][:3]]
    assert all(type(e.name) is str and type(e.band) is str for e in back)
    for got, want in zip(back, exposures):
        np.testing.assert_array_equal(got.data, want.data)
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.zeropoint == want.zeropoint
        assert got.psf.name == "psf"
        np.testing.assert_array_equal(got.psf.parameters, want.psf.parameters)
        x, y = np.array([3.0, 20.0]), np.array([5.0, 40.0])
        np.testing.assert_allclose(got.pixel_to_world(x, y), want.pixel_to_world(x, y),
                                   rtol=0, atol=1e-10)
