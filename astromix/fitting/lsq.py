"""MixtureLSQFitter: least squares for astromix models with their analytic Jacobians."""

import time

import numpy as np
from astropy.modeling import CompoundModel
from astropy.modeling.fitting import fitter_to_model_params, model_to_fit_params
from scipy import optimize

from ..errors import InputError

__all__ = ["MixtureLSQFitter"]


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
    other than + and -.
    """
    terms = _sum_terms(model)
    if terms is None:
        return None, None
    missing = any(getattr(leaf, "fit_deriv", None) is None for leaf, _ in terms)

    def jac(x, y):
        shape = np.broadcast(x, y).shape
        out = []
        for leaf, sign in terms:
            if getattr(leaf, "fit_deriv", None) is None:
                derivs = _leaf_numerical_derivs(leaf, x, y)
            else:
                derivs = np.asarray(leaf.fit_deriv(x, y, *leaf.parameters), dtype=np.float64)
                if derivs.ndim == 1 or derivs.shape[0] != len(leaf.parameters):
                    # astropy's col_fit_deriv=False convention: (n_points, n_params)
                    derivs = np.reshape(derivs, (-1, len(leaf.parameters))).T
            out.extend(sign * np.broadcast_to(d, shape) for d in derivs)
        return out

    return jac, ("partial" if missing else "analytic")


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

    Parameters
    ----------
    calc_uncertainties : bool, optional
        Compute the covariance of the free parameters, ``(J^T J)^-1`` with
        weights = 1 / sigma (scaled by the reduced chi2 when ``weights`` is
        None), and set ``cov_matrix`` and ``stds`` on the fitted model.

    Notes
    -----
    Fixed parameters are left out; tied parameters are recomputed from the
    others at every step (their Jacobian columns are not chained, as in
    astropy's fitters); bounds are passed to the optimiser.

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

    def __call__(self, model, x, y, z, weights=None, *, maxiter=None, ftol=1e-10, xtol=1e-10,
                 gtol=1e-10):
        """Fit ``model`` to ``z`` sampled at ``(x, y)``.

        Parameters
        ----------
        model : astropy.modeling.FittableModel
            A 2-input model (astromix models and compound models of them).
        x, y, z : array-like, same shape
            Pixel coordinates [px] and data.
        weights : array-like, optional
            1 / sigma per point (astropy's convention); 0 masks a point.
        maxiter : int, optional
            Maximum number of function evaluations.
        ftol, xtol, gtol : float, optional
            Tolerances of :func:`scipy.optimize.least_squares`.

        Returns
        -------
        fitted : model
            A copy with the best-fit parameters and ``fit_info``.

        Raises
        ------
        InputError
            On shape mismatches, non-finite data with positive weight, or no
            free parameter.
        """
        t0 = time.perf_counter()
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        if not (x.shape == y.shape == z.shape):
            raise InputError(f"x, y and z must have one shape, got {x.shape}, {y.shape}, "
                             f"{z.shape}")
        w = np.ones_like(z) if weights is None else np.broadcast_to(
            np.asarray(weights, dtype=np.float64), z.shape)
        good = (w != 0) & np.isfinite(w)
        if not np.all(np.isfinite(z[good])):
            raise InputError("z has non-finite values with non-zero weight")
        xf, yf, zf, wf = x[good], y[good], z[good], w[good]
        fitted = model.copy()
        p0, free, bounds = model_to_fit_params(fitted)
        if len(free) == 0:
            raise InputError("the model has no free parameter")
        lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
        span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
        p0 = np.clip(np.asarray(p0, dtype=np.float64), lo + 1e-9 * span, hi - 1e-9 * span)
        jac_all, jac_kind = _analytic_jacobian(fitted)

        def residual(p):
            fitter_to_model_params(fitted, p)
            return wf * (np.asarray(fitted(xf, yf), dtype=np.float64) - zf)

        if jac_all is not None:
            def jacobian(p):
                fitter_to_model_params(fitted, p)
                derivs = jac_all(xf, yf)
                return (wf[:, None] * np.column_stack([derivs[i] for i in free]))
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
            jtj = res.jac.T @ res.jac
            try:
                cov = np.linalg.inv(jtj)
            except np.linalg.LinAlgError:
                cov = np.linalg.pinv(jtj)
            if weights is None:
                cov = cov * chi2 / dof
            info["param_cov"] = cov
            info["param_std"] = dict(zip(info["free_parameters"], np.sqrt(np.diag(cov))))
        self.fit_info = info
        fitted.fit_info = info
        return fitted
