"""Read an Exposure from FITS files: DECam CP, JWST (stdatamodels), HST, MPDAF, plain images.

The entry point is :meth:`astromix.data.Exposure.from_fits`, which documents the
formats; this module holds the readers.
"""

import gzip
import io
import math
import os
import re
import warnings

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

from ..errors import InputError
from .exposure import ExposureWarning

__all__ = ["read_fits", "jwst_zeropoint", "hst_zeropoint"]

_FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit.gz", ".fit", ".fz", ".gz")

#: AB zero-point flux density [Jy].
AB_JY = 3631.0


# -- small helpers --------------------------------------------------------------------------------

def _stem(path):
    base = os.path.basename(os.fspath(path))
    for suffix in _FITS_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _python(value):
    """A header value as a JSON-compatible Python value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.strip()
    return None


def _first(headers, *keys):
    """The first present, non-empty value of ``keys`` in ``headers`` (in order)."""
    for key in keys:
        for header in headers:
            if header is not None and key in header:
                value = header[key]
                if isinstance(value, str):
                    value = value.strip()
                    if not value:
                        continue
                if value is None or isinstance(value, fits.card.Undefined):
                    continue
                return value
    return None


def _exptime(headers, *keys):
    value = _first(headers, *keys)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


#: BUNIT words spelled the way astropy parses them (matched whole, case-insensitively):
#: HST writes ELECTRONS/S, COUNTS/S, CTS, SEC; "S" is a second here, not a siemens, and
#: "A" an angstrom ("erg/s/cm2/A", "ERG/S/CM2/A"), not an ampere.
_BUNIT_WORDS = {"ELECTRON": "electron", "ELECTRONS": "electron", "COUNT": "count",
                "COUNTS": "count", "CT": "count", "CTS": "count", "DN": "DN", "ADU": "adu",
                "S": "s", "SEC": "s", "SECS": "s", "SECOND": "s", "SECONDS": "s",
                "A": "Angstrom", "ANGSTROM": "Angstrom", "ERG": "erg", "CM": "cm"}
#: Units of detector counts.
_COUNT_UNITS = (u.electron, u.count, u.DN, u.adu)
#: A count rate in a BUNIT astropy cannot parse: "/s", "/sec", "s-1", "s**-1", "s^-1",
#: "per second" (upper case).
_RATE_RE = re.compile(r"(/\s*|\bPER\s+)S(EC(OND)?S?)?\b|\bS(EC(OND)?S?)?\s*(\*\*|\^)?\s*-1\b")


def _unit(bunit):
    """An astropy unit from a BUNIT string, or None when absent or not understood.

    HST's words are first spelled astropy's way (``_BUNIT_WORDS``: ``ELECTRONS``
    -> ``electron``, ``CTS`` -> ``count``, ``SEC`` and ``S`` -> ``s``, ``A`` ->
    ``Angstrom``), then the string is parsed in the FITS format, then the
    generic one.
    """
    if not isinstance(bunit, str) or not bunit.strip():
        return None
    text = re.sub(r"[A-Za-z]+", lambda m: _BUNIT_WORDS.get(m.group().upper(), m.group()),
                  bunit.strip())
    for fmt in ("fits", "generic"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", u.UnitsWarning)
                unit = u.Unit(text, format=fmt)
        except (ValueError, TypeError):
            continue
        if not isinstance(unit, u.UnrecognizedUnit):
            return unit
    return None


def count_kind(bunit):
    """Whether a FITS ``BUNIT`` is detector counts, a count rate, or neither.

    The one reading of ``BUNIT`` behind both the HST zero point of
    :meth:`astromix.Exposure.from_fits` and the EXPTIME division of
    :func:`astromix.photometry.rescale_to_flux_units`.

    Parameters
    ----------
    bunit : str or None
        The keyword's value.

    Returns
    -------
    {"counts", "rate", None}
        ``"counts"`` for electrons, counts, DN or ADU with no time
        (``ELECTRONS``, ``CTS``, ``DN``); ``"rate"`` for these per second
        (``ELECTRONS/S``, ``electron s-1``, ``COUNTS/SEC``, ``DN/S``); None
        for a blank or absent BUNIT and any other unit (a flux density,
        ``MJy/sr``).  The unit is parsed with :mod:`astropy.units` as
        :func:`_unit` does; a BUNIT astropy cannot read is in counts when it
        names ELECTRON, COUNT, CTS, DN or ADU, a rate when it also has "/s",
        "/sec", "s-1", "s**-1", "s^-1" or "per second".

    Raises
    ------
    InputError
        For counts times another power of time (``electron s-2``).
    """
    if not isinstance(bunit, str) or not bunit.strip():
        return None
    unit = _unit(bunit)
    if unit is None:
        upper = re.sub(r"\s+", " ", bunit.upper())
        if not re.search(r"ELECTRON|COUNT|\bCTS?\b|\bDN\b|\bADU\b", upper):
            return None
        return "rate" if _RATE_RE.search(upper) else "counts"
    bases, powers = getattr(unit, "bases", [unit]), getattr(unit, "powers", [1])
    if not any(b in _COUNT_UNITS for b in bases):
        return None
    time_power = sum(p for b, p in zip(bases, powers) if b.physical_type == "time")
    if time_power not in (0, -1):
        raise InputError(f"BUNIT {bunit.strip()!r} is neither counts nor a count rate")
    return "counts" if time_power == 0 else "rate"


def _native(array, dtype=None):
    """A native-byte-order copy of a FITS array (float32/float64 kept unless ``dtype``)."""
    arr = np.asarray(array)
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return np.array(arr, dtype=np.dtype(dtype).newbyteorder("="))


def _open(path, what="FITS file"):
    """fits.open with InputError naming the file for a missing or unreadable file."""
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise InputError(f"{what} {shown!r} does not exist")
    if os.path.isdir(shown):
        raise InputError(f"{what} {shown!r} is a folder, not a file")
    try:
        hdul = fits.open(shown, memmap=False)
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise InputError(f"{what} {shown!r} could not be read as FITS: {exc}") from None
    if len(hdul) == 0:
        hdul.close()
        raise InputError(f"{what} {shown!r} holds no HDU")
    return hdul


def _get_hdu(hdul, key, shown):
    try:
        return hdul[key]
    except (KeyError, IndexError, TypeError):
        names = [h.name for h in hdul]
        raise InputError(f"{shown!r} has no HDU {key!r} (HDUs: {names})") from None


def _has(hdul, name, ver=1):
    try:
        hdul[(name, ver)]
    except (KeyError, IndexError):
        return False
    return True


def _image(hdu, shown):
    data = hdu.data
    if data is None or getattr(data, "ndim", 0) != 2 or isinstance(hdu, fits.BinTableHDU):
        raise InputError(f"{shown!r} HDU {hdu.name or '#'} holds no 2-D image "
                         f"(shape {getattr(data, 'shape', None)})")
    return data


def _fits_wcs(header, hdul, shown, what):
    """The celestial astropy WCS of ``header``, or InputError naming the file."""
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, fobj=hdul)
    except Exception as exc:
        raise InputError(f"{shown!r} {what}: the WCS could not be read: {exc}") from None
    if not wcs.has_celestial:
        raise InputError(f"{shown!r} {what} has no celestial WCS (CTYPE "
                         f"{[str(c) for c in wcs.wcs.ctype]})")
    if wcs.naxis != 2:
        if sorted((wcs.wcs.lng, wcs.wcs.lat)) != [0, 1]:
            raise InputError(f"{shown!r} {what}: the celestial WCS axes are not the image axes")
        wcs = wcs.celestial
    return wcs


def _gzip_truncated(path):
    """A message when ``path`` is a gzip file whose stream ends early, else None.

    astropy stops reading silently where a gzip stream is cut (at the end of
    the last complete HDU), so this is checked where an HDU is missing.  It
    decompresses the file once more; only error paths call it.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError) as exc:
        return f"the gzip stream ends early ({exc})"
    return None


