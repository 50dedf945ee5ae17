"""SersicMixture and PointSource: galaxies and stars as Gaussian mixtures (astropy models)."""

import math

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter

from ..errors import InputError
from ..mixtures import GaussianMixture
from ..settings import AccuracySettings, get_default_settings
from ._base import (
    angle,
    chained_jacobian,
    evaluate_mixture,
    parameter_values,
    psf_total_flux,
    refuse_model_set,
    scalar,
)
from ._sersic_build import pixel_components, table_coefficients

__all__ = ["SersicMixture", "PointSource"]


def _psf_mixture(psf):
    """The unit-flux PSF GaussianMixture of ``psf`` (None, GaussianMixture or GaussianMixturePSF).

    The amplitudes are divided by their sum, as :class:`~astromix.GaussianMixturePSF`
    does with its mixture, so that a source's ``flux`` is its total flux whatever
    the PSF's normalisation (e.g. a mixture read from a file or fitted to an
    image that does not sum to 1).

    Raises
    ------
    InputError
        If ``psf`` is of another type, or its amplitudes have a sum that is not
        finite and positive.
    """
    if psf is None:
        return None
    mix = getattr(psf, "mixture", psf)
    if not isinstance(mix, GaussianMixture):
        raise InputError("psf must be a GaussianMixturePSF or a GaussianMixture, "
                         f"got {type(psf).__name__}")
    total = psf_total_flux(mix)
    return mix if total == 1.0 else mix.scale_flux(1.0 / total)


_PACKAGED_TABLE = []


def _packaged_table():
    # the packaged SersicMixtureTable, imported and read at the first use (it
    # needs scipy), then kept here: a plain lookup on every model evaluation
    if not _PACKAGED_TABLE:
        from .sersic_table import SersicMixtureTable
        _PACKAGED_TABLE.append(SersicMixtureTable.load())
    return _PACKAGED_TABLE[0]


class _MixtureSourceBase(Fittable2DModel):
    """Common machinery: PSF, accuracy settings, units and bounding box."""

    def _init_common(self, psf, settings):
        self._psf = _psf_mixture(psf)
        if settings is not None and not isinstance(settings, AccuracySettings):
            raise InputError("settings must be an AccuracySettings instance")
        self._settings = settings

    def __getstate__(self):
        """The instance's attributes for copies and pickles, without the kept build.

        The last mixture built (see ``SersicMixture._built``) is a cache that
        holds the Sersic table: ``model.copy()`` (as fitters make) and pickles
        leave it out (copying it took ~0.2 ms, twice the rest of the model).
        """
        state = self.__dict__.copy()
        state.pop("_last_build", None)
        return state

    @property
    def psf(self):
        """The PSF GaussianMixture convolved with the source, unit flux (None: no PSF)."""
        return self._psf

    @property
    def settings(self):
        """The AccuracySettings used for evaluation."""
        return self._settings if self._settings is not None else get_default_settings()

    @property
    def input_units(self):
        """Pixel coordinates carry no unit (None)."""
        return None

    def __call__(self, *args, **kwargs):
        """Evaluate at pixel coordinates, as :meth:`astropy.modeling.Model.__call__` does.

        Two float64 NumPy arrays of one shape and no keyword arguments, for a
        single model whose parameters carry no units, go straight to
        :meth:`evaluate`: the same values, without astropy's input and parameter
        handling (about 22 us a call, longer than rendering a 64 x 64 stamp).
        Anything else (units, model sets, ``with_bounding_box``, scalars,
        broadcasting) takes astropy's path.
        """
        if not kwargs and len(args) == 2:
            x, y = args
            if (type(x) is np.ndarray and type(y) is np.ndarray and x.shape == y.shape
                    and x.ndim >= 1 and x.dtype == np.float64 and y.dtype == np.float64
                    and len(self) == 1):
                params = [getattr(self, name) for name in self.param_names]
                if all(par.unit is None for par in params):
                    return self.evaluate(x, y, *(par.value for par in params))
        return super().__call__(*args, **kwargs)

    def _bounding_box_from(self, mix):
        n = self.settings.n_sigma
        hx = np.max(np.abs(mix.mean[:, 0] - scalar(self.x_0.value))
                    + n * np.sqrt(mix.cov[:, 0, 0] + 1 / 12))
        hy = np.max(np.abs(mix.mean[:, 1] - scalar(self.y_0.value))
                    + n * np.sqrt(mix.cov[:, 1, 1] + 1 / 12))
        x0, y0 = scalar(self.x_0.value), scalar(self.y_0.value)
        return ((y0 - hy, y0 + hy), (x0 - hx, x0 + hx))


