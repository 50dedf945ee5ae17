"""
How accurate is the pixel integration?
======================================

astromix integrates every Gaussian over the pixel box analytically, to fourth
order in the box's cumulants (see :class:`~astromix.AccuracySettings`).  Here
the error of each ``pixel_integration`` mode is measured against GalSim's exact
``drawImage`` (a real-space convolution with the pixel) for Gaussians of
decreasing size, round and elongated, and plotted in units of the peak.  The
dashed line is the 2e-3 target; the kurtosis correction (the default) keeps
below it down to a minor-axis sigma of ~0.65 px for a round Gaussian and
~0.55 px for an elongated one, wherever it is centred (the worst case is a
Gaussian centred on a pixel).
"""

import galsim
import matplotlib.pyplot as plt
import numpy as np

from astromix import AccuracySettings, GaussianMixture


def gaussian_pair(sigma_minor, q, beta, x, y, shape):
    """The same sheared Gaussian from astromix and from GalSim (exact pixel integral)."""
    a2, b2 = sigma_minor ** 2 / q ** 2, sigma_minor ** 2     # major / minor variances
    c, s = np.cos(beta), np.sin(beta)
    rot = np.array([[c, -s], [s, c]])
    mixture = GaussianMixture([1.0], [[x, y]], [rot @ np.diag([a2, b2]) @ rot.T])
    sigma = np.sqrt(np.sqrt(a2 * b2))                       # GalSim's area-preserving sigma
    prof = galsim.Gaussian(sigma=sigma).shear(q=q, beta=beta * galsim.radians)
    image = galsim.ImageD(shape[1], shape[0], scale=1.0)
    offset = (x - (shape[1] - 1) / 2, y - (shape[0] - 1) / 2)
    return mixture, prof.drawImage(image=image, method="auto", offset=offset).array


###############################################################################
# Error against GalSim as a function of the minor-axis sigma
# ----------------------------------------------------------
# Worst case over a few sub-pixel centres, for a round Gaussian (q = 1) and an
# elongated one (q = 0.4) whose minor axis is aligned with the pixel grid
# (beta = 0), where the pixel box matters most.

sigmas = np.unique(np.concatenate([np.geomspace(0.35, 4.0, 12), [0.5, 0.55, 0.6, 0.65]]))
modes = ["kurtosis", "variance", "none"]
rng = np.random.default_rng(3)
# a Gaussian centred on a pixel (the worst case), on a pixel corner, and four at random
centres = np.vstack([[0.0, 0.0], [0.5, 0.5], rng.uniform(-0.5, 0.5, (4, 2))])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
for ax, q in zip(axes, [1.0, 0.4]):
    for mode in modes:
        settings = AccuracySettings(pixel_integration=mode)
        errors = []
        for sm in sigmas:
            shape = (int(12 * sm / q) + 11,) * 2
            worst = 0.0
            for dx, dy in centres:
                x, y = shape[1] / 2 + dx, shape[0] / 2 + dy
                mix, truth = gaussian_pair(sm, q, 0.0, x, y, shape)
                err = np.abs(mix.render(shape, settings=settings) - truth).max() / truth.max()
                worst = max(worst, err)
            errors.append(worst)
        ax.loglog(sigmas, errors, "o-", ms=3, label=mode)
        if mode == "kurtosis":
            ok = sigmas[np.array(errors) <= 2e-3]
            print(f"q = {q}: kurtosis error <= 2e-3 of the peak "
                  f"for sigma_minor >= {ok.min():.2f} px")
    ax.axhline(2e-3, ls="--", c="k", lw=0.8)
    ax.set_title(f"axis ratio q = {q}")
    ax.set_xlabel("minor-axis sigma [px]")
axes[0].set_ylabel("max |astromix - GalSim| / peak")
axes[0].legend(title="pixel_integration")
fig.tight_layout()
plt.show()
