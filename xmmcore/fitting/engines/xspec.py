"""The XSPEC fit engine: PyXspec in a separate process per fit.

Each fit is described by a JSON job (spectra, model expression, statistic, abundance table,
cross-sections, cosmology, energy range, settings and links, error and flux options) and run by
``python -m xmmcore.fitting.engines.xspec_runner job.json`` through :func:`xmmcore.tools.run_tool`,
with a timeout. XSPEC crashing on a poor spectrum (segmentation fault, runaway fit) then kills only
that process: the engine records the failure in ``<workdir>/xspec_failure.json`` and raises
:class:`~xmmcore.errors.FitError`, and the worker goes on with the next observation.

The result is a :class:`~xmmcore.fitting.results.FitResult` with the same ``to_dict()`` layout as
the built-in engine: parameters named ``<component>_<n>.<parameter>`` (``wabs_1.nH``), XSPEC
numbering across data groups, errors as positive distances at ``error_delta`` (``error`` command),
fluxes per band (absorbed and with the absorbers' nH set to 0) and rest-frame luminosities.

ESAS sky background (``esas_sky=True`` or a dict of start values): the source model becomes
``<source> + apec + wabs*(apec + powerlaw)``: local hot bubble (kT 0.1 keV), absorbed Galactic halo
(kT ~0.25 keV, nH tied to the source absorber) and absorbed CXB power law (index 1.46), folded through
the ARF; the Al K (1.486 keV) and Si K (1.739 keV) instrumental lines and the soft-proton power law are
a second model, ``instr`` = ``gaussian + gaussian + powerlaw``, on a second response of every spectrum
holding only its RMF (``multiresponse``: XSPEC 12 dropped the ``/b`` qualifier), free per camera
(ESAS cookbook). ``Fit.query`` is ``no``: a fit that reaches ``Fit.nIterations`` stops and is reported
with ``converged: false`` and the reason instead of cycling until the timeout.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...constants import DEFAULT_COSMOLOGY
from ...errors import ConfigError, ExternalToolError, FitError, ToolNotFoundError
from ...fsutil import atomic_write_json
from ...settings import FitSettings, XspecSettings
from ...tools import run_tool
from ..optimize import level_label
from ..results import FitResult
from ..stats import STATISTICS
from . import FitInput
from .xspec_runner import ESAS_SKY_COMPONENTS, EXIT_NO_XSPEC

__all__ = ["ENGINE_CLASS", "XspecEngine", "build_job", "get_engine", "missing_xspec_hint", "xspec_available"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


def xspec_available() -> bool:
    """True when PyXspec can be imported by this Python (HEASoft initialised)."""
    try:
        return importlib.util.find_spec("xspec") is not None
    except (ImportError, ValueError):
        return False


def missing_xspec_hint() -> str:
    """How to make PyXspec available."""
    return (
        f"backend.fitting is 'xspec' but PyXspec is not importable by {sys.executable}"
        f" (HEADAS={os.environ.get('HEADAS') or 'not set'}). Install HEASoft with its Python support "
        "(https://heasarc.gsfc.nasa.gov/lheasoft/), build it against this Python, then "
        "`export HEADAS=/path/to/heasoft/<platform>; source $HEADAS/headas-init.sh` in the shell that runs "
        "xmm-survey (python -c 'import xspec' must work). Or select `backend.fitting: builtin`."
    )


def _band_key(band: Sequence[float]) -> str:
    from ..fluxes import band_key

    return band_key(band)


def _cosmology_dict(cosmology: Any) -> dict[str, float] | None:
    if cosmology is None:
        return None
    if isinstance(cosmology, Mapping):
        values = {**DEFAULT_COSMOLOGY, **cosmology}
        return {"H0": float(values["H0"]), "Om0": float(values["Om0"])}
    h0 = getattr(cosmology, "H0", None)
    if h0 is not None:
        return {"H0": float(getattr(h0, "value", h0)), "Om0": float(cosmology.Om0)}
    raise ConfigError(f"cosmology must be {{H0, Om0}} or an astropy cosmology, not {cosmology!r}")


def _group_of(prefix: str, names: Sequence[str], what: object) -> int:
    """Data group (1-based) of a ``"2:"`` or ``"mos1:"`` prefix."""
    p = prefix.strip()
    if p.isdigit() and 1 <= int(p) <= len(names):
        return int(p)
    if p in names:
        return list(names).index(p) + 1
    raise ConfigError(f"setting {what!r}: no dataset {p!r} (datasets: {', '.join(names)})")


def _parse_settings(
    set_params: Sequence[Any], links: Sequence[tuple[str, str]], names: Sequence[str]
) -> list[list[Any]]:
    """Settings as ``[key, value, frozen, link, group]`` rows for the runner."""
    from ..optimize import parse_setting

    rows: list[list[Any]] = []
    for setting in set_params:
        key, value, frozen, link = parse_setting(setting)
        group = None
        if ":" in key:
            g, key = key.split(":", 1)
            group = _group_of(g, names, setting)
        rows.append([key.strip(), value, frozen, link, group])
    for target, source in links:
        group = None
        if ":" in target:
            g, target = target.split(":", 1)
            group = _group_of(g, names, target)
        src = source.strip()
        if re.fullmatch(r"[pP]\d+", src):
            src = src[1:]
        rows.append([target.strip(), None, None, src, group])
    return rows


def build_job(
    inputs: Sequence[FitInput],
    model: str,
    *,
    workdir: Path,
    stat: str = "cstat",
    notice_kev: Sequence[float] = (0.5, 7.0),
    set_params: Sequence[Any] = (),
    links: Sequence[tuple[str, str]] = (),
    abund: str = "angr",
    xsect: str = "vern",
    errors: str | None = "profile",
    error_level: float = 1.0,
    extra_error_levels: Sequence[float] = (),
    redshift: float | None = None,
    cosmology: Any = None,
    flux_bands_kev: Sequence[Sequence[float]] = (),
    cross_norm: bool = True,
    esas_sky: bool | Mapping[str, float] | None = None,
    chatter: int = 0,
    flux_trials: int = 200,
) -> dict[str, Any]:
    """The JSON job of one XSPEC fit (everything the runner needs, nothing implicit).

    Raises
    ------
    ConfigError
        Unknown statistic or error method, empty input list.
    InputDataError
        A named file does not exist.
    """
    from ...errors import InputDataError

    if stat not in STATISTICS:
        raise ConfigError(f"fit.stat must be one of {', '.join(STATISTICS)}, not {stat!r}")
    if errors not in ("profile", "covariance", None, "none"):
        raise ConfigError(f"fit.errors must be profile, covariance or none, not {errors!r}")
    if not inputs:
        raise ConfigError("no spectra to fit")
    if not error_level > 0:
        raise ConfigError(f"error_level must be > 0, not {error_level}")
    # >= 1: a delta-statistic (1.0 = 68 %, 2.706 = 90 %); < 1: a confidence level.
    delta = float(error_level) if error_level >= 1 else _delta_for_cl(error_level)
    datasets = []
    for k, inp in enumerate(inputs):
        entry: dict[str, Any] = {"name": inp.name or f"ds{k + 1}"}
        for field_name in ("pha", "rmf", "arf", "bkg"):
            value = getattr(inp, field_name)
            if value is None:
                entry[field_name] = None
                continue
            path = Path(value).resolve()
            if not path.exists():
                raise InputDataError(f"{field_name.upper()} file for XSPEC does not exist", path)
            entry[field_name] = str(path)
        datasets.append(entry)
    expr = model.strip()
    if esas_sky:
        expr = f"{expr} + {ESAS_SKY_COMPONENTS}"
    if cross_norm and len(inputs) > 1 and not expr.lower().startswith("constant*"):
        expr = f"constant*({expr})"
    bands = [[float(b[0]), float(b[1])] for b in flux_bands_kev]
    return {
        "datasets": datasets,
        "model": expr,
        "stat": stat,
        "notice_kev": [float(notice_kev[0]), float(notice_kev[1])],
        "settings": _parse_settings(set_params, links, [d["name"] for d in datasets]),
        "abund": abund,
        "xsect": xsect,
        "errors": "profile" if errors == "profile" else ("covariance" if errors == "covariance" else None),
        "error_delta": float(delta),
        # further levels of the shape parameters: [label, level, delta-stat] (``error`` run again at each)
        "extra_error_levels": [
            [level_label(float(cl)), float(cl), _delta_for_cl(float(cl))] for cl in extra_error_levels
        ],
        "redshift": None if redshift is None else float(redshift),
        "cosmology": _cosmology_dict(cosmology),
        "flux_bands_kev": bands,
        "band_keys": {f"{b[0]}-{b[1]}": _band_key(b) for b in bands},
        "flux_trials": int(flux_trials),
        "cross_norm": bool(cross_norm),
        "esas_sky": (dict(esas_sky) if isinstance(esas_sky, Mapping) else {}) if esas_sky else None,
        "chatter": int(chatter),
        "result_path": str(workdir / "xspec_result.json"),
        "xcm_path": str(workdir / "xspec_session.xcm"),
        "log_path": str(workdir / "xspec.log"),
    }


def _delta_for_cl(cl: float) -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(cl, 1))


class XspecEngine:
    """Fit engine running PyXspec in a child process per fit.

    Parameters
    ----------
    timeout_s : float
        Wall-clock limit of one fit [s] (``xspec.timeout_s``).
    chatter : int
        XSPEC chatter level in the child (its output goes to the fit log).
    runner : sequence of str, optional
        Command that runs a job file (default ``python -m xmmcore.fitting.engines.xspec_runner``).
    esas_sky : bool or dict, optional
        Default of ``fit_files(esas_sky=)`` (``xspec.esas_sky``).
    """

    name = "xspec"

    def __init__(
        self,
        *,
        timeout_s: float = 1800.0,
        chatter: int = 0,
        runner: Sequence[str] | None = None,
        esas_sky: bool | Mapping[str, float] | None = None,
    ):
        self.timeout_s = float(timeout_s)
        self.chatter = int(chatter)
        self.esas_sky = esas_sky
        self.runner = (
            list(runner) if runner else [sys.executable, "-m", "xmmcore.fitting.engines.xspec_runner"]
        )
        self._custom_runner = runner is not None
        self._versions: dict[str, str] | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | FitSettings) -> XspecEngine:
        """The engine with ``xspec.timeout_s``, ``xspec.chatter`` and ``xspec.esas_sky`` (of the resolved
        configuration, or ``FitSettings.engine_options``); checks PyXspec.

        Raises
        ------
        ToolNotFoundError
            PyXspec is not importable (the message says how to install/initialise HEASoft).
        """
        if not xspec_available():  # before the options: the missing tool is what the user must fix
            raise ToolNotFoundError(missing_xspec_hint())
        options = (
            cfg.engine_options if isinstance(cfg, FitSettings) else XspecSettings.from_config(cfg).options()
        )
        return cls(**options)

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        parts = [_PACKAGE_ROOT] + [p for p in path.split(os.pathsep) if p and p != _PACKAGE_ROOT]
        return {"PYTHONPATH": os.pathsep.join(parts), "HEADASNOQUERY": "", "HEADASPROMPT": "/dev/null"}

    def check(self) -> None:
        """Raise ``ToolNotFoundError`` (saying how to fix it) when PyXspec is not available."""
        if not self._custom_runner and not xspec_available():
            raise ToolNotFoundError(missing_xspec_hint())

    def versions(self) -> dict[str, str]:
        """XSPEC and PyXspec versions (asked of a child process, as the fits are)."""
        if self._versions is None:
            self.check()
            with tempfile.TemporaryDirectory(prefix="xspec-version-") as tmp:
                try:
                    run = run_tool(
                        [*self.runner, "--version"],
                        cwd=tmp,
                        env=self._env(),
                        timeout_s=120,
                        check_sas_errors=False,
                    )
                except ExternalToolError as exc:
                    if exc.returncode == EXIT_NO_XSPEC:
                        raise ToolNotFoundError(missing_xspec_hint()) from exc
                    raise
            line = next((ln for ln in run.stdout.splitlines() if ln.startswith("{")), "{}")
            self._versions = {"engine": "xspec", **json.loads(line)}
        return dict(self._versions)

    def fit_files(
        self,
        inputs: Sequence[FitInput],
        model: str,
        *,
        stat: str = "cstat",
        notice_kev: Sequence[float] | None = (0.5, 7.0),
        set_params: Sequence[Any] = (),
        abund: str = "angr",
        errors: str | None = "profile",
        redshift: float | None = None,
        cosmology: Any = None,
        flux_bands_kev: Sequence[Sequence[float]] = (),
        cross_norm: bool = True,
        workdir: str | Path | None = None,
        log: logging.Logger | None = None,
        links: Sequence[tuple[str, str]] = (),
        error_level: float = 1.0,
        extra_error_levels: Sequence[float] = (),
        xsect: str = "vern",
        esas_sky: bool | Mapping[str, float] | None = None,
    ) -> FitResult:
        """Fit ``inputs`` with XSPEC; same options and result layout as the built-in engine.

        Raises
        ------
        ToolNotFoundError
            PyXspec is not installed.
        FitError
            XSPEC failed, crashed or timed out (the failure is recorded in ``xspec_failure.json``).
        """
        self.check()
        if esas_sky is None:
            esas_sky = self.esas_sky
        logger = log or logging.getLogger(__name__)
        tmp_ctx = None
        if workdir is None:
            tmp_ctx = tempfile.TemporaryDirectory(prefix="xspec-fit-")
            workdir = tmp_ctx.name
        wd = Path(workdir).resolve()
        wd.mkdir(parents=True, exist_ok=True)
        try:
            job = build_job(
                inputs,
                model,
                workdir=wd,
                stat=stat,
                notice_kev=notice_kev or (0.0, 1e6),
                set_params=set_params,
                links=links,
                abund=abund,
                xsect=xsect,
                errors=errors,
                error_level=error_level,
                extra_error_levels=extra_error_levels,
                redshift=redshift,
                cosmology=cosmology,
                flux_bands_kev=flux_bands_kev,
                cross_norm=cross_norm,
                esas_sky=esas_sky,
                chatter=self.chatter,
            )
            job_path = atomic_write_json(wd / "xspec_job.json", job)
            result_path = Path(job["result_path"])
            if result_path.exists():
                result_path.unlink()
            t0 = time.monotonic()
            try:
                run_tool(
                    [*self.runner, str(job_path)],
                    cwd=wd,
                    env=self._env(),
                    timeout_s=self.timeout_s,
                    log=logger,
                    log_path=wd / "xspec_runner.log",
                    check_sas_errors=False,
                )
            except ExternalToolError as exc:
                self._record_failure(wd, job, exc, result_path)
            except ToolNotFoundError:
                raise
            elapsed = time.monotonic() - t0
            self._log_xspec_messages(wd, logger)
            try:
                record = json.loads(result_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise FitError(
                    f"XSPEC runner finished without a readable result {result_path} ({exc})"
                ) from exc
            if "error" in record:
                raise FitError(f"XSPEC fit failed: {record['error']}")
            return self._to_result(record, elapsed)
        finally:
            if tmp_ctx is not None:
                tmp_ctx.cleanup()

    @staticmethod
    def _log_xspec_messages(wd: Path, logger: logging.Logger) -> None:
        """Pass XSPEC's ``***Warning``/``***XSPEC Error`` lines from its log file on to the fit log."""
        from ...sas_output import parse_xspec_messages

        log_file = wd / "xspec.log"
        if not log_file.exists():
            return
        for msg in parse_xspec_messages(log_file.read_text(errors="replace")):
            logger.warning("XSPEC %s: %s", msg.level, msg.message)

    @staticmethod
    def _record_failure(wd: Path, job: Mapping[str, Any], exc: ExternalToolError, result_path: Path) -> None:
        if exc.returncode == EXIT_NO_XSPEC:
            raise ToolNotFoundError(missing_xspec_hint()) from exc
        detail = ""
        if result_path.exists():
            try:
                detail = json.loads(result_path.read_text()).get("error", "")
            except (OSError, json.JSONDecodeError):
                detail = ""
        if exc.reason == "timeout":
            why = f"XSPEC fit timed out ({exc})"
        elif exc.returncode is not None and exc.returncode < 0:
            import signal

            try:
                signame = signal.Signals(-exc.returncode).name
            except ValueError:
                signame = f"signal {-exc.returncode}"
            why = f"XSPEC process crashed ({signame})"
        else:
            why = f"XSPEC fit failed: {detail or exc.reason}"
        atomic_write_json(
            wd / "xspec_failure.json",
            {
                "reason": why,
                "returncode": exc.returncode,
                "argv": exc.argv,
                "output_tail": exc.output_tail,
                "model": job.get("model"),
                "datasets": [d["name"] for d in job.get("datasets", [])],
            },
        )
        raise FitError(why) from exc

    def _to_result(self, record: Mapping[str, Any], elapsed: float) -> FitResult:
        versions = dict(record.get("versions") or {})
        return FitResult(
            model=record["model"],
            engine="xspec",
            stat=record["stat"],
            statistic=float(record["statistic"]),
            dof=int(record["dof"]),
            parameters=list(record["parameters"]),
            fluxes=dict(record.get("fluxes") or {}),
            luminosities=dict(record.get("luminosities") or {}),
            converged=bool(record.get("converged", True)),
            datasets=list(record.get("datasets") or []),
            abund=record.get("abund", "angr"),
            error_method=record.get("error_method", "profile"),
            error_delta=float(record.get("error_delta", 1.0)),
            extra_error_levels=[float(v) for v in record.get("extra_error_levels") or []],
            redshift=record.get("redshift"),
            fit_time_s=elapsed,
            versions=versions,
        )


def get_engine(*, timeout_s: float = 1800.0, chatter: int = 0) -> XspecEngine:
    """The XSPEC engine; ``ToolNotFoundError`` (with how to install/initialise HEASoft) when PyXspec is missing."""
    engine = XspecEngine(timeout_s=timeout_s, chatter=chatter)
    engine.check()
    return engine


ENGINE_CLASS = XspecEngine
