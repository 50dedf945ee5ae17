"""astromix: modelling astronomical images with Gaussian mixtures.

See https://astromix.readthedocs.io (the docs/ folder) for the user guide.

The names below (``astromix.GaussianMixture``, ``astromix.fit_scene``, ...) and
the subpackages (``astromix.backends``, ``astromix.data``, ...) are imported on
first use (PEP 562, a module ``__getattr__``), so that ``import astromix``, the
``astromix`` command and the ASDF entry points (which ``asdf`` calls in every
process that uses it, see :mod:`astromix.io.asdf.extension`) do not import
Numba, astropy.modeling and the fitters until something needs them.
``from astromix import *`` and ``dir(astromix)`` list them as before.
"""

import importlib

from .errors import AstromixError, BackendError, InputError

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree without setuptools_scm metadata
    try:
        from importlib.metadata import version as _v
        __version__ = _v("astromix")
    except Exception:
        __version__ = "0.0.0"

#: Public names imported on first use, by the submodule that defines them.
_LAZY = {
    "Exposure": ".data",
    "fit_patches": ".fitting",
    "fit_scene": ".fitting",
    "sample_scene": ".fitting",
    "GaussianMixture": ".mixtures",
    "ExposureWeightedPSF": ".models",
    "GaussianMixturePSF": ".models",
    "MoffatStar": ".models",
    "PointSource": ".models",
    "SceneModel": ".models",
    "SersicMixture": ".models",
    "SersicSource": ".models",
    "StarSource": ".models",
    "AccuracySettings": ".settings",
    "get_default_settings": ".settings",
    "set_default_settings": ".settings",
}

#: Subpackages and modules reachable as attributes (``astromix.backends``) before
#: they have been imported explicitly.
_SUBMODULES = frozenset({"backends", "cli", "data", "datasets", "errors", "fitting", "io",
                         "mixtures", "models", "mosaic", "parallel", "photometry", "psffield",
                         "settings"})

__all__ = ["GaussianMixture", "GaussianMixturePSF", "SersicMixture", "PointSource", "MoffatStar",
           "SceneModel", "SersicSource", "StarSource", "ExposureWeightedPSF", "Exposure",
           "fit_scene", "sample_scene",
           "fit_patches",
           "AccuracySettings", "get_default_settings", "set_default_settings", "AstromixError",
           "InputError", "BackendError", "__version__"]


def __getattr__(name):
    # PEP 562: called only for names not yet in the module's namespace
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
