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
# sigma * sqrt(q).  The 2e-3 target holds while the minor axis is resolved (>= 0.6 px for a
# round Gaussian, a little less for an elongated one: the cases here go down to 0.586 px).
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
