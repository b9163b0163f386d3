"""Must show (issue 14): the XMM Science Archive's own layouts are discovered and processed.

An XSA download of one a907 ObsID is rebuilt in ``tmp_path`` from the real MOS lists in
``../shared/data/xmm/a907`` (gzip'd and renamed ``P<obsid>M1U002MIEVLI0000.FTZ`` as the archive serves
them, beside an ``odf/`` folder of raw ODF files) and run end to end by the Python backend. The data
directory also holds an empty folder, a hidden one, an ODF-only one and a timing-mode-only one: each
is listed with its reason in the run summary, ``results/skipped.json`` and ``xmm-survey status``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from xmmcore.errors import InputDataError
from xmmcore.observation import (
    camera_from_name,
    discover,
    list_obsids,
    read_odf_summary,
    scan_data_dir,
)

OBSID = "0201901401"


def _ftz(src: Path, dest: Path, **header: object) -> Path:
    """``src`` gzip'd to ``dest`` (optionally with EVENTS header keywords changed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if header:
        with fits.open(src) as hdul:
            for key, value in header.items():
                hdul["EVENTS"].header[key] = value
            tmp = dest.with_suffix(".tmp.fits")
            hdul.writeto(tmp)
        src = tmp
    with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=1) as fout:
        shutil.copyfileobj(fin, fout)
    if header:
        src.unlink()
    return dest


def _raw_odf(odf: Path, sum_src: Path, obsid: str, rev: str) -> None:
    """An ODF folder: the real summary file and raw constituents (bytes that are not event lists)."""
    odf.mkdir(parents=True, exist_ok=True)
    shutil.copy(sum_src, odf / sum_src.name)
    for name in ("M1U00210IME", "M2U00210IME", "PNU00201IME", "M1U00200AUX", "SCX00000ATS"):
        (odf / f"{rev}_{obsid}_{name}.FIT").write_bytes(b"SIMPLE  =                    T raw ODF")


@pytest.fixture(scope="module")
def xsa_data(xmm_data, tmp_path_factory):
    data = tmp_path_factory.mktemp("xsa") / "data"
    src = xmm_data / "a907" / OBSID
    pps = data / OBSID / "pps"
    _ftz(src / "eclean" / "mos1_exp1_clean_evts.fits", pps / f"P{OBSID}M1U002MIEVLI0000.FTZ")
    _ftz(src / "eclean" / "mos2_exp1_clean_evts.fits", pps / f"P{OBSID}M2U002MIEVLI0000.FTZ")
    # a second, short MOS1 exposure: not used (rule: longest imaging exposure), never dropped silently
    _ftz(
        src / "eclean" / "mos1_exp1_clean_evts.fits",
        pps / f"P{OBSID}M1S003MIEVLI0000.FTZ",
        ONTIME=500.0,
        EXPIDSTR="S003",
    )
    _raw_odf(data / OBSID / "odf", next((src / "odf").glob("*SUM.SAS")), OBSID, "0809")
    # a hidden copy inside the ObsID folder (a notebook checkpoint) that would win on exposure: ignored
    _ftz(
        src / "eclean" / "mos1_exp1_clean_evts.fits",
        data / OBSID / ".ipynb_checkpoints" / f"P{OBSID}M1U002MIEVLI0000.FTZ",
        ONTIME=99999.0,
    )
    # XSA serves no responses for extended sources: real SAS MOS responses beside the lists, named by camera
    for cam in ("mos1", "mos2"):
        for ext in ("rmf", "arf"):
            shutil.copy(
                xmm_data / "psrj0855" / cam / f"xmm_{cam}_0605960101.{ext}", data / OBSID / f"{cam}.{ext}"
            )
    # other folders a real data directory has
    (data / "0000000001").mkdir()  # empty
    hidden = data / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "x.fits").write_bytes(b"")
    other = xmm_data / "a907" / "0201903501"
    _raw_odf(data / "0201903501" / "ODF", next((other / "odf").glob("*SUM.SAS")), "0201903501", "0828")
    timing = data / "0000000002" / "pps"
    _ftz(
        src / "eclean" / "mos1_exp1_clean_evts.fits",
        timing / "P0000000002PNS003TIEVLI0000.FTZ",
        DATAMODE="TIMING",
        SUBMODE="PrimeTiming",
    )
    return data


