"""Nested sampling of astropy models: :class:`DynestyFitter`.

Nested sampling (Skilling 2004, Bayesian Analysis 1, 833) integrates the
likelihood over the prior, giving both the Bayesian evidence and weighted
posterior samples; it copes with multi-modal and degenerate posteriors where a
least-squares fit and its covariance matrix do not.  The sampling here is done
by dynesty (Speagle 2020, MNRAS 493, 3132; Koposov et al., Zenodo), an optional
dependency (``pip install dynesty``), imported only when a fit runs.
"""

import logging
import math
import numbers
import os
import threading
import time

import numpy as np
from astropy import units as u
from astropy.modeling.fitting import (
    Covariance,
    Fitter,
    StandardDeviations,
    fitter_to_model_params_array,
    model_to_fit_params,
)

from .._threads import blas_single_threaded
from ..errors import InputError
from .lsq import _Units

__all__ = ["DynestyFitter", "Posterior"]

log = logging.getLogger("astromix")

# dynesty's names (a custom dynesty Bound / InternalSampler instance is passed through)
_BOUNDS = ("none", "single", "multi", "balls", "cubes")
_SAMPLES = ("auto", "unif", "rwalk", "slice", "rslice")


def _import_dynesty():
    try:
        import dynesty
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("DynestyFitter needs dynesty: pip install dynesty "
                          "(or pip install 'astromix[all]')") from exc
    return dynesty


# -- priors -----------------------------------------------------------------------
class _UniformPrior:
    """Uniform on [low, high]: ppf(u) = low + u (high - low)."""

    def __init__(self, low, high):
        self.low, self.high = float(low), float(high)

    def __call__(self, q):
        return self.low + q * (self.high - self.low)

    def __repr__(self):
        return f"Uniform({self.low!r}, {self.high!r})"


class _FrozenPrior:
    """A scipy.stats frozen distribution truncated to the bounds [low, high]."""

    def __init__(self, dist, low, high):
        self.dist = dist
        self.c_low = float(dist.cdf(low)) if np.isfinite(low) else 0.0
        self.c_high = float(dist.cdf(high)) if np.isfinite(high) else 1.0
        if not self.c_high > self.c_low:
            raise ValueError("no prior mass inside the bounds")

    def __call__(self, q):
        return float(self.dist.ppf(self.c_low + q * (self.c_high - self.c_low)))


#: The unit of a scene's fluxes without a zero point: the exposures' data units, which
#: only bare numbers (or dimensionless Quantities) can be given in.
_DATA_UNITS = "data units"

#: Units a SceneModel's parameters are sampled in, by key (fluxes: see _scene_units).
_SCENE_UNITS = {"ra": u.deg, "dec": u.deg, "r_eff": u.arcsec, "n": u.one, "ellip": u.one,
                "theta": u.rad}


def _scene_units(model):
    """``{parameter name: unit}`` of a SceneModel's parameters as they are sampled.

    ra, dec [deg], r_eff [arcsec], theta [rad], n and ellip dimensionless; the
    fluxes in the scene's catalog unit, ``10**(-0.4 zeropoint)`` AB (3631 Jy),
    when it has a zero point, else in the exposures' data units (``_DATA_UNITS``).
    """
    zeropoint = getattr(model, "zeropoint", None)
    flux = _DATA_UNITS if zeropoint is None else u.Unit(10.0 ** (-0.4 * zeropoint) * u.AB)
    names = model.param_names
    out = {}
    for i in range(model.n_sources):
        for key, k in model.source_index(i).items():
            out[names[k]] = flux if isinstance(key, tuple) else _SCENE_UNITS.get(key)
    return out


def _prior_value(value, name, unit):
    """A prior's value (a bound, or a value of a callable prior) as a bare number in ``unit``.

    A Quantity is converted to ``unit`` (None: dimensionless; ``_DATA_UNITS``:
    dimensionless too, a scene's fluxes without a zero point); anything else is
    returned as it is, taken in ``unit``.  InputError naming the parameter if
    the units do not convert.
    """
    if not isinstance(value, u.Quantity):
        return value
    target = u.one if unit is None or unit is _DATA_UNITS else unit
    try:
        return value.to_value(target)
    except u.UnitsError as exc:
        if unit is _DATA_UNITS:
            raise InputError(f"prior of {name!r}: the scene has no zero point, so its fluxes "
                             f"are in the exposures' data units; give bare numbers, not "
                             f"{value.unit} (or give the scene a zeropoint, for fluxes in "
                             "catalog units)") from exc
        raise InputError(f"prior of {name!r}: {exc} (it is sampled in "
                         f"{'bare numbers' if unit is None else unit})") from exc


