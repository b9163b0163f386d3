"""Hostile inputs and faults (issue 16): a corpus generated in code, one case per defect or weak case.

Each test states the case it covers; every one asserts the clear error (file, key, cause) or the
value the pipeline must produce, never only that nothing raised.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import survey_steps as helpers

from survey.config import load_config, parse_override
from xmmcore.errors import ConfigError, InputDataError
from xmmcore.observation import read_meta, read_targets_csv, scan_data_dir, validate_obsid

# ----------------------------------------------------------------------------------------------
# Configuration: YAML safety, duplicate keys, physical ranges
# ----------------------------------------------------------------------------------------------


def _laughs(levels: int = 9) -> list[str]:
    """``&l0 [lol x 9]``, ``&l1 [*l0 x 9]``, ...: 9**levels strings once expanded."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return items


BILLION_LAUGHS = {
    "fit.set": "fit:\n  set:\n" + "".join(f"    - {item}\n" for item in _laughs()),
    "spectra.responses": "spectra:\n  responses:\n"
    + "".join(f"    k{i}: {item}\n" for i, item in enumerate(_laughs())),
}


@pytest.mark.parametrize("where", sorted(BILLION_LAUGHS))
def test_yaml_alias_bomb_refused_before_expansion(tmp_path, where):
    """Defect 3: a few hundred bytes of aliases are refused while parsing, in bounded time."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS[where])
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - t0 < 2.0
    msg = str(info.value)
    assert str(path) in msg and "alias" in msg and "line " in msg


def test_yaml_alias_in_command_line_value_refused():
    with pytest.raises(ConfigError, match="alias"):
        parse_override("fit.set=[&a x, *a]")


def test_duplicate_yaml_key_refused_with_both_lines(tmp_path):
    """Weak case: duplicate keys silently took the last value."""
    path = tmp_path / "dup.yaml"
    path.write_text("fit:\n  stat: cstat\n  model: powerlaw\n  stat: chi2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "duplicate key 'stat'" in msg and "line 4" in msg and "line 2" in msg


def test_defaults_have_no_duplicate_keys():
    """The reference itself is read with the strict loader (it held ``fit.auto_set`` twice)."""
    cfg = load_config()
    assert cfg["fit"]["auto_set"] is True


def test_huge_or_deep_config_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("fit:\n  set: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(deep)
    assert str(deep) in str(info.value)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="more than a configuration can be"):
        load_config(big)


@pytest.mark.parametrize(
    "override, words",
    [
        ("cosmology.H0=-70", ["cosmology.H0", "> 0", "-70"]),
        ("cosmology.H0=.nan", ["cosmology.H0", "finite"]),
        ("cosmology.Om0=5", ["cosmology.Om0", "<= 1", "5"]),
        ("cosmology.Om0=0", ["cosmology.Om0", "> 0"]),
        ("spectra.min_counts=-5", ["spectra.min_counts", ">= 1", "-5"]),
        ("flares.bin_s=0", ["flares.bin_s", "> 0"]),
        ("flares.nsigma=-1", ["flares.nsigma", "> 0"]),
        ("flares.fixed_rate.pn=0", ["flares.fixed_rate.pn", "> 0"]),
        ("fit.notice_kev=[7.0, 0.5]", ["fit.notice_kev", "ordered", "[7.0, 0.5]"]),
        ("fit.notice_kev=[0.5]", ["fit.notice_kev", "two numbers"]),
        ("fit.notice_kev=[-1, 7]", ["fit.notice_kev", "0.0 <= low"]),
        ("flares.band_kev=[12, 10]", ["flares.band_kev", "ordered"]),
        ("fit.flux_bands_kev=[[2, 0.5]]", ["fit.flux_bands_kev[0]", "ordered"]),
        ("cluster.workers=10000", ["cluster.workers", "<= 256", "10000"]),
        ("cluster.dashboard_address=':0'", ["cluster.dashboard_address", "every interface", "loopback"]),
        ("cluster.dashboard_address='0.0.0.0:8787'", ["every interface", "dashboard_public"]),
        ("cluster.dashboard_address='192.168.1.5:8787'", ["192.168.1.5", "loopback"]),
        ("cluster.dashboard_address='8787'", ["host:port"]),
        ("cluster.dashboard_address='127.0.0.1:99999'", ["host:port"]),
        ("filter.pn.pi_min=16000", ["filter.pn.pi_min", "below", "filter.pn.pi_max"]),
        ("filter.mos1.pattern_max=99", ["filter.mos1.pattern_max", "<= 31"]),
        ("regions.background.inner=2.0", ["regions.background.inner", "below", "outer"]),
        ("regions.radius.arcmin=0", ["regions.radius.arcmin", "> 0"]),
        ("regions.centre=[400, 0]", ["regions.centre", "ra"]),
        ("regions.annuli=[0, 2, 1]", ["regions.annuli", "increasing"]),
        ("cameras=[pn, pn]", ["cameras", "distinct"]),
        ("cameras=[acis]", ["cameras", "acis"]),
        ("cluster.slurm.minimum_jobs=20", ["minimum_jobs", "maximum_jobs"]),
        ("retries.transient=1000", ["retries.transient", "<= 20"]),
        ("pipeline.module='../../tmp/evil'", ["pipeline.module", "dotted Python module name", "before"]),
        ("pipeline.module='os; rm -rf ~'", ["pipeline.module"]),
    ],
)
def test_physical_and_operational_ranges(override, words):
    """Weak cases: out-of-range numbers were accepted and gave wrong or empty science (or a hang)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_ranges_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "survey.yaml"
    path.write_text("cosmology: {H0: -70, Om0: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "cosmology.H0" in str(info.value)


def test_limits_accept_what_is_valid():
    cfg = load_config(
        None,
        [
            "cluster.dashboard_address='[::1]:0'",
            "cosmology.Om0=1",
            "spectra.min_counts=1",
            "fit.notice_kev=[0.3, 10]",
            "regions.centre=[359.5, -89.0]",
            "pipeline.module=tests_helpers.my_pipeline",
        ],
    )
    assert cfg.get("cluster.dashboard_address") == "[::1]:0" and cfg.get("cosmology.Om0") == 1.0
    public = load_config(None, ["cluster.dashboard_public=true", "cluster.dashboard_address='0.0.0.0:8787'"])
    assert public.get("cluster.dashboard_address") == "0.0.0.0:8787"


def test_pipeline_module_checked_before_import(tmp_path, monkeypatch):
    """Weak case: ``pipeline.module`` was imported before it was validated."""
    from survey.steps import Pipeline

    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="dotted Python module name"):
        Pipeline.from_module(str(tmp_path / "evil_mod.py"))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# ObsID identity: any folder name, reserved names, the results folder inside the data folder
