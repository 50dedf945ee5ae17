r"""Fitting large fields in overlapping patches (forcepho's "superscene").

A field too large to fit as one scene is cut into square patches on the sky
(Johnson et al., forcepho: the "superscene" of active and fixed sources).
Each source is *active* in exactly one patch, the one whose core holds its
position; a patch's pixels cover its core plus a ``border`` all round, and
the sources outside the core whose light reaches those pixels are included as
*fixed neighbours*: rendered with fixed parameters, not fitted.  Every patch
carries only its own pixels (a cutout of each exposure that covers it), so it
is small and picklable, and the patches are fitted independently over any
:class:`concurrent.futures.Executor` (:func:`astromix.parallel.parallel_map`):
a process pool on a laptop, a dask cluster, an MPI pool.  The fitted values
of each source come from the one patch where it was active, so the merged
catalog has no duplicates.

:func:`make_patches` builds the patches; :func:`fit_patches` builds, fits and
merges them (optionally in a second pass in which the neighbours take their
values from the first).
"""

import functools
import inspect
import logging
import math
import time

import numpy as np
from astropy import units as u
from astropy.table import Table

from .._threads import single_threaded_blas
from ..errors import InputError
from ..models.scene import SceneModel, _exposure_list
from .scene import _bound_positions, _limit
from .scene import fit_scene as _fit_scene

__all__ = ["Patch", "make_patches", "fit_patches"]

log = logging.getLogger("astromix")

#: fit_scene's default ``max_shift`` [arcsec]; fit_patches sets those bounds itself.
_DEFAULT_MAX_SHIFT = inspect.signature(_fit_scene).parameters["max_shift"].default

#: Points per side of a patch's region mapped into an exposure to find its pixel box.
_EDGE_POINTS = 9


def _arcsec(value, what, *, positive=False):
    """A float [arcsec] from a number or an angle Quantity; refused if negative or not finite."""
    if isinstance(value, u.Quantity):
        try:
            value = value.to_value(u.arcsec)
        except u.UnitsError:
            raise InputError(f"{what} must be an angle, got unit {value.unit}") from None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number [arcsec], got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise InputError(f"{what} must be a finite number {'>' if positive else '>='} 0 "
                         f"[arcsec], got {v}")
    return v


class _Frame:
    """A gnomonic (TAN) projection about (ra0, dec0): (ra, dec) [deg] <-> (xi, eta) [arcsec].

    ``xi`` points east, ``eta`` north; both 0 at the reference point.
    """

    def __init__(self, ra0, dec0):
        from astropy.wcs import WCS

        self.ra0, self.dec0 = float(ra0), float(dec0)
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [self.ra0, self.dec0]
        w.wcs.crpix = [1.0, 1.0]
        w.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]
        self._wcs = w

    def project(self, ra, dec):
        xi, eta = self._wcs.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
        return np.asarray(xi, dtype=float), np.asarray(eta, dtype=float)

    def deproject(self, xi, eta):
        ra, dec = self._wcs.wcs_pix2world(np.atleast_1d(xi), np.atleast_1d(eta), 0)
        return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


