"""``astromix mosaic-psf``: the PSF of a drizzled mosaic at every source of a catalog.

The replacement of YOUNG's ``run_mstpsf_modeling.py`` (without MPI; see
``max_workers``), driven by the same JSON configuration::

    astromix mosaic-psf --config config.json

Configuration fields (YOUNG's names):

``img_path``
    The mosaic (JWST ``i2d``): WCS from the ``SCI`` HDU, context from ``CON``.
``catalog_path``, ``catalog_format``, ``catalog_hdu``, ``x_col``, ``y_col``
    The source catalog (``catalog_format``: ``"fits"`` (default), ``"csv"`` or
    any astropy table format; ``catalog_hdu`` for FITS, default 1) and its
    pixel-position columns (default ``x``, ``y``; an empty or non-numeric cell
    is refused, naming the column and rows).
``1-indexed`` (or ``one_indexed``)
    True when the positions are 1-based (SExtractor's ``X_IMAGE``).  Like
    ``overwrite``: a JSON boolean, 0 or 1, or one of the strings ``"true"``,
    ``"false"``, ``"yes"``, ``"no"``, ``"1"``, ``"0"``; anything else is refused.
``association_path``
    The level-3 association JSON: the exposures are put in its order (the
    context order).  Optional.
``csv_path``
    The table of exposures (YOUNG's CSV from the i2d ``HDRTAB``, see
    :func:`astromix.mosaic.exposures_from_table`); default the ``HDRTAB`` of
    ``img_path``.
``psf_array_filename``
    Output cube (N, dimension, dimension) in catalog order: ``.fits`` (with a
    ``SOURCES`` table), ``.asdf`` or ``.npy`` (default ``psf_array.fits``).
    Checked, and its folder created, before any PSF is computed.
``sigma``
    Gaussian smoothing [mosaic px] after combination (default none; YOUNG's
    script used 0.8; measure it with
    :meth:`astromix.ExposureWeightedPSF.calibrate_smoothing`).
``pixel_scale``
    Mosaic pixel scale [arcsec/px], a positive number; checked against the
    WCS (a warning when they differ by more than 1%).
``dimension``
    Stamp size [mosaic px] (default 51).

astromix's own fields: ``provider`` (``"stpsf"``, default; ``"poppy"``;
``"image"``), ``provider_options`` (keyword arguments of the provider class;
for ``"image"``: ``images``, a FITS path or a mapping from detector to path,
and ``oversampling``), ``pixfrac`` (default 1), ``max_workers`` (processes;
default 1) and ``overwrite`` (default true).  ``STPSF_PATH`` (or
``stpsf_path``) sets stpsf's data folder.  Unknown fields are reported and
ignored.  Relative paths (``img_path``, ``catalog_path``,
``association_path``, ``csv_path``, ``psf_array_filename``,
``provider_options.images`` and ``data_path``, ``STPSF_PATH``) are taken from
the folder of the configuration file.
"""

import logging
import math
import os
import sys
import time

import numpy as np

from ..errors import AstromixError, InputError

__all__ = ["add_parser", "run", "read_config", "read_catalog", "make_provider"]

log = logging.getLogger("astromix")

#: Fields this command reads; others are reported and ignored.
KNOWN_FIELDS = ("img_path", "catalog_path", "association_path", "csv_path", "catalog_format",
                "catalog_hdu", "x_col", "y_col", "1-indexed", "one_indexed", "1_indexed",
                "psf_array_filename", "sigma", "pixel_scale", "dimension", "provider",
                "provider_options", "pixfrac", "max_workers", "overwrite", "STPSF_PATH",
                "stpsf_path")


