"""Preparing images for photometry between instruments (imphot's helpers, any instrument).

* :func:`read_image` -- one 2-D image of a FITS file as an
  :class:`~astromix.data.Exposure`: MPDAF/MUSE (``DATA``, ``STAT`` variance,
  ``DQ``), HST/JWST (``SCI``, ``ERR``, ``DQ``) or a plain image.
* :func:`regrid` -- resample a reference image (e.g. HST) onto the pixel grid
  of a target image (e.g. MUSE) with :mod:`reproject`, conserving flux.
* :func:`rescale_to_flux_units` -- HST count rates to flux density
  (erg/s/cm^2/A per pixel, or the target's unit) from the header's
  ``PHOTFLAM``, for any HST instrument and filter.
* :func:`make_broadband_image` -- a broad-band image from a spectral cube
  (e.g. MUSE) through a filter curve, with imphot's weights and variance.

These follow imphot (M. Shepherd, ``muse_analysis.imphot``; Bacon et al.,
the MUSE Hubble Ultra Deep Field survey papers) with its HST-only table of
filters replaced by the header's keywords.
"""

import logging
import math
import operator
import os
import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import NDData, StdDevUncertainty, VarianceUncertainty

from ..data.exposure import _split_mask
from ..data.loaders import _unit as _bunit_unit
from ..data.loaders import count_kind
from ..errors import InputError

__all__ = ["read_image", "regrid", "rescale_to_flux_units", "make_broadband_image",
           "hst_filter_name", "PhotometryWarning", "FLAM"]

log = logging.getLogger("astromix")

#: The flux-density unit PHOTFLAM is given in: erg / (s cm^2 Angstrom).
FLAM = u.erg / (u.s * u.cm ** 2 * u.AA)

#: Names of the science extension looked for, in order, when none is given.
_SCI_NAMES = ("DATA", "SCI")
#: Variance extensions (MPDAF ``STAT``) and standard-deviation extensions (HST/JWST ``ERR``).
_VAR_NAMES = ("STAT", "VAR", "VARIANCE")
_STD_NAMES = ("ERR", "ERROR", "SIGMA")


class PhotometryWarning(UserWarning):
    """Something in the photometry inputs that deserves attention (e.g. a filter
    curve that reaches beyond a cube)."""


# -- reading images ---------------------------------------------------------------------------

def _unit_or_none(bunit):
    """The astropy unit of a BUNIT, or None when blank or not understood.

    Read as :func:`astromix.data.loaders.count_kind` reads it (HST's spellings
    ``ELECTRONS``, ``CTS``, ``SEC``, ``A`` for angstrom mapped to astropy's).
    """
    if not isinstance(bunit, str) or not bunit.strip():
        return None
    return _bunit_unit(bunit)


def _pick_hdu(hdul, ext, shown):
    from astropy.io import fits

    if ext is not None:
        try:
            return hdul[ext]
        except (KeyError, IndexError):
            names = [h.name for h in hdul]
            raise InputError(f"FITS file {shown!r} has no extension {ext!r}; it holds "
                             f"{names}") from None
    for name in _SCI_NAMES:
        if name in hdul:
            return hdul[name]
    for hdu in hdul:
        if (not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))
                and getattr(hdu, "data", None) is not None and hdu.data.ndim >= 2):
            return hdu
    raise InputError(f"FITS file {shown!r} holds no image")


def _companion(hdul, names, ver, shape):
    for name in names:
        if (name, ver) in hdul:
            hdu = hdul[name, ver]
        elif name in hdul:
            hdu = hdul[name]
        else:
            continue
        if hdu.data is not None and hdu.data.shape == shape:
            return np.asarray(hdu.data, dtype=np.float64)
    return None


