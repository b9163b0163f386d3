"""The work graph: one chain of step tasks per ObsID on Dask, then the catalogue.

Task keys are stable and readable, ``<step>-<obsid>-<run token>`` (the dashboard groups them by
step); every task asks for one worker ``slots`` resource and later steps have higher priority, so
an ObsID that has started is finished before new ones begin (partial results are whole ObsIDs).

The driver first checks the records: the finished prefix of each chain is not submitted at all, an
ObsID whose failure was recorded on the same inputs is reported without running, and only the rest
goes to the cluster. A no-op resume therefore starts no cluster.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmmcore.fsutil import atomic_write_json
from xmmcore.products import SurveyLayout

from .cluster import SLOT_RESOURCE
from .joint import JOINT_STEP, JointPlan, execute_joint
from .steps import (
    INPUTS_ERROR_NAME,
    Pipeline,
    StepTask,
    check_step,
    execute_step,
    failed_record,
    record_path,
)

__all__ = [
    "ObsPlan",
    "build_catalogue",
    "catalogue_is_current",
    "plan_obsid",
    "run_graph",
    "chain_end",
    "task_key",
]


@dataclass
class ObsPlan:
    """What is left to do for one ObsID.

    Attributes
    ----------
    obsid : str
    tasks : list of StepTask
        Steps to submit, in order (empty when nothing is left).
    upstream : dict or None
        Outcome of the last finished step before ``tasks[0]`` (its inputs hash feeds the next one).
    outcomes : dict
        Step -> outcome dict for the steps settled on the driver (cached, or failed before).
    """

    obsid: str
    tasks: list[StepTask] = field(default_factory=list)
    upstream: dict[str, Any] | None = None
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)


def task_key(step: str, obsid: str, token: str) -> str:
    """Stable, readable Dask key of one step of one ObsID in one run."""
    return f"{step}-{obsid}-{token}"


def plan_obsid(tasks: Sequence[StepTask]) -> ObsPlan:
    """Check the records of one ObsID's chain on the driver and return what must still run."""
    plan = ObsPlan(obsid=tasks[0].obsid)
    if tasks[0].obs is None:
        plan.tasks = list(tasks)
        return plan
    # The inputs are readable (again): a note that they were not, left by an earlier run, is stale.
    with contextlib.suppress(OSError):
        (tasks[0].outdir / INPUTS_ERROR_NAME).unlink(missing_ok=True)
    upstream_hash = ""
    for i, task in enumerate(tasks):
        state, h, _inputs, record = check_step(task, upstream_hash, plan=True)
        if state == "cached":
            plan.outcomes[task.step] = {
                "obsid": task.obsid,
                "step": task.step,
                "status": "cached",
                "inputs_hash": h,
                "wall_s": float(record.get("wall_s", 0.0)),
                "reason": "",
                "exception": None,
                "attempts": 0,
                "failed_step": None,
                "reused": True,
            }
            upstream_hash = h
            continue
        if state == "failed":
            plan.outcomes[task.step] = {
                "obsid": task.obsid,
                "step": task.step,
                "status": "failed",
                "inputs_hash": h,
                "wall_s": float(record.get("wall_s", 0.0)),
                "reason": record.get("reason", ""),
                "exception": record.get("exception"),
                "attempts": int(record.get("attempts", 0)),
                "failed_step": task.step,
                "reused": True,
            }
            return plan
        plan.tasks = list(tasks[i:])
        plan.upstream = {"status": "cached", "inputs_hash": upstream_hash} if i else None
        return plan
    return plan


def _record_lost(task: StepTask, exc: BaseException) -> dict[str, Any]:
    """Record a step whose task never returned (its worker died too often: KilledWorker)."""
    name = type(exc).__name__
    reason = f"task lost: {exc}"
    with contextlib.suppress(OSError):  # a full disk must not cost the driver: the outcome still says why
        atomic_write_json(
            record_path(task.outdir, task.step),
            failed_record(task, reason, name, outputs=[]),
        )
    return {
        "obsid": task.obsid,
        "step": task.step,
        "status": "failed",
        "inputs_hash": "",
        "wall_s": 0.0,
        "reason": reason,
        "exception": name,
        "attempts": 0,
        "failed_step": task.step,
    }


