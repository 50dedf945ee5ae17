"""Star photometry between two images: one star fitted with a Moffat profile in both.

imphot's ``fit_star_photometry`` (REFERENCE.md, "imphot"), for any pair of
instruments: the same star is fitted with :class:`~astromix.models.moffat.MoffatStar`
plus a constant background in a target image (e.g. MUSE) and in a reference
image (e.g. HST); the flux scale, background offset and pointing offset of the
target follow from the two fits, and the target's PSF is the fitted Moffat.
"""

import dataclasses
import logging
import math

import numpy as np
from astropy import units as u
from astropy.nddata import NDData

from ..errors import AstromixError, InputError
from .helpers import _per_solid_angle
from .results import Measurement, PhotometryResult

__all__ = ["fit_star_photometry", "StarPhotometryResult", "StarFit"]

log = logging.getLogger("astromix")

#: Start value of beta (imphot starts at 5 for its image fits; 3 suits most stars).
_BETA_START = 3.0
#: Fewest pixels a fitting circle must hold.
_MIN_PIXELS = 12


# -- inputs ---------------------------------------------------------------------------------------

def _as_exposure(image, what):
    """An Exposure with a WCS from an Exposure, an NDData, or a (data, wcs[, sigma]) tuple."""
    from ..data.exposure import Exposure

    if isinstance(image, Exposure):
        exp = image
    elif isinstance(image, NDData):
        exp = Exposure(np.asarray(image.data), uncertainty=image.uncertainty, mask=image.mask,
                       wcs=image.wcs, unit=image.unit)
    elif isinstance(image, (tuple, list)) and len(image) in (2, 3):
        exp = Exposure(image[0], wcs=image[1],
                       uncertainty=image[2] if len(image) == 3 else None)
    else:
        raise InputError(f"{what} must be an astromix Exposure, an NDData or a tuple (data, wcs) "
                         f"or (data, wcs, sigma); got {type(image).__name__}")
    if exp.wcs is None:
        raise InputError(f"{what} has no WCS: the star's position cannot be found in it")
    return exp


def _arcsec(value, what, *, positive=True):
    """A float in arcsec from a number [arcsec] or an angle Quantity."""
    if isinstance(value, u.Quantity):
        try:
            value = value.to_value(u.arcsec)
        except u.UnitConversionError:
            raise InputError(f"{what} must be an angle (arcsec), got unit {value.unit}"
                             ) from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number [arcsec] or an angle Quantity, "
                         f"got {value!r}") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise InputError(f"{what} must be a finite number > 0 [arcsec], got {value}")
    return value


def _star_position(star):
    """(ra, dec) [deg, ICRS] of one star from a SkyCoord (any frame) or an (ra, dec) pair
    (taken as ICRS)."""
    from astropy.coordinates import SkyCoord

    from ..data.exposure import _as_lonlat

    if isinstance(star, SkyCoord):
        ra, dec = _as_lonlat(star, None)
    else:
        try:
            ra, dec = star
        except (TypeError, ValueError):
            raise InputError("star must be a SkyCoord or a pair (ra, dec) [deg]") from None
        ra, dec = _as_lonlat(ra, dec)
    if np.ndim(ra) != 0 or not (np.isfinite(ra) and np.isfinite(dec)):
        raise InputError("star must be one finite sky position (ra, dec) [deg]")
    return float(ra), float(dec)


def _icrs(ra, dec):
    """An ICRS SkyCoord of (ra, dec) [deg]."""
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra, dec, unit="deg", frame="icrs")


def _pixel_to_icrs(exp, x, y):
    """(ra, dec) [deg, ICRS] of pixel (x, y) of ``exp``, whose WCS may be in another
    frame (HST drizzled products are FK5: ~20 mas from ICRS, the frame bias)."""
    from astropy.coordinates import SkyCoord

    from ..data.exposure import _celestial_frame

    ra, dec = exp.pixel_to_world(x, y)
    frame = _celestial_frame(exp._low_wcs)
    if frame is None:
        return float(ra), float(dec)
    sky = SkyCoord(ra, dec, unit="deg", frame=frame).icrs
    return float(sky.ra.deg), float(sky.dec.deg)


