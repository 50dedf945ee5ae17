"""
Fitting a Sersic profile to an HST COSMOS galaxy
================================================

Fit a PSF-convolved Sersic profile to the HST ACS/WFC F814W image of the
COSMOS galaxy 147246 (0.03 arcsec/px, shipped with astromix from GalSim's
example data) in three steps:

1. fit a Gaussian mixture to the PSF image with
   :func:`astromix.fitting.fit_psf_mixture`;
2. build a :class:`~astromix.SersicMixture` convolved with it,
   start from the image moments and fit its seven parameters with
   :class:`astromix.fitting.MixtureLSQFitter` (analytic Jacobian);
3. fit the same data with the usual astropy recipe as a peer: an
   :class:`astropy.modeling.models.Sersic2D` convolved with the PSF image by
   FFT inside a custom model, fitted with astropy's ``TRFLSQFitter`` (finite
   differences) from the same start,

and compare the fit times and chi2.  The galaxy is a faint spiral: one
Sersic profile leaves its arms and clumps in the residual, in both fits.
"""

import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from astropy.modeling import Fittable2DModel, Parameter
from astropy.modeling.fitting import TRFLSQFitter
from astropy.modeling.models import Sersic2D
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.special import gamma, gammaincinv

from astromix import SersicMixture
from astromix.datasets import load_cosmos_galaxy
from astromix.fitting import MixtureLSQFitter, fit_psf_mixture

image, psf_image, header = load_cosmos_galaxy()
ny, nx = image.shape
y, x = np.mgrid[:ny, :nx].astype(np.float64)
print(f"COSMOS {header['IDENT']}, {header['FILTER']}, {nx}x{ny} px at "
      f"{header['PIXSCALE']} arcsec/px; PSF {psf_image.shape[1]}x{psf_image.shape[0]}")

###############################################################################
# Sky level and noise
# -------------------
# The stamp is sky-subtracted and other objects are masked with noise; the
# sky level and the noise per pixel are estimated robustly (sigma clipping)
# away from the galaxy.  The weights of both fits are 1 / sigma.

