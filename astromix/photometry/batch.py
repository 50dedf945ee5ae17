"""Many target exposures against one reference image, on any executor.

imphot's ``FitImagePhotometryMP`` ran the fits in worker processes behind an
iterator (whose Python 3 iteration was broken: it defined ``next()`` but not
``__next__``).  :func:`fit_image_photometry_batch` takes any
:class:`concurrent.futures.Executor` and returns the results in the order of
the targets.
"""

import concurrent.futures
import logging
import os
import threading

from ..errors import AstromixError

__all__ = ["fit_image_photometry_batch", "BatchError"]

log = logging.getLogger("astromix")


class BatchError(AstromixError, RuntimeError):
    """A fit of a batch failed; the message names the exposure.

    Attributes
    ----------
    name : str
        The exposure's name.
    index : int
        Its position in the batch.
    original : BaseException
        The worker's exception (also the ``__cause__``).
    """

    def __init__(self, message, *, name=None, index=None, original=None):
        super().__init__(message)
        self.name = name
        self.index = index
        self.original = original


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


def _rename(exc, name, index):
    """``exc`` re-raised with the exposure's name in its message, keeping its class if we can."""
    message = f"{name}: {exc}"
    if isinstance(exc, AstromixError):
        try:
            new = type(exc)(message)
        except TypeError:  # a subclass with another signature
            new = BatchError(message, name=name, index=index, original=exc)
        new.name, new.index, new.original = name, index, exc
        return new
    return BatchError(f"{name}: the fit failed with {type(exc).__name__}: {exc}", name=name,
                      index=index, original=exc)


def _progress_bar(total, progress):
    """A tqdm bar on stderr counting finished targets (a no-op bar when ``progress`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit_image_photometry", unit="target",
                disable=not progress)


def fit_image_photometry_batch(targets, reference, *, executor=None, max_workers=None,
                               progress=True, **kwargs):
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
    **kwargs
        Passed to :func:`fit_image_photometry` (``fix_fwhm``, ``regions``, ...).

    Returns
    -------
    list of ImagePhotometryResult
        One per target, in the order of ``targets``.

    Raises
    ------
    InputError, AstromixError
        A fit's own error, re-raised with the exposure's name in front of its
        message (same class; ``name``, ``index`` and ``original`` attributes;
        the original as ``__cause__``).  The first failing target in the
        targets' order is reported; the tasks not yet started are cancelled.
    BatchError
        When a worker fails with any other exception (a bug, a broken
        process pool), with the exposure's name.

    Examples
    --------
    >>> from astromix.photometry import fit_image_photometry_batch
    >>> fit_image_photometry_batch([], "reference.fits")
    []
    """
    targets = list(targets)
    names = [_target_name(t, i) for i, t in enumerate(targets)]
    if not targets:
        return []
    own = False
    if executor is None:
        if len(targets) == 1:
            executor = "serial"
        else:
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=max_workers or os.cpu_count() or 1)
            own = True
    if executor == "serial":
        results = []
        with _progress_bar(len(targets), progress) as bar:
            for i, (target, name) in enumerate(zip(targets, names)):
                try:
                    results.append(_fit_one(target, reference, kwargs))
                except Exception as exc:
                    raise _rename(exc, name, i) from exc
                bar.update(1)
                log.info("batch: %d/%d done (%s)", i + 1, len(targets), name)
        return results
    if not isinstance(executor, concurrent.futures.Executor):
        if own:  # pragma: no cover - our own pool is always an Executor
            executor.shutdown(wait=False)
        raise AstromixError(f"executor must be a concurrent.futures.Executor, 'serial' or None, "
                            f"got {executor!r}")
    futures = []
    bar = _progress_bar(len(targets), progress)
    lock = threading.Lock()
    closed = False

    def _tick(future):  # runs in the executor's threads: count finished fits, in any order
        if future.cancelled() or future.exception() is not None:
            return
        with lock:
            if not closed:
                bar.update(1)

    try:
        futures = [executor.submit(_fit_one, t, reference, kwargs) for t in targets]
        for future in futures:
            future.add_done_callback(_tick)  # called at once when already done
        results = []
        for i, (future, name) in enumerate(zip(futures, names)):
            try:
                results.append(future.result())
            except Exception as exc:
                for f in futures[i + 1:]:
                    f.cancel()
                raise _rename(exc, name, i) from exc
            log.info("batch: %d/%d done (%s)", i + 1, len(targets), name)
        with lock:  # a future's callbacks may run just after result() returned
            bar.n = len(targets)
            bar.refresh()
        return results
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
        with lock:
            closed = True
            bar.close()
