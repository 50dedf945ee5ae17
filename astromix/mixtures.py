"""The Gaussian mixture: the one object every astromix profile is made of."""

import math
import operator

import numpy as np

from . import backends as _backends
from .errors import InputError
from .settings import AccuracySettings, get_default_settings

__all__ = ["GaussianMixture"]


def _frozen(x):
    x = np.array(x, dtype=np.float64, copy=True)
    x.setflags(write=False)
    return x


def _owned(x):
    # x itself, read-only, when it is a C-contiguous float64 array whose memory
    # no other array holds (its own, or a Numba allocation's); a view of another
    # array could be written through that array, so it is copied, as anything
    # else is (to the C-contiguous float64 the kernels take)
    if (type(x) is np.ndarray and x.dtype == np.float64 and x.flags.c_contiguous
            and not isinstance(x.base, np.ndarray)):
        x.setflags(write=False)
        return x
    return _frozen(x)


def _check_covariances(cov, what="cov"):
    if not np.all(np.isfinite(cov)):
        bad = np.unique(np.nonzero(~np.isfinite(cov))[0])
        raise InputError(f"{what} has non-finite values in component(s) {bad.tolist()}")
    asym = np.abs(cov[:, 0, 1] - cov[:, 1, 0])
    scale = np.maximum(np.abs(cov[:, 0, 0]) + np.abs(cov[:, 1, 1]), np.finfo(float).tiny)
    bad = np.nonzero(asym > 1e-10 * scale)[0]
    if bad.size:
        raise InputError(f"{what} is not symmetric in component(s) {bad.tolist()}")
    with np.errstate(over="ignore", invalid="ignore"):
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    bad = np.nonzero(~((cov[:, 0, 0] > 0) & (det > 0) & np.isfinite(det)))[0]
    if bad.size:
        # (a determinant that overflows counts as not positive definite)
        raise InputError(f"{what} is not positive definite in component(s) {bad.tolist()} "
                         f"(C_xx = {cov[bad[0], 0, 0]:.4g}, det = {det[bad[0]]:.4g})")


