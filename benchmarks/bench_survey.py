"""The real survey, measured: step CPU per ObsID, CPU-based scheduling efficiency, growth with N, worker memory.

Two measurements, both on simulated ObsIDs (``xmmcore.simulate.simulate_survey``) with the default
configuration (profile errors, default plots) unless overrides are given:

* **survey** - one LocalCluster of ``--workers`` worker processes (1 thread each) runs ``run_survey`` over
  6, then 24, then 48 ObsIDs (the batches are cumulative: the first 6, 18 more, 24 more), all on the same
  workers, as a long survey would.  Per batch: wall time, the sum of the steps' CPU seconds from their step
  records (``cpu_s``), CPU per ObsID, and the CPU-based efficiency ``sum(step CPU) / (workers x wall)``,
  which, unlike a wall-time formula, cannot rise when other work steals the CPU.  After each batch the RSS
  of every worker is read (``psutil``), so a leak shows as growth from the 6th to the 48th ObsID.
* **compare** (``--compare-ref REF``) - the same data and configuration run by the code at git commit
  ``REF`` (checked out in a temporary worktree) and by this tree, side by side: two processes started at
  once, each running ``survey.api.run_one`` over every ObsID in turn and reporting the process CPU seconds
  per ObsID.  The ratio is the median of REF's CPU per ObsID over ours.

The steps' wall of each batch is ``run_survey(..., catalogue=False)``: the catalogue, which the driver
builds after the steps, is timed apart.  ``--efficiency N`` is the issue-17 scheduling benchmark as one
command: 6 ObsIDs, then up to N on the same 2 workers; it prints the CPU-based efficiency of each batch
and of all N together and the worker RSS after N over after 6 (run it on an otherwise idle machine:
other processes' CPU lowers the efficiency, which is the point of a CPU-based figure).

Usage::

    python benchmarks/bench_survey.py [--batches 6,24,48] [--workers 2] [--compare-ref a1642db]
        [--compare-n 6] [--set fit.errors=profile ...]
    python benchmarks/bench_survey.py --efficiency 48
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xmmcore.tools import run_tool  # noqa: E402 - after the sys.path line above

__all__ = ["compare", "main", "measure", "run"]

SIM = {"exposure_ks": (20.0, 30.0), "cluster_counts": (6000.0, 15000.0)}

# Run by each side of the comparison in its own process, with PYTHONPATH set to that side's tree.
_RUNNER = r"""
import json, sys, time
from pathlib import Path
from survey.api import run_one
from survey.config import load_config
data, results, overrides, obsids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4].split(",")
cfg = load_config(None, {"data_dir": data, "results_dir": results, **overrides})
out = {}
for obsid in obsids:
    c0, w0 = time.process_time(), time.perf_counter()
    res = run_one(cfg, obsid)
    steps = {}
    for step in res:  # the step records' CPU seconds, where that side's records have them
        try:
            cpu = json.loads((Path(results) / obsid / "steps" / f"{step}.json").read_text()).get("cpu_s")
        except (OSError, ValueError):
            cpu = None
        if cpu is not None:
            steps[step] = cpu
    out[obsid] = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                  "ok": all(r.get("status") == "done" for r in res.values()), "step_cpu_s": steps}
print("RESULT " + json.dumps(out))
"""


def _simulate(data: Path, n: int, seed: int = 5) -> list[str]:
    from xmmcore.simulate import simulate_survey

    return simulate_survey(data, n_obsids=n, seed=seed, **SIM)


def _rss_mb(client: Any) -> list[float]:
    def rss() -> float:
        import gc

        import psutil

        gc.collect()
        return psutil.Process().memory_info().rss / 2**20

    return sorted(client.run(rss).values())


def measure(
    *, batches: tuple[int, ...] = (6, 24, 48), workers: int = 2, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the cumulative batches on one cluster; return per-batch numbers (see the module docstring)."""
    import dask
    from distributed import Client, LocalCluster

    from survey.api import run_survey
    from survey.cluster import SCHEDULER_CONFIG
    from survey.config import load_config
    from survey.graph import build_catalogue
    from survey.steps import read_record

    out: dict[str, Any] = {"workers": workers, "batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        all_ids = _simulate(root / "all", max(batches))
        out["simulate_s"] = time.perf_counter() - t0
        with dask.config.set(SCHEDULER_CONFIG):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                host="127.0.0.1",
                resources={"slots": 1},
            )
        client = Client(cluster)
        try:
            data = root / "data"
            data.mkdir()
            done = 0
            for n in batches:
                for obsid in all_ids[done:n]:
                    os.symlink(root / "all" / obsid, data / obsid)
                cfg = load_config(
                    None,
                    {
                        "data_dir": str(data),
                        "results_dir": str(root / "results"),
                        "cluster.workers": workers,
                        **(overrides or {}),
                    },
                )
                c0, t0 = time.process_time(), time.perf_counter()
                report = run_survey(cfg, client=client, progress=False, catalogue=False)
                wall = time.perf_counter() - t0
                driver_cpu = time.process_time() - c0
                # The catalogue is built by the driver after the steps: timed apart from the steps' wall.
                t1 = time.perf_counter()
                build_catalogue(cfg["results_dir"])
                catalogue_s = time.perf_counter() - t1
                new = all_ids[done:n]
                records = [
                    read_record(root / "results" / o, s) or {}
                    for o in new
                    for s in report.outcomes.get(o, {})
                ]
                cpu = sum(float(r.get("cpu_s", 0.0)) for r in records)
                out["batches"].append(
                    {
                        "n_total": n,
                        "n_new": len(new),
                        "failed": len(report.failed),
                        "wall_s": wall,
                        "driver_cpu_s": driver_cpu,
                        "catalogue_s": catalogue_s,
                        "step_cpu_s": cpu,
                        "cpu_per_obsid_s": cpu / max(len(new), 1),
                        "efficiency": cpu / (workers * wall),
                        "worker_rss_mb": _rss_mb(client),
                        "load": _load(),
                    }
                )
                done = n
        finally:
            client.close()
            cluster.close()
    return out


