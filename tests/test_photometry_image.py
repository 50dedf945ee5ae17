"""Tests of the Fourier-space image photometry (astromix.photometry.image) and its batch runner."""

import dataclasses
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import integrate, special

from astromix.data import Exposure
from astromix.datasets import muse_hst_hdfs
from astromix.errors import AstromixError, InputError
from astromix.models.moffat import moffat_alpha
from astromix.photometry import (
    BatchError,
    ImagePhotometryResult,
    Measurement,
    fit_image_photometry,
    fit_image_photometry_batch,
    moffat_transform,
    region_mask,
    regrid,
    rescale_to_flux_units,
)

RA0, DEC0 = 338.2330, -60.5610


def tan_wcs(n, scale=0.2, rotation=0.0, crpix_shift=(0.0, 0.0), crval=(RA0, DEC0)):
    """A TAN WCS of an n x n image centred on crval, pixel ``scale`` [arcsec], rotated [deg]."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(n + 1) / 2 + crpix_shift[0], (n + 1) / 2 + crpix_shift[1]]
    th = math.radians(rotation)
    s = scale / 3600
    w.wcs.cd = s * np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
    w.wcs.set()
    return w


def fourier_pair(n=64, *, fwhm=0.8, beta=3.0, scale=2.0, bg=0.5, dx=0.1, dy=-0.06, seed=1,
                 noise=0.0):
    """A reference of point sources and a target made from it with the image-fit model exactly
    (periodic: fit with margin=0, taper=0)."""
    rng = np.random.default_rng(seed)
    ref = np.zeros((n, n))
    ref[rng.integers(8, n - 8, 30), rng.integers(8, n - 8, 30)] = rng.uniform(1, 5, 30)
    f = np.fft.fftfreq(n, 0.2)
    q = np.hypot(f[None, :], f[:, None])
    k = moffat_transform(q, fwhm, beta) * np.exp(-2j * np.pi * (dx * f[None, :] + dy * f[:, None]))
    tgt = scale * np.fft.ifft2(np.fft.fft2(ref) * k).real + bg
    if noise:
        tgt = tgt + rng.normal(0.0, noise, tgt.shape)
    return tgt, ref, tan_wcs(n)


# -- the Moffat transform ---------------------------------------------------------------------

@pytest.mark.parametrize("fwhm, beta", [(0.8, 2.5), (0.8, 14.0), (1.0, 45.0), (0.5, 1.6)])
def test_moffat_transform_is_the_hankel_transform(fwhm, beta):
    a = float(moffat_alpha(fwhm, beta))
    norm = math.pi * a * a / (beta - 1)
    qs = np.array([0.3, 0.8, 1.5])
    got = moffat_transform(qs, fwhm, beta)
    for q, g in zip(qs, got):
        edges = np.linspace(0.0, 80 * a, 161) if beta > 2 else np.geomspace(1e-3 * a, 1e4 * a, 400)
        def integrand(r, q=q):
            return (1 + r * r / a / a) ** -beta * special.j0(2 * np.pi * q * r) * 2 * np.pi * r

        val = sum(integrate.quad(integrand, lo, hi, limit=200)[0]
                  for lo, hi in zip(edges[:-1], edges[1:]))
        assert g == pytest.approx(val / norm, abs=2e-4 if beta < 2 else 1e-6)
    assert moffat_transform([0.0], fwhm, beta)[0] == 1.0


def test_moffat_transform_derivative_and_large_beta():
    q = np.linspace(0.0, 4.0, 50)
    f, d = moffat_transform(q, 0.7, 4.0, derivative=True)
    h = 1e-6
    num = (moffat_transform(q, 0.7 + h, 4.0) - moffat_transform(q, 0.7 - h, 4.0)) / (2 * h)
    np.testing.assert_allclose(d, num, atol=1e-7)
    # beta = 50: K_49 overflows near q = 0, the series takes over; still finite and monotonic
    f50 = moffat_transform(np.concatenate([[0.0, 1e-9, 1e-6], q[1:]]), 0.7, 50.0)
    assert np.all(np.isfinite(f50)) and np.all(np.diff(f50) <= 1e-12)


# -- fits on exact synthetic data ---------------------------------------------------------------

def test_exact_model_is_recovered():
    tgt, ref, wcs = fourier_pair()
    res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0, taper=0)
    assert isinstance(res, ImagePhotometryResult)
    truth = {"fwhm": 0.8, "beta": 3.0, "scale": 2.0, "bg": 0.5, "dx": 0.1, "dy": -0.06}
    for k, v in truth.items():
        assert getattr(res, k).value == pytest.approx(v, abs=1e-4 * max(v, 1)), k
        assert not getattr(res, k).fixed
    # the sky shift: x points west (CD1_1 < 0), so +dx is -dra
    assert res.dra.value == pytest.approx(-0.1, abs=1e-6)
    assert res.ddec.value == pytest.approx(-0.06, abs=1e-6)
    assert res.rms.value < 2e-5 and math.isnan(res.rms.error)
    assert res.info["regrid"] is None and res.info["refits"] == 0


def test_large_shift_triggers_refit_and_is_recovered():
    tgt, ref, wcs = fourier_pair(dx=0.55, dy=-0.45)    # 2.75 and 2.25 px
    res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0, taper=0,
                               model="windowed")
    assert res.info["refits"] >= 1
    assert res.info["shift_px"] == (3, -2)
    assert res.dx.value == pytest.approx(0.55, abs=2e-3)
    assert res.dy.value == pytest.approx(-0.45, abs=2e-3)


def test_fixed_parameters():
    tgt, ref, wcs = fourier_pair(noise=0.01)
    res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0, taper=0,
                               fix_beta=3.0, fix_bg=0.5, fix_dy=-0.06)
    for k, v in (("beta", 3.0), ("bg", 0.5), ("dy", -0.06)):
        m = getattr(res, k)
        assert m.fixed and m.error == 0.0 and m.value == v
    assert not res.dra.fixed
    assert res.fwhm.value == pytest.approx(0.8, abs=4 * res.fwhm.error)
    assert res.info["free"] == ("scale", "fwhm", "dx")
    assert np.all(res.covariance[:, 3] == 0)
    everything = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0,
                                      taper=0, fix_fwhm=0.8, fix_beta=3.0, fix_scale=2.0,
                                      fix_bg=0.5, fix_dx=0.1, fix_dy=-0.06)
    assert all(m.fixed for k, m in everything.measurements().items() if k != "rms")
    assert everything.rms.value == pytest.approx(0.01, rel=0.1)


def test_noise_errors_are_calibrated():
    """Over noise realisations, the pulls of the exact model have unit scatter."""
    pulls = []
    for seed in range(8):
        tgt, ref, wcs = fourier_pair(noise=0.05, seed=seed)
        res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0,
                                   taper=0)
        pulls.append([(res.fwhm.value - 0.8) / res.fwhm.error,
                      (res.scale.value - 2.0) / res.scale.error,
                      (res.dx.value - 0.1) / res.dx.error])
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls) < 4)
    assert 0.4 < np.std(pulls) < 1.8


def _galsim_pair(n=64, *, hst_psf=True, seed=1, hole=0, sources=20, noise=0.5):
    """A GalSim scene (``sources`` galaxies and a bright compact source at the centre) drawn as
    a reference (blurred by HST's PSF Moffat(0.085", 1.6) when ``hst_psf``) and as a target
    (2 x scene blurred by Moffat(0.8", 2.5), + 0.5, white noise ``noise``), 0.2"/px; the
    target's ``2 hole x 2 hole`` central pixels are NaN."""
    galsim = pytest.importorskip("galsim")
    rng = np.random.default_rng(3)
    objs = [galsim.Gaussian(sigma=rng.uniform(0.3, 0.6), flux=rng.uniform(50, 400))
            .shift(*rng.uniform(-4, 4, 2)) for _ in range(sources)]
    scene = galsim.Add(objs + [galsim.Gaussian(sigma=0.3, flux=5000)])

    def draw(obj):
        return obj.drawImage(nx=n, ny=n, scale=0.2).array.astype(np.float64)

    ref = draw(galsim.Convolve(scene, galsim.Moffat(beta=1.6, fwhm=0.085)) if hst_psf
               else scene)
    tgt = draw(galsim.Convolve(scene, galsim.Moffat(beta=2.5, fwhm=0.8)) * 2.0) + 0.5
    tgt += np.random.default_rng(seed).normal(0.0, noise, tgt.shape)
    if hole:
        tgt[n // 2 - hole:n // 2 + hole, n // 2 - hole:n // 2 + hole] = np.nan
    return tgt, ref, tan_wcs(n)


@pytest.mark.parametrize("hole", [1, 2])
@pytest.mark.parametrize("reference_psf", [None, (0.085, 1.6)])
def test_windowed_fit_unbiased_by_a_hole_in_the_target(hole, reference_psf):
    """NaN pixels of the target on a bright source (the reference is complete there) leave the
    default windowed fit unbiased: the model blurs the whole reference and the taper removes
    the masked pixels afterwards (the reference had been zeroed under the target's mask before
    the blur: biases of 10-20 sigma)."""
    tgt, ref, wcs = _galsim_pair(hst_psf=reference_psf is not None, hole=hole)
    res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=reference_psf)
    assert res.mask.sum() == (2 * hole) ** 2
    for k, v in {"scale": 2.0, "bg": 0.5, "fwhm": 0.8, "beta": 2.5}.items():
        m = getattr(res, k)
        assert abs(m.value - v) < 3 * m.error, (k, m, v)


def test_windowed_fit_unbiased_by_sources_just_outside_the_target():
    """Two bright stars 0.5" beyond the edges of a 64 x 64 target field, inside the larger
    reference: their light, blurred by the target's PSF, reaches the target's edge pixels.
    The reference is regridded onto the target's grid grown by the margin, so the model blurs
    them in too, and the injected values are recovered (cropped to the target's field, the
    reference had lost them: bg 0.75 +- 0.02 against 0.5, scale 1.966 +- 0.005 against 2)."""
    galsim = pytest.importorskip("galsim")
    n, big = 64, 96
    rng = np.random.default_rng(3)
    objs = [galsim.Gaussian(sigma=rng.uniform(0.3, 0.6), flux=rng.uniform(50, 400))
            .shift(*rng.uniform(-5, 5, 2)) for _ in range(20)]
    objs += [galsim.Gaussian(sigma=0.1, flux=6000).shift(6.9, 1.3),     # the field: +-6.4"
             galsim.Gaussian(sigma=0.1, flux=4000).shift(-2.0, -6.8),
             galsim.Gaussian(sigma=0.3, flux=5000)]
    scene = galsim.Add(objs)
    ref = scene.drawImage(nx=big, ny=big, scale=0.2).array.astype(np.float64)
    tgt = (galsim.Convolve(scene, galsim.Moffat(beta=2.5, fwhm=0.8)) * 2.0).drawImage(
        nx=big, ny=big, scale=0.2).array.astype(np.float64) + 0.5
    o = (big - n) // 2
    tgt = tgt[o:o + n, o:o + n] + np.random.default_rng(0).normal(0.0, 0.5, (n, n))
    res = fit_image_photometry((tgt, tan_wcs(n)), (ref, tan_wcs(big)), reference_psf=None)
    for k, v in {"scale": 2.0, "bg": 0.5, "fwhm": 0.8, "beta": 2.5, "dx": 0.0,
                 "dy": 0.0}.items():
        m = getattr(res, k)
        assert abs(m.value - v) < 3 * m.error, (k, m, v)
    assert res.info["reference_border_px"] == (11, 11)       # ceil(2" / 0.2"), each side
    # the reference as given on the target's grid has no pixels beyond it: no border
    on_grid = fit_image_photometry((tgt, tan_wcs(n)), (ref[o:o + n, o:o + n], tan_wcs(n)),
                                   reference_psf=None)
    assert on_grid.info["reference_border_px"] == (0, 0)


def test_errors_calibrated_with_the_reference_psf():
    """With the default reference_psf the target's noise is filtered by the PSF's transform;
    the errors account for it: over seeded noise realisations the scatter of each fitted value
    matches its mean reported error (before the fix the errors were ~1.55 times too small)."""
    vals, errs = [], []
    for seed in range(30):
        tgt, ref, wcs = _galsim_pair(n=48, seed=seed, sources=12)
        res = fit_image_photometry((tgt, wcs), (ref, wcs))
        vals.append([getattr(res, k).value for k in ("scale", "bg", "fwhm", "beta", "dx", "dy")])
        errs.append([getattr(res, k).error for k in ("scale", "bg", "fwhm", "beta", "dx", "dy")])
    ratio = np.std(vals, axis=0, ddof=1) / np.mean(errs, axis=0)
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio


# -- recovery from a low-resolution image made from the HST image --------------------------------

TRUE = {"fwhm": 0.7, "beta": 3.0, "scale": 0.8, "bg": 0.05, "dx": 0.07, "dy": -0.05}


@pytest.fixture(scope="module")
def hst():
    return rescale_to_flux_units(muse_hst_hdfs()["hst"], unit=1e-20)


@pytest.fixture(scope="module")
def low_resolution(hst):
    """The HST image blurred at its own resolution by a Moffat (TRUE), integrated over the
    pixels of a 0.2"/px grid rotated by 20 deg, scaled, offset, with noise; its WCS is off by
    (-dx, -dy), so the fit must find the shift (dx, dy)."""
    ra0, dec0 = hst.pixel_to_world(249.5, 249.5)
    data = np.asarray(hst.data, dtype=np.float64)
    pad = 128
    big = np.zeros((data.shape[0] + 2 * pad, data.shape[1] + 2 * pad))
    big[pad:-pad, pad:-pad] = data
    ps = float(hst.pixel_scale(250, 250))
    fy = np.fft.fftfreq(big.shape[0], ps)
    fx = np.fft.rfftfreq(big.shape[1], ps)
    blur = np.fft.irfft2(np.fft.rfft2(big) * moffat_transform(np.hypot(fx[None, :], fy[:, None]),
                                                             TRUE["fwhm"], TRUE["beta"]),
                         s=big.shape)
    big_wcs = hst.wcs.deepcopy()
    big_wcs.wcs.crpix = big_wcs.wcs.crpix + pad
    n, sigma = 90, 0.03
    true_wcs = tan_wcs(n, rotation=20.0, crval=(ra0, dec0))
    low = regrid((blur, big_wcs), (np.zeros((n, n)), true_wcs))
    rng = np.random.default_rng(5)
    image = TRUE["scale"] * low.data + TRUE["bg"] + rng.normal(0.0, sigma, (n, n))
    claimed = tan_wcs(n, rotation=20.0, crval=(ra0, dec0),
                      crpix_shift=(-TRUE["dx"] / 0.2, -TRUE["dy"] / 0.2))
    target = Exposure(image, uncertainty=np.full((n, n), sigma), wcs=claimed, name="synthetic")
    return target, true_wcs


def test_recovery_from_hst_image_windowed(hst, low_resolution):
    """The default model (windowed) recovers the injected parameters within their errors."""
    target, true_wcs = low_resolution
    res = fit_image_photometry(target, hst, reference_psf=None)
    for k, v in TRUE.items():
        m = getattr(res, k)
        assert abs(m.value - v) < 3 * m.error, (k, m, v)
    assert res.rms.value == pytest.approx(0.03, rel=0.1)      # the noise: no model mismatch
    assert res.name == "synthetic" and res.info["regrid"] == "exact"
    # the sky shift of a 20-deg rotated grid
    jac = res.jacobian
    assert res.dra.value == pytest.approx((jac @ [0.07 / 0.2, -0.05 / 0.2])[0], abs=0.01)

    corrected = res.apply_corrections(target)
    np.testing.assert_allclose(corrected.wcs.wcs.crpix, true_wcs.wcs.crpix, atol=0.05)
    again = fit_image_photometry(corrected, hst, reference_psf=None, model="windowed")
    # within 0.025 px: regridding at another sub-pixel phase aliases differently (~0.02 px)
    assert abs(again.dx.value) < 0.005 and abs(again.dy.value) < 0.005
    assert again.scale.value == pytest.approx(1.0, abs=3 * again.scale.error)
    assert again.bg.value == pytest.approx(0.0, abs=3 * again.bg.error / TRUE["scale"])


def test_recovery_from_hst_image_imphot_model(hst, low_resolution):
    """imphot's model tapers the reference before blurring it: a bias of a few sigma where the
    taper covers much of the field (here the 90x90 px HST field is ~35% taper zone)."""
    target, _ = low_resolution
    res = fit_image_photometry(target, hst, reference_psf=None, model="imphot")
    tol = {"fwhm": 0.04, "beta": 1.0, "scale": 0.03, "bg": 0.01, "dx": 0.03, "dy": 0.03}
    for k, v in TRUE.items():
        assert abs(getattr(res, k).value - v) < tol[k], (k, getattr(res, k), v)


def test_apply_corrections_resample(hst, low_resolution):
    target, _ = low_resolution
    tgt, ref, wcs = fourier_pair(dx=0.2, dy=0.0, bg=0.0, scale=2.0)
    res = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None, margin=0.0, taper=0)
    out = res.apply_corrections((tgt, wcs), resample=True)
    assert out.wcs.wcs.crpix.tolist() == wcs.wcs.crpix.tolist()
    # shifted back by one pixel along x and divided by the scale
    blurred, _, _ = fourier_pair(dx=0.0, dy=0.0, bg=0.0, scale=1.0)
    inner = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(out.data[inner], blurred[inner], atol=0.02 * blurred.max())
    assert out.mask[:, -1].all() and not out.mask[inner].any()


@pytest.mark.parametrize("dx, dy", [(0.1, 0.0), (-0.13, 0.07)])
def test_apply_corrections_resample_no_ringing_at_holes_and_edges(dx, dy):
    """Shifting a flat image gives the same flat image: no spline ringing on the unmasked
    pixels next to a masked hole or at the edges (zeros put in the hole had rung by 10%)."""
    n = 40
    res = ImagePhotometryResult(
        fwhm=Measurement(0.8, 0.0), beta=Measurement(3.0, 0.0), scale=Measurement(2.0, 0.0),
        bg=Measurement(1.0, 0.0), dx=Measurement(dx, 0.0), dy=Measurement(dy, 0.0),
        dra=Measurement(-dx, 0.0), ddec=Measurement(dy, 0.0), rms=Measurement(0.0, 0.0),
        pixel_scale=(0.2, 0.2))
    mask = np.zeros((n, n), dtype=bool)
    mask[20, 18:22] = True
    mask[5:8, 30:32] = True
    out = res.apply_corrections(Exposure(np.full((n, n), 21.0), mask=mask, wcs=tan_wcs(n)),
                                resample=True)
    assert out.mask[20, 19:21].all() and not out.mask[10:15, 10:15].any()
    np.testing.assert_allclose(out.data[~out.mask], 10.0, atol=1e-6)   # (21 - 1) / 2


# -- regions, outputs, errors ----------------------------------------------------------------------

def test_region_mask_include_exclude():
    pytest.importorskip("regions")
    wcs = tan_wcs(50)
    shape = (50, 50)
    excl = region_mask("image\n-circle(26,26,5)", wcs, shape)   # ds9 image coords are 1-based
    assert excl[25, 25] and excl[25, 29] and not excl[25, 31] and excl.sum() == 69
    incl = region_mask(f"fk5\ncircle({RA0},{DEC0},1\")", wcs, shape)
    assert not incl[25, 25] and incl[0, 0] and (~incl).sum() == pytest.approx(np.pi * 25, rel=0.2)
    both = region_mask([f"fk5\ncircle({RA0},{DEC0},3\")", "image\n-box(25.5,25.5,4,4,0)"], wcs,
                       shape)
    assert both[24, 24] and not both[24, 30] and both[0, 0]
    assert not region_mask(None, wcs, shape).any()


def test_regions_in_fit(tmp_path):
    pytest.importorskip("regions")
    tgt, ref, wcs = fourier_pair(noise=0.01)
    path = tmp_path / "stars.reg"
    path.write_text("# Region file format: DS9\nimage\n-circle(20,20,6)\n")
    res = fit_image_photometry((tgt, wcs), (ref, wcs), regions=path, reference_psf=None)
    full = fit_image_photometry((tgt, wcs), (ref, wcs), reference_psf=None)
    excluded = region_mask(path, wcs, tgt.shape)
    assert res.info["n_pixels"] == full.info["n_pixels"] - excluded.sum() > 0
    assert res.mask[19, 19] and not full.mask[19, 19]
    with pytest.raises(InputError, match="no such region file"):
        fit_image_photometry((tgt, wcs), (ref, wcs), regions=str(tmp_path / "missing.reg"))


def test_result_outputs(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    tgt, ref, wcs = fourier_pair(noise=0.01)
    res = fit_image_photometry((tgt, wcs), (ref, wcs))
    table = res.summary()
    assert table["name"].tolist() == ["fwhm", "beta", "scale", "bg", "dx", "dy", "dra", "ddec",
                                      "rms"]
    assert table["unit"].tolist()[0] == "arcsec"
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d["fwhm"]) == {"value", "error", "fixed"} and d["rms"]["error"] is None
    assert "fwhm" in str(res)
    paths = res.write_fits(tmp_path / "out", prefix="hdfs")
    assert [p.rsplit("_", 1)[1] for p in paths] == ["image.fits", "model.fits", "residual.fits"]
    with fits.open(paths[2]) as hdul:
        assert hdul[0].data.shape == res.residual.shape
        assert hdul[0].header["FWHM"] == pytest.approx(res.fwhm.value)
        assert WCS(hdul[0].header).has_celestial
    with pytest.raises(InputError, match="exists"):
        res.write_fits(tmp_path / "out", prefix="hdfs")
    # only the residual exists: refused before the image and model are written
    paths2 = [str(tmp_path / "out" / f"two_{k}.fits") for k in ("image", "model", "residual")]
    fits.PrimaryHDU(np.zeros((2, 2))).writeto(paths2[2])
    with pytest.raises(InputError, match="two_residual.fits.*exists"):
        res.write_fits(tmp_path / "out", prefix="two")
    assert not any(os.path.exists(p) for p in paths2[:2])
    assert res.write_fits(tmp_path / "out", prefix="two", overwrite=True) == paths2
    # a result built by hand, without the image arrays
    bare = dataclasses.replace(res, image=None, residual=None)
    with pytest.raises(InputError, match="no image, residual array"):
        bare.write_fits(tmp_path / "bare")
    assert not os.path.exists(tmp_path / "bare")
    fig = res.plot()
    assert len(fig.axes) >= 6
    np.testing.assert_allclose(np.nan_to_num(res.image - res.model), np.nan_to_num(res.residual))


def test_bad_inputs():
    tgt, ref, wcs = fourier_pair()
    pair = ((tgt, wcs), (ref, wcs))
    for kwargs, match in ((dict(fix_beta=0.5), "fix_beta"), (dict(fix_beta=80.0), "fix_beta"),
                          (dict(fix_fwhm=-1.0), "fix_fwhm"), (dict(taper=-1), "taper"),
                          (dict(model="exact"), "model"), (dict(margin=-1.0), "margin"),
                          (dict(mask=np.zeros((3, 3), bool)), "mask has shape"),
                          (dict(reference_psf=(0.1,)), "reference_psf"),
                          (dict(max_refits=-1), "max_refits"), (dict(fix_scale=-1.0), "fix_scale")):
        with pytest.raises(InputError, match=match):
            fit_image_photometry(*pair, **kwargs)
    with pytest.raises(InputError, match="must be a FITS file name"):
        fit_image_photometry(42, pair[1])
    far = tan_wcs(64, crval=(RA0 + 1.0, DEC0))
    with pytest.raises(InputError, match="does not overlap"):
        fit_image_photometry((tgt, wcs), (ref, far))
    with pytest.raises(InputError, match="pixels are valid"):
        fit_image_photometry((tgt, wcs), (ref, wcs), mask=np.ones(tgt.shape, bool))


# -- batches ----------------------------------------------------------------------------------

def _targets():
    out = []
    for i, dx in enumerate((0.05, -0.1, 0.15)):
        tgt, ref, wcs = fourier_pair(dx=dx)
        out.append(Exposure(tgt, wcs=wcs, name=f"exp{i}"))
    return out, (ref, wcs)


KW = dict(reference_psf=None, margin=0.0, taper=0)


@pytest.mark.parametrize("executor", ["serial", "threads", "processes"])
def test_batch_keeps_the_order(executor):
    targets, reference = _targets()
    if executor == "threads":
        with ThreadPoolExecutor(2) as pool:
            results = fit_image_photometry_batch(targets, reference, executor=pool, **KW)
    elif executor == "processes":
        with ProcessPoolExecutor(2) as pool:
            results = fit_image_photometry_batch(targets, reference, executor=pool, **KW)
    else:
        results = fit_image_photometry_batch(targets, reference, executor="serial", **KW)
    assert [r.name for r in results] == ["exp0", "exp1", "exp2"]
    np.testing.assert_allclose([r.dx.value for r in results], [0.05, -0.1, 0.15], atol=1e-6)
    assert fit_image_photometry_batch([], reference) == []


def test_batch_reraises_with_the_exposure_name(monkeypatch):
    targets, reference = _targets()
    targets[1] = Exposure(targets[1].data, wcs=targets[1].wcs, name="broken",
                          mask=~(np.eye(64, dtype=bool) & (np.arange(64) < 10)))
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(InputError, match=r"^broken: only 10 pixels") as info:
            fit_image_photometry_batch(targets, reference, executor=pool, **KW)
    assert info.value.name == "broken" and info.value.index == 1
    assert isinstance(info.value.__cause__, InputError)
    with pytest.raises(InputError, match="^broken: "):
        fit_image_photometry_batch(targets, reference, executor="serial", **KW)
    # a misspelt keyword is refused before any fit, naming it
    with pytest.raises(InputError, match="bogus"):
        fit_image_photometry_batch(targets[:1], reference, executor="serial", bogus=1)
    # any other exception becomes a BatchError naming the exposure
    import astromix.photometry.image as image_module

    def broken(*args, **kwargs):
        raise TypeError("a bug in the fit")

    monkeypatch.setattr(image_module, "fit_image_photometry", broken)
    with pytest.raises(BatchError, match="exp0: the fit failed with TypeError") as info:
        fit_image_photometry_batch(targets[:1], reference, executor="serial")
    assert isinstance(info.value, AstromixError) and isinstance(info.value.original, TypeError)


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_batch_progress_bar_changes_nothing(executor, capsys):
    targets, reference = _targets()

    def batch(progress):
        if executor == "threads":
            with ThreadPoolExecutor(2) as pool:
                return fit_image_photometry_batch(targets, reference, executor=pool,
                                                  progress=progress, **KW)
        return fit_image_photometry_batch(targets, reference, executor=executor,
                                          progress=progress, **KW)

    quiet = batch(False)
    assert capsys.readouterr().err == ""
    loud = batch(True)
    assert "3/3" in capsys.readouterr().err        # tqdm's bar on stderr counted them all
    assert [r.name for r in loud] == [r.name for r in quiet] == ["exp0", "exp1", "exp2"]
    for a, b in zip(quiet, loud):
        assert a.to_dict() == b.to_dict()
    # errors are the same with and without the bar
    bad = [targets[0], Exposure(targets[1].data, wcs=targets[1].wcs, name="broken",
                                mask=~(np.eye(64, dtype=bool) & (np.arange(64) < 10)))]
    for progress in (False, True):
        with pytest.raises(InputError, match=r"^broken: only 10 pixels"):
            fit_image_photometry_batch(bad, reference, executor="serial", progress=progress,
                                       **KW)
