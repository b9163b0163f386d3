"""Catalogue files: Parquet (pyarrow, units in the schema metadata) and FITS (TUNIT/TCOMM), written atomically.

Both formats carry the same columns, dtypes and units, and read back into identical DataFrames.
Appending (a resumed survey) merges on the key (``obsid``, ``camera``, ``region``, ``kind``): a new row
replaces the old row with the same key, old rows whose key is not in the new set are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xmmcore.errors import InputDataError
from xmmcore.fsutil import atomic_path
from xmmcore.products import SurveyLayout

from .schema import KEY, SCHEMA_VERSION, Column, attach_attrs, columns_from_attrs, conform

__all__ = [
    "CATALOGUE_FITS",
    "CATALOGUE_PARQUET",
    "FITS_INT_NULL",
    "merge_rows",
    "read_catalogue",
    "read_fits",
    "read_parquet",
    "write_catalogue",
    "write_fits",
    "write_parquet",
]

CATALOGUE_PARQUET = SurveyLayout.CATALOGUE_PARQUET
CATALOGUE_FITS = SurveyLayout.CATALOGUE_FITS
_META_KEY = b"xmm_survey"
_FITS_FORMATS = {"float64": "D", "int64": "K", "bool": "L"}
FITS_INT_NULL = np.iinfo(np.int64).min  # TNULLn of the integer columns: a missing value, not a number


def _arrow_type(dtype: str):
    import pyarrow as pa

    return {"str": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}[dtype]


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a conformed catalogue to Parquet atomically.

    Each field carries ``unit``, ``description`` and ``dtype`` metadata; the schema metadata key
    ``xmm_survey`` holds the schema version and the column list as JSON.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`catalog.schema.conform` (units and dtypes in ``df.attrs``).
    path : path-like
        Target file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = columns_from_attrs(df)
    fields, arrays = [], []
    for col in cols:
        meta = {
            b"unit": col.unit.encode(),
            b"description": col.description.encode(),
            b"dtype": col.dtype.encode(),
        }
        nullable = col.dtype == "int64"  # missing integers are nulls, not placeholders
        fields.append(pa.field(col.name, _arrow_type(col.dtype), nullable=nullable, metadata=meta))
        if col.dtype == "str":
            arrays.append(pa.array(df[col.name].tolist(), type=pa.string()))
        elif nullable:
            arrays.append(pa.Array.from_pandas(df[col.name], type=pa.int64()))
        else:
            arrays.append(pa.array(df[col.name].to_numpy(), type=_arrow_type(col.dtype)))
    info = {
        "schema_version": df.attrs.get("schema_version", SCHEMA_VERSION),
        "columns": [[c.name, c.dtype, c.unit, c.description] for c in cols],
    }
    schema = pa.schema(fields, metadata={_META_KEY: json.dumps(info).encode()})
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a catalogue Parquet file; units, descriptions and dtypes go to ``df.attrs``."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputDataError(f"not a readable Parquet catalogue ({exc})", path) from exc
    meta = table.schema.metadata or {}
    if _META_KEY not in meta:
        raise InputDataError("Parquet file has no xmm_survey schema metadata (not a catalogue?)", path)
    info = json.loads(meta[_META_KEY])
    cols = [Column(*c) for c in info["columns"]]
    df = conform(table.select([c.name for c in cols]).to_pandas(), cols)
    df.attrs["schema_version"] = info["schema_version"]
    return df


def write_fits(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a conformed catalogue as a FITS binary table (``CATALOGUE`` HDU) atomically.

    Units go to ``TUNITn``, descriptions to ``TCOMMn``, schema dtypes to ``TDTYPn`` (so that a
    string column of only empty strings still reads back as a string); ``SCHEMAV`` holds the schema version.
    Missing integers are ``TNULLn`` (:data:`FITS_INT_NULL`), which CFITSIO, STILTS and TOPCAT show as null.
    """
    from astropy.io import fits

    cols = columns_from_attrs(df)
    fcols = []
    for col in cols:
        values = df[col.name].to_numpy()
        if col.dtype == "str":
            encoded = np.array([str(v).encode("utf-8") for v in values], dtype=object)
            width = max([1] + [len(v) for v in encoded])
            fcols.append(
                fits.Column(
                    name=col.name,
                    format=f"{width}A",
                    unit=col.unit or None,
                    array=np.array(encoded, dtype=f"S{width}"),
                )
            )
        elif col.dtype == "int64":
            ints = df[col.name].astype("Int64").fillna(FITS_INT_NULL).to_numpy(dtype=np.int64)
            fcols.append(
                fits.Column(name=col.name, format="K", unit=col.unit or None, null=FITS_INT_NULL, array=ints)
            )
        else:
            fcols.append(
                fits.Column(
                    name=col.name, format=_FITS_FORMATS[col.dtype], unit=col.unit or None, array=values
                )
            )
    hdu = fits.BinTableHDU.from_columns(fcols, name="CATALOGUE")
    for i, col in enumerate(cols, start=1):
        hdu.header[f"TCOMM{i}"] = col.description[:68]
        hdu.header[f"TDTYP{i}"] = col.dtype
    hdu.header["SCHEMAV"] = (
        str(df.attrs.get("schema_version", SCHEMA_VERSION)),
        "xmm-survey catalogue schema",
    )
    hdu.header["ORIGIN"] = "xmm-survey"
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, checksum=True)
    return Path(path)


