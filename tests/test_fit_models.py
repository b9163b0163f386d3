"""Model components: XSPEC naming, parser, plug-ins, and agreement with XSPEC's library (xspectrampoline)."""

from __future__ import annotations

import numpy as np
import pytest

from xmmcore.errors import ConfigError
from xmmcore.fitting import models
from xmmcore.fitting.models import FunctionComponent, Parameter, get_component, parse_expression


def test_expression_naming_and_set() -> None:
    m = parse_expression("constant*wabs*wabs(powerlaw + gaussian)")
    names = [p.full_name for p in m.parameters]
    assert names == [
        "constant_1.factor",
        "wabs_1.nH",
        "wabs_2.nH",
        "powerlaw_1.PhoIndex",
        "powerlaw_1.norm",
        "gaussian_1.LineE",
        "gaussian_1.Sigma",
        "gaussian_1.norm",
    ]
    m.set("2", 0.0119, frozen=True)
    m.set("wabs_2.nH", 3.0)
    m.set("PhoIndex", 1.8)
    assert m.parameters[1].param.frozen and m.parameters[2].value == 3.0 and m.parameters[3].value == 1.8
    with pytest.raises(ConfigError, match="ambiguous"):
        m.set("nH", 1.0)
    with pytest.raises(ConfigError, match="hard limits"):
        m.set("PhoIndex", 50.0)
    with pytest.raises(ConfigError, match="unknown model component"):
        parse_expression("wabs*nosuchmodel")
    with pytest.raises(ConfigError, match="additive"):
        parse_expression("wabs*constant")
    with pytest.raises(ConfigError):
        parse_expression("powerlaw*bremss")


def test_composite_evaluation_and_unabsorbed() -> None:
    edges = np.geomspace(0.3, 10.0, 200)
    lo, hi = edges[:-1], edges[1:]
    m = parse_expression("wabs*(powerlaw+zgauss)")
    m.set("nH", 0.5)
    v = m.values
    pl = get_component("powerlaw").evaluate(lo, hi, v[1:3])
    zg = get_component("zgauss").evaluate(lo, hi, v[3:7])
    ab = get_component("wabs").evaluate(lo, hi, v[:1])
    np.testing.assert_allclose(m.evaluate(lo, hi), ab * (pl + zg))
    np.testing.assert_allclose(m.evaluate(lo, hi, unabsorbed=True), pl + zg)
    # analytic powerlaw integral and unit-flux line
    assert v[1] == 1.0  # XSPEC default PhoIndex: the integral is ln(E2/E1)
    np.testing.assert_allclose(pl.sum(), np.log(10.0 / 0.3), rtol=1e-12)
    assert zg.sum() == pytest.approx(1.0, abs=1e-6)


def test_plugins_resolver_and_abundance_default() -> None:
    # the abundance table is passed to the models (CompositeModel(abund=)); no observer hook exists
    assert not hasattr(models, "on_abundance_change")
    models.set_abundance("wilm")
    assert models.get_abundance() == "wilm"
    models.set_abundance("angr")
    with pytest.raises(ConfigError):
        models.set_abundance("nosuch")

    def resolver(name: str):
        if name.startswith("flat{"):
            level = float(name[5:-1])
            return FunctionComponent("flat", "add", [], lambda lo, hi: level * (hi - lo))
        return None

    models.register_resolver(resolver)
    models.register_component(
        "edge_test",
        lambda: FunctionComponent(
            "edge_test",
            "mul",
            [Parameter("tau", 0.1, "", 0, 10, 0, 10)],
            lambda lo, hi, tau: np.exp(-tau * lo),
        ),
    )
    m = parse_expression("edge_test*flat{2.5}")
    assert [p.full_name for p in m.parameters] == ["edge_test_1.tau", "flat_1.norm"]
    out = m.evaluate(np.array([1.0]), np.array([2.0]))
    assert out[0] == pytest.approx(2.5 * np.exp(-0.1))


# ------------------------------------------------------------- against XSPEC's model library
def _xspec():
    xs = pytest.importorskip("xspectrampoline")
    lib = xs.get_libraries()

    def call(symbol: str, edges: np.ndarray, pars: list[float]) -> np.ndarray:
        fn = lib.get_model(symbol)
        out = np.zeros(edges.size - 1)
        err = np.zeros(edges.size - 1)
        fn(np.ascontiguousarray(edges, float), np.ascontiguousarray(pars, float), out, err)
        return out

    return call


