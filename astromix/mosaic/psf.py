"""ExposureWeightedPSF: the PSF of a drizzled mosaic at each source.

The model
---------
A source at mosaic position ``(x, y)`` was observed by the exposures ``e`` that
the context image names there.  In exposure ``e`` its PSF is ``P_e`` (in that
exposure's detector pixels, from a :class:`~astromix.mosaic.PSFProvider`),
recorded by the detector's pixels (a box of 1 detector pixel) and drizzled
onto the mosaic with drops of ``pixfrac`` detector pixels; locally the
exposure's pixels map to the mosaic's through the 2x2 Jacobian ``J_e`` of
:func:`~astromix.mosaic.source_geometry` (rotation, scale, parity,
distortion).  The mosaic PSF is the weighted mean

.. math::

    \\mathrm{PSF}(v) = \\frac{\\sum_e w_e\\, |\\det J_e|^{-1}\\,
    (P_e \\ast \\Pi_1 \\ast \\Pi_{\\rm pixfrac})(J_e^{-1} v)}{\\sum_e w_e}
    \\ast \\Pi^{\\rm mosaic}_1 \\ast G_\\sigma

with ``w_e`` the exposure time (drizzle's exptime weighting), integrated over
the mosaic pixels and optionally smoothed by a Gaussian ``G_sigma``, then
normalised to unit sum (to ``N**2`` for a stamp of ``N`` samples per mosaic
pixel, an effective PSF, as photutils' ``ImagePSF`` expects).  The detector and
drop boxes are applied once per unique PSF (in Fourier space, where the image
is also upsampled to 8 samples per detector pixel); each source then costs one
bilinear resampling per exposure on a grid of ``subsample`` x ``subsample``
points per mosaic pixel, and one FFT for the mosaic pixel box and the smoothing
(on a grid reaching a few pixels beyond the stamp, so that no flux wraps around
its edges).  The aliasing of the detector's sampling (which depends on each
star's sub-pixel phase) is not modelled; dithering averages it down.

The mixture route (:meth:`ExposureWeightedPSF.mixture`) does the same
analytically with each exposure's :class:`~astromix.GaussianMixturePSF`: every
component ``(a, mu, C)`` becomes ``(w_e a / W, J_e mu, J_e (C + B) J_e^T)``,
``B = (1 + pixfrac^2) / 12 I`` standing for the detector and drop boxes
(their second moments), and the union over exposures is the mosaic PSF's
mixture, pixel-integrated when rendered.
"""

import logging
import math
import os
import warnings

import numpy as np

from .._atomic import atomic_path
from .._checks import integer_parameter
from ..backends._common import host_array
from ..errors import InputError
from ._kernel import accumulate
from .exposures import (
    InputExposure,
    context_planes,
    decode_context,
    exposures_from_table,
    order_exposures,
    read_association,
    source_geometry,
)

__all__ = ["ExposureWeightedPSF", "psf_profile_metrics", "psf_residual", "write_psf_cube",
           "read_psf_cube"]

log = logging.getLogger("astromix")

#: Samples per detector pixel of the prepared (box-convolved, upsampled) PSF images.
PREPARED_SAMPLING = 8


