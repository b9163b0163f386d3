"""Our products opened by the tools astronomers use: Sherpa, HEASARC fitsverify, STILTS and SAOImage DS9.

One small simulated survey (2 ObsIDs x 3 cameras, run through ``run_survey``) is made once for the module;
every test reads its products as a user would. Each tool's test skips with the reason when the tool is
absent, and fails under ``CI=true`` (``.ci/run`` installs them all from Debian, Sherpa from PyPI).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

import catalog
from survey.api import run_survey
from survey.config import load_config
from xmmcore.simulate import simulate_survey

FITS_SUFFIXES = (".fits", ".pha", ".rmf", ".arf", ".fit")


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is missing under CI=true ({hint}; .ci/run installs it)")
        pytest.skip(f"{name} not installed ({hint})")
    return path


def _run(data: Path, results: Path, obsids: list[str], **overrides: Any) -> dict[str, Any]:
    cfg = load_config(
        None,
        {
            "data_dir": str(data),
            "results_dir": str(results),
            "cluster.workers": 1,
            "fit.errors": "covariance",
            "cluster.dashboard_address": "127.0.0.1:0",
            **overrides,
        },
    )
    report = run_survey(cfg, progress=False)
    assert not report.failed, report.failed
    return {"data": data, "results": results, "obsids": obsids, "cfg": cfg}


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default configuration: the vignetting-matched local background (POISSERR=F, STAT_ERR)."""
    root = tmp_path_factory.mktemp("interop")
    data = root / "data"
    obsids = simulate_survey(
        data,
        n_obsids=2,
        seed=11,
        exposure_ks=(10.0, 12.0),
        cluster_counts=(3000.0, 5000.0),
        point_sources=6.0,
    )
    return _run(data, root / "results", obsids)


@pytest.fixture(scope="module")
def survey_plain(survey: dict[str, Any]) -> dict[str, Any]:
    """The same data with the plain area-scaled annulus (Poisson background counts: W-stat applies)."""
    results = survey["results"].parent / "results_plain"
    return _run(survey["data"], results, survey["obsids"], **{"spectra.local_background": "plain"})


def _fits_products(results: Path) -> list[Path]:
    return sorted(p for p in results.rglob("*") if p.suffix.lower() in FITS_SUFFIXES and p.is_file())


