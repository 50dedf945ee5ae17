"""Fitting Gaussian mixtures to images.

This module holds the low-level fit of a free Gaussian mixture to one image,
on which the model fitters of later releases (``MixtureLSQFitter``,
``DynestyFitter``) build.  It leans on :func:`scipy.optimize.minimize`
(L-BFGS-B) fed with the backend's analytic chi2 gradient.
"""

import logging
import time

import numpy as np
from scipy import optimize

from ..errors import InputError
from ..mixtures import GaussianMixture

__all__ = ["fit_gaussian_mixture", "mixture_from_vector", "mixture_to_vector"]

log = logging.getLogger("astromix")


def mixture_to_vector(mixture):
    """Unconstrained parameter vector of a mixture.

    Per component: ``amp, x, y, log l11, l21, log l22`` with the Cholesky
    factor ``L = [[l11, 0], [l21, l22]]``, ``C = L L^T`` (so every vector maps
    to a valid covariance).

    Returns
    -------
    ndarray, shape (6 K,)
    """
    chol = np.linalg.cholesky(mixture.cov)
    p = np.empty((len(mixture), 6))
    p[:, 0] = mixture.amp
    p[:, 1:3] = mixture.mean
    p[:, 3] = np.log(chol[:, 0, 0])
    p[:, 4] = chol[:, 1, 0]
    p[:, 5] = np.log(chol[:, 1, 1])
    return p.ravel()


def mixture_from_vector(vector):
    """Inverse of :func:`mixture_to_vector`: a vector (6 K,) to a GaussianMixture."""
    p = np.asarray(vector, dtype=np.float64).reshape(-1, 6)
    l11, l21, l22 = np.exp(p[:, 3]), p[:, 4], np.exp(p[:, 5])
    cov = np.empty((p.shape[0], 2, 2))
    cov[:, 0, 0] = l11 * l11
    cov[:, 0, 1] = cov[:, 1, 0] = l11 * l21
    cov[:, 1, 1] = l21 * l21 + l22 * l22
    return GaussianMixture(p[:, 0], p[:, 1:3], cov)


def _vector_gradient(vector, d_amp, d_mean, d_cov):
    """Chain d chi2 / d(amp, mean, cov) to d chi2 / d(vector)."""
    p = vector.reshape(-1, 6)
    l11, l21, l22 = np.exp(p[:, 3]), p[:, 4], np.exp(p[:, 5])
    gxx, gxy, gyy = d_cov[:, 0, 0], d_cov[:, 0, 1], d_cov[:, 1, 1]
    # C_xx = l11^2, C_xy = C_yx = l11 l21, C_yy = l21^2 + l22^2 (symmetric gradient)
    g = np.empty_like(p)
    g[:, 0] = d_amp
    g[:, 1:3] = d_mean
    g[:, 3] = (gxx * 2 * l11 + 2 * gxy * l21) * l11
    g[:, 4] = 2 * gxy * l11 + gyy * 2 * l21
    g[:, 5] = gyy * 2 * l22 * l22
    return g.ravel()


def _start(image, n_components, rng, jitter):
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    pos = np.clip(image, 0, None)
    flux = pos.sum()
    xc, yc = (pos * xx).sum() / flux, (pos * yy).sum() / flux
    # half-light radius from the growth curve around the centroid
    r = np.hypot(xx - xc, yy - yc).ravel()
    order = np.argsort(r)
    cum = np.cumsum(pos.ravel()[order])
    r_half = max(r[order][np.searchsorted(cum, 0.5 * cum[-1])], 0.7)
    sigmas = np.geomspace(0.4, 3.0, n_components) * r_half / 1.1774
    if jitter:
        sigmas = sigmas * np.exp(rng.normal(0, 0.3, n_components))
    amp = np.full(n_components, flux / n_components)
    mean = np.tile([xc, yc], (n_components, 1))
    if jitter:
        mean = mean + rng.normal(0, 0.3, mean.shape)
    cov = sigmas[:, None, None] ** 2 * np.eye(2)
    return GaussianMixture(amp, mean, cov)


