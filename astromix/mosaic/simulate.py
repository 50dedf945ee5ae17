"""Verification without archive data: a drizzled star field, a comparison with an empirical PSF.

:func:`simulate_drizzled_star_field` renders a grid of point sources into
several exposures taken at different roll angles and pointings (each with its
own TAN WCS, built from JWST-style pointing angles), drizzles them onto a
common mosaic with the ``drizzle`` package (``drizzle.resample.Drizzle``,
exposure-time weights, square kernel) and returns the mosaic, its weight and
context images, the exposures (:class:`~astromix.mosaic.InputExposure`) and a
table of the stars with the exposures that truly covered each one.
:func:`compare_with_empirical_psf` measures a mosaic PSF against an empirical
one (FWHM, encircled energy, the smoothing that matches them).
"""

import dataclasses
import logging
import math
import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from .exposures import InputExposure, jwst_pc_matrix, tan_wcs

log = logging.getLogger("astromix")

__all__ = ["SimulatedMosaic", "simulate_drizzled_star_field", "render_point_source",
           "compare_with_empirical_psf"]


@dataclasses.dataclass
class SimulatedMosaic:
    """The result of :func:`simulate_drizzled_star_field`.

    A dataclass: its fields are its constructor's arguments, in this order.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The drizzled mosaic (float32, count rate per mosaic pixel: a star sums
        to its ``flux``, whatever the mosaic and detector pixel scales).
    weight : ndarray, shape (ny, nx)
        Drizzle's output weight.
    context : ndarray of int32, shape (n_planes, ny, nx)
        Drizzle's context image: bit i of plane k is exposure 32 k + i.
    wcs : astropy.wcs.WCS
        The mosaic's WCS (north up, east left).
    exposures : list of InputExposure
        The exposures in drizzling (context) order, with their WCSs and
        exposure times (those the provider had no PSF for left out).
    exposure_images : list of ndarray
        What was drizzled (count rate per detector pixel).
    stars : astropy.table.Table
        ``ra``, ``dec`` [deg], ``x``, ``y`` [mosaic px, 0-based], ``flux``,
        ``n_exposures`` (exposures whose detector holds the star's centre:
        within the detector's pixels, ``-0.5 < x, y < n - 0.5``, no margin),
        ``covered`` (bool mask of those, shape (n_exposures,)), ``clean`` (no
        exposure edge within ``margin`` detector px of the star: the star is
        complete or absent in every exposure).
    provider : PSFProvider
        The PSFs the exposures were rendered with.
    pixfrac : float, optional
        Drizzle's pixel shrink factor used (default 1.0).
    """

    image: np.ndarray
    weight: np.ndarray
    context: np.ndarray
    wcs: Any
    exposures: list
    exposure_images: list
    stars: Any
    provider: Any
    pixfrac: float = 1.0


