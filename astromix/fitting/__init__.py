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
from .lsq import MixtureLSQFitter
from .nested import DynestyFitter

__all__ = ["DynestyFitter", "MixtureLSQFitter", "fit_gaussian_mixture", "fit_psf_mixture",
           "mixture_from_vector", "mixture_to_vector"]

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


def _start(image, n_components, rng, jitter, n_negative=0):
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
    if n_negative:
        # negative components start narrow (carving the core) with a small share
        amp[n_components - n_negative:] = -0.1 * flux / n_components
        sigmas[n_components - n_negative:] = sigmas[0] * np.linspace(0.8, 1.5, n_negative)
    mean = np.tile([xc, yc], (n_components, 1))
    if jitter:
        mean = mean + rng.normal(0, 0.3, mean.shape)
    cov = sigmas[:, None, None] ** 2 * np.eye(2)
    return GaussianMixture(amp, mean, cov)


def fit_gaussian_mixture(image, n_components, *, weight=None, n_starts=3, rng=None,
                         nonnegative=True, n_negative=0, maxiter=2000, settings=None,
                         backend=None):
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
        Keep amplitudes >= 0 (default); False leaves every sign free.
    n_negative : int, optional
        Number of components (the last ones) constrained to amplitudes <= 0,
        the others to >= 0 (overrides ``nonnegative``).  Negative components
        carve the core of a PSF with rings or a flat top.
    maxiter : int, optional
        Iteration limit per start.
    settings : AccuracySettings, optional
    backend : str, optional

    Returns
    -------
    mixture : GaussianMixture
        The fit, in the image's pixels and flux units, components sorted by
        decreasing absolute amplitude.
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

    n_negative = int(n_negative)
    if not 0 <= n_negative < n_components:
        raise InputError(f"n_negative must lie in [0, n_components), got {n_negative}")
    bounds = []
    for k in range(n_components):
        if n_negative and k >= n_components - n_negative:
            amp_bounds = (None, 0.0)
        elif n_negative or nonnegative:
            amp_bounds = (0.0, None)
        else:
            amp_bounds = (None, None)
        bounds += [amp_bounds] + [(None, None)] * 5
    best = None
    n_it = 0
    for s in range(max(1, int(n_starts))):
        start = _start(data, n_components, rng, jitter=s > 0, n_negative=n_negative)
        res = optimize.minimize(fun, mixture_to_vector(start), jac=True, method="L-BFGS-B",
                                bounds=bounds, options={"maxiter": maxiter, "maxfun": 2 * maxiter})
        n_it += res.nit
        log.debug("start %d: chi2 %.6g after %d iterations", s, res.fun, res.nit)
        if best is None or res.fun < best.fun:
            best = res
    mix = mixture_from_vector(best.x)
    order = np.argsort(-np.abs(mix.amp), kind="stable")
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


