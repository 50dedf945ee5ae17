#!/usr/bin/env python
"""Scene chi2 + gradient throughput, against forcepho's CPU kernel and GalSim, and the demo time.

Cases
-----
* **kernel**: 10 sources (8 Sersic galaxies, n = 1-4, r_eff = 0.15-0.45 arcsec,
  and 2 stars) in 9 exposures of 128 x 128 px at 0.06 arcsec/px, each exposure
  with its own WCS (dithered, rotated by up to 40 degrees) and its own PSF (a
  3-Gaussian mixture).  One call of :class:`astromix.models.scene.SceneObjective`
  gives chi2 summed over the exposures and its gradient with respect to all 70
  source parameters (the forcepho kernel's job).  Timed in float64 and float32
  (best of several repeats after a warm-up, so Numba compilation is excluded).

  Counting Gaussian-pixel evaluations:

  - *evaluated*: sum over components of the pixels inside their culling ellipse
    (the work astromix's kernel does; each is a value and a gradient
    accumulation);
  - *forcepho-equivalent*: what forcepho's kernel evaluates for the same
    scene, every pixel of the patch times every Gaussian of it, with its
    9-radius Sersic mixtures (9 x 3 = 27 Gaussians per galaxy, 3 per star).
    REFERENCE.md measured its CPU kernel at 55-75 million value+gradient
    evaluations per second on this 2-core machine, so its time for one call
    would be (forcepho-equivalent evaluations) / 65e6 s, and the speed-up is
    that time over astromix's measured time.  forcepho itself is not run:
    it has no license and its CPU path is a research build.

  Peer measured in the same run: GalSim draws the same 10 sources into the 9
  exposures (values only, no gradient; ``drawImage(method='auto')`` of each
  PSF-convolved source into its exposure).

* **demo**: the time of ``astromix demo``'s steps on the shipped DECam data
  (reading the 8 exposures and fitting their PSFEx PSFs; detecting; fitting the
  two sources with both neighbour models).

Targets (PASS / MISS): chi2 + gradient at >= 25x forcepho's CPU kernel, read two
ways: for the same scene (the forcepho-equivalent rate >= 25 x 55e6 = 1.4e9/s
and 25 x 75e6 = 1.9e9/s), and per evaluation actually made (astromix's culled
evaluations per second against forcepho's 55-75e6/s); the demo < 60 s.

Usage::

    python benchmarks/scene.py [--quick] [--repeats N] [--json PATH] [--no-demo]
"""

import argparse
import json
import math
import time

import numpy as np
from astropy.wcs import WCS

from astromix import Exposure, GaussianMixture
from astromix.backends import _common, get_backend
from astromix.models.scene import SceneModel, SceneObjective, SersicSource, StarSource

RA, DEC = 53.1, -27.8
FORCEPHO_RATE = (55e6, 75e6)
FORCEPHO_RADII = 9
N_EXP, SIZE, SCALE = 9, 128, 0.06


def make_scene(rng):
    sources = []
    for i in range(10):
        dx, dy = rng.uniform(-2.2, 2.2, 2) / 3600
        if i < 8:
            sources.append(SersicSource(RA + dx / math.cos(math.radians(DEC)), DEC + dy,
                                        {"F200W": rng.uniform(50, 500)},
                                        r_eff=rng.uniform(0.15, 0.45), n=rng.uniform(1, 4),
                                        ellip=rng.uniform(0, 0.5), theta=rng.uniform(0, np.pi)))
        else:
            sources.append(StarSource(RA + dx / math.cos(math.radians(DEC)), DEC + dy,
                                      {"F200W": rng.uniform(50, 300)}))
    return SceneModel(sources)