def _read_side_file(path, extname, index, shape, what, sci_path, extver=1):
    """An image from a companion file (weight, DQ), found as :func:`_read_side_hdu` says.

    Warnings astropy raises for a truncated or corrupt file, a read error, a
    gzip stream that ends early (checked when no HDU named ``extname`` is
    found) give an InputError naming this file; other warnings are passed
    on.
    """
    return _refusing_corruption(
        lambda: _read_side_hdu(path, extname, index, shape, what, sci_path, extver),
        os.fspath(path), what, read_errors=(OSError, ValueError, TypeError, EOFError))


def _refusing_corruption(read, shown, what, *, read_errors=(), check_gzip=False):
    """``read()``, with the warnings astropy raises for a truncated or corrupt file refused.

    astropy reports such a file with warnings (and reads what it can): they are
    recorded and give an InputError naming the file (``what`` and ``shown``);
    every other warning is passed on.  Exceptions in ``read_errors`` become
    such an InputError too; with ``check_gzip``, a gzip stream that ends
    early is reported in place of any other error.
    """
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = read()
        except InputError as exc:
            error = exc
        except read_errors as exc:
            error = InputError(f"{what} {shown!r} is truncated or corrupt: {exc}")
    corrupt = [w for w in caught if _is_corruption(w)]
    if corrupt:
        raise InputError(f"{what} {shown!r} is truncated or corrupt: "
                         f"{str(corrupt[0].message).splitlines()[0]}") from error
    if error is not None:
        truncated = _gzip_truncated(shown) if check_gzip and os.path.isfile(shown) else None
        if truncated:
            raise InputError(f"{what} {shown!r} is truncated or corrupt: {truncated}"
                             ) from error
        raise error
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _is_image(hdu):
    """Whether ``hdu`` holds a 2-D image (not a table, not an empty HDU)."""
    return not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) \
        and getattr(getattr(hdu, "data", None), "ndim", 0) == 2