# ----------------------------------------------------------------------------------------------

NON_UTF8 = os.fsdecode(b"0912\xff\xfe")


@pytest.mark.parametrize(
    "name, words",
    [
        ("0201903501\n", ["not a plain name", "\\n"]),
        ("logs", ["reserved"]),
        ("config.resolved.yaml", ["reserved"]),
        ("Catalogue.parquet", ["reserved"]),
        ("-rf", ["not a plain name"]),
        (".hidden", ["not a plain name"]),
        (NON_UTF8, ["not a plain name", "\\xff\\xfe"]),
        ("$(touch x)", ["not a plain name"]),
    ],
)
def test_obsid_names_refused(name, words):
    """Weak case: a trailing newline passed; defects 1 and 2: undecodable and reserved names."""
    with pytest.raises(InputDataError) as info:
        validate_obsid(name)
    msg = str(info.value)
    msg.encode("ascii")  # printable in any log or terminal
    for word in words:
        assert word in msg


def test_scan_refuses_every_folder_that_is_not_an_obsid(tmp_path):
    data = tmp_path / "data"
    for name in ("0910000000", NON_UTF8, "logs", "catalogue.parquet", "joint"):
        helpers.write_events(data / name / "pn_evts.fits", n=50, seed=1)
    (data / "0910000009").mkdir()  # empty: was skipped silently
    results = data / "results"  # --results inside --data: was a phantom ObsID on the next run
    helpers.write_events(results / "0910000000" / "events" / "pn_clean.fits", n=50, seed=1)
    (results / "config.resolved.yaml").write_text("{}\n")
    scan = scan_data_dir(data, exclude=[results])
    obsids, refused = scan.obsids, scan.skipped
    assert obsids == ["0910000000"]
    assert set(refused) == {"0912\\xff\\xfe", "logs", "catalogue.parquet", "joint", "0910000009", "results"}
    assert "reserved" in refused["logs"] and "not a plain name" in refused["0912\\xff\\xfe"]
    assert "results folder" in refused["results"] and refused["0910000009"] == "empty folder"
    json.dumps(refused).encode("ascii")


def test_clean_refuses_what_is_not_an_obsid(tmp_path):
    """Defect 2: ``clean --obsid logs`` deleted the survey logs."""
    from survey.status import clean_obsid

    res = tmp_path / "results"
    (res / "logs").mkdir(parents=True)
    (res / "logs" / "survey.log").write_text("keep me\n")
    (res / "0910000001" / "events").mkdir(parents=True)
    with pytest.raises(InputDataError, match="reserved"):
        clean_obsid(res, "logs")
    with pytest.raises(ConfigError, match="no steps/ records"):
        clean_obsid(res, "0910000001")
    assert (res / "logs" / "survey.log").read_text() == "keep me\n"
    assert (res / "0910000001" / "events").is_dir()


# ----------------------------------------------------------------------------------------------
# Metadata: meta.json and the targets CSV, one reader
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"z": "0.1"}, ["key 'z'", "'0.1'", "not a number"]),
        ({"ra": "12:30:00.0"}, ["key 'ra'", "sexagesimal"]),
        ({"dec": 95.0}, ["key 'dec'", "outside -90..90"]),
        ({"z": True}, ["key 'z'", "not a number"]),
        ({"nh": -1}, ["key 'nh'", "outside"]),
    ],
)
def test_meta_json_values_checked_with_file_and_key(tmp_path, meta, words):
    """Weak case: string or sexagesimal z/ra raised Python exceptions deep in a step."""
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    with pytest.raises(InputDataError) as info:
        read_meta(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_targets_csv_bom_comments_duplicates(tmp_path):
    """Weak cases: an Excel BOM lost the obsid column; duplicate rows silently took the last."""
    csv = tmp_path / "targets.csv"
    csv.write_bytes(b"\xef\xbb\xbfobsid,name,z\n# a comment\n0910000001,A907,0.16\n")
    assert read_targets_csv(csv) == {"0910000001": {"name": "A907", "z": 0.16}}
    csv.write_text("obsid,z\n0910000001,0.1\n0910000002,0.2\n0910000001,0.3\n")
    with pytest.raises(InputDataError) as info:
        read_targets_csv(csv)
    assert str(csv) in str(info.value) and "row 4" in str(info.value) and "first on row 2" in str(info.value)
    csv.write_text("obsid,z,z\n0910000001,0.1,0.2\n")
    with pytest.raises(InputDataError, match="duplicate column"):
        read_targets_csv(csv)


# ----------------------------------------------------------------------------------------------
# The catalogue: every good ObsID, the others listed with reasons
# ----------------------------------------------------------------------------------------------


def test_catalogue_keeps_good_obsids_beside_a_corrupt_record(tmp_path):
    """Defect 4: one unreadable record blocked the catalogue for every ObsID."""
    import catalog

    res = tmp_path / "results"
    for obsid in ("0910000001", "0910000002"):
        (res / obsid / "steps").mkdir(parents=True)
        for step in ("filter", "regions", "spectra", "fit"):
            rec = {"step": step, "status": "done", "meta": {"name": "A907", "z": 0.16}}
            (res / obsid / "steps" / f"{step}.json").write_text(json.dumps(rec))
    (res / "0910000002" / "steps" / "fit.json").write_text("{broken")
    (res / "joint").mkdir()
    (res / "joint" / "A907.json").write_text("[1, 2")
    df = catalog.build(res, strict=False)
    epic = df[(df.kind == "obs") & (df.camera == "epic")].set_index("obsid")
    assert epic.loc["0910000001", "status"] == "partial"  # every step done, no fits/fit.json here
    assert epic.loc["0910000001", "z_target"] == pytest.approx(0.16)
    assert epic.loc["0910000002", "status"] == "failed"
    assert "fit.json" in epic.loc["0910000002", "failure_reason"]
    assert set(df.attrs["skipped"]) == {"0910000002", "joint/A907.json"}


def test_status_shows_a_corrupt_record_as_corrupt(tmp_path):
    """Weak case: a corrupt step record showed as "pending"."""
    from survey.status import collect_status, format_status
    from xmmcore.provenance import code_identity

    res = tmp_path / "results"
    (res / "0910000001" / "steps").mkdir(parents=True)
    done = {
        "status": "done",
        "wall_s": 1.0,
        "code": {"sha256": code_identity()["sha256"]},
    }  # made by this code
    (res / "0910000001" / "steps" / "filter.json").write_text(json.dumps(done))
    (res / "0910000001" / "steps" / "regions.json").write_text("{torn")
    status = collect_status(res, steps=["filter", "regions"])
    row = status.rows["0910000001"]
    assert row["filter"].state == "done" and row["regions"].state == "corrupt"
    assert "regions.json" in row["regions"].reason
    assert status.obsid_state("0910000001") == "corrupt"
    assert "corrupt" in format_status(status) and "0910000001" in status.failed()


# ----------------------------------------------------------------------------------------------
# One writer per results folder
# ----------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_second_run_on_a_locked_results_folder_exits_2(tmp_path, capsys):
    """Weak case: two runs on one results folder computed the same steps twice."""
    import socket

    from survey.cli import main
    from survey.lock import LOCK_NAME, ResultsLockedError, results_lock

    res = tmp_path / "results"
    res.mkdir()
    helpers.make_survey(tmp_path / "data", 1)
    with results_lock(res, what="survey run") as lock:
        holder = json.loads(lock.read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(ResultsLockedError) as info, results_lock(res):
            pass
        assert f"pid {os.getpid()}" in str(info.value) and str(lock) in str(info.value)
        code = main(["run", "--data", str(tmp_path / "data"), "--results", str(res), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another survey run" in err and "Traceback" not in err
        assert not (res / "0910000000").exists()  # nothing was computed
    assert not (res / LOCK_NAME).exists()  # released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    from survey.lock import LOCK_NAME, ResultsLockedError, results_lock

    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "x"}))
    with results_lock(tmp_path) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"host": "other-node", "pid": 1, "started": "x"}))
    with pytest.raises(ResultsLockedError, match="other-node"), results_lock(tmp_path):
        pass


