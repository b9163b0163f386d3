"""The ``joint`` step: a joint fit of every target seen in several ObsIDs, run by the survey graph.

A target (``meta["name"]`` of its observations: ``meta.json`` or the targets CSV) observed in two or more ObsIDs
gets one joint task. It is submitted to the same Dask graph as the per-ObsID chains and depends on the last step
of each of its ObsIDs; it fits (``xmmcore.fitting.joint.run_joint``) the ObsIDs whose chain finished.

It is checkpointed like every other step, with the same record layout (``survey.steps``):

* record ``results/joint/<target>/steps/joint.json`` (status ``running`` / ``done`` / ``failed``, reason,
  exception, inputs hash, config hash, versions, code identity, timings, outputs), log
  ``results/joint/<target>/logs/joint.log``;
* products ``results/joint/<target>.json`` (+ ``<target>_stack/`` with ``joint.stack``), listed in the record's
  ``outputs`` with paths relative to ``results/``;
* inputs hash: the ``joint`` configuration sections, the target metadata, the ObsIDs fitted, the signatures of
  their spectra and responses (``results/<obsid>/spectra/``) and the software versions. A rerun reuses a ``done``
  record with the same hash, made by the same code (``code``, as the step records) and whose outputs are
  intact, reports a deterministic failure on the same inputs without rerunning it (unless ``retry --failed``),
  and reruns anything else (e.g. a record left ``running`` by a killed driver).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xmmcore.products import SurveyLayout
from xmmcore.provenance import code_matches

from .logs import step_logger
from .steps import RECORD_SCHEMA, read_record, write_record

__all__ = [
    "JOINT_SECTIONS",
    "JOINT_STEP",
    "JointPlan",
    "JointTask",
    "check_joint",
    "execute_joint",
    "joint_groups",
    "joint_outdir",
    "joint_slug",
    "make_joint_tasks",
    "plan_joint",
]

JOINT_STEP = "joint"
#: Configuration sections the joint step depends on (the fit's, plus ``joint``).
JOINT_SECTIONS = ("cameras", "backend", "xspec", "fit", "cosmology", "joint")
_SPECTRA = ("_src.pha", "_bkg.pha", ".rmf", ".arf")


def joint_slug(target: str) -> str:
    """File-system name of a target (``"Abell 2029"`` -> ``"Abell_2029"``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", target).strip("_.") or "target"


def joint_outdir(results_dir: str | os.PathLike[str], slug: str) -> Path:
    """``results/joint/<slug>/`` (holds ``steps/joint.json`` and ``logs/joint.log``)."""
    return SurveyLayout(results_dir).joint_outdir(slug)


def joint_groups(
    observations: Mapping[str, Any], obsids: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Target name -> its ObsIDs, for every target (``meta["name"]``) with >= 2 discovered ObsIDs."""
    groups: dict[str, list[str]] = {}
    for obsid in obsids if obsids is not None else list(observations):
        obs = observations.get(obsid)
        name = (obs.meta.get("name") if obs is not None else None) or None
        if name:
            groups.setdefault(str(name), []).append(obsid)
    return {name: sorted(ids) for name, ids in groups.items() if len(ids) >= 2}


@dataclass(frozen=True)
class JointTask:
    """Everything a worker needs to run (or skip) the joint fit of one target."""

    target: str
    slug: str
    obsids: tuple[str, ...]
    results_dir: str
    cfg: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""
    retry_failed: bool = False
    code: dict[str, Any] = field(default_factory=dict)
    reuse_across_code: bool = False

    @property
    def outdir(self) -> Path:
        return joint_outdir(self.results_dir, self.slug)


@dataclass
class JointPlan:
    """A joint task and, once known, its outcome (settled on the driver when nothing upstream runs)."""

    task: JointTask
    outcome: dict[str, Any] | None = None


def make_joint_tasks(
    observations: Mapping[str, Any],
    obsids: Sequence[str],
    *,
    results_dir: str,
    cfg: dict[str, Any],
    versions: Mapping[str, str],
    config_hash: str,
    retry_failed: bool = False,
    code: Mapping[str, Any] | None = None,
    reuse_across_code: bool = False,
) -> list[JointTask]:
    """One :class:`JointTask` per target seen in several of ``obsids``."""
    tasks = []
    for target, ids in sorted(joint_groups(observations, obsids).items()):
        first = observations[ids[0]]
        tasks.append(
            JointTask(
                target=target,
                slug=joint_slug(target),
                obsids=tuple(ids),
                results_dir=results_dir,
                cfg=cfg,
                meta=dict(first.meta),
                versions=dict(versions),
                config_hash=config_hash,
                retry_failed=retry_failed,
                code=dict(code or {}),
                reuse_across_code=reuse_across_code,
            )
        )
    return tasks


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "engine": cfg["backend"]["fitting"],
        "cameras": list(cfg["cameras"]),
        "stat": cfg["fit"]["stat"],
        "notice_kev": tuple(cfg["fit"]["notice_kev"]),
        "stack": bool(cfg["joint"]["stack"]),
        "auto_set": bool(cfg["fit"].get("auto_set", True)),
    }


def _signature(path: Path, root: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path.relative_to(root)), "size": None, "mtime_ns": None}
    return {"path": str(path.relative_to(root)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def joint_inputs_hash(task: JointTask, obsids: Sequence[str]) -> tuple[str, list[dict[str, Any]]]:
    """sha256 of (joint config sections, target metadata, ObsIDs, spectra/response signatures, versions)."""
    root = Path(task.results_dir)
    files = [
        root / o / "spectra" / f"{cam}{suffix}"
        for o in obsids
        for cam in task.cfg.get("cameras") or ()
        for suffix in _SPECTRA
    ]
    inputs = [_signature(p, root) for p in files if p.exists()]
    payload = {
        "step": JOINT_STEP,
        "target": task.target,
        "obsids": list(obsids),
        "config": {k: task.cfg.get(k) for k in JOINT_SECTIONS},
        "meta": task.meta,
        "inputs": inputs,
        "versions": task.versions,
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), inputs


def _outputs_present(root: Path, record: Mapping[str, Any]) -> bool:
    for out in record.get("outputs") or []:
        try:
            if (root / out["path"]).stat().st_size != out["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _finished(upstream: Sequence[Mapping[str, Any] | None], obsids: Sequence[str]) -> list[str]:
    """ObsIDs whose chain ended done (its last step done or reused)."""
    return [o for o, up in zip(obsids, upstream) if up is not None and up.get("status") in ("done", "cached")]


def check_joint(
    task: JointTask, obsids: Sequence[str]
) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    """``("cached" | "failed" | "run", inputs_hash, inputs, record)``, as :func:`survey.steps.check_step`."""
    h, inputs = joint_inputs_hash(task, obsids)
    record = read_record(task.outdir, JOINT_STEP)
    same_code = record is not None and code_matches(
        record, task.code, reuse_across_code=task.reuse_across_code
    )
    if record is not None and record.get("inputs_hash") == h and same_code:
        if record.get("status") == "done" and _outputs_present(Path(task.results_dir), record):
            return "cached", h, inputs, record
        if (
            record.get("status") == "failed"
            and not task.retry_failed
            and record.get("exception") not in (None, "TransientError", "KilledWorker")
        ):
            return "failed", h, inputs, record
    return "run", h, inputs, record or {}


def _outcome(task: JointTask, status: str, obsids: Sequence[str], **kw: Any) -> dict[str, Any]:
    out = {
        "obsid": task.slug,
        "target": task.target,
        "step": JOINT_STEP,
        "obsids": list(obsids),
        "status": status,
        "inputs_hash": "",
        "wall_s": 0.0,
        "reason": "",
        "exception": None,
        "attempts": 0,
        "failed_step": JOINT_STEP if status == "failed" else None,
    }
    out.update(kw)
    return out


def plan_joint(task: JointTask, upstream: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """On the driver, when every ObsID of the target is settled: the outcome if the joint step needs no run."""
    used = _finished(upstream, task.obsids)
    if len(used) < 2:
        return _outcome(task, "skipped", used, reason=f"fewer than 2 ObsIDs of {task.target} finished")
    state, h, _inputs, record = check_joint(task, used)
    return _settled(task, used, state, h, record, reused=True)


def _settled(
    task: JointTask, used: list[str], state: str, h: str, record: Mapping[str, Any], **extra: Any
) -> dict[str, Any] | None:
    """The outcome of a joint step whose record settles it (``cached`` or a deterministic ``failed``)."""
    if state not in ("cached", "failed"):
        return None
    if state == "cached":
        return _outcome(task, "cached", used, inputs_hash=h, wall_s=float(record.get("wall_s", 0.0)), **extra)
    return _outcome(
        task,
        "failed",
        used,
        inputs_hash=h,
        reason=str(record.get("reason", "")),
        exception=record.get("exception"),
        attempts=int(record.get("attempts", 0)),
        **extra,
    )


def execute_joint(task: JointTask, *upstream: Mapping[str, Any] | None) -> dict[str, Any]:
    """Run the joint fit of one target (or skip it), write its step record, and return an outcome dict.

    ``upstream`` holds the outcome of the last step of each ObsID of ``task.obsids`` (in order). Never raises
    for a failure of the fit itself: it is recorded (``failed``, reason, exception class) and reported.
    """
    from xmmcore.errors import InputDataError

    used = _finished(upstream, task.obsids)
    if len(used) < 2:
        return _outcome(task, "skipped", used, reason=f"fewer than 2 ObsIDs of {task.target} finished")
    state, h, inputs, record = check_joint(task, used)
    settled = _settled(task, used, state, h, record)
    if settled is not None:
        return settled
    from .config import config_hash

    base = {
        "schema": RECORD_SCHEMA,
        "obsid": task.slug,
        "target": task.target,
        "step": JOINT_STEP,
        "obsids": list(used),
        "meta": task.meta,
        "inputs_hash": h,
        "inputs": inputs,
        "versions": task.versions,
        "code": task.code,
        "config": {k: task.cfg.get(k) for k in JOINT_SECTIONS},
        "config_hash": task.config_hash or config_hash(task.cfg),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    started = _now()
    write_record(task.outdir, JOINT_STEP, {**base, "status": "running", "started": started})
    t0 = time.perf_counter()
    status, reason, exc_name, tb = "failed", "", None, ""
    out: dict[str, Any] = {}
    with step_logger(task.results_dir, f"joint/{task.slug}", JOINT_STEP) as log:
        log.info("joint fit of %s: ObsIDs %s (inputs hash %s)", task.target, ", ".join(used), h[:12])
        try:
            from xmmcore.fitting.joint import run_joint

            out = run_joint(
                task.results_dir, target=task.slug, obsids=used, meta=task.meta, **_options(task.cfg)
            )
            if out.get("missing"):
                raise InputDataError("missing inputs: " + "; ".join(map(str, out["missing"])))
            status = "done"
        except Exception as exc:  # noqa: BLE001 - recorded with its class; the per-ObsID rows stand
            reason, exc_name, tb = str(exc), type(exc).__name__, traceback.format_exc()
            log.error("joint fit failed (%s): %s", exc_name, exc)
            log.debug("%s", tb)
        wall = time.perf_counter() - t0
        log.info("joint fit of %s: %s in %.3f s", task.target, status, wall)
    root = Path(task.results_dir)
    rec: dict[str, Any] = {**base, "status": status, "started": started, "finished": _now(), "wall_s": wall}
    rec["attempts"] = 1
    if status == "done":
        products = [Path(out["path"])]
        stack_dir = SurveyLayout(root).joint_stack_dir(task.slug)
        if out.get("stack") and stack_dir.is_dir():
            products += sorted(p for p in stack_dir.iterdir() if p.is_file())
        rec["outputs"] = [
            {"path": str(p.relative_to(root)), "size": p.stat().st_size} for p in products if p.exists()
        ]
        rec["summary"] = {
            "n_datasets": len(out.get("inputs") or []),
            "left_out": list(out.get("left_out") or []),
            "notes": list(out.get("notes") or []),
        }
    else:
        rec.update(reason=reason, exception=exc_name, error_class=exc_name, traceback=tb[-4000:], outputs=[])
    write_record(task.outdir, JOINT_STEP, rec)
    return _outcome(
        task, status, used, inputs_hash=h, wall_s=wall, reason=reason, exception=exc_name, attempts=1
    )
