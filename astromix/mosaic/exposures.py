"""The exposures behind a drizzled mosaic: their table, the context image, the local geometry.

A drizzled mosaic (a JWST ``i2d`` file, an HST ``drz``) records which input
exposure contributed to each output pixel in its *context* image (``CON``):
an integer cube of shape (n_planes, ny, nx) in which bit ``i`` of plane ``k``
is set when input ``32 k + i`` contributed (drizzle's convention,
:func:`drizzle.utils.decode_context`).  The inputs are numbered in the order
they were drizzled, which for the JWST pipeline is the order of the science
members of the level-3 association.  This module decodes the context for many
sources at once, rebuilds each exposure's WCS from a table of exposures (the
i2d ``HDRTAB``, YOUNG's CSV) when the exposures' own files are not at hand, and
computes for every (source, exposure) pair the detector position and the local
2x2 Jacobian between the exposure's pixels and the mosaic's.
"""

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["InputExposure", "decode_context", "exposures_from_table", "read_association",
           "order_exposures", "source_geometry", "jwst_pc_matrix", "tan_wcs"]

log = logging.getLogger("astromix")

#: Pixel scales [arcsec/px] of the JWST detectors, used when a table gives no scale.
DETECTOR_PIXEL_SCALES = {"NRCA1": 0.031, "NRCA2": 0.031, "NRCA3": 0.031, "NRCA4": 0.031,
                         "NRCB1": 0.031, "NRCB2": 0.031, "NRCB3": 0.031, "NRCB4": 0.031,
                         "NRCALONG": 0.063, "NRCBLONG": 0.063, "NRCA5": 0.063, "NRCB5": 0.063,
                         "MIRIMAGE": 0.11, "NIS": 0.0656}

#: Full-frame (ny, nx) [px] of the JWST detectors: the pixel grid of an exposure whose
#: ``shape`` is not given (:attr:`InputExposure.pixel_grid`), unless it is a subarray.
DETECTOR_SHAPES = {**{d: (2048, 2048) for d in DETECTOR_PIXEL_SCALES if d.startswith("NRC")},
                   "NIS": (2048, 2048), "MIRIMAGE": (1024, 1032)}


