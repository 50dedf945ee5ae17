"""ASDF converters for astromix types: one converter per model family.

Each converter turns an astromix object into a tagged YAML node and back,
following the asdf "Converter" interface
(https://asdf.readthedocs.io, "Writing ASDF extensions": ``tags``, ``types``,
``to_yaml_tree``, ``from_yaml_tree``).  The node layout of every tag is fixed
by its versioned schema in ``resources/schemas`` (ASDF Standard, "Extending
ASDF"); a change of layout means a new tag version, a new schema file and a
new manifest, with the converter able to read every version it lists.

Reading always goes through the checked public constructor, so a file that was
edited by hand or corrupted (a covariance that is not positive definite, a
wrong shape, non-finite values) raises :class:`astromix.InputError` that names
the file and the tag, rather than producing an invalid object.

Adding a model family
---------------------
:class:`astromix.GaussianMixture` is not an astropy transform, so its schema is
a plain object and its converter derives from :class:`asdf.extension.Converter`.
The astropy.modeling families that come next (``GaussianMixturePSF``,
``SersicMixture``, ``MoffatStar``, ``SceneModel`` ...) are transforms, and
slot in like this:

1. Schema ``resources/schemas/<family>-1.0.0.yaml`` with
   ``allOf: [{$ref: "http://stsci.edu/schemas/asdf/transform/transform-1.4.0"},
   {type: object, properties: {...parameters...}, required: [...]}]``, as
   photutils and asdf-astropy do.  JSON Schema's ``additionalProperties:
   false`` only sees the ``properties`` of its own (sub)schema, not those
   pulled in by ``$ref``, so the sub-schema that carries it must also list
   the transform-1.4.0 properties (name, inputs, outputs, inverse,
   bounding_box, fixed, bounds, input_units_equivalencies), e.g. as
   ``name: {}``; a test must show that a file with a name and a bounding box
   still validates.
2. A tag entry ``asdf://astromix.org/astromix/tags/<family>-1.0.0`` in the
   manifest: in ``astromix-1.0.0.yaml`` while it is unreleased, afterwards in a
   new manifest version ``astromix-1.1.0.yaml`` (a released manifest is
   frozen), added to ``extension._MANIFESTS``.
3. A converter here deriving from
   ``asdf_astropy.converters.transform.core.TransformConverterBase`` that
   implements only ``to_yaml_tree_transform(model, tag, ctx)`` (return a dict
   of the parameter values, e.g. ``{"flux": model.flux.value, ...}``, and any
   nested GaussianMixture, which this converter then serialises) and
   ``from_yaml_tree_transform(node, tag, ctx)`` (build the model through its
   checked constructor); the base class writes and reads name, inputs,
   outputs, inverse, bounding box, fixed and bounds.  Give ``types`` as
   strings ("astromix.models.psf.GaussianMixturePSF") so that asdf imports
   the model modules only when it meets such an object.
4. An instance appended to :data:`CONVERTERS`, and a round-trip test.

:class:`GaussianMixturePSFConverter` is the first such converter; it also
overrides ``to_yaml_tree`` because the base class writes only the true fixed
flags (while a PSF's shape parameters are fixed by default) and drops bounds
such as ``(0, None)``.  :class:`SersicMixtureConverter` and
:class:`PointSourceConverter` share ``_SourceConverterBase``, which does the
same (complete ``<name>_fixed`` flags, non-default bounds) for models whose
parameters are all listed by name and whose PSF is a nested GaussianMixture.
"""

import warnings
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
from asdf.exceptions import AsdfWarning
from asdf.extension import Converter
from asdf_astropy.converters.transform.core import TransformConverterBase, parameter_to_value

from .extension import TAG_URI_PREFIX

__all__ = ["GaussianMixtureConverter", "GaussianMixturePSFConverter", "SersicMixtureConverter",
           "PointSourceConverter", "ExposureConverter", "SceneModelConverter", "CONVERTERS"]

_GM_KEYS = ("amp", "mean", "cov")


def _where(tag, ctx):
    """Describe the node being read, for error messages: the file and the tag."""
    url = getattr(ctx, "url", None)
    if url and url.startswith("file:"):
        url = unquote(urlparse(url).path)
    source = f"ASDF file {url!r}" if url else "ASDF input"
    return f"{source}: invalid {tag.rsplit('/', 1)[-1]} node ({tag})"


def _require_keys(node, keys, where, what=""):
    """InputError unless ``node`` is a mapping holding every key of ``keys``.

    The message starts with ``where`` (file and tag), then ``what`` (e.g.
    ``"source 1"``) when given.
    """
    from ...errors import InputError

    prefix = f"{where}: {what}: " if what else f"{where}: "
    if not isinstance(node, Mapping):
        raise InputError(f"{prefix}expected a mapping with {list(keys)}, "
                         f"got {type(node).__name__}")
    missing = [key for key in keys if key not in node]
    if missing:
        noun = "property" if len(missing) == 1 else "properties"
        raise InputError(f"{prefix}missing required {noun} {missing}")


class GaussianMixtureConverter(Converter):
    """Convert :class:`astromix.GaussianMixture` to and from ASDF.

    The tagged node is a mapping with three float64 ndarrays: ``amp`` (K,),
    ``mean`` (K, 2) with columns (x, y) in pixels, and ``cov`` (K, 2, 2) with
    rows and columns (x, y) in pixels squared; see the schema
    ``asdf://astromix.org/astromix/schemas/gaussian_mixture-1.0.0``.

    Notes
    -----
    Implements the asdf ``Converter`` interface (``tags``, ``types``,
    ``to_yaml_tree``, ``from_yaml_tree``) of the ASDF library documentation;
    tags and schemas follow the ASDF Standard, "Extending ASDF".
    """

    tags = [TAG_URI_PREFIX + "gaussian_mixture-1.0.0"]
    # A string, so that asdf does not import astromix.mixtures until needed.
    types = ["astromix.mixtures.GaussianMixture"]

    def to_yaml_tree(self, obj, tag, ctx):
        """Serialise a GaussianMixture to a node of three float64 arrays.

        Parameters
        ----------
        obj : astromix.GaussianMixture
            The mixture to write.
        tag : str
            The tag being written (``gaussian_mixture-1.0.0``).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            ``{"amp": (K,), "mean": (K, 2), "cov": (K, 2, 2)}``, numpy float64
            arrays that asdf stores as ndarray blocks (or inline, depending on
            the asdf array storage settings).
        """
        return {key: np.asarray(getattr(obj, key), dtype=np.float64) for key in _GM_KEYS}

    def from_yaml_tree(self, node, tag, ctx):
        """Build a validated GaussianMixture from a node read from a file.

        Parameters
        ----------
        node : dict
            The node's mapping, with ``amp``, ``mean`` and ``cov`` arrays.
        tag : str
            The tag being read.
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context; its ``url`` names the file in
            error messages.

        Returns
        -------
        astromix.GaussianMixture
            A new mixture owning float64 copies of the arrays (it does not keep
            the file open or memory-mapped).

        Raises
        ------
        astromix.InputError
            If the node is not a mapping, lacks or adds properties, holds
            non-numeric arrays, or fails the checks of the GaussianMixture
            constructor (shapes, finite values, symmetric positive definite
            covariances).  The message names the file and the tag.
        """
        from ...errors import InputError
        from ...mixtures import GaussianMixture

        where = _where(tag, ctx)
        _require_keys(node, _GM_KEYS, where)
        extra = sorted(str(key) for key in node if key not in _GM_KEYS)
        if extra:
            noun = "property" if len(extra) == 1 else "properties"
            raise InputError(f"{where}: unexpected {noun} {extra}")
        arrays = {}
        for key in _GM_KEYS:
            try:
                value = np.asarray(node[key])
            except Exception as exc:  # a missing or corrupt block, a bad inline array
                raise InputError(f"{where}: {key} could not be read: {exc}") from exc
            if value.dtype.kind not in "fiu":
                raise InputError(f"{where}: {key} has data type {value.dtype}, expected float64")
            arrays[key] = value
        try:
            return GaussianMixture(arrays["amp"], arrays["mean"], arrays["cov"])
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc


