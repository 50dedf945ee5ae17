"""The ``astromix`` command.

Each subcommand lives in its own module, which defines ``add_parser(subparsers)``
(registering its options and ``func``) and the function that runs it.

Errors derived from :class:`astromix.AstromixError` are reported as one line
on standard error with exit status 2 and no traceback; anything else is a bug
and keeps its traceback.

Examples
--------
>>> from astromix.cli import main
>>> main(["--version"])  # doctest: +ELLIPSIS
astromix ...
0
"""

import argparse
import logging
import sys

from ..errors import AstromixError

__all__ = ["main", "build_parser"]

log = logging.getLogger("astromix")

#: Subcommand modules, in the order ``astromix --help`` lists them.
_SUBCOMMANDS = ("backends", "broadband_image", "demo", "fit_photometry", "fit_scene", "mosaic_psf",
               "psf_field", "psf_mixture", "regrid")


def _version():
    from .. import __version__

    return __version__


def build_parser():
    """Return the :class:`argparse.ArgumentParser` of the ``astromix`` command.

    Returns
    -------
    argparse.ArgumentParser
        With ``--version``, ``-v`` / ``--verbose`` (a count) and one subcommand
        per module of :mod:`astromix.cli` (``dest="command"``), each setting
        ``func`` to the function that runs it.
    """
    import importlib

    parser = argparse.ArgumentParser(
        prog="astromix",
        description="Model astronomical images with Gaussian mixtures.",
        epilog="Run 'astromix COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"astromix {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: info, -vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


class _StderrHandler(logging.Handler):
    """Write records to whatever ``sys.stderr`` is at the time (works under capture)."""

    _astromix_cli = True

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(verbosity):
    level = logging.WARNING if verbosity <= 0 else (logging.INFO if verbosity == 1
                                                    else logging.DEBUG)
    log.setLevel(level)
    if not any(getattr(h, "_astromix_cli", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("astromix: %(levelname)s: %(message)s"))
        log.addHandler(handler)


def main(argv=None):
    """Run the ``astromix`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` if omitted.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on a usage error or an
        :class:`~astromix.AstromixError` (reported as one line on stderr),
        130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except AstromixError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"astromix {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"astromix {args.command}: interrupted", file=sys.stderr)
        return 130
