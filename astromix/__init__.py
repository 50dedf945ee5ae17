"""astromix: modelling astronomical images with Gaussian mixtures.

See https://astromix.readthedocs.io (the docs/ folder) for the user guide.
"""

from .data import Exposure
from .errors import AstromixError, BackendError, InputError
from .fitting import fit_patches, fit_scene, sample_scene
from .mixtures import GaussianMixture
from .models import (
    ExposureWeightedPSF,
    GaussianMixturePSF,
    MoffatStar,
    PointSource,
    SceneModel,
    SersicMixture,
    SersicSource,
    StarSource,
)
from .settings import AccuracySettings, get_default_settings, set_default_settings

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree without setuptools_scm metadata
    try:
        from importlib.metadata import version as _v
        __version__ = _v("astromix")
    except Exception:
        __version__ = "0.0.0"

__all__ = ["GaussianMixture", "GaussianMixturePSF", "SersicMixture", "PointSource", "MoffatStar",
           "SceneModel", "SersicSource", "StarSource", "ExposureWeightedPSF", "Exposure",
           "fit_scene", "sample_scene",
           "fit_patches",
           "AccuracySettings", "get_default_settings", "set_default_settings", "AstromixError",
           "InputError", "BackendError", "__version__"]
