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
        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        out = query.query(df, args.expr, all_rows=args.all_rows, columns=columns)
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


#: ObsIDs of one target: redshifts within this, pointings within this many arcmin (the EPIC field radius).
JOINT_MAX_DZ = 0.005
JOINT_MAX_SEPARATION_ARCMIN = 15.0


def check_joint_obsids(results: Path, target: str, obsids: list[str], *, force: bool = False) -> list[str]:
    """At least two distinct ObsIDs, of one target: same name, redshift and position in their metadata.

    Returns notes (what disagrees, when ``force``); without ``force`` a disagreement is a ``ConfigError``
    that lists each ObsID's name, z and position.
    """
    import math

    from xmmcore.errors import ConfigError
    from xmmcore.fitting.joint import target_meta

    distinct = list(dict.fromkeys(obsids))
    if len(distinct) < 2:
        raise ConfigError(
            f"joint --target {target}: a joint fit needs at least 2 ObsIDs of the target, got {len(distinct)} "
            f"({' '.join(distinct)}); fit one ObsID with `xmm-survey run` or `xmm-survey fit`"
        )
    metas = {o: target_meta(results, [o]) for o in distinct}

    def num(meta: dict, key: str) -> float:
        try:
            return float(meta.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan

    problems = []
    names = {str(m.get("name")) for m in metas.values() if m.get("name")}
    if len(names) > 1:
        problems.append(f"target names differ ({', '.join(sorted(names))})")
    zs = [num(m, "z") for m in metas.values()]
    zs = [z for z in zs if math.isfinite(z)]
    if zs and max(zs) - min(zs) > JOINT_MAX_DZ:
        problems.append(f"redshifts differ by {max(zs) - min(zs):.4f} (more than {JOINT_MAX_DZ})")
    pos = [(num(m, "ra"), num(m, "dec")) for m in metas.values()]
    pos = [p for p in pos if all(math.isfinite(v) for v in p)]
    if len(pos) >= 2:
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        sky = SkyCoord([p[0] for p in pos] * u.deg, [p[1] for p in pos] * u.deg)
        sep = max(float(sky[i].separation(sky).max().arcmin) for i in range(len(pos)))
        if sep > JOINT_MAX_SEPARATION_ARCMIN:
            problems.append(
                f"positions are up to {sep:.1f} arcmin apart (more than {JOINT_MAX_SEPARATION_ARCMIN:g})"
            )
    if not problems:
        return []
    table = "; ".join(
        f"{o}: {m.get('name', '?')} z={m.get('z', '?')} ra={m.get('ra', '?')} dec={m.get('dec', '?')}"
        for o, m in metas.items()
    )
    text = (
        f"joint --target {target}: these ObsIDs may not be one target: " + "; ".join(problems) + f" [{table}]"
    )
    if not force:
        raise ConfigError(text + "; give --force to fit them jointly anyway")
    return [text]


def _joint(args: argparse.Namespace) -> int:
    from xmmcore.fitting import joint

    from .fit import parse_notice

    try:
        notes = check_joint_obsids(args.results, args.target, list(args.obsids), force=args.force)
        for line in notes:
            print(f"warning: {line}", file=sys.stderr)
        rec = joint.run_joint(
            args.results,
            target=args.target,
            obsids=args.obsids,
            model=args.model,
            engine=args.engine,
            cameras=args.cameras,
            stat=args.stat,
            notice_kev=parse_notice(args.notice) if args.notice else None,
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
    q.add_argument(
        "--columns", metavar="A,B,C", default=None, help="only these columns, in this order (e.g. obsid,kT,z)"
    )
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
    j.add_argument("--obsids", nargs="+", required=True, help="ObsIDs of the target to fit jointly (>= 2)")
    j.add_argument("--model", default=None, help="model expression [fit.model of the run's config]")
    j.add_argument("--engine", default=None, help="fit engine [backend.fitting of the run's config]")
    j.add_argument("--cameras", nargs="+", default=list(CAMERAS), help=f"cameras [{' '.join(CAMERAS)}]")
    j.add_argument("--stat", default=None, help="fit statistic [fit.stat of the run's config]")
    j.add_argument(
        "--notice",
        default=None,
        metavar="LO-HI",
        help="energy range in keV, as `fit --notice` [fit.notice_kev of the run's config: 0.5-7.0]",
    )
    j.add_argument(
        "--errors",
        default=None,
        choices=("profile", "covariance", "none"),
        help="parameter errors [fit.errors of the run's config: profile, as `fit`]",
    )
    j.add_argument(
        "--force",
        action="store_true",
        help="fit even when names, redshifts or positions of the ObsIDs differ",
    )
    j.add_argument(
        "--stack", action="store_true", help="also stack the spectra per camera and fit the stacks"
    )
    j.add_argument("--no-auto-set", action="store_true", help="do not freeze z and nH at the target metadata")
    j.set_defaults(func=_joint)
