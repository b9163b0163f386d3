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

EXPECTED = {
    "wabs_2.nH": (11.12, 0.96),
    "powerlaw_1.PhoIndex": (1.498, 0.143),
    "powerlaw_1.norm": (1.422e-3, 3.9e-4),
}


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
        result = fit(
            [ds],
            "wabs*wabs*powerlaw",
            stat="chi2gehrels",
            set_params=["1=0.0119,frozen"],
            errors=errors,
            flux_bands=((2.0, 10.0),),
        )
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


def _sherpa_session(d: Path):
    """Sherpa (``sherpa.astro.ui``) with the pn spectrum, 2-10 keV, chi2gehrels and wabs*wabs*powerlaw.

    Sherpa from PyPI has no XSPEC module (that needs HEASoft): unless ``sherpa.astro.xspec`` imports, ``wabs``
    is the built-in engine's own component (``get_component("wabs")``, the same function) wrapped as a Sherpa
    model, and the power law is Sherpa's ``powlaw1d`` (the same integral per bin as XSPEC's ``powerlaw``).
    Folding, grouping, filtering, statistic and optimiser are Sherpa's own.
    """
    import numpy as np
    from sherpa.astro import ui
    from sherpa.models.model import ArithmeticModel
    from sherpa.models.parameter import Parameter

    from xmmcore.fitting.models import get_component

    class Wabs(ArithmeticModel):
        def __init__(self, name: str) -> None:
            self.nH = Parameter(name, "nH", 1.0, 0.0, 1e5, 0.0, 1e6, units="10^22 atoms / cm^2")
            self._comp = get_component("wabs")
            ArithmeticModel.__init__(self, name, (self.nH,))

        def calc(self, p, lo, hi=None, *args, **kwargs):
            return self._comp.evaluate(np.asarray(lo, float), np.asarray(hi, float), [float(p[0])])

    ui.clean()
    ui.load_pha(str(d / "pn_pi_src_bin10.ds"))
    ui.load_rmf(str(d / "epn_ff20_dY9.rmf"))
    ui.notice(2, 10)
    ui.set_stat("chi2gehrels")
    try:
        import sherpa.astro.xspec  # noqa: F401

        gal, abs1, pl = ui.xswabs.gal, ui.xswabs.abs1, ui.xspowerlaw.p1
        index = "PhoIndex"
    except ImportError:
        gal, abs1, pl = Wabs("gal"), Wabs("abs1"), ui.powlaw1d.p1
        index = "gamma"
    ui.set_source(gal * abs1 * pl)
    gal.nH = 0.0119
    ui.freeze(gal.nH)
    return ui, abs1, pl, index


@pytest.mark.sherpa
@pytest.mark.realdata
def test_against_sherpa(xmm_data: Path) -> None:
    """Sherpa and the built-in engine fit the same file, band, model and statistic to the same answer."""
    pytest.importorskip("sherpa.astro.ui", reason="sherpa not installed (.ci/install-sherpa.sh)")
    import logging

    import numpy as np

    logger = logging.getLogger("sherpa")
    level = logger.level
    logger.setLevel(logging.ERROR)  # no fit summaries or missing-RESPFILE notes on stdout
    try:
        ui, abs1, pl, index = _sherpa_session(xmm_data / "sherpa_pn")
        assert ui.get_data().get_dep(filter=True).size == 161  # Sherpa's notice(2, 10) on the file's grouping
        ui.fit()
        theirs = ui.get_fit_results()
        sigma = dict(zip(("nH", "index", "norm"), np.sqrt(np.diag(theirs.covar))))
        values = {
            "nH": abs1.nH.val,
            "index": getattr(pl, index).val,
            "norm": pl.ampl.val if index == "gamma" else pl.norm.val,
        }
    finally:
        logger.setLevel(level)
        from sherpa.astro import ui as _ui

        _ui.clean()
    assert theirs.succeeded and theirs.dof == 158
    # Sherpa itself reproduces the published regression numbers
    assert theirs.statval == pytest.approx(117.60, rel=0.005)
    ours = fit(
        [_dataset(xmm_data)],
        "wabs*wabs*powerlaw",
        stat="chi2gehrels",
        set_params=["1=0.0119,frozen"],
        errors="covariance",
        flux_bands=(),
    )
    assert ours.dof == theirs.dof
    assert ours.statistic == pytest.approx(theirs.statval, rel=1e-4)
    for key, name in (("nH", "wabs_2.nH"), ("index", "powerlaw_1.PhoIndex"), ("norm", "powerlaw_1.norm")):
        par = ours.parameter(name)
        assert abs(par["value"] - values[key]) < 0.02 * sigma[key], (name, par["value"], values[key])
        assert par["sigma"] == pytest.approx(sigma[key], rel=0.02), (name, par["sigma"], sigma[key])
