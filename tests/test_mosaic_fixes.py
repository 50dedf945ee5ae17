"""Review findings on the mosaic PSF: context dtypes and planes, stamp edges (FFT wrap-around),
mixed oversamplings, one-line errors for bad tables, associations, options and indices."""

import dataclasses
import json
import logging

import numpy as np
import pytest
from astropy.io import fits
from scipy.special import erf
from test_cli_mosaic_psf import config, files  # noqa: F401  (files: the CLI's i2d fixture)

from astromix import GaussianMixture, InputError
from astromix.cli import main
from astromix.mosaic import (
    ExposureWeightedPSF,
    ImageProvider,
    InputExposure,
    compare_with_empirical_psf,
    decode_context,
    exposures_from_table,
    jwst_pc_matrix,
    read_association,
    simulate_drizzled_star_field,
    tan_wcs,
)

MOSAIC_WCS = tan_wcs(53.16, -27.78, 0.031, [[-1, 0], [0, 1]], (99.5, 99.5), (200, 200))


def aligned_exposures(n=1, rolls=None):
    """Exposures with the mosaic's scale (0.031"/px); roll 0 maps detector px = mosaic px."""
    rolls = [None] * n if rolls is None else rolls
    return [InputExposure(f"e{k}", tan_wcs(53.16, -27.78, 0.031,
                                           [[-1, 0], [0, 1]] if r is None
                                           else jwst_pc_matrix(r, -0.5, -1),
                                           (50, 50), (101, 101)), 100.0 * (k + 1),
                          shape=(101, 101))
            for k, r in enumerate(rolls)]


def gaussians_provider(amp, means, sigmas, osr=4, n=41):
    """An ImageProvider of a sum of round Gaussians at (dx, 0) [detector px]."""
    size = n * osr + 1
    c = (size - 1) / 2.0
    img = GaussianMixture(amp, [[c + m * osr, c] for m in means],
                          [np.eye(2) * (s * osr) ** 2 for s in sigmas]).render(
                              (size, size), backend="numpy")
    return ImageProvider(img, oversampling=osr)


# -- 1. context dtypes ------------------------------------------------------------------------
def test_decode_context_packs_32_inputs_per_plane_whatever_the_dtype():
    """Drizzle packs 32 inputs per plane; an int64 context overflowed and an int16 one put
    plane 1's bit 0 at input 16."""
    from drizzle.utils import decode_context as drizzle_decode

    ctx = np.zeros((2, 4, 4), dtype=np.int32)
    ctx[0, 1, 2] = 0b1010                      # inputs 1 and 3
    ctx[1, 1, 2] = 1                           # input 32
    ctx[0, 3, 0] = np.int32(-(1 << 31)) | 4    # inputs 2 and 31 (the sign bit)
    truth = [sorted(int(i) for i in drizzle_decode(ctx, [2], [1])[0]),
             sorted(int(i) for i in drizzle_decode(ctx, [0], [3])[0])]
    assert truth == [[1, 3, 32], [2, 31]]
    for dtype in (np.int32, np.uint32, np.int64, np.uint64):
        # the same 32-bit words (a uint64 file holds the sign bit as 2**31)
        words = ctx.view(np.uint32) if dtype in (np.uint32, np.uint64) else ctx
        mask = decode_context(words.astype(dtype), [2.0, 0.0], [1.0, 3.0])
        assert [np.flatnonzero(m).tolist() for m in mask] == truth, dtype
    small = ctx[:, 1:2, 2:3].astype(np.int16)   # fits 16 bits: inputs 1, 3 and 32
    assert np.flatnonzero(decode_context(small, [0.0], [0.0])[0]).tolist() == [1, 3, 32]
    sign16 = np.full((1, 1, 1), -(1 << 15), dtype=np.int16)   # its sign bit: input 15
    assert np.flatnonzero(decode_context(sign16, [0.0], [0.0])[0]).tolist() == [15]
    for value in (1 << 32, -(1 << 31) - 1):
        wide = np.zeros((1, 4, 4), dtype=np.int64)
        wide[0, 1, 2] = value
        with pytest.raises(InputError, match="outside 32 bits"):
            decode_context(wide, [2.0], [1.0])


