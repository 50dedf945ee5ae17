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
``Convolve(Sersic, PSF).drawImage(method="auto")``.
"""

import galsim
import matplotlib.pyplot as plt
import numpy as np

from astromix import GaussianMixture, SersicMixture
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
