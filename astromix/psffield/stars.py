"""Detection, measurement and selection of the stars of a field (ShapePipe's rule).

:func:`detect_sources` finds and measures the sources of an image with
photutils; :func:`read_ldac` reads the same quantities from a SExtractor
FITS_LDAC catalog; :func:`select_stars` picks the stars on the size-magnitude
locus (the mode of the FWHM, found by an iterated histogram zoom, as ShapePipe's
``setools`` rule) and keeps a random reserve for validation;
:func:`plot_size_magnitude` draws the result.

Catalog columns (both sources): ``id``, ``x``, ``y`` [px, 0-based, pixel centres
at integer coordinates], ``flux`` [image units], ``mag`` (instrumental,
``-2.5 log10 flux``; NaN where ``flux <= 0``), ``fwhm`` [px], ``snr`` and
``flags`` (bit flags, :data:`FLAG_EDGE`, :data:`FLAG_SATURATED`,
:data:`FLAG_CROWDED`, :data:`FLAG_BAD_PIXELS`).
"""

import numpy as np
from astropy.table import Table

from astromix.errors import InputError

__all__ = [
    "FLAG_EDGE",
    "FLAG_SATURATED",
    "FLAG_CROWDED",
    "FLAG_BAD_PIXELS",
    "detect_sources",
    "read_ldac",
    "select_stars",
    "plot_size_magnitude",
]

FLAG_EDGE = 1         #: the measurement box leaves the image
FLAG_SATURATED = 2    #: a pixel of the source reaches the saturation level
FLAG_CROWDED = 4      #: another detection within ``crowd_radius``
FLAG_BAD_PIXELS = 8   #: non-finite or zero-weight pixels in the measurement box

_SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _adaptive_moments(data, good, x0, y0, sigma0, half, niter=40):
    """Vectorised adaptive (elliptical Gaussian-weighted) moments of many sources.

    ``data`` and ``good`` are padded by ``half`` pixels; (x0, y0) are positions
    in the unpadded frame.  Returns (x, y, sigma) with sigma = det(M)**(1/4) [px]
    of the adaptive covariance M (the sigma of a Gaussian source); NaN where the
    iteration fails.
    """
    n = len(x0)
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    xc = np.rint(x0).astype(int)
    yc = np.rint(y0).astype(int)
    off = np.arange(-half, half + 1)
    rows = (yc + half)[:, None, None] + off[None, :, None]
    cols = (xc + half)[:, None, None] + off[None, None, :]
    img = data[rows, cols]
    ok = good[rows, cols]
    img = np.where(ok, img, 0.0)
    gx = (xc[:, None, None] + off[None, None, :]).astype(float)
    gy = (yc[:, None, None] + off[None, :, None]).astype(float)
    x = np.asarray(x0, float).copy()
    y = np.asarray(y0, float).copy()
    mxx = np.full(n, float(sigma0) ** 2)
    myy = mxx.copy()
    mxy = np.zeros(n)
    smax2 = (half / 2.0) ** 2
    valid = np.ones(n, bool)
    for _ in range(niter):
        det = mxx * myy - mxy ** 2
        dx = gx - x[:, None, None]
        dy = gy - y[:, None, None]
        q = (myy[:, None, None] * dx ** 2 - 2 * mxy[:, None, None] * dx * dy
             + mxx[:, None, None] * dy ** 2) / det[:, None, None]
        wimg = img * np.exp(-0.5 * q)
        s = wimg.sum(axis=(1, 2))
        valid &= s > 0
        s = np.where(s > 0, s, 1.0)
        xn = (wimg * gx).sum(axis=(1, 2)) / s
        yn = (wimg * gy).sum(axis=(1, 2)) / s
        dx = gx - xn[:, None, None]
        dy = gy - yn[:, None, None]
        nxx = 2.0 * (wimg * dx ** 2).sum(axis=(1, 2)) / s
        nyy = 2.0 * (wimg * dy ** 2).sum(axis=(1, 2)) / s
        nxy = 2.0 * (wimg * dx * dy).sum(axis=(1, 2)) / s
        ndet = nxx * nyy - nxy ** 2
        bad = (ndet <= 0) | (nxx <= 0) | (nyy <= 0) | ~np.isfinite(ndet)
        bad |= (np.abs(xn - x0) > half / 2.0) | (np.abs(yn - y0) > half / 2.0)
        valid &= ~bad
        # keep the weight within the box; a too-large source hits the cap
        nxx = np.clip(np.where(bad, mxx, nxx), 0.05, smax2)
        nyy = np.clip(np.where(bad, myy, nyy), 0.05, smax2)
        nxy = np.where(bad, mxy, nxy)
        lim = 0.95 * np.sqrt(nxx * nyy)
        nxy = np.clip(nxy, -lim, lim)
        x = np.where(bad, x, xn)
        y = np.where(bad, y, yn)
        mxx, myy, mxy = nxx, nyy, nxy
    sigma = (mxx * myy - mxy ** 2) ** 0.25
    sigma = np.where(valid, sigma, np.nan)
    return np.where(valid, x, np.nan), np.where(valid, y, np.nan), sigma