def read_image(path, *, ext=None, name=None):
    """Read one 2-D image with its variance, bad-pixel mask and celestial WCS.

    The science image is the extension ``ext``, else the first extension
    named ``DATA`` (MPDAF, MUSE) or ``SCI`` (HST, JWST), else the first HDU
    with an image.  Beside it, with the same ``EXTVER``: a variance
    (``STAT``, MPDAF's variance, or ``VAR``), else a standard deviation
    (``ERR``), and a data-quality array ``DQ`` (nonzero = bad).

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file (gzip-compressed files work).
    ext : int, str or (str, int), optional
        The science HDU: index, EXTNAME or (EXTNAME, EXTVER).
    name : str, optional
        The exposure's name; default: the file name without ``.fits[.gz]``.

    Returns
    -------
    Exposure
        2-D data (float64), uncertainty (:class:`~astropy.nddata.VarianceUncertainty`
        or :class:`~astropy.nddata.StdDevUncertainty`) when present, mask
        (DQ != 0, non-finite data, non-finite or non-positive variance), the
        celestial WCS, the unit from ``BUNIT`` when astropy understands it,
        and ``meta`` with ``filename``, ``hdu``, ``header`` (the science
        header) and ``primary_header``.

    Raises
    ------
    InputError
        If the file cannot be read, has no such extension or no image, the
        image is not 2-D (degenerate axes of length 1 are dropped), or it
        has no celestial WCS.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    from ..data.exposure import Exposure

    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a file name, got {type(path).__name__}")
    shown = os.fspath(path)
    if not os.path.isfile(shown):
        raise InputError(f"no such file: {shown!r}")
    try:
        hdul = fits.open(shown, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"FITS file {shown!r} could not be read: {exc}") from None
    with hdul:
        hdu = _pick_hdu(hdul, ext, shown)
        if hdu.data is None:
            raise InputError(f"extension {ext!r} of {shown!r} holds no data")
        data = np.asarray(hdu.data, dtype=np.float64)
        if data.ndim > 2:
            data = data.reshape([n for n in data.shape if n != 1] or [1])
        if data.ndim != 2:
            raise InputError(f"{shown!r}[{hdu.name or ext}] is not a 2-D image (shape "
                             f"{hdu.data.shape}); for a cube use make_broadband_image")
        header = hdu.header.copy()
        primary = hdul[0].header.copy()
        ver = header.get("EXTVER", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # FITS WCS fix-ups (e.g. 'datfix') are noise here
            try:
                wcs = WCS(header, fobj=hdul, naxis=2).celestial
            except Exception as exc:  # astropy raises many kinds on bad headers
                raise InputError(f"{shown!r}[{hdu.name}]: cannot read its WCS: {exc}") from None
        if wcs.naxis != 2 or not wcs.has_celestial:
            raise InputError(f"{shown!r}[{hdu.name}] has no celestial WCS")
        var = _companion(hdul, _VAR_NAMES, ver, data.shape)
        std = None if var is not None else _companion(hdul, _STD_NAMES, ver, data.shape)
        dq = _companion(hdul, ("DQ",), ver, data.shape)
    mask = ~np.isfinite(data)
    if dq is not None:
        mask |= dq != 0
    uncertainty = None
    if var is not None or std is not None:
        arr = var if var is not None else std
        with np.errstate(invalid="ignore"):
            mask |= ~(np.isfinite(arr) & (arr > 0))
        arr = np.where(mask, 1.0, arr)
        uncertainty = (VarianceUncertainty(arr) if var is not None else StdDevUncertainty(arr))
    if name is None:
        base = os.path.basename(shown)
        for suffix in (".fits.gz", ".fits.fz", ".fits", ".fit"):
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        name = base
    unit = _unit_or_none(header.get("BUNIT", primary.get("BUNIT")))
    meta = {"filename": os.path.abspath(shown), "hdu": hdu.name or str(ext),
            "header": header, "primary_header": primary}
    return Exposure(data, uncertainty=uncertainty, mask=mask, wcs=wcs, unit=unit, name=name,
                    meta=meta)


def _data_and_mask(values):
    """``(data, mask)`` of an image given as an array: float64 data and the mask of its
    non-finite values, or'ed with that of a NumPy masked array or an astropy
    :class:`~astropy.utils.masked.Masked` array (the data under masked values are kept)."""
    values, given = _split_mask(values)
    data = np.asarray(values, dtype=np.float64)
    mask = ~np.isfinite(data)
    if given is not None and given.shape == data.shape:
        mask |= given
    return data, mask


def _as_image(image, what, *, need_wcs=True):
    """An Exposure from a path, an HDU, an Exposure, an NDData or a (data, wcs[, sigma]) tuple.

    The mask of a NumPy masked array or an astropy ``Masked`` array given as
    the tuple's data is kept (with the non-finite pixels), as an Exposure
    and an NDData keep theirs.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    from ..data.exposure import Exposure

    if isinstance(image, (str, os.PathLike)):
        exp = read_image(image)
    elif isinstance(image, (fits.ImageHDU, fits.PrimaryHDU, fits.CompImageHDU)):
        if image.data is None or image.data.ndim != 2:
            raise InputError(f"{what}: the HDU does not hold a 2-D image")
        data = np.asarray(image.data, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(image.header).celestial
        exp = Exposure(data, mask=~np.isfinite(data), wcs=wcs if wcs.naxis == 2 else None,
                       unit=_unit_or_none(image.header.get("BUNIT")),
                       meta={"header": image.header.copy()})
    elif isinstance(image, Exposure):
        exp = image
    elif isinstance(image, NDData):
        data = np.asarray(image.data, dtype=np.float64)
        mask = ~np.isfinite(data) if image.mask is None else (np.asarray(image.mask, bool)
                                                               | ~np.isfinite(data))
        exp = Exposure(data, uncertainty=image.uncertainty, mask=mask, wcs=image.wcs,
                       unit=image.unit, meta=dict(image.meta))
    elif isinstance(image, (tuple, list)) and len(image) in (2, 3):
        data, mask = _data_and_mask(image[0])
        exp = Exposure(data, wcs=image[1], mask=mask if data.ndim == 2 else None,
                       uncertainty=image[2] if len(image) == 3 else None)
    else:
        raise InputError(f"{what} must be a FITS file name, an HDU, an astromix Exposure, an "
                         f"NDData or a tuple (data, wcs) or (data, wcs, sigma); got "
                         f"{type(image).__name__}")
    if need_wcs and exp.wcs is None:
        raise InputError(f"{what} has no WCS")
    return exp


def _name_of(exp, default):
    return exp.name if getattr(exp, "name", None) else default


# -- regridding -------------------------------------------------------------------------------

def same_grid(a, b, *, tol=1e-6):
    """True when Exposures ``a`` and ``b`` share shape and pixel grid (within ``tol`` px)."""
    if a.shape != b.shape:
        return False
    ny, nx = a.shape
    x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, 0.5 * (nx - 1)])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, 0.5 * (ny - 1)])
    ra, dec = a.pixel_to_world(x, y)
    xb, yb = b.world_to_pixel(ra, dec)
    return bool(np.all(np.abs(np.asarray(xb) - x) < tol) and np.all(np.abs(np.asarray(yb) - y)
                                                                    < tol))


