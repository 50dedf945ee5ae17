"""``astromix psf-mixture``: fit a Gaussian mixture to a PSF image and store it for forcepho.

The replacement of forcepho's ``make_psf.py`` (Johnson et al.), with the same
options::

    astromix psf-mixture --band F200W --psf_image psf_f200w.fits --oversample 4 \\
        --trim 227 --ngauss 4 --snr 20 --outname mixtures/psf_nircam_ng4m0.h5 \\
        --overwrite 1 --savefig --fitsout 1

It reads the PSF image from a FITS file (``--ext``: HDU number or name),
removes ``--trim`` pixels from each edge, fits ``--ngauss`` Gaussians (the last
``--ngauss_neg`` of them with negative amplitudes) by least squares with
:func:`astromix.fitting.fit_psf_mixture`, converts them to science pixels
(divided by the oversampling, centred on the PSF centre: the centre of the
trimmed image, as make_psf.py takes it), and writes them as the group
``<BAND>`` of the forcepho HDF5 file ``--outname`` with
:func:`astromix.io.forcepho.write_psf_mixture` (other bands are kept).  As in
make_psf.py the amplitudes are the fitted ones in the normalisation of the
image's total: they sum to the fraction of the PSF image's flux the mixture
holds (the "flux fraction", e.g. 0.92 for a trimmed image), so forcepho's
fluxes are total fluxes; astromix's PSF models renormalise the mixture to
unit sum, and fluxes measured with it are divided by the flux fraction for
the total (an aperture correction).  As in
make_psf.py, the group is ``--band`` in upper case (``--band f200w`` writes
``F200W``, the name forcepho looks up); the PNG and FITS outputs keep the band
as given.  A summary (component table, residual metrics, time) is printed on
standard output.  Optional outputs, beside the HDF5 file:

* ``--savefig``: ``<stem>_<band>.png``, target, model, residual in % of the
  peak, radial profiles and the component ellipses;
* ``--fitsout 1``: ``<stem>_<band>.fits``, extensions ``TARGET``, ``MODEL``,
  ``RESIDUAL`` (target - model, in the trimmed, oversampled pixels of the
  image) and ``PARAMS``, a binary table with one row per component: ``amp``,
  ``xcr``, ``ycr``, ``Cxx``, ``Cyy``, ``Cxy`` in science pixels (the rows of
  the HDF5 file, in float64; ``FLUXFRAC`` in the headers is the sum of
  ``amp``).

``<stem>`` is the name of ``--outname`` without its extension.  Every file is
written to a temporary file in the same folder and renamed into place, so an
interrupted run leaves the previous files intact.  With ``--overwrite 0`` an
existing band (or an existing PNG/FITS output) is refused before any fitting,
and nothing is written.
"""

import argparse
import contextlib
import logging
import os
import sys
import time

import numpy as np

from ..errors import AstromixError, InputError
from ._shared import (
    atomic_path,
    check_output_name,
    hdu_argument,
    image_panels,
    int_at_least,
    positive_float,
    prepare_output_folder,
    radial_profile,
)

__all__ = ["add_parser", "run", "read_psf_image", "header_oversampling", "output_paths",
           "write_fits", "write_png"]

log = logging.getLogger("astromix")

#: Header keywords giving the oversampling, in the order they are looked up.
OVERSAMPLING_KEYWORDS = ("DET_SAMP", "OVERSAMP")

#: What astropy raises reading a damaged or truncated FITS file (as read_psfex catches).
_FITS_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError)

#: Columns of the PARAMS table and of the printed component table.
PARAM_COLUMNS = ("amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy")