def read_fits(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a FITS catalogue written by :func:`write_fits` (units/descriptions into ``df.attrs``)."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            if "CATALOGUE" not in hdul:
                raise InputDataError("no CATALOGUE extension (not an xmm-survey catalogue?)", path)
            hdu = hdul["CATALOGUE"]
            header = hdu.header
            data = hdu.data
            cols, values = [], {}
            for i, name in enumerate(hdu.columns.names, start=1):
                dtype = header.get(f"TDTYP{i}")
                if dtype is None:
                    raise InputDataError(f"column {name} has no TDTYP{i} keyword", path)
                cols.append(
                    Column(name, dtype, header.get(f"TUNIT{i}", "") or "", header.get(f"TCOMM{i}", ""))
                )
                arr = data[name] if data is not None else np.array([])
                if dtype == "str":
                    values[name] = np.array(
                        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr], dtype=object
                    )
                elif dtype == "int64":
                    raw = np.asarray(arr).astype(np.int64)
                    tnull = header.get(f"TNULL{i}")
                    ints = pd.Series(raw, dtype="Int64")
                    values[name] = ints if tnull is None else ints.mask(raw == int(tnull))
                else:
                    values[name] = np.asarray(arr).astype(np.dtype(dtype).newbyteorder("="))
            version = str(header.get("SCHEMAV", ""))
    except OSError as exc:
        raise InputDataError(f"not a readable FITS catalogue ({exc})", path) from exc
    df = conform(pd.DataFrame(values), cols)
    df.attrs["schema_version"] = version
    return df


def read_catalogue(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a catalogue by suffix (``.parquet`` / ``.fits``) or, for a folder, its ``catalogue.parquet``."""
    path = Path(path)
    if path.is_dir():
        for name in (CATALOGUE_PARQUET, CATALOGUE_FITS):
            if (path / name).exists():
                return read_catalogue(path / name)
        raise InputDataError(
            f"no {CATALOGUE_PARQUET} or {CATALOGUE_FITS} in this folder (run `xmm-survey "
            "catalog build` first)",
            path,
        )
    if not path.exists():
        raise InputDataError("catalogue file does not exist", path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet(path)
    if path.suffix.lower() in (".fits", ".fit", ".fts"):
        return read_fits(path)
    raise InputDataError("unknown catalogue format (expected .parquet or .fits)", path)


def merge_rows(old: pd.DataFrame, new: pd.DataFrame, *, key: Sequence[str] = KEY) -> pd.DataFrame:
    """Merge ``new`` rows into ``old``: same key -> the new row wins; nothing duplicated, nothing lost.

    Columns are the union (new columns first); the result is conformed to that column list.
    """
    cols_new = columns_from_attrs(new)
    names = {c.name for c in cols_new}
    cols = cols_new + [c for c in columns_from_attrs(old) if c.name not in names]
    new_keys = set(map(tuple, new[list(key)].to_numpy().tolist()))
    keep_old = [tuple(k) not in new_keys for k in old[list(key)].to_numpy().tolist()]
    merged = pd.concat([old[keep_old], new], ignore_index=True)
    merged = conform(merged, cols)
    order = merged.sort_values(list(key), kind="stable").index
    merged = merged.loc[order].reset_index(drop=True)
    attach_attrs(merged, cols)
    return merged


def write_catalogue(
    df: pd.DataFrame,
    results_dir: str | os.PathLike[str],
    *,
    append: bool = True,
    formats: Sequence[str] = ("parquet", "fits"),
) -> dict[str, Path]:
    """Write ``results_dir/catalogue.parquet`` and ``catalogue.fits`` atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        Conformed catalogue rows.
    results_dir : path-like
        The survey results folder.
    append : bool
        Merge with an existing ``catalogue.parquet`` (see :func:`merge_rows`) instead of replacing it.
    formats : sequence of str
        Any of ``"parquet"``, ``"fits"``.

    Returns
    -------
    dict
        Format -> written path.
    """
    layout = SurveyLayout(results_dir)
    existing = layout.catalogue_parquet
    if append and existing.exists():
        df = merge_rows(read_parquet(existing), df)
    out: dict[str, Path] = {}
    if "parquet" in formats:
        out["parquet"] = write_parquet(df, existing)
    if "fits" in formats:
        out["fits"] = write_fits(df, layout.catalogue_fits)
    return out
