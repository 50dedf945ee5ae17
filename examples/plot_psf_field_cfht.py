"""
The PSF of a CFHT field from its stars
======================================

ShapePipe's, PSFEx's and Piff's job on the CFHT FOCAM I-band image of Abell 370
shipped with astromix (:func:`astromix.datasets.cfht_a370`): find the stars on
the size-magnitude locus, keep 20% of them in reserve, fit a PSF whose shape
varies across the image (a pixel grid, as PSFEx, and a Gaussian mixture), and
check both on the reserve stars.
"""

# %%
# Stars on the size-magnitude locus
# ---------------------------------
# :func:`~astromix.psffield.detect_sources` detects and measures the sources
# with photutils; :func:`~astromix.psffield.select_stars` finds the stellar
# locus (the mode of the FWHM) and draws a reproducible 20% reserve.
import warnings

import matplotlib.pyplot as plt
import numpy as np
from astropy.io import fits

from astromix.datasets import cfht_a370
from astromix.psffield import (
    detect_sources,
    fit_mixture_psf_field,
    fit_psf_field,
    plot_size_magnitude,
    plot_whiskers,
    select_stars,
    validate_psf_field,
)

image = fits.getdata(cfht_a370()).astype(float)
catalog = select_stars(detect_sources(image, saturation=12000.0), snr_range=(10, None),
                       seed=1)
print(f"{catalog.meta['n_stars']} stars at FWHM {catalog.meta['fwhm_mode']:.2f} px, "
      f"{catalog.meta['n_reserve']} in reserve")
fit_stars = catalog[np.asarray(catalog["selected"], bool)]
reserve = catalog[np.asarray(catalog["reserve"], bool)]
plot_size_magnitude(catalog)

# %%
# Two PSF fields
# --------------
# The pixel model (PSFEx's ``PIXEL`` basis, polynomial degree 2) and the
# Gaussian-mixture model (4 Gaussians whose amplitudes and covariances are
# polynomials of degree 2), fitted to the same stars.
pixel = fit_psf_field(image, fit_stars, size=25, degree=2)
mixture = fit_mixture_psf_field(image, fit_stars, n_components=4, pixel_model=pixel)
print(pixel, f"{pixel.fit_info['time_s']:.2f} s")
print(mixture, f"{mixture.fit_info['time_s']:.2f} s")
psf = mixture.mixture(950.0, 900.0)   # a GaussianMixturePSF, ready for a scene fit
print("mixture at the centre: amplitudes", np.round(psf.mixture.amp, 3))

# %%
# How the PSF changes across the image
# ------------------------------------
# The pixel model at the four corners of the star distribution and at the
# centre, and its difference from the centre's.
corners = [(150, 150), (1750, 150), (950, 900), (150, 1650), (1750, 1650)]
centre = pixel.image(950, 900)
fig, axes = plt.subplots(2, 5, figsize=(12, 5))
for ax_img, ax_diff, (x, y) in zip(axes[0], axes[1], corners):
    img = pixel.image(x, y)
    ax_img.imshow(np.log10(np.clip(img, 1e-5, None)), origin="lower", cmap="viridis")
    ax_img.set_title(f"({x}, {y})", fontsize=9)
    ax_diff.imshow((img - centre) / centre.max(), origin="lower", cmap="RdBu_r",
                   vmin=-0.05, vmax=0.05)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("log10 PSF")
axes[1, 0].set_ylabel("minus centre / peak")
fig.tight_layout()

# %%
# Validation on the reserve stars
# -------------------------------
# Each reserve star is compared with each model (flux and centre fitted):
# GalSim's HSM size and shape residuals and the pixel RMSE.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TreeCorr/HSM chatter on faint stars
    tables = {name: validate_psf_field(image, model, reserve, size=25)
              for name, model in (("pixel", pixel), ("mixture", mixture))}
for name, table in tables.items():
    m = table.meta
    print(f"{name:8s} dsigma/sigma {m['median_dsigma_over_sigma']:+.4f}  "
          f"de1 {m['median_de1']:+.4f}  de2 {m['median_de2']:+.4f}  "
          f"RMSE/peak {m['median_rmse']:.4f}  ({m['n_valid']} stars)")

fig, ax = plt.subplots(figsize=(6, 5))
plot_whiskers(tables["pixel"], ax=ax)
ax.set_title("reserve stars: shapes and residuals (pixel model)")
plt.show()
