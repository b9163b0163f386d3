"""What made worker and driver memory grow with the number of ObsIDs: futures held to the end of the
survey (their results and task state stayed on the scheduler and the workers) and one registered
Logger per ObsID and step. Both are gone; benchmarks/bench_survey_scale.py measures the memory."""

from __future__ import annotations

import gc
import logging

import pytest
from helpers import survey_steps as helpers

from survey.api import run_one, run_survey
from survey.config import load_config


def _cfg(tmp_path):
    return load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "pipeline.module": "helpers.survey_steps",
            "joint.enabled": False,
        },
    )


def test_finished_step_futures_are_forgotten_while_the_survey_runs(tmp_path):
    distributed = pytest.importorskip("distributed")
    ids = helpers.make_survey(tmp_path / "data", 4)
    held = []
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:

        def on_outcome(_outcome):
            held.append(len(client.futures))

        report = run_survey(
            _cfg(tmp_path), client=client, progress=False, catalogue=False, on_outcome=on_outcome
        )
        assert sorted(report.done) == ids
        assert len(held) == 4 * len(ids)
        # the client held all 16 step futures at the start; each finished one is released at once
        # (the release reaches the client's loop asynchronously: at most the current one is still held)
        assert all(h <= 4 * len(ids) - i for i, h in enumerate(held)), held
        assert held[-1] <= 1, held


def test_step_loggers_are_not_kept_per_obsid(tmp_path):
    ids = helpers.make_survey(tmp_path / "data", 2)
    cfg = _cfg(tmp_path)
    for obsid in ids:
        assert {o["status"] for o in run_one(cfg, obsid).values()} == {"done"}
    registered = [n for n in logging.Logger.manager.loggerDict if n.startswith("xmm.09100000")]
    assert registered == []
    # the step logs were still written, one file per step
    for obsid in ids:
        for step in helpers.STEPS:
            text = (tmp_path / "results" / obsid / "logs" / f"{step}.log").read_text()
            assert f"step {step} of {obsid}: done in" in text


def test_survey_workers_run_without_the_statistical_profiler(tmp_path):
    from survey.cluster import WORKER_PROFILE_OFF, slurm_cluster_kwargs, start_cluster

    cfg = load_config(
        None,
        {
            "results_dir": str(tmp_path),
            "cluster.workers": 1,
            "cluster.dashboard_address": "127.0.0.1:0",
            "cluster.slurm.job_script_prologue": ["module load python"],
        },
    )
    with start_cluster(cfg, results_dir=tmp_path) as handle:
        import dask

        flags = handle.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert list(flags.values()) == [False]
    prologue = slurm_cluster_kwargs(cfg, tmp_path)["job_script_prologue"]
    assert prologue == [WORKER_PROFILE_OFF, "module load python"]


def test_cluster_profile_key_turns_the_profiler_on_and_writes_the_profile(tmp_path):
    """``cluster.profile: true`` (default false): profiler on in local and SLURM workers, HTML profile written."""
    from survey.cluster import PROFILE_PATH, WORKER_PROFILE_ON, slurm_cluster_kwargs, start_cluster

    pytest.importorskip("bokeh")
    ids = helpers.make_survey(
        tmp_path / "data", 2, meta={f"{910000000 + i:010d}": {"work_s": 0.3} for i in range(2)}
    )
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "pipeline.module": "helpers.survey_steps",
            "joint.enabled": False,
            "cluster.workers": 1,
            "cluster.dashboard_address": "127.0.0.1:0",
            "cluster.profile": True,
        },
    )
    assert load_config(None, {})["cluster"]["profile"] is False
    assert slurm_cluster_kwargs(cfg, tmp_path)["job_script_prologue"][0] == WORKER_PROFILE_ON
    with start_cluster(cfg, results_dir=tmp_path / "results") as handle:
        import dask

        flags = handle.client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert list(flags.values()) == [True]
        report = run_survey(cfg, client=handle.client, progress=False, catalogue=False)
    assert sorted(report.done) == ids
    page = (tmp_path / "results" / PROFILE_PATH).read_text()
    assert "<html" in page.lower() and "bokeh" in page.lower()
    assert "Dask profile: " in (tmp_path / "results" / "logs" / "survey.log").read_text()


def _one_step(obs, outdir, cfg, *, log):
    log.info("step of %s", obs.obsid)
    return {}


def _counts() -> dict[str, int]:
    gc.collect()
    return {
        "loggers": len(logging.Logger.manager.loggerDict),
        "handler refs": len(logging._handlerList),  # type: ignore[attr-defined]
        "named handlers": len(logging._handlers),  # type: ignore[attr-defined]
        "root handlers": len(logging.getLogger().handlers),
        "survey.run handlers": len(logging.getLogger("survey.run").handlers),
    }


def test_fifty_run_one_calls_leave_logging_flat(tmp_path):
    """run_one in one long process (a job-array runner, a notebook) leaves no logging objects behind: it
    left a registered ``survey.<obsid>.run`` Logger and a ``survey.<obsid>`` PlaceHolder per ObsID."""
    ids = helpers.make_survey(tmp_path / "data", 52, n_events=20)
    cfg = _cfg(tmp_path)
    for obsid in ids[:2]:  # warm-up: module-level loggers made on first use
        assert run_one(cfg, obsid, pipeline={"only": _one_step})["only"]["status"] == "done"
    before = _counts()
    for obsid in ids[2:]:
        assert run_one(cfg, obsid, pipeline={"only": _one_step})["only"]["status"] == "done"
    assert _counts() == before
    # the per-ObsID logs are still written, one file per ObsID
    for obsid in (ids[2], ids[-1]):
        text = (tmp_path / "results" / "logs" / "run-one" / f"{obsid}.log").read_text()
        assert f"run-one {obsid} on node" in text and f"{obsid} only done" in text
        assert f"step of {obsid}" in (tmp_path / "results" / obsid / "logs" / "only.log").read_text()
