"""Survey figures: L E(z)^-1 - T relation with a BCES fit and scatter, kT/abundance/flux/z histograms, sky map,
exposure vs S/N.

The L-T fit is done in log space, ``log10(L / L0) = A + B log10(T / T0)`` with the BCES estimators of
Akritas & Bershady (1996, ApJ 470, 706), errors on A and B by bootstrap, plus the intrinsic scatter in
log10 L (total scatter minus the measurement errors).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xmmcore.errors import InputDataError
from xmmcore.fsutil import atomic_path
from xmmcore.observation import CAMERAS
from xmmcore.plots import readable_log_axis

__all__ = [
    "BcesFit",
    "bces",
    "fit_lt",
    "plot_exposure_snr",
    "plot_histograms",
    "plot_lt",
    "plot_sky",
    "readable_log_axis",
    "survey_figures",
    "efunc",
]

LN10 = math.log(10.0)


@dataclass(frozen=True)
class BcesFit:
    """A BCES power-law fit ``y = intercept + slope * x`` (logs).

    Attributes
    ----------
    method : str
        ``"orthogonal"``, ``"y|x"``, ``"x|y"`` or ``"bisector"``.
    slope, slope_err, intercept, intercept_err : float
        Best fit and bootstrap 1-sigma errors.
    scatter_total, scatter_intrinsic : float
        RMS of the y residuals, and that minus the measurement errors (dex).
    n : int
        Number of points.
    x_pivot, y_pivot : float
        Pivots subtracted before fitting (log10 T0, log10 L0).
    """

    method: str
    slope: float
    slope_err: float
    intercept: float
    intercept_err: float
    scatter_total: float
    scatter_intrinsic: float
    n: int
    x_pivot: float = 0.0
    y_pivot: float = 0.0


_METHODS = ("y|x", "x|y", "bisector", "orthogonal")


def _bces_slopes(
    x: np.ndarray, y: np.ndarray, ex: np.ndarray, ey: np.ndarray, cov: np.ndarray
) -> dict[str, float]:
    xm, ym = x.mean(), y.mean()
    c12 = np.mean((x - xm) * (y - ym)) - np.mean(cov)
    v1 = np.mean((x - xm) ** 2) - np.mean(ex**2)
    v2 = np.mean((y - ym) ** 2) - np.mean(ey**2)
    b1 = c12 / v1
    b2 = v2 / c12
    b3 = (b1 * b2 - 1.0 + math.sqrt((1.0 + b1**2) * (1.0 + b2**2))) / (b1 + b2)
    b4 = 0.5 * ((b2 - 1.0 / b1) + math.copysign(1.0, c12) * math.sqrt(4.0 + (b2 - 1.0 / b1) ** 2))
    return {"y|x": b1, "x|y": b2, "bisector": b3, "orthogonal": b4}


def bces(x, y, ex, ey, *, cov=None, method: str = "orthogonal", n_boot: int = 1000, seed: int = 1) -> BcesFit:
    """BCES linear regression with errors in both variables.

    Parameters
    ----------
    x, y : array-like
        Data (e.g. log10 T, log10 L).
    ex, ey : array-like
        1-sigma measurement errors of x and y.
    cov : array-like, optional
        Covariance of the x and y errors per point (0 by default).
    method : str
        ``"orthogonal"`` (default), ``"y|x"``, ``"x|y"`` or ``"bisector"``.
    n_boot : int
        Bootstrap resamples for the slope/intercept errors.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}")
    x, y, ex, ey = (np.asarray(a, dtype=float) for a in (x, y, ex, ey))
    cov = np.zeros_like(x) if cov is None else np.asarray(cov, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(ex) & np.isfinite(ey)
    x, y, ex, ey, cov = x[ok], y[ok], ex[ok], ey[ok], cov[ok]
    if x.size < 3:
        raise InputDataError(f"BCES needs at least 3 points with finite values and errors, got {x.size}")
    slope = _bces_slopes(x, y, ex, ey, cov)[method]
    intercept = y.mean() - slope * x.mean()
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        if np.ptp(x[idx]) == 0:
            continue
        with np.errstate(all="ignore"):
            try:
                b = _bces_slopes(x[idx], y[idx], ex[idx], ey[idx], cov[idx])[method]
            except (ZeroDivisionError, ValueError):
                continue
        if np.isfinite(b):
            boots.append((b, y[idx].mean() - b * x[idx].mean()))
    arr = np.array(boots) if boots else np.full((1, 2), np.nan)
    resid = y - intercept - slope * x
    total = float(np.sqrt(np.mean(resid**2)))
    intrinsic = float(np.sqrt(max(np.mean(resid**2) - np.mean(ey**2 + slope**2 * ex**2), 0.0)))
    # half the 16-84 % range: robust against the rare degenerate resample
    spread = 0.5 * (np.nanpercentile(arr, 84, axis=0) - np.nanpercentile(arr, 16, axis=0))
    return BcesFit(
        method,
        float(slope),
        float(spread[0]),
        float(intercept),
        float(spread[1]),
        total,
        intrinsic,
        int(x.size),
    )


def _lt_data(df: pd.DataFrame, lum_col: str, om0: float = 0.3):
    from .query import science_rows

    rows = science_rows(df)
    rows = rows[
        ((rows["kind"] == "obs") | (rows["kind"] == "joint")) & (rows["kT"] > 0) & (rows[lum_col] > 0)
    ]
    # one point per cluster: a joint fit replaces its ObsIDs, else the ObsID with the most net counts
    joint_rows = rows[rows["kind"] == "joint"]
    covered = {o for obsids in joint_rows["obsids"] for o in obsids.split(",") if o}
    obs = rows[(rows["kind"] == "obs") & ~rows["obsid"].isin(covered)]
    key = obs["target"].where(obs["target"] != "", obs["obsid"])
    obs = (
        obs.assign(_key=key)
        .sort_values("net_counts", ascending=False)
        .drop_duplicates("_key")
        .drop(columns="_key")
    )
    rows = pd.concat([obs, joint_rows])
    # Self-similar evolution: L E(z)^-1 against T, E(z) = H(z)/H0 (flat LambdaCDM, Om0 of the catalogue's fits)
    inv_ez = 1.0 / efunc(_redshifts(rows), om0=om0)
    rows = rows.assign(
        _lum_ez=rows[lum_col] * inv_ez,
        _lum_ez_err_lo=rows[f"{lum_col}_err_lo"] * inv_ez,
        _lum_ez_err_hi=rows[f"{lum_col}_err_hi"] * inv_ez,
    )
    t, L = rows["kT"].to_numpy(), rows["_lum_ez"].to_numpy()
    et = 0.5 * (rows["kT_err_lo"].to_numpy() + rows["kT_err_hi"].to_numpy())
    eL = 0.5 * (rows["_lum_ez_err_lo"].to_numpy() + rows["_lum_ez_err_hi"].to_numpy())
    eL = np.where(np.isfinite(eL), eL, 0.0)
    return rows, t, L, et, eL


def efunc(z: Any, *, om0: float = 0.3) -> np.ndarray:
    """``E(z) = H(z) / H0`` of a flat LambdaCDM cosmology (astropy's ``FlatLambdaCDM.efunc``)."""
    from astropy.cosmology import FlatLambdaCDM

    return np.asarray(FlatLambdaCDM(H0=70.0, Om0=om0).efunc(np.asarray(z, dtype=float)), dtype=float)


def _redshifts(rows: pd.DataFrame) -> np.ndarray:
    """Fitted (or frozen) redshift, else the target's; 0 (E = 1) where neither is known."""
    z = rows["z"].where(np.isfinite(rows["z"]), rows["z_target"]).to_numpy(dtype=float)
    return np.where(np.isfinite(z), z, 0.0)


def fit_lt(
    df: pd.DataFrame,
    *,
    lum_col: str = "lum_0p1_2p4",
    t0_kev: float = 5.0,
    l0: float = 1e44,
    method: str = "orthogonal",
    n_boot: int = 1000,
) -> BcesFit:
    """Fit ``L E(z)^-1 / l0 = 10^A (kT / t0_kev)^B`` to the catalogue's fitted rows with BCES (log space).

    ``E(z) = H(z)/H0`` removes the self-similar evolution, so clusters at different redshifts share one relation.
    """
    _, t, L, et, eL = _lt_data(df, lum_col)
    x, y = np.log10(t / t0_kev), np.log10(L / l0)
    ex, ey = et / (t * LN10), eL / (L * LN10)
    fit = bces(x, y, ex, ey, method=method, n_boot=n_boot)
    return BcesFit(**{**fit.__dict__, "x_pivot": math.log10(t0_kev), "y_pivot": math.log10(l0)})


def _save(fig, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _figure(figsize=(6.0, 4.5)):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def plot_lt(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    lum_col: str = "lum_0p1_2p4",
    method: str = "orthogonal",
) -> tuple[Path, BcesFit | None]:
    """L E(z)^-1 - T diagram with error bars and the BCES power law (when >= 3 clusters have kT and L).

    Luminosities are shown in units of 1e44 erg/s, so both log axes carry plain numbers.
    """
    rows, t, L, _, _ = _lt_data(df, lum_col)
    unit = 1e44
    fig, ax = _figure((6.4, 4.8))
    if t.size:
        ax.errorbar(
            t,
            L / unit,
            xerr=[rows["kT_err_lo"].fillna(0), rows["kT_err_hi"].fillna(0)],
            yerr=[rows["_lum_ez_err_lo"].fillna(0) / unit, rows["_lum_ez_err_hi"].fillna(0) / unit],
            fmt="o",
            ms=5,
            color="C0",
            ecolor="0.55",
            elinewidth=1,
            capsize=2,
            label=f"clusters ({t.size})",
        )
    fit = None
    if t.size >= 3:
        fit = fit_lt(df, lum_col=lum_col, method=method)
        tt = np.geomspace(t.min() / 1.2, t.max() * 1.2, 50)
        ll = 10 ** (fit.y_pivot + fit.intercept + fit.slope * (np.log10(tt) - fit.x_pivot)) / unit
        ax.plot(
            tt,
            ll,
            "C3-",
            label=(
                f"BCES {fit.method}: slope {fit.slope:.2f} $\\pm$ {fit.slope_err:.2f}, "
                f"$\\sigma_{{int}}$ = {fit.scatter_intrinsic:.2f} dex"
            ),
        )
        ax.fill_between(
            tt,
            ll * 10**-fit.scatter_intrinsic,
            ll * 10**fit.scatter_intrinsic,
            color="C3",
            alpha=0.15,
            label="intrinsic scatter",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("temperature kT [keV]")
    l500 = lum_col.startswith("L500_")
    lo, hi = (float(v) for v in lum_col.replace("L500_", "").replace("lum_", "").replace("p", ".").split("_"))
    where = "500," if l500 else ""
    ax.set_ylabel(f"L$_{{{where}{lo:g}-{hi:g}\\,keV}}$ E(z)$^{{-1}}$ [10$^{{44}}$ erg s$^{{-1}}$]")
    ax.set_title(
        f"Luminosity-temperature relation ({lo:g}-{hi:g} keV, rest frame, {'within R500' if l500 else 'aperture'})"
    )
    if t.size:
        readable_log_axis(ax)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, which="major", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no clusters with kT and L", transform=ax.transAxes, ha="center")
    return _save(fig, path), fit


#: Histogram panels: column -> (axis label, log axis, title).
HISTOGRAM_PANELS: dict[str, tuple[str, bool, str]] = {
    "kT": ("temperature kT [keV]", False, "Temperature"),
    "abund": ("abundance [solar]", False, "Metal abundance"),
    "flux_0p5_2p0_abs": ("F$_{0.5-2\\,keV}$ (absorbed) [erg cm$^{-2}$ s$^{-1}$]", True, "Flux 0.5-2 keV"),
    "z": ("redshift z", False, "Redshift"),
}


def plot_histograms(
    df: pd.DataFrame, path: str | os.PathLike[str], *, columns: tuple[str, ...] = tuple(HISTOGRAM_PANELS)
) -> Path:
    """Histograms of the fitted rows' temperature, abundance, flux and redshift.

    Only columns with values get a panel (a frozen or absent abundance draws none, instead of an empty
    frame); axes carry the quantity and its unit, not the column name.
    """
    import matplotlib.pyplot as plt

    from .query import science_rows

    rows = science_rows(df)
    panels = []
    for col in columns:
        if col not in rows.columns:
            continue
        label, log, title = HISTOGRAM_PANELS.get(col, (col, False, col))
        vals = rows[col].to_numpy(dtype=float)
        frozen = rows.get(f"{col}_frozen")
        if frozen is not None and col != "z":
            vals = vals[~frozen.to_numpy(dtype=bool)]
        vals = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
        if vals.size:
            panels.append((vals, label, log, title))
    _figure()
    plt.close()
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1) + 0.6, 3.6), squeeze=False
    )
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no fitted values yet", transform=axes[0, 0].transAxes, ha="center")
        axes[0, 0].set_axis_off()
    for ax, (vals, label, log, title) in zip(axes[0], panels):
        bins: Any = (
            np.geomspace(vals.min() / 1.1, vals.max() * 1.1, 12) if log else min(12, max(vals.size, 3))
        )
        ax.hist(vals, bins=bins, color="C0", edgecolor="k")
        if log:
            ax.set_xscale("log")
            readable_log_axis(ax, "x")
        ax.set_xlabel(label)
        ax.set_ylabel("number of fits")
        ax.set_title(f"{title} ({vals.size})", fontsize=10)
        ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)


