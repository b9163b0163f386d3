"""Typed, frozen settings of the steps, built once from the resolved configuration.

The resolved configuration (``survey/defaults.yaml`` < file < overrides) is the only place defaults
live: ``from_config`` reads every key it needs with ``cfg[...]`` (a missing key is a
:class:`~xmmcore.errors.ConfigError` naming it), never with a fallback value of its own.

* :class:`ScreenSettings` — event screening of one camera (``filter.<cam>.*``);
* :class:`SpectraSettings` — grouping and responses (``spectra.*``);
* :class:`FitSettings` — one spectral fit, per ObsID and joint alike (``fit.*``, ``backend.fitting``,
  ``xspec.*``, ``cosmology``).

Flare settings are :class:`xmmcore.flares.FlareSettings` (``flare_settings(cfg["flares"], camera)``);
SAS settings are :class:`xmmcore.backends.sas.SasSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .constants import DEFAULT_COSMOLOGY, DEFAULT_FLUX_BANDS_KEV
from .errors import ConfigError

__all__ = ["FitSettings", "ScreenSettings", "SpectraSettings", "config_value"]


def config_value(cfg: Mapping[str, Any], dotted: str, *, prefix: str = "") -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; a missing key is a ``ConfigError`` naming ``prefix + dotted``."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"configuration key {prefix + dotted!r} is missing (see survey/defaults.yaml)")
        node = node[part]
    return node


@dataclass(frozen=True)
class ScreenSettings:
    """Event screening of one camera: ``PATTERN <= pattern_max``, FLAG, PI range, CCDs."""

    camera: str
    pattern_max: int | None
    flag: str | int
    pi_min: float | None
    pi_max: float | None
    ccds: tuple[int, ...] | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], camera: str) -> ScreenSettings:
        pre = f"filter.{camera}."
        f = config_value(cfg, f"filter.{camera}")
        ccds = config_value(f, "ccds", prefix=pre)
        return cls(
            camera=camera,
            pattern_max=config_value(f, "pattern_max", prefix=pre),
            flag=config_value(f, "flag", prefix=pre),
            pi_min=config_value(f, "pi_min", prefix=pre),
            pi_max=config_value(f, "pi_max", prefix=pre),
            ccds=None if ccds is None else tuple(int(c) for c in ccds),
        )

    def screen_kwargs(self, flag_mask: int | None) -> dict[str, Any]:
        """Keyword arguments of :func:`xmmcore.events.screen` (``flag_mask`` resolved from the header)."""
        return {
            "pattern_max": self.pattern_max,
            "flag_mask": flag_mask,
            "pi_min": self.pi_min,
            "pi_max": self.pi_max,
            "ccds": list(self.ccds) if self.ccds is not None else None,
        }


@dataclass(frozen=True)
class SpectraSettings:
    """Spectrum grouping and the responses the Python backend copies."""

    grouping: str
    min_counts: int
    #: camera_rmf/camera_arf -> file, or ``"sas"``: SAS rmfgen/arfgen on the Python spectra (DSS keywords)
    responses: Mapping[str, str] | str = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SpectraSettings:
        s = config_value(cfg, "spectra")
        return cls(
            grouping=str(config_value(s, "grouping", prefix="spectra.")),
            min_counts=int(config_value(s, "min_counts", prefix="spectra.")),
            responses=_responses(config_value(s, "responses", prefix="spectra.")),
        )


def _responses(value: Any) -> Mapping[str, str] | str:
    if isinstance(value, str):
        if value != "sas":
            raise ConfigError(f"spectra.responses must be a mapping of files or 'sas', got {value!r}")
        return value
    return dict(value or {})


@dataclass(frozen=True)
class FitSettings:
    """One spectral fit: model, statistic, band, settings, errors, fluxes; the engine and its options.

    The same object serves the per-ObsID fit step and the joint fits of several ObsIDs, so both use the
    same defaults (``fit.errors: profile``).

    Attributes
    ----------
    model, stat : str
    notice_kev : (float, float)
    set_params : tuple of str
        ``fit.set`` (XSPEC-style), applied after the automatic settings.
    free_abundance : bool
        ``fit.free_abundance``: every ``Abundanc`` parameter of the model is fitted (after ``fit.set``).
    auto_set : bool
        Freeze every Redshift at the target z and absorption nH at the target nH.
    errors : {"profile", "covariance"} or None
        ``fit.errors: none`` is ``None``.
    abund : str
    joint_cameras : bool
    flux_bands_kev : tuple of (float, float)
    cosmology : mapping {"H0", "Om0"}
    engine : str
        ``backend.fitting``.
    engine_options : mapping
        The engine's own section (``xspec.*`` for ``xspec``; empty for ``builtin``).
    """

    # The field defaults serve library calls without a configuration (a results folder without
    # config.resolved.yaml); they equal survey/defaults.yaml (tests/test_settings.py checks it).
    model: str = "tbabs*apec"
    stat: str = "cstat"
    notice_kev: tuple[float, float] = (0.5, 7.0)
    set_params: tuple[str, ...] = ("apec_1.Abundanc=0.3,frozen",)
    free_abundance: bool = False
    auto_set: bool = True
    errors: str | None = "profile"
    abund: str = "angr"
    joint_cameras: bool = True
    flux_bands_kev: tuple[tuple[float, float], ...] = DEFAULT_FLUX_BANDS_KEV
    cosmology: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_COSMOLOGY))
    engine: str = "builtin"
    engine_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FitSettings:
        pre = "fit."
        f = config_value(cfg, "fit")
        engine = str(config_value(cfg, "backend.fitting"))
        lo, hi = config_value(f, "notice_kev", prefix=pre)
        errors = config_value(f, "errors", prefix=pre)
        return cls(
            model=str(config_value(f, "model", prefix=pre)),
            stat=str(config_value(f, "stat", prefix=pre)),
            notice_kev=(float(lo), float(hi)),
            set_params=tuple(str(s) for s in (config_value(f, "set", prefix=pre) or ())),
            free_abundance=bool(config_value(f, "free_abundance", prefix=pre)),
            auto_set=bool(config_value(f, "auto_set", prefix=pre)),
            errors=None if errors in (None, "none") else str(errors),
            abund=str(config_value(f, "abund", prefix=pre)),
            joint_cameras=bool(config_value(f, "joint_cameras", prefix=pre)),
            flux_bands_kev=tuple(
                (float(b[0]), float(b[1])) for b in config_value(f, "flux_bands_kev", prefix=pre)
            ),
            cosmology={k: float(v) for k, v in dict(config_value(cfg, "cosmology")).items()},
            engine=engine,
            engine_options=dict(cfg.get(engine) or {}) if isinstance(cfg.get(engine), Mapping) else {},
        )

    def with_(self, **changes: Any) -> FitSettings:
        """A copy with some fields changed (command-line choices of a one-off joint fit)."""
        return replace(self, **changes)

    def parameter_settings(
        self, model: str | None = None, meta: Mapping[str, Any] | None = None
    ) -> list[str]:
        """Automatic settings from the target metadata (when ``auto_set``), then ``fit.set``."""
        from .pipeline import auto_settings  # the fit step's z/nH rule (pipeline imports this module)

        auto = auto_settings(model or self.model, dict(meta or {})) if self.auto_set else []
        free: list[str] = []
        if self.free_abundance:
            from .fitting.expression import parse_expression

            pars = parse_expression(model or self.model).parameters
            free = [f"{p.full_name}=free" for p in pars if p.name.lower() == "abundanc"]
        return [*auto, *self.set_params, *free]

    def fit_kwargs(self, *, redshift: float | None = None) -> dict[str, Any]:
        """Keyword arguments shared by every engine's ``fit_files`` (without inputs, model, settings)."""
        return {
            "stat": self.stat,
            "notice_kev": self.notice_kev,
            "abund": self.abund,
            "errors": self.errors,
            "redshift": redshift,
            "cosmology": dict(self.cosmology),
            "flux_bands_kev": [tuple(b) for b in self.flux_bands_kev],
        }
