r"""A PSF-field model fitted to the stars of an image (pixel basis, PSFEx-style).

:func:`fit_psf_field` models the PSF across an image as PSFEx does with its
``PIXEL`` basis: the PSF at 0-based position ``(x, y)`` is

.. math::

    P(x, y) = \sum_k c_k(x_t, y_t)\, B_k, \qquad
    x_t = (x + 1 - \mathrm{POLZERO1}) / \mathrm{POLSCAL1}

(``y_t`` likewise) with the polynomial terms in PSFEx's order
(``1, x_t, .., x_t^d, y_t, x_t y_t, .., y_t^d``; see :mod:`astromix.io.psfex`)
and ``B_k`` pixel images of ``size x size`` image pixels (``PSF_SAMP = 1``).
POLZERO and POLSCAL are PSFEx's choice: the centre and the extent of the star
positions (1-based).  The model is an *effective* PSF (pixel response
included): an image of a star is the model sampled at pixel centres.

**The fit** (Bertin 2011's PSFEx scheme, with Piff's outlier loop):

1. A stamp of ``size + 4`` pixels is cut around every star (2 pixels more on
   each side than the PSF grid, so that the resampled star fills the grid;
   stars whose stamp leaves the image are flagged ``edge`` and not used); its
   background is removed (``background``) and its per-pixel variance taken
   from ``weight`` (or, when absent, from the robust scatter of the stamp's
   outer 2-pixel ring).
2. Start: flux = stamp sum, centroid = Gaussian-windowed first moment (window
   sigma 2 px, iterated from the input position).
3. Each star is *resampled onto the PSF grid*: the stamp divided by the flux
   is shifted by minus its sub-pixel offset with a quintic B-spline
   (:func:`scipy.ndimage.shift`, ``order=5``, zero outside); its weights
   (``flux^2 / variance``) are shifted with a linear spline and pixels that
   touch a masked pixel are dropped.  Then, independently for every grid
   pixel, the coefficients of the polynomial are the weighted *linear* least
   squares solution over the stars (an ``nterms x nterms`` system per pixel).
   The weights include PSFEx's ``PSF_ACCURACY`` term: the variance of a pixel
   is the noise's plus ``(accuracy * model)^2``, so that the brightest stars,
   whose chi2 is dominated by model errors rather than noise, do not outweigh
   all others.  The model is zero outside the disk of radius ``size / 2``
   (as PSFEx's).
4. Constraints: the Gaussian-windowed first moments (window sigma ``fwhm /
   2``, close to SExtractor's ``XWIN_IMAGE`` and HSM's centroid) of all the
   ``B_k`` are made to vanish -- every basis image is first shifted (quintic
   spline) by the windowed centroid of the mean PSF, then corrected by a
   combination of the x and y derivatives of the mean PSF -- i.e. the PSF is
   centred on its central pixel at every position (this removes the
   degeneracy between star centroids and a shift of the model), and ``B_0``
   is scaled to unit sum, ``B_k`` (k > 0) to zero sum (so the PSF has unit sum
   everywhere).
5. Each star's flux and sub-pixel centroid are refitted against the model
   (two Gauss-Newton steps of the three-parameter least squares; the model
   is shifted to the star with the same quintic spline), and its
   ``chi2 = sum w (data - model)^2`` with ``dof = npix - 3`` is recorded
   (both with the noise weights alone, without the ``accuracy`` term).  In
   the first two passes, the pixels of a star further
   from the model than ``pixel_clip`` times the noise and a 10% model error
   (neighbours, cosmic rays, bad columns), grown by 2 pixels for their fainter
   wings, are masked for the rest of the fit
   (their count is the star's ``n_masked``).
6. Piff's outlier loop: among the used stars, those beyond
   ``median + clip * spread`` in ``log(chi2/dof)`` (``spread`` = 1.4826
   MAD, at least the statistical ``sqrt(2 / dof)``) *and* with
   ``residual_frac = sqrt(chi2 / sum w (flux model)^2)`` (the residual
   relative to the star) above twice its median are rejected (at most
   ``max_remove`` of them, the worst chi2 first, per iteration).  Piff clips
   chi2 alone, which assumes model errors below the noise: for bright stars
   the chi2 of a few-1e-3 model error grows as flux^2 and would reject good
   stars, while faint stars' ``residual_frac`` is large from noise alone; an
   outlier (binary, cosmic ray, galaxy) is bad in both.  A first pass (iteration 0) uses a robust
   degree-0 model, the per-pixel median of the resampled stars, so that
   gross outliers (binaries, cosmic rays) are rejected before they enter a
   least-squares solution.  Steps 3-6 then repeat until nothing is
   rejected and the total chi2 changed by less than 0.1 of its dof, or ``n_iter`` iterations.

Examples
--------
See :func:`fit_psf_field`.
"""

