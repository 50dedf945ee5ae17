"""PSF providers: the PSF of one exposure at one detector position, oversampled.

A provider answers :meth:`PSFProvider.psf` ``(exposure, x, y)`` with an
oversampled PSF image in that exposure's detector pixels (flux per
oversampled pixel, unit sum, centre at ``((n - 1) / 2, (n - 1) / 2)`` as in
stpsf, poppy and photutils' ePSFs) and its oversampling.  Each unique PSF
(instrument, filter, detector, position bin, date) is computed once and kept
in the provider's cache, which travels with the provider to worker processes.

Providers:

* :class:`PoppyProvider`: a JWST-like segmented hexagonal pupil computed with
  poppy alone (no data files, no network); the default of the tests and
  examples.
* :class:`StpsfProvider`: stpsf (formerly WebbPSF), with its data package
  (``STPSF_PATH``) and, for the mirror state of the observation date, network.
* :class:`ImageProvider`: PSF images from arrays or FITS files, per exposure,
  detector or filter (empirical ePSFs, PSFs computed elsewhere).
"""

import contextlib
import logging
import math
import os
import threading
import warnings

import numpy as np

from .._checks import integer_parameter
from ..backends._common import host_array
from ..errors import InputError

__all__ = ["PSFProvider", "PoppyProvider", "StpsfProvider", "ImageProvider", "NIRCAM_FILTERS"]

log = logging.getLogger("astromix")

#: Approximate half-power band edges [micron] of the NIRCam wide filters (top-hat
#: approximations used by :class:`PoppyProvider`).
NIRCAM_FILTERS = {"F070W": (0.62, 0.78), "F090W": (0.79, 1.00), "F115W": (1.01, 1.28),
                  "F150W": (1.33, 1.67), "F200W": (1.75, 2.23), "F277W": (2.42, 3.13),
                  "F356W": (3.14, 3.98), "F444W": (3.88, 4.99)}


def _check_image(image, what):
    img = np.array(host_array(image, np.float64))  # a copy, normalised below
    if img.ndim != 2:
        raise InputError(f"{what} must be a 2-d image, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise InputError(f"{what} has {int(np.sum(~np.isfinite(img)))} NaN or infinite "
                         "pixel(s)")
    total = img.sum()
    if not total > 0:
        raise InputError(f"{what} has no positive flux")
    img /= total
    img.setflags(write=False)
    return img


