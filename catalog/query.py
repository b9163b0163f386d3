"""Queries on the catalogue DataFrame (pandas expressions) and export to csv/parquet/fits.

``query(df, "kT > 3 and z < 0.2")`` selects by default the rows science wants: one fitted row per
ObsID (``camera == "epic"``) plus joint/combined/stack rows, successfully processed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xmmcore.errors import ConfigError
from xmmcore.fsutil import atomic_path

from . import io
from .schema import attach_attrs, columns_from_attrs

__all__ = ["FORMATS", "export", "failures", "joint_rows", "per_camera", "query", "science_rows"]

FORMATS = ("csv", "parquet", "fits")


def _keep_attrs(out: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    out = out.reset_index(drop=True)
    if "dtypes" in df.attrs:
        attach_attrs(out, columns_from_attrs(df))
        out.attrs["schema_version"] = df.attrs.get("schema_version", out.attrs["schema_version"])
    return out


def science_rows(df: pd.DataFrame, *, include_failed: bool = False) -> pd.DataFrame:
    """Fitted rows: ``camera == "epic"`` ObsID rows and all joint/combined/stack rows."""
    mask = (df["camera"] == "epic") | (df["kind"] != "obs")
    if not include_failed:
        mask &= df["status"] == "done"
    return _keep_attrs(df[mask], df)


def per_camera(df: pd.DataFrame, camera: str | None = None) -> pd.DataFrame:
    """Per-camera ObsID rows (exposure, counts, cross-normalisation), optionally of one camera."""
    mask = (df["kind"] == "obs") & (df["camera"] != "epic")
    if camera is not None:
        mask &= df["camera"] == camera
    return _keep_attrs(df[mask], df)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """One row per failed or incomplete ObsID with ``failed_step``, ``failure_reason``, ``error_class``."""
    mask = (df["kind"] == "obs") & (df["camera"] == "epic") & (df["status"] != "done")
    return _keep_attrs(df[mask], df)


def joint_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that combine several ObsIDs (``is_joint``)."""
    return _keep_attrs(df[df["is_joint"]], df)


def query(
    df: pd.DataFrame, expr: str, *, all_rows: bool = False, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Select rows with a pandas expression, e.g. ``"kT > 3 and z < 0.2"``.

    Parameters
    ----------
    df : pandas.DataFrame
        A catalogue (:func:`catalog.load`).
    expr : str
        :meth:`pandas.DataFrame.query` expression over column names.
    all_rows : bool
        Query every row (per-camera and failed rows too) instead of :func:`science_rows`.
    columns : sequence of str, optional
        Keep only these columns, in this order (units and descriptions follow them).

    Raises
    ------
    ConfigError
        The expression is invalid or a column is unknown (names it, with the closest column names).
    """
    if columns is not None:
        _check_columns(df, columns)
    base = df if all_rows else science_rows(df)
    try:
        mask = base.eval(expr, engine="python")
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a bad expression
        raise ConfigError(f"invalid catalogue query {expr!r}: {_query_error(exc, df)}") from exc
    if not (isinstance(mask, pd.Series) and pd.api.types.is_bool_dtype(mask.dtype)):
        raise ConfigError(
            f"invalid catalogue query {expr!r}: it must be a condition on rows, e.g. 'kT > 3 and z < 0.2'"
        )
    out = _keep_attrs(base[mask], df)
    if columns is not None:
        out = _keep_attrs(out[list(columns)], out)
    return out


_OPERATORS = {"RShift": ">>", "LShift": "<<", "BitXor": "^", "MatMult": "@", "FloorDiv": "//", "Walrus": ":="}


def _close_columns(name: str, df: pd.DataFrame) -> list[str]:
    import difflib

    same_case = [c for c in df.columns if c.lower() == name.lower()]
    return same_case or difflib.get_close_matches(name, list(df.columns), n=3)


def _query_error(exc: BaseException, df: pd.DataFrame) -> str:
    """A one-line reason for a failed ``DataFrame.query`` (no pandas internals)."""
    import re

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.search(r"no attribute 'visit_(\w+)'", text)
    if m:
        op = _OPERATORS.get(m.group(1), m.group(1))
        return f"the operator {op} is not allowed (use ==, !=, <, <=, >, >=, and, or, not, in)"
    m = re.search(r"name '([^']+)' is not defined", text)
    if m:
        close = _close_columns(m.group(1), df)
        return f"no column {m.group(1)!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
    return f"{text} (columns are names such as kT, z, abund, snr; strings in quotes: camera == 'pn')"


def _check_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        hints = []
        for name in unknown:
            close = _close_columns(name, df)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError("unknown catalogue column " + "; ".join(hints))


def export(df: pd.DataFrame, path: str | os.PathLike[str], *, fmt: str | None = None) -> Path:
    """Write ``df`` as csv, parquet or fits (format from ``fmt`` or the suffix), atomically."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "parquet":
        return io.write_parquet(df, path)
    if fmt == "fits":
        return io.write_fits(df, path)
    if fmt == "csv":
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        return path
    raise ConfigError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
