"""XSPEC engine: job building, the separate-process runner, recorded failures, and real fits when present."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from xmmcore.errors import ConfigError, FitError, InputDataError, ToolNotFoundError
from xmmcore.fitting.engines import FitInput, get_engine
from xmmcore.fitting.engines.xspec import XspecEngine, build_job, xspec_available
from xmmcore.fitting.engines.xspec_runner import ESAS_SKY_COMPONENTS, _our_names
from xmmcore.tools import run_tool

needs_no_xspec = pytest.mark.skipif(xspec_available(), reason="PyXspec is installed here")


def _psr_inputs(xmm_data: Path) -> list[FitInput]:
    base = xmm_data / "psrj0855"
    out = [
        FitInput(
            pha=base / "pn" / "xmm_pn_0605960101_src.pha",
            rmf=base / "pn" / "xmm_pn_0605960101.rmf",
            arf=base / "pn" / "xmm_pn_0605960101.arf",
            bkg=base / "pn" / "xmm_pn_0605960101_bkg.pha",
            name="pn",
        )
    ]
    for cam in ("mos1", "mos2"):
        d = base / cam
        pha = next(p for p in d.iterdir() if p.name.endswith("_src.pha"))
        out.append(
            FitInput(
                pha=pha,
                rmf=next(d.glob("*.rmf")),
                arf=next(d.glob("*.arf")),
                bkg=next(p for p in d.iterdir() if p.name.endswith("_bkg.pha")),
                name=cam,
            )
        )
    return out


@needs_no_xspec
def test_missing_pyxspec_says_how_to_install(monkeypatch):
    monkeypatch.delenv("HEADAS", raising=False)
    with pytest.raises(ToolNotFoundError) as info:
        get_engine("xspec")
    msg = str(info.value)
    assert "PyXspec" in msg and "headas-init.sh" in msg and "backend.fitting: builtin" in msg
    assert sys.executable in msg
    assert info.value.exit_code == 2


def test_component_names_follow_the_pipeline_convention():
    # XSPEC names a repeated component by its position (apec_3); the pipeline numbers occurrences.
    assert _our_names(["constant", "wabs", "zbremss", "zgauss"]) == [
        "constant_1",
        "wabs_1",
        "zbremss_1",
        "zgauss_1",
    ]
    assert _our_names(["apec", "wabs", "apec_3", "powerlaw", "gaussian", "gaussian_6", "powerlaw_7"]) == [
        "apec_1",
        "wabs_1",
        "apec_2",
        "powerlaw_1",
        "gaussian_1",
        "gaussian_2",
        "powerlaw_2",
    ]


@pytest.mark.realdata
def test_build_job_joint_fit(xmm_data, tmp_path):
    from astropy.cosmology import FlatLambdaCDM

    inputs = _psr_inputs(xmm_data)
    job = build_job(
        inputs,
        "wabs*(zbremss+zgauss)",
        workdir=tmp_path,
        stat="cstat",
        notice_kev=(0.5, 7.0),
        set_params=["zgauss_1.LineE=6.7,frozen", "2:constant_1.factor=0.95", "1=0.0119,frozen"],
        links=[("zgauss_1.Redshift", "zbremss_1.Redshift"), ("3:constant_1.factor", "p10")],
        abund="aspl",
        errors="profile",
        error_level=0.9,
        redshift=0.05,
        cosmology=FlatLambdaCDM(H0=70, Om0=0.3),
        flux_bands_kev=[(0.5, 2.0), (0.1, 2.4)],
    )
    assert job["model"] == "constant*(wabs*(zbremss+zgauss))"
    assert [d["name"] for d in job["datasets"]] == ["pn", "mos1", "mos2"]
    assert all(Path(d["pha"]).is_absolute() and Path(d["bkg"]).exists() for d in job["datasets"])
    assert job["settings"] == [
        ["zgauss_1.LineE", 6.7, True, None, None],
        ["constant_1.factor", 0.95, None, None, 2],
        ["1", 0.0119, True, None, None],
        ["zgauss_1.Redshift", None, None, "zbremss_1.Redshift", None],
        ["constant_1.factor", None, None, "10", 3],
    ]
    assert job["error_delta"] == pytest.approx(2.7055, abs=1e-4)  # 90 % for one parameter
    assert job["cosmology"] == {"H0": 70.0, "Om0": 0.3}
    assert job["band_keys"] == {"0.5-2.0": "0.5-2.0", "0.1-2.4": "0.1-2.4"}
    assert job["abund"] == "aspl" and job["xsect"] == "vern" and job["notice_kev"] == [0.5, 7.0]
    json.dumps(job)  # the runner reads it back as JSON
    named = build_job(inputs, "wabs*powerlaw", workdir=tmp_path, set_params=["mos2:constant_1.factor=0.9"])
    assert named["settings"] == [["constant_1.factor", 0.9, None, None, 3]]
    with pytest.raises(ConfigError, match="no dataset 'mos3'"):
        build_job(inputs, "wabs*powerlaw", workdir=tmp_path, set_params=["mos3:constant_1.factor=0.9"])
    one = build_job(inputs[:1], "wabs*(zbremss+zgauss)", workdir=tmp_path, esas_sky={"halo_kT": 0.2})
    assert one["model"] == f"wabs*(zbremss+zgauss) + {ESAS_SKY_COMPONENTS}"
    assert one["esas_sky"] == {"halo_kT": 0.2} and one["error_delta"] == 1.0


def test_build_job_rejects_bad_input(tmp_path):
    pha = tmp_path / "src.pha"
    pha.write_bytes(b"")
    with pytest.raises(ConfigError, match="fit.stat"):
        build_job([FitInput(pha=pha)], "powerlaw", workdir=tmp_path, stat="likelihood")
    with pytest.raises(InputDataError, match="RMF"):
        build_job([FitInput(pha=pha, rmf=tmp_path / "missing.rmf")], "powerlaw", workdir=tmp_path)
    with pytest.raises(ConfigError):
        build_job([], "powerlaw", workdir=tmp_path)


@needs_no_xspec
def test_runner_process_without_pyxspec_records_why(tmp_path):
    job = {"result_path": str(tmp_path / "res.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    from xmmcore.errors import ExternalToolError

    with pytest.raises(ExternalToolError) as info:
        run_tool(
            [sys.executable, "-m", "xmmcore.fitting.engines.xspec_runner", str(tmp_path / "job.json")],
            cwd=tmp_path,
            timeout_s=60,
            check_sas_errors=False,
        )
    assert info.value.returncode == 3
    rec = json.loads((tmp_path / "res.json").read_text())
    assert rec["kind"] == "no_xspec" and "headas-init.sh" in rec["error"]
    # through the engine (runner given explicitly, so the import check is left to the child)
    engine = XspecEngine(runner=[sys.executable, "-m", "xmmcore.fitting.engines.xspec_runner"])
    pha = tmp_path / "src.pha"
    pha.write_bytes(b"")
    with pytest.raises(ToolNotFoundError, match="PyXspec"):
        engine.fit_files([FitInput(pha=pha, name="pn")], "powerlaw", workdir=tmp_path / "fit")


def test_a_crash_of_the_fit_process_is_a_recorded_failure(tmp_path):
    crash = "import os, signal; print('loading spectra', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    engine = XspecEngine(runner=[sys.executable, "-c", crash], timeout_s=60)
    pha = tmp_path / "src.pha"
    pha.write_bytes(b"")
    with pytest.raises(FitError, match="crashed.*SIGSEGV"):
        engine.fit_files([FitInput(pha=pha, name="pn")], "wabs*apec", workdir=tmp_path / "fit")
    rec = json.loads((tmp_path / "fit" / "xspec_failure.json").read_text())
    assert rec["returncode"] == -11
    assert "loading spectra" in rec["output_tail"]
    assert rec["model"] == "wabs*apec" and rec["datasets"] == ["pn"]
    assert (tmp_path / "fit" / "xspec_job.json").exists()


def test_a_hung_fit_is_killed_and_recorded(tmp_path):
    engine = XspecEngine(runner=[sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1.0)
    pha = tmp_path / "src.pha"
    pha.write_bytes(b"")
    with pytest.raises(FitError, match="timed out"):
        engine.fit_files([FitInput(pha=pha, name="mos1")], "powerlaw", workdir=tmp_path / "fit")
    assert json.loads((tmp_path / "fit" / "xspec_failure.json").read_text())["reason"].startswith(
        "XSPEC fit timed out"
    )


# ------------------------------------------------------------------------------- real XSPEC fits
@pytest.mark.xspec
@pytest.mark.realdata
def test_real_xspec_fit_recovers_the_fakeit_input(xmm_data, tmp_path):
    """a2443_fakeit was simulated by XSPEC 12.11.1 fakeit with phabs*apec (header FKSRC001)."""
    from astropy.io import fits

    pytest.importorskip("xspec", reason="xspec is on PATH but PyXspec is not importable by this Python")
    base = xmm_data / "a2443_fakeit"
    pha = base / "pnS004-A2443_reg2.fak"
    truth = fits.getheader(pha, "SPECTRUM").get("FKSRC001", "")
    engine = get_engine("xspec")
    res = engine.fit_files(
        [
            FitInput(
                pha=pha, rmf=base / "pnS004-A2443_reg2.rmf", arf=base / "pnS004-A2443_reg2.arf", name="pn"
            )
        ],
        "phabs*apec",
        stat="chi2",
        notice_kev=(0.5, 8.0),
        errors="profile",
        flux_bands_kev=[(0.5, 2.0)],
        workdir=tmp_path,
    )
    d = res.to_dict()
    assert d["engine"] == "xspec" and d["versions"]["xspec"][:2] == "12"
    assert [p["name"] for p in d["parameters"]] == [
        "phabs_1.nH",
        "apec_1.kT",
        "apec_1.Abundanc",
        "apec_1.Redshift",
        "apec_1.norm",
    ]
    assert d["reduced_statistic"] < 1.5, truth
    kt = res.parameter("apec_1.kT")
    assert kt["err_lo"] > 0 and kt["err_hi"] > 0
    assert (tmp_path / "xspec_session.xcm").exists()
    assert d["fluxes"]["0.5-2.0"]["absorbed"] > 0


@pytest.mark.xspec
@pytest.mark.realdata
def test_real_xspec_joint_fit_layout_matches_builtin(xmm_data, tmp_path):
    from xmmcore.fitting.engines.builtin import ENGINE as BUILTIN

    pytest.importorskip("xspec", reason="xspec is on PATH but PyXspec is not importable by this Python")
    inputs = _psr_inputs(xmm_data)
    kw = {"stat": "cstat", "notice_kev": (0.5, 7.0), "errors": "covariance", "flux_bands_kev": [(2.0, 10.0)]}
    xs = get_engine("xspec").fit_files(inputs, "wabs*powerlaw", workdir=tmp_path, **kw).to_dict()
    bi = BUILTIN.fit_files(inputs, "wabs*powerlaw", **kw).to_dict()
    assert set(xs) == set(bi)
    assert [(p["name"], p["number"], p.get("dataset")) for p in xs["parameters"]] == [
        (p["name"], p["number"], p.get("dataset")) for p in bi["parameters"]
    ]
    for a, b in zip(xs["parameters"], bi["parameters"]):
        if not a["frozen"]:
            assert a["value"] == pytest.approx(b["value"], abs=3 * max(a["sigma"], b["sigma"], 1e-12))
