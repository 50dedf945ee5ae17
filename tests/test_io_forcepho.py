"""forcepho PSF mixture files (astromix.io.forcepho): layout, round trips, safe writes."""

import hashlib
import logging
import os
import sys
import types

import numpy as np
import pytest

from astromix import GaussianMixture
from astromix.errors import InputError
from astromix.io import forcepho
from astromix.io.forcepho import (
    PSF_DTYPE,
    read_psf_locations,
    read_psf_mixture,
    write_psf_mixture,
)

h5py = pytest.importorskip("h5py")

# forcepho's own dtype (forcepho/patches/storage.py names the centres xcen, ycen).
FORCEPHO_DTYPE = np.dtype([(c, np.float32) for c in ("amp", "xcen", "ycen", "Cxx", "Cyy", "Cxy")]
                          + [("sersic_bin", np.int32)])


def centred_mixture(rng, k, *, scale=1.0):
    """A random PSF-like mixture centred near the origin, amplitudes summing to 1."""
    amp = rng.uniform(0.05, 1.0, k)
    amp /= amp.sum()
    mean = rng.normal(0, 0.2, (k, 2))
    s1 = scale * np.exp(rng.uniform(np.log(0.7), np.log(8.0), k))
    s2 = s1 * rng.uniform(0.4, 1.0, k)
    th = rng.uniform(0, np.pi, k)
    c, s = np.cos(th), np.sin(th)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    cov = rot @ (np.stack([s1 ** 2, s2 ** 2], -1)[..., None] * np.eye(2)) @ np.swapaxes(rot, 1, 2)
    return GaussianMixture(amp, mean, cov)


def sorted_float32(m):
    """What the file should hold for ``m``: components by decreasing amplitude, in float32."""
    order = np.argsort(-m.amp, kind="stable")
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    return f32(m.amp[order]), f32(m.mean[order]), f32(m.cov[order])


def assert_matches(back, m):
    amp, mean, cov = sorted_float32(m)
    assert isinstance(back, GaussianMixture)
    np.testing.assert_array_equal(back.amp, amp)
    np.testing.assert_array_equal(back.mean, mean)
    np.testing.assert_array_equal(back.cov, cov)
    # and float32 precision against the original
    order = np.argsort(-m.amp, kind="stable")
    np.testing.assert_allclose(back.amp, m.amp[order], rtol=2 ** -23)
    np.testing.assert_allclose(back.cov, m.cov[order], rtol=2 ** -23)
    np.testing.assert_allclose(back.mean, m.mean[order], rtol=2 ** -23, atol=1e-30)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(h5obj):
    """Everything in a group/file: {path: (kind, dtype, shape, bytes, attrs)}."""
    out = {"/": ("attrs", {k: np.asarray(v).tobytes() for k, v in h5obj.attrs.items()})}

    def visit(name, obj):
        attrs = {k: (np.asarray(v).dtype.str, np.asarray(v).tobytes())
                 for k, v in obj.attrs.items()}
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            out[name] = ("dataset", data.dtype, data.shape, np.asarray(data).tobytes(), attrs)
        else:
            out[name] = ("group", attrs)

    h5obj.visititems(visit)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# -- round trips and layout ------------------------------------------------------------------
def test_round_trip_float32(tmp_path, rng):
    m = centred_mixture(rng, 5)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F200W", m)
    back = read_psf_mixture(path, "F200W")
    assert_matches(back, m)
    assert read_psf_locations(path, "F200W") is None
    # the file path may be a str too; and location=0 of a one-location file
    assert read_psf_mixture(str(path), "F200W", location=0) == back
    assert read_psf_mixture(path, "F200W", location=-1) == back


def test_accepts_object_with_mixture_attribute(tmp_path, rng):
    m = centred_mixture(rng, 3)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F090W", types.SimpleNamespace(mixture=m))
    assert_matches(read_psf_mixture(path, "F090W"), m)


def test_accepts_gaussian_mixture_psf(tmp_path, rng):
    try:
        from astromix import GaussianMixturePSF
    except ImportError:  # pragma: no cover
        pytest.skip("GaussianMixturePSF is not available")
    m = centred_mixture(rng, 3)
    psf = GaussianMixturePSF(m, flux=10.0, x_0=40.0, y_0=12.0)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F444W", psf)
    back = read_psf_mixture(path, "F444W")
    np.testing.assert_allclose(back.amp.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.sort(back.amp)[::-1], np.sort(m.amp)[::-1], rtol=1e-6)
    # the model wraps the raw mixture back
    assert len(GaussianMixturePSF(back).mixture) == 3


