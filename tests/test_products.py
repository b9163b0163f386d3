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


def test_survey_layout_names_every_results_level_path(tmp_path):
    from catalog import io as catalog_io
    from survey.cluster import PROFILE_PATH
    from survey.config import RESOLVED_NAME
    from survey.lock import LOCK_NAME
    from xmmcore.errors import InputDataError
    from xmmcore.observation import RESERVED_NAMES
    from xmmcore.products import SurveyLayout

    s = SurveyLayout(tmp_path)
    rel = {
        k: s.rel(getattr(s, k))
        for k in ("catalogue_parquet", "catalogue_fits", "resolved_config", "skipped", "lock", "plots_dir")
    }
    assert rel == {
        "catalogue_parquet": "catalogue.parquet",
        "catalogue_fits": "catalogue.fits",
        "resolved_config": "config.resolved.yaml",
        "skipped": "skipped.json",
        "lock": ".lock",
        "plots_dir": "plots",
    }
    assert s.rel(s.report_index()) == "report/index.html"
    assert s.report_index(tmp_path / "web") == tmp_path / "web" / "index.html"
    assert [s.rel(p) for p in (s.driver_log(), s.workers_log_dir, s.dask_log, s.slurm_log_dir)] == [
        "logs/survey.log",
        "logs/workers",
        "logs/dask.log",
        "logs/slurm",
    ]
    assert s.rel(s.dask_profile) == PROFILE_PATH.as_posix() == "logs/dask-profile.html"
    assert [s.rel(p) for p in (s.joint_record("A"), s.joint_outdir("A"), s.joint_stack_dir("A"))] == [
        "joint/A.json",
        "joint/A",
        "joint/A_stack",
    ]
    assert s.rel(s.mosaic("a907")) == "joint/a907_mosaic.fits"
    assert s.obs("0123456789") == ObsProducts(tmp_path / "0123456789")
    # the names other modules export are the layout's
    assert (catalog_io.CATALOGUE_PARQUET, catalog_io.CATALOGUE_FITS) == (
        "catalogue.parquet",
        "catalogue.fits",
    )
    assert s.resolved_config.name == RESOLVED_NAME and s.lock.name == LOCK_NAME
    assert RESERVED_NAMES == SurveyLayout.RESERVED and {"joint", "logs", "plots", "report"} <= RESERVED_NAMES
    # joint records: *.json only, hidden files left out
    assert s.joint_records() == []
    s.joint_dir.mkdir()
    for name in ("b.json", "a.json", ".hidden.json", "notes.txt"):
        (s.joint_dir / name).write_text("{}")
    assert [p.name for p in s.joint_records()] == ["a.json", "b.json"]
    # the resolved configuration: {} when absent, an error naming the file when it is not a mapping
    assert s.read_resolved_config() == {}
    s.resolved_config.write_text("fit:\n  stat: wstat\n")
    assert s.read_resolved_config() == {"fit": {"stat": "wstat"}}
    s.resolved_config.write_text("- a\n- b\n")
    with pytest.raises(InputDataError, match="config.resolved.yaml"):
        s.read_resolved_config()
