"""fit_star_photometry on GalSim-made target/reference pairs with a known truth."""

import json
import math

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.nddata import NDData, StdDevUncertainty
from astropy.wcs import WCS

from astromix import AstromixError, InputError
from astromix.data import Exposure
from astromix.photometry import Measurement, StarPhotometryResult, fit_star_photometry

galsim = pytest.importorskip("galsim")

RA0, DEC0 = 53.16, -27.78
# the truth: target = SCALE * reference + BG, the target's star SHIFT arcsec (east, north) away
SCALE, BG_T, BG_R = 3.0, 1.0, 0.3
SHIFT = (0.12, -0.07)
TARGET = {"pixel": 0.2, "n": 41, "rotation": 60.0, "fwhm": 0.8, "beta": 3.0, "sigma": 0.3}
REFERENCE = {"pixel": 0.05, "n": 81, "rotation": 0.0, "fwhm": 0.25, "beta": 2.5,
             "sigma": 0.02}
FLUX_R = 200.0


def _wcs(pixel, n, rotation):
    """A TAN WCS [pixel arcsec/px] centred on (RA0, DEC0), north rotated by ``rotation`` deg."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA0, DEC0]
    wcs.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    wcs.wcs.cd = (pixel / 3600.0) * np.array([[-c, s], [s, c]])
    return wcs


def _image(spec, ra, dec, flux, bg, rng):
    """A GalSim Moffat star at (ra, dec) [deg] plus a background and Gaussian noise."""
    n = spec["n"]
    wcs = _wcs(spec["pixel"], n, spec["rotation"])
    x, y = wcs.all_world2pix(ra, dec, 0)
    prof = galsim.Moffat(spec["beta"], fwhm=spec["fwhm"] / spec["pixel"], flux=flux)
    img = prof.drawImage(nx=n, ny=n, scale=1.0, method="auto",
                         offset=(float(x) - (n - 1) / 2, float(y) - (n - 1) / 2)).array
    data = img + bg + rng.normal(0.0, spec["sigma"], (n, n))
    return data, wcs


# the reference's star, off the pixel grid; the target's star SHIFT away from it
STAR_R = (RA0 + 0.013 / 3600 / math.cos(math.radians(DEC0)), DEC0 - 0.021 / 3600)
STAR_T = (STAR_R[0] + SHIFT[0] / 3600 / math.cos(math.radians(DEC0)), STAR_R[1] + SHIFT[1] / 3600)


def make_pair(seed, *, unit=None):
    rng = np.random.default_rng(seed)
    t_data, t_wcs = _image(TARGET, *STAR_T, SCALE * FLUX_R, BG_T, rng)
    r_data, r_wcs = _image(REFERENCE, *STAR_R, FLUX_R, BG_R, rng)
    target = Exposure(t_data, uncertainty=StdDevUncertainty(np.full(t_data.shape,
                                                                    TARGET["sigma"])),
                      wcs=t_wcs, unit=unit, name="target")
    reference = Exposure(r_data, uncertainty=StdDevUncertainty(np.full(r_data.shape,
                                                                       REFERENCE["sigma"])),
                         wcs=r_wcs, name="reference")
    return target, reference


def expected_dxdy(target):
    """The SHIFT along the target's pixel axes [arcsec along +x, +y], from its WCS."""
    xt, yt = target.wcs.all_world2pix(*STAR_T, 0)
    xr, yr = target.wcs.all_world2pix(*STAR_R, 0)
    return (xt - xr) * TARGET["pixel"], (yt - yr) * TARGET["pixel"]