# -- per-unique-PSF preparation ----------------------------------------------------------------
def _prepare_image(image, oversampling, *, detector_pixel, pixfrac, sampling=PREPARED_SAMPLING):
    """Convolve with the detector pixel and the drizzle drop, upsample (Fourier).

    Returns the prepared image (density per detector px^2: a unit-sum input
    image integrates to 1), its samples per detector px and the (x, y) index of
    the PSF centre.
    """
    from scipy import fft

    img = host_array(image, np.float64)
    n_y, n_x = img.shape
    centre = ((n_x - 1) / 2.0, (n_y - 1) / 2.0)
    # odd sizes: the zero frequency sits in the middle of the shifted spectrum
    img = np.pad(img, ((0, 1 - n_y % 2), (0, 1 - n_x % 2)))
    m_y, m_x = img.shape
    up = max(1, int(math.ceil(sampling / oversampling)))
    spec = fft.fftshift(fft.fft2(img))
    fy = (np.arange(m_y) - m_y // 2) / m_y * oversampling   # cycles per detector px
    fx = (np.arange(m_x) - m_x // 2) / m_x * oversampling
    if detector_pixel:
        spec *= np.sinc(fy)[:, None] * np.sinc(fx)[None, :]
    if pixfrac:
        spec *= np.sinc(pixfrac * fy)[:, None] * np.sinc(pixfrac * fx)[None, :]
    if up > 1:
        big = np.zeros((m_y * up, m_x * up), dtype=complex)
        oy, ox = (m_y * up) // 2 - m_y // 2, (m_x * up) // 2 - m_x // 2
        big[oy:oy + m_y, ox:ox + m_x] = spec
        spec = big
    # the zero-padded inverse transform interpolates the input's samples (x up**2 for
    # the larger transform's 1 / size): each value is still the flux of one input
    # sample, 1 / oversampling**2 detector px^2, whatever the finer spacing
    out = fft.ifft2(fft.ifftshift(spec)).real * (up * up)
    os_eff = oversampling * up
    out *= oversampling * oversampling      # flux per input sample -> density per px^2
    out.setflags(write=False)
    return out, float(os_eff), (centre[0] * up, centre[1] * up)


def psf_profile_metrics(image, pixel_scale, *, radii=(0.1, 0.2, 0.3), r_total=1.0, centre=None):
    """FWHM and encircled energy of a PSF image.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The PSF (any normalisation), e.g. a 4x oversampled ePSF.
    pixel_scale : float
        [arcsec per image pixel].
    radii : sequence of float, optional
        Radii [arcsec] of the encircled energies.
    r_total : float, optional
        The encircled energies are fractions of the flux within this radius
        [arcsec] (default 1.0), so that stamps of different sizes compare.
    centre : (float, float), optional
        (x, y) [px]; default the flux-weighted centroid of the pixels above
        half the peak.

    Returns
    -------
    dict
        ``fwhm`` [arcsec]: the diameter of the circle of the same area as the
        region above half the peak, measured on the image bilinearly
        interpolated to 4 samples per pixel, each standing for its true area
        (for a circular profile the diameter of its half-maximum contour, to
        the pixelation of that grid: within 4% for a Gaussian of FWHM 4-8 px
        with its peak on a pixel, about 1% above, unbiased; robust for spiky
        profiles); ``ee``: dict radius -> encircled energy.

    Raises
    ------
    InputError
        If the image has no positive peak or is smaller than ``r_total``.
    """
    img = host_array(image, np.float64)
    peak = float(img.max())
    if not peak > 0:
        raise InputError("the PSF image has no positive peak")
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    core = img >= 0.5 * peak
    if centre is None:
        centre = ((img * xx)[core].sum() / img[core].sum(),
                  (img * yy)[core].sum() / img[core].sum())
    # half-maximum area on a 4x finer bilinear grid (less pixelation for coarse images);
    # zoom keeps the corner samples (grid_mode=False), so its spacing is (n - 1) /
    # (m - 1) px, not 1/4 px: each fine sample stands for that much area
    from scipy import ndimage

    fine = ndimage.zoom(img, 4, order=1, grid_mode=False)
    step_y, step_x = ((n - 1) / (m - 1) if n > 1 else 1.0 / m
                      for n, m in zip(img.shape, fine.shape))
    area = np.count_nonzero(fine >= 0.5 * peak) * step_y * step_x
    fwhm = 2.0 * math.sqrt(area / math.pi) * pixel_scale
    r = np.hypot(xx - centre[0], yy - centre[1]) * pixel_scale
    if r_total > min(centre[0], centre[1], img.shape[1] - 1 - centre[0],
                     img.shape[0] - 1 - centre[1]) * pixel_scale + 1e-9:
        raise InputError(f"the image is smaller than r_total = {r_total} arcsec")
    total = img[r <= r_total].sum()
    return {"fwhm": fwhm, "ee": {float(rad): float(img[r <= rad].sum() / total)
                                 for rad in radii}}


def psf_residual(data, model):
    """How well a model stamp matches a star's stamp, after fitting the flux.

    Parameters
    ----------
    data, model : array-like, shape (ny, nx)
        The star (background-free) and the model PSF on the same pixels.

    Returns
    -------
    dict
        ``flux`` (the least-squares scale of ``model``), ``l1`` (``sum |data -
        flux model| / sum data``), ``rms`` (root mean square residual over the
        data's peak) and ``max`` (largest absolute residual over the peak).

    Raises
    ------
    InputError
        If the shapes differ or the model is zero.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    >>> psf_residual(3 * m, m)["l1"] < 1e-12
    True
    """
    d = np.asarray(data, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    if d.shape != m.shape:
        raise InputError(f"data {d.shape} and model {m.shape} differ in shape")
    mm = float(np.sum(m * m))
    if not mm > 0:
        raise InputError("the model stamp is zero")
    flux = float(np.sum(d * m) / mm)
    r = d - flux * m
    peak = float(np.max(d))
    return {"flux": flux, "l1": float(np.abs(r).sum() / d.sum()),
            "rms": float(np.sqrt(np.mean(r * r)) / peak), "max": float(np.abs(r).max() / peak)}


# -- the model ------------------------------------------------------------------------------------
class ExposureWeightedPSF:
    """The PSF of a drizzled mosaic at any source: exposure-weighted, rotated, summed.

    See :mod:`astromix.mosaic.psf` for the model.  Built from the mosaic's
    WCS, the exposures (in the order of the context bits) and a PSF provider;
    evaluated in mosaic pixels for one source (:meth:`image`,
    :meth:`mixture`) or for a catalog as a cube (:meth:`cube`).

    Parameters
    ----------
    mosaic_wcs : astropy.wcs.WCS or gwcs.WCS
        WCS of the mosaic (pixels 0-based).
    exposures : sequence of InputExposure
        The drizzled exposures, input ``i`` of the context first at index
        ``i`` (see :func:`~astromix.mosaic.read_association` and
        :func:`~astromix.mosaic.order_exposures`).
    provider : PSFProvider
        Where each exposure's oversampled PSF comes from.
    context : array-like of int, shape (n_planes, ny, nx), optional
        The context image (32 exposures per plane, see
        :func:`~astromix.mosaic.decode_context`).  Without it, every exposure
        whose detector covers the source (its WCS and pixel grid: ``shape``,
        else the WCS's ``array_shape``, else the detector's full frame, see
        :attr:`~astromix.mosaic.InputExposure.pixel_grid`) is taken as contributing; an
        exposure whose pixel grid is unknown is counted wherever its WCS
        gives a position, with a warning at construction.
    sigma : float, optional
        Gaussian smoothing [mosaic px] applied after combination (default
        None: none); see :meth:`calibrate_smoothing`.
    pixfrac : float, optional
        Drizzle drop size [detector px] (default 1; 0 leaves the drop out).
    detector_pixel : bool, optional
        Convolve the provider's images with the detector pixel (default: unless
        the provider says its images already include it).
    subsample : int, optional
        Samples per mosaic pixel and axis of the resampling (default 2); an
        integer >= 1 (an integral float such as 2.0 is taken, 2.5 refused).
    normalize : bool, optional
        Scale each stamp to unit sum (default True); an oversampled stamp of
        :meth:`image` (``oversampling`` N > 1 samples per mosaic pixel) to a
        sum of ``N**2``, so that every sample is the flux per mosaic pixel of
        a unit-flux source.  False leaves each stamp as computed: the flux
        per mosaic pixel of a source whose flux is the sum of the provider's
        image, less what falls outside the stamp.

    Raises
    ------
    InputError
        On an empty exposure list, a provider that is not a PSFProvider, a
        context with fewer than ``n_exposures / 32`` planes, or a bad
        parameter (e.g. a ``subsample`` that is not an integer >= 1).

    Notes
    -----
    The exposure-time weighting, the orientation of each exposure through its
    WCS and the final smoothing follow the YOUNG STPSF procedure for JWST
    mosaics, with its bugs fixed (every exposure accumulated, no fixed-size
    buffer, parity and the V3 y-angle carried by the WCS Jacobian).  Leans on
    NumPy and scipy.fft; stpsf/poppy only through the providers.

    Examples
    --------
    Four exposures at different roll angles, drizzled by the ``drizzle``
    package, with an elliptical Gaussian PSF given as an image:

    >>> import numpy as np
    >>> from astromix import ExposureWeightedPSF, GaussianMixture
    >>> from astromix.mosaic import ImageProvider, simulate_drizzled_star_field
    >>> psf_image = GaussianMixture([1.0], [[40.0, 40.0]],
    ...                             [np.diag([9.0, 4.0])]).render((81, 81), backend="numpy")
    >>> provider = ImageProvider(psf_image, oversampling=4)
    >>> sim = simulate_drizzled_star_field(provider, n_exposures=4, n_stars=4, rng=0)
    >>> psf = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context)
    >>> cube = psf.cube(sim.stars["x"], sim.stars["y"], dim=25, progress=False)
    >>> cube.shape, round(float(cube[0].sum()), 6)
    ((4, 25, 25), 1.0)
    >>> psf.source_table(sim.stars["x"], sim.stars["y"])["n_exposures"].tolist()
    [4, 4, 4, 4]
    """

    def __init__(self, mosaic_wcs, exposures, provider, *, context=None, sigma=None, pixfrac=1.0,
                 detector_pixel=None, subsample=2, normalize=True):
        from .providers import PSFProvider

        exposures = list(exposures)
        if not exposures:
            raise InputError("ExposureWeightedPSF needs at least one exposure")
        for e in exposures:
            if not isinstance(e, InputExposure):
                raise InputError(f"exposures must be InputExposure objects, got "
                                 f"{type(e).__name__}")
        if not isinstance(provider, PSFProvider):
            raise InputError(f"provider must be a PSFProvider, got {type(provider).__name__}")
        for method in ("pixel_to_world_values", "world_to_pixel_values"):
            if not callable(getattr(mosaic_wcs, method, None)):
                raise InputError(f"the mosaic WCS ({type(mosaic_wcs).__name__}) has no {method}")
        self.wcs = mosaic_wcs
        self.exposures = exposures
        self.provider = provider
        if context is not None:
            context = context_planes(context)
            if 32 * context.shape[0] < len(exposures):
                raise InputError(f"the context has {context.shape[0]} plane(s) (32 exposures "
                                 f"each) for {len(exposures)} exposures")
        self.context = context
        self._prepared = {}
        self._mixtures = {}
        self._transfer = {}
        self.sigma = sigma
        self.pixfrac = pixfrac
        self.detector_pixel = (not provider.pixel_integrated) if detector_pixel is None \
            else detector_pixel
        self.subsample = integer_parameter(subsample, "subsample")
        self.normalize = bool(normalize)
        if context is None:
            unknown = [e.name for e in exposures if not e.coverage_known]
            if unknown:
                log.warning("%d exposure(s) have no known pixel grid (no shape, no NAXIS1/"
                            "NAXIS2, no WCS array_shape or bounding_box, no full-frame "
                            "detector), e.g. %s: without a context image their coverage "
                            "cannot be decided and they count at every source their WCS "
                            "reaches; give their shape or the context", len(unknown),
                            ", ".join(unknown[:3]))

    # -- attributes ----------------------------------------------------------------------------
    @property
    def sigma(self):
        """Gaussian smoothing [mosaic px] after combination, or None."""
        return self._sigma

    @sigma.setter
    def sigma(self, value):
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InputError(f"sigma must be a number >= 0 [mosaic px] or None, "
                                 f"got {value!r}") from None
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"sigma must be a number >= 0 [mosaic px] or None, got {value}")
            if value == 0:
                value = None
        self._sigma = value
        self._transfer = {}

    @property
    def pixfrac(self):
        """Drizzle drop size [detector px], in [0, 1.5].

        Setting it discards the prepared exposure PSFs, which include the drop.
        """
        return self._pixfrac

    @pixfrac.setter
    def pixfrac(self, value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"pixfrac must be a number in [0, 1.5], got {value!r}") from None
        if not 0 <= value <= 1.5:
            raise InputError(f"pixfrac must lie in [0, 1.5], got {value}")
        self._pixfrac = value
        self._prepared = {}

    @property
    def detector_pixel(self):
        """Whether the detector pixel is convolved in (the provider's images lack it).

        Setting it discards the prepared exposure PSFs, which include the pixel.
        """
        return self._detector_pixel

    @detector_pixel.setter
    def detector_pixel(self, value):
        self._detector_pixel = bool(value)
        self._prepared = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_transfer"] = {}
        return state

    @classmethod
    def from_i2d(cls, path, provider, *, exposures=None, exposure_table=None, association=None,
                 sci_hdu="SCI", context_hdu="CON", **kwargs):
        """Build from a drizzled mosaic file (JWST ``i2d`` or any FITS with a context).

        Parameters
        ----------
        path : str
            The mosaic FITS file: its WCS from the header of HDU ``sci_hdu``
            (for an i2d file, the FITS approximation of its gwcs that the JWST
            pipeline writes there; a resampled mosaic is a plain TAN grid),
            its context from ``context_hdu``.
        provider : PSFProvider
        exposures : sequence of InputExposure, optional
            The exposures with their own WCSs (best: the ``cal`` files' gwcs).
        exposure_table : str or astropy.table.Table, optional
            Else a table of exposures (YOUNG's CSV, see
            :func:`~astromix.mosaic.exposures_from_table`); else the file's
            ``HDRTAB`` extension.
        association : str, optional
            The association JSON; the exposures are reordered to its science
            members (the context order).
        sci_hdu : int or str, optional
            HDU of the WCS: an index or a name, in any case (default ``"SCI"``).
        context_hdu : int, str or None, optional
            HDU of the context image: an index (3 in a JWST i2d file) or a
            name, in any case (default ``"CON"``).  A mosaic without an HDU
            named ``CON`` has no context (every exposure covering a source
            counts); any other ``context_hdu`` must exist.  None: the context
            is not read.
        **kwargs
            Passed to the constructor (``sigma``, ``pixfrac``, ...).

        Returns
        -------
        ExposureWeightedPSF

        Raises
        ------
        InputError
            If the file cannot be read, has no celestial WCS, no HDU
            ``context_hdu`` (other than ``"CON"``) or one that is not a 2-d or
            3-d integer image, or no exposures can be found; the message
            names the file.
        """
        from astropy.io import fits
        from astropy.table import Table
        from astropy.wcs import WCS, FITSFixedWarning

        try:
            hdul = fits.open(path, memmap=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"mosaic {path!r} is not a readable FITS file ({exc})") from None
        with hdul:
            names = [h.name for h in hdul]
            try:
                header = hdul[sci_hdu].header
            except (KeyError, IndexError):
                raise InputError(f"mosaic {path!r} has no HDU {sci_hdu!r} (it has "
                                 f"{names})") from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(header)
            if not wcs.has_celestial:
                raise InputError(f"mosaic {path!r}[{sci_hdu}] has no celestial WCS")
            wcs = wcs.celestial
            context = None
            if context_hdu is not None:
                # HDUList indexing: an index, or a name in any case
                try:
                    hdu = hdul[context_hdu]
                except (KeyError, IndexError):
                    hdu = None
                    if not (isinstance(context_hdu, str) and context_hdu.upper() == "CON"):
                        raise InputError(f"mosaic {path!r} has no context HDU {context_hdu!r} "
                                         f"(it has {names})") from None
                if hdu is not None:
                    if hdu.data is None:
                        raise InputError(f"mosaic {path!r}[{context_hdu!r}] ({hdu.name}) has "
                                         "no data: not a context image")
                    try:
                        context = context_planes(np.array(hdu.data))
                    except InputError as exc:
                        raise InputError(f"mosaic {path!r}[{context_hdu!r}] ({hdu.name}): "
                                         f"{exc}") from None
            if exposures is None and exposure_table is None:
                if "HDRTAB" not in names:
                    raise InputError(f"give exposures or exposure_table: mosaic {path!r} has "
                                     "no HDRTAB")
                exposure_table = Table(hdul["HDRTAB"].data)
        if exposures is None:
            exposures = exposures_from_table(exposure_table)
        if association is not None:
            exposures = order_exposures(exposures, read_association(association))
        return cls(wcs, exposures, provider, context=context, **kwargs)

    # -- geometry and contributors -----------------------------------------------------------
    def contributors(self, x, y):
        """Which exposures contribute at each source, and their geometry.

        Parameters
        ----------
        x, y : array-like, shape (N,)
            Source positions [mosaic px, 0-based].

        Returns
        -------
        mask : ndarray of bool, shape (N, n_exposures)
            From the context (else from the detectors' footprints), less the
            pairs whose geometry is undefined.
        detector_xy : ndarray, shape (n_exposures, N, 2)
        jacobian : ndarray, shape (n_exposures, N, 2, 2)
            See :func:`~astromix.mosaic.source_geometry`.

        Raises
        ------
        InputError
            If a position lies outside the context image.
        """
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        det_xy, jac, inside = source_geometry(self.wcs, self.exposures, x, y)
        if self.context is not None:
            mask = decode_context(self.context, x, y, n_inputs=len(self.exposures))
            lost = mask & ~inside.T
            if lost.any():
                n, e = np.argwhere(lost)[0]
                log.warning("%d (source, exposure) pair(s) named by the context have no "
                            "detector position (e.g. source %d, exposure %s); they are left out",
                            int(lost.sum()), n, self.exposures[e].name)
            mask &= inside.T
        else:
            mask = inside.T.copy()
        return mask, det_xy, jac

    def source_table(self, x, y):
        """A table of the sources: position, number and names of the exposures in their PSF.

        The exposures counted are those :meth:`image` and :meth:`cube` combine:
        the contributors (:meth:`contributors`) for which the provider has a
        PSF.  An exposure the provider has none for (``ImageProvider`` with
        ``missing="skip"``) is left out of the PSF, and of this table; a
        source left with none has ``n_exposures`` 0 (and a zero PSF).

        Parameters
        ----------
        x, y : float or array-like, shape (N,)
            Source positions [mosaic px, 0-based].

        Returns
        -------
        astropy.table.Table
            N rows; columns ``x``, ``y`` [mosaic px], ``n_exposures``,
            ``total_weight`` [s] (the sum of their exposure times, the
            weights) and ``exposures`` (comma-separated names).

        Raises
        ------
        InputError
            If a position lies outside the context image (:meth:`contributors`),
            or the provider refuses an exposure's PSF.

        Notes
        -----
        Each contributor's PSF is looked up as the stamps do: after
        :meth:`cube` or :meth:`prepare` they are all cached; otherwise they
        are computed and prepared (once, and cached for the stamps) here.
        """
        from astropy.table import Table

        mask, det_xy, _ = self.contributors(x, y)
        mask = self._with_psf(mask, det_xy)
        t = np.array([e.exptime for e in self.exposures])
        names = [",".join(self.exposures[i].name for i in np.flatnonzero(row)) for row in mask]
        return Table({"x": np.atleast_1d(np.asarray(x, dtype=float)),
                      "y": np.atleast_1d(np.asarray(y, dtype=float)),
                      "n_exposures": mask.sum(1), "total_weight": mask @ t,
                      "exposures": names})

    def _with_psf(self, mask, det_xy):
        """The contributors' mask less the pairs whose PSF the provider does not have:
        the predicate of :meth:`_stamp` (an exposure without a PSF is left out), through
        the same :meth:`_prepared_psf` (cached)."""
        out = mask.copy()
        for n, e in np.argwhere(mask):
            out[n, e] = self._prepared_psf(self.exposures[e], *det_xy[e, n]) is not None
        return out

    # -- prepared PSFs ------------------------------------------------------------------------
    def _prepared_psf(self, exposure, dx, dy):
        key = self.provider.key(exposure, dx, dy)
        if key in self._prepared:
            return self._prepared[key]
        key, image = self.provider.psf(exposure, dx, dy)
        if image is None:
            self._prepared[key] = None
            return None
        if key not in self._prepared:
            self._prepared[key] = _prepare_image(
                image, self.provider.oversampling, detector_pixel=self.detector_pixel,
                pixfrac=self.pixfrac)
        return self._prepared[key]

    def prepare(self, x, y):
        """Compute (and cache) every unique PSF the sources need; returns how many there are.

        Called by :meth:`cube` before the work is sent to other processes, so
        that each unique PSF is computed once whatever the number of workers.

        Parameters
        ----------
        x, y : float or array-like, shape (N,)
            Source positions [mosaic px, 0-based].

        Returns
        -------
        int
            :attr:`n_unique_psfs`: the unique exposure PSFs prepared so far
            (those the provider could not compute are not counted).

        Raises
        ------
        InputError
            If a position lies outside the context image (:meth:`contributors`),
            or the provider refuses an exposure's PSF.
        """
        mask, det_xy, _ = self.contributors(x, y)
        for n, e in np.argwhere(mask):
            self._prepared_psf(self.exposures[e], *det_xy[e, n])
        return self.n_unique_psfs

    @property
    def n_unique_psfs(self):
        """Number of unique exposure PSFs prepared so far (the cache of this model)."""
        return sum(v is not None for v in self._prepared.values())

    def _transfer_function(self, n_fine, spacing):
        """rfft2 multiplier of the mosaic pixel box and the smoothing on the fine grid."""
        key = (n_fine, spacing, self._sigma)
        if key not in self._transfer:
            fy = np.fft.fftfreq(n_fine, d=spacing)      # cycles per mosaic px
            fx = np.fft.rfftfreq(n_fine, d=spacing)
            h = np.sinc(fy)[:, None] * np.sinc(fx)[None, :]
            if self._sigma:
                s2 = 2 * (math.pi * self._sigma) ** 2
                h = h * np.exp(-s2 * fy[:, None] ** 2) * np.exp(-s2 * fx[None, :] ** 2)
            self._transfer[key] = h
        return self._transfer[key]

    def _stamp_padding(self, oversampling=1):
        """Stamp pixels added on each side of the fine grid before the FFT convolution.

        The reach of the mosaic pixel box (half a mosaic pixel) and of the
        smoothing (4 sigma) plus one mosaic pixel, and at least 4 mosaic
        pixels for the slowly (1 / r^2) decaying tails of the box's sampled
        kernel when the smoothing is weak; in stamp pixels (``oversampling``
        per mosaic pixel).
        """
        reach = 0.5 + 4.0 * (self._sigma or 0.0)
        return int(oversampling) * max(4, int(math.ceil(reach)) + 1)

    # -- evaluation ----------------------------------------------------------------------------
    def _stamp(self, n, mask, det_xy, jac, dim, offset, *, weights=None, rotate=True,
               oversampling=1):
        """The stamp of source n (unchecked); returns (stamp, exposures used, total weight)."""
        from scipy import fft

        used, prepared, jinv, w = [], [], [], []
        for e in np.flatnonzero(mask[n]):
            exp = self.exposures[e]
            prep = self._prepared_psf(exp, *det_xy[e, n])
            if prep is None:
                log.warning("no PSF for exposure %s at source %d; it is left out", exp.name, n)
                continue
            j = jac[e, n]
            if not rotate:  # the "unrotated" comparison: scale only
                j = np.sqrt(abs(np.linalg.det(j))) * np.eye(2)
            used.append(e)
            prepared.append(prep)
            jinv.append(np.linalg.inv(j))
            w.append(exp.exptime if weights is None else float(weights[e]))
        if not used:
            return np.zeros((dim, dim)), used, 0.0
        q = self.subsample
        c = (dim - 1) / 2.0
        s = 1.0 / oversampling                        # stamp pixel [mosaic px]
        # the mosaic pixel box and the smoothing are (circular) FFT convolutions:
        # the fine grid reaches `pad` stamp pixels beyond the stamp on each side,
        # so that flux just outside the stamp spills into its edge pixels and
        # none wraps around onto the opposite edge
        pad = self._stamp_padding(oversampling)
        n_fine = fft.next_fast_len(q * (dim + 2 * pad), real=True)
        t = ((np.arange(n_fine) - q * pad) / q - c) * s
        tx = t - offset[0]                            # fine grid [mosaic px from the centre]
        ty = t - offset[1]
        jinv = np.array(jinv)                         # (E, 2, 2): exposure <- mosaic
        os_eff = np.array([p[1] for p in prepared])
        cen = np.array([p[2] for p in prepared])      # (E, 2) index of the centre
        shapes = np.array([p[0].shape for p in prepared], dtype=np.int64)
        flat = np.concatenate([p[0].ravel() for p in prepared])
        offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]])
        w = np.asarray(w)
        coef = w * np.abs(np.linalg.det(jinv)) / w.sum()   # density per mosaic px^2
        fine = accumulate(flat, offsets.astype(np.int64), shapes[:, 1].copy(),
                          shapes[:, 0].copy(), os_eff, cen, jinv, coef, tx, ty,
                          np.zeros((n_fine, n_fine)))
        spec = fft.rfft2(fine) * self._transfer_function(n_fine, s / q)
        out = fft.irfft2(spec, s=fine.shape)[q * pad:q * (pad + dim):q,
                                              q * pad:q * (pad + dim):q]
        if self.normalize:
            # unit flux: each sample is the flux of the mosaic pixel centred on it,
            # so the N x N phases of an N-times oversampled stamp (an effective
            # PSF, Anderson & King 2000) each sum to 1 and the stamp to N**2, the
            # normalisation of photutils' ImagePSF
            total = out.sum()
            if total > 0:
                out = out * (oversampling * oversampling / total)
        return out, used, float(w.sum())

    def _checked_positions(self, x, y):
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        if x.shape != y.shape or x.ndim != 1:
            raise InputError(f"x and y must be 1-d and of equal length, got {x.shape}, {y.shape}")
        if x.size == 0:
            raise InputError("the catalog is empty")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise InputError("source positions must be finite")
        return x, y

    def _exposure_indices(self, exposures):
        # indices 0 <= i < n_exposures (no negative indexing, no names, no bools)
        n = len(self.exposures)
        try:
            items = list(exposures)
        except TypeError:
            raise InputError(f"exposures must be a sequence of exposure indices, got "
                             f"{exposures!r}") from None
        out = []
        for i in items:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                raise InputError(f"exposures must hold integer indices in [0, {n}), got {i!r}")
            if not 0 <= int(i) < n:
                raise InputError(f"exposure index {int(i)} is outside [0, {n}) "
                                 f"({n} exposures)")
            out.append(int(i))
        return np.asarray(out, dtype=np.intp)

    def image(self, x, y, dim=51, *, offset=(0.0, 0.0), exposures=None, rotate=True,
              oversampling=1):
        """The mosaic PSF of one source as a (dim, dim) stamp.

        Parameters
        ----------
        x, y : float
            Source position [mosaic px, 0-based].
        dim : int, optional
            Stamp size [mosaic px], any positive integer (default 51; an
            integral float such as 51.0 is taken, 51.5 is refused).
        offset : (float, float), optional
            Position (x, y) of the PSF centre relative to the stamp centre
            ``((dim - 1) / 2, (dim - 1) / 2)`` [mosaic px]; e.g.
            ``(x - round(x), y - round(y))`` to match a cut-out centred on
            the nearest pixel.
        exposures : sequence of int, optional
            Use only these exposures (indices ``0 <= i < n_exposures`` into
            :attr:`exposures`) among the contributing ones (to compare with a
            single exposure's PSF).
        rotate : bool, optional
            False replaces each Jacobian by its scale alone (no rotation, no
            parity): the "unrotated average" that ignores the orientations.
        oversampling : int, optional
            Samples per mosaic pixel of the stamp, an integer >= 1 (default
            1; 1.5 is refused, not truncated).  Above 1 the
            stamp is an effective PSF in the sense of Anderson & King (2000,
            PASP 112, 1360): the flux a mosaic pixel centred on each sample
            would receive, like an empirical ePSF; ``dim`` then counts
            samples.  ``stamp[j::N, i::N]`` is then the ``oversampling=1``
            stamp of the PSF at another sub-pixel phase, and the stamp can be
            given as it is to ``photutils.psf.ImagePSF(stamp,
            oversampling=N)``.

        Returns
        -------
        ndarray, shape (dim, dim)
            Flux per mosaic pixel for a unit-flux source: with ``normalize``
            the stamp sums to 1, or to ``oversampling**2`` when oversampled
            (every one of the ``oversampling**2`` phases sums to about 1;
            photutils' ePSF convention); zeros when no exposure contributes
            (a warning is logged).

        Raises
        ------
        InputError
            On a bad position, a ``dim`` or ``oversampling`` that is not an
            integer >= 1, or an ``exposures`` entry that is not an integer
            index of an exposure.
        """
        dim = integer_parameter(dim, "dim")
        x, y = self._checked_positions(x, y)
        if x.size != 1:
            raise InputError("image() takes one position; use cube() for many")
        mask, det_xy, jac = self.contributors(x, y)
        if exposures is not None:
            keep = np.zeros(len(self.exposures), dtype=bool)
            keep[self._exposure_indices(exposures)] = True
            mask = mask & keep
        oversampling = integer_parameter(oversampling, "oversampling")
        out, used, _ = self._stamp(0, mask, det_xy, jac, dim, tuple(map(float, offset)),
                                   rotate=rotate, oversampling=oversampling)
        if not used:
            log.warning("no exposure contributes at (%.6g, %.6g); the PSF is zero", x[0], y[0])
        return out

    def cube(self, x, y, dim=51, *, offsets=None, executor=None, max_workers=None,
             progress=True, chunk_size=None):
        """The mosaic PSF of every source, as a cube in catalog order.

        Parameters
        ----------
        x, y : array-like, shape (N,)
            Source positions [mosaic px, 0-based].
        dim : int, optional
            Stamp size [mosaic px] (default 51), any positive integer.
        offsets : array-like, shape (N, 2), optional
            PSF centre relative to each stamp centre [mosaic px] (see
            :meth:`image`); default centred.
        executor : concurrent.futures.Executor, "serial" or None, optional
            Where the chunks of sources run: any Executor (process pool,
            ``dask.distributed.Client.get_executor()``,
            ``mpi4py.futures.MPIPoolExecutor``); ``"serial"`` runs here; None
            runs one chunk here and several in a process pool.  Every unique
            PSF is computed here first and travels with the model, so no
            worker recomputes one.
        max_workers : int, optional
            Processes of the default pool.
        progress : bool, optional
            tqdm progress bar over the chunks (default True).
        chunk_size : int, optional
            Sources per task; default ``max(16, ceil(N / 32))`` (each task
            carries the prepared PSFs, so fewer, larger tasks cost less).

        Returns
        -------
        ndarray, shape (N, dim, dim)
            Stamp ``n`` is the PSF of source ``n`` (see :meth:`image`).

        Raises
        ------
        InputError
            On an empty catalog, non-finite or outside positions, a ``dim``
            that is not an integer >= 1.
        AstromixError
            A chunk's error, re-raised naming the chunk's first source.
        """
        dim = integer_parameter(dim, "dim")
        x, y = self._checked_positions(x, y)
        if offsets is None:
            offsets = np.zeros((x.size, 2))
        offsets = np.asarray(offsets, dtype=np.float64)
        if offsets.shape != (x.size, 2) or not np.all(np.isfinite(offsets)):
            raise InputError(f"offsets must be finite with shape ({x.size}, 2), got "
                             f"{offsets.shape}")
        from ..parallel import parallel_map

        self.prepare(x, y)
        if chunk_size is None:
            chunk_size = max(16, math.ceil(x.size / 32))
        chunk_size = max(1, int(chunk_size))
        starts = list(range(0, x.size, chunk_size))
        items = [(x[s:s + chunk_size], y[s:s + chunk_size], offsets[s:s + chunk_size], dim)
                 for s in starts]
        labels = [f"sources {s}-{min(s + chunk_size, x.size) - 1}" for s in starts]
        parts = parallel_map(_CubeTask(self), items, executor=executor,
                             max_workers=max_workers, progress=progress,
                             desc="ExposureWeightedPSF", labels=labels)
        return np.concatenate(parts, axis=0)

    def _cube_chunk(self, x, y, offsets, dim):
        mask, det_xy, jac = self.contributors(x, y)
        out = np.empty((x.size, dim, dim))
        for n in range(x.size):
            out[n], used, _ = self._stamp(n, mask, det_xy, jac, dim, tuple(offsets[n]))
            if not used:
                log.warning("no exposure contributes at source (%.6g, %.6g); its PSF is zero",
                            x[n], y[n])
        return out

    # -- mixture route ------------------------------------------------------------------------
    def exposure_mixture(self, exposure, x, y, *, n_components=4, n_negative=0, **kwargs):
        """The GaussianMixturePSF of an exposure at a detector position (fitted, cached).

        Fits :func:`astromix.fitting.fit_psf_mixture` to the provider's image
        (once per unique PSF).

        Parameters
        ----------
        exposure : InputExposure
        x, y : float
            Detector position [px].
        n_components, n_negative : int, optional
        **kwargs
            Passed to :func:`~astromix.fitting.fit_psf_mixture`; a fit is cached
            per unique PSF and set of options (when they can be hashed).

        Returns
        -------
        GaussianMixturePSF or None
            In detector pixels, unit flux, centred on (0, 0); None when the
            provider has no PSF for it.
        """
        from ..fitting import fit_psf_mixture

        key, image = self.provider.psf(exposure, x, y)
        if image is None:
            return None
        # the fit's options are part of the key (options that cannot be hashed,
        # e.g. an array of weights: fitted anew at each call)
        try:
            mkey = (key, int(n_components), int(n_negative), frozenset(kwargs.items()))
            cached = self._mixtures.get(mkey)
        except TypeError:
            mkey = cached = None
        if cached is None:
            cached = fit_psf_mixture(image, n_components, oversampling=self.provider.oversampling,
                                     n_negative=n_negative, **kwargs)
            if mkey is not None:
                self._mixtures[mkey] = cached
        return cached

    def mixture(self, x, y, mixtures=None, *, n_components=4, n_negative=0):
        """The mosaic PSF of one source as an exact GaussianMixturePSF.

        Each contributing exposure's mixture (detector pixels) is sent to the
        mosaic through its Jacobian, with the detector pixel and the drizzle
        drop as Gaussians of the same second moments (``(1 + pixfrac^2) / 12``
        detector px^2, unless the provider's images already include the pixel)
        and the smoothing ``sigma``; amplitudes are weighted by exposure time.

        Parameters
        ----------
        x, y : float
            Source position [mosaic px].
        mixtures : dict or callable, optional
            Exposure name -> GaussianMixturePSF (detector pixels, centred on 0),
            or a callable ``f(exposure, x_det, y_det)``; default: fitted to the
            provider's images (:meth:`exposure_mixture`).
        n_components, n_negative : int, optional
            Of the fits, when ``mixtures`` is not given.

        Returns
        -------
        GaussianMixturePSF
            Unit flux, centred on (0, 0), mosaic pixels; render it at any
            position (``psf.mixture`` / ``placed_mixture``).

        Raises
        ------
        InputError
            If no exposure contributes, or a mixture is missing.
        """
        from ..mixtures import GaussianMixture
        from ..models.psf import GaussianMixturePSF

        x, y = self._checked_positions(x, y)
        mask, det_xy, jac = self.contributors(x, y)
        parts, weights = [], []
        box = (1.0 + self.pixfrac ** 2) / 12.0 if self.detector_pixel else self.pixfrac ** 2 / 12
        for e in np.flatnonzero(mask[0]):
            exp = self.exposures[e]
            dx, dy = det_xy[e, 0]
            if mixtures is None:
                psf = self.exposure_mixture(exp, dx, dy, n_components=n_components,
                                            n_negative=n_negative)
            elif callable(mixtures):
                psf = mixtures(exp, dx, dy)
            else:
                if exp.name not in mixtures:
                    raise InputError(f"no mixture for exposure {exp.name!r}")
                psf = mixtures[exp.name]
            if psf is None:
                continue
            mix = psf.mixture if isinstance(psf, GaussianMixturePSF) else psf
            j = jac[e, 0]
            cov = mix.cov + box * np.eye(2)
            cov = np.einsum("ab,kbc,dc->kad", j, cov, j)
            if self._sigma:
                cov = cov + self._sigma ** 2 * np.eye(2)
            parts.append((mix.amp / mix.amp.sum(), mix.mean @ j.T, cov))
            weights.append(exp.exptime)
        if not parts:
            raise InputError(f"no exposure contributes at ({x[0]:.6g}, {y[0]:.6g})")
        w = np.asarray(weights) / np.sum(weights)
        amp = np.concatenate([p[0] * wi for p, wi in zip(parts, w)])
        mean = np.concatenate([p[1] for p in parts])
        cov = np.concatenate([p[2] for p in parts])
        return GaussianMixturePSF(GaussianMixture(amp, mean, cov))

    # -- calibration ---------------------------------------------------------------------------
    def calibrate_smoothing(self, stars, image, *, size=21, bounds=(0.0, 3.0), background=True):
        """Fit the Gaussian smoothing sigma to stars measured in the mosaic.

        For a trial sigma, each star's stamp is fitted by ``flux * PSF``
        (plus a constant background) at its exact position, with its flux
        (and background) solved linearly; the sigma minimising the summed
        squared residual, relative to each star's peak, is returned.  This
        replaces YOUNG's guessed 0.8.

        Parameters
        ----------
        stars : astropy.table.Table, dict or (x, y)
            Star positions [mosaic px]: columns ``x`` and ``y``, or a pair of
            arrays.  They should be isolated, unsaturated, bright.
        image : array-like, shape (ny, nx)
            The mosaic (background-subtracted or not, see ``background``).
        size : int, optional
            Stamp size [px] (default 21), an integer >= 1.
        bounds : (float, float), optional
            Range of sigma [mosaic px] searched, ``0 <= low < high``, finite.
        background : bool, optional
            Fit a constant background per star (default True).

        Returns
        -------
        sigma : float
            [mosaic px]; set it with ``psf.sigma = sigma``.
        info : dict
            ``chi2`` (at sigma), ``chi2_none`` (without smoothing), ``n_stars``.

        Raises
        ------
        InputError
            If no star has a complete, finite stamp, ``size`` is not an integer
            >= 1 or ``bounds`` is bad.

        Notes
        -----
        The model stamps are computed ``ceil(4 high) + 1`` pixels larger on
        each side than ``size`` and cropped after each trial smoothing, so
        that the smoothing takes in the flux just outside the stamp and none
        wraps around its edges.
        """
        from scipy import optimize

        if isinstance(stars, (tuple, list)) and len(stars) == 2:
            sx, sy = stars
        else:
            sx, sy = stars["x"], stars["y"]
        sx, sy = self._checked_positions(sx, sy)
        img = host_array(image, np.float64)
        size = integer_parameter(size, "size")
        h = (size - 1) // 2
        datas, keep = [], []
        for n, (xx, yy) in enumerate(zip(sx, sy)):
            i, j = int(round(xx)), int(round(yy))
            if j - h < 0 or i - h < 0 or j - h + size > img.shape[0] or i - h + size > img.shape[1]:
                continue
            d = img[j - h:j - h + size, i - h:i - h + size]
            if np.all(np.isfinite(d)) and d.max() > 0:
                datas.append(d)
                keep.append(n)
        if not keep:
            raise InputError("calibrate_smoothing: no star has a complete, finite stamp")
        keep = np.asarray(keep)
        try:
            lo, hi = map(float, bounds)
        except (TypeError, ValueError):
            raise InputError(f"bounds must be two numbers [mosaic px], got {bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise InputError(f"bounds must be finite with 0 <= low < high, got {bounds!r}")
        # stamps centred on pixel round(x) with the PSF at its exact position
        offs = np.column_stack([sx[keep] - np.round(sx[keep]), sy[keep] - np.round(sy[keep])])
        offs += (h - (size - 1) / 2.0)
        # the trial smoothing is a circular FFT convolution: the base stamps reach
        # `pad` pixels (4 sigma of the widest trial) beyond the star's, cropped after
        pad = int(math.ceil(4.0 * hi)) + 1
        n_base = size + 2 * pad
        saved = self._sigma
        try:
            self.sigma = None
            self.normalize, norm = False, self.normalize
            base = self.cube(sx[keep], sy[keep], n_base, offsets=offs, executor="serial",
                             progress=False)
        finally:
            self.normalize = norm
            self.sigma = saved
        f = np.fft.fftfreq(n_base)
        fr = np.fft.rfftfreq(n_base)
        specs = np.fft.rfft2(base)

        def chi2(s):
            g = np.exp(-2 * (math.pi * s) ** 2 * (f[:, None] ** 2 + fr[None, :] ** 2))
            models = np.fft.irfft2(specs * g, s=(n_base, n_base))[:, pad:pad + size,
                                                                  pad:pad + size]
            total = 0.0
            for d, m in zip(datas, models):
                cols = [m.ravel(), np.ones(m.size)] if background else [m.ravel()]
                a = np.column_stack(cols)
                coef, *_ = np.linalg.lstsq(a, d.ravel(), rcond=None)
                r = d.ravel() - a @ coef
                total += float(np.sum(r * r)) / float(d.max()) ** 2
            return total

        res = optimize.minimize_scalar(chi2, bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-3})
        sigma = float(res.x)
        return sigma, {"chi2": float(res.fun), "chi2_none": chi2(0.0), "n_stars": int(keep.size)}


