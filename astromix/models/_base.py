"""Evaluation helpers shared by the astropy models of astromix."""

import math

import numpy as np

from ..backends import _common, get_backend
from ..errors import InputError


def scalar(value):
    """The float inside an astropy parameter value (scalar, 1-element array or Quantity)."""
    value = getattr(value, "value", value)
    if isinstance(value, (float, np.generic)) or getattr(value, "ndim", None) == 0:
        return float(value)          # the common case, 5x faster than ravelling
    return float(np.ravel(value)[0])


def angle(value):
    """An angle as a float in radians: a Quantity (deg, rad, ...) is converted,
    a bare number is taken as radians (as astropy's ``Sersic2D`` does)."""
    if getattr(value, "unit", None) is not None:
        from astropy import units as u

        value = value.to_value(u.rad)
    return scalar(value)


def psf_total_flux(mixture):
    """The sum of a PSF mixture's amplitudes, the divisor that normalises it to unit flux.

    Raises
    ------
    InputError
        If the sum is not finite and positive.
    """
    total = mixture.flux
    if not (math.isfinite(total) and total > 0):
        raise InputError("the PSF mixture's amplitudes must have a positive sum (its total "
                         f"flux, normalised to 1), got {total!r}")
    return total


def refuse_model_set(model):
    """Raise InputError if ``model`` is a model set (``n_models > 1``).

    The evaluation helpers reduce each parameter to one float: a set would be
    evaluated with its first member's values for every member.
    """
    if len(model) > 1:
        raise InputError(f"{type(model).__name__}: model sets (n_models = {len(model)}) are "
                         "not supported; make one model per source (a compound model, or a "
                         "SceneModel)")


def parameter_values(model):
    """The values of a single model's parameters as floats, in ``param_names`` order.

    ``float`` of each :attr:`astropy.modeling.Parameter.value` (a NumPy scalar
    for a single model), which takes half the time of :func:`scalar`; a
    parameter holding more than one value falls back to :func:`scalar`.  A
    ``theta`` with an angle unit is converted to radians.
    """
    names = model.param_names
    try:
        values = [float(getattr(model, name).value) for name in names]
    except TypeError:                   # an array of several values: its first, as scalar
        values = [scalar(getattr(model, name).value) for name in names]
    if "theta" in names and model.theta.unit is not None:   # an angle Quantity: radians
        values[names.index("theta")] = angle(model.theta.quantity)
    return values


def _is_whole_pixel_grid(x, y):
    # x[j, i] == x[0, 0] + i and y[j, i] == y[0, 0] + j for every pixel, in float64;
    # a row is checked whole (a branch-free loop the compiler vectorises), the
    # first row off the grid ends the check
    ny, nx = x.shape
    x0, y0 = x[0, 0], y[0, 0]
    for j in range(ny):
        yj = y0 + j
        off = False
        for i in range(nx):
            off |= (x[j, i] != x0 + i) | (y[j, i] != yj)
        if off:
            return False
    return True


try:
    import numba
except ImportError:                                    # pragma: no cover - numba is optional
    _grid_check = None
else:
    _grid_check = numba.njit(cache=True, nogil=True)(_is_whole_pixel_grid)


def grid_origin(x, y):
    """(x0, y0) when x, y are a 2-d grid of whole pixels starting there, else None.

    ``x, y``: float64 arrays; a grid as from ``numpy.mgrid`` or ``numpy.meshgrid``
    (``x[j, i] = x0 + i``, ``y[j, i] = y0 + j``, exactly).  Checked in one
    compiled pass that stops at the first row off the grid when Numba is
    importable (~1 us on 64 x 64 instead of ~13 us of NumPy comparisons).
    """
    if x.ndim != 2 or x.shape != y.shape or x.size < 64:
        return None
    x0, y0 = x[0, 0], y[0, 0]
    if _grid_check is not None and x.dtype.isnative and y.dtype.isnative:
        return (x0, y0) if _grid_check(x, y) else None
    ny, nx = x.shape
    row, col = x[0], y[:, 0]
    if not ((row == x0 + np.arange(nx)).all() and (col == y0 + np.arange(ny)).all()):
        return None
    # every row of x equal to the first, every column of y to the first
    if (x == row).all() and (y == col[:, None]).all():
        return x0, y0
    return None


