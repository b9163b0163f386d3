"""OGIP 92-009 table models: reader, XSPEC interpolation, redshift, rebinning, resolver, apec lookup."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from xmmcore.errors import ConfigError, InputDataError
from xmmcore.fitting import atable, models

APEC_REL = "models/apec/apec_atomdb_jaxspec003_atable.fits"


def _write_table(path, *, additive=True, redshift=True, method=(1, 0)):
    """A 2-parameter table: spectrum per bin = (a * log(T) + b) * width, so log-T interpolation is exact."""
    t_grid = np.array([0.5, 1.0, 2.0, 4.0])
    b_grid = np.array([0.0, 1.0, 3.0])
    edges = np.linspace(1.0, 11.0, 101)
    width = np.diff(edges)
    prim = fits.PrimaryHDU()
    prim.header["MODLNAME"] = "toy"
    prim.header["ADDMODEL"] = additive
    prim.header["REDSHIFT"] = redshift
    values = np.zeros((2, 4), dtype=np.float32)
    values[0] = t_grid
    values[1, :3] = b_grid
    pars = fits.BinTableHDU.from_columns(
        [
            fits.Column("NAME", "12A", array=np.array(["T", "B"])),
            fits.Column("METHOD", "J", array=np.array(method)),
            fits.Column("INITIAL", "E", array=np.array([1.0, 1.0])),
            fits.Column("DELTA", "E", array=np.array([0.01, -0.01])),
            fits.Column("MINIMUM", "E", array=np.array([0.5, 0.0])),
            fits.Column("BOTTOM", "E", array=np.array([0.5, 0.0])),
            fits.Column("TOP", "E", array=np.array([4.0, 3.0])),
            fits.Column("MAXIMUM", "E", array=np.array([4.0, 3.0])),
            fits.Column("NUMBVALS", "J", array=np.array([4, 3])),
            fits.Column("VALUE", "4E", array=values),
        ],
        name="PARAMETERS",
    )
    pars.header["NINTPARM"] = 2
    pars.header["NADDPARM"] = 0
    ener = fits.BinTableHDU.from_columns(
        [fits.Column("ENERG_LO", "E", array=edges[:-1]), fits.Column("ENERG_HI", "E", array=edges[1:])],
        name="ENERGIES",
    )
    rows, specs = [], []
    # rows written with B varying slowest, to check the reader does not assume an order
    for b in b_grid:
        for t in t_grid:
            rows.append([t, b])
            level = np.log(t) + b if additive else np.full(width.size, 0.5 + 0.1 * b)
            specs.append(level * width if additive else level)
    spec = fits.BinTableHDU.from_columns(
        [
            fits.Column("PARAMVAL", "2E", array=np.array(rows, dtype=np.float32)),
            fits.Column("INTPSPEC", "100E", array=np.array(specs)),
        ],
        name="SPECTRA",
    )
    fits.HDUList([prim, pars, ener, spec]).writeto(path, overwrite=True)
    return path


def test_log_and_linear_interpolation(tmp_path):
    table = atable.read_table_model(_write_table(tmp_path / "t.fits"))
    assert table.n_params == 3 and table.additive and table.redshift
    lo, hi = table.energ_lo, table.energ_hi
    # log-T interpolation of a spectrum linear in log T is exact, also off-node; B is linear
    for t, b in ((1.0, 1.0), (1.4142, 0.5), (3.1, 2.2)):
        got = table.evaluate(lo, hi, [t, b, 0.0])
        np.testing.assert_allclose(got, (np.log(t) + b) * (hi - lo), rtol=1e-5)
    # out of the grid: clamped to the end nodes
    np.testing.assert_allclose(
        table.evaluate(lo, hi, [10.0, 5.0, 0.0]), (np.log(4.0) + 3.0) * (hi - lo), rtol=1e-5
    )


def test_linear_method_differs_from_log(tmp_path):
    table = atable.read_table_model(_write_table(tmp_path / "lin.fits", method=(0, 0)))
    got = table.evaluate(table.energ_lo, table.energ_hi, [1.5, 0.0, 0.0])[0] / 0.1
    # linear in T between 1 and 2: 0.5 * (log 1 + log 2)
    assert got == pytest.approx(0.5 * np.log(2.0), rel=1e-5)


def test_rebin_conserves_photons_and_redshift(tmp_path):
    comp = models.get_component(f"atable{{{_write_table(tmp_path / 'z.fits')}}}")
    assert [p.name for p in comp.params] == ["T", "B", "redshift", "norm"]
    assert comp.params[1].frozen and comp.params[2].frozen
    coarse = np.linspace(0.5, 12.0, 24)
    fine = np.linspace(0.5, 12.0, 2301)
    vals = [2.0, 1.0, 0.0, 3.0]
    total = 3.0 * (np.log(2.0) + 1.0) * 10.0
    assert comp.evaluate(coarse[:-1], coarse[1:], vals).sum() == pytest.approx(total, rel=1e-6)
    assert comp.evaluate(fine[:-1], fine[1:], vals).sum() == pytest.approx(total, rel=1e-6)
    # a bin half inside the table gets half the photons of a full bin (uniform density)
    half = comp.evaluate(np.array([0.9]), np.array([1.1]), vals)[0]
    full = comp.evaluate(np.array([1.1]), np.array([1.3]), vals)[0]
    assert half == pytest.approx(0.5 * full, rel=1e-5)
    # redshift: the 1-11 keV table appears at 1/(1+z)..11/(1+z), photons divided by (1+z)
    z = 0.25
    shifted = comp.evaluate(fine[:-1], fine[1:], [2.0, 1.0, z, 3.0])
    assert shifted.sum() == pytest.approx(total / (1 + z), rel=1e-6)
    centre = 0.5 * (fine[1:] + fine[:-1])
    assert shifted[centre < 1.0 / (1 + z) - 0.01].sum() == 0.0
    assert shifted[(centre > 1.0 / (1 + z) + 0.01) & (centre < 0.99)].min() > 0


def test_multiplicative_table(tmp_path):
    path = _write_table(tmp_path / "m.fits", additive=False, redshift=False)
    comp = models.get_component(f"mtable{{{path}}}")
    assert comp.kind == "mul" and [p.name for p in comp.params] == ["T", "B"]
    e = np.array([0.5, 1.0, 5.0, 11.0, 12.0])
    got = comp.evaluate(e[:-1], e[1:], [1.0, 2.0])
    # inside the table 0.5 + 0.1 B; outside 1 (no HIELEMNT/LOELEMNT)
    np.testing.assert_allclose(got, [1.0, 0.7, 0.7, 1.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="mtable"):
        models.get_component(f"atable{{{path}}}")


def test_expression_with_table(tmp_path):
    path = _write_table(tmp_path / "e.fits")
    m = models.parse_expression(f"wabs*atable{{{path}}}")
    assert [p.full_name for p in m.parameters] == [
        "wabs_1.nH",
        "atable_1.T",
        "atable_1.B",
        "atable_1.redshift",
        "atable_1.norm",
    ]


def test_bad_tables_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        atable.read_table_model(tmp_path / "missing.fits")
    bad = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(bad)
    with pytest.raises(InputDataError, match=r"bad\.fits.*PARAMETERS"):
        atable.read_table_model(bad)
    path = _write_table(tmp_path / "off.fits")
    with fits.open(path, mode="update") as h:
        h["SPECTRA"].data["PARAMVAL"][0, 0] = 0.7
    with pytest.raises(InputDataError, match="PARAMVAL"):
        atable.read_table_model(path)


def test_apec_without_table_says_build(monkeypatch, tmp_path):
    monkeypatch.delenv(atable.APEC_TABLE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # A fresh machine (empty cache) uses the table shipped as package data: no download at run time.
    assert atable.find_apec_table() == atable.packaged_apec_path()
    assert [p.name for p in models.get_component("apec").params] == ["kT", "Abundanc", "Redshift", "norm"]
    monkeypatch.setattr(atable, "packaged_apec_path", lambda: tmp_path / "not-installed.fits")
    with pytest.raises(ConfigError, match="xmm-survey models build-apec"):
        models.get_component("apec")
    monkeypatch.setenv(atable.APEC_TABLE_ENV, str(tmp_path / "nope.fits"))
    with pytest.raises(ConfigError, match="does not exist"):
        models.get_component("apec")


def test_apec_shared_table_norm_and_nodes(shared_data, monkeypatch):
    path = shared_data / APEC_REL
    monkeypatch.setenv(atable.APEC_TABLE_ENV, str(path))
    apec = models.get_component("apec")
    assert [p.name for p in apec.params] == ["kT", "Abundanc", "Redshift", "norm"]
    assert apec.params[1].frozen and apec.params[2].frozen and not apec.params[0].frozen
    table = apec.table
    with fits.open(path) as h:
        rows = h["SPECTRA"].data
        node = int(
            np.nonzero((np.abs(rows["PARAMVAL"][:, 0] - 6.100641) < 1e-4) & (rows["PARAMVAL"][:, 1] == 1))[0][
                0
            ]
        )
        kt_node = float(rows["PARAMVAL"][node, 0])
        ref = rows["INTPSPEC"][node].astype(float)
    # at a node, on the table's own bins, the table row comes back (norm = 1: photons cm^-2 s^-1 per bin)
    got = apec.evaluate(table.energ_lo, table.energ_hi, [kt_node, 1.0, 0.0, 2.0])
    np.testing.assert_allclose(got, 2.0 * ref, rtol=1e-6)
    # the 0.5-10 keV photon flux of norm = 1, kT = 6.1 keV, solar: integral of n_e n_H Lambda
    e = np.geomspace(0.5, 10.0, 2001)
    assert apec.evaluate(e[:-1], e[1:], [kt_node, 1.0, 0.0, 1.0]).sum() == pytest.approx(
        ref[(table.energ_lo >= 0.5 - 1e-6) & (table.energ_hi <= 10.0 + 1e-6)].sum(), rel=2e-3
    )
    # hardness rises with kT across the log-interpolated grid
    hard = []
    for kt in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        s = apec.evaluate(e[:-1], e[1:], [kt, 0.3, 0.0, 1.0])
        c = np.sqrt(e[1:] * e[:-1])
        hard.append(s[c > 2].sum() / s[c < 2].sum())
    assert np.all(np.diff(hard) > 0)


def test_apec_is_smooth_in_kt_at_the_grid_nodes():
    """apec's kT weights are C1 (Catmull-Rom): no kink at a node, so fits neither stick to nodes nor get a
    near-zero Hessian there (found: a 3800-count pn spectrum fitted kT = 4.3189 keV, a node, +-0.002 keV)."""
    from xmmcore.fitting.atable import apec_component, find_apec_table

    if find_apec_table() is None:
        pytest.skip("no APEC table")
    comp = apec_component()
    grid = comp.table.interp_params[0].values
    node = float(grid[np.searchsorted(grid, 4.0)])
    lo, hi = np.linspace(0.5, 7.0, 301)[:-1], np.linspace(0.5, 7.0, 301)[1:]

    def spec(kt):
        return comp.evaluate(lo, hi, [kt, 0.3, 0.1, 1.0])

    h = 1e-5 * node
    left = (spec(node) - spec(node - h)) / h
    right = (spec(node + h) - spec(node)) / h
    scale = np.abs(right).max()
    assert np.abs(right - left).max() < 1e-2 * scale  # linear weights: ~1.08 x the slope, whatever h
    # Through every node: at a node the spectrum is the tabulated one.
    linear = type(comp.table).interpolate
    import copy

    plain = copy.copy(comp.table)
    plain.cubic_axes = frozenset()
    np.testing.assert_allclose(comp.table.interpolate([node, 0.3]), linear(plain, [node, 0.3]), rtol=1e-12)


def test_interpolation_is_reused_across_grids_not_across_weights(tmp_path):
    """The last values' interpolation serves every grid (pn, MOS, flux bands); a copy with other
    (cubic) weights does not take it from the table it was copied from."""
    import copy

    table = atable.read_table_model(_write_table(tmp_path / "c.fits"))
    fresh = atable.TableModel(tmp_path / "c.fits")
    lo, hi = table.energ_lo, table.energ_hi
    a = table.evaluate(lo, hi, [1.7, 0.4, 0.0])
    assert table.interpolate([1.7, 0.4]) is table.interpolate([1.7, 0.4])  # the same array, not recomputed
    with pytest.raises(ValueError):
        table.interpolate([1.7, 0.4])[0] = 0.0  # read-only: a caller cannot spoil the cache
    b = table.evaluate(lo[::2], hi[::2], [1.7, 0.4, 0.0])
    np.testing.assert_array_equal(a, fresh.evaluate(lo, hi, [1.7, 0.4, 0.0]))
    np.testing.assert_array_equal(b, fresh.evaluate(lo[::2], hi[::2], [1.7, 0.4, 0.0]))
    cubic = copy.copy(table)
    cubic.cubic_axes = frozenset({0})
    fresh.cubic_axes = frozenset({0})
    np.testing.assert_array_equal(cubic.interpolate([1.7, 0.4]), fresh.interpolate([1.7, 0.4]))
    assert not np.array_equal(cubic.interpolate([1.7, 0.4]), table.interpolate([1.7, 0.4]))
