#!/usr/bin/env python
"""Large-field fitting in patches: sources per second, memory, agreement with isolated fits.

Case
----
A simulated field of ``--size`` x ``--size`` pixels (default 4096) at 0.2
arcsec/px with ``--n-sources`` Sersic galaxies (default 2000) drawn by GalSim
(the truth): each galaxy a ``galsim.Sersic`` (n 0.8-3, r_eff 0.2-0.7 arcsec,
ellipticity 0-0.6, any position angle) sheared and mapped to pixels through
the local Jacobian of the field's TAN WCS, convolved with a Moffat PSF
(FWHM 0.9 arcsec, beta 3.5), drawn (pixel-integrated) into a stamp and added
to the image; a sky of 100 e-/px with Poisson noise, then subtracted; the
uncertainty map is the true standard deviation.  The PSF of the fit is a
3-Gaussian mixture fitted to the Moffat (``fit_psf_mixture``, 4x
oversampled).  The starting catalog is the truth perturbed (fluxes by 20%,
positions by 0.1 arcsec, r_eff by 15%, n by 0.3, ellipticity by 0.05, angle
by 0.2 rad).

Measured
--------
* :func:`astromix.fitting.fit_patches` (patches of ``--patch-size`` arcsec with
  a ``--border``) with a :class:`~concurrent.futures.ProcessPoolExecutor` of 1
  and of 2 workers (one Numba thread per patch): wall time and sources per
  second, and the patched fits agree (2 workers vs 1: max |difference| in units
  of the errors);
* memory peak: ``resource.getrusage`` maxrss of this process (which holds the
  image and the patches) and of the largest worker;
* agreement with single fits of isolated sources: ``--n-isolated`` galaxies
  with no other source within 10 arcsec and away from the edges, each fitted
  alone (:func:`astromix.fitting.fit_scene`) in its own 61 x 61 px cutout;
  the patched fluxes against those (both fits with the same background
  treatment, by default the known sky: with a background fitted in each
  cutout the flux-background degeneracy of a small cutout differs from a
  patch's, which is not what is measured here): median ratio, median and scatter (1.4826
  MAD) of the difference in units of the patched errors;
* recovery of the truth by the patched fit: median and scatter of (flux -
  true flux) / error, median position offset.

Peer in the same run: GalSim's time to draw the field (values only).
Targets: memory peak < 4 GB; |median flux difference| against isolated fits
< 0.2 errors; the 2-worker run faster than the 1-worker run.

Usage::

    python benchmarks/large_field.py [--size 4096] [--n-sources 2000]
        [--patch-size 40] [--border 4] [--workers 1 2] [--json PATH]
    python benchmarks/large_field.py --size 1024 --n-sources 120   # a few minutes less
"""

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import resource
import sys
import time

import numpy as np
from astropy.wcs import WCS

from astromix import Exposure
from astromix.fitting import fit_patches, fit_psf_mixture, fit_scene, make_patches
from astromix.models.scene import SceneModel, SersicSource, local_affine

RA, DEC = 53.1, -27.8
SCALE = 0.2            # arcsec / px
SKY = 100.0            # e- / px
FWHM, BETA = 0.9, 3.5  # arcsec, Moffat
BAND = "r"


def make_wcs(size):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA, DEC]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    rot = math.radians(12.0)
    c, s = math.cos(rot), math.sin(rot)
    w.wcs.cd = np.array([[-c, s], [s, c]]) * SCALE / 3600
    return w


def psf_mixture(n_components=3):
    """A Gaussian mixture of the Moffat PSF, in science pixels."""
    import galsim

    over = 4
    img = galsim.Moffat(beta=BETA, fwhm=FWHM / SCALE).drawImage(
        nx=25 * over, ny=25 * over, scale=1.0 / over, method="no_pixel").array
    psf = fit_psf_mixture(img, n_components, oversampling=over, objective="chi2", rng=1)
    return psf


def truth_catalog(n, size, rng):
    """True galaxies, away from the image's edges by 3 arcsec."""
    w = make_wcs(size)
    margin = 15
    x = rng.uniform(margin, size - 1 - margin, n)
    y = rng.uniform(margin, size - 1 - margin, n)
    ra, dec = w.pixel_to_world_values(x, y)
    sources = []
    for i in range(n):
        sources.append(SersicSource(
            ra[i], dec[i], {BAND: float(np.exp(rng.uniform(np.log(2e3), np.log(5e4))))},
            r_eff=float(np.exp(rng.uniform(np.log(0.2), np.log(0.7)))),
            n=float(rng.uniform(0.8, 3.0)), ellip=float(rng.uniform(0.0, 0.6)),
            theta=float(rng.uniform(0, math.pi)), name=f"g{i:05d}"))
    return SceneModel(sources, bands=(BAND,))


