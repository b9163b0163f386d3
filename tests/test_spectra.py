"""Spectra: SAS channel grids, grouping, OGIP PHA validity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers.events import make_event_file
from helpers.ogip import check_ogip_pha

from xmmcore import events as E
from xmmcore import spectra as S


def test_channel_grids_match_sas():
    assert S.channel_grid("pn") == (4096, 5) and S.channel_grid("mos2") == (800, 15)
    h = S.pi_histogram(np.array([0, 4, 5, 20479, 20480, 11999]), "pn")
    assert h[0] == 2 and h[1] == 1 and h[4095] == 1 and h.sum() == 5
    m = S.pi_histogram(np.array([14, 15, 11999, 12000]), "mos1")
    assert m[0] == 1 and m[1] == 1 and m[799] == 1 and m.sum() == 3


def test_group_min_counts():
    c = np.array([0, 3, 1, 0, 5, 0, 0, 1, 1, 0])
    g, q = S.group_min_counts(c, 3)
    starts = np.flatnonzero(g == 1)
    sums = np.add.reduceat(c, starts)
    assert np.all(sums >= 3) and sums.sum() == c.sum()
    assert set(np.unique(g)) <= {1, -1} and not q.any()
    g, q = S.group_min_counts(np.array([1, 0, 1]), 5)
    assert np.all(q == 2)


@pytest.mark.parametrize(
    "counts",
    [
        np.r_[np.zeros(40), np.full(200, 2.0), np.zeros(30)],
        np.r_[np.zeros(5), [30.0], np.zeros(5)],
        np.zeros(7),
    ],
)
def test_group_min_counts_every_group_starts_with_plus_one(counts):
    """OGIP: the first channel of a grouped spectrum is +1 (Sherpa refuses a leading -1), also before empty
    channels; groups tile the spectrum, each but a lone short one has >= min_counts, and only that one is bad."""
    g, q = S.group_min_counts(counts, 20)
    assert g[0] == 1 and set(np.unique(g)) <= {1, -1}
    starts = np.flatnonzero(g == 1)
    sums = np.add.reduceat(counts, starts)
    assert sums.sum() == counts.sum()
    if counts.sum() >= 20:
        assert np.all(sums >= 20) and not q.any()
    else:
        assert starts.tolist() == [0] and np.all(q == 2)
    g2, _ = S.group_min_counts(counts, 20, first=2, last=counts.size - 2)
    assert np.all(g2[:2] == 1) and g2[2] == 1 and g2[-1] == 1


def test_group_optimal_kaastra_bleeker():
    rng = np.random.default_rng(0)
    e = (np.arange(800) + 0.5) * 0.015
    counts = rng.poisson(2000 * np.exp(-e / 2.0) * (e > 0.2))
    g, _q = S.group_optimal(counts, S.fwhm_channels("mos1"))
    starts = np.flatnonzero(g == 1)
    widths = np.diff(np.append(starts, 800))
    assert starts[0] == 0 and widths.sum() == 800
    # Bright channels are binned finer than the resolution; the faint tail in wider groups.
    assert widths[:20].mean() < widths[-5:].mean()
    assert widths.max() <= np.ceil(S.fwhm_channels("mos1").max())
    g2, _ = S.group_optimal(counts, S.fwhm_channels("mos1"), min_counts=20)
    assert np.all(np.add.reduceat(counts, np.flatnonzero(g2 == 1))[:-1] >= 20)


def test_extract_writes_valid_ogip_pha(tmp_path):
    from xmmcore.ogip import read_pha, write_pha

    evl = E.read_events(make_event_file(tmp_path / "m.fits", n=3000))
    pha = S.extract(
        evl,
        exposure=970.0,
        backscal=1.234e6,
        respfile="mos1.rmf",
        ancrfile="mos1.arf",
        backfile="mos1_bkg.pha",
    )
    pha.grouping, pha.quality = S.group_min_counts(pha.counts, 5)
    p = write_pha(pha, tmp_path / "src.pha")
    check_ogip_pha(p, n_chan=800)
    back = read_pha(p)
    assert back.counts.sum() == pytest.approx(np.sum(evl["PI"] < 12000))
    assert back.backscal == pytest.approx(1.234e6) and back.exposure == pytest.approx(970.0)


def test_blanksky_scale_and_double_subtraction(tmp_path):
    """Template = 2x the observation's particle level; a soft excess only in the observation."""
    from xmmcore import background as B
    from xmmcore.regions import Selection, _phys_annulus, _phys_circle

    rng = np.random.default_rng(5)

    def evl(name, n_fov, n_oof, soft):
        n = n_fov + n_oof + soft
        x = np.concatenate(
            [
                rng.uniform(24000, 28000, n_fov),
                rng.uniform(30000, 31000, n_oof),
                rng.uniform(24000, 28000, soft),
            ]
        )
        y = np.concatenate(
            [
                rng.uniform(24000, 28000, n_fov),
                rng.uniform(30000, 31000, n_oof),
                rng.uniform(24000, 28000, soft),
            ]
        )
        pi = np.concatenate([rng.uniform(300, 12000, n_fov + n_oof), rng.uniform(300, 900, soft)]).astype(int)
        p = make_event_file(tmp_path / name, n=n, xy=(x.astype(int), y.astype(int)), pi=pi)
        e = E.read_events(p)
        e.columns["FLAG"] = np.concatenate(
            [np.zeros(n_fov), np.full(n_oof, B.OUT_OF_FOV), np.zeros(soft)]
        ).astype(np.int32)
        e.columns["X"], e.columns["Y"], e.columns["PI"] = (
            x.astype(np.int32),
            y.astype(np.int32),
            pi.astype(np.int16),
        )
        e.columns["PATTERN"][:] = 0
        return e

    obs = evl("obs.fits", 20000, 4000, 3000)
    tpl = evl("tpl.fits", 40000, 8000, 0)
    sc = B.blanksky_scale(obs, tpl, band_kev=(0.3, 12.0))
    assert sc.scale == pytest.approx(0.5, rel=0.05)
    src = Selection(include=[_phys_circle(26000.0, 26000.0, 1000.0)])
    ann = Selection(include=[_phys_annulus(26000.0, 26000.0, 1200.0, 1900.0)])
    a_src, a_ann = np.pi * 1000.0**2, np.pi * (1900.0**2 - 1200.0**2)
    bkg = B.double_subtracted_background(
        obs_clean=obs,
        template_clean=tpl,
        src=src,
        annulus=ann,
        area_src=a_src,
        area_ann=a_ann,
        exposure_s=1000.0,
        template_exposure_s=1000.0,
        scale=sc,
    )
    in_src = src.contains(obs["X"], obs["Y"])
    # the double-subtracted background predicts the observation's own counts in the (source-free) source region
    assert bkg.counts.sum() == pytest.approx(in_src.sum(), rel=0.08)
    assert not bkg.poisserr and bkg.stat_err is not None
    soft = np.arange(800) * 15 < 900
    assert bkg.counts[soft].sum() == pytest.approx((in_src & (obs["PI"] < 900)).sum(), rel=0.12)


