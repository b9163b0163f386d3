"""Joint fits across ObsIDs x cameras of one target, and fits of their stacked spectra.

* :func:`collect_inputs` finds the spectra and responses of each ObsID x camera under ``results/<obsid>/spectra/``
  and names exactly which files are missing.
* :func:`joint_fit` fits all spectra at once through the fit-engine API
  (``fit_files`` of the engine ``engines.engine_from_config(settings)`` builds): physical parameters are
  shared (linked), each dataset gets a free cross-normalisation constant (``cross_norm=True``); any engine works.
* :func:`run_joint` collects, fits jointly (optionally also the stacked spectra per camera, :mod:`xmmcore.stack`)
  and records the result in ``results/joint/<target>.json`` (:func:`record_joint`). The catalogue turns that
  record into ``kind="joint"`` / ``"stack"`` rows (``catalog.rows``); the survey runs it as the ``joint`` step
  (``survey.joint``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import CAMERAS
from ..errors import FitError, InputDataError, XmmSurveyError
from ..fsutil import atomic_write_json
from ..products import ObsProducts, SurveyLayout
from ..settings import FitSettings, engine_options_from_config
from .engines import FitEngine, FitInput, engine_from_config

__all__ = [
    "JOINT_DIR",
    "JointInput",
    "collect_inputs",
    "joint_fit",
    "joint_path",
    "read_joint",
    "record_joint",
    "run_joint",
    "target_meta",
]

#: Folder under ``results/`` holding the joint records (``<target>.json``) and stacked spectra.
JOINT_DIR = SurveyLayout.JOINT
_CAMERAS = CAMERAS


@dataclass(frozen=True, init=False)
class JointInput(FitInput):
    """One spectrum of a joint fit: a :class:`~xmmcore.fitting.engines.FitInput` named ``<obsid>_<camera>``."""

    obsid: str = ""
    camera: str = ""

    def __init__(
        self,
        obsid: str,
        camera: str,
        pha: str | os.PathLike[str],
        rmf: str | os.PathLike[str] | None = None,
        arf: str | os.PathLike[str] | None = None,
        bkg: str | os.PathLike[str] | None = None,
    ) -> None:
        def opt(p: str | os.PathLike[str] | None) -> Path | None:
            return None if p is None else Path(p)

        super().__init__(pha=Path(pha), rmf=opt(rmf), arf=opt(arf), bkg=opt(bkg), name=f"{obsid}_{camera}")
        object.__setattr__(self, "obsid", str(obsid))
        object.__setattr__(self, "camera", str(camera))

    def to_dict(self) -> dict[str, Any]:
        """JSON form kept in the joint record (paths as text, ``None`` where absent)."""
        return {
            "obsid": self.obsid,
            "camera": self.camera,
            "name": self.name,
            **{
                k: None if getattr(self, k) is None else str(getattr(self, k))
                for k in ("pha", "rmf", "arf", "bkg")
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JointInput:
        return cls(str(d["obsid"]), str(d["camera"]), d["pha"], d.get("rmf"), d.get("arf"), d.get("bkg"))


def collect_inputs(
    results_dir: str | os.PathLike[str],
    obsids: Iterable[str],
    *,
    cameras: Iterable[str] = _CAMERAS,
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
        products = ObsProducts(results_dir / obsid)
        spec = products.spectra_dir
        for cam in cameras:
            files = {
                "pha": products.src_spectrum(cam),
                "bkg": products.bkg_spectrum(cam),
                "rmf": products.rmf(cam),
                "arf": products.arf(cam),
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


def joint_fit(
    inputs: Sequence[FitInput],
    model: str,
    *,
    engine: FitEngine | str = "builtin",
    stat: str = "cstat",
    notice_kev: tuple[float, float] = (0.5, 7.0),
    set_params: Sequence[str] = (),
    errors: str | None = FitSettings.errors,
    extra_error_levels: Sequence[float] = (),
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
    inputs : sequence of FitInput (usually JointInput)
        Spectra (one per ObsID x camera); the first dataset's constant is the reference (frozen at 1).
    model : str
        XSPEC-style expression without the constant, e.g. ``"phabs*powerlaw"``.
    engine : FitEngine or str
        The fit engine (``engine_from_config(settings)``), or its name (``builtin``, ``xspec``, ...) to
        use it with its library defaults.
    stat, notice_kev, set_params, errors, extra_error_levels, redshift, cosmology, flux_bands_kev, abund, workdir, log
        Passed to ``fit_files``.

    Returns
    -------
    dict
        ``FitResult.to_dict()`` plus ``"datasets"`` (the dataset names in order) and ``"obsids"``.
    """
    if not inputs:
        raise InputDataError("joint fit: no input spectra")
    eng = engine_from_config(FitSettings(engine=engine)) if isinstance(engine, str) else engine
    try:
        result = eng.fit_files(
            list(inputs),
            model,
            stat=stat,
            notice_kev=tuple(notice_kev),
            set_params=tuple(set_params),
            abund=abund,
            errors=errors,
            extra_error_levels=tuple(extra_error_levels),
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
    out["obsids"] = sorted({str(getattr(i, "obsid", i.name)) for i in inputs})
    return out


def joint_path(results_dir: str | os.PathLike[str], name: str) -> Path:
    """``results/joint/<name>.json`` (``name`` checked like an ObsID: no path separators)."""
    from ..observation import validate_obsid

    return SurveyLayout(results_dir).joint_record(validate_obsid(name))


def record_joint(
    results_dir: str | os.PathLike[str],
    name: str,
    *,
    fit: Mapping[str, Any] | None = None,
    inputs: Sequence[JointInput] = (),
    meta: Mapping[str, Any] | None = None,
    stack: Mapping[str, Any] | None = None,
    missing: Sequence[str] = (),
    left_out: Sequence[str] = (),
    notes: Sequence[str] = (),
    obsids: Sequence[str] = (),
) -> Path:
    """Write the joint record ``results/joint/<name>.json`` atomically (read by ``catalog.build`` and the report).

    Layout: ``{"name", "obsids", "inputs": [JointInput.to_dict()], "meta", "fit", "stack": {"inputs", "fit"} |
    null, "missing", "left_out", "notes"}``.
    """
    path = joint_path(results_dir, name)
    ids = list(obsids) or sorted({i.obsid for i in inputs})
    atomic_write_json(
        path,
        {
            "name": name,
            "obsids": ids,
            "inputs": [i.to_dict() for i in inputs],
            "meta": dict(meta or {}),
            "fit": dict(fit or {}),
            "stack": dict(stack) if stack else None,
            "missing": list(missing),
            "left_out": list(left_out),
            "notes": list(notes),
        },
    )
    return path


def read_joint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A joint record as a dict; :class:`InputDataError` naming the file when it is not valid JSON."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputDataError(f"unreadable joint record ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputDataError("a joint record must be a JSON object", path)
    return data


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _resolved_config(results_dir: Path) -> dict[str, Any]:
    return SurveyLayout(results_dir).read_resolved_config()


def joint_settings(results_dir: str | os.PathLike[str]) -> FitSettings:
    """The :class:`FitSettings` of the survey in ``results_dir`` (its ``config.resolved.yaml``), the same
    as its per-ObsID fits; the library defaults when the folder has no resolved configuration."""
    cfg = _resolved_config(Path(results_dir))
    return FitSettings.from_config(cfg) if cfg else FitSettings()


def target_meta(results_dir: str | os.PathLike[str], obsids: Sequence[str]) -> dict[str, Any]:
    """Target metadata (name, ra, dec, z, nh, ...) of the first ObsID that has a ``meta.json``.

    Looked up in ``results/<obsid>/meta.json``, then ``<data_dir>/<obsid>/meta.json`` (``data_dir`` of
    ``config.resolved.yaml``). The survey's joint step passes the observations' metadata instead (which also
    holds the targets CSV).
    """
    import json

    results_dir = Path(results_dir)
    data_dir = _resolved_config(results_dir).get("data_dir")
    for obsid in obsids:
        candidates = [results_dir / obsid / "meta.json"]
        if data_dir:
            d = Path(str(data_dir))
            candidates.append(
                (d if d.is_absolute() or d.exists() else results_dir.parent / d) / obsid / "meta.json"
            )
        for path in candidates:
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict):
                return {
                    k: v
                    for k, v in meta.items()
                    if v is not None and not (isinstance(v, float) and math.isnan(v))
                }
    return {}


