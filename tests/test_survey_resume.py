"""Kill the driver (``xmm-survey run``) mid-survey, rerun: finished steps are not recomputed and the
results are identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from helpers import survey_steps as helpers

from survey.api import run_one
from survey.config import load_config
from survey.steps import read_record

TESTS = Path(__file__).resolve().parent
N = 8


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", "survey.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _products(results: Path, obsid: str) -> dict:
    d = results / obsid
    with fits.open(d / "events" / "pn_clean.fits") as hdul:
        events = {c: np.array(hdul[1].data[c]).tolist() for c in ("X", "Y", "PI")}
    return {
        "events": events,
        "regions": json.loads((d / "regions" / "regions.json").read_text()),
        "spectra": json.loads((d / "spectra" / "pn_src.json").read_text()),
        "fit": json.loads((d / "fits" / "fit.json").read_text()),
    }


def test_kill_driver_then_resume(tmp_path):
    ids = helpers.make_survey(
        tmp_path / "data", N, meta={f"{910000000 + i:010d}": {"work_s": 0.08} for i in range(N)}
    )
    res = tmp_path / "results"
    args = [
        "run",
        "--data",
        str(tmp_path / "data"),
        "--results",
        str(res),
        "--workers",
        "2",
        "--no-progress",
        "--no-catalogue",
        "--set",
        "pipeline.module=helpers.survey_steps",
        "--set",
        "cluster.dashboard_address=127.0.0.1:0",
    ]
    driver = _cli(args)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            n_fit = sum(1 for o in ids if (read_record(res / o, "fit") or {}).get("status") == "done")
            if n_fit >= 3:
                break
            assert driver.poll() is None, driver.communicate()[0]
            time.sleep(0.05)
        else:
            raise AssertionError("the survey did not get going within 90 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, its scheduler and its workers
        driver.wait(timeout=30)
    done_before = {}
    for obsid in ids:
        for step in helpers.STEPS:
            rec = read_record(res / obsid, step)
            if rec and rec["status"] == "done":
                done_before[(obsid, step)] = (
                    rec["started"],
                    (res / obsid / "steps" / f"{step}.json").stat().st_mtime_ns,
                )
    n_fit_before = sum(1 for (o, s) in done_before if s == "fit")
    assert 3 <= n_fit_before < N, "the kill must land mid-survey"

    rerun = _cli(args)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert f"{N}/{N} ObsIDs done" in out
    assert f"{len(done_before)} reused" in out and f"{4 * N - len(done_before)} steps computed" in out
    for (obsid, step), (started, mtime) in done_before.items():
        rec = read_record(res / obsid, step)
        assert rec["started"] == started  # not recomputed
        assert (res / obsid / "steps" / f"{step}.json").stat().st_mtime_ns == mtime
    for obsid in ids:
        assert all(read_record(res / obsid, s)["status"] == "done" for s in helpers.STEPS)

    # identical to an uninterrupted run (in-process, no Dask) of the same data
    ref = tmp_path / "reference"
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(ref),
            "pipeline.module": "helpers.survey_steps",
        },
    )
    for obsid in ids:
        assert {o["status"] for o in run_one(cfg, obsid).values()} == {"done"}
        assert _products(res, obsid) == _products(ref, obsid)
        assert read_record(res / obsid, "fit")["inputs_hash"] != ""

    status = subprocess.run(
        [sys.executable, "-m", "survey.cli", "status", "--results", str(res)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
        check=False,
    )
    assert status.returncode == 0 and f"{N} ObsIDs: {N} done" in status.stdout
