"""Data containers for astromix: :class:`Exposure` and its readers and writers.

* :class:`Exposure` -- one image with its uncertainty, mask, WCS (astropy or
  gwcs), PSF, band, exposure time and zero point; an
  :class:`astropy.nddata.NDData`.  :meth:`Exposure.from_fits` reads DECam
  community-pipeline, JWST and HST products, MPDAF (MUSE) images and plain
  FITS images.
* :func:`write_exposures`, :func:`read_exposures` -- exposures in ASDF
  (``.asdf``) and HDF5 (``.h5``, ``.hdf5``) files.
* :class:`ExposureWarning` -- warns about masked pixels, unstored PSFs, missing
  companion files.
"""

from .exposure import Exposure, ExposureWarning
from .io import read_exposures, write_exposures

__all__ = ["Exposure", "ExposureWarning", "read_exposures", "write_exposures"]
