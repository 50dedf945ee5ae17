"""ASDF support for astromix: the ``astromix-1.0.0`` extension.

Installing astromix registers the extension with the ``asdf`` library through
the ``asdf.extensions`` and ``asdf.resource_mappings`` entry points, so that
astromix objects can be written to and read from ASDF files directly::

    import asdf
    asdf.AsdfFile({"psf": mixture}).write_to("psf.asdf")
    with asdf.open("psf.asdf") as af:
        mixture = af["psf"]

Reading goes through the checked astromix constructors, so an invalid object
in a file (for instance a covariance that is not positive definite) is never
built.  Note that asdf >= 4 by default turns a failed conversion into an
``AsdfConversionWarning`` and leaves the raw node in the tree; use
:func:`open_asdf` (or set ``asdf.get_config().warn_on_failed_conversion =
False``) to get :class:`astromix.InputError` instead.

Tags, schemas and the manifest follow the ASDF Standard
(https://asdf-standard.readthedocs.io), section "Extending ASDF"; the schemas
live in ``resources/schemas`` and the manifest in ``resources/manifests``.

Tagged types
------------
``asdf://astromix.org/astromix/tags/gaussian_mixture-1.0.0``
    :class:`astromix.GaussianMixture`.
``asdf://astromix.org/astromix/tags/gaussian_mixture_psf-1.0.0``
    :class:`astromix.GaussianMixturePSF` (an astropy transform: extends
    transform-1.4.0).
``asdf://astromix.org/astromix/tags/sersic_mixture-1.0.0``
    :class:`astromix.SersicMixture` (an astropy transform: extends
    transform-1.4.0; its PSF, if any, is a nested ``gaussian_mixture``).
``asdf://astromix.org/astromix/tags/point_source-1.0.0``
    :class:`astromix.PointSource` (an astropy transform: extends
    transform-1.4.0; its PSF is a nested ``gaussian_mixture``).
``asdf://astromix.org/astromix/tags/exposure-1.0.0``
    :class:`astromix.data.Exposure` (image, inverse variance, mask, gwcs or
    FITS WCS header, Gaussian-mixture PSF, band, exposure time, zero point).
``asdf://astromix.org/astromix/tags/scene_model-1.0.0``
    :class:`astromix.SceneModel` (bands, catalog zero point, sources on the
    sky, fixed parameters and non-default bounds; a plain object).
``asdf://astromix.org/astromix/tags/moffat_star-1.0.0``
    :class:`astromix.MoffatStar` (an astropy transform: extends
    transform-1.4.0).
"""

import os
import re
import warnings

from .extension import (
    EXTENSION_URI,
    MANIFEST_URI,
    SCHEMA_URI_PREFIX,
    TAG_URI_PREFIX,
    get_extensions,
    get_resource_mappings,
    supported_tags,
)

__all__ = ["open_asdf", "get_extensions", "get_resource_mappings", "EXTENSION_URI",
           "MANIFEST_URI", "SCHEMA_URI_PREFIX", "TAG_URI_PREFIX"]


