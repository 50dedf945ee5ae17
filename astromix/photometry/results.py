"""Fitted photometric quantities: :class:`Measurement` and the result base class."""

import dataclasses
import math

__all__ = ["Measurement", "PhotometryResult"]


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One fitted (or derived) quantity: value, 1-sigma uncertainty, and whether it was fixed.

    imphot's ``FittedValue``.  A fixed quantity has ``error = 0``; a quantity
    without a meaningful uncertainty (e.g. a residual RMS) has ``error =
    nan``.

    Parameters
    ----------
    value : float
        The quantity, in its own unit (e.g. arcsec for ``fwhm``; the result's
        :attr:`PhotometryResult.units` names it).  Stored as a float.
    error : float
        The 1-sigma uncertainty, in the unit of ``value`` (>= 0, or nan).
    fixed : bool, optional
        True when the quantity was held fixed in the fit (default False).

    Examples
    --------
    >>> from astromix.photometry import Measurement
    >>> m = Measurement(0.79, 0.01)
    >>> m
    Measurement(value=0.79, error=0.01, fixed=False)
    >>> m.to_dict()
    {'value': 0.79, 'error': 0.01, 'fixed': False}
    >>> str(Measurement(14.0, 0.0, fixed=True))
    '14 (fixed)'
    """

    value: float
    error: float
    fixed: bool = False

    def __post_init__(self):
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "error", float(self.error))
        object.__setattr__(self, "fixed", bool(self.fixed))

    def to_dict(self):
        """``{"value", "error", "fixed"}`` with JSON-safe numbers (nan and inf become None).

        Returns
        -------
        dict
            ``{"value": float or None, "error": float or None, "fixed": bool}``,
            in the unit of ``value``; a non-finite number is None.
        """
        def safe(v):
            return v if math.isfinite(v) else None

        return {"value": safe(self.value), "error": safe(self.error), "fixed": self.fixed}

    def __str__(self):
        if self.fixed:
            return f"{self.value:.6g} (fixed)"
        if math.isnan(self.error):
            return f"{self.value:.6g}"
        return f"{self.value:.6g} +- {self.error:.2g}"


class PhotometryResult:
    """Base class of photometry results: named :class:`Measurement` attributes.

    Subclasses list the names of their measurements in ``_measurements`` and
    their units (strings, "" for dimensionless) in :attr:`units`.
    """

    #: Names of the Measurement attributes, in reporting order.
    _measurements = ()

    @property
    def units(self):
        """dict: the unit of every measurement, as a string ("" when dimensionless)."""
        return {}

    def measurements(self):
        """The measurements by name, in reporting order.

        Returns
        -------
        dict
            ``{name: Measurement}`` for every name in the subclass's
            ``_measurements``, in that order (units: :attr:`units`).
        """
        return {name: getattr(self, name) for name in self._measurements}

    def summary(self):
        """The measurements as an :class:`astropy.table.Table`.

        Returns
        -------
        astropy.table.Table
            One row per measurement, with columns ``name`` (str), ``value``,
            ``error`` (float), ``fixed`` (bool) and ``unit`` (str).
        """
        from astropy.table import Table

        items = self.measurements()
        units = self.units
        table = Table({"name": list(items),
                       "value": [m.value for m in items.values()],
                       "error": [m.error for m in items.values()],
                       "fixed": [m.fixed for m in items.values()],
                       "unit": [units.get(name, "") for name in items]})
        table["value"].format = ".6g"
        table["error"].format = ".3g"
        return table

    def to_dict(self):
        """The measurements as ``{name: {"value", "error", "fixed"}}`` (JSON-compatible).

        Returns
        -------
        dict
            ``{name: Measurement.to_dict()}`` in reporting order: floats (None
            for nan or inf) in the units of :attr:`units`, and the fixed flag.
        """
        return {name: m.to_dict() for name, m in self.measurements().items()}

    def __str__(self):
        units = self.units
        lines = [f"{type(self).__name__}:"]
        for name, m in self.measurements().items():
            unit = units.get(name, "")
            lines.append(f"  {name:>6s} = {m}" + (f" {unit}" if unit else ""))
        return "\n".join(lines)
