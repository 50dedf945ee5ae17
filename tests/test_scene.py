"""SceneModel: sources on the sky rendered and fitted in several exposures with their WCS."""

import math
import warnings

import numpy as np
import pytest
from astropy.wcs import WCS

from astromix import Exposure, GaussianMixture, GaussianMixturePSF, InputError
from astromix.fitting import MixtureLSQFitter, fit_scene, sample_scene, scene_catalog
from astromix.models.scene import (
    SceneModel,
    SceneObjective,
    SceneWarning,
    SersicSource,
    StarSource,
    local_affine,
)

RA, DEC = 150.0, 2.0
PSF = GaussianMixture([0.6, 0.4], [[0.0, 0.0], [0.1, -0.1]],
                      [np.diag([1.5, 1.7]), np.array([[5.0, 0.8], [0.8, 6.0]])])


def make_wcs(shape, scale=0.2, rot=0.0, flip=False, sip=False):
    """A TAN (optionally TAN-SIP) WCS centred near (RA, DEC), rotated and/or flipped."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA, DEC]
    ny, nx = shape
    w.wcs.crpix = [nx / 2 + 0.3, ny / 2 - 0.2]
    c, s = math.cos(rot), math.sin(rot)
    cd = np.array([[-c, s], [s, c]]) * scale / 3600
    if flip:
        cd[:, 0] *= -1
    w.wcs.cd = cd
    if sip:
        from astropy.wcs import Sip
        a = np.zeros((3, 3))
        b = np.zeros((3, 3))
        a[2, 0], a[1, 1], b[0, 2] = 2e-4, -1e-4, 1.5e-4
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def make_exposure(shape, band, *, noise=1.0, zeropoint=None, psf=PSF, name="e", **wcs_kw):
    return Exposure(np.zeros(shape), uncertainty=np.full(shape, noise),
                    wcs=make_wcs(shape, **wcs_kw), psf=psf, band=band, zeropoint=zeropoint,
                    name=name)


def truth_scene():
    return SceneModel([SersicSource(RA, DEC, {"g": 200.0, "r": 300.0}, r_eff=0.9, n=1.5,
                                    ellip=0.3, theta=0.4, name="gal"),
                       StarSource(RA + 1.6 / 3600, DEC - 1.1 / 3600, {"g": 60.0, "r": 80.0},
                                  name="star")], zeropoint=22.5)


def noisy_exposures(scene, rng, noise=1.0, background=(3.0, -2.0, 1.0)):
    specs = [dict(shape=(48, 50), band="g", zeropoint=23.0, rot=0.3, name="g1"),
             dict(shape=(44, 46), band="r", zeropoint=22.5, rot=-1.0, scale=0.25, flip=True,
                  name="r1"),
             dict(shape=(46, 46), band="r", zeropoint=22.5, rot=2.0, scale=0.18, sip=True,
                  name="r2")]
    out = []
    for spec, bg in zip(specs, background):
        e = make_exposure(noise=noise, **spec)
        img = scene.render(e) + bg + rng.normal(0, noise, spec["shape"])
        out.append(Exposure(img, uncertainty=np.full(img.shape, noise), wcs=e.wcs, psf=PSF,
                            band=e.band, zeropoint=e.zeropoint, name=e.name))
    return out


def test_names_bands_and_sources():
    scene = truth_scene()
    assert scene.bands == ("g", "r")
    assert scene.param_names[:8] == ("flux_g_0", "flux_r_0", "ra_0", "dec_0", "r_eff_0", "n_0",
                                     "ellip_0", "theta_0")
    assert scene.param_names[8:] == ("flux_g_1", "flux_r_1", "ra_1", "dec_1")
    assert scene.source_kinds == ("sersic", "star")
    assert scene.n_0.bounds == (0.3, 8.0)
    src = scene.sources[0]
    assert isinstance(src, SersicSource) and src.flux == {"g": 200.0, "r": 300.0}


def test_local_affine_north_up_east_left():
    # CD = diag(-s, s): north is +y, east is -x, s arcsec per px (at the reference point)
    w = make_wcs((40, 40), scale=0.25)
    pix, jac = local_affine(w, RA, DEC)
    assert np.allclose(jac, [[0.0, -4.0], [4.0, 0.0]], atol=1e-6)
    assert np.allclose(w.world_to_pixel_values(RA, DEC), pix)
    # rotated by 0.5 rad: same scale, the determinant keeps the parity
    _, jrot = local_affine(make_wcs((40, 40), scale=0.25, rot=0.5), RA, DEC)
    assert np.linalg.det(jrot) == pytest.approx(16.0, rel=1e-6)
    _, jflip = local_affine(make_wcs((40, 40), scale=0.25, flip=True), RA, DEC)
    assert np.linalg.det(jflip) == pytest.approx(-16.0, rel=1e-6)


def test_position_angle_is_east_of_north():
    # north up (+y), east left (-x): theta = 0 elongates along y, theta = 90 deg along x
    shape = (61, 61)
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 0.3])
    e = make_exposure(shape, "r", psf=psf, scale=0.2)
    for theta, long_axis in ((0.0, "y"), (math.pi / 2, "x")):
        scene = SceneModel([SersicSource(RA, DEC, 100.0, r_eff=1.5, n=1.0, ellip=0.6,
                                         theta=theta)], bands=("r",))
        img = scene.render(e)
        _, _, cov = scene.mixture(e).moments()
        if long_axis == "y":
            assert cov[1, 1] > 4 * cov[0, 0]
        else:
            assert cov[0, 0] > 4 * cov[1, 1]
        assert img.sum() == pytest.approx(100.0, rel=5e-3)   # the far wings leave the image
    # theta = 45 deg points north-east: up and to the left, so x and y anti-correlated
    scene = SceneModel([SersicSource(RA, DEC, 100.0, r_eff=1.5, n=1.0, ellip=0.6,
                                     theta=math.pi / 4)], bands=("r",))
    _, _, cov = scene.mixture(e).moments()
    assert cov[0, 1] < -0.5 * math.sqrt(cov[0, 0] * cov[1, 1])


@pytest.mark.parametrize("rot,flip,scale,sip", [(0.0, False, 0.2, False), (0.7, False, 0.25, True),
                                                (-1.2, True, 0.18, False)])
def test_render_matches_galsim(rot, flip, scale, sip):
    """Independent truth: GalSim's exact Sersic, mapped to pixels by the local WCS Jacobian."""
    galsim = pytest.importorskip("galsim")
    shape = (64, 60)
    e = make_exposure(shape, "r", rot=rot, flip=flip, scale=scale, sip=sip)
    src = SersicSource(RA + 0.3 / 3600, DEC - 0.2 / 3600, {"r": 1000.0}, r_eff=1.2, n=2.0,
                       ellip=0.4, theta=0.6)
    img = SceneModel([src]).render(e)
    pix, jac = local_affine(e.wcs, src.ra, src.dec)
    q = 1 - src.ellip
    # GalSim's x axis = north, y axis = east, beta from x towards y: the position angle
    gal = galsim.Sersic(n=src.n, half_light_radius=src.r_eff * math.sqrt(q)).shear(
        q=q, beta=src.theta * galsim.radians)
    gal = gal.transform(jac[0, 0], jac[0, 1], jac[1, 0], jac[1, 1]).withFlux(1000.0)
    psf = galsim.Add([galsim.Gaussian(sigma=1.0).transform(*np.linalg.cholesky(c).ravel())
                      .withFlux(a).shift(*m) for a, m, c in zip(PSF.amp, PSF.mean, PSF.cov)])
    ny, nx = shape
    ref = galsim.Convolve(gal, psf).drawImage(
        nx=nx, ny=ny, scale=1.0, method="auto",
        offset=(pix[0] - (nx / 2 - 0.5), pix[1] - (ny / 2 - 0.5))).array
    assert np.max(np.abs(img - ref)) < 1e-3 * ref.max()


