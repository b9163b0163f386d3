"""Fault injection: ``kill -9`` of a worker, of the driver, and of a process writing the catalogue.

Each test runs the real survey (``xmm-survey run`` in its own process session, the real per-ObsID steps on
small synthetic pn event lists), kills a process with SIGKILL at a moment it is known to be working, and
then checks that

* every step record that says ``done`` lists outputs that exist and are valid (FITS checksums verify,
  JSON parses) -- nothing half-written is ever taken for a product;
* a rerun finishes the survey, reusing what was done before the kill and computing only the rest;
* ``catalogue.parquet`` and ``catalogue.fits`` always read back, agree with each other, and hold every ObsID.

Only processes these tests start are signalled, always by PID (or by the process-group id of the session
they started).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers.cluster_events import good_events

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
OBSIDS = ("0000000011", "0000000012", "0000000013")
STEPS = ("filter",)  # one real step keeps the runs short; resume logic is per step anyway


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("xmm-survey")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from survey.cli import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.pop("CI", None)
    return env


def _make_data(root: Path, obsids=OBSIDS, n: int = 5_000) -> Path:
    data = root / "data"
    for i, obsid in enumerate(obsids):
        good_events(data / obsid / "pn_evts.fits", n=n, seed=100 + i)
    return data


def _run_args(data: Path, results: Path, *, workers: int = 2) -> list[str]:
    return [
        "run",
        "--data",
        str(data),
        "--results",
        str(results),
        "--workers",
        str(workers),
        "--no-progress",
        "--set",
        "cameras=[pn]",
        "--set",
        f"pipeline.steps=[{','.join(STEPS)}]",
        "--set",
        "cluster.dashboard_address=127.0.0.1:0",
    ]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=str(log.parent), start_new_session=True
        )


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _reap_session(proc: subprocess.Popen, extra: list[psutil.Process] = (), grace_s: float = 15.0) -> None:
    """Wait for the processes of the session we started to exit; SIGKILL (by pid) what is left after ``grace_s``."""
    procs = list(extra)
    deadline = time.monotonic() + grace_s
    _, alive = psutil.wait_procs(procs, timeout=max(0.1, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _wait_for(
    predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"survey exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def _record(results: Path, obsid: str, step: str) -> dict | None:
    path = results / obsid / "steps" / f"{step}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _running(results: Path, obsid: str, step: str) -> dict | None:
    """The step's record while it runs (the worker writes status "running" and its pid at the start)."""
    rec = _record(results, obsid, step)
    return rec if rec and rec.get("status") == "running" else None


def _records_done(results: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for obsid in OBSIDS:
        for step in STEPS:
            rec = _record(results, obsid, step)
            if rec and rec.get("status") == "done":
                out[(obsid, step)] = rec
    return out


def _output_paths(rec: dict, obs_dir: Path) -> list[Path]:
    """Output files named in a step record (list of strings or of {path: ...} entries)."""
    entries = rec.get("outputs") or []
    paths = []
    for e in entries:
        p = e.get("path") if isinstance(e, dict) else e
        if p:
            p = Path(p)
            paths.append(p if p.is_absolute() else obs_dir / p)
    return paths


def _valid_product(path: Path) -> None:
    if path.suffix.lower() in (".fits", ".pha", ".rmf", ".arf"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with fits.open(path, checksum=True) as hdul:
                for hdu in hdul:
                    hdu.data  # noqa: B018  (forces the read; a truncated file raises)
    elif path.suffix == ".json":
        json.loads(path.read_text())


def assert_results_consistent(results: Path) -> dict[tuple[str, str], dict]:
    """Every 'done' record's outputs exist and are valid products; returns the done records."""
    done = _records_done(results)
    for (obsid, step), rec in done.items():
        outputs = _output_paths(rec, results / obsid)
        assert outputs, f"{obsid}/{step} record lists no outputs"
        for p in outputs:
            assert p.exists(), f"{obsid}/{step} is recorded done but its output {p} is missing"
            _valid_product(p)
    return done


def assert_catalogue_consistent(results: Path, obsids=OBSIDS) -> None:
    import catalog

    pq = catalog.load(results / "catalogue.parquet")
    ft = catalog.load(results / "catalogue.fits")
    assert sorted(set(pq["obsid"])) == sorted(obsids), f"parquet catalogue ObsIDs {sorted(set(pq['obsid']))}"
    assert len(pq) == len(ft), f"parquet has {len(pq)} rows, fits {len(ft)}"
    key = ["obsid", "camera", "region", "kind"]
    assert not pq.duplicated(key).any(), "duplicated catalogue rows"
    a = pq.sort_values(key).reset_index(drop=True)
    b = ft.sort_values(key).reset_index(drop=True)
    assert list(a["obsid"]) == list(b["obsid"])
    for col in ("exposure_s", "flare_fraction", "r_src_arcmin"):
        if col in a:
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), equal_nan=True)