def _pixel_area_ratio(target, reference, where):
    """Area of each target pixel over that of the reference pixel it falls on (at ``where``).

    Pixel areas are ``|det J|`` of the local WCS Jacobians (distortions
    included); NaN outside ``where``.
    """
    ratio = np.full(target.shape, np.nan)
    y, x = np.nonzero(where)
    if y.size == 0:
        return ratio
    x, y = x.astype(np.float64), y.astype(np.float64)
    area_t = np.abs(np.linalg.det(target.jacobian(x, y, step=0.5)))
    ra, dec = target.pixel_to_world(x, y)
    xr, yr = reference.world_to_pixel(np.asarray(ra), np.asarray(dec))
    area_r = np.abs(np.linalg.det(reference.jacobian(np.asarray(xr), np.asarray(yr), step=0.5)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio[where] = area_t / area_r
    return ratio


_REPROJECT = {"exact", "interp", "adaptive"}


def regrid(reference, target, *, method="exact", shape_out=None):
    """Resample a reference image onto the pixel grid of a target image, conserving flux.

    The reference (e.g. an HST image) is reprojected with :mod:`reproject`
    onto the target's WCS (e.g. MUSE's) and multiplied by the ratio of the
    pixel areas, so that the sum of the pixels over any area of sky is kept:
    the result is in the reference's data unit *per target pixel*.  This is
    imphot's ``regrid_hst_like_muse`` for any pair of WCSs.  A reference whose
    unit is per solid angle (a surface brightness: ``MJy/sr``, as JWST and
    Spitzer images, or ``erg/s/cm2/Angstrom/arcsec2``) is not multiplied:
    its values stay surface brightnesses, in its unit.

    Parameters
    ----------
    reference : str, HDU, Exposure, NDData or tuple
        The image to resample: a FITS file name (read with
        :func:`read_image`), an image HDU, an :class:`~astromix.data.Exposure`,
        an :class:`~astropy.nddata.NDData` or ``(data, wcs[, sigma])`` (``data``
        may be a NumPy masked array, whose mask is kept); it needs a celestial
        WCS.  Masked pixels do not contribute: every target pixel that
        overlaps one is masked (see Returns for each ``method``).
    target : str, HDU, Exposure, NDData, tuple or WCS
        The image whose grid is wanted (same kinds), or a celestial WCS with
        ``shape_out``.
    method : {"exact", "interp", "adaptive"}, optional
        ``"exact"`` (default): :func:`reproject.reproject_exact`, the exact
        overlap area of every reference pixel with every target pixel -- the
        reference integrated over the target's pixels, which is what the
        target's own pixels do to the sky, so no resampling window is needed
        afterwards (imphot corrects for MPDAF's Blackman window instead).
        ``"interp"``: :func:`reproject.reproject_interp` (bilinear
        interpolation of the surface brightness at the target's pixel
        centres, 5x faster; not integrated over the target pixels, so
        aliased when the reference is much finer).  ``"adaptive"``:
        :func:`reproject.reproject_adaptive` (anti-aliased, DeForest 2004;
        its kernel, wider than a target pixel, leaves out the samples that
        fall off the reference or on masked pixels, ``boundary_mode="ignore"``
        and ``bad_value_mode="ignore"``, so that the pixels near the edges
        are kept).  In every case the interpolated surface brightness is
        multiplied by the pixel-area ratio (not for a unit per solid angle).
    shape_out : (int, int), optional
        The target's shape (ny, nx), needed only when ``target`` is a WCS.

    Returns
    -------
    Exposure
        On the target's grid and WCS: data [reference unit per target pixel;
        per solid angle for a surface-brightness unit], variance (when the
        reference has an uncertainty: that of independent reference pixels,
        the resampled variance times ``a min(a, 1)`` with ``a`` the area
        ratio -- ``a v`` for a target pixel holding ``a`` whole reference
        pixels, ``a^2 v`` for one that is a fraction ``a`` of a reference
        pixel; ``min(a, 1) / a`` for a surface brightness -- exact for
        ``"exact"`` with whole-pixel down- or up-sampling and approximate
        otherwise; the correlation that resampling introduces between target
        pixels is ignored), a mask (target pixels not entirely covered by
        unmasked reference pixels: for ``"exact"`` from reproject's exact
        overlaps -- a footprint covered less than entirely, or any overlap
        with a masked pixel, a mere shared edge included; for ``"interp"``
        and ``"adaptive"`` the bounding box of the target pixel's corners in
        the reference's pixels -- exact for aligned grids, a little wider for
        rotated ones -- leaving the reference or holding a masked pixel, and
        for ``"interp"`` also the pixels whose bilinear interpolation reaches
        a masked or outside pixel, which matters only when the target's
        pixels are smaller than the reference's), the reference's unit and name,
        ``meta["regrid"]`` = method, ``meta["area_ratio"]`` (median target /
        reference pixel area) and ``meta["surface_brightness"]`` (True when
        the unit is per solid angle and the values were not multiplied).

    Raises
    ------
    InputError
        For unreadable inputs, inputs without a celestial WCS, an unknown
        ``method``, or when the two images do not overlap.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix.photometry import regrid
    >>> def wcs(scale, n):
    ...     w = WCS(naxis=2)
    ...     w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ...     w.wcs.crval = [53.0, -27.8]
    ...     w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    ...     w.wcs.cdelt = [-scale / 3600, scale / 3600]
    ...     return w
    >>> fine = np.ones((40, 40))                       # 0.05"/px, 1 per pixel
    >>> out = regrid((fine, wcs(0.05, 40)), (np.zeros((10, 10)), wcs(0.2, 10)))
    >>> float(out.data[5, 5])                          # 16 fine pixels per coarse one
    16.0
    """
    from astropy.wcs import WCS

    from ..data.exposure import Exposure

    if method not in _REPROJECT:
        raise InputError(f"method must be one of {sorted(_REPROJECT)}, got {method!r}")
    ref = _as_image(reference, "the reference image")
    if isinstance(target, WCS) or (hasattr(target, "pixel_to_world_values")
                                   and not isinstance(target, NDData)):
        if shape_out is None:
            raise InputError("shape_out (ny, nx) is needed when target is a WCS")
        tgt = Exposure(np.zeros(tuple(int(n) for n in shape_out)), wcs=target)
    else:
        tgt = _as_image(target, "the target image")
    return _regrid(ref, tgt, method)


def _per_solid_angle(unit):
    """Whether ``unit`` is per solid angle (a surface brightness: MJy/sr, erg/s/cm2/A/arcsec2)."""
    if unit is None:
        return False
    try:
        dec = unit.decompose()
    except Exception:  # noqa: BLE001 - e.g. logarithmic units
        return False
    return any(str(b) == "rad" and p < 0 for b, p in zip(dec.bases, dec.powers))


#: Tolerance [reference px] on the edges of a target pixel's footprint: an edge within it of a
#: reference pixel's edge only touches that pixel (rounding of the WCS transforms).
_EDGE_TOL = 1e-6


def _footprint_bad(ref, tgt):
    """Target pixels whose footprint is not entirely on unmasked reference pixels.

    The footprint of each target pixel is taken as the bounding box, in the
    reference's pixel coordinates, of its four corners mapped through both
    WCSs (exact for aligned grids, a superset for rotated ones); it is bad
    when it leaves the reference or overlaps (with nonzero area) a masked
    reference pixel, counted from a summed-area table of the mask.
    """
    from astropy.coordinates import SkyCoord

    from ..data.exposure import _celestial_frame

    ny, nx = tgt.shape
    nyr, nxr = ref.shape
    yc, xc = np.mgrid[-0.5:ny:1.0, -0.5:nx:1.0]           # the (ny + 1, nx + 1) corners
    ra, dec = tgt.pixel_to_world(xc, yc)
    # in the target's celestial frame, transformed into the reference's (as reproject does:
    # FK5 and ICRS differ by ~20 mas)
    frame = _celestial_frame(getattr(tgt.wcs, "low_level_wcs", tgt.wcs))
    sky = (SkyCoord(ra, dec, unit="deg", frame=frame) if frame is not None
           else (np.asarray(ra), np.asarray(dec)))
    with warnings.catch_warnings():
        # corners far off a distorted reference may not converge: they are off it either way
        warnings.simplefilter("ignore")
        xy = ref.world_to_pixel(sky) if frame is not None else ref.world_to_pixel(*sky)
    xr, yr = (np.asarray(v, dtype=np.float64) for v in xy)

    def box(v):
        quad = np.stack([v[:-1, :-1], v[:-1, 1:], v[1:, :-1], v[1:, 1:]])
        with np.errstate(invalid="ignore"):
            lo, hi = np.min(quad, axis=0), np.max(quad, axis=0)
        # reference pixel i covers (i - 0.5, i + 0.5): the ones overlapping [lo, hi]
        return (np.floor(lo - 0.5 + _EDGE_TOL) + 1, np.ceil(hi + 0.5 - _EDGE_TOL) - 1)

    (x0, x1), (y0, y1) = box(xr), box(yr)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(x0) & np.isfinite(x1) & np.isfinite(y0) & np.isfinite(y1)
                & (x0 >= 0) & (y0 >= 0) & (x1 <= nxr - 1) & (y1 <= nyr - 1))
    mask = np.asarray(ref.mask, dtype=bool)
    if mask.any() and not bad.all():
        sat = np.zeros((nyr + 1, nxr + 1), dtype=np.int64 if mask.size >= 2 ** 31 else np.int32)
        np.cumsum(np.cumsum(mask, axis=0, dtype=sat.dtype), axis=1, out=sat[1:, 1:])
        ok = ~bad
        i0, i1 = x0[ok].astype(np.intp), x1[ok].astype(np.intp) + 1
        j0, j1 = y0[ok].astype(np.intp), y1[ok].astype(np.intp) + 1
        count = sat[j1, i1] - sat[j0, i1] - sat[j1, i0] + sat[j0, i0]
        bad[ok] = count > 0
    return bad


def _regrid(ref, tgt, method="exact"):
    import reproject

    from ..data.exposure import Exposure

    func = {"exact": reproject.reproject_exact, "interp": reproject.reproject_interp,
            "adaptive": reproject.reproject_adaptive}[method]
    data = np.where(ref.mask, np.nan, np.asarray(ref.data, dtype=np.float64))
    # adaptive: samples off the reference or on masked pixels are left out of its kernel
    # (not a NaN for the whole kernel), so that the pixels fully covered stay; the mask is
    # then that of _footprint_bad, as for interp
    kwargs = ({"conserve_flux": False, "boundary_mode": "ignore", "bad_value_mode": "ignore"}
              if method == "adaptive" else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # reproject's FITS-WCS notices
        out, footprint = func((data, ref.wcs), tgt.wcs, shape_out=tgt.shape, **kwargs)
        var_out = None
        if ref.uncertainty is not None:
            var = np.where(ref.mask, np.nan, 1.0 / np.where(ref.weight > 0, ref.weight, np.nan))
            var_out, _ = func((var, ref.wcs), tgt.wcs, shape_out=tgt.shape, **kwargs)
    covered = np.isfinite(out) & (footprint >= 1.0 - 1e-6)
    if method != "exact":
        # exact: NaN (masked) reference pixels make every target pixel they overlap NaN, and
        # its footprint is the covered fraction; interp and adaptive know neither
        covered &= ~_footprint_bad(ref, tgt)
    ratio = _pixel_area_ratio(tgt, ref, covered)
    bad = ~(covered & np.isfinite(ratio))
    if var_out is not None:
        bad |= ~(np.isfinite(var_out) & (var_out > 0))
    if bad.all():
        raise InputError(f"the reference image {_name_of(ref, '')!r} does not overlap the "
                         f"target image {_name_of(tgt, '')!r} (no fully covered pixel)")
    # reproject gives the area-weighted mean of the reference pixels over each target pixel
    # (a surface brightness).  Per-pixel values are multiplied by the area ratio a; their
    # variance, for independent reference pixels, is a v when a target pixel holds a whole
    # reference pixels (a >= 1) and a^2 v when it is a fraction a of one (a < 1).  Values per
    # solid angle (MJy/sr) keep the mean, whose variance is v / a, resp. v.
    sb = _per_solid_angle(ref.unit)
    with np.errstate(invalid="ignore", divide="ignore"):
        fac = np.ones_like(ratio) if sb else ratio
        var_fac = np.minimum(ratio, 1.0) * (1.0 / ratio if sb else ratio)
    data = np.where(bad, 0.0, out * fac)
    unc = None
    if var_out is not None:
        unc = VarianceUncertainty(np.where(bad, 1.0, var_out * var_fac))
    meta = {"regrid": method, "area_ratio": float(np.nanmedian(ratio[~bad])),
            "surface_brightness": sb, "regridded_from": _name_of(ref, None)}
    for key in ("header", "primary_header"):
        if key in ref.meta:
            meta[key] = ref.meta[key]
    return Exposure(data, uncertainty=unc, mask=bad, wcs=tgt.wcs, unit=ref.unit,
                    name=ref.name, meta=meta)


# -- flux units ------------------------------------------------------------------------------

def _header_value(headers, key):
    for h in headers:
        if h is not None and key in h and h[key] not in (None, ""):
            return h[key]
    return None


def _positive_header_number(headers, key):
    """The first value of ``key`` in ``headers`` as a float, or None unless finite and > 0."""
    try:
        value = float(_header_value(headers, key))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def hst_filter_name(*headers):
    """The HST filter name from FITS headers, for any instrument.

    Tries ``FILTER`` (WFC3, NICMOS, ...), then ``FILTER1``/``FILTER2``
    (ACS; string values only: WFPC2 stores filter *numbers* there, e.g.
    ``FILTER1 = 28`` for F606W), then ``FILTNAM1``/``FILTNAM2`` (WFPC2, FOC),
    skipping ``CLEAR*`` and empty values; several names are joined with '+'.

    Parameters
    ----------
    *headers : astropy.io.fits.Header
        Searched in order (e.g. the science header, then the primary one).

    Returns
    -------
    str or None
        The filter name (several joined with '+', e.g. ``"F606W+F814W"``),
        or None when no header gives one (a None header is skipped).

    Examples
    --------
    >>> from astropy.io import fits
    >>> from astromix.photometry import hst_filter_name
    >>> hst_filter_name(fits.Header({"FILTER1": 28, "FILTNAM1": "F606W", "FILTNAM2": ""}))
    'F606W'
    >>> hst_filter_name(fits.Header({"FILTER1": "CLEAR1L", "FILTER2": "F814W"}))
    'F814W'
    """
    for keys in (("FILTER",), ("FILTER1", "FILTER2"), ("FILTNAM1", "FILTNAM2")):
        names = []
        for key in keys:
            value = _header_value(headers, key)
            if isinstance(value, str):
                value = value.strip()
                if value and not value.upper().startswith("CLEAR") \
                        and value.upper() not in ("N/A", "NONE", "OPEN"):
                    names.append(value)
        if names:
            return "+".join(names)
    return None


def _flux_unit(unit):
    """A flux-density-per-wavelength unit from a unit, a number (x FLAM) or an image."""
    if unit is None:
        return FLAM
    if isinstance(unit, NDData):
        if unit.unit is None:
            raise InputError("the target image given as unit has no unit: give the unit "
                             "(e.g. '1e-20 erg / (s cm2 Angstrom)') or a number")
        unit = unit.unit
    if isinstance(unit, (int, float, np.floating, np.integer)) and not isinstance(unit, bool):
        if not (math.isfinite(unit) and unit > 0):
            raise InputError(f"unit must be a positive number (x erg/s/cm^2/A), got {unit}")
        return u.Unit(float(unit) * FLAM)
    try:
        unit = u.Unit(unit)
    except (TypeError, ValueError) as exc:
        raise InputError(f"unit {unit!r} is not a unit: {exc}") from None
    if not unit.is_equivalent(FLAM):
        raise InputError(f"unit {unit} is not a flux density per wavelength "
                         "(erg / (s cm2 Angstrom))")
    return unit


def rescale_to_flux_units(image, *, unit=None, header=None, photflam=None):
    """Convert an HST image from count rates to flux density with its ``PHOTFLAM``.

    ``PHOTFLAM`` [erg/s/cm^2/A per electron/s (DN/s for WFPC2)] is read from
    the science header, else the primary header, so any HST instrument and
    filter works (imphot's ``rescale_hst_like_muse`` used a table of ACS
    filters).  Each pixel becomes the flux density it contributes,
    ``value * PHOTFLAM`` [erg/s/cm^2/A per pixel], converted to ``unit``.  Data
    in counts (``BUNIT`` in electrons, counts, DN or ADU with no time, e.g.
    ``ELECTRONS``, ``COUNTS``) are first divided by ``EXPTIME``; data with a
    blank or rate ``BUNIT`` (drizzled products: ``ELECTRONS/S``, or the FITS
    standard's ``electron s-1``, ``count s-1``, ``DN s**-1``, ...) are taken
    as rates.  An image already in a flux density -- its own unit (an
    Exposure's or NDData's ``unit``), else its ``BUNIT``, is one per
    wavelength (``erg/s/cm2/Angstrom``) or per frequency (``Jy``), or it is
    the output of this function (``meta["flux_factor"]`` set) -- is not
    multiplied by PHOTFLAM again: it is only converted to ``unit`` (through
    the pivot wavelength ``PHOTPLAM`` for a flux density per frequency).

    Parameters
    ----------
    image : str, HDU, Exposure, NDData or (data, header)
        The HST image: a FITS file name (read with :func:`read_image`), an
        image HDU, an :class:`~astromix.data.Exposure` or NDData whose
        ``meta["header"]`` (and ``meta["primary_header"]``) hold the FITS
        headers, or a pair ``(data, header)`` (``data`` may be a NumPy masked
        array: its masked pixels stay masked, set to 0).
    unit : unit, str, float or NDData, optional
        The output unit, a flux density per wavelength: an astropy unit or
        string (e.g. ``"1e-20 erg / (s cm2 Angstrom)"``, MUSE's), a number
        ``x`` meaning ``x erg/s/cm^2/A`` (e.g. MUSE's ``FSCALE = 1e-20``), or
        a target image whose unit is used.  Default: erg/s/cm^2/A.
    header : astropy.io.fits.Header, optional
        A header to read the keywords from instead of the image's.
    photflam : float, optional
        Use this PHOTFLAM instead of the header's.

    Returns
    -------
    Exposure
        The rescaled image (uncertainty scaled alike, WCS kept when
        present), with ``unit`` set and ``meta`` holding ``photflam`` (None
        when an image already in flux density has none), ``filter`` (see
        :func:`hst_filter_name`), ``flux_factor`` (the multiplier applied by
        this call; its presence marks the image as converted) and the
        headers.

    Raises
    ------
    InputError
        If no PHOTFLAM is found (for counts or count rates) or it is not a
        positive number, counts need an EXPTIME that is missing, ``BUNIT``
        holds counts with a time power other than 0 or -1, ``unit`` is not a
        flux density per wavelength, or the image's unit is one PHOTFLAM does
        not apply to and that cannot be converted: a surface brightness
        (``MJy/sr``), a flux density per frequency without ``PHOTPLAM``, any
        other physical unit (``K``, ``mag``, ``Jy/beam``), or an image marked
        as converted whose unit is not a flux density.

    Notes
    -----
    ``BUNIT`` is read by :func:`astromix.data.loaders.count_kind`, the reading
    :meth:`astromix.Exposure.from_fits` takes for the HST zero point: parsed
    with :mod:`astropy.units` (the FITS format, then the generic one), HST's
    spellings (``ELECTRONS``, ``COUNTS``, ``CTS``, ``SEC``) mapped to
    astropy's; a ``BUNIT`` astropy cannot read is in counts when it names
    ELECTRON, COUNT, CTS, DN or ADU without a "/s", "/sec", "s-1", "s**-1",
    "s^-1" or "per second".

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> from astromix.photometry import rescale_to_flux_units
    >>> hdr = fits.Header({"PHOTFLAM": 1.89972e-18, "FILTNAM1": "F606W"})
    >>> out = rescale_to_flux_units((np.full((2, 2), 0.5), hdr), unit=1e-20)
    >>> float(out.data[0, 0]), out.meta["filter"], out.unit
    (94.986, 'F606W', Unit("1e-20 erg / (Angstrom s cm2)"))
    """
    from astropy.io import fits

    from ..data.exposure import Exposure

    out_unit = _flux_unit(unit)
    if (isinstance(image, tuple) and len(image) == 2
            and isinstance(image[1], fits.Header)):
        data, mask = _data_and_mask(image[0])
        exp = Exposure(data, mask=mask if data.ndim == 2 else None, meta={"header": image[1]})
    else:
        exp = _as_image(image, "the image", need_wcs=False)
    headers = [h for h in (header, exp.meta.get("header"), exp.meta.get("primary_header"))
               if h is not None]
    bunit = _header_value(headers, "BUNIT")
    kind, in_unit = _image_unit(exp, bunit)
    if photflam is None:
        photflam = _header_value(headers, "PHOTFLAM")
        if photflam is None and kind != "flux":
            filename = exp.meta.get("filename")
            shown = f" of {filename!r}" if filename else " of the image"
            raise InputError(f"no PHOTFLAM keyword in the headers{shown} (and its unit is not "
                             "a flux density): give photflam= or a header that holds it")
    if photflam is not None:
        try:
            photflam = float(photflam)
        except (TypeError, ValueError):
            raise InputError(f"PHOTFLAM must be a number, got {photflam!r}") from None
        if not (math.isfinite(photflam) and photflam > 0):
            raise InputError(f"PHOTFLAM must be a positive number, got {photflam}")
    if kind == "flux":
        # already a flux density: converted to the output unit, PHOTFLAM not applied again
        equivalencies = []
        if in_unit.is_equivalent(u.Jy):
            pivot = _positive_header_number(headers, "PHOTPLAM")
            if pivot is None:
                raise InputError(f"the image is already a flux density per frequency "
                                 f"({in_unit}); converting it to {out_unit} needs the pivot "
                                 "wavelength PHOTPLAM [A], which its headers lack")
            equivalencies = u.spectral_density(pivot * u.AA)
        factor = float(in_unit.to(out_unit, 1.0, equivalencies=equivalencies))
    else:
        factor = photflam
        if kind == "counts":
            exptime = _positive_header_number(headers, "EXPTIME")
            if exptime is None:
                raise InputError(f"the image is in {in_unit} (not a rate) and has no valid "
                                 "EXPTIME to divide by")
            factor /= exptime
        factor *= FLAM.to(out_unit)
    unc = None
    if exp.uncertainty is not None:
        var = np.where(exp.weight > 0, 1.0 / np.where(exp.weight > 0, exp.weight, 1.0), 1.0)
        unc = VarianceUncertainty(var * factor ** 2)
    meta = dict(exp.meta)
    meta.update({"photflam": photflam, "filter": hst_filter_name(*headers),
                 "flux_factor": factor})
    return Exposure(np.where(exp.mask, 0.0, exp.data * factor), uncertainty=unc,
                    mask=exp.mask, wcs=exp.wcs, unit=out_unit, name=exp.name, meta=meta)


def _image_unit(exp, bunit):
    """What the values of an image to rescale are: ``(kind, unit)``.

    ``kind`` is ``"flux"`` for a flux density per pixel (per wavelength, or
    per frequency), with ``unit`` its unit: the Exposure's own unit, else
    ``BUNIT``; an image that :func:`rescale_to_flux_units` made
    (``meta["flux_factor"]``) is one in its unit.  Otherwise ``kind`` is
    ``"counts"`` or ``"rate"`` (by :func:`astromix.data.loaders.count_kind`;
    a blank or absent unit is a rate) and ``unit`` the unit's text.

    Raises
    ------
    InputError
        For a surface brightness (a unit per solid angle), an image marked as
        rescaled that has no flux-density unit, or any other physical unit
        (e.g. ``K``, ``mag``, ``Jy/beam``): PHOTFLAM does not apply to them.
    """
    own = exp.unit
    parsed = _unit_or_none(bunit)
    if exp.meta.get("flux_factor") is not None:
        if own is None or not _is_flux_density(own):
            raise InputError("the image was already converted by rescale_to_flux_units "
                             f"(meta['flux_factor']) but its unit is {own}, not a flux density: "
                             "it cannot be converted again")
        return "flux", own
    for unit in (own, parsed):
        if unit is not None and _is_flux_density(unit):
            return "flux", unit
    for unit in (own, parsed):
        if unit is not None and _per_solid_angle(unit):
            raise InputError(f"the image is a surface brightness ({unit}): "
                             "rescale_to_flux_units gives the flux density per pixel of count "
                             "rates; multiply it by the pixel solid angle first")
    has_bunit = isinstance(bunit, str) and bool(bunit.strip())
    text = bunit.strip() if has_bunit else (None if own is None else own.to_string())
    kind = count_kind(text)
    if kind is not None:
        return kind, text
    unit = parsed if has_bunit else own
    if unit is not None and unit.physical_type != "dimensionless":
        raise InputError(f"the image is in {text} -- neither counts, a count rate nor a flux "
                         "density: PHOTFLAM does not apply to it")
    return "rate", text


def _is_flux_density(unit):
    """Whether ``unit`` is a flux density, per wavelength (erg/s/cm2/A) or frequency (Jy)."""
    try:
        return unit.is_equivalent(FLAM) or unit.is_equivalent(u.Jy)
    except Exception:  # noqa: BLE001 - e.g. logarithmic units
        return False


# -- broad-band images from cubes ----------------------------------------------------------

def _filter_curve(filter_curve):
    """(wavelength [A], throughput) arrays of a filter curve, sorted by wavelength."""
    if isinstance(filter_curve, (str, os.PathLike)):
        try:
            table = np.loadtxt(filter_curve, comments="#", ndmin=2)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the filter curve {os.fspath(filter_curve)!r} (two "
                             f"columns: wavelength [A], throughput): {exc}") from None
        if table.shape[1] < 2:
            raise InputError("a filter-curve file needs two columns: wavelength [A], "
                             "throughput")
        wave, thr = table[:, 0], table[:, 1]
    elif hasattr(filter_curve, "waveset") and callable(filter_curve):   # synphot
        ws = filter_curve.waveset
        if ws is None:
            raise InputError("the synphot bandpass has no waveset (an analytic model): "
                             "sample it on a wavelength grid first")
        wave = u.Quantity(ws).to_value(u.AA, equivalencies=u.spectral())
        thr = np.asarray(u.Quantity(filter_curve(ws)).value, dtype=np.float64)
    else:
        try:
            pair = filter_curve
            if isinstance(pair, np.ndarray) and pair.ndim == 2 and pair.shape[1] == 2:
                pair = (pair[:, 0], pair[:, 1])
            wave, thr = pair
        except (TypeError, ValueError):
            raise InputError("filter_curve must be a synphot bandpass, a two-column text "
                             "file or a pair (wavelength [A], throughput)") from None
        wave = (wave.to_value(u.AA, equivalencies=u.spectral())
                if isinstance(wave, u.Quantity) else wave)
        thr = thr.value if isinstance(thr, u.Quantity) else thr
    wave = np.asarray(wave, dtype=np.float64).ravel()
    thr = np.asarray(thr, dtype=np.float64).ravel()
    if wave.size != thr.size or wave.size < 2:
        raise InputError("the filter curve needs at least two (wavelength, throughput) pairs")
    if not (np.all(np.isfinite(wave)) and np.all(np.isfinite(thr))):
        raise InputError("the filter curve holds non-finite values")
    order = np.argsort(wave, kind="stable")
    wave, thr = wave[order], np.clip(thr[order], 0.0, None)
    if not np.any(thr > 0):
        raise InputError("the filter curve is zero everywhere")
    return wave, thr


def _cumulative(wave, thr, x):
    """Integral of the piecewise-linear curve (0 outside its samples) from -inf to each x.

    The curve is integrated segment by segment between its own samples
    (``wave`` sorted; a segment of zero width -- two samples at one
    wavelength, a vertical edge -- adds nothing), and within a segment the
    integral of the linear piece is exact (quadratic in ``x``).
    """
    x = np.asarray(x, dtype=np.float64)
    width = np.diff(wave)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (thr[1:] + thr[:-1]) * width)])
    # the segment [wave[i], wave[i + 1]] holding x: i is the last sample <= x, so that a
    # vertical edge at x is passed whole; x beyond the curve is clamped to its ends
    i = np.clip(np.searchsorted(wave, x, side="right") - 1, 0, wave.size - 2)
    h = np.clip(x, wave[0], wave[-1]) - wave[i]
    w = width[i]
    slope = np.divide(thr[i + 1] - thr[i], w, out=np.zeros_like(h), where=w > 0)
    return cum[i] + thr[i] * h + 0.5 * slope * h * h


