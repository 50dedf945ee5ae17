"""NumPy reference backend: vectorised over the pixels of one component at a time.

It defines the numerics every other backend must reproduce (see ``_common``).
"""

import numpy as np

from ..settings import BOX_C4
from . import _common as c

__all__ = ["NumpyBackend"]


def _region(trow, n_sigma, shape):
    """Pixels of one component's culling box and ellipse (see ``_common``).

    Returns ``(j0, i0, dx, dy, inside)``: the first row and column of the box,
    the offsets ``dx`` (1, nxb) and ``dy`` (nyb, 1) from the centre (float64),
    and a boolean (nyb, nxb) mask of the pixels inside the ellipse.  ``None``
    when the box misses the image.
    """
    j0, j1, i0, i1 = c.box(trow, shape)
    if j1 < j0 or i1 < i0:
        return None
    dx = (np.arange(i0, i1 + 1) - trow[c.MX])[None, :]
    dy = (np.arange(j0, j1 + 1) - trow[c.MY])[:, None]
    q = dx * (trow[c.FXX] * dx + trow[c.FXY] * dy) + dy * (trow[c.FXY] * dx + trow[c.FYY] * dy)
    return j0, i0, dx, dy, q <= n_sigma * n_sigma


def _terms(trow, dx, dy, dtype):
    """E, P and v on a pixel grid, computed in ``dtype``."""
    dt = np.dtype(dtype).type
    dx = dx.astype(dtype)
    dy = dy.astype(dtype)
    fxx, fxy, fyy = dt(trow[c.FXX]), dt(trow[c.FXY]), dt(trow[c.FYY])
    vx = fxx * dx + fxy * dy
    vy = fxy * dx + fyy * dy
    q = dx * vx + dy * vy
    e = np.exp(dt(-0.5) * np.minimum(q, dt(100)))
    return e, vx, vy


def _fourth_order(trow, vx, vy, dtype):
    dt = np.dtype(dtype).type
    fxx, fyy = trow[c.FXX], trow[c.FYY]
    vx2, vy2 = vx * vx, vy * vy
    const = dt(1.0 + BOX_C4 * 3.0 * (fxx * fxx + fyy * fyy))
    return const + dt(BOX_C4) * (vx2 * (vx2 - dt(6 * fxx)) + vy2 * (vy2 - dt(6 * fyy)))


