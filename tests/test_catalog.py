"""Catalogue schema, build from a results tree, Parquet/FITS round trip, resumed appends, query CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.catalog import make_obs

import catalog
from catalog import io as cio
from catalog import query, schema
from xmmcore.errors import InputDataError
from xmmcore.fsutil import atomic_write_json, atomic_write_text


@pytest.fixture()
def survey(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    atomic_write_text(
        results / "config.resolved.yaml", "fit:\n  flux_bands_kev: [[0.5, 2.0], [0.1, 2.4], [2.0, 10.0]]\n"
    )
    make_obs(results, "0100000101", kT=2.0, z=0.05, seed=1)
    make_obs(results, "0100000201", kT=4.5, z=0.12, seed=2)
    make_obs(results, "0100000301", kT=7.0, z=0.30, seed=3, cams=("mos1", "mos2"))
    make_obs(results, "0100000401", kT=5.0, z=0.10, seed=4, fail_step="spectra")
    return results


def test_schema_is_consistent() -> None:
    cols = schema.columns()
    names = [c.name for c in cols]
    assert len(names) == len(set(names))
    assert {"kT", "kT_err_lo", "kT_err_hi", "kT_frozen", "kT_linked", "abund", "norm", "nH", "z"} <= set(
        names
    )
    assert all(c.dtype in ("str", "float64", "int64", "bool") for c in cols)
    assert all(len(c.description) <= 68 for c in cols), "descriptions must fit a FITS TCOMM card"
    assert schema.column_map()["kT"].unit == "keV"
    assert schema.band_tag((0.5, 2.0)) == "0p5_2p0"


def test_build_rows(survey: Path) -> None:
    df = catalog.build(survey)
    epic = df[(df.camera == "epic") & (df.kind == "obs")].set_index("obsid")
    assert list(epic.index) == ["0100000101", "0100000201", "0100000301", "0100000401"]
    assert epic.loc["0100000201", "kT"] == pytest.approx(4.5)
    assert epic.loc["0100000201", "kT_err_lo"] == pytest.approx(0.45)
    assert epic.loc["0100000201", "z"] == pytest.approx(0.12) and epic.loc["0100000201", "z_frozen"]
    assert epic.loc["0100000201", "lum_0p1_2p4"] == pytest.approx(2e44)
    assert epic.loc["0100000201", "lum_0p1_2p4_err_hi"] == pytest.approx(0.06 * 2e44)
    assert epic.loc["0100000201", "flux_0p5_2p0_abs_err_hi"] == pytest.approx(2e-14)
    assert epic.loc["0100000201", "n_ptsrc"] == 2
    assert epic.loc["0100000201", "status"] == "done"
    assert epic.loc["0100000201", "fit_pvalue"] > 0.1
    failed = epic.loc["0100000401"]
    assert failed.status == "failed" and failed.failed_step == "spectra"
    assert "no counts" in failed.failure_reason and failed.error_class == "FitError"
    assert math.isnan(failed.kT)
    mos1 = df[(df.obsid == "0100000101") & (df.camera == "mos1")].iloc[0]
    assert mos1.cross_norm == pytest.approx(1.04)
    # net counts: src - bkg * (backscal ratio 1/4)
    assert mos1.net_counts == pytest.approx(mos1.src_counts - mos1.bkg_counts / 4)
    assert mos1.snr == pytest.approx(mos1.net_counts / math.sqrt(mos1.src_counts + mos1.bkg_counts / 16))
    assert df.attrs["units"]["flux_0p5_2p0_abs"] == "erg cm-2 s-1"
    assert set(df[df.obsid == "0100000301"].camera) == {"epic", "mos1", "mos2"}


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert dict(a.dtypes.astype(str)) == dict(b.dtypes.astype(str))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.attrs["units"] == b.attrs["units"]
    assert a.attrs["descriptions"] == b.attrs["descriptions"]
    assert a.attrs["schema_version"] == b.attrs["schema_version"] == schema.SCHEMA_VERSION


def test_round_trip_parquet_and_fits(survey: Path) -> None:
    df = catalog.build(survey)
    str_dtype = pd.Series([], dtype=str).dtype
    for col in schema.columns():
        expected = {"str": str_dtype, "int64": pd.Int64Dtype()}.get(col.dtype) or np.dtype(col.dtype)
        assert df[col.name].dtype == expected, col.name
    # a missing integer is a null in both formats, never a placeholder number
    df.loc[0, "dof"] = pd.NA
    paths = cio.write_catalogue(df, survey)
    from_pq = catalog.load(paths["parquet"])
    from_fits = catalog.load(paths["fits"])
    _assert_same(df, from_pq)
    _assert_same(df, from_fits)
    _assert_same(from_pq, from_fits)
    from astropy.io import fits

    with fits.open(paths["fits"]) as hdul:
        hdr = hdul["CATALOGUE"].header
        idx = hdul["CATALOGUE"].columns.names.index("kT") + 1
        assert hdr[f"TUNIT{idx}"] == "keV" and hdr[f"TCOMM{idx}"] == "plasma temperature"
        assert hdul["CATALOGUE"].verify_checksum() == 1
        idx = hdul["CATALOGUE"].columns.names.index("dof") + 1
        assert hdr[f"TNULL{idx}"] == cio.FITS_INT_NULL == hdul["CATALOGUE"].data["dof"][0]
    assert from_pq["dof"].isna()[0] and from_fits["dof"].isna()[0] and (from_fits["dof"] > 0).sum() >= 1
    import pyarrow.parquet as pq

    field = pq.read_schema(paths["parquet"]).field("lum_0p1_2p4")
    assert field.metadata[b"unit"] == b"erg s-1"
    assert not list(survey.glob(".catalogue*.tmp"))


def test_resumed_survey_appends_without_duplicates(survey: Path) -> None:
    cio.write_catalogue(catalog.build(survey, obsids=["0100000101", "0100000201"]), survey)
    # the resumed run re-fits 0100000201 (new kT) and adds 0100000301; 0100000101 is not rebuilt
    make_obs(survey, "0100000201", kT=4.8, z=0.12, seed=2)
    cio.write_catalogue(catalog.build(survey, obsids=["0100000201", "0100000301"]), survey)
    out = catalog.load(survey / "catalogue.parquet")
    assert not out.duplicated(list(schema.KEY)).any()
    assert set(out.obsid) == {"0100000101", "0100000201", "0100000301"}
    assert len(out) == 4 + 4 + 3
    assert out[(out.obsid == "0100000201") & (out.camera == "epic")].kT.item() == pytest.approx(4.8)
    _assert_same(out, catalog.load(survey / "catalogue.fits"))


def test_query_and_cli(survey: Path, tmp_path: Path) -> None:
    cio.write_catalogue(catalog.build(survey), survey)
    df = catalog.load(survey)
    hot = query.query(df, "kT > 3 and z < 0.2")
    assert list(hot.obsid) == ["0100000201"]
    assert len(query.failures(df)) == 1
    from survey.commands import catalog as cmd

    parser = argparse.ArgumentParser(prog="xmm-survey")
    cmd.add_parser(parser.add_subparsers(dest="command"))
    for fmt in ("csv", "parquet", "fits"):
        out = tmp_path / f"hot.{fmt}"
        args = parser.parse_args(
            [
                "catalog",
                "query",
                "kT > 3 and z < 0.2",
                "--results",
                str(survey),
                "--format",
                fmt,
                "--out",
                str(out),
            ]
        )
        assert args.func(args) == 0
        assert out.exists()
    assert pd.read_csv(tmp_path / "hot.csv", dtype={"obsid": str}).obsid.tolist() == ["0100000201"]
    back = catalog.load(tmp_path / "hot.fits")
    assert back.kT.tolist() == [pytest.approx(4.5)]
    assert back.attrs["units"]["kT"] == "keV"
    bad = parser.parse_args(["catalog", "query", "kT >>> 3", "--results", str(survey)])
    assert bad.func(bad) == 2


def test_bad_files_raise_input_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputDataError, match="x.parquet"):
        catalog.load(bad)
    res = tmp_path / "results"
    (res / "0001" / "steps").mkdir(parents=True)
    (res / "0001" / "steps" / "fit.json").write_text("{broken")
    with pytest.raises(InputDataError, match="fit.json"):
        catalog.build(res, strict=True)
    # the default, as the survey and `xmm-survey catalog build`: the ObsID is listed with the reason
    df = catalog.build(res)
    assert "fit.json" in df.attrs["skipped"]["0001"] and list(df["status"]) == ["failed"]
    with pytest.raises(InputDataError, match="does not exist"):
        catalog.build(tmp_path / "nope")


def test_json_columns_are_json(survey: Path) -> None:
    df = catalog.build(survey)
    assert json.loads(df.software_versions.iloc[0])["backend"] == "python"
    assert df.backend.iloc[0] == "python"


def test_failed_camera_gets_its_own_status(survey: Path) -> None:
    # a step that went on without one camera records it under failed_cameras
    rec_path = survey / "0100000101" / "steps" / "spectra.json"
    rec = json.loads(rec_path.read_text())
    rec["summary"]["failed_cameras"] = {"mos2": "InputDataError: no counts in the source region"}
    del rec["summary"]["cameras"]["mos2"]
    atomic_write_json(rec_path, rec)
    df = catalog.build(survey, obsids=["0100000101"])
    cams = df.set_index("camera")
    assert cams.loc["mos2", "status"] == "failed" and cams.loc["mos2", "failed_step"] == "spectra"
    assert cams.loc["mos2", "error_class"] == "InputDataError"
    assert math.isnan(cams.loc["mos2", "src_counts"])
    assert cams.loc["epic", "status"] == "done" and cams.loc["pn", "status"] == "done"


def test_report_cli(survey: Path) -> None:
    from survey.commands import catalog as cmd

    parser = argparse.ArgumentParser(prog="xmm-survey")
    cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["catalog", "build", "--results", str(survey)])
    assert args.func(args) == 0
    args = parser.parse_args(["report", "--results", str(survey)])
    assert args.func(args) == 0
    assert (survey / "report" / "index.html").exists()
    assert (survey / "report" / "obs" / "0100000401.html").exists()
