"""Checkpointed steps: a step is done when its outputs exist and its inputs hash matches the record.

The inputs hash of a step covers

* its section(s) of the resolved configuration (``filter`` + ``flares`` for the filter step, ...),
* the target metadata of the observation (z, nH, R500... feed regions and fits),
* the files it reads (path, size and modification time; files outside ``results/<obsid>/``, which the
  user provides and may edit in place, also by content: sha256, cached in the record by size, mtime,
  inode and ctime so that a resume only stats them),
* the inputs hash of the step before it (so a change upstream reruns everything downstream),
* the versions of the software that computes it.

Besides the hash, a record is reused only when it was made by the same code: its ``code`` (the sha256 of
the files of ``xmmcore`` and of the ``pipeline.module``'s package, plus the git commit and dirty flag,
:func:`xmmcore.provenance.code_identity`) must match this process's, unless
``pipeline.reuse_across_code`` is true. So a development tree whose code changed recomputes its steps
(and reruns steps that failed deterministically before), and opting out works either way.

After each step (successful or not) a record ``results/<obsid>/steps/<step>.json`` is written
atomically, holding the status (``done`` / ``failed``), the reason and exception class of a failure,
timings, the hash and the outputs with their sizes: exactly the files the step declared in its summary's
``outputs`` (paths of :class:`~xmmcore.products.ObsProducts`; nothing is found by scanning). A rerun skips a step whose record says ``done``
with the same hash and whose outputs are all still there; it does not retry a step that failed
deterministically (``InputDataError``, ``ToolError``) on the same inputs unless asked to
(``xmm-survey retry``). Only :class:`~xmmcore.errors.TransientError` is retried, with
exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib
import inspect
import json
import os
import platform
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xmmcore.errors import ConfigError, TransientError
from xmmcore.fsutil import _jsonable, atomic_path, atomic_write_json, is_disk_full_message
from xmmcore.observation import Observation
from xmmcore.products import ObsProducts
from xmmcore.provenance import code_matches

from .config import config_hash
from .logs import step_logger

__all__ = [
    "INPUTS_ERROR_NAME",
    "RECORD_SCHEMA",
    "STEP_SECTIONS",
    "Pipeline",
    "StepTask",
    "check_step",
    "compute_inputs_hash",
    "declared_outputs",
    "execute_step",
    "failed_record",
    "file_digest",
    "invalidate_after",
    "is_done",
    "read_record",
    "record_path",
    "software_versions",
    "storage_error",
    "step_config",
    "where_am_i",
    "write_record",
]

RECORD_SCHEMA = 1
#: ``results/<obsid>/inputs_error.json``: why the inputs of a finished ObsID cannot be read now.
INPUTS_ERROR_NAME = "inputs_error.json"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

#: Configuration sections each pipeline step depends on (others: its own section if any).
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "filter": ("cameras", "backend", "sas", "filter", "flares"),
    "regions": ("cameras", "backend", "regions", "cosmology"),
    "spectra": ("cameras", "backend", "sas", "spectra"),
    "fit": ("cameras", "backend", "xspec", "fit", "cosmology"),
}
# Keys that change how the survey runs, never what a step computes.
_ORCHESTRATION_KEYS = {"data_dir", "results_dir", "obsids", "targets_csv", "cluster", "retries", "pipeline"}

StepFunc = Callable[..., dict[str, Any]]


def failed_record(task: StepTask, reason: str, exception: str, **extra: Any) -> dict[str, Any]:
    """The record of a step that failed before or outside its function (inputs unreadable, timed out, lost)."""
    return {
        "schema": RECORD_SCHEMA,
        "obsid": task.obsid,
        "step": task.step,
        "status": "failed",
        "inputs_hash": "",
        "reason": reason,
        "exception": exception,
        "error_class": exception,
        **extra,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@functools.lru_cache(maxsize=8)
def _versions_cached(module: str | None) -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("xmm-survey", "numpy", "scipy", "astropy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if module:
        mod = sys.modules.get(module)
        version = getattr(mod, "__version__", None) if mod else None
        if version:
            out[module] = str(version)
    return tuple(sorted(out.items()))


def software_versions(module: str | None = None) -> dict[str, str]:
    """Versions that enter every inputs hash (python, xmm-survey, numpy, scipy, astropy, the pipeline)."""
    return dict(_versions_cached(module))


@dataclass(frozen=True)
class Pipeline:
    """The per-ObsID chain: step names in order and how to run each.

    Build it with :meth:`from_module` (a module exposing ``STEPS`` and ``run_step(step, obs, outdir,
    cfg, *, log)``, optionally ``step_inputs(step, obs, outdir)``; the default is
    ``xmmcore.pipeline``) or :meth:`from_mapping` (step name -> ``fn(obs, outdir, cfg, *, log)``).
    """

    steps: tuple[str, ...]
    module: str | None = None
    funcs: Mapping[str, StepFunc] | None = None
    inputs_funcs: Mapping[str, Callable[[Observation, Path], Sequence[Path]]] | None = None

    @classmethod
    def from_module(cls, name: str = "xmmcore.pipeline", steps: Sequence[str] | None = None) -> Pipeline:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"pipeline.module must be a dotted Python module name, got {name!r}")
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"pipeline.module: cannot import {name!r} ({exc})") from exc
        if not hasattr(mod, "run_step") or not hasattr(mod, "STEPS"):
            raise ConfigError(
                f"pipeline.module: {name!r} has no STEPS and run_step(step, obs, outdir, cfg, *, log)"
            )
        all_steps = tuple(mod.STEPS)
        chosen = tuple(steps) if steps else all_steps
        unknown = [s for s in chosen if s not in all_steps]
        if unknown:
            raise ConfigError(f"pipeline.steps: unknown step(s) {unknown}; {name} has {list(all_steps)}")
        if chosen != all_steps[: len(chosen)]:
            raise ConfigError(
                f"pipeline.steps must be a leading part of {list(all_steps)}, got {list(chosen)}"
            )
        return cls(steps=chosen, module=name)

    @classmethod
    def from_mapping(
        cls,
        funcs: Mapping[str, StepFunc],
        inputs: Mapping[str, Callable[[Observation, Path], Sequence[Path]]] | None = None,
    ) -> Pipeline:
        if not funcs:
            raise ConfigError("a pipeline needs at least one step")
        return cls(steps=tuple(funcs), funcs=dict(funcs), inputs_funcs=dict(inputs or {}))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Pipeline:
        section = cfg.get("pipeline") or {}
        return cls.from_module(section.get("module") or "xmmcore.pipeline", section.get("steps"))

    def run(
        self, step: str, obs: Observation, outdir: Path, cfg: dict[str, Any], *, log: Any
    ) -> dict[str, Any]:
        if self.funcs is not None:
            return self.funcs[step](obs, outdir, cfg, log=log)
        mod = importlib.import_module(self.module or "xmmcore.pipeline")
        return mod.run_step(step, obs, outdir, cfg, log=log)

    def inputs(
        self, step: str, obs: Observation, outdir: Path, cfg: Mapping[str, Any] | None = None
    ) -> list[Path]:
        """Files ``step`` reads: from the pipeline if it says, else the event lists for the first step.

        A module's ``step_inputs`` that takes a ``cfg`` keyword gets the configuration, so files named
        there (responses, user regions, blank-sky files, table models) are in the inputs hash.
        """
        if self.funcs is not None:
            fn = (self.inputs_funcs or {}).get(step)
            if fn is not None:
                return list(fn(obs, outdir))
        elif self.module:
            mod = importlib.import_module(self.module)
            if hasattr(mod, "step_inputs"):
                if cfg is not None and "cfg" in inspect.signature(mod.step_inputs).parameters:
                    return list(mod.step_inputs(step, obs, outdir, cfg=dict(cfg)))
                return list(mod.step_inputs(step, obs, outdir))
        return sorted(obs.event_files.values()) if step == self.steps[0] else []


def step_config(step: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the configuration that ``step`` depends on."""
    sections = STEP_SECTIONS.get(step)
    if sections is None:
        sections = (step,) if step in cfg else tuple(k for k in cfg if k not in _ORCHESTRATION_KEYS)
    return {k: cfg.get(k) for k in sections}


