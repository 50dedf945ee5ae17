"""MixtureLSQFitter: least squares for astromix models with their analytic Jacobians."""

import contextlib
import time
import warnings

import numpy as np
from astropy import units as u
from astropy.modeling import CompoundModel, Model
from astropy.modeling.fitting import (
    Covariance,
    StandardDeviations,
    fitter_to_model_params,
    fitter_unit_support,
    model_to_fit_params,
)
from scipy import optimize

from .._threads import blas_single_threaded
from ..errors import InputError
from ..models._base import grid_origin
from ..models.scene import SceneWarning
from ..settings import AccuracySettings

__all__ = ["MixtureLSQFitter"]


def _gram(at, r):
    # (at at^T, at r) for at (P, N) C-contiguous float64 and r (N,): J^T J and J^T r
    npar, n = at.shape
    a = np.empty((npar, npar))
    g = np.empty(npar)
    for i in range(npar):
        for j in range(i + 1):
            s = 0.0
            for m in range(n):
                s += at[i, m] * at[j, m]
            a[i, j] = s
            a[j, i] = s
        s = 0.0
        for m in range(n):
            s += at[i, m] * r[m]
        g[i] = s
    return a, g


try:
    import numba
except ImportError:                                    # pragma: no cover - numba is optional
    _gram_compiled = None
else:
    _gram_compiled = numba.njit(cache=True, nogil=True, fastmath=True,
                                error_model="numpy")(_gram)


def _normal_equations(jac, r):
    """``(J^T J, J^T r)`` of a Jacobian ``jac`` (N, P) and residuals ``r`` (N,), float64.

    With Numba, and ``jac`` the transpose of a C-contiguous (P, N) array (as
    the grid fit's evaluation gives), one compiled pass of dot products:
    OpenBLAS took ~36 us for the (7, 4096) x (4096, 7) product of a 64 x 64
    Sersic fit, the compiled sums ~11 us.  Otherwise NumPy's ``@`` (BLAS).
    """
    at = jac.T
    if (_gram_compiled is not None and at.flags.c_contiguous and at.dtype == np.float64
            and r.dtype == np.float64):
        return _gram_compiled(at, r)
    return at @ jac, at @ r


def _sum_terms(model, sign=1.0):
    """Leaves of a compound model made of + and - only, with their signs (else None)."""
    if not isinstance(model, CompoundModel):
        return [(model, sign)]
    if model.op not in ("+", "-"):
        return None
    left = _sum_terms(model.left, sign)
    right = _sum_terms(model.right, sign if model.op == "+" else -sign)
    if left is None or right is None:
        return None
    return left + right


def _leaf_numerical_derivs(leaf, x, y):
    """Central differences of one leaf model with respect to its parameters."""
    p0 = np.array(leaf.parameters, dtype=np.float64)
    out = []
    for i in range(p0.size):
        h = 1e-6 * max(1.0, abs(p0[i]))
        p = p0.copy()
        p[i] += h
        up = leaf.evaluate(x, y, *p)
        p[i] -= 2 * h
        down = leaf.evaluate(x, y, *p)
        out.append((np.asarray(up) - np.asarray(down)) / (2 * h))
    return out


def _analytic_jacobian(model):
    """(jac, kind): jac(x, y) -> d model / d parameter for every parameter, or (None, None).

    ``kind`` is ``"analytic"`` when every part has ``fit_deriv`` and
    ``"partial"`` when parts without it (e.g. astropy's ``Const2D``) are
    differentiated numerically; ``None`` for compound models with operators
    other than + and -.  A part with astropy's ``col_fit_deriv = False``
    (e.g. ``Polynomial2D``, whose ``fit_deriv`` gives (n_points, n_params) on
    the flattened inputs) has its columns reshaped to the inputs' shape.
    """
    terms = _sum_terms(model)
    if terms is None:
        return None, None
    missing = any(getattr(leaf, "fit_deriv", None) is None for leaf, _ in terms)

    def jac(x, y):
        shape = np.broadcast(x, y).shape
        size = int(np.prod(shape))
        out = []
        for leaf, sign in terms:
            if getattr(leaf, "fit_deriv", None) is None:
                derivs = _leaf_numerical_derivs(leaf, x, y)
            else:
                npar = len(leaf.parameters)
                derivs = leaf.fit_deriv(x, y, *leaf.parameters)
                if not (getattr(leaf, "col_fit_deriv", True) and len(derivs) == npar):
                    # astropy's col_fit_deriv=False convention: (n_points, n_params)
                    derivs = np.reshape(np.asarray(derivs, dtype=np.float64), (-1, npar)).T
            for d in derivs:
                d = np.asarray(d, dtype=np.float64)
                # a column of every point (possibly flattened) takes the inputs' shape;
                # a scalar (a derivative constant over the points) is broadcast
                d = np.reshape(d, shape) if d.size == size else np.broadcast_to(d, shape)
                out.append(sign * d)
        return out

    return jac, ("partial" if missing else "analytic")


def _tied_derivatives(full, p, tied, lo, hi, rel_step):
    """d (tied parameter values) / d (free values) at ``p``, shape (len(tied), len(p)).

    Central differences of the tied expressions, of step ``rel_step * max(|p|,
    1e-3)``, one-sided at a bound.  ``full(p)`` sets the model's free values and
    returns its whole parameter vector; the model is left at ``p``.  Serves the
    pixel fits' Jacobian and the scene fits' gradient (:meth:`_FreeToFull.gradient`).
    """
    out = np.empty((len(tied), p.size))
    for j in range(p.size):
        h = rel_step * max(abs(p[j]), 1e-3)
        up, down = p.copy(), p.copy()
        up[j] = min(p[j] + h, hi[j])
        down[j] = max(p[j] - h, lo[j])
        width = up[j] - down[j]
        out[:, j] = (full(up)[tied] - full(down)[tied]) / width if width > 0 else 0.0
    full(p)
    return out