def test_model_with_an_int64_context_equals_the_int32_one():
    provider = gaussians_provider([1.0], [0.0], [1.3])
    exps = aligned_exposures(rolls=[10.0, 70.0, 130.0])
    ctx = np.zeros((1, 200, 200), dtype=np.int32)
    ctx[0] = 0b101                               # exposures 0 and 2
    ref = ExposureWeightedPSF(MOSAIC_WCS, exps, provider, context=ctx).image(100, 100, 21)
    alone = ExposureWeightedPSF(MOSAIC_WCS, exps, provider)
    expected = (100 * alone.image(100, 100, 21, exposures=[0])
                + 300 * alone.image(100, 100, 21, exposures=[2])) / 400
    np.testing.assert_allclose(ref, expected, atol=1e-12)
    for dtype in (np.int64, np.uint64, np.int16):
        got = ExposureWeightedPSF(MOSAIC_WCS, exps, provider,
                                  context=ctx.astype(dtype)).image(100, 100, 21)
        np.testing.assert_allclose(got, expected, atol=1e-12)


# -- 2. stamp edges -----------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [None, 0.8, 2.0])
@pytest.mark.parametrize("dim, oversampling", [(13, 1), (12, 1), (39, 3)])
def test_stamp_equals_the_centre_of_a_larger_stamp(sigma, dim, oversampling):
    """A satellite 6 px right of the core, at the stamp's edge: its flux wrapped onto the
    left edge (0.18-0.48 of the peak) and the flux just outside was lost."""
    provider = gaussians_provider([0.6, 0.4], [0.0, 6.0], [1.5 ** 0.5, 1.0])
    model = ExposureWeightedPSF(MOSAIC_WCS, aligned_exposures(), provider, sigma=sigma,
                                normalize=False)
    big_dim = dim + 28 * oversampling
    small = model.image(100, 100, dim, offset=(0.3, -0.2), oversampling=oversampling)
    big = model.image(100, 100, big_dim, offset=(0.3, -0.2), oversampling=oversampling)
    k = (big_dim - dim) // 2
    truth = big[k:k + dim, k:k + dim]
    tol = 5e-6 if sigma is None else 1e-9
    assert np.abs(small - truth).max() < tol * truth.max()


def test_stamp_edges_match_pixel_integrated_gaussians():
    """Independent truth: with no detector pixel and no drop, the stamp is the pixel
    integral (erf) of the two Gaussians; the satellite's wing beyond the edge counts."""
    amp, means, sds = [0.6, 0.4], [0.0, 7.0], [1.2, 0.9]
    provider = gaussians_provider(amp, means, sds, osr=8)
    model = ExposureWeightedPSF(MOSAIC_WCS, aligned_exposures(), provider, pixfrac=0,
                                detector_pixel=False, normalize=False, subsample=4)
    dim, h = 13, 6
    edges = np.arange(dim + 1) - h - 0.5

    def cdf(e, s):
        return 0.5 * (1 + erf(e / (np.sqrt(2) * s)))

    truth = sum(a * np.outer(np.diff(cdf(edges, s)), np.diff(cdf(edges - m, s)))
                for a, m, s in zip(amp, means, sds))
    stamp = model.image(100, 100, dim)
    assert np.abs(stamp - truth).max() < 3e-3 * truth.max()
    assert abs(stamp.sum() - truth.sum()) < 1e-3 * truth.sum()