class Patch:
    """One patch of a large field: its sky region, sources and pixels.

    Made by :func:`make_patches`; fitted by :func:`fit_patches` (or by hand:
    ``fit_scene(patch.scene(), patch.exposures)``).  A patch holds copies of
    only its own pixels and plain Python/NumPy objects, so it pickles small
    and can be sent to a process pool, a dask cluster or an MPI pool.

    Parameters
    ----------
    index, grid, reference, core, border, center, active, fixed : see Attributes
        Keyword-only, like all the arguments; stored as the attributes of the
        same names (as int, tuples of float and int ndarrays).
    sources, exposures, exposure_index : see Attributes
        Stored as the attributes of the same names (lists, int ndarray).
    constraints : list of dict
        Per active source, ``{parameter key: (fixed, bounds)}`` from the field's
        scene; :meth:`scene` applies them.
    bands : sequence of str or None
        The field scene's bands (:attr:`SceneModel.bands`).
    zeropoint : float or None
        The field scene's zero point [AB mag of one catalog flux unit].
    settings : AccuracySettings or None
        The field scene's rendering settings.

    Attributes
    ----------
    index : int
        The patch id (0-based, in the order of :func:`make_patches`).
    label : str
        ``"patch <index> (row <row>, col <col>)"``; names the patch in
        progress and error messages (also :attr:`name`).
    grid : (int, int)
        (row, col) of the patch in the grid; rows run north, columns east.
    reference : (float, float)
        (ra, dec) [deg] of the tangent point of the grid's projection.
    core : ((float, float), (float, float))
        ``((xi_lo, xi_hi), (eta_lo, eta_hi))`` [arcsec]: the core region in the
        gnomonic projection about ``reference`` (``xi`` east, ``eta`` north),
        half-open (``lo <= xi < hi``).  Sources whose position lies in the
        core are active here.
    border : float
        Width [arcsec] of the band around the core whose pixels are fitted too.
    center : (float, float)
        (ra, dec) [deg] of the core's centre.
    active : ndarray of int, shape (n_active,)
        Indices (into the field's scene) of the sources fitted here.
    fixed : ndarray of int, shape (n_fixed,)
        Indices of the fixed neighbours: sources outside the core, within
        ``border + halo`` of it, rendered on at least one of the patch's
        exposures; their parameters are held fixed.
    sources : list of SersicSource or StarSource
        The active sources, then the fixed ones, with the values to start from
        (active) or to render with (fixed); named by the field's source names.
    exposures : list of Exposure
        Per exposure that covers an active source: a cutout of the smallest
        pixel box holding the region ``core + border`` (trimmed at the
        image's edges; the box's pixels outside the region are masked), with
        its WCS shifted to the cutout's pixels and its PSF evaluated in the
        original frame (see :meth:`astromix.Exposure.cutout`).
    exposure_index : ndarray of int
        Position of each cutout's exposure in the list given to
        :func:`make_patches`.
    """

    def __init__(self, *, index, grid, reference, core, border, center, active, fixed, sources,
                 constraints, exposures, exposure_index, bands, zeropoint, settings):
        self.index = int(index)
        self.grid = (int(grid[0]), int(grid[1]))
        self.label = f"patch {self.index} (row {self.grid[0]}, col {self.grid[1]})"
        self.reference = tuple(float(v) for v in reference)
        self.core = tuple(tuple(float(v) for v in pair) for pair in core)
        self.border = float(border)
        self.center = tuple(float(v) for v in center)
        self.active = np.asarray(active, dtype=int)
        self.fixed = np.asarray(fixed, dtype=int)
        self.sources = list(sources)
        self._constraints = constraints
        self.exposures = list(exposures)
        self.exposure_index = np.asarray(exposure_index, dtype=int)
        self._bands = tuple(bands)
        self._zeropoint = zeropoint
        self._settings = settings

    @property
    def name(self):
        """The patch's label (so that :func:`~astromix.parallel.parallel_map` names it)."""
        return self.label

    @property
    def n_active(self):
        """Number of active (fitted) sources."""
        return len(self.active)

    @property
    def n_fixed(self):
        """Number of fixed neighbours."""
        return len(self.fixed)

    @property
    def npix(self):
        """Number of pixels of all the patch's cutouts together."""
        return int(sum(e.data.size for e in self.exposures))

    def __repr__(self):
        return (f"<Patch {self.index} row={self.grid[0]} col={self.grid[1]} "
                f"active={self.n_active} fixed={self.n_fixed} "
                f"exposures={len(self.exposures)} npix={self.npix}>")

    def project(self, ra, dec):
        """Positions in the grid's tangent plane (the frame of :attr:`core`).

        Parameters
        ----------
        ra, dec : float or array-like
            Sky positions [deg].

        Returns
        -------
        xi, eta : ndarray
            Gnomonic coordinates about :attr:`reference` [arcsec], ``xi``
            east, ``eta`` north; 1-d arrays.
        """
        return _Frame(*self.reference).project(ra, dec)

    def in_core(self, ra, dec):
        """Whether sky positions (ra, dec) [deg] lie in the core (bool ndarray).

        Parameters
        ----------
        ra, dec : float or array-like
            Sky positions [deg].

        Returns
        -------
        ndarray of bool, shape (n,)
            True where the position's gnomonic coordinates (:meth:`project`)
            fall in the half-open core ``xi_lo <= xi < xi_hi``, ``eta_lo <= eta <
            eta_hi``; 1-d even for scalars.
        """
        xi, eta = self.project(ra, dec)
        (x_lo, x_hi), (y_lo, y_hi) = self.core
        return (xi >= x_lo) & (xi < x_hi) & (eta >= y_lo) & (eta < y_hi)

    def scene(self, *, neighbours=True):
        """The patch's scene: active sources free (with the field's constraints), neighbours fixed.

        Parameters
        ----------
        neighbours : bool, optional
            Include the fixed neighbours (default); False gives the active
            sources only (see :meth:`neighbour_image`).

        Returns
        -------
        SceneModel
            Sources ``0 .. n_active - 1`` are the active ones (in the order of
            :attr:`active`), then the fixed neighbours; the sources keep the
            field's names, so the catalog of a fit of this scene has the
            field's ``id`` values.
        """
        sources = self.sources if neighbours else self.sources[:self.n_active]
        scene = SceneModel(sources, bands=self._bands, zeropoint=self._zeropoint,
                           settings=self._settings)
        names = scene.param_names
        for j in range(scene.n_sources):
            idx = scene.source_index(j)
            for key, k in idx.items():
                param = getattr(scene, names[k])
                if j >= self.n_active:
                    param.fixed = True
                    continue
                fixed, bounds = self._constraints[j].get(key, (False, None))
                if bounds is not None:
                    param.bounds = bounds
                param.fixed = bool(fixed)
        return scene

    def neighbour_image(self, k, *, backend=None):
        """The fixed neighbours rendered in the patch's ``k``-th cutout.

        Parameters
        ----------
        k : int
            Index into :attr:`exposures`.
        backend : str, optional
            Backend name for :meth:`SceneModel.render` (default: the current
            one).

        Returns
        -------
        ndarray, shape (ny, nx)
            Data units, PSF-convolved and pixel-integrated, no background;
            zeros without neighbours.
        """
        cut = self.exposures[k]
        if not self.n_fixed:
            return np.zeros(cut.shape)
        scene = SceneModel(self.sources[self.n_active:], bands=self._bands,
                           zeropoint=self._zeropoint, settings=self._settings)
        return scene.render(cut, backend=backend)

    def with_values(self, scene):
        """A copy of this patch whose sources take their values from ``scene``.

        Parameters
        ----------
        scene : SceneModel
            The field's scene (same sources, same order as given to
            :func:`make_patches`), e.g. the merged result of a first pass.

        Returns
        -------
        Patch
            Same region, pixels (shared, not copied) and constraints.
        """
        return self._with_sources(scene.sources)

    def _with_sources(self, all_sources):
        new = object.__new__(Patch)
        new.__dict__.update(self.__dict__)
        new.sources = [all_sources[i] for i in np.concatenate([self.active, self.fixed])]
        return new


