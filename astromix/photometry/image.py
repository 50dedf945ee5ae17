"""Image photometry between two instruments: a Fourier-space fit of a whole image (imphot's).

:func:`fit_image_photometry` models a target image (e.g. MUSE) as a reference
image of the same sky (e.g. HST), resampled onto the target's pixels, blurred
by a Moffat kernel, scaled, shifted and offset.  The fit is done on the
Fourier transforms of the two images (REFERENCE.md, "imphot"; imphot by
M. Shepherd for the MUSE Hubble Ultra Deep Field papers, Bacon et al. 2017,
A&A 608, A1)::

    M(f) = bg w(f) + scale H(f) Moffat(f) exp(-2 pi i (dx fx + dy fy))

where ``H`` is the transform of the (cropped, median-subtracted, tapered)
reference, ``w`` that of the taper and ``Moffat(f)`` the transform of a
unit-flux circular Moffat profile.  That is imphot's model (``model="imphot"``);
by default (``model="windowed"``) the taper multiplies the blurred, shifted
reference instead, as it multiplies the target, which removes a bias of a few
sigma of imphot's model where taper zones cover much of the field.
"""

import dataclasses
import logging
import math
import os
import time
import warnings

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, special

from ..errors import AstromixError, InputError
from .results import Measurement, PhotometryResult

__all__ = ["fit_image_photometry", "ImagePhotometryResult", "moffat_transform"]

log = logging.getLogger("astromix")

#: Bounds of the Moffat index beta in the fit.  Beyond 50 a Moffat is a Gaussian within
#: about 1% and its transform (through K_{beta-1}) overflows in double precision.
BETA_RANGE = (1.01, 50.0)
#: imphot's model of HST's PSF: a Moffat of FWHM 0.085 arcsec and beta 1.6 (fits to HST UDF
#: stars at 30 mas/px).
HST_PSF = (0.085, 1.6)
#: Nodes of the radial grid on which the Moffat transform is evaluated and interpolated.
_N_RADIAL = 2048
#: Fewest unmasked pixels an image fit needs.
_MIN_PIXELS = 25
#: Floor of the reference PSF's transform where the windowed model divides by it.
_MIN_PSF_TRANSFORM = 1e-8
#: Order in which the parameters are stored in the fit vector.
_PARAMS = ("scale", "bg", "fwhm", "beta", "dx", "dy")
#: The parameters the model depends on non-linearly (scale and bg are linear).
_NONLINEAR = _PARAMS[2:]


# -- the Moffat's transform -------------------------------------------------------------------

def moffat_transform(q, fwhm, beta, *, derivative=False):
    r"""The 2-D Fourier transform of a unit-flux circular Moffat profile.

    For ``I(r) ∝ (1 + r^2/a^2)^-beta`` with ``a^2 = fwhm^2 / (4 (2^(1/beta) -
    1))`` (REFERENCE.md, imphot), the transform at radial frequency ``q`` is
    the Hankel transform ``2 pi ∫ I(r) J0(2 pi q r) r dr``, known in closed
    form:

    ``F(q) = 2 x^nu K_nu(2 x) / Gamma(nu)``,  ``x = pi a q``,  ``nu = beta - 1``,

    with ``K_nu`` the modified Bessel function of the second kind; ``F(0) =
    1``.  It is evaluated in logarithms with the exponentially scaled
    :func:`scipy.special.kve`; where ``K_nu`` overflows (large ``nu``, tiny
    ``x``) the series ``exp(-x^2 / (nu - 1))`` replaces it.  This is the exact
    transform of the continuous profile: imphot instead took the FFT of the
    Moffat sampled at the pixel centres, which aliases when the FWHM spans few
    pixels.

    Parameters
    ----------
    q : array-like
        Radial spatial frequency [cycles per unit of ``fwhm``], >= 0.
    fwhm : float
        FWHM of the profile (> 0), e.g. in arcsec with ``q`` in cycles/arcsec.
    beta : float
        Moffat index, in ``BETA_RANGE`` (1.01 to 50).
    derivative : bool, optional
        Also return ``dF/dfwhm``.

    Returns
    -------
    F : ndarray
        The transform, same shape as ``q`` (1 at ``q = 0``, decreasing).
    dF_dfwhm : ndarray
        Only with ``derivative=True``: ``-4 x^(nu+1) K_(nu-1)(2 x) / (Gamma(nu) fwhm)``.

    Examples
    --------
    >>> from astromix.photometry import moffat_transform
    >>> [round(float(v), 6) for v in moffat_transform([0.0, 0.5, 1.0], 0.8, 2.5)]
    [1.0, 0.348962, 0.063841]
    """
    from ..models.moffat import moffat_alpha

    q = np.asarray(q, dtype=np.float64)
    nu = float(beta) - 1.0
    a = float(moffat_alpha(fwhm, beta))
    x = np.pi * a * q
    f = np.ones_like(x)
    d = np.zeros_like(x)
    pos = x > 0
    xp = x[pos]
    lx = np.log(xp) if xp.size else xp
    lg = special.gammaln(nu)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        val = np.exp(math.log(2.0) + nu * lx + np.log(special.kve(nu, 2.0 * xp)) - 2.0 * xp - lg)
        bad = ~np.isfinite(val)
        if bad.any():
            val[bad] = np.exp(-xp[bad] ** 2 / max(nu - 1.0, 1e-12))
        f[pos] = val
        if derivative:
            dx = -np.exp(math.log(4.0) + nu * lx + np.log(special.kve(nu - 1.0, 2.0 * xp))
                         - 2.0 * xp - lg)
            bad = ~np.isfinite(dx)
            if bad.any():
                dx[bad] = -2.0 * xp[bad] / max(nu - 1.0, 1e-12)
            d[pos] = dx * xp / float(fwhm)
    return (f, d) if derivative else f


class _Radial:
    """Linear interpolation of radial functions from a fine 1-D grid onto the FFT pixels."""

    def __init__(self, q, n=_N_RADIAL):
        q = np.asarray(q, dtype=np.float64)
        qmax = float(q.max()) if q.size else 1.0
        self.nodes = np.linspace(0.0, qmax if qmax > 0 else 1.0, n)
        h = self.nodes[1]
        t = q / h
        self.idx = np.minimum(t.astype(np.intp), n - 2)
        self.frac = t - self.idx

    def __call__(self, g):
        return g[self.idx] + (g[self.idx + 1] - g[self.idx]) * self.frac


# -- inputs ------------------------------------------------------------------------------------

def _finite(value, what, *, lo=None, hi=None, arcsec=False):
    """A finite float (None passes) in [lo, hi]; ``arcsec``: a number [arcsec] or an angle."""
    if value is None:
        return None
    if arcsec:
        from .star import _arcsec

        value = _arcsec(value, what, positive=False)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (
            f" >= {lo}" if lo is not None else "")
        raise InputError(f"{what} must be a finite number{rng}, got {value}")
    return value


def _read_regions(regions):
    """A list of regions (regions package objects) from a file, text, region(s) or a list."""
    try:
        from regions import Region, Regions
    except ImportError:  # pragma: no cover - optional dependency
        raise InputError("ds9 regions need the 'regions' package (pip install regions)"
                         ) from None
    if regions is None:
        return []
    if isinstance(regions, Regions):
        return list(regions)
    if isinstance(regions, Region):
        return [regions]
    if isinstance(regions, (str, os.PathLike)):
        text = os.fspath(regions)
        is_file = os.path.isfile(text)
        what = f"the ds9 region file {text!r}" if is_file else f"the ds9 regions {text[:60]!r}"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if is_file:
                    out = list(Regions.read(text, format="ds9"))
                elif "(" not in text:
                    raise InputError(f"no such region file: {text!r}")
                else:
                    out = list(Regions.parse(text, format="ds9"))
        except InputError:
            raise
        except Exception as exc:  # the regions parser raises several kinds
            raise InputError(f"cannot read {what}: {exc}") from None
        # the parser skips the lines it cannot read (a misspelt shape, no coordinate frame)
        # with a warning: pass them on, and refuse a file or text of which nothing is left
        skipped = [" ".join(str(w.message).split()) for w in caught
                   if not issubclass(w.category, DeprecationWarning)]
        if not out:
            why = f" ({skipped[0]}" + (f"; {len(skipped) - 1} more" if len(skipped) > 1
                                      else "") + ")" if skipped else ""
            raise InputError(f"{what} gives no regions{why}")
        for line in skipped:
            log.warning("%s: %s", what, line)
        return out
    if isinstance(regions, (list, tuple)):
        out = []
        for item in regions:
            out.extend(_read_regions(item))
        return out
    raise InputError("regions must be a ds9 region file, ds9 region text, a regions.Region, "
                     f"a regions.Regions or a list of them; got {type(regions).__name__}")


