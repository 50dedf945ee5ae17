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

from .. import backends as _backends
from .._threads import blas_single_threaded
from ..errors import InputError
from ..mixtures import GaussianMixture
from .lsq import MixtureLSQFitter
from .nested import DynestyFitter, Posterior
from .patches import Patch, fit_patches, make_patches
from .scene import exposure_table, fit_scene, sample_scene, scene_catalog

__all__ = ["DynestyFitter", "MixtureLSQFitter", "Posterior", "exposure_table",
           "fit_gaussian_mixture", "fit_psf_mixture", "fit_scene", "mixture_from_vector",
           "mixture_to_vector", "sample_scene", "scene_catalog"]
__all__ += ["Patch", "fit_patches", "make_patches"]

log = logging.getLogger("astromix")


def mixture_to_vector(mixture):
    """Unconstrained parameter vector of a mixture.

    Per component: ``amp, x, y, log l11, l21, log l22`` with the Cholesky
    factor ``L = [[l11, 0], [l21, l22]]``, ``C = L L^T`` (so every vector maps
    to a valid covariance).

    Parameters
    ----------
    mixture : GaussianMixture
        K components (amplitudes, means [px] and covariances [px^2]).

    Returns
    -------
    ndarray, shape (6 K,)
        float64, component by component: element ``6 k + j`` is parameter
        ``j`` of component ``k``, ``j`` = 0: ``amp`` (flux), 1: ``x`` [px],
        2: ``y`` [px], 3: ``log l11``, 4: ``l21`` [px], 5: ``log l22``
        (``l11``, ``l22`` in px; the log is natural).
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
    """Inverse of :func:`mixture_to_vector`: a vector (6 K,) to a GaussianMixture.

    Parameters
    ----------
    vector : array-like, shape (6 K,)
        Per component ``amp, x, y, log l11, l21, log l22`` (the layout of
        :func:`mixture_to_vector`); any array of 6 K elements is read in that
        order.

    Returns
    -------
    GaussianMixture
        K components: amplitude ``amp``, mean ``(x, y)`` [px] and covariance
        ``[[l11^2, l11 l21], [l11 l21, l21^2 + l22^2]]`` [px^2].

    Raises
    ------
    ValueError
        If the vector's size is not a multiple of 6 (NumPy's reshape).
    InputError
        If a covariance overflows (an optimiser's trial step far out): the
        mixture's validation refuses the non-finite values.
    """
    p = np.asarray(vector, dtype=np.float64).reshape(-1, 6)
    with np.errstate(over="ignore", invalid="ignore"):
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


def _start_core_halo(image, n_components, n_negative):
    """Concentric start spanning core to halo, negative components carving the core.

    Widths from the core sigma of a Gaussian of the image's peak and flux,
    ``sqrt(flux / (2 pi peak))``: positives geometric from 0.6 to 8 times it
    (amplitudes falling 4x), negatives at 0.4-0.6 times it with -12% of the flux.
    """
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    pos = np.clip(image, 0, None)
    flux = pos.sum()
    xc, yc = (pos * xx).sum() / flux, (pos * yy).sum() / flux
    core = np.sqrt(flux / (2 * np.pi * image.max()))
    n_pos = n_components - n_negative
    sig = np.geomspace(0.6 * core, 8 * core, n_pos)
    amp = np.geomspace(1.0, 0.25, n_pos)
    amp = amp / amp.sum() * flux * (1 + 0.12 * n_negative)
    if n_negative:
        sig = np.concatenate([sig, 0.4 * core * np.linspace(1.0, 1.5, n_negative)])
        amp = np.concatenate([amp, np.full(n_negative, -0.12 * flux)])
    return GaussianMixture(amp, np.tile([xc, yc], (n_components, 1)),
                           sig[:, None, None] ** 2 * np.eye(2))


#: Smoothing of |r| and weight of the cap in the "l1max" objective (peak units).
_L1MAX_EPS = 2e-4
_L1MAX_PENALTY = 200.0


#: Restarts of L-BFGS-B from its result in fit_gaussian_mixture (while it improves).
_POLISH_RESTARTS = 3


def _l1max_objective(data, mask, max_residual, settings, backend):
    """Objective and gradient of sum|r| / flux + penalty * sum(max(|r| - cap, 0)^2)."""
    from ..settings import get_default_settings

    bk = _backends.get_backend(backend)
    st = settings if settings is not None else get_default_settings()
    total = data[mask].sum()

    def fun(v):
        try:
            mix = mixture_from_vector(v)
        except InputError:
            return np.inf, np.zeros_like(v)
        table = bk.prepare(mix.amp, mix.mean, mix.cov, st)
        r = bk.to_numpy(bk.render(table, data.shape, np.float64, st)) - data
        a = np.sqrt(r * r + _L1MAX_EPS ** 2)
        over = np.clip(np.abs(r) - max_residual, 0, None)
        value = (a[mask].sum() / total + _L1MAX_PENALTY * (over[mask] ** 2).sum())
        deriv = np.where(mask, r / a / total + 2 * _L1MAX_PENALTY * over * np.sign(r), 0.0)
        acc = bk.accumulate(table, bk.asarray(deriv), st)
        grads = bk.assemble_gradient(table, bk.to_numpy(acc))
        return value, _vector_gradient(v, *grads)

    return fun


@blas_single_threaded
def fit_gaussian_mixture(image, n_components, *, weight=None, n_starts=3, rng=None,
                         nonnegative=True, n_negative=0, objective="chi2", max_residual=0.058,
                         maxiter=2000, settings=None, backend=None):
    """Fit a K-component Gaussian mixture to an image.

    Minimises, over every component's amplitude, centre and covariance
    (Cholesky-parameterised, so covariances stay positive definite), with
    L-BFGS-B (scipy; restarted from its result while that still improves, at
    most 3 times) and the backend's analytic gradient, either chi-square
    (``objective="chi2"``, weighted least squares) or the two accuracy
    metrics of a PSF mixture (``"l1max"``: the summed absolute residual over
    the flux, smoothed, plus a steep penalty on pixels whose residual exceeds
    ``max_residual`` of the peak).  The model is pixel-integrated (see
    :class:`astromix.AccuracySettings`).  For ``"l1max"`` the gradient of the
    per-pixel loss goes through the backend's gradient kernel like chi2's.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The image, e.g. a PSF (any flux normalisation).  Pixel (j, i) is
        centred at (x=i, y=j).
    n_components : int
        Number of Gaussians K (>= 1).
    weight : array-like, shape (ny, nx), optional
        Inverse variance per pixel, finite and >= 0; uniform if omitted.
        Pixels of weight 0 are masked: they are left out of everything (the
        objective, the flux and peak the data are normalised by, the starting
        points and the reported metrics), and may hold any value, NaN
        included.
    n_starts : int, optional
        Number of starting points: concentric Gaussians from the image's
        centroid and half-light radius; for ``"l1max"`` or negative
        components also concentric core-to-halo Gaussians with the negative
        ones carving the core; then jittered copies of these with ``rng``.
        The fit with the lowest objective is kept.
    rng : numpy.random.Generator or int, optional
        Random generator (or seed) for the jittered starts; reproducible.
    nonnegative : bool, optional
        Keep amplitudes >= 0 (default); False leaves every sign free.
    n_negative : int, optional
        Number of components (the last ones) constrained to amplitudes <= 0,
        the others to >= 0 (overrides ``nonnegative``).  Negative components
        carve the core of a PSF with rings or a flat top.
    objective : {"chi2", "l1max"}, optional
        What is minimised (see above).  With ``"l1max"`` the weights only
        mask (weight 0).
    max_residual : float, optional
        The cap of ``"l1max"``, in units of the image's peak (default 0.058, so that
        the largest residual lands just under 6% of the peak).
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
        ``l1_residual_over_flux`` (``sum|image - model| / sum(image)``), the
        maxima and sums over the unmasked pixels (weight > 0); ``time_s``,
        ``n_iterations``, ``success``, ``message``, ``n_starts``.

    Raises
    ------
    InputError
        If the image is not a 2-d array, finite where unmasked, with positive
        flux on its unmasked pixels; if ``weight`` has another shape, a
        non-finite or a negative value; if ``n_components`` < 1; or if the
        unmasked pixels are no more than the parameters (6 per Gaussian).
    """
    t0 = time.perf_counter()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"image must be 2-d, got shape {img.shape}")
    n_components = int(n_components)
    if n_components < 1:
        raise InputError(f"n_components must be >= 1, got {n_components}")
    w = np.ones_like(img) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != img.shape:
        raise InputError(f"weight shape {w.shape} differs from image shape {img.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("weight (inverse variance) must be finite and >= 0")
    # masked pixels (weight 0) count nowhere: not in the flux, the peak, the starts
    # or the metrics; zeroed so that no value of theirs (NaN, a hot pixel) leaks in
    use = w > 0
    if not np.all(np.isfinite(img[use])):
        raise InputError("image has non-finite pixels with weight > 0; mask them with weight=0")
    n_used, n_params = int(use.sum()), 6 * n_components
    if n_used <= n_params:
        raise InputError(f"{n_used} unmasked pixel(s) of the {img.shape[0]} x {img.shape[1]} "
                         f"image cannot determine {n_components} Gaussian(s) ({n_params} "
                         f"parameters); at least {n_params + 1} are needed")
    img_u = np.where(use, img, 0.0)
    flux = float(np.clip(img_u, 0, None).sum())
    if not flux > 0:
        raise InputError("image has no positive flux to fit on its unmasked pixels")
    peak = float(img_u[use].max())
    scale = 1.0 / peak
    data = img_u * scale
    rng = np.random.default_rng(rng)

    def chi2_fun(v):
        try:
            mix = mixture_from_vector(v)
        except InputError:
            return np.inf, np.zeros_like(v)
        chi2, grads = mix.chi2(data, w, gradient=True, settings=settings, backend=backend)
        return chi2, _vector_gradient(v, *grads)

    fun = chi2_fun
    if objective == "l1max":
        if not float(max_residual) > 0:
            raise InputError(f"max_residual must be > 0, got {max_residual}")
        fun = _l1max_objective(data, w > 0, float(max_residual), settings, backend)
    elif objective != "chi2":
        raise InputError(f"objective must be 'chi2' or 'l1max', got {objective!r}")
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

    def lbfgs(f, x0):
        nonlocal n_it
        out = optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": maxiter, "maxfun": 2 * maxiter})
        n_it += out.nit
        return out

    # the core-to-halo start pays off for the l1max objective and negative components
    patterns = (0, 1) if (objective == "l1max" or n_negative) else (0,)
    for s in range(max(1, int(n_starts))):
        if patterns[s % len(patterns)] == 0:
            start = _start(data, n_components, rng, jitter=s >= len(patterns),
                           n_negative=n_negative)
        else:
            start = _start_core_halo(data, n_components, n_negative)
            if s >= len(patterns):
                start = _jitter(start, rng)
        v0 = mixture_to_vector(start)
        if fun is not chi2_fun:
            # least squares first (smooth, fast), then the objective from there
            v0 = lbfgs(chi2_fun, v0).x
        res = lbfgs(fun, v0)
        # restarted while it still improves: L-BFGS-B stops on a small relative
        # reduction while the smoothed l1 objective is still falling (JWST F200W,
        # 4 Gaussians: sum|res|/flux 0.171 -> 0.167), and where it stops depends on
        # rounding; a fresh curvature estimate goes on from there
        for _ in range(_POLISH_RESTARTS):
            again = lbfgs(fun, res.x)
            if not again.fun < res.fun - 1e-6 * abs(res.fun):
                break
            res = again
        log.debug("start %d: %s %.6g after %d iterations", s, objective, res.fun, res.nit)
        if best is None or res.fun < best.fun:
            best = res
    mix = mixture_from_vector(best.x)
    order = np.argsort(-np.abs(mix.amp), kind="stable")
    mix = GaussianMixture(mix.amp[order] / scale, mix.mean[order], mix.cov[order])
    bk = _backends.get_backend(backend)
    model = bk.to_numpy(mix.render(img.shape, settings=settings, backend=backend))
    resid = np.where(use, np.abs(img_u - model), 0.0)
    info = {
        "chi2": float(np.sum(w * resid ** 2)),
        "max_residual_over_peak": float(resid.max() / peak),
        "l1_residual_over_flux": float(resid.sum() / img_u.sum()),
        "time_s": time.perf_counter() - t0,
        "n_iterations": int(n_it),
        "success": bool(best.success),
        "message": str(best.message),
        "n_starts": int(max(1, n_starts)),
        "objective": objective,
    }
    return mix, info


def _jitter(mixture, rng):
    """Widths x exp(N(0, 0.3)), centres + N(0, 0.3) px."""
    f = np.exp(rng.normal(0, 0.3, len(mixture)))
    return GaussianMixture(mixture.amp, mixture.mean + rng.normal(0, 0.3, mixture.mean.shape),
                           mixture.cov * (f ** 2)[:, None, None])


#: Range of oversampling factors (image px per science px) fit_psf_mixture accepts: far
#: beyond any pixel-sampling ratio, and within it the conversion's squares stay float64.
_OVERSAMPLING_RANGE = (1e-6, 1e6)


def _check_oversampling(oversampling):
    """``oversampling`` as a float; InputError unless finite and within _OVERSAMPLING_RANGE."""
    try:
        value = float(oversampling)
    except (TypeError, ValueError):
        raise InputError(f"oversampling must be a number, got {oversampling!r}") from None
    lo, hi = _OVERSAMPLING_RANGE
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"oversampling must be a finite number > 0, got {value}")
    if not lo <= value <= hi:
        raise InputError(f"oversampling {value:g} is outside [{lo:g}, {hi:g}] image px per "
                         "science px")
    return value


def _check_psf_image(image, trim=0, name="PSF image"):
    """The checks of a PSF image (2-d, finite, positive sum; positive pixels left by ``trim``).

    Returns the image as float64 and its (untrimmed) sum; InputError otherwise,
    its message starting with ``name``.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"{name} must be 2-d, got shape {img.shape}")
    trim = int(trim)
    if trim < 0 or 2 * trim >= min(img.shape):
        raise InputError(f"trim={trim} leaves nothing of the {img.shape} {name}")
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise InputError(f"{name} has {bad} NaN or infinite pixel(s); replace them "
                         "(e.g. by 0) first")
    total = float(img.sum())
    if not total > 0:
        raise InputError(f"{name} has no positive total flux (its pixels sum to {total:g})")
    fitted = img[trim:img.shape[0] - trim, trim:img.shape[1] - trim]
    if not np.any(fitted > 0):
        raise InputError(f"{name} has no positive pixel left to fit after trim={trim}")
    return img, total


