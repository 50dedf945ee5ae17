"""Helpers shared by the subcommands: atomic writes and the panels of the diagnostic figures."""

import argparse
import os

import numpy as np

from .._atomic import atomic_path  # noqa: F401  (the subcommands import it from here)
from ..errors import InputError


def hdu_argument(text):
    """argparse type of an HDU option: a number (``"1"``) or a name (``"SCI"``)."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("expected an HDU number or name")
    try:
        return int(text)
    except ValueError:
        return text


def positive_float(text):
    """argparse type of a positive, finite number (``"0.2"``); refuses 0, negatives, NaN, inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def int_at_least(minimum):
    """argparse type of an integer >= ``minimum``: ``int_at_least(0)`` for a seed.

    Parameters
    ----------
    minimum : int
        The smallest accepted value.

    Returns
    -------
    callable
        ``parse(text) -> int``, raising :class:`argparse.ArgumentTypeError`
        (a one-line usage error, exit status 2) for text that is not an
        integer or an integer below ``minimum``.
    """
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def prepare_output_folder(folder):
    """Create ``folder`` if needed; InputError when it cannot be created or no file can be
    created in it (:func:`probe_folder`)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {folder!r}: "
                         f"{exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder!r} is not writable")
    probe_folder(folder)  # os.access passes /proc or a read-only file system for root


def probe_folder(folder):
    """InputError when no file can be created in ``folder`` (a test file is made and removed).

    ``os.access`` does not see every case: run as root it passes read-only
    file systems and folders such as /proc, where creating a file fails.
    """
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".astromix-", suffix=".probe", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write in the output folder {folder!r}: "
                         f"{exc.strerror or exc}") from None
    os.close(fd)
    try:
        os.remove(probe)
    except OSError:  # pragma: no cover - created a moment ago
        pass


def check_output_file(path, overwrite, option="--output"):
    """InputError, before any work, for an output file that cannot be written.

    Refused: an empty name, a name ending in a folder separator, an existing
    file without ``overwrite``, a folder, and a folder that cannot be created
    or in which no file can be created (:func:`probe_folder`).

    Parameters
    ----------
    path : str or os.PathLike
        The output file.
    overwrite : bool
        Whether an existing file may be replaced (``--overwrite``).
    option : str, optional
        The option that gave ``path``, for the messages.

    Raises
    ------
    InputError
        For the cases above; the message names ``path`` (or ``option``).
    """
    path = check_output_name(path, overwrite, option)
    folder = os.path.dirname(os.path.abspath(path))
    prepare_output_folder(folder)


def check_output_name(path, overwrite, option="--output"):
    """The name checks of :func:`check_output_file`, without the folder's: ``path`` as a str.

    For several files in one folder that has been checked already.
    """
    path = os.fspath(path)
    if not path.strip():
        raise InputError(f"{option}: the file name is empty")
    if os.path.isdir(path):
        raise InputError(f"{option} {path!r} is a folder, not a file")
    if path.endswith(("/", os.sep)):
        raise InputError(f"{option} {path!r} names a folder, not a file")
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{path!r} exists (use --overwrite)")
    return path


def radial_profile(image, centre):
    """Mean of ``image`` in 1-px annuli around ``centre`` (x, y): (radii, means)."""
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx]
    r = np.hypot(x - centre[0], y - centre[1]).ravel()
    edges = np.arange(0.0, r.max() + 1.0, 1.0)
    which = np.digitize(r, edges) - 1
    counts = np.bincount(which, minlength=edges.size)
    sums = np.bincount(which, weights=image.ravel(), minlength=edges.size)
    good = counts[:-1] > 0
    return (edges[:-1] + 0.5)[good], (sums[:-1] / np.maximum(counts[:-1], 1))[good]


def image_panels(fig, axes, data, model, label="data"):
    """Draw data and model (log scale) and the residual in % of the peak on three axes.

    Returns the (peak, floor, norm) used, for further panels.
    """
    from matplotlib.colors import LogNorm

    peak = float(np.max(data))
    floor = peak * 1e-4
    norm = LogNorm(vmin=floor, vmax=peak)
    for ax, img, title in ((axes[0], data, label), (axes[1], model, "model")):
        im = ax.imshow(np.clip(img, floor, None), origin="lower", norm=norm, cmap="magma")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.85)
    pct = 100.0 * (data - model) / peak
    lim = max(float(np.max(np.abs(pct))), 1e-3)
    im = axes[2].imshow(pct, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2].set_title(f"({label} - model) / peak [%]")
    fig.colorbar(im, ax=axes[2], shrink=0.85)
    return peak, floor, norm
