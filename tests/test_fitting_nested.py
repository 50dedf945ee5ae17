"""DynestyFitter: posteriors against analytic and least-squares answers, priors, constraints."""

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy import units as u
from astropy.modeling import fitting, models
from scipy import stats

from astromix import GaussianMixture, GaussianMixturePSF, InputError
from astromix.fitting.nested import DynestyFitter

pytest.importorskip("dynesty")


@pytest.fixture(scope="module")
def const_data():
    """Const2D + Gaussian noise: the posterior of the amplitude is N(mean(z), sigma/sqrt(N))."""
    rng = np.random.default_rng(42)
    y, x = np.mgrid[:20, :20]
    sigma = 1.5
    z = 3.0 + rng.normal(0, sigma, x.shape)
    return x, y, z, sigma


def gaussian_stamp(seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:25, :25]
    truth = models.Gaussian2D(50.0, 12.3, 11.7, 2.5, 2.0, 0.3)
    z = truth(x, y) + rng.normal(0, sigma, x.shape)
    return x, y, z, sigma, truth


def start_gaussian():
    m = models.Gaussian2D(40.0, 12.0, 12.0, 2.5, 2.0, 0.3)
    m.x_stddev.fixed = m.y_stddev.fixed = m.theta.fixed = True
    return m


GAUSS_PRIORS = {"amplitude": (0, 100), "x_mean": (8, 16), "y_mean": (8, 16)}


