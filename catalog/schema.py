"""The catalogue schema: every column's name, dtype, unit and description, and the schema version.

One row per (``obsid``, ``camera``, ``region``, ``kind``):

* ``kind="obs"``, ``camera="epic"``: the fit of one ObsID (all its cameras fitted jointly, as the
  ``fit`` step does) with summed counts; this is the row science queries use.
* ``kind="obs"``, ``camera in CAMERAS`` (pn, mos1, mos2): per-camera data quantities (exposure, flare
  fraction, counts, S/N) and that camera's cross-normalisation constant; fitted physical parameters are
  NaN there (they belong to the ``epic`` row).
* ``kind="joint"``: a simultaneous fit over several ObsIDs (``obsid`` = target name, ``obsids`` lists them).
* ``kind="combined"``: a weighted mean of independent per-ObsID results, with a consistency test.
* ``kind="stack"``: a fit of stacked spectra.

Missing values: NaN for floats, null (pandas ``<NA>`` in a nullable ``Int64`` column, FITS ``TNULLn``) for
integers, ``""`` for strings, ``False`` for flags.

Names are unique regardless of case (CFITSIO, STILTS and TOPCAT look columns up without case): the abundance
is ``abund``, the redshift ``z``. Units are FITS-standard strings (``10**22 cm**-2``); dimensionless columns
have none, and their meaning (e.g. "relative to solar") is in the description.
Errors ``<param>_err_lo`` / ``<param>_err_hi`` are positive magnitudes (value - lower bound, upper bound - value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmmcore.constants import CAMERAS, DEFAULT_FLUX_BANDS_KEV

__all__ = [
    "CAMERA_ROWS",
    "DEFAULT_FLUX_BANDS_KEV",
    "KEY",
    "KINDS",
    "PARAMETERS",
    "PARAMETER_ALIASES",
    "SCHEMA_VERSION",
    "Column",
    "attach_attrs",
    "band_tag",
    "column_map",
    "columns",
    "columns_from_attrs",
    "conform",
    "empty_row",
]

SCHEMA_VERSION = (
    "2.2"  # 2.0: Z -> abund, FITS units, nullable integers; 2.1: code_version; 2.2: 90% intervals
)
KEY = ("obsid", "camera", "region", "kind")
KINDS = ("obs", "joint", "combined", "stack")
CAMERA_ROWS = CAMERAS  # per-camera rows, in this order

_DTYPES = {"str": object, "float64": np.float64, "int64": "Int64", "bool": np.bool_}
_MISSING: dict[str, Any] = {"str": "", "float64": np.nan, "int64": None, "bool": False}


@dataclass(frozen=True)
class Column:
    """One catalogue column.

    Attributes
    ----------
    name : str
        Column name (Parquet field, FITS ``TTYPE``).
    dtype : str
        ``"str"``, ``"float64"``, ``"int64"`` (pandas nullable ``Int64``: a missing value is ``<NA>``) or ``"bool"``.
    unit : str
        Unit string (FITS ``TUNIT``; ``""`` for dimensionless).
    description : str
        One-line description (FITS ``TCOMM``).
    """

    name: str
    dtype: str
    unit: str
    description: str

    @property
    def missing(self) -> object:
        """The value that stands for "not available" in this column."""
        return _MISSING[self.dtype]


#: Further interval levels with columns: record label (``FitResult`` parameter ``intervals``) -> column
#: suffix and the delta-stat (``fit.error_levels``; the ``_err_lo``/``_err_hi`` columns are the 1-sigma ones).
LEVEL_COLUMNS: dict[str, tuple[str, str]] = {"90": ("90", "90% (delta-stat 2.706)")}
#: Parameters without further-level columns (normalisations: their 90% intervals are not computed).
_NO_LEVEL_COLUMNS = ("norm",)

# Generic parameter columns: catalogue name -> (unit, description, fit-parameter names that map to it).
# The fit-parameter name is the part after the component ("zbremss_1.kT" -> "kT"), compared case-insensitively.
PARAMETERS: dict[str, tuple[str, str]] = {
    "kT": ("keV", "plasma temperature"),
    "abund": ("", "metal abundance relative to solar (abundance table of the fit)"),
    "nH": ("10**22 cm**-2", "absorbing column density"),
    "z": ("", "redshift (fitted, or the target redshift when frozen)"),
    "norm": ("", "normalisation of the first additive component (XSPEC units)"),
    "gamma": ("", "power-law photon index"),
}
PARAMETER_ALIASES: dict[str, tuple[str, ...]] = {
    "kT": ("kt",),
    "abund": ("abundanc", "abund", "z_abund", "metals", "abundance"),
    "nH": ("nh",),
    "z": ("redshift", "z"),
    "norm": ("norm",),
    "gamma": ("phoindex", "gamma"),
}


def band_tag(band_kev: Sequence[float]) -> str:
    """Column tag of an energy band: ``(0.5, 2.0) -> "0p5_2p0"``."""
    lo, hi = (float(b) for b in band_kev)
    return f"{lo:.1f}_{hi:.1f}".replace(".", "p")


def _base_columns() -> list[Column]:
    c = Column
    cols = [
        c("obsid", "str", "", "ObsID (or target name for joint/combined/stack rows)"),
        c("camera", "str", "", "pn | mos1 | mos2 | epic (all cameras of the fit)"),
        c("region", "str", "", "region name: src, or an annulus ann<i>"),
        c("kind", "str", "", "obs | joint | combined | stack"),
        c("target", "str", "", "target name"),
        c("obsids", "str", "", "comma-separated ObsIDs that went into this row"),
        c("n_obs", "int64", "", "number of ObsIDs in this row"),
        c("is_joint", "bool", "", "row combines several ObsIDs (joint, combined or stack)"),
        c("ra_deg", "float64", "deg", "target right ascension (ICRS)"),
        c("dec_deg", "float64", "deg", "target declination (ICRS)"),
        c("z_target", "float64", "", "target redshift from the metadata"),
        c("nh_gal", "float64", "10**22 cm**-2", "Galactic column density from the metadata"),
        c(
            "r500_kpc",
            "float64",
            "kpc",
            "R500 of the aperture: given in the metadata or iterated from kT",
        ),
        c("exposure_s", "float64", "s", "clean exposure after flare filtering (epic: longest camera)"),
        c("exposure_raw_s", "float64", "s", "exposure before flare filtering"),
        c("flare_fraction", "float64", "", "fraction of exposure removed by flare filtering"),
        c("src_counts", "float64", "count", "counts in the source region"),
        c("bkg_counts", "float64", "count", "counts in the background region"),
        c("bkg_scale", "float64", "", "bkg scaling (BACKSCAL*EXPOSURE)_src / (BACKSCAL*EXPOSURE)_bkg"),
        c("net_counts", "float64", "count", "background-subtracted source counts"),
        c("net_counts_err", "float64", "count", "1-sigma error of net_counts"),
        c("snr", "float64", "", "signal-to-noise ratio net_counts / net_counts_err"),
        c("centre_ra", "float64", "deg", "source region centre right ascension"),
        c("centre_dec", "float64", "deg", "source region centre declination"),
        c("centre_x", "float64", "pix", "source region centre, sky X (physical)"),
        c("centre_y", "float64", "pix", "source region centre, sky Y (physical)"),
        c("r_src_arcmin", "float64", "arcmin", "source region radius"),
        c("bkg_inner_arcmin", "float64", "arcmin", "background annulus inner radius"),
        c("bkg_outer_arcmin", "float64", "arcmin", "background annulus outer radius"),
        c("n_ptsrc", "int64", "", "number of masked point sources"),
    ]
    for name, (unit, desc) in PARAMETERS.items():
        cols += _with_errors(name, unit, desc, f"1-sigma error of {name} (positive)")
        if name not in _NO_LEVEL_COLUMNS:
            for suffix, what in LEVEL_COLUMNS.values():
                cols += [
                    c(f"{name}_err_lo{suffix}", "float64", unit, f"lower {what} error of {name} (positive)"),
                    c(f"{name}_err_hi{suffix}", "float64", unit, f"upper {what} error of {name} (positive)"),
                ]
        cols += [
            c(f"{name}_frozen", "bool", "", f"{name} was frozen in the fit"),
            c(f"{name}_linked", "bool", "", f"{name} was linked across datasets"),
        ]
    cols += _with_errors(
        "cross_norm",
        "",
        "cross-normalisation constant of this camera/dataset",
        "1-sigma error of cross_norm (positive)",
    )
    cols += [
        c("fit_model", "str", "", "model expression (XSPEC syntax)"),
        c("fit_engine", "str", "", "fit engine: builtin | xspec | ..."),
        c("fit_stat", "str", "", "fit statistic: cstat | wstat | chi2 | ..."),
        c("statistic", "float64", "", "best-fit statistic value"),
        c("dof", "int64", "", "degrees of freedom"),
        c("stat_per_dof", "float64", "", "statistic / dof"),
        c(
            "fit_pvalue",
            "float64",
            "",
            "chi2 survival probability of (statistic, dof); approximate for cstat",
        ),
        c("converged", "bool", "", "the fit converged"),
        c("n_datasets", "int64", "", "number of spectra in the fit"),
        c("consistency_chi2", "float64", "", "chi2 of the per-ObsID values about the combined value"),
        c("consistency_dof", "int64", "", "degrees of freedom of consistency_chi2"),
        c("consistency_pvalue", "float64", "", "p-value of the consistency test"),
    ]
    return cols


def _with_errors(name: str, unit: str, description: str, error_of: str) -> list[Column]:
    """A float column and its ``_err_lo``/``_err_hi`` columns ("lower/upper " + ``error_of``)."""
    return [
        Column(name, "float64", unit, description),
        Column(f"{name}_err_lo", "float64", unit, f"lower {error_of}"),
        Column(f"{name}_err_hi", "float64", unit, f"upper {error_of}"),
    ]


def _flux_columns(bands: Iterable[Sequence[float]]) -> list[Column]:
    cols: list[Column] = []
    for band in bands:
        tag = band_tag(band)
        lo, hi = band
        for which in ("abs", "unabs"):
            label = "absorbed" if which == "abs" else "unabsorbed"
            desc = f"{label} flux {lo}-{hi} keV (observed)"
            cols += _with_errors(f"flux_{tag}_{which}", "erg cm-2 s-1", desc, f"error of {label} flux")
        desc = f"rest-frame {lo}-{hi} keV luminosity (unabsorbed) within r_src"
        cols += _with_errors(f"lum_{tag}", "erg s-1", desc, "error of the luminosity")
    return cols


def _aperture_columns() -> list[Column]:
    """R500 aperture, L500 and quality-flag columns (fits/fit.json ``aperture``; xmmcore.aperture)."""
    c = Column
    cols = [
        c(
            "r500_source",
            "str",
            "",
            "given (targets CSV / meta.json) | iterated (from kT) | none",
        ),
        c("r500_arcmin", "float64", "arcmin", "R500 on the sky"),
        c("r500_iterations", "int64", "", "R500 iterations (0 when given)"),
        c("r500_stop_reason", "str", "", "why the R500 iteration stopped"),
        c("r_src_kpc", "float64", "kpc", "source region radius at the target redshift"),
        c(
            "bkg_cluster_fraction",
            "float64",
            "",
            "cluster share of the background annulus (beta-model profile)",
        ),
        c(
            "bkg_oversubtraction",
            "float64",
            "",
            "fraction of the aperture's cluster counts removed as background",
        ),
        c(
            "aperture_lost_fraction",
            "float64",
            "",
            "fraction of the aperture's flux under masks and in chip gaps",
        ),
        c(
            "l500_correction",
            "float64",
            "",
            "L500 / aperture luminosity (beta model, masks, gaps, bkg)",
        ),
        c(
            "l500_profile_rel_err",
            "float64",
            "",
            "relative 1-sigma error of l500_correction from the SB profile",
        ),
    ]
    for tag, band in (("0p1_2p4", "0.1-2.4"), ("0p5_2p0", "0.5-2.0")):
        desc = f"rest-frame {band} keV luminosity within R500 (unabsorbed)"
        cols += _with_errors(f"L500_{tag}", "erg s-1", desc, f"1-sigma error of L500_{tag}")
    cols += [
        c("flag_unconstrained", "bool", "", "a free parameter's error exceeds 50% of its value"),
        c("flag_at_limit", "bool", "", "a free parameter sits at a limit"),
        c("flag_low_counts", "bool", "", "fewer than 500 source counts"),
        c("flag_not_converged", "bool", "", "the fit did not converge"),
        c(
            "flag_errors_covariance",
            "bool",
            "",
            "profile errors fell back to covariance",
        ),
        c("errors_fallback_reason", "str", "", "why the errors fell back to covariance"),
        c("flag_bkg_contamination", "bool", "", "bkg_cluster_fraction > 10%"),
        c("flag_aperture_lost", "bool", "", "aperture_lost_fraction > 10%"),
        c("flag_r500_not_converged", "bool", "", "the R500 iteration did not converge"),
        c("flag_profile_unconstrained", "bool", "", "l500_profile_rel_err > 15% or no profile covariance"),
        c("quality_flags", "str", "", "comma-separated names of the raised flags (empty = none)"),
    ]
    return cols


APERTURE_COLUMNS = tuple(col.name for col in _aperture_columns())


def _tail_columns() -> list[Column]:
    c = Column
    return [
        c("status", "str", "", "done | failed | partial (some steps missing)"),
        c("failed_step", "str", "", "first step that failed"),
        c("failure_reason", "str", "", "why it failed (error message)"),
        c("error_class", "str", "", "exception class of the failure"),
        c(
            "inputs_note",
            "str",
            "",
            "inputs unreadable since the steps finished (row from the records)",
        ),
        c("steps_done", "str", "", "comma-separated steps recorded as done"),
        c("config_hash", "str", "", "hash of the resolved configuration"),
        c("inputs_hash", "str", "", "inputs hash of the fit step (or last step)"),
        c("backend", "str", "", "reduction backend"),
        c("software_versions", "str", "", "JSON of software and calibration versions"),
        c(
            "code_version",
            "str",
            "",
            "git commit (+dirty) and sha256 of the code that made the steps",
        ),
        c("started_utc", "str", "", "first step start time (ISO 8601 UTC)"),
        c("finished_utc", "str", "", "last step end time (ISO 8601 UTC)"),
        c("wall_s", "float64", "s", "summed wall-clock time of the steps"),
        c("schema_version", "str", "", "catalogue schema version"),
    ]


def columns(flux_bands_kev: Iterable[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV) -> list[Column]:
    """Return the ordered catalogue columns for the given flux bands.

    Parameters
    ----------
    flux_bands_kev : iterable of (lo, hi)
        Energy bands [keV] of the flux and luminosity columns (``fit.flux_bands_kev`` of the config).
    """
    bands = [tuple(float(x) for x in b) for b in flux_bands_kev]
    return _base_columns() + _flux_columns(bands) + _aperture_columns() + _tail_columns()


def column_map(flux_bands_kev: Iterable[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV) -> dict[str, Column]:
    """Name -> :class:`Column` for :func:`columns`."""
    return {col.name: col for col in columns(flux_bands_kev)}


def empty_row(cols: Sequence[Column]) -> dict[str, Any]:
    """A row with every column at its missing value (and the schema version filled in)."""
    row = {col.name: col.missing for col in cols}
    row["schema_version"] = SCHEMA_VERSION
    return row


def conform(df, cols: Sequence[Column]):
    """Return ``df`` with exactly the schema columns, in order, cast to their dtypes.

    Missing columns are added at their missing value; NaN/None in integer, bool and string
    columns become the missing value of that column; columns not in the schema are dropped.
    Units and descriptions are put in ``df.attrs``.
    """
    import pandas as pd

    out: dict[str, Any] = {}
    n = len(df)
    for col in cols:
        values = df[col.name] if col.name in df.columns else pd.Series([col.missing] * n, index=df.index)
        if col.dtype == "str":
            # Columns read back from Parquet are already strings: converting them again costs most of a load.
            if not (
                pd.api.types.is_string_dtype(values.dtype)
                and values.dtype != object
                and not values.isna().any()
            ):
                values = (
                    values.astype(object).where(values.notna(), "").astype(str)
                )  # pandas >= 3: "str" dtype
        elif col.dtype == "float64":
            values = pd.to_numeric(values, errors="coerce").astype(np.float64)
        elif col.dtype == "int64":
            values = pd.to_numeric(values, errors="coerce").astype("Int64")
        else:
            if values.dtype != np.bool_:
                values = values.astype(object).where(values.notna(), False).astype(np.bool_)
        out[col.name] = values.reset_index(drop=True)
    result = pd.DataFrame(out, index=pd.RangeIndex(n))
    attach_attrs(result, cols)
    return result


def attach_attrs(df, cols: Sequence[Column]) -> None:
    """Put ``units``, ``descriptions`` and ``schema_version`` into ``df.attrs``."""
    df.attrs["units"] = {col.name: col.unit for col in cols}
    df.attrs["descriptions"] = {col.name: col.description for col in cols}
    df.attrs["dtypes"] = {col.name: col.dtype for col in cols}
    df.attrs["schema_version"] = SCHEMA_VERSION


def columns_from_attrs(df) -> list[Column]:
    """Rebuild the column list of a conformed DataFrame from its ``attrs`` (see :func:`attach_attrs`)."""
    units = df.attrs.get("units", {})
    descs = df.attrs.get("descriptions", {})
    dtypes = df.attrs.get("dtypes", {})
    cols = []
    for name in df.columns:
        if name not in dtypes:
            raise KeyError(
                f"column {name!r} has no schema dtype in DataFrame.attrs; pass it through conform()"
            )
        cols.append(Column(name, dtypes[name], units.get(name, ""), descs.get(name, "")))
    return cols