@pytest.mark.parametrize("n_bins", [9, 1, 3])
def test_layout(tmp_path, rng, n_bins):
    k = 4
    m = centred_mixture(rng, k)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F150W", m, n_sersic_bins=n_bins, arcsec_per_pixel=0.031)
    with h5py.File(path, "r") as f:
        assert list(f) == ["F150W"]
        g = f["F150W"]
        assert isinstance(g, h5py.Group)
        assert set(g) == {"parameters"}
        ds = g["parameters"]
        assert ds.shape == (1, n_bins * k)
        assert ds.dtype.names == ("amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy", "sersic_bin")
        for name in ("amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy"):
            assert ds.dtype[name] == np.dtype(np.float32)
        assert ds.dtype["sersic_bin"] == np.dtype(np.int32)
        assert ds.dtype == PSF_DTYPE
        n_psf = g.attrs["n_psf_per_source"]
        assert n_psf == n_bins * k
        assert np.issubdtype(np.asarray(n_psf).dtype, np.integer)
        assert g.attrs["arcsec_per_pixel"] == pytest.approx(0.031)
        data = ds[()]
    # bin-major: bin b holds elements b*k .. (b+1)*k - 1
    np.testing.assert_array_equal(data["sersic_bin"][0], np.repeat(np.arange(n_bins), k))
    per_bin = data[0].reshape(n_bins, k)
    for b in range(n_bins):
        for name in ("amp", "xcr", "ycr", "Cxx", "Cyy", "Cxy"):
            np.testing.assert_array_equal(per_bin[name][b], per_bin[name][0])
    # sorted by decreasing amplitude, as forcepho's make_psf conversion does
    assert np.all(np.diff(per_bin["amp"][0]) <= 0)
    amp, mean, cov = sorted_float32(m)
    np.testing.assert_array_equal(per_bin["amp"][0], amp)
    np.testing.assert_array_equal(per_bin["xcr"][0], mean[:, 0])
    np.testing.assert_array_equal(per_bin["ycr"][0], mean[:, 1])
    np.testing.assert_array_equal(per_bin["Cxx"][0], cov[:, 0, 0])
    np.testing.assert_array_equal(per_bin["Cyy"][0], cov[:, 1, 1])
    np.testing.assert_array_equal(per_bin["Cxy"][0], cov[:, 0, 1])


def test_arcsec_per_pixel_quantity(tmp_path, rng):
    from astropy import units as u

    m = centred_mixture(rng, 2)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "A", m, arcsec_per_pixel=30 * u.mas / u.pix)
    write_psf_mixture(path, "B", m, arcsec_per_pixel=0.06 * u.arcsec)
    with h5py.File(path, "r") as f:
        assert f["A"].attrs["arcsec_per_pixel"] == pytest.approx(0.03)
        assert f["B"].attrs["arcsec_per_pixel"] == pytest.approx(0.06)
    with pytest.raises(InputError, match="units"):
        write_psf_mixture(path, "C", m, arcsec_per_pixel=3 * u.m)


# -- files written by hand in forcepho's own layout -------------------------------------------
def _forcepho_params(m, nloc=1, nradii=9, dtype=FORCEPHO_DTYPE):
    amp, mean, cov = m.amp, m.mean, m.cov
    k = len(m)
    pars = np.zeros((nloc, nradii, k), dtype=dtype)
    x = "xcen" if "xcen" in dtype.names else "xcr"
    y = "ycen" if "ycen" in dtype.names else "ycr"
    pars["amp"] = amp
    pars[x] = mean[:, 0]
    pars[y] = mean[:, 1]
    pars["Cxx"] = cov[:, 0, 0]
    pars["Cyy"] = cov[:, 1, 1]
    pars["Cxy"] = cov[:, 0, 1]
    pars["sersic_bin"] = np.arange(nradii)[None, :, None]
    return pars


def _as_float32(m):
    return GaussianMixture(m.amp.astype(np.float32), m.mean.astype(np.float32),
                           m.cov.astype(np.float32))


@pytest.mark.parametrize("centre", ["xcen", "xcr"])
@pytest.mark.parametrize("shape3d", [False, True])
def test_read_hand_written_forcepho_file(tmp_path, rng, centre, shape3d):
    m = centred_mixture(rng, 4)
    dtype = FORCEPHO_DTYPE if centre == "xcen" else PSF_DTYPE
    pars = _forcepho_params(m, dtype=dtype)
    path = tmp_path / "forcepho_psf.h5"
    with h5py.File(path, "w") as h5:
        bg = h5.create_group("F277W")
        data = pars if shape3d else pars.reshape(pars.shape[0], -1)
        bg.create_dataset("parameters", data=data)
        bg.attrs["n_psf_per_source"] = pars.shape[1] * pars.shape[2]
    back = read_psf_mixture(path, "F277W")
    ref = _as_float32(m)  # file order is kept (this file is not sorted)
    assert back == ref


