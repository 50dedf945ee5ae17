"""``astromix fit-scene``: fit a catalog of sources jointly in several images.

Reads each image with :meth:`astromix.Exposure.from_fits` (DECam community
pipeline, JWST cal/i2d, HST drz/flt or a plain FITS image with a celestial
WCS), gives it a PSF (a PSFEx model, turned into a Gaussian mixture at every
source; a PSF image, fitted once by :func:`astromix.fitting.fit_psf_mixture`;
or an ASDF file holding a GaussianMixturePSF), builds the scene from the
catalog (:meth:`astromix.SceneModel.from_catalog`; a catalog without
``flux_<band>`` columns gets one flux per band of the images:
:func:`scene_from_catalog`), fits it with
:func:`astromix.fitting.fit_scene` and writes ``DIR/catalog.ecsv``,
``DIR/exposures.ecsv``, ``DIR/residuals.png`` and ``DIR/scene.asdf`` as the
demo does.  ``--sample`` adds a nested-sampling posterior
(:func:`astromix.fitting.sample_scene`): ``DIR/posterior.ecsv`` (summary),
``DIR/posterior_samples.ecsv`` (equal-weight samples) and ``DIR/corner.png``.
"""

import contextlib
import functools
import os
import sys

import numpy as np

from ..errors import AstromixError, InputError
from ._shared import atomic_path, check_output_name, int_at_least, prepare_output_folder

__all__ = ["add_parser", "run", "load_psf", "scene_from_catalog"]


