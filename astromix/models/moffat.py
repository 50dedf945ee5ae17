r"""MoffatStar: a flux-normalised, pixel-integrated Moffat profile (astropy model).

A star (or any point source) whose image is a Moffat (1969) profile: the PSF
model of imphot and of many ground-based seeing-limited images.  Unlike the
other astromix models it is not a Gaussian mixture: its power-law wings are
evaluated exactly, pixel by pixel, with a Gauss-Legendre quadrature over each
pixel.
"""

import functools
import math

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter

from ..errors import InputError
from ._base import angle, parameter_values, refuse_model_set, scalar

__all__ = ["MoffatStar", "moffat_alpha", "moffat_fwhm"]

#: Gauss-Legendre nodes per pixel axis used by default (25 evaluations per pixel).
DEFAULT_QUADRATURE = 5
#: Minor-axis FWHM [px] below which an elliptical star gets proportionally more nodes.
RESOLVED_FWHM = 1.5
#: Fraction of the flux allowed outside :attr:`MoffatStar.bounding_box`.
BBOX_FLUX_LOSS = 1e-3
#: Pixels evaluated per block (temporaries stay in the CPU cache: 4x faster than one block).
_BLOCK = 512


def moffat_alpha(fwhm, beta):
    r"""The Moffat scale length alpha (``a``) of a given FWHM and beta.

    ``alpha = fwhm / (2 sqrt(2**(1/beta) - 1))`` (Trujillo et al. 2001,
    MNRAS 328, 977, eq. 4), in the unit of ``fwhm``.

    Parameters
    ----------
    fwhm : float or array-like
        Full width at half maximum (> 0).
    beta : float or array-like
        Moffat power index (> 0).

    Returns
    -------
    numpy.float64 or ndarray
        The scale length, float64: a scalar for scalar inputs, else an array
        of the broadcast shape of ``fwhm`` and ``beta``.

    Examples
    --------
    >>> from astromix.models.moffat import moffat_alpha, moffat_fwhm
    >>> round(float(moffat_alpha(3.0, 2.5)), 6)
    2.653692
    >>> round(float(moffat_fwhm(moffat_alpha(3.0, 2.5), 2.5)), 12)
    3.0
    """
    beta = np.asarray(beta, dtype=float)
    return np.asarray(fwhm, dtype=float) / (2.0 * np.sqrt(np.expm1(np.log(2.0) / beta)))


def moffat_fwhm(alpha, beta):
    """The FWHM of a Moffat profile of scale length ``alpha`` and index ``beta``.

    The inverse of :func:`moffat_alpha`: ``fwhm = 2 alpha sqrt(2**(1/beta) - 1)``
    (Trujillo et al. 2001, MNRAS 328, 977, eq. 4), in the unit of ``alpha``.

    Parameters
    ----------
    alpha : float or array-like
        Moffat scale length (> 0), e.g. in pixels.
    beta : float or array-like
        Moffat power index (> 0); broadcasts with ``alpha``.

    Returns
    -------
    numpy.float64 or ndarray
        The full width at half maximum, float64: a scalar for scalar inputs,
        else an array of the broadcast shape of ``alpha`` and ``beta``.
    """
    beta = np.asarray(beta, dtype=float)
    return 2.0 * np.asarray(alpha, dtype=float) * np.sqrt(np.expm1(np.log(2.0) / beta))


def _node_count(order, fwhm, ellip):
    """Gauss-Legendre nodes per pixel axis for a star of this ``fwhm`` and ``ellip``.

    ``order`` for a circular star; an elliptical star whose minor axis
    (FWHM ``q fwhm``, ``q = 1 - ellip``) is narrower than ``min(fwhm,
    RESOLVED_FWHM)`` gets ``ceil(order min(fwhm, RESOLVED_FWHM) / (q fwhm))``
    nodes (at most ``20 order``, the value at the bound ``ellip = 0.95``), so
    that its minor axis is resolved as a circular star's is.  ``order = 1``
    (sampling at the pixel centres) is kept as it is.
    """
    q = 1.0 - ellip
    if order == 1 or q >= 1.0:              # ellip <= 0 (< 0: the axes swapped): fwhm is minor
        return order
    ratio = min(fwhm, RESOLVED_FWHM) / (q * fwhm)
    if ratio <= 1.0:
        return order
    return math.ceil(order * min(ratio, 20.0) - 1e-9)


