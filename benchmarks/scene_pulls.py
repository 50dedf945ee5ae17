#!/usr/bin/env python
"""Are the errors of ``fit_scene`` right?  Pulls on GalSim-simulated exposures.

The problem
-----------
One Sersic galaxy (n = 1.5, r_eff = 0.8", ellip = 0.3, theta = 0.6 rad east of
north) and a star 1.7" from it, seen in four 48x48 exposures in two bands
(g, r), each with its own WCS and PSF:

========  ====  ==========  ========  ======  ==========  =================
exposure  band  scale ["]   rotation  parity  distortion  PSF sigmas [px]
========  ====  ==========  ========  ======  ==========  =================
g1        g     0.20        0 deg     normal  TAN-SIP     1.0, 2.4
g2        g     0.26        35 deg    flipped TPV         1.3, 2.9
r1        r     0.18        -70 deg   normal  TPV         1.1, 2.6
r2        r     0.22        120 deg   flipped TAN-SIP     0.9, 2.2
========  ====  ==========  ========  ======  ==========  =================

Each PSF is two elliptical Gaussians (different per exposure); the exposures
also have different zero points, so that the scene's catalog fluxes (zero
point 25) become different data units in each.  The distortions are strong for
such small images (the local Jacobian changes by 2-4% across an image), so
the WCS map of each source must come from the full WCS at its position.

The truth images are drawn by GalSim, not by astromix: the exact Sersic
profile (``galsim.Sersic``, with tight ``GSParams``) defined on the sky in
GalSim's (west, north) frame, mapped to each exposure's pixels by GalSim's own
``GSFitsWCS`` (its local Jacobian at the source, as GalSim always does for a
non-uniform WCS), convolved with the PSF Gaussians and drawn with
``method="auto"`` (integrated over the pixels).  Sources are placed at the
pixel positions GalSim's WCS gives, so the SIP and TPV conventions of astropy
(used by astromix) are tested against an independent implementation.

Gaussian noise of known sigma is added (per-exposure galaxy S/N ``--snr``,
default 50, i.e. about 100 over the four exposures; the matched-filter
S/N ``sqrt(sum(image**2)) / sigma``), and for each of ``--n`` realisations (fixed
seeds) ``fit_scene`` is run from a start perturbed at random (fluxes +-20%,
positions +-0.15", r_eff +-20%, n +-0.3, ellip +-0.1, theta +-0.3 rad), with a
fitted background per exposure.

Pulls
-----
For every free parameter ``pull = (fit - truth) / err`` with ``err`` from the
inverse Hessian (``fit_info["param_std"]``; theta differences are wrapped into
[-pi/2, pi/2)).  With honest errors and unbiased estimates the pulls have mean
0 and standard deviation 1.  Targets: ``|mean| < 0.1`` and ``0.8 < std < 1.2``.
With N realisations the sample mean itself scatters by ``1/sqrt(N)`` and the
sample standard deviation by about ``1/sqrt(2N)``, so a parameter PASSes when
``|mean| < 0.1 + 3/sqrt(N)`` and ``0.8 - 3/sqrt(2N) < std < 1.2 + 3/sqrt(2N)``;
the table also shows whether the strict targets are met.

Model error
-----------
astromix's Sersic profile is a 20-Gaussian approximation.  The benchmark
measures its effect directly: the maximum of ``|astromix - GalSim|`` at the
truth in units of the noise sigma, and the fit of the noiseless GalSim images
(started at the truth), whose offsets in units of the errors are the bias the
model error alone would cause.  At the default S/N they are a few thousandths
of a sigma (the mixture matches GalSim to ~1e-4 of the peak), far below the
statistical resolution of the pull means, so the S/N could be raised a lot
before the model error showed.

Noise bias
----------
Maximum-likelihood estimates of parameters on which the image depends
nonlinearly are biased by O(1/S/N) of their error: ellipticity most of all
(a known effect of shape measurement).  On the reference runs (N = 300-400)
the mean pull of ``ellip_0`` was +0.18 +- 0.06 at per-exposure S/N 25, +0.10
+- 0.05 and +0.17 +- 0.08 at 50, and -0.01 +- 0.06 at 100, while the other
parameters stayed within about 0.1.  The errors themselves (the pull
standard deviations) were 0.9-1.1 throughout.

Usage::

    python benchmarks/scene_pulls.py [--n N] [--snr SNR] [--seed SEED] [--json PATH]

One fit takes ~0.4 s on a laptop-class CPU (two Numba threads): the default
200 realisations take about 1.5 minutes.  The exit status is 1 when a
parameter MISSes.
"""

