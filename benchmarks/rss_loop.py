"""Worker-memory growth of the real per-ObsID steps in one process, without Dask (a diagnostic, not a CI test).

Runs ``survey.api.run_one`` (the job-array path: the same ``execute_step`` records, logs and science code a
Dask worker runs) over N small simulated ObsIDs of ``bench_survey_scale.REAL_SIM`` in a plain loop and writes,
per ObsID, the process RSS and (``--tracemalloc``) the Python heap traced by ``tracemalloc``; with
``--tracemalloc`` it also prints the allocation sites that grew most between ObsID ``--from`` and the last one.
A growth of RSS that the traced heap does not show is native memory (allocator fragmentation, C caches).

Usage::

    nice -n 10 python benchmarks/rss_loop.py --n-obsids 150 --plots summary --tracemalloc
    nice -n 10 python benchmarks/rss_loop.py --n-obsids 150 --plots summary --out rss.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

__all__ = ["main"]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-obsids", type=int, default=150)
    ap.add_argument("--plots", choices=("none", "summary", "all"), default="summary")
    ap.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "xmm-scale-bench")
    ap.add_argument("--tracemalloc", action="store_true", help="trace the Python heap (slower, ~2x)")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth of tracemalloc")
    ap.add_argument("--from", dest="start", type=int, default=20, help="ObsID of the first snapshot")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="JSON of the per-ObsID RSS (and traced heap)")
    args = ap.parse_args(argv)

    from bench_survey_scale import REAL_SIM, _real_data

    from survey.api import run_one
    from survey.config import load_config

    data = _real_data(
        args.base, max(args.n_obsids, 500) if (args.base / "data-real-500").exists() else args.n_obsids
    )
    ids = sorted(p.name for p in data.iterdir() if p.is_dir())[: args.n_obsids]
    results = Path(tempfile.mkdtemp(prefix="results-rss-loop-", dir=args.base))
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(results),
            "obsids": ids,
            "joint.enabled": False,
            "plots": args.plots,
            "cameras": list(REAL_SIM["cameras"]),
        },
    )
    if args.tracemalloc:
        tracemalloc.start(args.frames)
    series, first = [], None
    t0 = time.perf_counter()
    for i, obsid in enumerate(ids, 1):
        outcome = run_one(cfg, obsid)
        bad = {s: o.get("reason") for s, o in outcome.items() if o.get("status") not in ("done", "cached")}
        if bad:
            print(f"{obsid}: {bad}", file=sys.stderr)
        gc.collect()
        row = {
            "n": i,
            "obsid": obsid,
            "rss_mb": round(_rss_mb(), 1),
            "t_s": round(time.perf_counter() - t0, 1),
        }
        if args.tracemalloc:
            row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 2)
            if i == args.start:
                first = tracemalloc.take_snapshot()
        series.append(row)
        print(json.dumps(row), flush=True)
    if first is not None:
        last = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diff = last.filter_traces(filters).compare_to(
            first.filter_traces(filters), "traceback" if args.frames > 1 else "lineno"
        )
        print(f"\ntop {args.top} growth sites between ObsID {args.start} and {len(ids)}:")
        for stat in diff[: args.top]:
            print(
                f"{stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks  {stat.traceback.format()[-1].strip()}"
            )
            if args.frames > 1:
                for line in stat.traceback.format()[:-1]:
                    print("        " + line.strip())
    if args.out:
        args.out.write_text(
            json.dumps({"plots": args.plots, "results": str(results), "series": series}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
