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


@contextlib.contextmanager
def single_threaded_blas():
    """Context manager: BLAS libraries limited to one thread (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def blas_single_threaded(func):
    """Decorator running ``func`` inside :func:`single_threaded_blas`."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return func(*args, **kwargs)
    return wrapper
