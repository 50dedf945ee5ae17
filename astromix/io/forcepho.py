r"""PSF Gaussian mixtures in forcepho's HDF5 format.

forcepho (B. D. Johnson et al., https://github.com/bd-j/forcepho) reads the
PSF of every band as a Gaussian mixture from an HDF5 file.  This module writes
and reads that format with `h5py <https://www.h5py.org>`_ (an optional
dependency, imported only when a function is called).

Layout
------
One group per band, named as the band (e.g. ``"F200W"``; forcepho's
``make_psf.py`` and ``astromix psf-mixture`` write it in upper case, and
forcepho looks it up so; the readers here fall back to a match regardless of
case, and the writer replaces the group so found, keeping its name)::

    /<band>                      group
        attrs["n_psf_per_source"]  int32 scalar = nradii * ngauss
        attrs["arcsec_per_pixel"]  float64 scalar, optional
        parameters                 structured dataset, shape (nloc, nradii * ngauss)
        detector_locations         float64 dataset, shape (2, nloc), optional

``parameters`` has the fields

============  =======  ====================================================
field         type     meaning
============  =======  ====================================================
amp           float32  amplitude (fraction of the PSF's flux) of the component
xcr, ycr      float32  centre (x, y) relative to the PSF centre [science px]
Cxx, Cyy      float32  variances along x and y [science px^2]
Cxy           float32  covariance [science px^2]
sersic_bin    int32    index of the Sersic-mixture radius the component is for
============  =======  ====================================================

Row ``i`` holds the PSF at detector location ``i``; within a row the
components are ordered bin-major: bin 0's ``ngauss`` components, then bin 1's,
and so on (forcepho documents the same data as shape ``(nloc, nradii,
ngauss)``, flattened by its writers).  forcepho's ``make_psf.py`` fits one PSF
and replicates it into all ``nradii`` (9) Sersic bins, its components sorted by
decreasing amplitude; :func:`write_psf_mixture` does the same.

The amplitudes are those forcepho's ``make_psf.py`` keeps: the fitted ones, in
the normalisation of a PSF image of unit sum.  A mixture fitted to a trimmed
PSF image holds only part of the PSF's flux, so they sum to that part (e.g.
0.92), not to 1; forcepho renders a source's flux with them as they are, so
its fluxes are total fluxes.  astromix's PSF models renormalise a PSF to unit
sum, so ``GaussianMixturePSF(read_psf_mixture(...))`` is the unit-flux shape,
and the amplitude sum read back (the mixture's ``flux``) is the aperture
correction of the fluxes measured with it (see
:func:`astromix.fitting.fit_psf_mixture`).

``detector_locations`` is stored as two rows, x then y [detector px, origin 0],
because forcepho's ``PSFStore.lookup`` unpacks it as ``xp, yp =
detector_locations[:]`` and uses the PSF nearest to a source; the functions
here take and return the locations as ``(nloc, 2)`` arrays.

Writes never lose data: the file is copied to a temporary file in the same
folder, only the band's group is replaced in the copy, and the copy is renamed
over the original (``os.replace``).  Other bands and file attributes are kept
as they are; an error or an interruption leaves the original file unchanged.
HDF5 does not reclaim the space of a deleted group, so a file rewritten many
times grows slowly (``h5repack`` compacts it).
"""

import contextlib
import errno
import logging
import numbers
import os
from collections.abc import Sequence

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from ..mixtures import GaussianMixture

__all__ = ["write_psf_mixture", "read_psf_mixture", "read_psf_locations", "PSF_DTYPE"]

log = logging.getLogger("astromix")

#: Centre field names written by astromix (and forcepho's ``make_psf.py``).
PSF_FIELDS = ("amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy")

#: dtype of one element of the ``parameters`` dataset.
PSF_DTYPE = np.dtype([(name, np.float32) for name in PSF_FIELDS] + [("sersic_bin", np.int32)])

_CENTRE_NAMES = (("xcr", "ycr"), ("xcen", "ycen"))

__doctest_requires__ = {("write_psf_mixture", "read_psf_mixture", "read_psf_locations"):
                        ["h5py"]}


