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
2. A tag entry ``asdf://astromix.org/astromix/tags/<family>-1.0.0`` in a new
   manifest version ``astromix-1.1.0.yaml`` (the 1.0.0 manifest is frozen once
   released), added to ``extension._MANIFESTS``.
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
"""

from collections.abc import Mapping
from urllib.parse import unquote, urlparse

import numpy as np
from asdf.extension import Converter

from .extension import TAG_URI_PREFIX

__all__ = ["GaussianMixtureConverter", "CONVERTERS"]

_GM_KEYS = ("amp", "mean", "cov")


def _where(tag, ctx):
    """Describe the node being read, for error messages: the file and the tag."""
    url = getattr(ctx, "url", None)
    if url and url.startswith("file:"):
        url = unquote(urlparse(url).path)
    source = f"ASDF file {url!r}" if url else "ASDF input"
    return f"{source}: invalid {tag.rsplit('/', 1)[-1]} node ({tag})"


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
        if not isinstance(node, Mapping):
            raise InputError(f"{where}: expected a mapping with {list(_GM_KEYS)}, "
                             f"got {type(node).__name__}")
        missing = [key for key in _GM_KEYS if key not in node]
        if missing:
            noun = "property" if len(missing) == 1 else "properties"
            raise InputError(f"{where}: missing required {noun} {missing}")
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
