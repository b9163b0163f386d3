"""GTI algebra: property tests (hypothesis) and worked examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmmcore import gti as G


def _intervals():
    pair = st.tuples(st.integers(0, 1000), st.integers(1, 200)).map(
        lambda p: (float(p[0]), float(p[0] + p[1]))
    )
    return st.lists(pair, min_size=0, max_size=12).map(
        lambda rows: np.array(rows, dtype=float).reshape(-1, 2)
    )


def _brute_covered(g: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros(t.shape, dtype=bool)
    for a, b in g:
        out |= (t >= a) & (t < b)
    return out


GRID = np.arange(-0.5, 1300.0, 0.25)


@settings(max_examples=150, deadline=None)
@given(_intervals(), _intervals())
def test_union_intersection_inclusion_exclusion(a, b):
    assert G.exposure(G.union(a, b)) + G.exposure(G.intersection(a, b)) == pytest.approx(
        G.exposure(a) + G.exposure(b)
    )


@settings(max_examples=150, deadline=None)
@given(_intervals(), _intervals())
def test_set_semantics_match_brute_force(a, b):
    ca, cb = _brute_covered(a, GRID), _brute_covered(b, GRID)
    assert np.array_equal(G.mask_in_gti(GRID, G.union(a, b)), ca | cb)
    assert np.array_equal(G.mask_in_gti(GRID, G.intersection(a, b)), ca & cb)
    assert np.array_equal(G.mask_in_gti(GRID, a), ca)


@settings(max_examples=100, deadline=None)
@given(_intervals())
def test_normalise_is_valid_and_idempotent(a):
    n = G.normalise(a)
    G.check_gti(n)
    assert np.array_equal(G.normalise(n), n)
    if n.shape[0] > 1:
        assert np.all(n[1:, 0] > n[:-1, 1])  # touching intervals merged


@settings(max_examples=100, deadline=None)
@given(_intervals())
def test_complement_partitions_the_span(a):
    bad = G.complement(a, tstart=-10.0, tstop=1500.0)
    assert G.exposure(G.intersection(a, bad)) == 0.0
    assert G.exposure(G.intersection(a, [[-10.0, 1500.0]])) + G.exposure(bad) == pytest.approx(1510.0)


def test_examples_and_errors():
    a = np.array([[0.0, 10.0], [10.0, 20.0], [30.0, 40.0]])
    assert G.normalise(a).tolist() == [[0.0, 20.0], [30.0, 40.0]]
    assert G.intersection(a, [[5.0, 35.0]]).tolist() == [[5.0, 20.0], [30.0, 35.0]]
    assert G.intersection(a, np.zeros((0, 2))).shape == (0, 2)
    assert G.drop_short([[0, 5], [10, 100]], min_length_s=10).tolist() == [[10.0, 100.0]]
    assert G.from_bins(np.arange(0, 50, 10.0), np.array([1, 1, 0, 1], bool)).tolist() == [[0, 20], [30, 40]]
    with pytest.raises(ValueError, match="stop <= start"):
        G.check_gti([[5.0, 1.0]])
    with pytest.raises(ValueError, match="overlapping"):
        G.check_gti([[0.0, 5.0], [3.0, 8.0]])
    with pytest.raises(ValueError, match="shape"):
        G.as_gti(np.zeros((3, 3)))
