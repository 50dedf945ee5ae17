"""Large fields fitted in patches (forcepho's superscene): make_patches, fit_patches."""

import math
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from astromix import Exposure, GaussianMixture, InputError
from astromix.errors import BatchError
from astromix.fitting import MixtureLSQFitter, Patch, fit_patches, fit_scene, make_patches
from astromix.fitting import patches as patches_module
from astromix.models.scene import SceneModel, SersicSource, StarSource

RA, DEC = 150.0, 2.0
PSF = GaussianMixture([0.7, 0.3], [[0.0, 0.0], [0.1, -0.1]],
                      [np.diag([1.3, 1.5]), np.array([[4.0, 0.5], [0.5, 4.5]])])
PATCH, BORDER = 12.0, 3.0
# (dx, dy) [arcsec] east and north of (RA, DEC); g1, g5, s3 and s7 lie near the cores' edges
LAYOUT = [("g0", -7.0, -6.0), ("g1", -1.2, -3.0), ("g2", 6.0, -6.0), ("s3", 1.0, -8.0),
          ("g4", -6.0, 5.0), ("g5", -1.5, 1.2), ("g6", 6.0, 7.0), ("s7", 1.3, 4.0)]


def _wcs(shape, scale, rot, flip=False):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA, DEC]
    ny, nx = shape
    w.wcs.crpix = [nx / 2 + 0.3, ny / 2 - 0.4]
    c, s = math.cos(rot), math.sin(rot)
    cd = np.array([[-c, s], [s, c]]) * scale / 3600
    if flip:
        cd[:, 0] *= -1
    w.wcs.cd = cd
    return w


def _truth():
    rng = np.random.default_rng(5)
    cosd = math.cos(math.radians(DEC))
    sources = []
    for name, dx, dy in LAYOUT:
        ra, dec = RA + dx / 3600 / cosd, DEC + dy / 3600
        flux = {"g": float(rng.uniform(300, 700)), "r": float(rng.uniform(400, 900))}
        if name.startswith("s"):
            sources.append(StarSource(ra, dec, flux, name=name))
        else:
            sources.append(SersicSource(ra, dec, flux, r_eff=float(rng.uniform(0.5, 0.8)),
                                        n=float(rng.uniform(1.0, 2.5)),
                                        ellip=float(rng.uniform(0.1, 0.4)),
                                        theta=float(rng.uniform(0, 3)), name=name))
    return SceneModel(sources)


def _exposures(truth, rng):
    """Two exposures (g, r) with different WCS (scale, rotation, parity), noise 1."""
    out = []
    for band, shape, scale, rot, flip in (("g", (132, 128), 0.2, 0.3, False),
                                          ("r", (118, 120), 0.23, -0.8, True)):
        w = _wcs(shape, scale, rot, flip)
        blank = Exposure(np.zeros(shape), wcs=w, psf=PSF, band=band, name=band)
        img = truth.render(blank) + rng.normal(0, 1.0, shape)
        out.append(Exposure(img, uncertainty=np.ones(shape), wcs=w, psf=PSF, band=band,
                            name=band))
    return out


def _start(truth, rng):
    """The truth perturbed; Sersic shapes (n, ellip, theta) fixed, as a quick photometry fit."""
    scene = truth.copy()
    p = scene.parameters.copy()
    for i in range(scene.n_sources):
        idx = scene.source_index(i)
        for key, j in idx.items():
            if isinstance(key, tuple):
                p[j] *= math.exp(rng.normal(0, 0.2))
            elif key in ("ra", "dec"):
                p[j] += rng.normal(0, 0.1) / 3600
            elif key == "r_eff":
                p[j] *= math.exp(rng.normal(0, 0.1))
    scene.parameters = p
    for i, kind in enumerate(scene.source_kinds):
        if kind == "sersic":
            for name in ("n", "ellip", "theta"):
                getattr(scene, f"{name}_{i}").fixed = True
    return scene


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(11)
    truth = _truth()
    exposures = _exposures(truth, rng)
    return truth, exposures, _start(truth, rng)


