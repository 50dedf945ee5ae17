"""GaussianMixturePSF: a PSF (a pixel-integrated PRF) as an astropy Fittable2DModel."""

import math

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter

from ..errors import InputError
from ..mixtures import GaussianMixture
from ..settings import AccuracySettings, get_default_settings
from ._base import (
    chained_jacobian,
    evaluate_mixture,
    psf_total_flux,
    refuse_model_set,
    scalar,
)

__all__ = ["GaussianMixturePSF"]

#: Per-component parameter names (suffixed ``_k``) in their order.
COMPONENT_PARAMETERS = ("amp", "xoff", "yoff", "sigma_x", "sigma_y", "rho")


class GaussianMixturePSF(Fittable2DModel):
    r"""A PSF made of K Gaussians, evaluated as a pixel-integrated PRF.

    .. math::

        f(x, y) = \mathrm{flux} \sum_k \mathrm{amp}_k \, G_k(x - x_0 - \mathrm{xoff}_k,
        y - y_0 - \mathrm{yoff}_k)

    where :math:`G_k` is a unit-flux Gaussian with covariance
    ``[[sigma_x_k**2, rho_k sigma_x_k sigma_y_k], [rho_k sigma_x_k sigma_y_k,
    sigma_y_k**2]]`` integrated over the pixel ``[x - 1/2, x + 1/2] x [y - 1/2,
    y + 1/2]`` (see :class:`~astromix.AccuracySettings`).  This is the
    parameterisation of forcepho's ``make_psf.py`` (Johnson et al.): it keeps
    every covariance positive definite within the default bounds.

    Parameters
    ----------
    mixture : GaussianMixture
        The PSF shape in science pixels, centres relative to the PSF centre.
        Its amplitudes are normalised to sum to 1 (a mixture whose total
        amplitude is zero or negative is refused).
    flux : float or Quantity, optional
        Total flux (photutils convention).  Free by default.
    x_0, y_0 : float, optional
        Position of the PSF centre [px].  Free by default.
    fixed_shape : bool, optional
        Fix the component parameters (default), as photutils' PSF models do;
        unfix individual ones through ``model.<name>.fixed``.
    settings : AccuracySettings, optional
        Culling and pixel integration used by ``evaluate``.
    **kwargs
        Passed to :class:`astropy.modeling.Model` (``name``, ``meta``, ...).

    Attributes
    ----------
    flux, x_0, y_0 : Parameter
    amp_k, xoff_k, yoff_k, sigma_x_k, sigma_y_k, rho_k : Parameter
        For k = 0 .. K-1: relative amplitude, centre offset [px], standard
        deviations along x and y [px] and correlation coefficient.  Bounds:
        ``sigma > 1e-3`` px, ``abs(rho) < 0.999``.

    Raises
    ------
    InputError
        If ``mixture`` is not a GaussianMixture or its total amplitude is not
        positive.

    Notes
    -----
    Evaluation is NumPy (astropy.modeling is NumPy-only); the batch kernels of
    the backends are used by astromix's own fitters and renderers through
    :attr:`mixture`.  ``flux * sum(amp_k)`` is the total flux, so with free
    amplitudes ``flux`` and the ``amp_k`` are degenerate: fix one of them.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix import GaussianMixture, GaussianMixturePSF
    >>> psf = GaussianMixturePSF(GaussianMixture([0.7, 0.3], [[0, 0], [0, 0]],
    ...                                          [np.eye(2), np.eye(2) * 9]),
    ...                          flux=100.0, x_0=22.0, y_0=20.0)
    >>> psf.param_names[:6]
    ('flux', 'x_0', 'y_0', 'amp_0', 'xoff_0', 'yoff_0')
    >>> y, x = np.mgrid[:41, :45]
    >>> round(float(psf(x, y).sum()), 3)
    100.0
    """

    _param_names = ()

    def __init__(self, mixture, *, flux=1.0, x_0=0.0, y_0=0.0, fixed_shape=True,
                 settings=None, **kwargs):
        if not isinstance(mixture, GaussianMixture):
            raise InputError("GaussianMixturePSF needs a GaussianMixture, "
                             f"got {type(mixture).__name__}")
        total = psf_total_flux(mixture)
        if settings is not None and not isinstance(settings, AccuracySettings):
            raise InputError("settings must be an AccuracySettings instance")
        self._settings = settings
        cov = mixture.cov
        sx = np.sqrt(cov[:, 0, 0])
        sy = np.sqrt(cov[:, 1, 1])
        values = {"flux": flux, "x_0": x_0, "y_0": y_0}
        names = ["flux", "x_0", "y_0"]
        self._n_components = len(mixture)
        for k in range(len(mixture)):
            comp = {"amp": mixture.amp[k] / total, "xoff": mixture.mean[k, 0],
                    "yoff": mixture.mean[k, 1], "sigma_x": sx[k], "sigma_y": sy[k],
                    "rho": cov[k, 0, 1] / (sx[k] * sy[k])}
            for base in COMPONENT_PARAMETERS:
                names.append(f"{base}_{k}")
                values[names[-1]] = comp[base]
        self._param_names = tuple(names)
        for name in names:
            bounds = (None, None)
            if name.startswith("sigma_"):
                bounds = (1e-3, None)
            elif name.startswith("rho_"):
                bounds = (-0.999, 0.999)
            fixed = fixed_shape and name not in ("flux", "x_0", "y_0")
            param = Parameter(name, default=0.0, bounds=bounds, fixed=fixed)
            param.model = self
            self.__dict__[name] = param
        kwargs = {**values, **kwargs}
        super().__init__(**kwargs)
        refuse_model_set(self)

    @property
    def param_names(self):
        """Names of the parameters: flux, x_0, y_0, then six per component."""
        return self._param_names

    @property
    def n_components(self):
        """Number of Gaussian components K."""
        return self._n_components

    @property
    def settings(self):
        """The AccuracySettings used by :meth:`evaluate`."""
        return self._settings if self._settings is not None else get_default_settings()

    # -- mixtures ------------------------------------------------------------------
    @staticmethod
    def _arrays(comp):
        c = np.asarray(comp, dtype=np.float64).reshape(-1, len(COMPONENT_PARAMETERS))
        amp, xo, yo, sx, sy, rho = c.T
        cov = np.empty((c.shape[0], 2, 2))
        cov[:, 0, 0] = sx * sx
        cov[:, 1, 1] = sy * sy
        cov[:, 0, 1] = cov[:, 1, 0] = rho * sx * sy
        return amp, np.column_stack([xo, yo]), cov, (sx, sy, rho)

    @property
    def mixture(self):
        """The PSF shape: a GaussianMixture centred at (0, 0), science px, amplitudes amp_k.

        Unit-normalised as constructed; amplitudes changed afterwards (e.g.
        fitted as free parameters with ``flux`` fixed) are taken as they are,
        ``flux * sum(amp_k)`` being the total flux.  Convolve a source's
        mixture with it; :meth:`placed_mixture` gives the PSF with its flux at
        (x_0, y_0).
        """
        amp, mean, cov, _ = self._arrays(self.parameters[3:])
        return GaussianMixture(amp, mean, cov)

    def placed_mixture(self):
        """The GaussianMixture of this model as evaluated: flux at (x_0, y_0).

        Returns
        -------
        GaussianMixture
            K components: amplitudes ``flux * amp_k`` (flux units), centres
            ``(x_0 + xoff_k, y_0 + yoff_k)`` [px], covariances [px^2] from
            ``sigma_x_k, sigma_y_k, rho_k``.

        Raises
        ------
        InputError
            If the component parameters (as set after construction) give a
            non-finite value or a covariance that is not positive definite
            (checked by the GaussianMixture constructor through
            :attr:`mixture`).
        """
        flux, x0, y0 = (float(np.squeeze(v)) for v in self.parameters[:3])
        return self.mixture.scale_flux(flux).shift(x0, y0)

    # -- astropy.modeling interface -------------------------------------------------
    def evaluate(self, x, y, flux, x_0, y_0, *comp):
        """Pixel-integrated PSF at pixel coordinates ``x, y`` (any shape) [flux units].

        On a regular grid of whole pixels (``x[j, i] = x[0, 0] + i``,
        ``y[j, i] = y[0, 0] + j``, as from ``numpy.mgrid``) the image is
        rendered by the active backend's kernel; elsewhere the same values
        are computed point by point with NumPy.

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px] (pixel centres at integers, origin 0), any
            shapes that broadcast together.
        flux : float, array or Quantity
            Total flux; a Quantity's unit is the unit of the result.
        x_0, y_0 : float or array
            Position of the PSF centre [px].
        *comp : float or array
            The 6K component parameters in :attr:`param_names` order:
            ``amp_k, xoff_k, yoff_k, sigma_x_k, sigma_y_k, rho_k`` for k = 0 ..
            K-1 (relative amplitude, offsets [px], standard deviations [px],
            correlation coefficient).

        Returns
        -------
        ndarray or Quantity
            Pixel-integrated PSF, float64, the broadcast shape of ``x, y``, in
            flux units (a Quantity when ``flux`` is one).

        Notes
        -----
        Each parameter value is reduced to one float (its first element), as
        for a single model.

        Raises
        ------
        InputError
            If a value is not finite, a ``sigma_x_k`` or ``sigma_y_k`` is zero
            or a ``|rho_k|`` is not < 1 (values set after construction).
        """
        unit = getattr(flux, "unit", None)
        p = [scalar(flux), scalar(x_0), scalar(y_0)] + [scalar(c) for c in comp]
        value = evaluate_mixture(self._mixture_from(p), x, y, self.settings)
        return value * unit if unit is not None else value

    def fit_deriv(self, x, y, flux, x_0, y_0, *comp):
        """Analytic derivatives of :meth:`evaluate` with respect to every parameter.

        Returns a list of arrays shaped like ``x``, in the order of
        :attr:`param_names`.  On a whole-pixel grid the backend's Jacobian
        kernel computes them all in one pass over the components
        (:func:`astromix.models._base.chained_jacobian`).

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px], any shapes that broadcast together.
        flux, x_0, y_0 : float or array
            Total flux and PSF centre [px] (units are dropped).
        *comp : float or array
            The 6K component parameters, as for :meth:`evaluate`.

        Returns
        -------
        list of ndarray
            ``3 + 6K`` float64 arrays, one per parameter in :attr:`param_names`
            order (fixed parameters included: astropy's fitters drop their
            rows), each of the broadcast shape of ``x, y``: d value / d
            parameter, in flux units per parameter unit (d / d flux is the
            unit-flux PSF).
        """
        p = [scalar(flux), scalar(x_0), scalar(y_0)] + [scalar(c) for c in comp]
        return chained_jacobian(*self._mixture_and_derivatives(p), x, y, self.settings)

    def _checked_arrays(self, p):
        # _arrays of the component values, after checking all of p: finite, sigmas > 0,
        # |rho| < 1 (values set after construction, e.g. by an unbounded optimiser,
        # would otherwise give NaN pixels or drop a component silently)
        comp = np.asarray(p[3:], dtype=np.float64)
        amp, mean, cov, (sx, sy, rho) = self._arrays(comp)
        # one reduction: NaN anywhere makes the sum NaN; det <= 0 iff sigma = 0 or |rho| >= 1
        if not (math.isfinite(comp.sum() + p[0] + p[1] + p[2])
                and (sx * sx * sy * sy * (1.0 - rho * rho)).min() > 0.0):
            bad = [name for name, v in zip(self.param_names, np.asarray(p, dtype=np.float64))
                   if not np.isfinite(v)
                   or (name.startswith("sigma_") and v == 0)
                   or (name.startswith("rho_") and not abs(v) < 1)]
            raise InputError(f"GaussianMixturePSF: invalid parameter values {bad} (they must "
                             "be finite, sigma_x/sigma_y non-zero and |rho| < 1)")
        return amp, mean, cov, (sx, sy, rho)

    def _mixture_from(self, p):
        """The mixture as evaluated for the parameter values ``p`` (param_names order)."""
        amp, mean, cov, _ = self._checked_arrays(p)
        return GaussianMixture._unchecked(amp * p[0], mean + [p[1], p[2]], cov)

    def _mixture_and_derivatives(self, p):
        """The mixture at ``p`` and d (amp, mean x, mean y, C_xx, C_xy, C_yy) / d parameter.

        The derivatives have shape (K, 3 + 6K, 6) (see
        :func:`astromix.models._base.chain_coefficients`).
        """
        p = np.asarray(p, dtype=np.float64)
        flux = p[0]
        amp, mean, cov, (sx, sy, rho) = self._checked_arrays(p)
        k = len(amp)
        idx = np.arange(k)
        m = np.zeros((k, 3 + 6 * k, 6))
        m[:, 0, 0] = amp
        m[:, 1, 1] = 1.0
        m[:, 2, 2] = 1.0
        base = 3 + 6 * idx
        m[idx, base, 0] = flux                     # amp_k
        m[idx, base + 1, 1] = 1.0                  # xoff_k
        m[idx, base + 2, 2] = 1.0                  # yoff_k
        m[idx, base + 3, 3] = 2.0 * sx             # sigma_x_k: C_xx, C_xy
        m[idx, base + 3, 4] = rho * sy
        m[idx, base + 4, 5] = 2.0 * sy             # sigma_y_k: C_yy, C_xy
        m[idx, base + 4, 4] = rho * sx
        m[idx, base + 5, 4] = sx * sy              # rho_k: C_xy
        return GaussianMixture._unchecked(amp * flux, mean + p[1:3], cov), m

    @property
    def bounding_box(self):
        """((y_lo, y_hi), (x_lo, x_hi)) [px] holding every component's culling ellipse.

        Raises InputError on invalid parameter values, as :meth:`evaluate`.
        """
        amp, mean, cov, _ = self._checked_arrays(self.parameters)
        n = self.settings.n_sigma
        hx = np.max(np.abs(mean[:, 0]) + n * np.sqrt(cov[:, 0, 0] + 1 / 12))
        hy = np.max(np.abs(mean[:, 1]) + n * np.sqrt(cov[:, 1, 1] + 1 / 12))
        x0, y0 = float(np.ravel(self.x_0.value)[0]), float(np.ravel(self.y_0.value)[0])
        return ((y0 - hy, y0 + hy), (x0 - hx, x0 + hx))

    @property
    def input_units(self):
        """Pixel coordinates carry no unit (None), or are Quantities in pixels."""
        return None

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        units = {"flux": outputs_unit[self.outputs[0]], "x_0": inputs_unit[self.inputs[0]],
                 "y_0": inputs_unit[self.inputs[1]]}
        for k in range(self.n_components):
            units[f"xoff_{k}"] = inputs_unit[self.inputs[0]]
            units[f"yoff_{k}"] = inputs_unit[self.inputs[1]]
            units[f"sigma_x_{k}"] = inputs_unit[self.inputs[0]]
            units[f"sigma_y_{k}"] = inputs_unit[self.inputs[1]]
        return units

