"""Survey simulator: on-disk layout, XMM headers/columns, reproducibility, counts vs truth, flares, responses."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from xmmcore.errors import ConfigError
from xmmcore.observation import CAMERAS, discover, list_obsids
from xmmcore.simulate import (
    event_file_name,
    obsid_for,
    simulate_events,
    simulate_observation,
    simulate_survey,
)

SEED = 7
INSTRUME = {"pn": "EPN", "mos1": "EMOS1", "mos2": "EMOS2"}
PATTERN_MAX = {"pn": 4, "mos1": 12, "mos2": 12}
XMM_FORMATS = {
    "TIME": "D",
    "RAWX": "I",
    "RAWY": "I",
    "DETX": "I",
    "DETY": "I",
    "X": "J",
    "Y": "J",
    "PHA": "I",
    "PI": "I",
    "FLAG": "J",
    "PATTERN": "B",
    "CCDNR": "B",
}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("sim") / "data"
    obsids = simulate_survey(out, n_obsids=2, seed=SEED, exposure_ks=(20.0, 25.0))
    return out, obsids


def _good_in_region(
    evt: fits.FITS_rec, cam: str, x: float, y: float, r_arcmin: float, band: tuple[float, float]
) -> int:
    r = np.hypot(evt["X"] - x, evt["Y"] - y) * 0.05 / 60.0
    good = (evt["FLAG"] == 0) & (evt["PATTERN"] <= PATTERN_MAX[cam])
    inband = (evt["PI"] >= band[0] * 1000) & (evt["PI"] < band[1] * 1000)
    return int(np.sum(good & inband & (r <= r_arcmin)))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_is_discovered(survey):
    out, obsids = survey
    assert obsids == [obsid_for(SEED, 0), obsid_for(SEED, 1)]
    assert list_obsids(out) == obsids
    for obsid in obsids:
        obs = discover(out, obsid)
        assert obs.cameras == CAMERAS
        for cam in CAMERAS:
            assert obs.event_files[cam] == out / obsid / "pps" / event_file_name(obsid, cam)
            assert obs.rmf_files[cam] == out / obsid / "responses" / f"{cam}.rmf"
            assert obs.arf_files[cam] == out / obsid / "responses" / f"{cam}.arf"
        assert event_file_name(obsid, "pn") == f"P{obsid}PNS003PIEVLI0000.FIT"
        assert set(obs.meta) >= {"name", "ra", "dec", "z", "nh"}
        assert obs.meta["z"] == obs.truth["cluster"]["z"]
        assert obs.meta["nh"] == obs.truth["cluster"]["nH"]
        assert 2.0 <= obs.truth["cluster"]["kT"] <= 9.0
        assert 0.05 <= obs.truth["cluster"]["z"] <= 0.4
        assert 0.01 <= obs.truth["cluster"]["nH"] <= 0.1
        c = obs.truth["cluster"]
        assert c["model"] == "tbabs*apec" and 0.2 <= c["abundance"] <= 0.5
        assert c["parameters"]["apec_1.Abundanc"] == c["abundance"]
        assert c["parameters"]["apec_1.Redshift"] == c["z"] and c["parameters"]["tbabs_1.nH"] == c["nH"]
        assert obs.meta["r500_kpc"] == pytest.approx(c["r500_kpc"])
        assert c["beta_r_max_arcmin"] >= 3.0 * c["r500_arcmin"] and c["beta_r_max_arcmin"] >= 15.0
        assert c["L500_0p1_2p4"] == pytest.approx(c["lum_0.1_2.4_kev_rest"] * c["fraction_within_r500"])
        assert c["L500_0p5_2p0"] < c["L500_0p1_2p4"]


def test_event_file_headers_and_columns(survey):
    out, obsids = survey
    obsid = obsids[0]
    truth = json.loads((out / obsid / "truth.json").read_text())
    for cam in CAMERAS:
        path = out / obsid / "pps" / event_file_name(obsid, cam)
        with fits.open(path) as hdul:
            names = [h.name for h in hdul]
            evt = hdul["EVENTS"]
            h = evt.header
            assert {c.name: c.format for c in evt.columns} == XMM_FORMATS
            live = truth["live_ccds"][cam]
            assert [n for n in names if n.startswith("STDGTI")] == [f"STDGTI{c:02d}" for c in live]
            assert "GTI" in names
            assert len(live) == (12 if cam == "pn" else 7) or cam == "mos1"
            for key, value in (
                ("OBS_ID", obsid),
                ("INSTRUME", INSTRUME[cam]),
                ("TELESCOP", "XMM"),
                ("FILTER", "Medium"),
                ("SUBMODE", "PrimeFullWindow"),
                ("OBJECT", truth["target"]["name"]),
            ):
                assert h[key] == value
                assert hdul[0].header[key] == value
            for key in (
                "DATE-OBS",
                "EXPOSURE",
                "ONTIME",
                "LIVETIME",
                "TSTART",
                "TSTOP",
                "RA_PNT",
                "DEC_PNT",
                "RA_OBJ",
                "DEC_OBJ",
                "REFXCRPX",
                "REFXCRVL",
                "REFXCDLT",
                "REFXCTYP",
                "REFYCRPX",
                "REFYCRVL",
                "REFYCDLT",
                "REFYCTYP",
            ):
                assert key in h, key
            gti = np.column_stack([hdul["GTI"].data["START"], hdul["GTI"].data["STOP"]])
            assert h["ONTIME"] == pytest.approx(np.sum(gti[:, 1] - gti[:, 0]))
            assert h["EXPOSURE"] == pytest.approx(h["LIVETIME"]) and 0.97 < h["LIVETIME"] / h["ONTIME"] < 1.0
            assert h["TSTART"] == gti[0, 0] and h["TSTOP"] == gti[-1, 1]
            assert h["DATE-OBS"][:4].isdigit() and h["DATE-OBS"][10] == "T"
            cols = [c.name for c in evt.columns]
            ix, iy = cols.index("X") + 1, cols.index("Y") + 1
            assert (h[f"TCTYP{ix}"], h[f"TCTYP{iy}"]) == ("RA---TAN", "DEC--TAN")
            assert (h[f"TCRPX{ix}"], h[f"TCRVL{ix}"], h[f"TCDLT{ix}"]) == (
                h["REFXCRPX"],
                h["REFXCRVL"],
                h["REFXCDLT"],
            )
            assert h["REFXCDLT"] == pytest.approx(-0.05 / 3600)
            d = evt.data
            for name in ("RAWX", "RAWY", "DETX", "DETY", "X", "Y", "PI", "PATTERN", "CCDNR"):
                i = cols.index(name) + 1
                assert h[f"TLMIN{i}"] <= d[name].min() and d[name].max() <= h[f"TLMAX{i}"], name
            assert np.all(np.diff(d["TIME"]) >= 0)
            in_gti = np.zeros(len(d), bool)
            for a, b in gti:
                in_gti |= (d["TIME"] >= a) & (d["TIME"] < b)
            assert in_gti.all()
            assert set(np.unique(d["CCDNR"])) == set(live)
            # The sky WCS of the header puts the cluster where truth says.
            wcs = WCS(naxis=2)
            wcs.wcs.ctype = [h["REFXCTYP"], h["REFYCTYP"]]
            wcs.wcs.crpix = [h["REFXCRPX"], h["REFYCRPX"]]
            wcs.wcs.crval = [h["REFXCRVL"], h["REFYCRVL"]]
            wcs.wcs.cdelt = [h["REFXCDLT"], h["REFYCDLT"]]
            x, y = wcs.all_world2pix([[truth["cluster"]["ra"], truth["cluster"]["dec"]]], 1)[0]
            assert x == pytest.approx(truth["cluster"]["x"], abs=0.05)
            assert y == pytest.approx(truth["cluster"]["y"], abs=0.05)
            # Mostly clean events; a few bad flags, invalid patterns, out-of-range PI and out-of-FOV corners.
            bad_flag = (d["FLAG"] & 0x2A0000) != 0
            assert 0.003 < bad_flag.mean() < 0.03
            assert np.mean(d["PATTERN"] == 0) > 0.5
            assert np.any(d["PATTERN"] > PATTERN_MAX[cam])
            assert np.any(d["PI"] < 200) and np.any(d["PI"] > (15000 if cam == "pn" else 12000))
            corner = (d["FLAG"] & 0x10000) != 0
            assert corner.any()
            assert np.hypot(d["DETX"][corner], d["DETY"][corner]).min() * 0.05 / 60 > 14.9


def test_real_mos_columns_match(survey, xmm_data):
    """Column names and TFORMs are those of a real SAS MOS event list (a907)."""
    out, obsids = survey
    real = xmm_data / "a907" / "0201901401" / "eclean" / "mos1_exp1_clean_evts.fits"
    with fits.open(real) as r, fits.open(out / obsids[0] / "pps" / event_file_name(obsids[0], "mos1")) as s:
        assert [(c.name, c.format) for c in s["EVENTS"].columns] == [
            (c.name, c.format) for c in r["EVENTS"].columns
        ]
        for key in (
            "REFXCRPX",
            "REFXCDLT",
            "REFYCDLT",
            "REFXLMAX",
            "TELESCOP",
            "INSTRUME",
            "TIMESYS",
            "MJDREF",
        ):
            want = r["EVENTS"].header[key]
            assert s["EVENTS"].header[key] == (
                want if isinstance(want, str) else pytest.approx(want, rel=1e-12)
            )


def test_reproducible_bit_for_bit(tmp_path):
    kwargs = {"seed": 11, "index": 3, "exposure_ks": 8.0, "point_sources": 3.0}
    a = simulate_observation(tmp_path / "a", "0901100301", **kwargs)
    b = simulate_observation(tmp_path / "b", "0901100301", **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 + 6 + 2
    for rel in files:
        assert _sha(a / rel) == _sha(b / rel), rel
    c = simulate_observation(tmp_path / "c", "0901100301", **{**kwargs, "seed": 12})
    rel = Path("pps") / event_file_name("0901100301", "pn")
    assert _sha(a / rel) != _sha(c / rel)


def test_region_counts_match_truth(survey):
    """Good events in the 3' circle and 0.5-7 keV band agree with the expected counts (Poisson)."""
    out, obsids = survey
    pulls = []
    for obsid in obsids:
        truth = json.loads((out / obsid / "truth.json").read_text())
        ec = truth["expected_counts"]
        assert ec["band_kev"] == [0.5, 7.0] and ec["radius_arcmin"] == 3.0
        for cam in CAMERAS:
            evt = fits.getdata(out / obsid / "pps" / event_file_name(obsid, cam), "EVENTS")
            n = _good_in_region(evt, cam, ec["centre_x"], ec["centre_y"], 3.0, (0.5, 7.0))
            exp = ec[cam]["total"]
            assert ec[cam]["cluster"] > 0.5 * exp  # the target dominates its region
            pulls.append((n - exp) / np.sqrt(exp))
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls) < 4.0), pulls
    assert np.sum(pulls**2) < 25.0  # chi2 with 6 dof: p ~ 3e-4