def _import_h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is installed for the tests
        raise ImportError("reading and writing forcepho PSF files needs h5py "
                          "(pip install h5py, or astromix[all])") from exc
    return h5py


# -- writing ------------------------------------------------------------------------------
def write_psf_mixture(path, band, psf, *, locations=None, n_sersic_bins=9, overwrite=True,
                      arcsec_per_pixel=None, flux_fraction=None):
    """Write a PSF Gaussian mixture into a forcepho PSF file (HDF5).

    The band's group is created, or replaced when ``overwrite`` is true; every
    other object in the file is kept.  The layout is forcepho's (Johnson et
    al.; see :mod:`astromix.io.forcepho`): dataset ``<band>/parameters``, a
    structured array of shape ``(nloc, n_sersic_bins * ngauss)`` with float32
    fields ``amp, xcr, ycr, Cxx, Cyy, Cxy`` and int32 ``sersic_bin``, the same
    PSF replicated into every Sersic bin (bin-major: bin ``b`` holds elements
    ``b * ngauss`` to ``(b + 1) * ngauss - 1``), components sorted by
    decreasing amplitude; group attribute ``n_psf_per_source = n_sersic_bins *
    ngauss``; optional dataset ``detector_locations`` (shape ``(2, nloc)``,
    rows x and y) and attribute ``arcsec_per_pixel``.  Uses h5py.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file; created if missing.  A symbolic link is followed and its
        target rewritten.
    band : str
        Band (filter) name, the group name, e.g. ``"F200W"``; no ``"/"``.
        A new band is written exactly as given; forcepho looks bands up in
        upper case (its ``make_psf.py`` writes ``band.upper()``, as
        ``astromix psf-mixture`` does).  An existing band is found as
        :func:`read_psf_mixture` finds it: the group of exactly that name,
        else the only group whose name matches it regardless of case (e.g.
        ``"f200w"`` finds ``F200W``), which is replaced under its own name.
    psf : GaussianMixture, object with a ``.mixture`` GaussianMixture, or sequence of them
        The PSF in science-image pixels, centres relative to the PSF centre
        [px], covariances [px^2]; e.g. a :class:`~astromix.GaussianMixturePSF`
        (its ``.mixture`` is written).  A sequence gives one PSF per detector
        location (a spatially varying PSF); all must have the same number of
        components.  Amplitudes are written as they are (forcepho expects them
        to sum to about 1), unless ``flux_fraction`` applies.
    locations : array-like, shape (nloc, 2), optional
        Detector (x, y) [px, origin 0] of each PSF, in the order of ``psf``;
        written as ``detector_locations``.  A single PSF also accepts shape
        (2,).  Without it forcepho uses location 0 for every source.
    n_sersic_bins : int, optional
        Number of Sersic-mixture radii the PSF is replicated into (forcepho's
        Sersic mixtures have 9; its GPU kernel allows at most 10).
    overwrite : bool, optional
        Replace the existing group of the band (default).  If false and the
        band exists (in any case), `InputError` is raised and the file is
        not touched.
    arcsec_per_pixel : float or Quantity, optional
        Pixel scale of the science image [arcsec / px], stored as the group
        attribute ``arcsec_per_pixel``.  A Quantity in angle or angle/pixel
        units is converted.
    flux_fraction : float or sequence of float, optional
        What the amplitudes of each PSF are scaled to sum to (one value for
        all, or one per PSF), finite and > 0: forcepho's convention, the
        fraction of the PSF's flux the mixture holds (see
        :func:`astromix.fitting.fit_psf_mixture`).  Default: for a PSF with
        ``fit_info["flux_fraction"]`` (a
        :func:`~astromix.fitting.fit_psf_mixture` result, a unit-flux
        mixture of a trimmed image) that value, so the file holds the fitted
        amplitudes as forcepho's ``make_psf.py`` writes them; otherwise the
        amplitudes as they are.  ``1.0`` writes unit-sum amplitudes.

    Returns
    -------
    None
        The PSF is written to ``path`` in forcepho's PSF-mixture HDF5 format
        (the layout of forcepho's ``make_psf.py`` and ``PSFStore``; see
        :mod:`astromix.io.forcepho`).

    Raises
    ------
    InputError
        On a bad band name, PSF, location array, bin count, pixel scale or
        ``flux_fraction`` (not finite and > 0, a count differing
        from the PSFs', or a PSF whose amplitudes have no positive sum); if
        a covariance is not positive definite (or a value not finite) once
        rounded to float32; if ``path`` exists but is not an HDF5 file or its
        internal structure is damaged (h5py's RuntimeError, ValueError,
        KeyError, TypeError or OSError without errno, found before or while
        writing; the file is left unchanged); if the band exists (matched
        regardless of case) and ``overwrite`` is false (the message names the
        file and the band); or if the file has several groups whose names
        differ from ``band`` only in case (the message lists them; the file
        is left unchanged).
    ImportError
        If h5py is not installed.
    OSError
        If the file or its folder cannot be written, e.g. the disk is full (the
        original is kept).

    Notes
    -----
    The write goes to a temporary file ``.<name>.<random>.tmp`` in the same
    folder (a copy of the existing file, if any, keeping its permissions),
    which is flushed to disk and then renamed over ``path`` with
    :func:`os.replace`.  An exception or interruption (KeyboardInterrupt) at
    any point removes the temporary file and leaves ``path`` byte-identical.

    A mixture whose flux-weighted centroid is more than 1 px from the origin
    is written, with a warning on the ``astromix`` logger: forcepho adds the
    component centres to the source position, so an uncentred PSF shifts
    every source.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from astromix import GaussianMixture
    >>> from astromix.io.forcepho import write_psf_mixture, read_psf_mixture
    >>> psf = GaussianMixture([0.3, 0.7], [[0, 0], [0, 0]],
    ...                       [np.eye(2) * 9, np.eye(2) * 1.5])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "psf_mixtures.h5")
    >>> write_psf_mixture(path, "F200W", psf, arcsec_per_pixel=0.03)
    >>> back = read_psf_mixture(path, "F200W")
    >>> back.amp  # sorted by decreasing amplitude
    array([0.69999999, 0.30000001])
    >>> tmp.cleanup()
    """
    h5py = _import_h5py()
    shown = os.fspath(path)
    path = os.path.realpath(shown)  # write through a symbolic link, not over it
    band = _check_band(band)
    mixtures = _scale_amplitudes(_as_mixtures(psf), _flux_fractions(psf, flux_fraction))
    n_sersic_bins = _check_n_sersic_bins(n_sersic_bins)
    params = _pack(mixtures, n_sersic_bins)
    locs = _check_locations(locations, len(mixtures))
    scale = _check_scale(arcsec_per_pixel)

    # Every check happens before anything is written.
    exists = os.path.lexists(path)
    if exists:
        if not os.path.isfile(path):
            raise InputError(f"{shown} exists and is not a regular file")
        try:
            with h5py.File(path, "r") as f:
                list(f)  # reads the root group: damaged metadata fails here, not mid-write
                existing = _existing_band(f, shown, band)
        except InputError:
            raise
        except OSError as exc:
            raise InputError(f"{shown} exists but is not a readable HDF5 file ({exc}); "
                             "refusing to replace it") from None
        except _H5_ERRORS as exc:
            raise InputError(f"{shown}, band {band!r}: the HDF5 file is damaged "
                             f"({type(exc).__name__}: {exc}); refusing to write into it") from None
        if existing is not None:
            if not overwrite:
                same = "" if existing == band else f" (as {existing!r})"
                raise InputError(f"{shown} already has band {band!r}{same} and "
                                 "overwrite=False; the file was left unchanged")
            if existing != band:
                log.debug("%s: band %r replaces group %r", shown, band, existing)
            band = existing  # the name forcepho (and the file's other users) look up

    with atomic_path(path, copy_existing=exists) as tmp:
        # h5py's errors on the file's structure (not those of _fill_group) mean damage
        with _damaged_write(shown, band):
            f = h5py.File(tmp, "r+" if exists else "w")
        try:
            with _damaged_write(shown, band):
                if band in f:
                    del f[band]
                group = f.create_group(band)
            _fill_group(group, params, locs, scale)
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        with _damaged_write(shown, band):
            f.close()  # writes the metadata back: where some damage shows
    log.debug("wrote forcepho PSF %s/%s: %d location(s), %d x %d components", shown, band,
              params.shape[0], n_sersic_bins, params.shape[1] // n_sersic_bins)


def _fill_group(group, params, locations, scale):
    """Write the datasets and attributes of one band's group."""
    group.create_dataset("parameters", data=params)
    group.attrs["n_psf_per_source"] = np.int32(params.shape[1])
    if locations is not None:
        # Rows x and y: forcepho's PSFStore.lookup unpacks ``xp, yp = dataset[:]``.
        group.create_dataset("detector_locations", data=np.ascontiguousarray(locations.T))
    if scale is not None:
        group.attrs["arcsec_per_pixel"] = np.float64(scale)


def _existing_band(f, path, band):
    """The name of the object of ``f`` that holds ``band``, by :func:`_band_group`'s rule
    (the exact name, else the only group whose name matches it regardless of case), or
    None.  InputError if several groups' names differ from ``band`` only in case."""
    same = _case_matches(f, band)
    if len(same) > 1:
        raise InputError(f"{path} has several groups that differ from band {band!r} only in "
                         f"case: {', '.join(repr(g) for g in same)}; forcepho would read one "
                         "and astromix another: remove all but one (e.g. with h5py) before "
                         "writing; the file was left unchanged")
    if band in f:
        return band
    return same[0] if same else None


def _check_band(band):
    if not isinstance(band, str) or not band.strip():
        raise InputError(f"band must be a non-empty string, got {band!r}")
    if "/" in band or band in (".", ".."):
        raise InputError(f"band {band!r} cannot be an HDF5 group name (no '/', '.' or '..')")
    return band


def _one_mixture(obj, where):
    if isinstance(obj, GaussianMixture):
        return obj
    mixture = getattr(obj, "mixture", None)
    if isinstance(mixture, GaussianMixture):
        return mixture
    raise InputError(f"{where} must be a GaussianMixture or have a .mixture GaussianMixture "
                     f"(e.g. GaussianMixturePSF), got {type(obj).__name__}")


def _as_mixtures(psf):
    """The list of GaussianMixture, one per location."""
    if isinstance(psf, GaussianMixture) or isinstance(getattr(psf, "mixture", None),
                                                      GaussianMixture):
        mixtures = [_one_mixture(psf, "psf")]
    elif isinstance(psf, Sequence) and not isinstance(psf, (str, bytes)):
        if len(psf) == 0:
            raise InputError("psf is an empty sequence: give at least one PSF")
        mixtures = [_one_mixture(p, f"psf[{i}]") for i, p in enumerate(psf)]
    else:
        raise InputError("psf must be a GaussianMixture, an object with a .mixture "
                         "GaussianMixture, or a sequence of them, got "
                         f"{type(psf).__name__}")
    k = len(mixtures[0])
    if k == 0:
        raise InputError("the PSF mixture has no components")
    for i, m in enumerate(mixtures):
        if len(m) != k:
            raise InputError("all PSFs must have the same number of components: "
                             f"location 0 has {k}, location {i} has {len(m)}")
    for i, m in enumerate(mixtures):
        flux = m.flux
        if flux != 0:
            centroid = (m.amp[:, None] * m.mean).sum(0) / flux
            if np.hypot(*centroid) > 1.0:
                log.warning("PSF at location %d has its centroid at (%.3g, %.3g) px, not at "
                            "the origin: forcepho expects centres relative to the PSF centre",
                            i, *centroid)
    return mixtures


def _flux_fractions(psf, flux_fraction):
    """Per PSF: the sum its amplitudes are written with (None: as they are)."""
    items = (list(psf) if isinstance(psf, Sequence) and not isinstance(psf, (str, bytes))
             else [psf])
    if flux_fraction is None:
        values = []
        for item in items:
            info = getattr(item, "fit_info", None)
            values.append(info.get("flux_fraction") if isinstance(info, dict) else None)
        where = "fit_info['flux_fraction']"
    else:
        try:
            arr = np.array(flux_fraction, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("flux_fraction must be a number or a sequence of numbers, got "
                             f"{flux_fraction!r}") from None
        if arr.ndim == 0:
            arr = np.full(len(items), float(arr))
        if arr.shape != (len(items),):
            raise InputError(f"flux_fraction has {arr.size} value(s) for {len(items)} PSF(s)")
        values = list(arr)
        where = "flux_fraction"
    for i, v in enumerate(values):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise InputError(f"{where} of PSF {i} must be a finite number > 0, the fraction "
                             f"of the PSF's flux its mixture holds; got {v!r}")
    return values


def _scale_amplitudes(mixtures, fractions):
    """The mixtures with their amplitudes scaled to sum to ``fractions`` (None: kept)."""
    out = []
    for i, (m, frac) in enumerate(zip(mixtures, fractions)):
        if frac is None:
            out.append(m)
            continue
        flux = m.flux
        if not flux > 0:
            raise InputError(f"PSF at location {i}: its amplitudes sum to {flux!r}; they cannot "
                             f"be scaled to the flux fraction {frac}")
        out.append(GaussianMixture(m.amp * (float(frac) / flux), m.mean, m.cov))
    return out


def _check_n_sersic_bins(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InputError(f"n_sersic_bins must be a positive integer, got {n!r}")
    return int(n)


def _pack(mixtures, n_bins):
    """The ``parameters`` array, shape (nloc, n_bins * ngauss), checked in float32."""
    nloc, k = len(mixtures), len(mixtures[0])
    out = np.zeros((nloc, n_bins, k), dtype=PSF_DTYPE)
    for i, m in enumerate(mixtures):
        order = np.argsort(-m.amp, kind="stable")
        values = {"amp": m.amp[order], "xcr": m.mean[order, 0], "ycr": m.mean[order, 1],
                  "Cxx": m.cov[order, 0, 0], "Cyy": m.cov[order, 1, 1],
                  "Cxy": m.cov[order, 0, 1]}
        with np.errstate(over="ignore"):
            values = {name: v.astype(np.float32) for name, v in values.items()}
        for name, v in values.items():
            bad = np.nonzero(~np.isfinite(v))[0]
            if bad.size:
                raise InputError(f"PSF at location {i}: {name} of component(s) "
                                 f"{order[bad].tolist()} does not fit in float32")
        cxx, cyy, cxy = (values[n].astype(np.float64) for n in ("Cxx", "Cyy", "Cxy"))
        bad = np.nonzero(~((cxx > 0) & (cyy > 0) & (cxx * cyy - cxy * cxy > 0)))[0]
        if bad.size:
            raise InputError(f"PSF at location {i}: the covariance of component(s) "
                             f"{order[bad].tolist()} is not positive definite once rounded "
                             "to float32 (too elongated or too small)")
        for name, v in values.items():
            out[name][i] = v
    out["sersic_bin"] = np.arange(n_bins, dtype=np.int32)[None, :, None]
    return out.reshape(nloc, n_bins * k)


def _check_locations(locations, nloc):
    if locations is None:
        return None
    try:
        loc = np.array(locations, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"locations must be numeric, shape (nloc, 2): {exc}") from None
    if loc.shape == (2,) and nloc == 1:
        loc = loc[None, :]
    if loc.shape != (nloc, 2):
        raise InputError(f"locations must have shape (nloc, 2) = ({nloc}, 2), one (x, y) per "
                         f"PSF, got {loc.shape}")
    if not np.all(np.isfinite(loc)):
        raise InputError("locations has non-finite values")
    return loc


def _check_scale(scale):
    if scale is None:
        return None
    if hasattr(scale, "unit"):
        from astropy import units as u

        try:
            value = scale.to_value(u.arcsec / u.pix)
        except u.UnitsError:
            try:
                value = scale.to_value(u.arcsec)
            except u.UnitsError:
                raise InputError("arcsec_per_pixel must be in angle or angle/pixel units, "
                                 f"got {scale.unit}") from None
    else:
        value = scale
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"arcsec_per_pixel must be a number, got {scale!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"arcsec_per_pixel must be positive and finite, got {value}")
    return value


# -- reading ------------------------------------------------------------------------------
def read_psf_mixture(path, band, *, location=None):
    """Read the PSF Gaussian mixture of a band from a forcepho PSF file (HDF5).

    Reads forcepho's layout (Johnson et al.; see :mod:`astromix.io.forcepho`)
    with h5py: dataset ``<band>/parameters``, a structured array of shape
    ``(nloc, nradii * ngauss)`` or ``(nloc, nradii, ngauss)`` (a 1-d array is
    read as one location) with fields ``amp``, ``xcr`` and ``ycr`` (or
    ``xcen`` and ``ycen``), ``Cxx``, ``Cyy``, ``Cxy`` and ``sersic_bin``
    (optional for the 3-d shape, whose second axis is the bin); forcepho's
    older single field ``gauss_params`` of 6 values (amp, x, y, Cxx, Cyy, Cxy)
    is read too.

    forcepho replicates one PSF into every Sersic bin, so only the components
    of the lowest ``sersic_bin`` (bin 0) are returned; if other bins hold
    different components a warning is logged on the ``astromix`` logger.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    band : str
        The band (group) name.  If the file has no group of exactly that name,
        the one group whose name matches it regardless of case is read (e.g.
        ``"f200w"`` finds ``F200W``, as forcepho's ``make_psf.py`` writes it,
        and ``"F200W"`` finds a lower-case ``f200w`` of older files).
    location : int, optional
        Index of the detector location to read (negative indices count from
        the end).  By default every location is read.

    Returns
    -------
    GaussianMixture or list of GaussianMixture
        The PSF in science pixels (float64 copies of the float32 values),
        centres relative to the PSF centre [px], covariances [px^2], in the
        file's component order.  Amplitudes as in the file: from forcepho's
        ``make_psf.py`` and ``astromix psf-mixture`` (and
        :func:`write_psf_mixture` given a
        :func:`~astromix.fitting.fit_psf_mixture` result)
        they sum to the fraction of the PSF's flux the mixture holds (its
        ``flux``; e.g. 0.92), not to 1.  astromix's PSF models
        (:class:`~astromix.GaussianMixturePSF`, the source models,
        :class:`~astromix.Exposure`) renormalise them to the unit-flux shape;
        divide a flux measured with that shape by ``flux`` for the total.
        A list, one per location, when the file has several locations and
        ``location`` is None; a single mixture otherwise.  Wrap it as
        ``GaussianMixturePSF(mixture)`` for a model.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    InputError
        If the file is not HDF5 or its internal structure is damaged (the
        message names the file, the band and h5py's error), has no such band
        (the message lists the bands present) or several differing only in
        case from ``band`` and none exactly, the dataset is malformed
        (missing fields, wrong shape, ``n_psf_per_source`` inconsistent,
        covariance not positive definite, non-finite values: the message
        names the file, the band and the problem), or ``location`` is out of
        range.
    ImportError
        If h5py is not installed.

    See Also
    --------
    read_psf_locations : the detector location of each PSF.
    write_psf_mixture
    """
    path = os.fspath(path)
    with _damaged(path, band), _open(path) as f:
        group = _band_group(f, path, band)
        fields, bins = _read_parameters(group, path, band)
    nloc = fields["amp"].shape[0]
    if location is None:
        indices = range(nloc)
    else:
        if isinstance(location, bool) or not isinstance(location, numbers.Integral):
            raise InputError(f"location must be an integer index, got {location!r}")
        if not -nloc <= location < nloc:
            raise InputError(f"{path}, band {band!r}: location {location} is out of range; the "
                             f"file has {nloc} location(s)")
        indices = [int(location) % nloc]
    mixtures = [_location_mixture(fields, bins, i, path, band) for i in indices]
    if location is None and nloc > 1:
        return mixtures
    return mixtures[0]


def read_psf_locations(path, band):
    """Read the detector locations of the PSFs of a band in a forcepho PSF file.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file (read with h5py).
    band : str
        The band (group) name, matched regardless of case when no group has
        exactly that name (as in :func:`read_psf_mixture`).

    Returns
    -------
    ndarray of shape (nloc, 2) or None
        Detector (x, y) [px] of each PSF, in the order of the rows of
        ``parameters``; None if the group has no ``detector_locations``.
        On disk the dataset is ``(2, nloc)`` (rows x and y, as forcepho's
        ``PSFStore.lookup`` reads it); ``(nloc, 2)`` is accepted too, and an
        ambiguous ``(2, 2)`` is read as forcepho's rows x and y.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    InputError
        If the file is not HDF5 or is damaged, has no such band (or several
        differing only in case, none exactly), or ``detector_locations``
        does not match the number of locations or is not finite.
    """
    path = os.fspath(path)
    with _damaged(path, band), _open(path) as f:
        group = _band_group(f, path, band)
        ds = group.get("detector_locations")
        if ds is None:
            return None
        params = group.get("parameters")
        nloc = _n_locations(params)
        try:
            arr = np.asarray(ds[()], dtype=np.float64)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}, band {band!r}: detector_locations is not numeric "
                             f"({exc})") from None
    if nloc is None:
        nloc = arr.shape[-1] if arr.ndim == 2 and arr.shape[0] == 2 else arr.shape[0]
    if arr.shape == (2, nloc):
        loc = arr.T.copy()
    elif arr.shape == (nloc, 2):
        loc = arr
    elif arr.shape == (2,) and nloc == 1:
        loc = arr[None, :]
    else:
        raise InputError(f"{path}, band {band!r}: detector_locations has shape {arr.shape}, "
                         f"expected (2, {nloc}) or ({nloc}, 2) for {nloc} location(s)")
    if not np.all(np.isfinite(loc)):
        raise InputError(f"{path}, band {band!r}: detector_locations has non-finite values")
    return loc


#: What h5py raises for damaged HDF5 metadata once a file is open, besides an
#: OSError without errno (one with an errno is an I/O error: disk full, ...).
_H5_ERRORS = (RuntimeError, ValueError, KeyError, TypeError)


@contextlib.contextmanager
def _damaged(path, band):
    """Turn h5py's errors reading a damaged file into InputError naming the file and band."""
    try:
        yield
    except (InputError, FileNotFoundError):
        raise
    except (OSError, *_H5_ERRORS) as exc:
        raise InputError(f"{path}, band {band!r}: cannot read the HDF5 file, damaged? "
                         f"({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _damaged_write(path, band):
    """The same for writing; an OSError with an errno (disk full, ...) is let through."""
    try:
        yield
    except (OSError, *_H5_ERRORS) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise InputError(f"{path}, band {band!r}: cannot write into the HDF5 file, it is "
                         f"damaged ({type(exc).__name__}: {exc}); the file was left "
                         "unchanged") from None


def _open(path):
    h5py = _import_h5py()
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such forcepho PSF file", path)
    try:
        return h5py.File(path, "r")
    except (OSError, *_H5_ERRORS) as exc:
        raise InputError(f"{path} is not a readable HDF5 file ({exc})") from None


def _case_matches(f, band):
    """Sorted names of the groups of ``f`` whose name is ``band`` regardless of case."""
    h5py = _import_h5py()
    return sorted(k for k in f if k.upper() == band.upper() and isinstance(f.get(k), h5py.Group))


def _band_group(f, path, band):
    """The group of ``band``; else the only group whose upper-case name is ``band.upper()``."""
    h5py = _import_h5py()
    if not isinstance(band, str):
        raise InputError(f"band must be a string, got {band!r}")
    valid = bool(band) and "/" not in band
    group = f.get(band) if valid else None
    if not isinstance(group, h5py.Group) and valid:
        # forcepho's make_psf.py writes band.upper(); older files may have other cases
        same = _case_matches(f, band)
        if len(same) > 1:
            raise InputError(f"{path} has no band {band!r} but several that differ from it "
                             f"only in case: {', '.join(repr(g) for g in same)}; give one "
                             "exactly")
        if same:
            log.debug("%s: band %r read from group %r", path, band, same[0])
            group = f[same[0]]
    if not isinstance(group, h5py.Group):
        groups = sorted(k for k in f if isinstance(f.get(k), h5py.Group))
        present = ", ".join(repr(g) for g in groups) or "none"
        raise InputError(f"{path} has no band {band!r}; bands present: {present}")
    return group


def _n_locations(params):
    shape = getattr(params, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return 1 if len(shape) == 1 else shape[0]


def _read_parameters(group, path, band):
    """Per-field float64 arrays of shape (nloc, N) and the int bins (nloc, N)."""
    h5py = _import_h5py()
    where = f"{path}, band {band!r}"
    ds = group.get("parameters")
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{where}: no 'parameters' dataset")
    arr = ds[()]
    names = arr.dtype.names
    if names is None:
        raise InputError(f"{where}: 'parameters' is not a structured array with fields "
                         f"{', '.join(PSF_DTYPE.names)} (dtype {arr.dtype})")
    if arr.ndim not in (1, 2, 3) or arr.size == 0:
        raise InputError(f"{where}: 'parameters' has shape {arr.shape}; expected "
                         "(nloc, nradii * ngauss) or (nloc, nradii, ngauss), not empty")
    if arr.ndim == 1:
        arr = arr[None]
    try:
        fields = _fields(arr, names)
    except KeyError as exc:
        raise InputError(f"{where}: 'parameters' lacks field(s) {exc.args[0]}; it has "
                         f"{', '.join(names)}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: 'parameters' fields are not numeric ({exc})") from None
    if "sersic_bin" in names:
        bins = np.asarray(arr["sersic_bin"])
        if bins.dtype.kind not in "iu":
            raise InputError(f"{where}: field sersic_bin is not an integer ({bins.dtype})")
    elif arr.ndim == 3:
        bins = np.broadcast_to(np.arange(arr.shape[1])[None, :, None], arr.shape)
    else:
        raise InputError(f"{where}: 'parameters' lacks field(s) sersic_bin; it has "
                         f"{', '.join(names)}")
    nloc = arr.shape[0]
    npsf = int(np.prod(arr.shape[1:]))
    fields = {k: v.reshape(nloc, npsf) for k, v in fields.items()}
    bins = np.asarray(bins).reshape(nloc, npsf)
    if "n_psf_per_source" in group.attrs:
        try:
            n_attr = int(np.asarray(group.attrs["n_psf_per_source"]).ravel()[0])
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{where}: attribute n_psf_per_source is not an integer") from None
        if n_attr != npsf:
            raise InputError(f"{where}: attribute n_psf_per_source = {n_attr} but "
                             f"'parameters' has {npsf} components per location")
    return fields, bins


def _fields(arr, names):
    """amp, x, y, Cxx, Cyy, Cxy as float64 arrays; KeyError names what is missing."""
    if "gauss_params" in names and arr.dtype["gauss_params"].shape == (6,):
        gp = np.asarray(arr["gauss_params"], dtype=np.float64)
        return dict(zip(("amp", "x", "y", "Cxx", "Cyy", "Cxy"), np.moveaxis(gp, -1, 0)))
    centre = next((c for c in _CENTRE_NAMES if set(c) <= set(names)), None)
    missing = [n for n in ("amp", "Cxx", "Cyy", "Cxy") if n not in names]
    if centre is None:
        missing[1:1] = ["xcr/xcen", "ycr/ycen"]
    if missing:
        raise KeyError(", ".join(missing))
    keys = {"amp": "amp", "x": centre[0], "y": centre[1], "Cxx": "Cxx", "Cyy": "Cyy",
            "Cxy": "Cxy"}
    return {k: np.asarray(arr[n], dtype=np.float64) for k, n in keys.items()}


def _location_mixture(fields, bins, i, path, band):
    b = bins[i]
    b0 = b.min()
    sel = b == b0
    comp = {k: v[i, sel] for k, v in fields.items()}
    cov = np.empty((comp["amp"].shape[0], 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = comp["Cxx"], comp["Cyy"]
    cov[:, 0, 1] = cov[:, 1, 0] = comp["Cxy"]
    try:
        mixture = GaussianMixture(comp["amp"], np.column_stack([comp["x"], comp["y"]]), cov)
    except InputError as exc:
        raise InputError(f"{path}, band {band!r}, location {i} (sersic_bin {b0}): "
                         f"{exc}") from None
    ref = np.stack([v[i, sel] for v in fields.values()])
    for other in np.unique(b):
        if other == b0:
            continue
        rows = np.stack([v[i, b == other] for v in fields.values()])
        if rows.shape != ref.shape or not np.array_equal(rows, ref):
            log.warning("%s, band %r, location %d: sersic_bin %d differs from bin %d; only "
                        "bin %d is read", path, band, i, other, b0, b0)
            break
    return mixture
