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
  objects masked) and its 101 x 101 PSF, from GalSim's example data;
* ``decam_multiexposure/``: 8 DECam community-pipeline exposures (g x 3, r x 2,
  z x 3; 2014-2018) of one galaxy (:data:`DECAM_TARGET`), 41 x 51 (or 41 x 50)
  pixel cut-outs at 0.262 arcsec/px: for each, the image (``*_ooi_*``), its
  inverse variance (``*_oow_*``), its data-quality mask (``*_ood_*``) and the
  exposure's PSFEx model (``*-psfex.fits.gz``, read it with
  :func:`astromix.io.psfex.read_psfex`), plus the Legacy Surveys CCD table
  ``survey-ccds-1.fits.gz`` (zero points, seeing, sky noise).  Index them with
  :func:`decam_multiexposure`.

See ``README.rst``, ``decam_multiexposure/README.rst`` and the ``LICENSE*.txt``
files in these folders for sources and licenses.

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
           "decam_multiexposure", "DECAM_FOLDER", "DECAM_TARGET", "N_HST_PSFS"]

_HERE = Path(__file__).resolve().parent

HST_PSF_FILE = "real_galaxy_PSF_images.fits.gz"
HST_CATALOG_FILE = "real_galaxy_catalog_23.5_example.fits"
JWST_F200W_PSF_FILE = "example2_f200w_PSF_4_c.float32.fits.gz"
COSMOS_GALAXY_FILE = "cosmos_147246_f814w_201x201.fits.gz"
COSMOS_PSF_FILE = "cosmos_147246_f814w_psf.fits.gz"

#: Number of HST PSF images in :data:`HST_PSF_FILE` (HDUs 0 to 99).
N_HST_PSFS = 100

#: Sub-folder holding the DECam multi-exposure data set (see :func:`decam_multiexposure`).
DECAM_FOLDER = "decam_multiexposure"
DECAM_CCDS_FILE = "survey-ccds-1.fits.gz"

#: (RA, Dec) [deg, ICRS] of the galaxy at the centre of the DECam cut-outs: the mean over
#: the 8 exposures of its Gaussian-windowed centroid (sigma 2 px) mapped through each
#: image's TPV WCS (scatter 0.036 arcsec per coordinate).
DECAM_TARGET = (244.77974, 12.07234)

#: Sub-folders of the data sets that :func:`get_path` and :func:`list_files` accept.
_SUBFOLDERS = (DECAM_FOLDER,)

_DATA_SUFFIXES = (".fits", ".fits.gz", ".txt", ".rst")


def list_files(folder=None):
    """Names of the data and license files shipped in :mod:`astromix.datasets`.

    Parameters
    ----------
    folder : str, optional
        A data-set sub-folder (``"decam_multiexposure"``); by default the files
        at the top of the package folder (the sub-folders are not listed).

    Returns
    -------
    list of str
        Sorted file names, usable with :func:`get_path`; those of a sub-folder
        are given as ``"<folder>/<file>"``.

    Raises
    ------
    InputError
        If ``folder`` is not one of the shipped sub-folders.
    """
    if folder is None:
        where, prefix = _HERE, ""
    elif folder in _SUBFOLDERS:
        where, prefix = _HERE / folder, folder + "/"
    else:
        raise InputError(f"no dataset folder {folder!r}; shipped folders: {', '.join(_SUBFOLDERS)}")
    if not where.is_dir():
        return []
    return sorted(prefix + p.name for p in where.iterdir()
                  if p.is_file() and p.name.endswith(_DATA_SUFFIXES))