#: A digest is reused (from the step record or this process) only for a file whose last change was at
#: least this long before it was hashed [ns]: a change within the file system's timestamp granularity
#: of the hashing could otherwise leave size, mtime, ctime and inode as they were ("racy git").
_RACY_NS = 2_000_000_000
_DIGEST_CACHE: dict[tuple[str, int, int, int, int], tuple[str, int]] = {}
_DIGEST_CACHE_SIZE = 4096


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex), read in chunks.

    sha256 rather than blake2b: with the SHA extensions of current x86 and ARM CPUs it is the faster of
    the two (``benchmarks/bench_input_hash.py``: 260 vs 161 MB/s on a 215 MB, 5e6-event pn list, load 12 on 2 cores).
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cached_digest(key: tuple[str, int, int, int, int], previous: Mapping[str, Any] | None) -> str | None:
    _, size, mtime_ns, ino, ctime_ns = key
    if previous is not None:
        same = (
            previous.get("size") == size
            and previous.get("mtime_ns") == mtime_ns
            and previous.get("ino") == ino
            and previous.get("ctime_ns") == ctime_ns
        )
        hashed_ns = previous.get("hashed_ns")
        digest = previous.get("sha256")
        if (
            same
            and isinstance(digest, str)
            and isinstance(hashed_ns, int)
            and max(mtime_ns, ctime_ns) < hashed_ns - _RACY_NS
        ):
            return digest
    hit = _DIGEST_CACHE.get(key)
    if hit is not None and max(mtime_ns, ctime_ns) < hit[1] - _RACY_NS:
        return hit[0]
    return None