EXPECTED_SKIPS = {
    "0000000001": "empty folder",
    ".ipynb_checkpoints": "hidden folder",
    "0201903501": "ODF only: needs the SAS backend",
    "0000000002": "unsupported mode: pn in TIMING PrimeTiming mode",
}


@pytest.mark.parametrize(
    ("name", "camera"),
    [
        ("P0201901401M1U002MIEVLI0000.FTZ", "mos1"),
        ("P0201901401M2S002MIEVLI0000.FIT.gz", "mos2"),
        ("P0201901401PNS003PIEVLI0000.FTZ", "pn"),
        ("P0201901401PNU014TIEVLI0000.FTZ", "pn"),
        ("P0201901401PNS003OOEVLI0000.FTZ", "pn"),
    ],
)
def test_pps_names_of_every_epic_event_product(name, camera):
    assert camera_from_name(name) == camera


def test_discovery_of_the_xsa_layout(xsa_data):
    obs = discover(xsa_data, OBSID, backend="python")
    assert obs.event_files == {
        "mos1": xsa_data / OBSID / "pps" / f"P{OBSID}M1U002MIEVLI0000.FTZ",
        "mos2": xsa_data / OBSID / "pps" / f"P{OBSID}M2U002MIEVLI0000.FTZ",
    }
    assert obs.odf_dir == xsa_data / OBSID / "odf"
    assert obs.modes == {
        "mos1": "PrimeFullWindow",
        "mos2": "PrimeFullWindow",
        "pn": "PrimeFullWindowExtended",
    }
    ((short, why),) = obs.other_exposures["mos1"]
    assert short.endswith("M1S003MIEVLI0000.FTZ") and "longest exposure" in why
    # raw ODF files are never event lists, whatever their camera letters say
    assert not any("IME" in p.name for p in obs.event_files.values())


def test_every_folder_is_sorted_with_a_reason(xsa_data):
    scan = scan_data_dir(xsa_data, backend="python")
    assert scan.obsids == [OBSID]
    assert set(scan.skipped) == set(EXPECTED_SKIPS)
    for folder, start in EXPECTED_SKIPS.items():
        assert scan.skipped[folder].startswith(start), (folder, scan.skipped[folder])
    # the SAS backend starts from the ODF: the ODF-only folder is an ObsID for it
    assert list_obsids(xsa_data, backend="sas") == [OBSID, "0201903501"]
    odf_only = discover(xsa_data, "0201903501", backend="sas")
    assert odf_only.odf_only and odf_only.cameras == ("pn", "mos1", "mos2")
    with pytest.raises(InputDataError, match="ODF only: needs the SAS backend"):
        discover(xsa_data, "0201903501", backend="python")


def test_odf_summary_records(xmm_data):
    summary = read_odf_summary(next((xmm_data / "a907" / OBSID / "odf").glob("*SUM.SAS")))
    assert summary.obsid == OBSID
    assert summary.odf_path.startswith("/lustre/")  # another machine's folder: the SAS backend rewrites it
    assert summary.exposures["M1"] == ["U002"] and summary.modes["M1"] == ["PrimeFullWindow"]
    assert summary.cameras == ("pn", "mos1", "mos2")