@functools.lru_cache(maxsize=16)
def _nodes(order):
    """Flattened 2-D Gauss-Legendre nodes (x offsets, y offsets) in [-1/2, 1/2] and weights."""
    t, w = np.polynomial.legendre.leggauss(order)
    t, w = 0.5 * t, 0.5 * w
    nodes = (np.repeat(t, order), np.tile(t, order), np.repeat(w, order) * np.tile(w, order))
    for arr in nodes:
        arr.flags.writeable = False
    return nodes


def _check_shape(fwhm, beta, ellip, *, model=True):
    """Refuse parameter values for which the profile does not exist (InputError).

    A model needs ``0 <= ellip < 1``; evaluation (``model=False``) accepts any
    ``ellip < 1`` (``ellip < 0`` swaps the axes), so that central differences
    at ``ellip = 0`` work.
    """
    if not (math.isfinite(fwhm) and fwhm > 0):
        raise InputError(f"MoffatStar: fwhm must be a finite number > 0 [px], got {fwhm}")
    if not (math.isfinite(beta) and beta > 1):
        raise InputError(f"MoffatStar: beta must be a finite number > 1 (the flux of a Moffat "
                         f"profile with beta <= 1 is infinite), got {beta}")
    if not (math.isfinite(ellip) and (0 <= ellip or not model) and ellip < 1):
        raise InputError(f"MoffatStar: ellip must lie in [0, 1), got {ellip}")


def _moffat_pixels(x, y, p, order, derivatives=False):
    """Pixel-integrated Moffat values (and derivatives) at pixel centres ``x, y``.

    ``p`` = (flux, x_0, y_0, fwhm, beta, ellip, theta) as floats.  Returns the
    values with the broadcast shape of ``x`` and ``y``, or a list of the 7
    derivatives with respect to ``p`` when ``derivatives`` is true.
    """
    flux, x_0, y_0, fwhm, beta, ellip, theta = p
    _check_shape(fwhm, beta, ellip, model=False)
    if not all(math.isfinite(v) for v in (flux, x_0, y_0, theta)):
        raise InputError(f"MoffatStar: non-finite parameter value in {list(p)}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    dx = np.broadcast_to(x - x_0, shape).ravel()
    dy = np.broadcast_to(y - y_0, shape).ravel()
    order = _node_count(order, fwhm, ellip)
    tx, ty, w = _nodes(order)
    # pixels per block: _BLOCK at <= 25 nodes per pixel, the same number of nodes above
    block = max(1, (_BLOCK * DEFAULT_QUADRATURE ** 2) // max(order * order,
                                                             DEFAULT_QUADRATURE ** 2))
    q = 1.0 - ellip
    e = math.expm1(math.log(2.0) / beta)          # 2**(1/beta) - 1
    a2 = fwhm * fwhm / (4.0 * e)                  # alpha^2 [px^2]
    norm = (beta - 1.0) / (math.pi * a2 * q)      # peak of the unit-flux profile
    circular = ellip == 0.0 and not derivatives
    c, s = math.cos(theta), math.sin(theta)
    n_out = 7 if derivatives else 1
    out = np.empty((n_out, dx.size))
    if derivatives:
        # d ln(alpha^2) / d beta
        g = (e + 1.0) * math.log(2.0) / (beta * beta * e)
    for start in range(0, dx.size, block):
        sl = slice(start, start + block)
        X = dx[sl, None] + tx
        Y = dy[sl, None] + ty
        if circular:
            t = (X * X + Y * Y) * (1.0 / a2)      # rho^2 / alpha^2
        else:
            u = c * X + s * Y                     # along the major axis
            v = (c * Y - s * X) / q               # along the minor axis, stretched by 1/q
            t = (u * u + v * v) * (1.0 / a2)
        log_s = np.log1p(t)
        prof = norm * np.exp(-beta * log_s)       # unit-flux profile at the nodes
        if not derivatives:
            out[0, sl] = (prof @ w) * flux
            continue
        k = prof * (beta / (a2 * (1.0 + t)))      # -d prof / d rho^2
        value = flux * prof
        fk = 2.0 * flux * k
        out[0, sl] = prof @ w
        # d rho^2 / d x_0 = -2 (u c - v s / q),  d rho^2 / d y_0 = -2 (u s + v c / q)
        out[1, sl] = (fk * (u * c - v * (s / q))) @ w
        out[2, sl] = (fk * (u * s + v * (c / q))) @ w
        ratio = t / (1.0 + t)
        out[3, sl] = (value * ((2.0 / fwhm) * (beta * ratio - 1.0))) @ w
        out[4, sl] = (value * (1.0 / (beta - 1.0) - g - log_s + (beta * g) * ratio)) @ w
        # rho^2 = u^2 + v'^2 / q^2: d/d ellip = -d/dq, d rho^2 / dq = -2 v^2 / q (v = v'/q)
        out[5, sl] = (value * (1.0 / q) - fk * (v * v / q)) @ w
        # d u / d theta = q v, d (q v) / d theta = -u: d rho^2 / d theta = 2 u v (q - 1 / q)
        out[6, sl] = (fk * (u * v * (1.0 / q - q))) @ w
    if derivatives:
        return [d.reshape(shape) for d in out]
    return out[0].reshape(shape)


