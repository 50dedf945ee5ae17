"""Swappable compute backends: NumPy (reference), Numba (CPU), CuPy (GPU).

Every backend implements the same two kernels over a prepared mixture table
(see :mod:`astromix.backends._common`): ``render`` (the pixel-integrated image)
and ``accumulate`` (the sums from which chi2's gradient with respect to every
component's amplitude, centre and covariance is assembled).

The active backend is, in order of precedence: that of the innermost
:func:`use_backend` block of the calling thread, the one given to
:func:`set_backend`, the one named by the ``ASTROMIX_BACKEND`` environment
variable, and otherwise ``"numba"`` when Numba imports, else ``"numpy"``.
Names are case-insensitive.

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
import contextvars
import importlib
import os

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


#: The open use_backend blocks of the calling context, innermost last: a tuple of
#: (block token, backend).  A context variable, so each thread and each asyncio task
#: has its own; each block removes its own entry on leaving, so blocks left out of
#: order (generators, tasks) restore the right backend.  (A threading.local stack
#: popped from the top had given one task's backend to another.)  get() costs
#: ~40 ns, as the thread-local lookup it replaced.
_blocks = contextvars.ContextVar("astromix_use_backend", default=())
_global = {"name": None}


def _load(name):
    if name not in KNOWN_BACKENDS:
        # case and surrounding spaces do not matter ("NumPy", " numba"), as in
        # ASTROMIX_BACKEND; the exact names take the fast path above
        key = name.strip().lower() if isinstance(name, str) else None
        if key not in KNOWN_BACKENDS:
            raise BackendError(f"unknown backend {name!r}; known: {', '.join(KNOWN_BACKENDS)}")
        name = key
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

    Each backend of ``KNOWN_BACKENDS`` is loaded (imported and instantiated)
    once per process; one that fails to load is not listed, and is not tried
    again by later calls (nor by :func:`get_backend`, which then raises).

    Returns
    -------
    list of str
        A subset of ``["numpy", "numba", "cupy"]``, in that order.  ``"numba"``
        is listed when Numba imports; ``"cupy"`` only when CuPy imports, a CUDA
        device of compute capability >= 6.0 is present and the kernels compile.
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
    name : {"numpy", "numba", "cupy"}, optional
        A backend name (case and surrounding spaces ignored).  By default
        (None) the active backend: that of the innermost :func:`use_backend`
        block of the calling thread, else the one last given to
        :func:`set_backend`, else the one named by the ``ASTROMIX_BACKEND``
        environment variable (read at the first call that needs it, and again
        until it names a backend that loads; later changes have no effect), else
        ``"numba"`` when Numba imports, else ``"numpy"``.

    Returns
    -------
    backend : astromix.backends._common.Backend
        The backend's single instance for this process (``NumpyBackend``,
        ``NumbaBackend`` or ``CupyBackend``); ``backend.name`` is its name.

    Raises
    ------
    BackendError
        If the backend is unknown (``name`` or ``ASTROMIX_BACKEND`` is not one
        of the names above) or cannot be used here: its module fails to import
        or its constructor fails (e.g. CuPy without a CUDA device).  The
        message says why.
    """
    if name is not None:
        return _load(name)
    blocks = _blocks.get()
    if blocks:
        return blocks[-1][1]
    if _global["name"] is None:
        # kept only once it loads: a bad ASTROMIX_BACKEND raises at each call
        # until the variable (or set_backend) names a usable backend
        backend = _load(_default_name())
        _global["name"] = backend.name
        return backend
    return _load(_global["name"])


def set_backend(name):
    """Make ``name`` the active backend for the whole process.

    It takes precedence over ``ASTROMIX_BACKEND`` and the default, in every
    thread; a :func:`use_backend` block still overrides it in its own thread.

    Parameters
    ----------
    name : {"numpy", "numba", "cupy"}
        The backend's name (as in :func:`available_backends`; case ignored).

    Returns
    -------
    backend : astromix.backends._common.Backend
        The backend now active (as :func:`get_backend` returns it).

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

    Inside the block :func:`get_backend` returns this backend in the calling
    thread (or asyncio task) only (other threads and tasks keep theirs); it
    overrides :func:`set_backend` and ``ASTROMIX_BACKEND``.  Blocks nest: on
    leaving one, the backend that was active before it is restored, also when
    the block raises; a block left before one opened after it (generators,
    tasks) takes only its own backend off, and the later block keeps its own.
    The state is a :mod:`contextvars` variable.

    Parameters
    ----------
    name : {"numpy", "numba", "cupy"}
        The backend's name (as in :func:`available_backends`; case ignored).

    Yields
    ------
    backend : astromix.backends._common.Backend
        The backend, the target of ``with use_backend(name) as backend:``.

    Raises
    ------
    BackendError
        If the backend is unknown or unavailable (raised on entering the block,
        which then does not run).
    """
    backend = _load(name)
    token = object()
    _blocks.set(_blocks.get() + ((token, backend),))
    try:
        yield backend
    finally:
        # this block's own entry, wherever it is (blocks left out of order)
        _blocks.set(tuple(entry for entry in _blocks.get() if entry[0] is not token))