def _named_side_hdu(hdul, extname, extver, shown, what):
    """The HDU of a companion file named like the science image's, or None.

    The HDU ``(extname, extver)``; else, when the file holds one HDU named
    ``extname`` only, that one (a companion file of this image alone, whatever
    its EXTVER).  None when no HDU has that name, or the one found holds no
    2-D image.  InputError when several HDUs have that name and none the
    EXTVER: another chip's values must not be used silently.
    """
    named = [h for h in hdul if h.name == extname]
    same = [h for h in named if h.ver == extver]
    if same:
        hdu = same[0]
    elif len(named) == 1:
        hdu = named[0]
    elif named:
        raise InputError(f"{what} {shown!r} has {len(named)} HDUs named {extname!r} (EXTVER "
                         f"{sorted(h.ver for h in named)}) but none of the image's EXTVER "
                         f"{extver}")
    else:
        return None
    return hdu if _is_image(hdu) else None


def _read_side_hdu(path, extname, index, shape, what, sci_path, extver=1):
    """The image of a companion file (weight, DQ) for the science HDU ``(extname, extver)``.

    Parameters
    ----------
    path : str or os.PathLike
        The companion FITS file.
    extname : str or None
        The science HDU's EXTNAME (upper case); None or ``"PRIMARY"`` (the
        science image is in the primary HDU) for none.
    index : int or None
        The science HDU's index in its file.
    shape : (int, int)
        The science image's shape (ny, nx).
    what, sci_path : str
        The companion's kind ("weight file") and the science file, for messages.
    extver : int, optional
        The science HDU's EXTVER (default 1).

    Returns
    -------
    ndarray, shape (ny, nx)
        A copy of the first of: the 2-D image HDU ``(extname, extver)``; the
        only HDU named ``extname`` (any EXTVER); the HDU at ``index``; the
        first 2-D image HDU.  HDUs without a 2-D image (an empty primary, a
        table) are skipped.

    Raises
    ------
    InputError
        If the file cannot be read, holds no 2-D image, holds several HDUs
        named ``extname`` but none of EXTVER ``extver``, or the image found
        does not have ``shape``.
    """
    shown = os.fspath(path)
    with _open(path, what) as hdul:
        hdu = None
        if extname and extname != "PRIMARY":
            hdu = _named_side_hdu(hdul, extname, extver, shown, what)
            if hdu is None:
                truncated = _gzip_truncated(shown)
                if truncated:
                    raise InputError(f"{what} {shown!r} is truncated or corrupt: {truncated} "
                                     f"before HDU {extname!r}")
        if hdu is None and index is not None and index < len(hdul) and _is_image(hdul[index]):
            hdu = hdul[index]
        if hdu is None:
            hdu = next((h for h in hdul if _is_image(h)), None)
        if hdu is None:
            truncated = _gzip_truncated(shown)
            if truncated:
                raise InputError(f"{what} {shown!r} is truncated or corrupt: {truncated}")
            raise InputError(f"{what} {shown!r} holds no 2-D image")
        data = np.asarray(hdu.data)
        if data.shape != shape:
            raise InputError(f"{what} {shown!r} has shape {data.shape}, the image "
                             f"{os.fspath(sci_path)!r} {shape}")
        return data.copy()


def _sibling(path, old, new):
    """The file named like ``path`` with ``old`` replaced by ``new``, any FITS suffix."""
    folder, base = os.path.split(os.fspath(path))
    if old not in base:
        return None
    stem = _stem(base).replace(old, new)
    for suffix in (".fits", ".fits.gz", ".fits.fz"):
        candidate = os.path.join(folder, stem + suffix)
        if os.path.exists(candidate):
            return candidate
    return None


# -- zero points ----------------------------------------------------------------------------------

def jwst_zeropoint(unit, pixar_sr=None, photmjsr=None):
    """AB zero point of one JWST data unit (a source whose pixel values sum to 1).

    Parameters
    ----------
    unit : astropy.units.Unit or None
        The data unit (BUNIT of SCI).
    pixar_sr : float, optional
        Pixel area [sr] (PIXAR_SR).
    photmjsr : float, optional
        MJy/sr per DN/s (PHOTMJSR), for count-rate data.

    Returns
    -------
    float or None
        * surface brightness (e.g. MJy/sr): one unit in one pixel is a flux
          ``F = (1 unit * PIXAR_SR sr)`` in Jy, and ``ZP = -2.5 log10(F /
          3631 Jy)``; for MJy/sr, ``ZP = -2.5 log10(1e6 * PIXAR_SR / 3631)``
          (``= -6.10 - 2.5 log10(PIXAR_SR)``);
        * flux density per pixel (Jy, nJy, ...): ``-2.5 log10(F / 3631 Jy)``
          of one unit;
        * DN/s: as MJy/sr with one unit worth PHOTMJSR MJy/sr;
        * None when the unit is unknown or a needed keyword is missing.
    """
    if unit is None:
        return None
    jy_per_unit = None
    try:
        jy_per_unit = (1.0 * unit).to_value(u.Jy)
    except u.UnitConversionError:
        pass
    if jy_per_unit is None and pixar_sr:
        try:
            jy_per_unit = (1.0 * unit * (pixar_sr * u.sr)).to_value(u.Jy)
        except u.UnitConversionError:
            pass
    if jy_per_unit is None and pixar_sr and photmjsr and unit.is_equivalent(u.DN / u.s):
        jy_per_unit = (1.0 * unit).to_value(u.DN / u.s) * photmjsr * 1e6 * pixar_sr
    if jy_per_unit is None or not jy_per_unit > 0:
        return None
    return float(-2.5 * np.log10(jy_per_unit / AB_JY))


