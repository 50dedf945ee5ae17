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
from astropy.utils import minversion

from astromix import GaussianMixture, InputError
from astromix.io.asdf import (
    EXTENSION_URI,
    MANIFEST_URI,
    get_extensions,
    get_resource_mappings,
    open_asdf,
)
from astromix.io.asdf.converters import (
    GaussianMixtureConverter,
    GaussianMixturePSFConverter,
    PointSourceConverter,
    SersicMixtureConverter,
)

TAG = "asdf://astromix.org/astromix/tags/gaussian_mixture-1.0.0"
SCHEMA_URI = "asdf://astromix.org/astromix/schemas/gaussian_mixture-1.0.0"
NDARRAY_TAG_PREFIX = "tag:stsci.edu:asdf/core/ndarray-"
PSF_TAG = "asdf://astromix.org/astromix/tags/gaussian_mixture_psf-1.0.0"
PSF_SCHEMA_URI = "asdf://astromix.org/astromix/schemas/gaussian_mixture_psf-1.0.0"
SERSIC_TAG = "asdf://astromix.org/astromix/tags/sersic_mixture-1.0.0"
SERSIC_SCHEMA_URI = "asdf://astromix.org/astromix/schemas/sersic_mixture-1.0.0"
POINT_TAG = "asdf://astromix.org/astromix/tags/point_source-1.0.0"
POINT_SCHEMA_URI = "asdf://astromix.org/astromix/schemas/point_source-1.0.0"
EXPOSURE_TAG = "asdf://astromix.org/astromix/tags/exposure-1.0.0"
SCENE_TAG = "asdf://astromix.org/astromix/tags/scene_model-1.0.0"
EXPOSURE_SCHEMA_URI = "asdf://astromix.org/astromix/schemas/exposure-1.0.0"


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
    # ... and otherwise (the default) warns with the same message and leaves the raw
    # node (asdf >= 5.1; older versions raise whatever the option says): an invalid
    # GaussianMixture is never built.
    with asdf.config_context() as config:
        config.warn_on_failed_conversion = True
        if minversion(asdf, "5.1"):
            with pytest.warns(asdf.exceptions.AsdfConversionWarning,
                              match="not positive definite"):
                with asdf.open(path) as af:
                    assert not isinstance(af["m"], GaussianMixture)
        else:
            with pytest.raises(InputError, match="not positive definite"):
                asdf.open(path)
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
    assert [t.tag_uri for t in ext.tags] == [TAG, PSF_TAG, SERSIC_TAG, POINT_TAG, EXPOSURE_TAG,
                                            SCENE_TAG, MOFFAT_TAG]
    assert any(isinstance(c, GaussianMixtureConverter) for c in ext.converters)
    assert any(isinstance(c, GaussianMixturePSFConverter) for c in ext.converters)
    assert any(isinstance(c, SersicMixtureConverter) for c in ext.converters)
    assert any(isinstance(c, PointSourceConverter) for c in ext.converters)
    # Every tag of the manifest has a converter, and every converter tag is in the manifest.
    converter_tags = {tag for c in ext.converters for tag in c.tags}
    assert converter_tags == {t.tag_uri for t in ext.tags}


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


# -- GaussianMixturePSF -----------------------------------------------------------------------

COMPONENT_COLUMNS = ("amp", "xoff", "yoff", "sigma_x", "sigma_y", "rho")