@pytest.fixture(scope="module")
def fits(field):
    truth, exposures, start = field
    # relinearize=None: the start is within 0.5 px and the WCS are TAN (fast tests)
    whole = fit_scene(start, exposures, progress=False, relinearize=None)
    serial = fit_patches(start, exposures, patch_size=PATCH, border=BORDER,
                         executor="serial", kernel_threads=1, progress=False,
                         relinearize=None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        threads = fit_patches(start, exposures, patch_size=PATCH, border=BORDER,
                              executor=pool, progress=False, relinearize=None)
    return whole, serial, threads


def _tangent(ra, dec):
    cosd = math.cos(math.radians(DEC))
    return (np.asarray(ra) - RA) * 3600 * cosd, (np.asarray(dec) - DEC) * 3600


def test_every_source_active_once_with_neighbours_at_borders(field):
    truth, exposures, start = field
    patches = make_patches(start, exposures, patch_size=PATCH, border=BORDER)
    assert len(patches) == 4
    assert all(isinstance(p, Patch) for p in patches)
    active = np.concatenate([p.active for p in patches])
    assert sorted(active.tolist()) == list(range(start.n_sources))
    assert [p.index for p in patches] == [0, 1, 2, 3]
    assert patches[3].label == "patch 3 (row 1, col 1)" and patches[3].name == patches[3].label
    names = start.source_names
    assert {names[i] for i in patches[0].active} == {"g0", "g1"}
    assert {names[i] for i in patches[1].active} == {"g2", "s3"}
    # neighbours: outside the core, within border + halo (1.5 arcsec) of it, never active
    assert sum(p.n_fixed for p in patches) >= 4
    assert names.index("g1") in patches[1].fixed         # 0.7 arcsec left of patch 1's core
    for p in patches:
        assert not set(p.fixed) & set(p.active)
        (x_lo, x_hi), (y_lo, y_hi) = p.core
        src = start.sources
        assert p.in_core([src[i].ra for i in p.active], [src[i].dec for i in p.active]).all()
        assert not p.in_core([src[i].ra for i in p.fixed], [src[i].dec for i in p.fixed]).any()
        for i in p.fixed:
            x, y = (float(v[0]) for v in p.project(src[i].ra, src[i].dec))
            d = max(x_lo - x, 0, x - x_hi, y_lo - y, 0, y - y_hi)
            assert 0 < d <= BORDER + 0.5 * BORDER + 1e-9
        # the scene: active sources free (shapes fixed as in the field), neighbours fixed
        scene = p.scene()
        assert scene.source_names == tuple(src[i].name for i in (*p.active, *p.fixed))
        for j in range(p.n_active):
            assert not scene.fixed[f"flux_g_{j}"] and not scene.fixed[f"ra_{j}"]
            if scene.source_kinds[j] == "sersic":
                assert scene.fixed[f"n_{j}"] and not scene.fixed[f"r_eff_{j}"]
        for j in range(p.n_active, scene.n_sources):
            assert all(scene.fixed[n] for n in scene.param_names if n.endswith(f"_{j}"))


def test_cutouts_hold_the_region_with_the_right_wcs(field):
    truth, exposures, start = field
    patches = make_patches(start, exposures, patch_size=PATCH, border=BORDER)
    for p in patches:
        assert len(p.exposures) == 2 and list(p.exposure_index) == [0, 1]
        for cut, full in zip(p.exposures, exposures):
            assert cut.data.size < full.data.size and (cut.weight > 0).sum() < 0.6 * full.data.size
            assert cut.band == full.band and cut.name == full.name
            # same sky position -> same pixel, shifted by the cutout's origin
            for i in p.active:
                ra, dec = start.sources[i].ra, start.sources[i].dec
                xc, yc = cut.world_to_pixel(ra, dec)
                xf, yf = full.world_to_pixel(ra, dec)
                ox, oy = cut.psf_origin
                assert xc + ox == pytest.approx(xf, abs=1e-6)
                assert yc + oy == pytest.approx(yf, abs=1e-6)
                assert np.array_equal(cut.data[round(yc), round(xc)],
                                      full.data[round(yf), round(xf)])
            # pixels outside core + border are masked (the rotated box's corners)
            yy, xx = np.mgrid[:cut.shape[0], :cut.shape[1]]
            ra, dec = cut.pixel_to_world(xx.ravel(), yy.ravel())
            x, y = p.project(ra, dec)
            (x_lo, x_hi), (y_lo, y_hi) = p.core
            inside = ((x >= x_lo - BORDER - 1e-6) & (x <= x_hi + BORDER + 1e-6)
                      & (y >= y_lo - BORDER - 1e-6) & (y <= y_hi + BORDER + 1e-6))
            assert np.all(cut.weight.ravel()[~inside] == 0)
            assert np.all(cut.weight.ravel()[inside] > 0)


def test_exposures_from_a_generator_or_array(field):
    # a generator (or an object array) of exposures is every exposure, as in fit_scene;
    # it had been taken for one exposure and refused as having no WCS
    truth, exposures, start = field
    listed = make_patches(start, exposures, patch_size=PATCH, border=BORDER)
    for given in ((e for e in exposures), np.array(exposures, dtype=object)):
        patches = make_patches(start, given, patch_size=PATCH, border=BORDER)
        assert [p.label for p in patches] == [p.label for p in listed]
        for p, q in zip(patches, listed):
            assert list(p.exposure_index) == list(q.exposure_index) == [0, 1]
            assert np.array_equal(p.active, q.active) and np.array_equal(p.fixed, q.fixed)
            assert all(np.array_equal(a.data, b.data) for a, b in zip(p.exposures, q.exposures))
    one = make_patches(start, exposures[1], patch_size=PATCH, border=BORDER)
    assert all(list(p.exposure_index) == [0] for p in one)
    assert all(p.exposures[0].band == exposures[1].band for p in one)


def test_patches_pickle_small(field):
    truth, exposures, start = field
    patches = make_patches(start, exposures, patch_size=PATCH, border=BORDER)
    full = len(pickle.dumps(exposures))
    for p in patches:
        blob = pickle.dumps(p)
        assert len(blob) < 0.7 * full
        q = pickle.loads(blob)
        assert q.label == p.label and np.array_equal(q.active, p.active)
        assert np.array_equal(q.exposures[1].data, p.exposures[1].data)
        assert np.allclose(q.scene().parameters, p.scene().parameters)
    # the neighbours' model is the field's model minus the active sources'
    p = patches[1]
    k = 0
    both = p.scene().render(p.exposures[k])
    alone = p.scene(neighbours=False).render(p.exposures[k])
    assert np.allclose(p.neighbour_image(k), both - alone, atol=1e-9)


def test_patched_fit_agrees_with_whole_field_and_truth(field, fits):
    truth, exposures, start = field
    (_, whole), (fitted, cat), _ = fits
    assert len(cat) == start.n_sources
    assert list(cat["id"]) == list(whole["id"])             # one row per source, no duplicates
    assert set(whole.colnames) <= set(cat.colnames)
    assert set(cat["patch"]) == {0, 1, 2, 3} and cat["fit_ok"].all()
    true = truth.sources
    for band in ("g", "r"):
        f, e = np.asarray(cat[f"flux_{band}"]), np.asarray(cat[f"flux_err_{band}"])
        fw, ew = np.asarray(whole[f"flux_{band}"]), np.asarray(whole[f"flux_err_{band}"])
        assert np.all(np.isfinite(e)) and np.all(e > 0)
        assert np.all(np.abs(f - fw) < ew)                  # within the errors
        assert np.allclose(e, ew, rtol=0.3)
        pull = (f - [s.flux[band] for s in true]) / e
        assert np.all(np.abs(pull) < 4)
    x, y = _tangent(cat["ra"], cat["dec"])
    xt, yt = _tangent([s.ra for s in true], [s.dec for s in true])
    assert np.all(np.hypot(x - xt, y - yt) < 0.05)         # arcsec (0.2-0.23 arcsec pixels)
    info = fitted.fit_info
    assert len(info["patches"]) == 4 and info["patches"]["ok"].all()
    assert info["failures"] == [] and info["passes"] == 1
    assert set(info["param_std"]) <= set(fitted.param_names)
    # the merged scene carries the fitted values; the start is untouched
    assert fitted.parameters[0] == pytest.approx(cat["flux_g"][0])
    assert start.parameters[0] != pytest.approx(cat["flux_g"][0])


def test_serial_and_threads_agree(fits):
    _, (_, serial), (_, threads) = fits
    for band in ("g", "r"):
        np.testing.assert_allclose(threads[f"flux_{band}"], serial[f"flux_{band}"],
                                   rtol=1e-6)
        np.testing.assert_allclose(threads[f"flux_err_{band}"], serial[f"flux_err_{band}"],
                                   rtol=1e-4)
    np.testing.assert_allclose(threads["ra"], serial["ra"], rtol=0, atol=1e-9)
    assert list(threads["patch"]) == list(serial["patch"])


def test_second_pass_and_catalog_input(field, fits):
    truth, exposures, start = field
    (_, whole), (_, first), _ = fits
    # in the second pass the neighbours have their fitted values, not the start's (20% off
    # in flux): closer to the joint fit of the whole field
    fitted, cat = fit_patches(start, exposures, patch_size=PATCH, border=BORDER, passes=2,
                              executor="serial", progress=False, relinearize=None)
    assert fitted.fit_info["passes"] == 2
    for band in ("g", "r"):
        d1 = np.abs(first[f"flux_{band}"] - whole[f"flux_{band}"]) / whole[f"flux_err_{band}"]
        d2 = np.abs(cat[f"flux_{band}"] - whole[f"flux_{band}"]) / whole[f"flux_err_{band}"]
        assert d2.max() < 0.5 and d2.max() < d1.max()
    # known backgrounds, one per exposure of the field, reach the patches' cutouts
    fitter = MixtureLSQFitter(calc_uncertainties=False)
    _, cat0 = fit_patches(start, exposures, patch_size=PATCH, border=BORDER, passes=1,
                          executor="serial", progress=False, relinearize=None,
                          background=[0.0, 0.0], fitter=fitter, maxiter=20)
    assert len(cat0) == 8 and np.all(np.isnan(cat0["flux_err_g"]))
    # a catalog (Table, e.g. a fit's) is accepted
    patches = make_patches(Table(first), exposures, patch_size=PATCH, border=BORDER)
    assert sorted(np.concatenate([p.active for p in patches]).tolist()) == list(range(8))


def test_failing_patch_is_reported_by_label(field, monkeypatch):
    truth, exposures, start = field
    import astromix.fitting.scene as scene_module

    real = scene_module.fit_scene

    def flaky(scene, exposures, **kwargs):
        if "s3" in scene.source_names:
            raise InputError("no convergence")
        return real(scene, exposures, **kwargs)

    monkeypatch.setattr(scene_module, "fit_scene", flaky)
    with pytest.raises(InputError, match=r"^patch 1 \(row 0, col 1\): no convergence"):
        fit_patches(start, exposures, patch_size=PATCH, border=BORDER, executor="serial",
                    progress=False, maxiter=5, relinearize=None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        fitted, cat = fit_patches(start, exposures, patch_size=PATCH, border=BORDER,
                                  executor=pool, progress=False, return_exceptions=True,
                                  maxiter=5, relinearize=None)
    failed = cat["patch"] == 1
    assert set(cat["id"][failed]) == {"g2", "s3"}
    assert not cat["fit_ok"][failed].any() and cat["fit_ok"][~failed].all()
    assert np.all(np.isnan(cat["flux_err_g"][failed]))
    # the failed sources keep their starting values
    assert np.allclose(cat["flux_g"][failed], [start.sources[i].flux["g"]
                                               for i in np.flatnonzero(failed)])
    (failure,) = fitted.fit_info["failures"]
    assert failure.label == "patch 1 (row 0, col 1)" and failure.index == 1
    table = fitted.fit_info["patches"]
    assert list(table["ok"]) == [True, False, True, True]
    assert "no convergence" in table["error"][1]


def test_bad_input_refused(field):
    truth, exposures, start = field
    with pytest.raises(InputError, match="patch_size"):
        make_patches(start, exposures, patch_size=0, border=1)
    with pytest.raises(InputError, match="border"):
        make_patches(start, exposures, patch_size=5, border=-1)
    with pytest.raises(InputError, match="SceneModel or an astropy Table"):
        make_patches([1, 2], exposures, patch_size=5, border=1)
    with pytest.raises(InputError, match="unknown keyword"):
        fit_patches(start, exposures, patch_size=5, border=1, colour="red")
    with pytest.raises(InputError, match="passes"):
        fit_patches(start, exposures, patch_size=5, border=1, passes=0)
    tied = start.copy()
    tied.flux_r_0.tied = lambda m: m.flux_g_0
    with pytest.raises(InputError, match="tied"):
        make_patches(tied, exposures, patch_size=5, border=1)
    far = SceneModel([*start.sources, StarSource(RA + 0.1, DEC, {"g": 1.0, "r": 1.0},
                                                 name="far")])
    with pytest.raises(InputError, match="1 source.*lie on no exposure: far"):
        make_patches(far, exposures, patch_size=PATCH, border=BORDER)


def test_errors_are_batch_errors_for_bugs(field, monkeypatch):
    truth, exposures, start = field

    def broken(patch, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(patches_module, "_fit_patch", broken)
    with pytest.raises(BatchError, match=r"^patch \d \(row \d, col \d\): failed with "
                                         "ZeroDivisionError: bug"):
        fit_patches(start, exposures, patch_size=PATCH, border=BORDER, executor="serial",
                    progress=False)


def test_benchmark_main_tiny():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "large_field.py"
    if not path.exists():
        pytest.skip("benchmarks/ not available (installed package)")
    pytest.importorskip("galsim")
    spec = importlib.util.spec_from_file_location("large_field_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--size", "256", "--n-sources", "6", "--patch-size", "20",
                      "--border", "3", "--workers", "1", "2", "--n-isolated", "2",
                      "--executor", "thread"])
    assert set(res["runs"]) == {"1", "2"}
    assert res["runs"]["1"]["sources_per_s"] > 0
    assert res["max_worker_difference_sigma"] < 1e-3
    assert res["n_failed"] == 0
    assert abs(res["truth_median_pull"]) < 2                  # GalSim truth recovered
    assert res["truth_median_offset_arcsec"] < 0.1
    assert res["n_isolated"] >= 1 and abs(res["isolated_median_diff_sigma"]) < 0.5


def test_shape_at_bound_is_retried(field, monkeypatch):
    truth, exposures, start = field
    import astromix.fitting.scene as scene_module

    real = scene_module.fit_scene
    calls = []

    def stuck_once(scene, exposures, **kwargs):
        fitted, cat = real(scene, exposures, **kwargs)
        if "g0" in scene.source_names and not calls:
            # as if the joint fit had run g0's Sersic index into its lower bound
            j = scene.source_names.index("g0")
            setattr(fitted, f"n_{j}", 0.3)
            fitted.fit_info["chi2"] += 100.0
        if "g0" in scene.source_names:
            calls.append(float(getattr(scene, f"n_{scene.source_names.index('g0')}").value))
        return fitted, cat

    monkeypatch.setattr(scene_module, "fit_scene", stuck_once)
    shapes = start.copy()
    shapes.n_0.fixed = False                      # g0's index free: it can be at a bound
    fitted, cat = fit_patches(shapes, exposures, patch_size=PATCH, border=BORDER,
                              executor="serial", progress=False, relinearize=None)
    table = fitted.fit_info["patches"]
    assert list(table["retried"]) == [True, False, False, False]
    # the retry started from g0's starting index, not from the bound, and won
    assert len(calls) == 2 and calls[1] == pytest.approx(shapes.n_0.value)
    assert cat["n"][0] > 0.5 and not cat["at_bound"][0]
    fitted, cat = fit_patches(shapes, exposures, patch_size=PATCH, border=BORDER,
                              executor="serial", progress=False, relinearize=None,
                              retry=False)
    assert not fitted.fit_info["patches"]["retried"].any()


def _simple_wcs(ra, dec, crpix, scale):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [ra, dec], crpix
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    return w


def test_extended_neighbour_at_small_pixel_scale_is_fixed():
    # 0.03 arcsec/px (JWST/NIRCam): a galaxy of r_eff 1 arcsec (33 px) 3.9 arcsec from the
    # patch's active source shines on the patch's pixels; it must be a fixed neighbour
    # (its margin is 4.5 r_eff / pscale + 9 px), or the active flux absorbs its light
    scale, shape = 0.03, (260, 320)
    w = _simple_wcs(RA, DEC, [280.5, 130.5], scale)
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 4.0])
    cosd = math.cos(math.radians(DEC))
    truth = SceneModel([
        SersicSource(RA + 0.3 / 3600 / cosd, DEC, 200.0, r_eff=0.3, n=1.0, name="A"),
        SersicSource(RA + 4.2 / 3600 / cosd, DEC, 5000.0, r_eff=1.0, n=1.0, name="G")])
    rng = np.random.default_rng(0)
    blank = Exposure(np.zeros(shape), wcs=w, psf=psf, band="r")
    img = truth.render(blank) + rng.normal(0, 0.01, shape)
    exposure = Exposure(img, uncertainty=np.full(shape, 0.01), wcs=w, psf=psf, band="r")
    patches = make_patches(truth, [exposure], patch_size=3, border=1, halo=1.5)
    assert patches[0].active.tolist() == [0] and patches[0].fixed.tolist() == [1]
    # G's light reaches the patch's fitted pixels (SceneModel.placements places it there)
    cut = patches[0].exposures[0]
    assert SceneModel([truth.sources[1]]).render(cut)[~cut.mask].max() > 10 * 0.01
    start = truth.copy()
    for i in range(2):
        for name in ("n", "ellip", "theta", "r_eff"):
            getattr(start, f"{name}_{i}").fixed = True
    _, cat_p = fit_patches(start, [exposure], patch_size=3, border=1, halo=1.5,
                           executor="serial", progress=False, background=None)
    _, cat_w = fit_scene(start, [exposure], progress=False, background=None)
    assert abs(cat_p["flux"][0] - cat_w["flux"][0]) < cat_w["flux_err"][0]
    assert abs(cat_p["flux"][0] - 200.0) < 4 * cat_w["flux_err"][0]


