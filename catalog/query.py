"""Queries on the catalogue DataFrame (pandas expressions) and export to csv/parquet/fits.

``query(df, "kT > 3 and z < 0.2")`` selects by default the rows science wants: one fitted row per
ObsID (``camera == "epic"``) plus joint/combined/stack rows, successfully processed.
"""

from __future__ import annotations

import os
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


def query(df: pd.DataFrame, expr: str, *, all_rows: bool = False) -> pd.DataFrame:
    """Select rows with a pandas expression, e.g. ``"kT > 3 and z < 0.2"``.

    Parameters
    ----------
    df : pandas.DataFrame
        A catalogue (:func:`catalog.load`).
    expr : str
        :meth:`pandas.DataFrame.query` expression over column names.
    all_rows : bool
        Query every row (per-camera and failed rows too) instead of :func:`science_rows`.

    Raises
    ------
    ConfigError
        The expression is invalid (names the unknown column or the syntax error).
    """
    base = df if all_rows else science_rows(df)
    try:
        out = base.query(expr, engine="python")
    except (SyntaxError, ValueError, KeyError, TypeError, NameError, pd.errors.UndefinedVariableError) as exc:
        raise ConfigError(f"invalid catalogue query {expr!r}: {exc}") from exc
    return _keep_attrs(out, df)


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
