"""Photometry of one image against another of the same field (imphot's job).

A target image (e.g. MUSE) is compared with a reference image (e.g. HST) of
the same sky: its flux scale (target units per reference unit), background
offset, pointing offset and PSF.

* :func:`fit_star_photometry` -- from one star fitted with a pixel-integrated
  Moffat profile (:class:`~astromix.models.moffat.MoffatStar`) in both
  images; returns a :class:`StarPhotometryResult`.
* :class:`Measurement` -- a fitted value with its uncertainty and whether it
  was fixed; :class:`PhotometryResult` -- the base of the results
  (``summary()`` as an astropy Table, ``to_dict()``).

Conventions (shared by every fit of this package): ``scale`` = target flux /
reference flux; ``bg`` in target units (``target = scale * reference +
bg``); ``dx, dy`` [arcsec along the target's +x, +y] = the shift of the
reference's features that aligns them with the target's; ``dra, ddec``
[arcsec] the same shift on the sky (east, north); ``fwhm`` [arcsec] and
``beta`` of the target's Moffat.
"""

from .results import Measurement, PhotometryResult
from .star import StarFit, StarPhotometryResult, fit_star_photometry

__all__ = ["Measurement", "PhotometryResult", "StarFit", "StarPhotometryResult",
           "fit_star_photometry"]