def _rel_name(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return str(path.relative_to(root))
        except ValueError:
            continue
    return str(path)


def _file_entry(
    path: Path, roots: Sequence[Path], *, content: bool = False, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns"}`` of an input; with ``content`` also its sha256 digest.

    A product of an earlier step (inside ``results/<obsid>/``) is written by ``os.replace`` and its
    upstream step's hash already changes with everything it was made from: its signature suffices. A
    file the user provides (event lists, responses, regions, tables) may be edited in place, within a
    second, keeping its size: it is hashed by content, the digest cached by (size, mtime_ns, inode,
    ctime_ns) in the step record (``previous``) so that a resume costs one ``stat`` per file.
    """
    import stat as stat_mod

    name = _rel_name(path, roots)
    try:
        st = path.stat()
    except OSError:
        return {"path": name, "size": None, "mtime_ns": None}
    entry: dict[str, Any] = {"path": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not content:
        return entry
    if not stat_mod.S_ISREG(st.st_mode):
        entry["kind"] = "not a regular file"  # never opened here (a FIFO would block): the step refuses it
        return entry
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    digest = _cached_digest(key, previous)
    hashed_ns = previous.get("hashed_ns") if digest is not None and previous is not None else None
    if digest is None:
        hashed_ns = time.time_ns()
        try:
            digest = file_digest(path)
        except OSError:
            return entry
        if len(_DIGEST_CACHE) >= _DIGEST_CACHE_SIZE:
            _DIGEST_CACHE.clear()
        _DIGEST_CACHE[key] = (digest, hashed_ns)
    entry.update(sha256=digest, ino=st.st_ino, ctime_ns=st.st_ctime_ns, hashed_ns=hashed_ns)
    return entry


#: Keys of an input entry that enter the inputs hash (the others only validate the cached digest).
_HASHED_KEYS = ("path", "size", "mtime_ns", "sha256", "kind")


def compute_inputs_hash(
    step: str,
    obs: Observation,
    outdir: Path,
    cfg: Mapping[str, Any],
    input_files: Sequence[Path],
    *,
    upstream_hash: str = "",
    versions: Mapping[str, str] | None = None,
    cache: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """sha256 of (step config, target metadata, input file signatures, upstream hash, versions).

    Files outside ``outdir`` (what the user provides) enter by content too (sha256); ``cache`` (the
    ``inputs`` of the step's previous record) supplies digests of files unchanged since they were hashed.

    Returns
    -------
    hash : str
        Hex digest.
    inputs : list of dict
        ``{"path", "size", "mtime_ns"}`` per input file (paths relative to the ObsID data or
        results folder), plus ``sha256``, ``ino``, ``ctime_ns``, ``hashed_ns`` for files outside
        ``outdir``, as recorded.
    """
    outdir = Path(outdir)
    roots = [outdir, Path(obs.root)]
    previous = {str(e.get("path")): e for e in cache or [] if isinstance(e, Mapping)}
    inputs = []
    for p in input_files:
        path = Path(p)
        content = not path.is_relative_to(outdir)
        prev = previous.get(_rel_name(path, roots)) if content else None
        inputs.append(_file_entry(path, roots, content=content, previous=prev))
    payload = {
        "step": step,
        "obsid": obs.obsid,
        "config": step_config(step, cfg),
        "meta": obs.meta,
        "inputs": [{k: e[k] for k in _HASHED_KEYS if k in e} for e in inputs],
        "upstream": upstream_hash,
        "versions": dict(versions or {}),
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), inputs


def record_path(outdir: str | os.PathLike[str], step: str) -> Path:
    """``results/<obsid>/steps/<step>.json``."""
    return ObsProducts(outdir).step_record(step)


def read_record(outdir: str | os.PathLike[str], step: str) -> dict[str, Any] | None:
    """The step record, or ``None`` when absent or unreadable (a half-written record cannot exist)."""
    try:
        data = json.loads(record_path(outdir, step).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(
    outdir: str | os.PathLike[str], step: str, record: Mapping[str, Any], *, durable: bool = False
) -> Path:
    """Write the step record atomically (temp file + rename: never half-written).

    Without ``durable`` the file is not fsync'd: a record lost to a power cut only means that its
    step is recomputed, while an fsync per step costs more than a short step on network file systems.
    """
    path = record_path(outdir, step)
    if durable:
        return atomic_write_json(path, dict(record))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(dict(record)), indent=1) + "\n")
    return path


def _outputs_present(outdir: Path, record: Mapping[str, Any]) -> bool:
    for out in record.get("outputs") or []:
        try:
            if (outdir / out["path"]).stat().st_size != out["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def is_done(
    outdir: str | os.PathLike[str], step: str, inputs_hash: str, record: Mapping[str, Any] | None = None
) -> bool:
    """True when the record says done with this inputs hash and every recorded output is intact."""
    record = read_record(outdir, step) if record is None else record
    return (
        record is not None
        and record.get("status") == "done"
        and record.get("inputs_hash") == inputs_hash
        and _outputs_present(Path(outdir), record)
    )


def invalidate_after(outdir: str | os.PathLike[str], steps: Sequence[str], step: str) -> None:
    """Remove the records of the steps after ``step`` (their inputs are gone or stale)."""
    if step not in steps:
        return
    for later in steps[steps.index(step) + 1 :]:
        try:
            record_path(outdir, later).unlink()
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class StepTask:
    """Everything a worker needs to run (or skip) one step of one ObsID.

    Attributes
    ----------
    obsid, step : str
    obs : Observation or None
        ``None`` when discovery failed; ``error`` then says why and the step is recorded failed.
    results_dir : str
    cfg : dict
        Resolved configuration (plain dict).
    pipeline : Pipeline
    retries : int
        Extra attempts after a ``TransientError``.
    backoff_s : float
        First wait before a retry [s]; doubled for each further one.
    retry_failed : bool
        Rerun a step whose previous failure was recorded with the same inputs hash.
    error : tuple or None
        (exception class name, message) of a discovery failure.
    versions : dict
        :func:`software_versions` (in the inputs hash and the record).
    code : dict
        :func:`xmmcore.provenance.code_identity` of the code that runs the step (in the record; a record
        of other code is not reused).
    reuse_across_code : bool
        ``pipeline.reuse_across_code``: reuse records made by other code too.
    """

    obsid: str
    step: str
    obs: Observation | None
    results_dir: str
    cfg: dict[str, Any]
    pipeline: Pipeline
    retries: int = 2
    backoff_s: float = 2.0
    retry_failed: bool = False
    error: tuple[str, str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""
    code: dict[str, Any] = field(default_factory=dict)
    reuse_across_code: bool = False

    @property
    def outdir(self) -> Path:
        return Path(self.results_dir) / self.obsid


def check_step(
    task: StepTask, upstream_hash: str, *, plan: bool = False
) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    """Decide whether ``task`` must run.

    With ``plan`` (the driver planning a run), a step without a record is ``run`` at once: its inputs
    are hashed where it runs, not twice.

    Returns
    -------
    state : {"cached", "failed", "run"}
        ``cached``: done with this hash; ``failed``: failed before on the same inputs (deterministic
        error) and not asked to retry; ``run``: must run.
    inputs_hash, inputs, record
    """
    assert task.obs is not None
    record = read_record(task.outdir, task.step)
    if plan and record is None:
        return "run", "", [], {}
    files = task.pipeline.inputs(task.step, task.obs, task.outdir, task.cfg)
    cache = record.get("inputs") if record is not None and isinstance(record.get("inputs"), list) else None
    h, inputs = compute_inputs_hash(
        task.step,
        task.obs,
        task.outdir,
        task.cfg,
        files,
        upstream_hash=upstream_hash,
        versions=task.versions,
        cache=cache,
    )
    same_code = record is not None and code_matches(
        record, task.code, reuse_across_code=task.reuse_across_code
    )
    if record is not None and record.get("inputs_hash") == h and same_code:
        if record.get("status") == "done" and _outputs_present(task.outdir, record):
            return "cached", h, inputs, record
        if (
            record.get("status") == "failed"
            and not task.retry_failed
            and record.get("exception") not in (None, "TransientError", "KilledWorker")
            and not record.get("storage_error")  # full or read-only disk: rerun once space returns
            and not record.get("timed_out")  # abandoned after pipeline.step_timeout_s: tried again
        ):
            return "failed", h, inputs, record
    return "run", h, inputs, record or {}


def declared_outputs(outdir: Path, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``{"path", "size"}`` of each file the step's summary declares under ``outputs``.

    Exactly the declared files, in the declared order, paths relative to ``results/<obsid>/`` when
    inside it (a relative path is taken relative to it). A step that declares nothing records no
    outputs; it is then reused on its inputs hash alone. A declared file that is missing is recorded
    with size ``None``, so the step is never taken as done.
    """
    declared = summary.get("outputs") if isinstance(summary, Mapping) else None
    if not isinstance(declared, (list, tuple)):
        return []
    products = ObsProducts(outdir)
    out = []
    for item in declared:
        path = Path(item)
        path = path if path.is_absolute() or path.is_relative_to(outdir) else outdir / path
        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        out.append({"path": products.rel(path), "size": size})
    return out


#: errno values of a full, over-quota or read-only file system.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def storage_error(exc: BaseException) -> str:
    """``"disk full"`` / ``"read-only file system"``... when ``exc`` (or its cause) is one, else ``""``.

    Such failures are not the ObsID's fault: their records carry ``storage_error`` and the next run
    recomputes the step without ``--retry-failed``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _STORAGE_ERRNOS:
            where = f" writing {cur.filename}" if cur.filename else ""
            what = "read-only file system" if cur.errno == errno.EROFS else "disk full or over quota"
            return what + where
        if isinstance(cur, OSError) and cur.errno is None and is_disk_full_message(str(cur)):
            return "disk full or over quota"  # a writer that dropped the errno (astropy)
        cur = cur.__cause__ or cur.__context__
    return ""


def _outcome(
    task: StepTask,
    status: str,
    *,
    inputs_hash: str = "",
    wall_s: float = 0.0,
    reason: str = "",
    exception: str | None = None,
    attempts: int = 0,
    failed_step: str | None = None,
) -> dict[str, Any]:
    return {
        "obsid": task.obsid,
        "step": task.step,
        "status": status,
        "inputs_hash": inputs_hash,
        "wall_s": wall_s,
        "reason": reason,
        "exception": exception,
        "attempts": attempts,
        "failed_step": failed_step or (task.step if status == "failed" else None),
    }


def where_am_i() -> dict[str, Any]:
    """Where a step runs: ``host``, ``pid``, ``node`` (``SLURMD_NODENAME`` in a SLURM job, else the
    host name) and ``slurm_job_id`` (``None`` outside SLURM). Several SLURM nodes may share one host."""
    host = socket.gethostname()
    return {
        "host": host,
        "pid": os.getpid(),
        "node": os.environ.get("SLURMD_NODENAME") or host,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _rss_mb() -> float | None:
    """Resident memory of this process now [MB] (``/proc/self/statm``; ``None`` where it is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 2)


def execute_step(task: StepTask, upstream: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one step of one ObsID (or skip it), write its record, and return an outcome dict.

    Never raises for a failure of the step itself: ``InputDataError``, ``ToolError`` and unexpected
    exceptions are recorded (status ``failed``, with reason and exception class) so that the survey
    goes on; ``TransientError`` is retried ``task.retries`` times with exponential backoff first.

    Returns
    -------
    dict
        ``obsid, step, status`` (``done`` | ``cached`` | ``failed`` | ``blocked``), ``inputs_hash``,
        ``wall_s``, ``reason``, ``exception``, ``attempts``, ``failed_step``.

    With ``pipeline.step_timeout_s`` > 0, a step (its input checks and hashing included) that has not
    finished after that many seconds is abandoned and recorded failed (``StepTimeoutError``,
    ``timed_out``): a blocked read never holds the survey.
    """
    if upstream is not None and upstream.get("status") not in ("done", "cached"):
        return _outcome(
            task,
            "blocked",
            reason=upstream.get("reason", ""),
            exception=upstream.get("exception"),
            failed_step=upstream.get("failed_step"),
        )
    timeout_s = step_timeout_s(task.cfg)
    if timeout_s > 0:
        return _run_with_timeout(task, upstream, timeout_s)
    return _execute(task, upstream)


def step_timeout_s(cfg: Mapping[str, Any]) -> float:
    """``pipeline.step_timeout_s`` [s]; 0 (or absent) = no limit."""
    value = (cfg.get("pipeline") or {}).get("step_timeout_s") if isinstance(cfg, Mapping) else None
    return float(value or 0.0)


def _run_with_timeout(task: StepTask, upstream: Mapping[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """Run :func:`_execute` in a daemon thread; after ``timeout_s`` abandon it and record the step failed.

    A read that blocks (a stalled NFS server, a FIFO) cannot be interrupted in Python, and a process
    in uninterruptible I/O cannot even be killed: the step is abandoned instead. Its thread stays
    blocked in this process (a worker, or ``run-one``, which exits without waiting for it); the record
    says ``timed_out`` and the next run computes the step again. Should the abandoned step finish
    after all, its products are written atomically and its own record then replaces this one.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = _execute(task, upstream)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    started = _now()
    thread = threading.Thread(target=target, name=f"step-{task.obsid}-{task.step}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not thread.is_alive():
        if "error" in box:
            raise box["error"]
        return dict(box["outcome"])
    reason = (
        f"step {task.step} did not finish within pipeline.step_timeout_s = {timeout_s:g} s and was "
        "abandoned (a read that blocks: a stalled network file system, a FIFO?); the next run tries it again"
    )
    with contextlib.suppress(OSError):
        write_record(
            task.outdir,
            task.step,
            failed_record(
                task,
                reason,
                "StepTimeoutError",
                timed_out=True,
                started=started,
                finished=_now(),
                wall_s=timeout_s,
                attempts=1,
                outputs=[],
                **where_am_i(),
            ),
        )
        invalidate_after(task.outdir, task.pipeline.steps, task.step)
    with contextlib.suppress(Exception), step_logger(task.results_dir, task.obsid, task.step) as log:
        log.error("%s", reason)
    return _outcome(task, "failed", wall_s=timeout_s, reason=reason, exception="StepTimeoutError", attempts=1)


def _execute(task: StepTask, upstream: Mapping[str, Any] | None) -> dict[str, Any]:
    steps = task.pipeline.steps
    outdir = task.outdir
    if task.obs is None:
        missing_exc, message = task.error or ("InputDataError", "observation not found")
        now = _now()
        previous = read_record(outdir, task.step)
        if previous is not None and previous.get("status") == "done":
            # The inputs went bad after this ObsID finished (a meta.json typo): its finished records and
            # products stand untouched; the run reports the failure and notes it beside the records.
            atomic_write_json(
                outdir / INPUTS_ERROR_NAME,
                {"obsid": task.obsid, "reason": message, "exception": missing_exc, "time": now},
            )
            return _outcome(task, "failed", reason=message, exception=missing_exc)
        write_record(
            outdir,
            task.step,
            failed_record(
                task,
                message,
                missing_exc,
                started=now,
                finished=now,
                wall_s=0.0,
                attempts=0,
                outputs=[],
                host=socket.gethostname(),
                pid=os.getpid(),
            ),
        )
        invalidate_after(outdir, steps, task.step)
        return _outcome(task, "failed", reason=message, exception=missing_exc)

    upstream_hash = str(upstream.get("inputs_hash", "")) if upstream else ""
    if task.step == steps[0]:
        with contextlib.suppress(OSError):
            (outdir / INPUTS_ERROR_NAME).unlink(missing_ok=True)
    state, h, inputs, record = check_step(task, upstream_hash)
    if state == "cached":
        return _outcome(task, "cached", inputs_hash=h, wall_s=float(record.get("wall_s", 0.0)))
    if state == "failed":
        return _outcome(
            task,
            "failed",
            inputs_hash=h,
            reason=record.get("reason", ""),
            exception=record.get("exception"),
            attempts=int(record.get("attempts", 0)),
        )

    base = {
        "schema": RECORD_SCHEMA,
        "obsid": task.obsid,
        "step": task.step,
        "inputs_hash": h,
        "inputs": inputs,
        "versions": task.versions,
        "code": task.code,
        "config": step_config(task.step, task.cfg) if task.step in STEP_SECTIONS else None,
        "config_hash": task.config_hash or config_hash(task.cfg),
        "meta": _jsonable(dict(task.obs.meta)),
        **where_am_i(),
    }
    started = _now()
    try:
        write_record(outdir, task.step, {**base, "status": "running", "started": started})
    except OSError as exc:
        why = f"{storage_error(exc) or 'cannot write the step record'}: {exc}"
        return _outcome(task, "failed", inputs_hash=h, reason=why, exception=type(exc).__name__)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    attempts = 0
    status, reason, tb = "failed", "", ""
    exc_name = None
    summary: dict[str, Any] = {}
    storage = ""
    with step_logger(task.results_dir, task.obsid, task.step) as log:
        while True:
            attempts += 1
            log.info("step %s of %s: attempt %d (inputs hash %s)", task.step, task.obsid, attempts, h[:12])
            try:
                summary = task.pipeline.run(task.step, task.obs, outdir, task.cfg, log=log) or {}
                status = "done"
                break
            except TransientError as exc:
                reason, exc_name, tb = str(exc), type(exc).__name__, traceback.format_exc()
                if attempts > task.retries:
                    log.error("transient failure, no retries left: %s", exc)
                    break
                wait = task.backoff_s * 2 ** (attempts - 1)
                log.warning("transient failure (%s); retrying in %.1f s", exc, wait)
                time.sleep(wait)
            except Exception as exc:  # noqa: BLE001 - recorded with its class; the survey goes on
                reason, exc_name, tb = str(exc), type(exc).__name__, traceback.format_exc()
                storage = storage_error(exc)
                if storage:
                    reason = f"{storage} ({reason})"
                log.error("step failed (%s): %s", exc_name, reason)
                log.debug("%s", tb)
                break
        wall = time.perf_counter() - t0
        # CPU of this process while the step ran (a worker runs one step at a time): the basis of the
        # CPU-based scheduling efficiency, sum(cpu_s) / (workers x wall), which stolen CPU cannot inflate.
        cpu = time.process_time() - cpu0
        log.info("step %s of %s: %s in %.3f s (%.3f CPU-s)", task.step, task.obsid, status, wall, cpu)
    record_out: dict[str, Any] = {
        **base,
        "status": status,
        "started": started,
        "finished": _now(),
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_mb": _rss_mb(),
        "attempts": attempts,
    }
    if status == "done":
        record_out["outputs"] = declared_outputs(outdir, summary)
        record_out["summary"] = summary
    else:
        record_out.update(
            reason=reason, exception=exc_name, error_class=exc_name, traceback=tb[-4000:], outputs=[]
        )
        if storage:
            record_out["storage_error"] = True
    try:
        write_record(outdir, task.step, record_out)
    except OSError as exc:
        # The disk is full or read-only: the record cannot be written, so the next run recomputes the
        # step; the survey learns why from the outcome instead of losing the task.
        why = f"{storage_error(exc) or 'cannot write the step record'}: {exc}"
        return _outcome(task, "failed", inputs_hash=h, wall_s=wall, reason=why, exception=type(exc).__name__)
    if status != "done":
        invalidate_after(outdir, steps, task.step)
        return _outcome(
            task, "failed", inputs_hash=h, wall_s=wall, reason=reason, exception=exc_name, attempts=attempts
        )
    return _outcome(task, "done", inputs_hash=h, wall_s=wall, attempts=attempts)
