"""The PSF at a sky position in every exposure that covers it, through each exposure's WCS."""

import numpy as np

from ..errors import InputError

__all__ = ["psf_at_sky"]


def psf_at_sky(exposures, ra, dec=None, *, kind="mixture", shape=None):
    """The PSF of each exposure at one sky position.

    Each exposure's PSF (its ``psf``: a PSF-field model from
    :func:`~astromix.psffield.fit_psf_field` or
    :func:`~astromix.psffield.fit_mixture_psf_field`, a PSFEx model, or any
    provider :meth:`astromix.Exposure.psf_at` accepts) is evaluated at the
    pixel where the exposure's full WCS (astropy, with SIP/TPV, or gwcs)
    puts ``(ra, dec)``.  The PSF is given in that exposure's own pixel frame.

    Parameters
    ----------
    exposures : sequence of astromix.Exposure
        Each with a WCS and a PSF.
    ra, dec : float or Quantity
        The sky position [deg] (ICRS), scalars; or ``ra`` a scalar SkyCoord
        and ``dec`` None.
    kind : {"mixture", "image"}, optional
        Return :class:`~astromix.GaussianMixturePSF` objects (default), or unit-sum
        images from the PSF's ``image(x, y, shape=...)`` (pixel models, PSFEx
        models, mixture fields).
    shape : tuple of int, optional
        ``(ny, nx)`` of the images with ``kind="image"`` (default: the model's).

    Returns
    -------
    astropy.table.Table
        One row per exposure, in order: ``index``, ``name``, ``band``, ``x``,
        ``y`` [px, 0-based], ``inside`` (the position falls on the exposure's
        pixels) and ``psf`` (object column: the PSF, None outside).

    Raises
    ------
    InputError
        When ``ra`` or ``dec`` is not a scalar (one position per call), an
        exposure has no WCS or no PSF, ``kind`` is unknown, or the PSF cannot
        draw an image.

    Examples
    --------
    >>> from astromix.psffield import psf_at_sky
    >>> len(psf_at_sky([], 150.0, 2.0))
    0
    """
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    given = {"ra": ra} if isinstance(ra, SkyCoord) or dec is None else {"ra": ra, "dec": dec}
    if any(np.shape(v) != () for v in given.values()):
        got = ", ".join(f"{k} of shape {np.shape(v)}" for k, v in given.items())
        raise InputError(f"psf_at_sky takes one sky position (scalar ra, dec or a scalar "
                         f"SkyCoord), got {got}; call it once per position")
    if kind not in ("mixture", "image"):
        raise InputError(f"kind must be 'mixture' or 'image', got {kind!r}")
    rows = []
    for i, exp in enumerate(exposures):
        x, y = exp.world_to_pixel(ra, dec)
        x, y = float(np.asarray(x)), float(np.asarray(y))
        ny, nx = exp.data.shape
        inside = bool(np.isfinite(x) and np.isfinite(y) and -0.5 <= x < nx - 0.5
                      and -0.5 <= y < ny - 0.5)
        psf = None
        if inside:
            if kind == "mixture":
                psf = exp.psf_at(x, y)
            else:
                model = exp.psf
                if model is None:
                    raise InputError(f"exposure {i} has no PSF")
                if not callable(getattr(model, "image", None)):
                    raise InputError(f"the PSF of exposure {i} ({type(model).__name__}) cannot "
                                     "draw an image; use kind='mixture'")
                origin = getattr(exp, "psf_origin", (0.0, 0.0))
                psf = model.image(x + origin[0], y + origin[1], shape=shape)
        rows.append((i, getattr(exp, "name", None) or f"exposure {i}", exp.band, x, y, inside,
                     psf))
    table = Table(rows=rows or None, names=("index", "name", "band", "x", "y", "inside", "psf"),
                  dtype=(int, object, object, float, float, bool, object))
    return table