def test_gradient_matches_finite_differences():
    # 7-sigma culling: at the default 5 sigma, chi2 jumps by ~1e-4 of its slope where a
    # pixel crosses a component's culling ellipse, which central differences pick up
    from astromix import AccuracySettings

    rng = np.random.default_rng(3)
    truth = truth_scene()
    exps = noisy_exposures(truth, rng)
    scene = SceneModel(truth.sources, zeropoint=22.5, settings=AccuracySettings(n_sigma=7))
    obj = SceneObjective(scene, exps)
    p0 = scene.parameters.copy()
    p0[scene.param_names.index("n_0")] = 2.1
    p0[scene.param_names.index("ra_1")] += 0.2 / 3600
    chi2, grad = obj(p0)
    assert chi2 > 0 and grad.shape == p0.shape
    for i, name in enumerate(scene.param_names):
        h = 2e-8 if name.startswith(("ra", "dec")) else 1e-5 * max(1.0, abs(p0[i]))
        up, down = p0.copy(), p0.copy()
        up[i] += h
        down[i] -= h
        numeric = (obj(up, gradient=False) - obj(down, gradient=False)) / (2 * h)
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8 * abs(grad).max()), name


def test_exposure_components_match_single_source_builds():
    """The per-exposure compiled build equals each source built on its own, at the
    sky position the WCS gives for moved sources (placements made before the move)."""
    from astromix.models._sersic_build import sersic_components, shape_terms
    from astromix.models.sersic_table import SersicMixtureTable

    truth = truth_scene()
    e = noisy_exposures(truth, np.random.default_rng(5))[2]           # TAN-SIP
    scene = SceneModel(truth.sources + [SersicSource(RA - 1e-4, DEC + 2e-4, {"g": 50.0, "r": 70.0},
                                                     r_eff=0.5, n=3.2, ellip=0.1, theta=2.0)],
                       zeropoint=22.5)
    pls = scene.placements(e, scene.parameters)
    p = scene.parameters.copy()
    for i in range(scene.n_sources):
        idx = scene.source_index(i)
        p[idx["ra"]] += (0.05 + 0.03 * i) / 3600
        p[idx["dec"]] -= (0.04 - 0.02 * i) / 3600
    amp, mean, cov, jac = scene._component_arrays(p, pls, derivatives=True)
    table = SersicMixtureTable.load()
    for pl in pls:
        idx = scene.source_index(pl.source)
        flux = p[idx[("flux", "r")]] * pl.flux_scale
        x, y = e.wcs.world_to_pixel_values(p[idx["ra"]], p[idx["dec"]])
        if scene.source_kinds[pl.source] == "sersic":
            coeffs, t_n = table.interval(p[idx["n"]])
            want = sersic_components(coeffs, t_n, flux, float(x), float(y), p[idx["r_eff"]],
                                     shape_terms(p[idx["ellip"]], p[idx["theta"]]),
                                     (pl.psf_amp, pl.psf_mean, pl.psf_cov),
                                     scene.settings.merge_tolerance,
                                     scene.settings.box_variance, True, wcs_jac=pl.jac)
            np.testing.assert_allclose(jac[pl.sl], want[3], rtol=1e-12, atol=1e-12)
        else:
            want = (flux * pl.psf_amp, np.array([x, y]) + pl.psf_mean, pl.psf_cov)
            assert np.all(jac[pl.sl][:, 0, 0] == pl.psf_amp)
            assert np.count_nonzero(jac[pl.sl]) == 3 * pl.psf_amp.size
        np.testing.assert_allclose(amp[pl.sl], want[0], rtol=1e-13)
        np.testing.assert_allclose(cov[pl.sl], want[2], rtol=1e-13)
        # the centre from the local affine map, against the full (SIP) WCS
        np.testing.assert_allclose(mean[pl.sl], want[1], rtol=0, atol=2e-4)
    assert pls[-1].sl.stop == amp.size


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("background", ["fit", 0.7, None])
def test_all_exposures_in_one_call_match_one_by_one(dtype, rtol, background):
    """The Numba backend's one-call path over all exposures (row bands and component
    blocks on all threads) gives the chi2, backgrounds and gradient of the
    exposure-by-exposure kernels (widths 46 and 50: padded to 48 and 64)."""
    from astromix import backends

    if "numba" not in backends.available_backends():
        pytest.skip("needs numba")
    truth = truth_scene()
    exps = noisy_exposures(truth, np.random.default_rng(8))
    mask = np.zeros(exps[0].data.shape, dtype=bool)
    mask[5:9, 10:30] = True
    exps[0] = Exposure(exps[0].data, uncertainty=np.ones(mask.shape), mask=mask,
                       wcs=exps[0].wcs, psf=PSF, band="g", zeropoint=23.0, name="g1")
    scene = SceneModel(truth.sources, zeropoint=22.5)
    obj = SceneObjective(scene, exps, dtype=dtype, background=background, backend="numba")
    assert obj._layout is not None
    p = scene.parameters.copy()
    p[scene.param_names.index("n_0")] = 2.2
    p[scene.param_names.index("ra_1")] += 0.1 / 3600
    for gradient in (True, False):
        one = obj(p, gradient=gradient)
        bg_one, per_one = obj.backgrounds.copy(), obj.chi2_per_exposure.copy()
        obj._layout = None
        try:
            ref = obj(p, gradient=gradient)
        finally:
            obj._layout = obj.bk.exposures_layout([d.shape for d in obj.data])
        if gradient:
            np.testing.assert_allclose(one[1], ref[1], rtol=0, atol=rtol * np.abs(ref[1]).max())
            one, ref = one[0], ref[0]
        assert one == pytest.approx(ref, rel=rtol)
        np.testing.assert_allclose(obj.chi2_per_exposure, per_one, rtol=rtol)
        np.testing.assert_allclose(obj.backgrounds, bg_one, rtol=rtol, atol=1e-12)


