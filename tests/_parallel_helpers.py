"""Module-level functions for tests/test_parallel.py, importable by worker processes.

The tests put this folder on the workers' import path (process pools inherit
it; the MPI script gets it through PYTHONPATH).
"""

import os
import time

from astromix.errors import InputError


def slow_square(item):
    """``item = (value, delay)``: sleep ``delay`` seconds, return ``value ** 2`` and the pid."""
    value, delay = item
    time.sleep(delay)
    return value * value, os.getpid()


def square_or_fail(value):
    """``value ** 2``; an InputError for 3 and a ZeroDivisionError for 5."""
    if value == 3:
        raise InputError(f"bad value {value}")
    if value == 5:
        return 1 / 0
    return value * value


def touch_and_square(item):
    """``item = (value, folder, delay)``: write ``folder/value``, sleep, return ``value ** 2``."""
    value, folder, delay = item
    with open(os.path.join(folder, str(value)), "w"):
        pass
    time.sleep(delay)
    return square_or_fail(value)
