"""A closing worker's failed heartbeat is not printed as an error; a live worker's still is."""

from __future__ import annotations

import logging

from distributed.core import Status

from survey.cluster import start_cluster
from survey.config import load_config
from survey.workerplugin import HEARTBEAT_FAILED, ClosingHeartbeatFilter


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)


class _Worker:
    status = Status.running


def test_heartbeat_failure_is_dropped_only_while_the_worker_closes():
    worker = _Worker()
    filt = ClosingHeartbeatFilter(worker)
    message = HEARTBEAT_FAILED + "."
    assert filt.filter(_record(message))  # running: the scheduler really is unreachable
    worker.status = Status.paused
    assert filt.filter(_record(message))
    for status in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed):
        worker.status = status
        assert not filt.filter(_record(message)), status
        assert filt.filter(_record("Unexpected exception during heartbeat. Closing worker."))


def _filters_on_worker_logger() -> list[str]:
    return [type(f).__name__ for f in logging.getLogger("distributed.worker").filters]


def test_survey_workers_carry_the_filter(tmp_path):
    cfg = load_config(
        None, {"results_dir": str(tmp_path), "cluster.workers": 1, "cluster.dashboard_address": "127.0.0.1:0"}
    )
    with start_cluster(cfg, results_dir=tmp_path) as handle:
        found = handle.client.run(_filters_on_worker_logger)
    assert list(found.values()) == [["ClosingHeartbeatFilter"]], found
