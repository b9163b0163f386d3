"""Joint pn+MOS1+MOS2 fit (PSR J0855-4644), engines, CLI parser, exports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from survey.commands import fit as fit_cmd
from xmmcore import ogip
from xmmcore.errors import ConfigError
from xmmcore.fitting import SpectrumDataset, fit, parse_expression
from xmmcore.fitting.engines import FitInput, get_engine
from xmmcore.fitting.fluxes import KEV_TO_ERG, band_flux


@pytest.mark.realdata
def test_three_camera_joint_fit(xmm_data: Path, tmp_path: Path) -> None:
    d = xmm_data / "psrj0855"
    inputs = [FitInput(pha=d / c / f"xmm_{c}_0605960101_src.pha", name=c) for c in ("pn", "mos1", "mos2")]
    absorber = "wabs"  # numpy wabs keeps this test fast (phabs via the plug-in works the same way)
    result = get_engine("builtin").fit_files(
        inputs,
        f"constant*{absorber}*powerlaw",
        stat="cstat",
        notice_kev=(0.5, 10.0),
        errors="covariance",
        flux_bands_kev=[(0.5, 2.0), (2.0, 10.0)],
    )
    consts = [p for p in result.parameters if p["name"] == "constant_1.factor"]
    assert [p["dataset"] for p in consts] == ["pn", "mos1", "mos2"]
    assert consts[0]["frozen"] and consts[0]["value"] == 1.0
    for p in consts[1:]:
        assert 0.8 < p["value"] < 1.2 and 0 < p["sigma"] < 0.05
    assert all(d["stat"] == "wstat" for d in result.datasets)  # cstat + background = W statistic (XSPEC)
    assert result.dof == sum(d["n_bins"] for d in result.datasets) - 5  # nH, Gamma, norm, 2 constants
    record = json.loads(json.dumps(result.to_dict()))
    assert record["n_datasets"] == 3 and record["fluxes"]["0.5-2.0"]["absorbed"] > 0
    xcm = result.to_xcm(tmp_path / "fit.xcm")
    assert "data 3:3" in xcm and "statistic cstat" in xcm and f"model constant*{absorber}*powerlaw" in xcm
    # the constant of data group 2 is free; the shared parameters of group 2 are linked to group 1
    assert "= p2" in xcm
    from xmmcore.fitting.plots import plot_fit

    png = plot_fit(result, inputs, tmp_path / "fit.png")
    assert png.stat().st_size > 10_000


def _toy_dataset(seed: int = 1, exposure: float = 5e4) -> SpectrumDataset:
    edges = np.geomspace(0.2, 12.0, 301)
    rmf = ogip.RMF(
        energ_lo=edges[:-1],
        energ_hi=edges[1:],
        matrix=__import__("scipy.sparse").sparse.identity(300, format="csr"),
        e_min=edges[:-1],
        e_max=edges[1:],
        channel_offset=1,
    )
    arf = ogip.ARF(energ_lo=edges[:-1], energ_hi=edges[1:], specresp=np.full(300, 400.0))
    model = parse_expression("wabs*powerlaw")
    mu = model.evaluate(edges[:-1], edges[1:], [0.1, 2.0, 1e-3]) * 400.0 * exposure
    counts = np.random.default_rng(seed).poisson(mu).astype(float)
    pha = ogip.PHA(channel=np.arange(1, 301), counts=counts, exposure=exposure)
    return SpectrumDataset(pha=pha, rmf=rmf, arf=arf, name=f"toy{seed}")


def test_links_fluxes_and_luminosity() -> None:
    sets = [_toy_dataset(k).notice(0.5, 10) for k in (1, 2, 3)]
    res = fit(
        sets,
        "constant*wabs*powerlaw",
        stat="cstat",
        set_params=["2=0.1,frozen"],
        links=[("3:constant_1.factor", "2:constant_1.factor")],
        errors="covariance",
        redshift=0.1,
        cosmology={"H0": 70.0, "Om0": 0.3},
        flux_bands=((2.0, 10.0),),
    )
    c1, c2, c3 = [p for p in res.parameters if p["name"] == "constant_1.factor"]
    assert c1["frozen"] and c3["linked"] and c3["value"] == c2["value"] == pytest.approx(1.0, abs=0.05)
    assert res.parameter("nH")["frozen"]
    assert res.parameter("PhoIndex")["value"] == pytest.approx(
        2.0, abs=4 * res.parameter("PhoIndex")["sigma"]
    )
    model = parse_expression("constant*wabs*powerlaw")
    values = np.array([1.0, 0.1, res.parameter("PhoIndex")["value"], res.parameter("norm")["value"]])
    gamma, norm = values[2], values[3]
    analytic = norm * (10.0 ** (2 - gamma) - 2.0 ** (2 - gamma)) / (2 - gamma) * KEV_TO_ERG
    assert band_flux(model, values, (2.0, 10.0), unabsorbed=True) == pytest.approx(analytic, rel=1e-5)
    f = res.fluxes["2.0-10.0"]
    assert f["unabsorbed"] == pytest.approx(analytic, rel=1e-5) and f["absorbed"] < f["unabsorbed"]
    assert f["unabsorbed_err_lo"] > 0 and f["unabsorbed_err_hi"] > 0
    from astropy.cosmology import FlatLambdaCDM

    dl = FlatLambdaCDM(H0=70, Om0=0.3).luminosity_distance(0.1).to("cm").value
    lum = res.luminosities["2.0-10.0"]["value"]
    expect = 4 * np.pi * dl**2 * band_flux(model, values, (2.0 / 1.1, 10.0 / 1.1), unabsorbed=True)
    assert lum == pytest.approx(expect, rel=1e-6)


def test_errors_and_engine_names() -> None:
    with pytest.raises(ConfigError, match="unknown fit engine"):
        get_engine("nope")
    with pytest.raises(ConfigError, match="statistic"):
        fit([_toy_dataset()], "powerlaw", stat="nope")
    with pytest.raises(ConfigError, match="no parameter"):
        fit([_toy_dataset()], "powerlaw", set_params=["kT=3"])


def test_cli_parser_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _toy_dataset(3)
    pha = tmp_path / "toy.pha"
    ogip.write_rmf(ds.rmf, tmp_path / "toy.rmf")
    ogip.write_arf(ds.arf, tmp_path / "toy.arf")
    ds.pha.respfile, ds.pha.ancrfile = "toy.rmf", "toy.arf"
    ogip.write_pha(ds.pha, pha)
    parser = argparse.ArgumentParser(prog="xmm-survey")
    sub = parser.add_subparsers(dest="command")
    fit_cmd.add_parser(sub)
    args = parser.parse_args(
        [
            "fit",
            str(pha),
            "--model",
            "wabs*powerlaw",
            "--set",
            "1=0.1,frozen",
            "--notice",
            "0.5-8.0",
            "--stat",
            "cstat",
            "--errors",
            "covariance",
            "--json",
            "--xcm",
            str(tmp_path / "x.xcm"),
        ]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "builtin" and out["dof"] > 100
    gamma = next(p for p in out["parameters"] if p["name"] == "powerlaw_1.PhoIndex")
    assert abs(gamma["value"] - 2.0) < 4 * gamma["sigma"]
    assert (tmp_path / "x.xcm").read_text().startswith("query yes")
    assert fit_cmd.parse_notice("**-7") == (0.0, 7.0)
    with pytest.raises(ConfigError):
        fit_cmd.parse_notice("8-2")
