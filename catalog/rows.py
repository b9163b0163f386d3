"""Catalogue rows built from the files under ``results/`` (no fitting, no reduction, no data/ access).

* :func:`rows_for_obsid`: the ``epic`` row and one row per camera of an ObsID from its step records,
  ``fits/fit.json`` and ``regions/regions.json``;
* :func:`joint_rows`: the rows of a joint fit (``results/joint/<target>.json``, written by
  ``record_joint`` of xmmcore's ``fitting/joint.py``), one per dataset with its cross-normalisation;
* :func:`combine_rows`: a ``kind="combined"`` row, the weighted mean (:func:`xmmcore.combine.weighted_mean`)
  of the per-ObsID rows of a target;
* :func:`build`: all of them as one DataFrame conformed to :mod:`catalog.schema`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xmmcore.combine import weighted_mean
from xmmcore.errors import InputDataError
from xmmcore.fsutil import read_json
from xmmcore.pipeline import STEPS
from xmmcore.products import ObsProducts, SurveyLayout
from xmmcore.provenance import code_version

from . import io
from .schema import (
    APERTURE_COLUMNS,
    CAMERA_ROWS,
    DEFAULT_FLUX_BANDS_KEV,
    LEVEL_COLUMNS,
    PARAMETER_ALIASES,
    PARAMETERS,
    band_tag,
    columns,
    conform,
    empty_row,
)

__all__ = [
    "build",
    "combine_rows",
    "fit_to_row",
    "joint_record_rows",
    "joint_rows",
    "load",
    "parse_band",
    "read_config",
    "rows_for_obsid",
]

JOINT_DIR = SurveyLayout.JOINT


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a catalogue (``.parquet``, ``.fits`` or a results folder) into a typed DataFrame.

    Units, descriptions, dtypes and the schema version are in ``df.attrs``
    (``df.attrs["units"]["kT"] == "keV"``).
    """
    return io.read_catalogue(path)