@pytest.mark.parametrize(
    ("name", "symbol", "pars", "tol"),
    [
        ("wabs", "C_wabs", [0.05], 1e-4),
        ("wabs", "C_wabs", [3.0], 1e-4),
        ("wabs", "C_wabs", [25.0], 1e-4),
        ("powerlaw", "C_powerlaw", [1.7, 1.0], 1e-10),
        ("powerlaw", "C_powerlaw", [1.0, 2.0], 1e-10),
        ("bremss", "C_bremss", [5.0, 1.0], 1e-4),
        ("bremss", "C_bremss", [0.3, 1.0], 1e-4),
        ("bremss", "C_bremss", [40.0, 1.0], 1e-4),
        ("zbremss", "C_zbremss", [6.0, 0.2, 1.0], 1e-4),
        ("gaussian", "C_gaussian", [6.4, 0.1, 1.0], 1e-6),
        ("zgauss", "C_zgauss", [6.7, 0.05, 0.3, 1.0], 1e-6),
        ("bbody", "C_bbody", [1.0, 1.0], 1e-4),
        ("bbodyrad", "C_bbodyrad", [0.5, 1.0], 5e-4),
    ],
)
def test_numpy_models_match_xspec(name: str, symbol: str, pars: list[float], tol: float) -> None:
    call = _xspec()
    edges = np.geomspace(0.1, 12.0, 1501)
    comp = get_component(name)
    ref = call(symbol, edges, pars)
    if comp.kind == "add":
        ref = ref * pars[-1]  # XSPEC applies the norm outside the model function
    ours = comp.evaluate(edges[:-1], edges[1:], pars)
    significant = ref > 1e-6 * ref.max()
    assert significant.sum() > 10
    rel = np.abs(ours[significant] / ref[significant] - 1.0)
    assert rel.max() < tol, f"{name}{pars}: max relative difference {rel.max():.2e}"


def test_auto_settings_freeze_redshifts_and_absorber_nh_from_metadata():
    from xmmcore.pipeline import auto_settings

    got = auto_settings("wabs*(zbremss+zgauss)", {"z": 0.16, "nh": 0.05})
    assert got == ["wabs_1.nH=0.05,frozen", "zbremss_1.Redshift=0.16,frozen", "zgauss_1.Redshift=0.16,frozen"]
    # missing or non-finite metadata (a NaN catalogue cell) sets nothing
    assert auto_settings("wabs*(zbremss+zgauss)", {"z": float("nan")}) == []


def test_luminosities_of_new_redshifts_add_no_energies_to_the_tbabs_cache():
    """The library's tbabs (tbnew.c) keeps the cross sections of every energy it is called at, in a
    cache that never shrinks: flux_table's rest-frame bands (new energies for every redshift) must
    not reach it, or a worker grows ~0.6 MB per ObsID (issue 18: RSS 1.31 from ObsID 50 to 500)."""
    pytest.importorskip("xspectrampoline")
    import ctypes

    from xmmcore.fitting import xsmodels
    from xmmcore.fitting.fluxes import flux_table

    model = parse_expression("tbabs*zbremss")
    best = model.values.copy()
    cached = ctypes.c_int.in_dll(xsmodels.load_library().lib_xs_functions, "cachesize")
    fluxes, lums = flux_table(model, best, [[0.5, 2.0], [2.0, 10.0]], redshift=0.05)
    before = cached.value
    for z in (0.0713, 0.1234, 0.2871, 0.4409):
        fluxes_z, lums_z = flux_table(model, best, [[0.5, 2.0], [2.0, 10.0]], redshift=z)
        assert lums_z["0.5-2.0"]["value"] > 0 and lums_z["0.5-2.0"]["redshift"] == z
    assert cached.value == before  # no energy added by the four new redshifts
    # and the rest-frame luminosity is still the unabsorbed model in the rest-frame band
    z1 = 1.05
    from xmmcore.fitting.fluxes import band_flux, luminosity_distance_cm

    dl = luminosity_distance_cm(0.05)
    want = band_flux(model, best, (0.5 / z1, 2.0 / z1), unabsorbed=True) * 4 * np.pi * dl * dl
    assert lums["0.5-2.0"]["value"] == pytest.approx(want, rel=1e-12)
    assert fluxes["0.5-2.0"]["absorbed"] < fluxes["0.5-2.0"]["unabsorbed"]
    assert fluxes["0.5-2.0"]["absorbed"] == pytest.approx(band_flux(model, best, (0.5, 2.0)), rel=1e-12)
