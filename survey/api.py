"""The Python API of the survey: what ``xmm-survey run`` does, callable from a notebook.

Examples
--------
>>> from survey.config import load_config
>>> from survey.api import run_survey
>>> cfg = load_config("survey.yaml", ["cluster.workers=2"])
>>> report = run_survey(cfg)
>>> report.failed          # ObsID -> reason
{}
>>> report.catalogue       # [results/catalogue.parquet, results/catalogue.fits]
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmmcore.errors import ConfigError, InputDataError
from xmmcore.fsutil import atomic_write_json
from xmmcore.observation import (
    Observation,
    discover,
    list_obsids,
    read_targets_csv,
    scan_data_dir,
    validate_obsid,
)
from xmmcore.products import SurveyLayout
from xmmcore.provenance import code_identity, code_version

from .config import Config, check_environment, check_obsid_selection, write_resolved
from .graph import (
    ObsPlan,
    build_catalogue,
    catalogue_is_current,
    catalogue_paths,
    chain_end,
    make_tasks,
    plan_obsid,
    run_graph,
)
from .joint import JointPlan, make_joint_tasks, plan_joint
from .lock import check_unlocked, results_lock
from .logs import close_survey_logger, collect_worker_logs, dask_logs_to_file, survey_logger
from .obsid_lock import obsid_lock
from .steps import Pipeline, execute_step, software_versions, where_am_i

__all__ = [
    "SurveyReport",
    "load_observations",
    "read_obsid_list",
    "read_targets_csv",
    "resolve_obsids",
    "run_one",
    "run_survey",
]

NOT_SELECTED = "not selected by obsids"


@dataclass
class SurveyReport:
    """What a survey run did.

    Attributes
    ----------
    results_dir : Path
    obsids : list of str
    outcomes : dict
        ObsID -> step -> outcome (status ``done`` / ``cached`` / ``failed`` / ``blocked``, reason, wall_s).
    failed : dict
        ObsID -> ``"<step>: <ExceptionClass>: <reason>"`` for every ObsID that did not finish.
    n_run, n_cached : int
        Steps computed in this run, steps skipped because their records matched.
    wall_s : float
        Wall time of the whole run [s].
    step_wall_s : dict
        Step -> summed wall time of the steps computed in this run [s].
    catalogue : list of Path
        Catalogue files written (empty when not built).
    catalogue_error : str or None
    dashboard_link : str or None
    config_hash : str
    joint : dict
        Target -> error (``None`` when its joint fit over several ObsIDs is done or up to date).
    skipped : dict
        Folder of ``data_dir`` -> why it is not processed (empty, hidden, ODF only, unsupported mode,
        not selected); also written to ``results/skipped.json`` and shown by ``status``.
    """

    results_dir: Path
    obsids: list[str]
    outcomes: dict[str, dict[str, dict[str, Any]]]
    failed: dict[str, str]
    n_run: int
    n_cached: int
    wall_s: float
    step_wall_s: dict[str, float]
    catalogue: list[Path] = field(default_factory=list)
    catalogue_error: str | None = None
    joint: dict[str, str | None] = field(default_factory=dict)
    dashboard_link: str | None = None
    config_hash: str = ""
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> list[str]:
        """ObsIDs whose every step finished."""
        return [o for o in self.obsids if o not in self.failed]

    @property
    def ok(self) -> bool:
        """True when every ObsID finished and the catalogue was written."""
        return not self.failed and self.catalogue_error is None

    def summary(self) -> str:
        """A few lines for the terminal."""
        head = (
            f"survey: {len(self.done)}/{len(self.obsids)} ObsIDs done, {len(self.failed)} failed; "
            f"{self.n_run} steps computed, {self.n_cached} reused; {self.wall_s:.1f} s"
        )
        lines = [head]
        for obsid, reason in sorted(self.failed.items()):
            lines.append(f"  FAILED {obsid}: {reason}")
        not_selected = [f for f, why in self.skipped.items() if why == NOT_SELECTED]
        for folder, why in sorted(self.skipped.items()):
            if why != NOT_SELECTED:
                lines.append(f"  SKIPPED {folder}: {why}")
        if not_selected:
            lines.append(f"  {len(not_selected)} folders not selected by `obsids` (listed in skipped.json)")
        for target, error in sorted(self.joint.items()):
            lines.append(f"  joint fit {target}: {error or 'ok'}")
        if self.catalogue:
            lines.append("catalogue: " + ", ".join(str(p) for p in self.catalogue))
        elif self.catalogue_error:
            lines.append(self.catalogue_error)
        plots = SurveyLayout(self.results_dir).plots_dir
        if plots.is_dir():
            lines.append(f"plots: {plots}")
        lines.append(f"status: xmm-survey status --results {self.results_dir}")
        return "\n".join(lines)


def read_obsid_list(path: str | Path) -> list[str]:
    """ObsIDs from a list file: one per line; ``#`` starts a comment; blank lines ignored.

    Raises
    ------
    ConfigError
        Unreadable file, or a line that is not a plain ObsID (named with its line number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the ObsID list {path}: {exc}") from exc
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            out.append(validate_obsid(entry))
        except InputDataError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from exc
    return list(dict.fromkeys(out))


def resolve_obsids(cfg: Mapping[str, Any]) -> list[str]:
    """The ObsIDs a survey covers, from ``obsids`` (list, list file or glob) or the targets CSV or ``data_dir``."""
    spec = cfg.get("obsids")
    data_dir = Path(cfg["data_dir"])
    backend = _backend_name(cfg)
    if isinstance(spec, list):
        out = []
        for item in spec:
            try:
                out.append(validate_obsid(str(item)))
            except InputDataError as exc:
                raise ConfigError(f"obsids: {exc}") from exc
        return list(dict.fromkeys(out))
    if isinstance(spec, str):
        if Path(spec).is_file():
            return read_obsid_list(spec)
        if any(ch in spec for ch in "*?["):
            return [
                o
                for o in list_obsids(data_dir, backend=backend, exclude=_results_exclude(cfg))
                if fnmatch.fnmatch(o, spec)
            ]
        # One ObsID or a comma-separated list of them (``--obsids 0201903501,0404910601``).
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if names and all((data_dir / n).is_dir() for n in names):
            return resolve_obsids({**cfg, "obsids": names})  # the list branch refuses unsafe names
        raise ConfigError(
            f"obsids: {spec!r} is neither a list file, a glob nor ObsID folders under {data_dir}"
        )
    if cfg.get("targets_csv"):
        return list(read_targets_csv(cfg["targets_csv"]))
    return list_obsids(data_dir, backend=backend, exclude=_results_exclude(cfg))


def _results_exclude(cfg: Mapping[str, Any]) -> list[Path]:
    """The results folder, never an ObsID even when it lies inside ``data_dir``."""
    return [Path(cfg["results_dir"])] if cfg.get("results_dir") else []


def _backend_name(cfg: Mapping[str, Any]) -> str | None:
    backend = cfg.get("backend")
    return str(backend.get("reduction")) if isinstance(backend, Mapping) else None


def skipped_folders(cfg: Mapping[str, Any], chosen: Sequence[str]) -> dict[str, str]:
    """Every folder of ``data_dir`` that this run does not process, with the reason.

    Folders that hold data but are not in ``chosen`` (an ``obsids`` selection) are ``not selected``.
    """
    scan = scan_data_dir(cfg["data_dir"], backend=_backend_name(cfg), exclude=_results_exclude(cfg))
    wanted = set(chosen)
    out = {f: why for f, why in scan.skipped.items() if f not in wanted}
    for obsid in scan.obsids:
        if obsid not in wanted:
            out[obsid] = NOT_SELECTED
    return dict(sorted(out.items()))


def load_observations(
    cfg: Mapping[str, Any], obsids: Sequence[str]
) -> dict[str, tuple[Observation | None, tuple[str, str] | None]]:
    """Discover each ObsID under ``data_dir`` and add the targets-CSV metadata.

    Returns ObsID -> (Observation, None), or (None, (exception class, reason)) when discovery failed.
    """
    targets = read_targets_csv(cfg["targets_csv"]) if cfg.get("targets_csv") else {}
    out: dict[str, tuple[Observation | None, tuple[str, str] | None]] = {}
    for obsid in obsids:
        try:
            obs = discover(Path(cfg["data_dir"]).resolve(), obsid, backend=_backend_name(cfg))
        except InputDataError as exc:
            out[obsid] = (None, (type(exc).__name__, str(exc)))
            continue
        if obsid in targets:
            obs = obs.with_meta(**targets[obsid])
        out[obsid] = (obs, None)
    return out


def _results_dir(cfg: Mapping[str, Any]) -> Path:
    """``results_dir`` made absolute and created; ConfigError naming it when that is impossible."""
    results_dir = Path(cfg["results_dir"]).resolve()
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"results_dir {results_dir} cannot be created or written: {exc.strerror or exc}"
        ) from exc
    return results_dir


