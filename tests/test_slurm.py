"""SLURM: the sbatch templates and local-cluster.sh (always), and a real single-node SLURM (marker ``slurm``)
running a small survey through dask-jobqueue's SLURMCluster and through the job-array mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import survey_steps as helpers

from survey.api import run_survey
from survey.cluster import slurm_cluster_kwargs
from survey.config import load_config
from survey.steps import read_record

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
TESTS = REPO / "tests"


@pytest.mark.parametrize("name", ["local-cluster.sh", "driver.sbatch", "array.sbatch", "submit-array.sh"])
def test_scripts_parse_and_are_executable(name):
    path = SLURM / name
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_templates_say_what_they_run():
    driver = (SLURM / "driver.sbatch").read_text()
    assert "#SBATCH --job-name=xmm-survey-driver" in driver and "run --config" in driver
    assert "--cluster slurm" in driver
    array = (SLURM / "array.sbatch").read_text()
    assert "run-one" in array and "SLURM_ARRAY_TASK_ID" in array and "--obsid-list" in array
    assert "afterany" in (SLURM / "submit-array.sh").read_text()


def test_local_cluster_usage_message():
    out = subprocess.run(
        ["bash", str(SLURM / "local-cluster.sh")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2 and "start|stop|status" in out.stderr


def test_slurm_cluster_kwargs_from_config(tmp_path):
    cfg = load_config(
        None,
        {
            "results_dir": str(tmp_path),
            "cluster.slurm.queue": "short",
            "cluster.slurm.account": "xmm",
            "cluster.slurm.cores": 4,
            "cluster.slurm.processes": 2,
            "cluster.slurm.job_extra_directives": ["--qos=low"],
            "cluster.slurm.job_script_prologue": ["module load python"],
        },
    )
    kw = slurm_cluster_kwargs(cfg, tmp_path)
    assert kw["queue"] == "short" and kw["account"] == "xmm" and kw["cores"] == 4 and kw["processes"] == 2
    assert kw["worker_extra_args"] == ["--resources", "slots=2"]
    assert kw["log_directory"] == str(tmp_path / "logs" / "slurm")
    assert kw["scheduler_options"]["dashboard_address"].startswith("127.0.0.1:")
    from dask_jobqueue.slurm import SLURMJob

    script = SLURMJob(
        scheduler="tcp://127.0.0.1:8786",
        name="w",
        **{k: v for k, v in kw.items() if k != "scheduler_options"},
    ).job_script()
    for line in (
        "#SBATCH -p short",
        "#SBATCH -A xmm",
        "#SBATCH --qos=low",
        "module load python",
        "--resources slots=2",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
    ):
        assert line in script, line


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """A real single-node SLURM started by slurm/local-cluster.sh (stopped again at the end)."""
    state = tmp_path_factory.mktemp("slurm-state")
    env = dict(os.environ, XMM_SLURM_DIR=str(state))
    out = subprocess.run(
        ["bash", str(SLURM / "local-cluster.sh"), "start"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("export SLURM_CONF="))
    conf = line.split("=", 1)[1]
    assert Path(conf).exists()
    try:
        yield {"SLURM_CONF": conf, "XMM_SLURM_DIR": str(state)}
    finally:
        subprocess.run(["bash", str(SLURM / "local-cluster.sh"), "stop"], env=env, timeout=120, check=False)


@pytest.mark.slurm
def test_survey_through_slurmcluster(tmp_path, slurm_env, monkeypatch):
    catalog = pytest.importorskip("catalog")
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])  # the client tools find this cluster
    ids = helpers.make_survey(
        tmp_path / "data", 4, meta={"0910000002": {"fail": {"step": "regions", "kind": "InputDataError"}}}
    )
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "pipeline.module": "helpers.survey_steps",
            "cluster.kind": "slurm",
            "cluster.dashboard_address": "127.0.0.1:0",
            "cluster.slurm.interface": "lo",
            "cluster.slurm.memory": "1GB",
            "cluster.slurm.walltime": "00:10:00",
            "cluster.slurm.minimum_jobs": 2,
            "cluster.slurm.maximum_jobs": 2,
            "cluster.slurm.job_script_prologue": [f"export PYTHONPATH={TESTS}"],
        },
    )
    report = run_survey(cfg, progress=False)
    res = tmp_path / "results"
    assert sorted(report.done) == [ids[0], ids[1], ids[3]]
    assert "InputDataError" in report.failed[ids[2]]
    assert report.catalogue_error is None, report.catalogue_error
    # the steps ran in SLURM jobs: worker job logs were written and each record names a worker pid
    job_logs = list((res / "logs" / "slurm").glob("*.err"))
    assert job_logs and any("Starting Worker" in p.read_text() for p in job_logs)
    assert list((res / "logs" / "workers").glob("*.log"))
    pids = {read_record(res / o, "filter")["pid"] for o in ids}
    assert os.getpid() not in pids
    df = catalog.load(res / "catalogue.parquet")
    epic = df[df["camera"] == "epic"] if "camera" in df else df
    assert sorted(epic["obsid"]) == ids
    assert dict(zip(epic["obsid"], epic["status"])) == {
        ids[0]: "done",
        ids[1]: "done",
        ids[2]: "failed",
        ids[3]: "done",
    }
    assert (res / "catalogue.fits").exists()


@pytest.mark.slurm
def test_job_array_mode(tmp_path, slurm_env):
    ids = helpers.make_survey(tmp_path / "data", 3)
    listing = tmp_path / "obsids.txt"
    listing.write_text("# three clusters\n" + "\n".join(ids) + "\n")
    config = tmp_path / "survey.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nresults_dir: {tmp_path / 'results'}\n"
        "pipeline:\n  module: helpers.survey_steps\n"
    )
    env = dict(
        os.environ,
        SLURM_CONF=slurm_env["SLURM_CONF"],
        PYTHONPATH=str(TESTS),
        XMM_SURVEY=f"{sys.executable} -m survey.cli",
    )
    out = subprocess.run(
        ["bash", str(SLURM / "submit-array.sh"), str(config), str(listing), "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "(3 ObsIDs)" in out.stdout
    cat_job = out.stdout.split("catalogue job")[1].strip()
    deadline = time.monotonic() + 180
    squeue = shutil.which("squeue")
    while time.monotonic() < deadline:
        q = subprocess.run(
            [squeue, "-h", "-j", cat_job], capture_output=True, text=True, env=env, check=False
        )
        if not q.stdout.strip():
            break
        time.sleep(1)
    res = tmp_path / "results"
    for obsid in ids:
        assert [read_record(res / obsid, s)["status"] for s in helpers.STEPS] == ["done"] * 4
    array_logs = sorted(tmp_path.glob("xmm-survey-*_*.out"))
    assert len(array_logs) == 3
    if __import__("importlib").util.find_spec("catalog") is not None:
        assert (res / "catalogue.parquet").exists(), list(tmp_path.glob("xmm-survey-catalogue-*.out"))


def _start(state: Path, nodes: int, **env_more: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("XMM_SLURMCTLD_PORT", "XMM_SLURMD_PORT")}
    env.update(XMM_SLURM_DIR=str(state), XMM_SLURM_NODES=str(nodes), **env_more)
    return subprocess.Popen(
        ["bash", str(SLURM / "local-cluster.sh"), "start"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(*states: Path) -> None:
    """Stop single-node clusters, all at once (a stop waits ~5 s for slurmctld to exit)."""
    stops = [
        subprocess.Popen(
            ["bash", str(SLURM / "local-cluster.sh"), "stop"],
            env=dict(os.environ, XMM_SLURM_DIR=str(state), XMM_SLURM_NODES="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for state in states
    ]
    for stop in stops:
        stop.wait(timeout=120)


@pytest.mark.slurm
def test_two_clusters_started_at_once_take_different_ports(tmp_path):
    """Two test runs' clusters at the same time: the second start waits for the first's ports, then picks free ones."""
    states = [tmp_path / "a", tmp_path / "b"]
    procs = [_start(states[0], 1), _start(states[1], 1)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, out + err
        assert any("another local cluster is starting" in err for _out, err in outs)
        ports = [tuple(int(x) for x in (s / "ports").read_text().split()) for s in states]
        used = [set(p) for p in ports]
        assert not used[0] & used[1], ports
        for state, (ctld, slurmd) in zip(states, ports, strict=True):
            conf = (state / "slurm.conf").read_text()
            assert f"SlurmctldPort={ctld}\n" in conf and f"SlurmdPort={slurmd}\n" in conf
            sinfo = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %T"],
                env=dict(os.environ, SLURM_CONF=str(state / "slurm.conf")),
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert all(line.split()[1].startswith("idle") for line in sinfo.stdout.splitlines()), sinfo.stdout
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        _stop(*states)


@pytest.mark.slurm
def test_given_port_in_use_is_refused_by_name(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = _start(tmp_path / "c", 1, XMM_SLURMCTLD_PORT=str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert f"XMM_SLURMCTLD_PORT={port}" in err and "in use" in err
    assert not (tmp_path / "c" / "munge" / "munged.pid").exists()  # refused before any daemon started
