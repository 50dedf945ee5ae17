#!/usr/bin/env python
"""PSF-convolved Sersic stamps and fits: astromix against GalSim and astropy, in the same run.

Cases
-----
* **stamps**: a Sersic galaxy (flux 1000, r_eff = 4 px along the major axis,
  ellip 0.3, theta 0.5 rad, centre (31.7, 31.2)) convolved with a PSF of 3
  circular Gaussians (sigma 1, 2, 3 px, weights 0.5, 0.3, 0.2) on a 64x64
  stamp, at n = 1, 2, 4.  astromix: :class:`~astromix.SersicMixture`
  with that PSF as a GaussianMixture.  GalSim:
  ``Convolve(Sersic(n, half_light_radius=r_eff sqrt(q), flux).shear(q=q, beta=theta),
  psf).drawImage(nx=64, ny=64, scale=1, method='auto', offset=...)`` with ``q = 1 -
  ellip`` (GalSim's half-light radius is circularised; ours is along the major
  axis, as astropy's) and the PSF the ``galsim.Add`` of the same Gaussians.

  Timed calls (best of several repeats after a warm-up, so Numba's compilation is
  excluded), (a) with n fixed (GalSim's profile built once and redrawn;
  astromix's model reused), (b) with n changing at every call (never a value seen
  before: GalSim rebuilds its Sersic, astromix sets ``model.n``):

  - value: ``model(x, y)`` on the pixel grid (float64, through astropy's
    ``Model.__call__``), ``model.mixture().render(shape)`` (float64) and
    ``model.mixture().render(shape, dtype=float32)`` (float32, the type of
    GalSim's default image, ``ImageF``); GalSim: one ``drawImage`` (float32);
  - value + gradient: ``model.mixture().chi2(data, weight, gradient=True)`` (chi2
    and its gradient with respect to every Gaussian), and ``model.fit_deriv(x, y,
    ...)`` (the 7 Jacobian images of a least-squares fit, numpy); GalSim has no
    gradient: its peer is a forward-difference Jacobian, the value plus 6 more
    draws (x_0, y_0, r_eff, n, ellip, theta; the flux derivative is the image
    divided by the flux), the n step rebuilding the Sersic.

  Accuracy: ``max |astromix - GalSim| / peak`` at each n, against GalSim drawn
  with tight ``GSParams`` (folding 1e-4, maxk 1e-5, kvalue 1e-6, float64: the
  reference) and against GalSim's defaults (as timed).

* **fit**: one noisy 64x64 stamp (GalSim truth, n = 1.5, Gaussian noise of 1% of
  the peak, fixed seed) fitted from the same perturbed start by
  SersicMixture + :class:`astromix.fitting.MixtureLSQFitter` (Levenberg-Marquardt
  on the backend's Jacobian kernel: image and analytic derivatives in one pass)
  and by astropy's ``Sersic2D`` convolved with the PSF image (drawn by GalSim,
  31x31) by ``scipy.signal.fftconvolve`` in a custom model, fitted with astropy's
  ``TRFLSQFitter`` (finite differences) -- the usual astropy recipe.  Times
  (best of ``--fit-repeats``) and recovered parameters.

Targets (PASS / MISS): the value calls >= 10x faster than GalSim per stamp (fixed
n against fixed n, changing n against changing n) at an accuracy <= 3e-3 of the
peak; the full fit >= 5x faster than astropy's.

Usage::

    python benchmarks/sersic.py [--quick] [--fit-repeats N] [--json PATH]

On a loaded 2-core machine, OpenBLAS's threads (the SVDs of ``least_squares``)
made the astropy fit bimodal, 0.03 or 0.33 s; ``OPENBLAS_NUM_THREADS=1`` gives
stable fit timings for both fitters (the values are printed).

Results are ratios against GalSim and astropy measured in the same run; absolute
times depend on the machine.
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

import astromix
from astromix import GaussianMixture, SersicMixture, backends
from astromix.fitting import MixtureLSQFitter

STAMP = (64, 64)
FLUX = 1000.0
R_EFF = 4.0
ELLIP = 0.3
THETA = 0.5
X0, Y0 = 31.7, 31.2          # GalSim's stamp centre is 31.5 (0-based): offset (0.2, -0.3)
PSF_SIGMAS = (1.0, 2.0, 3.0)
PSF_WEIGHTS = (0.5, 0.3, 0.2)
N_VALUES = (1.0, 2.0, 4.0)
FIT_N = 1.5
NOISE = 0.01                 # noise sigma of the fit stamp, in units of its peak
SEED = 20240611
PARAMS = ("flux", "x_0", "y_0", "r_eff", "n", "ellip", "theta")

#: Targets: speed-up over GalSim for the value calls, accuracy, speed-up over astropy's fit.
GALSIM_SPEEDUP = 10.0
ACCURACY = 3e-3
FIT_SPEEDUP = 5.0

GOLDEN = 0.6180339887498949


# -- the objects ----------------------------------------------------------------------
def psf_mixture():
    """The PSF as a unit-flux GaussianMixture centred at (0, 0)."""
    return GaussianMixture(np.array(PSF_WEIGHTS), np.zeros((len(PSF_SIGMAS), 2)),
                           np.array(PSF_SIGMAS)[:, None, None] ** 2 * np.eye(2))


def galsim_psf(galsim):
    return galsim.Add([galsim.Gaussian(sigma=s, flux=w) for s, w in zip(PSF_SIGMAS, PSF_WEIGHTS)])


def galsim_galaxy(galsim, n, flux=FLUX, r_eff=R_EFF, ellip=ELLIP, theta=THETA, gsparams=None):
    """GalSim's Sersic with astropy's conventions (r_eff along the major axis)."""
    q = 1.0 - ellip
    return galsim.Sersic(n, half_light_radius=r_eff * np.sqrt(q), flux=flux,
                         gsparams=gsparams).shear(q=q, beta=theta * galsim.radians)


def galsim_draw(galsim, prof, x_0=X0, y_0=Y0, dtype=None):
    """Draw on the 64x64 stamp with astromix's pixel convention (pixel i centred at i)."""
    cx, cy = (STAMP[1] - 1) / 2.0, (STAMP[0] - 1) / 2.0
    kw = {} if dtype is None else {"dtype": dtype}
    return prof.drawImage(nx=STAMP[1], ny=STAMP[0], scale=1, method="auto",
                          offset=(x_0 - cx, y_0 - cy), **kw)