def add_parser(subparsers):
    """Register the ``fit-scene`` subcommand.

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
        "fit-scene", help="fit a catalog of galaxies and stars jointly in several images",
        description="Fit the sources of a catalog (ra, dec, optional kind, flux_<band>, "
                    "r_eff [arcsec], n, ellip, theta [rad, east of north]) jointly in every "
                    "image, each with its own WCS, noise and PSF, and write "
                    "DIR/catalog.ecsv, DIR/exposures.ecsv, DIR/residuals.png and "
                    "DIR/scene.asdf.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="FITS images (DECam CP ooi, JWST cal/i2d, HST drz/flt, or plain "
                             "with a celestial WCS)")
    parser.add_argument("--catalog", required=True, metavar="CAT",
                        help="starting catalog (ECSV, FITS, ... any format astropy reads)")
    parser.add_argument("--psf", nargs="+", required=True, metavar="PSF",
                        help="one PSF per image, or one for all: a PSFEx file, a PSF image "
                             "(FITS) or an ASDF file with a GaussianMixturePSF")
    parser.add_argument("--psf-oversampling", type=float, default=None, metavar="N",
                        help="oversampling of PSF images (default: header DET_SAMP, else "
                             "OVERSAMP, else 1; OVERSAMP in STPSF's detector-sampled "
                             "extensions)")
    parser.add_argument("--psf-components", type=int_at_least(1), default=6, metavar="N",
                        help="Gaussians per PSF mixture (default: 6)")
    parser.add_argument("--zeropoint", type=float, default=None, metavar="MAG",
                        help="AB magnitude of one catalog flux unit (22.5: nanomaggies; "
                             "default: the catalog's meta, else fluxes in image units); "
                             "then every image needs a zero point (from its header or "
                             "--exposure-zeropoints)")
    parser.add_argument("--exposure-zeropoints", nargs="+", type=float, default=None,
                        metavar="MAG", help="AB zero point of each image (one data unit), "
                                            "overriding what the files give")
    parser.add_argument("--bands", nargs="+", default=None, metavar="BAND",
                        help="band of each image, overriding the headers; a catalog "
                             "without flux_<band> columns gets a flux per band of the "
                             "images")
    background = parser.add_mutually_exclusive_group()
    background.add_argument("--background", nargs="+", type=float, default=None,
                            metavar="VALUE", help="known background of each image (data "
                                                  "units) instead of fitting a constant")
    background.add_argument("--no-background", action="store_true",
                            help="images are background-subtracted: fit no background")
    parser.add_argument("--max-shift", type=float, default=1.0, metavar="ARCSEC",
                        help="how far a source may move from its catalog position, in "
                             "the fit and in --sample (default: 1 arcsec)")
    parser.add_argument("--sample", action="store_true",
                        help="also sample the posterior with dynesty (slower)")
    parser.add_argument("--nlive", type=int_at_least(2), default=200, metavar="N",
                        help="live points for --sample (default: 200); more than twice the "
                             "number of free parameters")
    parser.add_argument("--seed", type=int_at_least(0), default=0, metavar="N",
                        help="random seed for --sample, >= 0 (default: 0)")
    parser.add_argument("-o", "--output", metavar="DIR", default="astromix-scene",
                        help="output folder (default: ./astromix-scene)")
    parser.add_argument("-b", "--backend", metavar="NAME", default=None,
                        help="compute backend (default: the active one)")
    parser.add_argument("--no-plot", action="store_true", help="no PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def _per_image(values, n, what):
    if values is None:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise InputError(f"{len(values)} {what} for {n} images: give one, or one per image")
    return list(values)


def load_psf(path, *, n_components=6, oversampling=None):
    """A PSF for :class:`~astromix.Exposure` from a file.

    Parameters
    ----------
    path : str
        A PSFEx model (standard ``.psf`` or merged-table layout, which the
        exposure evaluates at every source), an ASDF file whose tree holds a GaussianMixturePSF or
        GaussianMixture (under ``psf`` or as the only such object), or a FITS
        PSF image (fitted once with :func:`~astromix.fitting.fit_psf_mixture`).
    n_components : int, optional
        Gaussians of the fitted mixtures.
    oversampling : float, optional
        Oversampling of a PSF image (default: from its header,
        :func:`astromix.cli.psf_mixture.header_oversampling`: ``DET_SAMP``,
        else ``OVERSAMP``, else 1; ``OVERSAMP`` in STPSF's detector-sampled
        extensions).

    Returns
    -------
    callable or GaussianMixturePSF
        For a PSFEx model, ``psf(x, y) -> GaussianMixturePSF`` (its
        :meth:`~astromix.io.psfex.PSFExModel.mixture` with ``n_components``).

    Raises
    ------
    InputError
        For a missing, unreadable, truncated or damaged file, or one holding
        no PSF; the message names the file.
    """
    from astropy.io import fits

    from ..fitting import fit_psf_mixture
    from ..io.psfex import read_psfex
    from ..mixtures import GaussianMixture
    from ..models.psf import GaussianMixturePSF

    if not os.path.exists(path):
        raise InputError(f"PSF file {path!r} does not exist")
    if path.endswith(".asdf"):
        from ..io.asdf import open_asdf

        with open_asdf(path) as af:
            tree = af.tree
            # a tuple, not ``A | B``: for astropy model classes ``|`` is composition
            kinds = (GaussianMixturePSF, GaussianMixture)
            found = [v for v in tree.values() if isinstance(v, kinds)]
            psf = tree.get("psf", found[0] if len(found) == 1 else None)
        if not isinstance(psf, kinds):
            raise InputError(f"ASDF file {path!r} holds no GaussianMixturePSF under 'psf'")
        return psf if isinstance(psf, GaussianMixturePSF) else GaussianMixturePSF(psf)
    try:
        with fits.open(path) as hdul:
            is_psfex = any(isinstance(h, fits.BinTableHDU) and
                           any(c.lower() == "psf_mask" for c in h.columns.names)
                           for h in hdul[1:])
            if not is_psfex:
                hdu = next((h for h in hdul if h.data is not None and h.data.ndim == 2), None)
                if hdu is None:
                    raise InputError(f"{path!r} holds neither a PSFEx model nor a PSF image")
                image = np.asarray(hdu.data, dtype=float)
                header = hdu.header
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        # what astropy raises for a truncated or damaged file (as read_psfex catches)
        raise InputError(f"cannot read PSF file {path!r}: {exc}") from None
    if is_psfex:
        return functools.partial(read_psfex(path).mixture, n_components=n_components)
    if oversampling is None:
        from .psf_mixture import header_oversampling

        oversampling = header_oversampling(header, option="--psf-oversampling")[0]
    return fit_psf_mixture(image, n_components, oversampling=oversampling, objective="chi2")


def run(args):
    """Run ``astromix fit-scene`` (see the module docstring); returns the exit status.

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
        If ``--psf``, ``--exposure-zeropoints``, ``--bands`` or
        ``--background`` has neither one value nor one per image, the output
        folder cannot be created or written or one of the output files is a
        folder (checked before any work), a PSF file is missing,
        unreadable or holds no PSF (:func:`load_psf`), the catalog's fluxes
        have a zero point (``--zeropoint`` or the catalog's meta) and an image
        has none (its header gives none and ``--exposure-zeropoints`` is not
        given): its fluxes would be in image units, not the catalog's; the
        catalog has no ``flux_<band>`` columns and only some images have a
        band (:func:`scene_from_catalog`); or an image's WCS gives no pixel
        position at a catalog source (the message names the catalog, the row
        and the image).
    BackendError
        If ``--backend`` names an unknown or unavailable backend.
    AstromixError
        If writing an output file fails (a full disk, a lost permission...);
        the message names the folder or, for the ``--sample`` outputs, the file.

    Notes
    -----
    ``--nlive`` (an integer >= 2), ``--seed`` (>= 0) and
    ``--psf-components`` (>= 1) are checked by the parser: a bad value is a
    usage error (exit status 2) before anything is read or written.
    """
    from .. import backends
    from ..data import Exposure
    from ..fitting import fit_scene, sample_scene
    from ._scene import print_report, write_scene_outputs

    n = len(args.images)
    psfs = _per_image(args.psf, n, "PSF files")
    zps = _per_image(args.exposure_zeropoints, n, "zero points")
    bands = _per_image(args.bands, n, "bands")
    if args.no_background:
        background = None
    elif args.background is not None:
        background = _per_image(args.background, n, "backgrounds")
    else:
        background = "fit"
    for name in _output_names(args):       # e.g. a folder of that name, before any work
        check_output_name(os.path.join(args.output, name), True, "--output")
    out = sys.stdout
    with (backends.use_backend(args.backend) if args.backend
          else contextlib.nullcontext(backends.get_backend())):
        prepare_output_folder(args.output)
        cache = {}
        exposures = []
        for path, psf_path, zp, band in zip(args.images, psfs, zps, bands):
            if psf_path not in cache:
                cache[psf_path] = load_psf(psf_path, n_components=args.psf_components,
                                           oversampling=args.psf_oversampling)
            exposures.append(Exposure.from_fits(path, psf=cache[psf_path], zeropoint=zp,
                                                band=band))
        scene = scene_from_catalog(args.catalog, exposures, zeropoint=args.zeropoint,
                                   images=args.images)
        _check_zeropoints(scene, exposures, args)
        print(f"astromix fit-scene: {scene.n_sources} source(s) in {n} image(s), bands "
              f"{', '.join(str(b) for b in scene.bands)}", file=out)
        try:
            fitted, catalog = fit_scene(scene, exposures, background=background,
                                        max_shift=args.max_shift,
                                        progress=not args.no_progress)
        except InputError:
            _name_unmapped_source(scene, exposures, args)  # "no pixel position at ..."
            raise
        written = write_scene_outputs(args.output, fitted, catalog, exposures,
                                      plot=not args.no_plot, title="astromix fit-scene")
        print_report(out, fitted, catalog)
        if args.sample:
            post = sample_scene(scene, exposures, fit=fitted, background=background,
                                nlive=args.nlive,
                                max_shift=args.max_shift, rng=args.seed,
                                progress=not args.no_progress)
            written += _write_posterior(args.output, post, plot=not args.no_plot)
            print(f"posterior: log Z = {post.logz:.2f} +- {post.logz_err:.2f}, "
                  f"{len(post.samples)} samples", file=out)
    for path in written:
        print(f"wrote {path}", file=out)
    return 0


def _output_names(args):
    """The files fit-scene writes in ``args.output``."""
    names = ["catalog.ecsv", "exposures.ecsv", "scene.asdf"]
    if not args.no_plot:
        names.append("residuals.png")
    if args.sample:
        names += ["posterior.ecsv", "posterior_samples.ecsv"]
        if not args.no_plot:
            names.append("corner.png")
    return names


def _write_posterior(folder, post, *, plot=True):
    """posterior.ecsv, posterior_samples.ecsv and (with ``plot``) corner.png, atomically.

    Returns the written paths; an OSError (a full disk, a lost permission) is
    an AstromixError naming the file.
    """
    written = []
    path = None
    try:
        for name, table in (("posterior.ecsv", post.summary()),
                            ("posterior_samples.ecsv", _samples_table(post))):
            path = os.path.join(folder, name)
            with atomic_path(path) as tmp:
                table.write(tmp, format="ascii.ecsv", overwrite=True)
            written.append(path)
        if plot:
            path = os.path.join(folder, "corner.png")
            fig = post.corner()
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                fig.savefig(fh, format="png", dpi=80)
            written.append(path)
    except OSError as exc:
        raise AstromixError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    return written


def scene_from_catalog(catalog, exposures, *, zeropoint=None, images=None):
    """The scene of a catalog, with a flux per band of the exposures.

    A catalog with ``flux_<band>`` columns gives the scene those bands
    (:meth:`astromix.SceneModel.from_catalog`).  One without (a detection list
    of ``ra``, ``dec``; or a plain ``flux`` column, then the starting flux in
    every band) gets the bands of the exposures, sorted: one flux per band,
    not one flux shared by images of different bands.  When no exposure has
    a band, the scene has one unnamed band (a flux shared by all images).

    Parameters
    ----------
    catalog : str or astropy.table.Table
        The catalog (as :meth:`~astromix.SceneModel.from_catalog` reads it).
    exposures : list of Exposure
        The images, with their ``band`` (str or None).
    zeropoint : float, optional
        AB magnitude of one catalog flux unit (default: the catalog's meta).
    images : list of str, optional
        The images' paths, for the error message (default: the exposures' names).

    Returns
    -------
    SceneModel

    Raises
    ------
    InputError
        As :meth:`~astromix.SceneModel.from_catalog`, or when the catalog has
        no ``flux_<band>`` columns and some exposures have a band and others
        none (give ``--bands``).
    """
    from ..models.scene import SceneModel

    scene = SceneModel.from_catalog(catalog, zeropoint=zeropoint)
    if scene.bands != (None,):           # flux_<band> columns name the bands
        return scene
    names = images if images is not None else [e.name for e in exposures]
    bands = [e.band for e in exposures]
    if all(b is None for b in bands):
        return scene
    missing = [name for name, b in zip(names, bands) if b is None]
    if missing:
        raise InputError(f"image(s) {missing} have no band (their headers give no FILTER) "
                         f"while the others have {sorted(set(bands) - {None})}, and the "
                         "catalog has no flux_<band> columns; give --bands (one per image)")
    return SceneModel.from_catalog(catalog, bands=tuple(sorted(set(bands))),
                                   zeropoint=zeropoint)


def _name_unmapped_source(scene, exposures, args):
    """After a failed fit: InputError naming the catalog file, the row (and id) and the
    image when the WCS of an image gives no pixel position at a catalog source (a row
    on the far side of the sky, where a TAN projection has none), which the scene reports
    without them.  Returns quietly when every source maps (another error)."""
    from ..models.scene import local_affine

    for path, e in zip(args.images, exposures):
        if getattr(e, "wcs", None) is None:
            continue
        for i, name in enumerate(scene.source_names):
            ra = float(getattr(scene, f"ra_{i}").value)
            dec = float(getattr(scene, f"dec_{i}").value)
            try:
                local_affine(e.wcs, ra, dec)
            except InputError:
                source = f"row {i}" + ("" if name == str(i) else f" (id {name!r})")
                raise InputError(
                    f"catalog {args.catalog!r}, {source}: image {path!r} gives no pixel "
                    f"position at (ra, dec) = ({ra:.6f}, {dec:.6f}) deg (its WCS has none "
                    "there: the position is far from the image)") from None


def _check_zeropoints(scene, exposures, args):
    """InputError naming the images without a zero point when the catalog fluxes have one."""
    if scene.zeropoint is None:
        return
    missing = [path for path, e in zip(args.images, exposures) if e.zeropoint is None]
    if missing:
        where = ("--zeropoint" if args.zeropoint is not None
                 else f"the meta of catalog {args.catalog!r}")
        raise InputError(f"image(s) {missing} have no zero point (their headers give none), "
                         f"but the catalog fluxes have zero point {scene.zeropoint:g} "
                         f"({where}); give --exposure-zeropoints (one per image, AB mag of "
                         "one data unit)")


def _samples_table(post):
    from astropy.table import Table

    return Table(post.samples, names=post.param_names)