def render_point_source(psf_image, oversampling, x, y, shape, *, flux=1.0, out=None,
                        pixel_integrated=False):
    """Add a point source to an image from an oversampled PSF, exactly (Fourier).

    The oversampled PSF (centre at ``((n - 1) / 2, (n - 1) / 2)``, unit sum)
    is convolved with the detector pixel (unless it is an effective PSF,
    ``pixel_integrated``) and shifted to the source's sub-pixel position in
    Fourier space, then sampled at the pixel centres: exact for a
    band-limited PSF, and independent of the real-space resampling of
    :class:`~astromix.ExposureWeightedPSF`.

    Parameters
    ----------
    psf_image : ndarray, shape (n, n)
    oversampling : int
    x, y : float
        Position [px, 0-based].
    shape : (int, int)
        (ny, nx) of the image.
    flux : float, optional
        The source's total (count rate summed over the image, less what falls
        outside it).
    out : ndarray, optional
        Image to add to (else a new zero image).
    pixel_integrated : bool, optional
        True when ``psf_image`` already contains the detector pixel response
        (an effective PSF, as ``PSFProvider.pixel_integrated``): it is then
        only shifted and sampled, not convolved with the pixel again.
        Default False.

    Returns
    -------
    ndarray, shape ``shape``
    """
    from scipy import fft

    img = np.asarray(psf_image, dtype=np.float64)
    img = img / img.sum()
    n_y, n_x = img.shape
    cy, cx = (n_y - 1) / 2.0, (n_x - 1) / 2.0
    os_ = int(oversampling)
    jx, jy = int(round(x)), int(round(y))
    dx, dy = x - jx, y - jy
    # sample k (detector px from jx) lies at oversampled index c + os (k - dx):
    # integer part cx0 + os k, the rest (phase of c, sub-pixel shift) done in Fourier space
    cx0, cy0 = math.floor(cx), math.floor(cy)
    ax, ay = os_ * dx - (cx - cx0), os_ * dy - (cy - cy0)
    fy = fft.fftfreq(n_y)
    fx = fft.fftfreq(n_x)
    spec = fft.fft2(img)
    phase_y = np.exp(-2j * math.pi * fy * ay)
    phase_x = np.exp(-2j * math.pi * fx * ax)
    if not pixel_integrated:                   # the detector pixel: a box of os_ samples
        phase_y *= np.sinc(fy * os_)
        phase_x *= np.sinc(fx * os_)
    spec *= phase_y[:, None]
    spec *= phase_x[None, :]
    shifted = fft.ifft2(spec).real
    kx = np.arange(-(cx0 // os_), (n_x - 1 - cx0) // os_ + 1)
    ky = np.arange(-(cy0 // os_), (n_y - 1 - cy0) // os_ + 1)
    # flux per oversampled pixel of the pixel-convolved PSF (or ePSF) -> per detector pixel
    stamp = shifted[np.ix_(cy0 + os_ * ky, cx0 + os_ * kx)] * (os_ * os_)
    if out is None:
        out = np.zeros(shape)
    ny, nx = out.shape
    rows, cols = ky + jy, kx + jx
    rsel = (rows >= 0) & (rows < ny)
    csel = (cols >= 0) & (cols < nx)
    out[np.ix_(rows[rsel], cols[csel])] += flux * stamp[np.ix_(rsel, csel)]
    return out


def simulate_drizzled_star_field(provider=None, *, n_exposures=6, roll_angles=None, offsets=None,
                                 exptimes=None, n_stars=9, exposure_shape=(160, 160),
                                 exposure_scale=None, mosaic_scale=0.03, mosaic_shape=None,
                                 v3i_yang=-0.5, vparity=-1, pixfrac=1.0, kernel="square",
                                 flux=1.0, star_spacing=None, margin=12, noise=0.0,
                                 filter="F200W", detector="NRCA1", rng=None):
    """Simulate exposures of a star field at several roll angles and drizzle them.

    Parameters
    ----------
    provider : PSFProvider, optional
        The exposures' PSFs (default: :class:`~astromix.mosaic.PoppyProvider`
        F200W with 3 wavelengths).
    n_exposures : int, optional
        4-9 is typical (default 6).
    roll_angles : sequence of float, optional
        ``ROLL_REF`` of each exposure [deg]; default evenly spread over 0-150
        with a pseudo-random jitter from ``rng``.
    offsets : sequence of (float, float), optional
        Pointing offset (east, north) of each exposure from the mosaic centre
        [arcsec]; default random within +-0.5 arcsec.
    exptimes : sequence of float, optional
        [s]; default 200-600 s at random.
    n_stars : int, optional
        Stars on a square grid around the centre (default 9).
    exposure_shape : (int, int), optional
        (ny, nx) of each exposure [px] (default 160 x 160).
    exposure_scale : float, optional
        Detector pixel scale [arcsec/px]; default the provider's
        (``scale_for(filter)``) or 0.031.
    mosaic_scale : float, optional
        [arcsec/px] (default 0.03, NEXUS-like).
    mosaic_shape : (int, int), optional
        Default: the exposures' field plus 10%.
    v3i_yang, vparity : float, int, optional
        The aperture's angles (see :func:`~astromix.mosaic.jwst_pc_matrix`).
    pixfrac : float, optional
        Drop size (default 1).
    kernel : str, optional
        drizzle kernel (default ``"square"``).
    flux : float, optional
        Count rate of each star (its sum over an exposure, and over the
        mosaic).
    star_spacing : float, optional
        Grid spacing [arcsec]; default 40 detector pixels, so that the stamps
        of neighbouring stars (up to 41 detector pixels wide) do not overlap.
    margin : float, optional
        [detector px] a star within it of an exposure's edge is not ``clean``.
    noise : float, optional
        Gaussian noise rms per exposure pixel (default 0).
    filter, detector : str, optional
        Stored on the exposures (they select the provider's PSF).
    rng : numpy.random.Generator or int, optional

    Returns
    -------
    SimulatedMosaic

    Raises
    ------
    InputError
        On inconsistent lengths; if ``n_exposures``, ``n_stars``, an entry of
        ``exposure_shape`` or ``mosaic_shape`` is not an integer >= 1, or
        ``mosaic_scale`` or ``exposure_scale`` is not a finite number > 0; or
        if the provider has a PSF for none of the exposures.

    Notes
    -----
    Leans on drizzle (``drizzle.resample.Drizzle``, ``drizzle.utils.calc_pixmap``;
    Fruchter & Hook 2002, PASP 114, 144).  The stars are rendered with
    :func:`render_point_source` (exact Fourier shift), not with the code under
    test; the PSF images are convolved with the detector pixel unless
    ``provider.pixel_integrated`` (effective PSFs, which hold it already).
    Drizzle averages input pixel values (a surface brightness per detector
    pixel); each exposure is scaled by ``iscale = (mosaic_scale /
    exposure_scale)**2`` (drizzle's ``iscale``, with ``pixel_scale_ratio =
    mosaic_scale / exposure_scale`` for the kernel sizes; ``scale`` before
    drizzle 2.2) so that the mosaic holds count rates per mosaic pixel.  An
    exposure for which the provider returns no PSF (``ImageProvider(...,
    missing="skip")``) is left out of the simulation -- not rendered, not
    drizzled, not in ``exposures`` -- with a logged warning naming it, as
    :class:`~astromix.ExposureWeightedPSF` leaves it out of the PSF.
    """
    from astropy.table import Table
    from drizzle.resample import Drizzle
    from drizzle.utils import calc_pixmap

    from .providers import PoppyProvider

    n_exposures = _positive_int(n_exposures, "n_exposures")
    n_stars = _positive_int(n_stars, "n_stars")
    ny_e, nx_e = _shape(exposure_shape, "exposure_shape")
    if mosaic_shape is not None:
        mosaic_shape = _shape(mosaic_shape, "mosaic_shape")
    mosaic_scale = _positive_float(mosaic_scale, "mosaic_scale")
    if exposure_scale is not None:
        exposure_scale = _positive_float(exposure_scale, "exposure_scale")
    rng = np.random.default_rng(rng)
    if provider is None:
        provider = PoppyProvider(filter, nlambda=3)
    if roll_angles is None:
        roll_angles = np.linspace(0, 150, n_exposures) + rng.uniform(-5, 5, n_exposures)
    if offsets is None:
        offsets = rng.uniform(-0.5, 0.5, (n_exposures, 2))
    if exptimes is None:
        exptimes = rng.uniform(200, 600, n_exposures)
    roll_angles = np.asarray(roll_angles, dtype=float)
    offsets = np.asarray(offsets, dtype=float).reshape(-1, 2)
    exptimes = np.asarray(exptimes, dtype=float)
    if not (roll_angles.size == offsets.shape[0] == exptimes.size == n_exposures):
        raise InputError("roll_angles, offsets and exptimes need one entry per exposure")
    if exposure_scale is None:
        scale_for = getattr(provider, "scale_for", None)
        exposure_scale = _positive_float(scale_for(filter) if scale_for else 0.031,
                                         "the provider's exposure_scale")
    if mosaic_shape is None:
        side = int(math.ceil(max(ny_e, nx_e) * exposure_scale / mosaic_scale * 1.1))
        mosaic_shape = (side, side)
    ra0, dec0 = 53.16, -27.78
    mwcs = tan_wcs(ra0, dec0, mosaic_scale, [[-1.0, 0.0], [0.0, 1.0]],
                   ((mosaic_shape[1] - 1) / 2.0, (mosaic_shape[0] - 1) / 2.0), mosaic_shape)
    cosd = math.cos(math.radians(dec0))
    exposures = []
    for e in range(n_exposures):
        ra = ra0 + offsets[e, 0] / 3600.0 / cosd
        dec = dec0 + offsets[e, 1] / 3600.0
        w = tan_wcs(ra, dec, exposure_scale, jwst_pc_matrix(roll_angles[e], v3i_yang, vparity),
                    ((nx_e - 1) / 2.0, (ny_e - 1) / 2.0), (ny_e, nx_e))
        exposures.append(InputExposure(
            name=f"sim_{e:02d}", wcs=w, exptime=float(exptimes[e]), instrument="NIRCam",
            filter=filter, detector=detector, date="2023-01-01T00:00:00", shape=(ny_e, nx_e),
            meta={"roll_ref": float(roll_angles[e]), "v3i_yang": float(v3i_yang),
                  "vparity": int(vparity), "offset_east": float(offsets[e, 0]),
                  "offset_north": float(offsets[e, 1])}))
    # stars on a grid
    side = int(math.ceil(math.sqrt(n_stars)))
    if star_spacing is None:
        star_spacing = 40 * exposure_scale
    g = (np.arange(side) - (side - 1) / 2.0) * star_spacing
    gx, gy = np.meshgrid(g, g)
    east, north = gx.ravel()[:n_stars], gy.ravel()[:n_stars]
    sra = ra0 + east / 3600.0 / cosd
    sdec = dec0 + north / 3600.0
    mx, my = mwcs.world_to_pixel_values(sra, sdec)
    covered = np.zeros((n_stars, n_exposures), dtype=bool)
    clean = np.ones((n_stars, n_exposures), dtype=bool)
    images = []
    kept = []
    pixel_integrated = bool(getattr(provider, "pixel_integrated", False))
    for e, exp in enumerate(exposures):
        ex, ey = exp.wcs.world_to_pixel_values(sra, sdec)
        img = np.zeros((ny_e, nx_e))
        for s in range(n_stars):
            inside = (ex[s] > -0.5) and (ex[s] < nx_e - 0.5) and (ey[s] > -0.5) \
                and (ey[s] < ny_e - 0.5)
            deep = (ex[s] > margin) and (ex[s] < nx_e - 1 - margin) and (ey[s] > margin) \
                and (ey[s] < ny_e - 1 - margin)
            far = (ex[s] < -margin) or (ex[s] > nx_e - 1 + margin) or (ey[s] < -margin) \
                or (ey[s] > ny_e - 1 + margin)
            clean[s, e] = deep or far
            covered[s, e] = inside
            if far:
                continue
            _, psf = provider.psf(exp, ex[s], ey[s])
            if psf is None:
                break
            render_point_source(psf, provider.oversampling, ex[s], ey[s], (ny_e, nx_e),
                                flux=flux, out=img, pixel_integrated=pixel_integrated)
        else:
            if noise:
                img = img + rng.normal(0.0, float(noise), img.shape)
            images.append(img)
            kept.append(e)
            continue
        # as ExposureWeightedPSF does with an exposure the provider has no PSF for
        log.warning("simulate_drizzled_star_field: no PSF for exposure %s (detector %s); it "
                    "is left out of the simulation", exp.name, exp.detector)
    if not kept:
        raise InputError(f"simulate_drizzled_star_field: the provider has no PSF for any of "
                         f"the {n_exposures} exposures (filter {filter!r}, detector "
                         f"{detector!r})")
    exposures = [exposures[e] for e in kept]
    covered = covered[:, kept]
    clean = clean[:, kept].all(1)
    # drizzle averages the input pixel values (surface brightness per detector pixel):
    # iscale = (mosaic px / detector px)^2 turns them into count rates per mosaic pixel,
    # so that a star sums to its flux; pixel_scale_ratio sizes the kernels
    ratio = mosaic_scale / exposure_scale
    scale_args = ({"iscale": ratio * ratio, "pixel_scale_ratio": ratio} if _drizzle_has_iscale()
                  else {"scale": ratio})           # drizzle < 2.2: scale does both
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        driz = Drizzle(kernel=kernel, out_shape=tuple(mosaic_shape), fillval=0.0)
        for exp, img in zip(exposures, images):
            pixmap = calc_pixmap(exp.wcs, mwcs, shape=img.shape)
            driz.add_image(img.astype(np.float32), exptime=exp.exptime, pixmap=pixmap,
                           weight_map=np.full(img.shape, exp.exptime, dtype=np.float32),
                           pixfrac=pixfrac, in_units="cps", **scale_args)
    stars = Table({"ra": sra, "dec": sdec, "x": np.asarray(mx), "y": np.asarray(my),
                   "flux": np.full(n_stars, float(flux)), "n_exposures": covered.sum(1),
                   "covered": covered, "clean": clean})
    return SimulatedMosaic(image=np.array(driz.out_img), weight=np.array(driz.out_wht),
                           context=np.array(driz.out_ctx), wcs=mwcs, exposures=exposures,
                           exposure_images=images, stars=stars, provider=provider,
                           pixfrac=float(pixfrac))


def _drizzle_has_iscale():
    """Whether ``Drizzle.add_image`` takes ``iscale`` and ``pixel_scale_ratio`` (drizzle >= 2.2)."""
    import inspect

    from drizzle.resample import Drizzle

    return "iscale" in inspect.signature(Drizzle.add_image).parameters


def _positive_int(value, name):
    """``value`` (an integral number) as an int >= 1, else InputError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, (bool, np.bool_)) or not (math.isfinite(v) and v >= 1
                                                    and v == int(v)):
        raise InputError(f"simulate_drizzled_star_field: {name} must be an integer >= 1, "
                         f"got {value!r}")
    return int(v)


def _positive_float(value, name):
    """``value`` as a finite float > 0, else InputError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"simulate_drizzled_star_field: {name} must be a finite number > 0 "
                         f"[arcsec/px], got {value!r}")
    return v


def _shape(value, name):
    """``value`` as (ny, nx) of ints >= 1, else InputError naming ``name``."""
    try:
        ny, nx = value
    except (TypeError, ValueError):
        raise InputError(f"simulate_drizzled_star_field: {name} must be (ny, nx), got "
                         f"{value!r}") from None
    return (_positive_int(ny, f"{name}[0]"), _positive_int(nx, f"{name}[1]"))


def compare_with_empirical_psf(model, x, y, empirical, oversampling, pixel_scale, *,
                               radii=(0.1, 0.2, 0.3), r_total=0.6, size=41):
    """Compare a mosaic PSF with an empirical ePSF of the same mosaic (FWHM, encircled energy).

    The model is evaluated at (x, y) with ``oversampling`` samples per mosaic
    pixel (:meth:`ExposureWeightedPSF.image`), like the empirical effective
    PSF; the smoothing ``sigma`` that best turns the model into the empirical
    PSF is fitted with :meth:`~ExposureWeightedPSF.calibrate_smoothing`, the
    empirical PSF sampled at its mosaic-pixel phase playing the star.

    Parameters
    ----------
    model : ExposureWeightedPSF
        Its ``sigma`` is left unchanged.
    x, y : int
        A mosaic position [px].
    empirical : ndarray, shape (n, n)
        The empirical ePSF, centre at ``((n - 1) / 2, (n - 1) / 2)``, n odd.
    oversampling : int
        Its samples per mosaic pixel.
    pixel_scale : float
        Mosaic pixel scale [arcsec/px].
    radii, r_total : optional
        See :func:`~astromix.mosaic.psf_profile_metrics` [arcsec].
    size : int, optional
        Stamp size [mosaic px] of the sigma fit (default 41); cut down to the
        empirical PSF's extent, ``2 ((n - 1) // 2 // oversampling) + 1``
        mosaic px, when it is smaller, and to ``2 min(x, y) + 1`` near the
        mosaic's low edge (the fit stamp does not reach below pixel 0).

    Returns
    -------
    dict
        ``empirical``, ``model`` and ``model_smoothed`` (each the
        :func:`psf_profile_metrics` dict), ``sigma`` [mosaic px] and ``chi2``
        (the fit's, relative to its value without smoothing).

    Raises
    ------
    InputError
        If the empirical PSF is not square with an odd size, or spans fewer
        than 5 mosaic pixels for the sigma fit.
    """
    from .psf import psf_profile_metrics

    emp = np.asarray(empirical, dtype=np.float64)
    if emp.ndim != 2 or emp.shape[0] != emp.shape[1] or emp.shape[0] % 2 == 0:
        raise InputError(f"the empirical PSF must be square with an odd size, got {emp.shape}")
    os_ = int(oversampling)
    n = emp.shape[0]
    c = (n - 1) // 2
    scale = pixel_scale / os_
    r_max = int(math.ceil((r_total + 0.05) / scale))
    dim = 2 * r_max + 1
    x, y = int(round(x)), int(round(y))
    saved = model.sigma
    try:
        model.sigma = None
        stamp = model.image(x, y, dim, oversampling=os_)
        sigma, info = _fit_sigma(model, x, y, emp, os_, c, size)
        model.sigma = sigma
        smoothed = model.image(x, y, dim, oversampling=os_)
    finally:
        model.sigma = saved
    centre = (r_max, r_max)
    metrics = {name: psf_profile_metrics(img, scale, radii=radii, r_total=r_total,
                                         centre=centre)
               for name, img in (("model", stamp), ("model_smoothed", smoothed))}
    metrics["empirical"] = psf_profile_metrics(emp, scale, radii=radii, r_total=r_total,
                                               centre=(c, c))
    metrics["sigma"] = sigma
    metrics["chi2"] = info["chi2"] / info["chi2_none"]
    return metrics


def _fit_sigma(model, x, y, emp, os_, c, size):
    k = np.arange(-(c // os_), c // os_ + 1)
    star = emp[np.ix_(c + os_ * k, c + os_ * k)]
    h = k.size // 2
    # the star is only as large as the ePSF (and cannot reach below pixel 0)
    fit = min(int(size), k.size, 2 * min(x, y) + 1)
    if fit < 5:
        raise InputError(f"compare_with_empirical_psf: the empirical PSF ({emp.shape[0]} "
                         f"samples at {os_} per pixel) at ({x}, {y}) leaves a {fit} px stamp "
                         "for the sigma fit; it needs >= 5 mosaic px")
    if fit < size:
        log.info("compare_with_empirical_psf: the sigma fit uses %d px stamps (the empirical "
                 "PSF spans %d mosaic px; (%d, %d) is %d px from the mosaic's low edge), not "
                 "size = %d", fit, k.size, x, y, min(x, y), size)
    # the star cut to the fit stamp (rows and columns y - hf .. y - hf + fit - 1, the stamp
    # calibrate_smoothing takes; hf <= min(x, y), so it starts at or above pixel 0)
    hf = (fit - 1) // 2
    image = np.zeros((y - hf + fit, x - hf + fit))
    image[y - hf:, x - hf:] = star[h - hf:h - hf + fit, h - hf:h - hf + fit]
    return model.calibrate_smoothing(([float(x)], [float(y)]), image, size=fit)