def test_read_3d_without_sersic_bin_and_gauss_params(tmp_path, rng):
    m = centred_mixture(rng, 3)
    ref = _as_float32(m)
    path = tmp_path / "psf.h5"
    nodt = np.dtype([(c, np.float32) for c in ("amp", "xcen", "ycen", "Cxx", "Cyy", "Cxy")])
    pars = np.zeros((1, 9, 3), dtype=nodt)
    for name, v in zip(nodt.names, (m.amp, m.mean[:, 0], m.mean[:, 1], m.cov[:, 0, 0],
                                    m.cov[:, 1, 1], m.cov[:, 0, 1])):
        pars[name] = v
    # forcepho's older PSFStore layout: one 6-vector field plus sersic_bin
    gdt = np.dtype([("gauss_params", np.float32, 6), ("sersic_bin", np.int32)])
    gp = np.zeros((1, 9 * 3), dtype=gdt)
    gp["gauss_params"] = np.tile(np.column_stack([pars[name][0, 0] for name in nodt.names]),
                                 (9, 1))
    gp["sersic_bin"] = np.repeat(np.arange(9), 3)
    with h5py.File(path, "w") as h5:
        h5.create_group("A").create_dataset("parameters", data=pars)
        h5.create_group("B").create_dataset("parameters", data=gp)
        h5.create_group("C").create_dataset("parameters", data=gp[0])  # 1-d: one location
    assert read_psf_mixture(path, "A") == ref
    assert read_psf_mixture(path, "B") == ref
    assert read_psf_mixture(path, "C") == ref


def test_forcepho_can_use_written_file(tmp_path, rng):
    """Emulate forcepho's PSFStore.lookup and JadesPatch.pack_psf on a written file."""
    mixtures = [centred_mixture(rng, 3) for _ in range(4)]
    locations = np.array([[100.0, 100.0], [1900.0, 120.0], [80.0, 1950.0], [1024.0, 1024.0]])
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F200W", mixtures, locations=locations)
    with h5py.File(path, "r") as h5:
        n_psf = h5["F200W"].attrs["n_psf_per_source"]
        for i, (x, y) in enumerate(locations + 5.0):
            xp, yp = h5["F200W"]["detector_locations"][:]   # what forcepho does
            choose = np.hypot(x - xp, y - yp).argmin()
            assert choose == i
            pars = h5["F200W"]["parameters"][choose]
            assert len(pars) == n_psf
            packed = np.empty(n_psf, dtype=FORCEPHO_DTYPE)
            packed[:] = pars  # structured assignment by position (xcr -> xcen)
            amp, mean, _ = sorted_float32(mixtures[i])
            np.testing.assert_array_equal(packed["amp"][:3], amp)
            np.testing.assert_array_equal(packed["xcen"][:3], mean[:, 0])


# -- several locations -------------------------------------------------------------------------
def test_several_locations_round_trip(tmp_path, rng):
    mixtures = [centred_mixture(rng, 4) for _ in range(3)]
    locations = [[10.5, 20.0], [1000.0, 30.25], [512.0, 2000.0]]
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F356W", mixtures, locations=locations, n_sersic_bins=9)
    with h5py.File(path, "r") as f:
        assert f["F356W/parameters"].shape == (3, 36)
        assert f["F356W/detector_locations"].shape == (2, 3)
    back = read_psf_mixture(path, "F356W")
    assert isinstance(back, list) and len(back) == 3
    for b, m in zip(back, mixtures):
        assert_matches(b, m)
    assert_matches(read_psf_mixture(path, "F356W", location=1), mixtures[1])
    assert_matches(read_psf_mixture(path, "F356W", location=np.int64(-1)), mixtures[2])
    np.testing.assert_array_equal(read_psf_locations(path, "F356W"), locations)
    with pytest.raises(InputError, match="out of range.*3 location"):
        read_psf_mixture(path, "F356W", location=3)
    with pytest.raises(InputError, match="integer"):
        read_psf_mixture(path, "F356W", location=1.0)
    with pytest.raises(InputError, match="integer"):
        read_psf_mixture(path, "F356W", location=True)


def test_locations_of_two_psfs_and_hand_written_orientations(tmp_path, rng):
    mixtures = [centred_mixture(rng, 2) for _ in range(2)]
    locs = np.array([[1.0, 2.0], [3.0, 4.0]])
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "A", mixtures, locations=locs)
    np.testing.assert_array_equal(read_psf_locations(path, "A"), locs)
    # a single PSF accepts a (2,) location
    write_psf_mixture(path, "B", mixtures[0], locations=(7.0, 8.0))
    np.testing.assert_array_equal(read_psf_locations(path, "B"), [[7.0, 8.0]])
    # hand-written (nloc, 2) with nloc = 3 is accepted too
    pars = _forcepho_params(mixtures[0], nloc=3).reshape(3, -1)
    with h5py.File(path, "a") as h5:
        g = h5.create_group("C")
        g.create_dataset("parameters", data=pars)
        g.create_dataset("detector_locations", data=np.arange(6.0).reshape(3, 2))
        g = h5.create_group("D")
        g.create_dataset("parameters", data=pars)
        g.create_dataset("detector_locations", data=np.arange(8.0).reshape(4, 2))
    np.testing.assert_array_equal(read_psf_locations(path, "C"), np.arange(6.0).reshape(3, 2))
    with pytest.raises(InputError, match="detector_locations has shape"):
        read_psf_locations(path, "D")


