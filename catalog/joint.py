"""Multi-observation analysis: joint fits across ObsIDs x cameras, and combination of independent results.

* :func:`joint_fit` fits all spectra of a target at once through the fit-engine API
  (``xmmcore.fitting.engines.get_engine(name).fit_files``): physical parameters are shared (linked),
  each dataset gets a free cross-normalisation constant (``cross_norm=True``); any engine works.
* :func:`weighted_mean` combines independent measurements with asymmetric errors (Barlow 2004,
  "linear sigma" likelihood, physics/0406120 sec. 3.4) and tests their consistency (chi2, p-value).
* :func:`run_joint` collects the spectra of several ObsIDs from ``results/``, fits them jointly and
  records the catalogue rows (``kind="joint"``) in ``results/joint/<target>.json``; when inputs are missing it
  says exactly which files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from xmmcore.errors import FitError, InputDataError, XmmSurveyError
from xmmcore.fitting.models import auto_settings
from xmmcore.fsutil import atomic_write_json

from .schema import DEFAULT_FLUX_BANDS_KEV, PARAMETERS, columns, empty_row

__all__ = [
    "Combined",
    "JointInput",
    "auto_settings",
    "collect_inputs",
    "combine_rows",
    "data_inputs",
    "joint_fit",
    "joint_rows",
    "record_rows",
    "run_joint",
    "weighted_mean",
]


@dataclass(frozen=True)
class Combined:
    """A combined value with asymmetric errors and the consistency test of its inputs.

    Attributes
    ----------
    value, err_lo, err_hi : float
        Maximum-likelihood value and its positive 1-sigma errors (delta chi2 = 1).
    chi2 : float
        Chi2 of the inputs about ``value`` (with their asymmetric errors).
    dof : int
        ``n - 1``.
    pvalue : float
        Probability of a chi2 at least this large if all inputs measure the same value.
    n : int
        Number of inputs used (finite value and errors).
    """

    value: float
    err_lo: float
    err_hi: float
    chi2: float
    dof: int
    pvalue: float
    n: int


def _chi2_fn(x: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    # Barlow's linear-sigma model: sigma_i(mu) = s_i + s'_i (mu - x_i), which passes through
    # sigma_+ at x+sigma_+ and sigma_- at x-sigma_-; floored so it never reaches zero.
    s = 2.0 * hi * lo / (hi + lo)
    sp = (hi - lo) / (hi + lo)
    floor = 0.05 * np.minimum(lo, hi)

    def chi2(mu: float) -> float:
        sig = np.maximum(s + sp * (mu - x), floor)
        return float(np.sum(((mu - x) / sig) ** 2))

    return chi2


def weighted_mean(
    values: Sequence[float], err_lo: Sequence[float], err_hi: Sequence[float] | None = None
) -> Combined:
    """Combine independent measurements with asymmetric errors; test their consistency.

    Parameters
    ----------
    values : sequence of float
        Measurements (same unit).
    err_lo, err_hi : sequence of float
        Positive lower/upper 1-sigma errors (``err_hi`` defaults to ``err_lo``: symmetric errors).

    Returns
    -------
    Combined
        For symmetric errors this is exactly the inverse-variance weighted mean with
        ``1/sqrt(sum 1/sigma^2)`` errors and the usual chi2.

    Raises
    ------
    InputDataError
        No measurement has a finite value and positive errors.
    """
    x = np.asarray(values, dtype=float)
    lo = np.abs(np.asarray(err_lo, dtype=float))
    hi = lo if err_hi is None else np.abs(np.asarray(err_hi, dtype=float))
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0)
    x, lo, hi = x[ok], lo[ok], hi[ok]
    if x.size == 0:
        raise InputDataError("weighted mean: no measurement with a finite value and positive errors")
    chi2 = _chi2_fn(x, lo, hi)
    w = 1.0 / (0.5 * (lo + hi)) ** 2
    lo_bound, hi_bound = float(np.min(x - 5 * lo)), float(np.max(x + 5 * hi))
    res = optimize.minimize_scalar(
        chi2, bounds=(lo_bound, hi_bound), method="bounded", options={"xatol": 1e-10 * (hi_bound - lo_bound)}
    )
    mu = float(res.x)
    cmin = chi2(mu)
    half = 1.0 / math.sqrt(float(np.sum(w)))

    def crossing(direction: float) -> float:
        step = half
        for _ in range(60):
            if chi2(mu + direction * step) - cmin > 1.0:
                break
            step *= 2.0
        root = optimize.brentq(
            lambda d: chi2(mu + direction * d) - cmin - 1.0, 0.0, step, xtol=1e-12 * max(1, step)
        )
        return float(root)

    dof = int(x.size - 1)
    pvalue = float(stats.chi2.sf(cmin, dof)) if dof > 0 else 1.0
    return Combined(mu, crossing(-1.0), crossing(+1.0), cmin, dof, pvalue, int(x.size))


def combine_rows(
    df,
    *,
    target: str,
    params: Iterable[str] = ("kT", "abund"),
    obsids: Iterable[str] | None = None,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
) -> dict[str, Any]:
    """Combine the per-ObsID ``epic`` rows of one target into a ``kind="combined"`` catalogue row.

    The consistency columns hold the test of the first parameter in ``params`` (usually kT).

    Parameters
    ----------
    df : pandas.DataFrame
        The catalogue.
    target : str
        Name that goes into ``obsid``/``target`` of the new row.
    params : iterable of str
        Generic parameter columns to combine.
    obsids : iterable of str, optional
        ObsIDs to use (default: rows whose ``target`` equals ``target``).
    """
    sel = (df["kind"] == "obs") & (df["camera"] == "epic") & (df["status"] == "done")
    sel &= df["obsid"].isin(list(obsids)) if obsids is not None else (df["target"] == target)
    rows = df[sel]
    if rows.empty:
        raise InputDataError(f"combine: no fitted ObsID rows for target {target!r}")
    row = empty_row(columns(flux_bands_kev))
    row.update(
        obsid=target,
        target=target,
        camera="epic",
        region="src",
        kind="combined",
        is_joint=True,
        obsids=",".join(rows["obsid"]),
        n_obs=len(rows),
        status="done",
        fit_model=rows["fit_model"].iloc[0],
        fit_engine="weighted_mean",
    )
    for col in ("ra_deg", "dec_deg", "z_target", "nh_gal", "r500_kpc"):
        row[col] = float(rows[col].iloc[0])
    row["exposure_s"] = float(rows["exposure_s"].sum())
    first = True
    for p in params:
        if p not in PARAMETERS:
            raise InputDataError(f"combine: {p!r} is not a catalogue parameter ({', '.join(PARAMETERS)})")
        try:
            comb = weighted_mean(rows[p], rows[f"{p}_err_lo"], rows[f"{p}_err_hi"])
        except InputDataError:
            continue
        row[p], row[f"{p}_err_lo"], row[f"{p}_err_hi"] = comb.value, comb.err_lo, comb.err_hi
        if first:
            row["consistency_chi2"], row["consistency_dof"] = comb.chi2, comb.dof
            row["consistency_pvalue"] = comb.pvalue
            first = False
    return row


@dataclass(frozen=True)
class JointInput:
    """One spectrum of a joint fit (mirrors ``xmmcore.fitting.engines.FitInput``)."""

    obsid: str
    camera: str
    pha: Path
    rmf: Path | None = None
    arf: Path | None = None
    bkg: Path | None = None

    @property
    def name(self) -> str:
        """Dataset name ``<obsid>_<camera>``."""
        return f"{self.obsid}_{self.camera}"


def collect_inputs(
    results_dir: str | os.PathLike[str],
    obsids: Iterable[str],
    *,
    cameras: Iterable[str] = ("pn", "mos1", "mos2"),
) -> tuple[list[JointInput], list[str]]:
    """Find the spectra and responses of each ObsID x camera under ``results/<obsid>/spectra/``.

    Returns
    -------
    inputs : list of JointInput
        Complete sets (source PHA + RMF + ARF; background optional).
    missing : list of str
        One line per incomplete ObsID x camera naming the missing files.
    """
    results_dir = Path(results_dir)
    inputs: list[JointInput] = []
    missing: list[str] = []
    for obsid in obsids:
        spec = results_dir / obsid / "spectra"
        for cam in cameras:
            files = {
                k: spec / f"{cam}{suffix}"
                for k, suffix in (("pha", "_src.pha"), ("bkg", "_bkg.pha"), ("rmf", ".rmf"), ("arf", ".arf"))
            }
            if not files["pha"].exists() and not any(p.exists() for p in files.values()):
                missing.append(f"{obsid} {cam}: no spectra (camera not observed or not extracted) in {spec}")
                continue
            absent = [str(p) for k, p in files.items() if k != "bkg" and not p.exists()]
            if absent:
                missing.append(f"{obsid} {cam}: missing " + ", ".join(absent))
                continue
            inputs.append(
                JointInput(
                    obsid,
                    cam,
                    files["pha"],
                    files["rmf"],
                    files["arf"],
                    files["bkg"] if files["bkg"].exists() else None,
                )
            )
    return inputs, missing


def data_inputs(
    data_dir: str | os.PathLike[str], *, cameras: Iterable[str] = ("pn", "mos1", "mos2")
) -> tuple[dict[str, dict[str, dict[str, Path | None]]], list[str]]:
    """Inventory of a multi-ObsID data folder (``data/<obsid>/...``) for the multi-observation path.

    Returns
    -------
    inventory : dict
        ObsID -> camera -> {"events", "rmf", "arf", "expmap"} paths (``None`` where absent); cameras
        without an event list are left out.
    missing : list of str
        Exact statements of what is missing for a joint spectral fit, one per ObsID x camera, e.g.
        ``"0201901401 mos1: no RMF (*.rmf) and no ARF (*.arf) under a907/0201901401"``.
    """
    from xmmcore.observation import discover, list_obsids

    data_dir = Path(data_dir)
    inventory: dict[str, dict[str, dict[str, Path | None]]] = {}
    missing: list[str] = []
    for obsid in list_obsids(data_dir):
        obs = discover(data_dir, obsid)
        inventory[obsid] = {}
        for cam in cameras:
            events = obs.event_files.get(cam)
            if events is None:
                missing.append(f"{obsid} {cam}: no event list under {data_dir.name}/{obsid}")
                continue
            expmaps = sorted(p for p in (data_dir / obsid).rglob(f"*{cam}*expmap*.fits"))
            entry = {
                "events": Path(events),
                "rmf": obs.rmf_files.get(cam),
                "arf": obs.arf_files.get(cam),
                "expmap": expmaps[0] if expmaps else None,
            }
            inventory[obsid][cam] = entry
            lack = [f"no {k.upper()} (*.{k})" for k in ("rmf", "arf") if entry[k] is None]
            if lack:
                missing.append(f"{obsid} {cam}: " + " and ".join(lack) + f" under {data_dir.name}/{obsid}")
    return inventory, missing


def _fit_input(item: JointInput):
    from xmmcore.fitting.engines import FitInput

    return FitInput(pha=item.pha, rmf=item.rmf, arf=item.arf, bkg=item.bkg, name=item.name)


def joint_fit(
    inputs: Sequence[JointInput],
    model: str,
    *,
    engine: str = "builtin",
    stat: str = "cstat",
    notice_kev: tuple[float, float] = (0.5, 7.0),
    set_params: Sequence[str] = (),
    errors: str | None = "covariance",
    redshift: float | None = None,
    cosmology: Any = None,
    flux_bands_kev: Sequence[Sequence[float]] = (),
    abund: str = "angr",
    workdir: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Fit all ``inputs`` simultaneously: linked physical parameters, one free constant per dataset.

    Parameters
    ----------
    inputs : sequence of JointInput
        Spectra (one per ObsID x camera); the first dataset's constant is the reference (frozen at 1).
    model : str
        XSPEC-style expression without the constant, e.g. ``"phabs*powerlaw"``.
    engine : str
        Fit engine name (``builtin``, ``xspec``, ...).
    stat, notice_kev, set_params, errors, redshift, cosmology, flux_bands_kev, abund, workdir, log
        Passed to ``fit_files``.

    Returns
    -------
    dict
        ``FitResult.to_dict()`` plus ``"datasets"`` (the dataset names in order) and ``"obsids"``.
    """
    from xmmcore.fitting.engines import get_engine

    if not inputs:
        raise InputDataError("joint fit: no input spectra")
    eng = get_engine(engine)
    try:
        result = eng.fit_files(
            [_fit_input(i) for i in inputs],
            model,
            stat=stat,
            notice_kev=tuple(notice_kev),
            set_params=tuple(set_params),
            abund=abund,
            errors=errors,
            redshift=redshift,
            cosmology=cosmology,
            flux_bands_kev=tuple(tuple(b) for b in flux_bands_kev),
            cross_norm=len(inputs) > 1,
            workdir=workdir,
            log=log,
        )
    except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError) as exc:
        if isinstance(exc, XmmSurveyError):
            raise
        names = ", ".join(i.name for i in inputs)
        raise FitError(f"joint fit of {names} with {model!r} failed: {type(exc).__name__}: {exc}") from exc
    out = dict(result.to_dict())
    out.setdefault("datasets", [{"name": i.name} for i in inputs])
    out["obsids"] = sorted({i.obsid for i in inputs})
    return out