def _as_scene(scene_or_catalog, what):
    if isinstance(scene_or_catalog, SceneModel):
        return scene_or_catalog
    if isinstance(scene_or_catalog, Table):
        return SceneModel.from_catalog(scene_or_catalog)
    raise InputError(f"{what} needs a SceneModel or an astropy Table catalog, got "
                     f"{type(scene_or_catalog).__name__}")


def _all_constraints(scene):
    """Per source, {key: (fixed, bounds)} of its parameters; InputError for tied ones.

    astropy rebuilds ``model.fixed`` (and ``tied``, ``bounds``) on every access:
    read each once.
    """
    names = scene.param_names
    fixed, tied, bounds = scene.fixed, scene.tied, scene.bounds
    out = []
    for i in range(scene.n_sources):
        cons = {}
        for key, k in scene.source_index(i).items():
            name = names[k]
            if tied[name]:
                raise InputError(f"parameter {name} is tied: patches cannot carry ties "
                                 "between parameters (fix it, or fit the field with fit_scene)")
            cons[key] = (bool(fixed[name]), tuple(bounds[name]))
        out.append(cons)
    return out


def _extent_px(r_eff, pscale):
    """Margin [px] within which a source counts as on an exposure.

    ``r_eff`` [arcsec] (0 for a star) is converted to pixels with ``pscale``
    [arcsec / px] (:meth:`Exposure.pixel_scale`); the margin ``4.5 r_eff + 9`` px
    is stricter than SceneModel.placements' ``5 r_eff + 10`` px, so that what is
    kept here is always placed.
    """
    return 4.5 * r_eff / pscale + 9.0


def _mean_position(ra, dec):
    """(ra, dec) [deg] of the mean of the unit vectors of the positions (ra, dec) [deg]."""
    from astropy.coordinates import UnitSphericalRepresentation

    mean = UnitSphericalRepresentation(np.asarray(ra) * u.deg,
                                       np.asarray(dec) * u.deg).to_cartesian().mean()
    sph = mean.represent_as(UnitSphericalRepresentation)
    return float(sph.lon.to_value(u.deg)), float(sph.lat.to_value(u.deg))


def _cutout(exposure, frame, region):
    """A cutout of ``exposure`` covering the tangent-plane box ``region``, or None."""
    (x_lo, x_hi), (y_lo, y_hi) = region
    t = np.linspace(0.0, 1.0, _EDGE_POINTS)
    xs = np.concatenate([x_lo + (x_hi - x_lo) * t, np.full_like(t, x_hi),
                         x_hi - (x_hi - x_lo) * t, np.full_like(t, x_lo)])
    ys = np.concatenate([np.full_like(t, y_lo), y_lo + (y_hi - y_lo) * t,
                         np.full_like(t, y_hi), y_hi - (y_hi - y_lo) * t])
    ra, dec = frame.deproject(xs, ys)
    px, py = exposure.world_to_pixel(ra, dec)
    px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        return None
    ny, nx = exposure.shape
    i0, i1 = max(int(math.floor(px.min())), 0), min(int(math.ceil(px.max())), nx - 1)
    j0, j1 = max(int(math.floor(py.min())), 0), min(int(math.ceil(py.max())), ny - 1)
    if i1 < i0 or j1 < j0:
        return None
    # centre the cutout on the box: Cutout2D puts pixel (i0 + i1) / 2 at its middle
    shape = (j1 - j0 + 1, i1 - i0 + 1)
    cra, cdec = exposure.pixel_to_world(0.5 * (i0 + i1), 0.5 * (j0 + j1))
    try:
        cut = exposure.cutout(float(cra), float(cdec), shape, mode="trim")
    except InputError:  # off the image, or nothing but masked pixels
        return None
    # the box's corners lie outside the region (a rotated or distorted WCS): mask them, so
    # that only the region's pixels are fitted and no source beyond the halo shines in them
    ny, nx = cut.shape
    yy, xx = np.mgrid[:ny, :nx]
    ra, dec = cut.pixel_to_world(xx.ravel(), yy.ravel())
    xi, eta = frame.project(ra, dec)
    outside = ~((xi >= x_lo) & (xi <= x_hi) & (eta >= y_lo) & (eta <= y_hi)).reshape(ny, nx)
    if not outside.any():
        return cut
    mask = cut.mask | outside
    if mask.all():
        return None
    return type(cut)(cut.data, uncertainty=cut.uncertainty, mask=mask, wcs=cut.wcs,
                     psf=cut.psf, band=cut.band, exptime=cut.exptime, zeropoint=cut.zeropoint,
                     name=cut.name, meta=cut.meta, unit=cut.unit, psf_origin=cut.psf_origin)


