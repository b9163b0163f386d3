"""Survey orchestration on a local Dask cluster with cheap real steps (tests/helpers.survey_steps.py).

Failure isolation, retries only for TransientError, checkpoints (skip / rerun exactly what changed),
targets CSV + ObsID list inputs, status / retry / clean, a worker killed mid-survey.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import survey_steps as helpers

from survey.api import read_obsid_list, read_targets_csv, resolve_obsids, run_one, run_survey
from survey.config import load_config
from survey.status import clean_obsid, collect_status, failed_obsids, format_status
from survey.steps import read_record
from xmmcore.errors import ConfigError, InputDataError

STEPS = helpers.STEPS


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        host="127.0.0.1",
        resources={"slots": 1},
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _cfg(tmp_path: Path, **extra):
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "results_dir": str(tmp_path / "results"),
        "pipeline.module": "helpers.survey_steps",
        "cluster.dashboard_address": "127.0.0.1:0",
        "retries.backoff_s": 0.05,
        "cluster.workers": 2,
    }
    overrides.update(extra)
    return load_config(None, overrides)


def _mtimes(results: Path) -> dict[str, int]:
    return {str(p.relative_to(results)): p.stat().st_mtime_ns for p in sorted(results.glob("*/steps/*.json"))}


def test_failures_are_isolated_and_only_transient_is_retried(tmp_path, client):
    ids = helpers.make_survey(
        tmp_path / "data",
        6,
        meta={
            "0910000001": {"fail": {"step": "regions", "kind": "InputDataError"}},
            "0910000002": {"fail": {"step": "spectra", "kind": "ToolError"}},
            "0910000003": {"transient": {"step": "fit", "times": 1}},  # recovers on the retry
            "0910000004": {"transient": {"step": "filter", "times": 5}},  # more than retries.transient=2
        },
    )
    report = run_survey(_cfg(tmp_path), client=client, progress=False, catalogue=False)
    res = tmp_path / "results"
    assert sorted(report.done) == [ids[0], ids[3], ids[5]]
    assert set(report.failed) == {ids[1], ids[2], ids[4]}
    assert report.failed[ids[1]].startswith("regions: InputDataError:")
    assert report.failed[ids[2]].startswith("spectra: ToolError:")
    assert report.failed[ids[4]].startswith("filter: TransientError:")

    bad = read_record(res / ids[1], "regions")
    assert bad["status"] == "failed" and bad["exception"] == "InputDataError" and bad["attempts"] == 1
    assert "simulated InputDataError in regions" in bad["reason"]
    assert read_record(res / ids[1], "spectra") is None  # never started
    assert read_record(res / ids[2], "spectra")["attempts"] == 1  # ToolError not retried
    assert read_record(res / ids[3], "fit")["attempts"] == 2  # one transient failure, one retry
    assert read_record(res / ids[3], "fit")["status"] == "done"
    assert (res / ids[3] / ".transient-fit").read_text() == "2"
    lost = read_record(res / ids[4], "filter")
    assert lost["attempts"] == 3 and lost["exception"] == "TransientError"  # 1 + retries.transient
    # per ObsID/step logs say what happened
    log_text = (res / ids[3] / "logs" / "fit.log").read_text()
    assert "transient failure" in log_text and "retrying" in log_text
    survey_log = (res / "logs" / "survey.log").read_text()
    assert f"{ids[1]} regions failed (InputDataError)" in survey_log
    # the good ObsIDs carry real products
    fit = json.loads((res / ids[0] / "fits" / "fit.json").read_text())
    assert 0.5 < fit["mean_kev"] < 12.0 and fit["counts"] > 100
    rec = read_record(res / ids[0], "filter")
    assert [o["path"] for o in rec["outputs"]] == ["events/pn_clean.fits"]
    assert rec["summary"]["n_in"] == 300 and 0 < rec["summary"]["n_clean"] < 300

    status = collect_status(res)
    assert status.obsid_state(ids[0]) == "done" and status.obsid_state(ids[1]) == "failed"
    assert status.counts()["filter"] == {"done": 5, "failed": 1, "running": 0, "pending": 0}
    table = format_status(status)
    assert (
        "regions: InputDataError: simulated InputDataError" in table and "6 ObsIDs: 3 done, 3 failed" in table
    )
    assert failed_obsids(res) == sorted([ids[1], ids[2], ids[4]])


def test_resume_skips_done_and_reruns_exactly_what_changed(tmp_path, client):
    ids = helpers.make_survey(
        tmp_path / "data", 3, meta={"0910000001": {"fail": {"step": "fit", "kind": "ToolError"}}}
    )
    cfg = _cfg(tmp_path)
    res = tmp_path / "results"
    first = run_survey(cfg, client=client, progress=False, catalogue=False)
    assert first.n_run == 12 and first.n_cached == 0
    before = _mtimes(res)

    again = run_survey(cfg, client=client, progress=False, catalogue=False)  # nothing changed: nothing runs
    assert again.n_run == 0 and again.n_cached == 11
    assert _mtimes(res) == before  # deterministic failure not rerun either
    assert set(again.failed) == {ids[1]}

    changed = run_survey(
        cfg.with_overrides({"fit.stat": "chi2"}), client=client, progress=False, catalogue=False
    )
    after = _mtimes(res)
    assert changed.n_run == 3  # only the fit step of each ObsID
    for key, mtime in after.items():
        assert (mtime != before[key]) == key.endswith("/fit.json"), key
    assert json.loads((res / ids[0] / "fits" / "fit.json").read_text())["stat"] == "chi2"

    # a changed input file reruns its whole chain, nothing else
    helpers.write_events(tmp_path / "data" / ids[2] / "pn_evts.fits", n=400, seed=99)
    third = run_survey(
        cfg.with_overrides({"fit.stat": "chi2"}), client=client, progress=False, catalogue=False
    )
    assert third.n_run == 4
    assert read_record(res / ids[2], "filter")["summary"]["n_in"] == 400
    assert _mtimes(res)[f"{ids[0]}/steps/filter.json"] == after[f"{ids[0]}/steps/filter.json"]


def test_retry_failed_and_clean(tmp_path, client):
    ids = helpers.make_survey(
        tmp_path / "data", 2, meta={"0910000001": {"fail": {"step": "fit", "kind": "ToolError"}}}
    )
    cfg = _cfg(tmp_path)
    res = tmp_path / "results"
    run_survey(cfg, client=client, progress=False, catalogue=False)
    assert failed_obsids(res) == [ids[1]]
    (tmp_path / "data" / ids[1] / "meta.json").unlink()  # the user fixed the input
    # without --failed, the meta change alone alters the hash: the ObsID is rerun anyway
    retried = run_survey(
        cfg, client=client, progress=False, obsids=failed_obsids(res), retry_failed=True, catalogue=False
    )
    assert retried.failed == {} and failed_obsids(res) == []

    removed = clean_obsid(res, ids[0], step="spectra")
    assert [p.name for p in removed] == ["spectra.json", "fit.json"]
    report = run_survey(cfg, client=client, progress=False, catalogue=False)
    assert report.n_run == 2  # spectra + fit of ids[0]
    clean_obsid(res, ids[0])
    assert not (res / ids[0]).exists()
    with pytest.raises(ConfigError, match="nothing to clean"):
        clean_obsid(res, ids[0])
    with pytest.raises(InputDataError):
        clean_obsid(res, "../etc")


def test_same_deterministic_failure_is_not_retried_without_asking(tmp_path, client):
    ids = helpers.make_survey(
        tmp_path / "data", 1, meta={"0910000000": {"fail": {"step": "regions", "kind": "InputDataError"}}}
    )
    cfg = _cfg(tmp_path)
    run_survey(cfg, client=client, progress=False, catalogue=False)
    rec = tmp_path / "results" / ids[0] / "steps" / "regions.json"
    t0 = rec.stat().st_mtime_ns
    assert run_survey(cfg, client=client, progress=False, catalogue=False).n_run == 0
    assert rec.stat().st_mtime_ns == t0
    assert run_survey(cfg, client=client, progress=False, retry_failed=True, catalogue=False).n_run == 1
    assert rec.stat().st_mtime_ns > t0


def test_inputs_from_list_file_glob_and_targets_csv(tmp_path, client):
    ids = helpers.make_survey(tmp_path / "data", 4)
    listing = tmp_path / "obsids.txt"
    listing.write_text(f"# my sample\n{ids[2]}   # A2029\n\n{ids[0]}\n{ids[2]}\n")
    assert read_obsid_list(listing) == [ids[2], ids[0]]
    csv = tmp_path / "targets.csv"
    csv.write_text(
        f"obsid,name,ra,dec,z,nh,r500_kpc\n{ids[0]},A907,149.59,-11.06,0.1527,0.053,1100\n"
        f"{ids[2]},A2029,227.73,5.74,0.0773,,\n"
    )
    targets = read_targets_csv(csv)
    assert targets[ids[0]] == {
        "name": "A907",
        "ra": 149.59,
        "dec": -11.06,
        "z": 0.1527,
        "nh": 0.053,
        "r500_kpc": 1100.0,
    }
    assert "nh" not in targets[ids[2]]
    cfg = _cfg(tmp_path, obsids=str(listing), targets_csv=str(csv))
    assert resolve_obsids(cfg) == [ids[2], ids[0]]
    assert resolve_obsids(_cfg(tmp_path, obsids="091000000[13]")) == [ids[1], ids[3]]
    assert resolve_obsids(_cfg(tmp_path, targets_csv=str(csv))) == [ids[0], ids[2]]
    report = run_survey(cfg, client=client, progress=False, catalogue=False)
    assert report.obsids == [ids[2], ids[0]] and not report.failed
    fit = json.loads((tmp_path / "results" / ids[0] / "fits" / "fit.json").read_text())
    assert fit["z"] == pytest.approx(0.1527)  # CSV metadata reached the step
    bad = tmp_path / "bad.csv"
    bad.write_text(f"obsid,z\n{ids[0]},high\n")
    with pytest.raises(InputDataError, match="row 2: column z = 'high' is not a number"):
        read_targets_csv(bad)
    with pytest.raises(ConfigError, match=r"obsids.txt:2"):
        listing.write_text("ok1\n../../etc\n")
        read_obsid_list(listing)


def test_missing_and_truncated_observations_are_recorded(tmp_path, client):
    ids = helpers.make_survey(tmp_path / "data", 3)
    evt = tmp_path / "data" / ids[1] / "pn_evts.fits"
    evt.write_bytes(evt.read_bytes()[:5000])  # truncated event list
    # A listed ObsID without a folder is a mistake in the list: refused when the run starts (issue 15),
    # naming it, before any work and before anything is written for it.
    cfg = _cfg(tmp_path, obsids=[ids[0], ids[1], ids[2], "0999999999"])
    with pytest.raises(ConfigError, match="0999999999") as info:
        run_survey(cfg, client=client, progress=False, catalogue=False)
    assert "has no folder" in str(info.value)
    assert not (tmp_path / "results" / "0999999999").exists()
    # The truncated list fails alone, recorded with its file and cause.
    cfg = _cfg(tmp_path, obsids=[ids[0], ids[1], ids[2]])
    report = run_survey(cfg, client=client, progress=False, catalogue=False)
    assert sorted(report.done) == [ids[0], ids[2]]
    assert "filter: InputDataError" in report.failed[ids[1]] and "pn_evts.fits" in report.failed[ids[1]]


def test_run_one_without_dask(tmp_path):
    ids = helpers.make_survey(tmp_path / "data", 1)
    cfg = _cfg(tmp_path)
    outcomes = run_one(cfg, ids[0])
    assert [o["status"] for o in outcomes.values()] == ["done"] * 4
    assert [o["status"] for o in run_one(cfg, ids[0]).values()] == ["cached"] * 4


def test_killed_worker_every_obsid_exactly_once(tmp_path):
    """SIGKILL a worker process in the middle of a step: the survey finishes, one catalogue row per ObsID."""
    catalog = pytest.importorskip("catalog")
    meta = {f"{910000000 + i:010d}": {"work_s": 0.05} for i in range(6)}
    meta["0910000003"] = {"kill_once": "spectra", "work_s": 0.05}
    ids = helpers.make_survey(tmp_path / "data", 6, meta=meta)
    cfg = _cfg(tmp_path)
    report = run_survey(cfg, progress=False)  # its own LocalCluster (nannies restart)
    res = tmp_path / "results"
    marker = res / ids[3] / ".killed-spectra"
    assert marker.exists()  # the worker really died there
    assert int(marker.read_text()) != os.getpid()
    assert report.failed == {} and sorted(report.done) == ids
    spectra = read_record(res / ids[3], "spectra")
    assert spectra["status"] == "done" and spectra["pid"] != int(marker.read_text())
    df = catalog.load(res / "catalogue.parquet")
    epic = df[df["camera"] == "epic"] if "camera" in df else df
    assert sorted(epic["obsid"]) == ids  # each ObsID exactly once
    assert set(epic["status"]) == {"done"}


def test_connect_to_running_scheduler_by_address(tmp_path, client):
    ids = helpers.make_survey(tmp_path / "data", 2)
    address = client.scheduler.address
    cfg = _cfg(tmp_path, **{"cluster.kind": "address", "cluster.address": address})
    report = run_survey(cfg, progress=False, catalogue=False)
    assert sorted(report.done) == ids and report.n_run == 8
    assert client.status == "running"  # a foreign scheduler is left running
    pids = {read_record(tmp_path / "results" / o, "fit")["pid"] for o in ids}
    assert pids <= set(client.run(os.getpid).values())
    with pytest.raises(ConfigError, match="cluster.address"):
        helpers.make_survey(tmp_path / "x" / "data", 1)
        run_survey(_cfg(tmp_path / "x", **{"cluster.kind": "address"}), progress=False, catalogue=False)


def test_status_calls_done_records_of_other_code_stale(tmp_path):
    """A done record made by other code is what the next run recomputes: status says ``stale``, not done."""
    from survey.steps import write_record
    from xmmcore.provenance import code_identity

    ours = code_identity()
    for obsid, sha in (("0100000001", ours["sha256"]), ("0100000002", "0" * 64)):
        write_record(tmp_path / obsid, "filter", {"status": "done", "wall_s": 1.0, "code": {"sha256": sha}})
    status = collect_status(tmp_path, steps=["filter"])
    assert status.rows["0100000001"]["filter"].state == "done"
    assert status.rows["0100000002"]["filter"].state == "stale"
    assert status.obsid_state("0100000002") == "stale"
    assert status.counts()["filter"] == {"done": 1, "failed": 0, "running": 0, "pending": 0, "stale": 1}
    text = format_status(status)
    assert "stale: done by other code" in text and ours["sha256"][:16] in text
    assert status.to_dict()["code_version"] == status.code_version != ""
