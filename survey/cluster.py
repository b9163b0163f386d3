"""Where the survey runs: a local Dask cluster, SLURM through dask-jobqueue, or a running scheduler.

``cluster.kind`` in the configuration chooses:

``local``
    ``distributed.LocalCluster`` with ``cluster.workers`` worker processes; the dashboard listens on
    ``cluster.dashboard_address`` (127.0.0.1 by default, so it is not exposed on shared machines).
``slurm``
    ``dask_jobqueue.SLURMCluster`` built from ``cluster.slurm.*`` (queue, account, cores, processes,
    memory, walltime, job_extra_directives, interface, job_script_prologue, python,
    worker_extra_args, scheduler_host), scaled adaptively between ``minimum_jobs`` and
    ``maximum_jobs``; job logs go to ``results/logs/slurm``. ``worker_extra_args`` are appended to
    the worker command line inside the job script, so shell variables set by the prologue expand on
    the compute node (``["--host", "$XMM_NODE_ADDR"]`` makes each worker listen on its node's address).
``address``
    connect to the scheduler at ``cluster.address`` (``tcp://host:port``).

Each worker advertises a ``slots`` resource (one per thread) that the step tasks request.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from xmmcore.errors import ConfigError
from xmmcore.products import SurveyLayout

__all__ = [
    "JOBQUEUE_KEYS",
    "PROFILE_PATH",
    "SLOT_RESOURCE",
    "ClusterHandle",
    "scheduler_config",
    "sigterm_as_interrupt",
    "site_jobqueue_settings",
    "slurm_cluster_kwargs",
    "start_cluster",
    "write_profile",
]

SLOT_RESOURCE = "slots"
#: Scheduler settings for chains of short tasks: queue ready first steps on the workers (no
#: scheduler-side queuing), so a worker never idles for a scheduler round trip between two steps;
#: work stealing still balances the queues when workers come and go.
SCHEDULER_CONFIG = {
    "distributed.scheduler.worker-saturation": float("inf"),
    # The workers' statistical profiler keeps a call-tree snapshot per second (up to 1000 of them): on a
    # survey its dicts were most of the worker memory that grew with every ObsID. Off for survey workers
    # (the dashboard's profile page stays empty) unless ``cluster.profile: true`` (scheduler_config()).
    "distributed.worker.profile.enabled": False,
}
#: The same for SLURM worker jobs, which do not inherit the driver's dask config: one job-script line.
WORKER_PROFILE_OFF = "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"
#: ``cluster.profile: true``: the profiler on, in the job script of SLURM workers.
WORKER_PROFILE_ON = "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True"
#: Where ``cluster.profile: true`` writes the survey's Dask profile (bokeh HTML), under ``results/``.
PROFILE_PATH = SurveyLayout(".").dask_profile


def scheduler_config(cfg: Any) -> dict[str, Any]:
    """:data:`SCHEDULER_CONFIG` with the workers' statistical profiler as ``cluster.profile`` says."""
    return {**SCHEDULER_CONFIG, "distributed.worker.profile.enabled": bool(cfg["cluster"]["profile"])}


def write_profile(client: Any, results_dir: str | Path) -> Path | None:
    """Write the workers' profile of the run to ``results/logs/dask-profile.html`` (atomically); the path.

    ``None`` (and nothing written) when the profile cannot be drawn (no bokeh, workers gone): the
    profile is a diagnostic, never a reason for the survey to fail.
    """
    from xmmcore.fsutil import atomic_path

    target = SurveyLayout(results_dir).dask_profile
    try:
        with atomic_path(target) as tmp:
            client.profile(filename=str(tmp))
    except Exception:  # noqa: BLE001 - a diagnostic: the survey result stands without it
        return None
    return target


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
                if self.kind == "local":
                    _stop_local_workers(self.cluster)
                self.cluster.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: ``cluster.slurm.*`` keys that are ``SLURMCluster`` keywords of the same name, and ``jobqueue.slurm.*`` keys
#: of dask-jobqueue's own configuration (a site's ``~/.config/dask/jobqueue.yaml``).
JOBQUEUE_KEYS = (
    "cores",
    "processes",
    "memory",
    "walltime",
    "queue",
    "account",
    "interface",
    "job_extra_directives",
    "job_script_prologue",
    "python",
)