def _summary_numbers(text: str) -> tuple[int, int, int]:
    """(ObsIDs done, steps computed, steps reused) from the run summary line."""
    import re

    m = re.search(r"(\d+)/(\d+) ObsIDs done, (\d+) failed; (\d+) steps computed, (\d+) reused", text)
    assert m, f"no summary line in output:\n{text[-2000:]}"
    return int(m.group(1)), int(m.group(4)), int(m.group(5))


@pytest.fixture(scope="module")
def client():
    """An in-process Dask client (one worker thread) for the runs that are not killed: no start-up cost."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _run_inprocess(client, data: Path, results: Path, obsids=OBSIDS):
    """Run (or resume) the survey through the Python API; returns the SurveyReport."""
    from survey.api import run_survey
    from survey.config import load_config

    cfg = load_config(
        overrides={
            "data_dir": str(data),
            "results_dir": str(results),
            "cameras": ["pn"],
            "pipeline.steps": list(STEPS),
        }
    )
    report = run_survey(cfg, client=client, progress=False)
    assert sorted(report.done) == sorted(obsids), f"not all ObsIDs done: {report.failed}"
    assert report.catalogue_error is None, report.catalogue_error
    return report


@pytest.fixture()
def survey_dirs(tmp_path):
    data = _make_data(tmp_path)
    return data, tmp_path / "results"


# ----------------------------------------------------------------------------------------------
# kill -9 of a worker
# ----------------------------------------------------------------------------------------------


def test_kill_worker_mid_step(survey_dirs, tmp_path, client):
    data, results = survey_dirs
    log = tmp_path / "run1.log"
    proc = _start(_cli() + _run_args(data, results), log)
    killed = None
    try:
        # A filter step is running: kill -9 the worker process that runs it (pid from its "running" record).
        rec = _wait_for(
            lambda: next((r for o in OBSIDS if (r := _running(results, o, "filter"))), None),
            120,
            "a running filter step",
            proc,
            log,
        )
        workers = {p.pid: p for p in _descendants(proc.pid)}
        assert rec["pid"] in workers, f"pid {rec['pid']} of the running step is not a worker under the driver"
        killed = workers[rec["pid"]]
        os.kill(killed.pid, signal.SIGKILL)
        proc.wait(timeout=240)
    finally:
        _reap_session(proc, _descendants(proc.pid) if proc.poll() is None else [], grace_s=5)
    text = log.read_text(errors="replace")
    assert killed is not None
    assert "Traceback" not in text, (
        f"the driver printed a traceback after a worker was killed:\n{text[-3000:]}"
    )
    # Dask reschedules the lost task on a live worker: one killed worker costs one step's rerun, not an ObsID.
    assert proc.returncode == 0, f"exit code {proc.returncode} after one worker was killed:\n{text[-3000:]}"
    done_before = assert_results_consistent(results)
    # Whatever the first run could not finish, the rerun does; what it finished is reused, not recomputed.
    report = _run_inprocess(client, data, results)
    assert report.n_cached >= len(done_before)
    assert report.n_run + report.n_cached == len(OBSIDS) * len(STEPS)
    assert len(assert_results_consistent(results)) == len(OBSIDS) * len(STEPS)
    assert_catalogue_consistent(results)


# ----------------------------------------------------------------------------------------------
# kill -9 of the driver
# ----------------------------------------------------------------------------------------------


def test_kill_driver_then_resume(survey_dirs, tmp_path, client):
    data, results = survey_dirs
    log = tmp_path / "run1.log"
    proc = _start(_cli() + _run_args(data, results), log)
    children: list = []
    try:
        _wait_for(lambda: len(_records_done(results)) >= 1, 120, "a first finished step", proc, log)
        children = [p for p in _descendants(proc.pid) if "spawn_main" in " ".join(p.cmdline())]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # The workers lose their scheduler (it lived in the driver): they must go away by themselves.
        _, lingering = psutil.wait_procs(children, timeout=30)
    finally:
        # anything still alive is killed by pid so the test leaves nothing behind.
        _reap_session(proc, children, grace_s=1)
    assert proc.returncode == -signal.SIGKILL
    assert not lingering, (
        f"worker processes {[p.pid for p in lingering]} outlived their killed driver by 30 s"
    )
    done_before = assert_results_consistent(results)
    assert 1 <= len(done_before) < len(OBSIDS) * len(STEPS), "the driver was not killed mid-survey"
    report = _run_inprocess(client, data, results)
    assert report.n_cached >= len(done_before), (
        f"{report.n_cached} steps reused, {len(done_before)} were done before the kill"
    )
    assert report.n_run + report.n_cached == len(OBSIDS) * len(STEPS)
    for key, rec in done_before.items():  # the records done before the kill were kept, not redone
        assert _record(results, *key)["inputs_hash"] == rec["inputs_hash"]
    assert len(assert_results_consistent(results)) == len(OBSIDS) * len(STEPS)
    assert_catalogue_consistent(results)


# ----------------------------------------------------------------------------------------------
# kill -9 during a catalogue write
# ----------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import pandas as pd
    from catalog.schema import columns, conform
    from catalog.io import write_catalogue

    def table(n, tag):
        cols = columns()
        df = pd.DataFrame({"obsid": [f"{i:010d}" for i in range(n)], "camera": "epic", "region": "src",
                           "kind": "obs", "kT": np.full(n, tag), "status": "done"})
        return conform(df, cols)

    if __name__ == "__main__":
        results = sys.argv[1]
        a, b = table(2000, 1.0), table(3000, 2.0)
        i = 0
        while True:
            write_catalogue(a if i % 2 == 0 else b, results, append=False)
            i += 1
            print(i, flush=True)
""")