#: Converter instances of the astromix extensions (one per model family).
CONVERTERS = [GaussianMixtureConverter()]


# -- GaussianMixturePSF ---------------------------------------------------------------------------

#: Per-component parameter bases of GaussianMixturePSF, the columns of ``component_fixed``.
_PSF_COMPONENT_PARAMETERS = ("amp", "xoff", "yoff", "sigma_x", "sigma_y", "rho")
_PSF_HEAD = ("flux", "x_0", "y_0")
_SETTINGS_KEYS = ("n_sigma", "pixel_integration", "fourth_order_threshold",
                  "merge_tolerance")


def _default_bounds(name):
    """The bounds GaussianMixturePSF's constructor gives parameter ``name``."""
    if name.startswith("sigma_"):
        return (1e-3, None)
    if name.startswith("rho_"):
        return (-0.999, 0.999)
    return (None, None)


def _add_bounds_warn_tied(node, model, default_bounds):
    """Add the bounds that differ from ``default_bounds(name)`` to ``node``; warn on ties.

    asdf-astropy's base class drops bounds with a None side and tied constraints;
    astromix writes every non-default bound, and warns that ties are not written.
    """
    bounds = {}
    for name in model.param_names:
        lo, hi = getattr(model, name).bounds
        if (lo, hi) != default_bounds(name):
            bounds[name] = [None if lo is None else float(lo), None if hi is None else float(hi)]
    if bounds:
        node["bounds"] = bounds
    tied = [name for name, value in model.tied.items() if value is not False]
    if tied:
        warnings.warn(f"{type(model).__name__}: tied constraints of {tied} are not written "
                      "to ASDF", AsdfWarning, stacklevel=3)
    return node


def _recover_rho(cxy, sx, sy):
    """The correlation coefficient that reproduces ``cxy = rho * sx * sy`` bit for bit.

    ``cxy / (sx * sy)`` can be 1 ulp off; the nearest value (within 8 ulp) for
    which GaussianMixturePSF rebuilds exactly ``cxy`` is returned, so that the
    model read back evaluates exactly like the one written.
    """
    rho = cxy / (sx * sy)
    if rho * sx * sy == cxy:
        return rho
    lo = hi = rho
    for _ in range(8):
        hi, lo = np.nextafter(hi, np.inf), np.nextafter(lo, -np.inf)
        for cand in (hi, lo):
            if cand * sx * sy == cxy:
                return cand
    return rho  # pragma: no cover - not met in practice