def _mag(flux):
    flux = np.asarray(flux, float)
    out = np.full(flux.shape, np.nan)
    pos = flux > 0
    out[pos] = -2.5 * np.log10(flux[pos])
    return out


class _GlobalBackground:
    """A constant background and RMS: the sigma-clipped median and standard
    deviation of the unmasked pixels (astropy's ``sigma_clipped_stats``), where
    photutils' ``Background2D`` finds no usable box."""

    def __init__(self, image, mask):
        from astropy.stats import sigma_clipped_stats

        _, median, std = sigma_clipped_stats(image, mask=mask, sigma=3.0, maxiters=10)
        if not (np.isfinite(median) and np.isfinite(std) and std > 0):
            raise InputError("cannot estimate the image's background: too few pixels free "
                             "of sources")
        self.background = np.full(image.shape, float(median))
        self.background_rms = np.full(image.shape, float(std))


def detect_sources(image, *, weight=None, nsigma=5.0, saturation=None, npixels=5,
                   fwhm_guess=3.0, box_size=64, measure_size=25, edge=None,
                   crowd_radius=None):
    """Detect and measure the sources of an image with photutils.

    The background is estimated by :class:`photutils.background.Background2D`
    (sigma-clipped medians in ``box_size`` boxes, those more than 10% masked
    left out, or 80% where that leaves none, as on a stripe-shaped footprint;
    where still no box is usable, as in a small cut-out filled by a bright
    star, one sigma-clipped level for the whole image,
    :func:`astropy.stats.sigma_clipped_stats`), then again with
    the first pass's sources masked, and subtracted; sources are
    the connected regions of at least ``npixels`` pixels above ``nsigma``
    times the noise in the image smoothed by a Gaussian of FWHM ``fwhm_guess``
    (:func:`photutils.segmentation.detect_sources`, no deblending; the noise
    of the smoothed image is the pixel noise times the kernel's L2 norm), measured by
    :class:`photutils.segmentation.SourceCatalog` (isophotal flux and its
    error) and by adaptive Gaussian-weighted moments in a ``measure_size``
    square box (centroid and size; ``fwhm = 2.3548 det(M)**(1/4)``, the FWHM of
    a Gaussian source as drawn on the pixels, i.e. including the pixel
    response).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        The image [any flux unit]; may contain a sky background.  Non-finite
        pixels are masked (not refused) and flag the sources near them.
    weight : array_like, shape (ny, nx), optional
        Inverse-variance map [1 / image unit**2]; zero marks bad pixels.  The
        noise is ``1 / sqrt(weight)``; without it, the background RMS map.
    nsigma : float
        Detection threshold in units of the noise.
    saturation : float, optional
        Saturation level [image units, before background subtraction]; a source
        with any pixel of its segment at or above it gets :data:`FLAG_SATURATED`.
    npixels : int
        Minimum number of connected pixels of a detection.
    fwhm_guess : float
        FWHM [px] of the smoothing kernel and start of the moment iteration.
    box_size : int
        Box size [px] of the background mesh.
    measure_size : int
        Side [px] of the (odd) measurement box; :data:`FLAG_EDGE` when it leaves
        the image or ``edge`` is smaller than half of it.
    edge : float, optional
        Distance [px] to the border below which sources get :data:`FLAG_EDGE`
        (default: half of ``measure_size``).
    crowd_radius : float, optional
        Sources with another detection closer than this [px] get
        :data:`FLAG_CROWDED` (default: 3 ``fwhm_guess``).

    Returns
    -------
    astropy.table.Table
        One row per detection with ``id``, ``x``, ``y`` [px, 0-based], ``flux``,
        ``mag``, ``fwhm`` [px], ``snr`` and ``flags`` (see the module
        docstring); ``meta`` holds ``noise`` (median noise [image units]).

    Raises
    ------
    InputError
        If the image is not 2-D, the weight has another shape or negative
        values, no pixel is usable, or nothing is detected.
    """
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import SourceCatalog
    from photutils.segmentation import detect_sources as _segment
    from scipy import ndimage

    raw = np.asarray(image, dtype=np.float64)
    if raw.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {raw.shape}")
    bad = ~np.isfinite(raw)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != raw.shape:
            raise InputError(f"weight shape {weight.shape} differs from image {raw.shape}")
        if np.any(weight < 0) or not np.all(np.isfinite(weight)):
            raise InputError("weight must be finite and >= 0")
        bad |= weight == 0
    if bad.all():
        raise InputError("no usable pixel in the image")
    half = int(measure_size) // 2
    edge = half if edge is None else float(edge)
    crowd_radius = 3.0 * fwhm_guess if crowd_radius is None else float(crowd_radius)

    filled = np.where(bad, 0.0, raw)
    box = int(min(box_size, *raw.shape))
    bkg = None
    for exclude in (10.0, 80.0):
        # photutils drops boxes with more than `exclude` % of their pixels masked: a
        # footprint that is a stripe, or a mosaic's edge, needs the looser second try
        try:
            bkg = Background2D(filled, box, mask=bad, filter_size=3,
                               bkg_estimator=MedianBackground(), exclude_percentile=exclude)
            break
        except ValueError:
            continue
    if bkg is None:
        # no usable box at all (a small cut-out filled by a star, say): one
        # sigma-clipped level and RMS for the whole image
        bkg = _GlobalBackground(filled, bad)
    data = np.where(bad, 0.0, filled - bkg.background)
    if weight is not None:
        with np.errstate(divide="ignore"):
            noise = np.where(bad, np.inf, 1.0 / np.sqrt(weight))
    else:
        noise = np.where(bad, np.inf, bkg.background_rms)
    ksig = fwhm_guess / _SIGMA_TO_FWHM
    smooth = ndimage.gaussian_filter(data, ksig)
    # the noise of the smoothed image: white noise times the kernel's L2 norm
    reduce = 1.0 / (2.0 * np.sqrt(np.pi) * ksig)
    # positional n_pixels: the keyword was renamed in photutils 3
    segm = _segment(smooth, nsigma * reduce * noise, int(npixels), mask=bad)
    if segm is None or len(segm.labels) == 0:
        raise InputError("no source detected")
    # second pass: the background again with the (dilated) sources masked
    srcmask = ndimage.binary_dilation(segm.data > 0, iterations=int(np.ceil(fwhm_guess)))
    try:
        bkg = Background2D(filled, box, mask=bad | srcmask, filter_size=3,
                           bkg_estimator=MedianBackground(), exclude_percentile=50)
    except ValueError:
        pass        # too few unmasked pixels: keep the first background
    else:
        data = np.where(bad, 0.0, filled - bkg.background)
        if weight is None:
            noise = np.where(bad, np.inf, bkg.background_rms)
        smooth = ndimage.gaussian_filter(data, ksig)
        segm = _segment(smooth, nsigma * reduce * noise, int(npixels), mask=bad)
        if segm is None or len(segm.labels) == 0:
            raise InputError("no source detected")
    err = np.where(bad, 0.0, noise)
    cat = SourceCatalog(data, segm, error=err, mask=bad)
    centroid = np.atleast_2d(cat.centroid)
    flux = np.asarray(cat.segment_flux, float)
    fluxerr = np.asarray(getattr(cat, "segment_flux_err", None)
                         if hasattr(cat, "segment_flux_err") else cat.segment_fluxerr, float)
    labels = np.asarray(cat.label)

    good = np.pad(~bad, half, constant_values=False)
    inside = np.pad(np.ones(raw.shape, bool), half, constant_values=False)
    padded = np.pad(data, half)
    cx = np.clip(centroid[:, 0], 0, raw.shape[1] - 1)
    cy = np.clip(centroid[:, 1], 0, raw.shape[0] - 1)
    x, y, sigma = _adaptive_moments(padded, good, cx, cy, fwhm_guess / _SIGMA_TO_FWHM, half)
    x = np.where(np.isfinite(x), x, centroid[:, 0])
    y = np.where(np.isfinite(y), y, centroid[:, 1])

    ny, nx = raw.shape
    flags = np.zeros(len(x), np.int32)
    dist_edge = np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])
    flags[dist_edge < max(edge, 0)] |= FLAG_EDGE
    xi = np.clip(np.rint(x).astype(int), 0, nx - 1)
    yi = np.clip(np.rint(y).astype(int), 0, ny - 1)
    flags[(xi - half < 0) | (yi - half < 0) | (xi + half >= nx) | (yi + half >= ny)] |= FLAG_EDGE
    if saturation is not None:
        peak = ndimage.maximum(filled, labels=segm.data, index=labels)
        flags[np.asarray(peak) >= saturation] |= FLAG_SATURATED
    if len(x) > 1:
        from scipy.spatial import cKDTree
        tree = cKDTree(np.column_stack([x, y]))
        dd, _ = tree.query(np.column_stack([x, y]), k=2)
        flags[dd[:, 1] < crowd_radius] |= FLAG_CROWDED
    # bad pixels inside the measurement box (the border counts as edge, not bad)
    off = np.arange(-half, half + 1)
    rows = (yi + half)[:, None, None] + off[None, :, None]
    cols = (xi + half)[:, None, None] + off[None, None, :]
    badbox = (~good[rows, cols] & inside[rows, cols]).any(axis=(1, 2))
    flags[badbox] |= FLAG_BAD_PIXELS

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(fluxerr > 0, flux / fluxerr, np.nan)
    table = Table()
    table["id"] = labels.astype(np.int64)
    table["x"] = x
    table["y"] = y
    table["flux"] = flux
    table["mag"] = _mag(flux)
    table["fwhm"] = _SIGMA_TO_FWHM * sigma
    table["snr"] = snr
    table["flags"] = flags
    table.meta["noise"] = float(np.median(noise[~bad]))
    return table


