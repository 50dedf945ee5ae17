"""astromix's spread_model against SExtractor's SPREAD_MODEL on the CFHT Abell 370 image.

Runs SExtractor (detection, vignettes) -> PSFEx (a degree-2 pixel PSF, 25 x 25)
-> SExtractor again with ``PSF_NAME`` and ``SPREAD_MODEL``, ``SPREADERR_MODEL``,
then :func:`astromix.psffield.spread_model` with the same ``.psf`` (read with
:func:`astromix.io.psfex.read_psfex`), SExtractor's background and RMS maps,
on the same sources, and prints the comparison: correlation, median
difference in units of the error, and the star/galaxy agreement
(``SM < 0.005 + 3 sigma`` -> star, the usual DES-style cut) for bright sources.

Needs ``source-extractor`` (or ``sex``) and ``psfex`` on PATH.  Usage::

    python benchmarks/spread_model.py [--workdir /tmp/spread_work] [--cutout N]
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from astropy.io import fits
from astropy.table import Table

from astromix.datasets import cfht_a370
from astromix.io.psfex import read_psfex
from astromix.psffield import spread_model

PASS1_PARAMS = ["VIGNET(31,31)", "X_IMAGE", "Y_IMAGE", "FLUX_APER", "FLUXERR_APER",
                "FLUX_RADIUS", "ELONGATION", "FLAGS", "SNR_WIN", "FLUX_MAX"]
PASS2_PARAMS = ["NUMBER", "X_IMAGE", "Y_IMAGE", "XMODEL_IMAGE", "YMODEL_IMAGE", "FLUX_AUTO",
                "FLUXERR_AUTO", "SNR_WIN", "FWHM_IMAGE", "FLAGS", "SPREAD_MODEL",
                "SPREADERR_MODEL", "XMIN_IMAGE", "XMAX_IMAGE", "YMIN_IMAGE", "YMAX_IMAGE"]
CONV = """CONV NORM
# 3x3 ``all-ground'' convolution mask with FWHM = 2 pixels.
1 2 1
2 4 2
1 2 1
"""


def sextractor_binary():
    for name in ("source-extractor", "sex"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def run_pipeline(image_path, workdir, satur=12000.0, degree=2):
    """SExtractor -> PSFEx -> SExtractor; returns (catalog, psf path, background, rms)."""
    sex = sextractor_binary()
    psfex = shutil.which("psfex")
    if sex is None or psfex is None:
        raise RuntimeError("source-extractor and psfex must be on PATH")
    os.makedirs(workdir, exist_ok=True)
    _write(os.path.join(workdir, "pass1.param"), "\n".join(PASS1_PARAMS) + "\n")
    _write(os.path.join(workdir, "pass2.param"), "\n".join(PASS2_PARAMS) + "\n")
    _write(os.path.join(workdir, "default.conv"), CONV)
    common = ["-DETECT_MINAREA", "5", "-DETECT_THRESH", "5", "-ANALYSIS_THRESH", "5",
              "-FILTER", "Y", "-FILTER_NAME", "default.conv", "-SATUR_LEVEL", str(satur),
              "-GAIN", "0.0", "-VERBOSE_TYPE", "QUIET", "-PHOT_APERTURES", "15"]
    image_path = os.path.abspath(image_path)
    subprocess.run([sex, image_path, "-CATALOG_NAME", "pass1.cat", "-CATALOG_TYPE", "FITS_LDAC",
                    "-PARAMETERS_NAME", "pass1.param", *common],
                   cwd=workdir, check=True, capture_output=True)
    config = subprocess.run([psfex, "-dd"], check=True, capture_output=True, text=True).stdout
    _write(os.path.join(workdir, "default.psfex"), config)
    subprocess.run([psfex, "pass1.cat", "-c", "default.psfex", "-PSF_SIZE", "25,25",
                    "-PSFVAR_DEGREES", str(degree), "-CHECKPLOT_TYPE", "NONE",
                    "-CHECKIMAGE_TYPE", "NONE",
                    "-WRITE_XML", "N", "-VERBOSE_TYPE", "QUIET", "-SAMPLE_FWHMRANGE", "2.0,10.0"],
                   cwd=workdir, check=True, capture_output=True)
    subprocess.run([sex, image_path, "-CATALOG_NAME", "pass2.cat", "-CATALOG_TYPE", "FITS_1.0",
                    "-PARAMETERS_NAME", "pass2.param", "-PSF_NAME", "pass1.psf",
                    "-CHECKIMAGE_TYPE", "BACKGROUND,BACKGROUND_RMS",
                    "-CHECKIMAGE_NAME", "back.fits,rms.fits", *common],
                   cwd=workdir, check=True, capture_output=True)
    cat = Table.read(os.path.join(workdir, "pass2.cat"))
    back = fits.getdata(os.path.join(workdir, "back.fits")).astype(float)
    rms = fits.getdata(os.path.join(workdir, "rms.fits")).astype(float)
    return cat, os.path.join(workdir, "pass1.psf"), back, rms


def sextractor_stamp_sizes(cat, psf):
    """SExtractor's model-fitting stamp (profit.c): 1.2 (isophotal extent + PSF grid), odd."""
    ext = np.maximum(np.asarray(cat["XMAX_IMAGE"]) - np.asarray(cat["XMIN_IMAGE"]) + 1,
                     np.asarray(cat["YMAX_IMAGE"]) - np.asarray(cat["YMIN_IMAGE"]) + 1)
    grid = psf.shape[1] * psf.psf_samp
    return ((np.floor(ext + grid + 0.499) * 1.2).astype(int) // 2) * 2 + 1


def compare(image_path, workdir, *, snr_min=50.0, degree=2, satur=12000.0, verbose=True):
    """Run both and return a dict of comparison figures (and the joined table)."""
    t0 = time.perf_counter()
    cat, psf_path, back, rms = run_pipeline(image_path, workdir, satur=satur, degree=degree)
    t_sex = time.perf_counter() - t0
    data = fits.getdata(image_path).astype(float)
    psf = read_psfex(psf_path)
    # SExtractor's weights: 1 / RMS^2, saturated pixels masked
    weight = np.where((rms > 0) & (data < satur), 1.0 / np.where(rms > 0, rms, 1.0) ** 2, 0.0)
    src = Table({"x": np.asarray(cat["XMODEL_IMAGE"], float) - 1.0,
                 "y": np.asarray(cat["YMODEL_IMAGE"], float) - 1.0})
    sizes = sextractor_stamp_sizes(cat, psf)
    kw = dict(weight=weight, background=back)
    t0 = time.perf_counter()
    ours = spread_model(data, psf, src, size=sizes, fwhm="model", **kw)
    t_ours = time.perf_counter() - t0
    variants = {
        "default_size": spread_model(data, psf, src, fwhm="model", **kw),
        "fwhm_local": spread_model(data, psf, src, size=sizes, **kw),
        "fwhm_times_psf_samp": spread_model(data, psf, src, size=sizes,
                                            fwhm=psf.fwhm * psf.psf_samp, **kw),
        "x_image_positions": spread_model(
            data, psf, Table({"x": np.asarray(cat["X_IMAGE"], float) - 1.0,
                              "y": np.asarray(cat["Y_IMAGE"], float) - 1.0}),
            size=sizes, fwhm="model", **kw),
    }
    sm_s = np.asarray(cat["SPREAD_MODEL"], float)
    er_s = np.asarray(cat["SPREADERR_MODEL"], float)
    sm_a = np.asarray(ours["spread_model"])
    er_a = np.asarray(ours["spread_model_err"])
    ok = ((cat["FLAGS"] & ~3) == 0) & (ours["spread_model_flags"] == 0) & np.isfinite(sm_a) \
        & (er_s > 0) & (np.asarray(cat["SNR_WIN"]) > snr_min)
    ok = np.asarray(ok)
    sig = np.hypot(er_s, er_a)
    z = (sm_a - sm_s) / np.where(sig > 0, sig, np.nan)
    star_s = sm_s < 0.005 + 3 * er_s
    star_a = sm_a < 0.005 + 3 * er_a
    res = {
        "n_sources": len(cat), "n_compared": int(ok.sum()),
        "psf_fwhm_header": psf.fwhm, "psf_samp": psf.psf_samp,
        "pearson_r": float(np.corrcoef(sm_a[ok], sm_s[ok])[0, 1]),
        "spearman_r": float(_spearman(sm_a[ok], sm_s[ok])),
        "median_diff": float(np.median(sm_a[ok] - sm_s[ok])),
        "median_abs_diff_over_err": float(np.median(np.abs(z[ok]))),
        "median_diff_over_err": float(np.median(z[ok])),
        "err_ratio_median": float(np.median(er_a[ok] / er_s[ok])),
        "class_agreement": float(np.mean(star_s[ok] == star_a[ok])),
        "n_star_sextractor": int(star_s[ok].sum()), "n_star_astromix": int(star_a[ok].sum()),
        "slope_astromix_vs_sex": float(np.polyfit(sm_s[ok], sm_a[ok], 1)[0]),
    }
    for label, other in variants.items():
        v = np.asarray(other["spread_model"])
        good = ok & np.isfinite(v)
        res[f"pearson_r[{label}]"] = float(np.corrcoef(v[good], sm_s[good])[0, 1])
        res[f"slope[{label}]"] = float(np.polyfit(sm_s[good], v[good], 1)[0])
        res[f"median_abs_diff_over_err[{label}]"] = float(
            np.median(np.abs(v[good] - sm_s[good]) / sig[good]))
        star_v = v < 0.005 + 3 * np.asarray(other["spread_model_err"])
        res[f"class_agreement[{label}]"] = float(np.mean(star_v[good] == star_s[good]))
    res.update({
        "time_sextractor_pipeline_s": t_sex, "time_astromix_s": t_ours,
    })
    joined = Table({"x": src["x"], "y": src["y"], "snr": cat["SNR_WIN"], "flags": cat["FLAGS"],
                    "sm_sex": sm_s, "err_sex": er_s, "sm_astromix": sm_a, "err_astromix": er_a,
                    "compared": ok})
    if verbose:
        print(f"{'figure':32s} value")
        for key, value in res.items():
            print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
        print()
        sel = joined[ok]
        sel.sort("snr", reverse=True)
        for name in ("sm_sex", "err_sex", "sm_astromix", "err_astromix"):
            sel[name].format = ".5f"
        sel["snr"].format = ".0f"
        sel["x"].format = sel["y"].format = ".1f"
        sel[:25].pprint(max_width=120, max_lines=40)
    return res, joined


def _spearman(a, b):
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return np.corrcoef(ra, rb)[0, 1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/spread_work/bench")
    parser.add_argument("--cutout", type=int, default=0,
                        help="use the central N x N pixels only (0: whole image)")
    parser.add_argument("--snr-min", type=float, default=50.0)
    parser.add_argument("--degree", type=int, default=2, help="PSFEx PSFVAR_DEGREES")
    args = parser.parse_args(argv)
    if sextractor_binary() is None or shutil.which("psfex") is None:
        print("source-extractor and psfex are needed", file=sys.stderr)
        return 1
    os.makedirs(args.workdir, exist_ok=True)
    data, header = fits.getdata(cfht_a370(), header=True)
    data = data.astype(np.float32)
    if args.cutout:
        ny, nx = data.shape
        n = args.cutout
        data = data[(ny - n) // 2:(ny + n) // 2, (nx - n) // 2:(nx + n) // 2]
        header = None
    path = os.path.join(args.workdir, "image.fits")
    fits.writeto(path, data, header, overwrite=True)
    compare(path, args.workdir, snr_min=args.snr_min, degree=args.degree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
