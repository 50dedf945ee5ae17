"""MoffatStar: pixel integration against dblquad and GalSim, derivatives, box, units, fits."""

import math
import pickle

import numpy as np
import pytest
from astropy import units as u
from astropy.modeling import fitting, models
from conftest import assert_fit_deriv_matches
from scipy import integrate

from astromix import InputError
from astromix.fitting import MixtureLSQFitter
from astromix.models.moffat import MoffatStar, moffat_alpha, moffat_fwhm


def profile(x, y, flux, x_0, y_0, fwhm, beta, ellip=0.0, theta=0.0):
    """The unintegrated Moffat surface brightness, written independently of the model."""
    q = 1.0 - ellip
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    dx, dy = x - x_0, y - y_0
    u_ = dx * math.cos(theta) + dy * math.sin(theta)
    v_ = -dx * math.sin(theta) + dy * math.cos(theta)
    rho2 = u_ ** 2 + (v_ / q) ** 2
    return flux * (beta - 1) / (math.pi * alpha ** 2 * q) * (1 + rho2 / alpha ** 2) ** -beta


def pixel_truth(x, y, *params):
    """The integral of the profile over the pixel centred at (x, y), by scipy's dblquad."""
    value, _ = integrate.dblquad(lambda yy, xx: profile(xx, yy, *params), x - 0.5, x + 0.5,
                                 y - 0.5, y + 0.5, epsabs=1e-14, epsrel=1e-12)
    return value


# (flux, x_0, y_0, fwhm, beta, ellip, theta)
CASES = [(1.0, 0.0, 0.0, 1.5, 1.2, 0.0, 0.0),
         (1.0, 0.2, -0.3, 1.5, 2.5, 0.0, 0.0),
         (1.0, 0.0, 0.1, 1.5, 4.765, 0.3, 0.7),
         (1.0, 0.4, 0.0, 3.0, 1.5, 0.5, -1.1),
         (1.0, 0.0, 0.0, 2.0, 10.0, 0.0, 0.0),
         (1.0, 0.1, 0.2, 3.0, 1.5, 0.9, 0.3)]      # minor-axis fwhm 0.3 px: more nodes
PIXELS = [(0, 0), (1, 0), (0, -1), (1, 1), (-2, 1), (3, -2)]


@pytest.mark.parametrize("params", CASES)
def test_pixel_integration_matches_dblquad(params):
    star = MoffatStar(*params)
    x = np.array([p[0] for p in PIXELS], dtype=float)
    y = np.array([p[1] for p in PIXELS], dtype=float)
    got = star(x, y)
    truth = np.array([pixel_truth(xi, yi, *params) for xi, yi in PIXELS])
    # the default 5 x 5 Gauss-Legendre rule: < 1e-5 of the peak pixel for fwhm >= 1.5 px
    assert np.abs(got - truth).max() < 1e-5 * truth.max()


def test_undersampled_star_wants_more_nodes():
    params = (1.0, 0.1, 0.0, 1.0, 1.5, 0.0, 0.0)
    truth = np.array([pixel_truth(xi, yi, *params) for xi, yi in PIXELS[:3]])
    x = np.array([p[0] for p in PIXELS[:3]], dtype=float)
    y = np.array([p[1] for p in PIXELS[:3]], dtype=float)
    default = np.abs(MoffatStar(*params)(x, y) - truth).max() / truth.max()
    finer = np.abs(MoffatStar(*params, quadrature=8)(x, y) - truth).max() / truth.max()
    assert default < 2e-4 and finer < 1e-6
    # one node samples the profile at the pixel centre
    np.testing.assert_allclose(MoffatStar(*params, quadrature=1)(x, y),
                               [profile(xi, yi, *params) for xi, yi in zip(x, y)], rtol=1e-12)