def add_parser(subparsers):
    """Register the ``mosaic-psf`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommand action of the ``astromix`` parser (what
        ``ArgumentParser.add_subparsers`` returns; see
        :func:`astromix.cli.build_parser`).

    Returns
    -------
    argparse.ArgumentParser
        The subcommand's parser, with the default ``func=run``.
    """
    parser = subparsers.add_parser(
        "mosaic-psf",
        help="the PSF of a drizzled mosaic at every source of a catalog (YOUNG's config)",
        description="Compute the exposure-time-weighted PSF of a drizzled mosaic (JWST i2d) "
                    "at every source of a catalog, each exposure's PSF rotated into the "
                    "mosaic through its WCS, and write the cube (N, dim, dim) in catalog "
                    "order; reads YOUNG's config.json.",
        epilog="Example: astromix mosaic-psf --config config.json")
    parser.add_argument("--config", required=True, metavar="JSON",
                        help="configuration file (see 'astromix mosaic-psf' in the docs)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def read_config(path):
    """Read and check the JSON configuration; returns a dict with defaults filled in.

    Parameters
    ----------
    path : str
        The JSON file (fields in the module docstring); relative paths in it
        (``provider_options.images`` and ``data_path`` and ``STPSF_PATH``
        included) are taken from its folder.

    Returns
    -------
    dict
        ``img_path``, ``catalog_path``, ``association_path``, ``csv_path``
        (absolute paths, or None when not given), ``one_indexed`` (bool),
        ``catalog_format`` (lower case, default ``"fits"``), ``catalog_hdu``
        (default 1), ``x_col``, ``y_col`` (default ``"x"``, ``"y"``),
        ``psf_array_filename`` (default ``psf_array.fits`` beside the
        config), ``sigma`` (float [mosaic px] or None), ``pixel_scale``
        [arcsec/px] or None, ``dimension`` (int [mosaic px], default 51),
        ``provider`` (default ``"stpsf"``), ``provider_options`` (dict),
        ``pixfrac`` (float, default 1), ``max_workers`` (int, default 1),
        ``overwrite`` (bool, default True) and ``stpsf_path`` (absolute, or
        None).

    Raises
    ------
    InputError
        If the file is missing, unreadable, not valid JSON or not a JSON
        object, a required field (``img_path``, ``catalog_path``) is missing,
        ``dimension`` is not an integer >= 1 (51.0 and "51" are read as 51,
        51.5 is refused), ``sigma`` is neither a number nor null, ``pixfrac`` is not
        a number, ``pixel_scale`` is neither null nor a positive finite
        number, ``provider_options`` is not a JSON object, ``max_workers``
        not an integer, or ``overwrite`` or ``1-indexed`` not a boolean
        (true/false, 1/0, or the strings "true", "false", "yes", "no", "1",
        "0", in any case), or two spellings of one field (``1-indexed``,
        ``one_indexed``, ``1_indexed``; ``STPSF_PATH``, ``stpsf_path``) with
        different values; each message names the file.
    """
    from ..mosaic.exposures import read_json

    cfg = read_json(path, "config")
    if not isinstance(cfg, dict):
        raise InputError(f"config {path!r} must hold a JSON object")
    unknown = sorted(k for k in cfg if k not in KNOWN_FIELDS)
    if unknown:
        log.warning("config fields ignored: %s", ", ".join(unknown))
    for key in ("img_path", "catalog_path"):
        if not cfg.get(key):
            raise InputError(f"config {path!r} has no {key!r}")
    base = os.path.dirname(os.path.abspath(path))
    for key in ("img_path", "catalog_path", "association_path", "csv_path",
                "psf_array_filename"):
        if cfg.get(key):
            cfg[key] = os.path.join(base, os.path.expanduser(str(cfg[key])))
    one = {k: _config_bool(cfg[k], k, path) for k in ("1-indexed", "one_indexed", "1_indexed")
           if k in cfg}
    stpsf = {k: cfg[k] for k in ("STPSF_PATH", "stpsf_path") if cfg.get(k)}
    for given in (one, stpsf):
        if len(set(given.values())) > 1:
            raise InputError(f"config {path!r}: {' and '.join(given)} are the same field and "
                             f"disagree ({', '.join(f'{k}={v!r}' for k, v in given.items())}); "
                             "give one of them")
    out = {
        "one_indexed": next(iter(one.values()), False),
        "catalog_format": str(cfg.get("catalog_format", "fits")).lower(),
        "catalog_hdu": cfg.get("catalog_hdu", 1),
        "x_col": cfg.get("x_col", "x"), "y_col": cfg.get("y_col", "y"),
        "psf_array_filename": cfg.get("psf_array_filename") or os.path.join(base,
                                                                            "psf_array.fits"),
        "sigma": cfg.get("sigma"), "pixel_scale": cfg.get("pixel_scale"),
        "dimension": cfg.get("dimension", 51), "provider": str(cfg.get("provider", "stpsf")),
        "provider_options": cfg.get("provider_options") or {},
        "pixfrac": cfg.get("pixfrac", 1.0), "max_workers": cfg.get("max_workers", 1),
        "overwrite": _config_bool(cfg.get("overwrite", True), "overwrite", path),
        "stpsf_path": next(iter(stpsf.values()), None),
    }
    if isinstance(out["stpsf_path"], str):
        out["stpsf_path"] = _config_path(base, out["stpsf_path"])
    for key in ("img_path", "catalog_path", "association_path", "csv_path"):
        out[key] = cfg.get(key)
    if not isinstance(out["provider_options"], dict):
        raise InputError(f"config {path!r}: provider_options must be a JSON object, got "
                         f"{out['provider_options']!r}")
    options = out["provider_options"] = dict(out["provider_options"])
    images = options.get("images")
    if isinstance(images, (str, os.PathLike)):
        options["images"] = _config_path(base, images)
    elif isinstance(images, dict):
        options["images"] = {k: _config_path(base, v) if isinstance(v, (str, os.PathLike))
                             else v for k, v in images.items()}
    if isinstance(options.get("data_path"), (str, os.PathLike)) and options["data_path"]:
        options["data_path"] = _config_path(base, options["data_path"])
    out["dimension"] = _config_integer(out["dimension"], "dimension", path, strings=True)
    if out["dimension"] < 1:
        raise InputError(f"config {path!r}: dimension must be >= 1, got {out['dimension']}")
    if out["sigma"] is not None:
        try:
            out["sigma"] = float(out["sigma"])
        except (TypeError, ValueError):
            raise InputError(f"config {path!r}: sigma must be a number or null, "
                             f"got {out['sigma']!r}") from None
    try:
        out["pixfrac"] = float(out["pixfrac"])
    except (TypeError, ValueError):
        raise InputError(f"config {path!r}: pixfrac must be a number, "
                         f"got {out['pixfrac']!r}") from None
    out["max_workers"] = _config_integer(out["max_workers"], "max_workers", path)
    if out["pixel_scale"] is not None:
        value = out["pixel_scale"]
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise InputError(f"config {path!r}: pixel_scale must be a positive number "
                             f"[arcsec/px] or null, got {value!r}")
        out["pixel_scale"] = number
    return out


def _config_path(base, value):
    # a path of the config: relative ones from the config's folder, as img_path
    return os.path.join(base, os.path.expanduser(os.fspath(value)))


#: What :func:`_config_bool` reads as true and as false (strings in lower case).
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _config_bool(value, key, path):
    # a boolean from JSON: true/false, 0/1, or a string true/false, yes/no, 1/0 (any
    # case); InputError naming the file otherwise (bool("false") is True)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"config {path!r}: {key} must be true or false (or 1, 0, \"yes\", "
                     f"\"no\"), got {value!r}")


