r"""Write and read exposures in ASDF and HDF5 files.

:func:`write_exposures` and :func:`read_exposures` store a list of
:class:`~astromix.data.Exposure` in an ASDF file (``.asdf``) or an HDF5 file
(``.h5``, ``.hdf5``).  Both keep the data, the uncertainty (as inverse
variance), the mask, the WCS, a Gaussian-mixture PSF, the band, exposure time,
zero point, name, unit, PSF origin and the JSON-compatible entries of ``meta``.

ASDF layout
-----------
The tree holds a list of exposures under the key ``exposures`` (or
``group``), each tagged ``asdf://astromix.org/astromix/tags/exposure-1.0.0``
(schema ``asdf://astromix.org/astromix/schemas/exposure-1.0.0``, see
:class:`astromix.io.asdf.converters.ExposureConverter`).  A gwcs is stored
natively (``tag:stsci.edu:gwcs/wcs-1.*``), an astropy WCS as the FITS header
string ``fits_wcs`` (``WCS.to_header(relax=True)``: SIP, TPV and other
distortion keywords included), a GaussianMixturePSF with its own tag.

HDF5 layout
-----------
One group per exposure, named by the exposure, at the root (or under
``group``), written with h5py::

    /<name>                        group, attrs:
        astromix_type                "Exposure"
        astromix_layout              "exposure-1.0.0"
        astromix_write_order         int64, the write counter: one more than the largest
                                     of the exposure groups beside it when written;
                                     read_exposures sorts by it (groups without it,
                                     from older files, first, in the file's order)
        name, band, unit             str (absent when None; unit "" is dimensionless)
        exptime [s], zeropoint [AB]  float64 (absent when None)
        psf_origin                   float64 (2,), (x, y) [px]
        meta                         str, JSON of the JSON-compatible meta entries
        wcs_type                     "fits", "gwcs" or "none"
        wcs_fits_header              str, astropy WCS as a FITS header (relax=True)
    /<name>/data                   float32 or float64 (ny, nx), NaN where the data were
                                   not finite (bad data)
    /<name>/mask                   bool (ny, nx), True = masked by the user (the mask
                                   given to Exposure; the pixels with bad data or
                                   uncertainty are found again from the NaN data and
                                   the zero inverse variance)
    /<name>/inverse_variance       float64 (ny, nx) [1 / data unit^2], absent without
                                   uncertainty; 0 where the uncertainty is invalid
    /<name>/wcs_asdf               uint8 (n,): an ASDF file {"wcs": <gwcs>}
    /<name>/psf                    group, for a GaussianMixturePSF:
        amp (K,), mean (K, 2) [px], cov (K, 2, 2) [px^2]   its unit-flux mixture
        parameters (P,) float64, param_names (P,) str, fixed (P,) bool
        attrs: param_units (P,) str, model_name str, settings_* (its own
        AccuracySettings, when set)

Writes never lose data: the file is written to a temporary file in the same
folder (for HDF5 a copy of the existing file, in which only the written
exposures' groups are replaced; for ASDF the existing tree with the written
exposures replaced or appended), flushed to disk and renamed over the original
(:func:`os.replace`).  An error or an interruption leaves the original file
unchanged.
"""

import contextvars
import io
import json
import logging
import numbers
import os
import shutil
import warnings

import numpy as np

from .._atomic import atomic_path
from ..errors import InputError
from .exposure import Exposure, ExposureWarning, _is_astropy_wcs, _is_gwcs

__all__ = ["write_exposures", "read_exposures"]

log = logging.getLogger("astromix")

#: Layout version of an exposure in HDF5 files (mirrors the ASDF tag version).
HDF5_LAYOUT = "exposure-1.0.0"

#: Default key of the exposure list in ASDF trees.
ASDF_KEY = "exposures"

#: Top-level keys of an ASDF tree that the ASDF standard reserves (core schema ``asdf-1.1.0``):
#: asdf writes its own values there, so they cannot hold exposures.
ASDF_RESERVED_KEYS = ("asdf_library", "history")

#: Attribute of an HDF5 exposure group: its write counter (int64), by which read_exposures
#: orders the exposures (HDF5 lists a group's members alphabetically unless the group was
#: created with track_order, which cannot be turned on for an existing group or root).
HDF5_ORDER_ATTR = "astromix_write_order"

