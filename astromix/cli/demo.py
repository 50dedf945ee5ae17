"""``astromix demo``: fit a galaxy and its neighbour jointly in eight real DECam exposures.

The main job of astromix on the shipped real data
(:func:`astromix.datasets.decam_multiexposure`): eight DECam community-pipeline
exposures (g x3, r x2, z x3; 2014-2018; Legacy Surveys DR9) of a galaxy and its
faint neighbour, each with its own TPV WCS, inverse-variance map, data-quality
mask, zero point and PSFEx PSF.  The demo

1. reads each exposure (:meth:`astromix.Exposure.from_fits`) and turns its PSFEx
   model into a Gaussian mixture at the galaxy (:func:`astromix.io.psfex.read_psfex`);
2. detects the sources on the sharpest z-band exposure (photutils segmentation)
   for the starting catalog;
3. fits both sources jointly in all eight exposures
   (:func:`astromix.fitting.fit_scene`: per-band fluxes in nanomaggies, positions,
   and the galaxy's r_eff, n, ellip, theta), the images' sky taken from the Legacy
   Surveys' CCD-wide sky model (``--fit-background`` fits a constant per exposure
   instead: in these 10" cutouts it trades off against the galaxy's outer
   profile); the faint neighbour is tried as a point source and as an
   exponential disk and the model with the lower BIC kept; and writes

* ``DIR/catalog.ecsv``: one row per source, values and errors;
* ``DIR/exposures.ecsv``: one row per exposure: name, band, chi2, dof, background;
* ``DIR/residuals.png``: data, model and residual / sigma of every exposure;
* ``DIR/scene.asdf``: the fitted :class:`~astromix.SceneModel`, the catalog and
  the exposures with their PSF mixtures (re-fittable without the FITS files).

``astromix demo --hst-psf`` runs the earlier, smaller demo instead: a Gaussian
mixture fitted to a shipped HST PSF (``DIR/psf_mixture.asdf``,
``DIR/psf_mixture.png``).

Each file is written to a temporary file in ``DIR`` and renamed into place, so
an interrupted run leaves any previous file intact.
"""

import contextlib
import logging
import math
import os
import sys
import time

import numpy as np

from ..errors import AstromixError
from ._shared import (
    atomic_path,
    image_panels,
    int_at_least,
    prepare_output_folder,
    radial_profile,
)

__all__ = ["add_parser", "run", "run_hst_psf", "load_decam_exposures", "detect_catalog",
           "write_asdf", "write_png", "component_table"]

log = logging.getLogger("astromix")