def test_kill_during_catalogue_write_never_leaves_a_torn_file(tmp_path):
    """SIGKILL at random moments of repeated catalogue writes: each file is always one whole version."""
    import catalog

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    results = tmp_path / "results"
    results.mkdir()
    rng = np.random.default_rng(7)
    seen = set()
    for round_ in range(3):
        log = tmp_path / f"writer{round_}.log"
        proc = _start([sys.executable, str(script), str(results)], log)
        try:
            _wait_for(
                lambda log=log: (results / "catalogue.fits").exists() and log.read_text().strip(),
                60,
                "a first catalogue",
                proc,
                log,
            )
            time.sleep(float(rng.uniform(0.0, 0.6)))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            _reap_session(proc, [], grace_s=1)
        for name in ("catalogue.parquet", "catalogue.fits"):
            df = catalog.load(results / name)
            assert (len(df), float(df["kT"].iloc[0])) in {(2000, 1.0), (3000, 2.0)}, (
                f"round {round_}: {name} holds {len(df)} rows (torn write?)"
            )
            seen.add((name, len(df)))
    # A killed writer may leave a hidden temporary file; the next write and read are not disturbed by it.
    from catalog.io import write_catalogue

    df = catalog.load(results / "catalogue.parquet")
    write_catalogue(df, results, append=True)
    assert len(catalog.load(results / "catalogue.fits")) == len(df)
    assert sorted(p.name for p in results.iterdir() if not p.name.startswith(".")) == [
        "catalogue.fits",
        "catalogue.parquet",
    ]


_SURVEY_KILLED_IN_FITS_WRITE = textwrap.dedent("""
    import sys, time
    import catalog.io as cio
    from survey.config import load_config
    from survey.api import run_survey

    def hang(df, path):                       # the FITS half of the catalogue write never finishes
        with open(str(path) + ".partial", "wb") as fh:
            fh.write(b"SIMPLE  =                    T")
        print("WRITING-FITS", flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        data, results, steps = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
        cio.write_fits = hang
        cfg = load_config(overrides={"data_dir": data, "results_dir": results, "cameras": ["pn"],
                                     "pipeline.steps": steps, "cluster.workers": 2,
                                     "cluster.dashboard_address": "127.0.0.1:0"})
        run_survey(cfg, progress=False)
""")


