"""Accuracy settings shared by every rendering kernel.

Modelled on GalSim's ``GSParams``: one small immutable object, passed explicitly
or taken from a process-wide default.
"""

import dataclasses

from .errors import InputError

__all__ = ["AccuracySettings", "get_default_settings", "set_default_settings"]

PIXEL_INTEGRATION_MODES = ("kurtosis", "variance", "none")

#: Variance of the unit pixel box, [px^2].
BOX_VARIANCE = 1.0 / 12.0
#: Fourth cumulant of the unit pixel box divided by 4! (-1/120 / 24), [px^4].
BOX_C4 = -1.0 / 2880.0


@dataclasses.dataclass(frozen=True)
class AccuracySettings:
    """How accurately Gaussian mixtures are rendered into pixels.

    Parameters
    ----------
    n_sigma : float, optional
        Each Gaussian is evaluated only inside its ``n_sigma`` ellipse
        (quadratic form ``d^T C^-1 d <= n_sigma**2``, pixel-box variance
        included), row by row; beyond it the Gaussian is taken as zero.  The
        truncation error is ``exp(-n_sigma**2 / 2)`` of the component's peak
        (3.7e-6 for the default 5).  Must lie in [1, 7].
    pixel_integration : {"kurtosis", "variance", "none"}, optional
        How the integral of a Gaussian over a unit pixel box is computed.

        * ``"kurtosis"`` (default): the box's variance (1/12 px^2) is added to
          the covariance and its fourth cumulant (-1/120 px^4 per axis) is
          applied as an Edgeworth (Gram-Charlier) correction,
          ``1 - (He4_x + He4_y) / 2880``, with ``He4_x = v_x^4 - 6 F_xx v_x^2 +
          3 F_xx^2``, ``F = (C + I/12)^-1`` and ``v = F d``.  Agrees with
          the exact pixel integral to < 2e-3 of the peak when the minor-axis
          sigma is >= 0.65 px, wherever the centre lies within its pixel (the
          worst case, a Gaussian centred on a pixel: 9.6e-4 at 0.7 px, 2.1e-3
          at 0.6 px, 5.3e-3 at 0.5 px, 1e-2 at 0.44 px); see the gallery
          example "How accurate is the pixel integration?".
        * ``"variance"``: only the box variance is added (2nd order; up to
          7.3e-3 of the peak at sigma = 0.7 px, 1.9e-3 at 1 px).
        * ``"none"``: the Gaussian is sampled at pixel centres.

        All modes assume the Gaussian is resolved: for a minor-axis sigma
        below ~0.5 px the sum over pixels of the pixel-integrated profile no
        longer equals its flux (aliasing, ~exp(-2 pi^2 sigma^2)).
    fourth_order_threshold : float, optional
        With ``"kurtosis"``, the fourth-order factor is skipped for a Gaussian
        whose largest correction, ``3 (F_xx^2 + F_yy^2) / 2880`` relative to
        its own peak, is below this value (wide Gaussians, where it is
        negligible and would only cost time).  Default 1e-4, 20 times below
        the 2e-3 accuracy target.
    merge_tolerance : float, optional
        PSF-convolved Sersic profiles (:class:`~astromix.SersicMixture`):
        components that the PSF blurs into nearly the same Gaussian are
        merged into one with the same amplitude and second moments while the
        estimated change of the profile stays below this fraction of its peak
        (see :mod:`astromix.models._sersic_build`; measured below 0.71 of it
        over the whole table, n = 0.3-8).  Default 1e-5: the
        60 components of a 20-Gaussian Sersic mixture convolved with a
        3-Gaussian PSF become 30-40, rendered ~1.5x faster.  0 turns merging
        off.  Must lie in [0, 1e-2].

    Raises
    ------
    InputError
        If a value is out of range or the mode is unknown.

    Notes
    -----
    The kurtosis correction follows from the cumulant expansion of the
    pixel box (uniform distribution: kappa_2 = 1/12, kappa_4 = -1/120); forcepho
    (Johnson et al.) uses the cruder second-order factor
    ``1 + (v_x^2 + v_y^2 - F_xx - F_yy) / 24`` on the unintegrated Gaussian.
    """

    n_sigma: float = 5.0
    pixel_integration: str = "kurtosis"
    fourth_order_threshold: float = 1e-4
    merge_tolerance: float = 1e-5

    def __post_init__(self):
        if not (1.0 <= float(self.n_sigma) <= 7.0):
            raise InputError(f"n_sigma must lie in [1, 7], got {self.n_sigma!r}")
        if self.pixel_integration not in PIXEL_INTEGRATION_MODES:
            raise InputError(
                f"pixel_integration must be one of {PIXEL_INTEGRATION_MODES}, "
                f"got {self.pixel_integration!r}"
            )
        if not (float(self.fourth_order_threshold) >= 0.0):
            raise InputError("fourth_order_threshold must be >= 0, "
                             f"got {self.fourth_order_threshold!r}")
        if not (0.0 <= float(self.merge_tolerance) <= 1e-2):
            raise InputError(f"merge_tolerance must lie in [0, 1e-2], got {self.merge_tolerance!r}")
        object.__setattr__(self, "merge_tolerance", float(self.merge_tolerance))
        object.__setattr__(self, "n_sigma", float(self.n_sigma))
        object.__setattr__(self, "fourth_order_threshold", float(self.fourth_order_threshold))

    @property
    def box_variance(self):
        """Variance of the pixel box added to every covariance [px^2]: 1/12, 0 with "none"."""
        return 0.0 if self.pixel_integration == "none" else BOX_VARIANCE

    def with_(self, **changes):
        """Return a copy with some fields changed (the object itself is immutable).

        Parameters
        ----------
        **changes
            New values of fields, by name: ``n_sigma``, ``pixel_integration``,
            ``fourth_order_threshold``, ``merge_tolerance`` (see the class);
            the others keep this object's values.

        Returns
        -------
        AccuracySettings
            A new, validated instance.

        Raises
        ------
        InputError
            If a new value is out of range or the mode is unknown.
        TypeError
            If a keyword is not a field name.
        """
        return dataclasses.replace(self, **changes)


_DEFAULT = [AccuracySettings()]


def get_default_settings():
    """Return the process-wide default :class:`AccuracySettings`.

    Returns
    -------
    AccuracySettings
        The default used wherever ``settings`` is omitted: ``AccuracySettings()``
        until :func:`set_default_settings` replaces it.
    """
    return _DEFAULT[0]


def set_default_settings(settings):
    """Replace the process-wide default :class:`AccuracySettings`.

    Shared by every thread; calls that were given their own ``settings`` are
    not affected.

    Parameters
    ----------
    settings : AccuracySettings
        The new default.

    Returns
    -------
    None

    Raises
    ------
    InputError
        If ``settings`` is not an :class:`AccuracySettings`.
    """
    if not isinstance(settings, AccuracySettings):
        raise InputError("settings must be an AccuracySettings instance")
    _DEFAULT[0] = settings
