"""Where the survey runs: a local Dask cluster, SLURM through dask-jobqueue, or a running scheduler.

``cluster.kind`` in the configuration chooses:

``local``
    ``distributed.LocalCluster`` with ``cluster.workers`` worker processes; the dashboard listens on
    ``cluster.dashboard_address`` (127.0.0.1 by default, so it is not exposed on shared machines).
``slurm``
    ``dask_jobqueue.SLURMCluster`` built from ``cluster.slurm.*`` (queue, account, cores, processes,
    memory, walltime, job_extra_directives, interface, job_script_prologue, python), scaled
    adaptively between ``minimum_jobs`` and ``maximum_jobs``; job logs go to ``results/logs/slurm``.
``address``
    connect to the scheduler at ``cluster.address`` (``tcp://host:port``).

Each worker advertises a ``slots`` resource (one per thread) that the step tasks request.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from xmmcore.errors import ConfigError

__all__ = ["SLOT_RESOURCE", "ClusterHandle", "slurm_cluster_kwargs", "start_cluster"]

SLOT_RESOURCE = "slots"
#: Scheduler settings for chains of short tasks: queue ready first steps on the workers (no
#: scheduler-side queuing), so a worker never idles for a scheduler round trip between two steps;
#: work stealing still balances the queues when workers come and go.
SCHEDULER_CONFIG = {"distributed.scheduler.worker-saturation": float("inf")}


@dataclass
class ClusterHandle:
    """A connected Dask client and the cluster it owns (``None`` for ``address``).

    Attributes
    ----------
    client : distributed.Client
    cluster : object or None
    kind : str
    dashboard_link : str or None
    use_resources : bool
        Whether the workers advertise the ``slots`` resource (tasks request it only then).
    """

    client: Any
    cluster: Any
    kind: str
    dashboard_link: str | None
    use_resources: bool

    def close(self) -> None:
        """Close the client and the cluster this handle started (never a foreign scheduler)."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slurm_cluster_kwargs(cfg: Any, results_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` from ``cluster.slurm.*``."""
    s = cfg["cluster"]["slurm"]
    cores, processes = int(s["cores"]), int(s["processes"])
    if processes > cores:
        raise ConfigError(
            f"cluster.slurm.processes ({processes}) must not exceed cluster.slurm.cores ({cores})"
        )
    slots = max(1, cores // processes)
    log_dir = s.get("log_directory") or str(Path(results_dir) / "logs" / "slurm")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "cores": cores,
        "processes": processes,
        "memory": s["memory"],
        "walltime": s["walltime"],
        "job_extra_directives": list(s.get("job_extra_directives") or []),
        "job_script_prologue": list(s.get("job_script_prologue") or []),
        "log_directory": log_dir,
        "python": s.get("python") or sys.executable,
        "worker_extra_args": ["--resources", f"{SLOT_RESOURCE}={slots}"],
        "scheduler_options": {"dashboard_address": cfg["cluster"]["dashboard_address"]},
    }
    for key in ("queue", "account", "interface"):
        if s.get(key):
            kwargs[key] = s[key]
    return kwargs


def start_cluster(cfg: Any, *, results_dir: str | Path | None = None, log: Any = None) -> ClusterHandle:
    """Start (or connect to) the cluster the configuration asks for and return a connected handle.

    Raises
    ------
    ConfigError
        ``kind: address`` without an address, or ``slurm`` without dask-jobqueue installed.
    """
    import dask
    from distributed import Client

    c = cfg["cluster"]
    kind = c["kind"]
    results_dir = Path(results_dir if results_dir is not None else cfg["results_dir"])
    if kind == "local":
        from distributed import LocalCluster

        threads = int(c["threads_per_worker"])
        with dask.config.set(SCHEDULER_CONFIG):
            cluster: Any = LocalCluster(
                n_workers=int(c["workers"]),
                threads_per_worker=threads,
                processes=True,
                memory_limit=c["memory_limit"],
                dashboard_address=c["dashboard_address"],
                host="127.0.0.1",
                resources={SLOT_RESOURCE: threads},
            )
        client = Client(cluster)
        handle = ClusterHandle(client, cluster, kind, _dashboard(client), True)
    elif kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ConfigError(
                "cluster.kind: slurm needs dask-jobqueue (pip install 'xmm-survey[slurm]')"
            ) from exc
        with dask.config.set(SCHEDULER_CONFIG):
            cluster = SLURMCluster(**slurm_cluster_kwargs(cfg, results_dir))
        s = c["slurm"]
        cluster.adapt(
            minimum_jobs=int(s["minimum_jobs"]),
            maximum_jobs=max(int(s["maximum_jobs"]), int(s["minimum_jobs"])),
        )
        client = Client(cluster)
        handle = ClusterHandle(client, cluster, kind, _dashboard(client), True)
    elif kind == "address":
        if not c.get("address"):
            raise ConfigError(
                "cluster.kind: address needs cluster.address (tcp://host:port of a running scheduler)"
            )
        client = Client(c["address"], timeout="30s")
        workers = client.scheduler_info().get("workers", {})
        use = bool(workers) and all(SLOT_RESOURCE in (w.get("resources") or {}) for w in workers.values())
        handle = ClusterHandle(client, None, kind, _dashboard(client), use)
    else:
        raise ConfigError(f"cluster.kind must be local, slurm or address, got {kind!r}")
    if log is not None:
        log.info("cluster %s started; dashboard: %s", kind, handle.dashboard_link)
    return handle


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is not an error
        return None
