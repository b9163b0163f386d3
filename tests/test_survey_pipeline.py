"""The survey with the real per-ObsID pipeline (xmmcore.pipeline) on simulated XMM data:
Dask LocalCluster, one broken ObsID isolated, a joint fit of a target seen twice, resume reruns exactly the fit after a fit-config change,
and the catalogue has one row per ObsID."""

from __future__ import annotations

import json

import pytest

from survey.api import run_survey
from survey.cluster import start_cluster
from survey.config import load_config
from survey.steps import read_record

STEPS = ("filter", "regions", "spectra", "fit")


@pytest.mark.slow
def test_real_pipeline_survey_and_resume(tmp_path):
    simulate = pytest.importorskip("xmmcore.simulate")
    pytest.importorskip("catalog")
    data, res = tmp_path / "data", tmp_path / "results"
    good, bad, second = simulate.simulate_survey(
        data,
        n_obsids=3,
        seed=5,
        cameras=("pn",),
        exposure_ks=10.0,
        cluster_counts=(3000.0, 3000.0),
        point_sources=0.5,
    )
    for obsid in (good, second):  # one target observed twice -> a joint fit
        meta = json.loads((data / obsid / "meta.json").read_text())
        (data / obsid / "meta.json").write_text(json.dumps({**meta, "name": "A2029"}))
    evt = next((data / bad).rglob("*PIEVLI*"))
    evt.write_bytes(evt.read_bytes()[:20000])  # a crashed download
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(res),
            "cameras": ["pn"],
            "fit.errors": "none",
            "cluster.workers": 2,
            "cluster.dashboard_address": "127.0.0.1:0",
        },
    )
    # one LocalCluster (2 worker processes) for both runs: a second start and the workers' imports cost
    # ~15 s and are not what this test checks (run_survey's own cluster: test_end_to_end, test_interop)
    with start_cluster(cfg, results_dir=res) as handle:
        _check_runs(cfg, handle.client, data, res, good, bad, second)


def _check_runs(cfg, client, data, res, good, bad, second):
    catalog = pytest.importorskip("catalog")
    first = run_survey(cfg, client=client, progress=False)
    assert first.done == [good, second]
    assert first.joint == {"A2029": None}  # survey-level joint fit after the ObsIDs
    assert first.failed[bad].startswith("filter: InputDataError") and "PIEVLI" in first.failed[bad]
    assert first.catalogue_error is None, first.catalogue_error

    truth = json.loads((data / good / "truth.json").read_text())["cluster"]
    fit = json.loads((res / good / "fits" / "fit.json").read_text())
    kt = next(p for p in fit["parameters"] if p["name"].endswith(".kT"))
    assert abs(kt["value"] - truth["kT"]) < 4 * kt["sigma"], (kt, truth["kT"])
    for product in ("events/pn_clean.fits", "regions/regions.json", "spectra/pn_src.pha", "fits/fit.json"):
        assert (res / good / product).exists(), product
    assert [o["path"] for o in read_record(res / good, "fit")["outputs"]]  # outputs recorded
    assert (res / good / "logs" / "fit.log").read_text()

    before = {s: read_record(res / good, s) for s in STEPS}
    changed = run_survey(cfg.with_overrides({"fit.notice_kev": [0.7, 7.0]}), client=client, progress=False)
    after = {s: read_record(res / good, s) for s in STEPS}
    assert changed.n_run == 2 and changed.n_cached == 6  # only the fits; the bad ObsID not retried
    for step in ("filter", "regions", "spectra"):
        assert after[step]["started"] == before[step]["started"]
    assert after["fit"]["started"] != before["fit"]["started"]
    assert after["fit"]["inputs_hash"] != before["fit"]["inputs_hash"]

    df = catalog.load(res / "catalogue.parquet")
    epic = df[df["camera"] == "epic"]
    assert sorted(epic[epic["kind"] == "obs"]["obsid"]) == sorted([good, bad, second])
    joint = epic[epic["kind"] == "joint"]
    assert list(joint["obsid"]) == ["A2029"] and joint["kT"].iloc[0] > 0
    # joint rows carry the provenance of their step record, as ObsID rows carry theirs
    jrec = read_record(res / "joint" / "A2029", "joint")
    obs_code = epic.set_index("obsid").loc[good, "code_version"]
    assert obs_code and joint["code_version"].iloc[0] == obs_code
    assert joint["config_hash"].iloc[0] == jrec["config_hash"] != ""
    assert joint["started_utc"].iloc[0] == jrec["started"] and joint["wall_s"].iloc[0] > 0
    assert json.loads(joint["software_versions"].iloc[0]) == jrec["versions"]
    combined = epic[epic["kind"] == "combined"]
    assert list(combined["code_version"]) == [obs_code]
    row = epic.set_index("obsid").loc[good]
    assert row["status"] == "done" and row["kT"] == pytest.approx(
        next(
            p
            for p in json.loads((res / good / "fits" / "fit.json").read_text())["parameters"]
            if p["name"].endswith(".kT")
        )["value"]
    )
    assert epic.set_index("obsid").loc[bad, "status"] == "failed"
    assert df.attrs["units"]["kT"] == "keV"
