"""Good-time-interval algebra as pure functions.

A GTI table is a float64 array of shape ``(N, 2)`` holding ``[start, stop)`` pairs in seconds
(mission time, TT).  Every function returns a *normalised* table: sorted by start, no
zero-length or overlapping intervals, touching intervals merged.  Empty tables have shape
``(0, 2)``.  Nothing here reads or writes files (cf. stingray's ``gti.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "as_gti",
    "check_gti",
    "complement",
    "drop_short",
    "exposure",
    "from_bins",
    "gti_slices",
    "intersection",
    "mask_in_gti",
    "normalise",
    "overlap",
    "union",
]


def as_gti(gti: Iterable | np.ndarray | None) -> np.ndarray:
    """Return ``gti`` as a float64 ``(N, 2)`` array (``None`` -> empty)."""
    if gti is None:
        return np.zeros((0, 2), dtype=np.float64)
    arr = np.asarray(gti, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"GTI must have shape (N, 2), got {arr.shape}")
    return arr


def check_gti(gti: Any) -> np.ndarray:
    """Validate a GTI table: finite, start < stop, sorted and non-overlapping.

    Returns the table as float64; raises ``ValueError`` naming the first bad row.
    """
    arr = as_gti(gti)
    if not np.all(np.isfinite(arr)):
        raise ValueError("GTI holds non-finite times")
    bad = np.flatnonzero(arr[:, 1] <= arr[:, 0])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"GTI row {i} has stop <= start ({arr[i, 0]!r}, {arr[i, 1]!r})")
    if arr.shape[0] > 1:
        over = np.flatnonzero(arr[1:, 0] < arr[:-1, 1])
        if over.size:
            i = int(over[0]) + 1
            raise ValueError(f"GTI row {i} starts before row {i - 1} stops (unsorted or overlapping)")
    return arr


def normalise(gti: Iterable | np.ndarray | None) -> np.ndarray:
    """Sort, drop empty intervals and merge overlapping or touching ones."""
    arr = as_gti(gti)
    if arr.shape[0] == 0:
        return arr.copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError("GTI holds non-finite times")
    arr = arr[arr[:, 1] > arr[:, 0]]
    if arr.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.float64)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    # A new group starts where the start exceeds every earlier stop.
    run_max = np.maximum.accumulate(arr[:, 1])
    new = np.empty(arr.shape[0], dtype=bool)
    new[0] = True
    new[1:] = arr[1:, 0] > run_max[:-1]
    starts = arr[new, 0]
    group = np.cumsum(new) - 1
    stops = np.zeros(starts.size)
    np.maximum.at(stops, group, arr[:, 1])
    return np.column_stack([starts, stops])


def union(*gtis: Any) -> np.ndarray:
    """Times covered by at least one of the tables."""
    parts = [as_gti(g) for g in gtis]
    if not parts:
        return np.zeros((0, 2))
    return normalise(np.concatenate(parts, axis=0))


def _intersect_two(a: Any, b: Any) -> np.ndarray:
    a = normalise(a)
    b = normalise(b)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((0, 2))
    # Candidate pairs: for each a-interval, the b-intervals it can overlap.
    lo = np.searchsorted(b[:, 1], a[:, 0], side="right")
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")
    counts = np.maximum(hi - lo, 0)
    if counts.sum() == 0:
        return np.zeros((0, 2))
    ia = np.repeat(np.arange(a.shape[0]), counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ib = np.repeat(lo, counts) + offs
    start = np.maximum(a[ia, 0], b[ib, 0])
    stop = np.minimum(a[ia, 1], b[ib, 1])
    return normalise(np.column_stack([start, stop]))


def intersection(*gtis: Any) -> np.ndarray:
    """Times covered by every table (empty tables give an empty result)."""
    if not gtis:
        return np.zeros((0, 2))
    out = normalise(gtis[0])
    for g in gtis[1:]:
        out = _intersect_two(out, g)
    return out


def complement(gti: Any, *, tstart: float, tstop: float) -> np.ndarray:
    """Bad time intervals: ``[tstart, tstop)`` minus ``gti``."""
    g = intersection(gti, [[tstart, tstop]])
    edges = np.concatenate([[tstart], g.ravel(), [tstop]])
    return normalise(edges.reshape(-1, 2))


def exposure(gti: Any) -> float:
    """Total length of the (normalised) intervals [s]."""
    g = normalise(gti)
    return float(np.sum(g[:, 1] - g[:, 0]))


def overlap(a: Any, b: Any) -> float:
    """Length of the intersection of two tables [s]."""
    return exposure(intersection(a, b))


def gti_slices(time_sorted: Any, gti: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges ``[lo[k], hi[k])`` of a time-sorted array that fall in interval ``k`` of ``gti``.

    O(m log n): event lists are time-ordered, so a GTI is a contiguous slice (stingray does the same).
    ``gti`` must be normalised (sorted, non-overlapping); the intervals are ``[start, stop)``.
    """
    t = np.asarray(time_sorted)
    g = as_gti(gti)
    return np.searchsorted(t, g[:, 0], side="left"), np.searchsorted(t, g[:, 1], side="left")


def _is_sorted(t: np.ndarray) -> bool:
    return t.ndim == 1 and (t.size < 2 or not bool(np.any(t[1:] < t[:-1])))


def mask_in_gti(time: Any, gti: Any) -> np.ndarray:
    """Boolean mask of the times that fall in ``[start, stop)`` of some interval.

    ``time`` need not be sorted.  Sorted times (every event list read by xmmcore is) take the slice
    path, O(n + m log n); others ``searchsorted`` each time into the intervals, O(n log m).
    """
    g = normalise(gti)
    t = np.asarray(time)
    if g.shape[0] == 0:
        return np.zeros(t.shape, dtype=bool)
    if _is_sorted(t):
        out = np.zeros(t.shape, dtype=bool)
        for a, b in zip(*gti_slices(t, g)):
            out[a:b] = True
        return out
    idx = np.searchsorted(g[:, 0], t, side="right") - 1
    ok = idx >= 0
    out = np.zeros(t.shape, dtype=bool)
    out[ok] = t[ok] < g[idx[ok], 1]
    return out


def drop_short(gti: Any, *, min_length_s: float) -> np.ndarray:
    """Remove intervals shorter than ``min_length_s`` [s]."""
    g = normalise(gti)
    return g[(g[:, 1] - g[:, 0]) >= min_length_s]


def from_bins(edges: np.ndarray, good: np.ndarray) -> np.ndarray:
    """GTI table from light-curve bin ``edges`` (n+1) and a boolean ``good`` per bin (n)."""
    edges = np.asarray(edges, dtype=np.float64)
    good = np.asarray(good, dtype=bool)
    if edges.size != good.size + 1:
        raise ValueError("edges must have one more element than good")
    return normalise(np.column_stack([edges[:-1][good], edges[1:][good]]))