@pytest.mark.fitsverify
def test_fitsverify_every_product(survey: dict[str, Any]) -> None:
    """HEASARC fitsverify: 0 errors and 0 warnings on every FITS product, the catalogue included."""
    exe = _tool("fitsverify", "apt-get install fitsverify")
    products = _fits_products(survey["results"])
    kinds = {p.suffix for p in products} | {p.name for p in products if p.name == "catalogue.fits"}
    assert {".fits", ".pha", ".rmf", ".arf", "catalogue.fits"} <= kinds, kinds
    assert any(p.name.endswith("_img_0.5-2keV.fits") for p in products)
    bad = {}
    for path in products:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
        m = re.search(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)", proc.stdout)
        assert m, f"{path}: no fitsverify summary: {proc.stdout[-500:]} {proc.stderr[-500:]}"
        if (int(m.group(1)), int(m.group(2))) != (0, 0):
            issues = [ln for ln in proc.stdout.splitlines() if "***" in ln and "Verification" not in ln]
            bad[str(path.relative_to(survey["results"]))] = issues[:6]
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.stilts
def test_stilts_selects_z_by_name(survey: dict[str, Any]) -> None:
    """STILTS (TOPCAT's engine) looks column names up without case: ``z`` must give the redshift."""
    exe = _tool("stilts", "apt-get install stilts")
    path = survey["results"] / "catalogue.fits"
    proc = subprocess.run(
        [exe, "tpipe", f"in={path}", 'cmd=keepcols "obsid camera z abund nH dof"', "ofmt=csv"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert rows and list(rows[0]) == ["obsid", "camera", "z", "abund", "nH", "dof"]
    df = catalog.load(path)
    epic = df[(df["camera"] == "epic") & (df["kind"] == "obs")].set_index("obsid")
    seen = 0
    for row in rows:
        if row["camera"] != "epic":
            assert row["dof"] == "", row  # per-camera rows: a null, not a -1 placeholder
            continue
        truth = json.loads((survey["data"] / row["obsid"] / "truth.json").read_text())["cluster"]
        assert float(row["z"]) == pytest.approx(truth["z"], rel=1e-6)
        assert float(row["z"]) == pytest.approx(epic.loc[row["obsid"], "z"], rel=1e-12)
        assert int(row["dof"]) == epic.loc[row["obsid"], "dof"] > 0
        seen += 1
    assert seen == len(survey["obsids"])
    meta = subprocess.run(
        [exe, "tpipe", f"in={path}", "omode=meta"], capture_output=True, text=True, timeout=300, check=False
    )
    assert meta.returncode == 0, meta.stderr[-2000:]
    assert re.search(r"\d+: nH\(Double\)/10\*\*22 cm\*\*-2 - ", meta.stdout), meta.stdout[-3000:]
    assert re.search(r"\d+: abund\(Double\) - metal abundance relative to solar", meta.stdout)


class _SherpaModel:
    """The pipeline's model (our numpy/XSPEC-library components) as a Sherpa user model.

    Sherpa from PyPI has no XSPEC models; folding, filtering, grouping, statistic and optimiser stay Sherpa's.
    """

    @staticmethod
    def make(expression: str, fitted: dict[str, dict[str, Any]]):
        from sherpa.models.model import ArithmeticModel
        from sherpa.models.parameter import Parameter

        from xmmcore.fitting.models import parse_expression

        class Ours(ArithmeticModel):
            def __init__(self, name: str) -> None:
                self._model = parse_expression(expression)
                pars = []
                for p in self._model.parameters:
                    q = fitted[p.full_name]
                    par = Parameter(
                        name, p.full_name.replace(".", "_"), q["value"], min=q["min"], max=q["max"]
                    )
                    par.frozen = bool(q["frozen"])
                    pars.append(par)
                ArithmeticModel.__init__(self, name, tuple(pars))

            def calc(self, p, lo, hi=None, *args, **kwargs):
                return self._model.evaluate(
                    np.asarray(lo, float), np.asarray(hi, float), [float(v) for v in p]
                )

        return Ours("ours")


@pytest.mark.sherpa
def _sherpa_load(
    ui: Any, survey: dict[str, Any], obsid: str, *, use_errors: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load an ObsID's source PHAs (background, RMF, ARF through the header) into Sherpa as the pipeline fitted
    them: notice 0.5-7 keV, the model at the pipeline's best fit times each camera's cross-normalisation.
    ``use_errors``: Sherpa reads STAT_ERR columns (it ignores them unless told)."""
    fit = json.loads((survey["results"] / obsid / "fits" / "fit.json").read_text())
    fitted: dict[str, dict[str, Any]] = {}
    cross: dict[str, dict[str, Any]] = {}
    for p in fit["parameters"]:
        if p.get("dataset") and p["name"].startswith("constant"):
            cross[p["dataset"]] = p
        else:
            fitted.setdefault(p["name"], p)
    ui.clean()
    model = _SherpaModel.make(survey["cfg"]["fit"]["model"], fitted)
    datasets = fit["datasets"]
    assert [d["name"] for d in datasets] == ["pn", "mos1", "mos2"]
    for i, d in enumerate(datasets, start=1):
        pha = survey["results"] / obsid / "spectra" / f"{d['name']}_src.pha"
        ui.load_pha(i, str(pha), use_errors=use_errors)
        data = ui.get_data(i)
        assert data.grouped and data.grouping[0] == 1
        assert data.background_ids == [1]
        assert Path(ui.get_rmf(i).name).name == f"{d['name']}.rmf"
        assert Path(ui.get_arf(i).name).name == f"{d['name']}.arf"
        ui.notice_id(i, 0.5, 7.0)
        assert data.get_dep(filter=True).size == d["n_bins"], d["name"]
        const = ui.scale1d(f"xnorm_{d['name']}")
        const.c0 = cross[d["name"]]["value"]
        const.c0.frozen = bool(cross[d["name"]]["frozen"])
        ui.set_source(i, const * model)
    return fit, fitted


@contextlib.contextmanager
def _sherpa() -> Iterator[Any]:
    """``sherpa.astro.ui`` with its logger quietened, cleaned (and the logger restored) at the end."""
    ui = pytest.importorskip("sherpa.astro.ui", reason="sherpa not installed (.ci/install-sherpa.sh)")
    logger = logging.getLogger("sherpa")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield ui
    finally:
        logger.setLevel(level)
        ui.clean()


def _sherpa_kt(res: Any, fitted: dict[str, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """Sherpa's fitted kT and the pipeline's kT parameter (the default model's apec_1.kT)."""
    kt_name = next(n for n in fitted if n.endswith(".kT"))
    return dict(zip(res.parnames, res.parvals))["ours." + kt_name.replace(".", "_")], fitted[kt_name]


def test_sherpa_filters_groups_and_fits_every_source_spectrum(survey_plain: dict[str, Any]) -> None:
    """Sherpa loads each source PHA (plain annulus background, RMF, ARF through the header), notices 0.5-7 keV,
    groups with group_counts(20) and fits; at the pipeline's best fit its W-stat equals the pipeline's."""
    with _sherpa() as ui:
        for obsid in survey_plain["obsids"]:
            fit, fitted = _sherpa_load(ui, survey_plain, obsid)
            assert fit["stat"] == "cstat"
            ui.set_stat("wstat")  # cstat with a background is W-stat (XSPEC and the pipeline)
            assert ui.calc_stat() == pytest.approx(fit["statistic"], rel=1e-8)
            for i, d in enumerate(fit["datasets"], start=1):
                ui.group_counts(i, 20)
                counts = ui.get_data(i).get_dep(filter=True)
                assert counts.size >= 10 and np.all(counts[:-1] >= 20), d["name"]
            ui.fit()
            res = ui.get_fit_results()
            assert res.succeeded
            # Sherpa's own grouping of the noticed range is the pipeline's: same optimum, same dof
            assert res.dof == fit["dof"]
            assert res.statval == pytest.approx(fit["statistic"], abs=0.05)
            kt, ours = _sherpa_kt(res, fitted)
            assert kt == pytest.approx(ours["value"], abs=0.05 * ours["sigma"])


def test_sherpa_fits_the_vignetting_matched_background_with_its_errors(survey: dict[str, Any]) -> None:
    """The default (vignetting-matched) background is not Poisson: Sherpa reads its STAT_ERR (POISSERR=F,
    ``use_errors=True``) and, background subtracted with chi2gehrels (Sherpa has no pgstat), finds the
    pipeline's pgstat kT within its 1-sigma error."""
    with _sherpa() as ui:
        for obsid in survey["obsids"]:
            fit, fitted = _sherpa_load(ui, survey, obsid, use_errors=True)
            for i, d in enumerate(fit["datasets"], start=1):
                pha = survey["results"] / obsid / "spectra" / f"{d['name']}_bkg.pha"
                with fits.open(pha) as hdul:
                    assert hdul[1].header["POISSERR"] is False, pha
                    stat_err = np.asarray(hdul[1].data["STAT_ERR"], dtype=float)
                bkg = ui.get_bkg(i)
                assert bkg.staterror is not None and np.allclose(bkg.staterror, stat_err), d["name"]
                assert np.all(stat_err >= 0) and stat_err.sum() > 0, d["name"]
                ui.subtract(i)
            ui.set_stat("chi2gehrels")
            assert np.isfinite(ui.calc_stat())
            ui.fit()
            res = ui.get_fit_results()
            assert res.succeeded
            kt, ours = _sherpa_kt(res, fitted)
            assert kt == pytest.approx(ours["value"], abs=ours["sigma"]), obsid


@pytest.mark.ds9
def test_ds9_reads_regions_on_the_image(survey: dict[str, Any], tmp_path: Path) -> None:
    """SAOImage DS9 loads each ObsID's image with its source, background and point-source regions and saves
    them back: the background keeps its ``background`` property, point sources are exclusions."""
    ds9 = _tool("ds9", "apt-get install saods9")
    xvfb = _tool("xvfb-run", "apt-get install xvfb")
    obsid = survey["obsids"][0]
    rdir = survey["results"] / obsid / "regions"
    regions = json.loads((rdir / "regions.json").read_text())
    assert regions["point_sources"], "the simulated field should have point sources"
    saved = {}
    for name in ("pn_src", "pn_bkg", "ptsrc"):
        out = tmp_path / f"{name}.reg"
        proc = subprocess.run(
            [
                xvfb,
                "-a",
                ds9,
                str(rdir / "pn_img_0.5-2keV.fits"),
                "-regions",
                "load",
                str(rdir / f"{name}.reg"),
            ]
            + ["-regions", "system", "wcs", "-regions", "skyformat", "degrees", "-regions", "save", str(out)]
            + ["-exit"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert out.exists(), f"ds9 saved nothing for {name}: {proc.stdout[-1000:]} {proc.stderr[-1000:]}"
        saved[name] = [ln for ln in out.read_text().splitlines() if re.match(r"^-?(circle|annulus)\(", ln)]
    assert saved["pn_src"][0].startswith("circle(") and "background" not in saved["pn_src"][0]
    assert saved["pn_bkg"][0].startswith("annulus(")
    assert all("background" in ln for ln in saved["pn_bkg"])
    assert len(saved["ptsrc"]) == len(regions["point_sources"])
    assert all(ln.startswith("-circle(") for ln in saved["ptsrc"])


def test_region_images_carry_time_and_exposure(survey: dict[str, Any]) -> None:
    """Count images and exposure maps have OBS_ID, DATE-OBS, MJDREF (XMM: 50814), TSTART/TSTOP, EXPOSURE."""
    for obsid in survey["obsids"]:
        rdir = survey["results"] / obsid / "regions"
        events = fits.getheader(survey["results"] / obsid / "events" / "pn_clean.fits", 1)
        for name in ("pn_img_0.5-2keV.fits", "pn_flatexp_0.5-2keV.fits"):
            h = fits.getheader(rdir / name)
            assert h["OBS_ID"] == obsid and h["INSTRUME"] == "EPN" and h["TELESCOP"] == "XMM"
            assert h["DATE-OBS"] == events["DATE-OBS"] and h["MJDREF"] == 50814.0
            assert h["DATEREF"].startswith("1998-01-01") and h["MJD-OBS"] > 50814.0
            assert h["TSTART"] < h["TSTOP"]
            assert 0.5 * (h["TSTOP"] - h["TSTART"]) < h["EXPOSURE"] <= h["TSTOP"] - h["TSTART"]
        img = fits.getheader(rdir / "pn_img_0.5-2keV.fits")
        assert img["BUNIT"] == "count"
        expmap = fits.getdata(rdir / "pn_flatexp_0.5-2keV.fits")
        assert img["EXPOSURE"] == pytest.approx(float(np.max(expmap)), rel=0.05)
