#!/usr/bin/env python
"""Is the seeing consistent across a real ground-based field?  Moffat fits of CFHT stars.

Issue 6, item 7.  The image is the CFHT FOCAM I-band image of Abell 370
shipped as :func:`astromix.datasets.cfht_a370` (1909 x 1797 px, 0.2056
arcsec/px, int16 ADU, saturated near 13000 ADU).

Method
------
1. Background: :class:`photutils.background.Background2D` (64 px boxes,
   sigma-clipped medians) subtracted; the sky noise ``std`` from sigma-clipped
   statistics of the result.
2. Detection: :class:`photutils.detection.DAOStarFinder` at 5 std (FWHM guess
   4 px) gives every source; the candidates are those with a peak above
   ``--min-peak`` std, at least 13 px from the edges, whose raw 5 x 5 pixels
   stay below 12000 ADU (unsaturated, with a margin under ``MAXLIN``), and
   with no other detection within 14 px (isolated: the 25 x 25 cut-out holds
   one source).
3. Point sources by size: photutils' Gaussian FWHM (:func:`photutils.psf.fit_fwhm`)
   of every candidate; those within 15% of its sigma-clipped median are kept
   (galaxies are larger; the stellar locus of this image is narrow).  The
   ``--n`` brightest remain.
4. Fits: :class:`astromix.models.moffat.MoffatStar` + ``Const2D`` background
   with :class:`astromix.fitting.MixtureLSQFitter` on a 25 x 25 cut-out,
   weights ``1 / sqrt(std^2 + max(data, 0) / gain)`` (gain 6.6 e-/ADU,
   header ``ESCALE``), start beta 3 and FWHM from the photutils value.
5. Report: median FWHM [arcsec] and beta, the scatter of the FWHM (std and
   1.4826 x MAD) in % of the median, the slope of a linear fit of FWHM
   against x and y [arcsec per 1000 px], the time per star, and the ratio
   of the Moffat FWHM to photutils' Gaussian FWHM on the same stars.

Run ``python benchmarks/moffat_field.py [--n 60]``;
``tests/test_moffat_field.py`` runs it on 20 stars.
"""

import argparse
import math
import time
import warnings

import numpy as np

PIXEL_SCALE = 0.2056   # arcsec/px (the WCS's CD matrix: 0.2058 x 0.2055)
GAIN = 6.6             # e-/ADU (header ESCALE)
SATURATION = 12000.0   # ADU: the raw 5x5 pixels around a star must stay below this
HALF = 12              # the cut-out is (2 HALF + 1)^2 = 25 x 25 px
ISOLATION = 14.0       # px: no other detection this close


def load():
    """(raw image [ADU], background-subtracted image, sky std) of the CFHT A370 image."""
    from astropy.io import fits
    from astropy.stats import sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground

    from astromix.datasets import cfht_a370

    raw = fits.getdata(cfht_a370()).astype(np.float64)
    bkg = Background2D(raw, 64, filter_size=3, bkg_estimator=MedianBackground())
    data = raw - bkg.background
    _, _, std = sigma_clipped_stats(data, sigma=3.0)
    return raw, data, float(std)


