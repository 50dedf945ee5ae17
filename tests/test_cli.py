"""Tests of the ``astromix`` command, run in-process through :func:`astromix.cli.main`."""

import re

import numpy as np
import pytest

import astromix
from astromix import backends
from astromix.cli import main
from astromix.errors import BackendError


def _active_backend_or_skip():
    try:
        return backends.get_backend().name
    except BackendError as exc:
        pytest.skip(f"the selected backend is unavailable: {exc}")


def _one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"astromix {astromix.__version__}"


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "demo" in out
    assert main([]) == 2
    assert "usage: astromix" in capsys.readouterr().err


def test_usage_error_exit_2(capsys):
    assert main(["demo", "--n-components", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_backends_lists_every_backend(capsys):
    try:
        active = backends.get_backend().name
    except BackendError:
        active = None
    code = main(["backends"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for name in backends.KNOWN_BACKENDS:
        row = [line for line in lines if line[2:].split()[:1] == [name]]
        assert len(row) == 1, captured.out
        status = row[0].split()[1] if not row[0].startswith("*") else row[0].split()[2]
        expected = "available" if name in backends.available_backends() else "unavailable"
        assert status == expected
        if expected == "unavailable":
            assert len(row[0].split()) > 3  # the reason is given
    numpy_row = [line for line in lines if line[2:].startswith("numpy ")][0]
    assert "unavailable" not in numpy_row
    if active is None:  # ASTROMIX_BACKEND names a backend this machine lacks
        assert code == 2
        assert "not available" in _one_line_error(captured.err)
    else:
        assert code == 0
        assert [line for line in lines if line.startswith("*")][0][2:].startswith(active)
        assert f"active backend: {active}" in captured.out


def test_demo_writes_files_and_fits_well(tmp_path, capsys):
    asdf = pytest.importorskip("asdf")
    pytest.importorskip("matplotlib")
    name = _active_backend_or_skip()
    out_dir = tmp_path / "demo"
    code = main(["demo", "--hst-psf", "--n-components", "3", "--output", str(out_dir),
                 "--backend", name])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"backend: {name}" in captured.out
    match = re.search(r"max\|residual\|/peak = ([0-9.eE+-]+)", captured.out)
    assert match, captured.out
    assert float(match.group(1)) < 0.1
    assert re.search(r"sum\|residual\|/flux = ", captured.out)
    asdf_path = out_dir / "psf_mixture.asdf"
    png_path = out_dir / "psf_mixture.png"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with asdf.open(asdf_path) as af:
        mixture = af.tree["psf"]
        assert isinstance(mixture, astromix.GaussianMixture)
        assert len(mixture) == 3
        assert af.tree["fit"]["max_residual_over_peak"] == pytest.approx(float(match.group(1)),
                                                                         abs=1e-5)
        assert af.tree["source"]["index"] == 0
    image, _ = astromix.datasets.load_hst_psf(0)
    assert mixture.flux == pytest.approx(image.sum(), rel=0.2)  # the wings may be missed
    # nothing but the two outputs is left in the folder (no temporary files)
    assert sorted(p.name for p in out_dir.iterdir()) == ["psf_mixture.asdf", "psf_mixture.png"]


def test_demo_decam_scene_fit(tmp_path, capsys):
    """The default demo: two sources in the 8 real DECam exposures, files and sane values."""
    asdf = pytest.importorskip("asdf")
    pytest.importorskip("matplotlib")
    pytest.importorskip("photutils")
    from astropy.table import Table

    name = _active_backend_or_skip()
    out_dir = tmp_path / "scene"
    code = main(["demo", "--output", str(out_dir), "--backend", name, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kept: neighbour as" in captured.out
    assert sorted(p.name for p in out_dir.iterdir()) == ["catalog.ecsv", "exposures.ecsv",
                                                         "residuals.png", "scene.asdf"]
    cat = Table.read(out_dir / "catalog.ecsv")
    exps = Table.read(out_dir / "exposures.ecsv")
    assert len(cat) == 2 and len(exps) == 8
    assert sorted(set(exps["band"])) == ["g", "r", "z"]
    # every exposure is fitted to within 40% of its noise variance (PSFEx PSF, CP astrometry)
    assert np.all(exps["chi2_dof"] < 1.4), exps
    gal = cat[0]
    assert gal["kind"] == "sersic"
    # a red galaxy: flux rises from g to z, measured to better than 1%
    assert gal["flux_g"] < gal["flux_r"] < gal["flux_z"]
    for b in "grz":
        assert gal[f"flux_err_{b}"] < 0.01 * gal[f"flux_{b}"]
    assert 1.0 < gal["r_eff"] < 4.0 and 2.0 < gal["n"] < 5.0
    # the neighbour sits about 5.5 arcsec away and is 100x fainter
    sep = np.hypot((cat["ra"][1] - gal["ra"]) * np.cos(np.radians(gal["dec"])),
                   cat["dec"][1] - gal["dec"]) * 3600
    assert 4.0 < sep < 7.0
    assert 0 < cat["flux_r"][1] < 0.05 * gal["flux_r"]
    with asdf.open(out_dir / "scene.asdf") as af:
        scene = af.tree["scene"]
        assert isinstance(scene, astromix.SceneModel)
        assert scene.n_sources == 2 and scene.bands == ("g", "r", "z")
        assert float(scene.flux_r_0.value) == pytest.approx(gal["flux_r"])
        assert len(af.tree["exposures"]) == 8
        assert af.tree["fit"]["dof"] > 16000


def test_demo_unknown_backend_is_one_line_exit_2(tmp_path, capsys):
    code = main(["demo", "--backend", "no-such-backend", "--output", str(tmp_path / "x")])
    captured = capsys.readouterr()
    assert code == 2
    line = _one_line_error(captured.err)
    assert line.startswith("astromix demo: error:")
    assert "no-such-backend" in line
    assert not (tmp_path / "x").exists()


def test_demo_bad_index_and_bad_output_exit_2(tmp_path, capsys):
    _active_backend_or_skip()
    assert main(["demo", "--hst-psf", "--index", "100", "--output", str(tmp_path / "y")]) == 2
    assert "index" in _one_line_error(capsys.readouterr().err)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["demo", "--output", str(blocker), "--no-plot"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "output folder" in line
    assert blocker.read_text() == "not a folder"


def test_component_table_sorted_and_axes():
    from astromix.cli.demo import component_table

    g = astromix.GaussianMixture([0.2, 0.8], [[1.0, 2.0], [3.0, 4.0]],
                                 [np.diag([4.0, 1.0]), np.diag([1.0, 9.0])])
    rows = component_table(g)
    np.testing.assert_allclose(rows[:, 0], [0.8, 0.2])
    np.testing.assert_allclose(rows[0, 3:5], [3.0, 1.0])
    assert abs(abs(rows[0, 5]) - 90.0) < 1e-9  # major axis along y
    np.testing.assert_allclose(rows[1, 3:], [2.0, 1.0, 0.0], atol=1e-12)


def test_fit_scene_command_on_two_decam_exposures(tmp_path, capsys):
    """fit-scene with PSFEx PSFs, known skies and the catalog of a previous fit."""
    asdf = pytest.importorskip("asdf")
    from astropy.table import Table

    from astromix.datasets import decam_multiexposure

    _active_backend_or_skip()
    table = decam_multiexposure()[:2]
    catalog = Table({"id": ["gal", "nb"], "kind": ["sersic", "star"],
                     "ra": [244.77974, 244.77830], "dec": [12.07233, 12.07251],
                     "flux_z": [100.0, 1.0], "flux_r": [50.0, 0.5], "r_eff": [1.5, 0.0],
                     "n": [2.0, 0.0]})
    catalog.meta["zeropoint"] = 22.5
    cat_path = tmp_path / "start.ecsv"
    catalog.write(cat_path)
    out_dir = tmp_path / "fs"
    args = ["fit-scene", *table["image"], "--psf", *table["psfex"],
            "--exposure-zeropoints", *[str(z) for z in table["zeropoint"]],
            "--background", *[str(s) for s in table["sky"]], "--catalog", str(cat_path),
            "--psf-components", "4", "--output", str(out_dir), "--no-progress", "--no-plot"]
    assert main(args) == 0, capsys.readouterr().err
    cat = Table.read(out_dir / "catalog.ecsv")
    assert list(cat["id"]) == ["gal", "nb"] and list(cat["kind"]) == ["sersic", "star"]
    assert cat["flux_z"][0] > cat["flux_r"][0] > 30
    exps = Table.read(out_dir / "exposures.ecsv")
    assert list(exps["band"]) == ["z", "r"] and np.all(exps["chi2_dof"] < 1.4)
    with asdf.open(out_dir / "scene.asdf") as af:
        stored = af.tree["exposures"]
        assert all(isinstance(e.psf, astromix.GaussianMixturePSF) for e in stored)
    # a mismatched number of PSFs is a one-line error
    bad = args[:]
    bad[bad.index("--psf") + 2:bad.index("--psf") + 3] = [table["psfex"][0], table["psfex"][1]]
    assert main(bad) == 2
    assert "PSF files for 2 images" in _one_line_error(capsys.readouterr().err)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("damage", ["truncated", "bitpix"])
def test_fit_scene_damaged_psf_file(tmp_path, capsys, damage):
    """A PSF file cut inside its image data (an interrupted copy of the shipped
    jwst_f200w_point_source.fits) or with an invalid BITPIX: a one-line error naming the
    file and exit code 2, not astropy's TypeError or KeyError."""
    from pathlib import Path

    data = (Path(__file__).parent / "data" / "jwst_f200w_point_source.fits").read_bytes()
    if damage == "truncated":
        data = data[:10000]
    else:
        card = b"BITPIX  =                  -32"
        assert data.count(card) == 2
        data = data.replace(card, b"BITPIX  =                  -33")
    psf = tmp_path / "psf.fits"
    psf.write_bytes(data)
    catalog = tmp_path / "cat.ecsv"
    catalog.write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: ra, datatype: float64}\n"
                       "# - {name: dec, datatype: float64}\nra dec\n10.0 0.0\n")
    code = main(["fit-scene", str(tmp_path / "image.fits"), "--catalog", str(catalog),
                 "--psf", str(psf), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("astromix fit-scene: error: ")
    assert f"cannot read PSF file {str(psf)!r}" in line


def _one_star_field(tmp_path, *, dec_offset=0.0, flux=300.0):
    """A 32x32 plain FITS image of one star (data units, no zero point), its PSF as an
    ASDF GaussianMixturePSF, and a catalog with the star ``dec_offset`` arcsec north."""
    asdf = pytest.importorskip("asdf")
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from astromix import Exposure, GaussianMixture, GaussianMixturePSF, SceneModel, StarSource

    ra, dec = 150.0, 2.0
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [16.5, 16.5]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    truth = SceneModel([StarSource(ra, dec, flux)])
    img = truth.render(Exposure(np.zeros((32, 32)), wcs=w, psf=psf))
    img = img + np.random.default_rng(0).normal(0, 1.0, img.shape)
    fits.PrimaryHDU(img, header=w.to_header()).writeto(tmp_path / "img.fits")
    asdf.AsdfFile({"psf": GaussianMixturePSF(psf)}).write_to(tmp_path / "psf.asdf")
    Table({"kind": ["star"], "ra": [ra], "dec": [dec + dec_offset / 3600],
           "flux": [flux]}).write(tmp_path / "cat.ecsv")
    return psf, dec + dec_offset / 3600


def test_fit_scene_load_psf_from_asdf(tmp_path):
    """An ASDF GaussianMixturePSF (documented --psf input) is read back as written.
    ``isinstance(v, GaussianMixturePSF | GaussianMixture)`` had raised TypeError: for
    astropy model classes ``|`` builds a compound model, not a union."""
    from astromix.cli.fit_scene import load_psf

    psf, _ = _one_star_field(tmp_path)
    got = load_psf(str(tmp_path / "psf.asdf"))
    mix = got.mixture
    np.testing.assert_allclose(mix.amp, psf.amp)
    np.testing.assert_allclose(mix.cov, psf.cov)


def test_fit_scene_sample_honours_max_shift(tmp_path, capsys):
    """``--sample --max-shift 0.2``: the star's catalog position is 0.5 arcsec north of
    the truth, so the fit and every posterior sample stop 0.2 arcsec from the catalog.
    The sampling had ignored --max-shift (its fit used 1 arcsec): samples near the truth."""
    pytest.importorskip("dynesty")
    from astropy.table import Table

    _active_backend_or_skip()
    _, dec_start = _one_star_field(tmp_path, dec_offset=0.5)
    out = tmp_path / "out"
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--max-shift", "0.2",
                 "--sample", "--nlive", "30", "--no-plot", "--no-progress", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    shift = (np.asarray(Table.read(out / "posterior_samples.ecsv")["dec_0"]) - dec_start) * 3600
    assert shift.min() >= -0.2 - 1e-9 and shift.max() <= 0.2 + 1e-9
    assert shift.max() < -0.15                      # pinned at the bound, towards the truth
    fitted = Table.read(out / "catalog.ecsv")
    assert (fitted["dec"][0] - dec_start) * 3600 == pytest.approx(-0.2, abs=1e-6)


def test_fit_scene_sample_refuses_too_few_live_points(tmp_path, capsys):
    """``--sample --nlive 4`` for a star's 3 free parameters (flux, ra, dec): nested sampling
    needs nlive > 2 * 3, a one-line error after the fit is written. dynesty had only warned,
    and such runs could go on for many minutes."""
    pytest.importorskip("dynesty")
    _active_backend_or_skip()
    _one_star_field(tmp_path, dec_offset=0.1)
    out = tmp_path / "out"
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--sample",
                 "--nlive", "4", "--no-plot", "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "nlive = 4 live points are too few for 3 free parameters" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "catalog.ecsv").exists() and not (out / "posterior.ecsv").exists()


def test_fit_scene_sample_fits_once(tmp_path, capsys, monkeypatch):
    """``--sample`` samples around the fit the command has written: fit_scene runs once
    (sample_scene had run its own fit again)."""
    pytest.importorskip("dynesty")
    import astromix.fitting as fitting
    import astromix.fitting.scene as fs

    _active_backend_or_skip()
    _one_star_field(tmp_path, dec_offset=0.1)
    calls = []
    real = fitting.fit_scene

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fitting, "fit_scene", counted)
    monkeypatch.setattr(fs, "fit_scene", counted)
    out = tmp_path / "out"
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--sample",
                 "--nlive", "20", "--no-plot", "--no-progress", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert len(calls) == 1
    assert (out / "posterior_samples.ecsv").is_file()


def test_fit_scene_catalog_zeropoint_needs_image_zeropoints(tmp_path, capsys):
    """DECam CP images carry no zero point; a catalog in nanomaggies (meta zeropoint, or
    --zeropoint 22.5) without --exposure-zeropoints is a one-line error naming the images.
    The fluxes had come out in ADU, labelled nanomaggies, with mag_* ~8 mag too bright."""
    from astropy.table import Table

    from astromix.datasets import decam_multiexposure

    _active_backend_or_skip()
    table = decam_multiexposure()[:2]
    catalog = Table({"id": ["gal"], "kind": ["sersic"], "ra": [244.77974], "dec": [12.07233],
                     "flux_z": [100.0], "flux_r": [50.0], "r_eff": [1.5], "n": [2.0]})
    base = ["fit-scene", *table["image"], "--psf", *table["psfex"], "--psf-components", "4",
            "--background", *[str(s) for s in table["sky"]], "--no-progress", "--no-plot"]
    for meta, extra in (({"zeropoint": 22.5}, []), ({}, ["--zeropoint", "22.5"])):
        catalog.meta = meta
        path = tmp_path / f"cat{len(extra)}.ecsv"
        catalog.write(path, overwrite=True)
        out = tmp_path / f"out{len(extra)}"
        code = main([*base, "--catalog", str(path), "--output", str(out), *extra])
        line = _one_line_error(capsys.readouterr().err)
        assert code == 2
        assert all(str(p) in line for p in table["image"])
        assert "have no zero point" in line and "--exposure-zeropoints" in line
        assert ("--zeropoint" if extra else "meta of catalog") in line
        assert not (out / "catalog.ecsv").exists()


def test_print_report_lists_the_flux_of_a_scene_with_one_unnamed_band():
    """A catalog with a plain ``flux`` column (from_catalog's documented input) gives a
    scene with one unnamed band; the report had printed no flux for it."""
    import io
    import math

    from astropy.table import Table
    from astropy.wcs import WCS

    from astromix import Exposure, GaussianMixture, SceneModel
    from astromix.cli._scene import print_report
    from astromix.fitting import fit_scene

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [20.5, 20.5]
    w.wcs.cd = np.diag([-0.25, 0.25]) / 3600
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.25])
    scene = SceneModel.from_catalog(Table({"id": ["s"], "kind": ["star"], "ra": [150.0],
                                           "dec": [2.0], "flux": [100.0]}))
    img = scene.render(Exposure(np.zeros((40, 40)), wcs=w, psf=psf, band="r"))
    img = img + np.random.default_rng(0).normal(0.0, 1.0, img.shape)
    e = Exposure(img, uncertainty=np.ones(img.shape), wcs=w, psf=psf, band="r")
    fitted, catalog = fit_scene(scene, [e], progress=False)
    out = io.StringIO()
    print_report(out, fitted, catalog)
    line = [s for s in out.getvalue().splitlines() if s.strip().startswith("source s")][0]
    match = re.search(r"flux=([-\d.]+)\+-([\d.]+)", line)
    assert match, line
    flux, err = float(match.group(1)), float(match.group(2))
    # the injected flux, and the error of a PSF-weighted flux: 1 / sqrt(sum(psf^2)) for
    # unit noise (2 sqrt(pi) sigma for a Gaussian PSF of sigma 1.5 px; + the background)
    assert abs(flux - 100.0) < 4 * err
    assert err == pytest.approx(2 * math.sqrt(math.pi) * 1.5, rel=0.1)


def test_fit_scene_catalog_without_band_fluxes_gets_a_flux_per_band(tmp_path, capsys):
    """A detection list (id, kind, ra, dec: no flux_<band> columns) fitted in g, r and z
    DECam images gets one flux per band of the images, equal to the API fit of the same
    catalog with bands=("g", "r", "z") and to the demo's fluxes.  The command had fitted
    one flux shared by all bands (chi2/dof 4-21)."""
    import functools

    from astropy.table import Table

    from astromix import Exposure, SceneModel
    from astromix.datasets import decam_multiexposure
    from astromix.fitting import fit_scene
    from astromix.io.psfex import read_psfex

    _active_backend_or_skip()
    table = decam_multiexposure()[[0, 1, 2, 3, 5, 6]]             # z, r, g, z, r, g
    catalog = Table({"id": ["gal", "nb"], "kind": ["sersic", "star"],
                     "ra": [244.77974, 244.77830], "dec": [12.07233, 12.07251]})
    catalog.meta["zeropoint"] = 22.5
    cat_path = tmp_path / "detections.ecsv"
    catalog.write(cat_path)
    out_dir = tmp_path / "fs"
    code = main(["fit-scene", *table["image"], "--psf", *table["psfex"],
                 "--psf-components", "4", "--catalog", str(cat_path),
                 "--exposure-zeropoints", *[repr(float(z)) for z in table["zeropoint"]],
                 "--background", *[repr(float(s)) for s in table["sky"]],
                 "--output", str(out_dir), "--no-progress", "--no-plot"])
    assert code == 0, capsys.readouterr().err
    assert "bands g, r, z" in capsys.readouterr().out
    got = Table.read(out_dir / "catalog.ecsv")
    exposures = [Exposure.from_fits(row["image"], zeropoint=float(row["zeropoint"]),
                                    psf=functools.partial(read_psfex(row["psfex"]).mixture,
                                                          n_components=4))
                 for row in table]
    scene = SceneModel.from_catalog(cat_path, bands=("g", "r", "z"))
    fitted, expected = fit_scene(scene, exposures, background=[float(s) for s in table["sky"]],
                                 progress=False)
    for b in "grz":
        assert got[f"flux_{b}"][0] == pytest.approx(expected[f"flux_{b}"][0],
                                                    abs=0.1 * expected[f"flux_err_{b}"][0])
    # the galaxy's fluxes of the 8-exposure demo (docs/scenes.rst: g, r, z = 21.2, 67.3,
    # 145.4 nanomaggies), and every image fitted to near its noise
    np.testing.assert_allclose([got[f"flux_{b}"][0] for b in "grz"], [21.2, 67.3, 145.4],
                               rtol=0.03)
    assert np.all(Table.read(out_dir / "exposures.ecsv")["chi2_dof"] < 1.4)


def test_fit_scene_catalog_without_band_fluxes_and_images_without_band(tmp_path, capsys):
    """Images with no band keep one flux shared by all; a mix of images with and without
    a band is a one-line error asking for --bands (before the fit)."""
    from astropy.io import fits
    from astropy.table import Table

    _active_backend_or_skip()
    _one_star_field(tmp_path)
    data, header = fits.getdata(tmp_path / "img.fits", header=True)
    header["FILTER"] = "r"
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "img_r.fits")
    base = ["fit-scene", "--catalog", str(tmp_path / "cat.ecsv"), "--psf",
            str(tmp_path / "psf.asdf"), "--no-background", "--no-plot", "--no-progress"]
    assert main([*base, str(tmp_path / "img.fits"), "-o", str(tmp_path / "o1")]) == 0
    assert "flux" in Table.read(tmp_path / "o1" / "catalog.ecsv").colnames
    capsys.readouterr()
    code = main([*base, str(tmp_path / "img.fits"), str(tmp_path / "img_r.fits"),
                 "-o", str(tmp_path / "o2")])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and "--bands" in line and str(tmp_path / "img.fits") in line
    assert not (tmp_path / "o2" / "catalog.ecsv").exists()


def test_fit_scene_residuals_png_pairs_backgrounds_by_position(tmp_path, capsys, monkeypatch):
    """Two images with the same file name in different folders (visit1/img.fits,
    visit2/img.fits) and backgrounds 100 and 500: each 'data - background' panel of
    residuals.png has its own image's background subtracted.  The backgrounds had been
    looked up by exposure name: both panels got the last one's."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    from astropy.io import fits

    _active_backend_or_skip()
    _one_star_field(tmp_path)
    truth = fits.getdata(tmp_path / "img.fits")          # the star and the noise, no sky
    header = fits.getheader(tmp_path / "img.fits")
    skies = {"visit1": 100.0, "visit2": 500.0}
    for visit, sky in skies.items():
        (tmp_path / visit).mkdir()
        fits.PrimaryHDU(truth + sky, header=header).writeto(tmp_path / visit / "img.fits")
    shown = []
    real = matplotlib.axes.Axes.imshow

    def spy(self, X, *args, **kwargs):
        shown.append(np.array(X, dtype=float))
        return real(self, X, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    code = main(["fit-scene", *[str(tmp_path / v / "img.fits") for v in skies],
                 "--catalog", str(tmp_path / "cat.ecsv"), "--psf", str(tmp_path / "psf.asdf"),
                 "--background", *[str(s) for s in skies.values()],
                 "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert len(shown) == 6                                # data - background, model, chi
    for row in range(2):
        np.testing.assert_allclose(shown[3 * row], truth, atol=1e-9)


@pytest.mark.parametrize("option, value, expected", [
    ("--nlive", "1", "expected an integer >= 2, got 1"),
    ("--seed", "-1", "expected an integer >= 0, got -1"),
    ("--seed", "x", "expected an integer, got 'x'"),
])
def test_fit_scene_sample_options_checked_before_any_work(tmp_path, capsys, option, value,
                                                          expected):
    """--nlive below 2 (dynesty's minimum) and a negative --seed (NumPy refuses it) are
    usage errors before anything is read, fitted or written.  They had been checked only
    after the fit and its outputs (a NumPy traceback for --seed -1)."""
    _one_star_field(tmp_path)
    out = tmp_path / "out"
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--sample",
                 option, value, "--no-plot", "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {option}: {expected}" in err and "Traceback" not in err
    assert not out.exists()


def test_demo_hst_psf_negative_seed_is_a_usage_error(tmp_path, capsys):
    """``demo --hst-psf --seed -1``: a one-line usage error, exit 2, no folder made; it had
    been a NumPy ValueError traceback (exit 1) leaving an empty folder."""
    out = tmp_path / "demo"
    assert main(["demo", "--hst-psf", "--seed", "-1", "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "argument --seed: expected an integer >= 0, got -1" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_fit_scene_posterior_output_that_is_a_folder(tmp_path, capsys):
    """--sample with DIR/posterior.ecsv an existing folder: a one-line error naming it,
    before the fit (no catalog.ecsv written).  It had been an OSError traceback after
    the fit and the sampling."""
    _one_star_field(tmp_path)
    out = tmp_path / "out"
    (out / "posterior.ecsv").mkdir(parents=True)
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--sample",
                 "--nlive", "20", "--no-plot", "--no-progress", "-o", str(out)])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2
    assert str(out / "posterior.ecsv") in line and "is a folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["posterior.ecsv"]


@pytest.mark.parametrize("name", ["posterior.ecsv", "corner.png"])
def test_fit_scene_posterior_write_error_is_one_line(tmp_path, capsys, monkeypatch, name):
    """An OSError writing a --sample output (here a full disk, ENOSPC) is a one-line error
    naming the file, exit 2, as for the fit's own outputs; it had been a traceback."""
    pytest.importorskip("dynesty")
    pytest.importorskip("matplotlib")
    import errno

    import astromix.cli.fit_scene as cli_fit_scene

    _active_backend_or_skip()
    _one_star_field(tmp_path)
    real = cli_fit_scene.atomic_path

    def full_disk(path, *args, **kwargs):
        if str(path).endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cli_fit_scene, "atomic_path", full_disk)
    out = tmp_path / "out"
    code = main(["fit-scene", str(tmp_path / "img.fits"), "--catalog", str(tmp_path / "cat.ecsv"),
                 "--psf", str(tmp_path / "psf.asdf"), "--no-background", "--sample",
                 "--nlive", "20", "--no-progress", "-o", str(out)])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("astromix fit-scene: error: ")
    assert str(out / name) in line and "No space left on device" in line


def test_fit_scene_off_image_row_names_catalog_row_and_image(tmp_path, capsys):
    """A catalog row on the far side of the sky from the image (ra 10 deg for an image at
    ra 150): the error names the catalog file, the row and its id, and the image.  It had
    been 'the WCS gives no pixel position at (ra, dec) = ...' alone."""
    from astropy.table import Table

    _active_backend_or_skip()
    _one_star_field(tmp_path)
    cat = tmp_path / "far.ecsv"
    Table({"id": ["star", "far"], "kind": ["star", "star"], "ra": [150.0, 330.0],
           "dec": [2.0, -2.0], "flux": [300.0, 1.0]}).write(cat)
    image = str(tmp_path / "img.fits")
    out = tmp_path / "out"
    code = main(["fit-scene", image, "--catalog", str(cat), "--psf",
                 str(tmp_path / "psf.asdf"), "--no-background", "--no-plot", "--no-progress",
                 "-o", str(out)])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2
    assert f"catalog {str(cat)!r}, row 1 (id 'far')" in line
    assert f"image {image!r}" in line and "(330.000000, -2.000000)" in line
    assert not (out / "catalog.ecsv").exists()