def test_different_component_counts_refused(tmp_path, rng):
    path = tmp_path / "psf.h5"
    with pytest.raises(InputError, match="same number of components"):
        write_psf_mixture(path, "A", [centred_mixture(rng, 2), centred_mixture(rng, 3)])
    with pytest.raises(InputError, match=r"shape \(nloc, 2\) = \(2, 2\)"):
        write_psf_mixture(path, "A", [centred_mixture(rng, 2)] * 2, locations=[[1, 2]])
    assert not path.exists()


# -- nothing is lost ---------------------------------------------------------------------------
def _two_band_file(path, rng):
    write_psf_mixture(path, "F115W", centred_mixture(rng, 3), arcsec_per_pixel=0.031)
    write_psf_mixture(path, "F444W", [centred_mixture(rng, 4) for _ in range(2)],
                      locations=[[1, 2], [3, 4]], arcsec_per_pixel=0.063)
    # things astromix does not write must survive too
    with h5py.File(path, "a") as h5:
        h5.attrs["creator"] = "someone else"
        h5["F444W"].attrs["note"] = "fitted to stars"
        h5["F444W"].create_dataset("extra", data=np.arange(10, dtype=np.int16))
        h5.create_dataset("top_level_table", data=np.linspace(0, 1, 7))


def test_rewriting_one_band_keeps_the_other(tmp_path, rng):
    path = tmp_path / "psf.h5"
    _two_band_file(path, rng)
    with h5py.File(path, "r") as f:
        before = snapshot(f)
    new = centred_mixture(rng, 6)
    write_psf_mixture(path, "F115W", new, n_sersic_bins=4)
    with h5py.File(path, "r") as f:
        after = snapshot(f)
        assert f["F115W"].attrs["n_psf_per_source"] == 24
        # the replaced group holds only what was written now
        assert "arcsec_per_pixel" not in f["F115W"].attrs
    untouched = lambda snap: {k: v for k, v in snap.items()  # noqa: E731
                              if not k.startswith("F115W")}
    assert set(untouched(before)) == {"/", "F444W", "F444W/parameters",
                                      "F444W/detector_locations", "F444W/extra",
                                      "top_level_table"}
    assert untouched(after) == untouched(before)
    assert_matches(read_psf_mixture(path, "F115W"), new)
    assert len(read_psf_mixture(path, "F444W")) == 2


def test_overwrite_false_leaves_file_identical(tmp_path, rng):
    path = tmp_path / "psf.h5"
    _two_band_file(path, rng)
    digest, stat = sha256(path), os.stat(path)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(InputError) as info:
        write_psf_mixture(path, "F444W", centred_mixture(rng, 2), overwrite=False)
    assert str(path) in str(info.value) and "'F444W'" in str(info.value)
    assert sha256(path) == digest
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert sorted(os.listdir(tmp_path)) == listing
    # a new band is fine with overwrite=False
    write_psf_mixture(path, "F200W", centred_mixture(rng, 2), overwrite=False)
    assert len(read_psf_mixture(path, "F200W")) == 2


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["fill", "replace"])
def test_crash_mid_write_leaves_file_identical(tmp_path, rng, monkeypatch, exc, where):
    path = tmp_path / "psf.h5"
    _two_band_file(path, rng)
    digest = sha256(path)
    listing = sorted(os.listdir(tmp_path))
    real_fill = forcepho._fill_group

    def crash_after_fill(group, *args):
        real_fill(group, *args)  # the temporary copy is fully modified, then we crash
        raise exc("simulated crash")

    def crash_replace(src, dst):
        raise exc("simulated crash")

    if where == "fill":
        monkeypatch.setattr(forcepho, "_fill_group", crash_after_fill)
    else:
        monkeypatch.setattr(forcepho.os, "replace", crash_replace)
    with pytest.raises(exc, match="simulated crash"):
        write_psf_mixture(path, "F115W", centred_mixture(rng, 5))
    monkeypatch.undo()
    assert sha256(path) == digest
    assert sorted(os.listdir(tmp_path)) == listing  # no stray temporary file
    assert len(read_psf_mixture(path, "F115W")) == 3