def test_calibrate_smoothing_with_flux_at_the_stamp_edge():
    """The trial smoothing wrapped around small stamps: 1.33 instead of the injected 1.5."""
    provider = gaussians_provider([0.6, 0.4], [0.0, 5.0], [1.5 ** 0.5, 1.0])
    model = ExposureWeightedPSF(MOSAIC_WCS, aligned_exposures(), provider, normalize=False)
    xs, ys = np.array([60.2, 100.0, 140.4]), np.array([60.0, 120.3, 90.0])
    image, h = np.zeros((200, 200)), 30
    model.sigma = 1.5
    for x, y in zip(xs, ys):
        i, j = int(round(x)), int(round(y))
        image[j - h:j + h + 1, i - h:i + h + 1] += 100 * model.image(
            x, y, 2 * h + 1, offset=(x - i, y - j))
    model.sigma = None
    for size in (11, 15):
        sigma, info = model.calibrate_smoothing((xs, ys), image, size=size, background=False)
        assert abs(sigma - 1.5) < 2e-3 and info["n_stars"] == 3
    for bounds in ((2.0, 1.0), (-1.0, 2.0), (0.0, np.inf)):
        with pytest.raises(InputError, match="bounds"):
            model.calibrate_smoothing((xs, ys), image, size=11, bounds=bounds)


# -- 3. oversampling of FITS images ---------------------------------------------------------------
def test_image_provider_refuses_files_of_different_oversampling(tmp_path, caplog):
    paths = {}
    for det, osr in (("NRCA1", 4), ("NRCA2", 2), ("NRCA3", 4)):
        n = 41 * osr + 1
        c = (n - 1) / 2.0
        img = GaussianMixture([1.0], [[c, c]], [np.eye(2) * (1.5 * osr) ** 2]).render(
            (n, n), backend="numpy")
        header = fits.Header()
        header["DET_SAMP"] = osr
        paths[det] = str(tmp_path / f"{det}.fits")
        fits.PrimaryHDU(img, header=header).writeto(paths[det])
    with pytest.raises(InputError, match="different oversamplings") as err:
        ImageProvider({"NRCA1": paths["NRCA1"], "NRCA2": paths["NRCA2"]})
    assert "NRCA1.fits" in str(err.value) and "NRCA2.fits" in str(err.value)
    with pytest.raises(InputError, match="different oversamplings"):
        ImageProvider({"NRCA1": paths["NRCA1"], "NRCA2": paths["NRCA2"]}, oversampling=4)
    same = ImageProvider({"NRCA1": paths["NRCA1"], "NRCA3": paths["NRCA3"]})
    assert same.oversampling == 4
    with caplog.at_level(logging.WARNING, logger="astromix"):
        assert ImageProvider(paths["NRCA2"], oversampling=4).oversampling == 4
    assert "overrides the 2" in caplog.text


# -- 4. context planes -----------------------------------------------------------------------------
def test_context_planes_must_name_every_exposure():
    """One plane names 32 exposures: it was accepted for up to 63, the rest dropped."""
    provider = gaussians_provider([1.0], [0.0], [1.3])
    exps = aligned_exposures(rolls=list(np.linspace(0, 300, 40)))
    one = np.full((1, 200, 200), -1, dtype=np.int32)
    with pytest.raises(InputError, match="1 plane"):
        ExposureWeightedPSF(MOSAIC_WCS, exps, provider, context=one)
    with pytest.raises(InputError, match="1 plane"):
        ExposureWeightedPSF(MOSAIC_WCS, exps[:33], provider, context=one)
    model = ExposureWeightedPSF(MOSAIC_WCS, exps[:32], provider, context=one)
    assert model.source_table([100.0], [100.0])["n_exposures"][0] == 32
    two = np.full((2, 200, 200), -1, dtype=np.int32)
    two[1] = (1 << 8) - 1                                      # exposures 32..39
    model = ExposureWeightedPSF(MOSAIC_WCS, exps, provider, context=two)
    assert model.source_table([100.0], [100.0])["n_exposures"][0] == 40


# -- 5. one-line errors ----------------------------------------------------------------------------
TABLE_HEADER = ("filename,effexptm,ra_ref,dec_ref,roll_ref,v3i_yang,vparity,xref_sci,yref_sci,"
                "naxis1,naxis2,detector\n")
GOOD_ROW = ["a_cal.fits", "100", "53.1", "-27.7", "10", "-0.5", "-1", "1024.5", "1024.5",
            "2048", "2048", "NRCA1"]


