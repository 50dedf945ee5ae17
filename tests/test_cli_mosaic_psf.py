"""``astromix mosaic-psf`` with YOUNG's configuration on a simulated, drizzled i2d file."""

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import to_numpy

from astromix import GaussianMixture, InputError
from astromix.cli import main
from astromix.mosaic import (
    ExposureWeightedPSF,
    ImageProvider,
    read_psf_cube,
    simulate_drizzled_star_field,
)

OS = 4
PSF = GaussianMixture([0.7, 0.3], [[0.0, 0.0], [0.8, 0.4]], [np.diag([0.7, 0.4]), np.eye(2) * 0.5])


def psf_image(n=61):
    c = (n - 1) / 2.0
    return to_numpy(GaussianMixture(PSF.amp, PSF.mean * OS + c, PSF.cov * OS ** 2).render((n, n)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An i2d-like mosaic (SCI, CON, HDRTAB), a catalog, the CSV and the association."""
    folder = tmp_path_factory.mktemp("mosaic")
    provider = ImageProvider(psf_image(), oversampling=OS)
    sim = simulate_drizzled_star_field(provider, n_exposures=4, n_stars=6, exposure_scale=0.05,
                                       exposure_shape=(100, 100), star_spacing=1.0, rng=5)
    rows = []
    for exp in sim.exposures:
        m = exp.meta
        rows.append({"filename": exp.name + "_cal.fits", "effexptm": exp.exptime,
                     "ra_ref": exp.wcs.wcs.crval[0], "dec_ref": exp.wcs.wcs.crval[1],
                     "roll_ref": m["roll_ref"], "v3i_yang": m["v3i_yang"],
                     "vparity": m["vparity"], "pixel_scale": 0.05, "naxis1": 100,
                     "naxis2": 100, "detector": "NRCA1", "filter": "F200W"})
    hdrtab = Table(rows=rows)
    primary = fits.PrimaryHDU()
    sci = fits.ImageHDU(sim.image, header=sim.wcs.to_header(), name="SCI")
    con = fits.ImageHDU(sim.context, name="CON")
    tab = fits.table_to_hdu(hdrtab)
    tab.name = "HDRTAB"
    img_path = folder / "mosaic_i2d.fits"
    fits.HDUList([primary, sci, con, tab]).writeto(img_path)
    hdrtab[::-1].write(folder / "exposures.csv", format="ascii.csv")
    (folder / "asn.json").write_text(json.dumps({"products": [{"members": [
        {"expname": r["filename"], "exptype": "science"} for r in rows]}]}))
    order = np.array([3, 0, 5, 1, 4, 2])
    cat = Table({"NUMBER": np.arange(1, 7), "X_IMAGE": np.asarray(sim.stars["x"])[order] + 1,
                 "Y_IMAGE": np.asarray(sim.stars["y"])[order] + 1})
    cat.write(folder / "catalog.fits")
    fits.PrimaryHDU(psf_image()).writeto(folder / "psf.fits")
    with fits.open(folder / "psf.fits", mode="update") as h:
        h[0].header["OVERSAMP"] = OS
    return folder, sim, order


def config(folder, **extra):
    cfg = {"img_path": "mosaic_i2d.fits", "catalog_path": "catalog.fits",
           "association_path": "asn.json", "csv_path": "exposures.csv",
           "catalog_format": "fits", "catalog_hdu": 1, "x_col": "X_IMAGE", "y_col": "Y_IMAGE",
           "1-indexed": True, "psf_array_filename": "psfs.fits", "sigma": None,
           "pixel_scale": 0.03, "dimension": 21, "provider": "image",
           "provider_options": {"images": str(folder / "psf.fits")}}
    cfg.update(extra)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_cli_writes_the_cube_in_catalog_order(files, capsys):
    folder, sim, order = files
    assert main(["mosaic-psf", "--config", config(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 exposures, 6 sources, dim 21" in out and "wrote" in out
    cube, sources, meta = read_psf_cube(folder / "psfs.fits")
    assert cube.shape == (6, 21, 21) and meta["PSFDIM"] == 21
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, ImageProvider(psf_image(),
                                                                      oversampling=OS),
                                context=sim.context)
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    for k, n in enumerate(order):
        np.testing.assert_allclose(cube[k], model.image(x[n], y[n], 21), atol=1e-9)
    np.testing.assert_allclose(sources["x"], x[order] + 1)
    np.testing.assert_array_equal(sources["n_exposures"],
                                  np.asarray(sim.stars["n_exposures"])[order])


def test_cli_hdrtab_npy_sigma_and_zero_indexed_csv(files):
    folder, sim, order = files
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    Table({"x": x, "y": y}).write(folder / "catalog.csv", format="ascii.csv")
    cfg = config(folder, csv_path=None, association_path=None, catalog_path="catalog.csv",
                 catalog_format="csv", x_col="x", y_col="y", **{"1-indexed": False},
                 psf_array_filename="psfs.npy", sigma=0.8, dimension=12)
    assert main(["mosaic-psf", "--config", cfg, "--no-progress"]) == 0
    cube = np.load(folder / "psfs.npy")
    assert cube.shape == (6, 12, 12) and np.allclose(cube.sum((1, 2)), 1)
    plain, _, _ = read_psf_cube(folder / "psfs.fits")
    assert cube[0].max() < 0.95 * plain[1][4:16, 4:16].max()   # smoothed (source 0 = row 1)


@pytest.mark.parametrize("change, message", [
    ({"img_path": "missing.fits"}, "not a readable FITS"),
    ({"x_col": "XWIN"}, "no column 'XWIN'"),
    ({"provider": "hubble"}, "unknown provider"),
    ({"provider": "stpsf", "provider_options": {"data_path": "/nonexistent/stpsf"}},
     "stpsf data files"),
    ({"dimension": "big"}, "dimension must be an integer"),
    ({"dimension": 12.5}, "dimension must be an integer"),
    ({"dimension": 0}, "dimension must be >= 1"),
    ({"sigma": "wide"}, "sigma must be a number or null"),
    ({"pixfrac": "half"}, "pixfrac must be a number"),
    ({"max_workers": 2.5}, "max_workers must be an integer"),
    ({"max_workers": "4"}, "max_workers must be an integer"),
])
def test_cli_errors_are_one_line(files, capsys, change, message):
    folder, _, _ = files
    path = config(folder, **change)
    assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("astromix mosaic-psf:")
    if "must" in message:  # the configuration's checks name the file
        assert os.fspath(path) in err[0]


def test_config_integers(tmp_path):
    """dimension and max_workers: integral numbers are read as integers (and
    dimension from a string, as int() had read it); 12.5 was truncated to 12."""
    from astromix.cli.mosaic_psf import read_config

    base = {"img_path": "a.fits", "catalog_path": "c.csv", "psf_array_filename": "p.npy"}
    path = tmp_path / "c.json"
    for dimension, workers in ((12, 2), (12.0, 2.0), ("12", 2)):
        path.write_text(json.dumps(dict(base, dimension=dimension, max_workers=workers)))
        cfg = read_config(str(path))
        assert (cfg["dimension"], cfg["max_workers"]) == (12, 2)
        assert type(cfg["dimension"]) is int and type(cfg["max_workers"]) is int
    for change in ({"dimension": 12.5}, {"dimension": True}, {"dimension": float("inf")},
                   {"max_workers": "2"}):
        path.write_text(json.dumps(dict(base, **change)))
        with pytest.raises(InputError, match=f"{list(change)[0]} must be an integer"):
            read_config(str(path))


def test_cli_bad_config(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    assert main(["mosaic-psf", "--config", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    path.write_text(json.dumps({"img_path": "a.fits"}))
    assert main(["mosaic-psf", "--config", str(path)]) == 2
    assert "catalog_path" in capsys.readouterr().err