def _chi2_in_worker(obj, p):
    return obj(p)[0]


def test_forked_worker_after_parallel_kernels():
    """A worker forked after this process ran the parallel kernels evaluates the scene
    on its own thread: GNU OpenMP is not fork-safe, and Numba aborts a forked child
    at its first parallel region."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from astromix import backends

    if "numba" not in backends.available_backends():
        pytest.skip("needs numba")
    bk = backends.get_backend("numba")
    if not bk.parallel_available():
        pytest.skip("needs two Numba threads")
    truth = truth_scene()
    exps = noisy_exposures(truth, np.random.default_rng(9))
    obj = SceneObjective(SceneModel(truth.sources, zeropoint=22.5), exps, backend="numba")
    p = obj.scene.parameters
    ref = obj(p)[0]                                   # the parallel call, in this process
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        got = pool.submit(_chi2_in_worker, obj, p).result(timeout=300)
    assert got == pytest.approx(ref, rel=1e-10)


def test_fit_recovers_injected_parameters_with_honest_errors():
    rng = np.random.default_rng(11)
    truth = truth_scene()
    exps = noisy_exposures(truth, rng)
    start = truth.copy()
    start.n_0 = 2.5
    start.r_eff_0 = 0.6
    start.flux_g_0 = 120.0
    start.ra_1 = truth.ra_1.value + 0.15 / 3600
    fitted, cat = fit_scene(start, exps, progress=False)
    info = fitted.fit_info
    assert info["chi2"] / info["dof"] == pytest.approx(1.0, abs=0.1)
    for name in truth.param_names:
        err = info["param_std"][name]
        assert abs(getattr(fitted, name).value - getattr(truth, name).value) < 4 * err, name
    # the profiled backgrounds are the injected ones
    assert np.allclose(info["exposures"]["background"], [3.0, -2.0, 1.0], atol=0.1)
    assert list(cat["id"]) == ["gal", "star"]
    assert cat["flux_g"][0] == pytest.approx(fitted.flux_g_0.value)
    assert cat["flux_err_g"][0] == pytest.approx(info["param_std"]["flux_g_0"])
    assert cat["dec_err"][1] == pytest.approx(info["param_std"]["dec_1"] * 3600)
    assert bool(cat["r_eff"].mask[1]) and not bool(cat["r_eff"].mask[0])
    assert "mag_g" in cat.colnames
    assert len(info["exposures"]) == 3 and set(info["exposures"]["band"]) == {"g", "r"}


@pytest.mark.parametrize("theta", [math.pi / 2, 1.45, 2.0])
def test_shape_started_round_and_across_the_galaxy_is_found(theta):
    """A catalog without shapes starts a galaxy at ellip = 0, theta = 0.  Oriented more than
    pi/4 from that, the chi2 gradient pushes ellip below 0 and theta's is zero there: the fit
    had stopped on a round model (ellip 0.0, chi2/dof 1.021 against 1.014), now it is started
    again turned and finds the injected shape."""
    rng = np.random.default_rng(3)
    truth = SceneModel([SersicSource(RA, DEC, {"g": 400.0, "r": 600.0}, r_eff=0.9, n=1.5,
                                     ellip=0.3, theta=theta, name="gal"),
                        StarSource(RA + 1.6 / 3600, DEC - 1.1 / 3600, {"g": 60.0, "r": 80.0},
                                   name="star")], zeropoint=22.5)
    exps = noisy_exposures(truth, rng)
    start = truth.copy()
    start.ellip_0, start.theta_0 = 0.0, 0.0
    fitted, cat = fit_scene(start, exps, progress=False)
    std = fitted.fit_info["param_std"]
    assert abs(fitted.ellip_0.value - 0.3) < 4 * std["ellip_0"]
    d_theta = (fitted.theta_0.value - theta + math.pi / 2) % math.pi - math.pi / 2
    assert abs(d_theta) < 4 * std["theta_0"]
    assert fitted.fit_info["chi2"] / fitted.fit_info["dof"] == pytest.approx(1.0, abs=0.02)
    # a round galaxy stays round, and a held position angle is not turned
    truth.ellip_0 = 0.0
    exps = noisy_exposures(truth, np.random.default_rng(4))
    start.theta_0.fixed = True
    fitted, _ = fit_scene(start, exps, progress=False)
    assert fitted.theta_0.value == 0.0 and fitted.ellip_0.value < 0.1


def test_fixed_and_tied_parameters_and_known_background():
    rng = np.random.default_rng(5)
    truth = truth_scene()
    exps = noisy_exposures(truth, rng, background=(0.0, 0.0, 0.0))
    start = truth.copy()
    start.n_0.fixed = True
    start.flux_r_1.tied = lambda m: m.flux_g_1 * (80.0 / 60.0)
    start.flux_g_1 = 50.0
    fitted = MixtureLSQFitter()(start, exps, background=None)
    assert fitted.n_0.value == truth.n_0.value
    assert "n_0" not in fitted.fit_info["free_parameters"]
    assert "flux_r_1" not in fitted.fit_info["free_parameters"]
    assert fitted.flux_r_1.value == pytest.approx(fitted.flux_g_1.value * 80 / 60)
    assert fitted.flux_g_1.value == pytest.approx(60.0, abs=4 * fitted.fit_info["param_std"][
        "flux_g_1"])


def test_zeropoint_scales_flux_to_data_units():
    e = make_exposure((40, 40), "g", zeropoint=25.0)
    scene = SceneModel([StarSource(RA, DEC, {"g": 10.0})], zeropoint=22.5)
    assert scene.render(e).sum() == pytest.approx(10.0 * 10 ** (0.4 * 2.5), rel=1e-3)
    no_zp = SceneModel([StarSource(RA, DEC, {"g": 10.0})])
    assert no_zp.render(e).sum() == pytest.approx(10.0, rel=1e-3)


def test_bad_input():
    with pytest.raises(InputError, match="no sources"):
        SceneModel([])
    with pytest.raises(InputError, match="band 'r'"):
        SceneModel([StarSource(RA, DEC, {"g": 1.0})], bands=("g", "r"))
    scene = SceneModel([StarSource(RA, DEC, {"g": 1.0})])
    with pytest.raises(InputError, match="has band 'z'"):
        scene.chi2([make_exposure((20, 20), "z")])
    far = SceneModel([StarSource(RA + 1.0, DEC, {"g": 1.0})])
    with pytest.raises(InputError, match="no exposure overlaps"):
        with pytest.warns(SceneWarning, match="overlaps no source"):
            far.chi2([make_exposure((20, 20), "g")])
    with pytest.raises(InputError):
        SersicSource(RA, DEC, 1.0, n=12.0)
    from astropy import units as u
    with pytest.raises(InputError, match="finite"):
        SersicSource(RA, DEC, 1.0, r_eff=np.nan * u.arcsec)
    with pytest.raises(InputError, match="units of"):
        SersicSource(RA, DEC, 1.0, r_eff=1.0 * u.kg)
    assert SersicSource(RA, DEC, 1.0, r_eff=60 * u.mas).r_eff == pytest.approx(0.06)
    with pytest.raises(InputError, match="SceneModel"):
        fit_scene(GaussianMixturePSF(PSF), [make_exposure((20, 20), "g")])
    with pytest.raises(InputError, match="needs an exposure"):
        scene(np.zeros(3), np.zeros(3))
    with pytest.raises(InputError, match="zeropoint must be a number"):
        SceneModel([StarSource(RA, DEC, 1.0)], zeropoint="abc")
    # one band's name is that band, not its letters
    assert SceneModel([StarSource(RA, DEC, {"F200W": 1.0})], bands="F200W").bands == ("F200W",)


@pytest.mark.parametrize("name, value, shown", [
    ("r_eff_0", -1.0, "r_eff_0 = -1.0"), ("r_eff_0", np.nan, "r_eff_0 = nan"),
    ("ellip_0", 1.5, "ellip_0 = 1.5"), ("ellip_0", -0.3, "ellip_0 = -0.3"),
    ("flux_g_0", np.nan, "flux_g_0 = nan"), ("theta_0", np.inf, "theta_0 = inf"),
])
def test_invalid_values_set_after_construction_are_refused(name, value, shown):
    """Values no source can have, set by hand or by an unbounded optimiser, raise
    InputError in render, chi2 and a fit's objective.  They had been rendered
    silently: r_eff < 0 dropped the source (an empty image), NaN r_eff or an
    infinite theta gave zeros, ellip = 1.5 was drawn as 0.5 and a NaN flux gave NaN."""
    exp = make_exposure((30, 30), "g")
    scene = SceneModel([SersicSource(RA, DEC, {"g": 100.0}, r_eff=0.5, n=1.5, ellip=0.3)])
    assert scene.render(exp).sum() > 50.0
    objective = SceneObjective(scene, [exp])
    p = scene.parameters.copy()
    p[scene.param_names.index(name)] = value
    setattr(scene, name, value)
    for call in (lambda: scene.render(exp), lambda: scene.chi2([exp], gradient=False),
                 lambda: objective(p)):
        with pytest.raises(InputError, match=f"invalid parameter values \\({shown}\\)"):
            call()


def test_asdf_refuses_a_scene_it_could_not_read_back():
    """ellip = 0.97 (allowed once the user widens the bounds) cannot be stored in a
    scene file, whose sources cap it at 0.95 as SersicSource does: InputError naming
    the source, where asdf's schema validation had raised its own ValidationError."""
    import io

    asdf = pytest.importorskip("asdf")
    scene = truth_scene()
    scene.ellip_0.bounds = (0.0, 0.99)
    scene.ellip_0 = 0.97
    with pytest.raises(InputError, match=r"source 0 \(gal\): ellip must be within \[0, 0.95\]"):
        asdf.AsdfFile({"scene": scene}).write_to(io.BytesIO())