# ----------------------------------------------------------------------------------------------
# Full and read-only disks
# ----------------------------------------------------------------------------------------------


def test_full_disk_in_worker_log_collection_never_fails_the_driver(tmp_path, monkeypatch):
    """Defect 8: a full disk during a rerun crashed the driver in worker-log collection."""
    import errno

    import xmmcore.fsutil
    from survey.logs import collect_worker_logs

    class Client:
        def get_worker_logs(self, n):
            return {"tcp://127.0.0.1:4000": [("INFO", "hello")]}

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    written = collect_worker_logs(Client(), tmp_path)
    assert len(written) == 1 and written[0].name.endswith("tcp_127.0.0.1_4000.log")
    assert "hello" in written[0].read_text()
    monkeypatch.setattr(xmmcore.fsutil, "atomic_write_text", full)
    assert collect_worker_logs(Client(), tmp_path / "full") == []


def test_disk_full_failure_is_recomputed_on_the_next_run_without_retry_failed(tmp_path):
    """Weak case: a disk-full failure stuck until --retry-failed."""
    import errno

    from survey.api import run_one
    from survey.steps import read_record

    helpers.make_survey(tmp_path / "data", 1)
    state = {"full": True}

    def step(obs, outdir, cfg, *, log):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(outdir / "x.fits"))
        return {"ok": True}

    cfg = load_config(None, {"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "res")})
    first = run_one(cfg, "0910000000", pipeline={"only": step})
    assert first["only"]["status"] == "failed" and "disk full" in first["only"]["reason"]
    rec = read_record(tmp_path / "res" / "0910000000", "only")
    assert rec["storage_error"] is True and "x.fits" in rec["reason"]
    state["full"] = False  # space returns
    second = run_one(cfg, "0910000000", pipeline={"only": step})
    assert second["only"]["status"] == "done"


def test_cli_says_disk_full_without_a_traceback(tmp_path, monkeypatch, capsys):
    import errno

    import survey.api
    from survey.cli import main

    def full(*args, **kwargs):
        raise OSError(
            errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "logs" / "survey.log")
        )

    helpers.make_survey(tmp_path / "data", 1)
    monkeypatch.setattr(survey.api, "run_survey", full)
    code = main(["run", "--data", str(tmp_path / "data"), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 5 and "disk full" in err and "survey.log" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# Every file a step reads is in its inputs hash; table-model and region paths are regular files
# ----------------------------------------------------------------------------------------------


def _spectra_hash(obs, outdir, cfg, step="spectra"):
    from survey.steps import Pipeline, compute_inputs_hash

    pipe = Pipeline.from_module("xmmcore.pipeline")
    files = pipe.inputs(step, obs, outdir, cfg)
    return compute_inputs_hash(step, obs, outdir, cfg, files)[0], [str(f) for f in files]


def test_responses_regions_blanksky_and_tables_are_in_the_inputs_hash(tmp_path):
    """Defect 5: editing an RMF/ARF in the ObsID folder did not trigger a recompute (and the same for
    user regions, blank-sky files and table models)."""
    from xmmcore.observation import discover

    data, outdir = tmp_path / "data", tmp_path / "results" / "0910000000"
    helpers.write_events(data / "0910000000" / "pn_evts.fits", n=50, seed=1)
    rmf, arf = data / "0910000000" / "pn.rmf", data / "0910000000" / "pn.arf"
    rmf.write_bytes(b"rmf v1")
    arf.write_bytes(b"arf v1")
    src, table, blank = tmp_path / "src.reg", tmp_path / "t.fits", tmp_path / "blank_pn.fits"
    for path in (src, table, blank):
        path.write_text("v1")
    obs = discover(data, "0910000000")
    cfg = load_config(
        None,
        {
            "regions.user_src_region": str(src),
            "regions.background.method": "blanksky",
            "regions.background.blanksky_files": {"pn": str(blank)},
        },
    ).to_dict()
    cfg["fit"]["model"] = f"wabs*atable{{{table}}}"  # set after loading: the load check would read the table
    before = {step: _spectra_hash(obs, outdir, cfg, step) for step in ("regions", "spectra", "fit")}
    assert str(rmf) in before["spectra"][1] and str(arf) in before["spectra"][1]
    assert str(blank) in before["spectra"][1] and str(src) in before["regions"][1]
    assert str(table) in before["fit"][1]
    for path, step in (
        (rmf, "spectra"),
        (arf, "spectra"),
        (blank, "spectra"),
        (src, "regions"),
        (table, "fit"),
    ):
        old = _spectra_hash(obs, outdir, cfg, step)[0]
        path.write_text(path.read_text() + " edited")
        assert _spectra_hash(obs, outdir, cfg, step)[0] != old, f"editing {path.name} left the {step} hash"


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "too_big"])
def test_table_model_and_region_paths_must_be_regular_small_files(tmp_path, kind):
    """Defect 7: ``atable{}`` at a FIFO hung forever; ``/dev/zero`` killed workers at their memory limit."""
    from xmmcore.fitting.atable import read_table_model
    from xmmcore.regions import read_ds9

    if kind == "fifo":
        path = tmp_path / "pipe.fits"
        os.mkfifo(path)
        word = "FIFO"
    elif kind == "dev_zero":
        path, word = Path("/dev/zero"), "device"
    else:
        path = tmp_path / "huge.reg"
        with open(path, "wb") as fh:
            fh.truncate(2 << 20)  # sparse: 2 MiB of nothing
        word = "more than the limit"
    t0 = time.perf_counter()
    for reader in (read_table_model, lambda p: read_ds9(p, header=None)):
        if kind == "too_big" and reader is read_table_model:
            continue
        with pytest.raises(InputDataError) as info:
            reader(path)
        assert str(path) in str(info.value) and word in str(info.value)
    assert time.perf_counter() - t0 < 2.0


# ----------------------------------------------------------------------------------------------
# Physical sanity of inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how, words", [("negative", ["negative values"]), ("zero", ["zero everywhere"])])
def test_arf_with_negative_or_zero_area_refused(tmp_path, how, words):
    """Weak case: an ARF with negative or zero SPECRESP was fitted and reported converged."""
    from xmmcore.ogip import read_arf, write_arf
    from xmmcore.responses import make_arf

    arf = make_arf("pn")
    if how == "negative":
        arf.specresp[100:110] = -5.0
    else:
        arf.specresp[:] = 0.0
    path = write_arf(arf, tmp_path / "pn.arf")
    with pytest.raises(InputDataError) as info:
        read_arf(path)
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)


