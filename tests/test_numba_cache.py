"""Freshly compiled and cached Numba kernels give the same numbers, bit for bit.

A process that compiles the kernels runs each called kernel as compiled on its
own; a process that loads them from Numba's cache runs the copy linked into its
caller's object, which LLVM optimised a second time.  With fast-math
reassociation the two rounded differently (float32 images 3e-8 apart), so a fit
could land in another optimum on the first run after installing than on every
later one (see ``_FASTMATH`` in ``astromix.backends.numba_backend``).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from astromix import GaussianMixture
    from astromix.backends import numba_backend as nb, use_backend
    from astromix.models._base import chain_coefficients
    from astromix.settings import AccuracySettings

    # 54 Gaussians of 0.8-6 px, tilted, and three more: on 64x64 every kernel path
    # is taken (exponentials, recurrence, two components by recurrence at once,
    # fourth-order factor) in both dtypes
    rng = np.random.default_rng(1)
    k = 54
    amp = rng.uniform(0.5, 2, k)
    mean = rng.uniform(20, 44, (k, 2))
    s = rng.uniform(0.8, 6, (k, 2))
    rho = rng.uniform(-0.5, 0.5, k)
    cov = np.empty((k, 2, 2))
    cov[:, 0, 0] = s[:, 0] ** 2
    cov[:, 1, 1] = s[:, 1] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * s[:, 0] * s[:, 1]
    # and one cut by the image's edge to 7 rows (float64 exponentials)
    amp = np.append(amp, 1.5)
    mean = np.vstack([mean, [30.2, -11.3]])
    cov = np.concatenate([cov, [[[12.0, 3.0], [3.0, 10.0]]]])
    # and two concentric neighbours with the same box, walked together
    # (_render_rec_pair): wider than 64x64, the same variances on 300x301
    amp = np.append(amp, [0.9, 0.7])
    mean = np.vstack([mean, [[31.6, 33.2], [31.6, 33.2]]])
    cov = np.concatenate([cov, [[[400.0, 50.0], [50.0, 300.0]], [[400.0, -60.0], [-60.0, 300.0]]]])
    g = GaussianMixture(amp, mean, cov)
    settings = AccuracySettings()
    bk = nb.NumbaBackend()
    table = bk.prepare(amp, mean, cov, settings)
    paths = set()
    for itemsize in (4, 8):
        for shape in ((64, 64), (300, 304)):
            kinds = [nb._box_kind(t, *shape, 0, itemsize) for t in table]
            paths.update((itemsize, ("none", "use4", "rec", "plain")[kind[4]]) for kind in kinds)
            if any(a == b and a[4] == 2 for a, b in zip(kinds[:-1], kinds[1:])):
                paths.add((itemsize, "rec pair"))
    out = {"paths": np.array(sorted(map(str, paths)))}
    with use_backend("numba"):
        for dtype in (np.float32, np.float64):
            # 64x64: the one-call stamp path; 300x300 (and 301 wide, padded): the
            # general path, on every thread
            for shape in ((64, 64), (300, 301)):
                img = g.render(shape, dtype=dtype)
                data = (img + rng.normal(0, 0.01, shape)).astype(dtype)
                weight = np.full(shape, 1e4, dtype)
                chi2, (d_amp, d_mean, d_cov) = g.chi2(data, weight, gradient=True)
                key = f"{np.dtype(dtype).name}_{shape[1]}"
                out.update({key + "_image": img, key + "_chi2": np.array(chi2),
                            key + "_amp": d_amp, key + "_mean": d_mean, key + "_cov": d_cov})
            # two exposures in one parallel call (the scene fits' kernel)
            shapes = [(64, 64), (70, 75)]
            layout = bk.exposures_layout(shapes)
            imgs = [g.render(sh, dtype=dtype) + dtype(0.5) for sh in shapes]
            data = bk.pack_images([im + rng.normal(0, 0.01, im.shape) for im in imgs],
                                  layout, dtype)
            weight = bk.pack_images([np.full(sh, 1e4) for sh in shapes], layout, dtype)
            chi2, bg, acc = bk.exposures_chi2([table, table], layout, data, weight,
                                             [None, 0.5], settings)
            key = f"{np.dtype(dtype).name}_exposures"
            out.update({key + "_chi2": chi2, key + "_bg": bg, key + "_acc0": acc[0],
                        key + "_acc1": acc[1]})
        # the Jacobian images of a model whose parameters move the components
        coeff = chain_coefficients(table, rng.normal(size=(len(table), 3, 6)))
        out["jacobian"] = bk.jacobian(table, coeff, (300, 301), settings)
    np.savez(sys.argv[1], **out)
""")


def test_fresh_and_cached_kernels_agree_bitwise(tmp_path):
    script = tmp_path / "kernels.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    results = []
    for run in ("fresh", "cached"):
        path = tmp_path / f"{run}.npz"
        proc = subprocess.run([sys.executable, str(script), str(path)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        results.append(np.load(path))
    # the second run did load the first one's compiled kernels
    assert any(name.endswith(".nbi") for _, _, files in os.walk(tmp_path / "numba_cache")
               for name in files)
    fresh, cached = results
    assert set(fresh["paths"]) == {f"({size}, '{kind}')" for size in (4, 8)
                                   for kind in ("plain", "rec", "use4", "rec pair")}
    assert fresh.files == cached.files
    differ = [key for key in fresh.files if not np.array_equal(fresh[key], cached[key])]
    assert not differ, f"freshly compiled and cached kernels differ in {differ}"
