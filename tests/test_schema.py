"""catalog.schema: column list, band tags, missing values, conform() casting and attrs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from catalog import schema


def test_band_tag_and_flux_columns_follow_the_bands() -> None:
    assert schema.band_tag((0.5, 2.0)) == "0p5_2p0" and schema.band_tag([2, 10]) == "2p0_10p0"
    names = [c.name for c in schema.columns([(0.3, 1.0)])]
    assert "flux_0p3_1p0_abs" in names and "flux_0p3_1p0_unabs_err_hi" in names and "lum_0p3_1p0" in names
    assert "flux_0p5_2p0_abs" not in names
    default = schema.column_map()
    assert default["lum_0p1_2p4"].unit == "erg s-1" and default["kT"].unit == "keV"


def test_columns_are_unique_without_case_and_start_with_the_key() -> None:
    names = [c.name for c in schema.columns()]
    assert len({n.lower() for n in names}) == len(names)  # CFITSIO/STILTS look names up without case
    assert set(schema.KEY) <= set(names)
    for p in schema.PARAMETERS:
        assert {p, f"{p}_err_lo", f"{p}_err_hi"} <= set(names)


def test_empty_row_holds_each_dtype_missing_value() -> None:
    cols = schema.columns()
    row = schema.empty_row(cols)
    types = {c.name: c.dtype for c in cols}
    assert row["schema_version"] == schema.SCHEMA_VERSION
    assert row["obsid"] == "" and math.isnan(row["kT"]) and row["is_joint"] is False
    assert all(row[n] is None for n, t in types.items() if t == "int64")


def test_conform_casts_fills_and_drops() -> None:
    cols = schema.columns()
    df = pd.DataFrame(
        {
            "obsid": ["0001", None],
            "kT": ["5.5", "bad"],
            "n_obs": [2, np.nan],
            "is_joint": [True, None],
            "not_a_column": [1, 2],
        }
    )
    out = schema.conform(df, cols)
    assert list(out.columns) == [c.name for c in cols]
    assert list(out["obsid"]) == ["0001", ""]
    assert out["kT"].iloc[0] == 5.5 and math.isnan(out["kT"].iloc[1])
    assert str(out["n_obs"].dtype) == "Int64" and out["n_obs"].iloc[0] == 2 and out["n_obs"].isna().iloc[1]
    assert list(out["is_joint"]) == [True, False] and out["is_joint"].dtype == np.bool_
    assert out["camera"].tolist() == ["", ""] and "not_a_column" not in out
    assert out.attrs["units"]["kT"] == "keV" and out.attrs["schema_version"] == schema.SCHEMA_VERSION
    back = schema.columns_from_attrs(out)
    assert [(c.name, c.dtype, c.unit) for c in back] == [(c.name, c.dtype, c.unit) for c in cols]


def test_missing_value_of_each_dtype() -> None:
    assert schema.Column("a", "str", "", "").missing == ""
    assert math.isnan(schema.Column("a", "float64", "", "").missing)
    assert schema.Column("a", "int64", "", "").missing is None
    with pytest.raises(KeyError):
        schema.Column("a", "complex", "", "").missing  # noqa: B018