def grid():
    y, x = np.mgrid[:STAMP[0], :STAMP[1]]
    return x.astype(np.float64), y.astype(np.float64)


# -- timing ---------------------------------------------------------------------------
def best_time(fn, repeats, min_time):
    """Best seconds per call: two warm-up calls, then ``repeats`` runs of N calls each."""
    fn()
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    number = max(1, int(min_time / max(single, 1e-7)))
    best = single
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def changing_n(n):
    """A callable giving a new n near ``n`` at every call (never a value seen before)."""
    counter = [0]

    def nxt():
        counter[0] += 1
        return n + 0.05 * ((counter[0] * GOLDEN) % 1.0)
    return nxt


def _astromix_calls(model, nxt, x, y, data, weight):
    """The four timed astromix calls, each setting ``model.n = nxt()`` first."""

    def value():
        model.n = nxt()
        model(x, y)

    def render():
        model.n = nxt()
        model.mixture().render(STAMP)

    def render32():
        model.n = nxt()
        model.mixture().render(STAMP, dtype=np.float32)

    def chi2_grad():
        model.n = nxt()
        model.mixture().chi2(data, weight, gradient=True)

    def fit_deriv():
        model.n = nxt()
        model.fit_deriv(x, y, *model.parameters)

    return (("value: model(x, y)", value), ("value: mixture().render", render),
            ("value: render float32", render32),
            ("value+grad: chi2(gradient)", chi2_grad), ("value+grad: fit_deriv", fit_deriv))


def time_astromix(n, psf, data, weight, repeats, min_time):
    x, y = grid()
    model = SersicMixture(FLUX, X0, Y0, R_EFF, n, ELLIP, THETA, psf=psf)
    out = {}
    for mode in ("fixed", "changing"):
        nxt = changing_n(n) if mode == "changing" else (lambda: n)
        for call, fn in _astromix_calls(model, nxt, x, y, data, weight):
            out[(call, mode)] = best_time(fn, repeats, min_time)
    return out


