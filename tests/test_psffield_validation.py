"""Tests of astromix.psffield.validation (HSM validation and rho statistics)."""

import numpy as np
import pytest
from astropy.table import Table

galsim = pytest.importorskip("galsim")

from astromix.errors import InputError  # noqa: E402
from astromix.psffield.validation import (  # noqa: E402
    FLAG_EDGE,
    plot_whiskers,
    rho_statistics,
    validate_psf_field,
)

SIGMA = 1.6
G1, G2 = 0.06, -0.03
POS = [(30.3, 40.1), (150.2, 60.7), (90.6, 170.4), (170.1, 160.2), (40.8, 150.5),
       (100.4, 100.3), (60.2, 90.9), (140.7, 120.1)]


def _profile(sigma=SIGMA):
    return galsim.Gaussian(sigma=sigma).shear(g1=G1, g2=G2)


class _ExactModel:
    """A model drawing a GalSim profile exactly (PSFExModel.image's interface)."""

    def __init__(self, sigma=SIGMA):
        self.profile = _profile(sigma)

    def image(self, x, y, shape, center=(0.0, 0.0)):
        ny, nx = shape
        img = self.profile.drawImage(nx=nx, ny=ny, scale=1.0, method="no_pixel",
                                     offset=galsim.PositionD(*center) + galsim.PositionD(
                                         (nx + 1) % 2 * 0.5, (ny + 1) % 2 * 0.5))
        return img.array / img.array.sum()


def _field():
    img = galsim.ImageD(200, 200, scale=1.0)
    for x, y in POS:
        stamp = _profile().withFlux(1e4).drawImage(
            scale=1.0, center=galsim.PositionD(x + 1, y + 1), nx=25, ny=25, method="no_pixel")
        b = stamp.bounds & img.bounds
        img[b] += stamp[b]
    return img.array


def test_exact_model_agrees():
    stars = Table(rows=POS + [(3.0, 3.0)], names=("x", "y"))
    out = validate_psf_field(_field(), _ExactModel(), stars, size=25, background=0.0)
    assert len(out) == len(POS) + 1
    assert out["flag"][-1] == FLAG_EDGE and np.isnan(out["e1_star"][-1])
    ok = out["flag"] == 0
    assert ok.sum() == len(POS)
    np.testing.assert_allclose(out["sigma_star"][ok], SIGMA,  # shear conserves area
                               rtol=1e-3)
    np.testing.assert_allclose(out["e1_star"][ok], G1, atol=2e-3)
    np.testing.assert_allclose(out["e2_star"][ok], G2, atol=2e-3)
    np.testing.assert_allclose(out["x_hsm"][ok], np.array(POS)[:, 0], atol=1e-2)
    assert np.all(np.abs(out["de1"][ok]) < 2e-3) and np.all(np.abs(out["de2"][ok]) < 2e-3)
    assert np.all(np.abs(out["dsigma_over_sigma"][ok]) < 2e-3)
    assert np.all(out["rmse"][ok] < 5e-3)
    np.testing.assert_allclose(out["flux"][ok], 1e4, rtol=1e-2)


def test_wrong_size_gives_expected_dsigma():
    stars = Table(rows=POS, names=("x", "y"))
    stars["reserve"] = [True] * 5 + [False] * 3
    out = validate_psf_field(_field(), _ExactModel(sigma=1.1 * SIGMA), stars, size=25,
                             background=0.0)
    assert len(out) == 5 and np.all(out["flag"] == 0)
    np.testing.assert_allclose(out["dsigma_over_sigma"], -0.1, atol=3e-3)
    assert np.all(np.abs(out["de1"]) < 3e-3)
    assert np.all(out["rmse"] > 0.01)


class _OffsetModel(_ExactModel):
    """An exact model whose own centre is 0.3, -0.2 px off the star's (another convention)."""

    def image(self, x, y, shape, center=(0.0, 0.0)):
        return super().image(x, y, shape, center=(center[0] + 0.3, center[1] - 0.2))