import math
import time

import numpy as np

from ..errors import InputError
from ..io.psfex import PSFExModel, _n_terms, _polynomial_terms

__all__ = ["PSFFieldModel", "fit_psf_field"]

_SPLINE_ORDER = 5
_MARGIN = 2  # px cut around each star beyond the PSF grid


def _shift(image, dx, dy, order=_SPLINE_ORDER):
    from scipy import ndimage
    return ndimage.shift(image, (dy, dx), order=order, mode="grid-constant", cval=0.0,
                         prefilter=order > 1)


def _windowed_centroid(stamp, x0, y0, sigma=2.0, n_iter=5):
    """Gaussian-windowed first moment, iterated from (x0, y0) (stamp pixel coordinates)."""
    ny, nx = stamp.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    xc, yc = x0, y0
    for _ in range(n_iter):
        w = np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2 * sigma ** 2)) * stamp
        total = w.sum()
        if not total > 0:
            return x0, y0
        xn, yn = (w * xx).sum() / total, (w * yy).sum() / total
        if not (abs(xn - x0) < 2 and abs(yn - y0) < 2):
            return x0, y0
        xc, yc = xn, yn
    return xc, yc


class PSFFieldModel:
    """A PSF model of an image: pixel basis images and a polynomial in (x, y).

    Built by :func:`fit_psf_field`; see :mod:`astromix.psffield.model` for the
    model and the fit.

    Attributes
    ----------
    basis : ndarray, shape (nterms, size, size)
        The basis images ``B_k`` (PSFEx ``PSF_MASK``), PSF centre at pixel
        ``(size // 2, size // 2)``; ``B_0`` has unit sum, the others zero sum.
    polzero, polscal : ndarray, shape (2,)
        PSFEx's POLZERO1/2 and POLSCAL1/2 (1-based image pixels).
    degree : int
    size : int
    stars : astropy.table.Table
        The input table plus ``x_fit, y_fit`` (fitted 0-based centroid),
        ``flux_fit``, ``chi2``, ``dof``, ``chi2_dof``, ``edge`` (stamp
        outside the image), ``n_masked`` (pixels masked as off the model),
        ``residual_frac`` (``sqrt(chi2 / sum w (flux
        model)^2)``), ``rejected`` (outlier) and ``used`` (in the final fit).
    fit_info : dict
        ``n_iter``, ``converged``, ``chi2``, ``dof`` (totals over used
        stars), ``n_stars``, ``n_used``, ``n_rejected``, ``n_edge``,
        ``history`` (per iteration: chi2, dof, n_used, n_removed) and
        ``time_s``.
    """

    def __init__(self, basis, polzero, polscal, degree, stars=None, fit_info=None):
        self._psfex = PSFExModel(basis, polzero, polscal, degree, psf_samp=1.0)
        self.stars = stars
        self.fit_info = dict(fit_info or {})

    @property
    def basis(self):
        return self._psfex.basis

    @property
    def polzero(self):
        return self._psfex.polzero

    @property
    def polscal(self):
        return self._psfex.polscal

    @property
    def degree(self):
        return self._psfex.degree

    @property
    def size(self):
        return self._psfex.shape[0]

    def __repr__(self):
        return (f"<PSFFieldModel degree={self.degree} size={self.size} "
                f"used={self.fit_info.get('n_used')} rejected={self.fit_info.get('n_rejected')}>")

    def coefficients(self, x, y):
        """Polynomial terms at 0-based ``x, y`` (PSFEx order), shape ``(..., nterms)``."""
        return self._psfex.coefficients(x, y)

    def image(self, x, y, shape=None):
        """The PSF at 0-based ``(x, y)``: unit sum, centred on the central pixel.

        ``shape`` (default ``(size, size)``) is cut or zero-padded around the
        centre (see :meth:`astromix.io.psfex.PSFExModel.image`).
        """
        return self._psfex.image(x, y, shape=shape)

    def mixture(self, x, y, n_components=4, **kwargs):
        """A :class:`~astromix.GaussianMixturePSF` fitted to :meth:`image` at ``(x, y)``.

        Delegates to :meth:`astromix.io.psfex.PSFExModel.mixture` (which calls
        :func:`astromix.fitting.fit_psf_mixture` on the unit-sum PSF, keyword
        arguments passed on); ``fit_info["image_max_residual_over_peak"]``
        gives ``max|mixture - image| / peak``.
        """
        return self._psfex.mixture(x, y, n_components=n_components, **kwargs)

    def to_psfex(self):
        """The model as a :class:`~astromix.io.psfex.PSFExModel` (for :func:`write_psfex`).

        ``meta`` carries ``LOADED``, ``ACCEPTED`` and ``CHI2`` (reduced chi2
        of the used stars), as PSFEx writes them.
        """
        info = self.fit_info
        meta = {}
        if "n_stars" in info:
            meta["LOADED"] = int(info["n_stars"])
            meta["ACCEPTED"] = int(info["n_used"])
        if info.get("dof"):
            meta["CHI2"] = float(info["chi2"] / info["dof"])
        return PSFExModel(self.basis, self.polzero, self.polscal, self.degree, psf_samp=1.0,
                          meta=meta)


