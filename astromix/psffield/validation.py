"""Validation of a PSF-field model on reserve stars (ShapePipe / Piff statistics).

* :func:`validate_psf_field` -- per reserve star, HSM adaptive moments
  (:func:`galsim.hsm.FindAdaptiveMom`) of the star and of the model with its
  flux and sub-pixel centre fitted to the star: shapes, sizes, their residuals
  and the pixel RMSE;
* :func:`rho_statistics` -- the rho statistics rho1..rho5 of Jarvis et al.
  (2016) with TreeCorr;
* :func:`plot_whiskers` -- whisker plot of the star shapes and of the residuals.

Ellipticities are GalSim's *reduced shear* ``g = (a - b) / (a + b)`` of the
HSM ``observed_shape`` (``g1, g2``), stored in the columns ``e1_*, e2_*`` as
ShapePipe does.
"""

import numpy as np

from ..errors import InputError

__all__ = ["FLAG_EDGE", "FLAG_HSM_STAR", "FLAG_HSM_MODEL", "validate_psf_field",
           "rho_statistics", "plot_whiskers"]

#: Star stamp leaves the image.
FLAG_EDGE = 1
#: HSM failed on the star stamp.
FLAG_HSM_STAR = 2
#: HSM failed on the model stamp (or the model could not be drawn).
FLAG_HSM_MODEL = 4


def _hsm(stamp, weight=None):
    """(g1, g2, sigma, x0, y0) of HSM adaptive moments (0-based stamp coordinates) or None."""
    import galsim

    img = galsim.ImageD(np.ascontiguousarray(stamp, dtype=np.float64), xmin=0, ymin=0)
    wimg = None
    if weight is not None:
        wimg = galsim.ImageI(np.ascontiguousarray(weight > 0, dtype=np.int32), xmin=0, ymin=0)
    try:
        res = galsim.hsm.FindAdaptiveMom(img, weight=wimg, strict=True)
    except galsim.GalSimError:
        return None
    if res.moments_status != 0 or not res.moments_sigma > 0:
        return None
    shape = res.observed_shape
    return (shape.g1, shape.g2, res.moments_sigma, res.moments_centroid.x,
            res.moments_centroid.y)


def _reflux(psfex, stamp, w, x, y, dx, dy, size, fit_center, n_steps=4, eps=0.02):
    """Weighted least-squares flux (and sub-pixel centre) of the model on a stamp.

    Returns ``(flux, cx, cy, psf)``: ``(cx, cy)`` the model centre relative to
    the stamp's central pixel and ``psf`` the unit-sum model drawn there.
    """
    def draw(cx, cy):
        return psfex.image(x, y, shape=(size, size), center=(cx, cy))

    def linear_flux(psf):
        den = float(np.sum(w * psf ** 2))
        return float(np.sum(w * stamp * psf) / den) if den > 0 else np.nan

    psf = draw(dx, dy)
    flux = linear_flux(psf)
    if not fit_center or not np.isfinite(flux) or flux <= 0:
        return flux, dx, dy, psf
    for _ in range(n_steps):
        gx = (draw(dx + eps, dy) - draw(dx - eps, dy)) / (2 * eps)
        gy = (draw(dx, dy + eps) - draw(dx, dy - eps)) / (2 * eps)
        jac = np.stack([psf.ravel(), flux * gx.ravel(), flux * gy.ravel()], axis=1)
        r = (stamp - flux * psf).ravel()
        jw = jac * w.ravel()[:, None]
        try:
            step = np.linalg.solve(jw.T @ jac, jw.T @ r)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        step[1:] = np.clip(step[1:], -0.5, 0.5)
        dx, dy = dx + step[1], dy + step[2]
        psf = draw(dx, dy)
        flux = linear_flux(psf)
        if max(abs(step[1]), abs(step[2])) < 1e-4:
            break
    return flux, dx, dy, psf