def _psf(k=3, seed=0, **kwargs):
    """A GaussianMixturePSF with random, well-conditioned components."""
    from astromix import GaussianMixturePSF

    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.1, 1.0, size=k)
    mean = rng.uniform(-0.7, 0.7, size=(k, 2))
    sx, sy = rng.uniform(0.4, 5.0, size=(2, k))
    rho = rng.uniform(-0.8, 0.8, size=k)
    cov = np.empty((k, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sx ** 2, sy ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sx * sy
    kwargs = {"flux": 123.25, "x_0": 14.3, "y_0": 11.8, **kwargs}
    return GaussianMixturePSF(GaussianMixture(amp, mean, cov), **kwargs)


def _check_same_psf(back, psf):
    from astromix import GaussianMixturePSF

    assert isinstance(back, GaussianMixturePSF)
    assert back.param_names == psf.param_names
    for name in psf.param_names:
        got, want = getattr(back, name), getattr(psf, name)
        if name.startswith("rho_"):
            # rho is rebuilt from the covariance: equal to within one ulp, and the
            # covariance it gives back is bit-identical (checked below).
            assert abs(got.value - want.value) <= np.spacing(abs(want.value)), name
        else:
            assert got.value == want.value, name
        assert got.fixed == want.fixed, name
        assert got.bounds == want.bounds, name
        assert got.unit == want.unit, name
    assert back.name == psf.name
    for key in ("amp", "mean", "cov"):
        assert np.array_equal(getattr(back.mixture, key), getattr(psf.mixture, key)), key
    assert back.settings == psf.settings
    y, x = np.mgrid[-2:28, -3:31]
    assert np.array_equal(back(x, y), psf(x, y))  # evaluation identical, bit for bit


@pytest.mark.parametrize("storage", ["internal", "inline"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_psf_round_trip(asdf_config, tmp_path, storage, k):
    psf = _psf(k, seed=10 + k, name=f"psf{k}")
    # Non-default fixed flags and bounds, both ways.
    psf.flux.fixed = True
    psf.y_0.fixed = True
    getattr(psf, f"sigma_x_{k - 1}").fixed = False
    getattr(psf, f"rho_{k - 1}").fixed = False
    psf.x_0.bounds = (10.0, 20.0)
    psf.flux.bounds = (0.0, None)  # asdf-astropy's base class would drop this one
    psf.sigma_y_0.bounds = (None, None)
    path = tmp_path / "psf.asdf"
    asdf.AsdfFile({"psf": psf}).write_to(path, all_array_storage=storage)
    with open_asdf(path) as af:  # validates against the schemas
        back = af["psf"]
        _check_same_psf(back, psf)
    assert back.fixed == psf.fixed
    assert back.bounds == psf.bounds
    assert back.flux.fixed and back.y_0.fixed and not back.x_0.fixed
    assert not getattr(back, f"sigma_x_{k - 1}").fixed and back.amp_0.fixed


def test_psf_round_trip_many_rho(asdf_config):
    """Every covariance and evaluation survives exactly, over many random components."""
    import io

    psf = _psf(40, seed=3)
    buf = io.BytesIO()
    asdf.AsdfFile({"psf": psf}).write_to(buf)
    buf.seek(0)
    with asdf.open(buf) as af:
        _check_same_psf(af["psf"], psf)


def test_psf_default_flags_and_layout(asdf_config, tmp_path):
    psf = _psf(2, seed=1)
    path = tmp_path / "psf.asdf"
    asdf.AsdfFile({"psf": psf}).write_to(path, all_array_storage="inline")
    raw = asdf.util.load_yaml(path, tagged=True)["psf"]
    assert raw._tag == PSF_TAG
    assert raw["mixture"]._tag == TAG  # the shape is a nested gaussian_mixture
    assert raw["component_fixed"] == [[True] * 6, [True] * 6]
    assert (raw["flux_fixed"], raw["x_0_fixed"], raw["y_0_fixed"]) == (False, False, False)
    assert raw["flux"] == 123.25 and raw["x_0"] == 14.3 and raw["y_0"] == 11.8
    assert raw["inputs"] == ["x", "y"] and raw["outputs"] == ["z"]
    # Default bounds, no name, no user bounding box, default settings: nothing written.
    for key in ("bounds", "fixed", "name", "bounding_box", "settings"):
        assert key not in raw, key
    with asdf.open(path) as af:
        back = af["psf"]
    _check_same_psf(back, psf)
    assert back._user_bounding_box is None
    assert back.bounding_box.bounding_box() == psf.bounding_box.bounding_box()


def test_psf_bounding_box_and_settings(asdf_config, tmp_path):
    from astromix import AccuracySettings

    settings = AccuracySettings(n_sigma=6.0, pixel_integration="variance")
    psf = _psf(3, seed=2, settings=settings, name="F200W")
    psf.bounding_box = ((0.0, 25.0), (1.0, 30.0))
    path = tmp_path / "psf.asdf"
    asdf.AsdfFile({"psf": psf}).write_to(path)
    with open_asdf(path) as af:
        back = af["psf"]
    _check_same_psf(back, psf)
    assert back.settings == settings
    assert back.bounding_box.bounding_box() == ((0.0, 25.0), (1.0, 30.0))
    y, x = np.mgrid[-5:35, -5:35]
    assert np.array_equal(back(x, y, with_bounding_box=True),
                          psf(x, y, with_bounding_box=True), equal_nan=True)


def test_psf_unnormalised_amplitudes(asdf_config):
    """Free amplitudes that no longer sum to 1 are written and read as they are."""
    import io

    psf = _psf(3, seed=4)
    psf.amp_0 = 1.5
    psf.amp_2 = -0.05
    assert abs(sum(getattr(psf, f"amp_{k}").value for k in range(3)) - 1) > 0.1
    buf = io.BytesIO()
    asdf.AsdfFile({"psf": psf}).write_to(buf)
    buf.seek(0)
    with asdf.open(buf) as af:
        _check_same_psf(af["psf"], psf)


def test_psf_quantity_flux(asdf_config):
    import io

    import astropy.units as u

    psf = _psf(2, seed=5, flux=3.5 * u.nJy)
    buf = io.BytesIO()
    asdf.AsdfFile({"psf": psf}).write_to(buf)
    buf.seek(0)
    with asdf.open(buf) as af:
        back = af["psf"]
        assert back.flux.unit == u.nJy
        _check_same_psf(back, psf)


def test_psf_in_a_tree(asdf_config, tmp_path):
    """GaussianMixturePSF objects anywhere in a tree, next to other tagged objects."""
    import astromix

    psfs = [_psf(2, seed=6, name="F150W"), _psf(4, seed=7, name="F200W")]
    tree = {"bands": {"F150W": psfs[0], "F200W": psfs[1]}, "list": [psfs[1], 3],
            "shape": psfs[0].mixture, "meta": {"instrument": "NIRCam"}}
    path = tmp_path / "tree.asdf"
    asdf.AsdfFile(tree).write_to(path)
    with open_asdf(path) as af:
        assert isinstance(af["bands"]["F150W"], astromix.GaussianMixturePSF)
        _check_same_psf(af["bands"]["F150W"], psfs[0])
        _check_same_psf(af["bands"]["F200W"], psfs[1])
        _check_same_psf(af["list"][0], psfs[1])
        assert af["list"][1] == 3
        assert af["shape"] == psfs[0].mixture
        assert af["meta"]["instrument"] == "NIRCam"


def test_psf_fitted_model_round_trip(asdf_config, tmp_path):
    """A PSF fitted by fit_psf_mixture (what users will save) survives the round trip."""
    from astromix.fitting import fit_psf_mixture

    y, x = np.mgrid[:25, :25]
    image = np.exp(-((x - 12.3) ** 2 + (y - 11.8) ** 2) / (2 * 2.0 ** 2))
    image += 0.2 * np.exp(-((x - 12.3) ** 2 + (y - 11.8) ** 2) / (2 * 5.0 ** 2))
    psf = fit_psf_mixture(image, 2, oversampling=2, rng=0, n_starts=1)
    path = tmp_path / "fit.asdf"
    asdf.AsdfFile({"psf": psf}).write_to(path)
    with open_asdf(path) as af:
        _check_same_psf(af["psf"], psf)


def test_psf_tied_warns(asdf_config):
    import io

    psf = _psf(2, seed=8)
    psf.y_0.tied = lambda model: model.x_0
    with pytest.warns(asdf.exceptions.AsdfWarning, match="tied"):
        asdf.AsdfFile({"psf": psf}).write_to(io.BytesIO())


def test_psf_extension_handles_type(asdf_config):
    from astromix import GaussianMixturePSF

    manager = asdf.AsdfFile().extension_manager
    assert manager.handles_type(GaussianMixturePSF)
    assert manager.handles_tag(PSF_TAG)


def test_psf_schema_is_valid(asdf_config):
    schema = asdf.schema.load_schema(PSF_SCHEMA_URI)
    asdf.schema.check_schema(schema)
    assert schema["id"] == PSF_SCHEMA_URI
    assert schema["tag"] == PSF_TAG
    ref, own = schema["allOf"]
    # transform-1.4.0 is the newest transform base schema asdf-transform-schemas ships.
    assert ref == {"$ref": "http://stsci.edu/schemas/asdf/transform/transform-1.4.0"}
    assert asdf.schema.load_schema(ref["$ref"])  # resolvable
    assert own["additionalProperties"] is False
    assert set(own["required"]) == {"mixture", "flux", "x_0", "y_0"}
    base = asdf.schema.load_schema(ref["$ref"])
    # additionalProperties: false must not reject the transform's own properties.
    assert set(base["properties"]) <= set(own["properties"])
    assert own["properties"]["mixture"]["tag"].startswith(TAG.rsplit("-", 1)[0])


def test_psf_manifest_lists_tag(asdf_config):
    manifest = yaml.safe_load(asdf_config.resource_manager[MANIFEST_URI])
    assert manifest["id"] == MANIFEST_URI
    tags = {t["tag_uri"]: t["schema_uri"] for t in manifest["tags"]}
    assert tags[PSF_TAG] == PSF_SCHEMA_URI
    assert tags[TAG] == SCHEMA_URI


def test_psf_schema_example_reads(asdf_config, tmp_path):
    from astromix import GaussianMixturePSF

    schema = yaml.safe_load(asdf_config.resource_manager[PSF_SCHEMA_URI])
    assert schema["examples"]
    expected = GaussianMixturePSF(
        GaussianMixture([0.75, 0.25], [[0, 0], [0, 0]], [np.eye(2), np.eye(2) * 9]),
        flux=1.0, x_0=12.0, y_0=10.0, name="psf")
    for description, standard, body in schema["examples"]:
        version = standard.rsplit("-", 1)[-1]
        text = (f"#ASDF 1.0.0\n#ASDF_STANDARD {version}\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                f"--- !core/asdf-1.1.0\nexample: " + body.replace("\n", "\n  ") + "\n...\n")
        path = tmp_path / "example.asdf"
        path.write_text(text)
        with open_asdf(path) as af:  # validates against the schema
            assert isinstance(af["example"], GaussianMixturePSF), description
            _check_same_psf(af["example"], expected)


def _psf_node(psf):
    """The raw node of a PSF, with the mixture as a raw tagged node too."""
    node = GaussianMixturePSFConverter().to_yaml_tree(psf, PSF_TAG, None)
    node["mixture"] = TaggedDict(_node(node["mixture"]), TAG)
    return node


@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(extra=1.0), "Additional properties"),
    (lambda n: n.pop("mixture"), "required property"),
    (lambda n: n.pop("x_0"), "required property"),
    (lambda n: n.update(flux="bright"), "flux"),
    (lambda n: n.update(component_fixed=[[True] * 5, [True] * 5]), "too short"),
    (lambda n: n.update(component_fixed=[[1, 1, 1, 1, 1, 1]] * 2), "boolean"),
    (lambda n: n.update(flux_fixed="yes"), "boolean"),
    (lambda n: n.update(settings={"n_sigma": 9.0}), "maximum"),
    (lambda n: n.update(settings={"colour": "red"}), "Additional properties"),
    (lambda n: n.update(mixture=np.ones(3)), "tag"),
    (lambda n: n.update(name=3), "string"),
], ids=["extra", "missing-mixture", "missing-x_0", "flux-string", "fixed-row-5",
        "fixed-ints", "flux_fixed-string", "settings-range", "settings-extra",
        "mixture-untagged", "name-not-string"])
def test_psf_schema_rejects_bad_tree(asdf_config, change, match):
    node = _psf_node(_psf(2, seed=9))
    change(node)
    af = asdf.AsdfFile({"p": TaggedDict(node, PSF_TAG)})
    with pytest.raises(asdf.ValidationError, match=match):
        af.validate()


def test_psf_schema_accepts_transform_properties(asdf_config):
    """name, bounding_box, fixed and bounds of transform-1.4.0 pass additionalProperties."""
    node = _psf_node(_psf(2, seed=9))
    node.update(name="psf", bounding_box=[[0.0, 10.0], [1.0, 12.0]], fixed={"flux": True},
                bounds={"x_0": [0.0, None]})
    asdf.AsdfFile({"p": TaggedDict(node, PSF_TAG)}).validate()


@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(component_fixed=[[True] * 6] * 3), "component_fixed must be 2 rows"),
    (lambda n: n["mixture"].update(amp=np.zeros(2)), "positive sum"),
    (lambda n: n["mixture"]["cov"].__setitem__((1, 1, 1), -1.0), "not positive definite"),
], ids=["fixed-rows", "zero-amp", "non-pd"])
def test_psf_invalid_content_in_file(asdf_config, tmp_path, change, match):
    """Schema-valid files that make no valid PSF are refused on read, naming file and tag."""
    node = _psf_node(_psf(2, seed=9))
    change(node)
    path = tmp_path / "bad.asdf"
    asdf.AsdfFile({"p": TaggedDict(node, PSF_TAG)}).write_to(path)
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path)
    assert str(path) in str(info.value)
    assert "gaussian_mixture" in str(info.value)