def _pipeline_for(
    cfg: Mapping[str, Any], pipeline: Pipeline | Mapping[str, Callable[..., dict[str, Any]]] | None
) -> Pipeline:
    if pipeline is None:
        return Pipeline.from_config(cfg)
    if isinstance(pipeline, Pipeline):
        return pipeline
    return Pipeline.from_mapping(pipeline)


def _plans(
    cfg: Config,
    pipeline: Pipeline,
    obsids: Sequence[str],
    retry_failed: bool,
    observations: Mapping[str, Any] | None = None,
) -> list[ObsPlan]:
    observations = observations if observations is not None else load_observations(cfg, obsids)
    versions = software_versions(pipeline.module)
    code = code_identity(pipeline.module)
    reuse_across_code = bool(cfg["pipeline"]["reuse_across_code"])
    plain = cfg.to_dict()
    results_dir = str(Path(cfg["results_dir"]).resolve())
    plans = []
    for obsid in obsids:
        obs, error = observations[obsid]
        tasks = make_tasks(
            obsid,
            obs,
            error,
            pipeline=pipeline,
            results_dir=results_dir,
            cfg=plain,
            retries=int(cfg["retries"]["transient"]),
            backoff_s=float(cfg["retries"]["backoff_s"]),
            retry_failed=retry_failed,
            versions=versions,
            config_hash=cfg.hash,
            code=code,
            reuse_across_code=reuse_across_code,
        )
        plans.append(plan_obsid(tasks))
    return plans


