"""The out-of-FOV corner area: the column-extreme hull equals the hull of every occupied cell."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from xmmcore.corners import _hull_area, particle_level


def _all_cells_hull(x: np.ndarray, y: np.ndarray, cell: float = 40.0) -> float:
    """The definition: hull of the four corners of every occupied cell."""
    pts = np.unique(np.column_stack([np.floor(x / cell), np.floor(y / cell)]), axis=0)
    corners = np.concatenate([pts + d for d in ((0, 0), (1, 0), (0, 1), (1, 1))]) * cell
    return float(ConvexHull(corners).volume)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hull_area_equals_hull_of_all_cells(seed):
    rng = np.random.default_rng(seed)
    # a CCD cut by a circular field edge, and a plain rectangle, with negative coordinates too
    x = rng.uniform(-9000.0, 12000.0, 20000)
    y = rng.uniform(-4000.0, 6000.0, 20000)
    cut = np.hypot(x - 15000.0, y) > 9000.0
    for xs, ys in ((x, y), (x[cut], y[cut])):
        assert _hull_area(xs, ys) == pytest.approx(_all_cells_hull(xs, ys), rel=1e-12)


def test_particle_level_sums_corner_area_per_ccd():
    rng = np.random.default_rng(3)
    n = 30000
    ccd = rng.integers(1, 4, n)
    # CCD k covers x in [k*12000, k*12000 + 10000), y in [0, 10000); the field is x < k*12000 + 6000
    x = ccd * 12000.0 + rng.uniform(0.0, 10000.0, n)
    y = rng.uniform(0.0, 10000.0, n)
    in_fov = x - ccd * 12000.0 < 6000.0
    cols = {"X": x, "Y": y, "CCDNR": ccd, "PI": np.full(n, 1000.0), "TIME": np.linspace(0.0, 100.0, n)}
    level = particle_level(cols, np.array([[0.0, 50.0]]), corner=~in_fov, in_fov=in_fov)
    expected_px = sum(
        _all_cells_hull(x[ccd == c], y[ccd == c])
        - _all_cells_hull(x[(ccd == c) & in_fov], y[(ccd == c) & in_fov])
        for c in (1, 2, 3)
    )
    assert level is not None
    assert level["area_arcmin2"] == pytest.approx(expected_px * (0.05 / 60.0) ** 2, rel=1e-12)
    # ~ 3 x 4000 x 10000 px of corner
    assert level["area_arcmin2"] == pytest.approx(3 * 4000 * 10000 * (0.05 / 60.0) ** 2, rel=0.02)
    assert level["counts"] == float(int(((~in_fov) & (cols["TIME"] <= 50.0)).sum()))