def test_exposure_off_a_source_warns_and_is_left_out():
    scene = SceneModel([StarSource(RA, DEC, {"g": 100.0})])
    near = make_exposure((30, 30), "g")
    away = Exposure(np.zeros((30, 30)), uncertainty=np.ones((30, 30)),
                    wcs=make_wcs((30, 30)), psf=PSF, band="g", name="away")
    away.wcs.wcs.crval = [RA + 0.5, DEC]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SceneWarning)
        obj = SceneObjective(scene, [near, away])
    assert [e.name for e in obj.exposures] == ["e"]


def test_catalog_round_trip_and_in_exposure(tmp_path):
    scene = truth_scene()
    cat = scene_catalog(scene)
    path = tmp_path / "cat.ecsv"
    cat.write(path)
    again = SceneModel.from_catalog(str(path))
    assert again.bands == ("g", "r") and again.zeropoint == 22.5
    assert np.allclose(again.parameters, scene.parameters)
    assert again.source_kinds == scene.source_kinds
    e = make_exposure((40, 40), "g", zeropoint=22.5)
    y, x = np.mgrid[:40, :40]
    assert np.allclose(scene.in_exposure(e)(x, y), scene.render(e))
    with pytest.raises(InputError, match="row 0"):
        from astropy.table import Table
        SceneModel.from_catalog(Table({"ra": [RA], "dec": [95.0]}))
    with pytest.raises(InputError, match="no rows"):
        from astropy.table import Table
        SceneModel.from_catalog(Table({"ra": [], "dec": []}))


def test_asdf_round_trip(tmp_path):
    asdf = pytest.importorskip("asdf")
    scene = truth_scene()
    scene.n_0.fixed = True
    scene.r_eff_0.bounds = (0.1, 5.0)
    path = tmp_path / "scene.asdf"
    asdf.AsdfFile({"scene": scene}).write_to(path)
    with asdf.open(path) as af:
        back = af.tree["scene"]
        assert isinstance(back, SceneModel)
        assert back.param_names == scene.param_names
        assert np.array_equal(back.parameters, scene.parameters)
        assert back.n_0.fixed and back.r_eff_0.bounds == (0.1, 5.0)
        assert back.zeropoint == 22.5 and back.source_names == ("gal", "star")