def filter_weights(wave, filter_curve):
    """imphot's weight of each plane of a cube: the filter curve integrated over the plane.

    Plane ``k`` covers the wavelengths from the midpoint with plane ``k - 1``
    to the midpoint with plane ``k + 1`` (half a step beyond the end
    planes); the filter curve is linearly interpolated between its samples
    and zero outside them, and integrated exactly.  Two samples at the same
    wavelength make a vertical edge (e.g. a top-hat written
    ``([l0, l0, l1, l1], [0, 1, 1, 0])``): the curve steps there.

    Parameters
    ----------
    wave : array-like, shape (nz,)
        Wavelengths of the planes [A], increasing (or a Quantity).
    filter_curve : synphot.SpectralElement, str, os.PathLike or (array, array)
        As for :func:`make_broadband_image`: a synphot bandpass (sampled at
        its ``waveset``), a two-column text file (wavelength [A],
        throughput), a pair ``(wavelength [A] or Quantity, throughput)`` or
        an array of shape (n, 2).

    Returns
    -------
    weights : ndarray, shape (nz,)
        ``w_k`` [throughput x A].
    outside : float
        The fraction of the filter's integral that lies outside the cube.

    Raises
    ------
    InputError
        If ``wave`` is empty, holds non-finite values or does not increase
        strictly, or the filter curve cannot be read or is invalid (fewer
        than two samples, non-finite values, zero everywhere, a synphot
        bandpass without a waveset).
    """
    wave = (wave.to_value(u.AA, equivalencies=u.spectral()) if isinstance(wave, u.Quantity)
            else np.asarray(wave, dtype=np.float64)).ravel()
    if wave.size < 1 or not np.all(np.isfinite(wave)):
        raise InputError("wave must hold finite wavelengths [A]")
    if wave.size > 1 and not np.all(np.diff(wave) > 0):
        raise InputError("wave must increase strictly")
    fw, ft = _filter_curve(filter_curve)
    if wave.size == 1:
        edges = np.array([wave[0] - 0.5, wave[0] + 0.5])
    else:
        mid = 0.5 * (wave[1:] + wave[:-1])
        edges = np.concatenate([[wave[0] - (mid[0] - wave[0])], mid,
                                [wave[-1] + (wave[-1] - mid[-1])]])
    cum = _cumulative(fw, ft, edges)
    weights = np.diff(cum)
    total = float(_cumulative(fw, ft, np.array([fw[-1]]))[0])
    outside = 1.0 - float(weights.sum()) / total if total > 0 else 1.0
    return weights, max(outside, 0.0)


