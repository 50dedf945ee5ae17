"""ExposureWeightedPSF: verification on a drizzled star field, NEXUS comparison, speed.

1. Verification: 9 exposures of a star field at different roll angles and
   pointings, PSFs from the PoppyProvider (F200W), drizzled with the
   ``drizzle`` package (:func:`astromix.mosaic.simulate_drizzled_star_field`);
   for every star, the summed absolute residual (over the flux) of the
   ExposureWeightedPSF, of the best single exposure's PSF, and of the
   "unrotated average" (each exposure's PSF scaled, not rotated), and the
   smoothing sigma fitted to the stars (0 when the model is complete).
2. The PoppyProvider F200W mosaic PSF (4 exposures at two roll angles,
   0.031 -> 0.03 arcsec/px) against the NEXUS empirical F200W PSF (4x
   oversampled, mosaic pixel assumed 0.03 arcsec): FWHM and encircled energy
   (fractions of the flux within 0.6 arcsec), and the Gaussian smoothing that
   matches them best.
3. Speed, with the per-exposure PSFs cached (a field-dependent astigmatism in
   128-px position bins, so that the exposures' PSFs differ): time per source for 9 exposures
   at dim 51 for 100-1600 sources (linearity), against the YOUNG-style peers
   in the same run: (a) every exposure's PSF recomputed per source (poppy at
   the mosaic scale, as YOUNG's script calls stpsf) then rotated with
   scipy.ndimage; (b) the PSFs cached, but resampled, rotated and smoothed
   per source with scipy.ndimage (``affine_transform``, cubic).

Run: ``python benchmarks/mosaic_psf.py [--quick] [--json PATH]``.
"""

import argparse
import json
import math
import sys
import time

import numpy as np

from astromix.datasets import load_jwst_f200w_psf
from astromix.mosaic import (
    ExposureWeightedPSF,
    InputExposure,
    PoppyProvider,
    compare_with_empirical_psf,
    jwst_pc_matrix,
    psf_residual,
    simulate_drizzled_star_field,
    tan_wcs,
)

TARGET_MS = 10.0


def verification(n_exposures=9, n_stars=16, seed=2):
    provider = PoppyProvider("F200W", nlambda=3)
    sim = simulate_drizzled_star_field(provider, n_exposures=n_exposures, n_stars=n_stars,
                                       exposure_shape=(220, 220), rng=seed)
    model = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context)
    x, y = np.asarray(sim.stars["x"]), np.asarray(sim.stars["y"])
    rows = []
    for n in np.flatnonzero(np.asarray(sim.stars["clean"])):
        i, j = int(round(x[n])), int(round(y[n]))
        data = sim.image[j - 12:j + 13, i - 12:i + 13]
        off = (x[n] - i, y[n] - j)
        ew = psf_residual(data, model.image(x[n], y[n], 25, offset=off))
        un = psf_residual(data, model.image(x[n], y[n], 25, offset=off, rotate=False))
        singles = [psf_residual(data, model.image(x[n], y[n], 25, offset=off,
                                                  exposures=[e]))
                   for e in range(n_exposures)]
        best = min(singles, key=lambda r: r["l1"])
        rows.append((ew["l1"], best["l1"], un["l1"], ew["max"], best["max"], un["max"]))
    sigma, info = model.calibrate_smoothing(sim.stars, sim.image)
    nopix = ExposureWeightedPSF(sim.wcs, sim.exposures, provider, context=sim.context,
                                pixfrac=0.0)
    sigma0, _ = nopix.calibrate_smoothing(sim.stars, sim.image)
    return np.array(rows), sigma, sigma0, len(sim.exposures)


def nexus_geometry():
    mw = tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (500, 500), (1001, 1001))
    exps = [InputExposure(f"e{i}", tan_wcs(150.0, 2.0, 0.031, jwst_pc_matrix(r, -0.5, -1),
                                           (1023.5, 1023.5), (2048, 2048)), 400.0,
                          filter="F200W", detector="NRCA1")
            for i, r in enumerate((30.0, 30.0, 110.0, 110.0))]
    return mw, exps