def _as_image(array, name, shape=None):
    try:
        out = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric 2-d array") from None
    if out.ndim != 2:
        raise InputError(f"{name} must be 2-d, got shape {out.shape}")
    if shape is not None and out.shape != shape:
        raise InputError(f"{name} has shape {out.shape}, the image {shape}")
    return out


def fit_psf_field(image, stars, *, weight=None, size=25, degree=2, oversampling=1,
                  background=None, accuracy=0.05, n_iter=10, clip=3.0, max_remove=0.1,
                  pixel_clip=5.0, min_stars=None):
    """Fit a PSFEx-style pixel PSF-field model to the stars of an image.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
    stars : astropy.table.Table
        Columns ``x``, ``y`` (0-based pixel centres; approximate positions are
        refined) and optionally ``flux`` (start value).
    weight : array-like, shape (ny, nx), optional
        Inverse variance per pixel (0 = masked).  Default: uniform per star,
        from the robust scatter of the stamp's outer 2-pixel ring.
    size : int, optional
        Side of the stamps and of the PSF grid [px], odd (default 25).
    degree : int, optional
        Polynomial degree in (x, y) (default 2).
    oversampling : int, optional
        Only 1 (PSF grid = image pixels) is supported.
    background : None, float or array-like, optional
        None (default): subtract from each stamp the median of its outer
        2-pixel ring.  A number or an image: subtract it.
    accuracy : float, optional
        PSFEx's ``PSF_ACCURACY``: relative model error added in quadrature to
        the noise of every pixel in the least-squares weights (default 0.05;
        0: noise only).  It does not enter the outlier statistics.
    n_iter : int, optional
        Maximum number of least-squares fit / reject iterations after the
        robust first pass (default 10).
    clip : float, optional
        Outlier threshold in robust sigmas of ``log(chi2/dof)`` (default 3).
    max_remove : float, optional
        Largest fraction of the used stars rejected per iteration (default
        0.1; at least one).
    pixel_clip : float or None, optional
        Mask the pixels of a star further than this many sigmas (noise and a
        10% model error) from the model (default 5); None: no pixel masking.
    min_stars : int, optional
        Fewest usable stars (default ``2 nterms``).

    Returns
    -------
    PSFFieldModel

    Raises
    ------
    InputError
        On bad inputs or too few usable stars.

    Examples
    --------
    >>> import numpy as np, galsim
    >>> from astropy.table import Table
    >>> from astromix.psffield.model import fit_psf_field
    >>> img = galsim.ImageD(200, 200)
    >>> pos = [(30.3, 40.1), (150.2, 60.7), (90.6, 170.4), (170.1, 160.2), (40.8, 150.5),
    ...        (100.4, 100.3), (60.2, 90.9), (140.7, 120.1)]
    >>> for x, y in pos:
    ...     stamp = galsim.Gaussian(fwhm=3.0).withFlux(1e4).drawImage(
    ...         scale=1.0, center=galsim.PositionD(x + 1, y + 1), nx=25, ny=25)
    ...     img[stamp.bounds & img.bounds] += stamp[stamp.bounds & img.bounds]
    >>> stars = Table(rows=pos, names=("x", "y"))
    >>> model = fit_psf_field(img.array + 1e-3, stars, degree=1, background=0.0)
    >>> model.basis.shape, round(float(model.image(100.0, 100.0).sum()), 6)
    ((3, 25, 25), 1.0)
    """
    t0 = time.perf_counter()
    from astropy.table import Table
    from scipy import ndimage

    data = _as_image(image, "image")
    if weight is not None:
        weight = _as_image(weight, "weight", data.shape)
        if np.any(~np.isfinite(weight)) or np.any(weight < 0):
            raise InputError("weight must be finite and >= 0")
    if oversampling != 1:
        raise InputError(f"only oversampling=1 is supported, got {oversampling!r}")
    if isinstance(size, bool) or int(size) != size or size < 5 or size % 2 == 0:
        raise InputError(f"size must be an odd integer >= 5, got {size!r}")
    size = int(size)
    if not (np.isfinite(accuracy) and accuracy >= 0):
        raise InputError(f"accuracy must be a number >= 0, got {accuracy!r}")
    if pixel_clip is not None and not (np.isfinite(pixel_clip) and pixel_clip > 0):
        raise InputError(f"pixel_clip must be > 0 or None, got {pixel_clip!r}")
    if isinstance(degree, bool) or int(degree) != degree or degree < 0:
        raise InputError(f"degree must be an integer >= 0, got {degree!r}")
    degree = int(degree)
    nterms = _n_terms(degree)
    if not isinstance(stars, Table):
        stars = Table(stars)
    for col in ("x", "y"):
        if col not in stars.colnames:
            raise InputError(f"stars needs columns 'x' and 'y'; has {stars.colnames}")
    xs = np.asarray(stars["x"], dtype=np.float64)
    ys = np.asarray(stars["y"], dtype=np.float64)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise InputError("star positions must be finite")
    if background is None:
        bkg_image = None
    elif np.ndim(background) == 0:
        bkg_image = float(background)
    else:
        bkg_image = _as_image(background, "background", data.shape)
    if min_stars is None:
        min_stars = 2 * nterms
    n_stars = len(stars)
    half = size // 2
    npix = size * size
    # stars are cut with a margin so that their resampled images fill the PSF grid
    m = _MARGIN
    bhalf = half + m

    # -- stamps ---------------------------------------------------------------------
    ix = np.rint(xs).astype(int)
    iy = np.rint(ys).astype(int)
    stamps, wstamps, edge = _cut_stamps(data, weight, bkg_image, ix, iy, bhalf)

    # -- starting flux and centroid --------------------------------------------------
    flux = np.zeros(n_stars)
    dx = xs - ix
    dy = ys - iy
    for s in np.flatnonzero(~edge):
        xc, yc = _windowed_centroid(stamps[s], bhalf + dx[s], bhalf + dy[s])
        dx[s], dy[s] = xc - bhalf, yc - bhalf
        flux[s] = stamps[s].sum()
    if "flux" in stars.colnames:
        given = np.asarray(stars["flux"], dtype=np.float64)
        flux = np.where(np.isfinite(given) & (given > 0), given, flux)
    bad_flux = ~(flux > 0)
    used = ~edge & ~bad_flux
    rejected = np.zeros(n_stars, bool)
    n_masked = np.zeros(n_stars, int)
    weff = wstamps.copy()  # weights with the model-error floor (from the current model)
    if used.sum() < min_stars:
        raise InputError(f"only {int(used.sum())} usable stars (inside the image, positive "
                         f"flux); at least {min_stars} are needed for degree {degree}")

    # polynomial coordinates (PSFEx: centre and extent of the positions, 1-based)
    xu, yu = xs[used] + 1.0, ys[used] + 1.0
    polzero = np.array([0.5 * (xu.min() + xu.max()), 0.5 * (yu.min() + yu.max())])
    polscal = np.array([max(xu.max() - xu.min(), 1.0), max(yu.max() - yu.min(), 1.0)])

    grid_y, grid_x = np.mgrid[:size, :size].astype(np.float64) - half
    disk = (grid_x ** 2 + grid_y ** 2 <= (half + 0.5) ** 2).astype(np.float64)
    chi2 = np.full(n_stars, np.nan)
    frac = np.full(n_stars, np.nan)
    dof = np.full(n_stars, npix - 3.0)
    history = []
    old_total = None
    converged = False
    basis = None
    it = 0
    for it in range(0, int(n_iter) + 1):
        idx = np.flatnonzero(used)
        coeffs = _polynomial_terms(ix[idx] + dx[idx], iy[idx] + dy[idx], polzero, polscal,
                                   degree)
        # resample the used stars onto the PSF grid
        yv = np.empty((idx.size, npix))
        wv = np.empty((idx.size, npix))
        for n, s in enumerate(idx):
            inner = (slice(m, m + size), slice(m, m + size))
            yv[n] = _shift(stamps[s] / flux[s], -dx[s], -dy[s])[inner].ravel()
            mask = _shift((weff[s] > 0).astype(np.float64), -dx[s], -dy[s], order=1)[inner]
            wv[n] = np.where(mask > 0.999, _shift(weff[s], -dx[s], -dy[s], order=1)[inner],
                             0.0).ravel() * flux[s] ** 2
        if it == 0:
            # robust start: the per-pixel median of the resampled stars (degree 0)
            basis = np.zeros((nterms, size, size))
            basis[0] = np.median(yv, axis=0).reshape(size, size)
        else:
            a = np.einsum("sp,sk,sl->pkl", wv, coeffs, coeffs)
            rhs = np.einsum("sp,sk->pk", wv * yv, coeffs)
            ridge = 1e-10 * np.trace(a, axis1=1, axis2=2)[:, None, None] / nterms + 1e-300
            sol = np.linalg.solve(a + ridge * np.eye(nterms), rhs[..., None])[..., 0]
            basis = sol.T.reshape(nterms, size, size)
        basis = _constrain(basis * disk, grid_x, grid_y) * disk
        psfex = PSFExModel(basis, polzero, polscal, degree)

        # per-star flux and centroid against the model, chi2
        for s in np.flatnonzero(~edge & ~bad_flux):
            psf = np.pad(psfex.grid(ix[s] + dx[s], iy[s] + dy[s]), m)
            if pixel_clip is not None and it <= 1:
                # mask the pixels of neighbours and cosmic rays: far off the model
                # beyond the noise and a 10% model error
                model_s = flux[s] * _shift(psf, dx[s], dy[s])
                with np.errstate(divide="ignore"):
                    var = np.where(wstamps[s] > 0, 1.0 / wstamps[s], np.inf)
                bad = np.abs(stamps[s] - model_s) > pixel_clip * np.sqrt(
                    var + (0.1 * np.abs(model_s)) ** 2)
                if bad.any():  # and the fainter wings around them
                    bad = ndimage.binary_dilation(bad, iterations=2)
                n_masked[s] += int(np.count_nonzero(bad & (wstamps[s] > 0)))
                wstamps[s][bad] = 0.0
                weff[s][bad] = 0.0
            flux[s], dx[s], dy[s], chi2[s], frac[s] = _fit_star(stamps[s], wstamps[s], psf, flux[s],
                                                       dx[s], dy[s])
            if accuracy > 0:
                # the star's flux, centre and outlier statistics use the noise alone;
                # the next least-squares solution of the basis adds PSFEx's
                # PSF_ACCURACY: a model-error floor proportional to the model
                model_s = np.abs(flux[s] * _shift(psf, dx[s], dy[s]))
                with np.errstate(divide="ignore"):
                    weff[s] = np.where(wstamps[s] > 0, 1.0 / (1.0 / np.where(
                        wstamps[s] > 0, wstamps[s], 1.0) + (accuracy * model_s) ** 2), 0.0)
            else:
                weff[s] = wstamps[s]
            dof[s] = max(np.count_nonzero(wstamps[s]) - 3.0, 1.0)
        # a star whose refit fails (no positive flux) leaves the fit
        failed = used & ~(np.isfinite(flux) & (flux > 0) & np.isfinite(chi2))
        if failed.any():
            used &= ~failed
            rejected |= failed
            if used.sum() < min_stars:
                raise InputError(f"only {int(used.sum())} stars left with a positive refitted "
                                 f"flux; at least {min_stars} are needed for degree {degree}")
        ratio = chi2 / dof
        total = float(np.sum(chi2[used]))
        total_dof = float(np.sum(dof[used]))
        # Piff's outlier loop
        log_ratio = np.log(np.maximum(ratio, 1e-300))
        over = np.flatnonzero(used & _clipped(log_ratio, used, clip,
                                              math.sqrt(2.0 / np.median(dof[used])))
                              & (frac > 2.0 * np.median(frac[used])))
        n_max = max(1, int(max_remove * used.sum()))
        n_allowed = max(0, int(used.sum()) - min_stars)
        over = over[np.argsort(ratio[over])[::-1]][:min(n_max, n_allowed)]
        used[over] = False
        rejected[over] = True
        history.append({"chi2": total, "dof": total_dof, "n_used": int(used.sum() + over.size),
                        "n_removed": int(over.size)})
        if it == 0:
            continue
        if over.size == 0 and old_total is not None and abs(total - old_total) < 0.1 * total_dof:
            converged = True
            break
        old_total = total if over.size == 0 else None

    # -- the result ------------------------------------------------------------------
    out = stars.copy()
    out["x_fit"] = np.where(edge, np.nan, ix + dx)
    out["y_fit"] = np.where(edge, np.nan, iy + dy)
    out["flux_fit"] = np.where(edge, np.nan, flux)
    out["chi2"] = chi2
    out["dof"] = np.where(edge, 0.0, dof)
    out["chi2_dof"] = chi2 / dof
    out["residual_frac"] = frac
    out["n_masked"] = np.where(edge, 0, n_masked)
    out["edge"] = edge
    out["rejected"] = rejected
    out["used"] = used
    final_used = history[-1]["n_used"] - history[-1]["n_removed"]
    info = {"n_iter": it, "converged": converged, "chi2": float(np.sum(chi2[used])),
            "dof": float(np.sum(dof[used])), "n_stars": n_stars, "n_used": int(final_used),
            "n_rejected": int(rejected.sum()), "n_edge": int(edge.sum()), "history": history,
            "time_s": time.perf_counter() - t0}
    return PSFFieldModel(basis, polzero, polscal, degree, stars=out, fit_info=info)