def read_ldac(path, *, hdu=None):
    """Read a SExtractor FITS_LDAC catalog into the columns of :func:`detect_sources`.

    Reads the ``LDAC_OBJECTS`` extension (Bertin, SExtractor manual): positions
    ``X_IMAGE``/``Y_IMAGE`` (1-based, converted to 0-based), flux ``FLUX_AUTO``
    (else the first ``FLUX_APER``), ``FWHM_IMAGE`` [px], ``FLAGS``, S/N
    ``SNR_WIN`` (else flux over ``FLUXERR_AUTO``/``FLUXERR_APER``), ``NUMBER``.
    SExtractor run on a multi-extension image writes one ``LDAC_IMHEAD`` +
    ``LDAC_OBJECTS`` pair per CCD (HDU 1, 2 for the first CCD, 3, 4 for the
    second, ...), with pixel positions in each CCD's own frame: such a file
    is read one CCD at a time, chosen with ``hdu``.

    Parameters
    ----------
    path : str or path-like
        The FITS_LDAC file.
    hdu : int, optional
        Index of the ``LDAC_OBJECTS`` HDU to read (0 is the primary HDU;
        negative values count from the end, as in astropy); by default the
        file's only one.  Needed for a catalog with several (one per CCD).

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``x``, ``y``, ``flux``, ``mag``, ``fwhm``, ``snr``, ``flags``.

    Raises
    ------
    InputError
        If the file cannot be read (missing, not FITS, truncated or damaged),
        has no ``LDAC_OBJECTS`` extension, lacks a needed column, or holds no
        row; if it holds several ``LDAC_OBJECTS`` extensions and ``hdu`` is
        not given; or if ``hdu`` is not an integer, is out of range or is not
        an ``LDAC_OBJECTS`` extension.  The message names the file (and
        lists the ``LDAC_OBJECTS`` HDUs).
    """
    import operator

    from astropy.io import fits

    if hdu is not None:
        try:
            if isinstance(hdu, bool):
                raise TypeError
            hdu = operator.index(hdu)
        except TypeError:
            raise InputError(f"hdu must be an HDU index (int), got {hdu!r}") from None
    try:
        with fits.open(path) as hdul:
            objects = [i for i, h in enumerate(hdul)
                       if str(h.header.get("EXTNAME", "")).strip().upper() == "LDAC_OBJECTS"]
            listing = ", ".join(str(i) for i in objects)
            if not objects:
                raise InputError(f"{path}: no LDAC_OBJECTS extension (not a FITS_LDAC file)")
            if hdu is None:
                if len(objects) > 1:
                    # SExtractor on a multi-extension image: one table per CCD
                    raise InputError(
                        f"{path}: {len(objects)} LDAC_OBJECTS extensions (one per CCD?) at "
                        f"HDU {listing}; choose one with hdu=<index>")
                index = objects[0]
            else:
                if not -len(hdul) <= hdu < len(hdul):
                    raise InputError(f"{path}: no HDU {hdu} (the file has HDU 0 to "
                                     f"{len(hdul) - 1}); LDAC_OBJECTS at HDU {listing}")
                index = hdu % len(hdul)
                if index not in objects:
                    raise InputError(f"{path}: HDU {hdu} is not an LDAC_OBJECTS extension; "
                                     f"LDAC_OBJECTS at HDU {listing}")
            src = Table(hdul[index].data)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        # what astropy raises for a missing, truncated or damaged file
        raise InputError(f"{path}: cannot read FITS file ({exc})") from exc
    if len(src) == 0:
        raise InputError(f"{path}: empty catalog")
    cols = set(src.colnames)

    def first(name):
        col = np.asarray(src[name], float)
        return col[:, 0] if col.ndim == 2 else col

    for need in ("X_IMAGE", "Y_IMAGE", "FWHM_IMAGE"):
        if need not in cols:
            raise InputError(f"{path}: column {need} missing")
    if "FLUX_AUTO" in cols:
        flux, errname = first("FLUX_AUTO"), "FLUXERR_AUTO"
    elif "FLUX_APER" in cols:
        flux, errname = first("FLUX_APER"), "FLUXERR_APER"
    else:
        raise InputError(f"{path}: neither FLUX_AUTO nor FLUX_APER")
    if "SNR_WIN" in cols:
        snr = first("SNR_WIN")
    elif errname in cols:
        fluxerr = first(errname)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(fluxerr > 0, flux / fluxerr, np.nan)
    else:
        raise InputError(f"{path}: no SNR_WIN nor {errname} for the S/N")
    table = Table()
    table["id"] = (np.asarray(src["NUMBER"], np.int64) if "NUMBER" in cols
                   else np.arange(1, len(src) + 1, dtype=np.int64))
    table["x"] = first("X_IMAGE") - 1.0
    table["y"] = first("Y_IMAGE") - 1.0
    table["flux"] = flux
    table["mag"] = _mag(flux)
    table["fwhm"] = first("FWHM_IMAGE")
    table["snr"] = snr
    table["flags"] = (np.asarray(src["FLAGS"], np.int32) if "FLAGS" in cols
                      else np.zeros(len(src), np.int32))
    return table