# -- argument parsing ------------------------------------------------------------------------
def _flag01(text):
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def add_parser(subparsers):
    """Register the ``psf-mixture`` subcommand.

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
        "psf-mixture",
        help="fit a Gaussian mixture to a PSF image and write it to a forcepho HDF5 file",
        description="Fit a Gaussian mixture to a (possibly oversampled) PSF image from a "
                    "FITS file and store it, in science pixels, as the group BAND of a "
                    "forcepho PSF file (HDF5); astromix's replacement of forcepho's "
                    "make_psf.py, with the same options.",
        epilog="Example: astromix psf-mixture --band F200W --psf_image psf.fits "
               "--oversample 4 --trim 227 --ngauss 4 --outname psf_mixtures.h5 --savefig "
               "--fitsout 1")
    parser.add_argument("--band", required=True,
                        help="band (filter) name (required); the HDF5 group written is "
                             "its upper case, as make_psf.py writes and forcepho reads "
                             "it (f200w -> F200W); <band> in the PNG/FITS names is as "
                             "given")
    parser.add_argument("--psf_image", "--psf-image", dest="psf_image", required=True,
                        metavar="FITS", help="FITS file holding the PSF image (required)")
    parser.add_argument("--ext", type=hdu_argument, default=0, metavar="HDU",
                        help="HDU of the image: number or EXTNAME (default: 0)")
    parser.add_argument("--oversample", type=positive_float, default=None, metavar="N",
                        help="image pixels per science pixel (default: the header's "
                             "DET_SAMP, else OVERSAMP, else 1; OVERSAMP in STPSF's "
                             "detector-sampled DET_SAMP/DET_DIST extensions)")
    parser.add_argument("--trim", type=int_at_least(0), default=0, metavar="N",
                        help="pixels removed from each edge before fitting (default: 0)")
    parser.add_argument("--ngauss", type=int_at_least(1), default=4, metavar="K",
                        help="number of Gaussians, negative ones included (default: 4)")
    parser.add_argument("--ngauss_neg", "--ngauss-neg", dest="ngauss_neg",
                        type=int_at_least(0), default=0, metavar="K",
                        help="how many of them have negative amplitudes (default: 0)")
    parser.add_argument("--snr", type=positive_float, default=None,
                        help="forcepho's noise level: sigma = flux / (snr sqrt(Npix)); it "
                             "scales chi2, not the least-squares fit (default: none)")
    parser.add_argument("--outname", required=True, metavar="HDF5",
                        help="forcepho PSF file to write (created if missing; other "
                             "bands are kept) (required)")
    parser.add_argument("--overwrite", type=_flag01, default=True, metavar="{0,1}",
                        help="1: replace the band if present (default); 0: refuse")
    parser.add_argument("--savefig", action="store_true",
                        help="write the diagnostic figure <stem>_<band>.png beside the "
                             "HDF5 file")
    parser.add_argument("--fitsout", type=_flag01, default=False, metavar="{0,1}",
                        help="1: write <stem>_<band>.fits (TARGET, MODEL, RESIDUAL, "
                             "PARAMS) beside the HDF5 file (default: 0)")
    parser.add_argument("--method", choices=("lsq", "nested"), default="lsq",
                        help="fitting method: lsq, optimisation from several starts "
                             "(default); nested, then nested sampling (dynesty)")
    parser.add_argument("--objective", choices=("l1max", "chi2"), default="l1max",
                        help="what lsq minimises: l1max, the summed |residual| with the "
                             "largest capped at --max_residual of the peak (default); "
                             "chi2, plain least squares")
    parser.add_argument("--max_residual", "--max-residual", dest="max_residual",
                        type=positive_float, default=0.058,
                        help="cap of the l1max objective, in units of the peak (default: "
                             "0.058)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random starting points (default: 0)")
    parser.add_argument("--backend", metavar="NAME", default=None,
                        help="compute backend: numpy, numba or cupy (default: the active "
                             "one; see 'astromix backends')")
    parser.set_defaults(func=run)
    return parser


# -- inputs ----------------------------------------------------------------------------------
def _hdu_list(hdul):
    names = []
    for i, hdu in enumerate(hdul):
        names.append(f"{i} ({hdu.name})" if hdu.name else str(i))
    return ", ".join(names)


def read_psf_image(path, ext=0):
    """Read a 2-d PSF image and its headers from a FITS file.

    Parameters
    ----------
    path : str
        The FITS file.
    ext : int or str, optional
        HDU number or name (EXTNAME, case-insensitive).

    Returns
    -------
    image : ndarray, shape (ny, nx), float64
    header : astropy.io.fits.Header
        The header of the HDU.
    primary : astropy.io.fits.Header
        The primary header (the same as ``header`` for ``ext=0``).

    Raises
    ------
    InputError
        If the file is missing, not FITS, truncated or damaged, has no such
        HDU (the message lists the HDUs), the HDU holds no 2-d image, or the
        image has NaN or infinite pixels (they are refused, not masked).  The
        message names the file.
    """
    from astropy.io import fits

    where = f"PSF image {path!r}"
    if not os.path.exists(path):
        raise InputError(f"{where} does not exist")
    if not os.path.isfile(path):
        raise InputError(f"{where} is not a file")
    try:
        hdul = fits.open(path, memmap=False)
    except _FITS_ERRORS as exc:
        raise InputError(f"{where} is not a readable FITS file ({exc})") from None
    with hdul:
        try:
            hdu = hdul[ext]
        except (KeyError, IndexError):
            raise InputError(f"{where} has no HDU {ext!r}; it has {_hdu_list(hdul)}") from None
        except _FITS_ERRORS as exc:  # a damaged header on the way to ``ext``
            raise InputError(f"{where} is not a readable FITS file ({exc})") from None
        where = f"{where}, HDU {ext!r}"
        if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            raise InputError(f"{where} is a {type(hdu).__name__}, not an image")
        try:
            data = hdu.data
        except _FITS_ERRORS as exc:
            raise InputError(f"{where}: the image could not be read ({exc})") from None
        if data is None:
            raise InputError(f"{where} holds no data; choose the image with --ext "
                             f"(HDUs: {_hdu_list(hdul)})")
        header = hdu.header.copy()
        primary = hdul[0].header.copy()
        image = np.array(data, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"{where} is {image.ndim}-d with shape {image.shape}; expected a "
                         "2-d image")
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise InputError(f"{where} has {bad} NaN or infinite pixel(s); they are refused, "
                         "replace them (e.g. by 0) first")
    return image, header, primary


def _detector_sampled(header):
    # an STPSF/WebbPSF (poppy) extension rebinned to detector pixels: EXTNAME
    # DET_SAMP or DET_DIST, or a CALCSAMP card (poppy writes both on them)
    return (str(header.get("EXTNAME", "")).strip().upper().startswith("DET_")
            or "CALCSAMP" in header)


def header_oversampling(*headers, option="--oversample"):
    """The oversampling from FITS headers: DET_SAMP, else OVERSAMP, else 1.

    The keywords are those of STPSF/WebbPSF (poppy) files.  In their
    oversampled extensions (primary or ``OVERSAMP``, ``OVERDIST``),
    ``DET_SAMP`` is the sampling of the image (the MFT's onto the detector
    plane) and ``OVERSAMP`` that of the FFTs, the same unless set apart; it
    is read first, as forcepho's make_psf does.  Their extensions rebinned to
    detector pixels (``EXTNAME`` ``DET_SAMP`` or ``DET_DIST``, or with a
    ``CALCSAMP`` card) keep the calculation's ``DET_SAMP`` and have
    ``OVERSAMP = 1``: there ``OVERSAMP`` (else 1) is read.

    Parameters
    ----------
    *headers : astropy.io.fits.Header
        Looked up in order (e.g. the image's header, then the primary one);
        the first header holding either keyword (or, for a detector-sampled
        extension, its ``EXTNAME``) decides.
    option : str, optional
        How the caller lets the user give the oversampling, named in the
        error message (default ``"--oversample"``).

    Returns
    -------
    value : float
        Image pixels per science pixel.
    source : str
        Where it came from, e.g. ``"header DET_SAMP"`` or ``"default"``.

    Raises
    ------
    InputError
        If the keyword found is not a positive number.
    """
    for header in headers:
        if _detector_sampled(header):
            if "OVERSAMP" not in header:
                return 1.0, "header EXTNAME (detector-sampled)"
            found = [("OVERSAMP", header["OVERSAMP"])]
        else:
            found = [(key, header[key]) for key in OVERSAMPLING_KEYWORDS if key in header]
        if not found:
            continue
        key, value = found[0]
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"header keyword {key} = {header[key]!r} is not a positive "
                             f"oversampling factor; give {option}")
        if len(found) > 1 and _as_float(found[1][1]) != value:
            log.warning("the header has %s = %s and %s = %s; using %s (give %s to override)",
                        key, header[key], found[1][0], found[1][1], key, option)
        return value, f"header {key}"
    return 1.0, "default"


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def output_paths(outname, band):
    """Paths of the PNG and FITS outputs: ``<stem>_<band>.png`` and ``.fits`` beside ``outname``.

    Parameters
    ----------
    outname : str
        The HDF5 file (``--outname``); ``<stem>`` is its name without the
        extension.
    band : str
        The band (``--band``).

    Returns
    -------
    png_path, fits_path : str
        Absolute paths, in the folder of ``outname``.
    """
    folder = os.path.dirname(os.path.abspath(outname))
    stem = os.path.splitext(os.path.basename(outname))[0]
    return (os.path.join(folder, f"{stem}_{band}.png"),
            os.path.join(folder, f"{stem}_{band}.fits"))


def _check_band(band):
    if not band.strip() or "/" in band or band in (".", ".."):
        raise InputError(f"--band {band!r} is not a valid band name (non-empty, no '/')")


def _group_name(band):
    """The HDF5 group of ``--band``: its upper case, as forcepho's make_psf.py writes it."""
    return band.upper()


def _check_outputs(args, png_path, fits_path):
    """Refuse, before any fitting, what the writes would refuse."""
    import h5py

    # an empty name, a folder, a name ending in '/': named as the user gave it
    path = check_output_name(args.outname, True, "--outname")
    group = _group_name(args.band)
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise InputError(f"--outname {path!r} exists and is not a regular file")
        try:
            with h5py.File(path, "r") as f:
                present = group in f
                list(f)  # reads the root group: a damaged file fails here, before the fit
        except OSError as exc:
            raise InputError(f"--outname {path!r} exists but is not a readable HDF5 file "
                             f"({exc}); refusing to replace it") from None
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"--outname {path!r}, band {group!r}: the HDF5 file is damaged "
                             f"({type(exc).__name__}: {exc}); refusing to write into "
                             "it") from None
        if present and not args.overwrite:
            raise InputError(f"{path} already has band {group!r} and --overwrite is 0; "
                             "nothing was fitted or written")
    if not args.overwrite:
        for wanted, extra in ((args.savefig, png_path), (args.fitsout, fits_path)):
            if wanted and os.path.lexists(extra):
                raise InputError(f"{extra} exists and --overwrite is 0; nothing was fitted "
                                 "or written")
    for wanted, extra, option in ((args.savefig, png_path, "--savefig"),
                                  (args.fitsout, fits_path, "--fitsout")):
        if wanted:
            check_output_name(extra, True, option)  # e.g. a folder of that name
    folder = os.path.dirname(os.path.abspath(path))
    prepare_output_folder(folder)


