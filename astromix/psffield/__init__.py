"""The PSF of a field from its stars (the job of ShapePipe, PSFEx and Piff).

* :func:`detect_sources`, :func:`read_ldac` -- a source catalog from an image
  (photutils) or from a SExtractor FITS_LDAC file;
* :func:`select_stars` -- the stars on the size-magnitude locus (ShapePipe's
  rule), with a reserve kept out for validation; :func:`plot_size_magnitude`;
* :func:`fit_psf_field` -- a pixel PSF whose basis varies as a polynomial in
  (x, y) (PSFEx's model), fitted with Piff's outlier loop; the
  :class:`PSFFieldModel` gives the PSF at any position as an image or a
  GaussianMixturePSF and exports itself as a PSFEx model
  (:func:`astromix.io.psfex.write_psfex`);
* :func:`fit_mixture_psf_field` -- a Gaussian-mixture PSF at every position,
  its amplitudes and covariances polynomial in (x, y), fitted to the star
  pixels directly (:class:`MixturePSFFieldModel`);
* :func:`psf_at_sky` -- the PSF at a sky position in every exposure covering
  it, through each exposure's WCS;
* :func:`validate_psf_field`, :func:`rho_statistics`, :func:`plot_whiskers` --
  HSM sizes and shapes of reserve stars against the model, pixel RMSE, and
  rho statistics with TreeCorr (Jarvis et al. 2016);
* :func:`spread_model` -- SExtractor's SPREAD_MODEL star/galaxy classifier
  (Desai et al. 2012) from the PSF model.
"""

from .mixture_field import MixturePSFFieldModel, fit_mixture_psf_field
from .model import PSFFieldModel, fit_psf_field
from .sky import psf_at_sky
from .spread_model import FLAG_SM_EDGE, FLAG_SM_FAILED, FLAG_SM_MASKED, spread_model
from .stars import (
    FLAG_BAD_PIXELS,
    FLAG_CROWDED,
    FLAG_EDGE,
    FLAG_SATURATED,
    detect_sources,
    plot_size_magnitude,
    read_ldac,
    select_stars,
)
from .validation import (
    FLAG_HSM_MODEL,
    FLAG_HSM_STAR,
    plot_whiskers,
    rho_statistics,
    validate_psf_field,
)

__all__ = ["FLAG_BAD_PIXELS", "FLAG_CROWDED", "FLAG_EDGE", "FLAG_HSM_MODEL", "FLAG_HSM_STAR",
           "FLAG_SATURATED", "PSFFieldModel", "detect_sources", "fit_psf_field",
           "plot_size_magnitude", "plot_whiskers", "read_ldac", "rho_statistics", "select_stars",
           "validate_psf_field", "MixturePSFFieldModel", "fit_mixture_psf_field", "psf_at_sky",
           "spread_model", "FLAG_SM_EDGE", "FLAG_SM_MASKED", "FLAG_SM_FAILED"]
