"""Review findings on the mosaic PSF (second round): the flux of unnormalised stamps, the
coverage of exposures without a shape, position bins on the detector, the FWHM of
psf_profile_metrics and non-integer sizes."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy.special import erf

from astromix import InputError
from astromix.mosaic import (
    ExposureWeightedPSF,
    ImageProvider,
    InputExposure,
    PoppyProvider,
    exposures_from_table,
    psf_profile_metrics,
    tan_wcs,
)
from astromix.mosaic.providers import PSFProvider, StpsfProvider

#: FWHM of a Gaussian over its sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

MOSAIC_WCS = tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (60, 60), (121, 121))


def gaussian_image(sigma, oversampling, half_size=20):
    """A round Gaussian of ``sigma`` detector px sampled at ``oversampling`` samples per
    detector px, centred, unit sum (flux per sample)."""
    n = (2 * half_size + 1) * oversampling
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    img = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2.0 * (sigma * oversampling) ** 2))
    return img / img.sum()


def aligned_exposure(name="e", shape=(2048, 2048), **kwargs):
    """An exposure with the mosaic's scale and orientation: its Jacobian is the identity."""
    return InputExposure(name, tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (1000, 1000),
                                       shape), 10.0, **kwargs)


# -- 1. normalize=False: the flux of the stamp ------------------------------------------------
@pytest.mark.parametrize("oversampling", [1, 2, 4])
def test_unnormalised_stamp_is_the_pixel_integral_of_the_unit_flux_psf(oversampling):
    """normalize=False: a unit-sum provider image gives the flux per mosaic pixel of a
    unit-flux source.  It was ceil(8 / oversampling)**2 times too large (64, 16, 4).
    Truth: without detector pixel and drop, the stamp of a Gaussian of sigma s is its
    integral over each mosaic pixel, a product of erf differences."""
    s = 2.0                                                     # detector px = mosaic px
    provider = ImageProvider(gaussian_image(s, oversampling), oversampling=oversampling)
    model = ExposureWeightedPSF(MOSAIC_WCS, [aligned_exposure()], provider, pixfrac=0,
                                detector_pixel=False, normalize=False, subsample=4)
    dim = 25
    edges = np.arange(dim + 1) - (dim - 1) / 2.0 - 0.5
    cdf = 0.5 * (1 + erf(edges / (np.sqrt(2.0) * s)))
    truth = np.outer(np.diff(cdf), np.diff(cdf))
    stamp = model.image(60, 60, dim)
    assert stamp.sum() == pytest.approx(truth.sum(), rel=2e-3)
    assert np.abs(stamp - truth).max() < 5e-3 * truth.max()
    # the ePSF: every one of the 4 x 4 phases is such a stamp, the whole sums to 16
    epsf = model.image(60, 60, 4 * dim, oversampling=4)
    assert epsf.sum() / 16 == pytest.approx(truth.sum(), rel=2e-3)
    # with the detector pixel and the drop (boxes of unit area) the flux is kept
    model.detector_pixel, model.pixfrac = True, 1.0
    assert model.image(60, 60, 41).sum() == pytest.approx(1.0, rel=2e-3)


# -- 2. exposures without a shape ------------------------------------------------------------
def _pointing_table(**extra):
    # A on the source (NRCA1, roll 0); B (NRCB4, roll 90) 5 arcmin north: 300" / 0.031"
    # = 9700 px away, far off its 2048 x 2048 px detector.  Neither row has NAXIS1/2.
    rows = [dict(FILENAME="A_cal.fits", EFFEXPTM=100.0, RA_REF=150.0, DEC_REF=2.0,
                 ROLL_REF=0.0, V3I_YANG=0.0, VPARITY=-1, XREF_SCI=1024.5, YREF_SCI=1024.5,
                 DETECTOR="NRCA1"),
            dict(FILENAME="B_cal.fits", EFFEXPTM=100.0, RA_REF=150.0, DEC_REF=2.0 + 5 / 60,
                 ROLL_REF=90.0, V3I_YANG=0.0, VPARITY=-1, XREF_SCI=1024.5, YREF_SCI=1024.5,
                 DETECTOR="NRCB4")]
    for row in rows:
        row.update(extra)
    return Table(rows=rows)


