"""The ``plots`` key: all | summary | none decides which per-ObsID PNGs are drawn, never the science."""

from __future__ import annotations

import json

import pytest

from survey.api import run_one
from survey.config import ConfigError, load_config
from xmmcore.plots import wants_plot
from xmmcore.simulate import simulate_survey


def test_wants_plot_levels():
    cams = ["pn", "mos1", "mos2"]
    assert all(wants_plot({"plots": "all"}, c, cams) for c in cams)
    assert [wants_plot({"plots": "summary"}, c, cams) for c in cams] == [True, False, False]
    assert wants_plot({"plots": "summary"}) is True  # per-ObsID figures (the spectrum fit)
    assert not any(wants_plot({"plots": "none"}, c, cams) for c in [*cams, None])
    with pytest.raises(ValueError, match="plots must be one of"):
        wants_plot({"plots": "some"}, "pn", cams)


def test_plots_key_is_checked_at_load():
    with pytest.raises(ConfigError, match="plots"):
        load_config(None, {"plots": "everything"})


def test_plot_levels_draw_what_they_say_and_fits_agree(tmp_path):
    data = tmp_path / "data"
    (obsid,) = simulate_survey(
        data, n_obsids=1, seed=11, exposure_ks=(10.0, 10.0), cluster_counts=(3000, 3000)
    )
    expected = {
        "none": set(),
        "summary": {"pn_lightcurve.png", "pn_image.png", "spectrum_fit.png"},
    }
    kts = {}
    for level, pngs in expected.items():
        results = tmp_path / f"results-{level}"
        cfg = load_config(
            None,
            {"data_dir": str(data), "results_dir": str(results), "plots": level, "fit.errors": "covariance"},
        )
        outcome = run_one(cfg, obsid)
        assert all(o["status"] == "done" for o in outcome.values()), outcome
        assert {p.name for p in (results / obsid / "plots").glob("*.png")} == pngs
        for rec in (results / obsid / "steps").glob("*.json"):  # every declared output exists
            for out in json.loads(rec.read_text()).get("outputs") or []:
                assert (results / obsid / out["path"]).stat().st_size == out["size"]
        fit = json.loads((results / obsid / "fits" / "fit.json").read_text())
        kts[level] = next(p["value"] for p in fit["parameters"] if p["name"].endswith(".kT"))
        # A rerun reuses every step: no declared plot is missing.
        again = run_one(cfg, obsid)
        assert all(o["status"] == "cached" for o in again.values()), again
    # The level changes what is drawn, never a science product ("all", the default, is drawn by test_interop
    # and test_a907; test_end_to_end draws "summary").
    assert kts["none"] == pytest.approx(kts["summary"], rel=1e-12)
