"""``astromix backends``: list the compute backends and which one is active."""

import os
import sys

from .. import backends as _backends
from ..errors import BackendError

__all__ = ["add_parser", "backend_status", "run"]


def add_parser(subparsers):
    """Register the ``backends`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The subcommand action of the ``astromix`` parser (what
        ``ArgumentParser.add_subparsers`` returns; see
        :func:`astromix.cli.build_parser`).

    Returns
    -------
    argparse.ArgumentParser
        The subcommand's parser, with the default ``func=run``.
    """
    parser = subparsers.add_parser(
        "backends", help="list the compute backends, their availability and the active one",
        description="List every known compute backend, whether it can be used on this "
                    "machine (and why not), and which one is active.  The active backend "
                    "is chosen by the ASTROMIX_BACKEND environment variable, else numba "
                    "when it imports, else numpy.")
    parser.set_defaults(func=run)
    return parser


def _reason(name, exc):
    text = " ".join(str(exc).split())
    prefix = f"backend {name!r} is not available: "
    return text[len(prefix):] if text.startswith(prefix) else text


def backend_status():
    """Availability of every known backend.

    Returns
    -------
    list of (str, bool, str)
        ``(name, available, reason)`` for each name in
        :data:`astromix.backends.KNOWN_BACKENDS`; ``reason`` is empty when
        available, otherwise why the backend cannot be used.
    """
    rows = []
    for name in _backends.KNOWN_BACKENDS:
        try:
            _backends.get_backend(name)
        except BackendError as exc:
            rows.append((name, False, _reason(name, exc)))
        else:
            rows.append((name, True, ""))
    return rows


def run(args):
    """Print the backend table; exit status 2 if the selected backend is unavailable.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (the options registered by :func:`add_parser`).

    Returns
    -------
    int
        0 when the selected backend is usable; otherwise BackendError is
        raised, which :func:`astromix.cli.main` turns into exit status 2.

    Raises
    ------
    BackendError
        After the table is printed, if the backend selected by
        ``ASTROMIX_BACKEND`` (or the default) cannot be used.
    """
    rows = backend_status()
    active, problem = None, None
    try:
        active = _backends.get_backend().name
    except BackendError as exc:
        problem = exc
    env = os.environ.get("ASTROMIX_BACKEND", "").strip()
    width = max(len("backend"), *(len(name) for name, _, _ in rows))
    out = sys.stdout
    print(f"  {'backend':<{width}}  {'status':<11}  notes", file=out)
    for name, ok, reason in rows:
        mark = "*" if name == active else " "
        status = "available" if ok else "unavailable"
        notes = "active" if name == active else ""
        if not ok:
            notes = reason
        print(f"{mark} {name:<{width}}  {status:<11}  {notes}".rstrip(), file=out)
    how = f"ASTROMIX_BACKEND={env}" if env else "default"
    if active is not None:
        print(f"active backend: {active} ({how})", file=out)
        return 0
    if env:
        raise BackendError(f"ASTROMIX_BACKEND={env} selects a backend that cannot be used here: "
                           f"{_reason(env.lower(), problem)}")
    raise problem