DEFAULT_OUTPUT = "astromix-demo"


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(subparsers):
    """Register the ``demo`` subcommand.

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
        "demo", help="fit a galaxy and its neighbour in 8 real DECam exposures",
        description="Fit a galaxy and its faint neighbour jointly in the eight DECam "
                    "exposures (g, r, z) shipped with astromix, each with its own WCS, "
                    "noise and PSFEx PSF, and write DIR/catalog.ecsv, DIR/exposures.ecsv, "
                    "DIR/residuals.png and DIR/scene.asdf.  With --hst-psf: fit a Gaussian "
                    "mixture to a shipped HST PSF instead.")
    parser.add_argument("-o", "--output", metavar="DIR", default=DEFAULT_OUTPUT,
                        help=f"output folder, created if needed (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("-b", "--backend", metavar="NAME", default=None,
                        help="compute backend: numpy, numba or cupy (default: the active "
                             "one; see 'astromix backends')")
    parser.add_argument("--psf-components", metavar="N", type=_positive_int, default=6,
                        help="Gaussians per PSF mixture (default: 6)")
    parser.add_argument("--fit-background", action="store_true",
                        help="fit a constant background per exposure instead of subtracting "
                             "the survey's CCD-wide sky model")
    parser.add_argument("--hst-psf", action="store_true",
                        help="run the HST PSF-mixture demo instead of the DECam scene fit")
    parser.add_argument("-n", "--n-components", metavar="N", type=_positive_int, default=4,
                        help="--hst-psf: number of Gaussian components (default: 4)")
    parser.add_argument("--index", metavar="I", type=int, default=0,
                        help="--hst-psf: which of the 100 HST PSFs, 0-99 (default: 0)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, metavar="N",
                        help="--hst-psf: seed of the random initialisation, >= 0 "
                             "(default: 0)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not write the PNG figure (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")
    parser.set_defaults(func=run)
    return parser


def load_decam_exposures(*, psf_components=6, progress=True):
    """The eight shipped DECam exposures, each with a PSF mixture at the galaxy.

    Parameters
    ----------
    psf_components : int, optional
        Gaussians per PSF mixture.
    progress : bool, optional

    Returns
    -------
    list of Exposure
        In date order; ``zeropoint`` makes fluxes nanomaggies with a scene
        zeropoint of 22.5; ``psf`` is a GaussianMixturePSF fitted to the PSFEx
        model at the image centre (where the galaxy is); ``meta["sky"]`` is the
        Legacy Surveys' CCD-wide sky level [ADU].
    """
    from tqdm.auto import tqdm

    from ..data import Exposure
    from ..datasets import decam_multiexposure
    from ..io.psfex import read_psfex

    table = decam_multiexposure()
    out = []
    for row in tqdm(table, desc="exposures and PSF mixtures", disable=not progress,
                    leave=False):
        first = Exposure.from_fits(row["image"], name=row["name"])
        ny, nx = first.data.shape
        psf = read_psfex(row["psfex"]).mixture((nx - 1) / 2, (ny - 1) / 2,
                                               n_components=psf_components)
        e = Exposure.from_fits(row["image"], psf=psf, zeropoint=float(row["zeropoint"]),
                               name=row["name"])
        e.meta["sky"] = float(row["sky"])
        out.append(e)
    return out


def detect_catalog(exposure, *, nsigma=3.0, npixels=6, zeropoint=22.5, bands=("g", "r", "z")):
    """A starting catalog from a photutils segmentation of one exposure.

    Parameters
    ----------
    exposure : Exposure
    nsigma : float, optional
        Detection threshold over the sigma-clipped noise of the smoothed image.
    npixels : int, optional
        Minimum connected pixels of a source.
    zeropoint : float, optional
        Catalog flux unit (AB mag) for the starting fluxes.
    bands : sequence of str, optional
        Bands given the same starting flux.

    Returns
    -------
    astropy.table.Table
        ``id``, ``kind`` (sersic), ``ra``, ``dec`` [deg], ``flux_<band>``,
        ``r_eff`` [arcsec], brightest first.

    Raises
    ------
    AstromixError
        If nothing is detected.
    """
    from astropy.convolution import convolve
    from astropy.stats import sigma_clipped_stats
    from astropy.table import Table
    from astropy.utils import minversion
    from photutils.segmentation import (
        SourceCatalog,
        deblend_sources,
        detect_sources,
        make_2dgaussian_kernel,
    )

    data = np.asarray(exposure.data, dtype=float)
    mask = np.asarray(exposure.weight) <= 0
    _, median, _ = sigma_clipped_stats(data, mask=mask)
    sub = np.where(mask, 0.0, data - median)
    conv = convolve(sub, make_2dgaussian_kernel(3.0, size=7))
    _, _, std = sigma_clipped_stats(conv, mask=mask)
    segm = detect_sources(conv, nsigma * std, npixels, mask=mask)   # positional: photutils 2 and 3
    if segm is None:
        raise AstromixError(f"no source detected in {exposure.name}")
    # photutils < 3.1 draws a tqdm bar unless told not to; 3.1 deprecated the keyword
    # (it draws none), and a deprecated keyword would warn on every demo run
    quiet = {} if minversion("photutils", "3.1") else {"progress_bar": False}
    segm = deblend_sources(conv, segm, npixels, **quiet)
    sc = SourceCatalog(sub, segm, convolved_data=conv)
    order = np.argsort(-np.asarray(sc.segment_flux, dtype=float))
    centroid = np.atleast_2d(np.asarray(sc.centroid, dtype=float))[order]
    flux = np.asarray(sc.segment_flux, dtype=float)[order]
    fwhm = np.asarray(getattr(sc.fwhm, "value", sc.fwhm), dtype=float)[order]
    ellip = np.clip(np.asarray(sc.ellipticity, dtype=float)[order], 0.05, 0.8)
    phi = np.radians(np.asarray(getattr(sc.orientation, "value", sc.orientation),
                                dtype=float)[order])
    ra, dec = exposure.pixel_to_world(centroid[:, 0], centroid[:, 1])
    scale = exposure.flux_scale(zeropoint)
    px_per_arcsec = 1.0 / exposure.pixel_scale(centroid[0, 0], centroid[0, 1])
    out = Table({"id": [f"src{k}" for k in range(len(flux))], "kind": ["sersic"] * len(flux),
                 "ra": np.atleast_1d(ra), "dec": np.atleast_1d(dec)})
    for b in bands:
        out[f"flux_{b}"] = np.maximum(flux / scale, 0.1)
    out["r_eff"] = np.clip(0.5 * fwhm / px_per_arcsec, 0.3, 3.0)
    out["ellip"] = ellip
    # photutils' orientation is the major axis from +x towards +y: to east of north
    from ..models.scene import local_affine
    theta = []
    for k in range(len(flux)):
        _, j = local_affine(exposure.wcs, float(np.atleast_1d(ra)[k]),
                            float(np.atleast_1d(dec)[k]))
        north, east = np.linalg.solve(j, [np.cos(phi[k]), np.sin(phi[k])])
        theta.append(float(np.mod(np.arctan2(east, north), np.pi)))
    out["theta"] = theta
    out.meta["zeropoint"] = zeropoint
    return out


def run(args):
    """Run the demo (see the module docstring); returns the exit status.

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
        If the output folder cannot be created or written.
    BackendError
        If ``--backend`` names an unknown or unavailable backend.
    AstromixError
        If no source is detected in the sharpest z-band exposure; with
        ``--hst-psf``, as :func:`run_hst_psf`.
    """
    if args.hst_psf:
        return run_hst_psf(args)
    from .. import backends
    from ._scene import print_report, write_scene_outputs

    out = sys.stdout
    progress = not args.no_progress
    with (backends.use_backend(args.backend) if args.backend
          else contextlib.nullcontext(backends.get_backend())) as bk:
        prepare_output_folder(args.output)
        t0 = time.perf_counter()
        exposures = load_decam_exposures(psf_components=args.psf_components, progress=progress)
        print(f"astromix demo: {len(exposures)} DECam exposures (Legacy Surveys DR9; "
              f"bands {', '.join(sorted({e.band for e in exposures}))}) of a galaxy and its "
              f"neighbour; backend {bk.name}", file=out)
        z_band = [e for e in exposures if e.band == "z"] or exposures
        sharpest = min(z_band, key=lambda e: _psf_size(e))
        catalog = detect_catalog(sharpest)[:2]
        t_prep = time.perf_counter() - t0
        background = "fit" if args.fit_background else [e.meta["sky"] for e in exposures]
        fitted, result, choice = fit_with_model_choice(catalog, exposures, background,
                                                       progress=progress, out=out)
        t_fit = time.perf_counter() - t0 - t_prep
        written = write_scene_outputs(
            args.output, fitted, result, exposures, plot=not args.no_plot,
            title=f"astromix demo: a galaxy and its neighbour in {len(exposures)} DECam "
                  "exposures (sky subtracted)")
    print_report(out, fitted, result)
    print(f"time: {t_prep:.1f} s reading and PSF mixtures, {t_fit:.1f} s fitting, "
          f"{time.perf_counter() - t0:.1f} s in all", file=out)
    for path in written:
        print(f"wrote {path}", file=out)
    return 0


def fit_with_model_choice(catalog, exposures, background, *, progress=True, out=None):
    """Fit the galaxy (Sersic) with each faint source as a point source or an exponential.

    Every source after the first is tried as a :class:`~astromix.models.scene.StarSource`
    and as a Sersic profile with n fixed to 1; the model with the lower Bayesian
    information criterion, ``chi2 + k ln(N)`` (k free parameters, N pixels),
    is kept, as the Tractor chooses between point sources and galaxies.

    Returns
    -------
    fitted : SceneModel
    catalog : astropy.table.Table
    choice : dict
        ``{kind: (chi2, k, bic)}`` for both models.
    """
    from ..fitting import fit_scene
    from ..models.scene import SceneModel

    results, choice = {}, {}
    for kind in ("star", "sersic"):
        cat = catalog.copy()
        cat["n"] = [2.0] + [1.0] * (len(cat) - 1)
        cat["kind"] = ["sersic"] + [kind] * (len(cat) - 1)
        scene = SceneModel.from_catalog(cat, bands=("g", "r", "z"), zeropoint=22.5)
        for i in range(1, scene.n_sources):
            if kind == "sersic":
                getattr(scene, f"n_{i}").fixed = True
        fitted, table = fit_scene(scene, exposures, background=background, progress=progress)
        info = fitted.fit_info
        k = len(info["free_parameters"])
        bic = info["chi2"] + k * np.log(info["dof"] + k)
        results[kind] = (fitted, table)
        choice[kind] = (info["chi2"], k, bic)
        if out is not None:
            print(f"neighbour as {'point source' if kind == 'star' else 'exponential disk'}: "
                  f"chi2 = {info['chi2']:.1f}, {k} free parameters, BIC = {bic:.1f}", file=out)
    best = min(choice, key=lambda kind: choice[kind][2])
    if out is not None:
        print(f"kept: neighbour as {'point source' if best == 'star' else 'exponential disk'}",
              file=out)
    return results[best][0], results[best][1], choice


def _psf_size(exposure):
    mix = exposure.psf_at(0.0, 0.0)
    mix = getattr(mix, "mixture", mix)
    _, _, cov = mix.moments()
    return float(np.trace(cov))


def component_table(mixture):
    """Rows (amp, x, y, sigma_major, sigma_minor, theta_deg) of a mixture's components.

    Parameters
    ----------
    mixture : GaussianMixture

    Returns
    -------
    ndarray, shape (K, 6)
        Amplitude, centre x and y [px], major and minor standard deviations
        [px], and position angle of the major axis [deg, from +x towards +y],
        sorted by decreasing amplitude.
    """
    rows = []
    for a, (x, y), c in zip(mixture.amp, mixture.mean, mixture.cov):
        evals, evecs = np.linalg.eigh(c)
        major = evecs[:, 1]
        theta = math.degrees(math.atan2(major[1], major[0]))
        theta = (theta + 90.0) % 180.0 - 90.0
        rows.append((a, x, y, math.sqrt(evals[1]), math.sqrt(evals[0]), theta))
    rows = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return rows[np.argsort(-rows[:, 0], kind="stable")]


def _plain(value):
    """Convert NumPy scalars to Python numbers for the ASDF tree."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def write_asdf(path, mixture, info=None, source=None):
    """Write ``{"psf": mixture, "fit": info, "source": source}`` to an ASDF file, atomically.

    Parameters
    ----------
    path : str
        Output file; replaced only once the new file is complete.
    mixture : GaussianMixture
    info, source : dict, optional
        Fit metrics and data provenance (plain numbers and strings); NumPy
        scalars become Python numbers, other values their ``str``.  Left out
        of the tree when empty or None.

    Returns
    -------
    None
    """
    import asdf

    tree = {"psf": mixture}
    if info:
        tree["fit"] = {str(k): _plain(v) for k, v in info.items()}
    if source:
        tree["source"] = {str(k): _plain(v) for k, v in source.items()}
    with atomic_path(path) as tmp:
        asdf.AsdfFile(tree).write_to(tmp)


