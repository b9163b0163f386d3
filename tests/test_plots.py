"""Per-observation figures: the image with regions fills its figure (it once shrank to a corner)."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from matplotlib.image import imread

from xmmcore.images import Extent
from xmmcore.plots import plot_image_regions


def _sky_wcs(n: int, bin_phys: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, -11.0]
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.cdelt = [-bin_phys * 0.05 / 3600, bin_phys * 0.05 / 3600]
    return wcs


def test_image_with_regions_fills_the_figure(tmp_path):
    n, bin_phys = 640, 80.0
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:n, :n]
    image = rng.poisson(0.5 + 30.0 / (1 + ((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / 100.0)).astype(float)
    extent = Extent(x0=0.0, y0=0.0, bin_phys=bin_phys, nx=n, ny=n)
    centre = n / 2 * bin_phys
    regions = {
        "centre_x": centre,
        "centre_y": centre,
        "r_src_arcmin": 3.0,
        "bkg_inner_arcmin": 3.15,
        "bkg_outer_arcmin": 4.5,
        "point_sources": [{"x": centre + 3000.0, "y": centre - 2000.0, "r_arcsec": 20.0}],
    }
    path = plot_image_regions(image, _sky_wcs(n, bin_phys), extent, regions, tmp_path / "img.png", title="t")
    rgb = imread(path)[..., :3]
    inked = np.mean(np.any(rgb < 0.95, axis=-1))
    assert inked > 0.5, f"only {inked:.0%} of the figure is drawn"
    # the window is cropped around the background annulus (+60%), not the whole 640-pixel image
    assert rgb.shape[0] < 800