class MoffatStar(Fittable2DModel):
    r"""A star with a Moffat profile, flux-normalised and integrated over pixels.

    .. math::

        I(x, y) = \mathrm{flux} \, \frac{\beta - 1}{\pi \alpha^2 q}
        \left(1 + \frac{u^2 + v^2 / q^2}{\alpha^2}\right)^{-\beta},
        \qquad \alpha^2 = \frac{\mathrm{fwhm}^2}{4 (2^{1/\beta} - 1)},

    with ``q = 1 - ellip``, ``u = dx cos(theta) + dy sin(theta)`` along the
    major axis and ``v = -dx sin(theta) + dy cos(theta)``, ``(dx, dy) = (x -
    x_0, y - y_0)``.  ``fwhm`` is the full width at half maximum along the
    major axis (``q fwhm`` along the minor axis), and the integral of ``I``
    over the plane is ``flux`` for any ``beta > 1``.  The model's value at the
    pixel ``(x, y)`` is the integral of ``I`` over ``[x - 1/2, x + 1/2] x [y -
    1/2, y + 1/2]``, so that the sum over an image holding the star is its
    flux (less what falls outside the image).

    Parameters
    ----------
    flux : float or Quantity
        Total flux (the model's output has its unit).
    x_0, y_0 : float
        Centre [px] (pixel centres at integers, origin 0).
    fwhm : float
        Full width at half maximum along the major axis [px], > 0.
    beta : float
        Moffat power index, > 1 (bounds: 1.01 and above).  Large values tend
        to a Gaussian; imphot starts at 5, ground-based seeing is ~2.5-4.5
        (Trujillo et al. 2001 give 4.765 for Kolmogorov turbulence).
    ellip : float, optional
        Ellipticity ``1 - b/a`` in [0, 1) (bounds [0, 0.95]).  Default 0 and
        **fixed** by default, like ``theta``: the circular case is the default
        (and is evaluated by a faster path).  To fit an elliptical star, unfix
        both (``star.ellip.fixed = star.theta.fixed = False``) and start from
        ``ellip > 0`` (at ``ellip = 0`` the derivative with respect to
        ``theta`` vanishes).
    theta : float, optional
        Angle of the major axis from +x, counter-clockwise [rad] (the
        convention of :class:`astropy.modeling.models.Sersic2D` and
        :class:`~astromix.SersicMixture`).  Default 0, fixed by default.
    quadrature : int, optional
        Gauss-Legendre nodes per pixel axis for a circular star
        (``quadrature**2`` evaluations of ``I`` per pixel; default 5); an
        elliptical star whose minor-axis FWHM ``(1 - ellip) fwhm`` is below
        ``min(fwhm, 1.5)`` px gets proportionally more (see Notes).  1
        samples ``I`` at the pixel centres, whatever the shape.
    **kwargs
        Passed to :class:`astropy.modeling.Model` (``name``, ``fixed``,
        ``bounds``, ...).

    Attributes
    ----------
    alpha : float
        The Moffat scale length (``a`` above) [px].
    quadrature : int
        Gauss-Legendre nodes per pixel axis of a circular star (the base
        count; see Notes for elliptical stars).

    Raises
    ------
    InputError
        If ``fwhm <= 0``, ``beta <= 1``, ``ellip`` is outside [0, 1), a
        parameter is not finite, or ``quadrature`` is not an integer in [1,
        32].  :meth:`evaluate` and :meth:`fit_deriv` raise it too for such
        values (astropy does not check values set after construction), except
        that they accept ``ellip < 0`` (the axes swapped), so that central
        differences work at ``ellip = 0``.  Fitters stay within the bounds.

    Notes
    -----
    The profile is Moffat's (1969, A&A 3, 455) with the FWHM and scale
    relations of Trujillo et al. (2001, MNRAS 328, 977):
    ``alpha = fwhm / (2 sqrt(2^(1/beta) - 1))``; the flux inside the
    major-axis radius ``R`` is ``1 - (1 + R^2/alpha^2)^(1 - beta)``.

    *Pixel integration.*  Each pixel's integral is computed with a tensor
    Gauss-Legendre rule of ``N`` nodes per axis.  The integrand is analytic,
    its nearest singularities lying about the minor-axis scale ``q alpha``
    away from the real plane, so the error falls geometrically with ``N``,
    at a rate set by the minor-axis FWHM ``w = q fwhm``.  A circular star
    uses ``N = quadrature``; an elliptical one ``N = ceil(quadrature
    min(fwhm, 1.5) / w)`` when ``w < min(fwhm, 1.5)`` px (else
    ``quadrature``; at most ``20 quadrature``), so that its minor axis is
    resolved as a circular star of FWHM ``min(fwhm, 1.5)`` px is.  With the
    default (``quadrature = 5``) the pixels are then accurate to < 1e-5 of
    the peak pixel for ``fwhm >= 1.5`` px, any ``ellip`` in the bounds [0,
    0.95] (minor-axis FWHM down to 0.075 px) and any ``beta >= 1.2``
    (measured against ``scipy.integrate.dblquad`` and a 2x finer rule; <
    2e-4 at ``fwhm = 1`` px; < 2e-8 for a circular star of ``fwhm = 3``
    px), and whole images agree with GalSim's ``drawImage`` (exact pixel
    convolution, ``Moffat.shear`` for elliptical stars) to < 2e-6 of the
    peak.  Undersampled circular stars (``fwhm < 1.5`` px) want
    ``quadrature=6`` to 8.  The same rule integrates the analytic
    derivatives, so :meth:`fit_deriv` is the exact derivative of
    :meth:`evaluate`.  The rule is the same for every pixel, so the
    evaluation is smooth in ``flux``, ``x_0``, ``y_0``, ``beta`` and
    ``theta``; in ``fwhm`` and ``ellip`` it is smooth between the steps of
    ``N``, where it jumps by less than the quadrature error (< 1e-5 of the
    peak).

    *Cost.*  ``N**2`` (25 by default) power evaluations per pixel: ~0.6 ms
    for a 64 x 64 stamp on one core, ~2 ms with the derivatives; an
    elliptical star of narrow minor axis costs ``(N / quadrature)**2`` times
    more (~20 ms for ``fwhm = 3`` px, ``ellip = 0.9``: ``N = 25``; ~80 ms
    at ``ellip = 0.95``).  Pixels are evaluated in blocks of 512 (fewer when
    ``N > 5``, so that the temporaries stay in the CPU cache); use
    :attr:`bounding_box` (``with_bounding_box=True``) to evaluate only near
    the star in a large image.

    *Bounding box.*  :attr:`bounding_box` holds the ellipse of major-axis
    radius ``R = alpha sqrt(BBOX_FLUX_LOSS^(1/(1 - beta)) - 1)``, outside of
    which a fraction ``BBOX_FLUX_LOSS`` (1e-3) of the flux falls, plus half a
    pixel.  Moffat wings are heavy: R is 10 alpha at ``beta = 2.5`` and
    ``1000 alpha`` at ``beta = 1.5``.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix.models.moffat import MoffatStar
    >>> star = MoffatStar(flux=1000.0, x_0=31.3, y_0=30.8, fwhm=4.0, beta=3.5)
    >>> y, x = np.mgrid[:64, :64]
    >>> image = star(x, y)
    >>> round(float(image.sum()), 2)        # the flux, less 0.03 outside the image
    999.97
    >>> (y_lo, y_hi), (x_lo, x_hi) = star.bounding_box.bounding_box()
    >>> round(y_hi - 30.8, 2), round(star.enclosed_radius(0.999), 2)  # [px]
    (16.97, 16.47)
    >>> round(star.enclosed_radius(0.5), 3)  # half-light radius [px]
    2.416
    """

    flux = Parameter(default=1.0, description="total flux")
    x_0 = Parameter(default=0.0, description="x of the centre [px]")
    y_0 = Parameter(default=0.0, description="y of the centre [px]")
    fwhm = Parameter(default=3.0, bounds=(1e-3, None),
                     description="full width at half maximum along the major axis [px]")
    beta = Parameter(default=2.5, bounds=(1.01, None), description="Moffat power index")
    ellip = Parameter(default=0.0, bounds=(0.0, 0.95), fixed=True,
                      description="ellipticity 1 - b/a")
    theta = Parameter(default=0.0, fixed=True,
                      description="angle of the major axis from +x, counter-clockwise [rad]")

    def __init__(self, flux=flux.default, x_0=x_0.default, y_0=y_0.default,
                 fwhm=fwhm.default, beta=beta.default, ellip=ellip.default,
                 theta=theta.default, *, quadrature=DEFAULT_QUADRATURE, **kwargs):
        if (isinstance(quadrature, (bool, np.bool_))
                or not isinstance(quadrature, (int, np.integer)) or not 1 <= quadrature <= 32):
            raise InputError(f"quadrature must be an integer in [1, 32], got {quadrature!r}")
        self._quadrature = int(quadrature)
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, fwhm=fwhm, beta=beta, ellip=ellip,
                         theta=theta, **kwargs)
        refuse_model_set(self)
        values = parameter_values(self)
        bad = [name for name, v in zip(self.param_names, values) if not math.isfinite(v)]
        if bad:
            raise InputError(f"MoffatStar: non-finite value of {bad}")
        _check_shape(values[3], values[4], values[5])

    @property
    def quadrature(self):
        """Gauss-Legendre nodes per pixel axis (int)."""
        return self._quadrature

    @property
    def alpha(self):
        """The Moffat scale length alpha [px] (Trujillo et al. 2001, eq. 4)."""
        return float(moffat_alpha(scalar(self.fwhm.value), scalar(self.beta.value)))

    def enclosed_radius(self, fraction):
        """Major-axis radius [px] of the centred ellipse holding ``fraction`` of the flux.

        ``R = alpha sqrt((1 - fraction)^(1 / (1 - beta)) - 1)``, from the
        enclosed flux ``1 - (1 + R^2 / alpha^2)^(1 - beta)`` of the
        (unintegrated) profile; the minor-axis radius is ``(1 - ellip) R``.

        Parameters
        ----------
        fraction : float
            In [0, 1).

        Returns
        -------
        float
            The radius [px]; ``inf`` when it exceeds the float range (``beta``
            very close to 1, whose wings hold the flux out to astronomical
            radii).

        Raises
        ------
        InputError
            If ``fraction`` is outside [0, 1), or ``fwhm`` or ``beta`` (as set
            after construction) is invalid (``beta <= 1``, ...).
        """
        fraction = float(fraction)
        if not 0 <= fraction < 1:
            raise InputError(f"fraction must lie in [0, 1), got {fraction}")
        beta = scalar(self.beta.value)
        _check_shape(scalar(self.fwhm.value), beta, 0.0)
        exponent = math.log1p(-fraction) / (1.0 - beta)
        if exponent > 700.0:    # beta within ~1e-2 of 1 and fraction near 1: beyond a float
            return math.inf
        return self.alpha * math.sqrt(math.expm1(exponent))

    # -- astropy.modeling interface -------------------------------------------------------------
    def evaluate(self, x, y, flux, x_0, y_0, fwhm, beta, ellip, theta):
        """Flux in the pixels centred at ``x, y`` [px] (any shapes that broadcast).

        Returns an array of the broadcast shape, in the unit of ``flux``.

        Parameters
        ----------
        x, y : array-like
            Pixel centres [px] (origin 0), any shapes that broadcast together.
        flux : float, array or Quantity
            Total flux; a Quantity's unit is the unit of the result.
        x_0, y_0 : float or array
            Centre [px].
        fwhm : float or array
            Full width at half maximum along the major axis [px], > 0.
        beta : float or array
            Moffat power index, > 1.
        ellip : float or array
            Ellipticity ``1 - b/a``, < 1 (negative values swap the axes).
        theta : float or array
            Angle of the major axis from +x, counter-clockwise [rad].

        Returns
        -------
        ndarray or Quantity
            The pixel integrals, float64, of the broadcast shape of ``x, y``,
            in flux units (a Quantity when ``flux`` is one).

        Raises
        ------
        InputError
            If ``fwhm <= 0``, ``beta <= 1``, ``ellip >= 1`` or a parameter is
            not finite.
        """
        unit = getattr(flux, "unit", None)
        p = [scalar(v) for v in (flux, x_0, y_0, fwhm, beta, ellip)] + [angle(theta)]
        value = _moffat_pixels(x, y, p, self._quadrature)
        return value * unit if unit is not None else value

    def fit_deriv(self, x, y, flux, x_0, y_0, fwhm, beta, ellip, theta):
        """Analytic derivatives of :meth:`evaluate` with respect to the 7 parameters.

        Returns a list of 7 arrays of the broadcast shape of ``x, y``, in the
        order of :attr:`param_names`: the pixel integrals (same quadrature)
        of the derivatives of the profile.

        Parameters
        ----------
        x, y : array-like
            Pixel centres [px], any shapes that broadcast together.
        flux, x_0, y_0, fwhm, beta, ellip, theta : float or array
            The parameters, as for :meth:`evaluate` (units are dropped).

        Returns
        -------
        list of ndarray
            7 float64 arrays of the broadcast shape of ``x, y``: d value / d
            ``flux``, ``x_0``, ``y_0``, ``fwhm``, ``beta``, ``ellip``,
            ``theta``, in that order, including the parameters that are fixed
            (``ellip`` and ``theta`` by default; astropy's fitters drop their
            rows).  d / d flux is the unit-flux pixel integral; the others are
            in flux units per px (x_0, y_0, fwhm), per unit (beta, ellip) and
            per radian (theta).

        Raises
        ------
        InputError
            As :meth:`evaluate`.
        """
        p = [scalar(v) for v in (flux, x_0, y_0, fwhm, beta, ellip)] + [angle(theta)]
        return _moffat_pixels(x, y, p, self._quadrature, derivatives=True)

    @property
    def bounding_box(self):
        """((y_lo, y_hi), (x_lo, x_hi)) [px] outside which < 1e-3 of the flux falls.

        The bounding rectangle of the ellipse of major-axis radius
        ``enclosed_radius(1 - BBOX_FLUX_LOSS)``, widened by half a pixel.
        """
        r = self.enclosed_radius(1.0 - BBOX_FLUX_LOSS)
        theta = parameter_values(self)[6]
        q = 1.0 - scalar(self.ellip.value)
        c, s = math.cos(theta), math.sin(theta)
        hx = r * math.hypot(c, q * s) + 0.5
        hy = r * math.hypot(s, q * c) + 0.5
        x0, y0 = scalar(self.x_0.value), scalar(self.y_0.value)
        return ((y0 - hy, y0 + hy), (x0 - hx, x0 + hx))

    @property
    def input_units(self):
        """Pixel coordinates carry no unit (None)."""
        return None

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        from astropy import units as u

        xu = inputs_unit[self.inputs[0]]
        return {"flux": outputs_unit[self.outputs[0]], "x_0": xu,
                "y_0": inputs_unit[self.inputs[1]], "fwhm": xu, "theta": u.rad}
