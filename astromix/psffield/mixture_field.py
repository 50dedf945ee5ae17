r"""A Gaussian-mixture PSF field: a mixture whose parameters vary over the image.

:func:`fit_mixture_psf_field` models the PSF at 0-based position ``(x, y)`` as
a mixture of ``K`` Gaussians,

.. math::

    P(x, y) = \sum_g a_g(x, y)\, \mathcal{N}(\mu_g, C_g(x, y)), \qquad
    \sum_g a_g(x, y) = 1,

whose amplitudes ``a_g`` and covariances ``C_g = [[c_xx, c_xy], [c_xy, c_yy]]``
are polynomials in ``(x_t, y_t)`` (PSFEx's normalised coordinates and term
order, as :func:`~astromix.psffield.fit_psf_field`), the component centres
``mu_g`` fixed at those of the mean PSF.  A star is the pixel-integrated
mixture rendered at its centre by the backend kernel, times its flux: the fit
is a *forward model* of the star pixels, with no resampling of the data, so it
also holds for undersampled stars.  At every position the model is a true
:class:`~astromix.GaussianMixturePSF` (no second fit), ready for
:class:`~astromix.SceneModel` and :class:`~astromix.Exposure` (the model is a
callable of position).

**The fit**

1. :func:`~astromix.psffield.fit_psf_field` (pixel basis) is run first, for
   its star selection (edges, outliers rejected by Piff's loop), fluxes and
   centroids; its mean PSF (at the centre of the star positions) is fitted by
   :func:`astromix.fitting.fit_psf_mixture` (``n_components`` Gaussians, least
   squares, its random starts seeded so that the same data give the same
   field) to give the starting mixture: ``a_g`` and ``C_g`` constant.
2. Levenberg-Marquardt on the polynomial coefficients of all ``a_g`` (``g >=
   1``; ``a_0 = 1 - sum a_g``) and all ``C_g``: the Jacobian of each star's
   model with respect to its own ``a_g`` and ``C_g`` is rendered (central
   differences of the pixel-integrated Gaussians), times the polynomial
   terms; the normal equations are summed over the stars with the noise
   weights (plus, optionally, PSFEx's ``PSF_ACCURACY`` floor); a step is kept
   only if it lowers the weighted chi2 and keeps every covariance positive
   definite at every star and on grids spanning the stars' bounding box and
   the image (among them the positions :meth:`MixturePSFFieldModel.to_psfex`
   renders), so that the field is a valid mixture everywhere in the image,
   not only at the stars.
   Each star's flux and sub-pixel centre are then refitted against the model
   (Gauss-Newton).  Pixels further from the model than ``pixel_clip`` times
   the noise and a model error (neighbours, cosmic rays) are masked, first
   against the starting mixture with a 100% model error (it is the same at
   every position: where the PSF is narrower or wider than the mean, the
   good stars' cores differ from it by tens of %), then, after it has
   converged, against the fitted field with a 10% model error.
3. The iterations stop when the chi2 changes by less than 0.1 of its dof; the
   fit starts again with the second masks, then Piff's outlier loop rejects
   whole stars (as the pixel fit does) and the fit goes on without them (at
   most three rounds; the field returned is always the fit of the stars
   reported used).

With ``start="moments"`` step 1 is replaced by windowed moments of each
star, so that undersampled stars, which a pixel grid at the image's own
sampling cannot represent, are modelled too.

References: Bertin (2011, PSFEx) for the polynomial variation and the
coordinates; Hogg & Lang (2013) and forcepho (Johnson et al.) for Gaussian
mixtures as PSFs; Jarvis et al. (2021, Piff) for the outlier loop.
"""

import math
import time

import numpy as np

from .. import backends as _backends
from ..errors import InputError
from ..io.psfex import PSFExModel, _checked_polynomial_terms, _n_terms, _polynomial_terms
from ..mixtures import GaussianMixture
from .model import (
    PSFFieldModel,
    _as_image,
    _check_star_layout,
    _clipped,
    _cut_stamps,
    _gauss_newton_flux_centre,
    _star_positions,
    _windowed_centroid,
    fit_psf_field,
)

__all__ = ["MixturePSFFieldModel", "fit_mixture_psf_field"]

_E = (np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]]),
      np.array([[0.0, 0.0], [0.0, 1.0]]))


def _cpu_backend():
    """The active backend unless it is a GPU one (this module works in NumPy arrays)."""
    name = _backends.get_backend().name
    if name == "cupy":
        return "numba" if "numba" in _backends.available_backends() else "numpy"
    return name


