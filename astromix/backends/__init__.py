"""Swappable compute backends: NumPy (reference), Numba (CPU), CuPy (GPU).

Every backend implements the same two kernels over a prepared mixture table
(see :mod:`astromix.backends._common`): ``render`` (the pixel-integrated image)
and ``accumulate`` (the sums from which chi2's gradient with respect to every
component's amplitude, centre and covariance is assembled).

The active backend is chosen, in order, by :func:`set_backend` /
:func:`use_backend`, the ``ASTROMIX_BACKEND`` environment variable, and
otherwise ``"numba"`` when Numba imports, else ``"numpy"``.

Examples
--------
>>> from astromix import backends
>>> "numpy" in backends.available_backends()
True
>>> with backends.use_backend("numpy"):
...     backends.get_backend().name
'numpy'
"""

import contextlib
import importlib
import os
import threading

from ..errors import BackendError

__all__ = ["available_backends", "get_backend", "set_backend", "use_backend",
           "KNOWN_BACKENDS"]

#: Backend name -> (module, class).
KNOWN_BACKENDS = {
    "numpy": ("astromix.backends.numpy_backend", "NumpyBackend"),
    "numba": ("astromix.backends.numba_backend", "NumbaBackend"),
    "cupy": ("astromix.backends.cupy_backend", "CupyBackend"),
}

_instances = {}
_errors = {}


class _State(threading.local):
    # the use_backend stack of the calling thread; the class attribute None is what a
    # thread sees before its first use_backend (getattr with a default on a plain
    # threading.local costs ~0.3 us per missing-attribute lookup, a tenth of a small
    # float32 stamp's render through GaussianMixture.render)
    stack = None


_state = _State()
_global = {"name": None}


def _load(name):
    if name not in KNOWN_BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(KNOWN_BACKENDS)}")
    if name in _instances:
        return _instances[name]
    if name in _errors:
        raise BackendError(f"backend {name!r} is not available: {_errors[name]}")
    module, cls = KNOWN_BACKENDS[name]
    try:
        backend = getattr(importlib.import_module(module), cls)()
    except Exception as exc:  # ImportError, CUDA errors, ...
        _errors[name] = f"{type(exc).__name__}: {exc}"
        raise BackendError(f"backend {name!r} is not available: {_errors[name]}") from None
    _instances[name] = backend
    return backend


def available_backends():
    """Names of the backends that can be used on this machine.

    Returns
    -------
    list of str
        A subset of ``["numpy", "numba", "cupy"]``, in that order.  ``"cupy"``
        is listed only when CuPy imports and a CUDA device is present.
    """
    names = []
    for name in KNOWN_BACKENDS:
        try:
            _load(name)
        except BackendError:
            continue
        names.append(name)
    return names


def _default_name():
    env = os.environ.get("ASTROMIX_BACKEND", "").strip().lower()
    if env:
        return env
    try:
        _load("numba")
        return "numba"
    except BackendError:
        return "numpy"


def get_backend(name=None):
    """Return a backend object (with ``.name``).

    Parameters
    ----------
    name : str, optional
        A backend name; by default the active backend.

    Raises
    ------
    BackendError
        If the backend is unknown or cannot be used here (the message says why).
    """
    if name is not None:
        return _load(name)
    stack = _state.stack
    if stack:
        return stack[-1]
    if _global["name"] is None:
        _global["name"] = _default_name()
    return _load(_global["name"])


def set_backend(name):
    """Make ``name`` the active backend for the whole process.

    Raises
    ------
    BackendError
        If the backend is unknown or unavailable; the active backend is unchanged.
    """
    backend = _load(name)
    _global["name"] = backend.name
    return backend


@contextlib.contextmanager
def use_backend(name):
    """Context manager: use backend ``name`` inside the ``with`` block (this thread).

    Raises
    ------
    BackendError
        If the backend is unknown or unavailable.
    """
    backend = _load(name)
    stack = _state.stack
    if stack is None:
        stack = _state.stack = []
    stack.append(backend)
    try:
        yield backend
    finally:
        stack.pop()