def test_spectral_shape_matches_truth(tmp_path):
    """Soft and hard band counts match truth separately; the band only changes truth.json, not the events."""
    kwargs = {
        "seed": 5,
        "index": 0,
        "exposure_ks": 30.0,
        "flare_fraction": 0.0,
        "point_sources": 0.0,
        "cluster": {"kT": 6.0, "z": 0.1, "counts_pn": 30000.0, "rc_arcsec": 40.0},
    }
    soft = simulate_observation(tmp_path / "soft", "0900500001", band_kev=(0.5, 2.0), **kwargs)
    hard = simulate_observation(tmp_path / "hard", "0900500001", band_kev=(2.0, 7.0), **kwargs)
    for cam in CAMERAS:
        rel = Path("pps") / event_file_name("0900500001", cam)
        assert _sha(soft / rel) == _sha(hard / rel)
        evt = fits.getdata(soft / rel, "EVENTS")
        for root, band in ((soft, (0.5, 2.0)), (hard, (2.0, 7.0))):
            ec = json.loads((root / "truth.json").read_text())["expected_counts"]
            n = _good_in_region(evt, cam, ec["centre_x"], ec["centre_y"], 3.0, band)
            assert abs(n - ec[cam]["total"]) < 4.0 * np.sqrt(ec[cam]["total"]), (
                cam,
                band,
                n,
                ec[cam]["total"],
            )
    truth = json.loads((soft / "truth.json").read_text())["cluster"]
    assert truth["kT"] == 6.0 and truth["z"] == 0.1 and truth["rc_arcsec"] == 40.0
    assert truth["counts_pn_detected"] == pytest.approx(30000.0, rel=0.01)  # Monte Carlo estimate