class GaussianMixturePSFConverter(TransformConverterBase):
    """Convert :class:`astromix.GaussianMixturePSF` to and from ASDF.

    The tagged node (schema
    ``asdf://astromix.org/astromix/schemas/gaussian_mixture_psf-1.0.0``, which
    extends ``http://stsci.edu/schemas/asdf/transform/transform-1.4.0``) holds

    * ``mixture``: the PSF shape, a nested ``gaussian_mixture-1.0.0`` node in
      science pixels relative to the PSF centre, with the component amplitudes
      as they are (``amp_k``, not renormalised);
    * ``flux``, ``x_0``, ``y_0``: numbers or Quantities;
    * ``flux_fixed``, ``x_0_fixed``, ``y_0_fixed`` (booleans) and
      ``component_fixed`` (K rows of 6 booleans, columns amp, xoff, yoff,
      sigma_x, sigma_y, rho): the fixed flag of every parameter;
    * ``settings`` (optional): the model's own
      :class:`~astromix.AccuracySettings`, absent when it uses the default;
    * from the transform base (asdf-astropy's ``TransformConverterBase``):
      ``name``, ``inputs``, ``outputs``, a user-set ``bounding_box``,
      ``input_units_equivalencies``; ``bounds`` holds only the bounds that
      differ from the constructor's defaults.

    Notes
    -----
    The component parameters are rebuilt from the mixture: amplitudes,
    offsets and sigmas exactly, ``rho_k`` to within one unit in the last
    place, chosen so that every covariance, and therefore every evaluation, is
    bit-identical.  ``tied`` constraints are callables and are not written
    (as in asdf-astropy); writing a model with tied parameters warns.  The
    units of the component parameters, ``meta`` and ``fit_info`` are not
    stored.
    """

    tags = [TAG_URI_PREFIX + "gaussian_mixture_psf-1.0.0"]
    types = ["astromix.models.psf.GaussianMixturePSF"]

    def to_yaml_tree(self, model, tag, ctx):
        """Serialise the model: the transform properties, then the PSF's own.

        Replaces the base class's ``fixed`` mapping (which keeps only true
        flags, while the shape parameters are fixed by default) by complete
        fixed flags, and its ``bounds`` by the non-default bounds.

        Parameters
        ----------
        model : astromix.GaussianMixturePSF
            The model to write.
        tag : str
            The tag being written
            (``asdf://astromix.org/astromix/tags/gaussian_mixture_psf-1.0.0``).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context, passed on to the base class.

        Returns
        -------
        dict
            The node of schema ``gaussian_mixture_psf-1.0.0`` (see the class
            docstring): :meth:`to_yaml_tree_transform`'s properties, then the
            transform-1.4.0 ones written by asdf-astropy's
            ``TransformConverterBase.to_yaml_tree`` (``inputs``, ``outputs``,
            and ``name``, ``inverse``, ``bounding_box``,
            ``input_units_equivalencies`` when set), with ``fixed`` removed
            and ``bounds`` holding only the non-default bounds (``{name: [lo,
            hi]}``, None for an open side; absent when all are default).

        Raises
        ------
        astromix.InputError
            As :meth:`to_yaml_tree_transform`.

        Warns
        -----
        asdf.exceptions.AsdfWarning
            If some parameters have ``tied`` constraints, which are not
            written.
        """
        node = super().to_yaml_tree(model, tag, ctx)
        node.pop("fixed", None)
        node.pop("bounds", None)
        return _add_bounds_warn_tied(node, model, _default_bounds)

    def to_yaml_tree_transform(self, model, tag, ctx):
        """The PSF-specific part of the node (see the class docstring).

        The hook of asdf-astropy's ``TransformConverterBase``, called by
        :meth:`to_yaml_tree`.

        Parameters
        ----------
        model : astromix.GaussianMixturePSF
            The model to write.
        tag : str
            The tag being written (``gaussian_mixture_psf-1.0.0``; unused).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            ``mixture`` (the PSF shape,
            :attr:`~astromix.GaussianMixturePSF.mixture`: amplitudes ``amp_k``
            as they are, centres [px] relative to the PSF centre, covariances
            [px^2]; a GaussianMixture that asdf writes as a nested
            ``gaussian_mixture-1.0.0`` node); ``flux``, ``x_0``, ``y_0``
            (float, or Quantity when the parameter has a unit; ``x_0, y_0`` in
            pixels); ``flux_fixed``, ``x_0_fixed``, ``y_0_fixed`` (bool);
            ``component_fixed`` (list of K lists of 6 bool, columns amp, xoff,
            yoff, sigma_x, sigma_y, rho); and ``settings`` (dict of the four
            :class:`~astromix.AccuracySettings` fields) only when the model has
            its own settings.

        Raises
        ------
        astromix.InputError
            If a parameter is not finite, or the component parameters give a
            covariance that is not positive definite (the GaussianMixture
            constructor's check, through
            :attr:`~astromix.GaussianMixturePSF.mixture`); the message names
            the tag.
        """
        from ...errors import InputError

        where = f"cannot write GaussianMixturePSF to ASDF ({tag})"
        _check_parameter_values(model, where)
        try:
            mixture = model.mixture
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
        node = {"mixture": mixture}
        for name in _PSF_HEAD:
            value = parameter_to_value(getattr(model, name))
            node[name] = value if hasattr(value, "unit") else float(value)
        for name in _PSF_HEAD:
            node[f"{name}_fixed"] = bool(getattr(model, name).fixed)
        node["component_fixed"] = [
            [bool(getattr(model, f"{base}_{k}").fixed) for base in _PSF_COMPONENT_PARAMETERS]
            for k in range(model.n_components)]
        settings = getattr(model, "_settings", None)
        if settings is not None:
            node["settings"] = {key: getattr(settings, key) for key in _SETTINGS_KEYS}
        return node

    def from_yaml_tree_transform(self, node, tag, ctx):
        """Build the model through the checked GaussianMixturePSF constructor.

        The hook of asdf-astropy's ``TransformConverterBase``, whose
        ``from_yaml_tree`` then sets the transform-1.4.0 properties (``name``,
        ``inputs``, ``outputs``, ``bounding_box``, ``bounds``, ``inverse``,
        ``input_units_equivalencies``) on the model returned here.

        Parameters
        ----------
        node : dict
            The node's mapping (schema ``gaussian_mixture_psf-1.0.0``), with
            ``mixture`` already converted to a GaussianMixture by
            :class:`GaussianMixtureConverter`, ``flux``, ``x_0``, ``y_0`` and
            the optional ``<name>_fixed``, ``component_fixed`` and
            ``settings``.
        tag : str
            The tag being read.
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context; its ``url`` names the file in
            error messages.

        Returns
        -------
        astromix.GaussianMixturePSF
            The model, with the component amplitudes as written (not
            renormalised), ``rho_k`` restored so that every covariance is
            bit-identical to the written one, and the fixed flags of the node
            (the constructor's defaults where a flag is absent).

        Raises
        ------
        astromix.InputError
            If the node lacks a property, its mixture is not a valid
            GaussianMixture, ``component_fixed`` does not have one row of six
            flags per component, the settings are invalid, the constructor
            refuses the values, or ``bounds`` / ``fixed`` are not mappings of
            parameter name to ``[lo, hi]`` / boolean or name an unknown
            parameter; the message names the file and the tag.
        """
        from ...errors import InputError
        from ...mixtures import GaussianMixture
        from ...models.psf import GaussianMixturePSF
        from ...settings import AccuracySettings

        where = _where(tag, ctx)
        _require_keys(node, ("mixture",) + _PSF_HEAD, where)
        mixture = node["mixture"]
        if not isinstance(mixture, GaussianMixture):
            raise InputError(f"{where}: mixture is not a valid gaussian_mixture node "
                             f"(got {type(mixture).__name__})")
        k = len(mixture)
        flags = node.get("component_fixed")
        if flags is not None:
            flags = np.asarray(flags)
            if flags.shape != (k, len(_PSF_COMPONENT_PARAMETERS)) or flags.dtype != bool:
                raise InputError(f"{where}: component_fixed must be {k} rows of "
                                 f"{len(_PSF_COMPONENT_PARAMETERS)} booleans (one per "
                                 f"component), got shape {flags.shape} of {flags.dtype}")
        try:
            settings = node.get("settings")
            if settings is not None:
                if not isinstance(settings, Mapping) or set(settings) - set(_SETTINGS_KEYS):
                    raise InputError(f"settings must be a mapping with keys among "
                                     f"{list(_SETTINGS_KEYS)}")
                settings = AccuracySettings(**settings)
            model = GaussianMixturePSF(mixture, flux=node["flux"], x_0=node["x_0"],
                                       y_0=node["y_0"], settings=settings)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
        # The constructor renormalises the amplitudes and recomputes rho: restore
        # the written values so that the model evaluates exactly as it did.
        cov = mixture.cov
        for i in range(k):
            getattr(model, f"amp_{i}").value = mixture.amp[i]
            sx = getattr(model, f"sigma_x_{i}").value
            sy = getattr(model, f"sigma_y_{i}").value
            getattr(model, f"rho_{i}").value = _recover_rho(cov[i, 0, 1], sx, sy)
        for name in _PSF_HEAD:
            if f"{name}_fixed" in node:
                getattr(model, name).fixed = bool(node[f"{name}_fixed"])
        if flags is not None:
            for i in range(k):
                for j, base in enumerate(_PSF_COMPONENT_PARAMETERS):
                    getattr(model, f"{base}_{i}").fixed = bool(flags[i, j])
        _check_parameter_values(model, where)
        _check_bounds_names(node, model, where)
        return model


CONVERTERS.append(GaussianMixturePSFConverter())