def test_python_backend_blanksky_background_on_simulated_obs(tmp_path):
    """regions.background.method=blanksky: OOF-scaled template, double-subtracted, recorded in header+summary."""
    import logging

    import yaml

    from xmmcore import simulate
    from xmmcore.observation import discover
    from xmmcore.pipeline import run_step

    data = tmp_path / "data"
    simulate.simulate_observation(data, "0900000001", seed=11, cameras=("mos1",), exposure_ks=20.0)
    simulate.simulate_observation(
        data,
        "0900000002",
        seed=12,
        cameras=("mos1",),
        exposure_ks=40.0,
        point_sources=0.0,
        cluster_counts=(1.0, 1.0),
        cluster={
            "counts_pn": 1.0
        },  # a blank field: the simulator's L-T draw would otherwise pick a bright cluster
    )
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "survey" / "defaults.yaml").read_text())
    cfg["cameras"] = ["mos1"]
    cfg["regions"]["background"].update(
        method="blanksky", blanksky_files={"mos1": str(discover(data, "0900000002").event_files["mos1"])}
    )
    obs = discover(data, "0900000001")
    out = tmp_path / "results" / obs.obsid
    log = logging.getLogger("t")
    for step in ("filter", "regions"):
        run_step(step, obs, out, cfg, log=log)
    s = run_step("spectra", obs, out, cfg, log=log)["cameras"]["mos1"]
    assert s["background_method"] == "blanksky_double" and s["oof_counts_obs"] > 100
    assert 0.5 < s["bkg_scale_oof"] < 2.0 and s["bkg_scale_oof_err"] < 0.2 * s["bkg_scale_oof"]
    with fits.open(out / "spectra" / "mos1_bkg.pha") as h:
        hdr = h["SPECTRUM"].header
        assert hdr["BKGMETH"] == "blanksky_double" and hdr["POISSERR"] is False
        assert hdr["BKGSCALE"] == pytest.approx(s["bkg_scale_oof"])
        assert "STAT_ERR" in h["SPECTRUM"].columns.names
    # Against the local annulus scaled by area: the same order (the template's vignetted sky makes it differ)
    import json

    regs = json.loads((out / "regions" / "regions.json").read_text())
    from xmmcore.regions import read_ds9

    evl = E.read_events(out / "events" / "mos1_clean.fits")
    ann = read_ds9(regs["files"]["mos1_bkg"], evl.header)
    src = read_ds9(regs["files"]["mos1_src"], evl.header)
    n_ann = int((ann.contains(evl["X"], evl["Y"]) & (evl["PI"] < 12000)).sum())
    local = n_ann * s["src_backscal"] / s["bkg_area_arcmin2"] / (60.0 / 0.05) ** 2
    assert 0.7 * local < s["bkg_counts"] < 1.5 * local
    # Identity: with the observation as its own template (scale 1), B = T_src + (O_ann - T_ann) A_src/A_ann
    # is exactly the observation's own source-region spectrum.
    from xmmcore import background as B

    raw = E.read_events(obs.event_files["mos1"])
    sc = B.blanksky_scale(raw, raw)
    assert sc.scale == pytest.approx(1.0)
    pha = B.double_subtracted_background(
        obs_clean=evl,
        template_clean=evl,
        src=src,
        annulus=ann,
        area_src=s["src_backscal"],
        area_ann=1.0e6,
        exposure_s=100.0,
        template_exposure_s=100.0,
        scale=sc,
    )
    assert np.allclose(pha.counts, S.pi_histogram(evl["PI"][src.contains(evl["X"], evl["Y"])], "mos1"))


