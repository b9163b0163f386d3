"""Survey status from the step records: table ObsID x step, counts, wall time per step; clean.

States: ``done``, ``stale`` (done, but by other code than this installation's: the next run recomputes
it unless ``pipeline.reuse_across_code`` is set), ``failed`` (with the reason), ``corrupt`` (an
unreadable record: the next run recomputes the step), ``running`` (a record opened by a worker that has not
finished: running now, or lost with its worker), ``pending`` (no record yet).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmmcore.errors import ConfigError, InputDataError
from xmmcore.observation import validate_obsid
from xmmcore.products import ObsProducts, SurveyLayout
from xmmcore.provenance import code_identity, code_matches, code_version

from .steps import INPUTS_ERROR_NAME, read_record, record_path

__all__ = [
    "StepState",
    "SurveyStatus",
    "clean_obsid",
    "collect_status",
    "failed_obsids",
    "format_status",
    "steps_for",
]


def _is_obsid(name: str) -> bool:
    try:
        validate_obsid(name)
    except InputDataError:
        return False
    return True


@dataclass(frozen=True)
class StepState:
    """State of one step of one ObsID: ``state``, ``reason``, ``exception``, ``wall_s`` [s]."""

    state: str
    reason: str = ""
    exception: str | None = None
    wall_s: float | None = None


@dataclass
class SurveyStatus:
    """Status of every ObsID found under ``results/``.

    Attributes
    ----------
    steps : list of str
    rows : dict
        ObsID -> step -> StepState.
    joint : dict
        Target -> StepState of its ``joint`` step (``results/joint/<target>/steps/joint.json``).
    """

    results_dir: Path
    steps: list[str]
    rows: dict[str, dict[str, StepState]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    joint: dict[str, StepState] = field(default_factory=dict)
    #: Short identity of the code the states were judged against (``stale`` = done by other code).
    code_version: str = ""

    def counts(self) -> dict[str, dict[str, int]]:
        """Step -> state -> number of ObsIDs."""
        out: dict[str, dict[str, int]] = {}
        for step in self.steps:
            c = {"done": 0, "failed": 0, "running": 0, "pending": 0}  # + "corrupt", "stale" when there are
            for row in self.rows.values():
                c[row[step].state] = c.get(row[step].state, 0) + 1
            out[step] = c
        return out

    def wall_time(self) -> dict[str, dict[str, float]]:
        """Step -> ``{"total", "mean", "max"}`` wall time [s] of its done records."""
        out = {}
        for step in self.steps:
            times = [
                float(r[step].wall_s or 0.0)
                for r in self.rows.values()
                if r[step].state == "done" and r[step].wall_s
            ]
            out[step] = {
                "total": sum(times),
                "mean": sum(times) / len(times) if times else 0.0,
                "max": max(times, default=0.0),
            }
        return out

    def obsid_state(self, obsid: str) -> str:
        """``done`` | ``failed`` | ``corrupt`` | ``running`` | ``stale`` | ``pending`` for a whole ObsID."""
        states = [s.state for s in self.rows[obsid].values()]
        if all(s == "done" for s in states):
            return "done"
        for state in ("failed", "corrupt", "running", "stale"):
            if state in states:
                return state
        return "pending"

    def failed(self) -> dict[str, str]:
        """ObsID -> ``"<step>: <Exception>: <reason>"``."""
        out = {}
        for obsid, row in self.rows.items():
            for step in self.steps:
                if row[step].state in ("failed", "corrupt"):
                    out[obsid] = f"{step}: {row[step].exception or 'corrupt'}: {row[step].reason}"
                    break
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "results_dir": str(self.results_dir),
            "steps": self.steps,
            "obsids": {o: {s: vars(st) for s, st in row.items()} for o, row in self.rows.items()},
            "counts": self.counts(),
            "wall_time_s": self.wall_time(),
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "joint": {t: vars(st) for t, st in self.joint.items()},
            "code_version": self.code_version,
        }


def steps_for(results_dir: str | Path) -> list[str]:
    """Step names: from the resolved config's pipeline if it imports, else from the records found."""
    results_dir = Path(results_dir)
    try:
        from .config import read_resolved
        from .steps import Pipeline

        return list(Pipeline.from_config(read_resolved(results_dir)).steps)
    except (ConfigError, ImportError):
        pass
    names: list[str] = []
    for rec in sorted(results_dir.glob("*/steps/*.json"), key=lambda p: p.stat().st_mtime_ns):
        if rec.stem not in names:
            names.append(rec.stem)
    return names


