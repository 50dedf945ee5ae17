"""Tests of the DECam multi-exposure data set shipped in :mod:`astromix.datasets`."""

import os
import warnings

import numpy as np
import pytest
from astropy.io import fits

from astromix import datasets
from astromix.errors import InputError


@pytest.fixture(scope="module")
def table():
    return datasets.decam_multiexposure()


def test_rows_bands_and_order(table):
    assert len(table) == 8
    bands = list(table["band"])
    assert sorted(bands) == ["g"] * 3 + ["r"] * 2 + ["z"] * 3
    assert np.all(np.diff(table["mjd_obs"]) > 0)  # sorted by date
    assert table["name"][0] == "c4d_140818_232043_z_N12"
    for row in table:
        prefix, date, time_, band, ccd = row["name"].split("_")
        assert prefix == "c4d" and len(date) == 6 and len(time_) == 6
        assert band == row["band"] and ccd == row["ccdname"]
        assert ccd in ("N10", "N11", "N12")
    assert len(set(table["expnum"])) == 8
    assert table["exptime"].unit == "s" and table["fwhm"].unit == "pix"
    assert table["zeropoint"].unit == "mag"
    assert np.all((table["exptime"] > 60) & (table["exptime"] < 120))
    assert np.all((table["fwhm"] > 2.5) & (table["fwhm"] < 6))
    assert table.meta["target"] == datasets.DECAM_TARGET


def test_files_exist_and_shapes(table):
    for row in table:
        shapes = []
        for key in ("image", "invvar", "dq", "psfex"):
            path = row[key]
            assert os.path.isabs(path) and os.path.isfile(path), path
            assert os.path.dirname(path).endswith(datasets.DECAM_FOLDER)
        for key in ("image", "invvar", "dq"):
            with fits.open(row[key]) as hdul:
                assert hdul[1].header["EXTNAME"].strip() == row["ccdname"]
                assert hdul[0].header["EXPNUM"] == row["expnum"]
                data = hdul[1].data
                shapes.append(data.shape)
                assert np.all(np.isfinite(data))
        assert shapes[0] == shapes[1] == shapes[2]
        assert shapes[0] in ((51, 41), (50, 41))
        with fits.open(row["invvar"]) as hdul:
            assert np.all(hdul[1].data > 0)
        with fits.open(row["dq"]) as hdul:
            assert hdul[1].data.dtype.kind in "iu"


def test_zeropoint_matches_inverse_variance(table):
    """counts per nanomaggy from the zero point == sky noise [ADU] / sig1 [nanomaggy]."""
    for row in table:
        with fits.open(row["invvar"]) as hdul:
            invvar = np.asarray(hdul[1].data, dtype=float)
        sigma_adu = 1.0 / np.sqrt(np.median(invvar))
        counts_per_nmgy = 10 ** (0.4 * (row["zeropoint"] - 22.5))
        ratio = sigma_adu / row["sig1"] / counts_per_nmgy
        assert ratio == pytest.approx(1.0, abs=0.05), row["name"]  # measured: 1.003-1.024
    # the definition: Legacy Surveys' ccdzpt (1 ADU/s) + 2.5 log10(exptime)
    from astropy.table import Table

    ccds = Table.read(datasets.get_path("decam_multiexposure/survey-ccds-1.fits.gz"))
    first = ccds[ccds["expnum"] == table["expnum"][0]][0]
    assert table["zeropoint"][0] == pytest.approx(first["ccdzpt"] + 2.5 * np.log10(118.0))


def test_target_is_the_galaxy_at_the_centre(table):
    from astropy.wcs import WCS

    for row in table:
        with fits.open(row["image"]) as hdul:
            header, image = hdul[1].header, np.asarray(hdul[1].data, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
        x, y = wcs.world_to_pixel_values(*datasets.DECAM_TARGET)
        j, i = np.unravel_index(np.argmax(image - np.median(image)), image.shape)
        assert abs(x - i) < 1.0 and abs(y - j) < 1.0, row["name"]
        assert abs(x - 20) < 2 and abs(y - 26) < 2


def test_paths_and_listing():
    names = datasets.list_files("decam_multiexposure")
    assert "decam_multiexposure/LICENSE.txt" in names
    assert "decam_multiexposure/README.rst" in names
    assert "decam_multiexposure/survey-ccds-1.fits.gz" in names
    assert sum(n.endswith("-psfex.fits.gz") for n in names) == 8
    assert sum("_ooi_" in n and not n.endswith("-psfex.fits.gz") for n in names) == 8
    for name in names:
        assert os.path.isfile(datasets.get_path(name))
    # the top-level listing is unchanged (the sub-folder is not in it)
    assert not any(n.startswith("decam") for n in datasets.list_files())
    with open(datasets.get_path("decam_multiexposure/LICENSE.txt"), encoding="utf-8") as fh:
        text = fh.read()
    assert "LegacyPipe" in text and "Redistribution" in text
    with open(datasets.get_path("decam_multiexposure/README.rst"), encoding="utf-8") as fh:
        text = fh.read()
    assert "Legacy Surveys" in text and "NOIRLab" in text and "BSD" in text
    total = sum(os.path.getsize(datasets.get_path(n)) for n in names)
    assert total < 1_000_000


@pytest.mark.parametrize("name", ["decam_multiexposure/nope.fits",
                                  "decam_multiexposure/../__init__.py",
                                  "decam_multiexposure/", "other/LICENSE.txt"])
def test_get_path_refuses_bad_names(name):
    with pytest.raises(InputError):
        datasets.get_path(name)


def test_list_files_refuses_unknown_folder():
    with pytest.raises(InputError, match="folder"):
        datasets.list_files("nope")
