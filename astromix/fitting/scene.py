"""Fitting and sampling scenes of sources in many exposures.

:func:`fit_scene` and :func:`sample_scene` are thin layers over
:class:`~astromix.fitting.MixtureLSQFitter` and
:class:`~astromix.fitting.DynestyFitter`, which both fit a
:class:`~astromix.SceneModel` to a list of :class:`~astromix.Exposure` through
the scene's chi2 objective (the backend kernels' chi2 and analytic gradient,
summed over exposures).  This is the job of forcepho (Johnson et al., in prep.;
github.com/bd-j/forcepho), done on the CPU or GPU backends with honest errors.
"""

import logging
import math
import numbers
import warnings

import numpy as np
from astropy import units as u
from astropy.table import MaskedColumn, Table

from ..errors import InputError
from ..models.scene import SceneModel, SceneWarning, _exposure_list
from .lsq import MixtureLSQFitter
from .nested import _SCENE_UNITS, DynestyFitter

__all__ = ["fit_scene", "sample_scene", "scene_catalog", "exposure_table"]

log = logging.getLogger("astromix")

#: Units of the shape parameters in the catalog: those they are sampled in.
_SHAPE_UNITS = {k: v for k, v in _SCENE_UNITS.items() if k not in ("ra", "dec")}


def _progress_bar(progress, desc, unit):
    from tqdm.auto import tqdm
    return tqdm(desc=desc, unit=unit, disable=not progress, leave=False)


def _max_shift_px(fitted, objective):
    """Largest move of a source since the objective's reference point [px]."""
    p = fitted.parameters
    worst = 0.0
    for pls in objective.placements:
        for pl in pls:
            if pl is None:
                continue
            idx = fitted.source_index(pl.source)
            d = np.array([(p[idx["dec"]] - pl.dec_ref) * 3600.0,
                          (p[idx["ra"]] - pl.ra_ref) * pl.cosd * 3600.0])
            worst = max(worst, float(np.hypot(*(pl.jac @ d))))
    return worst


def _placement_lost(fitted, objective):
    """Sources of ``fitted`` that moved beyond the placement margin of an exposure they
    were placed on in ``objective`` (more than ``5 r_eff + 10`` px outside the image,
    where :meth:`SceneModel.placements` drops them), as a sorted list of indices."""
    p = fitted.parameters
    lost = set()
    for e, pls in zip(objective.exposures, objective.placements):
        for pl, loc in zip(pls, fitted._locate(e, p)):
            if pl is not None and loc is None:
                lost.add(pl.source)
    return sorted(lost)


def _refit(fitter, fitted, exposures, maxiter, kwargs):
    """fit_scene's second fit, from ``fitted``, with the WCS maps and PSFs taken again there.

    A source that the first fit moved (within ``max_shift``) beyond the
    placement margin of an exposure it was placed on (a faint source near an
    edge) would be dropped from that exposure, or found on no exposure at all
    (InputError): it starts the second fit from its first reference point, so
    that it keeps its first placement.  Should the second fit still fail on
    its input, the first fit is returned, with a SceneWarning.
    """
    objective = fitted.fit_info["objective"]
    start = fitted.copy()
    lost = _placement_lost(fitted, objective)
    for i in lost:
        idx = start.source_index(i)
        for key in ("ra", "dec"):
            param = getattr(start, start.param_names[idx[key]])
            if not param.fixed and not param.tied:
                param.value = float(objective.reference[idx[key]])
    if lost:
        log.info("fit_scene: source(s) %s moved off the image's margin; they keep their "
                 "first placement", [fitted.source_names[i] for i in lost])
    try:
        return fitter(start, exposures, maxiter=maxiter, **kwargs)
    except InputError as exc:
        warnings.warn(f"fit_scene: the second fit (relinearize) failed ({exc}); the first "
                      "fit is returned", SceneWarning, stacklevel=3)
        return fitted


#: ``ellip`` this close to its lower bound counts as pinned there (see _unpin_round).
_PINNED_ELLIP = 1e-3
#: Where _unpin_round starts a pinned source again: this ellipticity ...
_RESTART_ELLIP = 0.2
#: ... at these position angles from the fitted one [rad]: pi/2 apart, so that every
#: orientation (modulo pi) lies within pi/4 of one of them.
_RESTART_TURNS = (0.25 * math.pi, 0.75 * math.pi)


