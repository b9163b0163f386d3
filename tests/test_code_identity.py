"""Resume compares the code that made a step record: a development tree whose code changed recomputes.

Before the code identity, the inputs hash covered package versions only, so an edited ``xmmcore`` kept
serving the step results of the code before the edit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import survey_steps as helpers

from catalog.rows import rows_for_obsid
from survey import api
from survey.api import run_one
from survey.config import load_config
from survey.steps import read_record
from xmmcore import provenance
from xmmcore.provenance import code_identity, code_matches, code_version


def _cfg(tmp_path: Path, **extra: object):
    return load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "pipeline.module": "helpers.survey_steps",
            **extra,
        },
    )


def _other_code(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Make this process look like it runs edited code (another sha256 of the package files)."""
    real = code_identity("helpers.survey_steps")
    edited = {**real, "sha256": "0" * 64, "git_dirty": True}
    monkeypatch.setattr(api, "code_identity", lambda module=None: dict(edited))
    return edited


def test_records_carry_the_code_and_a_code_change_recomputes(tmp_path, monkeypatch):
    (obsid,) = helpers.make_survey(tmp_path / "data", 1)
    cfg = _cfg(tmp_path)
    first = run_one(cfg, obsid)
    assert {o["status"] for o in first.values()} == {"done"}
    code = code_identity("helpers.survey_steps")
    assert len(code["sha256"]) == 64 and set(code["packages"]) == {"xmmcore", "helpers"}
    for step in helpers.STEPS:
        assert read_record(tmp_path / "results" / obsid, step)["code"] == json.loads(json.dumps(code))
    assert {o["status"] for o in run_one(cfg, obsid).values()} == {"cached"}

    started = {s: read_record(tmp_path / "results" / obsid, s)["started"] for s in helpers.STEPS}
    edited = _other_code(monkeypatch)
    again = run_one(cfg, obsid)
    assert {o["status"] for o in again.values()} == {"done"}, again
    for step in helpers.STEPS:
        rec = read_record(tmp_path / "results" / obsid, step)
        assert rec["code"]["sha256"] == edited["sha256"] and rec["started"] != started[step]
    assert {o["status"] for o in run_one(cfg, obsid).values()} == {"cached"}

    # the catalogue rows say which code made them
    rows = rows_for_obsid(tmp_path / "results", obsid)
    assert rows and {r["code_version"] for r in rows} == {code_version(edited)}
    assert code_version(edited).endswith("sha256:" + "0" * 16)


def test_reuse_across_code_opts_out_both_ways(tmp_path, monkeypatch):
    (obsid,) = helpers.make_survey(tmp_path / "data", 1)
    assert {o["status"] for o in run_one(_cfg(tmp_path), obsid).values()} == {"done"}
    _other_code(monkeypatch)
    reuse = _cfg(tmp_path, **{"pipeline.reuse_across_code": True})
    assert {o["status"] for o in run_one(reuse, obsid).values()} == {"cached"}
    # without the opt-out the same records are recomputed by this (other) code
    assert {o["status"] for o in run_one(_cfg(tmp_path), obsid).values()} == {"done"}


def test_a_code_change_reruns_a_step_that_failed_deterministically(tmp_path, monkeypatch):
    (obsid,) = helpers.make_survey(
        tmp_path / "data", 1, meta={"0910000000": {"fail": {"step": "regions", "kind": "InputDataError"}}}
    )
    cfg = _cfg(tmp_path)
    first = run_one(cfg, obsid)
    assert first["regions"]["status"] == "failed"
    assert run_one(cfg, obsid)["regions"]["attempts"] == first["regions"]["attempts"]  # not rerun
    before = read_record(tmp_path / "results" / obsid, "regions")["started"]
    _other_code(monkeypatch)  # e.g. the bug was fixed
    run_one(cfg, obsid)
    assert read_record(tmp_path / "results" / obsid, "regions")["started"] != before