def write_png(path, image, model, mixture, title=""):
    """Draw data, model, residual (% of peak) and radial profiles to a PNG, atomically.

    Parameters
    ----------
    path : str
        Output file.
    image, model : ndarray, shape (ny, nx)
        The data and the rendered mixture.
    mixture : GaussianMixture
        Used for the centre of the radial profiles.
    title : str, optional

    Returns
    -------
    None
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    image_panels(fig, axes, image, model, label="data")
    for ax in axes[:3]:
        ax.set_xlabel("x [px]")
        ax.set_ylabel("y [px]")
    _, centre, _ = mixture.moments()
    r, prof_d = radial_profile(image, centre)
    _, prof_m = radial_profile(model, centre)
    ax = axes[3]
    ax.semilogy(r, np.abs(prof_d), "k.", label="data")
    ax.semilogy(r, np.abs(prof_m), "C1-", label="model")
    ax.set_xlabel("radius [px]")
    ax.set_ylabel("mean |pixel value|")
    ax.set_title("radial profile")
    ax.legend()
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)


def run_hst_psf(args):
    """``astromix demo --hst-psf``: a Gaussian mixture fitted to a shipped HST PSF.

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
        If ``--index`` is not in 0-99 or the output folder cannot be created
        or written.
    BackendError
        If ``--backend`` names an unknown or unavailable backend.
    AstromixError
        If an output file cannot be written (an OSError).
    """
    from .. import backends
    from ..datasets import load_hst_psf

    out = sys.stdout
    with (backends.use_backend(args.backend) if args.backend
          else contextlib.nullcontext(backends.get_backend())) as bk:
        image, header = load_hst_psf(args.index)
        prepare_output_folder(args.output)
        from ..fitting import fit_gaussian_mixture

        ny, nx = image.shape
        print(f"astromix demo: HST ACS/WFC {header.get('FILTER', 'F814W')} PSF #{args.index} "
              f"(GalSim COSMOS sample, galaxy {header.get('IDENT', '?')}), {ny} x {nx} px "
              f"at {header.get('PIXSCALE', 0.03)} arcsec/px", file=out)
        print(f"backend: {bk.name}", file=out)
        steps = ["fit", "write ASDF"] + ([] if args.no_plot else ["plot"])
        progress = _progress(len(steps), disable=args.no_progress)
        with progress:
            progress.set_description(f"fitting {args.n_components} Gaussians")
            t0 = time.perf_counter()
            mixture, info = fit_gaussian_mixture(image, args.n_components, weight=None,
                                                 rng=np.random.default_rng(args.seed))
            elapsed = time.perf_counter() - t0
            progress.update()
            model = mixture.render(image.shape)
            model = bk.to_numpy(model) if hasattr(bk, "to_numpy") else np.asarray(model)

            asdf_path = os.path.join(args.output, "psf_mixture.asdf")
            png_path = os.path.join(args.output, "psf_mixture.png")
            source = {"dataset": "astromix.datasets.load_hst_psf", "index": args.index,
                      "ident": header.get("IDENT"), "filter": header.get("FILTER"),
                      "pixel_scale_arcsec": header.get("PIXSCALE"), "backend": bk.name,
                      "seed": args.seed}
            progress.set_description("writing ASDF")
            try:
                write_asdf(asdf_path, mixture, info, source)
                progress.update()
                if not args.no_plot:
                    progress.set_description("plotting")
                    write_png(png_path, image, model, mixture,
                              title=f"HST F814W PSF #{args.index}: {len(mixture)}-component "
                                    f"Gaussian mixture ({bk.name} backend)")
                    progress.update()
            except OSError as exc:
                raise AstromixError(f"cannot write to {args.output!r}: "
                                    f"{exc.strerror or exc}") from None

    _report(out, image, mixture, info, elapsed)
    print(f"wrote {asdf_path}", file=out)
    if not args.no_plot:
        print(f"wrote {png_path}", file=out)
    return 0


def _progress(total, disable):
    from tqdm import tqdm

    # disable=None: only when stderr is a terminal.
    return tqdm(total=total, disable=True if disable else None, file=sys.stderr,
                leave=False, unit="step")


def _report(out, image, mixture, info, elapsed):
    rows = component_table(mixture)
    n_iter = info.get("n_iterations")
    fit_time = info.get("time_s", elapsed)
    print(f"fitted {len(mixture)} Gaussian components in {fit_time:.2f} s"
          + (f" ({n_iter} iterations)" if n_iter is not None else ""), file=out)
    print("     amp        x        y  sigma_maj  sigma_min  theta[deg]", file=out)
    for a, x, y, smaj, smin, th in rows:
        print(f"  {a:8.5f}  {x:7.3f}  {y:7.3f}  {smaj:9.3f}  {smin:9.3f}  {th:10.1f}", file=out)
    print(f"flux: data {float(np.sum(image)):.6f}, mixture {mixture.flux:.6f}", file=out)
    if "max_residual_over_peak" in info:
        v = float(info["max_residual_over_peak"])
        print(f"max|residual|/peak = {v:.5f} ({100 * v:.2f} % of the peak)", file=out)
    if "l1_residual_over_flux" in info:
        v = float(info["l1_residual_over_flux"])
        print(f"sum|residual|/flux = {v:.5f} ({100 * v:.2f} % of the flux)", file=out)
    if "chi2" in info:
        print(f"chi2 = {float(info['chi2']):.4g}", file=out)
