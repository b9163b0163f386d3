"""The one per-ObsID product layout (xmmcore.products.ObsProducts) and declared step outputs.

The real pipeline runs once on a small simulated pn ObsID (module fixture); its step records must list
exactly the outputs each step declared, and together they must cover every product file written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from survey.steps import declared_outputs, read_record
from xmmcore.products import ObsProducts

STEPS = ("filter", "regions", "spectra", "fit")


def test_layout_names_every_product(tmp_path):
    p = ObsProducts(tmp_path / "0900100001")
    rel = {
        "clean": p.rel(p.clean_events("pn")),
        "gti": p.rel(p.gti("mos1")),
        "lc": p.rel(p.light_curve("mos2")),
        "lcplot": p.rel(p.lightcurve_plot("pn")),
        "regions": p.rel(p.regions_json),
        "src_reg": p.rel(p.src_region("pn")),
        "bkg_reg": p.rel(p.bkg_region("pn")),
        "ann": p.rel(p.annulus_region("pn", 2)),
        "ptsrc": p.rel(p.ptsrc_region),
        "img": p.rel(p.image("pn")),
        "exp": p.rel(p.flat_exposure("mos1", (2.0, 7.0))),
        "imgplot": p.rel(p.image_plot("pn")),
        "src": p.rel(p.src_spectrum("pn")),
        "bkg": p.rel(p.bkg_spectrum("pn")),
        "ann_pha": p.rel(p.spectrum(p.annulus_key("pn", 0))),
        "rmf": p.rel(p.rmf("pn")),
        "arf": p.rel(p.arf("pn")),
        "fit": p.rel(p.fit_json),
        "xcm": p.rel(p.fit_xcm),
        "txt": p.rel(p.fit_txt),
        "fitplot": p.rel(p.fit_plot),
        "log": p.rel(p.step_log("fit")),
        "record": p.rel(p.step_record("fit")),
        "sas": p.rel(p.sas_task_dir("filter_pn", "evselect-lc")),
    }
    assert rel == {
        "clean": "events/pn_clean.fits",
        "gti": "events/mos1_gti.fits",
        "lc": "events/mos2_lc.fits",
        "lcplot": "plots/pn_lightcurve.png",
        "regions": "regions/regions.json",
        "src_reg": "regions/pn_src.reg",
        "bkg_reg": "regions/pn_bkg.reg",
        "ann": "regions/pn_ann2_src.reg",
        "ptsrc": "regions/ptsrc.reg",
        "img": "regions/pn_img_0.5-2keV.fits",
        "exp": "regions/mos1_flatexp_2-7keV.fits",
        "imgplot": "plots/pn_image.png",
        "src": "spectra/pn_src.pha",
        "bkg": "spectra/pn_bkg.pha",
        "ann_pha": "spectra/pn_ann0_src.pha",
        "rmf": "spectra/pn.rmf",
        "arf": "spectra/pn.arf",
        "fit": "fits/fit.json",
        "xcm": "fits/fit.xcm",
        "txt": "fits/fit.txt",
        "fitplot": "plots/spectrum_fit.png",
        "log": "logs/fit.log",
        "record": "steps/fit.json",
        "sas": "sas/filter_pn/evselect-lc",
    }
    assert p.rel("/elsewhere/x.fits") == "/elsewhere/x.fits"
    with pytest.raises(AttributeError):
        p.outdir = tmp_path  # type: ignore[misc]  # frozen


def test_declared_outputs_exactly_what_the_step_says(tmp_path):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "pn_clean.fits").write_bytes(b"x" * 7)
    (tmp_path / "events" / "undeclared.fits").write_bytes(b"y")  # written but not declared: not listed
    out = declared_outputs(
        tmp_path, {"outputs": [str(tmp_path / "events" / "pn_clean.fits"), "events/pn_gti.fits"]}
    )
    assert out == [{"path": "events/pn_clean.fits", "size": 7}, {"path": "events/pn_gti.fits", "size": None}]
    assert declared_outputs(tmp_path, {"n": 1}) == []


@pytest.fixture(scope="module")
def one_obsid_run(tmp_path_factory):
    simulate = pytest.importorskip("xmmcore.simulate")
    from survey.api import run_one
    from survey.config import load_config

    root = tmp_path_factory.mktemp("products")
    data, res = root / "data", root / "results"
    (obsid,) = simulate.simulate_survey(
        data, n_obsids=1, seed=11, cameras=("pn",), exposure_ks=8.0, cluster_counts=(2500.0, 2500.0)
    )
    cfg = load_config(
        None, {"data_dir": str(data), "results_dir": str(res), "cameras": ["pn"], "fit.errors": "none"}
    )
    outcomes = run_one(cfg, obsid)
    assert {s: o["status"] for s, o in outcomes.items()} == dict.fromkeys(STEPS, "done")
    return res / obsid


@pytest.mark.slow
def test_step_records_list_exactly_the_declared_outputs(one_obsid_run):
    outdir = one_obsid_run
    products = ObsProducts(outdir)
    recorded: set[str] = set()
    for step in STEPS:
        rec = read_record(outdir, step)
        declared = [products.rel(p) for p in rec["summary"]["outputs"]]
        paths = [o["path"] for o in rec["outputs"]]
        assert paths == declared, step
        assert all(o["size"] and o["size"] > 0 for o in rec["outputs"]), step
        recorded.update(paths)
    written = {
        products.rel(f)
        for f in outdir.rglob("*")
        if f.is_file() and f.relative_to(outdir).parts[0] not in ObsProducts.BOOKKEEPING
    }
    assert written == recorded  # every product is declared by the step that wrote it, none twice
    assert {
        "events/pn_clean.fits",
        "events/pn_gti.fits",
        "events/pn_lc.fits",
        "regions/regions.json",
        "regions/pn_src.reg",
        "spectra/pn_src.pha",
        "spectra/pn.rmf",
        "fits/fit.json",
    } <= recorded
    assert json.loads(products.fit_json.read_text())["parameters"]
    assert Path(read_record(outdir, "fit")["summary"]["fit_json"]) == products.fit_json
