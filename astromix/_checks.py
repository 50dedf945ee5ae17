"""Checks of arguments shared by astromix's subpackages."""

import math
import numbers

import numpy as np

from .errors import InputError


def integer_parameter(value, name, minimum=1):
    """``value`` as an int, refused unless it is an integral number >= ``minimum``.

    Parameters
    ----------
    value : int, numpy integer or integral float
        e.g. ``4``, ``np.int64(4)`` or ``4.0``; not a bool, a string, 2.5 or NaN.
    name : str
        The parameter's name, for the message.
    minimum : int, optional
        Smallest value allowed (default 1).

    Returns
    -------
    int

    Raises
    ------
    InputError
        If ``value`` is not an integral real number >= ``minimum`` (2.5 is
        refused, not truncated).
    """
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or not float(value).is_integer()
            or value < minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