def _config_integer(value, key, path, strings=False):
    # an integer from JSON: an int, an integral float (51.0) or, with strings, a
    # string of an integer ("51", as int() had read dimension); InputError
    # naming the file otherwise (51.5 is refused, not truncated)
    number = value
    if strings and isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if (isinstance(number, bool) or not isinstance(number, (int, float))
            or not math.isfinite(number) or number != int(number)):
        raise InputError(f"config {path!r}: {key} must be an integer, got {value!r}")
    return int(number)


def read_catalog(path, fmt="fits", hdu=1, x_col="x", y_col="y", one_indexed=False):
    """Source positions [0-based mosaic px] from a catalog file, in its order.

    Parameters
    ----------
    path : str
        The catalog file.
    fmt : str, optional
        ``"fits"`` (or ``"fit"``; default), ``"csv"``, or any format name of
        :meth:`astropy.table.Table.read`.
    hdu : int or str, optional
        HDU of a FITS catalog (default 1).
    x_col, y_col : str, optional
        Columns of the pixel positions (default ``"x"``, ``"y"``).
    one_indexed : bool, optional
        True when the positions are 1-based (e.g. SExtractor's ``X_IMAGE``):
        1 is subtracted.  Default False.

    Returns
    -------
    x, y : ndarray of float64, shape (N,)
        Positions [mosaic px, 0-based], in catalog order.

    Raises
    ------
    InputError
        If the file cannot be read, a column is missing (the message lists the
        columns), a position cell is empty (masked) or not a number (the
        message names the column and the 0-based data rows), a position is
        not finite, or the catalog is empty.
    """
    from astropy.table import Table

    if not os.path.exists(path):
        raise InputError(f"catalog {path!r} does not exist")
    try:
        if fmt in ("fits", "fit"):
            from astropy.io import fits

            with fits.open(path, memmap=False) as hdul:
                try:
                    table = Table(hdul[hdu].data)
                except (KeyError, IndexError):
                    raise InputError(f"catalog {path!r} has no HDU {hdu!r}") from None
        elif fmt == "csv":
            table = Table.read(path, format="ascii.csv")
        else:
            table = Table.read(path, format=fmt)
    except InputError:
        raise
    except Exception as exc:  # astropy raises many kinds here
        raise InputError(f"catalog {path!r} cannot be read as {fmt}: {exc}") from None
    for col in (x_col, y_col):
        if col not in table.colnames:
            raise InputError(f"catalog {path!r} has no column {col!r}; it has "
                             f"{table.colnames[:20]}")
    x, y = (_position_column(table, col, path) for col in (x_col, y_col))
    if x.size == 0:
        raise InputError(f"catalog {path!r} is empty")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError(f"catalog {path!r} has non-finite positions")
    if one_indexed:
        x, y = x - 1.0, y - 1.0
    return x, y