class TestPosterior:
    def test_gaussian2d_against_least_squares(self):
        x, y, z, sigma, truth = gaussian_stamp()
        fitter = DynestyFitter(nlive=100, rng=1)
        model = start_gaussian()
        fitted = fitter(model, x, y, z, weights=1 / sigma, priors=GAUSS_PRIORS)
        info = fitter.fit_info
        assert fitted is not model and model.amplitude.value == 40.0
        assert fitted.fit_info is info
        assert info["param_names"] == ["amplitude", "x_mean", "y_mean"]
        lsq = fitting.TRFLSQFitter(calc_uncertainties=True)(model, x, y, z, weights=1 / sigma)
        for k, name in enumerate(info["param_names"]):
            mean, std = info["mean"][name], info["std"][name]
            assert abs(mean - getattr(truth, name).value) < 3 * std
            assert 1 / 1.5 < std / lsq.stds.stds[k] < 1.5
            # the fitted model sits at the best sample, near the least-squares optimum
            assert getattr(fitted, name).value == info["best"][name]
            assert abs(info["best"][name] - getattr(lsq, name).value) < std
            assert fitted.stds[name] == pytest.approx(std)
        # the unchanged parameters stay put
        assert fitted.theta.value == model.theta.value
        n = info["samples"].shape[0]
        assert info["samples"].shape == (n, 3) and n > 100
        m = info["weighted_samples"].shape[0]
        assert info["weights"].shape == (m,) and info["weights"].sum() == pytest.approx(1)
        assert info["logl"].shape == (m,) and info["max_logl"] == info["logl"].max()
        assert info["cov"].shape == (3, 3)
        assert np.isfinite(info["logz"]) and info["logz_err"] > 0
        assert info["ncall"] > 100 and info["time_s"] > 0
        assert info["results"].samples.shape == (m, 3)

    def test_analytic_constant(self, const_data):
        x, y, z, sigma = const_data
        n = z.size
        half = 1.0
        fitter = DynestyFitter(nlive=100, rng=3)
        fitter(models.Const2D(1.0), x, y, z, weights=np.full(z.shape, 1 / sigma),
               priors={"amplitude": (z.mean() - half, z.mean() + half)})
        info = fitter.fit_info
        s = sigma / np.sqrt(n)
        assert abs(info["mean"]["amplitude"] - z.mean()) < 0.2 * s
        assert info["std"]["amplitude"] == pytest.approx(s, rel=0.2)
        assert np.std(info["samples"][:, 0]) == pytest.approx(s, rel=0.2)
        # normalised evidence: L(zbar) * sqrt(2 pi) s / prior width
        chi2 = np.sum((z - z.mean()) ** 2) / sigma**2
        logl_max = -0.5 * chi2 - n * np.log(sigma) - 0.5 * n * np.log(2 * np.pi)
        logz = logl_max + np.log(np.sqrt(2 * np.pi) * s / (2 * half))
        assert abs(info["logz"] - logz) < max(3 * info["logz_err"], 0.3)

    def test_one_dimensional_model_and_mask(self):
        rng = np.random.default_rng(5)
        x = np.linspace(-5, 5, 200)
        ydata = models.Gaussian1D(4.0, 0.5, 1.2)(x) + rng.normal(0, 0.2, x.size)
        weights = np.full(x.size, 5.0)
        ydata[::17] = np.nan  # masked by zero weight
        weights[::17] = 0
        fitter = DynestyFitter(nlive=60, rng=0)
        fitted = fitter(models.Gaussian1D(3.0, 0.0, 1.0), x, ydata, weights=weights,
                        priors={"amplitude": (0, 10), "mean": (-2, 2), "stddev": (0.1, 3)})
        info = fitter.fit_info
        for name, truth in [("amplitude", 4.0), ("mean", 0.5), ("stddev", 1.2)]:
            assert abs(info["mean"][name] - truth) < 4 * info["std"][name]
        assert np.isfinite(fitted(x)).all()

    def test_compound_model(self):
        rng = np.random.default_rng(8)
        y, x = np.mgrid[:21, :21]
        truth = models.Gaussian2D(20.0, 10.2, 9.8, 2.0, 2.0) + models.Const2D(5.0)
        z = truth(x, y) + rng.normal(0, 0.5, x.shape)
        model = models.Gaussian2D(15.0, 10.0, 10.0, 2.0, 2.0) + models.Const2D(4.0)
        for name in ("x_stddev_0", "y_stddev_0", "theta_0"):
            model.fixed[name] = True
        fitter = DynestyFitter(nlive=60, rng=2)
        fitted = fitter(model, x, y, z, weights=2.0,
                        priors={"amplitude_0": (0, 40), "x_mean_0": (8, 12),
                                "y_mean_0": (8, 12), "amplitude_1": (0, 10)})
        info = fitter.fit_info
        assert info["param_names"] == ["amplitude_0", "x_mean_0", "y_mean_0", "amplitude_1"]
        for name in info["param_names"]:
            assert abs(info["mean"][name] - getattr(truth, name).value) < 4 * info["std"][name]
        assert fitted.amplitude_1.value == info["best"]["amplitude_1"]

    def test_units(self):
        rng = np.random.default_rng(9)
        x = np.linspace(-5, 5, 100) * u.um
        truth = models.Gaussian1D(4.0 * u.Jy, 0.5 * u.um, 1.2 * u.um)
        ydata = truth(x) + rng.normal(0, 0.2, x.size) * u.Jy
        model = models.Gaussian1D(3.0 * u.Jy, 0.0 * u.um, 1.0 * u.um)
        fitter = DynestyFitter(nlive=50, rng=0)
        fitted = fitter(model, x, ydata, weights=5.0 / u.Jy,
                        priors={"amplitude": (0 * u.Jy, 10000 * u.mJy),
                                "mean": (-2, 2), "stddev": (0.1 * u.um, 3000 * u.nm)})
        assert fitted.amplitude.unit == u.Jy and fitted.mean.unit == u.um
        info = fitter.fit_info
        assert info["samples"][:, 0].max() <= 10 and info["samples"][:, 2].max() <= 3
        assert abs(info["mean"]["amplitude"] - 4.0) < 4 * info["std"]["amplitude"]