class SersicMixture(_MixtureSourceBase):
    r"""A Sersic galaxy as a Gaussian mixture, pixel-integrated and optionally PSF-convolved.

    The parameters mean what they mean in :class:`astropy.modeling.models.Sersic2D`
    (``r_eff`` the half-light radius along the major axis, ``ellip = 1 - b/a``,
    ``theta`` the major axis's angle from +x, counter-clockwise, in radians),
    except that ``flux`` is the total flux.  The profile is the circular
    Sersic mixture of :class:`astromix.models.sersic_table.SersicMixtureTable`
    (amplitudes a_k(n) summing to 1, variances v_k(n) r_eff^2, cubic splines in
    n), stretched to the ellipse: component k has covariance
    ``v_k r_eff^2 R(theta) diag(1, (1 - ellip)^2) R(theta)^T``.  With ``psf``,
    every component is convolved with every PSF component analytically.

    Parameters
    ----------
    flux : float or Quantity
        Total flux.
    x_0, y_0 : float
        Centre [px].
    r_eff : float
        Half-light radius along the major axis [px], > 0.
    n : float
        Sersic index, within the table's range (0.3 to 8).  Below n = 0.5
        the mixture departs from the exact profile in the core (near
        ``r_eff``): the largest error of the PSF-convolved image, relative
        to its peak, approaches the radial profile's as r_eff grows against
        the PSF: at most 2.7e-2 for 0.3 <= n < 0.35 (1.9e-2 at r_eff = 6
        px, 2.3e-2 at 15 px with a 1-2 px PSF), 1.2e-2 up to 0.4, 4.4e-3 up
        to 0.45 and 1.3e-3 up to 0.5, and of order 1e-4 or less from n =
        0.5 up.  It also puts flux in a far wing the profile lacks: at n =
        0.3 1.8% of the flux lies beyond 3 r_eff and the half-light radius
        is 1.010 r_eff; at n = 0.35, 1.0% and 1.006 r_eff (docs/sersic.rst,
        "Accuracy below n = 0.5").
    ellip : float
        Ellipticity 1 - b/a, in [0, 1).
    theta : float
        Position angle of the major axis [rad], from +x counter-clockwise.
    psf : GaussianMixturePSF or GaussianMixture, optional
        PSF (centred at 0) to convolve with; its amplitudes are normalised
        to sum to 1, as :class:`~astromix.GaussianMixturePSF` does, so that
        ``flux`` stays the total flux.
    settings : AccuracySettings, optional
    **kwargs
        Passed to :class:`astropy.modeling.Model`.

    Raises
    ------
    InputError
        On a PSF of the wrong type or whose amplitudes do not have a positive
        sum, or an ``n`` outside the table when evaluated.

    Notes
    -----
    Hogg & Lang (2013, PASP 125, 719) mixtures, with amplitudes and variances
    both smooth in n so that ``fit_deriv`` gives d/dn (and d/dr_eff, d/dellip,
    d/dtheta) analytically.  Evaluation at pixel coordinates gives the
    pixel-integrated surface brightness; on whole-pixel grids it is rendered
    by the backend kernel.

    The pixel integration is accurate for components at least ~0.65 px wide
    (:class:`~astromix.AccuracySettings`).  Convolved with a PSF of that width
    or more, as when modelling data, every component is.  Without ``psf`` the
    innermost components of a Sersic profile are far narrower than a pixel:
    the image is then approximate near the centre (for n = 4 and r_eff = 3 px,
    8% of the peak and a sum 1% above the flux, depending on the sub-pixel
    position of the centre), as a Sersic profile sampled at pixel centres is.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix import SersicMixture
    >>> gal = SersicMixture(flux=100.0, x_0=32.0, y_0=30.0, r_eff=4.0, n=1.5,
    ...                     ellip=0.3, theta=0.5)
    >>> y, x = np.mgrid[:64, :64]
    >>> round(float(gal(x, y).sum()), 1)
    100.0
    """

    flux = Parameter(default=1.0, description="total flux")
    x_0 = Parameter(default=0.0, description="x of the centre [px]")
    y_0 = Parameter(default=0.0, description="y of the centre [px]")
    r_eff = Parameter(default=1.0, bounds=(1e-3, None),
                      description="half-light radius along the major axis [px]")
    n = Parameter(default=1.0, bounds=(0.3, 8.0), description="Sersic index")
    ellip = Parameter(default=0.0, bounds=(0.0, 0.95), description="ellipticity 1 - b/a")
    theta = Parameter(default=0.0, description="position angle of the major axis [rad]")

    def __init__(self, flux=flux.default, x_0=x_0.default, y_0=y_0.default,
                 r_eff=r_eff.default, n=n.default, ellip=ellip.default, theta=theta.default,
                 *, psf=None, settings=None, **kwargs):
        self._init_common(psf, settings)
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, r_eff=r_eff, n=n, ellip=ellip,
                         theta=theta, **kwargs)
        refuse_model_set(self)

    @staticmethod
    def _table():
        return _packaged_table()

    def _table_interval(self, n, table=None):
        """The table's cubic coefficients (4, 2K) around ``n`` and the offset in the interval."""
        if table is None:
            table = self._table()
        interval = getattr(table, "interval", None)
        if interval is not None:
            return interval(n)       # SersicMixtureTable
        return table_coefficients(*table(n), *table.derivatives(n))

    def _components(self, p, derivatives=False, table=None, settings=None):
        """(amp, mean, cov[, d/d parameters]) of the (convolved, merged) mixture at ``p``.

        See :mod:`astromix.models._sersic_build`: components that the PSF
        blurs into one are merged while the change stays below the settings'
        ``merge_tolerance`` of the peak.  ``table`` and ``settings`` default
        to the model's.
        """
        flux, x_0, y_0, r_eff, n, ellip, theta = map(float, p)
        if not (r_eff > 0 and 0 <= ellip < 1 and math.isfinite(flux) and math.isfinite(theta)
                and math.isfinite(x_0) and math.isfinite(y_0)):
            self._refuse(flux, x_0, y_0, r_eff, ellip, theta)
        coeffs, t_n = self._table_interval(n, table)
        if settings is None:
            settings = self.settings
        box = settings.box_variance
        psf = None if self._psf is None else (self._psf.amp, self._psf.mean, self._psf.cov)
        return pixel_components(coeffs, t_n, flux, x_0, y_0, r_eff, ellip, theta, psf,
                                settings.merge_tolerance, box, derivatives)

    @staticmethod
    def _refuse(flux, x_0, y_0, r_eff, ellip, theta):
        """Raise the InputError that names the first invalid parameter."""
        for name, value in (("flux", flux), ("x_0", x_0), ("y_0", y_0), ("theta", theta)):
            if not np.isfinite(value):
                raise InputError(f"{name} must be finite, got {value!r}")
        if not r_eff > 0:
            raise InputError(f"r_eff must be > 0, got {r_eff!r}")
        raise InputError(f"ellip must lie in [0, 1), got {ellip!r}")

    def mixture(self):
        """The GaussianMixture of the model as evaluated (PSF-convolved when a PSF is set).

        Returns
        -------
        GaussianMixture
            The Sersic mixture at the current parameter values (amplitudes in
            flux units summing to ``flux``, centres [px], covariances [px^2]),
            convolved with the PSF when there is one, components that the
            PSF blurs into one merged within the settings'
            ``merge_tolerance``.

        Raises
        ------
        InputError
            If a parameter is not finite, ``r_eff <= 0``, ``ellip`` is outside
            [0, 1), or ``n`` is outside the Sersic table's range.
        astromix.AstromixError
            If the packaged Sersic mixture table is missing or unreadable.
        """
        return self._mixture_from(parameter_values(self))

    def evaluate(self, x, y, flux, x_0, y_0, r_eff, n, ellip, theta):
        """Pixel-integrated surface brightness at pixel coordinates ``x, y`` [flux / px].

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px] (pixel centres at integers, origin 0), any
            shapes that broadcast together.
        flux : float, array or Quantity
            Total flux; a Quantity's unit is the unit of the result.
        x_0, y_0 : float or array
            Centre [px].
        r_eff : float or array
            Half-light radius along the major axis [px], > 0.
        n : float or array
            Sersic index, within the table's range (0.3 to 8).
        ellip : float or array
            Ellipticity ``1 - b/a``, in [0, 1).
        theta : float or array
            Position angle of the major axis [rad], from +x counter-clockwise.

        Returns
        -------
        ndarray or Quantity
            The flux in each pixel, float64, of the broadcast shape of ``x, y``
            (a Quantity when ``flux`` is one), PSF-convolved when a PSF is set.

        Raises
        ------
        InputError
            If a parameter is not finite, ``r_eff <= 0``, ``ellip`` is outside
            [0, 1), or ``n`` is outside the Sersic table's range.
        astromix.AstromixError
            If the packaged Sersic mixture table is missing or unreadable.
        """
        unit = getattr(flux, "unit", None)
        p = [scalar(v) for v in (flux, x_0, y_0, r_eff, n, ellip)] + [angle(theta)]
        value = evaluate_mixture(self._mixture_from(p), x, y, self.settings)
        return value * unit if unit is not None else value

    def fit_deriv(self, x, y, flux, x_0, y_0, r_eff, n, ellip, theta):
        """Analytic derivatives with respect to the 7 parameters (list of arrays like ``x``).

        On a whole-pixel grid the backend's Jacobian kernel computes all 7
        images in one pass over the components
        (:func:`astromix.models._base.chained_jacobian`).

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px], any shapes that broadcast together.
        flux, x_0, y_0, r_eff, n, ellip, theta : float or array
            The parameters, as for :meth:`evaluate` (units are dropped).

        Returns
        -------
        list of ndarray
            7 float64 arrays of the broadcast shape of ``x, y``: d value / d
            ``flux``, ``x_0``, ``y_0``, ``r_eff``, ``n``, ``ellip``, ``theta``,
            in that order, fixed parameters included (astropy's fitters drop
            their rows).

        Raises
        ------
        InputError
            As :meth:`evaluate`.
        astromix.AstromixError
            If the packaged Sersic mixture table is missing or unreadable.
        """
        p = [scalar(v) for v in (flux, x_0, y_0, r_eff, n, ellip)] + [angle(theta)]
        return chained_jacobian(*self._mixture_and_derivatives(p), x, y, self.settings)

    def _mixture_from(self, p):
        """The (convolved) mixture for the parameter values ``p`` (in param_names order)."""
        return self._built(p, False)[0]

    def _mixture_and_derivatives(self, p):
        """The mixture of :meth:`_mixture_from` at ``p`` and its component derivatives.

        The derivatives, d (amp, mean x, mean y, C_xx, C_xy, C_yy) / d parameter,
        have shape (J, 7, 6) for the J components (read-only); see
        :func:`astromix.models._base.chain_coefficients`.  The fitter's hot path:
        one compiled call gives both.
        """
        return self._built(p, True)

    def _built(self, p, derivatives):
        """(mixture, derivatives or None) at ``p``, the last one kept for reuse.

        A model evaluated again with the same parameter values, settings and
        table (drawn into another grid, or its ``fit_deriv`` after its value at
        the same point, as fitters do) reuses the components instead of building
        them again (~7 us of the ~18 us of ``model(x, y)`` on a 64 x 64 stamp).
        """
        settings, table = self.settings, self._table()
        key = (tuple(p), settings, table)
        last = self.__dict__.get("_last_build")
        if last is not None and last[0] == key and (last[2] is not None or not derivatives):
            return last[1], (last[2] if derivatives else None)
        if derivatives:
            amp, mean, cov, jac = self._components(p, True, table, settings)
            jac.setflags(write=False)
        else:
            (amp, mean, cov), jac = self._components(p, False, table, settings), None
        mix = GaussianMixture._adopt(amp, mean, cov)
        self.__dict__["_last_build"] = (key, mix, jac)
        return mix, jac

    @property
    def bounding_box(self):
        """((y_lo, y_hi), (x_lo, x_hi)) [px] holding every component's culling ellipse."""
        return self._bounding_box_from(self.mixture())

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        from astropy import units as u

        xu = inputs_unit[self.inputs[0]]
        return {"flux": outputs_unit[self.outputs[0]], "x_0": xu,
                "y_0": inputs_unit[self.inputs[1]], "r_eff": xu, "theta": u.rad}