class PSFProvider:
    """Base class of the PSF providers (see the module docstring).

    Subclasses implement :meth:`compute`; they may override :meth:`key` to say
    which properties of an exposure and position change the PSF.

    Parameters
    ----------
    oversampling : int
        Image pixels per detector pixel of the images returned (an integer
        >= 1; an integral float such as 4.0 is taken, 2.5 is refused).
    position_bin : float or None, optional
        Size [detector px] of the square bins in which the PSF is taken as
        constant; the PSF of a bin is computed at its centre, or at the centre
        of its part on the detector for a bin that reaches beyond the
        detector's edge (see :meth:`key`).  None: one PSF per detector.
    pixel_integrated : bool, optional
        True when the images already include the detector's pixel response
        (empirical ePSFs); otherwise :class:`~astromix.ExposureWeightedPSF`
        convolves them with the detector pixel.

    Attributes
    ----------
    cache : dict
        key -> unit-sum oversampled image (read-only arrays).
    n_computed : int
        How many PSFs :meth:`compute` has made (cache misses).  Threads asking
        for the same key at once share one computation: the first computes it,
        the others wait for it (:meth:`psf`).

    Raises
    ------
    InputError
        If ``oversampling`` is not an integer >= 1 or ``position_bin`` is not
        > 0.
    """

    #: Whether the observation date is part of the cache key.
    uses_date = False

    def __init__(self, oversampling, *, position_bin=None, pixel_integrated=False):
        oversampling = integer_parameter(oversampling, "oversampling")
        if position_bin is not None and not float(position_bin) > 0:
            raise InputError(f"position_bin must be > 0 [px] or None, got {position_bin}")
        self.oversampling = oversampling
        self.position_bin = None if position_bin is None else float(position_bin)
        self.pixel_integrated = bool(pixel_integrated)
        self.cache = {}
        self.n_computed = 0
        self._lock = threading.Lock()
        self._pending = {}  # key -> Event of the thread computing it

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_pending", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pending = {}

    def key(self, exposure, x, y):
        """The cache key of the PSF of ``exposure`` at detector position (x, y) [px].

        :class:`~astromix.ExposureWeightedPSF` calls it with each exposure and
        the source's position in that exposure's detector to look up its
        prepared PSFs; :meth:`psf` uses it as the key of :attr:`cache`.

        Parameters
        ----------
        exposure : InputExposure
            Its ``instrument``, ``filter``, ``detector`` and ``date`` are read.
        x, y : float
            Detector position [px, 0-based] in that exposure.

        Returns
        -------
        tuple
            ``(instrument, filter, detector, bin_x, bin_y, date)``; ``bin_x`` and
            ``bin_y`` are the centre [px] of the position bin (None without
            bins); ``date`` is the day (None unless :attr:`uses_date`).

        Notes
        -----
        Bin ``k`` spans ``[k b, (k + 1) b)`` px (``b`` = :attr:`position_bin`).
        The centre returned always lies on the detector, ``0 <= bin_x <= nx -
        1`` (as stpsf's ``detector_position`` requires), with ``(ny, nx)`` the
        exposure's pixel grid (:attr:`~astromix.mosaic.InputExposure.pixel_grid`: its shape,
        else its WCS's, else its detector's full frame): a position within
        half a pixel of the low edge (``-0.5 < x < 0``) is in bin 0, and a
        bin reaching beyond the detector (a bin size that does not divide it,
        e.g. 500 px on 2048, or 256 px on MIRI's 1032 columns) is centred on
        its part on the detector, ``[k b, nx)``.  Without a known grid only
        the low edge is enforced.
        """
        bx = by = None
        if self.position_bin is not None:
            grid = getattr(exposure, "pixel_grid", None)
            ny, nx = grid if grid is not None else (None, None)
            bx = self._bin_centre(float(x), nx)
            by = self._bin_centre(float(y), ny)
        date = str(exposure.date)[:10] if (self.uses_date and exposure.date) else None
        return (exposure.instrument, exposure.filter, exposure.detector, bx, by, date)

    def _bin_centre(self, v, n):
        """Centre [px] of the position bin of coordinate ``v`` on an axis of ``n`` pixels
        (None: unknown), on the detector: in ``[0, n - 1]`` (see :meth:`key`)."""
        b = self.position_bin
        top = math.inf if n is None else n - 1.0
        k = math.floor(min(max(v, 0.0), top) / b)
        hi = (k + 1) * b if n is None else min((k + 1) * b, float(n))
        return min(0.5 * (k * b + hi), top)

    def compute(self, key, exposure):
        """Compute the PSF image of a key (subclasses implement it).

        Called by :meth:`psf` on a cache miss, with the key :meth:`key` gave.

        Parameters
        ----------
        key : tuple
            The cache key (:meth:`key`) of the PSF wanted.
        exposure : InputExposure
            The exposure the key was made for.

        Returns
        -------
        ndarray, shape (n, n)
            Oversampled image (``oversampling`` pixels per detector pixel,
            centre at ``((n - 1) / 2, (n - 1) / 2)``), any normalisation;
            :meth:`psf` normalises it.  None when this exposure has no PSF (it
            is then left out of the combination).

        Raises
        ------
        NotImplementedError
            Always, in the base class.
        """
        raise NotImplementedError

    def psf(self, exposure, x, y):
        """The oversampled PSF of ``exposure`` at detector position (x, y), from the cache.

        Parameters
        ----------
        exposure : InputExposure
        x, y : float
            Detector position [px, 0-based].

        Returns
        -------
        key : tuple
            Its cache key.
        image : ndarray, shape (n, n), or None
            Unit-sum oversampled image (float64, read-only), or None when the
            provider has none.

        Raises
        ------
        InputError
            If the image :meth:`compute` returns is not 2-d, has NaN or
            infinite pixels or no positive flux; and whatever :meth:`compute`
            raises.
        """
        key = self.key(exposure, x, y)
        while True:
            with self._lock:
                if key in self.cache:
                    return key, self.cache[key]
                pending = self._pending.get(key)
                if pending is None:  # this thread computes it
                    pending = self._pending[key] = threading.Event()
                    break
            # another thread is computing this key: wait for it, then look again
            # (if it failed, the key is still missing and this thread tries)
            pending.wait()
        try:
            image = self.compute(key, exposure)
            if image is not None:
                image = _check_image(image, f"the PSF of {key}")
            with self._lock:
                self.n_computed += 1
                self.cache[key] = image
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()
        return key, image