def collect_status(
    results_dir: str | Path, *, steps: Sequence[str] | None = None, obsids: Sequence[str] | None = None
) -> SurveyStatus:
    """Read every ``results/<obsid>/steps/<step>.json`` into a :class:`SurveyStatus`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ConfigError(f"results directory {results_dir} does not exist")
    step_names = list(steps) if steps else steps_for(results_dir)
    if obsids is None:
        obsids = sorted(
            p.name
            for p in results_dir.iterdir()
            if p.is_dir()
            and _is_obsid(p.name)
            and (ObsProducts(p).steps_dir.is_dir() or ObsProducts(p).logs_dir.is_dir())
        )
    code, reuse = _judging_code(results_dir)
    status = SurveyStatus(
        results_dir=results_dir,
        steps=step_names,
        skipped=_read_skipped(results_dir),
        code_version=code_version(code) if not reuse else "",
    )
    for obsid in obsids:
        row = {}
        for step in step_names:
            rec = read_record(results_dir / obsid, step)
            path = record_path(results_dir / obsid, step)
            if rec is None and path.exists():
                row[step] = StepState(
                    "corrupt", reason=f"unreadable step record {path} (recomputed on the next run)"
                )
            else:
                row[step] = _state(rec, None if reuse else code)
        status.rows[obsid] = row
        try:
            note = json.loads((results_dir / obsid / INPUTS_ERROR_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = None
        if isinstance(note, dict):
            status.notes[obsid] = f"inputs unreadable now (finished records kept): {note.get('reason', '')}"
    jdir = SurveyLayout(results_dir).joint_dir
    for path in sorted(jdir.glob("*/steps/joint.json")) if jdir.is_dir() else []:
        status.joint[path.parent.parent.name] = _state(
            read_record(path.parent.parent, "joint"), None if reuse else code
        )
    return status


def _judging_code(results_dir: Path) -> tuple[dict[str, Any], bool]:
    """This installation's code identity for the survey's ``pipeline.module``, and ``reuse_across_code``.

    From the survey's resolved config when it reads (else the default pipeline), as a run would judge
    its records: a done record of other code is recomputed unless ``reuse_across_code``.
    """
    module: str | None = None
    reuse = False
    try:
        from .config import read_resolved

        pipeline = read_resolved(results_dir).get("pipeline") or {}
        module = pipeline.get("module") or None
        reuse = bool(pipeline.get("reuse_across_code"))
    except (ConfigError, ImportError, AttributeError):
        pass
    return code_identity(module), reuse


def _state(rec: dict[str, Any] | None, code: dict[str, Any] | None = None) -> StepState:
    """The record's state; a done record not made by ``code`` (when given) is ``stale``."""
    if rec is None:
        return StepState("pending")
    state = rec.get("status", "pending")
    if state == "done" and code is not None and not code_matches(rec, code):
        state = "stale"
    return StepState(
        state if state in ("done", "stale", "failed", "running") else "pending",
        reason=str(rec.get("reason") or ""),
        exception=rec.get("exception"),
        wall_s=rec.get("wall_s"),
    )


def _read_skipped(results_dir: Path) -> dict[str, str]:
    """Folders of the data directory that the last run did not process (``results/skipped.json``)."""
    path = SurveyLayout(results_dir).skipped
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


#: State columns of the per-step counts table.
_COLUMNS = ("done", "stale", "failed", "corrupt", "running", "pending")


