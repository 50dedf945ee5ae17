"""``astromix broadband-image``: a broad-band image from a spectral cube and a filter curve.

::

    astromix broadband-image DATACUBE.fits f606w.dat --output white_f606w.fits
    astromix broadband-image DATACUBE.fits johnson_v --output white_v.fits

CUBE is a FITS cube with a spectral WCS axis (MUSE-like: ``DATA``, optional
``STAT`` variance or ``ERR``, optional ``DQ`` != 0 bad; ``--ext`` picks the
science HDU).  FILTER is either

* a text file of two columns, wavelength [Angstrom] and throughput (``#``
  comments; linearly interpolated, zero outside its samples), or
* when no such file exists, the name of a bandpass that
  :meth:`synphot.SpectralElement.from_filter` knows (``johnson_v``,
  ``cousins_r``, ``bessel_j``, ...; synphot downloads these curves, so it
  needs the network or a local ``PYSYN_CDBS`` copy).

Each plane gets the filter curve integrated over its wavelength range and the
image is the weighted mean of the planes, per pixel
(:func:`astromix.photometry.make_broadband_image`, imphot's
``make_wideband_image``).  OUT.fits holds ``DATA`` (the cube's unit and
celestial WCS), ``STAT`` (variance, when the cube has one) and ``DQ``
(1 = no valid plane), written atomically.

The planes' wavelengths, from the spectral axis, must increase: a cube whose
wavelengths decrease along the axis (e.g. a ``FREQ`` axis with ``CDELT3 > 0``)
is refused with an error naming the file.  When more than 0.5% of the filter
lies outside the cube, a warning is logged (``astromix: WARNING: ...``).
"""

import logging
import os
import warnings

from ..errors import InputError
from ._shared import check_output_file, hdu_argument
from .regrid import write_exposure

__all__ = ["add_parser", "run", "load_filter"]

log = logging.getLogger("astromix")


def add_parser(subparsers):
    """Register the ``broadband-image`` subcommand.

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
        "broadband-image",
        help="make a broad-band image from a spectral cube weighted by a filter curve",
        description="Collapse CUBE into an image weighted by the FILTER curve: a two-column "
                    "text file (wavelength [Angstrom], throughput) or a synphot bandpass name "
                    "(e.g. johnson_v; downloaded by synphot).",
        epilog="Example: astromix broadband-image DATACUBE.fits f606w.dat --output f606w.fits")
    parser.add_argument("cube", metavar="CUBE", help="FITS cube with a spectral WCS axis")
    parser.add_argument("filter", metavar="FILTER",
                        help="two-column file (wavelength [A], throughput) or a synphot "
                             "bandpass name")
    parser.add_argument("--output", "-o", required=True, metavar="OUT.fits",
                        help="the FITS file to write")
    parser.add_argument("--ext", type=hdu_argument, default=None, metavar="HDU",
                        help="HDU of the cube (default: DATA, SCI or the first image)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(func=run)
    return parser


def load_filter(spec):
    """The filter curve for FILTER: a file name as is, else a synphot bandpass.

    Parameters
    ----------
    spec : str
        The FILTER argument: a two-column text file (wavelength [Angstrom],
        throughput), or a bandpass name synphot knows (e.g. ``"johnson_v"``).

    Returns
    -------
    str or synphot.SpectralElement
        ``spec`` itself when it is an existing file, else the bandpass
        :meth:`synphot.SpectralElement.from_filter` loads.

    Raises
    ------
    InputError
        If ``spec`` is not a file but looks like a path (a folder separator, or
        a dot in its name), synphot is not installed, or synphot cannot load
        the bandpass (unknown name, no network...).
    """
    if os.path.isfile(spec):
        return spec
    if os.path.sep in spec or "." in os.path.basename(spec):
        raise InputError(f"no such filter file: {spec!r}")
    try:
        from synphot import SpectralElement
    except ImportError:
        raise InputError(f"no such filter file: {spec!r} (and synphot, for bandpass names, is "
                         "not installed)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SpectralElement.from_filter(spec)
    except Exception as exc:  # unknown name, no network...
        text = " ".join(str(exc).split())
        raise InputError(f"FILTER {spec!r} is neither a file nor a synphot bandpass synphot "
                         f"could load ({type(exc).__name__}: {text})") from None


def run(args):
    """Run ``astromix broadband-image`` with parsed arguments; returns the exit status.

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
        If the output name is empty, the output exists without
        ``--overwrite`` or is a folder, its folder cannot be created or
        written, the cube file does not exist, FILTER is neither a file
        nor a bandpass (:func:`load_filter`), or
        :func:`~astromix.photometry.make_broadband_image` refuses the cube or
        the filter (e.g. wavelengths that do not increase along the spectral
        axis; a filter that misses the cube): the message names the files.
    AstromixError
        If writing the output fails (a full disk...).
    """
    import numpy as np

    from ..photometry import PhotometryWarning, make_broadband_image

    check_output_file(args.output, args.overwrite)
    if not os.path.isfile(args.cube):
        raise InputError(f"no such file: {args.cube!r}")
    curve = load_filter(args.filter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PhotometryWarning)
        try:
            image = make_broadband_image(args.cube, curve, ext=args.ext)
        except InputError as exc:
            raise InputError(_naming_the_files(str(exc), args)) from None
    # the library's warnings as the command's other warnings: "astromix: WARNING: ..."
    for w in caught:
        if issubclass(w.category, PhotometryWarning):
            log.warning("%s: %s", os.path.basename(args.cube), w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    write_exposure(image, args.output, history=[
        f"astromix broadband-image of {os.path.basename(args.cube)}",
        f"through {os.path.basename(args.filter)}"])
    used = int(np.count_nonzero(image.meta["weights"] > 0))
    print(f"{os.path.basename(args.cube)} through {args.filter}: {used} planes, "
          f"{image.shape[1]} x {image.shape[0]} px, "
          f"{100 * image.meta['filter_fraction_outside']:.2f}% of the filter outside the cube "
          f"-> {args.output}")
    log.info("wrote %s", args.output)
    return 0


def _naming_the_files(message, args):
    """``make_broadband_image``'s message, with the cube and the filter named in it."""
    if message.startswith("wave must increase strictly"):
        return (f"the wavelengths of the planes of cube {args.cube!r} (its spectral WCS "
                "axis) do not increase strictly; a cube whose wavelengths decrease along "
                "the axis (e.g. a FREQ axis with CDELT3 > 0) is not supported: reverse "
                "its planes")
    if any(name in message for name in (args.cube, os.path.basename(args.cube), args.filter)):
        return message
    return f"{message} (cube {args.cube!r}, filter {args.filter!r})"
