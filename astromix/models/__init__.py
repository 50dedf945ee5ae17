"""astropy.modeling models built on Gaussian mixtures."""

from .psf import GaussianMixturePSF
from .sersic import PointSource, SersicMixture

__all__ = ["GaussianMixturePSF", "PointSource", "SersicMixture"]
