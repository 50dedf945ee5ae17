"""The packaged Sersic mixture table: accuracy targets, smoothness, derivatives, loader."""

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import gammaincinv

from astromix import AstromixError, InputError
from astromix.models.sersic_table import (
    SersicMixtureTable,
    radial_profile,
    sersic_b,
    sersic_profile,
)

RADII = np.geomspace(0.05, 4.0, 400)


@pytest.fixture(scope="module")
def table():
    return SersicMixtureTable.load()


def _frac_res(table, n):
    amp, var = table(n)
    m = np.sum(amp * np.exp(-RADII[:, None] ** 2 / (2 * var)) / (2 * np.pi * var), axis=1)
    return np.abs(m / sersic_profile(n, RADII) - 1)


def _target_ns(table):
    nodes = table.nodes[(table.nodes >= 0.5) & (table.nodes <= 6.0)]
    mids = 0.5 * (nodes[1:] + nodes[:-1])
    thirds = (2 * nodes[1:] + nodes[:-1]) / 3
    return np.concatenate([np.linspace(0.5, 6.0, 23), mids, thirds])


def test_table_contents(table):
    assert table.n_min <= 0.3 and table.n_max >= 8.0
    assert 8 <= table.n_components <= 32
    amp, var = table(table.nodes)
    assert np.all(np.diff(var, axis=-1) > 0)
    assert np.allclose(amp.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    assert table.meta["version"] == "1"
    assert table.meta["r_min"] <= 0.05 and table.meta["r_max"] >= 4.0


def test_accuracy_targets(table):
    """median |M/I - 1| <= 1e-3 and max <= 1e-2 over 0.05 <= r/r_eff <= 4, 0.5 <= n <= 6."""
    worst_med = worst_max = 0.0
    for n in _target_ns(table):
        f = _frac_res(table, n)
        assert np.median(f) <= 1e-3, (n, np.median(f))
        assert f.max() <= 1e-2, (n, f.max())
        worst_med, worst_max = max(worst_med, np.median(f)), max(worst_max, f.max())


def test_amplitudes_sum_to_one_between_nodes(table):
    n = np.linspace(table.n_min, table.n_max, 997)
    amp, var = table(n)
    assert amp.shape == var.shape == (n.size, table.n_components)
    assert np.all(np.abs(amp.sum(axis=1) - 1.0) < 1e-12)
    assert np.all(var > 0)


def test_scalar_and_vector_agree(table):
    n = np.array([0.7, 2.3, 5.1])
    amp, var = table(n)
    for i, ni in enumerate(n):
        a, v = table(float(ni))
        assert a.shape == (table.n_components,)
        np.testing.assert_allclose(a, amp[i], rtol=0, atol=1e-15)
        np.testing.assert_allclose(v, var[i], rtol=1e-14)


def test_derivatives_match_finite_differences(table):
    h = 1e-6
    for n in (0.35, 0.62, 1.0, 1.37, 2.5, 4.0, 6.3, 7.9):
        damp, dvar = table.derivatives(n)
        ap, vp = table(n + h)
        am, vm = table(n - h)
        np.testing.assert_allclose(damp, (ap - am) / (2 * h), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dvar, (vp - vm) / (2 * h), rtol=1e-5, atol=1e-9)
        assert abs(damp.sum()) < 1e-9


def test_derivatives_vectorised(table):
    n = np.array([0.8, 3.0])
    damp, dvar = table.derivatives(n)
    assert damp.shape == dvar.shape == (2, table.n_components)
    assert np.allclose(damp.sum(axis=1), 0.0, atol=1e-9)


def test_continuity_at_nodes(table):
    """Value and first two derivatives agree from both sides of the interior nodes."""
    eps = 1e-9
    for n in table.nodes[1:-1:7]:
        for f in (table, table.derivatives):
            lo, hi = f(n - eps), f(n + eps)
            for x, y in zip(lo, hi):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_radial_profile_helper(table):
    for n in (1.0, 4.0):
        ratio = radial_profile(n, RADII, table) / sersic_profile(n, RADII)
        assert np.median(np.abs(ratio - 1)) < 1e-3
    assert radial_profile(2.0, 1.0).shape == ()


@pytest.mark.parametrize("n", [0.3, 0.5, 1.0, 2.0, 4.0, 8.0])
def test_exact_profile_normalisation(n):
    b = sersic_b(n)
    assert b == pytest.approx(gammaincinv(2 * n, 0.5))

    def integrand(r):
        return 2 * np.pi * r * sersic_profile(n, r)

    # split at r_eff and integrate the tail to infinity
    total = sum(quad(integrand, lo, hi, limit=200, epsabs=0, epsrel=1e-11)[0]
                for lo, hi in ((0, 1e-3), (1e-3, 1), (1, 50), (50, np.inf)))
    half = sum(quad(integrand, lo, hi, limit=200, epsabs=0, epsrel=1e-11)[0]
               for lo, hi in ((0, 1e-3), (1e-3, 1)))
    assert total == pytest.approx(1.0, rel=1e-8)
    assert half == pytest.approx(0.5, rel=1e-8)


def test_graham_driver_approximation():
    # asymptotic b_n (Ciotti & Bertin 1999, quoted by Graham & Driver 2005, eq. 5)
    for n in (1.0, 4.0, 8.0):
        approx = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n ** 2)
        assert sersic_b(n) == pytest.approx(approx, rel=1e-5)