def test_flares_raise_the_10_12_kev_rate(survey):
    out, obsids = survey
    for obsid in obsids:
        truth = json.loads((out / obsid / "truth.json").read_text())
        assert truth["flares"] and truth["flare_fraction"] == pytest.approx(0.15)
        for cam in CAMERAS:
            evt = fits.getdata(out / obsid / "pps" / event_file_name(obsid, cam), "EVENTS")
            sel = (evt["PI"] >= 10000) & (evt["PI"] < 12000) & (evt["PATTERN"] <= PATTERN_MAX[cam])
            t = evt["TIME"][sel]
            inside = np.zeros(t.size, bool)
            t_in = peak_counts = 0.0
            for fl in truth["flares"]:
                # the flat top of the flare (10% ramps at both ends)
                d = fl["tstop"] - fl["tstart"]
                a, b = fl["tstart"] + 0.1 * d, fl["tstop"] - 0.1 * d
                inside |= (t >= a) & (t < b)
                t_in += b - a
                peak_counts += fl["peak_rate_10_12_kev"][cam] * (b - a)
            full = np.zeros(t.size, bool)
            for fl in truth["flares"]:
                full |= (t >= fl["tstart"]) & (t < fl["tstop"])
            t_out = truth["ontime_s"] - sum(f["tstop"] - f["tstart"] for f in truth["flares"])
            rate_in, rate_out = inside.sum() / t_in, (~full).sum() / t_out
            assert rate_in > 1.8 * rate_out, (cam, rate_in, rate_out)
            # outside flares the 10-12 keV rate is the quiescent particle rate (+ a few photons)
            q = (
                truth["background"]["particle_rate_10_12_kev"][cam]
                * truth["livetime_s"][cam]
                / truth["ontime_s"]
            )
            assert rate_out == pytest.approx(q, rel=0.2)
            # inside, the truth peak rate (detected, 10-12 keV) adds to it
            assert rate_in == pytest.approx(rate_out + peak_counts / t_in, rel=0.2)