class PointSource(_MixtureSourceBase):
    """A point source: the PSF with a flux at a position, as an astropy model.

    Parameters
    ----------
    flux : float or Quantity
        Total flux.
    x_0, y_0 : float
        Position [px].
    psf : GaussianMixturePSF or GaussianMixture
        The PSF (centred at 0), required; its amplitudes are normalised to
        sum to 1, as :class:`~astromix.GaussianMixturePSF` does, so that
        ``flux`` stays the total flux.
    settings : AccuracySettings, optional

    Raises
    ------
    InputError
        Without a PSF, with one of the wrong type, or with one whose
        amplitudes do not have a positive sum.

    Examples
    --------
    >>> import numpy as np
    >>> from astromix import GaussianMixture, PointSource
    >>> psf = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0])
    >>> star = PointSource(50.0, 10.0, 12.0, psf=psf)
    >>> y, x = np.mgrid[:24, :24]
    >>> round(float(star(x, y).sum()), 3)
    50.0
    """

    flux = Parameter(default=1.0, description="total flux")
    x_0 = Parameter(default=0.0, description="x of the position [px]")
    y_0 = Parameter(default=0.0, description="y of the position [px]")

    def __init__(self, flux=flux.default, x_0=x_0.default, y_0=y_0.default, *, psf=None,
                 settings=None, **kwargs):
        if psf is None:
            raise InputError("PointSource needs a psf (GaussianMixturePSF or GaussianMixture)")
        self._init_common(psf, settings)
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, **kwargs)
        refuse_model_set(self)

    def mixture(self):
        """The GaussianMixture of the model as evaluated.

        Returns
        -------
        GaussianMixture
            The PSF mixture with its amplitudes multiplied by ``flux`` (flux
            units) and its centres shifted by ``(x_0, y_0)`` [px]; covariances
            [px^2] as the PSF's.
        """
        return self._psf.scale_flux(scalar(self.flux.value)).shift(
            scalar(self.x_0.value), scalar(self.y_0.value))

    def evaluate(self, x, y, flux, x_0, y_0):
        """Pixel-integrated PSF times flux at pixel coordinates ``x, y``.

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px] (pixel centres at integers, origin 0), any
            shapes that broadcast together.
        flux : float, array or Quantity
            Total flux; a Quantity's unit is the unit of the result.
        x_0, y_0 : float or array
            Position [px].

        Returns
        -------
        ndarray or Quantity
            The flux in each pixel, float64, of the broadcast shape of ``x, y``
            (a Quantity when ``flux`` is one).
        """
        unit = getattr(flux, "unit", None)
        mix = self._psf.scale_flux(scalar(flux)).shift(scalar(x_0), scalar(y_0))
        value = evaluate_mixture(mix, x, y, self.settings)
        return value * unit if unit is not None else value

    def fit_deriv(self, x, y, flux, x_0, y_0):
        """Analytic derivatives with respect to flux, x_0 and y_0.

        Parameters
        ----------
        x, y : array-like
            Pixel coordinates [px], any shapes that broadcast together.
        flux, x_0, y_0 : float or array
            Total flux and position [px] (units are dropped).

        Returns
        -------
        list of ndarray
            3 float64 arrays of the broadcast shape of ``x, y``, in
            :attr:`param_names` order, fixed parameters included: d value / d
            ``flux`` (the pixel-integrated PSF itself), then d value / d
            ``x_0`` and d value / d ``y_0`` (flux units per px).
        """
        p = [scalar(v) for v in (flux, x_0, y_0)]
        return chained_jacobian(*self._mixture_and_derivatives(p), x, y, self.settings)

    def _mixture_from(self, p):
        """The mixture for the parameter values ``p`` = (flux, x_0, y_0)."""
        return self._psf.scale_flux(p[0]).shift(p[1], p[2])

    def _mixture_and_derivatives(self, p):
        """The mixture at ``p`` = (flux, x_0, y_0) and d (amp, mean x, mean y, C_xx, C_xy,
        C_yy) / d (flux, x_0, y_0), shape (J, 3, 6)."""
        m = np.zeros((len(self._psf.amp), 3, 6))
        m[:, 0, 0] = self._psf.amp
        m[:, 1, 1] = 1.0
        m[:, 2, 2] = 1.0
        return self._mixture_from(p), m

    @property
    def bounding_box(self):
        """((y_lo, y_hi), (x_lo, x_hi)) [px] holding every component's culling ellipse."""
        return self._bounding_box_from(self.mixture())

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        return {"flux": outputs_unit[self.outputs[0]], "x_0": inputs_unit[self.inputs[0]],
                "y_0": inputs_unit[self.inputs[1]]}