def time_galsim(galsim, n, repeats, min_time):
    psf = galsim_psf(galsim)
    prof = galsim.Convolve(galsim_galaxy(galsim, n), psf)
    h = 1e-3

    def value_fixed():
        galsim_draw(galsim, prof)

    nxt = changing_n(n)

    def value_changing():
        galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, nxt()), psf))

    def gradient(n_now, base):
        """Forward-difference Jacobian: the value and 6 more draws."""
        galsim_draw(galsim, base)
        galsim_draw(galsim, base, x_0=X0 + h)
        galsim_draw(galsim, base, y_0=Y0 + h)
        galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n_now, r_eff=R_EFF + h), psf))
        galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n_now + h), psf))
        galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n_now, ellip=ELLIP + h), psf))
        galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n_now, theta=THETA + h), psf))

    def grad_fixed():
        gradient(n, prof)

    def grad_changing():
        m = nxt()
        gradient(m, galsim.Convolve(galsim_galaxy(galsim, m), psf))

    return {("value", "fixed"): best_time(value_fixed, repeats, min_time),
            ("value", "changing"): best_time(value_changing, repeats, min_time),
            ("value+grad", "fixed"): best_time(grad_fixed, repeats, min_time),
            ("value+grad", "changing"): best_time(grad_changing, repeats, min_time)}


def accuracy(galsim, n, psf):
    """max |astromix - GalSim| / peak against the tight reference and GalSim's defaults."""
    x, y = grid()
    ours = SersicMixture(FLUX, X0, Y0, R_EFF, n, ELLIP, THETA, psf=psf)(x, y)
    tight = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5,
                            kvalue_accuracy=1e-6, maximum_fft_size=16384)
    ref = galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n, gsparams=tight),
                                              galsim_psf(galsim)).withGSParams(tight),
                      dtype=np.float64).array
    default = galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, n), galsim_psf(galsim)),
                          dtype=np.float64).array
    peak = ref.max()
    return {"vs_reference": float(np.abs(ours - ref).max() / peak),
            "vs_default": float(np.abs(ours - default).max() / peak),
            "galsim_default_vs_reference": float(np.abs(default - ref).max() / peak),
            "flux_in_stamp_ratio": float(ours.sum() / ref.sum())}


# -- the full fit ---------------------------------------------------------------------
def fft_sersic_model():
    """astropy's Sersic2D convolved with a PSF image by FFT, as a fittable model."""
    from astropy.modeling import Fittable2DModel, Parameter
    from astropy.modeling.models import Sersic2D
    from scipy.signal import fftconvolve

    class FFTConvolvedSersic2D(Fittable2DModel):
        amplitude = Parameter(default=1.0)
        r_eff = Parameter(default=1.0, bounds=(0.1, None))
        n = Parameter(default=1.0, bounds=(0.3, 8.0))
        x_0 = Parameter(default=0.0)
        y_0 = Parameter(default=0.0)
        ellip = Parameter(default=0.0, bounds=(0.0, 0.95))
        theta = Parameter(default=0.0)

        def __init__(self, psf_image, **kwargs):
            self.psf_image = psf_image / psf_image.sum()
            super().__init__(**kwargs)

        def evaluate(self, x, y, amplitude, r_eff, n, x_0, y_0, ellip, theta):
            img = Sersic2D.evaluate(x, y, amplitude, r_eff, n, x_0, y_0, ellip, theta)
            return fftconvolve(img, self.psf_image, mode="same")

    return FFTConvolvedSersic2D


def sersic_flux_factor(r_eff, n, ellip):
    """Total flux of astropy's Sersic2D of unit amplitude (surface brightness at r_eff)."""
    from scipy.special import gamma, gammaincinv

    b = gammaincinv(2 * n, 0.5)
    return 2 * np.pi * n * r_eff ** 2 * (1 - ellip) * np.exp(b) * gamma(2 * n) / b ** (2 * n)