def _read_cube(path, ext):
    from astropy.io import fits
    from astropy.wcs import WCS

    shown = os.fspath(path)
    try:
        hdul = fits.open(shown, memmap=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"FITS file {shown!r} could not be read: {exc}") from None
    hdu = _pick_hdu(hdul, ext, shown)
    if hdu.data is None or hdu.data.ndim != 3:
        hdul.close()
        raise InputError(f"{shown!r}[{hdu.name}] is not a cube (3-D image)")
    header = hdu.header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header, fobj=hdul)
    if wcs.naxis != 3 or wcs.wcs.spec < 0:
        hdul.close()
        raise InputError(f"{shown!r}[{hdu.name}] has no spectral WCS axis")
    nz = hdu.data.shape[0]
    spec = wcs.sub([wcs.wcs.spec + 1])
    world = spec.pixel_to_world_values(np.arange(nz, dtype=np.float64))
    cunit = u.Unit(spec.wcs.cunit[0] or "m")
    wave = (np.asarray(world) * cunit).to_value(u.AA, equivalencies=u.spectral())
    var_hdu = next((hdul[n] for n in _VAR_NAMES if n in hdul), None)
    std_hdu = None if var_hdu is not None else next((hdul[n] for n in _STD_NAMES if n in hdul),
                                                    None)
    dq_hdu = hdul["DQ"] if "DQ" in hdul else None
    return {"hdul": hdul, "data": hdu.data, "var": var_hdu.data if var_hdu is not None else None,
            "std": std_hdu.data if std_hdu is not None else None,
            "dq": dq_hdu.data if dq_hdu is not None else None, "wave": wave,
            "wcs": wcs.celestial, "unit": _unit_or_none(header.get("BUNIT")),
            "name": os.path.basename(shown)}