def run_survey(
    cfg: Config,
    *,
    pipeline: Pipeline | Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    obsids: Sequence[str] | None = None,
    retry_failed: bool = False,
    client: Any = None,
    progress: bool = True,
    catalogue: bool = True,
    quiet_dask: bool = False,
    on_outcome: Callable[[dict[str, Any]], None] | None = None,
) -> SurveyReport:
    """Run (or resume) the survey described by ``cfg`` and build the catalogue.

    Parameters
    ----------
    cfg : Config
        Resolved configuration (:func:`survey.config.load_config`).
    pipeline : Pipeline or mapping, optional
        The per-ObsID steps; default ``cfg["pipeline"]["module"]`` (``xmmcore.pipeline``). A mapping
        step name -> ``fn(obs, outdir, cfg, *, log) -> dict`` is accepted too.
    obsids : list of str, optional
        Restrict the run to these ObsIDs (default: :func:`resolve_obsids`).
    retry_failed : bool
        Rerun steps whose failure was recorded on the same inputs (normally reported, not rerun).
    client : distributed.Client, optional
        Use this client instead of starting the cluster of ``cfg["cluster"]``.
    progress : bool
        Show a progress bar.
    catalogue : bool
        Build ``results/catalogue.{parquet,fits}`` at the end.
    quiet_dask : bool
        Send the driver's Dask log messages to ``results/logs/dask.log`` instead of the terminal.
    on_outcome : callable, optional
        Called with each step outcome as soon as it finishes.

    Returns
    -------
    SurveyReport

    Raises
    ------
    ConfigError
        Bad configuration (nothing has run).
    """
    t0 = time.perf_counter()
    pipe = _pipeline_for(cfg, pipeline)
    data_dir = Path(cfg["data_dir"])
    if not data_dir.is_dir():
        # Before anything is written: a wrong --data must not overwrite the records of a good run.
        raise InputDataError("data directory does not exist", data_dir.resolve())
    # Missing tools and ObsID typos stop the run here, before any record is written or a cluster starts.
    check_environment(cfg, where="run", cluster=client is None)
    if obsids is None:
        check_obsid_selection(cfg, where="run")
    results_dir = _results_dir(cfg)
    lock = contextlib.ExitStack()
    lock.enter_context(results_lock(results_dir, what="survey run"))  # one writer per results folder
    try:
        write_resolved(cfg, results_dir)
        log = survey_logger(results_dir)
    except BaseException:
        lock.close()
        raise
    try:
        if obsids is not None:
            try:
                chosen = [validate_obsid(o) for o in obsids]
            except InputDataError as exc:
                raise ConfigError(f"obsids: {exc}") from exc
        else:
            chosen = resolve_obsids(cfg)
        log.info(
            "survey start: %d ObsIDs, steps %s, config hash %s, code %s%s, data %s",
            len(chosen),
            list(pipe.steps),
            cfg.hash[:12],
            code_version(code_identity(pipe.module)) or "unknown",
            " (records of other code reused)" if cfg["pipeline"]["reuse_across_code"] else "",
            cfg["data_dir"],
        )
        skipped = skipped_folders(cfg, chosen)
        atomic_write_json(SurveyLayout(results_dir).skipped, skipped)
        for folder, why in skipped.items():
            log.info("skipped folder %s: %s", folder, why)
        observations = load_observations(cfg, chosen)
        for obsid, (obs, _err) in observations.items():
            for cam, why in obs.skipped_cameras.items() if obs is not None else ():
                log.warning("%s: camera %s left out: %s", obsid, cam, why)
        plans = _plans(cfg, pipe, chosen, retry_failed, observations)
        n_todo = sum(len(p.tasks) for p in plans)
        joint_plans = _joint_plans(cfg, pipe, plans, observations, retry_failed)
        n_joint = sum(jp.outcome is None for jp in joint_plans)
        log.info("%d steps to compute, %d reused from records", n_todo, sum(len(p.outcomes) for p in plans))
        outcomes: dict[str, dict[str, dict[str, Any]]] = {p.obsid: dict(p.outcomes) for p in plans}
        dashboard = None
        if n_todo or n_joint:
            with contextlib.ExitStack() as stack:
                stack.enter_context(dask_logs_to_file(results_dir, quiet=quiet_dask))
                if client is None:
                    from .cluster import start_cluster

                    handle = start_cluster(cfg, results_dir=results_dir, log=log)
                    stack.callback(handle.close)
                    run_client, use_resources, dashboard = (
                        handle.client,
                        handle.use_resources,
                        handle.dashboard_link,
                    )
                    if dashboard:
                        print(f"Dask dashboard: {dashboard}", flush=True)
                else:
                    run_client, dashboard = client, getattr(client, "dashboard_link", None)
                    workers = client.scheduler_info().get("workers", {})
                    use_resources = bool(workers) and all(
                        "slots" in (w.get("resources") or {}) for w in workers.values()
                    )
                outcomes = run_graph(
                    run_client,
                    plans,
                    use_resources=use_resources,
                    progress=progress,
                    log=log,
                    on_outcome=on_outcome,
                    joint=joint_plans,
                )
                report = _report(
                    cfg, results_dir, chosen, outcomes, pipe, time.perf_counter() - t0, dashboard
                )
                collect_worker_logs(run_client, results_dir)
                if cfg["cluster"]["profile"]:
                    from .cluster import write_profile

                    written = write_profile(run_client, results_dir)
                    log.info("Dask profile: %s", written or "not written (no bokeh, or no worker left)")
        else:
            report = _report(cfg, results_dir, chosen, outcomes, pipe, time.perf_counter() - t0, dashboard)
        report.joint = _joint_errors(joint_plans)
        report.skipped = skipped
        if catalogue:
            if n_todo == 0 and n_joint == 0 and catalogue_is_current(results_dir, chosen, pipe.steps):
                log.info("catalogue is up to date")
                report.catalogue = catalogue_paths(results_dir)
            else:
                report.catalogue, report.catalogue_error, _ = build_catalogue(results_dir, log=log)
        report.wall_s = time.perf_counter() - t0
        log.info(
            "survey end: %d done, %d failed, %.2f s", len(report.done), len(report.failed), report.wall_s
        )
        return report
    finally:
        close_survey_logger(log)
        lock.close()