def test_exposures_without_naxis_cover_only_their_detector(caplog):
    """Without a context, an exposure from a table without NAXIS1/NAXIS2 counted at every
    mosaic position, even 5 arcmin off its detector, with no warning: its pixel grid is
    now its detector's full frame (NIRCam: 2048 x 2048)."""
    exps = exposures_from_table(_pointing_table())
    assert [e.shape for e in exps] == [None, None]
    assert [e.pixel_grid for e in exps] == [(2048, 2048), (2048, 2048)]
    mw = tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (100, 100), (201, 201))
    yy, xx = np.mgrid[:41, :41]
    provider = ImageProvider(np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 18.0), oversampling=1)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        model = ExposureWeightedPSF(mw, exps, provider)
    assert "cannot be decided" not in caplog.text
    row = model.source_table([100.0], [100.0])[0]
    assert row["n_exposures"] == 1 and row["exposures"] == "A_cal"


@pytest.mark.parametrize("detector, meta, grid", [
    ("NRCALONG", {}, (2048, 2048)), ("NIS", {}, (2048, 2048)),
    ("MIRIMAGE", {}, (1024, 1032)),               # 1032 columns by 1024 rows
    ("NRCA1", {"SUBARRAY": "FULL"}, (2048, 2048)),
    ("NRCA1", {"subarray": "SUB640"}, None),      # a subarray's size is not the detector's
    ("XYZ", {}, None), (None, {}, None)])
def test_pixel_grid_of_the_detector(detector, meta, grid):
    exp = InputExposure("e", tan_wcs(150.0, 2.0, 0.03, np.eye(2), (0, 0)), detector=detector,
                        meta=meta)
    assert exp.pixel_grid == grid


def test_pixel_grid_from_the_wcs_and_a_warning_when_unknown(caplog):
    """The WCS's array_shape bounds the exposure; an exposure whose grid cannot be known
    (no shape, unknown detector) is announced when there is no context."""
    on_wcs = InputExposure("wcs", tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (10, 10),
                                          (30, 30)))
    unknown = InputExposure("unknown", tan_wcs(150.0, 2.0, 0.03, [[-1, 0], [0, 1]], (10, 10)),
                            detector="XYZ")
    provider = ImageProvider(gaussian_image(1.5, 2), oversampling=2)
    with caplog.at_level(logging.WARNING, logger="astromix"):
        model = ExposureWeightedPSF(MOSAIC_WCS, [on_wcs, unknown], provider)
    assert "cannot be decided" in caplog.text and "unknown" in caplog.text
    assert on_wcs.pixel_grid == (30, 30)
    # mosaic (60, 60) is detector (10, 10) of both; mosaic (60 + 25, 60) is detector x = 35,
    # off the 30 px wide grid of the first (the second counts: its grid is unknown)
    mask, det_xy, _ = model.contributors([60.0, 85.0], [60.0, 60.0])
    assert np.allclose(det_xy[:, :, 0], [[10, 35], [10, 35]], atol=1e-6)
    assert mask.tolist() == [[True, True], [False, True]]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="astromix"):
        ExposureWeightedPSF(MOSAIC_WCS, [on_wcs, unknown], provider,
                            context=np.full((121, 121), 3, dtype=np.int32))
    assert "cannot be decided" not in caplog.text


