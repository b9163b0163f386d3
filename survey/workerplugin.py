"""A worker plugin that keeps a closing worker's benign heartbeat traceback off the terminal.

``Worker.close`` (distributed) closes the worker's connection pool while a heartbeat may be in flight
on it. The heartbeat then fails with ``CommClosedError``, and distributed logs "Failed to communicate
with scheduler during heartbeat." at ERROR, with a 30-line traceback, on the terminal of a local survey
that ended well. :class:`QuietShutdownPlugin` adds :class:`ClosingHeartbeatFilter` to each worker's
``distributed.worker`` logger: the message is dropped only while that worker is closing or closed;
while it runs, the message is kept (then the scheduler really is unreachable).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["HEARTBEAT_FAILED", "ClosingHeartbeatFilter", "QuietShutdownPlugin"]

#: The start of the message ``Worker.heartbeat`` logs when its call to the scheduler fails.
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"
#: Worker states in which a failed heartbeat is a real problem (and is logged).
_LIVE = (Status.init, Status.running, Status.paused)


class ClosingHeartbeatFilter(logging.Filter):
    """Drop the failed-heartbeat record of ``worker`` once it is no longer live; keep every other record."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self._worker = weakref.ref(worker)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(HEARTBEAT_FAILED):
            return True
        worker = self._worker()
        return worker is not None and worker.status in _LIVE


class QuietShutdownPlugin(WorkerPlugin):
    """Adds :class:`ClosingHeartbeatFilter` for its worker to the ``distributed.worker`` logger."""

    name = "xmm-survey-quiet-shutdown"

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(ClosingHeartbeatFilter(worker))