def _histogram_mode(values, bin_width, *, peak_fraction=0.3, nbins=10, min_count=5,
                    max_iter=20):
    """Stellar-locus FWHM [px] by iterated histogram zoom (ShapePipe's rule).

    A histogram of ``bin_width`` bins (lightly smoothed) locates the locus: the
    smallest-FWHM local maximum holding at least ``peak_fraction`` (0.3) of the
    highest bin (stars are the most compact sources; in cluster and deep
    fields the broad hump of small galaxies can outnumber them).  The window
    of that bin +- 2 bins is then zoomed: histogram in ``nbins`` bins, keep the
    peak bin and its neighbours, repeat until the window is narrower than
    ``bin_width / 10`` or holds fewer than ``min_count`` values; the mode is
    the median of the values left.
    """
    v = np.asarray(values, float)
    v = np.sort(v[np.isfinite(v)])
    if v.size == 0:
        raise InputError("no finite FWHM to find the stellar locus")
    nb = int(min(max(np.ceil((v[-1] - v[0]) / bin_width), 1), 2000))
    counts, edges = np.histogram(v, bins=nb, range=(v[0], v[0] + nb * bin_width))
    sm = np.convolve(np.pad(counts, 1), [0.25, 0.5, 0.25], mode="valid")
    left = np.r_[-np.inf, sm[:-1]]
    right = np.r_[sm[1:], -np.inf]
    peaks = np.nonzero((sm >= left) & (sm >= right) & (sm >= peak_fraction * sm.max()))[0]
    k = int(peaks[0])
    lo, hi = edges[max(k - 2, 0)], edges[min(k + 3, nb)]
    v = v[(v >= lo) & (v <= hi)]
    for _ in range(max_iter):
        if hi - lo < bin_width / 10.0 or v.size < min_count:
            break
        counts, edges = np.histogram(v, bins=nbins, range=(lo, hi))
        k = int(np.argmax(counts))
        nlo, nhi = edges[max(k - 1, 0)], edges[min(k + 2, nbins)]
        w = v[(v >= nlo) & (v <= nhi)]
        if w.size < min_count:
            break
        v, lo, hi = w, nlo, nhi
    return float(np.median(v))


