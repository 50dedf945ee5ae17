"""Atomic file writes: the one helper every writer of astromix uses.

A write goes to a temporary file in the destination's folder, which is flushed
to disk and renamed over the destination with :func:`os.replace`; an
exception or an interruption removes the temporary file and leaves the
destination as it was (DESIGN.md, "Nothing is lost").
"""

import contextlib
import errno
import os
import secrets
import shutil

__all__ = ["atomic_path"]


def _create_temp(path, suffix):
    """Create an empty temporary file next to ``path`` (mode 0666 less the umask)."""
    folder, name = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "could not create a temporary file",  # pragma: no cover
                          folder)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, *, copy_existing=False):
    """Yield a temporary path beside ``path``; rename it into place on success.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    copy_existing : bool, optional
        Start from a copy of the existing file (contents and permissions), for
        writers that update a file in place (one HDF5 group of several).

    Yields
    ------
    str
        The temporary file ``.<name>.<random>.tmp`` (ending in ``.tmp.gz`` when
        ``path`` ends in ``.gz``, so that writers choosing compression by the
        name, as astropy does, compress it as they would ``path``).  It exists
        (empty, mode 0666 less the umask) unless ``copy_existing``.

    Notes
    -----
    On success the temporary file is flushed to disk and renamed over
    ``path``; on any exception (KeyboardInterrupt included) it is removed and
    ``path`` is untouched.
    """
    path = os.fspath(path)
    suffix = ".tmp.gz" if path.lower().endswith(".gz") else ".tmp"
    tmp = _create_temp(path, suffix)
    try:
        if copy_existing:
            shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
