"""PI spectra on the SAS channel grids, region areas/exposures, and grouping.

Channel grids (identical to the canned SAS RMFs in ``shared/data/xmm``):

====== ========= =========== ==================== =========================================
camera channels  width [eV]  PI -> channel        keywords
====== ========= =========== ==================== =========================================
pn     4096      5           ``PI // 5`` (0-4095)  ``SPECDELT=5``, ``TLMIN1=0``, PI <= 20479
MOS    800       15          ``PI // 15`` (0-799)  ``SPECDELT=15``, ``TLMIN1=0``, PI <= 11999
====== ========= =========== ==================== =========================================

Exposure convention (documented choice): like SAS ``evselect`` ("weighted live time of CCDs in
the extraction region"), ``ONTIME`` is the sum over CCDs of each CCD's GTI overlap with the
flare-filtered GTIs, weighted by the fraction of the region's on-detector area that lies on that
CCD; ``EXPOSURE = LIVETIME`` applies each CCD's dead-time factor ``LIVETInn/ONTIMEnn`` from
the input event header.  ``BACKSCAL`` is the region area on the detector in physical
pixel^2 (0.05 arcsec pixels), the unit of SAS ``backscale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import gti as gtimod
from .events import EventList
from .images import CcdFootprints
from .regions import Selection

__all__ = [
    "CHANNEL_GRID",
    "RegionGeometry",
    "backscal",
    "channel_grid",
    "extract",
    "fwhm_channels",
    "fwhm_from_rmf",
    "group_min_counts",
    "group_optimal",
    "pi_histogram",
    "region_geometry",
]

#: camera -> (number of channels, channel width [eV])
CHANNEL_GRID = {"pn": (4096, 5), "mos1": (800, 15), "mos2": (800, 15)}


def channel_grid(camera: str) -> tuple[int, int]:
    """``(n_channels, width_eV)`` of a camera's SAS spectral grid."""
    try:
        return CHANNEL_GRID[camera]
    except KeyError:
        raise ValueError(f"unknown camera {camera!r}; expected pn, mos1 or mos2") from None


def pi_histogram(pi: np.ndarray, camera: str) -> np.ndarray:
    """Counts per channel (``channel = PI // width``; PI beyond the grid dropped), int64."""
    n, width = channel_grid(camera)
    pi = np.asarray(pi)
    chan = pi // width
    chan = chan[(chan >= 0) & (chan < n)]
    return np.bincount(chan.astype(np.intp), minlength=n)[:n].astype(np.int64)


@dataclass
class RegionGeometry:
    """Area and exposure of a region for one camera.

    Attributes
    ----------
    area_phys2 : float
        Area on the detector [physical pixel^2] (BACKSCAL).
    area_by_ccd : dict of int -> float
        The same, split by CCD.
    ontime_s : float
        Area-weighted GTI overlap [s].
    livetime_s : float
        Area-weighted live time [s] (EXPOSURE).
    """

    area_phys2: float
    area_by_ccd: dict[int, float]
    ontime_s: float
    livetime_s: float

    @property
    def backscal(self) -> float:
        return self.area_phys2