@pytest.mark.parametrize("fwhm, beta, ellip, theta, method", [
    (1.5, 2.5, 0.0, 0.0, "auto"),
    (2.0, 4.765, 0.0, 0.0, "auto"),
    (5.0, 3.0, 0.2, -0.4, "auto"),
    (3.0, 1.5, 0.3, 0.6, "real_space"),   # beta < 2: GalSim's FFT would be huge
    # near the ellip bound: minor-axis FWHM 0.3 and 0.15 px (the node count follows it)
    (3.0, 4.0, 0.9, 0.0, "real_space"),
    (3.0, 4.0, 0.95, 1.2, "real_space"),
    (1.5, 2.5, 0.95, math.pi / 2, "real_space"),
])
def test_image_matches_galsim(fwhm, beta, ellip, theta, method):
    """GalSim's drawImage integrates over pixels: an independent image-level truth."""
    galsim = pytest.importorskip("galsim")
    n, xc, yc = 49, 24.3, 23.8
    star = MoffatStar(7.0, xc, yc, fwhm, beta, ellip, theta)
    y, x = np.mgrid[:n, :n]
    img = star(x, y)
    q = 1.0 - ellip
    gsp = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-7,
                          xvalue_accuracy=1e-7, realspace_relerr=1e-7, realspace_abserr=1e-9)
    # GalSim's shear keeps the area: the major-axis FWHM is fwhm sqrt(q) / sqrt(q)
    prof = galsim.Moffat(beta, fwhm=fwhm * math.sqrt(q), flux=7.0, gsparams=gsp)
    if ellip:
        prof = prof.shear(q=q, beta=theta * galsim.radians)
    truth = prof.drawImage(nx=n, ny=n, scale=1.0, method=method,
                           offset=(xc - (n - 1) / 2, yc - (n - 1) / 2)).array
    assert np.abs(img - truth).max() < 1e-5 * truth.max()
    assert img.sum() == pytest.approx(truth.sum(), rel=1e-5)


@pytest.mark.parametrize("beta", [1.5, 2.5, 6.0])
def test_flux_normalisation(beta):
    star = MoffatStar(100.0, 50.2, 49.7, 3.0, beta)
    y, x = np.mgrid[:101, :101]
    total = star(x, y).sum()
    # the flux inside the image square, from the unintegrated profile
    inside, _ = integrate.dblquad(lambda yy, xx: profile(xx, yy, 100.0, 50.2, 49.7, 3.0, beta),
                                  -0.5, 100.5, -0.5, 100.5, epsabs=1e-10, epsrel=1e-11)
    assert total == pytest.approx(inside, rel=1e-8)
    if beta > 2:
        assert total == pytest.approx(100.0, rel=2e-4)


@pytest.mark.parametrize("ellip, theta", [(0.0, 0.0), (0.4, 0.5), (0.25, 2.0)])
def test_fwhm_along_the_major_axis_and_enclosed_radius(ellip, theta):
    star = MoffatStar(1.0, 0.0, 0.0, 4.0, 3.2, ellip, theta, quadrature=1)  # samples the profile
    c, s = math.cos(theta), math.sin(theta)
    peak = star(0.0, 0.0)
    assert star(2.0 * c, 2.0 * s) == pytest.approx(0.5 * peak, rel=1e-12)
    q = 1.0 - ellip
    assert star(-2.0 * q * s, 2.0 * q * c) == pytest.approx(0.5 * peak, rel=1e-12)
    # enclosed flux within the ellipse of major-axis radius R
    frac = 0.8
    r = star.enclosed_radius(frac)
    radial, _ = integrate.quad(lambda rr: 2 * math.pi * rr * profile(rr, 0.0, 1.0, 0, 0, 4.0,
                                                                     3.2), 0, r)
    assert radial == pytest.approx(frac, rel=1e-10)
    assert star.alpha == pytest.approx(float(moffat_alpha(4.0, 3.2)))
    assert float(moffat_fwhm(star.alpha, 3.2)) == pytest.approx(4.0, rel=1e-14)


@pytest.mark.parametrize("params", [
    (120.0, 20.3, 19.6, 3.0, 2.7, 0.0, 0.0),
    (120.0, 20.3, 19.6, 3.0, 2.7, 0.3, 0.8),
    (-4.0, 18.0, 21.2, 2.1, 1.4, 0.6, -2.5),
])
def test_fit_deriv_matches_finite_differences(params):
    star = MoffatStar(*params)
    y, x = np.mgrid[:40, :40].astype(float)
    assert_fit_deriv_matches(star, x, y, rtol=2e-6)
    derivs = star.fit_deriv(x, y, *star.parameters)
    assert [d.shape for d in derivs] == [x.shape] * 7
    # d/dflux is the unit-flux image, even at flux = 0
    np.testing.assert_allclose(derivs[0] * params[0], star(x, y), rtol=1e-12)


def test_evaluate_shapes_and_no_grid():
    star = MoffatStar(10.0, 3.2, 4.1, 2.5, 3.0)
    assert np.ndim(star(3.0, 4.0)) == 0
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 8, (3, 5)), rng.uniform(0, 8, (3, 5))
    assert star(x, y).shape == (3, 5)
    np.testing.assert_allclose(star(x, y).ravel(), star(x.ravel(), y.ravel()), rtol=1e-15)
    assert star(np.arange(5.0), 4.0).shape == (5,)