def make_exposures(scene, rng):
    out = []
    for k in range(N_EXP):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [RA, DEC]
        w.wcs.crpix = [SIZE / 2 + rng.uniform(-3, 3), SIZE / 2 + rng.uniform(-3, 3)]
        rot = math.radians(rng.uniform(-40, 40))
        c, s = math.cos(rot), math.sin(rot)
        w.wcs.cd = np.array([[-c, s], [s, c]]) * SCALE / 3600
        sig = rng.uniform(0.9, 1.3)
        psf = GaussianMixture([0.6, 0.3, 0.1], np.zeros((3, 2)),
                              [np.eye(2) * sig ** 2, np.eye(2) * (2 * sig) ** 2,
                               np.eye(2) * (4 * sig) ** 2])
        e = Exposure(np.zeros((SIZE, SIZE)), uncertainty=np.ones((SIZE, SIZE)), wcs=w, psf=psf,
                     band="F200W", name=f"dither{k}")
        img = scene.render(e) + rng.normal(0, 1, (SIZE, SIZE))
        out.append(Exposure(img, uncertainty=np.ones((SIZE, SIZE)), wcs=w, psf=psf,
                            band="F200W", name=f"dither{k}"))
    return out


def evaluated_pairs(scene, objective):
    """Pixels inside the culling ellipses, summed over components and exposures."""
    n2 = scene.settings.n_sigma ** 2
    total = 0
    p = scene.parameters
    terms = scene._source_terms(p)
    for pls, data in zip(objective.placements, objective.data):
        amp, mean, cov = scene._component_arrays(p, pls, terms)
        table = _common.prepare(amp, mean, cov, scene.settings)
        ny, nx = data.shape
        yy, xx = np.mgrid[:ny, :nx]
        for t in table:
            j0, j1, i0, i1 = _common.box(t, (ny, nx))
            if j1 < j0 or i1 < i0:
                continue
            dx = xx[j0:j1 + 1, i0:i1 + 1] - t[_common.MX]
            dy = yy[j0:j1 + 1, i0:i1 + 1] - t[_common.MY]
            q = t[_common.FXX] * dx * dx + 2 * t[_common.FXY] * dx * dy + t[_common.FYY] * dy * dy
            total += int(np.count_nonzero(q <= n2))
    return total


def time_call(fun, repeats):
    fun()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fun()
        best = min(best, time.perf_counter() - t0)
    return best


