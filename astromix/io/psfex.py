r"""PSFEx PSF models: read, evaluate, fit with Gaussian mixtures, write.

PSFEx (Bertin 2011, ASP Conf. Ser. 442, 435; https://psfex.readthedocs.io)
describes the PSF of an image as a polynomial in the image position of a few
pixel basis images.  With the reduced coordinates

.. math::

    x_t = (X - \mathrm{POLZERO1}) / \mathrm{POLSCAL1}, \qquad
    y_t = (Y - \mathrm{POLZERO2}) / \mathrm{POLSCAL2}

(``X, Y`` = the ``POLNAME1``/``POLNAME2`` catalog columns, usually
``X_IMAGE``/``Y_IMAGE``), the PSF at ``(X, Y)`` is
``sum_k c_k(x_t, y_t) PSF_MASK[k]`` with the polynomial terms of degree
``d = POLDEG1`` in PSFEx's order: ``1, x_t, ..., x_t^d``, then for
``j = 1 .. d``: ``x_t^i y_t^j`` for ``i = 0 .. d - j``.  For ``d = 2``:
``1, x_t, x_t^2, y_t, x_t y_t, y_t^2`` (the same order as GalSim's
``galsim.des.DES_PSFEx`` and the tractor's ``PsfExModel``).  The basis images
(``PSF_MASK``, shape ``(nterms, ny, nx)``) are sampled every ``PSF_SAMP``
image pixels; the PSF centre is grid pixel ``(nx // 2, ny // 2)``.  The model
is an *effective* PSF: it already includes the pixel response, so an image of
it is obtained by sampling it (not integrating it) at pixel centres.

**Normalisation.**  The basis values are the PSF *per image pixel* (a surface
brightness in units of an image pixel's area), whatever ``PSF_SAMP``: PSFEx
normalises ``PSF_MASK`` so that ``sum(PSF_MASK[0]) * PSF_SAMP**2`` is about 1
(0.98-1.05 measured on files written by PSFEx 3.21.1 at ``PSF_SAMP`` 0.5 and
1: PSFEx scales its stars by their ``PHOTFLUX_KEY`` aperture flux, so a model
wider than that aperture sums to a little more), and SExtractor's PSF
photometry relies on it.  So the grid sampled at image pixel
centres (:meth:`PSFExModel.image` with ``normalize=False``) sums to about 1 at
any ``PSF_SAMP``, and a grid sampled twice per image pixel sums to about 4.
:func:`write_psfex` writes the basis as it is: build a :class:`PSFExModel`
with this normalisation (as :meth:`astromix.psffield.PSFFieldModel.to_psfex`
does) for SExtractor to measure the right fluxes.

**Positions.**  astromix uses 0-based pixel centres (astropy); PSFEx's
``X_IMAGE``/``Y_IMAGE`` are 1-based FITS pixels, so every method here takes
0-based ``x, y`` and evaluates the polynomial at ``X = x + 1, Y = y + 1``.
(The tractor's ``PsfExModel``, used by legacypipe, subtracts POLZERO from
its 0-based ``x`` directly; the difference, ``1 / POLSCAL`` in ``x_t``, is
below 5e-4 for DECam CCDs and changes the PSF by < 5e-5 of its peak.)

Two file layouts are read by :func:`read_psfex`:

1. the standard PSFEx output (``.psf``): HDU 1, ``EXTNAME = 'PSF_DATA'``, a
   one-row binary table with column ``PSF_MASK`` (``TDIM = (nx, ny, nterms)``)
   and the model keywords in its header (``POLNAXIS``, ``POLGRP1/2``,
   ``POLNAME1/2``, ``POLZERO1/2``, ``POLSCAL1/2``, ``POLNGRP``, ``POLDEG1``,
   ``PSFNAXIS``, ``PSFAXIS1/2/3``, ``PSF_FWHM``, ``PSF_SAMP``, ``CHI2``,
   ``LOADED``, ``ACCEPTED``).  A constant PSF (PSFEx run without context
   keys) has ``POLNAXIS = 0`` and none of the ``POL*`` keywords after it, and
   its ``PSF_MASK`` one image (``PSFNAXIS = 2``, or 3 with ``PSFAXIS3 = 1``),
   as SExtractor reads it: it is read as a model of degree 0;
2. legacypipe's merged tables (e.g. the Legacy Surveys' ``*-psfex.fits``):
   the same keywords as lower-case *columns*, one row per CCD.

:func:`write_psfex` writes the standard layout.

**The DECam files shipped with astromix** (:func:`astromix.datasets.decam_multiexposure`)
are merged tables for 41 x 51 pixel cut-outs of 2048 x 4096 CCDs: legacypipe
shifted their POLZERO into the cut-out's frame (``polzero1`` between -691 and
+45, ``polzero2`` between 121 and 1157), so evaluate them at *cut-out* pixel
coordinates.  This is verified by the data: at the cut-out centre
``|x_t|, |y_t| < 0.35`` (the CCD is 2 ``POLSCAL`` wide), and across the 3
exposures of each CCD ``POLZERO1 - CRPIX1`` and ``POLZERO2 - CRPIX2`` of the
cut-out's WCS agree to 0.7 px, i.e. POLZERO moved with the cut-out origin
exactly as CRPIX did.

Examples
--------
>>> from astromix.datasets import decam_multiexposure
>>> from astromix.io.psfex import read_psfex
>>> exposure = decam_multiexposure()[0]
>>> psf = read_psfex(exposure["psfex"])
>>> psf.basis.shape, psf.degree, psf.psf_samp
((6, 63, 63), 2, 1.0)
>>> image = psf.image(20.0, 25.0)       # at the cut-out centre (0-based x, y)
>>> image.shape, round(float(image.sum()), 6)
((63, 63), 1.0)
"""

import math
import numbers
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError

__all__ = ["PSFExModel", "read_psfex", "write_psfex"]

#: Keywords that define the model (read from the file, rewritten by write_psfex).
_MODEL_KEYS = ("POLNAXIS", "POLGRP1", "POLNAME1", "POLZERO1", "POLSCAL1", "POLGRP2", "POLNAME2",
               "POLZERO2", "POLSCAL2", "POLNGRP", "POLDEG1", "PSF_FWHM", "PSF_SAMP", "PSFNAXIS",
               "PSFAXIS1", "PSFAXIS2", "PSFAXIS3")
