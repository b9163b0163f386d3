"""``xmm-survey``: the command line, a thin shell over :mod:`survey.api`.

Sub-commands here: ``run``, ``run-one``, ``status``, ``init``, ``retry``, ``clean``. Others are
registered from ``survey/commands/<name>.py`` (``fit``, ``models``, ``simulate``, ``plan``,
``catalog``) when importable; each module exposes ``add_parser(subparsers)`` and sets
``func(args) -> int`` on its parser. Exit codes: 0 success, 2 configuration error, 3 bad input data,
4 tool failure, 5 transient failure, 1 anything else (``xmmcore.errors.exit_code_for``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmmcore.errors import (
    EXIT_OK,
    EXIT_UNEXPECTED,
    ConfigError,
    XmmSurveyError,
    exit_code_for,
    exit_code_for_name,
)

__all__ = ["PLUGIN_COMMANDS", "build_parser", "main"]

PLUGIN_COMMANDS = ("fit", "models", "simulate", "plan", "catalog")


def _add_config_args(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration (keys of `xmm-survey init`)")
    if data:
        p.add_argument("--data", metavar="DIR", help="data folder with <obsid>/ sub-folders (data_dir)")
    p.add_argument("--results", metavar="DIR", help="results folder (results_dir)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set fit.stat=chi2 --set cluster.slurm.cores=4 (repeatable)",
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N", help="number of workers (cluster.workers)")
    p.add_argument(
        "--cluster",
        metavar="local|slurm|ADDRESS",
        help="local (default), slurm (dask-jobqueue) or a scheduler address tcp://host:port",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(getattr(args, "overrides", []) or [])
    if getattr(args, "data", None):
        out.append(f"data_dir={json.dumps(str(Path(args.data).resolve()))}")
    if getattr(args, "results", None):
        out.append(f"results_dir={json.dumps(str(Path(args.results).resolve()))}")
    if getattr(args, "workers", None) is not None:
        out.append(f"cluster.workers={args.workers}")
    cluster = getattr(args, "cluster", None)
    if cluster:
        if cluster in ("local", "slurm", "address"):
            out.append(f"cluster.kind={cluster}")
        else:
            out += ["cluster.kind=address", f"cluster.address={json.dumps(cluster)}"]
    if getattr(args, "obsids", None):
        out.append(f"obsids={json.dumps(args.obsids)}")
    if getattr(args, "targets", None):
        out.append(f"targets_csv={json.dumps(str(Path(args.targets).resolve()))}")
    if getattr(args, "reuse_across_code", False):
        out.append("pipeline.reuse_across_code=true")
    return out


def _load(args: argparse.Namespace, *, for_run: bool = False) -> Any:
    from .config import load_config

    return load_config(args.config, _overrides(args), for_run=for_run)


def _report_exit(report: Any) -> int:
    print(report.summary())
    if report.failed:
        first = next(iter(sorted(report.failed.items())))[1]
        exc_name = first.split(":", 2)[1].strip() if first.count(":") >= 2 else ""
        return exit_code_for_name(exc_name)
    return EXIT_OK if report.catalogue_error is None else EXIT_UNEXPECTED


def cmd_run(args: argparse.Namespace) -> int:
    from .api import run_survey

    cfg = _load(args, for_run=not args.catalogue_only)
    if args.catalogue_only:
        from .graph import build_catalogue
        from .lock import results_lock

        with results_lock(cfg["results_dir"], what="catalogue build"):
            paths, error, _info = build_catalogue(cfg["results_dir"])
        print(error or "catalogue: " + ", ".join(map(str, paths)))
        return EXIT_OK if error is None else EXIT_UNEXPECTED
    from .cluster import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a cancelled driver job closes its cluster (its worker jobs) on the way out
        report = run_survey(
            cfg,
            progress=not args.no_progress,
            retry_failed=args.retry_failed,
            catalogue=not args.no_catalogue,
            quiet_dask=not args.verbose,
        )
    return _report_exit(report)


#: Thread-count variables of BLAS/OpenMP; a user who sets one keeps their choice.
_BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_as_dask_workers() -> contextlib.AbstractContextManager[object]:
    """One BLAS/OpenMP thread per process, as Dask's nanny gives its workers (``pre-spawn-environ``).

    ``run-one`` (a SLURM array task, a single ObsID) otherwise lets OpenBLAS start a thread per core for
    the pipeline's small matrix calls: slower, and on a shared node it takes the cores of other jobs.
    """
    if any(os.environ.get(v) for v in _BLAS_THREAD_VARS):
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def cmd_run_one(args: argparse.Namespace) -> int:
    from .api import read_obsid_list, run_one
    from .config import check_environment

    cfg = _load(args)
    check_environment(cfg.to_dict(), where="run-one", cluster=False)  # a compute node needs no sbatch
    obsid = args.obsid
    if obsid is None:
        if not args.obsid_list or args.index is None:
            raise ConfigError("run-one needs --obsid, or --obsid-list FILE with --index N (1-based)")
        ids = read_obsid_list(args.obsid_list)
        if not 1 <= args.index <= len(ids):
            raise ConfigError(f"--index {args.index} is outside 1..{len(ids)} of {args.obsid_list}")
        obsid = ids[args.index - 1]
    with _blas_as_dask_workers():
        outcomes = run_one(cfg, obsid, retry_failed=args.retry_failed)
    worst = 0
    for step, out in outcomes.items():
        print(
            f"{obsid} {step}: {out['status']}"
            + (f" ({out.get('exception')}: {out.get('reason')})" if out["status"] == "failed" else "")
        )
        if out["status"] == "failed" and not worst:
            worst = exit_code_for_name(out.get("exception"))
    return worst


def cmd_status(args: argparse.Namespace) -> int:
    from .status import collect_status, format_status

    results = args.results or _load(args)["results_dir"]
    status = collect_status(results)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print(format_status(status, width=None if args.long else 60))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .config import write_example_config

    path = write_example_config(args.path, overwrite=args.force)
    print(f"wrote {path} (every key with its default; delete what you do not change)")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from .api import run_survey
    from .config import check_environment, load_config, read_resolved
    from .status import failed_obsids

    if args.config:
        cfg = load_config(args.config, _overrides(args))
    else:
        results = Path(args.results or "results")
        cfg = read_resolved(results)
        extra = _overrides(args)
        if extra:
            cfg = cfg.with_overrides(extra)
    check_environment(cfg.to_dict(), where="retry")
    todo = failed_obsids(cfg["results_dir"])
    if not todo:
        print("no failed ObsIDs")
        return 0
    print(f"retrying {len(todo)} ObsIDs: {' '.join(todo)}")
    report = run_survey(
        cfg,
        obsids=todo,
        retry_failed=True,
        progress=not args.no_progress,
        catalogue=not args.no_catalogue,
        quiet_dask=not args.verbose,
    )
    return _report_exit(report)


def cmd_clean(args: argparse.Namespace) -> int:
    from .status import clean_obsid

    results = args.results or _load(args)["results_dir"]
    for obsid in args.obsid:
        removed = clean_obsid(results, obsid, step=args.step)
        print(
            f"{obsid}: removed {len(removed)} path(s)" + (f" from step {args.step} on" if args.step else "")
        )
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    import socket

    from xmmcore.observation import validate_obsid

    from .lock import LOCK_NAME, break_lock

    results = Path(args.results or _load(args)["results_dir"])
    if args.obsid:
        validate_obsid(args.obsid)  # a plain ObsID name, never a path
    folder = results / args.obsid if args.obsid else results
    holder = break_lock(folder)
    if holder is None:
        print(f"{folder}: not locked (no {LOCK_NAME})")
        return 0
    who = (
        f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')} "
        f"({holder.get('command', '')})"
        if holder
        else "an unreadable lock"
    )
    print(f"{folder}: removed the lock of {who}")
    if holder.get("host") not in (None, socket.gethostname()):
        print(
            f"  that run was on another host ({holder.get('host')}): if it is still alive there, it and the next "
            "run both write this folder; stop it first"
        )
    return 0


def _plugin_names() -> list[str]:
    """The known plug-in commands first, then any other module found in ``survey/commands/``."""
    import pkgutil

    names = list(PLUGIN_COMMANDS)
    try:
        from . import commands

        names += sorted(
            m.name
            for m in pkgutil.iter_modules(commands.__path__)
            if m.name not in names and not m.name.startswith("_")
        )
    except ImportError:
        pass
    return names


def _register_plugins(sub: Any) -> None:
    for name in _plugin_names():
        modname = f"survey.commands.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name in (modname, "survey.commands"):
                continue
            _broken(sub, name, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not break the whole CLI
            _broken(sub, name, exc)
            continue
        if hasattr(mod, "add_parser"):
            mod.add_parser(sub)


def _broken(sub: Any, name: str, exc: BaseException) -> None:
    p = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})")

    def fail(_args: argparse.Namespace) -> int:
        print(f"error: the {name} command cannot be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED

    p.set_defaults(func=fail)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmm-survey")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``xmm-survey`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="xmm-survey",
        description="XMM-Newton extended-source survey: event lists -> spectra -> fits -> catalogue.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log to the terminal too")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "run",
        help="run or resume the survey (skips finished steps)",
        description="Run the survey on a Dask cluster; finished steps are reused, failed "
        "ObsIDs are recorded and the survey goes on.",
    )
    _add_config_args(p)
    _add_cluster_args(p)
    p.add_argument(
        "--obsids",
        metavar="FILE|GLOB|IDS",
        help="ObsID list file (one per line, # comments), a glob, or ObsIDs separated by commas",
    )
    p.add_argument("--targets", metavar="CSV", help="targets CSV: obsid,name,ra,dec,z,nh,r500_kpc")
    p.add_argument("--retry-failed", action="store_true", help="also rerun steps that failed before")
    p.add_argument("--catalogue-only", action="store_true", help="only (re)build the catalogue from results/")
    p.add_argument("--no-catalogue", action="store_true", help="do not build the catalogue at the end")
    p.add_argument(
        "--reuse-across-code",
        action="store_true",
        help="reuse finished steps made by other code too (pipeline.reuse_across_code=true)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "run-one",
        help="run one ObsID in this process, without Dask (SLURM job arrays)",
        description="Run the steps of one ObsID here; for `sbatch --array` give --obsid-list "
        "and --index $SLURM_ARRAY_TASK_ID.",
    )
    _add_config_args(p)
    p.add_argument("--obsid", help="the ObsID")
    p.add_argument("--obsid-list", metavar="FILE", help="ObsID list file (with --index)")
    p.add_argument("--index", type=int, metavar="N", help="1-based line (ignoring comments) of --obsid-list")
    p.add_argument("--targets", metavar="CSV", help="targets CSV: obsid,name,ra,dec,z,nh,r500_kpc")
    p.add_argument("--retry-failed", action="store_true", help="rerun the steps that failed before")
    p.add_argument(
        "--reuse-across-code",
        action="store_true",
        help="reuse finished steps made by other code too (pipeline.reuse_across_code=true)",
    )
    p.set_defaults(func=cmd_run_one)

    p = sub.add_parser(
        "status",
        help="table of ObsIDs x steps: done / failed (reason) / running / pending",
        description="Status of a survey from its step records, with wall time per step.",
    )
    _add_config_args(p, data=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--long", "-l", action="store_true", help="whole failure reasons (not cut at 60 characters)"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "init",
        help="write a commented example configuration",
        description="Write every configuration key with its default and a comment.",
    )
    p.add_argument("path", nargs="?", default="survey.yaml", help="file to write (default survey.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "retry",
        help="rerun the ObsIDs that failed",
        description="Rerun the failed ObsIDs with the configuration of the previous run "
        "(results/config.resolved.yaml) unless --config is given.",
    )
    p.add_argument(
        "--failed",
        action="store_true",
        help="rerun every ObsID with a failed step (what retry does; optional)",
    )
    p.add_argument("--no-catalogue", action="store_true", help="do not rebuild the catalogue afterwards")
    _add_config_args(p)
    _add_cluster_args(p)
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "clean",
        help="forget the results of ObsIDs (all, or from a step on)",
        description="Delete results/<obsid>/ (or only the records of --step and later).",
    )
    p.add_argument("--obsid", action="append", required=True, help="ObsID to clean (repeatable)")
    p.add_argument("--step", help="only forget this step and the later ones")
    _add_config_args(p, data=False)
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser(
        "unlock",
        help="remove the lock of a run that is gone (e.g. one of another host)",
        description=(
            "Remove results/.lock (or results/<obsid>/.lock with --obsid) left by a run that died. "
            "A lock of another host cannot be checked from here: this names its holder (host, pid, "
            "start time, command) and removes it. A lock whose holder runs on this host is refused (exit 2)."
        ),
    )
    p.add_argument("--obsid", help="the run-one lock of this ObsID instead of the survey's")
    _add_config_args(p, data=False)
    p.set_defaults(func=cmd_unlock)

    _register_plugins(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xmm-survey``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, while it can still be handled
        return code
    except BrokenPipeError:
        # `xmm-survey ... | head`: the reader has gone; say nothing more (no traceback), like cat or grep.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
    except XmmSurveyError as exc:
        print(f"error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("interrupted: finished steps are recorded; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        from .steps import storage_error

        what = storage_error(exc)
        if not what:
            raise
        print(
            f"error ({what}): {exc}; free space (or make it writable) and rerun the same command: "
            "finished steps are kept and the ones that failed for this are recomputed",
            file=sys.stderr,
        )
        return 5


if __name__ == "__main__":
    sys.exit(main())
