"""Log files of a survey: one per ObsID and step, one for the survey, and the collected worker logs.

Layout under ``results/``::

    <obsid>/logs/<step>.log     what the step said (appended per attempt)
    logs/survey.log             the driver: what ran, what was skipped, what failed and why
    logs/workers/<node>-<worker>.log  the Dask workers' own logs, collected at the end of a run
                                (<node>: SLURMD_NODENAME on SLURM, else the host name)
    logs/slurm/                 stdout/stderr of the SLURM worker jobs (dask-jobqueue log_directory)
    logs/run-one/<obsid>.log    ``xmm-survey run-one`` (job-array tasks): one file per ObsID, naming the node

One writer per file: on a shared filesystem (NFS) appends from several hosts to one file can
interleave or be lost, so no log file is written from two hosts at once (a step log is appended only
by the one process running that step of that ObsID).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xmmcore.products import ObsProducts, SurveyLayout

__all__ = [
    "LOG_FORMAT",
    "close_survey_logger",
    "collect_worker_logs",
    "step_log_path",
    "step_logger",
    "survey_logger",
]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _FileHandler(logging.FileHandler):
    """A log file that never costs the run: a write failing (disk full, read-only, a name that does
    not encode) prints one line on stderr, not a ``--- Logging error ---`` traceback per record.
    Undecodable characters are written as backslash escapes."""

    _warned = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, mode="a", encoding="utf-8", errors="backslashreplace")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's API
        if not _FileHandler._warned:
            _FileHandler._warned = True
            import sys

            exc = sys.exc_info()[1]
            print(f"warning: cannot write the log {self.baseFilename}: {exc}", file=sys.stderr)


def step_log_path(results_dir: str | os.PathLike[str], obsid: str, step: str) -> Path:
    """``results/<obsid>/logs/<step>.log``."""
    return ObsProducts(Path(results_dir) / obsid).step_log(step)


@contextlib.contextmanager
def step_logger(results_dir: str | os.PathLike[str], obsid: str, step: str) -> Iterator[logging.Logger]:
    """A logger writing to ``results/<obsid>/logs/<step>.log`` for the duration of the block.

    The logger does not propagate, so a worker running many steps does not mix their messages.
    """
    path = step_log_path(results_dir, obsid, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A logger of its own, not registered with logging's manager: ``logging.getLogger(name)`` would keep
    # one Logger per ObsID and step for the life of the worker process (memory growing with the survey).
    logger = logging.Logger(f"xmm.{obsid}.{step}", logging.DEBUG)
    logger.propagate = False
    handler = _FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def survey_logger(
    results_dir: str | os.PathLike[str], *, name: str = "survey", filename: str = "survey.log"
) -> logging.Logger:
    """The driver's logger, appending to ``results/logs/<filename>`` (default ``survey.log``).

    ``name="survey"`` is the registered ``survey.run`` logger (one per process, which other modules log
    to). Any other name (``run_one``'s ``survey.<obsid>``) gets a logger of its own that is not
    registered with logging's manager (``logging.getLogger`` would keep a Logger and a PlaceHolder per
    ObsID for the life of the process); it propagates to the root logger as a registered one would.
    Close it with :func:`close_survey_logger`.
    """
    path = SurveyLayout(results_dir).driver_log(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "survey":
        logger = logging.getLogger(f"{name}.run")
    else:
        logger = logging.Logger(f"{name}.run")
        logger.parent = logging.getLogger()
    logger.setLevel(logging.INFO)
    target = str(path.resolve())
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers):
        handler = _FileHandler(path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    return logger


def close_survey_logger(logger: logging.Logger) -> None:
    """Close and detach the file handlers of a logger made by :func:`survey_logger`."""
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


def collect_worker_logs(client: Any, results_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each Dask worker's log to ``results/logs/workers/<node>-<worker>.log``; return the files.

    ``<node>`` is where the worker runs (``SLURMD_NODENAME`` in a SLURM job, else the host name), so the
    logs of every node of a cluster land side by side. Workers that have gone away are skipped; a
    failure to collect never fails the survey.
    """
    from xmmcore.fsutil import atomic_write_text

    out: list[Path] = []
    try:
        logs = client.get_worker_logs(n=10000)
    except Exception:  # noqa: BLE001 - logs are a convenience; the survey result stands without them
        return out
    try:
        nodes = client.run(_node_name)
    except Exception:  # noqa: BLE001 - without node names the worker addresses still tell them apart
        nodes = {}
    folder = SurveyLayout(results_dir).workers_log_dir
    for worker, lines in logs.items():
        node = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(nodes.get(worker, "node"))).strip("_")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(worker)).strip("_")
        text = f"# worker {worker} on node {nodes.get(worker, '?')}\n"
        text += "\n".join(msg for _level, msg in lines) + "\n"
        try:
            out.append(atomic_write_text(folder / f"{node}-{name}.log", text))
        except (OSError, UnicodeError) as exc:  # a full or read-only disk: the survey result stands
            logging.getLogger("survey.run").warning("worker log %s not written: %s", name, exc)
            break
    return out


def _node_name() -> str:
    """The node this process runs on: ``SLURMD_NODENAME`` inside a SLURM job, else the host name."""
    import socket

    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@contextlib.contextmanager
def dask_logs_to_file(results_dir: str | os.PathLike[str], *, quiet: bool = True) -> Iterator[Path]:
    """Send the driver's Dask (``distributed``) log records to ``results/logs/dask.log``.

    With ``quiet`` the terminal handlers of the ``distributed`` logger are detached for the block, so
    the scheduler's and nannies' messages about a lost worker (with their tracebacks) go to the file
    instead of between the progress bar and the summary. Everything is restored afterwards.
    """
    path = SurveyLayout(results_dir).dask_log
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("distributed")
    handler = _FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    detached = (
        [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        if quiet
        else []
    )
    propagate = logger.propagate
    for h in detached:
        logger.removeHandler(h)
    if quiet:
        logger.propagate = False
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h in detached:
            logger.addHandler(h)
        logger.propagate = propagate
