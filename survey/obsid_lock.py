"""The ``run-one`` lock of one ObsID (SLURM job arrays), judged across hosts and requeues.

``xmm-survey run-one`` holds ``results/<obsid>/.lock`` (``O_CREAT | O_EXCL``, as :mod:`survey.lock`)
while it runs the chain of that ObsID. The lock records who holds it: host, SLURM node
(``SLURMD_NODENAME``), pid, and the SLURM job (``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``,
``SLURM_ARRAY_TASK_ID``, ``SLURM_RESTART_COUNT``); the holder refreshes the file's mtime every
``cluster.run_one.lock_heartbeat_s`` seconds (its heartbeat). When a node dies, SLURM requeues its
array tasks (``--requeue``) on other nodes, where the pid of the holder cannot be checked. A lock
found at start is *stale*, and taken over, when

1. it is torn or empty and older than a minute;
2. it names this host and this node, and its pid is gone;
3. it names this very SLURM job with a lower restart count: an earlier run of this task, requeued
   after a node failure or a preemption (SLURM keeps the job id across requeues);
4. it names another SLURM job that SLURM no longer runs: ``squeue`` shows it PENDING, REQUEUED or
   finished, or no longer knows it and ``sacct`` (when accounting is on) shows it ended;
5. SLURM cannot tell (no ``squeue``, another cluster, a holder that was no SLURM job) and the
   heartbeat is older than ``cluster.run_one.lock_stale_s``.

A holder whose job SLURM shows RUNNING (or SUSPENDED) is live, however old its heartbeat. Otherwise
the lock is live and ``run-one`` stops with :class:`~survey.lock.ResultsLockedError` (exit 2) naming
the holder and why it is taken to be alive. The heartbeat compares the file's mtime (set by the file
server on NFS) with this host's clock, so the bound must exceed the clock skew between hosts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xmmcore.errors import ExternalToolError, ToolNotFoundError

from .lock import LOCK_NAME, _alive, acquire_lock, lock_holder, release_lock

__all__ = [
    "LIVE_JOB_STATES",
    "holder_identity",
    "obsid_lock",
    "slurm_job_state",
    "stale_reason",
]

#: SLURM job states in which the job's processes run (or are stopped and will run again).
LIVE_JOB_STATES = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
)
_SLURM_KEYS = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_restart_count": "SLURM_RESTART_COUNT",
    "slurm_cluster": "SLURM_CLUSTER_NAME",
}
#: Torn or empty lock files older than this [s] are stale (their writer had time to finish them).
TORN_STALE_S = 60.0

JobState = Callable[[str], "str | None"]


def holder_identity(what: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a lock records about its holder (this process), from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    host = socket.gethostname()
    me: dict[str, Any] = {
        "host": host,
        "node": env.get("SLURMD_NODENAME") or host,
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv[:6])[:300],
        "what": what,
    }
    for key, var in _SLURM_KEYS.items():
        if env.get(var):
            me[key] = env[var]
    return me


def slurm_job_state(job_id: str, *, timeout_s: float = 30.0) -> str | None:
    """The state of SLURM job ``job_id``: ``squeue``'s (``RUNNING``, ``PENDING``...), else ``sacct``'s.

    Returns ``"GONE"`` when ``squeue`` no longer knows the job and ``sacct`` has no record of it
    (accounting off: a job leaves ``squeue`` MinJobAge after it ended), and ``None`` when SLURM
    cannot be asked (no ``squeue``, no controller).
    """
    from xmmcore.tools import run_tool

    def ask(argv: list[str]) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        try:
            run = run_tool(argv, cwd=os.getcwd(), timeout_s=timeout_s, check_sas_errors=False)
        except (ExternalToolError, ToolNotFoundError) as exc:
            text = str(exc)
            # squeue -j of a job it no longer knows: "Invalid job id specified" (exit 1)
            return "" if "Invalid job id" in text else None
        return run.stdout

    out = ask(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"])
    if out is None:
        return None
    states = [s.strip() for s in out.splitlines() if s.strip()]
    if states:
        return states[0].split()[0].upper()
    acct = ask(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"])
    states = [s.strip() for s in (acct or "").splitlines() if s.strip()]
    return states[-1].split()[0].upper() if states else "GONE"


def _restarts(holder: Mapping[str, Any]) -> int:
    try:
        return int(holder.get("slurm_restart_count") or 0)
    except (TypeError, ValueError):
        return 0


def stale_reason(
    holder: Mapping[str, Any],
    path: str | os.PathLike[str],
    me: Mapping[str, Any],
    *,
    stale_after_s: float,
    job_state: JobState = slurm_job_state,
    now: float | None = None,
) -> tuple[str | None, str]:
    """Judge the lock ``path`` held by ``holder`` from the process ``me`` (:func:`holder_identity`).

    Returns
    -------
    (str or None, str)
        Why the lock is stale (``None``: it is live), and why it is taken to be live otherwise.
    """
    path = Path(path)
    now = time.time() if now is None else now
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return "the lock file is gone", ""
    if not holder:
        if age > TORN_STALE_S:
            return f"an unreadable lock {age:.0f} s old", ""
        return None, f"an unreadable lock only {age:.0f} s old (its writer may still be writing it)"
    pid = holder.get("pid")
    same_node = holder.get("host") == me.get("host") and holder.get("node", holder.get("host")) == me.get(
        "node"
    )
    if same_node and isinstance(pid, int):
        if not _alive(pid):
            return f"pid {pid} on {me.get('node')} is gone", ""
        return None, f"pid {pid} runs on this node"
    job = holder.get("slurm_job_id")
    if job and job == me.get("slurm_job_id") and _restarts(holder) < _restarts(me):
        return (
            f"it was taken by an earlier run of this SLURM job {job} (restart {_restarts(holder)}, "
            f"this is restart {_restarts(me)}: requeued)",
            "",
        )
    other_cluster = holder.get("slurm_cluster") not in (
        None,
        me.get("slurm_cluster", holder.get("slurm_cluster")),
    )
    if job and job != me.get("slurm_job_id") and not other_cluster:
        state = job_state(str(job))
        if state is not None:
            if state in LIVE_JOB_STATES:
                return None, f"SLURM job {job} is {state}"
            return f"SLURM job {job} of its holder is {state}", ""
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (> cluster.run_one.lock_stale_s = {stale_after_s:g} s)", ""
    return None, f"its heartbeat is {age:.0f} s old (<= {stale_after_s:g} s) and SLURM cannot tell"


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "an unreadable lock"
    job = holder.get("slurm_job_id")
    task = holder.get("slurm_array_task_id")
    slurm = f", SLURM job {job}" + (f" (array task {task})" if task else "") if job else ""
    return (
        f"host {holder.get('host')} node {holder.get('node', holder.get('host'))} pid {holder.get('pid')}"
        f"{slurm} since {holder.get('started')}"
    )


class _Heartbeat(threading.Thread):
    """Refresh the lock file's mtime every ``every`` s while the lock is ours."""

    def __init__(self, path: Path, me: Mapping[str, Any], every: float) -> None:
        super().__init__(daemon=True, name=f"lock-heartbeat {path}")
        self.path, self.me, self.every = path, dict(me), every
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            if lock_holder(self.path) != self.me:
                return  # taken over (we were judged stale) or removed: never touch another's lock
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def obsid_lock(
    folder: str | os.PathLike[str],
    *,
    what: str,
    heartbeat_s: float,
    stale_after_s: float,
    job_state: JobState = slurm_job_state,
    on_takeover: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the block, taking over a stale one (see the module docstring).

    Raises
    ------
    ResultsLockedError
        The lock is live, naming the holder, why it is taken to be live and how to clear it.
    ConfigError
        The lock cannot be created (read-only or full file system), naming the folder.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    me = holder_identity(what, environ)

    def judge(holder: dict[str, Any]) -> tuple[bool, str]:
        stale, live = stale_reason(holder, path, me, stale_after_s=stale_after_s, job_state=job_state)
        if stale is not None:
            return True, stale
        return False, (
            f"{folder} is in use by another {holder.get('what', 'run')}: {_describe(holder)}; "
            f"it is taken to be alive because {live}; wait for it to finish, or if it is gone delete {path}"
        )

    def took_over(holder: dict[str, Any], stale: str) -> None:
        if on_takeover is not None:
            on_takeover(f"took over the lock {path} of {_describe(holder)}: {stale}")

    acquire_lock(path, me, judge=judge, aside_suffix=f"{me['node']}-{os.getpid()}", on_takeover=took_over)
    beat = _Heartbeat(path, me, heartbeat_s)
    beat.start()
    try:
        yield path
    finally:
        beat.halt.set()
        beat.join(timeout=5)
        release_lock(path, me)
