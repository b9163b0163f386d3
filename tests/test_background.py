"""xmmcore.background: out-of-FOV rates, blank-sky scaling and the double-subtracted background, exact counts."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from regions import CircleAnnulusPixelRegion, CirclePixelRegion, PixCoord

from xmmcore.background import OUT_OF_FOV, blanksky_scale, double_subtracted_background, oof_rate
from xmmcore.events import EventList
from xmmcore.regions import Selection


def _evl(x, y, pi, flag, t_span=(0.0, 1000.0), pattern=None) -> EventList:
    n = len(x)
    cols = {
        "X": np.asarray(x, float),
        "Y": np.asarray(y, float),
        "PI": np.asarray(pi, int),
        "FLAG": np.asarray(flag, np.int64),
        "PATTERN": np.zeros(n, int) if pattern is None else np.asarray(pattern),
        "TIME": np.linspace(t_span[0] + 1, t_span[1] - 1, n),
        "CCDNR": np.ones(n, int),
    }
    g = np.array([t_span], float)
    return EventList("mos1", fits.Header(), cols, gti_ccd={1: g}, gti=g)


def test_oof_rate_counts_only_clean_out_of_fov_events_in_band() -> None:
    pi = [10500, 11000, 11500, 9000, 11000, 11000, 11000]
    flag = [OUT_OF_FOV, OUT_OF_FOV, OUT_OF_FOV, OUT_OF_FOV, 0, OUT_OF_FOV | 0x2000, OUT_OF_FOV]
    evl = _evl(np.zeros(7), np.zeros(7), pi, flag, pattern=[0, 0, 0, 0, 0, 0, 13])
    # in band + OUT_OF_FOV + no other XMMEA bit + PATTERN <= 12: the first three
    rate, n, exp = oof_rate(evl)
    assert (n, exp) == (3, 1000.0) and rate == pytest.approx(0.003)
    # events at t = 1, 167.3, 333.7, 500, ... s: a GTI from 200 s keeps only the third of the three
    rate_cut, n_cut, exp_cut = oof_rate(evl, gti=np.array([[200.0, 1000.0]]))
    assert (n_cut, exp_cut) == (1, 800.0) and rate_cut == pytest.approx(1 / 800.0)
    with pytest.raises(ValueError, match="no good time"):
        oof_rate(evl, gti=np.array([[2000.0, 3000.0]]))


def test_blanksky_scale_and_poisson_error() -> None:
    obs = _evl(np.zeros(40), np.zeros(40), np.full(40, 11000), np.full(40, OUT_OF_FOV), t_span=(0, 1000))
    tmpl = _evl(np.zeros(90), np.zeros(90), np.full(90, 11000), np.full(90, OUT_OF_FOV), t_span=(0, 9000))
    s = blanksky_scale(obs, tmpl)
    assert s.scale == pytest.approx((40 / 1000) / (90 / 9000))  # 4.0
    assert s.scale_err == pytest.approx(4.0 * np.sqrt(1 / 40 + 1 / 90))
    assert s.to_dict()["oof_counts_template"] == 90
    empty = _evl([0.0], [0.0], [11000], [0])
    with pytest.raises(ValueError, match="no out-of-FOV events"):
        blanksky_scale(empty, tmpl)


def test_double_subtraction_adds_the_local_residual() -> None:
    src = Selection(include=[CirclePixelRegion(PixCoord(999.0, 999.0), radius=100.0)])
    ann = Selection(
        include=[CircleAnnulusPixelRegion(PixCoord(999.0, 999.0), inner_radius=200.0, outer_radius=300.0)]
    )
    # observation: 30 annulus events at PI 1000 (channel 66 on the MOS 15 eV grid)
    obs = _evl(np.full(30, 1250.0), np.full(30, 1000.0), np.full(30, 1000), np.zeros(30))
    # template (twice the exposure): 8 source events and 20 annulus events, all at PI 1000
    tx = np.concatenate([np.full(8, 1000.0), np.full(20, 1250.0)])
    tmpl = _evl(tx, np.full(28, 1000.0), np.full(28, 1000), np.zeros(28), t_span=(0, 2000))
    scale = blanksky_scale(
        _evl([0.0] * 10, [0.0] * 10, [11000] * 10, [OUT_OF_FOV] * 10),
        _evl([0.0] * 10, [0.0] * 10, [11000] * 10, [OUT_OF_FOV] * 10),
    )  # scale 1
    pha = double_subtracted_background(
        obs_clean=obs,
        template_clean=tmpl,
        src=src,
        annulus=ann,
        area_src=1.0,
        area_ann=5.0,
        exposure_s=1000.0,
        template_exposure_s=2000.0,
        scale=scale,
    )
    chan = 1000 // 15
    # k = scale * 1000/2000 = 0.5: 0.5*8 + (30 - 0.5*20) * 1/5 = 4 + 4 = 8 counts in that channel
    assert pha.counts[chan] == pytest.approx(8.0) and pha.counts.sum() == pytest.approx(8.0)
    # variance 0.25*8 + (30 + 0.25*20) / 25 = 2 + 1.4
    assert pha.stat_err[chan] == pytest.approx(np.sqrt(3.4))
    assert not pha.poisserr and pha.backscal == 1.0 and pha.exposure == 1000.0
