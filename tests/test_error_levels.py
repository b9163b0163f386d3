"""fit.error_levels: 90% (delta-stat 2.706) profile intervals of the shape parameters, records and catalogue."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from xmmcore.errors import ConfigError
from xmmcore.fitting import SpectrumDataset, fit
from xmmcore.fitting.optimize import Fit, level_label

OPTS = {"stat": "chi2gehrels", "set_params": ["1=0.0119,frozen"]}


@pytest.fixture(scope="module")
def pn(sherpa_pn: SpectrumDataset) -> SpectrumDataset:
    return sherpa_pn


@pytest.fixture(scope="module")
def fits_68_90(pn: SpectrumDataset):
    only68 = fit([pn], "wabs*wabs*powerlaw", errors="profile", flux_bands=(), **OPTS)
    both = Fit([pn], "wabs*wabs*powerlaw", **OPTS)
    res = both.run(errors="profile", extra_error_levels=(0.9,), flux_bands=())
    return only68, both, res


def test_level_labels() -> None:
    assert level_label(0.9) == "90" and level_label(0.95) == "95" and level_label(0.683) == "68p3"


@pytest.mark.realdata
def test_90_percent_profile_interval_crosses_delta_2706(fits_68_90) -> None:
    only68, f, res = fits_68_90
    gamma = res.parameter("PhoIndex")
    iv = gamma["intervals"]["90"]
    assert iv["method"] == "profile" and iv["delta"] == pytest.approx(2.7055, abs=1e-4)
    # the 68% intervals are those of a fit without the further level (same numbers)
    for a, b in zip(only68.parameters, res.parameters):
        assert (a["value"], a["err_lo"], a["err_hi"]) == (b["value"], b["err_lo"], b["err_hi"])
    assert res.extra_error_levels == [0.9] and res.to_dict()["extra_error_levels"] == [0.9]
    # normalisations get no further interval (one MINOS per shape parameter only)
    assert "intervals" not in res.parameter("powerlaw_1.norm")
    assert "intervals" not in res.parameter("wabs_1.nH")  # frozen
    # a real profile: with PhoIndex fixed at each 90% bound, the re-minimised statistic is best + 2.706
    k = f.free.index(f.problem.slot_of("powerlaw_1.PhoIndex"))
    for bound in (gamma["value"] - iv["err_lo"], gamma["value"] + iv["err_hi"]):
        m = f.minuit
        m.values = f.best_x
        m.values[k] = bound
        m.fixed[k] = True
        m.migrad()
        m.fixed[k] = False
        assert m.fval - f.best_stat == pytest.approx(2.7055, abs=0.03)
    further = res.summary_text().split("Further intervals (fit.error_levels):")[1]
    assert f"powerlaw_1.PhoIndex      90% (delta stat 2.706): -{iv['err_lo']:.4g}" in further
    # wider than the 68% interval, close to 1.645x for this well-determined index
    for side in ("err_lo", "err_hi"):
        assert 1.5 < iv[side] / gamma[side] < 1.8


@pytest.mark.realdata
def test_covariance_and_none_levels(pn: SpectrumDataset) -> None:
    cov = fit(
        [pn], "wabs*wabs*powerlaw", errors="covariance", extra_error_levels=(0.9,), flux_bands=(), **OPTS
    )
    g = cov.parameter("PhoIndex")
    assert g["intervals"]["90"]["method"] == "covariance"
    assert g["intervals"]["90"]["err_lo"] == pytest.approx(g["sigma"] * math.sqrt(2.7055), rel=1e-4)
    none = fit([pn], "wabs*wabs*powerlaw", errors=None, extra_error_levels=(0.9,), flux_bands=(), **OPTS)
    assert "intervals" not in none.parameter("PhoIndex") and none.extra_error_levels == []
    f = Fit([pn], "wabs*wabs*powerlaw", **OPTS)
    f.optimize()
    with pytest.raises(ConfigError, match="confidence levels"):
        f.level_intervals([2.706])


def test_config_error_levels_are_checked_at_load() -> None:
    from survey.config import load_config
    from xmmcore.settings import FitSettings

    cfg = load_config(None, [])
    assert cfg["fit"]["error_levels"] == [0.683, 0.9]
    assert FitSettings.from_config(cfg).fit_kwargs()["extra_error_levels"] == (0.9,)
    only = load_config(None, ["fit.error_levels=[0.683]"])
    assert FitSettings.from_config(only).fit_kwargs()["extra_error_levels"] == ()
    for bad, why in (
        ("[0.9]", "starting with 0.683"),
        ("[0.683, 0.95]", "catalogue columns"),
        ("[0.683, 0.9, 0.9]", "distinct"),
        ("[]", "starting with 0.683"),
        ("0.9", "must be list"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_config(None, [f"fit.error_levels={bad}"])


def test_catalogue_columns_of_the_90_percent_intervals() -> None:
    from catalog import schema
    from catalog.rows import fit_to_row

    names = {c.name: c for c in schema.columns()}
    assert schema.SCHEMA_VERSION == "2.2"
    for par in ("kT", "abund", "nH", "z", "gamma"):
        assert names[f"{par}_err_lo90"].unit == names[par].unit and f"{par}_err_hi90" in names
    assert "norm_err_lo90" not in names
    iv = {"90": {"level": 0.9, "delta": 2.7055, "err_lo": -0.31, "err_hi": 0.35, "method": "profile"}}
    record = {
        "parameters": [
            {"name": "apec_1.kT", "value": 4.0, "err_lo": 0.19, "err_hi": 0.21, "intervals": iv},
            {"name": "apec_1.Abundanc", "value": 0.3, "err_lo": 0.0, "err_hi": 0.0, "frozen": True},
        ]
    }
    row, _ = fit_to_row(record)
    assert (row["kT_err_lo"], row["kT_err_hi"]) == (0.19, 0.21)
    assert (row["kT_err_lo90"], row["kT_err_hi90"]) == (0.31, 0.35)
    assert "abund_err_lo90" not in row  # frozen: the column stays missing (NaN)


def test_xspec_runner_runs_error_again_at_each_further_level(tmp_path: Path, monkeypatch) -> None:
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "xspec_double"))
    monkeypatch.delitem(sys.modules, "xspec", raising=False)
    xs = importlib.import_module("xspec")
    xs.reset()
    try:
        from xmmcore.fitting.engines.xspec_runner import run_job

        datasets = [
            {"name": "pn", "pha": "/d/pn_src.pha", "rmf": "/d/pn.rmf", "arf": "/d/pn.arf", "bkg": None}
        ]
        job = {
            "model": "wabs*apec",
            "stat": "cstat",
            "notice_kev": [0.5, 7.0],
            "datasets": datasets,
            "settings": [],
            "errors": "profile",
            "error_delta": 1.0,
            "extra_error_levels": [["90", 0.9, 2.7055]],
            "flux_bands_kev": [],
            "band_keys": {},
            "cross_norm": False,
            "log_path": str(tmp_path / "xspec.log"),
            "max_iterations": 100,
        }
        out = run_job(job)
        errors = [c[1] for c in xs.CALLS if c[0] == "error"]
        at90 = [e for e in errors if " 2.7055 " in e]
        by_name = {p["name"]: p for p in out["parameters"]}
        shape = [n for n, p in by_name.items() if not p["frozen"] and not n.endswith("norm")]
        assert len(at90) == len(shape) >= 2  # wabs nH, apec kT, Abundanc, Redshift (the double frees all)
        assert "intervals" not in by_name["apec_1.norm"] and out["extra_error_levels"] == [0.9]
        iv = by_name["apec_1.kT"]["intervals"]["90"]
        # the double's error command finds no bounds: the covariance sigma scaled by sqrt(2.7055)
        assert iv["method"] == "covariance" and iv["err_lo"] == pytest.approx(0.1 * np.sqrt(2.7055))
    finally:
        sys.modules.pop("xspec", None)
        importlib.invalidate_caches()


def test_fit_command_gives_the_90_percent_intervals(xmm_data: Path, capsys) -> None:
    import json

    from survey.cli import main

    d = xmm_data / "a2443_fakeit"
    argv = ["fit", str(d / "pnS004-A2443_reg2.fak"), "--rmf", str(d / "pnS004-A2443_reg2.rmf")]
    argv += ["--arf", str(d / "pnS004-A2443_reg2.arf"), "--model", "phabs*powerlaw", "--notice", "2-8"]
    argv += ["--set", "phabs_1.nH=0.1,frozen", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    gamma = next(p for p in out["parameters"] if p["name"] == "powerlaw_1.PhoIndex")
    assert (
        gamma["intervals"]["90"]["method"] == "profile"
        and gamma["intervals"]["90"]["err_lo"] > gamma["err_lo"]
    )
    assert main([*argv, "--error-levels", "0.683"]) == 0
    gamma = next(
        p for p in json.loads(capsys.readouterr().out)["parameters"] if p["name"] == "powerlaw_1.PhoIndex"
    )
    assert "intervals" not in gamma
    assert main([*argv, "--error-levels", "0.9"]) == 2
