"""GaussianMixture: validation, immutability, transforms, rendering conventions, chi2."""

import warnings

import numpy as np
import pytest
from conftest import random_mixture, to_numpy

from astromix import AccuracySettings, GaussianMixture, InputError

EYE = np.eye(2)


def one(x=10.0, y=12.0, cov=None, amp=1.0):
    return GaussianMixture([amp], [[x, y]], [EYE * 4 if cov is None else cov])


class TestValidation:
    @pytest.mark.parametrize("amp, mean, cov, msg", [
        ([1, 2], [[0, 0]], [EYE], "mean must have shape"),
        ([1], [[0, 0, 0]], [EYE], "mean must have shape"),
        ([1], [[0, 0]], EYE, "cov must have shape"),
        ([[1]], [[0, 0]], [EYE], "amp must have shape"),
        ([np.nan], [[0, 0]], [EYE], "amp has non-finite"),
        ([1], [[np.inf, 0]], [EYE], "mean has non-finite"),
        ([1], [[0, 0]], [[[1, np.nan], [np.nan, 1]]], "non-finite values in component"),
        ([1], [[0, 0]], [[[1, 0.5], [0.2, 1]]], "not symmetric in component"),
        ([1], [[0, 0]], [[[1, 2], [2, 1]]], "not positive definite in component"),
        ([1], [[0, 0]], [[[-1, 0], [0, 1]]], "not positive definite"),
        ([1], [[0, 0]], [np.zeros((2, 2))], "not positive definite"),
        ("a", [[0, 0]], [EYE], "numeric"),
    ])
    def test_bad_input(self, amp, mean, cov, msg):
        with pytest.raises(InputError, match=msg):
            GaussianMixture(amp, mean, cov)

    def test_names_the_component(self):
        cov = np.array([EYE, EYE, [[1, 3], [3, 1]]])
        with pytest.raises(InputError, match=r"component\(s\) \[2\]"):
            GaussianMixture([1, 1, 1], np.zeros((3, 2)), cov)

    def test_immutable(self):
        g = one()
        with pytest.raises(ValueError):
            g.amp[0] = 5
        with pytest.raises(ValueError):
            g.cov[0, 0, 0] = 5
        with pytest.raises(AttributeError):
            g.amp = [2.0]
        with pytest.raises(AttributeError):
            g.extra = 1

    def test_copies_input(self):
        amp = np.array([1.0])
        g = GaussianMixture(amp, [[0, 0]], [EYE])
        amp[0] = 7
        assert g.amp[0] == 1.0

    def test_adopted_arrays_are_frozen_and_views_copied(self):
        """_adopt keeps a fresh array (read-only from then on) and copies a view."""
        amp, mean, cov = np.array([2.0]), np.zeros((1, 2)), np.array([EYE], dtype=float)
        g = GaussianMixture._adopt(amp, mean, cov)
        assert g.amp is amp and g.cov is cov and not amp.flags.writeable
        with pytest.raises(ValueError):
            cov[0, 0, 0] = 5.0
        base = np.array([1.0, 3.0])
        h = GaussianMixture._adopt(base[:1], [[1.0, 2.0]], np.array([EYE], dtype=np.float32))
        base[0] = 7.0                            # the view was copied
        assert h.amp[0] == 1.0 and h.cov.dtype == np.float64 and h.mean.shape == (1, 2)
        assert not (h.amp.flags.writeable or h.mean.flags.writeable or h.cov.flags.writeable)

    def test_len_flux_repr_eq(self):
        g = GaussianMixture([1.0, -0.25], [[0, 0], [1, 1]], [EYE, EYE * 2])
        assert len(g) == g.n_components == 2
        assert g.flux == 0.75
        assert "2 components" in repr(g)
        assert g == GaussianMixture([1.0, -0.25], [[0, 0], [1, 1]], [EYE, EYE * 2])
        assert g != one()