def speed_geometry(n_exposures=9):
    """A mosaic of 9 exposures (3 rolls x 3 dithers) and a catalog over their overlap."""
    mw = tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (1000, 1000), (2001, 2001))
    exps = []
    for e in range(n_exposures):
        roll = 20.0 + 40.0 * (e % 3)
        ra = 150.0 + (e // 3 - 1) * 2.0 / 3600
        exps.append(InputExposure(f"e{e}", tan_wcs(ra, 2.0, 0.031, jwst_pc_matrix(roll, -0.5, -1),
                                                   (1023.5, 1023.5), (2048, 2048)), 300.0 + e,
                                  filter="F200W", detector="NRCA1"))
    return mw, exps


def young_style_recompute(mw, exps, xs, ys, dim, provider):
    """YOUNG-style: every exposure's PSF computed per source at the mosaic scale, rotated."""
    import astropy.units as u
    import poppy
    from scipy import ndimage

    out = []
    for x, y in zip(xs, ys):
        acc, wsum = np.zeros((dim, dim)), 0.0
        ra, dec = mw.pixel_to_world_values(x, y)
        for exp in exps:
            exp.wcs.world_to_pixel_values(ra, dec)        # the detector position
            osys = poppy.OpticalSystem(oversample=2, npix=provider.npix)
            osys.add_pupil(poppy.MultiHexagonAperture(rings=2, flattoflat=1.32 * u.m,
                                                      gap=0.007 * u.m, center=False))
            osys.add_pupil(poppy.SecondaryObscuration(secondary_radius=0.37 * u.m,
                                                      n_supports=3, support_width=0.08 * u.m))
            osys.add_detector(pixelscale=0.03, fov_pixels=dim, oversample=1)
            img = osys.calc_psf(2.0e-6)[0].data
            roll = np.degrees(np.arctan2(exp.wcs.wcs.pc[1, 0], exp.wcs.wcs.pc[0, 0]))
            acc += exp.exptime * ndimage.rotate(img, roll, reshape=False, order=3)
            wsum += exp.exptime
        img = ndimage.gaussian_filter(acc / wsum, 0.8)
        out.append(img / img.sum())
    return out


def scipy_cached(model, xs, ys, dim):
    """The PSFs cached; per source, each resampled into the mosaic with scipy.ndimage."""
    from scipy import ndimage

    mask, det_xy, jac = model.contributors(xs, ys)
    out = []
    for n in range(len(xs)):
        acc, wsum = np.zeros((dim, dim)), 0.0
        for e in np.flatnonzero(mask[n]):
            exp = model.exposures[e]
            img, os_eff, cen = model._prepared_psf(exp, *det_xy[e, n])
            jinv = np.linalg.inv(jac[e, n])
            # output index (row, col) of the mosaic stamp -> input index (row, col)
            m = os_eff * jinv[::-1, ::-1]
            c = (dim - 1) / 2.0
            offset = np.array([cen[1], cen[0]]) - m @ np.array([c, c])
            acc += exp.exptime * ndimage.affine_transform(img, m, offset, output_shape=(dim, dim),
                                                          order=3)
            wsum += exp.exptime
        img = ndimage.gaussian_filter(acc / wsum, 0.5)
        out.append(img / img.sum())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sources")
    parser.add_argument("--json", help="also save the results as JSON")
    args = parser.parse_args(argv)
    results = {}

    print("1. Verification on a drizzled star field (PoppyProvider F200W, 0.031 -> 0.03 "
          "arcsec/px, drizzle square kernel, pixfrac 1)")
    rows, sigma, sigma0, n_exp = verification()
    med = np.median(rows, axis=0)
    print(f"   {n_exp} exposures, {len(rows)} stars; median over stars:")
    print(f"   {'model':<28} {'sum|res|/flux':>14} {'max|res|/peak':>14}")
    for k, name in enumerate(("ExposureWeightedPSF", "best single exposure",
                              "unrotated average")):
        print(f"   {name:<28} {med[k]:14.4f} {med[k + 3]:14.4f}")
    wins = int(np.sum((rows[:, 0] < rows[:, 1]) & (rows[:, 0] < rows[:, 2])))
    print(f"   ExposureWeightedPSF best on {wins}/{len(rows)} stars; fitted smoothing sigma "
          f"{sigma:.3f} mosaic px (without the drizzle drop in the model: {sigma0:.3f}; "
          f"the drop's own sigma is {0.031 / 0.03 / math.sqrt(12):.3f})")
    results["verification"] = {"median_l1": med[:3].tolist(), "median_max": med[3:].tolist(),
                               "wins": wins, "n_stars": len(rows), "sigma": sigma,
                               "sigma_without_drop": sigma0}

    print("\n2. PoppyProvider F200W mosaic PSF vs the NEXUS empirical F200W PSF "
          "(4x oversampled, 0.03 arcsec/px assumed; EE = fraction of the flux within 0.6\")")
    nexus, _ = load_jwst_f200w_psf()
    mw, exps = nexus_geometry()
    cmp_ = compare_with_empirical_psf(ExposureWeightedPSF(mw, exps, PoppyProvider("F200W")),
                                      500, 500, nexus, 4, 0.03)
    heads = ("FWHM [as]", "EE(0.1as)", "EE(0.2as)", "EE(0.3as)")
    print(f"   {'PSF':<34} " + " ".join(f"{h:>9}" for h in heads))
    for name, key in (("NEXUS empirical", "empirical"), ("PoppyProvider mosaic", "model"),
                      (f"PoppyProvider + sigma {cmp_['sigma']:.2f} px", "model_smoothed")):
        m = cmp_[key]
        print(f"   {name:<34} {m['fwhm']:9.4f} {m['ee'][0.1]:9.3f} {m['ee'][0.2]:9.3f} "
              f"{m['ee'][0.3]:9.3f}")
    results["nexus"] = {k: v for k, v in cmp_.items()}

    print("\n3. Speed: 9 exposures, dim 51, per-exposure PSFs cached (PoppyProvider F200W); "
          "best of 3 runs")
    mw, exps = speed_geometry()
    provider = PoppyProvider("F200W", nlambda=3, field_wfe=30.0, position_bin=128)
    model = ExposureWeightedPSF(mw, exps, provider)
    rng = np.random.default_rng(0)
    sizes = (100, 200, 400) if args.quick else (100, 200, 400, 800, 1600)
    xs_all = rng.uniform(900, 1100, max(sizes))
    ys_all = rng.uniform(900, 1100, max(sizes))
    t0 = time.perf_counter()
    n_unique = model.prepare(xs_all, ys_all)
    t_prep = time.perf_counter() - t0
    mask, _, _ = model.contributors(xs_all, ys_all)
    print(f"   {n_unique} unique PSF(s) computed and prepared in {t_prep:.2f} s; "
          f"exposures per source {mask.sum(1).min()}-{mask.sum(1).max()}")
    model.cube(xs_all[:20], ys_all[:20], 51, executor="serial", progress=False)   # warm-up
    per = {}
    for n in sizes:
        dt = math.inf
        for _ in range(3):   # best of 3: the reference machine is shared
            t0 = time.perf_counter()
            model.cube(xs_all[:n], ys_all[:n], 51, executor="serial", progress=False)
            dt = min(dt, time.perf_counter() - t0)
        per[n] = 1e3 * dt / n
        print(f"   {n:5d} sources: {dt:7.3f} s, {per[n]:6.3f} ms per source")
    lin = per[sizes[-1]] / per[sizes[0]]
    ok = per[sizes[-1]] <= TARGET_MS
    print(f"   {'PASS' if ok else 'MISS'}  <= {TARGET_MS} ms per source "
          f"(measured {per[sizes[-1]]:.3f}); linear: ms/source at {sizes[-1]} / at {sizes[0]} "
          f"= {lin:.2f}")
    n_peer = 20
    t0 = time.perf_counter()
    scipy_cached(model, xs_all[:n_peer], ys_all[:n_peer], 51)
    t_sc = 1e3 * (time.perf_counter() - t0) / n_peer
    n_young = 1 if args.quick else 2
    t0 = time.perf_counter()
    young_style_recompute(mw, exps, xs_all[:n_young], ys_all[:n_young], 51, provider)
    t_young = 1e3 * (time.perf_counter() - t0) / n_young
    ours = per[sizes[-1]]
    print(f"   peer (b) PSFs cached, scipy.ndimage resample+rotate per source: {t_sc:8.2f} ms "
          f"per source -> astromix {t_sc / ours:.0f}x faster")
    print(f"   peer (a) YOUNG-style, PSFs recomputed per source (poppy, monochromatic): "
          f"{t_young:8.0f} ms per source -> astromix {t_young / ours:.0f}x faster")
    results["speed"] = {"ms_per_source": per, "linearity": lin, "prepare_s": t_prep,
                        "peer_scipy_ms": t_sc, "peer_young_ms": t_young}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