class TestPriors:
    def test_tuple_scipy_and_callable(self, const_data):
        x, y, z, sigma = const_data
        s = sigma / np.sqrt(z.size)
        lo, hi = z.mean() - 1, z.mean() + 1
        results = {}
        for kind, prior in [("tuple", (lo, hi)), ("callable", lambda q: lo + q * (hi - lo))]:
            fitter = DynestyFitter(nlive=60, rng=4)
            fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors={"amplitude": prior})
            results[kind] = fitter.fit_info
        # the callable is the same ppf as the tuple: the same run
        np.testing.assert_allclose(results["tuple"]["samples"], results["callable"]["samples"])
        # a normal prior N(mu0, tau): conjugate, posterior precision-weighted
        mu0, tau = z.mean() + 2 * s, s
        fitter = DynestyFitter(nlive=100, rng=4)
        fitter(models.Const2D(), x, y, z, weights=1 / sigma,
               priors={"amplitude": stats.norm(mu0, tau)})
        info = fitter.fit_info
        post_var = 1 / (1 / s**2 + 1 / tau**2)
        post_mean = post_var * (z.mean() / s**2 + mu0 / tau**2)
        assert abs(info["mean"]["amplitude"] - post_mean) < 0.25 * np.sqrt(post_var)
        assert info["std"]["amplitude"] == pytest.approx(np.sqrt(post_var), rel=0.2)

    def test_bounds_always_apply(self, const_data):
        x, y, z, sigma = const_data
        cut = z.mean()
        for prior in [stats.norm(z.mean(), 1.0), lambda q: z.mean() - 1 + 2 * q,
                      (z.mean() - 1, z.mean() + 1)]:
            model = models.Const2D()
            model.amplitude.bounds = (None, cut)
            fitter = DynestyFitter(nlive=40, rng=1)
            fitted = fitter(model, x, y, z, weights=1 / sigma, priors={"amplitude": prior})
            assert fitter.fit_info["samples"].max() <= cut
            assert fitted.amplitude.value <= cut

    def test_default_prior_from_bounds(self, const_data):
        x, y, z, sigma = const_data
        model = models.Const2D(bounds={"amplitude": (0.0, 6.0)})
        fitter = DynestyFitter(nlive=40, rng=1)
        fitter(model, x, y, z, weights=1 / sigma)
        assert fitter.fit_info["mean"]["amplitude"] == pytest.approx(z.mean(), abs=0.1)


class TestConstraints:
    def test_tied_and_fixed(self):
        x, y, z, sigma, truth = gaussian_stamp(sigma=1.0)
        model = models.Gaussian2D(40.0, 12.0, 12.0, 2.0, 2.0, 0.3)
        model.theta.fixed = True
        model.y_stddev.tied = lambda m: 0.8 * m.x_stddev
        fitter = DynestyFitter(nlive=60, rng=6)
        priors = {**GAUSS_PRIORS, "x_stddev": (1.0, 4.0)}
        fitted = fitter(model, x, y, z, weights=1 / sigma, priors=priors)
        info = fitter.fit_info
        assert info["param_names"] == ["amplitude", "x_mean", "y_mean", "x_stddev"]
        assert info["samples"].shape[1] == 4
        assert fitted.y_stddev.value == pytest.approx(0.8 * fitted.x_stddev.value)
        assert fitted.theta.value == 0.3 and fitted.theta.fixed
        assert fitted.y_stddev.tied is model.y_stddev.tied
        assert abs(info["mean"]["x_stddev"] - 2.5) < 4 * info["std"]["x_stddev"]
        with pytest.raises(InputError, match="y_stddev"):
            fitter(model, x, y, z, priors={**priors, "y_stddev": (1, 2)})
        with pytest.raises(InputError, match="theta"):
            fitter(model, x, y, z, priors={**priors, "theta": (0, 1)})

    def test_gaussian_mixture_psf(self):
        mix = GaussianMixture([0.7, 0.3], [[0.0, 0.0], [0.3, -0.2]],
                              [[[1.2, 0.3], [0.3, 0.8]], np.eye(2) * 9.0])
        truth = GaussianMixturePSF(mix, flux=500.0, x_0=10.4, y_0=9.7)
        rng = np.random.default_rng(11)
        y, x = np.mgrid[:21, :21]
        sigma = 0.5
        z = truth(x, y) + rng.normal(0, sigma, x.shape)
        model = GaussianMixturePSF(mix, flux=400.0, x_0=10.0, y_0=10.0)
        fitter = DynestyFitter(nlive=60, rng=0)
        fitted = fitter(model, x, y, z, weights=1 / sigma,
                        priors={"flux": (0, 1000), "x_0": (8, 12), "y_0": (8, 12)})
        info = fitter.fit_info
        assert info["param_names"] == ["flux", "x_0", "y_0"]
        for name in info["param_names"]:
            assert abs(info["mean"][name] - getattr(truth, name).value) < 3 * info["std"][name]
        assert info["std"]["x_0"] < 0.05
        np.testing.assert_allclose(fitted.parameters[3:], model.parameters[3:])
        assert isinstance(fitted, GaussianMixturePSF)


