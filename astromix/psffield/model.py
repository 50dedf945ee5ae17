r"""A PSF-field model fitted to the stars of an image (pixel basis, PSFEx-style).

:func:`fit_psf_field` models the PSF across an image as PSFEx does with its
``PIXEL`` basis: the PSF at 0-based position ``(x, y)`` is

.. math::

    P(x, y) = \sum_k c_k(x_t, y_t)\, B_k, \qquad
    x_t = (x + 1 - \mathrm{POLZERO1}) / \mathrm{POLSCAL1}

(``y_t`` likewise) with the polynomial terms in PSFEx's order
(``1, x_t, .., x_t^d, y_t, x_t y_t, .., y_t^d``; see :mod:`astromix.io.psfex`)
and ``B_k`` pixel images of ``size x size`` image pixels (``PSF_SAMP = 1``;
with ``oversampling = N > 1``, images of ``n x n`` nodes sampled every ``1/N``
image pixels, ``PSF_SAMP = 1/N``: see *Oversampled grid* below).
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
2. Start: centroid = Gaussian-windowed first moment (window sigma 2 px,
   iterated from the input position, moving at most 2 px); a star whose
   centroid rounds to another pixel than its input position is cut again
   around that pixel (and its centroid refined there), so that input
   positions up to ~2 px off are as good as exact ones; flux = stamp sum.
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
   the first and the third pass, the pixels of a star further
   from the model than ``pixel_clip`` times the noise and a model error
   (neighbours, cosmic rays, bad columns), grown by 2 pixels for their fainter
   wings, are masked for the rest of the fit
   (their count is the star's ``n_masked``).  The model error is 100% of the
   model in the first pass, against the robust start (step 6: the same mean
   PSF at every position, from which a good star's core differs by tens of %
   where the PSF is narrower or wider), and 10% in the third, against the
   second least-squares field (the first, solved with the fluxes and centres
   fitted to the robust start, can still be 10% off where the PSF varies
   most).
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
   rejected or masked and the total chi2 changed by less than 0.1 of its dof, or ``n_iter``
   iterations; when stars were rejected (or pixels masked) in the last of them, the basis is
   solved (and the stars refitted) once more without them, so that the returned basis is
   always that of the stars (and pixels) reported used.

**Oversampled grid** (``oversampling = N > 1``, for undersampled stars, as
photutils' ``EPSFBuilder`` and PSFEx with ``PSF_SAMPLING = 1/N``).  Resampling
a star whose FWHM is 1.5-2 pixels onto a grid (step 3) cannot be done
accurately, so the basis is instead fitted as a *forward model* of the star
pixels, which are never resampled:

* The basis images are sampled on an odd grid of ``n = size N`` (+ 1 when even)
  nodes, ``1/N`` image pixels apart and covering the ``size`` image pixels;
  ``PSF_SAMP = 1/N`` as PSFEx writes it.  Between nodes the effective PSF is
  the interpolating cubic spline of the nodes -- exactly what
  :meth:`astromix.io.psfex.PSFExModel.image` computes when ``PSF_SAMP != 1``
  (:func:`scipy.ndimage.map_coordinates`, ``order=3``): a star pixel at offset
  ``(u, v)`` [image px] from the star's centre is
  ``flux N^2 sum_k c_k(x, y) spline(B_k)(N u, N v)``: ``B_0`` sums to 1 over
  the nodes, as with ``N = 1`` (a node carries ``1/N^2`` of an image pixel's
  flux), and :meth:`PSFFieldModel.image` is the image-pixel PSF.  PSFEx's
  ``PSF_MASK`` holds the PSF per image pixel instead (``sum * PSF_SAMP^2 =
  1``), so :meth:`PSFFieldModel.to_psfex` writes ``N^2 B_k``, as PSFEx and
  SExtractor expect.
* The unknowns are the spline's B-spline coefficients (each star pixel depends
  on 4 x 4 of them, so the normal matrix is sparse: pairs of nodes at most 3
  apart); the node values follow from them by the ``[1, 4, 1]/6`` filter.
  The normal equations sum, over every used star's pixels, the same weights as
  step 3 (noise plus ``PSF_ACCURACY``, masked pixels left out), plus a small
  smoothness term (``smoothing``): the squared second differences of each
  ``B_k``'s coefficients, measured in units of the FWHM (the FWHM of the
  Gaussian of the same peak) and weighted by the local strength of the data
  (the diagonal of the normal matrix), which damps the combinations of nodes
  that the stars' sub-pixel phases leave undetermined (more of them with few
  stars, large ``N`` or a high degree) while barely touching the PSF
  (measured on 50 GalSim stars of a constant Moffat PSF of FWHM 1.6 px:
  within 0.45% of the peak at ``N = 2``, where the spline through exact
  samples of the true PSF is already 0.3-0.6% off between nodes).  They are
  solved by conjugate gradients, preconditioned by the term-diagonal blocks
  in polynomial terms made orthonormal over the stars (banded Cholesky); a
  banded direct solution is the fall-back.
* The robust start (iteration 0) is the ``N = 1`` median, interpolated onto the
  nodes, then improved by 3 passes of photutils' scheme: each node adds the
  median of the residuals of the star samples nearest to it (at least 5 of
  them; each star's flux refitted in between, its centre kept).
* The constraints (step 4) are applied to the node images (the window in node
  units); each star's flux and centre (step 5) are refitted against the
  spline evaluated at its pixels, the same values as
  :meth:`~astromix.io.psfex.PSFExModel.image` with ``center=``.
  Everything else (masking, chi2, outlier loop) is as above.

On 48 GalSim stars of a Moffat PSF of FWHM 1.6 px whose size and shape vary
(noise, random sub-pixel positions, degree 2), ``N = 1`` misses GalSim's
rendering at held-out positions by 5-8% of the peak, ``N = 2`` by 0.6-1.3%
at any sub-pixel phase (at most 0.6% at the pixel centre), in 2-3 s (2 CPU cores).
``N = 3`` has 2.25 times more nodes to fit: on a field whose PSF varies more,
with 50 stars it is worse than ``N = 2`` (2.0-2.6% of the peak against
1.1-2.0%), with 150 stars both reach 0.9%.  On the well-sampled CFHT A370 stars (FWHM 3.5 px)
``N = 2`` gives the same validation statistics as ``N = 1`` and as PSFEx with
``PSF_SAMPLING 0.5`` (``benchmarks/psf_field.py --oversampling 2``).

Examples
--------
See :func:`fit_psf_field`.
"""

import functools
import math
import numbers
import time

import numpy as np