# -- SersicMixture and PointSource ----------------------------------------------------------------

def _check_bounds_names(node, model, where):
    """InputError unless the node's ``bounds`` and ``fixed`` are usable by ``model``.

    ``bounds`` must be a mapping of parameter name to ``[lo, hi]`` (each a
    number, a Quantity or None) and ``fixed`` a mapping of parameter name to a
    boolean, and every name must be a parameter of ``model``.  asdf-astropy's
    base converter consumes both after the hook returns, unchecked, and would
    fail there with a bare AttributeError or TypeError (the schema does not
    catch an unknown name, and ``open_asdf(validate=False)`` nothing at all).
    """
    from ...errors import InputError

    for key in ("bounds", "fixed"):
        if key not in node:
            continue
        value = node[key]
        if not isinstance(value, Mapping):
            raise InputError(f"{where}: {key} must be a mapping of parameter name to "
                             f"{'[lo, hi]' if key == 'bounds' else 'a boolean'}, "
                             f"got {type(value).__name__}")
        unknown = sorted(map(str, set(value) - set(model.param_names)))
        if unknown:
            raise InputError(f"{where}: {key} of unknown parameters {unknown}; the model's "
                             f"parameters are {list(model.param_names)}")
        for name, item in value.items():
            if key == "fixed":
                if not isinstance(item, (bool, np.bool_)):
                    raise InputError(f"{where}: fixed[{name!r}] must be a boolean, got "
                                     f"{type(item).__name__}")
            elif (isinstance(item, (str, bytes, Mapping))
                  or not isinstance(item, Sequence | np.ndarray) or len(item) != 2
                  or not all(side is None or _is_bound(side) for side in item)):
                raise InputError(f"{where}: bounds[{name!r}] must be [lo, hi] (numbers or "
                                 f"null), got {item!r}")


def _is_bound(value):
    """Whether ``value`` can be one side of a parameter's bounds: a real number or Quantity."""
    number = getattr(value, "value", value)
    return (not isinstance(number, (bool, np.bool_))
            and isinstance(number, (int, float, np.integer, np.floating)))


def _check_parameter_values(model, where):
    """Refuse non-finite parameters and a SersicMixture outside its domain.

    The constructors accept any value, but a model with a non-finite
    parameter, ``r_eff <= 0``, an ellipticity outside [0, 1) or a Sersic index
    outside the mixture table cannot be evaluated; such a model is neither
    written nor read.
    """
    from ...errors import InputError

    bad = [name for name in model.param_names
           if not np.all(np.isfinite(np.asarray(getattr(model, name).value, dtype=float)))]
    if bad:
        raise InputError(f"{where}: non-finite value of {bad}")
    if "r_eff" in model.param_names:
        r_eff = float(np.asarray(model.r_eff.value))
        ellip = float(np.asarray(model.ellip.value))
        if not r_eff > 0:
            raise InputError(f"{where}: r_eff must be > 0, got {r_eff}")
        if not 0 <= ellip < 1:
            raise InputError(f"{where}: ellip must lie in [0, 1), got {ellip}")
        from ...models.sersic_table import SersicMixtureTable

        table = SersicMixtureTable.load()
        n = float(np.asarray(model.n.value))
        if not table.n_min <= n <= table.n_max:
            raise InputError(f"{where}: the Sersic index n = {n} lies outside the mixture "
                             f"table's range [{table.n_min}, {table.n_max}]")


class _SourceConverterBase(TransformConverterBase):
    """Shared converter of the astromix sources (SersicMixture, PointSource).

    The node holds every parameter (a number, or a Quantity when the
    parameter has a unit), the fixed flag of every parameter as
    ``<name>_fixed``, the bounds that differ from the class defaults, the
    optional PSF as a nested ``gaussian_mixture-1.0.0`` node and the model's
    own AccuracySettings when it has them.  Subclasses set ``tags``,
    ``types``, ``_model_path`` and ``_psf_required``.
    """

    #: "module:class" of the model, imported when a node is read.
    _model_path = None
    #: Whether the model cannot exist without a PSF (PointSource).
    _psf_required = False

    def _model_class(self):
        import importlib

        module, name = self._model_path.split(":")
        return getattr(importlib.import_module(module), name)

    def to_yaml_tree(self, model, tag, ctx):
        """Serialise the model: the transform properties, then the source's own.

        Replaces the base class's ``fixed`` mapping (only the true flags) by the
        complete ``<name>_fixed`` flags, and its ``bounds`` (which drops bounds
        such as ``(0, None)``) by the bounds that differ from the defaults.

        Raises
        ------
        astromix.InputError
            If a parameter is not finite, or a SersicMixture has ``r_eff <= 0``
            or ``ellip`` outside [0, 1) (it could not be read back).
        """
        _check_parameter_values(model, f"cannot write {type(model).__name__} to ASDF "
                                       f"({tag})")
        node = super().to_yaml_tree(model, tag, ctx)
        node.pop("fixed", None)
        node.pop("bounds", None)
        cls = type(model)
        return _add_bounds_warn_tied(node, model, lambda name: tuple(getattr(cls, name).bounds))

    def to_yaml_tree_transform(self, model, tag, ctx):
        """The source-specific part of the node (see the class docstring).

        Parameters
        ----------
        model : astromix.SersicMixture or astromix.PointSource
            The model to write.
        tag : str
            The tag being written (unused).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            Every parameter (float, or Quantity when it has a unit), its
            ``<name>_fixed`` flag (bool), ``psf`` (the PSF GaussianMixture,
            written as a nested ``gaussian_mixture-1.0.0`` node) when the model
            has one, and ``settings`` (dict of the four AccuracySettings
            fields) when the model has its own.
        """
        node = {}
        for name in model.param_names:
            value = parameter_to_value(getattr(model, name))
            node[name] = value if hasattr(value, "unit") else float(value)
        for name in model.param_names:
            node[f"{name}_fixed"] = bool(getattr(model, name).fixed)
        if model.psf is not None:
            node["psf"] = model.psf
        settings = getattr(model, "_settings", None)
        if settings is not None:
            node["settings"] = {key: getattr(settings, key) for key in _SETTINGS_KEYS}
        return node

    def from_yaml_tree_transform(self, node, tag, ctx):
        """Build the model through its checked constructor.

        Raises
        ------
        astromix.InputError
            If the node is not a mapping, lacks a parameter (or the PSF of a
            PointSource), its PSF is not a valid GaussianMixture, a parameter
            or fixed flag has the wrong type, a parameter is not finite (or a
            SersicMixture has ``r_eff <= 0`` or ``ellip`` outside [0, 1)), the
            settings are invalid, the constructor refuses the values, or
            ``bounds`` / ``fixed`` are not mappings of parameter name to
            ``[lo, hi]`` / boolean or name an unknown parameter; the message
            names the file and the tag.
        """
        from ...errors import InputError
        from ...mixtures import GaussianMixture
        from ...settings import AccuracySettings

        cls = self._model_class()
        where = _where(tag, ctx)
        _require_keys(node, list(cls.param_names) + (["psf"] if self._psf_required else []),
                      where)
        psf = node.get("psf")
        if psf is not None and not isinstance(psf, GaussianMixture):
            raise InputError(f"{where}: psf is not a valid gaussian_mixture node "
                             f"(got {type(psf).__name__})")
        params = {}
        for name in cls.param_names:
            value = node[name]
            number = getattr(value, "value", value)
            if isinstance(number, (bool, np.bool_)) or not isinstance(
                    number, (int, float, np.integer, np.floating)):
                raise InputError(f"{where}: {name} must be a number or a Quantity, "
                                 f"got {type(value).__name__}")
            params[name] = value
            flag = node.get(f"{name}_fixed", False)
            if not isinstance(flag, (bool, np.bool_)):
                raise InputError(f"{where}: {name}_fixed must be a boolean, "
                                 f"got {type(flag).__name__}")
        try:
            settings = node.get("settings")
            if settings is not None:
                if not isinstance(settings, Mapping) or set(settings) - set(_SETTINGS_KEYS):
                    raise InputError(f"settings must be a mapping with keys among "
                                     f"{list(_SETTINGS_KEYS)}")
                settings = AccuracySettings(**settings)
            model = cls(**params, psf=psf, settings=settings)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
        _check_parameter_values(model, where)
        for name in cls.param_names:
            getattr(model, name).fixed = bool(node.get(f"{name}_fixed", False))
        _check_bounds_names(node, model, where)
        return model


