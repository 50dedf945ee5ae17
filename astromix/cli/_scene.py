"""Shared by ``astromix demo`` and ``astromix fit-scene``: the outputs of a scene fit."""

import os

import numpy as np

from ..errors import AstromixError
from ._shared import atomic_path

__all__ = ["write_scene_outputs", "write_residuals_png", "write_scene_asdf", "print_report"]


def _write_ecsv(path, table):
    with atomic_path(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)


def write_scene_asdf(path, fitted, catalog, exposures, info=None):
    """Write the fitted scene, its catalog and the exposures to one ASDF file, atomically.

    The tree holds ``scene`` (the :class:`~astromix.SceneModel`), ``catalog``
    (astropy Table), ``exposures`` (list of :class:`~astromix.Exposure`, with
    their PSF mixtures, so the fit can be repeated without the original files;
    a position-dependent PSF is stored as its mixture at the first source)
    and ``fit`` (chi2, dof, time).
    """
    import copy

    import asdf

    from ..models.psf import GaussianMixturePSF

    stored = []
    for e in exposures:
        if e.psf is not None and not isinstance(e.psf, GaussianMixturePSF):
            # a position-dependent PSF (PSFEx) is stored as its mixture at the first
            # source on the image, so that the file can be re-fitted on its own
            e = copy.copy(e)
            ra, dec = float(fitted.ra_0.value), float(fitted.dec_0.value)
            x, y = e.world_to_pixel(ra, dec)
            e.psf = e.psf_at(float(x), float(y))
            e.meta = dict(e.meta, psf_note=f"PSF mixture at the position of source 0 "
                                           f"(x={float(x):.2f}, y={float(y):.2f})")
        stored.append(e)
    tree = {"scene": fitted, "catalog": catalog, "exposures": stored,
            "fit": {k: (v.item() if isinstance(v, np.generic) else v)
                    for k, v in (info or {}).items()}}
    with atomic_path(path) as tmp:
        asdf.AsdfFile(tree).write_to(tmp)


def write_residuals_png(path, fitted, exposures, table, title=""):
    """Data, model and residual / sigma for every exposure, one row each (PNG, atomic).

    Parameters
    ----------
    path : str
        The PNG file.
    fitted : SceneModel
        The fitted scene.
    exposures : list of Exposure
        The exposures of the fit, in its order.
    table : astropy.table.Table
        ``fit_info["exposures"]``: one row per exposure, in the same order;
        its ``background`` [data units] is subtracted from the data.  Rows are
        paired with the exposures by position, not by name (two images may
        share a file name).
    title : str, optional
        The figure's title.

    Raises
    ------
    ValueError
        If ``table`` does not have one row per exposure.
    OSError
        If the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(exposures)
    if len(table) != n:
        raise ValueError(f"the exposure table has {len(table)} rows for {n} exposures")
    fig = Figure(figsize=(8.5, 2.4 * n + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for row, e, bg in zip(axes, exposures, table["background"]):
        model = fitted.render(e)
        bg = float(bg)
        w = np.asarray(e.weight)
        data = np.where(w > 0, np.asarray(e.data, dtype=float) - bg, np.nan)
        chi = np.where(w > 0, (data - model) * np.sqrt(w), np.nan)
        lo, hi = np.nanpercentile(data, [1, 99.7])
        for ax, img, label in ((row[0], data, "data - background"), (row[1], model, "model")):
            im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="gray_r")
            ax.set_title(f"{e.name} [{e.band}]: {label}", fontsize=7)
        fig.colorbar(im, ax=row[1], shrink=0.8)
        im = row[2].imshow(chi, origin="lower", vmin=-5, vmax=5, cmap="RdBu_r")
        row[2].set_title("(data - model) / sigma", fontsize=7)
        fig.colorbar(im, ax=row[2], shrink=0.8)
        for ax in row:
            ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


def write_scene_outputs(folder, fitted, catalog, exposures, *, plot=True, title=""):
    """catalog.ecsv, exposures.ecsv, scene.asdf and (with ``plot``) residuals.png in ``folder``.

    Returns the list of written paths.
    """
    info = fitted.fit_info
    table = info["exposures"]
    paths = {"catalog": os.path.join(folder, "catalog.ecsv"),
             "exposures": os.path.join(folder, "exposures.ecsv"),
             "scene": os.path.join(folder, "scene.asdf"),
             "residuals": os.path.join(folder, "residuals.png")}
    fit_meta = {"chi2": float(info["chi2"]), "dof": int(info["dof"]),
                "time_s": float(info["time_s"]), "n_free": len(info["free_parameters"])}
    try:
        _write_ecsv(paths["catalog"], catalog)
        _write_ecsv(paths["exposures"], table)
        write_scene_asdf(paths["scene"], fitted, catalog, exposures, fit_meta)
        written = [paths["catalog"], paths["exposures"], paths["scene"]]
        if plot:
            write_residuals_png(paths["residuals"], fitted, exposures, table, title=title)
            written.append(paths["residuals"])
    except OSError as exc:
        raise AstromixError(f"cannot write to {folder!r}: {exc.strerror or exc}") from None
    return written


def print_report(out, fitted, catalog):
    """A short text summary of a scene fit: per-exposure chi2 and the catalog.

    Each source's line gives its fluxes in every band of the scene (``g=...``;
    ``flux=...`` for a scene with one unnamed band) with their errors.  Also
    lists the parameters no image constrained (``fit_info["unconstrained"]``).
    """
    info = fitted.fit_info
    table = info["exposures"]
    print(f"fitted {len(info['free_parameters'])} parameters of {fitted.n_sources} source(s) "
          f"in {len(table)} exposure(s): chi2 = {info['chi2']:.1f} for {info['dof']} dof "
          f"({info['time_s']:.1f} s, {info['nfev']} chi2 evaluations)", file=out)
    held = info.get("unconstrained") or []
    if held:
        print(f"  not constrained by any image (held at their starting values, errors NaN): "
              f"{', '.join(held)}", file=out)
    print("  exposure                         band   chi2/dof   background", file=out)
    for row in table:
        print(f"  {row['name']:<32s} {row['band']:>4s} {row['chi2_dof']:10.3f} "
              f"{row['background']:12.3f}", file=out)
    # the scene's bands, as scene_catalog names their columns: flux_<band>, or flux for
    # a scene with one unnamed band (a catalog with a plain "flux" column)
    fluxes = [("flux" if b is None else str(b), "flux" if b is None else f"flux_{b}",
               "flux_err" if b is None else f"flux_err_{b}") for b in fitted.bands]
    for row in catalog:
        fl = ", ".join(f"{label}={row[key]:.3f}+-{row[ekey]:.3f}"
                       for label, key, ekey in fluxes)
        line = f"  source {row['id']} ({row['kind']}): ra={row['ra']:.6f} dec={row['dec']:.6f} {fl}"
        if row["kind"] == "sersic":
            line += (f" r_eff={row['r_eff']:.3f}+-{row['r_eff_err']:.3f}\" "
                     f"n={row['n']:.2f}+-{row['n_err']:.2f} ellip={row['ellip']:.3f} "
                     f"theta={np.degrees(row['theta']):.1f} deg")
        print(line, file=out)