def _on_exposure(cutout, ra, dec, r_eff, pscale):
    """Boolean (n,): which sources are on the cutout (with a margin for their light)."""
    px, py = cutout.world_to_pixel(ra, dec)
    px, py = np.atleast_1d(px), np.atleast_1d(py)
    ext = _extent_px(r_eff, pscale)
    ny, nx = cutout.shape
    return ((px >= -ext) & (px <= nx - 1 + ext) & (py >= -ext) & (py <= ny - 1 + ext)
            & np.isfinite(px) & np.isfinite(py))


def make_patches(scene, exposures, *, patch_size, border, halo=None, reference=None):
    """Split a field (scene or catalog and its exposures) into overlapping patches.

    The sources are projected on the plane tangent to the sky at
    ``reference`` (gnomonic projection: ``xi`` east, ``eta`` north, in
    arcsec) and a square grid of cells of side ``patch_size`` is laid over
    them, centred on the sources' bounding box.  Each source is active in
    the one cell that holds its position (cells are half-open, so a source on
    a shared edge belongs to one); cells without active sources give no
    patch.  A patch's pixels are, in each exposure, the smallest box holding
    the core widened by ``border`` on every side (9 points per side mapped
    through the exposure's full WCS; trimmed at the image edges), its pixels
    outside that region masked (weight 0).  Its fixed neighbours are the
    other sources within ``border + halo`` of the core (Chebyshev distance in
    the tangent plane) that fall on one of its cutouts or within ``4.5 r_eff
    + 9`` px of one (their light reaches it; ``r_eff`` in the exposure's
    pixels).  This is forcepho's superscene (Johnson et al., in prep.;
    github.com/bd-j/forcepho): active sources fitted, neighbours at the
    borders rendered with fixed parameters.

    Parameters
    ----------
    scene : SceneModel or astropy.table.Table
        The field's sources with their starting values; a catalog is read
        with :meth:`SceneModel.from_catalog`.  Fixed parameters and bounds of
        the scene carry over to the patches' active sources; ties are refused.
    exposures : Exposure or iterable of Exposure
        Every exposure of the field, each with a celestial WCS and a PSF (a
        list, tuple, generator or object array of them, as for
        :func:`~astromix.fitting.fit_scene`).
    patch_size : float or Quantity
        Side of a patch's core [arcsec], > 0.  A few times the typical
        distance between sources: the cost of a patch's fit grows like the
        square of its number of active sources.
    border : float or Quantity
        Width [arcsec] of the band of pixels around the core that is fitted
        too (>= 0): at least the size of the active sources' light beyond
        the core (a few ``r_eff`` plus the PSF).
    halo : float or Quantity, optional
        Neighbours up to ``border + halo`` from the core are included as fixed
        sources (their light reaches the band's outer pixels); default
        ``border / 2``.
    reference : (float, float), optional
        (ra, dec) [deg] of the tangent point; default the centre of the
        sources' bounding box in the plane tangent at their mean position
        (the mean of their unit vectors, so that a field straddling
        ra = 0 is one field).

    Returns
    -------
    list of Patch
        In grid order (row by row from the south, each row from the west,
        ``xi`` low, eastwards); ``patch.index`` is the position in the list.

    Raises
    ------
    InputError
        For a scene that is neither a SceneModel nor a Table, a tied
        parameter, a non-positive ``patch_size``, a negative ``border`` or
        ``halo``, no exposures, an exposure without a WCS, or sources that lie
        on no exposure (named in the message).

    See Also
    --------
    fit_patches : fit the patches over an executor and merge the results.

    References
    ----------
    .. [1] B. D. Johnson et al., forcepho: forward-modelling photometry of galaxies in
       many images with Gaussian mixtures; https://github.com/bd-j/forcepho (the
       "superscene": active sources fitted, neighbours held fixed).

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix import Exposure, GaussianMixture, SceneModel, StarSource
    >>> from astromix.fitting import make_patches
    >>> w = WCS(naxis=2)
    >>> w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.crval, w.wcs.crpix = [150.0, 2.0], [100.5, 100.5]
    >>> w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    >>> psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    >>> exposure = Exposure(np.zeros((200, 200)), wcs=w, psf=psf, band="r")
    >>> stars = [StarSource(150.0 + dx / 3600, 2.0 + dy / 3600, 10.0)
    ...          for dx, dy in [(-10, -10), (-8, 10), (10, -10), (10, 10), (1, 1)]]
    >>> patches = make_patches(SceneModel(stars), [exposure], patch_size=15, border=3)
    >>> [(p.label, p.active.tolist(), p.fixed.tolist()) for p in patches]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('patch 0 (row 0, col 0)', [0], [4]), ('patch 1 (row 0, col 1)', [2], [4]),
     ('patch 2 (row 1, col 0)', [1], [4]), ('patch 3 (row 1, col 1)', [3, 4], [])]
    >>> patches[3].exposures[0].shape
    (107, 107)
    """
    scene = _as_scene(scene, "make_patches")
    patch_size = _arcsec(patch_size, "patch_size", positive=True)
    border = _arcsec(border, "border")
    halo = 0.5 * border if halo is None else _arcsec(halo, "halo")
    exposures = _exposure_list(exposures)
    if not exposures:
        raise InputError("make_patches needs at least one exposure")
    for e in exposures:
        if getattr(e, "wcs", None) is None:
            raise InputError(f"exposure {getattr(e, 'name', '?')!r} has no WCS")
    n = scene.n_sources
    p = scene.parameters
    ra = np.array([p[scene.source_index(i)["ra"]] for i in range(n)])
    dec = np.array([p[scene.source_index(i)["dec"]] for i in range(n)])
    r_eff = np.array([p[scene.source_index(i)["r_eff"]] if "r_eff" in scene.source_index(i)
                      else 0.0 for i in range(n)])
    constraints = _all_constraints(scene)
    if reference is None:
        # the middle of the sources' extent, in a frame about their mean position (the
        # mean of their unit vectors: right for a field straddling ra = 0 too)
        frame = _Frame(*_mean_position(ra, dec))
        xi, eta = frame.project(ra, dec)
        reference = tuple(float(v[0]) for v in frame.deproject(
            0.5 * (xi.min() + xi.max()), 0.5 * (eta.min() + eta.max())))
    try:
        ra0, dec0 = (float(v) for v in reference)
    except (TypeError, ValueError):
        raise InputError(f"reference must be (ra, dec) [deg], got {reference!r}") from None
    frame = _Frame(ra0, dec0)
    xi, eta = frame.project(ra, dec)
    ncol = max(1, math.ceil((xi.max() - xi.min()) / patch_size + 1e-9))
    nrow = max(1, math.ceil((eta.max() - eta.min()) / patch_size + 1e-9))
    x0 = 0.5 * (xi.min() + xi.max()) - 0.5 * ncol * patch_size
    y0 = 0.5 * (eta.min() + eta.max()) - 0.5 * nrow * patch_size
    col = np.clip(np.floor((xi - x0) / patch_size).astype(int), 0, ncol - 1)
    row = np.clip(np.floor((eta - y0) / patch_size).astype(int), 0, nrow - 1)
    # pixel scales of the exposures at their centres (for the light-extent margins)
    pscales = []
    for e in exposures:
        ny, nx = e.shape
        pscales.append(float(e.pixel_scale(0.5 * (nx - 1), 0.5 * (ny - 1))))
    patches = []
    all_sources = scene.sources
    covered = np.zeros(n, dtype=bool)
    for r in range(nrow):
        for c in range(ncol):
            active = np.flatnonzero((row == r) & (col == c))
            if active.size == 0:
                continue
            core = ((x0 + c * patch_size, x0 + (c + 1) * patch_size),
                    (y0 + r * patch_size, y0 + (r + 1) * patch_size))
            region = tuple((lo - border, hi + border) for lo, hi in core)
            dx = np.maximum.reduce([core[0][0] - xi, np.zeros(n), xi - core[0][1]])
            dy = np.maximum.reduce([core[1][0] - eta, np.zeros(n), eta - core[1][1]])
            near = np.maximum(dx, dy) <= border + halo
            near[active] = False
            candidates = np.flatnonzero(near)
            cutouts, kept, neighbour_on = [], [], np.zeros(candidates.size, dtype=bool)
            for k, (e, pscale) in enumerate(zip(exposures, pscales)):
                cut = _cutout(e, frame, region)
                if cut is None:
                    continue
                on = _on_exposure(cut, ra[active], dec[active], r_eff[active], pscale)
                if not on.any():
                    continue
                covered[active[on]] = True
                cutouts.append(cut)
                kept.append(k)
                if candidates.size:
                    neighbour_on |= _on_exposure(cut, ra[candidates], dec[candidates],
                                                 r_eff[candidates], pscale)
            if not cutouts:
                continue
            fixed = candidates[neighbour_on]
            center = frame.deproject(0.5 * (core[0][0] + core[0][1]),
                                     0.5 * (core[1][0] + core[1][1]))
            patches.append(Patch(
                index=len(patches), grid=(r, c), reference=(ra0, dec0), core=core,
                border=border, center=(center[0][0], center[1][0]), active=active,
                fixed=fixed, sources=[all_sources[i] for i in np.concatenate([active, fixed])],
                constraints=[constraints[i] for i in active], exposures=cutouts,
                exposure_index=kept, bands=scene.bands, zeropoint=scene.zeropoint,
                settings=scene._settings))
    if not covered.all():
        missing = [scene.source_names[i] for i in np.flatnonzero(~covered)]
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} source(s) lie on no exposure: {shown}")
    log.info("make_patches: %d sources in %d patches (%d x %d grid of %.1f arcsec, border "
             "%.1f arcsec)", n, len(patches), nrow, ncol, patch_size, border)
    return patches