def region_mask(regions, wcs, shape, *, pixel_wcs=None):
    """The pixels that ds9 regions exclude from a fit, on an image of ``shape``.

    Include regions (ds9 default) keep only the pixels inside at least one of
    them; exclude regions (``-circle(...)`` in ds9, ``meta["include"]``
    false) remove the pixels inside them.  Sky regions (fk5, icrs, ...) are
    placed with ``wcs``; pixel regions (ds9 ``image`` coordinates) are in the
    image's pixels.  A pixel is inside when its centre is.

    Parameters
    ----------
    regions : str, os.PathLike, regions.Region, regions.Regions or list
        A ds9 region file, ds9 region text, or region objects.
    wcs : astropy.wcs.WCS
        The image's celestial WCS (needed for sky regions).
    shape : (int, int)
        The image's shape (ny, nx).
    pixel_wcs : astropy.wcs.WCS, optional
        The WCS of the image whose pixels the pixel regions are given in,
        when it is not this one (e.g. a grid grown around it): they are
        placed on the sky with it, then on this image with ``wcs``.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True for the pixels excluded.

    Raises
    ------
    InputError
        If the regions cannot be read, a region file or text gives no region
        (the parser skipped every line: a misspelt shape, no coordinate
        frame, not a region file), or sky regions need a WCS that is not an
        astropy WCS.

    Notes
    -----
    The lines the ds9 parser skips are logged as warnings (``astromix``
    logger) with the parser's reason.
    """
    regs = _read_regions(regions)      # InputError when the regions package is missing
    from regions import SkyRegion

    ny, nx = shape
    include = np.zeros(shape, dtype=bool)
    exclude = np.zeros(shape, dtype=bool)
    any_include = False
    for reg in regs:
        if isinstance(reg, SkyRegion):
            try:
                reg = reg.to_pixel(wcs)
            except Exception as exc:  # noqa: BLE001 - the WCS may be of any kind
                raise InputError(f"cannot place the sky region {reg!r} with the image's WCS: "
                                 f"{exc}") from None
        elif pixel_wcs is not None:
            try:
                reg = reg.to_sky(pixel_wcs).to_pixel(wcs)
            except Exception as exc:  # noqa: BLE001 - the WCS may be of any kind
                raise InputError(f"cannot place the pixel region {reg!r} on the reference's "
                                 f"grid around the target: {exc}") from None
        keep = bool(reg.meta.get("include", True))
        try:
            img = reg.to_mask(mode="center").to_image(shape)
        except Exception as exc:  # noqa: BLE001 - e.g. regions that cannot be rasterised
            raise InputError(f"cannot rasterise the region {reg!r}: {exc}") from None
        inside = np.zeros(shape, dtype=bool) if img is None else img > 0
        if keep:
            any_include = True
            include |= inside
        else:
            exclude |= inside
    return (~include if any_include else np.zeros(shape, dtype=bool)) | exclude


