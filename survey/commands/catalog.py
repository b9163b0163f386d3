"""CLI: ``xmm-survey catalog build|query``, ``xmm-survey report`` and ``xmm-survey joint``.

Thin shell over :mod:`catalog` (and :mod:`xmmcore.fitting.joint` / :mod:`xmmcore.stack` for joint fits, mosaics); every command returns an exit code (errors via
:func:`xmmcore.errors.exit_code_for`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xmmcore.errors import InputDataError, XmmSurveyError, exit_code_for
from xmmcore.observation import CAMERAS

__all__ = ["add_parser"]


def _fail(exc: BaseException) -> int:
    print(f"xmm-survey: error: {exc}", file=sys.stderr)
    return exit_code_for(exc)


def _build(args: argparse.Namespace) -> int:
    import catalog
    from catalog import io

    try:
        df = catalog.build(args.results, strict=False)
        paths = io.write_catalogue(df, args.results, append=not args.replace)
    except XmmSurveyError as exc:
        return _fail(exc)
    n_obs = int(((df["kind"] == "obs") & (df["camera"] == "epic")).sum())
    n_fail = int(((df["kind"] == "obs") & (df["camera"] == "epic") & (df["status"] != "done")).sum())
    print(
        f"catalogue: {len(df)} rows ({n_obs} ObsIDs, {n_fail} not done) -> "
        + ", ".join(str(p) for p in paths.values())
    )
    for name, reason in sorted((df.attrs.get("skipped") or {}).items()):
        print(f"  {name}: {reason}")
    return 0


def _query(args: argparse.Namespace) -> int:
    import catalog
    from catalog import query

    try:
        df = catalog.load(args.catalogue or args.results)
        out = query.query(df, args.expr, all_rows=args.all_rows)
        if args.out:
            query.export(out, args.out, fmt=args.format)
            print(f"{len(out)} rows -> {args.out}")
        elif args.format == "csv":
            out.to_csv(sys.stdout, index=False)
        else:
            raise_missing_out(args.format)
    except XmmSurveyError as exc:
        return _fail(exc)
    return 0


def raise_missing_out(fmt: str) -> None:
    from xmmcore.errors import ConfigError

    raise ConfigError(f"--format {fmt} is binary: give --out FILE")


def _report(args: argparse.Namespace) -> int:
    from catalog import report

    try:
        if args.data is not None:  # the multi-observation path reads data/; the report reads only results/
            from xmmcore.stack import mosaic_observations

            mosaic_observations(args.data, args.results)
        index = report.build_report(args.results, out_dir=args.out)
    except XmmSurveyError as exc:
        return _fail(exc)
    print(f"report: {index}")
    return 0


def _joint(args: argparse.Namespace) -> int:
    from xmmcore.fitting import joint

    try:
        rec = joint.run_joint(
            args.results,
            target=args.target,
            obsids=args.obsids,
            model=args.model,
            engine=args.engine,
            cameras=args.cameras,
            stat=args.stat,
            notice_kev=tuple(args.notice_kev) if args.notice_kev else None,
            auto_set=False if args.no_auto_set else None,
            stack=args.stack,
            **({} if args.errors is None else {"errors": None if args.errors == "none" else args.errors}),
        )
    except XmmSurveyError as exc:
        return _fail(exc)
    if rec.get("missing"):
        print("joint fit not possible; missing inputs:\n  " + "\n  ".join(rec["missing"]))
        return InputDataError.exit_code
    for line in rec.get("notes") or []:
        print(line)
    print(
        f"joint fit of {rec['target']}: {len(rec['inputs'])} spectra -> {rec['path']} "
        "(run `xmm-survey catalog build` to add its rows to the catalogue)"
    )
    return 0


def add_parser(subparsers) -> None:
    """Register ``catalog`` (``build``, ``query``), ``report`` and ``joint`` on the ``xmm-survey`` parser."""
    cat = subparsers.add_parser("catalog", help="build or query the survey catalogue")
    csub = cat.add_subparsers(dest="catalog_command", required=True)

    b = csub.add_parser("build", help="(re)build results/catalogue.parquet and .fits from results/")
    b.add_argument("--results", type=Path, default=Path("results"), help="results folder [results]")
    b.add_argument("--replace", action="store_true", help="replace the catalogue instead of merging rows")
    b.set_defaults(func=_build)

    q = csub.add_parser("query", help='select rows, e.g. "kT > 3 and z < 0.2"')
    q.add_argument("expr", help="pandas query expression over catalogue columns")
    q.add_argument("--results", type=Path, default=Path("results"), help="results folder [results]")
    q.add_argument(
        "--catalogue", type=Path, default=None, help="catalogue file (default: results/catalogue.parquet)"
    )
    q.add_argument("--format", choices=("csv", "parquet", "fits"), default="csv", help="output format [csv]")
    q.add_argument("--out", type=Path, default=None, help="output file (csv goes to stdout when omitted)")
    q.add_argument("--all-rows", action="store_true", help="also per-camera and failed rows")
    q.set_defaults(func=_query)

    r = subparsers.add_parser("report", help="write the static HTML survey report")
    r.add_argument("--results", type=Path, default=Path("results"), help="results folder [results]")
    r.add_argument("--out", type=Path, default=None, help="report folder [results/report]")
    r.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder of a multi-ObsID target to mosaic (e.g. data/a907)",
    )
    r.set_defaults(func=_report)

    j = subparsers.add_parser("joint", help="joint fit of several ObsIDs of one target")
    j.add_argument("--results", type=Path, default=Path("results"), help="results folder [results]")
    j.add_argument("--target", required=True, help="target name (row key of the joint rows)")
    j.add_argument("--obsids", nargs="+", required=True, help="ObsIDs to fit jointly")
    j.add_argument("--model", default=None, help="model expression [fit.model of the run's config]")
    j.add_argument("--engine", default=None, help="fit engine [backend.fitting of the run's config]")
    j.add_argument("--cameras", nargs="+", default=list(CAMERAS), help=f"cameras [{' '.join(CAMERAS)}]")
    j.add_argument("--stat", default=None, help="fit statistic [fit.stat of the run's config]")
    j.add_argument("--notice-kev", nargs=2, type=float, default=None, help="fit band [fit.notice_kev]")
    j.add_argument(
        "--errors",
        default=None,
        choices=("covariance", "profile", "none"),
        help="parameter errors [fit.errors of the run's config: profile]",
    )
    j.add_argument(
        "--stack", action="store_true", help="also stack the spectra per camera and fit the stacks"
    )
    j.add_argument("--no-auto-set", action="store_true", help="do not freeze z and nH at the target metadata")
    j.set_defaults(func=_joint)