def fit_psf_mixture(image, n_components, *, oversampling=1, trim=0, snr=None, n_negative=0,
                    method="lsq", rng=None, n_starts=3, nlive=200, maxcall=None, settings=None,
                    backend=None):
    """Fit a Gaussian-mixture PSF to a (possibly oversampled) PSF image.

    Replaces forcepho's ``make_psf.py`` (Johnson et al.): the mixture is fitted
    by least squares with the analytic gradient in the image's own (possibly
    oversampled) pixels, then converted to science pixels as forcepho does:
    components sorted by weight, centres taken relative to the PSF centre and
    divided by ``oversampling``, covariances divided by ``oversampling**2``.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The PSF image (any normalisation), e.g. an stpsf/WebbPSF model or an
        empirical ePSF.
    n_components : int
        Number of Gaussians (>= 1), negative ones included.
    oversampling : int or float, optional
        Image pixels per science pixel (a FITS header's ``DET_SAMP`` or
        ``OVERSAMP``); default 1.
    trim : int, optional
        Pixels removed from each edge before fitting (forcepho's ``--trim``).
    snr : float, optional
        Forcepho's homoscedastic noise model, ``sigma = flux / (snr sqrt(Npix))``;
        it scales chi2 but, with uniform weights, not the least-squares fit;
        it sets the width of the posterior with ``method="nested"`` (default
        there: 100).
    n_negative : int, optional
        Number of components with amplitude <= 0.
    method : {"lsq", "nested"}, optional
        ``"lsq"``: L-BFGS-B least squares from several starts.
        ``"nested"``: the least-squares fit, then nested sampling
        (:class:`astromix.fitting.DynestyFitter`, dynesty) of every component
        parameter with uniform priors around it (amplitudes x0.5-1.5, offsets
        +-0.5 image px, widths x0.7-1.4, correlations +-0.3); the result is
        the highest-likelihood sample (forcepho keeps its lowest-energy NUTS
        sample).
    rng : numpy.random.Generator or int, optional
    n_starts : int, optional
    nlive, maxcall : int, optional
        Live points and call limit of the nested sampler.
    settings : AccuracySettings, optional
    backend : str, optional

    Returns
    -------
    GaussianMixturePSF
        Unit-flux PSF in science pixels centred on (0, 0), with ``fit_info``
        (dict): ``chi2``, ``max_residual_over_peak``, ``l1_residual_over_flux``
        (measured in the fitted image's pixels), ``time_s``, ``n_iterations``,
        ``oversampling``, ``trim``, ``center`` (the PSF centre in the trimmed
        image's pixels), ``flux`` (of the fitted mixture, image units),
        ``model`` (the fitted image) and ``method``; with ``"nested"`` also
        ``nested`` (the DynestyFitter's ``fit_info``: dynesty ``results``,
        equal-weight posterior ``samples`` with their ``param_names``,
        ``logz``, ...), ``best_sample`` (parameter name -> value of the
        highest-likelihood sample, image pixels) and ``lsq`` (the metrics of
        the least-squares start).

    Raises
    ------
    InputError
        On a bad image, ``trim`` leaving nothing, a non-positive
        ``oversampling`` or ``snr``, or an unknown ``method``.
    """
    from ..models import GaussianMixturePSF

    t0 = time.perf_counter()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"PSF image must be 2-d, got shape {img.shape}")
    trim = int(trim)
    if trim < 0 or 2 * trim >= min(img.shape):
        raise InputError(f"trim={trim} leaves nothing of a {img.shape} image")
    if trim:
        img = img[trim:-trim, trim:-trim]
    oversampling = float(oversampling)
    if not oversampling > 0:
        raise InputError(f"oversampling must be > 0, got {oversampling}")
    if method not in ("lsq", "nested"):
        raise InputError(f"unknown method {method!r}; use 'lsq' or 'nested'")
    weight = None
    if snr is not None:
        if not float(snr) > 0:
            raise InputError(f"snr must be > 0, got {snr}")
        sigma = np.clip(img, 0, None).sum() / (float(snr) * np.sqrt(img.size))
        weight = np.full(img.shape, 1.0 / sigma ** 2)
    rng = np.random.default_rng(rng)
    mix, info = fit_gaussian_mixture(img, n_components, weight=weight, n_starts=n_starts,
                                     rng=rng, n_negative=n_negative, settings=settings,
                                     backend=backend)
    if method == "nested":
        mix, info = _nested_refine(img, mix, info, snr=100.0 if snr is None else float(snr),
                                   rng=rng, nlive=nlive, maxcall=maxcall, settings=settings)
    model_image = mix.render(img.shape, settings=settings, backend=backend)
    flux = mix.flux
    center = mix.moments()[1]
    science = GaussianMixture(mix.amp / flux, (mix.mean - center) / oversampling,
                              mix.cov / oversampling ** 2)
    psf = GaussianMixturePSF(science, settings=settings)
    info.update(time_s=time.perf_counter() - t0, oversampling=oversampling, trim=trim,
                center=center, flux=flux, model=np.asarray(model_image), method=method)
    psf.fit_info = info
    return psf


def _nested_refine(img, mix, info, *, snr, rng, nlive, maxcall, settings):
    """Nested sampling of a GaussianMixturePSF around a least-squares mixture (image px)."""
    from ..models import GaussianMixturePSF
    from .nested import DynestyFitter

    flux = mix.flux
    centre = mix.moments()[1]
    start = GaussianMixture(mix.amp / flux, mix.mean - centre, mix.cov)
    model = GaussianMixturePSF(start, flux=flux, x_0=centre[0], y_0=centre[1],
                               fixed_shape=False, settings=settings)
    model.flux.fixed = model.x_0.fixed = model.y_0.fixed = True
    priors = {}
    for k in range(len(start)):
        amp = getattr(model, f"amp_{k}").value
        priors[f"amp_{k}"] = tuple(sorted((0.5 * amp, 1.5 * amp)))
        for name in ("xoff", "yoff"):
            v = getattr(model, f"{name}_{k}").value
            priors[f"{name}_{k}"] = (v - 0.5, v + 0.5)
        for name in ("sigma_x", "sigma_y"):
            v = getattr(model, f"{name}_{k}").value
            priors[f"{name}_{k}"] = (0.7 * v, 1.4 * v)
        rho = getattr(model, f"rho_{k}").value
        priors[f"rho_{k}"] = (max(-0.999, rho - 0.3), min(0.999, rho + 0.3))
    sigma = np.clip(img, 0, None).sum() / (snr * np.sqrt(img.size))
    y, x = np.mgrid[:img.shape[0], :img.shape[1]]
    fitter = DynestyFitter(nlive=nlive, rng=rng)
    fitted = fitter(model, x, y, img, weights=np.full(img.shape, 1.0 / sigma), priors=priors,
                    maxcall=maxcall)
    best = fitted.placed_mixture()
    resid = img - best.render(img.shape, settings=settings)
    nested_info = dict(info)
    nested_info.update(
        chi2=float(np.sum(resid ** 2) / sigma ** 2),
        max_residual_over_peak=float(np.abs(resid).max() / img.max()),
        l1_residual_over_flux=float(np.abs(resid).sum() / img.sum()),
        nested=fitter.fit_info, best_sample=dict(fitter.fit_info["best"]),
        lsq={key: info[key] for key in ("chi2", "max_residual_over_peak",
                                         "l1_residual_over_flux", "time_s")})
    return best, nested_info
