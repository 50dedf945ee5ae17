"""``astromix fit-photometry``: scale, background, pointing and PSF of an image against another.

imphot's ``fit_photometry`` script for any pair of instruments::

    astromix fit-photometry muse.fits hst_f606w.fits \\
        --regions stars.reg --json fit.json --plot fit.png --save-fits fitted/

TARGET and REFERENCE are FITS images with a celestial WCS: the extension
given by ``--ext`` / ``--reference-ext``, else a ``DATA`` or ``SCI``
extension, else the first HDU with an image; a variance (``STAT``) or
standard deviation (``ERR``) extension and a ``DQ`` extension beside it are
used when present (:func:`astromix.photometry.read_image`).  An HST reference
in count rates is converted with its PHOTFLAM to the target's flux unit (its
``BUNIT``, or MUSE's ``FSCALE``; ``--flux-unit`` gives another or ``none``);
one already in flux density is only converted to that unit, and an HST
reference (``TELESCOP``/``INSTRUME``) without PHOTFLAM is warned about.
The reference is
regridded onto the target's pixels (flux conserving) and the whole image is
fitted in Fourier space (:func:`astromix.photometry.fit_image_photometry`);
with ``--star RA DEC RADIUS`` the star there is also fitted with a Moffat
profile in both images (:func:`astromix.photometry.fit_star_photometry`).

The fitted values are printed as a table.  ``--json`` writes ``{"target",
"reference", "method": "image", "fwhm", "beta", "scale", "bg", "dx", "dy",
"dra", "ddec", "rms", "units", "seconds"}`` with each measurement as
``{"value", "error", "fixed"}`` (and ``"star"``: the same for the star fit);
``units`` gives the unit of each, that of bg and rms being the target's (its
``BUNIT``, else MUSE's ``FSCALE`` x erg/s/cm2/A, else "" when unknown),
whatever unit ``--flux-unit`` converted the reference to;
``--plot`` a figure of the fit (format from the file's extension);
``--save-fits`` the fitted image, model and residual as FITS files.  Every
file is written to a temporary file and renamed into place.
"""

import argparse
import json
import logging
import math
import os
import time

from ..errors import AstromixError, InputError
from ._shared import (
    atomic_path,
    check_output_file,
    check_output_name,
    hdu_argument,
    prepare_output_folder,
)

__all__ = ["add_parser", "run"]

log = logging.getLogger("astromix")

#: INSTRUME values of HST's instruments (whose images carry a PHOTFLAM).
_HST_INSTRUMENTS = frozenset({"ACS", "WFC3", "WFPC2", "WFPC", "NICMOS", "STIS", "FOC", "FOS",
                              "GHRS", "COS"})

_FIXABLE = (("fwhm", "arcsec"), ("beta", ""), ("scale", ""), ("bg", "target units"),
            ("dx", "arcsec"), ("dy", "arcsec"))