def validate_psf_field(image, model, stars, *, size=25, weight=None, background=None,
                       fit_center=True):
    """Compare a PSF-field model with the reserve stars (HSM moments, pixel RMSE).

    Parameters
    ----------
    image : array-like, shape (ny, nx)
    model : PSFFieldModel, MixturePSFFieldModel or astromix.io.psfex.PSFExModel
        A pixel model (evaluated through ``to_psfex()``) or anything with a
        PSFExModel's ``image(x, y, shape=, center=)``.
    stars : astropy.table.Table
        Columns ``x``, ``y`` (0-based); when it has a ``reserve`` column only
        those rows are used (the output of :func:`select_stars`).
    size : int, optional
        Side of the stamps [px], odd (default 25).
    weight : array-like, shape (ny, nx), optional
        Inverse variance; pixels with weight 0 are masked in HSM and the RMSE.
    background : None or float, optional
        None (default): subtract the median of each stamp's outer 2-pixel
        ring; a number: subtract it.
    fit_center : bool, optional
        Fit the model's flux *and* sub-pixel centre to each star by weighted
        least squares (Gauss-Newton from the HSM centroid; default), as Piff
        refits its reserve stars, so that the comparison does not depend on
        how a model defines its centre.  False: the model is centred on the
        star's HSM centroid and only its flux is fitted.

    Returns
    -------
    astropy.table.Table
        One row per star: ``x, y`` (input), ``x_hsm, y_hsm`` (HSM centroid,
        0-based), ``x_model, y_model`` (the model's fitted centre, 0-based),
        ``flux`` (flux of the matched model), ``e1_star, e2_star,
        sigma_star`` [px], ``e1_model, e2_model, sigma_model``, ``de1, de2``
        (star - model), ``dsigma_over_sigma`` ((star - model) / star),
        ``rmse`` (pixel RMS of star - model divided by the star's peak) and
        ``flag`` (:data:`FLAG_EDGE`, :data:`FLAG_HSM_STAR`,
        :data:`FLAG_HSM_MODEL`; failed values are NaN).  ``e`` is GalSim's
        reduced shear ``g``.

    Raises
    ------
    InputError
        On a bad image, size or star table.
    """
    from astropy.table import Table

    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise InputError(f"image must be 2-D, got shape {data.shape}")
    if isinstance(size, bool) or int(size) != size or size < 5 or size % 2 == 0:
        raise InputError(f"size must be an odd integer >= 5, got {size!r}")
    size = int(size)
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != data.shape:
            raise InputError(f"weight shape {weight.shape} differs from image {data.shape}")
    for col in ("x", "y"):
        if col not in stars.colnames:
            raise InputError(f"stars has no column {col!r}")
    if "reserve" in stars.colnames:
        stars = stars[np.asarray(stars["reserve"], bool)]
    from .model import PSFFieldModel

    # a pixel model through its PSFEx form; others (PSFExModel, the mixture field)
    # draw themselves
    psfex = model.to_psfex() if isinstance(model, PSFFieldModel) else model
    half = size // 2
    ny, nx = data.shape
    yy, xx = np.mgrid[:size, :size]
    ring = (np.minimum(np.minimum(xx, yy), np.minimum(size - 1 - xx, size - 1 - yy)) < 2)

    names = ("x_hsm", "y_hsm", "x_model", "y_model", "flux", "e1_star", "e2_star", "sigma_star",
             "e1_model",
             "e2_model", "sigma_model", "rmse")
    n = len(stars)
    cols = {k: np.full(n, np.nan) for k in names}
    flag = np.zeros(n, np.int32)
    xs = np.asarray(stars["x"], float)
    ys = np.asarray(stars["y"], float)
    for i in range(n):
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            flag[i] |= FLAG_EDGE
            continue
        ix, iy = int(round(xs[i])), int(round(ys[i]))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            flag[i] |= FLAG_EDGE
            continue
        sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        stamp = data[sl].copy()
        w = None if weight is None else weight[sl]
        good = np.isfinite(stamp) if w is None else (np.isfinite(stamp) & (w > 0))
        if background is None:
            bkg = np.median(stamp[ring & good]) if np.any(ring & good) else 0.0
        else:
            bkg = float(background)
        stamp = np.where(good, stamp - bkg, 0.0)
        star = _hsm(stamp, None if w is None and good.all() else good.astype(float))
        if star is None:
            flag[i] |= FLAG_HSM_STAR
            continue
        g1, g2, sig, x0, y0 = star
        cols["x_hsm"][i], cols["y_hsm"][i] = ix - half + x0, iy - half + y0
        cols["e1_star"][i], cols["e2_star"][i], cols["sigma_star"][i] = g1, g2, sig
        wfit = good.astype(float) if w is None else np.where(good, w, 0.0)
        try:
            flux, cx, cy, psf = _reflux(psfex, stamp, wfit, cols["x_hsm"][i], cols["y_hsm"][i],
                                        x0 - half, y0 - half, size, fit_center)
        except InputError:
            flag[i] |= FLAG_HSM_MODEL
            continue
        if not np.isfinite(flux) or flux <= 0:
            flag[i] |= FLAG_HSM_MODEL
            continue
        cols["x_model"][i], cols["y_model"][i] = ix + cx, iy + cy
        mod = flux * psf
        cols["flux"][i] = flux
        peak = float(np.max(stamp[good]))
        cols["rmse"][i] = np.sqrt(np.mean((stamp[good] - mod[good]) ** 2)) / peak
        res = _hsm(np.where(good, mod, 0.0),
                   None if w is None and good.all() else good.astype(float))
        if res is None:
            flag[i] |= FLAG_HSM_MODEL
            continue
        cols["e1_model"][i], cols["e2_model"][i], cols["sigma_model"][i] = res[:3]

    out = Table()
    out["x"] = xs
    out["y"] = ys
    for k in names[:-1]:
        out[k] = cols[k]
    out["de1"] = out["e1_star"] - out["e1_model"]
    out["de2"] = out["e2_star"] - out["e2_model"]
    out["dsigma_over_sigma"] = (out["sigma_star"] - out["sigma_model"]) / out["sigma_star"]
    out["rmse"] = cols["rmse"]
    out["flag"] = flag
    ok = flag == 0
    out.meta["n_stars"] = int(n)
    out.meta["n_valid"] = int(ok.sum())
    out.meta["ellipticity"] = "reduced shear g of galsim.hsm observed_shape"
    for k in ("de1", "de2", "dsigma_over_sigma", "rmse"):
        out.meta[f"median_{k}"] = float(np.median(out[k][ok])) if ok.any() else float("nan")
    return out


