"""Tests of the ``astromix`` package namespace: its names are imported on first use.

Each test runs a fresh interpreter (``sys.executable -c``), since the test process
has long imported every astromix module.
"""

import json
import subprocess
import sys

import pytest

import astromix


def _run(code):
    """Run ``code`` in a fresh interpreter and return what it printed, parsed as JSON."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


#: Heavy modules that neither ``import astromix`` nor asdf's use of the entry points
#: may import.
_HEAVY = ["numba", "astromix.mixtures", "astromix.models", "astromix.fitting",
          "astromix.backends", "astromix.data", "scipy.optimize"]


def test_import_is_light():
    loaded = _run(f"""
import sys, json
import astromix
print(json.dumps([m for m in {_HEAVY!r} if m in sys.modules] + [astromix.__version__]))
""")
    assert loaded == [astromix.__version__]


def test_asdf_entry_points_do_not_import_astromix():
    # asdf calls the entry points the first time its configuration is used, in every
    # process that uses asdf: that must not cost the import of all of astromix
    # (numba, the models, the fitters; ~0.8 s before the names became lazy)
    loaded = _run("""
import sys, json
import asdf
exts = asdf.get_config().extensions
uris = [e.extension_uri for e in exts]
mods = ["numba", "astromix.mixtures", "astromix.models", "astromix.fitting",
        "astromix.backends", "astromix.data"]
print(json.dumps([[m for m in mods if m in sys.modules],
                  "asdf://astromix.org/astromix/extensions/astromix-1.0.0" in uris]))
""")
    assert loaded == [[], True]


def test_lazy_names_resolve_to_their_definitions():
    from astromix import fitting, mixtures, models, settings
    from astromix.data import exposure

    assert astromix.GaussianMixture is mixtures.GaussianMixture
    assert astromix.SceneModel is models.SceneModel
    assert astromix.Exposure is exposure.Exposure
    assert astromix.fit_scene is fitting.fit_scene
    assert astromix.AccuracySettings is settings.AccuracySettings
    for name in astromix.__all__:
        assert getattr(astromix, name) is not None, name


def test_star_import_and_submodules_in_a_fresh_process():
    got = _run("""
import json
import astromix
names = {}
exec("from astromix import *", names)
print(json.dumps([sorted(n for n in astromix.__all__ if n not in names),
                  astromix.backends.get_backend().name in astromix.backends.available_backends(),
                  astromix.GaussianMixture.__module__,
                  sorted(set(astromix.__all__) - set(dir(astromix)))]))
""")
    assert got == [[], True, "astromix.mixtures", []]


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="has no attribute 'GaussianMixtures'"):
        astromix.GaussianMixtures  # noqa: B018
    assert not hasattr(astromix, "numpy_backend")
    assert "backends" in dir(astromix) and "GaussianMixture" in dir(astromix)