#: Bookkeeping keywords of PSFEx, kept in ``meta`` and written back when present.
_INFO_KEYS = ("LOADED", "ACCEPTED", "CHI2")
_STRUCTURE_KEYS = {"XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                   "TFIELDS", "EXTNAME", "EXTVER", "SIMPLE", "EXTEND", "COMMENT", "HISTORY", "",
                   "CHECKSUM", "DATASUM", "THEAP"}
_TABLE_KEY = re.compile(r"^T(TYPE|FORM|DIM|UNIT|NULL|SCAL|ZERO|DISP|DMIN|DMAX|LMIN|LMAX)\d+$")
_FITS_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")

#: Number of mixture fits kept by :meth:`PSFExModel.mixture`.
_CACHE_SIZE = 64


def _n_terms(degree):
    return (degree + 1) * (degree + 2) // 2


def _polynomial_terms(x, y, polzero, polscal, degree):
    """PSFEx's polynomial terms at 0-based positions, shape ``broadcast(x, y) + (nterms,)``.

    ``1, xt, .., xt^d, yt, xt yt, .., yt^d`` with ``xt = (x + 1 - POLZERO1) /
    POLSCAL1`` (1-based positions, as PSFEx's ``X_IMAGE``), ``yt`` likewise.
    """
    xt = (np.asarray(x, dtype=np.float64) + 1.0 - polzero[0]) / polscal[0]
    yt = (np.asarray(y, dtype=np.float64) + 1.0 - polzero[1]) / polscal[1]
    xp = [np.ones_like(xt)]
    yp = [np.ones_like(yt)]
    for _ in range(degree):
        xp.append(xp[-1] * xt)
        yp.append(yp[-1] * yt)
    return np.stack([xp[i] * yp[j] for j in range(degree + 1) for i in range(degree + 1 - j)],
                    axis=-1)


def _fail(path, message):
    where = f"{path}: " if path else ""
    return InputError(f"{where}{message}")


def _checked_polynomial_terms(x, y, polzero, polscal, degree, path=None):
    """_polynomial_terms at positions checked to be finite and to broadcast
    (InputError otherwise, naming ``path`` when given)."""
    try:
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64),
                                   np.asarray(y, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"bad position x, y: {exc}") from None
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise _fail(path, "positions must be finite")
    return _polynomial_terms(x, y, polzero, polscal, degree)