def select_stars(catalog, *, snr_range=(20.0, None), mag_range=None, fwhm_range=(1.0, 20.0),
                 max_flags=0, locus_width=0.2, reserve=0.2, rng=None, seed=None):
    """Select the stars on the size-magnitude locus and keep a reserve (ShapePipe's rule).

    1. Pre-selection: ``flags <= max_flags``, ``snr`` in ``snr_range``, ``mag``
       in ``mag_range`` and ``fwhm`` in ``fwhm_range`` (finite values only).
    2. The stellar locus is the mode of the pre-selected FWHM, found by an
       iterated histogram zoom (ShapePipe ``setools``; see REFERENCE.md),
       started on the smallest-FWHM histogram peak holding at least 30% of
       the highest (so that a hump of small galaxies cannot win).
    3. Stars: pre-selected sources with ``|fwhm - mode| <= locus_width``.
    4. A fraction ``reserve`` of the stars, drawn at random, is kept out for
       validation (``round(reserve * nstars)`` of them).

    Parameters
    ----------
    catalog : astropy.table.Table
        Columns ``mag``, ``fwhm`` [px], ``snr``, ``flags`` (as from
        :func:`detect_sources` or :func:`read_ldac`).
    snr_range, mag_range, fwhm_range : (float, float) or None
        Inclusive ranges (S/N; instrumental mag; FWHM [px]); None (whole or as
        either bound): no cut.  No upper S/N cut by default: saturation is a flag.
    max_flags : int
        Largest accepted value of ``flags`` (0: clean sources only).
    locus_width : float
        Half width [px] of the stellar locus around the FWHM mode.
    reserve : float
        Fraction of the stars, in [0, 1), kept in reserve.
    rng : numpy.random.Generator, optional
        Random generator for the reserve draw.
    seed : int, optional
        Seed of a new generator, when ``rng`` is not given.

    Returns
    -------
    astropy.table.Table
        A copy of ``catalog`` (all rows) with boolean columns ``preselected``,
        ``star`` (on the locus), ``reserve`` (stars kept out) and ``selected``
        (``star`` and not ``reserve``: the stars to model); ``meta`` gets
        ``fwhm_mode`` [px], ``locus_width`` [px], ``n_stars`` and ``n_reserve``.

    Raises
    ------
    InputError
        If a column is missing, ``reserve`` is outside [0, 1), or no source
        passes the pre-selection.
    """
    for name in ("mag", "fwhm", "snr", "flags"):
        if name not in catalog.colnames:
            raise InputError(f"catalog lacks column {name!r}")
    if not 0.0 <= reserve < 1.0:
        raise InputError(f"reserve must be in [0, 1), got {reserve}")
    if locus_width <= 0:
        raise InputError(f"locus_width must be > 0 px, got {locus_width}")
    out = catalog.copy()
    fwhm = np.asarray(out["fwhm"], float)
    snr = np.asarray(out["snr"], float)
    mag = np.asarray(out["mag"], float)
    pre = np.asarray(out["flags"]) <= max_flags
    pre &= np.isfinite(fwhm)

    def within(values, bounds):
        if bounds is None:
            return np.ones(values.shape, bool)
        lo, hi = bounds
        lo = -np.inf if lo is None else lo
        hi = np.inf if hi is None else hi
        with np.errstate(invalid="ignore"):
            return np.isfinite(values) & (values >= lo) & (values <= hi)

    pre &= within(snr, snr_range) & within(mag, mag_range) & within(fwhm, fwhm_range)
    if not pre.any():
        raise InputError("no source passes the pre-selection (flags, S/N, magnitude, FWHM)")
    mode = _histogram_mode(fwhm[pre], locus_width)
    star = pre & (np.abs(fwhm - mode) <= locus_width)
    if rng is None:
        rng = np.random.default_rng(seed)
    idx = np.nonzero(star)[0]
    nres = int(round(reserve * idx.size))
    res = np.zeros(len(out), bool)
    res[rng.choice(idx, size=nres, replace=False)] = True
    out["preselected"] = pre
    out["star"] = star
    out["reserve"] = res
    out["selected"] = star & ~res
    out.meta["fwhm_mode"] = mode
    out.meta["locus_width"] = float(locus_width)
    out.meta["n_stars"] = int(idx.size)
    out.meta["n_reserve"] = nres
    return out