def test_too_few_counts_give_a_fit_error_not_a_done_fit_with_negative_dof(tmp_path):
    """Weak case: 300 events gave a "done" fit with dof -1."""
    import numpy as np

    from xmmcore.errors import FitError
    from xmmcore.fitting import engines
    from xmmcore.ogip import PHA, write_pha, write_rmf
    from xmmcore.responses import make_rmf

    rmf = write_rmf(make_rmf("pn"), tmp_path / "pn.rmf")
    counts = np.zeros(4096)
    counts[[300, 900]] = 150.0  # 300 events, grouped into two bins by min_counts
    grouping = np.full(4096, -1, dtype=np.int16)
    grouping[[0, 600]] = 1
    pha = PHA(
        channel=np.arange(4096),
        counts=counts,
        exposure=1e4,
        backscal=1.0,
        grouping=grouping,
        quality=None,
        stat_err=None,
        respfile="pn.rmf",
        ancrfile=None,
        backfile=None,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN"},
        path=None,
    )
    path = write_pha(pha, tmp_path / "pn_src.pha")
    with pytest.raises(FitError) as info:
        engines.get_engine("builtin").fit_files(
            [engines.FitInput(pha=path, rmf=rmf, name="pn")],
            "wabs*powerlaw",
            stat="cstat",
            notice_kev=(0.5, 7.0),
            errors=None,
        )
    msg = str(info.value)
    assert "pn_src.pha" in msg and "noticed bins for 3 free parameters" in msg and "too few" in msg


# ----------------------------------------------------------------------------------------------
# One survey: good ObsIDs beside one of each hostile kind (the CLI, as a user runs it)
# ----------------------------------------------------------------------------------------------

GOOD = ["0910000000", "0910000001", "0910000002"]
FAILED = {  # ObsID -> words of the reason its step records give
    "0910000003": ["filter", "InputDataError", "pn_evts.fits"],
}
SKIPPED = {  # printable folder name -> words of the reason status gives
    "0912\\xff\\xfe": ["not a plain name"],
    "logs": ["reserved"],
    "config.resolved.yaml": ["reserved"],
    "catalogue.parquet": ["reserved"],
    "joint": ["reserved"],
    "0910000008\\n": ["not a plain name"],
    "$(touch pwned)": ["not a plain name"],
    "0910000009": ["empty folder"],
    "0910000004": ["meta.json", "JSON"],
    "0910000005": ["meta.json", "'z'", "not a number"],
    "0910000006": ["meta.json", "'ra'", "sexagesimal"],
    "results": ["results folder"],
}


