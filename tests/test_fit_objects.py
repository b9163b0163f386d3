"""The fit as objects: Fit phases, statistic objects, engines behind one Protocol, the model evaluation cache."""

from __future__ import annotations

import numpy as np
import pytest

from xmmcore.errors import ConfigError, ToolNotFoundError
from xmmcore.fitting import SpectrumDataset, fit, models, stats
from xmmcore.fitting.engines import FitEngine, engine_from_config
from xmmcore.fitting.engines.builtin import BuiltinEngine
from xmmcore.fitting.optimize import Fit
from xmmcore.fitting.parameters import Parameter
from xmmcore.fitting.registry import FunctionComponent

LO = np.geomspace(0.2, 12.0, 801)[:-1]
HI = np.geomspace(0.2, 12.0, 801)[1:]


@pytest.fixture(scope="module")
def pn(sherpa_pn: SpectrumDataset) -> SpectrumDataset:
    return sherpa_pn


@pytest.mark.realdata
def test_fit_phases_match_fit_function(pn: SpectrumDataset) -> None:
    opts = {"stat": "chi2gehrels", "set_params": ["1=0.0119,frozen"]}
    whole = fit([pn], "wabs*wabs*powerlaw", errors="profile", flux_bands=((2.0, 10.0),), **opts)
    f = Fit([pn], "wabs*wabs*powerlaw", **opts)
    with pytest.raises(RuntimeError, match="optimize"):
        f.covariance()
    best = f.optimize()
    assert best == pytest.approx(117.60, rel=0.005)
    cov = f.covariance()
    assert cov is not None and cov.shape == (3, 3)
    lo, hi = f.confidence(1.0)
    fluxes, _, _ = f.fluxes(((2.0, 10.0),), samples=200)
    res = f.result(fluxes=fluxes)
    assert res.error_method == "profile"
    for a, b in zip(whole.parameters, res.parameters):
        assert a["value"] == pytest.approx(b["value"], rel=1e-9)
        assert a["err_lo"] == pytest.approx(b["err_lo"], rel=1e-9)
        assert a["err_hi"] == pytest.approx(b["err_hi"], rel=1e-9)
    assert whole.fluxes == res.fluxes
    assert np.all(lo > 0) and np.all(hi > 0)


def test_statistic_objects_own_background_handling() -> None:
    class _Fake:
        name = "fake"
        has_background = True

    assert isinstance(stats.get_statistic("cstat").for_dataset(_Fake()), stats.WStat)  # type: ignore[arg-type]
    _Fake.has_background = False
    assert isinstance(stats.get_statistic("wstat").for_dataset(_Fake()), stats.CStat)  # type: ignore[arg-type]
    assert isinstance(stats.get_statistic("gehrels"), stats.Chi2Gehrels)
    assert stats.get_statistic("chi2").is_chi2 and not stats.get_statistic("cash").is_chi2
    assert set(stats.STATISTIC_CLASSES) == set(stats.STATISTICS)
    with pytest.raises(ConfigError, match="unknown fit statistic"):
        stats.get_statistic("lsq")


@pytest.mark.realdata
def test_statistic_object_values_equal_the_functions(pn: SpectrumDataset) -> None:
    flux = models.parse_expression("powerlaw").evaluate(pn.energ_lo, pn.energ_hi, [1.5, 1e-3])
    m = pn.predict(flux)
    assert stats.CStat().calc_stat(pn, m) == stats.cstat(pn.counts, m)
    var = stats.gehrels_sigma(pn.counts) ** 2
    assert stats.Chi2Gehrels().calc_stat(pn, m) == pytest.approx(stats.chi2(pn.counts, m, var), rel=1e-12)


def test_engines_share_one_protocol() -> None:
    engine = engine_from_config({"backend": {"fitting": "builtin"}})
    assert isinstance(engine, BuiltinEngine) and isinstance(engine, FitEngine)
    from xmmcore.fitting.engines.xspec import XspecEngine, xspec_available

    assert isinstance(XspecEngine(), FitEngine)
    if not xspec_available():
        with pytest.raises(ToolNotFoundError, match="PyXspec"):
            engine_from_config({"backend": {"fitting": "xspec"}, "xspec": {"timeout_s": 10}})
    with pytest.raises(ConfigError, match="unknown fit engine"):
        engine_from_config({"backend": {"fitting": "nosuch"}})


def test_unchanged_components_are_not_re_evaluated() -> None:
    calls: list[str] = []

    def absorber(lo: np.ndarray, hi: np.ndarray, nh: float) -> np.ndarray:
        calls.append("abs")
        return np.exp(-nh / lo)

    def line(lo: np.ndarray, hi: np.ndarray, kt: float) -> np.ndarray:
        calls.append("add")
        return np.exp(-lo / kt) * (hi - lo)

    models.register_component(
        "testabs", lambda: FunctionComponent("testabs", "mul", [Parameter("nH", 0.1)], absorber)
    )
    models.register_component(
        "testadd", lambda: FunctionComponent("testadd", "add", [Parameter("kT", 2.0)], line)
    )
    m = models.parse_expression("testabs*testadd")
    first = m.evaluate(LO, HI, [0.1, 2.0, 1.0])
    second = m.evaluate(LO, HI.copy() * 1.0, [0.1, 3.0, 2.0])  # same grid contents, new arrays
    assert calls == ["abs", "add", "add"]
    np.testing.assert_allclose(second, np.exp(-0.1 / LO) * 2.0 * np.exp(-LO / 3.0) * (HI - LO), rtol=1e-12)
    first[:] = 0.0  # the caller owns what it gets
    again = m.evaluate(LO, HI, [0.1, 2.0, 1.0])
    assert calls == ["abs", "add", "add", "add"] and again.max() > 0
    m.evaluate(LO[:-1], HI[:-1], [0.1, 2.0, 1.0])  # another grid: evaluated again
    assert calls.count("abs") == 2