def test_responses_are_ogip_and_normalised(survey, tmp_path):
    from xmmcore.ogip import read_arf, read_rmf

    out, obsids = survey
    for cam, n_chan, width in (("pn", 4096, 0.005), ("mos1", 800, 0.015), ("mos2", 800, 0.015)):
        rmf = read_rmf(out / obsids[0] / "responses" / f"{cam}.rmf")
        arf = read_arf(out / obsids[0] / "responses" / f"{cam}.arf")
        assert rmf.n_chan == n_chan and rmf.channel_offset == 0
        np.testing.assert_allclose(rmf.e_min, np.arange(n_chan) * width, atol=1e-6)
        np.testing.assert_allclose(rmf.e_max, (np.arange(n_chan) + 1) * width, atol=1e-6)
        np.testing.assert_allclose(arf.energ_lo, rmf.energ_lo)
        np.testing.assert_allclose(arf.energ_hi, rmf.energ_hi)
        rows = np.asarray(rmf.matrix.sum(axis=1)).ravel()
        assert rows.max() <= 1.0
        mid = 0.5 * (rmf.energ_lo + rmf.energ_hi)
        assert rows[(mid > 0.3) & (mid < 11.5)].min() > 0.9999
        assert np.all(arf.specresp >= 0) and np.all(arf.specresp[(mid > 0.2) & (mid < 11.5)] > 1.0)
        # resolution at 6.4 keV: FWHM ~ 140 eV (pn) / 135 eV (MOS), as the canned SAS RMFs
        row = rmf.matrix[np.argmin(np.abs(mid - 6.4))].toarray().ravel()
        centres = 0.5 * (rmf.e_min + rmf.e_max)
        fwhm = np.ptp(centres[row >= row.max() / 2]) + width
        assert fwhm == pytest.approx(0.14 if cam == "pn" else 0.135, abs=2 * width)
        hdr = fits.getheader(out / obsids[0] / "responses" / f"{cam}.rmf", "MATRIX")
        assert hdr["INSTRUME"] == INSTRUME[cam] and hdr["HDUCLASS"] == "OGIP" and hdr["DETCHANS"] == n_chan


