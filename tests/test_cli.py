"""``xmm-survey``: --help on every sub-command, init, run/status/retry/clean and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_survey_helpers as helpers
import yaml

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
    cfg.write_text("pipeline:\n  module: test_survey_helpers\ncluster:\n  dashboard_address: '127.0.0.1:0'\n")
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