def rho_statistics(table, *, min_sep=0.5, max_sep=300.0, nbins=10, sep_units="arcmin",
                   pixel_scale=1.0):
    """Rho statistics rho1..rho5 (Jarvis et al. 2016) of a validation table, with TreeCorr.

    With ``e`` the model ellipticity, ``q = e_star - e_model`` and
    ``dT/T = (T_star - T_model) / T_star`` (``T = 2 sigma^2``)::

        rho1 = <q q>, rho2 = <e q>, rho3 = <e dT/T, e dT/T>,
        rho4 = <q, e dT/T>, rho5 = <e, e dT/T>

    (the ``xi_+`` of :class:`treecorr.GGCorrelation`).

    Parameters
    ----------
    table : astropy.table.Table
        Output of :func:`validate_psf_field` (columns ``x, y, e1_star,
        e2_star, sigma_star, e1_model, e2_model, sigma_model``; rows with a
        non-zero ``flag`` or NaN are dropped).
    min_sep, max_sep : float, optional
        Separation range in ``sep_units`` (default 0.5 - 300 arcmin).
    nbins : int, optional
        Number of logarithmic bins (default 10).
    sep_units : str, optional
        TreeCorr unit of the separations (default ``"arcmin"``).
    pixel_scale : float, optional
        Arcsec per pixel of ``x, y`` (default 1).

    Returns
    -------
    astropy.table.Table
        ``r`` (mean separation in ``sep_units``; bin centre where empty),
        ``npairs``, ``rho1 .. rho5`` and ``rho1_err .. rho5_err`` (shot
        noise); NaN in empty bins.

    Raises
    ------
    InputError
        With fewer than 2 usable rows.
    """
    import treecorr
    from astropy.table import Table

    cols = ("x", "y", "e1_star", "e2_star", "sigma_star", "e1_model", "e2_model", "sigma_model")
    for c in cols:
        if c not in table.colnames:
            raise InputError(f"table has no column {c!r}")
    v = {c: np.asarray(table[c], float) for c in cols}
    ok = np.all([np.isfinite(v[c]) for c in cols], axis=0)
    if "flag" in table.colnames:
        ok &= np.asarray(table["flag"]) == 0
    if ok.sum() < 2:
        raise InputError(f"rho statistics need at least 2 valid stars, got {int(ok.sum())}")
    v = {c: a[ok] for c, a in v.items()}
    x = v["x"] * pixel_scale
    y = v["y"] * pixel_scale
    e1, e2 = v["e1_model"], v["e2_model"]
    q1, q2 = v["e1_star"] - e1, v["e2_star"] - e2
    t_star, t_model = 2 * v["sigma_star"] ** 2, 2 * v["sigma_model"] ** 2
    dtt = (t_star - t_model) / t_star

    def cat(g1, g2):
        return treecorr.Catalog(x=x, y=y, x_units="arcsec", y_units="arcsec", g1=g1, g2=g2)

    ce, cq, cw = cat(e1, e2), cat(q1, q2), cat(e1 * dtt, e2 * dtt)
    pairs = {1: (cq, cq), 2: (ce, cq), 3: (cw, cw), 4: (cq, cw), 5: (ce, cw)}
    out = Table()
    for k, (a, b) in pairs.items():
        gg = treecorr.GGCorrelation(min_sep=min_sep, max_sep=max_sep, nbins=nbins,
                                    sep_units=sep_units, var_method="shot")
        if a is b:
            gg.process(a)
        else:
            gg.process(a, b)
        empty = gg.npairs == 0
        if k == 1:
            out["r"] = np.where(empty, np.exp(gg.logr), gg.meanr)
            out["npairs"] = gg.npairs
        out[f"rho{k}"] = np.where(empty, np.nan, gg.xip)
        out[f"rho{k}_err"] = np.where(empty, np.nan, np.sqrt(gg.varxip))
    out.meta["sep_units"] = sep_units
    out.meta["n_stars"] = int(ok.sum())
    return out


