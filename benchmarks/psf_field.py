#!/usr/bin/env python
"""astromix's PSF field against PSFEx itself, on the same stars of a real image.

Issue 8, item 7.  The image is the CFHT FOCAM I-band image of Abell 370
shipped as :func:`astromix.datasets.cfht_a370` (1909 x 1797 px, 0.2056
arcsec/px, int16 ADU, gain 6.6 e-/ADU).

Method
------
1. Stars: :func:`astromix.psffield.detect_sources` (saturation 12000 ADU) and
   :func:`astromix.psffield.select_stars` (``--snr-min``, 20% reserve, seed
   ``--seed``).
2. The peer's catalog: SExtractor (Debian package ``source-extractor``) on the
   same image writes a FITS_LDAC catalog with 25 x 25 ``VIGNET`` stamps; its
   rows are matched to the selected stars (nearest within 1.5 px); stars
   without a SExtractor counterpart are dropped from *both* fits, so both
   models are built from exactly the same stars, and validated on the same
   reserve stars (those matched too).
3. PSFEx (Debian package ``psfex``) on the matched rows only
   (``SAMPLE_AUTOSELECT N``), with the configuration closest to astromix's:
   ``BASIS_TYPE PIXEL``, ``PSF_SAMPLING 1.0``, ``PSF_SIZE 25,25``,
   ``PSFVAR_DEGREES 2`` in ``X_IMAGE, Y_IMAGE``.  Its wall time is that of
   the ``psfex`` process (SExtractor's time is reported apart).
4. astromix: :func:`astromix.psffield.fit_psf_field` (pixel basis, degree 2,
   size 25) on the same stars, with the inverse-variance map of the sky noise
   plus the stars' Poisson noise (gain 6.6).
5. Both models are validated by
   :func:`astromix.psffield.validate_psf_field` on the reserve stars: pixel
   RMSE (divided by the star's peak), HSM size residual ``dsigma/sigma`` and
   shape residuals ``de1, de2`` (star - model).  The table prints the median
   and the RMS over the reserve stars of each, for each code, and their ratio.

Run ``python benchmarks/psf_field.py [--snr-min 10] [--seed 0] [--basis mixture]
[--oversampling N]`` (``--basis mixture``:
:func:`astromix.psffield.fit_mixture_psf_field` with ``--n-components``
Gaussians, started from the pixel fit, instead; ``--oversampling N``: both
codes on a grid of ``N`` samples per image pixel, astromix with
``oversampling=N`` and PSFEx with ``PSF_SAMPLING 1/N`` and ``PSF_SIZE`` the
same ``size * N`` rounded up to odd PSF pixels).  Skips with
a message (exit 0) when ``source-extractor`` or ``psfex`` is not on PATH
(``apt-get install source-extractor psfex``).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

GAIN = 6.6           # e-/ADU (header ESCALE)
SATURATION = 12000.0  # ADU
SIZE = 25            # px, PSF and stamp side
FIT_OPTIONS = {}     # more keyword arguments of fit_psf_field

SEX_PARAMS = """NUMBER
X_IMAGE
Y_IMAGE
XWIN_IMAGE
YWIN_IMAGE
FLUX_APER(1)
FLUXERR_APER(1)
FLUX_AUTO
FLUXERR_AUTO
MAG_AUTO
SNR_WIN
FLUX_RADIUS
FWHM_IMAGE
ELONGATION
FLAGS
VIGNET({size},{size})
"""


def _find(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _share(name):
    for folder in ("/usr/share/source-extractor", "/usr/share/sextractor",
                   "/usr/local/share/source-extractor"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"SExtractor's {name} not found")


def run_sextractor(sex, image_path, work):
    """SExtractor FITS_LDAC catalog with VIGNETs; returns (path, seconds)."""
    with open(os.path.join(work, "sx.param"), "w") as fh:
        fh.write(SEX_PARAMS.format(size=SIZE))
    defaults = subprocess.run([sex, "-d"], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(work, "default.sex"), "w") as fh:
        fh.write(defaults)
    out = os.path.join(work, "image.ldac")
    t0 = time.perf_counter()
    subprocess.run([sex, image_path, "-c", "default.sex", "-CATALOG_NAME", out,
                    "-CATALOG_TYPE", "FITS_LDAC", "-PARAMETERS_NAME", "sx.param",
                    "-FILTER_NAME", _share("default.conv"), "-STARNNW_NAME", _share("default.nnw"),
                    "-DETECT_THRESH", "3", "-SATUR_LEVEL", str(SATURATION), "-GAIN", str(GAIN),
                    "-PHOT_APERTURES", "10", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE"],
                   cwd=work, check=True, capture_output=True)
    return out, time.perf_counter() - t0


def match_ldac(ldac, stars, out, radius=1.5):
    """Keep the LDAC rows nearest to ``stars`` (0-based x, y); returns the matched index."""
    from astropy.io import fits

    with fits.open(ldac) as hdul:
        objects = hdul[2].data
        x = objects["X_IMAGE"] - 1.0
        y = objects["Y_IMAGE"] - 1.0
        rows, found = [], []
        for i, (xs, ys) in enumerate(zip(stars["x"], stars["y"])):
            d2 = (x - xs) ** 2 + (y - ys) ** 2
            j = int(np.argmin(d2))
            if d2[j] <= radius ** 2:
                rows.append(j)
                found.append(i)
        hdul[2].data = objects[np.asarray(rows, int)]
        hdul.writeto(out, overwrite=True)
    return np.asarray(found, int)


def run_psfex(psfex, ldac, work, degree=2, oversampling=1):
    """PSFEx on every row of ``ldac``; returns (path of the .psf, seconds)."""
    grid = SIZE * oversampling + (1 - SIZE * oversampling % 2)  # PSF pixels, odd
    defaults = subprocess.run([psfex, "-d"], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(work, "default.psfex"), "w") as fh:
        fh.write(defaults)
    t0 = time.perf_counter()
    subprocess.run([psfex, ldac, "-c", "default.psfex", "-BASIS_TYPE", "PIXEL",
                    "-PSF_SAMPLING", repr(1.0 / oversampling), "-PSF_SIZE", f"{grid},{grid}",
                    "-PSFVAR_KEYS", "X_IMAGE,Y_IMAGE", "-PSFVAR_GROUPS", "1,1",
                    "-PSFVAR_DEGREES", str(degree), "-SAMPLE_AUTOSELECT", "N",
                    "-SAMPLE_FWHMRANGE", "0.5,30", "-SAMPLE_MINSN", "1", "-SAMPLE_MAXELLIP", "1",
                    "-SAMPLE_FLAGMASK", "0x0000", "-CHECKPLOT_TYPE", "NONE",
                    "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N", "-PSF_DIR", work,
                    "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1"],
                   cwd=work, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return os.path.splitext(ldac)[0] + ".psf", seconds


def inverse_variance(raw):
    """Background-subtracted image and its inverse variance (sky + the sources' Poisson)."""
    from astropy.stats import sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground

    bkg = Background2D(raw, 64, filter_size=3, bkg_estimator=MedianBackground())
    data = raw - bkg.background
    _, _, std = sigma_clipped_stats(data, sigma=3.0)
    var = std ** 2 + np.maximum(data, 0.0) / GAIN
    return data, 1.0 / var


def bootstrap_ratio(ours, theirs, key, n=2000, seed=0):
    """16th-84th percentiles of median|ours| / median|theirs| over stars resampled in pairs."""
    ok = (np.asarray(ours["flag"]) == 0) & (np.asarray(theirs["flag"]) == 0)
    a = np.abs(np.asarray(ours[key])[ok])
    p = np.abs(np.asarray(theirs[key])[ok])
    idx = np.random.default_rng(seed).integers(0, a.size, (n, a.size))
    ratio = np.median(a[idx], axis=1) / np.median(p[idx], axis=1)
    return np.percentile(ratio, [16, 84])


def summary(table):
    ok = np.asarray(table["flag"]) == 0
    out = {}
    for key in ("rmse", "dsigma_over_sigma", "de1", "de2"):
        v = np.asarray(table[key])[ok]
        out[key] = (float(np.median(np.abs(v))), float(np.sqrt(np.mean(v ** 2))),
                    float(np.median(v)))
    out["n"] = int(ok.sum())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snr-min", type=float, default=10.0, help="star S/N cut (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds (default 5: 20%% reserve each)")
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--basis", choices=("pixel", "mixture"), default="pixel",
                        help="astromix's model: pixel grid (default) or Gaussian mixture")
    parser.add_argument("--n-components", type=int, default=4,
                        help="Gaussians of the mixture basis (default 4)")
    parser.add_argument("--oversampling", type=int, default=1,
                        help="PSF grid samples per image pixel for both codes (default 1; "
                             "PSFEx: PSF_SAMPLING = 1 / N)")
    args = parser.parse_args(argv)
    if args.oversampling < 1:
        parser.error("--oversampling must be >= 1")

    sex = _find("source-extractor", "sex")
    psfex = _find("psfex")
    if sex is None or psfex is None:
        print("SKIP: source-extractor and psfex are needed (apt-get install source-extractor "
              "psfex)")
        return 0

    import warnings

    from astropy.io import fits
    from astropy.table import vstack

    from astromix.datasets import cfht_a370
    from astromix.io.psfex import read_psfex
    from astromix.psffield import (
        detect_sources,
        fit_mixture_psf_field,
        fit_psf_field,
        select_stars,
        validate_psf_field,
    )

    raw = fits.getdata(cfht_a370()).astype(np.float64)
    data, weight = inverse_variance(raw)
    t0 = time.perf_counter()
    catalog = detect_sources(raw, saturation=SATURATION)
    catalog = select_stars(catalog, snr_range=(args.snr_min, None), reserve=0.0)
    t_select = time.perf_counter() - t0
    stars = catalog[np.asarray(catalog["star"], bool)]
    stars.remove_columns(["reserve", "selected"])  # the folds decide

    ours, theirs = [], []
    t_fit = t_psfex = 0.0
    n_used = n_accepted = 0
    with tempfile.TemporaryDirectory() as work:
        image_path = os.path.join(work, "image.fits")
        fits.writeto(image_path, raw.astype(np.float32), fits.getheader(cfht_a370()))
        ldac, t_sex = run_sextractor(sex, image_path, work)
        stars = stars[match_ldac(ldac, stars, os.path.join(work, "all.ldac"))]
        fold = np.random.default_rng(args.seed).permutation(len(stars)) % args.folds
        for k in range(args.folds):
            fit_stars, reserve = stars[fold != k], stars[fold == k]
            match_ldac(ldac, fit_stars, os.path.join(work, "fit.ldac"))
            psf_path, seconds = run_psfex(psfex, os.path.join(work, "fit.ldac"), work,
                                          degree=args.degree, oversampling=args.oversampling)
            t_psfex += seconds
            peer = read_psfex(psf_path)
            n_accepted += int(peer.meta.get("ACCEPTED", 0))
            t0 = time.perf_counter()
            model = fit_psf_field(data, fit_stars, weight=weight, background=0.0, size=SIZE,
                                  degree=args.degree, oversampling=args.oversampling,
                                  **FIT_OPTIONS)
            if args.basis == "mixture":
                model = fit_mixture_psf_field(data, fit_stars, weight=weight, background=0.0,
                                              pixel_model=model,
                                              n_components=args.n_components)
            t_fit += time.perf_counter() - t0
            n_used += model.fit_info["n_used"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours.append(validate_psf_field(data, model, reserve, size=SIZE, weight=weight,
                                               background=0.0))
                theirs.append(validate_psf_field(data, peer, reserve, size=SIZE, weight=weight,
                                                 background=0.0))
    ours_table, theirs_table = vstack(ours), vstack(theirs)
    ours, theirs = summary(ours_table), summary(theirs_table)

    print(f"CFHT A370: {len(stars)} stars on the locus (S/N >= {args.snr_min:g}, FWHM mode "
          f"{catalog.meta['fwhm_mode']:.2f} px, matched in SExtractor's catalog); "
          f"{args.folds}-fold cross-validation: each fold fits both codes on the other stars "
          f"(PSF grid: {args.oversampling} sample(s) per image pixel) "
          f"(astromix used {n_used / args.folds:.1f}, PSFEx accepted "
          f"{n_accepted / args.folds:.1f} per fold on average)")
    print(f"validation on {ours['n']} held-out stars (median |x| / RMS / median):")
    print(f"{'quantity':<22}{'astromix':>31}{'PSFEx':>31}{'ratio (median |x|)':>20}"
          f"{'bootstrap 68%':>18}")
    for key, label in (("rmse", "pixel RMSE / peak"), ("dsigma_over_sigma", "dsigma / sigma"),
                       ("de1", "de1"), ("de2", "de2")):
        a, p = ours[key], theirs[key]
        lo, hi = bootstrap_ratio(ours_table, theirs_table, key)
        print(f"{label:<22}{a[0]:>11.5f} / {a[1]:.5f} / {a[2]:+.5f}{p[0]:>11.5f} / "
              f"{p[1]:.5f} / {p[2]:+.5f}{a[0] / p[0]:>20.2f}{lo:>11.2f} - {hi:.2f}")
    print(f"time per fit: astromix {t_fit / args.folds:.2f} s, PSFEx "
          f"{t_psfex / args.folds:.2f} s (ratio {t_fit / t_psfex:.2f}); detection + selection "
          f"{t_select:.2f} s, SExtractor {t_sex:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