def format_status(status: SurveyStatus, *, width: int | None = 60) -> str:
    """The status as a text table: ObsID x steps, then counts and wall time per step.

    Reasons longer than ``width`` characters are cut (``None``: whole reasons, ``status --long``), and the
    table then says how to see them whole.
    """
    cut = False
    steps = status.steps
    col = max([len(s) for s in steps] + [7])
    oid = max([len(o) for o in status.rows] + [len(f) for f in status.skipped] + [5])
    lines = ["ObsID".ljust(oid) + "  " + "  ".join(s.ljust(col) for s in steps) + "  reason"]
    for obsid, row in status.rows.items():
        reason = ""
        for step in steps:
            if row[step].state in ("failed", "corrupt"):
                reason = f"{step}: {row[step].exception or 'corrupt'}: {row[step].reason}".replace("\n", " ")
                if width is not None and len(reason) > width:
                    reason = reason[: width - 3] + "..."
                    cut = True
                break
        if not reason and obsid in status.notes:
            reason = status.notes[obsid]
            if width is not None and len(reason) > width:
                reason, cut = reason[: width - 3] + "...", True
        lines.append(
            obsid.ljust(oid) + "  " + "  ".join(row[s].state.ljust(col) for s in steps) + "  " + reason
        )
    for folder, why in status.skipped.items():
        lines.append(folder.ljust(oid) + "  " + "skipped".ljust(col) + "  " + why)
    lines.append("")
    counts, walls = status.counts(), status.wall_time()
    lines.append(
        "step".ljust(col) + "  " + "  ".join(k.rjust(7) for k in _COLUMNS) + "   total_s    mean_s     max_s"
    )
    for step in steps:
        c, w = counts[step], walls[step]
        lines.append(
            step.ljust(col)
            + "  "
            + "  ".join(str(c.get(k, 0)).rjust(7) for k in _COLUMNS)
            + f"  {w['total']:8.2f}  {w['mean']:8.3f}  {w['max']:8.3f}"
        )
    n = len(status.rows)
    by_state: dict[str, int] = {}
    for obsid in status.rows:
        st = status.obsid_state(obsid)
        by_state[st] = by_state.get(st, 0) + 1
    lines.append("")
    lines.append(f"{n} ObsIDs: " + ", ".join(f"{v} {k}" for k, v in sorted(by_state.items())))
    if status.skipped:
        lines.append(f"{len(status.skipped)} folders of the data directory skipped (reasons above)")
    if status.joint:
        tcol = max([len(t) for t in status.joint] + [6])
        lines.append("")
        lines.append("target".ljust(tcol) + "  " + "joint".ljust(col) + "    wall_s  reason")
        for target, js in status.joint.items():
            reason = f"{js.exception}: {js.reason}".replace("\n", " ") if js.state == "failed" else ""
            if width is not None and len(reason) > width:
                reason, cut = reason[: width - 3] + "...", True
            wall = f"{float(js.wall_s):8.2f}" if js.wall_s is not None else " " * 8
            lines.append(target.ljust(tcol) + "  " + js.state.ljust(col) + "  " + wall + "  " + reason)
    if any(c.get("stale") for c in counts.values()) or any(j.state == "stale" for j in status.joint.values()):
        lines.append(
            f"stale: done by other code than this installation's ({status.code_version}); the next run "
            "recomputes those steps (`--reuse-across-code` keeps them)"
        )
    if cut:
        lines.append("reasons cut: `xmm-survey status --long` (or --json) shows them whole")
    return "\n".join(lines)


def failed_obsids(results_dir: str | Path) -> list[str]:
    """ObsIDs with a failed step (what ``xmm-survey retry`` reruns)."""
    return sorted(collect_status(results_dir).failed())


def clean_obsid(results_dir: str | Path, obsid: str, *, step: str | None = None) -> list[Path]:
    """Forget the results of ``obsid``: all of ``results/<obsid>/``, or the records of ``step`` and later.

    Only the step records are removed with ``step`` (the next run recomputes those steps and
    overwrites their products atomically). Returns the paths removed.
    """
    validate_obsid(obsid)  # refuses path-like and reserved names (logs, plots, joint...)
    from .lock import check_unlocked

    check_unlocked(results_dir)  # never delete under a running survey
    root = Path(results_dir) / obsid
    if not root.is_dir():
        raise ConfigError(f"nothing to clean: {root} does not exist")
    if not ObsProducts(root).steps_dir.is_dir():
        raise ConfigError(f"clean: {root} has no steps/ records, so it is not an ObsID's results; left alone")
    if step is None:
        shutil.rmtree(root)
        return [root]
    steps = steps_for(results_dir)
    if step not in steps:
        raise ConfigError(f"unknown step {step!r}; steps are {', '.join(steps)}")
    removed = []
    for later in steps[steps.index(step) :]:
        path = record_path(root, later)
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