def run_joint(
    results_dir: str | os.PathLike[str],
    *,
    target: str,
    obsids: Sequence[str],
    settings: FitSettings | None = None,
    model: str | None = None,
    engine: str | None = None,
    cameras: Sequence[str] = _CAMERAS,
    stat: str | None = None,
    notice_kev: tuple[float, float] | None = None,
    auto_set: bool | None = None,
    stack: bool = False,
    meta: Mapping[str, Any] | None = None,
    **fit_options: Any,
) -> dict[str, Any]:
    """Collect, fit jointly and record a target observed in several ObsIDs.

    Parameters
    ----------
    results_dir : path-like
        Survey results (``<obsid>/spectra/<cam>_src.pha``, ``<cam>_bkg.pha``, ``<cam>.rmf``, ``<cam>.arf``).
    target : str
        Name of the record (``results/joint/<target>.json``) and of the catalogue rows.
    obsids : sequence of str
        ObsIDs to combine.
    settings : FitSettings, optional
        The fit (model, statistic, band, ``fit.set``, errors, fluxes, engine); default: built from
        ``config.resolved.yaml`` of ``results_dir``, the same settings as the per-ObsID fits (without one,
        the library defaults, which equal ``survey/defaults.yaml``).
    model, engine, stat, notice_kev, auto_set : optional
        Replace the field of ``settings`` of the same name (``None``: keep it). Another ``model`` drops
        ``fit.set`` (it names the parameters of ``fit.model``) unless ``set_params`` is given.
    cameras : sequence of str
        Cameras to use.
    stack : bool
        Also stack the spectra per camera (:func:`xmmcore.stack.stack_spectra`), fit the stacks jointly across
        cameras and keep that fit under ``"stack"`` of the record.
    meta : dict, optional
        Target metadata (default: :func:`target_meta`).
    **fit_options
        ``errors``, ``set_params``, ``flux_bands_kev``, ``cosmology``, ``abund`` replace those of ``settings``;
        the others (``redshift``, ``workdir``, ``log``) go to :func:`joint_fit`.

    Returns
    -------
    dict
        ``{"target", "fit", "inputs", "stack", "meta", "missing", "left_out", "notes", "path"}``. Incomplete
        ObsID x camera sets are left out of the fit and listed in ``left_out`` (and the notes); when no set is
        complete nothing is fitted and ``missing`` lists the files (the record is still written so the report
        can show it).
    """
    results_dir = Path(results_dir)
    fs = settings if settings is not None else joint_settings(results_dir)
    changes: dict[str, Any] = {
        k: v
        for k, v in {"model": model, "engine": engine, "stat": stat, "auto_set": auto_set}.items()
        if v is not None
    }
    if notice_kev is not None:
        changes["notice_kev"] = (float(notice_kev[0]), float(notice_kev[1]))
    if "set_params" in fit_options:
        changes["set_params"] = tuple(fit_options.pop("set_params") or ())
    elif model is not None and model != fs.model:
        changes["set_params"] = ()  # fit.set names the parameters of fit.model, not of another model
    if "flux_bands_kev" in fit_options:
        changes["flux_bands_kev"] = tuple(tuple(b) for b in fit_options.pop("flux_bands_kev"))
    for key in ("errors", "cosmology", "abund"):
        if key in fit_options:
            changes[key] = fit_options.pop(key)
    if changes.get("engine", fs.engine) != fs.engine:
        # another engine than the survey's: its options from the survey's configuration, if any
        cfg = _resolved_config(results_dir)
        changes["engine_options"] = engine_options_from_config(cfg, changes["engine"]) if cfg else {}
    fs = fs.with_(**changes)
    model = fs.model
    inputs, incomplete = collect_inputs(results_dir, obsids, cameras=cameras)
    meta = dict(meta) if meta is not None else target_meta(results_dir, obsids)
    out: dict[str, Any] = {"target": target, "fit": {}, "inputs": inputs, "stack": None, "meta": meta}
    if not inputs:
        missing = incomplete or [f"no ObsID given for {target}"]
        path = record_joint(results_dir, target, missing=missing, meta=meta, obsids=list(obsids))
        return {**out, "missing": missing, "left_out": [], "notes": [], "path": path}
    # like the per-ObsID fit step: fit every complete spectrum set, name the ones left out
    notes: list[str] = [f"{target}: left out of the joint fit: {m}" for m in incomplete]
    par_settings = fs.parameter_settings(meta=meta)
    fit_options.setdefault("redshift", float(meta["z"]) if _finite(meta.get("z")) else None)
    fit_options = {**fs.fit_kwargs(redshift=fit_options.pop("redshift")), **fit_options}
    fit_engine = engine_from_config(fs)
    fit = joint_fit(inputs, model, engine=fit_engine, set_params=par_settings, **fit_options)
    stacked: dict[str, Any] | None = None
    if stack:
        try:
            stacked = _fit_stacks(
                results_dir,
                target,
                inputs,
                model,
                engine=fit_engine,
                set_params=par_settings,
                **fit_options,
            )
        except (FitError, InputDataError) as exc:  # the joint fit stands on its own
            notes.append(f"{target}: stacked-spectra fit failed: {exc}")
    path = record_joint(
        results_dir,
        target,
        fit=fit,
        inputs=inputs,
        meta=meta,
        stack=stacked,
        left_out=incomplete,
        notes=notes,
        obsids=list(obsids),
    )
    return {
        **out,
        "fit": fit,
        "stack": stacked,
        "missing": [],
        "left_out": incomplete,
        "notes": notes,
        "path": path,
    }


def _fit_stacks(
    results_dir: Path, target: str, inputs: Sequence[JointInput], model: str, **fit_kw: Any
) -> dict[str, Any] | None:
    """Stack each camera's spectra over the ObsIDs, fit the stacks jointly; ``None`` if no camera has 2."""
    from ..stack import stack_spectra, write_stack

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
        paths = write_stack(st, SurveyLayout(results_dir).joint_stack_dir(target), stem=cam)
        stacked.append(JointInput("stack", cam, paths["pha"], paths["rmf"], paths["arf"], paths.get("bkg")))
    if not stacked:
        return None
    fit = joint_fit(stacked, model, **fit_kw)
    return {"inputs": [i.to_dict() for i in stacked], "fit": fit}