class _CallablePrior:
    """A user ppf u -> value; values outside the bounds get zero likelihood.

    A Quantity value is converted to ``unit``, the unit the parameter is
    sampled in (dimensionless when None); a bare number is taken in that unit.
    """

    def __init__(self, func, name=None, unit=None):
        self.func = func
        self.name = name
        self.unit = unit

    def __call__(self, q):
        value = _prior_value(self.func(q), self.name, self.unit)
        return float(np.ravel(value)[0]) if np.ndim(value) else float(value)


class _PriorTransform:
    """Map the unit cube to the free parameters (dynesty's ``prior_transform``)."""

    def __init__(self, priors):
        self.priors = list(priors)

    def __call__(self, cube):
        return np.array([p(q) for p, q in zip(self.priors, cube)], dtype=np.float64)


# -- likelihood ----------------------------------------------------------------------
class _LogLikelihood:
    """Gaussian log-likelihood of the data given the free parameter vector.

    ``log L = -1/2 sum (w (model - data))**2 + sum log w - N/2 log(2 pi)``,
    with ``w = 1 / sigma``.  Model values that are not finite, or parameters
    outside their bounds, give ``-inf``.
    """

    def __init__(self, model, inputs, data, weights, fit_param_indices, low, high):
        self.model = model
        self.inputs = inputs
        self.data = data
        self.weights = weights
        self.fit_param_indices = fit_param_indices
        self.low, self.high = low, high
        self.check_bounds = bool(np.any(np.isfinite(low)) or np.any(np.isfinite(high)))
        n = data.size
        logw = 0.0 if weights is None else float(np.sum(np.log(weights)))
        self.norm = logw - 0.5 * n * math.log(2 * math.pi)
        metrics = model._param_metrics
        self.reshape = (None if model.n_submodels > 1 else
                        [(metrics[n]["slice"], metrics[n]["shape"])
                         for n in model.param_names])
        # tied expressions are evaluated on the (shared) model: serialise them for thread pools
        self._lock = threading.Lock() if model.has_tied else None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.model.has_tied:
            self._lock = threading.Lock()

    def parameters(self, free):
        """Full parameter array (fixed and tied included) for a free vector."""
        free = np.asarray(free, dtype=np.float64)
        if self._lock is None:
            return fitter_to_model_params_array(self.model, free, use_min_max_bounds=False,
                                                fit_param_indices=self.fit_param_indices)
        with self._lock:
            return fitter_to_model_params_array(self.model, free, use_min_max_bounds=False,
                                                fit_param_indices=self.fit_param_indices)

    def __call__(self, free):
        if self.check_bounds and (np.any(free < self.low) or np.any(free > self.high)):
            return -np.inf
        params = self.parameters(free)
        if self.reshape is not None:
            params = [params[s].reshape(shape) for s, shape in self.reshape]
        with np.errstate(all="ignore"):
            model = self.model.evaluate(*self.inputs, *params)
            resid = np.ravel(model) - self.data
            if self.weights is not None:
                resid = resid * self.weights
            chi2 = float(np.dot(resid, resid))
        if not math.isfinite(chi2):
            return -np.inf
        return -0.5 * chi2 + self.norm


class _ObjectiveLogLikelihood(_LogLikelihood):
    """Gaussian log-likelihood ``-chi2 / 2 + const`` from a chi2 objective (a scene).

    The constant, ``sum log(sqrt(w)) - N/2 log(2 pi)`` over the unmasked pixels
    (w the inverse variances), makes ``log Z`` a normalised evidence.
    """

    def __init__(self, model, objective, fit_param_indices, low, high):
        self.model = model
        self.objective = objective
        self.fit_param_indices = fit_param_indices
        self.low, self.high = low, high
        self.check_bounds = bool(np.any(np.isfinite(low)) or np.any(np.isfinite(high)))
        norm = 0.0
        for e in objective.exposures:
            w = np.asarray(e.weight, dtype=np.float64)
            w = w[w > 0]
            norm += 0.5 * float(np.sum(np.log(w))) - 0.5 * w.size * math.log(2 * math.pi)
        self.norm = norm
        self._lock = threading.Lock() if model.has_tied else None

    def __call__(self, free):
        if self.check_bounds and (np.any(free < self.low) or np.any(free > self.high)):
            return -np.inf
        with np.errstate(all="ignore"):
            chi2 = float(self.objective(self.parameters(free), gradient=False))
        if not math.isfinite(chi2):
            return -np.inf
        return -0.5 * chi2 + self.norm