def plot_whiskers(table, ax=None, *, scale=None):
    """Whiskers of the star ellipticities (black) and of the residuals x 10 (red).

    Parameters
    ----------
    table : astropy.table.Table
        Output of :func:`validate_psf_field`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw in (default: a new figure).
    scale : float, optional
        Whisker length [px] of ``|e| = 0.1`` (default: a tenth of the field).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 5.5))
    x = np.asarray(table["x"], float)
    y = np.asarray(table["y"], float)
    ok = np.isfinite(np.asarray(table["de1"], float))
    if scale is None:
        extent = max(np.ptp(x) if x.size else 1.0, np.ptp(y) if y.size else 1.0, 1.0)
        scale = extent / 10.0

    def whisk(e1, e2, **kw):
        e1, e2 = np.asarray(e1, float)[ok], np.asarray(e2, float)[ok]
        mod = np.hypot(e1, e2)
        beta = 0.5 * np.arctan2(e2, e1)
        u, v = mod * np.cos(beta), mod * np.sin(beta)
        ax.quiver(x[ok], y[ok], u, v, angles="xy", scale_units="xy", scale=0.1 / scale,
                  headwidth=0, headlength=0, headaxislength=0, pivot="middle", **kw)

    whisk(table["e1_star"], table["e2_star"], color="k", label="star e")
    whisk(10 * np.asarray(table["de1"]), 10 * np.asarray(table["de2"]), color="C3",
          label="10 x (star - model)")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"reserve stars ({int(ok.sum())}); |e| = 0.1 -> {scale:.0f} px")
    return ax
