"""Bad-input matrix: each case is one test that feeds the pipeline something broken and checks that

* the right exception class is raised (``InputDataError`` for a bad file, ``ConfigError`` for a bad setting,
  ``FitError``/``ToolError`` for a failed algorithm, ``ToolNotFoundError`` for a missing tool),
* the message names the offending file (or key) and the cause,
* nothing previously written is altered (sha256 before/after) and no temporary file is left behind,
* in a survey, the other ObsIDs are processed as if the bad one were not there.

Files are built in code (a few thousand events), so the suite runs without ../shared/data.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers.cluster_events import T0, event_hdus, good_events, write_hdus

from xmmcore.errors import ConfigError, FitError, InputDataError, ToolError, ToolNotFoundError
from xmmcore.fsutil import atomic_write_fits, atomic_write_json, atomic_write_text, sha256_file

# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex)."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def read_events(path: Path, **kw):
    from xmmcore.events import read_events as _read

    return _read(path, **kw)


def assert_names(exc: BaseException, path: Path, *words: str) -> None:
    """The message names the file and (case-insensitively) each cause word."""
    text = str(exc)
    assert str(path) in text or path.name in text, f"message does not name {path}: {text}"
    for w in words:
        assert w.lower() in text.lower(), f"message lacks {w!r}: {text}"


# ----------------------------------------------------------------------------------------------
# Event lists: corrupt files
# ----------------------------------------------------------------------------------------------


def test_good_event_list_reads(tmp_path):
    """The builder makes a valid list (so the failures below are due to the one thing broken)."""
    evl = read_events(good_events(tmp_path / "pn_evts.fits"))
    assert evl.camera == "pn" and len(evl) == 4000
    assert evl.gti.shape == (1, 2)


def test_truncated_fits(tmp_path):
    path = good_events(tmp_path / "pn_evts.fits")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "truncated")


def test_corrupt_fits_header(tmp_path):
    path = good_events(tmp_path / "pn_evts.fits")
    raw = bytearray(path.read_bytes())
    raw[0:80] = b"GARBAGE!" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "cannot read")


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "pn_evts.fits.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(50_000)))
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path)


def test_truncated_gzip(tmp_path):
    good = good_events(tmp_path / "ok.fits")
    path = tmp_path / "pn_evts.fits.gz"
    blob = gzip.compress(good.read_bytes())
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path)


def test_empty_file(tmp_path):
    path = tmp_path / "pn_evts.fits"
    path.write_bytes(b"")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path)


def test_missing_events_extension(tmp_path):
    hdus = event_hdus()
    hdus[1].name = "STUFF"
    path = write_hdus(hdus, tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "EVENTS")


def test_missing_gti_extension(tmp_path):
    path = write_hdus(event_hdus()[:2], tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "GTI")


@pytest.mark.parametrize("column", ["PI", "TIME", "CCDNR"])
def test_missing_column(tmp_path, column):
    hdus = event_hdus()
    ev = hdus[1]
    keep = [c for c in ev.columns if c.name != column]
    new = fits.BinTableHDU.from_columns(keep, header=ev.header, name="EVENTS")
    for k in list(new.header):
        if k.startswith(("TCRPX", "TCRVL", "TCDLT", "TCTYP")):
            del new.header[k]
    hdus[1] = new
    path = write_hdus(hdus, tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, column)


def test_wrong_dtype_time_as_text(tmp_path):
    hdus = event_hdus(n=50)
    ev = hdus[1]
    cols = [fits.Column(name="TIME", format="20A", array=np.array([f"{t:.3f}" for t in ev.data["TIME"]]))]
    cols += [c for c in ev.columns if c.name != "TIME"]
    hdus[1] = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    for k in ("INSTRUME", "TELESCOP", "OBS_ID"):
        hdus[1].header[k] = ev.header[k]
    path = write_hdus(hdus, tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "TIME")


def test_empty_event_list(tmp_path):
    hdus = event_hdus(n=10)
    ev = hdus[1]
    cols = [fits.Column(name=c.name, format=c.format, array=ev.data[c.name][:0]) for c in ev.columns]
    hdus[1] = fits.BinTableHDU.from_columns(cols, header=ev.header, name="EVENTS")
    assert hdus[1].header["NAXIS2"] == 0
    path = write_hdus(hdus, tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "no events")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_time(tmp_path, bad):
    hdus = event_hdus(n=100)
    hdus[1].data["TIME"][17] = bad
    path = write_hdus(hdus, tmp_path / "pn_evts.fits")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "TIME", "non-finite")


def test_nan_in_gti(tmp_path):
    path = good_events(tmp_path / "pn_evts.fits", gti=[(T0, float("nan"))])
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "GTI")


def test_wrong_instrume(tmp_path):
    path = good_events(tmp_path / "pn_evts.fits", instrume="ACIS")
    with pytest.raises(InputDataError) as info:
        read_events(path)
    assert_names(info.value, path, "INSTRUME", "ACIS")


def test_camera_does_not_match_instrume(tmp_path):
    """A file named pn whose header says EMOS1: refused when the pn camera is asked for."""
    path = good_events(tmp_path / "pn_evts.fits", instrume="EMOS1")
    with pytest.raises(InputDataError) as info:
        read_events(path, camera="pn")
    assert_names(info.value, path, "EMOS1")


# ----------------------------------------------------------------------------------------------
# Pipeline-level: GTI / flare problems give a clear per-camera failure, never a traceback
# ----------------------------------------------------------------------------------------------


def _cfg(**over) -> dict:
    from survey.config import load_config

    cfg = load_config(overrides=over or None).to_dict()
    return cfg


def _pipeline():
    import xmmcore.backends.python  # noqa: F401
    from xmmcore import pipeline

    return pipeline


def _obs(tmp_path: Path, obsid: str = "0000000001", **kw):
    from xmmcore.observation import discover

    good_events(tmp_path / "data" / obsid / "pn_evts.fits", **kw)
    return discover(tmp_path / "data", obsid)


def test_zero_exposure_gti(tmp_path):
    """GTIs that sum to 0 s: InputDataError naming the file and 'exposure'/'GTI', not a ValueError traceback."""
    pipeline = _pipeline()
    obs = _obs(tmp_path, gti=[(T0 + 100.0, T0 + 100.0)])
    with pytest.raises(InputDataError) as info:
        pipeline.run_step(
            "filter", obs, tmp_path / "results" / obs.obsid, _cfg(cameras=["pn"]), log=logging.getLogger("t")
        )
    text = str(info.value)
    assert "pn" in text and ("exposure" in text.lower() or "gti" in text.lower()), text


def test_all_time_flared(tmp_path):
    """A light curve flared from start to end with a fixed threshold: no good time left -> InputDataError."""
    pipeline = _pipeline()
    obs = _obs(tmp_path, flare=True)
    cfg = _cfg(
        cameras=["pn"],
        **{"flares.method": "fixed", "flares.fixed_rate": {"pn": 0.05, "mos1": 0.05, "mos2": 0.05}},
    )
    with pytest.raises(InputDataError) as info:
        pipeline.run_step("filter", obs, tmp_path / "results" / obs.obsid, cfg, log=logging.getLogger("t"))
    text = str(info.value).lower()
    assert "pn" in text and ("flare" in text or "good time" in text or "exposure" in text), text
    clean = tmp_path / "results" / obs.obsid / "events" / "pn_clean.fits"
    assert not clean.exists(), "an empty cleaned event list was written for a fully flared camera"


def test_bad_camera_does_not_stop_the_others(tmp_path):
    """pn corrupt, mos1 fine: the filter step records pn as failed and cleans mos1."""
    pipeline = _pipeline()
    data = tmp_path / "data" / "0000000001"
    good_events(data / "mos1_evts.fits", instrume="EMOS1")
    (data / "pn_evts.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    from xmmcore.observation import discover

    obs = discover(tmp_path / "data", "0000000001")
    out = tmp_path / "results" / obs.obsid
    summary = pipeline.run_step("filter", obs, out, _cfg(cameras=["pn", "mos1"]), log=logging.getLogger("t"))
    assert "mos1" in summary["cameras"]
    assert "pn" in summary["failed_cameras"] and "pn_evts.fits" in summary["failed_cameras"]["pn"]
    assert (out / "events" / "mos1_clean.fits").exists()


# ----------------------------------------------------------------------------------------------
# OGIP spectra, responses, fits
# ----------------------------------------------------------------------------------------------


def _pha(counts: np.ndarray, *, exposure: float = 10_000.0, respfile: str | None = None):
    from xmmcore.ogip import PHA

    return PHA(
        channel=np.arange(counts.size),
        counts=counts.astype(float),
        exposure=exposure,
        backscal=1.0,
        grouping=None,
        quality=None,
        stat_err=None,
        respfile=respfile,
        ancrfile=None,
        backfile=None,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN"},
        path=None,
    )


def _write_rmf(path: Path) -> Path:
    from xmmcore.ogip import write_rmf
    from xmmcore.responses import make_rmf

    return write_rmf(make_rmf("pn"), path)


def test_truncated_pha(tmp_path):
    from xmmcore.ogip import read_pha, write_pha

    path = write_pha(_pha(np.ones(4096)), tmp_path / "pn_src.pha")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 2880])
    with pytest.raises(InputDataError) as info:
        read_pha(path)
    assert_names(info.value, path)


def test_truncated_rmf(tmp_path):
    from xmmcore.ogip import read_rmf

    path = _write_rmf(tmp_path / "pn.rmf")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(InputDataError) as info:
        read_rmf(path)
    assert_names(info.value, path)


def test_pha_without_spectrum_extension(tmp_path):
    from xmmcore.ogip import read_pha

    path = write_hdus(event_hdus(n=20), tmp_path / "pn_src.pha")
    with pytest.raises(InputDataError) as info:
        read_pha(path)
    assert_names(info.value, path, "SPECTRUM")


def test_rmf_pha_channel_mismatch(tmp_path):
    from xmmcore.fitting.datasets import SpectrumDataset
    from xmmcore.ogip import write_pha

    rmf = _write_rmf(tmp_path / "pn.rmf")
    pha = write_pha(_pha(np.ones(1024), respfile="pn.rmf"), tmp_path / "pn_src.pha")
    with pytest.raises(InputDataError) as info:
        SpectrumDataset.from_pha(pha, rmf=rmf)
    assert_names(info.value, pha, "channels")
    assert "pn.rmf" in str(info.value)


def test_missing_rmf_named_in_respfile(tmp_path):
    from xmmcore.fitting.datasets import SpectrumDataset
    from xmmcore.ogip import write_pha

    pha = write_pha(_pha(np.ones(4096), respfile="nowhere.rmf"), tmp_path / "pn_src.pha")
    with pytest.raises(InputDataError) as info:
        SpectrumDataset.from_pha(pha)
    assert_names(info.value, pha, "nowhere.rmf")


def _engine():
    from xmmcore.fitting import engines

    try:
        return engines, engines.get_engine("builtin")
    except ImportError as exc:
        pytest.skip(f"builtin engine not available: {exc}")


def test_zero_count_spectrum(tmp_path):
    engines, engine = _engine()
    from xmmcore.ogip import write_pha

    rmf = _write_rmf(tmp_path / "pn.rmf")
    pha = write_pha(_pha(np.zeros(4096), respfile="pn.rmf"), tmp_path / "pn_src.pha")
    with pytest.raises((FitError, InputDataError)) as info:
        engine.fit_files(
            [engines.FitInput(pha=pha, rmf=rmf, name="pn")],
            "powerlaw",
            stat="cstat",
            notice_kev=(0.5, 7.0),
            errors=None,
        )
    text = str(info.value).lower()
    assert "count" in text and ("pn_src.pha" in text or "pn" in text), text


def test_nan_counts_in_spectrum(tmp_path):
    """A PHA with a NaN in COUNTS must be refused (naming the file), never fitted to a meaningless statistic."""
    engines, engine = _engine()
    from xmmcore.ogip import write_pha

    rmf = _write_rmf(tmp_path / "pn.rmf")
    counts = np.random.default_rng(4).poisson(3.0, 4096).astype(float)
    counts[700] = np.nan
    pha = write_pha(_pha(counts, respfile="pn.rmf"), tmp_path / "pn_src.pha")
    with pytest.raises((InputDataError, FitError)) as info:
        engine.fit_files(
            [engines.FitInput(pha=pha, rmf=rmf, name="pn")],
            "powerlaw",
            stat="cstat",
            notice_kev=(0.5, 7.0),
            errors=None,
        )
    text = str(info.value).lower()
    assert "pn_src.pha" in text and ("nan" in text or "finite" in text), text


def test_infinite_arf(tmp_path):
    from xmmcore.ogip import read_arf, write_arf
    from xmmcore.responses import make_arf

    arf = make_arf("pn")
    arf.specresp[5] = np.inf
    path = write_arf(arf, tmp_path / "pn.arf")
    with pytest.raises(InputDataError) as info:
        read_arf(path)
    assert_names(info.value, path, "non-finite")


def test_fit_that_does_not_converge(tmp_path):
    """A model that cannot describe the data within the iteration budget: FitError, or converged=False recorded."""
    engines, engine = _engine()
    from xmmcore.ogip import write_pha

    rmf = _write_rmf(tmp_path / "pn.rmf")
    rng = np.random.default_rng(2)
    counts = rng.poisson(5.0, 4096).astype(float)
    counts[::2] = 0.0  # a comb: no smooth model fits it
    pha = write_pha(_pha(counts, respfile="pn.rmf"), tmp_path / "pn_src.pha")
    try:
        result = engine.fit_files(
            [engines.FitInput(pha=pha, rmf=rmf, name="pn")],
            "gaussian",
            stat="chi2",
            notice_kev=(0.5, 7.0),
            errors=None,
            set_params=["gaussian_1.LineE=0.11", "gaussian_1.Sigma=1e-4"],
        )
    except FitError as exc:
        assert "converge" in str(exc).lower() or "fit" in str(exc).lower()
        return
    d = result.to_dict()
    assert d["converged"] is False, "a fit that cannot describe the data was reported as converged"
    assert np.isfinite(d["statistic"])


def test_unknown_model_name():
    from xmmcore.fitting.models import parse_expression

    with pytest.raises(ConfigError) as info:
        parse_expression("wabs*(zbremsss+zgauss)")
    text = str(info.value)
    assert "zbremsss" in text and "zbremss" in text  # names the typo and lists what is known


def test_unparseable_model_expression():
    from xmmcore.fitting.models import parse_expression

    with pytest.raises(ConfigError) as info:
        parse_expression("wabs*(zbremss+")
    assert "wabs*(zbremss+" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("fit:\n  modle: apec\n", ["fit.modle"]),  # unknown key
        ("fit: [unclosed\n", ["YAML"]),  # not YAML at all
        ("cluster:\n  workers: two\n", ["cluster.workers", "two"]),
        ("cluster:\n  workers: 0\n", ["cluster.workers", ">= 1"]),
        ("cluster:\n  kind: kubernetes\n", ["cluster.kind", "kubernetes"]),
        ("fit: apec\n", ["fit"]),
        ("- just\n- a list\n", ["mapping"]),
        ("fit:\n  notice_kev: 0.5\n", ["fit.notice_kev"]),
    ],
)
def test_bad_config_values(tmp_path, text, words):
    from survey.config import load_config

    path = tmp_path / "survey.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_names(info.value, path, *words)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
        "!custom {{a: 1}}",
    ],
)
def test_yaml_custom_tags_refused(tmp_path, tag):
    """A config with Python/custom tags is refused (safe_load) and the payload never runs."""
    from survey.config import load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "survey.yaml"
    path.write_text("fit:\n  model: " + tag.format(marker=marker) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_names(info.value, path)
    assert not marker.exists()


def test_bad_override_from_command_line():
    from survey.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(overrides=["fit.stat"])
    assert "fit.stat" in str(info.value)


def test_unknown_backend_name():
    from xmmcore import backends

    with pytest.raises(ConfigError) as info:
        backends.get_backend("ciao")
    assert "ciao" in str(info.value) and "python" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Missing external tools
# ----------------------------------------------------------------------------------------------


def _env_without(*names: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PATH"] = "/nonexistent-bin"
    return env


def test_missing_tool_is_tool_not_found(tmp_path):
    from xmmcore.tools import find_executable

    with pytest.raises(ToolNotFoundError) as info:
        find_executable("evselect", env=_env_without("SAS_DIR"), hint="install SAS and source its setup")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ToolError)
    assert "evselect" in str(info.value) and "SAS" in str(info.value)


def test_run_tool_missing_executable(tmp_path):
    from xmmcore.tools import run_tool

    with pytest.raises(ToolNotFoundError) as info:
        run_tool(["no-such-sas-task-xyz", "table=x"], cwd=tmp_path, env=_env_without(), timeout_s=10)
    assert "no-such-sas-task-xyz" in str(info.value)


def test_missing_sas_when_selected(tmp_path, monkeypatch):
    """backend.reduction=sas without SAS installed: ToolNotFoundError (a ConfigError) that says how to fix it."""
    from xmmcore import backends

    if os.environ.get("SAS_DIR"):
        pytest.skip("SAS is installed here")
    monkeypatch.setenv("PATH", "/nonexistent-bin")
    obs = _obs(tmp_path)
    cfg = _cfg(cameras=["pn"], **{"backend.reduction": "sas"})
    with pytest.raises(ToolNotFoundError) as info:
        backend = backends.get_backend("sas")
        backend.filter_camera(obs, "pn", tmp_path / "results" / obs.obsid, cfg, log=logging.getLogger("t"))
    assert "SAS" in str(info.value)


def test_missing_xspec_when_selected(tmp_path, monkeypatch):
    engines, _ = _engine()
    import shutil

    if shutil.which("xspec"):
        pytest.skip("XSPEC is installed here")
    monkeypatch.setenv("PATH", "/nonexistent-bin")
    rmf = _write_rmf(tmp_path / "pn.rmf")
    from xmmcore.ogip import write_pha

    pha = write_pha(_pha(np.ones(4096), respfile="pn.rmf"), tmp_path / "pn_src.pha")
    with pytest.raises(ToolNotFoundError) as info:
        engine = engines.get_engine("xspec")
        engine.fit_files(
            [engines.FitInput(pha=pha, rmf=rmf, name="pn")],
            "powerlaw",
            stat="cstat",
            notice_kev=(0.5, 7.0),
            errors=None,
            workdir=tmp_path,
        )
    assert "xspec" in str(info.value).lower()


def _survey_cli(tmp_path, monkeypatch, capsys, *extra: str) -> tuple[int, str]:
    """Run ``xmm-survey run`` in this process with no SAS/XSPEC on PATH; return (exit code, output)."""
    import shutil

    from survey import cli

    if shutil.which("evselect") or shutil.which("xspec"):
        pytest.skip("SAS or XSPEC is installed here")
    monkeypatch.delenv("SAS_DIR", raising=False)
    monkeypatch.delenv("HEADAS", raising=False)
    monkeypatch.setenv("PATH", str(Path(os.__file__).parent) + os.pathsep + "/nonexistent-bin")
    good_events(tmp_path / "data" / "0000000001" / "pn_evts.fits", n=20_000)
    from xmmcore.responses import write_responses

    write_responses(tmp_path / "data" / "0000000001", ("pn",))  # so that the chain reaches the fit
    code = cli.main(
        [
            "run",
            "--data",
            str(tmp_path / "data"),
            "--results",
            str(tmp_path / "results"),
            "--workers",
            "1",
            "--no-progress",
            "--set",
            "cameras=[pn]",
            "--set",
            "cluster.dashboard_address=127.0.0.1:0",
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out + out.err


def test_survey_with_sas_selected_but_missing_stops_with_config_exit_code(tmp_path, monkeypatch, capsys):
    """backend.reduction=sas without SAS: the run stops with exit 2 (ConfigError) saying how to install/point
    to SAS, instead of recording every ObsID as a bad-data failure (exit 3) that a rerun would then reuse."""
    code, text = _survey_cli(tmp_path, monkeypatch, capsys, "--set", "backend.reduction=sas")
    assert "SAS" in text and "evselect" in text
    assert code == 2, f"exit code {code} (expected 2: missing tool = configuration problem):\n{text[-1500:]}"
    assert "InputDataError" not in text


@pytest.mark.slow  # runs filter/regions/spectra first; the engine-level test above covers the error itself
def test_survey_with_xspec_selected_but_missing_stops_with_config_exit_code(tmp_path, monkeypatch, capsys):
    code, text = _survey_cli(tmp_path, monkeypatch, capsys, "--set", "backend.fitting=xspec")
    assert "xspec" in text.lower()
    assert code == 2, f"exit code {code} (expected 2: missing tool = configuration problem):\n{text[-1500:]}"


# ----------------------------------------------------------------------------------------------
# ObsIDs
# ----------------------------------------------------------------------------------------------


def test_obsid_with_path_characters(tmp_path):
    from xmmcore.observation import discover

    (tmp_path / "data").mkdir()
    with pytest.raises(InputDataError) as info:
        discover(tmp_path / "data", "../../etc")
    assert "../../etc" in str(info.value)


def test_missing_obsid_folder(tmp_path):
    from xmmcore.observation import discover

    (tmp_path / "data").mkdir()
    with pytest.raises(InputDataError) as info:
        discover(tmp_path / "data", "0123456789")
    assert_names(info.value, tmp_path / "data" / "0123456789", "does not exist")


def test_obsid_folder_without_event_list(tmp_path):
    from xmmcore.observation import discover

    (tmp_path / "data" / "0123456789").mkdir(parents=True)
    (tmp_path / "data" / "0123456789" / "notes.txt").write_text("nothing here")
    with pytest.raises(InputDataError) as info:
        discover(tmp_path / "data", "0123456789")
    assert_names(info.value, tmp_path / "data" / "0123456789", "event list")


def test_corrupt_meta_json(tmp_path):
    from xmmcore.observation import discover

    good_events(tmp_path / "data" / "0000000001" / "pn_evts.fits")
    (tmp_path / "data" / "0000000001" / "meta.json").write_text("{z: 0.1,")
    with pytest.raises(InputDataError) as info:
        discover(tmp_path / "data", "0000000001")
    assert_names(info.value, tmp_path / "data" / "0000000001" / "meta.json", "JSON")


def test_duplicated_obsid_in_list(tmp_path):
    """The same ObsID twice (config list or list file): refused naming it, or kept once -- never run twice."""
    from survey import api, config

    good_events(tmp_path / "data" / "0000000001" / "pn_evts.fits")
    lst = tmp_path / "obsids.txt"
    lst.write_text("0000000001\n0000000001  # again\n")
    for spec in (["0000000001", "0000000001"], str(lst)):
        cfg = config.load_config(
            overrides={
                "data_dir": str(tmp_path / "data"),
                "results_dir": str(tmp_path / "results"),
                "obsids": spec,
            }
        )
        try:
            chosen = api.resolve_obsids(cfg)
        except ConfigError as exc:
            assert "0000000001" in str(exc) and "duplicate" in str(exc).lower()
            continue
        assert chosen == ["0000000001"]


# ----------------------------------------------------------------------------------------------
# Writes: unwritable folder, full disk — nothing previously written is altered
# ----------------------------------------------------------------------------------------------


def _hdul(n: int = 2000) -> fits.HDUList:
    return fits.HDUList(event_hdus(n=n))


def test_unwritable_output_dir_parent_is_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    before = sha256_file(blocker)
    with pytest.raises(OSError):
        atomic_write_json(blocker / "0000000001" / "steps" / "filter.json", {"a": 1})
    assert sha256_file(blocker) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir_permissions(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    atomic_write_text(out / "old.txt", "kept")
    before = checksums(out)
    out.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write_fits(_hdul(), out / "new.fits")
    finally:
        out.chmod(0o700)
    assert checksums(out) == before


def test_unwritable_results_dir_refused_by_survey(tmp_path):
    """run_survey with results_dir under a file: a ConfigError naming the folder before any work."""
    from survey import api, config

    good_events(tmp_path / "data" / "0000000001" / "pn_evts.fits")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cfg = config.load_config(
        overrides={
            "data_dir": str(tmp_path / "data"),
            "results_dir": str(blocker / "results"),
            "cameras": ["pn"],
        }
    )
    with pytest.raises((ConfigError, OSError)) as info:
        api.run_survey(cfg)
    assert "blocker" in str(info.value)
    assert isinstance(info.value, ConfigError), f"raw {type(info.value).__name__} instead of ConfigError"


def _fill_disk_fallback(monkeypatch):
    """Make every FITS/text write fail half-way with ENOSPC (when a small tmpfs cannot be mounted)."""
    real_writeto = fits.HDUList.writeto

    def writeto(self, fileobj, *args, **kwargs):
        real_writeto(self, fileobj, *args, **kwargs)
        with open(fileobj, "r+b") as fh:
            fh.truncate(2880)
        raise OSError(errno.ENOSPC, "No space left on device", str(fileobj))

    monkeypatch.setattr(fits.HDUList, "writeto", writeto)


@pytest.fixture()
def small_disk(tmp_path, monkeypatch):
    """A 256 KiB tmpfs if this process may mount one (root in a container), else a monkeypatched writer."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        mounted = libc.mount(b"tmpfs", str(mnt).encode(), b"tmpfs", 0, b"size=256k") == 0
    try:
        yield mnt, mounted
    finally:
        if mounted:
            libc.umount2(str(mnt).encode(), 0)