def _check_fit_inputs(image, trim, oversampling, source, where):
    """Refuse, before any fit and naming the file or the option, an image or oversampling
    :func:`astromix.fitting.fit_psf_mixture` would refuse."""
    from ..fitting import _check_oversampling, _check_psf_image

    _check_psf_image(image, trim, name=where)
    try:
        return _check_oversampling(oversampling)
    except InputError as exc:
        hint = "" if source == "--oversample" else "; give --oversample"
        raise InputError(f"{exc} ({source}{hint})") from None


def _check_pixels(image, trim, ngauss, path):
    """Refuse a (trimmed) image with no more pixels than the fit has parameters (6 per
    Gaussian: amplitude, centre, covariance)."""
    ny, nx = image.shape[0] - 2 * trim, image.shape[1] - 2 * trim
    minimum = 6 * ngauss + 1
    if ny * nx < minimum:
        where = f"PSF image {path!r} ({image.shape[0]} x {image.shape[1]})"
        what = f"--trim {trim} leaves {ny} x {nx}" if trim else f"{where} has {ny} x {nx}"
        raise InputError(f"{what} = {ny * nx} pixel(s)" + (f" of the {where}" if trim else "")
                         + f"; a fit of {ngauss} Gaussian(s) ({6 * ngauss} parameters) needs "
                         f"at least {minimum}")


