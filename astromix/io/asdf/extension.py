"""The astromix ASDF extension and its resource mappings.

Both functions are registered as entry points in ``pyproject.toml``::

    [project.entry-points."asdf.extensions"]
    astromix = "astromix.io.asdf.extension:get_extensions"
    [project.entry-points."asdf.resource_mappings"]
    astromix = "astromix.io.asdf.extension:get_resource_mappings"

``asdf`` calls them the first time its configuration is used, in every process
that uses asdf, so this module imports nothing heavy at import time.
"""

import importlib.resources

__all__ = ["get_extensions", "get_resource_mappings", "supported_tags", "EXTENSION_URI",
           "MANIFEST_URI", "SCHEMA_URI_PREFIX", "TAG_URI_PREFIX", "MANIFEST_URI_PREFIX"]

#: URI prefix of the astromix manifests (one per extension version).
MANIFEST_URI_PREFIX = "asdf://astromix.org/astromix/manifests/"
#: URI prefix of the astromix schemas.
SCHEMA_URI_PREFIX = "asdf://astromix.org/astromix/schemas/"
#: URI prefix of the astromix tags.
TAG_URI_PREFIX = "asdf://astromix.org/astromix/tags/"
#: URI of the current manifest.
MANIFEST_URI = MANIFEST_URI_PREFIX + "astromix-1.0.0"
#: URI of the current extension (the ``extension_uri`` of the manifest).
EXTENSION_URI = "asdf://astromix.org/astromix/extensions/astromix-1.0.0"

# Manifest file names (without ".yaml") of every extension version, oldest first.
_MANIFESTS = ("astromix-1.0.0",)


def _resources():
    return importlib.resources.files(__package__) / "resources"


def get_resource_mappings():
    """Resource mappings for the astromix schemas and manifests.

    Registered with the ``asdf.resource_mappings`` entry point.  They let
    ``asdf`` find a schema or manifest from its URI, e.g.
    ``asdf.schema.load_schema("asdf://astromix.org/astromix/schemas/gaussian_mixture-1.0.0")``.

    Returns
    -------
    list of asdf.resource.DirectoryResourceMapping
        One mapping from ``asdf://astromix.org/astromix/schemas/`` to the
        packaged ``resources/schemas`` folder and one from
        ``asdf://astromix.org/astromix/manifests/`` to ``resources/manifests``.

    Notes
    -----
    Resource mappings, manifests and schema ``id`` URIs follow the ASDF
    Standard (https://asdf-standard.readthedocs.io, "Extending ASDF") and the
    asdf library's "Resources and resource mappings" documentation.
    """
    from asdf.resource import DirectoryResourceMapping

    root = _resources()
    return [
        DirectoryResourceMapping(root / "schemas", SCHEMA_URI_PREFIX),
        DirectoryResourceMapping(root / "manifests", MANIFEST_URI_PREFIX),
    ]


def _load_manifest(name):
    import yaml

    text = (_resources() / "manifests" / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def supported_tags():
    """The tag URIs this astromix reads, from its packaged manifests.

    Returns
    -------
    list of str
        Every ``tag_uri`` of every manifest version, oldest manifest first,
        e.g. ``"asdf://astromix.org/astromix/tags/exposure-1.0.0"``.  Read
        from the package files; nothing else is imported.
    """
    return [entry["tag_uri"] for name in _MANIFESTS
            for entry in _load_manifest(name).get("tags", [])]


def get_extensions():
    """The astromix ASDF extensions, one per manifest version.

    Registered with the ``asdf.extensions`` entry point.  Each extension is an
    :class:`asdf.extension.ManifestExtension` built from a packaged manifest
    (its URI, the tags it supports and their schemas) and the astromix
    converters from :mod:`astromix.io.asdf.converters`.

    Returns
    -------
    list of asdf.extension.ManifestExtension
        Currently one: ``asdf://astromix.org/astromix/extensions/astromix-1.0.0``,
        which tags :class:`astromix.GaussianMixture` as
        ``asdf://astromix.org/astromix/tags/gaussian_mixture-1.0.0``,
        :class:`astromix.GaussianMixturePSF` as
        ``asdf://astromix.org/astromix/tags/gaussian_mixture_psf-1.0.0``,
        :class:`astromix.SersicMixture` as
        ``asdf://astromix.org/astromix/tags/sersic_mixture-1.0.0``,
        :class:`astromix.PointSource` as
        ``asdf://astromix.org/astromix/tags/point_source-1.0.0``,
        :class:`astromix.data.Exposure` as
        ``asdf://astromix.org/astromix/tags/exposure-1.0.0``,
        :class:`astromix.SceneModel` as
        ``asdf://astromix.org/astromix/tags/scene_model-1.0.0`` and
        :class:`astromix.MoffatStar` as
        ``asdf://astromix.org/astromix/tags/moffat_star-1.0.0``.

    Notes
    -----
    The manifest is read from the package files rather than through the asdf
    resource manager, so this works whether or not
    :func:`get_resource_mappings` has been registered yet.  Manifests and
    extensions follow the ASDF Standard (https://asdf-standard.readthedocs.io,
    "Extending ASDF": extension manifests, tags and schemas).
    """
    from asdf.extension import ManifestExtension

    from .converters import CONVERTERS

    return [ManifestExtension(_load_manifest(name), converters=CONVERTERS)
            for name in _MANIFESTS]