def plot_sky(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Sky distribution (Aitoff, equatorial) of the ObsIDs, coloured by status."""
    import matplotlib.pyplot as plt

    rows = df[(df["kind"] == "obs") & (df["camera"] == "epic")]
    _figure()
    plt.close()
    fig = plt.figure(figsize=(7, 4))
    ax = fig.add_subplot(111, projection="aitoff")
    for status, colour in (("done", "C0"), ("partial", "C1"), ("failed", "C3"), ("pending", "0.5")):
        sel = rows[rows["status"] == status]
        ra = sel["ra_deg"].where(np.isfinite(sel["ra_deg"]), sel["centre_ra"]).to_numpy(dtype=float)
        dec = sel["dec_deg"].where(np.isfinite(sel["dec_deg"]), sel["centre_dec"]).to_numpy(dtype=float)
        ok = np.isfinite(ra) & np.isfinite(dec)
        if ok.any():
            lon = -np.radians(((ra[ok] + 180.0) % 360.0) - 180.0)  # RA increasing to the left
            ax.scatter(lon, np.radians(dec[ok]), s=25, color=colour, label=f"{status} ({ok.sum()})")
    ax.grid(True, alpha=0.4)
    ax.set_xticklabels([f"{h}h" for h in (14, 16, 18, 20, 22, 0, 2, 4, 6, 8, 10)], fontsize=7)
    ax.set_title("Sky distribution (RA, Dec)", pad=18)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_exposure_snr(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Clean exposure vs signal-to-noise per camera, with the sqrt(t) expectation through the median."""
    rows = df[(df["kind"] == "obs") & (df["camera"] != "epic")]
    fig, ax = _figure()
    for k, cam in enumerate(CAMERAS):
        sel = rows[(rows["camera"] == cam) & (rows["exposure_s"] > 0) & (rows["snr"] > 0)]
        if len(sel):
            ax.scatter(sel["exposure_s"] / 1e3, sel["snr"], s=20, color=f"C{k}", label=cam)
    good = rows[(rows["exposure_s"] > 0) & (rows["snr"] > 0)]
    if len(good) >= 2:
        t = np.geomspace(good["exposure_s"].min(), good["exposure_s"].max(), 20)
        norm = np.median(good["snr"] / np.sqrt(good["exposure_s"]))
        ax.plot(t / 1e3, norm * np.sqrt(t), "k--", lw=1, label=r"$\propto\sqrt{t}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clean exposure [ks]")
    ax.set_ylabel("signal-to-noise of the net counts")
    ax.set_title("Exposure vs signal-to-noise, per camera")
    if len(good):
        readable_log_axis(ax)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no per-camera counts", transform=ax.transAxes, ha="center")
    return _save(fig, path)


def survey_figures(df: pd.DataFrame, outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Make all survey figures in ``outdir``; returns name -> path (and ``"lt_fit"`` -> BcesFit or None)."""
    outdir = Path(outdir)
    # L500 (rest frame, within R500); catalogues without it fall back to the aperture luminosity
    has_l500 = "L500_0p1_2p4" in df.columns and bool((df["L500_0p1_2p4"] > 0).any())
    lt_path, lt_fit = plot_lt(df, outdir / "lt.png", lum_col="L500_0p1_2p4" if has_l500 else "lum_0p1_2p4")
    return {
        "lt": lt_path,
        "lt_fit": lt_fit,
        "hist": plot_histograms(df, outdir / "histograms.png"),
        "sky": plot_sky(df, outdir / "sky.png"),
        "exposure_snr": plot_exposure_snr(df, outdir / "exposure_snr.png"),
    }
