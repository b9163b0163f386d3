"""Flare screening on event lists with an injected soft-proton flare."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.events import T0, make_event_file

from survey.config import load_config
from xmmcore import events as E
from xmmcore import flares as F
from xmmcore import gti as G

#: The ``flares`` section of survey/defaults.yaml (flare_settings reads every key of it).
FLARES = load_config().to_dict()["flares"]


def _merged_flare_list(path, tq, tf, instrume, span, ccds, seed):
    """Quiescent times ``tq`` and flare times ``tf`` [s from T0] as one time-ordered 11 keV event list (all
    PATTERN 0, FLAG 0): the list, its times and which events are flare events."""
    t = np.concatenate([tq, tf])
    is_flare = np.concatenate([np.zeros(tq.size, bool), np.ones(tf.size, bool)])
    order = np.argsort(t)
    t, is_flare = t[order] + T0, is_flare[order]
    p = make_event_file(
        path, instrume=instrume, times=t, span_s=span, ccds=ccds, pi=np.full(t.size, 11000), seed=seed
    )
    evl = E.read_events(p)
    evl.columns["PATTERN"][:] = 0
    evl.columns["FLAG"][:] = 0
    return evl, t, is_flare


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


# Flare profiles (centre [s], Gaussian width [s], peak / quiescent rate) of a 40 ks light curve.
_FLARES = ((8000.0, 600.0, 15.0), (20000.0, 1500.0, 6.0), (31000.0, 300.0, 25.0))


def _flared_light_curve(tmp_path, *, instrume, ccds, quiet_rate, seed, span=40000.0):
    """Event list of quiescent + flare events at 11 keV; returns (events, times, is_flare, quiet GTI)."""
    rng = np.random.default_rng(seed)
    tq = rng.uniform(0, span, rng.poisson(quiet_rate * span))
    tf = np.concatenate(
        [rng.normal(c, w, rng.poisson(a * quiet_rate * w * np.sqrt(2 * np.pi))) for c, w, a in _FLARES]
    )
    tf = tf[(tf > 0) & (tf < span)]
    evl, t, is_flare = _merged_flare_list(
        tmp_path / f"{instrume}_{seed}.fits", tq, tf, instrume, span, ccds, seed
    )
    quiet = G.complement(
        [[T0 + c - 3 * w, T0 + c + 3 * w] for c, w, _ in _FLARES], tstart=T0, tstop=T0 + span
    )
    return evl, t, is_flare, quiet


@pytest.mark.parametrize(
    ("instrume", "ccds", "quiet_rate"),
    [
        ("EPN", (4,), 0.3),  # pn, 30 counts per 100 s bin
        ("EMOS1", (1, 2, 3, 4, 5, 6, 7), 0.12),  # full MOS
        ("EMOS1", (1, 2, 3, 4, 5), 0.06),  # MOS1 with 5 live CCDs: ~6 counts per 100 s bin
    ],
)
def test_histogram_keeps_quiescent_time_and_removes_flares(tmp_path, instrume, ccds, quiet_rate):
    for seed in range(6):
        evl, t, is_flare, quiet = _flared_light_curve(
            tmp_path, instrume=instrume, ccds=ccds, quiet_rate=quiet_rate, seed=seed
        )
        s = F.flare_settings({**FLARES, "method": "histogram"}, evl.camera)
        res = F.flare_gti(
            evl, method=s.method, band_kev=s.band_kev, nsigma=s.nsigma, bin_s=s.bin_s, min_gti_s=s.min_gti_s
        )
        kept_quiet = G.overlap(res.gti, quiet) / G.exposure(quiet)
        flare_removed = 1.0 - G.mask_in_gti(t[is_flare], res.gti).mean()
        assert kept_quiet >= 0.90, (seed, kept_quiet, res.summary())
        assert flare_removed >= 0.90, (seed, flare_removed, res.summary())
        assert res.mean == pytest.approx(quiet_rate, rel=0.2)
        assert res.threshold > res.median


def test_quiescent_level_falls_back_when_the_gaussian_collapses():
    # A faint light curve: rates take a handful of discrete values (0, 0.01, 0.02 ... ct/s).
    rng = np.random.default_rng(11)
    rate = rng.poisson(6.0, 400) / 100.0
    mean, sigma, threshold, median, why = F.quiescent_level(rate, bin_s=100.0, nsigma=2.0, quantum=0.01)
    assert mean == pytest.approx(0.06, rel=0.1) and threshold > median
    # A fit that cannot find the peak (a bimodal histogram) is not trusted: sigma clipping instead.
    bimodal = np.concatenate([np.full(200, 0.0), np.full(200, 0.2)])
    mean, sigma, threshold, median, why = F.quiescent_level(bimodal, bin_s=100.0, nsigma=2.0)
    assert why is not None and "sigma clipping" in why.replace("-sigma", " sigma")
    assert threshold >= median and mean > 0


def test_fallback_is_recorded_and_nothing_collapses(tmp_path, monkeypatch):
    evl, *_ = _flared_light_curve(tmp_path, instrume="EMOS1", ccds=(1, 2, 3, 4, 5), quiet_rate=0.06, seed=1)
    # The collapse seen on a real faint MOS1: Gaussian mean -0.33 ct/s.
    monkeypatch.setattr(F, "fit_quiescent_peak", lambda r, **kw: (-0.33, 0.17))
    res = F.flare_gti(evl, method="histogram", band_kev=(10.0, 15.0))
    assert res.fallback is not None and "not positive" in res.fallback
    assert res.summary()["flare_fallback"] == res.fallback and res.notes
    assert res.mean == pytest.approx(0.06, rel=0.25)
    assert 0.15 <= res.flare_fraction <= 0.40  # the flares (~25%), not 98% of the exposure


def test_min_gti_acts_on_flare_gtis_before_the_input_gtis(tmp_path):
    # A pre-cleaned list: 60 s good fragments separated by 30 s gaps, no flare at all.
    rng = np.random.default_rng(5)
    starts = np.arange(0.0, 19900.0, 90.0)
    in_gti = np.column_stack([starts, starts + 60.0]) + T0
    t = np.sort(rng.uniform(T0, T0 + 20000.0, 6000))
    t = t[G.mask_in_gti(t, in_gti)]
    p = make_event_file(
        tmp_path / "pn.fits", instrume="EPN", times=t, span_s=20000.0, ccds=(4,), pi=np.full(t.size, 11000)
    )
    evl = E.read_events(p)
    evl.columns["PATTERN"][:] = 0
    evl.columns["FLAG"][:] = 0
    evl = evl.with_gti(in_gti)
    res = F.flare_gti(evl, method="fixed", rate=5.0, min_gti_s=100.0)
    assert res.exposure_in_s == pytest.approx(G.exposure(in_gti))
    assert res.flare_fraction == pytest.approx(0.0, abs=1e-9)


def test_flare_settings_method_defaults():
    pn = F.flare_settings({**FLARES, "method": "histogram"}, "pn")
    assert pn.band_kev == (10.0, 12.0) and pn.nsigma == 2.0
    assert F.flare_settings({**FLARES, "method": "histogram"}, "mos1").band_kev == (10.0, 15.0)
    esp = F.flare_settings({**FLARES, "method": "espfilt"}, "mos2")
    assert esp.band_kev == (2.5, 8.5) and esp.nsigma == 3.0
    fixed = F.flare_settings({**FLARES, "method": "fixed", "fixed_rate": {}}, "mos1")
    assert fixed.rate == 0.35
    assert F.flare_settings(
        {**FLARES, "method": "histogram", "band_kev": [9, 13], "nsigma": 2.5}, "pn"
    ).band_kev == (
        9.0,
        13.0,
    )
    with pytest.raises(ValueError, match="histogram"):
        F.flare_settings({**FLARES, "method": "espfilter"}, "pn")


def _weak_flat_top_flares(tmp_path, *, seed, quiet_rate=0.06, excess=1.5, span=30000.0):
    """A faint 5-CCD MOS1 (~6 counts per 100 s bin) with flat-topped flares adding ``excess`` x the quiescent rate
    and 10% linear ramps (the simulator's flares); returns (events, times, is_flare, quiet GTI)."""
    rng = np.random.default_rng(seed)
    flares = ((4000.0, 1000.0), (12000.0, 4300.0), (24000.0, 2500.0))
    tq = rng.uniform(0, span, rng.poisson(quiet_rate * span))
    tf = []
    for start, dur in flares:
        ramp = 0.1 * dur
        n = rng.poisson(excess * quiet_rate * (dur - ramp))  # expected counts of the trapezoid
        u = rng.uniform(0.0, dur - ramp, n)  # a trapezoid = uniform top + two triangles, drawn as a sum
        tf.append(start + u + rng.uniform(0.0, ramp, n))
    evl, t, is_flare = _merged_flare_list(
        tmp_path / f"weak_{seed}.fits", tq, np.concatenate(tf), "EMOS1", span, (1, 2, 3, 4, 5), seed
    )
    quiet = G.complement([[T0 + s, T0 + s + d] for s, d in flares], tstart=T0, tstop=T0 + span)
    return evl, t, is_flare, quiet


def test_weak_flares_of_a_faint_mos_lose_their_counts():
    # Before the 5-bin scale, flare bins that fell below the one-bin threshold by Poisson chance were
    # kept as 100 s GTIs: 0.63-0.90 of these flares' counts removed (0.77-0.86 on simulated fields);
    # now >= 0.91. A flare adding only 1x the quiescent rate at ~6 counts per bin is still
    # removed to 0.75-0.95 only (the one-bin threshold sits at the flare's level).
    import tempfile
    from pathlib import Path

    removed, kept = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(8):
            evl, t, is_flare, quiet = _weak_flat_top_flares(Path(tmp), seed=seed)
            s = F.flare_settings({**FLARES, "method": "histogram"}, evl.camera)
            res = F.flare_gti(
                evl,
                method=s.method,
                band_kev=s.band_kev,
                nsigma=s.nsigma,
                bin_s=s.bin_s,
                min_gti_s=s.min_gti_s,
            )
            removed.append(1.0 - G.mask_in_gti(t[is_flare], res.gti).mean())
            kept.append(G.overlap(res.gti, quiet) / G.exposure(quiet))
    assert min(removed) >= 0.90, removed
    assert min(kept) >= 0.90, kept
