"""``xmm-survey``: --help on every sub-command, init, run/status/retry/clean and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import survey_steps as helpers

from survey.cli import PLUGIN_COMMANDS, build_parser, main
from survey.config import load_defaults

TESTS = Path(__file__).resolve().parent
OWN = ["run", "run-one", "status", "init", "retry", "clean"]


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(action.choices)


def test_every_subcommand_has_help(capsys):
    names = _subcommands()
    assert set(OWN) <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: xmm-survey " + name in capsys.readouterr().out


def test_plugins_registered_when_importable():
    import importlib.util

    names = _subcommands()
    for plugin in PLUGIN_COMMANDS:
        present = importlib.util.find_spec(f"survey.commands.{plugin}") is not None
        assert (plugin in names) == present, plugin


def test_run_help_lists_the_documented_options(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for opt in ("--data", "--results", "--config", "--workers", "--cluster", "--set"):
        assert opt in text


def test_console_script_help():
    exe = Path(sys.executable).with_name("xmm-survey")
    if not exe.exists():
        pytest.skip("xmm-survey console script not installed in this environment")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "status" in out.stdout


def test_init_writes_commented_defaults(tmp_path, capsys):
    target = tmp_path / "survey.yaml"
    assert main(["init", str(target)]) == 0
    assert yaml.safe_load(target.read_text()) == load_defaults()
    assert "# " in target.read_text()
    assert main(["init", str(target)]) == 2  # ConfigError: exists
    assert "exists" in capsys.readouterr().err


def test_config_errors_exit_2(tmp_path, capsys):
    assert (
        main(["run", "--data", str(tmp_path), "--results", str(tmp_path / "r"), "--set", "fit.modle=x"]) == 2
    )
    err = capsys.readouterr().err
    assert "'fit.modle'" in err and "ConfigError" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  workers: many\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "cluster.workers must be integer" in capsys.readouterr().err


def test_missing_data_dir_exit_3(tmp_path, capsys):
    code = main(["run", "--data", str(tmp_path / "nope"), "--results", str(tmp_path / "r"), "--no-progress"])
    assert code == 3 and "data directory does not exist" in capsys.readouterr().err


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run(
        [sys.executable, "-m", "survey.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_run_status_retry_clean_end_to_end(tmp_path):
    ids = helpers.make_survey(
        tmp_path / "data", 3, meta={"0910000001": {"fail": {"step": "spectra", "kind": "ToolError"}}}
    )
    cfg = tmp_path / "survey.yaml"
    cfg.write_text(
        "pipeline:\n  module: helpers.survey_steps\ncluster:\n  dashboard_address: '127.0.0.1:0'\n"
    )
    run = _cli(
        "run",
        "--config",
        str(cfg),
        "--data",
        "data",
        "--results",
        "results",
        "--workers",
        "2",
        "--no-catalogue",
        cwd=tmp_path,
    )
    assert run.returncode == 4, run.stdout + run.stderr  # a ToolError ObsID -> exit 4
    assert "Dask dashboard: http://127.0.0.1:" in run.stdout
    assert (
        tmp_path / "results" / "logs" / "dask.log"
    ).exists()  # Dask's own messages: a file, not the terminal
    assert "distributed." not in run.stderr
    assert "2/3 ObsIDs done, 1 failed" in run.stdout and f"FAILED {ids[1]}: spectra: ToolError" in run.stdout
    resolved = yaml.safe_load((tmp_path / "results" / "config.resolved.yaml").read_text())
    assert resolved["data_dir"] == str(tmp_path / "data") and resolved["cluster"]["workers"] == 2

    status = _cli("status", "--results", "results", cwd=tmp_path)
    assert status.returncode == 0
    assert "3 ObsIDs: 2 done, 1 failed" in status.stdout and "spectra: ToolError" in status.stdout

    (tmp_path / "data" / ids[1] / "meta.json").unlink()
    retry = _cli(
        "retry",
        "--failed",
        "--results",
        "results",
        "--no-progress",
        "--no-catalogue",
        "--set",
        "fit.stat=cstat",
        cwd=tmp_path,
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert f"retrying 1 ObsIDs: {ids[1]}" in retry.stdout
    assert "No such file" not in retry.stderr
    assert (
        _cli("retry", "--failed", "--results", "results", cwd=tmp_path).stdout.strip() == "no failed ObsIDs"
    )

    clean = _cli("clean", "--obsid", ids[0], "--results", "results", cwd=tmp_path)
    assert clean.returncode == 0 and not (tmp_path / "results" / ids[0]).exists()
    assert _cli("clean", "--obsid", "../x", "--results", "results", cwd=tmp_path).returncode == 3


# ------------------------------------------------------------------ the CLI a new user meets
def _tiny_catalogue(results: Path, n: int = 3) -> Path:
    """A schema-conformed catalogue of ``n`` fitted ObsIDs (kT = 1, 2, ...; z = 0.1 + 0.01 i)."""
    import pandas as pd

    from catalog import io as cio
    from catalog import schema

    cols = schema.columns()
    rows = []
    for i in range(n):
        row = schema.empty_row(cols)
        row.update(
            obsid=f"{900000001 + i:010d}",
            camera="epic",
            kind="obs",
            status="done",
            kT=1.0 + i,
            z=(10 + i) / 100,
        )
        row.update(abund=0.3, dof=100 + i)
        rows.append(row)
    results.mkdir(parents=True, exist_ok=True)
    cio.write_catalogue(schema.conform(pd.DataFrame(rows), cols), results, append=False)
    return results


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("xmm-survey ") and len(out.split()) == 2


def test_catalog_query_columns_and_bad_expressions(tmp_path, capsys):
    results = _tiny_catalogue(tmp_path / "results")
    code = main(["catalog", "query", "kT > 1.5", "--results", str(results), "--columns", "obsid,kT,z"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out == ["obsid,kT,z", "0900000002,2.0,0.11", "0900000003,3.0,0.12"]
    cases = {
        "kT >> 4": "the operator >> is not allowed",
        "kt > 4": "no column 'kt' (did you mean kT?)",
        "kT + 1": "it must be a condition on rows",
        "kT > 4 and": "invalid catalogue query 'kT > 4 and'",
    }
    for expr, message in cases.items():
        assert main(["catalog", "query", expr, "--results", str(results)]) == 2, expr
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert main(["catalog", "query", "kT > 1", "--results", str(results), "--columns", "obsid,Kt"]) == 2
    assert "unknown catalogue column 'Kt' (did you mean kT?)" in capsys.readouterr().err


def test_closed_pipe_is_quiet(tmp_path):
    """`xmm-survey catalog query ... | head -1`: no BrokenPipeError traceback when the reader leaves."""
    results = _tiny_catalogue(tmp_path / "results", n=2500)  # > 64 KiB of CSV: the pipe fills
    proc = subprocess.Popen(
        [sys.executable, "-m", "survey.cli", "catalog", "query", "kT > 0", "--results", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().decode().startswith("obsid,camera,")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 141


def test_status_long_shows_whole_reasons(tmp_path):
    from survey.status import StepState, SurveyStatus, format_status

    reason = "cannot read EVENTS of " + "/very/long/path" * 8 + "/pn.fits: the file is truncated"
    status = SurveyStatus(results_dir=tmp_path, steps=["filter", "fit"], skipped={})
    status.rows["0900000001"] = {
        "filter": StepState("failed", reason=reason, exception="InputDataError"),
        "fit": StepState("pending"),
    }
    short, whole = format_status(status), format_status(status, width=None)
    assert reason not in short and "status --long" in short
    assert f"filter: InputDataError: {reason}" in whole and "status --long" not in whole
    assert build_parser().parse_args(["status", "--long"]).long


def test_retry_needs_no_flag_and_options_agree(tmp_path, capsys):
    from survey.config import load_config, write_resolved

    (tmp_path / "data").mkdir()
    write_resolved(load_config(None, {"data_dir": str(tmp_path / "data")}), tmp_path / "results")
    assert main(["retry", "--results", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.strip() == "no failed ObsIDs"
    # one spelling and one default for the same option in fit, joint and the configuration
    defaults = load_defaults()["fit"]
    from survey.commands.fit import parse_notice

    fit = build_parser().parse_args(["fit", "a.pha", "--model", "powerlaw"])
    joint = build_parser().parse_args(["joint", "--target", "A", "--obsids", "1", "2", "--notice", "0.5-7"])
    assert parse_notice(fit.notice) == tuple(defaults["notice_kev"]) == parse_notice(joint.notice)
    assert fit.errors == defaults["errors"] == "profile" and fit.stat == defaults["stat"]
    # joint takes what it does not get from the run's config.resolved.yaml (the same defaults)
    unset = build_parser().parse_args(["joint", "--target", "A", "--obsids", "1", "2"])
    assert unset.errors is None and unset.stat is None and unset.notice is None


def test_joint_needs_two_obsids_of_one_target(tmp_path, capsys):
    import json

    results = tmp_path / "results"
    metas = {
        "0900000001": {"name": "A2029", "ra": 227.73, "dec": 5.74, "z": 0.0773},
        "0900000002": {"name": "A2029", "ra": 227.75, "dec": 5.76, "z": 0.0773},
        "0900000003": {"name": "A1795", "ra": 207.22, "dec": 26.59, "z": 0.0622},
    }
    for obsid, meta in metas.items():
        (results / obsid).mkdir(parents=True)
        (results / obsid / "meta.json").write_text(json.dumps(meta))
    assert main(["joint", "--results", str(results), "--target", "A2029", "--obsids", "0900000001"]) == 2
    assert "needs at least 2 ObsIDs" in capsys.readouterr().err
    args = ["joint", "--results", str(results), "--target", "A2029", "--obsids", "0900000001", "0900000003"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "target names differ" in err and "redshifts differ by 0.0151" in err and "arcmin apart" in err
    assert "--force" in err
    from survey.commands.catalog import check_joint_obsids

    assert check_joint_obsids(results, "A2029", ["0900000001", "0900000002"]) == []
    notes = check_joint_obsids(results, "A2029", ["0900000001", "0900000003"], force=True)
    assert len(notes) == 1 and "redshifts differ" in notes[0]


def test_simulate_options_are_the_simulators_defaults():
    import inspect

    from survey.commands.simulate import SIMULATOR_OPTIONS
    from xmmcore.simulate import simulate_survey

    params = inspect.signature(simulate_survey).parameters
    assert {name: default for name, _, default, *_ in SIMULATOR_OPTIONS} == {
        name: params[name].default for name, *_ in SIMULATOR_OPTIONS
    }
    assert len(SIMULATOR_OPTIONS) == 8


def test_fit_command_builds_the_engine_as_a_survey_does(xmm_data, tmp_path, capsys):
    """`xmm-survey fit` on the A2443 pn fakeit gives the built-in engine's own fit of the same files."""
    import json

    from survey.cli import main
    from survey.config import load_config
    from xmmcore.fitting.engines import FitInput, engine_from_config

    d = xmm_data / "a2443_fakeit"
    pha, rmf, arf = d / "pnS004-A2443_reg2.fak", d / "pnS004-A2443_reg2.rmf", d / "pnS004-A2443_reg2.arf"
    argv = ["fit", str(pha), "--rmf", str(rmf), "--arf", str(arf), "--model", "phabs*powerlaw"]
    argv += ["--set", "phabs_1.nH=0.1,frozen", "--errors", "none", "--notice", "2-8", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    engine = engine_from_config(load_config(None, {"backend.fitting": "builtin"}))
    direct = engine.fit_files(
        [FitInput(pha=pha, rmf=rmf, arf=arf, name=pha.stem)],
        "phabs*powerlaw",
        stat="cstat",
        notice_kev=(2.0, 8.0),
        set_params=["phabs_1.nH=0.1,frozen"],
        errors=None,
        flux_bands_kev=[(0.5, 2.0), (2.0, 10.0)],
        log=__import__("logging").getLogger("t"),
    )
    assert out["engine"] == "builtin" and out["converged"] is True and out["dof"] == direct.dof
    assert out["statistic"] == pytest.approx(direct.statistic, rel=1e-9)
    got = {p["name"]: p["value"] for p in out["parameters"]}
    for p in direct.to_dict()["parameters"]:
        assert got[p["name"]] == pytest.approx(p["value"], rel=1e-7), p["name"]
    assert 1.5 < got["powerlaw_1.PhoIndex"] < 2.5


@pytest.mark.parametrize("user_set", [False, True])
def test_run_one_runs_blas_single_threaded_unless_the_user_says(tmp_path, monkeypatch, capsys, user_set):
    """As Dask's nanny does for its workers: run-one (a SLURM array task) runs the pipeline with one BLAS
    thread, so that OpenBLAS does not start a thread per core; a thread count set by the user is kept."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import survey.api

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    if user_set:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    seen: list[list[int]] = []

    def fake_run_one(cfg, obsid, **kw):
        seen.append([p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"])
        return {"filter": {"status": "done"}}

    monkeypatch.setattr(survey.api, "run_one", fake_run_one)
    data = tmp_path / "data"
    data.mkdir()
    code = main(["run-one", "--data", str(data), "--results", str(tmp_path / "r"), "--obsid", "0100000001"])
    assert code == 0 and "0100000001 filter: done" in capsys.readouterr().out
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert seen and seen[0]
    if user_set:
        assert seen[0] == before  # untouched
    else:
        assert set(seen[0]) == {1}