def test_recovers_a_known_truth():
    target, reference = make_pair(1)
    res = fit_star_photometry(target, reference, (RA0, DEC0), 1.2)
    assert isinstance(res, StarPhotometryResult)
    dx, dy = expected_dxdy(target)
    # the reference's background per target pixel: BG_R times the pixel-area ratio
    bg_r_per_target_px = BG_R * (TARGET["pixel"] / REFERENCE["pixel"]) ** 2
    truth = {"scale": SCALE, "bg": BG_T - SCALE * bg_r_per_target_px, "dx": dx, "dy": dy,
             "dra": SHIFT[0],
             "ddec": SHIFT[1], "fwhm": TARGET["fwhm"], "beta": TARGET["beta"]}
    for name, value in truth.items():
        m = getattr(res, name)
        assert not m.fixed and m.error > 0, name
        assert abs(m.value - value) < 4 * m.error, (name, m, value)
    # the rotated target: the shift is not along its axes, and the errors are small
    assert abs(dx) > 0.05 and abs(dy) > 0.05
    assert res.dra.error < 0.01 and res.fwhm.error < 0.03
    assert res.rms.value == pytest.approx(TARGET["sigma"], rel=0.15)
    assert math.isnan(res.rms.error)
    # the fits themselves
    assert res.reference.value("fwhm_0") * res.reference.pixel_scale == pytest.approx(
        REFERENCE["fwhm"], rel=0.02)
    assert res.target.pixel_scale == pytest.approx(0.2, rel=1e-6)
    assert res.target.n_pixels == pytest.approx(math.pi * 6 ** 2, rel=0.1)
    sky = SkyCoord(res.target.ra, res.target.dec, unit="deg")
    assert sky.separation(SkyCoord(*STAR_T, unit="deg")).arcsec < 4 * res.dra.error


def test_wcs_frames_fk5_and_icrs():
    """A reference whose WCS is FK5 (as HST's drizzled products) and a target in ICRS (as
    MUSE's), the star at the same ICRS position in both: no offset.  The positions had been
    compared as plain numbers in each WCS's frame: the ~20 mas FK5 frame bias came out as
    a pointing offset (and moved the reference's fitting circle)."""
    rng = np.random.default_rng(3)
    star = SkyCoord(*STAR_R, unit="deg", frame="icrs")
    images = []
    for spec, flux, bg, radesys in ((TARGET, SCALE * FLUX_R, BG_T, "ICRS"),
                                    (REFERENCE, FLUX_R, BG_R, "FK5")):
        n = spec["n"]
        wcs = _wcs(spec["pixel"], n, spec["rotation"])
        wcs.wcs.radesys = radesys
        if radesys == "FK5":
            wcs.wcs.equinox = 2000.0
        x, y = wcs.world_to_pixel(star)          # astropy transforms ICRS -> the WCS frame
        prof = galsim.Moffat(spec["beta"], fwhm=spec["fwhm"] / spec["pixel"], flux=flux)
        img = prof.drawImage(nx=n, ny=n, scale=1.0, method="auto",
                             offset=(float(x) - (n - 1) / 2, float(y) - (n - 1) / 2)).array
        data = img + bg + rng.normal(0.0, 0.1 * spec["sigma"], (n, n))
        images.append(Exposure(data, uncertainty=StdDevUncertainty(
            np.full((n, n), 0.1 * spec["sigma"])), wcs=wcs))
    # the frame bias is ~20 mas here: far above the errors
    fk5 = star.transform_to("fk5")
    assert SkyCoord(fk5.ra, fk5.dec, frame="icrs").separation(star).arcsec > 0.015
    res = fit_star_photometry(*images, (RA0, DEC0), 1.2)
    for name in ("dra", "ddec", "dx", "dy"):
        m = getattr(res, name)
        assert abs(m.value) < max(4 * m.error, 2e-3), (name, m)
    assert res.reference.dec == pytest.approx(star.dec.deg, abs=2e-3 / 3600)
    assert res.target.ra == pytest.approx(star.ra.deg, abs=2e-3 / 3600)


def test_fixed_fwhm_and_beta():
    target, reference = make_pair(2)
    free = fit_star_photometry(target, reference, (RA0, DEC0), 1.2)
    res = fit_star_photometry(target, reference, SkyCoord(RA0, DEC0, unit="deg"),
                              1.2 * u.arcsec, fix_fwhm=0.8 * u.arcsec, fix_beta=3.0)
    assert res.fwhm == Measurement(0.8, 0.0, fixed=True)
    assert res.beta == Measurement(3.0, 0.0, fixed=True)
    assert res.target.fixed["fwhm_0"] and res.target.fixed["beta_0"]
    assert not res.reference.fixed["beta_0"]  # the reference's shape is always fitted
    # a fixed parameter has zero error and covariance; a misspelt name is an error, not a 0
    assert res.target.error("fwhm_0") == 0.0
    cov = res.target.covariance(["flux_0", "fwhm_0"])
    assert cov[0, 0] > 0 and cov[1, 1] == 0.0 and cov[0, 1] == 0.0
    with pytest.raises(InputError, match="no parameter 'fwhm'"):
        res.target.error("fwhm")
    with pytest.raises(InputError, match="no parameter 'flux'"):
        res.target.covariance(["flux", "fwhm_0"])
    # fixing the (true) shape leaves the truth within the errors, and shrinks them
    assert abs(res.scale.value - SCALE) < 4 * res.scale.error
    assert res.scale.error < free.scale.error
    assert res.dx.value == pytest.approx(free.dx.value, abs=2 * free.dx.error)
    beta_only = fit_star_photometry(target, reference, (RA0, DEC0), 1.2, fix_beta=3.0)
    assert beta_only.beta.fixed and not beta_only.fwhm.fixed
    assert abs(beta_only.fwhm.value - 0.8) < 4 * beta_only.fwhm.error


