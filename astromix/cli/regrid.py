"""``astromix regrid``: resample a reference image onto a target image's pixel grid.

::

    astromix regrid hst_f606w.fits muse.fits --output hst_on_muse.fits

REFERENCE and TARGET are FITS images with a celestial WCS, read with
:func:`astromix.photometry.read_image` (``--ext`` / ``--target-ext`` pick
the HDU; default ``DATA``, ``SCI`` or the first image).  The reference is
resampled onto the target's pixels with :func:`astromix.photometry.regrid`
(``--method exact``: exact pixel overlaps, the default; ``interp``: bilinear;
``adaptive``: anti-aliased), multiplied by the pixel-area ratio so that the
flux over any area of sky is conserved (the result is in the reference's
unit per *target* pixel).  A reference whose ``BUNIT`` is per solid angle (a
surface brightness, e.g. ``MJy/sr``) is not multiplied: it stays in its unit.

OUT.fits is written to a temporary file and renamed into place: an empty
primary HDU, then ``DATA`` (float64, the target's celestial WCS, ``BUNIT``
when the reference has one), ``STAT`` (variance, when the reference has
an uncertainty) and ``DQ`` (uint8, 1 = target pixel not fully covered by
valid reference pixels), so that ``read_image`` reads it back.  Each
extension also carries the reference's photometric keywords that stay true
per target pixel (:data:`PHOTOMETRIC_KEYWORDS`: ``PHOTFLAM``, ``PHOTPLAM``,
``PHOTZPT``, ``EXPTIME``, the filter names, ``TELESCOP``, ``INSTRUME``...),
so that ``astromix fit-photometry`` converts the regridded image with its
PHOTFLAM as it does the original; keywords tied to the reference's pixel
size (``PIXAR_SR``, ``PHOTMJSR``) are left out.
"""

import logging
import os

from ..errors import AstromixError, InputError
from ._shared import atomic_path, check_output_file, hdu_argument

__all__ = ["add_parser", "run", "write_exposure", "photometric_cards", "PHOTOMETRIC_KEYWORDS"]

log = logging.getLogger("astromix")

#: The reference's header keywords copied into a regridded image: its photometric calibration
#: (HST's PHOT* keywords, still true per target pixel since regrid conserves the count rate),
#: exposure time (for images in counts), filter names (:func:`astromix.photometry.hst_filter_name`),
#: telescope and instrument, and MUSE's unit scale FSCALE.
PHOTOMETRIC_KEYWORDS = ("TELESCOP", "INSTRUME", "DETECTOR", "PHOTMODE", "PHOTFLAM", "PHOTFNU",
                        "PHOTPLAM", "PHOTBW", "PHOTZPT", "EXPTIME", "FILTER", "FILTER1",
                        "FILTER2", "FILTNAM1", "FILTNAM2", "FSCALE")