@pytest.mark.parametrize("change, match", [
    (lambda m: setattr(m, "flux", np.nan), r"non-finite value of \['flux'\]"),
    (lambda m: setattr(m, "y_0", np.inf), r"non-finite value of \['y_0'\]"),
    (lambda m: setattr(m, "sigma_x_1", np.nan), "non-finite"),
    (lambda m: setattr(m, "rho_0", 1.5), "not positive definite"),
], ids=["flux-nan", "y0-inf", "sigma-nan", "rho-non-pd"])
def test_psf_invalid_model_not_written(asdf_config, change, match):
    """A PSF that could not be read back is refused on writing, naming its tag."""
    import io

    model = _psf(2, seed=3)
    change(model)
    with pytest.raises(InputError, match=match) as info:
        asdf.AsdfFile({"p": model}).write_to(io.BytesIO())
    assert "cannot write GaussianMixturePSF" in str(info.value)
    assert "gaussian_mixture_psf-1.0.0" in str(info.value)


def test_psf_non_finite_flux_in_file_is_refused(asdf_config, tmp_path):
    """A schema-valid file whose flux is NaN is refused on read, naming file and tag."""
    node = _psf_node(_psf(2, seed=9))
    node["flux"] = float("nan")
    path = tmp_path / "nan.asdf"
    asdf.AsdfFile({"p": TaggedDict(node, PSF_TAG)}).write_to(path)
    with pytest.raises(InputError, match="non-finite value of") as info:
        open_asdf(path)
    assert str(path) in str(info.value)


def test_psf_hand_written_fixed_mapping_applies(asdf_config, tmp_path):
    """A transform-1.4.0 ``fixed`` mapping in a hand-written file is honoured."""
    node = _psf_node(_psf(2, seed=9))
    node["fixed"] = {"flux": True, "amp_1": False}
    path = tmp_path / "fixed.asdf"
    asdf.AsdfFile({"p": TaggedDict(node, PSF_TAG)}).write_to(path)
    with open_asdf(path) as af:
        back = af["p"]
    assert back.flux.fixed and not back.amp_1.fixed and back.amp_0.fixed


# -- SersicMixture and PointSource ------------------------------------------------------------

SERSIC_PARAMETERS = ("flux", "x_0", "y_0", "r_eff", "n", "ellip", "theta")
POINT_PARAMETERS = ("flux", "x_0", "y_0")


def _sersic_table_missing():
    """Why a SersicMixture cannot be evaluated here (None when it can).

    Evaluating a SersicMixture needs :mod:`astromix.models.sersic_table` and
    its data file ``astromix/models/data/sersic_mixtures.npz``.
    """
    import importlib.resources

    try:
        import astromix.models.sersic_table  # noqa: F401
    except ImportError as exc:
        return f"astromix.models.sersic_table is not importable ({exc})"
    data = importlib.resources.files("astromix.models") / "data" / "sersic_mixtures.npz"
    if not data.is_file():
        return "the Sersic mixture table astromix/models/data/sersic_mixtures.npz is missing"
    return None


def _sersic(psf=None, **kwargs):
    from astromix import SersicMixture

    kwargs = {"flux": 104.5, "x_0": 31.3, "y_0": 29.6, "r_eff": 3.7, "n": 1.8,
              "ellip": 0.35, "theta": 0.6, **kwargs}
    return SersicMixture(psf=psf, **kwargs)


def _point(psf=None, **kwargs):
    from astromix import PointSource

    kwargs = {"flux": 52.25, "x_0": 10.4, "y_0": 12.7, **kwargs}
    return PointSource(psf=_psf(2, seed=21) if psf is None else psf, **kwargs)


def _check_same_source(back, model, *, evaluate=True):
    """Parameters, flags, bounds, PSF and settings equal; evaluation identical.

    The evaluation of a SersicMixture is compared only when the Sersic table
    is available; otherwise the test is skipped at that point, after every
    other check has passed.
    """
    from astromix import SersicMixture

    assert type(back) is type(model)
    assert back.param_names == model.param_names
    for name in model.param_names:
        got, want = getattr(back, name), getattr(model, name)
        assert got.value == want.value, name
        assert got.fixed == want.fixed, name
        assert got.bounds == want.bounds, name
        assert got.unit == want.unit, name
    assert back.fixed == model.fixed
    assert back.bounds == model.bounds
    assert back.name == model.name
    assert back.inputs == model.inputs and back.outputs == model.outputs
    if model.psf is None:
        assert back.psf is None
    else:
        for key in ("amp", "mean", "cov"):
            assert np.array_equal(getattr(back.psf, key), getattr(model.psf, key)), key
    assert back._settings == model._settings
    assert back.settings == model.settings
    if not evaluate:
        return
    if isinstance(model, SersicMixture):
        reason = _sersic_table_missing()
        if reason is not None:
            pytest.skip(f"evaluation comparison skipped: {reason}")
    y, x = np.mgrid[-3:40, -2:45]
    want = model(x, y)
    assert np.array_equal(back(x, y), want)  # evaluation identical, bit for bit
    assert np.any(np.asarray(getattr(want, "value", want)) != 0)


@pytest.mark.parametrize("storage", ["internal", "inline"])
@pytest.mark.parametrize("with_psf", [False, True], ids=["no-psf", "psf"])
def test_sersic_round_trip(asdf_config, tmp_path, storage, with_psf):
    from astromix import AccuracySettings

    psf = _psf(3, seed=20) if with_psf else None
    gal = _sersic(psf=psf, name="disc",
                  settings=AccuracySettings(n_sigma=6.0, pixel_integration="variance",
                                            merge_tolerance=1e-4))
    # Non-default fixed flags and bounds.
    gal.n.fixed = True
    gal.theta.fixed = True
    gal.x_0.bounds = (25.0, 35.0)
    gal.flux.bounds = (0.0, None)  # asdf-astropy's base class would drop this one
    gal.n.bounds = (0.5, 6.0)
    gal.ellip.bounds = (None, None)
    path = tmp_path / "gal.asdf"
    asdf.AsdfFile({"gal": gal}).write_to(path, all_array_storage=storage)
    raw = asdf.util.load_yaml(path, tagged=True)["gal"]
    assert raw._tag == SERSIC_TAG
    if with_psf:
        assert raw["psf"]._tag == TAG  # the PSF is a nested gaussian_mixture
    else:
        assert "psf" not in raw
    assert raw["bounds"] == {"x_0": [25.0, 35.0], "flux": [0.0, None], "n": [0.5, 6.0],
                             "ellip": [None, None]}
    with open_asdf(path) as af:  # validates against the schemas
        back = af["gal"]
    assert back.n.fixed and back.theta.fixed and not back.flux.fixed
    assert back.r_eff.bounds == (1e-3, None)  # a default bound, not written, restored
    _check_same_source(back, gal)


def test_sersic_default_flags_and_layout(asdf_config, tmp_path):
    gal = _sersic()
    path = tmp_path / "gal.asdf"
    asdf.AsdfFile({"gal": gal}).write_to(path)
    raw = asdf.util.load_yaml(path, tagged=True)["gal"]
    for name in SERSIC_PARAMETERS:
        assert raw[name] == getattr(gal, name).value, name
        assert raw[f"{name}_fixed"] is False, name
    assert raw["inputs"] == ["x", "y"] and raw["outputs"] == ["z"]
    # Default bounds, no name, no user bounding box, default settings, no PSF: not written.
    for key in ("bounds", "fixed", "name", "bounding_box", "settings", "psf"):
        assert key not in raw, key
    with open_asdf(path) as af:
        back = af["gal"]
    assert back._user_bounding_box is None
    _check_same_source(back, gal)


def test_sersic_quantity_flux_and_bounding_box(asdf_config, tmp_path):
    import astropy.units as u

    gal = _sersic(flux=3.5 * u.nJy, psf=_psf(2, seed=22).mixture)
    gal.bounding_box = ((0.0, 40.0), (2.0, 44.0))
    path = tmp_path / "gal.asdf"
    asdf.AsdfFile({"gal": gal}).write_to(path)
    with open_asdf(path) as af:
        back = af["gal"]
    assert back.flux.unit == u.nJy
    assert back.bounding_box.bounding_box() == ((0.0, 40.0), (2.0, 44.0))
    _check_same_source(back, gal)


@pytest.mark.parametrize("storage", ["internal", "inline"])
def test_point_source_round_trip(asdf_config, tmp_path, storage):
    from astromix import AccuracySettings

    # From a GaussianMixturePSF: the model keeps (and the file stores) its mixture.
    star = _point(psf=_psf(3, seed=23), name="star",
                  settings=AccuracySettings(pixel_integration="none"))
    star.x_0.fixed = True
    star.y_0.bounds = (5.0, None)
    star.bounding_box = ((0.0, 30.0), (1.0, 28.0))
    path = tmp_path / "star.asdf"
    asdf.AsdfFile({"star": star}).write_to(path, all_array_storage=storage)
    raw = asdf.util.load_yaml(path, tagged=True)["star"]
    assert raw._tag == POINT_TAG
    assert raw["psf"]._tag == TAG
    assert (raw["flux_fixed"], raw["x_0_fixed"], raw["y_0_fixed"]) == (False, True, False)
    assert raw["bounds"] == {"y_0": [5.0, None]}
    with open_asdf(path) as af:
        back = af["star"]
    assert back.bounding_box.bounding_box() == ((0.0, 30.0), (1.0, 28.0))
    _check_same_source(back, star)  # a PointSource evaluates without the Sersic table
    y, x = np.mgrid[-5:35, -5:35]
    assert np.array_equal(back(x, y, with_bounding_box=True),
                          star(x, y, with_bounding_box=True), equal_nan=True)