r_centre = np.hypot(x - nx // 2, y - ny // 2)
_, sky, sigma = sigma_clipped_stats(image, mask=r_centre < 80, sigma=3.0)
print(f"sky {sky:.2e}, sigma {sigma:.2e} per pixel")

###############################################################################
# The fits use the central 151x151 pixels (99.7% of the flux in the stamp),
# which keeps this example fast.

cut = slice(25, 176)
data = image[cut, cut] - sky
ny, nx = data.shape
y, x = np.mgrid[:ny, :nx].astype(np.float64)
weights = np.full(data.shape, 1.0 / sigma)

###############################################################################
# 1. A Gaussian-mixture PSF
# -------------------------
# Three Gaussians fitted to the 101x101 PSF image (science pixels:
# ``oversampling=1``).  The mixture's origin is the centre of the PSF image,
# pixel (50, 50), as in forcepho's ``make_psf`` (``fit_info["center"]``).

t0 = time.perf_counter()
psf = fit_psf_mixture(psf_image, 3, oversampling=1, rng=1)
t_psf = time.perf_counter() - t0
info = psf.fit_info
print(f"PSF mixture: max|res|/peak {info['max_residual_over_peak']:.3f}, "
      f"sum|res|/flux {info['l1_residual_over_flux']:.3f}, {t_psf:.2f} s")
print("  sigma [px] of the components:",
      np.round(np.sqrt(np.linalg.eigvalsh(psf.mixture.cov)).mean(axis=1), 2))

###############################################################################
# A start from the image moments
# ------------------------------
# The galaxy's pixels are found as in a source extractor: the image smoothed by
# a Gaussian, thresholded at 3 times its own noise, and the connected region
# holding the peak kept.  Their flux-weighted centroid and second moments (the
# PSF's second moments subtracted) give the centre, size and shape; for a
# Gaussian profile the half-light radius is 1.18 sigma.


def moments_start(img):
    """flux, x_0, y_0, r_eff, ellip, theta from the moments of the galaxy's pixels."""
    smooth = ndimage.gaussian_filter(img, 2.0)
    noise = sigma_clipped_stats(smooth)[2]
    segments, _ = ndimage.label(smooth > 3 * noise)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    w = np.where(segments == segments[peak], img, 0.0)
    f = w.sum()
    xc, yc = (w * x).sum() / f, (w * y).sum() / f
    dx, dy = x - xc, y - yc
    cov = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()],
                    [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / f
    cov = cov - psf.mixture.moments()[2]      # remove the PSF's own second moments
    evals, evecs = np.linalg.eigh(cov)
    major, minor = np.sqrt(evals[::-1])
    theta = np.arctan2(evecs[1, 1], evecs[0, 1])
    theta = (theta + np.pi / 2) % np.pi - np.pi / 2
    return img.sum(), xc, yc, 1.18 * major, 1.0 - minor / major, theta


flux0, x0, y0, reff0, ellip0, theta0 = moments_start(data)
n0 = 1.5
print(f"start: flux {flux0:.2f}, centre ({x0:.2f}, {y0:.2f}), r_eff {reff0:.2f} px, "
      f"n {n0}, ellip {ellip0:.3f}, theta {np.degrees(theta0):.1f} deg")

###############################################################################
# 2. astromix: SersicMixture with MixtureLSQFitter
# ------------------------------------------------
# The model is a Gaussian mixture (the Sersic profile's mixture times each PSF
# component, pixel-integrated); its Jacobian is analytic.

start = SersicMixture(flux0, x0, y0, reff0, n0, ellip0, theta0, psf=psf)
fitter = MixtureLSQFitter()
t0 = time.perf_counter()
fit = fitter(start, x, y, data, weights=weights)
t_astromix = time.perf_counter() - t0
model_astromix = fit(x, y)
chi2_astromix = float(np.sum(((data - model_astromix) / sigma) ** 2))
std = fit.fit_info["param_std"]
print(f"astromix fit: {t_astromix:.2f} s, {fit.fit_info['nfev']} evaluations, "
      f"chi2/dof {chi2_astromix / fit.fit_info['dof']:.3f}")
for name in fit.param_names:
    print(f"  {name:6s} {getattr(fit, name).value:10.4f} +- {std[name]:.4f}")

###############################################################################
# 3. The astropy peer: Sersic2D convolved by FFT, TRFLSQFitter
# ------------------------------------------------------------
# ``Sersic2D`` is sampled at pixel centres (no pixel integration) and
# convolved with the PSF image by FFT at every evaluation; ``TRFLSQFitter``
# differentiates it numerically.  Its ``amplitude`` is the surface brightness
# at ``r_eff``, not the flux: total flux =
# ``amplitude * 2 pi n r_eff^2 (1 - ellip) exp(b_n) Gamma(2n) / b_n^(2n)``.


def sersic_flux_factor(r_eff, n, ellip):
    """Total flux of a Sersic2D profile of unit ``amplitude``."""
    b = gammaincinv(2 * n, 0.5)
    return 2 * np.pi * n * r_eff ** 2 * (1 - ellip) * np.exp(b) * gamma(2 * n) / b ** (2 * n)


class FFTConvolvedSersic2D(Fittable2DModel):
    """astropy's Sersic2D convolved with a PSF image by FFT (x, y: a pixel grid)."""

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


# mode="same" centres the PSF image on its pixel (50, 50); the mixture's origin
# is fit_info["center"] (the same pixel by default; the components' centroid with
# center="moments"): shift the peer's start (and result) by any difference.
psf_offset = psf.fit_info["center"] - np.array([50.0, 50.0])
peer_start = FFTConvolvedSersic2D(
    psf_image, amplitude=flux0 / sersic_flux_factor(reff0, n0, ellip0), r_eff=reff0, n=n0,
    x_0=x0 - psf_offset[0], y_0=y0 - psf_offset[1], ellip=ellip0, theta=theta0)
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # astropy warns when the fit does not converge
    peer = TRFLSQFitter()(peer_start, x, y, data, weights=weights, maxiter=200)
t_peer = time.perf_counter() - t0
model_peer = peer(x, y)
chi2_peer = float(np.sum(((data - model_peer) / sigma) ** 2))
peer_flux = peer.amplitude.value * sersic_flux_factor(peer.r_eff.value, peer.n.value,
                                                      peer.ellip.value)
print(f"astropy fit: {t_peer:.2f} s, chi2/dof {chi2_peer / fit.fit_info['dof']:.3f}")

###############################################################################
# The two fits side by side
# -------------------------
# Position angles are folded into [-90, 90) degrees; the peer's centre is
# given in the mixture's convention (shifted by the PSF image's offset).


def fold(theta):
    return (np.degrees(theta) + 90.0) % 180.0 - 90.0


rows = [("flux", fit.flux.value, peer_flux),
        ("x_0 [px]", fit.x_0.value, peer.x_0.value + psf_offset[0]),
        ("y_0 [px]", fit.y_0.value, peer.y_0.value + psf_offset[1]),
        ("r_eff [px]", fit.r_eff.value, peer.r_eff.value),
        ("n", fit.n.value, peer.n.value),
        ("ellip", fit.ellip.value, peer.ellip.value),
        ("theta [deg]", fold(fit.theta.value), fold(peer.theta.value)),
        ("chi2", chi2_astromix, chi2_peer),
        ("fit time [s]", t_astromix, t_peer)]
print(f"{'':14s} {'astromix':>12s} {'astropy+FFT':>12s}")
for name, a, b in rows:
    print(f"{name:14s} {a:12.4f} {b:12.4f}")
print(f"fit time astropy+FFT / astromix: {t_peer / t_astromix:.2f}; "
      f"chi2 astropy+FFT - astromix: {chi2_peer - chi2_astromix:+.1f} on {data.size} pixels")

###############################################################################
# Data, model and residual
# ------------------------
# An arcsinh stretch shows the faint outskirts; residuals are in units of the
# sky noise.

fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
stretch = dict(origin="lower", cmap="magma", vmin=-0.5, vmax=np.arcsinh(data.max() / sigma))
resid = dict(origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
for row, (label, model) in enumerate((("astromix", model_astromix),
                                      ("astropy + FFT", model_peer))):
    axes[row, 0].imshow(np.arcsinh(data / sigma), **stretch)
    axes[row, 0].set_title("COSMOS 147246, F814W")
    axes[row, 1].imshow(np.arcsinh(model / sigma), **stretch)
    axes[row, 1].set_title(f"{label} Sersic model")
    im = axes[row, 2].imshow((data - model) / sigma, **resid)
    axes[row, 2].set_title(f"residual / sigma, chi2/dof "
                           f"{np.sum(((data - model) / sigma) ** 2) / fit.fit_info['dof']:.2f}")
    fig.colorbar(im, ax=axes[row, 2], shrink=0.8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