def _rows(index):
    # "row 3" or "rows 3, 7, 9 (and 12 more)": 0-based data rows, as astropy numbers them
    index = [int(i) for i in index]
    listed = ", ".join(map(str, index[:5])) + (f" (and {len(index) - 5} more)"
                                               if len(index) > 5 else "")
    return f"row{'s' if len(index) > 1 else ''} {listed}"


def _position_column(table, col, path):
    # a position column as float64; InputError naming the catalog, column and rows for
    # empty (masked) cells, which np.asarray turned into the fill value (0), and cells
    # that are not numbers (text), which raised a bare ValueError
    column = table[col]
    mask = np.ma.getmaskarray(column) if getattr(column, "mask", None) is not None else None
    if mask is not None and mask.any():
        raise InputError(f"catalog {path!r}: column {col!r} has no value in "
                         f"{_rows(np.flatnonzero(mask))} (0-based data rows); give every "
                         "source a position or remove those rows")
    values = np.asarray(column)
    if values.ndim != 1:
        raise InputError(f"catalog {path!r}: column {col!r} must hold one number per row, "
                         f"got shape {values.shape}")
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    out = np.empty(values.size)
    bad = []
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            bad.append(i)
    if bad:
        raise InputError(f"catalog {path!r}: column {col!r} is not numeric: "
                         f"{str(values[bad[0]])!r} in {_rows(bad)} (0-based data rows)")
    return out


def make_provider(name, options, stpsf_path=None):
    """The PSF provider named in the configuration.

    Parameters
    ----------
    name : {"stpsf", "poppy", "image"}
        :class:`~astromix.mosaic.StpsfProvider`,
        :class:`~astromix.mosaic.PoppyProvider` or
        :class:`~astromix.mosaic.ImageProvider`.
    options : dict
        Keyword arguments of that class; for ``"image"``, ``images`` (a FITS
        path or a mapping detector -> path) is its first argument.
    stpsf_path : str, optional
        stpsf's data folder, passed as ``data_path`` unless ``options`` has
        one.

    Returns
    -------
    PSFProvider

    Raises
    ------
    InputError
        On an unknown provider, ``"image"`` without ``images``, options the
        class does not take (a TypeError), or the class's own checks (e.g.
        the stpsf data folder missing).
    """
    from ..mosaic import ImageProvider, PoppyProvider, StpsfProvider

    options = dict(options)
    try:
        if name == "stpsf":
            if stpsf_path and "data_path" not in options:
                options["data_path"] = stpsf_path
            return StpsfProvider(**options)
        if name == "poppy":
            return PoppyProvider(**options)
        if name == "image":
            images = options.pop("images", None)
            if images is None:
                raise InputError("provider 'image' needs provider_options.images (a FITS path "
                                 "or a mapping detector -> path)")
            return ImageProvider(images, **options)
    except TypeError as exc:
        raise InputError(f"bad provider_options for {name!r}: {exc}") from None
    raise InputError(f"unknown provider {name!r}; use 'stpsf', 'poppy' or 'image'")


