"""XSPEC model library through xspectrampoline: numpy models agree with it, XSPEC-only models behave."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xmmcore.errors import ConfigError
from xmmcore.fitting import models, xsmodels

pytestmark = pytest.mark.skipif(
    not xsmodels.available(), reason="xspectrampoline not installed (extra [models])"
)

E = np.geomspace(0.2, 12.0, 1501)
LO, HI = E[:-1], E[1:]


@pytest.fixture(autouse=True)
def _angr():
    models.set_abundance("angr")
    yield
    models.set_abundance("angr")


@pytest.mark.parametrize(
    "name, values, rtol",
    [
        ("wabs", [0.3], 5e-5),  # XSPEC's wabs is float32 Fortran
        ("powerlaw", [1.7, 1.0], 1e-9),
        ("bremss", [5.0, 1.0], 3e-4),
        ("zbremss", [5.0, 0.1, 1.0], 3e-4),
        ("gaussian", [6.5, 0.1, 1.0], 1e-9),
        ("zgauss", [6.5, 0.1, 0.05, 1.0], 1e-9),
        ("bbody", [1.0, 1.0], 3e-4),
        ("bbodyrad", [1.0, 1.0], 3e-4),
    ],
)
def test_numpy_models_match_xspec(name, values, rtol):
    mine = models.get_component(name)
    assert not isinstance(mine, xsmodels.XspecComponent), "numpy implementation expected in models"
    ref = xsmodels.xspec_component(name)
    assert [p.name for p in mine.params] == [p.name for p in ref.params]
    a = mine.evaluate(LO, HI, values)
    b = ref.evaluate(LO, HI, values)
    keep = np.abs(b) > 1e-6 * np.abs(b).max()
    np.testing.assert_allclose(a[keep], b[keep], rtol=rtol)


def test_registered_names_and_xspec_defaults():
    tb = models.get_component("tbabs")
    assert isinstance(tb, xsmodels.XspecComponent) and tb.kind == "mul" and tb.absorption
    assert [(p.name, p.unit, p.value, p.hard_max) for p in tb.params] == [("nH", "10^22", 1.0, 1e6)]
    me = models.get_component("mekal")
    assert [p.name for p in me.params] == [
        "kT",
        "nH",
        "Abundanc",
        "Redshift",
        "norm",
    ]  # switch is not a parameter
    assert me.params[1].frozen and me.params[2].frozen and not me.params[0].frozen
    m = models.parse_expression("constant*tbabs*(zpowerlw+bknpower)")
    assert m.parameters[1].full_name == "tbabs_1.nH"
    assert [p.name for p in models.get_component("cutoffpl").params] == ["PhoIndex", "HighECut", "norm"]


def test_absorbers_and_redshifted_versions():
    tb = models.get_component("tbabs")
    assert np.allclose(tb.evaluate(LO, HI, [0.0]), 1.0)
    t1 = tb.evaluate(LO, HI, [1.0])
    c = np.sqrt(LO * HI)
    # 1e22 cm^-2: opaque at 0.3 keV, nearly transparent at 10 keV, monotonic between the O and Fe edges
    assert t1[c < 0.3].max() < 0.01 and t1[c > 10].min() > 0.95
    zt0 = models.get_component("ztbabs").evaluate(LO, HI, [1.0, 0.0])
    np.testing.assert_allclose(zt0, t1, rtol=0, atol=3e-3)  # XSPEC: ztbabs and tbabs bin differently
    np.testing.assert_allclose(
        models.get_component("zphabs").evaluate(LO, HI, [1.0, 0.0]),
        models.get_component("phabs").evaluate(LO, HI, [1.0]),
        rtol=1e-6,
    )
    # absorption at z applies the rest-frame cross section at E (1 + z)
    z1 = models.get_component("ztbabs").evaluate(LO / 2.0, HI / 2.0, [1.0, 1.0])
    np.testing.assert_allclose(z1, zt0, rtol=0, atol=5e-3)


def test_powerlaw_family_limits():
    pl = models.get_component("powerlaw").evaluate(LO, HI, [1.8, 2.0])
    np.testing.assert_allclose(
        models.get_component("zpowerlw").evaluate(LO, HI, [1.8, 0.0, 2.0]), pl, rtol=1e-9
    )
    np.testing.assert_allclose(
        models.get_component("bknpower").evaluate(LO, HI, [1.8, 5.0, 1.8, 2.0]), pl, rtol=1e-9
    )
    cut = models.get_component("cutoffpl").evaluate(LO, HI, [1.8, 1e5, 2.0])
    np.testing.assert_allclose(cut, pl, rtol=2e-4)


def test_abundance_table_is_applied():
    tb = models.get_component("tbabs")
    angr = tb.evaluate(LO, HI, [1.0])
    models.set_abundance("wilm")
    wilm = tb.evaluate(LO, HI, [1.0])
    c = np.sqrt(LO * HI)
    # wilm has ~30% less O and Fe than angr: more transmission at 0.6-2 keV
    band = (c > 0.6) & (c < 2.0)
    assert np.all(wilm[band] > angr[band])
    assert wilm[band].mean() / angr[band].mean() > 1.05


def test_non_contiguous_grid():
    comp = models.get_component("phabs")
    full = comp.evaluate(LO, HI, [0.5])
    pick = np.arange(0, LO.size, 3)
    np.testing.assert_allclose(comp.evaluate(LO[pick], HI[pick], [0.5]), full[pick], rtol=1e-6)


def test_headas_restored_and_private(tmp_path):
    before = os.environ.get("HEADAS")
    xsmodels.load_library()
    assert os.environ.get("HEADAS") == before
    root = xsmodels.private_headas()
    for name in xsmodels.MEKAL_FILES:
        assert (root / "spectral" / "modelData" / name).resolve().is_file()
    assert (root / "lib").is_dir() and (root / "spectral" / "manager" / "model.dat").is_file()


def test_missing_library_is_a_config_error(monkeypatch):
    monkeypatch.setattr(xsmodels, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'xmm-survey\[models\]'"):
        xsmodels.xspec_component("tbabs")
    with pytest.raises(ConfigError, match=r"xmm-survey\[models\]"):
        models.get_component("mekal")


def test_cross_section_of_band_pieces_is_cached_piece_by_piece():
    """Flux bands side by side: each contiguous piece is read once and reused; values as read whole."""
    tb = models.get_component("tbabs")
    obs = np.geomspace(0.5, 2.0, 201)
    rest = np.geomspace(0.1 / 1.2, 2.4 / 1.2, 201)
    lo, hi = np.r_[obs[:-1], rest[:-1]], np.r_[obs[1:], rest[1:]]
    whole = tb._read_cross_section(lo, hi, "angr")  # one library call per nH on the interleaved grid
    xsmodels._SIGMA_CACHE.clear()
    np.testing.assert_array_equal(tb.cross_section(lo, hi, "angr"), whole)
    calls = []
    read = tb._read_cross_section
    tb._read_cross_section = lambda lo_, hi_, t: calls.append(lo_.size) or read(lo_, hi_, t)
    try:
        rest2 = np.geomspace(0.1 / 1.3, 2.4 / 1.3, 201)  # another redshift: only its rest-frame piece is new
        got = tb.cross_section(np.r_[obs[:-1], rest2[:-1]], np.r_[obs[1:], rest2[1:]], "angr")
    finally:
        del tb._read_cross_section
    assert calls == [200]
    np.testing.assert_array_equal(got[:200], whole[:200])