@pytest.mark.parametrize("column, value, kind", [
    (1, "N/A", "a finite number"), (4, "ten", "a finite number"),
    (6, "minus", "a finite number"), (9, "full", "an integer"), (10, "2048.5", "an integer"),
    (7, "nan", "a finite number"),
])
def test_exposure_table_non_numeric_cells(tmp_path, column, value, kind):
    names = TABLE_HEADER.strip().split(",")
    rows = [list(GOOD_ROW), list(GOOD_ROW)]
    rows[1][0] = "b_cal.fits"
    rows[1][column] = value
    path = tmp_path / "tab.csv"
    path.write_text(TABLE_HEADER + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(InputError) as err:
        exposures_from_table(str(path))
    msg = str(err.value)
    assert str(path) in msg and "row 1 (b_cal)" in msg and f"column {names[column]}" in msg
    assert value in msg and kind in msg
    path.write_text(TABLE_HEADER + ",".join(GOOD_ROW) + "\n")
    (exp,) = exposures_from_table(str(path))
    assert exp.exptime == 100.0 and exp.shape == (2048, 2048)


def test_cli_bad_exposure_table_and_provider_options(files, capsys):  # noqa: F811
    folder, _, _ = files
    rows = (folder / "exposures.csv").read_text().splitlines()
    col = rows[0].split(",").index("effexptm")
    cells = rows[1].split(",")
    cells[col] = "N/A"
    (folder / "exposures_bad.csv").write_text("\n".join([rows[0], ",".join(cells)] + rows[2:]))
    cases = [({"csv_path": "exposures_bad.csv"}, "column effexptm = 'N/A' is not a finite",
              "exposures_bad.csv"),
             ({"provider_options": "abc"}, "provider_options must be a JSON object",
              "config.json"),
             ({"provider_options": [["images", "psf.fits"]]},
              "provider_options must be a JSON object", "config.json")]
    for change, message, named in cases:
        path = config(folder, **change)
        assert main(["mosaic-psf", "--config", path, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and named in err[0], err
        assert err[0].startswith("astromix mosaic-psf:")


def test_association_members_must_be_objects(tmp_path):
    path = tmp_path / "asn.json"
    for members, message in (([{"expname": "a_cal.fits"}, "b_cal.fits"], r"members\[1\]"),
                             ("a_cal.fits", "must be a list")):
        path.write_text(json.dumps({"products": [{"members": members}]}))
        with pytest.raises(InputError, match=message) as err:
            read_association(str(path))
        assert str(path) in str(err.value)
    path.write_text(json.dumps({"products": [{"members": [
        {"expname": "d/a_cal.fits", "exptype": "science"}, {"expname": "b_cal.fits"}]}]}))
    assert read_association(str(path)) == ["a_cal", "b_cal"]


def test_image_exposure_indices_are_checked():
    provider = gaussians_provider([1.0], [0.0], [1.3])
    exps = aligned_exposures(rolls=[10.0, 70.0, 130.0])
    model = ExposureWeightedPSF(MOSAIC_WCS, exps, provider)
    for bad, message in (([3], "outside"), ([-1], "outside"), (["e0"], "integer indices"),
                         ([True], "integer indices"), (2, "sequence"), ([0.0], "integer")):
        with pytest.raises(InputError, match=message):
            model.image(100, 100, 15, exposures=bad)
    # the last exposure alone, selected by its index, equals a model of that exposure alone
    alone = ExposureWeightedPSF(MOSAIC_WCS, exps[2:], provider).image(100, 100, 15)
    np.testing.assert_allclose(model.image(100, 100, 15, exposures=[np.int64(2)]), alone,
                               atol=1e-14)


# -- 6. empirical PSFs smaller than size ---------------------------------------------------------
def test_compare_with_an_empirical_psf_smaller_than_size():
    """An ePSF of 101 samples at 4x spans 25 mosaic px < size = 41: the fit had failed with
    'no star has a complete, finite stamp'; the injected sigma is recovered."""
    img = GaussianMixture([0.7, 0.3], [[40.0, 40.0], [50.0, 44.0]],
                          [np.diag([30.0, 10.0]), np.diag([6.0, 6.0])]).render(
                              (81, 81), backend="numpy")
    provider = ImageProvider(img, oversampling=4)
    sim = simulate_drizzled_star_field(provider, n_exposures=4, n_stars=4, rng=1)
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context)
    model.sigma = 0.7
    emp = model.image(90, 90, 101, oversampling=4)       # the model smoothed by 0.7
    model.sigma = None
    res = compare_with_empirical_psf(model, 90, 90, emp, 4, 0.03, r_total=0.3, radii=(0.1,))
    assert abs(res["sigma"] - 0.7) < 2e-3 and model.sigma is None
    with pytest.raises(InputError, match="empirical PSF"):
        compare_with_empirical_psf(model, 90, 90, emp[46:55, 46:55], 4, 0.03, r_total=0.01,
                                   radii=(0.005,))


# -- ASDF PSF cubes: clear errors for bad files; the source table kept as written ------------
def test_read_psf_cube_asdf_bad_files(tmp_path):
    """A corrupt .asdf, one without psf_cube and one with a 2-D psf_cube gave a bare
    ValueError / KeyError; now InputError naming the file."""
    import asdf

    from astromix.mosaic import read_psf_cube, write_psf_cube

    path = tmp_path / "cube.asdf"
    path.write_text("not an asdf file")
    with pytest.raises(InputError, match="could not be read") as info:
        read_psf_cube(path)
    assert str(path) in str(info.value)
    asdf.AsdfFile({"other": 1}).write_to(path)
    with pytest.raises(InputError, match="no 'psf_cube'") as info:
        read_psf_cube(path)
    assert str(path) in str(info.value)
    asdf.AsdfFile({"psf_cube": np.ones((5, 5))}).write_to(path)
    with pytest.raises(InputError, match=r"shape \(N, dim, dim\)") as info:
        read_psf_cube(path)
    assert str(path) in str(info.value)
    asdf.AsdfFile({"psf_cube": np.ones((2, 5, 5)), "sources": [1, 2]}).write_to(path)
    with pytest.raises(InputError, match="sources must be a table"):
        read_psf_cube(path)
    write_psf_cube(path, np.ones((4, 9, 9)))  # a truncated real cube file
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * 0.8)])
    with pytest.raises(InputError, match="could not be read"):
        read_psf_cube(path)