class TestTransforms:
    def test_affine(self):
        rng = np.random.default_rng(0)
        g = random_mixture(rng, 4, (30, 30))
        m = np.array([[0.8, -0.3], [0.5, 1.1]])
        t = np.array([2.0, -1.0])
        h = g.affine(m, t)
        np.testing.assert_allclose(h.mean, g.mean @ m.T + t)
        for k in range(4):
            np.testing.assert_allclose(h.cov[k], m @ g.cov[k] @ m.T)
        assert h.flux == pytest.approx(g.flux)
        assert g.affine(EYE) == g

    def test_affine_rotation_of_image(self):
        # rotating a centred elongated Gaussian by 90 deg swaps its image axes
        g = one(15, 15, np.diag([9.0, 1.0]))
        rot = np.array([[0.0, -1.0], [1.0, 0.0]])
        h = g.affine(rot, (30, 0))
        np.testing.assert_allclose(to_numpy(h.render((31, 31))), to_numpy(g.render((31, 31))).T,
                                   atol=1e-14)

    @pytest.mark.parametrize("matrix, offset", [
        (np.zeros((2, 2)), (0, 0)), (np.eye(3), (0, 0)), (EYE, (0, 0, 0)), (EYE, (np.nan, 0))])
    def test_affine_bad(self, matrix, offset):
        with pytest.raises(InputError):
            one().affine(matrix, offset)

    def test_convolve(self):
        a = GaussianMixture([1.0, 2.0], [[1, 2], [3, 4]], [EYE, EYE * 2])
        b = GaussianMixture([0.5, 0.25, 0.25], [[0, 0], [1, 0], [0, 1]],
                            [EYE * 0.5, EYE * 0.1, np.diag([1.0, 2.0])])
        c = a.convolve(b)
        assert len(c) == 6
        assert c.flux == pytest.approx(a.flux * b.flux)
        np.testing.assert_allclose(c.amp[4], 2.0 * 0.25)
        np.testing.assert_allclose(c.mean[4], [4, 4])
        np.testing.assert_allclose(c.cov[4], EYE * 2.1)
        with pytest.raises(InputError):
            a.convolve(np.ones(3))

    def test_convolution_of_images(self):
        # the analytic convolution equals the numerical convolution of point-sampled images
        from scipy.signal import fftconvolve
        s = AccuracySettings(pixel_integration="none", n_sigma=7)
        a = GaussianMixture([1.0], [[20.0, 21.0]], [[[6, 2], [2, 4]]])
        b = GaussianMixture([1.0, 0.5], [[0, 0], [0.5, -0.5]], [EYE * 3, np.diag([2.0, 5.0])])
        img_a = to_numpy(a.render((41, 41), settings=s))
        img_b = to_numpy(b.shift(20, 20).render((41, 41), settings=s))
        num = fftconvolve(img_a, img_b, mode="full")[20:61, 20:61]
        exact = to_numpy(a.convolve(b).render((41, 41), settings=s))
        assert np.abs(num - exact).max() < 1e-6 * exact.max()

    def test_add_shift_scale(self):
        a, b = one(), one(3, 4, amp=2.0)
        c = a + b
        assert len(c) == 2 and c.flux == 3.0
        np.testing.assert_allclose(a.shift(1, -2).mean, [[11, 10]])
        assert a.scale_flux(3).flux == 3.0
        # no silent NaN: a non-finite shift or factor is refused
        for bad in (np.nan, np.inf):
            with pytest.raises(InputError, match="shift must be finite"):
                a.shift(bad, 0.0)
            with pytest.raises(InputError, match="shift must be finite"):
                a.shift(0.0, -bad)
            with pytest.raises(InputError, match="factor must be finite"):
                a.scale_flux(bad)

    def test_moments(self):
        g = GaussianMixture([1.0, 3.0], [[0, 0], [4, 0]], [EYE, EYE * 2])
        flux, cen, cov = g.moments()
        assert flux == 4.0
        np.testing.assert_allclose(cen, [3, 0])
        # mixture variance = sum a (C + d d^T) / flux
        np.testing.assert_allclose(cov, [[(1 * (1 + 9) + 3 * (2 + 1)) / 4, 0], [0, (1 + 6) / 4]])
        with pytest.raises(InputError):
            GaussianMixture([1.0, -1.0], [[0, 0], [0, 0]], [EYE, EYE]).moments()