# -- outputs ---------------------------------------------------------------------------------
def _param_rows(mixture, flux_fraction=1.0):
    """(K, 6) rows amp, xcr, ycr, Cxx, Cyy, Cxy [science px], by decreasing amplitude.

    The rows of :func:`astromix.io.forcepho.write_psf_mixture`: its order, the
    amplitudes of the unit-flux ``mixture`` times ``flux_fraction``.
    """
    order = np.argsort(-mixture.amp, kind="stable")
    cov = mixture.cov[order]
    amp = mixture.amp[order] * (float(flux_fraction) / mixture.flux)
    return np.column_stack([amp, mixture.mean[order, 0], mixture.mean[order, 1],
                            cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]])


def _flux_fraction(info):
    """The fit's flux fraction (1 for a fit_info without one)."""
    return float(info.get("flux_fraction", 1.0))


def _image_mixture(psf, info):
    """The fitted mixture in the pixels of the fitted (trimmed, oversampled) image."""
    from ..mixtures import GaussianMixture

    mix = psf.mixture
    os_ = float(info["oversampling"])
    centre = np.asarray(info["center"], dtype=np.float64)
    return GaussianMixture(mix.amp, mix.mean * os_ + centre, mix.cov * os_ ** 2)


def write_fits(path, target, model, psf, meta):
    """Write TARGET, MODEL, RESIDUAL and PARAMS to a multi-extension FITS file, atomically.

    Parameters
    ----------
    path : str
        Output file; replaced only once the new file is complete.
    target, model : ndarray, shape (ny, nx)
        The fitted image (trimmed, oversampled pixels) and the model of it.
    psf : GaussianMixturePSF
        The fit; its mixture, in science pixels, fills PARAMS (one row per
        component, by decreasing amplitude: amp, xcr, ycr [px], Cxx, Cyy, Cxy
        [px^2]), the amplitudes as the HDF5 file has them (summing to
        ``fit_info["flux_fraction"]``).
    meta : dict
        Header cards (keyword: (value, comment)) of the primary HDU; cards
        whose value is None are left out.

    Returns
    -------
    None

    Notes
    -----
    The image extensions carry ``OVERSAMP``, ``PSFCENX`` and ``PSFCENY`` (the
    0-based position of the PSF centre in their pixels: the centre of the
    trimmed image), ``PSFFLUX`` (the flux of the fitted mixture in image
    units) and ``FLUXFRAC`` (``PSFFLUX`` over the sum of the untrimmed PSF
    image: the sum of PARAMS ``amp``): component ``k`` of PARAMS is, in the
    image's pixels, amplitude ``PSFFLUX / FLUXFRAC * amp``, centre
    ``(PSFCENX + OVERSAMP * xcr, PSFCENY + OVERSAMP * ycr)`` and covariance
    ``OVERSAMP**2`` times (Cxx, Cxy; Cxy, Cyy).
    """
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, (value, comment) in meta.items():
        if value is not None:
            primary.header[key] = (value, comment)
    info = psf.fit_info
    images = []
    for name, data, what in (("TARGET", target, "PSF image fitted (trimmed)"),
                             ("MODEL", model, "Gaussian-mixture model of TARGET"),
                             ("RESIDUAL", target - model, "TARGET - MODEL")):
        hdu = fits.ImageHDU(np.asarray(data, dtype=np.float64), name=name)
        hdu.header["COMMENT"] = what
        hdu.header["OVERSAMP"] = (float(info["oversampling"]), "image px per science px")
        hdu.header["PSFCENX"] = (float(info["center"][0]), "0-based x of the PSF centre [px]")
        hdu.header["PSFCENY"] = (float(info["center"][1]), "0-based y of the PSF centre [px]")
        if "flux" in info:
            hdu.header["PSFFLUX"] = (float(info["flux"]), "flux of the mixture [image units]")
        hdu.header["FLUXFRAC"] = (_flux_fraction(info),
                                  "PSFFLUX / PSF image sum = sum of PARAMS amp")
        images.append(hdu)
    rows = _param_rows(psf.mixture, _flux_fraction(info))
    units = ("", "pix", "pix", "pix2", "pix2", "pix2")
    cols = [fits.Column(name=name, format="D", unit=unit or None, array=rows[:, i])
            for i, (name, unit) in enumerate(zip(PARAM_COLUMNS, units))]
    table = fits.BinTableHDU.from_columns(cols, name="PARAMS")
    table.header["COMMENT"] = ("One row per Gaussian, science pixels, centres relative to "
                               "the PSF centre; the rows of the forcepho HDF5 group.")
    with atomic_path(path) as tmp:
        fits.HDUList([primary, *images, table]).writeto(tmp, overwrite=True)