def fit_gaussian_mixture(image, n_components, *, weight=None, n_starts=3, rng=None,
                         nonnegative=True, maxiter=2000, settings=None, backend=None):
    """Fit a K-component Gaussian mixture to an image by weighted least squares.

    Minimises ``sum weight * (model - image)**2`` over every component's
    amplitude, centre and covariance (Cholesky-parameterised, so covariances
    stay positive definite) with L-BFGS-B and the backend's analytic gradient.
    The model is pixel-integrated (see :class:`astromix.AccuracySettings`).

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The image, e.g. a PSF (any flux normalisation).  Pixel (j, i) is
        centred at (x=i, y=j).
    n_components : int
        Number of Gaussians K (>= 1).
    weight : array-like, shape (ny, nx), optional
        Inverse variance per pixel (0 masks); uniform if omitted.
    n_starts : int, optional
        Number of starting points: the first from the image's centroid and
        half-light radius, the others jittered from it with ``rng``; the best
        fit is kept.
    rng : numpy.random.Generator or int, optional
        Random generator (or seed) for the jittered starts; reproducible.
    nonnegative : bool, optional
        Keep amplitudes >= 0 (default).
    maxiter : int, optional
        Iteration limit per start.
    settings : AccuracySettings, optional
    backend : str, optional

    Returns
    -------
    mixture : GaussianMixture
        The fit, in the image's pixels and flux units, components sorted by
        decreasing amplitude.
    info : dict
        ``chi2``, ``max_residual_over_peak`` (``max|image - model| / max(image)``),
        ``l1_residual_over_flux`` (``sum|image - model| / sum(image)``),
        ``time_s``, ``n_iterations``, ``success``, ``message``, ``n_starts``.

    Raises
    ------
    InputError
        If the image is not a finite 2-d array with positive total flux, or
        ``n_components`` < 1.
    """
    t0 = time.perf_counter()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"image must be 2-d, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise InputError("image has non-finite pixels; mask them with weight=0 and replace them")
    n_components = int(n_components)
    if n_components < 1:
        raise InputError(f"n_components must be >= 1, got {n_components}")
    w = np.ones_like(img) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != img.shape:
        raise InputError(f"weight shape {w.shape} differs from image shape {img.shape}")
    flux = float(np.clip(img, 0, None).sum())
    if not flux > 0:
        raise InputError("image has no positive flux to fit")
    peak = float(img.max())
    scale = 1.0 / peak
    data = img * scale
    rng = np.random.default_rng(rng)

    def fun(v):
        try:
            mix = mixture_from_vector(v)
        except InputError:
            return np.inf, np.zeros_like(v)
        chi2, grads = mix.chi2(data, w, gradient=True, settings=settings, backend=backend)
        return chi2, _vector_gradient(v, *grads)

    bounds = [(0.0, None) if (i % 6 == 0 and nonnegative) else (None, None)
              for i in range(6 * n_components)]
    best = None
    n_it = 0
    for s in range(max(1, int(n_starts))):
        start = _start(data, n_components, rng, jitter=s > 0)
        res = optimize.minimize(fun, mixture_to_vector(start), jac=True, method="L-BFGS-B",
                                bounds=bounds, options={"maxiter": maxiter, "maxfun": 2 * maxiter})
        n_it += res.nit
        log.debug("start %d: chi2 %.6g after %d iterations", s, res.fun, res.nit)
        if best is None or res.fun < best.fun:
            best = res
    mix = mixture_from_vector(best.x)
    order = np.argsort(-mix.amp)
    mix = GaussianMixture(mix.amp[order] / scale, mix.mean[order], mix.cov[order])
    model = mix.render(img.shape, settings=settings, backend=backend)
    model = np.asarray(model) if backend != "cupy" else model.get()
    resid = img - model
    info = {
        "chi2": float(np.sum(w * resid ** 2)),
        "max_residual_over_peak": float(np.abs(resid).max() / peak),
        "l1_residual_over_flux": float(np.abs(resid).sum() / img.sum()),
        "time_s": time.perf_counter() - t0,
        "n_iterations": int(n_it),
        "success": bool(best.success),
        "message": str(best.message),
        "n_starts": int(max(1, n_starts)),
    }
    return mix, info
