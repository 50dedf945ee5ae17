"""fit_gaussian_mixture: pixels of weight 0 are left out of everything, not only chi2."""

import numpy as np
import pytest

from astromix import GaussianMixture, InputError
from astromix.fitting import fit_gaussian_mixture

SHAPE = (31, 31)
AMP = np.array([100.0, 50.0])
CENTRE = np.array([15.2, 14.8])
COV = np.array([np.eye(2) * 2.0, np.eye(2) * 9.0])


def truth_image():
    truth = GaussianMixture(AMP, np.tile(CENTRE, (2, 1)), COV)
    return np.asarray(truth.render(SHAPE))


def assert_recovers_truth(mix):
    # noise-free data: the injected mixture, to the optimiser's tolerance
    np.testing.assert_allclose(mix.amp, AMP, rtol=2e-3)
    np.testing.assert_allclose(mix.mean, np.tile(CENTRE, (2, 1)), atol=1e-3)
    np.testing.assert_allclose(mix.cov, COV, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("objective", ["chi2", "l1max"])
def test_masked_hot_pixel_is_left_out_everywhere(objective):
    img = truth_image()
    clean, _ = fit_gaussian_mixture(img, 2, rng=1, objective=objective)
    assert_recovers_truth(clean)
    # a cosmic ray far from the source, masked: the fit must not see it at all
    bad = img.copy()
    bad[2, 28] = 1e5
    w = np.ones(SHAPE)
    w[2, 28] = 0.0
    mix, info = fit_gaussian_mixture(bad, 2, weight=w, rng=1, objective=objective)
    assert_recovers_truth(mix)
    np.testing.assert_allclose(mix.amp, clean.amp, rtol=2e-3)
    np.testing.assert_allclose(mix.mean, clean.mean, atol=1e-3)
    # the metrics over the unmasked pixels, against the true image's peak and flux
    resid = np.abs(img - np.asarray(mix.render(SHAPE)))
    good = w > 0
    assert info["max_residual_over_peak"] == pytest.approx(
        resid[good].max() / img[good].max(), rel=1e-9)
    assert info["l1_residual_over_flux"] == pytest.approx(
        resid[good].sum() / img[good].sum(), rel=1e-9)
    assert info["max_residual_over_peak"] < 1e-3
    assert info["chi2"] == pytest.approx(np.sum(resid[good] ** 2), rel=1e-9)


def test_masked_pixels_may_hold_nan_and_bad_weights_are_refused():
    img = truth_image()
    bad = img.copy()
    bad[:3, :] = np.nan              # a bad row band, masked
    bad[20, 5] = -1e4                # a masked cold pixel
    w = np.ones(SHAPE)
    w[:3, :] = 0.0
    w[20, 5] = 0.0
    mix, info = fit_gaussian_mixture(bad, 2, weight=w, rng=1)
    assert_recovers_truth(mix)
    assert np.isfinite(info["chi2"]) and info["max_residual_over_peak"] < 1e-3
    with pytest.raises(InputError, match="non-finite pixels with weight > 0"):
        fit_gaussian_mixture(bad, 2)
    for value in (np.nan, np.inf, -1.0):
        w2 = np.ones(SHAPE)
        w2[0, 0] = value
        with pytest.raises(InputError, match="finite and >= 0"):
            fit_gaussian_mixture(img, 2, weight=w2)
    # every pixel masked: too few pixels for the 12 parameters (checked before the flux)
    with pytest.raises(InputError, match="0 unmasked pixel"):
        fit_gaussian_mixture(img, 2, weight=np.zeros(SHAPE))
    with pytest.raises(InputError, match="no positive flux"):
        fit_gaussian_mixture(-img, 2)


def test_lsq_fitter_refuses_a_fully_masked_image():
    """MixtureLSQFitter: no pixel of non-zero weight (or fewer than the free parameters) is no
    fit, not the start values returned with success=True."""
    from astromix import GaussianMixturePSF
    from astromix.fitting import MixtureLSQFitter

    psf = GaussianMixturePSF(GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0]),
                             flux=100.0, x_0=15.2, y_0=14.8)
    y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
    img = psf(x, y)
    with pytest.raises(InputError, match="no data to fit: 0 point"):
        MixtureLSQFitter()(psf, x, y, img, weights=np.zeros(SHAPE))
    w = np.zeros(SHAPE)
    w[15, 15] = w[15, 16] = 1.0            # 2 pixels for 3 free parameters
    with pytest.raises(InputError, match="2 point.*3 free"):
        MixtureLSQFitter()(psf, x, y, img, weights=w)
    w[14:17, 14:17] = 1.0                  # 9 pixels: the injected source
    start = psf.copy()
    start.flux, start.x_0, start.y_0 = 80.0, 15.0, 15.0
    fit = MixtureLSQFitter()(start, x, y, img, weights=w)
    assert fit.fit_info["success"]
    np.testing.assert_allclose(fit.parameters[:3], [100.0, 15.2, 14.8], rtol=1e-6)