import argparse
import json
import math
import platform
import sys
import time

import galsim
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

import astromix
from astromix import GaussianMixture
from astromix.backends import get_backend
from astromix.data import Exposure
from astromix.fitting import fit_scene
from astromix.models.scene import SceneModel, SersicSource, StarSource

RA0, DEC0 = 150.1, 2.2
NPIX = 48
ZEROPOINT = 25.0
SEED = 20250301

#: The true sources (catalog flux units, zero point 25).
GALAXY = {"ra": RA0 + 0.20 / 3600 / math.cos(math.radians(DEC0)), "dec": DEC0 - 0.15 / 3600,
          "flux": {"g": 1000.0, "r": 1600.0}, "r_eff": 0.8, "n": 1.5, "ellip": 0.3,
          "theta": 0.6}
STAR = {"ra": GALAXY["ra"] - 1.2 / 3600 / math.cos(math.radians(DEC0)),
        "dec": GALAXY["dec"] + 1.2 / 3600, "flux": {"g": 250.0, "r": 300.0}}

#: The exposures: WCS (scale ["/px], rotation [deg], parity, distortion, offset of the
#: reference pixel from the image centre [px]), PSF ((amplitude, sigma [px], g1, g2) per
#: Gaussian) and zero point.
EXPOSURES = (
    {"name": "g1", "band": "g", "scale": 0.20, "rot": 0.0, "flip": False, "dist": "sip",
     "crpix_off": (3.3, -2.6), "psf": ((0.75, 1.0, 0.05, 0.02), (0.25, 2.4, -0.03, 0.04)),
     "zp": 25.0},
    {"name": "g2", "band": "g", "scale": 0.26, "rot": 35.0, "flip": True, "dist": "tpv",
     "crpix_off": (-4.1, 1.7), "psf": ((0.70, 1.3, -0.04, 0.06), (0.30, 2.9, 0.02, -0.02)),
     "zp": 25.4},
    {"name": "r1", "band": "r", "scale": 0.18, "rot": -70.0, "flip": False, "dist": "tpv",
     "crpix_off": (2.2, 5.1), "psf": ((0.80, 1.1, 0.00, -0.05), (0.20, 2.6, 0.05, 0.00)),
     "zp": 24.8},
    {"name": "r2", "band": "r", "scale": 0.22, "rot": 120.0, "flip": True, "dist": "sip",
     "crpix_off": (-1.4, -3.9), "psf": ((0.65, 0.9, 0.03, 0.03), (0.35, 2.2, -0.04, -0.05)),
     "zp": 25.2},
)

#: Accurate GalSim drawing (FFT folding and k-space truncation well below 1e-4).
GSPARAMS = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5,
                           kvalue_accuracy=1e-7, xvalue_accuracy=1e-7)


# -- simulation ---------------------------------------------------------------------
def make_header(spec, npix):
    """A FITS header with the celestial WCS of one exposure (TAN-SIP or TPV)."""
    c, s = math.cos(math.radians(spec["rot"])), math.sin(math.radians(spec["rot"]))
    # rotation 0, normal parity: +x towards west (RA decreasing), +y north
    cd = spec["scale"] / 3600.0 * np.array([[-c, s], [s, c]])
    if spec["flip"]:
        cd[:, 0] *= -1.0
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, npix, npix
    h["CRVAL1"], h["CRVAL2"] = RA0, DEC0
    h["CRPIX1"] = (npix + 1) / 2 + spec["crpix_off"][0]
    h["CRPIX2"] = (npix + 1) / 2 + spec["crpix_off"][1]
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = cd.ravel()
    if spec["dist"] == "sip":
        # pixel-plane polynomial: dx = A(u, v), u, v from CRPIX [px]
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
        h["A_ORDER"], h["B_ORDER"] = 2, 2
        h["A_2_0"], h["A_1_1"], h["A_0_2"] = 4e-4, -3e-4, 2e-4
        h["B_2_0"], h["B_1_1"], h["B_0_2"] = -2e-4, 3.5e-4, 5e-4
    else:
        # intermediate-world polynomial: xi = x + PV1_4 x^2 + ..., x, y [deg]
        h["CTYPE1"], h["CTYPE2"] = "RA---TPV", "DEC--TPV"
        for ax in (1, 2):
            h[f"PV{ax}_0"], h[f"PV{ax}_1"], h[f"PV{ax}_2"] = 0.0, 1.0, 0.0
        h["PV1_4"], h["PV1_5"], h["PV1_6"] = 4.0, -3.0, 2.5
        h["PV2_4"], h["PV2_5"], h["PV2_6"] = -2.0, 3.5, 4.5
    return h