def get_path(name):
    """Absolute path of a file shipped with :mod:`astromix.datasets`.

    Parameters
    ----------
    name : str
        A file name from :func:`list_files`, e.g. ``"real_galaxy_PSF_images.fits.gz"``,
        or ``"<folder>/<file>"`` for a file of a data-set sub-folder, e.g.
        ``"decam_multiexposure/survey-ccds-1.fits.gz"``.

    Returns
    -------
    str
        The absolute path of the file.

    Raises
    ------
    InputError
        If there is no such file (the message lists the known ones).
    """
    folder = None
    if isinstance(name, str) and name.count("/") == 1 and name.split("/")[0] in _SUBFOLDERS:
        folder, name = name.split("/")
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise InputError(f"dataset name must be a plain file name, got {name!r}")
    path = (_HERE / folder / name) if folder else (_HERE / name)
    if not path.is_file():
        known = list_files(folder)
        if folder is None:
            known += [f"{sub}/..." for sub in _SUBFOLDERS]
        raise InputError(f"no dataset file {name!r}" + (f" in {folder}/" if folder else "")
                         + f"; shipped files: {', '.join(known)}")
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

    Raises
    ------
    InputError
        If the shipped file is missing or does not hold a finite 2-d image (a
        broken installation).
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

    Raises
    ------
    InputError
        If a shipped file is missing or does not hold a finite 2-d image (a
        broken installation).

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