def _taper(good, taper):
    """imphot's smoothed mask: erode the good area by ``taper`` px, smooth with a Blackman kernel.

    Masked pixels stay exactly 0; pixels more than ``taper`` px inside the good
    area are 1.  ``taper < 2`` gives the plain 0/1 mask.
    """
    if taper < 2:
        return good.astype(np.float64)
    width = 2 * (int(taper) // 2) + 1
    eroded = ndimage.binary_erosion(good, structure=np.ones((width, width), dtype=bool),
                                    border_value=0)
    kernel = np.blackman(width + 2)[1:width + 1]
    kernel /= kernel.sum()
    w = ndimage.convolve1d(eroded.astype(np.float64), kernel, axis=0, mode="constant")
    return ndimage.convolve1d(w, kernel, axis=1, mode="constant")


def _extended_grid(exp, ex, ey):
    """An empty Exposure on ``exp``'s pixel grid grown by ``ex`` px left and right and ``ey`` px
    below and above (its pixel (ex, ey) is ``exp``'s pixel (0, 0)), or None when its WCS is
    neither an astropy WCS nor a gwcs (the reference is then regridded onto ``exp`` itself).

    The WCS is moved by :func:`astromix.data.exposure._shift_wcs` (a gwcs's bounding box with
    it, so the pixels beyond it map to no sky and stay masked).
    """
    from ..data.exposure import Exposure, _is_astropy_wcs, _is_gwcs, _shift_wcs

    if not (_is_astropy_wcs(exp.wcs) or _is_gwcs(exp.wcs)):
        return None
    ny, nx = exp.shape
    shape = (ny + 2 * ey, nx + 2 * ex)
    return Exposure(np.zeros(shape), wcs=_shift_wcs(exp.wcs, (-ex, -ey), shape), name=exp.name)


def _shift_int(data, mask, sx, sy):
    """Shift an image and its mask by whole pixels (sx along x, sy along y); new pixels masked."""
    if sx == 0 and sy == 0:
        return data, mask
    ny, nx = data.shape
    out = np.zeros_like(data)
    om = np.ones_like(mask)
    if abs(sx) < nx and abs(sy) < ny:
        src_y = slice(max(0, -sy), ny - max(0, sy))
        dst_y = slice(max(0, sy), ny - max(0, -sy))
        src_x = slice(max(0, -sx), nx - max(0, sx))
        dst_x = slice(max(0, sx), nx - max(0, -sx))
        out[dst_y, dst_x] = data[src_y, src_x]
        om[dst_y, dst_x] = mask[src_y, src_x]
    return out, om


# -- the result --------------------------------------------------------------------------------

@dataclasses.dataclass
class ImagePhotometryResult(PhotometryResult):
    """The photometry of a target image against a reference image, from a whole-image fit.

    Every quantity is a :class:`~astromix.photometry.Measurement` (value,
    1-sigma error, fixed).  The fitted relation is ``target ≈ scale *
    (reference ⊗ Moffat(fwhm, beta)) shifted by (dx, dy) + bg``.
    :func:`fit_image_photometry` builds it; each parameter is also an
    attribute of the same name.  The parameters from ``name`` on are
    optional (default ``""`` for the strings, None for the others).

    Parameters
    ----------
    fwhm : Measurement
        FWHM [arcsec] of the Moffat kernel that blurs the reference to the
        target; with ``reference_psf`` given (the default for HST), the
        target was first blurred by the reference's PSF, so this
        approximates the target's own PSF (imphot's convention).
    beta : Measurement
        Moffat index of that kernel.
    scale : Measurement
        Target flux / reference flux: target data units per reference data
        unit (per target pixel once the reference is regridded).
    bg : Measurement
        Background offset in target units per pixel: ``target = scale *
        reference + bg``.
    dx, dy : Measurement
        [arcsec] along the target's +x and +y pixel axes: the shift of the
        reference's features that aligns them with the target's
        (target position - reference position).
    dra, ddec : Measurement
        [arcsec] the same shift on the sky, to the east and the north.
    rms : Measurement
        RMS of the image-plane residual [target units] over the fitted pixels
        at full taper weight (all fitted pixels when fewer than 25 are)
        (error nan).
    name : str
        The target's name.
    target_unit : str
        The target's data unit ("" when none).
    image, model, residual : ndarray, shape (ny, nx)
        Over the fitted area (``crop``): the target as fitted (tapered, and
        blurred by ``reference_psf``), the model and their difference, in
        target units; NaN on masked pixels.
    reference : ndarray, shape (ny, nx)
        The regridded reference over the same area, shifted by whole pixels
        as in the last fit (reference units).
    mask : ndarray of bool, shape (ny, nx)
        Pixels left out (either image masked, regions, outside the overlap).
    weight : ndarray, shape (ny, nx)
        The taper applied to both images (0 to 1).
    crop : tuple of slice
        ``(slice_y, slice_x)`` of the fitted area in the target's pixels.
    pixel_scale : (float, float)
        The target's pixel sides along x and y [arcsec].
    jacobian : ndarray, shape (2, 2)
        The target's sky Jacobian [arcsec / px] at the centre of the area
        (east, north by x, y).
    wcs : astropy.wcs.WCS or None
        The WCS of the fitted area (None for a non-FITS WCS).
    covariance : ndarray, shape (6, 6)
        Covariance of (scale, bg, fwhm, beta, dx, dy); rows and columns of
        fixed parameters are 0, those of parameters the fit cannot determine
        NaN.
    profile : dict
        Azimuthal means of the Fourier amplitudes: ``q`` [cycles/arcsec],
        ``target``, ``model``, ``residual``.
    reference_psf : tuple or None
        (fwhm [arcsec], beta) of the reference's PSF applied to the target.
    info : dict
        ``nfev``, ``refits``, ``shift_px`` (whole-pixel pre-shift of the
        reference), ``fft_shape``, ``n_pixels``, ``medians`` (target,
        reference), ``seconds``, ``status`` and ``message`` of
        :func:`scipy.optimize.least_squares`, ``regrid`` (method or None),
        ``model`` (``"windowed"`` or ``"imphot"``) and ``free`` (tuple of the
        fitted parameters' names).
    """

    fwhm: Measurement
    beta: Measurement
    scale: Measurement
    bg: Measurement
    dx: Measurement
    dy: Measurement
    dra: Measurement
    ddec: Measurement
    rms: Measurement
    name: str = ""
    target_unit: str = ""
    image: np.ndarray = dataclasses.field(default=None, repr=False)
    model: np.ndarray = dataclasses.field(default=None, repr=False)
    residual: np.ndarray = dataclasses.field(default=None, repr=False)
    reference: np.ndarray = dataclasses.field(default=None, repr=False)
    mask: np.ndarray = dataclasses.field(default=None, repr=False)
    weight: np.ndarray = dataclasses.field(default=None, repr=False)
    crop: tuple = dataclasses.field(default=None, repr=False)
    pixel_scale: tuple = dataclasses.field(default=None, repr=False)
    jacobian: np.ndarray = dataclasses.field(default=None, repr=False)
    wcs: object = dataclasses.field(default=None, repr=False)
    covariance: np.ndarray = dataclasses.field(default=None, repr=False)
    profile: dict = dataclasses.field(default=None, repr=False)
    reference_psf: tuple = None
    info: dict = dataclasses.field(default=None, repr=False)

    _measurements = ("fwhm", "beta", "scale", "bg", "dx", "dy", "dra", "ddec", "rms")

    @property
    def units(self):
        """dict: the unit of every measurement ("" when dimensionless)."""
        return {"fwhm": "arcsec", "beta": "", "scale": "", "bg": self.target_unit,
                "dx": "arcsec", "dy": "arcsec", "dra": "arcsec", "ddec": "arcsec",
                "rms": self.target_unit}

    # -- corrections ----------------------------------------------------------------------
    def apply_corrections(self, target, *, resample=False):
        """The target image aligned with the reference and rescaled to its flux units.

        ``corrected = (target - bg) / scale`` (reference units per target
        pixel), and its pointing corrected by ``(dx, dy)``: with
        ``resample=False`` (default) the pixels are kept and the WCS's
        reference pixel moves by ``(dx / px, dy / py)`` (imphot: add dx/px
        to CRPIX1); with ``resample=True`` the pixels are shifted by ``(-dx,
        -dy)`` (cubic spline, :func:`scipy.ndimage.shift`, with the masked
        pixels first filled with the nearest valid value and the image
        extended by its edge values, so that the spline does not ring next to
        them) and the WCS is kept.  The PSF is not changed.

        Parameters
        ----------
        target : str, Exposure, NDData or tuple
            The target image that was fitted (or another on the same grid).
        resample : bool, optional
            Shift the pixels instead of the WCS.

        Returns
        -------
        Exposure
            The corrected image, uncertainty divided by ``scale``, same mask
            (grown by the shift when resampling).

        Raises
        ------
        InputError
            If ``scale`` is not positive, or the WCS is not an astropy WCS
            (use ``resample=True``).
        """
        import copy

        from astropy.nddata import StdDevUncertainty
        from astropy.wcs import WCS

        from ..data.exposure import Exposure
        from .helpers import _as_image

        exp = _as_image(target, "the target image")
        s, b = self.scale.value, self.bg.value
        if not s > 0:
            raise InputError(f"cannot rescale with scale = {s:g} (not positive)")
        px, py = self.pixel_scale
        sx, sy = self.dx.value / px, self.dy.value / py
        data = np.where(exp.mask, 0.0, (np.asarray(exp.data, dtype=np.float64) - b) / s)
        mask = exp.mask.copy()
        sigma = None
        if exp.uncertainty is not None:
            w = exp.weight
            sigma = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), 1.0) / s
        wcs = exp.wcs
        if resample:
            if mask.any() and not mask.all():
                # fill the masked pixels with the nearest valid value, so that the spline does
                # not ring (by up to 10% of the signal) on the unmasked pixels next to them
                near = ndimage.distance_transform_edt(mask, return_distances=False,
                                                      return_indices=True)
                data = data[tuple(near)]
            data = ndimage.shift(data, (-sy, -sx), order=3, mode="nearest")
            moved = ndimage.shift(mask.astype(np.float64), (-sy, -sx), order=1,
                                  mode="constant", cval=1.0)
            mask = moved > 1e-3
            if sigma is not None:
                sigma = ndimage.shift(sigma, (-sy, -sx), order=1, mode="nearest")
            data = np.where(mask, 0.0, data)
        else:
            if not isinstance(wcs, WCS):
                raise InputError("the target's WCS is not an astropy WCS: its reference pixel "
                                 "cannot be moved; use resample=True")
            wcs = copy.deepcopy(wcs)
            wcs.wcs.crpix = wcs.wcs.crpix + np.array([sx, sy])
            wcs.wcs.set()
        unc = None if sigma is None else StdDevUncertainty(np.where(mask, 1.0, sigma))
        meta = dict(exp.meta)
        meta["corrections"] = {"scale": s, "bg": b, "dx": self.dx.value, "dy": self.dy.value,
                               "resample": bool(resample)}
        return Exposure(data, uncertainty=unc, mask=mask, wcs=wcs, name=exp.name, meta=meta)

    # -- output ---------------------------------------------------------------------------
    def write_fits(self, folder, *, prefix=None, overwrite=False):
        """Write the fitted image, the model and the residual as three FITS files.

        Files ``<prefix>_image.fits``, ``<prefix>_model.fits`` and
        ``<prefix>_residual.fits`` in ``folder`` (created if needed), each a
        primary HDU over the fitted area with its WCS and the fitted values
        as header cards (``FWHM``, ``BETA``, ``SCALE``, ``BG``, ``DX``,
        ``DY``, ``DRA``, ``DDEC``, ``RMS`` and their ``E_`` errors).  Masked
        pixels are NaN.  Each file is written to a temporary file and renamed.

        Parameters
        ----------
        folder : str or os.PathLike
            The output folder, created if needed.
        prefix : str, optional
            Default: the target's name, else ``"image_fit"``.
        overwrite : bool, optional
            Replace existing files (default False: InputError).

        Returns
        -------
        list of str
            The three paths (image, model, residual); each file holds a
            float32 image of shape ``(ny, nx)`` in target units.

        Raises
        ------
        InputError
            If the result has no ``image``, ``model`` or ``residual`` array (one
            built by hand without them), ``folder`` cannot be created or is not
            writable, or a file exists and ``overwrite`` is False (checked for
            the three before any is written).
        """
        from astropy.io import fits

        from .._atomic import atomic_path
        from ..cli._shared import prepare_output_folder

        kinds = ("image", "model", "residual")
        missing = [kind for kind in kinds if getattr(self, kind) is None]
        if missing:
            raise InputError(f"this result has no {', '.join(missing)} array to write "
                             "(fit_image_photometry sets them)")
        folder = os.fspath(folder)
        prepare_output_folder(folder)
        prefix = prefix or self.name or "image_fit"
        paths = [os.path.join(folder, f"{prefix}_{kind}.fits") for kind in kinds]
        for path in paths:
            if os.path.exists(path) and not overwrite:
                raise InputError(f"{path!r} exists (use overwrite=True)")
        header = fits.Header()
        if self.wcs is not None:
            header.update(self.wcs.to_header())
        for key, m in self.measurements().items():
            header[key.upper()[:8]] = (m.value, f"{key} [{self.units.get(key) or '-'}]")
            if math.isfinite(m.error):
                header[("E_" + key.upper())[:8]] = m.error
        if self.target_unit:
            header["BUNIT"] = self.target_unit
        for kind, path in zip(kinds, paths):
            hdr = header.copy()
            hdr["CONTENT"] = (kind, "astromix image photometry")
            with atomic_path(path) as tmp:
                fits.PrimaryHDU(np.asarray(getattr(self, kind), dtype=np.float32),
                                header=hdr).writeto(tmp, overwrite=True)
        return paths

    def plot(self, fig=None):
        """A figure of the fit: target, model, residual, reference and the radial profile.

        Top row: the fitted target image, the model and the residual (same
        colour scale for image and model).  Bottom row: the regridded
        reference, the azimuthal mean of the Fourier amplitudes of the target,
        the model and the residual against spatial frequency (where the fit
        is made), and the fitted values.

        Parameters
        ----------
        fig : matplotlib.figure.Figure, optional
            Drawn into (cleared first); by default a new
            :class:`~matplotlib.figure.Figure` (no pyplot, no window).

        Returns
        -------
        matplotlib.figure.Figure
        """
        if fig is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(13, 8.5), layout="constrained")
        else:
            fig.clear()
        axes = fig.subplots(2, 3)
        good = ~self.mask & np.isfinite(self.image)
        vals = self.image[good] if good.any() else np.zeros(1)
        lo, hi = np.percentile(vals, [1.0, 99.5])
        if hi <= lo:
            hi = lo + 1.0
        unit = f" [{self.target_unit}]" if self.target_unit else ""
        for ax, img, title in ((axes[0, 0], self.image, "target" + unit),
                               (axes[0, 1], self.model, "model" + unit)):
            im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="magma")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
        res = self.residual[good] if good.any() else np.zeros(1)
        lim = max(float(np.percentile(np.abs(res), 99.5)), 1e-30)
        im = axes[0, 2].imshow(self.residual, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0, 2].set_title(f"residual (rms {self.rms.value:.3g})")
        fig.colorbar(im, ax=axes[0, 2], shrink=0.8)
        ref = self.reference
        rgood = good & np.isfinite(ref)
        rl, rh = np.percentile(ref[rgood], [1.0, 99.5]) if rgood.any() else (0.0, 1.0)
        im = axes[1, 0].imshow(np.where(self.mask, np.nan, ref), origin="lower", cmap="magma",
                               vmin=rl, vmax=rh if rh > rl else rl + 1.0)
        axes[1, 0].set_title("reference (regridded)")
        fig.colorbar(im, ax=axes[1, 0], shrink=0.8)
        ax = axes[1, 1]
        p = self.profile
        for key, style in (("target", "k-"), ("model", "C1--"), ("residual", "C0:")):
            ax.semilogy(p["q"], np.maximum(p[key], 1e-300), style, label=key)
        ax.set_xlabel("spatial frequency [cycles / arcsec]")
        ax.set_ylabel("mean |FFT|")
        ax.set_title("radial profile of the Fourier amplitudes")
        ax.legend()
        ax = axes[1, 2]
        ax.axis("off")
        lines = [f"{self.name or 'target'}"] + [
            f"{k:>5s} = {m}" + (f" {self.units[k]}" if self.units.get(k) else "")
            for k, m in self.measurements().items()]
        ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace",
                fontsize=10, transform=ax.transAxes)
        return fig


