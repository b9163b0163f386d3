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


def test_pgstat_profiles_the_gaussian_background_per_bin() -> None:
    from scipy.optimize import minimize_scalar

    from xmmcore.fitting.stats import pgstat

    d = np.array([0.0, 3.0, 12.0, 40.0, 7.0])
    b = np.array([1.5, 2.0, -1.0, 30.0, 6.5])
    v = np.array([2.0, 0.5, 4.0, 60.0, 0.0])
    m = np.array([0.7, 2.0, 9.0, 15.0, 1.0])

    def direct(i: int) -> float:
        def neg2lnl(f: float) -> float:
            mu = m[i] + f
            poisson = 2.0 * (mu - d[i] + (d[i] * np.log(d[i] / mu) if d[i] > 0 else 0.0))
            return poisson + ((b[i] - f) ** 2 / v[i] if v[i] > 0 else 0.0)

        if v[i] == 0:  # a background without error is known
            return neg2lnl(max(b[i], 0.0))
        return float(
            minimize_scalar(neg2lnl, bounds=(0.0, 200.0), method="bounded", options={"xatol": 1e-10}).fun
        )

    expected = sum(direct(i) for i in range(d.size))
    assert pgstat(d, b, v, m) == pytest.approx(expected, rel=1e-7)


def test_a_non_poisson_background_switches_cstat_and_wstat_to_pgstat() -> None:
    from xmmcore.fitting import stats

    class _Ds:
        has_background = True
        bkg_poisson = False

    assert isinstance(stats.get_statistic("cstat").for_dataset(_Ds()), stats.PGStat)  # type: ignore[arg-type]
    assert isinstance(stats.get_statistic("wstat").for_dataset(_Ds()), stats.PGStat)  # type: ignore[arg-type]
    _Ds.bkg_poisson = True
    assert isinstance(stats.get_statistic("cstat").for_dataset(_Ds()), stats.WStat)  # type: ignore[arg-type]


def test_vignetting_matched_background_rescales_only_the_sky_part() -> None:
    from xmmcore.background import OofSpectrum, vignetting_matched_background
    from xmmcore.ogip import PHA

    n = 800  # MOS grid, 15 eV channels
    rng = np.random.default_rng(3)
    ann = PHA(channel=np.arange(n), counts=rng.poisson(50.0, n).astype(float), exposure=1e4, backscal=4e8)
    src = PHA(channel=np.arange(n), counts=np.zeros(n), exposure=1e4, backscal=2e8)
    oof = OofSpectrum(counts=rng.poisson(20.0, n), area_phys2=2e8, exposure_s=1e4)
    e = np.array([0.1, 5.0, 15.0])
    # equal vignetting: the plain area scaling, r = 0.5
    flat, rec = vignetting_matched_background(
        ann, src, oof=oof, vig_src=np.ones(3), vig_ann=np.ones(3), energies_kev=e, camera="mos1"
    )
    assert np.allclose(flat.counts, 0.5 * ann.counts) and rec["bkg_area_ratio"] == pytest.approx(0.5)
    assert not flat.poisserr and flat.backscal == src.backscal and flat.exposure == src.exposure
    # STAT_ERR from the expected counts (Poisson mean 50 per channel), not from each channel's own count
    hard = np.arange(n) >= 34  # above 0.5 keV, where the ln E kernel spans many channels
    assert np.allclose(flat.stat_err[hard] ** 2, 0.25 * 50.0, rtol=0.08)
    assert abs(np.corrcoef(flat.stat_err[hard], ann.counts[hard])[0, 1]) < 0.2
    # the annulus sees the sky through half the source region's vignetting: sky part x 2, particles x 1
    matched, rec = vignetting_matched_background(
        ann, src, oof=oof, vig_src=np.ones(3), vig_ann=np.full(3, 0.5), energies_kev=e, camera="mos1"
    )
    particles = 2.0 * oof.counts  # the annulus has twice the out-of-FOV area
    assert np.allclose(matched.counts, 0.5 * particles + 1.0 * (ann.counts - particles))
    # variance w^2 <O> + (r - w)^2 var(P): 1 x 50 + 0.25 x 4 x 20 expected per channel
    assert np.allclose(matched.stat_err[hard] ** 2, 50.0 + 0.25 * 4.0 * 20.0, rtol=0.08)
    assert "smoothed" in rec["bkg_stat_err"]
    assert rec["bkg_sky_rescale_1kev"] == pytest.approx(2.0)


