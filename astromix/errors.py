"""Exceptions raised by astromix.

Every error astromix raises on purpose derives from :class:`AstromixError`; bad
user input raises :class:`InputError`.  The ``astromix`` command turns these into
a one-line message and exit status 2.
"""

__all__ = ["AstromixError", "InputError", "BackendError"]


class AstromixError(Exception):
    """Base class of all astromix errors."""


class InputError(AstromixError, ValueError):
    """Invalid input: wrong shape, non-finite values, bad covariance, bad file."""


class BackendError(AstromixError, RuntimeError):
    """A compute backend is unknown or cannot be used on this machine."""