def test_point_source_quantity_flux(asdf_config):
    import io

    import astropy.units as u

    star = _point(flux=7.0 * u.nJy, psf=_psf(2, seed=24).mixture)
    buf = io.BytesIO()
    asdf.AsdfFile({"star": star}).write_to(buf)
    buf.seek(0)
    with asdf.open(buf) as af:
        back = af["star"]
        assert back.flux.unit == u.nJy
        _check_same_source(back, star)


def test_sources_in_a_tree(asdf_config, tmp_path):
    """Galaxies and stars sharing one PSF, next to the PSF model itself."""
    from astromix import PointSource, SersicMixture

    psf = _psf(2, seed=25, name="F200W")
    sources = [_sersic(psf=psf), _sersic(psf=psf, n=4.0, r_eff=8.0), _point(psf=psf)]
    path = tmp_path / "scene.asdf"
    asdf.AsdfFile({"psf": psf, "sources": sources, "meta": {"band": "F200W"}}).write_to(path)
    with open_asdf(path) as af:
        _check_same_psf(af["psf"], psf)
        got = af["sources"]
        assert [type(s) for s in got] == [SersicMixture, SersicMixture, PointSource]
        for back, model in zip(got, sources):
            _check_same_source(back, model, evaluate=False)
        assert af["meta"]["band"] == "F200W"
        y, x = np.mgrid[:30, :30]
        assert np.array_equal(got[2](x, y), sources[2](x, y))


@pytest.mark.parametrize("make", [_sersic, _point], ids=["sersic", "point"])
def test_source_tied_warns(asdf_config, make):
    import io

    model = make()
    model.y_0.tied = lambda m: m.x_0
    with pytest.warns(asdf.exceptions.AsdfWarning, match="tied"):
        asdf.AsdfFile({"m": model}).write_to(io.BytesIO())


def test_source_extension_handles_types(asdf_config):
    from astromix import PointSource, SersicMixture

    manager = asdf.AsdfFile().extension_manager
    assert manager.handles_type(SersicMixture)
    assert manager.handles_type(PointSource)
    assert manager.handles_tag(SERSIC_TAG)
    assert manager.handles_tag(POINT_TAG)


@pytest.mark.parametrize("schema_uri, tag, required", [
    (SERSIC_SCHEMA_URI, SERSIC_TAG, set(SERSIC_PARAMETERS)),
    (POINT_SCHEMA_URI, POINT_TAG, set(POINT_PARAMETERS) | {"psf"}),
], ids=["sersic", "point"])
def test_source_schema_is_valid(asdf_config, schema_uri, tag, required):
    schema = asdf.schema.load_schema(schema_uri)
    asdf.schema.check_schema(schema)
    assert schema["id"] == schema_uri
    assert schema["tag"] == tag
    ref, own = schema["allOf"]
    assert ref == {"$ref": "http://stsci.edu/schemas/asdf/transform/transform-1.4.0"}
    base = asdf.schema.load_schema(ref["$ref"])
    assert own["additionalProperties"] is False
    assert set(own["required"]) == required
    # additionalProperties: false must not reject the transform's own properties.
    assert set(base["properties"]) <= set(own["properties"])
    for name in required - {"psf"}:
        assert f"{name}_fixed" in own["properties"], name
        assert own["properties"][f"{name}_fixed"]["type"] == "boolean"
    assert own["properties"]["psf"]["tag"].startswith(TAG.rsplit("-", 1)[0])
    text = (schema["title"] + schema["description"]).lower()
    assert "pixel" in text and "(x, y)" in text


def test_source_manifest_lists_tags(asdf_config):
    manifest = yaml.safe_load(asdf_config.resource_manager[MANIFEST_URI])
    meta = asdf.schema.load_schema("asdf://asdf-format.org/core/schemas/extension_manifest-1.0.0")
    asdf.schema.validate(manifest, schema=meta)
    tags = {t["tag_uri"]: t["schema_uri"] for t in manifest["tags"]}
    assert tags[SERSIC_TAG] == SERSIC_SCHEMA_URI
    assert tags[POINT_TAG] == POINT_SCHEMA_URI
    for schema_uri in tags.values():
        asdf.schema.check_schema(asdf.schema.load_schema(schema_uri))


def _example_models():
    from astromix import PointSource, SersicMixture

    disc = SersicMixture(100.0, 32.0, 30.0, 4.0, 1.0, 0.3, 0.5, name="disc",
                         psf=GaussianMixture([0.75, 0.25], [[0, 0], [0, 0]],
                                             [np.eye(2), np.eye(2) * 9]))
    disc.n.fixed = True
    star = PointSource(50.0, 10.0, 12.0, name="star",
                       psf=GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 2.0]))
    star.x_0.fixed = star.y_0.fixed = True
    return {SERSIC_SCHEMA_URI: disc, POINT_SCHEMA_URI: star}


@pytest.mark.parametrize("schema_uri", [SERSIC_SCHEMA_URI, POINT_SCHEMA_URI],
                         ids=["sersic", "point"])
def test_source_schema_example_reads(asdf_config, tmp_path, schema_uri):
    schema = yaml.safe_load(asdf_config.resource_manager[schema_uri])
    assert schema["examples"]
    expected = _example_models()[schema_uri]
    for description, standard, body in schema["examples"]:
        version = standard.rsplit("-", 1)[-1]
        text = (f"#ASDF 1.0.0\n#ASDF_STANDARD {version}\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                f"--- !core/asdf-1.1.0\nexample: " + body.replace("\n", "\n  ") + "\n...\n")
        path = tmp_path / "example.asdf"
        path.write_text(text)
        with open_asdf(path) as af:  # validates against the schema
            assert isinstance(af["example"], type(expected)), description
            _check_same_source(af["example"], expected, evaluate=False)


def _source_node(model, tag):
    """The raw node of a source, with its PSF as a raw tagged node too."""
    converter = SersicMixtureConverter() if tag == SERSIC_TAG else PointSourceConverter()
    node = converter.to_yaml_tree(model, tag, None)
    if "psf" in node:
        node["psf"] = TaggedDict(_node(node["psf"]), TAG)
    return node


_SOURCES = {"sersic": (lambda: _sersic(psf=_psf(2, seed=26)), SERSIC_TAG),
            "point": (_point, POINT_TAG)}


@pytest.mark.parametrize("kind", ["sersic", "point"])
@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(extra=1.0), "Additional properties"),
    (lambda n: n.pop("x_0"), "required property"),
    (lambda n: n.update(flux="bright"), "flux"),
    (lambda n: n.update(y_0=[1.0, 2.0]), "y_0"),
    (lambda n: n.update(flux_fixed="yes"), "boolean"),
    (lambda n: n.update(settings={"n_sigma": 9.0}), "maximum"),
    (lambda n: n.update(settings={"colour": "red"}), "Additional properties"),
    (lambda n: n.update(psf=np.ones(3)), "tag"),
    (lambda n: n.update(name=3), "string"),
], ids=["extra", "missing-x_0", "flux-string", "y_0-list", "flux_fixed-string",
        "settings-range", "settings-extra", "psf-untagged", "name-not-string"])
def test_source_schema_rejects_bad_tree(asdf_config, kind, change, match):
    make, tag = _SOURCES[kind]
    node = _source_node(make(), tag)
    change(node)
    af = asdf.AsdfFile({"s": TaggedDict(node, tag)})
    with pytest.raises(asdf.ValidationError, match=match):
        af.validate()


@pytest.mark.parametrize("change, match, tag", [
    (lambda n: n.pop("psf"), "required property", POINT_TAG),
    (lambda n: n.pop("r_eff"), "required property", SERSIC_TAG),
    (lambda n: n.update(n_fixed=1), "boolean", SERSIC_TAG),
], ids=["point-no-psf", "sersic-no-r_eff", "sersic-n_fixed-int"])
def test_source_schema_rejects_kind_specific(asdf_config, change, match, tag):
    make = _SOURCES["sersic" if tag == SERSIC_TAG else "point"][0]
    node = _source_node(make(), tag)
    change(node)
    with pytest.raises(asdf.ValidationError, match=match):
        asdf.AsdfFile({"s": TaggedDict(node, tag)}).validate()