class TestInput:
    def test_infinite_bound_needs_prior(self, const_data):
        x, y, z, _ = const_data
        with pytest.raises(InputError, match="'amplitude'.*infinite bound"):
            DynestyFitter(nlive=20)(models.Const2D(), x, y, z)
        model = models.Const2D(bounds={"amplitude": (0.0, None)})
        with pytest.raises(InputError, match="amplitude"):
            DynestyFitter(nlive=20)(model, x, y, z)

    @pytest.mark.parametrize("priors, match", [
        ({"amplitude": (0, 5), "nope": (0, 1)}, "unknown.*nope"),
        ({"amplitude": (5, 0)}, "amplitude"),
        ({"amplitude": (0, 1, 2)}, "amplitude"),
        ({"amplitude": (np.inf, 1)}, "amplitude"),
        ({"amplitude": "uniform"}, "amplitude"),
        ({"amplitude": (0 * u.m, 1 * u.m)}, "amplitude"),
    ])
    def test_bad_priors(self, const_data, priors, match):
        x, y, z, _ = const_data
        with pytest.raises(InputError, match=match):
            DynestyFitter(nlive=20)(models.Const2D(), x, y, z, priors=priors)

    def test_bad_data(self, const_data):
        x, y, z, _ = const_data
        fitter = DynestyFitter(nlive=20)
        p = {"amplitude": (0, 5)}
        with pytest.raises(InputError, match="broadcast"):
            fitter(models.Const2D(), x, y, z[:5], priors=p)
        with pytest.raises(InputError, match="weights"):
            fitter(models.Const2D(), x, y, z, weights=-1.0, priors=p)
        bad = z.copy()
        bad[3, 4] = np.nan
        with pytest.raises(InputError, match="non-finite"):
            fitter(models.Const2D(), x, y, bad, priors=p)
        with pytest.raises(InputError, match="no data"):
            fitter(models.Const2D(), x, y, z, weights=0.0, priors=p)
        with pytest.raises(InputError, match="x, y and z"):
            fitter(models.Const2D(), x, z, priors=p)
        fixed = models.Const2D(fixed={"amplitude": True})
        with pytest.raises(InputError, match="no free parameter"):
            fitter(fixed, x, y, z)
        with pytest.raises(InputError, match="model set"):
            fitter(models.Const2D([1.0, 2.0], n_models=2), x, y, z, priors=p)

    def test_too_few_live_points_for_the_free_parameters(self):
        """dynesty needs nlive > 2 ndim (it only warns, and can stall): refused at the call."""
        x, y, z, sigma, _ = gaussian_stamp()
        model = start_gaussian()                       # 3 free: amplitude, x_mean, y_mean
        with pytest.raises(InputError, match=r"nlive = 6 .* 3 free parameters.*nlive >= 7"):
            DynestyFitter(nlive=6, rng=0)(model, x, y, z, weights=1 / sigma, priors=GAUSS_PRIORS)
        model.x_stddev.fixed = False                   # 4 free: 8 live points are too few
        with pytest.raises(InputError, match=r"nlive = 8 .* 4 free.*> 2 \* 4 = 8"):
            DynestyFitter(nlive=8, rng=0)(model, x, y, z, weights=1 / sigma,
                                          priors={**GAUSS_PRIORS, "x_stddev": (1, 4)})
        # one live point more than 2 ndim is accepted, and samples
        fitter = DynestyFitter(nlive=7, rng=0, dlogz=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # dynesty's bootstrap warnings
            fitter(start_gaussian(), x, y, z, weights=1 / sigma, priors=GAUSS_PRIORS)
        assert fitter.fit_info["ncall"] > 7

    def test_bad_options(self):
        with pytest.raises(InputError, match="nlive"):
            DynestyFitter(nlive=1)
        with pytest.raises(InputError, match="dlogz"):
            DynestyFitter(dlogz=0)
        with pytest.raises(InputError, match="rng"):
            DynestyFitter(rng="seed")
        with pytest.raises(InputError, match="pool"):
            DynestyFitter(pool=object())


class TestReproducibility:
    def test_same_rng_same_samples(self, const_data):
        x, y, z, sigma = const_data
        p = {"amplitude": (0, 6)}
        runs = []
        for rng in (7, 7, np.random.default_rng(7), np.random.default_rng(7)):
            fitter = DynestyFitter(nlive=40, rng=rng)
            fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors=p)
            runs.append(fitter.fit_info)
        for run in runs[1:]:
            np.testing.assert_array_equal(run["samples"], runs[0]["samples"])
            np.testing.assert_array_equal(run["weighted_samples"], runs[0]["weighted_samples"])
            assert run["logz"] == runs[0]["logz"]
        # an int seeds every call afresh; a Generator moves on
        fitter = DynestyFitter(nlive=40, rng=np.random.default_rng(7))
        fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors=p)
        first = fitter.fit_info["samples"]
        fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors=p)
        assert not np.array_equal(first, fitter.fit_info["samples"])

    def test_pool_and_maxcall(self, const_data):
        x, y, z, sigma = const_data
        p = {"amplitude": (0, 6)}
        with ThreadPoolExecutor(2) as pool:
            fitter = DynestyFitter(nlive=40, rng=1, pool=pool)
            fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors=p)
        assert fitter.fit_info["mean"]["amplitude"] == pytest.approx(z.mean(), abs=0.1)
        fitter = DynestyFitter(nlive=40, rng=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dynesty: stopped short of dlogz
            fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors=p, maxcall=100)
        assert fitter.fit_info["ncall"] < 250