def _packaged_jobqueue_defaults() -> dict[str, Any]:
    """dask-jobqueue's own ``jobqueue.slurm`` defaults (its packaged ``jobqueue.yaml``), or {}."""
    try:
        import dask_jobqueue
        import yaml
    except ImportError:
        return {}
    path = Path(dask_jobqueue.__file__).with_name("jobqueue.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, ValueError):
        return {}
    return {str(k).replace("-", "_"): v for k, v in ((data.get("jobqueue") or {}).get("slurm") or {}).items()}


def site_jobqueue_settings() -> dict[str, Any]:
    """``jobqueue.slurm.*`` values the site's dask configuration sets (differing from dask-jobqueue's own)."""
    import dask

    packaged = _packaged_jobqueue_defaults()
    out: dict[str, Any] = {}
    for key in JOBQUEUE_KEYS:
        value = dask.config.get(f"jobqueue.slurm.{key}", default=None)
        if value is not None and value != packaged.get(key):
            out[key] = value
    return out


#: Time a local worker process gets to exit after the survey [s]. distributed's default (4 s, then a
#: "Worker process still alive ... killing" warning) is too short on a loaded machine, where the
#: interpreter teardown of a worker that imported astropy/scipy/matplotlib takes longer.
WORKER_EXIT_TIMEOUT_S = 60.0


def _stop_local_workers(cluster: Any, timeout_s: float = WORKER_EXIT_TIMEOUT_S) -> None:
    """Ask every nanny of a ``LocalCluster`` to stop its worker, waiting up to ``timeout_s`` for each."""
    import asyncio

    async def stop_all(nannies: list[Any]) -> None:
        await asyncio.gather(
            *(n.close(timeout=timeout_s, reason="survey-finished") for n in nannies), return_exceptions=True
        )

    nannies = [w for w in getattr(cluster, "workers", {}).values() if hasattr(w, "close")]
    if nannies:
        try:
            cluster.sync(stop_all, nannies)
        except Exception:  # noqa: BLE001 - cluster.close() below still stops whatever is left
            pass


def _quiet_worker_shutdown(client: Any) -> None:
    """Register :class:`survey.workerplugin.QuietShutdownPlugin` on the workers of a cluster we started."""
    from .workerplugin import QuietShutdownPlugin

    client.register_plugin(QuietShutdownPlugin(), name=QuietShutdownPlugin.name)


def slurm_cluster_kwargs(cfg: Any, results_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` from ``cluster.slurm.*``.

    A key of :data:`JOBQUEUE_KEYS` is passed when the user set it (``Config.is_set``), or when the site's
    dask configuration (``jobqueue.yaml``) does not set it (then the value of ``survey/defaults.yaml``
    is passed); otherwise it is left out so that the site's ``jobqueue.slurm.<key>`` applies. The
    worker ``slots`` resource follows the cores and processes that apply.
    """
    s = cfg["cluster"]["slurm"]
    site = site_jobqueue_settings()
    is_set = getattr(cfg, "is_set", None)
    chosen: dict[str, Any] = {}
    for key in JOBQUEUE_KEYS:
        user = bool(is_set(f"cluster.slurm.{key}")) if callable(is_set) else True
        if user or key not in site:
            chosen[key] = s.get(key)
    cores = int(chosen["cores"] if "cores" in chosen else site["cores"])
    processes = int(chosen["processes"] if "processes" in chosen else site["processes"])
    if processes > cores:
        raise ConfigError(
            f"cluster.slurm.processes ({processes}) must not exceed cluster.slurm.cores ({cores})"
        )
    slots = max(1, cores // processes)
    log_dir = s.get("log_directory") or str(SurveyLayout(results_dir).slurm_log_dir)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "log_directory": log_dir,
        "worker_extra_args": [
            "--resources",
            f"{SLOT_RESOURCE}={slots}",
            *map(str, s.get("worker_extra_args") or []),
        ],
        "scheduler_options": {"dashboard_address": cfg["cluster"]["dashboard_address"]},
    }
    for key, value in chosen.items():
        if key in ("cores", "processes"):
            kwargs[key] = int(value)
        elif key in ("job_extra_directives", "job_script_prologue"):
            kwargs[key] = list(value or [])
        elif key == "python":
            kwargs[key] = value or sys.executable
        elif value not in (None, ""):
            kwargs[key] = value
    prologue = kwargs.get("job_script_prologue", site.get("job_script_prologue"))
    profile_line = WORKER_PROFILE_ON if cfg["cluster"]["profile"] else WORKER_PROFILE_OFF
    kwargs["job_script_prologue"] = [profile_line, *list(prologue or [])]
    if s.get("scheduler_host"):
        # the scheduler's own listen address (e.g. 127.0.0.1), independent of the workers' addresses
        kwargs["scheduler_options"]["host"] = s["scheduler_host"]
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
        with dask.config.set(scheduler_config(cfg)):
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
        _quiet_worker_shutdown(client)
        handle = ClusterHandle(client, cluster, kind, _dashboard(client), True)
    elif kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ConfigError(
                "cluster.kind: slurm needs dask-jobqueue (pip install 'xmm-survey[slurm]')"
            ) from exc
        from .config import check_slurm_listen

        slurm_kwargs = slurm_cluster_kwargs(cfg, results_dir)
        check_slurm_listen(slurm_kwargs, allow_network=bool(c.get("allow_network")))
        with dask.config.set(scheduler_config(cfg)):
            cluster = SLURMCluster(**slurm_kwargs)
        s = c["slurm"]
        cluster.adapt(
            minimum_jobs=int(s["minimum_jobs"]),
            maximum_jobs=max(int(s["maximum_jobs"]), int(s["minimum_jobs"])),
        )
        client = Client(cluster)
        _quiet_worker_shutdown(client)
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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` for the block (main thread only; elsewhere a no-op).

    SLURM ends a driver job (``scancel``, preemption, its walltime) with SIGTERM. Python's default
    would end the process at once and leave the worker jobs it submitted queued or running until their
    ``death-timeout``; as an interrupt, the cluster is closed on the way out (dask-jobqueue cancels its
    jobs) and every finished step stays recorded, so the same command resumes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is not an error
        return None