def test_sersic_schema_allows_no_psf(asdf_config):
    node = _source_node(_sersic(), SERSIC_TAG)
    assert "psf" not in node
    asdf.AsdfFile({"s": TaggedDict(node, SERSIC_TAG)}).validate()


@pytest.mark.parametrize("kind", ["sersic", "point"])
def test_source_schema_accepts_transform_properties(asdf_config, kind):
    """name, bounding_box, fixed and bounds of transform-1.4.0 pass additionalProperties."""
    make, tag = _SOURCES[kind]
    node = _source_node(make(), tag)
    node.update(name="src", bounding_box=[[0.0, 10.0], [1.0, 12.0]], fixed={"flux": True},
                bounds={"x_0": [0.0, None]})
    asdf.AsdfFile({"s": TaggedDict(node, tag)}).validate()


@pytest.mark.parametrize("kind, change, match, validate, names", [
    ("sersic", lambda n: n["psf"]["cov"].__setitem__((1, 1, 1), -1.0),
     "not positive definite", True, "gaussian_mixture"),
    ("point", lambda n: n["psf"]["mean"].__setitem__((0, 1), np.nan), "non-finite", True,
     "gaussian_mixture"),
    ("sersic", lambda n: n.update(r_eff=-2.0), "r_eff must be > 0", True, "sersic_mixture"),
    ("sersic", lambda n: n.update(ellip=1.0), r"ellip must lie in \[0, 1\)", True,
     "sersic_mixture"),
    ("sersic", lambda n: n.update(theta=float("nan")), "non-finite", True, "sersic_mixture"),
    ("point", lambda n: n.update(flux=float("inf")), "non-finite", True, "point_source"),
    # Without schema validation, the converter's own checks still refuse the node.
    ("point", lambda n: n.pop("psf"), "missing required property", False, "point_source"),
    ("sersic", lambda n: n.pop("n"), "missing required property", False, "sersic_mixture"),
    ("sersic", lambda n: n.update(psf=[1.0, 2.0]), "psf is not a valid", False,
     "sersic_mixture"),
    ("point", lambda n: n.update(flux="bright"), "flux must be a number", False,
     "point_source"),
    ("sersic", lambda n: n.update(n_fixed="yes"), "n_fixed must be a boolean", False,
     "sersic_mixture"),
    ("point", lambda n: n.update(settings={"n_sigma": 9.0}), "n_sigma", False,
     "point_source"),
    # an index outside the Sersic table (it had been read, to fail when evaluated) and
    # bounds of a parameter the model lacks (a bare AttributeError in asdf-astropy)
    ("sersic", lambda n: n.update(n=9.0), r"outside the mixture table's range \[0.3, 8",
     True, "sersic_mixture"),
    ("sersic", lambda n: n.update(bounds={"nn": [1.0, 2.0]}), r"unknown parameters \['nn'\]",
     True, "sersic_mixture"),
], ids=["sersic-psf-non-pd", "point-psf-nan", "sersic-r_eff", "sersic-ellip",
        "sersic-nan", "point-inf", "point-no-psf", "sersic-no-n", "sersic-psf-list",
        "point-flux-string", "sersic-fixed-string", "point-settings", "sersic-n-9",
        "sersic-bounds-name"])
def test_source_invalid_content_in_file(asdf_config, tmp_path, kind, change, match, validate,
                                        names):
    """Files that make no valid source are refused on read, naming the file and the tag."""
    make, tag = _SOURCES[kind]
    node = _source_node(make(), tag)
    change(node)
    path = tmp_path / "bad.asdf"
    if validate:
        asdf.AsdfFile({"s": TaggedDict(node, tag)}).write_to(path)
    else:
        # asdf validates on writing: write under a tag without a schema, inline,
        # then put the real tag in the YAML text.
        placeholder = "asdf://astromix.org/astromix/tags/placeholder-1.0.0"
        asdf.AsdfFile({"s": TaggedDict(node, placeholder)}).write_to(
            path, all_array_storage="inline")
        path.write_text(path.read_text().replace(placeholder, tag))
        with pytest.raises(InputError, match="does not follow its schemas"):
            open_asdf(path).close()  # the file does break its schema
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path, validate=validate)
    assert str(path) in str(info.value)
    assert f"astromix/tags/{names}-1.0.0" in str(info.value)


@pytest.mark.parametrize("make, change, match", [
    (_sersic, lambda m: setattr(m, "r_eff", 0.0), "r_eff must be > 0"),
    (_sersic, lambda m: setattr(m, "ellip", 1.2), "ellip"),
    (_point, lambda m: setattr(m, "x_0", np.nan), "non-finite"),
], ids=["sersic-r_eff", "sersic-ellip", "point-nan"])
def test_source_invalid_model_not_written(asdf_config, make, change, match):
    """A model that could not be read back is refused on writing."""
    import io

    model = make()
    change(model)
    with pytest.raises(InputError, match=match):
        asdf.AsdfFile({"m": model}).write_to(io.BytesIO())


def test_source_hand_written_fixed_mapping_applies(asdf_config, tmp_path):
    """A transform-1.4.0 ``fixed`` mapping in a hand-written file is honoured."""
    node = _source_node(_sersic(), SERSIC_TAG)
    del node["n_fixed"]  # the <name>_fixed flags are optional (false when absent)
    node["fixed"] = {"n": True}
    path = tmp_path / "fixed.asdf"
    asdf.AsdfFile({"s": TaggedDict(node, SERSIC_TAG)}).write_to(path)
    with open_asdf(path) as af:
        back = af["s"]
    assert back.n.fixed and not back.flux.fixed


# -- Exposure ---------------------------------------------------------------------------------

def test_exposure_schema_is_valid(asdf_config):
    schema = asdf.schema.load_schema(EXPOSURE_SCHEMA_URI)
    asdf.schema.check_schema(schema)
    assert schema["id"] == EXPOSURE_SCHEMA_URI
    assert schema["tag"] == EXPOSURE_TAG
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["data"]
    assert schema["properties"]["wcs"]["tag"].startswith("tag:stsci.edu:gwcs/wcs-")
    assert schema["properties"]["psf"]["tag"].startswith(PSF_TAG.rsplit("-", 1)[0])
    manifest = yaml.safe_load(asdf_config.resource_manager[MANIFEST_URI])
    tags = {t["tag_uri"]: t["schema_uri"] for t in manifest["tags"]}
    assert tags[EXPOSURE_TAG] == EXPOSURE_SCHEMA_URI
    from astromix.io.asdf.converters import ExposureConverter

    (ext,) = get_extensions()
    assert any(isinstance(c, ExposureConverter) for c in ext.converters)


def _example_text(body):
    return ("#ASDF 1.0.0\n#ASDF_STANDARD 1.6.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
            "--- !core/asdf-1.1.0\nexample: " + body.replace("\n", "\n  ") + "\n...\n")


def test_exposure_schema_example_reads(asdf_config, tmp_path):
    from astromix.data import Exposure

    schema = yaml.safe_load(asdf_config.resource_manager[EXPOSURE_SCHEMA_URI])
    assert schema["examples"]
    for _description, standard, body in schema["examples"]:
        assert standard == "asdf-standard-1.6.0"
        path = tmp_path / "example.asdf"
        path.write_text(_example_text(body))
        with open_asdf(path) as af:  # validates against the schema
            exp = af["example"]
        assert isinstance(exp, Exposure)
        assert exp.shape == (2, 3) and exp.name == "g1" and exp.band == "g"
        assert exp.mask[1, 2] and exp.mask.sum() == 1 and exp.weight[0, 0] == 4.0
        assert exp.world_to_pixel(150.0, 2.0) == pytest.approx((1.0, 0.0), abs=1e-9)
        assert exp.meta == {"instrument": "DECam", "expnum": 123456}


def _exposure_node():
    return {"name": "e", "data": np.ones((2, 3)), "mask": np.zeros((2, 3), bool),
            "fits_wcs": "CTYPE1  = 'RA---TAN'\nCTYPE2  = 'DEC--TAN'", "exptime": 10.0,
            "psf_origin": [0.0, 0.0]}


def _a_gwcs():
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gw

    forward = (models.Scale(1e-5) & models.Scale(1e-5)) | models.Pix2Sky_TAN() \
        | models.RotateNative2Celestial(10.0, 20.0, 180.0)
    return gw.WCS([(cf.Frame2D(name="detector", unit=(u.pix, u.pix)), forward),
                   (cf.CelestialFrame(reference_frame=coord.ICRS(), name="world",
                                      unit=(u.deg, u.deg)), None)])


def test_exposure_schema_accepts_good_tree(asdf_config):
    asdf.AsdfFile({"e": TaggedDict(_exposure_node(), EXPOSURE_TAG)}).validate()
    node = _exposure_node()
    del node["fits_wcs"]
    node["wcs"] = _a_gwcs()
    asdf.AsdfFile({"e": TaggedDict(node, EXPOSURE_TAG)}).validate()