class _CubeTask:
    """Picklable callable: one chunk of sources of a model."""

    def __init__(self, model):
        self.model = model

    def __call__(self, item):
        x, y, offsets, dim = item
        return self.model._cube_chunk(x, y, offsets, dim)


# -- files ----------------------------------------------------------------------------------
#: File name endings of the FITS PSF cube format (the others: ``.asdf``, ``.npy``).
_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit")
#: Every file name ending :func:`write_psf_cube` and :func:`read_psf_cube` know.
CUBE_SUFFIXES = _FITS_SUFFIXES + (".asdf", ".npy")


def write_psf_cube(path, cube, sources=None, *, meta=None, overwrite=True):
    """Write a PSF cube (N, dim, dim) and its source table, atomically.

    The format follows the file name: ``.fits`` / ``.fits.gz`` (primary HDU:
    the cube in float64; extension ``SOURCES``: the table), ``.asdf`` (tree ``psf_cube``,
    ``sources``, ``meta``; the table is an astropy table node written by
    asdf-astropy, so its column order, units and masked values are kept) or
    ``.npy`` (the cube alone, YOUNG's format).

    Parameters
    ----------
    path : str or os.PathLike
        Output file; written to a temporary file in the same folder, then
        renamed onto ``path``.
    cube : array-like, shape (N, dim, dim)
        The PSF stamps (written as float64).
    sources : astropy.table.Table, optional
        One row per stamp (e.g. :meth:`ExposureWeightedPSF.source_table`);
        not written to ``.npy``.
    meta : dict, optional
        Scalars stored as FITS header cards (keys of at most 8 characters are
        written as such, longer ones with HIERARCH) or in the ASDF tree; not
        written to ``.npy``.
    overwrite : bool, optional
        Refuse an existing file when False (default True).

    Returns
    -------
    None
        The file is written at ``path``.

    Raises
    ------
    InputError
        On a bad cube, a table of another length, an unknown extension or an
        existing file with ``overwrite=False``.
    """
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim != 3 or cube.shape[1] != cube.shape[2]:
        raise InputError(f"the PSF cube must have shape (N, dim, dim), got {cube.shape}")
    if sources is not None and len(sources) != cube.shape[0]:
        raise InputError(f"the source table has {len(sources)} rows for {cube.shape[0]} PSFs")
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise InputError(f"{path} exists and overwrite is False")
    meta = dict(meta or {})
    low = path.lower()
    if low.endswith(_FITS_SUFFIXES):
        from astropy.io import fits

        primary = fits.PrimaryHDU(cube)
        for k, v in meta.items():
            primary.header[k if len(k) <= 8 else f"HIERARCH {k}"] = v
        hdus = [primary]
        if sources is not None:
            hdus.append(fits.table_to_hdu(sources))
            hdus[-1].name = "SOURCES"
        with atomic_path(path) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True)
    elif low.endswith(".asdf"):
        import asdf

        tree = {"psf_cube": cube, "meta": meta}
        if sources is not None:
            # a table node (asdf-astropy): column order, units and masks survive; the
            # former mapping of column name to array lost all three
            tree["sources"] = sources
        with atomic_path(path) as tmp:
            asdf.AsdfFile(tree).write_to(tmp)
    elif low.endswith(".npy"):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, cube)
    else:
        raise InputError(f"unknown PSF cube format for {path!r}: use .fits, .fits.gz, .asdf "
                         "or .npy")