class TestRender:
    def test_pixel_convention_and_flux(self, backend):
        # pixel (j, i) is centred at (x=i, y=j): the image centroid is the mean
        g = one(20.3, 14.8, [[5.0, 1.2], [1.2, 3.0]], amp=2.5)
        img = to_numpy(g.render((30, 40)))
        assert img.shape == (30, 40)
        yy, xx = np.mgrid[:30, :40]
        assert img.sum() == pytest.approx(2.5, rel=1e-5)
        assert (img * xx).sum() / img.sum() == pytest.approx(20.3, abs=1e-5)
        assert (img * yy).sum() / img.sum() == pytest.approx(14.8, abs=1e-5)
        # second moments: C + 1/12 (pixel box)
        var_x = (img * (xx - 20.3) ** 2).sum() / img.sum()
        assert var_x == pytest.approx(5.0 + 1 / 12, rel=1e-3)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_flux_conserved(self, backend, dtype):
        # minor-axis sigma >= 0.75 px: the regime where pixel integration is accurate
        rng = np.random.default_rng(1)
        g = random_mixture(rng, 20, (96, 96), margin=35, sigma_range=(2.5, 5))
        img = to_numpy(g.render((96, 96), dtype=dtype))
        assert img.dtype == dtype
        assert img.sum(dtype=np.float64) == pytest.approx(g.flux, rel=2e-5)

    def test_truncation_matches_setting(self, backend):
        g = one(20, 20, EYE * 4)
        tight = to_numpy(g.render((41, 41), settings=AccuracySettings(n_sigma=2)))
        # flux inside a 2-sigma ellipse: 1 - exp(-2) (up to the pixelisation of the edge)
        assert tight.sum() == pytest.approx(1 - np.exp(-2), abs=0.02)
        assert tight[20, 20 + 6] == 0 and tight[20, 20 + 3] > 0

    def test_outside_image_and_empty(self, backend):
        assert np.all(to_numpy(one(-50, -50).render((10, 10))) == 0)
        empty = GaussianMixture(np.zeros(0), np.zeros((0, 2)), np.zeros((0, 2, 2)))
        assert np.all(to_numpy(empty.render((5, 6))) == 0)

    @pytest.mark.parametrize("shape", [(0, 4), (3,), "ab", (-1, 4)])
    def test_bad_shape(self, shape):
        with pytest.raises(InputError):
            one().render(shape)

    def test_bad_dtype_and_settings(self):
        with pytest.raises(InputError, match="dtype"):
            one().render((4, 4), dtype=np.int32)
        with pytest.raises(InputError, match="AccuracySettings"):
            one().render((4, 4), settings={"n_sigma": 3})


class TestChi2:
    def test_value(self, backend):
        rng = np.random.default_rng(2)
        g = random_mixture(rng, 5, (25, 30))
        data = rng.normal(0, 0.05, (25, 30))
        weight = rng.uniform(0, 3, (25, 30))
        model = to_numpy(g.render((25, 30)))
        expect = np.sum(weight * (model - data) ** 2)
        assert g.chi2(data, weight) == pytest.approx(expect, rel=1e-10)
        chi2, (da, dm, dc) = g.chi2(data, weight, gradient=True)
        assert chi2 == pytest.approx(expect, rel=1e-10)
        assert da.shape == (5,) and dm.shape == (5, 2) and dc.shape == (5, 2, 2)
        np.testing.assert_allclose(dc, np.swapaxes(dc, 1, 2))

    def test_perfect_model_has_zero_chi2_and_gradient(self, backend):
        g = random_mixture(np.random.default_rng(3), 3, (20, 20), margin=5)
        data = to_numpy(g.render((20, 20)))
        chi2, grads = g.chi2(data, np.ones_like(data), gradient=True)
        assert chi2 < 1e-25
        for arr in grads:
            assert np.all(np.abs(arr) < 1e-10)

    def test_masked_nan_is_ignored(self, backend):
        g = one()
        data = to_numpy(g.render((24, 24))).copy()
        weight = np.ones_like(data)
        data[3, 4] = np.nan
        weight[3, 4] = 0
        chi2, grads = g.chi2(data, weight, gradient=True)
        assert np.isfinite(chi2) and chi2 < 1e-25
        assert all(np.all(np.isfinite(a)) for a in grads)

    @pytest.mark.parametrize("change, msg", [
        (lambda d, w: (d, w[:-1]), "differs from data shape"),
        (lambda d, w: (d, -w), "negative"),
        (lambda d, w: (d, w * np.nan), "weight has non-finite"),
        (lambda d, w: (d * np.nan, w), "non-finite pixel"),
        (lambda d, w: (d[0], w[0]), "2-d image"),
    ])
    def test_bad_data(self, change, msg):
        data = np.zeros((8, 8))
        weight = np.ones((8, 8))
        with pytest.raises(InputError, match=msg):
            one(3, 3).chi2(*change(data, weight))

    def test_float32_data_is_fitted_in_float32(self, backend):
        g = one()
        data = to_numpy(g.render((24, 24), dtype=np.float32))
        c32 = g.chi2(data + np.float32(0.01), np.ones_like(data))
        assert c32 == pytest.approx(24 * 24 * 1e-4, rel=1e-4)

    @pytest.mark.parametrize("sigma", [1e-20, 1e23])
    def test_float32_data_with_weights_beyond_float32(self, backend, sigma):
        """float64 inverse variances 1 / sigma^2 past float32's range (1e40, 1e-46) with
        float32 data: a clear error (they became inf, refused as "non-finite", or 0,
        every pixel dropped from chi2 silently); in range, chi2 = the number of pixels
        for data one sigma off the model; in float64, chi2 = that number too."""
        g = one(amp=1e3 * sigma)
        model = to_numpy(g.render((24, 24)))
        data, weight = model + sigma, np.full((24, 24), sigma ** -2)
        assert g.chi2(data, weight) == pytest.approx(24 * 24, rel=1e-6)
        with pytest.raises(InputError, match="outside the float32 range.*pass float64 data"):
            g.chi2(data.astype(np.float32), weight, gradient=True)
        weight[0, 0] = np.nan  # the other checks come first
        with pytest.raises(InputError, match="weight has non-finite values"):
            g.chi2(data.astype(np.float32), weight)
        weight[0, 0] = -1e-46
        with pytest.raises(InputError, match="negative"):
            g.chi2(data.astype(np.float32), weight)
        # in range: taken in float32 as before
        g = one(amp=10.0)
        data = (to_numpy(g.render((24, 24))) + 1e-3).astype(np.float32)
        assert g.chi2(data, np.full((24, 24), 1e6)) == pytest.approx(24 * 24, rel=1e-3)

    def test_big_endian_float32_is_fitted_in_float32(self, backend):
        # astropy.io.fits returns float32 images as '>f4': they must be fitted as float32
        g = one()
        rng = np.random.default_rng(4)
        data = to_numpy(g.render((24, 24), dtype=np.float32)) \
            + rng.normal(0, 0.01, (24, 24)).astype(np.float32)
        weight = np.ones_like(data)
        native = g.chi2(data, weight, gradient=True)
        big = g.chi2(data.astype(">f4"), weight.astype(">f4"), gradient=True)
        wide = g.chi2(data.astype(np.float64), weight.astype(np.float64), gradient=True)
        assert big[0] == native[0] and big[0] != wide[0]
        for b, n in zip(big[1], native[1]):
            np.testing.assert_array_equal(to_numpy(b), to_numpy(n))
        np.testing.assert_array_equal(to_numpy(g.render((24, 24), dtype=">f4")),
                                      to_numpy(g.render((24, 24), dtype=np.float32)))