@contextlib.contextmanager
def _ignoring_library_warnings():
    """Silence the warnings poppy and stpsf emit while computing (they are not ours)."""
    with warnings.catch_warnings():
        for module in ("poppy", "stpsf", "astropy", "pysiaf", "synphot", "numpy"):
            warnings.filterwarnings("ignore", module=module)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        yield


def _noll_coefficients(wfe):
    """{Noll index (int >= 1): nm rms (float)} from a mapping whose keys may be strings (JSON)."""
    if not hasattr(wfe, "items"):
        raise InputError(f"wfe must be a mapping of Noll index to nm rms, got {wfe!r}")
    out = {}
    for k, v in wfe.items():
        j = None
        if isinstance(k, (str, int, np.integer)) and not isinstance(k, bool):
            with contextlib.suppress(ValueError):
                j = int(k)
        elif isinstance(k, (float, np.floating)) and float(k).is_integer():
            j = int(k)
        if j is None or j < 1:
            raise InputError(f"wfe: the Zernike index {k!r} is not a Noll index (an integer "
                             ">= 1)")
        try:
            c = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            c = math.nan
        if not math.isfinite(c):
            raise InputError(f"wfe: the coefficient of Noll index {j} must be a finite number "
                             f"[nm rms], got {v!r}")
        if j in out:
            raise InputError(f"wfe gives Noll index {j} twice ({wfe!r})")
        out[j] = c
    return out


