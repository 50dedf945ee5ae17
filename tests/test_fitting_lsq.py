"""MixtureLSQFitter against injected truths, astropy's own fitter, and honest errors."""

import numpy as np
import pytest
from astropy.modeling import fitting, models

from astromix import GaussianMixture, GaussianMixturePSF, InputError
from astromix.fitting import MixtureLSQFitter

SHAPE = (31, 33)


def psf_model(**kw):
    mix = GaussianMixture([0.75, 0.25], [[0.0, 0.0], [0.2, -0.1]],
                          [[[1.5, 0.2], [0.2, 1.1]], np.eye(2) * 8.0])
    return GaussianMixturePSF(mix, **kw)


def simulate(rng, flux=800.0, x0=16.4, y0=14.7, sky=3.0, sigma=0.8):
    y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
    truth = psf_model(flux=flux, x_0=x0, y_0=y0)
    return x, y, truth(x, y) + sky + rng.normal(0, sigma, SHAPE)


def test_recovers_injected_parameters_and_matches_astropy():
    rng = np.random.default_rng(1)
    x, y, data = simulate(rng)
    start = psf_model(flux=500.0, x_0=16.0, y_0=15.0) + models.Const2D(0.0)
    w = np.full(SHAPE, 1 / 0.8)
    fit = MixtureLSQFitter()(start, x, y, data, weights=w)
    info = fit.fit_info
    assert info["jacobian"] == "partial" and info["success"]
    std = info["param_std"]
    assert abs(fit.flux_0.value - 800.0) < 4 * std["flux_0"]
    assert abs(fit.x_0_0.value - 16.4) < 4 * std["x_0_0"]
    assert abs(fit.amplitude_1.value - 3.0) < 4 * std["amplitude_1"]
    assert info["chi2"] / info["dof"] == pytest.approx(1.0, abs=0.15)
    ref = fitting.TRFLSQFitter()(start, x, y, data, weights=w)
    np.testing.assert_allclose(fit.parameters, ref.parameters, rtol=1e-5, atol=1e-6)


def test_uncertainties_are_honest():
    """The quoted flux error matches the scatter over noise realisations (fixed seeds)."""
    fluxes, errors = [], []
    fitter = MixtureLSQFitter()
    for seed in range(40):
        x, y, data = simulate(np.random.default_rng(100 + seed), sky=0.0)
        fit = fitter(psf_model(flux=700.0, x_0=16.0, y_0=15.0), x, y, data,
                     weights=np.full(SHAPE, 1 / 0.8))
        fluxes.append(fit.flux.value)
        errors.append(fit.fit_info["param_std"]["flux"])
    pulls = (np.array(fluxes) - 800.0) / np.array(errors)
    assert abs(pulls.mean()) < 0.5
    assert 0.7 < pulls.std() < 1.3


def test_free_shape_parameters_analytic_jacobian():
    rng = np.random.default_rng(2)
    x, y, data = simulate(rng, sky=0.0, sigma=0.3)
    start = psf_model(flux=800.0, x_0=16.4, y_0=14.7)
    start.sigma_x_1.value = 2.0
    start.sigma_x_1.fixed = False
    start.rho_0.fixed = False
    fit = MixtureLSQFitter()(start, x, y, data)
    assert fit.fit_info["jacobian"] == "backend kernel"   # whole-pixel grid: the LM route
    std = fit.fit_info["param_std"]
    assert abs(fit.sigma_x_1.value - np.sqrt(8.0)) < 4 * std["sigma_x_1"]
    assert abs(fit.rho_0.value - 0.2 / np.sqrt(1.5 * 1.1)) < 4 * std["rho_0"]
    assert std["sigma_x_1"] < 0.1
    # a masked pixel takes the per-point TRF route with fit_deriv: the same optimum
    weights = np.ones_like(data)
    weights[0, 0] = 0.0
    trf = MixtureLSQFitter()(start, x, y, data, weights=weights)
    assert trf.fit_info["jacobian"] == "analytic"
    for name in ("flux", "x_0", "y_0", "sigma_x_1", "rho_0"):
        assert getattr(trf, name).value == pytest.approx(getattr(fit, name).value,
                                                         abs=0.05 * std[name]), name


