"""The one place where xmm-survey runs an external program.

``run_tool`` takes an argv list (never a shell string), an explicit working directory and
environment, and a timeout. The child is started in its own session so that on timeout the whole
process group (SAS chains such as ``epchain`` start many children) is killed, not just the parent.
stdout and stderr are streamed line by line to the logger (and optionally to a per-task log file)
while the tool runs, so a killed job still leaves its output behind.

A run fails with :class:`~xmmcore.errors.ExternalToolError` when the exit code is non-zero, when
it times out (``reason="timeout"``), or when the output holds a SAS error line
(``** task: error (code), message``) even with exit code 0: SAS tasks do not always set their exit
status, and an error missing from a list of known errors must not pass silently (XGA #129).
A missing executable raises :class:`~xmmcore.errors.ToolNotFoundError` saying how to point to it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import ExternalToolError, ToolNotFoundError
from .sas_output import SasMessage, parse_sas_messages, parse_task_version

__all__ = ["KILL_GRACE_S", "ToolRun", "child_env", "find_executable", "run_tool"]

#: Seconds between SIGTERM and SIGKILL when a process group is stopped.
KILL_GRACE_S = 3.0

_TAIL_LINES = 40


@dataclass(frozen=True)
class ToolRun:
    """What one external command did.

    Attributes
    ----------
    argv : list of str
        The command as executed.
    cwd : Path
        Working directory.
    returncode : int
        Exit status (negative: killed by that signal).
    stdout, stderr : str
        Full captured output.
    duration_s : float
        Wall-clock time [s].
    messages : list of SasMessage
        SAS ``** task: warning/error (code)`` lines found in the output.
    task_version : str or None
        ``evselect-3.71.3`` style version printed by a SAS task, if any.
    env_overrides : dict
        The variables set on top of the inherited environment (for the record).
    """

    argv: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    messages: list[SasMessage] = field(default_factory=list)
    task_version: str | None = None
    env_overrides: dict[str, str | None] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr

    @property
    def warnings(self) -> list[SasMessage]:
        return [m for m in self.messages if m.level == "warning"]

    @property
    def errors(self) -> list[SasMessage]:
        return [m for m in self.messages if m.level in ("error", "fatal")]

    def tail(self, n: int = _TAIL_LINES) -> str:
        """The last ``n`` lines of the combined output."""
        return "\n".join(self.output.splitlines()[-n:])

    def to_dict(self) -> dict[str, object]:
        """JSON-able record (no full output: that is in the log)."""
        return {
            "argv": list(self.argv),
            "cwd": str(self.cwd),
            "returncode": self.returncode,
            "duration_s": round(self.duration_s, 3),
            "task_version": self.task_version,
            "warnings": [m.to_dict() for m in self.warnings],
            "env": dict(self.env_overrides),
        }


def child_env(
    overrides: Mapping[str, str | None] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a child process: a copy of ``base`` (default ``os.environ``) plus ``overrides``.

    ``os.environ`` itself is never modified, so two tasks run from two threads each see only their
    own variables. A value of ``None`` removes the variable.
    """
    env = dict(os.environ if base is None else base)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def find_executable(name: str, *, env: Mapping[str, str] | None = None, hint: str = "") -> str:
    """Full path of ``name`` on the ``PATH`` of ``env`` (default: this process), else ``ToolNotFoundError``.

    Parameters
    ----------
    name : str
        Executable name (or a path).
    env : mapping, optional
        Environment whose ``PATH`` is searched.
    hint : str
        How to point the pipeline to the tool; appended to the error message.
    """
    path_var = (env or os.environ).get("PATH", os.defpath)
    found = shutil.which(name, path=path_var)
    if found is None:
        msg = f"external tool {name!r} not found on PATH"
        raise ToolNotFoundError(msg + (f": {hint}" if hint else ""))
    return found