# -- one image ------------------------------------------------------------------------------------

@dataclasses.dataclass
class StarFit:
    """The Moffat fit of the star in one image (pixel frame of that image).

    Built by :func:`fit_star_photometry`; each parameter is also an attribute
    of the same name.

    Parameters
    ----------
    model : astropy.modeling.CompoundModel
        ``MoffatStar + Const2D``, fitted; parameters ``flux_0``, ``x_0_0``,
        ``y_0_0`` [px], ``fwhm_0`` [px], ``beta_0``, ``ellip_0``,
        ``theta_0`` and ``amplitude_1`` (the background, data units / px).
    cov : dict
        Covariance of the free parameters: ``cov[(a, b)]`` for parameter
        names ``a, b`` (fixed parameters are absent: zero covariance).
    jacobian : ndarray, shape (2, 2)
        The image's local sky Jacobian at the star [arcsec / px]
        (:meth:`astromix.data.Exposure.jacobian`).
    pixel_scale : float
        ``sqrt(|det J|)`` [arcsec / px].
    ra, dec : float
        Fitted position of the star [deg], ICRS (converted from the WCS's own
        frame, e.g. FK5).
    n_pixels : int
        Pixels used (inside the fitting circle, unmasked).
    rms : float
        RMS of the residuals over those pixels [data units].
    fit_info : dict
        :attr:`astromix.fitting.MixtureLSQFitter.fit_info`.
    """

    model: object
    cov: dict
    jacobian: np.ndarray
    pixel_scale: float
    ra: float
    dec: float
    n_pixels: int
    rms: float
    fit_info: dict

    def value(self, name):
        """Fitted value of the compound model's parameter ``name``.

        Parameters
        ----------
        name : str
            A parameter name of :attr:`model` (e.g. ``"flux_0"``, ``"x_0_0"``,
            ``"fwhm_0"``, ``"amplitude_1"``).

        Returns
        -------
        float
            The fitted (or fixed) value, in the parameter's unit (px for
            positions and ``fwhm_0``, data units for ``flux_0``, data units / px
            for ``amplitude_1``).

        Raises
        ------
        AttributeError
            If :attr:`model` has no attribute ``name``.
        """
        return float(getattr(self.model, name).value)

    def covariance(self, names):
        """Covariance matrix of the parameters ``names`` (0 for fixed ones).

        Parameters
        ----------
        names : sequence of str
            Parameter names of :attr:`model` (e.g. ``("flux_0",
            "amplitude_1")``), in the order of the rows and columns.

        Returns
        -------
        ndarray, shape (n, n)
            ``cov[(a, b)]`` for every pair, ``n = len(names)``, in the product
            of the two parameters' units; 0 where either parameter is fixed.

        Raises
        ------
        InputError
            If a name is not a parameter of :attr:`model` (a misspelt name
            would otherwise read as a fixed parameter's zero).
        """
        names = list(names)
        for name in names:
            self._check_name(name)
        return np.array([[self.cov.get((a, b), 0.0) for b in names] for a in names])

    def error(self, name):
        """1-sigma uncertainty of parameter ``name`` (0 when fixed).

        Parameters
        ----------
        name : str
            A parameter name of :attr:`model` (e.g. ``"fwhm_0"``).

        Returns
        -------
        float
            ``sqrt(cov[(name, name)])`` in the parameter's unit (a negative
            variance counts as 0); 0 for a fixed parameter.

        Raises
        ------
        InputError
            If ``name`` is not a parameter of :attr:`model`.
        """
        self._check_name(name)
        return math.sqrt(max(self.cov.get((name, name), 0.0), 0.0))

    def _check_name(self, name):
        if name not in self.model.param_names:
            raise InputError(f"StarFit: no parameter {name!r}; the fitted model's parameters "
                             f"are {', '.join(self.model.param_names)}")

    @property
    def fixed(self):
        """dict: the fixed flags of the compound model's parameters."""
        return dict(self.model.fixed)