class TestRenderArguments:
    @pytest.mark.parametrize("shape", [(10.7, 12), (np.inf, 12), (np.nan, 12), (12, "x")])
    def test_shape_must_be_whole_numbers(self, shape):
        with pytest.raises(InputError, match="shape must be"):
            one().render(shape)

    def test_whole_float_shape_is_accepted(self):
        np.testing.assert_array_equal(one().render((12.0, np.int64(14))), one().render((12, 14)))

    def test_misspelt_dtype(self):
        with pytest.raises(InputError, match="dtype must be float32 or float64"):
            one().render((4, 4), dtype="flaot32")

    def test_affine_overflow_is_refused(self):
        with pytest.raises(InputError, match="overflow"):
            one().affine(EYE * 1e200)

    @pytest.mark.parametrize("matrix", [[[1.0, 1.0], [1.0, 1.0 + 1e-12]],
                                        [[1e-170, 0.0], [0.0, 1.0]]])
    def test_affine_to_a_singular_covariance_is_refused(self, matrix):
        # M C M^T rounds to det 0 (nearly singular M) or C_xx 0 (tiny scale): the
        # constructor refuses those arrays, and the unchecked result had rendered a flux
        # of 0.29 (or 1.17) instead of 1, and NaN in the numpy gradient
        g = GaussianMixture([1.0], [[0.0, 0.0]], [[[2.0, 0.3], [0.3, 1.5]]])
        m = np.asarray(matrix)
        cov = m @ g.cov[0] @ m.T
        with pytest.raises(InputError, match="positive definite"):
            GaussianMixture([1.0], [[0.0, 0.0]], [cov])
        with pytest.raises(InputError, match="affine: the transformed covariance .* not "
                                             "positive definite"):
            g.affine(m)

    def test_scale_shift_convolve_overflow_is_refused(self):
        # they had returned mixtures with infinite amplitudes or centres (and a
        # RuntimeWarning), which render to inf and NaN
        big = GaussianMixture([1e300, 2.0], [[1e308, 0.0], [0.0, 0.0]],
                              [np.eye(2) * 1e150, np.eye(2)])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match=r"scale_flux: the amplitudes times 1\d+\.0 over"):
                big.scale_flux(1e10)
            with pytest.raises(InputError, match="shift: the shifted centres overflow"):
                big.shift(1e308, 0.0)
            with pytest.raises(InputError, match="convolve: .* overflow"):
                big.convolve(big)
            # below the limit all three still work
            assert big.scale_flux(1e7).amp.tolist() == [1e300 * 1e7, 2e7]
            assert big.shift(-1e308, 1.0).mean.tolist() == [[0.0, 1.0], [-1e308, 1.0]]
            assert len(big.convolve(one())) == 2