# -- the fit -----------------------------------------------------------------------------------

class _FourierProblem:
    """The Fourier-plane data of one fit and the model with its analytic Jacobian."""

    def __init__(self, tft, rft, wft, fx, fy, med_t, med_r, nx_full, window=None,
                 preshift=(0.0, 0.0), post=None):
        nxh = tft.shape[1]
        # the reference was already shifted by whole pixels: the phase only applies the rest
        self.preshift = preshift
        self.window = window
        self.pad_shape = (tft.shape[0], nx_full)
        self.shape = tft.shape
        self.T = tft.ravel()
        self.R = rft.ravel()
        self.W = wft.ravel()
        # windowed model of a target filtered by the reference's PSF P after its taper:
        # M = P (bg' w(f) + scale FFT(w IFFT(H0 K E / P))), so that K stays the target's PSF
        self.post = None
        if post is not None and window is not None:
            self.post = post.ravel()
            self.W = self.W * self.post
            self.R = self.R / np.maximum(self.post, _MIN_PSF_TRANSFORM)
        self.fx, self.fy = fx, fy
        q = np.sqrt(fx[None, :] ** 2 + fy[:, None] ** 2)
        self.radial = _Radial(q.ravel())
        self.med_t, self.med_r = med_t, med_r
        # Parseval weights of the half plane: columns other than 0 (and the Nyquist column of
        # an even-length axis) stand for two conjugate coefficients.
        c = np.full(nxh, math.sqrt(2.0))
        c[0] = 1.0
        if 2 * (nxh - 1) == nx_full:
            c[-1] = 1.0
        self.c = np.broadcast_to(c[None, :], tft.shape).ravel().copy()
        self._cache = None

    def _conv(self, z):
        """The spectrum ``z`` of an image, windowed by the taper (identity for imphot's model)."""
        if self.window is None:
            return z
        img = sfft.irfft2(z.reshape(self.shape), s=self.pad_shape)
        out = sfft.rfft2(img * self.window).ravel()
        return out if self.post is None else out * self.post

    def _parts(self, p, jac):
        key = (p.tobytes(), jac)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        scale, bg, fwhm, beta, dx, dy = p
        nodes = self.radial.nodes
        if jac:
            k1, dk1 = moffat_transform(nodes, fwhm, beta, derivative=True)
            h = 1e-4 * beta
            kb = (moffat_transform(nodes, fwhm, beta + h)
                  - moffat_transform(nodes, fwhm, beta - h)) / (2 * h)
            K, dKf, dKb = self.radial(k1), self.radial(dk1), self.radial(kb)
        else:
            K = self.radial(moffat_transform(nodes, fwhm, beta))
            dKf = dKb = None
        ex = np.exp(-2j * np.pi * (dx - self.preshift[0]) * self.fx)
        ey = np.exp(-2j * np.pi * (dy - self.preshift[1]) * self.fy)
        E = (ey[:, None] * ex[None, :]).ravel()
        RE = self.R * E
        RKE = self._conv(RE * K)
        M = (bg - self.med_t + scale * self.med_r) * self.W + scale * RKE
        out = (M, RE, RKE, K, dKf, dKb)
        self._cache = (key, out)
        return out

    def model(self, p):
        return self._parts(np.asarray(p, dtype=np.float64), False)[0]

    def residuals(self, p):
        M = self._parts(p, False)[0]
        d = (M - self.T) * self.c
        return np.concatenate([d.real, d.imag])

    def jacobian_full(self, p):
        """d(residual)/d(scale, bg, fwhm, beta, dx, dy), shape (2N, 6)."""
        scale, bg, fwhm, beta, dx, dy = p
        M, RE, RKE, K, dKf, dKb = self._parts(p, True)
        fxg = np.broadcast_to(self.fx[None, :], self.shape).ravel()
        fyg = np.broadcast_to(self.fy[:, None], self.shape).ravel()
        if self.window is None:
            cols = [self.med_r * self.W + RKE, self.W, scale * RE * dKf, scale * RE * dKb,
                    scale * RKE * (-2j * np.pi * fxg), scale * RKE * (-2j * np.pi * fyg)]
        else:
            rke = RE * K
            cols = [self.med_r * self.W + RKE, self.W, scale * self._conv(RE * dKf),
                    scale * self._conv(RE * dKb), scale * self._conv(rke * (-2j * np.pi * fxg)),
                    scale * self._conv(rke * (-2j * np.pi * fyg))]
        n = self.T.size
        jac = np.empty((2 * n, 6))
        for j, col in enumerate(cols):
            col = col * self.c
            jac[:n, j] = col.real
            jac[n:, j] = col.imag
        return jac


