"""Issue 3 must-shows: the whole chain on a simulated survey, through the public API and the CLI.

simulate 20 ObsIDs -> run on a LocalCluster (2 workers) -> catalogue; one ObsID is broken on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import catalog
from survey.api import run_survey
from survey.cli import main as cli_main
from survey.config import load_config
from xmmcore.simulate import simulate_survey

N_OBSIDS = 20


@pytest.fixture(scope="module")
def survey_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, results = root / "data", root / "results"
    obsids = simulate_survey(
        data,
        n_obsids=N_OBSIDS + 2,
        seed=7,
        exposure_ks=(12.0, 18.0),
        cluster_counts=(4000.0, 9000.0),
        point_sources=3.0,
    )
    # The last ObsID has every event list truncated (a crashed download): it must fail alone.
    # The one before has only its pn list truncated: it must finish on MOS1+MOS2, the pn failure recorded.
    bad, partial = obsids[-1], obsids[-2]
    for path in (data / bad).rglob("*EVLI*"):
        _truncate(path)
    _truncate(next((data / partial).rglob("*PNS003PIEVLI*")))
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(results),
            "cluster.workers": 2,
            "fit.errors": "covariance",
            "cluster.dashboard_address": "127.0.0.1:0",
            # the pn figures and the fit's are the ones checked here; every camera's ("all", the default)
            # is drawn by test_a907 and test_interop and counted in test_plots_level
            "plots": "summary",
        },
    )
    report = run_survey(cfg)
    return data, results, obsids, bad, partial, report


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


def test_injected_temperatures_are_recovered(survey_run):
    data, results, obsids, bad, partial, _report = survey_run
    good = [o for o in obsids if o not in (bad, partial)]
    assert len(good) == N_OBSIDS
    pulls = []
    for obsid in good:
        truth = json.loads((data / obsid / "truth.json").read_text())["cluster"]
        fit = json.loads((results / obsid / "fits" / "fit.json").read_text())
        kt = next(p for p in fit["parameters"] if p["name"] == "apec_1.kT")  # default model tbabs*apec
        sigma = kt["err_hi"] if kt["value"] < truth["kT"] else kt["err_lo"]
        assert sigma and sigma > 0, f"{obsid}: no kT error"
        pulls.append((kt["value"] - truth["kT"]) / sigma)
    pulls = np.array(pulls)
    within = np.mean(np.abs(pulls) < 2.0)
    assert within >= 0.9, f"only {within:.0%} of kT within 2 sigma; pulls {np.round(pulls, 2)}"
    assert abs(np.median(pulls)) < 1.0, f"biased kT: median pull {np.median(pulls):.2f}"


def test_catalogue_has_one_row_per_obsid_with_units(survey_run):
    _data, results, obsids, bad, _partial, _report = survey_run
    df = catalog.load(results / "catalogue.parquet")
    epic = df[(df["kind"] == "obs") & (df["camera"] == "epic")]
    assert sorted(epic["obsid"]) == sorted(obsids)
    assert epic["obsid"].is_unique
    assert df.attrs["units"]["kT"] == "keV"
    assert df.attrs["units"]["flux_0p5_2p0_abs"] == "erg cm-2 s-1"
    good = epic[epic["obsid"] != bad]
    assert (good["status"] == "done").all()
    assert good["kT"].between(0.5, 20).all()
    assert (results / "catalogue.fits").stat().st_size > 0


def test_bad_obsid_is_recorded_and_others_finish(survey_run):
    _data, results, _obsids, bad, _partial, report = survey_run
    assert set(report.failed) == {bad}
    reason = report.failed[bad]
    assert reason.startswith("filter") and f"P{bad}" in reason, reason
    df = catalog.load(results / "catalogue.parquet")
    row = df[(df["obsid"] == bad) & (df["camera"] == "epic")].iloc[0]
    assert row["status"] == "failed" and row["failed_step"] == "filter"
    assert f"P{bad}" in row["failure_reason"]
    assert not (results / bad / "fits" / "fit.json").exists()


def test_one_bad_camera_leaves_the_others(survey_run):
    _data, results, _obsids, _bad, partial, _report = survey_run
    filt = json.loads((results / partial / "steps" / "filter.json").read_text())
    failed = filt["summary"]["failed_cameras"]
    assert set(failed) == {"pn"}
    assert f"P{partial}PNS003PIEVLI0000.FIT" in failed["pn"]
    fit = json.loads((results / partial / "fits" / "fit.json").read_text())
    assert {p.get("dataset") for p in fit["parameters"] if p.get("dataset")} <= {"mos1", "mos2"}
    assert fit["statistic"] > 0


def test_products_and_plots_exist(survey_run):
    _data, results, obsids, _bad, _partial, _report = survey_run
    out = results / obsids[0]
    for rel in [
        "events/pn_clean.fits",
        "regions/pn_src.reg",
        "regions/pn_bkg.reg",
        "spectra/pn_src.pha",
        "spectra/pn_bkg.pha",
        "spectra/pn.rmf",
        "spectra/pn.arf",
        "fits/fit.json",
        "fits/fit.xcm",
        "plots/pn_lightcurve.png",
        "plots/pn_image.png",
        "plots/spectrum_fit.png",
        "logs/fit.log",
    ]:
        assert (out / rel).stat().st_size > 0, rel
    assert (results / "config.resolved.yaml").exists()


def test_rerun_reuses_every_step(survey_run):
    data, results, obsids, _bad, _partial, _report = survey_run
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(results),
            "cluster.workers": 1,
            "fit.errors": "covariance",
            "cluster.dashboard_address": "127.0.0.1:0",
        },
    )
    before = (results / obsids[0] / "fits" / "fit.json").stat().st_mtime_ns
    again = run_survey(cfg, obsids=obsids[:3])
    assert again.n_run == 0 and again.n_cached == 12
    assert (results / obsids[0] / "fits" / "fit.json").stat().st_mtime_ns == before


def test_cli_status_and_help(survey_run, capsys):
    _data, results, _obsids, bad, _partial, _report = survey_run
    exe = [sys.executable, "-m", "survey.cli"]
    out = subprocess.run(
        exe + ["status", "--results", str(results)], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad in out.stdout and "failed" in out.stdout
    # the sub-commands' help in this process (`python -m survey.cli` itself is the status call above):
    # a new interpreter per sub-command cost ~3 s each and parsed the same arguments
    for sub in ["run", "simulate", "status", "fit", "catalog", "plan", "models"]:
        with pytest.raises(SystemExit) as info:
            cli_main([sub, "--help"])
        assert info.value.code == 0 and "usage" in capsys.readouterr().out, sub
