"""The shared-filesystem rules of docs/SHARED-FILESYSTEM.md: renames within one directory, temp files
beside their target and never taken for products, no cross-host file locks, one writer per log file."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers import survey_steps as helpers

import xmmcore.fsutil as fsutil
from survey.api import run_one
from survey.config import load_config
from survey.steps import read_record

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "SHARED-FILESYSTEM.md"
PACKAGES = ("xmmcore", "survey", "catalog")
# (file, call) pairs allowed to rename; each is named in the doc, and each renames within one folder.
ALLOWED_RENAMES = {
    ("xmmcore/fsutil.py", "os.replace"),
    ("xmmcore/fitting/engines/xspec_runner.py", "os.replace"),
    ("xmmcore/fitting/xsmodels.py", "os.replace"),
    ("survey/lock.py", "os.replace"),  # acquire_lock: also the run-one lock of survey/obsid_lock.py
}
RENAMES = {"os.rename", "os.replace", "os.renames", "shutil.move", "shutil.copytree"}
LOCKS = {"fcntl", "flock", "lockf"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            if isinstance(base, ast.Name):
                yield f"{base.id}.{node.func.attr}", node
            else:
                yield f"?.{node.func.attr}", node


def test_atomic_writes_rename_a_dot_temp_file_beside_the_target(tmp_path, monkeypatch):
    moves = []
    real = os.replace

    def spy(src, dst):
        moves.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", spy)
    fsutil.atomic_write_text(tmp_path / "a" / "b" / "log.txt", "x\n")
    fsutil.atomic_write_json(tmp_path / "steps" / "fit.json", {"ok": 1})
    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros(3))])
    fsutil.atomic_write_fits(hdul, tmp_path / "events" / "pn_clean.fits")
    assert [d.name for _s, d in moves] == ["log.txt", "fit.json", "pn_clean.fits"]
    for src, dst in moves:
        assert src.parent == dst.parent  # one directory: an atomic rename on local disks and NFS
        assert src.name.startswith(f".{dst.name}.") and src.name.endswith(".tmp")
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["pn_clean.fits"]


def test_no_cross_directory_moves_and_no_file_locks_in_the_code():
    renames, locks = set(), []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    locks += [(rel, n) for n in names if n.split(".")[0] in LOCKS]
            for name, node in _calls(tree):
                if name in RENAMES:
                    renames.add((rel, name))
                if name.split(".")[-1] in LOCKS:
                    locks.append((rel, name))
                # Path.rename / Path.replace with one argument: a move whose target folder is not checked
                if name.startswith("?.") and name[2:] in ("rename",) and len(node.args) == 1:
                    renames.add((rel, "Path.rename"))
    assert renames == ALLOWED_RENAMES, renames - ALLOWED_RENAMES
    assert not locks, locks
    doc = DOC.read_text()
    for rel, _call in ALLOWED_RENAMES - {("xmmcore/fsutil.py", "os.replace")}:
        assert rel in doc, f"{rel} renames files but docs/SHARED-FILESYSTEM.md does not say so"


@pytest.fixture
def one_run(tmp_path):
    ids = helpers.make_survey(tmp_path / "data", 2)
    cfg = load_config(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(tmp_path / "results"),
            "pipeline.module": "helpers.survey_steps",
        },
    )
    for obsid in ids:
        assert {o["status"] for o in run_one(cfg, obsid).values()} == {"done"}
    return cfg, ids, tmp_path / "results"


def test_left_temp_files_and_nfs_silly_renames_are_never_products(one_run):
    cfg, ids, res = one_run
    obsid = ids[0]
    # what a host that died mid-write, and an NFS client that deleted an open file, leave behind
    (res / obsid / "events" / ".pn_clean.fits.k2j3h4.tmp").write_bytes(b"half a FITS file")
    (res / obsid / "fits" / ".nfs0000000001a2b3c400000001").write_text("{")
    again = run_one(cfg, obsid)
    assert {o["status"] for o in again.values()} == {"cached"}
    # a rerun from scratch records its real outputs only
    for step in helpers.STEPS:
        (res / obsid / "steps" / f"{step}.json").unlink()
    assert {o["status"] for o in run_one(cfg, obsid).values()} == {"done"}
    for step in helpers.STEPS:
        names = [Path(o["path"]).name for o in read_record(res / obsid, step)["outputs"]]
        assert not any(n.startswith(".") for n in names), (step, names)
    assert [Path(o["path"]).name for o in read_record(res / obsid, "filter")["outputs"]] == ["pn_clean.fits"]
    catalog = pytest.importorskip("catalog")
    from survey.graph import build_catalogue

    _paths, error, _info = build_catalogue(res)
    assert error is None, error
    df = catalog.load(res / "catalogue.parquet")
    epic = df[df["camera"] == "epic"] if "camera" in df else df
    assert sorted(epic["obsid"]) == ids


def test_each_log_file_has_one_writer(one_run):
    _cfg, ids, res = one_run
    # run-one (an array task, any host) logs to its own file, never to the driver's survey.log
    assert not (res / "logs" / "survey.log").exists()
    for obsid in ids:
        text = (res / "logs" / "run-one" / f"{obsid}.log").read_text()
        assert f"run-one {obsid} on node " in text and "fit done" in text
        assert all(obsid in line for line in text.splitlines() if " done " in line)
    rec = read_record(res / ids[0], "fit")
    assert rec["node"] and rec["pid"] == os.getpid() and "slurm_job_id" in rec
