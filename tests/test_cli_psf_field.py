"""Tests of ``astromix psf-field`` on the shipped CFHT image."""

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

pytest.importorskip("galsim")
pytest.importorskip("treecorr")
pytest.importorskip("photutils")
pytest.importorskip("matplotlib")

from astromix.cli import main  # noqa: E402
from astromix.datasets import cfht_a370  # noqa: E402
from astromix.io.psfex import read_psfex  # noqa: E402


def test_psf_field_cfht(tmp_path, capsys):
    out = tmp_path / "psf"
    status = main(["psf-field", cfht_a370(), "--saturation", "12000", "--size", "19",
                   "--outdir", str(out)])
    assert status == 0
    assert "reserve" in capsys.readouterr().out
    for name in ("psf.psf", "stars.ecsv", "validation.ecsv", "rho_stats.ecsv",
                 "size_magnitude.png", "whiskers.png"):
        assert os.path.getsize(out / name) > 0
    stars = Table.read(out / "stars.ecsv")
    n_res = int(np.sum(stars["reserve"]))
    assert n_res >= 5 and np.sum(stars["selected"]) >= 20
    psf = read_psfex(out / "psf.psf")
    assert psf.basis.shape == (6, 19, 19)
    val = Table.read(out / "validation.ecsv")
    assert len(val) == n_res
    ok = val["flag"] == 0
    assert ok.sum() >= n_res - 1
    # measured 2026-11-22: median RMSE/peak 0.0126, dsigma/sigma -0.0015, de1 -0.0015,
    # de2 -0.0057 (9 reserve stars)
    assert np.median(val["rmse"][ok]) < 0.05
    assert abs(np.median(val["dsigma_over_sigma"][ok])) < 0.08
    assert np.all(np.isfinite(Table.read(out / "rho_stats.ecsv")["r"]))


def test_psf_field_bad_input(tmp_path, capsys):
    status = main(["psf-field", str(tmp_path / "missing.fits"), "--outdir", str(tmp_path / "o")])
    assert status == 2
    assert "missing.fits" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_psf_field_truncated_image(tmp_path, capsys):
    """A shipped FITS file cut inside the data of its first image (an interrupted copy): a
    one-line error naming the file, exit code 2, not astropy's TypeError."""
    shipped = Path(__file__).parent / "data" / "jwst_f200w_point_source.fits"
    path = tmp_path / "truncated.fits"
    path.write_bytes(shipped.read_bytes()[:10000])
    status = main(["psf-field", str(path), "--outdir", str(tmp_path / "o")])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("astromix psf-field: error: ")
    assert f"cannot read image {str(path)!r}" in lines[0]


def test_psf_field_cfht_mixture_basis(tmp_path, capsys):
    out = tmp_path / "mix"
    status = main(["psf-field", cfht_a370(), "--saturation", "12000", "--basis", "mixture",
                   "--n-components", "3", "--snr-min", "15", "--no-plot", "--outdir", str(out)])
    assert status == 0
    psf = read_psfex(out / "psf.psf")
    assert psf.degree == 4 and 0 < psf.meta["MIXPROJ"] < 0.05  # projection of degree 2 + 2
    val = Table.read(out / "validation.ecsv")
    ok = val["flag"] == 0
    assert ok.sum() >= len(val) - 1
    # the same reserve stars as the pixel basis: measured median RMSE/peak 0.012
    assert np.median(val["rmse"][ok]) < 0.05
    assert abs(np.median(val["dsigma_over_sigma"][ok])) < 0.08
    assert not (out / "whiskers.png").exists()


def test_psf_field_oversampling_refused_for_mixture_and_bad(tmp_path, capsys):
    status = main(["psf-field", cfht_a370(), "--basis", "mixture", "--oversampling", "2",
                   "--outdir", str(tmp_path / "m")])
    assert status == 2
    assert "--oversampling applies to the pixel basis only" in capsys.readouterr().err
    status = main(["psf-field", cfht_a370(), "--oversampling", "0", "--outdir",
                   str(tmp_path / "z")])
    assert status == 2
    assert "--oversampling must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "z").exists()


def test_psf_field_cfht_oversampled(tmp_path, capsys):
    out = tmp_path / "fine"
    status = main(["psf-field", cfht_a370(), "--saturation", "12000", "--size", "19",
                   "--oversampling", "2", "--no-plot", "--outdir", str(out)])
    assert status == 0
    psf = read_psfex(out / "psf.psf")
    assert psf.psf_samp == 0.5 and psf.basis.shape == (6, 39, 39)
    assert psf.image_shape == (19, 19)
    val = Table.read(out / "validation.ecsv")
    ok = val["flag"] == 0
    assert ok.sum() >= len(val) - 1
    # well-sampled stars (FWHM 3.5 px): measured median RMSE/peak 0.0123, dsigma/sigma
    # -0.0015 on the 9 reserve stars (--oversampling 1: 0.0126, -0.0015)
    assert np.median(val["rmse"][ok]) < 0.05
    assert abs(np.median(val["dsigma_over_sigma"][ok])) < 0.08