def joint_rows(
    fit: Mapping[str, Any],
    *,
    target: str,
    inputs: Sequence[JointInput],
    kind: str = "joint",
    meta: Mapping[str, Any] | None = None,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
) -> list[dict[str, Any]]:
    """Catalogue rows of a joint fit: one ``epic`` row plus one row per dataset (its cross-normalisation).

    Per-dataset rows have ``camera = "<obsid>_<camera>"``; all rows have ``kind`` (``"joint"``) and
    ``is_joint=True``.
    """
    from . import fit_to_row

    cols = columns(flux_bands_kev)
    fit_row, cross = fit_to_row(fit, flux_bands_kev=flux_bands_kev)
    obsids = sorted({i.obsid for i in inputs})
    base = empty_row(cols)
    base.update(
        obsid=target,
        target=target,
        region="src",
        kind=kind,
        is_joint=True,
        obsids=",".join(obsids),
        n_obs=len(obsids),
        status="done" if fit.get("converged", True) else "failed",
    )
    if base["status"] == "failed":
        base["failure_reason"] = "joint fit did not converge"
    for key, col in (("ra", "ra_deg"), ("dec", "dec_deg"), ("z", "z_target"), ("nh", "nh_gal")):
        if meta and meta.get(key) is not None:
            base[col] = float(meta[key])
    epic = {**base, **fit_row, "camera": "epic", "n_datasets": len(inputs)}
    rows = [epic]
    names = [
        d.get("name", "") if isinstance(d, Mapping) else str(d)
        for d in (fit.get("datasets") or [i.name for i in inputs])
    ]
    ordered = list(cross.items())
    for k, item in enumerate(inputs):
        row = dict(
            base,
            camera=item.name,
            obsids=item.obsid,
            n_obs=1,
            fit_model=epic["fit_model"],
            fit_engine=epic["fit_engine"],
            fit_stat=epic["fit_stat"],
        )
        value = cross.get(item.name) or cross.get(names[k] if k < len(names) else "")
        if value is None and len(ordered) == len(inputs):
            value = ordered[k][1]
        if value is None and len(ordered) == len(inputs) - 1 and k > 0:
            value = ordered[k - 1][1]
        if value is None and k == 0:
            value = (1.0, math.nan, math.nan)  # reference dataset: constant frozen at 1
        if value is not None:
            row["cross_norm"], row["cross_norm_err_lo"], row["cross_norm_err_hi"] = value
        rows.append(row)
    return rows


