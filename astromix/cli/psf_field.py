"""``astromix psf-field``: model the PSF of a field from its stars and validate it.

::

    astromix psf-field image.fits --saturation 12000 --outdir psf_out
    astromix psf-field image.fits --oversampling 2 --outdir psf_fine   # undersampled stars
    astromix psf-field image.fits --basis mixture --n-components 4 --outdir psf_mix

Sources are detected in IMAGE (:func:`astromix.psffield.detect_sources`) or
read from a SExtractor FITS_LDAC catalog (``--catalog``; ``--catalog-hdu``
picks one CCD's table from a catalog of a multi-extension image, and
``--image-hdu`` that CCD's image in IMAGE, by default its first 2-D image HDU:
when the catalog's ``LDAC_IMHEAD`` and the image HDU both name their CCD, by
``EXTNAME`` or ``CCDNAME``, a mismatch is refused); the stars are
selected on the size-magnitude locus with a random reserve
(:func:`astromix.psffield.select_stars`), the PSF field is fitted on the
other stars (:func:`astromix.psffield.fit_psf_field`) and validated on the
reserve (:func:`astromix.psffield.validation.validate_psf_field`,
:func:`~astromix.psffield.validation.rho_statistics`).

Written in OUTDIR (each file atomically): ``psf.psf`` (PSFEx model),
``stars.ecsv`` (the stars, selected and reserve, with flags and fit columns),
``validation.ecsv`` (HSM moments per reserve star), ``rho_stats.ecsv`` and,
unless ``--no-plot``, ``size_magnitude.png`` and ``whiskers.png``.  The output
folder and names are checked before any work.  When the rho statistics cannot
be computed (fewer than two usable reserve stars), a ``rho_stats.ecsv`` left in
OUTDIR by an earlier run is removed, so that every table there is of this run.
"""

import logging
import os
import time

from ..errors import AstromixError, InputError
from ._shared import (
    atomic_path,
    check_output_name,
    positive_float,
    prepare_output_folder,
)

__all__ = ["add_parser", "run"]

log = logging.getLogger("astromix")


