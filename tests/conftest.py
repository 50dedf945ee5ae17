"""Shared test set-up: the backend under test comes from ASTROMIX_BACKEND (set by tox)."""

import os

import numpy as np
import pytest

from astromix import GaussianMixture
from astromix.backends import available_backends, get_backend
from astromix.errors import BackendError

SELECTED = os.environ.get("ASTROMIX_BACKEND", "").strip().lower() or None


def _selected_problem():
    if SELECTED is None:
        return None
    try:
        get_backend(SELECTED)
    except BackendError as exc:
        return str(exc)
    return None


def pytest_report_header(config):
    name = SELECTED or get_backend().name
    problem = _selected_problem()
    return [f"astromix backend: {name}" + (f" (UNAVAILABLE: {problem})" if problem else ""),
            f"astromix available backends: {', '.join(available_backends())}"]


def pytest_collection_modifyitems(config, items):
    """Skip everything when the backend chosen by ASTROMIX_BACKEND cannot run here
    (e.g. ``tox -e test-cupy`` on a machine without CuPy or a GPU)."""
    problem = _selected_problem()
    if problem:
        skip = pytest.mark.skip(reason=f"ASTROMIX_BACKEND={SELECTED}: {problem}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture
def backend():
    """Name of the backend under test (the active one)."""
    return get_backend().name


def to_numpy(x):
    """``x`` as a NumPy array: a CuPy array (a render with the CuPy backend) is copied to
    the host, anything else goes through ``np.asarray``.  CuPy is not imported."""
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def centred_tan_wcs(scale, n, *, crval):
    """A north-up TAN WCS of ``scale`` [arcsec/px] with ``crval`` (ra, dec) [deg] at the centre
    of an n x n image."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    return w


def random_mixture(rng, k, shape, *, sigma_range=(0.5, 6.0), margin=-3.0, negative=False):
    """A random mixture in an image of ``shape``; ``margin < 0`` lets centres leave it."""
    ny, nx = shape
    amp = rng.uniform(0.2, 2.0, k)
    if negative:
        amp[::3] *= -0.3
    mean = np.column_stack([rng.uniform(margin, nx - 1 - margin, k),
                            rng.uniform(margin, ny - 1 - margin, k)])
    s1 = np.exp(rng.uniform(*np.log(sigma_range), k))
    s2 = s1 * rng.uniform(0.3, 1.0, k)
    th = rng.uniform(0, np.pi, k)
    c, s = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    cov = rot @ (np.stack([s1 ** 2, s2 ** 2], -1)[..., None] * np.eye(2)) @ np.swapaxes(rot, 1, 2)
    return GaussianMixture(amp, mean, cov)


def assert_fit_deriv_matches(model, x, y, *, rtol=1e-6, atol=0.0):
    """A model's analytic ``fit_deriv`` against central differences of ``evaluate``.

    Each derivative must lie within ``rtol * max|numerical| + atol`` of the
    numerical one (step 1e-6 of the parameter, at least 1e-6).
    """
    p0 = model.parameters.copy()
    derivs = model.fit_deriv(x, y, *p0)
    assert len(derivs) == len(p0)
    for i, name in enumerate(model.param_names):
        h = 1e-6 * max(1.0, abs(p0[i]))
        up, down = p0.copy(), p0.copy()
        up[i] += h
        down[i] -= h
        num = (model.evaluate(x, y, *up) - model.evaluate(x, y, *down)) / (2 * h)
        assert np.abs(derivs[i] - num).max() <= rtol * np.abs(num).max() + atol, name