def test_fixed_tied_and_bounds():
    rng = np.random.default_rng(3)
    x, y, data = simulate(rng, sky=0.0, x0=16.0, y0=15.0)
    start = psf_model(flux=800.0, x_0=16.3, y_0=15.3)
    start.x_0.fixed = True
    start.y_0.tied = lambda m: m.x_0 - 1.0
    start.flux.bounds = (0.0, 500.0)
    fit = MixtureLSQFitter()(start, x, y, data)
    assert fit.x_0.value == 16.3
    assert fit.y_0.value == pytest.approx(15.3)
    assert fit.flux.value <= 500.0 + 1e-9
    assert fit.fit_info["free_parameters"] == ["flux"]


def test_other_compound_falls_back_to_finite_differences():
    rng = np.random.default_rng(4)
    x, y, data = simulate(rng, sky=0.0)
    model = psf_model(flux=600.0, x_0=16.2, y_0=14.9) * models.Const2D(1.0)
    model.amplitude_1.fixed = True
    fit = MixtureLSQFitter()(model, x, y, data)
    assert fit.fit_info["jacobian"] == "2-point"
    assert fit.flux_0.value == pytest.approx(800.0, rel=0.02)


def test_masked_points_and_bad_input():
    rng = np.random.default_rng(5)
    x, y, data = simulate(rng, sky=0.0)
    data = data.copy()
    w = np.ones(SHAPE)
    data[3, 4] = np.nan
    w[3, 4] = 0
    fit = MixtureLSQFitter()(psf_model(flux=700.0, x_0=16.0, y_0=15.0), x, y, data, weights=w)
    assert np.isfinite(fit.flux.value)
    with pytest.raises(InputError, match="non-finite"):
        MixtureLSQFitter()(psf_model(), x, y, data)
    with pytest.raises(InputError, match="one shape"):
        MixtureLSQFitter()(psf_model(), x, y[:-1], data)
    frozen = psf_model()
    for name in ("flux", "x_0", "y_0"):
        getattr(frozen, name).fixed = True
    with pytest.raises(InputError, match="no free parameter"):
        MixtureLSQFitter()(frozen, x, y, np.nan_to_num(data))


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_weights_are_refused(value):
    # an inf weight is a fully trusted point and a NaN one hides bad data: neither may be
    # dropped silently (DynestyFitter refuses them alike)
    rng = np.random.default_rng(5)
    x, y, data = simulate(rng, sky=0.0)
    w = np.ones(SHAPE)
    w[7, 9] = value
    with pytest.raises(InputError, match="finite and >= 0"):
        MixtureLSQFitter()(psf_model(flux=700.0, x_0=16.0, y_0=15.0), x, y, data, weights=w)


