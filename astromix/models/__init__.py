"""astropy.modeling models built on Gaussian mixtures."""

from .moffat import MoffatStar
from .psf import GaussianMixturePSF
from .scene import SceneModel, SersicSource, StarSource
from .sersic import PointSource, SersicMixture

__all__ = ["GaussianMixturePSF", "MoffatStar", "PointSource", "SceneModel", "SersicMixture",
           "SersicSource", "StarSource"]