def read_config(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``results/config.resolved.yaml`` as a dict (empty if it is absent)."""
    return SurveyLayout(results_dir).read_resolved_config()


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, Mapping):
        for key in ("value", "val", "mean"):
            if key in value:
                return _num(value[key])
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first(d: Mapping[str, Any] | None, *names: str) -> Any:
    if not d:
        return None
    for name in names:
        if name in d and d[name] is not None:
            return d[name]
    return None


_BAND_RE = re.compile(r"([0-9]*\.?[0-9]+)\s*[-_,:]+\s*([0-9]*\.?[0-9]+)")


def parse_band(key: Any) -> tuple[float, float] | None:
    """Energy band of a flux key: ``"0.5-2.0"``, ``"0.5_2.0"``, ``"0p5_2p0"``, ``[0.5, 2.0]`` -> (0.5, 2.0)."""
    if isinstance(key, (list, tuple)) and len(key) == 2:
        return float(key[0]), float(key[1])
    text = str(key).replace("p", ".").replace("keV", "").replace("kev", "")
    m = _BAND_RE.search(text)
    return (float(m.group(1)), float(m.group(2))) if m else None


def _errs(entry: Mapping[str, Any], value: float, prefix: str = "") -> tuple[float, float]:
    """Positive (lower, upper) error magnitudes from a record's err_lo/err_hi offsets, else its sigma.

    Only the spellings the producers write (``FitResult.to_dict()`` of every engine) are read.
    """
    lo = _num(_first(entry, f"{prefix}err_lo"))
    hi = _num(_first(entry, f"{prefix}err_hi"))
    sigma = _num(_first(entry, f"{prefix}sigma"))
    if math.isnan(lo):
        lo = sigma
    if math.isnan(hi):
        hi = sigma
    return abs(lo), abs(hi)


def _param_key(full_name: str) -> str | None:
    short = full_name.split(".")[-1].strip().lower()
    for key, aliases in PARAMETER_ALIASES.items():
        if short in aliases or short == key.lower():
            return key
    return None


def _is_cross_norm(full_name: str) -> bool:
    comp, _, short = full_name.rpartition(".")
    comp = comp.lower()
    return comp.startswith(("constant", "const", "xnorm", "cross")) or short.lower() in (
        "factor",
        "cross_norm",
    )


def fit_to_row(
    fit: Mapping[str, Any], *, flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV
) -> tuple[dict[str, Any], dict[str, tuple[float, float, float]]]:
    """Map a ``FitResult.to_dict()`` record onto catalogue columns.

    Parameters
    ----------
    fit : mapping
        ``fits/fit.json`` content.
    flux_bands_kev : sequence of (lo, hi)
        Bands that have catalogue columns; fluxes in other bands are ignored.

    Returns
    -------
    row : dict
        Column -> value for the fit columns (generic parameters, statistic, fluxes, luminosities).
    cross_norms : dict
        Dataset name (e.g. ``"pn"``) -> (value, err_lo, err_hi) of its cross-normalisation constant.
    """
    from scipy import stats

    row: dict[str, Any] = {}
    cross: dict[str, tuple[float, float, float]] = {}
    params = fit.get("parameters") or []
    n_const = 0
    for par in params:
        name = str(par.get("name", ""))
        value = _num(par.get("value"))
        lo, hi = _errs(par, value)
        if _is_cross_norm(name):
            label = str(par.get("dataset") or par.get("dataset_name") or f"dataset{n_const}")
            n_const += 1
            cross[label] = (value, lo, hi)
            continue
        key = _param_key(name)
        if key is None or key in row:
            continue
        row[key] = value
        row[f"{key}_err_lo"], row[f"{key}_err_hi"] = lo, hi
        row[f"{key}_frozen"] = bool(par.get("frozen", False))
        row[f"{key}_linked"] = bool(par.get("linked", False))
        if row[f"{key}_frozen"]:
            row[f"{key}_err_lo"] = row[f"{key}_err_hi"] = math.nan
        for label, interval in (par.get("intervals") or {}).items():
            if label in LEVEL_COLUMNS and isinstance(interval, Mapping) and not row[f"{key}_frozen"]:
                suffix = LEVEL_COLUMNS[label][0]
                row[f"{key}_err_lo{suffix}"] = abs(_num(interval.get("err_lo")))
                row[f"{key}_err_hi{suffix}"] = abs(_num(interval.get("err_hi")))
    for key, value in (fit.get("cross_norm") or fit.get("cross_norms") or {}).items():
        if isinstance(value, Mapping):
            v = _num(value)
            cross[str(key)] = (v, *_errs(value, v))
        else:
            cross[str(key)] = (_num(value), math.nan, math.nan)
    for key, value in (fit.get("aperture") or {}).items():
        if key in APERTURE_COLUMNS or key == "r500_kpc":
            row[key] = int(value) if key == "r500_iterations" else value
    row["fit_model"] = str(fit.get("model") or fit.get("expression") or "")
    row["fit_engine"] = str(fit.get("engine") or "")
    row["fit_stat"] = str(fit.get("stat") or fit.get("stat_name") or "")
    statistic = _num(fit.get("statistic"))
    dof = fit.get("dof")
    dof_i = (
        int(dof)
        if isinstance(dof, (int, float)) and not isinstance(dof, bool) and math.isfinite(dof)
        else None
    )
    row["statistic"], row["dof"] = statistic, dof_i
    if dof_i is not None and dof_i > 0 and math.isfinite(statistic):
        row["stat_per_dof"] = statistic / dof_i
        row["fit_pvalue"] = float(stats.chi2.sf(statistic, dof_i))
    if fit.get("goodness_pvalue") is not None:
        row["fit_pvalue"] = _num(fit["goodness_pvalue"])
    row["converged"] = bool(fit.get("converged", False))
    n_ds = fit.get("n_datasets", len(fit.get("datasets") or []) or None)
    row["n_datasets"] = int(n_ds) if n_ds else None
    wanted = {band_tag(b): tuple(b) for b in flux_bands_kev}
    for key, entry in (fit.get("fluxes") or {}).items():
        band = parse_band(key)
        if band is None or band_tag(band) not in wanted or not isinstance(entry, Mapping):
            continue
        tag = band_tag(band)
        for which, short in (("absorbed", "abs"), ("unabsorbed", "unabs")):
            sub = entry.get(which)
            if isinstance(sub, Mapping):
                v = _num(sub)
                lo, hi = _errs(sub, v)
            else:
                v = _num(sub)
                lo, hi = _errs(entry, v, prefix=f"{which}_")
            row[f"flux_{tag}_{short}"] = v
            row[f"flux_{tag}_{short}_err_lo"], row[f"flux_{tag}_{short}_err_hi"] = lo, hi
    for key, entry in (fit.get("luminosities") or {}).items():
        band = parse_band(key)
        if band is None or band_tag(band) not in wanted:
            continue
        tag = band_tag(band)
        if isinstance(entry, Mapping):
            v = _num(_first(entry, "value"))
            lo, hi = _errs(entry, v)
        else:
            v, lo, hi = _num(entry), math.nan, math.nan
        row[f"lum_{tag}"], row[f"lum_{tag}_err_lo"], row[f"lum_{tag}_err_hi"] = v, lo, hi
    return row, cross


def _camera_block(summary: Mapping[str, Any] | None, camera: str) -> dict[str, Any]:
    if not summary:
        return {}
    for container in ("cameras", "per_camera", "camera"):
        sub = summary.get(container)
        if isinstance(sub, Mapping) and isinstance(sub.get(camera), Mapping):
            return dict(sub[camera])
    sub = summary.get(camera)
    return dict(sub) if isinstance(sub, Mapping) else {}


def _failed_cameras(steps: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Camera -> (step, reason) for cameras a step left out while going on with the others."""
    out: dict[str, tuple[str, str]] = {}
    for step in STEPS:
        summ = (steps.get(step) or {}).get("summary") or {}
        for key in ("failed_cameras", "left_out"):
            for cam, why in (summ.get(key) or {}).items():
                out.setdefault(str(cam), (step, str(why)))
    return out


def _cameras_in(*summaries: Mapping[str, Any] | None, extra: Iterable[str] = ()) -> list[str]:
    extra = set(extra)
    return [cam for cam in CAMERA_ROWS if cam in extra or any(_camera_block(s, cam) for s in summaries)]


def _counts_columns(spec: Mapping[str, Any]) -> dict[str, float]:
    src = _num(_first(spec, "src_counts"))
    bkg = _num(_first(spec, "bkg_counts"))
    src_bs = _num(_first(spec, "src_backscal"))
    bkg_bs = _num(_first(spec, "bkg_backscal"))
    src_exp = _num(_first(spec, "src_exposure_s"))
    bkg_exp = _num(_first(spec, "bkg_exposure_s"))
    if math.isnan(bkg_exp):
        bkg_exp = src_exp
    scale = _num(_first(spec, "bkg_scale"))
    if math.isnan(scale) and src_bs > 0 and bkg_bs > 0:
        exp_ratio = src_exp / bkg_exp if (src_exp > 0 and bkg_exp > 0) else 1.0
        scale = src_bs / bkg_bs * exp_ratio
    out = {"src_counts": src, "bkg_counts": bkg, "bkg_scale": scale}
    net = _num(_first(spec, "net_counts"))
    if math.isnan(net) and not math.isnan(src):
        net = src - (bkg * scale if not (math.isnan(bkg) or math.isnan(scale)) else 0.0)
    var = src + (bkg * scale * scale if not (math.isnan(bkg) or math.isnan(scale)) else 0.0)
    err = _num(_first(spec, "net_counts_err"))
    if math.isnan(err):
        err = math.sqrt(var) if var > 0 else math.nan
    out["net_counts"], out["net_counts_err"] = net, err
    out["snr"] = net / err if err and err > 0 else math.nan
    if not math.isnan(src_exp):
        out["exposure_s"] = src_exp
    return out


def _cfg_path(value: Any, results_dir: Path) -> Path | None:
    """A path from the resolved config: as written, else relative to the folder holding ``results/``."""
    if not value:
        return None
    path = Path(str(value))
    if path.exists() or path.is_absolute():
        return path
    return results_dir.parent / path


def _meta_for(
    obsid: str, obs_dir: Path, steps: Mapping[str, Mapping[str, Any]], cfg: Mapping[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for rec in steps.values():
        summ = rec.get("summary") or {}
        if isinstance(summ.get("meta"), Mapping):
            meta.update(summ["meta"])
    # The metadata the steps ran with (targets CSV over meta.json, read once by the pipeline) is in
    # every step record; the fit's wins. Only records written before that fall back to the files,
    # read by the pipeline's own reader with the same precedence.
    recorded: list[Mapping[str, Any]] = [
        m
        for m in (rec.get("meta") for rec in (steps.get(s) for s in ("fit", *STEPS)) if rec)
        if isinstance(m, Mapping)
    ]
    if recorded:
        return {**meta, **recorded[0]}
    from xmmcore.observation import read_meta, read_targets_csv

    csv = _cfg_path(cfg.get("targets_csv"), obs_dir.parent)
    if csv is not None and csv.exists():
        for k, v in read_targets_csv(csv).get(obsid, {}).items():
            meta.setdefault(k, v)
    data_dir = _cfg_path(cfg.get("data_dir"), obs_dir.parent)
    candidates = [obs_dir / "meta.json"] + ([data_dir / obsid / "meta.json"] if data_dir else [])
    for candidate in candidates:
        if candidate.exists():
            for k, v in read_meta(candidate).items():
                meta.setdefault(k, v)
    return meta


def _load_steps(obs_dir: Path) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for path in sorted(ObsProducts(obs_dir).steps_dir.glob("*.json")):
        rec = read_json(path)
        steps[str(rec.get("step") or path.stem)] = rec
    return steps


def _provenance(steps: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    ordered = [steps[s] for s in STEPS if s in steps] + [r for s, r in steps.items() if s not in STEPS]
    if not ordered:
        row["status"] = "pending"
        return row
    failed = [r for r in ordered if r.get("status") == "failed"]
    done = [str(r.get("step")) for r in ordered if r.get("status") == "done"]
    row["steps_done"] = ",".join(done)
    if failed:
        first = failed[0]
        row["status"] = "failed"
        row["failed_step"] = str(first.get("step") or "")
        row["failure_reason"] = str(first.get("reason") or first.get("error") or "")
        row["error_class"] = str(first.get("error_class") or first.get("exception") or "")
    elif all(s in done for s in STEPS):
        row["status"] = "done"
    else:
        row["status"] = "partial"
        missing = [s for s in STEPS if s not in done]
        row["failure_reason"] = "steps not recorded as done: " + ", ".join(missing)
    records, versions = _record_columns(ordered, steps.get("fit") or ordered[-1])
    row.update(records)
    filt_summary = (steps.get("filter") or {}).get("summary") or {}
    row["backend"] = str(filt_summary.get("backend") or _first(versions, "backend") or "")
    return row


def _record_columns(
    ordered: Sequence[Mapping[str, Any]], last: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Columns that step records give a row (software and code versions, config and inputs hashes, times),
    and the merged ``versions``; ``last`` is the record whose inputs hash the row carries."""
    versions: dict[str, Any] = {}
    for r in ordered:
        versions.update(r.get("versions") or {})
    started = [str(r["started"]) for r in ordered if r.get("started")]
    finished = [str(r["finished"]) for r in ordered if r.get("finished")]
    walls = [_num(r.get("wall_s")) for r in ordered]
    walls = [w for w in walls if not math.isnan(w)]
    cols = {
        "software_versions": json.dumps(versions, sort_keys=True),
        "code_version": _code_versions(ordered),
        "config_hash": str(_first(ordered[-1], "config_hash") or _first(ordered[0], "config_hash") or ""),
        "inputs_hash": str(last.get("inputs_hash") or ""),
        "started_utc": min(started) if started else "",
        "finished_utc": max(finished) if finished else "",
        "wall_s": float(sum(walls)) if walls else math.nan,
    }
    return cols, versions


def _code_versions(ordered: Sequence[Mapping[str, Any]]) -> str:
    """The code that made the steps: one :func:`~xmmcore.provenance.code_version` text, or ``step: text; ...``
    when steps were made by different code (``pipeline.reuse_across_code``); ``""`` for records without one."""
    texts = [(str(r.get("step") or ""), code_version(r.get("code"))) for r in ordered]
    distinct = list(dict.fromkeys(t for _, t in texts))
    if len(distinct) <= 1:
        return distinct[0] if distinct else ""
    return "; ".join(f"{step}: {text or 'unknown'}" for step, text in texts)


def _region_columns(regions: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in (
        "centre_ra",
        "centre_dec",
        "centre_x",
        "centre_y",
        "r_src_arcmin",
        "bkg_inner_arcmin",
        "bkg_outer_arcmin",
    ):
        out[col] = _num(regions.get(col))
    pts = regions.get("point_sources")
    out["n_ptsrc"] = len(pts) if isinstance(pts, list) else None
    return out


def _meta_columns(meta: Mapping[str, Any], obsid: str) -> dict[str, Any]:
    return {
        "target": str(_first(meta, "name", "target", "object") or ""),
        "ra_deg": _num(_first(meta, "ra", "ra_deg")),
        "dec_deg": _num(_first(meta, "dec", "dec_deg")),
        "z_target": _num(_first(meta, "z", "redshift")),
        "nh_gal": _num(_first(meta, "nh", "nh_gal")),
        "r500_kpc": _num(_first(meta, "r500_kpc", "r500")),
        "obsids": obsid,
        "n_obs": 1,
    }


#: ``results/<obsid>/inputs_error.json`` (written by ``survey.steps`` when the inputs of a finished ObsID
#: cannot be read any more; the catalogue reads results, never the survey's code).
INPUTS_ERROR_NAME = "inputs_error.json"


def _inputs_note(obs_dir: Path, steps: Mapping[str, Mapping[str, Any]]) -> str:
    """'<file> unreadable since the <last done step>: <reason>' when the survey noted bad inputs, else ''."""
    try:
        note = json.loads((obs_dir / INPUTS_ERROR_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(note, dict):
        return ""
    reason = str(note.get("reason") or "inputs unreadable")
    order = [*STEPS, *sorted(set(steps) - set(STEPS))]
    done = [name for name in order if (steps.get(name) or {}).get("status") == "done"]
    since = f" since the {done[-1]}" if done else ""
    what = "meta.json" if "meta.json" in reason else "inputs"
    when = f" (noted {note['time']})" if note.get("time") else ""
    return f"{what} unreadable{since}: {reason}{when}"


def rows_for_obsid(
    results_dir: str | os.PathLike[str],
    obsid: str,
    *,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
    cfg: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Catalogue rows (plain dicts) of one ObsID: an ``epic`` row plus one row per camera.

    Reads ``results/<obsid>/steps/*.json``, ``regions/regions.json`` and ``fits/fit.json``;
    absent files give missing values, never an exception. A failed ObsID still gets its rows with
    ``status="failed"`` and the reason.
    """
    results_dir = Path(results_dir)
    cfg = dict(cfg) if cfg is not None else read_config(results_dir)
    obs_dir = results_dir / obsid
    products = ObsProducts(obs_dir)
    steps = _load_steps(obs_dir)
    cols = columns(flux_bands_kev)
    base = empty_row(cols)
    base.update({"obsid": obsid, "kind": "obs", "region": "src"})
    base.update(_meta_columns(_meta_for(obsid, obs_dir, steps, cfg), obsid))
    base.update(_provenance(steps))
    reg_path = products.regions_json
    if products.fit_json.exists():
        # an R500 iteration fitted the regions of its own folder (fit.json aperture.r500_products_dir)
        iterated = (read_json(products.fit_json).get("aperture") or {}).get("r500_products_dir")
        if iterated and ObsProducts(products.outdir / str(iterated)).regions_json.exists():
            reg_path = ObsProducts(products.outdir / str(iterated)).regions_json
    regions = read_json(reg_path) if reg_path.exists() else (steps.get("regions", {}).get("summary") or {})
    base.update(_region_columns(regions))
    base["inputs_note"] = _inputs_note(obs_dir, steps)

    filt = (steps.get("filter") or {}).get("summary") or {}
    spec = (steps.get("spectra") or {}).get("summary") or {}
    failed_cams = _failed_cameras(steps)
    cams = _cameras_in(filt, spec, extra=failed_cams)

    fit_path: Path | None = products.fit_json if products.fit_json.exists() else None
    rows: list[dict[str, Any]] = []
    for _ in (fit_path,):
        region = "src"
        fit_row: dict[str, Any] = {}
        cross: dict[str, tuple[float, float, float]] = {}
        if fit_path is not None:
            fit_row, cross = fit_to_row(read_json(fit_path), flux_bands_kev=flux_bands_kev)
        epic = dict(base, **fit_row, camera="epic", region=region)
        if epic["fit_engine"] == "" and fit_path is None and epic["status"] == "done":
            epic["status"] = "partial"
            epic["failure_reason"] = "no fits/fit.json"
        cam_rows = []
        for cam in cams:
            row = dict(base, camera=cam, region=region)
            fblock = _camera_block(filt, cam)
            row["exposure_s"] = _num(_first(fblock, "exposure_s"))
            row["exposure_raw_s"] = _num(_first(fblock, "exposure_raw_s"))
            row["flare_fraction"] = _num(_first(fblock, "flare_fraction"))
            counts = _counts_columns(_camera_block(spec, cam))
            if not math.isnan(row["exposure_s"]):
                counts.pop("exposure_s", None)
            row.update(counts)
            value = cross.get(cam) or next((v for k, v in cross.items() if cam in k.lower()), None)
            if value is not None:
                row["cross_norm"], row["cross_norm_err_lo"], row["cross_norm_err_hi"] = value
            for key in ("fit_model", "fit_engine", "fit_stat"):
                row[key] = epic[key]
            if cam in failed_cams:
                row["status"] = "failed"
                row["failed_step"], row["failure_reason"] = failed_cams[cam]
                row["error_class"] = (
                    row["failure_reason"].split(":", 1)[0] if ":" in row["failure_reason"] else ""
                )
            cam_rows.append(row)
        if cam_rows:
            for col in ("src_counts", "bkg_counts", "net_counts"):
                vals = [r[col] for r in cam_rows if not math.isnan(r[col])]
                epic[col] = float(sum(vals)) if vals else math.nan
            errs = [r["net_counts_err"] for r in cam_rows if not math.isnan(r["net_counts_err"])]
            epic["net_counts_err"] = math.sqrt(sum(e * e for e in errs)) if errs else math.nan
            if epic["net_counts_err"] > 0:
                epic["snr"] = epic["net_counts"] / epic["net_counts_err"]
            exps = [r["exposure_s"] for r in cam_rows if not math.isnan(r["exposure_s"])]
            epic["exposure_s"] = max(exps) if exps else math.nan
            fracs = [r["flare_fraction"] for r in cam_rows if not math.isnan(r["flare_fraction"])]
            epic["flare_fraction"] = float(np.mean(fracs)) if fracs else math.nan
        if math.isnan(_num(epic.get("z"))) and not math.isnan(epic["z_target"]):
            epic["z"], epic["z_frozen"] = epic["z_target"], True
        rows.append(epic)
        rows.extend(cam_rows)
    return rows


def _input_name(item: Any) -> tuple[str, str]:
    """(obsid, dataset name) of a joint-fit input: a ``JointInput`` or its JSON form in the record."""
    if isinstance(item, Mapping):
        obsid, cam = str(item.get("obsid", "")), str(item.get("camera", ""))
        return obsid, str(item.get("name") or f"{obsid}_{cam}")
    return str(item.obsid), str(item.name)


def joint_rows(
    fit: Mapping[str, Any],
    *,
    target: str,
    inputs: Sequence[Any],
    kind: str = "joint",
    meta: Mapping[str, Any] | None = None,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
) -> list[dict[str, Any]]:
    """Catalogue rows of a joint fit: one ``epic`` row plus one row per dataset (its cross-normalisation).

    ``inputs`` are the fit's datasets in order (xmmcore's ``JointInput`` objects or the ``inputs`` of the
    joint record). Per-dataset rows have ``camera = "<obsid>_<camera>"``; all rows have ``kind`` (``"joint"``)
    and ``is_joint=True``.
    """
    cols = columns(flux_bands_kev)
    fit_row, cross = fit_to_row(fit, flux_bands_kev=flux_bands_kev)
    named = [_input_name(i) for i in inputs]
    obsids = sorted({o for o, _ in named})
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
        for d in (fit.get("datasets") or [n for _, n in named])
    ]
    ordered = list(cross.items())
    for k, (obsid, name) in enumerate(named):
        row = dict(
            base,
            camera=name,
            obsids=obsid,
            n_obs=1,
            fit_model=epic["fit_model"],
            fit_engine=epic["fit_engine"],
            fit_stat=epic["fit_stat"],
        )
        value = cross.get(name) or cross.get(names[k] if k < len(names) else "")
        if value is None and len(ordered) == len(named):
            value = ordered[k][1]
        if value is None and len(ordered) == len(named) - 1 and k > 0:
            value = ordered[k - 1][1]
        if value is None and k == 0:
            value = (1.0, math.nan, math.nan)  # reference dataset: constant frozen at 1
        if value is not None:
            row["cross_norm"], row["cross_norm_err_lo"], row["cross_norm_err_hi"] = value
        rows.append(row)
    return rows


def combine_rows(
    df: pd.DataFrame,
    *,
    target: str,
    params: Iterable[str] = ("kT", "abund"),
    obsids: Iterable[str] | None = None,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
) -> dict[str, Any]:
    """Combine the per-ObsID ``epic`` rows of one target into a ``kind="combined"`` catalogue row.

    Each parameter is the weighted mean of the ObsIDs' values (:func:`xmmcore.combine.weighted_mean`); the
    consistency columns hold the test of the first parameter in ``params`` (usually kT).

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
    for col in ("code_version", "config_hash", "backend"):  # provenance of the ObsIDs combined
        if col in rows:
            row[col] = "; ".join(dict.fromkeys(str(v) for v in rows[col] if not _blank(v)))
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


def _combined_row(
    obs_rows: Sequence[Mapping[str, Any]], target: str, bands: Sequence[Sequence[float]]
) -> dict[str, Any] | None:
    """Weighted mean of the per-ObsID fits (``kind="combined"``) when at least two ObsIDs were fitted."""
    if not obs_rows:
        return None
    df = conform(pd.DataFrame(list(obs_rows)), columns(bands))
    fitted = df[(df["camera"] == "epic") & (df["status"] == "done") & (df["kT"] > 0)]
    if len(fitted) < 2:
        return None
    return combine_rows(
        df,
        target=target,
        obsids=list(fitted["obsid"]),
        params=("kT", "abund", "gamma", "nH"),
        flux_bands_kev=bands,
    )


def joint_record_rows(
    results_dir: str | os.PathLike[str],
    rec: Mapping[str, Any],
    *,
    flux_bands_kev: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS_KEV,
    obs_rows: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    cfg: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one joint record (``results/joint/<name>.json``): joint, combined and stack rows.

    A record without a fit (missing inputs, or a mosaic-only record of the multi-observation path) has no rows.
    ``obs_rows`` (ObsID -> its rows) avoids re-reading ObsIDs already built.
    """
    fit = rec.get("fit") or {}
    if not fit:
        return []
    results_dir = Path(results_dir)
    name = str(rec.get("name") or "")
    meta = rec.get("meta") or {}
    inputs = list(rec.get("inputs") or [])
    rows = joint_rows(fit, target=name, inputs=inputs, meta=meta, flux_bands_kev=flux_bands_kev)
    per_obs: list[Mapping[str, Any]] = []
    for obsid in rec.get("obsids") or sorted({_input_name(i)[0] for i in inputs}):
        if obs_rows is not None and obsid in obs_rows:
            per_obs.extend(obs_rows[obsid])
        elif ObsProducts(results_dir / obsid).steps_dir.is_dir():
            per_obs.extend(rows_for_obsid(results_dir, obsid, flux_bands_kev=flux_bands_kev, cfg=cfg))
    combined = _combined_row(per_obs, name, flux_bands_kev)
    if combined is not None:
        rows.append(combined)
    stack = rec.get("stack") or {}
    if stack.get("fit"):
        srows = joint_rows(
            stack["fit"],
            target=name,
            inputs=stack.get("inputs") or [],
            kind="stack",
            meta=meta,
            flux_bands_kev=flux_bands_kev,
        )
        obsids = ",".join(sorted({_input_name(i)[0] for i in inputs}))
        for row in srows:
            row["obsids"], row["n_obs"] = obsids, len(obsids.split(","))
        rows += srows
    return rows


def _joint_rows(
    results_dir: Path,
    bands: Sequence[Sequence[float]],
    obs_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    cfg: Mapping[str, Any],
    skipped: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``results/joint/*.json``; an unreadable file raises, or with ``skipped`` is left out and named."""
    rows: list[dict[str, Any]] = []
    layout = SurveyLayout(results_dir)
    for path in layout.joint_records():  # hidden files are never records
        try:
            these = joint_record_rows(
                results_dir, read_json(path), flux_bands_kev=bands, obs_rows=obs_rows, cfg=cfg
            )
            prov = _joint_provenance(ObsProducts(layout.joint_outdir(path.stem)).step_record("joint"))
            for row in these:
                if row.get("kind") != "combined":  # a combined row keeps its ObsIDs' provenance
                    row.update({k: v for k, v in prov.items() if _blank(row.get(k))})
            rows.extend(these)
        except _UNREADABLE as exc:
            if skipped is None:
                raise
            skipped[f"{JOINT_DIR}/{path.name}"] = f"{type(exc).__name__}: {exc}"
    return rows


def _joint_provenance(step_record: Path) -> dict[str, Any]:
    """Provenance columns of a joint fit from its step record (``joint/<slug>/steps/joint.json``);
    ``{}`` when it has none (a joint record written outside a survey run)."""
    try:
        rec = read_json(step_record)
    except (OSError, InputDataError):
        return {}
    out, _ = _record_columns([rec], rec)
    out["steps_done"] = "joint" if rec.get("status") == "done" else ""
    return {k: v for k, v in out.items() if not _blank(v)}


def _blank(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


#: What an unreadable or malformed record raises while its rows are built.
_UNREADABLE = (InputDataError, OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError)


def _obs_dirs(results_dir: Path) -> list[str]:
    """ObsID folders of ``results/``: valid ObsID names (never ``logs``, ``joint``...) with records."""
    from xmmcore.observation import validate_obsid

    out = []
    for p in results_dir.iterdir():
        try:
            validate_obsid(p.name)
        except InputDataError:
            continue
        if p.is_dir() and (ObsProducts(p).steps_dir.is_dir() or ObsProducts(p).fits_dir.is_dir()):
            out.append(p.name)
    return sorted(out)


def build(
    results_dir: str | os.PathLike[str],
    *,
    obsids: Iterable[str] | None = None,
    flux_bands_kev: Sequence[Sequence[float]] | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Build the catalogue DataFrame from a results folder.

    Parameters
    ----------
    results_dir : path-like
        ``results/`` with ``<obsid>/steps/*.json`` etc.
    obsids : iterable of str, optional
        Restrict to these ObsIDs (default: every ObsID folder with a ``steps/`` or ``fits/`` folder).
    flux_bands_kev : sequence of (lo, hi), optional
        Flux bands with columns (default: ``fit.flux_bands_kev`` of ``config.resolved.yaml``, else the
        schema default).
    strict : bool
        ``False`` (the default, as the survey and ``xmm-survey catalog build`` do): every ObsID whose
        records are good gets its rows and each other one a single ``status="failed"`` row with the
        reason; unreadable joint records are left out; ``df.attrs["skipped"]`` maps them to their
        reasons. ``True``: raise ``InputDataError`` (naming the file) for the first unreadable record.
        Either way an ObsID whose inputs went bad after its steps finished (a ``meta.json`` typo) keeps
        its rows from the finished records, with the reason in ``inputs_note`` (and
        ``df.attrs["inputs_notes"]``: ObsID -> note).

    Returns
    -------
    pandas.DataFrame
        Conformed to :func:`catalog.schema.columns`; units in ``df.attrs["units"]``. Joint, combined and
        stack rows of the joint records under ``results/joint/*.json`` are included.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputDataError("results folder does not exist", results_dir)
    cfg = read_config(results_dir)
    if flux_bands_kev is None:
        flux_bands_kev = (cfg.get("fit") or {}).get("flux_bands_kev") or DEFAULT_FLUX_BANDS_KEV
    bands = [tuple(float(x) for x in b) for b in flux_bands_kev]
    ids = list(obsids) if obsids is not None else _obs_dirs(results_dir)
    rows: list[dict[str, Any]] = []
    obs_rows: dict[str, list[dict[str, Any]]] = {}
    cols = columns(bands)
    skipped: dict[str, str] = {}
    for obsid in ids:
        try:
            obs_rows[obsid] = rows_for_obsid(results_dir, obsid, flux_bands_kev=bands, cfg=cfg)
        except _UNREADABLE as exc:
            if strict:
                raise
            # One ObsID's unreadable records never cost the others their rows: it gets one row saying why.
            reason = f"records unreadable: {type(exc).__name__}: {exc}"
            skipped[obsid] = reason
            row = empty_row(cols)
            row.update(
                obsid=obsid,
                obsids=obsid,
                kind="obs",
                camera="epic",
                region="src",
                status="failed",
                failure_reason=reason,
                error_class=type(exc).__name__,
            )
            rows.append(row)
            continue
        rows.extend(obs_rows[obsid])
    rows.extend(_joint_rows(results_dir, bands, obs_rows, cfg, None if strict else skipped))
    df = conform(pd.DataFrame(rows, columns=[c.name for c in cols]) if rows else pd.DataFrame(), cols)
    df.attrs["skipped"] = skipped
    if "inputs_note" in df:
        noted = df[(df["inputs_note"] != "") & (df["camera"] == "epic") & (df["kind"] == "obs")]
        df.attrs["inputs_notes"] = dict(zip(noted["obsid"], noted["inputs_note"]))
    return df
