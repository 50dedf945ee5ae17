"""
A Gaussian-mixture PSF for JWST NIRCam F200W
============================================

Fit Gaussian mixtures of 1 to 8 components (one of them negative from 3 on)
to the empirical F200W PSF of the NEXUS survey (4x oversampled; the central
161x161 oversampled pixels, as forcepho's ``make_psf.py --oversample 4 --trim
187``) with :func:`astromix.fitting.fit_psf_mixture`, and compare the residuals
and the fit time.  forcepho's make_psf (NUTS) took 229 s for 4 components on the same image
and machine, for ``max|residual|/peak`` = 0.13 and ``sum|residual|/flux`` = 0.22.
"""

import time

import matplotlib.pyplot as plt
import numpy as np

from astromix.datasets import load_jwst_f200w_psf
from astromix.fitting import fit_psf_mixture

image, header = load_jwst_f200w_psf()
oversampling = header["OVERSAMP"]

###############################################################################
# Fit 1..8 components
# -------------------

results = {}
for k in range(1, 9):
    t0 = time.perf_counter()
    psf = fit_psf_mixture(image, k, oversampling=oversampling, trim=187, rng=1,
                          n_negative=1 if k >= 3 else 0)
    results[k] = (psf, time.perf_counter() - t0)
    info = psf.fit_info
    print(f"{k} components: max|res|/peak {info['max_residual_over_peak']:.4f}, "
          f"sum|res|/flux {info['l1_residual_over_flux']:.4f}, {results[k][1]:.2f} s")

###############################################################################
# Accuracy against the number of components
# -----------------------------------------

ks = np.array(list(results))
max_res = [results[k][0].fit_info["max_residual_over_peak"] for k in ks]
l1_res = [results[k][0].fit_info["l1_residual_over_flux"] for k in ks]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(ks, max_res, "o-", label="max |residual| / peak")
ax.plot(ks, l1_res, "s-", label="sum |residual| / flux")
ax.plot([4], [0.13], "x", c="C0", ms=9, label="forcepho make_psf, 4 components")
ax.plot([4], [0.22], "x", c="C1", ms=9)
ax.set_xlabel("number of Gaussian components")
ax.set_yscale("log")
ax.legend(fontsize=8)
fig.tight_layout()

###############################################################################
# The 4-component fit: target, model and residual
# -----------------------------------------------
# One negative Gaussian carves the core; the largest residual is 6% of the peak.

psf4 = results[4][0]
print(psf4.mixture)
target = image[187:-187, 187:-187]
model = psf4.fit_info["model"]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
kw = dict(origin="lower", cmap="magma", norm=plt.matplotlib.colors.LogNorm(1e-6, target.max()))
axes[0].imshow(np.clip(target, 1e-6, None), **kw)
axes[0].set_title("F200W PSF (4x oversampled)")
axes[1].imshow(np.clip(model, 1e-6, None), **kw)
axes[1].set_title("4-component mixture")
res = 100 * (target - model) / target.max()
im = axes[2].imshow(res, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
axes[2].set_title("residual [% of peak]")
fig.colorbar(im, ax=axes[2])
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