@dataclasses.dataclass(frozen=True, eq=False)
class InputExposure:
    """One exposure that was drizzled into a mosaic.

    Parameters
    ----------
    name : str
        Its name (e.g. the file name stem ``jw01234001001_02101_00001_nrca1``).
    wcs : astropy.wcs.WCS or gwcs.WCS
        Its pixel -> sky transformation, distortion included (any celestial
        WCS with the shared APE 14 interface ``pixel_to_world_values`` /
        ``world_to_pixel_values``), pixels 0-based (astropy convention).
    exptime : float
        Its weight in the mosaic [s]: the effective exposure time (``EFFEXPTM``)
        or any drizzle weight.  Must be > 0.
    instrument, filter, detector : str, optional
        e.g. ``"NIRCam"``, ``"F200W"``, ``"NRCA1"``; they select the PSF.
    date : str, optional
        Observation date and time (ISO, e.g. ``"2023-01-02T03:04:05"``); stpsf
        loads the mirror state (OPD) of that date.
    shape : tuple of int, optional
        (ny, nx) of its pixel grid; positions outside it are not used.  When
        it is not given, the WCS's ``array_shape`` (or ``pixel_shape``) or
        else the full frame of a known JWST ``detector``
        (:data:`DETECTOR_SHAPES`, unless ``meta`` names a ``SUBARRAY`` other
        than ``FULL``) stands for it: see :attr:`pixel_grid`.
    meta : dict, optional
        Anything else (the table row it came from).

    Raises
    ------
    InputError
        If ``exptime`` is not a positive finite number or the WCS lacks the
        APE 14 methods.
    """

    name: str
    wcs: Any
    exptime: float = 1.0
    instrument: str | None = None
    filter: str | None = None
    detector: str | None = None
    date: str | None = None
    shape: tuple | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        try:
            exptime = float(self.exptime)
        except (TypeError, ValueError):
            exptime = float("nan")
        if not (math.isfinite(exptime) and exptime > 0):
            raise InputError(f"exposure {self.name!r}: exptime must be a positive number, "
                             f"got {self.exptime!r}")
        object.__setattr__(self, "exptime", exptime)
        for method in ("pixel_to_world_values", "world_to_pixel_values"):
            if not callable(getattr(self.wcs, method, None)):
                raise InputError(f"exposure {self.name!r}: its WCS ({type(self.wcs).__name__}) "
                                 f"has no {method}; give an astropy or gwcs WCS")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @functools.cached_property
    def pixel_grid(self):
        """The (ny, nx) [px] of the exposure's pixel grid, or None when it is unknown.

        ``shape`` when given; else the WCS's ``array_shape`` (``pixel_shape``
        reversed); else, for a detector of :data:`DETECTOR_SHAPES`, its full
        frame, unless ``meta`` has a ``SUBARRAY`` (any case) other than
        ``FULL`` (a subarray's size is unknown).  It decides which mosaic
        positions the exposure covers (:func:`source_geometry`) and bounds
        the position bins of the PSF providers.  Computed once.
        """
        if self.shape is not None:
            return self.shape
        shape = getattr(self.wcs, "array_shape", None)
        if shape is None:
            pixel_shape = getattr(self.wcs, "pixel_shape", None)
            shape = None if pixel_shape is None else tuple(pixel_shape)[::-1]
        if shape is not None and len(shape) == 2:
            return tuple(int(s) for s in shape)
        if self.detector is None:
            return None
        full = DETECTOR_SHAPES.get(str(self.detector).strip().upper())
        subarray = next((v for k, v in (self.meta or {}).items()
                         if str(k).lower() == "subarray" and v is not None), None)
        if full is None or (subarray is not None
                            and str(subarray).strip().upper() not in ("", "FULL")):
            return None
        return full

    @property
    def coverage_known(self):
        """Whether the exposure's footprint is known: a :attr:`pixel_grid`, or a gwcs
        ``bounding_box`` (outside which its WCS gives no pixel position)."""
        return (self.pixel_grid is not None
                or getattr(self.wcs, "bounding_box", None) is not None)


# -- context ---------------------------------------------------------------------------------
def context_planes(context):
    """A context image as ``(nplanes, ny, nx)`` integers (a 2-d one gets one plane).

    Raises
    ------
    InputError
        If it is not a 2-d or 3-d integer array.
    """
    ctx = np.asarray(context)
    if ctx.ndim == 2:
        ctx = ctx[None]
    if ctx.ndim != 3 or not np.issubdtype(ctx.dtype, np.integer):
        raise InputError(f"the context image must be a 2-d or 3-d integer array, got "
                         f"{ctx.dtype} of shape {ctx.shape}")
    return ctx