def run(args):
    """Run ``astromix mosaic-psf`` (see the module docstring); returns the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the options registered by :func:`add_parser`).

    Returns
    -------
    int
        The exit status, 0.  Failures raise an AstromixError (below), which
        :func:`astromix.cli.main` reports on stderr with exit status 2.

    Raises
    ------
    InputError
        Before any PSF is computed: for a bad configuration, provider or
        catalog (:func:`read_config`, :func:`make_provider`,
        :func:`read_catalog`), an existing output with ``overwrite`` false, or
        a ``psf_array_filename`` that cannot be written (an unknown
        extension, a folder, a folder that cannot be created or in which no
        file can be created).
    AstromixError
        If the cube cannot be written (an OSError).
    """
    import concurrent.futures

    from ..mosaic import ExposureWeightedPSF, write_psf_cube
    from ..mosaic.psf import CUBE_SUFFIXES
    from ._shared import check_output_file

    t0 = time.perf_counter()
    out = sys.stdout
    cfg = read_config(args.config)
    provider = make_provider(cfg["provider"], cfg["provider_options"], cfg["stpsf_path"])
    x, y = read_catalog(cfg["catalog_path"], cfg["catalog_format"], cfg["catalog_hdu"],
                        cfg["x_col"], cfg["y_col"], cfg["one_indexed"])
    target = cfg["psf_array_filename"]
    if not cfg["overwrite"] and os.path.exists(target):
        raise InputError(f"{target} exists and overwrite is false; nothing was computed")
    if not target.lower().endswith(CUBE_SUFFIXES):
        raise InputError(f"config {args.config!r}: unknown PSF cube format for "
                         f"psf_array_filename {target!r}: use {', '.join(CUBE_SUFFIXES)}")
    check_output_file(target, True, "psf_array_filename")  # creates a missing folder
    model = ExposureWeightedPSF.from_i2d(cfg["img_path"], provider,
                                         exposure_table=cfg["csv_path"],
                                         association=cfg["association_path"],
                                         sigma=cfg["sigma"], pixfrac=cfg["pixfrac"])
    if model.context is None:
        log.warning("%s has no context (CON) extension: every exposure covering a source "
                    "counts", cfg["img_path"])
    scale = _wcs_scale(model.wcs, x, y)
    if cfg["pixel_scale"] is not None and abs(scale / cfg["pixel_scale"] - 1) > 0.01:
        log.warning("config pixel_scale %.5g differs from the mosaic WCS's %.5g arcsec/px; "
                    "the WCS is used", cfg["pixel_scale"], scale)
    print(f"astromix mosaic-psf: {cfg['img_path']}, {len(model.exposures)} exposures, "
          f"{x.size} sources, dim {cfg['dimension']}, provider {cfg['provider']}, "
          f"mosaic {scale:.4f} arcsec/px", file=out)
    workers = cfg["max_workers"]
    executor = "serial" if workers <= 1 else concurrent.futures.ProcessPoolExecutor(workers)
    try:
        cube = model.cube(x, y, cfg["dimension"], executor=executor,
                          progress=getattr(args, "progress", True))
    finally:
        if executor != "serial":
            executor.shutdown(wait=True, cancel_futures=True)
    sources = model.source_table(x, y)
    sources["x"] += 1.0 if cfg["one_indexed"] else 0.0
    sources["y"] += 1.0 if cfg["one_indexed"] else 0.0
    meta = {"ORIGIN": "astromix mosaic-psf", "PSFDIM": cfg["dimension"],
            "SIGMA": cfg["sigma"] if cfg["sigma"] is not None else 0.0,
            "PIXFRAC": cfg["pixfrac"], "PROVIDER": cfg["provider"], "PIXSCALE": scale,
            "NEXPOSE": len(model.exposures)}
    try:
        write_psf_cube(target, cube, sources, meta=meta, overwrite=cfg["overwrite"])
    except OSError as exc:
        raise AstromixError(f"cannot write {target!r}: {exc.strerror or exc}") from None
    n_zero = int(np.sum(sources["n_exposures"] == 0))
    print(f"{model.n_unique_psfs} unique PSFs; {x.size} PSFs in "
          f"{time.perf_counter() - t0:.2f} s; exposures per source "
          f"{int(np.min(sources['n_exposures']))}-{int(np.max(sources['n_exposures']))}"
          + (f" ({n_zero} source(s) without exposures: zero PSF)" if n_zero else ""), file=out)
    print(f"wrote {target}", file=out)
    return 0


def _wcs_scale(wcs, x, y):
    """Mosaic pixel scale [arcsec/px] at the catalog's mean position."""
    xm, ym = float(np.mean(x)), float(np.mean(y))
    ra, dec = wcs.pixel_to_world_values(np.array([xm, xm + 1, xm]), np.array([ym, ym, ym + 1]))
    ra, dec = np.asarray(ra), np.asarray(dec)
    c = np.cos(np.radians(dec[0]))
    dx = np.hypot((ra[1] - ra[0]) * c, dec[1] - dec[0])
    dy = np.hypot((ra[2] - ra[0]) * c, dec[2] - dec[0])
    return float(np.sqrt(dx * dy) * 3600.0)