def hst_zeropoint(photflam, photplam, *, rate=True, exptime=None):
    """AB zero point of one HST data unit from PHOTFLAM and PHOTPLAM.

    Parameters
    ----------
    photflam : float
        Inverse sensitivity [erg / s / cm^2 / Angstrom per (count / s)].
    photplam : float
        Pivot wavelength [Angstrom].
    rate : bool, optional
        Whether the data are count rates (``ELECTRONS/S``, drizzled products;
        default) or counts (``ELECTRONS``, ACS/WFC3-UVIS ``flt``).
    exptime : float, optional
        Exposure time [s], needed when ``rate`` is false.

    Returns
    -------
    float or None
        ``ZP_rate = -2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408``, the AB
        magnitude of a source giving one count per second (f_nu = f_lambda
        lambda^2 / c, AB = -2.5 log10(f_nu) - 48.60); for counts, ``ZP_rate +
        2.5 log10(exptime)``.  None when a value is missing or not positive.
    """
    try:
        photflam, photplam = float(photflam), float(photplam)
    except (TypeError, ValueError):
        return None
    if not (photflam > 0 and photplam > 0):
        return None
    zp = -2.5 * np.log10(photflam) - 5.0 * np.log10(photplam) - 2.408
    if not rate:
        if not exptime:
            return None
        zp += 2.5 * np.log10(exptime)
    return float(zp)


# -- readers --------------------------------------------------------------------------------------

def _kind(hdul, path):
    primary = hdul[0].header
    instrument = str(primary.get("INSTRUME", "")).strip().upper()
    telescope = str(primary.get("TELESCOP", "")).strip().upper()
    if instrument == "DECAM" or "_ooi_" in os.path.basename(os.fspath(path)):
        return "decam"
    if _has(hdul, "DATA") and not _has(hdul, "SCI") \
            and (_has(hdul, "STAT") or _has(hdul, "DQ")):
        return "mpdaf"
    if telescope == "JWST":
        return "jwst"
    if telescope == "HST":
        return "hst"
    if _has(hdul, "SCI"):
        return "jwst" if _has(hdul, "ASDF") else "hst"
    return "plain"


