"""survey.steps, survey.graph and survey.joint without a cluster: inputs hashes, records, the driver-side plan."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from survey import graph, joint, steps
from xmmcore.errors import InputDataError, TransientError
from xmmcore.observation import Observation

CFG = {
    "cameras": ["pn"],
    "backend": {"reduction": "python"},
    "filter": {"pn": {"pi_min": 200}},
    "cluster": {"workers": 2},
}


def _obs(tmp_path: Path, obsid: str = "0000000001", **meta) -> Observation:
    root = tmp_path / "data" / obsid
    root.mkdir(parents=True, exist_ok=True)
    ev = root / "pn_evts.fits"
    ev.write_bytes(b"events")
    return Observation(obsid=obsid, root=root, event_files={"pn": ev}, meta=dict(meta))


def _pipeline(calls: list[str], *, fail: str | None = None, transient: int = 0) -> steps.Pipeline:
    left = {"n": transient}

    def make(name: str):
        def run(obs, outdir, cfg, *, log):
            calls.append(name)
            if name == fail:
                raise InputDataError(f"{name} cannot read its input", obs.root)
            if name == "b" and left["n"] > 0:
                left["n"] -= 1
                raise TransientError("file system hiccup")
            out = Path(outdir) / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(name)
            return {"outputs": [str(out)], "value": len(calls)}

        return run

    return steps.Pipeline.from_mapping({"a": make("a"), "b": make("b")})


def _tasks(tmp_path: Path, pipe: steps.Pipeline, obs: Observation, **kw) -> list[steps.StepTask]:
    return graph.make_tasks(
        obs.obsid,
        obs,
        None,
        pipeline=pipe,
        results_dir=str(tmp_path / "results"),
        cfg=dict(CFG),
        retries=kw.get("retries", 2),
        backoff_s=0.0,
        retry_failed=kw.get("retry_failed", False),
        versions={"xmm-survey": "test"},
        config_hash="c" * 64,
    )


def test_inputs_hash_follows_config_files_and_upstream(tmp_path: Path) -> None:
    obs = _obs(tmp_path, z=0.1)
    out = tmp_path / "results" / obs.obsid
    files = list(obs.event_files.values())
    h, inputs = steps.compute_inputs_hash("filter", obs, out, CFG, files)
    signature = [{k: e[k] for k in ("path", "size", "mtime_ns")} for e in inputs]
    assert len(h) == 64 and signature == [
        {"path": "pn_evts.fits", "size": 6, "mtime_ns": files[0].stat().st_mtime_ns}
    ]
    # a file the user provides is also hashed by content
    assert inputs[0]["sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert steps.compute_inputs_hash("filter", obs, out, CFG, files)[0] == h  # deterministic
    # orchestration keys never enter a step's hash; its own sections and the metadata do
    assert steps.compute_inputs_hash("filter", obs, out, {**CFG, "cluster": {"workers": 8}}, files)[0] == h
    changed = {**CFG, "filter": {"pn": {"pi_min": 300}}}
    assert steps.compute_inputs_hash("filter", obs, out, changed, files)[0] != h
    assert steps.compute_inputs_hash("filter", obs.with_meta(z=0.2), out, CFG, files)[0] != h
    assert steps.compute_inputs_hash("filter", obs, out, CFG, files, upstream_hash="x")[0] != h
    os.utime(files[0], ns=(1, 1))
    assert steps.compute_inputs_hash("filter", obs, out, CFG, files)[0] != h
    assert steps.step_config("filter", CFG) == {k: CFG.get(k) for k in steps.STEP_SECTIONS["filter"]}


def test_execute_records_then_plan_reuses_and_invalidates(tmp_path: Path) -> None:
    calls: list[str] = []
    pipe = _pipeline(calls)
    obs = _obs(tmp_path)
    tasks = _tasks(tmp_path, pipe, obs)
    plan = graph.plan_obsid(tasks)
    assert (
        [t.step for t in plan.tasks] == ["a", "b"] and plan.outcomes == {} and graph.chain_end(plan) is None
    )
    first = steps.execute_step(tasks[0])
    second = steps.execute_step(tasks[1], first)
    assert (first["status"], second["status"], calls) == ("done", "done", ["a", "b"])
    rec = steps.read_record(tasks[1].outdir, "b")
    assert rec["status"] == "done" and rec["inputs_hash"] == second["inputs_hash"]
    assert rec["outputs"] == [{"path": "b.txt", "size": 1}] and rec["summary"]["value"] == 2
    assert rec["config_hash"] == "c" * 64 and rec["attempts"] == 1
    # the driver settles the whole chain from the records: nothing to submit
    again = graph.plan_obsid(_tasks(tmp_path, pipe, obs))
    assert again.tasks == [] and [o["status"] for o in again.outcomes.values()] == ["cached", "cached"]
    assert graph.chain_end(again)["step"] == "b"
    # a damaged output reruns its step and what follows
    (tasks[0].outdir / "a.txt").write_text("changed size")
    plan = graph.plan_obsid(_tasks(tmp_path, pipe, obs))
    assert [t.step for t in plan.tasks] == ["a", "b"]
    steps.invalidate_after(tasks[0].outdir, pipe.steps, "a")
    assert (
        steps.read_record(tasks[0].outdir, "b") is None
        and steps.read_record(tasks[0].outdir, "a") is not None
    )
    assert graph.task_key("fit", "0000000001", "abc") == "fit-0000000001-abc"


def test_deterministic_failure_is_reported_not_rerun_and_transient_is_retried(tmp_path: Path) -> None:
    calls: list[str] = []
    obs = _obs(tmp_path)
    tasks = _tasks(tmp_path, _pipeline(calls, fail="a"), obs)
    out = steps.execute_step(tasks[0])
    assert (
        out["status"] == "failed" and out["exception"] == "InputDataError" and "cannot read" in out["reason"]
    )
    assert steps.execute_step(tasks[1], out)["status"] == "blocked"
    plan = graph.plan_obsid(_tasks(tmp_path, _pipeline(calls, fail="a"), obs))
    assert plan.tasks == [] and plan.outcomes["a"]["status"] == "failed" and calls == ["a"]
    retry = graph.plan_obsid(_tasks(tmp_path, _pipeline(calls, fail="a"), obs, retry_failed=True))
    assert [t.step for t in retry.tasks] == ["a", "b"]
    # a TransientError is retried (twice here) and the record counts the attempts
    calls2: list[str] = []
    t2 = _tasks(tmp_path / "other", _pipeline(calls2, transient=2), _obs(tmp_path / "other"))
    up = steps.execute_step(t2[0])
    res = steps.execute_step(t2[1], up)
    assert res["status"] == "done" and res["attempts"] == 3 and calls2 == ["a", "b", "b", "b"]


def test_joint_groups_slug_and_driver_side_check(tmp_path: Path) -> None:
    obs = {o: _obs(tmp_path, o, name=n) for o, n in (("01", "Abell 2029"), ("02", "Abell 2029"), ("03", "X"))}
    assert joint.joint_groups(obs) == {"Abell 2029": ["01", "02"]}
    assert joint.joint_slug("Abell 2029") == "Abell_2029" and joint.joint_slug("../") == "target"
    cfg = {
        "cameras": ["pn"],
        "backend": {"fitting": "builtin"},
        "fit": {"stat": "cstat", "notice_kev": [0.5, 7.0]},
        "joint": {"stack": False},
    }
    results = tmp_path / "results"
    (task,) = joint.make_joint_tasks(
        obs, ["01", "02", "03"], results_dir=str(results), cfg=cfg, versions={}, config_hash="h"
    )
    assert (task.target, task.slug, task.obsids) == ("Abell 2029", "Abell_2029", ("01", "02"))
    done = {"status": "done"}
    # fewer than two finished ObsIDs: skipped, nothing recorded
    skipped = joint.plan_joint(task, [done, {"status": "blocked"}])
    assert skipped["status"] == "skipped" and not task.outdir.exists()
    assert joint.plan_joint(task, [done, done]) is None  # no record yet: must run
    # a done record with the same hash and intact outputs is reused on the driver
    for o in ("01", "02"):
        (results / o / "spectra").mkdir(parents=True)
        (results / o / "spectra" / "pn_src.pha").write_bytes(b"spectrum " + o.encode())
    h, inputs = joint.joint_inputs_hash(task, ["01", "02"])
    assert [i["path"] for i in inputs] == ["01/spectra/pn_src.pha", "02/spectra/pn_src.pha"]
    product = results / "joint" / "Abell_2029.json"
    product.parent.mkdir(parents=True)
    product.write_text(json.dumps({"name": "Abell_2029"}))
    steps.write_record(
        task.outdir,
        "joint",
        {
            "status": "done",
            "inputs_hash": h,
            "outputs": [{"path": "joint/Abell_2029.json", "size": product.stat().st_size}],
        },
    )
    cached = joint.plan_joint(task, [done, done])
    assert cached["status"] == "cached" and cached["obsids"] == ["01", "02"]
    # a new spectrum changes the hash: the joint fit runs again
    (results / "02" / "spectra" / "pn_src.pha").write_bytes(b"another spectrum")
    assert joint.plan_joint(task, [done, done]) is None
    # a deterministic failure on the same inputs is reported, not rerun
    h2, _ = joint.joint_inputs_hash(task, ["01", "02"])
    steps.write_record(
        task.outdir, "joint", {"status": "failed", "inputs_hash": h2, "exception": "FitError", "reason": "no"}
    )
    failed = joint.plan_joint(task, [done, done])
    assert failed["status"] == "failed" and failed["exception"] == "FitError"
    # an ObsID that was not discovered is in no group
    (again,) = joint.make_joint_tasks(
        obs, ["01", "02", "04"], results_dir=str(results), cfg=cfg, versions={}, config_hash=""
    )
    assert again.obsids == ("01", "02")