def open_asdf(fd, *, validate=True, **kwargs):
    """Open an ASDF file strictly: an invalid file raises InputError.

    A thin wrapper around :func:`asdf.open` that, for the duration of the
    call, validates the tree against its schemas and lets a failed conversion
    raise instead of becoming an ``AsdfConversionWarning``.  The whole tree is
    converted on opening (``lazy_tree=False``), so every astromix object in the
    file has been checked when this returns.

    Parameters
    ----------
    fd : str, os.PathLike or file-like
        The ASDF file.
    validate : bool, optional
        Validate the tree against the schemas of its tags (ASDF Standard,
        "Schemas") before converting it.  Default True.
    **kwargs
        Passed to :func:`asdf.open` (e.g. ``memmap``, ``mode``);
        ``lazy_tree`` is not accepted.

    Returns
    -------
    asdf.AsdfFile
        The open file; close it, or use it as a context manager.

    Raises
    ------
    astromix.InputError
        If the file is not a readable ASDF file (including a truncated or
        damaged one: a bad YAML tree, block header or block), does not follow
        its schemas, holds an astromix object that fails its constructor's
        checks (the message names the file and the tag), or holds an astromix
        tag this astromix does not support, e.g. a newer version written by a
        newer astromix (the message names the file, the tag and the supported
        version).
    OSError
        If the file cannot be opened (e.g. it does not exist).

    Notes
    -----
    asdf itself reads an unsupported tag as a raw ``TaggedDict`` with only an
    ``AsdfConversionWarning``; for the tags under
    ``asdf://astromix.org/astromix/tags/`` that warning is turned into the
    InputError above, so that an object this astromix cannot read is never
    handed on as a plain mapping.  Tags of other extensions keep asdf's
    behaviour.

    Examples
    --------
    >>> from astromix.io.asdf import open_asdf
    >>> with open_asdf("psf.asdf") as af:  # doctest: +SKIP
    ...     psf = af["psf"]
    """
    import struct

    import asdf
    import yaml
    from asdf.exceptions import AsdfConversionWarning

    from ...errors import InputError

    if "lazy_tree" in kwargs:
        raise TypeError("open_asdf converts the whole tree on opening; lazy_tree is not accepted")
    name = os.fspath(fd) if isinstance(fd, (str, os.PathLike)) else repr(fd)
    with asdf.config_context() as config, warnings.catch_warnings():
        config.warn_on_failed_conversion = False
        config.validate_on_read = bool(validate)
        # asdf only warns about a tag no extension supports; make it an error for ours
        warnings.filterwarnings("error", message=_UNKNOWN_TAG_MESSAGE,
                                category=AsdfConversionWarning)
        try:
            af = asdf.open(fd, lazy_tree=False, **kwargs)
        except InputError:
            raise
        except AsdfConversionWarning as exc:
            raise _unsupported_tag_error(name, str(exc)) from None
        except asdf.ValidationError as exc:
            raise InputError(f"ASDF file {name!r} does not follow its schemas: {exc.message}"
                             ) from exc
        except (ValueError, TypeError, KeyError, IndexError, EOFError, struct.error,
                yaml.YAMLError) as exc:
            # a damaged or truncated file: the YAML tree, a block header (struct.error)
            # or a block (TypeError from asdf's ndarray converter) cannot be read
            raise InputError(f"ASDF file {name!r} could not be read: {exc}") from exc
    tag = _first_unsupported_tag(af.tree)  # in case asdf words its warning otherwise
    if tag is not None:
        af.close()
        raise _unsupported_tag_error(name, tag)
    return af


#: asdf's warning about a tag no installed extension supports, for an astromix tag.
_UNKNOWN_TAG_MESSAGE = re.escape(TAG_URI_PREFIX) + r"\S* is not recognized"


def _first_unsupported_tag(tree):
    """The first astromix tag left unconverted (a raw asdf ``Tagged`` node) in ``tree``."""
    from asdf.tagged import Tagged

    stack, seen = [tree], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:  # YAML anchors can make a node appear twice, or a cycle
            continue
        seen.add(id(node))
        tag = getattr(node, "_tag", None) if isinstance(node, Tagged) else None
        if isinstance(tag, str) and tag.startswith(TAG_URI_PREFIX):
            return tag
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return None


def _unsupported_tag_error(name, text):
    """InputError naming the file, the astromix tag found in ``text`` and the supported one."""
    from ...errors import InputError

    match = re.search(re.escape(TAG_URI_PREFIX) + r"[^\s,]+", text)
    tag = match.group(0) if match else text
    family = tag[len(TAG_URI_PREFIX):].rsplit("-", 1)[0]
    supported = [t for t in supported_tags() if t[len(TAG_URI_PREFIX):].rsplit("-", 1)[0]
                 == family]
    known = (f"this astromix reads {', '.join(supported)}" if supported
             else "this astromix has no such tag")
    return InputError(f"ASDF file {name!r}: tag {tag!r} is not supported ({known}); the file "
                      "was probably written by a newer astromix")
