"""A 500-ObsID survey on a multi-node SLURM and on a local Dask cluster (a benchmark, not a CI test).

Measured per run: wall time; CPU efficiency = sum of the steps' CPU time / (workers x wall);
driver memory over time (sampled every second); worker memory over time (each step record carries
the worker's resident memory when the step ended, ``rss_mb``); catalogue build time. The worker
memory must stay flat: its median over the steps of ObsIDs 40-60 (in completion order) against
ObsIDs 480-500, within 20 %.

ObsIDs are small simulated observations (``xmmcore.simulate``: pn only, 2-3 ks, 1000-2500 cluster
counts, 2 point sources; :data:`REAL_SIM`) run through the REAL pipeline (``xmmcore.pipeline``: flare
GTIs, screening, regions with point-source masking, spectra with responses, ``tbabs*apec`` fit with
profile errors) with ``plots: none`` by default (``--plots summary`` draws the summary figures).
``--pipeline cheap`` uses the cheap steps of ``tests/helpers/survey_steps.py`` instead (the earlier
runs). An archive-scale projection (15,000 pointings) combines these figures with the I/O of real PPS
event lists (``../shared/data/xmm`` sizes per ks of exposure).

Usage::

    nice -n 10 python benchmarks/bench_survey_scale.py --cluster slurm --workers 3 --n-obsids 500
    nice -n 10 python benchmarks/bench_survey_scale.py --cluster local --workers 2 --n-obsids 500
    python benchmarks/bench_survey_scale.py --table real_slurm real_local slurm local   # the markdown

Each run saves ``benchmarks/survey_scale_real_<cluster>.json`` (``survey_scale_<cluster>*.json``: the
earlier cheap-step runs); ``--table`` turns them into the section
of ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
for p in (REPO, TESTS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

__all__ = ["flatness", "main", "projection", "run_benchmark"]

HERE = Path(__file__).resolve().parent
STEPS = ("filter", "regions", "spectra", "fit")


def _rss_mb(pid: int | None = None) -> float:
    path = Path(f"/proc/{pid or 'self'}/statm")
    return int(path.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class _Sampler(threading.Thread):
    """Driver RSS every ``every`` s."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()
        self.loads: list[float] = []  # the 1-minute load average at each sample
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((round(time.perf_counter() - self.t0, 1), round(_rss_mb(), 1)))
            self.loads.append(os.getloadavg()[0])
            self._halt.wait(self.every)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def _load() -> tuple[float, float, float]:
    return os.getloadavg()