def test_a_raw_odf_with_only_its_sum_asc_is_an_odf(xmm_data, tmp_path):
    """The archive's raw ODF: ``*SUM.ASC`` and constituents, no odfingest ``*SUM.SAS`` yet."""
    from xmmcore.backends.sas import SasSettings, build_odf_commands, local_sum_file

    src = next((xmm_data / "a907" / OBSID / "odf").glob("*SUM.SAS"))
    odf = tmp_path / "data" / OBSID / "ODF"
    odf.mkdir(parents=True)
    head = [ln for ln in src.read_text().splitlines() if not ln.startswith("PATH ")]
    asc = head[: head.index("FILES")]  # the observation record; the instrument records come from the names
    (odf / f"0809_{OBSID}_SCX00000SUM.ASC").write_text("\n".join(asc) + "\n")
    for name in ("M1U00210IME", "M2U00210IME", "M2S00110IME", "PNU00201IME", "SCX00000ATS"):
        (odf / f"0809_{OBSID}_{name}.FIT").write_bytes(b"SIMPLE  =                    T raw ODF")
    obs = discover(tmp_path / "data", OBSID)
    assert obs.odf_only and obs.odf_dir == odf and not obs.odf_ingested
    assert obs.sum_file.name.endswith("SUM.ASC") and obs.cameras == ("pn", "mos1", "mos2")
    summary = read_odf_summary(obs.sum_file)
    assert summary.obsid == OBSID and summary.exposures == {
        "M1": ["U002"],
        "M2": ["S001", "U002"],
        "PN": ["U002"],
    }
    assert summary.modes == {}  # unknown until odfingest reads the housekeeping
    with pytest.raises(InputDataError, match="ODF only: needs the SAS backend"):
        discover(tmp_path / "data", OBSID, backend="python")
    out = tmp_path / "results" / OBSID
    cmds = build_odf_commands(obs, out, SasSettings(sas_dir="/opt/sas", ccf_path=None))
    ingest = next(c for c in cmds if c.label == "odfingest")
    assert f"odfdir={odf.resolve()}" in ingest.argv
    assert local_sum_file(obs, out) is None  # nothing to rewrite: odfingest writes the *SUM.SAS


@pytest.fixture(scope="module")
def xsa_run(xsa_data, tmp_path_factory):
    from distributed import Client, LocalCluster

    from survey.api import run_survey
    from survey.config import load_config

    results = tmp_path_factory.mktemp("xsa-results")
    cfg = load_config(
        None,
        {
            "data_dir": str(xsa_data),
            "results_dir": str(results),
            "cameras": ["mos1", "mos2"],
            "fit.errors": "none",
            "fit.flux_bands_kev": [[0.5, 2.0]],
            "regions.point_sources.detect": False,
        },
    )
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    with Client(cluster) as client:
        report = run_survey(cfg, client=client, progress=False)
    cluster.close()
    return results, report


def test_xsa_ftz_obsid_runs_end_to_end_with_the_python_backend(xsa_run):
    import catalog

    results, report = xsa_run
    assert report.obsids == [OBSID] and not report.failed, report.summary()
    df = catalog.load(results / "catalogue.parquet")
    row = df[(df["obsid"] == OBSID) & (df["camera"] == "epic")].iloc[0]
    assert np.isfinite(row["kT"]) and 1.0 < row["kT"] < 20.0
    clean = fits.getheader(results / OBSID / "events" / "mos1_clean.fits", "EVENTS")
    assert clean["EXPIDSTR"] == "U002"  # the long exposure, not the 500 s S003 one


def test_skipped_folders_in_the_run_summary_and_status(xsa_run, capsys):
    import json

    from survey.cli import main

    results, report = xsa_run
    text = report.summary()
    for folder, start in EXPECTED_SKIPS.items():
        assert f"SKIPPED {folder}: {start}" in text
        assert json.loads((results / "skipped.json").read_text())[folder].startswith(start)
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for folder, start in EXPECTED_SKIPS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(folder))
        assert "skipped" in line and start in line
    assert any(ln.startswith(OBSID) and "done" in ln for ln in out.splitlines())