def _kill_group(proc: subprocess.Popen[bytes], log: logging.Logger | None, grace_s: float) -> None:
    """SIGTERM then SIGKILL the child's whole process group (grandchildren included)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid  # the leader is gone; its group id is still its pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:  # pragma: no cover - would mean a foreign group
            if log:
                log.warning("cannot signal process group %d: %s", pgid, exc)
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    # Zombies still count for killpg(…, 0); treat a group whose members are all zombies as dead.
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False
    except OSError:  # no /proc (macOS): trust killpg
        return True


def _wait_unreaped(pid: int, timeout_s: float | None) -> bool:
    """Wait until ``pid`` exits (left as a zombie, not reaped); False on timeout."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if res is not None:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _pump(
    stream: IO[bytes],
    sink: list[str],
    prefix: str,
    log: logging.Logger | None,
    logfile: IO[str] | None,
    lock: threading.Lock,
) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        sink.append(line)
        if log is not None:
            log.info("%s%s", prefix, line)
        if logfile is not None:
            with lock:
                logfile.write(line + "\n")
                logfile.flush()
    stream.close()


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str | None] | None = None,
    timeout_s: float | None = None,
    log: logging.Logger | None = None,
    log_path: str | os.PathLike[str] | None = None,
    base_env: Mapping[str, str] | None = None,
    check_sas_errors: bool = True,
    missing_hint: str = "",
    stdin_text: str | None = None,
    kill_grace_s: float = KILL_GRACE_S,
) -> ToolRun:
    """Run one external command safely and return what it did.

    Parameters
    ----------
    argv : sequence of str
        Program and arguments; no shell is involved, so values need no quoting.
    cwd : path
        Working directory (created if missing). The caller's working directory is never changed.
    env : mapping, optional
        Variables set (``None``: removed) on top of ``base_env``/``os.environ`` for this child only.
    timeout_s : float, optional
        Wall-clock limit [s]. On expiry the whole process group is terminated and
        ``ExternalToolError(reason="timeout")`` is raised.
    log : logging.Logger, optional
        Receives the command line and every output line as it arrives.
    log_path : path, optional
        File that receives the command and the raw output (appended).
    base_env : mapping, optional
        Environment to start from instead of ``os.environ``.
    check_sas_errors : bool
        Fail on ``** task: error (code)`` lines even when the exit code is 0.
    missing_hint : str
        How to point to the executable, used when it is not found.
    stdin_text : str, optional
        Text written to the child's stdin (then closed); default: no stdin (``/dev/null``).
    kill_grace_s : float
        Seconds between SIGTERM and SIGKILL on timeout.

    Returns
    -------
    ToolRun

    Raises
    ------
    ToolNotFoundError
        The executable does not exist.
    ExternalToolError
        Non-zero exit, timeout, or a SAS error line in the output.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run_tool needs a non-empty argv")
    workdir = Path(cwd)
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = child_env(env, base_env)
    overrides = dict(env or {})
    program = args[0]
    if os.sep not in program:
        program = find_executable(program, env=full_env, hint=missing_hint)
    elif not os.access(program, os.X_OK):
        raise ToolNotFoundError(
            f"external tool {program!r} does not exist or is not executable"
            + (f": {missing_hint}" if missing_hint else "")
        )
    name = Path(args[0]).name
    cmd_text = " ".join(args)
    if log is not None:
        log.info("run [%s] in %s: %s", name, workdir, cmd_text)

    logfile: IO[str] | None = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        logfile = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
        logfile.write(f"$ (cd {workdir} && {cmd_text})\n")
        logfile.flush()
    out_lines: list[str] = []
    err_lines: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    timed_out = False
    try:
        try:
            proc = subprocess.Popen(
                [program, *args[1:]],
                cwd=workdir,
                env=full_env,
                start_new_session=True,
                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise ToolNotFoundError(
                f"external tool {args[0]!r} could not be started ({exc})"
                + (f": {missing_hint}" if missing_hint else "")
            ) from exc
        readers = [
            threading.Thread(
                target=_pump, args=(proc.stdout, out_lines, f"[{name}] ", log, logfile, lock), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(proc.stderr, err_lines, f"[{name}:err] ", log, logfile, lock), daemon=True
            ),
        ]
        for t in readers:
            t.start()
        if stdin_text is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin_text.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
        # Wait without reaping, so that the group id cannot be reused before the group is cleaned up.
        if not _wait_unreaped(proc.pid, timeout_s):
            timed_out = True
            if log is not None:
                log.warning("[%s] timed out after %.0f s: killing its process group", name, timeout_s or 0)
            _kill_group(proc, log, kill_grace_s)
        else:
            # A finished tool must not leave children behind holding our pipes open.
            _kill_group(proc, None, 0.2)
        proc.wait()
        for t in readers:
            t.join(timeout=5.0)
    finally:
        if logfile is not None:
            logfile.close()
    duration = time.monotonic() - start
    stdout, stderr = "\n".join(out_lines), "\n".join(err_lines)
    text = stdout + "\n" + stderr
    run = ToolRun(
        argv=args,
        cwd=workdir,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        duration_s=duration,
        messages=parse_sas_messages(text),
        task_version=parse_task_version(text, name),
        env_overrides=overrides,
    )
    if log is not None:
        for w in run.warnings:
            log.warning("[%s] SAS warning %s: %s", w.task, w.code, w.message)
    if timed_out:
        raise ExternalToolError(
            f"{name} timed out after {timeout_s} s (process group killed)",
            argv=args,
            returncode=proc.returncode,
            output_tail=run.tail(),
            reason="timeout",
        )
    if check_sas_errors and run.errors:
        first = run.errors[0]
        reason = f"{first.task}: {first.code}: {first.message}".rstrip(": ")
        raise ExternalToolError(
            f"{name} reported a SAS error ({reason})",
            argv=args,
            returncode=proc.returncode,
            output_tail=run.tail(),
            reason=reason,
        )
    if proc.returncode != 0:
        raise ExternalToolError(
            f"{name} failed with exit code {proc.returncode}",
            argv=args,
            returncode=proc.returncode,
            output_tail=run.tail(),
            reason=f"exit code {proc.returncode}",
        )
    return run
