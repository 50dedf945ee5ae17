"""astropy.modeling models built on Gaussian mixtures."""

from .psf import GaussianMixturePSF

__all__ = ["GaussianMixturePSF"]