def _read_psf_cube_asdf(path):
    """(cube, sources, meta) of an ASDF PSF cube; InputError naming the file if it is bad."""
    from collections.abc import Mapping

    from astropy.table import Table

    from ..io.asdf import open_asdf

    # every block read on opening: a truncated file is an InputError of open_asdf
    with open_asdf(path, memmap=False, lazy_load=False) as af:
        tree = af.tree
        if "psf_cube" not in tree:
            raise InputError(f"{path}: the ASDF tree has no 'psf_cube' (not a PSF cube "
                             "written by write_psf_cube)")
        try:
            cube = np.array(tree["psf_cube"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: psf_cube is not an array of numbers: {exc}") from None
        if cube.ndim != 3 or cube.shape[1] != cube.shape[2]:
            raise InputError(f"{path}: psf_cube must have shape (N, dim, dim), got "
                             f"{cube.shape}")
        meta = tree.get("meta", {})
        if not isinstance(meta, Mapping):
            raise InputError(f"{path}: meta must be a mapping, got {type(meta).__name__}")
        meta = dict(meta)
        src = tree.get("sources")
        if src is None or isinstance(src, Table):
            sources = None if src is None else Table(src, copy=True)
        elif isinstance(src, Mapping):  # files written by astromix before the table node
            try:
                sources = Table({k: np.array(v) for k, v in src.items()}) if src else None
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}: sources is not a table: {exc}") from None
        else:
            raise InputError(f"{path}: sources must be a table, got {type(src).__name__}")
        if sources is not None and len(sources) != cube.shape[0]:
            raise InputError(f"{path}: the source table has {len(sources)} rows for "
                             f"{cube.shape[0]} PSFs")
    return cube, sources, meta


def read_psf_cube(path):
    """Read a cube written by :func:`write_psf_cube`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.fits``, ``.fits.gz``, ``.fit``, ``.asdf`` or ``.npy`` file (the
        format follows the extension).

    Returns
    -------
    cube : ndarray, shape (N, dim, dim)
        The PSF stamps (float64 from FITS and ASDF; the stored dtype from
        ``.npy``).
    sources : astropy.table.Table or None
        The source table (FITS extension ``SOURCES`` or ASDF ``sources``);
        None when there is none, and always for ``.npy``.
    meta : dict
        FITS primary header cards other than ``SIMPLE``, ``BITPIX``,
        ``EXTEND`` and ``NAXIS*``, or the ASDF ``meta`` tree; empty for
        ``.npy``.

    Raises
    ------
    InputError
        If the file is missing or not one of the formats, or an ASDF file is
        not a readable ASDF file (e.g. truncated), has no ``psf_cube`` of
        shape (N, dim, dim), or a ``sources`` or ``meta`` of the wrong type;
        the message names the file.

    Notes
    -----
    ASDF files written before the source table was stored as a table node
    (a mapping of column name to array) are still read; their numeric
    columns come first.
    """
    from astropy.table import Table

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist")
    low = path.lower()
    if low.endswith(_FITS_SUFFIXES):
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdul:
            cube = np.array(hdul[0].data, dtype=np.float64)
            meta = {k: v for k, v in hdul[0].header.items()
                    if k not in ("SIMPLE", "BITPIX", "EXTEND", "") and not k.startswith("NAXIS")}
            sources = Table(hdul["SOURCES"].data) if "SOURCES" in hdul else None
        return cube, sources, meta
    if low.endswith(".asdf"):
        return _read_psf_cube_asdf(path)
    if low.endswith(".npy"):
        return np.load(path), None, {}
    raise InputError(f"unknown PSF cube format for {path!r}")