@pytest.fixture(scope="module")
def mjy_data():
    """Const2D data in mJy, a model in Jy: the posterior is N(mean(z), sigma/sqrt(N))."""
    rng = np.random.default_rng(42)
    y, x = np.mgrid[:20, :20]
    z = (100.0 + rng.normal(0, 1.5, x.shape)) * u.mJy          # 0.1 Jy
    return x, y, z, 1.5


class TestUnits:
    """Angles in degrees, priors returning Quantities, bounds in the model's unit."""

    def test_theta_in_degrees_is_sampled_in_radians(self):
        from astromix import SersicMixture

        psf = GaussianMixturePSF(GaussianMixture([0.7, 0.3], [[0, 0], [0, 0]],
                                                 [np.eye(2) * 2.0, np.eye(2) * 9.0]))
        y, x = np.mgrid[:32, :32]
        truth = np.radians(30.0)
        z = (SersicMixture(500.0, 15.4, 16.2, 3.0, 1.5, 0.4, truth, psf=psf)(x, y)
             + np.random.default_rng(7).normal(0, 0.3, x.shape))
        model = SersicMixture(500.0, 15.4, 16.2, 3.0, 1.5, 0.4, 20 * u.deg, psf=psf)
        for name in ("flux", "x_0", "y_0", "r_eff", "n", "ellip"):
            getattr(model, name).fixed = True
        fitter = DynestyFitter(nlive=60, rng=1, dlogz=0.5)
        fitted = fitter(model, x, y, z, weights=1 / 0.3,
                        priors={"theta": (0 * u.deg, 180 * u.deg)})
        info = fitter.fit_info
        # sampled in radians within the prior (0, pi), one mode at the injected angle
        assert 0 <= info["samples"].min() and info["samples"].max() <= np.pi
        assert abs(info["mean"]["theta"] - truth) < 4 * info["std"]["theta"]
        assert info["std"]["theta"] < 0.05
        # the fitted model keeps the unit it was given
        assert fitted.theta.unit == u.deg
        assert fitted.theta.quantity.to_value(u.rad) == pytest.approx(info["best"]["theta"])

    def test_callable_prior_returning_a_quantity(self, mjy_data):
        x, y, z, sigma = mjy_data
        s = sigma / np.sqrt(z.size)
        results = {}
        for kind, prior in [("tuple", (0 * u.Jy, 0.2 * u.Jy)),
                            ("callable", lambda q: q * 0.2 * u.Jy)]:
            fitter = DynestyFitter(nlive=60, rng=4, dlogz=0.5)
            fitted = fitter(models.Const2D(0.08 * u.Jy), x, y, z, weights=1 / sigma,
                            priors={"amplitude": prior})
            results[kind] = fitter.fit_info
            assert fitted.amplitude.unit == u.mJy
            assert abs(fitter.fit_info["mean"]["amplitude"] - z.value.mean()) < 0.3 * s
        # the callable is the same ppf as the tuple (in mJy): the same run
        np.testing.assert_allclose(results["tuple"]["samples"], results["callable"]["samples"])
        with pytest.raises(InputError, match="amplitude"):
            DynestyFitter(nlive=20)(models.Const2D(0.08 * u.Jy), x, y, z,
                                    priors={"amplitude": lambda q: q * u.m})

    def test_bounds_in_the_model_unit_are_converted(self, mjy_data):
        x, y, z, sigma = mjy_data
        model = models.Const2D(0.08 * u.Jy, bounds={"amplitude": (0.0, 0.2)})   # in Jy
        fitter = DynestyFitter(nlive=60, rng=1, dlogz=0.5)
        fitted = fitter(model, x, y, z, weights=1 / sigma)
        info = fitter.fit_info
        assert fitted.amplitude.unit == u.mJy
        assert fitted.amplitude.bounds == pytest.approx((0.0, 200.0))
        assert info["samples"].max() <= 200.0 and info["samples"].max() > 100.0
        assert info["mean"]["amplitude"] == pytest.approx(z.value.mean(), abs=0.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"bound": "bogus"}, "bound"),
    ({"bound": None}, "bound"),
    ({"sample": "bogus"}, "sample"),
    ({"sample": 3}, "sample"),
    ({"dlogz": "a"}, "dlogz"),
    ({"dlogz": np.nan}, "dlogz"),
    ({"dlogz": np.inf}, "dlogz"),
])
def test_bad_sampler_options_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        DynestyFitter(**kwargs)