def test_psf_cube_asdf_keeps_masked_values_units_and_column_order(tmp_path):
    """A masked table value came back as its filled number, and the columns came back
    numeric first, then in alphabetical order; units were lost."""
    import astropy.units as u
    from astropy.table import Table

    from astromix.mosaic import read_psf_cube, write_psf_cube

    sources = Table({"y": [3.0, 4.0, 5.0], "id": [1, 2, 3],
                     "flux": np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False]),
                     "exposures": ["a,b", "a", "b"], "x": [0.5, 1.5, 2.5] * u.pix},
                    masked=True)
    cube = np.random.default_rng(1).normal(size=(3, 7, 7))
    path = tmp_path / "cube.asdf"
    write_psf_cube(path, cube, sources, meta={"PSFDIM": 7})
    back, table, meta = read_psf_cube(path)
    np.testing.assert_array_equal(back, cube)
    assert meta == {"PSFDIM": 7}
    assert table.colnames == sources.colnames
    assert list(np.ma.getmaskarray(table["flux"])) == [False, True, False]
    assert table["flux"][0] == 1.0 and table["flux"][2] == 3.0
    assert table["x"].unit == u.pix
    assert list(table["exposures"]) == ["a,b", "a", "b"]
    np.testing.assert_array_equal(table["id"], [1, 2, 3])


def test_read_psf_cube_asdf_of_the_former_layout(tmp_path):
    """Files written before the table node (a mapping of column to array) still read."""
    import asdf

    from astromix.mosaic import read_psf_cube

    path = tmp_path / "old.asdf"
    asdf.AsdfFile({"psf_cube": np.ones((2, 5, 5)), "meta": {"A": 1},
                   "sources": {"n_exposures": np.array([2, 3]),
                               "exposures": ["a,b", "a,b,c"]}}).write_to(path)
    cube, table, meta = read_psf_cube(path)
    assert cube.shape == (2, 5, 5) and meta == {"A": 1}
    assert list(table["n_exposures"]) == [2, 3] and list(table["exposures"]) == ["a,b", "a,b,c"]


