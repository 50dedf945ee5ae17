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