def _set_kernel_threads(threads):
    """Set Numba's thread count for this thread; returns the previous one (or None)."""
    if threads is None:
        return None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency of the default backend
        return None
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    return previous


def _without_neighbours(patch, backend):
    """The patch's cutouts with the fixed neighbours' light subtracted.

    Fixed sources enter chi2 only through their (constant) model image, so
    subtracting it once is the same fit as rendering them at every step, and
    keeps their parameters out of the optimiser's bookkeeping.
    """
    if not patch.n_fixed:
        return patch.exposures
    out = []
    for k, cut in enumerate(patch.exposures):
        data = np.asarray(cut.data, dtype=float) - patch.neighbour_image(k, backend=backend)
        out.append(type(cut)(data, uncertainty=cut.uncertainty, mask=cut.mask, wcs=cut.wcs,
                             psf=cut.psf, band=cut.band, exptime=cut.exptime,
                             zeropoint=cut.zeropoint, name=cut.name, meta=cut.meta,
                             unit=cut.unit, psf_origin=cut.psf_origin))
    return out


#: Shape parameters that a patch fit retries when they end at a bound (see ``retry``).
_RETRY_KEYS = ("r_eff", "n")


def _at_bound(fitted, j):
    """Keys of source j's free parameters that lie at one of their bounds."""
    names = fitted.param_names
    fixed, tied, bounds = fitted.fixed, fitted.tied, fitted.bounds
    p = fitted.parameters
    out = []
    for key, k in fitted.source_index(j).items():
        name = names[k]
        if fixed[name] or tied[name]:
            continue
        lo, hi = bounds[name]
        v = float(p[k])
        width = (hi - lo) if lo is not None and hi is not None else max(abs(v), 1.0)
        tol = 1e-7 * width
        if (lo is not None and v - lo <= tol) or (hi is not None and hi - v <= tol):
            out.append(key)
    return out