def plot_size_magnitude(catalog, ax=None):
    """Size-magnitude diagram: all sources, selected and reserve stars, the locus.

    Parameters
    ----------
    catalog : astropy.table.Table
        The output of :func:`select_stars` (columns ``mag``, ``fwhm`` [px],
        ``selected``, ``reserve``; ``meta["fwhm_mode"]``).  A catalog without
        the selection columns shows all sources only; one without ``reserve``
        no reserve stars.
    ax : matplotlib.axes.Axes, optional
        Axes to draw in (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 4.5))
    mag = np.asarray(catalog["mag"], float)
    fwhm = np.asarray(catalog["fwhm"], float)
    ax.scatter(mag, fwhm, s=4, c="0.6", label=f"all sources ({len(catalog)})")
    if "selected" in catalog.colnames:
        sel = np.asarray(catalog["selected"], bool)
        ax.scatter(mag[sel], fwhm[sel], s=10, c="C0", label=f"stars ({sel.sum()})")
        if "reserve" in catalog.colnames:
            res = np.asarray(catalog["reserve"], bool)
            ax.scatter(mag[res], fwhm[res], s=14, c="C1", marker="s",
                       label=f"reserve ({res.sum()})")
    mode = catalog.meta.get("fwhm_mode")
    if mode is not None:
        width = catalog.meta.get("locus_width", 0.2)
        ax.axhline(mode, color="C3", lw=1, label=f"FWHM mode {mode:.2f} px")
        ax.axhspan(mode - width, mode + width, color="C3", alpha=0.15)
        ax.set_ylim(0, 3 * mode)
    ax.set_xlabel("instrumental magnitude")
    ax.set_ylabel("FWHM [px]")
    ax.legend(loc="upper left", fontsize="small")
    return ax
