"""SAS/ESAS backend: golden argv per task for pn and MOS per mode, per-task environment, plan export.

Golden files live in ``tests/golden/sas/*.txt``. Regenerate them after an intended change with
``XMM_SURVEY_REGEN_GOLDEN=1 pytest tests/test_sas_backend.py`` and review the diff.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from astropy.io import fits
from helpers.sas import REGIONS, SETTINGS, _cfg, _write_attitude, _write_events

from xmmcore.backends.sas import (
    Command,
    SasBackend,
    SasSettings,
    build_filter_commands,
    build_image_commands,
    build_spectra_commands,
    camera_mode,
    esas_prefix,
    is_timing_mode,
    plan_observation,
    region_expression,
    run_commands,
    screen_expression,
    task_env,
)
from xmmcore.errors import ToolNotFoundError
from xmmcore.observation import discover

GOLDEN = Path(__file__).parent / "golden" / "sas"
REGEN = os.environ.get("XMM_SURVEY_REGEN_GOLDEN", "") not in ("", "0")


@pytest.fixture
def obs_dir(tmp_path):
    """data/0123456789 with pn (+ OOT list) and MOS1 imaging event lists."""
    root = tmp_path / "data" / "0123456789"
    root.mkdir(parents=True)
    _write_events(root / "pn_evts.fits", "EPN", "PrimeFullWindow", "S003")
    _write_events(root / "P0123456789PNS003OOEVLI0000.FIT", "EPN", "PrimeFullWindow", "S003", n=200)
    _write_events(root / "mos1_evts.fits", "EMOS1", "PrimeFullWindow", "S001")
    _write_attitude(root / "P0123456789OBX000ATTTSR0000.FIT")
    return tmp_path


def _normalise(text: str, tmp_root: Path) -> str:
    return text.replace(str(tmp_root.resolve()), "$ROOT").replace(str(tmp_root), "$ROOT")


def _golden_text(cmds: list[Command], tmp_root: Path) -> str:
    lines = []
    for c in cmds:
        lines.append(f"[{c.step}/{c.label}] cwd={c.cwd}")
        for k, v in c.env.items():
            lines.append(f"  env {k}={v}")
        for name, target in c.links:
            lines.append(f"  link {name} -> {target}")
        lines.append("  " + shlex.join(c.argv))
        for o in c.outputs:
            lines.append(f"  out {o}")
    return _normalise("\n".join(lines) + "\n", tmp_root)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if REGEN or not path.exists():
        if not REGEN and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"golden file {path} is missing (generate with XMM_SURVEY_REGEN_GOLDEN=1)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), (
        f"argv differ from {path}; if intended, regenerate with XMM_SURVEY_REGEN_GOLDEN=1"
    )


CASES = [
    # (golden name, camera, sas.esas, flares.method, grouping)
    ("pn_esas_espfilt", "pn", True, "espfilt", "min_counts"),
    ("pn_evselect_tabgtigen", "pn", False, "fixed", "min_counts"),
    ("mos1_esas_espfilt", "mos1", True, "espfilt", "min_counts"),
    ("mos1_evselect_tabgtigen", "mos1", False, "fixed", "optimal"),
]


@pytest.mark.parametrize(("name", "camera", "esas", "method", "grouping"), CASES)
def test_golden_argv(obs_dir, name, camera, esas, method, grouping):
    obs = discover(obs_dir / "data", "0123456789")
    cfg = _cfg(**{"flares.method": method, "spectra.grouping": grouping, "sas.esas": esas})
    settings = SasSettings(**{**SETTINGS.__dict__, "esas": esas})
    out = obs_dir / "results" / obs.obsid
    cmds = build_filter_commands(obs, camera, out, cfg, settings)
    cmds += build_spectra_commands(
        obs, camera, out, REGIONS, cfg, settings, clean_events=obs.event_files[camera]
    )
    _check_golden(name, _golden_text(cmds, obs_dir))
    tasks = [c.task for c in cmds]
    if esas:
        assert tasks[:3] == ["evselect", "espfilt", "evselect"]
        assert ("pnspectra" if camera == "pn" else "mosspectra") in tasks
        assert ("pnback" if camera == "pn" else "mosback") in tasks
    else:
        assert tasks == [
            "evselect",
            "tabgtigen",
            "evselect",
            "evselect",
            "evselect",
            "backscale",
            "backscale",
            "rmfgen",
            "evselect",
            "arfgen",
            "specgroup",
        ]
        arf = next(c for c in cmds if c.task == "arfgen")
        assert "extendedsource=yes" in arf.argv and "detmaptype=dataset" in arf.argv


def test_standard_expressions():
    cfg = _cfg()
    assert screen_expression("pn", cfg["filter"]["pn"]) == "(PATTERN<=4)&&(PI in [200:15000])&&#XMMEA_EP"
    assert screen_expression("mos2", cfg["filter"]["mos2"]) == "(PATTERN<=12)&&(PI in [200:12000])&&#XMMEA_EM"
    assert screen_expression("pn", {**cfg["filter"]["pn"], "flag": "zero", "ccds": [4, 7]}) == (
        "(PATTERN<=4)&&(PI in [200:15000])&&(FLAG==0)&&((CCDNR==4)||(CCDNR==7))"
    )
    # 3 arcmin = 3600 sky pixels of 0.05 arcsec; point source 20 arcsec = 400 pixels
    assert region_expression(REGIONS, "src") == (
        "((X,Y) IN circle(25800,26100,3600))&&!((X,Y) IN circle(27000,25000,400))"
    )
    assert region_expression(REGIONS, "bkg").startswith("((X,Y) IN annulus(25800,26100,3780,5400))")


def test_timing_mode_pn_is_skipped_with_a_reason(tmp_path):
    root = tmp_path / "data" / "0999999999"
    root.mkdir(parents=True)
    _write_events(root / "pn_evts.fits", "EPN", "PrimeTiming", "S003")
    _write_events(root / "mos1_evts.fits", "EMOS1", "PrimeFullWindow", "S001")
    obs = discover(tmp_path / "data", "0999999999")
    assert is_timing_mode(camera_mode(obs, "pn"))
    assert not is_timing_mode(camera_mode(obs, "mos1"))
    cmds, skipped = plan_observation(obs, tmp_path / "results" / obs.obsid, _cfg(), settings=SETTINGS)
    assert "pn" in skipped and "PrimeTiming" in skipped["pn"]
    assert not any(c.step.endswith("_pn") for c in cmds)
    out = SasBackend(SETTINGS).filter_camera(
        obs, "pn", tmp_path / "results" / obs.obsid, _cfg(), log=logging.getLogger("t")
    )
    assert out["skipped"] is True and "timing" in out["reason"]


@pytest.mark.realdata
def test_mode_from_real_odf_summary(xmm_data, tmp_path):
    from xmmcore.backends.sas import _read_sum_modes

    sum_file = next((xmm_data / "a907" / "0201901401" / "odf").glob("*SUM.SAS"))
    modes = _read_sum_modes(sum_file)
    assert modes["M1"][0] == "PrimeFullWindow" and modes["M2"][0] == "PrimeFullWindow"
    obs = discover(xmm_data / "a907", "0201901401")
    assert camera_mode(obs, "mos1")["submode"] == "PrimeFullWindow"
    assert esas_prefix(obs, "mos1") == "mos1U002"


@pytest.mark.realdata
def test_golden_real_images(xmm_data, tmp_path):
    """evselect image + eexpmap with the real A907 attitude file (0.5-2 keV, 80-pixel bins)."""
    obs = discover(xmm_data / "a907", "0201901401")
    cmds = build_image_commands(obs, "mos1", tmp_path / "results" / obs.obsid, _cfg(), SETTINGS)
    text = _golden_text(cmds, tmp_path).replace(str(xmm_data.resolve()), "$DATA")
    _check_golden("mos1_images", text)
    assert [c.task for c in cmds] == ["evselect", "eexpmap"]
    assert (
        "attitudeset=" + str((xmm_data / "a907/0201901401/emchain/P0201901401OBX000ATTTSR0000.FIT").resolve())
        in cmds[1].argv
    )
    assert "pimin=500" in cmds[1].argv and "pimax=2000" in cmds[1].argv


def test_images_without_attitude_or_odf_is_an_input_error(obs_dir):
    from xmmcore.errors import InputDataError

    (obs_dir / "data" / "0123456789" / "P0123456789OBX000ATTTSR0000.FIT").unlink()
    obs = discover(obs_dir / "data", "0123456789")
    with pytest.raises(InputDataError, match="attitude"):
        build_image_commands(obs, "pn", obs_dir / "results" / obs.obsid, _cfg(), SETTINGS)


@pytest.mark.realdata
def test_golden_real_odf_chain(xmm_data, tmp_path):
    """use_pps_events: false on the real A907 ODF -> cifbuild, odfingest, emchain before screening."""
    obs = discover(xmm_data / "a907", "0201901401")
    settings = SasSettings(**{**SETTINGS.__dict__, "use_pps_events": False})
    cfg = _cfg(**{"sas.use_pps_events": False})
    cmds = build_filter_commands(obs, "mos1", tmp_path / "results" / obs.obsid, cfg, settings)
    text = _golden_text(cmds, tmp_path).replace(str(xmm_data.resolve()), "$DATA")
    _check_golden("mos1_odf_chain", text)
    assert [c.task for c in cmds] == ["cifbuild", "odfingest", "emchain", "evselect", "espfilt", "evselect"]
    emchain = cmds[2]
    assert emchain.env["SAS_ODF"].endswith("sas/odf/odfingest")
    assert emchain.env["SAS_CCF"].endswith("cifbuild/ccf.cif")


def test_each_task_has_its_own_dir_and_pfiles(obs_dir):
    obs = discover(obs_dir / "data", "0123456789")
    out = obs_dir / "results" / obs.obsid
    cfg = _cfg()
    cmds, _ = plan_observation(obs, out, cfg, regions=REGIONS, settings=SETTINGS)
    pfiles = [c.env["PFILES"] for c in cmds]
    assert len(set(pfiles)) == len(cmds), "two tasks share a PFILES directory"
    for c in cmds:
        local, system = c.env["PFILES"].split(";")
        assert local.startswith(str(c.cwd)) and local.endswith("/pfiles")
        assert system == "/opt/xmmsas/config:${HEADAS}/syspfiles"  # SAS and HEASoft (FTOOLs) defaults
        assert c.env["SAS_CCFPATH"] == "/ccf"
        assert c.env["HEADASNOQUERY"] == ""
        assert Path(c.env["SAS_CCF"]).exists()  # the CALINDEX of the event list when there is no ccf.cif
        assert str(c.cwd).startswith(str((out / "sas").resolve()))
    assert len({c.cwd for c in cmds if "esas" not in str(c.cwd)}) == len(
        [c for c in cmds if "esas" not in str(c.cwd)]
    )


def _env_probe(step: str, label: str, tmp: Path) -> Command:
    code = (
        "import os, json, time; time.sleep(0.3); "
        "print(json.dumps({k: os.environ.get(k) for k in ('PFILES','SAS_CCF','SAS_ODF','SAS_CCFPATH')}))"
    )
    cwd = tmp / "sas" / step / label
    env = task_env(cwd, SETTINGS, odf=tmp / f"odf-{label}", ccf=tmp / f"ccf-{label}.cif")
    return Command(step=step, label=label, argv=(sys.executable, "-c", code), cwd=cwd, env=env, timeout_s=60)


def test_environment_seen_by_tasks_run_in_parallel_threads(tmp_path):
    import json

    before = dict(os.environ)
    seen: dict[str, dict] = {}

    def work(label: str) -> None:
        cmd = _env_probe("filter_pn", label, tmp_path)
        rec = run_commands([cmd], settings=SETTINGS)
        log = (cmd.cwd / f"{label}.log").read_text()
        seen[label] = json.loads(next(ln for ln in log.splitlines() if ln.startswith("{")))
        assert rec[0]["env"]["PFILES"] == cmd.env["PFILES"]

    threads = [threading.Thread(target=work, args=(lab,)) for lab in ("task-a", "task-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lab in ("task-a", "task-b"):
        d = tmp_path / "sas" / "filter_pn" / lab
        assert seen[lab]["PFILES"] == f"{d}/pfiles;/opt/xmmsas/config:${{HEADAS}}/syspfiles"
        assert seen[lab]["SAS_CCF"] == str(tmp_path / f"ccf-{lab}.cif")
        assert seen[lab]["SAS_ODF"] == str(tmp_path / f"odf-{lab}")
        assert seen[lab]["SAS_CCFPATH"] == "/ccf"
        assert (d / "pfiles").is_dir()
    assert dict(os.environ) == before


def test_missing_sas_says_which_tool_and_how(obs_dir, monkeypatch):
    obs = discover(obs_dir / "data", "0123456789")
    monkeypatch.delenv("SAS_DIR", raising=False)
    backend = SasBackend(SasSettings(sas_dir=None, ccf_path=None))
    with pytest.raises(ToolNotFoundError) as info:
        backend.filter_camera(
            obs, "mos1", obs_dir / "results" / obs.obsid, _cfg(), log=logging.getLogger("t")
        )
    msg = str(info.value)
    assert "SAS_DIR" in msg and "sas.sas_dir" in msg and "evselect" in msg
    empty = obs_dir / "fake_sas"
    (empty / "bin").mkdir(parents=True)
    backend = SasBackend(SasSettings(sas_dir=str(empty), ccf_path=None))
    with pytest.raises(ToolNotFoundError) as info:
        backend.check_installation(["evselect", "espfilt"])
    assert "'evselect'" in str(info.value) and str(empty) in str(info.value)


def _script_commands(script: str) -> list[list[str]]:
    return [shlex.split(ln) for ln in script.splitlines() if ln.startswith("( cd ")]


def test_plan_export_is_valid_bash_and_matches_backend_argv(obs_dir, tmp_path):
    from survey.commands.plan import plan_commands, render_script

    cmds, skipped, _cfg_used, obs = plan_commands(
        "0123456789",
        data=str(obs_dir / "data"),
        results=str(obs_dir / "results"),
        overrides=["sas.sas_dir=/opt/xmmsas", "sas.ccf_path=/ccf"],
    )
    script = render_script(cmds, obsid=obs.obsid, skipped=skipped, sas_dir="/opt/xmmsas")
    path = tmp_path / "run.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    parsed = _script_commands(script)
    assert len(parsed) == len(cmds) > 10
    for tokens, cmd in zip(parsed, cmds, strict=True):
        assert tokens[:2] == ["(", "cd"] and tokens[-1] == ")"
        assert Path(tokens[2]) == cmd.cwd
        assert tokens[3:5] == ["&&", "env"]
        body = tokens[5:-1]
        n_env = len(cmd.env)
        env = dict(t.split("=", 1) for t in body[:n_env])
        assert env == dict(cmd.env)
        assert body[n_env:] == list(cmd.argv)
    assert {c.task for c in cmds} >= {
        "evselect",
        "espfilt",
        "cheese",
        "mosspectra",
        "mosback",
        "pnspectra",
        "pnback",
        "specgroup",
    }


def test_plan_cli_writes_script(obs_dir, tmp_path, capsys):
    import argparse

    from survey.commands import plan

    parser = argparse.ArgumentParser()
    plan.add_parser(parser.add_subparsers())
    out = tmp_path / "run.sh"
    args = parser.parse_args(
        [
            "plan",
            "--backend",
            "sas",
            "--obsid",
            "0123456789",
            "--data",
            str(obs_dir / "data"),
            "--results",
            str(obs_dir / "results"),
            "--set",
            "sas.esas=false",
            "--export",
            str(out),
        ]
    )
    assert args.func(args) == 0
    text = out.read_text()
    assert os.access(out, os.X_OK)
    assert subprocess.run(["bash", "-n", str(out)], check=False).returncode == 0
    assert "arfgen" in text and "mosspectra" not in text
    assert "commands" in capsys.readouterr().out
    bad = parser.parse_args(
        ["plan", "--obsid", "../etc", "--data", str(obs_dir / "data"), "--export", str(out)]
    )
    assert bad.func(bad) == 3


@pytest.mark.sas
@pytest.mark.realdata
def test_real_sas_filter_and_version(xmm_data, tmp_path):
    """Runs the real SAS tasks on A907 MOS1 when SAS is installed."""
    obs = discover(xmm_data / "a907", "0201901401")
    backend = SasBackend()
    versions = backend.versions()
    assert versions["sas"][0].isdigit()
    cfg = _cfg(**{"flares.method": "fixed"})
    out = backend.filter_camera(obs, "mos1", tmp_path / obs.obsid, cfg, log=logging.getLogger("sas"))
    clean = Path(out["products"]["clean"])
    with fits.open(clean) as hdul:
        assert len(hdul["EVENTS"].data) > 1000
        assert hdul["EVENTS"].data["PATTERN"].max() <= 12
    # evselect spectra + backscale + rmfgen + arfgen (extended) + specgroup on the cleaned list
    from xmmcore.backends.sas import _provisional_regions

    cfg_std = _cfg(**{"flares.method": "fixed", "sas.esas": False})
    spec = backend.spectra_camera(
        obs,
        "mos1",
        tmp_path / obs.obsid,
        _provisional_regions(obs, "mos1", cfg_std),
        cfg_std,
        log=logging.getLogger("sas"),
    )
    with fits.open(spec["products"]["src"]) as hdul:
        hdr = hdul["SPECTRUM"].header
        assert hdr["RESPFILE"] == "mos1.rmf" and hdr["BACKFILE"] == "mos1_bkg.pha"
        assert hdr["BACKSCAL"] > 0 and hdul["SPECTRUM"].data["COUNTS"].sum() > 100
    assert all(t["returncode"] == 0 for t in spec["tasks"])


@pytest.mark.realdata
@pytest.mark.parametrize("overrides", [[], ["sas.esas=false", "flares.method=fixed"]])
def test_plan_export_for_real_a907_obsid(xmm_data, tmp_path, overrides):
    """Sample ObsID 0201901401 (A907, MOS1+MOS2): the script is valid bash and runs the backend's argv."""
    from survey.commands.plan import plan_commands, render_script

    cmds, skipped, _cfg_used, obs = plan_commands(
        "0201901401",
        data=str(xmm_data / "a907"),
        results=str(tmp_path / "results"),
        overrides=["sas.sas_dir=/opt/xmmsas", *overrides],
    )
    if not overrides:
        # the a907 lists are XGA eclean lists without corner events: ESAS is refused with the reason
        assert set(skipped) == {"mos1", "mos2"} and cmds == []
        assert all("no out-of-field-of-view (corner) events" in r and "eclean" in r for r in skipped.values())
        return
    assert skipped == {}
    script = render_script(cmds, obsid=obs.obsid, sas_dir="/opt/xmmsas")
    path = tmp_path / "run.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    parsed = _script_commands(script)
    assert [t[5 + len(c.env) : -1] for t, c in zip(parsed, cmds, strict=True)] == [list(c.argv) for c in cmds]
    assert {c.step for c in cmds} == {"filter_mos1", "filter_mos2", "spectra_mos1", "spectra_mos2"}


def test_esas_needs_espfilt_corner_events(obs_dir):
    from xmmcore.errors import ConfigError

    obs = discover(obs_dir / "data", "0123456789")
    cfg = _cfg(**{"flares.method": "fixed"})
    with pytest.raises(ConfigError, match="flares.method: espfilt"):
        build_spectra_commands(obs, "mos1", obs_dir / "results" / obs.obsid, REGIONS, cfg, SETTINGS)
    cmds = build_spectra_commands(obs, "mos1", obs_dir / "results" / obs.obsid, REGIONS, _cfg(), SETTINGS)
    # ESAS reads espfilt's list with the corners, not the flag-screened clean list
    assert cmds[0].links[0][1].endswith("filter_mos1/espfilt/mos1S001-allevc.fits")