def compare(
    ref: str, *, n: int = 6, overrides: dict[str, Any] | None = None, timeout_s: float = 3600
) -> dict[str, Any]:
    """Same data, same configuration: git ``ref`` against this tree, two processes side by side."""
    overrides = {"fit.errors": "profile", **(overrides or {})}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        old_tree = root / "ref-tree"
        run_tool(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), ref],
            cwd=str(root),
            check_sas_errors=False,
        )
        try:
            ids = _simulate(root / "data", n)

            def side(name: str, tree: Path) -> dict[str, Any]:
                argv = [
                    sys.executable,
                    "-c",
                    _RUNNER,
                    str(root / "data"),
                    str(root / f"results-{name}"),
                    json.dumps(overrides),
                    ",".join(ids),
                ]
                env = {"PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"}
                run = run_tool(argv, cwd=str(root), env=env, timeout_s=timeout_s, check_sas_errors=False)
                line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{name} run printed no result: {run.stderr[-2000:]}")
                return json.loads(line[len("RESULT ") :])

            # Both sides at once, each in its own process: side by side on the same machine state.
            with ThreadPoolExecutor(max_workers=2) as pool:
                futs = {
                    name: pool.submit(side, name, tree) for name, tree in (("ref", old_tree), ("ours", REPO))
                }
                res = {name: f.result() for name, f in futs.items()}
        finally:
            try:
                run_tool(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)],
                    cwd=str(root),
                    check_sas_errors=False,
                )
            except Exception as exc:  # noqa: BLE001 - a leftover worktree is reported, not fatal
                print(f"git worktree remove: {exc}", file=sys.stderr)
    ref_cpu = [v["cpu_s"] for v in res["ref"].values()]
    our_cpu = [v["cpu_s"] for v in res["ours"].values()]

    def per_step(side: dict[str, Any]) -> dict[str, float]:
        """Median over the ObsIDs of each step's CPU seconds (step records; a1642db's have none)."""
        names = {s for v in side.values() for s in v.get("step_cpu_s", {})}
        return {
            s: statistics.median(v["step_cpu_s"][s] for v in side.values() if s in v.get("step_cpu_s", {}))
            for s in sorted(names)
        }

    return {
        "ref": ref,
        "n": n,
        "overrides": overrides,
        "ref_cpu_per_obsid_s": statistics.median(ref_cpu),
        "ours_cpu_per_obsid_s": statistics.median(our_cpu),
        "ratio": statistics.median(ref_cpu) / statistics.median(our_cpu),
        "ref_step_cpu_s": per_step(res["ref"]),
        "ours_step_cpu_s": per_step(res["ours"]),
        "ref_ok": sum(v["ok"] for v in res["ref"].values()),
        "ours_ok": sum(v["ok"] for v in res["ours"].values()),
    }


#: The main of when issue 17 was filed: the step-time target is 3x less CPU per ObsID than this commit.
REF_COMMIT = "a1642db"