# -- 7. stpsf instrument names, i2d context HDU, exposures without a PSF, wfe, oversampling ------
class _FakeNIRCam:
    """Stands in for stpsf's NIRCam (which needs the 70 MB data files): records what the
    provider sets and returns a known image as stpsf's OVERDIST extension."""

    made = []

    def __init__(self):
        self.filter = self.detector = self.detector_position = None
        _FakeNIRCam.made.append(self)

    def calc_psf(self, oversample, fov_pixels, **kwargs):
        self.calc = dict(oversample=oversample, fov_pixels=fov_pixels, **kwargs)
        n = oversample * fov_pixels
        c = (n - 1) / 2.0
        img = GaussianMixture([1.0], [[c, c]], [np.eye(2) * 9.0]).render((n, n),
                                                                          backend="numpy")
        return fits.HDUList([fits.PrimaryHDU(np.zeros((n, n))),
                             fits.ImageHDU(2.0 * img, name="OVERDIST")])


def test_stpsf_provider_takes_the_instrument_names_of_jwst_headers(tmp_path, monkeypatch):
    """HDRTAB's INSTRUME is 'NIRCAM' while stpsf's class is NIRCam: getattr(stpsf, 'NIRCAM')
    refused every real exposure; stpsf.instrument() takes any case (and 'NRC')."""
    stpsf = pytest.importorskip("stpsf")
    from astropy.table import Table

    from astromix.mosaic import StpsfProvider

    monkeypatch.setattr(stpsf.stpsf_core, "NIRCam", _FakeNIRCam)   # what stpsf.instrument makes
    monkeypatch.setenv("STPSF_PATH", str(tmp_path))
    _FakeNIRCam.made.clear()
    row = {"FILENAME": "jw01234001001_02101_00001_nrca1_cal.fits", "EFFEXPTM": 300.0,
           "INSTRUME": "NIRCAM", "FILTER": "F200W", "DETECTOR": "NRCA1",
           "DATE-OBS": "2023-01-02", "TIME-OBS": "03:04:05", "RA_REF": 53.16,
           "DEC_REF": -27.78, "ROLL_REF": 100.0, "V3I_YANG": -0.55, "VPARITY": -1,
           "XREF_SCI": 1024.5, "YREF_SCI": 1024.5, "NAXIS1": 2048, "NAXIS2": 2048}
    (exp,) = exposures_from_table(Table(rows=[row]))
    assert exp.instrument == "NIRCAM"
    provider = StpsfProvider(data_path=str(tmp_path), opd_by_date=False, oversampling=2,
                             fov_pixels=11, position_bin=256)
    _, image = provider.psf(exp, 1000.0, 300.0)
    (inst,) = _FakeNIRCam.made
    assert (inst.filter, inst.detector) == ("F200W", "NRCA1")
    assert inst.detector_position == (1024 - 128, 256 + 128)      # the bin's centre
    assert inst.calc == {"oversample": 2, "fov_pixels": 11}
    n, c = 22, 10.5
    truth = GaussianMixture([1.0], [[c, c]], [np.eye(2) * 9.0]).render((n, n), backend="numpy")
    np.testing.assert_allclose(image, truth / truth.sum(), rtol=1e-12)
    for name in ("nircam", "NRC"):
        assert provider.psf(dataclasses.replace(exp, instrument=name), 10, 10)[1] is not None
    with pytest.raises(InputError, match="no instrument 'WFC3'.*jw01234001001"):
        provider.psf(dataclasses.replace(exp, instrument="WFC3"), 10.0, 10.0)


