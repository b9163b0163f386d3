"""CLI: ``xmm-survey plan --backend sas --obsid ID --export run.sh``.

Writes the exact SAS/ESAS commands the ``sas`` backend would run for one ObsID as a readable bash
script: one block per task with its working directory, its environment (``PFILES``, ``SAS_ODF``,
``SAS_CCF``...) and its argv, shell-quoted. Users can audit it, or re-run one step by hand, in a
shell where SAS is initialised. Nothing is run and SAS need not be installed to plan.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

from xmmcore.errors import XmmSurveyError, exit_code_for

__all__ = ["add_parser", "plan_commands", "render_script"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``plan`` on the ``xmm-survey`` sub-command parser."""
    p = subparsers.add_parser(
        "plan",
        help="write the exact SAS/ESAS commands for one ObsID as a bash script",
        description="Build (without running) the SAS/ESAS commands of the filter and spectra steps for one "
        "ObsID and write them as a bash script with one block (cd, environment, argv) per task.",
    )
    p.add_argument(
        "--backend",
        default="sas",
        choices=["sas"],
        help="reduction backend to plan (only sas runs external commands)",
    )
    p.add_argument("--obsid", required=True, help="ObsID folder under the data directory")
    p.add_argument("--data", default=None, help="data directory (default: data_dir of the config)")
    p.add_argument("--results", default=None, help="results directory (default: results_dir of the config)")
    p.add_argument("--config", default=None, help="YAML configuration file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set sas.esas=false (repeatable)",
    )
    p.add_argument("--export", default=None, metavar="run.sh", help="write the script here (default: stdout)")
    p.set_defaults(func=run)
    return p


def plan_commands(
    obsid: str,
    *,
    data: str | None = None,
    results: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[list[Any], dict[str, str], dict[str, Any], Any]:
    """Commands, skipped cameras, resolved config dict and Observation for ``obsid``."""
    from survey.config import load_config
    from xmmcore.backends.sas import plan_observation, settings_from_config, sum_rewrite_lines
    from xmmcore.observation import discover

    cfg_obj = load_config(config, list(overrides or []) + ["backend.reduction=sas"])
    cfg = cfg_obj.to_dict()
    obs = discover(data or cfg["data_dir"], obsid)
    outdir = Path(results or cfg["results_dir"]).resolve() / obs.obsid
    cmds, skipped = plan_observation(obs, outdir, cfg, settings=settings_from_config(cfg))
    cfg["_hash"] = cfg_obj.hash
    cfg["_prelude"] = sum_rewrite_lines(obs, outdir)
    return cmds, skipped, cfg, obs


def render_script(
    cmds: list[Any],
    *,
    obsid: str,
    skipped: dict[str, str] | None = None,
    sas_dir: str | None = None,
    config_hash: str = "",
    prelude: list[str] | None = None,
) -> str:
    """The bash script text for ``cmds`` (see :func:`xmmcore.backends.sas.script_lines`)."""
    from xmmcore.backends.sas import script_lines

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = [
        "#!/usr/bin/env bash",
        f"# xmm-survey plan: SAS/ESAS commands for ObsID {obsid} ({now})",
        f"# config_hash: sha256:{config_hash}" if config_hash else "# config: defaults",
        "# Each task runs in its own directory with its own PFILES; SAS_ODF/SAS_CCF are set per task.",
        "# Run in a shell where SAS is initialised (source $SAS_DIR/setsas.sh); copy one block to re-run one task.",
        "set -euo pipefail",
    ]
    if sas_dir:
        head.append(f'export SAS_DIR="${{SAS_DIR:-{sas_dir}}}"')
    head.append(
        ': "${SAS_DIR:?SAS is not initialised: export SAS_DIR=/path/to/xmmsas; source $SAS_DIR/setsas.sh}"'
    )
    head.append('HEADAS="${HEADAS:-}"  # PFILES names $HEADAS/syspfiles for the FTOOLs SAS tasks call')
    for cam, reason in (skipped or {}).items():
        head.append(f"# skipped {cam}: {reason}")
    head.append("")
    return "\n".join(head + script_lines(cmds, prelude=prelude or [])) + "\n"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``xmm-survey plan``."""
    from xmmcore.fsutil import atomic_write_text

    try:
        cmds, skipped, cfg, obs = plan_commands(
            args.obsid, data=args.data, results=args.results, config=args.config, overrides=args.overrides
        )
        text = render_script(
            cmds,
            obsid=obs.obsid,
            skipped=skipped,
            sas_dir=(cfg.get("sas") or {}).get("sas_dir") or os.environ.get("SAS_DIR"),
            config_hash=cfg.get("_hash", ""),
            prelude=cfg.get("_prelude", []),
        )
        if args.export:
            path = atomic_write_text(args.export, text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
            tasks = sorted({c.task for c in cmds})
            print(
                f"{len(cmds)} commands ({', '.join(tasks)}) for ObsID {obs.obsid} -> {shlex.quote(str(path))}"
            )
            for cam, reason in skipped.items():
                print(f"skipped {cam}: {reason}")
        else:
            sys.stdout.write(text)
    except XmmSurveyError as exc:
        print(f"xmm-survey plan: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    return 0
