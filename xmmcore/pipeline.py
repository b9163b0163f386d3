"""The per-ObsID chain of steps: filter -> regions -> spectra -> fit.

This is the only module the orchestrator (``survey``) calls for science. Each step reads the
products of the previous ones from ``results/<obsid>/``, writes its own atomically, and returns a
JSON-able summary that the orchestrator records in ``results/<obsid>/steps/<step>.json``.

A camera that fails inside a step (bad event file, no counts) is recorded in the summary under
``failed_cameras`` and the step goes on with the others; the step fails only when no camera is left.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, FitError, InputDataError, ToolError
from .fitsconf import fits_conf_snapshot
from .fsutil import atomic_write_json, atomic_write_text, read_json
from .observation import CAMERAS, Observation
from .products import ObsProducts
from .settings import FitSettings, RegionSettings, SpectraSettings, config_value, cosmology_from_config

__all__ = ["STEPS", "auto_settings", "fit_inputs", "run_step", "step_inputs"]

STEPS = ("filter", "regions", "spectra", "fit")


def _cameras(obs: Observation, cfg: dict[str, Any]) -> list[str]:
    wanted = list(config_value(cfg, "cameras") or [])
    cams = [c for c in obs.cameras if c in wanted]
    if not cams:
        raise InputDataError(
            f"no event list for the configured cameras {wanted} (found {list(obs.cameras)})", obs.root
        )
    return cams


def _camera_outputs(summary: dict[str, Any]) -> list[str]:
    """Products one camera's backend summary declares (``outputs`` list or ``products`` mapping)."""
    if isinstance(summary.get("outputs"), (list, tuple)):
        return [str(p) for p in summary["outputs"]]
    return [str(p) for p in (summary.get("products") or {}).values()]


def _existing(paths: list[str] | list[Path]) -> list[str]:
    return [str(p) for p in paths if Path(p).is_file()]


def _per_camera(
    cams: list[str], work: Callable[[str], dict[str, Any]], log: logging.Logger, what: str
) -> dict[str, Any]:
    """Run ``work(camera)`` for each camera; a camera failing with a data/tool error does not stop the others.

    The summary's ``outputs`` lists the products the cameras that succeeded declared.
    """
    done: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for cam in cams:
        try:
            done[cam] = work(cam)
        except ConfigError:
            raise  # a missing tool or bad setting is the user's to fix, not this ObsID's data
        except (InputDataError, ToolError) as exc:
            log.warning("%s %s failed: %s", what, cam, exc)
            failed[cam] = f"{type(exc).__name__}: {exc}"
    if not done:
        detail = "; ".join(f"{c}: {r}" for c, r in failed.items())
        raise InputDataError(f"{what} failed for every camera ({detail})")
    outputs = [p for cam_summary in done.values() for p in _camera_outputs(cam_summary)]
    return {"cameras": done, "failed_cameras": failed, "outputs": outputs}


