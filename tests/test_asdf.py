"""Tests of the astromix ASDF extension (astromix.io.asdf).

These are the schema tests of the ``asdf-schemas`` tox environment, and they also
run in the default test environment.  When astromix is not installed (running
from a source tree), the extension is registered for each test through
``asdf.config_context()``; :func:`test_entry_points` checks the real
registration and is skipped only when astromix is not installed.
"""

import importlib.metadata

import asdf
import asdf.schema
import asdf.util
import numpy as np
import pytest
import yaml
from asdf.tagged import TaggedDict

from astromix import GaussianMixture, InputError
from astromix.io.asdf import (
    EXTENSION_URI,
    MANIFEST_URI,
    get_extensions,
    get_resource_mappings,
    open_asdf,
)
from astromix.io.asdf.converters import GaussianMixtureConverter

TAG = "asdf://astromix.org/astromix/tags/gaussian_mixture-1.0.0"
SCHEMA_URI = "asdf://astromix.org/astromix/schemas/gaussian_mixture-1.0.0"
NDARRAY_TAG_PREFIX = "tag:stsci.edu:asdf/core/ndarray-"


def _installed():
    try:
        importlib.metadata.distribution("astromix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _registered(config):
    return EXTENSION_URI in {ext.extension_uri for ext in config.extensions}


@pytest.fixture
def asdf_config():
    """The asdf configuration with the astromix extension registered.

    Uses the entry points when astromix is installed; otherwise adds the
    extension and its resource mappings to a temporary configuration.
    """
    if _registered(asdf.get_config()):
        yield asdf.get_config()
        return
    with asdf.config_context() as config:
        for mapping in get_resource_mappings():
            config.add_resource_mapping(mapping)
        for extension in get_extensions():
            config.add_extension(extension)
        yield config


def _mixture(k=3, seed=0):
    rng = np.random.default_rng(seed)
    amp = rng.normal(size=k)
    mean = rng.uniform(-50, 50, size=(k, 2))
    a = rng.normal(size=(k, 2, 2))
    cov = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(2)
    return GaussianMixture(amp, mean, cov)


def _write_tagged(path, node, **kwargs):
    """Write a raw tagged node under key "m", bypassing the converter."""
    asdf.AsdfFile({"m": TaggedDict(node, TAG)}).write_to(path, **kwargs)


def _node(mix):
    return {"amp": np.array(mix.amp), "mean": np.array(mix.mean), "cov": np.array(mix.cov)}


# -- round trip -------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["internal", "inline"])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_round_trip(asdf_config, tmp_path, storage, k):
    mix = _mixture(k, seed=k)
    path = tmp_path / "mix.asdf"
    asdf.AsdfFile({"m": mix}).write_to(path, all_array_storage=storage)
    with asdf.open(path) as af:
        back = af["m"]
        assert isinstance(back, GaussianMixture)
        for key in ("amp", "mean", "cov"):
            got, want = getattr(back, key), getattr(mix, key)
            assert got.dtype == np.float64
            assert got.shape == want.shape
            assert np.array_equal(got, want)  # exact, bit for bit
        assert back == mix
    # The mixture owns its data: still usable after the file is closed.
    assert back.flux == mix.flux
    assert not back.amp.flags.writeable


def test_round_trip_in_memory(asdf_config):
    import io

    mix = _mixture(4)
    buf = io.BytesIO()
    asdf.AsdfFile({"m": mix, "other": [mix, 1]}).write_to(buf)
    buf.seek(0)
    with asdf.open(buf) as af:
        assert af["m"] == mix
        assert af["other"][0] == mix


def test_file_stores_float64_ndarrays(asdf_config, tmp_path):
    mix = _mixture(2)
    node = GaussianMixtureConverter().to_yaml_tree(mix, TAG, None)
    assert set(node) == {"amp", "mean", "cov"}
    for key, ndim in (("amp", 1), ("mean", 2), ("cov", 3)):
        assert type(node[key]) is np.ndarray
        assert node[key].dtype == np.float64 and node[key].ndim == ndim

    path = tmp_path / "mix.asdf"
    asdf.AsdfFile({"m": mix}).write_to(path)
    raw = asdf.util.load_yaml(path, tagged=True)
    assert raw["m"]._tag == TAG
    for key, ndim in (("amp", 1), ("mean", 2), ("cov", 3)):
        arr = raw["m"][key]
        assert arr._tag.startswith(NDARRAY_TAG_PREFIX)
        assert arr["datatype"] == "float64"
        assert len(arr["shape"]) == ndim
    # The file says which extension wrote it.
    used = [e["extension_uri"] for e in raw["history"]["extensions"]]
    assert EXTENSION_URI in used


def test_extension_handles_type(asdf_config):
    (ext,) = [e for e in asdf_config.extensions if e.extension_uri == EXTENSION_URI]
    assert TAG in [t.tag_uri for t in ext.tags]
    manager = asdf.AsdfFile().extension_manager
    assert manager.handles_type(GaussianMixture)
    assert manager.handles_tag(TAG)


# -- schema and manifest ----------------------------------------------------------------------

def test_schema_is_valid(asdf_config):
    schema = asdf.schema.load_schema(SCHEMA_URI)
    asdf.schema.check_schema(schema)
    assert schema["id"] == SCHEMA_URI
    assert schema["tag"] == TAG
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"amp", "mean", "cov"}
    for key, ndim in (("amp", 1), ("mean", 2), ("cov", 3)):
        prop = schema["properties"][key]
        assert prop["tag"].startswith(NDARRAY_TAG_PREFIX)
        assert prop["datatype"] == "float64"
        assert prop["ndim"] == ndim
    text = (schema["title"] + schema["description"]).lower()
    assert "pixel" in text and "(x, y)" in text