def _i2d_with_context_at_3(src, folder, ctx):
    """The CLI fixture's mosaic (in folder ``src``) in the JWST i2d layout (0 PRIMARY, 1 SCI,
    2 ERR, 3 CON, 4 WHT, HDRTAB) with the context ``ctx``."""
    with fits.open(src / "mosaic_i2d.fits") as h:
        sci, hdrtab = h["SCI"].copy(), h["HDRTAB"].copy()
    path = folder / "jwst_i2d.fits"
    fits.HDUList([fits.PrimaryHDU(), sci, fits.ImageHDU(np.zeros(sci.data.shape), name="ERR"),
                  fits.ImageHDU(ctx, name="CON"), fits.ImageHDU(np.ones(sci.data.shape),
                                                                name="WHT"),
                  hdrtab]).writeto(path)
    return str(path)


def test_from_i2d_context_hdu_by_index_or_name_in_any_case(files, tmp_path):  # noqa: F811
    """context_hdu=3 (YOUNG reads mosaic_img[3]) or "con" was never found (``in names``):
    the context was dropped silently and every covering exposure counted."""
    src, sim, _ = files
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    ctx = np.array(sim.context)
    ctx[0, int(np.rint(y[0])), int(np.rint(x[0]))] = 0b0100     # injected: exposure 2 alone
    path = _i2d_with_context_at_3(src, tmp_path, ctx)
    provider = ImageProvider(np.ones((9, 9)), oversampling=1)
    names = [e.name + "_cal" for e in sim.exposures]               # HDRTAB's file names
    assert np.asarray(sim.stars["n_exposures"])[0] == 4          # all four cover star 0
    for hdu in ("CON", "con", 3, -3):
        model = ExposureWeightedPSF.from_i2d(path, provider, context_hdu=hdu)
        np.testing.assert_array_equal(model.context.reshape(ctx.shape), ctx)
        row = model.source_table(x[:1], y[:1])[0]
        assert row["n_exposures"] == 1 and row["exposures"] == names[2], hdu
    assert ExposureWeightedPSF.from_i2d(path, provider, context_hdu=None).context is None
    for hdu in (9, "CTX"):                                      # given, and missing: refused
        with pytest.raises(InputError, match=f"no context HDU {hdu!r}") as err:
            ExposureWeightedPSF.from_i2d(path, provider, context_hdu=hdu)
        assert path in str(err.value)
    with pytest.raises(InputError, match="WHT.*integer") as err:
        ExposureWeightedPSF.from_i2d(path, provider, context_hdu=4)   # a float image
    assert path in str(err.value)
    # the default name is optional: a mosaic without CON has no context
    with fits.open(path) as h:
        fits.HDUList([h[0].copy(), h[1].copy(), h["HDRTAB"].copy()]).writeto(
            tmp_path / "no_con.fits")
    assert ExposureWeightedPSF.from_i2d(str(tmp_path / "no_con.fits"), provider).context is None


def test_source_table_counts_only_the_exposures_in_the_psf(caplog):
    """Exposures the provider has no PSF for (missing="skip") are left out of the stamp; the
    table listed them (a source with an all-zero PSF showed n_exposures=3)."""
    exps = aligned_exposures(3)                                # e0, e1, e2: 100, 200, 300 s
    image = gaussians_provider([1.0], [0.0], [1.3]).images
    provider = ImageProvider({"e0": image, "e2": image}, by="name", oversampling=4,
                             missing="skip")
    ctx = np.full((1, 200, 200), 0b111, dtype=np.int32)        # every exposure ...
    ctx[0, 70, 80] = 0b010                                     # ... but here e1 alone
    model = ExposureWeightedPSF(MOSAIC_WCS, exps, provider, context=ctx)
    xs, ys = np.array([100.0, 80.0]), np.array([100.0, 70.0])
    with caplog.at_level(logging.WARNING, logger="astromix"):
        table = model.source_table(xs, ys)
        cube = model.cube(xs, ys, 15, executor="serial", progress=False)
    assert list(table["n_exposures"]) == [2, 0]
    np.testing.assert_allclose(table["total_weight"], [100.0 + 300.0, 0.0])
    assert list(table["exposures"]) == ["e0,e2", ""]
    assert np.all(cube[1] == 0) and "its PSF is zero" in caplog.text
    # the stamp is the mean of the exposures the table names (here, one PSF: that PSF)
    alone = ExposureWeightedPSF(MOSAIC_WCS, exps[:1], provider).image(100.0, 100.0, 15)
    np.testing.assert_allclose(cube[0], alone, atol=1e-14)
    assert list(model.source_table(xs, ys)["n_exposures"]) == [2, 0]   # after cube: same