def _sums(root: Path, skip: Path) -> dict[str, str]:
    from xmmcore.fsutil import sha256_file

    return {
        os.fsencode(p.relative_to(root)).hex(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def _cli(*args: str, timeout: float = 300.0):
    import subprocess
    import sys

    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(here).parent), here, env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "survey.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def hostile_survey(tmp_path_factory):
    """3 good ObsIDs beside one of each hostile kind, run with the CLI (two more runs in the last test)."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    results = data / "results"  # --results inside --data
    helpers.make_survey(data, 7, meta={GOOD[0]: {"z": 0.5, "name": "meta-name"}})
    evt = data / "0910000003" / "pn_evts.fits"
    evt.write_bytes(evt.read_bytes()[:4000])  # truncated
    (data / "0910000004" / "meta.json").write_text('{"z": 0.1,}')  # typo
    (data / "0910000005" / "meta.json").write_text('{"z": "0.1a"}')
    (data / "0910000006" / "meta.json").write_text('{"ra": "12:30:00"}')
    for name in (NON_UTF8, "logs", "config.resolved.yaml", "catalogue.parquet", "joint", "0910000008\n"):
        helpers.write_events(data / name / "pn_evts.fits", n=300, seed=9)
    helpers.write_events(data / "$(touch pwned)" / "pn_evts.fits", n=300, seed=9)
    (data / "0910000009").mkdir()
    before = _sums(data, results)
    args = ["run", "--data", str(data), "--results", str(results), "--no-progress", "--workers", "1"]
    args += [
        "--set",
        "pipeline.module=helpers.survey_steps",
        "--set",
        "cluster.dashboard_address=127.0.0.1:0",
    ]
    first, wall = _cli(*args)
    from survey.status import collect_status, format_status  # what `xmm-survey status [--json]` prints

    found = collect_status(results)
    return {
        "root": root,
        "data": data,
        "results": results,
        "args": args,
        "before": before,
        "first": first,
        "wall": wall,
        "status": json.loads(json.dumps(found.to_dict())),
        "status_text": format_status(found),
    }


@pytest.mark.slow  # CLI subprocesses: Python + Dask start-up per run
def test_hostile_survey_every_good_obsid_in_the_catalogue(hostile_survey):
    import catalog

    first, results = hostile_survey["first"], hostile_survey["results"]
    out = first.stdout + first.stderr
    assert "Traceback" not in out and "Logging error" not in out, out[-3000:]
    assert first.returncode == 3, out[-3000:]  # InputDataError of 0910000003
    assert hostile_survey["wall"] < 240
    df = catalog.load(results / "catalogue.parquet")
    epic = df[(df.kind == "obs") & (df.camera == "epic")].set_index("obsid")
    assert set(GOOD) <= set(epic.index)
    assert set(epic.index) == set(GOOD) | set(FAILED)
    assert (epic.loc["0910000003", "status"]) == "failed"


@pytest.mark.slow  # CLI subprocesses: Python + Dask start-up per run
def test_hostile_survey_every_bad_one_in_status_with_its_reason(hostile_survey):
    status = hostile_survey["status"]
    assert isinstance(status, dict), status
    assert set(status["obsids"]) == set(GOOD) | set(FAILED)
    for obsid, words in FAILED.items():
        text = json.dumps(status["obsids"][obsid])
        assert all(w in text for w in words), (obsid, text)
    assert set(status["skipped"]) == set(SKIPPED)
    for name, words in SKIPPED.items():
        assert all(w in status["skipped"][name] for w in words), (name, status["skipped"][name])
    text = hostile_survey["status_text"]
    assert "0912\\xff\\xfe" in text and "$(touch pwned)" in text
    log = (hostile_survey["results"] / "logs" / "survey.log").read_text(encoding="utf-8")
    assert "0912\\xff\\xfe" in log  # the log line of the undecodable name is there


@pytest.mark.slow  # CLI subprocesses: Python + Dask start-up per run
def test_hostile_survey_inputs_unchanged_and_nothing_ran(hostile_survey):
    data, results = hostile_survey["data"], hostile_survey["results"]
    assert _sums(data, results) == hostile_survey["before"]
    assert not list(hostile_survey["root"].rglob("pwned"))
    assert not (results / "results").exists()  # no phantom ObsID
    assert not (results / ".lock").exists()


@pytest.mark.slow  # CLI subprocesses: Python + Dask start-up per run
def test_hostile_survey_rerun_keeps_finished_records_and_csv_wins(hostile_survey, tmp_path):
    """Defects 4, 6, 9 on a rerun: a meta.json typo after a finished run rewrites nothing; the results
    folder never becomes an ObsID; the targets CSV (BOM, # comments) wins over meta.json in the fit and
    in the catalogue."""
    import catalog

    data, results, args = hostile_survey["data"], hostile_survey["results"], hostile_survey["args"]
    rec = results / GOOD[2] / "steps" / "fit.json"
    record_before = rec.read_bytes()
    meta = data / GOOD[2] / "meta.json"
    meta.write_text('{"z": 0.1,,}')
    try:
        second, _ = _cli(*args)
        assert "Traceback" not in second.stdout + second.stderr
        assert rec.read_bytes() == record_before
        assert not (results / "results").exists()
        csv = tmp_path / "targets.csv"
        csv.write_bytes(
            "\ufeffobsid,name,z\n# from the group's spreadsheet\n".encode()
            + "".join(f"{o},A{i},{0.2 + i / 10}\n" for i, o in enumerate(GOOD[:2])).encode()
        )
        third, _ = _cli(*args, "--targets", str(csv))
        assert "Traceback" not in third.stdout + third.stderr, third.stderr[-3000:]
    finally:
        meta.unlink()
    fit = json.loads((results / GOOD[0] / "fits" / "fit.json").read_text())
    assert fit["z"] == pytest.approx(0.2)  # the CSV's, not meta.json's 0.5
    df = catalog.load(results / "catalogue.parquet")
    row = df[(df.obsid == GOOD[0]) & (df.camera == "epic") & (df.kind == "obs")].iloc[0]
    assert row["z_target"] == pytest.approx(0.2) and row["target"] == "A0"


def test_missing_sky_wcs_is_an_input_data_error_naming_the_keywords():
    """Weak case: a list without a sky WCS raised a bare KeyError deep inside the regions step."""
    from xmmcore.events import sky_wcs_keywords

    header = {"TTYPE1": "TIME", "TTYPE2": "X", "TTYPE3": "Y", "TCRPX2": 25500.0}
    with pytest.raises(InputDataError) as info:
        sky_wcs_keywords(header)
    assert "no sky WCS" in str(info.value) and "TCRPX" in str(info.value) and "REFXCRPX" in str(info.value)


def test_lock_of_a_killed_unreaped_run_is_stale(tmp_path):
    """A driver killed with SIGKILL and not yet reaped (a zombie) does not keep the results folder."""
    import signal
    import socket
    import subprocess
    import sys

    from survey.lock import LOCK_NAME, results_lock

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.5)  # dead, not waited for: a zombie
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": proc.pid}))
        with results_lock(tmp_path) as held:
            assert json.loads(held.read_text())["pid"] == os.getpid()
    finally:
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------------------------
# Reads that block: FIFOs as inputs, and a per-step timeout for reads that hang (stalled NFS)
# ----------------------------------------------------------------------------------------------


def _release(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` go: open its write end (non-blocking) and close it (EOF)."""
    import contextlib

    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_event_list_and_responses_that_are_fifos_are_refused_at_once(tmp_path):
    """A FIFO named as an event list, an RMF/ARF or a configured file is refused by ``stat``, never opened."""
    from xmmcore.events import read_events
    from xmmcore.ogip import read_arf, read_pha, read_rmf

    fifo = tmp_path / "pn_evts.fits"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    for reader in (read_events, read_rmf, read_arf, read_pha):
        with pytest.raises(InputDataError) as info:
            reader(fifo)
        assert str(fifo) in str(info.value) and "FIFO" in str(info.value), (reader, info.value)
    data = tmp_path / "data"
    helpers.make_survey(data, 1)
    for key in (
        "regions.user_src_region",
        "spectra.responses.pn_rmf",
        "regions.background.blanksky_files.pn",
        "targets_csv",
    ):
        with pytest.raises(ConfigError) as cinfo:
            load_config(None, {"data_dir": str(data), key: str(fifo)}, for_run=True)
        assert key in str(cinfo.value) and "FIFO" in str(cinfo.value) and str(fifo) in str(cinfo.value)
    assert time.perf_counter() - t0 < 2.0


def test_configured_response_that_is_not_a_file_fails_the_spectra_step_naming_the_key(tmp_path):
    """Before: a configured RMF that was a FIFO or a device was taken as "no RMF" and the camera dropped."""
    from types import SimpleNamespace

    from xmmcore.backends.python import _response_source

    obs = SimpleNamespace(rmf_files={}, arf_files={})
    with pytest.raises(InputDataError) as info:
        _response_source({"pn_rmf": "/dev/zero"}, obs, "pn", "rmf")
    assert "/dev/zero" in str(info.value) and "spectra.responses.pn_rmf" in str(info.value)
    assert "device" in str(info.value)
    assert _response_source({}, obs, "pn", "rmf") is None


def test_step_blocked_in_a_read_is_abandoned_after_the_timeout_and_retried_next_run(tmp_path):
    """A read that never returns (a FIFO nobody writes, as a stalled NFS mount looks) held the step forever."""
    from survey.api import run_one
    from survey.steps import read_record

    data, res = tmp_path / "data", tmp_path / "res"
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    obsid = helpers.make_survey(
        data, 1, meta={"0910000000": {"block_read": {"step": "regions", "path": str(fifo)}}}
    )[0]
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(res),
            "pipeline.module": "helpers.survey_steps",
            "pipeline.step_timeout_s": 3.0,
        },
    )
    try:
        t0 = time.perf_counter()
        first = run_one(cfg, obsid)
        wall = time.perf_counter() - t0
    finally:
        _release(fifo)
    assert 3.0 <= wall < 15.0
    assert first["filter"]["status"] == "done"
    assert first["regions"]["status"] == "failed" and first["regions"]["exception"] == "StepTimeoutError"
    assert "pipeline.step_timeout_s = 3 s" in first["regions"]["reason"]
    assert first["spectra"]["status"] == "blocked"
    rec = read_record(res / obsid, "regions")
    assert rec["status"] in ("failed", "done")  # the released thread may have finished meanwhile
    # The next run (the read answers now: the FIFO is a plain file again) computes the step.
    fifo.unlink()
    fifo.write_bytes(b"")
    second = run_one(cfg, obsid)
    assert second["regions"]["status"] in ("done", "cached") and second["fit"]["status"] == "done"


