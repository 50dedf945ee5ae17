"""Photometry of one image against another of the same field (imphot's job).

A target image (e.g. MUSE) is compared with a reference image (e.g. HST) of
the same sky: its flux scale (target units per reference unit), background
offset, pointing offset and PSF.

* :func:`fit_image_photometry` -- the whole image, fitted in Fourier space
  as the reference blurred by a Moffat kernel, scaled, shifted and offset;
  returns an :class:`ImagePhotometryResult`.  Many targets against one
  reference: :func:`fit_image_photometry_batch` (any executor).
* :func:`fit_star_photometry` -- from one star fitted with a pixel-integrated
  Moffat profile (:class:`~astromix.models.moffat.MoffatStar`) in both
  images; returns a :class:`StarPhotometryResult`.
* :class:`Measurement` -- a fitted value with its uncertainty and whether it
  was fixed; :class:`PhotometryResult` -- the base of the results
  (``summary()`` as an astropy Table, ``to_dict()``).
* Preparation: :func:`read_image`, :func:`regrid` (flux-conserving
  resampling with reproject), :func:`rescale_to_flux_units` (HST PHOTFLAM),
  :func:`make_broadband_image` (a cube through a filter curve).

Conventions (shared by every fit of this package): ``scale`` = target flux /
reference flux; ``bg`` in target units (``target = scale * reference +
bg``); ``dx, dy`` [arcsec along the target's +x, +y] = the shift of the
reference's features that aligns them with the target's; ``dra, ddec``
[arcsec] the same shift on the sky (east, north); ``fwhm`` [arcsec] and
``beta`` of the target's Moffat (for the image fit: of the kernel that
blurs the reference to the target).
"""

from ..errors import BatchError
from .batch import fit_image_photometry_batch
from .helpers import (
    PhotometryWarning,
    filter_weights,
    hst_filter_name,
    make_broadband_image,
    read_image,
    regrid,
    rescale_to_flux_units,
)
from .image import ImagePhotometryResult, fit_image_photometry, moffat_transform, region_mask
from .results import Measurement, PhotometryResult
from .star import StarFit, StarPhotometryResult, fit_star_photometry

__all__ = ["Measurement", "PhotometryResult", "StarFit", "StarPhotometryResult",
           "fit_star_photometry", "ImagePhotometryResult", "fit_image_photometry",
           "moffat_transform", "region_mask", "fit_image_photometry_batch", "BatchError",
           "read_image", "regrid", "rescale_to_flux_units", "make_broadband_image",
           "filter_weights", "hst_filter_name", "PhotometryWarning"]