def decode_context(context, x, y, n_inputs=None):
    """Which inputs contributed to the mosaic pixels nearest to many positions, at once.

    The vectorised equivalent of :func:`drizzle.utils.decode_context` (same
    bit convention: bit ``i`` of plane ``k`` is input ``32 k + i``), for all
    positions in one pass.

    Parameters
    ----------
    context : array-like of int, shape (n_planes, ny, nx) or (ny, nx)
        The context image (i2d ``CON`` extension): 32 inputs per plane
        whatever the integer dtype (drizzle's packing), the sign bit of a
        32-bit integer being input 31 of the plane.  Wider integers (int64,
        e.g. a ``BITPIX = 64`` file) must hold values in ``[-2**31, 2**32)``;
        narrower ones (int16, int8) are taken as the low bits of the plane.
    x, y : array-like, shape (N,)
        Positions [mosaic px, 0-based]; each is rounded to the nearest pixel.
    n_inputs : int, optional
        Number of inputs; the mask is cut (or padded) to it.  Default:
        ``32 * n_planes``.

    Returns
    -------
    ndarray of bool, shape (N, n_inputs)
        ``mask[n, i]`` is True when input ``i`` contributed at source ``n``.

    Raises
    ------
    InputError
        If the context is not 2-d or 3-d integers, holds a value outside 32
        bits at a position, or a position lies outside the image (the message
        gives how many and the first).

    Examples
    --------
    >>> import numpy as np
    >>> ctx = np.zeros((2, 4, 4), dtype=np.int32)
    >>> ctx[0, 1, 2] = 0b1010          # inputs 1 and 3
    >>> ctx[1, 1, 2] = 1               # input 32
    >>> np.flatnonzero(decode_context(ctx, [2.2], [0.9])[0]).tolist()
    [1, 3, 32]
    """
    ctx = context_planes(context)
    ix, iy = _pixel_indices(x, y, ctx.shape[1:])
    values = ctx[:, iy, ix]                                          # (n_planes, N)
    if ctx.dtype.itemsize > 4:
        # 32 inputs per plane whatever the dtype: a wider integer must hold a
        # 32-bit word (signed or not), else it is not a drizzle context
        with np.errstate(over="ignore"):
            bad = (values > 0xFFFFFFFF) | (values < -(1 << 31))
        if bad.any():
            k, n = np.argwhere(bad)[0]
            raise InputError(f"the context holds {int(bad.sum())} value(s) outside 32 bits "
                             f"(e.g. {int(values[k, n])} in plane {k} at source {n}); drizzle "
                             "packs 32 inputs per plane")
    if ctx.dtype.itemsize <= 4:
        # the bits of the word as stored (a negative int16 has input 15 set, not 15..31)
        values = values.astype(values.dtype.str.replace("i", "u"), copy=False)
    planes = values.astype(np.int64) & 0xFFFFFFFF                   # (n_planes, N), unsigned
    bits = (planes[:, :, None] >> np.arange(32)) & 1                 # (n_planes, N, 32)
    mask = np.transpose(bits, (1, 0, 2)).reshape(ix.size, -1).astype(bool)
    if n_inputs is not None:
        n_inputs = int(n_inputs)
        if n_inputs > mask.shape[1]:
            mask = np.pad(mask, ((0, 0), (0, n_inputs - mask.shape[1])))
        elif mask[:, n_inputs:].any():
            extra = sorted(set(np.nonzero(mask[:, n_inputs:])[1] + n_inputs))
            raise InputError(f"the context names input(s) {extra[:5]} but only {n_inputs} "
                             "exposures were given")
        mask = mask[:, :n_inputs]
    return mask


