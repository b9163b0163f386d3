"""Flare screening on event lists with an injected soft-proton flare."""

from __future__ import annotations

import numpy as np
import pytest
from test_events import T0, make_event_file

from xmmcore import events as E
from xmmcore import flares as F
from xmmcore import gti as G


def _flare_events(
    tmp_path, *, quiet_rate=2.0, flare_rate=20.0, span=20000.0, flare=(8000.0, 10000.0), seed=3
):
    rng = np.random.default_rng(seed)
    nq = rng.poisson(quiet_rate * span)
    nf = rng.poisson(flare_rate * (flare[1] - flare[0]))
    t = np.sort(np.concatenate([rng.uniform(0, span, nq), rng.uniform(*flare, nf)])) + T0
    n = t.size
    p = make_event_file(
        tmp_path / "pn.fits", instrume="EPN", times=t, span_s=span, ccds=(4,), pi=np.full(n, 11000), seed=seed
    )
    evl = E.read_events(p)
    evl.columns["PATTERN"][:] = 0
    evl.columns["FLAG"][:] = 0
    return evl


def test_espfilt_removes_injected_flare(tmp_path):
    evl = _flare_events(tmp_path)
    res = F.flare_gti(evl, method="espfilt", band_kev=(10.0, 12.0), bin_s=100.0, nsigma=2.0, min_gti_s=100.0)
    # quiescent peak: 2 ct/s, Poisson sigma sqrt(200)/100 = 0.14 ct/s
    assert res.mean == pytest.approx(2.0, abs=0.1)
    assert res.sigma == pytest.approx(0.141, rel=0.35)
    assert G.overlap(res.gti, [[T0 + 8000, T0 + 10000]]) == 0.0
    # 2 ks flare of 20 ks, plus a few percent of quiescent bins above mean + 2 sigma
    assert 0.10 <= res.flare_fraction <= 0.16
    assert res.exposure_in_s == pytest.approx(20000.0)


def test_fixed_threshold_and_none(tmp_path):
    evl = _flare_events(tmp_path)
    res = F.flare_gti(evl, method="fixed", rate=5.0, bin_s=100.0)
    assert res.flare_fraction == pytest.approx(0.10, abs=0.005)
    none = F.flare_gti(evl, method="none")
    assert none.flare_fraction == 0.0
    with pytest.raises(ValueError, match="rate threshold"):
        F.flare_gti(evl, method="fixed")


def test_light_curve_partial_bins():
    t = np.array([0.5, 1.5, 2.5, 12.0])
    _edges, counts, good, rate = F.light_curve(t, np.array([[0.0, 5.0], [10.0, 15.0]]), bin_s=10.0)
    assert counts.tolist() == [3.0, 1.0] and good.tolist() == [5.0, 5.0]
    assert rate.tolist() == [0.6, 0.2]


def test_write_light_curve(tmp_path):
    evl = _flare_events(tmp_path)
    res = F.flare_gti(evl)
    from astropy.io import fits

    p = F.write_light_curve(res, tmp_path / "lc.fits", header=evl.header)
    with fits.open(p) as h:
        assert h["RATE"].header["HDUCLAS1"] == "LIGHTCURVE"
        assert len(h["GTI"].data) == res.gti.shape[0]