@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(extra=1), "Additional properties"),
    (lambda n: n.update(wcs=_a_gwcs()), "should not be valid"),
    (lambda n: n.pop("data"), "required property"),
    (lambda n: n.update(exptime=-1.0), "minimum"),
    (lambda n: n.update(psf_origin=[1.0]), "too short"),
    (lambda n: n.update(data=np.ones((2, 3), dtype=np.int32)), "any of the given schemas"),
    (lambda n: n.update(mask=np.zeros(3, bool)), "ndim"),
    (lambda n: n.update(psf=GaussianMixture([1.0], [[0, 0]], [np.eye(2)])), "tag"),
], ids=["extra", "both-wcs", "no-data", "exptime", "origin", "int-data", "mask-ndim", "psf-tag"])
def test_exposure_schema_rejects_bad_tree(asdf_config, tmp_path, change, match):
    node = _exposure_node()
    change(node)
    af = asdf.AsdfFile({"e": TaggedDict(node, EXPOSURE_TAG)})
    with pytest.raises(asdf.ValidationError, match=match):
        af.validate()
    with pytest.raises(asdf.ValidationError):
        af.write_to(tmp_path / "bad.asdf")


def test_exposure_invalid_file(asdf_config, tmp_path):
    """A schema-invalid exposure node gives InputError, with or without schema validation."""
    node = _exposure_node()
    node["weight"] = np.ones((2, 3))
    path = tmp_path / "bad.asdf"
    other = "tag:example.org/unvalidated-1.0.0"
    with asdf.config_context() as config:
        config.validate_on_read = False
        asdf.AsdfFile({"e": TaggedDict(node, other)}).write_to(path, all_array_storage="inline")
    path.write_text(path.read_text().replace(other, EXPOSURE_TAG))
    with pytest.raises(InputError, match="does not follow its schemas"):
        open_asdf(path)
    with pytest.raises(InputError, match=r"unexpected property \['weight'\]") as info:
        open_asdf(path, validate=False)
    assert str(path) in str(info.value) and "exposure-1.0.0" in str(info.value)


def test_exposure_in_a_tree_round_trip(asdf_config, tmp_path):
    from astromix import GaussianMixturePSF
    from astromix.data import Exposure

    psf = GaussianMixturePSF(GaussianMixture([0.6, 0.4], [[0, 0], [0, 0]],
                                             [np.eye(2), np.eye(2) * 4]))
    exp = Exposure(np.arange(12.0).reshape(3, 4), uncertainty=np.full((3, 4), 2.0), psf=psf,
                   name="x", band="z", zeropoint=30.0)
    path = tmp_path / "tree.asdf"
    asdf.AsdfFile({"scene": {"exposures": [exp]}}).write_to(path)
    with open_asdf(path) as af:
        (back,) = af["scene"]["exposures"]
    assert back.name == "x" and back.wcs is None and back.zeropoint == 30.0
    np.testing.assert_array_equal(back.data, exp.data)
    np.testing.assert_array_equal(back.weight, exp.weight)
    assert np.array_equal(back.psf.parameters, psf.parameters)


def test_scene_schema_example_reads_and_extra_keys_fail(asdf_config, tmp_path):
    from astromix import SceneModel

    schema = yaml.safe_load(asdf_config.resource_manager[
        "asdf://astromix.org/astromix/schemas/scene_model-1.0.0"])
    (description, standard, body), = schema["examples"]
    version = standard.rsplit("-", 1)[-1]

    def document(node):
        return (f"#ASDF 1.0.0\n#ASDF_STANDARD {version}\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
                f"--- !core/asdf-1.1.0\nexample: " + node.replace("\n", "\n  ") + "\n...\n")

    path = tmp_path / "scene.asdf"
    path.write_text(document(body))
    with open_asdf(path) as af:
        scene = af["example"]
        assert isinstance(scene, SceneModel), description
        assert scene.bands == ("g", "r") and scene.source_kinds == ("sersic", "star")
        assert scene.n_0.fixed and float(scene.flux_r_0.value) == 20.0
    path.write_text(document(body.replace("fixed: [n_0]", "fixed: [n_0]\n  colour: red")))
    with pytest.raises(InputError, match="colour"):
        with open_asdf(path) as af:
            af["example"]


@pytest.mark.parametrize("old, new, match", [
    ("  sources:\n", "  stars:\n",
     r"scene_model-1\.0\.0\): missing required property \['sources'\]"),
    (", flux: {g: 3.0, r: 4.0}}", "}", r"source 1: missing required property \['flux'\]"),
    ("r_eff: 0.8, n: 2.0, ", "", r"source 0: missing required properties \['r_eff', 'n'\]"),
    ("flux: {g: 10.0, r: 20.0}", "flux: 10.0", "source 0: flux must be a mapping"),
    ("    - {kind: star, name: star, ra: 150.1002, dec: 2.2001, flux: {g: 3.0, r: 4.0}}",
     "    - 7", "source 1: expected a mapping"),
], ids=["no-sources", "no-flux", "no-r_eff-n", "flux-number", "source-number"])
def test_scene_malformed_node_without_validation(asdf_config, tmp_path, old, new, match):
    """Without schema validation, a malformed scene node is refused by the converter's
    own checks, naming the file, the tag, the source and the missing keys (it had
    ended as a bare KeyError's text, e.g. \"'sources'\")."""
    schema = yaml.safe_load(asdf_config.resource_manager[
        "asdf://astromix.org/astromix/schemas/scene_model-1.0.0"])
    (_, standard, body), = schema["examples"]
    assert old in body
    path = tmp_path / "scene.asdf"
    path.write_text(f"#ASDF 1.0.0\n#ASDF_STANDARD {standard.rsplit('-', 1)[-1]}\n%YAML 1.1\n"
                    "%TAG ! tag:stsci.edu:asdf/\n--- !core/asdf-1.1.0\nexample: "
                    + body.replace(old, new).replace("\n", "\n  ") + "\n...\n")
    with pytest.raises(InputError, match=match) as info:
        with open_asdf(path, validate=False) as af:
            af["example"]
    assert str(path) in str(info.value) and SCENE_TAG in str(info.value)


# -- MoffatStar -------------------------------------------------------------------------------

MOFFAT_TAG = "asdf://astromix.org/astromix/tags/moffat_star-1.0.0"
MOFFAT_SCHEMA_URI = "asdf://astromix.org/astromix/schemas/moffat_star-1.0.0"
MOFFAT_PARAMETERS = ("flux", "x_0", "y_0", "fwhm", "beta", "ellip", "theta")


def _moffat(**kwargs):
    from astromix.models.moffat import MoffatStar

    kwargs = {"flux": 812.5, "x_0": 20.3, "y_0": 18.9, "fwhm": 3.7, "beta": 2.9, "ellip": 0.15,
              "theta": 0.4, **kwargs}
    return MoffatStar(**kwargs)


def _check_same_moffat(back, model, *, evaluate=True):
    assert type(back) is type(model)
    assert back.param_names == model.param_names
    for name in model.param_names:
        got, want = getattr(back, name), getattr(model, name)
        assert got.value == want.value, name
        assert got.fixed == want.fixed, name
        assert got.bounds == want.bounds, name
        assert got.unit == want.unit, name
    assert back.name == model.name and back.quadrature == model.quadrature
    assert back.inputs == model.inputs and back.outputs == model.outputs
    if evaluate:
        y, x = np.mgrid[:40, :42]
        assert np.array_equal(back(x, y), model(x, y))  # bit for bit


@pytest.mark.parametrize("storage", ["internal", "inline"])
def test_moffat_round_trip(asdf_config, tmp_path, storage):
    import astropy.units as u

    star = _moffat(flux=812.5 * u.nJy, name="star", quadrature=7)
    star.beta.fixed = True
    star.ellip.fixed = False          # default: fixed
    star.flux.bounds = (0.0, None)
    star.beta.bounds = (1.5, 8.0)
    star.bounding_box = ((0.0, 38.0), (1.0, 40.0))
    path = tmp_path / "star.asdf"
    asdf.AsdfFile({"star": star}).write_to(path, all_array_storage=storage)
    raw = asdf.util.load_yaml(path, tagged=True)["star"]
    assert raw._tag == MOFFAT_TAG
    assert raw["beta_fixed"] is True and raw["ellip_fixed"] is False
    assert raw["theta_fixed"] is True and raw["quadrature"] == 7
    assert raw["bounds"] == {"flux": [0.0, None], "beta": [1.5, 8.0]}
    with open_asdf(path) as af:  # validates against the schemas
        back = af["star"]
    assert back.flux.unit == u.nJy
    assert back.fwhm.bounds == (1e-3, None)  # a default bound, not written, restored
    assert back.bounding_box.bounding_box() == ((0.0, 38.0), (1.0, 40.0))
    _check_same_moffat(back, star)