class PoppyProvider(PSFProvider):
    """A JWST-like PSF computed with poppy, offline (no data files).

    The pupil is an 18-segment hexagonal primary
    (``poppy.MultiHexagonAperture(rings=2, flattoflat=1.32 m, gap=7 mm)``
    without its central segment) behind a secondary obscuration of radius
    0.37 m held by three struts, with a wavefront error made of low-order
    Zernike terms (Noll indices, nm rms) plus, if ``field_wfe`` is set, an
    astigmatism varying linearly across the detector.  The polychromatic PSF
    is the mean of ``nlambda`` monochromatic ones evenly spaced over the
    filter's band (:data:`NIRCAM_FILTERS`, flat spectrum).  It is not the
    telescope's PSF (no detector charge diffusion, no jitter, no real OPD);
    the mosaic documentation compares it with the NEXUS empirical F200W PSF.

    Parameters
    ----------
    filter : str, optional
        Filter used when an exposure has none (default ``"F200W"``).
    pixel_scale : float, optional
        Detector pixel scale [arcsec/px]; default 0.031 (NIRCam short
        wavelength) below 2.4 micron, 0.063 above.
    oversampling : int, optional
        Default 4.
    fov_pixels : int, optional
        Field of view [detector px] (default 41; odd, so that the PSF centre is
        a pixel centre).
    nlambda : int, optional
        Wavelengths over the band (default 5).
    wfe : dict, optional
        Zernike coefficients {Noll index: nm rms}; default a mild JWST-like
        mix, ``{4: 25, 5: 20, 6: -15, 7: 12, 8: 10, 9: 8, 11: 10}``.  The
        indices may be strings of integers, as the keys of a JSON object
        (``{"4": 30}``, the ``mosaic-psf`` configuration).
    field_wfe : float, optional
        Astigmatism [nm rms] added per detector half-width (2048 px detector):
        Z5 += field_wfe * (x / 1024 - 1), Z6 += field_wfe * (y / 1024 - 1).
        Default 0 (one PSF per filter).
    position_bin : float, optional
        Default 512 px when ``field_wfe`` is set, else None.
    npix : int, optional
        Pupil sampling (default 256).

    Raises
    ------
    InputError
        If ``filter`` is not one of :data:`NIRCAM_FILTERS`, ``fov_pixels`` is
        not an integer >= 3, ``nlambda``, ``npix`` or ``oversampling`` not an
        integer >= 1 (integral floats such as 4.0 are taken, 4.5 is refused),
        ``position_bin`` is not > 0, or ``wfe`` is not a mapping of integer
        Noll indices >= 1 to finite numbers.

    Notes
    -----
    One PSF takes 0.1-0.5 s here (0.4 s for 5 wavelengths at npix 256).
    Leans on poppy (Perrin et al. 2012, SPIE 8442).
    """

    def __init__(self, filter="F200W", *, pixel_scale=None, oversampling=4, fov_pixels=41,
                 nlambda=5, wfe=None, field_wfe=0.0, position_bin=None, npix=256):
        if position_bin is None and field_wfe:
            position_bin = 512
        super().__init__(oversampling, position_bin=position_bin)
        self.filter = str(filter).upper()
        if self.filter not in NIRCAM_FILTERS:
            raise InputError(f"PoppyProvider knows the filters {sorted(NIRCAM_FILTERS)}, "
                             f"not {filter!r}")
        self.pixel_scale = None if pixel_scale is None else float(pixel_scale)
        self.fov_pixels = integer_parameter(fov_pixels, "fov_pixels", 3)
        self.nlambda = integer_parameter(nlambda, "nlambda")
        self.wfe = (_noll_coefficients(wfe) if wfe is not None
                    else {4: 25.0, 5: 20.0, 6: -15.0, 7: 12.0, 8: 10.0, 9: 8.0, 11: 10.0})
        self.field_wfe = float(field_wfe)
        self.npix = integer_parameter(npix, "npix")

    def key(self, exposure, x, y):
        """As :meth:`PSFProvider.key`, with the instrument and detector left out.

        Parameters
        ----------
        exposure : InputExposure
            Its ``filter`` is read (the provider's ``filter`` when it has none).
        x, y : float
            Detector position [px, 0-based].

        Returns
        -------
        tuple
            ``("poppy", filter, bin_x, bin_y)``: the upper-case filter name and
            the centre [px] of the position bin (None, None without bins).
        """
        _, filt, _, bx, by, _ = super().key(exposure, x, y)
        return ("poppy", (filt or self.filter).upper(), bx, by)

    def scale_for(self, filt):
        """Detector pixel scale [arcsec/px] used for a filter.

        Parameters
        ----------
        filt : str
            Upper-case filter name, a key of :data:`NIRCAM_FILTERS`.

        Returns
        -------
        float
            ``pixel_scale`` when it was given; else 0.031 arcsec/px when the
            band's upper edge is below 2.4 micron, 0.063 otherwise.

        Raises
        ------
        KeyError
            If ``pixel_scale`` was not given and ``filt`` is not in
            :data:`NIRCAM_FILTERS`.
        """
        if self.pixel_scale is not None:
            return self.pixel_scale
        return 0.031 if NIRCAM_FILTERS[filt][1] < 2.4 else 0.063

    def compute(self, key, exposure):
        """The poppy PSF of a key (see the class docstring).

        Parameters
        ----------
        key : tuple
            ``("poppy", filter, bin_x, bin_y)`` from :meth:`key`; the bin centre
            [px] sets the field-dependent astigmatism when ``field_wfe`` is set.
        exposure : InputExposure
            Only its name is used (in error messages).

        Returns
        -------
        ndarray, shape (fov_pixels * oversampling, fov_pixels * oversampling)
            The oversampled polychromatic PSF (float64), as poppy normalises it
            (:meth:`~PSFProvider.psf` rescales it to unit sum).

        Raises
        ------
        InputError
            If the key's filter is not one of :data:`NIRCAM_FILTERS`.
        """
        import astropy.units as u

        _, filt, bx, by = key
        if filt not in NIRCAM_FILTERS:
            raise InputError(f"PoppyProvider knows the filters {sorted(NIRCAM_FILTERS)}, "
                             f"not {filt!r} (exposure {exposure.name})")
        coeffs = dict(self.wfe)
        if self.field_wfe and bx is not None:
            coeffs[5] = coeffs.get(5, 0.0) + self.field_wfe * (bx / 1024.0 - 1.0)
            coeffs[6] = coeffs.get(6, 0.0) + self.field_wfe * (by / 1024.0 - 1.0)
        noll = np.zeros(max(coeffs) + 1 if coeffs else 1)
        for j, c in coeffs.items():
            noll[int(j)] = float(c) * 1e-9
        lo, hi = NIRCAM_FILTERS[filt]
        if self.nlambda == 1:
            waves = np.array([0.5 * (lo + hi)])
        else:
            waves = np.linspace(lo, hi, self.nlambda + 2)[1:-1]
        with _ignoring_library_warnings():
            import poppy

            osys = poppy.OpticalSystem(oversample=2, npix=self.npix)
            osys.add_pupil(poppy.MultiHexagonAperture(rings=2, flattoflat=1.32 * u.m,
                                                      gap=0.007 * u.m, center=False))
            osys.add_pupil(poppy.SecondaryObscuration(secondary_radius=0.37 * u.m,
                                                      n_supports=3, support_width=0.08 * u.m))
            osys.add_pupil(poppy.ZernikeWFE(radius=3.3 * u.m, coefficients=noll[1:]))
            osys.add_detector(pixelscale=self.scale_for(filt), fov_pixels=self.fov_pixels,
                              oversample=self.oversampling)
            hdul = osys.calc_psf(source={"wavelengths": waves * 1e-6,
                                         "weights": np.full(waves.size, 1.0 / waves.size)})
            return np.array(hdul[0].data, dtype=np.float64)