class _KeptWarnings:
    """A fitter whose fits keep their warnings in ``fit_info["warnings"]``, to be re-issued.

    fit_scene may fit more than once (``relinearize``, :func:`_unpin_round`); only
    the warnings of the fit it returns (a degenerate Hessian, an exposure without
    sources) are the caller's business, and :func:`_reissue` issues them.
    """

    def __init__(self, fitter):
        self.fitter = fitter

    def __call__(self, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted = self.fitter(*args, **kwargs)
        fitted.fit_info["warnings"] = caught
        return fitted


def _reissue(fitted):
    """Issue the warnings :class:`_KeptWarnings` kept with ``fitted``, as they were."""
    for w in fitted.fit_info.pop("warnings", []):
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _pinned_round(fitted):
    """Sersic sources with free ``ellip`` and ``theta`` whose ``ellip`` ended on its lower bound."""
    pinned = []
    for i, kind in enumerate(fitted.source_kinds):
        if kind != "sersic":
            continue
        ellip, theta = getattr(fitted, f"ellip_{i}"), getattr(fitted, f"theta_{i}")
        if any(p.fixed or p.tied for p in (ellip, theta)):
            continue
        low = ellip.bounds[0] if ellip.bounds[0] is not None else 0.0
        if ellip.value <= low + _PINNED_ELLIP:
            pinned.append(i)
    return pinned


def _unpin_round(fitter, fitted, exposures, maxiter, kwargs):
    """Fit again the sources whose ellipticity a fit left on ``ellip = 0``; keep the best fit.

    At ``ellip = 0`` the position angle does nothing, so the chi2 gradient along
    ``theta`` is zero; when the starting ``theta`` is more than about pi/4 from
    the galaxy's (a catalog without shapes starts every source at ``ellip = 0,
    theta = 0``), the gradient along ``ellip`` points below 0 and the fit stops
    on that bound, a round model of an elongated galaxy.  Each such source is
    started again at ``ellip = 0.2`` turned by pi/4, then by 3 pi/4, from its
    fitted angle (every orientation lies within pi/4 of one of these); a refit
    is kept when its chi2 is lower.  A round galaxy goes back to ``ellip ~ 0``
    and the first fit stands.
    """
    pinned = _pinned_round(fitted)
    for turn in _RESTART_TURNS:
        if not pinned:
            break
        start = fitted.copy()
        for i in pinned:
            ellip, theta = getattr(start, f"ellip_{i}"), getattr(start, f"theta_{i}")
            low = ellip.bounds[0] if ellip.bounds[0] is not None else 0.0
            high = ellip.bounds[1] if ellip.bounds[1] is not None else 1.0
            ellip.value = min(max(_RESTART_ELLIP, low + _RESTART_ELLIP), 0.5 * (low + high))
            theta.value = float(theta.value) + turn
        log.info("fit_scene: source(s) %s ended round (ellip = 0); fitting again from "
                 "ellip = %.1f, theta turned by %.2f rad",
                 [fitted.source_names[i] for i in pinned], _RESTART_ELLIP, turn)
        try:
            again = fitter(start, exposures, maxiter=maxiter, **kwargs)
        except InputError:              # as _refit: the first fit stands
            break
        if again.fit_info["chi2"] < fitted.fit_info["chi2"]:
            fitted = again
            still = set(_pinned_round(fitted))
            pinned = [i for i in pinned if i in still]
    return fitted


def _bound_positions(scene, max_shift):
    """A copy whose unbounded positions may move at most ``max_shift`` arcsec."""
    scene = scene.copy()
    if max_shift is None:
        return scene
    for i in range(scene.n_sources):
        dec = float(getattr(scene, f"dec_{i}").value)
        for name, step in ((f"ra_{i}", max_shift / 3600.0 / max(math.cos(math.radians(dec)),
                                                                 1e-6)),
                           (f"dec_{i}", max_shift / 3600.0)):
            param = getattr(scene, name)
            if param.fixed or param.tied or param.bounds != (None, None):
                continue
            v = float(param.value)
            param.bounds = (v - step, v + step)
    return scene


def _given_fit(scene, fitted, max_shift):
    """A copy of ``fitted`` (a fit_scene result for ``scene``) with the position bounds
    of ``max_shift`` around ``scene``'s positions, as sample_scene's own fit has them;
    InputError if it is not such a result."""
    info = getattr(fitted, "fit_info", None)
    if not isinstance(info, dict) or not {"free_parameters", "unconstrained",
                                          "param_std"} <= set(info):
        raise InputError("sample_scene: fit must be True, False or a SceneModel returned by "
                         "fit_scene (with its fit_info)")
    if fitted.param_names != scene.param_names:
        raise InputError("sample_scene: the fit's parameters are not the scene's (fit must be "
                         "fit_scene's result for this scene)")
    start = fitted.copy()
    window = _bound_positions(scene, max_shift)
    for i in range(scene.n_sources):
        for name in (f"ra_{i}", f"dec_{i}"):
            param = getattr(start, name)
            if param.fixed or param.tied:
                continue
            lo, hi = getattr(window, name).bounds
            v = float(param.value)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise InputError(f"sample_scene: the fit's {name} = {v!r} lies outside "
                                 f"max_shift = {max_shift} arcsec of the scene's start; "
                                 "fit with the same max_shift")
            param.bounds = (lo, hi)
    return start


def _limit(value, what, unit=None):
    """None, or a finite number >= 0 (a Quantity is converted to ``unit``); else InputError."""
    if value is None:
        return None
    if unit is not None and isinstance(value, u.Quantity):
        try:
            value = value.to_value(unit)
        except u.UnitsError:
            raise InputError(f"{what} must be in units of {unit}, got {value.unit}") from None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real | np.ndarray) \
            or np.ndim(value) != 0:
        raise InputError(f"{what} must be a number >= 0 or None, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise InputError(f"{what} must be a finite number >= 0 or None, got {v}")
    return v


def _check_maxiter(maxiter):
    if maxiter is None:
        return None
    if isinstance(maxiter, bool | np.bool_) or not isinstance(maxiter, numbers.Integral) \
            or maxiter < 1:
        raise InputError(f"maxiter must be an integer >= 1 or None, got {maxiter!r}")
    return int(maxiter)


def _hold_unconstrained(scene, exposures, keep=()):
    """Fix (in place) the free parameters no exposure constrains; returns their names.

    A flux is unconstrained when no exposure of its band has an unmasked pixel
    near the source (:meth:`SceneModel._flux_coverage`): a band without
    exposures, a source off the exposures of one band, or on masked pixels
    only.  Such a parameter had stayed at its start with an error from a
    near-singular Hessian (1e-14 or NaN) and counted in the degrees of freedom.
    A source on masked pixels only in every exposure has all its free
    parameters held.  Sources off every exposure are left to the objective
    (InputError "lie on no exposure").  Names in ``keep`` (parameters given a
    prior) stay free.  One SceneWarning names the held ones.
    """
    covered, placed = scene._flux_coverage(exposures)
    held = []
    for i in range(scene.n_sources):
        idx = scene.source_index(i)
        if not placed[i]:
            continue
        if covered[i].any():
            keys = [("flux", b) for k, b in enumerate(scene.bands) if not covered[i, k]]
        else:
            keys = list(idx)
        for key in keys:
            param = getattr(scene, scene.param_names[idx[key]])
            if not param.fixed and not param.tied and param.name not in keep:
                param.fixed = True
                held.append(param.name)
    if held:
        warnings.warn(f"no exposure constrains {held} (no unmasked pixel of an exposure of "
                      "that band near the source): held at their starting values, reported "
                      "with NaN errors and not counted in the degrees of freedom",
                      SceneWarning, stacklevel=3)
    return held


def fit_scene(scene, exposures, *, background="fit", max_shift=1.0, maxiter=None,
              relinearize=0.25, dtype=np.float64, backend=None, progress=True, fitter=None):
    """Fit a scene of sources jointly in every exposure; returns the fit and a catalog.

    Minimises the chi2 summed over the exposures (L-BFGS-B with the analytic
    gradient from the backend kernels, then Newton steps) with
    :class:`~astromix.fitting.MixtureLSQFitter`; parameter errors come from the
    inverse of the chi2 Hessian (central differences of the analytic gradient)
    at the optimum: ``cov = 2 H^-1`` (see Notes).  Fixed, tied and bounded
    parameters of the scene are honoured.

    Parameters
    ----------
    scene : SceneModel
        Starting values; not modified.
    exposures : Exposure or iterable of Exposure
        Each with a celestial WCS, a PSF (fixed or varying) and a band that the
        scene has fluxes for; with a zero point when the scene has one (an
        exposure without one is an InputError).  A generator is materialised.
    background : {"fit", None} or float or sequence, optional
        ``"fit"`` (default): a constant background per exposure, profiled out
        (its best value for every trial scene; the fitted values are in the
        exposure table); None: none; a number, or a sequence or NumPy array
        of one per exposure: known backgrounds [data units].
    max_shift : float or Quantity or None, optional
        Sources may move at most this far from their starting positions
        [arcsec, >= 0] (bounds on ``ra_<i>``, ``dec_<i>`` that have none); keeps a
        faint source from wandering onto a bright neighbour.  None: unbounded.
    maxiter : int, optional
        Iteration limit of L-BFGS-B (>= 1).
    relinearize : float or None, optional
        When a source moves by more than this [px, >= 0] from where the WCS maps
        were linearised and the PSFs evaluated, fit again from there (once).  A
        source that moved beyond an exposure's placement margin (``5 r_eff + 10``
        px outside the image, as a bright star just off the edge can) keeps its
        first placement: it starts the second fit from its first reference
        point.  None: never.
    dtype : {numpy.float64, numpy.float32}, optional
        Arithmetic of the kernels.
    backend : str, optional
        Backend name (default: the active backend).
    progress : bool, optional
        Show a progress bar counting chi2 evaluations.
    fitter : MixtureLSQFitter, optional
        A configured fitter (e.g. ``calc_uncertainties=False``).

    Returns
    -------
    fitted : SceneModel
        The best-fit scene; ``fitted.fit_info`` holds ``chi2``, ``dof``,
        ``param_cov``, ``param_std``, ``exposures`` (see :func:`exposure_table`),
        ``unconstrained`` (see Notes) and the ``objective``.
    catalog : astropy.table.Table
        One row per source (see :func:`scene_catalog`).

    Raises
    ------
    InputError
        For a scene that is not a SceneModel; no exposures; an exposure of a
        band without fluxes, or without WCS or PSF, or without a zero point
        when the scene has one; a source on no exposure; no free parameter;
        ``max_shift`` or ``relinearize`` not a finite number >= 0 (or None),
        ``maxiter`` not an integer >= 1, ``dtype`` not float32/float64, a
        ``background`` string other than ``"fit"`` or a background sequence of
        the wrong length.

    Warns
    -----
    SceneWarning
        Naming the flux parameters no exposure constrains (see Notes); naming
        the parameters along which the chi2 Hessian is not positive definite
        (their errors are NaN); if the second fit of ``relinearize`` fails on
        its input (the first fit is returned).

    Notes
    -----
    The settings' ``fourth_order_threshold`` switches the fourth-order
    pixel-integration factor off abruptly for wide Gaussians: a small jump in
    chi2 and its gradient where a component's size crosses it.  A fit stopped
    on such a jump had the Hessian's differences straddle it (errors several
    times too large, or NaN); where the forward and backward differences of
    the gradient disagree, the Hessian is computed again with the threshold
    set to 0 (the factor on every Gaussian: a smooth model).  Where the
    Hessian is still not positive definite (degenerate parameters, a fit
    stopped away from a minimum) the parameters along which it fails get NaN
    errors, and the others the errors with those held at their best values.

    At ``ellip = 0`` the position angle has no effect, so a Sersic source
    started round (a catalog without shapes starts every source at ``ellip =
    0, theta = 0``) and oriented more than about pi/4 from ``theta`` had the fit
    stop on the bound ``ellip = 0``.  A source whose free ``ellip`` ends within
    1e-3 of its lower bound (with ``theta`` free) is fitted again from ``ellip
    = 0.2`` turned by pi/4, then 3 pi/4, and the refit is kept when its chi2 is
    lower (each orientation lies within pi/4 of one of these starts); a round
    galaxy costs one or two more fits.  Only the warnings of the fit returned
    are issued.

    A free flux that no exposure constrains (no exposure of its band has an
    unmasked pixel within ``5 r_eff + 10`` px of the source: a band without
    exposures, bands with different footprints, a masked region) is held at
    its starting value for the fit, left out of the free parameters (and so of
    ``dof``), and listed in ``fit_info["unconstrained"]``; its catalog error is
    NaN.  A source on masked pixels only, in every exposure, has all its free
    parameters held so.  The returned scene keeps the caller's constraints
    (those parameters are not left fixed).

    Examples
    --------
    See the gallery example "Fitting a galaxy in eight DECam exposures" and
    ``astromix demo``.
    """
    if not isinstance(scene, SceneModel):
        raise InputError(f"fit_scene needs a SceneModel, got {type(scene).__name__}")
    exposures = _exposure_list(exposures)
    max_shift = _limit(max_shift, "max_shift", u.arcsec)
    relinearize = _limit(relinearize, "relinearize", u.pix)
    maxiter = _check_maxiter(maxiter)
    fitter = _KeptWarnings(fitter if fitter is not None else MixtureLSQFitter())
    start = _bound_positions(scene, max_shift)
    held = _hold_unconstrained(start, exposures)
    bar = _progress_bar(progress, "fit_scene", " chi2")
    try:
        kwargs = {"background": background, "dtype": dtype, "backend": backend,
                  "progress": bar}
        fitted = fitter(start, exposures, maxiter=maxiter, **kwargs)
        if relinearize is not None:
            shift = _max_shift_px(fitted, fitted.fit_info["objective"])
            if shift > relinearize:
                log.info("fit_scene: sources moved by up to %.2f px; fitting again from there",
                         shift)
                fitted = _refit(fitter, fitted, exposures, maxiter, kwargs)
        fitted = _unpin_round(fitter, fitted, exposures, maxiter, kwargs)
    finally:
        bar.close()
    _reissue(fitted)
    _wrap_angles(fitted)
    for name in held:                    # the caller's constraints, not ours
        getattr(fitted, name).fixed = False
    info = fitted.fit_info
    info["unconstrained"] = list(held)
    info["objective"].progress = None
    info["exposures"] = exposure_table(info["objective"], len(info["free_parameters"]))
    catalog = scene_catalog(fitted, info.get("param_std", {}))
    return fitted, catalog


def _wrap_angles(scene):
    """Position angles into [0, pi) (the profile is symmetric under theta + pi)."""
    for i, kind in enumerate(scene.source_kinds):
        if kind == "sersic":
            param = getattr(scene, f"theta_{i}")
            if not param.fixed and not param.tied:
                param.value = float(np.mod(param.value, math.pi))


def scene_catalog(scene, errors=None):
    """The sources of a scene as a catalog, one row per source.

    Parameters
    ----------
    scene : SceneModel
    errors : dict, optional
        ``{parameter name: 1-sigma error}`` (``fit_info["param_std"]`` of a fit);
        parameters without one (fixed, tied, not fitted) get NaN.

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``kind`` (``"sersic"`` or ``"star"``), ``ra``, ``dec``
        [deg], ``ra_err``, ``dec_err`` [arcsec, on the sky: ``ra_err`` is
        along RA times cos(dec)], ``flux_<band>``, ``flux_err_<band>`` (catalog
        units: see the scene's ``zeropoint``; with one, also ``mag_<band>``, AB),
        and for Sersic sources ``r_eff``, ``r_eff_err`` [arcsec], ``n``,
        ``n_err``, ``ellip``, ``ellip_err``, ``theta``, ``theta_err`` [rad, east
        of north] (masked for stars).  ``meta["zeropoint"]`` is the scene's.
    """
    errors = dict(errors or {})
    p = scene.parameters
    n = scene.n_sources
    names = scene.param_names

    def err(j):
        return float(errors.get(names[j], np.nan))

    cols = {"id": list(scene.source_names), "kind": list(scene.source_kinds)}
    ra, dec, ra_err, dec_err = (np.empty(n) for _ in range(4))
    for i in range(n):
        idx = scene.source_index(i)
        ra[i], dec[i] = p[idx["ra"]], p[idx["dec"]]
        ra_err[i] = err(idx["ra"]) * 3600.0 * math.cos(math.radians(dec[i]))
        dec_err[i] = err(idx["dec"]) * 3600.0
    table = Table(cols)
    table["ra"] = ra * u.deg
    table["dec"] = dec * u.deg
    table["ra_err"] = ra_err * u.arcsec
    table["dec_err"] = dec_err * u.arcsec
    for b in scene.bands:
        key = "flux" if b is None else f"flux_{b}"
        ekey = "flux_err" if b is None else f"flux_err_{b}"
        f = np.array([p[scene.source_index(i)[("flux", b)]] for i in range(n)])
        table[key] = f
        table[ekey] = [err(scene.source_index(i)[("flux", b)]) for i in range(n)]
        if scene.zeropoint is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                mag = np.where(f > 0, scene.zeropoint - 2.5 * np.log10(np.abs(f)), np.nan)
            table["mag" if b is None else f"mag_{b}"] = mag * u.ABmag
    is_star = np.array([k != "sersic" for k in scene.source_kinds])
    for name, unit in _SHAPE_UNITS.items():
        vals = np.zeros(n)
        errs = np.zeros(n)
        for i in range(n):
            idx = scene.source_index(i)
            if name in idx:
                vals[i], errs[i] = p[idx[name]], err(idx[name])
        table[name] = MaskedColumn(vals, mask=is_star, unit=unit if unit != u.one else None)
        table[f"{name}_err"] = MaskedColumn(errs, mask=is_star,
                                            unit=unit if unit != u.one else None)
    table.meta["zeropoint"] = scene.zeropoint
    return table


def exposure_table(objective, n_free=0):
    """Per exposure of a scene fit: name, band, pixels, chi2, dof and background.

    Parameters
    ----------
    objective : astromix.models.scene.SceneObjective
        From ``fit_info["objective"]`` (its values are those of the last
        evaluation, which :func:`fit_scene` leaves at the best fit).
    n_free : int, optional
        Number of free parameters, shared among exposures in proportion to
        their pixel counts for ``dof``.

    Returns
    -------
    astropy.table.Table
        Columns ``name``, ``band``, ``npix`` (unmasked pixels), ``chi2``,
        ``dof``, ``chi2_dof`` and ``background`` [data units].
    """
    exps = objective.exposures
    dof = objective.dof_per_exposure(n_free)
    return Table({"name": [str(getattr(e, "name", "") or f"exposure_{k}")
                           for k, e in enumerate(exps)],
                  "band": [str(getattr(e, "band", "")) for e in exps],
                  "npix": [int((np.asarray(e.weight) > 0).sum()) for e in exps],
                  "chi2": objective.chi2_per_exposure.copy(),
                  "dof": dof,
                  "chi2_dof": objective.chi2_per_exposure / dof,
                  "background": objective.backgrounds.copy()})


def _is_theta(name):
    """Whether a scene parameter name is a source's position angle (theta_<i>)."""
    return name.startswith("theta_") and name[6:].isdigit()


def sample_scene(scene, exposures, *, priors=None, fit=True, width=8.0, nlive=200, dlogz=0.1,
                 bound="multi", sample="auto", rng=None, maxcall=None, background="fit",
                 max_shift=1.0, maxiter=None, relinearize=0.25, dtype=np.float64,
                 backend=None, progress=True, pool=None):
    """Posterior of a scene's parameters by nested sampling (dynesty): optimise, then sample.

    Parameters
    ----------
    scene : SceneModel
        Starting point (and the values of fixed parameters); not modified.
    exposures : Exposure or iterable of Exposure
    priors : dict, optional
        ``{parameter name: prior}``: a ``(low, high)`` tuple (uniform), a frozen
        :mod:`scipy.stats` distribution or a callable ppf, as for
        :class:`~astromix.fitting.DynestyFitter`.  Free parameters without
        one get a uniform prior ``best +- width * sigma`` around the optimum of
        :func:`fit_scene` (intersected with the parameter's bounds).  A
        position angle ``theta`` gets at most ``best +- pi/2`` [rad] (each
        orientation once, since ``theta + pi`` is the same profile), also when
        its fitted error is not finite (a nearly round source) or, with
        ``fit=False`` and no prior, around its starting value.
    fit : bool or SceneModel, optional
        True (default): run :func:`fit_scene` first (needed for the default
        priors).  A SceneModel returned by :func:`fit_scene` for this
        ``scene`` and these exposures: its optimum and errors are used as
        they are, and the fit is not run again (the ``fit-scene --sample``
        command passes the fit it has written).  False: sample from
        ``scene`` with the given priors and the bounds.
    width : float, optional
        Half-width of the default priors in units of the fitted errors.
    nlive, dlogz, bound, sample, rng, pool
        Passed to :class:`~astromix.fitting.DynestyFitter`.
    maxcall : int, optional
        Stop after about this many likelihood calls.
    background, dtype, backend
        As for :func:`fit_scene`.
    max_shift : float or Quantity or None, optional
        As for :func:`fit_scene`, and it holds in the sampling too: the
        positions' bounds (``start +- max_shift`` [arcsec] around the starting
        positions of ``scene``) cut every prior, default or given.  None:
        unbounded.
    maxiter, relinearize
        As for :func:`fit_scene` (used by the fit).
    progress : bool, optional
        Show progress (fit bar, then dynesty's line).

    Returns
    -------
    Posterior
        With ``samples``, ``weights``, ``logz``, ``summary()``, ``corner()``;
        plus ``catalog`` (posterior medians and standard deviations, in the
        layout of :func:`scene_catalog`), ``scene`` (the maximum-likelihood
        sample) and ``fit`` (the optimised scene, if ``fit``).

    Raises
    ------
    InputError
        As :func:`fit_scene`; for a free parameter other than ``theta``
        without a prior when ``fit`` is False and its bounds are not finite;
        and for a ``fit``
        scene that is not a :func:`fit_scene` result for ``scene`` (no
        ``fit_info``, other parameters, or a position outside ``max_shift``
        of ``scene``'s).
    ImportError
        Without dynesty.

    Warns
    -----
    SceneWarning
        As :func:`fit_scene`: fluxes no exposure constrains are held at their
        starting values (not sampled, unless ``priors`` names them), with NaN
        errors in ``catalog``.
    """
    if not isinstance(scene, SceneModel):
        raise InputError(f"sample_scene needs a SceneModel, got {type(scene).__name__}")
    exposures = _exposure_list(exposures)
    max_shift = _limit(max_shift, "max_shift", u.arcsec)
    priors = dict(priors or {})
    fitted = None
    if isinstance(fit, SceneModel):
        fitted = fit
        start = _given_fit(scene, fitted, max_shift)
    elif fit:
        fitted, _ = fit_scene(scene, exposures, background=background, max_shift=max_shift,
                              maxiter=maxiter, relinearize=relinearize, dtype=dtype,
                              backend=backend, progress=progress)
        start = fitted.copy()          # with the position bounds of max_shift
    if fitted is not None:
        held = [n for n in fitted.fit_info["unconstrained"] if n not in priors]
        for name in held:
            getattr(start, name).fixed = True
        std = fitted.fit_info.get("param_std", {})
        for name in fitted.fit_info["free_parameters"]:
            if name in priors:
                continue
            s = std.get(name)
            v = float(getattr(fitted, name).value)
            if _is_theta(name):
                # every orientation once: theta and theta + pi are the same profile
                half = width * s if s is not None and np.isfinite(s) and s > 0 else math.inf
                half = min(half, 0.5 * math.pi)
                priors[name] = (v - half, v + half)
                continue
            if not (s is not None and np.isfinite(s) and s > 0):
                continue
            priors[name] = (v - width * s, v + width * s)
    else:
        start = _bound_positions(scene, max_shift)
        held = _hold_unconstrained(start, exposures, keep=priors)
        for name in start.param_names:
            par = getattr(start, name)
            if (_is_theta(name) and name not in priors and not par.fixed and not par.tied
                    and par.bounds == (None, None)):
                v = float(par.value)
                priors[name] = (v - 0.5 * math.pi, v + 0.5 * math.pi)
    sampler = DynestyFitter(nlive=nlive, bound=bound, sample=sample, dlogz=dlogz, rng=rng,
                            progress=progress, pool=pool)
    best = sampler(start, exposures, priors=priors, maxcall=maxcall, background=background,
                   dtype=dtype, backend=backend)
    post = sampler.fit_info["posterior"]
    for name in held:                    # the caller's constraints, not ours
        getattr(best, name).fixed = False
    post.scene = best
    post.fit = fitted
    summary = post.summary()
    median = best.copy()
    errors = {}
    for row in summary:
        setattr(median, row["name"], row["median"])
        errors[row["name"]] = float(row["std"])
    post.catalog = scene_catalog(median, errors)
    return post