_ASDF_SUFFIXES = (".asdf",)
_HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")

# Set while write_exposures runs: the converter then does not warn again about PSFs
# it cannot store (write_exposures warns once for all of them).
_PSF_WARNED = contextvars.ContextVar("astromix_exposure_psf_warned", default=False)


# -- shared helpers -------------------------------------------------------------------------------

def _format(path):
    name = os.fspath(path).lower()
    if name.endswith(_ASDF_SUFFIXES):
        return "asdf"
    if name.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    raise InputError(f"{os.fspath(path)!r}: unknown file type; use .asdf (ASDF) or .h5/.hdf5 "
                     "(HDF5)")


def _as_list(exposures):
    if isinstance(exposures, Exposure):
        exposures = [exposures]
    try:
        exposures = list(exposures)
    except TypeError:
        raise InputError(f"exposures must be an Exposure or a list of them, got "
                         f"{type(exposures).__name__}") from None
    if not exposures:
        raise InputError("no exposure to write")
    names = []
    for exp in exposures:
        if not isinstance(exp, Exposure):
            raise InputError(f"expected Exposure objects, got {type(exp).__name__}")
        _check_name(exp.name)
        names.append(exp.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"exposure names must be unique in a file; repeated: {dupes}")
    return exposures


def _check_name(name, what="exposure name"):
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"every exposure written to a file needs a name (Exposure(..., "
                         f"name=...)); got {name!r}")
    if "/" in name or name in (".", ".."):
        raise InputError(f"{what} {name!r} cannot be used as a group name (no '/', '.', '..')")
    return name


def json_meta(meta):
    """The JSON-compatible part of ``meta`` (a new dict); other entries are dropped.

    Kept: str keys whose values are None, bool, int, float (NaN/inf kept),
    str, or lists and dicts of those (recursively); NumPy scalars become
    Python numbers.  Dropped (logged at debug level on the ``astromix``
    logger): anything else, e.g. arrays, FITS headers, Quantities.
    """
    if not meta:
        return {}
    out = {}
    dropped = []
    for key, value in meta.items():
        ok, clean = _json_value(value)
        if isinstance(key, str) and ok:
            out[key] = clean
        else:
            dropped.append(str(key))
    if dropped:
        log.debug("meta entries not written (not JSON-compatible): %s", dropped)
    return out


def _json_value(value):
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, np.bool_):
        return True, bool(value)
    if isinstance(value, numbers.Integral):
        return True, int(value)
    if isinstance(value, numbers.Real):
        return True, float(value)
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
        return False, None
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return False, None
        items = {k: _json_value(v) for k, v in value.items()}
        if all(ok for ok, _ in items.values()):
            return True, {k: v for k, (_, v) in items.items()}
        return False, None
    return False, None


def fits_wcs_header(wcs):
    """An astropy WCS as a FITS header string, one card per line.

    ``wcs.to_header(relax=...)`` with every non-standard convention allowed
    (``relax=True``: SIP, TPV and other distortion keywords) and 17
    significant digits (``WCSHDO_P17``), so that the WCS read back maps
    positions as the original does to ~1e-12 px.  Lookup-table distortions
    (Paper IV ``cpdis``/``det2im``, as in HST ``flt`` files) cannot be written
    in a header; they are dropped with an `ExposureWarning`.
    """
    from astropy.wcs import WCSHDO_P17, WCSHDO_all
    from astropy.wcs.wcs import WCSHDO_SIP

    tables = [a for a in ("cpdis1", "cpdis2", "det2im1", "det2im2")
              if getattr(wcs, a, None) is not None]
    if tables:
        warnings.warn(f"the WCS's lookup-table distortions {tables} cannot be stored in a FITS "
                      "header string and are not written", ExposureWarning, stacklevel=4)
    header = wcs.to_header(relax=WCSHDO_all | WCSHDO_P17 | WCSHDO_SIP)
    text = header.tostring(sep="\n", endcard=False, padding=False)
    return "\n".join(card.rstrip() for card in text.split("\n"))


