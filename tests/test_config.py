"""Strict layered configuration: defaults < YAML file < command line; unknown keys and bad types rejected."""

from __future__ import annotations

import pytest
import yaml

from survey.config import (
    RESOLVED_NAME,
    example_config_text,
    load_config,
    load_defaults,
    parse_override,
    read_resolved,
    write_example_config,
    write_resolved,
)
from xmmcore.errors import ConfigError


def test_defaults_are_the_reference():
    cfg = load_config()
    assert cfg.to_dict() == load_defaults()
    assert cfg["cluster"]["kind"] == "local"
    assert cfg.get("cluster.dashboard_address").startswith("127.0.0.1:")
    assert cfg.get("filter.pn.pattern_max") == 4
    assert cfg.get("no.such.key", "absent") == "absent"
    assert cfg.sources == ("defaults",)


def test_layering_file_then_cli(tmp_path):
    path = tmp_path / "survey.yaml"
    path.write_text("fit:\n  stat: chi2\n  notice_kev: [0.3, 8]\ncluster:\n  workers: 3\n")
    cfg = load_config(path, ["cluster.workers=5", "fit.abund=wilm"])
    assert cfg["fit"]["stat"] == "chi2"  # file over defaults
    assert cfg["fit"]["notice_kev"] == [0.3, 8]
    assert cfg["cluster"]["workers"] == 5  # CLI over file
    assert cfg["fit"]["abund"] == "wilm"
    assert cfg["fit"]["model"] == load_defaults()["fit"]["model"]  # untouched keys keep defaults
    assert cfg["filter"]["mos1"]["pattern_max"] == 12  # sibling keys of a nested override kept
    assert cfg.sources == ("defaults", str(path), "cli")


