"""Map a function over items with any :class:`concurrent.futures.Executor`.

:func:`parallel_map` is the one place where astromix runs work in parallel:
every batch entry point (PSF mixtures for many bands, photometry over
exposures, mosaic PSFs over sources, scene patches) takes ``executor=`` and
hands it here, so the same code runs on a laptop
(:class:`~concurrent.futures.ProcessPoolExecutor`, the default), on a dask
cluster (``dask.distributed.Client(...).get_executor()``) and under MPI
(``mpiexec -n 8 python -m mpi4py.futures script.py`` with
``mpi4py.futures.MPIPoolExecutor``).

The results come back as a list in the order of the items (never a lazy
iterator); a :mod:`tqdm` progress bar on standard error counts the finished
items; an item's failure is re-raised with the item's label in front of the
message, or, with ``return_exceptions=True``, kept as an :class:`ItemFailure`
in the item's slot.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import os
import sys
import threading
import traceback as _traceback

from .errors import AstromixError, BatchError, InputError

__all__ = ["parallel_map", "ItemFailure", "BatchError"]

log = logging.getLogger("astromix")

_LABEL_LENGTH = 80


@dataclasses.dataclass(frozen=True, eq=False)
class ItemFailure:
    """The failure of one item of :func:`parallel_map` with ``return_exceptions=True``.

    It takes the failed item's slot in the results, so that a survey run
    keeps the other results: pick the failures out with
    ``isinstance(result, ItemFailure)``.  :func:`parallel_map` builds it;
    each parameter is also a (read-only) attribute of the same name.

    Parameters
    ----------
    label : str
        The item's label (``labels[index]`` or the default label).
    index : int
        The item's position in ``items``.
    exception : BaseException
        The exception the function raised for this item (the worker's own
        exception, not re-labelled).
    traceback : str
        The formatted traceback of ``exception``, including the worker's
        remote traceback where the executor sends one (process pools).
    """

    label: str
    index: int
    exception: BaseException
    traceback: str

    def __repr__(self):
        return (f"ItemFailure(label={self.label!r}, index={self.index}, "
                f"exception={type(self.exception).__name__}({str(self.exception)!r}))")

    def reraise(self):
        """Raise the failure as :func:`parallel_map` would have (label in the message).

        Returns
        -------
        None
            It never returns: it always raises.

        Raises
        ------
        AstromixError
            The same class as ``exception`` when it is an astromix error,
            else a :class:`~astromix.errors.BatchError`; ``exception`` is the
            ``__cause__``.
        """
        raise _relabel(self.exception, self.label, self.index) from self.exception


def _default_label(item, index):
    """A short label for ``item``: a file's base name, an object's ``name``, or its index."""
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if isinstance(item, bytes):
        try:
            item = item.decode()
        except UnicodeDecodeError:
            item = None
    if isinstance(item, str):
        label = os.path.basename(item.rstrip("/\\")) or item
    else:
        try:
            label = getattr(item, "name", None)
        except Exception:  # a property that raises: fall back on the index
            label = None
    if not isinstance(label, str) or not label.strip():
        return f"item {index}"
    label = " ".join(label.split())
    return label if len(label) <= _LABEL_LENGTH else label[:_LABEL_LENGTH - 3] + "..."


def _func_name(func):
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) \
        or type(func).__name__


def _relabel(exc, label, index):
    """``exc`` as an exception with ``label`` in front of its message, keeping its class
    when it is an astromix error (else a :class:`BatchError`)."""
    if isinstance(exc, AstromixError):
        new = None
        try:
            new = type(exc)(f"{label}: {exc}")
        except Exception:  # a subclass with another signature
            new = None
        if new is None:
            new = BatchError(f"{label}: {type(exc).__name__}: {exc}", label=label,
                             index=index, original=exc)
        else:
            try:
                new.label, new.name, new.index, new.original = label, label, index, exc
            except AttributeError:  # read-only attributes of a subclass
                new = BatchError(f"{label}: {type(exc).__name__}: {exc}", label=label,
                                 index=index, original=exc)
        return new
    return BatchError(f"{label}: failed with {type(exc).__name__}: {exc}", label=label,
                      index=index, original=exc)


def _failure(exc, label, index):
    text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ItemFailure(label=label, index=index, exception=exc, traceback=text)


class _Progress:
    """A thread-safe tqdm bar on stderr (callbacks of executors run in other threads)."""

    def __init__(self, total, progress, desc):
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self._closed = False
        self._bar = tqdm(total=total, desc=desc, unit="item", disable=not progress)

    def update(self, n=1):
        with self._lock:
            if not self._closed:
                self._bar.update(n)

    def finish(self):
        """Show every item as finished (the last callbacks may run after the results)."""
        with self._lock:
            if not self._closed and self._bar.n != self._bar.total:
                self._bar.n = self._bar.total
                self._bar.refresh()

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self._bar.close()


def _check_executor(executor, max_workers):
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise InputError(f"max_workers must be a positive integer or None, "
                             f"got {max_workers!r}")
    if executor is None or isinstance(executor, concurrent.futures.Executor):
        return
    if isinstance(executor, str) and executor == "serial":
        return
    raise InputError(f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, "
                     f"dask.distributed Client.get_executor(), mpi4py.futures.MPIPoolExecutor), "
                     f"the string 'serial' or None; got {executor!r}")


def parallel_map(func, items, *, executor=None, max_workers=None, progress=True, desc=None,
                 labels=None, return_exceptions=False):
    """Call ``func(item)`` for every item on an executor; results in the order of ``items``.

    Parameters
    ----------
    func : callable
        Called once per item as ``func(item)``.  To run in other processes
        (process pools, dask, MPI) it and the items must be picklable: a
        module-level function, or a :func:`functools.partial` of one that
        binds the shared arguments.
    items : iterable
        The items (read once into a list).  Small items (file names,
        indices) are cheapest to send to other processes.
    executor : concurrent.futures.Executor, "serial" or None, optional
        Where the calls run: any :class:`~concurrent.futures.Executor`
        (``ProcessPoolExecutor``, ``ThreadPoolExecutor``,
        ``dask.distributed.Client.get_executor()``, whose calls are submitted
        with ``pure=False``, each its own task,
        ``mpi4py.futures.MPIPoolExecutor``), left open for the caller; the
        string ``"serial"`` runs them here one after the other; None (the
        default) runs a single item here and several in a
        :class:`~concurrent.futures.ProcessPoolExecutor` of ``max_workers``
        processes, shut down at the end.
    max_workers : int, optional
        Processes of the default pool (default ``os.cpu_count()``; never more
        than the number of items).  Ignored with an explicit executor.
    progress : bool, optional
        Show a :mod:`tqdm` progress bar on standard error counting the
        finished items, in whatever order they finish (default True).  It
        changes neither the results nor the errors.
    desc : str, optional
        The progress bar's label (default: the function's name).
    labels : sequence of str, optional
        One label per item naming it in error messages (e.g. exposure
        names).  Default: a path's base name, else the item's ``name``
        attribute when it is a string, else ``"item <index>"``.
    return_exceptions : bool, optional
        If True, a failed item gives an :class:`ItemFailure` (label, index,
        exception, traceback text) in its slot instead of raising, and every
        item is run (default False).

    Returns
    -------
    list
        ``func(item)`` for each item, in the order of ``items`` (units: those
        of ``func``'s results; none of its own).

    Raises
    ------
    InputError
        ``func`` is not callable, ``executor`` is not an Executor, "serial"
        or None, ``max_workers`` is not a positive integer, or ``labels``
        does not have one label per item.
    AstromixError
        An item's own astromix error (e.g. :class:`~astromix.errors.InputError`),
        re-raised as the same class with the item's label in front of the
        message; it has the attributes ``label`` (also ``name``), ``index``
        and ``original`` (the worker's exception, also the ``__cause__``).
    BatchError
        An item failed with any other exception (a bug, a broken process
        pool, something that cannot be pickled), with the same attributes.
        Without ``return_exceptions``, the first failure in the order of the
        items (among those that finished) is reported, and the tasks not yet
        started are cancelled as soon as one fails.

    See Also
    --------
    concurrent.futures.Executor.map : the standard library's map (no labels,
        stops at the first exception while iterating).

    Notes
    -----
    The executor's workers must be able to import ``func``'s module (for an
    MPI pool started by ``mpiexec ... python -m mpi4py.futures script.py``
    that is any installed module, or the script itself).  Only the calling
    process shows the progress bar and logs; the items are submitted all at
    once.

    Examples
    --------
    >>> import math
    >>> from astromix.parallel import parallel_map
    >>> parallel_map(math.sqrt, [1.0, 4.0, 9.0], executor="serial", progress=False)
    [1.0, 2.0, 3.0]
    >>> out = parallel_map(math.sqrt, [4.0, -1.0], executor="serial", progress=False,
    ...                    labels=["ok", "negative"], return_exceptions=True)
    >>> out[0], out[1].label, type(out[1].exception).__name__
    (2.0, 'negative', 'ValueError')
    >>> parallel_map(math.sqrt, [4.0, -1.0], executor="serial", progress=False,
    ...              labels=["ok", "negative"])
    Traceback (most recent call last):
    ...
    astromix.errors.BatchError: negative: failed with ValueError: math domain error
    """
    if not callable(func):
        raise InputError(f"func must be callable, got {func!r}")
    _check_executor(executor, max_workers)
    items = list(items)
    n = len(items)
    if labels is None:
        labels = [_default_label(item, i) for i, item in enumerate(items)]
    else:
        if isinstance(labels, str):
            raise InputError("labels must be a sequence of strings, one per item, not a string")
        labels = [str(label) for label in labels]
        if len(labels) != n:
            raise InputError(f"labels has {len(labels)} entries for {n} items")
    if n == 0:
        return []
    desc = _func_name(func) if desc is None else desc

    own = False
    if executor is None:
        if n == 1:
            executor = "serial"
        else:
            workers = min(max_workers or os.cpu_count() or 1, n)
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
            own = True
    if isinstance(executor, str):
        return _serial(func, items, labels, progress, desc, return_exceptions)
    try:
        return _on_executor(func, items, labels, executor, progress, desc, return_exceptions)
    finally:
        if own:
            executor.shutdown(wait=True, cancel_futures=True)


def _serial(func, items, labels, progress, desc, return_exceptions):
    results = []
    bar = _Progress(len(items), progress, desc)
    try:
        for i, (item, label) in enumerate(zip(items, labels)):
            try:
                results.append(func(item))
            except Exception as exc:
                if not return_exceptions:
                    raise _relabel(exc, label, i) from exc
                results.append(_failure(exc, label, i))
                log.info("%s: %s failed (%s: %s)", desc, label, type(exc).__name__, exc)
            bar.update(1)
            log.debug("%s: %d/%d done (%s)", desc, i + 1, len(items), label)
    finally:
        bar.close()
    return results


def _submit_options(executor):
    """Keywords for ``executor.submit`` beyond the call's: ``pure=False`` for dask.

    A dask.distributed ``ClientExecutor`` (``Client.get_executor()``) passes
    extra keywords of ``submit`` to ``Client.submit``.  Its default
    ``pure=True`` names a call's task by a hash of the function and the item,
    so the same call submitted again shares the task of an earlier batch, and
    with it that batch's cancellation after a failure: the items came back
    cancelled.  ``pure=False`` gives every call its own task.  The module is
    looked up, not imported: an executor of its class means it is loaded.
    """
    cfexecutor = sys.modules.get("distributed.cfexecutor")
    if cfexecutor is not None and isinstance(executor, getattr(cfexecutor, "ClientExecutor",
                                                               ())):
        return {"pure": False}
    return {}


def _on_executor(func, items, labels, executor, progress, desc, return_exceptions):
    n = len(items)
    bar = _Progress(n, progress, desc)
    futures = []
    options = _submit_options(executor)

    def _tick(future):  # in the executor's threads: count finished items, in any order
        if not future.cancelled():
            bar.update(1)

    try:
        for i, item in enumerate(items):
            try:
                future = executor.submit(func, item, **options)
            except Exception as exc:
                raise BatchError(f"{labels[i]}: could not be submitted to {executor!r}: "
                                 f"{type(exc).__name__}: {exc}", label=labels[i], index=i,
                                 original=exc) from exc
            futures.append(future)
            future.add_done_callback(_tick)  # called at once when already done
        ours = set()  # futures we cancelled after a failure
        if return_exceptions:
            concurrent.futures.wait(futures)
        else:
            # stop early: as soon as one item fails, cancel the items not yet started
            _, pending = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            ours = {id(f) for f in pending if f.cancel()}
        results = []
        for i, (future, label) in enumerate(zip(futures, labels)):
            if id(future) in ours:
                continue  # stopped because an item failed: that failure is raised below
            try:
                results.append(future.result())
            except Exception as exc:
                if not return_exceptions:
                    for f in futures[i + 1:]:
                        f.cancel()
                    raise _relabel(exc, label, i) from exc
                results.append(_failure(exc, label, i))
                log.info("%s: %s failed (%s: %s)", desc, label, type(exc).__name__, exc)
        if len(results) != n:  # pragma: no cover - defensive: a failure always ends the loop
            raise BatchError(f"{desc}: {n - len(results)} of {n} tasks were cancelled")
        bar.finish()
        log.debug("%s: %d items done", desc, n)
        return results
    finally:
        for future in futures:  # after an error or an interrupt: nothing left queued
            future.cancel()
        bar.close()