def _cut_stamps(data, weight, bkg_image, ix, iy, bhalf):
    """Background-subtracted stamps of side ``2 bhalf + 1`` centred on pixels (ix, iy).

    Returns ``(stamps, weights, edge)``: stamps (n, big, big) with masked pixels
    set to 0, inverse-variance weights (from ``weight`` or the robust scatter of
    the stamp's outer 2-pixel ring; 0 = masked) and the boolean ``edge`` (stamp
    leaves the image; those stamps are all zero).
    """
    ny_img, nx_img = data.shape
    n = len(ix)
    big = 2 * bhalf + 1
    ring = np.ones((big, big), bool)
    ring[2:-2, 2:-2] = False
    stamps = np.zeros((n, big, big))
    wstamps = np.zeros((n, big, big))
    edge = (ix - bhalf < 0) | (iy - bhalf < 0) | (ix + bhalf >= nx_img) | (iy + bhalf >= ny_img)
    for s in np.flatnonzero(~edge):
        sl = (slice(iy[s] - bhalf, iy[s] + bhalf + 1), slice(ix[s] - bhalf, ix[s] + bhalf + 1))
        st = data[sl].copy()
        w = weight[sl].copy() if weight is not None else None
        good = np.isfinite(st) & (w > 0 if w is not None else True)
        if bkg_image is None:
            st -= np.median(st[ring & good]) if np.any(ring & good) else 0.0
        elif np.ndim(bkg_image) == 0:
            st -= bkg_image
        else:
            st -= bkg_image[sl]
        if w is None:
            vals = st[ring & good]
            sig = 1.4826 * np.median(np.abs(vals - np.median(vals))) if vals.size else 0.0
            if not sig > 0:
                sig = max(float(np.std(vals)) if vals.size else 0.0, 1e-12 * np.abs(st).max(),
                          1e-300)
            w = np.full(st.shape, 1.0 / sig ** 2)
        w = np.where(good, w, 0.0)
        stamps[s] = np.where(good, st, 0.0)
        wstamps[s] = w
    return stamps, wstamps, edge