class StpsfProvider(PSFProvider):
    """PSFs from stpsf (formerly WebbPSF), per detector, position bin and date.

    For each key the instrument is set up as stpsf requires: the filter, then
    the **detector before the detector position** (setting the detector resets
    the position), then, when ``opd_by_date`` and the exposure has a date, the
    measured mirror state (OPD) closest to that date
    (``load_wss_opd_by_date``, which needs network the first time); then
    ``calc_psf`` and the ``OVERDIST`` extension (oversampled, with the
    detector's geometric distortion, in the detector's science frame).

    Parameters
    ----------
    instrument : str, optional
        Instrument used when an exposure has none (default ``"NIRCam"``).
        Instrument names, the exposures' (``INSTRUME``, e.g. ``"NIRCAM"``) and
        this one, are looked up with ``stpsf.instrument``: in any case, or as
        the three-letter abbreviations (``"NRC"``).
    oversampling : int, optional
        Default 4.
    fov_pixels : int, optional
        Field of view [detector px] (default 41).
    position_bin : float, optional
        Default 256 px: the field dependence of stpsf is sampled on a grid of
        this size.
    opd_by_date : bool, optional
        Load the OPD of each exposure's date (default True).
    nlambda : int, optional
        Wavelengths of the polychromatic PSF (stpsf's default if omitted).
    data_path : str, optional
        The stpsf data folder; default the ``STPSF_PATH`` environment variable.

    Raises
    ------
    InputError
        At construction, when the stpsf data folder is missing (stpsf would
        otherwise try to download 70 MB at the first PSF), or ``oversampling``,
        ``fov_pixels`` or ``nlambda`` is not an integer >= 1.

    Notes
    -----
    Leans on stpsf (Perrin et al. 2014, SPIE 9143).  Exceptions of stpsf
    while computing (e.g. no network for the OPD) are re-raised as
    :class:`~astromix.AstromixError` naming the exposure.
    """

    uses_date = True

    def __init__(self, instrument="NIRCam", *, oversampling=4, fov_pixels=41, position_bin=256,
                 opd_by_date=True, nlambda=None, data_path=None):
        super().__init__(oversampling, position_bin=position_bin)
        path = data_path or os.environ.get("STPSF_PATH")
        if not path or not os.path.isdir(path):
            where = (f"data_path {path!r} is not a folder" if path
                     else "the STPSF_PATH environment variable is not set")
            raise InputError(f"StpsfProvider needs the stpsf data files (about 70 MB): {where}. "
                             "Download them (https://stpsf.readthedocs.io, 'Installing the "
                             "required data files') and set STPSF_PATH, or use PoppyProvider "
                             "or ImageProvider")
        self.data_path = path
        self.instrument = str(instrument)
        self.fov_pixels = integer_parameter(fov_pixels, "fov_pixels")
        self.opd_by_date = bool(opd_by_date)
        self.nlambda = None if nlambda is None else integer_parameter(nlambda, "nlambda")

    def compute(self, key, exposure):
        """The stpsf PSF of a key (see the class docstring).

        Parameters
        ----------
        key : tuple
            ``(instrument, filter, detector, bin_x, bin_y, date)`` from
            :meth:`~PSFProvider.key`: the instrument name, in any case
            (``stpsf.instrument``; the provider's ``instrument`` when None),
            filter, detector and detector position [px] to set (each skipped
            when None or empty; the position on the detector, kept within
            the range stpsf's ``detector_position`` accepts).
        exposure : InputExposure
            Its full ``date`` selects the OPD (when ``opd_by_date`` and the key
            has a date); its name appears in error messages.

        Returns
        -------
        ndarray, shape (fov_pixels * oversampling, fov_pixels * oversampling)
            The ``OVERDIST`` extension of ``calc_psf`` (the primary HDU when
            there is none), as float64, as stpsf normalises it.

        Raises
        ------
        InputError
            If stpsf has no instrument of that name (``stpsf.instrument``
            refuses it).
        AstromixError
            Any other exception of stpsf, re-raised naming the exposure and key.
        """
        from ..errors import AstromixError

        os.environ.setdefault("STPSF_PATH", self.data_path)
        try:
            with _ignoring_library_warnings():
                return self._calc(key, exposure)
        except InputError:
            raise
        except Exception as exc:
            raise AstromixError(f"stpsf failed for exposure {exposure.name} ({key}): "
                                f"{type(exc).__name__}: {exc}") from exc

    def _calc(self, key, exposure):
        instrument, filt, detector, bx, by, date = key
        import stpsf

        name = instrument or self.instrument
        try:
            # case-insensitive, as the headers spell it (INSTRUME = 'NIRCAM' for stpsf's
            # NIRCam class), and the three-letter abbreviations ('NRC')
            inst = stpsf.instrument(name)
        except ValueError as exc:
            if "instrument name" not in str(exc):
                raise
            raise InputError(f"stpsf has no instrument {name!r} (exposure {exposure.name}); "
                             "it knows NIRCam, NIRSpec, NIRISS, MIRI and FGS") from None
        if filt:
            inst.filter = filt
        if detector:
            inst.detector = detector          # first: it resets the position
        if bx is not None:
            inst.detector_position = _stpsf_position(inst, bx, by)
        if self.opd_by_date and date:
            inst.load_wss_opd_by_date(str(exposure.date), choice="closest", plot=False,
                                      verbose=False)
        kwargs = {"oversample": self.oversampling, "fov_pixels": self.fov_pixels}
        if self.nlambda:
            kwargs["nlambda"] = self.nlambda
        hdul = inst.calc_psf(**kwargs)
        ext = "OVERDIST" if "OVERDIST" in [h.name for h in hdul] else 0
        return np.array(hdul[ext].data, dtype=np.float64)