def test_poppy_wfe_with_the_string_keys_of_json():
    """JSON object keys are strings: {"4": 30} failed mid-computation with a TypeError
    (max(coeffs) + 1)."""
    from astromix.mosaic import PoppyProvider

    given = json.loads(json.dumps({4: 150.0, 11: -40}))        # what the config holds
    assert given == {"4": 150.0, "11": -40}
    kwargs = {"nlambda": 1, "npix": 64, "fov_pixels": 11}
    from_json = PoppyProvider(wfe=given, **kwargs)
    assert from_json.wfe == {4: 150.0, 11: -40.0}
    exp = aligned_exposures(1)[0]
    _, img = from_json.psf(exp, 10.0, 10.0)
    _, ref = PoppyProvider(wfe={4: 150.0, 11: -40.0}, **kwargs).psf(exp, 10.0, 10.0)
    _, flat = PoppyProvider(wfe={}, **kwargs).psf(exp, 10.0, 10.0)
    np.testing.assert_array_equal(img, ref)
    assert np.abs(img - flat).max() > 0.05 * flat.max()        # the aberration is applied
    for bad, match in (({"Z4": 1}, "'Z4'"), ({"0": 1}, "'0'"), ({4.5: 1}, "4.5"),
                       ({True: 1}, "True"), ({"4": "big"}, "index 4"),
                       ({4: float("nan")}, "index 4"), ({"4": 1, 4: 2}, "twice"),
                       ([[4, 1]], "mapping")):
        with pytest.raises(InputError, match=match):
            PoppyProvider(wfe=bad)


def test_image_provider_fits_without_an_oversampling_keyword(tmp_path):
    """A FITS PSF with neither DET_SAMP nor OVERSAMP (as the NEXUS ePSFs) is refused with a
    message naming the file and the option (it spoke of "images given as arrays")."""
    image = gaussians_provider([1.0], [0.0], [1.3]).images
    path = str(tmp_path / "epsf.fits")
    fits.PrimaryHDU(image).writeto(path)
    for images in (path, {"NRCA1": path}):
        with pytest.raises(InputError, match="oversampling=") as err:
            ImageProvider(images)
        assert path in str(err.value) and "arrays" not in str(err.value)
    provider = ImageProvider(path, oversampling=4)
    assert provider.oversampling == 4
    np.testing.assert_allclose(provider.images, image / image.sum(), rtol=1e-12)


def test_image_provider_dict_mixing_files_with_and_without_oversampling(tmp_path):
    """A dict of a file whose header gives OVERSAMP = 4 and one (or an array) that gives
    none: the second's oversampling is unknown and is refused (the first file's 4 had been
    applied to both, scaling a PSF of another sampling wrongly)."""
    image = gaussians_provider([1.0], [0.0], [1.3]).images
    with_key, without = str(tmp_path / "a.fits"), str(tmp_path / "b.fits")
    hdu = fits.PrimaryHDU(image)
    hdu.header["OVERSAMP"] = 4
    hdu.writeto(with_key)
    fits.PrimaryHDU(image).writeto(without)
    for other, named in ((without, without), (image, "the array for detector='NRCB1'")):
        with pytest.raises(InputError, match="give oversampling=") as err:
            ImageProvider({"NRCA1": with_key, "NRCB1": other})
        assert named in str(err.value) and "oversampling 4" in str(err.value)
        provider = ImageProvider({"NRCA1": with_key, "NRCB1": other}, oversampling=4)
        assert provider.oversampling == 4
    assert ImageProvider({"NRCA1": with_key, "NRCB1": with_key}).oversampling == 4