def read_fits(cls, path, *, hdu=None, psf=None, band=None, zeropoint=None, name=None,
              weight=None, dq=None):
    """Implementation of :meth:`Exposure.from_fits` (see there).

    Opens ``path`` with :func:`astropy.io.fits.open` (no memory map), picks a
    reader from the headers, reads the science image, its companions and
    keywords, and builds ``cls(...)``.  Where several headers or keywords are
    listed, the first present, non-empty value is used.

    * Kind: DECam CP when the primary ``INSTRUME`` is ``DECam`` or the file
      name holds ``_ooi_``; else MPDAF (MUSE) for a file with a ``DATA``
      extension, a ``STAT`` or a ``DQ`` extension (an MPDAF image without
      variance, the output of ``astromix regrid``) and no ``SCI``; else JWST
      or HST from the primary
      ``TELESCOP``; else, for a file with a ``SCI`` extension, JWST when it
      also has an ``ASDF`` extension, HST otherwise; else a plain image.
    * DECam CP: HDU 1 (HDU 0 for a single-HDU file) or ``hdu``, and its FITS
      WCS; band: first word of ``FILTER`` (primary, then the CCD header; e.g.
      ``'z'`` for ``'z DECam SDSS c0004 9260.0 1520.0'``, ``'N501'``,
      ``'VR'``), else ``BAND``; ``EXPTIME``; ``BUNIT`` (CCD header, then
      primary); for
      ``meta``: ``EXPNUM``, ``MJD-OBS``, ``AIRMASS``, ``FWHM``, ``PLVER``.  The
      ``_oow_`` (inverse variance) and ``_ood_`` (DQ, nonzero masked) files
      beside it, unless ``weight`` / ``dq`` are given.
    * MPDAF (MUSE images): ``DATA`` (or ``hdu``) and its FITS WCS; ``STAT``
      (of the same EXTVER, when it has the image's shape) is the variance
      (:class:`~astropy.nddata.VarianceUncertainty`); ``DQ != 0`` and pixels
      whose ``STAT`` is not a positive finite number are masked (MPDAF marks
      the pixels outside the field so); ``FILTER``, ``EXPTIME``, ``BUNIT``,
      and for ``meta`` ``INSTRUME``, ``TELESCOP``, ``FSCALE``.
    * JWST: ``('SCI', 1)`` or ``hdu``; ``ERR``, ``DQ`` and ``WHT`` of the same
      EXTVER, each used when it has the image's shape: ``DQ != 0`` and pixels
      whose ``WHT`` is not a positive finite number are masked; the
      uncertainty is ``ERR`` (standard deviation), else ``WHT`` (inverse
      variance).  WCS: the gwcs ``meta.wcs`` of the ``ASDF`` extension, else
      the FITS WCS of SCI.  Keywords: ``FILTER`` and ``PUPIL`` (the band),
      ``EFFEXPTM`` / ``XPOSURE`` / ``EXPTIME``, ``BUNIT``, ``PIXAR_SR`` and
      ``PHOTMJSR`` (:func:`jwst_zeropoint`), and for ``meta`` ``INSTRUME``,
      ``DETECTOR``, ``MJD-AVG`` / ``EXPMID`` / ``MJD-OBS``.
    * HST: like JWST for ``SCI``, ``ERR``, ``DQ``, ``WHT`` and the mask (a
      file without ``SCI`` and no ``hdu`` is read as a plain image); the
      FITS WCS of SCI with its SIP and lookup-table distortions; band from
      ``FILTER``, else ``FILTER1`` / ``FILTER2``, else ``FILTNAM1`` /
      ``FILTNAM2`` (``CLEAR*``, ``N/A`` and ``NONE`` skipped, several joined
      by ``+``); ``EXPTIME``; ``BUNIT``, ``PHOTFLAM`` and ``PHOTPLAM`` (SCI
      header, then primary; :func:`hst_zeropoint`); for ``meta``
      ``INSTRUME``, ``DETECTOR``, ``EXPSTART`` / ``MJD-OBS``.
    * Plain image: the first non-table HDU holding a 2-D image (or ``hdu``),
      its FITS WCS, ``FILTER``, ``EXPTIME``, ``BUNIT``, and for ``meta``
      ``INSTRUME``, ``TELESCOP``.

    ``weight`` and ``dq`` files (and the DECam companions) are read from the
    HDU of the science image's EXTNAME and EXTVER (the same chip), else the
    only HDU of that EXTNAME, else the same index, else the first 2-D image;
    only HDUs holding a 2-D image count (an empty primary HDU is skipped, and
    a science image in the primary HDU is looked up by index); a file with
    several HDUs of that EXTNAME but none of its EXTVER is refused (InputError)
    rather than read from another chip.  Such a file that is truncated or
    corrupt (astropy's warnings,
    a read error, a gzip stream that ends early) gives an InputError naming
    it.  astropy reads a gzip file cut inside an HDU silently up to the last
    complete HDU, so a gzip file is checked to its end where an HDU is
    missing (and, for the science file, on any read error).  float32 and
    float64 images keep their type (native byte order), other types become
    float64.

    Parameters
    ----------
    cls : type
        :class:`~astromix.data.Exposure` or a subclass: what is built.
    path : str or os.PathLike
        The FITS file.
    hdu, psf, band, zeropoint, name, weight, dq : optional
        As for :meth:`Exposure.from_fits`; ``band`` and ``zeropoint`` override
        the header's, ``name`` defaults to the file name without its FITS
        suffix (plus ``_sci<N>`` for EXTVER N > 1).

    Returns
    -------
    Exposure
        An instance of ``cls``; ``meta`` holds ``format``, ``hdu``, the
        absolute ``filename`` and the format's keywords listed above.

    Raises
    ------
    InputError
        If ``path`` is not a file name; a file is missing, a folder, not
        readable as FITS, empty, truncated or corrupt; the HDU does not exist
        or holds no 2-D image; a weight, DQ or DECam companion file is
        truncated or corrupt or has several HDUs of the science EXTNAME but
        none of its EXTVER (the message names that file); the WCS cannot be
        read or is not celestial; a
        weight or DQ array does not have the image's shape; any other read
        error (``OSError``, ``ValueError``...); or for the reasons of ``cls``.

    Warns
    -----
    ExposureWarning
        When a DECam weight or DQ file is not found beside the image, or the
        JWST gwcs cannot be read or used (the FITS WCS is used instead).
        Other warnings raised while reading are passed on.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a file name, got {type(path).__name__}")
    shown = os.fspath(path)
    info = _refusing_corruption(lambda: _read_all(path, shown, hdu, weight, dq), shown,
                                "FITS file", check_gzip=True)
    meta = info["meta"]
    meta.setdefault("filename", os.path.abspath(shown))
    default_name = _stem(shown)
    if info.get("extver", 1) not in (None, 1):
        default_name += f"_sci{info['extver']}"
    return cls(info["data"], uncertainty=info.get("uncertainty"), mask=info.get("mask"),
               wcs=info["wcs"], psf=psf, band=band if band is not None else info.get("band"),
               exptime=info.get("exptime"),
               zeropoint=zeropoint if zeropoint is not None else info.get("zeropoint"),
               name=name if name is not None else default_name, meta=meta,
               unit=info.get("unit"))


def _is_corruption(record):
    text = str(record.message)
    return issubclass(record.category, (fits.verify.VerifyWarning, UserWarning)) and (
        "truncated" in text or "Error validating header" in text)


def _read_all(path, shown, hdu, weight, dq):
    """Read the science image and its companions: a dict of Exposure arguments and extras."""
    with _open(path) as hdul:
        try:
            kind = _kind(hdul, path)
            reader = {"decam": _read_decam, "jwst": _read_jwst, "hst": _read_hst,
                      "mpdaf": _read_mpdaf, "plain": _read_plain}[kind]
            info = reader(hdul, shown, hdu)
            shape = info["data"].shape
            # the science HDU's EXTVER: the companion files' HDU of that chip is read
            info["side_extver"] = hdul[info["index"]].ver
            # Companion files given explicitly replace what the reader found.
            if weight is not None:
                ivar = _read_side_file(weight, info.get("extname"), info.get("index"), shape,
                                       "weight file", shown, info["side_extver"])
                info["uncertainty"] = InverseVariance(_native(ivar, np.float64), copy=False)
                info["meta"]["weight_file"] = os.path.abspath(os.fspath(weight))
            if dq is not None:
                flags = _read_side_file(dq, info.get("extname"), info.get("index"), shape,
                                        "DQ file", shown, info["side_extver"])
                info["mask"] = np.asarray(flags) != 0
                info["meta"]["dq_file"] = os.path.abspath(os.fspath(dq))
            if kind == "decam" and weight is None:
                _decam_companions(info, shown, "weight")
            if kind == "decam" and dq is None:
                _decam_companions(info, shown, "dq")
        except InputError:
            raise
        except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError) as exc:
            raise InputError(f"FITS file {shown!r} could not be read: {exc}") from exc
    return info


def _describe(hdu, index):
    ver = hdu.header.get("EXTVER", 1)
    return f"{hdu.name}[{ver}]" if hdu.name and hdu.name != "PRIMARY" else f"HDU {index}"


def _hdu_index(hdul, hdu):
    return next(i for i, h in enumerate(hdul) if h is hdu)


def _read_decam(hdul, shown, key):
    if key is None:
        key = 1 if len(hdul) > 1 else 0
    sci = _get_hdu(hdul, key, shown)
    index = _hdu_index(hdul, sci)
    data = _native(_image(sci, shown))
    primary = hdul[0].header
    header = sci.header
    where = _describe(sci, index)
    wcs = _fits_wcs(header, hdul, shown, where)
    filt = _first((primary, header), "FILTER")
    band = None
    if isinstance(filt, str) and filt.strip():
        # 'z DECam SDSS c0004 9260.0 1520.0' -> 'z'; 'N501 DECam c0010 ...' -> 'N501'
        band = filt.split()[0]
    else:
        band_kw = _first((primary, header), "BAND")
        band = str(band_kw).strip() if band_kw else None
    extname = sci.name if sci.name and sci.name != "PRIMARY" else None
    meta = {"format": "DECam CP", "hdu": where, "instrument": "DECam",
            "filter": _python(filt), "ccdname": extname,
            "expnum": _python(_first((primary,), "EXPNUM")),
            "mjd_obs": _python(_first((primary, header), "MJD-OBS")),
            "airmass": _python(_first((primary,), "AIRMASS")),
            "fwhm_px": _python(_first((header,), "FWHM")),
            "plver": _python(_first((primary,), "PLVER")),
            "bunit": _python(_first((header, primary), "BUNIT"))}
    return {"data": data, "wcs": wcs, "band": band,
            "exptime": _exptime((primary, header), "EXPTIME"),
            "unit": _unit(_first((header, primary), "BUNIT")),
            "meta": meta, "extname": extname, "index": index}


def _decam_companions(info, shown, which):
    """Find and read the ``_oow_`` (weight) or ``_ood_`` (DQ) file beside a CP image."""
    tag, what = ("_oow_", "weight file") if which == "weight" else ("_ood_", "DQ file")
    found = _sibling(shown, "_ooi_", tag)
    if found is None:
        warnings.warn(f"{shown!r}: no DECam {what} ({tag}) found beside it; the exposure "
                      f"has no {'uncertainty' if which == 'weight' else 'data-quality mask'}",
                      ExposureWarning)
        info["meta"][f"{'weight' if which == 'weight' else 'dq'}_file"] = None
        return
    arr = _read_side_file(found, info.get("extname"), info.get("index"), info["data"].shape,
                          what, shown, info.get("side_extver", 1))
    if which == "weight":
        info["uncertainty"] = InverseVariance(_native(arr, np.float64), copy=False)
        info["meta"]["weight_file"] = os.path.abspath(found)
    else:
        info["mask"] = arr != 0
        info["meta"]["dq_file"] = os.path.abspath(found)


def _jwst_gwcs(hdul, shown):
    """The gwcs ``meta.wcs`` of a JWST file's ASDF extension, or None (with a warning)."""
    if not _has(hdul, "ASDF"):
        return None
    import asdf
    from asdf.exceptions import AsdfWarning

    try:
        table = hdul["ASDF"].data
        column = "ASDF_METADATA" if "ASDF_METADATA" in table.columns.names \
            else table.columns.names[0]
        raw = np.asarray(table[column][0]).tobytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AsdfWarning)
            with asdf.open(io.BytesIO(raw), memmap=False) as af:
                meta = af.tree.get("meta", {})
                wcs = meta.get("wcs") if hasattr(meta, "get") else None
    except Exception as exc:
        warnings.warn(f"{shown!r}: the gwcs in the ASDF extension could not be read ({exc}); "
                      "using the FITS WCS of SCI instead", ExposureWarning)
        return None
    if wcs is None:
        return None
    from .exposure import _check_wcs

    try:
        _check_wcs(wcs)
    except InputError as exc:
        warnings.warn(f"{shown!r}: the gwcs in the ASDF extension is not usable ({exc}); "
                      "using the FITS WCS of SCI instead", ExposureWarning)
        return None
    return wcs