def _constrain(basis, grid_x, grid_y):
    """Zero the windowed first moments of every basis image; unit / zero sums."""
    mean = basis[0] / basis[0].sum()
    fwhm = 2.3548 * math.sqrt(1.0 / (2 * math.pi * max(mean.max(), 1e-12)))
    win = np.exp(-(grid_x ** 2 + grid_y ** 2) / (2 * (0.5 * fwhm) ** 2))
    gy, gx = np.gradient(mean)
    templates = np.stack([gx, gy])                  # (2, ny, nx)
    coords = np.stack([grid_x * win, grid_y * win])
    m = np.einsum("ipq,jpq->ij", coords, templates)   # moment i of template j
    # centre the mean PSF by an exact (spline) shift of every basis image, then
    # remove what is left of each image's windowed first moment with the templates
    w0 = win * mean
    cx = float((w0 * grid_x).sum() / w0.sum())
    cy = float((w0 * grid_y).sum() / w0.sum())
    out = np.stack([_shift(b, -cx, -cy) for b in basis]) if max(abs(cx), abs(cy)) > 1e-6 \
        else basis.copy()
    for _ in range(2):
        mom = np.einsum("ipq,kpq->ki", coords, out)  # (nterms, 2)
        corr = np.linalg.solve(m, mom.T).T          # template amounts
        out -= np.einsum("kj,jpq->kpq", corr, templates)
    out[0] /= out[0].sum()
    mean = out[0]
    for k in range(1, len(out)):
        out[k] -= out[k].sum() * mean
    return out