def decam_multiexposure():
    """Index of the DECam multi-exposure data set: one row per exposure, sorted by date.

    Eight DECam exposures of the Legacy Surveys DR9 (DECaLS; g x 3, r x 2,
    z x 3, 2014-2018, exposure times 68-118 s) of one galaxy, at
    :data:`DECAM_TARGET`, and a faint neighbour, processed by the NOIRLab
    DECam community pipeline (CP, version V4.8.2a): 41 x 51 pixel cut-outs
    (41 x 50 for one exposure) of CCDs N10, N11 or N12 at 0.262 arcsec/px,
    with their TPV WCS.  Each exposure has

    * ``image`` (``*_ooi_*``): the CP image in ADU (counts), **sky not
      subtracted** (the median is the sky level, ~100-3000 ADU; subtract a
      background before fitting);
    * ``invvar`` (``*_oow_*``): inverse variance [ADU^-2] (sky plus read
      noise, as the CP computes it);
    * ``dq`` (``*_ood_*``): CP data-quality bits, 0 = good (all 0 in these
      cut-outs);
    * ``psfex``: the exposure's PSFEx model (legacypipe's merged-table layout;
      read it with :func:`astromix.io.psfex.read_psfex` and evaluate it at
      the cut-out's pixel coordinates: its POLZERO is already in the cut-out
      frame).

    Pixel arrays are in HDU 1 of each file (the CCD's extension; its
    ``EXTNAME`` is the CCD name).  The image data are CP products distributed
    by the Legacy Surveys (see ``decam_multiexposure/README.rst`` and
    ``LICENSE.txt``: BSD-3, legacypipe).

    Returns
    -------
    astropy.table.Table
        8 rows, sorted by ``mjd_obs``, with columns

        ``name`` (str)
            ``c4d_<yymmdd>_<hhmmss>_<band>_<ccd>``, e.g. ``"c4d_140818_232043_z_N12"``.
        ``band`` (str)
            ``"g"``, ``"r"`` or ``"z"``.
        ``image``, ``invvar``, ``dq``, ``psfex`` (str)
            Absolute paths of the (gzip-compressed) FITS files.
        ``expnum`` (int), ``ccdname`` (str)
            DECam exposure number and CCD.
        ``mjd_obs`` [d]
            MJD of the start of the exposure.
        ``exptime`` [s]
            Exposure time.
        ``zeropoint`` [mag]
            AB magnitude of a source giving 1 ADU *in total* in this exposure:
            ``ccdzpt + 2.5 log10(exptime)``, where ``ccdzpt`` (survey-ccds) is the
            Legacy Surveys zero point for 1 ADU/s.  So a flux of F ADU is
            ``zeropoint - 2.5 log10(F)`` AB mag, and 1 nanomaggy (AB 22.5) is
            ``10**(0.4 (zeropoint - 22.5))`` ADU (530-1220 ADU here).
            Checked against the data: ``1 / sqrt(median(invvar))`` divided by
            ``sig1`` (the Legacy Surveys' sky noise in nanomaggies) equals
            that factor within 0.3-2.4 % for all 8 exposures.
        ``sig1`` [nanomaggy]
            Per-pixel sky noise from survey-ccds.
        ``sky`` [ADU]
            Sky level per pixel of the CCD-wide sky model of the Legacy Surveys
            (survey-ccds ``ccdskycounts`` [ADU/s] times ``exptime``).  The
            images are not sky-subtracted; legacypipe subtracts this model
            before fitting sources.
        ``fwhm`` [pix]
            Seeing FWHM from survey-ccds (the CP's median stellar FWHM,
            2.7-5.5 px).

        ``meta`` holds ``target`` (:data:`DECAM_TARGET`), ``pixscale``
        [arcsec/px] and ``source``.

    Raises
    ------
    InputError
        If a file of the data set is missing (a broken installation).

    Examples
    --------
    >>> from astromix.datasets import decam_multiexposure
    >>> table = decam_multiexposure()
    >>> len(table), "".join(table["band"])
    (8, 'zrgzzrgg')
    >>> str(table["name"][0]), float(table["exptime"][0])
    ('c4d_140818_232043_z_N12', 118.0)
    >>> round(float(table["zeropoint"][0]), 3)
    30.218
    """
    from astropy import units as u
    from astropy.table import Table

    ccds = Table.read(get_path(f"{DECAM_FOLDER}/{DECAM_CCDS_FILE}"), hdu=1)
    rows = []
    for ccd in ccds:
        image_name = os.path.basename(str(ccd["image_filename"]).strip())  # ..._ooi_z_ls9.N12.fits
        stem, ccdname = image_name[: -len(".fits")].rsplit(".", 1)
        prefix, date, time_, _, band, _ = stem.split("_")
        expnum = int(ccd["expnum"])
        files = {
            "image": f"{image_name}.gz",
            "invvar": f"{image_name.replace('_ooi_', '_oow_')}.gz",
            "dq": f"{image_name.replace('_ooi_', '_ood_')}.gz",
            "psfex": f"{stem}-{ccdname}-psfex.fits.gz",
        }
        paths = {key: get_path(f"{DECAM_FOLDER}/{value}") for key, value in files.items()}
        exptime = float(ccd["exptime"])
        rows.append({
            "name": f"{prefix}_{date}_{time_}_{band}_{ccdname}",
            "band": band, **paths, "expnum": expnum, "ccdname": ccdname,
            "mjd_obs": float(ccd["mjd_obs"]), "exptime": exptime,
            "zeropoint": float(ccd["ccdzpt"]) + 2.5 * np.log10(exptime),
            "sig1": float(ccd["sig1"]), "sky": float(ccd["ccdskycounts"]) * exptime,
            "fwhm": float(ccd["fwhm"]),
        })
    rows.sort(key=lambda r: r["mjd_obs"])
    names = ["name", "band", "image", "invvar", "dq", "psfex", "expnum", "ccdname", "mjd_obs",
             "exptime", "zeropoint", "sig1", "sky", "fwhm"]
    table = Table(rows=[[r[n] for n in names] for r in rows], names=names)
    table["mjd_obs"].unit = u.d
    table["exptime"].unit = u.s
    table["zeropoint"].unit = u.mag
    table["sig1"].unit = u.nmgy
    table["sky"].unit = u.adu
    table["fwhm"].unit = u.pix
    table.meta["target"] = DECAM_TARGET
    table.meta["pixscale"] = 0.262
    table.meta["source"] = ("Legacy Surveys DR9, NOIRLab DECam community pipeline V4.8.2a; "
                            "see astromix/datasets/decam_multiexposure/README.rst")
    return table


# -- MUSE and HST images of the Hubble Deep Field South ----------------------------------------

#: Sub-folder holding the MUSE/HST pair of the Hubble Deep Field South (see
#: :func:`muse_hst_hdfs`).
MUSE_HST_FOLDER = "muse_hst_hdfs"
_SUBFOLDERS = _SUBFOLDERS + (MUSE_HST_FOLDER,)
__all__ += ["muse_hst_hdfs", "MUSE_HST_FOLDER"]