def test_crash_writing_a_new_file_leaves_nothing(tmp_path, rng, monkeypatch):
    def boom(*args):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(forcepho, "_fill_group", boom)
    with pytest.raises(OSError, match="simulated"):
        write_psf_mixture(tmp_path / "new.h5", "A", centred_mixture(rng, 2))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and symlinks")
def test_permissions_and_symlink_kept(tmp_path, rng):
    target = tmp_path / "real.h5"
    write_psf_mixture(target, "A", centred_mixture(rng, 2))
    os.chmod(target, 0o640)
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    write_psf_mixture(link, "B", centred_mixture(rng, 2))
    assert link.is_symlink()
    assert os.stat(target).st_mode & 0o777 == 0o640
    with h5py.File(target, "r") as f:
        assert sorted(f) == ["A", "B"]
    assert sorted(os.listdir(tmp_path)) == ["link.h5", "real.h5"]


def test_refuses_to_replace_a_non_hdf5_file(tmp_path, rng):
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    digest = sha256(path)
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        write_psf_mixture(path, "A", centred_mixture(rng, 2))
    assert sha256(path) == digest
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        read_psf_mixture(path, "A")
    assert os.listdir(tmp_path) == ["notes.h5"]


# -- reading errors ----------------------------------------------------------------------------
def test_missing_file_and_band(tmp_path, rng):
    path = tmp_path / "absent.h5"
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        read_psf_mixture(path, "F200W")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        read_psf_locations(path, "F200W")
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F200W", centred_mixture(rng, 2))
    write_psf_mixture(path, "F090W", centred_mixture(rng, 2))
    with pytest.raises(InputError, match=r"no band 'F150W'; bands present: 'F090W', 'F200W'"):
        read_psf_mixture(path, "F150W")
    with pytest.raises(InputError, match="no band"):
        read_psf_locations(path, "F150W")


def _write_raw(path, band, data, **attrs):
    with h5py.File(path, "a") as h5:
        g = h5.create_group(band)
        if data is not None:
            g.create_dataset("parameters", data=data)
        g.attrs.update(attrs)


def test_malformed_datasets(tmp_path, rng):
    path = tmp_path / "bad.h5"
    m = centred_mixture(rng, 3)
    good = _forcepho_params(m).reshape(1, -1)
    # missing field
    nocxy = np.zeros(good.shape, dtype=[(n, np.float32) for n in ("amp", "xcr", "ycr", "Cxx",
                                                                   "Cyy")]
                     + [("sersic_bin", np.int32)])
    _write_raw(path, "nocxy", nocxy)
    nocentre = np.zeros(good.shape, dtype=[(n, np.float32) for n in ("amp", "Cxx", "Cyy", "Cxy")]
                        + [("sersic_bin", np.int32)])
    _write_raw(path, "nocentre", nocentre)
    nobin = np.zeros(good.shape, dtype=[(n, np.float32) for n in PSF_DTYPE.names[:6]])
    _write_raw(path, "nobin", nobin)
    # non positive-definite covariance
    notpd = good.copy()
    notpd["Cxy"][0, 1::3] = 1e3
    _write_raw(path, "notpd", notpd)
    nan = good.copy()
    nan["amp"][0, 0] = np.nan
    _write_raw(path, "nan", nan)
    _write_raw(path, "plain", np.zeros((1, 27)))
    _write_raw(path, "empty", None)
    _write_raw(path, "count", good, n_psf_per_source=26)
    cases = {"nocxy": "lacks field.*Cxy", "nocentre": "lacks field.*xcr/xcen, ycr/ycen",
             "nobin": "lacks field.*sersic_bin", "notpd": "not positive definite",
             "nan": "non-finite", "plain": "not a structured array",
             "empty": "no 'parameters' dataset", "count": "n_psf_per_source = 26"}
    for band, problem in cases.items():
        with pytest.raises(InputError, match=problem) as info:
            read_psf_mixture(path, band)
        assert str(path) in str(info.value) and repr(band) in str(info.value), band


def test_different_bins_read_bin_zero_with_warning(tmp_path, rng, caplog):
    m = centred_mixture(rng, 3)
    pars = _forcepho_params(m)
    pars["Cxx"][0, 4] *= 2.0
    path = tmp_path / "psf.h5"
    _write_raw(path, "A", pars.reshape(1, -1), n_psf_per_source=27)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        back = read_psf_mixture(path, "A")
    assert back == _as_float32(m)
    assert "sersic_bin 4 differs from bin 0" in caplog.text


