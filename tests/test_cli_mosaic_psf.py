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


def assert_cube_is_the_model(cube, sim, order):
    """The cube the command wrote is ExposureWeightedPSF's own, star by star (catalog order)."""
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, ImageProvider(psf_image(),
                                                                      oversampling=OS),
                                context=sim.context)
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    for k, n in enumerate(order):
        np.testing.assert_allclose(cube[k], model.image(x[n], y[n], 21), atol=1e-9)


def test_cli_writes_the_cube_in_catalog_order(files, capsys):
    folder, sim, order = files
    assert main(["mosaic-psf", "--config", config(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 exposures, 6 sources, dim 21" in out and "wrote" in out
    cube, sources, meta = read_psf_cube(folder / "psfs.fits")
    assert cube.shape == (6, 21, 21) and meta["PSFDIM"] == 21
    assert_cube_is_the_model(cube, sim, order)
    np.testing.assert_allclose(sources["x"], np.asarray(sim.stars["x"])[order] + 1)
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
    ({"pixel_scale": 0}, "pixel_scale must be a positive number"),
    ({"pixel_scale": -0.03}, "pixel_scale must be a positive number"),
    ({"pixel_scale": "0.03 arcsec"}, "pixel_scale must be a positive number"),
    ({"pixel_scale": [0.03]}, "pixel_scale must be a positive number"),
    ({"pixel_scale": True}, "pixel_scale must be a positive number"),
    ({"overwrite": "maybe"}, "overwrite must be true or false"),
    ({"overwrite": 2}, "overwrite must be true or false"),
    ({"1-indexed": "F"}, "1-indexed must be true or false"),
    ({"1-indexed": [1]}, "1-indexed must be true or false"),
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


def _no_psf(monkeypatch):
    """Make the model building fail loudly: the refusals must come before any PSF."""
    def from_i2d(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before any PSF is computed")

    monkeypatch.setattr(ExposureWeightedPSF, "from_i2d", from_i2d)


def test_config_pixel_scale_and_booleans(tmp_path):
    """pixel_scale is read as a positive float; booleans strictly (bool("false") was True)."""
    from astromix.cli.mosaic_psf import read_config

    base = {"img_path": "a.fits", "catalog_path": "c.csv"}
    path = tmp_path / "c.json"
    for value in (0.03, "0.03", 3e-2):
        path.write_text(json.dumps(dict(base, pixel_scale=value)))
        assert read_config(str(path))["pixel_scale"] == 0.03
    for value, truth in ((True, True), (False, False), (1, True), (0, False), ("true", True),
                         ("false", False), ("False", False), ("yes", True), ("no", False),
                         ("1", True), ("0", False), (" TRUE ", True)):
        for key in ("1-indexed", "one_indexed", "1_indexed"):
            path.write_text(json.dumps(dict(base, overwrite=value, **{key: value})))
            cfg = read_config(str(path))
            assert cfg["overwrite"] is truth and cfg["one_indexed"] is truth


def test_config_two_spellings_of_one_field(tmp_path):
    """Two spellings of 1-indexed (or of STPSF_PATH) that disagree are refused; the first
    had been read and the others ignored, so a 1-based catalog could be shifted by 1 px."""
    from astromix.cli.mosaic_psf import read_config

    base = {"img_path": "a.fits", "catalog_path": "c.csv"}
    path = tmp_path / "c.json"
    for fields in ({"1-indexed": False, "one_indexed": True},
                   {"one_indexed": "no", "1_indexed": "yes"},
                   {"STPSF_PATH": "a", "stpsf_path": "b"}):
        path.write_text(json.dumps(dict(base, **fields)))
        keys = list(fields)
        with pytest.raises(InputError, match=rf"c\.json.*{keys[0]} and {keys[1]} are the "
                                             "same field and disagree"):
            read_config(str(path))
    for fields, one in (({"1-indexed": True, "one_indexed": "yes"}, True),
                        ({"one_indexed": 0, "1_indexed": "false"}, False)):
        path.write_text(json.dumps(dict(base, **fields)))
        assert read_config(str(path))["one_indexed"] is one
    path.write_text(json.dumps(dict(base, STPSF_PATH="d", stpsf_path="d")))
    assert read_config(str(path))["stpsf_path"] == str(tmp_path / "d")


def test_cli_overwrite_string_false_keeps_the_file(files, capsys):
    """"overwrite": "false" replaced an existing cube (bool("false") is True)."""
    folder, _, _ = files
    target = folder / "kept.fits"
    target.write_bytes(b"precious")
    path = config(folder, psf_array_filename="kept.fits", overwrite="false")
    assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 2
    assert "exists and overwrite is false" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"


def test_cli_one_indexed_string_false(files, monkeypatch):
    """"1-indexed": "false" on 0-based positions shifted every PSF by -1 px (the stamps of
    this field do not show it: the positions given to the model are checked)."""
    folder, sim, order = files
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    Table({"x": x, "y": y}).write(folder / "catalog0.csv", format="ascii.csv", overwrite=True)
    cfg = config(folder, catalog_path="catalog0.csv", catalog_format="csv", x_col="x",
                 y_col="y", psf_array_filename="zero_based.fits", **{"1-indexed": "false"})
    seen = []
    cube_method = ExposureWeightedPSF.cube

    def spy(self, xs, ys, *args, **kwargs):
        seen.append((np.array(xs), np.array(ys)))
        return cube_method(self, xs, ys, *args, **kwargs)

    monkeypatch.setattr(ExposureWeightedPSF, "cube", spy)
    assert main(["mosaic-psf", "--config", cfg, "--no-progress"]) == 0
    np.testing.assert_array_equal(seen[0][0], x)
    np.testing.assert_array_equal(seen[0][1], y)
    cube, sources, _ = read_psf_cube(folder / "zero_based.fits")
    np.testing.assert_allclose(sources["x"], x)
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, ImageProvider(psf_image(),
                                                                      oversampling=OS),
                                context=sim.context)
    for k in range(x.size):
        np.testing.assert_allclose(cube[k], model.image(x[k], y[k], 21), atol=1e-9)


@pytest.mark.parametrize("name, match", [
    ("psfs.h5", "unknown PSF cube format"),
    ("a_folder.fits", "is a folder, not a file"),
    ("/proc/psfs.fits", "cannot write in the output folder '/proc'"),
], ids=["extension", "folder", "proc"])
def test_cli_output_refused_before_any_psf(files, capsys, monkeypatch, name, match):
    """A psf_array_filename the write would refuse was found after every PSF (hours with
    stpsf)."""
    if name.startswith("/proc") and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    folder, _, _ = files
    (folder / "a_folder.fits").mkdir(exist_ok=True)
    _no_psf(monkeypatch)
    path = config(folder, psf_array_filename=name)
    assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not (folder / "psfs.h5").exists()


def test_cli_creates_a_missing_output_folder(files):
    """psf_array_filename in a folder not yet made: created (as psf-mixture and psf-field do),
    where the write failed after every PSF."""
    folder, _, _ = files
    path = config(folder, psf_array_filename="new_folder/psfs.fits")
    assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 0
    cube, _, meta = read_psf_cube(folder / "new_folder" / "psfs.fits")
    assert cube.shape == (6, 21, 21) and meta["PSFDIM"] == 21


@pytest.mark.parametrize("images", ["psf.fits", {"NRCA1": "psf.fits"}], ids=["path", "mapping"])
def test_cli_provider_images_relative_to_the_config(files, tmp_path, monkeypatch, images):
    """provider_options.images was taken from the current folder, the other paths from the
    config's: run from elsewhere, it was not found."""
    folder, sim, order = files
    monkeypatch.chdir(tmp_path)
    name = "rel_images.fits"
    path = config(folder, provider_options={"images": images, "oversampling": OS},
                  psf_array_filename=name)
    assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 0
    cube, _, _ = read_psf_cube(folder / name)
    assert_cube_is_the_model(cube, sim, order)


def test_config_stpsf_path_relative_to_the_config(tmp_path, monkeypatch):
    from astromix.cli.mosaic_psf import read_config

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.json"
    monkeypatch.chdir(tmp_path)
    for key in ("STPSF_PATH", "stpsf_path"):
        path.write_text(json.dumps({"img_path": "a.fits", "catalog_path": "c.csv",
                                    key: "stpsf-data",
                                    "provider_options": {"data_path": "data"}}))
        cfg = read_config("cfg/c.json")
        assert cfg["stpsf_path"] == str(tmp_path / "cfg" / "stpsf-data")
        assert cfg["provider_options"]["data_path"] == str(tmp_path / "cfg" / "data")


@pytest.mark.parametrize("cells, match", [
    ("x,y\n91.5,58.17\n,92.5\n124.83,92.5\n", "column 'x' has no value in row 1"),
    ("x,y\n91.5,58.17\n91.5,\n124.83,\n", "column 'y' has no value in rows 1, 2"),
    ("x,y\n91.5,58.17\nabc,92.5\n", "column 'x' is not numeric: 'abc' in row 1"),
], ids=["empty-x", "empty-y", "text"])
def test_cli_catalog_cells_without_a_position(files, capsys, cells, match):
    """An empty catalog cell became position 0 (a PSF written at x = 0, exit 0); a text cell
    gave a bare ValueError traceback: both are refused in one line naming the catalog."""
    from astromix.cli.mosaic_psf import read_catalog

    folder, _, _ = files
    path = folder / "holes.csv"
    path.write_text(cells)
    with pytest.raises(InputError, match=match) as err:
        read_catalog(str(path), "csv")
    assert str(path) in str(err.value)
    cfg = config(folder, catalog_path="holes.csv", catalog_format="csv", x_col="x", y_col="y",
                 psf_array_filename="holes.fits")
    assert main(["mosaic-psf", "--config", cfg, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and str(path) in err[0]
    assert not (folder / "holes.fits").exists()
    x, y = read_catalog(str(folder / "catalog.fits"), "fits", 1, "X_IMAGE", "Y_IMAGE")
    assert x.size == 6 and np.all(np.isfinite(x))


def test_cli_sources_count_the_exposures_in_each_psf(files, capsys):
    """With missing="skip" the exposures without a PSF are left out of the stamps; SOURCES and
    the summary counted them (n_exposures=3, total_weight of 3 exposures for a zero PSF)."""
    folder, sim, order = files
    table = Table.read(folder / "exposures.csv", format="ascii.csv")
    only = sim.exposures[0].name + "_cal"                        # the one with a PSF
    table["detector"] = ["NRCA1" if f == only + ".fits" else "NRCB1"
                         for f in table["filename"]]
    table.write(folder / "exposures_b1.csv", format="ascii.csv", overwrite=True)
    cfg = config(folder, csv_path="exposures_b1.csv", psf_array_filename="skip.fits",
                 provider_options={"images": {"NRCA1": "psf.fits"}, "missing": "skip"})
    assert main(["mosaic-psf", "--config", cfg, "--no-progress"]) == 0
    cube, sources, _ = read_psf_cube(folder / "skip.fits")
    # truth: the simulation's coverage of exposure 0, in catalog order
    covered = np.asarray(sim.stars["covered"])[order, 0]
    np.testing.assert_array_equal(sources["n_exposures"], covered.astype(int))
    np.testing.assert_allclose(sources["total_weight"], covered * sim.exposures[0].exptime)
    assert list(sources["exposures"]) == [only if c else "" for c in covered]
    np.testing.assert_allclose(cube.sum((1, 2)), covered.astype(float), atol=1e-12)
    out = capsys.readouterr().out
    assert f"exposures per source {int(covered.min())}-{int(covered.max())}" in out
