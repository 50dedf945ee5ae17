"""``astromix demo``: fit a Gaussian mixture to a real HST PSF and show the result.

Loads one of the shipped HST ACS/WFC F814W PSF images
(:func:`astromix.datasets.load_hst_psf`), fits an N-component mixture with
:func:`astromix.fitting.fit_gaussian_mixture`, prints a short report and writes

* ``DIR/psf_mixture.asdf``: the fitted :class:`~astromix.GaussianMixture` under
  the key ``psf``, with the fit metrics under ``fit`` and the data source under
  ``source``;
* ``DIR/psf_mixture.png``: data, model, residual in % of the peak, and the
  radial profiles.

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
from ._shared import atomic_path, image_panels, prepare_output_folder, radial_profile

__all__ = ["add_parser", "run", "write_asdf", "write_png", "component_table"]

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
    """Register the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="fit a Gaussian mixture to a shipped HST PSF and plot it",
        description="Fit a Gaussian mixture to one of the 100 HST ACS/WFC F814W PSF "
                    "images shipped with astromix (GalSim COSMOS sample), print the "
                    "residual metrics, and write DIR/psf_mixture.asdf and "
                    "DIR/psf_mixture.png.")
    parser.add_argument("-o", "--output", metavar="DIR", default=DEFAULT_OUTPUT,
                        help=f"output folder, created if needed (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("-b", "--backend", metavar="NAME", default=None,
                        help="compute backend: numpy, numba or cupy (default: the active "
                             "one; see 'astromix backends')")
    parser.add_argument("-n", "--n-components", metavar="N", type=_positive_int, default=4,
                        help="number of Gaussian components (default: 4)")
    parser.add_argument("--index", metavar="I", type=int, default=0,
                        help="which of the 100 HST PSFs, 0-99 (default: 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation (default: 0)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not write the PNG figure (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")
    parser.set_defaults(func=run)
    return parser


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
        Fit metrics and data provenance (plain numbers and strings).
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


def run(args):
    """Run the demo (see the module docstring); returns the exit status."""
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