class SersicMixtureConverter(_SourceConverterBase):
    """Convert :class:`astromix.SersicMixture` to and from ASDF.

    The tagged node (schema
    ``asdf://astromix.org/astromix/schemas/sersic_mixture-1.0.0``, which
    extends ``http://stsci.edu/schemas/asdf/transform/transform-1.4.0``) holds

    * ``flux``, ``x_0``, ``y_0``, ``r_eff``, ``n``, ``ellip``, ``theta``:
      numbers or Quantities (total flux; centre and half-light radius in
      pixels; Sersic index; ellipticity 1 - b/a; position angle in radians);
    * ``<name>_fixed`` (booleans): the fixed flag of every parameter;
    * ``psf`` (optional): the PSF the galaxy is convolved with, a nested
      ``gaussian_mixture-1.0.0`` node (unit flux, centred at 0, in pixels);
    * ``settings`` (optional): the model's own
      :class:`~astromix.AccuracySettings`, absent when it uses the default;
    * from the transform base (asdf-astropy's ``TransformConverterBase``):
      ``name``, ``inputs``, ``outputs``, a user-set ``bounding_box``,
      ``input_units_equivalencies``; ``bounds`` holds only the bounds that
      differ from the class defaults (r_eff >= 1e-3, 0.3 <= n <= 8,
      0 <= ellip <= 0.95, others unbounded).

    Notes
    -----
    Parameter values, the PSF arrays and the settings are stored exactly, so
    the model read back evaluates bit for bit like the one written.  The
    Sersic mixture table itself is not stored: the model read back uses the
    table of the installed astromix.  ``tied`` constraints are callables and
    are not written (writing a model with tied parameters warns); ``meta``
    and ``fit_info`` are not stored.
    """

    tags = [TAG_URI_PREFIX + "sersic_mixture-1.0.0"]
    types = ["astromix.models.sersic.SersicMixture"]
    _model_path = "astromix.models.sersic:SersicMixture"


class PointSourceConverter(_SourceConverterBase):
    """Convert :class:`astromix.PointSource` to and from ASDF.

    The tagged node (schema
    ``asdf://astromix.org/astromix/schemas/point_source-1.0.0``, which extends
    ``http://stsci.edu/schemas/asdf/transform/transform-1.4.0``) holds

    * ``flux``, ``x_0``, ``y_0``: numbers or Quantities (total flux, position
      in pixels);
    * ``flux_fixed``, ``x_0_fixed``, ``y_0_fixed`` (booleans): the fixed flags;
    * ``psf`` (required): the PSF, a nested ``gaussian_mixture-1.0.0`` node
      (unit flux, centred at 0, in pixels);
    * ``settings`` (optional): the model's own
      :class:`~astromix.AccuracySettings`;
    * the transform-1.4.0 properties, as for :class:`SersicMixtureConverter`
      (``bounds``: only the non-default ones; all are unbounded by default).

    Notes
    -----
    Stored exactly: the model read back evaluates bit for bit like the one
    written.  ``tied``, ``meta`` and ``fit_info`` are not stored.
    """

    tags = [TAG_URI_PREFIX + "point_source-1.0.0"]
    types = ["astromix.models.sersic.PointSource"]
    _model_path = "astromix.models.sersic:PointSource"
    _psf_required = True


CONVERTERS.append(SersicMixtureConverter())
CONVERTERS.append(PointSourceConverter())


# -- Exposure -------------------------------------------------------------------------------------

#: Properties of an exposure node (schema exposure-1.0.0).
_EXPOSURE_KEYS = ("name", "band", "exptime", "zeropoint", "unit", "data", "inverse_variance",
                  "mask", "wcs", "fits_wcs", "psf", "psf_origin", "meta")


