"""Evaluation helpers shared by the astropy models of astromix."""

import numpy as np

from ..backends import _common, get_backend


def scalar(value):
    """The float inside an astropy parameter value (scalar, 1-element array or Quantity)."""
    value = getattr(value, "value", value)
    return float(np.ravel(value)[0])


def grid_origin(x, y):
    """(x0, y0) when x, y are a 2-d grid of whole pixels starting there, else None."""
    if x.ndim != 2 or x.shape != y.shape or x.size < 64:
        return None
    x0, y0 = x[0, 0], y[0, 0]
    ny, nx = x.shape
    if not (np.array_equal(x[0], x0 + np.arange(nx)) and np.array_equal(y[:, 0], y0 + np.arange(ny))
            and (x == x[0]).all() and (y == y[:, :1]).all()):
        return None
    return x0, y0


def evaluate_mixture(mixture, x, y, settings):
    """Pixel-integrated values of a GaussianMixture at pixel coordinates ``x, y``.

    On a regular grid of whole pixels (``x[j, i] = x[0, 0] + i``, ``y[j, i] =
    y[0, 0] + j``, as from ``numpy.mgrid``) the image is rendered by the active
    backend's kernel; elsewhere the same values are computed point by point with
    NumPy (:func:`astromix.backends._common.evaluate_points`).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    table = _common.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    origin = grid_origin(x, y)
    if origin is not None:
        table[:, _common.MX] -= origin[0]
        table[:, _common.MY] -= origin[1]
        bk = get_backend()
        return bk.to_numpy(bk.render(table, shape, np.float64, settings))
    xb, yb = np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel()
    return _common.evaluate_points(table, xb, yb, settings.n_sigma).reshape(shape)


def mixture_derivatives(mixture, x, y, settings):
    """Per component and point: d value / d (amp, mean, cov), and the broadcast shape.

    Returns ``(shape, d_amp (K, N), d_mean (K, N, 2), d_cov (K, N, 2, 2))``
    with N the number of points; ``d_cov`` is the symmetric matrix gradient.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    xb, yb = np.broadcast_to(x, shape).ravel(), np.broadcast_to(y, shape).ravel()
    table = _common.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    _, (d_amp, d_mean, d_cov) = _common.evaluate_points(table, xb, yb, settings.n_sigma,
                                                        derivatives=True)
    return shape, d_amp, d_mean, d_cov