def draw_field(truth, size, rng):
    """The GalSim image (e-, sky subtracted), its uncertainty and the drawing time."""
    import galsim

    w = make_wcs(size)
    image = galsim.ImageD(size, size, scale=1.0)   # bounds 1..size (GalSim is 1-based)
    psf = galsim.Moffat(beta=BETA, fwhm=FWHM / SCALE)
    t0 = time.perf_counter()
    for src in truth.sources:
        pix, jac = local_affine(w, src.ra, src.dec)
        q = 1.0 - src.ellip
        # GalSim's x axis = north, y = east, beta from x towards y: the position angle
        gal = galsim.Sersic(n=src.n, half_light_radius=src.r_eff * math.sqrt(q)).shear(
            q=q, beta=src.theta * galsim.radians)
        gal = gal.transform(jac[0, 0], jac[0, 1], jac[1, 0], jac[1, 1]).withFlux(
            src.flux[BAND])
        r_px = src.r_eff * math.sqrt(abs(np.linalg.det(jac)))
        half = int(min(max(8 * r_px + 3 * FWHM / SCALE, 16), 64))
        ix, iy = int(round(pix[0])), int(round(pix[1]))
        stamp = galsim.ImageD(2 * half + 1, 2 * half + 1, scale=1.0)
        stamp.setCenter(ix + 1, iy + 1)
        galsim.Convolve(gal, psf).drawImage(
            stamp, method="auto", offset=(pix[0] - ix, pix[1] - iy))
        overlap = stamp.bounds & image.bounds
        if overlap.isDefined():
            image[overlap] += stamp[overlap]
    t_draw = time.perf_counter() - t0
    truth_img = image.array
    var = SKY + np.clip(truth_img, 0, None)
    data = rng.poisson(truth_img.clip(0) + SKY).astype(np.float64) - SKY
    return data, np.sqrt(var), t_draw


def start_scene(truth, rng):
    """The truth perturbed: the starting catalog of the fit."""
    out = []
    for s in truth.sources:
        cosd = math.cos(math.radians(s.dec))
        out.append(SersicSource(
            s.ra + rng.normal(0, 0.1) / 3600 / cosd, s.dec + rng.normal(0, 0.1) / 3600,
            {BAND: s.flux[BAND] * math.exp(rng.normal(0, 0.2))},
            r_eff=s.r_eff * math.exp(rng.normal(0, 0.15)),
            n=float(np.clip(s.n + rng.normal(0, 0.3), 0.5, 6.0)),
            ellip=float(np.clip(s.ellip + rng.normal(0, 0.05), 0.0, 0.9)),
            theta=s.theta + rng.normal(0, 0.2), name=s.name))
    return SceneModel(out, bands=(BAND,))


def isolated(truth, size, n_pick, rng, radius=10.0):
    """Indices of up to ``n_pick`` sources with no neighbour within ``radius`` arcsec."""
    w = make_wcs(size)
    p = truth.sources
    ra = np.array([s.ra for s in p])
    dec = np.array([s.dec for s in p])
    x, y = w.world_to_pixel_values(ra, dec)
    xy = np.column_stack([x, y]) * SCALE
    good = []
    edge = 40
    for i in rng.permutation(len(p)):
        if not (edge < x[i] < size - 1 - edge and edge < y[i] < size - 1 - edge):
            continue
        d = np.hypot(*(xy - xy[i]).T)
        d[i] = np.inf
        if d.min() > radius:
            good.append(int(i))
        if len(good) == n_pick:
            break
    return sorted(good)


def fit_isolated(start, exposure, picks, background):
    """Each picked source fitted alone in a 61 x 61 px cutout: (flux, flux_err) arrays."""
    flux, err = [], []
    if not picks:
        return np.zeros(0), np.zeros(0)
    sources = start.sources
    for i in picks:
        s = sources[i]
        cut = exposure.cutout(s.ra, s.dec, 61)
        _, cat = fit_scene(SceneModel([s], bands=(BAND,)), [cut], progress=False,
                           background=background)
        flux.append(float(cat[f"flux_{BAND}"][0]))
        err.append(float(cat[f"flux_err_{BAND}"][0]))
    return np.array(flux), np.array(err)


def maxrss_mb(who):
    r = resource.getrusage(who).ru_maxrss   # kB on Linux
    return r / 1024.0