def record_rows(
    results_dir: str | os.PathLike[str],
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    fit: Mapping[str, Any] | None = None,
    missing: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write ``results/joint/<name>.json`` (rows picked up by :func:`catalog.build`), atomically."""
    from xmmcore.observation import validate_obsid

    validate_obsid(name)
    path = Path(results_dir) / "joint" / f"{name}.json"
    atomic_write_json(
        path,
        {
            "name": name,
            "rows": list(rows),
            "fit": dict(fit or {}),
            "missing": list(missing),
            "notes": list(notes),
        },
    )
    return path


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _target_meta(results_dir: Path, obsids: Sequence[str]) -> dict[str, Any]:
    """Target metadata (ra, dec, z, nh) from the first ObsID's catalogue rows."""
    from . import rows_for_obsid

    for obsid in obsids:
        if not (results_dir / obsid).is_dir():
            continue
        row = rows_for_obsid(results_dir, obsid)[0]
        meta = {
            "ra": row["ra_deg"],
            "dec": row["dec_deg"],
            "z": row["z_target"],
            "nh": row["nh_gal"],
            "name": row["target"],
        }
        return {
            k: v for k, v in meta.items() if v not in ("",) and not (isinstance(v, float) and math.isnan(v))
        }
    return {}


def _combined_row(results_dir: Path, target: str, obsids: Sequence[str]) -> dict[str, Any] | None:
    """Weighted mean of the per-ObsID fits (``kind="combined"``) when at least two ObsIDs were fitted."""
    import pandas as pd

    from . import rows_for_obsid
    from .schema import conform

    rows = [r for o in obsids if (results_dir / o).is_dir() for r in rows_for_obsid(results_dir, o)]
    if not rows:
        return None
    df = conform(pd.DataFrame(rows), columns())
    fitted = df[(df["camera"] == "epic") & (df["status"] == "done") & (df["kT"] > 0)]
    if len(fitted) < 2:
        return None
    return combine_rows(
        df, target=target, obsids=list(fitted["obsid"]), params=("kT", "abund", "gamma", "nH")
    )


def run_joint(
    results_dir: str | os.PathLike[str],
    *,
    target: str,
    obsids: Sequence[str],
    model: str | None = None,
    engine: str = "builtin",
    cameras: Sequence[str] = ("pn", "mos1", "mos2"),
    stat: str = "cstat",
    notice_kev: tuple[float, float] | None = None,
    auto_set: bool = True,
    stack: bool = False,
    **fit_options: Any,
) -> dict[str, Any]:
    """Collect, fit jointly and record a target observed in several ObsIDs.

    Parameters
    ----------
    results_dir : path-like
        Survey results (``<obsid>/spectra/<cam>_src.pha``, ``<cam>_bkg.pha``, ``<cam>.rmf``, ``<cam>.arf``).
    target : str
        Name of the joint rows (``obsid`` column).
    obsids : sequence of str
        ObsIDs to combine.
    model : str, optional
        Model expression (default: ``fit.model`` of ``config.resolved.yaml``).
    engine, cameras, stat : str
        Fit engine, cameras to use, statistic.
    notice_kev : (float, float), optional
        Fit band (default: ``fit.notice_kev`` of the config, else 0.5-7 keV).
    auto_set : bool
        Freeze Redshift / absorber nH at the target's z / nh (from the ObsIDs' metadata).
    stack : bool
        Also stack the spectra per camera (:func:`catalog.stack.stack_spectra`), fit the stacks jointly across
        cameras and record them as ``kind="stack"`` rows.
    **fit_options
        Passed to :func:`joint_fit` (``errors``, ``set_params``, ``flux_bands_kev``, ...).

    Returns
    -------
    dict
        ``{"target", "rows", "fit", "missing", "left_out", "notes", "path"}``. Incomplete ObsID x camera sets
        are left out of the fit and listed in ``left_out`` (and the record's notes); when no set is complete
        nothing is fitted and ``missing`` lists the files (the record is still written so the report can
        show it). A weighted mean
        of the per-ObsID fits (``kind="combined"``) is added when at least two ObsIDs have fits.
    """
    from . import read_config

    results_dir = Path(results_dir)
    fit_cfg = read_config(results_dir).get("fit") or {}
    model = model or fit_cfg.get("model") or "wabs*zbremss"
    notice = tuple(notice_kev or fit_cfg.get("notice_kev") or (0.5, 7.0))
    fit_options.setdefault("flux_bands_kev", fit_cfg.get("flux_bands_kev") or DEFAULT_FLUX_BANDS_KEV)
    bands = [tuple(b) for b in fit_options["flux_bands_kev"]]
    inputs, incomplete = collect_inputs(results_dir, obsids, cameras=cameras)
    if not inputs:
        missing = incomplete or [f"no ObsID given for {target}"]
        path = record_rows(results_dir, target, [], missing=missing)
        return {"target": target, "rows": [], "fit": {}, "missing": missing, "left_out": [], "path": path}
    # like the per-ObsID fit step: fit every complete spectrum set, name the ones left out
    notes: list[str] = [f"{target}: left out of the joint fit: {m}" for m in incomplete]
    meta = _target_meta(results_dir, obsids)
    settings = list(fit_options.pop("set_params", None) or fit_cfg.get("set") or ())
    if auto_set:
        settings = auto_settings(model, meta) + settings
    if _finite(meta.get("z")):
        fit_options.setdefault("redshift", float(meta["z"]))
    fit = joint_fit(
        inputs, model, engine=engine, stat=stat, notice_kev=notice, set_params=settings, **fit_options
    )
    rows = joint_rows(fit, target=target, inputs=inputs, meta=meta, flux_bands_kev=bands)
    combined = _combined_row(results_dir, target, obsids)
    if combined is not None:
        rows.append(combined)
    if stack:
        try:
            rows += _stack_rows(
                results_dir,
                target,
                inputs,
                model,
                engine=engine,
                stat=stat,
                notice_kev=notice,
                set_params=settings,
                meta=meta,
                bands=bands,
                **fit_options,
            )
        except (FitError, InputDataError) as exc:  # the joint fit stands on its own
            notes.append(f"{target}: stacked-spectra fit failed: {exc}")
    path = record_rows(results_dir, target, rows, fit=fit, notes=notes)
    return {
        "target": target,
        "rows": rows,
        "fit": fit,
        "missing": [],
        "left_out": incomplete,
        "notes": notes,
        "path": path,
    }


def _stack_rows(
    results_dir: Path,
    target: str,
    inputs: Sequence[JointInput],
    model: str,
    *,
    meta: Mapping[str, Any],
    bands: Sequence[Sequence[float]],
    **fit_kw: Any,
) -> list[dict[str, Any]]:
    from .stack import stack_spectra, write_stack

    stacked: list[JointInput] = []
    for cam in dict.fromkeys(i.camera for i in inputs):
        items = [i for i in inputs if i.camera == cam]
        if len(items) < 2:
            continue
        bkgs = [i.bkg for i in items if i.bkg is not None]
        st = stack_spectra(
            [i.pha for i in items],
            rmfs=[i.rmf for i in items if i.rmf is not None],
            arfs=[i.arf for i in items if i.arf is not None],
            bkgs=bkgs if len(bkgs) == len(items) else None,
        )
        paths = write_stack(st, results_dir / "joint" / f"{target}_stack", stem=cam)
        stacked.append(JointInput("stack", cam, paths["pha"], paths["rmf"], paths["arf"], paths.get("bkg")))
    if not stacked:
        return []
    fit = joint_fit(stacked, model, **fit_kw)
    rows = joint_rows(fit, target=target, inputs=stacked, kind="stack", meta=meta, flux_bands_kev=bands)
    obsids = ",".join(sorted({i.obsid for i in inputs}))
    for row in rows:
        row["obsids"], row["n_obs"] = obsids, len(obsids.split(","))
    return rows
