r"""Scenes of galaxies and stars on the sky, rendered into many exposures at once.

A :class:`SceneModel` holds sources described on the sky (:class:`SersicSource`,
:class:`StarSource`): per-band fluxes, (ra, dec) [deg], and for galaxies the
half-light radius ``r_eff`` [arcsec], Sersic index ``n``, ellipticity ``ellip``
and position angle ``theta`` [rad, east of north].  In each exposure a source
becomes a Gaussian mixture in that exposure's pixels (Hogg & Lang 2013;
forcepho, Johnson et al.):

1. the sky-plane Sersic mixture (:class:`~astromix.models.sersic_table.SersicMixtureTable`),
   in arcsec offsets (north, east) from a reference point;
2. mapped to pixels with the local affine map of the exposure's full WCS at the
   source (the 2x2 Jacobian from finite differences of ``world_to_pixel``, so
   TPV, SIP and gwcs distortions are included, and the pixel position of the
   reference point);
3. convolved with the exposure's PSF mixture at the source;
4. scaled from catalog flux units to data units by the exposure's zero point.

All sources of an exposure are one mixture, rendered and differentiated by the
backend kernel in one call; the gradient with respect to every component is
chained back to the source parameters analytically.
"""

import math
import warnings

import numpy as np
from astropy import units as u
from astropy.modeling import FittableModel, Parameter

from ..backends import _common, get_backend
from ..errors import InputError
from ..mixtures import GaussianMixture
from ..settings import AccuracySettings, get_default_settings
from ._base import evaluate_mixture
from ._sersic_build import exposure_components, shape_terms

__all__ = ["SersicSource", "StarSource", "SceneModel", "SceneObjective", "SceneWarning",
           "local_affine"]

ARCSEC = 1.0 / 3600.0
SERSIC_PARAMETERS = ("ra", "dec", "r_eff", "n", "ellip", "theta")
STAR_PARAMETERS = ("ra", "dec")
_BOUNDS = {"r_eff": (1e-3, None), "n": (0.3, 8.0), "ellip": (0.0, 0.95)}


class SceneWarning(UserWarning):
    """A scene or exposure was used in a documented but possibly unintended way."""


def _value(x, unit, what):
    """A float from a number or a Quantity convertible to ``unit``."""
    if isinstance(x, u.Quantity):
        try:
            v = float(x.to_value(unit))
        except u.UnitsError:
            raise InputError(f"{what} must be in units of {unit}, got {x.unit}") from None
    else:
        try:
            v = float(x)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be finite, got {v}")
    return v


def _exposure_list(exposures):
    """A list of exposures from one exposure, a list or tuple, or any other iterable.

    A generator or an object array of exposures is materialised (it had been
    taken for one exposure, which gave a misleading "has band None" error).
    """
    if isinstance(exposures, list | tuple):
        return list(exposures)
    if hasattr(exposures, "weight") and hasattr(exposures, "data"):      # one exposure
        return [exposures]
    if isinstance(exposures, np.ndarray):
        return list(exposures.ravel())
    if hasattr(exposures, "__iter__") and not isinstance(exposures, str | bytes):
        return list(exposures)
    return [exposures]