def select_stars(raw, data, std, n=20, min_peak=50.0):
    """Bright, unsaturated, isolated point sources: a table with x, y, peak and gauss_fwhm [px]."""
    from astropy.stats import sigma_clip
    from photutils.detection import DAOStarFinder
    from photutils.psf import fit_fwhm

    found = DAOStarFinder(threshold=5.0 * std, fwhm=4.0)(data)
    if "xcentroid" in found.colnames:          # photutils < 3 names
        found.rename_columns(["xcentroid", "ycentroid"], ["x_centroid", "y_centroid"])
    x, y = np.asarray(found["x_centroid"]), np.asarray(found["y_centroid"])
    ny, nx = data.shape
    keep = np.asarray(found["peak"]) > min_peak * std
    keep &= (x > HALF + 1) & (x < nx - HALF - 2) & (y > HALF + 1) & (y < ny - HALF - 2)
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(dist, np.inf)
    keep &= dist.min(axis=1) > ISOLATION
    for i in np.nonzero(keep)[0]:
        xi, yi = int(round(x[i])), int(round(y[i]))
        if raw[yi - 2:yi + 3, xi - 2:xi + 3].max() >= SATURATION:
            keep[i] = False
    cand = found[keep]
    xy = np.column_stack([cand["x_centroid"], cand["y_centroid"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # photutils' fit warnings on odd sources
        gfwhm = np.asarray(fit_fwhm(data, xypos=xy, fwhm=4.0, fit_shape=2 * HALF + 1))
    clipped = sigma_clip(gfwhm, sigma=3.0, masked=True)
    locus = float(np.ma.median(clipped))
    point = np.isfinite(gfwhm) & (np.abs(gfwhm / locus - 1.0) < 0.15)
    cand = cand[point]
    cand["gauss_fwhm"] = gfwhm[point]
    cand.sort("peak", reverse=True)
    return cand[:n] if n else cand


def fit_star(data, std, x0, y0, fwhm0):
    """MoffatStar + Const2D on the 25 x 25 cut-out at (x0, y0): (fitted model, info, seconds)."""
    from astropy.modeling.models import Const2D

    from astromix.fitting import MixtureLSQFitter
    from astromix.models.moffat import MoffatStar

    xc, yc = int(round(x0)), int(round(y0))
    y, x = np.mgrid[yc - HALF:yc + HALF + 1, xc - HALF:xc + HALF + 1]
    z = data[yc - HALF:yc + HALF + 1, xc - HALF:xc + HALF + 1]
    weights = 1.0 / np.sqrt(std ** 2 + np.clip(z, 0.0, None) / GAIN)
    t0 = time.perf_counter()
    edge = np.ones_like(z, bool)
    edge[2:-2, 2:-2] = False
    bg0 = float(np.median(z[edge]))
    model = MoffatStar(max(float((z - bg0).sum()), 1.0), x0, y0, fwhm0, 3.0) + Const2D(bg0)
    fitter = MixtureLSQFitter()
    fit = fitter(model, x.astype(float), y.astype(float), z, weights=weights)
    return fit, fit.fit_info, time.perf_counter() - t0


def _mad_std(values):
    values = np.asarray(values, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def measure(n=20, min_peak=50.0, verbose=False):
    """Select ``n`` stars, fit them, and return a dict of the per-star arrays and the summary."""
    t0 = time.perf_counter()
    raw, data, std = load()
    stars = select_stars(raw, data, std, n=n, min_peak=min_peak)
    t_select = time.perf_counter() - t0
    rows = []
    for s in stars:
        fit, info, sec = fit_star(data, std, float(s["x_centroid"]), float(s["y_centroid"]),
                                  float(s["gauss_fwhm"]))
        star = fit[0]
        rows.append({"x": float(star.x_0.value), "y": float(star.y_0.value),
                     "fwhm": float(star.fwhm.value) * PIXEL_SCALE,
                     "beta": float(star.beta.value), "flux": float(star.flux.value),
                     "bg": float(fit[1].amplitude.value),
                     "gauss_fwhm": float(s["gauss_fwhm"]) * PIXEL_SCALE,
                     "peak": float(s["peak"]), "success": bool(info["success"]),
                     "moved": math.hypot(star.x_0.value - s["x_centroid"],
                                         star.y_0.value - s["y_centroid"]),
                     "nfev": int(info.get("nfev", -1)), "seconds": sec})
        if verbose:
            r = rows[-1]
            print(f"  ({r['x']:7.1f}, {r['y']:7.1f})  peak {r['peak']:7.0f}  FWHM "
                  f"{r['fwhm']:.3f}\"  beta {r['beta']:5.2f}  gauss {r['gauss_fwhm']:.3f}\"  "
                  f"{'ok' if r['success'] else 'FAILED'}  {1e3 * sec:.0f} ms")
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}
    out = {"n": len(rows), "std": std, "select_seconds": t_select, **cols}
    if rows:
        fwhm = cols["fwhm"]
        med = float(np.median(fwhm))
        design = np.column_stack([np.ones(len(rows)), cols["x"] / 1000.0, cols["y"] / 1000.0])
        coef = np.linalg.lstsq(design, fwhm, rcond=None)[0]
        out.update({
            "median_fwhm": med, "median_beta": float(np.median(cols["beta"])),
            "std_fwhm": float(np.std(fwhm, ddof=1)) if len(rows) > 1 else 0.0,
            "mad_fwhm": _mad_std(fwhm),
            "slope_x": float(coef[1]), "slope_y": float(coef[2]),
            "median_gauss_fwhm": float(np.median(cols["gauss_fwhm"])),
            "seconds_per_star": float(np.mean(cols["seconds"])),
        })
        out["ratio_to_gauss"] = med / out["median_gauss_fwhm"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=60, help="stars to fit (0: all; default 60)")
    parser.add_argument("--min-peak", type=float, default=50.0,
                        help="minimum peak in units of the sky std (default 50)")
    parser.add_argument("--quiet", action="store_true", help="no per-star lines")
    args = parser.parse_args(argv)
    r = measure(args.n, args.min_peak, verbose=not args.quiet)
    if not r["n"]:
        print("no star selected")
        return 1
    med = r["median_fwhm"]
    print(f"CFHT FOCAM I, Abell 370: {r['n']} stars (sky std {r['std']:.1f} ADU), "
          f"{int(np.sum(r['success']))} fits converged; selection {r['select_seconds']:.1f} s")
    print(f"  Moffat FWHM median {med:.3f}\" ({med / PIXEL_SCALE:.2f} px), beta median "
          f"{r['median_beta']:.2f} (range {r['beta'].min():.2f}-{r['beta'].max():.2f})")
    print(f"  FWHM scatter: std {r['std_fwhm']:.3f}\" ({100 * r['std_fwhm'] / med:.1f}%), "
          f"robust (1.4826 MAD) {r['mad_fwhm']:.3f}\" ({100 * r['mad_fwhm'] / med:.1f}%); "
          f"range {r['fwhm'].min():.3f}-{r['fwhm'].max():.3f}\"")
    print(f"  trend: dFWHM/dx {r['slope_x']:+.4f}\" and dFWHM/dy {r['slope_y']:+.4f}\" per "
          f"1000 px (over the {1909}x{1797} px field)")
    print(f"  time per star {1e3 * r['seconds_per_star']:.1f} ms (median "
          f"{1e3 * np.median(r['seconds']):.1f} ms, {np.median(r['nfev']):.0f} evaluations)")
    print(f"  photutils fit_fwhm (Gaussian) median {r['median_gauss_fwhm']:.3f}\": Moffat / "
          f"Gaussian = {r['ratio_to_gauss']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