class NumpyBackend(c.Backend):
    """The reference backend (pure NumPy, float32 and float64)."""

    name = "numpy"
    xp = np

    def render(self, table, shape, dtype, settings, out=None, threads=None):
        """Render a prepared mixture (see ``_common.prepare``) into a (ny, nx) image.

        ``out``, if given, is an array of that shape and dtype, overwritten and returned.

        Parameters
        ----------
        table : ndarray, float64, shape (K, NPAR)
            The per-Gaussian table from :meth:`prepare` (centres [px],
            covariances [px^2], amplitudes in flux units).
        shape : tuple of int
            ``(ny, nx)`` of the image [px].
        dtype : {numpy.float32, numpy.float64}
            Working precision of the per-pixel arithmetic and dtype of the result.
        settings : AccuracySettings
            Only ``n_sigma`` is used here (the pixel-integration mode is already
            in the table).
        out : ndarray, shape (ny, nx), dtype ``dtype``, optional
            Array to render into (zeroed first).  A new array if omitted.
        threads : int, optional
            Ignored (this backend runs on the calling thread); accepted for the
            common interface.

        Returns
        -------
        image : ndarray, shape (ny, nx), dtype ``dtype``
            Pixel (j, i) holds the integral of the mixture over the unit pixel
            box centred on (x=i, y=j), in the units of the amplitudes (``out``
            when given).
        """
        if out is None:
            img = np.zeros(shape, dtype=dtype)
        else:
            img = out
            img[...] = 0
        dt = np.dtype(dtype).type
        for trow in table:
            reg = _region(trow, settings.n_sigma, shape)
            if reg is None:
                continue
            j0, i0, dx, dy, inside = reg
            e, vx, vy = _terms(trow, dx, dy, dtype)
            val = dt(trow[c.AMP] * trow[c.NORM]) * e
            if trow[c.USE4]:
                val = val * _fourth_order(trow, vx, vy, dtype)
            val = np.where(inside, val, dt(0))
            img[j0:j0 + val.shape[0], i0:i0 + val.shape[1]] += val
        return img

    def residual(self, model, data, weight, out=None):
        """Return ``(chi2, R)`` with ``R = 2 w (model - data)``; chi2 summed in float64.

        ``R`` is written to ``out`` when given (which may be ``model`` itself).

        Parameters
        ----------
        model : ndarray, shape (ny, nx), float32 or float64
            The rendered model image.
        data : ndarray, shape (ny, nx)
            The image, in the units of ``model``.
        weight : ndarray, shape (ny, nx)
            Inverse variance per pixel (units of 1 / ``data``**2).
        out : ndarray, shape (ny, nx), optional
            Where ``R`` is written; a new array if omitted.

        Returns
        -------
        chi2 : float
            ``sum w (model - data)**2``, the terms computed in the inputs'
            precision and summed in float64.
        R : ndarray, shape (ny, nx)
            ``2 w (model - data)``, ``out`` when given.
        """
        r = np.subtract(model, data, out=out)
        wr = weight * r
        chi2 = float(np.sum(wr * r, dtype=np.float64))
        np.multiply(wr, 2, out=r)
        return chi2, r

    def accumulate(self, table, rimg, settings, threads=None):
        """Gradient accumulators (K, NACC) float64 for the residual image ``rimg``.

        Parameters
        ----------
        table : ndarray, float64, shape (K, NPAR)
            As for :meth:`render`.
        rimg : ndarray, shape (ny, nx), float32 or float64
            ``R = 2 w (model - data)`` from :meth:`residual`; its dtype is the
            working precision of the per-pixel exponentials.
        settings : AccuracySettings
            Only ``n_sigma`` is used.
        threads : int, optional
            Ignored (this backend runs on the calling thread).

        Returns
        -------
        acc : ndarray, float64, shape (K, NACC)
            The sums described in :mod:`astromix.backends._common` (columns
            6-13 zero for components without the fourth-order factor), from
            which :meth:`assemble_gradient` forms the gradient of chi2.
        """
        acc = np.zeros((table.shape[0], c.NACC), dtype=np.float64)
        dtype = rimg.dtype
        for k, trow in enumerate(table):
            reg = _region(trow, settings.n_sigma, rimg.shape)
            if reg is None:
                continue
            j0, i0, dx, dy, inside = reg
            e, vx, vy = _terms(trow, dx, dy, dtype)
            r = rimg[j0:j0 + e.shape[0], i0:i0 + e.shape[1]]
            re = np.where(inside, r * e, 0).astype(np.float64)
            vx = vx.astype(np.float64)
            vy = vy.astype(np.float64)
            if trow[c.USE4]:
                p = _fourth_order(trow, vx, vy, np.float64)
                fxx, fyy = trow[c.FXX], trow[c.FYY]
                px = 4 * vx ** 3 - 12 * fxx * vx
                py = 4 * vy ** 3 - 12 * fyy * vy
                acc[k, 6] = np.sum(re * px)
                acc[k, 7] = np.sum(re * py)
                acc[k, 8] = np.sum(re * px * vx)
                acc[k, 9] = np.sum(re * px * vy)
                acc[k, 10] = np.sum(re * py * vx)
                acc[k, 11] = np.sum(re * py * vy)
                acc[k, 12] = np.sum(re * (vx * vx - fxx))
                acc[k, 13] = np.sum(re * (vy * vy - fyy))
                rep = re * p
            else:
                rep = re
            acc[k, 0] = np.sum(rep)
            acc[k, 1] = np.sum(rep * vx)
            acc[k, 2] = np.sum(rep * vy)
            acc[k, 3] = np.sum(rep * vx * vx)
            acc[k, 4] = np.sum(rep * vx * vy)
            acc[k, 5] = np.sum(rep * vy * vy)
        return acc
