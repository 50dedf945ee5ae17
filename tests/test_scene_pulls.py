"""Errors of fit_scene on GalSim-simulated exposures: pulls (fit - truth) / err.

A smaller version of ``benchmarks/scene_pulls.py``: a Sersic galaxy and a star
in two 32x32 exposures with different WCS (pixel scale, rotation, parity, one
with SIP distortion) and different two-Gaussian PSFs.  The truth images come
from GalSim (exact Sersic, its own WCS code, ``method="auto"``), not from
astromix.
"""

import math

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from astromix import GaussianMixture  # noqa: E402
from astromix.data import Exposure  # noqa: E402
from astromix.fitting import fit_scene  # noqa: E402
from astromix.models.scene import SceneModel, SersicSource, StarSource  # noqa: E402

RA0, DEC0 = 36.5, -4.3
COSD = math.cos(math.radians(DEC0))
NPIX = 32
GALAXY = {"ra": RA0 + 0.1 / 3600 / COSD, "dec": DEC0 + 0.05 / 3600, "flux": 1000.0,
          "r_eff": 0.7, "n": 1.5, "ellip": 0.3, "theta": 2.2}
STAR = {"ra": GALAXY["ra"] + 1.3 / 3600 / COSD, "dec": GALAXY["dec"] - 0.9 / 3600,
        "flux": 300.0}
#: Two exposures: (scale ["/px], rotation [deg], flipped parity, SIP, PSF Gaussians
#: (amplitude, sigma [px], g1, g2)).
SPECS = ((0.20, 25.0, False, True, ((0.7, 1.1, 0.04, -0.02), (0.3, 2.5, 0.0, 0.03))),
         (0.25, -110.0, True, False, ((0.8, 1.3, -0.03, 0.05), (0.2, 2.8, 0.02, 0.0))))
SNR = 40.0                      # matched-filter S/N of the galaxy per exposure
GSPARAMS = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5)


def _header(scale, rot, flip, sip):
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    cd = scale / 3600 * np.array([[-c, s], [s, c]])
    if flip:
        cd[:, 0] *= -1
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, NPIX, NPIX
    h["CTYPE1"], h["CTYPE2"] = ("RA---TAN-SIP", "DEC--TAN-SIP") if sip else ("RA---TAN",
                                                                           "DEC--TAN")
    h["CRVAL1"], h["CRVAL2"] = RA0, DEC0
    h["CRPIX1"], h["CRPIX2"] = NPIX / 2 + 1.8, NPIX / 2 - 0.7
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = cd.ravel()
    if sip:
        h["A_ORDER"], h["B_ORDER"] = 2, 2
        h["A_2_0"], h["A_1_1"], h["A_0_2"] = 5e-4, -3e-4, 2e-4
        h["B_2_0"], h["B_1_1"], h["B_0_2"] = -2e-4, 4e-4, 6e-4
    return h


def _psf(gaussians):
    """The PSF as a GalSim profile and as a GaussianMixture (same Gaussians, pixel units)."""
    profs, amp, cov = [], [], []
    for a, sigma, g1, g2 in gaussians:
        shear = galsim.Shear(g1=g1, g2=g2)
        profs.append(galsim.Gaussian(sigma=sigma, flux=a, gsparams=GSPARAMS).shear(shear))
        m = shear.getMatrix()
        amp.append(a)
        cov.append(sigma ** 2 * m @ m.T)
    return galsim.Add(profs), GaussianMixture(amp, np.zeros((len(amp), 2)), cov)


def _draw(header, psf, src):
    """One source drawn by GalSim through its own WCS (local Jacobian at the source)."""
    wcs = galsim.GSFitsWCS(header=galsim.FitsHeader(header))
    coord = galsim.CelestialCoord(src["ra"] * galsim.degrees, src["dec"] * galsim.degrees)
    if "r_eff" in src:
        q = 1 - src["ellip"]
        # GalSim's sky frame is (u = west, v = north); theta (east of north) is at
        # theta + 90 deg from +u; GalSim's half-light radius is the circularised one
        prof = galsim.Sersic(src["n"], half_light_radius=src["r_eff"] * math.sqrt(q),
                             gsparams=GSPARAMS)
        prof = prof.shear(q=q, beta=(src["theta"] + math.pi / 2) * galsim.radians)
    else:
        prof = galsim.DeltaFunction(gsparams=GSPARAMS)
    prof = wcs.local(world_pos=coord).toImage(prof).withFlux(src["flux"])
    image = galsim.ImageD(NPIX, NPIX)
    galsim.Convolve(prof, psf, gsparams=GSPARAMS).drawImage(
        image, scale=1.0, method="auto", center=wcs.toImage(coord))
    return image.array.copy()


