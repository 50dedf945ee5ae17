"""Keep BLAS single-threaded around small optimisations.

scipy's L-BFGS-B and least_squares call BLAS on vectors of a few dozen
parameters at every step.  OpenBLAS's threads, woken for each of those tiny
calls while Numba's threads also run, made a 6-Gaussian PSF fit on the 2-core
reference machine take 1-6 s instead of 0.1 s (measured with and without
``OPENBLAS_NUM_THREADS=1``).  :func:`single_threaded_blas` limits BLAS to one
thread with threadpoolctl for the duration of a fit; the pixel work runs on
the backends' own threads.
"""

import contextlib
import functools

__all__ = ["single_threaded_blas", "blas_single_threaded"]


_CONTROLLER = []


def _controller():
    """A cached threadpoolctl controller: scanning the loaded libraries costs ~2 ms a call.

    It is made at the first fit, when NumPy and SciPy (whose BLAS libraries it
    finds) are loaded.
    """
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


@contextlib.contextmanager
def single_threaded_blas():
    """Context manager: BLAS libraries limited to one thread (no-op without threadpoolctl)."""
    try:
        controller = _controller()
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def blas_single_threaded(func):
    """Decorator running ``func`` inside :func:`single_threaded_blas`."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)
    return wrapper
