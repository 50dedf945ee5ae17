"""Array-library-agnostic pieces shared by every backend.

The kernels of all backends consume the same per-Gaussian table built here and
return the same accumulator table, which is turned into gradients here.  So the
numerics that decide *which* pixels a Gaussian touches and *how* the gradient is
assembled exist once; the backends differ only in how they loop over pixels.

Per-Gaussian table (float64, shape (K, NPAR)), columns:

=====  =========  =========================================================
index  name       meaning
=====  =========  =========================================================
0      AMP        amplitude (total flux of the component)
1, 2   MX, MY     centre [px]
3-5    SXX..SYY   S = C + box variance (C itself with pixel_integration="none")
6-8    FXX..FYY   F = S^-1
9      NORM       1 / (2 pi sqrt(det S))
10     USE4       1.0 when the fourth-order (kurtosis) factor is applied
11     INVDET     1 / det S
12     HY         n_sigma sqrt(S_yy), half height of the culling ellipse [px]
13     HX         n_sigma sqrt(S_xx), half width of the culling ellipse [px]
=====  =========  =========================================================

Culling rule (every backend): a component touches the pixels of its box,
columns ``ceil(MX - HX) .. floor(MX + HX)`` and rows ``ceil(MY - HY) ..
floor(MY + HY)`` clipped to the image, whose quadratic form ``q = d^T F d`` is
``<= n_sigma**2`` (its n-sigma ellipse).  Keeping every row of a component the
same length lets the CPU predict the pixel loops; the few pixels of the box
outside the ellipse are computed and masked.

Accumulators (float64, shape (K, NACC)), with ``R = 2 w (model - data)``,
``E = exp(-q/2)``, ``P`` the fourth-order factor (1 when not applied),
``Px = 4 v_x^3 - 12 F_xx v_x`` and ``Py`` likewise, summed over the pixels in
the component's culling ellipse:

0 ``sum R E P``; 1, 2 ``sum R E P v_x``, ``... v_y``; 3-5 ``sum R E P v_x v_x``,
``v_x v_y``, ``v_y v_y``; 6, 7 ``sum R E Px``, ``sum R E Py``; 8, 9 ``sum R E Px
v_x``, ``... Px v_y``; 10, 11 ``sum R E Py v_x``, ``... Py v_y``; 12 ``sum R E
(v_x^2 - F_xx)``; 13 ``sum R E (v_y^2 - F_yy)``.  Columns 6-13 are zero for a
component without the fourth-order factor.
"""

import math
import threading

import numpy as np

from ..settings import BOX_C4

AMP, MX, MY, SXX, SXY, SYY, FXX, FXY, FYY, NORM, USE4, INVDET, HY, HX = range(14)
NPAR = 14
NACC = 14