def test_sample_scene_posterior_agrees_with_fit():
    pytest.importorskip("dynesty")
    rng = np.random.default_rng(2)
    truth = SceneModel([StarSource(RA, DEC, {"g": 80.0})])
    e = make_exposure((24, 24), "g", noise=1.0)
    img = truth.render(e) + rng.normal(0, 1.0, (24, 24))
    e = Exposure(img, uncertainty=np.ones_like(img), wcs=e.wcs, psf=PSF, band="g")
    post = sample_scene(truth, [e], nlive=60, rng=1, progress=False, background=None)
    summary = post.summary()
    row = summary[list(summary["name"]).index("flux_g_0")]
    fit_err = post.fit.fit_info["param_std"]["flux_g_0"]
    assert row["std"] == pytest.approx(fit_err, rel=0.35)
    assert abs(row["median"] - post.fit.flux_g_0.value) < 0.5 * fit_err
    assert post.samples.shape[1] == 3 and np.isfinite(post.logz)
    assert post.catalog["flux_g"][0] == pytest.approx(row["median"])



@pytest.mark.filterwarnings("ignore:The sampling was stopped short")
def test_sample_scene_theta_prior_spans_each_orientation_once():
    """A nearly round galaxy: its fitted theta error is large (2.7 rad here), and the
    default prior +- 8 sigma had spanned 14 periods of pi (theta + pi is the same profile),
    giving a meaningless theta median; with fit=False and no prior, theta's infinite
    bounds were refused.  The default is at most +- pi/2 around the optimum (the start)."""
    pytest.importorskip("dynesty")
    rng = np.random.default_rng(4)
    truth = SceneModel([SersicSource(RA, DEC, {"g": 300.0}, r_eff=0.8, n=1.5, ellip=0.0,
                                     theta=0.0)])
    e = make_exposure((32, 32), "g", noise=1.0)
    img = truth.render(e) + rng.normal(0, 1.0, (32, 32))
    e = Exposure(img, uncertainty=np.ones_like(img), wcs=e.wcs, psf=PSF, band="g")
    fitted, _ = fit_scene(truth, [e], background=None, progress=False)
    assert not fitted.fit_info["param_std"]["theta_0"] < math.pi / 16   # 8 sigma > pi/2
    others = {"flux_g_0": (100.0, 600.0), "r_eff_0": (0.3, 3.0)}
    for fit, centre, priors in ((fitted, fitted.theta_0.value, None), (False, 0.0, others)):
        post = sample_scene(truth, [e], fit=fit, priors=priors, nlive=50, rng=1,
                            progress=False, background=None, maxcall=1500)
        # every point drawn (the first ones from the whole prior)
        theta = post.weighted_samples[:, post.param_names.index("theta_0")]
        assert theta.min() >= centre - math.pi / 2 and theta.max() <= centre + math.pi / 2
        assert theta.max() - theta.min() > 2.5          # the prior is the whole pi

def test_gwcs_exposure_renders_like_the_equivalent_fits_wcs():
    """A gwcs (as JWST products carry) and the same TAN projection as a FITS WCS agree."""
    gwcs = pytest.importorskip("gwcs")
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf

    shape = (50, 52)
    fits_wcs = make_wcs(shape, scale=0.2, rot=0.4)
    crpix = fits_wcs.wcs.crpix
    cd = fits_wcs.wcs.cd
    transform = ((models.Shift(-(crpix[0] - 1)) & models.Shift(-(crpix[1] - 1)))
                 | models.AffineTransformation2D(matrix=cd, translation=[0, 0])
                 | models.Pix2Sky_TAN()
                 | models.RotateNative2Celestial(RA, DEC, 180.0))
    detector = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="icrs", unit=(u.deg, u.deg))
    g = gwcs.wcs.WCS([(detector, transform), (sky, None)])
    assert np.allclose(g.world_to_pixel_values(RA + 1e-4, DEC - 2e-4),
                       fits_wcs.world_to_pixel_values(RA + 1e-4, DEC - 2e-4), atol=1e-6)
    scene = SceneModel([SersicSource(RA + 0.5 / 3600, DEC, {"r": 100.0}, r_eff=0.8, n=2.5,
                                     ellip=0.2, theta=1.0)])
    a = scene.render(Exposure(np.zeros(shape), uncertainty=np.ones(shape), wcs=fits_wcs,
                              psf=PSF, band="r"))
    b = scene.render(Exposure(np.zeros(shape), uncertainty=np.ones(shape), wcs=g, psf=PSF,
                              band="r"))
    assert np.max(np.abs(a - b)) < 1e-6 * a.max()



def test_gwcs_bounding_box_does_not_hide_sources_at_the_edge():
    """A gwcs with a bounding box (the detector, as JWST products have) gives NaN pixel
    positions outside it.  A source 2 px inside the edge (its central differences reach
    0.5 arcsec = 2.5 px out) and a neighbour 4 px outside it (its light reaches the image)
    had stopped the render with "the WCS gives no pixel position"; both render as with the
    same projection as a FITS WCS, which has no bounding box."""
    gwcs = pytest.importorskip("gwcs")
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf

    shape = (50, 52)
    fits_wcs = make_wcs(shape, scale=0.2, rot=0.4)
    crpix = fits_wcs.wcs.crpix
    transform = ((models.Shift(-(crpix[0] - 1)) & models.Shift(-(crpix[1] - 1)))
                 | models.AffineTransformation2D(matrix=fits_wcs.wcs.cd, translation=[0, 0])
                 | models.Pix2Sky_TAN()
                 | models.RotateNative2Celestial(RA, DEC, 180.0))
    detector = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="icrs", unit=(u.deg, u.deg))
    g = gwcs.wcs.WCS([(detector, transform), (sky, None)])
    g.bounding_box = ((-0.5, shape[1] - 0.5), (-0.5, shape[0] - 0.5))
    (ra_in, ra_out), (dec_in, dec_out) = fits_wcs.pixel_to_world_values([49.0, 55.0],
                                                                       [25.0, 20.0])
    # gwcs >= 0.22 cuts at the bounding box in world_to_pixel_values (0.21 does not)
    scene = SceneModel([SersicSource(ra_in, dec_in, {"r": 100.0}, r_eff=0.8, n=2.5,
                                     ellip=0.2, theta=1.0),
                        SersicSource(ra_out, dec_out, {"r": 300.0}, r_eff=1.0, n=1.0)])
    a = scene.render(Exposure(np.zeros(shape), uncertainty=np.ones(shape), wcs=fits_wcs,
                              psf=PSF, band="r"))
    b = scene.render(Exposure(np.zeros(shape), uncertainty=np.ones(shape), wcs=g, psf=PSF,
                              band="r"))
    assert a[20, 51] > 0.05 * a.max()            # the outside neighbour's light is there
    assert np.max(np.abs(a - b)) < 1e-6 * a.max()