def write_png(path, target, model, psf, title=""):
    """Draw the diagnostic figure to a PNG, atomically (matplotlib, Agg canvas).

    Five panels: target and model (log scale), residual ``(target - model) /
    peak`` in %, radial profiles (target, model, |residual|) against the radius
    in science pixels, and the 1- and 2-sigma ellipses of every component over
    the target (dashed: negative amplitude).

    Parameters
    ----------
    path : str
        Output file.
    target, model : ndarray, shape (ny, nx)
        The fitted image and its model (trimmed, oversampled pixels).
    psf : GaussianMixturePSF
        The fit, with its ``fit_info`` (``center``, ``oversampling``).
    title : str, optional

    Returns
    -------
    None
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    info = psf.fit_info
    os_ = float(info["oversampling"])
    centre = np.asarray(info["center"], dtype=np.float64)
    resid = target - model
    fig = Figure(figsize=(17.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    peak, floor, norm = image_panels(fig, axes, target, model, label="target")

    ax = axes[3]
    r, prof_t = radial_profile(target, centre)
    _, prof_m = radial_profile(model, centre)
    _, prof_r = radial_profile(np.abs(resid), centre)
    r = r / os_
    ax.semilogy(r, np.abs(prof_t), "k.", ms=3, label="target")
    ax.semilogy(r, np.abs(prof_m), "C1-", label="model")
    ax.semilogy(r, prof_r, "C0:", label="|residual|")
    positive = np.abs(prof_t[prof_t != 0])
    if positive.size:
        ax.set_ylim(bottom=max(float(positive.min()) / 10, peak * 1e-8))
    ax.set_xlabel("radius [science px]")
    ax.set_ylabel("mean pixel value")
    ax.set_title("radial profile")
    ax.legend(fontsize="small")

    ax = axes[4]
    ax.imshow(np.clip(target, floor, None), origin="lower", norm=norm, cmap="Greys")
    mix = _image_mixture(psf, info)
    order = np.argsort(-np.abs(mix.amp), kind="stable")
    for n, k in enumerate(order):
        evals, evecs = np.linalg.eigh(mix.cov[k])
        angle = np.degrees(np.arctan2(evecs[1, 1], evecs[0, 1]))
        style = "--" if mix.amp[k] < 0 else "-"
        for nsig, alpha in ((1.0, 1.0), (2.0, 0.5)):
            ax.add_patch(Ellipse(mix.mean[k], 2 * nsig * np.sqrt(evals[1]),
                                 2 * nsig * np.sqrt(evals[0]), angle=angle, fill=False,
                                 ls=style, lw=1.2, alpha=alpha, color=f"C{n % 10}",
                                 label=f"amp {mix.amp[k]:.3f}" if nsig == 1 else None))
    ax.plot(*centre, "+", color="C3", ms=8)
    ax.set_xlim(-0.5, target.shape[1] - 0.5)
    ax.set_ylim(-0.5, target.shape[0] - 0.5)
    ax.set_title("components (1, 2 sigma)")
    ax.legend(fontsize="x-small", loc="upper right")
    for ax in (axes[0], axes[1], axes[2], axes[4]):
        ax.set_xlabel("x [image px]")
        ax.set_ylabel("y [image px]")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


# -- the command -----------------------------------------------------------------------------
def run(args):
    """Run ``astromix psf-mixture`` (see the module docstring); returns the exit status.

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
        Before any fit: for an invalid ``--band``, ``--ngauss_neg`` not below
        ``--ngauss``, a PSF image that cannot be used
        (:func:`read_psf_image`, or one whose pixels sum to <= 0 or with no
        positive pixel left by ``--trim``; the message names the file), an
        oversampling (``--oversample`` or the header's) that is not a finite
        number in [1e-6, 1e6], a ``--trim`` that leaves nothing or no more
        pixels than the fit has parameters (6 per Gaussian; the message
        gives the pixels left and the minimum), or outputs the writes would
        refuse
        (``--outname`` empty, a folder, not a regular or readable HDF5 file
        or a damaged one, the band (``--band`` in upper case) or the
        PNG/FITS outputs present with ``--overwrite 0`` or taken by a folder,
        an output folder that cannot be created or in which no file can be
        created).
    BackendError
        If ``--backend`` names an unknown or unavailable backend.
    AstromixError
        If an output cannot be written (an OSError).
    """
    from .. import backends

    t_start = time.perf_counter()
    out = sys.stdout
    _check_band(args.band)
    if args.ngauss_neg >= args.ngauss:
        raise InputError(f"--ngauss_neg {args.ngauss_neg} must be smaller than --ngauss "
                         f"{args.ngauss} (at least one positive Gaussian)")
    group = _group_name(args.band)
    png_path, fits_path = output_paths(args.outname, args.band)  # the band as given
    image, header, primary = read_psf_image(args.psf_image, args.ext)
    if args.oversample is not None:
        oversampling, source = float(args.oversample), "--oversample"
    else:
        oversampling, source = header_oversampling(header, primary)
    if args.trim and 2 * args.trim >= min(image.shape):
        raise InputError(f"--trim {args.trim} leaves nothing of the {image.shape[0]} x "
                         f"{image.shape[1]} image")
    _check_pixels(image, args.trim, args.ngauss, args.psf_image)
    where = f"PSF image {args.psf_image!r}, HDU {args.ext!r}"
    oversampling = _check_fit_inputs(image, args.trim, oversampling, source, where)
    _check_outputs(args, png_path, fits_path)

    from ..fitting import fit_psf_mixture
    from ..io.forcepho import write_psf_mixture

    with (backends.use_backend(args.backend) if args.backend
          else contextlib.nullcontext(backends.get_backend())) as bk:
        ny, nx = image.shape
        print(f"astromix psf-mixture: {args.psf_image}[{args.ext}], {ny} x {nx} px, "
              f"oversampling {oversampling:g} ({source}), trim {args.trim}, band {group}, "
              f"backend {bk.name}", file=out)
        try:
            psf = fit_psf_mixture(image, args.ngauss, oversampling=oversampling, trim=args.trim,
                                  snr=args.snr, n_negative=args.ngauss_neg, method=args.method,
                                  objective=args.objective, max_residual=args.max_residual,
                                  rng=np.random.default_rng(args.seed), backend=args.backend)
        except InputError as exc:  # about the image: the options were checked above
            raise InputError(f"{where}: {exc}") from None
    info = psf.fit_info
    t = args.trim
    target = image[t:image.shape[0] - t, t:image.shape[1] - t] if t else image
    model = np.asarray(info["model"], dtype=np.float64)

    written = []
    try:
        write_psf_mixture(args.outname, group, psf, overwrite=args.overwrite,
                          flux_fraction=_flux_fraction(info))
        written.append(f"{args.outname} (group {group!r})")
        if args.fitsout:
            meta = {"BAND": (group, "band (HDF5 group)"),
                    "PSFIMAGE": (os.path.basename(args.psf_image), "PSF image fitted"),
                    "PSFEXT": (str(args.ext), "its HDU"),
                    "OVERSAMP": (oversampling, f"image px per science px ({source})"),
                    "TRIM": (args.trim, "pixels removed from each edge"),
                    "NGAUSS": (args.ngauss, "number of Gaussians"),
                    "NGNEG": (args.ngauss_neg, "of which with negative amplitude"),
                    "SNR": (args.snr, "forcepho noise level"),
                    "METHOD": (args.method, "fitting method"),
                    "SEED": (args.seed, "random seed"),
                    "MAXRESPK": (float(info["max_residual_over_peak"]),
                                 "max|TARGET - MODEL| / max(TARGET)"),
                    "L1FLUX": (float(info["l1_residual_over_flux"]),
                               "sum|TARGET - MODEL| / sum(TARGET)"),
                    "FLUXFRAC": (_flux_fraction(info),
                                 "mixture flux / PSF image sum (sum of amp)"),
                    "CHI2": (float(info["chi2"]), "chi2 of the fit"),
                    "ORIGIN": (f"astromix {_version()}", "astromix psf-mixture")}
            write_fits(fits_path, target, model, psf, meta)
            written.append(fits_path)
        if args.savefig:
            write_png(png_path, target, model, psf,
                      title=f"{args.band}: {args.ngauss} Gaussians ({args.ngauss_neg} "
                            f"negative), {os.path.basename(args.psf_image)}")
            written.append(png_path)
    except OSError as exc:
        raise AstromixError(f"cannot write {exc.filename or args.outname!r}: "
                            f"{exc.strerror or exc}") from None

    _report(out, psf, info, time.perf_counter() - t_start)
    for item in written:
        print(f"wrote {item}", file=out)
    return 0


def _version():
    from .. import __version__

    return __version__


def _report(out, psf, info, elapsed):
    frac = _flux_fraction(info)
    rows = _param_rows(psf.mixture, frac)
    n_iter = info.get("n_iterations")
    print(f"fitted {len(rows)} Gaussians in {float(info['time_s']):.2f} s"
          + (f" ({n_iter} iterations)" if n_iter is not None else "")
          + f"; total {elapsed:.2f} s", file=out)
    print("components (science px, centres relative to the PSF centre, amplitudes as "
          "written):", file=out)
    print("   k       amp       xcr       ycr       Cxx       Cyy       Cxy", file=out)
    for k, row in enumerate(rows):
        print(f"  {k:2d}" + "".join(f"  {v:8.5f}" for v in row), file=out)
    v = float(info["max_residual_over_peak"])
    print(f"max|residual|/peak = {v:.5f} ({100 * v:.2f} % of the peak)", file=out)
    v = float(info["l1_residual_over_flux"])
    print(f"sum|residual|/flux = {v:.5f} ({100 * v:.2f} % of the flux)", file=out)
    if "chi2" in info:
        print(f"chi2 = {float(info['chi2']):.4g}", file=out)
    print(f"flux fraction (mixture flux / PSF image sum = sum of amp) = {frac:.5f}; divide "
          "fluxes measured with the unit-normalised mixture by it for total fluxes", file=out)