def run_graph(
    client: Any,
    plans: Sequence[ObsPlan],
    *,
    use_resources: bool = True,
    progress: bool = True,
    log: logging.Logger | None = None,
    on_outcome: Callable[[dict[str, Any]], None] | None = None,
    joint: Sequence[JointPlan] = (),
) -> dict[str, dict[str, dict[str, Any]]]:
    """Submit the chains of ``plans`` and the joint steps of ``joint`` to ``client`` and wait for all of them.

    Every outcome is logged (and passed to ``on_outcome``) as soon as its task finishes; the step
    records themselves are written by the workers at the end of each step. A joint task depends on the
    last task of each of its ObsIDs' chains (or on their outcome settled on the driver); its outcome is
    stored in its :class:`~survey.joint.JointPlan` (not in the returned dict, which is per ObsID).

    Returns
    -------
    dict
        ObsID -> step -> outcome (including the steps settled on the driver).
    """
    from distributed import as_completed

    log = log or logging.getLogger("survey.run")
    token = secrets.token_hex(3)
    results: dict[str, dict[str, dict[str, Any]]] = {p.obsid: dict(p.outcomes) for p in plans}
    futures: dict[Any, StepTask] = {}
    last: dict[str, Any] = {}
    resources = {SLOT_RESOURCE: 1} if use_resources else None
    for plan in plans:
        prev: Any = plan.upstream
        for task in plan.tasks:
            index = task.pipeline.steps.index(task.step)
            fut = client.submit(
                execute_step,
                task,
                prev,
                key=task_key(task.step, task.obsid, token),
                priority=index,
                resources=resources,
                retries=0,
                pure=False,
            )
            futures[fut] = task
            prev = fut
        last[plan.obsid] = prev if plan.tasks else chain_end(plan)
    joint_futures: dict[Any, JointPlan] = {}
    for jp in joint:
        if jp.outcome is not None:
            continue
        deps = [last.get(o) for o in jp.task.obsids]
        fut = client.submit(
            execute_joint,
            jp.task,
            *deps,
            key=task_key(JOINT_STEP, jp.task.slug, token),
            priority=100,  # after every ObsID step: finish the ObsIDs first
            resources=resources,
            retries=0,
            pure=False,
        )
        joint_futures[fut] = jp
    total = len(futures) + len(joint_futures)
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="step", desc="survey", dynamic_ncols=True)
    counts = {"done": 0, "failed": 0, "cached": 0, "blocked": 0}
    try:
        for fut in as_completed(list(futures) + list(joint_futures)):
            if fut in joint_futures:
                jp = joint_futures.pop(fut)
                try:
                    jp.outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost joint task fails that target only
                    jp.outcome = {
                        "obsid": jp.task.slug,
                        "target": jp.task.target,
                        "step": JOINT_STEP,
                        "status": "failed",
                        "reason": f"task lost: {exc}",
                        "exception": type(exc).__name__,
                        "wall_s": 0.0,
                    }
                fut.release()
                _log_joint(log, jp)
                if bar is not None:
                    bar.update(1)
                continue
            # Forget each finished future at once: a future held to the end of the survey keeps its
            # result and task state on the scheduler and a worker, which grew with every ObsID
            # (the scheduler still keeps a result until the steps that need it have run).
            task = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost task (KilledWorker) fails its ObsID only
                upstream_failed = any(o.get("status") == "failed" for o in results[task.obsid].values())
                if upstream_failed:
                    outcome = {
                        "obsid": task.obsid,
                        "step": task.step,
                        "status": "blocked",
                        "reason": str(exc),
                        "exception": type(exc).__name__,
                        "wall_s": 0.0,
                        "failed_step": None,
                    }
                else:
                    outcome = _record_lost(task, exc)
            fut.release()
            results[task.obsid][task.step] = outcome
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
            if outcome["status"] == "failed":
                log.warning(
                    "%s %s failed (%s): %s",
                    task.obsid,
                    task.step,
                    outcome.get("exception"),
                    outcome.get("reason"),
                )
            else:
                log.info(
                    "%s %s %s (%.2f s)", task.obsid, task.step, outcome["status"], outcome.get("wall_s", 0.0)
                )
            if on_outcome is not None:
                on_outcome(outcome)
            if bar is not None:
                bar.set_postfix(
                    done=counts["done"], cached=counts["cached"], failed=counts["failed"], refresh=False
                )
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for fut in list(futures) + list(
            joint_futures
        ):  # those not finished (an error or an interrupt ended the loop)
            fut.release()
    return results


def catalogue_paths(results_dir: str | Path) -> list[Path]:
    """``results/catalogue.parquet`` and ``results/catalogue.fits`` (names from :mod:`catalog.io`)."""
    from catalog.io import CATALOGUE_FITS, CATALOGUE_PARQUET

    return [Path(results_dir) / CATALOGUE_PARQUET, Path(results_dir) / CATALOGUE_FITS]