def test_old_records_without_code_are_not_reused():
    code = {"sha256": "a" * 64}
    assert not code_matches({"inputs_hash": "x"}, code)
    assert code_matches({"code": {"sha256": "a" * 64}}, code)
    assert not code_matches({"code": {"sha256": "b" * 64}}, code)
    assert code_matches({"code": {"sha256": "b" * 64}}, code, reuse_across_code=True)
    assert code_version({"sha256": "c" * 64, "git_commit": "d" * 40, "git_dirty": True}) == (
        "d" * 12 + "+dirty sha256:" + "c" * 16
    )
    assert code_version({"sha256": "c" * 64, "git_commit": None}) == "sha256:" + "c" * 16


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_identity_follows_the_files_and_the_git_state(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    pkg = repo / "idpkg_t1"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text("STEPS = ('a',)\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "steps.cpython.pyc").write_bytes(b"ignored")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    monkeypatch.syspath_prepend(str(repo))

    def identity():
        provenance._identity_cached.cache_clear()
        return code_identity("idpkg_t1.steps")

    clean = identity()
    assert clean["packages"] == ["idpkg_t1", "xmmcore"]
    assert clean["git"]["idpkg_t1"] == {"commit": head.strip(), "dirty": False}
    (pkg / "__pycache__" / "steps.cpython.pyc").write_bytes(b"still ignored")
    assert identity()["sha256"] == clean["sha256"]

    (pkg / "steps.py").write_text("STEPS = ('a', 'b')\n")
    edited = identity()
    assert edited["sha256"] != clean["sha256"]
    assert edited["git"]["idpkg_t1"] == {"commit": head.strip(), "dirty": True}
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    committed = identity()
    # committing changes the commit, never the content hash (so nothing reruns for a commit alone)
    assert committed["sha256"] == edited["sha256"] and committed["git"]["idpkg_t1"]["dirty"] is False
    assert committed["git"]["idpkg_t1"]["commit"] != head.strip()
    (pkg / "new.py").write_text("X = 1\n")  # a new file is code too
    added = identity()
    assert added["sha256"] != committed["sha256"] and added["git"]["idpkg_t1"]["dirty"] is True

    shutil.rmtree(repo / ".git")  # an installed copy: no git, the files alone
    plain = identity()
    assert "idpkg_t1" not in plain["git"] and plain["sha256"] == added["sha256"]
    provenance._identity_cached.cache_clear()
    sys.modules.pop("idpkg_t1", None)


def test_this_checkout_has_a_commit_when_it_is_a_git_tree():
    code = code_identity()
    root = Path(provenance.__file__).resolve().parent.parent
    in_git = shutil.which("git") is not None and any((d / ".git").exists() for d in (root, *root.parents))
    if not in_git:
        pytest.skip("xmmcore does not run from a git checkout here")
    assert len(code["git_commit"]) == 40 and isinstance(code["git_dirty"], bool)
    assert code_version(code).startswith(code["git_commit"][:12])


def test_cli_flag_sets_the_opt_out():
    from survey.cli import _overrides, build_parser

    for cmd in (["run"], ["run-one", "--obsid", "0910000000"]):
        args = build_parser().parse_args([*cmd, "--reuse-across-code"])
        assert "pipeline.reuse_across_code=true" in _overrides(args)
        assert "pipeline.reuse_across_code=true" not in _overrides(build_parser().parse_args(cmd))


def test_joint_record_of_other_code_is_not_reused(tmp_path):
    from survey import joint, steps
    from xmmcore.observation import Observation

    obs = {
        o: Observation(obsid=o, root=tmp_path / "data" / o, event_files={}, meta={"name": "A"})
        for o in ("01", "02")
    }
    cfg = {"cameras": ["pn"]}  # what the inputs hash reads (no fit runs here)
    results = tmp_path / "results"
    for o in obs:
        (results / o / "spectra").mkdir(parents=True)
        (results / o / "spectra" / "pn_src.pha").write_bytes(b"spectrum " + o.encode())
    product = results / "joint" / "A.json"
    product.parent.mkdir(parents=True)
    product.write_text("{}")

    def task(sha: str, reuse: bool = False):
        (t,) = joint.make_joint_tasks(
            obs,
            ["01", "02"],
            results_dir=str(results),
            cfg=cfg,
            versions={},
            config_hash="h",
            code={"sha256": sha},
            reuse_across_code=reuse,
        )
        return t

    h, _ = joint.joint_inputs_hash(task("a"), ["01", "02"])
    steps.write_record(
        task("a").outdir,
        "joint",
        {
            "status": "done",
            "inputs_hash": h,
            "code": {"sha256": "a"},
            "outputs": [{"path": "joint/A.json", "size": product.stat().st_size}],
        },
    )
    done = {"status": "done"}
    assert joint.plan_joint(task("a"), [done, done])["status"] == "cached"
    assert joint.plan_joint(task("b"), [done, done]) is None  # other code: the joint fit runs again
    assert joint.plan_joint(task("b", reuse=True), [done, done])["status"] == "cached"