# -- 3. position bins on the detector ---------------------------------------------------------
def stpsf_detector_position_check(position, npixels):
    """stpsf 2.2.0's ``detector_position`` setter (stpsf_core.py), written out: ``npixels``
    is ``_detector_npixels``, an int or a tuple read as (y, x)."""
    x, y = map(int, position)
    if x < 0 or y < 0:
        raise ValueError("Detector pixel coordinates must be nonnegative integers")
    ny, nx = npixels if isinstance(npixels, tuple) else (npixels, npixels)
    if x > nx - 1 or y > ny - 1:
        raise ValueError(f"The maximum allowed detector pixel coordinate value is (X,Y) = "
                         f"({nx - 1}, {ny - 1})")


@pytest.mark.parametrize("bin_size, detector, shape, grid", [
    (256, "NRCA1", None, (2048, 2048)), (500, "NRCA1", None, (2048, 2048)),
    (1000, "NRCB4", (2048, 2048), (2048, 2048)), (256, "MIRIMAGE", None, (1024, 1032)),
    (300, None, (1024, 1032), (1024, 1032)), (4096, "NRCA1", None, (2048, 2048))])
def test_position_bin_centres_lie_on_the_detector(bin_size, detector, shape, grid):
    """The bin centre (where the bin's PSF is computed) fell off the detector for bins
    reaching beyond its edge (2250 for bin 500 on 2048 px) and for positions within half a
    pixel of its low edge (-128); stpsf refuses both.  The centre is now on the detector,
    in the position's bin, and a whole bin's centre is unchanged."""
    exp = InputExposure("e", tan_wcs(0, 0, 0.031, np.eye(2), (0, 0)), instrument="NIRCam",
                        filter="F200W", detector=detector, shape=shape)
    ny, nx = grid
    provider = PSFProvider(4, position_bin=bin_size)
    xs = np.concatenate([[-0.49, -0.1, 0.0], np.linspace(0, nx - 1, 97), [nx - 0.51]])
    ys = np.concatenate([[-0.49, -0.1, 0.0], np.linspace(0, ny - 1, 97), [ny - 0.51]])
    for x, y in zip(xs, ys):
        bx, by = provider.key(exp, x, y)[3:5]
        stpsf_detector_position_check((bx, by), (ny, nx))    # on the exposure's pixels
        for v, c, n in ((x, bx, nx), (y, by, ny)):
            k = np.floor(np.clip(v, 0, n - 1) / bin_size)
            assert np.floor(c / bin_size) == k               # the position's own bin
            if (k + 1) * bin_size <= n:                      # a whole bin: its centre
                assert c == (k + 0.5) * bin_size


def test_stpsf_provider_sets_positions_stpsf_accepts(monkeypatch, tmp_path):
    """stpsf (its setter's rule written out) refused the bin centres off the detector: the
    whole cube failed.  stpsf 2.2 also reads MIRI's (1032, 1024) as (y, x), refusing x >
    1023 on a detector 1032 columns wide.  stpsf itself is a stand-in module (its data
    files, and often the package, are not installed where the tests run)."""
    import sys
    import types

    stpsf = types.ModuleType("stpsf")
    monkeypatch.setitem(sys.modules, "stpsf", stpsf)

    class FakeInstrument:
        def __init__(self, name):
            self._detector_npixels = (1032, 1024) if name.upper() == "MIRI" else 2048
            self.positions = []

        @property
        def detector_position(self):
            return self.positions[-1]

        @detector_position.setter
        def detector_position(self, position):
            stpsf_detector_position_check(position, self._detector_npixels)
            self.positions.append((int(position[0]), int(position[1])))

        def calc_psf(self, oversample, fov_pixels, **kwargs):
            set_positions.append(self.positions[-1])
            n = oversample * fov_pixels
            c = (n - 1) / 2.0
            yy, xx = np.mgrid[:n, :n]
            img = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * 4.0 ** 2))
            return fits.HDUList([fits.PrimaryHDU(img), fits.ImageHDU(img, name="OVERDIST")])

    set_positions = []
    stpsf.instrument = FakeInstrument
    cases = [("NIRCam", "NRCA1", 500, (2040.0, 100.0), (2024, 250)),
             ("NIRCam", "NRCA1", 256, (-0.3, 500.0), (128, 384)),
             ("NIRCam", "NRCB4", 1000, (2010.0, 2030.0), (2024, 2024)),
             ("MIRI", "MIRIMAGE", 256, (1030.0, 1000.0), (1023, 896))]
    for instrument, detector, bin_size, (x, y), expected in cases:
        provider = StpsfProvider(instrument, position_bin=bin_size, opd_by_date=False,
                                 fov_pixels=11, data_path=str(tmp_path))
        exp = InputExposure("e", tan_wcs(0, 0, 0.031, np.eye(2), (0, 0)),
                            instrument=instrument, detector=detector,
                            shape=(1024, 1032) if instrument == "MIRI" else (2048, 2048))
        _, image = provider.psf(exp, x, y)
        assert image is not None and image.sum() == pytest.approx(1.0)
        assert set_positions[-1] == expected