def _sci_key(key):
    return ("SCI", 1) if key is None else key


def _companion(hdul, name, ver):
    try:
        return hdul[(name, ver)]
    except (KeyError, IndexError):
        return None


def _science(hdul, sci, shown):
    """The science HDU read: (info, where, EXTVER, primary header, science header)."""
    index = _hdu_index(hdul, sci)
    ver = sci.header.get("EXTVER", 1)
    info = {"data": _native(_image(sci, shown)), "extname": sci.name, "index": index,
            "extver": ver}
    return info, _describe(sci, index), ver, hdul[0].header, sci.header


def _companion_arrays(hdul, names, ver, shape):
    """The data of the extensions ``names`` of EXTVER ``ver``, None where absent or not of
    ``shape``."""
    out = []
    for name in names:
        hdu = _companion(hdul, name, ver)
        ok = hdu is not None and hdu.data is not None and hdu.data.shape == shape
        out.append(hdu.data if ok else None)
    return out


def _flags_and_positive(shape, dq, values):
    """The mask ``DQ != 0`` or ``values`` not positive and finite, and ``values`` as float64
    (None when absent)."""
    mask = np.zeros(shape, dtype=bool)
    if dq is not None:
        mask |= np.asarray(dq) != 0
    if values is not None:
        values = _native(values, np.float64)
        with np.errstate(invalid="ignore"):
            mask |= ~(np.isfinite(values) & (values > 0))
    return mask, values