def _field_with_a_star_off_r(case, rng):
    """A galaxy and a star 12 arcsec east of it (60 px), g and r fluxes; a wide g image
    covers both.  ``case``: "no r exposure"; "off r" (the r image covers the galaxy
    only); "masked in r" (the r image covers both, the star's pixels masked)."""
    truth = SceneModel([SersicSource(RA, DEC, {"g": 200.0, "r": 300.0}, r_eff=0.9, n=1.5,
                                     ellip=0.3, theta=0.4, name="gal"),
                        StarSource(RA + 12 / 3600, DEC, {"g": 60.0, "r": 80.0}, name="star")],
                       zeropoint=22.5)
    specs = [((48, 160), "g", None)]
    if case == "off r":
        specs.append(((48, 48), "r", None))
    elif case == "masked in r":
        mask = np.zeros((48, 160), dtype=bool)
        mask[:, :46] = True                     # the star is at x ~ 19: 10 px box masked
        specs.append(((48, 160), "r", mask))
    exps = []
    for shape, band, mask in specs:
        e = make_exposure(shape, band, zeropoint=22.5, name=band)
        img = truth.render(e) + rng.normal(0, 0.2, shape)
        exps.append(Exposure(img, uncertainty=np.full(shape, 0.2), mask=mask, wcs=e.wcs,
                             psf=PSF, band=band, zeropoint=22.5, name=band))
    return truth, exps


@pytest.mark.parametrize("case, held", [("no r exposure", ["flux_r_0", "flux_r_1"]),
                                        ("off r", ["flux_r_1"]),
                                        ("masked in r", ["flux_r_1"])])
def test_flux_no_exposure_constrains_is_held_with_nan_error(case, held):
    """A flux with no pixel of its band: held at its start with a warning, NaN error and
    left out of the dof.  It had stayed free with an error of ~1e-14 (or NaN) from the
    near-singular Hessian and counted in the degrees of freedom."""
    rng = np.random.default_rng(21)
    truth, exps = _field_with_a_star_off_r(case, rng)
    start = truth.copy()
    start.flux_r_1 = 50.0
    with pytest.warns(SceneWarning, match=r"no exposure constrains \[" +
                      ", ".join(f"'{n}'" for n in held) + r"\]"):
        fitted, cat = fit_scene(start, exps, progress=False)
    info = fitted.fit_info
    assert info["unconstrained"] == held
    assert not set(held) & set(info["free_parameters"])
    n_free = len(truth.param_names) - len(held)
    npix = sum(int((e.weight > 0).sum()) for e in exps)
    assert len(info["free_parameters"]) == n_free
    assert info["dof"] == npix - n_free - len(exps)            # one background per image
    assert np.isclose(info["exposures"]["dof"].sum(), npix - n_free - len(exps))
    # held at the start, reported with NaN errors (not a number from a singular Hessian)
    assert fitted.flux_r_1.value == 50.0 and math.isnan(cat["flux_err_r"][1])
    assert all(math.isnan(cat["flux_err_r"][i]) for i in range(2) if f"flux_r_{i}" in held)
    assert not fitted.flux_r_1.fixed                           # the caller's constraints
    # the constrained parameters are the injected ones, with finite errors
    for name in info["free_parameters"]:
        err = info["param_std"][name]
        assert np.isfinite(err) and err > 0, name
        assert abs(getattr(fitted, name).value - getattr(truth, name).value) < 4 * err, name


def test_source_fully_masked_everywhere_is_held():
    """A star on masked pixels only, in every exposure: all its free parameters held."""
    rng = np.random.default_rng(4)
    truth, exps = _field_with_a_star_off_r("masked in r", rng)
    exps = [Exposure(e.data, uncertainty=np.full(e.data.shape, 0.2),
                     mask=np.broadcast_to(np.arange(e.data.shape[1]) < 46, e.data.shape),
                     wcs=e.wcs, psf=PSF, band=e.band, zeropoint=22.5, name=e.name) for e in exps]
    with pytest.warns(SceneWarning, match="no exposure constrains"):
        fitted, cat = fit_scene(truth, exps, progress=False)
    assert fitted.fit_info["unconstrained"] == ["flux_g_1", "flux_r_1", "ra_1", "dec_1"]
    assert np.isnan([cat["flux_err_g"][1], cat["flux_err_r"][1], cat["ra_err"][1],
                     cat["dec_err"][1]]).all()
    assert np.isfinite([cat["flux_err_g"][0], cat["flux_err_r"][0], cat["n_err"][0]]).all()


def test_scene_zeropoint_needs_exposure_zeropoints():
    """A scene in nanomaggies and one exposure without a zero point: InputError naming it.
    The exposure had been taken in data units (flux_scale 1.0): 10 nmgy injected at zero
    point 25 came out as 10.47 +- 0.04, with no warning."""
    rng = np.random.default_rng(0)
    truth = SceneModel([StarSource(RA, DEC, {"r": 10.0})], zeropoint=22.5)
    exps = []
    for k, zp in enumerate([25.0, 25.0, None]):
        blank = make_exposure((40, 40), "r", zeropoint=25.0, noise=0.1)
        img = truth.render(blank) + rng.normal(0, 0.1, (40, 40))
        exps.append(Exposure(img, uncertainty=np.full((40, 40), 0.1), wcs=blank.wcs, psf=PSF,
                             band="r", zeropoint=zp, name=f"r{k}"))
    for call in (lambda: fit_scene(truth, exps, progress=False),
                 lambda: truth.chi2(exps), lambda: truth.render(exps[2])):
        with pytest.raises(InputError, match="exposure 'r2' has no zero point.*zeropoint 22.5"):
            call()
    # with its zero point the injected flux comes back
    exps[2] = Exposure(exps[2].data, uncertainty=np.full((40, 40), 0.1), wcs=exps[2].wcs,
                       psf=PSF, band="r", zeropoint=25.0, name="r2")
    fitted, cat = fit_scene(truth, exps, progress=False)
    assert abs(cat["flux_r"][0] - 10.0) < 4 * cat["flux_err_r"][0]
    # a scene in data units needs no zero point
    SceneModel([StarSource(RA, DEC, {"r": 10.0})]).render(make_exposure((20, 20), "r"))


