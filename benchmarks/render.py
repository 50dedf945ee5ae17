#!/usr/bin/env python
"""Rendering and chi2+gradient throughput of astromix, against GalSim in the same run.

Cases
-----
* **stamp**: a 54-Gaussian galaxy (a 6-component Sersic-like set of concentric
  Gaussians, variances 0.05..10 r_eff^2 with r_eff = 4 px, convolved with a
  9-component PSF-like mixture, sigmas 0.8..4 px) on a 64x64 stamp.
* **scene**: 100 such galaxies at random positions (fixed seed) in a 1024x1024
  image, as one 5400-Gaussian mixture.

For each backend and dtype, ``render`` and ``chi2(gradient=True)`` are timed
(best of several repeats after a warm-up call, so Numba's compilation and CuPy's
kernel loading are excluded).  Throughput is reported as Gaussian-pixel
evaluations per second, the evaluations being the pixels inside each
component's culling ellipse summed over the components (the same count for
chi2+gradient, although it visits each pixel twice: render and accumulate).

The peer is GalSim, timed in the same run (one thread):
``Convolve(Sersic(n=2, half_light_radius=4), Gaussian(sigma=1.5)).drawImage(nx=64,
ny=64, scale=1, method='auto')`` with a fixed profile, with ``n`` changing at every
call (the Sersic is rebuilt), and 100 of them drawn into a 1024x1024 image.
GalSim draws float32 images by default (``ImageF``); the fixed profile and the
scene are also drawn into float64 images (``dtype=numpy.float64``, ``ImageD``),
and astromix's float64 rows are compared with those (1-6% slower than float32
on the reference machine), its float32 rows with the float32 draws.

Usage::

    python benchmarks/render.py [--backend NAME ...] [--quick] [--json PATH]

Numba uses ``NUMBA_NUM_THREADS`` threads (its default: all cores); the number is
printed, and with more than one, the float32 scene render is also timed on one
thread, with the sources spread and clustered in the top 30% of the rows.
Results are ratios against GalSim and against the targets of the performance
issue, printed as PASS / MISS; absolute times depend on the machine.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import astromix
from astromix import AccuracySettings, GaussianMixture, backends
from astromix.backends import _common

STAMP = (64, 64)
SCENE = (1024, 1024)
N_SOURCES = 100
R_EFF = 4.0
SEED = 20240611

#: Throughput targets [Gaussian-pixel evaluations / s] by (backend kind, call, dtype).
CPU_TARGETS = {("render", "float32"): 4e9, ("render", "float64"): 1.5e9,
               ("chi2+grad", "float32"): 2e9}
GPU_TARGETS = {("chi2+grad", "float32"): 5e11}
#: Required speed-up over GalSim (fixed-n profile) for render, per stamp and per scene.
GALSIM_SPEEDUP = 20.0


# -- the test objects ---------------------------------------------------------------
def galaxy_mixture(center=(31.7, 32.3)):
    """The 54-component PSF-convolved galaxy centred at ``center`` (x, y) [px]."""
    var = R_EFF ** 2 * np.geomspace(0.05, 10.0, 6)
    weight = np.array([0.08, 0.15, 0.22, 0.24, 0.19, 0.12])
    gal = GaussianMixture(weight / weight.sum(), np.tile(center, (6, 1)),
                          var[:, None, None] * np.eye(2))
    sig = np.geomspace(0.8, 4.0, 9)
    pw = np.exp(-np.arange(9) / 3.0)
    psf = GaussianMixture(pw / pw.sum(), np.zeros((9, 2)), (sig ** 2)[:, None, None] * np.eye(2))
    return gal.convolve(psf)


def source_positions(rng, n, shape, margin=40.0):
    """Random (x, y) centres, far enough from the edges for a full 64x64 stamp."""
    ny, nx = shape
    return np.column_stack([rng.uniform(margin, nx - 1 - margin, n),
                            rng.uniform(margin, ny - 1 - margin, n)])


def scene_mixture(positions):
    """All sources as one mixture."""
    one = galaxy_mixture(center=(0.0, 0.0))
    k = len(one)
    amp = np.tile(one.amp, len(positions))
    mean = (one.mean[None, :, :] + positions[:, None, :]).reshape(-1, 2)
    cov = np.tile(one.cov, (len(positions), 1, 1))
    assert len(amp) == k * len(positions)
    return GaussianMixture(amp, mean, cov)


def count_evaluations(mixture, shape, settings):
    """Pixels inside every component's culling ellipse, summed over components.

    Reproduces the culling rule of :mod:`astromix.backends._common` (as applied by
    ``numpy_backend``): the pixels of the component's box (``_common.box``) whose
    float64 quadratic form ``q = dx (Fxx dx + Fxy dy) + dy (Fxy dx + Fyy dy)`` is
    ``<= n_sigma**2``.
    """
    c = _common
    table = c.prepare(mixture.amp, mixture.mean, mixture.cov, settings)
    nn = settings.n_sigma * settings.n_sigma
    total = 0
    for t in table:
        j0, j1, i0, i1 = c.box(t, shape)
        if j1 < j0 or i1 < i0:
            continue
        dx = (np.arange(i0, i1 + 1) - t[c.MX])[None, :]
        dy = (np.arange(j0, j1 + 1) - t[c.MY])[:, None]
        q = dx * (t[c.FXX] * dx + t[c.FXY] * dy) + dy * (t[c.FXY] * dx + t[c.FYY] * dy)
        total += int(np.count_nonzero(q <= nn))
    return total


def _check_count(mixture, shape, settings, expected):
    """The count equals the pixels the reference backend touches, component by component."""
    touched = 0
    for k in range(len(mixture)):
        one = GaussianMixture(np.ones(1), mixture.mean[k:k + 1], mixture.cov[k:k + 1])
        touched += int(np.count_nonzero(one.render(shape, settings=settings, backend="numpy")))
    if touched != expected:
        raise AssertionError(f"evaluation count {expected} != pixels touched {touched}")


# -- timing ---------------------------------------------------------------------------
def best_time(fn, repeats, min_time):
    """Best seconds per call: a warm-up call, then ``repeats`` runs of N calls each.

    N is chosen so that one run lasts about ``min_time`` seconds.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    # a second call, to time without any remaining first-call cost
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    number = max(1, int(min_time / max(single, 1e-7)))
    if single > 4 * min_time:  # slow case: fewer repeats
        repeats = max(2, repeats // 2)
    best = single
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best, first


def _sync_for(bk):
    if bk.name == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().synchronize
    return lambda: None


def time_astromix(name, dtype, mixture, shape, data, weight, settings, repeats, min_time):
    bk = backends.get_backend(name)
    sync = _sync_for(bk)
    d = bk.asarray(data, dtype=dtype)
    w = bk.asarray(weight, dtype=dtype)
    sync()

    def render():
        mixture.render(shape, dtype=dtype, settings=settings, backend=name)
        sync()

    def chi2_grad():
        mixture.chi2(d, w, gradient=True, settings=settings, backend=name)
        sync()

    out = {}
    for call, fn in (("render", render), ("chi2+grad", chi2_grad)):
        out[call] = best_time(fn, repeats, min_time)
    return out


def time_galsim(positions, repeats, min_time):
    import galsim

    psf = galsim.Gaussian(sigma=1.5)
    prof = galsim.Convolve(galsim.Sersic(n=2, half_light_radius=R_EFF), psf)

    def fixed(dtype=np.float32):
        prof.drawImage(nx=STAMP[1], ny=STAMP[0], scale=1, method="auto", dtype=dtype)

    counter = [0]

    def changing():
        counter[0] += 1  # a new n at every call, never one seen before (no cache hit)
        n = 1.5 + (counter[0] * 0.6180339887498949) % 1.0
        galsim.Convolve(galsim.Sersic(n=n, half_light_radius=R_EFF), psf).drawImage(
            nx=STAMP[1], ny=STAMP[0], scale=1, method="auto")

    def scene(image_type=galsim.ImageF):
        image = image_type(SCENE[1], SCENE[0], scale=1)
        for x, y in positions:
            # galsim pixels are 1-based: astromix pixel i is galsim pixel i + 1
            ix, iy = int(round(x)) + 1, int(round(y)) + 1
            bounds = galsim.BoundsI(ix - 31, ix + 32, iy - 31, iy + 32) & image.bounds
            sub = image[bounds]
            offset = galsim.PositionD(x + 1 - sub.true_center.x, y + 1 - sub.true_center.y)
            prof.drawImage(image=sub, add_to_image=True, method="auto", offset=offset)

    return {"stamp, fixed n": best_time(fixed, repeats, min_time),
            "stamp, n changes": best_time(changing, repeats, min_time),
            "scene, 100 stamps": best_time(scene, max(2, repeats // 2), min_time),
            "stamp, fixed n, float64": best_time(lambda: fixed(np.float64), repeats,
                                                 min_time),
            "scene, float64": best_time(lambda: scene(galsim.ImageD), max(2, repeats // 2),
                                        min_time)}


def galsim_peer(gs, case, dtype):
    """GalSim's time for a case (``"stamp"``, ``"scene"``) drawn in ``dtype``'s precision."""
    f64 = np.dtype(dtype) == np.float64
    if case == "stamp":
        return gs["stamp, fixed n, float64" if f64 else "stamp, fixed n"][0]
    return gs["scene, float64" if f64 else "scene, 100 stamps"][0]


def time_same_profile(positions, repeats, min_time):
    """astromix drawing GalSim's profile itself: SersicMixture(n=2, r_eff=4) x Gaussian(1.5).

    Informational (the targets are judged on the 54-Gaussian case): the
    galaxy GalSim draws, as astromix models it (20-component Sersic mixture,
    components the PSF blurs together merged within the default
    ``merge_tolerance``), rendered by the active backend, the stamp centred as
    GalSim's (31.5, 31.5) and the scene with the same 100 centres.  The stamp
    is also evaluated as astropy models are, ``model(x, y)`` on the pixel grid
    (float64, built at each call), case ``"stamp model(x, y)"``.  Returns
    {(case, dtype): seconds}, the stamp's component count and its largest
    difference from GalSim's image relative to the peak.
    """
    import galsim

    from astromix import SersicMixture

    psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 1.5 ** 2])
    model = SersicMixture(1.0, 31.5, 31.5, R_EFF, 2.0, 0.0, 0.0, psf=psf)
    stamp = model.mixture()
    one = SersicMixture(1.0, 0.0, 0.0, R_EFF, 2.0, 0.0, 0.0, psf=psf).mixture()
    scene = GaussianMixture._unchecked(
        np.tile(one.amp, len(positions)),
        (one.mean[None, :, :] + positions[:, None, :]).reshape(-1, 2),
        np.tile(one.cov, (len(positions), 1, 1)))
    ref = galsim.Convolve(galsim.Sersic(n=2, half_light_radius=R_EFF),
                          galsim.Gaussian(sigma=1.5)).drawImage(
        nx=STAMP[1], ny=STAMP[0], scale=1, method="auto", dtype=np.float64).array
    error = float(np.abs(stamp.render(STAMP) - ref).max() / ref.max())
    out = {}

    def build_and_render(dtype):
        # built at each call: the model's kept build (reused at the same parameters)
        # is dropped first
        model.__dict__.pop("_last_build", None)
        return model.mixture().render(STAMP, dtype=dtype)

    def call(y, x):
        model.__dict__.pop("_last_build", None)
        return model(x, y)

    grid = np.mgrid[:STAMP[0], :STAMP[1]].astype(np.float64)
    for dtype in (np.float32, np.float64):
        dname = np.dtype(dtype).name
        out[("stamp", dname)] = best_time(
            lambda dtype=dtype: build_and_render(dtype), repeats, min_time)[0]
        out[("scene", dname)] = best_time(
            lambda dtype=dtype: scene.render(SCENE, dtype=dtype), max(2, repeats // 2),
            min_time)[0]
    out[("stamp model(x, y)", "float64")] = best_time(lambda: call(*grid), repeats,
                                                      min_time)[0]
    return out, len(stamp), error


# -- report --------------------------------------------------------------------------
def _fmt_time(t):
    if t < 1e-3:
        return f"{t * 1e6:8.1f} us"
    if t < 1.0:
        return f"{t * 1e3:8.2f} ms"
    return f"{t:8.3f} s "


def _status(ok):
    return "PASS" if ok else "MISS"


def numba_threads():
    try:
        import numba
    except ImportError:
        return None
    return {"threads": int(numba.get_num_threads()),
            "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS")}


def thread_scaling(positions, settings, repeats, min_time):
    """Numba's float32 scene render on one thread and on all, sources spread or clustered.

    The clustered scene moves the same sources into the top 30% of the rows (a
    cluster field): with row bands of equal height its work fell to one thread.
    Prints and returns the times and speed-ups.
    """
    import numba

    full = numba.get_num_threads()
    clustered = positions.copy()
    lo = positions[:, 1].min()
    clustered[:, 1] = lo + 0.3 * (positions[:, 1] - lo)
    out = {}
    print(f"Thread scaling, numba float32 scene render (1 -> {full} threads):")
    for label, pos in (("spread", positions), ("clustered", clustered)):
        mix = scene_mixture(pos)
        times = {}
        for n in (1, full):
            numba.set_num_threads(n)
            try:
                times[n] = best_time(lambda mix=mix: mix.render(SCENE, dtype=np.float32,
                                                                settings=settings,
                                                                backend="numba"),
                                     max(2, repeats // 2), min_time)[0]
            finally:
                numba.set_num_threads(full)
        out[label] = {"one_thread_s": times[1], "all_threads_s": times[full],
                      "speedup": times[1] / times[full]}
        print(f"  {label:<9s} {_fmt_time(times[1]):>11s} -> {_fmt_time(times[full]):>11s}"
              f"   {times[1] / times[full]:4.2f}x")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append",
                        help="backend(s) to time (repeatable); default: all available")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    args = parser.parse_args(argv)

    repeats, min_time = (2, 0.03) if args.quick else (5, 0.1)
    available = backends.available_backends()
    names = args.backend or available
    for name in names:
        if name not in available:
            parser.error(f"backend {name!r} is not available here (available: {available})")
    settings = AccuracySettings()
    dtypes = (np.float32, np.float64)

    rng = np.random.default_rng(SEED)
    stamp = galaxy_mixture()
    positions = source_positions(rng, N_SOURCES, SCENE)
    scene = scene_mixture(positions)
    n_stamp = count_evaluations(stamp, STAMP, settings)
    n_scene = count_evaluations(scene, SCENE, settings)
    _check_count(stamp, STAMP, settings, n_stamp)
    cases = {
        "stamp": (stamp, STAMP, n_stamp),
        "scene": (scene, SCENE, n_scene),
    }
    data = {}
    for case, (mix, shape, _) in cases.items():
        model = mix.render(shape, backend="numpy")
        data[case] = (model + rng.normal(0.0, 1e-3 * model.max(), shape), np.ones(shape))

    nthreads = numba_threads()
    print(f"astromix {astromix.__version__} | numpy {np.__version__} | python "
          f"{platform.python_version()} | {platform.machine()}, {os.cpu_count()} CPU cores")
    if nthreads is not None:
        print(f"numba threads: {nthreads['threads']} "
              f"(NUMBA_NUM_THREADS={nthreads['NUMBA_NUM_THREADS'] or 'unset'})")
    print(f"backends: {', '.join(names)} (available: {', '.join(available)})")
    print(f"stamp: {len(stamp)} Gaussians, {STAMP[0]}x{STAMP[1]}, "
          f"{n_stamp:,} Gaussian-pixel evaluations per call")
    print(f"scene: {N_SOURCES} sources ({len(scene)} Gaussians), {SCENE[0]}x{SCENE[1]}, "
          f"{n_scene:,} evaluations per call")
    print()

    results = {"meta": {"astromix": astromix.__version__, "numpy": np.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "numba": nthreads,
                        "quick": bool(args.quick), "n_sigma": settings.n_sigma,
                        "pixel_integration": settings.pixel_integration,
                        "evaluations": {"stamp": n_stamp, "scene": n_scene}},
               "galsim": None, "astromix": [], "targets": []}

    try:
        import galsim
    except ImportError:
        galsim = None
        print("GalSim is not installed: no peer timings, no ratios\n")
    gs = None
    if galsim is not None:
        gs = time_galsim(positions, repeats, min_time)
        results["galsim"] = {"version": galsim.__version__,
                             **{k: v[0] for k, v in gs.items()}}
        print(f"GalSim {galsim.__version__} (one thread), best time per call:")
        for k, (t, _) in gs.items():
            print(f"  {k:<24s} {_fmt_time(t)}")
        print()

    if gs is not None:
        same, n_same, err_same = time_same_profile(positions, repeats, min_time)
        results["same_profile"] = {"components": n_same, "max_error_vs_galsim": err_same,
                                   **{f"{c.replace(' model(x, y)', '_model_call')}_{d}_s": t
                                      for (c, d), t in same.items()}}
        print("For information, GalSim's profile drawn by astromix "
              f"({backends.get_backend().name}): "
              f"SersicMixture(n=2, r_eff=4) x Gaussian(1.5), {n_same} Gaussians after "
              f"merging, max |astromix - GalSim| = {err_same:.1e} of the peak; "
              "mixture().render (stamps built at each call; last row: the astropy-style "
              "call model(x, y) on the 64x64 grid) against GalSim's draws:")
        for (c, d), t in same.items():
            peer = galsim_peer(gs, c.split()[0], d)
            print(f"  {c:<18s} {d:<8s} {_fmt_time(t):>11s}  {peer / t:6.1f}x GalSim")
        print()

    header = (f"{'backend':<7s} {'dtype':<7s} {'case':<5s} {'call':<9s} {'time/call':>11s} "
              f"{'evals/s':>9s} {'first call':>11s} {'x GalSim':>9s} {'(n varies)':>10s}")
    print(header)
    print("-" * len(header))
    for name in names:
        for dtype in dtypes:
            dname = np.dtype(dtype).name
            for case, (mix, shape, nev) in cases.items():
                d, w = data[case]
                timings = time_astromix(name, dtype, mix, shape, d, w, settings,
                                        repeats, min_time)
                for call, (t, first) in timings.items():
                    row = {"backend": name, "dtype": dname, "case": case, "call": call,
                           "seconds": t, "first_call_seconds": first,
                           "evaluations_per_s": nev / t}
                    ratio = ratio_n = None
                    if gs is not None:
                        ratio = galsim_peer(gs, case, dtype) / t
                        row["speedup_vs_galsim"] = ratio
                        if case == "stamp":
                            ratio_n = gs["stamp, n changes"][0] / t
                            row["speedup_vs_galsim_n_varies"] = ratio_n
                    results["astromix"].append(row)
                    print(f"{name:<7s} {dname:<7s} {case:<5s} {call:<9s} {_fmt_time(t):>11s} "
                          f"{nev / t:9.2e} {_fmt_time(first):>11s} "
                          f"{'' if ratio is None else f'{ratio:8.1f}x':>9s} "
                          f"{'' if ratio_n is None else f'{ratio_n:8.1f}x':>10s}")
    print()
    print("'x GalSim' = GalSim time / astromix time, GalSim drawing in the row's precision "
          "(stamp: fixed-n profile redrawn; '(n varies)': Sersic rebuilt at each call, "
          "float32; scene: 100 GalSim stamps); chi2+grad also renders.")
    print()

    if "numba" in names and nthreads is not None and nthreads["threads"] > 1:
        results["thread_scaling"] = thread_scaling(positions, settings, repeats, min_time)
        print()

    # targets
    print("Targets (the CPU targets apply to numba, the GPU target to cupy; numpy is the "
          "reference and is not judged):")
    for row in results["astromix"]:
        if row["backend"] == "numpy":
            continue
        targets = GPU_TARGETS if row["backend"] == "cupy" else CPU_TARGETS
        key = (row["call"], row["dtype"])
        checks = []
        if key in targets:
            checks.append((f"{row['call']} >= {targets[key]:.1e} evaluations/s",
                           row["evaluations_per_s"], targets[key]))
        if row["call"] == "render" and "speedup_vs_galsim" in row:
            checks.append((f"render >= {GALSIM_SPEEDUP:g}x faster than GalSim per {row['case']}",
                           row["speedup_vs_galsim"], GALSIM_SPEEDUP))
        for what, value, goal in checks:
            ok = value >= goal
            results["targets"].append({"backend": row["backend"], "dtype": row["dtype"],
                                       "case": row["case"], "target": what,
                                       "value": value, "goal": goal, "pass": ok})
            shown = f"{value:.2e}" if goal > 1e3 else f"{value:.1f}x"
            print(f"  {_status(ok)}  {row['backend']:<6s} {row['dtype']:<7s} "
                  f"{row['case']:<5s} {what:<50s} measured {shown}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
        print(f"\nresults saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