def psf_models(spec):
    """The PSF of an exposure as a GalSim profile and as an astromix GaussianMixture."""
    profiles, amp, cov = [], [], []
    for a, sigma, g1, g2 in spec["psf"]:
        shear = galsim.Shear(g1=g1, g2=g2)
        profiles.append(galsim.Gaussian(sigma=sigma, flux=a, gsparams=GSPARAMS).shear(shear))
        m = shear.getMatrix()
        amp.append(a)
        cov.append(sigma * sigma * m @ m.T)
    return galsim.Add(profiles), GaussianMixture(amp, np.zeros((len(amp), 2)), cov)


def galsim_image(spec, header, sources, npix, flux_scale):
    """The noiseless image of ``sources`` in one exposure, drawn by GalSim.

    Each source is defined on the sky in GalSim's local (u = west, v = north)
    frame [arcsec], mapped to pixels with the local Jacobian of GalSim's own
    ``GSFitsWCS`` at its position, convolved with the PSF (pixel units) and drawn
    with ``method="auto"`` centred on its pixel position from that WCS.
    """
    wcs = galsim.GSFitsWCS(header=galsim.FitsHeader(header))
    psf, _ = psf_models(spec)
    image = galsim.ImageD(npix, npix)                     # bounds 1..npix (FITS)
    for src in sources:
        coord = galsim.CelestialCoord(src["ra"] * galsim.degrees, src["dec"] * galsim.degrees)
        pos = wcs.toImage(coord)
        flux = src["flux"][spec["band"]] * flux_scale
        if "r_eff" in src:
            q = 1.0 - src["ellip"]
            # r_eff is along the major axis; GalSim's half-light radius is circularised.
            # theta is east of north: the major axis points to (u, v) = (-sin, cos),
            # at angle theta + 90 deg from +u.
            prof = galsim.Sersic(src["n"], half_light_radius=src["r_eff"] * math.sqrt(q),
                                 gsparams=GSPARAMS)
            prof = prof.shear(q=q, beta=(src["theta"] + math.pi / 2) * galsim.radians)
        else:
            prof = galsim.DeltaFunction(gsparams=GSPARAMS)
        local = wcs.local(world_pos=coord)
        prof = local.toImage(prof).withFlux(flux)
        galsim.Convolve(prof, psf, gsparams=GSPARAMS).drawImage(
            image, scale=1.0, method="auto", center=pos, add_to_image=True)
    return image.array.copy()


def simulate(*, snr=50.0, npix=NPIX, specs=EXPOSURES, galaxy=GALAXY, star=STAR):
    """Truth images and everything else the exposures need except the noise.

    Returns a list of dicts: ``spec``, ``wcs`` (astropy), ``psf`` (GaussianMixture),
    ``truth`` (noiseless image, data units), ``sigma`` (noise per pixel, chosen so
    that the galaxy alone has matched-filter S/N ``snr``), ``zp``.
    """
    out = []
    for spec in specs:
        header = make_header(spec, npix)
        scale = 10.0 ** (0.4 * (spec["zp"] - ZEROPOINT))
        gal = galsim_image(spec, header, [galaxy], npix, scale)
        truth = gal + (galsim_image(spec, header, [star], npix, scale) if star else 0.0)
        sigma = float(np.sqrt(np.sum(gal ** 2))) / snr
        out.append({"spec": spec, "wcs": WCS(header), "psf": psf_models(spec)[1],
                    "truth": truth, "sigma": sigma, "zp": spec["zp"]})
    return out