@pytest.mark.slow  # a local Dask cluster
def test_survey_with_one_obsid_blocked_in_a_read_finishes_the_others(tmp_path):
    from survey.api import run_survey
    from survey.status import collect_status

    data, res = tmp_path / "data", tmp_path / "results"
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    ids = helpers.make_survey(
        data, 3, meta={"0910000001": {"block_read": {"step": "spectra", "path": str(fifo)}}}
    )
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(res),
            "pipeline.module": "helpers.survey_steps",
            "pipeline.step_timeout_s": 10,  # the first step of a fresh worker also imports astropy
            "cluster.workers": 1,
            "cluster.dashboard_address": "127.0.0.1:0",
            "joint.enabled": False,
        },
    )
    try:
        t0 = time.perf_counter()
        report = run_survey(cfg, progress=False)
        wall = time.perf_counter() - t0
    finally:
        _release(fifo)
    assert wall < 120.0
    assert sorted(report.done) == [ids[0], ids[2]]
    assert "StepTimeoutError" in report.failed[ids[1]] and "step_timeout_s" in report.failed[ids[1]]
    status = collect_status(res)
    assert status.rows[ids[1]]["spectra"].state == "failed"
    assert "abandoned" in status.rows[ids[1]]["spectra"].reason


# ----------------------------------------------------------------------------------------------
# Every cluster address on loopback unless cluster.allow_network
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("cluster.address='tcp://10.1.2.3:8786'", ["cluster.address", "10.1.2.3", "non-loopback"]),
        ("cluster.slurm.scheduler_host=0.0.0.0", ["cluster.slurm.scheduler_host", "every interface"]),
        ("cluster.slurm.scheduler_host=node01", ["scheduler_host", "node01"]),
        ("cluster.slurm.interface=ib0", ["cluster.slurm.interface", "ib0", "non-loopback interface"]),
        ("cluster.slurm.worker_extra_args=['--host', '192.168.0.7']", ["--host", "192.168.0.7"]),
        ("cluster.slurm.worker_extra_args=['--listen-address=tcp://0.0.0.0:0']", ["--listen-address"]),
    ],
)
def test_cluster_addresses_must_be_loopback(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in [*words, "cluster.allow_network"]:
        assert word in str(info.value), (word, str(info.value))
    load_config(None, [override, "cluster.allow_network=true"])  # the documented key allows it


def test_loopback_cluster_addresses_are_accepted():
    cfg = load_config(
        None,
        [
            "cluster.address='tcp://127.0.0.1:8786'",
            "cluster.slurm.scheduler_host=127.0.0.1",
            "cluster.slurm.interface=lo",
            "cluster.slurm.worker_extra_args=['--host', '127.0.0.12', '--nworkers', '1']",
        ],
    )
    assert cfg["cluster"]["slurm"]["interface"] == "lo"
    # a shell variable expands on the compute node (slurm/local-cluster.sh: 127.0.0.11-13)
    load_config(None, ["cluster.slurm.worker_extra_args=['--host', '$XMM_NODE_ADDR']"])


def test_slurm_cluster_that_would_listen_everywhere_is_refused_before_it_starts(tmp_path):
    """dask-jobqueue with neither interface nor scheduler host binds the scheduler and workers on every interface."""
    from survey.cluster import slurm_cluster_kwargs
    from survey.config import check_slurm_listen

    cfg = load_config(None, {"results_dir": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        check_slurm_listen(slurm_cluster_kwargs(cfg, tmp_path), allow_network=False)
    msg = str(info.value)
    assert "scheduler would listen on every interface" in msg and "workers would listen" in msg
    check_slurm_listen(slurm_cluster_kwargs(cfg, tmp_path), allow_network=True)
    multinode = load_config(
        None,
        {
            "results_dir": str(tmp_path),
            "cluster.slurm.scheduler_host": "127.0.0.1",
            "cluster.slurm.worker_extra_args": ["--host", "$XMM_NODE_ADDR"],
        },
    )
    check_slurm_listen(slurm_cluster_kwargs(multinode, tmp_path), allow_network=False)
    check_slurm_listen(
        slurm_cluster_kwargs(load_config(None, {"cluster.slurm.interface": "lo"}), tmp_path),
        allow_network=False,
    )


def test_missing_sky_wcs_names_the_file_and_each_missing_key(tmp_path):
    """Weak case: the message named neither the event list nor which TCRVL/TCRPX keys were missing."""
    from astropy.io import fits
    from helpers.cluster_events import good_events

    from xmmcore.events import read_events

    path = good_events(tmp_path / "pn_evts.fits", n=200)
    with fits.open(path, mode="update") as hdul:
        hdr = hdul["EVENTS"].header
        for key in [k for k in hdr if k.startswith(("TCRVL", "TCRPX", "REFX", "REFY"))]:
            del hdr[key]
        ix = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)].index("X") + 1
        iy = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)].index("Y") + 1
    evl = read_events(path)
    with pytest.raises(InputDataError) as info:
        evl.sky_wcs_keywords()
    msg = str(info.value)
    assert msg.startswith(str(path)) and "no sky WCS" in msg
    for key in (f"TCRPX{ix}", f"TCRPX{iy}", f"TCRVL{ix}", f"TCRVL{iy}"):
        assert key in msg, (key, msg)
    assert f"X is column {ix}" in msg and "REFXCRPX" in msg