def test_known_backgrounds_as_an_array_and_exposures_as_a_generator():
    """Backgrounds as a NumPy array (documented "float or sequence") had raised numpy's
    "truth value of an array is ambiguous"; a generator of exposures had been taken for
    one exposure ("exposure '?' has band None")."""
    rng = np.random.default_rng(6)
    truth = truth_scene()
    injected = np.array([3.0, -2.0, 1.0])
    exps = noisy_exposures(truth, rng, background=injected)
    chi2_list = truth.chi2(exps, gradient=False, background=list(injected))
    assert truth.chi2(exps, gradient=False, background=injected) == chi2_list
    obj = SceneObjective(truth, exps, background=injected)
    obj(truth.parameters)
    np.testing.assert_array_equal(obj.backgrounds, injected)
    # at the truth with the injected backgrounds, chi2 is the noise: ~ npix
    npix = sum(e.data.size for e in exps)
    assert abs(chi2_list - npix) < 5 * math.sqrt(2 * npix)
    fitted, cat = fit_scene(truth, (e for e in exps), background=injected, progress=False)
    ref, ref_cat = fit_scene(truth, exps, background=list(injected), progress=False)
    np.testing.assert_allclose(fitted.parameters, ref.parameters, rtol=1e-12)
    np.testing.assert_array_equal(fitted.fit_info["exposures"]["background"], injected)
    assert len(fitted.fit_info["exposures"]) == 3
    for name in ("flux_g_0", "flux_r_0", "flux_g_1"):
        err = fitted.fit_info["param_std"][name]
        assert abs(getattr(fitted, name).value - getattr(truth, name).value) < 4 * err


@pytest.mark.parametrize("kwargs, message", [
    ({"max_shift": -1.0}, "max_shift must be a finite number >= 0"),
    ({"max_shift": "1"}, "max_shift must be a number >= 0"),
    ({"max_shift": np.nan}, "max_shift must be a finite number >= 0"),
    ({"relinearize": "0.2"}, "relinearize must be a number >= 0"),
    ({"relinearize": -0.1}, "relinearize must be a finite number >= 0"),
    ({"maxiter": 0}, "maxiter must be an integer >= 1"),
    ({"background": "none"}, "background must be 'fit', None or a number, got 'none'"),
    ({"background": [1.0, np.inf, 0.0]}, r"background\[1\] must be finite"),
    ({"background": np.zeros(2)}, "2 backgrounds for 3 exposures"),
    ({"dtype": np.float16}, "dtype must be numpy.float32 or numpy.float64"),
    ({"dtype": "complex128"}, "dtype must be numpy.float32 or numpy.float64"),
])
def test_bad_fit_scene_arguments_are_input_errors(kwargs, message):
    """Each had given a bare ValueError, TypeError or NotImplementedError (relinearize only
    after the whole fit had run)."""
    exps = noisy_exposures(truth_scene(), np.random.default_rng(1))
    with pytest.raises(InputError, match=message):
        fit_scene(truth_scene(), exps, progress=False, **kwargs)


def star_off_its_catalog_position(seed):
    """A star (flux 300) in a noisy g exposure, and a start 0.5 arcsec north of it."""
    rng = np.random.default_rng(seed)
    truth = SceneModel([StarSource(RA, DEC, {"g": 300.0})])
    e = make_exposure((24, 24), "g")
    img = truth.render(e) + rng.normal(0, 1.0, (24, 24))
    e = Exposure(img, uncertainty=np.ones_like(img), wcs=e.wcs, psf=PSF, band="g")
    start = truth.copy()
    start.dec_0 = DEC + 0.5 / 3600
    return e, start


def test_max_shift_accepts_a_quantity_and_zero():
    from astropy import units as u

    e, start = star_off_its_catalog_position(7)
    fitted, _ = fit_scene(start, [e], max_shift=200 * u.mas, progress=False)
    assert abs(fitted.dec_0.value - start.dec_0.value) * 3600 == pytest.approx(0.2, abs=1e-6)
    fixed, _ = fit_scene(start, [e], max_shift=0, progress=False)
    assert fixed.dec_0.value == pytest.approx(start.dec_0.value, abs=1e-12)


def test_sample_scene_takes_a_given_fit(monkeypatch):
    """fit=<fit_scene's result>: the same posterior as sample_scene's own fit, without
    fitting again (``fit-scene --sample`` had fitted twice); a scene that is not such a
    result is refused."""
    pytest.importorskip("dynesty")
    import astromix.fitting.scene as fs

    e, start = star_off_its_catalog_position(3)
    kw = dict(max_shift=0.2, nlive=30, rng=4, progress=False, background=None, maxcall=3000)
    own = sample_scene(start, [e], **kw)
    fitted, _ = fit_scene(start, [e], max_shift=0.2, progress=False, background=None)
    calls = []
    monkeypatch.setattr(fs, "fit_scene", lambda *a, **k: calls.append(a))
    given = sample_scene(start, [e], fit=fitted, **kw)
    assert calls == []
    assert given.fit is fitted
    np.testing.assert_allclose(given.samples, own.samples, rtol=1e-9, atol=0)
    assert given.logz == pytest.approx(own.logz, rel=1e-9)
    with pytest.raises(InputError, match="SceneModel returned by fit_scene"):
        sample_scene(start, [e], fit=start.copy(), **kw)
    other = SceneModel([StarSource(RA, DEC, {"g": 80.0}), StarSource(RA, DEC, {"g": 8.0})])
    other.fit_info = fitted.fit_info
    with pytest.raises(InputError, match="parameters are not the scene's"):
        sample_scene(start, [e], fit=other, **kw)
    with pytest.raises(InputError, match="dec_0 .* lies outside max_shift = 0.05 arcsec"):
        sample_scene(start, [e], fit=fitted, **dict(kw, max_shift=0.05))


def test_sample_scene_honours_max_shift():
    """The positions' bounds of max_shift hold in the sampling: a star whose catalog
    position is 0.5 arcsec off, max_shift 0.2 arcsec.  sample_scene had no max_shift (its
    fit used 1 arcsec, and so did ``astromix fit-scene --sample --max-shift``)."""
    pytest.importorskip("dynesty")
    e, start = star_off_its_catalog_position(3)
    i = start.param_names.index("dec_0")
    for fit, priors in ((True, None),
                        (False, {"flux_g_0": (100.0, 500.0), "ra_0": (RA - 2 / 3600, RA + 2 / 3600),
                                 "dec_0": (DEC - 2 / 3600, DEC + 2 / 3600)})):
        post = sample_scene(start, [e], fit=fit, priors=priors, max_shift=0.2, nlive=40, rng=2,
                            progress=False, background=None, maxcall=4000)
        shift = (post.samples[:, i] - start.dec_0.value) * 3600        # arcsec
        assert shift.min() >= -0.2 - 1e-9 and shift.max() <= 0.2 + 1e-9
        assert shift.min() < -0.15              # the likelihood pushes to the bound


