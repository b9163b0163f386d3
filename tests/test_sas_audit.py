"""Issue 14: the SAS/ESAS chain audit (items 1-9), argv whitelists, mode checks and a safe exported plan.

No SAS needed: the commands are built and checked; the exported scripts are run against the stub SAS
tools of ``tests/sas_stub`` from a results path holding a space and ``$(touch X)``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers.sas import REGIONS, SETTINGS, _cfg, _write_attitude, _write_events
from sas_stub import install

from xmmcore.backends.sas import (
    SasBackend,
    SasSettings,
    _resolve_glob,
    _sas_path_env,
    build_filter_commands,
    build_image_commands,
    build_mosaic_command,
    build_odf_commands,
    build_spectra_commands,
    esas_precondition,
    local_sum_file,
    mode_skip_reason,
    mos_ccds,
    plan_observation,
    task_env,
)
from xmmcore.errors import ConfigError
from xmmcore.observation import discover
from xmmcore.sas_params import TASK_PARAMS, check_argv, unknown_params

OBSID = "0201901401"


def _pps_obs(tmp_path: Path, *, submode: str = "PrimeFullWindow", date: str | None = None):
    root = tmp_path / "data" / "0123456789"
    root.mkdir(parents=True)
    _write_events(root / "P0123456789PNS003PIEVLI0000.FIT", "EPN", submode, "S003")
    _write_events(root / "P0123456789PNS003OOEVLI0000.FIT", "EPN", submode, "S003", n=200)
    _write_events(root / "P0123456789M1S001MIEVLI0000.FIT", "EMOS1", "PrimeFullWindow", "S001")
    if date:
        for p in root.glob("*EVLI*"):
            with fits.open(p, mode="update") as hdul:
                hdul["EVENTS"].header["DATE-OBS"] = date
    _write_attitude(root / "P0123456789OBX000ATTTSR0000.FIT")
    return discover(tmp_path / "data", "0123456789")


def _odf_obs(xmm_data: Path, tmp_path: Path):
    """ODF-only folder: the real a907 summary file (PATH of another machine) and raw file names."""
    odf = tmp_path / "data" / OBSID / "ODF"
    odf.mkdir(parents=True)
    sum_file = next((xmm_data / "a907" / OBSID / "odf").glob("*SUM.SAS"))
    shutil.copy(sum_file, odf / sum_file.name)
    for name in ("M1U00210IME", "PNU00201IME", "SCX00000ATS"):
        (odf / f"0809_{OBSID}_{name}.FIT").write_bytes(b"raw")
    return discover(tmp_path / "data", OBSID, backend="sas")


def _all_commands(obs, out, camera, esas, events_for_spectra):
    cfg = _cfg(**{"flares.method": "espfilt" if esas else "fixed", "sas.esas": esas})
    settings = SasSettings(**{**SETTINGS.__dict__, "esas": esas})
    cmds = build_filter_commands(obs, camera, out, cfg, settings)
    cmds += build_spectra_commands(obs, camera, out, REGIONS, cfg, settings, clean_events=events_for_spectra)
    if obs.odf_dir is not None:
        cmds += build_odf_commands(obs, out, settings)
    cmds += build_image_commands(obs, camera, out, cfg, settings, clean_events=events_for_spectra)
    cmds.append(build_mosaic_command(["a.fits", "b.fits"], out / "m.fits", out, settings))
    return cmds


@pytest.mark.parametrize("camera", ["pn", "mos1"])
@pytest.mark.parametrize("esas", [True, False])
@pytest.mark.parametrize("layout", ["pps", "odf"])
def test_every_argv_key_is_in_its_task_whitelist(xmm_data, tmp_path, camera, esas, layout):
    if layout == "pps":
        obs = _pps_obs(tmp_path)
        events = obs.event_files[camera]
    else:
        obs = _odf_obs(xmm_data, tmp_path)
        events = tmp_path / "evts.fits"
        _write_events(events, "EPN" if camera == "pn" else "EMOS1", "PrimeFullWindow", "U002")
    cmds = _all_commands(obs, tmp_path / "results" / obs.obsid, camera, esas, events)
    tasks = {c.task for c in cmds}
    assert tasks <= set(TASK_PARAMS)
    if layout == "odf":
        assert {"cifbuild", "odfingest", "emchain", "epchain"} <= tasks
    if esas:
        assert {"espfilt", "cheese", "pnspectra" if camera == "pn" else "mosspectra"} <= tasks
    else:
        assert {"tabgtigen", "backscale", "rmfgen", "arfgen", "specgroup"} <= tasks
    for c in cmds:
        assert unknown_params(c.argv) == [], (c.step, c.label)


def test_the_whitelist_refuses_what_sas_does_not_know():
    with pytest.raises(ConfigError, match="mosspectra: unknown parameter 'withimages'"):
        check_argv(("mosspectra", "eventfile=x.fits", "withimages=no"))
    assert unknown_params(("espfilt", "method=box")) == [
        "espfilt: method='box' is not one of histogram, ratio"
    ]
    assert unknown_params(("arfgen", "detmaptype=dataset", "extendedsource=yes")) == []


def test_the_whitelist_knows_what_real_sas_runs_pass():
    """The chain parameters DAXA and published reduction scripts give SAS 21: accepted, with their enums."""
    assert (
        unknown_params(
            ("epchain", "odf=x", "odfaccess=odf", "exposure=1", "schedule=S", "ccds=1", "runbackground=N")
            + ("keepintermediate=raw", "withoutoftime=Y", "runradmonfix=N")
        )
        == []
    )
    assert unknown_params(("emchain", "odf=x", "addtaglenoise=no", "makeflaregti=no")) == []
    assert (
        unknown_params(("odfingest", "odfdir=a", "outdir=b", "withodfdir=yes", "usecanonicalname=yes")) == []
    )
    assert unknown_params(("epchain", "odfaccess=some")) == [
        "epchain: odfaccess='some' is not one of odf, all"
    ]
    assert unknown_params(("emchain", "addtaglenoise=maybe"))[0].startswith("emchain: addtaglenoise='maybe'")


# ------------------------------------------------------------------------------------ audit items
def test_item1_prescreened_lists_without_corners_are_refused_for_esas(xmm_data, tmp_path):
    obs = discover(xmm_data / "a907", OBSID)
    out = tmp_path / "results" / OBSID
    reason = esas_precondition(obs, "mos1", out, _cfg(), SETTINGS)
    assert "no out-of-field-of-view (corner) events" in reason and "MIEVLI" in reason
    stub = SasSettings(**{**SETTINGS.__dict__, "sas_dir": str(install(tmp_path / "xmmsas"))})
    summary = SasBackend(stub).filter_camera(
        obs, "mos1", out, _cfg(), log=__import__("logging").getLogger("t")
    )
    assert summary["skipped"] is True and summary["reason"] == reason
    # without ESAS and espfilt the eclean list is fine
    assert (
        esas_precondition(
            obs,
            "mos1",
            out,
            _cfg(**{"flares.method": "fixed", "sas.esas": False}),
            SasSettings(**{**SETTINGS.__dict__, "esas": False}),
        )
        is None
    )
    # a PPS list keeps its corners
    assert esas_precondition(_pps_obs(tmp_path), "mos1", out, _cfg(), SETTINGS) is None


def test_item2_attitude_linked_and_sum_path_rewritten(xmm_data, tmp_path):
    obs = _pps_obs(tmp_path)
    out = tmp_path / "results" / obs.obsid
    cmds = build_spectra_commands(
        obs, "mos1", out, REGIONS, _cfg(), SETTINGS, clean_events=obs.event_files["mos1"]
    )
    cheese = next(c for c in cmds if c.task == "cheese")
    assert ("atthk.fits", str((obs.root / "P0123456789OBX000ATTTSR0000.FIT").resolve())) in cheese.links
    assert [c.task for c in cmds].index("cheese") < [c.task for c in cmds].index("mosspectra")
    # a907's summary file names a /lustre folder: a copy with the local PATH is what SAS_ODF names
    a907 = discover(xmm_data / "a907", OBSID)
    path, text = local_sum_file(a907, tmp_path / "r")
    assert f"PATH {(xmm_data / 'a907' / OBSID / 'odf').resolve()}\n" in text and "/lustre" not in text
    cfg = _cfg(**{"flares.method": "fixed", "sas.esas": False})
    filt = build_filter_commands(
        a907, "mos1", tmp_path / "r", cfg, SasSettings(**{**SETTINGS.__dict__, "esas": False})
    )
    assert {c.env["SAS_ODF"] for c in filt} == {str(path)}


def test_items3_6_9_esas_products_flags_and_parameters(tmp_path):
    obs = _pps_obs(tmp_path, date="2013-02-01T10:00:00")
    out = tmp_path / "results" / obs.obsid
    for cam in ("pn", "mos1"):
        cmds = build_filter_commands(obs, cam, out, _cfg(), SETTINGS)
        cmds += build_spectra_commands(
            obs, cam, out, REGIONS, _cfg(), SETTINGS, clean_events=obs.event_files[cam]
        )
        by = {c.label: c for c in cmds}
        cheese = by["cheese"]
        assert [Path(o).name for o in cheese.outputs] == [
            f"{p}-bkg{k}.fits" for p in [cheese.argv[1].split("=")[1][:-12]] for k in ("regtdet", "regtsky")
        ]
        spec = by["pnspectra" if cam == "pn" else "mosspectra"]
        assert not any(a.startswith("withimages") for a in spec.argv)  # item 9
        assert any(a.endswith("-bkgregtdet.fits") and a.startswith("maskdet=") for a in spec.argv)  # item 3
        # item 6: FLAG screening that keeps the corners, between espfilt and cheese
        flag = by["evselect-esasflag"]
        mask = "0xcfa0000" if cam == "pn" else "0x766aa000"
        assert f"expression=((FLAG & {mask})==0)" in flag.argv and not int(mask, 16) & 0x10000
        assert flag.links[0][1].endswith("/espfilt/" + flag.links[0][1].rsplit("/", 1)[1])
        assert [c.label for c in cmds].index("evselect-esasflag") < [c.label for c in cmds].index("cheese")
        espfilt = by["espfilt"]
        assert f"rangescale={'15.0' if cam == 'pn' else '6.0'}" in espfilt.argv
    # MOS1 CCD losses: CCD6 (2005-03-09) and CCD3 (2012-12-11)
    assert mos_ccds(obs, "mos1") == "T T F T T F T"
    assert "ccds=T T F T T F T" in by["mosspectra"].argv and "ccds=T T F T T F T" in by["mosback"].argv
    assert mos_ccds(_pps_obs(tmp_path / "b", date="2006-01-01"), "mos1") == "T T T T T F T"
    assert mos_ccds(_pps_obs(tmp_path / "c", date="2004-05-09"), "mos1") == "T T T T T T T"
    assert mos_ccds(_pps_obs(tmp_path / "d", date="2013-02-01"), "mos2") == "T T T T T T T"


def test_item4_pfiles_has_the_heasoft_syspfiles(tmp_path):
    env = task_env(tmp_path / "t", SasSettings(sas_dir="/opt/sas", ccf_path=None, headas="/opt/heasoft"))
    assert env["PFILES"] == f"{tmp_path / 't'}/pfiles;/opt/sas/config:/opt/heasoft/syspfiles"


def test_item5_unscheduled_exposures_are_found_and_one_is_chosen(xmm_data, tmp_path):
    obs = _odf_obs(xmm_data, tmp_path)
    out = tmp_path / "results" / OBSID
    cmds = build_filter_commands(
        obs, "mos1", out, _cfg(**{"flares.method": "fixed", "sas.esas": False}), SETTINGS
    )
    emchain = next(c for c in cmds if c.task == "emchain")
    table = next(a for a in cmds[3].argv if a.startswith("table="))[6:]
    d = Path(emchain.cwd)
    d.mkdir(parents=True)
    long_u, short_s = d / f"P{OBSID}M1U002MIEVLI0000.FIT", d / f"P{OBSID}M1S001MIEVLI0000.FIT"
    _write_events(long_u, "EMOS1", "PrimeFullWindow", "U002")
    _write_events(short_s, "EMOS1", "PrimeFullWindow", "S001")
    for path, ontime in ((long_u, 14000.0), (short_s, 300.0)):
        with fits.open(path, mode="update") as hdul:
            hdul["EVENTS"].header["ONTIME"] = ontime
    assert _resolve_glob(table, "t") == str(long_u)  # U002 matched, and the longer exposure taken
    assert [Path(o).name for o in emchain.outputs] == ["P*M[12][SU]*MIEVLI*.FIT"]


def test_item9_sas_dir_alone_sources_setsas(tmp_path, monkeypatch):
    sas_dir = install(tmp_path / "xmmsas")
    monkeypatch.delenv("SAS_DIR", raising=False)
    env = _sas_path_env(SasSettings(sas_dir=str(sas_dir), ccf_path=None))
    assert env["SAS_DIR"] == str(sas_dir) and env["SAS_PATH"] == str(sas_dir) and env["SAS_VERBOSITY"] == "4"
    assert env["PATH"].split(":")[0] == str(sas_dir / "bin")


# ----------------------------------------------------------------------------------------- modes
def test_pn_window_modes_with_and_without_esas(tmp_path):
    obs = _pps_obs(tmp_path, submode="PrimeSmallWindow")
    assert "PrimeSmallWindow" in mode_skip_reason(obs, "pn", SETTINGS)
    assert "sas.esas: false" in mode_skip_reason(obs, "pn", SETTINGS)
    assert mode_skip_reason(obs, "pn", SasSettings(**{**SETTINGS.__dict__, "esas": False})) is None
    assert mode_skip_reason(obs, "mos1", SETTINGS) is None
    cmds, skipped = plan_observation(
        obs, tmp_path / "results" / obs.obsid, _cfg(), regions=REGIONS, settings=SETTINGS
    )
    assert "PrimeSmallWindow" in skipped["pn"] and not any(c.step.endswith("_pn") for c in cmds)


# ------------------------------------------------------------------------------------ safe plans
EVIL = "res ults $(touch PWNED)"


def _plan_script(data: Path, obsid: str, results: Path, overrides: list[str]) -> tuple[str, dict]:
    from survey.commands.plan import plan_commands, render_script
    from xmmcore.backends.sas import sum_rewrite_lines

    cmds, skipped, cfg, obs = plan_commands(obsid, data=str(data), results=str(results), overrides=overrides)
    prelude = sum_rewrite_lines(obs, results.resolve() / obs.obsid)
    return render_script(cmds, obsid=obs.obsid, skipped=skipped, sas_dir=None, prelude=prelude), skipped


@pytest.mark.parametrize("esas", [True, False])
@pytest.mark.parametrize("layout", ["pps", "odf"])
def test_plans_pass_bash_n_and_quote_every_path(xmm_data, tmp_path, esas, layout):
    obs = _pps_obs(tmp_path) if layout == "pps" else _odf_obs(xmm_data, tmp_path)
    results = tmp_path / EVIL
    over = [] if esas else ["sas.esas=false", "flares.method=fixed"]
    script, skipped = _plan_script(tmp_path / "data", obs.obsid, results, over)
    path = tmp_path / "run.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    body = [ln for ln in script.splitlines() if not ln.startswith("#")]
    assert all("$(touch PWNED)" not in ln or "'" in ln for ln in body)  # the path only inside quotes
    assert any("epchain" in ln for ln in body) == (layout == "odf")
    if layout == "odf":
        assert any(ln.startswith("_g") and "$(pick '" in ln for ln in body)  # chain products found safely
        assert all("stops after the filter step" in skipped[f"{c} spectra"] for c in ("pn", "mos1", "mos2"))


def test_exported_plan_runs_from_a_hostile_results_path_and_executes_nothing(tmp_path, monkeypatch):
    """The non-ESAS PPS plan, run by bash against the stub SAS: products made, no PWNED file anywhere."""
    obs = _pps_obs(tmp_path)
    sas_dir = install(tmp_path / "xmmsas")
    results = tmp_path / EVIL
    script, _ = _plan_script(
        tmp_path / "data", obs.obsid, results, ["sas.esas=false", "flares.method=fixed", "cameras=[mos1]"]
    )
    (tmp_path / "run.sh").write_text(script)
    env = {"PATH": f"{sas_dir / 'bin'}:/usr/bin:/bin", "SAS_DIR": str(sas_dir), "HOME": str(tmp_path)}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    proc = subprocess.run(
        ["bash", str(tmp_path / "run.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    spec = results / obs.obsid / "sas" / "spectra_mos1" / "specgroup" / "mos1_src_grp.pha"
    with fits.open(spec) as hdul:
        assert hdul["SPECTRUM"].data["COUNTS"].sum() > 0 and hdul["SPECTRUM"].header["BACKSCAL"] > 1
    assert np.all(
        fits.getdata(
            results / obs.obsid / "sas" / "filter_mos1" / "evselect-clean" / "mos1_clean.fits", "EVENTS"
        )["PATTERN"]
        <= 12
    )


def test_mos_fast_mode_list_is_imaging_and_kept(tmp_path):
    """A MOS exposure in FastUncompressed reads the central CCD in timing; its MIEVLI list (outer CCDs,
    DATAMODE IMAGING) is used, while a pn timing list is left out with the reason."""
    root = tmp_path / "data" / "0123456789"
    root.mkdir(parents=True)
    _write_events(root / "P0123456789M1S001MIEVLI0000.FIT", "EMOS1", "FastUncompressed", "S001")
    _write_events(root / "P0123456789PNS003TIEVLI0000.FIT", "EPN", "PrimeTiming", "S003")
    obs = discover(tmp_path / "data", "0123456789")
    assert obs.cameras == ("mos1",) and "timing/burst" in obs.skipped_cameras["pn"]
    assert mode_skip_reason(obs, "mos1", SasSettings(**{**SETTINGS.__dict__, "esas": False})) is None
    assert "timing/burst" in mode_skip_reason(obs, "pn", SETTINGS)


def test_the_chain_list_is_the_longest_exposure_in_run_and_plan_script(xmm_data, tmp_path):
    """Two MOS1 exposures in the ODF summary (a long U002, a 10-minute S003): the filter step's input
    pattern names U002, so the run and the exported plan script (`pick` takes the first match by name,
    which would be S003) read the same list."""
    from xmmcore.backends.sas import script_lines

    odf = tmp_path / "data" / OBSID / "ODF"
    odf.mkdir(parents=True)
    text = next((xmm_data / "a907" / OBSID / "odf").glob("*SUM.SAS")).read_text()
    extra = (
        "EXPOSURE\n003 / Exposure Identifier [also S003]\nY / Is this a scheduled exposure?\n"
        "2004-05-09T20:20:00.000 / Actual Start Time\n2004-05-09T20:30:00.000 / Actual End Time\n"
        "//\nCONFIGURATION EPIC MOS\nMODE = PrimeFullWindow / Instrument configuration\n"
    )
    i = text.index("INSTRUMENT\nM2")
    (odf / f"0809_{OBSID}_SCX00000SUM.SAS").write_text(text[:i] + extra + text[i:])
    obs = discover(tmp_path / "data", OBSID, backend="sas")
    assert read_exposures(obs) == ["U002", "S003"]
    settings = SasSettings(**{**SETTINGS.__dict__, "use_pps_events": False})
    cmds = build_filter_commands(obs, "mos1", tmp_path / "out", _cfg(**{"flares.method": "fixed"}), settings)
    lc = next(c for c in cmds if c.label == "evselect-lc")
    table = next(a for a in lc.argv if a.startswith("table="))
    assert "M1U002MIEVLI" in table and "S003" not in table
    script = "\n".join(script_lines(cmds))
    assert "M1U002MIEVLI" in script and "M1[SU]" not in script


def read_exposures(obs):
    from xmmcore.observation import read_odf_summary

    return read_odf_summary(obs.sum_file).exposures["M1"]
