"""Worker-memory growth of the real per-ObsID steps in one process, without Dask (a diagnostic, not a CI test).

Runs ``survey.api.run_one`` (the job-array path: the same ``execute_step`` records, logs and science code a
Dask worker runs) over N small simulated ObsIDs of ``bench_survey_scale.REAL_SIM`` in a plain loop and writes,
per ObsID, the process RSS and (``--tracemalloc``) the Python heap traced by ``tracemalloc``; with
``--tracemalloc`` it also prints the allocation sites that grew most between ObsID ``--from`` and the last one.
``--malloc`` adds glibc's own count (``mallinfo2``: bytes in use vs free but kept), ``--objects`` the live
Python objects by type. A growth of "in use" that neither the traced heap nor the objects show is native
memory held by a C library; a growth of "free" only is allocator fragmentation (``--trim`` measures it).

This found issue 18's growth: ``--malloc`` showed ~0.5 MB per ObsID in use, all of it in the fit step, not
traced by tracemalloc: the XSPEC library's tbabs cross-section cache (see ``xmmcore.fitting.fluxes``).

Usage::

    nice -n 10 python benchmarks/rss_loop.py --n-obsids 60 --plots none --malloc --out rss.json
    nice -n 10 python benchmarks/rss_loop.py --n-obsids 60 --plots none --objects --from 10
    nice -n 10 python benchmarks/rss_loop.py --n-obsids 45 --plots summary --tracemalloc --from 10
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

__all__ = ["main"]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc_stats(libc: ctypes.CDLL) -> dict[str, float]:
    """glibc's view of the main heap and mmap'd chunks [MB]: in use (uordblks + hblkhd) vs free but kept."""
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return {
        "malloc_used_mb": round((m.uordblks + m.hblkhd) / 1e6, 1),
        "malloc_free_mb": round(m.fordblks / 1e6, 1),
    }


def _object_counts() -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _trim_rss() -> tuple[float, float]:
    before = _rss_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return round(before, 1), round(_rss_mb(), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-obsids", type=int, default=150)
    ap.add_argument("--plots", choices=("none", "summary", "all"), default="summary")
    ap.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "xmm-scale-bench")
    ap.add_argument("--tracemalloc", action="store_true", help="trace the Python heap (several times slower)")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth of tracemalloc")
    ap.add_argument("--from", dest="start", type=int, default=20, help="ObsID of the first snapshot")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--malloc", action="store_true", help="glibc mallinfo2 after each ObsID (in use vs free)")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) after each ObsID (RSS after it too)")
    ap.add_argument(
        "--objects",
        action="store_true",
        help="count live objects by type after each ObsID (cheap; no tracemalloc)",
    )
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
    base_over: dict[str, Any] = {
        "data_dir": str(data),
        "results_dir": str(results),
        "obsids": ids,
        "joint.enabled": False,
        "plots": args.plots,
        "cameras": list(REAL_SIM["cameras"]),
    }
    cfg = load_config(None, base_over)
    if args.tracemalloc:
        tracemalloc.start(args.frames)
    series, first, counts0 = [], None, None
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
        if args.malloc or args.trim:
            libc = ctypes.CDLL("libc.so.6")
            row.update(_malloc_stats(libc))
            if args.trim:
                libc.malloc_trim(0)
                row["rss_trimmed_mb"] = round(_rss_mb(), 1)
        if args.objects:
            counts = _object_counts()
            row["objects"] = sum(counts.values())
            row["loggers"] = len(logging.Logger.manager.loggerDict)
            if i == args.start:
                counts0 = counts
        series.append(row)
        print(json.dumps(row), flush=True)
    if args.malloc and not args.trim:
        print("RSS before / after one malloc_trim(0) at the end [MB]:", _trim_rss())
    if counts0 is not None:
        grown = sorted(((counts[k] - counts0.get(k, 0), k) for k in counts), reverse=True)[: args.top]
        print(f"\nobject types that grew most between ObsID {args.start} and {len(ids)}:")
        for d, k in grown:
            print(f"{d:+8d} {k}  ({counts[k]} live)")
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
