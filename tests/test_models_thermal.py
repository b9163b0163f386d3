"""Thermal plasma without HEASoft: mekal (XSPEC library + packaged MEKAL data), apec (AtomDB table)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from xmmcore.errors import ExternalToolError
from xmmcore.fitting import atable, build_apec, models, xsmodels

APEC_REL = "models/apec/apec_atomdb_jaxspec003_atable.fits"
needs_xspec = pytest.mark.skipif(
    not xsmodels.available(), reason="xspectrampoline not installed (extra [models])"
)

E = np.geomspace(0.3, 12.0, 3001)
LO, HI = E[:-1], E[1:]
C = np.sqrt(LO * HI)


def _band(spec, lo, hi):
    return spec[(lo < C) & (hi > C)].sum()


@pytest.fixture()
def apec(shared_data, monkeypatch):
    monkeypatch.setenv(atable.APEC_TABLE_ENV, str(shared_data / APEC_REL))
    return models.get_component("apec")


@needs_xspec
def test_mekal_fe_xxv_line_at_kt5():
    mekal = models.get_component("mekal")
    spec = mekal.evaluate(LO, HI, [5.0, 1.0, 1.0, 0.0, 1.0])
    window = (C > 6.0) & (C < 7.5)
    peak = C[window][np.argmax(spec[window])]
    assert 6.62 < peak < 6.75  # Fe XXV He-alpha complex at 6.7 keV
    # strong line: the Fe K complex is >2x the continuum level on either side
    cont = 0.5 * (_band(spec, 5.6, 6.2) + _band(spec, 7.2, 7.8))
    assert _band(spec, 6.5, 6.8) / 0.3 > 2.0 * cont / 0.6
    # redshift moves the line to 6.7/(1+z)
    z = 0.2
    shifted = mekal.evaluate(LO, HI, [5.0, 1.0, 1.0, z, 1.0])
    window = (C > 5.0) & (C < 6.2)
    assert C[window][np.argmax(shifted[window])] == pytest.approx(6.7 / (1 + z), abs=0.06)


@needs_xspec
def test_mekal_zero_metals_is_bremsstrahlung_shaped():
    mekal = models.get_component("mekal")
    ratio = mekal.evaluate(LO, HI, [5.0, 1.0, 0.0, 0.0, 1.0]) / models.get_component("bremss").evaluate(
        LO, HI, [5.0, 1.0]
    )
    sel = (C > 0.5) & (C < 10.0)
    assert ratio[sel].std() / ratio[sel].mean() < 0.01


def test_apec_fe_l_bump_at_kt1(apec):
    solar = apec.evaluate(LO, HI, [1.0, 1.0, 0.0, 1.0])
    metal_free = apec.evaluate(LO, HI, [1.0, 0.0, 0.0, 1.0])
    # the Fe-L complex dominates 0.7-1.3 keV at 1 keV: several times the metal-free flux there
    assert _band(solar, 0.7, 1.3) / _band(metal_free, 0.7, 1.3) > 3.0
    assert 0.75 < C[np.argmax(np.where(C < 3.0, solar / (HI - LO), 0))] < 1.25
    # and Fe L outshines Fe K by far at this temperature
    assert _band(solar, 0.7, 1.3) > 100 * _band(solar, 6.5, 6.8)


def test_apec_fe_xxv_line_at_kt6(apec):
    spec = apec.evaluate(LO, HI, [6.0, 1.0, 0.0, 1.0])
    window = (C > 6.0) & (C < 7.5)
    assert 6.62 < C[window][np.argmax(spec[window])] < 6.75
    shifted = apec.evaluate(LO, HI, [6.0, 1.0, 0.1, 1.0])
    window = (C > 5.5) & (C < 6.5)
    assert C[window][np.argmax(shifted[window])] == pytest.approx(6.7 / 1.1, abs=0.05)
    # photons divided by (1+z) besides the shift
    full = np.geomspace(0.01, 25.0, 4001)  # holds the whole 0.05-20 keV rest-frame table
    n0 = apec.evaluate(full[:-1], full[1:], [6.0, 1.0, 0.0, 1.0]).sum()
    n1 = apec.evaluate(full[:-1], full[1:], [6.0, 1.0, 0.1, 1.0]).sum()
    assert n1 / n0 == pytest.approx(1 / 1.1, rel=2e-3)


@needs_xspec
@pytest.mark.parametrize("kt", [2.0, 3.0, 5.0, 8.0])
def test_apec_vs_mekal_band_fluxes(apec, kt):
    """APEC and MEKAL (same norm convention, angr) agree within 10% in the cluster bands (measured 0-5%)."""
    a = apec.evaluate(LO, HI, [kt, 1.0, 0.0, 1.0])
    m = models.get_component("mekal").evaluate(LO, HI, [kt, 1.0, 1.0, 0.0, 1.0])
    for lo, hi in ((0.5, 2.0), (2.0, 10.0), (0.5, 10.0)):
        assert _band(a, lo, hi) / _band(m, lo, hi) == pytest.approx(1.0, abs=0.10)


def _jaxspec_wheel(cache_dir: Path) -> Path:
    env = os.environ.get("XMM_SURVEY_JAXSPEC_WHEEL")
    if env:
        return Path(env)
    found = sorted(cache_dir.glob("jaxspec-0.0.3-*.whl"))
    if found and zipfile.is_zipfile(found[0]):
        return found[0]
    try:
        return build_apec.download_jaxspec_wheel(cache_dir)
    except ExternalToolError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"cannot download jaxspec==0.0.3 (no PyPI access?): {exc.reason}")


def test_build_apec_reproduces_shared_table(shared_data, tmp_path, request, tmp_path_factory):
    pytest.importorskip("h5py", reason="build-apec needs h5py (extra [apec])")
    cache = getattr(request.config, "cache", None)  # keeps the 100 MB wheel between runs
    wheel = _jaxspec_wheel(Path(cache.mkdir("jaxspec")) if cache else tmp_path_factory.mktemp("jaxspec"))
    out = build_apec.build_apec(out=tmp_path / "apec.fits", wheel=wheel)
    with fits.open(out) as built, fits.open(shared_data / APEC_REL) as ref:
        np.testing.assert_allclose(
            built["PARAMETERS"].data["VALUE"], ref["PARAMETERS"].data["VALUE"], rtol=1e-6
        )
        np.testing.assert_allclose(
            built["ENERGIES"].data["ENERG_LO"], ref["ENERGIES"].data["ENERG_LO"], rtol=1e-6
        )
        np.testing.assert_allclose(
            built["SPECTRA"].data["PARAMVAL"], ref["SPECTRA"].data["PARAMVAL"], rtol=1e-6
        )
        a = built["SPECTRA"].data["INTPSPEC"].astype(float)
        b = ref["SPECTRA"].data["INTPSPEC"].astype(float)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * b.max())
        assert built[0].header["ADDMODEL"] and built[0].header["REDSHIFT"]
    # the built file is a working apec table
    table = atable.read_table_model(out)
    assert [p.name for p in table.interp_params] == ["kT", "Abundanc"]