class ExposureConverter(Converter):
    """Convert :class:`astromix.data.Exposure` to and from ASDF.

    The tagged node (schema ``asdf://astromix.org/astromix/schemas/exposure-1.0.0``)
    holds

    * ``data``: the image (ny, nx), float32 or float64 ndarray, data units;
      NaN on the pixels whose data were not finite;
    * ``inverse_variance`` (optional): float64 (ny, nx), 1 / (data unit)^2,
      0 where the uncertainty is unusable; read back as an
      :class:`~astropy.nddata.InverseVariance`;
    * ``mask``: bool (ny, nx), true = masked by the user (the mask given to
      the Exposure; the pixels with bad data or uncertainty are found again
      from the NaN data and the zero inverse variance, so that they stay
      masked when the mask of the exposure read back is replaced);
    * ``wcs`` (a gwcs, stored natively through gwcs's own converter) or
      ``fits_wcs`` (an astropy WCS as a FITS header string, one card per line,
      written with relax=True and 17 significant digits: SIP and TPV
      included; lookup-table distortions dropped with a warning);
    * ``psf`` (optional): a nested ``gaussian_mixture_psf-1.0.0`` node; a
      position-dependent PSF (callable, PSFEx model) is not stored and an
      `~astromix.data.ExposureWarning` says so;
    * ``psf_origin`` [px], ``band``, ``exptime`` [s], ``zeropoint`` (AB),
      ``name``, ``unit`` (an astropy unit node) and ``meta`` (its
      JSON-compatible entries only).

    Notes
    -----
    Reading goes through the checked :class:`~astromix.data.Exposure`
    constructor; an invalid node raises :class:`astromix.InputError` naming
    the file and the tag.  The data, inverse variance and mask are copied into
    memory, so the exposure does not keep the file open.
    """

    tags = [TAG_URI_PREFIX + "exposure-1.0.0"]
    types = ["astromix.data.exposure.Exposure"]

    def to_yaml_tree(self, obj, tag, ctx):
        """Serialise an Exposure (see the class docstring for the node layout).

        Parameters
        ----------
        obj : astromix.data.Exposure
            The exposure to write.
        tag : str
            The tag being written
            (``asdf://astromix.org/astromix/tags/exposure-1.0.0``; unused).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            The node's properties (schema ``exposure-1.0.0``); absent ones (no
            uncertainty, no WCS, None attributes) are left out.

        Warns
        -----
        astromix.data.ExposureWarning
            If the WCS is neither an astropy WCS nor a gwcs (it is not
            written), an astropy WCS has lookup-table distortions (they are
            dropped), or the PSF is a position-dependent provider (it is not
            written; within :func:`astromix.data.write_exposures`, which warns
            once for all the exposures, this converter does not warn).
        """
        from ...data.exposure import _is_astropy_wcs, _is_gwcs
        from ...data.io import (
            fits_wcs_header,
            json_meta,
            storable_psf,
            stored_pixels,
            warn_unstored_psf,
        )

        node = {}
        for key in ("name", "band", "exptime", "zeropoint", "unit"):
            value = getattr(obj, key)
            if value is not None:
                node[key] = value
        node["data"], mask = stored_pixels(obj)
        ivar = obj.inverse_variance()
        if ivar is not None:
            node["inverse_variance"] = ivar
        node["mask"] = mask
        wcs = obj.wcs
        if wcs is not None:
            if _is_astropy_wcs(wcs):
                node["fits_wcs"] = fits_wcs_header(wcs)
            elif _is_gwcs(wcs):
                node["wcs"] = wcs
            else:
                from ...data.exposure import ExposureWarning

                warnings.warn(f"exposure {obj.name!r}: its WCS ({type(wcs).__name__}) is "
                              "neither an astropy WCS nor a gwcs and is not written",
                              ExposureWarning, stacklevel=2)
        psf = storable_psf(obj)
        if psf is not None:
            node["psf"] = psf
        elif obj.psf is not None:
            warn_unstored_psf([obj.name])
        node["psf_origin"] = [float(v) for v in obj.psf_origin]
        meta = json_meta(obj.meta)
        if meta:
            node["meta"] = meta
        return node

    def from_yaml_tree(self, node, tag, ctx):
        """Build a validated Exposure from a node read from a file.

        Parameters
        ----------
        node : dict
            The node's mapping (schema ``exposure-1.0.0``), its nested
            ``psf`` (a GaussianMixturePSF), ``wcs`` (a gwcs) and ``unit`` (an
            astropy unit) already converted by their own converters.
        tag : str
            The tag being read.
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context; its ``url`` names the file in
            error messages.

        Returns
        -------
        astromix.data.Exposure
            A new exposure owning in-memory copies of the data, inverse
            variance (as an :class:`~astropy.nddata.InverseVariance`
            uncertainty) and mask; the pixels with NaN data or zero inverse
            variance are masked as bad data or uncertainty, as when the
            exposure was built (without the constructor's warning about
            them); an astropy WCS rebuilt from ``fits_wcs``; ``psf_origin``
            (0, 0) when absent.

        Raises
        ------
        astromix.InputError
            If the node is not a mapping, lacks ``data``, has unknown
            properties or both ``wcs`` and ``fits_wcs``, holds arrays of the
            wrong type, a WCS or PSF that cannot be used, a ``meta`` that is
            not a mapping, or fails the checks of the Exposure constructor;
            the message names the file and the tag.
        """
        from astropy import units as u
        from astropy.nddata import InverseVariance

        from ...data.io import exposure_from_file, wcs_from_fits_header
        from ...errors import InputError
        from ...models.psf import GaussianMixturePSF

        where = _where(tag, ctx)
        _require_keys(node, ("data",), where)
        extra = sorted(str(key) for key in node if key not in _EXPOSURE_KEYS)
        if extra:
            noun = "property" if len(extra) == 1 else "properties"
            raise InputError(f"{where}: unexpected {noun} {extra}")
        if "wcs" in node and "fits_wcs" in node:
            raise InputError(f"{where}: holds both wcs and fits_wcs")
        arrays = {}
        for key in ("data", "inverse_variance", "mask"):
            if key not in node:
                continue
            try:
                arrays[key] = np.array(node[key])
            except Exception as exc:  # a missing or corrupt block, a bad inline array
                raise InputError(f"{where}: {key} could not be read: {exc}") from exc
        try:
            wcs = None
            if "fits_wcs" in node:
                wcs = wcs_from_fits_header(node["fits_wcs"])
            elif "wcs" in node:
                wcs = node["wcs"]
            psf = node.get("psf")
            if psf is not None and not isinstance(psf, GaussianMixturePSF):
                raise InputError(f"psf is not a valid gaussian_mixture_psf node (got "
                                 f"{type(psf).__name__})")
            unit = node.get("unit")
            if unit is not None and not isinstance(unit, u.UnitBase):
                raise InputError(f"unit must be a unit node, got {type(unit).__name__}")
            ivar = arrays.get("inverse_variance")
            meta = node.get("meta")
            if meta is not None and not isinstance(meta, Mapping):
                raise InputError(f"meta must be a mapping, got {type(meta).__name__}")
            return exposure_from_file(
                data=arrays["data"], uncertainty=None if ivar is None else InverseVariance(ivar),
                mask=arrays.get("mask"), wcs=wcs, psf=psf, band=node.get("band"),
                exptime=node.get("exptime"), zeropoint=node.get("zeropoint"),
                name=node.get("name"), meta=dict(meta) if meta else None,
                unit=unit, psf_origin=node.get("psf_origin", (0.0, 0.0)))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc


CONVERTERS.append(ExposureConverter())


# -- SceneModel -----------------------------------------------------------------------------------

def _scene_default_bounds(name):
    from ...models.scene import _BOUNDS

    return _BOUNDS.get(name.rsplit("_", 1)[0], (None, None))


