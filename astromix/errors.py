"""Exceptions raised by astromix.

Every error astromix raises on purpose derives from :class:`AstromixError`; bad
user input raises :class:`InputError`.  The ``astromix`` command turns these into
a one-line message and exit status 2.
"""

__all__ = ["AstromixError", "InputError", "BackendError", "BatchError"]


class AstromixError(Exception):
    """Base class of all astromix errors."""


class InputError(AstromixError, ValueError):
    """Invalid input: wrong shape, non-finite values, bad covariance, bad file."""


class BackendError(AstromixError, RuntimeError):
    """A compute backend is unknown or cannot be used on this machine."""


class BatchError(AstromixError, RuntimeError):
    """An item of a batch (:func:`astromix.parallel.parallel_map`) failed with an
    exception outside the astromix family (a bug, a broken worker pool, an
    object that cannot be pickled); the message names the item.

    Parameters
    ----------
    message : str
        The error message (conventionally starting with the item's label).
    label : str, optional
        The item's label; None (default) for an error of the batch as a whole
        (e.g. tasks cancelled).
    index : int, optional
        The item's position in the batch (0-based); None if not one item's.
    original : BaseException, optional
        The exception the item failed with, if any.
    name : str, optional
        Alias of ``label``, used only when ``label`` is None.

    Attributes
    ----------
    label : str or None
        The item's label (also available as ``name``).
    index : int or None
        Its position in the batch.
    original : BaseException or None
        The worker's exception (also the ``__cause__`` where the raiser chains it).
    """

    def __init__(self, message, *, label=None, index=None, original=None, name=None):
        super().__init__(message)
        self.label = label if label is not None else name
        self.index = index
        self.original = original

    @property
    def name(self):
        """The item's label (an alias of ``label``)."""
        return self.label

    @name.setter
    def name(self, value):
        self.label = value