def test_moffat_default_layout_and_fitted_model(asdf_config, tmp_path):
    from astromix.fitting import MixtureLSQFitter

    truth = _moffat()
    y, x = np.mgrid[:40, :40]
    fitted = MixtureLSQFitter()(_moffat(flux=700.0, fwhm=3.0, ellip=0.15), x, y, truth(x, y))
    path = tmp_path / "star.asdf"
    asdf.AsdfFile({"star": fitted}).write_to(path)
    raw = asdf.util.load_yaml(path, tagged=True)["star"]
    for name in MOFFAT_PARAMETERS:
        assert raw[f"{name}_fixed"] is (name in ("ellip", "theta")), name
    for key in ("bounds", "fixed", "name", "bounding_box"):
        assert key not in raw, key
    assert raw["inputs"] == ["x", "y"] and raw["outputs"] == ["z"] and raw["quadrature"] == 5
    with open_asdf(path) as af:
        back = af["star"]
    assert back._user_bounding_box is None
    _check_same_moffat(back, fitted)


def test_moffat_schema_and_manifest(asdf_config):
    from astromix.models.moffat import MoffatStar

    schema = asdf.schema.load_schema(MOFFAT_SCHEMA_URI)
    asdf.schema.check_schema(schema)
    assert schema["id"] == MOFFAT_SCHEMA_URI and schema["tag"] == MOFFAT_TAG
    ref, own = schema["allOf"]
    assert ref == {"$ref": "http://stsci.edu/schemas/asdf/transform/transform-1.4.0"}
    assert own["additionalProperties"] is False
    assert set(own["required"]) == set(MOFFAT_PARAMETERS)
    assert set(asdf.schema.load_schema(ref["$ref"])["properties"]) <= set(own["properties"])
    for name in MOFFAT_PARAMETERS:
        assert own["properties"][f"{name}_fixed"]["type"] == "boolean", name
    manifest = yaml.safe_load(asdf_config.resource_manager[MANIFEST_URI])
    tags = {t["tag_uri"]: t["schema_uri"] for t in manifest["tags"]}
    assert tags[MOFFAT_TAG] == MOFFAT_SCHEMA_URI
    manager = asdf.AsdfFile().extension_manager
    assert manager.handles_type(MoffatStar) and manager.handles_tag(MOFFAT_TAG)


def test_moffat_schema_example_reads(asdf_config, tmp_path):
    from astromix.models.moffat import MoffatStar

    schema = yaml.safe_load(asdf_config.resource_manager[MOFFAT_SCHEMA_URI])
    (description, standard, body), = schema["examples"]
    expected = MoffatStar(1000.0, 31.3, 30.8, 4.0, 3.5, name="star")
    expected.beta.fixed = True
    version = standard.rsplit("-", 1)[-1]
    path = tmp_path / "example.asdf"
    path.write_text(f"#ASDF 1.0.0\n#ASDF_STANDARD {version}\n%YAML 1.1\n"
                    f"%TAG ! tag:stsci.edu:asdf/\n--- !core/asdf-1.1.0\nexample: "
                    + body.replace("\n", "\n  ") + "\n...\n")
    with open_asdf(path) as af:  # validates against the schema
        assert isinstance(af["example"], MoffatStar), description
        _check_same_moffat(af["example"], expected)


def _moffat_node(model=None):
    from astromix.io.asdf.converters import MoffatStarConverter

    return MoffatStarConverter().to_yaml_tree(model or _moffat(), MOFFAT_TAG, None)


@pytest.mark.parametrize("change, match", [
    (lambda n: n.update(extra=1.0), "Additional properties"),
    (lambda n: n.pop("fwhm"), "required property"),
    (lambda n: n.update(beta="steep"), "beta"),
    (lambda n: n.update(ellip_fixed=1), "boolean"),
    (lambda n: n.update(quadrature=0), "minimum"),
    (lambda n: n.update(quadrature=2.5), "integer"),
    (lambda n: n.update(psf=np.ones(3)), "Additional properties"),
], ids=["extra", "missing-fwhm", "beta-string", "fixed-int", "quadrature-0",
        "quadrature-float", "psf"])
def test_moffat_schema_rejects_bad_tree(asdf_config, change, match):
    node = _moffat_node()
    change(node)
    with pytest.raises(asdf.ValidationError, match=match):
        asdf.AsdfFile({"s": TaggedDict(node, MOFFAT_TAG)}).validate()


def test_moffat_schema_accepts_transform_properties(asdf_config):
    node = _moffat_node()
    node.update(name="src", bounding_box=[[0.0, 10.0], [1.0, 12.0]], fixed={"flux": True},
                bounds={"x_0": [0.0, None]})
    asdf.AsdfFile({"s": TaggedDict(node, MOFFAT_TAG)}).validate()


@pytest.mark.parametrize("change, match, validate", [
    (lambda n: n.update(beta=1.0), "beta must be a finite number > 1", True),
    (lambda n: n.update(fwhm=-2.0), "fwhm must be", True),
    (lambda n: n.update(ellip=1.0), r"ellip must lie in \[0, 1\)", True),
    (lambda n: n.update(theta=float("nan")), "non-finite", True),
    (lambda n: n.pop("beta"), "missing required property", False),
    (lambda n: n.update(flux="bright"), "flux must be a number", False),
    (lambda n: n.update(beta_fixed="yes"), "beta_fixed must be a boolean", False),
    (lambda n: n.update(quadrature=40), "quadrature must be an integer in", False),
    (lambda n: n.update(quadrature="5"), "quadrature must be an integer", False),
], ids=["beta-1", "fwhm-negative", "ellip-1", "theta-nan", "no-beta", "flux-string",
        "fixed-string", "quadrature-40", "quadrature-string"])
def test_moffat_invalid_content_in_file(asdf_config, tmp_path, change, match, validate):
    node = _moffat_node()
    change(node)
    path = tmp_path / "bad.asdf"
    if validate:
        asdf.AsdfFile({"s": TaggedDict(node, MOFFAT_TAG)}).write_to(path)
    else:
        placeholder = "asdf://astromix.org/astromix/tags/placeholder-1.0.0"
        asdf.AsdfFile({"s": TaggedDict(node, placeholder)}).write_to(
            path, all_array_storage="inline")
        path.write_text(path.read_text().replace(placeholder, MOFFAT_TAG))
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path, validate=validate)
    assert str(path) in str(info.value) and "astromix/tags/moffat_star-1.0.0" in str(info.value)


def test_moffat_absent_flags_take_the_model_defaults(asdf_config, tmp_path):
    node = _moffat_node()
    for name in MOFFAT_PARAMETERS:
        del node[f"{name}_fixed"]
    del node["quadrature"]
    node["fixed"] = {"beta": True}   # a transform-1.4.0 fixed mapping is honoured too
    path = tmp_path / "flags.asdf"
    asdf.AsdfFile({"s": TaggedDict(node, MOFFAT_TAG)}).write_to(path)
    with open_asdf(path) as af:
        back = af["s"]
    assert [back.fixed[n] for n in MOFFAT_PARAMETERS] == [False] * 3 + [False, True, True, True]
    assert back.quadrature == 5


@pytest.mark.parametrize("change, match", [
    (lambda m: setattr(m, "beta", 0.9), "beta must be"),
    (lambda m: setattr(m, "fwhm", 0.0), "fwhm must be"),
    (lambda m: setattr(m, "x_0", np.nan), "non-finite"),
], ids=["beta", "fwhm", "nan"])
def test_moffat_invalid_model_not_written(asdf_config, change, match):
    import io

    model = _moffat()
    change(model)
    with pytest.raises(InputError, match=match):
        asdf.AsdfFile({"m": model}).write_to(io.BytesIO())


def test_moffat_tied_warns(asdf_config):
    import io

    model = _moffat()
    model.y_0.tied = lambda m: m.x_0
    with pytest.warns(asdf.exceptions.AsdfWarning, match="tied"):
        asdf.AsdfFile({"m": model}).write_to(io.BytesIO())


# -- review fixes: bad-data pixels, damaged files, fixed/bounds, newer tags ---------------------
def _nan_exposure():
    """An exposure with a NaN and an inf pixel, a zero-uncertainty pixel and a user mask."""
    from astromix.data import Exposure, ExposureWarning

    data = np.arange(20.0).reshape(4, 5)
    data[1, 2], data[3, 0] = np.nan, np.inf
    sigma = np.full((4, 5), 0.5)
    sigma[2, 1] = 0.0
    user = np.zeros((4, 5), bool)
    user[0, 0] = True
    with pytest.warns(ExposureWarning):
        return Exposure(data, uncertainty=sigma, mask=user, name="e")