class SceneModelConverter(Converter):
    """ASDF converter for :class:`astromix.SceneModel`.

    The tagged node (schema ``scene_model-1.0.0``) holds ``bands`` (list of
    str, or [null] for one unnamed band), ``zeropoint`` (AB mag of one catalog
    flux unit, or null), ``sources`` (one mapping per source: ``kind``
    (sersic or star), ``name``, ``ra``, ``dec`` [deg], ``flux`` ({band: value};
    key ``""`` for the unnamed band), and for Sersic sources ``r_eff``
    [arcsec], ``n``, ``ellip``, ``theta`` [rad, east of north]), ``fixed``
    (names of the fixed parameters), ``bounds`` (non-default bounds by
    parameter name) and an optional ``name``.  Tied constraints are not
    written (a warning says so).  Implements the asdf ``Converter`` interface.
    """

    tags = [TAG_URI_PREFIX + "scene_model-1.0.0"]
    types = ["astromix.models.scene.SceneModel"]

    def to_yaml_tree(self, obj, tag, ctx):
        """Serialise a SceneModel into a plain mapping (see the class docstring).

        Parameters
        ----------
        obj : astromix.SceneModel
            The scene to write.  Its bound exposure (see
            :meth:`~astromix.SceneModel.in_exposure`) and settings are not
            written.
        tag : str
            The tag being written
            (``asdf://astromix.org/astromix/tags/scene_model-1.0.0``; unused).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            ``bands`` (list of str, or ``[None]``), ``zeropoint`` (float or
            None), ``sources`` (list of dict, one per source: ``kind``,
            ``name``, ``ra``, ``dec`` [deg], ``flux`` {band: value}, and for
            Sersic sources ``r_eff`` [arcsec], ``n``, ``ellip``, ``theta``
            [rad]), ``fixed`` (list of the fixed parameter names), ``name``
            when set, and ``bounds`` ({name: [lo, hi]}) when some differ from
            the SceneModel defaults.

        Warns
        -----
        asdf.exceptions.AsdfWarning
            If some parameters have ``tied`` constraints, which are not
            written.
        """
        from ...errors import InputError
        from ...models.scene import SersicSource, StarSource

        p = obj.parameters
        sources = []
        for i, kind in enumerate(obj.source_kinds):
            idx = obj.source_index(i)
            src = {"kind": kind, "name": str(obj.source_names[i]),
                   "ra": float(p[idx["ra"]]), "dec": float(p[idx["dec"]]),
                   "flux": {("" if b is None else b): float(p[idx[("flux", b)]])
                            for b in obj.bands}}
            if kind == "sersic":
                for key in ("r_eff", "n", "ellip", "theta"):
                    src[key] = float(p[idx[key]])
            # the values must make a source that reading the file can build again
            # (e.g. ellip <= 0.95, finite values), else the schema refuses them
            # with a bare asdf ValidationError
            try:
                if kind == "sersic":
                    SersicSource(src["ra"], src["dec"], 1.0, src["r_eff"], src["n"],
                                 src["ellip"], src["theta"])
                else:
                    StarSource(src["ra"], src["dec"], 1.0)
                bad = [b for b, v in src["flux"].items() if not np.isfinite(v)]
                if bad:
                    raise InputError(f"non-finite flux in band(s) {bad}")
            except InputError as exc:
                raise InputError(f"cannot write SceneModel to ASDF ({tag}): source {i} "
                                 f"({src['name']}): {exc}") from None
            sources.append(src)
        node = {"bands": [b for b in obj.bands], "zeropoint": obj.zeropoint,
                "sources": sources,
                "fixed": [n for n in obj.param_names if getattr(obj, n).fixed]}
        if obj.name is not None:
            node["name"] = str(obj.name)
        return _add_bounds_warn_tied(node, obj, _scene_default_bounds)

    def from_yaml_tree(self, node, tag, ctx):
        """Rebuild the SceneModel through its checked constructor.

        Parameters
        ----------
        node : dict
            The node's mapping (schema ``scene_model-1.0.0``; see the class
            docstring).
        tag : str
            The tag being read.
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context; its ``url`` names the file in
            error messages.

        Returns
        -------
        astromix.SceneModel
            The scene, built from :class:`~astromix.SersicSource` and
            :class:`~astromix.StarSource` objects (a source whose only flux key
            is ``""`` gets that flux in every band), with the node's fixed
            parameters and bounds set; unbound to any exposure, default
            settings.

        Raises
        ------
        astromix.InputError
            On a malformed node (a missing key, a value of the wrong type, an
            unknown source kind or parameter name) or values the
            SersicSource, StarSource or SceneModel constructors refuse; the
            message names the file and the tag.
        """
        from ...errors import InputError
        from ...models.scene import SceneModel, SersicSource, StarSource

        where = _where(tag, ctx)
        _require_keys(node, ("bands", "sources"), where)
        if not isinstance(node["sources"], list | tuple):
            raise InputError(f"{where}: sources must be a list of mappings, "
                             f"got {type(node['sources']).__name__}")
        for i, src in enumerate(node["sources"]):
            keys = ("kind", "ra", "dec", "flux")
            if isinstance(src, Mapping) and src.get("kind") == "sersic":
                keys += ("r_eff", "n", "ellip", "theta")
            _require_keys(src, keys, where, f"source {i}")
            if not isinstance(src["flux"], Mapping):
                raise InputError(f"{where}: source {i}: flux must be a mapping of band to "
                                 f"flux, got {type(src['flux']).__name__}")
        try:
            bands = [None if b in (None, "") else str(b) for b in node["bands"]]
            sources = []
            for src in node["sources"]:
                flux = {(None if b == "" else b): v for b, v in src["flux"].items()}
                if list(flux) == [None]:
                    flux = flux[None]
                if src["kind"] == "sersic":
                    sources.append(SersicSource(src["ra"], src["dec"], flux, src["r_eff"],
                                                src["n"], src["ellip"], src["theta"],
                                                name=src.get("name")))
                elif src["kind"] == "star":
                    sources.append(StarSource(src["ra"], src["dec"], flux,
                                              name=src.get("name")))
                else:
                    raise InputError(f"unknown source kind {src['kind']!r}")
            model = SceneModel(sources, bands=bands, zeropoint=node.get("zeropoint"),
                               name=node.get("name"))
            for name in node.get("fixed", []):
                getattr(model, name).fixed = True
            for name, (lo, hi) in node.get("bounds", {}).items():
                getattr(model, name).bounds = (lo, hi)
        except (KeyError, TypeError, ValueError, AttributeError, InputError) as exc:
            raise InputError(f"{where}: {exc}") from None
        return model


CONVERTERS.append(SceneModelConverter())


# -- MoffatStar -----------------------------------------------------------------------------------

def _check_moffat_values(model, where):
    """Refuse a MoffatStar that could not be evaluated (non-finite, fwhm, beta, ellip)."""
    from ...errors import InputError
    from ...models.moffat import _check_shape

    _check_parameter_values(model, where)
    values = [float(np.ravel(np.asarray(getattr(model, name).value))[0])
              for name in ("fwhm", "beta", "ellip")]
    try:
        _check_shape(*values)
    except InputError as exc:
        raise InputError(f"{where}: {str(exc).removeprefix('MoffatStar: ')}") from None


