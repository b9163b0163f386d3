"""Run every benchmark and print ONE markdown table (also written to ``benchmarks/results.md``).

Usage::

    python benchmarks/run.py            # full run (< 10 min on 2 cores)
    python benchmarks/run.py --quick    # fewer repeats / smaller inputs where a benchmark allows it
    python benchmarks/run.py --only memory catalog

Each benchmark module ``benchmarks/bench_<name>.py`` exposes ``run(quick: bool) -> list[dict]``; a row
has ``name``, ``value``, ``unit``, ``target`` and ``ratio`` (value relative to the target or to the
reference tool, as the benchmark defines it) and may add ``ok`` and ``note``. A module without
``run()`` is called through its ``main()`` and the lines it prints become the note. A benchmark that
fails gives a row saying so; the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import math
import os
import platform
import re
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: ``results.md`` from this line on is kept when the table above it is rewritten.
KEEP_MARKER = "<!-- kept: survey-scale -->"
REPO = HERE.parent

__all__ = ["BENCHMARKS", "collect", "format_table", "main"]

#: (module, what it measures) in table order.
BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("bench_reduce", "reduction throughput ratio (python backend vs reference)"),
    ("bench_fit", "fit time ratio vs Sherpa"),
    ("bench_fit_thermal", "thermal fits with profile errors vs a careful numpy/scipy baseline"),
    ("bench_scheduling", "orchestration overhead on synthetic steps, no-op resume overhead"),
    ("bench_survey", "real pipeline: CPU-based efficiency, CPU per ObsID over 6/24/48 ObsIDs, worker RSS"),
    ("bench_memory", "peak memory per worker, 5e6-event ObsID"),
    ("bench_catalog", "catalogue query time on 100,000 rows"),
)


def _import(module: str):
    for path in (str(HERE), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module(module)


def _row(raw: dict[str, Any], module: str, seconds: float) -> dict[str, Any]:
    row = {
        "name": str(raw.get("name", module)),
        "value": raw.get("value"),
        "unit": str(raw.get("unit", "")),
        "target": "" if raw.get("target") is None else str(raw.get("target")),
        "ratio": raw.get("ratio"),
        "ok": raw.get("ok"),
        "note": str(raw.get("note", "") or ""),
        "module": module,
        "seconds": seconds,
    }
    return row


def _from_main(mod: Any, what: str) -> dict[str, Any]:
    """Call a benchmark's ``main()`` (own argv, stdout captured) and turn what it prints into a row.

    A printed ``ratio ... = <number>`` becomes the row's value and ratio; every line goes to the note.
    """
    buf = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [mod.__name__]  # the benchmark's argparse must not see run.py's options
    code: Any = 0
    try:
        with contextlib.redirect_stdout(buf):
            try:
                code = mod.main([]) if inspect.signature(mod.main).parameters else mod.main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = saved_argv
    lines = [line.strip() for line in buf.getvalue().splitlines() if line.strip()]
    row: dict[str, Any] = {"name": what, "ok": code in (0, None), "note": " ; ".join(lines)[:400]}
    for line in lines:
        m = re.search(r"ratio[^=]*=\s*([-+0-9.eE]+)", line)
        if m:
            row["value"] = row["ratio"] = float(m.group(1))
            row["unit"] = "x"
            t = re.search(r"target\s*([<>]=?\s*[0-9.]+)", line)
            row["target"] = t.group(1) if t else ""
    if "value" not in row:
        row["ok"] = None  # nothing measured against a reference
    return row


def _run_one(module: str, what: str, quick: bool) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    if not (HERE / f"{module}.py").exists():
        return [_row({"name": what, "note": f"benchmarks/{module}.py not present"}, module, 0.0)]
    try:
        mod = _import(module)
        if hasattr(mod, "run"):
            raw = mod.run(quick=quick)
            rows = raw if isinstance(raw, list) else [raw]
            return [_row(r, module, time.perf_counter() - t0) for r in rows]
        if hasattr(mod, "main"):
            return [_row(_from_main(mod, what), module, time.perf_counter() - t0)]
        return [
            _row({"name": what, "note": f"{module} has neither run() nor main()", "ok": False}, module, 0.0)
        ]
    except Exception as exc:  # noqa: BLE001 - a broken benchmark must not hide the others
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return [
            _row(
                {"name": what, "ok": False, "note": f"FAILED {type(exc).__name__}: {exc} ({where})"[:400]},
                module,
                time.perf_counter() - t0,
            )
        ]


def collect(*, quick: bool = False, only: list[str] | None = None, log=sys.stderr) -> list[dict[str, Any]]:
    """Run the benchmarks (all, or those whose module name contains one of ``only``) and return the rows."""
    rows: list[dict[str, Any]] = []
    for module, what in BENCHMARKS:
        if only and not any(o in module for o in only):
            continue
        print(f"[bench] {module} ...", file=log, flush=True)
        got = _run_one(module, what, quick)
        print(f"[bench] {module} done in {sum(r['seconds'] for r in got[:1]):.1f} s", file=log, flush=True)
        rows += got
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def format_table(
    rows: list[dict[str, Any]], *, elapsed_s: float, quick: bool, load_before: str = "", load_after: str = ""
) -> str:
    """Markdown table of the rows with a header line saying where and when it ran."""
    lines = [
        "| benchmark | value | unit | target | ratio | meets target | notes |",
        "|---|---:|---|---|---:|:---:|---|",
    ]
    for r in rows:
        ok = "—" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        lines.append(
            f"| {_fmt(r['name'])} | {_fmt(r['value'])} | {_fmt(r['unit'])} | {_fmt(r['target'])} | "
            f"{_fmt(r['ratio'])} | {ok} | {_fmt(r['note'])} |"
        )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = os.cpu_count() or 0
    head = (
        f"Benchmarks ({'quick' if quick else 'full'} run, {when}; {platform.machine()}, {cpu} cores, "
        f"Python {platform.python_version()}; total {elapsed_s:.0f} s; load average (1/5/15 min) "
        f"{load_before or _load()} at the start, {load_after or _load()} at the end). "
        f"Reproduce: `python benchmarks/run.py` (or `make bench`)."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def _kept_sections(old: str) -> str:
    """What follows the table in ``results.md`` and is kept: from the keep marker or the first ``## `` heading.

    Other benchmarks own those sections (injection-recovery, the 500-ObsID survey, ...): run.py rewrites
    only the table above them.
    """
    starts = [i for i in (old.find(KEEP_MARKER), old.find("\n## ") + 1 if "\n## " in old else -1) if i >= 0]
    return old[min(starts) :] if starts else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the xmm-survey benchmarks and print one markdown table."
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats / smaller inputs")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only benchmarks whose module name contains these"
    )
    parser.add_argument(
        "--out", default=str(HERE / "results.md"), help="markdown file to write (default %(default)s)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    load_before = _load()
    rows = collect(quick=args.quick, only=args.only)
    table = format_table(
        rows,
        elapsed_s=time.perf_counter() - t0,
        quick=args.quick,
        load_before=load_before,
        load_after=_load(),
    )
    print(table)
    if not args.no_write:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from xmmcore.fsutil import atomic_write_text

        # sections measured by other, longer benchmarks (bench_survey_scale.py) stay below the table
        try:
            old = Path(args.out).read_text(encoding="utf-8")
        except OSError:
            old = ""
        kept = _kept_sections(old)
        atomic_write_text(args.out, table.rstrip("\n") + "\n\n" + kept if kept else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