def _number(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_parser(subparsers):
    """Register the ``fit-photometry`` subcommand.

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
        "fit-photometry",
        help="fit the flux scale, background, pointing offset and PSF of an image against a "
             "sharper reference image of the same sky (imphot)",
        description="Fit the flux scale (target / reference), background offset [target "
                    "units], pointing offset dx, dy [arcsec along the target's x, y; the shift "
                    "of the reference's features onto the target's] and the FWHM [arcsec] and "
                    "beta of the Moffat kernel that blurs the reference to the target, in "
                    "Fourier space (imphot's image fit); optionally also from one star.",
        epilog="Example: astromix fit-photometry muse.fits hst.fits --json fit.json "
               "--plot fit.png")
    parser.add_argument("target", metavar="TARGET", help="FITS image to characterise (e.g. MUSE)")
    parser.add_argument("reference", metavar="REFERENCE",
                        help="sharper FITS image of the same sky (e.g. HST)")
    parser.add_argument("--ext", type=hdu_argument, default=None, metavar="HDU",
                        help="HDU of the target image (default: DATA, SCI or the first image)")
    parser.add_argument("--reference-ext", type=hdu_argument, default=None, metavar="HDU",
                        help="HDU of the reference image (same default)")
    parser.add_argument("--star", nargs=3, type=_number, metavar=("RA", "DEC", "RADIUS"),
                        help="also fit the star at RA, DEC [deg] within RADIUS [arcsec] with a "
                             "Moffat profile in both images")
    parser.add_argument("--regions", metavar="FILE",
                        help="ds9 region file: include regions restrict the image fit, "
                             "exclude regions (-circle ...) remove areas")
    for name, unit in _FIXABLE:
        parser.add_argument(f"--fix-{name}", type=_number, default=None, metavar="VALUE",
                            help=f"hold {name} fixed at VALUE" + (f" [{unit}]" if unit else ""))
    parser.add_argument("--flux-unit", default="auto", metavar="UNIT",
                        help="convert the reference (HST) from count rates with its PHOTFLAM "
                             "to this flux unit first: a number (x erg/s/cm2/A, e.g. 1e-20 for "
                             "MUSE) or a unit string; 'auto' (default): the target's unit "
                             "(BUNIT, or MUSE's FSCALE) when the reference has a PHOTFLAM; "
                             "'none': no conversion")
    parser.add_argument("--model", choices=("windowed", "imphot"), default="windowed",
                        help="windowed (default): taper the blurred reference, like the "
                             "target; imphot: taper the reference before blurring it, as imphot "
                             "(biased where taper zones cover much of the field)")
    parser.add_argument("--margin", type=_number, default=2.0, metavar="ARCSEC",
                        help="zero padding [arcsec] (default 2)")
    parser.add_argument("--taper", type=_number, default=9, metavar="PX",
                        help="width of the mask-edge taper [px] (default 9; 0: none)")
    psf = parser.add_mutually_exclusive_group()
    psf.add_argument("--reference-psf", nargs=2, type=_number, default=(0.085, 1.6),
                     metavar=("FWHM", "BETA"),
                     help="Moffat model of the reference's PSF applied to the target "
                          "(default 0.085 arcsec, 1.6: HST)")
    psf.add_argument("--no-reference-psf", action="store_true",
                     help="do not blur the target by a model of the reference's PSF")
    parser.add_argument("--regrid", choices=("exact", "interp", "adaptive"), default="exact",
                        help="how the reference is resampled (default exact)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT", help="write a figure of the fit (png, pdf...)")
    parser.add_argument("--save-fits", metavar="DIR",
                        help="write <target>_image.fits, _model.fits and _residual.fits here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)
    return parser


def _check_outputs(args):
    """Refuse bad outputs before fitting: empty names, folders, existing files (without
    --overwrite), unwritable folders and a --plot format matplotlib cannot write."""
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output_file(path, args.overwrite, option)
    if args.plot is not None:
        ext = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if not ext:
            raise InputError(f"--plot {args.plot!r}: give a file extension (png, pdf, svg...)")
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
        formats = FigureCanvasBase.get_supported_filetypes()
        if ext not in formats:
            raise InputError(f"--plot {args.plot!r}: matplotlib cannot write .{ext} files "
                             f"(it writes {', '.join(sorted(formats))})")
    if args.save_fits is not None:
        if not args.save_fits.strip():
            raise InputError("--save-fits: the folder name is empty")
        if os.path.exists(args.save_fits) and not os.path.isdir(args.save_fits):
            raise InputError(f"--save-fits {args.save_fits!r} is a file, not a folder")
        prepare_output_folder(args.save_fits)


def _save_fits_paths(args, prefix):
    """The files --save-fits writes (as ImagePhotometryResult.write_fits names them); InputError
    for one that exists without --overwrite."""
    paths = [os.path.join(args.save_fits, f"{prefix}_{kind}.fits")
             for kind in ("image", "model", "residual")]
    for path in paths:  # the folder itself was checked by _check_outputs
        check_output_name(path, args.overwrite, "--save-fits")
    return paths


def _write_failed(path, exc):
    return AstromixError(f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}")


def _header_keyword(image, key):
    for name in ("header", "primary_header"):
        header = image.meta.get(name)
        if header is not None and key in header:
            return header[key]
    return None


def _fscale(image):
    """MUSE's ``FSCALE`` of an image (its data are in FSCALE erg/s/cm^2/A), or None."""
    try:
        value = float(_header_keyword(image, "FSCALE"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _target_unit(target):
    """The unit of the target's data, that of bg and rms, as text ("" when unknown).

    Its unit (``BUNIT`` as astropy reads it), else its ``BUNIT`` text, else
    MUSE's ``FSCALE`` x erg/s/cm^2/A.  The conversion of the reference
    (``--flux-unit``) does not change the target's data, so it does not
    change this unit.
    """
    from astropy import units as u

    from ..photometry.helpers import FLAM

    if target.unit is not None:
        return target.unit.to_string()
    bunit = _header_keyword(target, "BUNIT")
    if isinstance(bunit, str) and bunit.strip():
        return bunit.strip()
    fscale = _fscale(target)
    return "" if fscale is None else u.Unit(fscale * FLAM).to_string()


def _convert_reference(reference, unit, args):
    """The reference converted with its PHOTFLAM to ``unit``; InputError naming the file and
    the command's options (not the library's arguments) when it cannot be."""
    from ..photometry import rescale_to_flux_units
    from ..photometry.helpers import _flux_unit as _output_unit

    try:
        unit = _output_unit(unit)
    except InputError as exc:
        raise InputError(f"--flux-unit {args.flux_unit}: {exc}") from None
    try:
        return rescale_to_flux_units(reference, unit=unit)
    except InputError as exc:
        if _header_keyword(reference, "PHOTFLAM") is None and "PHOTFLAM" in str(exc):
            raise InputError(
                f"--flux-unit {args.flux_unit}: the reference {args.reference!r} has no PHOTFLAM "
                "keyword (and no flux-density BUNIT), so it cannot be converted to a flux "
                "density; add its PHOTFLAM [erg/s/cm2/A per count/s] to its header, or give "
                "--flux-unit none to fit it in its own units") from None
        raise InputError(f"--flux-unit {args.flux_unit}: cannot convert the reference "
                         f"{args.reference!r}: {exc}") from None


def _flux_unit(option, target, reference):
    """The unit the reference is converted to (None: no conversion) for ``--flux-unit``.

    ``auto``: when the reference's headers hold a PHOTFLAM and the target's
    unit is a flux density per wavelength (its ``BUNIT``, or MUSE's
    ``FSCALE`` in erg/s/cm^2/A), that unit; otherwise no conversion (with a
    warning when the reference has a PHOTFLAM, since the scale then comes
    out in target units per reference count rate, and when the reference
    looks like an HST image -- ``TELESCOP`` or ``INSTRUME`` -- but has no
    PHOTFLAM and no flux-density unit, e.g. a copy whose keywords were lost).
    """
    from ..photometry.helpers import FLAM, _is_flux_density

    text = option.strip()
    if text.lower() == "none":
        return None
    if text.lower() != "auto":
        try:
            return float(text)
        except ValueError:
            return text
    if _header_keyword(reference, "PHOTFLAM") is None:
        telescope = str(_header_keyword(reference, "TELESCOP") or "").strip().upper()
        instrument = str(_header_keyword(reference, "INSTRUME") or "").strip().upper()
        if ((telescope == "HST" or instrument in _HST_INSTRUMENTS)
                and not (reference.unit is not None and _is_flux_density(reference.unit))):
            log.warning("the reference looks like an HST image (%s) but has no PHOTFLAM "
                        "keyword: it is not converted to flux units, so scale is in target "
                        "units per reference unit; give its PHOTFLAM back (e.g. regrid the "
                        "original file again with astromix regrid, which keeps it) or use "
                        "--flux-unit none to silence this", " ".join(
                            v for v in (telescope, instrument) if v))
        return None
    if target.unit is not None and target.unit.is_equivalent(FLAM):
        return target.unit
    fscale = _fscale(target)
    if fscale is not None:
        return fscale
    log.warning("the reference has a PHOTFLAM but the target's unit is unknown (no flux-density "
                "BUNIT or FSCALE): the reference stays in count rates, so scale is in target "
                "units per reference count rate; give --flux-unit to convert it")
    return None


def run(args):
    """Run ``astromix fit-photometry`` with parsed arguments; returns the exit status.

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
        Before any fit: if ``--json`` or ``--plot`` is empty or a folder, or
        exists without ``--overwrite``, ``--plot`` has no file extension or
        one matplotlib cannot write, a ``--save-fits`` file exists without
        ``--overwrite``, or an output folder cannot be created or written;
        if ``--flux-unit`` is not a flux density per wavelength, or the
        reference cannot be converted to it (e.g. no ``PHOTFLAM``): the
        message names the reference file.
    AstromixError
        If writing an output fails (a full disk...); the outputs written
        before it are kept.
    """
    from ..photometry import fit_image_photometry, fit_star_photometry, read_image

    _check_outputs(args)
    t0 = time.perf_counter()
    target = read_image(args.target, ext=args.ext)
    prefix = target.name or "image_fit"         # write_fits's default
    if args.save_fits is not None:
        _save_fits_paths(args, prefix)
    reference = read_image(args.reference, ext=args.reference_ext)
    unit = _flux_unit(args.flux_unit, target, reference)
    if unit is not None:
        reference = _convert_reference(reference, unit, args)
        log.info("reference converted with its PHOTFLAM to %s", reference.unit)
    fixed = {f"fix_{name}": getattr(args, f"fix_{name}") for name, _ in _FIXABLE}
    result = fit_image_photometry(
        target, reference, regions=args.regions, margin=args.margin, taper=args.taper,
        reference_psf=None if args.no_reference_psf else tuple(args.reference_psf),
        model=args.model, regrid_method=args.regrid, **fixed)
    star = None
    if args.star is not None:
        ra, dec, radius = args.star
        star = fit_star_photometry(target, reference, (ra, dec), radius,
                                   fix_fwhm=args.fix_fwhm, fix_beta=args.fix_beta)
    # bg and rms are in the target's units, whatever unit the reference was converted to
    target_unit = _target_unit(target)
    for res in (result, star):
        if res is not None:
            res.target_unit = target_unit
    seconds = time.perf_counter() - t0

    print(f"{target.name} against {reference.name} (image fit, {args.model} model, "
          f"{seconds:.2f} s)")
    result.summary().pprint(max_lines=-1, max_width=-1)
    if star is not None:
        print(f"star at ({args.star[0]:.6f}, {args.star[1]:.6f}), radius {args.star[2]:g}\":")
        star.summary().pprint(max_lines=-1, max_width=-1)

    if args.json is not None:
        doc = {"target": os.path.abspath(args.target),
               "reference": os.path.abspath(args.reference), "method": "image",
               "model": args.model, **result.to_dict(), "units": result.units,
               "seconds": seconds}
        if star is not None:
            doc["star"] = {"ra": args.star[0], "dec": args.star[1], "radius": args.star[2],
                           **star.to_dict(), "units": star.units}
        try:
            with atomic_path(args.json) as tmp, open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1)
                fh.write("\n")
        except OSError as exc:
            raise _write_failed(args.json, exc) from None
        log.info("wrote %s", args.json)
    if args.plot is not None:
        fig = result.plot()
        ext = os.path.splitext(args.plot)[1].lstrip(".").lower()
        try:
            with atomic_path(args.plot) as tmp:
                fig.savefig(tmp, format=ext, dpi=100)
        except OSError as exc:
            raise _write_failed(args.plot, exc) from None
        log.info("wrote %s", args.plot)
    if args.save_fits is not None:
        try:
            paths = result.write_fits(args.save_fits, prefix=prefix, overwrite=args.overwrite)
        except OSError as exc:
            raise _write_failed(args.save_fits, exc) from None
        for path in paths:
            log.info("wrote %s", path)
    return 0