def test_manifest_lists_tag(asdf_config):
    manifest = yaml.safe_load(asdf_config.resource_manager[MANIFEST_URI])
    meta = asdf.schema.load_schema("asdf://asdf-format.org/core/schemas/extension_manifest-1.0.0")
    asdf.schema.validate(manifest, schema=meta)
    assert manifest["id"] == MANIFEST_URI
    assert manifest["extension_uri"] == EXTENSION_URI
    tags = {t["tag_uri"]: t["schema_uri"] for t in manifest["tags"]}
    assert tags[TAG] == SCHEMA_URI
    # Every schema the manifest names is loadable and valid.
    for schema_uri in tags.values():
        asdf.schema.check_schema(asdf.schema.load_schema(schema_uri))


def test_schema_example_reads(asdf_config, tmp_path):
    schema = yaml.safe_load(asdf_config.resource_manager[SCHEMA_URI])
    assert schema["examples"]
    expected = GaussianMixture([1.0, 0.5], [[10, 12], [11, 12]],
                               [np.eye(2) * 4, np.diag([9.0, 1.0])])
    for description, standard, body in schema["examples"]:
        version = standard.rsplit("-", 1)[-1]
        text = (f"#ASDF 1.0.0\n#ASDF_STANDARD {version}\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                f"--- !core/asdf-1.1.0\nexample: " + body.replace("\n", "\n  ") + "\n...\n")
        path = tmp_path / "example.asdf"
        path.write_text(text)
        with open_asdf(path) as af:  # validates against the schema
            assert isinstance(af["example"], GaussianMixture), description
            assert af["example"] == expected


@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(cov=n["cov"][:, 0, :]), "ndim"),
    (lambda n: n.update(mean=n["mean"].ravel()), "ndim"),
    (lambda n: n.update(amp=n["amp"][:, None]), "ndim"),
    (lambda n: n.update(extra=np.zeros(2)), "Additional properties"),
    (lambda n: n.pop("cov"), "required property"),
    (lambda n: n.update(amp=n["amp"].astype(np.float32)), "float64"),
    (lambda n: n.update(mean=n["mean"].astype(np.int64)), "float64"),
    (lambda n: n.update(amp=n["amp"].tolist()), "tag"),
], ids=["cov-ndim2", "mean-ndim1", "amp-ndim2", "extra-property", "missing-cov",
        "amp-float32", "mean-int64", "amp-plain-list"])