def exposures(sims, rng=None):
    """astromix Exposures of the simulations; with noise drawn from ``rng`` (None: none)."""
    out = []
    for s in sims:
        data = s["truth"].copy()
        if rng is not None:
            data += rng.normal(0.0, s["sigma"], data.shape)
        out.append(Exposure(data, uncertainty=np.full(data.shape, s["sigma"]), wcs=s["wcs"],
                            psf=s["psf"], band=s["spec"]["band"], zeropoint=s["zp"],
                            name=s["spec"]["name"]))
    return out


def truth_scene(galaxy=GALAXY, star=STAR):
    """The true scene as a SceneModel (catalog zero point 25)."""
    g = galaxy
    sources = [SersicSource(g["ra"], g["dec"], dict(g["flux"]), r_eff=g["r_eff"], n=g["n"],
                            ellip=g["ellip"], theta=g["theta"], name="galaxy")]
    if star is not None:
        sources.append(StarSource(star["ra"], star["dec"], dict(star["flux"]), name="star"))
    return SceneModel(sources, zeropoint=ZEROPOINT)


def perturbed_start(truth, rng):
    """A copy of ``truth`` moved at random: fluxes +-20%, positions +-0.15", shapes."""
    start = truth.copy()
    cosd = math.cos(math.radians(DEC0))
    for name in start.param_names:
        param = getattr(start, name)
        v = float(param.value)
        base = name.rsplit("_", 1)[0]
        if base.startswith("flux"):
            v *= rng.uniform(0.8, 1.2)
        elif base == "ra":
            v += rng.uniform(-0.15, 0.15) / 3600 / cosd
        elif base == "dec":
            v += rng.uniform(-0.15, 0.15) / 3600
        elif base == "r_eff":
            v *= rng.uniform(0.8, 1.2)
        elif base == "n":
            v += rng.uniform(-0.3, 0.3)
        elif base == "ellip":
            v += rng.uniform(-0.1, 0.1)
        elif base == "theta":
            v += rng.uniform(-0.3, 0.3)
        param.value = v
    return start


def pulls_of(fitted, truth):
    """``{name: (fit - truth) / err}`` for every free parameter of a fit."""
    std = fitted.fit_info["param_std"]
    out = {}
    for name in fitted.fit_info["free_parameters"]:
        d = float(getattr(fitted, name).value) - float(getattr(truth, name).value)
        if name.startswith("theta"):
            d = (d + math.pi / 2) % math.pi - math.pi / 2
        out[name] = d / float(std[name])
    return out