def test_field_straddling_ra_zero():
    # the make_patches docstring example (at ra = 150) moved to ra = 0: the same patches,
    # with the default reference as with an explicit one
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    expected = [([0], [4]), ([2], [4]), ([1], [4]), ([3, 4], [])]
    for ra0 in (150.0, 0.0):
        w = _simple_wcs(ra0, 2.0, [100.5, 100.5], 0.2)
        exposure = Exposure(np.zeros((200, 200)), wcs=w, psf=psf, band="r")
        stars = [StarSource((ra0 + dx / 3600) % 360, 2.0 + dy / 3600, 10.0)
                 for dx, dy in [(-10, -10), (-8, 10), (10, -10), (10, 10), (1, 1)]]
        for reference in ((ra0, 2.0), None):
            patches = make_patches(SceneModel(stars), [exposure], patch_size=15, border=3,
                                   reference=reference)
            assert [(p.active.tolist(), p.fixed.tolist()) for p in patches] == expected
        # the default tangent point: the middle of the stars' box, (ra0, 2) + (0, 0) arcsec
        ref_ra, ref_dec = patches[0].reference
        d_ra = ((ref_ra - ra0 + 180.0) % 360.0 - 180.0) * 3600 * math.cos(math.radians(2.0))
        assert abs(d_ra) < 1e-4 and abs(ref_dec - 2.0) * 3600 < 1e-4