def test_bounding_box():
    star = MoffatStar(1.0, 60.3, 55.8, 4.0, 2.5, 0.4, 0.3)
    (ylo, yhi), (xlo, xhi) = star.bounding_box.bounding_box()
    r = star.enclosed_radius(0.999)
    # ((1 + R^2/alpha^2)^(1 - beta) = 1e-3
    assert (1 + (r / star.alpha) ** 2) ** (1 - 2.5) == pytest.approx(1e-3)
    assert xhi - 60.3 == pytest.approx(r * math.hypot(math.cos(0.3), 0.6 * math.sin(0.3)) + 0.5)
    assert yhi - 55.8 == pytest.approx(r * math.hypot(math.sin(0.3), 0.6 * math.cos(0.3)) + 0.5)
    assert 60.3 - xlo == pytest.approx(xhi - 60.3) and 55.8 - ylo == pytest.approx(yhi - 55.8)
    y, x = np.mgrid[:121, :121]
    full = star(x, y)
    boxed = np.nan_to_num(star(x, y, with_bounding_box=True))
    # the flux outside the box is below 1e-3 (the ellipse's share) of the total
    assert 0 < (full - boxed).sum() < 1e-3 * full.sum()


@pytest.mark.parametrize("beta", [1.0000001, 1.005])
def test_bounding_box_of_a_beta_near_one(beta):
    """beta just above 1 holds its flux out to radii beyond a float: an unbounded box
    (it had raised OverflowError), and the box evaluation still works; beta = 1 set
    after construction is refused (it had raised ZeroDivisionError)."""
    star = MoffatStar(1.0, 10.0, 10.0, 3.0, beta)
    assert star.enclosed_radius(0.999) == math.inf
    assert star.bounding_box.bounding_box() == ((-math.inf, math.inf), (-math.inf, math.inf))
    y, x = np.mgrid[:20, :20]
    np.testing.assert_array_equal(star(x, y, with_bounding_box=True), star(x, y))
    # a fraction the float range holds is still finite and right (at beta = 1 + 1e-7
    # even 0.1% of the flux lies beyond 1e300 alpha)
    r = star.enclosed_radius(0.001)
    if beta > 1.001:
        assert 1 - (1 + (r / star.alpha) ** 2) ** (1 - beta) == pytest.approx(0.001)
    else:
        assert r == math.inf
    star.beta = 1.0
    with pytest.raises(InputError, match="beta must be a finite number > 1"):
        _ = star.bounding_box


def test_units():
    star = MoffatStar(3.0 * u.Jy, 20.0, 20.0, 2.0, 3.0)
    assert star(5.0, 5.0).unit == u.Jy
    assert star.flux.unit == u.Jy
    y, x = np.mgrid[:41, :41]
    assert star(x, y).sum().to_value(u.Jy) == pytest.approx(3.0, rel=2e-3)
    plain = MoffatStar(3.0 * u.Jy, 20.0, 20.0, 2.0, 3.0).without_units_for_data(
        x=x * u.pix, y=y * u.pix, z=star(x, y))
    assert plain.flux.unit is None and plain.flux.value == pytest.approx(3.0)
    assert star._parameter_units_for_data_units({"x": u.pix, "y": u.pix}, {"z": u.Jy}) == {
        "flux": u.Jy, "x_0": u.pix, "y_0": u.pix, "fwhm": u.pix, "theta": u.rad}


def _galsim_star(rng, *, flux=2000.0, xc=20.4, yc=19.7, fwhm=3.5, beta=3.0, sky=5.0,
                 sigma=0.5, n=41):
    galsim = pytest.importorskip("galsim")
    img = galsim.Moffat(beta, fwhm=fwhm, flux=flux).drawImage(
        nx=n, ny=n, scale=1.0, method="auto", offset=(xc - (n - 1) / 2, yc - (n - 1) / 2))
    data = img.array + sky + rng.normal(0.0, sigma, (n, n))
    y, x = np.mgrid[:n, :n]
    return x, y, data


