"""Moffat fits of the stars of the CFHT A370 image (issue 6, item 7): a consistent seeing.

Runs ``benchmarks/moffat_field.py`` on the 20 brightest isolated, unsaturated
point sources.  Measured (20 stars): Moffat FWHM median 0.80" with a robust
scatter of 7.7%, beta median 1.37 (1.49 on 60 stars, 1.59 with 41 x 41
cut-outs), photutils' Gaussian ``fit_fwhm`` median 1.11".  This image's stars
have strong wings (beta ~1.5), so a Gaussian fitted to the same 25 x 25
pixels is ~40% wider than the Moffat FWHM: the bounds below on beta and on
that ratio are the measured values with a margin, not the issue's first
guesses ((1.5, 10) and 25%).
"""

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("photutils")

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "moffat_field.py"


@pytest.fixture(scope="module")
def field():
    if not BENCH.is_file():
        pytest.skip("benchmarks/moffat_field.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("moffat_field", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's FITSFixedWarning (RADECSYS) and photutils'
        return module.measure(n=20)


def test_moffat_fwhm_is_consistent_across_the_field(field):
    assert field["n"] == 20
    assert field["success"].all()
    assert (field["moved"] < 1.0).all()                       # every fit stayed on its star
    med = field["median_fwhm"]
    assert 0.6 < med < 1.0                                     # arcsec
    assert field["mad_fwhm"] < 0.10 * med                      # robust scatter < 10%
    assert 1.1 < field["median_beta"] < 10.0
    assert (field["beta"] > 1.0).all()
    # a Gaussian on a beta ~1.5 Moffat star is much wider: the ratio is 0.72
    assert 0.6 < med / field["median_gauss_fwhm"] < 0.85
    # no strong trend across the field: < 0.1" per 1000 px
    assert abs(field["slope_x"]) < 0.1 and abs(field["slope_y"]) < 0.1
    assert np.median(field["seconds"]) < 0.5