def _read_jwst(hdul, shown, key):
    sci = _get_hdu(hdul, _sci_key(key), shown)
    info, where, ver, primary, header = _science(hdul, sci, shown)
    wcs = _jwst_gwcs(hdul, shown)
    wcs_source = "gwcs (ASDF extension)"
    if wcs is None:
        wcs = _fits_wcs(header, hdul, shown, where)
        wcs_source = "FITS header of SCI"
    info["wcs"] = wcs
    err, dq, wht = _companion_arrays(hdul, ("ERR", "DQ", "WHT"), ver, info["data"].shape)
    mask, wht_data = _flags_and_positive(info["data"].shape, dq, wht)
    if err is not None:
        info["uncertainty"] = StdDevUncertainty(_native(err, np.float64), copy=False)
    elif wht_data is not None:
        info["uncertainty"] = InverseVariance(wht_data, copy=False)
    info["mask"] = mask
    filt = _first((primary, header), "FILTER")
    pupil = _first((primary, header), "PUPIL")
    band = str(filt).strip() if filt else None
    if band and isinstance(pupil, str) and pupil.strip() \
            and not pupil.strip().upper().startswith("CLEAR"):
        band = f"{band}+{pupil.strip()}"
    info["band"] = band
    info["exptime"] = _exptime((primary, header), "EFFEXPTM", "XPOSURE", "EXPTIME")
    bunit = _first((header, primary), "BUNIT")
    unit = _unit(bunit)
    info["unit"] = unit
    pixar = _first((header, primary), "PIXAR_SR")
    photmjsr = _first((header, primary), "PHOTMJSR")
    info["zeropoint"] = jwst_zeropoint(unit, _float_or_none(pixar), _float_or_none(photmjsr))
    info["meta"] = {"format": "JWST", "hdu": where, "wcs_source": wcs_source,
                    "instrument": _python(_first((primary,), "INSTRUME")),
                    "detector": _python(_first((primary, header), "DETECTOR")),
                    "filter": _python(filt), "pupil": _python(pupil),
                    "bunit": _python(bunit), "pixar_sr": _python(pixar),
                    "photmjsr": _python(photmjsr),
                    "mjd_obs": _python(_first((primary, header), "MJD-AVG", "EXPMID",
                                              "MJD-OBS"))}
    return info