def chain_end(plan: ObsPlan) -> dict[str, Any] | None:
    """For a chain with nothing left to run: the outcome of its last settled step (``None`` if it has none)."""
    if plan.tasks or not plan.outcomes:
        return None
    return list(plan.outcomes.values())[-1]


def _log_joint(log: logging.Logger, jp: JointPlan) -> None:
    out = jp.outcome or {}
    ids = ", ".join(out.get("obsids") or jp.task.obsids)
    if out.get("status") == "failed":
        log.warning(
            "joint fit %s (%s) failed (%s): %s", jp.task.target, ids, out.get("exception"), out.get("reason")
        )
    else:
        log.info(
            "joint fit %s (%s): %s (%.2f s)", jp.task.target, ids, out.get("status"), out.get("wall_s", 0.0)
        )


def catalogue_is_current(results_dir: str | Path, obsids: Sequence[str], steps: Sequence[str]) -> bool:
    """True when both catalogue files exist and are newer than every step record and joint-fit record."""
    results_dir = Path(results_dir)
    try:
        cat_mtime = min(p.stat().st_mtime_ns for p in catalogue_paths(results_dir))
    except OSError:
        return False
    for obsid in obsids:
        for step in steps:
            try:
                if record_path(results_dir / obsid, step).stat().st_mtime_ns > cat_mtime:
                    return False
            except FileNotFoundError:
                continue
    return all(p.stat().st_mtime_ns <= cat_mtime for p in SurveyLayout(results_dir).joint_dir.glob("*.json"))


def build_catalogue(
    results_dir: str | Path, *, log: logging.Logger | None = None
) -> tuple[list[Path], str | None, Mapping[str, Any]]:
    """Build and write the catalogue with ``catalog.build`` + ``catalog.io.write_catalogue``.

    Returns
    -------
    paths : list of Path
        The catalogue files written (``catalogue.parquet``, ``catalogue.fits``).
    error : str or None
        Why the catalogue could not be built (missing ``catalog`` package, a failure inside it).
    info : dict
        ``n_rows`` and ``wall_s``.
    """
    log = log or logging.getLogger("survey.run")
    results_dir = Path(results_dir)
    t0 = time.perf_counter()
    try:
        import catalog
        from catalog import io as catalog_io
    except ImportError as exc:
        msg = f"catalogue not built: the catalog package is not available ({exc})"
        log.error(msg)
        return [], msg, {}
    try:
        df = catalog.build(results_dir, strict=False)
        catalog_io.write_catalogue(df, results_dir)
    except Exception as exc:
        msg = f"catalogue not built: {type(exc).__name__}: {exc}"
        log.exception(msg)
        return [], msg, {}
    paths = [p for p in catalogue_paths(results_dir) if p.exists()]
    info: dict[str, Any] = {"n_rows": len(df), "wall_s": time.perf_counter() - t0}
    info["skipped"] = dict(df.attrs.get("skipped") or {})
    for name, reason in sorted(info["skipped"].items()):
        log.warning("catalogue: %s left out or listed as failed: %s", name, reason)
    try:  # survey figures (kT/Z/flux histograms, L-T, sky, exposure vs S/N); a plot never loses the catalogue
        from catalog.plots import survey_figures

        figures = survey_figures(df, SurveyLayout(results_dir).plots_dir)
        info["figures"] = {k: str(v) for k, v in figures.items() if k != "lt_fit"}
        log.info("survey figures -> %s", SurveyLayout(results_dir).plots_dir)
    except Exception as exc:  # noqa: BLE001
        log.warning("survey figures not made: %s: %s", type(exc).__name__, exc)
    log.info("catalogue: %d rows -> %s (%.2f s)", info["n_rows"], ", ".join(map(str, paths)), info["wall_s"])
    return paths, None, info


def make_tasks(
    obsid: str,
    obs: Any,
    error: tuple[str, str] | None,
    *,
    pipeline: Pipeline,
    results_dir: str,
    cfg: dict[str, Any],
    retries: int,
    backoff_s: float,
    retry_failed: bool,
    versions: dict[str, str],
    config_hash: str = "",
    code: dict[str, Any] | None = None,
    reuse_across_code: bool = False,
) -> list[StepTask]:
    """One StepTask per pipeline step for ``obsid``."""
    return [
        StepTask(
            obsid=obsid,
            step=step,
            obs=obs,
            results_dir=results_dir,
            cfg=cfg,
            pipeline=pipeline,
            retries=retries,
            backoff_s=backoff_s,
            retry_failed=retry_failed,
            error=error,
            versions=versions,
            config_hash=config_hash,
            code=dict(code or {}),
            reuse_across_code=reuse_across_code,
        )
        for step in pipeline.steps
    ]