class Posterior:
    """Posterior samples of a nested-sampling fit, with a summary and a corner plot.

    Built by :class:`DynestyFitter` (``fit_info["posterior"]``) and returned by
    :func:`astromix.fitting.sample_scene`.

    Parameters
    ----------
    info : dict
        A :attr:`DynestyFitter.fit_info`: its ``param_names``, ``samples``,
        ``weighted_samples``, ``weights``, ``logz``, ``logz_err``, ``best`` and
        ``results`` are kept as the attributes of the same names (the arrays
        not copied).
    model : astropy model
        The model at the highest-likelihood sample.

    Attributes
    ----------
    param_names : list of str
        Free parameter names, the columns of the sample arrays.
    samples : ndarray, shape (n, n_free)
        Equal-weight posterior samples.
    weighted_samples : ndarray, shape (m, n_free)
        Every dead and live point of the run.
    weights : ndarray, shape (m,)
        Normalised importance weights of ``weighted_samples`` (sum 1).
    logz, logz_err : float
        Natural log of the evidence and its uncertainty.
    best : dict
        ``{name: value}`` at the highest-likelihood sample.
    model : astropy model
        The model at the highest-likelihood sample.
    results : dynesty Results
        The raw run.
    """

    def __init__(self, info, model):
        self.param_names = list(info["param_names"])
        self.samples = info["samples"]
        self.weighted_samples = info["weighted_samples"]
        self.weights = info["weights"]
        self.logz = info["logz"]
        self.logz_err = info["logz_err"]
        self.best = dict(info["best"])
        self.results = info["results"]
        self.model = model

    def __repr__(self):
        return (f"<Posterior: {len(self.param_names)} parameters, {len(self.samples)} "
                f"equal-weight samples, log Z = {self.logz:.2f} +/- {self.logz_err:.2f}>")

    def _columns(self, params):
        if params is None:
            return list(range(len(self.param_names)))
        missing = [p for p in params if p not in self.param_names]
        if missing:
            raise InputError(f"unknown parameter(s) {missing}; the posterior has "
                             f"{self.param_names}")
        return [self.param_names.index(p) for p in params]

    def summary(self):
        """One row per parameter: best, mean, std, median and the 16th/84th percentiles.

        Returns
        -------
        astropy.table.Table
            Columns ``name``, ``best``, ``mean``, ``std``, ``median``, ``q16``, ``q84``
            (weighted quantiles of the weighted samples).
        """
        from astropy.table import Table
        w = self.weights
        mean = w @ self.weighted_samples
        std = np.sqrt(w @ (self.weighted_samples - mean) ** 2)
        rows = []
        for i, name in enumerate(self.param_names):
            x = self.weighted_samples[:, i]
            order = np.argsort(x)
            cdf = np.cumsum(w[order])
            q16, q50, q84 = np.interp([0.16, 0.5, 0.84], cdf, x[order])
            rows.append((name, self.best[name], mean[i], std[i], q50, q16, q84))
        return Table(rows=rows, names=("name", "best", "mean", "std", "median", "q16", "q84"))

    def corner(self, params=None, *, fig=None, labels=None, truths=None, color=None, **kwargs):
        """Corner plot of the (weighted) posterior with the ``corner`` package.

        Parameters
        ----------
        params : list of str, optional
            Parameters to show (default: all).
        fig : matplotlib.figure.Figure, optional
            Draw over an existing corner plot (to compare posteriors).
        labels : list of str, optional
            Axis labels (default: the parameter names).
        truths : dict or sequence, optional
            Values to mark, by name or in the order of ``params``.
        color : str, optional
        **kwargs
            Passed to :func:`corner.corner`.

        Returns
        -------
        matplotlib.figure.Figure

        Raises
        ------
        InputError
            For an unknown parameter name.
        ImportError
            Without the ``corner`` package.
        """
        import corner
        cols = self._columns(params)
        names = [self.param_names[i] for i in cols]
        if isinstance(truths, dict):
            truths = [truths.get(n) for n in names]
        kwargs.setdefault("plot_datapoints", False)
        kwargs.setdefault("levels", (0.393, 0.865))
        return corner.corner(self.weighted_samples[:, cols], weights=self.weights, fig=fig,
                             labels=labels or names, truths=truths, color=color, **kwargs)


