"""Exposure: one image with its noise, mask, WCS, PSF, band, exposure time and zero point."""

import copy
import logging
import math
import numbers
import warnings
from collections.abc import Mapping

import numpy as np
from astropy import units as u
from astropy.nddata import (
    InverseVariance,
    NDData,
    NDUncertainty,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.utils.masked import Masked

from ..errors import InputError

__all__ = ["Exposure", "ExposureWarning"]

log = logging.getLogger("astromix")


class ExposureWarning(UserWarning):
    """Something about an exposure was repaired or dropped (masked pixels, unstored PSF...).

    Raised through :func:`warnings.warn`; turn it into an error with
    ``warnings.simplefilter("error", ExposureWarning)``.
    """


#: Uncertainty classes an Exposure accepts (astropy.nddata).
_UNCERTAINTY_TYPES = (StdDevUncertainty, VarianceUncertainty, InverseVariance)


# -- validation helpers ---------------------------------------------------------------------------

def _number(value, what, *, positive=False):
    """A finite float (``> 0`` if ``positive``) or None; InputError otherwise."""
    if value is None:
        return None
    if isinstance(value, u.Quantity):
        if what == "exptime":
            try:
                value = value.to_value(u.s)
            except u.UnitConversionError:
                raise InputError(f"exptime must be a time, got a Quantity in {value.unit}"
                                 ) from None
        else:
            value = value.value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise InputError(f"{what} must be a finite{' positive' if positive else ''} number, "
                         f"got {value}")
    return value


def _split_mask(values):
    """``(values, mask)``: a NumPy masked array or an astropy
    :class:`~astropy.utils.masked.Masked` array (or Quantity, its unit kept) of any
    shape split into its unmasked values and its mask (bool, True = bad); any other
    value is returned as it is, with None."""
    mask = None
    if isinstance(values, Masked):  # before Quantity: a Masked Quantity is one too
        mask = np.asarray(values.mask, dtype=bool)
        values = values.unmasked
    if isinstance(values, np.ma.MaskedArray):
        given = np.ma.getmaskarray(values)
        mask = given if mask is None else mask | given
        values = np.ma.getdata(values)
    return values, mask


def _as_data(data):
    """(ndarray of floats, unit or None, mask or None) from an array, Quantity or masked array.

    The mask (bool, True = bad) is that of a NumPy masked array or an astropy
    :class:`~astropy.utils.masked.Masked` array or Quantity (its unit kept), else None.
    """
    unit = None
    if isinstance(data, NDData):
        raise InputError("Exposure data must be an array, not an NDData; pass its .data, "
                         ".uncertainty, .mask and .wcs explicitly")
    data, mask = _split_mask(data)
    if isinstance(data, u.Quantity):
        unit = data.unit
        data = data.value
    try:
        arr = np.asarray(data)
    except Exception as exc:
        raise InputError(f"Exposure data could not be read as an array: {exc}") from exc
    if arr.ndim != 2:
        raise InputError(f"Exposure data must be a 2-D image (ny, nx), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"Exposure data is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:  # float16: ASDF stores only float32 and float64
            arr = arr.astype(np.float32)
        elif arr.dtype.itemsize > 8:  # longdouble (float96, float128)
            arr = arr.astype(np.float64)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
    elif arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)
    else:
        raise InputError(f"Exposure data must be real numbers, got data type {arr.dtype}")
    return arr, unit, mask


def _as_mask(mask, shape):
    """A boolean array of ``shape`` (True = bad); numbers are read as nonzero = bad."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise InputError(f"mask has shape {arr.shape}, the data {shape}")
    if arr.dtype == bool:
        return arr.copy()
    if arr.dtype.kind not in "iuf":
        raise InputError(f"mask must be boolean (True = bad pixel), got data type {arr.dtype}")
    return arr != 0


def _as_uncertainty(uncertainty, shape):
    """An NDUncertainty of a supported kind and the right shape (arrays read as std. dev.)."""
    if uncertainty is None:
        return None
    if isinstance(uncertainty, NDUncertainty):
        if not isinstance(uncertainty, _UNCERTAINTY_TYPES):
            raise InputError("uncertainty must be a StdDevUncertainty, VarianceUncertainty or "
                             f"InverseVariance, got {type(uncertainty).__name__}")
        values = np.asarray(uncertainty.array)
    else:
        unit = None
        if isinstance(uncertainty, u.Quantity):
            unit = uncertainty.unit
            uncertainty = uncertainty.value
        try:
            values = np.asarray(uncertainty)
        except Exception as exc:
            raise InputError(f"uncertainty could not be read as an array: {exc}") from exc
        if values.dtype.kind in "iub":
            values = values.astype(np.float64)
        uncertainty = None  # built below, once the values are checked
    if values.shape != shape:
        raise InputError(f"uncertainty has shape {values.shape}, the data {shape}")
    if values.dtype.kind not in "fiu":
        raise InputError(f"uncertainty must be real numbers, got data type {values.dtype}")
    if uncertainty is None:
        return StdDevUncertainty(values, unit=unit, copy=False)
    return uncertainty


def _inverse_variance(uncertainty, data_unit):
    """(inverse variance float64 array, bad pixels) of an uncertainty, in 1 / data_unit**2.

    Bad pixels (zero, negative or non-finite standard deviation or variance;
    zero, negative or non-finite inverse variance) get 0.
    """
    values = np.asarray(uncertainty.array, dtype=np.float64)
    unit = uncertainty.unit
    power = {StdDevUncertainty: 1, VarianceUncertainty: 2, InverseVariance: -2}
    kind = next(cls for cls in power if isinstance(uncertainty, cls))
    scale = 1.0
    if unit is not None and data_unit is not None:
        try:
            scale = unit.to(data_unit ** power[kind])
        except u.UnitConversionError as exc:
            raise InputError(f"the uncertainty unit {unit} does not match the data unit "
                             f"{data_unit}") from exc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind is StdDevUncertainty:
            sigma = values * scale
            ivar = 1.0 / (sigma * sigma)
            bad = ~(np.isfinite(sigma) & (sigma > 0))
        elif kind is VarianceUncertainty:
            var = values * scale
            ivar = 1.0 / var
            bad = ~(np.isfinite(var) & (var > 0))
        else:
            ivar = values * scale
            bad = ~(np.isfinite(ivar) & (ivar > 0))
        bad |= ~np.isfinite(ivar) | (ivar <= 0)
    ivar[bad] = 0.0
    return ivar, bad


def _is_astropy_wcs(wcs):
    from astropy.wcs import WCS

    return isinstance(wcs, WCS)


def _is_gwcs(wcs):
    try:
        from gwcs import WCS as GWCS
    except ImportError:  # pragma: no cover - gwcs is a dependency
        return False
    return isinstance(wcs, GWCS)


def _check_wcs(wcs):
    """Validate a celestial 2-D WCS; return (wcs, low-level API object, lon axis index)."""
    if wcs is None:
        return None, None, 0
    if _is_astropy_wcs(wcs):
        if wcs.naxis != 2 or not wcs.has_celestial:
            if wcs.has_celestial and sorted((wcs.wcs.lng, wcs.wcs.lat)) == [0, 1]:
                wcs = wcs.celestial
            else:
                raise InputError(f"the WCS is not a 2-D celestial WCS (axes "
                                 f"{list(wcs.wcs.ctype)})")
    low = getattr(wcs, "low_level_wcs", wcs)
    for method in ("world_to_pixel_values", "pixel_to_world_values"):
        if not callable(getattr(low, method, None)):
            raise InputError(f"wcs must be an astropy.wcs.WCS, a gwcs.WCS or another object "
                             f"with the APE 14 method {method}(); got {type(wcs).__name__}")
    try:
        n_pix, n_world = low.pixel_n_dim, low.world_n_dim
        types = tuple(low.world_axis_physical_types)
    except Exception as exc:
        raise InputError(f"the WCS does not describe its axes (APE 14): {exc}") from exc
    if n_pix != 2 or n_world != 2:
        raise InputError(f"the WCS must map 2 pixel axes to 2 sky axes, it maps {n_pix} to "
                         f"{n_world}")
    if "pos.eq.ra" not in types or "pos.eq.dec" not in types:
        celestial = all(t is not None and t.startswith("pos.") for t in types)
        if celestial:
            raise InputError(f"the WCS is celestial but not equatorial (world axes {types}); "
                             "astromix works in (ra, dec): reproject the image or give an "
                             "equatorial WCS")
        raise InputError(f"the WCS is not celestial (world axes {types})")
    return wcs, low, types.index("pos.eq.ra")


def _check_psf(psf):
    """Validate a PSF: None, a GaussianMixturePSF (a GaussianMixture is wrapped), or a provider."""
    from ..mixtures import GaussianMixture
    from ..models.psf import GaussianMixturePSF

    if psf is None or isinstance(psf, GaussianMixturePSF):
        return psf
    if isinstance(psf, GaussianMixture):
        return GaussianMixturePSF(psf)
    if callable(getattr(psf, "mixture", None)) or callable(psf):
        return psf
    raise InputError("psf must be None, a GaussianMixturePSF, a GaussianMixture, a callable "
                     "psf(x, y) -> GaussianMixturePSF or an object with a .mixture(x, y) method; "
                     f"got {type(psf).__name__}")


def _celestial_frame(low):
    """The celestial frame of an APE 14 low-level WCS (astropy, gwcs...), or None."""
    from astropy.coordinates import BaseCoordinateFrame, SkyCoord

    try:
        classes = low.world_axis_object_classes
    except Exception:
        return None
    for value in classes.values():
        # APE 14: (class, args, kwargs); a SkyCoord's kwargs hold its frame.
        if not (isinstance(value, tuple) and len(value) >= 3 and isinstance(value[0], type)
                and issubclass(value[0], SkyCoord) and isinstance(value[2], Mapping)):
            continue
        frame = value[2].get("frame")
        if isinstance(frame, (BaseCoordinateFrame, str)):
            return frame
        if isinstance(frame, type) and issubclass(frame, BaseCoordinateFrame):
            return frame()
    return None


def _as_lonlat(ra, dec, frame=None):
    """Arrays of (ra, dec) in degrees from numbers, arrays, Quantities or a SkyCoord.

    A SkyCoord is transformed into ``frame`` (the WCS's celestial frame), ICRS
    when ``frame`` is None.
    """
    from astropy.coordinates import SkyCoord

    if isinstance(ra, SkyCoord):
        if dec is not None:
            raise InputError("give either a SkyCoord or (ra, dec), not both")
        try:
            sky = ra.transform_to(frame if frame is not None else "icrs")
        except Exception as exc:
            raise InputError(f"the SkyCoord (frame {ra.frame.name}) could not be transformed "
                             f"into the WCS's frame {frame}: {exc}") from None
        sph = sky.spherical
        return (np.asarray(sph.lon.to_value(u.deg), dtype=float),
                np.asarray(sph.lat.to_value(u.deg), dtype=float))
    if dec is None:
        raise InputError("dec is missing: give (ra, dec) in degrees or a SkyCoord")
    out = []
    for value, what in ((ra, "ra"), (dec, "dec")):
        if isinstance(value, u.Quantity):
            try:
                value = value.to_value(u.deg)
            except u.UnitConversionError as exc:
                raise InputError(f"{what} must be an angle, got unit {value.unit}") from exc
        try:
            out.append(np.asarray(value, dtype=float))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} must be a number or an array of numbers [deg]") from exc
    return out[0], out[1]


def _scalar_or_array(value, scalar):
    return float(value) if scalar else value


# -- Exposure -------------------------------------------------------------------------------------

class Exposure(NDData):
    """One exposure (image) of a multi-exposure scene, with its noise, mask, WCS and PSF.

    An :class:`astropy.nddata.NDData` whose data are checked on construction
    and which carries what a scene fitter needs about the exposure: the
    inverse-variance :attr:`weight`, the sky-to-pixel mapping (through the full
    WCS, distortions included), the PSF at any position, the band, the
    exposure time and the photometric zero point.

    Parameters
    ----------
    data : array-like, Quantity or masked array, shape (ny, nx)
        The image, in data units (a Quantity or ``unit`` gives them).  Integer
        data are converted to float64; float32 and float64 data are kept as
        they are (in native byte order); float16 data become float32 and
        extended-precision (``longdouble``) data float64, the types ASDF and
        HDF5 files store.  Non-finite pixels are masked and set to 0 in
        :attr:`data` (one `ExposureWarning` gives their number, counting only
        pixels that ``mask`` did not already mask).  The mask of a NumPy masked
        array or of an astropy :class:`~astropy.utils.masked.Masked` array or
        Quantity is kept (combined with ``mask``).
    uncertainty : NDUncertainty or array-like, shape (ny, nx), optional
        A :class:`~astropy.nddata.StdDevUncertainty`,
        :class:`~astropy.nddata.VarianceUncertainty` or
        :class:`~astropy.nddata.InverseVariance`; a plain array or Quantity is
        read as the standard deviation.  Pixels with zero, negative or
        non-finite standard deviation or variance (or inverse variance) are
        masked, with one `ExposureWarning` that gives their number (pixels
        already masked are not counted).  Without it :attr:`weight` is 1 on
        every unmasked pixel.
    mask : array-like of bool, shape (ny, nx), optional
        True marks a bad pixel (numbers: nonzero is bad).  The stored
        :attr:`mask` also holds the pixels masked in masked ``data`` and those
        masked for bad data or uncertainty.
    wcs : astropy.wcs.WCS, gwcs.WCS or APE 14 WCS, optional
        The celestial WCS: pixel (x, y), 0-based, to (ra, dec) in degrees.  Any
        object with the APE 14 low-level API (``pixel_to_world_values``,
        ``world_to_pixel_values``, ``world_axis_physical_types``) is accepted;
        its world axes must be equatorial (``pos.eq.ra``, ``pos.eq.dec``).
        Needed for sky work; None is allowed for pixel-only use.
    psf : GaussianMixturePSF, GaussianMixture, callable or PSF model, optional
        The PSF in this exposure's pixels: a :class:`~astromix.GaussianMixturePSF`
        (the same everywhere; a GaussianMixture is wrapped into one), a callable
        ``psf(x, y) -> GaussianMixturePSF`` or an object with a method
        ``mixture(x, y)`` (e.g. a PSFEx model), called with pixel positions in
        the PSF's own frame (see ``psf_origin``).  See :meth:`psf_at`.
    band : str, optional
        The band (filter) name, e.g. ``"z"`` or ``"F200W"``.
    exptime : float or Quantity, optional
        Exposure time [s] (> 0).
    zeropoint : float, optional
        AB magnitude of a source that gives one data unit in total (summed over
        its pixels) in this exposure; see :meth:`flux_scale`.
    name : str, optional
        A name, unique among the exposures of a scene (it names the exposure's
        group in HDF5 files).  :meth:`from_fits` takes it from the file name.
    meta : dict-like, optional
        Metadata; only its JSON-compatible entries are written to files.
    unit : str or astropy.units.Unit, optional
        Data unit (e.g. ``"MJy/sr"``).
    psf_origin : (float, float), optional
        Position (x, y) [px] of this exposure's pixel (0, 0) in the frame a
        position-dependent PSF is evaluated in; default (0, 0).  A
        :meth:`cutout` adds its offset here, so that a PSFEx model of the
        whole CCD is still evaluated at the CCD position of a source.

    Attributes
    ----------
    data : ndarray, shape (ny, nx)
        The image (masked non-finite pixels set to 0).
    mask : ndarray of bool, shape (ny, nx)
        True on every bad pixel.
    weight : ndarray of float64, shape (ny, nx)
        Inverse variance [1 / data unit^2], 0 on masked pixels (read-only).

    Raises
    ------
    InputError
        If the data are not a 2-D array of real numbers, a shape differs from
        the data's, every pixel is masked, the uncertainty is of another kind
        (e.g. UnknownUncertainty), the WCS is not a 2-D equatorial celestial
        WCS, the PSF is of an unsupported type, or ``exptime`` (> 0),
        ``zeropoint`` or ``psf_origin`` are not finite numbers (a Quantity
        ``exptime`` must be a time).

    See Also
    --------
    Exposure.from_fits : read DECam community-pipeline, JWST, HST, MPDAF and plain FITS images.
    astromix.data.write_exposures, astromix.data.read_exposures : ASDF and HDF5 files.

    Notes
    -----
    Pixel centres lie at integer coordinates, origin 0, and arrays are indexed
    ``[y, x]`` (the astropy convention).  :attr:`data` is not copied when it
    needs no repair; changing it, or the uncertainty's array, after
    construction bypasses the checks and leaves :attr:`weight` stale (its
    value is cached).  Setting :attr:`mask` or :attr:`uncertainty` re-runs the
    checks and clears the cache.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix import GaussianMixture
    >>> from astromix.data import Exposure
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> wcs.wcs.crval = [150.0, 2.0]
    >>> wcs.wcs.crpix = [16.0, 11.0]
    >>> wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    >>> image = np.zeros((21, 31))
    >>> psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    >>> exp = Exposure(image, uncertainty=np.full(image.shape, 0.5), wcs=wcs, psf=psf,
    ...                band="r", exptime=100.0, zeropoint=30.0, name="r1")
    >>> exp.shape, float(exp.weight[0, 0])
    ((21, 31), 4.0)
    >>> x, y = exp.world_to_pixel(150.0, 2.0)  # the reference pixel, 0-based
    >>> round(x, 6), round(y, 6)
    (15.0, 10.0)
    >>> exp.contains(150.0, 2.0, margin=5)
    True
    >>> round(exp.pixel_scale(15, 10), 4)  # arcsec / px
    0.2
    >>> round(exp.flux_scale(22.5), 9)  # data units per catalog flux unit (nanomaggies)
    1000.0
    >>> cut = exp.cutout(150.0, 2.0, 9)
    >>> cut.shape, cut.psf_origin
    ((9, 9), (11.0, 6.0))
    """

    def __init__(self, data, *, uncertainty=None, mask=None, wcs=None, psf=None, band=None,
                 exptime=None, zeropoint=None, name=None, meta=None, unit=None,
                 psf_origin=(0.0, 0.0)):
        self._ready = False
        self._weight = None
        arr, data_unit, data_mask = _as_data(data)
        if unit is not None:
            try:
                unit = u.Unit(unit)
            except (TypeError, ValueError) as exc:
                raise InputError(f"unit {unit!r} is not a valid unit: {exc}") from exc
            if data_unit is not None and data_unit != unit:
                try:
                    arr = (arr * data_unit).to_value(unit)
                except u.UnitConversionError as exc:
                    raise InputError(f"the data unit {data_unit} does not match unit={unit}"
                                     ) from exc
        else:
            unit = data_unit
        # Cheap checks first, so that a refused exposure gives no pixel warnings.
        wcs, self._low_wcs, self._lon_axis = _check_wcs(wcs)
        psf = _check_psf(psf)
        if meta is not None and not isinstance(meta, Mapping):
            raise InputError(f"meta must be a mapping (dict), got {type(meta).__name__}")
        if band is not None and not isinstance(band, str):
            raise InputError(f"band must be a string, got {type(band).__name__}")
        if name is not None and not isinstance(name, str):
            raise InputError(f"name must be a string, got {type(name).__name__}")
        self._band = band
        self._name = name
        self._exptime = _number(exptime, "exptime", positive=True)
        self._zeropoint = _number(zeropoint, "zeropoint")
        try:
            ox, oy = psf_origin
        except (TypeError, ValueError):
            raise InputError(f"psf_origin must be a pair (x, y) [px], got {psf_origin!r}"
                             ) from None
        self._psf_origin = (_number(ox, "psf_origin x"), _number(oy, "psf_origin y"))
        if None in self._psf_origin:
            raise InputError("psf_origin must be a pair of numbers (x, y) [px]")

        shape = arr.shape
        user_mask = _as_mask(mask, shape)
        if data_mask is not None:  # a masked array's own mask, with mask= on top
            user_mask = user_mask | data_mask
        unc = _as_uncertainty(uncertainty, shape)

        bad_data = ~np.isfinite(arr)
        n_new = int(np.count_nonzero(bad_data & ~user_mask))
        if n_new:
            warnings.warn(f"{_label(name)}: {n_new} pixel(s) with non-finite data (NaN or inf) "
                          "were masked", ExposureWarning, stacklevel=2)
        if bad_data.any():
            arr = np.where(bad_data, np.zeros((), arr.dtype), arr)
        bad_unc = np.zeros(shape, dtype=bool)
        if unc is not None:
            _, bad_unc = _inverse_variance(unc, unit)
            n_new = int(np.count_nonzero(bad_unc & ~user_mask & ~bad_data))
            if n_new:
                warnings.warn(f"{_label(name)}: {n_new} pixel(s) with zero, negative or "
                              "non-finite uncertainty were masked", ExposureWarning,
                              stacklevel=2)
        full = user_mask | bad_data | bad_unc
        if full.all():
            raise InputError(f"{_label(name)}: every pixel of the {shape[0]} x {shape[1]} "
                             "image is masked")

        self._user_mask = user_mask
        self._bad_data = bad_data
        self._bad_unc = bad_unc
        super().__init__(arr, uncertainty=unc, mask=full, wcs=wcs, meta=meta, unit=unit,
                         psf=psf)
        self._ready = True

    # -- NDData attributes with checks ---------------------------------------------------------
    @property
    def mask(self):
        """ndarray of bool, shape (ny, nx): True on every bad pixel.

        Setting it re-runs the checks: the pixels with bad data or uncertainty
        stay masked, and an all-masked result raises InputError.
        """
        return self._mask

    @mask.setter
    def mask(self, value):
        if not self._ready:
            self._mask = value
            return
        user = _as_mask(value, self.shape)
        full = user | self._bad_data | self._bad_unc
        if full.all():
            raise InputError(f"{_label(self._name)}: this mask would mask every pixel")
        self._user_mask, self._mask, self._weight = user, full, None

    @property
    def uncertainty(self):
        """NDUncertainty or None: the pixel noise (StdDev, Variance or InverseVariance).

        Setting it re-runs the checks (bad values are masked, with a warning).
        """
        return self._uncertainty

    @uncertainty.setter
    def uncertainty(self, value):
        if not self._ready:
            NDData.uncertainty.fset(self, value)
            return
        unc = _as_uncertainty(value, self.shape)
        bad = np.zeros(self.shape, dtype=bool)
        if unc is not None:
            _, bad = _inverse_variance(unc, self.unit)
            n_new = int(np.count_nonzero(bad & ~self._user_mask & ~self._bad_data))
            if n_new:
                warnings.warn(f"{_label(self._name)}: {n_new} pixel(s) with zero, negative or "
                              "non-finite uncertainty were masked", ExposureWarning,
                              stacklevel=2)
        full = self._user_mask | self._bad_data | bad
        if full.all():
            raise InputError(f"{_label(self._name)}: this uncertainty would mask every pixel")
        self._uncertainty = None
        NDData.uncertainty.fset(self, unc)
        self._bad_unc, self._mask, self._weight = bad, full, None

    @property
    def psf(self):
        """The PSF: None, a GaussianMixturePSF, or a position-dependent provider.

        See :meth:`psf_at`.  Setting it checks the type (InputError).
        """
        return self._psf

    @psf.setter
    def psf(self, value):
        self._psf = _check_psf(value)

    @property
    def wcs(self):
        """The celestial WCS (astropy.wcs.WCS, gwcs.WCS or APE 14 high-level object) or None."""
        return self._wcs

    @wcs.setter
    def wcs(self, value):
        if self._ready:
            value, self._low_wcs, self._lon_axis = _check_wcs(value)
            self._wcs = None
        NDData.wcs.fset(self, value)

    # -- plain attributes ----------------------------------------------------------------------
    @property
    def shape(self):
        """(ny, nx): the image shape."""
        return self._data.shape

    @property
    def band(self):
        """str or None: the band (filter) name."""
        return self._band

    @property
    def exptime(self):
        """float or None: the exposure time [s]."""
        return self._exptime

    @property
    def zeropoint(self):
        """float or None: AB magnitude of a source giving one data unit in total."""
        return self._zeropoint

    @property
    def name(self):
        """str or None: the exposure's name."""
        return self._name

    @property
    def psf_origin(self):
        """(x, y) [px]: this exposure's pixel (0, 0) in the PSF's frame (see :meth:`psf_at`)."""
        return self._psf_origin

    @property
    def weight(self):
        """ndarray of float64, shape (ny, nx): inverse variance, 0 on masked pixels.

        In 1 / (data unit)^2; 1 on unmasked pixels when there is no
        uncertainty.  Computed once and cached; the array is read-only.
        """
        if self._weight is None:
            if self._uncertainty is None:
                weight = np.ones(self.shape, dtype=np.float64)
            else:
                weight, _ = _inverse_variance(self._uncertainty, self.unit)
            weight[self._mask] = 0.0
            weight.flags.writeable = False
            self._weight = weight
        return self._weight

    def inverse_variance(self):
        """The inverse variance of every pixel, masked or not, as a new float64 array.

        Like :attr:`weight` but not zeroed on the pixels that only the mask
        excludes; 0 where the uncertainty is zero, negative or non-finite.

        Returns
        -------
        ndarray of float64, shape (ny, nx), or None
            In 1 / (data unit)^2; None when the exposure has no uncertainty.
        """
        if self._uncertainty is None:
            return None
        ivar, _ = _inverse_variance(self._uncertainty, self.unit)
        return ivar

    def __repr__(self):
        wcs = ("none" if self._wcs is None else "astropy" if _is_astropy_wcs(self._wcs)
               else "gwcs" if _is_gwcs(self._wcs) else type(self._wcs).__name__)
        psf = "none" if self._psf is None else type(self._psf).__name__
        return (f"<Exposure name={self._name!r} band={self._band!r} shape={self.shape} "
                f"unit={str(self.unit) if self.unit is not None else None!r} "
                f"masked={int(np.count_nonzero(self._mask))} wcs={wcs} psf={psf} "
                f"exptime={self._exptime} zeropoint={self._zeropoint}>")

    __str__ = __repr__

    # -- photometry ----------------------------------------------------------------------------
    def flux_scale(self, ref_zeropoint):
        """Data units per catalog flux unit: ``10**(0.4 * (zeropoint - ref_zeropoint))``.

        A source of flux ``f`` in the catalog's units (whose zero point is
        ``ref_zeropoint``, e.g. 22.5 for nanomaggies or 23.9 for microjansky)
        gives ``f * flux_scale(ref_zeropoint)`` data units in total in this
        exposure.

        Parameters
        ----------
        ref_zeropoint : float
            AB magnitude of one catalog flux unit.

        Returns
        -------
        float
            The scale; 1.0 when the exposure has no :attr:`zeropoint`.

        Raises
        ------
        InputError
            If ``ref_zeropoint`` is not a finite number.
        """
        ref = _number(ref_zeropoint, "ref_zeropoint")
        if ref is None:
            raise InputError("ref_zeropoint must be a finite number")
        if self._zeropoint is None:
            return 1.0
        return 10.0 ** (0.4 * (self._zeropoint - ref))

    # -- PSF -----------------------------------------------------------------------------------
    def psf_at(self, x, y):
        """The PSF at pixel position (x, y) of this exposure.

        Parameters
        ----------
        x, y : float
            Position in this exposure's pixels (0-based).

        Returns
        -------
        GaussianMixturePSF
            The PSF itself when it does not depend on position (not a copy: do
            not change its parameters in place).  A provider (an object with a
            ``mixture(x, y)`` method, such as a PSFEx model, or a callable
            ``psf(x, y)``) is called at ``(x + psf_origin[0], y +
            psf_origin[1])``, the position in its own frame (for a cutout, the
            original image); a GaussianMixture it returns is wrapped into a
            GaussianMixturePSF.

        Raises
        ------
        InputError
            If the exposure has no PSF, ``x`` or ``y`` is not a finite number,
            or the provider returns something other than a GaussianMixturePSF
            or GaussianMixture.
        """
        from ..mixtures import GaussianMixture
        from ..models.psf import GaussianMixturePSF

        psf = self._psf
        if psf is None:
            raise InputError(f"{_label(self._name)} has no PSF")
        if np.ndim(x) != 0 or np.ndim(y) != 0:
            raise InputError("psf_at takes one position (x, y) [px], not arrays")
        x = _number(x.item() if isinstance(x, np.ndarray) else x, "x")
        y = _number(y.item() if isinstance(y, np.ndarray) else y, "y")
        if x is None or y is None:
            raise InputError("psf_at takes one finite position (x, y) [px]")
        if isinstance(psf, GaussianMixturePSF):
            return psf
        px, py = x + self._psf_origin[0], y + self._psf_origin[1]
        if callable(getattr(psf, "mixture", None)):
            result = psf.mixture(px, py)
        else:
            result = psf(px, py)
        if isinstance(result, GaussianMixture):
            return GaussianMixturePSF(result)
        if isinstance(result, GaussianMixturePSF):
            return result
        raise InputError(f"the PSF provider {type(psf).__name__} returned "
                         f"{type(result).__name__}, not a GaussianMixturePSF or GaussianMixture")

    # -- coordinates ---------------------------------------------------------------------------
    def _need_wcs(self):
        if self._wcs is None:
            raise InputError(f"{_label(self._name)} has no WCS: sky coordinates are not "
                             "available")

    def world_to_pixel(self, ra, dec=None):
        """Pixel position (x, y), 0-based, of sky positions, through the full WCS.

        Parameters
        ----------
        ra, dec : float, array-like or Quantity
            Right ascension and declination [deg] (Quantities are converted),
            in the WCS's equatorial frame (ICRS for the DECam, JWST and HST
            products).  ``ra`` may instead be a SkyCoord (then ``dec`` is
            omitted), in any frame: it is transformed into the WCS's own
            celestial frame (e.g. FK5 or FK4 with the WCS's equinox, as
            astropy's ``WCS.world_to_pixel`` does; ICRS when the WCS names
            none).

        Returns
        -------
        x, y : float or ndarray
            Pixel coordinates [px] (pixel centres at integers, origin 0), the
            broadcast shape of ``ra`` and ``dec``; NaN where the WCS has no
            solution (e.g. outside a gwcs bounding box) or the input is not
            finite.

        Raises
        ------
        InputError
            If the exposure has no WCS, a SkyCoord cannot be transformed into
            the WCS's frame, or the WCS fails to map sky to pixels (e.g. a
            gwcs with no inverse transform).

        Notes
        -----
        For an astropy WCS this is ``all_world2pix`` (SIP, TPV and
        lookup-table distortions included) solved to 1e-8 px; a point where
        the iteration does not converge gives its best solution and an
        `ExposureWarning`.  Otherwise the WCS's APE 14
        ``world_to_pixel_values`` is used.
        """
        from astropy.coordinates import SkyCoord

        self._need_wcs()
        frame = _celestial_frame(self._low_wcs) if isinstance(ra, SkyCoord) else None
        ra, dec = _as_lonlat(ra, dec, frame)
        ra, dec = np.broadcast_arrays(ra, dec)
        scalar = ra.ndim == 0
        shape = ra.shape
        ra, dec = ra.ravel(), dec.ravel()
        ok = np.isfinite(ra) & np.isfinite(dec)
        x = np.full(ra.shape, np.nan)
        y = np.full(ra.shape, np.nan)
        if ok.any():
            world = (ra[ok], dec[ok]) if self._lon_axis == 0 else (dec[ok], ra[ok])
            if _is_astropy_wcs(self._wcs):
                from astropy.wcs import NoConvergence

                try:
                    px, py = self._wcs.all_world2pix(*world, 0, tolerance=1e-8, maxiter=100,
                                                     quiet=False)
                except NoConvergence as exc:
                    warnings.warn(f"{_label(self._name)}: world_to_pixel did not converge for "
                                  "some positions; returning the best solution",
                                  ExposureWarning, stacklevel=2)
                    px, py = exc.best_solution.T
            else:
                try:
                    px, py = self._low_wcs.world_to_pixel_values(*world)
                except Exception as exc:
                    # e.g. a gwcs with no analytic inverse whose numerical one fails
                    raise InputError(f"{_label(self._name)}: the WCS cannot map sky to pixels: "
                                     f"{type(exc).__name__}: {exc}") from exc
            x[ok], y[ok] = px, py
        x, y = x.reshape(shape), y.reshape(shape)
        return _scalar_or_array(x, scalar), _scalar_or_array(y, scalar)

    def pixel_to_world(self, x, y):
        """Sky position (ra, dec) [deg] of pixel positions, through the full WCS.

        Parameters
        ----------
        x, y : float or array-like
            Pixel coordinates [px], 0-based (pixel centres at integers).

        Returns
        -------
        ra, dec : float or ndarray
            In degrees, in the WCS's equatorial frame, the broadcast shape of
            ``x`` and ``y``.

        Raises
        ------
        InputError
            If the exposure has no WCS.
        """
        self._need_wcs()
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        scalar = x.ndim == 0
        shape = x.shape
        x, y = x.ravel(), y.ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        ra = np.full(x.shape, np.nan)
        dec = np.full(x.shape, np.nan)
        if ok.any():
            if _is_astropy_wcs(self._wcs):
                world = self._wcs.all_pix2world(x[ok], y[ok], 0)
            else:
                world = self._low_wcs.pixel_to_world_values(x[ok], y[ok])
            lon, lat = (world[0], world[1]) if self._lon_axis == 0 else (world[1], world[0])
            ra[ok], dec[ok] = lon, lat
        ra, dec = ra.reshape(shape), dec.reshape(shape)
        return _scalar_or_array(ra, scalar), _scalar_or_array(dec, scalar)

    def contains(self, ra, dec=None, margin=0):
        """Whether sky positions fall on the image, at least ``margin`` pixels inside its edge.

        Parameters
        ----------
        ra, dec : float, array-like, Quantity or SkyCoord
            Sky positions [deg], as for :meth:`world_to_pixel`.
        margin : float, optional
            Distance [px] the position must keep from the image edge (the
            outer edges of the border pixels, at -0.5 and n - 0.5).  Negative
            values accept positions just outside.

        Returns
        -------
        bool or ndarray of bool
            True where ``margin - 0.5 <= x <= nx - 0.5 - margin`` and likewise
            for y; False where the WCS gives no solution.  Masked pixels are
            not considered.

        Raises
        ------
        InputError
            If the exposure has no WCS or ``margin`` is not a number, or for
            the reasons of :meth:`world_to_pixel` (a SkyCoord is transformed
            into the WCS's frame as there).
        """
        margin = _number(margin, "margin")
        if margin is None:
            raise InputError("margin must be a number [px]")
        x, y = self.world_to_pixel(ra, dec)
        ny, nx = self.shape
        with np.errstate(invalid="ignore"):
            inside = ((np.asarray(x) >= margin - 0.5) & (np.asarray(x) <= nx - 0.5 - margin)
                      & (np.asarray(y) >= margin - 0.5) & (np.asarray(y) <= ny - 0.5 - margin))
        return bool(inside) if np.ndim(inside) == 0 else inside

    def jacobian(self, x, y, *, step=0.05):
        """Local derivative of the sky position with respect to the pixel position.

        Parameters
        ----------
        x, y : float or array-like
            Pixel position(s) [px], 0-based.
        step : float, optional
            Half-step [px] of the central differences (a finite number > 0).

        Returns
        -------
        ndarray, shape (..., 2, 2)
            ``J[..., i, j] = d(xi, eta)_i / d(x, y)_j`` [arcsec / px], where
            ``xi = (ra - ra0) cos(dec0)`` (east) and ``eta = dec - dec0``
            (north) are offsets on the tangent plane at the position.  A
            sky-plane mixture maps to pixels through ``inv(J)`` (DESIGN: mu ->
            J^-1 mu, C -> J^-1 C J^-T).

        Raises
        ------
        InputError
            If the exposure has no WCS or ``step`` is not a finite number > 0.
        """
        self._need_wcs()
        h = _number(step, "step", positive=True)
        if h is None:
            raise InputError("step must be a finite number > 0 [px], got None")
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        xs = np.stack([x + h, x - h, x, x])
        ys = np.stack([y, y, y + h, y - h])
        ra, dec = self.pixel_to_world(xs, ys)
        ra, dec = np.asarray(ra), np.asarray(dec)
        cosd = np.cos(np.radians(0.5 * (dec[2] + dec[3])))

        def dra(a, b):
            return ((a - b + 180.0) % 360.0) - 180.0

        jac = np.empty(x.shape + (2, 2))
        jac[..., 0, 0] = dra(ra[0], ra[1]) * cosd
        jac[..., 1, 0] = dec[0] - dec[1]
        jac[..., 0, 1] = dra(ra[2], ra[3]) * cosd
        jac[..., 1, 1] = dec[2] - dec[3]
        return jac * (3600.0 / (2 * h))

    def pixel_scale(self, x, y):
        """Local pixel scale ``sqrt(|det J|)`` [arcsec / px] at pixel position(s) (x, y).

        Parameters
        ----------
        x, y : float or array-like
            Pixel position(s) [px], 0-based.

        Returns
        -------
        float or ndarray
            The geometric mean of the pixel's sides on the sky, distortions
            included (see :meth:`jacobian`).

        Raises
        ------
        InputError
            If the exposure has no WCS.
        """
        scale = np.sqrt(np.abs(np.linalg.det(self.jacobian(x, y))))
        return float(scale) if scale.ndim == 0 else scale

    # -- cutouts -------------------------------------------------------------------------------
    def cutout(self, ra, dec=None, size=None, *, mode="trim"):
        """A new Exposure holding the part of this one around a sky position.

        Parameters
        ----------
        ra, dec : float, Quantity or SkyCoord
            Centre of the cutout [deg] (as for :meth:`world_to_pixel`); the
            cutout is centred on the pixel nearest to it.
        size : int, (int, int) or Quantity
            Size (ny, nx) [px] (one number: square).  A Quantity in pixels is
            used as it is; an angle is converted with the local
            :meth:`pixel_scale` (rounded to whole pixels, at least 1).
        mode : {"trim", "partial", "strict"}, optional
            As for :class:`astropy.nddata.Cutout2D`: "trim" (default) keeps
            only the overlap with the image; "partial" keeps the full size and
            masks the pixels outside the image as bad data (data 0 and, when
            there is an uncertainty, an invalid one: 0); "strict" refuses a
            cutout that leaves the image.

        Returns
        -------
        Exposure
            With copies of the data, uncertainty and mask, kept apart as in
            this exposure (the cutout's user mask is this one's; the pixels
            with bad data or uncertainty, and those outside the image, stay
            masked when the cutout's :attr:`mask` is replaced), the WCS
            shifted to the cutout's pixels (an astropy WCS through Cutout2D,
            with its SIP and lookup-table distortions moved too; a gwcs by
            prepending a shift to its forward transform, keeping its bounding
            box), the same PSF, band, exposure time, zero point and name, a
            copy of meta, and ``psf_origin`` moved by the cutout's offset.

        Raises
        ------
        InputError
            If the exposure has no WCS, ``size`` is invalid, the position is
            not on the image (as for :meth:`contains` with ``margin=0``; or,
            for "strict", the cutout leaves it), or the cutout holds only
            masked pixels.

        Notes
        -----
        A position-dependent PSF keeps being evaluated in the original pixel
        frame: ``cutout.psf_at(x, y)`` equals ``original.psf_at(x + x0, y +
        y0)``, where ``(x0, y0)`` is the position of the cutout's pixel (0, 0)
        in this exposure.
        """
        from astropy.nddata import Cutout2D
        from astropy.nddata.utils import NoOverlapError, PartialOverlapError, overlap_slices

        self._need_wcs()
        if mode not in ("trim", "partial", "strict"):
            raise InputError(f"mode must be 'trim', 'partial' or 'strict', got {mode!r}")
        x, y = self.world_to_pixel(ra, dec)
        if not (np.ndim(x) == 0 and np.isfinite(x) and np.isfinite(y)):
            raise InputError("cutout needs one sky position that the WCS maps to the image")
        shape = self._cutout_shape(size, x, y)
        ny, nx = self.shape
        if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):  # as contains(margin=0)
            try:
                overlap_slices(self.shape, shape, (y, x), mode="trim")
                overlap = ""
            except NoOverlapError:
                overlap = "; the cutout does not overlap it"
            raise InputError(f"the cutout centre, pixel ({x:.1f}, {y:.1f}), is not on "
                             f"{_label(self._name)} ({nx} x {ny} px){overlap}")
        fits_wcs = self._wcs if _is_astropy_wcs(self._wcs) else None
        try:
            cut = Cutout2D(self._data, (x, y), shape, wcs=fits_wcs, mode=mode,
                           fill_value=np.nan, copy=True)
        except NoOverlapError:  # not expected: the centre is on the image
            raise InputError(f"the cutout at pixel ({x:.1f}, {y:.1f}) does not overlap "
                             f"{_label(self._name)} ({nx} x {ny} px)") from None
        except PartialOverlapError:
            raise InputError(f"the cutout at pixel ({x:.1f}, {y:.1f}) leaves the image "
                             "(mode='strict')") from None
        origin = (cut.origin_original[0] - cut.slices_cutout[1].start,
                  cut.origin_original[1] - cut.slices_cutout[0].start)

        def take(arr, fill):
            out = np.full(cut.shape, fill, dtype=arr.dtype)
            out[cut.slices_cutout] = arr[cut.slices_original]
            return out

        # Bad data are NaN again (the pixels outside the image too: Cutout2D's fill), so that
        # the new exposure finds them as bad data, as the uncertainty's invalid values (0
        # outside the image) as bad uncertainty: they stay masked if its mask is replaced.
        data = cut.data
        if self._bad_data.any():
            data[take(self._bad_data, False)] = np.nan
        unc = None
        if self._uncertainty is not None:
            values = np.asarray(self._uncertainty.array)
            unc = type(self._uncertainty)(take(values, 0), unit=self._uncertainty.unit,
                                          copy=False)
        if fits_wcs is not None:
            wcs = _shift_lookup_tables(cut.wcs, origin)
        else:
            wcs = _shift_wcs(self._wcs, origin, cut.shape)
        meta = copy.deepcopy(dict(self.meta)) if self.meta is not None else None
        ox, oy = self._psf_origin
        # Built with the full mask, so that the pixels masked here are not reported again
        # (this exposure's constructor did); the user mask alone is then restored.
        new = type(self)(data, uncertainty=unc, mask=take(self._mask, True), wcs=wcs,
                         psf=self._psf, band=self._band, exptime=self._exptime,
                         zeropoint=self._zeropoint, name=self._name, meta=meta,
                         unit=self.unit, psf_origin=(ox + origin[0], oy + origin[1]))
        new._user_mask = take(self._user_mask, False)
        return new

    def _cutout_shape(self, size, x, y):
        if size is None:
            raise InputError("cutout needs a size: pixels, (ny, nx) or an angle Quantity")
        if isinstance(size, u.Quantity):
            if size.unit.physical_type == "angle":
                scale = self.pixel_scale(x, y)
                size = np.maximum(1, np.round(size.to_value(u.arcsec) / scale)).astype(int)
            elif size.unit == u.pix:
                size = np.round(size.value).astype(int)
            else:
                raise InputError(f"size must be in pixels or an angle, got unit {size.unit}")
        size = np.atleast_1d(np.asarray(size))
        if size.size == 1:
            size = np.repeat(size, 2)
        if size.shape != (2,) or size.dtype.kind not in "iuf" or np.any(size < 1) \
                or np.any(size != np.round(size)):
            raise InputError(f"size must be one or two positive whole numbers of pixels, "
                             f"got {size.tolist()}")
        return tuple(int(s) for s in size)

    # -- files ---------------------------------------------------------------------------------
    @classmethod
    def from_fits(cls, path, *, hdu=None, psf=None, band=None, zeropoint=None, name=None,
                  weight=None, dq=None):
        """Read an exposure from a FITS file: DECam CP, JWST, HST, MPDAF or a plain image.

        The format is recognised from the headers:

        * **DECam community pipeline** (primary ``INSTRUME = 'DECam'`` or
          ``_ooi_`` in the file name; NOIRLab CP "InstCal" products): the image
          is HDU 1 (or ``hdu``: one CCD per HDU); the inverse-variance
          ``_oow_`` and data-quality ``_ood_`` files beside it (same name with
          ``_ooi_`` replaced, ``.fits``, ``.fits.gz`` or ``.fits.fz``) are
          found automatically, reading the HDU of the same EXTNAME;
          ``DQ != 0`` is masked.  band: first word of FILTER (e.g. ``'z'``
          for ``'z DECam SDSS c0004 9260.0 1520.0'``; ``'N501'``, ``'VR'``);
          exptime: EXPTIME; WCS: the CCD's TPV WCS (handled by wcslib); data
          in the CP's detector counts, with no unit and no zero point unless
          given (the CP headers carry none; legacypipe's survey-ccds
          ``ccdzpt`` is for counts per second, so the zero point of these
          data is ``ccdzpt + 2.5 log10(exptime)``).
        * **JWST** (primary ``TELESCOP = 'JWST'``; stdatamodels ``cal`` and
          ``i2d`` products): SCI, ERR (standard deviation), DQ (nonzero
          masked; i2d files may lack it), WHT (wherever present, pixels whose
          WHT is not a positive finite number are masked; used as inverse
          variance only when there is no ERR).
          The WCS is the gwcs ``meta.wcs`` of the ASDF extension (a binary
          table HDU named ``ASDF`` whose ``ASDF_METADATA`` column holds the
          ASDF file bytes, as stdatamodels writes it) when present, else the
          FITS WCS of SCI.  band: FILTER, with ``+PUPIL`` appended when the
          pupil wheel holds a filter (not CLEAR*); exptime: EFFEXPTM, else
          XPOSURE, else EXPTIME.  Zero point, from BUNIT of SCI:
          surface brightness ``MJy/sr`` gives ``-2.5 log10(1e6 PIXAR_SR /
          3631)`` (one data unit in one pixel is ``1e6 * PIXAR_SR`` Jy, so a
          source whose pixel values sum to 1 has that flux; AB = -2.5
          log10(F / 3631 Jy)); a flux density unit per pixel (``Jy``,
          ``uJy``, ``nJy``...) gives ``-2.5 log10(F / 3631 Jy)`` of one unit;
          ``DN/s`` uses ``PHOTMJSR`` MJy/sr per DN/s and PIXAR_SR.
        * **HST** (primary ``TELESCOP = 'HST'``; ``drz``/``drc`` drizzled and
          ``flt``/``flc`` calibrated products): SCI, ERR (standard deviation;
          ``flt``) or else WHT (``drz``: used as inverse variance; exact for
          AstroDrizzle's ``final_wht_type='IVM'``, proportional to the
          inverse variance of the background for the default ``'EXP'``
          weighting, where WHT is an effective exposure time [s]), DQ
          (nonzero masked); pixels with ``WHT == 0`` are masked.  ``hdu``
          picks the chip (default ``('SCI', 1)``; ERR, DQ and WHT are read
          with the same EXTVER).  WCS: the FITS WCS of SCI with its SIP and
          lookup-table (D2IMARR, WCSDVARR) distortions.  band: FILTER, else
          FILTER1/FILTER2 (ACS), else FILTNAM1/FILTNAM2 (WFPC2), skipping
          CLEAR* (several are joined by '+'); exptime: EXPTIME.  Zero point
          from PHOTFLAM [erg/s/cm^2/A per unit rate] and PHOTPLAM [A] (SCI
          header, else primary): ``ZP_rate = -2.5 log10(PHOTFLAM) - 5
          log10(PHOTPLAM) - 2.408``, the AB magnitude of a source giving one
          count (electron) per second.  When BUNIT is a number of counts
          (``ELECTRONS``, ``COUNTS``, ``CTS``, ``DN``, ``ADU``: ACS and
          WFC3/UVIS ``flt``), the zero point is ``ZP_rate + 2.5
          log10(EXPTIME)``; otherwise (a rate such as ``ELECTRONS/S`` or
          ``DN/S``, the drizzled products; absent; any other unit) it is
          ``ZP_rate``.  When BUNIT is already a flux density, the zero point
          is the AB magnitude of one such unit: ``8.90 - 2.5 log10(unit /
          Jy)`` for f_nu, ``ZP_rate`` with PHOTFLAM replaced by the unit in
          erg/s/cm^2/A for f_lambda.  BUNIT is read by
          :func:`astromix.data.loaders.count_kind`, as
          :func:`astromix.photometry.rescale_to_flux_units` reads it.
        * **MPDAF** (MUSE images written by MPDAF, and the output of
          ``astromix regrid``: a ``DATA`` extension with ``STAT`` and/or
          ``DQ``, no ``SCI``): DATA; STAT, when present, is the variance
          (VarianceUncertainty); ``DQ != 0`` and pixels whose STAT is not a
          positive finite number (MPDAF's NaN outside the field) are masked;
          band: FILTER, exptime: EXPTIME when present.  A file with ``DATA``
          alone is a plain image.
        * **plain images**: the primary HDU, or the first HDU with a 2-D
          image (or ``hdu``), and its FITS WCS; band from FILTER when present;
          exptime from EXPTIME when present; no uncertainty unless ``weight``
          is given.  A file with a ``SCI`` extension but no known TELESCOP is
          read like a JWST product when it has an ``ASDF`` extension, else
          like an HST product.

        Parameters
        ----------
        path : str or os.PathLike
            The FITS file (gzip-compressed and tile-compressed files work).
        hdu : int, str or (str, int), optional
            The science HDU: index, EXTNAME or (EXTNAME, EXTVER).
        psf : optional
            The PSF, as for :class:`Exposure`.
        band : str, optional
            Overrides the band read from the header.
        zeropoint : float, optional
            Overrides the zero point derived from the header.
        name : str, optional
            Default: the file name without ``.fits``/``.fits.gz``/``.fits.fz``
            (plus ``_sci<N>`` for EXTVER N > 1).
        weight : str or os.PathLike, optional
            An inverse-variance FITS file (DECam ``_oow_``) to use instead of
            the one found or read from the file: its 2-D image HDU of the
            science EXTNAME and EXTVER (the same chip), else the only HDU of
            that EXTNAME, else the one at the same index, else the first 2-D
            image HDU (an empty primary HDU is skipped; several HDUs of the
            EXTNAME but none of the EXTVER give an InputError).
        dq : str or os.PathLike, optional
            A data-quality FITS file (nonzero = bad), read likewise.

        Returns
        -------
        Exposure
            With ``meta`` holding ``format`` ("DECam CP", "JWST", "HST",
            "MPDAF" or "FITS image"), ``filename``, ``hdu`` and
            format-specific entries
            (e.g. ``weight_file``, ``dq_file``, ``filter``, ``mjd_obs``).

        Raises
        ------
        InputError
            If a file is missing or is not a readable FITS file (a truncated
            or corrupt weight, DQ or DECam companion file is named as such),
            the HDU does not exist or holds no 2-D image, the science image
            has no celestial WCS, or a weight/DQ array does not match the
            image (the message names the file), or for any of the reasons of
            :class:`Exposure`.

        Warns
        -----
        ExposureWarning
            When a DECam weight or DQ file is not found (the exposure is built
            without it), when the embedded JWST gwcs cannot be read (the FITS
            WCS is used), and for masked bad pixels (see :class:`Exposure`).
        """
        from .loaders import read_fits

        return read_fits(cls, path, hdu=hdu, psf=psf, band=band, zeropoint=zeropoint,
                         name=name, weight=weight, dq=dq)

    def write(self, path, *, overwrite=False, group=None):
        """Write this exposure to an ASDF (.asdf) or HDF5 (.h5, .hdf5) file.

        Equivalent to ``write_exposures(path, [self], overwrite=overwrite,
        group=group)``; see :func:`astromix.data.write_exposures`.  The file is
        written to a temporary file in the same folder (for an existing file,
        a copy of it or of its tree with this exposure added or replaced),
        flushed and renamed over ``path``; an error leaves the original
        unchanged.

        Parameters
        ----------
        path : str or os.PathLike
            The file; its suffix picks the format: ``.asdf`` for ASDF, ``.h5``,
            ``.hdf5`` or ``.he5`` for HDF5.  An existing file is updated (other
            exposures and entries, ASDF history entries and the file's
            permissions kept).
        overwrite : bool, optional
            Replace an exposure of the same name already in the file (default
            False: InputError if there is one).
        group : str, optional
            HDF5: the group under which the exposure's group is written (default
            the root); ASDF: the tree key of the exposure list (default
            ``"exposures"``; not ``"asdf_library"`` or ``"history"``, which
            ASDF reserves).

        Returns
        -------
        None

        Raises
        ------
        InputError
            If the suffix is unknown, the exposure has no name or one that
            cannot name a group (with ``/``, or ``.``, ``..``), an exposure of
            that name exists and ``overwrite`` is false, ``group`` is empty,
            (HDF5) passes through a dataset or an exposure or (ASDF) is a key
            ASDF reserves, or the existing
            file is not a readable file of that format (it is then not
            replaced).
        OSError
            If the folder cannot be written (the original file is kept).

        Warns
        -----
        ExposureWarning
            When the PSF or the WCS cannot be stored (see
            :func:`~astromix.data.write_exposures`).
        """
        from .io import write_exposures

        write_exposures(path, [self], overwrite=overwrite, group=group)

    @classmethod
    def read(cls, path, name=None, *, group=None):
        """Read one exposure from an ASDF or HDF5 file written by :meth:`write`.

        Parameters
        ----------
        path : str or os.PathLike
            The file.
        name : str, optional
            Which exposure, when the file holds several.
        group : str, optional
            As for :func:`astromix.data.read_exposures`.

        Returns
        -------
        Exposure

        Raises
        ------
        InputError
            If the file holds no exposure, several and no ``name`` was given,
            or none of that name, or for any reason of
            :func:`~astromix.data.read_exposures`.
        """
        from .io import read_exposures

        exposures = read_exposures(path, group=group)
        if name is not None:
            found = [e for e in exposures if e.name == name]
            if not found:
                raise InputError(f"{path}: no exposure named {name!r} (found "
                                 f"{[e.name for e in exposures]})")
            return found[0]
        if len(exposures) != 1:
            raise InputError(f"{path} holds {len(exposures)} exposures "
                             f"{[e.name for e in exposures]}; say which with name=")
        return exposures[0]


def _label(name):
    return f"exposure {name!r}" if name else "exposure"


def _shift_lookup_tables(wcs, origin):
    """Move an astropy WCS's lookup-table distortions (Paper IV) by ``origin`` (x, y) px.

    Cutout2D shifts CRPIX and the SIP reference pixel but not the
    DistortionLookupTable objects, whose CRVAL are image pixel coordinates.
    """
    from astropy.wcs import DistortionLookupTable

    for attr in ("cpdis1", "cpdis2", "det2im1", "det2im2"):
        table = getattr(wcs, attr, None)
        if table is not None:
            crval = tuple(float(c) - float(o) for c, o in zip(table.crval, origin))
            setattr(wcs, attr, DistortionLookupTable(np.array(table.data, dtype=np.float32),
                                                     tuple(table.crpix), crval,
                                                     tuple(table.cdelt)))
    return wcs


def _shift_wcs(wcs, origin, shape):
    """A WCS whose pixel (0, 0) is pixel ``origin`` (x, y) of ``wcs``, of ``shape`` (ny, nx).

    An astropy WCS has CRPIX, the SIP reference pixel and the lookup-table
    distortions moved (as Cutout2D does, also for an origin below 0); a gwcs a
    shift prepended, its bounding box moved with it; another APE 14 WCS is
    sliced (an origin >= 0 only).
    """
    x0, y0 = float(origin[0]), float(origin[1])
    if _is_astropy_wcs(wcs):
        from astropy.wcs import Sip

        new = wcs.deepcopy()
        new.wcs.crpix = np.asarray(new.wcs.crpix, dtype=np.float64) - [x0, y0]
        if new.sip is not None:
            new.sip = Sip(new.sip.a, new.sip.b, new.sip.ap, new.sip.bp, new.wcs.crpix)
        _shift_lookup_tables(new, (x0, y0))
        new.pixel_shape = (shape[1], shape[0])
        new.wcs.set()
        return new
    if _is_gwcs(wcs):
        from astropy.modeling.models import Shift
        from gwcs import WCS as GWCS

        bbox = wcs.bounding_box
        old = copy.deepcopy(wcs)
        steps = [(step.frame, step.transform) for step in old.pipeline]
        frame, transform = steps[0]
        steps[0] = (frame, (Shift(x0) & Shift(y0)) | transform)
        new = GWCS(steps, name=old.name)
        if bbox is not None:
            (xlo, xhi), (ylo, yhi) = (tuple(float(v) for v in iv)
                                      for iv in bbox.bounding_box(order="F"))
            new.bounding_box = ((xlo - x0, xhi - x0), (ylo - y0, yhi - y0))
        new.array_shape = shape
        return new
    from astropy.wcs.wcsapi import SlicedLowLevelWCS

    if x0 < 0 or y0 < 0:
        raise InputError("a 'partial' cutout past the image's low edges needs an astropy or "
                         "gwcs WCS")
    low = getattr(wcs, "low_level_wcs", wcs)
    return SlicedLowLevelWCS(low, [slice(int(y0), int(y0) + shape[0]),
                                   slice(int(x0), int(x0) + shape[1])])