def test_errors_of_a_fit_stopped_on_the_fourth_order_threshold_match_the_fisher_matrix():
    """AccuracySettings.fourth_order_threshold switches the fourth-order pixel-integration
    factor off for Gaussians whose correction ``3 (F_xx^2 + F_yy^2) / 2880`` is below it: a
    small jump in the model where a component's size crosses it as r_eff, n, ellip, theta
    change.  A fit that stopped right there had its error Hessian (central differences of
    the gradient, 1e-3 sigma steps) straddle the jump: errors 20-35% off here, 2.5x or NaN in
    a GalSim set-up.  The threshold is put through the optimum (the fit starts there, as
    L-BFGS-B can stop there); the errors must be those of the Fisher matrix of the model's
    pixels (numerical derivatives of the rendered images, background fitted too)."""
    from astromix import AccuracySettings
    smooth = AccuracySettings(fourth_order_threshold=0.0)
    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 1.44])
    blank = make_exposure((32, 32), None, psf=psf, scale=0.25)
    truth = SceneModel([SersicSource(RA, DEC, 2000.0, r_eff=0.6, n=1.0, ellip=0.2, theta=0.4)],
                       settings=smooth)
    clean = truth.render(blank)
    for seed in range(1, 6):
        img = clean + np.random.default_rng(seed).normal(0.0, 1.0, clean.shape)
        e = Exposure(img, uncertainty=np.ones(img.shape), wcs=blank.wcs, psf=psf)
        best, _ = fit_scene(truth, [e], progress=False)
        # the threshold at the size of the component with the largest fourth-order
        # correction at the best fit (documented formula; F = (C + I/12)^-1)
        mix = best.mixture(e)
        f = np.linalg.inv(mix.cov + np.eye(2) / 12.0)
        size = 3.0 * (f[:, 0, 0] ** 2 + f[:, 1, 1] ** 2) / 2880.0
        k = int(np.argmax(mix.amp * size * np.sqrt(np.linalg.det(f))))
        kinked = AccuracySettings(fourth_order_threshold=float(size[k]) * (1.0 - 1e-9))
        fitted, _ = fit_scene(SceneModel(best.sources, settings=kinked), [e], progress=False)
        # Fisher matrix: derivatives of the rendered image by central differences
        p0 = best.parameters.copy()
        cols = []
        for j, name in enumerate(best.param_names):
            h = 1e-7 if name in ("ra_0", "dec_0") else 1e-4 * max(abs(p0[j]), 1e-2)
            probe = best.copy()
            probe.parameters = p0 + h * np.eye(p0.size)[j]
            up = probe.render(blank)
            probe.parameters = p0 - h * np.eye(p0.size)[j]
            cols.append(((up - probe.render(blank)) / (2 * h)).ravel())
        jac = np.column_stack(cols + [np.ones(img.size)])           # + the background
        fisher_std = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))[:-1]
        got = np.array([fitted.fit_info["param_std"][n] for n in best.param_names])
        np.testing.assert_allclose(got, fisher_std, rtol=0.1, err_msg=f"seed {seed}")


def test_relinearize_keeps_a_source_that_moved_past_the_margin():
    """A bright star just off the image's edge (its wings on it), started 2.5 px nearer:
    the fit moves it, within max_shift, more than 10 px off the image, where placements
    drop a star.  fit_scene's second fit (relinearize) had then raised InputError
    "source(s) ['bright'] lie on no exposure", losing the whole fit.  The fit must succeed
    and find the injected values."""
    psf = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [0.0, 0.0]], [np.eye(2) * 2.0,
                                                                 np.eye(2) * 36.0])
    e = make_exposure((40, 40), "r", psf=psf, scale=0.25)
    star_at = (-11.5, 21.3)                                  # pixel position, 1.5 px too far
    ra_s, dec_s = (float(v) for v in e.wcs.pixel_to_world_values(*star_at))
    truth = SceneModel([SersicSource(RA, DEC, {"r": 3000.0}, r_eff=1.0, n=1.0, ellip=0.3,
                                     theta=0.5, name="gal"),
                        StarSource(ra_s, dec_s, {"r": 3e4}, name="bright")])
    # the truth drawn in a wider image (the star on it), cut to the exposure
    wide = make_exposure((40, 60), "r", psf=psf, scale=0.25)
    wide.wcs.wcs.crpix = [e.wcs.wcs.crpix[0] + 20, e.wcs.wcs.crpix[1]]
    img = truth.render(wide)[:, 20:] + np.random.default_rng(3).normal(0.0, 1.0, (40, 40))
    e = Exposure(img, uncertainty=np.ones(img.shape), wcs=e.wcs, psf=psf, band="r")
    start = truth.copy()
    start.ra_1, start.dec_1 = (float(v) for v in e.wcs.pixel_to_world_values(-9.0, 21.3))
    start.flux_r_0 = 2700.0
    first, _ = fit_scene(start, [e], progress=False, relinearize=None)
    x_first = float(e.wcs.world_to_pixel_values(first.ra_1.value, first.dec_1.value)[0])
    assert x_first < -10.0                        # the case: moved past the placement margin
    fitted, cat = fit_scene(start, [e], progress=False)
    assert list(cat["id"]) == ["gal", "bright"]
    std = fitted.fit_info["param_std"]
    for name in truth.param_names:
        assert abs(getattr(fitted, name).value - getattr(truth, name).value) < 4 * std[name], name
    assert fitted.fit_info["chi2"] / fitted.fit_info["dof"] == pytest.approx(1.0, abs=0.1)


def test_hessian_not_positive_definite_gives_nan_errors_and_warns(monkeypatch):
    """Where the error Hessian is not positive definite, fit_scene warns and gives NaN
    errors along those parameters (their inverse had been reported as errors); the others
    are the errors with those held: as in a fit with them fixed."""
    from astromix.fitting import lsq
    rng = np.random.default_rng(11)
    truth = truth_scene()
    exps = noisy_exposures(truth, rng)
    held = truth.copy()
    held.dec_1.fixed = True
    ref, _ = fit_scene(held, exps, progress=False)
    real = lsq._error_hessian
    i = truth.param_names.index("dec_1")

    def flipped(*args, **kwargs):
        hess = real(*args, **kwargs)
        hess[i, i] = -hess[i, i]
        return hess

    monkeypatch.setattr(lsq, "_error_hessian", flipped)
    with pytest.warns(SceneWarning, match=r"not positive definite along \['dec_1'\]"):
        fitted, cat = fit_scene(truth, exps, progress=False)
    std = fitted.fit_info["param_std"]
    assert np.isnan(std["dec_1"]) and np.isnan(cat["dec_err"][1])
    for name in ref.fit_info["free_parameters"]:
        assert std[name] == pytest.approx(ref.fit_info["param_std"][name], rel=0.02), name