def _pixel_indices(x, y, shape):
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"x and y must be 1-d arrays of equal length, got {x.shape}, {y.shape}")
    ny, nx = shape
    with np.errstate(invalid="ignore"):
        ix, iy = np.rint(x), np.rint(y)
        bad = ~((ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"{int(bad.sum())} position(s) lie outside the {ny} x {nx} mosaic, "
                         f"the first is source {k} at (x, y) = ({x[k]:.6g}, {y[k]:.6g})")
    return ix.astype(np.intp), iy.astype(np.intp)


# -- association and exposure tables ------------------------------------------------------------
def read_json(path, what):
    """The content of a JSON file; InputError naming the file (as ``what``) if it fails."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as exc:
        raise InputError(f"{what} {path!r} cannot be read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path!r} is not valid JSON: {exc}") from None


def read_association(path):
    """Names of the science members of a JWST association, in order (the context order).

    Parameters
    ----------
    path : str
        The level-3 association JSON file used to build the mosaic.

    Returns
    -------
    list of str
        The ``expname`` of every member of type ``science`` of the first
        product, without folder and extension (``..._cal.fits`` ->
        ``..._cal``).

    Raises
    ------
    InputError
        If the file is missing, not JSON, its members are not a list of
        objects, or it has no science member.
    """
    asn = read_json(path, "association")
    try:
        members = asn["products"][0]["members"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"association {path!r} has no products[0].members") from None
    if not isinstance(members, list):
        raise InputError(f"association {path!r}: products[0].members must be a list, got "
                         f"{type(members).__name__}")
    for k, m in enumerate(members):
        # leaving one out would shift the context numbering of those after it
        if not isinstance(m, dict):
            raise InputError(f"association {path!r}: products[0].members[{k}] must be an "
                             f"object with expname and exptype, got {m!r}")
    names = [_stem(m["expname"]) for m in members
             if str(m.get("exptype", "science")).lower() == "science" and "expname" in m]
    if not names:
        raise InputError(f"association {path!r} has no science member")
    return names


def _stem(name):
    base = os.path.basename(str(name).strip())
    for suffix in (".fits.gz", ".fits", ".fit"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def order_exposures(exposures, names):
    """Reorder exposures to follow a list of names (e.g. :func:`read_association`'s).

    Matching ignores the folder, the extension and a trailing pipeline suffix
    (``_cal``, ``_crf``, ``_rate``, ``_i2d``).

    Parameters
    ----------
    exposures : sequence of InputExposure
    names : sequence of str

    Returns
    -------
    list of InputExposure
        ``len(names)`` exposures, the i-th matching ``names[i]``.

    Raises
    ------
    InputError
        If a name has no exposure (the message lists the first missing ones).
    """
    def core(name):
        s = _stem(name)
        for suffix in ("_cal", "_crf", "_rate", "_i2d", "_rateints", "_calints"):
            if s.lower().endswith(suffix):
                return s[: -len(suffix)].lower()
        return s.lower()

    by_name = {core(e.name): e for e in exposures}
    missing = [n for n in names if core(n) not in by_name]
    if missing:
        raise InputError(f"{len(missing)} association member(s) have no exposure in the table, "
                         f"e.g. {missing[:3]}")
    return [by_name[core(n)] for n in names]


def jwst_pc_matrix(roll_ref, v3i_yang, vparity=-1):
    """The FITS PC matrix of a JWST aperture from its pointing angles.

    The convention of the JWST calibration pipeline (``calc_rotation_matrix``):
    with ``a = roll_ref - vparity * v3i_yang``,
    ``PC = [[vparity cos a, sin a], [-vparity sin a, cos a]]``, to be used with
    ``CDELT1 = CDELT2 = +pixel scale``.

    Parameters
    ----------
    roll_ref : float
        V3 position angle at the reference point (``ROLL_REF``) [deg].
    v3i_yang : float
        Angle of the ideal-frame Y axis from V3 (``V3I_YANG``) [deg].
    vparity : {1, -1}, optional
        Parity of the ideal frame (``VPARITY``); -1 for NIRCam and most JWST
        apertures.

    Returns
    -------
    ndarray, shape (2, 2)

    Raises
    ------
    InputError
        If ``vparity`` is not 1 or -1.
    """
    vparity = int(round(float(vparity)))
    if vparity not in (1, -1):
        raise InputError(f"vparity must be 1 or -1, got {vparity}")
    a = math.radians(float(roll_ref) - vparity * float(v3i_yang))
    return np.array([[vparity * math.cos(a), math.sin(a)], [-vparity * math.sin(a), math.cos(a)]])


def tan_wcs(ra, dec, pixel_scale, pc, crpix, shape=None):
    """A gnomonic (TAN) astropy WCS.

    Parameters
    ----------
    ra, dec : float
        Reference point [deg].
    pixel_scale : float
        [arcsec/px] (``CDELT1 = CDELT2``).
    pc : array-like, shape (2, 2)
        PC matrix (see :func:`jwst_pc_matrix`; ``[[-1, 0], [0, 1]]`` puts north
        up and east left).
    crpix : (float, float)
        Reference pixel, 0-based (x, y) [px].
    shape : (int, int), optional
        (ny, nx), stored as ``array_shape``.

    Returns
    -------
    astropy.wcs.WCS
    """
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra), float(dec)]
    w.wcs.crpix = [float(crpix[0]) + 1.0, float(crpix[1]) + 1.0]
    w.wcs.cdelt = [float(pixel_scale) / 3600.0] * 2
    w.wcs.pc = np.asarray(pc, dtype=np.float64)
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.set()
    if shape is not None:
        w.array_shape = tuple(int(s) for s in shape)
    return w


def _column_value(row, names, lower):
    # (column name, value) of the first of `names` the row has unmasked, else (None, None)
    for n in names:
        if n in lower:
            value = row[lower[n]]
            if np.ma.is_masked(value):
                continue
            return lower[n], value
    return None, None


def _column(row, names, lower):
    return _column_value(row, names, lower)[1]


def _number(row, names, lower, where, *, integer=False):
    """The finite number in the first of ``names`` the row has (None if none); InputError
    naming ``where`` and the column if the cell holds something else."""
    col, value = _column_value(row, names, lower)
    if col is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (integer and not number.is_integer()):
        kind = "an integer" if integer else "a finite number"
        raise InputError(f"{where}: column {col} = {_plain(value)!r} is not {kind}")
    return int(number) if integer else number


def exposures_from_table(table, *, default_exptime=None):
    """Exposures (with rebuilt WCSs) from a table of exposures: an i2d ``HDRTAB`` or a CSV.

    Column names are matched without regard to case, ``-`` and ``_``.  Each row
    needs:

    * a name: ``filename``, ``expname`` or ``name``;
    * a weight: ``effexptm``, ``exptime``, ``xposure``, ``duration`` or ``weight`` [s];
    * a WCS, either FITS keywords ``crval1``, ``crval2``, ``crpix1``, ``crpix2``
      (1-based) with ``cd1_1`` ... ``cd2_2`` or ``pc1_1`` ... ``pc2_2`` and
      ``cdelt1``, ``cdelt2`` [deg], or the JWST pointing ``ra_ref``,
      ``dec_ref``, ``roll_ref``, ``v3i_yang`` (or ``v3yangle``), ``vparity``
      [deg] with a reference pixel ``xref_sci``, ``yref_sci`` (1-based; the
      centre of ``naxis1`` x ``naxis2`` if absent) and a pixel scale
      ``pixel_scale`` [arcsec/px] (else that of the detector).

    Optional: ``instrume``, ``filter``, ``detector``, ``date_obs`` (with
    ``time_obs``) or ``date_beg``, ``naxis1``/``naxis2``.  The WCS rebuilt
    from such a table is a TAN projection without the detector's distortion:
    it gives the rotation, parity and scale of each exposure, but the
    exposures' own gwcs (``cal`` files) are exact.

    Parameters
    ----------
    table : astropy.table.Table, numpy structured array or str
        The table, or the path of a CSV / FITS file holding it.
    default_exptime : float, optional
        Weight used when the table has no exposure-time column.

    Returns
    -------
    list of InputExposure
        In the table's order.

    Raises
    ------
    InputError
        If a row lacks a name, a weight or a WCS (the message names the
        missing columns), a numeric cell (weight, WCS, ``naxis1``/``naxis2``)
        holds text or a non-finite value (the message names the table, row
        and column), or the file cannot be read.
    """
    from astropy.table import Table

    path = None
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        try:
            if path.lower().endswith((".csv", ".txt", ".ecsv")):
                table = Table.read(path, format="ascii.ecsv" if path.endswith(".ecsv")
                                   else "ascii.csv")
            else:
                table = Table.read(path)
        except Exception as exc:  # astropy raises many kinds here
            raise InputError(f"exposure table {path!r} cannot be read: {exc}") from None
    elif not isinstance(table, Table):
        table = Table(table)
    if len(table) == 0:
        raise InputError("the exposure table is empty")
    lower = {c.lower().replace("-", "_"): c for c in table.colnames}
    label = f"exposure table {path!r}" if path is not None else "exposure table"
    out = []
    for i, row in enumerate(table):
        name = _column(row, ("filename", "expname", "name"), lower)
        name = _stem(name) if name is not None else f"exposure {i}"
        where = f"{label} row {i} ({name})"
        exptime = _number(row, ("effexptm", "exptime", "xposure", "duration", "weight"), lower,
                          where)
        if exptime is None:
            if default_exptime is None:
                raise InputError(f"{where} has no exposure time "
                                 "(effexptm, exptime, xposure, duration or weight)")
            exptime = default_exptime
        detector = _column(row, ("detector",), lower)
        detector = str(detector).strip().upper() if detector is not None else None
        nx = _number(row, ("naxis1",), lower, where, integer=True)
        ny = _number(row, ("naxis2",), lower, where, integer=True)
        shape = (ny, nx) if nx is not None and ny is not None else None
        wcs = _row_wcs(row, lower, name, detector, shape, where)
        date = _column(row, ("date_obs", "date_beg", "date"), lower)
        tobs = _column(row, ("time_obs",), lower)
        if date is not None:
            date = str(date).strip()
            if tobs is not None and "T" not in date:
                date = f"{date}T{str(tobs).strip()}"
        instrument = _column(row, ("instrume", "instrument"), lower)
        filt = _column(row, ("filter",), lower)
        out.append(InputExposure(
            name=name, wcs=wcs, exptime=exptime,
            instrument=str(instrument).strip() if instrument is not None else None,
            filter=str(filt).strip().upper() if filt is not None else None,
            detector=detector, date=date, shape=shape,
            meta={c: _plain(row[c]) for c in table.colnames}))
    return out


def _plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value.item() if hasattr(value, "item") else value


def _row_wcs(row, lower, name, detector, shape, where):
    def get(*names):
        return _number(row, names, lower, where)

    crval = (get("crval1"), get("crval2"))
    if None not in crval:
        crpix = (get("crpix1"), get("crpix2"))
        if None in crpix:
            raise InputError(f"exposure {name}: crval1/2 without crpix1/2")
        cd = [get(f"cd{i}_{j}") for i in (1, 2) for j in (1, 2)]
        if None in cd:
            pc = [get(f"pc{i}_{j}") for i in (1, 2) for j in (1, 2)]
            cdelt = (get("cdelt1"), get("cdelt2"))
            if None in pc or None in cdelt:
                raise InputError(f"exposure {name}: a FITS WCS needs cd1_1..cd2_2 or "
                                 "pc1_1..pc2_2 with cdelt1, cdelt2")
            cd = (np.reshape(np.asarray(pc, float), (2, 2))
                  * np.asarray(cdelt, float)[:, None]).ravel()
        from astropy.wcs import WCS

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [float(crval[0]), float(crval[1])]
        w.wcs.crpix = [float(crpix[0]), float(crpix[1])]
        w.wcs.cd = np.reshape(np.asarray(cd, float), (2, 2))
        w.wcs.set()
        if shape is not None:
            w.array_shape = shape
        return w
    ref = (get("ra_ref"), get("dec_ref"), get("roll_ref"), get("v3i_yang", "v3yangle"),
           get("vparity"))
    if None in ref:
        raise InputError(f"exposure {name}: the table has no WCS (crval1/crval2/crpix/cd or "
                         "ra_ref/dec_ref/roll_ref/v3i_yang/vparity)")
    scale = get("pixel_scale", "pixscale", "pixelscale")
    if scale is None:
        if detector not in DETECTOR_PIXEL_SCALES:
            raise InputError(f"exposure {name}: no pixel_scale column and unknown detector "
                             f"{detector!r}")
        scale = DETECTOR_PIXEL_SCALES[detector]
    xref, yref = get("xref_sci"), get("yref_sci")
    if xref is None or yref is None:
        if shape is None:
            raise InputError(f"exposure {name}: give xref_sci/yref_sci or naxis1/naxis2")
        xref, yref = (shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0
    try:
        pc = jwst_pc_matrix(ref[2], ref[3], ref[4])
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return tan_wcs(ref[0], ref[1], float(scale), pc, (float(xref) - 1, float(yref) - 1), shape)


# -- geometry --------------------------------------------------------------------------------------
def source_geometry(mosaic_wcs, exposures, x, y, *, step=0.5):
    """Detector positions and local Jacobians of every source in every exposure.

    Each mosaic position is sent to the sky through the mosaic's WCS and back
    to each exposure's pixels through that exposure's WCS (distortion
    included); central differences of half-step ``step`` mosaic pixels give
    the local derivative ``A = d(x_exp, y_exp) / d(x_mos, y_mos)``, whose
    inverse ``J`` maps a PSF from the exposure's pixels into the mosaic's:
    ``v_mosaic = J v_exposure``.  Rotation, scale, parity (a negative
    ``det J``) and distortion all live in ``J``.  One vectorised WCS call per
    exposure serves all sources.

    Parameters
    ----------
    mosaic_wcs : astropy.wcs.WCS or gwcs.WCS
        The mosaic's WCS.
    exposures : sequence of InputExposure
    x, y : array-like, shape (N,)
        Source positions [mosaic px, 0-based].
    step : float, optional
        Half-step of the central differences [mosaic px].

    Returns
    -------
    detector_xy : ndarray, shape (n_exposures, N, 2)
        (x, y) in each exposure [px, 0-based]; NaN where the WCS gives none.
    jacobian : ndarray, shape (n_exposures, N, 2, 2)
        ``J = d(x_mos, y_mos) / d(x_exp, y_exp)``; NaN where undefined.
    inside : ndarray of bool, shape (n_exposures, N)
        The position is finite and on the exposure's pixel grid
        (``-0.5 < x < nx - 0.5`` and the same in y), when that grid is known:
        its ``shape``, else its WCS's ``array_shape``, else its detector's
        full frame (:attr:`InputExposure.pixel_grid`).  An exposure whose grid
        is unknown (and whose WCS has no ``bounding_box``) counts wherever its
        WCS gives a position.

    Raises
    ------
    InputError
        If the mosaic WCS gives no sky position for a source.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    h = float(step)
    xs = np.concatenate([x, x + h, x - h, x, x])
    ys = np.concatenate([y, y, y, y + h, y - h])
    ra, dec = mosaic_wcs.pixel_to_world_values(xs, ys)
    ra, dec = np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        k = int(np.flatnonzero(~np.isfinite(ra) | ~np.isfinite(dec))[0]) % x.size
        raise InputError(f"the mosaic WCS gives no sky position at source {k} "
                         f"({x[k]:.6g}, {y[k]:.6g})")
    n = x.size
    det_xy = np.full((len(exposures), n, 2), np.nan)
    jac = np.full((len(exposures), n, 2, 2), np.nan)
    inside = np.zeros((len(exposures), n), dtype=bool)
    for e, exp in enumerate(exposures):
        with np.errstate(invalid="ignore"):
            ex, ey = exp.wcs.world_to_pixel_values(ra, dec)
        ex = np.asarray(ex, dtype=np.float64).reshape(5, n)
        ey = np.asarray(ey, dtype=np.float64).reshape(5, n)
        a = np.empty((n, 2, 2))
        a[:, 0, 0] = (ex[1] - ex[2]) / (2 * h)
        a[:, 1, 0] = (ey[1] - ey[2]) / (2 * h)
        a[:, 0, 1] = (ex[3] - ex[4]) / (2 * h)
        a[:, 1, 1] = (ey[3] - ey[4]) / (2 * h)
        ok = np.all(np.isfinite(a), axis=(1, 2)) & np.isfinite(ex[0]) & np.isfinite(ey[0])
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        ok &= np.abs(det) > 0
        grid = exp.pixel_grid
        if grid is not None:
            ny, nx = grid
            with np.errstate(invalid="ignore"):
                ok &= (ex[0] > -0.5) & (ex[0] < nx - 0.5) & (ey[0] > -0.5) & (ey[0] < ny - 0.5)
        det_xy[e, :, 0], det_xy[e, :, 1] = ex[0], ey[0]
        good = np.flatnonzero(ok)
        jac[e, good] = np.linalg.inv(a[good])
        inside[e] = ok
    return det_xy, jac, inside