@pytest.mark.parametrize("n", [0.29, 8.01, -1.0, np.nan, [1.0, 9.0]])
def test_out_of_range_raises(table, n):
    with pytest.raises(InputError, match="outside the tabulated range"):
        table(n)
    with pytest.raises(InputError, match="outside the tabulated range"):
        table.derivatives(n)


def test_load_is_cached():
    assert SersicMixtureTable.load() is SersicMixtureTable.load()


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(AstromixError, match="cannot read"):
        SersicMixtureTable.from_file(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(AstromixError, match="cannot read"):
        SersicMixtureTable.from_file(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, n=np.arange(5.0))
    with pytest.raises(AstromixError, match="lacks"):
        SersicMixtureTable.from_file(partial)
    corrupt = tmp_path / "corrupt.npz"
    np.savez(corrupt, n=np.arange(5.0)[::-1], amp=np.ones((5, 3)) / 3, var=np.ones((5, 3)),
             version="1", r_min=0.02, r_max=6.0, description=np.array(["x"]))
    with pytest.raises(AstromixError, match="corrupt"):
        SersicMixtureTable.from_file(corrupt)


def test_evaluate_matches_the_splines():
    from astromix.models.sersic_table import SersicMixtureTable

    table = SersicMixtureTable.load()
    for n in (table.n_min, 0.7, 1.0, 2.345, 4.0, table.n_max):
        amp, var, damp, dvar = table.evaluate(n)
        a, v = table(n)
        da, dv = table.derivatives(n)
        assert np.allclose(amp, a, rtol=1e-12, atol=1e-15)
        assert np.allclose(var, v, rtol=1e-12)
        assert np.allclose(damp, da, rtol=1e-10, atol=1e-13)
        assert np.allclose(dvar, dv, rtol=1e-10, atol=1e-13)
    with pytest.raises(InputError):
        table.evaluate(table.n_max + 0.1)


@pytest.mark.parametrize("n, half_light, beyond3, beyond4", [(0.3, 1.010, 0.018, 0.015),
                                                             (0.35, 1.006, 0.010, 0.0086)])
def test_documented_far_wing_at_low_n(n, half_light, beyond3, beyond4):
    """docs/sersic.rst: below n = 0.4 the mixture holds a few per cent of the flux in a far
    wing the Sersic profile lacks (exact fractions from the incomplete gamma function: < 1e-4
    beyond 3 r_eff), and r_eff is not quite the half-light radius.  Measured on a
    rendered, pixel-integrated image, independently of the table's enclosed-flux formula."""
    from scipy.optimize import brentq
    from scipy.special import gammaincc

    from astromix import SersicMixture

    r_eff, size = 16.0, 321             # the stamp reaches 10 r_eff
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    img = SersicMixture(1.0, c, c, r_eff, n, 0.0, 0.0)(xx, yy)
    r = np.hypot(xx - c, yy - c) / r_eff
    assert img.sum() == pytest.approx(1.0, abs=1e-4)
    b = sersic_b(n)
    for radius, documented in ((3.0, beyond3), (4.0, beyond4)):
        assert gammaincc(2 * n, b * radius ** (1 / n)) < 1e-4           # the exact profile
        assert img[r > radius].sum() == pytest.approx(documented, rel=0.05)
    # the half-light radius, measured alike (photutils' exact circular apertures) on the
    # mixture and on the exact profile (averaged over 4 x 4 points per pixel): their ratio
    aperture = pytest.importorskip("photutils.aperture").CircularAperture
    sub = (np.arange(4) - 1.5) / 4
    exact = sum(sersic_profile(n, np.hypot(xx + dx - c, yy + dy - c) / r_eff)
                for dx in sub for dy in sub) / (16 * r_eff ** 2)

    def measured(image):
        def excess(radius):
            flux = aperture((c, c), radius * r_eff).do_photometry(image, method="exact")[0][0]
            return flux / image.sum() - 0.5
        return brentq(excess, 0.9, 1.1, xtol=1e-7)

    assert measured(img) / measured(exact) == pytest.approx(half_light, abs=5e-4)