def _load() -> str:
    return "load average " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def compare_row(ref: str = REF_COMMIT, *, n: int = 6) -> dict[str, Any]:
    """Row: CPU per simulated ObsID of ``ref`` over this tree's, both run side by side (see the docstring)."""
    before = _load()
    c = compare(ref, n=n)
    return {
        "name": f"survey step CPU per ObsID, {ref} / this tree (same data and config, side by side)",
        "value": round(c["ratio"], 3),
        "unit": "x",
        "target": ">= 3",
        "ratio": round(c["ratio"], 3),
        "ok": c["ratio"] >= 3.0 and c["ref_ok"] == c["ours_ok"] == n,
        "note": (
            f"{ref} {c['ref_cpu_per_obsid_s']:.2f} CPU-s vs {c['ours_cpu_per_obsid_s']:.2f} CPU-s per ObsID "
            f"(median of {n}; default config, profile errors, default plots); {c['ref_ok']}/{n} and "
            f"{c['ours_ok']}/{n} ObsIDs done; {before} before, {_load()} after"
        ),
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``: the side-by-side step-time ratio, then the 6/24/48 survey."""
    return [compare_row(n=3 if quick else 6), *efficiency_rows(12 if quick else 48, batches=None)]


def efficiency_rows(
    n: int,
    *,
    workers: int = 2,
    batches: tuple[int, ...] | None = (6,),
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Survey rows: CPU-based efficiency per batch and over all ``n`` ObsIDs, worker RSS after n / after 6.

    ``batches=None``: 6, 24, 48 (or 6, 12 for n = 12); otherwise the given first batches, then ``n``.
    """
    if batches is None:
        cuts = tuple(b for b in (6, 24) if b < n) + (n,)
    else:
        cuts = tuple(b for b in batches if b < n) + (n,)
    before = _load()
    m = measure(batches=cuts, workers=workers, overrides=overrides)
    rows: list[dict[str, Any]] = []
    for b in m["batches"]:
        rows.append(
            {
                "name": f"survey: ObsIDs {b['n_total'] - b['n_new'] + 1}-{b['n_total']}, CPU-based efficiency",
                "value": round(b["efficiency"], 3),
                "unit": "",
                "target": ">= 0.85",
                "ratio": round(b["efficiency"] / 0.85, 3),
                "ok": b["efficiency"] >= 0.85,
                "note": (
                    f"{b['cpu_per_obsid_s']:.2f} step CPU-s per ObsID, wall {b['wall_s']:.1f} s on "
                    f"{m['workers']} workers, worker RSS "
                    f"{', '.join(f'{r:.0f}' for r in b['worker_rss_mb'])} MB; {b['load']}"
                ),
            }
        )
    cpu = sum(b["step_cpu_s"] for b in m["batches"])
    wall = sum(b["wall_s"] for b in m["batches"])
    eff = cpu / (m["workers"] * wall)
    catalogue_s = ", ".join(f"{b['catalogue_s']:.1f}" for b in m["batches"])
    rows.append(
        {
            "name": f"survey: all {n} ObsIDs on {m['workers']} workers, CPU-based efficiency",
            "value": round(eff, 3),
            "unit": "",
            "target": ">= 0.85",
            "ratio": round(eff / 0.85, 3),
            "ok": eff >= 0.85,
            "note": (
                f"sum of step CPU {cpu:.1f} s / ({m['workers']} x wall {wall:.1f} s of "
                f"{len(m['batches'])} runs: {', '.join(str(b['n_new']) for b in m['batches'])} ObsIDs); "
                f"{sum(b['failed'] for b in m['batches'])} failed; driver (scheduler) CPU "
                f"{sum(b['driver_cpu_s'] for b in m['batches']):.1f} s; catalogue built after each run "
                f"in {catalogue_s} s (not in the wall); "
                f"{before} before, {_load()} after"
            ),
        }
    )
    first, last = m["batches"][0], m["batches"][-1]
    growth = max(last["worker_rss_mb"]) / max(first["worker_rss_mb"])
    rows.append(
        {
            "name": f"survey: worker RSS after {last['n_total']} ObsIDs / after {first['n_total']}",
            "value": round(growth, 3),
            "unit": "x",
            "target": "<= 1.2",
            "ratio": round(growth, 3),
            "ok": growth <= 1.2,
            "note": (
                f"max worker RSS {max(first['worker_rss_mb']):.0f} -> {max(last['worker_rss_mb']):.0f} MB; "
                f"{before} at the start"
            ),
        }
    )
    return rows


def _parse_set(items: list[str]) -> dict[str, Any]:
    from survey.config import parse_override

    return dict(parse_override(s) for s in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="6,24,48", help="cumulative ObsID counts")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compare-ref", default=None, help="git commit to compare step CPU per ObsID with")
    ap.add_argument("--compare-n", type=int, default=6)
    ap.add_argument("--skip-survey", action="store_true")
    ap.add_argument(
        "--efficiency",
        type=int,
        default=None,
        metavar="N",
        help="the scheduling benchmark of issue 17: 6 then N ObsIDs on --workers (default 2), one table",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    overrides = _parse_set(args.set)
    if args.compare_ref:
        c = compare(args.compare_ref, n=args.compare_n, overrides=overrides)
        print(json.dumps(c, indent=1))
    if args.efficiency:
        for row in efficiency_rows(args.efficiency, workers=args.workers, overrides=overrides):
            print(f"| {row['name']} | {row['value']} | {row['target']} | {row['note']} |")
        return 0
    if not args.skip_survey:
        m = measure(
            batches=tuple(int(x) for x in args.batches.split(",")), workers=args.workers, overrides=overrides
        )
        print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