def _filter(obs: Observation, outdir: Path, cfg: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    from .backends import get_backend

    backend = get_backend(cfg["backend"]["reduction"])
    summary = _per_camera(
        _cameras(obs, cfg), lambda cam: backend.filter_camera(obs, cam, outdir, cfg, log=log), log, "filter"
    )
    summary["backend"] = backend.name
    summary["versions"] = backend.versions()
    # Nothing found on disk is dropped silently: exposures not used and cameras left out, with reasons.
    summary["other_exposures"] = {c: [list(x) for x in v] for c, v in obs.other_exposures.items()}
    summary["skipped_cameras"] = dict(obs.skipped_cameras)
    summary["modes"] = dict(obs.modes)
    return summary


def _regions(obs: Observation, outdir: Path, cfg: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    from .regions import make_regions

    return make_regions(obs, outdir, RegionSettings.from_config(cfg), log=log)


def _load_regions(outdir: Path) -> dict[str, Any]:
    path = ObsProducts(outdir).regions_json
    if not path.exists():
        raise InputDataError("regions step has not produced regions.json", path)
    return read_json(path)


def _clean_cameras(obs: Observation, outdir: Path, cfg: dict[str, Any]) -> list[str]:
    products = ObsProducts(outdir)
    cams = [c for c in _cameras(obs, cfg) if products.clean_events(c).exists()]
    if not cams:
        raise InputDataError(
            "no cleaned event list: the filter step failed for every camera", products.events_dir
        )
    return cams


def _spectra(obs: Observation, outdir: Path, cfg: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    from .backends import get_backend

    backend = get_backend(cfg["backend"]["reduction"])
    regions = _load_regions(outdir)
    return _per_camera(
        _clean_cameras(obs, outdir, cfg),
        lambda cam: backend.spectra_camera(obs, cam, outdir, regions, cfg, log=log),
        log,
        "spectra",
    )


def fit_inputs(outdir: Path, cameras: list[str]) -> tuple[list[Any], dict[str, str]]:
    """FitInput per camera whose source spectrum and response exist, and the reasons for the others."""
    from .fitting.engines import FitInput

    products = ObsProducts(outdir)
    inputs, missing = [], {}
    for cam in cameras:
        pha, rmf, arf, bkg = (
            products.src_spectrum(cam),
            products.rmf(cam),
            products.arf(cam),
            products.bkg_spectrum(cam),
        )
        if not pha.exists():
            missing[cam] = f"no source spectrum {pha}"
        elif not rmf.exists():
            missing[cam] = f"no response matrix {rmf} (exact responses need SAS rmfgen/arfgen)"
        else:
            inputs.append(
                FitInput(
                    pha=pha,
                    rmf=rmf,
                    arf=arf if arf.exists() else None,
                    bkg=bkg if bkg.exists() else None,
                    name=cam,
                )
            )
    return inputs, missing


_ABSORBERS = ("wabs", "phabs", "tbabs", "ztbabs", "zphabs", "zwabs")


def _finite_number(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def auto_settings(model: str, meta: Mapping[str, Any]) -> list[str]:
    """XSPEC-style settings from target metadata: every Redshift frozen at ``z``, absorbers' nH at ``nh``.

    Parameters
    ----------
    model : str
        Model expression, e.g. ``"wabs*(zbremss+zgauss)"``.
    meta : mapping
        Target metadata; ``z`` and ``nh`` (1e22 cm^-2) are used when they are finite numbers.
    """
    from .fitting.expression import parse_expression

    out = []
    for par in parse_expression(model).parameters:
        comp, _, pname = par.full_name.partition(".")
        if pname.lower() == "redshift" and _finite_number(meta.get("z")):
            out.append(f"{par.full_name}={float(meta['z'])},frozen")
        elif (
            pname.lower() == "nh" and comp.rsplit("_", 1)[0] in _ABSORBERS and _finite_number(meta.get("nh"))
        ):
            out.append(f"{par.full_name}={float(meta['nh'])},frozen")
    return out


def _fit(obs: Observation, outdir: Path, cfg: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
    from .fitting.engines import engine_from_config

    fs = FitSettings.from_config(cfg)
    products = ObsProducts(outdir)
    cams = _clean_cameras(obs, outdir, cfg)
    inputs, missing = fit_inputs(outdir, cams)
    for cam, why in missing.items():
        log.warning("fit: camera %s left out: %s", cam, why)
    if not inputs:
        raise InputDataError(
            "nothing to fit: " + "; ".join(f"{c}: {w}" for c, w in missing.items()), products.spectra_dir
        )
    if not fs.joint_cameras:
        inputs = inputs[:1]
    settings = fs.parameter_settings(meta=obs.meta)
    engine = engine_from_config(cfg)
    fits_dir = products.fits_dir
    fits_dir.mkdir(parents=True, exist_ok=True)
    kwargs = fs.fit_kwargs(redshift=obs.meta.get("z"))
    for band in ((0.1, 2.4), (0.5, 2.0)):  # the L500 bands
        if band not in kwargs["flux_bands_kev"]:
            kwargs["flux_bands_kev"].append(band)

    def run_fit(fit_inputs: list[Any]) -> Any:
        log.info(
            "fit: engine=%s model=%s stat=%s datasets=%s",
            engine.name,
            fs.model,
            fs.stat,
            [i.name for i in fit_inputs],
        )
        try:
            return engine.fit_files(
                fit_inputs,
                fs.model,
                set_params=settings,
                **kwargs,
                cross_norm=len(fit_inputs) > 1,
                workdir=fits_dir,
                log=log,
            )
        except (ConfigError, InputDataError, ToolError):
            raise  # our own errors subclass ValueError/RuntimeError: keep their class for the orchestrator
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            raise FitError(f"fit of {obs.obsid} failed: {exc}") from exc

    result = run_fit(inputs)
    regions = _load_regions(outdir)
    r500: dict[str, Any] = {"r500_iterations": [], "r500_stop_reason": "", "r500_converged": None}
    spectra_dir = products.spectra_dir
    if regions.get("r500_source") == "iterated":
        result, inputs, regions, r500 = _iterate_r500(obs, outdir, cfg, log, run_fit, result, inputs, regions)
        if r500.get("products_dir"):
            spectra_dir = ObsProducts(r500["products_dir"]).spectra_dir
    record = result.to_dict()
    record["aperture"] = _aperture_record(record, regions, r500, cfg, obs, [i.arf for i in inputs if i.arf])
    atomic_write_json(products.fit_json, record)
    extra_outputs = []
    cex_inputs = [
        dataclasses.replace(
            i,
            pha=spectra_dir / f"{i.name}_anncex_src.pha",
            # its own region-weighted ARF when the spectra step wrote one
            arf=(spectra_dir / f"{i.name}_anncex_src.arf")
            if (spectra_dir / f"{i.name}_anncex_src.arf").exists()
            else i.arf,
        )
        for i in inputs
        if (spectra_dir / f"{i.name}_anncex_src.pha").exists()
    ]
    if cex_inputs:
        # core-excised (0.15-1 R) temperature: the catalogue reads it as region "cex"
        cex = run_fit(cex_inputs).to_dict()
        cex["aperture"] = {
            k: v
            for k, v in _aperture_record(
                cex, regions, r500, cfg, obs, [i.arf for i in cex_inputs if i.arf]
            ).items()
            if not k.lower().startswith("l500")
        }
        r_src = float(regions["r_src_arcmin"])
        cex["aperture"]["core_excised_arcmin"] = [0.15 * r_src, r_src]
        atomic_write_json(fits_dir / "fit_cex.json", cex)
        extra_outputs.append(str(fits_dir / "fit_cex.json"))
    result.to_xcm(products.fit_xcm)
    atomic_write_text(products.fit_txt, result.summary_text())
    outputs = [str(products.fit_json), str(products.fit_xcm), str(products.fit_txt), *extra_outputs]
    # the R500 iteration's regions and spectra (in its own folder) are this step's products
    outputs += [p for p in r500.get("outputs", []) if p not in outputs]
    summary: dict[str, Any] = {
        "fit_json": str(products.fit_json),
        "r500_source": regions.get("r500_source"),
        "r500_iterations": len(r500["r500_iterations"]),
        "r500_stop_reason": r500["r500_stop_reason"],
        "quality_flags": record["aperture"].get("quality_flags", ""),
        "engine": engine.name,
        "versions": engine.versions(),
        "cameras": [i.name for i in inputs],
        "left_out": missing,
    }
    try:
        from .fitting.plots import plot_fit
        from .plots import wants_plot

        if wants_plot(cfg):
            plot_fit(result, inputs, products.fit_plot)
            outputs.append(str(products.fit_plot))
    except (ImportError, ValueError, OSError) as exc:  # a plot must never lose a fit
        log.warning("fit plot failed: %s", exc)
        summary["plot_error"] = str(exc)
    summary["outputs"] = outputs
    return summary


_R500_MAX_ITERATIONS = 6
_R500_TOLERANCE = 0.05


def _iterate_r500(
    obs: Observation,
    outdir: Path,
    cfg: dict[str, Any],
    log: logging.Logger,
    run_fit: Callable[[list[Any]], Any],
    result: Any,
    inputs: list[Any],
    regions: dict[str, Any],
) -> tuple[Any, list[Any], dict[str, Any], dict[str, Any]]:
    """R500 unknown: fitted kT -> R500 (Arnaud+05) -> re-extract (regions, spectra) -> refit, bounded.

    Stops when R500 changes by less than 5% between iterations, when the fit gives no usable kT,
    or after 6 iterations; the returned record lists every (aperture, kT, R500) and why it stopped.
    The re-extracted regions and spectra go to ``outdir/r500/`` (its ``events`` a link to the cleaned
    lists), never over the regions and spectra steps' products: those steps stay done on resume, and
    the fit step declares the iteration's files as its own outputs (record ``outputs``, ``products_dir``).
    """
    from .aperture import fitted_kt, r500_kpc
    from .regions import make_regions

    z = float(obs.meta.get("z") or float("nan"))
    cos = cosmology_from_config(cfg)
    region_settings = RegionSettings.from_config(cfg)
    history: list[dict[str, float]] = []
    stop, converged = f"not converged after {_R500_MAX_ITERATIONS} iterations", False
    r_cur = float(regions["r_src_arcmin"])
    iter_dir = Path(outdir) / "r500"
    outputs: list[str] = []
    for _ in range(_R500_MAX_ITERATIONS):
        kt = fitted_kt(result.to_dict())
        kpa = float(regions.get("kpc_per_arcmin") or float("nan"))
        if not (kt > 0 and z > 0 and kpa > 0):
            stop = f"no usable kT ({kt}) or redshift ({z}) to compute R500"
            break
        r_kpc = r500_kpc(kt, z, h0=cos["H0"], om0=cos["Om0"])
        r_new = r_kpc / kpa
        history.append({"r_src_arcmin": r_cur, "kT": kt, "r500_kpc": r_kpc, "r500_arcmin": r_new})
        if abs(r_new - r_cur) < _R500_TOLERANCE * r_new:
            stop, converged = f"R500 changed by {abs(r_new - r_cur) / r_new:.1%} < 5%", True
            break
        log.info(
            "fit: R500 iteration %d: kT %.2f keV -> R500 %.0f kpc = %.2f arcmin",
            len(history),
            kt,
            r_kpc,
            r_new,
        )
        _link_events(outdir, iter_dir)
        regions = make_regions(obs, iter_dir, region_settings, log=log, r_src_arcmin=r_new)
        spectra = _spectra(obs, iter_dir, cfg, log)
        outputs = [str(p) for p in [*regions.get("outputs", []), *spectra.get("outputs", [])]]
        inputs, _ = fit_inputs(iter_dir, [i.name for i in inputs])
        result = run_fit(inputs)
        r_cur = r_new
    else:
        kt = fitted_kt(result.to_dict())
        if kt > 0:
            r_kpc = r500_kpc(kt, z, h0=cos["H0"], om0=cos["Om0"])
            history.append({"r_src_arcmin": r_cur, "kT": kt, "r500_kpc": r_kpc, "r500_arcmin": r_kpc / kpa})
    log.info("fit: R500 iteration stopped after %d fits: %s", len(history), stop)
    return (
        result,
        inputs,
        regions,
        {
            "r500_iterations": history,
            "r500_stop_reason": stop,
            "r500_converged": converged,
            "products_dir": str(iter_dir) if outputs else None,
            "outputs": outputs,
        },
    )


def _link_events(outdir: Path, iter_dir: Path) -> None:
    """``iter_dir/events`` -> ``outdir/events`` (relative link; the cleaned lists are read, never written)."""
    iter_dir.mkdir(parents=True, exist_ok=True)
    link = iter_dir / "events"
    if link.is_symlink() or link.exists():
        return
    os.symlink(os.path.relpath(ObsProducts(outdir).events_dir, iter_dir), link, target_is_directory=True)


def _aperture_record(
    record: dict[str, Any],
    regions: dict[str, Any],
    r500: dict[str, Any],
    cfg: dict[str, Any],
    obs: Observation,
    arf_files: list[Path],
) -> dict[str, Any]:
    """R500, aperture, L500 and quality-flag values of the fit (``fit.json`` ``aperture``).

    ``arf_files``: the fitted ARFs; when all carry the region's vignetting (``VIGNWGT``, the Python
    backend's weighted ARFs) the L500 has no scalar vignetting to divide out.
    """
    from .aperture import l500_block, net_counts_of, quality_flags
    from .arfweight import arf_is_weighted

    history = r500["r500_iterations"]
    if regions.get("r500_source") == "iterated" and history:
        r500_kpc_v, r500_arcmin = history[-1]["r500_kpc"], history[-1]["r500_arcmin"]
    else:
        # Null when no R500 is known and none was iterated: NaN, never a TypeError.
        kpc, arcmin = regions.get("r500_kpc"), regions.get("r500_arcmin")
        r500_kpc_v = float("nan") if kpc is None else float(kpc)
        r500_arcmin = float("nan") if arcmin is None else float(arcmin)
    out: dict[str, Any] = {
        "r500_kpc": r500_kpc_v,
        "r500_arcmin": r500_arcmin,
        "r500_source": regions.get("r500_source", "none"),
        "r500_iterations": len(history),
        "r500_stop_reason": r500["r500_stop_reason"],
        "r500_history": history,
        # relative to the ObsID's results folder
        "r500_products_dir": Path(r500["products_dir"]).name if r500.get("products_dir") else None,
        "r_src_arcmin": regions.get("r_src_arcmin"),
        "r_src_kpc": regions.get("r_src_kpc"),
        "bkg_cluster_fraction": regions.get("bkg_cluster_fraction"),
        "bkg_oversubtraction": regions.get("bkg_oversubtraction"),
        "aperture_lost_fraction": regions.get("aperture_lost_fraction"),
        "bkg_note": regions.get("bkg_note", ""),
    }
    out.update(
        l500_block(
            record.get("luminosities") or {},
            regions,
            r500_arcmin=r500_arcmin,
            arf_on_axis=arf_on_axis(cfg) and not all(arf_is_weighted(a) for a in arf_files),
            matched_background=matched_background(cfg),
        )
    )
    # the over-subtraction of the background the spectra really have (area-scaled or vignetting-matched)
    out["bkg_oversubtraction"] = out.pop("bkg_oversubtraction_used")
    out.update(
        quality_flags(
            record,
            regions,
            net_counts=net_counts_of(record.get("datasets") or []),
            requested_errors=str(config_value(cfg, "fit.errors")),
            r500_converged=r500["r500_converged"],
            l500_profile_rel_err=float(out.get("l500_profile_rel_err", float("nan"))),
        )
    )
    return out


def matched_background(cfg: Mapping[str, Any]) -> bool:
    """Whether the spectra's local background is the vignetting-matched one (Python backend, not blank-sky)."""
    ss = SpectraSettings.from_config(cfg)
    return (
        str(config_value(cfg, "backend.reduction")) == "python"
        and ss.local_background == "matched"
        and RegionSettings.from_config(cfg).bkg_method != "blanksky"
    )


def arf_on_axis(cfg: Mapping[str, Any]) -> bool:
    """Whether the ARFs the spectra step started from lack the extended source's vignetting (``spectra.arf_vignetting``).

    The Python backend weights such ARFs by the region's vignetting (``VIGNWGT = T``, :mod:`xmmcore.arfweight`);
    the L500 divides out the scalar aperture vignetting only where a fitted ARF still lacks it.

    ``auto``: yes when the Python backend copied the ARFs (canned or borrowed responses are on-axis or
    point-source ARFs); no for SAS arfgen ones (``backend.reduction: sas`` or ``spectra.responses: sas``,
    made with ``extendedsource=yes`` and the detector map). ``correct``: yes; ``none``: no.
    """
    ss = SpectraSettings.from_config(cfg)
    if ss.arf_vignetting != "auto":
        return ss.arf_vignetting == "correct"
    reduction = str(config_value(cfg, "backend.reduction"))
    return reduction == "python" and ss.responses != "sas"


_STEP_FUNCS: dict[str, Callable[[Observation, Path, dict[str, Any], logging.Logger], dict[str, Any]]] = {
    "filter": _filter,
    "regions": _regions,
    "spectra": _spectra,
    "fit": _fit,
}


_TABLE_RE = re.compile(r"[am]table\{([^}]*)\}", re.IGNORECASE)


def _config_files(step: str, obs: Observation, cfg: dict[str, Any] | None) -> list[Path]:
    """Files named in the configuration (or found beside the events) that ``step`` reads."""
    if not cfg:
        return []
    out: list[Any] = []
    if step == "regions":
        out += RegionSettings.from_config(cfg).config_files()
    elif step == "spectra":
        regions = RegionSettings.from_config(cfg)
        responses = SpectraSettings.from_config(cfg).responses
        files = responses if isinstance(responses, Mapping) else {}
        for cam in obs.cameras:
            out.append(files.get(f"{cam}_rmf") or obs.rmf_files.get(cam))
            out.append(files.get(f"{cam}_arf") or obs.arf_files.get(cam))
        if regions.bkg_method == "blanksky":
            out += list(regions.blanksky_files.values())
    elif step == "fit":
        model = str(config_value(cfg, "fit.model"))
        out += [m.strip() for m in _TABLE_RE.findall(model)]
        if re.search(r"\bv?apec\b", model):
            from .fitting.atable import find_apec_table

            out.append(find_apec_table())
    return [Path(p).expanduser() for p in out if p]


def step_inputs(step: str, obs: Observation, outdir: Path, cfg: dict[str, Any] | None = None) -> list[Path]:
    """Files a step reads (for the orchestrator's inputs hash).

    Besides the products of the previous step: the user regions (regions), the RMF/ARF and blank-sky
    files (spectra) and the table models of the fit expression (fit), when ``cfg`` is given.
    """
    products = ObsProducts(outdir)
    extra = _config_files(step, obs, cfg)
    if step == "filter":
        return sorted(obs.event_files.values()) + ([obs.sum_file] if obs.odf_only and obs.sum_file else [])
    clean = sorted(products.clean_events(c) for c in CAMERAS if products.clean_events(c).exists())
    if step == "regions":
        return clean + extra
    if step == "spectra":
        return clean + [products.regions_json] + extra
    if step == "fit":
        return sorted(products.spectra_dir.glob("*")) + extra
    raise ConfigError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")


def run_step(
    step: str, obs: Observation, outdir: str | Path, cfg: dict[str, Any], *, log: logging.Logger | None = None
) -> dict[str, Any]:
    """Run one step of the chain for one observation and return its summary.

    Parameters
    ----------
    step : {"filter", "regions", "spectra", "fit"}
    obs : Observation
    outdir : Path
        ``results/<obsid>/``.
    cfg : dict
        Resolved configuration (keys of ``survey/defaults.yaml``).
    log : logging.Logger, optional
        Per-ObsID/step logger.
    """
    if step not in _STEP_FUNCS:
        raise ConfigError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with fits_conf_snapshot():  # astropy's FITS settings read once, not per header card
        return _STEP_FUNCS[step](obs, outdir, cfg, log or logging.getLogger(f"xmmcore.{obs.obsid}.{step}"))