def _records(results: Path, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for obsid in ids:
        for step in STEPS:
            try:
                rec = json.loads((results / obsid / "steps" / f"{step}.json").read_text())
            except (OSError, ValueError):
                continue
            rec["_obsid"] = obsid
            out.append(rec)
    return out


def flatness(records: list[dict[str, Any]], lo: tuple[int, int] = (40, 60), hi: tuple[int, int] = (480, 500)):
    """Worker RSS medians over the steps of the ObsIDs ranked lo and hi in completion order.

    An ObsID's rank is the order in which its fit step finished; each worker's RSS is compared
    with itself (per worker pid), then the worst worker is reported.

    Returns
    -------
    dict
        ``per_worker`` {pid: (median lo, median hi, ratio)}, ``worst_ratio``, ``series``
        [(rank, pid, rss_mb)] for the plot/table.
    """
    fits = sorted(
        (r for r in records if r["step"] == "fit" and r.get("finished")), key=lambda r: r["finished"]
    )
    rank = {r["_obsid"]: i + 1 for i, r in enumerate(fits)}
    series = sorted(
        (rank[r["_obsid"]], int(r["pid"]), float(r["rss_mb"]))
        for r in records
        if r.get("rss_mb") is not None and r["_obsid"] in rank
    )
    per: dict[int, tuple[float, float, float]] = {}
    for pid in sorted({s[1] for s in series}):
        a = [m for k, p, m in series if p == pid and lo[0] <= k <= lo[1]]
        b = [m for k, p, m in series if p == pid and hi[0] <= k <= hi[1]]
        if a and b:
            ma, mb = statistics.median(a), statistics.median(b)
            per[pid] = (round(ma, 1), round(mb, 1), round(mb / ma, 3))
    worst = max((v[2] for v in per.values()), default=float("nan"))
    return {"per_worker": per, "worst_ratio": worst, "series": series}


def _slurm_cluster(nodes: int, state: Path) -> dict[str, str]:
    # ports: XMM_SLURMCTLD_PORT / XMM_SLURMD_PORT from the environment, else free ones (local-cluster.sh)
    env = dict(os.environ, XMM_SLURM_DIR=str(state), XMM_SLURM_NODES=str(nodes))
    from xmmcore.tools import run_tool

    run_tool(
        ["bash", str(REPO / "slurm" / "local-cluster.sh"), "start"],
        cwd=str(state.parent),
        base_env=env,
        timeout_s=180,
        check_sas_errors=False,
    )
    env["SLURM_CONF"] = str(state / "slurm.conf")
    return env


#: The simulated ObsIDs of the real-pipeline runs (``xmmcore.simulate.simulate_survey`` options): small, so
#: that 500 of them run in ~25 min on two shared cores.
REAL_SIM: dict[str, Any] = {
    "seed": 18,
    "cameras": ("pn",),
    "exposure_ks": (2.0, 3.0),
    "cluster_counts": (1000.0, 2500.0),
    "point_sources": 2.0,
}


def _real_data(base: Path, n_obsids: int) -> Path:
    """``n_obsids`` simulated ObsIDs (:data:`REAL_SIM`) in ``base/data-real-N`` (kept between runs).

    An index whose simulation raises is skipped and named in ``skipped.json`` (with 2-3 ks the
    simulator's telemetry gaps can overlap: ``ValueError: Probabilities are not non-negative``).
    """
    from xmmcore.simulate import obsid_for, simulate_observation

    data = base / f"data-real-{n_obsids}"
    stamp = json.dumps(REAL_SIM, sort_keys=True)
    done = data / ".complete"
    if done.exists() and done.read_text() == stamp:
        return data
    t = time.perf_counter()
    data.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in REAL_SIM.items() if k != "seed"}
    made, skipped, index = 0, {}, 0
    while made < n_obsids:
        obsid = obsid_for(REAL_SIM["seed"], index)
        if not (data / obsid / "meta.json").exists():
            try:
                simulate_observation(data, obsid, seed=REAL_SIM["seed"], index=index, **opts)
            except ValueError as exc:
                skipped[obsid] = f"{type(exc).__name__}: {exc}"
                shutil.rmtree(data / obsid, ignore_errors=True)
                index += 1
                continue
        made += 1
        index += 1
    (data / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    done.write_text(stamp)
    print(
        f"simulated {n_obsids} ObsIDs in {time.perf_counter() - t:.1f} s ({len(skipped)} skipped)", flush=True
    )
    return data


def _cheap_data(base: Path, n_obsids: int, events: int, work_s: float) -> Path:
    from helpers import survey_steps as helpers

    data = base / f"data-{n_obsids}-{events}"
    if not (data / ".complete").exists():
        t = time.perf_counter()
        meta = {f"{910000000 + i:010d}": {"work_s": work_s} for i in range(n_obsids)} if work_s else None
        helpers.make_survey(data, n_obsids, n_events=events, meta=meta)
        (data / ".complete").write_text("")
        print(f"simulated {n_obsids} ObsIDs in {time.perf_counter() - t:.1f} s", flush=True)
    return data


def _input_bytes(data: Path, ids: list[str]) -> int:
    return sum(f.stat().st_size for o in ids for f in (data / o).rglob("*EVLI*") if f.is_file())


def run_benchmark(
    *,
    cluster: str,
    n_obsids: int,
    workers: int,
    events: int,
    work_s: float,
    base: Path,
    pipeline: str = "real",
    plots: str = "none",
) -> dict[str, Any]:
    from survey.api import run_survey
    from survey.config import load_config
    from survey.graph import build_catalogue

    data = _real_data(base, n_obsids) if pipeline == "real" else _cheap_data(base, n_obsids, events, work_s)
    ids = sorted(p.name for p in data.iterdir() if p.is_dir())[:n_obsids]
    results = Path(tempfile.mkdtemp(prefix=f"results-{pipeline}-{cluster}-", dir=base))
    over: dict[str, Any] = {
        "data_dir": str(data),
        "results_dir": str(results),
        "obsids": ids,
        "joint.enabled": False,
        "cluster.dashboard_address": "127.0.0.1:0",
    }
    if pipeline == "real":
        over.update({"plots": plots, "cameras": list(REAL_SIM["cameras"])})
    else:
        over["pipeline.module"] = "helpers.survey_steps"
    # sbatch/scancel, run by dask-jobqueue in this process, find the test cluster through SLURM_CONF: set it
    # for this run only (restored after, like the tests' monkeypatch); nothing in the pipeline edits os.environ.
    env_patch = contextlib.ExitStack()
    state = None
    if cluster == "local":
        over.update({"cluster.kind": "local", "cluster.workers": workers})
    else:
        state = base / "slurm-state"
        env = _slurm_cluster(workers, state)
        env_patch.enter_context(mock.patch.dict(os.environ, {"SLURM_CONF": env["SLURM_CONF"]}))
        over.update(
            {
                "cluster.kind": "slurm",
                "cluster.slurm.scheduler_host": "127.0.0.1",
                "cluster.slurm.worker_extra_args": ["--host", "$XMM_NODE_ADDR"],
                "cluster.slurm.memory": "1GB",
                "cluster.slurm.walltime": "02:00:00",
                "cluster.slurm.minimum_jobs": workers,
                "cluster.slurm.maximum_jobs": workers,
                "cluster.slurm.job_script_prologue": [
                    f"export PYTHONPATH={REPO}:{TESTS}",
                    "export XMM_NODE_ADDR=$(awk -v n=\"$SLURMD_NODENAME\" '$1 == n {print $2}' "
                    f"{state / 'nodes.txt'})",
                ],
            }
        )
    cfg = load_config(None, over)
    load_before = _load()
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    try:
        report = run_survey(cfg, progress=False, catalogue=False, quiet_dask=True)
    finally:
        wall = time.perf_counter() - t0
        driver = sampler.stop()
        env_patch.close()
        if state is not None:
            from xmmcore.tools import run_tool

            try:  # the cluster's own stop: a failure here must not hide the run's result or error
                run_tool(
                    ["bash", str(REPO / "slurm" / "local-cluster.sh"), "stop"],
                    cwd=str(state.parent),
                    env={"XMM_SLURM_DIR": str(state), "XMM_SLURM_NODES": str(workers)},
                    timeout_s=120,
                    check_sas_errors=False,
                )
            except Exception as exc:  # noqa: BLE001
                print(f"local-cluster.sh stop: {exc}", file=sys.stderr)
    load_after = _load()
    t1 = time.perf_counter()
    _paths, error, info = build_catalogue(results)
    cat_s = time.perf_counter() - t1
    records = _records(results, ids)
    cpu = sum(float(r.get("cpu_s") or 0.0) for r in records if r.get("status") == "done")
    step_wall = sum(float(r.get("wall_s") or 0.0) for r in records if r.get("status") == "done")
    flat = flatness(records, hi=(max(1, n_obsids - 20), n_obsids))
    nodes = sorted({str(r.get("node")) for r in records})
    out = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cluster": cluster,
        "pipeline": pipeline,
        "plots": plots if pipeline == "real" else None,
        "simulation": {k: list(v) if isinstance(v, tuple) else v for k, v in REAL_SIM.items()}
        if pipeline == "real"
        else {"events": events, "work_s": work_s},
        "input_mb_per_obsid": round(_input_bytes(data, ids) / len(ids) / 1e6, 3),
        "cpu_s_per_obsid": round(cpu / max(1, len(report.done)), 3),
        "n_obsids": n_obsids,
        "workers": workers,
        "nodes": nodes,
        "events_per_obsid": events,
        "done": len(report.done),
        "failed": len(report.failed),
        "wall_s": round(wall, 1),
        "sum_step_cpu_s": round(cpu, 1),
        "sum_step_wall_s": round(step_wall, 1),
        "cpu_efficiency": round(cpu / (workers * wall), 3),
        "wall_efficiency": round(step_wall / (workers * wall), 3),
        "catalogue_s": round(cat_s, 2),
        "catalogue_rows": info.get("n_rows"),
        "catalogue_error": error,
        "driver_rss_mb": {"start": driver[0][1], "peak": max(m for _t, m in driver), "end": driver[-1][1]},
        "driver_rss_series": driver[:: max(1, len(driver) // 60)],
        "worker_rss": {str(k): v for k, v in flat["per_worker"].items()},
        "worker_rss_worst_ratio": flat["worst_ratio"],
        "worker_rss_series": flat["series"][:: max(1, len(flat["series"]) // 100)],
        "load_before": [round(x, 1) for x in load_before],
        "load_after": [round(x, 1) for x in load_after],
        "load_during": {
            "min": round(min(sampler.loads), 1),
            "median": round(statistics.median(sampler.loads), 1),
            "max": round(max(sampler.loads), 1),
        },
        "results_dir": str(results),
    }
    return out


def projection(
    run: dict[str, Any],
    *,
    n: int = 15000,
    science_cpu_s: float,
    pps_mb: float,
    out_mb: float,
    cores: int = 1000,
) -> dict[str, Any]:
    """Archive-scale projection: ``n`` pointings on ``cores`` worker cores.

    The orchestration overhead per ObsID is the time the run's workers spent outside steps
    (wall x workers - the steps' wall time, per ObsID: scheduling, transfers, records); the time the
    steps waited for a CPU other processes held is not the survey's and is left out, so the science is
    ``science_cpu_s`` per ObsID; the I/O is ``pps_mb`` read and ``out_mb`` written per ObsID.
    """
    overhead = max(0.0, run["wall_s"] * run["workers"] - run["sum_step_wall_s"]) / run["n_obsids"]
    core_s = n * (science_cpu_s + overhead)
    return {
        "pointings": n,
        "cores": cores,
        "overhead_s_per_obsid": round(overhead, 3),
        "core_hours": round(core_s / 3600, 1),
        "wall_h_on_cores": round(core_s / cores / 3600, 2),
        "read_tb": round(n * pps_mb / 1e6, 2),
        "written_tb": round(n * out_mb / 1e6, 2),
        "read_rate_mb_s": round(n * pps_mb / (core_s / cores), 1),
        "step_records": n * 4,
    }


# Inputs of the projection, each measured or read here (see the notes printed with the table).
# Real event lists: a907 MOS1 cleaned list 0201901401, 22124 events in 5006.6 s live, 1,454,400 bytes.
REAL_BYTES_PER_EVENT = 1454400 / 22124
REAL_CLEAN_MOS_RATE = 22124 / 5006.57
RAW_OVER_CLEAN = 2.0  # raw/cleaned events in the filter records of the simulated ObsIDs (1.9-2.1)
PN_OVER_MOS = 2.5  # raw pn / raw MOS1 events in the same records
EXPOSURE_KS = 30.0  # a typical pointing
FIXED_OUT_MB = 9.9  # products written per ObsID besides the cleaned events (regions, spectra, plots, fits)
# Event-proportional CPU of the real steps: 5e6 pn events through filter, regions and spectra in 7 s
# ("peak memory per worker, 5e6-event pn ObsID" in results.md) = 1.4 CPU-s per million events.
CPU_S_PER_MEVENT = 7.0 / 5.0
#: Science CPU per ObsID of the earlier cheap-step runs (their steps do no science): the real pipeline's
#: per-ObsID CPU measured then (6 ObsIDs: 157 CPU-s incl. start-up).
CHEAP_RUN_SCIENCE_CPU_S = 25.0


def pps_io_mb(exposure_ks: float = EXPOSURE_KS) -> tuple[float, float]:
    """(read, written) MB per pointing from real event-list sizes (see the constants above)."""
    mos = REAL_CLEAN_MOS_RATE * RAW_OVER_CLEAN * exposure_ks * 1e3 * REAL_BYTES_PER_EVENT / 1e6
    read = mos * (2 + PN_OVER_MOS)
    return read, read / RAW_OVER_CLEAN + FIXED_OUT_MB


def science_cpu_s(run: dict[str, Any], read_mb: float) -> float:
    """Science CPU [s] of one archive pointing that reads ``read_mb`` MB of event lists.

    Real-pipeline runs: the run's own step CPU per ObsID (fixed costs: regions, responses, the fit with
    its errors), times 3 / the run's cameras (a pointing has pn, MOS1 and MOS2), plus the event-proportional cost of the events it did not have
    (:data:`CPU_S_PER_MEVENT` x the extra million events). Cheap-step runs: :data:`CHEAP_RUN_SCIENCE_CPU_S`.
    """
    if run.get("pipeline") != "real":
        return CHEAP_RUN_SCIENCE_CPU_S
    # the run's ObsIDs had only pn: the per-camera steps of a pointing cost once per camera
    per_camera = 3 / len((run.get("simulation") or {}).get("cameras") or ["pn", "mos1", "mos2"])
    extra_mevents = (
        max(0.0, read_mb - float(run.get("input_mb_per_obsid") or 0.0)) * 1e6 / REAL_BYTES_PER_EVENT / 1e6
    )
    return float(run["cpu_s_per_obsid"]) * per_camera + CPU_S_PER_MEVENT * extra_mevents


def _label(r: dict[str, Any]) -> str:
    what = f"real pipeline, plots {r['plots']}" if r.get("pipeline") == "real" else "cheap steps"
    stopped = ", stopped at the deadline" if r.get("partial") else ""
    return f"{r['cluster']} ({what}{stopped}){', ' + r['label'] if r.get('label') else ''}"


def _over_time(r: dict[str, Any], bins: int = 5) -> str:
    """Worker RSS medians per completion-rank bin (all workers) and driver RSS at the same fractions."""
    series = r.get("worker_rss_series") or []
    n = r["n_obsids"]
    edges = [round(n * i / bins) for i in range(bins + 1)]
    cells = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        vals = [m for k, _p, m in series if lo < k <= hi]
        cells.append(f"{statistics.median(vals):.0f}" if vals else "-")
    drv = r.get("driver_rss_series") or []
    pick = (
        [drv[min(len(drv) - 1, round((len(drv) - 1) * i / (bins - 1)))][1] for i in range(bins)]
        if drv
        else []
    )
    return f"worker {' / '.join(cells)}; driver {' / '.join(f'{m:.0f}' for m in pick)}"


def _driver(d: dict[str, Any]) -> str:
    return f"{d['start']:.0f}/{d['peak']:.0f}/{d['end']:.0f}" if d else "n/a (stopped run)"


def _loads(r: dict[str, Any]) -> str:
    during = r.get("load_during")
    mid = f" / {during['median']:.1f} ({during['min']:.0f}-{during['max']:.0f})" if during else ""
    return f"{r['load_before'][0]:.1f}{mid} / {r['load_after'][0]:.1f}"


def table(runs: list[dict[str, Any]]) -> str:
    """The markdown section of benchmarks/results.md for the saved runs."""
    lines = [
        "| run | ObsIDs | workers (nodes) | wall [s] | step CPU [s] | CPU efficiency | step-wall efficiency "
        "| catalogue build [s] | driver RSS start/peak/end [MB] | worker RSS ObsID ~50 -> ~500 [MB] "
        "| worst ratio | RSS over the run, 5 bins of ObsIDs [MB] | load avg before / during: median (range) / after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for r in runs:
        d = r["driver_rss_mb"] or {}
        w = "; ".join(f"{a:.0f} -> {b:.0f}" for a, b, _ in r["worker_rss"].values())
        lines.append(
            f"| {_label(r)} | {r['done']}/{r.get('n_planned', r['n_obsids'])} | {r['workers']} ({', '.join(r['nodes'])}) "
            f"| {r['wall_s']:.0f} | {r['sum_step_cpu_s']:.0f} | {r['cpu_efficiency']:.3f} "
            f"| {r['wall_efficiency']:.3f} | {r['catalogue_s']:.1f} | {_driver(d)} "
            f"| {w} | {r['worker_rss_worst_ratio']:.3f} | {_over_time(r)} "
            f"| {_loads(r)} |"
        )
    read, written = pps_io_mb()
    lines += ["", "Archive-scale projection (15,000 pointings):", ""]
    lines += [
        "| from run | cores | science CPU [s/ObsID] | orchestration overhead [s/ObsID] | core-hours "
        "| wall on the cores [h] | read [TB] | written [TB] | mean read rate [MB/s] | step records |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        sci = science_cpu_s(r, read)
        for cores in (100, 1000):
            pr = projection(r, science_cpu_s=sci, pps_mb=read, out_mb=written, cores=cores)
            lines.append(
                f"| {_label(r)} | {cores} | {sci:.1f} | {pr['overhead_s_per_obsid']:.3f} | {pr['core_hours']:.0f} "
                f"| {pr['wall_h_on_cores']:.1f} | {pr['read_tb']:.2f} | {pr['written_tb']:.2f} "
                f"| {pr['read_rate_mb_s']:.0f} | {pr['step_records']} |"
            )
    lines += [
        "",
        f"I/O per pointing: {read:.0f} MB read, {written:.0f} MB written, from the real a907 MOS1 cleaned list "
        f"({REAL_BYTES_PER_EVENT:.1f} bytes/event, {REAL_CLEAN_MOS_RATE:.1f} events/s), x{RAW_OVER_CLEAN} raw/cleaned "
        f"and pn = {PN_OVER_MOS} x MOS (the simulated ObsIDs' filter records), {EXPOSURE_KS:.0f} ks; "
        f"written = cleaned events + {FIXED_OUT_MB} MB of regions, spectra, plots and fits per ObsID. "
        f"Science CPU per pointing: real-pipeline runs = their step CPU per ObsID x 3 / their cameras (pn, MOS1, MOS2) "
        f"+ {CPU_S_PER_MEVENT:.1f} CPU-s per "
        f"million events they did not have ({read * 1e6 / REAL_BYTES_PER_EVENT / 1e6:.2f} Mevents per pointing); "
        f"cheap-step runs = {CHEAP_RUN_SCIENCE_CPU_S:.0f} s (the real pipeline's, measured before).",
    ]
    return "\n".join(lines)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def summarize_partial(
    results: Path, *, cluster: str, workers: int, n_planned: int, load_log: Path | None = None
) -> dict[str, Any]:
    """The figures of a run stopped before its end, from the step records it wrote (no driver samples).

    Wall = first step start to last fit end; only ObsIDs whose fit step is done count; the memory ratio
    compares ranks 40-60 with the last 20 done; ``load_log`` lines ``HH:MM:SS load1 load5 load15``
    inside that window give the load. The plots setting and the data folder are the run's
    (``results/config.resolved.yaml``).
    """
    from survey.config import read_resolved
    from survey.graph import build_catalogue

    cfg = read_resolved(results)

    ids = sorted(p.name for p in results.iterdir() if p.is_dir() and p.name.isdigit())
    every = _records(results, ids)
    failed = sorted({r["_obsid"] for r in every if r.get("status") == "failed"})
    records = [r for r in every if r.get("status") == "done" and r.get("finished")]
    done = sorted({r["_obsid"] for r in records if r["step"] == "fit"})
    records = [r for r in records if r["_obsid"] in done]
    t0 = min(_utc(r["started"]) for r in records)
    t1 = max(_utc(r["finished"]) for r in records)
    wall = (t1 - t0).total_seconds()
    cpu = sum(float(r.get("cpu_s") or 0.0) for r in records)
    step_wall = sum(float(r.get("wall_s") or 0.0) for r in records)
    flat = flatness(records, hi=(max(1, len(done) - 20), len(done)))
    c0 = time.perf_counter()
    _paths, error, info = build_catalogue(results)
    cat_s = time.perf_counter() - c0
    loads = []
    if load_log is not None:
        lo, hi = t0.strftime("%H:%M:%S"), t1.strftime("%H:%M:%S")
        loads = [float(x.split()[1]) for x in load_log.read_text().splitlines() if lo <= x.split()[0] <= hi]
    out: dict[str, Any] = {
        "when": t1.strftime("%Y-%m-%d %H:%M UTC"),
        "cluster": cluster,
        "pipeline": "real",
        "plots": str(cfg["plots"]),
        "simulation": {k: list(v) if isinstance(v, tuple) else v for k, v in REAL_SIM.items()},
        "partial": f"stopped after {len(done)} of {n_planned} ObsIDs (figures from the step records)",
        "cpu_s_per_obsid": round(cpu / max(1, len(done)), 3),
        "n_obsids": len(done),
        "n_planned": n_planned,
        "workers": workers,
        "nodes": sorted({str(r.get("node")) for r in records}),
        "done": len(done),
        "failed": len(failed),
        "wall_s": round(wall, 1),
        "sum_step_cpu_s": round(cpu, 1),
        "sum_step_wall_s": round(step_wall, 1),
        "cpu_efficiency": round(cpu / (workers * wall), 3),
        "wall_efficiency": round(step_wall / (workers * wall), 3),
        "catalogue_s": round(cat_s, 2),
        "catalogue_rows": info.get("n_rows"),
        "catalogue_error": error,
        "driver_rss_mb": None,
        "worker_rss": {str(k): v for k, v in flat["per_worker"].items()},
        "worker_rss_worst_ratio": flat["worst_ratio"],
        "worker_rss_series": flat["series"][:: max(1, len(flat["series"]) // 100)],
        "load_before": [loads[0] if loads else float("nan")],
        "load_after": [loads[-1] if loads else float("nan")],
        "results_dir": str(results),
    }
    if loads:
        out["load_during"] = {
            "min": min(loads),
            "median": round(statistics.median(loads), 1),
            "max": max(loads),
        }
    data = Path(cfg["data_dir"])
    out["input_mb_per_obsid"] = round(_input_bytes(data, done) / max(1, len(done)) / 1e6, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", choices=("local", "slurm"), default="local")
    ap.add_argument("--n-obsids", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2, help="local workers, or SLURM nodes (one worker each)")
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--work-s", type=float, default=0.0, help="extra CPU per step [s]")
    ap.add_argument("--pipeline", choices=("real", "cheap"), default="real")
    ap.add_argument("--plots", choices=("none", "summary", "all"), default="none", help="real pipeline only")
    ap.add_argument("--label", default="", help="a note for the table (e.g. what changed)")
    ap.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "xmm-survey-bench-scale")
    ap.add_argument(
        "--table",
        nargs="*",
        metavar="RUN",
        help="print the markdown of the saved runs (survey_scale_<RUN>.json, in this order; default all) and stop",
    )
    ap.add_argument(
        "--summarize", type=Path, help="figures of a stopped run from its results folder, then stop"
    )
    ap.add_argument(
        "--load-log", type=Path, help="with --summarize: 'HH:MM:SS load1 ...' lines sampled during it"
    )
    args = ap.parse_args(argv)
    if args.summarize is not None:
        res = summarize_partial(
            args.summarize,
            cluster=args.cluster,
            workers=args.workers,
            n_planned=args.n_obsids,
            load_log=args.load_log,
        )
        res["label"] = args.label
        name = f"survey_scale_real_{args.cluster}{'_' + args.label.replace(' ', '-') if args.label else ''}"
        (HERE / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("_series")}, indent=1))
        return 0
    if args.table is not None:
        files = [HERE / f"survey_scale_{r}.json" for r in args.table] or sorted(
            HERE.glob("survey_scale_*.json")
        )
        runs = [json.loads(p.read_text()) for p in files]
        print(table(runs))
        return 0
    args.base.mkdir(parents=True, exist_ok=True)
    res = run_benchmark(
        cluster=args.cluster,
        n_obsids=args.n_obsids,
        workers=args.workers,
        events=args.events,
        work_s=args.work_s,
        base=args.base,
        pipeline=args.pipeline,
        plots=args.plots,
    )
    res["label"] = args.label
    name = f"survey_scale_real_{args.cluster}" if args.pipeline == "real" else f"survey_scale_{args.cluster}"
    out = HERE / f"{name}{'_' + args.label.replace(' ', '-') if args.label else ''}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    short = {k: v for k, v in res.items() if not k.endswith("_series")}
    print(json.dumps(short, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
