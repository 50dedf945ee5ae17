"""Small real data sets shipped with astromix, with their attribution.

Files:

* ``real_galaxy_PSF_images.fits.gz``: 100 HST ACS/WFC F814W PSFs of the GalSim
  COSMOS sample (37-39 px at 0.03 arcsec/px), one per HDU;
* ``real_galaxy_catalog_23.5_example.fits``: the matching GalSim catalog
  (IDENT, RA, DEC, BAND, PIXEL_SCALE, PSF_HDU, ...);
* ``example2_f200w_PSF_4_c.float32.fits.gz``: the JWST NIRCam F200W empirical PSF
  of the NEXUS survey, 4x oversampled, 535 x 535;
* ``cosmos_147246_f814w_201x201.fits.gz`` and ``cosmos_147246_f814w_psf.fits.gz``:
  an HST ACS/WFC F814W COSMOS galaxy (201 x 201 at 0.03 arcsec/px, other
  objects masked) and its 101 x 101 PSF, from GalSim's example data.

See ``README.rst`` and the ``LICENSE_*.txt`` files in this folder for sources
and licenses.

Examples
--------
>>> from astromix import datasets
>>> image, header = datasets.load_hst_psf(0)
>>> image.shape, image.dtype
((37, 37), dtype('float64'))
>>> header["FILTER"], header["PIXSCALE"]
('F814W', 0.03)
"""

import os
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["get_path", "list_files", "load_cosmos_galaxy", "load_hst_psf", "load_jwst_f200w_psf",
           "N_HST_PSFS"]

_HERE = Path(__file__).resolve().parent

HST_PSF_FILE = "real_galaxy_PSF_images.fits.gz"
HST_CATALOG_FILE = "real_galaxy_catalog_23.5_example.fits"
JWST_F200W_PSF_FILE = "example2_f200w_PSF_4_c.float32.fits.gz"
COSMOS_GALAXY_FILE = "cosmos_147246_f814w_201x201.fits.gz"
COSMOS_PSF_FILE = "cosmos_147246_f814w_psf.fits.gz"

#: Number of HST PSF images in :data:`HST_PSF_FILE` (HDUs 0 to 99).
N_HST_PSFS = 100

_DATA_SUFFIXES = (".fits", ".fits.gz", ".txt", ".rst")


def list_files():
    """Names of the data and license files shipped in :mod:`astromix.datasets`.

    Returns
    -------
    list of str
        Sorted file names, usable with :func:`get_path`.
    """
    return sorted(p.name for p in _HERE.iterdir()
                  if p.is_file() and p.name.endswith(_DATA_SUFFIXES))


def get_path(name):
    """Absolute path of a file shipped with :mod:`astromix.datasets`.

    Parameters
    ----------
    name : str
        A file name from :func:`list_files`, e.g. ``"real_galaxy_PSF_images.fits.gz"``.

    Returns
    -------
    str
        The absolute path of the file.

    Raises
    ------
    InputError
        If there is no such file (the message lists the known ones).
    """
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise InputError(f"dataset name must be a plain file name, got {name!r}")
    path = _HERE / name
    if not path.is_file():
        raise InputError(f"no dataset file {name!r}; shipped files: {', '.join(list_files())}")
    return str(path)


def _read_hdu(path, index):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdu = hdul[index]
        data = np.array(hdu.data, dtype=np.float64)
        header = hdu.header.copy()
    if data.ndim != 2 or not np.all(np.isfinite(data)):
        raise InputError(f"{os.path.basename(path)}[{index}] is not a finite 2-d image")
    return data, header