def _moffat_pair(ref_pixel, bg_r, ref_unit=None):
    """Noise-free target (0.2"/px, bg 1, star 500) and reference (bg_r per pixel, star 100)."""
    from astromix.models.moffat import MoffatStar

    def image(pixel, n, fwhm, flux, bg):
        wcs = _wcs(pixel, n, 0.0)
        y, x = np.mgrid[:n, :n]
        c = (n - 1) / 2
        return MoffatStar(flux, c, c, fwhm / pixel, 3.0)(x, y) + bg, wcs

    t_data, t_wcs = image(0.2, 41, 0.8, 500.0, 1.0)
    n_r = int(round(41 * 0.2 / ref_pixel))
    r_data, r_wcs = image(ref_pixel, n_r, 0.3, 100.0, bg_r)
    return Exposure(t_data, wcs=t_wcs), Exposure(r_data, wcs=r_wcs, unit=ref_unit)


def test_bg_is_per_target_pixel():
    # reference on 0.05"/px, background 0.5 per reference pixel = 8 per 0.2" target pixel:
    # target = 5 * reference(on the target's pixels) + bg  =>  bg = 1 - 5 * 8 = -39
    target, reference = _moffat_pair(0.05, 0.5)
    res = fit_star_photometry(target, reference, (RA0, DEC0), 2.0)
    assert res.scale.value == pytest.approx(5.0, rel=1e-4)
    assert res.bg.value == pytest.approx(1.0 - 5.0 * 0.5 * (0.2 / 0.05) ** 2, abs=1e-3)
    # the same on equal pixels: no area factor
    target, reference = _moffat_pair(0.2, 0.5)
    res = fit_star_photometry(target, reference, (RA0, DEC0), 2.0)
    assert res.bg.value == pytest.approx(1.0 - 5.0 * 0.5, abs=1e-3)
    # a surface-brightness reference is not multiplied by the area ratio when regridded: the
    # scale is per reference unit on the target's pixels, 5 * 16 = 80, and bg the same -39
    target, reference = _moffat_pair(0.05, 0.5, ref_unit=u.MJy / u.sr)
    res = fit_star_photometry(target, reference, (RA0, DEC0), 2.0)
    assert res.scale.value == pytest.approx(5.0 * 16, rel=1e-4)
    assert res.bg.value == pytest.approx(-39.0, abs=1e-3)


def test_bg_error_includes_the_area_ratio():
    # Monte Carlo: the spread of bg over noise realisations matches its propagated error
    rng = np.random.default_rng(11)
    target, reference = _moffat_pair(0.05, 0.5)
    values, errors = [], []
    for _ in range(40):
        t = Exposure(target.data + rng.normal(0, 0.3, target.shape), wcs=target.wcs,
                     uncertainty=StdDevUncertainty(np.full(target.shape, 0.3)))
        r = Exposure(reference.data + rng.normal(0, 0.05, reference.shape), wcs=reference.wcs,
                     uncertainty=StdDevUncertainty(np.full(reference.shape, 0.05)))
        res = fit_star_photometry(t, r, (RA0, DEC0), 2.0)
        values.append(res.bg.value)
        errors.append(res.bg.error)
    assert np.std(values) == pytest.approx(np.mean(errors), rel=0.35)
    assert abs(np.mean(values) + 39.0) < 4 * np.mean(errors) / math.sqrt(len(values))


