"""A survey on a real multi-node SLURM (three slurmd daemons, each its own node, on this machine).

``slurm/local-cluster.sh`` with ``XMM_SLURM_NODES=3`` starts nodes ``xmm-n1..3`` at 127.0.0.11-13
(per-node slurmd ports). Each Dask worker listens on its node's address (``--host $XMM_NODE_ADDR``),
the scheduler on 127.0.0.1: nothing leaves the loopback range. The tests (marker ``slurm``):

* a survey spread over all three nodes, with the logs of every node under ``results/logs/`` -- the
  reference run the others are compared with;
* a node killed mid-survey (its slurmd and every process of its jobs): the steps it held run elsewhere,
  every ObsID is in the catalogue exactly once and every step result is identical to the reference;
* a worker job reaching its SLURM walltime mid-survey: its steps are rerun by the next job;
* the driver ended (SIGTERM, as ``scancel`` does) while worker jobs are queued, then restarted: the
  finished steps are reused and the result is identical to the reference;
* job-array mode (``run-one`` per array task) over the nodes: the same step results and catalogue;
* job-array mode with a node killed while one of its tasks is mid-chain: SLURM requeues the task
  (``--requeue``) on another node, the requeued task takes over the ObsID lock its earlier run left
  (same job id, higher restart count), and the catalogue equals the fault-free one;
* the run-one lock judged by the real ``squeue``: live while the holder's job runs, taken over once
  SLURM shows it CANCELLED, and a job id SLURM does not know is GONE.

The steps are the cheap real ones of ``helpers.survey_steps`` (tiny FITS event lists).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import survey_steps as helpers

from survey.api import run_survey
from survey.cluster import start_cluster
from survey.config import load_config
from survey.steps import read_record

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
TESTS = REPO / "tests"
NODES = ("xmm-n1", "xmm-n2", "xmm-n3")
ADDR = {"xmm-n1": "127.0.0.11", "xmm-n2": "127.0.0.12", "xmm-n3": "127.0.0.13"}
N_OBS = 9
WORK_S = 0.4  # per step: long enough for a node to die with steps in flight
# Catalogue columns that differ between two fault-free runs into different folders (times, hashes of
# paths and configuration); every other column must be identical.
RUN_COLUMNS = {"config_hash", "inputs_hash", "started_utc", "finished_utc", "wall_s"}


def _run(cmd, env, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, **kw)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory):
    """Three SLURM nodes on free ports chosen by local-cluster.sh (so another test run's may run beside it)."""
    state = tmp_path_factory.mktemp("slurm3")
    env = {k: v for k, v in os.environ.items() if k not in ("XMM_SLURMCTLD_PORT", "XMM_SLURMD_PORT")}
    env.update(XMM_SLURM_DIR=str(state), XMM_SLURM_NODES="3")
    out = _run(["bash", str(SLURM / "local-cluster.sh"), "start"], env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    conf = str(state / "slurm.conf")
    env["SLURM_CONF"] = conf
    lines = (state / "nodes.txt").read_text().split("\n")
    assert [x.split() for x in lines if x] == [[n, ADDR[n]] for n in NODES]
    try:
        yield {"env": env, "state": state, "conf": conf}
    finally:
        _run(["bash", str(SLURM / "local-cluster.sh"), "stop"], env, timeout=120)


@pytest.fixture(scope="module")
def data3(tmp_path_factory):
    data = tmp_path_factory.mktemp("data3")
    ids = helpers.make_survey(
        data, N_OBS, meta={f"{910000000 + i:010d}": {"work_s": WORK_S} for i in range(N_OBS)}
    )
    return data, ids


def _overrides(cluster3, data, results, **more):
    nodes_txt = cluster3["state"] / "nodes.txt"
    base = {
        "data_dir": str(data),
        "results_dir": str(results),
        "pipeline.module": "helpers.survey_steps",
        "joint.enabled": False,
        "retries.backoff_s": 0.1,
        "cluster.kind": "slurm",
        "cluster.dashboard_address": "127.0.0.1:0",
        "cluster.slurm.scheduler_host": "127.0.0.1",
        "cluster.slurm.worker_extra_args": ["--host", "$XMM_NODE_ADDR"],
        "cluster.slurm.memory": "1GB",
        "cluster.slurm.walltime": "00:10:00",
        "cluster.slurm.minimum_jobs": 3,
        "cluster.slurm.maximum_jobs": 3,
        "cluster.slurm.job_extra_directives": ["--no-requeue"],
        "cluster.slurm.job_script_prologue": [
            f"export PYTHONPATH={TESTS}",
            f"export XMM_NODE_ADDR=$(awk -v n=\"$SLURMD_NODENAME\" '$1 == n {{print $2}}' {nodes_txt})",
        ],
    }
    base.update(more)
    return base


def _results_of(results: Path, ids):
    """ObsID -> step -> the record minus where/when it ran (what was computed, from which inputs)."""
    out = {}
    for obsid in ids:
        out[obsid] = {}
        for step in helpers.STEPS:
            rec = read_record(results / obsid, step)
            assert rec is not None, (obsid, step)
            summary = {k: v for k, v in (rec.get("summary") or {}).items() if k != "outputs"}
            out[obsid][step] = {
                "status": rec["status"],
                "summary": summary,
                "outputs": sorted((Path(o["path"]).name, o.get("size")) for o in rec.get("outputs", [])),
            }
    return out


def _catalogue(results: Path):
    catalog = pytest.importorskip("catalog")
    df = catalog.load(results / "catalogue.parquet")
    keep = [c for c in df.columns if c not in RUN_COLUMNS]
    return df[keep].sort_values(["obsid", *(["camera"] if "camera" in df else [])]).reset_index(drop=True)


def _assert_same_catalogue(results: Path, reference: Path, ids):
    import pandas.testing as pdt

    df, ref = _catalogue(results), _catalogue(reference)
    epic = df[df["camera"] == "epic"] if "camera" in df else df
    assert sorted(epic["obsid"]) == sorted(ids)  # every ObsID exactly once
    pdt.assert_frame_equal(df, ref)


def _nodes_used(results: Path, ids) -> dict[str, str]:
    return {f"{o}/{s}": read_record(results / o, s)["node"] for o in ids for s in helpers.STEPS}


@pytest.fixture(scope="module")
def reference(cluster3, data3, tmp_path_factory, request):
    """The survey without faults: workers on all three nodes."""
    data, ids = data3
    results = tmp_path_factory.mktemp("ref") / "results"
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", cluster3["conf"])
    request.addfinalizer(mp.undo)
    report = run_survey(load_config(None, _overrides(cluster3, data, results)), progress=False)
    assert report.ok and sorted(report.done) == ids, report.summary()
    return results


def test_workers_spread_over_three_nodes_with_logs_of_each(reference, data3):
    _data, ids = data3
    used = _nodes_used(reference, ids)
    assert set(used.values()) == set(NODES), used
    # each worker listened on its own node's address; its collected log says which node it was
    logs = sorted((reference / "logs" / "workers").glob("*.log"))
    by_node = {p.name.split("-tcp")[0]: p.read_text().splitlines()[0] for p in logs}
    assert set(by_node) == set(NODES), [p.name for p in logs]
    for node, head in by_node.items():
        assert f"tcp://{ADDR[node]}:" in head and f"on node {node}" in head, head
    job_logs = list((reference / "logs" / "slurm").glob("*.err"))
    assert len(job_logs) >= 3 and all("Starting Worker" in p.read_text() for p in job_logs[:3])
    assert "survey end: 9 done, 0 failed" in (reference / "logs" / "survey.log").read_text()


def test_node_killed_mid_survey_loses_nothing(cluster3, data3, reference, tmp_path, monkeypatch):
    _data, ids = data3
    monkeypatch.setenv("SLURM_CONF", cluster3["conf"])
    # the reference's events (same seeds), with slower steps so that the node dies holding work
    data = tmp_path / "data"
    helpers.make_survey(data, N_OBS, meta={o: {"work_s": 1.5} for o in ids})
    results = tmp_path / "results"
    cfg = load_config(None, _overrides(cluster3, data, results))
    env = cluster3["env"]
    handle = start_cluster(cfg, results_dir=results)
    killed: dict[str, object] = {}
    try:
        handle.client.wait_for_workers(3, timeout=120)
        workers = handle.client.scheduler_info()["workers"]
        victim = next(a for a in workers if a.startswith(f"tcp://{ADDR['xmm-n2']}:"))
        lock = threading.Lock()

        def on_outcome(outcome):
            with lock:
                if killed or outcome["status"] != "done":
                    return
                held = handle.client.processing(workers=[victim]).get(victim, [])
                if not held:
                    return  # wait until the victim holds work
                out = _run(["bash", str(SLURM / "local-cluster.sh"), "kill-node", "xmm-n2"], env, timeout=60)
                assert out.returncode == 0, out.stderr
                killed["out"] = out.stderr
                # what the node held and had not finished when it died: queued there (no record yet)
                # or running there (its record says "running" on xmm-n2)
                lost = {tuple(k.split("-")[:2]) for k in held}
                lost |= {
                    (s, o)
                    for o in ids
                    for s in helpers.STEPS
                    if (read_record(results / o, s) or {}).get("node") == "xmm-n2"
                }
                killed["tasks"] = sorted(
                    (s, o) for s, o in lost if (read_record(results / o, s) or {}).get("status") != "done"
                )

        report = run_survey(cfg, client=handle.client, progress=False, on_outcome=on_outcome)
        squeue = _run(["squeue", "-h", "-o", "%i %T %N"], env).stdout
    finally:
        handle.close()
        _run(["bash", str(SLURM / "local-cluster.sh"), "revive-node", "xmm-n2"], env, timeout=120)
    assert killed, "the victim node never held a task"
    assert report.ok and sorted(report.done) == ids, report.summary()
    # what the dead node held was computed on the others
    assert killed["tasks"], "the node had finished all it held when it was killed"
    for step, obsid in killed["tasks"]:
        rec = read_record(results / obsid, step)
        assert rec["status"] == "done" and rec["node"] != "xmm-n2", (step, obsid, rec["node"])
    assert _results_of(results, ids) == _results_of(reference, ids)
    _assert_same_catalogue(results, reference, ids)
    assert "xmm-n2" not in squeue.split() or "RUNNING" not in squeue, squeue


def test_worker_job_reaching_its_walltime(cluster3, reference, tmp_path, monkeypatch):
    """One worker job with a 1-minute limit and ~112 s of steps: SLURM ends it, the next job finishes.

    slurmctld checks time limits every 30 s (its fixed background period) and then waits KillWait (5 s), so a
    1-minute job ends 60-95 s after it starts: with 80 s of steps the single job sometimes finished them all."""
    monkeypatch.setenv("SLURM_CONF", cluster3["conf"])
    ids = helpers.make_survey(
        tmp_path / "data", 8, meta={f"{910000000 + i:010d}": {"work_s": 3.5} for i in range(8)}
    )
    results = tmp_path / "results"
    over = _overrides(
        cluster3,
        tmp_path / "data",
        results,
        **{
            "cluster.slurm.walltime": "00:01:00",
            "cluster.slurm.minimum_jobs": 1,
            "cluster.slurm.maximum_jobs": 1,
        },
    )
    report = run_survey(load_config(None, over), progress=False)
    assert report.ok and sorted(report.done) == ids, report.summary()
    jobs = {read_record(results / o, s)["slurm_job_id"] for o in ids for s in helpers.STEPS}
    assert len(jobs) >= 2, jobs  # the steps were computed by more than one worker job
    err = "".join(p.read_text() for p in (results / "logs" / "slurm").glob("*.err"))
    assert "DUE TO TIME LIMIT" in err, err[-2000:]
    # same events as the first 8 ObsIDs of the reference (same seeds): identical step results
    assert _results_of(results, ids) == _results_of(reference, ids)


def test_driver_restarted_while_jobs_queued(cluster3, data3, reference, tmp_path):
    data, ids = data3
    results = tmp_path / "results"
    over = _overrides(
        cluster3, data, results, **{"cluster.slurm.minimum_jobs": 4, "cluster.slurm.maximum_jobs": 4}
    )
    import yaml

    config = tmp_path / "survey.yaml"
    nested: dict = {}
    for key, value in over.items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config.write_text(yaml.safe_dump(nested))
    env = dict(cluster3["env"], PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    cmd = [sys.executable, "-m", "survey.cli", "run", "--config", str(config), "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    queued = ""
    try:
        while time.monotonic() < deadline:
            done = [o for o in ids if (read_record(results / o, "fit") or {}).get("status") == "done"]
            queued = _run(["squeue", "-h", "-t", "PENDING", "-o", "%i %j"], env).stdout
            if len(done) >= 2 and "dask-worker" in queued:
                break
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.3)
        assert "dask-worker" in queued, "no worker job was ever queued"
        first.send_signal(signal.SIGTERM)  # what scancel does to a driver job
        out1, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, out1
    assert "interrupted" in out1
    left = _run(["squeue", "-h", "-o", "%i %j %T"], env).stdout
    assert "dask-worker" not in left, left  # the cancelled driver took its worker jobs with it
    before = {o for o in ids if (read_record(results / o, "fit") or {}).get("status") == "done"}
    assert 2 <= len(before) < len(ids)
    second = _run(cmd, env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(before) * 4} reused" in second.stdout or "reused" in second.stdout, second.stdout
    assert _results_of(results, ids) == _results_of(reference, ids)
    _assert_same_catalogue(results, reference, ids)


def _submit_array(cluster3, data: Path, results: Path, ids, tmp_path: Path, *, requeue: str):
    """``slurm/submit-array.sh`` of the cheap steps on ``data`` (ObsID list and config in ``tmp_path``).

    Returns ``(env, submit-array's CompletedProcess)``; ``requeue`` is ``--requeue`` or ``--no-requeue``.
    """
    listing = tmp_path / "obsids.txt"
    listing.write_text("\n".join(ids) + "\n")
    config = tmp_path / "survey.yaml"
    config.write_text(
        f"data_dir: {data}\nresults_dir: {results}\npipeline:\n  module: helpers.survey_steps\n"
        "joint:\n  enabled: false\nretries:\n  backoff_s: 0.1\n"
    )
    env = dict(
        cluster3["env"],
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]),
        XMM_SURVEY=f"{sys.executable} -m survey.cli",
    )
    out = _run(
        ["bash", str(SLURM / "submit-array.sh"), str(config), str(listing), "--", requeue, "--mem=1G"],
        env,
        cwd=tmp_path,
        timeout=60,
    )
    return env, out


def test_job_array_mode_matches_dask_mode(cluster3, data3, reference, tmp_path):
    data, ids = data3
    results = tmp_path / "results"
    env, out = _submit_array(cluster3, data, results, ids, tmp_path, requeue="--no-requeue")
    assert out.returncode == 0, out.stderr
    cat_job = out.stdout.split("catalogue job")[1].strip()
    squeue = shutil.which("squeue")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _run([squeue, "-h", "-j", cat_job], env).stdout.strip():
        time.sleep(1)
    assert _results_of(results, ids) == _results_of(reference, ids)
    _assert_same_catalogue(results, reference, ids)
    used = set(_nodes_used(results, ids).values())
    assert len(used) >= 2 and used <= set(NODES), used
    for obsid in ids:  # each array task logged under results/logs/, naming its node
        text = (results / "logs" / "run-one" / f"{obsid}.log").read_text()
        assert f"run-one {obsid} on node xmm-n" in text
    assert json.loads((results / ids[0] / "steps" / "fit.json").read_text())["slurm_job_id"]


def _wait_gone(job: str, env, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _run(["squeue", "-h", "-j", job], env).stdout.strip():
        time.sleep(1)


def test_job_array_node_lost_requeued_tasks_complete(cluster3, data3, reference, tmp_path):
    """run-one per array task (``--requeue``); a node killed with a task mid-chain: SLURM requeues it on
    another node, the requeued task takes over the lock its earlier run left, the catalogue equals the
    fault-free Dask run's."""
    _data, ids = data3
    data = tmp_path / "data"
    helpers.make_survey(data, N_OBS, meta={o: {"work_s": 1.5} for o in ids})  # the reference's events, slower
    results = tmp_path / "results"
    env, out = _submit_array(cluster3, data, results, ids, tmp_path, requeue="--requeue")
    assert out.returncode == 0, out.stderr
    array_job = out.stdout.split()[2]
    cat_job = out.stdout.split("catalogue job")[1].strip()
    victim: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not victim:
            # a task running on xmm-n2 that holds its ObsID's lock and has finished a step (mid-chain)
            for line in _run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %K %N"], env).stdout.splitlines():
                job, index, node = line.split()
                if node != "xmm-n2" or not job.startswith(array_job):
                    continue
                obsid = ids[int(index) - 1]
                lock = results / obsid / ".lock"
                first = read_record(results / obsid, "filter") or {}
                if lock.exists() and first.get("status") == "done":
                    victim = {"job": job, "obsid": obsid, "lock": lock.read_text()}
                    break
            time.sleep(0.2)
        assert victim, "no array task ever ran mid-chain on xmm-n2"
        killed = _run(["bash", str(SLURM / "local-cluster.sh"), "kill-node", "xmm-n2"], env, timeout=60)
        assert killed.returncode == 0, killed.stderr
        _wait_gone(cat_job, env, 300)
    finally:
        _run(["bash", str(SLURM / "local-cluster.sh"), "revive-node", "xmm-n2"], env, timeout=120)
    held = json.loads(victim["lock"])
    assert held["node"] == "xmm-n2" and held["slurm_array_task_id"] == str(ids.index(victim["obsid"]) + 1)
    text = (results / "logs" / "run-one" / f"{victim['obsid']}.log").read_text()
    runs = [ln for ln in text.splitlines() if f"run-one {victim['obsid']} on node" in ln]
    assert len(runs) == 2 and "on node xmm-n2" in runs[0] and "on node xmm-n2" not in runs[1], text
    assert "took over the lock" in text and "(restart 0, this is restart 1: requeued)" in text, text
    assert not (results / victim["obsid"] / ".lock").exists()
    assert _results_of(results, ids) == _results_of(reference, ids)
    _assert_same_catalogue(results, reference, ids)  # every ObsID exactly once, as without the fault


def test_run_one_lock_judged_by_the_real_squeue(cluster3, tmp_path, monkeypatch):
    """A lock left on "another host" by a SLURM job: live while squeue shows the job RUNNING, taken over
    once it is CANCELLED, and when squeue no longer knows the job id."""
    from survey.lock import ResultsLockedError
    from survey.obsid_lock import holder_identity, obsid_lock, slurm_job_state

    env = cluster3["env"]
    monkeypatch.setenv("SLURM_CONF", cluster3["conf"])
    sub = _run(
        ["sbatch", "--parsable", "--mem=100M", "--no-requeue", "--wrap", "sleep 120"], env, cwd=tmp_path
    )
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and slurm_job_state(job) != "RUNNING":
            time.sleep(0.5)
        holder = dict(
            holder_identity("run-one of 0910000000", {"SLURM_JOB_ID": job}), host="node-b", node="b"
        )
        (tmp_path / ".lock").write_text(json.dumps(holder) + "\n")
        t = time.time() - 3600
        os.utime(tmp_path / ".lock", (t, t))  # an old heartbeat: squeue's RUNNING still decides
        with (
            pytest.raises(ResultsLockedError, match=f"SLURM job {job} is RUNNING"),
            obsid_lock(tmp_path, what="run-one", heartbeat_s=30, stale_after_s=900),
        ):
            pass
    finally:
        _run(["scancel", job], env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and slurm_job_state(job) in ("RUNNING", "COMPLETING"):
        time.sleep(0.5)
    notes: list[str] = []
    with obsid_lock(tmp_path, what="run-one", heartbeat_s=30, stale_after_s=900, on_takeover=notes.append):
        pass
    assert notes and f"SLURM job {job} of its holder is CANCELLED" in notes[0], notes
    assert slurm_job_state("987654") == "GONE"  # never existed here: squeue "Invalid job id", no accounting
