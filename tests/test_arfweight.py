"""The extended-source ARF: the on-axis area weighted per energy by the vignetting of the region's source photons."""

from __future__ import annotations

import numpy as np
import pytest

from xmmcore.arfweight import arf_is_weighted, region_source_vignetting, weighted_arf
from xmmcore.images import CcdFootprints
from xmmcore.regions import Selection, _phys_circle
from xmmcore.responses import make_arf, vignetting

_AXIS = (25921.0, 25921.0)
_ARCMIN = 60.0 / 0.05  # physical pixels per arcmin


def _field(rng: np.random.Generator, n_src: int, n_bkg: int):
    """A cluster 6' off axis (Gaussian, sigma 2') seen through the 1 keV vignetting, plus a flat background."""
    cx, cy = _AXIS[0] + 6.0 * _ARCMIN, _AXIS[1]
    sx = cx + rng.normal(0.0, 2.0 * _ARCMIN, 4 * n_src)
    sy = cy + rng.normal(0.0, 2.0 * _ARCMIN, 4 * n_src)
    inside = np.hypot(sx - cx, sy - cy) < 5.0 * _ARCMIN
    sx, sy = sx[inside][:n_src], sy[inside][:n_src]
    theta_true = np.hypot(sx - _AXIS[0], sy - _AXIS[1]) / _ARCMIN
    seen = rng.random(sx.size) < vignetting(theta_true, 1.0)
    r = 5.0 * _ARCMIN * np.sqrt(rng.random(n_bkg))
    phi = rng.random(n_bkg) * 2 * np.pi
    bx, by = cx + r * np.cos(phi), cy + r * np.sin(phi)
    x = np.concatenate([sx[seen], bx])
    y = np.concatenate([sy[seen], by])
    pi = np.full(x.size, 1000.0)
    sel = Selection(include=[_phys_circle(cx, cy, 5.0 * _ARCMIN)])
    big = 30.0 * _ARCMIN
    fp = CcdFootprints(
        hulls={1: np.array([[-big, -big], [big, -big], [big, big], [-big, big]]) + np.array(_AXIS)}
    )
    return x, y, pi, sel, fp, theta_true


def test_counts_weighted_vignetting_recovers_the_source_photons_mean() -> None:
    rng = np.random.default_rng(11)
    x, y, pi, sel, fp, theta_true = _field(rng, 20000, 6000)
    e = np.array([1.0, 6.0])
    truth = np.array([vignetting(theta_true, ek).mean() for ek in e])
    wgt = region_source_vignetting(x, y, pi, sel, fp, _AXIS, e, n_background=6000.0)
    assert wgt.method == "counts_weighted"
    assert wgt.vignetting == pytest.approx(truth, rel=0.006)
    assert wgt.vignetting[1] < wgt.vignetting[0]  # steeper at high energy
    # without taking the background off, the flat background's outer weight pulls it low
    naive = region_source_vignetting(x, y, pi, sel, fp, _AXIS, e, n_background=0.0)
    assert naive.vignetting[1] < truth[1] - 0.005
    # nothing above the background: the area mean, said so
    flat = region_source_vignetting(x, y, pi, sel, fp, _AXIS, e, n_background=float(x.size))
    assert flat.method.startswith("area_mean")


def test_weighted_arf_is_written_and_recognised(tmp_path) -> None:
    from xmmcore.ogip import read_arf, write_arf

    rng = np.random.default_rng(12)
    x, y, pi, sel, fp, _ = _field(rng, 5000, 1000)
    e = np.linspace(0.1, 15.0, 60)
    wgt = region_source_vignetting(x, y, pi, sel, fp, _AXIS, e, n_background=1000.0)
    on_axis = make_arf("pn")
    path = write_arf(weighted_arf(on_axis, wgt), tmp_path / "pn.arf")
    back = read_arf(path)
    mid = 0.5 * (on_axis.energ_lo + on_axis.energ_hi)
    expect = on_axis.specresp * np.interp(mid, e, wgt.vignetting)
    assert back.specresp == pytest.approx(expect, rel=1e-6)
    assert arf_is_weighted(path) and not arf_is_weighted(write_arf(on_axis, tmp_path / "on.arf"))
    assert wgt.record()["arf_vignetting_6kev"] < wgt.record()["arf_vignetting_1kev"] < 1.0