@pytest.fixture(scope="module")
def simulation():
    """[(wcs, psf mixture, truth image, noise sigma)] for the two exposures."""
    out = []
    for scale, rot, flip, sip, gaussians in SPECS:
        header = _header(scale, rot, flip, sip)
        gpsf, psf = _psf(gaussians)
        gal = _draw(header, gpsf, GALAXY)
        sigma = float(np.sqrt((gal ** 2).sum())) / SNR
        out.append((WCS(header), psf, gal + _draw(header, gpsf, STAR), sigma))
    return out


def _exposures(simulation, rng):
    return [Exposure(truth + rng.normal(0, sigma, truth.shape),
                     uncertainty=np.full(truth.shape, sigma), wcs=wcs, psf=psf, band="r",
                     name=f"e{k}")
            for k, (wcs, psf, truth, sigma) in enumerate(simulation)]


def _truth():
    g = GALAXY
    return SceneModel([SersicSource(g["ra"], g["dec"], g["flux"], r_eff=g["r_eff"], n=g["n"],
                                    ellip=g["ellip"], theta=g["theta"]),
                       StarSource(STAR["ra"], STAR["dec"], STAR["flux"])])


def _start(truth, rng):
    """The truth moved at random: fluxes +-15%, positions +-0.1", shapes."""
    start = truth.copy()
    steps = {"flux": None, "ra": 0.1 / 3600 / COSD, "dec": 0.1 / 3600, "r_eff": 0.1,
             "n": 0.25, "ellip": 0.08, "theta": 0.25}
    for name in start.param_names:
        base = name.rsplit("_", 1)[0]
        param = getattr(start, name)
        if base == "flux":
            param.value = float(param.value) * rng.uniform(0.85, 1.15)
        else:
            param.value = float(param.value) + rng.uniform(-1, 1) * steps[base]
    return start


def _pulls(fitted, truth):
    std = fitted.fit_info["param_std"]
    out = {}
    for name in fitted.fit_info["free_parameters"]:
        d = float(getattr(fitted, name).value) - float(getattr(truth, name).value)
        if name.startswith("theta"):
            d = (d + math.pi / 2) % math.pi - math.pi / 2      # theta is defined modulo pi
        out[name] = d / float(std[name])
    return out


def test_truth_images_match_astromix(simulation):
    """The GalSim truth and astromix at the truth agree to far below the noise (<1%
    of sigma): the conventions (WCS, parity, position angle, r_eff) are the same and
    the Sersic mixture's model error cannot bias the pulls."""
    truth = _truth()
    for (_, _, image, sigma), exp in zip(simulation,
                                              _exposures(simulation, np.random.default_rng(0))):
        assert np.abs(truth.render(exp) - image).max() < 0.01 * sigma


def test_single_fit_recovers_truth(simulation):
    """One noise realisation, fitted from a perturbed start: every parameter within 4 sigma."""
    rng = np.random.default_rng(7)
    truth = _truth()
    fitted, catalog = fit_scene(_start(truth, rng), _exposures(simulation, rng),
                                progress=False)
    pulls = _pulls(fitted, truth)
    assert set(pulls) == set(truth.param_names)
    assert all(np.isfinite(list(pulls.values())))
    assert max(abs(p) for p in pulls.values()) < 4, pulls
    assert 0.8 < fitted.fit_info["chi2"] / fitted.fit_info["dof"] < 1.2


def test_pulls_of_flux_and_position(simulation):
    """Over 50 noise realisations (fixed seeds) the pulls of fluxes and positions have
    mean ~0 and standard deviation ~1.

    The bounds are loose because N is small: the sample mean of unit-variance
    pulls scatters by 1/sqrt(50) = 0.14 and the sample standard deviation by
    about 1/sqrt(2 * 49) = 0.10, so |mean| < 0.35 and 0.6 < std < 1.45 (2.5 and
    4 of those sigmas) catch errors wrong by a factor of 1.5 or a bias of half a
    sigma without flagging chance fluctuations (with 20 realisations, 0.35 would
    be only 1.6 sigma of the mean: one in ten unbiased parameters would fail).
    The seeds are fixed, so the test is deterministic; a fit takes ~0.2 s.  The
    benchmark (benchmarks/scene_pulls.py, N = 200) checks the tight targets.
    """
    truth = _truth()
    rows = []
    for i in range(50):
        rng = np.random.default_rng([2024, i])
        fitted, _ = fit_scene(_start(truth, rng), _exposures(simulation, rng), progress=False)
        rows.append(_pulls(fitted, truth))
    for name in ("flux_0", "ra_0", "dec_0", "flux_1", "ra_1", "dec_1"):
        x = np.array([r[name] for r in rows])
        mean, std = x.mean(), x.std(ddof=1)
        assert abs(mean) < 0.35, (name, mean, std)
        assert 0.6 < std < 1.45, (name, mean, std)