@pytest.mark.parametrize(
    "text, key",
    [
        ("fit:\n  modle: apec\n", "fit.modle"),
        ("cluster:\n  slurm:\n    partition: short\n", "cluster.slurm.partition"),
        ("worker: 3\n", "worker"),
        ("filter:\n  pn:\n    patern_max: 4\n", "filter.pn.patern_max"),
    ],
)
def test_unknown_key_in_file_named(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_key_on_command_line_named():
    with pytest.raises(ConfigError, match="'cluster.worker'"):
        load_config(None, ["cluster.worker=2"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("cluster.workers=two", "cluster.workers must be integer"),
        ("cluster.workers=0", "cluster.workers must be >= 1"),
        ("cluster.kind=kubernetes", "cluster.kind must be one of local, slurm, address"),
        ("fit.notice_kev=0.5", "fit.notice_kev must be list"),
        ("flares.nsigma=high", "flares.nsigma must be"),
        ("fit.joint_cameras=1", "fit.joint_cameras must be true/false"),
        ("fit={stat: cstat, x: 1}", "'fit.x'"),
        ("regions=3", "regions must be a mapping"),
    ],
)
def test_type_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_values_are_yaml_and_ints_become_floats():
    cfg = load_config(
        None,
        [
            "flares.nsigma=3",
            "regions.centre=[150.1, 2.2]",
            "obsids=[a1, b2]",
            "filter.pn.flag=0",
            "regions.background.blanksky_files={pn: /x/pn.fits}",
        ],
    )
    assert cfg["flares"]["nsigma"] == 3.0 and isinstance(cfg["flares"]["nsigma"], float)
    assert cfg["regions"]["centre"] == [150.1, 2.2]
    assert cfg["obsids"] == ["a1", "b2"]
    assert cfg["filter"]["pn"]["flag"] == 0
    assert cfg["regions"]["background"]["blanksky_files"] == {"pn": "/x/pn.fits"}
    assert parse_override("fit.notice_kev=[0.3, 7]") == ("fit.notice_kev", [0.3, 7])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("fit.stat")


def test_unsafe_yaml_rejected(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("data_dir: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_resolved_config_written_with_hash_and_reloads(tmp_path):
    cfg = load_config(None, ["fit.stat=chi2", f"results_dir={tmp_path}"])
    path = write_resolved(cfg)
    assert path == tmp_path / RESOLVED_NAME
    text = path.read_text()
    assert f"# config_hash: sha256:{cfg.hash}" in text
    assert yaml.safe_load(text) == cfg.to_dict()
    again = read_resolved(tmp_path)
    assert again.to_dict() == cfg.to_dict() and again.hash == cfg.hash
    assert load_config(None, ["fit.stat=cstat"]).hash != cfg.hash
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_example_config_is_commented_defaults(tmp_path):
    path = write_example_config(tmp_path / "survey.yaml")
    text = path.read_text()
    assert text == example_config_text()
    assert text.count("#") > 50  # commented
    assert load_config(path).to_dict() == load_defaults()
    with pytest.raises(ConfigError, match="exists"):
        write_example_config(path)
    write_example_config(path, overwrite=True)


def test_with_overrides_checks_keys():
    cfg = load_config()
    assert cfg.with_overrides(["cluster.workers=7"])["cluster"]["workers"] == 7
    with pytest.raises(ConfigError, match="'cluster.wrkers'"):
        cfg.with_overrides({"cluster.wrkers": 7})


@pytest.mark.parametrize(
    "override",
    [
        "spectra.grouping=mincounts",
        "fit.stat=cash",
        "backend.reduction=SAS",
        "flares.method=espfilter",
        "fit.errors=minos",
        "regions.radius.method=r200",
    ],
)
def test_enumerated_values_are_checked_before_anything_runs(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key} must be one of"):
        load_config(None, [override])


# ------------------------------------------------------------------ checks before a run (load_config(for_run=True))
def _data_folders(tmp_path, *names):
    data = tmp_path / "data"
    for name in names:
        (data / name).mkdir(parents=True)
    return data


def test_obsid_list_typo_names_the_entry_and_the_folder_meant(tmp_path):
    data = _data_folders(tmp_path, "0900300001", "0900300101")
    listing = tmp_path / "obsids.txt"
    listing.write_text("# survey\n0900300001\n09003O0101\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, {"data_dir": str(data), "obsids": str(listing)}, for_run=True)
    msg = str(info.value)
    assert f"obsids ({listing}:3)" in msg and "'09003O0101' has no folder" in msg and "0900300101" in msg
    with pytest.raises(ConfigError, match=r"obsids\[1\]: '0900300011' has no folder"):
        load_config(None, {"data_dir": str(data), "obsids": ["0900300001", "0900300011"]}, for_run=True)
    with pytest.raises(ConfigError, match="is not a plain name"):
        load_config(None, {"data_dir": str(data), "obsids": ["0900300001", "../etc"]}, for_run=True)
    with pytest.raises(ConfigError, match="no ObsID list file of that name"):
        load_config(None, {"data_dir": str(data), "obsids": "obsid.txt"}, for_run=True)
    # what exists passes; a glob names no ObsID; without for_run (status, catalog) nothing is checked
    ok = load_config(None, {"data_dir": str(data), "obsids": "0900300001,0900300101"}, for_run=True)
    assert ok["obsids"] == "0900300001,0900300101"
    load_config(None, {"data_dir": str(data), "obsids": "09003*"}, for_run=True)
    load_config(None, {"data_dir": str(data), "obsids": ["0900300011"]})


def _fake_tools(bin_dir, **scripts):
    import os

    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return str(bin_dir) + os.pathsep + "/nonexistent-bin"


def test_slurm_without_sbatch_or_controller_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_tools(tmp_path / "none"))
    with pytest.raises(ConfigError, match="cluster.kind = slurm, but sbatch is not on the PATH"):
        load_config(None, ["cluster.kind=slurm"], for_run=True)
    load_config(None, ["cluster.kind=slurm"])  # loading alone (status, catalog) needs no SLURM
    monkeypatch.setenv(
        "PATH",
        _fake_tools(
            tmp_path / "bin",
            sbatch="exit 1",
            sinfo="echo 'sinfo: fatal: Could not establish a configuration source' >&2; exit 1",
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, ["cluster.kind=slurm"], for_run=True)
    assert "controller does not answer" in str(info.value) and "Could not establish" in str(info.value)
    monkeypatch.setenv("PATH", _fake_tools(tmp_path / "ok", sbatch="exit 0", sinfo="echo debug; exit 0"))
    assert load_config(None, ["cluster.kind=slurm"], for_run=True)["cluster"]["kind"] == "slurm"


def test_cli_stops_in_seconds_on_a_typo_with_nothing_written(tmp_path, monkeypatch, capsys):
    """A typo in an ObsID list, or SLURM selected where there is none, exits 2 before any record is
    written or any Dask cluster starts."""
    import time

    from survey import cli

    data = _data_folders(tmp_path, "0900300001")
    results = tmp_path / "results"
    t0 = time.perf_counter()
    code = cli.main(
        ["run", "--data", str(data), "--results", str(results), "--obsids", "0900300001,0900300010"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "'0900300010' has no folder" in err and "0900300001" in err
    monkeypatch.setenv("PATH", _fake_tools(tmp_path / "none"))
    code = cli.main(["run", "--data", str(data), "--results", str(results), "--cluster", "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "sbatch is not on the PATH" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 10.0
    assert not results.exists()


def test_init_writes_each_key_once(tmp_path):
    """`xmm-survey init` output goes through the strict loader, which refuses a key given twice."""
    path = write_example_config(tmp_path / "survey.yaml")
    assert load_config(path).to_dict() == load_defaults()
    twice = tmp_path / "twice.yaml"
    twice.write_text(path.read_text().replace("fit:\n", "fit:\n  auto_set: false\n", 1))
    with pytest.raises(ConfigError, match="duplicate key 'auto_set'"):
        load_config(twice)