def _fit_patch(patch, *, fit_kwargs, kernel_threads, retry=True):
    """Fit one patch (runs in a worker); returns a small picklable dict."""
    from .scene import fit_scene

    t0 = time.perf_counter()
    previous = _set_kernel_threads(kernel_threads)
    retried = False
    try:
        with single_threaded_blas():
            exposures = _without_neighbours(patch, fit_kwargs.get("backend"))
            kwargs = dict(fit_kwargs)
            background = kwargs.get("background", "fit")
            if not (background is None or isinstance(background, str)
                    or np.ndim(background) == 0):
                # one value per exposure of the field: those of the patch's cutouts
                kwargs["background"] = [background[k] for k in patch.exposure_index]
            start = patch.scene(neighbours=False)
            fitted, _ = fit_scene(start, exposures, progress=False, **kwargs)
            stuck = [(j, key) for j in range(patch.n_active) for key in _at_bound(fitted, j)
                     if key in _RETRY_KEYS]
            if retry and stuck:
                # a joint fit can drive one source's shape to a bound (a local minimum
                # that the source's own fit avoids): once more from the fit, with those
                # parameters back at their starting values; the lower chi2 wins
                again = fitted.copy()
                for j, key in stuck:
                    k = start.source_index(j)[key]
                    setattr(again, start.param_names[k], float(start.parameters[k]))
                refit, _ = fit_scene(again, exposures, progress=False, **kwargs)
                retried = True
                log.debug("%s: %d shape parameter(s) at a bound; refit chi2 %.6g (was %.6g)",
                          patch.label, len(stuck), refit.fit_info["chi2"],
                          fitted.fit_info["chi2"])
                if refit.fit_info["chi2"] < fitted.fit_info["chi2"]:
                    fitted = refit
    finally:
        if previous is not None:
            _set_kernel_threads(previous)
    info = fitted.fit_info
    std = info.get("param_std", {})
    names = fitted.param_names
    values, errors, at_bound = [], [], []
    for j in range(patch.n_active):
        idx = fitted.source_index(j)
        values.append({key: float(fitted.parameters[k]) for key, k in idx.items()})
        errors.append({key: float(std.get(names[k], np.nan)) for key, k in idx.items()})
        at_bound.append(bool(_at_bound(fitted, j)))
    return {"index": patch.index, "values": values, "errors": errors, "at_bound": at_bound,
            "chi2": float(info["chi2"]), "dof": int(info["dof"]), "nfev": int(info["nfev"]),
            "success": bool(info.get("success", True)), "retried": retried,
            "time_s": time.perf_counter() - t0}