def test_meta_json_broken_after_the_fit_keeps_the_row_from_the_records_and_flags_it(tmp_path):
    """Defect 4 (rest): the catalogue row of a finished ObsID whose meta.json broke since is kept from the
    finished records and says why; the records are not rewritten."""
    import catalog
    from survey.api import run_one

    data, res = tmp_path / "data", tmp_path / "results"
    ids = helpers.make_survey(
        data, 2, meta={"0910000000": {"z": 0.3, "name": "A1"}, "0910000001": {"z": 0.2}}
    )
    cfg = load_config(
        None, {"data_dir": str(data), "results_dir": str(res), "pipeline.module": "helpers.survey_steps"}
    )
    for obsid in ids:
        assert all(o["status"] == "done" for o in run_one(cfg, obsid).values())
    records = {p: p.read_bytes() for p in sorted((res / ids[0] / "steps").glob("*.json"))}
    (data / ids[0] / "meta.json").write_text('{"z": 0.3,,}')
    again = run_one(cfg, ids[0])
    assert again["filter"]["status"] == "failed" and "meta.json" in again["filter"]["reason"]
    assert {p: p.read_bytes() for p in sorted((res / ids[0] / "steps").glob("*.json"))} == records
    df = catalog.build(res)  # the default: non-strict, as the survey and the CLI
    epic = df[(df.kind == "obs") & (df.camera == "epic")].set_index("obsid")
    assert set(epic.index) == set(ids)
    assert epic.loc[ids[0], "z_target"] == pytest.approx(0.3) and epic.loc[ids[0], "target"] == "A1"
    note = epic.loc[ids[0], "inputs_note"]
    assert note.startswith("meta.json unreadable since the fit: ") and "JSON" in note, note
    assert epic.loc[ids[1], "inputs_note"] == ""
    assert df.attrs["inputs_notes"] == {ids[0]: note} and df.attrs["skipped"] == {}
    # the note goes once the inputs are readable again and the first step has run
    (data / ids[0] / "meta.json").write_text('{"z": 0.3, "name": "A1"}')
    run_one(cfg, ids[0])
    rebuilt = catalog.build(res)
    assert set(rebuilt.loc[rebuilt.obsid == ids[0], "inputs_note"]) == {""}