class PSFExModel:
    r"""A PSFEx PSF model: basis images and their polynomial in the image position.

    Parameters
    ----------
    basis : array-like, shape (nterms, ny, nx)
        The basis images (PSFEx ``PSF_MASK``), sampled every ``psf_samp``
        image pixels, PSF centre at grid pixel ``(nx // 2, ny // 2)``;
        ``nterms = (degree + 1) (degree + 2) / 2``.  Stored as float64.
        PSFEx's normalisation: values per image pixel [flux / image px^2],
        so a unit-flux PSF has ``basis[0].sum() * psf_samp**2 ~= 1`` (see
        :mod:`astromix.io.psfex`; only :meth:`image` with ``normalize=False``
        and :meth:`grid` depend on it).
    polzero, polscal : array-like, shape (2,)
        ``(POLZERO1, POLZERO2)`` and ``(POLSCAL1, POLSCAL2)``: offsets and
        scales of the reduced coordinates, in 1-based image pixels (FITS
        ``X_IMAGE``, ``Y_IMAGE``).  Scales must be non-zero.
    degree : int
        Polynomial degree ``POLDEG1`` (>= 0).
    psf_samp : float, optional
        ``PSF_SAMP``: image pixels per basis-grid pixel (0.5 = basis
        sampled twice per image pixel).  Default 1.
    fwhm : float, optional
        ``PSF_FWHM`` [image px] as PSFEx reports it, or None.
    meta : dict, optional
        Other keywords (e.g. ``LOADED``, ``ACCEPTED``, ``CHI2``, and for
        legacypipe files ``EXPNUM``, ``CCDNAME``, ...).
    path : str, optional
        The file the model was read from (set by :func:`read_psfex`).

    Attributes
    ----------
    basis : ndarray, shape (nterms, ny, nx), float64
    polzero, polscal : ndarray, shape (2,), float64
    degree : int
    psf_samp : float
    fwhm : float or None
        PSFEx's ``PSF_FWHM`` [image px], which PSFEx takes from its input
        stars.  For the DECam files it equals twice the model's half-light
        radius to 1-6 % and exceeds the model's width at half maximum by
        11-25 % (the PSF has broad wings); the latter agrees with the
        survey's seeing FWHM to 5 %.  Not used in evaluation (only to choose
        the fitted stamp of :meth:`mixture`).
    meta : dict
    path : str or None

    Raises
    ------
    InputError
        On a basis that is not a finite 3-d array with ``nterms`` images,
        non-finite or zero ``polscal``, non-finite ``polzero``, a negative
        degree, or ``psf_samp`` not > 0.

    Notes
    -----
    Format reference: Bertin (2011), "Automated Morphometry with SExtractor
    and PSFEx", ASP Conf. Ser. 442, 435, and the PSFEx documentation
    (https://psfex.readthedocs.io).  Positions given to the methods are
    0-based pixel coordinates (astropy); the polynomial is evaluated at the
    1-based ``X = x + 1``, ``Y = y + 1`` (see :mod:`astromix.io.psfex`).

    Examples
    --------
    A model whose only basis image is a Gaussian of sigma 1.5 px:

    >>> import numpy as np
    >>> from astromix.io.psfex import PSFExModel
    >>> y, x = np.mgrid[:25, :25] - 12.0
    >>> gauss = np.exp(-(x**2 + y**2) / (2 * 1.5**2))
    >>> psf = PSFExModel(gauss[None], polzero=(1000.5, 2000.5), polscal=(2000, 4000), degree=0)
    >>> psf.nterms, psf.shape
    (1, (25, 25))
    >>> psf.coefficients(10.0, 20.0)
    array([1.])
    >>> round(float(psf.image(10.0, 20.0)[12, 12]), 5)
    0.07074
    """

    def __init__(self, basis, polzero, polscal, degree, psf_samp=1.0, fwhm=None, meta=None, *,
                 path=None):
        path = None if path is None else os.fspath(path)
        try:
            degree_int = int(degree)
        except (TypeError, ValueError):
            raise _fail(path, f"degree must be an integer, got {degree!r}") from None
        if degree_int != degree or isinstance(degree, bool) or degree_int < 0:
            raise _fail(path, f"degree must be an integer >= 0, got {degree!r}")
        nterms = _n_terms(degree_int)
        try:
            basis = np.array(basis, dtype=np.float64)
        except (TypeError, ValueError):
            raise _fail(path, "basis is not a numeric array") from None
        if basis.ndim != 3 or basis.shape[0] != nterms or min(basis.shape[1:]) < 1:
            raise _fail(path, f"basis must have shape ({nterms}, ny, nx) for degree {degree_int}, "
                              f"got {basis.shape}")
        if not np.all(np.isfinite(basis)):
            raise _fail(path, "basis has non-finite values")
        polzero = self._pair(polzero, "polzero", path)
        polscal = self._pair(polscal, "polscal", path)
        if np.any(polscal == 0):
            raise _fail(path, f"polscal must be non-zero, got {polscal.tolist()}")
        try:
            psf_samp = float(psf_samp)
        except (TypeError, ValueError):
            raise _fail(path, f"psf_samp must be a number, got {psf_samp!r}") from None
        if not (math.isfinite(psf_samp) and psf_samp > 0):
            raise _fail(path, f"psf_samp must be > 0, got {psf_samp!r}")
        if fwhm is not None:
            try:
                fwhm = float(fwhm)
            except (TypeError, ValueError):
                raise _fail(path, f"fwhm must be a number or None, got {fwhm!r}") from None
            if not math.isfinite(fwhm):
                raise _fail(path, f"fwhm must be finite, got {fwhm!r}")
        basis.setflags(write=False)
        polzero.setflags(write=False)
        polscal.setflags(write=False)
        self._basis = basis
        self._polzero = polzero
        self._polscal = polscal
        self._degree = degree_int
        self._psf_samp = psf_samp
        self.fwhm = fwhm
        self.meta = dict(meta) if meta is not None else {}
        self.path = path
        self._mixtures = OrderedDict()

    @staticmethod
    def _pair(value, name, path):
        try:
            arr = np.array(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise _fail(path, f"{name} must be two numbers, got {value!r}") from None
        if arr.shape != (2,) or not np.all(np.isfinite(arr)):
            raise _fail(path, f"{name} must be two finite numbers, got {value!r}")
        return arr

    # -- description -----------------------------------------------------------------
    @property
    def basis(self):
        """The basis images, shape (nterms, ny, nx), float64, read-only."""
        return self._basis

    @property
    def polzero(self):
        """``(POLZERO1, POLZERO2)`` [1-based image px], read-only."""
        return self._polzero

    @property
    def polscal(self):
        """``(POLSCAL1, POLSCAL2)`` [image px], read-only."""
        return self._polscal

    @property
    def degree(self):
        """Polynomial degree ``POLDEG1``."""
        return self._degree

    @property
    def psf_samp(self):
        """``PSF_SAMP``: image pixels per basis-grid pixel."""
        return self._psf_samp

    @property
    def nterms(self):
        """Number of polynomial terms (basis images), ``(degree + 1) (degree + 2) / 2``."""
        return self.basis.shape[0]

    @property
    def shape(self):
        """Shape ``(ny, nx)`` of the basis grid (PSF_SAMP pixels)."""
        return self.basis.shape[1:]

    @property
    def image_shape(self):
        """Default shape ``(ny, nx)`` of :meth:`image`: odd, covering the basis grid.

        ``2 floor(((n - 1) // 2) psf_samp) + 1`` per axis; the grid's own
        shape when ``psf_samp == 1`` and it is odd.
        """
        return tuple(2 * int(math.floor(((n - 1) // 2) * self.psf_samp + 1e-9)) + 1
                     for n in self.shape)

    def __repr__(self):
        where = f", path={os.path.basename(self.path)!r}" if self.path else ""
        return (f"<PSFExModel degree={self.degree} nterms={self.nterms} grid={self.shape} "
                f"psf_samp={self.psf_samp:g} polzero={self.polzero.tolist()} "
                f"polscal={self.polscal.tolist()}{where}>")

    # -- evaluation ------------------------------------------------------------------
    def coefficients(self, x, y):
        """Polynomial coefficients of the basis images at 0-based pixel position(s).

        Parameters
        ----------
        x, y : float or array-like
            0-based pixel coordinates in the image the model describes
            (broadcast together).  The polynomial uses ``X = x + 1``,
            ``Y = y + 1`` (1-based, as PSFEx's ``X_IMAGE``).

        Returns
        -------
        ndarray, shape (nterms,) or (..., nterms)
            ``1, xt, .., xt^d, yt, xt yt, .., xt^(d-1) yt, .., yt^d`` with
            ``xt = (x + 1 - POLZERO1) / POLSCAL1``, ``yt`` likewise; shape
            ``np.broadcast(x, y).shape + (nterms,)``.

        Raises
        ------
        InputError
            If a coordinate is not finite or x and y do not broadcast.
        """
        return _checked_polynomial_terms(x, y, self.polzero, self.polscal, self.degree,
                                         self.path)

    def _scalar_position(self, x, y):
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise _fail(self.path, f"x and y must be scalars, got {x!r}, {y!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise _fail(self.path, f"x and y must be finite, got {x!r}, {y!r}")
        return x, y

    def grid(self, x, y, *, normalize=False):
        """The PSF at one position on its own basis grid (PSF_SAMP sampling).

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image.
        normalize : bool, optional
            Divide by the sum (default False: PSFEx's own normalisation, per
            image pixel, so the sum is about ``1 / psf_samp**2``).

        Returns
        -------
        ndarray, shape :attr:`shape`, float64
            ``sum_k c_k(x, y) basis[k]``; centre at pixel ``(nx // 2, ny // 2)``.

        Raises
        ------
        InputError
            On a non-finite position, or with ``normalize`` when the sum is
            not positive.
        """
        x, y = self._scalar_position(x, y)
        out = np.tensordot(self.coefficients(x, y), self.basis, axes=1)
        if normalize:
            total = out.sum()
            if not total > 0:
                raise _fail(self.path, f"the PSF at ({x}, {y}) has no positive sum")
            out /= total
        return out

    def image(self, x, y, *, shape=None, normalize=True, center=None):
        """The PSF at one position, sampled at image pixels.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image: where the polynomial is
            evaluated.  The image is centred on its central pixel whatever
            the fractional part of ``x, y``.
        shape : tuple of int, optional
            ``(ny, nx)`` of the returned image (default :attr:`image_shape`,
            the basis grid's footprint).  The PSF centre is at pixel
            ``(nx // 2, ny // 2)``; parts of the model outside are cut, the
            margin beyond the model is zero.
        normalize : bool, optional
            Scale to unit sum (default).  Otherwise the values are PSFEx's,
            which are per image pixel at any ``psf_samp``: the image sums to
            the PSF's flux in PSFEx's normalisation (about 1 for files written
            by PSFEx or by :meth:`astromix.psffield.PSFFieldModel.to_psfex`,
            less what falls outside ``shape``).
        center : tuple of float, optional
            ``(dx, dy)`` [image px]: put the PSF centre at
            ``(nx // 2 + dx, ny // 2 + dy)`` instead.

        Returns
        -------
        ndarray, shape (ny, nx), float64

        Raises
        ------
        InputError
            On a non-finite position or centre, a bad shape, or with
            ``normalize`` when the sum is not positive.

        Notes
        -----
        With ``psf_samp == 1`` and no ``center`` offset the basis grid is
        cut or padded exactly.  Otherwise the grid is interpolated at the
        image pixel centres with :func:`scipy.ndimage.map_coordinates`
        (cubic B-spline, ``prefilter=True``, ``mode="grid-constant"``: zero
        outside the grid), i.e. the effective PSF is *sampled*, as PSFEx
        itself resamples its model (PSFEx uses a Lanczos-3 kernel).
        """
        from scipy import ndimage

        x, y = self._scalar_position(x, y)
        if shape is None:
            shape = self.image_shape
        try:
            ny, nx = (int(n) for n in shape)
            ok = all(int(n) == n and n >= 1 for n in shape)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(self.path, f"shape must be two integers >= 1, got {shape!r}")
        if center is None:
            dx = dy = 0.0
        else:
            try:
                dx, dy = (float(c) for c in center)
            except (TypeError, ValueError):
                raise _fail(self.path, f"center must be (dx, dy), got {center!r}") from None
            if not (math.isfinite(dx) and math.isfinite(dy)):
                raise _fail(self.path, f"center must be finite, got {center!r}")
        grid = self.grid(x, y)
        gy, gx = grid.shape[0] // 2, grid.shape[1] // 2
        jc, ic = ny // 2, nx // 2
        if self.psf_samp == 1.0 and dx == 0.0 and dy == 0.0:
            out = np.zeros((ny, nx))
            oy, ox = jc - gy, ic - gx  # output index = grid index + offset
            y0, y1 = max(0, oy), min(ny, grid.shape[0] + oy)
            x0, x1 = max(0, ox), min(nx, grid.shape[1] + ox)
            if y1 > y0 and x1 > x0:
                out[y0:y1, x0:x1] = grid[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        else:
            v = gy + (np.arange(ny) - jc - dy) / self.psf_samp
            u = gx + (np.arange(nx) - ic - dx) / self.psf_samp
            vv, uu = np.meshgrid(v, u, indexing="ij")
            # PSFEx's values are per image pixel: sampled, not rescaled
            out = ndimage.map_coordinates(grid, [vv, uu], order=3, mode="grid-constant",
                                          cval=0.0, prefilter=True)
        if normalize:
            total = out.sum()
            if not total > 0:
                raise _fail(self.path, f"the PSF image at ({x}, {y}) has no positive sum")
            out /= total
        return out

    # -- Gaussian mixtures -----------------------------------------------------------
    def mixture(self, x, y, n_components=4, **kwargs):
        """A Gaussian-mixture PSF fitted to the model at one position.

        The PSF at ``(x, y)`` (rounded to 0.1 px) on its basis grid, unit
        sum, is fitted by :func:`astromix.fitting.fit_psf_mixture` with
        ``oversampling = 1 / psf_samp``, so the mixture comes out in image
        pixels.  Results are cached per (rounded x, y, ``n_components``,
        keyword arguments); each call returns a copy.

        Parameters
        ----------
        x, y : float
            0-based pixel position in the image.
        n_components : int, optional
            Number of Gaussians (default 4).  Measured on the 8 DECam models
            at their cut-out centres with the defaults below
            (``max|mixture - image| / peak`` over the 63 x 63 image, median
            and range; time per fit on 2 CPU cores, numba backend, mean and
            max): 4 components 1.4 % (0.9-2.6 %), 0.07 s (0.15 s);
            6 components 0.5 % (0.3-1.3 %), 0.09 s (0.12 s); 8 components
            0.3 % (0.25-0.75 %), 0.08 s (0.13 s).  Use 8 where a few 1e-3
            of the peak matter; fewer components make every convolved
            source cheaper to render.
        **kwargs
            Passed to :func:`~astromix.fitting.fit_psf_mixture`, with these
            defaults: ``objective="chi2"`` (least squares, fast and smooth),
            ``n_starts=1``, ``rng=0`` (reproducible), and ``trim`` chosen to
            keep a square of half-width ``max(20, 4 fwhm)`` image pixels
            around the centre (where the PSF matters; 41 x 41 of the 63 x 63
            DECam grids).  ``oversampling`` is set here and may not be given.
            One more keyword:

            recenter : bool, optional
                False (default): the mixture's origin is the PSFEx model
                centre, the point :meth:`image` puts at the central pixel, so
                the mixture and the model place a source identically (the
                mixture's own centroid is off by ``fit_info["centroid_offset"]``,
                0.1-0.25 px for the DECam models).  True: the mixture's
                centroid is at (0, 0), as :func:`fit_psf_mixture` returns it.

        Returns
        -------
        GaussianMixturePSF
            Unit flux, shape in image pixels around (0, 0), ``flux``,
            ``x_0``, ``y_0`` free; its ``fit_info`` is
            :func:`fit_psf_mixture`'s (measured on the fitted grid) plus
            ``position`` (the rounded x, y), ``centroid_offset`` (dx, dy of
            the centroid from the PSFEx centre, image px) and
            ``image_max_residual_over_peak`` (``max|mixture - image| / peak``
            on :meth:`image`'s default image, the mixture rendered
            pixel-integrated at its centre).

        Raises
        ------
        InputError
            On a bad position, ``oversampling`` given, or any error of
            :func:`fit_psf_mixture`.

        Notes
        -----
        :func:`fit_psf_mixture` models each grid value as a Gaussian mixture
        integrated over one grid pixel (``psf_samp`` image px wide), whereas
        PSFEx grid values are samples of the effective PSF, which already
        includes the image pixel.  So that rendering the returned mixture
        with pixel integration (as :class:`~astromix.GaussianMixturePSF`
        does) gives back the PSFEx image, ``(psf_samp**2 - 1) / 12`` px^2 is
        added to every covariance (nothing when ``psf_samp == 1`` or the
        settings' ``pixel_integration`` is ``"none"``): exact to second order
        in the pixel box.

        Examples
        --------
        >>> from astromix.datasets import decam_multiexposure
        >>> from astromix.io.psfex import read_psfex
        >>> psf = read_psfex(decam_multiexposure()["psfex"][0])
        >>> mix = psf.mixture(20.0, 25.0, n_components=6)
        >>> mix.n_components, round(float(sum(mix.mixture.amp)), 6)
        (6, 1.0)
        >>> mix.fit_info["image_max_residual_over_peak"] < 0.01
        True
        """
        x, y = self._scalar_position(x, y)
        x, y = round(x, 1) + 0.0, round(y, 1) + 0.0
        try:
            n_components = int(n_components)
        except (TypeError, ValueError):
            raise _fail(self.path, f"n_components must be an integer, got {n_components!r}") \
                from None
        if "oversampling" in kwargs:
            raise _fail(self.path, "mixture() sets oversampling = 1 / psf_samp itself; "
                                   "do not pass it")
        key = (x, y, n_components, self.fwhm,
               tuple(sorted((k, _freeze(v)) for k, v in kwargs.items())))
        cached = self._mixtures.get(key)
        if cached is None:
            cached = self._fit_mixture(x, y, n_components, dict(kwargs))
            self._mixtures[key] = cached
            while len(self._mixtures) > _CACHE_SIZE:
                self._mixtures.popitem(last=False)
        else:
            self._mixtures.move_to_end(key)
        out = cached.copy()
        out.fit_info = dict(cached.fit_info)
        return out

    def _auto_trim(self, grid):
        fwhm = self.fwhm
        if fwhm is None or not fwhm > 0:
            # Gaussian of the same peak and flux
            fwhm = 2.3548 * math.sqrt(grid.sum() / (2 * math.pi * grid.max())) * self.psf_samp
        half = math.ceil(max(20.0, 4.0 * fwhm) / self.psf_samp)
        return max(0, min(grid.shape) // 2 - half)

    def _fit_mixture(self, x, y, n_components, options):
        from .. import backends as _backends
        from ..fitting import fit_psf_mixture
        from ..mixtures import GaussianMixture
        from ..models import GaussianMixturePSF
        from ..settings import get_default_settings

        recenter = bool(options.pop("recenter", False))
        if "center" in options:
            raise _fail(self.path, "mixture() places the mixture itself (recenter=); do not "
                                   "pass center")
        # the components' centroid as origin; info["center"] then locates it on the
        # grid, and the PSFEx centre is put back below unless recenter
        options["center"] = "moments"
        options.setdefault("objective", "chi2")
        options.setdefault("n_starts", 1)
        options.setdefault("rng", 0)
        grid = self.grid(x, y, normalize=True)
        trim = options.pop("trim", None)
        if trim is None:
            trim = self._auto_trim(grid)
        fitted = fit_psf_mixture(grid, n_components, oversampling=1.0 / self.psf_samp, trim=trim,
                                 **options)
        info = dict(fitted.fit_info)
        mix = fitted.mixture
        settings = options.get("settings") or get_default_settings()
        cov = mix.cov
        box = 0.0 if settings.pixel_integration == "none" else (self.psf_samp ** 2 - 1.0) / 12.0
        if box:
            values, vectors = np.linalg.eigh(cov)
            values = np.maximum(values + box, 1e-6)
            cov = vectors @ (values[..., None] * np.swapaxes(vectors, -1, -2))
            cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
        # centroid relative to the PSFEx centre, image px
        t = int(info["trim"])
        centre_grid = np.array([grid.shape[1] // 2 - t, grid.shape[0] // 2 - t], dtype=float)
        offset = (np.asarray(info["center"], dtype=float) - centre_grid) * self.psf_samp
        mean = mix.mean if recenter else mix.mean + offset
        psf = GaussianMixturePSF(GaussianMixture(mix.amp, mean, cov),
                                 settings=options.get("settings"))
        # the PSFEx centre lies at the central pixel of image(); the centroid at + offset
        image = self.image(x, y)
        ny, nx = image.shape
        shift = np.array([nx // 2, ny // 2], dtype=float) + (offset if recenter else 0.0)
        backend = options.get("backend")
        rendered = _backends.get_backend(backend).to_numpy(
            psf.mixture.shift(*shift).render(image.shape, settings=options.get("settings"),
                                             backend=backend))
        info.update(position=(x, y), centroid_offset=(float(offset[0]), float(offset[1])),
                    image_max_residual_over_peak=float(np.abs(rendered - image).max()
                                                       / image.max()),
                    recenter=recenter)
        psf.fit_info = info
        return psf


def _freeze(value):
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


# -- reading ---------------------------------------------------------------------------
def _python(value):
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_psfex(path, *, ccdname=None, row=None, hdu=None):
    """Read a PSFEx model from a standard PSFEx file or a merged (legacypipe) table.

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file (``.psf``, ``.fits``, optionally gzip-compressed).
    ccdname : str, optional
        For tables with several rows (one per CCD): the row whose
        ``ccdname`` column equals this (e.g. ``"N12"``).
    row : int, optional
        Or the row index (0-based).  Not both.
    hdu : int or str, optional
        The HDU holding the model (index or EXTNAME); by default the one
        named ``PSF_DATA``, else the only binary table with a ``PSF_MASK``
        column.  A multi-extension file (PSFEx run on a multi-extension
        catalog writes one ``PSF_DATA`` extension per CCD) needs it.

    Returns
    -------
    PSFExModel
        With ``path`` set and ``meta`` holding the file's other keywords
        (standard layout: header cards such as ``LOADED``, ``ACCEPTED``,
        ``CHI2``; merged layout: the row's scalar columns, upper-cased, e.g.
        ``EXPNUM``, ``CCDNAME``, ``LEGPIPEV``), the polynomial names
        (``POLNAME1``, ``POLNAME2``) and ``LAYOUT`` (``"standard"`` or
        ``"merged"``).

    Raises
    ------
    InputError
        Naming the file and the problem: missing or unreadable file, no
        ``PSF_MASK`` table, missing keyword/column, ``PSF_MASK`` of the wrong
        shape (its ``TDIM``, or its length without one, not matching
        ``PSFAXIS1/2/3``: ``TDIM = (PSFAXIS1, PSFAXIS2, PSFAXIS3)``, or
        ``(PSFAXIS1, PSFAXIS2)`` for a constant PSF), a polynomial other
        than one group of degree d in ``X*_IMAGE``/``Y*_IMAGE``
        (``POLNAXIS = 2``, ``POLNGRP = 1``, ``POLGRP1 = POLGRP2 = 1``) or none
        (``POLNAXIS = 0``: a constant PSF, read as degree 0), ``PSFNAXIS``
        other than 3 (or 2 for a constant PSF), bad values (non-finite,
        ``POLSCAL = 0``, ``PSF_SAMP <= 0``), an ambiguous
        or unknown row (the message lists the available ones), or, without
        ``hdu``, several extensions holding a model (the message lists them).

    Notes
    -----
    Layouts: see :mod:`astromix.io.psfex`.  Format reference: Bertin (2011,
    ASP Conf. Ser. 442, 435) and the PSFEx documentation.

    Examples
    --------
    >>> from astromix.datasets import decam_multiexposure
    >>> from astromix.io.psfex import read_psfex
    >>> psf = read_psfex(decam_multiexposure()["psfex"][0], ccdname="N12")
    >>> psf.meta["LAYOUT"], psf.meta["CCDNAME"], psf.meta["EXPNUM"]
    ('merged', 'N12', 349590)
    >>> round(psf.fwhm, 3), psf.polzero.round(1).tolist()
    (4.268, [-690.6, 1094.2])
    """
    from astropy.io import fits

    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"path must be a file name, got {path!r}") from None
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    if ccdname is not None and row is not None:
        raise _fail(path, "give ccdname= or row=, not both")
    try:
        with fits.open(path, memmap=False) as hdul:
            table_hdu = _find_hdu(hdul, path, hdu)
            header = table_hdu.header.copy()
            data = table_hdu.data
            columns = {name.upper(): name for name in data.columns.names}
            nrows = len(data)
            index = _select_row(data, columns, nrows, path, ccdname, row)
            values = {}
            for upper, name in columns.items():
                if upper == "PSF_MASK":
                    continue
                col = data.field(name)
                if col.ndim == 1:  # scalar columns (strings included)
                    values[upper] = _python(col[index])
            mask = np.array(data.field(columns["PSF_MASK"])[index], dtype=np.float64)
            tdim = table_hdu.columns[columns["PSF_MASK"]].dim
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise _fail(path, f"cannot read it as a PSFEx FITS file ({exc})") from None
    layout = "standard" if "POLNAXIS" in header else "merged"

    def get(key, required=True):
        if layout == "standard":
            sources = (header, values)
        else:
            sources = (values, header)
        for source in sources:
            if key in source:
                return _python(source[key])
        if required:
            if layout == "standard":
                raise _fail(path, f"missing PSFEx keyword {key}")
            raise _fail(path, f"missing PSFEx column (or keyword) {key.lower()}")
        return None

    def get_int(key):
        value = get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _fail(path, f"{key} must be an integer, got {value!r}")
        return int(value)

    def get_float(key, required=True):
        value = get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(path, f"{key} must be a number, got {value!r}")
        return float(value)

    naxis = get_int("POLNAXIS")
    if naxis == 0:
        # a constant PSF: PSFEx run without context keys writes no POLGRP, POLNAME,
        # POLZERO, POLSCAL or POLDEG, and SExtractor reads such a file as one image
        degree = 0
        names = None
        polzero, polscal = (0.0, 0.0), (1.0, 1.0)
    elif naxis != 2:
        raise _fail(path, f"POLNAXIS = {naxis}: only polynomials in the two image coordinates "
                          "(X_IMAGE, Y_IMAGE), or none (POLNAXIS = 0), are supported")
    else:
        ngrp = get_int("POLNGRP")
        groups = (get_int("POLGRP1"), get_int("POLGRP2"))
        if ngrp != 1 or groups != (1, 1):
            raise _fail(path, f"POLNGRP = {ngrp}, POLGRP1/2 = {groups}: only one polynomial "
                              "group holding both image coordinates is supported")
        names = (str(get("POLNAME1")).upper(), str(get("POLNAME2")).upper())
        if not (names[0].startswith("X") and names[0].endswith("IMAGE")
                and names[1].startswith("Y") and names[1].endswith("IMAGE")):
            raise _fail(path, f"POLNAME1/2 = {names}: the polynomial must be in X_IMAGE, "
                              "Y_IMAGE (image pixel coordinates)")
        degree = get_int("POLDEG1")
        if degree < 0:
            raise _fail(path, f"POLDEG1 = {degree} must be >= 0")
        polzero = (get_float("POLZERO1"), get_float("POLZERO2"))
        polscal = (get_float("POLSCAL1"), get_float("POLSCAL2"))
        if not all(math.isfinite(v) for v in polzero + polscal) or 0.0 in polscal:
            raise _fail(path, f"bad POLZERO {polzero} or POLSCAL {polscal} (must be finite, "
                              "POLSCAL non-zero)")
    nterms = _n_terms(degree)
    psfnaxis = get_int("PSFNAXIS")
    if psfnaxis == 3:
        axes = (get_int("PSFAXIS1"), get_int("PSFAXIS2"), get_int("PSFAXIS3"))
    elif psfnaxis == 2 and degree == 0:
        # SExtractor also reads a constant PSF stored as one 2-d image
        axes = (get_int("PSFAXIS1"), get_int("PSFAXIS2"), 1)
    else:
        raise _fail(path, f"PSFNAXIS = {psfnaxis}; PSFEx models have 3 (nx, ny, nterms), "
                          "or 2 for a constant PSF")
    if axes[2] != nterms:
        raise _fail(path, f"PSFAXIS3 = {axes[2]} but a degree-{degree} polynomial has "
                          f"{nterms} terms")
    expected = (axes[2], axes[1], axes[0])
    if mask.ndim == 1 and mask.size == axes[0] * axes[1] * axes[2]:
        # a flat column (no TDIM): PSFAXIS1/2/3 give its layout
        mask = mask.reshape(expected)
    elif mask.ndim == 2 and axes[2] == 1 and mask.shape == expected[1:]:
        # a constant PSF stored as one image (TDIM = (nx, ny))
        mask = mask[None]
    if mask.shape != expected:
        # with a TDIM that disagrees with PSFAXIS1/2/3 the layout is unknown: reshaping
        # would scramble the basis images
        where = f"TDIM = {tdim}" if tdim else "no TDIM"
        raise _fail(path, f"PSF_MASK has shape {mask.shape} ({where}), expected {expected} "
                          f"from PSFAXIS1/2/3 = {axes[0]}, {axes[1]}, {axes[2]}")
    if not np.all(np.isfinite(mask)):
        raise _fail(path, "PSF_MASK has non-finite values")
    psf_samp = get_float("PSF_SAMP")
    if not (math.isfinite(psf_samp) and psf_samp > 0):
        raise _fail(path, f"PSF_SAMP = {psf_samp} must be > 0")
    fwhm = get_float("PSF_FWHM", required=False)
    if fwhm is not None and not math.isfinite(fwhm):
        fwhm = None

    meta = {}
    if layout == "standard":
        for card in header.cards:
            key = card.keyword.upper()
            if key in _STRUCTURE_KEYS or _TABLE_KEY.match(key) or key in _MODEL_KEYS:
                continue
            meta[key] = _python(card.value)
    for key, value in values.items():
        if key not in _MODEL_KEYS and (layout == "merged" or key not in meta):
            meta[key] = value
    if names is not None:
        meta["POLNAME1"], meta["POLNAME2"] = names
    meta["LAYOUT"] = layout
    return PSFExModel(mask, polzero, polscal, degree, psf_samp=psf_samp, fwhm=fwhm, meta=meta,
                      path=os.path.abspath(path))


def _find_hdu(hdul, path, hdu):
    from astropy.io import fits

    def has_mask(h):
        return (isinstance(h, fits.BinTableHDU)
                and any(n.upper() == "PSF_MASK" for n in h.columns.names))

    if hdu is not None:
        try:
            chosen = hdul[hdu]
        except (KeyError, IndexError):
            raise _fail(path, f"no HDU {hdu!r}") from None
        if not has_mask(chosen):
            raise _fail(path, f"HDU {hdu!r} is not a binary table with a PSF_MASK column")
        return chosen
    candidates = [(i, h) for i, h in enumerate(hdul) if has_mask(h)]
    if not candidates:
        raise _fail(path, "no binary table with a PSF_MASK column: not a PSFEx model")
    named = [(i, h) for i, h in candidates
             if str(h.header.get("EXTNAME", "")).strip().upper() == "PSF_DATA"]
    preferred = named or candidates
    if len(preferred) > 1:
        # e.g. PSFEx run on a multi-extension catalog: one PSF_DATA extension per CCD
        listing = ", ".join(f"{i} ({str(h.header.get('EXTNAME', '')).strip() or 'no EXTNAME'})"
                            for i, h in preferred)
        raise _fail(path, f"{len(preferred)} extensions hold a PSFEx model (one per CCD?): "
                          f"HDU {listing}; choose one with hdu=<index>")
    return preferred[0][1]


def _select_row(data, columns, nrows, path, ccdname, row):
    if nrows == 0:
        raise _fail(path, "the PSF table has no rows")
    ccds = None
    if "CCDNAME" in columns:
        ccds = [str(_python(v)) for v in data.field(columns["CCDNAME"])]
    if ccdname is not None:
        if ccds is None:
            raise _fail(path, f"ccdname={ccdname!r} given but the table has no ccdname column; "
                              f"select with row= (0 to {nrows - 1})")
        matches = [i for i, c in enumerate(ccds) if c == str(ccdname).strip()]
        if not matches:
            raise _fail(path, f"no row with ccdname {ccdname!r}; available: {', '.join(ccds)}")
        if len(matches) > 1:
            raise _fail(path, f"{len(matches)} rows with ccdname {ccdname!r} (rows {matches}); "
                              "select with row=")
        return matches[0]
    if row is not None:
        if isinstance(row, bool) or not isinstance(row, numbers.Integral) or not 0 <= row < nrows:
            raise _fail(path, f"row must be an integer in [0, {nrows - 1}], got {row!r}")
        return int(row)
    if nrows > 1:
        listing = (f"ccdname: {', '.join(ccds)}" if ccds is not None
                   else f"row: 0 to {nrows - 1}")
        raise _fail(path, f"the table holds {nrows} PSF models; choose one with {listing}")
    return 0


# -- writing ---------------------------------------------------------------------------
def _half_light_diameter(image, psf_samp, n_sub=5):
    """Twice the half-light radius [image px] of a PSF image about its centroid."""
    img = np.clip(image, 0, None)
    ny, nx = img.shape
    total = img.sum()
    yy, xx = np.mgrid[:ny, :nx]
    xc, yc = (img * xx).sum() / total, (img * yy).sum() / total
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    r = np.hypot((xx[..., None, None] + offsets[None, None, None, :] - xc),
                 (yy[..., None, None] + offsets[None, None, :, None] - yc)).ravel()
    w = np.broadcast_to(img[..., None, None] / n_sub ** 2, (ny, nx, n_sub, n_sub)).ravel()
    order = np.argsort(r)
    cum = np.cumsum(w[order])
    return 2.0 * float(np.interp(0.5 * total, cum, r[order])) * psf_samp


def write_psfex(path, model_or_arrays, *, overwrite=False, dtype=np.float32):
    """Write a PSFEx model in the standard PSFEx layout (readable by PSFEx-aware tools).

    The file has an empty primary HDU and a binary-table HDU ``PSF_DATA``
    with one row: column ``PSF_MASK`` (``TDIM = (nx, ny, nterms)``) and the
    keywords ``POLNAXIS = 2``, ``POLGRP1/2 = 1``, ``POLNAME1/2``,
    ``POLZERO1/2``, ``POLSCAL1/2``, ``POLNGRP = 1``, ``POLDEG1``,
    ``PSF_FWHM``, ``PSF_SAMP``, ``PSFNAXIS = 3``, ``PSFAXIS1/2/3``, plus
    ``LOADED``, ``ACCEPTED``, ``CHI2`` and other scalar ``meta`` entries with
    valid FITS keyword names when present.  It is written to a temporary file
    in the same folder and renamed into place, so an error leaves any
    existing file unchanged.  A name ending in ``.gz`` is gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.  A symbolic link is followed and its target rewritten.
    model_or_arrays : PSFExModel, dict or sequence
        The model, or the arguments of :class:`PSFExModel`: a dict of its
        keyword arguments or a sequence ``(basis, polzero, polscal, degree[,
        psf_samp[, fwhm[, meta]]])``.
    overwrite : bool, optional
        Replace an existing file (default False: refuse).
    dtype : {numpy.float32, numpy.float64}, optional
        Storage type of ``PSF_MASK``: float32 (``E``, as PSFEx writes it;
        default) or float64 (``D``, lossless for any float64 basis).

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    InputError
        If the file exists and ``overwrite`` is False, its folder does not
        exist, the arrays do not make a valid model, or ``dtype`` is not
        float32/float64.

    Notes
    -----
    When ``fwhm`` is None, ``PSF_FWHM`` is written as twice the half-light
    radius of the model at POLZERO, in image pixels (what PSFEx reports for
    the DECam files to within 1-6 %).

    Format reference: the standard PSFEx ``.psf`` output of Bertin (2011,
    ASP Conf. Ser. 442, 435) and the PSFEx documentation
    (https://psfex.readthedocs.io); see :mod:`astromix.io.psfex`.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from astromix.io.psfex import PSFExModel, read_psfex, write_psfex
    >>> y, x = np.mgrid[:25, :25] - 12.0
    >>> basis = np.exp(-(x**2 + y**2) / 4.5)[None]
    >>> folder = tempfile.mkdtemp()
    >>> out = write_psfex(os.path.join(folder, "model.psf"),
    ...                   (basis, (500.5, 500.5), (1000.0, 1000.0), 0))
    >>> back = read_psfex(out)
    >>> back.degree, back.shape, back.meta["LAYOUT"]
    (0, (25, 25), 'standard')
    """
    from astropy.io import fits

    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"path must be a file name, got {path!r}") from None
    if isinstance(model_or_arrays, PSFExModel):
        model = model_or_arrays
    elif isinstance(model_or_arrays, Mapping):
        try:
            model = PSFExModel(**model_or_arrays)
        except TypeError as exc:
            raise InputError(f"cannot build a PSFExModel from {sorted(model_or_arrays)}: "
                             f"{exc}") from None
    elif isinstance(model_or_arrays, Sequence) and not isinstance(model_or_arrays, str):
        try:
            model = PSFExModel(*model_or_arrays)
        except TypeError as exc:
            raise InputError(f"cannot build a PSFExModel from {len(model_or_arrays)} "
                             f"values: {exc}") from None
    else:
        raise InputError("write_psfex needs a PSFExModel, a dict or a sequence of its "
                         f"arguments, got {type(model_or_arrays).__name__}")
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"dtype must be float32 or float64, got {dtype}")
    if os.path.exists(path) and not overwrite:
        raise _fail(path, "file exists; pass overwrite=True to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _fail(path, f"folder {folder} does not exist")

    nterms, ny, nx = model.basis.shape
    fwhm = model.fwhm
    if fwhm is None:
        grid = model.grid(model.polzero[0] - 1.0, model.polzero[1] - 1.0)
        fwhm = _half_light_diameter(grid, model.psf_samp) if grid.sum() > 0 else 0.0
    code = "E" if dtype == np.float32 else "D"
    column = fits.Column(name="PSF_MASK", format=f"{nterms * ny * nx}{code}",
                         dim=f"({nx}, {ny}, {nterms})",
                         array=model.basis.astype(dtype)[None])
    table = fits.BinTableHDU.from_columns([column], name="PSF_DATA")
    hdr = table.header
    meta = {str(k).upper(): v for k, v in model.meta.items()}
    for key, comment in (("LOADED", "Number of loaded sources"),
                         ("ACCEPTED", "Number of accepted sources"),
                         ("CHI2", "Final reduced chi2")):
        value = meta.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            hdr[key] = (value, comment)
    name1 = str(meta.get("POLNAME1", "X_IMAGE"))
    name2 = str(meta.get("POLNAME2", "Y_IMAGE"))
    if not (name1.startswith("X") and name1.endswith("IMAGE")):
        name1 = "X_IMAGE"
    if not (name2.startswith("Y") and name2.endswith("IMAGE")):
        name2 = "Y_IMAGE"
    cards = [
        ("POLNAXIS", 2, "Number of context parameters"),
        ("POLGRP1", 1, "Polynom group for this context parameter"),
        ("POLNAME1", name1, "Name of this context parameter"),
        ("POLZERO1", float(model.polzero[0]), "Offset value for this context parameter"),
        ("POLSCAL1", float(model.polscal[0]), "Scale value for this context parameter"),
        ("POLGRP2", 1, "Polynom group for this context parameter"),
        ("POLNAME2", name2, "Name of this context parameter"),
        ("POLZERO2", float(model.polzero[1]), "Offset value for this context parameter"),
        ("POLSCAL2", float(model.polscal[1]), "Scale value for this context parameter"),
        ("POLNGRP", 1, "Number of context groups"),
        ("POLDEG1", model.degree, "Polynom degree for this context group"),
        ("PSF_FWHM", float(fwhm), "PSF FWHM in image pixels"),
        ("PSF_SAMP", float(model.psf_samp), "Sampling step of the PSF data"),
        ("PSFNAXIS", 3, "Dimensionality of the PSF data"),
        ("PSFAXIS1", nx, "Number of element along this axis"),
        ("PSFAXIS2", ny, "Number of element along this axis"),
        ("PSFAXIS3", nterms, "Number of element along this axis"),
    ]
    for key, value, comment in cards:
        hdr[key] = (value, comment)
    skip = set(_MODEL_KEYS) | set(_INFO_KEYS) | _STRUCTURE_KEYS | {"LAYOUT"}
    for key, value in meta.items():
        if key in skip or _TABLE_KEY.match(key) or not _FITS_KEY.match(key):
            continue
        value = _python(value)
        if isinstance(value, str):
            if len(value) > 68 or not value.isprintable() or not value.isascii():
                continue
        elif not isinstance(value, (numbers.Real, bool)) or (
                isinstance(value, float) and not math.isfinite(value)):
            continue
        hdr[key] = value
    hdul = fits.HDUList([fits.PrimaryHDU(), table])
    # through a symbolic link, not over it (as write_psf_mixture)
    with atomic_path(os.path.realpath(path)) as tmp:
        hdul.writeto(tmp, overwrite=True)
    return os.path.abspath(path)
