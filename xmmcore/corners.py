"""Quiescent particle background from the out-of-field-of-view (corner) events of an EPIC list.

The parts of the CCDs outside the telescope's field of view see no sky photons and no soft protons,
only the instrumental (particle) background, which is not vignetted: SAS flags their events
``OUT_OF_FOV`` (FLAG bit 0x10000). Their 0.5-2 keV count per arcmin^2 within the flare-filtered good
time is the particle level under the cluster's surface-brightness profile, the term that the beta
model cannot tell from a flat cluster wing when the cluster fills the field (ESAS uses the corners
the same way to scale its particle spectra).

The corner area is the area of each CCD (convex hull of all its events, in the field and out of it)
minus the area of its in-field part (convex hull of its in-field events: a CCD cut by the circular
field edge is still convex), summed over the CCDs.  The filter step writes the result into the
cleaned event list's header (:data:`HEADER_KEYS`), where the regions step reads it
(:func:`level_from_header`); lists without the keywords (SAS backend, older results) give ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from . import gti as gtimod
from .constants import SKY_PIXEL_ARCSEC

__all__ = ["HEADER_KEYS", "OUT_OF_FOV", "corner_rows", "level_from_header", "particle_level"]

OUT_OF_FOV = 0x10000
#: Header keywords of the cleaned event list: corner counts (0.5-2 keV, clean GTIs), corner area [arcmin^2].
HEADER_KEYS = {"counts": "QPBCORN", "area": "QPBAREA"}
_BAND_KEV = (0.5, 2.0)
_MIN_AREA_ARCMIN2 = 1.0


def corner_rows(
    cols: Mapping[str, np.ndarray], *, pattern_max: int | None, flag_mask: int | None
) -> np.ndarray:
    """Events flagged OUT_OF_FOV that pass every other bit of ``flag_mask`` and the PATTERN cut."""
    flag = cols["FLAG"].astype(np.int64)
    out = (flag & OUT_OF_FOV) != 0
    if flag_mask is not None:
        out &= (flag & (int(flag_mask) & ~OUT_OF_FOV & 0xFFFFFFFF)) == 0
    if pattern_max is not None:
        out &= cols["PATTERN"] <= pattern_max
    return out


def _hull_area(x: np.ndarray, y: np.ndarray, cell: float = 40.0) -> float:
    """Area [physical px^2] of the convex hull of the points, on a grid of ``cell`` (2") for speed."""
    if x.size < 10:
        return 0.0
    ix = np.floor(x / cell).astype(np.int64)
    iy = np.floor(y / cell).astype(np.int64)
    # Only the lowest and highest occupied cell of each grid column can be on the hull of the cells'
    # corners (the others lie on the segment between them), so the hull is that of far fewer points.
    order = np.lexsort((iy, ix))
    ix, iy = ix[order], iy[order]
    first = np.flatnonzero(np.r_[True, ix[1:] != ix[:-1]])
    last = np.r_[first[1:] - 1, ix.size - 1]
    pts = np.column_stack(
        [np.concatenate([ix[first], ix[last]]), np.concatenate([iy[first], iy[last]])]
    ).astype(float)
    # the hull of the cells' corners: the same outline to within one cell
    corners = np.concatenate([pts + d for d in ((0, 0), (1, 0), (0, 1), (1, 1))]) * cell
    try:
        return float(ConvexHull(corners).volume)
    except QhullError:
        return 0.0


def particle_level(
    cols: Mapping[str, np.ndarray], gti: np.ndarray, *, corner: np.ndarray, in_fov: np.ndarray
) -> dict[str, float] | None:
    """Corner counts in 0.5-2 keV within ``gti`` and the corner area [arcmin^2]; ``None`` without corners.

    ``corner``/``in_fov``: masks of the screened out-of-field and in-field events (all energies: their
    positions outline the CCDs).
    """
    x, y, ccd = cols["X"], cols["Y"], cols["CCDNR"]
    on_sky = (x > -1e7) & (y > -1e7)
    area_px = 0.0
    # one sort by CCD, then each CCD's events are a slice (not a full-list mask per CCD)
    keep = np.flatnonzero(on_sky & (corner | in_fov))
    keep = keep[np.argsort(ccd[keep], kind="stable")]
    ccd_k, x_k, y_k, fov_k, corner_k = ccd[keep], x[keep], y[keep], in_fov[keep], corner[keep]
    ccds, starts = np.unique(ccd_k, return_index=True)
    stops = np.r_[starts[1:], ccd_k.size]
    for start, stop in zip(starts, stops, strict=True):
        if not corner_k[start:stop].any():
            continue
        xs, ys, fov = x_k[start:stop], y_k[start:stop], fov_k[start:stop]
        whole = _hull_area(xs, ys)
        inside = _hull_area(xs[fov], ys[fov])
        area_px += max(whole - inside, 0.0)
    area = area_px * (SKY_PIXEL_ARCSEC / 60.0) ** 2
    if area < _MIN_AREA_ARCMIN2:
        return None
    pi = cols["PI"]
    band = corner & (pi >= _BAND_KEV[0] * 1000.0) & (pi <= _BAND_KEV[1] * 1000.0)
    n = int(gtimod.mask_in_gti(cols["TIME"][band], gti).sum())
    return {"counts": float(n), "area_arcmin2": float(area)}


def level_from_header(header: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(counts, area_arcmin2)`` of the corners from a cleaned list's header, or ``None``."""
    try:
        counts, area = float(header[HEADER_KEYS["counts"]]), float(header[HEADER_KEYS["area"]])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(counts) and np.isfinite(area) and area > 0 and counts >= 0):
        return None
    return counts, area