def region_geometry(
    sel: Selection,
    footprints: CcdFootprints,
    evl: EventList,
    *,
    gti: np.ndarray | None = None,
    step_phys: float = 20.0,
) -> RegionGeometry:
    """Area per CCD and area-weighted exposure of a selection (see the module docstring).

    The area is counted on a ``step_phys`` grid of points; a CCD footprint is a convex hull, so on each
    grid row it covers one interval of x, found from its edges (instead of a point-in-polygon test of
    every point against every CCD, which was most of the spectra step's own time).
    """
    xmin, xmax, ymin, ymax = sel.bbox()
    xs = np.arange(np.floor(xmin / step_phys) * step_phys + 0.5 * step_phys, xmax + step_phys, step_phys)
    ys = np.arange(np.floor(ymin / step_phys) * step_phys + 0.5 * step_phys, ymax + step_phys, step_phys)
    counts: dict[int, int] = dict.fromkeys(footprints.hulls, 0)
    for row in np.array_split(ys, max(1, ys.size * xs.size // 400_000 + 1)):
        xx, yy = np.meshgrid(xs, row)
        free = sel.contains(xx, yy)
        for c in sorted(footprints.hulls):
            if not free.any():
                break
            x_lo, x_hi = _convex_row_span(footprints.hulls[c], row)
            inside = free & (xs[None, :] > x_lo[:, None]) & (xs[None, :] < x_hi[:, None])
            counts[c] += int(np.count_nonzero(inside))
            free &= ~inside
    area_by_ccd = {c: n * step_phys**2 for c, n in counts.items() if n > 0}
    area = float(sum(area_by_ccd.values()))
    ontime = livetime = 0.0
    if area > 0:
        for c, a in area_by_ccd.items():
            g = evl.gti_ccd.get(c, evl.gti)
            t = gtimod.exposure(g if gti is None else gtimod.intersection(g, gti))
            ontime += a / area * t
            livetime += a / area * t * evl.deadtime_factor(c)
    return RegionGeometry(area_phys2=area, area_by_ccd=area_by_ccd, ontime_s=ontime, livetime_s=livetime)


def _convex_row_span(poly: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x interval ``(lo, hi)`` that the convex polygon ``poly`` (vertices, N x 2) covers at each ``y``.

    Rows the polygon does not reach get an empty interval (``lo = +inf``, ``hi = -inf``).
    """
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    y = np.asarray(ys, dtype=float)[:, None]
    crosses = (np.minimum(y0, y1) <= y) & (y <= np.maximum(y0, y1)) & (y0 != y1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    lo = np.where(crosses, x, np.inf).min(axis=1)
    hi = np.where(crosses, x, -np.inf).max(axis=1)
    return lo, hi


def extract(
    evl: EventList,
    *,
    selection: Selection | None = None,
    mask: np.ndarray | None = None,
    mask_fn: Any = None,
    camera: str | None = None,
    exposure: float,
    backscal: float,
    header: Mapping[str, Any] | None = None,
    respfile: str | None = None,
    ancrfile: str | None = None,
    backfile: str | None = None,
):
    """Source or background spectrum of the events in a region, as an :class:`xmmcore.ogip.PHA`.

    Parameters
    ----------
    evl : EventList
        Cleaned events.
    selection : Selection, optional
        Spatial selection (physical X/Y); or give ``mask`` (bool per event), or ``mask_fn(x, y)``
        returning a bool per event from physical X, Y.
    camera : str, optional
        Defaults to ``evl.camera``.
    exposure : float
        EXPOSURE [s].
    backscal : float
        BACKSCAL [physical pixel^2].
    header : mapping, optional
        Extra keywords.
    """
    from .ogip import PHA

    camera = camera or evl.camera
    n, width = channel_grid(camera)
    if mask is None and mask_fn is not None:
        mask = np.asarray(mask_fn(evl["X"], evl["Y"]), dtype=bool)
    if mask is None:
        mask = np.ones(len(evl), dtype=bool) if selection is None else selection.contains(evl["X"], evl["Y"])
    counts = pi_histogram(evl["PI"][mask], camera)
    h = {
        "TELESCOP": "XMM",
        "INSTRUME": evl.header.get("INSTRUME", "").strip(),
        "FILTER": str(evl.header.get("FILTER", "NONE")).strip(),
        "OBS_ID": evl.header.get("OBS_ID", ""),
        "OBJECT": evl.header.get("OBJECT", ""),
        "DATE-OBS": evl.header.get("DATE-OBS", ""),
        "DETCHANS": n,
        "CHANTYPE": "PI",
        "SPECDELT": width,
        "SPECPIX": 0,
        "SPECVAL": (width - 1) / 2.0,
        "HDUCLAS2": "TOTAL",
        "TLMIN1": 0,
        "TLMAX1": n - 1,
    }
    for key in ("RA_OBJ", "DEC_OBJ", "RA_PNT", "DEC_PNT", "MJDREF", "DATAMODE", "SUBMODE"):
        if key in evl.header:
            h[key] = evl.header[key]
    # ogip.write_pha takes plain values (no (value, comment) tuples)
    h.update({k: (v[0] if isinstance(v, tuple) else v) for k, v in dict(header or {}).items()})
    return PHA(
        channel=np.arange(n, dtype=np.int64),
        counts=counts.astype(float),
        exposure=float(exposure),
        backscal=float(backscal),
        areascal=1.0,
        respfile=respfile,
        ancrfile=ancrfile,
        backfile=backfile,
        header=h,
    )


def backscal(sel: Selection, footprints: CcdFootprints | None = None, *, step_phys: float = 20.0) -> float:
    """BACKSCAL of a selection: its area on the detector [physical pixel^2] (SAS ``backscale`` unit)."""
    from .regions import region_area

    return region_area(sel, footprints=footprints, step_phys=step_phys)


def group_min_counts(
    counts: np.ndarray, min_counts: int, *, first: int = 0, last: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Group adjacent channels until each group has at least ``min_counts`` counts (as ``grppha group min``).

    Returns ``(grouping, quality)``: grouping 1 starts a group and -1 continues it; a final
    group short of ``min_counts`` is merged into the previous one (``specgroup`` behaviour) or,
    if it is the only group, flagged bad (quality 2).
    """
    c = np.asarray(counts, dtype=float)
    n = c.size
    last = n - 1 if last is None else last
    grouping = np.ones(n, dtype=np.int16)
    quality = np.zeros(n, dtype=np.int16)
    if min_counts <= 1 or last < first:
        return grouping, quality
    # Every group starts with +1 (OGIP; Sherpa refuses a spectrum whose first grouped channel is -1):
    # the first group begins at ``first`` whatever its counts, so empty leading channels join it.
    starts = [first]
    acc = 0.0
    for i in range(first, last):
        acc += c[i]
        if acc >= min_counts:
            starts.append(i + 1)
            acc = 0.0
    if len(starts) > 1 and c[starts[-1] : last + 1].sum() < min_counts:
        starts.pop()  # the short last group joins the previous one (specgroup)
    grouping[first : last + 1] = -1
    grouping[starts] = 1
    if len(starts) == 1 and c[first : last + 1].sum() < min_counts:
        quality[first : last + 1] = 2  # not even one group reaches min_counts
    return grouping, quality


def fwhm_channels(camera: str, n: int | None = None) -> np.ndarray:
    """Approximate FWHM [channels] per channel: ``FWHM(E)^2 = A + B E`` (eV, E in keV).

    pn ``A = 3956, B = 2444``; MOS ``A = 892, B = 2708`` (the widths of the canned SAS RMFs, as in
    :mod:`xmmcore.responses`).  Use :func:`fwhm_from_rmf` when the RMF is at hand.
    """
    nch, width = channel_grid(camera)
    n = nch if n is None else n
    e_kev = (np.arange(n) + 0.5) * width / 1000.0
    a, b = (3956.0, 2444.0) if camera == "pn" else (892.0, 2708.0)
    return np.sqrt(a + b * e_kev) / width


def fwhm_from_rmf(rmf: Any) -> np.ndarray:
    """FWHM [channels] per channel from an :class:`xmmcore.ogip.RMF`.

    For each energy row, the width of the main peak at half its maximum (channels above half
    maximum, linearly interpolated at both edges); the EPIC low-energy shoulders and tails do not
    count, as in ``ftgrouppha``'s use of the resolution.  Interpolated from photon energy to
    channel energy.
    """
    m = rmf.matrix.tocsr()
    n_chan = m.shape[1]
    e_mid = 0.5 * (np.asarray(rmf.energ_lo) + np.asarray(rmf.energ_hi))
    ch_mid = 0.5 * (np.asarray(rmf.e_min) + np.asarray(rmf.e_max))
    fw = np.full(m.shape[0], np.nan)
    for i in range(m.shape[0]):
        lo_i, hi_i = m.indptr[i], m.indptr[i + 1]
        if hi_i - lo_i < 2:
            continue
        idx, w = m.indices[lo_i:hi_i], m.data[lo_i:hi_i]
        row = np.zeros(idx.max() - idx.min() + 1)
        row[idx - idx.min()] = w
        k = int(np.argmax(row))
        half = 0.5 * row[k]
        if half <= 0:
            continue
        left = k
        while left > 0 and row[left - 1] >= half:
            left -= 1
        right = k
        while right < row.size - 1 and row[right + 1] >= half:
            right += 1
        # linear interpolation of the half-maximum crossings
        fl = (
            (row[left] - half) / (row[left] - row[left - 1])
            if left > 0 and row[left] > row[left - 1]
            else 0.5
        )
        fr = (
            (row[right] - half) / (row[right] - row[right + 1])
            if right < row.size - 1 and row[right] > row[right + 1]
            else 0.5
        )
        fw[i] = (right - left) + fl + fr
    good = np.isfinite(fw) & (e_mid > 0)
    if not good.any():
        return np.ones(n_chan)
    return np.interp(ch_mid, e_mid[good], fw[good])


def group_optimal(
    counts: np.ndarray, fwhm_chan: np.ndarray, *, min_counts: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Kaastra & Bleeker (2016) optimal binning, as ``ftgrouppha grouptype=optimal``.

    For each channel the optimal bin width is ``delta = FWHM * f(x)`` with
    ``x = ln[N_r (1 + 0.2 ln R)]``, ``N_r`` the counts in one resolution element around the
    channel and ``R`` the number of resolution elements in the spectrum;
    ``f = 0.08`` for ``x <= 2.119`` else ``(0.08 + 7/x + 1.8/x^2) / (1 + 5.9/x)`` (their eq. 36).
    Groups are then built left to right with width ``max(1, floor(min delta in the group))``,
    optionally also requiring ``min_counts`` per group.
    """
    c = np.asarray(counts, dtype=float)
    n = c.size
    fw = np.maximum(np.asarray(fwhm_chan, dtype=float)[:n], 1.0)
    r_elems = float(np.sum(1.0 / fw))
    cum = np.concatenate([[0.0], np.cumsum(c)])
    idx = np.arange(n)
    lo = np.clip(np.floor(idx - fw / 2).astype(int), 0, n)
    hi = np.clip(np.ceil(idx + fw / 2).astype(int) + 1, 0, n)
    n_res = cum[hi] - cum[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.maximum(n_res, 1e-9) * (1.0 + 0.2 * np.log(max(r_elems, 1.0))))
        f = np.where(x <= 2.119, 0.08, (0.08 + 7.0 / x + 1.8 / x**2) / (1.0 + 5.9 / x))
    delta = np.maximum(fw * f, 1.0)
    grouping = -np.ones(n, dtype=np.int16)
    quality = np.zeros(n, dtype=np.int16)
    i = 0
    while i < n:
        grouping[i] = 1
        width = max(1, int(np.floor(delta[i])))
        j = i + width
        # Shrink the group if a narrower optimal width appears inside it.
        while j > i + 1 and int(np.floor(delta[i:j].min())) < j - i:
            j = i + max(1, int(np.floor(delta[i:j].min())))
        if min_counts > 0:
            while j < n and c[i:j].sum() < min_counts:
                j += 1
        i = j
    if min_counts > 0:
        starts = np.flatnonzero(grouping == 1)
        if starts.size and c[starts[-1] :].sum() < min_counts:
            if starts.size > 1:
                grouping[starts[-1]] = -1
            else:
                quality[:] = 2
    return grouping, quality