def test_abundance_is_passed_in_not_global(pn: SpectrumDataset) -> None:
    from xmmcore.fitting import xsmodels

    if not xsmodels.available():
        pytest.skip("xspectrampoline (the [models] extra) is not installed")
    before = models.get_abundance()
    angr = models.parse_expression("tbabs*powerlaw", abund="angr").evaluate(LO, HI, [1.0, 2.0, 1.0])
    wilm = models.parse_expression("tbabs*powerlaw", abund="wilm").evaluate(LO, HI, [1.0, 2.0, 1.0])
    assert np.max(np.abs(wilm / angr - 1)) > 0.05  # wilm has ~30% less oxygen: less absorption
    res = fit([pn], "tbabs*powerlaw", stat="chi2gehrels", abund="wilm", errors=None, flux_bands=())
    assert res.abund == "wilm" and models.get_abundance() == before


def test_tbabs_exp_form_matches_the_library_to_1e6() -> None:
    from xmmcore.fitting import xsmodels

    if not xsmodels.available():
        pytest.skip("xspectrampoline (the [models] extra) is not installed")
    ours = models.get_component("tbabs")
    assert isinstance(ours, xsmodels.ExpAbsorberComponent)
    library = xsmodels.XspecComponent(xsmodels.model_info("tbabs"))
    for table in ("angr", "wilm"):
        for nh in (0.0, 0.01, 0.3, 3.0, 30.0):
            ref = library.evaluate(LO, HI, [nh], abund=table)
            got = ours.evaluate(LO, HI, [nh], abund=table)
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-300)


def test_bremss_on_distinct_edges_equals_bin_by_bin() -> None:
    brem = models.get_component("zbremss")
    joined = brem.evaluate(LO, HI, [4.0, 0.1, 1.0])
    gaps = brem.evaluate(LO[::2], HI[::2], [4.0, 0.1, 1.0])  # not contiguous: edges bin by bin
    np.testing.assert_allclose(joined[::2], gaps, rtol=1e-12)


def test_flux_table_one_grid_equals_band_by_band() -> None:
    from xmmcore.fitting.fluxes import band_flux, flux_table, luminosity_distance_cm

    model = models.parse_expression("wabs*(zbremss+zgauss)")
    best = np.array([0.05, 4.0, 0.1, 1e-3, 6.7, 0.0, 0.1, 1e-5])
    rng = np.random.default_rng(1)
    draws = best * (1 + 0.05 * rng.standard_normal((20, best.size)))
    bands = ((0.5, 2.0), (2.0, 10.0))
    fluxes, lums = flux_table(model, best, bands, samples=draws, redshift=0.1)
    for lo, hi in bands:
        entry = fluxes[f"{lo:.1f}-{hi:.1f}"]
        for which, unabs in (("absorbed", False), ("unabsorbed", True)):
            ref = band_flux(model, best, (lo, hi), unabsorbed=unabs)
            per_draw = [band_flux(model, d, (lo, hi), unabsorbed=unabs) for d in draws]
            p16, p84 = np.percentile(per_draw, [15.865, 84.135])
            assert entry[which] == pytest.approx(ref, rel=1e-12)
            assert entry[f"{which}_err_lo"] == pytest.approx(ref - p16, rel=1e-9)
            assert entry[f"{which}_err_hi"] == pytest.approx(p84 - ref, rel=1e-9)
        dl = luminosity_distance_cm(0.1)
        lum = 4 * np.pi * dl * dl * band_flux(model, best, (lo / 1.1, hi / 1.1), unabsorbed=True)
        assert lums[f"{lo:.1f}-{hi:.1f}"]["value"] == pytest.approx(lum, rel=1e-12)


@pytest.mark.realdata
def test_profile_bound_that_fails_falls_back_to_covariance(pn: SpectrumDataset, monkeypatch) -> None:
    """A MINOS bound that cannot be found (here: a call limit of 5) keeps the covariance error of that
    side, and the record says which parameter fell back and why (before: None + 'unconstrained')."""
    from xmmcore.aperture import quality_flags

    f = Fit([pn], "wabs*wabs*powerlaw", stat="chi2gehrels", set_params=["1=0.0119,frozen"])
    f.optimize()
    minos = type(f.minuit).minos
    monkeypatch.setattr(type(f.minuit), "minos", lambda self, *a, **k: minos(self, ncall=5))
    f.errors("profile")
    res = f.result()
    assert res.error_method == "profile+covariance"
    assert res.error_fallbacks and all("covariance error used" in v for v in res.error_fallbacks.values())
    assert any("call limit" in v for v in res.error_fallbacks.values())
    for p in res.parameters:
        if not p["frozen"]:
            assert np.isfinite(p["err_lo"]) and np.isfinite(p["err_hi"]) and p["err_hi"] > 0
    rec = res.to_dict()
    assert rec["error_fallbacks"] == res.error_fallbacks
    flags = quality_flags(rec, {}, net_counts=1e4, requested_errors="profile", r500_converged=None)
    assert flags["flag_errors_covariance"] and "errors_covariance" in flags["quality_flags"]
    assert next(iter(res.error_fallbacks)) in flags["errors_fallback_reason"]