def test_matched_background_errors_do_not_bias_pgstat() -> None:
    """A background whose STAT_ERR follows its own counts biases pgstat (the 48-ObsID kT hot offset).

    Flat spectra on the MOS grid above 0.5 keV: annulus sky 3 + particles 4 counts per channel, corners
    4 (same area), source 1 count per channel on top of the true background; the source level fitted
    with pgstat over 60 draws must be 1. With STAT_ERR^2 = the observed annulus counts it came out 1.57.
    """
    from scipy.optimize import minimize_scalar

    from xmmcore.background import OofSpectrum, vignetting_matched_background
    from xmmcore.fitting.stats import pgstat
    from xmmcore.ogip import PHA

    n, lo = 800, 34
    on = np.arange(n) >= lo
    e = np.array([0.1, 15.0])
    for vig_ann, seed in ((1.0, 5), (0.5, 6)):
        rng = np.random.default_rng(seed)
        w = 1.0 / vig_ann
        fitted, fitted_observed_var = [], []
        for _ in range(60):
            ann = PHA(
                channel=np.arange(n), counts=rng.poisson(7.0 * on).astype(float), exposure=1e4, backscal=2e8
            )
            src = PHA(channel=np.arange(n), counts=np.zeros(n), exposure=1e4, backscal=2e8)
            oof = OofSpectrum(counts=rng.poisson(4.0 * on), area_phys2=2e8, exposure_s=1e4)
            bkg, _ = vignetting_matched_background(
                ann,
                src,
                oof=oof,
                vig_src=np.ones(2),
                vig_ann=np.full(2, vig_ann),
                energies_kev=e,
                camera="mos1",
            )
            d = rng.poisson(1.0 + 4.0 + w * 3.0, n - lo).astype(float)
            b = bkg.counts[lo:]
            for var, out in ((bkg.stat_err[lo:] ** 2, fitted), (w**2 * ann.counts[lo:], fitted_observed_var)):
                res = minimize_scalar(
                    lambda s, d=d, b=b, var=var: pgstat(d, b, var, np.full(n - lo, s)),
                    bounds=(0.01, 5.0),
                    method="bounded",
                )
                out.append(res.x)
        assert np.mean(fitted) == pytest.approx(1.0, abs=0.08), vig_ann
        assert np.mean(fitted_observed_var) > 1.3, vig_ann  # the bias the expected counts remove


def test_pgstat_keeps_the_data_terms_while_the_data_are_the_same() -> None:
    """PGStat.calc_stat computes pgstat's model-independent terms once per spectrum: the same value as
    pgstat() bit for bit, recomputed when the counts (simulations), the mask or the scale change."""
    from xmmcore.fitting.stats import PGStat, pgstat

    rng = np.random.default_rng(5)
    n = 60

    class _Ds:
        name = "pn"
        _pgstat_data = None
        bkg_scale = 0.25

        def __init__(self) -> None:
            self.group_counts = rng.poisson(8.0, n).astype(float)
            self.group_bkg_counts = rng.poisson(20.0, n).astype(float)
            self.group_bkg_var = self.group_bkg_counts * rng.uniform(0.0, 1.5, n)
            self.mask = rng.uniform(size=n) < 0.9

        counts = property(lambda self: self.group_counts[self.mask])
        bkg_counts = property(lambda self: self.group_bkg_counts[self.mask])
        bkg_variance = property(lambda self: self.group_bkg_var[self.mask])

    ds = _Ds()
    stat = PGStat()

    def direct(m: np.ndarray) -> float:
        s = ds.bkg_scale
        return pgstat(ds.counts, s * ds.bkg_counts, s * s * ds.bkg_variance, m)

    m = rng.uniform(0.5, 10.0, int(ds.mask.sum()))
    assert stat.calc_stat(ds, m) == direct(m)  # type: ignore[arg-type]
    kept = ds._pgstat_data
    assert stat.calc_stat(ds, 2.0 * m) == direct(2.0 * m) and ds._pgstat_data is kept  # type: ignore[arg-type]
    ds.group_counts = rng.poisson(8.0, n).astype(float)  # a simulated spectrum replaces the counts
    assert stat.calc_stat(ds, m) == direct(m) and ds._pgstat_data is not kept  # type: ignore[arg-type]
    ds.bkg_scale = 0.5
    assert stat.calc_stat(ds, m) == direct(m)  # type: ignore[arg-type]
    ds.mask = ds.mask.copy()
    ds.mask[:5] = False
    m = m[: int(ds.mask.sum())]
    assert stat.calc_stat(ds, m) == direct(m)  # type: ignore[arg-type]