def muse_hst_hdfs():
    """Paths of the MUSE and HST images of the Hubble Deep Field South (from MPDAF).

    A pair for image and star photometry between instruments
    (:func:`astromix.photometry.fit_image_photometry`,
    :func:`astromix.photometry.fit_star_photometry`):

    * ``"muse"``: ``IMAGE-HDFS-1.34.fits.gz``, the MUSE white-light image,
      331 x 326 pixels at 0.2 arcsec/px; extensions ``DATA`` (flux in
      1e-20 erg/s/cm^2/A per pixel: header ``FSCALE``, no ``BUNIT``),
      ``STAT`` (variance) and ``DQ`` (nonzero = bad);
    * ``"hst"``: ``HST-HDFS.fits.gz``, the HST WFPC2 F606W drizzled image,
      500 x 500 pixels at 0.0399 arcsec/px, inside the MUSE field; extension
      ``DATA`` in counts/s with ``PHOTFLAM = 1.89972e-18`` erg/s/cm^2/A per
      count/s, ``FILTNAM1 = 'F606W'`` (``FILTER1 = 28``, WFPC2's number).

    Read them with :func:`astromix.photometry.read_image`; put the HST image
    in MUSE's units with ``rescale_to_flux_units(paths["hst"], unit=1e-20)``.
    ESO (MUSE) and MAST (HST) data as distributed with MPDAF (BSD-3, CNRS /
    CRAL); see ``muse_hst_hdfs/README.rst`` and ``LICENSE.txt``.

    Returns
    -------
    dict
        ``{"muse": str, "hst": str}``: absolute paths of the two
        gzip-compressed FITS files.

    Raises
    ------
    InputError
        If a file of the data set is missing (a broken installation).

    Examples
    --------
    >>> from astropy.io import fits
    >>> from astromix.datasets import muse_hst_hdfs
    >>> paths = muse_hst_hdfs()
    >>> sorted(paths)
    ['hst', 'muse']
    >>> fits.getval(paths["hst"], "PHOTFLAM", ext=1), fits.getval(paths["muse"], "NAXIS1", ext=1)
    (1.89972e-18, 326)
    """
    return {"muse": get_path(f"{MUSE_HST_FOLDER}/IMAGE-HDFS-1.34.fits.gz"),
            "hst": get_path(f"{MUSE_HST_FOLDER}/HST-HDFS.fits.gz")}


# -- CFHT FOCAM image of Abell 370 ------------------------------------------------------------

#: Sub-folder holding the CFHT FOCAM I-band image of Abell 370 (see :func:`cfht_a370`).
CFHT_A370_FOLDER = "cfht_a370"
_SUBFOLDERS = _SUBFOLDERS + (CFHT_A370_FOLDER,)
__all__ += ["cfht_a370", "CFHT_A370_FOLDER"]


def cfht_a370():
    """Path of the CFHT FOCAM I-band image of the cluster Abell 370 (from MPDAF).

    ``a370II.fits.gz``: one primary HDU of 1909 x 1797 pixels, ``int16`` in
    ADU (sky ~2000 ADU, not subtracted; saturated near 13000 ADU, header
    ``MAXLIN = 13300``), about 0.205 arcsec/px with a rotated TAN WCS; the
    median of five 1800 s exposures with seeing-limited stars across the
    field (for Moffat fits, e.g. ``benchmarks/moffat_field.py``).  CFHT data
    as distributed with MPDAF (BSD-3, CNRS / CRAL); see
    ``cfht_a370/README.rst`` and ``LICENSE.txt``.

    Returns
    -------
    str
        The absolute path of the gzip-compressed FITS file.

    Raises
    ------
    InputError
        If the file is missing (a broken installation).

    Examples
    --------
    >>> from astropy.io import fits
    >>> from astromix.datasets import cfht_a370
    >>> header = fits.getheader(cfht_a370())
    >>> header["NAXIS1"], header["NAXIS2"], header["BITPIX"]
    (1909, 1797, 16)
    """
    return get_path(f"{CFHT_A370_FOLDER}/a370II.fits.gz")