def run_fits(galsim, psf, repeats):
    from astropy.modeling.fitting import TRFLSQFitter

    x, y = grid()
    truth = dict(zip(PARAMS, (FLUX, X0, Y0, R_EFF, FIT_N, ELLIP, THETA)))
    clean = galsim_draw(galsim, galsim.Convolve(galsim_galaxy(galsim, FIT_N),
                                                galsim_psf(galsim)), dtype=np.float64).array
    sigma = NOISE * clean.max()
    data = clean + np.random.default_rng(SEED).normal(0.0, sigma, STAMP)
    weights = np.full(STAMP, 1.0 / sigma)
    start = dict(flux=0.8 * FLUX, x_0=X0 + 0.6, y_0=Y0 - 0.5, r_eff=1.3 * R_EFF, n=1.0,
                 ellip=0.15, theta=THETA + 0.3)

    results = {"truth": truth, "start": start, "noise_sigma": sigma}
    model0 = SersicMixture(*(start[p] for p in PARAMS), psf=psf)
    # astropy: Sersic2D (at pixel centres) convolved by FFT with the pixelated PSF image
    psf_image = galsim_psf(galsim).drawImage(nx=31, ny=31, scale=1, method="auto",
                                             dtype=np.float64).array
    peer0 = fft_sersic_model()(
        psf_image, amplitude=start["flux"] / sersic_flux_factor(start["r_eff"], start["n"],
                                                                start["ellip"]),
        r_eff=start["r_eff"], n=start["n"], x_0=start["x_0"], y_0=start["y_0"],
        ellip=start["ellip"], theta=start["theta"])

    def fit_astromix():
        return MixtureLSQFitter()(model0, x, y, data, weights=weights)

    def fit_astropy():
        fitter = TRFLSQFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = fitter(peer0, x, y, data, weights=weights, maxiter=500)
        fitted.fit_info = fitter.fit_info
        return fitted

    # interleaved, so that both fitters see the same machine load
    best = {"astromix": np.inf, "astropy": np.inf}
    fitted = {}
    for _ in range(repeats):
        for name, fn in (("astromix", fit_astromix), ("astropy", fit_astropy)):
            t0 = time.perf_counter()
            fitted[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    fit, peer = fitted["astromix"], fitted["astropy"]
    chi2 = float(np.sum(((fit(x, y) - data) / sigma) ** 2))
    results["astromix"] = {"seconds": best["astromix"], "chi2": chi2,
                           "nfev": int(fit.fit_info["nfev"]),
                           "params": {p: float(getattr(fit, p).value) for p in PARAMS}}
    chi2 = float(np.sum(((peer(x, y) - data) / sigma) ** 2))
    params = {p: float(getattr(peer, p).value) for p in PARAMS if p != "flux"}
    params["flux"] = float(peer.amplitude.value * sersic_flux_factor(
        peer.r_eff.value, peer.n.value, peer.ellip.value))
    results["astropy"] = {"seconds": best["astropy"], "chi2": chi2,
                          "nfev": int(peer.fit_info.get("nfev", -1) or -1),
                          "params": params}
    results["dof"] = int(data.size - len(PARAMS))
    return results


# -- report --------------------------------------------------------------------------
def _fmt_time(t):
    if t < 1e-3:
        return f"{t * 1e6:8.1f} us"
    if t < 1.0:
        return f"{t * 1e3:8.2f} ms"
    return f"{t:8.3f} s "


def _fmt_ratio(r):
    return f"{r:8.1f}x" if r >= 10 else f"{r:8.2f}x"


def _status(ok):
    return "PASS" if ok else "MISS"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--fit-repeats", type=int, default=None,
                        help="fits per fitter, the best time kept (default 3, --quick 1)")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = parser.parse_args(argv)
    repeats, min_time = (2, 0.03) if args.quick else (5, 0.1)
    fit_repeats = args.fit_repeats or (1 if args.quick else 3)

    try:
        import galsim
    except ImportError:
        print("GalSim is not installed: this benchmark needs it as the peer and the truth")
        return 1
    import astropy

    try:
        import numba
        threads = numba.get_num_threads()
    except ImportError:
        threads = None
    psf = psf_mixture()
    ncomp = len(SersicMixture(FLUX, X0, Y0, R_EFF, 2.0, ELLIP, THETA, psf=psf).mixture())
    print(f"astromix {astromix.__version__} | GalSim {galsim.__version__} | astropy "
          f"{astropy.__version__} | numpy {np.__version__} | python "
          f"{platform.python_version()} | {platform.machine()}, {os.cpu_count()} CPU cores")
    print(f"backend: {backends.get_backend().name}"
          + (f" (numba threads: {threads})" if threads is not None else "")
          + f"; SersicMixture x PSF: {ncomp} Gaussians; GalSim: one thread")
    blas = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                           "MKL_NUM_THREADS") if os.environ.get(k)}
    print("BLAS/OpenMP threads: "
          + (", ".join(f"{k}={v}" for k, v in blas.items()) or "library defaults"))
    print(f"stamp {STAMP[0]}x{STAMP[1]}, flux {FLUX:g}, r_eff {R_EFF:g} px (major axis), "
          f"ellip {ELLIP}, theta {THETA} rad; PSF sigmas {PSF_SIGMAS} px, "
          f"weights {PSF_WEIGHTS}")
    print()

    results = {"meta": {"astromix": astromix.__version__, "galsim": galsim.__version__,
                        "astropy": astropy.__version__, "numpy": np.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "backend": backends.get_backend().name,
                        "numba_threads": threads, "quick": bool(args.quick),
                        "thread_env": {k: os.environ.get(k) for k in (
                            "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS")},
                        "n_gaussians": ncomp},
               "stamps": [], "accuracy": {}, "fit": None, "targets": []}
    targets = results["targets"]

    # accuracy
    print("Accuracy: max |astromix - GalSim| / peak")
    print(f"  {'n':>4s} {'vs reference':>13s} {'vs default':>11s} "
          f"{'(GalSim default vs ref)':>24s} {'stamp flux ratio':>17s}")
    for n in N_VALUES:
        acc = accuracy(galsim, n, psf)
        results["accuracy"][str(n)] = acc
        print(f"  {n:4g} {acc['vs_reference']:13.2e} {acc['vs_default']:11.2e} "
              f"{acc['galsim_default_vs_reference']:24.2e} {acc['flux_in_stamp_ratio']:17.6f}")
    print()

    # stamp timings
    x, y = grid()
    header = (f"{'n':>3s} {'astromix call':<27s} {'n':<8s} {'astromix':>11s} {'GalSim':>11s} "
              f"{'x GalSim':>9s}")
    print("Stamps: best time per call; GalSim value = one drawImage, value+grad = 7 draws "
          "(forward differences)")
    print(header)
    print("-" * len(header))
    for n in N_VALUES:
        data = SersicMixture(FLUX, X0, Y0, R_EFF, n, ELLIP, THETA, psf=psf)(x, y)
        data = data + np.random.default_rng(SEED).normal(0.0, NOISE * data.max(), STAMP)
        weight = np.ones(STAMP)
        ours = time_astromix(n, psf, data, weight, repeats, min_time)
        peer = time_galsim(galsim, n, repeats, min_time)
        for (call, mode), t in ours.items():
            kind = call.split(":")[0]
            tp = peer[(kind, mode)]
            ratio = tp / t
            row = {"n": n, "call": call, "n_mode": mode, "seconds": t, "galsim_seconds": tp,
                   "speedup_vs_galsim": ratio}
            results["stamps"].append(row)
            print(f"{n:3g} {call:<27s} {mode:<8s} {_fmt_time(t):>11s} {_fmt_time(tp):>11s} "
                  f"{_fmt_ratio(ratio):>9s}")
            if kind == "value":
                acc = results["accuracy"][str(n)]["vs_reference"]
                ok = ratio >= GALSIM_SPEEDUP and acc <= ACCURACY
                targets.append({"target": f"{call} ({mode} n) >= {GALSIM_SPEEDUP:g}x GalSim "
                                f"at accuracy <= {ACCURACY:g}", "n": n, "speedup": ratio,
                                "accuracy": acc, "pass": ok})
    print()

    # the fit
    fit = run_fits(galsim, psf, fit_repeats)
    results["fit"] = fit
    print(f"Fit of one noisy stamp (GalSim truth, n = {FIT_N}, noise {NOISE:g} of the peak), "
          f"best of {fit_repeats}:")
    print(f"  {'':12s} {'truth':>9s} {'start':>9s} {'astromix':>10s} {'astropy+FFT':>12s}")
    for p in PARAMS:
        print(f"  {p:12s} {fit['truth'][p]:9.4f} {fit['start'][p]:9.4f} "
              f"{fit['astromix']['params'][p]:10.4f} {fit['astropy']['params'][p]:12.4f}")
    for what in ("chi2", "seconds"):
        print(f"  {what + ('/dof' if what == 'chi2' else ''):12s} {'':9s} {'':9s} "
              f"{fit['astromix'][what] / (fit['dof'] if what == 'chi2' else 1):10.4f} "
              f"{fit['astropy'][what] / (fit['dof'] if what == 'chi2' else 1):12.4f}")
    print(f"  {'nfev':12s} {'':9s} {'':9s} {fit['astromix']['nfev']:10d} "
          f"{fit['astropy']['nfev']:12d}")
    fit_ratio = fit["astropy"]["seconds"] / fit["astromix"]["seconds"]
    print("  (nfev: model evaluations; each of astromix's gives the image and its 7 derivative "
          "images in one kernel pass, astropy adds 7 more for its finite differences)")
    print(f"  astropy time / astromix time: {fit_ratio:.2f}")
    targets.append({"target": f"full fit >= {FIT_SPEEDUP:g}x faster than astropy",
                    "speedup": fit_ratio, "pass": fit_ratio >= FIT_SPEEDUP})
    print()

    print("Targets:")
    for t in targets:
        extra = f", accuracy {t['accuracy']:.1e}" if "accuracy" in t else ""
        where = f"n={t['n']:g} " if "n" in t else ""
        print(f"  {_status(t['pass'])}  {where}{t['target']:<70s} measured "
              f"{_fmt_ratio(t['speedup']).strip()}{extra}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        print(f"\nresults saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