def _fit_star(exp, ra, dec, radius, fix_fwhm, fix_beta, what, quadrature):
    """Fit MoffatStar + Const2D to the pixels within ``radius`` [arcsec] of (ra, dec)."""
    from astropy.modeling.models import Const2D

    from ..fitting import MixtureLSQFitter
    from ..models.moffat import MoffatStar

    x_w, y_w = exp.world_to_pixel(_icrs(ra, dec))   # into the WCS's own frame
    ny, nx = exp.shape
    if not (np.isfinite(x_w) and np.isfinite(y_w)
            and -0.5 <= x_w <= nx - 0.5 and -0.5 <= y_w <= ny - 0.5):
        raise InputError(f"the star at (ra, dec) = ({ra:.6f}, {dec:.6f}) deg falls outside "
                         f"{what} (pixel ({x_w:.1f}, {y_w:.1f}) of a {nx} x {ny} image)")
    jac = exp.jacobian(x_w, y_w)
    scale = float(np.sqrt(abs(np.linalg.det(jac))))
    r_px = radius / scale
    x_lo, x_hi = max(int(math.floor(x_w - r_px)), 0), min(int(math.ceil(x_w + r_px)), nx - 1)
    y_lo, y_hi = max(int(math.floor(y_w - r_px)), 0), min(int(math.ceil(y_w + r_px)), ny - 1)
    y, x = np.mgrid[y_lo:y_hi + 1, x_lo:x_hi + 1]
    weight = exp.weight[y_lo:y_hi + 1, x_lo:x_hi + 1]
    inside = (x - x_w) ** 2 + (y - y_w) ** 2 <= r_px * r_px
    sel = inside & (weight > 0)
    n_free = 4 + (fix_fwhm is None) + (fix_beta is None)
    if np.count_nonzero(sel) < max(_MIN_PIXELS, 2 * n_free):
        raise InputError(f"the fitting circle of radius {radius:g} arcsec ({r_px:.2f} px) holds "
                         f"only {np.count_nonzero(sel)} usable pixels of {what}: give a larger "
                         "radius")
    x, y = x[sel].astype(np.float64), y[sel].astype(np.float64)
    data = np.asarray(exp.data[y_lo:y_hi + 1, x_lo:x_hi + 1][sel], dtype=np.float64)
    weights = None if exp.uncertainty is None else np.sqrt(weight[sel])
    # the fit is made on the data divided by a scale proportional to them, so that the
    # fitter's tolerances do not depend on the data units (e.g. erg/s/cm2/A values of 1e-20);
    # flux, background and their covariances are converted back below
    from .image import _data_scale

    unit = max(_data_scale(data), float(np.max(np.abs(data))) * 1e-6)
    data = data / unit
    if weights is not None:
        weights = weights * unit

    # start: background from the outer ring, the brightest pixel, the half-maximum area
    r2 = (x - x_w) ** 2 + (y - y_w) ** 2
    ring = r2 >= (0.7 * r_px) ** 2
    bg0 = float(np.median(data[ring] if np.count_nonzero(ring) >= 5 else data))
    resid = data - bg0
    k = int(np.argmax(resid))
    peak = float(resid[k])
    if fix_fwhm is not None:
        fwhm0 = fix_fwhm / scale
    else:
        fwhm0 = max(2.0 * math.sqrt(np.count_nonzero(resid > 0.5 * peak) / math.pi), 1.0)
    beta0 = _BETA_START if fix_beta is None else fix_beta
    flux0 = max(float(resid.sum()), peak, 1e-30)
    star = MoffatStar(flux0, x[k], y[k], fwhm0, beta0, quadrature=quadrature)
    star.fwhm.fixed = fix_fwhm is not None
    star.beta.fixed = fix_beta is not None
    model = star + Const2D(bg0)
    with np.errstate(invalid="ignore"):    # a singular covariance is refused below
        fit = MixtureLSQFitter()(model, x, y, data, weights=weights)
    # back to data units: flux and background scale by ``unit``, their covariances alike
    data = data * unit
    fit.flux_0.value = fit.flux_0.value * unit
    fit.amplitude_1.value = fit.amplitude_1.value * unit
    info = fit.fit_info
    names = info["free_parameters"]
    factor = np.array([unit if n in ("flux_0", "amplitude_1") else 1.0 for n in names])
    cov_m = np.asarray(info["param_cov"]) * np.outer(factor, factor)
    info["param_cov"] = cov_m
    cov = {(a, b): float(cov_m[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}
    xf, yf = float(fit.x_0_0.value), float(fit.y_0_0.value)
    flux = float(fit.flux_0.value)
    log.debug("star fit in %s: flux %.4g, centre (%.3f, %.3f) px, fwhm %.3f px, beta %.3f, "
              "bg %.4g, %d pixels, %d evaluations", what, flux, xf, yf, fit.fwhm_0.value,
              fit.beta_0.value, fit.amplitude_1.value, len(data), info["nfev"])
    if not (flux > 0):
        raise AstromixError(f"no star found in {what}: the fitted flux is {flux:.4g} (not "
                            "positive); check the star's position and the fitting radius")
    if (xf - x_w) ** 2 + (yf - y_w) ** 2 > r_px * r_px:
        raise AstromixError(f"no star found in {what}: the fitted centre ({xf:.1f}, {yf:.1f}) "
                            f"px left the fitting circle (radius {r_px:.1f} px around "
                            f"({x_w:.1f}, {y_w:.1f})); check the star's position")
    diag = np.diag(cov_m)
    if not np.all(np.isfinite(diag) & (diag > 0)):
        bad = [n for n, d in zip(names, diag) if not (np.isfinite(d) and d > 0)]
        raise AstromixError(f"the star fit in {what} is degenerate (no uncertainty for "
                            f"{bad}); fix the FWHM or beta, or change the fitting radius")
    fra, fdec = _pixel_to_icrs(exp, xf, yf)
    rms = float(np.sqrt(np.mean((np.asarray(fit(x, y), dtype=np.float64) - data) ** 2)))
    return StarFit(model=fit, cov=cov, jacobian=exp.jacobian(xf, yf),
                   pixel_scale=float(exp.pixel_scale(xf, yf)), ra=float(fra), dec=float(fdec),
                   n_pixels=int(len(data)), rms=rms, fit_info=info)


# -- the result -----------------------------------------------------------------------------------

@dataclasses.dataclass
class StarPhotometryResult(PhotometryResult):
    """The photometry of a target image against a reference image, from one star.

    Every quantity is a :class:`Measurement` (value, 1-sigma error, fixed).
    With ``F`` the fitted total fluxes, ``b`` the fitted backgrounds and
    ``(x, y)`` the fitted star positions (each parameter is also an attribute
    of the same name; :func:`fit_star_photometry` builds the result):

    Parameters
    ----------
    scale : Measurement
        ``F_target / F_reference``: target data units per reference data unit
        (times ``a = A_t / A_r``, the ratio of the target's to the reference's
        pixel area at the star, when the reference's unit is per solid angle,
        e.g. MJy/sr: target units per pixel per reference surface-brightness
        unit).  Either way the meaning of ``scale`` in the image fit, whose
        reference is put on the target's pixels by
        :func:`~astromix.photometry.regrid`.
    bg : Measurement
        ``b_target - (F_target / F_reference) a b_reference`` [target data
        units per target pixel]: the difference of the two backgrounds once
        the reference's (per reference pixel) is put per target pixel and in
        target units, i.e. the offset in ``target = scale * reference + bg``
        with the reference regridded onto the target's pixels (the meaning of
        ``bg`` in the image fit).
    dx, dy : Measurement
        [arcsec] along the target's +x and +y pixel axes: the shift of the
        reference's star position that aligns it with the target's, i.e. the
        target position minus the reference position mapped into the
        target's pixels (through both WCS), times the target's pixel size
        along x (resp. y).
    dra, ddec : Measurement
        [arcsec] The same shift on the sky: ``(RA_target - RA_reference)
        cos(Dec)`` (positive to the east) and ``Dec_target - Dec_reference``
        (positive to the north), each position from its own image's WCS,
        both in ICRS (an FK5 WCS, as HST's drizzled products have, and an
        ICRS one differ by the ~20 mas frame bias, which is not a pointing
        offset).
    fwhm : Measurement
        FWHM of the target's Moffat [arcsec]: fitted FWHM [px] times the
        target's pixel scale ``sqrt(|det J|)`` at the star.
    beta : Measurement
        Moffat index of the target's star.
    rms : Measurement
        RMS of the target fit's residuals [target data units] (error nan).
    target, reference : StarFit
        The two fits (fitted models in each image's pixel frame, covariances,
        Jacobians, fitted sky positions, pixel counts).
    target_unit : str, optional
        The target's data unit ("" when it has none; the default).
    """

    scale: Measurement
    bg: Measurement
    dx: Measurement
    dy: Measurement
    dra: Measurement
    ddec: Measurement
    fwhm: Measurement
    beta: Measurement
    rms: Measurement
    target: StarFit = dataclasses.field(repr=False)
    reference: StarFit = dataclasses.field(repr=False)
    target_unit: str = ""

    _measurements = ("scale", "bg", "dx", "dy", "dra", "ddec", "fwhm", "beta", "rms")

    @property
    def units(self):
        """dict: the unit of every measurement ("" when dimensionless)."""
        return {"scale": "", "bg": self.target_unit, "dx": "arcsec", "dy": "arcsec",
                "dra": "arcsec", "ddec": "arcsec", "fwhm": "arcsec", "beta": "",
                "rms": self.target_unit}


def _propagate(grad_t, names_t, target, grad_r, names_r, reference):
    """sqrt of g_t^T C_t g_t + g_r^T C_r g_r (independent fits)."""
    var = (np.asarray(grad_t) @ target.covariance(names_t) @ np.asarray(grad_t)
           + np.asarray(grad_r) @ reference.covariance(names_r) @ np.asarray(grad_r))
    return math.sqrt(max(float(var), 0.0))


def fit_star_photometry(target, reference, star, radius, *, fix_fwhm=None, fix_beta=None,
                        quadrature=5):
    """Flux scale, background offset, pointing offset and PSF of a target image, from one star.

    The star is fitted in both images, independently, with a pixel-integrated
    Moffat profile plus a constant background
    (:class:`~astromix.models.moffat.MoffatStar` ``+ Const2D``, least squares
    with analytic derivatives by :class:`~astromix.fitting.MixtureLSQFitter`)
    over the unmasked pixels within ``radius`` of the star's catalogue
    position; the results compare the two fits (imphot's star fit,
    REFERENCE.md).

    Parameters
    ----------
    target, reference : Exposure, NDData or tuple
        The two images: a :class:`~astromix.data.Exposure` (its
        :attr:`~astromix.data.Exposure.weight`, mask and WCS are used), an
        :class:`~astropy.nddata.NDData` with a celestial WCS (converted to an
        Exposure, with its uncertainty and mask), or a tuple ``(data, wcs)``
        or ``(data, wcs, sigma)`` (2-D array, astropy or gwcs celestial WCS,
        standard deviation per pixel).  Pixels must be square on the sky
        (the FWHM is converted with ``sqrt(|det J|)``); the two images may
        have any pixel scales and orientations.
    star : SkyCoord or (float, float)
        The star's position (ra, dec) [deg], ICRS for a pair (a SkyCoord in
        any frame): the centre of the fitting circles; the fits start at the
        brightest pixel inside them.  Each image's WCS is used in its own
        celestial frame (e.g. FK5 for HST, ICRS for MUSE).
    radius : float or Quantity
        Radius of the fitting circle [arcsec, or an angle Quantity], the
        same on the sky in both images; it should hold the star's core and
        some background, and no other source.
    fix_fwhm : float or Quantity, optional
        Hold the target's FWHM at this value [arcsec] (default: fitted).
    fix_beta : float, optional
        Hold the target's beta at this value (> 1; default: fitted).  The
        reference's FWHM and beta are always fitted.
    quadrature : int, optional
        Gauss-Legendre nodes per pixel axis of the Moffat's pixel
        integration (see :class:`~astromix.models.moffat.MoffatStar`); raise
        it for stars with a FWHM below 1.5 px.

    Returns
    -------
    StarPhotometryResult
        ``scale``, ``bg``, ``dx``, ``dy``, ``dra``, ``ddec``, ``fwhm``,
        ``beta`` and ``rms``, each a :class:`Measurement` (value, error,
        fixed), defined in :class:`StarPhotometryResult`; ``summary()`` gives
        an astropy Table and ``to_dict()`` a JSON-compatible dict.

    Raises
    ------
    InputError
        If an image is of an unsupported type or has no WCS, the star falls
        outside an image, the fitting circle holds too few usable pixels, or
        ``radius``, ``fix_fwhm`` or ``fix_beta`` are invalid (not positive,
        not an angle, ``fix_beta <= 1``).
    AstromixError
        If a fit finds no star (a non-positive flux, or a centre outside the
        fitting circle) or is degenerate (a singular covariance).

    Notes
    -----
    Uncertainties come from each fit's covariance ``(J^T J)^-1`` (with the
    images' inverse variances as weights; scaled by the reduced chi2 when an
    image has no uncertainty) and are propagated linearly, the two fits being
    independent: ``scale`` as a ratio, ``bg`` through ``b_t - (F_t / F_r) a
    b_r`` with the flux-background correlation of each fit (the pixel-area
    ratio ``a = |det J_t| / |det J_r|`` at the star, from the WCSs, is taken
    as exact), and the offsets
    in quadrature, the reference position's covariance being mapped into the
    target's pixels by ``J_t^-1 J_r`` (dx, dy) or onto the sky by ``J_r``
    (dra, ddec), with ``J`` the local WCS Jacobians [arcsec / px].  The
    Moffat is Moffat's (1969, A&A 3, 455) as parameterised by Trujillo et al.
    (2001, MNRAS 328, 977).  A Moffat that does not describe the reference's
    PSF well (e.g. HST's) biases its total flux, hence ``scale``; the
    image fit is less sensitive to it.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix.models.moffat import MoffatStar
    >>> from astromix.photometry import fit_star_photometry
    >>> def image(scale, fwhm, flux, bg, shift=0.0):
    ...     wcs = WCS(naxis=2)
    ...     wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ...     wcs.wcs.crval = [53.0, -27.8]
    ...     wcs.wcs.crpix = [21.0, 21.0]
    ...     wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    ...     y, x = np.mgrid[:41, :41]
    ...     star = MoffatStar(flux, 20.0 + shift / scale, 20.0, fwhm / scale, 3.0)
    ...     return star(x, y) + bg, wcs
    >>> target = image(0.2, 0.8, 500.0, 1.0, shift=-0.05)   # 0.05" east of the reference
    >>> reference = image(0.05, 0.3, 100.0, 0.5)    # 0.5 per pixel: 8 per target pixel
    >>> res = fit_star_photometry(target, reference, (53.0, -27.8), 1.5)
    >>> [round(getattr(res, k).value, 3) for k in ("scale", "bg", "dx", "dra", "fwhm", "beta")]
    [5.0, -39.0, -0.05, 0.05, 0.8, 3.0]
    >>> res.summary()["name"].tolist()
    ['scale', 'bg', 'dx', 'dy', 'dra', 'ddec', 'fwhm', 'beta', 'rms']
    """
    if (isinstance(quadrature, (bool, np.bool_))
            or not isinstance(quadrature, (int, np.integer)) or not 1 <= quadrature <= 32):
        raise InputError(f"quadrature must be an integer in [1, 32], got {quadrature!r}")
    radius = _arcsec(radius, "radius")
    if fix_fwhm is not None:
        fix_fwhm = _arcsec(fix_fwhm, "fix_fwhm")
    if fix_beta is not None:
        try:
            fix_beta = float(fix_beta)
        except (TypeError, ValueError):
            raise InputError(f"fix_beta must be a number > 1, got {fix_beta!r}") from None
        if not (math.isfinite(fix_beta) and fix_beta > 1):
            raise InputError(f"fix_beta must be a finite number > 1, got {fix_beta}")
    ra, dec = _star_position(star)
    t_exp = _as_exposure(target, "the target image")
    r_exp = _as_exposure(reference, "the reference image")
    t = _fit_star(t_exp, ra, dec, radius, fix_fwhm, fix_beta, "the target image", quadrature)
    r = _fit_star(r_exp, ra, dec, radius, None, None, "the reference image", quadrature)

    # flux scale and background: target = scale * reference + bg, the reference being put on
    # the target's pixels as regrid does.  Its background br is per reference pixel: per
    # target pixel it is a * br, a = A_t / A_r the ratio of the pixel areas at the star.  A
    # surface brightness (per solid angle) is not multiplied by a in regrid, so there the
    # scale takes the factor a instead (target per-pixel units per reference unit); the
    # background offset is bt - (ft / fr) a br either way.
    ft, bt, fr, br = (t.value("flux_0"), t.value("amplitude_1"), r.value("flux_0"),
                      r.value("amplitude_1"))
    fb = ("flux_0", "amplitude_1")
    area = abs(float(np.linalg.det(t.jacobian))) / abs(float(np.linalg.det(r.jacobian)))
    sb = _per_solid_angle(r_exp.unit)
    s_fac = area if sb else 1.0
    scale = s_fac * ft / fr
    scale_err = _propagate([s_fac / fr, 0.0], fb, t, [-s_fac * ft / fr ** 2, 0.0], fb, r)
    bg = bt - area * br * ft / fr
    bg_err = _propagate([-area * br / fr, 1.0], fb, t,
                        [area * ft * br / fr ** 2, -area * ft / fr], fb, r)

    # positions: the reference's star in the target's pixels, and on the sky
    xy = ("x_0_0", "y_0_0")
    pt = np.array([t.value("x_0_0"), t.value("y_0_0")])
    x_rt, y_rt = t_exp.world_to_pixel(_icrs(r.ra, r.dec))
    d_px = pt - np.array([x_rt, y_rt])
    a = np.linalg.solve(t.jacobian, r.jacobian)           # reference px -> target px
    cov_d = t.covariance(xy) + a @ r.covariance(xy) @ a.T
    side = np.hypot(t.jacobian[0], t.jacobian[1])          # arcsec per px along +x, +y
    cos_dec = math.cos(math.radians(0.5 * (t.dec + r.dec)))
    dra = ((t.ra - r.ra + 180.0) % 360.0 - 180.0) * cos_dec * 3600.0
    ddec = (t.dec - r.dec) * 3600.0
    cov_sky = (t.jacobian @ t.covariance(xy) @ t.jacobian.T
               + r.jacobian @ r.covariance(xy) @ r.jacobian.T)

    fwhm_fixed = fix_fwhm is not None
    fwhm = t.value("fwhm_0") * t.pixel_scale
    unit = "" if t_exp.unit is None else t_exp.unit.to_string()
    result = StarPhotometryResult(
        scale=Measurement(scale, scale_err),
        bg=Measurement(bg, bg_err),
        dx=Measurement(d_px[0] * side[0], math.sqrt(cov_d[0, 0]) * side[0]),
        dy=Measurement(d_px[1] * side[1], math.sqrt(cov_d[1, 1]) * side[1]),
        dra=Measurement(dra, math.sqrt(cov_sky[0, 0])),
        ddec=Measurement(ddec, math.sqrt(cov_sky[1, 1])),
        fwhm=Measurement(fix_fwhm if fwhm_fixed else fwhm,
                         0.0 if fwhm_fixed else t.error("fwhm_0") * t.pixel_scale, fwhm_fixed),
        beta=Measurement(t.value("beta_0"), t.error("beta_0"), fix_beta is not None),
        rms=Measurement(t.rms, math.nan),
        target=t, reference=r, target_unit=unit)
    log.info("star photometry: %s", " ".join(
        f"{k}={m.value:.4g}" for k, m in result.measurements().items()))
    return result
