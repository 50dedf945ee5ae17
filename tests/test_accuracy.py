"""Pixel-integrated rendering against GalSim's exact drawImage (an independent truth)."""

import numpy as np
import pytest
from conftest import to_numpy

from astromix import AccuracySettings, GaussianMixture

galsim = pytest.importorskip("galsim")


def galsim_gaussian(sigma, q, beta, shape, x, y):
    """GalSim's exact pixel-convolved draw, centred at (x, y) in 0-based pixel coordinates."""
    ny, nx = shape
    prof = galsim.Gaussian(sigma=sigma).shear(q=q, beta=beta * galsim.radians)
    image = galsim.ImageD(nx, ny, scale=1.0)
    # GalSim puts the profile centre at the true centre of the image, (nx-1)/2 in 0-based pixels
    offset = (x - (nx - 1) / 2, y - (ny - 1) / 2)
    return prof.drawImage(image=image, method="auto", offset=offset).array


def astromix_gaussian(sigma, q, beta, x, y):
    # shear(q) keeps the area: semi-axes sigma / sqrt(q) and sigma sqrt(q)
    a2, b2 = sigma ** 2 / q, sigma ** 2 * q
    c, s = np.cos(beta), np.sin(beta)
    rot = np.array([[c, -s], [s, c]])
    return GaussianMixture([1.0], [[x, y]], [rot @ np.diag([a2, b2]) @ rot.T])


# GalSim's sigma is that of the round profile before shear(q): the minor-axis sigma is
# sigma * sqrt(q).  The 2e-3 target holds while the minor axis is resolved (>= 0.65 px at the
# worst sub-pixel position, a Gaussian centred on a pixel; at this test's off-centre position the
# cases go down to 0.586 px).
CASES = [(sigma, q, beta) for sigma in (0.7, 1.0, 1.5, 3.0, 6.0)
         for q in (1.0, 0.7, 0.4) for beta in (0.0, 0.6) if sigma * np.sqrt(q) >= 0.58]


@pytest.mark.parametrize("sigma, q, beta", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_render_matches_galsim(backend, sigma, q, beta, dtype):
    shape = (int(12 * sigma / np.sqrt(q)) + 9,) * 2
    x, y = shape[1] / 2 - 0.27, shape[0] / 2 + 0.41
    truth = galsim_gaussian(sigma, q, beta, shape, x, y)
    img = to_numpy(astromix_gaussian(sigma, q, beta, x, y).render(shape, dtype=dtype))
    err = np.abs(img - truth).max() / truth.max()
    assert err <= 2e-3, err
    # flux: equal up to the aliasing of barely resolved Gaussians (2e-4 at sigma_minor 0.55 px)
    assert img.sum() == pytest.approx(truth.sum(), rel=5e-4)


def test_kurtosis_correction_beats_variance_only(backend):
    shape = (21, 21)
    truth = galsim_gaussian(0.7, 0.7, 0.3, shape, 10.2, 9.9)
    g = astromix_gaussian(0.7, 0.7, 0.3, 10.2, 9.9)
    errs = {m: np.abs(to_numpy(g.render(shape, settings=AccuracySettings(pixel_integration=m)))
                      - truth).max() / truth.max() for m in ("kurtosis", "variance", "none")}
    assert errs["kurtosis"] < errs["variance"] / 4 < errs["none"] / 4
    assert errs["variance"] > 2e-3  # why the kurtosis correction is the default


def test_under_resolved_minor_axis_degrades_gracefully(backend):
    # sigma 0.7 px sheared to q = 0.4, aligned with the pixel grid: minor axis 0.44 px
    shape = (25, 25)
    truth = galsim_gaussian(0.7, 0.4, 0.0, shape, 12.2, 11.7)
    img = to_numpy(astromix_gaussian(0.7, 0.4, 0.0, 12.2, 11.7).render(shape))
    assert np.abs(img - truth).max() / truth.max() < 5e-3


def exact_pixel_integral(sigma_x, sigma_y, x, y, shape):
    """The exact integral of an axis-aligned Gaussian over each unit pixel (erf differences)."""
    from scipy.special import erf

    def axis(c, n, s):
        edges = np.arange(n + 1) - 0.5
        return 0.5 * np.diff(erf((edges - c) / (np.sqrt(2) * s)))

    return np.outer(axis(y, shape[0], sigma_y), axis(x, shape[1], sigma_x))


# The worst sub-pixel position is a Gaussian centred on a pixel; the documented figures
# (AccuracySettings, docs/performance.rst) are the maxima over this grid of centres.
@pytest.mark.parametrize("mode, sigma, bound", [
    ("kurtosis", 0.65, 2e-3), ("kurtosis", 0.7, 1e-3), ("kurtosis", 1.0, 1.5e-4),
    ("variance", 0.7, 7.5e-3), ("variance", 1.0, 2e-3)])
def test_worst_sub_pixel_position_against_the_exact_integral(backend, mode, sigma, bound):
    shape = (25, 25)
    settings = AccuracySettings(pixel_integration=mode)
    worst = 0.0
    for dx in np.linspace(0.0, 0.5, 6):
        for dy in np.linspace(0.0, 0.5, 6):
            for q in (1.0, 0.5):        # round, and the major axis along x (minor along y)
                sx, sy, x, y = sigma / q, sigma, 12 + dx, 12 + dy
                truth = exact_pixel_integral(sx, sy, x, y, shape)
                g = GaussianMixture([1.0], [[x, y]], [np.diag([sx ** 2, sy ** 2])])
                img = to_numpy(g.render(shape, settings=settings))
                worst = max(worst, np.abs(img - truth).max() / truth.max())
    assert worst <= bound
    # the bound is the documented figure, not a loose one: within 2.2x of it
    assert worst > bound / 2.2