def test_unlock_names_the_holder_and_removes_a_lock_of_another_host(tmp_path, capsys):
    """A lock of another host cannot be judged stale by its pid: the run says how to remove it, and
    ``xmm-survey unlock`` removes it naming host, pid and time; a live holder on this host is refused."""
    import socket

    from survey.cli import main
    from survey.lock import LOCK_NAME, ResultsLockedError, results_lock

    res = tmp_path / "results"
    res.mkdir()
    lock = res / LOCK_NAME
    other = {"host": "node-17", "pid": 4242, "started": "2026-12-01T03:04:05Z", "command": "xmm-survey run"}
    lock.write_text(json.dumps(other))
    with pytest.raises(ResultsLockedError) as info, results_lock(res):
        pass
    msg = str(info.value)
    assert "node-17" in msg and "pid 4242" in msg and "2026-12-01T03:04:05Z" in msg
    assert f"xmm-survey unlock --results {res}" in msg and "cannot be checked" in msg
    assert main(["unlock", "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert (
        "removed the lock of host node-17 pid 4242 since 2026-12-01T03:04:05Z" in out
        and "another host" in out
    )
    assert not lock.exists()
    assert main(["unlock", "--results", str(res)]) == 0
    assert "not locked" in capsys.readouterr().out
    # a lock held by a live process of this host is never broken
    with results_lock(res, what="survey run"):
        assert main(["unlock", "--results", str(res)]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "stop it first" in err and "Traceback" not in err
        assert lock.exists()
    # the run-one lock of an ObsID; and a dead local holder
    (res / "0910000000").mkdir()
    (res / "0910000000" / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": _dead_pid()})
    )
    assert main(["unlock", "--results", str(res), "--obsid", "0910000000"]) == 0
    assert not (res / "0910000000" / LOCK_NAME).exists()
    assert main(["unlock", "--results", str(res), "--obsid", "../etc"]) != 0


# ----------------------------------------------------------------------------------------------
# Inputs hashed by content: an edit within the same second, same size, is seen
# ----------------------------------------------------------------------------------------------


def test_an_input_edited_in_place_with_the_same_size_and_mtime_reruns_the_step(tmp_path):
    """Weak case: the inputs hash was size + mtime; an edit keeping both (same second, or mtime set back,
    as ``cp -p``/``rsync -t`` do) kept the hash and the old result was reused."""
    from survey.api import run_one
    from survey.steps import read_record

    data, res = tmp_path / "data", tmp_path / "res"
    obsid = helpers.make_survey(data, 1)[0]
    cfg = load_config(
        None, {"data_dir": str(data), "results_dir": str(res), "pipeline.module": "helpers.survey_steps"}
    )
    evt = data / obsid / "pn_evts.fits"
    time.sleep(2.1)  # hashed > 2 s after its last change (ctime included): the digest may be reused
    assert run_one(cfg, obsid)["filter"]["status"] == "done"
    rec = read_record(res / obsid, "filter")
    (entry,) = rec["inputs"]
    assert entry["path"] == "pn_evts.fits" and len(entry["sha256"]) == 64
    assert {"ino", "ctime_ns", "hashed_ns"} <= set(entry)
    # resume: nothing changed, the digest comes from the record (the file is not read again)
    import survey.steps

    reads = []
    real = survey.steps.file_digest
    survey.steps._DIGEST_CACHE.clear()
    try:
        survey.steps.file_digest = lambda p, *a: reads.append(p) or real(p, *a)
        assert run_one(cfg, obsid)["filter"]["status"] == "cached" and reads == []
        # the same bytes count, one byte changed, the mtime put back: the content hash sees it
        raw = bytearray(evt.read_bytes())
        st = evt.stat()
        raw[-100] ^= 0xFF
        with open(evt, "r+b") as fh:
            fh.write(raw)
        os.utime(evt, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert evt.stat().st_size == st.st_size and evt.stat().st_mtime_ns == st.st_mtime_ns
        second = run_one(cfg, obsid)
        assert reads, "the edited file was not hashed again"
    finally:
        survey.steps.file_digest = real
    assert second["filter"]["status"] in ("done", "failed")  # recomputed (the flipped byte may break it)
    assert read_record(res / obsid, "filter")["inputs"][0]["sha256"] != entry["sha256"]


def test_a_digest_is_not_reused_for_a_file_changed_just_before_it_was_hashed(tmp_path):
    """The racy case: a file modified within the timestamp granularity of its hashing could change again
    keeping size, mtime and ctime; its digest is then recomputed, never taken from the record."""
    from survey.steps import _file_entry

    path = tmp_path / "t.fits"
    path.write_bytes(b"a" * 100)
    fresh = _file_entry(path, [tmp_path], content=True)
    assert fresh["hashed_ns"] - max(fresh["mtime_ns"], fresh["ctime_ns"]) < 2_000_000_000
    forged = dict(fresh, sha256="0" * 64)  # what a stale cache entry would say
    import survey.steps

    survey.steps._DIGEST_CACHE.clear()
    assert _file_entry(path, [tmp_path], content=True, previous=forged)["sha256"] == fresh["sha256"]
    old = dict(forged, hashed_ns=fresh["hashed_ns"] + 10**10)  # hashed long after its last change
    assert _file_entry(path, [tmp_path], content=True, previous=old)["sha256"] == "0" * 64  # reused
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    assert _file_entry(fifo, [tmp_path], content=True)["kind"] == "not a regular file"
    assert time.perf_counter() - t0 < 1.0  # never opened


# ----------------------------------------------------------------------------------------------
# A really full disk: results on a small tmpfs (root only; skipped elsewhere)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted at ``tmp_path/small`` (needs root and mount rights; skipped otherwise)."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill ``mnt`` with a ballast file until ``leave`` bytes are free."""
    ballast = mnt / "ballast"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return ballast


def test_real_full_disk_fails_the_step_clearly_and_a_rerun_after_space_returns_computes_it(
    tmp_path, small_fs
):
    from survey.api import run_one
    from survey.steps import read_record

    data, res = tmp_path / "data", small_fs / "results"
    ids = helpers.make_survey(data, 2, n_events=30_000)
    cfg = load_config(
        None, {"data_dir": str(data), "results_dir": str(res), "pipeline.module": "helpers.survey_steps"}
    )
    assert all(o["status"] == "done" for o in run_one(cfg, ids[0]).values())
    clean = res / ids[0] / "events" / "pn_clean.fits"
    assert clean.stat().st_size > 200_000  # the product that will not fit below
    finished = {p: p.read_bytes() for p in sorted((res / ids[0]).rglob("*")) if p.is_file()}
    ballast = _fill(small_fs, 100_000)
    full = run_one(cfg, ids[1])
    failed = [o for o in full.values() if o["status"] == "failed"]
    assert failed, full
    assert "disk full" in failed[0]["reason"] and str(res) in failed[0]["reason"], failed[0]
    rec = read_record(res / ids[1], failed[0]["step"])
    if rec is not None:  # the record fitted in what was left: it says why
        assert rec["status"] == "failed" and rec.get("storage_error") is True
    assert not list((res / ids[1]).rglob(".*.tmp")), "a temporary file was left behind"
    assert {p: p.read_bytes() for p in sorted((res / ids[0]).rglob("*")) if p.is_file()} == finished
    ballast.unlink()  # space returns: the same command computes what failed, no --retry-failed
    again = run_one(cfg, ids[1])
    assert all(o["status"] in ("done", "cached") for o in again.values()), again
    assert read_record(res / ids[1], "fit")["status"] == "done"


def test_real_full_disk_under_the_driver_exits_with_a_clear_message(tmp_path, small_fs, capsys):
    """Results folder on a full file system: the run stops with a clear message, no traceback, no torn lock."""
    from survey.cli import main
    from survey.lock import LOCK_NAME

    data, res = tmp_path / "data", small_fs / "results"
    helpers.make_survey(data, 1)
    res.mkdir()
    ballast = _fill(small_fs, 0)
    code = main(["run", "--data", str(data), "--results", str(res), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 5 and "Traceback" not in err, err
    assert "disk full" in err and str(res / LOCK_NAME) in err and "rerun the same command" in err, err
    assert not (res / LOCK_NAME).exists(), "a torn lock would block the next run for a minute"
    ballast.unlink()
    code = main(
        ["run", "--data", str(data), "--results", str(res), "--no-progress", "--workers", "1"]
        + ["--set", "pipeline.module=helpers.survey_steps", "--set", "cluster.dashboard_address=127.0.0.1:0"]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
