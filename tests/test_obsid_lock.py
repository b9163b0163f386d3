"""The run-one lock of one ObsID judged across hosts and SLURM requeues (survey/obsid_lock.py).

The SLURM job states come from a function given to the lock (``job_state``); here a dict stands in for
``squeue``. tests/test_slurm_multinode.py asks the real ``squeue`` of a 3-node SLURM.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import survey_steps as helpers

from survey.config import load_config
from survey.lock import LOCK_NAME, ResultsLockedError
from survey.obsid_lock import holder_identity, obsid_lock, slurm_job_state, stale_reason
from xmmcore.errors import ConfigError

HOST = socket.gethostname()


def _env(job="4242", restart="0", node="xmm-n1", task="3"):
    return {
        "SLURMD_NODENAME": node,
        "SLURM_JOB_ID": job,
        "SLURM_ARRAY_JOB_ID": "4239",
        "SLURM_ARRAY_TASK_ID": task,
        "SLURM_RESTART_COUNT": restart,
    }


def _write_lock(folder, holder, *, age_s=0.0):
    path = folder / LOCK_NAME
    path.write_text(json.dumps(holder) + "\n")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _take(folder, *, env, states=None, stale_s=900.0, beat_s=30.0):
    notes: list[str] = []
    states = states or {}
    with obsid_lock(
        folder,
        what="run-one of 0910000000",
        heartbeat_s=beat_s,
        stale_after_s=stale_s,
        job_state=states.get,
        on_takeover=notes.append,
        environ=env,
    ) as path:
        mine = json.loads(path.read_text())
    assert not (folder / LOCK_NAME).exists()  # released
    return mine, notes


def test_lock_records_the_slurm_task_and_node(tmp_path):
    mine, notes = _take(tmp_path, env=_env())
    assert notes == []
    assert mine["host"] == HOST and mine["node"] == "xmm-n1" and mine["pid"] == os.getpid()
    assert (mine["slurm_job_id"], mine["slurm_array_job_id"], mine["slurm_array_task_id"]) == (
        "4242",
        "4239",
        "3",
    )
    assert mine["slurm_restart_count"] == "0"
    assert holder_identity("x", {})["node"] == HOST  # outside SLURM the node is the host


def test_requeued_task_takes_over_the_lock_of_its_earlier_run_on_a_dead_node(tmp_path):
    # the earlier run of job 4242 ran on xmm-n2 (its pid cannot be checked from xmm-n1: here it is even alive)
    earlier = holder_identity("run-one of 0910000000", _env(node="xmm-n2", restart="0"))
    _write_lock(tmp_path, earlier)
    mine, notes = _take(tmp_path, env=_env(node="xmm-n1", restart="1"))
    assert mine["slurm_restart_count"] == "1" and mine["node"] == "xmm-n1"
    assert len(notes) == 1 and "earlier run of this SLURM job 4242" in notes[0] and "requeued" in notes[0]
    assert "node xmm-n2" in notes[0]


def test_lock_of_another_node_blocks_while_its_job_runs(tmp_path):
    other = holder_identity("run-one of 0910000000", _env(job="5000", node="xmm-n2"))
    other["host"] = "node-b.cluster"
    _write_lock(tmp_path, other, age_s=5000)  # an old heartbeat does not matter while SLURM says RUNNING
    with pytest.raises(ResultsLockedError) as info:
        _take(tmp_path, env=_env(), states={"5000": "RUNNING"})
    text = str(info.value)
    assert "host node-b.cluster node xmm-n2" in text and "SLURM job 5000 (array task 3)" in text
    assert "SLURM job 5000 is RUNNING" in text and str(tmp_path / LOCK_NAME) in text
    assert (tmp_path / LOCK_NAME).exists()  # left alone


@pytest.mark.parametrize("state", ["PENDING", "NODE_FAIL", "COMPLETED", "CANCELLED", "GONE"])
def test_lock_of_a_job_slurm_no_longer_runs_is_taken_over(tmp_path, state):
    other = holder_identity("run-one of 0910000000", _env(job="5000", node="xmm-n2"))
    other["host"] = "node-b.cluster"
    _write_lock(tmp_path, other)  # fresh heartbeat: SLURM's word decides
    _mine, notes = _take(tmp_path, env=_env(), states={"5000": state})
    assert len(notes) == 1 and f"SLURM job 5000 of its holder is {state}" in notes[0]


def test_heartbeat_bound_when_slurm_cannot_tell(tmp_path):
    other = {"host": "laptop", "node": "laptop", "pid": 1, "started": "x", "what": "run-one of 0910000000"}
    _write_lock(tmp_path, other, age_s=60)
    with pytest.raises(ResultsLockedError, match="heartbeat is 6[0-9] s old .*SLURM cannot tell"):
        _take(tmp_path, env=_env(), stale_s=900)
    # a SLURM job SLURM cannot be asked about (state None) with a fresh heartbeat: live too
    _write_lock(tmp_path, dict(other, slurm_job_id="77"), age_s=60)
    with pytest.raises(ResultsLockedError):
        _take(tmp_path, env=_env(), states={}, stale_s=900)
    _write_lock(tmp_path, dict(other, slurm_job_id="77"), age_s=1000)
    _mine, notes = _take(tmp_path, env=_env(), stale_s=900)
    assert re.search(r"heartbeat is 1\d{3} s old", notes[0]), notes


def test_same_node_dead_pid_is_stale_live_pid_is_not(tmp_path):
    mine_env = _env(job="6000")
    holder = holder_identity("run-one of 0910000000", _env(job="5999"))
    _write_lock(tmp_path, dict(holder, pid=_dead_pid()))
    _mine, notes = _take(tmp_path, env=mine_env, states={"5999": "RUNNING"})
    assert "is gone" in notes[0]
    _write_lock(tmp_path, dict(holder, pid=os.getpid()))
    with pytest.raises(ResultsLockedError, match="runs on this node"):
        _take(tmp_path, env=mine_env, states={"5999": "PENDING"})


def test_torn_lock_waits_a_minute(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"host": ')
    with pytest.raises(ResultsLockedError, match="unreadable lock only"):
        _take(tmp_path, env=_env())
    t = time.time() - 120
    os.utime(tmp_path / LOCK_NAME, (t, t))
    _mine, notes = _take(tmp_path, env=_env())
    assert "unreadable lock 12" in notes[0]


def test_heartbeat_refreshes_own_lock_and_never_touches_another(tmp_path):
    with obsid_lock(tmp_path, what="x", heartbeat_s=0.05, stale_after_s=1.0, environ=_env()) as path:
        t = time.time() - 500
        os.utime(path, (t, t))
        time.sleep(0.4)
        assert time.time() - path.stat().st_mtime < 5
        # someone judged us stale and took the lock: our heartbeat stops touching it
        path.write_text(json.dumps({"host": "b", "pid": 1}) + "\n")
        os.utime(path, (t, t))
        time.sleep(0.3)
        assert abs(path.stat().st_mtime - t) < 1
    assert path.exists()  # not ours: not removed on release


def test_stale_reason_when_file_vanished(tmp_path):
    reason, _ = stale_reason({"host": "x"}, tmp_path / LOCK_NAME, {}, stale_after_s=10)
    assert reason == "the lock file is gone"


def test_slurm_job_state_without_squeue(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert slurm_job_state("123") is None


def test_run_one_lock_settings_checked(tmp_path):
    base = {"results_dir": str(tmp_path)}
    cfg = load_config(None, base)
    assert cfg["cluster"]["run_one"] == {"lock_heartbeat_s": 30.0, "lock_stale_s": 900.0}
    with pytest.raises(ConfigError, match=r"cluster.run_one.lock_stale_s \(60.0\) must be at least 3 x"):
        load_config(None, {**base, "cluster.run_one.lock_stale_s": 60.0})
    with pytest.raises(ConfigError, match="cluster.run_one.lock_heartbeat_s must be > 0"):
        load_config(None, {**base, "cluster.run_one.lock_heartbeat_s": 0.0})


def test_run_one_takes_over_the_lock_of_its_requeued_earlier_run(tmp_path, monkeypatch):
    from survey.api import run_one

    ids = helpers.make_survey(tmp_path / "data", 1)
    results = tmp_path / "results"
    (results / ids[0]).mkdir(parents=True)
    _write_lock(results / ids[0], holder_identity(f"run-one of {ids[0]}", _env(node="xmm-n2", restart="0")))
    for key, value in _env(node="xmm-n3", restart="1").items():
        monkeypatch.setenv(key, value)
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(results),
            "pipeline.module": "helpers.survey_steps",
        },
    )
    outcomes = run_one(cfg, ids[0])
    assert [o["status"] for o in outcomes.values()] == ["done"] * len(helpers.STEPS)
    text = (results / "logs" / "run-one" / f"{ids[0]}.log").read_text()
    assert "took over the lock" in text and "earlier run of this SLURM job 4242" in text
    assert not (results / ids[0] / LOCK_NAME).exists()