def wcs_from_fits_header(text):
    """An astropy WCS from a FITS header string (cards one per line, or 80-character blocks).

    FITSFixedWarning is silenced.  Raises InputError if the text is not a
    FITS header.
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    if not isinstance(text, str):
        raise InputError(f"the FITS WCS header must be a string, got {type(text).__name__}")
    try:
        header = fits.Header.fromstring(text, sep="\n" if "\n" in text else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(header)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"the stored FITS WCS header could not be read: {exc}") from None


def storable_psf(exposure):
    """The exposure's PSF when a file can store it (a GaussianMixturePSF), else None."""
    from ..models.psf import GaussianMixturePSF

    return exposure.psf if isinstance(exposure.psf, GaussianMixturePSF) else None


def warn_unstored_psf(names, stacklevel=3):
    """One warning naming the exposures whose position-dependent PSF is not written."""
    if names and not _PSF_WARNED.get():
        warnings.warn(f"the PSF of exposure(s) {names} is a position-dependent provider "
                      "(callable or PSFEx model) and is not written; attach it again after "
                      "reading", ExposureWarning, stacklevel=stacklevel)


def stored_pixels(exposure):
    """The data and mask written for ``exposure``, so that reading it back gives the same masks.

    Parameters
    ----------
    exposure : Exposure
        The exposure being written (ASDF or HDF5).

    Returns
    -------
    data : ndarray, shape (ny, nx)
        :attr:`Exposure.data` (its dtype) with NaN on the pixels whose data
        were not finite (the exposure holds 0 there); C-contiguous.
    mask : ndarray of bool, shape (ny, nx)
        The user's mask alone, not :attr:`Exposure.mask` (which also holds the
        pixels with bad data or uncertainty).

    Notes
    -----
    The Exposure constructor finds the bad-data pixels again from the NaN and
    the bad-uncertainty pixels from the zero inverse variance, so the
    exposure read back keeps them masked even when its mask is replaced.
    Writing the full mask and 0 turned them into valid pixels of value 0 as
    soon as the mask was replaced.
    """
    data = exposure.data
    bad = exposure._bad_data
    if bad.any():
        data = np.where(bad, np.array(np.nan, dtype=data.dtype), data)
    return np.ascontiguousarray(data), np.ascontiguousarray(exposure._user_mask, dtype=bool)


#: The Exposure constructor's warnings about the pixels it masks for bad data or uncertainty;
#: they were given when the exposure was first built, not again when a file is read.
_MASKING_WARNING = (r".*pixel\(s\) with (non-finite data|zero, negative or non-finite "
                    r"uncertainty)")