def add_parser(subparsers):
    """Register the ``regrid`` subcommand.

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
        "regrid",
        help="resample a reference image onto a target image's pixel grid, conserving flux",
        description="Resample REFERENCE onto the pixel grid of TARGET (flux conserving: the "
                    "result is in the reference's unit per target pixel; a surface brightness "
                    "such as MJy/sr stays one) and write it with the target's WCS.",
        epilog="Example: astromix regrid hst.fits muse.fits --output hst_on_muse.fits")
    parser.add_argument("reference", metavar="REFERENCE", help="FITS image to resample")
    parser.add_argument("target", metavar="TARGET", help="FITS image whose grid is wanted")
    parser.add_argument("--output", "-o", required=True, metavar="OUT.fits",
                        help="the FITS file to write")
    parser.add_argument("--method", choices=("exact", "interp", "adaptive"), default="exact",
                        help="exact: pixel overlaps (default); interp: bilinear; "
                             "adaptive: anti-aliased")
    parser.add_argument("--ext", type=hdu_argument, default=None, metavar="HDU",
                        help="HDU of the reference image (default: DATA, SCI or the first image)")
    parser.add_argument("--target-ext", type=hdu_argument, default=None, metavar="HDU",
                        help="HDU of the target image (same default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(func=run)
    return parser


def write_exposure(exp, path, *, history=(), keywords=()):
    """Write an Exposure as DATA (+ STAT, DQ) with its celestial WCS, atomically.

    The layout of the module docstring: an empty primary HDU, then ``DATA``
    (float64), ``STAT`` (when the exposure has an uncertainty: its variance,
    converted by astropy from a standard deviation or inverse variance; an
    uncertainty of unknown kind is taken to be a variance) and ``DQ`` (uint8, 1 = masked;
    only when some pixel is masked), each with the WCS header, ``BUNIT`` and
    ``keywords``.  The file is written to a temporary file in the same
    folder, then renamed onto ``path``.

    Parameters
    ----------
    exp : Exposure
        The image; its WCS, when set, an astropy WCS (written with its SIP or
        TPV distortion, by :func:`astromix.data.io.fits_wcs_header`) or a gwcs
        (written as its FITS TAN-SIP approximation over the image, gwcs's
        ``to_fits_sip``, to 0.01 px).
    path : str or os.PathLike
        The FITS file to write (replaced if it exists).
    history : sequence of str, optional
        ``HISTORY`` cards added to each extension's header.
    keywords : sequence of astropy.io.fits.Card or (key, value[, comment]), optional
        More cards for each extension's header (e.g. the photometric
        keywords of :func:`photometric_cards`); a key the WCS header or
        ``BUNIT`` already set is not replaced.

    Returns
    -------
    None

    Raises
    ------
    InputError
        If the WCS has no FITS form (neither ``to_header`` nor
        ``to_fits_sip``, or gwcs's approximation fails); nothing is written.
    AstromixError
        If the file cannot be written (an OSError: a full disk, a folder
        without write access...); ``path`` is left as it was.
    """
    import numpy as np
    from astropy.io import fits
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    header = fits.Header()
    if exp.wcs is not None:
        header.update(_fits_wcs_header(exp.wcs, exp.shape, path))
    if exp.unit is not None:
        try:
            header["BUNIT"] = exp.unit.to_string("fits")
        except ValueError:  # e.g. electron/s: not a FITS unit, but astropy reads it back
            header["BUNIT"] = exp.unit.to_string()
    for card in keywords:
        card = card if isinstance(card, fits.Card) else fits.Card(*card)
        if card.keyword not in header:
            header.append(card)
    for line in history:
        header.add_history(line)
    hdus = [fits.PrimaryHDU(),
            fits.ImageHDU(np.asarray(exp.data, dtype=np.float64), header, name="DATA")]
    if exp.uncertainty is not None:
        unc = exp.uncertainty
        if isinstance(unc, (StdDevUncertainty, InverseVariance)):
            unc = unc.represent_as(VarianceUncertainty)
        arr = np.asarray(unc.array, dtype=np.float64)
        hdus.append(fits.ImageHDU(arr, header, name="STAT"))
    mask = np.asarray(exp.mask, dtype=bool) if exp.mask is not None else None
    if mask is not None and mask.any():
        hdus.append(fits.ImageHDU(mask.astype(np.uint8), header, name="DQ"))
    try:
        with atomic_path(path) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True)
    except OSError as exc:
        raise AstromixError(f"cannot write {os.fspath(path)!r}: "
                            f"{exc.strerror or exc}") from None


def _fits_wcs_header(wcs, shape, path):
    # FITS WCS cards of an astropy WCS, or of a gwcs by its TAN-SIP fit over the
    # image's pixels (pixel centres at integers, edges at -0.5)
    if hasattr(wcs, "to_header"):
        from astropy.io import fits

        from ..data.io import fits_wcs_header

        # with its SIP/TPV distortion cards and 17 digits (a plain to_header() drops them)
        return fits.Header.fromstring(fits_wcs_header(wcs), sep="\n")
    if hasattr(wcs, "to_fits_sip"):
        import warnings

        from astropy.utils.exceptions import AstropyDeprecationWarning

        ny, nx = shape
        try:
            with warnings.catch_warnings():
                # older gwcs (0.21) calls astropy names deprecated since: theirs to mend
                warnings.simplefilter("ignore", AstropyDeprecationWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                return wcs.to_fits_sip(bounding_box=((-0.5, nx - 0.5), (-0.5, ny - 0.5)),
                                       max_pix_error=0.01, max_inv_pix_error=0.01)
        except Exception as exc:  # gwcs raises ValueError, RuntimeError, ...
            raise InputError(f"cannot write {os.fspath(path)!r}: the exposure's gwcs has no "
                             f"FITS SIP approximation to 0.01 px ({exc})") from None
    raise InputError(f"cannot write {os.fspath(path)!r}: its WCS ({type(wcs).__name__}) has "
                     "no FITS form (an astropy WCS or a gwcs is needed)")


def photometric_cards(exp):
    """The photometric cards of an image's FITS headers, for its regridded copy.

    Parameters
    ----------
    exp : Exposure
        An image read by :func:`astromix.photometry.read_image` (or regridded
        from one by :func:`astromix.photometry.regrid`): ``meta["header"]``
        and ``meta["primary_header"]`` hold its FITS headers.

    Returns
    -------
    list of astropy.io.fits.Card
        The cards of :data:`PHOTOMETRIC_KEYWORDS` found, each from the
        science header, else the primary one; and ``BUNIT`` as written there
        when the image has no unit astropy reads (a BUNIT of the image's
        unit is written by :func:`write_exposure` itself).
    """
    headers = [h for h in (exp.meta.get("header"), exp.meta.get("primary_header"))
               if h is not None]
    keys = PHOTOMETRIC_KEYWORDS + (("BUNIT",) if exp.unit is None else ())
    cards = []
    for key in keys:
        for header in headers:
            if key in header and not (isinstance(header[key], str) and not header[key].strip()):
                cards.append(header.cards[key])
                break
    return cards


def run(args):
    """Run ``astromix regrid`` with parsed arguments; returns the exit status.

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
        Before any work: if the output name is empty, the output exists
        without ``--overwrite`` or is a folder, or its folder cannot be
        created or written.
    AstromixError
        If writing the output fails (:func:`write_exposure`).
    """
    import numpy as np

    from ..photometry import read_image, regrid

    check_output_file(args.output, args.overwrite)
    reference = read_image(args.reference, ext=args.ext)
    target = read_image(args.target, ext=args.target_ext)
    out = regrid(reference, target, method=args.method)
    write_exposure(out, args.output, keywords=photometric_cards(out), history=[
        f"astromix regrid ({args.method}) of {os.path.basename(args.reference)}",
        f"onto the grid of {os.path.basename(args.target)}"])
    good = ~np.asarray(out.mask, dtype=bool)
    print(f"{reference.name} on the grid of {target.name} ({args.method}): {out.shape[1]} x "
          f"{out.shape[0]} px, {int(good.sum())} covered, area ratio "
          f"{out.meta['area_ratio']:.4g}"
          f"{' (not applied: a surface brightness)' if out.meta['surface_brightness'] else ''}"
          f" -> {args.output}")
    log.info("wrote %s", args.output)
    return 0
