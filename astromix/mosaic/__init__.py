"""The PSF of a drizzled mosaic at each source (:class:`~astromix.ExposureWeightedPSF`).

* :mod:`astromix.mosaic.exposures`: the exposures behind a mosaic
  (:class:`InputExposure`), the context image (:func:`decode_context`), the
  association, tables of exposures (``HDRTAB``, YOUNG's CSV) and the local
  geometry of each source in each exposure (:func:`source_geometry`);
* :mod:`astromix.mosaic.providers`: where each exposure's PSF comes from
  (:class:`PoppyProvider`, :class:`StpsfProvider`, :class:`ImageProvider`);
* :mod:`astromix.mosaic.psf`: the combination (:class:`ExposureWeightedPSF`,
  cubes in FITS, ASDF or ``.npy``);
* :mod:`astromix.mosaic.simulate`: a drizzled star field with a context image
  for verification (:func:`simulate_drizzled_star_field`).

See the user guide, "Mosaic PSFs".
"""

from .exposures import (
    InputExposure,
    decode_context,
    exposures_from_table,
    jwst_pc_matrix,
    order_exposures,
    read_association,
    source_geometry,
    tan_wcs,
)
from .providers import NIRCAM_FILTERS, ImageProvider, PoppyProvider, PSFProvider, StpsfProvider
from .psf import (
    ExposureWeightedPSF,
    psf_profile_metrics,
    psf_residual,
    read_psf_cube,
    write_psf_cube,
)
from .simulate import (
    SimulatedMosaic,
    compare_with_empirical_psf,
    render_point_source,
    simulate_drizzled_star_field,
)

__all__ = ["ExposureWeightedPSF", "ImageProvider", "InputExposure", "NIRCAM_FILTERS",
           "compare_with_empirical_psf",
           "PSFProvider", "PoppyProvider", "SimulatedMosaic", "StpsfProvider", "decode_context",
           "exposures_from_table", "jwst_pc_matrix", "order_exposures", "psf_profile_metrics",
           "psf_residual",
           "read_association", "read_psf_cube", "render_point_source",
           "simulate_drizzled_star_field", "source_geometry", "tan_wcs", "write_psf_cube"]