# -- bad inputs to the writer ------------------------------------------------------------------
def test_bad_writer_inputs(tmp_path, rng):
    path = tmp_path / "psf.h5"
    m = centred_mixture(rng, 2)
    with pytest.raises(InputError, match="GaussianMixture"):
        write_psf_mixture(path, "A", np.ones(3))
    with pytest.raises(InputError, match=r"psf\[1\]"):
        write_psf_mixture(path, "A", [m, "not a psf"])
    with pytest.raises(InputError, match="empty"):
        write_psf_mixture(path, "A", [])
    for band in ("", "a/b", 3, None, ".."):
        with pytest.raises(InputError, match="band"):
            write_psf_mixture(path, band, m)
    for n in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="n_sersic_bins"):
            write_psf_mixture(path, "A", m, n_sersic_bins=n)
    for scale in (0, -0.03, np.nan, "big"):
        with pytest.raises(InputError, match="arcsec_per_pixel"):
            write_psf_mixture(path, "A", m, arcsec_per_pixel=scale)
    for locs in ([[1, np.inf]], [[1, 2, 3]], "here"):
        with pytest.raises(InputError, match="locations"):
            write_psf_mixture(path, "A", m, locations=locs)
    # positive definite in float64, singular once rounded to float32
    eps = 1e-10
    thin = GaussianMixture([1.0], [[0, 0]], [[[1.0, 1 - eps], [1 - eps, 1.0]]])
    with pytest.raises(InputError, match="not positive definite once rounded to float32"):
        write_psf_mixture(path, "A", thin)
    huge = GaussianMixture([1e39], [[0, 0]], [np.eye(2)])
    with pytest.raises(InputError, match="amp.*float32"):
        write_psf_mixture(path, "A", huge)
    assert not path.exists()
    write_psf_mixture(path, "A", m)
    with pytest.raises(InputError, match="band must be a string"):
        read_psf_mixture(path, 5)


def test_uncentred_psf_warns(tmp_path, caplog):
    m = GaussianMixture([1.0], [[25.0, 25.0]], [np.eye(2)])
    with caplog.at_level(logging.WARNING, logger="astromix"):
        write_psf_mixture(tmp_path / "psf.h5", "A", m)
    assert "centroid" in caplog.text


# -- damaged files -----------------------------------------------------------------------------
def _damaged_copies(tmp_path, rng):
    """A valid file (band 'A', two locations) and copies with damaged HDF5 metadata.

    The damage is placed by the HDF5 format specification (superblock version 0, which h5py
    writes by default): the signature of the root group's symbol-table node (``SNOD``), the
    float32 description of the compound member ``xcr``, and the driver-information address of
    the superblock (bytes 48-55, "undefined" = all 0xFF), which only a write trips over.
    """
    good = tmp_path / "good.h5"
    m = centred_mixture(rng, 2)
    write_psf_mixture(good, "A", [m, m], locations=[[1, 2], [3, 4]], arcsec_per_pixel=0.03)
    data = good.read_bytes()
    assert data[:8] == b"\x89HDF\r\n\x1a\n" and data[8] == 0  # superblock version 0
    i = data.index(b"SNOD")
    snod = data[:i] + b"XXXX" + data[i + 4:]
    i = data.index(b"xcr\x00")
    dtype = bytearray(data)
    dtype[i - 2:i + 6] = bytes([51, 117, 206, 243, 238, 7, 128, 16])
    assert data[48:56] == b"\xff" * 8
    driver = data[:55] + b"\x47" + data[56:]
    out = {}
    for name, content in (("snod", snod), ("dtype", bytes(dtype)), ("driver", driver)):
        out[name] = tmp_path / f"{name}.h5"
        out[name].write_bytes(content)
    return m, out


def test_damaged_file_reads_raise_input_error(tmp_path, rng):
    m, files = _damaged_copies(tmp_path, rng)
    for name in ("snod", "dtype"):
        path = files[name]
        with pytest.raises(InputError, match="cannot read the HDF5 file") as info:
            read_psf_mixture(path, "A")
        assert str(path) in str(info.value) and "'A'" in str(info.value), name
    with pytest.raises(InputError, match="cannot read the HDF5 file") as info:
        read_psf_locations(files["snod"], "A")
    assert str(files["snod"]) in str(info.value) and "'A'" in str(info.value)
    # only a write trips over the driver-information address: the reads give the PSF back
    assert_matches(read_psf_mixture(files["driver"], "A", location=1), m)
    np.testing.assert_array_equal(read_psf_locations(files["driver"], "A"), [[1, 2], [3, 4]])


@pytest.mark.parametrize("name, where", [("snod", "refusing"), ("driver", "cannot write")])
def test_damaged_file_write_refused_unchanged(tmp_path, rng, name, where):
    """Damage found before writing (snod) or while writing (driver): InputError naming the
    file and the band, the file byte-identical and no temporary file left."""
    _, files = _damaged_copies(tmp_path, rng)
    path = files[name]
    before = path.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(InputError, match=where) as info:
        write_psf_mixture(path, "B", centred_mixture(rng, 3))
    assert str(path) in str(info.value) and "'B'" in str(info.value)
    assert "damaged" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing


# -- band names and case -----------------------------------------------------------------------
def test_band_found_regardless_of_case(tmp_path, rng):
    """forcepho's make_psf.py writes band.upper(); older astromix files have the band as typed."""
    lower, upper = centred_mixture(rng, 2), centred_mixture(rng, 3)
    old = tmp_path / "old.h5"
    write_psf_mixture(old, "f200w", [lower, lower], locations=[[1, 2], [3, 4]])
    assert_matches(read_psf_mixture(old, "F200W", location=0), lower)
    np.testing.assert_array_equal(read_psf_locations(old, "F200W"), [[1, 2], [3, 4]])
    new = tmp_path / "new.h5"
    write_psf_mixture(new, "F200W", upper)
    assert_matches(read_psf_mixture(new, "f200w"), upper)
    with h5py.File(new, "r") as f:
        assert list(f) == ["F200W"]  # the library writes the name as given
    # a file with two groups that differ only in case (made with h5py): an exact match
    # wins over a case-insensitive one
    both = tmp_path / "both.h5"
    write_psf_mixture(both, "f200w", lower)
    with h5py.File(new, "r") as src, h5py.File(both, "r+") as dst:
        dst.copy(src["F200W"], "F200w")
    assert_matches(read_psf_mixture(both, "f200w"), lower)
    assert_matches(read_psf_mixture(both, "F200w"), upper)
    # any other case: refused, not guessed
    with pytest.raises(InputError, match=r"only in case: 'F200w', 'f200w'") as info:
        read_psf_mixture(both, "F200W")
    assert str(both) in str(info.value)
    with pytest.raises(InputError, match="no band 'F150W'"):
        read_psf_mixture(both, "F150W")
    # and writing into such a file is refused, even under one of the exact names
    digest = sha256(both)
    for band in ("F200W", "f200w"):
        with pytest.raises(InputError, match=r"several groups .* only in case: 'F200w', "
                                             r"'f200w'.*left unchanged"):
            write_psf_mixture(both, band, upper)
    assert sha256(both) == digest


def test_writing_a_band_in_another_case_replaces_its_group(tmp_path):
    """The writer finds the band as the readers do: "f200w" into a file holding forcepho's
    "F200W" replaces that group under its own name (the one forcepho looks up), or with
    overwrite=False refuses and leaves the file as it was (before: a second group
    "f200w" was added, forcepho and read_psf_mixture(path, "F200W") kept the old PSF).
    The other bands are not touched."""
    path = tmp_path / "psf.h5"
    old = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 1.0])
    new = GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 4.0])
    others = {"F150W": GaussianMixture([0.6, 0.4], [[0, 0], [0, 0]], [np.eye(2), 3 * np.eye(2)]),
              "f444w": GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2) * 9.0])}
    for band, mixture in others.items():
        write_psf_mixture(path, band, mixture)
    write_psf_mixture(path, "F200W", old, arcsec_per_pixel=0.031)  # as make_psf.py names it
    with h5py.File(path, "r") as f:
        before = {k: v for k, v in snapshot(f).items() if not k.startswith("F200W")}
    digest = sha256(path)
    with pytest.raises(InputError, match=r"already has band 'f200w' \(as 'F200W'\) and "
                                         "overwrite=False") as info:
        write_psf_mixture(path, "f200w", new, overwrite=False)
    assert str(path) in str(info.value)
    assert sha256(path) == digest
    write_psf_mixture(path, "f200w", new)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["F150W", "F200W", "f444w"]
        after = {k: v for k, v in snapshot(f).items() if not k.startswith("F200W")}
        assert "arcsec_per_pixel" not in f["F200W"].attrs  # the group was replaced
    assert after == before
    for band in ("F200W", "f200w"):
        assert_matches(read_psf_mixture(path, band), new)
    for band, mixture in others.items():
        assert_matches(read_psf_mixture(path, band.swapcase()), mixture)
    # "F444W" finds "f444w" too
    write_psf_mixture(path, "F444W", old)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["F150W", "F200W", "f444w"]
    assert_matches(read_psf_mixture(path, "f444w"), old)
    assert_matches(read_psf_mixture(path, "F150W"), others["F150W"])