def test_disk_full_leaves_previous_product_intact(small_disk, monkeypatch):
    mnt, mounted = small_disk
    target = mnt / "pn_clean.fits"
    atomic_write_fits(_hdul(200), target)
    before = checksums(mnt)
    if not mounted:
        _fill_disk_fallback(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic_write_fits(_hdul(20_000), target)  # ~0.5 MB: does not fit in 256 KiB
    assert info.value.errno == errno.ENOSPC or "space" in str(info.value).lower()
    assert checksums(mnt) == before, "the earlier product was altered by a failed write"
    assert not no_temp_files(mnt) and len(list(mnt.iterdir())) == 1


def test_disk_full_during_pha_write(small_disk, monkeypatch):
    from xmmcore.ogip import write_pha

    mnt, mounted = small_disk
    atomic_write_text(mnt / "fit.json", '{"kT": 5.1}\n')
    before = checksums(mnt)
    if not mounted:
        _fill_disk_fallback(monkeypatch)
    with pytest.raises(OSError) as info:
        write_pha(_pha(np.ones(200_000)), mnt / "pn_src.pha")  # 200k channels ~ 2 MB
    assert info.value.errno == errno.ENOSPC or "space" in str(info.value).lower()
    assert checksums(mnt) == before
    assert not (mnt / "pn_src.pha").exists() and not no_temp_files(mnt)


# ----------------------------------------------------------------------------------------------
# Catalogue files
# ----------------------------------------------------------------------------------------------


def test_corrupt_catalogue_parquet(tmp_path):
    import catalog

    path = tmp_path / "catalogue.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(InputDataError) as info:
        catalog.load(path)
    assert_names(info.value, path, "Parquet")


def test_plain_parquet_is_not_a_catalogue(tmp_path):
    import pandas as pd

    import catalog

    path = tmp_path / "catalogue.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(path)
    with pytest.raises(InputDataError) as info:
        catalog.load(path)
    assert_names(info.value, path, "metadata")


# ----------------------------------------------------------------------------------------------
# A survey with one bad ObsID among good ones
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_survey(tmp_path_factory):
    """Five ObsIDs (two good; truncated, wrong INSTRUME, no event list) run through the survey API once."""
    import xmmcore.backends.python  # noqa: F401
    from survey import api, config

    root = tmp_path_factory.mktemp("survey")
    data, results = root / "data", root / "results"
    for i, obsid in enumerate(("0000000001", "0000000002")):
        good_events(data / obsid / "pn_evts.fits", n=6000, seed=10 + i)
    bad = good_events(data / "0000000003" / "pn_evts.fits")
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated
    good_events(data / "0000000004" / "pn_evts.fits", instrume="ACIS")  # not an EPIC list
    (data / "0000000005").mkdir()  # listed but holds no event list
    (data / "0000000005" / "README").write_text("ODF not downloaded yet")
    cfg = config.load_config(
        overrides={
            "data_dir": str(data),
            "results_dir": str(results),
            "cameras": ["pn"],
            "cluster.workers": 1,
            "pipeline.steps": ["filter", "regions"],
            "obsids": [f"000000000{i}" for i in range(1, 6)],
            "cluster.dashboard_address": "127.0.0.1:0",
        }
    )
    data_before = checksums(data)
    outside_before = sorted(p.name for p in root.iterdir())
    outcome = None
    try:
        outcome = api.run_survey(cfg)
    except Exception as exc:  # noqa: BLE001 - recorded for the tests below to judge
        outcome = exc
    return {
        "root": root,
        "data": data,
        "results": results,
        "cfg": cfg,
        "api": api,
        "outcome": outcome,
        "bad": bad,
        "data_before": data_before,
        "outside_before": outside_before,
    }


def test_survey_never_modifies_input_data_or_writes_outside_results(small_survey):
    assert checksums(small_survey["data"]) == small_survey["data_before"], (
        "the survey altered files under data/"
    )
    made = {p.name for p in small_survey["root"].iterdir()} - set(small_survey["outside_before"])
    assert made <= {"results"}, f"the survey wrote outside results/: {sorted(made)}"


def test_survey_bad_obsid_recorded_others_done(small_survey):
    outcome, results = small_survey["outcome"], small_survey["results"]
    assert not isinstance(outcome, BaseException), f"the survey raised for one bad ObsID: {outcome!r}"
    for good in ("0000000001", "0000000002"):
        assert (results / good / "events" / "pn_clean.fits").exists(), f"{good} not processed"
        assert (results / good / "steps" / "filter.json").exists()
    bad_dir = results / "0000000003"
    text = " ".join(p.read_text() for p in bad_dir.rglob("*.json")) if bad_dir.exists() else ""
    text += " ".join(p.read_text() for p in bad_dir.rglob("*.log")) if bad_dir.exists() else ""
    assert "InputDataError" in text or "pn_evts.fits" in text, "the bad ObsID's reason is not recorded"
    assert sorted(outcome.done) == ["0000000001", "0000000002"]
    reasons = outcome.failed
    assert set(reasons) == {"0000000003", "0000000004", "0000000005"}
    assert "InputDataError" in reasons["0000000003"] and "pn_evts.fits" in reasons["0000000003"]
    assert "INSTRUME" in reasons["0000000004"] and "ACIS" in reasons["0000000004"]
    assert "event list" in reasons["0000000005"]


def test_survey_rerun_with_bad_obsid_alters_nothing(small_survey):
    """Running again (the bad ObsID still bad) changes no byte of the good ObsIDs' products."""
    results = small_survey["results"]
    before = {
        k: v
        for k, v in checksums(results).items()
        if k.startswith(("0000000001", "0000000002")) and "/logs/" not in k and not k.endswith(".log")
    }
    try:
        small_survey["api"].run_survey(small_survey["cfg"])
    except Exception as exc:  # noqa: BLE001 - any exception here is the failure being tested
        pytest.fail(f"rerun raised {exc!r}")
    after = {k: v for k, v in checksums(results).items() if k in before}
    products = {k for k in before if "/steps/" not in k}
    assert {k: after.get(k) for k in products} == {k: before[k] for k in products}
    assert not no_temp_files(results)


@pytest.mark.parametrize("text", ["{torn", "\xff\xfe not utf-8", "[1, 2]"])
def test_an_unreadable_regions_json_is_an_input_error_naming_the_file(tmp_path, text):
    """The spectra and fit steps read the regions step's regions.json: a torn, undecodable or non-object
    file was a bare JSONDecodeError/UnicodeDecodeError without the file's name (and the SAS plan's too)."""
    from xmmcore import pipeline
    from xmmcore.backends import sas
    from xmmcore.errors import InputDataError
    from xmmcore.products import ObsProducts

    path = ObsProducts(tmp_path).regions_json
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("latin-1"))
    for read in (lambda: pipeline._load_regions(tmp_path), lambda: sas._json(path)):
        with pytest.raises(InputDataError) as info:
            read()
        assert str(path) in str(info.value)
        assert "invalid JSON" in str(info.value) or "expected a JSON object" in str(info.value)