from .._checks import integer_parameter
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

    Parameters
    ----------
    basis, polzero, polscal, degree
        As :class:`~astromix.io.psfex.PSFExModel`'s, except that ``basis`` is
        normalised over the nodes (see :attr:`basis`): PSFEx's ``PSF_MASK``
        divided by ``oversampling**2``.
    stars, fit_info : optional
        See the attributes.
    oversampling : int, optional
        Basis-grid samples per image pixel (default 1); PSFEx's ``PSF_SAMP``
        is ``1 / oversampling``.

    Attributes
    ----------
    basis : ndarray, shape (nterms, n, n)
        The basis images ``B_k``, ``n = size`` for ``oversampling = 1``, else
        ``size * oversampling`` rounded up to odd (nodes every
        ``1 / oversampling`` image pixels); PSF centre at node
        ``(n // 2, n // 2)``; ``B_0`` has unit sum over the nodes, the others
        zero sum (:meth:`image` multiplies the interpolated nodes by
        ``oversampling**2``).  PSFEx's ``PSF_MASK`` (:meth:`to_psfex`) is
        ``oversampling**2 * basis``: PSFEx normalises the PSF per image
        pixel.
    polzero, polscal : ndarray, shape (2,)
        PSFEx's POLZERO1/2 and POLSCAL1/2 (1-based image pixels).
    degree : int
    oversampling : int
    psf_samp : float
        ``1 / oversampling``.
    size : int
        Side [image px] of :meth:`image`: the ``size`` of the fit.
    stars : astropy.table.Table
        The input table plus ``x_fit, y_fit`` (fitted 0-based centroid),
        ``flux_fit``, ``chi2``, ``dof``, ``chi2_dof``, ``edge`` (stamp
        outside the image), ``n_masked`` (pixels masked as off the model),
        ``residual_frac`` (``sqrt(chi2 / sum w (flux
        model)^2)``), ``rejected`` (outlier) and ``used`` (in the final fit).
    fit_info : dict
        ``n_iter`` (index of the last pass, the robust start being 0: one
        more than the ``n_iter`` argument when stars were rejected, or pixels
        masked, in the last iteration and the basis was solved again),
        ``converged``, ``chi2``, ``dof`` (totals over used stars), ``n_stars``,
        ``n_used``, ``n_rejected``, ``n_edge``,
        ``history`` (per iteration: chi2, dof, n_used, n_removed) and
        ``time_s``; with ``oversampling > 1`` also ``solve_time_s`` (time in
        the least-squares solutions) and ``cg_iterations`` (conjugate-gradient
        iterations of each, -1 where the direct fall-back was used).

    Raises
    ------
    InputError
        If ``oversampling`` is not an integer >= 1, or
        :class:`~astromix.io.psfex.PSFExModel` refuses ``basis``, ``polzero``,
        ``polscal`` or ``degree`` (e.g. a basis that is not a finite
        ``(nterms, n, n)`` array, a zero ``polscal``).
    """

    def __init__(self, basis, polzero, polscal, degree, stars=None, fit_info=None, *,
                 oversampling=1):
        if (isinstance(oversampling, (bool, np.bool_))
                or not isinstance(oversampling, numbers.Integral) or oversampling < 1):
            raise InputError(f"oversampling must be an integer >= 1, got {oversampling!r}")
        self._oversampling = int(oversampling)
        # the PSFEx form: PSF_MASK per image pixel, oversampling**2 times the nodes' basis
        psfex = PSFExModel(basis, polzero, polscal, degree, psf_samp=1.0 / self._oversampling)
        self._basis = psfex.basis
        if self._oversampling > 1:
            psfex = PSFExModel(self._basis * float(self._oversampling ** 2), polzero, polscal,
                               degree, psf_samp=1.0 / self._oversampling)
        self._psfex = psfex
        self.stars = stars
        self.fit_info = dict(fit_info or {})

    @property
    def basis(self):
        return self._basis

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
    def oversampling(self):
        """Basis-grid samples per image pixel (1 / PSFEx's ``PSF_SAMP``)."""
        return self._oversampling

    @property
    def psf_samp(self):
        """PSFEx's ``PSF_SAMP``: image pixels per basis-grid pixel, ``1 / oversampling``."""
        return self._psfex.psf_samp

    @property
    def size(self):
        """Side [image px] of :meth:`image` (the ``size`` of the fit)."""
        return self._psfex.image_shape[0]

    def grid(self, x, y):
        """The PSF at 0-based ``(x, y)`` on the basis grid (nodes), unit sum.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars only).

        Returns
        -------
        ndarray, shape (n, n), float64
            ``sum_k c_k(x, y) B_k`` divided by its sum, on the nodes of
            :attr:`basis` (``1 / oversampling`` image pixels apart), centre at
            node ``(n // 2, n // 2)``.

        Raises
        ------
        InputError
            If ``x`` or ``y`` is not a finite scalar, or the PSF there has no
            positive sum.
        """
        return self._psfex.grid(x, y, normalize=True)

    def __repr__(self):
        return (f"<PSFFieldModel degree={self.degree} size={self.size} "
                f"oversampling={self.oversampling} used={self.fit_info.get('n_used')} "
                f"rejected={self.fit_info.get('n_rejected')}>")

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
            If a coordinate is not finite or ``x`` and ``y`` do not broadcast.
        """
        return self._psfex.coefficients(x, y)

    def image(self, x, y, shape=None):
        """The PSF at 0-based ``(x, y)`` in image pixels: unit sum, centred on the central pixel.

        ``shape`` (default ``(size, size)``) is cut or zero-padded around the
        centre (see :meth:`astromix.io.psfex.PSFExModel.image`, which also
        draws it at a sub-pixel ``center``: ``to_psfex().image(x, y,
        center=(dx, dy))``).  With ``oversampling > 1`` the nodes are
        interpolated at the image pixel centres (cubic spline), as in the fit.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars only), where the
            polynomial is evaluated; the image is centred on its central pixel
            whatever their fractional parts.
        shape : tuple of int, optional
            ``(ny, nx)`` of the image (default ``(size, size)``); the PSF
            centre is at pixel ``(nx // 2, ny // 2)``.

        Returns
        -------
        ndarray, shape (ny, nx), float64
            The PSF in image pixels, unit sum.

        Raises
        ------
        InputError
            If ``x`` or ``y`` is not a finite scalar, ``shape`` is not two
            integers >= 1, or the image has no positive sum.
        """
        return self._psfex.image(x, y, shape=shape)

    def mixture(self, x, y, n_components=4, **kwargs):
        """A :class:`~astromix.GaussianMixturePSF` fitted to :meth:`image` at ``(x, y)``.

        Delegates to :meth:`astromix.io.psfex.PSFExModel.mixture` (which calls
        :func:`astromix.fitting.fit_psf_mixture` on the unit-sum PSF, keyword
        arguments passed on); ``fit_info["image_max_residual_over_peak"]``
        gives ``max|mixture - image| / peak``.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image (scalars only; rounded to 0.1
            px, and the fits cached by rounded position).
        n_components : int, optional
            Number of Gaussians (default 4).
        **kwargs
            Passed to :func:`~astromix.fitting.fit_psf_mixture` (defaults
            ``objective="chi2"``, ``n_starts=1``, ``rng=0``, an automatic
            ``trim``), plus ``recenter`` (bool, default False: the mixture's
            origin is the model's centre, not its centroid); see
            :meth:`astromix.io.psfex.PSFExModel.mixture`.  ``oversampling`` is
            set to :attr:`oversampling` and may not be given.

        Returns
        -------
        GaussianMixturePSF
            Unit flux, shape in image pixels [px, px^2] around (0, 0);
            ``fit_info`` as :meth:`astromix.io.psfex.PSFExModel.mixture`
            gives it.

        Raises
        ------
        InputError
            On a bad position or ``n_components``, ``oversampling`` given, or
            any error of :func:`~astromix.fitting.fit_psf_mixture`.
        """
        return self._psfex.mixture(x, y, n_components=n_components, **kwargs)

    def to_psfex(self):
        """The model as a :class:`~astromix.io.psfex.PSFExModel` (for :func:`write_psfex`).

        ``meta`` carries ``LOADED``, ``ACCEPTED`` and ``CHI2`` (reduced chi2
        of the used stars), as PSFEx writes them.

        Returns
        -------
        astromix.io.psfex.PSFExModel
            A new model with basis ``oversampling**2 * basis`` (PSFEx's
            normalisation, the PSF per image pixel: ``basis[0].sum() *
            psf_samp**2 = 1``, so SExtractor's ``FLUX_PSF`` with the written
            file is the star's flux), the same ``polzero``, ``polscal`` and
            ``degree``, ``psf_samp = 1 / oversampling`` and that ``meta`` (the
            keys only when :attr:`fit_info` has the counts and a dof).
        """
        info = self.fit_info
        meta = {}
        if "n_stars" in info:
            meta["LOADED"] = int(info["n_stars"])
            meta["ACCEPTED"] = int(info["n_used"])
        if info.get("dof"):
            meta["CHI2"] = float(info["chi2"] / info["dof"])
        return PSFExModel(self._psfex.basis, self.polzero, self.polscal, self.degree,
                          psf_samp=self.psf_samp, meta=meta)


#: Smallest ratio of the smallest to the largest singular value of the stars' (column
#: normalised) polynomial design accepted by :func:`_check_star_layout`.  Stars spread
#: over the field give 0.02-0.8 (degree 1-3, 2 stars per term or more); stars on too few
#: rows or columns for the degree give 1e-4 or less.
LAYOUT_CONDITION = 1e-3


def _check_star_layout(x, y, polzero, polscal, degree, size):
    """Refuse star positions that cannot determine the polynomial of ``degree``.

    ``x, y`` [px, 1-based as the PSFEx coordinates]: the positions of the stars
    used.  Raises InputError when there are fewer stars than polynomial terms
    (``(degree + 1)(degree + 2) / 2``: possible with a lowered ``min_stars``;
    the singular values of the ``n_stars x nterms`` design alone cannot show
    it, there are only ``n_stars`` of them), when the stars span less than
    ``size`` px (the PSF stamp) along an axis, so that every term in that
    coordinate is set by their sub-pixel scatter alone (stars on one row), or
    when the design matrix of the terms is rank deficient in practice
    (:data:`LAYOUT_CONDITION`; e.g. a grid of stars on ``degree`` rows or
    fewer, where the highest power along that axis is undetermined).  Such
    fits had returned a PSF badly wrong away from the stars' rows, with every
    star reported used and converged.
    """
    if degree == 0:
        return
    nterms = _n_terms(degree)
    if len(x) < nterms:
        raise InputError(f"only {len(x)} stars for the {nterms} terms of a polynomial of "
                         f"degree {degree}: at least {nterms} are needed to determine it "
                         f"(2 per term are advised); lower the degree or use more stars")
    for axis, v in (("x", x), ("y", y)):
        extent = float(np.max(v) - np.min(v))
        if extent < size:
            raise InputError(f"the {len(v)} stars span only {extent:.2g} px in {axis}, less "
                             f"than the {size}-px PSF stamp: the polynomial's {axis} terms "
                             f"(degree {degree}) are undetermined; use degree=0 or stars "
                             f"spread over the image")
    design = _polynomial_terms(x, y, polzero, polscal, degree)
    design = design / np.linalg.norm(design, axis=0)
    sv = np.linalg.svd(design, compute_uv=False)
    if not sv[-1] > LAYOUT_CONDITION * sv[0]:
        raise InputError(f"the positions of the {len(x)} stars do not determine a polynomial "
                         f"of degree {degree} (the terms are nearly dependent: singular value "
                         f"ratio {sv[-1] / sv[0]:.1e}; stars on {degree} rows or columns or "
                         "fewer, say); lower the degree or use stars spread over the image")


#: Smallest median windowed S/N (:func:`_windowed_snr`) of the usable stars accepted by
#: :func:`fit_psf_field`: stamps of noise alone give about 0 (+-1); stars selected for a
#: PSF model (S/N of 20 or more) give tens to thousands.
MIN_WINDOWED_SNR = 3.0


def _windowed_snr(stamp, w, xc, yc, sigma=2.0):
    """S/N of the Gaussian-windowed flux (window sigma 2 px at ``(xc, yc)``) of a stamp.

    ``sum(W stamp) / sqrt(sum(W^2 / w))`` over the pixels of weight ``w > 0``
    (inverse variances); 0 where there are none.
    """
    ny, nx = stamp.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    win = np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2 * sigma ** 2))
    good = w > 0
    noise = math.sqrt(float(np.sum(win[good] ** 2 / w[good])))
    return float(np.sum(win[good] * stamp[good])) / noise if noise > 0 else 0.0


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
                  pixel_clip=5.0, min_stars=None, smoothing=3e-5):
    """Fit a PSFEx-style pixel PSF-field model to the stars of an image.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
    stars : astropy.table.Table
        Columns ``x``, ``y`` (0-based pixel centres; approximate positions, up
        to ~2 px off, are refined: each stamp is cut again around the star's
        windowed centroid) and optionally ``flux`` (start value).
    weight : array-like, shape (ny, nx), optional
        Inverse variance per pixel (0 = masked).  Default: uniform per star,
        from the robust scatter of the stamp's outer 2-pixel ring.
    size : int, optional
        Side of the stamps and of the PSF grid [px], odd (default 25).
    degree : int, optional
        Polynomial degree in (x, y) (default 2).
    oversampling : int, optional
        PSF grid samples per image pixel (default 1: the grid is the image
        pixels).  ``N > 1``: an oversampled grid of ``size * N`` (rounded up to
        odd) nodes, PSFEx's ``PSF_SAMPLING = 1/N``, fitted as a forward model
        of the star pixels (see :mod:`astromix.psffield.model`); for
        undersampled stars (FWHM below ~2.5 px).  ``N = 2`` needs a few dozen
        stars; each ``B_k`` has ``N^2`` times more values to fit.
    background : None, float or array-like, optional
        None (default): subtract from each stamp the median of its outer
        2-pixel ring.  A number or an image: subtract it.
    accuracy : float, optional
        PSFEx's ``PSF_ACCURACY``: relative model error added in quadrature to
        the noise of every pixel in the least-squares weights (default 0.05;
        0: noise only).  It does not enter the outlier statistics.
    n_iter : int, optional
        Maximum number of least-squares fit / reject iterations after the
        robust first pass (default 10; 0: the robust start alone).  Stars
        rejected (or pixels masked) in the last one are left out of one more
        solution of the basis (without rejection), so that the basis is that
        of the stars reported ``used``.
    clip : float, optional
        Outlier threshold in robust sigmas of ``log(chi2/dof)`` (default 3).
    max_remove : float, optional
        Largest fraction of the used stars rejected per iteration (default
        0.1; at least one).
    pixel_clip : float or None, optional
        Mask the pixels of a star further than this many sigmas (noise and a
        model error: 100% of the model against the robust start, the same
        mean PSF everywhere, then 10% against the second least-squares
        field) from the model (default 5); None: no pixel masking.
    min_stars : int, optional
        Fewest usable stars (default ``2 nterms``); outlier rejection stops
        there.  Fewer than ``nterms = (degree + 1)(degree + 2) / 2`` stars
        are refused whatever ``min_stars``.
    smoothing : float, optional
        ``oversampling > 1`` only: weight of the squared second differences of
        the basis (in units of the FWHM, relative to the local weight of the
        data; default 3e-5).  Larger values damp the noise of a grid that the
        stars constrain poorly (few stars, many nodes) at the cost of a bias
        on sharp cores: measured on GalSim fields of 50-57 stars, 3e-5 is
        near the best both for a FWHM of 1.6 px (1e-4: 3 times the error at
        the pixel centre) and of 3.5 px (1e-4: 15% better, 3e-4: worse).

    Returns
    -------
    PSFFieldModel
        ``basis`` of shape ``(nterms, n, n)`` (``n = size`` or ``size * N``
        rounded up to odd), ``psf_samp = 1 / oversampling``.

    Raises
    ------
    InputError
        On bad inputs (e.g. an ``oversampling`` that is not an integer >= 1,
        an ``n_iter`` that is not an integer >= 0), too few usable stars
        (fewer than ``min_stars``, or than the ``nterms`` polynomial terms),
        stars laid out so that they cannot determine the polynomial (all
        within one stamp's width along an axis, or on ``degree`` rows or
        columns or fewer), or stamps that hold no PSF at the star positions
        (e.g. the positions of another CCD's catalog: a median windowed S/N of
        the usable stars below :data:`MIN_WINDOWED_SNR` = 3, or a mean stamp
        without a positive sum).

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

    The same on a grid of 2 x 2 samples per pixel (``PSF_SAMP = 0.5``); the
    images are still in image pixels:

    >>> fine = fit_psf_field(img.array + 1e-3, stars, degree=1, background=0.0,
    ...                      oversampling=2)
    >>> fine.basis.shape, fine.psf_samp, fine.image(100.0, 100.0).shape
    ((3, 51, 51), 0.5, (25, 25))
    """
    t0 = time.perf_counter()
    from scipy import ndimage

    data = _as_image(image, "image")
    if weight is not None:
        weight = _as_image(weight, "weight", data.shape)
        if np.any(~np.isfinite(weight)) or np.any(weight < 0):
            raise InputError("weight must be finite and >= 0")
    if (isinstance(oversampling, (bool, np.bool_)) or not isinstance(oversampling, numbers.Real)
            or not (math.isfinite(oversampling) and oversampling >= 1
                    and float(oversampling).is_integer())):
        raise InputError("oversampling must be an integer >= 1 (PSF grid samples per image "
                         f"pixel), got {oversampling!r}")
    oversampling = int(oversampling)
    if isinstance(size, bool) or int(size) != size or size < 5 or size % 2 == 0:
        raise InputError(f"size must be an odd integer >= 5, got {size!r}")
    size = int(size)
    if not (np.isfinite(accuracy) and accuracy >= 0):
        raise InputError(f"accuracy must be a number >= 0, got {accuracy!r}")
    if pixel_clip is not None and not (np.isfinite(pixel_clip) and pixel_clip > 0):
        raise InputError(f"pixel_clip must be > 0 or None, got {pixel_clip!r}")
    if (isinstance(smoothing, (bool, np.bool_)) or not isinstance(smoothing, numbers.Real)
            or not (math.isfinite(smoothing) and smoothing >= 0)):
        raise InputError(f"smoothing must be a number >= 0, got {smoothing!r}")
    if isinstance(degree, bool) or int(degree) != degree or degree < 0:
        raise InputError(f"degree must be an integer >= 0, got {degree!r}")
    degree = int(degree)
    nterms = _n_terms(degree)
    n_iter = integer_parameter(n_iter, "n_iter", 0)
    stars, xs, ys = _star_positions(stars)
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
    # a star whose refined centroid is nearer another pixel than the input's is cut
    # again around that pixel (the fits keep the centre within +-1 px of the stamp's
    # central pixel), and its centroid refined again there
    for _ in range(2):
        nix = np.where(edge, ix, np.rint(ix + dx).astype(int))
        niy = np.where(edge, iy, np.rint(iy + dy).astype(int))
        moved = np.flatnonzero((nix != ix) | (niy != iy))
        if moved.size == 0:
            break
        dx[moved] += ix[moved] - nix[moved]
        dy[moved] += iy[moved] - niy[moved]
        ix[moved], iy[moved] = nix[moved], niy[moved]
        stamps[moved], wstamps[moved], edge[moved] = _cut_stamps(
            data, weight, bkg_image, ix[moved], iy[moved], bhalf)
        for s in moved[~edge[moved]]:
            xc, yc = _windowed_centroid(stamps[s], bhalf + dx[s], bhalf + dy[s])
            dx[s], dy[s] = xc - bhalf, yc - bhalf
    for s in np.flatnonzero(~edge):
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
    # stamps of noise alone (the positions of another CCD's catalog, say) give a "PSF"
    # of noise, or non-finite values deep in the fit: refused here
    snr = np.median([_windowed_snr(stamps[s], wstamps[s], bhalf + dx[s], bhalf + dy[s])
                     for s in np.flatnonzero(used)])
    if not snr >= MIN_WINDOWED_SNR:
        raise InputError(f"the stamps at the given star positions hold no PSF: the median "
                         f"windowed S/N of the {int(used.sum())} usable stars is {snr:.2g} "
                         f"(< {MIN_WINDOWED_SNR:g}; positions of another image or CCD?)")

    # polynomial coordinates (PSFEx: centre and extent of the positions, 1-based)
    xu, yu = xs[used] + 1.0, ys[used] + 1.0
    polzero = np.array([0.5 * (xu.min() + xu.max()), 0.5 * (yu.min() + yu.max())])
    polscal = np.array([max(xu.max() - xu.min(), 1.0), max(yu.max() - yu.min(), 1.0)])
    _check_star_layout(xu, yu, polzero, polscal, degree, size)

    grid_y, grid_x = np.mgrid[:size, :size].astype(np.float64) - half
    disk = (grid_x ** 2 + grid_y ** 2 <= (half + 0.5) ** 2).astype(np.float64)
    fine = _FineGrid(size, oversampling, bhalf, smoothing) if oversampling > 1 else None
    chi2 = np.full(n_stars, np.nan)
    frac = np.full(n_stars, np.nan)
    dof = np.full(n_stars, npix - 3.0)
    history = []
    old_total = None
    converged = False
    basis = None
    it = 0
    # a pass after stars left the fit (or pixels were masked) in the last allowed
    # iteration: the basis is solved again without them (no masking, no rejection), so
    # that the stars and pixels reported used are those of the returned basis
    extra = False
    while True:
        robust = it == 0 or (extra and n_iter == 0)
        idx = np.flatnonzero(used)
        coeffs = _polynomial_terms(ix[idx] + dx[idx], iy[idx] + dy[idx], polzero, polscal,
                                   degree)
        if fine is not None:
            # oversampled grid: a forward model of the star pixels (no resampling)
            if robust:
                basis = fine.robust_start(stamps, weff, flux, dx, dy, idx, nterms)
            else:
                basis = fine.solve(stamps, weff, flux, dx, dy, idx, coeffs, basis[0])
            basis = _constrain(basis * fine.disk, fine.grid_x, fine.grid_y) * fine.disk
            # only its grid() is used (the node values; fine.renderer applies N^2)
            psfex = PSFExModel(basis, polzero, polscal, degree, psf_samp=1.0 / oversampling)
        else:
            # resample the used stars onto the PSF grid
            yv = np.empty((idx.size, npix))
            wv = np.empty((idx.size, npix))
            for n, s in enumerate(idx):
                inner = (slice(m, m + size), slice(m, m + size))
                yv[n] = _shift(stamps[s] / flux[s], -dx[s], -dy[s])[inner].ravel()
                mask = _shift((weff[s] > 0).astype(np.float64), -dx[s], -dy[s], order=1)[inner]
                wv[n] = np.where(mask > 0.999, _shift(weff[s], -dx[s], -dy[s], order=1)[inner],
                                 0.0).ravel() * flux[s] ** 2
            if robust:
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
        masked_before = n_masked.copy()
        for s in np.flatnonzero(~edge & ~bad_flux):
            if fine is not None:
                render = fine.renderer(psfex.grid(ix[s] + dx[s], iy[s] + dy[s]), bhalf)
            else:
                render = functools.partial(_shift, np.pad(psfex.grid(ix[s] + dx[s],
                                                                     iy[s] + dy[s]), m))
            if pixel_clip is not None and it in (0, 2) and not extra:
                # mask the pixels of neighbours and cosmic rays: far off the model
                # beyond the noise and a model error: 100% against the robust start (the
                # same mean PSF at every position: a star where the PSF is narrower or
                # wider differs from it by tens of % in its core), 10% against the second
                # least-squares field (the first, from the fluxes and centres fitted to
                # the robust start, can still be off by 10% or more where the PSF
                # varies most)
                model_s = flux[s] * render(dx[s], dy[s])
                with np.errstate(divide="ignore"):
                    var = np.where(wstamps[s] > 0, 1.0 / wstamps[s], np.inf)
                floor = 1.0 if it == 0 else 0.1
                bad = np.abs(stamps[s] - model_s) > pixel_clip * np.sqrt(
                    var + (floor * np.abs(model_s)) ** 2)
                if bad.any():  # and the fainter wings around them
                    bad = ndimage.binary_dilation(bad, iterations=2)
                n_masked[s] += int(np.count_nonzero(bad & (wstamps[s] > 0)))
                wstamps[s][bad] = 0.0
                weff[s][bad] = 0.0
            flux[s], dx[s], dy[s], chi2[s], frac[s] = _fit_star(stamps[s], wstamps[s], render,
                                                                flux[s], dx[s], dy[s])
            if accuracy > 0:
                # the star's flux, centre and outlier statistics use the noise alone;
                # the next least-squares solution of the basis adds PSFEx's
                # PSF_ACCURACY: a model-error floor proportional to the model
                model_s = np.abs(flux[s] * render(dx[s], dy[s]))
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
            if used.sum() < max(min_stars, nterms):
                raise InputError(f"only {int(used.sum())} stars left with a positive refitted "
                                 f"flux; at least {max(min_stars, nterms)} are needed for "
                                 f"degree {degree}")
        ratio = chi2 / dof
        total = float(np.sum(chi2[used]))
        total_dof = float(np.sum(dof[used]))
        # Piff's outlier loop
        log_ratio = np.log(np.maximum(ratio, 1e-300))
        over = np.flatnonzero(used & _clipped(log_ratio, used, clip,
                                              math.sqrt(2.0 / np.median(dof[used])))
                              & (frac > 2.0 * np.median(frac[used])))
        n_max = max(1, int(max_remove * used.sum()))
        # never below min_stars, nor below the nterms that determine the polynomial
        n_allowed = max(0, int(used.sum()) - max(min_stars, nterms))
        over = over[np.argsort(ratio[over])[::-1]][:min(n_max, n_allowed)]
        if extra:
            over = over[:0]
        used[over] = False
        rejected[over] = True
        history.append({"chi2": total, "dof": total_dof, "n_used": int(used.sum() + over.size),
                        "n_removed": int(over.size)})
        # stars that left the fit, or new masks on the stars still in it: the basis just
        # solved is not that of the stars (and pixels) reported used
        removed = int(over.size + np.count_nonzero(failed))
        changed = removed + int(np.sum((n_masked - masked_before)[used]))
        if extra:
            if changed == 0:
                break
        elif it > 0 or n_iter == 0:
            if changed == 0 and old_total is not None and abs(total - old_total) < 0.1 * total_dof:
                converged = True
                break
            old_total = total if removed == 0 else None
            if it >= n_iter:
                if changed == 0:
                    break
                extra = True
        it += 1

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
    if fine is not None:
        info["solve_time_s"] = fine.solve_time
        info["cg_iterations"] = fine.cg_history
    return PSFFieldModel(basis, polzero, polscal, degree, stars=out, fit_info=info,
                         oversampling=oversampling)


def _star_positions(stars):
    """``(table, x, y)``: the stars as a Table and their finite 0-based positions.

    Raises InputError without columns ``x`` and ``y`` or with non-finite values.
    """
    from astropy.table import Table

    if not isinstance(stars, Table):
        stars = Table(stars)
    for col in ("x", "y"):
        if col not in stars.colnames:
            raise InputError(f"stars needs columns 'x' and 'y'; has {stars.colnames}")
    xs = np.asarray(stars["x"], dtype=np.float64)
    ys = np.asarray(stars["y"], dtype=np.float64)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise InputError("star positions must be finite")
    return stars, xs, ys


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
    """Zero the windowed first moments of every basis image; unit / zero sums.

    Raises InputError when ``basis[0]`` (the mean PSF) has no positive finite
    sum: the stamps cut at the star positions hold no PSF.
    """
    total = float(basis[0].sum())
    if not (math.isfinite(total) and total > 0):
        raise InputError(f"the stamps at the given star positions hold no PSF: their mean "
                         f"image sums to {total:.3g}, not a positive number (positions of "
                         f"another image or CCD, or a wrong background?)")
    mean = basis[0] / total
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


def _bspline_weights(t):
    """Cubic B-spline weights of the nodes ``floor - 1 .. floor + 2`` at fraction ``t``."""
    t2, t3 = t * t, t * t * t
    return np.array([(1.0 - t) ** 3, 4.0 - 6.0 * t2 + 3.0 * t3, 1.0 + 3.0 * (t + t2 - t3),
                     t3]) / 6.0


class _FineGrid:
    """The oversampled PSF grid of :func:`fit_psf_field` (``oversampling > 1``).

    The basis images are sampled every ``1 / oversampling`` image pixels on an
    odd grid of ``n`` nodes covering ``size`` image pixels; between nodes the
    effective PSF is the *interpolating* cubic spline of the nodes, as
    :meth:`astromix.io.psfex.PSFExModel.image` evaluates it
    (:func:`scipy.ndimage.map_coordinates`, ``order=3``, ``prefilter=True``,
    ``mode="grid-constant"``).  The least-squares unknowns are the spline's
    B-spline coefficients ``c`` (every star pixel depends on 4 x 4 of them: a
    sparse system); the node values follow as ``B = S c`` with ``S`` the
    separable ``[1, 4, 1] / 6`` filter, whose inverse is the spline prefilter,
    so that evaluating ``B`` as :class:`PSFExModel` does gives back exactly the
    fitted spline.  ``c`` is solved for on the nodes at least one node inside
    the disk (so that ``S c`` stays on the grid).
    """

    def __init__(self, size, oversampling, bhalf, smoothing):
        from scipy import sparse

        self.os = os_ = int(oversampling)
        n = size * os_
        n += 1 - n % 2
        self.n = n
        self.half = half = n // 2
        self.bhalf = bhalf
        self.smoothing = float(smoothing)
        gy, gx = np.mgrid[:n, :n].astype(np.float64) - half
        self.grid_x, self.grid_y = gx, gy
        radius = (size // 2 + 0.5) * os_
        r = np.hypot(gx, gy)
        self.disk = (r <= radius).astype(np.float64)
        support = r <= radius - 1.0
        # the stars' pixels are placed on an extended grid (pad nodes each side)
        self.pad = pad = 3 * os_ + 4
        self.ne = ne = n + 2 * pad
        iy, ix = np.nonzero(support)                       # row-major: banded normal matrix
        self.nodes = (iy + pad) * ne + (ix + pad)          # extended flat index
        self.node_yx = (iy, ix)
        self.node_id = np.full(ne * ne, -1)
        self.node_id[self.nodes] = np.arange(self.nodes.size)
        # second differences of c along y and x (zero outside the support), one row per node
        d2 = sparse.diags([np.ones(n - 1), np.full(n, -2.0), np.ones(n - 1)], [-1, 0, 1])
        eye = sparse.identity(n)
        flat = iy * n + ix
        self.second_diff = (sparse.kron(d2, eye).tocsc()[:, flat].tocsr(),
                            sparse.kron(eye, d2).tocsc()[:, flat].tocsr())
        self.solve_time = 0.0
        self.cg_history = []

    def _phase(self, d):
        """First extended node (tap 0 of stamp pixel 0) and B-spline weights of an offset."""
        f = -self.os * d
        e = math.floor(f)
        return self.half + self.pad - self.os * self.bhalf + e - 1, _bspline_weights(f - e)

    def _binned_median(self, values, where, min_count=5):
        """Per node, the median of the samples ``values`` at nodes ``where``.

        0 at nodes with fewer than ``min_count`` samples (one neighbour's light
        would be the median).
        """
        n = self.n
        order = np.lexsort((values, where))
        values, where = values[order], where[order]
        counts = np.bincount(where, minlength=n * n)
        starts = np.cumsum(counts) - counts
        has = counts >= min_count
        med = np.zeros(n * n)
        lo = starts[has] + (counts[has] - 1) // 2
        hi = starts[has] + counts[has] // 2
        med[has] = 0.5 * (values[lo] + values[hi])
        return med.reshape(n, n)

    def robust_start(self, stamps, weights, flux, dx, dy, idx, nterms, n_pass=3):
        """Degree-0 robust start, shape (nterms, n, n); ``flux`` of the stars ``idx`` updated.

        First, as for ``oversampling=1``, the per-pixel median of the stars
        resampled onto the image-pixel grid (quintic spline), interpolated onto
        the nodes (cubic spline).  Undersampled stars are resampled poorly, so
        then ``n_pass`` times (as photutils' ``EPSFBuilder``): every star pixel
        divided by the star's flux is a sample of the effective PSF at its
        offset from the star's centre; each node gets the median of the
        residuals from the current model of the samples nearest to it (within
        half a node), and each star's flux is refitted (linear least squares,
        the centre kept: refitting it against a blurred model biases it).
        """
        from scipy import ndimage

        n, os_, bhalf = self.n, self.os, self.bhalf
        size = 2 * (bhalf - _MARGIN) + 1
        inner = (slice(_MARGIN, _MARGIN + size), slice(_MARGIN, _MARGIN + size))
        coarse = np.median([_shift(stamps[s] / flux[s], -dx[s], -dy[s])[inner] for s in idx],
                           axis=0)
        t = (bhalf - _MARGIN) + (np.arange(n) - self.half) / os_
        grid = ndimage.map_coordinates(coarse, np.meshgrid(t, t, indexing="ij"), order=3,
                                       mode="grid-constant", cval=0.0) / os_ ** 2
        grid = _constrain(grid[None] * self.disk, self.grid_x, self.grid_y)[0] * self.disk
        pix = np.arange(2 * bhalf + 1) - bhalf
        for _ in range(n_pass):
            render = self.renderer(grid, bhalf)
            values, where = [], []
            for s in idx:
                model = render(dx[s], dy[s])
                den = float(np.sum(weights[s] * model ** 2))
                f = float(np.sum(weights[s] * model * stamps[s])) / den if den > 0 else 0.0
                if f > 0:
                    flux[s] = f
                jx = np.rint(self.half + os_ * (pix - dx[s])).astype(int)
                jy = np.rint(self.half + os_ * (pix - dy[s])).astype(int)
                ok = ((weights[s] > 0) & ((jy >= 0) & (jy < n))[:, None]
                      & ((jx >= 0) & (jx < n))[None, :])
                values.append((stamps[s] / flux[s] - model)[ok])
                where.append((jy[:, None] * n + jx[None, :])[ok])
            # node values are 1/os^2 of the image pixel's
            grid = grid + self._binned_median(np.concatenate(values) / os_ ** 2,
                                              np.concatenate(where))
            grid = _constrain(grid[None] * self.disk, self.grid_x, self.grid_y)[0] * self.disk
        basis = np.zeros((nterms, n, n))
        basis[0] = grid
        return basis

    def solve(self, stamps, weights, flux, dx, dy, idx, coeffs, previous, chunk=64):
        """Weighted least-squares basis: the node values of every ``B_k``, shape (nterms, n, n).

        Normal equations of ``stamp / flux = os^2 sum_k c_k(x, y) spline(B_k)``
        over the used stars' pixels (weights ``weights * flux^2``) in the
        B-spline coefficients, plus the smoothness term; solved by conjugate
        gradients preconditioned with the Kronecker product of the normal
        matrix of all stars together (nodes) and their weighted polynomial
        terms (see :meth:`_solve_normal`).
        """
        from .._threads import single_threaded_blas

        # many small BLAS calls: OpenBLAS's threads only slow them down (2-4x on 2 cores)
        with single_threaded_blas():
            return self._solve(stamps, weights, flux, dx, dy, idx, coeffs, previous, chunk)

    def _solve(self, stamps, weights, flux, dx, dy, idx, coeffs, previous, chunk):
        from scipy import ndimage, sparse

        t0 = time.perf_counter()
        os_, ne, big = self.os, self.ne, 2 * self.bhalf + 1
        nt = coeffs.shape[1]
        nu = self.nodes.size
        span = os_ * (big - 1) + 1
        blocks = np.zeros((7, 7, nu, nt * nt))  # node pairs (n, n + delta), delta in [-3, 3]^2
        rhs = np.zeros((nu, nt))
        strength = np.zeros((nt, ne * ne))      # diagonal of the normal matrix at every node
        star_weight = np.zeros(nt * nt)         # sum over stars of weight * c_k c_l
        for start in range(0, idx.size, chunk):
            sel = idx[start:start + chunk]
            cc = coeffs[start:start + chunk]
            cc2 = (cc[:, :, None] * cc[:, None, :]).reshape(len(sel), nt * nt)
            w = np.zeros((len(sel), ne, ne))
            wy = np.zeros((len(sel), ne, ne))
            by = np.empty((len(sel), 4))
            bx = np.empty((len(sel), 4))
            for k, s in enumerate(sel):
                y0, by[k] = self._phase(dy[s])
                x0, bx[k] = self._phase(dx[s])
                ws = weights[s] * flux[s] ** 2
                w[k, y0:y0 + span:os_, x0:x0 + span:os_] = ws
                wy[k, y0:y0 + span:os_, x0:x0 + span:os_] = ws * stamps[s] / flux[s]
            # right-hand side: sum over a star's pixels of w y times the B-spline weights
            r = np.zeros_like(wy)
            for p in range(4):
                tmp = np.zeros_like(wy)
                for q in range(4):
                    tmp[:, :, q:] += bx[:, q, None, None] * wy[:, :, :ne - q]
                r[:, p:, :] += by[:, p, None, None] * tmp[:, :ne - p, :]
            rhs += r.reshape(len(sel), -1)[:, self.nodes].T @ cc
            # normal matrix: sum over a star's pixels of w times products of B-spline weights
            for ddy in range(-3, 4):
                ty = np.zeros_like(w)
                for p in range(max(0, -ddy), min(4, 4 - ddy)):
                    ty[:, p:, :] += (by[:, p] * by[:, p + ddy])[:, None, None] * w[:, :ne - p, :]
                for ddx in range(-3, 4):
                    txy = np.zeros_like(w)
                    for q in range(max(0, -ddx), min(4, 4 - ddx)):
                        txy[:, :, q:] += ((bx[:, q] * bx[:, q + ddx])[:, None, None]
                                          * ty[:, :, :ne - q])
                    txy = txy.reshape(len(sel), -1)
                    at_nodes = txy[:, self.nodes]
                    blocks[ddy + 3, ddx + 3] += at_nodes.T @ cc2
                    if ddy == 0 and ddx == 0:
                        strength += (cc * cc).T @ txy
                        star_weight += at_nodes.sum(axis=1) @ cc2
        rows, cols, vals = [], [], []
        k1, k2 = np.divmod(np.arange(nt * nt), nt)
        for ddy in range(-3, 4):
            for ddx in range(-3, 4):
                other = self.node_id[self.nodes + ddy * ne + ddx]
                ok = np.flatnonzero(other >= 0)
                rows.append((ok[:, None] * nt + k1).ravel())
                cols.append((other[ok][:, None] * nt + k2).ravel())
                vals.append(blocks[ddy + 3, ddx + 3][ok].ravel())
        # smoothness: the squared second differences of each c_k, each weighted by the
        # smallest diagonal of the normal matrix (term k) of the 3 nodes it touches, i.e.
        # relative to the local weight of the data (the PSF_ACCURACY floor makes the
        # core weigh 1e-6 of the wings), floored where no data reach
        n, pad = self.n, self.pad
        strength = strength.reshape(nt, ne, ne)[:, pad:pad + n, pad:pad + n]
        # second derivatives in units of the FWHM (of the Gaussian of the previous
        # model's peak) = (FWHM in nodes)^2 x second differences
        fwhm = 2.3548 * math.sqrt(max(previous.sum(), 1e-300)
                                  / (2 * math.pi * max(previous.max(), 1e-300)))
        self.fwhm = fwhm / os_
        scale = self.smoothing * min(max(fwhm, 1.0), 4.0 * n) ** 4
        for k in range(nt):
            local = np.maximum(strength[k], 1e-12 * strength[k].max())
            pen = sum(d.T @ sparse.diags(scale * ndimage.minimum_filter1d(
                local, 3, axis=axis, mode="nearest").ravel()) @ d
                for axis, d in enumerate(self.second_diff)).tocoo()
            rows.append(pen.row * nt + k)
            cols.append(pen.col * nt + k)
            vals.append(pen.data)
        lhs = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                        np.concatenate(cols))),
                                shape=(nu * nt, nu * nt))
        diag = lhs.diagonal()
        lhs = lhs + sparse.diags(1e-10 * np.maximum(diag, 1e-300 + 1e-6 * diag.max()))
        sol = self._solve_normal(lhs, rhs, star_weight.reshape(nt, nt))
        coef = np.zeros((nt, n, n))
        coef[:, self.node_yx[0], self.node_yx[1]] = sol.T / os_ ** 2
        # node values of the spline: S c, the separable [1, 4, 1] / 6 filter
        kernel = np.array([1.0, 4.0, 1.0]) / 6.0
        basis = ndimage.correlate1d(ndimage.correlate1d(coef, kernel, axis=1, mode="constant"),
                                    kernel, axis=2, mode="constant")
        self.solve_time += time.perf_counter() - t0
        self.cg_history.append(self.cg_iterations)
        return basis

    def _solve_normal(self, lhs, rhs, star_weight, rtol=1e-6, max_iter=300):
        """Solve ``lhs x = rhs`` (x and rhs shape (nu, nt)) by preconditioned CG.

        In polynomial terms made orthonormal over the stars (weighted by their
        total weight, ``star_weight = sum_s t_s c_s c_s^T``), the term-diagonal
        blocks of the normal matrix (node x node, bandwidth 3 grid rows: the
        nodes are in row-major order) are the preconditioner, each inverted by a
        banded Cholesky factorisation; what they leave out is the coupling of
        the terms through the stars' different sub-pixel phases.  Exact for
        degree 0.  If CG has not converged in ``max_iter`` iterations the
        system is solved directly (banded Cholesky).
        """
        from scipy import linalg

        nu, nt = rhs.shape

        def banded(matrix):
            coo = matrix.tocoo()
            upper = coo.col >= coo.row
            bw = int(np.max(coo.col[upper] - coo.row[upper], initial=0))
            ab = np.zeros((bw + 1, matrix.shape[0]))
            np.add.at(ab, (bw + coo.row[upper] - coo.col[upper], coo.col[upper]),
                      coo.data[upper])
            return ab

        self.cg_iterations = -1
        try:
            scale = np.sqrt(np.maximum(np.diag(star_weight), 1e-300))
            q = np.linalg.inv(np.linalg.cholesky(star_weight / np.outer(scale, scale))) / scale
            parts = [[lhs[a::nt, b::nt] for b in range(nt)] for a in range(nt)]
            chols = []
            for k in range(nt):
                block = sum(q[k, a] * q[k, b] * parts[a][b] for a in range(nt) for b in range(nt)
                            if q[k, a] != 0 and q[k, b] != 0)
                chols.append(linalg.cholesky_banded(banded(block), lower=False,
                                                    check_finite=False))
        except (linalg.LinAlgError, np.linalg.LinAlgError, ValueError):
            chols = None
        if chols is not None:
            def precondition(v):
                z = v.reshape(nu, nt) @ q.T      # into the orthonormal terms
                z = np.stack([linalg.cho_solve_banded((c, False), z[:, k], check_finite=False)
                              for k, c in enumerate(chols)], axis=1)
                return (z @ q).ravel()           # and back (q^T applied on the left)

            b = rhs.ravel()
            x = np.zeros_like(b)
            r = b.copy()
            z = precondition(r)
            p = z.copy()
            rz = float(r @ z)
            stop = rtol ** 2 * rz
            for it in range(max_iter):
                ap = lhs @ p
                alpha = rz / float(p @ ap)
                x += alpha * p
                r -= alpha * ap
                z = precondition(r)
                rz_new = float(r @ z)
                if not rz_new > stop:
                    self.cg_iterations = it + 1
                    return x.reshape(nu, nt)
                p = z + (rz_new / rz) * p
                rz = rz_new
        return linalg.solveh_banded(banded(lhs), rhs.ravel(), lower=False,
                                    check_finite=False).reshape(nu, nt)

    def renderer(self, grid, bhalf):
        """``render(dx, dy)``: the model stamp with its centre at (dx, dy) from the central pixel.

        Unit flux (``os^2`` times the spline of the node values), the same
        values as :meth:`PSFFieldModel.to_psfex` ``.image`` with
        ``center=(dx, dy)`` and ``normalize=False`` on the stamp.
        """
        from scipy import ndimage

        os_ = self.os
        extra = 3 * os_ + 4
        coef = np.pad(ndimage.spline_filter(np.pad(grid, 12), order=3, mode="grid-constant"),
                      extra)
        off = self.half + 12 + extra - os_ * bhalf - 1
        big = 2 * bhalf + 1
        span = os_ * (big - 1) + 1
        scale = float(os_ ** 2)

        def render(dx, dy):
            fx, fy = -os_ * dx, -os_ * dy
            ex, ey = math.floor(fx), math.floor(fy)
            bx, by = _bspline_weights(fx - ex), _bspline_weights(fy - ey)
            x0, y0 = off + ex, off + ey
            out = np.zeros((big, big))
            for p in range(4):
                rows = coef[y0 + p:y0 + p + span:os_]
                out += by[p] * (bx[0] * rows[:, x0:x0 + span:os_]
                                + bx[1] * rows[:, x0 + 1:x0 + 1 + span:os_]
                                + bx[2] * rows[:, x0 + 2:x0 + 2 + span:os_]
                                + bx[3] * rows[:, x0 + 3:x0 + 3 + span:os_])
            return out * scale

        return render


def _gauss_newton_flux_centre(stamp, w, render, flux, cx, cy, *, n_steps, eps, bound=None,
                              tol=None):
    """Gauss-Newton steps in the flux and centre of ``flux * render(cx, cy)`` on a stamp.

    ``render(cx, cy)`` is the unit-flux model (the stamp's shape) centred at
    ``(cx, cy)``; its derivatives are central differences of step ``eps``
    [px], and the weights ``w`` are inverse variances.  Each position step is
    clipped to +-0.5 px; with ``bound`` the centre stays within +-bound; with
    ``tol`` the steps stop once both position steps are below it; a singular
    or non-finite step ends them.  Returns ``(flux, cx, cy)``.
    """
    d = stamp.ravel()
    wf = w.ravel()
    for _ in range(n_steps):
        m = render(cx, cy).ravel()
        mx = (render(cx + eps, cy) - render(cx - eps, cy)).ravel() / (2 * eps)
        my = (render(cx, cy + eps) - render(cx, cy - eps)).ravel() / (2 * eps)
        jac = np.stack([m, flux * mx, flux * my], axis=1)
        jw = jac * wf[:, None]
        try:
            step = np.linalg.solve(jw.T @ jac, jw.T @ (d - flux * m))
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        step[1:] = np.clip(step[1:], -0.5, 0.5)
        flux, cx, cy = flux + step[0], cx + step[1], cy + step[2]
        if bound is not None:
            cx = float(np.clip(cx, -bound, bound))
            cy = float(np.clip(cy, -bound, bound))
        if tol is not None and max(abs(step[1]), abs(step[2])) < tol:
            break
    return flux, cx, cy


def _fit_star(stamp, w, render, flux, dx, dy, n_steps=2):
    """Gauss-Newton refit of flux and sub-pixel offset; returns flux, dx, dy, chi2, frac.

    ``render(dx, dy)`` is the unit-flux model on the stamp with its centre
    at ``(dx, dy)`` from the stamp's central pixel (kept within +-1 px).
    """
    flux, dx, dy = _gauss_newton_flux_centre(stamp, w, render, flux, dx, dy, n_steps=n_steps,
                                             eps=0.05, bound=1.0)
    wf = w.ravel()
    m = render(dx, dy).ravel()
    chi2 = float(np.sum(wf * (stamp.ravel() - flux * m) ** 2))
    norm = float(np.sum(wf * (flux * m) ** 2))
    return flux, dx, dy, chi2, math.sqrt(chi2 / norm) if norm > 0 else np.inf


def _clipped(values, used, clip, floor):
    """Where ``values`` exceed median + clip * max(1.4826 MAD, floor) of the used ones."""
    med = np.median(values[used])
    spread = max(1.4826 * np.median(np.abs(values[used] - med)), floor)
    return values > med + clip * spread
