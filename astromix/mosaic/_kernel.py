"""The resampling kernel of ExposureWeightedPSF: NumPy, compiled with Numba when it imports."""

import numpy as np

__all__ = ["accumulate", "HAVE_NUMBA"]


def _accumulate_numpy(flat, offsets, widths, heights, os_eff, cen, jinv, coef, tx, ty, out):
    """out[r, c] += sum_e coef[e] * bilinear(image e at cen_e + os_e Jinv_e (tx[c], ty[r]))."""
    gx, gy = np.meshgrid(tx, ty)
    gx, gy = gx.ravel(), gy.ravel()
    px = cen[:, 0:1] + os_eff[:, None] * (jinv[:, 0, 0:1] * gx + jinv[:, 0, 1:2] * gy)
    py = cen[:, 1:2] + os_eff[:, None] * (jinv[:, 1, 0:1] * gx + jinv[:, 1, 1:2] * gy)
    x0 = np.floor(px)
    y0 = np.floor(py)
    fx = px - x0
    fy = py - y0
    w = widths[:, None]
    h = heights[:, None]
    ok = (x0 >= 0) & (x0 < w - 1) & (y0 >= 0) & (y0 < h - 1)
    base = offsets[:, None] + np.where(ok, y0, 0).astype(np.intp) * w \
        + np.where(ok, x0, 0).astype(np.intp)
    val = ((1 - fy) * ((1 - fx) * flat[base] + fx * flat[base + 1])
           + fy * ((1 - fx) * flat[base + w] + fx * flat[base + w + 1]))
    out += (coef @ np.where(ok, val, 0.0)).reshape(out.shape)
    return out


try:
    import numba

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _accumulate_numba(flat, offsets, widths, heights, os_eff, cen, jinv, coef, tx, ty, out):
        for e in range(coef.shape[0]):
            a = os_eff[e] * jinv[e, 0, 0]
            b = os_eff[e] * jinv[e, 0, 1]
            c = os_eff[e] * jinv[e, 1, 0]
            d = os_eff[e] * jinv[e, 1, 1]
            w = widths[e]
            h = heights[e]
            off = offsets[e]
            ce = coef[e]
            for r in range(ty.shape[0]):
                bx = cen[e, 0] + b * ty[r]
                by = cen[e, 1] + d * ty[r]
                for k in range(tx.shape[0]):
                    px = bx + a * tx[k]
                    py = by + c * tx[k]
                    if px < 0.0 or py < 0.0:
                        continue
                    ix = int(px)
                    iy = int(py)
                    if ix >= w - 1 or iy >= h - 1:
                        continue
                    fx = px - ix
                    fy = py - iy
                    i = off + iy * w + ix
                    v = ((1.0 - fy) * ((1.0 - fx) * flat[i] + fx * flat[i + 1])
                         + fy * ((1.0 - fx) * flat[i + w] + fx * flat[i + w + 1]))
                    out[r, k] += ce * v
        return out

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is optional
    HAVE_NUMBA = False


def accumulate(flat, offsets, widths, heights, os_eff, cen, jinv, coef, tx, ty, out):
    """Add the weighted, resampled exposure PSFs to ``out`` (shape (len(ty), len(tx))).

    Parameters
    ----------
    flat : ndarray, float64
        The prepared images one after the other (C order).
    offsets, widths, heights : ndarray of int64, shape (E,)
        Where each image starts in ``flat`` and its (nx, ny).
    os_eff : ndarray, shape (E,)
        Samples per detector pixel.
    cen : ndarray, shape (E, 2)
        (x, y) index of each PSF centre.
    jinv : ndarray, shape (E, 2, 2)
        Detector <- mosaic Jacobians.
    coef : ndarray, shape (E,)
        Weight times ``|det jinv|`` over the total weight.
    tx, ty : ndarray
        Grid offsets from the PSF centre [mosaic px].
    out : ndarray, shape (len(ty), len(tx))

    Returns
    -------
    out
    """
    if HAVE_NUMBA:
        return _accumulate_numba(flat, offsets, widths, heights, os_eff, cen, jinv, coef, tx, ty,
                                 out)
    return _accumulate_numpy(flat, offsets, widths, heights, os_eff, cen, jinv, coef, tx, ty, out)