class GaussianMixture:
    r"""An immutable mixture of K two-dimensional Gaussians in pixel coordinates.

    .. math::

        I(\mathbf{x}) = \sum_k \frac{a_k}{2\pi\sqrt{\det C_k}}
        \exp\left(-\tfrac12 (\mathbf{x}-\boldsymbol\mu_k)^T C_k^{-1}
        (\mathbf{x}-\boldsymbol\mu_k)\right)

    Parameters
    ----------
    amp : array-like, shape (K,)
        Amplitude of each component: its total flux (any sign, finite).
    mean : array-like, shape (K, 2)
        Centre of each component, columns (x, y) [px].  Pixel (j, i) of an
        image is centred at (x=i, y=j), origin 0 (astropy convention).
    cov : array-like, shape (K, 2, 2)
        Covariance of each component [px^2], symmetric positive definite, rows
        and columns ordered (x, y).

    Raises
    ------
    InputError
        On wrong shapes, non-finite values, or a covariance that is not
        symmetric positive definite (the message names the component).

    Notes
    -----
    Instances are immutable: the arrays are read-only copies, and every
    transformation returns a new mixture.  Rendering follows Hogg & Lang (2013,
    PASP 125, 719) and forcepho (Johnson et al.): each component is integrated
    analytically over the pixel box (see :class:`astromix.AccuracySettings`)
    and culled to its ``n_sigma`` ellipse.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix import GaussianMixture
    >>> g = GaussianMixture([1.0, 0.5], [[10, 12], [11, 12]],
    ...                     [np.eye(2) * 4, np.diag([9.0, 1.0])])
    >>> len(g), g.flux
    (2, 1.5)
    >>> image = g.render((24, 24))
    >>> round(float(image.sum()), 4)
    1.5
    """

    __slots__ = ("_amp", "_mean", "_cov")

    def __init__(self, amp, mean, cov):
        try:
            amp = np.asarray(amp, dtype=np.float64)
            mean = np.asarray(mean, dtype=np.float64)
            cov = np.asarray(cov, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"GaussianMixture needs numeric arrays: {exc}") from None
        amp = np.atleast_1d(amp)
        if amp.ndim != 1:
            raise InputError(f"amp must have shape (K,), got {amp.shape}")
        k = amp.shape[0]
        if mean.shape != (k, 2):
            raise InputError(f"mean must have shape (K, 2) = ({k}, 2), got {mean.shape}")
        if cov.shape != (k, 2, 2):
            raise InputError(f"cov must have shape (K, 2, 2) = ({k}, 2, 2), got {cov.shape}")
        if not np.all(np.isfinite(amp)):
            raise InputError("amp has non-finite values")
        if not np.all(np.isfinite(mean)):
            raise InputError("mean has non-finite values")
        _check_covariances(cov)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        self._amp, self._mean, self._cov = _frozen(amp), _frozen(mean), _frozen(cov)

    @classmethod
    def _unchecked(cls, amp, mean, cov):
        """Build without validation (for internal transforms of valid mixtures)."""
        self = object.__new__(cls)
        self._amp, self._mean, self._cov = _frozen(amp), _frozen(mean), _frozen(cov)
        return self

    @classmethod
    def _adopt(cls, amp, mean, cov):
        """Build without validation or copies from arrays nothing else holds.

        For float64 arrays just made by a compiled build (a model's
        components): they are made read-only and kept, which saves the three
        copies of :meth:`_unchecked` (about 1 us of a 64 x 64 stamp's build
        and render).  Other arrays are copied as :meth:`_unchecked` does.
        """
        self = object.__new__(cls)
        self._amp, self._mean, self._cov = _owned(amp), _owned(mean), _owned(cov)
        return self

    # -- data -----------------------------------------------------------------
    @property
    def amp(self):
        """Amplitudes, shape (K,) (read-only)."""
        return self._amp

    @property
    def mean(self):
        """Centres (x, y) [px], shape (K, 2) (read-only)."""
        return self._mean

    @property
    def cov(self):
        """Covariances [px^2], shape (K, 2, 2) (read-only)."""
        return self._cov

    @property
    def flux(self):
        """Total flux, the sum of the amplitudes (float)."""
        return float(self._amp.sum())

    def __len__(self):
        return self._amp.shape[0]

    @property
    def n_components(self):
        """Number of components K."""
        return len(self)

    def __repr__(self):
        return f"<GaussianMixture: {len(self)} components, flux={self.flux:.6g}>"

    def __eq__(self, other):
        if not isinstance(other, GaussianMixture):
            return NotImplemented
        return (np.array_equal(self._amp, other._amp) and np.array_equal(self._mean, other._mean)
                and np.array_equal(self._cov, other._cov))

    __hash__ = None

    def moments(self):
        """Flux, centroid and second central moments of the whole mixture.

        Returns
        -------
        flux : float
        centroid : ndarray, shape (2,)
            (x, y) [px].
        covariance : ndarray, shape (2, 2)
            Second central moments [px^2] (of the unintegrated profile).

        Raises
        ------
        InputError
            If the flux is zero (the moments are undefined).
        """
        flux = self.flux
        if flux == 0:
            raise InputError("moments are undefined for a mixture of zero flux")
        centroid = (self._amp[:, None] * self._mean).sum(0) / flux
        d = self._mean - centroid
        second = (self._amp[:, None, None] * (self._cov + d[:, :, None] * d[:, None, :])).sum(0)
        return flux, centroid, second / flux

    # -- transforms -------------------------------------------------------------
    def affine(self, matrix, offset=(0.0, 0.0)):
        """Apply ``x -> matrix @ x + offset`` to the mixture (flux is conserved).

        Parameters
        ----------
        matrix : array-like, shape (2, 2)
            Non-singular linear map, e.g. the Jacobian d(pixel)/d(sky) of a WCS.
        offset : array-like, shape (2,), optional
            Shift (x, y) added after the linear map [px].

        Returns
        -------
        GaussianMixture
            Centres ``M mu + t``, covariances ``M C M^T``, amplitudes unchanged.

        Raises
        ------
        InputError
            If ``matrix`` is not a finite non-singular 2x2 matrix, the
            transformed centres or covariances overflow, or a transformed
            covariance is not positive definite in float64 (a matrix too close
            to singular, e.g. ``[[1, 1], [1, 1 + 1e-12]]``, or of too small a
            scale, e.g. ``diag(1e-170, 1)``).
        """
        m = np.asarray(matrix, dtype=np.float64)
        t = np.asarray(offset, dtype=np.float64)
        if m.shape != (2, 2) or not np.all(np.isfinite(m)) \
                or float(m[0, 0]) * float(m[1, 1]) - float(m[0, 1]) * float(m[1, 0]) == 0:
            raise InputError(f"matrix must be a finite non-singular 2x2 matrix, got {m!r}")
        if t.shape != (2,) or not np.all(np.isfinite(t)):
            raise InputError(f"offset must be two finite numbers, got {t!r}")
        with np.errstate(over="ignore", invalid="ignore"):
            cov = np.einsum("ab,kbc,dc->kad", m, self._cov, m)
            mean = self._mean @ m.T + t
        if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(mean))):
            raise InputError("GaussianMixture.affine: the transformed centres or covariances "
                             "overflow (are not finite)")
        # a matrix close to singular (or one of tiny scale) can round M C M^T to a singular
        # or indefinite covariance, which renders the wrong flux or NaN
        _check_covariances(cov, "GaussianMixture.affine: the transformed covariance (the "
                                "matrix is too close to singular for float64)")
        return GaussianMixture._unchecked(self._amp, mean, cov)

    def shift(self, dx, dy):
        """Return the mixture moved by (dx, dy) [px].

        Parameters
        ----------
        dx, dy : float
            Shift added to every centre's x and y [px].

        Returns
        -------
        GaussianMixture
            K components: centres ``mean + (dx, dy)``, shape (K, 2) [px];
            amplitudes and covariances unchanged.

        Raises
        ------
        InputError
            If ``dx`` or ``dy`` is not finite, or a shifted centre overflows.
        """
        dx, dy = float(dx), float(dy)
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise InputError(f"GaussianMixture.shift: the shift must be finite, got ({dx}, {dy})")
        # |mean + d| <= max|mean| + |d|: when that bound is finite nothing overflows
        # (a reduction costs less than np.errstate on this per-evaluation path)
        if math.isfinite(float(np.abs(self._mean).max(initial=0.0)) + max(abs(dx), abs(dy))):
            mean = self._mean + (dx, dy)
        else:
            with np.errstate(over="ignore"):
                mean = self._mean + (dx, dy)
            if not np.isfinite(mean).all():
                raise InputError("GaussianMixture.shift: the shifted centres overflow (are "
                                 "not finite)")
        return GaussianMixture._unchecked(self._amp, mean, self._cov)

    def scale_flux(self, factor):
        """Return the mixture with every amplitude multiplied by ``factor``.

        Parameters
        ----------
        factor : float
            Dimensionless multiplier (any sign).

        Returns
        -------
        GaussianMixture
            K components with amplitudes ``amp * factor``, shape (K,), in the
            units of ``amp``; the flux is ``self.flux * factor``.  Centres and
            covariances unchanged.

        Raises
        ------
        InputError
            If ``factor`` is not finite, or an amplitude times it overflows.
        """
        factor = float(factor)
        if not math.isfinite(factor):
            raise InputError(f"GaussianMixture.scale_flux: the factor must be finite, got {factor}")
        # |amp factor| <= max|amp| |factor|, so a finite bound means no overflow
        if not math.isfinite(float(np.abs(self._amp).max(initial=0.0)) * abs(factor)):
            raise InputError(f"GaussianMixture.scale_flux: the amplitudes times {factor!r} "
                             "overflow (are not finite)")
        return GaussianMixture._unchecked(self._amp * factor, self._mean, self._cov)

    def convolve(self, other):
        """Convolve with another mixture (all K x L pairs).

        Parameters
        ----------
        other : GaussianMixture
            L components in the same pixel frame, typically a PSF normalised
            to unit flux and centred on (0, 0) [px] (its centres are added to
            ``self``'s).

        Returns
        -------
        GaussianMixture
            K*L components, ordered with ``self``'s index varying slowest:
            amplitudes ``a_i b_j`` (shape (K*L,); in the units of ``amp``
            times those of ``other.amp``), centres ``mu_i + nu_j`` (shape
            (K*L, 2) [px]), covariances ``C_i + D_j`` (shape (K*L, 2, 2)
            [px^2]).  The flux is ``self.flux * other.flux``.

        Raises
        ------
        InputError
            If ``other`` is not a :class:`GaussianMixture`, or an amplitude
            product or a sum of centres or covariances overflows.
        """
        if not isinstance(other, GaussianMixture):
            raise InputError("can only convolve with a GaussianMixture, "
                             f"got {type(other).__name__}")
        with np.errstate(over="ignore"):
            amp = (self._amp[:, None] * other._amp[None, :]).ravel()
            mean = (self._mean[:, None, :] + other._mean[None, :, :]).reshape(-1, 2)
            cov = (self._cov[:, None] + other._cov[None, :]).reshape(-1, 2, 2)
        if not (np.isfinite(amp).all() and np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise InputError("GaussianMixture.convolve: the products of the amplitudes or the "
                             "sums of the centres or covariances overflow (are not finite)")
        return GaussianMixture._unchecked(amp, mean, cov)

    def __add__(self, other):
        """Union of the components of two mixtures (the sum of the profiles)."""
        if not isinstance(other, GaussianMixture):
            return NotImplemented
        return GaussianMixture._unchecked(np.concatenate([self._amp, other._amp]),
                                          np.concatenate([self._mean, other._mean]),
                                          np.concatenate([self._cov, other._cov]))

    # -- rendering --------------------------------------------------------------
    def render(self, shape, *, dtype=np.float64, settings=None, backend=None):
        """Render the pixel-integrated mixture.

        Parameters
        ----------
        shape : tuple of int
            (ny, nx) of the image.
        dtype : {numpy.float64, numpy.float32}, optional
            Precision of the arithmetic and of the result (either byte order;
            the result is in the native one).
        settings : AccuracySettings, optional
            Culling and pixel-integration settings; the process default if omitted.
        backend : str, optional
            Backend name; the active backend (:func:`astromix.backends.get_backend`)
            if omitted.

        Returns
        -------
        image : array, shape (ny, nx)
            Pixel (j, i) holds the integral of the mixture over
            ``[i - 1/2, i + 1/2] x [j - 1/2, j + 1/2]``.  A NumPy array, or a
            CuPy array with the ``"cupy"`` backend.

        Raises
        ------
        InputError
            On a bad shape or dtype, or ``settings`` that is not an
            :class:`AccuracySettings`.
        BackendError
            If the backend is unknown or unavailable.
        """
        shape = _check_shape(shape)
        dtype = _check_dtype(dtype)
        bk = _backends.get_backend(backend)
        settings = _check_settings(settings)
        image = bk.render_stamp(self._amp, self._mean, self._cov, shape, dtype, settings)
        if image is not None:
            return image
        table = bk.prepare(self._amp, self._mean, self._cov, settings)
        return bk.render(table, shape, dtype, settings)

    def chi2(self, data, weight, *, gradient=False, settings=None, backend=None):
        """Chi-square of the rendered mixture against an image, with its gradient.

        ``chi2 = sum_pixels weight * (model - data)**2``.

        Parameters
        ----------
        data : array, shape (ny, nx)
            The image.  float32 data (either byte order: FITS images are
            big-endian) is fitted in float32 arithmetic, anything else in
            float64.  May be a backend (CuPy) array.
        weight : array, shape (ny, nx)
            Inverse variance per pixel, >= 0; 0 masks a pixel (its data may then
            be NaN).  Taken in the data's precision: with float32 data, float64
            weights are narrowed to float32, and positive ones outside float32's
            normal range (1.2e-38 to 3.4e38) are refused (they would become 0,
            inf or lose bits); float32 weights are used as given (subnormal
            ones, below 1.2e-38, carry fewer bits).  float32 sums of ``weight *
            (model - data)**2`` beyond 3.4e38 give an infinite chi2 (a fitter
            rejects such a step): pass float64 data for such weights.
        gradient : bool, optional
            Also return the gradient with respect to the mixture's parameters.
        settings : AccuracySettings, optional
        backend : str, optional

        Returns
        -------
        chi2 : float
        (d_amp, d_mean, d_cov) : tuple of ndarray, only if ``gradient``
            Shapes (K,), (K, 2), (K, 2, 2): d chi2 / d amp, d chi2 / d mean
            (columns x, y) and the symmetric matrix gradient d chi2 / d cov
            (for a symmetric change ``dC``, ``d chi2 = sum(d_cov * dC)``).

        Raises
        ------
        InputError
            If ``data`` is not 2-d, ``data`` and ``weight`` differ in shape, a
            weight is negative or not finite, or outside float32's normal range
            with float32 data, data are not finite where the weight is
            positive, or ``settings`` is not an :class:`AccuracySettings`.
        BackendError
            If the backend is unknown or unavailable.
        """
        bk = _backends.get_backend(backend)
        data, weight = _as_images(bk, data, weight)
        settings = _check_settings(settings)
        result = bk.chi2_stamp(self._amp, self._mean, self._cov, data, weight, settings,
                               gradient)
        if result is not None:
            return result
        data = _check_pixels(bk, data, weight)
        table = bk.prepare(self._amp, self._mean, self._cov, settings)
        work = bk.scratch(data.shape, data.dtype, "chi2")
        model = bk.render(table, data.shape, data.dtype, settings, out=work)
        value, rimg = bk.residual(model, data, weight, out=model)
        if not gradient:
            return value
        acc = bk.accumulate(table, rimg, settings)
        return value, bk.assemble_gradient(table, bk.to_numpy(acc))


def _check_shape(shape):
    try:
        ny, nx = shape
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx), got {shape!r}") from None
    try:
        ny, nx = operator.index(ny), operator.index(nx)
    except TypeError:
        # whole numbers held as floats (64.0) are accepted; 10.7, inf and NaN are not
        try:
            fy, fx = float(ny), float(nx)
        except (TypeError, ValueError):
            raise InputError(f"shape must be (ny, nx), got {shape!r}") from None
        if not (fy.is_integer() and fx.is_integer()):
            raise InputError(f"shape must be two whole numbers (ny, nx), got {shape!r}") from None
        ny, nx = int(fy), int(fx)
    if ny <= 0 or nx <= 0:
        raise InputError(f"shape must be positive, got {(ny, nx)}")
    return ny, nx


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: the dtypes of _FLOAT_DTYPES by themselves and by their scalar types (a dict
#: lookup: ``np.dtype`` costs ~0.1 us a call)
_FAST_DTYPES = {**{d: d for d in _FLOAT_DTYPES}, **{d.type: d for d in _FLOAT_DTYPES}}


def _check_dtype(dtype):
    try:
        return _FAST_DTYPES[dtype]
    except (KeyError, TypeError):
        pass
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return _FAST_DTYPES[dtype.newbyteorder("=")]  # '>f4' (FITS): native float32
    raise InputError(f"dtype must be float32 or float64, got {dtype}")


def _check_settings(settings):
    if settings is None:
        return get_default_settings()
    if not isinstance(settings, AccuracySettings):
        raise InputError("settings must be an AccuracySettings instance")
    return settings


_FINFO = {np.float32: np.finfo(np.float32), np.float64: np.finfo(np.float64)}


def _as_images(bk, data, weight):
    """(data, weight) as backend arrays of one 2-d shape and dtype (float32 or float64)."""
    xp = bk.xp
    data = xp.asarray(data)
    weight = xp.asarray(weight)
    if data.ndim != 2:
        raise InputError(f"data must be a 2-d image, got shape {data.shape}")
    if weight.shape != data.shape:
        raise InputError(f"weight shape {weight.shape} differs from data shape {data.shape}")
    # float32 in either byte order ('>f4' from astropy.io.fits) is fitted in float32
    dtype = np.float32 if data.dtype.kind == "f" and data.dtype.itemsize == 4 else np.float64
    data = data.astype(dtype, copy=False)
    if weight.dtype.kind != "f" or weight.dtype.itemsize <= data.itemsize:
        return data, weight.astype(dtype, copy=False)
    # A narrowing cast (float64 weight, float32 data): finite weights past the
    # dtype's range became inf (and were refused as non-finite), positive ones
    # below its normal range 0 or a few bits (the pixels dropped out of chi2
    # silently).  NumPy flags both in the cast itself (~1 us on 64x64 pixels).
    fi = _FINFO[dtype]
    if xp is np:
        try:
            with np.errstate(over="raise", under="raise"):
                return data, weight.astype(dtype, copy=False)
        except FloatingPointError:
            pass
    else:
        # (negative ones too: one above -1.4e-45 would become -0, unrefused)
        if not bool(xp.any((weight < fi.tiny) & (weight != 0)
                           | ((weight > fi.max) & xp.isfinite(weight)))):
            return data, weight.astype(dtype, copy=False)
    if not bool(xp.isfinite(weight).all()):
        raise InputError("weight has non-finite values")
    if bool((weight < 0).any()):
        raise InputError("weight (inverse variance) has negative values")
    raise InputError(f"weight has values outside the {fi.dtype} range of the data (positive "
                     f"and below {fi.tiny:.3g}, or above {fi.max:.3g}), which {fi.dtype} "
                     "arithmetic would lose; pass float64 data")


def _check_pixels(bk, data, weight):
    """``data`` checked against ``weight`` (see GaussianMixture.chi2); masked NaN -> 0."""
    xp = bk.xp
    n_weight, n_negative, n_data, n_weighted = bk.bad_pixel_counts(data, weight)
    if n_weight:
        raise InputError("weight has non-finite values")
    if n_negative:
        raise InputError("weight (inverse variance) has negative values")
    if n_data:
        if n_weighted:
            raise InputError(f"data has {n_weighted} non-finite pixel(s) with positive weight; "
                             "give them weight 0 to mask them")
        data = xp.where(xp.isfinite(data), data, data.dtype.type(0))
    return data