def test_dynesty_names_are_accepted(const_data):
    for bound in ("none", "single", "multi", "balls", "cubes"):
        for sample in ("auto", "unif", "rwalk", "slice", "rslice"):
            fitter = DynestyFitter(bound=bound, sample=sample)
            assert (fitter.bound, fitter.sample) == (bound, sample)
    x, y, z, sigma = const_data
    fitter = DynestyFitter(nlive=30, bound="single", sample="unif", dlogz=1, rng=1)
    fitter(models.Const2D(), x, y, z, weights=1 / sigma, priors={"amplitude": (0, 6)})
    assert fitter.fit_info["mean"]["amplitude"] == pytest.approx(z.mean(), abs=0.3)


def test_list_prior_of_quantities_like_a_tuple(mjy_data):
    x, y, z, sigma = mjy_data
    samples = []
    for prior in [(0 * u.Jy, 0.2 * u.Jy), [0 * u.Jy, 0.2 * u.Jy], [0, 200] * u.mJy, (0, 200)]:
        fitter = DynestyFitter(nlive=40, rng=4, dlogz=0.5)
        fitter(models.Const2D(0.08 * u.Jy), x, y, z, weights=1 / sigma,
               priors={"amplitude": prior})
        samples.append(fitter.fit_info["samples"])
        assert abs(fitter.fit_info["mean"]["amplitude"] - z.value.mean()) < 0.3
    for other in samples[1:]:           # (0, 200) mJy in every form: the same run
        np.testing.assert_allclose(other, samples[0], rtol=1e-12)