def test_responses_close_to_real_sas_products(xmm_data):
    """Channel grids equal the canned SAS RMFs; the smooth areas are within ~25% of real on-axis ARFs."""
    from xmmcore.ogip import read_arf, read_rmf
    from xmmcore.responses import effective_area, make_rmf

    for cam, real in (
        ("pn", "psrj0855/pn/xmm_pn_0605960101.rmf"),
        ("mos1", "psrj0855/mos1/xmm_mos1_0605960101.rmf"),
    ):
        ref = read_rmf(xmm_data / real)
        ours = make_rmf(cam)
        assert ours.n_chan == ref.n_chan
        # the real pn EBOUNDS are slightly wider than 5 eV below ~2.5 keV; above, both are the 5/15 eV grid
        np.testing.assert_allclose(ours.e_max[500:], ref.e_max[500:], atol=2e-4)
        assert ours.e_max[-1] == pytest.approx(ref.e_max[-1], abs=1e-4)
    ref = read_arf(xmm_data / "a2443_fakeit" / "pnS004-A2443_reg2.arf")
    mid = 0.5 * (ref.energ_lo + ref.energ_hi)
    for e in (0.7, 1.0, 1.5, 3.0, 5.0, 7.0, 9.0):
        real = ref.specresp[np.argmin(np.abs(mid - e))]
        assert float(effective_area("pn", e)) == pytest.approx(real, rel=0.25), e


def test_simulate_events_big_list(tmp_path):
    path = simulate_events(tmp_path / "big.fits", n_events=50_000, seed=3, camera="mos2")
    with fits.open(path) as hdul:
        d = hdul["EVENTS"].data
        assert len(d) == 50_000
        assert {c.name: c.format for c in hdul["EVENTS"].columns} == XMM_FORMATS
        assert hdul["EVENTS"].header["INSTRUME"] == "EMOS2"
        assert np.all(np.diff(d["TIME"]) >= 0)
    again = simulate_events(tmp_path / "again.fits", n_events=50_000, seed=3, camera="mos2")
    assert _sha(path) == _sha(again)


def test_cli_simulate(tmp_path, capsys):
    from survey.commands import simulate as cmd

    parser = argparse.ArgumentParser(prog="xmm-survey")
    cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "simulate",
            "--out",
            str(tmp_path / "data"),
            "--n-obsids",
            "1",
            "--seed",
            "4",
            "--exposure-ks",
            "6",
            "--flare-fraction",
            "0",
            "--targets-per-field",
            "2",
            "--point-sources",
            "2",
            "--cameras",
            "pn",
        ]
    )
    assert args.func(args) == 0
    obsid = obsid_for(4, 0)
    obs = discover(tmp_path / "data", obsid)
    assert obs.cameras == ("pn",)
    assert len(obs.truth["extra_clusters"]) == 1 and obs.truth["flares"] == []
    assert "simulated 1 ObsIDs" in capsys.readouterr().out
    bad = parser.parse_args(["simulate", "--out", str(tmp_path / "x"), "--flare-fraction", "2"])
    assert bad.func(bad) == ConfigError.exit_code
    with pytest.raises(ConfigError, match="cluster parameter"):
        simulate_observation(tmp_path, "0900000001", seed=1, cluster={"temperature": 5.0})