def make_broadband_image(cube, filter_curve, *, wave=None, variance=None, wcs=None, ext=None,
                         warn_fraction=0.005, chunk=64):
    """A broad-band image from a spectral cube, weighted by a filter curve (imphot's way).

    Each plane ``k`` gets the weight ``w_k`` = the integral of the filter
    curve over the plane's wavelength range (:func:`filter_weights`); then,
    per pixel, over the planes where that pixel is valid,

    ``image = sum_k w_k d_k / sum_k w_k``  and
    ``variance = sum_k w_k^2 v_k / (sum_k w_k)^2``

    (imphot's ``make_wideband_image``, Bacon et al. MUSE data; the image is a
    throughput-weighted mean flux density, in the cube's unit).

    Parameters
    ----------
    cube : str, os.PathLike or array-like, shape (nz, ny, nx)
        A FITS cube (MUSE-like: ``DATA`` with a spectral WCS axis, optional
        ``STAT`` variance or ``ERR``, optional ``DQ`` != 0 bad), or an array
        with ``wave`` (a Quantity, or a NumPy masked array such as MPDAF's
        ``Cube.data``, or an astropy ``Masked`` array: masked values are
        invalid, like ``DQ`` != 0).  Non-finite values are invalid.
    filter_curve : synphot.SpectralElement, str or (array, array)
        A :class:`synphot.SpectralElement` (sampled at its ``waveset``), a
        two-column text file (wavelength [A], throughput; ``#`` comments) or
        a pair ``(wavelength [A] or Quantity, throughput)``.  Linearly
        interpolated, zero outside its samples.
    wave : array-like or Quantity, shape (nz,), optional
        The planes' wavelengths [A], increasing; required for an array cube.
    variance : array-like, shape (nz, ny, nx), optional
        The cube's variance (array cubes; the values masked in a masked
        array are invalid).
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the planes (array cubes).
    ext : int or str, optional
        The science extension of a FITS cube (default: DATA or SCI).
    warn_fraction : float, optional
        Warn when more than this fraction of the filter's integral lies
        outside the cube's wavelength range (default 0.5%, imphot's).
    chunk : int, optional
        Planes read at a time (memory use: ``chunk * ny * nx`` values), an
        integer >= 1.

    Returns
    -------
    Exposure
        The image (ny, nx) with its variance (when the cube has one), mask
        (pixels with no valid plane of nonzero weight) and celestial WCS;
        ``meta`` holds ``weights`` (ndarray, shape (nz,)), ``wave`` [A] and
        ``filter_fraction_outside``.

    Raises
    ------
    InputError
        For a cube that is not 3-D, a missing or non-increasing ``wave``,
        shape mismatches (variance, masks), an unreadable filter curve, a filter that does
        not overlap the cube at all, or a ``chunk`` that is not an integer
        >= 1.

    Warns
    -----
    PhotometryWarning
        When more than ``warn_fraction`` of the filter lies outside the cube.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix.photometry import make_broadband_image
    >>> cube = np.stack([np.full((2, 2), v) for v in (1.0, 2.0, 3.0, 4.0)])
    >>> filt = ([4999.0, 5000.0, 5001.0, 5002.0], [0.0, 1.0, 1.0, 0.0])
    >>> img = make_broadband_image(cube, filt, wave=[4999.0, 5000.0, 5001.0, 5002.0],
    ...                            variance=np.ones_like(cube))
    >>> img.meta["weights"].round(4).tolist()
    [0.125, 0.875, 0.875, 0.125]
    >>> round(float(img.data[0, 0]), 4)
    2.5
    """
    from ..data.exposure import Exposure

    if not (isinstance(warn_fraction, (int, float)) and 0 <= warn_fraction < 1):
        raise InputError(f"warn_fraction must be in [0, 1), got {warn_fraction!r}")
    try:
        step = -1 if isinstance(chunk, bool) else operator.index(chunk)
    except TypeError:
        step = -1
    if step < 1:
        raise InputError(f"chunk must be an integer >= 1, got {chunk!r}")
    source = None
    if isinstance(cube, (str, os.PathLike)):
        source = _read_cube(cube, ext)
        data, var, std, dq = source["data"], source["var"], source["std"], source["dq"]
        wave, wcs, unit, name = source["wave"], source["wcs"], source["unit"], source["name"]
    else:
        # a masked array's mask (NumPy's, e.g. MPDAF's Cube.data, or astropy's Masked) is
        # used as a DQ array: masked values are invalid, as are those of a masked variance
        cube, bad = _split_mask(cube)
        unit = cube.unit if isinstance(cube, u.Quantity) else None
        data = cube.value if isinstance(cube, u.Quantity) else np.asarray(cube)
        var = None
        if variance is not None:
            variance, var_bad = _split_mask(variance)
            var = np.asarray(variance)
            if var_bad is not None and var_bad.shape == var.shape:
                bad = var_bad if bad is None else bad | var_bad
        std, dq, name = None, bad, None
        if data.ndim != 3:
            raise InputError(f"cube must be a 3-D array (nz, ny, nx), got shape {data.shape}")
        if var is not None and var.shape != data.shape:
            raise InputError(f"variance has shape {var.shape}, the cube {data.shape}")
        if dq is not None and dq.shape != data.shape:
            raise InputError(f"the mask of the cube or its variance has shape {dq.shape}, "
                             f"the cube {data.shape}")
        if wave is None:
            raise InputError("wave (the wavelength of each plane [A]) is needed for an array "
                             "cube")
    try:
        nz, ny, nx = data.shape
        weights, outside = filter_weights(wave, filter_curve)
        if weights.size != nz:
            raise InputError(f"wave has {weights.size} values, the cube {nz} planes")
        used = np.nonzero(weights > 0)[0]
        if used.size == 0:
            raise InputError("the filter curve does not overlap the cube's wavelengths")
        if outside > warn_fraction:
            warnings.warn(f"{100 * outside:.2f}% of the filter curve lies outside the cube's "
                          f"wavelength range (more than {100 * warn_fraction:.2g}%): the "
                          "broad-band image misses part of the band", PhotometryWarning,
                          stacklevel=2)
        num = np.zeros((ny, nx))
        den = np.zeros((ny, nx))
        has_var = var is not None or std is not None
        vnum = np.zeros((ny, nx)) if has_var else None
        for start in range(0, used.size, step):
            planes = used[start:start + step]
            sl = slice(planes[0], planes[-1] + 1)
            w = weights[sl][:, None, None]
            d = np.asarray(data[sl], dtype=np.float64)
            ok = np.isfinite(d) & (w > 0)
            if dq is not None:
                ok &= np.asarray(dq[sl]) == 0
            v = None
            if has_var:
                v = (np.asarray(var[sl], dtype=np.float64) if var is not None
                     else np.asarray(std[sl], dtype=np.float64) ** 2)
                with np.errstate(invalid="ignore"):
                    ok &= np.isfinite(v) & (v > 0)
            wk = np.where(ok, w, 0.0)
            num += np.sum(wk * np.where(ok, d, 0.0), axis=0)
            den += np.sum(wk, axis=0)
            if has_var:
                vnum += np.sum(wk ** 2 * np.where(ok, v, 0.0), axis=0)
    finally:
        if source is not None:
            source["hdul"].close()
    good = den > 0
    image = np.where(good, num / np.where(good, den, 1.0), 0.0)
    unc = None
    if has_var:
        v = np.where(good, vnum / np.where(good, den, 1.0) ** 2, 1.0)
        good &= v > 0
        unc = VarianceUncertainty(np.where(good, v, 1.0))
    if not good.any():
        raise InputError("no pixel of the cube has a valid plane inside the filter")
    meta = {"weights": weights, "wave": np.asarray(wave, dtype=np.float64),
            "filter_fraction_outside": outside}
    return Exposure(image, uncertainty=unc, mask=~good, wcs=wcs, unit=unit, name=name,
                    meta=meta)
