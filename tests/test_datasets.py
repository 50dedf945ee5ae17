"""Tests of the data shipped in :mod:`astromix.datasets`."""

import os

import numpy as np
import pytest

from astromix import datasets
from astromix.errors import InputError


def test_files_and_licenses_are_shipped():
    names = datasets.list_files()
    for name in (datasets.HST_PSF_FILE, datasets.HST_CATALOG_FILE,
                 datasets.JWST_F200W_PSF_FILE, "LICENSE_hst_cosmos.txt",
                 "LICENSE_jwst_nexus_f200w.txt"):
        assert name in names
        assert os.path.isfile(datasets.get_path(name))
    readme = os.path.join(os.path.dirname(datasets.__file__), "README.rst")
    with open(readme, encoding="utf-8") as fh:
        assert "GalSim" in fh.read()
    with open(datasets.get_path("LICENSE_jwst_nexus_f200w.txt"), encoding="utf-8") as fh:
        assert "MIT License" in fh.read()
    total = sum(os.path.getsize(datasets.get_path(n)) for n in names)
    assert total < 2_000_000  # keep the package small


@pytest.mark.parametrize("name", ["nope.fits", "../__init__.py", "", None, "sub/x.fits"])
def test_get_path_refuses_unknown_names(name):
    with pytest.raises(InputError):
        datasets.get_path(name)


@pytest.mark.parametrize("index", [0, 1, 57, 99])
def test_load_hst_psf(index):
    image, header = datasets.load_hst_psf(index)
    assert image.dtype == np.float64 and image.ndim == 2
    assert set(image.shape) <= {37, 39}
    assert np.all(np.isfinite(image))
    assert 0.9 < image.sum() < 1.01
    j, i = np.unravel_index(np.argmax(image), image.shape)
    assert abs(j - image.shape[0] // 2) <= 2 and abs(i - image.shape[1] // 2) <= 2
    assert header["NAXIS1"] == image.shape[1] and header["NAXIS2"] == image.shape[0]
    assert header["FILTER"] == "F814W"
    assert header["PIXSCALE"] == pytest.approx(0.03)
    assert header["TELESCOP"] == "HST"
    assert 149 < header["RA"] < 151 and 1 < header["DEC"] < 3.5


def test_load_hst_psf_returns_independent_copies():
    a, _ = datasets.load_hst_psf(3)
    a[:] = 0
    b, _ = datasets.load_hst_psf(3)
    assert b.max() > 0


def test_hst_psfs_differ():
    a, _ = datasets.load_hst_psf(0)
    b, _ = datasets.load_hst_psf(1)
    assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.parametrize("index", [-1, 100, 1.5, "3", None, True])
def test_load_hst_psf_bad_index(index):
    with pytest.raises(InputError, match="index"):
        datasets.load_hst_psf(index)


def test_load_jwst_f200w_psf():
    image, header = datasets.load_jwst_f200w_psf()
    assert image.shape == (535, 535) and image.dtype == np.float64
    assert image.sum() == pytest.approx(1.0, abs=1e-5)
    assert header["OVERSAMP"] == 4
    assert header["N_GOOD_STARS"] == 29
    j, i = np.unravel_index(np.argmax(image), image.shape)
    assert abs(j - 267) <= 3 and abs(i - 267) <= 3


def test_load_cosmos_galaxy():
    image, psf_image, header = datasets.load_cosmos_galaxy()
    assert image.shape == (201, 201) and image.dtype == np.float64
    assert psf_image.shape == (101, 101) and psf_image.dtype == np.float64
    assert np.all(np.isfinite(image)) and np.all(np.isfinite(psf_image))
    # the PSF: unit sum, peak at the centre
    assert psf_image.sum() == pytest.approx(1.0, abs=1e-3)
    assert np.unravel_index(np.argmax(psf_image), psf_image.shape) == (51, 51)
    # the galaxy: near the centre, ~100 flux units over a sky noise ~2.6e-3
    from astropy.stats import sigma_clipped_stats

    _, median, std = sigma_clipped_stats(image)
    assert abs(median) < 1e-3 and 1e-3 < std < 5e-3
    w = np.where(image > 3 * std, image, 0.0)
    yy, xx = np.mgrid[:201, :201]
    xc, yc = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    assert abs(xc - 100) < 5 and abs(yc - 100) < 5
    assert 80 < image.sum() < 130
    # header: filter, scale and a WCS that still points at the galaxy after the cut
    assert header["FILTER"] == "F814W" and header["IDENT"] == 147246
    assert header["PIXSCALE"] == pytest.approx(0.03)
    assert header["NAXIS1"] == header["NAXIS2"] == 201
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra, dec = WCS(header).pixel_to_world_values(98, 98)
    assert ra == pytest.approx(150.416558, abs=2e-6) and dec == pytest.approx(1.998697, abs=2e-6)
    for name in (datasets.COSMOS_GALAXY_FILE, datasets.COSMOS_PSF_FILE):
        assert name in datasets.list_files()


def test_load_cosmos_galaxy_returns_independent_copies():
    a, p, _ = datasets.load_cosmos_galaxy()
    a[:] = 0
    p[:] = 0
    b, q, _ = datasets.load_cosmos_galaxy()
    assert b.max() > 0 and q.max() > 0