def _fit_star(stamp, w, psf, flux, dx, dy, n_steps=2):
    """Gauss-Newton refit of flux and sub-pixel offset; returns flux, dx, dy, chi2."""
    eps = 0.05
    wf = w.ravel()
    d = stamp.ravel()
    for _ in range(n_steps):
        m = _shift(psf, dx, dy).ravel()
        mx = (_shift(psf, dx + eps, dy) - _shift(psf, dx - eps, dy)).ravel() / (2 * eps)
        my = (_shift(psf, dx, dy + eps) - _shift(psf, dx, dy - eps)).ravel() / (2 * eps)
        jac = np.stack([m, flux * mx, flux * my], axis=1)
        r = d - flux * m
        jw = jac * wf[:, None]
        try:
            step = np.linalg.solve(jw.T @ jac, jw.T @ r)
        except np.linalg.LinAlgError:
            break
        step[1:] = np.clip(step[1:], -0.5, 0.5)
        flux = flux + step[0]
        dx = float(np.clip(dx + step[1], -1.0, 1.0))
        dy = float(np.clip(dy + step[2], -1.0, 1.0))
    m = _shift(psf, dx, dy).ravel()
    chi2 = float(np.sum(wf * (d - flux * m) ** 2))
    norm = float(np.sum(wf * (flux * m) ** 2))
    return flux, dx, dy, chi2, math.sqrt(chi2 / norm) if norm > 0 else np.inf


def _clipped(values, used, clip, floor):
    """Where ``values`` exceed median + clip * max(1.4826 MAD, floor) of the used ones."""
    med = np.median(values[used])
    spread = max(1.4826 * np.median(np.abs(values[used] - med)), floor)
    return values > med + clip * spread