class _Units:
    """Units of a fit: the model and data stripped for the optimiser, then put back.

    astropy's :func:`~astropy.modeling.fitting.fitter_unit_support` (parameters
    converted to the units the data give them, e.g. a flux to the data's unit
    and ``theta`` to radians, then stripped), extended in two ways:

    - a model with units fitted to bare data (e.g. ``theta`` in degrees) is
      fitted with the data taken as dimensionless, so that angles are fitted
      in radians, and its parameters are converted back to their original
      units afterwards (astropy's decorator would hand the degrees to the
      model's ``evaluate`` and derivatives, which read bare numbers as radians);
    - the ``bounds`` of a parameter with a unit are converted with its value
      (astropy leaves them in the old unit).

    Parameters
    ----------
    model : astropy model
    x, y, z : array-like or Quantity
        As given to the fitter (``z`` None for a 1-input model).
    equivalencies : list, optional

    Raises
    ------
    InputError
        If the model does not support fitting with units, or the units of the
        model, the data and the parameters' bounds do not convert.
    """

    def __init__(self, model, x, y, z, equivalencies=None):
        self.model = model
        self.equivalencies = equivalencies
        self.data_has_units = any(isinstance(a, u.Quantity) for a in (x, y, z))
        self.active = self.data_has_units or bool(model._has_units)
        self.data = (x, y, z)
        self.data_unit = getattr(z if z is not None else y, "unit", None)
        self.fit_units = {}
        self.bounds = {}
        if not self.active:
            return
        if not self.data_has_units:
            self.data = tuple(None if a is None else u.Quantity(np.asarray(a, dtype=np.float64))
                              for a in (x, y, z))

        def identity(fitter, m, *args, **kwargs):
            return m

        try:
            probe = fitter_unit_support(identity)(None, model, *self.data,
                                                  equivalencies=equivalencies)
        except NotImplementedError as exc:
            raise InputError(f"{type(model).__name__}: {exc}") from exc
        except u.UnitsError as exc:
            raise InputError(f"the units of the model and the data do not match: {exc}") from exc
        for name in model.param_names:
            unit = getattr(probe, name).unit
            self.fit_units[name] = unit
            param = getattr(model, name)
            if param.unit is None or unit is None or param.unit == unit or param.bounds == (
                    None, None):
                continue
            try:
                self.bounds[name] = tuple(
                    None if b is None else float(u.Quantity(b, param.unit).to_value(
                        unit, equivalencies=equivalencies or []))
                    for b in param.bounds)
            except u.UnitsError as exc:
                raise InputError(f"bounds of {name!r}: {exc}") from exc

    def unit(self, name):
        """The unit ``name`` is fitted in (None: a bare number)."""
        return self.fit_units.get(name) or getattr(self.model, name).unit

    def weights(self, weights):
        """``weights`` (1 / sigma) as bare numbers in 1 / (the data's unit)."""
        if not isinstance(weights, u.Quantity):
            return weights
        unit = self.data_unit
        try:
            return weights.to_value(1 / unit) if unit is not None else weights.value
        except u.UnitsError as exc:
            raise InputError(f"weights must be in 1 / (the data's unit): {exc}") from exc

    def run(self, func, fitter, **kwargs):
        """``func(fitter, model, x, y[, z], **kwargs)`` on unit-free values; units put back."""
        if not self.active:  # no unit anywhere: astropy's unit wrapper costs ~50 us a fit
            return func(fitter, self.model, *self.data, **kwargs)
        bounds = self.bounds

        def stripped(fitter, model, *data, **kw):
            for name, b in bounds.items():
                getattr(model, name).bounds = b
            return func(fitter, model, *data, **kw)

        try:
            fitted = fitter_unit_support(stripped)(fitter, self.model, *self.data,
                                                   equivalencies=self.equivalencies, **kwargs)
        except NotImplementedError as exc:
            raise InputError(f"{type(self.model).__name__}: {exc}") from exc
        if self.active and not self.data_has_units:
            self._restore(fitted)
        return fitted

    def _restore(self, fitted):
        # bare data: back to the units the parameters were given in (bare numbers for
        # none: dimensionless, or radians for an angle, as a bare theta means)
        for name in self.model.param_names:
            orig = getattr(self.model, name).unit
            param = getattr(fitted, name)
            if param.unit == orig:
                continue
            if orig is None or param.unit is None:
                param._set_unit(orig, force=True)
                continue
            fit_unit, bounds = param.unit, param.bounds
            value = param.quantity.to_value(orig)
            param._set_unit(orig, force=True)
            param.value = value
            if bounds != (None, None):
                param.bounds = tuple(None if b is None else
                                     float(u.Quantity(b, fit_unit).to_value(orig))
                                     for b in bounds)