class MemorySampler:
    """Peak resident memory of the worker processes [MB], sampled every 0.1 s (psutil).

    ``resource.getrusage(RUSAGE_CHILDREN)`` misses the workers of a forkserver
    pool (they are the server's children, not ours), hence the sampling.
    """

    def __init__(self):
        import threading

        self.peak_worker = 0.0
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            import psutil
        except ImportError:  # pragma: no cover
            return
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = [c.memory_info().rss / 2 ** 20 for c in me.children(recursive=True)]
                total = me.memory_info().rss / 2 ** 20 + sum(rss)
            except psutil.Error:
                continue
            self.peak_worker = max([self.peak_worker, *rss])
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(args):
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    psf = psf_mixture()
    truth = truth_catalog(args.n_sources, args.size, rng)
    data, sigma, t_draw = draw_field(truth, args.size, rng)
    exposure = Exposure(data, uncertainty=sigma, wcs=make_wcs(args.size), psf=psf, band=BAND,
                        name="field")
    start = start_scene(truth, rng)
    t_setup = time.perf_counter() - t0
    print(f"field {args.size} x {args.size} px at {SCALE} arcsec/px, {args.n_sources} "
          f"galaxies (GalSim truth, drawn in {t_draw:.1f} s); PSF mixture of "
          f"{len(psf.mixture)} Gaussians; set-up {t_setup:.1f} s")
    t = time.perf_counter()
    patches = make_patches(start, [exposure], patch_size=args.patch_size, border=args.border)
    t_make = time.perf_counter() - t
    n_act = np.array([p.n_active for p in patches])
    n_fix = np.array([p.n_fixed for p in patches])
    mb = sum(p.npix for p in patches) * 8 * 3 / 2 ** 20
    print(f"{len(patches)} patches of {args.patch_size} arcsec + {args.border} arcsec border "
          f"(made in {t_make:.1f} s): active sources {n_act.min()}-{n_act.max()} (mean "
          f"{n_act.mean():.1f}), fixed neighbours {n_fix.min()}-{n_fix.max()} (mean "
          f"{n_fix.mean():.1f}); pixels {sum(p.npix for p in patches) / data.size:.2f}x the "
          f"image (~{mb:.0f} MB of data, uncertainty and weight)")
    del patches

    runs = {}
    background = None if args.background == "none" else "fit"
    samplers = []
    for workers in args.workers:
        sampler = MemorySampler()
        samplers.append(sampler)
        ctx = multiprocessing.get_context(args.start_method)
        if args.executor == "process":
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                              mp_context=ctx)
        elif args.executor == "thread":
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        else:
            executor = "serial"
        t = time.perf_counter()
        try:
            with sampler:
                fitted, cat = fit_patches(start, [exposure], patch_size=args.patch_size,
                                          border=args.border, executor=executor,
                                          kernel_threads=1, progress=args.progress,
                                          background=background)
        finally:
            if not isinstance(executor, str):
                executor.shutdown()
        wall = time.perf_counter() - t
        runs[workers] = {"wall_s": wall, "sources_per_s": args.n_sources / wall,
                         "catalog": cat, "fit_s": float(np.nansum(
                             fitted.fit_info["patches"]["time_s"])),
                         "n_retried_patches": int(fitted.fit_info["patches"]["retried"].sum()),
                         "n_at_bound": int(np.sum(cat["at_bound"]))}
        print(f"  {workers} worker(s): {wall:.1f} s, {args.n_sources / wall:.2f} sources/s")

    base = runs[args.workers[0]]["catalog"]
    key, ekey = f"flux_{BAND}", f"flux_err_{BAND}"
    consistency = 0.0
    for w_ in args.workers[1:]:
        other = runs[w_]["catalog"]
        consistency = max(consistency, float(np.nanmax(np.abs(other[key] - base[key])
                                                       / base[ekey])))
    true_flux = np.array([s.flux[BAND] for s in truth.sources])
    pull = (np.asarray(base[key]) - true_flux) / np.asarray(base[ekey])
    w = make_wcs(args.size)
    tx, ty = w.world_to_pixel_values([s.ra for s in truth.sources],
                                     [s.dec for s in truth.sources])
    fx, fy = w.world_to_pixel_values(np.asarray(base["ra"]), np.asarray(base["dec"]))
    dpos = np.hypot(fx - tx, fy - ty) * SCALE

    picks = isolated(truth, args.size, args.n_isolated, rng)
    t = time.perf_counter()
    iso_flux, iso_err = fit_isolated(start, exposure, picks, background)
    t_iso = time.perf_counter() - t
    pf = np.asarray(base[key])[picks]
    pe = np.asarray(base[ekey])[picks]
    ratio = pf / iso_flux if picks else np.full(1, np.nan)
    diff = (pf - iso_flux) / pe if picks else np.full(1, np.nan)

    def mad(x):
        x = x[np.isfinite(x)]
        return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")

    rss_parent = maxrss_mb(resource.RUSAGE_SELF)
    rss_child = max([maxrss_mb(resource.RUSAGE_CHILDREN),
                     *(smp.peak_worker for smp in samplers)])
    rss_total = max(smp.peak_total for smp in samplers)
    results = {
        "size": args.size, "n_sources": args.n_sources, "patch_size": args.patch_size,
        "border": args.border, "galsim_draw_s": t_draw, "make_patches_s": t_make,
        "runs": {str(k): {kk: v for kk, v in r.items() if kk != "catalog"}
                 for k, r in runs.items()},
        "max_worker_difference_sigma": consistency,
        "maxrss_parent_mb": rss_parent, "maxrss_largest_child_mb": rss_child,
        "peak_rss_parent_plus_workers_mb": rss_total, "background": args.background,
        "n_isolated": len(picks), "isolated_fit_s": t_iso,
        "isolated_median_ratio": float(np.median(ratio)),
        "isolated_median_diff_sigma": float(np.median(diff)),
        "isolated_scatter_diff_sigma": mad(diff),
        "isolated_max_abs_diff_sigma": float(np.max(np.abs(diff))) if len(diff) else np.nan,
        "truth_median_pull": float(np.nanmedian(pull)), "truth_pull_scatter": mad(pull),
        "truth_median_offset_arcsec": float(np.median(dpos)),
        "n_failed": int((~np.asarray(base["fit_ok"])).sum()),
        "n_retried_patches": runs[args.workers[0]]["n_retried_patches"],
        "n_at_bound": runs[args.workers[0]]["n_at_bound"],
    }
    print()
    print(f"{'workers':>8s} {'wall [s]':>9s} {'sources/s':>10s} {'speed-up':>9s}")
    w0 = runs[args.workers[0]]["wall_s"]
    for k, r in runs.items():
        print(f"{k:8d} {r['wall_s']:9.1f} {r['sources_per_s']:10.2f} {w0 / r['wall_s']:9.2f}")
    print(f"GalSim drawing the field (values only, peer): {t_draw:.1f} s "
          f"({args.n_sources / t_draw:.0f} sources/s)")
    print(f"memory peak: parent {rss_parent:.0f} MB (maxrss), largest worker "
          f"{rss_child:.0f} MB, parent + workers together {rss_total:.0f} MB (sampled; "
          f"target < 4096 MB): {'PASS' if max(rss_parent, rss_total) < 4096 else 'MISS'}")
    print(f"1 vs {'/'.join(str(w_) for w_ in args.workers[1:]) or '-'} workers: max |flux "
          f"difference| {consistency:.2g} sigma")
    target = abs(results["isolated_median_diff_sigma"]) < 0.2
    print(f"patched vs isolated single fits ({len(picks)} sources, {t_iso:.1f} s): median "
          f"ratio {results['isolated_median_ratio']:.4f}, median diff "
          f"{results['isolated_median_diff_sigma']:+.3f} sigma, scatter "
          f"{results['isolated_scatter_diff_sigma']:.3f} sigma, max "
          f"{results['isolated_max_abs_diff_sigma']:.2f} sigma: {'PASS' if target else 'MISS'}")
    print(f"patched vs truth (all sources): median pull {results['truth_median_pull']:+.2f}, "
          f"pull scatter {results['truth_pull_scatter']:.2f}, median position offset "
          f"{results['truth_median_offset_arcsec']:.3f} arcsec; failed patches' sources: "
          f"{results['n_failed']}; patches refitted after a shape at a bound: "
          f"{results['n_retried_patches']}; sources left with a parameter at a bound: "
          f"{results['n_at_bound']}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image side [px]")
    parser.add_argument("--n-sources", type=int, default=2000, help="number of galaxies")
    parser.add_argument("--patch-size", type=float, default=40.0, help="patch core [arcsec]")
    parser.add_argument("--border", type=float, default=4.0, help="patch border [arcsec]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--executor", choices=("process", "thread", "serial"),
                        default="process")
    parser.add_argument("--start-method", default="forkserver",
                        help="multiprocessing start method of the process pools")
    parser.add_argument("--n-isolated", type=int, default=20)
    parser.add_argument("--background", choices=("none", "fit"), default="none",
                        help="'none': the known (subtracted) sky, in the patched and the "
                             "isolated fits; 'fit': a constant per cutout, profiled")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