def _kernel_dtype(dtype):
    """``numpy.dtype`` float32 or float64; InputError for anything else."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}")
    return dt


def _background_list(background, n):
    """Per exposure: None (no background), ``"fit"`` or a finite known value [data units].

    ``background`` is ``"fit"``, None, a number, or a sequence or array of n of
    those; any other string, a wrong length or a non-finite value is an InputError.
    """
    def one(b, what):
        if b is None:
            return None
        if isinstance(b, str):
            if b == "fit":
                return "fit"
            raise InputError(f"{what} must be 'fit', None or a number, got {b!r}")
        try:
            v = float(b)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be 'fit', None or a number, got {b!r}") from None
        if not math.isfinite(v):
            raise InputError(f"{what} must be finite, got {v}")
        return v

    if background is None or isinstance(background, str) or np.ndim(background) == 0:
        return [one(background, "background")] * n
    try:
        bgs = list(np.ravel(background) if isinstance(background, np.ndarray) else background)
    except TypeError:
        raise InputError(f"background must be 'fit', None, a number or a sequence, got "
                         f"{type(background).__name__}") from None
    if len(bgs) != n:
        raise InputError(f"{len(bgs)} backgrounds for {n} exposures")
    return [one(b, f"background[{k}]") for k, b in enumerate(bgs)]


def _fluxes(flux, what):
    if isinstance(flux, dict):
        if not flux:
            raise InputError(f"{what}: flux must name at least one band")
        return {str(b): _value(v, u.one, f"{what} flux[{b!r}]") for b, v in flux.items()}
    return {None: _value(flux, u.one, f"{what} flux")}


class _SkySource:
    kind = None
    shape_names = ()

    def __init__(self, ra, dec, flux, *, name=None):
        self.ra = _value(ra, u.deg, "ra")
        self.dec = _value(dec, u.deg, "dec")
        if not -90 <= self.dec <= 90:
            raise InputError(f"dec must be within [-90, 90] deg, got {self.dec}")
        self.flux = _fluxes(flux, type(self).__name__)
        self.name = None if name is None else str(name)

    def __repr__(self):
        shape = "".join(f", {k}={getattr(self, k):.4g}" for k in self.shape_names)
        return (f"{type(self).__name__}(ra={self.ra:.6f}, dec={self.dec:.6f}, "
                f"flux={self.flux}{shape})")


class SersicSource(_SkySource):
    """A Sersic galaxy described on the sky.

    Parameters
    ----------
    ra, dec : float or Quantity
        Centre [deg] (ICRS, or whatever frame the exposures' WCS use).
    flux : float or dict
        Total flux per band ``{band: flux}`` in the scene's catalog units (see
        ``zeropoint`` of :class:`SceneModel`), or one number for every band.
    r_eff : float or Quantity, optional
        Half-light radius along the major axis [arcsec], > 0.
    n : float, optional
        Sersic index, 0.3 to 8.
    ellip : float, optional
        Ellipticity 1 - b/a, in [0, 0.95].
    theta : float or Quantity, optional
        Position angle of the major axis, east of north [rad].
    name : str, optional
        Identifier used in catalogs.

    Raises
    ------
    InputError
        On non-finite values, a declination outside [-90, 90] or a shape outside
        the ranges above.
    """

    kind = "sersic"
    shape_names = ("r_eff", "n", "ellip", "theta")

    def __init__(self, ra, dec, flux, r_eff=0.5, n=1.0, ellip=0.0, theta=0.0, *, name=None):
        super().__init__(ra, dec, flux, name=name)
        self.r_eff = _value(r_eff, u.arcsec, "r_eff")
        self.n = _value(n, u.one, "n")
        self.ellip = _value(ellip, u.one, "ellip")
        self.theta = _value(theta, u.rad, "theta")
        if self.r_eff <= 0:
            raise InputError(f"r_eff must be > 0 arcsec, got {self.r_eff}")
        if not 0.3 <= self.n <= 8.0:
            raise InputError(f"n must be within [0.3, 8], got {self.n}")
        if not 0.0 <= self.ellip <= 0.95:
            raise InputError(f"ellip must be within [0, 0.95], got {self.ellip}")


class StarSource(_SkySource):
    """A point source described on the sky.

    Parameters
    ----------
    ra, dec : float or Quantity
        Position [deg].
    flux : float or dict
        Total flux per band ``{band: flux}`` (catalog units), or one number.
    name : str, optional

    Raises
    ------
    InputError
        On non-finite values or a declination outside [-90, 90].
    """

    kind = "star"


def _world_to_pixel_unbounded(wcs, ra, dec):
    """(x, y) [px] of sky positions through ``wcs``, outside a gwcs bounding box too.

    A gwcs's ``world_to_pixel_values`` gives NaN outside its bounding box (a
    JWST product's detector): the scene needs positions there as well, for the
    central differences of a source within ``step`` of the edge and for a
    neighbour whose light reaches the image from outside it (a FITS WCS gives
    them).  gwcs's ``invert(..., with_bounding_box=False)`` is its inverse
    transform without that cut.
    """
    if getattr(wcs, "bounding_box", None) is not None and callable(getattr(wcs, "invert", None)):
        return wcs.invert(ra, dec, with_bounding_box=False)
    return wcs.world_to_pixel_values(ra, dec)


def local_affine(wcs, ra, dec, step=0.5):
    """Pixel position and local Jacobian of a WCS at a sky position.

    Parameters
    ----------
    wcs : astropy.wcs.WCS or gwcs.WCS
        Any celestial WCS with the shared (APE 14) ``world_to_pixel_values``.
    ra, dec : float
        Position [deg].
    step : float, optional
        Half-step of the central differences [arcsec].

    Returns
    -------
    pixel : ndarray, shape (2,)
        (x, y) of the position [px, 0-based].  A gwcs is inverted without its
        bounding box, so positions near or beyond the detector's edge are
        given (gwcs's ``world_to_pixel_values`` makes them NaN).
    jacobian : ndarray, shape (2, 2)
        ``d(x, y) / d(north, east)`` [px / arcsec]: column 0 is the change of
        pixel position per arcsec towards north, column 1 towards east, from the
        full WCS (distortions included).

    Raises
    ------
    InputError
        If the WCS gives non-finite pixel positions there.
    """
    cosd = math.cos(math.radians(dec))
    d = step * ARCSEC
    ras = np.array([ra, ra, ra, ra + d / cosd, ra - d / cosd])
    decs = np.array([dec, dec + d, dec - d, dec, dec])
    x, y = _world_to_pixel_unbounded(wcs, ras, decs)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError(f"the WCS gives no pixel position at (ra, dec) = ({ra}, {dec})")
    jac = np.array([[x[1] - x[2], x[3] - x[4]], [y[1] - y[2], y[3] - y[4]]]) / (2 * step)
    return np.array([x[0], y[0]]), jac


class _Placement:
    """One source in one exposure: reference point, local WCS map, PSF and flux scale."""

    __slots__ = ("source", "ra_ref", "dec_ref", "cosd", "pixel", "jac", "psf_amp",
                 "psf_mean", "psf_cov", "flux_scale", "band_index", "sl")

    def __init__(self, source, ra_ref, dec_ref, pixel, jac, psf, flux_scale, band_index):
        self.source = source
        self.ra_ref, self.dec_ref = ra_ref, dec_ref
        self.cosd = math.cos(math.radians(dec_ref))
        self.pixel, self.jac = pixel, jac
        self.psf_amp = np.asarray(psf.amp, dtype=float)
        self.psf_mean = np.asarray(psf.mean, dtype=float)
        self.psf_cov = np.asarray(psf.cov, dtype=float)
        self.flux_scale = flux_scale
        self.band_index = band_index
        self.sl = None


class SceneModel(FittableModel):
    r"""Galaxies and stars on the sky, rendered into exposures with their WCS and PSF.

    An astropy model whose parameters are those of all the sources, named
    ``<name>_<i>`` for source ``i`` (0-based, catalog order): ``flux_<band>_<i>``
    for each band, ``ra_<i>``, ``dec_<i>`` [deg], and for Sersic sources
    ``r_eff_<i>`` [arcsec], ``n_<i>``, ``ellip_<i>``, ``theta_<i>`` [rad, east of
    north].  Fix, tie or bound them as with any astropy model
    (``scene.n_0.fixed = True``).

    Parameters
    ----------
    sources : sequence of SersicSource or StarSource
        The catalog; at least one source.
    bands : sequence of str, or str, optional
        The bands with a flux parameter per source (one string: one band); by
        default the union of the bands named by the sources (sources giving
        one number for flux get it in every band).
    zeropoint : float, optional
        AB magnitude of one catalog flux unit (22.5 for nanomaggies, 23.9 for
        microjansky).  With it, a source of flux F gives ``F *
        exposure.flux_scale(zeropoint)`` data units in an exposure, and every
        exposure it is rendered in or fitted to must have a zero point
        (InputError otherwise); without it (None), fluxes are in the
        exposures' data units.
    settings : AccuracySettings, optional
        Culling and pixel integration for rendering.
    **kwargs
        Passed to :class:`astropy.modeling.Model`.

    Raises
    ------
    InputError
        With no sources, a source of an unknown type, a source without a
        flux for one of ``bands``, or a ``zeropoint`` that is not a finite
        number.

    Notes
    -----
    Evaluating the model at pixel coordinates needs an exposure:
    ``scene.in_exposure(exposure)(x, y)`` gives the pixel-integrated,
    PSF-convolved image of the scene in that exposure's pixels (without
    background).  Fitting uses :meth:`chi2`, which renders every exposure with
    the backend kernels; see :func:`astromix.fitting.fit_scene`.

    Examples
    --------
    >>> from astromix.models.scene import SceneModel, SersicSource, StarSource
    >>> scene = SceneModel([SersicSource(150.1, 2.2, {"g": 10.0, "r": 20.0}, r_eff=0.8, n=2),
    ...                     StarSource(150.1002, 2.2001, {"g": 3.0, "r": 4.0})])
    >>> scene.param_names[:8]
    ('flux_g_0', 'flux_r_0', 'ra_0', 'dec_0', 'r_eff_0', 'n_0', 'ellip_0', 'theta_0')
    >>> scene.n_sources, scene.bands
    (2, ('g', 'r'))
    """

    n_inputs = 2
    n_outputs = 1
    _param_names = ()

    def __init__(self, sources, *, bands=None, zeropoint=None, settings=None, **kwargs):
        sources = list(sources)
        if not sources:
            raise InputError("the scene has no sources (empty catalog)")
        for s in sources:
            if not isinstance(s, SersicSource | StarSource):
                raise InputError(f"scene sources must be SersicSource or StarSource, got "
                                 f"{type(s).__name__}")
        if bands is None:
            named = [b for s in sources for b in s.flux if b is not None]
            bands = tuple(dict.fromkeys(named)) or (None,)
        if isinstance(bands, str):       # one band's name, not its letters
            bands = (bands,)
        bands = tuple(None if b is None else str(b) for b in bands)
        if len(set(bands)) != len(bands):
            raise InputError(f"bands must be distinct, got {bands}")
        if settings is not None and not isinstance(settings, AccuracySettings):
            raise InputError("settings must be an AccuracySettings instance")
        self._settings = settings
        self._bands = bands
        self._zeropoint = None if zeropoint is None else _value(zeropoint, u.one, "zeropoint")
        self._kinds = tuple(s.kind for s in sources)
        self._source_names = tuple(s.name if s.name is not None else str(i)
                                   for i, s in enumerate(sources))
        names, values, index = [], {}, []
        for i, s in enumerate(sources):
            idx = {}
            for b in bands:
                if b in s.flux:
                    f = s.flux[b]
                elif None in s.flux:
                    f = s.flux[None]
                else:
                    raise InputError(f"source {i} ({self._source_names[i]}) has no flux in band "
                                     f"{b!r}; it has {sorted(k for k in s.flux if k)}")
                name = f"flux_{b}_{i}" if b is not None else f"flux_{i}"
                idx[("flux", b)] = len(names)
                names.append(name)
                values[name] = f
            for p in (SERSIC_PARAMETERS if s.kind == "sersic" else STAR_PARAMETERS):
                idx[p] = len(names)
                names.append(f"{p}_{i}")
                values[names[-1]] = getattr(s, p)
            index.append(idx)
        self._index = index
        self._r_eff_index = np.array([i["r_eff"] for i in index if "r_eff" in i], dtype=np.intp)
        self._ellip_index = np.array([i["ellip"] for i in index if "ellip" in i], dtype=np.intp)
        self._param_names = tuple(names)
        for name in names:
            base = name.rsplit("_", 1)[0]
            param = Parameter(name, default=0.0, bounds=_BOUNDS.get(base, (None, None)))
            param.model = self
            self.__dict__[name] = param
        self._exposure = None
        super().__init__(**{**values, **kwargs})

    @classmethod
    def from_catalog(cls, catalog, *, bands=None, zeropoint=None, settings=None):
        """A scene from a catalog table, one row per source.

        Parameters
        ----------
        catalog : astropy.table.Table or str
            A table or the path of one (any format astropy reads: ECSV, FITS,
            ...).  Columns: ``ra``, ``dec`` [deg] (required); ``kind``
            (``"sersic"`` or ``"star"``, default sersic); ``flux_<band>`` per band
            or ``flux`` for every band (default 1); ``r_eff`` [arcsec] (default
            0.5), ``n`` (default 1), ``ellip`` (default 0), ``theta`` [rad, east
            of north] (default 0); ``id`` (optional).  Columns with units are
            converted (deg, arcsec, rad).  The catalog of :func:`fit_scene` is
            valid input (masked shape columns of stars are ignored).
        bands : sequence of str, optional
            Bands of the scene (default: those of the ``flux_<band>`` columns).
        zeropoint : float, optional
            AB magnitude of one catalog flux unit; default
            ``catalog.meta["zeropoint"]`` when present.
        settings : AccuracySettings, optional

        Returns
        -------
        SceneModel

        Raises
        ------
        InputError
            For an unreadable file, an empty catalog, missing ``ra``/``dec``
            columns, or bad values (the message names the row).
        """
        from astropy.table import Table

        path = None
        if not isinstance(catalog, Table):
            path = str(catalog)
            try:
                catalog = Table.read(path)
            except Exception as exc:
                raise InputError(f"cannot read catalog {path!r}: {exc}") from None
        where = f"catalog {path!r}" if path else "catalog"
        if len(catalog) == 0:
            raise InputError(f"{where} has no rows")
        missing = [c for c in ("ra", "dec") if c not in catalog.colnames]
        if missing:
            raise InputError(f"{where} lacks column(s) {missing}; it has {catalog.colnames}")
        flux_cols = {c[5:]: c for c in catalog.colnames
                     if c.startswith("flux_") and not c.startswith("flux_err")}
        if bands is None and flux_cols:
            bands = tuple(flux_cols)
        if zeropoint is None:
            zeropoint = catalog.meta.get("zeropoint")

        def get(row, name, unit, default):
            if name not in catalog.colnames:
                return default
            v = row[name]
            if np.ma.is_masked(v):
                return default
            col_unit = catalog[name].unit
            if col_unit is not None and unit is not None:
                return (float(v) * col_unit).to_value(unit)
            return float(v)

        sources = []
        for k, row in enumerate(catalog):
            try:
                ra, dec = get(row, "ra", u.deg, None), get(row, "dec", u.deg, None)
                if bands is None:
                    flux = get(row, "flux", None, 1.0)
                else:
                    flux = {b: get(row, flux_cols.get(b, "flux"), None, 1.0) for b in bands}
                kind = str(row["kind"]).strip().lower() if "kind" in catalog.colnames \
                    else "sersic"
                name = str(row["id"]) if "id" in catalog.colnames else None
                if kind in ("star", "point", "psf"):
                    sources.append(StarSource(ra, dec, flux, name=name))
                elif kind in ("sersic", "galaxy", "gal"):
                    sources.append(SersicSource(
                        ra, dec, flux, r_eff=get(row, "r_eff", u.arcsec, 0.5),
                        n=get(row, "n", None, 1.0), ellip=get(row, "ellip", None, 0.0),
                        theta=get(row, "theta", u.rad, 0.0), name=name))
                else:
                    raise InputError(f"unknown kind {kind!r} (use 'sersic' or 'star')")
            except (InputError, TypeError, ValueError) as exc:
                raise InputError(f"{where}, row {k}: {exc}") from None
        return cls(sources, bands=bands, zeropoint=zeropoint, settings=settings)

    # -- description -------------------------------------------------------------------
    @property
    def param_names(self):
        """Names of the parameters, source by source (see the class docstring)."""
        return self._param_names

    @property
    def inputs(self):
        return ("x", "y")

    @inputs.setter
    def inputs(self, value):
        pass

    @property
    def outputs(self):
        return ("z",)

    @outputs.setter
    def outputs(self, value):
        pass

    @property
    def bands(self):
        """The bands with a flux parameter (tuple of str; ``(None,)`` for one unnamed band)."""
        return self._bands

    @property
    def zeropoint(self):
        """AB magnitude of one catalog flux unit, or None (fluxes in data units)."""
        return self._zeropoint

    @property
    def settings(self):
        """The AccuracySettings used for rendering."""
        return self._settings if self._settings is not None else get_default_settings()

    @property
    def n_sources(self):
        """Number of sources."""
        return len(self._kinds)

    @property
    def source_kinds(self):
        """``"sersic"`` or ``"star"`` per source."""
        return self._kinds

    @property
    def source_names(self):
        """Identifier of each source (its ``name``, else its index)."""
        return self._source_names

    def source_index(self, i):
        """``{parameter: position in self.parameters}`` of source ``i``.

        Keys are ``("flux", band)``, ``"ra"``, ``"dec"`` and for Sersic sources
        ``"r_eff"``, ``"n"``, ``"ellip"``, ``"theta"``.

        Parameters
        ----------
        i : int
            Index of the source (0-based, catalog order).

        Returns
        -------
        dict
            A new dict mapping each key above to the int index of that
            parameter in :attr:`parameters` and :attr:`param_names`
            (``band`` is None for the scene's one unnamed band).
        """
        return dict(self._index[i])

    @property
    def sources(self):
        """The sources with the current parameter values (new objects)."""
        p = self.parameters
        out = []
        for i, kind in enumerate(self._kinds):
            idx = self._index[i]
            flux = {b: float(p[idx[("flux", b)]]) for b in self._bands}
            if None in flux:
                flux = flux[None]
            if kind == "sersic":
                out.append(SersicSource(p[idx["ra"]], p[idx["dec"]], flux,
                                        *(p[idx[k]] for k in ("r_eff", "n", "ellip", "theta")),
                                        name=self._source_names[i]))
            else:
                out.append(StarSource(p[idx["ra"]], p[idx["dec"]], flux,
                                      name=self._source_names[i]))
        return out

    def copy(self):
        """A deep copy (parameters, constraints, bands, zeropoint, bound exposure).

        Returns
        -------
        SceneModel
            The copy (astropy's :meth:`~astropy.modeling.Model.copy`); the bound
            exposure, if any, is shared with this model, not copied.
        """
        new = super().copy()
        new._exposure = self._exposure
        return new

    # -- one exposure ------------------------------------------------------------------
    def in_exposure(self, exposure):
        """A copy bound to ``exposure``: evaluating it gives the scene in its pixels.

        Parameters
        ----------
        exposure : astromix.data.Exposure
            With a celestial WCS and a PSF.

        Returns
        -------
        SceneModel
        """
        new = self.copy()
        new._exposure = exposure
        return new

    @property
    def exposure(self):
        """The exposure bound by :meth:`in_exposure` (None when unbound)."""
        return self._exposure

    def evaluate(self, x, y, *params):
        """Pixel-integrated scene in the bound exposure at pixel coordinates ``x, y``.

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px] in the bound exposure (0-based pixel
            centres), any shapes that broadcast together.
        *params : float or array
            The parameter values in :attr:`param_names` order (fluxes in
            catalog units, ra and dec [deg], r_eff [arcsec], n, ellip, theta
            [rad, east of north]); each is reduced to its first element.

        Returns
        -------
        ndarray
            The PSF-convolved, pixel-integrated image of all the sources,
            float64, of the broadcast shape of ``x, y``, in the exposure's data
            units (without background).

        Raises
        ------
        InputError
            If no exposure is bound (see :meth:`in_exposure`), or as
            :meth:`mixture` (the exposure's band has no flux parameter, it
            lacks a WCS or a PSF, or a Sersic index lies outside the table).
        """
        if self._exposure is None:
            raise InputError("evaluating a SceneModel needs an exposure: use "
                             "scene.in_exposure(exposure)(x, y) or scene.render(exposure)")
        p = np.array([float(np.ravel(v)[0]) for v in params])
        mix = self.mixture(self._exposure, parameters=p)
        return evaluate_mixture(mix, x, y, self.settings)

    def placements(self, exposure, parameters=None, *, psf_cache=None):
        """Per source, its local geometry in ``exposure`` (None where it is off the image).

        Parameters
        ----------
        exposure : astromix.data.Exposure
        parameters : ndarray, optional
            Parameter values (default: the current ones); the reference points
            are the sources' positions there.
        psf_cache : dict, optional
            Reused PSF mixtures keyed by (id(exposure), source index).

        Returns
        -------
        list
            One entry per source (catalog order): None when the source's
            pixel position lies more than ``5 r_eff + 10`` px (10 px for a
            star) outside the image, else an internal placement record (the
            reference (ra, dec), its pixel position, the local WCS Jacobian
            [px / arcsec], the PSF mixture there, the flux scale and the band
            index).

        Raises
        ------
        InputError
            If a parameter value is not finite, an ``r_eff`` is not > 0 or an
            ``ellip`` lies outside [0, 1); if the exposure's band has no flux
            parameter in the scene (unless
            the scene has one unnamed band), the exposure has no WCS, the WCS
            gives no pixel position at a source, or a source on the image has
            no PSF there (:meth:`~astromix.data.Exposure.psf_at`); if the
            scene has a ``zeropoint`` and the exposure none (its data units
            could not be converted to the scene's catalog units; the scale had
            silently been taken as 1).
        """
        p = self.parameters if parameters is None else parameters
        b_index = self._band_index(exposure)
        scale = 1.0
        if self._zeropoint is not None:
            if getattr(exposure, "zeropoint", None) is None:
                raise InputError(
                    f"exposure {getattr(exposure, 'name', '?')!r} has no zero point, but the "
                    f"scene's fluxes are in catalog units (zeropoint {self._zeropoint}); give "
                    "the exposure its zero point (Exposure(..., zeropoint=...); "
                    "--exposure-zeropoints of 'astromix fit-scene') or use a scene without "
                    "a zeropoint (fluxes in data units)")
            scale = exposure.flux_scale(self._zeropoint)
        out = []
        for i, loc in enumerate(self._locate(exposure, p)):
            if loc is None:
                out.append(None)
                continue
            pixel, jac, _ = loc
            idx = self._index[i]
            ra, dec = float(p[idx["ra"]]), float(p[idx["dec"]])
            key = (id(exposure), i)
            psf = None if psf_cache is None else psf_cache.get(key)
            if psf is None:
                psf = exposure.psf_at(pixel[0], pixel[1])
                psf = getattr(psf, "mixture", psf)
                if psf_cache is not None:
                    psf_cache[key] = psf
            out.append(_Placement(i, ra, dec, pixel, jac, psf, scale, b_index))
        return out

    def _band_index(self, exposure):
        """Index in :attr:`bands` of the exposure's band (InputError if the scene has none)."""
        band = getattr(exposure, "band", None)
        if band not in self._bands:
            if self._bands == (None,):
                band = None
            else:
                raise InputError(f"exposure {getattr(exposure, 'name', '?')!r} has band "
                                 f"{band!r}; the scene has fluxes in {list(self._bands)}")
        return self._bands.index(band)

    def _locate(self, exposure, p):
        """Per source, ``(pixel, jacobian, extent [px])`` in ``exposure``, or None when its
        pixel position lies more than ``extent = 5 r_eff + 10`` px (10 px for a star)
        outside the image.  InputError as :meth:`placements` (values, WCS)."""
        self._check_values(np.asarray(p, dtype=float))
        wcs = getattr(exposure, "wcs", None)
        if wcs is None:
            raise InputError(f"exposure {getattr(exposure, 'name', '?')!r} has no WCS")
        ny, nx = exposure.data.shape
        out = []
        for i in range(self.n_sources):
            idx = self._index[i]
            ra, dec = float(p[idx["ra"]]), float(p[idx["dec"]])
            pixel, jac = local_affine(wcs, ra, dec)
            pscale = math.sqrt(abs(np.linalg.det(jac)))          # px per arcsec
            extent = 5.0 * (p[idx["r_eff"]] * pscale if "r_eff" in idx else 0.0) + 10.0
            if not (-extent <= pixel[0] <= nx - 1 + extent
                    and -extent <= pixel[1] <= ny - 1 + extent):
                out.append(None)
                continue
            out.append((pixel, jac, extent))
        return out

    def _flux_coverage(self, exposures, parameters=None):
        """Which flux parameters the exposures constrain at all.

        A source's flux in a band is constrained when an exposure of that band
        has an unmasked pixel (weight > 0) within ``5 r_eff + 10`` px (10 px for
        a star) of the source: the region :meth:`placements` keeps.  A source
        off every exposure of a band (bands with different footprints), or on
        masked pixels only, leaves that flux without information.

        Parameters
        ----------
        exposures : Exposure or iterable of Exposure
        parameters : ndarray, optional
            Parameter values (default: the current ones).

        Returns
        -------
        covered : ndarray of bool, shape (n_sources, n_bands)
            True where some exposure constrains ``flux_<band>_<i>`` (bands in
            the order of :attr:`bands`).
        placed : ndarray of bool, shape (n_sources,)
            True where the source lies on (or near) some exposure, masked or not.

        Raises
        ------
        InputError
            As :meth:`placements` (band, WCS, parameter values); no PSF is evaluated.
        """
        p = self.parameters if parameters is None else np.asarray(parameters, dtype=float)
        covered = np.zeros((self.n_sources, len(self._bands)), dtype=bool)
        placed = np.zeros(self.n_sources, dtype=bool)
        for e in _exposure_list(exposures):
            b = self._band_index(e)
            good = np.asarray(e.weight) > 0
            ny, nx = good.shape
            for i, loc in enumerate(self._locate(e, p)):
                if loc is None:
                    continue
                placed[i] = True
                (x, y), _, ext = loc
                x0, x1 = max(math.floor(x - ext), 0), min(math.ceil(x + ext) + 1, nx)
                y0, y1 = max(math.floor(y - ext), 0), min(math.ceil(y + ext) + 1, ny)
                if x0 < x1 and y0 < y1 and good[y0:y1, x0:x1].any():
                    covered[i, b] = True
        return covered, placed

    def _check_values(self, p):
        """Refuse parameter values no source can have (InputError, naming them).

        Non-finite values, ``r_eff <= 0`` and ``ellip`` outside [0, 1): values set
        after construction (by hand, or by an unbounded optimiser) had been
        rendered silently (a source dropped, an empty or NaN image, ``ellip =
        1.5`` drawn as 0.5).  The Sersic index is checked against the table
        where it is used.
        """
        r_eff, ellip = p[self._r_eff_index], p[self._ellip_index]
        if (np.isfinite(p).all() and (r_eff > 0).all() and (ellip >= 0).all()
                and (ellip < 1).all()):
            return
        names = self._param_names
        bad = [f"{names[k]} = {p[k]}" for k in range(len(p)) if not np.isfinite(p[k])]
        bad += [f"{names[k]} = {p[k]}" for k in self._r_eff_index if np.isfinite(p[k])
                and not p[k] > 0]
        bad += [f"{names[k]} = {p[k]}" for k in self._ellip_index if np.isfinite(p[k])
                and not 0 <= p[k] < 1]
        raise InputError(f"SceneModel: invalid parameter values ({', '.join(bad)}); values "
                         "must be finite, r_eff > 0 and 0 <= ellip < 1")

    def _source_terms(self, p):
        """The table's cubics around each Sersic source's n and its shape terms.

        Returns ``(coeffs (N, 4, 2K), t_n (N,), shapes (N, 9))`` for the N
        sources (rows of point sources are zero); see :func:`exposure_components`.
        Raises InputError on invalid values (:meth:`_check_values`).
        """
        self._check_values(p)
        from .sersic_table import SersicMixtureTable
        table = SersicMixtureTable.load()
        coeffs = t_n = None
        shapes = np.zeros((self.n_sources, 9))
        for i, kind in enumerate(self._kinds):
            if kind != "sersic":
                continue
            idx = self._index[i]
            c, t = table.interval(p[idx["n"]])
            if coeffs is None:
                coeffs = np.zeros((self.n_sources,) + c.shape)
                t_n = np.zeros(self.n_sources)
            coeffs[i] = c
            t_n[i] = t
            shapes[i] = shape_terms(p[idx["ellip"]], p[idx["theta"]])
        if coeffs is None:
            coeffs, t_n = np.zeros((self.n_sources, 4, 2)), np.zeros(self.n_sources)
        return coeffs, t_n, shapes

    def _pack(self, placements):
        """The per-source constants of :func:`exposure_components` for a set of placements."""
        placed = [pl for pl in placements if pl is not None]
        q = len(placed)
        idx = [self._index[pl.source] for pl in placed]
        sersic = np.array([self._kinds[pl.source] == "sersic" for pl in placed], dtype=bool)
        psf_start = np.zeros(q + 1, dtype=np.int64)
        psf_start[1:] = np.cumsum([pl.psf_amp.size for pl in placed])

        def cat(name, shape):
            return (np.concatenate([getattr(pl, name) for pl in placed]) if placed
                    else np.zeros(shape))

        return (sersic, np.array([pl.source for pl in placed], dtype=np.int64),
                np.array([ix[("flux", self._bands[pl.band_index])]
                          for ix, pl in zip(idx, placed)], dtype=np.int64),
                np.array([pl.flux_scale for pl in placed], dtype=float),
                np.array([ix["ra"] for ix in idx], dtype=np.int64),
                np.array([ix["dec"] for ix in idx], dtype=np.int64),
                np.array([ix.get("r_eff", 0) for ix in idx], dtype=np.int64),
                np.array([pl.ra_ref for pl in placed], dtype=float),
                np.array([pl.dec_ref for pl in placed], dtype=float),
                np.array([pl.cosd for pl in placed], dtype=float),
                np.array([pl.pixel for pl in placed], dtype=float).reshape(q, 2),
                np.array([pl.jac for pl in placed], dtype=float).reshape(q, 2, 2),
                psf_start, cat("psf_amp", (0,)), cat("psf_mean", (0, 2)),
                cat("psf_cov", (0, 2, 2)))

    def _component_arrays(self, p, placements, terms=None, derivatives=False, pack=None):
        """amp (J,), mean (J, 2), cov (J, 2, 2) of all placed sources; sets .sl.

        With ``derivatives``, also d (amp, x, y, C_xx, C_xy, C_yy) / d (flux,
        x, y, r_eff, n, ellip, theta) per component, (J, 7, 6), in the
        exposure's pixels (flux: the exposure's, x, y: the centre [px],
        r_eff [arcsec]), for :meth:`_chain`.  All the sources of the exposure
        are built in one compiled call
        (:func:`~astromix.models._sersic_build.exposure_components`), the
        galaxies' components merged within the settings' ``merge_tolerance``.
        ``terms``: :meth:`_source_terms` at ``p``, ``pack``: :meth:`_pack` of
        ``placements`` (both computed if omitted).
        """
        if terms is None:
            terms = self._source_terms(p)
        if pack is None:
            pack = self._pack(placements)
        settings = self.settings
        *arrays, starts = exposure_components(
            np.asarray(p, dtype=float), pack, *terms, settings.merge_tolerance,
            settings.box_variance, derivatives)
        placed = [pl for pl in placements if pl is not None]
        for pl, a, b in zip(placed, starts[:-1].tolist(), starts[1:].tolist()):
            pl.sl = slice(a, b)
        return tuple(arrays)

    def _chain(self, placements, d_amp, d_mean, d_cov, grad, m, matrix):
        """Add d chi2 / d parameters to ``grad`` from per-component gradients.

        ``m`` (J, 7, 6): the component derivatives of :meth:`_component_arrays`;
        ``matrix``: :meth:`_chain_matrix` of ``placements``.
        """
        placed = [pl for pl in placements if pl is not None]
        if not placed:
            return grad
        g6 = _common.stack_gradients(d_amp, d_mean, d_cov)      # (J, 6)
        local = np.einsum("jpk,jk->jp", m, g6)                  # d chi2 / d local (J, 7)
        sums = np.add.reduceat(local, [pl.sl.start for pl in placed], axis=0)
        grad += matrix @ sums.ravel()
        return grad

    def _chain_matrix(self, placements, n_parameters):
        """The linear map (n_parameters, 7 x placed sources) from each placed source's
        d chi2 / d (flux, x, y, r_eff, n, ellip, theta) in an exposure to d chi2 /
        d parameters: constant for a set of placements (their WCS Jacobians, flux
        scales and reference points are fixed when they are made)."""
        placed = [pl for pl in placements if pl is not None]
        out = np.zeros((n_parameters, 7 * len(placed)))
        for q, pl in enumerate(placed):
            idx = self._index[pl.source]
            c = 7 * q
            out[idx[("flux", self._bands[pl.band_index])], c] += pl.flux_scale
            # d/d(north, east) [arcsec] = J^T d/d(x, y)
            out[idx["dec"], c + 1:c + 3] += 3600.0 * pl.jac[:, 0]
            out[idx["ra"], c + 1:c + 3] += 3600.0 * pl.cosd * pl.jac[:, 1]
            if self._kinds[pl.source] == "sersic":
                for name, col in (("r_eff", 3), ("n", 4), ("ellip", 5), ("theta", 6)):
                    out[idx[name], c + col] += 1.0
        return out

    def _objective_for(self, exposures, *, background="fit", dtype=np.float64, backend=None,
                       progress=None):
        """The :class:`SceneObjective` the fitters use (see MixtureLSQFitter, DynestyFitter)."""
        obj = SceneObjective(self, exposures, background=background, dtype=dtype,
                             backend=backend)
        obj.progress = progress
        return obj

    def mixture(self, exposure, *, parameters=None):
        """The scene as one GaussianMixture in the pixels of ``exposure``.

        Parameters
        ----------
        exposure : astromix.data.Exposure
            With a celestial WCS, a PSF and (when the scene has a ``zeropoint``)
            a zero point.
        parameters : ndarray, optional
            Parameter values (default: the current ones).

        Returns
        -------
        GaussianMixture
            PSF-convolved, in data units and pixel coordinates of ``exposure``.

        Raises
        ------
        InputError
            If the exposure's band has no flux parameter, or it lacks a WCS or PSF,
            or a zero point when the scene has one.
        """
        p = self.parameters if parameters is None else np.asarray(parameters, dtype=float)
        amp, mean, cov = self._component_arrays(p, self.placements(exposure, p))
        if len(amp) == 0:
            return GaussianMixture(np.zeros(1), np.zeros((1, 2)), np.eye(2)[None])
        return GaussianMixture._unchecked(amp, mean, cov)

    def render(self, exposure, *, dtype=np.float64, backend=None):
        """Image of the scene in ``exposure``'s pixels, (ny, nx), data units, no background.

        Parameters
        ----------
        exposure : astromix.data.Exposure
            With a celestial WCS, a PSF and (when the scene has a
            ``zeropoint``) a zero point; its data fix the shape (ny, nx).
        dtype : {numpy.float64, numpy.float32}, optional
            Arithmetic and type of the image (default float64).
        backend : str, optional
            Backend name (default: the active backend).

        Returns
        -------
        ndarray, shape (ny, nx)
            The PSF-convolved, pixel-integrated image of the scene, in the
            exposure's data units, as a NumPy array.

        Raises
        ------
        InputError
            As :meth:`mixture`, or on a ``dtype`` other than float32/float64.
        BackendError
            If ``backend`` is unknown or unavailable.
        """
        bk = get_backend(backend)
        mix = self.mixture(exposure)
        return bk.to_numpy(mix.render(exposure.data.shape, dtype=dtype,
                                      settings=self.settings, backend=backend))

    def chi2(self, exposures, *, gradient=True, background="fit", dtype=np.float64,
             backend=None):
        """Chi-square of the scene against exposures, summed, with its gradient.

        Parameters
        ----------
        exposures : Exposure or iterable of Exposure
        gradient : bool, optional
            Also return d chi2 / d parameters.
        background : {"fit", None} or float or sequence, optional
            ``"fit"``: a constant background per exposure, set to its best value
            for the current sources (profiled out; its uncertainty then enters
            the other parameters' errors as if it were fitted); None or 0: no
            background; a number: one known background for every exposure; a
            sequence or NumPy array (one per exposure): known backgrounds
            [data units], or ``"fit"`` / None per exposure.
        dtype : {numpy.float64, numpy.float32}, optional
            Arithmetic of the kernels.
        backend : str, optional

        Returns
        -------
        chi2 : float
        grad : ndarray, shape (n_parameters,), only if ``gradient``
            d chi2 / d :attr:`parameters` (fixed and tied parameters included).

        Raises
        ------
        InputError
            As :meth:`mixture`; also if no exposure overlaps any source, or for
            a bad ``background`` or ``dtype`` (see :class:`SceneObjective`).
        """
        obj = SceneObjective(self, exposures, background=background, dtype=dtype,
                             backend=backend)
        return obj(self.parameters, gradient=gradient)


class SceneObjective:
    """chi2 (and gradient) of a scene's parameters against a set of exposures.

    The callable the fitters minimise or sample: the reference points, local WCS
    maps and PSF mixtures are computed once (at ``parameters``), then each call
    renders every exposure with the backend kernel.

    Parameters
    ----------
    scene : SceneModel
    exposures : Exposure or iterable of Exposure
        One exposure, or a list, tuple, generator or array of them.
    background : {"fit", None} or float or sequence of float, optional
        See :meth:`SceneModel.chi2`.
    dtype : {numpy.float64, numpy.float32}, optional
    backend : str, optional
    parameters : ndarray, optional
        Where to linearise the WCS (default: the scene's current parameters).

    Raises
    ------
    InputError
        With no exposures, a band with no flux parameter, a missing WCS or PSF,
        a missing zero point (when the scene has one), no exposure overlapping
        any source; a ``dtype`` other than float32/float64; a ``background``
        that is a string other than ``"fit"``, not finite, or a sequence of the
        wrong length.

    Warns
    -----
    SceneWarning
        For each exposure that overlaps no source (it is left out).
    """

    def __init__(self, scene, exposures, *, background="fit", dtype=np.float64, backend=None,
                 parameters=None):
        exposures = _exposure_list(exposures)
        if not exposures:
            raise InputError("no exposures to fit")
        dtype = _kernel_dtype(dtype)
        bgs = _background_list(background, len(exposures))
        self.scene = scene
        self.bk = get_backend(backend)
        self.dtype = dtype
        self.settings = scene.settings
        p = scene.parameters if parameters is None else np.asarray(parameters, dtype=float)
        self.reference = p.copy()
        self.psf_cache = {}
        self.exposures, self.placements, self.data, self.weight, self.fixed_bg = \
            [], [], [], [], []
        covered = np.zeros(scene.n_sources, dtype=bool)
        for e, bg in zip(exposures, bgs):
            pls = scene.placements(e, p, psf_cache=self.psf_cache)
            if all(pl is None for pl in pls):
                warnings.warn(f"exposure {getattr(e, 'name', '?')!r} overlaps no source of the "
                              "scene; it is left out", SceneWarning)
                continue
            covered |= np.array([pl is not None for pl in pls])
            weight = np.asarray(e.weight, dtype=self.dtype)
            data = np.where(weight > 0, np.asarray(e.data, dtype=self.dtype), 0)
            self.exposures.append(e)
            self.placements.append(pls)
            self.data.append(self.bk.asarray(data))
            self.weight.append(self.bk.asarray(weight))
            self.fixed_bg.append(None if bg == "fit" else float(bg or 0.0))
        if not self.exposures:
            raise InputError("no exposure overlaps any source of the scene")
        missing = [scene.source_names[i] for i in np.flatnonzero(~covered)]
        if missing:
            raise InputError(f"source(s) {missing} lie on no exposure")
        self.n_data = int(sum(int((np.asarray(e.weight) > 0).sum()) for e in self.exposures))
        # the chain rule from each exposure's per-source derivatives to the parameters
        self._chain_matrices = [scene._chain_matrix(pls, p.size) for pls in self.placements]
        self._packs = [scene._pack(pls) for pls in self.placements]
        # the Numba backend takes all the exposures in one parallel call
        self._set_packed()
        self.backgrounds = np.array([b if b is not None else 0.0 for b in self.fixed_bg])
        self.chi2_per_exposure = np.zeros(len(self.exposures))
        self.n_calls = 0
        self.progress = None

    def __getstate__(self):
        # backends hold thread-local buffers: pickle (for process pools) by name
        state = self.__dict__.copy()
        state["bk"] = self.bk.name
        state["data"] = [self.bk.to_numpy(d) for d in self.data]
        state["weight"] = [self.bk.to_numpy(w) for w in self.weight]
        state["progress"] = None
        state["_packed"] = None          # the packed copies are made again on arrival
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.bk = get_backend(state["bk"])
        self.data = [self.bk.asarray(d) for d in self.data]
        self.weight = [self.bk.asarray(w) for w in self.weight]
        self._set_packed()

    def _set_packed(self):
        """The Numba backend's packed copies of the images (see :meth:`__call__`)."""
        self._layout = self._packed = None
        if hasattr(self.bk, "exposures_chi2"):
            self._layout = self.bk.exposures_layout([d.shape for d in self.data])
            self._packed = (self.bk.pack_images(self.data, self._layout, self.dtype),
                            self.bk.pack_images(self.weight, self._layout, self.dtype))

    def __call__(self, parameters, gradient=True):
        """chi2 (and d chi2 / d parameters, shape (n_parameters,)) at ``parameters``.

        With the Numba backend on more than one thread all the exposures go to
        one parallel call
        (:meth:`~astromix.backends.numba_backend.NumbaBackend.exposures_chi2`):
        their row bands are rendered, and their components' gradient sums
        accumulated, over all of Numba's threads, with no Python between the
        kernels; otherwise (other backends, one thread, a forked worker) the
        exposures are taken one by one.
        """
        self.n_calls += 1
        if self.progress is not None:
            self.progress.update(1)
        p = np.asarray(parameters, dtype=float)
        terms = self.scene._source_terms(p)
        n = len(self.placements)
        prepared = [self._table(k, p, terms, gradient) for k in range(n)]
        tables = [t for t, _ in prepared]
        if self._layout is not None and self.bk.parallel_available():
            chi2, bgs, accs = self.bk.exposures_chi2(tables, self._layout, *self._packed,
                                                     self.fixed_bg, self.settings, gradient)
            results = [(float(chi2[k]), float(bgs[k]), accs[k] if gradient else None)
                       for k in range(n)]
        else:
            results = [self._kernels(k, tables[k], gradient) for k in range(n)]
        total = 0.0
        grad = np.zeros(p.size) if gradient else None
        for k, (value, bg, acc) in enumerate(results):
            self.chi2_per_exposure[k] = value
            self.backgrounds[k] = bg
            total += value
            if gradient:
                d_amp, d_mean, d_cov = self.bk.assemble_gradient(tables[k],
                                                                 self.bk.to_numpy(acc))
                self.scene._chain(self.placements[k], d_amp, d_mean, d_cov, grad,
                                  prepared[k][1], self._chain_matrices[k])
        return (total, grad) if gradient else total

    def _table(self, k, p, terms, derivatives):
        """(prepared component table, component derivatives or None) of exposure k.

        Sets the placements' slices.
        """
        arrays = self.scene._component_arrays(p, self.placements[k], terms, derivatives,
                                              self._packs[k])
        table = self.bk.prepare(*arrays[:3], self.settings)
        return table, (arrays[3] if derivatives else None)

    def _kernels(self, k, table, gradient):
        """(chi2, background, gradient accumulators or None) of exposure k."""
        bk, xp = self.bk, self.bk.xp
        data, weight = self.data[k], self.weight[k]
        work = bk.scratch(data.shape, self.dtype, "scene")
        model = bk.render(table, data.shape, self.dtype, self.settings, out=work)
        bg = self.fixed_bg[k]
        if bg is None:
            sw = float(xp.sum(weight, dtype=np.float64))
            bg = float(xp.sum(weight * (data - model), dtype=np.float64)) / sw
        target = data - self.dtype.type(bg) if bg else data
        value, rimg = bk.residual(model, target, weight, out=model)
        if not gradient:
            return value, bg, None
        return value, bg, bk.accumulate(table, rimg, self.settings)

    @property
    def n_nuisance(self):
        """Number of profiled nuisance parameters (one fitted background per exposure)."""
        return sum(1 for b in self.fixed_bg if b is None)

    def default_scales(self, parameters):
        """Typical step of each parameter (n_parameters,), to precondition optimisers.

        Fluxes: 10% (at least 1e-3); positions: 0.1 arcsec; r_eff: 10% (at least
        0.01 arcsec); n: 0.3; ellip: 0.05; theta: 0.2 rad.

        Parameters
        ----------
        parameters : array-like, shape (n_parameters,)
            Parameter values of the scene, in its :attr:`~SceneModel.param_names`
            order.

        Returns
        -------
        ndarray, shape (n_parameters,)
            The steps, in the parameters' units: catalog flux units, degrees
            for ra (0.1 arcsec on the sky, divided by cos(dec)) and dec,
            arcsec for r_eff, radians for theta.
        """
        p = np.asarray(parameters, dtype=float)
        out = np.ones(p.size)
        for i in range(self.scene.n_sources):
            for key, j in self.scene.source_index(i).items():
                name = key[0] if isinstance(key, tuple) else key
                if name == "flux":
                    out[j] = max(0.1 * abs(p[j]), 1e-3)
                elif name == "ra":
                    cosd = math.cos(math.radians(p[self.scene.source_index(i)["dec"]]))
                    out[j] = 0.1 * ARCSEC / max(cosd, 1e-6)
                elif name == "dec":
                    out[j] = 0.1 * ARCSEC
                elif name == "r_eff":
                    out[j] = max(0.1 * p[j], 0.01)
                else:
                    out[j] = {"n": 0.3, "ellip": 0.05, "theta": 0.2}[name]
        return out

    def dof_per_exposure(self, n_free):
        """Degrees of freedom per exposure: its unmasked pixels minus its share of parameters.

        The free parameters (``n_free`` in all) are shared in proportion to the
        exposures' pixel counts; a fitted background takes one more per exposure.

        Parameters
        ----------
        n_free : int or float
            Number of free parameters of the scene.

        Returns
        -------
        ndarray, shape (n_exposures,)
            Float degrees of freedom of each exposure kept by the objective
            (those overlapping a source), in the order of ``self.exposures``.
        """
        npix = np.array([int((np.asarray(e.weight) > 0).sum()) for e in self.exposures])
        nbg = np.array([1 if b is None else 0 for b in self.fixed_bg])
        return npix - nbg - n_free * npix / npix.sum()
