"""Must show (issue 14): the SAS backend run end to end against the stub SAS tools (``tests/sas_stub``).

Three ODF-only ObsIDs (the real a907 ODF summary files, raw ODF file names, no event list) run
through ``backend.reduction: sas``: cifbuild -> odfingest -> emchain -> evselect/tabgtigen -> regions
-> evselect spectra -> backscale -> rmfgen -> arfgen -> specgroup -> fit -> catalogue rows. The stub
emchain "makes" the MOS lists from the real a907 lists (copied to ``tmp_path``). rmfgen fails on
purpose for one ObsID: that ObsID fails alone, with the task's SAS error text; every argv key of
every call is in its task's whitelist.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sas_stub import install

from xmmcore.sas_params import unknown_params

OBSIDS = ("0201901401", "0201903501", "0404910601")
BROKEN = "0201903501"


@pytest.fixture(scope="module")
def stub_run(xmm_data, tmp_path_factory):
    from distributed import Client, LocalCluster

    from survey.api import run_survey
    from survey.config import load_config

    root = tmp_path_factory.mktemp("sas-stub")
    sas_dir = install(root / "xmmsas")
    data, events = root / "data", root / "events"
    for obsid in OBSIDS:
        src = xmm_data / "a907" / obsid
        odf = data / obsid / "ODF"
        odf.mkdir(parents=True)
        sum_file = next((src / "odf").glob("*SUM.SAS"))
        shutil.copy(sum_file, odf / sum_file.name)
        rev = sum_file.name[:4]
        for name in ("M1S00110IME", "M1U00210IME", "M2S00210IME", "M2U00210IME", "SCX00000ATS"):
            (odf / f"{rev}_{obsid}_{name}.FIT").write_bytes(b"raw ODF constituent")
        (events / obsid).mkdir(parents=True)
        for cam in ("mos1",):
            shutil.copy(src / "eclean" / f"{cam}_exp1_clean_evts.fits", events / obsid / f"{cam}.fits")
    log = root / "calls.jsonl"
    env = {"XMM_STUB_EVENTS": str(events), "XMM_STUB_FAIL": f"rmfgen:{BROKEN}", "XMM_STUB_LOG": str(log)}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    mp.delenv("SAS_DIR", raising=False)
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(root / "results"),
            "backend.reduction": "sas",
            "sas.sas_dir": str(sas_dir),
            "sas.esas": False,
            "flares.method": "fixed",
            "cameras": ["mos1"],  # one camera keeps the stub calls (a Python start each) few
            "fit.errors": "none",
            "fit.flux_bands_kev": [[0.5, 2.0]],
            "regions.point_sources.detect": False,
        },
    )
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    try:
        with Client(cluster) as client:
            report = run_survey(cfg, client=client, progress=False)
    finally:
        cluster.close()
        mp.undo()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return root, report, calls


def test_odf_only_obsids_reach_the_catalogue_through_the_sas_backend(stub_run):
    import catalog

    root, report, calls = stub_run
    assert report.obsids == list(OBSIDS)
    assert set(report.failed) == {BROKEN}, report.summary()
    df = catalog.load(root / "results" / "catalogue.parquet")
    epic = df[df["camera"] == "epic"].set_index("obsid")
    for obsid in set(OBSIDS) - {BROKEN}:
        assert np.isfinite(epic.loc[obsid, "kT"]), obsid
    tasks = {c["task"] for c in calls}
    assert {"sasversion", "cifbuild", "odfingest", "emchain", "evselect", "tabgtigen"} <= tasks
    assert {"backscale", "rmfgen", "arfgen", "specgroup"} <= tasks
    # the chain started from the ODF: emchain made the U002 list of 0201901401 (an unscheduled exposure)
    clean = root / "results" / "0201901401" / "sas" / "odf" / "emchain" / "P0201901401M1U002MIEVLI0000.FIT"
    assert clean.exists()


def test_the_failing_task_fails_its_obsid_alone_with_the_sas_error_text(stub_run):
    _root, report, _calls = stub_run
    reason = report.failed[BROKEN]
    assert reason.startswith("spectra:") and "** rmfgen: error (StubFailure)" in reason


def test_every_argv_key_of_every_call_is_whitelisted(stub_run):
    _root, _report, calls = stub_run
    assert len(calls) > 30
    for call in calls:
        assert unknown_params(call["argv"]) == [], call