def _data_scale(values):
    """A positive scale of an image's values, its unit in the fit: 1.4826 MAD, else the RMS, else 1.

    It is proportional to the values, so that a fit on ``values / scale`` does not depend on
    their units.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size:
        s = 1.4826 * float(np.median(np.abs(v - np.median(v))))
        if math.isfinite(s) and s > 0:
            return s
        peak = float(np.max(np.abs(v)))
        if math.isfinite(peak) and peak > 0:
            return peak * math.sqrt(float(np.mean((v / peak) ** 2)))
    return 1.0


def _covariance(jac, s2):
    """``s2 (J^T J)^-1`` from the Jacobian's columns scaled to unit norm, and the undetermined.

    Scaling the columns makes the rank cut-off independent of the parameters' units (pinv's
    relative cut-off had dropped directions of small-valued columns, giving errors of 1e-55).
    Parameters with a part in a null direction of ``J`` (e.g. a column of zeros) get NaN
    variances and covariances.

    Returns
    -------
    cov : ndarray, shape (p, p)
    lost : ndarray of bool, shape (p,)
        The parameters the data do not determine.
    """
    p = jac.shape[1]
    norm = np.linalg.norm(jac, axis=0)
    ok = np.isfinite(norm) & (norm > 0)
    if not np.all(np.isfinite(jac[:, ok])):
        return np.full((p, p), np.nan), np.ones(p, dtype=bool)
    d = np.where(ok, norm, 1.0)
    jn = np.where(ok, jac / d, 0.0)
    _, sv, vt = np.linalg.svd(jn, full_matrices=False)
    keep = sv > sv.max(initial=0.0) * max(jn.shape) * np.finfo(np.float64).eps
    v = vt[keep]
    cov = (v.T / sv[keep] ** 2) @ v / np.outer(d, d) * s2
    lost = ~ok | np.any(np.abs(vt[~keep]) > 1e-6, axis=0)
    cov[lost, :] = np.nan
    cov[:, lost] = np.nan
    return cov, lost


def _pixel_sides(exp, x, y):
    jac = exp.jacobian(x, y)
    side = np.hypot(jac[0], jac[1])          # arcsec per px along +x, +y
    return jac, float(side[0]), float(side[1])


def _radial_profile(spectrum, q, nbins=40):
    qmax = float(q.max()) if q.size else 1.0
    edges = np.linspace(0.0, qmax * (1 + 1e-9), nbins + 1)
    which = np.clip(np.digitize(q.ravel(), edges) - 1, 0, nbins - 1)
    counts = np.bincount(which, minlength=nbins)
    sums = np.bincount(which, weights=np.abs(spectrum).ravel(), minlength=nbins)
    good = counts > 0
    return 0.5 * (edges[:-1] + edges[1:])[good], sums[good] / counts[good]


def fit_image_photometry(target, reference, *, fix_fwhm=None, fix_beta=None, fix_scale=None,
                         fix_bg=None, fix_dx=None, fix_dy=None, regions=None, margin=2.0,
                         taper=9, reference_psf=HST_PSF, model="windowed", regrid_method="exact",
                         mask=None,
                         init_fwhm=0.5, init_beta=5.0, init_dx=0.0, init_dy=0.0, max_refits=2):
    """Flux scale, background, pointing offset and PSF of a target image against a reference.

    The reference (e.g. an HST image) is resampled onto the target's pixel
    grid (e.g. MUSE's; :func:`~astromix.photometry.regrid`, flux conserving)
    and the target is modelled as the reference blurred by a circular Moffat
    kernel, scaled, shifted and offset.  The fit is made in Fourier space
    (imphot's ``fit_image_photometry``, REFERENCE.md):

    1. the masks of both images, the ``mask`` argument and the ds9 ``regions``
       (applied to the reference, whose astrometry is trusted, so they move
       with its whole-pixel pre-shift) are combined, and both images are
       cropped to the rows and columns holding unmasked pixels;
    2. both are median-subtracted (medians over the unmasked pixels) and
       zero-padded by ``margin`` arcsec (to a fast FFT length:
       :func:`scipy.fft.next_fast_len`; imphot rounds to powers of two);
    3. both are multiplied by a taper: the unmasked area eroded by ``taper``
       px and smoothed by a ``taper`` x ``taper`` Blackman kernel, so that
       masked pixels are 0 and mask edges fall smoothly;
    4. with ``T``, ``H`` and ``w`` the FFTs of the tapered target, reference
       and taper, and ``T`` multiplied by the transform of
       ``reference_psf`` (so that both images carry the reference's PSF),
       ``M(f) = bg' w(f) + scale H(f) Moffat(f) exp(-2 pi i (dx fx + dy fy))``
       (imphot's model, ``model="imphot"``; by default the taper is applied
       after the blur and shift instead, see ``model``)
       is fitted to ``T`` by least squares on the real and imaginary parts
       (:func:`scipy.optimize.least_squares`, trust-region reflective, with
       an analytic Jacobian), where ``bg' = bg - median_t + scale
       median_r`` turns the median-subtracted images back into ``target =
       scale * reference + bg``;
    5. when the fitted shift differs from the whole-pixel pre-shift of the
       reference by more than one pixel along an axis, the reference and its
       masks are shifted by the rounded fitted shift and the fit is repeated
       (at most ``max_refits`` times), so that the masks cover the same sky.

    ``Moffat(f)`` is the exact Fourier transform of a unit-flux Moffat
    profile (:func:`moffat_transform`, a closed-form Hankel transform),
    interpolated from a fine radial grid; both images are integrated over
    the target's pixels (the target by its detector, the reference by the
    exact-overlap regridding), so the continuous kernel relates them and no
    resampling window is applied (imphot multiplied the MUSE FFT by the
    Blackman window of MPDAF's resampling instead).

    Parameters
    ----------
    target : str, HDU, Exposure, NDData or tuple
        The image to characterise (e.g. MUSE): a FITS file (read with
        :func:`~astromix.photometry.read_image`: DATA/SCI extension,
        STAT/ERR, DQ), an image HDU, an :class:`~astromix.data.Exposure`,
        an :class:`~astropy.nddata.NDData` or ``(data, wcs[, sigma])``, with
        a celestial WCS.  Its mask is used; its uncertainty is not (the fit
        is unweighted, like imphot's).  Pixels should be square on the sky.
    reference : same kinds
        The sharper image of the same sky (e.g. HST), in any flux unit (the
        scale absorbs it; see :func:`~astromix.photometry.rescale_to_flux_units`),
        on any grid: it is regridded onto the target's unless it already
        shares the target's grid (per target pixel; a unit per solid angle,
        e.g. MJy/sr, stays a surface brightness: see
        :func:`~astromix.photometry.regrid`).
    fix_fwhm : float or Quantity, optional
        Hold the FWHM at this value [arcsec].
    fix_beta : float, optional
        Hold beta at this value (in ``BETA_RANGE``, 1.01 to 50).
    fix_scale : float, optional
        Hold the scale (>= 0) at this value; 0 only with fwhm, beta, dx and
        dy fixed too (they have no effect on a model without the reference).
    fix_bg : float, optional
        Hold the background offset at this value [target units].
    fix_dx, fix_dy : float or Quantity, optional
        Hold the shift along x or y at this value [arcsec].
    regions : str, os.PathLike, regions.Region(s) or list, optional
        ds9 regions (a file, region text or objects of the ``regions``
        package): include regions restrict the fit to their union, exclude
        regions (``-circle(...)``) remove areas, e.g. stars with proper
        motion, saturated or variable sources.  Sky coordinates (fk5, icrs)
        or image coordinates of the target's pixels; see :func:`region_mask`
        (a file or text that gives no region is an InputError; skipped lines
        are logged).
    margin : float or Quantity, optional
        Zero padding [arcsec] against wrap-around of shifts and blurring:
        at least the largest expected shift plus PSF width (default 2").
        With the windowed model, a reference on another grid is also
        regridded this far beyond the target's field (an astropy WCS or a
        gwcs; with ``regions``, an astropy WCS), so that the light of
        sources just outside the field, blurred into its edge pixels, is in
        the model too (``info["reference_border_px"]``: the border in
        target pixels, (x, y)).  A reference already on the target's grid
        has no pixels beyond it.
    taper : int, optional
        Width [px] of the taper at mask edges (rounded up to odd; < 2
        disables it; default 9, imphot's).
    reference_psf : (float, float) or None, optional
        (FWHM [arcsec], beta) of a Moffat model of the reference's own PSF,
        applied to the target before fitting so that the fitted Moffat
        approximates the target's PSF; default (0.085, 1.6), imphot's HST
        value.  None: not applied, and the fitted Moffat is the kernel
        relating the two images.
    model : {"windowed", "imphot"}, optional
        ``"windowed"`` (default): the taper multiplies the blurred, shifted
        reference, as it multiplies the target: ``M(f) = bg' w(f) + scale
        FFT(w IFFT(H0(f) Moffat(f) exp(...)))`` with ``H0`` the FFT of the
        untapered reference (zero only under the reference's own mask; two
        more FFTs per evaluation, about 20% more time); with
        ``reference_psf``, whose transform ``P`` filters the tapered target,
        the model is ``P (bg' w(f) + scale FFT(w IFFT(H0 Moffat exp(...) /
        P)))``, so that the taper acts on both images alike.  ``"imphot"``:
        the model above, where the taper multiplies the
        reference *before* it is blurred and shifted, as imphot does (use it
        to reproduce imphot's numbers).  The two differ within about a taper
        width of the mask edges; where those edges cover much of the fitted
        area (a small reference field, many excluded regions) or a bright
        source sits near an edge, imphot's model biases the fit by a few
        sigma (see the recovery tests), the windowed one does not.
    regrid_method : {"exact", "interp", "adaptive"}, optional
        How the reference is resampled (see :func:`~astromix.photometry.regrid`).
    mask : array-like of bool, shape of the target, optional
        More target pixels to leave out (True = bad).
    init_fwhm, init_beta : float, optional
        Start values of the FWHM [arcsec] (0.5) and beta (5), imphot's.
    init_dx, init_dy : float, optional
        Start values of the shift [arcsec] (0).
    max_refits : int, optional
        Most repetitions of the fit after whole-pixel re-alignment (2).

    Returns
    -------
    ImagePhotometryResult
        ``fwhm``, ``beta``, ``scale``, ``bg``, ``dx``, ``dy``, ``dra``,
        ``ddec`` and ``rms`` as :class:`~astromix.photometry.Measurement`;
        ``summary()``, ``to_dict()``, ``plot()``, ``write_fits()`` and
        ``apply_corrections()``.

    Raises
    ------
    InputError
        For unreadable inputs or inputs without a celestial WCS, invalid
        fixed values or options (``fix_scale=0`` with any of fwhm, beta, dx,
        dy free: the model then has no reference term to determine them),
        regions that give no region, a mask of the wrong shape, images that
        do not overlap, or fewer than 25 usable pixels.
    AstromixError
        If the least-squares fit fails.

    Notes
    -----
    Uncertainties come from the covariance ``s^2 (J^T J)^-1`` of the
    Fourier-plane fit, where ``J`` is the Jacobian of the (Parseval-weighted)
    real and imaginary residuals and ``s^2 = sum(r^2) / (N_eff - p)``, with
    ``N_eff = sum(taper^2)`` the effective number of image pixels (not the
    number of Fourier values: the zero padding correlates them), so that
    they equal those of the same least-squares fit in the image plane with
    white noise.  With ``reference_psf`` the target's noise is filtered by
    the PSF's transform ``P``: the covariance is then the sandwich
    ``s0^2 (J^T J)^-1 J^T diag(P^2) J (J^T J)^-1``, with the unfiltered noise
    level ``s0^2 = sum(r^2) / (N_eff <P^2> - tr((J^T J)^-1 J^T diag(P^2) J))``
    (``<P^2>`` the Parseval-weighted mean over the frequencies), which
    reduces to the above for ``P = 1``.  They ignore the correlation of the residuals, which come
    mostly from the differences between the two images (colour, PSF
    variations, saturation), not from noise: treat them as lower bounds.
    ``(J^T J)^-1`` is computed from ``J`` with its columns scaled to unit
    norm, so that the rank cut-off does not depend on the parameters' units;
    a parameter the data do not determine (a null direction of ``J``) gets a
    NaN error, with a warning.

    The fit is made on both images divided by a robust scale of each (1.4826
    times their median absolute deviation, else their RMS), and ``scale``,
    ``bg`` and the covariance are converted back, so that the results do not
    depend on the data units (multiplying both images by ``k`` multiplies
    ``bg``, ``rms`` and their errors by ``k`` and changes nothing else).  A
    fit of a free fwhm, beta, dx or dy that stops at its start point is
    reported with a warning giving those start values (``astromix``
    logger); with only ``scale`` and ``bg`` free the fit is linear and its
    start, their linear least-squares solution, is already the optimum.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix.photometry import fit_image_photometry
    >>> from astromix.photometry.image import moffat_transform
    >>> rng = np.random.default_rng(1)
    >>> def wcs(n):
    ...     w = WCS(naxis=2)
    ...     w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ...     w.wcs.crval = [53.0, -27.8]
    ...     w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    ...     w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    ...     return w
    >>> ref = np.zeros((64, 64))
    >>> ref[rng.integers(8, 56, 30), rng.integers(8, 56, 30)] = rng.uniform(1, 5, 30)
    >>> f = np.fft.fftfreq(64, 0.2)
    >>> q = np.hypot(f[None, :], f[:, None])
    >>> k = moffat_transform(q, 0.8, 3.0) * np.exp(-2j * np.pi * 0.1 * f[None, :])
    >>> tgt = 2.0 * np.fft.ifft2(np.fft.fft2(ref) * k).real + 0.5
    >>> res = fit_image_photometry((tgt, wcs(64)), (ref, wcs(64)), reference_psf=None,
    ...                            margin=0.0, taper=0)
    >>> [round(getattr(res, n).value, 3) for n in ("fwhm", "beta", "scale", "bg", "dx")]
    [0.8, 3.0, 2.0, 0.5, 0.1]
    """
    from astropy.wcs import WCS
    from scipy.optimize import least_squares

    from .._threads import single_threaded_blas
    from .helpers import _as_image, _regrid, same_grid

    t_start = time.perf_counter()
    fixed = {"fwhm": _finite(fix_fwhm, "fix_fwhm", lo=1e-9, arcsec=True),
             "beta": _finite(fix_beta, "fix_beta", lo=BETA_RANGE[0], hi=BETA_RANGE[1]),
             "scale": _finite(fix_scale, "fix_scale", lo=0.0),
             "bg": _finite(fix_bg, "fix_bg"),
             "dx": _finite(fix_dx, "fix_dx", arcsec=True),
             "dy": _finite(fix_dy, "fix_dy", arcsec=True)}
    margin = _finite(margin, "margin", lo=0.0, arcsec=True)
    if isinstance(taper, bool) or not isinstance(taper, (int, np.integer, float)) or not (
            math.isfinite(taper) and taper >= 0):
        raise InputError(f"taper must be a number of pixels >= 0, got {taper!r}")
    taper = int(math.ceil(taper))
    if model not in ("imphot", "windowed"):
        raise InputError(f"model must be 'imphot' or 'windowed', got {model!r}")
    windowed = model == "windowed"
    if reference_psf is not None:
        try:
            rp_fwhm, rp_beta = reference_psf
        except (TypeError, ValueError):
            raise InputError("reference_psf must be (fwhm [arcsec], beta) or None") from None
        rp_fwhm = _finite(rp_fwhm, "reference_psf fwhm", arcsec=True, lo=1e-9)
        rp_beta = _finite(rp_beta, "reference_psf beta", lo=BETA_RANGE[0], hi=BETA_RANGE[1])
        reference_psf = (rp_fwhm, rp_beta)
    if isinstance(max_refits, bool) or not isinstance(max_refits, (int, np.integer)) \
            or max_refits < 0:
        raise InputError(f"max_refits must be an integer >= 0, got {max_refits!r}")
    init = {"fwhm": _finite(init_fwhm, "init_fwhm", lo=1e-6, arcsec=True),
            "beta": _finite(init_beta, "init_beta", lo=BETA_RANGE[0], hi=BETA_RANGE[1]),
            "dx": _finite(init_dx, "init_dx", arcsec=True),
            "dy": _finite(init_dy, "init_dy", arcsec=True)}
    for k in _NONLINEAR:
        if fixed[k] is not None:
            init[k] = fixed[k]
    if fixed["scale"] == 0.0:
        loose = [k for k in _NONLINEAR if fixed[k] is None]
        if loose:
            raise InputError("fix_scale = 0 leaves the reference out of the model, so "
                             f"{', '.join(loose)} cannot be determined: give fix_scale > 0, "
                             "or fix them too")

    t_exp = _as_image(target, "the target image")
    r_exp = _as_image(reference, "the reference image")
    name = t_exp.name or ""
    regridded = None
    shape = t_exp.shape
    ny0, nx0 = shape
    jac_c, px, py = _pixel_sides(t_exp, 0.5 * (nx0 - 1), 0.5 * (ny0 - 1))
    pad_x, pad_y = int(math.ceil(margin / px)), int(math.ceil(margin / py))   # [px]
    # the windowed model blurs the reference beyond the target's field too, when the
    # reference covers it: regridded onto the target's grid grown by the margin, so that the
    # light of sources just outside the field reaches its edge pixels as it does the target's
    ex = ey = 0
    if not same_grid(r_exp, t_exp):
        t0 = time.perf_counter()
        grid = None
        if windowed and (regions is None or isinstance(t_exp.wcs, WCS)):
            # (pixel regions are moved onto the grown grid through the sky: astropy WCS only)
            ex, ey = pad_x, pad_y
            grid = _extended_grid(t_exp, ex, ey) if ex or ey else None
        if grid is None:
            ex = ey = 0
            grid = t_exp
        r_exp = _regrid(r_exp, grid, regrid_method)
        regridded = regrid_method
        log.debug("reference regridded onto the target grid (%s; grown by %d, %d px) in %.3f s",
                  regrid_method, ex, ey, time.perf_counter() - t0)
    inner = (slice(ey, ey + ny0), slice(ex, ex + nx0))     # the target's pixels in r_exp's
    t_mask = np.array(t_exp.mask, dtype=bool)
    if mask is not None:
        extra = np.asarray(mask)
        if extra.shape != shape:
            raise InputError(f"mask has shape {extra.shape}, the target {shape}")
        t_mask |= extra.astype(bool)
    r_mask = np.array(r_exp.mask, dtype=bool)
    if regions is not None:
        if ex or ey:
            r_mask |= region_mask(regions, r_exp.wcs, r_mask.shape, pixel_wcs=t_exp.wcs)
        else:
            r_mask |= region_mask(regions, t_exp.wcs, shape)
    t_data = np.where(t_mask, 0.0, np.asarray(t_exp.data, dtype=np.float64))
    r_data0 = np.where(r_mask, 0.0, np.asarray(r_exp.data, dtype=np.float64))
    # the fit is made on images divided by a robust scale of each, so that its tolerances and
    # start values do not depend on the data units (erg/s/cm2/A values of 1e-20 had stopped it
    # at its start point); scale, bg and their covariance are converted back afterwards
    t_unit = _data_scale(t_data[~t_mask])
    r_unit = _data_scale(r_data0[inner][~r_mask[inner]])
    t_data = t_data / t_unit
    r_data0 = r_data0 / r_unit
    to_phys = np.array([t_unit / r_unit, t_unit, 1.0, 1.0, 1.0, 1.0])
    fixed_n = dict(fixed)
    for i, k in enumerate(("scale", "bg")):
        if fixed[k] is not None:
            fixed_n[k] = fixed[k] / to_phys[i]

    free = [k for k in _PARAMS if fixed[k] is None]
    refits = 0
    sx = sy = 0
    nfev = 0
    with single_threaded_blas():
        while True:
            sx = int(math.floor(init["dx"] / px + 0.5))
            sy = int(math.floor(init["dy"] / py + 0.5))
            r_ext, r_m_ext = _shift_int(r_data0, r_mask, sx, sy)
            r_data, r_m = r_ext[inner], r_m_ext[inner]
            bad = t_mask | r_m
            rows = np.nonzero(~bad.all(axis=1))[0]
            cols = np.nonzero(~bad.all(axis=0))[0]
            if rows.size == 0 or np.count_nonzero(~bad) < _MIN_PIXELS:
                raise InputError(f"only {np.count_nonzero(~bad)} pixels are valid in both images "
                                 f"(at least {_MIN_PIXELS} needed): check that they overlap, "
                                 "their masks and the regions")
            crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            m = bad[crop]
            tc, rc = t_data[crop], r_data[crop]
            med_t = float(np.median(tc[~m]))
            med_r = float(np.median(rc[~m]))
            nyc, nxc = m.shape
            # the crop sits (ey, ex) px into the padded arrays, below and left of it the
            # reference's pixels beyond the crop (grown grid), then the zero padding
            nyp = sfft.next_fast_len(nyc + 2 * ey + pad_y, real=True)
            nxp = sfft.next_fast_len(nxc + 2 * ex + pad_x, real=True)
            at = (slice(ey, ey + nyc), slice(ex, ex + nxc))
            good = np.zeros((nyp, nxp), dtype=bool)
            good[at] = ~m
            w = _taper(good, taper)
            if not np.any(w > 0):
                raise InputError(f"the taper of {taper} px leaves no pixel: the unmasked areas "
                                 "are too thin; lower taper")
            tpad = np.zeros((nyp, nxp))
            rpad = np.zeros((nyp, nxp))
            tpad[at] = np.where(m, 0.0, tc - med_t)
            # the windowed model blurs the untapered reference, which is valid wherever its own
            # mask is not set (also under the target's mask: the blurred light of a source the
            # target's mask cuts reaches the unmasked pixels around it, and beyond the target's
            # field on a grown grid); the taper, zero on every masked pixel, removes the
            # target-masked pixels after the blur
            if windowed:
                block = (slice(crop[0].start, crop[0].stop + 2 * ey),
                         slice(crop[1].start, crop[1].stop + 2 * ex))
                rpad[:nyc + 2 * ey, :nxc + 2 * ex] = np.where(r_m_ext[block], 0.0,
                                                              r_ext[block] - med_r)
            else:
                rpad[at] = np.where(m, 0.0, rc - med_r)
            tft = sfft.rfft2(w * tpad)
            rft = sfft.rfft2(rpad if windowed else w * rpad)
            wft = sfft.rfft2(w)
            fx = sfft.rfftfreq(nxp, px)
            fy = sfft.fftfreq(nyp, py)
            psf_ft = None
            if reference_psf is not None:
                q = np.sqrt(fx[None, :] ** 2 + fy[:, None] ** 2)
                psf_ft = moffat_transform(q, *reference_psf)
                tft = tft * psf_ft
            prob = _FourierProblem(tft, rft, wft, fx, fy, med_t, med_r, nxp,
                                   window=w if windowed else None, preshift=(sx * px, sy * py),
                                   post=psf_ft)

            # start: scale and bg by linear least squares at the start kernel
            p0 = np.array([1.0, 0.0, init["fwhm"], init["beta"], init["dx"], init["dy"]])
            _, re0, rke0, *_ = prob._parts(p0, False)
            a_bg = prob.W * prob.c
            a_s = (med_r * prob.W + rke0) * prob.c
            rhs = (prob.T + med_t * prob.W) * prob.c
            cols_ = []
            if fixed["bg"] is None:
                cols_.append(a_bg)
            else:
                rhs = rhs - fixed_n["bg"] * a_bg
            if fixed["scale"] is None:
                cols_.append(a_s)
            else:
                rhs = rhs - fixed_n["scale"] * a_s
            sol = {}
            if cols_:
                a = np.stack([np.concatenate([c.real, c.imag]) for c in cols_], axis=1)
                b = np.concatenate([rhs.real, rhs.imag])
                coef = np.linalg.lstsq(a, b, rcond=None)[0]
                i = 0
                if fixed["bg"] is None:
                    sol["bg"] = float(coef[i])
                    i += 1
                if fixed["scale"] is None:
                    sol["scale"] = float(coef[i])
            start = {"scale": max(sol.get("scale", 1.0), 1e-12) if fixed["scale"] is None
                     else fixed_n["scale"],
                     "bg": sol.get("bg", 0.0) if fixed["bg"] is None else fixed_n["bg"],
                     "fwhm": init["fwhm"], "beta": init["beta"], "dx": init["dx"],
                     "dy": init["dy"]}
            full0 = np.array([start[k] for k in _PARAMS])
            idx = [_PARAMS.index(k) for k in free]
            lo_b = {"scale": 0.0, "bg": -np.inf, "fwhm": 1e-4 * min(px, py),
                    "beta": BETA_RANGE[0], "dx": -np.inf, "dy": -np.inf}
            hi_b = {"scale": np.inf, "bg": np.inf, "fwhm": np.inf, "beta": BETA_RANGE[1],
                    "dx": np.inf, "dy": np.inf}

            def full(xf, full0=full0, idx=idx):
                p = full0.copy()
                p[idx] = xf
                return p

            def fun(xf, prob=prob, full=full):
                return prob.residuals(full(xf))

            def jac(xf, prob=prob, full=full, idx=idx):
                return prob.jacobian_full(full(xf))[:, idx]

            if free:
                x0 = np.clip(full0[idx], [lo_b[k] for k in free], [hi_b[k] for k in free])
                try:
                    sol = least_squares(fun, x0, jac=jac,
                                        bounds=([lo_b[k] for k in free], [hi_b[k] for k in free]),
                                        method="trf", x_scale="jac")
                except (ValueError, np.linalg.LinAlgError) as exc:
                    raise AstromixError(f"the image fit failed: {exc}") from exc
                pfit = full(sol.x)
                nfev += int(sol.nfev)
                # scale and bg alone are linear: their start (the linear least-squares
                # solution) is already the optimum, where the solver rightly stops at once
                stuck = (sol.nfev <= 1 or np.array_equal(sol.x, x0)) and any(
                    k in free for k in _NONLINEAR)
                status, message = int(sol.status), str(sol.message)
                if sol.status <= 0:
                    raise AstromixError(f"the image fit did not converge: {sol.message}")
            else:
                pfit = full0
                stuck = False
                status, message = 1, "all parameters fixed"
            moved_x = abs(pfit[4] - sx * px) > px
            moved_y = abs(pfit[5] - sy * py) > py
            if (moved_x or moved_y) and refits < max_refits:
                refits += 1
                init["dx"], init["dy"] = float(pfit[4]), float(pfit[5])
                init["fwhm"], init["beta"] = float(pfit[2]), float(pfit[3])
                log.debug("image fit: shift (%.3f, %.3f) arcsec exceeds the pre-shift by more "
                          "than a pixel; refitting", pfit[4], pfit[5])
                continue
            break

        if stuck and refits == 0:
            started = ", ".join(f"{k} {pfit[_PARAMS.index(k)]:.4g}" for k in free
                                if k in _NONLINEAR)
            log.warning("image fit of %s: the least-squares fit stopped at its start point "
                        "(%d evaluations): the values are the start values (%s), not fitted "
                        "ones; check the images and init_*", name or "target", nfev, started)

        # covariance
        n_eff = float(np.sum(w ** 2))
        resid = prob.residuals(pfit)
        cov = np.zeros((6, 6))
        if free:
            jf = prob.jacobian_full(pfit)[:, idx]
            if psf_ft is None:
                dof = max(n_eff - len(free), 1.0)
                cov_f, lost = _covariance(jf, float(resid @ resid) / dof)
            else:
                # the target's white noise is filtered by P: the residuals' variance is
                # proportional to |P|^2, so the covariance is the sandwich
                # s0^2 (J^T J)^-1 J^T diag(|P|^2) J (J^T J)^-1, with the unfiltered noise level
                # s0^2 from E[RSS] = s0^2 (N_eff <|P|^2> - tr((J^T J)^-1 J^T diag(|P|^2) J))
                p2 = np.tile((psf_ft ** 2).ravel(), 2)
                cw = np.tile(prob.c ** 2, 2)
                bread, lost = _covariance(jf, 1.0)
                bread = np.where(np.isfinite(bread), bread, 0.0)
                meat = jf.T @ (p2[:, None] * jf)
                filt = float(np.sum(cw * p2) / np.sum(cw))
                dof = max(n_eff * filt - float(np.trace(bread @ meat)), 1.0)
                cov_f = bread @ meat @ bread * (float(resid @ resid) / dof)
                cov_f[lost, :] = np.nan
                cov_f[:, lost] = np.nan
            cov[np.ix_(idx, idx)] = cov_f
            if lost.any():
                log.warning("image fit of %s: %s not determined by the data (error NaN)",
                            name or "target", ", ".join(k for k, b in zip(free, lost) if b))
            for k, i in zip(free, idx):
                if pfit[i] <= lo_b[k] * (1 + 1e-9) + 1e-300 or pfit[i] >= hi_b[k] * (1 - 1e-9):
                    log.warning("image fit of %s: %s = %.4g is at its bound", name or "target",
                                k, pfit[i] * to_phys[i])
        # back to the data units
        pfit_n, pfit = pfit, pfit * to_phys
        cov = cov * np.outer(to_phys, to_phys)

    # image-plane products, in target units
    mft = prob.model(pfit_n).reshape(prob.shape) * t_unit
    tft = tft * t_unit
    med_t, med_r = med_t * t_unit, med_r * r_unit
    img = sfft.irfft2(tft, s=(nyp, nxp))[at] + med_t * w[at]
    mod = sfft.irfft2(mft, s=(nyp, nxp))[at] + med_t * w[at]
    res_img = img - mod
    # RMS over the pixels the taper leaves at full weight (all unmasked ones if too few)
    full_w = ~m & (w[at] >= 1.0 - 1e-6)
    sel = full_w if np.count_nonzero(full_w) >= _MIN_PIXELS else ~m
    rms = float(np.sqrt(np.mean(res_img[sel] ** 2)))
    img = np.where(m, np.nan, img)
    mod = np.where(m, np.nan, mod)
    res_img = np.where(m, np.nan, res_img)
    q2 = np.sqrt(fx[None, :] ** 2 + fy[:, None] ** 2)
    qb, pt = _radial_profile(tft, q2)
    _, pm = _radial_profile(mft, q2)
    _, pr = _radial_profile(tft - mft, q2)

    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    values = dict(zip(_PARAMS, pfit))
    errors = dict(zip(_PARAMS, err))
    meas = {k: Measurement(values[k], 0.0 if fixed[k] is not None else errors[k],
                           fixed[k] is not None) for k in _PARAMS}
    yc = 0.5 * (crop[0].start + crop[0].stop - 1)
    xc = 0.5 * (crop[1].start + crop[1].stop - 1)
    jac_c, px_c, py_c = _pixel_sides(t_exp, xc, yc)
    amat = jac_c @ np.diag([1.0 / px, 1.0 / py])
    sky = amat @ np.array([values["dx"], values["dy"]])
    cov_sky = amat @ cov[4:6, 4:6] @ amat.T
    both_fixed = fixed["dx"] is not None and fixed["dy"] is not None
    wcs_c = t_exp.wcs[crop] if isinstance(t_exp.wcs, WCS) else None
    unit = "" if t_exp.unit is None else t_exp.unit.to_string()
    ref_img = np.asarray(r_data[crop], dtype=np.float64) * r_unit
    seconds = time.perf_counter() - t_start
    result = ImagePhotometryResult(
        fwhm=meas["fwhm"], beta=meas["beta"], scale=meas["scale"], bg=meas["bg"],
        dx=meas["dx"], dy=meas["dy"],
        dra=Measurement(sky[0], math.sqrt(max(cov_sky[0, 0], 0.0)), both_fixed),
        ddec=Measurement(sky[1], math.sqrt(max(cov_sky[1, 1], 0.0)), both_fixed),
        rms=Measurement(rms, math.nan),
        name=name, target_unit=unit, image=img, model=mod, residual=res_img,
        reference=ref_img, mask=m, weight=w[at], crop=crop, pixel_scale=(px, py),
        jacobian=jac_c, wcs=wcs_c, covariance=cov,
        profile={"q": qb, "target": pt, "model": pm, "residual": pr},
        reference_psf=reference_psf,
        info={"nfev": nfev, "refits": refits, "shift_px": (sx, sy), "fft_shape": (nyp, nxp),
              "n_pixels": int(np.count_nonzero(~m)), "medians": (med_t, med_r),
              "reference_border_px": (ex, ey),
              "seconds": seconds, "status": status, "message": message, "regrid": regridded,
              "model": model,
              "free": tuple(free)})
    log.info("image photometry of %s: %s (%.3f s)", name or "target", " ".join(
        f"{k}={mm.value:.4g}" for k, mm in result.measurements().items()), seconds)
    return result