def add_parser(subparsers):
    """Register the ``psf-field`` subcommand.

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
        "psf-field",
        help="model the PSF of a field from its stars (PSFEx-style) and validate it",
        description="Detect or read sources, select stars with a reserve, fit a pixel PSF "
                    "varying as a polynomial in (x, y) and validate it on the reserve stars "
                    "(HSM moments, pixel RMSE, rho statistics).",
        epilog="Example: astromix psf-field image.fits --saturation 12000 --outdir psf_out")
    parser.add_argument("image", metavar="IMAGE",
                        help="FITS image (its first 2-D image HDU, or --image-hdu)")
    parser.add_argument("--image-hdu", type=int, metavar="N",
                        help="HDU index of the image to read from a multi-extension IMAGE "
                             "(one HDU per CCD; also the HDU read from --weight; default: "
                             "the first 2-D image HDU)")
    parser.add_argument("--weight", metavar="W", help="FITS inverse-variance map")
    parser.add_argument("--catalog", metavar="CAT", help="SExtractor FITS_LDAC catalog")
    parser.add_argument("--catalog-hdu", type=int, metavar="N",
                        help="HDU index of the LDAC_OBJECTS table to read from a multi-CCD "
                             "catalog (one table per CCD; the CCD of the image read: when "
                             "its LDAC_IMHEAD names another CCD, by EXTNAME or CCDNAME, than "
                             "the image HDU, the run is refused)")
    parser.add_argument("--degree", type=int, default=2, help="polynomial degree (default 2)")
    parser.add_argument("--size", type=int, default=25, help="PSF stamp side [px], odd "
                        "(default 25)")
    parser.add_argument("--oversampling", type=int, default=1, metavar="N",
                        help="pixel basis: PSF grid samples per image pixel (default 1; 2 "
                             "for undersampled stars, FWHM < ~2.5 px; PSFEx's PSF_SAMPLING "
                             "= 1/N)")
    parser.add_argument("--basis", choices=("pixel", "mixture"), default="pixel",
                        help="PSF model: pixel grid (PSFEx's PIXEL basis; default) or a "
                             "Gaussian mixture whose amplitudes and covariances vary")
    parser.add_argument("--n-components", type=int, default=4,
                        help="Gaussians of the mixture basis (default 4)")
    parser.add_argument("--reserve", type=float, default=0.2,
                        help="fraction of stars kept for validation (default 0.2)")
    parser.add_argument("--saturation", type=float, default=None,
                        help="saturation level [image unit] for detection")
    parser.add_argument("--snr-min", type=float, default=20.0,
                        help="lowest S/N of a star (default 20; 10 doubles the CFHT A370 "
                             "stars)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reserve draw")
    parser.add_argument("--pixel-scale", type=positive_float, default=None, metavar="ARCSEC",
                        help="arcsec per pixel for the rho statistics, > 0 (default: from "
                             "the WCS, else 1)")
    parser.add_argument("--outdir", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="write no figures")
    parser.set_defaults(func=run)
    return parser


def _read(path, what, index=None):
    """``(data, header, index)`` of the 2-D image at HDU ``index`` of ``path``.

    ``index`` None: the first 2-D image HDU.  Raises InputError, naming the
    file (and, for a bad ``index``, its 2-D image HDUs), if the file cannot be
    read, holds no 2-D image, or HDU ``index`` is missing or not a 2-D image.
    """
    import numpy as np
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            if index is None:
                for i, hdu in enumerate(hdul):
                    if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                        return np.asarray(hdu.data, dtype=np.float64), hdu.header, i
            else:
                images = ", ".join(str(i) for i, hdu in enumerate(hdul)
                                   if hdu.is_image and hdu.header.get("NAXIS") == 2)
                images = f"2-D images at HDU {images}" if images else "no 2-D image"
                if not -len(hdul) <= index < len(hdul):
                    raise InputError(f"{what} {path!r} has no HDU {index} (HDU 0 to "
                                     f"{len(hdul) - 1}; {images})")
                hdu = hdul[index]
                if not (hdu.is_image and hdu.data is not None and hdu.data.ndim == 2):
                    raise InputError(f"{what} {path!r}: HDU {index} is not a 2-D image "
                                     f"({images}; --image-hdu)")
                return (np.asarray(hdu.data, dtype=np.float64), hdu.header,
                        index % len(hdul))
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        # what astropy raises for a truncated or damaged file (as read_psfex catches)
        raise InputError(f"cannot read {what} {path!r}: {exc}") from None
    raise InputError(f"{what} {path!r} has no 2-D image HDU")


#: Header keywords naming a CCD of a multi-extension image, compared between the image
#: HDU and the catalog's LDAC_IMHEAD (SExtractor's copy of the header of the image it
#: was run on).
_CCD_KEYS = ("EXTNAME", "CCDNAME")


def _catalog_ccd(path, index):
    """``(objects_index, names)``: the catalog's LDAC_OBJECTS HDU and its CCD's names.

    ``index``: the HDU that :func:`~astromix.psffield.read_ldac` read (None:
    the file's only ``LDAC_OBJECTS``).  ``names`` maps the keys of
    :data:`_CCD_KEYS` found in the ``LDAC_IMHEAD`` just before that HDU (the
    header SExtractor copied there) to their stripped values; empty when
    there is none or it cannot be parsed.
    """
    import numpy as np
    from astropy.io import fits

    def ext(hdu):
        return str(hdu.header.get("EXTNAME", "")).strip().upper()

    try:
        with fits.open(path) as hdul:
            if index is None:
                index = next(i for i, h in enumerate(hdul) if ext(h) == "LDAC_OBJECTS")
            index %= len(hdul)
            if index == 0 or ext(hdul[index - 1]) != "LDAC_IMHEAD":
                return index, {}
            cards = [c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)
                     for c in np.asarray(hdul[index - 1].data["Field Header Card"]).ravel()]
            # SExtractor's layout: one 80-character card per element (TDIM (80, n)),
            # which astropy returns with their trailing blanks stripped; else one string
            text = "".join(c.ljust(80) for c in cards) if len(cards) > 1 else "".join(cards)
            header = fits.Header.fromstring(text)
            return index, {key: str(header[key]).strip() for key in _CCD_KEYS
                           if key in header}
    except Exception:  # noqa: BLE001 - read_ldac has read the table; no CCD names
        return index, {}


def _check_catalog_ccd(args, image_header, image_index):
    """Refuse a catalog table of another CCD than the image HDU read (InputError).

    Compares the :data:`_CCD_KEYS` that both the catalog's ``LDAC_IMHEAD`` and
    the image header hold (case-insensitive); the message names both files and
    HDUs, and the image HDU of that CCD when IMAGE has one.
    """
    from astropy.io import fits

    cat_index, names = _catalog_ccd(args.catalog, args.catalog_hdu)
    for key, value in names.items():
        if key not in image_header:
            continue
        own = str(image_header[key]).strip()
        if own.upper() == value.upper():
            continue
        try:
            with fits.open(args.image) as hdul:
                match = [i for i, h in enumerate(hdul) if h.is_image
                         and str(h.header.get(key, "")).strip().upper() == value.upper()]
        except Exception:  # noqa: BLE001 - no hint
            match = []
        if len(match) == 1:
            hint = f"give --image-hdu {match[0]} (the HDU of {key} {value!r})"
        else:
            hint = (f"{args.image!r} has no single HDU of {key} {value!r}: give --catalog-hdu "
                    f"the LDAC_OBJECTS table of {own!r}")
        raise InputError(f"catalog {args.catalog!r} HDU {cat_index} is of the CCD with {key} "
                         f"{value!r} (its LDAC_IMHEAD), image {args.image!r} HDU "
                         f"{image_index} has {key} {own!r}: the star positions are of "
                         f"another CCD; {hint}")


def _pixel_scale(header):
    import warnings

    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
        if wcs.naxis == 2 and wcs.has_celestial:
            return float(proj_plane_pixel_scales(wcs).mean() * 3600.0)
    except Exception:  # noqa: BLE001 - any WCS problem: no scale
        pass
    return None


def _write_table(table, path):
    with atomic_path(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)


def run(args):
    """Run ``astromix psf-field`` with parsed arguments; returns the exit status.

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
        If ``--oversampling`` is below 1 or given with ``--basis mixture``, the
        output folder cannot be created or no file can be created in it, an
        output name there is taken by a folder (these checks come before any
        work), IMAGE or ``--weight`` cannot be read (missing, truncated or
        damaged) or holds no 2-D image (at ``--image-hdu``), the weight's
        shape differs from the image's, the catalog table is of another CCD
        than the image HDU (their ``EXTNAME`` or ``CCDNAME`` differ), there is
        no reserve star, or the fit refuses the stars (e.g. their stamps hold
        no PSF).
    AstromixError
        If an output cannot be written all the same (an OSError, e.g. a full
        disk); the message names the output.
    """
    import numpy as np

    from ..io.psfex import write_psfex
    from ..psffield import (
        detect_sources,
        fit_mixture_psf_field,
        fit_psf_field,
        read_ldac,
        select_stars,
    )
    from ..psffield.validation import plot_whiskers, rho_statistics, validate_psf_field

    t0 = time.perf_counter()
    if args.oversampling < 1:
        raise InputError(f"--oversampling must be an integer >= 1, got {args.oversampling}")
    if args.oversampling != 1 and args.basis == "mixture":
        raise InputError("--oversampling applies to the pixel basis only: the mixture basis "
                         "is already a forward model of the star pixels (at any sampling)")
    prepare_output_folder(args.outdir)
    names = ["psf.psf", "stars.ecsv", "validation.ecsv", "rho_stats.ecsv"]
    if not args.no_plot:
        names += ["size_magnitude.png", "whiskers.png"]
    for name in names:
        check_output_name(os.path.join(args.outdir, name), True, "--outdir")
    image, header, image_index = _read(args.image, "image", args.image_hdu)
    weight = None if args.weight is None else _read(args.weight, "weight", args.image_hdu)[0]
    if weight is not None and weight.shape != image.shape:
        raise InputError(f"weight shape {weight.shape} differs from image {image.shape}")
    if args.catalog is None and args.catalog_hdu is not None:
        raise InputError("--catalog-hdu needs --catalog")
    if args.catalog is not None:
        try:
            catalog = read_ldac(args.catalog, hdu=args.catalog_hdu)
        except InputError as exc:
            # read_ldac's own words name its keyword; here it is the option
            raise InputError(str(exc).replace("hdu=<index>", "--catalog-hdu N")) from None
        _check_catalog_ccd(args, header, image_index)
    else:
        catalog = detect_sources(image, weight=weight, saturation=args.saturation)
    stars = select_stars(catalog, snr_range=(args.snr_min, None), reserve=args.reserve,
                         seed=args.seed)
    stars = stars[np.asarray(stars["star"], bool)]
    n_res = int(np.sum(stars["reserve"]))
    if n_res == 0:
        raise InputError("no reserve stars to validate with (raise --reserve)")
    model = fit_psf_field(image, stars[np.asarray(stars["selected"], bool)], weight=weight,
                          size=args.size, degree=args.degree, oversampling=args.oversampling)
    if args.basis == "mixture":
        model = fit_mixture_psf_field(image, stars[np.asarray(stars["selected"], bool)],
                                      weight=weight, n_components=args.n_components,
                                      pixel_model=model)
    fitted = model.stars
    for name in ("x_fit", "y_fit", "flux_fit", "chi2_dof", "n_masked", "rejected", "used"):
        col = np.full(len(stars), np.nan if fitted[name].dtype.kind == "f" else False,
                      dtype=fitted[name].dtype)
        col[np.asarray(stars["selected"], bool)] = fitted[name]
        stars[name] = col
    table = validate_psf_field(image, model, stars, size=args.size, weight=weight)
    scale = args.pixel_scale if args.pixel_scale is not None else (_pixel_scale(header) or 1.0)
    try:
        rho = rho_statistics(table, pixel_scale=scale)
    except InputError as exc:
        log.warning("no rho statistics: %s", exc)
        rho = None

    path = os.path.join(args.outdir, "psf.psf")
    try:
        write_psfex(path, model.to_psfex(), overwrite=True)
        path = os.path.join(args.outdir, "stars.ecsv")
        _write_table(stars, path)
        path = os.path.join(args.outdir, "validation.ecsv")
        _write_table(table, path)
        path = os.path.join(args.outdir, "rho_stats.ecsv")
        if rho is not None:
            _write_table(rho, path)
        elif os.path.lexists(path):  # an earlier run's: not of this PSF model
            os.remove(path)
            log.warning("removed %s of an earlier run (no rho statistics in this one)", path)
        if not args.no_plot:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from ..psffield import plot_size_magnitude

            catalog_sel = select_stars(catalog, snr_range=(args.snr_min, None),
                                       reserve=args.reserve, seed=args.seed)
            for name, draw in (("size_magnitude.png",
                                lambda ax: plot_size_magnitude(catalog_sel, ax=ax)),
                               ("whiskers.png", lambda ax: plot_whiskers(table, ax=ax))):
                fig, ax = plt.subplots(figsize=(6, 5))
                try:
                    draw(ax)
                    path = os.path.join(args.outdir, name)
                    with atomic_path(path) as tmp:
                        fig.savefig(tmp, format="png", dpi=100)
                finally:
                    plt.close(fig)
    except OSError as exc:
        raise AstromixError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    m = table.meta
    print(f"{len(stars)} stars ({n_res} reserve), {model.fit_info['n_used']} used in the fit; "
          f"reserve: median dsigma/sigma {m['median_dsigma_over_sigma']:+.4f}, de1 "
          f"{m['median_de1']:+.4f}, de2 {m['median_de2']:+.4f}, pixel RMSE/peak "
          f"{m['median_rmse']:.4f} ({time.perf_counter() - t0:.1f} s) -> {args.outdir}")
    return 0