def _joint_plans(
    cfg: Config,
    pipe: Pipeline,
    plans: Sequence[ObsPlan],
    observations: Mapping[str, Any],
    retry_failed: bool,
) -> list[JointPlan]:
    """The joint step of every target seen in several ObsIDs; settled on the driver when nothing upstream runs."""
    if not cfg["joint"]["enabled"] or "fit" not in pipe.steps:
        return []
    found = {o: obs for o, (obs, _err) in observations.items() if obs is not None}
    by_obsid = {p.obsid: p for p in plans}
    tasks = make_joint_tasks(
        found,
        [p.obsid for p in plans],
        results_dir=str(Path(cfg["results_dir"]).resolve()),
        cfg=cfg.to_dict(),
        versions=software_versions(pipe.module),
        config_hash=cfg.hash,
        retry_failed=retry_failed,
        code=code_identity(pipe.module),
        reuse_across_code=bool(cfg["pipeline"]["reuse_across_code"]),
    )
    out = []
    for task in tasks:
        jp = JointPlan(task)
        chains = [by_obsid[o] for o in task.obsids]
        if not any(p.tasks for p in chains):
            jp.outcome = plan_joint(task, [chain_end(p) for p in chains])
        out.append(jp)
    return out


def _joint_errors(joint_plans: Sequence[JointPlan]) -> dict[str, str | None]:
    """Target -> ``None`` (fitted now or reused) or why its joint fit failed; skipped targets are left out."""
    out: dict[str, str | None] = {}
    for jp in joint_plans:
        o = jp.outcome or {}
        if o.get("status") in ("done", "cached"):
            out[jp.task.target] = None
        elif o.get("status") == "failed":
            reason = str(o.get("reason") or "")
            out[jp.task.target] = (
                reason if reason.startswith("missing inputs") else f"{o.get('exception')}: {reason}"
            )
    return out