def prepare(amp, mean, cov, settings):
    """Build the per-Gaussian parameter table (NumPy, float64, (K, NPAR))."""
    amp = np.asarray(amp, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    k = amp.shape[0]
    table = np.zeros((k, NPAR), dtype=np.float64)
    box = settings.box_variance
    sxx = cov[:, 0, 0] + box
    sxy = 0.5 * (cov[:, 0, 1] + cov[:, 1, 0])
    syy = cov[:, 1, 1] + box
    det = sxx * syy - sxy * sxy
    table[:, AMP] = amp
    table[:, MX] = mean[:, 0]
    table[:, MY] = mean[:, 1]
    table[:, SXX] = sxx
    table[:, SXY] = sxy
    table[:, SYY] = syy
    table[:, FXX] = syy / det
    table[:, FXY] = -sxy / det
    table[:, FYY] = sxx / det
    table[:, NORM] = 1.0 / (2.0 * math.pi * np.sqrt(det))
    if settings.pixel_integration == "kurtosis":
        size = 3.0 * abs(BOX_C4) * (table[:, FXX] ** 2 + table[:, FYY] ** 2)
        table[:, USE4] = (size >= settings.fourth_order_threshold).astype(np.float64)
    table[:, INVDET] = 1.0 / det
    table[:, HY] = settings.n_sigma * np.sqrt(syy)
    table[:, HX] = settings.n_sigma * np.sqrt(sxx)
    return table


def host_array(x, dtype=None):
    """``x`` as a NumPy array on the host, copied from the GPU if it lives there.

    Parameters
    ----------
    x : array_like
        Any array; a CuPy array (an object with ``__cuda_array_interface__``
        and a ``get`` method) is copied to the host with ``x.get()``, which
        ``np.asarray`` refuses to do implicitly.
    dtype : dtype, optional
        Conversion applied after the copy.

    Returns
    -------
    ndarray
    """
    if hasattr(x, "__cuda_array_interface__") and callable(getattr(x, "get", None)):
        x = x.get()
    return np.asarray(x, dtype=dtype)


def box(table_row, shape):
    """Culling box ``(j0, j1, i0, i1)`` (inclusive, clipped) of one component."""
    ny, nx = shape
    j0 = max(math.ceil(table_row[MY] - table_row[HY]), 0)
    j1 = min(math.floor(table_row[MY] + table_row[HY]), ny - 1)
    i0 = max(math.ceil(table_row[MX] - table_row[HX]), 0)
    i1 = min(math.floor(table_row[MX] + table_row[HX]), nx - 1)
    return j0, j1, i0, i1


def assemble_gradient(table, acc):
    """Turn kernel accumulators into (d_amp (K,), d_mean (K, 2), d_cov (K, 2, 2)).

    ``d_cov`` is the symmetric matrix gradient: for a symmetric perturbation
    ``dC``, ``d chi2 = sum_ab d_cov[a, b] dC[a, b]``.
    """
    acc = np.asarray(acc, dtype=np.float64)
    t = table
    norm = t[:, NORM]
    a = t[:, AMP] * norm
    c4 = BOX_C4
    f = np.empty((t.shape[0], 2, 2))
    f[:, 0, 0] = t[:, FXX]
    f[:, 0, 1] = f[:, 1, 0] = t[:, FXY]
    f[:, 1, 1] = t[:, FYY]
    s0 = acc[:, 0]
    sv = acc[:, 1:3]
    svv = np.empty((t.shape[0], 2, 2))
    svv[:, 0, 0] = acc[:, 3]
    svv[:, 0, 1] = svv[:, 1, 0] = acc[:, 4]
    svv[:, 1, 1] = acc[:, 5]
    spx, spy = acc[:, 6], acc[:, 7]
    spx_v = acc[:, 8:10]
    spy_v = acc[:, 10:12]
    sqx, sqy = acc[:, 12], acc[:, 13]
    fx = f[:, 0, :]  # F_xa
    fy = f[:, 1, :]  # F_ya

    d_amp = norm * s0
    d_mean = a[:, None] * (sv - c4 * (spx[:, None] * fx + spy[:, None] * fy))
    g = (-0.5 * f * s0[:, None, None] + 0.5 * svv
         - c4 * (fx[:, :, None] * spx_v[:, None, :] + fy[:, :, None] * spy_v[:, None, :])
         + 6.0 * c4 * (sqx[:, None, None] * fx[:, :, None] * fx[:, None, :]
                       + sqy[:, None, None] * fy[:, :, None] * fy[:, None, :]))
    g = 0.5 * (g + np.swapaxes(g, 1, 2))
    d_cov = a[:, None, None] * g
    return d_amp, d_mean, d_cov


def stack_gradients(d_amp, d_mean, d_cov):
    """(K, 6, ...) from d_amp (K, ...), d_mean (K, ..., 2), d_cov (K, ..., 2, 2).

    The six rows are d / d (amp, mean_x, mean_y, C_xx, C_xy, C_yy), the C_xy row
    being ``d_cov[xy] + d_cov[yx]`` (one off-diagonal parameter).
    """
    return np.stack([d_amp, d_mean[..., 0], d_mean[..., 1], d_cov[..., 0, 0],
                     d_cov[..., 0, 1] + d_cov[..., 1, 0], d_cov[..., 1, 1]], axis=1)


def unit_gradients(table, assemble=None):
    """The gradient of each component for each accumulator set to 1: the linear map
    from the NACC per-pixel accumulator terms to d value / d (amp, mean, cov).

    Returns ``(d_amp (K, NACC), d_mean (K, NACC, 2), d_cov (K, NACC, 2, 2))``:
    for one pixel whose accumulator terms (the summands above with ``R = 1``)
    are ``a_m``, ``d value / d amp_k = sum_m d_amp[k, m] a_m`` (and so on),
    since :func:`assemble_gradient` is linear in the accumulators.
    ``assemble``: a faster version of :func:`assemble_gradient` (a backend's).
    """
    k = table.shape[0]
    rep = np.repeat(table, NACC, axis=0)
    eye = np.tile(np.eye(NACC), (k, 1))
    d_amp, d_mean, d_cov = (assemble or assemble_gradient)(rep, eye)
    return (d_amp.reshape(k, NACC), d_mean.reshape(k, NACC, 2),
            d_cov.reshape(k, NACC, 2, 2))


def pixel_terms(table_row, dx, dy, n_sigma):
    """The NACC accumulator terms (``R = 1``) of one component at offsets ``dx, dy``.

    ``dx, dy`` are float64 arrays of one shape (pixel minus centre); returns an
    array of shape ``(NACC,) + dx.shape``, zero outside the culling ellipse.
    """
    fxx, fxy, fyy = table_row[FXX], table_row[FXY], table_row[FYY]
    vx = fxx * dx + fxy * dy
    vy = fxy * dx + fyy * dy
    q = dx * vx + dy * vy
    e = np.where(q <= n_sigma * n_sigma, np.exp(-0.5 * np.minimum(q, 100.0)), 0.0)
    vx2, vy2 = vx * vx, vy * vy
    out = np.zeros((NACC,) + np.shape(dx))
    if table_row[USE4]:
        ep = e * (1.0 + BOX_C4 * (vx2 * (vx2 - 6 * fxx) + 3 * fxx * fxx
                                  + vy2 * (vy2 - 6 * fyy) + 3 * fyy * fyy))
        px = e * (4 * vx2 * vx - 12 * fxx * vx)
        py = e * (4 * vy2 * vy - 12 * fyy * vy)
        out[6], out[7] = px, py
        out[8], out[9] = px * vx, px * vy
        out[10], out[11] = py * vx, py * vy
        out[12] = e * (vx2 - fxx)
        out[13] = e * (vy2 - fyy)
    else:
        ep = e
    out[0] = ep
    out[1], out[2] = ep * vx, ep * vy
    out[3], out[4], out[5] = ep * vx2, ep * vx * vy, ep * vy2
    return out


def jacobian_points(table, coeff, x, y, n_sigma):
    """Jacobian of a model at arbitrary points, from chained coefficients (NumPy).

    Parameters
    ----------
    table : ndarray, shape (K, NPAR)
    coeff : ndarray, shape (K, P, NACC)
        ``d value / d theta_p = sum_k sum_m coeff[k, p, m] a_{k,m}`` with
        ``a_{k,m}`` the accumulator terms of component k at the point (see
        :func:`pixel_terms`).
    x, y : ndarray, shape (N,)

    Returns
    -------
    ndarray, shape (P, N)
    """
    out = np.zeros((coeff.shape[1], x.shape[0]))
    for k, trow in enumerate(table):
        terms = pixel_terms(trow, x - trow[MX], y - trow[MY], n_sigma)
        out += coeff[k] @ terms
    return out


class Backend:
    """Base class of the backends: the array-library-agnostic steps, in NumPy.

    A backend sets ``name`` and ``xp`` and implements ``render``, ``residual``
    and ``accumulate``; it may override :meth:`prepare` and
    :meth:`assemble_gradient` with faster versions of the same arithmetic.
    """

    name = None
    xp = np

    def prepare(self, amp, mean, cov, settings):
        """Per-Gaussian table (NumPy float64, (K, NPAR)); see :func:`prepare`."""
        return prepare(amp, mean, cov, settings)

    def render_stamp(self, amp, mean, cov, shape, dtype, settings):
        """One-call render of a small image, or None where this backend has none.

        :meth:`astromix.GaussianMixture.render` tries this first and otherwise
        calls :meth:`prepare` and ``render``; a backend overrides it where the
        separate calls cost a noticeable part of a small stamp (Numba).  Same
        arguments and result as that method (``amp`` (K,), ``mean`` (K, 2),
        ``cov`` (K, 2, 2) float64 C-contiguous; ``shape`` (ny, nx); ``dtype``
        float32 or float64).
        """
        return None

    def chi2_stamp(self, amp, mean, cov, data, weight, settings, gradient):
        """One-call chi2 (and gradient) of a small image, or None where not taken.

        :meth:`astromix.GaussianMixture.chi2` tries this first, with ``data``
        and ``weight`` already arrays of this backend of one shape and dtype,
        and otherwise checks the pixels and calls :meth:`prepare`, ``render``,
        ``residual``, ``accumulate`` and :meth:`assemble_gradient`.  An
        override returns that method's result, or None (also for any pixel
        that the general path refuses or masks, so that its errors stay the
        same).
        """
        return None

    def assemble_gradient(self, table, acc):
        """Gradients from accumulators; see :func:`assemble_gradient`."""
        return assemble_gradient(table, acc)

    def unit_gradients(self, table):
        """The linear map ``(K, 6, NACC)`` from a pixel's accumulator terms to the
        derivatives of its value with respect to each component's (amp, mean_x,
        mean_y, C_xx, C_xy, C_yy): :func:`unit_gradients`, stacked as by
        :func:`stack_gradients`.
        """
        return stack_gradients(*unit_gradients(table, self.assemble_gradient))

    def bad_pixel_counts(self, data, weight):
        """Counts of the pixels that ``GaussianMixture.chi2`` checks, in one place.

        Parameters
        ----------
        data, weight : arrays of this backend, shape (ny, nx), the same dtype

        Returns
        -------
        counts : tuple of 4 int
            Pixels with a non-finite weight, with a negative weight, with
            non-finite data, and with non-finite data and a positive weight.
        """
        xp = self.xp
        finite = xp.isfinite(data)
        return (int(xp.sum(~xp.isfinite(weight))), int(xp.sum(weight < 0)),
                int(xp.sum(~finite)), int(xp.sum(~finite & (weight > 0))))

    def asarray(self, x, dtype=None):
        """Return ``x`` as an array of this backend."""
        return self.xp.asarray(x, dtype=dtype)

    def scratch(self, shape, dtype, key):
        """A cached work array of this thread (contents undefined), reused across calls.

        ``GaussianMixture.chi2`` renders into it, so that a fit loop does not
        allocate (and page-fault in) two new images at every evaluation: on a
        1024x1024 image that cost more than the rendering itself.
        """
        local = getattr(self, "_scratch_local", None)
        if local is None:
            local = self._scratch_local = threading.local()
        cache = getattr(local, "arrays", None)
        if cache is None:
            cache = local.arrays = {}
        arr = cache.get(key)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
            arr = cache[key] = self.xp.empty(shape, dtype=dtype)
        return arr

    def to_numpy(self, x):
        """Return ``x`` as a NumPy array on the host."""
        return np.asarray(x)

    def jacobian(self, table, coeff, shape, settings, threads=None):
        """Jacobian images ``(P, ny, nx)`` float64 (NumPy, on the host) of a model.

        ``coeff`` (K, P, NACC) chains each component's accumulator terms to
        the model's P parameters (see :func:`jacobian_points`); pixel ``(j,
        i)`` is at ``(x=i, y=j)``.  This NumPy version loops over components,
        vectorised over each component's culling box; backends may override it.
        """
        out = np.zeros((coeff.shape[1],) + tuple(shape))
        for k, trow in enumerate(table):
            j0, j1, i0, i1 = box(trow, shape)
            if j1 < j0 or i1 < i0:
                continue
            dx = (np.arange(i0, i1 + 1) - trow[MX])[None, :]
            dy = (np.arange(j0, j1 + 1) - trow[MY])[:, None]
            dx, dy = np.broadcast_arrays(dx, dy)
            terms = pixel_terms(trow, dx, dy, settings.n_sigma)
            out[:, j0:j1 + 1, i0:i1 + 1] += np.tensordot(coeff[k], terms, axes=(1, 0))
        return out


def evaluate_points(table, x, y, n_sigma):
    """Pixel-integrated values of a prepared mixture at arbitrary points (NumPy).

    The same numerics as the kernels (culling ellipse, fourth-order factor),
    vectorised over components and points; used by the astropy models, which
    are evaluated at the pixel coordinates a fitter passes (their derivatives
    there: :func:`jacobian_points`).

    Parameters
    ----------
    table : ndarray, shape (K, NPAR)
    x, y : ndarray, shape (N,)
        Pixel coordinates [px].
    n_sigma : float

    Returns
    -------
    value : ndarray, shape (N,)
    """
    dx = x[None, :] - table[:, MX, None]
    dy = y[None, :] - table[:, MY, None]
    fxx, fxy, fyy = table[:, FXX, None], table[:, FXY, None], table[:, FYY, None]
    vx = fxx * dx + fxy * dy
    vy = fxy * dx + fyy * dy
    q = dx * vx + dy * vy
    e = np.where(q <= n_sigma * n_sigma, np.exp(-0.5 * np.minimum(q, 100.0)), 0.0)
    use4 = table[:, USE4, None] != 0
    vx2, vy2 = vx * vx, vy * vy
    c4 = BOX_C4
    p = np.where(use4, 1.0 + c4 * (vx2 * (vx2 - 6 * fxx) + 3 * fxx * fxx
                                   + vy2 * (vy2 - 6 * fyy) + 3 * fyy * fyy), 1.0)
    return (table[:, AMP, None] * table[:, NORM, None] * e * p).sum(0)