def exposure_from_file(**kwargs):
    """``Exposure(**kwargs)`` for a stored exposure, without re-warning about masked pixels.

    Parameters
    ----------
    **kwargs
        The :class:`Exposure` arguments (``data`` included).

    Returns
    -------
    Exposure
        The pixels with non-finite data (stored as NaN, see
        :func:`stored_pixels`) or a zero inverse variance are masked as usual;
        only the constructor's `ExposureWarning` about them is not given again
        (it was given when the exposure was first built).

    Raises
    ------
    InputError
        As the Exposure constructor.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MASKING_WARNING, category=ExposureWarning)
        return Exposure(**kwargs)


# -- public API -----------------------------------------------------------------------------------

def write_exposures(path, exposures, *, overwrite=False, group=None):
    """Write exposures to an ASDF (``.asdf``) or HDF5 (``.h5``, ``.hdf5``) file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its suffix picks the format.  An existing file is updated:
        exposures of other names (and, in ASDF, other tree entries and the
        history entries; in HDF5, other groups and attributes) and the file's
        permissions are kept.  A symbolic link is followed.
    exposures : Exposure or sequence of Exposure
        Each needs a unique :attr:`~Exposure.name` (no ``/``): it names the
        exposure's HDF5 group and identifies it when a file is updated.
    overwrite : bool, optional
        Replace exposures of the same names already in the file.  If false
        (default) and one exists, InputError is raised and the file is left
        unchanged.
    group : str, optional
        HDF5: the group (path, e.g. ``"scene/night1"``) under which the
        exposure groups are written (created level by level if needed;
        default the root).  Each exposure group gets a write counter
        (attribute ``astromix_write_order``), so that :func:`read_exposures`
        gives the exposures in the order they were written in any HDF5 file,
        also one made by another program (e.g.
        :func:`astromix.io.forcepho.write_psf_mixture` or plain h5py).
        ASDF: the tree key of the exposure list (default ``"exposures"``;
        not ``"asdf_library"`` or ``"history"``, which ASDF reserves).

    Returns
    -------
    None
        The exposures are in the file at ``path``.

    Raises
    ------
    InputError
        If the suffix is unknown, an exposure has no name or a repeated one,
        an exposure of the same name exists and ``overwrite`` is false, a
        level of the HDF5 ``group`` path is a dataset or an astromix exposure,
        the ASDF ``group`` is a key ASDF reserves (``"asdf_library"``,
        ``"history"``), or the existing file is not a readable file of that
        format (it is then not replaced).
    OSError
        If the folder cannot be written (the original file is kept).

    Warns
    -----
    ExposureWarning
        Once, naming the exposures whose PSF is a position-dependent provider
        (a callable or a PSFEx model): such PSFs are not written.  Also when an
        astropy WCS has lookup-table distortions (not storable in a header),
        or a WCS is neither an astropy WCS nor a gwcs (not written).

    Notes
    -----
    Stored per exposure: data (float32 or float64, as held; NaN on the
    pixels whose data were not finite), the inverse variance (float64, 1 /
    data unit^2, 0 where the uncertainty is unusable; the uncertainty is read
    back as an :class:`~astropy.nddata.InverseVariance`), the user's mask
    (so the exposure read back masks the same pixels, and keeps the pixels
    with bad data or uncertainty masked when its mask is replaced), the WCS
    (an astropy WCS as its FITS header with ``relax=True``, so SIP and TPV survive; a gwcs
    as ASDF), a :class:`~astromix.GaussianMixturePSF` (exactly: parameters,
    fixed flags and own accuracy settings), band, exposure time, zero point,
    name, unit, ``psf_origin`` and the JSON-compatible ``meta`` entries.  The
    layouts are described in :mod:`astromix.data.io`.  Every write goes to a
    temporary file in the same folder that is renamed over ``path``; an
    error or interruption leaves the original file unchanged.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from astromix.data import Exposure, write_exposures, read_exposures
    >>> exp = Exposure(np.ones((5, 6)), uncertainty=np.full((5, 6), 0.1), band="g",
    ...                name="g1")
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "scene.h5")
    >>> write_exposures(path, [exp])
    >>> [e.name for e in read_exposures(path)]
    ['g1']
    >>> tmp.cleanup()
    """
    kind = _format(path)
    exposures = _as_list(exposures)
    if group is not None:
        _check_group(group)
    unstored = [e.name for e in exposures if e.psf is not None and storable_psf(e) is None]
    warn_unstored_psf(unstored)
    token = _PSF_WARNED.set(True)
    try:
        if kind == "hdf5":
            _write_hdf5(path, exposures, overwrite=overwrite, group=group)
        else:
            _write_asdf(path, exposures, overwrite=overwrite, group=group)
    finally:
        _PSF_WARNED.reset(token)


def read_exposures(path, *, group=None):
    """Read the exposures of an ASDF or HDF5 file written by :func:`write_exposures`.

    Parameters
    ----------
    path : str or os.PathLike
        The file (``.asdf``, ``.h5`` or ``.hdf5``).
    group : str, optional
        As for :func:`write_exposures`.

    Returns
    -------
    list of Exposure
        In the order they were written (HDF5: a replaced exposure moves to
        the end; by the groups' write counters, so in any HDF5 file; the
        groups of files written by astromix versions without the counter
        come first, in the file's order); empty when the file holds none.
        The uncertainty is an :class:`~astropy.nddata.InverseVariance`; the
        arrays are in memory (the file is closed).

    Raises
    ------
    InputError
        If the file does not exist, is not a readable file of its format, the
        group is missing, or an exposure in it is invalid (e.g. fails the
        ASDF schema or the Exposure checks); the message names the file.
    """
    kind = _format(path)
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise InputError(f"{shown!r} does not exist")
    if group is not None:
        _check_group(group)
    if kind == "hdf5":
        return _read_hdf5(shown, group)
    return _read_asdf(shown, group)


def _check_group(group):
    if not isinstance(group, str) or not group.strip("/"):
        raise InputError(f"group must be a non-empty string, got {group!r}")


# -- HDF5 -----------------------------------------------------------------------------------------

def _import_h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is installed for the tests
        raise ImportError("HDF5 exposure files need h5py (pip install h5py, or astromix[all])"
                          ) from exc
    return h5py


def _is_exposure_group(obj, h5py):
    return isinstance(obj, h5py.Group) and obj.attrs.get("astromix_type") == "Exposure"


def _write_hdf5(path, exposures, *, overwrite, group):
    h5py = _import_h5py()
    shown = os.fspath(path)
    path = os.path.realpath(shown)
    exists = os.path.lexists(path)
    if exists:
        if not os.path.isfile(path):
            raise InputError(f"{shown} exists and is not a regular file")
        try:
            with h5py.File(path, "r") as f:
                parent = _h5_parent(f, group, shown, h5py) if group else f
                for exp in exposures:
                    if parent is None or exp.name not in parent:
                        continue
                    if not _is_exposure_group(parent[exp.name], h5py):
                        raise InputError(f"{shown}: {exp.name!r} exists and is not an astromix "
                                         "exposure; the file was left unchanged")
                    if not overwrite:
                        raise InputError(f"{shown} already has exposure {exp.name!r} and "
                                         "overwrite=False; the file was left unchanged")
        except OSError as exc:
            raise InputError(f"{shown} exists but is not a readable HDF5 file ({exc}); "
                             "refusing to replace it") from None
    payloads = [_h5_payload(exp) for exp in exposures]  # every check before any write
    with atomic_path(path, copy_existing=exists) as tmp:
        with h5py.File(tmp, "r+" if exists else "w", track_order=True) as f:
            parent = f
            for part in (p for p in (group or "").split("/") if p):
                parent = parent[part] if part in parent \
                    else parent.create_group(part, track_order=True)
            # the write counters carry the order (track_order cannot be turned on for a
            # group or root that another program created without it)
            counter = 1 + max((order for _, order in
                               (_write_order(parent[k], h5py) for k in parent)
                               if order is not None), default=-1)
            for exp, payload in zip(exposures, payloads):
                if exp.name in parent:
                    del parent[exp.name]
                grp = parent.create_group(exp.name, track_order=True)
                _fill_h5_group(grp, payload)
                grp.attrs[HDF5_ORDER_ATTR] = np.int64(counter)
                counter += 1
    log.debug("wrote %d exposure(s) to %s", len(exposures), shown)


def _names_in_creation_order(parent, h5py):
    """The link names of an HDF5 group in creation order where it tracks it, else h5py's order.

    Iterated through the creation-order index explicitly: h5py 3.10 iterates a file's root
    by name even when the file was created with ``track_order``.
    """
    names = []

    def collect(name, *_):
        names.append(name.decode("utf-8") if isinstance(name, bytes) else name)

    try:
        parent.id.links.iterate(collect, idx_type=h5py.h5.INDEX_CRT_ORDER,
                                order=h5py.h5.ITER_INC)
    except (RuntimeError, KeyError, ValueError, AttributeError):  # no creation-order index
        return list(parent)
    return names


def _write_order(obj, h5py):
    """(is an exposure group, its write counter or None) of the HDF5 object ``obj``."""
    if not _is_exposure_group(obj, h5py):
        return False, None
    value = obj.attrs.get(HDF5_ORDER_ATTR)
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        return True, int(value)
    return True, None


def _h5_parent(f, group, shown, h5py):
    """The existing group ``group`` of the open file ``f`` (None if missing), walked level by
    level: InputError when a level is a dataset or an astromix exposure group."""
    parent = f
    walked = []
    for part in (p for p in group.split("/") if p):
        walked.append(part)
        if part not in parent:
            return None
        parent = parent[part]
        where = "/".join(walked)
        if not isinstance(parent, h5py.Group):
            raise InputError(f"{shown}: {where!r} (in group={group!r}) exists and is not a "
                             "group; the file was left unchanged")
        if _is_exposure_group(parent, h5py):
            raise InputError(f"{shown}: {where!r} (in group={group!r}) is an astromix exposure, "
                             "not a group of exposures; the file was left unchanged")
    return parent


def _h5_payload(exp):
    """Everything written for one exposure, as arrays and attributes."""
    attrs = {"astromix_type": "Exposure", "astromix_layout": HDF5_LAYOUT,
             "psf_origin": np.asarray(exp.psf_origin, dtype=np.float64),
             "meta": json.dumps(json_meta(exp.meta))}
    for key in ("name", "band"):
        if getattr(exp, key) is not None:
            # str(): a numpy.str_ (e.g. a name taken from a Table row) is a str that h5py
            # cannot store as an attribute (dtype <U)
            attrs[key] = str(getattr(exp, key))
    for key in ("exptime", "zeropoint"):
        if getattr(exp, key) is not None:
            attrs[key] = np.float64(getattr(exp, key))
    if exp.unit is not None:
        attrs["unit"] = exp.unit.to_string()  # "" for dimensionless
    data, mask = stored_pixels(exp)
    datasets = {"data": data, "mask": mask}
    ivar = exp.inverse_variance()
    if ivar is not None:
        datasets["inverse_variance"] = ivar
    kind, value = _wcs_payload(exp)
    attrs["wcs_type"] = kind
    if kind == "fits":
        attrs["wcs_fits_header"] = value
    elif kind == "gwcs":
        datasets["wcs_asdf"] = np.frombuffer(value, dtype=np.uint8)
    psf = storable_psf(exp)
    return {"attrs": attrs, "datasets": datasets, "psf": _psf_payload(psf) if psf else None}


def _wcs_payload(exp):
    wcs = exp.wcs
    if wcs is None:
        return "none", None
    if _is_astropy_wcs(wcs):
        return "fits", fits_wcs_header(wcs)
    if _is_gwcs(wcs):
        import asdf

        buf = io.BytesIO()
        asdf.AsdfFile({"wcs": wcs}).write_to(buf)
        return "gwcs", buf.getvalue()
    warnings.warn(f"exposure {exp.name!r}: its WCS ({type(wcs).__name__}) is neither an "
                  "astropy WCS nor a gwcs and is not written", ExposureWarning, stacklevel=5)
    return "none", None


_SETTINGS_KEYS = ("n_sigma", "pixel_integration", "fourth_order_threshold",
                  "merge_tolerance")


def _psf_payload(psf):
    mix = psf.mixture
    names = list(psf.param_names)
    values, units = [], []
    for name in names:
        param = getattr(psf, name)
        values.append(float(np.squeeze(param.value)))
        units.append(param.unit.to_string() if param.unit is not None else "")
    attrs = {"param_units": np.array(units, dtype=object), "model_name": str(psf.name or "")}
    settings = getattr(psf, "_settings", None)
    if settings is not None:
        for key in _SETTINGS_KEYS:
            attrs[f"settings_{key}"] = getattr(settings, key)
    return {"attrs": attrs,
            "datasets": {"amp": np.asarray(mix.amp, dtype=np.float64),
                         "mean": np.asarray(mix.mean, dtype=np.float64),
                         "cov": np.asarray(mix.cov, dtype=np.float64),
                         "parameters": np.asarray(values, dtype=np.float64),
                         "param_names": np.array(names, dtype=object),
                         "fixed": np.array([bool(getattr(psf, n).fixed) for n in names])}}


def _fill_h5_group(grp, payload):
    """Write one exposure's payload into the empty group ``grp``."""
    h5py = _import_h5py()
    string = h5py.string_dtype()
    for key, value in payload["attrs"].items():
        grp.attrs[key] = value
    for key, value in payload["datasets"].items():
        grp.create_dataset(key, data=value)
    if payload["psf"] is not None:
        sub = grp.create_group("psf")
        for key, value in payload["psf"]["attrs"].items():
            if isinstance(value, np.ndarray) and value.dtype == object:
                sub.attrs.create(key, value.astype(str).tolist(), dtype=string)
            else:
                sub.attrs[key] = value
        for key, value in payload["psf"]["datasets"].items():
            if value.dtype == object:
                sub.create_dataset(key, data=value.astype(str).tolist(), dtype=string)
            else:
                sub.create_dataset(key, data=value)


def _read_hdf5(shown, group):
    h5py = _import_h5py()
    try:
        f = h5py.File(shown, "r")
    except OSError as exc:
        raise InputError(f"{shown!r} is not a readable HDF5 file ({exc})") from None
    with f:
        if group:
            if group not in f or not isinstance(f[group], h5py.Group):
                raise InputError(f"{shown!r} has no group {group!r}")
            parent = f[group]
        else:
            parent = f
        groups = []
        for key in _names_in_creation_order(parent, h5py):
            obj = parent[key]
            is_exposure, order = _write_order(obj, h5py)
            if is_exposure:
                groups.append((order, obj))
        # write order: the groups without a counter (older files) first, in the file's order
        # (a stable sort), then by counter
        groups.sort(key=lambda item: (item[0] is not None, item[0] or 0))
        out = []
        for _, obj in groups:
            try:
                out.append(_exposure_from_group(obj))
            except InputError as exc:
                raise InputError(f"{shown!r}, exposure group {obj.name!r}: {exc}") from None
            except (KeyError, ValueError, TypeError, OSError) as exc:
                raise InputError(f"{shown!r}, exposure group {obj.name!r} could not be "
                                 f"read: {exc}") from None
    return out


def _attr(grp, key, default=None):
    value = grp.attrs.get(key, default)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _exposure_from_group(grp):
    from astropy import units as u
    from astropy.nddata import InverseVariance

    layout = _attr(grp, "astromix_layout")
    if layout != HDF5_LAYOUT:
        raise InputError(f"unsupported exposure layout {layout!r} (this astromix reads "
                         f"{HDF5_LAYOUT!r})")
    data = grp["data"][()]
    mask = np.asarray(grp["mask"][()], dtype=bool)
    unc = None
    if "inverse_variance" in grp:
        unc = InverseVariance(np.asarray(grp["inverse_variance"][()], dtype=np.float64),
                              copy=False)
    wcs_type = _attr(grp, "wcs_type", "none")
    wcs = None
    if wcs_type == "fits":
        wcs = wcs_from_fits_header(_attr(grp, "wcs_fits_header"))
    elif wcs_type == "gwcs":
        wcs = _gwcs_from_bytes(grp["wcs_asdf"][()].tobytes())
    elif wcs_type != "none":
        raise InputError(f"unknown wcs_type {wcs_type!r}")
    psf = _psf_from_group(grp["psf"]) if "psf" in grp else None
    unit = _attr(grp, "unit")
    meta = json.loads(_attr(grp, "meta", "{}"))
    origin = grp.attrs.get("psf_origin", (0.0, 0.0))
    return exposure_from_file(data=data, uncertainty=unc, mask=mask, wcs=wcs, psf=psf,
                              band=_attr(grp, "band"), exptime=_attr(grp, "exptime"),
                              zeropoint=_attr(grp, "zeropoint"), name=_attr(grp, "name"),
                              meta=meta, unit=u.Unit(unit) if unit is not None else None,
                              psf_origin=tuple(float(v) for v in origin))


def _gwcs_from_bytes(raw):
    import asdf

    try:
        with asdf.open(io.BytesIO(raw), memmap=False, lazy_load=False) as af:
            return af["wcs"]
    except (ValueError, KeyError, asdf.ValidationError) as exc:
        raise InputError(f"the stored gwcs could not be read: {exc}") from None


def _psf_from_group(sub):
    from astropy import units as u

    from ..mixtures import GaussianMixture
    from ..models.psf import GaussianMixturePSF
    from ..settings import AccuracySettings

    names = [n.decode() if isinstance(n, bytes) else str(n) for n in sub["param_names"][()]]
    values = np.asarray(sub["parameters"][()], dtype=np.float64)
    fixed = np.asarray(sub["fixed"][()], dtype=bool)
    units = [v.decode() if isinstance(v, bytes) else str(v)
             for v in sub.attrs.get("param_units", [""] * len(names))]
    if not (len(names) == len(values) == len(fixed) == len(units)):
        raise InputError("the PSF's parameters, names, fixed flags and units differ in length")
    mixture = GaussianMixture(sub["amp"][()], sub["mean"][()], sub["cov"][()])
    settings = None
    if "settings_n_sigma" in sub.attrs:
        # keys added after a file was written (merge_tolerance) take their defaults
        settings = AccuracySettings(**{k: _attr(sub, f"settings_{k}") for k in _SETTINGS_KEYS
                                       if f"settings_{k}" in sub.attrs})
    head = {}
    for name in ("flux", "x_0", "y_0"):
        i = names.index(name)
        head[name] = values[i] * u.Unit(units[i]) if units[i] else values[i]
    model = GaussianMixturePSF(mixture, **head, settings=settings,
                               name=_attr(sub, "model_name") or None)
    if tuple(model.param_names) != tuple(names):
        raise InputError(f"the PSF's parameter names {names[:6]}... do not match a "
                         f"{len(mixture)}-component GaussianMixturePSF")
    # Restore every parameter exactly (the constructor renormalises amplitudes and
    # recomputes rho, which could differ in the last bit).
    for name, value, flag in zip(names, values, fixed):
        param = getattr(model, name)
        if name not in head:
            param.value = value
        param.fixed = bool(flag)
    return model


# -- ASDF -----------------------------------------------------------------------------------------

def _write_asdf(path, exposures, *, overwrite, group):
    import asdf

    from ..io.asdf import open_asdf

    shown = os.fspath(path)
    path = os.path.realpath(shown)
    key = group or ASDF_KEY
    if key in ASDF_RESERVED_KEYS:
        raise InputError(f"{shown}: group {key!r} is a top-level key the ASDF standard reserves "
                         f"for asdf's own metadata ({', '.join(ASDF_RESERVED_KEYS)}); store the "
                         "exposures under another key; nothing was written")
    tree = {}
    exists = os.path.lexists(path)
    if exists:
        if not os.path.isfile(path):
            raise InputError(f"{shown} exists and is not a regular file")
        try:
            with open_asdf(path, lazy_load=False, memmap=False) as af:
                tree = {k: v for k, v in af.tree.items()
                        if k not in ("asdf_library", "history")}
                # The history entries (add_history_entry) are kept; the extension list is
                # rebuilt by asdf for what the new file uses.
                history = af.tree.get("history")
                entries = (history.get("entries") if isinstance(history, dict)
                           else history if isinstance(history, list) else None)  # old files
                if entries:
                    tree["history"] = {"entries": list(entries)}
        except InputError as exc:
            raise InputError(f"{exc}; refusing to replace it") from None
        except OSError as exc:
            raise InputError(f"{shown} exists but is not a readable ASDF file ({exc}); "
                             "refusing to replace it") from None
    current = tree.get(key)
    if current is None:
        current = []
    elif isinstance(current, Exposure):
        current = [current]
    elif not (isinstance(current, list) and all(isinstance(e, Exposure) for e in current)):
        raise InputError(f"{shown}: the tree entry {key!r} is not a list of exposures; the "
                         "file was left unchanged")
    merged = list(current)
    index = {e.name: i for i, e in enumerate(merged)}
    for exp in exposures:
        if exp.name in index:
            if not overwrite:
                raise InputError(f"{shown} already has exposure {exp.name!r} and "
                                 "overwrite=False; the file was left unchanged")
            merged[index[exp.name]] = exp
        else:
            index[exp.name] = len(merged)
            merged.append(exp)
    tree[key] = merged
    with atomic_path(path) as tmp:
        _write_asdf_tree(asdf, tree, tmp)
        if exists:  # keep the file's permissions, as HDF5 updates do (asdf makes a new file)
            shutil.copymode(path, tmp)
    log.debug("wrote %d exposure(s) to %s", len(exposures), shown)


def _write_asdf_tree(asdf, tree, tmp):
    asdf.AsdfFile(tree).write_to(tmp)


def _read_asdf(shown, group):
    from ..io.asdf import open_asdf

    key = group or ASDF_KEY
    try:
        with open_asdf(shown, lazy_load=False, memmap=False) as af:
            if key not in af.tree:
                if group:
                    raise InputError(f"{shown!r} has no tree entry {group!r}")
                return []
            value = af.tree[key]
    except OSError as exc:
        raise InputError(f"{shown!r} is not a readable ASDF file ({exc})") from None
    if isinstance(value, Exposure):
        return [value]
    if not (isinstance(value, list) and all(isinstance(e, Exposure) for e in value)):
        raise InputError(f"{shown!r}: the tree entry {key!r} is not a list of exposures")
    return list(value)