class MixturePSFFieldModel:
    """A PSF field whose every position has a Gaussian-mixture PSF.

    Built by :func:`fit_mixture_psf_field`; see
    :mod:`astromix.psffield.mixture_field` for the model.  Calling the model
    with ``(x, y)`` gives the :class:`~astromix.GaussianMixturePSF` there, so
    it can be an :class:`~astromix.Exposure`'s ``psf``.

    Parameters
    ----------
    mean, amp_coeffs, cov_coeffs, polzero, polscal, degree, size, stars, fit_info
        See the attributes of the same names (``size`` default 25, ``stars``
        and ``fit_info`` default None; the arrays are stored as float64,
        ``degree`` and ``size`` as int, ``fit_info`` copied into a dict).
        They are not validated.
    settings : AccuracySettings, optional
        Pixel-integration and culling settings of the renderer used by
        :meth:`image` and :meth:`to_psfex` (default None: the global
        settings).

    Attributes
    ----------
    mean : ndarray, shape (K, 2)
        Component centres relative to the PSF centre [px].
    amp_coeffs : ndarray, shape (K, nterms)
        Polynomial coefficients of the amplitudes (PSFEx term order); the
        amplitudes sum to 1 everywhere.
    cov_coeffs : ndarray, shape (K, 3, nterms)
        Polynomial coefficients of ``c_xx, c_xy, c_yy`` [px^2].
    polzero, polscal : ndarray, shape (2,)
        PSFEx's POLZERO1/2 and POLSCAL1/2 (1-based image pixels).
    degree : int
    size : int
        Side [px] of the images :meth:`image` and :meth:`to_psfex` give by default.
    stars : astropy.table.Table
        The pixel fit's star table with ``x_fit, y_fit, flux_fit, chi2, dof,
        chi2_dof, n_masked, used`` replaced by this fit's.
    fit_info : dict
        ``n_iter``, ``converged``, ``chi2``, ``dof``, ``history`` (chi2 per
        iteration), ``n_used``, ``n_rejected``, ``time_s`` and
        ``pixel_fit_info`` (the pixel fit's ``fit_info``; None with
        ``start="moments"``).
    settings : AccuracySettings or None
    """

    def __init__(self, mean, amp_coeffs, cov_coeffs, polzero, polscal, degree, size=25,
                 stars=None, fit_info=None, settings=None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.amp_coeffs = np.asarray(amp_coeffs, dtype=np.float64)
        self.cov_coeffs = np.asarray(cov_coeffs, dtype=np.float64)
        self.polzero = np.asarray(polzero, dtype=np.float64)
        self.polscal = np.asarray(polscal, dtype=np.float64)
        self.degree = int(degree)
        self.size = int(size)
        self.stars = stars
        self.fit_info = dict(fit_info or {})
        self.settings = settings

    @property
    def n_components(self):
        """Number of Gaussians K."""
        return self.mean.shape[0]

    def __repr__(self):
        return (f"<MixturePSFFieldModel K={self.n_components} degree={self.degree} "
                f"used={self.fit_info.get('n_used')}>")

    def coefficients(self, x, y):
        """Polynomial terms at 0-based ``x, y`` (PSFEx order), shape ``(..., nterms)``.

        Parameters
        ----------
        x, y : float or array-like
            0-based pixel position(s) in the image, broadcast together.

        Returns
        -------
        ndarray, shape (nterms,) or (..., nterms)
            ``1, x_t, .., x_t^d, y_t, x_t y_t, .., y_t^d`` (dimensionless,
            ``x_t = (x + 1 - POLZERO1) / POLSCAL1``, ``y_t`` likewise), with
            shape ``np.broadcast(x, y).shape + (nterms,)``.

        Raises
        ------
        InputError
            If a position is not a finite number or ``x`` and ``y`` do not
            broadcast (as :meth:`PSFFieldModel.coefficients`).
        """
        return _checked_polynomial_terms(x, y, self.polzero, self.polscal, self.degree)

    def parameters(self, x, y):
        """``(amp (K,), cov (K, 2, 2))`` of the mixture at 0-based ``(x, y)``.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars, converted with
            ``float``).

        Returns
        -------
        amp : ndarray, shape (K,)
            The component amplitudes (they sum to 1).
        cov : ndarray, shape (K, 2, 2)
            The component covariances [px^2], symmetric; not checked to be
            positive definite (the fit keeps them so over the image and the
            stars' bounding box; far outside them they may not be).

        Raises
        ------
        InputError
            If ``x`` or ``y`` is not finite.
        """
        t = self.coefficients(float(x), float(y))
        amp = self.amp_coeffs @ t
        c = self.cov_coeffs @ t                                    # (K, 3)
        cov = np.stack([np.stack([c[:, 0], c[:, 1]], -1), np.stack([c[:, 1], c[:, 2]], -1)], 1)
        return amp, cov

    def _gaussian_mixture(self, x, y, offset=(0.0, 0.0)):
        if not (math.isfinite(float(x)) and math.isfinite(float(y))):
            raise InputError(f"position must be finite, got ({x}, {y})")
        amp, cov = self.parameters(x, y)
        try:
            return GaussianMixture(amp, self.mean + np.asarray(offset, dtype=np.float64), cov)
        except InputError as exc:
            raise InputError(f"the PSF-field mixture at ({x}, {y}) is not valid (a covariance "
                             f"is not positive definite: the fit keeps the covariances "
                             f"positive definite over the image and the stars' bounding box "
                             f"only): {exc}") from None

    def mixture(self, x, y, *, flux=1.0):
        """The :class:`~astromix.GaussianMixturePSF` at 0-based ``(x, y)``, centred on 0.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars only).
        flux : float, optional
            Total flux of the returned PSF model (default 1).

        Returns
        -------
        GaussianMixturePSF
            The mixture there: component means :attr:`mean` [px] around
            ``(x_0, y_0) = (0, 0)``, amplitudes and covariances [px^2] from
            :meth:`parameters`.

        Raises
        ------
        InputError
            On a non-finite position, or where a polynomial covariance is not
            positive definite (the fit keeps them so over the image and the
            stars' bounding box).
        """
        from ..models.psf import GaussianMixturePSF

        return GaussianMixturePSF(self._gaussian_mixture(x, y), flux=flux)

    def __call__(self, x, y):
        """Same as :meth:`mixture` (a PSF as a callable of position, as Exposure takes)."""
        return self.mixture(x, y)

    def image(self, x, y, *, shape=None, normalize=True, center=None):
        """The pixel-integrated PSF at ``(x, y)``, rendered exactly (no interpolation).

        The signature is :meth:`astromix.io.psfex.PSFExModel.image`'s: the PSF
        centre is at pixel ``(nx // 2 + dx, ny // 2 + dy)`` with ``center = (dx,
        dy)`` (default 0); ``shape`` defaults to ``(size, size)``; with
        ``normalize`` the image sums to 1.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars only), where the
            mixture is evaluated.
        shape : tuple of int, optional
            ``(ny, nx)`` of the image (default ``(size, size)``).
        normalize : bool, optional
            Scale to unit sum (default True); otherwise the rendered mixture,
            whose amplitudes sum to 1 (flux beyond the image is lost).
        center : tuple of float, optional
            ``(dx, dy)`` [px]: offset of the PSF centre from the central pixel
            (default ``(0, 0)``).

        Returns
        -------
        ndarray, shape (ny, nx), float64
            The pixel-integrated PSF, rendered on the CPU (the Numba or NumPy
            backend when the active one is CuPy).

        Raises
        ------
        InputError
            On a non-finite position or centre, a position where a covariance
            is not positive definite (the fit keeps them so over the image and
            the stars' bounding box), a shape the renderer refuses (e.g. a
            side < 1), or with ``normalize`` when the image has no positive
            sum.
        """
        if shape is None:
            shape = (self.size, self.size)
        ny, nx = (int(n) for n in shape)
        dx, dy = (0.0, 0.0) if center is None else (float(center[0]), float(center[1]))
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise InputError(f"center must be finite, got {center!r}")
        mix = self._gaussian_mixture(x, y, offset=(nx // 2 + dx, ny // 2 + dy))
        out = np.asarray(mix.render((ny, nx), settings=self.settings, backend=_cpu_backend()),
                         dtype=np.float64)
        if normalize:
            total = out.sum()
            if not total > 0:
                raise InputError(f"the PSF image at ({x}, {y}) has no positive sum")
            out = out / total
        return out

    def to_psfex(self, size=None, n_grid=None, degree=None):
        """The field as a PSFEx pixel-basis model (for :func:`~astromix.io.psfex.write_psfex`).

        The mixture is rendered at ``n_grid x n_grid`` positions spanning the
        star positions (default ``degree + 3`` per axis) and each pixel's
        polynomial of degree ``degree`` (default: the field's degree + 2) is
        fitted by least squares; the largest difference between the PSFEx
        model and the mixture at those positions, over the peak, is
        ``meta["MIXPROJ"]`` (a mixture's parameters vary polynomially, not its
        pixels, so the projection is close but not exact: on the CFHT A370
        stars 2.7% with the field's degree 2, 0.7% with degree 4).

        Parameters
        ----------
        size : int, optional
            Side of the PSFEx basis images [px] (default :attr:`size`).
        n_grid : int, optional
            Positions per axis at which the mixture is rendered.
        degree : int, optional
            Degree of the PSFEx polynomial.

        Returns
        -------
        astromix.io.psfex.PSFExModel
            Basis of shape ``(nterms, size, size)`` for the chosen degree,
            ``psf_samp = 1``, this field's ``polzero`` and ``polscal``;
            ``meta`` holds ``MIXPROJ`` and, when :attr:`fit_info` has them,
            ``ACCEPTED`` and ``CHI2``.

        Raises
        ------
        InputError
            If a covariance is not positive definite at a grid position (see
            :meth:`image`; with the default ``n_grid`` and ``degree`` the fit
            has made them positive definite there), or ``size`` < 1.
        """
        size = self.size if size is None else int(size)
        degree = self.degree + 2 if degree is None else int(degree)
        gx, gy = _export_grid(self.polzero, self.polscal, self.degree, n_grid, degree)
        images = np.stack([self.image(x, y, shape=(size, size), normalize=False).ravel()
                           for x, y in zip(gx, gy)])
        terms = _polynomial_terms(gx, gy, self.polzero, self.polscal, degree)
        sol, *_ = np.linalg.lstsq(terms, images, rcond=None)        # (nterms, npix)
        err = np.abs(terms @ sol - images).max() / images.max()
        meta = {"MIXPROJ": float(err)}
        info = self.fit_info
        if "n_used" in info:
            meta["ACCEPTED"] = int(info["n_used"])
        if info.get("dof"):
            meta["CHI2"] = float(info["chi2"] / info["dof"])
        return PSFExModel(sol.reshape(-1, size, size), self.polzero, self.polscal, degree,
                          psf_samp=1.0, meta=meta)


def _render(amp, mean, cov, shape, settings, backend):
    return np.asarray(GaussianMixture._unchecked(np.atleast_1d(amp), np.atleast_2d(mean),
                                                 cov[None] if cov.ndim == 2 else cov)
                      .render(shape, settings=settings, backend=backend), dtype=np.float64)


def _star_images(amp, mean, cov, centre, shape, settings, backend):
    """Unit-amplitude Gaussians G_g (K, npix) and dG_g/dc (K, 3, npix) at a star."""
    k = len(amp)
    gauss = np.empty((k, shape[0] * shape[1]))
    deriv = np.empty((k, 3, shape[0] * shape[1]))
    for g in range(k):
        mu = mean[g] + centre
        gauss[g] = _render(1.0, mu, cov[g], shape, settings, backend).ravel()
        h = 1e-3 * math.sqrt(cov[g, 0, 0] * cov[g, 1, 1])
        for j, e in enumerate(_E):
            plus = _render(1.0, mu, cov[g] + h * e, shape, settings, backend)
            minus = _render(1.0, mu, cov[g] - h * e, shape, settings, backend)
            deriv[g, j] = ((plus - minus) / (2 * h)).ravel()
    return gauss, deriv


def _mixture_image(amp, mean, cov, centre, shape, settings, backend):
    return _render(amp, mean + centre, cov, shape, settings, backend)


def _fit_flux_centre(stamp, w, amp, mean, cov, flux, cx, cy, settings, backend, n_steps=3):
    """Gauss-Newton refit of a star's flux and centre (stamp coordinates); the start is
    kept where the steps made chi2 worse (a poor model far from the minimum)."""
    shape = stamp.shape

    def render(x, y):
        return _mixture_image(amp, mean, cov, (x, y), shape, settings, backend)

    d = stamp.ravel()
    wf = w.ravel()
    m0 = render(cx, cy)
    chi2_start = float(np.sum(wf * (d - flux * m0.ravel()) ** 2))
    start = (flux, cx, cy)
    flux, cx, cy = _gauss_newton_flux_centre(stamp, w, render, flux, cx, cy, n_steps=n_steps,
                                             eps=0.02, tol=1e-4)
    m = render(cx, cy)
    if not float(np.sum(wf * (d - flux * m.ravel()) ** 2)) <= chi2_start:
        flux, cx, cy = start
        m = m0
    return flux, cx, cy, m


def fit_mixture_psf_field(image, stars, *, weight=None, size=None, degree=None, n_components=4,
                          background=None, accuracy=0.0, pixel_clip=5.0, n_iter=30,
                          damping=1e-3, start="pixel", pixel_model=None, clip=3.0,
                          pixel_accuracy=None, settings=None, **pixel_kwargs):
    """Fit a Gaussian-mixture PSF field (parameters polynomial in x, y) to the stars of an image.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
    stars : astropy.table.Table
        Columns ``x``, ``y`` (0-based) and optionally ``flux``.
    weight : array-like, shape (ny, nx), optional
        Inverse variance per pixel (0 = masked); default as
        :func:`~astromix.psffield.fit_psf_field`.
    size : int, optional
        Side [px] of the star stamps fitted (odd; default 25, or the
        ``pixel_model``'s), and of :meth:`MixturePSFFieldModel.image` by
        default.  With ``pixel_model``, only its size may be given.
    degree : int, optional
        Polynomial degree of every amplitude and covariance element (default
        2, or the ``pixel_model``'s).  With ``pixel_model``, only its degree
        may be given.
    n_components : int, optional
        Gaussians K (default 4).
    background : None, float or array-like, optional
        As :func:`~astromix.psffield.fit_psf_field`.
    accuracy : float, optional
        PSFEx's ``PSF_ACCURACY`` model-error floor in the weights of the
        mixture fit (default 0: the noise alone).  The pixel fit's is
        ``pixel_accuracy``.
    pixel_clip : float or None, optional
        Mask star pixels further than this many sigmas (noise and a model
        error: 100% of the model against the starting mixture, 10% against
        the converged field) from the model (default 5), in the mixture fit
        and in the pixel fit made here; None: no pixel masking.
    n_iter : int, optional
        Most Levenberg-Marquardt iterations per round (default 30); the pixel
        fit made here keeps its own default.
    damping : float, optional
        Starting Levenberg-Marquardt damping, relative to the diagonal of the
        normal matrix (default 1e-3).
    start : {"pixel", "moments"}, optional
        Where the fit starts: ``"pixel"`` (default) runs
        :func:`~astromix.psffield.fit_psf_field` first (its star selection,
        fluxes, centroids and mean PSF); ``"moments"`` needs no pixel model:
        Gaussian-windowed moments give each star's centroid and the median
        covariance, and the mixture starts as
        concentric Gaussians 0.5-3 times it.  Use ``"moments"`` for
        undersampled stars (FWHM below ~2.5 px), which a pixel grid at the
        image's sampling cannot represent.
    pixel_model : PSFFieldModel, optional
        A pixel fit of the same stars to start from (otherwise one is made
        with ``size``, ``degree``, ``weight``, ``background``, ``pixel_clip``,
        ``clip``, ``pixel_accuracy`` and ``pixel_kwargs``).  Its ``size`` and
        ``degree`` are the field's; ``pixel_accuracy`` and ``pixel_kwargs``
        may not be given with it (they would be unused).
    clip : float, optional
        Outlier threshold of Piff's loop on whole stars after each converged
        fit, in robust sigmas of ``log(chi2/dof)`` (default 3; with the
        residual-fraction criterion of :func:`~astromix.psffield.fit_psf_field`);
        also the ``clip`` of the pixel fit made here.
    pixel_accuracy : float, optional
        ``accuracy`` (PSFEx's ``PSF_ACCURACY``) of the pixel fit made here
        (default None: :func:`~astromix.psffield.fit_psf_field`'s default, 0.05).
    settings : AccuracySettings, optional
        Pixel-integration and culling settings of the renderer.
    **pixel_kwargs
        More arguments of the pixel fit made here,
        :func:`~astromix.psffield.fit_psf_field` (``max_remove``,
        ``min_stars``, ``oversampling``, ``smoothing``); its ``accuracy`` is
        ``pixel_accuracy``, its ``clip`` and ``pixel_clip`` are this
        function's, its ``n_iter`` is its default.

    Returns
    -------
    MixturePSFFieldModel

    Raises
    ------
    InputError
        On bad inputs (as :func:`~astromix.psffield.fit_psf_field`), a bad
        ``n_components``, too few usable stars, a ``size`` or ``degree``
        other than the ``pixel_model``'s, or ``pixel_accuracy`` or
        ``pixel_kwargs`` given where no pixel fit is made (``pixel_model``
        given, or ``start="moments"``).

    Examples
    --------
    >>> import numpy as np, galsim
    >>> from astropy.table import Table
    >>> from astromix.psffield import fit_mixture_psf_field
    >>> img = galsim.ImageD(200, 200)
    >>> pos = [(30.3, 40.1), (150.2, 60.7), (90.6, 170.4), (170.1, 160.2), (40.8, 150.5),
    ...        (100.4, 100.3), (60.2, 90.9), (140.7, 120.1)]
    >>> for x, y in pos:
    ...     stamp = galsim.Gaussian(fwhm=3.0).withFlux(1e4).drawImage(
    ...         scale=1.0, center=galsim.PositionD(x + 1, y + 1), nx=25, ny=25)
    ...     img[stamp.bounds & img.bounds] += stamp[stamp.bounds & img.bounds]
    >>> model = fit_mixture_psf_field(img.array + 1e-3, Table(rows=pos, names=("x", "y")),
    ...                               degree=1, n_components=2, background=0.0)
    >>> psf = model.mixture(100.0, 100.0)
    >>> round(float(sum(psf.mixture.amp)), 6)
    1.0
    """
    from astropy.table import Table

    from ..fitting import fit_psf_mixture

    t0 = time.perf_counter()
    if isinstance(n_components, bool) or int(n_components) != n_components or n_components < 1:
        raise InputError(f"n_components must be an integer >= 1, got {n_components!r}")
    n_components = int(n_components)
    if not isinstance(stars, Table):
        stars = Table(stars)
    if start not in ("pixel", "moments"):
        raise InputError(f"start must be 'pixel' or 'moments', got {start!r}")
    if pixel_model is not None and not isinstance(pixel_model, PSFFieldModel):
        raise InputError(f"pixel_model must be a PSFFieldModel, got {type(pixel_model).__name__}")
    # checked here too: the moments start and a given pixel_model skip fit_psf_field's checks
    data = _as_image(image, "image")
    w_img = None if weight is None else _as_image(weight, "weight", data.shape)
    if w_img is not None and (np.any(~np.isfinite(w_img)) or np.any(w_img < 0)):
        raise InputError("weight must be finite and >= 0")
    if background is None:
        bkg = None
    elif np.ndim(background) == 0:
        bkg = float(background)
        if not math.isfinite(bkg):
            raise InputError(f"background must be finite, got {bkg}")
    else:
        bkg = _as_image(background, "background", data.shape)
    backend = _cpu_backend()
    pixel_args = dict(pixel_kwargs)
    if pixel_accuracy is not None:
        pixel_args["accuracy"] = pixel_accuracy
    if pixel_args and (pixel_model is not None or start == "moments"):
        raise InputError(f"{', '.join(sorted(pixel_args))} set the pixel fit, but none is made "
                         + ("(pixel_model given)" if pixel_model is not None
                            else "(start='moments')"))
    if pixel_model is not None:
        for name, value, own in (("size", size, pixel_model.size),
                                 ("degree", degree, pixel_model.degree)):
            if value is not None and value != own:
                raise InputError(f"{name}={value!r} differs from the pixel_model's {name} "
                                 f"{own}: the field takes the pixel model's (give {name}={own} "
                                 "or leave it out, or fit the pixel model with it)")
    size = 25 if size is None else size
    degree = 2 if degree is None else degree
    if start == "pixel" or pixel_model is not None:
        if pixel_model is None:
            pixel_model = fit_psf_field(image, stars, weight=weight, size=size, degree=degree,
                                        background=background, pixel_clip=pixel_clip,
                                        clip=clip, **pixel_args)
        degree = pixel_model.degree
        size = pixel_model.size
        # the starting mixture: the pixel model's PSF at the centre of the stars (a
        # fixed seed for the random starts: the same data give the same field)
        centre = pixel_model.polzero - 1.0
        base = fit_psf_mixture(pixel_model.image(*centre), n_components, objective="chi2",
                               rng=0, settings=settings, backend=backend).mixture
        table = pixel_model.stars.copy()
        polzero, polscal = pixel_model.polzero, pixel_model.polscal
        pixel_info = pixel_model.fit_info
    else:
        table, base, polzero, polscal = _moments_start(data, w_img, bkg, stars, size,
                                                       degree, n_components)
        pixel_info = None
    nterms = _n_terms(degree)
    k = len(base)
    mean = np.asarray(base.mean, dtype=np.float64)
    amp_c = np.zeros((k, nterms))
    amp_c[:, 0] = base.amp / base.amp.sum()
    cov_c = np.zeros((k, 3, nterms))
    cov_c[:, 0, 0] = base.cov[:, 0, 0]
    cov_c[:, 1, 0] = base.cov[:, 0, 1]
    cov_c[:, 2, 0] = base.cov[:, 1, 1]
    model = MixturePSFFieldModel(mean, amp_c, cov_c, polzero, polscal, degree, size=size,
                                 settings=settings)

    # -- the stars -------------------------------------------------------------------
    used = np.asarray(table["used"], bool)
    idx = np.flatnonzero(used)
    xs = np.asarray(table["x_fit"], dtype=np.float64)
    ys = np.asarray(table["y_fit"], dtype=np.float64)
    flux = np.asarray(table["flux_fit"], dtype=np.float64).copy()
    half = size // 2
    ix = np.rint(np.where(used, xs, 0.0)).astype(int)
    iy = np.rint(np.where(used, ys, 0.0)).astype(int)
    stamps, wbase, edge = _cut_stamps(data, w_img, bkg, ix[idx], iy[idx], half)
    if np.any(edge):  # the stamps of both starts had a margin, so this cannot happen
        raise InputError("a used star's stamp leaves the image")  # pragma: no cover
    cx = xs[idx] - ix[idx] + half
    cy = ys[idx] - iy[idx] + half
    fl = flux[idx]
    n_masked = np.zeros(idx.size, int)
    terms = model.coefficients(xs[idx], ys[idx])                  # (n, nterms)
    pd_terms = _check_positions(model.polzero, model.polscal, degree, data.shape)
    shape = (2 * half + 1, 2 * half + 1)
    n_amp = (k - 1) * nterms
    n_par = n_amp + 3 * k * nterms
    history = []
    converged = False
    weff = wbase.copy()
    chi2 = np.zeros(idx.size)
    norm = np.ones(idx.size)
    active = np.ones(idx.size, bool)
    rejected_here = np.zeros(idx.size, bool)
    lam = float(damping)
    it = 0
    # rounds: mask the pixels far off the starting model and fit; mask against the
    # fitted model and fit again; then Piff's outlier loop on whole stars
    masking = pixel_clip is not None
    n_rejections = 0  # rounds of Piff's loop that rejected stars (each is followed by a fit)
    for _round in range(5):
        # first against the starting model, with a loose 100% model error: it is the
        # same mixture at every position (the pixel model's PSF at the centre of the
        # stars, or the moments' median), so that where the PSF is narrower or wider
        # than that the stars' cores and wings differ from it by tens of %; then again
        # against the converged field, with a 10% model error
        clip_now = masking and _round <= 1
        floor = 1.0 if _round == 0 else 0.1
        for _ in range(int(n_iter)):
            it += 1
            # per star: flux and centre, pixel masking, weights, the normal equations
            normal = np.zeros((n_par, n_par))
            rhs = np.zeros(n_par)
            current = 0.0  # the weighted chi2 the Levenberg-Marquardt step must lower
            for n in np.flatnonzero(active):
                amp, cov = model.parameters(xs[idx[n]], ys[idx[n]])
                fl[n], cx[n], cy[n], mimg = _fit_flux_centre(stamps[n], weff[n], amp, mean, cov,
                                                             fl[n], cx[n], cy[n], settings,
                                                             backend)
                mod = fl[n] * mimg
                if clip_now:
                    with np.errstate(divide="ignore"):
                        var = np.where(wbase[n] > 0, 1.0 / wbase[n], np.inf)
                    bad = np.abs(stamps[n] - mod) > pixel_clip * np.sqrt(var + (floor * mod) ** 2)
                    if bad.any():
                        from scipy import ndimage
                        bad = ndimage.binary_dilation(bad, iterations=2)
                    n_masked[n] += int(np.count_nonzero(bad & (wbase[n] > 0)))
                    wbase[n][bad] = 0.0
                with np.errstate(divide="ignore"):
                    weff[n] = np.where(wbase[n] > 0, 1.0 / (
                        1.0 / np.where(wbase[n] > 0, wbase[n], 1.0) + (accuracy * mod) ** 2), 0.0)
                resid = (stamps[n] - mod).ravel()
                chi2[n] = float(np.sum(wbase[n].ravel() * resid ** 2))
                norm[n] = float(np.sum(wbase[n] * mod ** 2))
                gauss, deriv = _star_images(amp, mean, cov, np.array([cx[n], cy[n]]), shape,
                                            settings, backend)
                cols = [gauss[1:] - gauss[0]] if k > 1 else []
                cols.append((amp[:, None, None] * deriv).reshape(3 * k, -1))
                d = np.concatenate(cols, axis=0) * fl[n]               # (J, npix)
                # parameters in the order [amp (g >= 1, term), cov (g, j, term)]
                jac = (d[:, None, :] * terms[n][None, :, None]).reshape(-1, d.shape[1])
                ww = weff[n].ravel()
                normal += (jac * ww) @ jac.T
                rhs += (jac * ww) @ resid
                current += float(np.sum(ww * resid ** 2))
            clip_now = False
            total = float(chi2[active].sum())
            dof = float(sum(np.count_nonzero(wbase[n]) - 3 for n in np.flatnonzero(active)))
            history.append(total)
            if len(history) > 1 and abs(history[-2] - total) < 0.1 * dof:
                converged = True
                break
            # Levenberg-Marquardt: a step is taken only if it lowers the weighted chi2
            act = np.flatnonzero(active)
            diag = np.diag(normal).copy()
            diag[diag <= 0] = 1.0
            for _ in range(12):
                try:
                    step = np.linalg.solve(normal + lam * np.diag(diag), rhs)
                except np.linalg.LinAlgError:
                    lam *= 10.0
                    continue
                new_amp = amp_c.copy()
                if k > 1:
                    new_amp[1:] += step[:n_amp].reshape(k - 1, nterms)
                    new_amp[0] = np.eye(1, nterms)[0] - new_amp[1:].sum(axis=0)
                new_cov = cov_c + step[n_amp:].reshape(k, 3, nterms)
                trial = MixturePSFFieldModel(mean, new_amp, new_cov, model.polzero,
                                             model.polscal, degree, size=size, settings=settings)
                if _all_positive(new_cov, terms[act]) and _all_positive(
                        new_cov, pd_terms) and _weighted_chi2(
                        trial, stamps[act], weff[act], fl[act], cx[act], cy[act], xs[idx[act]],
                        ys[idx[act]], settings, backend) < current:
                    amp_c, cov_c, model = new_amp, new_cov, trial
                    lam = max(lam / 3.0, 1e-9)
                    break
                lam *= 10.0
            else:
                converged = True  # no step lowers chi2: at the minimum
                break
        if masking and _round == 0:
            continue  # fit again with the masks
        if n_rejections == 3:
            break  # the fit without the stars rejected in the third round
        # Piff's outlier loop on whole stars (as fit_psf_field), then fit again
        dofs_n = np.array([max(np.count_nonzero(wbase[n]) - 3.0, 1.0) for n in range(idx.size)])
        ratio = np.log(np.maximum(chi2 / dofs_n, 1e-300))
        frac = np.sqrt(chi2 / np.maximum(norm, 1e-300))
        over = np.flatnonzero(active & _clipped(ratio, active, clip,
                                                math.sqrt(2.0 / np.median(dofs_n[active])))
                              & (frac > 2.0 * np.median(frac[active])))
        over = over[np.argsort(ratio[over])[::-1]][:max(1, int(0.1 * active.sum()))]
        over = over[:max(0, int(active.sum()) - 2 * nterms)]
        if over.size == 0:
            break
        active[over] = False
        rejected_here[over] = True
        converged = False
        n_rejections += 1

    out = table
    x_fit = np.full(len(out), np.nan)
    y_fit = np.full(len(out), np.nan)
    x_fit[idx] = ix[idx] + cx - half
    y_fit[idx] = iy[idx] + cy - half
    out["x_fit"] = x_fit
    out["y_fit"] = y_fit
    fcol = np.full(len(out), np.nan)
    fcol[idx] = fl
    out["flux_fit"] = fcol
    c2 = np.full(len(out), np.nan)
    c2[idx] = chi2
    out["chi2"] = c2
    dofs = np.zeros(len(out))
    dofs[idx] = [max(np.count_nonzero(wbase[n]) - 3.0, 1.0) for n in range(idx.size)]
    out["dof"] = dofs
    with np.errstate(invalid="ignore", divide="ignore"):
        out["chi2_dof"] = c2 / dofs
    nm = np.zeros(len(out), int)
    nm[idx] = n_masked
    out["n_masked"] = nm
    used_col = np.zeros(len(out), bool)
    used_col[idx[active]] = True
    rejected_col = np.asarray(out["rejected"], bool).copy()
    rejected_col[idx[rejected_here]] = True
    out["used"] = used_col
    out["rejected"] = rejected_col
    model.stars = out
    dofs[~used_col] = 0.0
    model.fit_info = {"n_iter": it, "converged": converged,
                      "chi2": float(chi2[active].sum()), "dof": float(dofs.sum()),
                      "history": history, "n_used": int(active.sum()),
                      "n_rejected": int(rejected_here.sum()),
                      "time_s": time.perf_counter() - t0,
                      "pixel_fit_info": pixel_info}
    return model


def _moments_start(data, weight, bkg, stars, size, degree, k):
    """Star table, starting mixture and PSFEx coordinates from windowed moments.

    No pixel model: every star's centroid (Gaussian-windowed first moment) and
    covariance (second moments in a Gaussian window of sigma 2 px, corrected
    for the window exactly for a Gaussian star: ``C = (m^-1 - W^-1)^-1``, so
    that stars of sigma < 1 px, where HSM collapses, are measured too); the
    starting mixture has ``k`` concentric Gaussians with the median covariance
    (pixel variance 1/12 removed) scaled by 0.5 .. 3 and amplitudes halving
    outwards.
    """

    if isinstance(size, bool) or int(size) != size or size < 5 or size % 2 == 0:
        raise InputError(f"size must be an odd integer >= 5, got {size!r}")
    if isinstance(degree, bool) or int(degree) != degree or degree < 0:
        raise InputError(f"degree must be an integer >= 0, got {degree!r}")
    if data.ndim != 2:
        raise InputError(f"image must be 2-d, got shape {data.shape}")
    stars, xs, ys = _star_positions(stars)
    half = int(size) // 2
    ix, iy = np.rint(xs).astype(int), np.rint(ys).astype(int)
    stamps, wst, edge = _cut_stamps(data, weight, bkg, ix, iy, half)
    n = len(stars)
    x_fit, y_fit = np.full(n, np.nan), np.full(n, np.nan)
    flux = np.full(n, np.nan)
    covs = np.full((n, 2, 2), np.nan)
    yy, xx = np.mgrid[:2 * half + 1, :2 * half + 1].astype(np.float64)
    win2 = 2.0 ** 2  # Gaussian window variance [px^2]
    for s in np.flatnonzero(~edge):
        st = np.where(wst[s] > 0, stamps[s], 0.0)
        xc, yc = _windowed_centroid(st, half + xs[s] - ix[s], half + ys[s] - iy[s], sigma=2.0)
        dx, dy = xx - xc, yy - yc
        wi = np.exp(-(dx ** 2 + dy ** 2) / (2 * win2)) * st
        tot = wi.sum()
        if not tot > 0:
            continue
        m = np.array([[np.sum(wi * dx * dx), np.sum(wi * dx * dy)],
                      [np.sum(wi * dx * dy), np.sum(wi * dy * dy)]]) / tot
        # a Gaussian of covariance C seen through the window: m = (C^-1 + W^-1)^-1
        try:
            c = np.linalg.inv(np.linalg.inv(m) - np.eye(2) / win2)
        except np.linalg.LinAlgError:
            continue
        if not (c[0, 0] > 0 and np.linalg.det(c) > 0):
            c = m
        covs[s] = c
        x_fit[s] = ix[s] - half + xc
        y_fit[s] = iy[s] - half + yc
        flux[s] = float(st.sum())
    # the fit cuts the stamps again around the measured centres: a star whose centroid
    # moved (by up to ~2 px) so that its stamp would leave the image is an edge star
    ny, nx = data.shape
    with np.errstate(invalid="ignore"):
        jx, jy = np.rint(x_fit), np.rint(y_fit)
        edge |= np.isfinite(x_fit) & ((jx - half < 0) | (jy - half < 0)
                                      | (jx + half > nx - 1) | (jy + half > ny - 1))
    used = ~edge & np.isfinite(x_fit) & (flux > 0)
    nterms = _n_terms(int(degree))
    if used.sum() < 2 * nterms:
        raise InputError(f"only {int(used.sum())} usable stars (inside the image, measured by "
                         f"HSM, positive flux); at least {2 * nterms} are needed for degree "
                         f"{degree}")
    c = np.median(covs[used], axis=0) - np.eye(2) / 12.0
    if not (c[0, 0] > 0 and np.linalg.det(c) > 0):
        c = np.median(covs[used], axis=0)
    scales = np.geomspace(0.5, 3.0, k) if k > 1 else np.ones(1)
    amps = 0.5 ** np.arange(k)
    base = GaussianMixture(amps / amps.sum(), np.zeros((k, 2)), scales[:, None, None] * c)
    xu, yu = x_fit[used] + 1.0, y_fit[used] + 1.0
    polzero = np.array([0.5 * (xu.min() + xu.max()), 0.5 * (yu.min() + yu.max())])
    polscal = np.array([max(xu.max() - xu.min(), 1.0), max(yu.max() - yu.min(), 1.0)])
    _check_star_layout(xu, yu, polzero, polscal, int(degree), int(size))
    table = stars.copy()
    table["x_fit"] = x_fit
    table["y_fit"] = y_fit
    table["flux_fit"] = flux
    table["edge"] = edge
    table["rejected"] = np.zeros(n, bool)
    table["used"] = used
    return table, base, polzero, polscal


def _weighted_chi2(model, stamps, w, flux, cx, cy, xs, ys, settings, backend):
    """sum w (stamp - flux model)^2 over the stars, their fluxes and centres fixed."""
    total = 0.0
    for n in range(len(flux)):
        amp, cov = model.parameters(xs[n], ys[n])
        m = _mixture_image(amp, model.mean, cov, (cx[n], cy[n]), stamps[n].shape, settings,
                           backend)
        total += float(np.sum(w[n] * (stamps[n] - flux[n] * m) ** 2))
    return total


def _all_positive(cov_coeffs, terms):
    """Whether every covariance is positive definite at every position.

    ``cov_coeffs`` (K, 3, nterms): the polynomial coefficients of ``c_xx, c_xy,
    c_yy``; ``terms`` (P, nterms): the polynomial terms of the P positions.
    """
    c = np.einsum("gjt,pt->pgj", cov_coeffs, terms)
    return bool(np.all(c[..., 0] > 0) and np.all(c[..., 0] * c[..., 2] - c[..., 1] ** 2 > 0))


def _check_positions(polzero, polscal, degree, shape):
    """Polynomial terms (P, nterms) of the positions where the fit keeps the covariances PD.

    Besides the stars: the grid :meth:`MixturePSFFieldModel.to_psfex` renders
    by default (``degree + 5`` positions per axis over the box ``polzero - 1
    +- polscal / 2``, the stars' bounding box, in 0-based pixels) and a grid of
    ``2 (degree + 4) + 1`` positions per axis over that box and the image
    (``shape`` = (ny, nx)) together, so that the model is a valid mixture over
    the whole field and not only at the stars (a quadratic covariance fitted
    at the stars alone had been indefinite at a corner of the box).
    """
    ny, nx = shape
    lo = polzero - 1.0 - 0.5 * polscal
    hi = polzero - 1.0 + 0.5 * polscal
    gx, gy = _export_grid(polzero, polscal, degree)
    v = np.linspace(0.0, 1.0, 2 * (degree + 4) + 1)
    x0, x1 = min(lo[0], 0.0), max(hi[0], nx - 1.0)
    y0, y1 = min(lo[1], 0.0), max(hi[1], ny - 1.0)
    hx, hy = np.meshgrid(x0 + v * (x1 - x0), y0 + v * (y1 - y0))
    x = np.concatenate([gx, hx.ravel()])
    y = np.concatenate([gy, hy.ravel()])
    return _polynomial_terms(x, y, polzero, polscal, degree)


def _export_grid(polzero, polscal, degree, n_grid=None, psfex_degree=None):
    """(x, y), each (n_grid**2,), of the grid :meth:`MixturePSFFieldModel.to_psfex` renders
    for a field of polynomial ``degree``: ``n_grid`` positions per axis (default
    ``psfex_degree + 3``, ``psfex_degree`` defaulting to ``degree + 2``) spanning the
    stars' bounding box ``polzero - 1 +- polscal / 2`` [0-based px]."""
    psfex_degree = degree + 2 if psfex_degree is None else psfex_degree
    n_grid = psfex_degree + 3 if n_grid is None else int(n_grid)
    u = np.linspace(-0.5, 0.5, n_grid)
    gx, gy = np.meshgrid(polzero[0] - 1.0 + u * polscal[0], polzero[1] - 1.0 + u * polscal[1])
    return gx.ravel(), gy.ravel()