@pytest.mark.parametrize("passes", [2, 3])
def test_max_shift_holds_over_passes(passes):
    # source 0 starts 1.3 arcsec north of its true position: with max_shift 0.7 arcsec it
    # may move 0.7 arcsec from the start, and ends at that bound, in every pass
    w = _simple_wcs(RA, DEC, [50.5, 50.5], 0.2)
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 9.0])
    truth = SceneModel([StarSource(RA + dx / 3600, DEC, 100.0, name=f"s{k}")
                        for k, dx in enumerate((-5.0, 5.0))])
    rng = np.random.default_rng(0)
    blank = Exposure(np.zeros((100, 100)), wcs=w, psf=psf, band="r")
    img = truth.render(blank) + rng.normal(0, 0.1, (100, 100))
    exposure = Exposure(img, uncertainty=np.full((100, 100), 0.1), wcs=w, psf=psf, band="r")
    start = truth.copy()
    start.dec_0 = DEC + 1.3 / 3600
    fitted, cat = fit_patches(start, [exposure], patch_size=6, border=2, passes=passes,
                              max_shift=0.7, executor="serial", progress=False)
    shift = (float(fitted.dec_0.value) - float(start.dec_0.value)) * 3600
    assert shift == pytest.approx(-0.7, abs=1e-6)
    assert cat["at_bound"][0] and not cat["at_bound"][1]
    assert start.dec_0.bounds == (None, None)             # the caller's scene is untouched