def test_annulus_spectrum_written_once_matched_or_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The matched background replaces the annulus spectrum before it is written; when it falls back to the
    plain annulus (too few out-of-FOV events), that one is written, with its DSS tables, as with
    ``spectra.local_background: plain``."""
    import logging

    import yaml

    from xmmcore import background as B
    from xmmcore import simulate
    from xmmcore.observation import discover
    from xmmcore.pipeline import run_step

    data = tmp_path / "data"
    simulate.simulate_observation(data, "0900000001", seed=11, cameras=("mos1",), exposure_ks=10.0)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "survey" / "defaults.yaml").read_text())
    cfg["cameras"], cfg["plots"] = ["mos1"], "none"
    obs = discover(data, "0900000001")
    out = tmp_path / "results" / obs.obsid
    log = logging.getLogger("t")
    for step in ("filter", "regions"):
        run_step(step, obs, out, cfg, log=log)
    bkg_path = out / "spectra" / "mos1_bkg.pha"

    def spectra(local: str) -> tuple[dict, list[str], np.ndarray, str]:
        cfg["spectra"]["local_background"] = local
        s = run_step("spectra", obs, out, cfg, log=log)["cameras"]["mos1"]
        with fits.open(bkg_path, checksum=True) as h:
            return (
                s,
                [x.name for x in h],
                np.asarray(h["SPECTRUM"].data["COUNTS"]),
                h["SPECTRUM"].header["BKGMETH"],
            )

    s, names, counts, meth = spectra("matched")
    assert s["bkg_vignetting_method"] == "matched" and meth == "vignetting_matched"
    assert names == ["PRIMARY", "SPECTRUM"] and counts.sum() == pytest.approx(s["bkg_model_counts"])
    _, plain_names, plain_counts, plain_meth = spectra("plain")
    assert plain_meth == "local" and "REG00106" in plain_names and plain_names[2].startswith("GTI")
    monkeypatch.setattr(B, "oof_spectrum", lambda raw, **kw: B.OofSpectrum(np.zeros(800), 1.0, 1.0))
    s, names, counts, meth = spectra("matched")
    assert s["bkg_vignetting_method"] == "plain" and "bkg_model_counts" not in s
    assert meth == "local" and names == plain_names and np.array_equal(counts, plain_counts)
