"""
How accurate are the Sersic mixtures?
=====================================

astromix writes a Sersic profile as 20 Gaussians whose amplitudes and
variances are smooth functions of the index n (the table of
:class:`astromix.models.sersic_table.SersicMixtureTable`, made by
``scripts/make_sersic_table.py``).  This example plots the fractional error of
the radial profile, ``mixture / exact - 1``, for several n (including values
between the table's nodes), and then compares a PSF-convolved, pixel-integrated
:class:`~astromix.SersicMixture` with GalSim's exact
``Convolve(Sersic, PSF).drawImage(method="auto")``, and shows what merging the
components that the PSF blurs together costs in accuracy and saves in time.
"""

import time

import galsim
import matplotlib.pyplot as plt
import numpy as np

from astromix import AccuracySettings, GaussianMixture, SersicMixture
from astromix.models.sersic_table import radial_profile, sersic_profile

###############################################################################
# Radial profile: fractional error over 0.05 <= r / r_eff <= 4
# ------------------------------------------------------------

r = np.geomspace(0.05, 4.0, 400)
fig, ax = plt.subplots(figsize=(6, 3.8))
print(" n     median |err|   max |err|")
for n in (0.5, 0.77, 1.0, 1.93, 3.0, 4.0, 6.0):
    err = radial_profile(n, r) / sersic_profile(n, r) - 1
    print(f"{n:4.2f}   {np.median(np.abs(err)):.2e}      {np.abs(err).max():.2e}")
    ax.loglog(r, np.abs(err) + 1e-12, label=f"n = {n}")
ax.axhline(1e-2, c="k", ls="--", lw=0.8)
ax.axhline(1e-3, c="k", ls=":", lw=0.8)
ax.set_xlabel("r / r_eff")
ax.set_ylabel("|mixture / Sersic - 1|")
ax.set_ylim(1e-9, 1e-1)
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()

###############################################################################
# Against GalSim: PSF-convolved and pixel-integrated
# ---------------------------------------------------
# A two-Gaussian PSF (sigma 1 and 2.2 px); GalSim's half-light radius is the
# circularised one, r_eff * sqrt(q).

psf = GaussianMixture([0.6, 0.4], [[0, 0], [0, 0]], [np.eye(2) * 1.0, np.eye(2) * 2.2 ** 2])
gpsf = galsim.Add([galsim.Gaussian(sigma=1.0, flux=0.6), galsim.Gaussian(sigma=2.2, flux=0.4)])
y, x = np.mgrid[:64, :64]
rows = []
for n in (0.5, 1.0, 2.0, 4.0):
    for r_eff, q in ((1.5, 1.0), (3.0, 0.6), (6.0, 0.8)):
        gal = SersicMixture(1.0, 31.6, 32.2, r_eff, n, 1 - q, 0.4, psf=psf)
        prof = galsim.Sersic(n, half_light_radius=r_eff * np.sqrt(q)).shear(
            q=q, beta=0.4 * galsim.radians)
        truth = galsim.Convolve(prof, gpsf).drawImage(
            nx=64, ny=64, scale=1.0, method="auto", dtype=np.float64,
            offset=(31.6 - 31.5, 32.2 - 31.5)).array
        rows.append((n, r_eff, q, np.abs(gal(x, y) - truth).max() / truth.max()))
print("\n n    r_eff   q    max |astromix - GalSim| / peak")
for n, r_eff, q, err in rows:
    print(f"{n:3.1f}   {r_eff:4.1f}   {q:3.1f}   {err:.2e}")

###############################################################################
# Merging the components the PSF blurs together
# ---------------------------------------------
# Convolved with a 3-Gaussian PSF, the 20 galaxy components give 60 Gaussians,
# many of them nearly identical.  ``AccuracySettings.merge_tolerance`` (default
# 1e-5 of the peak) merges them, keeping amplitudes and second moments; the
# image changes by less than the tolerance and renders faster.

psf3 = GaussianMixture([0.5, 0.3, 0.2], np.zeros((3, 2)),
                       [np.eye(2) * 1.0, np.eye(2) * 4.0, np.eye(2) * 9.0])
tolerances = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
print("\n n   tolerance  Gaussians  max change / peak  render [us]")
for n in (1.0, 4.0):
    counts, changes = [], []
    full = SersicMixture(1.0, 31.7, 31.2, 4.0, n, 0.3, 0.5, psf=psf3,
                         settings=AccuracySettings(merge_tolerance=0)).mixture()
    ref = full.render((64, 64))
    for tol in tolerances:
        mix = SersicMixture(1.0, 31.7, 31.2, 4.0, n, 0.3, 0.5, psf=psf3,
                            settings=AccuracySettings(merge_tolerance=tol)).mixture()
        change = np.abs(mix.render((64, 64)) - ref).max() / ref.max()
        t0 = time.perf_counter()
        for _ in range(200):
            mix.render((64, 64))
        dt = (time.perf_counter() - t0) / 200
        counts.append(len(mix))
        changes.append(change)
        print(f"{n:3.1f}   {tol:7.0e}    {len(mix):5d}       {change:9.1e}        {dt * 1e6:6.1f}")
    axes[0].plot(tolerances[1:], counts[1:], "o-", label=f"n = {n:g}")
    axes[1].loglog(tolerances[1:], np.maximum(changes[1:], 1e-12), "o-", label=f"n = {n:g}")
axes[0].axhline(60, c="k", ls=":", lw=0.8)
axes[0].set_xscale("log")
axes[0].set_xlabel("merge_tolerance")
axes[0].set_ylabel("Gaussians (60 unmerged)")
axes[1].loglog(tolerances[1:], tolerances[1:], "k--", lw=0.8, label="tolerance")
axes[1].set_xlabel("merge_tolerance")
axes[1].set_ylabel("max |merged - unmerged| / peak")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