def _report(
    cfg: Config,
    results_dir: Path,
    obsids: Sequence[str],
    outcomes: dict[str, dict[str, dict[str, Any]]],
    pipe: Pipeline,
    wall_s: float,
    dashboard: str | None,
) -> SurveyReport:
    failed: dict[str, str] = {}
    n_run = n_cached = 0
    step_wall = dict.fromkeys(pipe.steps, 0.0)
    for obsid in obsids:
        steps = outcomes.get(obsid, {})
        for step in pipe.steps:
            out = steps.get(step)
            if out is None:
                continue
            if out["status"] == "cached":
                n_cached += 1
            elif out["status"] in ("done", "failed") and out.get("attempts") and not out.get("reused"):
                n_run += 1
                step_wall[step] += float(out.get("wall_s") or 0.0)
            if out["status"] == "failed" and obsid not in failed:
                failed[obsid] = f"{step}: {out.get('exception')}: {out.get('reason')}"
        if obsid not in failed and any(
            steps.get(s, {}).get("status") not in ("done", "cached") for s in pipe.steps
        ):
            failed[obsid] = "not finished (blocked or lost)"
    return SurveyReport(
        results_dir=results_dir,
        obsids=list(obsids),
        outcomes=outcomes,
        failed=failed,
        n_run=n_run,
        n_cached=n_cached,
        wall_s=wall_s,
        step_wall_s=step_wall,
        dashboard_link=dashboard,
        config_hash=cfg.hash,
    )


def run_one(
    cfg: Config,
    obsid: str,
    *,
    pipeline: Pipeline | Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    retry_failed: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the chain of one ObsID in this process, without Dask (SLURM job-array mode).

    Returns
    -------
    dict
        Step -> outcome. Check ``outcome["status"]`` (``done``/``cached``; ``failed`` with a reason).
    """
    pipe = _pipeline_for(cfg, pipeline)
    validate_obsid(obsid)
    results_dir = _results_dir(cfg)
    check_unlocked(results_dir)  # a whole-survey run writes here now
    lock = contextlib.ExitStack()
    (results_dir / obsid).mkdir(parents=True, exist_ok=True)
    run_one_cfg = cfg["cluster"]["run_one"]
    taken_over: list[str] = []
    lock.enter_context(
        obsid_lock(
            results_dir / obsid,
            what=f"run-one of {obsid}",
            heartbeat_s=float(run_one_cfg["lock_heartbeat_s"]),
            stale_after_s=float(run_one_cfg["lock_stale_s"]),
            on_takeover=taken_over.append,
        )
    )
    try:
        # one log file per ObsID: array tasks on many hosts never append to one file (shared filesystems)
        log = survey_logger(results_dir, name=f"survey.{obsid}", filename=f"run-one/{obsid}.log")
    except BaseException:
        lock.close()
        raise
    try:
        where = where_am_i()
        log.info(
            "run-one %s on node %s (host %s, pid %s, SLURM job %s)",
            obsid,
            where["node"],
            where["host"],
            where["pid"],
            where["slurm_job_id"],
        )
        for note in taken_over:
            log.warning("%s", note)
        (plan,) = _plans(cfg, pipe, [obsid], retry_failed)
        outcomes = dict(plan.outcomes)
        upstream = plan.upstream
        for task in plan.tasks:
            outcome = execute_step(task, upstream)
            outcomes[task.step] = outcome
            log.info(
                "%s %s %s (%.2f s) %s",
                obsid,
                task.step,
                outcome["status"],
                outcome.get("wall_s", 0.0),
                outcome.get("reason") or "",
            )
            upstream = outcome
        return outcomes
    finally:
        close_survey_logger(log)
        lock.close()


logging.getLogger("survey.run").addHandler(logging.NullHandler())