@pytest.mark.parametrize("with_units", [False, True], ids=["plain", "Jy"])
def test_fit_galsim_star(with_units):
    rng = np.random.default_rng(11)
    truth = {"flux": 2000.0, "x_0": 20.4, "y_0": 19.7, "fwhm": 3.5, "beta": 3.0}
    x, y, data = _galsim_star(rng)
    start = MoffatStar(1500.0, 20.0, 20.0, 3.0, 2.5) + models.Const2D(0.0)
    sigma = np.full(data.shape, 0.5)
    if with_units:
        data = data * u.Jy
        sigma = sigma * u.Jy
        start = MoffatStar(1500.0 * u.Jy, 20.0, 20.0, 3.0, 2.5) + models.Const2D(0.0 * u.Jy)
    fitter = MixtureLSQFitter()
    fit = fitter(start, x, y, data, weights=1.0 / np.asarray(getattr(sigma, "value", sigma)))
    std = fit.fit_info["param_std"]
    assert fit.fit_info["jacobian"] in ("analytic", "partial")
    for name, value in truth.items():
        got = getattr(fit, f"{name}_0")
        assert abs(got.value - value) < 4 * std[f"{name}_0"], name
        assert std[f"{name}_0"] < 0.02 * abs(value), name
    assert abs(fit.amplitude_1.value - 5.0) < 4 * std["amplitude_1"]
    if with_units:
        assert fit.flux_0.unit == u.Jy and fit.amplitude_1.unit == u.Jy
    # astropy's own fitter uses fit_deriv as well and agrees
    trf = fitting.TRFLSQFitter()(start, x, y, data)
    assert trf.fwhm_0.value == pytest.approx(fit.fwhm_0.value, abs=0.05 * std["fwhm_0"])


def test_fit_elliptical_star():
    galsim = pytest.importorskip("galsim")
    rng = np.random.default_rng(5)
    n, xc, yc, q, th = 41, 20.2, 20.6, 0.7, 0.5
    prof = galsim.Moffat(2.8, fwhm=4.0 * math.sqrt(q), flux=3000.0).shear(
        q=q, beta=th * galsim.radians)
    data = prof.drawImage(nx=n, ny=n, scale=1.0, method="auto",
                          offset=(xc - (n - 1) / 2, yc - (n - 1) / 2)).array
    data = data + rng.normal(0.0, 0.3, data.shape)
    y, x = np.mgrid[:n, :n]
    start = MoffatStar(2500.0, 20.0, 20.0, 3.5, 2.5, 0.1, 0.2)
    assert start.ellip.fixed and start.theta.fixed
    start.ellip.fixed = start.theta.fixed = False
    fit = MixtureLSQFitter()(start, x, y, data, weights=np.full(data.shape, 1 / 0.3))
    std = fit.fit_info["param_std"]
    for name, value in (("ellip", 1 - q), ("theta", th), ("fwhm", 4.0), ("beta", 2.8)):
        assert abs(getattr(fit, name).value - value) < 4 * std[name], name


def test_defaults_flags_and_copies():
    star = MoffatStar()
    assert star.param_names == ("flux", "x_0", "y_0", "fwhm", "beta", "ellip", "theta")
    assert [star.fixed[n] for n in star.param_names] == [False] * 5 + [True] * 2
    assert star.fwhm.bounds == (1e-3, None) and star.beta.bounds == (1.01, None)
    assert star.ellip.bounds == (0.0, 0.95)
    other = MoffatStar(quadrature=7)
    other.ellip.fixed = False
    assert star.ellip.fixed and star.quadrature == 5
    for copy in (other.copy(), pickle.loads(pickle.dumps(other))):
        assert copy.quadrature == 7 and not copy.ellip.fixed


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 1.0}, "beta must be"),
    ({"beta": 0.5}, "beta must be"),
    ({"fwhm": 0.0}, "fwhm must be"),
    ({"fwhm": -2.0}, "fwhm must be"),
    ({"ellip": 1.0}, "ellip must"),
    ({"ellip": -0.1}, "ellip must"),
    ({"x_0": np.nan}, "non-finite"),
    ({"quadrature": 0}, "quadrature"),
    ({"quadrature": 2.5}, "quadrature"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        MoffatStar(**kwargs)


def test_bad_values_at_evaluation_and_bounds_in_fits():
    star = MoffatStar(1.0, 0.0, 0.0, 2.0, 2.5)
    with pytest.raises(InputError, match="beta must be"):
        star.evaluate(0.0, 0.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0)
    with pytest.raises(InputError, match="fwhm must be"):
        star.fit_deriv(0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 2.5, 0.0, 0.0)
    star.beta = 0.9          # astropy does not check values set later: evaluation refuses it
    with pytest.raises(InputError, match="beta must be"):
        star(0.0, 0.0)
    # a star with very heavy wings: the fit stays inside the bounds (beta >= 1.01)
    y, x = np.mgrid[:31, :31]
    data = MoffatStar(100.0, 15.0, 15.0, 3.0, 1.05)(x, y)
    fit = MixtureLSQFitter()(MoffatStar(80.0, 15.0, 15.0, 3.0, 3.0), x, y, data)
    assert fit.beta.value >= 1.01