# -- 4. psf_profile_metrics: the FWHM ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(41, 41), (41, 61), (61, 41)])
def test_fwhm_of_gaussians_is_unbiased(shape):
    """The half-maximum area was counted on ndimage.zoom's grid (spacing (n - 1) / (4 n - 1)
    px) as if its spacing were 1/4 px: the FWHM was 1.5-2.5% too large for these images.
    Truth: 2 sqrt(2 ln 2) sigma."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    scale = 0.03
    errors = []
    for sigma in np.linspace(3.0, 4.5, 7):
        img = np.exp(-((xx - (nx - 1) / 2) ** 2 + (yy - (ny - 1) / 2) ** 2) / (2 * sigma ** 2))
        fwhm = psf_profile_metrics(img, scale, radii=(0.1,), r_total=0.3)["fwhm"]
        errors.append(fwhm / (FWHM_PER_SIGMA * sigma * scale) - 1)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.005          # unbiased (it was +1.7% and more)
    assert np.abs(errors).max() < 0.015        # pixelation of the 4x grid


# -- 5. integer sizes are refused, not truncated ----------------------------------------------
def test_non_integer_sizes_are_refused_and_integral_ones_taken():
    """oversampling=2.5 was truncated to 2 (the PSF then 25% too wide), dim=25.9 to 25,
    subsample=2.9 to 2, image(oversampling=1.5) gave a plain 1x stamp."""
    img = gaussian_image(1.5, 4)
    for make in (lambda: ImageProvider(img, oversampling=2.5),
                 lambda: PSFProvider(3.5),
                 lambda: PSFProvider(True),
                 lambda: PoppyProvider(fov_pixels=41.5),
                 lambda: PoppyProvider(nlambda=2.5)):
        with pytest.raises(InputError, match="must be an integer"):
            make()
    provider = ImageProvider(img, oversampling=4)
    with pytest.raises(InputError, match="subsample must be an integer"):
        ExposureWeightedPSF(MOSAIC_WCS, [aligned_exposure()], provider, subsample=2.9)
    model = ExposureWeightedPSF(MOSAIC_WCS, [aligned_exposure()], provider)
    with pytest.raises(InputError, match="dim must be an integer"):
        model.image(60, 60, 25.9)
    with pytest.raises(InputError, match="oversampling must be an integer"):
        model.image(60, 60, 25, oversampling=1.5)
    with pytest.raises(InputError, match="dim must be an integer"):
        model.cube([60.0], [60.0], 25.5, progress=False, executor="serial")
    # integral floats and NumPy integers are integers
    assert ImageProvider(img, oversampling=4.0).oversampling == 4
    assert ImageProvider(img, oversampling=np.int64(4)).oversampling == 4
    model = ExposureWeightedPSF(MOSAIC_WCS, [aligned_exposure()], provider,
                                subsample=np.int32(2))
    assert model.subsample == 2
    stamp = model.image(60, 60, np.int64(24), oversampling=2.0)
    assert stamp.shape == (24, 24) and stamp.sum() == pytest.approx(4.0)