def fit_psf_mixture(image, n_components, *, oversampling=1, trim=0, snr=None, n_negative=0,
                    method="lsq", objective="l1max", max_residual=0.058, center="image",
                    rng=None, n_starts=6, nlive=200, maxcall=None, settings=None,
                    backend=None):
    """Fit a Gaussian-mixture PSF to a (possibly oversampled) PSF image.

    Replaces forcepho's ``make_psf.py`` (Johnson et al.): the mixture is fitted
    with the analytic gradient in the image's own (possibly oversampled)
    pixels (:func:`fit_gaussian_mixture`), by default minimising the two
    accuracy metrics of a PSF mixture (the summed absolute residual, with the
    largest residual capped; ``objective="l1max"``) or plain least squares
    (``objective="chi2"``), then converted to science pixels as forcepho does:
    components sorted by weight, centres taken relative to the PSF centre (by
    default the centre of the trimmed image, ``((nx - 1) / 2, (ny - 1) / 2)``,
    as forcepho's ``make_psf.py`` takes it) and divided by ``oversampling``,
    covariances divided by ``oversampling**2``.  On the JWST F200W PSF, 4
    components with one negative reach ``max|residual|/peak`` 0.058 and
    ``sum|residual|/flux`` 0.167 (forcepho's NUTS: 0.13 and 0.22).

    The returned PSF is unit-normalised (amplitudes summing to 1), as
    astromix's PSF models use a PSF.  A trimmed image holds only part of the
    PSF's flux, and the mixture only the part it fits:
    ``fit_info["flux_fraction"]`` is the mixture's flux over the sum of the
    whole (untrimmed) ``image`` (0.91-0.95 for the JWST F200W PSF trimmed by
    187 with 4 components, one negative).  A flux measured with the
    unit-normalised mixture is the flux in that part of the PSF (about the
    flux within the trimmed region); divide it by ``flux_fraction`` for the
    total flux (an aperture correction, as for any PSF model of finite
    extent) when ``image`` holds the whole PSF (e.g. normalised to unit
    sum).  forcepho keeps the fitted amplitudes instead, summing to
    ``flux_fraction`` for a unit-sum image;
    :func:`astromix.io.forcepho.write_psf_mixture` writes them so.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The PSF image (any normalisation, finite, with a positive sum), e.g.
        an stpsf/WebbPSF model or an empirical ePSF, the PSF centred on the
        image's centre (pixel ``(j, i)`` is centred at ``(x=i, y=j)``).
    n_components : int
        Number of Gaussians (>= 1), negative ones included.
    oversampling : int or float, optional
        Image pixels per science pixel (a FITS header's ``DET_SAMP`` or
        ``OVERSAMP``); default 1.  Finite, in ``[1e-6, 1e6]``.
    trim : int, optional
        Pixels removed from each edge before fitting (forcepho's ``--trim``).
    snr : float, optional
        Forcepho's homoscedastic noise model, ``sigma = flux / (snr sqrt(Npix))``;
        it scales chi2 but, with uniform weights, not the least-squares fit;
        it sets the width of the posterior with ``method="nested"`` (default
        there: 100).
    n_negative : int, optional
        Number of components with amplitude <= 0.
    objective : {"l1max", "chi2"}, optional
        What the optimisation minimises (see :func:`fit_gaussian_mixture`);
        ``method="nested"`` starts from the chi2 optimum whatever this is.
    max_residual : float, optional
        The cap of ``"l1max"`` in units of the peak.
    center : {"image", "moments"}, optional
        The PSF centre, the origin (0, 0) of the returned mixture.
        ``"image"`` (default): the centre of the trimmed image, ``((nx - 1) /
        2, (ny - 1) / 2)`` in its pixels, as forcepho's ``make_psf.py``
        subtracts it; the position a star fitted with the mixture gets is
        then that of the PSF image's centre.  ``"moments"``: the mixture's
        centroid (its amplitude-weighted mean of component centres), which
        broad, poorly constrained or negative components can pull off the
        core (by 0.1-0.6 science px on the JWST F200W PSF trimmed by 187, 4
        Gaussians, one negative, depending on the start): for callers that
        want the centroid, not the image centre.
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
        Starting points of the least-squares fit (see :func:`fit_gaussian_mixture`).
        Six by default (three of them core-to-halo starts with ``"l1max"`` or
        negative components): the ``"l1max"`` objective has many local optima
        close together, and which one L-BFGS-B reaches from a start depends
        on the kernels' rounding (processor, Numba version).  On the JWST
        F200W PSF, 4 Gaussians with one negative, 12 core-to-halo starts
        ended at sum|res|/flux 0.1656-0.1717 (one above 0.17, five above
        0.169); with four starts (two core-to-halo) one CI machine ended at
        0.1705; with six the best of three lay at 0.1655-0.1682 under every
        rounding tried (Numba kernels, data perturbed by 1e-14 to 3e-12).
    nlive, maxcall : int, optional
        Live points and call limit of the nested sampler.
    settings : AccuracySettings, optional
    backend : str, optional

    Returns
    -------
    GaussianMixturePSF
        Unit-flux PSF in science pixels, its origin (0, 0) the PSF centre
        (``center``), with ``fit_info`` (dict): ``chi2``,
        ``max_residual_over_peak``, ``l1_residual_over_flux`` (measured in
        the fitted image's pixels), ``time_s``, ``n_iterations``,
        ``oversampling``, ``trim``, ``center`` (the PSF centre (x, y) in the
        trimmed image's pixels, 0-based) and ``center_method`` (``center``
        as given), ``flux`` (of the fitted mixture, the sum of its
        amplitudes in the image's units), ``flux_fraction`` (``flux`` over
        the sum of the untrimmed ``image``: the aperture correction above),
        ``model`` (the fitted image) and ``method``; with ``"nested"`` also
        ``nested`` (the DynestyFitter's ``fit_info``: dynesty ``results``,
        equal-weight posterior ``samples`` with their ``param_names``,
        ``logz``, ...), ``best_sample`` (parameter name -> value of the
        highest-likelihood sample, image pixels) and ``lsq`` (the metrics of
        the least-squares start).

    Raises
    ------
    InputError
        Before fitting: on an image that is not 2-d, has NaN or infinite
        pixels, a sum <= 0 or no positive pixel left by ``trim``; ``trim``
        leaving nothing or no more pixels than the fit has parameters (6 per
        Gaussian); an ``oversampling`` that is not a finite number in
        ``[1e-6, 1e6]``; a non-positive ``snr``; an unknown ``method`` or
        ``center``.
    """
    from ..models import GaussianMixturePSF

    t0 = time.perf_counter()
    img, image_flux = _check_psf_image(image, trim)
    trim = int(trim)
    if trim:
        img = img[trim:-trim, trim:-trim]
    oversampling = _check_oversampling(oversampling)
    if method not in ("lsq", "nested"):
        raise InputError(f"unknown method {method!r}; use 'lsq' or 'nested'")
    if center not in ("image", "moments"):
        raise InputError(f"center must be 'image' or 'moments', got {center!r}")
    weight = None
    if snr is not None:
        if not float(snr) > 0:
            raise InputError(f"snr must be > 0, got {snr}")
        sigma = np.clip(img, 0, None).sum() / (float(snr) * np.sqrt(img.size))
        weight = np.full(img.shape, 1.0 / sigma ** 2)
    rng = np.random.default_rng(rng)
    # nested sampling explores the Gaussian (chi2) likelihood: start at its optimum
    mix, info = fit_gaussian_mixture(img, n_components, weight=weight, n_starts=n_starts,
                                     rng=rng, n_negative=n_negative,
                                     objective="chi2" if method == "nested" else objective,
                                     max_residual=max_residual, settings=settings,
                                     backend=backend)
    if method == "nested":
        mix, info = _nested_refine(img, mix, info, snr=100.0 if snr is None else float(snr),
                                   rng=rng, nlive=nlive, maxcall=maxcall, settings=settings)
    model_image = _backends.get_backend(backend).to_numpy(
        mix.render(img.shape, settings=settings, backend=backend))
    flux = mix.flux
    if center == "image":
        # forcepho's make_psf: the centre of the (trimmed) image, not of the mixture,
        # whose broad and negative components may sit off the core
        origin = np.array([(img.shape[1] - 1) / 2.0, (img.shape[0] - 1) / 2.0])
    else:
        origin = mix.moments()[1]
    science = GaussianMixture(mix.amp / flux, (mix.mean - origin) / oversampling,
                              mix.cov / oversampling ** 2)
    psf = GaussianMixturePSF(science, settings=settings)
    info.update(time_s=time.perf_counter() - t0, oversampling=oversampling, trim=trim,
                center=origin, center_method=center, flux=flux,
                flux_fraction=float(flux / image_flux), model=model_image, method=method)
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
    resid = img - _backends.get_backend().to_numpy(best.render(img.shape, settings=settings))
    nested_info = dict(info)
    nested_info.update(
        chi2=float(np.sum(resid ** 2) / sigma ** 2),
        max_residual_over_peak=float(np.abs(resid).max() / img.max()),
        l1_residual_over_flux=float(np.abs(resid).sum() / img.sum()),
        nested=fitter.fit_info, best_sample=dict(fitter.fit_info["best"]),
        lsq={key: info[key] for key in ("chi2", "max_residual_over_peak",
                                         "l1_residual_over_flux", "time_s")})
    return best, nested_info