def fit_patches(scene, exposures, *, patch_size, border, halo=None, passes=1, retry=True,
                executor=None, max_workers=None, kernel_threads=None, progress=True,
                return_exceptions=False, **fit_kwargs):
    """Fit a large field patch by patch over an executor, and merge the results.

    The field is split by :func:`make_patches`; each patch's active sources
    are fitted with :func:`~astromix.fitting.fit_scene` in the patch's own
    cutouts, its fixed neighbours rendered with their current values
    (forcepho's superscene, Johnson et al.).  The patches run through
    :func:`astromix.parallel.parallel_map`, so the same call runs in a
    process pool, a dask cluster (``Client.get_executor()``) or an MPI pool
    (``mpi4py.futures.MPIPoolExecutor``).  Each source's fitted values and
    errors come from the one patch where it was active.

    Parameters
    ----------
    scene : SceneModel or astropy.table.Table
        The field's sources with their starting values (not modified).
    exposures : Exposure or iterable of Exposure
        The field's exposures (each with a WCS and a PSF); see :func:`make_patches`.
    patch_size, border, halo : float or Quantity
        Patch geometry [arcsec]; see :func:`make_patches`.
    passes : int, optional
        1 (default): one fit per patch, neighbours at their starting values.
        2 or more: each further pass fits every patch again, starting from
        the previous pass's merged values, with the neighbours at their
        fitted values (a better model of the light at the borders, at twice
        the cost).  The ``max_shift`` bounds are set once, around the
        positions of ``scene``, and hold in every pass: a source moves at most
        ``max_shift`` from where it started, however many passes.
    retry : bool, optional
        When a patch's fit leaves an active source's ``r_eff`` or ``n`` at a
        bound, fit the patch once more from the fitted values
        with those parameters back at their starting values, and keep the
        fit with the lower chi2 (default True).  A joint fit of several
        sources now and then drives one source's shape to a bound (a local
        minimum that a fit of the source alone avoids); the retry costs one
        more fit of those patches only.  (``ellip`` = 0, a round galaxy, is
        a legitimate bound and is not retried.)
    executor : concurrent.futures.Executor, "serial" or None, optional
        Where the patches are fitted (see :func:`~astromix.parallel.parallel_map`):
        None gives a process pool of ``max_workers`` processes.
    max_workers : int, optional
        Processes of the default pool (default ``os.cpu_count()``).
    kernel_threads : int, optional
        Numba threads used by one patch's kernels.  Default: 1 with an
        executor (the patches are the parallelism; more would oversubscribe
        the cores), unchanged with ``executor="serial"``.
    progress : bool, optional
        A progress bar counting the fitted patches.
    return_exceptions : bool, optional
        False (default): the first failed patch raises, its label (e.g.
        ``"patch 7 (row 1, col 2)"``) in front of the message.  True: every
        patch runs; the sources of a failed patch keep their starting values,
        get NaN errors and ``fit_ok`` False in the catalog, and the failures
        are listed in ``fitted.fit_info["failures"]``
        (:class:`~astromix.parallel.ItemFailure`).
    **fit_kwargs
        Passed to :func:`~astromix.fitting.fit_scene` for every patch:
        ``background`` (``"fit"``: a constant per exposure *cutout*; a
        sequence: one known value per exposure of ``exposures``),
        ``max_shift`` (around the positions of ``scene``, see ``passes``;
        default as fit_scene's), ``maxiter``, ``relinearize``, ``dtype``,
        ``backend`` (default: the active backend, sent to the workers by
        name), ``fitter``.

    Returns
    -------
    fitted : SceneModel
        The field's scene with every source's fitted values (and the
        ``max_shift`` bounds on its positions, as from fit_scene); ``fit_info``
        holds ``patches`` (a Table: ``patch``, ``label``, ``row``, ``col``,
        ``n_active``, ``n_fixed``, ``n_exposures``, ``npix``, ``chi2``,
        ``dof``, ``nfev`` (of the last fit), ``retried``, ``time_s``, ``ok``,
        ``error``; of the last pass),
        ``param_std`` (``{parameter name: 1-sigma error}``), ``failures``,
        ``passes`` and ``time_s``.
    catalog : astropy.table.Table
        One row per source in the scene's order, with the columns of
        :func:`~astromix.fitting.scene_catalog` (as :func:`fit_scene`
        returns), plus ``patch`` (the id of the patch where the source was
        active), ``fit_ok`` (False for the sources of failed patches) and
        ``at_bound`` (True where a free parameter of the source ended at a
        bound: its error is NaN and its value deserves a look).

    Raises
    ------
    InputError
        As :func:`make_patches`; ``passes`` < 1; an unknown keyword; and,
        without ``return_exceptions``, a patch's own astromix error, with the
        patch's label in front of the message.
    BatchError
        A patch failed with another exception (without ``return_exceptions``).

    Notes
    -----
    The errors are those of each patch's fit, with the neighbours held
    fixed: the covariance between sources in different patches is not
    estimated.

    References
    ----------
    .. [1] B. D. Johnson et al., forcepho: forward-modelling photometry of galaxies in
       many images with Gaussian mixtures; https://github.com/bd-j/forcepho (the
       "superscene": active sources fitted, neighbours held fixed).

    Examples
    --------
    Two stars 10 arcsec apart, fitted in two patches (``executor="serial"``
    here; a process pool, a dask or an MPI executor in real use):

    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from astromix import Exposure, GaussianMixture, SceneModel, StarSource
    >>> from astromix.fitting import fit_patches
    >>> w = WCS(naxis=2)
    >>> w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.crval, w.wcs.crpix = [150.0, 2.0], [50.5, 50.5]
    >>> w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    >>> psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    >>> truth = SceneModel([StarSource(150.0 + dx / 3600, 2.0, 100.0, name=f"s{k}")
    ...                     for k, dx in enumerate((-5.0, 5.0))])
    >>> blank = Exposure(np.zeros((100, 100)), wcs=w, psf=psf, band="r")
    >>> rng = np.random.default_rng(0)
    >>> image = truth.render(blank) + rng.normal(0, 0.1, (100, 100))
    >>> exposure = Exposure(image, uncertainty=np.full((100, 100), 0.1), wcs=w, psf=psf,
    ...                     band="r")
    >>> fitted, catalog = fit_patches(truth, [exposure], patch_size=6, border=2,
    ...                               executor="serial", progress=False)
    >>> print(catalog["id", "patch", "fit_ok"])
     id patch fit_ok
    --- ----- ------
     s0     0   True
     s1     1   True
    >>> bool(np.all(np.abs(catalog["flux"] - 100.0) < 4 * catalog["flux_err"]))
    True

    See also ``benchmarks/large_field.py`` and the "Large fields in patches"
    section of the scaling-out guide.
    """
    from ..backends import get_backend
    from ..parallel import ItemFailure, parallel_map
    from .scene import scene_catalog

    t0 = time.perf_counter()
    scene = _as_scene(scene, "fit_patches")
    allowed = {"background", "max_shift", "maxiter", "relinearize", "dtype", "backend",
               "fitter"}
    unknown = sorted(set(fit_kwargs) - allowed)
    if unknown:
        raise InputError(f"fit_patches got unknown keyword(s) {unknown}; fit_scene takes "
                         f"{sorted(allowed)}")
    if isinstance(passes, bool) or not isinstance(passes, int | np.integer) or passes < 1:
        raise InputError(f"passes must be an integer >= 1, got {passes!r}")
    fit_kwargs = dict(fit_kwargs)
    fit_kwargs["backend"] = get_backend(fit_kwargs.get("backend")).name
    if kernel_threads is None and not (isinstance(executor, str) and executor == "serial"):
        kernel_threads = 1
    # the max_shift bounds around the scene's positions, once: every pass keeps them (re-set
    # around each pass's result, they would let a source drift passes * max_shift)
    max_shift = _limit(fit_kwargs.get("max_shift", _DEFAULT_MAX_SHIFT), "max_shift", u.arcsec)
    scene = _bound_positions(scene, max_shift)
    patches = make_patches(scene, exposures, patch_size=patch_size, border=border, halo=halo)
    func = functools.partial(_fit_patch, fit_kwargs=fit_kwargs, kernel_threads=kernel_threads,
                             retry=bool(retry))
    current = scene
    n = scene.n_sources
    names = scene.param_names
    for k in range(int(passes)):
        if k:
            sources = current.sources
            patches = [patch._with_sources(sources) for patch in patches]
        # the costliest patches first (the fit's cost grows like n_active^2), so that the
        # workers finish together; the results are put back in the patches' order
        order = sorted(range(len(patches)), key=lambda j: (-patches[j].n_active ** 2,
                                                          -patches[j].npix, j))
        done = parallel_map(func, [patches[j] for j in order], executor=executor,
                            max_workers=max_workers, progress=progress,
                            desc=f"fit_patches pass {k + 1}",
                            labels=[patches[j].label for j in order],
                            return_exceptions=return_exceptions)
        results = [None] * len(patches)
        for j, result in zip(order, done):
            results[j] = result
        merged = scene.copy() if k == 0 else current.copy()
        values = np.array(merged.parameters, dtype=float)
        std = {}
        patch_of = np.full(n, -1, dtype=int)
        ok = np.ones(n, dtype=bool)
        at_bound = np.zeros(n, dtype=bool)
        failures = []
        for patch, result in zip(patches, results):
            patch_of[patch.active] = patch.index
            if isinstance(result, ItemFailure):
                # index: the patch id (parallel_map saw the patches in another order)
                result = ItemFailure(label=result.label, index=patch.index,
                                     exception=result.exception, traceback=result.traceback)
                failures.append(result)
                ok[patch.active] = False
                continue
            at_bound[patch.active] = result["at_bound"]
            for i, vals, errs in zip(patch.active, result["values"], result["errors"]):
                idx = scene.source_index(i)
                for key, v in vals.items():
                    values[idx[key]] = v
                    if np.isfinite(errs[key]):
                        std[names[idx[key]]] = errs[key]
        merged.parameters = values
        current = merged
    table = _patch_table(patches, results)
    catalog = scene_catalog(current, std)
    catalog["patch"] = patch_of
    catalog["fit_ok"] = ok
    catalog["at_bound"] = at_bound
    catalog.meta["n_patches"] = len(patches)
    current.fit_info = {"patches": table, "param_std": std, "failures": failures,
                        "passes": int(passes), "time_s": time.perf_counter() - t0}
    log.info("fit_patches: %d sources in %d patches, %d failed, %.1f s", n, len(patches),
             len(failures), current.fit_info["time_s"])
    return current, catalog


def _patch_table(patches, results):
    from ..parallel import ItemFailure

    rows = []
    for patch, result in zip(patches, results):
        failed = isinstance(result, ItemFailure)
        rows.append({"patch": patch.index, "label": patch.label, "row": patch.grid[0],
                     "col": patch.grid[1], "n_active": patch.n_active,
                     "n_fixed": patch.n_fixed, "n_exposures": len(patch.exposures),
                     "npix": patch.npix,
                     "chi2": np.nan if failed else result["chi2"],
                     "dof": -1 if failed else result["dof"],
                     "nfev": -1 if failed else result["nfev"],
                     "retried": False if failed else result["retried"],
                     "time_s": np.nan if failed else result["time_s"],
                     "ok": not failed,
                     "error": (f"{type(result.exception).__name__}: {result.exception}"
                               if failed else "")})
    names = ["patch", "label", "row", "col", "n_active", "n_fixed", "n_exposures", "npix",
             "chi2", "dof", "nfev", "retried", "time_s", "ok", "error"]
    if not rows:
        return Table(names=names)
    return Table(rows=[[r[c] for c in names] for r in rows], names=names)