def load_hst_psf(index=0):
    """Load one HST ACS/WFC F814W PSF image of the GalSim COSMOS sample.

    The 100 PSFs (TinyTim-based models at the positions of COSMOS galaxies,
    drizzled to 0.03 arcsec/px) come from GalSim's ``real_galaxy_PSF_images.fits``
    (the example COSMOS catalog, I < 23.5); the observations are from the HST
    COSMOS survey (MAST archive).  See ``astromix/datasets/README.rst``.

    Parameters
    ----------
    index : int, optional
        Which PSF, 0 to 99 (the HDU number and the ``PSF_HDU`` column of the
        catalog).

    Returns
    -------
    image : ndarray, shape (ny, nx), float64
        The PSF image, 37 or 39 px on a side, peak near the centre, flux
        about 0.96 (not normalised; pixel values as in the file).
    header : astropy.io.fits.Header
        The HDU's header, plus cards from the catalog row that uses this PSF:
        ``IDENT``, ``RA``, ``DEC`` [deg] of the galaxy, ``FILTER``
        (``"F814W"``), ``PIXSCALE`` [arcsec/px], and ``TELESCOP``/``INSTRUME``.

    Raises
    ------
    InputError
        If ``index`` is not an integer in [0, 99].
    """
    try:
        ok = int(index) == index and not isinstance(index, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= int(index) < N_HST_PSFS:
        raise InputError(f"index must be an integer in [0, {N_HST_PSFS - 1}], got {index!r}")
    index = int(index)
    image, header = _read_hdu(get_path(HST_PSF_FILE), index)

    from astropy.table import Table

    catalog = Table.read(get_path(HST_CATALOG_FILE), hdu=1)
    rows = np.nonzero(np.asarray(catalog["PSF_HDU"]) == index)[0]
    if rows.size:
        row = catalog[rows[0]]
        header["IDENT"] = (int(row["IDENT"]), "COSMOS identifier of the galaxy")
        header["RA"] = (float(row["RA"]), "[deg] galaxy right ascension")
        header["DEC"] = (float(row["DEC"]), "[deg] galaxy declination")
        header["FILTER"] = (str(row["BAND"]).strip(), "HST filter")
        header["PIXSCALE"] = (round(float(row["PIXEL_SCALE"]), 6), "[arcsec/px] pixel scale")
    header["TELESCOP"] = "HST"
    header["INSTRUME"] = ("ACS/WFC", "PSF model based on TinyTim")
    return image, header


def load_jwst_f200w_psf():
    """Load the empirical JWST NIRCam F200W PSF of the NEXUS survey.

    Built by jwst_psfmc (M. Zhuang, MIT license) from 29 stars; 4x
    oversampled, 535 x 535 px, normalised to unit sum.  The shipped copy is
    stored in float32 (relative change < 4e-8 of the peak) to keep the package
    small; see ``astromix/datasets/README.rst``.

    Returns
    -------
    image : ndarray, shape (535, 535), float64
        The PSF, peak near the centre, sum 1.
    header : astropy.io.fits.Header
        The file's header: ``n_good_stars``, ``n_all_stars`` and
        ``OVERSAMP`` (= 4, the oversampling factor).
    """
    return _read_hdu(get_path(JWST_F200W_PSF_FILE), 0)


def load_cosmos_galaxy():
    """Load an HST ACS/WFC F814W image of a COSMOS galaxy and its PSF.

    The galaxy is COSMOS 147246 (RA 150.416558, Dec 1.998697), a faint spiral
    with a half-light radius of about 25 px (0.75 arcsec), from GalSim's
    example data (``147246.0_150.416558_1.998697_masknoise.fits``, 543 x 543,
    sky-subtracted, other objects masked and replaced by noise); the shipped
    image is the 201 x 201 pixels around the galaxy, which lies near its centre.  The
    PSF is the matching TinyTim-based model
    (``147246.0_150.416558_1.998697.psf.fits``, unchanged).  See
    ``astromix/datasets/README.rst``.

    Returns
    -------
    image : ndarray, shape (201, 201), float64
        The galaxy, 0.03 arcsec/px, in the file's units (counts per second
        according to its drizzle cards, ``D001OUUN = 'cps'``; its ``BUNIT``
        is the exposures'); sky noise about 2.6e-3 per pixel, correlated by
        the drizzling.
    psf_image : ndarray, shape (101, 101), float64
        The PSF at the same pixel scale, sum about 1, peak at pixel (51, 51).
    header : astropy.io.fits.Header
        The galaxy's header (WCS updated for the cut; HISTORY cards describe
        it), plus ``IDENT`` (147246), ``FILTER`` (``"F814W"``) and
        ``PIXSCALE`` [arcsec/px] (0.03).

    Examples
    --------
    >>> from astromix.datasets import load_cosmos_galaxy
    >>> image, psf_image, header = load_cosmos_galaxy()
    >>> image.shape, psf_image.shape, header["FILTER"]
    ((201, 201), (101, 101), 'F814W')
    """
    image, header = _read_hdu(get_path(COSMOS_GALAXY_FILE), 0)
    psf_image, _ = _read_hdu(get_path(COSMOS_PSF_FILE), 0)
    header["IDENT"] = (147246, "COSMOS identifier of the galaxy")
    header["FILTER"] = ("F814W", "HST filter")
    header["PIXSCALE"] = (0.03, "[arcsec/px] pixel scale")
    return image, psf_image, header
