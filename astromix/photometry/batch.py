"""Many target exposures against one reference image, on any executor.

imphot's ``FitImagePhotometryMP`` ran the fits in worker processes behind an
iterator (whose Python 3 iteration was broken: it defined ``next()`` but not
``__next__``).  :func:`fit_image_photometry_batch` takes any
:class:`concurrent.futures.Executor` and returns the results in the order of
the targets.
"""

import functools
import inspect
import os

from ..errors import AstromixError, BatchError, InputError
from ..parallel import parallel_map

__all__ = ["fit_image_photometry_batch", "BatchError"]


def _target_name(target, index):
    from astropy.nddata import NDData

    if isinstance(target, (str, os.PathLike)):
        base = os.path.basename(os.fspath(target))
        for suffix in (".fits.gz", ".fits.fz", ".fits", ".fit"):
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base
    name = getattr(target, "name", None) if isinstance(target, NDData) else None
    return name if isinstance(name, str) and name else f"target {index}"


def _fit_one(target, reference, kwargs):
    """Worker: one image fit (module level, so that process pools can pickle it)."""
    from .image import fit_image_photometry

    return fit_image_photometry(target, reference, **kwargs)


def fit_image_photometry_batch(targets, reference, *, executor=None, max_workers=None,
                               progress=True, return_exceptions=False, **kwargs):
    """Fit many target images against one reference image; results in the targets' order.

    Each target is fitted with :func:`~astromix.photometry.fit_image_photometry`
    (the reference is regridded onto each target's grid in its own task).

    Parameters
    ----------
    targets : iterable
        The target images, each of a kind :func:`fit_image_photometry`
        accepts; FITS file names are cheapest to send to other processes
        (each worker reads its own file).
    reference : str, Exposure, NDData or tuple
        The reference image, sent to every task (give a file name, or an
        image already cut to the targets' area, to keep that small).
    executor : concurrent.futures.Executor, "serial" or None, optional
        Where the fits run: any Executor (``ProcessPoolExecutor``,
        ``ThreadPoolExecutor``, ``dask.distributed.Client.get_executor()``,
        ``mpi4py.futures.MPIPoolExecutor``), left open for the caller; the
        string ``"serial"`` runs them here one after the other; None (the
        default) runs a single target here and several in a
        :class:`~concurrent.futures.ProcessPoolExecutor` of ``max_workers``
        processes (default ``os.cpu_count()``), shut down at the end.
    max_workers : int, optional
        Processes of the default pool.
    progress : bool, optional
        Show a :mod:`tqdm` progress bar on standard error counting the
        finished targets (in whatever order they finish; default True).  It
        changes neither the results nor the errors.
    return_exceptions : bool, optional
        False (default): the first failed target raises (below).  True:
        every target is fitted, and a failed one gives an
        :class:`~astromix.parallel.ItemFailure` (its name as ``label``,
        ``index``, ``exception``, ``traceback``) in its slot, so that one bad
        exposure does not cost the others; pick them out with
        ``isinstance(result, ItemFailure)``.
    **kwargs
        Passed to :func:`fit_image_photometry` (``fix_fwhm``, ``regions``, ...);
        their names are checked against its signature before any fit.

    Returns
    -------
    list of ImagePhotometryResult (or ItemFailure)
        One per target, in the order of ``targets`` (an ItemFailure for a
        failed target with ``return_exceptions=True``).

    Raises
    ------
    InputError
        A keyword that :func:`fit_image_photometry` does not take (before
        any fit), or ``executor`` is not an Executor, "serial" or None.
    InputError, AstromixError
        Without ``return_exceptions``: a fit's own error, re-raised with the
        exposure's name in front of its message (same class; ``name``,
        ``index`` and ``original`` attributes; the original as
        ``__cause__``).  The first failing target in the
        targets' order is reported; the tasks not yet started are cancelled.
    BatchError
        Without ``return_exceptions``: when a worker fails with any other
        exception (a bug, a broken process pool), with the exposure's name
        (``name``, ``index``, ``original``).

    See Also
    --------
    astromix.parallel.parallel_map : the executor logic (ordering, progress,
        errors) shared by every batch entry point.

    Examples
    --------
    >>> from astromix.photometry import fit_image_photometry_batch
    >>> fit_image_photometry_batch([], "reference.fits")
    []
    """
    from .image import fit_image_photometry

    allowed = [name for name, par in inspect.signature(fit_image_photometry).parameters.items()
               if par.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(f"fit_image_photometry_batch got unknown keyword(s) "
                         f"{', '.join(unknown)}; fit_image_photometry takes "
                         f"{', '.join(allowed)}")
    targets = list(targets)
    names = [_target_name(t, i) for i, t in enumerate(targets)]
    try:
        return parallel_map(functools.partial(_fit_one, reference=reference, kwargs=kwargs),
                            targets, executor=executor, max_workers=max_workers,
                            progress=progress, desc="fit_image_photometry", labels=names,
                            return_exceptions=bool(return_exceptions))
    except BatchError as err:
        original = err.original
        if type(err) is not BatchError or isinstance(original, (AstromixError, type(None))) \
                or not str(err).startswith(f"{err.label}: failed with "):
            raise  # an astromix error, or a task that could not be submitted
        raise BatchError(f"{err.label}: the fit failed with {type(original).__name__}: "
                         f"{original}", label=err.label, index=err.index,
                         original=original) from original