def test_schema_rejects_bad_tree(asdf_config, tmp_path, change, match):
    node = _node(_mixture(2))
    change(node)
    af = asdf.AsdfFile({"m": TaggedDict(node, TAG)})
    with pytest.raises(asdf.ValidationError, match=match):
        af.validate()
    with pytest.raises(asdf.ValidationError):
        af.write_to(tmp_path / "bad.asdf")


def test_schema_accepts_good_tree(asdf_config):
    asdf.AsdfFile({"m": TaggedDict(_node(_mixture(2)), TAG)}).validate()


# -- corrupt and tampered files ------------------------------------------------------------------

def _tampered_file(path):
    """A file whose second covariance was hand-edited to be non-positive-definite."""
    mix = GaussianMixture([1.0, 0.5], [[10, 12], [11, 12]], [np.eye(2) * 4, np.diag([9.0, 1.0])])
    asdf.AsdfFile({"m": mix}).write_to(path, all_array_storage="inline")
    text = path.read_text()
    assert text.count("[9.0, 0.0]") == 1
    path.write_text(text.replace("[9.0, 0.0]", "[-9.0, 0.0]"))
    return path


def _check_message(message, path):
    assert str(path) in message
    assert "gaussian_mixture-1.0.0" in message
    assert "cov is not positive definite in component(s) [1]" in message


def test_tampered_non_positive_definite_cov(asdf_config, tmp_path):
    """A hand-edited file with a non-PD covariance is refused on read."""
    path = _tampered_file(tmp_path / "mix.asdf")
    # astromix's strict reader raises InputError whatever the asdf configuration.
    for warn in (True, False):
        with asdf.config_context() as config:
            config.warn_on_failed_conversion = warn
            with pytest.raises(InputError, match="not positive definite") as info:
                open_asdf(path)
            _check_message(str(info.value), path)
            with pytest.raises(InputError, match="not positive definite"):
                open_asdf(path, validate=False)
    # Plain asdf.open raises the converter's InputError when asdf is told to ...
    with asdf.config_context() as config:
        config.warn_on_failed_conversion = False
        with pytest.raises(InputError, match="not positive definite") as info:
            asdf.open(path)
        _check_message(str(info.value), path)
    # ... and otherwise (asdf >= 4 default) warns with the same message and leaves
    # the raw node: an invalid GaussianMixture is never built.
    with asdf.config_context() as config:
        config.warn_on_failed_conversion = True
        with pytest.warns(asdf.exceptions.AsdfConversionWarning, match="not positive definite"):
            with asdf.open(path) as af:
                assert not isinstance(af["m"], GaussianMixture)
    # The schema alone does not catch it: the tree is schema-valid.
    with asdf.open(path, _force_raw_types=True) as af:
        af.validate()


@pytest.mark.parametrize("storage", ["internal", "inline"])
@pytest.mark.parametrize("change, match", [
    (lambda n: n["cov"].__setitem__((0, 1, 1), -1.0), "not positive definite"),
    (lambda n: n["cov"].__setitem__((0, 0, 1), 5.0), "not symmetric"),
    (lambda n: n["cov"].__setitem__((1, 0, 0), np.nan), "non-finite"),
    (lambda n: n["amp"].__setitem__(0, np.inf), "amp has non-finite"),
    (lambda n: n.update(mean=np.zeros((3, 2))), r"mean must have shape"),
    (lambda n: n.update(cov=np.zeros((2, 3, 3))), r"cov must have shape"),
], ids=["non-pd", "asymmetric", "nan-cov", "inf-amp", "mean-shape", "cov-shape"])
def test_invalid_mixture_in_file(asdf_config, tmp_path, storage, change, match):
    """Schema-valid trees that are not valid mixtures are refused on read."""
    node = _node(_mixture(2))
    change(node)
    path = tmp_path / "bad.asdf"
    _write_tagged(path, node, all_array_storage=storage)
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path)
    assert str(path) in str(info.value)
    assert "gaussian_mixture-1.0.0" in str(info.value)