class MoffatStarConverter(_SourceConverterBase):
    """Convert :class:`astromix.models.moffat.MoffatStar` to and from ASDF.

    The tagged node (schema
    ``asdf://astromix.org/astromix/schemas/moffat_star-1.0.0``, which extends
    ``http://stsci.edu/schemas/asdf/transform/transform-1.4.0``) holds

    * ``flux``, ``x_0``, ``y_0``, ``fwhm``, ``beta``, ``ellip``, ``theta``:
      numbers or Quantities (total flux; centre and major-axis FWHM in
      pixels; Moffat index; ellipticity 1 - b/a; position angle in radians
      from +x, counter-clockwise);
    * ``<name>_fixed`` (booleans): the fixed flag of every parameter (when
      absent, the model's default: ``ellip`` and ``theta`` fixed);
    * ``quadrature``: Gauss-Legendre nodes per pixel axis;
    * the transform-1.4.0 properties, as for :class:`SersicMixtureConverter`
      (``bounds``: only those that differ from fwhm >= 1e-3, beta >= 1.01,
      0 <= ellip <= 0.95).

    Notes
    -----
    Stored exactly: the model read back evaluates bit for bit like the one
    written.  ``tied``, ``meta`` and ``fit_info`` are not stored.  Reading
    and writing refuse ``fwhm <= 0``, ``beta <= 1``, ``ellip`` outside [0,
    1) and non-finite values with :class:`astromix.InputError`.
    """

    tags = [TAG_URI_PREFIX + "moffat_star-1.0.0"]
    types = ["astromix.models.moffat.MoffatStar"]
    _model_path = "astromix.models.moffat:MoffatStar"

    def to_yaml_tree(self, model, tag, ctx):
        """Serialise the model (see the class docstring).

        Parameters
        ----------
        model : astromix.models.moffat.MoffatStar
            The model to write.
        tag : str
            The tag being written
            (``asdf://astromix.org/astromix/tags/moffat_star-1.0.0``).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context, passed on to the base class.

        Returns
        -------
        dict
            The node of schema ``moffat_star-1.0.0``:
            :meth:`to_yaml_tree_transform`'s properties and the
            transform-1.4.0 ones (as :class:`SersicMixtureConverter` writes
            them: ``fixed`` removed, ``bounds`` only where they differ from
            the class defaults).

        Raises
        ------
        astromix.InputError
            If a parameter is not finite, ``fwhm <= 0``, ``beta <= 1`` or
            ``ellip`` is outside [0, 1) (it could not be read back).

        Warns
        -----
        asdf.exceptions.AsdfWarning
            If some parameters have ``tied`` constraints, which are not
            written.
        """
        _check_moffat_values(model, f"cannot write MoffatStar to ASDF ({tag})")
        return super().to_yaml_tree(model, tag, ctx)

    def to_yaml_tree_transform(self, model, tag, ctx):
        """The parameters, their fixed flags and the quadrature order.

        The hook of asdf-astropy's ``TransformConverterBase``.

        Parameters
        ----------
        model : astromix.models.moffat.MoffatStar
            The model to write.
        tag : str
            The tag being written (``moffat_star-1.0.0``; unused).
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context (unused).

        Returns
        -------
        dict
            The seven parameters ``flux``, ``x_0``, ``y_0``, ``fwhm``,
            ``beta``, ``ellip``, ``theta`` (float, or Quantity when the
            parameter has a unit; positions and fwhm in pixels, theta in
            radians), their ``<name>_fixed`` flags (bool) and ``quadrature``
            (int, Gauss-Legendre nodes per pixel axis).
        """
        node = {}
        for name in model.param_names:
            value = parameter_to_value(getattr(model, name))
            node[name] = value if hasattr(value, "unit") else float(value)
        for name in model.param_names:
            node[f"{name}_fixed"] = bool(getattr(model, name).fixed)
        node["quadrature"] = int(model.quadrature)
        return node

    def from_yaml_tree_transform(self, node, tag, ctx):
        """Build the model through its checked constructor.

        The hook of asdf-astropy's ``TransformConverterBase``, whose
        ``from_yaml_tree`` then sets the transform-1.4.0 properties on the
        model returned here.

        Parameters
        ----------
        node : dict
            The node's mapping (schema ``moffat_star-1.0.0``): the seven
            parameters, optional ``<name>_fixed`` flags and ``quadrature``.
        tag : str
            The tag being read.
        ctx : asdf.extension.SerializationContext
            The asdf serialisation context; its ``url`` names the file in
            error messages.

        Returns
        -------
        astromix.models.moffat.MoffatStar
            The model, with ``quadrature`` 5 when absent and the class's
            default fixed flags (``ellip`` and ``theta`` fixed) where a flag is
            absent.

        Raises
        ------
        astromix.InputError
            If the node is not a mapping, lacks a parameter, a parameter, a
            fixed flag or the quadrature order has the wrong type, the
            values make no valid MoffatStar, or ``bounds`` / ``fixed`` are
            not mappings of parameter name to ``[lo, hi]`` / boolean or name
            an unknown parameter; the message names the file and the tag.
        """
        from ...errors import InputError

        cls = self._model_class()
        where = _where(tag, ctx)
        _require_keys(node, cls.param_names, where)
        params, fixed = {}, {}
        for name in cls.param_names:
            value = node[name]
            number = getattr(value, "value", value)
            if isinstance(number, (bool, np.bool_)) or not isinstance(
                    number, (int, float, np.integer, np.floating)):
                raise InputError(f"{where}: {name} must be a number or a Quantity, "
                                 f"got {type(value).__name__}")
            params[name] = value
            flag = node.get(f"{name}_fixed", getattr(cls, name).fixed)
            if not isinstance(flag, (bool, np.bool_)):
                raise InputError(f"{where}: {name}_fixed must be a boolean, "
                                 f"got {type(flag).__name__}")
            fixed[name] = bool(flag)
        quadrature = node.get("quadrature", 5)
        if isinstance(quadrature, (bool, np.bool_)) or not isinstance(
                quadrature, (int, np.integer)):
            raise InputError(f"{where}: quadrature must be an integer, "
                             f"got {type(quadrature).__name__}")
        try:
            model = cls(**params, quadrature=int(quadrature))
        except InputError as exc:
            raise InputError(f"{where}: {str(exc).removeprefix('MoffatStar: ')}") from exc
        for name, flag in fixed.items():
            getattr(model, name).fixed = flag
        _check_bounds_names(node, model, where)
        return model


CONVERTERS.append(MoffatStarConverter())
__all__.append("MoffatStarConverter")