def test_injected_kt_recovered_by_builtin_fit(tmp_path):
    """Spectra extracted from the simulated events and fitted with the responses give back the true kT."""
    from xmmcore.fitting.engines import FitInput, get_engine
    from xmmcore.ogip import PHA, write_pha

    root = simulate_observation(
        tmp_path / "data",
        "0902100001",
        seed=21,
        exposure_ks=25.0,
        point_sources=0.0,
        flare_fraction=0.0,
        cluster={"kT": 5.0, "z": 0.15, "counts_pn": 20000.0},
    )
    obs = discover(root.parent, root.name)
    c = obs.truth["cluster"]
    inputs = []
    for cam in CAMERAS:
        evt = fits.getdata(obs.event_files[cam], "EVENTS")
        hdr = fits.getheader(obs.event_files[cam], "EVENTS")
        width, n_chan = (5, 4096) if cam == "pn" else (15, 800)
        good = (evt["FLAG"] == 0) & (evt["PATTERN"] <= PATTERN_MAX[cam]) & (evt["PI"] < width * n_chan)
        r = np.hypot(evt["X"] - c["x"], evt["Y"] - c["y"]) * 0.05 / 60.0
        chan = evt["PI"] // width
        for name, sel, area in (("src", r < 3.0, 9.0), ("bkg", (r > 4.0) & (r < 6.0), 20.0)):
            counts = np.bincount(chan[good & sel], minlength=n_chan).astype(float)
            write_pha(
                PHA(
                    channel=np.arange(n_chan),
                    counts=counts,
                    exposure=hdr["EXPOSURE"],
                    backscal=area,
                    header={"TELESCOP": "XMM", "INSTRUME": hdr["INSTRUME"]},
                ),
                tmp_path / f"{cam}_{name}.pha",
            )
        inputs.append(
            FitInput(
                pha=tmp_path / f"{cam}_src.pha",
                bkg=tmp_path / f"{cam}_bkg.pha",
                rmf=obs.rmf_files[cam],
                arf=obs.arf_files[cam],
                name=cam,
            )
        )
    frozen = [
        f"tbabs_1.nH={c['nH']},frozen",
        f"apec_1.Redshift={c['z']},frozen",
        f"apec_1.Abundanc={c['abundance']},frozen",
    ]
    result = (
        get_engine("builtin")
        .fit_files(
            inputs,
            "tbabs*apec",
            stat="cstat",
            notice_kev=(0.5, 7.0),
            set_params=frozen,
            errors="covariance",
        )
        .to_dict()
    )
    kt = next(p for p in result["parameters"] if p["name"] == "apec_1.kT")
    assert abs(kt["value"] - 5.0) < 2.0 * kt["sigma"], kt
    assert kt["sigma"] < 0.6


def test_short_exposures_never_draw_a_gti_that_starts_after_it_stops():
    """2-3 ks fields with telemetry drop-outs close together (14 of 514 seeds of the 500-ObsID benchmark
    drew a GTI starting after its stop, and the photon draw failed): ordered, disjoint, ontime kept."""
    from xmmcore.simulate import _draw_field

    n_pairs = 0
    for seed in range(400):
        field = _draw_field(
            np.random.default_rng(seed),
            "0900000001",
            exposure_ks=(2.0, 3.0),
            targets_per_field=1,
            point_sources=0.0,
            flare_fraction=0.0,
            counts_range=(1000.0, 2000.0),
            kt_range=(2.0, 8.0),
            z_range=(0.1, 0.3),
            nh_range=(0.01, 0.1),
            cluster_overrides=None,
        )
        gti = field.gti
        assert np.all(gti[:, 1] > gti[:, 0]), (seed, gti)
        assert np.all(gti[1:, 0] > gti[:-1, 1]), (seed, gti)
        assert 1900.0 < float(np.sum(gti[:, 1] - gti[:, 0])) < 3100.0
        n_pairs += int(np.any(np.diff(gti[:, 0]) < 61.0 + 1.0))
    assert n_pairs > 0  # the case that failed is among the seeds
