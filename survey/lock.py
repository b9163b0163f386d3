"""One writer per results folder: ``results/.lock`` created with ``O_CREAT | O_EXCL``.

The lock file holds the holder's host, pid, start time and command. A second run on the same
results folder finds it and stops with :class:`ResultsLockedError` (exit 2) naming the holder. A
lock left by a run that died is *stale* when it names this host and a pid that is not alive: it is
then taken over. A lock of another host cannot be checked from here; it is reported with the way to
remove it: ``xmm-survey unlock --results DIR`` (:func:`break_lock`) names the holder (host, pid, time,
command) and removes it; it refuses a lock whose holder runs on this host. ``O_EXCL`` creation (not ``fcntl``) is used because results may live on NFS, where
byte-range locks are unreliable but exclusive create is atomic (NFSv3 and later).

``run-one`` (SLURM job arrays: many processes, one ObsID each) takes a lock per ObsID,
``results/<obsid>/.lock``, and refuses to start while a whole-survey run holds the root lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xmmcore.errors import ConfigError
from xmmcore.products import SurveyLayout

__all__ = [
    "LOCK_NAME",
    "ResultsLockedError",
    "acquire_lock",
    "break_lock",
    "check_unlocked",
    "lock_holder",
    "release_lock",
    "results_lock",
    "write_lock",
]

LOCK_NAME = SurveyLayout.LOCK


class ResultsLockedError(ConfigError):
    """Another run writes to this results folder (exit 2: nothing has run)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    try:  # a killed run not yet reaped by its parent is a zombie: it holds nothing any more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The content of a lock file (``None`` when absent; ``{}`` when unreadable or torn)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_lock(fd: int, path: Path, holder: dict[str, Any]) -> None:
    """Write the holder into the just created lock ``fd``; on failure (a full disk) remove the lock.

    An empty lock left behind would block every run for a minute (a torn lock is taken to be in
    use until then); the ``OSError`` is raised again naming the lock file.
    """
    try:
        data = (json.dumps(holder) + "\n").encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "No space left on device (short write)", str(path))
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    os.close(fd)


def _is_stale(holder: dict[str, Any], path: Path) -> bool:
    if not holder:
        # A torn or empty lock: stale once it is older than a minute (its writer had time to finish it).
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unreadable lock"
    return (
        f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')} "
        f"({holder.get('command', '')})"
    )


def _advice(holder: dict[str, Any], folder: Path, path: Path) -> str:
    if holder and holder.get("host") not in (None, socket.gethostname()):
        return (
            f"wait for it to finish; a lock of another host cannot be checked from here: if that run is "
            f"gone, `xmm-survey unlock --results {folder}` (or delete {path})"
        )
    return f"wait for it to finish, or if it is gone delete {path}"


def break_lock(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Remove ``folder/.lock`` left by a run that is gone; return its holder (``None``: there was none).

    A lock of another host cannot be judged from here (its pid means nothing on this host): the user
    who calls this says that run is gone. A lock whose holder is alive on this host is never broken.

    Raises
    ------
    ResultsLockedError
        The holder runs on this host (its pid is alive), naming it.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    holder = lock_holder(path)
    if holder is None:
        return None
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and _alive(pid):
        raise ResultsLockedError(
            f"{folder} is in use by a {holder.get('what', 'run')}: {_describe(holder)}, which is running "
            f"on this host; stop it first (kill {pid}), its lock goes with it"
        )
    aside = path.with_name(f"{LOCK_NAME}.broken-{os.getpid()}")
    try:
        os.replace(path, aside)  # atomic: a run taking the lock at this moment keeps its own new one
    except FileNotFoundError:
        return holder or {}
    aside.unlink(missing_ok=True)
    return holder


def acquire_lock(
    path: Path,
    me: dict[str, Any],
    *,
    judge: Callable[[dict[str, Any]], tuple[bool, str]],
    aside_suffix: str,
    on_takeover: Callable[[dict[str, Any], str], None] | None = None,
) -> None:
    """Create the lock ``path`` exclusively, holding ``me``; take over a stale one.

    ``judge(holder)`` says of the lock found there ``(True, why it is stale)`` or ``(False, the error
    message)``. A stale lock is moved aside first (``.lock.stale-<aside_suffix>``, then removed): of two
    processes taking it over at once only one renames it, and it alone calls ``on_takeover(holder, why)``.
    Shared by :func:`results_lock` and :func:`survey.obsid_lock.obsid_lock`.
    """
    folder = path.parent
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(path)
            if holder is None:
                continue  # released meanwhile
            stale, text = judge(holder)
            if not stale:
                raise ResultsLockedError(text) from None
            aside = path.with_name(f"{LOCK_NAME}.stale-{aside_suffix}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
                aside.unlink()
                if on_takeover is not None:
                    on_takeover(holder, text)
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create the lock {path}: {exc.strerror or exc}") from exc
        write_lock(fd, path, me)
        return
    raise ResultsLockedError(f"{folder}: could not take the lock {path} (held and released repeatedly)")


def release_lock(path: Path, me: Mapping[str, Any]) -> None:
    """Remove the lock ``path`` if ``me`` still holds it (never one another process has taken over)."""
    if lock_holder(path) == me:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def results_lock(folder: str | os.PathLike[str], *, what: str = "run") -> Iterator[Path]:
    """Hold ``folder/.lock`` for the block; raise :class:`ResultsLockedError` if another run holds it.

    Raises
    ------
    ResultsLockedError
        The lock is held by a live process (or by another host), naming the holder and how to clear it.
    ConfigError
        The lock cannot be created (read-only or full file system), naming the folder.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv[:6])[:300],
        "what": what,
    }

    def judge(holder: dict[str, Any]) -> tuple[bool, str]:
        if _is_stale(holder, path):
            return True, "its process is gone"
        return False, (
            f"{folder} is in use by another {holder.get('what', 'run')}: {_describe(holder)}; "
            f"{_advice(holder, folder, path)}"
        )

    acquire_lock(path, me, judge=judge, aside_suffix=str(os.getpid()))
    try:
        yield path
    finally:
        release_lock(path, me)


def check_unlocked(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`ResultsLockedError` when a live run holds ``folder/.lock`` (a stale lock is ignored)."""
    path = Path(folder) / LOCK_NAME
    holder = lock_holder(path)
    if holder is not None and not _is_stale(holder, path):
        raise ResultsLockedError(
            f"{folder} is in use by a {holder.get('what', 'run')}: {_describe(holder)}; "
            f"{_advice(holder, Path(folder), path)}"
        )