class MixtureLSQFitter:
    """Weighted least squares for astromix models, with analytic Jacobians.

    An astropy-style fitter: ``fitter(model, x, y, z, weights=None)`` returns
    a fitted copy of ``model`` and sets ``fitter.fit_info`` (also attached to
    the returned model as ``fit_info``).  It minimises ``sum((weights *
    (model(x, y) - z))**2)`` with :func:`scipy.optimize.least_squares` (trust
    region reflective, bounds respected), the Jacobian coming from the models'
    analytic ``fit_deriv`` (for astromix models the same arithmetic as the
    backend kernels: pixel-integrated Gaussians, see
    :mod:`astromix.backends._common`).  Compound models built with ``+`` and
    ``-`` (a PSF plus a ``Const2D`` background, several PSFs) use the sum of
    their parts' derivatives, parts without ``fit_deriv`` (astropy's
    ``Const2D``) being differentiated numerically; other compound models
    fall back to finite differences of the whole (``fit_info["jacobian"]``
    says which).

    A single astromix source model (:class:`~astromix.SersicMixture`,
    :class:`~astromix.PointSource`) fitted to a whole-pixel image grid (as from
    ``numpy.mgrid``) without tied parameters takes a faster route: the same
    trust-region least squares, with the residual rendered by the backend and
    the Jacobian images from the backend's Jacobian kernel (all parameters in
    one pass over each component's pixels), without astropy's per-call
    overhead (``fit_info["jacobian"]`` is ``"backend kernel"``).

    Parameters
    ----------
    calc_uncertainties : bool, optional
        Compute the covariance of the free parameters, ``(J^T J)^-1`` with
        weights = 1 / sigma (scaled by the reduced chi2 when ``weights`` is
        None), and set ``cov_matrix`` and ``stds`` on the fitted model
        (default True).

    Notes
    -----
    Fixed parameters are left out; tied parameters are recomputed from the
    others at every step, and their Jacobian columns are chained to the free
    parameters they depend on (the tied expressions differentiated by central
    differences; astropy's fitters drop them, which stops the fit away from
    the minimum); bounds are passed to the optimiser.  Equality and
    inequality constraints (``eqcons``, ``ineqcons``) are not supported.

    *Units*: data and models with units are handled as by astropy's fitters:
    the parameters are converted to the units the data give them (a flux to
    the data's unit, ``theta`` to radians), fitted as bare numbers, and the
    fitted model carries those units (their ``bounds`` converted alike).  A
    model with units fitted to bare data (e.g. ``theta`` given in degrees) is
    fitted with angles in radians and returned in its own units.  The
    ``fit_info`` values, ``cov_matrix`` and ``stds`` are in the units of the
    fit (radians for angles).

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.modeling.models import Const2D
    >>> from astromix import GaussianMixture, GaussianMixturePSF
    >>> from astromix.fitting import MixtureLSQFitter
    >>> psf = GaussianMixturePSF(GaussianMixture([1.0], [[0, 0]], [np.eye(2) * 2.0]))
    >>> y, x = np.mgrid[:25, :25]
    >>> truth = psf.copy()
    >>> truth.flux, truth.x_0, truth.y_0 = 50.0, 12.3, 11.6
    >>> data = truth(x, y) + 1.0
    >>> start = psf.copy()
    >>> start.x_0, start.y_0 = 12.0, 12.0
    >>> fit = MixtureLSQFitter()(start + Const2D(0.0), x, y, data)
    >>> [round(float(v), 3) for v in fit.parameters[:3]] + [round(float(fit.parameters[-1]), 3)]
    [50.0, 12.3, 11.6, 1.0]
    """

    supported_constraints = ["fixed", "tied", "bounds"]

    def __init__(self, *, calc_uncertainties=True):
        self.calc_uncertainties = calc_uncertainties
        self.fit_info = {}

    @blas_single_threaded
    def __call__(self, model, x, y=None, z=None, weights=None, *, maxiter=None, ftol=1e-10,
                 xtol=1e-10, gtol=1e-10, equivalencies=None, **objective_kwargs):
        """Fit ``model`` to ``z`` sampled at ``(x, y)``, or a scene to exposures.

        Parameters
        ----------
        model : astropy.modeling.FittableModel
            A 2-input model (astromix models and compound models of them), or a
            :class:`~astromix.SceneModel`.
        x, y, z : array-like or Quantity, same shape
            Pixel coordinates [px] and data.  For a scene, ``x`` is the
            exposure or list of exposures (:class:`~astromix.Exposure`) and
            ``y``, ``z``, ``weights`` are not given: the exposures carry their
            data and inverse variances.  The scene is fitted by L-BFGS-B on
            the summed chi2 with its analytic gradient from the backend kernels,
            then polished by Newton steps on the Hessian (central differences
            of the analytic gradient; taken again with the settings'
            ``fourth_order_threshold`` set to 0, a smooth model, where the
            gradient jumps between the steps), whose inverse gives the
            covariance (``fit_info["param_cov"]``; NaN, with a
            :class:`~astromix.models.scene.SceneWarning`, along parameters where
            the Hessian is not positive definite).
        weights : array-like or Quantity, optional
            1 / sigma per point (astropy's convention; in 1 / the data's unit),
            finite and >= 0, broadcast to the data's shape; 0 masks a point.
        maxiter : int, optional
            Maximum number of function evaluations.
        ftol, xtol, gtol : float, optional
            Tolerances of :func:`scipy.optimize.least_squares`.
        equivalencies : list, optional
            Extra unit equivalencies for inputs with units (as astropy fitters).
        background, dtype, backend : optional
            Keywords for a scene only (see :meth:`astromix.SceneModel.chi2`).

        Returns
        -------
        fitted : model
            A copy with the best-fit parameters, ``fit_info`` and (with
            ``calc_uncertainties``) ``cov_matrix`` and ``stds``.

        Raises
        ------
        InputError
            If ``model`` is not a fittable astropy model with 2 inputs and 1
            output, is a model set or has ``eqcons``/``ineqcons``; on shape
            mismatches (weights included), non-finite or negative weights,
            non-finite data with positive weight, fewer points of non-zero
            weight than free parameters (all weights zero), no free parameter,
            or units that do not convert.
        """
        t0 = time.perf_counter()
        if hasattr(model, "_objective_for"):
            if y is not None or z is not None or weights is not None:
                raise InputError(f"{type(model).__name__} is fitted to exposures: "
                                 "fitter(model, exposures)")
            return self._fit_objective(model, x, maxiter, t0, objective_kwargs)
        if objective_kwargs:
            raise InputError(f"unexpected keyword(s) {sorted(objective_kwargs)}")
        self._validate(model)
        if y is None or z is None:
            raise InputError("MixtureLSQFitter needs x, y and z")
        units = _Units(model, x, y, z, equivalencies)
        fitted = units.run(MixtureLSQFitter._fit_data, self, weights=units.weights(weights),
                           maxiter=maxiter, ftol=ftol, xtol=xtol, gtol=gtol, t0=t0)
        fitted.fit_info = self.fit_info
        return fitted

    @staticmethod
    def _validate(model):
        if not isinstance(model, Model):
            raise InputError(f"MixtureLSQFitter fits an astropy model, got {type(model).__name__}")
        if not getattr(model, "fittable", False):
            raise InputError(f"{type(model).__name__} is not fittable")
        if len(model) != 1:
            raise InputError("MixtureLSQFitter fits a single model, not a model set "
                             f"(n_models = {len(model)})")
        if model.n_inputs != 2 or model.n_outputs != 1:
            raise InputError("MixtureLSQFitter fits models (x, y) -> z; this one has "
                             f"{model.n_inputs} inputs and {model.n_outputs} outputs")
        if getattr(model, "eqcons", None) or getattr(model, "ineqcons", None):
            raise InputError("MixtureLSQFitter does not support eqcons/ineqcons constraints "
                             f"(it supports {', '.join(MixtureLSQFitter.supported_constraints)})")

    def _fit_data(self, model, x, y, z, *, weights, maxiter, ftol, xtol, gtol, t0):
        """The fit proper, on unit-free model and data."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        if not (x.shape == y.shape == z.shape):
            raise InputError(f"x, y and z must have one shape, got {x.shape}, {y.shape}, "
                             f"{z.shape}")
        try:
            w = np.ones_like(z) if weights is None else np.broadcast_to(
                np.asarray(weights, dtype=np.float64), z.shape)
        except ValueError as exc:
            raise InputError(f"weights of shape {np.shape(weights)} do not broadcast to the "
                             f"data's shape {z.shape}") from exc
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            # an inf weight is an infinitely trusted point, a NaN one hides bad data:
            # neither may be dropped silently (DynestyFitter refuses them alike)
            raise InputError("weights (1/sigma) must be finite and >= 0")
        good = w != 0
        if not np.all(np.isfinite(z[good])):
            raise InputError("z has non-finite values with non-zero weight")
        if good.all():
            # keep the pixel grid's shape: astromix models then render it with the kernel
            xf, yf, zf, wf = x, y, z, np.ascontiguousarray(w)
        else:
            xf, yf, zf, wf = x[good], y[good], z[good], w[good]
        fitted = model.copy()
        p0, free, bounds = model_to_fit_params(fitted)
        if len(free) == 0:
            raise InputError("the model has no free parameter")
        n_good = int(np.count_nonzero(good))
        if n_good < len(free):
            raise InputError(f"no data to fit: {n_good} point(s) of non-zero weight for "
                             f"{len(free)} free parameter(s)")
        lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
        p0 = np.clip(np.asarray(p0, dtype=np.float64), lo + 1e-9 * span, hi - 1e-9 * span)
        if (hasattr(fitted, "_mixture_and_derivatives") and not fitted.has_tied and good.all()
                and grid_origin(xf, yf) is not None):
            return self._fit_on_grid(fitted, xf, yf, zf, wf, weights, p0, free, lo, hi,
                                     maxiter, ftol, xtol, gtol, t0)
        jac_all, jac_kind = _analytic_jacobian(fitted)

        def residual(p):
            fitter_to_model_params(fitted, p)
            return (wf * (np.asarray(fitted(xf, yf), dtype=np.float64) - zf)).ravel()

        tied_flags = fitted.tied        # astropy rebuilds this dict at every access
        tied = [i for i, n in enumerate(fitted.param_names) if tied_flags[n]]

        def full(p):
            fitter_to_model_params(fitted, p)
            return np.array(fitted.parameters, dtype=np.float64)

        if jac_all is not None:
            def jacobian(p):
                fitter_to_model_params(fitted, p)
                derivs = jac_all(xf, yf)
                cols = np.column_stack([np.ravel(derivs[i]) for i in free])
                if tied:
                    # a tied parameter moves with the free ones it is tied to: chain rule
                    dtied = _tied_derivatives(full, p, tied, lo, hi, 1e-6)
                    cols = cols + np.column_stack([np.ravel(derivs[i]) for i in tied]) @ dtied
                return wf.ravel()[:, None] * cols
        else:
            jacobian = "2-point"

        res = optimize.least_squares(residual, p0, jac=jacobian, bounds=(lo, hi),
                                     method="trf", x_scale="jac", max_nfev=maxiter,
                                     ftol=ftol, xtol=xtol, gtol=gtol)
        fitter_to_model_params(fitted, res.x)
        chi2 = float(np.sum(res.fun ** 2))
        dof = max(res.fun.size - res.x.size, 1)
        info = {"chi2": chi2, "dof": dof, "nfev": res.nfev, "njev": res.njev,
                "status": res.status, "message": res.message, "success": bool(res.success),
                "jacobian": jac_kind or "2-point",
                "free_parameters": [fitted.param_names[i] for i in free],
                "time_s": time.perf_counter() - t0}
        if self.calc_uncertainties:
            self._add_covariance(fitted, info, res.jac, chi2, dof, weights)
        self.fit_info = info
        fitted.fit_info = info
        return fitted

    @staticmethod
    def _add_covariance(fitted, info, jac, chi2, dof, weights):
        """``param_cov``/``param_std`` in ``info``, ``cov_matrix``/``stds`` on ``fitted``."""
        jtj = jac.T @ jac
        try:
            cov = np.linalg.inv(jtj)
        except np.linalg.LinAlgError:
            cov = np.linalg.pinv(jtj)
        if weights is None:
            cov = cov * chi2 / dof
        info["param_cov"] = cov
        diag = np.diag(cov)
        # a singular J^T J (a parameter without influence) gives no error: NaN, not a warning
        info["param_std"] = dict(zip(info["free_parameters"],
                                     np.where(diag > 0, np.sqrt(np.abs(diag)), np.nan)))
        _set_uncertainties(fitted, cov, info["free_parameters"])

    def _fit_on_grid(self, fitted, x, y, z, w, weights, p0, free, lo, hi, maxiter, ftol, xtol,
                     gtol, t0):
        """Levenberg-Marquardt with the backend's kernels, for a model on a pixel grid.

        One pass of the backend's Jacobian kernel gives the model image and its
        derivative images for every free parameter together
        (:func:`astromix.models._base.jacobian_images`); :func:`_levenberg_marquardt`
        minimises the weighted residuals within the bounds, without astropy's
        per-call overhead.
        """
        from ..models._base import jacobian_images

        settings = fitted.settings
        origin = grid_origin(x, y)
        shape = z.shape
        full = np.array(fitted.parameters, dtype=np.float64)
        free = list(free)
        wflat = w.ravel()
        zflat = z.ravel()

        def evaluate(u):
            p = full.copy()
            p[free] = u
            mix, comp = fitted._mixture_and_derivatives(p)
            out = jacobian_images(mix, comp[:, free], origin, shape, settings,
                                  image=True).reshape(len(free) + 1, -1)
            return wflat * (out[0] - zflat), (out[1:] * wflat).T

        p_fit, resid, jac, nfev, status, message = _levenberg_marquardt(
            evaluate, p0, lo, hi, max_nfev=maxiter or 100 * (len(free) + 1), ftol=ftol,
            xtol=xtol, gtol=gtol)
        fitter_to_model_params(fitted, p_fit)
        chi2 = float(resid @ resid)
        dof = max(resid.size - len(free), 1)
        info = {"chi2": chi2, "dof": dof, "nfev": nfev, "njev": nfev, "status": status,
                "message": message, "success": status > 0, "jacobian": "backend kernel",
                "free_parameters": [fitted.param_names[i] for i in free],
                "time_s": time.perf_counter() - t0}
        if self.calc_uncertainties:
            self._add_covariance(fitted, info, jac, chi2, dof, weights)
        self.fit_info = info
        fitted.fit_info = info
        return fitted

    # -- models fitted through a chi2 objective (scenes of exposures) ---------------------
    def _fit_objective(self, model, data, maxiter, t0, objective_kwargs):
        """L-BFGS-B, then Newton polish, on ``model._objective_for(data)``."""
        fitted = model.copy()
        objective = fitted._objective_for(data, **objective_kwargs)
        p0, free, bounds = model_to_fit_params(fitted)
        free = list(free)
        if not free:
            raise InputError("the model has no free parameter")
        lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
        p0 = np.clip(np.asarray(p0, dtype=np.float64), lo + 1e-9 * span, hi - 1e-9 * span)
        full = _FreeToFull(fitted, free)
        fun = _ScaledChi2(objective, full, p0, np.ones(len(free)))

        def scaled_bounds(scale):
            return [(None if not np.isfinite(a) else (a - c) / s_,
                     None if not np.isfinite(b) else (b - c) / s_)
                    for a, b, c, s_ in zip(lo, hi, p0, scale)]

        default = objective.default_scales(fitted.parameters)[free]
        fun.scale = _hessian_scales(fun, default, scaled_bounds(default))
        ubounds = scaled_bounds(fun.scale)
        res = optimize.minimize(fun, np.zeros(len(free)), jac=True, method="L-BFGS-B",
                                bounds=ubounds, options={"maxiter": maxiter or 5000,
                                                         "ftol": 1e-12, "gtol": 1e-6})
        u_best, chi2 = res.x, float(res.fun)
        _, g_best = fun(u_best)
        hess = _error_hessian(fun, objective, u_best, g_best, ubounds)
        hess_at = u_best.copy()
        for _ in range(5):                     # Newton polish within the bounds
            try:
                step = -np.linalg.solve(hess, g_best)
            except np.linalg.LinAlgError:
                break
            u_new = u_best + step
            for i, (a, b) in enumerate(ubounds):
                u_new[i] = min(max(u_new[i], -np.inf if a is None else a),
                               np.inf if b is None else b)
            c_new, g_new = fun(u_new)
            if not c_new < chi2:
                break
            done = chi2 - c_new < 1e-9 * max(chi2, 1.0)
            u_best, chi2, g_best = u_new, c_new, g_new
            if done:
                break
        step = u_best - hess_at
        if self.calc_uncertainties and not 0.0 <= 0.5 * float(step @ hess @ step) < 1e-2:
            # the Newton steps moved by more than 0.1 sigma (a chi2 change > 0.01 by the
            # Hessian, which the errors take as constant over +-1 sigma anyway): a new one
            hess = _error_hessian(fun, objective, u_best, g_best, ubounds)
        p_free = fun.free_values(u_best)
        fitter_to_model_params(fitted, p_free)
        # (last: the objective's per-exposure values are left at the best fit)
        chi2 = float(objective(fitted.parameters, gradient=False))
        dof = max(objective.n_data - len(free) - objective.n_nuisance, 1)
        info = {"chi2": chi2, "dof": dof, "nfev": objective.n_calls, "njev": objective.n_calls,
                "status": res.status, "message": str(res.message),
                "success": bool(res.success) or chi2 <= float(res.fun),
                "jacobian": "backend gradient",
                "free_parameters": [fitted.param_names[i] for i in free],
                "objective": objective, "time_s": time.perf_counter() - t0}
        if self.calc_uncertainties:
            # parameters stopped at a bound are held there, and parameters without any
            # influence (a Hessian row of zeros) have no error: their rows and columns
            # are left out of the inversion and their errors are NaN
            at_bound = np.array([(a is not None and u_best[i] - a < 1e-6) or
                                 (b is not None and b - u_best[i] < 1e-6)
                                 for i, (a, b) in enumerate(ubounds)], dtype=bool)
            keep = np.flatnonzero(~at_bound & np.any(hess != 0, axis=1))
            cov_u = np.full((len(free), len(free)), np.nan)
            kept, inv, dropped = _invert_hessian(hess[np.ix_(keep, keep)])
            cov_u[np.ix_(keep[kept], keep[kept])] = 2.0 * inv
            if dropped.size:
                names = [info["free_parameters"][i] for i in keep[dropped]]
                warnings.warn(
                    f"the chi2 Hessian at the best fit is not positive definite along {names} "
                    "(degenerate parameters, or a fit stopped away from a minimum): their "
                    "errors are NaN, and the other errors are those with them held at their "
                    "best values", SceneWarning, stacklevel=4)
            cov = cov_u * np.outer(fun.scale, fun.scale)
            diag = np.diag(cov)
            info["param_cov"] = cov
            info["param_std"] = dict(zip(info["free_parameters"],
                                         np.where(diag > 0, np.sqrt(np.abs(diag)), np.nan)))
            info["at_bound"] = [info["free_parameters"][i] for i in np.flatnonzero(at_bound)]
            _set_uncertainties(fitted, cov, info["free_parameters"])
        self.fit_info = info
        fitted.fit_info = info
        return fitted


def _set_uncertainties(fitted, cov, names):
    """``cov_matrix``, ``stds`` and each free parameter's ``std`` on ``fitted``, as astropy's
    least-squares fitters set them.

    Not through astropy's ``cov_matrix`` setter, which reads ``model.fixed`` and
    ``model.tied`` (dicts rebuilt at every access) once per parameter: O(n^2), about
    0.3 ms for a 7-parameter model and seconds for a large scene.
    """
    names = list(names)
    fitted._cov_matrix = Covariance(cov, names)
    fitted.stds = StandardDeviations(cov, names)
    for name, var in zip(names, np.diag(cov)):
        getattr(fitted, name).std = float(np.sqrt(var)) if var > 0 else None


class _FreeToFull:
    """Full parameter vector (fixed and tied included) from the free values, and back."""

    def __init__(self, model, free):
        self.model = model
        self.free = free
        tied = model.tied  # astropy rebuilds this dict at every access: read it once
        self.tied = [i for i, n in enumerate(model.param_names) if tied[n]]
        # without tied parameters the full vector is the fixed values with the free ones
        # put in: O(n), where astropy's fitter_to_model_params reads model.fixed and
        # model.tied for every parameter (O(n^2), seconds per call for large scenes)
        scalar = len(model.parameters) == len(model.param_names)
        self._base = (np.array(model.parameters, dtype=np.float64)
                      if scalar and not self.tied else None)
        self._free_index = np.asarray(free, dtype=int)
        # as fitter_to_model_params: free values are clipped to their bounds
        bounds = model.bounds
        names = [model.param_names[i] for i in self._free_index]
        self._lo = np.array([-np.inf if bounds[n][0] is None else bounds[n][0] for n in names],
                            dtype=np.float64)
        self._hi = np.array([np.inf if bounds[n][1] is None else bounds[n][1] for n in names],
                            dtype=np.float64)

    def __call__(self, p_free):
        if self._base is None:
            fitter_to_model_params(self.model, p_free)
            return np.array(self.model.parameters, dtype=np.float64)
        full = self._base.copy()
        full[self._free_index] = np.clip(p_free, self._lo, self._hi)
        self.model.parameters = full
        return full

    def gradient(self, p_free, grad_full, p_full):
        """d chi2 / d free values, tied parameters chained by central differences."""
        g = grad_full[self.free].copy()
        if self.tied:
            g += grad_full[self.tied] @ _tied_derivatives(self, p_free, self.tied, self._lo,
                                                          self._hi, 1e-7)
        return g


class _ScaledChi2:
    """chi2 and gradient in scaled offsets ``u = (p_free - p0) / scale``."""

    def __init__(self, objective, full, p0, scale):
        self.objective, self.full, self.p0, self.scale = objective, full, p0, scale

    def free_values(self, u):
        return self.p0 + np.asarray(u) * self.scale

    def __call__(self, u):
        pf = self.free_values(u)
        p = self.full(pf)
        chi2, grad = self.objective(p, gradient=True)
        if not np.isfinite(chi2):
            return np.inf, np.zeros_like(u)
        return chi2, self.full.gradient(pf, grad, p) * self.scale


def _error_hessian(fun, objective, u, gradient, bounds):
    """The chi2 Hessian at ``u`` (scaled coordinates; ``gradient``: fun's gradient there).

    :class:`~astromix.AccuracySettings`' ``fourth_order_threshold`` switches the
    fourth-order pixel-integration factor off for wide Gaussians: where a
    component's size crosses it as the shape parameters change, the model,
    chi2 and gradient jump a little.  The optimiser can stop right at such a
    jump, and the central differences (steps of 1e-3 of a parameter's 1-sigma
    scale) then straddle it: errors several times too large, or NaN.  The
    Hessian is that of the fitted model where the forward and backward
    differences of the gradient agree (:func:`_numerical_hessian`); where they
    do not, it is computed again of the smooth model (:func:`_smooth_model`),
    which differs from the fitted one by less than the threshold (1e-4 of a
    component's peak by default).  Taking it of the smooth model always would
    cost more: the factor on every wide Gaussian made each evaluation of the
    DECam demo's scene 2.8 times slower.
    """
    hess, smooth = _numerical_hessian(fun, u, bounds=bounds, gradient=gradient)
    if not smooth:
        with _smooth_model(objective) as changed:
            if changed:
                hess = _numerical_hessian(fun, u, bounds=bounds)
    return hess


@contextlib.contextmanager
def _smooth_model(objective):
    """``objective`` evaluated with the fourth-order pixel-integration factor on every Gaussian.

    Within this context the objective's settings have ``fourth_order_threshold
    = 0`` (see :func:`_error_hessian`); yields whether they were changed
    (objectives without :class:`~astromix.AccuracySettings`, with another
    ``pixel_integration`` or with the threshold at 0 already are left as they
    are).
    """
    settings = getattr(objective, "settings", None)
    if (not isinstance(settings, AccuracySettings) or settings.pixel_integration != "kurtosis"
            or settings.fourth_order_threshold == 0.0):
        yield False
        return
    objective.settings = settings.with_(fourth_order_threshold=0.0)
    try:
        yield True
    finally:
        objective.settings = settings


def _invert_hessian(hess):
    """Inverse of a symmetric Hessian (n, n) on the parameters where it is positive definite.

    Returns ``(kept, inverse, dropped)``: ``inverse`` (len(kept), len(kept)) is
    the inverse of ``hess[kept][:, kept]``; ``dropped`` are the indices left
    out.  Where the matrix is not positive definite its inverse would give
    errors that mean nothing (negative variances, or finite numbers at a
    saddle point), so the parameters along which it fails are left out, one
    direction at a time: rows with a non-finite entry or a diagonal <= 0,
    else (after scaling to a unit diagonal, so that parameters of very
    different scales do not mislead the test) those with at least half the
    largest weight in the eigenvector of the lowest eigenvalue, until the
    Cholesky factorisation of the rest succeeds.
    """
    kept = np.arange(hess.shape[0])
    while kept.size:
        sub = hess[np.ix_(kept, kept)]
        d = np.diag(sub)
        bad = ~(np.all(np.isfinite(sub), axis=1) & (d > 0))
        if not bad.any():
            s = 1.0 / np.sqrt(d)
            scaled = sub * np.outer(s, s)
            try:
                inv_chol = np.linalg.inv(np.linalg.cholesky(scaled))
            except np.linalg.LinAlgError:
                lowest = np.abs(np.linalg.eigh(scaled)[1][:, 0])
                bad = lowest >= 0.5 * lowest.max()
            else:
                dropped = np.setdiff1d(np.arange(hess.shape[0]), kept)
                return kept, (inv_chol.T @ inv_chol) * np.outer(s, s), dropped
        kept = kept[~bad]
    return kept, np.empty((0, 0)), np.arange(hess.shape[0])


def _steps(u, i, h, bounds):
    """(u_plus, u_minus, width): a difference step along i that stays within the bounds."""
    lo, hi = bounds[i] if bounds is not None else (None, None)
    up, down = u.copy(), u.copy()
    up[i] = u[i] + h if hi is None else min(u[i] + h, hi)
    down[i] = u[i] - h if lo is None else max(u[i] - h, lo)
    return up, down, up[i] - down[i]


def _numerical_hessian(fun, u, h=1e-3, bounds=None, gradient=None, tol=0.02):
    """Symmetrised differences of the analytic gradient (scaled coordinates).

    Central where possible, one-sided at a bound (the objective is never
    evaluated outside the bounds).  Returns the Hessian (n, n); with
    ``gradient`` (the gradient at ``u``), ``(hessian, smooth)``: ``smooth`` is
    False when for some parameter stepped both ways the forward and backward
    differences of the gradient differ by more than ``tol`` times the largest
    of their entries (a jump in the gradient between the steps; for a smooth
    chi2 they differ by ``h`` times its third derivatives).
    """
    n = u.size
    hess = np.empty((n, n))
    smooth = True
    for i in range(n):
        up, down, width = _steps(u, i, h, bounds)
        g_up, g_down = fun(up)[1], fun(down)[1]
        hess[i] = (g_up - g_down) / width if width > 0 else 0.0
        if gradient is not None and smooth and up[i] > u[i] > down[i]:
            forward = (g_up - gradient) / (up[i] - u[i])
            backward = (gradient - g_down) / (u[i] - down[i])
            scale = max(float(np.max(np.abs(forward))), float(np.max(np.abs(backward))))
            smooth = bool(np.max(np.abs(forward - backward)) <= tol * scale)
    hess = 0.5 * (hess + hess.T)
    return hess if gradient is None else (hess, smooth)


def _hessian_scales(fun, default, bounds=None):
    """Scales of the free parameters: 1-sigma steps from the Hessian diagonal.

    Where the diagonal is not positive (a poor start), ``default`` is kept.
    """
    fun.scale = np.asarray(default, dtype=np.float64)
    n = fun.scale.size
    diag = np.full(n, np.nan)
    u0 = np.zeros(n)
    for i in range(n):
        up, down, width = _steps(u0, i, 1e-2, bounds)
        if width > 0:
            diag[i] = (fun(up)[1][i] - fun(down)[1][i]) / width
    good = np.isfinite(diag) & (diag > 0)
    out = fun.scale.copy()
    out[good] = fun.scale[good] * np.sqrt(2.0 / diag[good])
    return out


def _levenberg_marquardt(evaluate, p0, lo, hi, *, max_nfev, ftol, xtol, gtol):
    """Bounded Levenberg-Marquardt on ``evaluate(p) -> (residuals (N,), jacobian (N, P))``.

    Marquardt's scaling of the damping by ``diag(J^T J)``, Nielsen's (1999)
    update of the damping from the gain ratio, and steps projected onto the
    box ``[lo, hi]`` (the predicted decrease is that of the projected step);
    parameters at a bound that the descent direction pushes outwards are held
    there for the step, and a parameter that the step would take past a bound
    stops at it while the step of the others is solved again (an active set),
    so that the others move freely.
    The stopping rules are those of :func:`scipy.optimize.least_squares`:
    ``ftol`` on the relative decrease of the cost of an accepted step,
    ``xtol`` on the step length relative to ``|p|``, ``gtol`` on the largest
    scaled gradient component.  Each evaluation gives the Jacobian at the
    trial point too, so an accepted step costs one evaluation.

    Returns ``(p, residuals, jacobian, nfev, status, message)`` with status
    as scipy's (0: too many evaluations; 1: gtol; 2: ftol; 3: xtol).
    """
    p = np.clip(np.asarray(p0, dtype=np.float64), lo, hi)
    r, jac = evaluate(p)
    nfev = 1
    cost = float(r @ r)
    a, g = _normal_equations(jac, r)
    mu = 1e-3                      # relative to diag(J^T J) (Marquardt's scaling)
    nu = 2.0
    status, message = 0, "the maximum number of function evaluations is exceeded"
    while nfev < max_nfev:
        # parameters held at a bound by the descent direction -g stay there this step
        free = ~(((p <= lo) & (g > 0)) | ((p >= hi) & (g < 0)))
        scale = np.sqrt(np.maximum(np.diag(a), 1e-300))
        if not free.any() or np.max(np.abs(g[free]) / scale[free]) <= gtol * max(
                np.sqrt(cost), 1e-300):
            status, message = 1, "gtol termination condition is satisfied"
            break
        damped = a + mu * np.diag(np.maximum(np.diag(a), 1e-12 * max(float(np.max(np.diag(a))),
                                                                         1e-300)))
        h = np.zeros_like(p)
        try:
            # a parameter the step would take past a bound stops at it, and the step of
            # the others is solved again with it held there
            for _ in range(p.size):
                h[free] = np.linalg.solve(damped[np.ix_(free, free)],
                                          -g[free] - damped[np.ix_(free, ~free)] @ h[~free])
                out = free & ((p + h < lo) | (p + h > hi))
                if not out.any():
                    break
                h[out] = np.clip(p + h, lo, hi)[out] - p[out]
                free &= ~out
                if not free.any():
                    break
        except np.linalg.LinAlgError:
            mu *= nu
            nu *= 2.0
            continue
        p_new = np.clip(p + h, lo, hi)
        h = p_new - p
        if np.linalg.norm(h) <= xtol * (xtol + np.linalg.norm(p)):
            status, message = 3, "xtol termination condition is satisfied"
            break
        r_new, jac_new = evaluate(p_new)
        nfev += 1
        cost_new = float(r_new @ r_new)
        predicted = -(2.0 * float(h @ g) + float(h @ a @ h))
        gain = (cost - cost_new) / predicted if predicted > 0 else -1.0
        if np.isfinite(cost_new) and gain > 0:
            decrease = cost - cost_new
            p, r, jac, cost = p_new, r_new, jac_new, cost_new
            a, g = _normal_equations(jac, r)
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3)
            nu = 2.0
            if decrease <= ftol * cost_new:
                status, message = 2, "ftol termination condition is satisfied"
                break
        else:
            mu *= nu
            nu *= 2.0
    return p, r, jac, nfev, status, message