def test_input_kinds_give_the_same_answer():
    target, reference = make_pair(3)
    ref = fit_star_photometry(target, reference, (RA0, DEC0), 1.2)
    t_sigma = np.full(target.shape, TARGET["sigma"])
    as_tuple = fit_star_photometry((target.data, target.wcs, t_sigma),
                                   NDData(reference.data, wcs=reference.wcs,
                                          uncertainty=reference.uncertainty),
                                   (RA0 * u.deg, DEC0 * u.deg), 1.2)
    for name in ("scale", "bg", "dx", "dy", "fwhm", "beta"):
        a, b = getattr(ref, name), getattr(as_tuple, name)
        assert b.value == pytest.approx(a.value, rel=1e-6, abs=1e-9), name
        assert b.error == pytest.approx(a.error, rel=1e-6), name
    # no uncertainty: unweighted fits, errors from the residuals (reduced chi2)
    plain = fit_star_photometry((target.data, target.wcs), (reference.data, reference.wcs),
                                (RA0, DEC0), 1.2)
    for name in ("scale", "bg", "dx", "fwhm", "beta"):
        a, b = getattr(ref, name), getattr(plain, name)
        assert b.value == pytest.approx(a.value, rel=1e-5, abs=1e-8), name
        assert b.error == pytest.approx(a.error, rel=0.2), name


def test_masked_pixels_are_left_out():
    target, reference = make_pair(4)
    mask = np.zeros(target.shape, dtype=bool)
    x, y = target.world_to_pixel(*STAR_T)
    mask[int(round(y)) + 3:, :] = True                  # a bad region over the star's wing
    data = target.data.copy()
    data[mask] = np.nan
    masked = Exposure(np.where(mask, 0.0, data), uncertainty=target.uncertainty, mask=mask,
                      wcs=target.wcs)
    full = fit_star_photometry(target, reference, (RA0, DEC0), 1.2)
    res = fit_star_photometry(masked, reference, (RA0, DEC0), 1.2)
    assert res.target.n_pixels < full.target.n_pixels
    assert abs(res.scale.value - SCALE) < 4 * res.scale.error


def test_summary_and_to_dict():
    target, reference = make_pair(5, unit="adu")
    res = fit_star_photometry(target, reference, (RA0, DEC0), 1.2)
    table = res.summary()
    assert table.colnames == ["name", "value", "error", "fixed", "unit"]
    assert list(table["name"]) == ["scale", "bg", "dx", "dy", "dra", "ddec", "fwhm", "beta",
                                   "rms"]
    row = {name: i for i, name in enumerate(table["name"])}
    assert table["unit"][row["bg"]] == "adu" and table["unit"][row["dx"]] == "arcsec"
    assert table["value"][row["fwhm"]] == res.fwhm.value
    out = json.loads(json.dumps(res.to_dict()))      # JSON-compatible
    assert out["scale"] == {"value": res.scale.value, "error": res.scale.error, "fixed": False}
    assert out["rms"]["error"] is None
    text = str(res)
    assert "scale" in text and "arcsec" in text and "+-" in text


@pytest.mark.parametrize("kwargs, match", [
    ({"star": (RA0 + 0.1, DEC0)}, "outside the target image"),
    ({"star": "somewhere"}, "star must be"),
    ({"star": (np.array([RA0, RA0]), np.array([DEC0, DEC0]))}, "one finite sky position"),
    ({"radius": -1.0}, "radius must be"),
    ({"radius": 5 * u.pix}, "must be an angle"),
    ({"radius": "wide"}, "radius must be"),
    ({"radius": 0.3}, "usable pixels"),
    ({"fix_beta": 1.0}, "fix_beta must be"),
    ({"fix_beta": "x"}, "fix_beta must be"),
    ({"fix_fwhm": 0.0}, "fix_fwhm must be"),
    ({"quadrature": 0}, "quadrature"),
])
def test_bad_input(kwargs, match):
    target, reference = make_pair(6)
    args = {"star": (RA0, DEC0), "radius": 1.2, **kwargs}
    star, radius = args.pop("star"), args.pop("radius")
    with pytest.raises(InputError, match=match):
        fit_star_photometry(target, reference, star, radius, **args)


def test_bad_images():
    target, reference = make_pair(7)
    with pytest.raises(InputError, match="target image must be"):
        fit_star_photometry(target.data, reference, (RA0, DEC0), 1.2)
    with pytest.raises(InputError, match="has no WCS"):
        fit_star_photometry(target, Exposure(reference.data), (RA0, DEC0), 1.2)


def test_no_star_is_an_error():
    target, reference = make_pair(8)
    inverted = Exposure(2 * BG_T - target.data, uncertainty=target.uncertainty, wcs=target.wcs)
    with pytest.raises(AstromixError, match="no star found in the target image"):
        fit_star_photometry(inverted, reference, (RA0, DEC0), 1.2)