def _stpsf_position(inst, x, y):
    """(x, y) [px] within the range stpsf's ``detector_position`` setter accepts.

    The key's bin centre already lies on the exposure's detector; stpsf
    refuses ``x > nx - 1`` or ``y > ny - 1`` with ``(ny, nx)`` its own
    ``_detector_npixels`` (an int, or a tuple read as (y, x): stpsf 2.2 gives
    MIRI ``(1032, 1024)``, so it refuses MIRI's columns 1024-1031), and any
    negative coordinate.  Clipped to that range (a few pixels at most).
    """
    npix = getattr(inst, "_detector_npixels", None)
    if npix is None:
        return (max(x, 0.0), max(y, 0.0))
    ny, nx = npix if isinstance(npix, tuple) else (npix, npix)
    return (min(max(x, 0.0), nx - 1.0), min(max(y, 0.0), ny - 1.0))


class ImageProvider(PSFProvider):
    """PSF images given as arrays or FITS files, per exposure, detector or filter.

    Parameters
    ----------
    images : array, str, dict or callable
        One oversampled PSF image (array, NumPy or CuPy, or FITS path) for every exposure; or a
        dict from the value of the exposure attribute ``by`` (e.g. detector
        name) to such an image; or a callable ``f(exposure, x, y)`` returning
        an image (or None), called once per exposure and position bin, with
        the bin's centre [detector px] (None, None without ``position_bin``).
    oversampling : int, optional
        Image pixels per detector pixel, one for all the images; default from
        the FITS header for files (:func:`astromix.cli.psf_mixture.header_oversampling`:
        ``DET_SAMP``, else ``OVERSAMP``; ``OVERSAMP`` in STPSF's
        detector-sampled extensions).  Required for arrays, and for files
        whose headers have neither keyword (e.g. empirical ePSFs): no
        oversampling is assumed.  Files whose headers give different
        oversamplings are refused, and so is a dict mixing files whose
        headers give one with files or arrays that carry none; a value given
        here overrides the headers' (with a warning when they differ).
    by : {"detector", "name", "filter"}, optional
        The exposure attribute that selects the image from a dict (default
        ``"detector"``).
    position_bin : float, optional
        For a callable: position bins [px] (default None: one call per key
        without position).
    pixel_integrated : bool, optional
        True when the images already contain the detector pixel response
        (empirical ePSFs built from stars); default False.
    hdu : int or str, optional
        HDU of FITS files (default 0).
    missing : {"error", "skip"}, optional
        What to do, at use, with an exposure that has no image in the dict:
        raise (default ``"error"``) or leave it out with a warning
        (``"skip"``).

    Raises
    ------
    InputError
        On a bad image (not 2-d, NaN or infinite pixels, no positive flux), an
        unknown ``by`` or ``missing``, no ``oversampling`` when no image is a
        FITS file whose header gives it (the message names the files without
        it), a non-integer oversampling (given, 2.5, or in a FITS header), FITS
        files whose headers give different oversamplings, or (at use) an exposure
        with no image in the dict (it is then left out with a warning instead
        when ``missing="skip"``).
    """

    def __init__(self, images, *, oversampling=None, by="detector", position_bin=None,
                 pixel_integrated=False, hdu=0, missing="error"):
        if by not in ("detector", "name", "filter"):
            raise InputError(f"by must be 'detector', 'name' or 'filter', got {by!r}")
        if missing not in ("error", "skip"):
            raise InputError(f"missing must be 'error' or 'skip', got {missing!r}")
        self.by, self.hdu, self.missing = by, hdu, missing
        self._callable = callable(images) and not isinstance(images, np.ndarray)
        headers = {}  # what -> (file, oversampling its header gives)
        silent = []   # FITS files whose headers do not give it
        arrays = []   # arrays in a dict (no header)
        if self._callable:
            self.images = images
        elif isinstance(images, dict):
            self.images = {}
            for k, v in images.items():
                what = f"PSF image for {by}={k!r}"
                self.images[k], os_ = self._load(v, what)
                if os_ is not None:
                    headers[what] = (os.fspath(v), os_)
                elif isinstance(v, (str, os.PathLike)):
                    silent.append(os.fspath(v))
                else:
                    arrays.append(f"the array for {by}={k!r}")
        else:
            self.images, os_ = self._load(images, "PSF image")
            if os_ is not None:
                headers["PSF image"] = (os.fspath(images), os_)
            elif isinstance(images, (str, os.PathLike)):
                silent.append(os.fspath(images))
        found = sorted({os_ for _, os_ in headers.values()})
        if len(found) > 1:
            # one oversampling serves every image: some would be scaled wrongly
            listed = "; ".join(f"{f!r} ({what}): {os_}" for what, (f, os_) in headers.items())
            raise InputError(f"the PSF files' headers give different oversamplings ({listed}); "
                             "ImageProvider uses one for all images: resample them to a "
                             "common oversampling")
        if oversampling is None:
            if found and (silent or arrays):
                # the one oversampling of the others' headers would be a guess for these
                listed = ", ".join([repr(f) for f in silent] + arrays)
                raise InputError(f"the PSF file header(s) give oversampling {found[0]}, but "
                                 f"{listed} carry none (no DET_SAMP or OVERSAMP): give "
                                 "oversampling= (image pixels per detector pixel)")
            if not found:
                if silent:
                    listed = ", ".join(repr(f) for f in silent)
                    raise InputError(f"the header of the PSF file(s) {listed} gives no "
                                     "oversampling (DET_SAMP or OVERSAMP): give "
                                     "oversampling= (image pixels per detector pixel)")
                raise InputError("give oversampling (image pixels per detector pixel) for "
                                 "PSF images given as arrays")
            oversampling = found[0]
        super().__init__(oversampling, position_bin=position_bin if self._callable else None,
                         pixel_integrated=pixel_integrated)
        if found and found[0] != self.oversampling:
            log.warning("ImageProvider: oversampling=%d overrides the %d of the PSF file "
                        "header(s) (%s)", self.oversampling, found[0],
                        ", ".join(repr(f) for f, _ in headers.values()))

    def _load(self, value, what):
        if isinstance(value, (str, os.PathLike)):
            from ..cli.psf_mixture import header_oversampling, read_psf_image

            image, header, primary = read_psf_image(os.fspath(value), self.hdu)
            os_, source = header_oversampling(header, primary, option="oversampling=")
            if not float(os_).is_integer():
                raise InputError(f"{what} {value!r}: oversampling {os_} is not an integer")
            return _check_image(image, what), (int(os_) if source != "default" else None)
        return _check_image(value, what), None

    def key(self, exposure, x, y):
        """``(by value,)`` for dicts, ``("all",)`` for one image; for a callable, the base key.

        Parameters
        ----------
        exposure : InputExposure
            Its ``by`` attribute is read for a dict; for a callable, as in
            :meth:`PSFProvider.key`, plus its ``name``.
        x, y : float
            Detector position [px, 0-based]; used for a callable only.

        Returns
        -------
        tuple
            ``(getattr(exposure, by),)`` for a dict; ``("all",)`` for one
            image; for a callable, ``(instrument, filter, detector, bin_x, bin_y,
            None, name)``: the base key (:meth:`PSFProvider.key`) and the
            exposure's name.
        """
        if self._callable:
            return super().key(exposure, x, y) + (exposure.name,)
        if isinstance(self.images, dict):
            return (getattr(exposure, self.by),)
        return ("all",)

    def compute(self, key, exposure):
        """The image of a key (see the class docstring).

        Parameters
        ----------
        key : tuple
            From :meth:`key`.
        exposure : InputExposure
            Passed to the callable, with the bin centre ``(key[3], key[4])``
            [px]; otherwise used in messages only.

        Returns
        -------
        ndarray, shape (n, n), or None
            The stored image (unit sum, read-only), or what the callable
            returns; None for an exposure with no image in the dict when
            ``missing="skip"`` (it is then left out).

        Raises
        ------
        InputError
            If the dict has no image for the key and ``missing="error"``.
        """
        if self._callable:
            bx, by = key[3], key[4]
            return self.images(exposure, bx, by)
        if isinstance(self.images, dict):
            if key[0] in self.images:
                return self.images[key[0]]
            if self.missing == "skip":
                log.warning("ImageProvider: no PSF for %s=%r (exposure %s); it is left out",
                            self.by, key[0], exposure.name)
                return None
            raise InputError(f"ImageProvider has no PSF for {self.by}={key[0]!r} "
                             f"(exposure {exposure.name}); it has {sorted(map(str, self.images))}")
        return self.images