# -- the fitter ------------------------------------------------------------------------
class DynestyFitter(Fitter):
    """Fit an astropy model by nested sampling with dynesty.

    An astropy-style fitter: calling it with a model and data returns a fitted
    copy of the model and fills :attr:`fit_info` with the posterior.  Nested
    sampling (Skilling 2004) draws from the prior inside rising likelihood
    contours, yielding the evidence ``Z`` and weighted posterior samples; the
    implementation is dynesty's static sampler (Speagle 2020).

    Parameters
    ----------
    nlive : int, optional
        Number of live points.  More points sample the posterior more densely
        and estimate ``log Z`` more precisely; the cost grows linearly.
    bound : {'multi', 'single', 'balls', 'cubes', 'none'}, optional
        dynesty's bounding distribution (``'multi'``: multiple ellipsoids).
    sample : str, optional
        dynesty's sampling method (``'auto'``, ``'unif'``, ``'rwalk'``,
        ``'slice'``, ``'rslice'``).
    dlogz : float, optional
        Stop when the estimated remaining evidence is below ``dlogz`` (in log).
    rng : numpy.random.Generator or int, optional
        Randomness (dynesty's ``rstate``, and the resampling of the equal-weight
        samples).  An int seeds a fresh Generator at every call, so repeated
        calls give identical results; a Generator is used, and advanced, as is.
        ``None`` draws fresh entropy.
    progress : bool, optional
        Show dynesty's progress line (on stderr).
    pool : object with ``map``, optional
        Evaluate likelihoods in parallel: a ``multiprocessing.Pool``,
        ``dynesty.pool.Pool``, or a :class:`concurrent.futures.Executor`; its
        size sets dynesty's ``queue_size``.  Process pools pickle the model,
        data and priors to the workers (so no lambdas there); with small
        models the pickling and dispatch often cost more than they save.

    Attributes
    ----------
    fit_info : dict or None
        Filled by a call (``None`` before).  Keys:

        ``results``
            the dynesty ``Results``;
        ``param_names``
            the free parameter names, in the order of the sample columns;
        ``samples``
            equal-weight posterior samples, shape (n, n_free);
        ``weighted_samples``, ``weights``
            every dead and live point, shape (m, n_free), and its normalised
            importance weight, shape (m,) summing to 1;
        ``logl``
            the log-likelihood of each weighted sample, shape (m,);
        ``logz``, ``logz_err``
            natural log of the evidence and its uncertainty;
        ``best``
            ``{name: value}`` at the highest-likelihood sample (the values set
            on the returned model); ``max_logl`` its log-likelihood;
        ``mean``, ``std``
            ``{name: value}``, posterior mean and standard deviation;
        ``cov``
            posterior covariance, shape (n_free, n_free);
        ``ncall``, ``niter``, ``time_s``
            likelihood calls, iterations and wall time [s].

    Raises
    ------
    InputError
        If ``nlive`` is not an integer >= 2, ``bound`` or ``sample`` is not
        one of dynesty's names (or a dynesty object), ``dlogz`` is not a
        finite number > 0, ``rng`` is neither a Generator, an int nor None, or
        ``pool`` has no ``map`` method.  At a call, if ``nlive <= 2 * n_free``
        for ``n_free`` free parameters: dynesty only warns, but its ellipsoid
        bounds need more live points than that and a run can stall.

    Notes
    -----
    *Free parameters* are those neither fixed nor tied; tied parameters are
    recomputed from the others at every proposal, as astropy's fitters do.

    *Likelihood*: Gaussian, with astropy's convention that ``weights`` are
    ``1 / sigma`` (uniform unit weights when ``None``)::

        log L = -1/2 sum (weights * (model(x, y) - z))**2
                + sum log(weights) - N/2 log(2 pi)

    The constant terms make ``logz`` a normalised evidence; they do not change
    the posterior.  Pixels with zero weight are left out (so may hold NaN);
    non-finite model values give zero likelihood.

    *Priors*: uniform within each free parameter's ``bounds`` by default.
    ``priors`` maps parameter names to a ``(low, high)`` tuple or list
    (uniform; may be Quantities, or a Quantity of two values), a frozen
    :mod:`scipy.stats` distribution (sampled through its ``ppf``) or any
    callable ``u -> value`` mapping [0, 1] to the
    parameter (a ppf).  Bounds always apply: a tuple is intersected with
    them, a scipy distribution is truncated to them, and a callable's values
    outside them get zero likelihood.

    *Units*: data and models with units are handled as by astropy's fitters
    (parameters are converted to the units the data give them and stripped
    for the sampling; angles such as ``theta`` are sampled in radians, also
    when the data are bare numbers, and the fitted model gets its own units
    back then); samples, ``best``, ``mean`` and ``std`` are then plain numbers
    in those units.  Priors given as Quantities (tuples, or values returned by
    a callable) and the parameters' ``bounds`` are converted to them; plain
    numbers in priors are taken in them.  A
    :class:`~astromix.SceneModel` is sampled in its parameters' units: ``ra``,
    ``dec`` [deg], ``r_eff`` [arcsec], ``theta`` [rad], and the fluxes in its
    catalog unit when it has a ``zeropoint`` (``10**(-0.4 zeropoint)`` times
    the AB zero point, 3631 Jy: priors in any flux-density unit, or in AB
    magnitudes (a pair in either order), convert), else in the exposures'
    data units (bare numbers only).  A callable's value is converted at every
    call, after a first call (at 0.5) that refuses units that do not convert
    before the sampling starts.

    The fitted model gets ``cov_matrix`` and ``stds`` from the posterior, like
    the models returned by astropy's least-squares fitters, and a ``fit_info``
    attribute (the same dict as the fitter's).

    Examples
    --------
    .. doctest-requires:: dynesty

        >>> import numpy as np
        >>> from astropy.modeling.models import Const1D
        >>> from astromix.fitting.nested import DynestyFitter
        >>> rng = np.random.default_rng(1)
        >>> x = np.arange(100.0)
        >>> y = 3.0 + rng.normal(0, 0.5, x.size)
        >>> fitter = DynestyFitter(nlive=50, rng=2)
        >>> fitted = fitter(Const1D(1.0), x, y, weights=2.0, priors={"amplitude": (0, 10)})
        >>> info = fitter.fit_info
        >>> info["param_names"], info["samples"].shape[1]
        (['amplitude'], 1)
        >>> bool(abs(info["mean"]["amplitude"] - y.mean()) < 3 * 0.05)
        True
    """

    supported_constraints = ["bounds", "fixed", "tied"]

    def __init__(self, *, nlive=250, bound="multi", sample="auto", dlogz=0.05, rng=None,
                 progress=False, pool=None):
        if not isinstance(nlive, numbers.Integral) or nlive < 2:
            raise InputError(f"nlive must be an integer >= 2, got {nlive!r}")
        for label, value, names in (("bound", bound, _BOUNDS), ("sample", sample, _SAMPLES)):
            known = (value in names if isinstance(value, str)
                     else not (value is None or isinstance(value, numbers.Number)))
            if not known:
                raise InputError(f"{label} must be one of {', '.join(map(repr, names))} (or a "
                                 f"dynesty object), got {value!r}")
        if not (isinstance(dlogz, numbers.Real) and not isinstance(dlogz, bool)
                and math.isfinite(dlogz) and dlogz > 0):
            raise InputError(f"dlogz must be a finite number > 0, got {dlogz!r}")
        if not (rng is None or isinstance(rng, np.random.Generator | numbers.Integral)):
            raise InputError("rng must be a numpy Generator, an int or None")
        if pool is not None and not callable(getattr(pool, "map", None)):
            raise InputError("pool must have a map method (a Pool or an Executor)")
        self.nlive = int(nlive)
        self.bound = bound
        self.sample = sample
        self.dlogz = float(dlogz)
        self.rng = rng
        self.progress = bool(progress)
        self.pool = pool
        self.fit_info = None

    def __repr__(self):
        return (f"{type(self).__name__}(nlive={self.nlive}, bound={self.bound!r}, "
                f"sample={self.sample!r}, dlogz={self.dlogz})")

    @blas_single_threaded
    def __call__(self, model, x, y=None, z=None, weights=None, *, priors=None, maxcall=None,
                 equivalencies=None, **objective_kwargs):
        """Sample the posterior of ``model``'s free parameters given the data.

        Parameters
        ----------
        model : astropy.modeling.FittableModel
            A single model (not a model set) with one output and one input
            (``x -> y``) or two inputs (``x, y -> z``); compound models work.
            Or a :class:`~astromix.SceneModel`, sampled against the exposures
            given as ``x`` (with the likelihood of the summed chi2 of
            :meth:`~astromix.SceneModel.chi2`).  Not modified.
        x, y : array_like or Quantity
            Input coordinates; for a 1-D model ``y`` is the data.  For a scene,
            ``x`` is the list of exposures and ``y`` is not given.
        z : array_like or Quantity, optional
            The data, for a 2-D model; broadcast with ``x`` and ``y``.
        weights : array_like, optional
            ``1 / sigma`` per data point (same units as ``1 / data``), broadcast
            with the data; zero weights mask points.  Unit weights if ``None``.
        priors : dict, optional
            ``{name: prior}`` for free parameters, a prior being a ``(low,
            high)`` tuple or list (numbers in the sampled units, or
            Quantities), a frozen scipy.stats distribution or a callable ppf
            (see the class notes, also for the units of a scene's
            parameters).  Needed for every free parameter with an infinite
            bound.
        maxcall : int, optional
            Stop after about this many likelihood calls (dynesty warns that the
            run stopped short of ``dlogz``).
        equivalencies : list, optional
            Extra unit equivalencies for inputs with units (as astropy fitters).
        background, dtype, backend : optional
            Keywords for a scene only (see :meth:`astromix.SceneModel.chi2`).

        Returns
        -------
        fitted : astropy.modeling.FittableModel
            A copy of ``model`` with the free parameters at the highest-likelihood
            posterior sample (tied ones recomputed), ``cov_matrix`` / ``stds``
            from the posterior and ``fit_info``.

        Raises
        ------
        InputError
            Model not fittable, a model set, wrong number of inputs/outputs,
            equality/inequality constraints; no free parameter; unknown or
            non-free names in ``priors``, a bad prior, a free parameter with an
            infinite bound and no prior; mismatched shapes, negative or
            non-finite weights, non-finite data with non-zero weight, no data;
            units that do not convert (of the model and data, a parameter's
            bounds, a prior's values).
        ImportError
            If dynesty is not installed.
        """
        dynesty = _import_dynesty()
        if hasattr(model, "_objective_for"):
            if y is not None or z is not None or weights is not None or equivalencies:
                raise InputError(f"{type(model).__name__} is sampled against exposures: "
                                 "fitter(model, exposures, priors=...)")
            return self._fit_objective(model, x, priors=dict(priors or {}), maxcall=maxcall,
                                       dynesty=dynesty, objective_kwargs=objective_kwargs)
        if objective_kwargs:
            raise InputError(f"unexpected keyword(s) {sorted(objective_kwargs)}")
        if y is None:
            raise InputError("DynestyFitter needs the data (y, or x, y and z)")
        self._validate(model, z)
        units = _Units(model, x, y, z, equivalencies)
        prior_units = {name: units.unit(name) for name in model.param_names}
        priors = self._strip_prior_units(dict(priors or {}), prior_units)
        fitted = units.run(DynestyFitter._fit, self, weights=units.weights(weights),
                           priors=priors, maxcall=maxcall, dynesty=dynesty,
                           prior_units=prior_units)
        fitted.fit_info = self.fit_info
        return fitted

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _validate(model, z):
        if not getattr(model, "fittable", False):
            raise InputError("DynestyFitter needs a fittable astropy model")
        if len(model) != 1:
            raise InputError("DynestyFitter fits a single model, not a model set")
        if model.n_outputs != 1 or model.n_inputs not in (1, 2):
            raise InputError("DynestyFitter fits models x -> y or (x, y) -> z; this one has "
                             f"{model.n_inputs} inputs and {model.n_outputs} outputs")
        if (z is None) != (model.n_inputs == 1):
            raise InputError(f"a model with {model.n_inputs} input(s) needs "
                             + ("x, y and z" if model.n_inputs == 2 else "x and y only"))
        if getattr(model, "eqcons", None) or getattr(model, "ineqcons", None):
            raise InputError("DynestyFitter does not support eqcons/ineqcons constraints")

    @staticmethod
    def _strip_prior_units(priors, prior_units):
        """``priors`` with (low, high) bounds as bare numbers in the sampled units.

        Parameters
        ----------
        priors : dict
            ``{name: prior}`` as given; ``(low, high)`` tuples or lists (of
            numbers or Quantities) and Quantity arrays of two values are
            converted (a pair of magnitudes, in either order, to the fluxes
            from faint to bright), other priors (and unknown names, refused
            later) kept.
        prior_units : dict
            ``{name: unit}`` the parameters are sampled in (None:
            dimensionless; ``_DATA_UNITS``: a scene's fluxes without a zero point).

        Returns
        -------
        dict
            The bounds as a tuple of bare numbers.

        Raises
        ------
        InputError
            If a Quantity does not convert to the parameter's unit.
        """
        out = {}
        for name, prior in priors.items():
            if name not in prior_units or not (
                    isinstance(prior, tuple | list)
                    or (isinstance(prior, u.Quantity) and prior.ndim == 1)):
                out[name] = prior
                continue
            unit = prior_units[name]
            values = tuple(_prior_value(b, name, unit) for b in prior)
            if len(values) == 2 and all(isinstance(b, u.Magnitude) for b in prior):
                values = tuple(sorted(values))      # (faint, bright) or (bright, faint)
            out[name] = values
        return out

    @staticmethod
    def _build_priors(model, free_names, priors, prior_units=None):
        unknown = [n for n in priors if n not in model.param_names]
        if unknown:
            raise InputError(f"priors given for unknown parameter(s) {unknown}; the model "
                             f"has {list(model.param_names)}")
        not_free = [n for n in priors if n not in free_names]
        if not_free:
            raise InputError(f"priors given for fixed or tied parameter(s) {not_free}")
        out, lows, highs = [], [], []
        for name in free_names:
            lo, hi = model.bounds[name]
            lo = -np.inf if lo is None else float(np.squeeze(getattr(lo, "value", lo)))
            hi = np.inf if hi is None else float(np.squeeze(getattr(hi, "value", hi)))
            lows.append(lo)
            highs.append(hi)
            prior = priors.get(name)
            if prior is None:
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise InputError(f"parameter {name!r} has an infinite bound "
                                     f"({lo}, {hi}); give it a prior")
                out.append(_UniformPrior(lo, hi))
            elif isinstance(prior, tuple | list):
                if len(prior) != 2:
                    raise InputError(f"prior of {name!r}: a tuple must be (low, high)")
                try:
                    plo, phi = (float(v) for v in prior)
                except (TypeError, ValueError) as exc:
                    raise InputError(f"prior of {name!r}: {exc}") from exc
                plo, phi = max(plo, lo), min(phi, hi)
                if not (np.isfinite(plo) and np.isfinite(phi) and phi > plo):
                    raise InputError(f"prior of {name!r}: ({prior[0]}, {prior[1]}) must be "
                                     f"finite, increasing and overlap the bounds ({lo}, {hi})")
                out.append(_UniformPrior(plo, phi))
            elif callable(getattr(prior, "ppf", None)) and callable(getattr(prior, "cdf", None)):
                try:
                    out.append(_FrozenPrior(prior, lo, hi))
                except ValueError as exc:
                    raise InputError(f"prior of {name!r}: {exc} ({lo}, {hi})") from exc
            elif callable(prior):
                func = _CallablePrior(prior, name, (prior_units or {}).get(name))
                func(0.5)   # units that do not convert: InputError here, not inside dynesty
                out.append(func)
            else:
                raise InputError(f"prior of {name!r} must be a (low, high) tuple, a scipy.stats "
                                 f"frozen distribution or a callable, got {type(prior).__name__}")
        return out, np.array(lows), np.array(highs)

    @staticmethod
    def _prepare_data(model, x, y, z, weights):
        inputs = (x,) if z is None else (x, y)
        data = y if z is None else z
        try:
            arrays = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64)
                                           for a in (*inputs, data)])
            if weights is not None:
                w = np.broadcast_to(np.asarray(weights, dtype=np.float64), arrays[-1].shape)
        except ValueError as exc:
            raise InputError(f"inputs, data and weights do not broadcast: {exc}") from exc
        # the inputs keep their shape while nothing is masked, so that a model can
        # recognise a pixel grid (GaussianMixturePSF then renders with the backend kernel)
        inputs, data = [np.ascontiguousarray(a) for a in arrays[:-1]], arrays[-1].ravel()
        if weights is not None:
            w = w.ravel()
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise InputError("weights (1/sigma) must be finite and >= 0")
            use = w > 0
            if not use.all():
                inputs, data, w = [a.ravel()[use] for a in inputs], data[use], w[use]
            if np.all(w == 1):
                w = None
        else:
            w = None
        if data.size == 0:
            raise InputError("no data to fit (empty, or every weight is zero)")
        for label, a in zip(("x", "y", "data")[:len(inputs)] + ("data",), (*inputs, data)):
            if not np.all(np.isfinite(a)):
                raise InputError(f"{label} has non-finite values where the weight is non-zero; "
                                 "mask them with weights=0")
        return inputs, data, w

    def _generator(self):
        if isinstance(self.rng, np.random.Generator):
            return self.rng
        return np.random.default_rng(self.rng)

    def _queue_size(self):
        for attr in ("_processes", "size", "_max_workers"):
            n = getattr(self.pool, attr, None)
            if isinstance(n, numbers.Integral) and n > 0:
                return int(n)
        return os.cpu_count() or 1

    def _fit(self, model, x, y, z=None, *, weights, priors, maxcall, dynesty, prior_units=None):
        """The sampling proper, on unit-free model and data."""
        model = model.copy()
        model.sync_constraints = False
        _, fit_param_indices, _ = model_to_fit_params(model)
        free_names = [model.param_names[i] for i in fit_param_indices]
        if not free_names:
            raise InputError("the model has no free parameter (all fixed or tied)")
        prior_list, low, high = self._build_priors(model, free_names, priors, prior_units)
        inputs, data, w = self._prepare_data(model, x, y, z, weights)
        loglike = _LogLikelihood(model, inputs, data, w, fit_param_indices, low, high)
        return self._run(model, loglike, _PriorTransform(prior_list), free_names, maxcall,
                         dynesty)

    def _fit_objective(self, model, data, *, priors, maxcall, dynesty, objective_kwargs):
        """Sampling of a model whose likelihood comes from a chi2 objective (a scene)."""
        model = model.copy()
        model.sync_constraints = False
        _, fit_param_indices, _ = model_to_fit_params(model)
        free_names = [model.param_names[i] for i in fit_param_indices]
        if not free_names:
            raise InputError("the model has no free parameter (all fixed or tied)")
        prior_units = _scene_units(model) if hasattr(model, "source_index") else {}
        priors = self._strip_prior_units(priors, prior_units)
        prior_list, low, high = self._build_priors(model, free_names, priors, prior_units)
        objective = model._objective_for(data, **objective_kwargs)
        loglike = _ObjectiveLogLikelihood(model, objective, fit_param_indices, low, high)
        fitted = self._run(model, loglike, _PriorTransform(prior_list), free_names, maxcall,
                           dynesty)
        self.fit_info["objective"] = objective
        fitted.fit_info = self.fit_info
        return fitted

    def _run(self, model, loglike, transform, free_names, maxcall, dynesty):
        """Run dynesty and fill :attr:`fit_info`; returns the model at the best sample."""
        rng = self._generator()
        ndim = len(free_names)
        if self.nlive <= 2 * ndim:
            # dynesty only warns; its ellipsoid bounds need more than 2 ndim live
            # points, and with fewer a run can stall for hours
            raise InputError(
                f"nlive = {self.nlive} live points are too few for {ndim} free "
                f"parameters: nested sampling needs nlive > 2 * {ndim} = {2 * ndim} "
                f"(dynesty's ellipsoids stall otherwise); use nlive >= {2 * ndim + 1}, "
                f"or better several times more")

        start = time.perf_counter()
        pool_kwargs = ({} if self.pool is None else
                       {"pool": self.pool, "queue_size": self._queue_size()})
        sampler = dynesty.NestedSampler(loglike, transform, ndim, nlive=self.nlive,
                                        bound=self.bound, sample=self.sample, rstate=rng,
                                        **pool_kwargs)
        run_kwargs = {"dlogz": self.dlogz, "print_progress": self.progress}
        if maxcall is not None:
            run_kwargs["maxcall"] = int(maxcall)
        sampler.run_nested(**run_kwargs)
        elapsed = time.perf_counter() - start
        results = sampler.results

        weighted = np.asarray(results.samples)
        logl = np.asarray(results.logl)
        wts = np.asarray(results.importance_weights())
        wts = wts / wts.sum()
        equal = np.asarray(results.samples_equal(rstate=rng))
        mean = wts @ weighted
        dev = weighted - mean
        cov = np.atleast_2d((dev * wts[:, None]).T @ dev)
        std = np.sqrt(np.diag(cov))
        ibest = int(np.argmax(logl))
        best = weighted[ibest]

        model.parameters = loglike.parameters(best)
        model.sync_constraints = True
        model.cov_matrix = Covariance(cov, free_names)
        model.stds = StandardDeviations(cov, free_names)
        ncall = int(getattr(sampler, "ncall", np.sum(results.ncall)))
        self.fit_info = {
            "results": results,
            "param_names": free_names,
            "samples": equal,
            "weighted_samples": weighted,
            "weights": wts,
            "logl": logl,
            "logz": float(results.logz[-1]),
            "logz_err": float(results.logzerr[-1]),
            "best": dict(zip(free_names, best.tolist())),
            "max_logl": float(logl[ibest]),
            "mean": dict(zip(free_names, mean.tolist())),
            "std": dict(zip(free_names, std.tolist())),
            "cov": cov,
            "ncall": ncall,
            "niter": int(results.niter),
            "time_s": elapsed,
        }
        self.fit_info["posterior"] = Posterior(self.fit_info, model)
        log.info("DynestyFitter: %d free parameters, %d likelihood calls in %.2f s, "
                 "log Z = %.3f +/- %.3f", ndim, ncall, elapsed, self.fit_info["logz"],
                 self.fit_info["logz_err"])
        return model