@pytest.mark.parametrize("layout", ["grid", "other"])
def test_normal_equations(layout):
    """J^T J and J^T r of the Levenberg-Marquardt steps against NumPy's products.

    "grid": J the transpose of a C-contiguous (P, N) array, as the grid fit gives
    (the compiled sums with Numba); "other": a C-contiguous (N, P) J (NumPy's ``@``).
    """
    from astromix.fitting.lsq import _normal_equations

    rng = np.random.default_rng(3)
    at = rng.normal(size=(7, 4099)) * np.logspace(-3, 3, 7)[:, None]
    r = rng.normal(size=4099)
    jac = at.T if layout == "grid" else np.ascontiguousarray(at.T)
    a, g = _normal_equations(jac, r)
    want_a = np.einsum("im,jm->ij", at, at)
    np.testing.assert_allclose(a, want_a, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(a, a.T)
    np.testing.assert_allclose(g, np.einsum("im,m->i", at, r), rtol=1e-12,
                               atol=1e-13 * np.abs(at).max() * np.abs(r).max() * 64)


# -- angles, units, tied parameters, col_fit_deriv=False parts, validation, uncertainties --
def sersic_stamp():
    from astromix import SersicMixture

    y, x = np.mgrid[:40, :40]
    psf = psf_model()
    truth = SersicMixture(800.0, 19.4, 20.2, 4.0, 2.2, 0.35, 0.6, psf=psf)
    data = truth(x, y) + np.random.default_rng(7).normal(0, 0.3, x.shape)
    return x, y, data, psf


@pytest.mark.parametrize("layout", ["grid", "flat"])
def test_theta_in_degrees_is_fitted_as_an_angle(layout):
    """theta given in degrees: the same fit as in radians, the injected angle, the unit kept."""
    from astropy import units as u

    from astromix import SersicMixture

    x, y, data, psf = sersic_stamp()
    if layout == "flat":                   # the per-point route (analytic fit_deriv)
        x, y, data = x.ravel(), y.ravel(), data.ravel()
    fits = {}
    for label, theta in (("rad", np.radians(20.0)), ("deg", 20.0 * u.deg)):
        start = SersicMixture(600.0, 19.0, 20.0, 3.0, 1.5, 0.2, theta, psf=psf)
        fits[label] = MixtureLSQFitter()(start, x, y, data, weights=1 / 0.3)
    rad, deg = fits["rad"], fits["deg"]
    assert deg.fit_info["jacobian"] == ("backend kernel" if layout == "grid" else "analytic")
    assert deg.theta.unit == u.deg
    std = deg.fit_info["param_std"]["theta"]            # in radians, the unit of the fit
    assert abs(deg.theta.quantity.to_value(u.rad) - 0.6) < 4 * std
    assert deg.theta.quantity.to_value(u.rad) == pytest.approx(rad.theta.value, abs=1e-6)
    assert deg.fit_info["chi2"] == pytest.approx(rad.fit_info["chi2"], rel=1e-9)


def test_moffat_theta_in_degrees():
    from astropy import units as u

    from astromix.models.moffat import MoffatStar

    y, x = np.mgrid[:40, :40]
    truth = MoffatStar(900.0, 19.6, 20.1, 6.0, 3.2, 0.3, 0.6)
    data = truth(x, y) + np.random.default_rng(8).normal(0, 0.3, x.shape)
    start = MoffatStar(700.0, 19.5, 20.0, 5.0, 3.0, 0.2, 20.0 * u.deg)
    start.ellip.fixed = start.theta.fixed = False
    fit = MixtureLSQFitter()(start, x, y, data, weights=1 / 0.3)
    assert fit.theta.unit == u.deg
    std = fit.fit_info["param_std"]["theta"]
    assert abs(fit.theta.quantity.to_value(u.rad) - 0.6) < 4 * std
    assert std < 0.02


def test_data_units_are_converted():
    """Data in mJy, a model in Jy: the flux of the injected star, as astropy's fitter gives."""
    from astropy import units as u

    y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
    rng = np.random.default_rng(5)
    data = (psf_model(flux=300.0, x_0=15.3, y_0=14.7)(x, y)
            + rng.normal(0, 0.5, SHAPE)) * u.mJy                    # a 300 mJy star
    start = psf_model(flux=0.25 * u.Jy, x_0=15.0, y_0=15.0)
    fit = MixtureLSQFitter()(start, x, y, data, weights=2.0 / u.mJy)
    std = fit.fit_info["param_std"]["flux"]                          # in the data's unit
    assert fit.flux.unit == u.mJy
    assert abs(fit.flux.quantity.to_value(u.Jy) - 0.3) < 4 * std / 1000
    ref = fitting.TRFLSQFitter()(start, x, y, data, weights=2.0)
    assert ref.flux.unit == u.mJy
    assert fit.flux.value == pytest.approx(ref.flux.value, rel=1e-6)
    # a model without units takes the data's
    bare = MixtureLSQFitter()(psf_model(flux=250.0, x_0=15.0, y_0=15.0), x, y, data)
    assert bare.flux.unit == u.mJy and bare.flux.value == pytest.approx(fit.flux.value, rel=1e-6)
    # bounds given in the model's unit (Jy) apply to the flux, converted with it
    bounded = start.copy()
    bounded.flux.bounds = (0.0, 0.5)
    fit = MixtureLSQFitter()(bounded, x, y, data, weights=2.0)
    assert fit.flux.bounds == pytest.approx((0.0, 500.0))
    assert fit.flux.value == pytest.approx(ref.flux.value, rel=1e-6)
    with pytest.raises(InputError, match="units"):
        MixtureLSQFitter()(psf_model(flux=0.25 * u.m), x, y, data)


def test_tied_flux_is_chained_into_the_jacobian():
    """flux_1 tied to flux_0: the least-squares common flux (linear, solved directly)."""
    y, x = np.mgrid[:40, :48]
    sigma = 0.5
    rng = np.random.default_rng(0)
    data = (psf_model(flux=200.0, x_0=15.3, y_0=16.7) + psf_model(flux=400.0, x_0=30.2, y_0=21.4))(
        x, y) + rng.normal(0, sigma, x.shape)
    model = psf_model(flux=150.0, x_0=15.3, y_0=16.7) + psf_model(flux=150.0, x_0=30.2, y_0=21.4)
    model.flux_1.tied = lambda m: m.flux_0
    for name in ("x_0_0", "y_0_0", "x_0_1", "y_0_1"):
        getattr(model, name).fixed = True
    fit = MixtureLSQFitter()(model, x, y, data, weights=1 / sigma)
    # the model is flux_0 * (P0 + P1): the weighted linear least squares solution
    unit = (psf_model(flux=1.0, x_0=15.3, y_0=16.7) + psf_model(flux=1.0, x_0=30.2, y_0=21.4))(
        x, y)
    best = float(np.sum(unit * data) / np.sum(unit * unit))
    assert fit.fit_info["success"] and fit.fit_info["jacobian"] == "analytic"
    assert fit.flux_0.value == pytest.approx(best, rel=1e-6)
    assert fit.flux_1.value == fit.flux_0.value
    # and its error: sigma / sqrt(sum unit^2)
    assert fit.fit_info["param_std"]["flux_0"] == pytest.approx(
        sigma / np.sqrt(np.sum(unit * unit)), rel=1e-4)
    # positions free too: the chi2 is no worse than at the linear optimum with the true positions
    for name in ("x_0_0", "y_0_0", "x_0_1", "y_0_1"):
        getattr(model, name).fixed = False
    free = MixtureLSQFitter()(model, x, y, data, weights=1 / sigma)
    chi2_best = float(np.sum(((best * unit - data) / sigma) ** 2))
    assert free.fit_info["chi2"] <= chi2_best
    assert free.flux_0.value == pytest.approx(best, rel=0.01)


def test_polynomial_background_on_an_image_grid():
    """A col_fit_deriv=False part (Polynomial2D) on a 2-D grid: astropy's fit."""
    y, x = np.mgrid[:24, :24]
    rng = np.random.default_rng(1)
    data = (psf_model(flux=300.0, x_0=11.3, y_0=12.4)(x, y) + 0.05 * x - 0.02 * y + 1
            + rng.normal(0, 0.5, x.shape))
    model = psf_model(flux=200.0, x_0=11.0, y_0=12.0) + models.Polynomial2D(1)
    ref = fitting.TRFLSQFitter()(model, x, y, data, weights=2.0)
    fit = MixtureLSQFitter()(model, x, y, data, weights=2.0)
    assert fit.fit_info["jacobian"] == "analytic"
    np.testing.assert_allclose(fit.parameters, ref.parameters, rtol=1e-5, atol=1e-6)
    assert fit.c1_0_1.value == pytest.approx(0.05, abs=4 * fit.fit_info["param_std"]["c1_0_1"])


@pytest.mark.parametrize("case, match", [
    ("eqcons", "eqcons"),
    ("two outputs", "1 output|outputs"),
    ("one input", "1 inputs"),
    ("four inputs", "4 inputs"),
    ("model set", "model set"),
    ("not a model", "astropy model"),
    ("weights shape", "weights of shape"),
])
def test_bad_models_and_weights_are_refused(case, match):
    y, x = np.mgrid[:16, :16]
    data = psf_model(flux=100.0, x_0=5.3, y_0=6.2)(x, y)
    model, weights = psf_model(flux=80.0, x_0=5.0, y_0=6.0), None
    if case == "eqcons":
        model = models.Const2D(1.0, eqcons=[lambda p, *a: p[0] - 1.0])
    elif case == "two outputs":
        model = models.Gaussian1D(1, 5, 2) & models.Gaussian1D(1, 6, 2)
    elif case == "one input":
        model = models.Gaussian1D()
    elif case == "four inputs":
        model = model & model
    elif case == "model set":
        model = models.Const2D([1.0, 2.0], n_models=2)
    elif case == "not a model":
        model = "psf"
    else:
        weights = np.ones(5)
    with pytest.raises(InputError, match=match):
        MixtureLSQFitter()(model, x, y, data, weights=weights)


@pytest.mark.parametrize("route", ["backend kernel", "analytic", "partial"])
def test_cov_matrix_and_stds_match_astropy(route):
    """calc_uncertainties sets cov_matrix and stds on the model: astropy's TRF values."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:24, :24]
    data = psf_model(flux=300.0, x_0=11.3, y_0=12.4)(x, y) + rng.normal(0, 0.5, x.shape)
    model = psf_model(flux=200.0, x_0=11.0, y_0=12.0)
    weights = np.full(x.shape, 2.0)
    if route == "analytic":
        weights[0, 0] = 0.0                # a masked pixel: the per-point route
    elif route == "partial":
        model = model + models.Const2D(0.0)
    fit = MixtureLSQFitter()(model, x, y, data, weights=weights)
    ref = fitting.TRFLSQFitter(calc_uncertainties=True)(model, x, y, data, weights=weights)
    assert fit.fit_info["jacobian"] == route
    assert fit.stds.param_names == ref.stds.param_names
    np.testing.assert_allclose(fit.stds.stds, ref.stds.stds, rtol=1e-4)
    np.testing.assert_allclose(fit.cov_matrix.cov_matrix, ref.cov_matrix.cov_matrix, rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(ref.cov_matrix.cov_matrix)))
    np.testing.assert_allclose(fit.stds.stds, list(fit.fit_info["param_std"].values()))


def test_invert_hessian_leaves_out_directions_that_are_not_positive_definite():
    """The scene fits' error Hessian is inverted only where it is positive definite: the
    inverse of an indefinite matrix gives negative variances or finite numbers at a saddle
    point (it had been inverted, or pseudo-inverted, as it came)."""
    from astromix.fitting.lsq import _invert_hessian
    good = np.array([[4.0, 1.0], [1.0, 3.0]])
    kept, inv, dropped = _invert_hessian(good)
    assert list(kept) == [0, 1] and dropped.size == 0
    np.testing.assert_allclose(inv, np.array([[3.0, -1.0], [-1.0, 4.0]]) / 11.0, rtol=1e-12)
    # a positive definite block and one with eigenvalues 3 and -1 (along (1, -1) / sqrt 2)
    hess = np.zeros((4, 4))
    hess[:2, :2] = good
    hess[2:, 2:] = [[1.0, 2.0], [2.0, 1.0]]
    kept, inv, dropped = _invert_hessian(hess)
    assert list(kept) == [0, 1] and list(dropped) == [2, 3]
    np.testing.assert_allclose(inv, np.array([[3.0, -1.0], [-1.0, 4.0]]) / 11.0, rtol=1e-12)
    # a non-positive or non-finite diagonal entry is left out directly
    bad = np.diag([2.0, -1.0, 5.0])
    bad[0, 2] = bad[2, 0] = np.nan
    kept, inv, dropped = _invert_hessian(bad)
    assert kept.size == 0 and list(dropped) == [0, 1, 2]