def galsim_render_time(scene, exposures, repeats):
    import galsim

    from astromix.models.scene import local_affine

    def draw():
        for e in exposures:
            img = galsim.ImageD(SIZE, SIZE, scale=1.0)
            mix = e.psf_at(0, 0).mixture
            psf = galsim.Add([galsim.Gaussian(sigma=math.sqrt(c[0, 0]), flux=a)
                              for a, c in zip(mix.amp, mix.cov)])
            for src in scene.sources:
                pix, jac = local_affine(e.wcs, src.ra, src.dec)
                flux = src.flux["F200W"]
                if isinstance(src, SersicSource):
                    q = 1 - src.ellip
                    gal = galsim.Sersic(n=src.n, half_light_radius=src.r_eff * math.sqrt(q))
                    gal = gal.shear(q=q, beta=src.theta * galsim.radians)
                    prof = gal.transform(*jac.ravel()).withFlux(flux)
                    prof = galsim.Convolve(prof, psf)
                else:
                    prof = psf.withFlux(flux)
                prof.drawImage(img, method="auto", add_to_image=True,
                               offset=(pix[0] - (SIZE / 2 - 0.5), pix[1] - (SIZE / 2 - 0.5)))

    return time_call(draw, max(1, repeats // 3))


def run_demo():
    from astromix.cli.demo import (
        _psf_size,
        detect_catalog,
        fit_with_model_choice,
        load_decam_exposures,
    )

    t0 = time.perf_counter()
    exposures = load_decam_exposures(progress=False)
    t1 = time.perf_counter()
    z = [e for e in exposures if e.band == "z"]
    catalog = detect_catalog(min(z, key=_psf_size))[:2]
    fitted, _, _ = fit_with_model_choice(catalog, exposures,
                                         [e.meta["sky"] for e in exposures], progress=False)
    t2 = time.perf_counter()
    return {"read_and_psf_s": t1 - t0, "detect_and_fit_s": t2 - t1, "total_s": t2 - t0,
            "chi2_dof": fitted.fit_info["chi2"] / fitted.fit_info["dof"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-demo", action="store_true", help="skip the DECam demo timing")
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 20)
    rng = np.random.default_rng(42)
    scene = make_scene(rng)
    exposures = make_exposures(scene, rng)
    bk = get_backend()
    n_gal = sum(k == "sersic" for k in scene.source_kinds)
    print(f"backend {bk.name}; {scene.n_sources} sources ({n_gal} Sersic) in {N_EXP} "
          f"exposures of {SIZE}x{SIZE} px; {scene.parameters.size} parameters")
    n_pix = N_EXP * SIZE * SIZE
    n_star = scene.n_sources - n_gal
    forcepho_gauss = n_gal * FORCEPHO_RADII * 3 + n_star * 3
    forcepho_evals = n_pix * forcepho_gauss
    results = {"backend": bk.name, "pixels": n_pix, "forcepho_equivalent_evals": forcepho_evals}
    rows = []
    for dtype in (np.float64, np.float32):
        obj = SceneObjective(scene, exposures, dtype=dtype)
        p = scene.parameters.copy()
        t = time_call(lambda obj=obj, p=p: obj(p, gradient=True), repeats)
        t_val = time_call(lambda obj=obj, p=p: obj(p, gradient=False), repeats)
        evaluated = evaluated_pairs(scene, obj)
        forcepho_time = [forcepho_evals / r for r in FORCEPHO_RATE]
        speedup = [ft / t for ft in forcepho_time]
        name = np.dtype(dtype).name
        rows.append((name, t, t_val, evaluated / t, forcepho_evals / t, speedup))
        results[name] = {"chi2_grad_s": t, "chi2_s": t_val, "evaluated_pairs": evaluated,
                         "evaluated_per_s": evaluated / t,
                         "forcepho_equivalent_per_s": forcepho_evals / t,
                         "speedup_vs_forcepho": speedup}
    t_gs = galsim_render_time(scene, exposures, repeats)
    results["galsim_render_s"] = t_gs
    print(f"forcepho-equivalent work per call: {forcepho_evals:.3g} pixel x Gaussian "
          f"evaluations ({forcepho_gauss} Gaussians x {n_pix} px); forcepho's CPU kernel at "
          f"55-75e6/s would take {forcepho_evals / 75e6:.2f}-{forcepho_evals / 55e6:.2f} s")
    print(f"{'dtype':8s} {'chi2+grad':>10s} {'chi2':>9s} {'evaluated/s':>12s} "
          f"{'fp-equiv/s':>11s} {'x forcepho':>12s} {'x GalSim (value)':>17s}  "
          "target >= 25x: same scene / per evaluation")
    for name, t, t_val, ev, eq, sp in rows:
        status = "PASS" if min(sp) >= 25 else "MISS"
        per_eval = [ev / r for r in FORCEPHO_RATE]
        status_eval = "PASS" if min(per_eval) >= 25 else "MISS"
        print(f"{name:8s} {t * 1e3:8.2f}ms {t_val * 1e3:7.2f}ms {ev:12.3g} {eq:11.3g} "
              f"{min(sp):5.1f}-{max(sp):5.1f} {t_gs / t_val:17.1f}  {status} / {status_eval} "
              f"({min(per_eval):.1f}-{max(per_eval):.1f}x per evaluation)")
    print(f"GalSim, values only (draw the 10 sources into 9 exposures): {t_gs * 1e3:.1f} ms")
    if not args.no_demo:
        demo = run_demo()
        results["demo"] = demo
        status = "PASS" if demo["total_s"] < 60 else "MISS"
        print(f"DECam demo: {demo['read_and_psf_s']:.1f} s reading + PSF mixtures, "
              f"{demo['detect_and_fit_s']:.1f} s detection + 2 fits, {demo['total_s']:.1f} s "
              f"in all (target < 60 s: {status}); chi2/dof = {demo['chi2_dof']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return results


if __name__ == "__main__":
    main()