@pytest.fixture
def no_fit(monkeypatch):
    """Make the fit fail loudly: the refusals below must come before any work."""
    import astromix.psffield

    def fit(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the refusal must come before the fit")

    monkeypatch.setattr(astromix.psffield, "fit_psf_field", fit)


@pytest.mark.parametrize("value", ["-0.206", "-1", "0", "nan", "inf"])
def test_psf_field_pixel_scale_must_be_positive(tmp_path, capsys, no_fit, value):
    """--pixel-scale -0.206 ran (the sign dropped) and 0 fell back to the WCS silently."""
    out = tmp_path / "o"
    status = main(["psf-field", cfht_a370(), "--pixel-scale", value, "--outdir", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert "--pixel-scale" in err and "expected a positive number" in err
    assert not out.exists()


def test_psf_field_output_names_checked_before_the_fit(tmp_path, capsys, no_fit):
    """A folder named like an output (stars.ecsv): refused in one line, exit 2, before the fit;
    it came as IsADirectoryError after psf.psf had been replaced."""
    out = tmp_path / "o"
    (out / "stars.ecsv").mkdir(parents=True)
    status = main(["psf-field", cfht_a370(), "--outdir", str(out)])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("astromix psf-field: error: ")
    assert str(out / "stars.ecsv") in lines[0] and "is a folder" in lines[0]
    assert sorted(os.listdir(out)) == ["stars.ecsv"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_psf_field_outdir_without_files_refused_before_the_fit(capsys, no_fit):
    """/proc: no file can be created there (os.access passes it for root); the write's
    FileNotFoundError came as a traceback after all the work."""
    status = main(["psf-field", cfht_a370(), "--outdir", "/proc"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'/proc'" in err


def test_psf_field_write_error_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError of a write all the same (a full disk): one line naming the output, exit 2."""
    import errno

    import astromix.io.psfex

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) + ".tmp")

    monkeypatch.setattr(astromix.io.psfex, "write_psfex", full)
    out = tmp_path / "o"
    status = main(["psf-field", cfht_a370(), "--saturation", "12000", "--size", "19",
                   "--no-plot", "--outdir", str(out)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"cannot write {str(out / 'psf.psf')!r}: {os.strerror(errno.ENOSPC)}" in err


def test_psf_field_removes_stale_rho_stats(tmp_path, capsys):
    """A run without rho statistics (one reserve star) into an OUTDIR holding an earlier
    run's rho_stats.ecsv: that file is removed, not left beside the new tables."""
    out = tmp_path / "o"
    out.mkdir()
    Table({"r": [1.0], "rho1": [0.0]}, meta={"n_stars": 9}).write(out / "rho_stats.ecsv")
    status = main(["psf-field", cfht_a370(), "--saturation", "12000", "--size", "19",
                   "--reserve", "0.03", "--no-plot", "--outdir", str(out)])
    assert status == 0
    val = Table.read(out / "validation.ecsv")
    assert len(val) == 1  # rho statistics need two reserve stars
    assert sorted(os.listdir(out)) == ["psf.psf", "stars.ecsv", "validation.ecsv"]


def test_psf_field_multi_ccd_catalog(tmp_path, capsys, monkeypatch):
    """A catalog of a multi-extension image holds one LDAC_OBJECTS table per CCD: without
    --catalog-hdu it is refused in one line naming the file and the option (read_ldac had
    read its first CCD silently); with it, that CCD's sources go on to the star selection."""
    from astropy.io import fits

    import astromix.psffield

    rng = np.random.default_rng(3)
    ccds = [(rng.uniform(0, 500, n), rng.uniform(0, 500, n)) for n in (5, 7)]
    head = fits.Column("Field Header Card", "80A", array=["SIMPLE  =                    T"])
    hdus = [fits.PrimaryHDU()]
    for x, y in ccds:
        n = len(x)
        cols = [fits.Column("X_IMAGE", "D", array=x + 1.0),
                fits.Column("Y_IMAGE", "D", array=y + 1.0),
                fits.Column("FLUX_AUTO", "D", array=np.full(n, 1e4)),
                fits.Column("FLUXERR_AUTO", "D", array=np.full(n, 1e2)),
                fits.Column("FWHM_IMAGE", "D", array=np.full(n, 3.4)),
                fits.Column("FLAGS", "I", array=np.zeros(n))]
        hdus += [fits.BinTableHDU.from_columns([head], name="LDAC_IMHEAD"),
                 fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS")]
    cat = tmp_path / "mef.cat"
    fits.HDUList(hdus).writeto(cat)
    out = tmp_path / "o"
    status = main(["psf-field", cfht_a370(), "--catalog", str(cat), "--outdir", str(out)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mef.cat: 2 LDAC_OBJECTS" in err and "--catalog-hdu N" in err

    class Reached(Exception):
        pass

    seen = []

    def select(catalog, **kwargs):
        seen.append(catalog)
        raise Reached

    monkeypatch.setattr(astromix.psffield, "select_stars", select)
    with pytest.raises(Reached):
        main(["psf-field", cfht_a370(), "--catalog", str(cat), "--catalog-hdu", "4",
              "--outdir", str(out)])
    np.testing.assert_allclose(seen[0]["x"], ccds[1][0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(seen[0]["y"], ccds[1][1], rtol=0, atol=1e-9)
    status = main(["psf-field", cfht_a370(), "--catalog-hdu", "2", "--outdir", str(out)])
    assert status == 2
    assert "--catalog-hdu needs --catalog" in capsys.readouterr().err