def evaluate_mixture(mixture, x, y, settings):
    """Pixel-integrated values of a GaussianMixture at pixel coordinates ``x, y``.

    On a regular grid of whole pixels (``x[j, i] = x[0, 0] + i``, ``y[j, i] =
    y[0, 0] + j``, as from ``numpy.mgrid``) the image is rendered by the active
    backend's kernel; elsewhere the same values are computed point by point with
    NumPy (:func:`astromix.backends._common.evaluate_points`).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = x.shape if x.shape == y.shape else np.broadcast_shapes(x.shape, y.shape)
    bk = get_backend()
    origin = grid_origin(x, y)
    if origin is not None:
        # the mixture in the grid's pixels: the backend's one-call stamp render
        # where it has one for this size, else prepare and render
        mean = mixture.mean - origin
        image = bk.render_stamp(mixture.amp, mean, mixture.cov, shape, np.float64, settings)
        if image is None:
            table = bk.prepare(mixture.amp, mean, mixture.cov, settings)
            image = bk.render(table, shape, np.float64, settings)
        return bk.to_numpy(image)
    table = bk.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    xb, yb = np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel()
    return _common.evaluate_points(table, xb, yb, settings.n_sigma).reshape(shape)


def chain_coefficients(table, m):
    """Coefficients ``(K, P, NACC)`` chaining each component's pixel terms to P parameters.

    ``m`` (K, P, 6) are the model's component derivatives: ``m[k, p]`` = d
    (amp_k, mean_kx, mean_ky, C_kxx, C_kxy, C_kyy) / d theta_p.  With the
    linear map from a pixel's accumulator terms to the component gradients
    (the backend's ``unit_gradients``), the derivative of a
    pixel's value with respect to parameter p is ``sum_k sum_m coeff[k, p, m]
    a_{k,m}(pixel)``.
    """
    return np.matmul(m, get_backend().unit_gradients(table))  # (K, P, 6) @ (K, 6, NACC)


def jacobian_images(mixture, m, origin, shape, settings, *, image=False):
    """The backend's Jacobian images ``(P, ny, nx)`` of a model on a whole-pixel grid.

    ``mixture`` and ``m`` as in :func:`chained_jacobian`; ``origin`` = (x, y) of
    pixel (0, 0).  With ``image`` the model image comes first, ``(1 + P, ny,
    nx)``: it is one more row of coefficients, so the kernel's one pass over
    each component gives both (the fitter's evaluation).
    """
    bk = get_backend()
    table = bk.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    coeff = chain_coefficients(table, m)
    if image:
        rows = np.zeros((coeff.shape[0], 1, _common.NACC))
        rows[:, 0, 0] = table[:, _common.AMP] * table[:, _common.NORM]
        coeff = np.concatenate([rows, coeff], axis=1)
    table[:, _common.MX] -= origin[0]
    table[:, _common.MY] -= origin[1]
    return bk.jacobian(table, coeff, shape, settings)


def chained_jacobian(mixture, m, x, y, settings):
    """Derivatives of a model's values at ``x, y`` with respect to its P parameters.

    The model's value is the pixel-integrated ``mixture``; ``m`` (K, P, 6) its
    component derivatives (see :func:`chain_coefficients`).  On a regular grid
    of whole pixels the backend's Jacobian kernel fills the P images in one pass
    over each component (:func:`jacobian_images`); elsewhere NumPy evaluates
    the same terms point by point.  Returns a list of P arrays of the broadcast
    shape of ``x, y``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = x.shape if x.shape == y.shape else np.broadcast_shapes(x.shape, y.shape)
    origin = grid_origin(x, y)
    if origin is not None:
        return list(jacobian_images(mixture, m, origin, shape, settings))
    table = _common.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    coeff = chain_coefficients(table, m)
    xb, yb = np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel()
    out = _common.jacobian_points(table, coeff, xb, yb, settings.n_sigma)
    return [row.reshape(shape) for row in out]