def test_fit_center_removes_a_centre_convention():
    stars = Table(rows=POS, names=("x", "y"))
    fitted = validate_psf_field(_field(), _OffsetModel(), stars, size=25, background=0.0)
    fixed = validate_psf_field(_field(), _OffsetModel(), stars, size=25, background=0.0,
                               fit_center=False)
    assert np.all(fitted["flag"] == 0) and np.all(fixed["flag"] == 0)
    # the model's centre lands on the star: fitted centre = star - the model's offset
    np.testing.assert_allclose(fitted["x_model"], np.array(POS)[:, 0] - 0.3, atol=1e-3)
    np.testing.assert_allclose(fitted["y_model"], np.array(POS)[:, 1] + 0.2, atol=1e-3)
    assert np.all(fitted["rmse"] < 5e-3)
    assert np.all(fixed["rmse"] > 0.015)  # a 0.36 px offset left in: 1.7% of the peak
    np.testing.assert_allclose(fitted["flux"], 1e4, rtol=1e-2)


def test_validate_inputs():
    stars = Table(rows=POS, names=("x", "y"))
    with pytest.raises(InputError):
        validate_psf_field(np.zeros(10), _ExactModel(), stars)
    with pytest.raises(InputError):
        validate_psf_field(_field(), _ExactModel(), stars, size=24)
    with pytest.raises(InputError):
        validate_psf_field(_field(), _ExactModel(), Table({"x": [1.0]}))


def _synthetic(n=400, seed=1):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 4000, (2, n))
    # smooth model ellipticity pattern, residuals proportional to it (correlated)
    e1 = 0.03 * np.cos(x / 3000) + 0.002 * rng.normal(size=n)
    e2 = 0.02 * np.sin(y / 3000) + 0.002 * rng.normal(size=n)
    sigma_model = np.full(n, 1.5)
    return Table({"x": x, "y": y, "e1_model": e1, "e2_model": e2,
                  "e1_star": 1.2 * e1, "e2_star": 1.2 * e2,
                  "sigma_star": 1.05 * sigma_model, "sigma_model": sigma_model,
                  "flag": np.zeros(n, int)})


def test_rho_statistics_signs():
    t = _synthetic()
    rho = rho_statistics(t, min_sep=0.5, max_sep=10, nbins=5, pixel_scale=0.2)
    assert len(rho) == 5 and rho.meta["n_stars"] == 400
    for k in range(1, 6):
        assert np.all(np.isfinite(rho[f"rho{k}"])) and np.all(rho[f"rho{k}_err"] > 0)
        assert np.all(rho[f"rho{k}"] > 0)  # q = 0.2 e and dT/T > 0: all positive
    # rho2 = <e q> = 0.2 <e e>, rho1 = 0.04 <e e>
    np.testing.assert_allclose(rho["rho1"] / rho["rho2"], 0.2, rtol=1e-6)
    # anti-correlated residuals flip rho2
    t["e1_star"], t["e2_star"] = 0.8 * t["e1_model"], 0.8 * t["e2_model"]
    assert np.all(rho_statistics(t, max_sep=10, nbins=5, pixel_scale=0.2)["rho2"] < 0)


def test_rho_statistics_errors_and_empty_bins():
    t = _synthetic(n=50)
    rho = rho_statistics(t, min_sep=0.5, max_sep=1000, nbins=6, pixel_scale=0.2)
    assert np.all(np.isnan(rho["rho1"][rho["npairs"] == 0]))
    assert np.any(rho["npairs"] == 0)
    t["flag"][:] = 2
    with pytest.raises(InputError):
        rho_statistics(t)


def test_plot_whiskers():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stars = Table(rows=POS, names=("x", "y"))
    out = validate_psf_field(_field(), _ExactModel(), stars, size=25, background=0.0)
    ax = plot_whiskers(out)
    assert ax.get_xlabel() == "x [px]"
    plt.close("all")
