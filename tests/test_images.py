"""xmmcore.images on event lists built in memory: grids, binning, CCD footprints, coverage and exposure."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from xmmcore.events import EventList
from xmmcore.images import (
    Extent,
    bin_image,
    ccd_footprints,
    coverage_image,
    exposure_image,
    extent_of,
    image_wcs,
)


def _header() -> fits.Header:
    h = fits.Header()
    for axis, crval, cdelt in (("X", 149.6, -0.05 / 3600), ("Y", -11.08, 0.05 / 3600)):
        h[f"REF{axis}CRPX"], h[f"REF{axis}CRVL"], h[f"REF{axis}CDLT"] = 25921.0, crval, cdelt
        h[f"REF{axis}CTYP"] = "RA---TAN" if axis == "X" else "DEC--TAN"
    return h


def _evl(x, y, *, pi=None, ccd=None, gti_ccd=None) -> EventList:
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    cols = {
        "X": x,
        "Y": y,
        "PI": np.full(n, 1000) if pi is None else np.asarray(pi),
        "CCDNR": np.ones(n, int) if ccd is None else np.asarray(ccd),
        "TIME": np.linspace(0.0, 100.0, n),
    }
    gti_ccd = gti_ccd or {1: np.array([[0.0, 100.0]])}
    return EventList("mos1", _header(), cols, gti_ccd=gti_ccd, gti=np.array([[0.0, 100.0]]))


def test_extent_pixel_round_trip_and_centres() -> None:
    ext = Extent(x0=1000.0, y0=2000.0, bin_phys=80.0, nx=4, ny=3)
    xc, yc = ext.centres()
    assert list(xc) == [1040.0, 1120.0, 1200.0, 1280.0] and list(yc) == [2040.0, 2120.0, 2200.0]
    i, j = ext.to_pixel(1040.0, 2200.0)
    assert (float(i), float(j)) == (0.0, 2.0)
    assert tuple(map(float, ext.to_phys(3, 0))) == (1280.0, 2040.0)


def test_extent_of_is_aligned_to_the_bin_and_padded() -> None:
    ext = extent_of(_evl([1000.0, 2000.0], [5000.0, 5100.0]), bin_phys=80.0, pad_phys=0.0)
    assert (ext.x0, ext.y0) == (960.0, 4960.0)  # floor(1000/80)*80, floor(5000/80)*80
    assert (ext.nx, ext.ny) == (13, 2)  # ceil((2000-960)/80), ceil((5100-4960)/80)
    padded = extent_of(_evl([1000.0, 2000.0], [5000.0, 5100.0]), bin_phys=80.0, pad_phys=400.0)
    assert (padded.x0, padded.nx) == (560.0, 23)
    with pytest.raises(ValueError, match="no events"):
        extent_of(_evl([], []))


def test_bin_image_counts_band_and_wcs() -> None:
    # three events in pixel (0, 0), one in (2, 1) out of band, one outside the grid
    evl = _evl(
        [1001, 1010, 1079, 1170, 9999], [2001, 2002, 2079, 2085, 2001], pi=[600, 1500, 1999, 3000, 1000]
    )
    ext = Extent(x0=1000.0, y0=2000.0, bin_phys=80.0, nx=3, ny=2)
    img, wcs, _ = bin_image(evl, band_kev=(0.5, 2.0), extent=ext)
    assert img.shape == (2, 3) and img[0, 0] == 3 and img.sum() == 3
    all_pi, _, _ = bin_image(evl, band_kev=None, extent=ext)
    assert all_pi[1, 2] == 1 and all_pi.sum() == 4
    # the reference pixel (physical 25921) maps onto the WCS reference value
    w = image_wcs(_header(), Extent(x0=25921.0 - 40.0, y0=25921.0 - 40.0, bin_phys=80.0, nx=1, ny=1))
    ra, dec = w.wcs_pix2world([[1.0, 1.0]], 1)[0]
    assert ra == pytest.approx(149.6) and dec == pytest.approx(-11.08)
    assert wcs.wcs.cdelt[1] == pytest.approx(80 * 0.05 / 3600)


def test_footprints_coverage_and_exposure_per_ccd() -> None:
    rng = np.random.default_rng(3)
    # CCD 1 fills x in [0, 1000), CCD 2 x in [1200, 2000): a 200-pixel chip gap between them
    x1, x2 = rng.uniform(0, 1000, 400), rng.uniform(1200, 2000, 400)
    y = rng.uniform(0, 1000, 800)
    evl = _evl(
        np.concatenate([x1, x2]),
        y,
        ccd=np.repeat([1, 2], 400),
        gti_ccd={1: np.array([[0.0, 100.0]]), 2: np.array([[0.0, 40.0], [60.0, 80.0]])},
    )
    fp = ccd_footprints(evl)
    assert sorted(fp.hulls) == [1, 2]
    assert fp.ccd_of(500.0, 500.0) == 1 and fp.ccd_of(1600.0, 500.0) == 2 and fp.ccd_of(1100.0, 500.0) is None
    assert list(fp.contains(np.array([500.0, 1100.0, 1600.0]), np.array([500.0] * 3))) == [True, False, True]
    ext = Extent(x0=0.0, y0=0.0, bin_phys=100.0, nx=20, ny=10)
    cov = coverage_image(fp, ext)
    assert cov[5, 5] == 1.0 and cov[5, 11] == 0.0 and cov[5, 15] == 1.0
    expo = exposure_image(evl, ext, footprints=fp)
    assert expo[5, 5] == 100.0 and expo[5, 15] == 60.0 and expo[5, 11] == 0.0
    # intersected with a flare GTI of 0-50 s
    cut = exposure_image(evl, ext, footprints=fp, gti=np.array([[0.0, 50.0]]))
    assert cut[5, 5] == 50.0 and cut[5, 15] == 40.0
    # CCDs with too few events have no footprint
    assert ccd_footprints(evl, min_events=500).hulls == {}