def test_exposure_bad_data_pixels_stay_bad_after_a_round_trip(asdf_config, tmp_path):
    """A NaN pixel read back stays masked when the mask is replaced (it had become a valid
    pixel of value 0 with full weight: the full mask was written as the user mask)."""
    import warnings

    exp = _nan_exposure()
    path = tmp_path / "e.asdf"
    asdf.AsdfFile({"e": exp}).write_to(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no re-warning about the pixels masked on reading
        with open_asdf(path) as af:
            back = af["e"]
    np.testing.assert_array_equal(back.mask, exp.mask)
    np.testing.assert_array_equal(back.weight, exp.weight)
    np.testing.assert_array_equal(back.data, exp.data)
    # the user replaces the mask (e.g. a new bad-pixel map): the truth is the original's result
    new = np.zeros((4, 5), bool)
    new[3, 4] = True
    exp.mask = new
    back.mask = new
    expected = new.copy()
    expected[1, 2] = expected[3, 0] = expected[2, 1] = True  # bad data, bad uncertainty
    np.testing.assert_array_equal(exp.mask, expected)
    np.testing.assert_array_equal(back.mask, expected)
    np.testing.assert_array_equal(back.weight, exp.weight)
    assert back.weight[1, 2] == 0.0 and back.weight[0, 0] == 4.0
    # the node stores the user mask, and NaN where the data were not finite
    from astromix.io.asdf.converters import ExposureConverter

    node = ExposureConverter().to_yaml_tree(_nan_exposure(), EXPOSURE_TAG, None)
    user = np.zeros((4, 5), bool)
    user[0, 0] = True
    np.testing.assert_array_equal(node["mask"], user)
    assert np.isnan(node["data"][1, 2]) and np.isnan(node["data"][3, 0])
    assert np.count_nonzero(~np.isfinite(node["data"])) == 2


@pytest.mark.parametrize("fraction", [0.9, 0.6, 0.3])
def test_open_asdf_truncated_file(asdf_config, tmp_path, fraction):
    """A truncated file (interrupted copy) gives InputError naming the file (it was a bare
    TypeError from asdf's ndarray converter, or struct.error from the block header)."""
    from astromix.data import Exposure, read_exposures, write_exposures

    path = tmp_path / "cut.asdf"
    write_exposures(path, [Exposure(np.ones((30, 30)), name="e1")])
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * fraction)])
    cut = path.read_bytes()
    for call in (lambda: read_exposures(path),
                 lambda: write_exposures(path, [Exposure(np.ones((3, 3)), name="e2")]),
                 lambda: open_asdf(path, lazy_load=False, memmap=False).close()):
        with pytest.raises(InputError, match="could not be read") as info:
            call()
        assert str(path) in str(info.value)
    assert path.read_bytes() == cut  # not replaced
    many = GaussianMixture(np.ones(50), np.zeros((50, 2)), np.array([np.eye(2)] * 50))
    gm_path = tmp_path / "gm.asdf"
    asdf.AsdfFile({"m": many}).write_to(gm_path)
    raw = gm_path.read_bytes()
    gm_path.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(InputError, match="could not be read") as info:
        open_asdf(gm_path).close()
    assert str(gm_path) in str(info.value)


def _edited(path, obj, old, new, **kwargs):
    """Write ``obj`` under key "o" with inline arrays, then replace ``old`` (first match)."""
    asdf.AsdfFile({"o": obj}).write_to(path, all_array_storage="inline", **kwargs)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


_TRANSFORMS = {"sersic": (lambda: _sersic(psf=_psf(2, seed=3)), "sersic_mixture"),
               "psf": (lambda: _psf(2, seed=4), "gaussian_mixture_psf"),
               "point": (lambda: _point(psf=_psf(2, seed=5)), "point_source"),
               "moffat": (_moffat, "moffat_star")}


@pytest.mark.parametrize("kind", sorted(_TRANSFORMS))
@pytest.mark.parametrize("validate", [True, False])
def test_fixed_of_unknown_parameter_in_file(asdf_config, tmp_path, kind, validate):
    """transform-1.4.0 allows any ``fixed`` mapping: an unknown name gave a bare
    AttributeError from asdf-astropy; now InputError naming the file, tag and name."""
    make, name = _TRANSFORMS[kind]
    path = _edited(tmp_path / "f.asdf", make(), "\n  flux: ",
                   "\n  fixed: {r_eff_typo: true}\n  flux: ")
    with pytest.raises(InputError, match=r"fixed of unknown parameters \['r_eff_typo'\]") as i:
        open_asdf(path, validate=validate)
    assert str(path) in str(i.value) and f"astromix/tags/{name}-1.0.0" in str(i.value)


@pytest.mark.parametrize("line, match", [
    ("bounds: [1, 2]", "bounds must be a mapping"),
    ("bounds: {flux: 5}", r"bounds\['flux'\] must be \[lo, hi\]"),
    ("bounds: {flux: [a, b]}", r"bounds\['flux'\] must be \[lo, hi\]"),
    ("fixed: [flux]", "fixed must be a mapping"),
    ("bounds: {fluxx: [1, 2]}", r"bounds of unknown parameters \['fluxx'\]"),
], ids=["bounds-list", "bounds-number", "bounds-strings", "fixed-list", "bounds-name"])
@pytest.mark.parametrize("kind", sorted(_TRANSFORMS))
def test_malformed_constraints_without_validation(asdf_config, tmp_path, line, match, kind):
    """open_asdf(validate=False): malformed bounds / fixed gave bare AttributeError or
    TypeError from asdf-astropy's base converter."""
    make, name = _TRANSFORMS[kind]
    path = _edited(tmp_path / "c.asdf", make(), "\n  flux: ", f"\n  {line}\n  flux: ")
    with pytest.raises(InputError, match=match) as info:
        open_asdf(path, validate=False)
    assert str(path) in str(info.value) and f"astromix/tags/{name}-1.0.0" in str(info.value)


@pytest.mark.parametrize("meta", ["[1, 2]", "abc", "3"])
def test_exposure_meta_not_a_mapping_without_validation(asdf_config, tmp_path, meta):
    from astromix.data import Exposure

    exp = Exposure(np.ones((3, 3)), name="e", meta={"a": 1})
    path = _edited(tmp_path / "m.asdf", exp, "meta: {a: 1}", f"meta: {meta}")
    with pytest.raises(InputError, match="meta must be a mapping") as info:
        open_asdf(path, validate=False)
    assert str(path) in str(info.value) and "exposure-1.0.0" in str(info.value)


_NEWER = ("#ASDF 1.0.0\n#ASDF_STANDARD 1.5.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
          "--- !core/asdf-1.1.0\n{body}\n...\n")


@pytest.mark.parametrize("body, tag, known", [
    ("o: !<asdf://astromix.org/astromix/tags/gaussian_mixture-1.1.0> {amp: 1}",
     "gaussian_mixture-1.1.0", "gaussian_mixture-1.0.0"),
    ("exposures: [!<asdf://astromix.org/astromix/tags/exposure-1.1.0> {data: 1}]",
     "exposure-1.1.0", "exposure-1.0.0"),
    ("a: {b: [!<asdf://astromix.org/astromix/tags/galaxy_zoo-1.0.0> {x: 1}]}",
     "galaxy_zoo-1.0.0", "has no such tag"),
], ids=["mixture-1.1", "exposure-1.1-in-list", "unknown-family-nested"])
@pytest.mark.parametrize("asdf_words_it_otherwise", [False, True])
def test_newer_tag_version_is_refused(asdf_config, tmp_path, monkeypatch, body, tag, known,
                                      asdf_words_it_otherwise):
    """A tag this astromix cannot read (a newer version) was handed on as a raw TaggedDict
    with only an AsdfConversionWarning; now InputError naming the file, the tag and the
    supported version (also if asdf's warning text changes: the tree is then checked)."""
    import warnings

    import astromix.io.asdf as amx_asdf

    if asdf_words_it_otherwise:
        monkeypatch.setattr(amx_asdf, "_UNKNOWN_TAG_MESSAGE", "no asdf warning reads like this")
    path = tmp_path / "newer.asdf"
    path.write_text(_NEWER.format(body=body))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", asdf.exceptions.AsdfConversionWarning)
        with pytest.raises(InputError, match="not supported") as info:
            open_asdf(path)
    message = str(info.value)
    assert str(path) in message and f"asdf://astromix.org/astromix/tags/{tag}" in message
    assert known in message


def test_unknown_tag_of_another_extension_keeps_asdf_behaviour(asdf_config, tmp_path):
    """Only astromix tags are refused; another package's unknown tag is asdf's business."""
    path = tmp_path / "other.asdf"
    path.write_text(_NEWER.format(body="o: !<asdf://example.org/tags/thing-9.0.0> {x: 1}"))
    with pytest.warns(asdf.exceptions.AsdfConversionWarning, match="not recognized"):
        with open_asdf(path) as af:
            assert isinstance(af["o"], TaggedDict) and af["o"]["x"] == 1