@pytest.mark.parametrize("change, match", [
    (lambda n: n.pop("mean"), r"missing required property \['mean'\]"),
    (lambda n: n.update(weight=np.ones(2)), r"unexpected property \['weight'\]"),
    (lambda n: n.update(amp=np.array(["a", "b"])), "data type"),
    (lambda n: n.update(cov=np.zeros((2, 2))), "cov must have shape"),
], ids=["missing", "extra", "strings", "cov-ndim2"])
def test_schema_invalid_file(asdf_config, tmp_path, change, match):
    """A schema-invalid node gives InputError, with or without schema validation."""
    node = _node(_mixture(2))
    change(node)
    path = tmp_path / "bad.asdf"
    with pytest.raises(asdf.ValidationError):
        asdf.AsdfFile({"m": TaggedDict(node, TAG)}).write_to(path)  # writing validates
    # Make the bad file anyway: write under an unknown tag, then edit the tag.
    other = "tag:example.org/unvalidated-1.0.0"
    with asdf.config_context() as config:
        config.validate_on_read = False
        asdf.AsdfFile({"m": TaggedDict(node, other)}).write_to(path, all_array_storage="inline")
    path.write_text(path.read_text().replace(other, TAG))
    with pytest.raises(InputError, match="does not follow its schemas") as info:
        open_asdf(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path, validate=False)
    assert str(path) in str(info.value)


def test_open_asdf_not_asdf(tmp_path):
    path = tmp_path / "junk.asdf"
    path.write_bytes(b"SIMPLE  =                    T / not an ASDF file")
    with pytest.raises(InputError, match="could not be read"):
        open_asdf(path)
    with pytest.raises(FileNotFoundError):
        open_asdf(tmp_path / "missing.asdf")
    with pytest.raises(TypeError, match="lazy_tree"):
        open_asdf(path, lazy_tree=True)


def test_open_asdf_round_trip(asdf_config, tmp_path):
    mix = _mixture(5)
    path = tmp_path / "mix.asdf"
    asdf.AsdfFile({"m": mix}).write_to(path)
    with open_asdf(path) as af:
        assert af["m"] == mix


# -- registration -----------------------------------------------------------------------------

def test_resource_mappings():
    mappings = get_resource_mappings()
    uris = {uri for mapping in mappings for uri in mapping}
    assert {SCHEMA_URI, MANIFEST_URI} <= uris
    for mapping in mappings:
        for uri in mapping:
            content = yaml.safe_load(mapping[uri])
            assert content["id"] == uri, "file name and id disagree"


def test_get_extensions():
    (ext,) = get_extensions()
    assert ext.extension_uri == EXTENSION_URI
    assert [t.tag_uri for t in ext.tags] == [TAG]
    assert any(isinstance(c, GaussianMixtureConverter) for c in ext.converters)


@pytest.mark.skipif(not _installed(), reason="astromix is not installed (importlib.metadata "
                    "finds no distribution), so its asdf entry points are not registered")
def test_entry_points():
    groups = {
        "asdf.extensions": "astromix.io.asdf.extension:get_extensions",
        "asdf.resource_mappings": "astromix.io.asdf.extension:get_resource_mappings",
    }
    for group, value in groups.items():
        found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
        assert found.get("astromix") == value, f"entry point astromix missing from {group}"
    # The global configuration (no config_context) finds the extension and the schemas.
    config = asdf.get_config()
    assert _registered(config)
    assert SCHEMA_URI in config.resource_manager
    assert MANIFEST_URI in config.resource_manager
    # And so does a fresh configuration, which reads the entry points anew.
    fresh = asdf.config.AsdfConfig()
    assert _registered(fresh)
    assert SCHEMA_URI in fresh.resource_manager