# -- amplitudes: forcepho's fitted ones, summing to the PSF flux the mixture holds ---------------
def _moffat_psf_and_star(flux=1000.0):
    """A Moffat PSF (alpha 2 science px, beta 2: strong wings), 4x oversampled over 61 x 61
    science px and centred on the image, normalised analytically to unit total flux (the
    image holds 0.9965 of it); and a star of total flux ``flux``: the image binned into
    science pixels (its centre at science pixel (30, 30))."""
    from astropy.modeling.models import Moffat2D

    n_over, n_sci, alpha, beta = 4, 61, 2.0, 2.0
    y, x = (np.mgrid[:n_over * n_sci, :n_over * n_sci] - (n_over * n_sci - 1) / 2) / n_over
    moffat = Moffat2D(amplitude=(beta - 1) / (np.pi * alpha ** 2), gamma=alpha, alpha=beta)
    image = moffat(x, y) / n_over ** 2
    star = flux * image.reshape(n_sci, n_over, n_sci, n_over).sum(axis=(1, 3))
    return image, star, 30.0


def _linear_flux(mixture, star, centre):
    """The least-squares flux of ``star`` for the model ``flux * mixture`` at ``centre``,
    the amplitudes as they are (what forcepho renders)."""
    from astromix.backends import get_backend

    model = get_backend().to_numpy(mixture.shift(centre, centre).render(star.shape))
    return float((model * star).sum() / (model * model).sum())


def test_fitted_psf_written_with_forcepho_amplitudes(tmp_path):
    """fit_psf_mixture renormalises the mixture fitted to a trimmed PSF image to unit flux;
    written so, forcepho (which renders flux * amp as they are) measured fluxes 6 % low on
    this PSF.  The file now holds the fitted amplitudes, summing to the flux fraction, as
    forcepho's make_psf.py writes them: a star of known flux comes out right with them,
    and astromix's models still get the unit-flux shape from the file."""
    from astromix import GaussianMixturePSF
    from astromix.fitting import fit_psf_mixture

    image, star, centre = _moffat_psf_and_star(1000.0)
    trim = 100  # keeps 44 x 44 oversampled px, +-5.5 science px: 0.90 of the flux
    psf = fit_psf_mixture(image, 3, oversampling=4, trim=trim, rng=0)
    assert psf.mixture.flux == pytest.approx(1.0)
    path = tmp_path / "psf.h5"
    write_psf_mixture(path, "F200W", psf)
    back = read_psf_mixture(path, "F200W")
    # forcepho's use of the file: the star's total flux
    assert _linear_flux(back, star, centre) == pytest.approx(1000.0, rel=0.01)
    assert back.flux == pytest.approx(psf.fit_info["flux_fraction"], rel=1e-6)
    # astromix's: the unit-flux shape, giving the flux within the mixture; / frac = total
    unit = GaussianMixturePSF(back).mixture
    assert unit.flux == pytest.approx(1.0)
    within = _linear_flux(unit, star, centre)
    assert within < 0.97 * 1000.0
    assert within / back.flux == pytest.approx(1000.0, rel=0.01)


def test_flux_fraction_argument(tmp_path, rng):
    m = centred_mixture(rng, 3)
    path = tmp_path / "psf.h5"
    # a plain mixture is written as it is; flux_fraction scales its amplitudes to that sum
    half = GaussianMixture(m.amp * 0.5, m.mean, m.cov)
    write_psf_mixture(path, "A", half)
    assert read_psf_mixture(path, "A").flux == pytest.approx(0.5, rel=1e-6)
    write_psf_mixture(path, "A", half, flux_fraction=0.9)
    back = read_psf_mixture(path, "A")
    assert back.flux == pytest.approx(0.9, rel=1e-6)
    np.testing.assert_allclose(np.sort(back.amp), np.sort(m.amp * 0.9), rtol=1e-6)
    # one value per location; 1.0 writes unit-sum amplitudes whatever fit_info says
    two = [types.SimpleNamespace(mixture=m, fit_info={"flux_fraction": 0.8}), half]
    write_psf_mixture(path, "B", two)
    assert [x.flux for x in read_psf_mixture(path, "B")] == pytest.approx([0.8, 0.5], rel=1e-6)
    write_psf_mixture(path, "B", two, flux_fraction=[0.7, 0.95])
    assert [x.flux for x in read_psf_mixture(path, "B")] == pytest.approx([0.7, 0.95], rel=1e-6)
    write_psf_mixture(path, "B", two, flux_fraction=1.0)
    assert [x.flux for x in read_psf_mixture(path, "B")] == pytest.approx([1.0, 1.0], rel=1e-6)
    for bad in (0.0, -0.5, np.nan, np.inf, "most", [0.9]):
        with pytest.raises(InputError, match="flux_fraction"):
            write_psf_mixture(path, "B", two, flux_fraction=bad)
    negative = GaussianMixture([1.0, -1.0], [[0, 0], [0, 0]], [np.eye(2), np.eye(2) * 0.5])
    with pytest.raises(InputError, match="cannot be scaled"):
        write_psf_mixture(path, "C", negative, flux_fraction=0.9)