def run(n, *, snr=50.0, seed=SEED, verbose=True):
    """Simulate once, fit ``n`` noise realisations; the results as a dict."""
    t0 = time.perf_counter()
    sims = simulate(snr=snr)
    t_sim = time.perf_counter() - t0
    truth = truth_scene()
    names = None

    # model error: astromix at the truth against the GalSim images, in noise sigmas
    noiseless = exposures(sims)
    model_err = [float(np.abs(truth.render(e) - s["truth"]).max() / s["sigma"])
                 for e, s in zip(noiseless, sims)]
    peak_err = [float(np.abs(truth.render(e) - s["truth"]).max() / s["truth"].max())
                for e, s in zip(noiseless, sims)]
    t0 = time.perf_counter()
    fit0, _ = fit_scene(truth, noiseless, progress=False)           # warm-up (JIT) as well
    bias = pulls_of(fit0, truth)
    t_first = time.perf_counter() - t0
    if verbose:
        print(f"simulated {len(sims)} exposures of {NPIX}x{NPIX} px with GalSim in "
              f"{t_sim:.1f} s; noise sigma per exposure: "
              + ", ".join(f"{s['sigma']:.3g}" for s in sims))
        print("model error max|astromix - GalSim| at the truth: "
              + ", ".join(f"{a:.2g} sigma ({b:.1e} of the peak)"
                          for a, b in zip(model_err, peak_err)))
        print(f"noiseless fit (model-error bias), first fit {t_first:.1f} s incl. JIT:")
        print("  " + ", ".join(f"{k} {v:+.3f}" for k, v in bias.items()))

    rows, chi2_dof, times, failures = [], [], [], 0
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        exps = exposures(sims, rng)
        start = perturbed_start(truth, rng)
        t0 = time.perf_counter()
        try:
            fitted, _ = fit_scene(start, exps, progress=False)
        except Exception as exc:                                   # noqa: BLE001
            failures += 1
            print(f"  realisation {i}: fit failed: {exc}", file=sys.stderr)
            continue
        times.append(time.perf_counter() - t0)
        p = pulls_of(fitted, truth)
        names = names or list(p)
        rows.append([p[k] for k in names])
        info = fitted.fit_info
        chi2_dof.append(info["chi2"] / info["dof"])
        if verbose and (i + 1) % max(1, n // 10) == 0:
            print(f"  {i + 1}/{n} fits, {np.mean(times):.2f} s per fit")
    pulls = np.array(rows)
    n_ok = len(rows)
    slack_mean = 3.0 / math.sqrt(n_ok)
    slack_std = 3.0 / math.sqrt(2 * n_ok)
    params = {}
    for j, name in enumerate(names):
        x = pulls[:, j]
        mean, std = float(x.mean()), float(x.std(ddof=1))
        params[name] = {
            "mean": mean, "std": std, "sem": float(std / math.sqrt(n_ok)),
            "median": float(np.median(x)), "max_abs": float(np.abs(x).max()),
            "model_bias": bias[name],
            "strict": bool(abs(mean) < 0.1 and 0.8 < std < 1.2),
            "pass": bool(abs(mean) < 0.1 + slack_mean
                         and 0.8 - slack_std < std < 1.2 + slack_std),
        }
    return {
        "n_requested": n, "n_fits": n_ok, "failures": failures, "snr_per_exposure": snr,
        "seed": seed, "npix": NPIX, "exposures": [s["spec"]["name"] for s in sims],
        "noise_sigma": [s["sigma"] for s in sims], "model_error_sigma": model_err,
        "model_error_peak": peak_err, "chi2_dof_mean": float(np.mean(chi2_dof)),
        "chi2_dof_std": float(np.std(chi2_dof)),
        "time_simulate_s": t_sim, "time_first_fit_s": t_first,
        "time_per_fit_s": float(np.mean(times)), "time_total_fits_s": float(np.sum(times)),
        "slack_mean": slack_mean, "slack_std": slack_std, "parameters": params,
        "pulls": {name: pulls[:, j].tolist() for j, name in enumerate(names)},
    }


def print_table(res):
    n = res["n_fits"]
    print(f"\nPulls (fit - truth) / err over N = {n} realisations "
          f"(per-exposure galaxy S/N {res['snr_per_exposure']:g}; {res['failures']} failed)")
    print(f"PASS: |mean| < 0.1 + 3/sqrt(N) = {0.1 + res['slack_mean']:.3f} and "
          f"{0.8 - res['slack_std']:.3f} < std < {1.2 + res['slack_std']:.3f}; "
          "strict: |mean| < 0.1 and 0.8 < std < 1.2")
    print(f"{'parameter':<12} {'mean':>7} {'+-':>5} {'std':>6} {'max|p|':>7} "
          f"{'model bias':>10}  strict  result")
    for name, p in res["parameters"].items():
        print(f"{name:<12} {p['mean']:+7.3f} {p['sem']:5.3f} {p['std']:6.3f} "
              f"{p['max_abs']:7.2f} {p['model_bias']:+10.3f}  "
              f"{'yes' if p['strict'] else 'no':>6}  {'PASS' if p['pass'] else 'MISS'}")
    print(f"chi2/dof: {res['chi2_dof_mean']:.4f} +- {res['chi2_dof_std']:.4f}")
    print(f"time: simulation {res['time_simulate_s']:.1f} s, first fit (with JIT) "
          f"{res['time_first_fit_s']:.1f} s, {res['time_per_fit_s']:.2f} s per fit, "
          f"{res['time_total_fits_s']:.1f} s for {n} fits")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="noise realisations (default 200)")
    parser.add_argument("--snr", type=float, default=50.0,
                        help="matched-filter S/N of the galaxy per exposure (default 50)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the noise and starts")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    print(f"astromix {astromix.__version__}, backend {get_backend().name}, GalSim "
          f"{galsim.__version__}, Python {platform.python_version()}")
    res = run(args.n, snr=args.snr, seed=args.seed)
    print_table(res)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
        print(f"results saved to {args.json}")
    return 0 if all(p["pass"] for p in res["parameters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
