"""astropy.modeling models built on Gaussian mixtures."""

from ..mosaic import ExposureWeightedPSF
from .moffat import MoffatStar
from .psf import GaussianMixturePSF
from .scene import SceneModel, SersicSource, StarSource
from .sersic import PointSource, SersicMixture

__all__ = ["ExposureWeightedPSF", "GaussianMixturePSF", "MoffatStar", "PointSource", "SceneModel",
           "SersicMixture", "SersicSource", "StarSource"]