def test_kill_during_survey_catalogue_write_then_rerun(tmp_path, client):
    """The driver dies between writing catalogue.parquet and catalogue.fits: the rerun repairs the pair."""
    first = OBSIDS[:2]
    data = _make_data(tmp_path, obsids=OBSIDS)
    results = tmp_path / "results"
    # Run 1 (two ObsIDs) completes normally: a consistent catalogue of 2 ObsIDs.
    sub = tmp_path / "data_first"
    sub.mkdir()
    for o in first:
        os.symlink(data / o, sub / o)
    _run_inprocess(client, sub, results, first)
    assert_catalogue_consistent(results, first)
    fits_before = (results / "catalogue.fits").read_bytes()
    # Run 2 (all ObsIDs) is killed while it writes the FITS catalogue.
    script = tmp_path / "survey_killed.py"
    script.write_text(_SURVEY_KILLED_IN_FITS_WRITE)
    log = tmp_path / "run1.log"
    proc = _start([sys.executable, str(script), str(data), str(results), ",".join(STEPS)], log)
    children: list = []
    try:
        _wait_for(
            lambda: "WRITING-FITS" in log.read_text(errors="replace"), 240, "the catalogue write", proc, log
        )
        children = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        _reap_session(proc, children, grace_s=20)
    assert (results / "catalogue.fits").read_bytes() == fits_before, "the old FITS catalogue was altered"
    # The rerun computes nothing (every step is done) but must notice the pair is out of step and rebuild it.
    report = _run_inprocess(client, data, results)
    assert report.n_run == 0
    assert_catalogue_consistent(results, OBSIDS)


# ----------------------------------------------------------------------------------------------
# kill -9 of the driver after the joint step: the joint step resumes like the others
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_driver_after_joint_step_then_resume(tmp_path, client, capsys):
    """Two ObsIDs of one target: the joint step is recorded like any step, shown by status, reused on resume."""
    simulate = pytest.importorskip("xmmcore.simulate")
    data, results = tmp_path / "data", tmp_path / "results"
    ids = simulate.simulate_survey(
        data,
        n_obsids=2,
        seed=11,
        cameras=("pn",),
        exposure_ks=6.0,
        cluster_counts=(2500.0, 2500.0),
        point_sources=0.0,
    )
    for obsid in ids:
        meta = json.loads((data / obsid / "meta.json").read_text())
        (data / obsid / "meta.json").write_text(json.dumps({**meta, "name": "JTEST"}))
    sets = {"cameras": "[pn]", "fit.errors": "none", "cluster.dashboard_address": "127.0.0.1:0"}
    argv = _cli() + ["run", "--data", str(data), "--results", str(results), "--workers", "2", "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    record = results / "joint" / "JTEST" / "steps" / "joint.json"

    def joint_done() -> dict | None:
        try:
            rec = json.loads(record.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return rec if rec.get("status") == "done" else None

    log = tmp_path / "run1.log"
    proc = _start(argv, log)
    children: list = []
    try:
        before = _wait_for(joint_done, 600, "the joint step done", proc, log)
        alive = proc.poll() is None
        children = _descendants(proc.pid)
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        _reap_session(proc, children, grace_s=5)
    assert alive and proc.returncode == -signal.SIGKILL, "the driver was not killed after the joint step"
    # an ordinary step record: inputs hash, config hash, status, outputs that exist
    assert before["step"] == "joint" and before["obsids"] == sorted(ids)
    assert len(before["inputs_hash"]) == 64 and len(before["config_hash"]) == 64
    assert [o["path"] for o in before["outputs"]] == ["joint/JTEST.json"]
    assert (results / "joint" / "JTEST.json").stat().st_size == before["outputs"][0]["size"]
    assert (results / "joint" / "JTEST" / "logs" / "joint.log").read_text()
    assert not (results / "joint" / ".survey-state.json").exists()
    # xmm-survey status shows it
    from survey.cli import main

    capsys.readouterr()
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("JTEST"))
    assert line.split()[1] == "done", out
    # the rerun reuses every step, the joint one included, and finishes the catalogue the kill prevented
    from survey.api import run_survey
    from survey.config import load_config

    cfg = load_config(
        overrides={
            "data_dir": str(data),
            "results_dir": str(results),
            "cameras": ["pn"],
            "fit.errors": "none",
            "cluster.dashboard_address": "127.0.0.1:0",
        }
    )
    report = run_survey(cfg, client=client, progress=False)
    assert sorted(report.done) == sorted(ids) and report.n_run == 0 and report.n_cached == 8
    assert report.joint == {"JTEST": None}
    after = json.loads(record.read_text())
    assert after["started"] == before["started"] and after["inputs_hash"] == before["inputs_hash"]
    import catalog

    df = catalog.load(results / "catalogue.parquet")
    assert list(df[(df.kind == "joint") & (df.camera == "epic")].obsid) == ["JTEST"]
    # a changed fit configuration reruns the joint step (new inputs hash) like the per-ObsID fits
    changed = run_survey(cfg.with_overrides({"fit.notice_kev": [0.7, 7.0]}), client=client, progress=False)
    assert changed.joint == {"JTEST": None}
    rerun = json.loads(record.read_text())
    assert rerun["inputs_hash"] != before["inputs_hash"] and rerun["started"] != before["started"]