def _float_or_none(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _hst_band(headers):
    for keys in (("FILTER",), ("FILTER1", "FILTER2"), ("FILTNAM1", "FILTNAM2")):
        names = []
        for key in keys:
            value = _first(headers, key)
            if isinstance(value, str):
                value = value.strip()
                if value and not value.upper().startswith("CLEAR") \
                        and value.upper() not in ("N/A", "NONE"):
                    names.append(value)
        if names:
            return "+".join(names)
    return None


def _read_hst(hdul, shown, key):
    if key is None and not _has(hdul, "SCI"):
        return _read_plain(hdul, shown, None)
    sci = _get_hdu(hdul, _sci_key(key), shown)
    info, where, ver, primary, header = _science(hdul, sci, shown)
    info["wcs"] = _fits_wcs(header, hdul, shown, where)
    err, dq, wht = _companion_arrays(hdul, ("ERR", "DQ", "WHT"), ver, info["data"].shape)
    mask, wht_data = _flags_and_positive(info["data"].shape, dq, wht)
    weight_source = None
    if err is not None:
        info["uncertainty"] = StdDevUncertainty(_native(err, np.float64), copy=False)
        weight_source = "ERR"
    elif wht_data is not None:
        info["uncertainty"] = InverseVariance(wht_data, copy=False)
        weight_source = "WHT"
    info["mask"] = mask
    headers = (header, primary)
    info["band"] = _hst_band((primary, header))
    exptime = _exptime((primary, header), "EXPTIME")
    info["exptime"] = exptime
    bunit = _first(headers, "BUNIT")
    info["unit"] = _unit(bunit)
    rate = _is_rate(bunit)
    photflam = _first(headers, "PHOTFLAM")
    photplam = _first(headers, "PHOTPLAM")
    info["zeropoint"] = _flux_density_zeropoint(info["unit"], photplam)
    if info["zeropoint"] is None:
        info["zeropoint"] = hst_zeropoint(photflam, photplam, rate=rate, exptime=exptime)
    info["meta"] = {"format": "HST", "hdu": where, "weight_source": weight_source,
                    "instrument": _python(_first((primary,), "INSTRUME")),
                    "detector": _python(_first((primary,), "DETECTOR")),
                    "bunit": _python(bunit), "photflam": _python(photflam),
                    "photplam": _python(photplam), "zeropoint_for_rate": rate,
                    "mjd_obs": _python(_first((primary, header), "EXPSTART", "MJD-OBS"))}
    return info


def _flux_density_zeropoint(unit, photplam):
    """AB zero point of one data unit of data already in flux density, or None.

    f_nu units (Jy, erg/s/cm^2/Hz): ``-2.5 log10(f_nu / 3631 Jy)``; f_lambda
    units (erg/s/cm^2/Angstrom, as some HST products' BUNIT): that of
    :func:`hst_zeropoint` with PHOTFLAM replaced by the unit in
    erg/s/cm^2/Angstrom (f_nu = f_lambda lambda^2 / c at the pivot wavelength
    PHOTPLAM).  None for other units (counts, rates, surface brightness), for
    which PHOTFLAM applies, and for f_lambda without a positive PHOTPLAM.
    """
    if unit is None:
        return None
    flam = u.erg / u.s / u.cm ** 2 / u.AA
    try:
        if unit.is_equivalent(u.Jy):
            return float(-2.5 * np.log10(unit.to(u.Jy) / 3631.0))
        if unit.is_equivalent(flam):
            return hst_zeropoint(unit.to(flam), photplam)
    except (AttributeError, TypeError, ValueError, u.UnitsError):
        return None
    return None


def _is_rate(bunit):
    """Whether HST data are count rates (per second), for the PHOTFLAM zero point.

    False only when ``BUNIT`` is counts (:func:`count_kind`); a blank or
    absent BUNIT is a rate (HST's drizzled products), and so is one that is
    not a detector unit, or counts times another power of time, since
    PHOTFLAM is defined per count rate.
    """
    try:
        return count_kind(bunit) != "counts"
    except InputError:
        return True


def _read_mpdaf(hdul, shown, key):
    """An MPDAF image (MUSE): DATA, STAT (variance) and DQ (nonzero = bad) extensions."""
    sci = _get_hdu(hdul, "DATA" if key is None else key, shown)
    if sci.name != "DATA":  # another HDU asked for: read it as a plain image
        return _read_plain(hdul, shown, key)
    info, where, ver, primary, header = _science(hdul, sci, shown)
    info["wcs"] = _fits_wcs(header, hdul, shown, where)
    stat, dq = _companion_arrays(hdul, ("STAT", "DQ"), ver, info["data"].shape)
    # MPDAF writes NaN variance outside the field: masked here, without a warning
    mask, var = _flags_and_positive(info["data"].shape, dq, stat)
    if var is not None:
        info["uncertainty"] = VarianceUncertainty(var, copy=False)
    info["mask"] = mask
    filt = _first((header, primary), "FILTER")
    bunit = _first((header, primary), "BUNIT")
    info.update({"band": str(filt).strip() if filt else None,
                 "exptime": _exptime((header, primary), "EXPTIME"),
                 "unit": _unit(bunit)})
    info["meta"] = {"format": "MPDAF", "hdu": where,
                    "instrument": _python(_first((primary, header), "INSTRUME")),
                    "telescope": _python(_first((primary, header), "TELESCOP")),
                    "bunit": _python(bunit),
                    "fscale": _python(_first((header, primary), "FSCALE"))}
    return info


def _read_plain(hdul, shown, key):
    if key is None:
        sci = next((h for h in hdul if not isinstance(h, (fits.BinTableHDU, fits.TableHDU))
                    and getattr(h, "data", None) is not None and h.data.ndim == 2), None)
        if sci is None:
            raise InputError(f"FITS file {shown!r} holds no 2-D image")
    else:
        sci = _get_hdu(hdul, key, shown)
    index = _hdu_index(hdul, sci)
    data = _native(_image(sci, shown))
    primary, header = hdul[0].header, sci.header
    where = _describe(sci, index)
    filt = _first((header, primary), "FILTER")
    bunit = _first((header, primary), "BUNIT")
    return {"data": data, "wcs": _fits_wcs(header, hdul, shown, where),
            "band": str(filt).strip() if filt else None,
            "exptime": _exptime((header, primary), "EXPTIME"),
            "unit": _unit(bunit), "extname": sci.name or None, "index": index,
            "meta": {"format": "FITS image", "hdu": where,
                     "instrument": _python(_first((primary, header), "INSTRUME")),
                     "telescope": _python(_first((primary, header), "TELESCOP")),
                     "bunit": _python(bunit)}}
