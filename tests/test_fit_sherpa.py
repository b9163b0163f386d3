"""Regression against Sherpa's XMM pn fit (sherpa-test-data ``pn_pi_src_bin10.ds``).

Sherpa: notice(2, 10) on the file's grouping (161 groups), wabs(0.0119 frozen) * wabs * powerlaw,
chi2gehrels, no background -> statistic 117.60 / 158 dof, nH 11.12e22 (0.96), Gamma 1.498 (0.143),
norm 1.422e-3 (3.9e-4).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from xmmcore.fitting import SpectrumDataset, fit
from xmmcore.fitting.datasets import BackgroundMissingWarning

EXPECTED = {"wabs_2.nH": (11.12, 0.96), "powerlaw_1.PhoIndex": (1.498, 0.143), "powerlaw_1.norm": (1.422e-3, 3.9e-4)}


def _dataset(xmm_data: Path) -> SpectrumDataset:
    d = xmm_data / "sherpa_pn"
    with pytest.warns(BackgroundMissingWarning, match="BACKFILE"):
        ds = SpectrumDataset.from_pha(d / "pn_pi_src_bin10.ds", rmf=d / "epn_ff20_dY9.rmf")
    return ds.notice(2.0, 10.0)


@pytest.mark.realdata
@pytest.mark.parametrize("errors", ["covariance", "profile"])
def test_sherpa_pn_regression(xmm_data: Path, errors: str) -> None:
    ds = _dataset(xmm_data)
    assert ds.n_noticed == 161
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings from the fit itself
        result = fit([ds], "wabs*wabs*powerlaw", stat="chi2gehrels", set_params=["1=0.0119,frozen"],
                     errors=errors, flux_bands=((2.0, 10.0),))
    assert result.converged
    assert result.dof == 158
    assert result.statistic == pytest.approx(117.60, rel=0.005)
    for name, (value, sigma) in EXPECTED.items():
        par = result.parameter(name)
        assert abs(par["value"] - value) < 0.2 * sigma, (name, par["value"])
        assert par["sigma"] == pytest.approx(sigma, rel=0.05), (name, par["sigma"])
        if errors == "profile":
            assert 0.5 * sigma < par["err_lo"] < 2 * sigma and 0.5 * sigma < par["err_hi"] < 2 * sigma
    frozen = result.parameter("wabs_1.nH")
    assert frozen["frozen"] and frozen["value"] == 0.0119
    flux = result.fluxes["2.0-10.0"]
    assert flux["unabsorbed"] > flux["absorbed"] > 0


@pytest.mark.realdata
def test_group_energy_convention(xmm_data: Path) -> None:
    ds = _dataset(xmm_data)
    # a group runs from E_MIN of its first channel to E_MAX of its last
    g = int(ds.mask.nonzero()[0][0])
    assert ds.group_lo_kev[g] == ds.rmf.e_min[ds.group_first[g]]
    assert ds.group_hi_kev[g] == ds.rmf.e_max[ds.group_last[g]]
    assert ds.group_lo_kev[g] < 2.0 < ds.group_hi_kev[g]


@pytest.mark.sherpa
@pytest.mark.realdata
def test_against_sherpa(xmm_data: Path) -> None:
    from sherpa.astro import ui

    d = xmm_data / "sherpa_pn"
    ui.clean()
    ui.load_pha(str(d / "pn_pi_src_bin10.ds"))
    ui.load_rmf(str(d / "epn_ff20_dY9.rmf"))
    ui.notice(2, 10)
    ui.set_stat("chi2gehrels")
    ui.set_source(ui.xswabs.gal * ui.xswabs.abs1 * ui.xspowerlaw.p1)
    ui.gal.nH = 0.0119
    ui.freeze(ui.gal.nH)
    ui.fit()
    ours = fit([_dataset(xmm_data)], "wabs*wabs*powerlaw", stat="chi2gehrels", set_params=["1=0.0119,frozen"],
               errors="covariance", flux_bands=())
    assert ours.statistic == pytest.approx(ui.get_fit_results().statval, rel=0.005)
    assert ours.parameter("PhoIndex")["value"] == pytest.approx(ui.p1.PhoIndex.val, abs=0.03)