class TestScenePriors:
    """A scene's priors as Quantities: converted to the units it is sampled in."""

    @staticmethod
    def scene_and_exposure(zeropoint=22.5):
        from astropy.wcs import WCS

        from astromix import Exposure, SceneModel
        from astromix.models.scene import SersicSource

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval, w.wcs.crpix = [150.0, 2.0], [12.5, 12.5]
        w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
        psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
        truth = SceneModel([SersicSource(150.0, 2.0, 300.0, r_eff=0.6, n=1.5, ellip=0.3,
                                         theta=1.0)], zeropoint=zeropoint)
        kw = {"wcs": w, "psf": psf, "band": "r", "zeropoint": zeropoint}
        blank = Exposure(np.zeros((24, 24)), **kw)
        rng = np.random.default_rng(0)
        exposure = Exposure(truth.render(blank) + rng.normal(0, 0.5, (24, 24)),
                            uncertainty=np.full((24, 24), 0.5), **kw)
        start = truth.copy()
        for name in ("n_0", "ellip_0", "theta_0", "ra_0", "dec_0"):
            getattr(start, name).fixed = True
        return start, exposure

    @staticmethod
    def run(scene, exposure, priors):
        fitter = DynestyFitter(nlive=20, rng=1, dlogz=1.0)
        fitter(scene, [exposure], priors=priors, background=None)
        return fitter.fit_info

    def test_quantity_priors_give_the_bare_number_run(self):
        scene, exposure = self.scene_and_exposure()
        ref = self.run(scene, exposure, {"r_eff_0": (0.1, 2.0), "flux_0": (100.0, 1000.0)})
        assert ref["param_names"] == ["flux_0", "r_eff_0"]
        for name, value in (("r_eff_0", 0.6), ("flux_0", 300.0)):      # the injected values
            assert abs(ref["mean"][name] - value) < 4 * ref["std"][name]
        # the same uniform prior on (0.1, 2) arcsec, in other forms: the same run
        for prior in [(0.1 * u.arcsec, 2.0 * u.arcsec), [100 * u.mas, 2000 * u.mas],
                      [100, 2000] * u.mas, lambda q: (0.1 + q * 1.9) * u.arcsec]:
            info = self.run(scene, exposure, {"r_eff_0": prior, "flux_0": (100.0, 1000.0)})
            np.testing.assert_allclose(info["samples"], ref["samples"], rtol=1e-12)
        # zero point 22.5: one catalog unit is AB mag 22.5, so AB mags 17.5 and 15 are 100
        # and 1000 catalog units (in either order)
        for prior in [(17.5 * u.ABmag, 15.0 * u.ABmag), (15.0 * u.ABmag, 17.5 * u.ABmag)]:
            info = self.run(scene, exposure, {"r_eff_0": (0.1, 2.0), "flux_0": prior})
            np.testing.assert_allclose(info["samples"], ref["samples"], rtol=1e-9)

    def test_unconvertible_priors_are_refused_up_front(self, capsys):
        scene, exposure = self.scene_and_exposure()
        for prior in [(0.1 * u.m, 2 * u.m), lambda q: q * u.m]:
            with pytest.raises(InputError, match="prior of 'r_eff_0'.*arcsec"):
                self.run(scene, exposure, {"r_eff_0": prior, "flux_0": (100, 500)})
        assert "Traceback" not in capsys.readouterr().err     # refused before dynesty ran
        scene, exposure = self.scene_and_exposure(zeropoint=None)
        with pytest.raises(InputError, match="prior of 'flux_0'.*zero point"):
            self.run(scene, exposure, {"r_eff_0": (0.1, 2.0), "flux_0": (1 * u.uJy, 2 * u.uJy)})
