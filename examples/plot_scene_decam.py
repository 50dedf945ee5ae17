"""
Fitting a galaxy in eight DECam exposures
=========================================

The main job of astromix: fit sources jointly in every exposure that covers
them, each exposure with its own WCS, noise, PSF and zero point.  The data are
eight DECam community-pipeline exposures (g x3, r x2, z x3; 2014-2018; Legacy
Surveys DR9) of a red galaxy and a faint neighbour, shipped with astromix
(:func:`astromix.datasets.decam_multiexposure`).  This is what ``astromix demo``
runs.
"""

# %%
# Exposures and their PSFs
# ------------------------
# :meth:`astromix.Exposure.from_fits` reads each image with its inverse-variance
# and data-quality siblings and its TPV WCS.  The PSFEx model of each exposure
# (:func:`astromix.io.psfex.read_psfex`) becomes a 6-Gaussian mixture at the
# galaxy.  Fluxes will be in nanomaggies (AB 22.5): each exposure's zero point
# converts them to ADU.  The images still contain the sky; we subtract the
# Legacy Surveys' CCD-wide sky level (``meta["sky"]``), as legacypipe does.
import matplotlib.pyplot as plt
import numpy as np

from astromix.cli.demo import detect_catalog, load_decam_exposures
from astromix.fitting import fit_scene
from astromix.models.scene import SceneModel

exposures = load_decam_exposures(psf_components=6, progress=False)
for e in exposures:
    print(f"{e.name}  band {e.band}  {e.data.shape}  zero point {e.zeropoint:.2f}  "
          f"sky {e.meta['sky']:.1f} ADU")

# %%
# A starting catalog and the scene
# --------------------------------
# photutils finds the two sources on a z-band image; the galaxy is a Sersic
# profile, the neighbour (too faint to resolve: a point source is preferred by
# the BIC in ``astromix demo``) a point source.
catalog = detect_catalog(exposures[3])[:2]
catalog["kind"] = ["sersic", "star"]
catalog["n"] = [2.0, 1.0]
scene = SceneModel.from_catalog(catalog, bands=("g", "r", "z"), zeropoint=22.5)
print(scene.param_names)

# %%
# The joint fit
# -------------
# L-BFGS-B on the chi2 summed over the eight exposures, with its analytic
# gradient from the backend kernels; errors from the inverse Hessian.
fitted, result = fit_scene(scene, exposures, background=[e.meta["sky"] for e in exposures],
                           progress=False)
result["id", "kind", "flux_g", "flux_err_g", "flux_r", "flux_err_r", "flux_z",
       "flux_err_z", "r_eff", "n", "ellip"].pprint(max_width=200)
print(fitted.fit_info["exposures"]["name", "band", "chi2_dof"])

# %%
# Data, model and residuals
# -------------------------
# One row per exposure: the sky-subtracted image, the scene rendered in that
# exposure's pixels (its own WCS and PSF), and the residual in units of the
# noise.  The remaining structure at the galaxy's core comes from the PSF
# models and the exposures' astrometry (a few hundredths of an arcsec).
fig, axes = plt.subplots(len(exposures), 3, figsize=(6.5, 2.0 * len(exposures)),
                         layout="constrained")
for row, e, bg in zip(axes, exposures, fitted.fit_info["exposures"]["background"]):
    model = fitted.render(e)
    data = e.data - bg
    chi = (data - model) * np.sqrt(e.weight)
    vmax = np.percentile(data, 99.7)
    row[0].imshow(data, origin="lower", cmap="gray_r", vmin=-0.05 * vmax, vmax=vmax)
    row[1].imshow(model, origin="lower", cmap="gray_r", vmin=-0.05 * vmax, vmax=vmax)
    row[2].imshow(chi, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
    row[0].set_ylabel(f"{e.band}: {e.name[4:17]}", fontsize=7)
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_title("data - sky")
axes[0, 1].set_title("model")
axes[0, 2].set_title("(data - model) / sigma")
plt.show()
