"""Typed, frozen settings of the steps, built once from the resolved configuration.

The resolved configuration (``survey/defaults.yaml`` < file < overrides) is the only place defaults
live: ``from_config`` reads every key it needs with ``cfg[...]`` (a missing key is a
:class:`~xmmcore.errors.ConfigError` naming it), never with a fallback value of its own.

* :class:`ScreenSettings` — event screening of one camera (``filter.<cam>.*``);
* :class:`SpectraSettings` — grouping and responses (``spectra.*``);
* :class:`RegionSettings` — the regions step (``regions.*``, ``cameras``, ``cosmology``, ``plots``);
* :class:`PlotSettings` — which per-ObsID figures are drawn (``plots``);
* :class:`XspecSettings` — the XSPEC engine's own options (``xspec.*``);
* :class:`FitSettings` — one spectral fit, per ObsID and joint alike (``fit.*``, ``backend.fitting``,
  the engine's options, ``cosmology``).

Flare settings are :class:`xmmcore.flares.FlareSettings` (``FlareSettings.from_config(cfg, camera)``);
SAS settings are :class:`xmmcore.backends.sas.SasSettings` (``SasSettings.from_config(cfg)``).
Every class is built by ``from_config`` from the resolved configuration; ``survey.config.load_config``
builds all of them once, so a key missing from the configuration is a load error (exit 2), not a
failure of a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .constants import DEFAULT_COSMOLOGY, DEFAULT_FLUX_BANDS_KEV
from .errors import ConfigError

__all__ = [
    "FitSettings",
    "PlotSettings",
    "RegionSettings",
    "ScreenSettings",
    "SpectraSettings",
    "XspecSettings",
    "config_value",
    "cosmology_from_config",
    "engine_options_from_config",
]


def config_value(cfg: Mapping[str, Any], dotted: str, *, prefix: str = "") -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; a missing key is a ``ConfigError`` naming ``prefix + dotted``."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"configuration key {prefix + dotted!r} is missing (see survey/defaults.yaml)")
        node = node[part]
    return node


def cosmology_from_config(cfg: Mapping[str, Any]) -> dict[str, float]:
    """``{"H0", "Om0"}`` of the ``cosmology`` section (both keys required)."""
    c = config_value(cfg, "cosmology")
    return {k: float(config_value(c, k, prefix="cosmology.")) for k in ("H0", "Om0")}


#: Values of the ``plots`` configuration key.
PLOT_LEVELS = ("all", "summary", "none")


@dataclass(frozen=True)
class PlotSettings:
    """Which per-ObsID figures are drawn (``plots: all | summary | none``)."""

    level: str

    def __post_init__(self) -> None:
        if self.level not in PLOT_LEVELS:
            raise ConfigError(f"plots must be one of {', '.join(PLOT_LEVELS)}, got {self.level!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PlotSettings:
        return cls(level=str(config_value(cfg, "plots")))

    def wants(self, camera: str | None = None, cameras: Any = ()) -> bool:
        """``all``: every figure; ``none``: none; ``summary``: the per-ObsID figures (``camera=None``)
        and the per-camera figures of the first camera of ``cameras`` only."""
        if self.level == "none":
            return False
        if self.level == "all" or camera is None:
            return True
        return camera == next(iter(cameras), camera)


@dataclass(frozen=True)
class RegionSettings:
    """The regions step: centre, source radius, background, point sources, user and extra regions.

    Attributes mirror ``regions.*`` of ``survey/defaults.yaml`` (``radius.method`` is
    ``radius_method``, ``background.inner`` is ``bkg_inner``, ``point_sources.snr`` is ``ps_snr``...);
    ``cameras``, ``cosmology`` and ``plots`` are the top-level keys the step also needs.
    """

    centre: str | tuple[float, float]
    radius_method: str
    radius_arcmin: float | None
    radius_r_kpc: float | None
    sb_nsigma: float
    bkg_method: str
    bkg_inner: float
    bkg_outer: float
    bkg_region_file: str | None
    blanksky_files: Mapping[str, str]
    detect_point_sources: bool
    ps_snr: float
    ps_mask_radius_arcsec: float
    user_src_region: str | None
    user_bkg_region: str | None
    annuli: tuple[float, ...] | None
    core_excised: bool
    cameras: tuple[str, ...]
    cosmology: Mapping[str, float]
    plots: PlotSettings

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RegionSettings:
        r = config_value(cfg, "regions")

        def get(key: str) -> Any:
            return config_value(r, key, prefix="regions.")

        centre = get("centre")
        if isinstance(centre, (list, tuple)):
            if len(centre) != 2:
                raise ConfigError(f"regions.centre must be 'auto' or [ra_deg, dec_deg], got {centre!r}")
            centre = (float(centre[0]), float(centre[1]))
        elif centre != "auto":
            raise ConfigError(f"regions.centre must be 'auto' or [ra_deg, dec_deg], got {centre!r}")
        annuli = get("annuli")
        arcmin, r_kpc = get("radius.arcmin"), get("radius.r_kpc")
        return cls(
            centre=centre,
            radius_method=str(get("radius.method")),
            radius_arcmin=None if arcmin is None else float(arcmin),
            radius_r_kpc=None if r_kpc is None else float(r_kpc),
            sb_nsigma=float(get("radius.sb_nsigma")),
            bkg_method=str(get("background.method")),
            bkg_inner=float(get("background.inner")),
            bkg_outer=float(get("background.outer")),
            bkg_region_file=_optional_str(get("background.region_file")),
            blanksky_files={str(k): str(v) for k, v in (get("background.blanksky_files") or {}).items()},
            detect_point_sources=bool(get("point_sources.detect")),
            ps_snr=float(get("point_sources.snr")),
            ps_mask_radius_arcsec=float(get("point_sources.mask_radius_arcsec")),
            user_src_region=_optional_str(get("user_src_region")),
            user_bkg_region=_optional_str(get("user_bkg_region")),
            annuli=None if not annuli else tuple(float(a) for a in annuli),
            core_excised=bool(get("core_excised")),
            cameras=tuple(str(c) for c in (config_value(cfg, "cameras") or ())),
            cosmology=cosmology_from_config(cfg),
            plots=PlotSettings.from_config(cfg),
        )

    @property
    def background_region(self) -> str | None:
        """The user's off-source DS9 file: ``user_bkg_region``, else ``background.region_file`` when
        ``background.method: region``."""
        if self.user_bkg_region:
            return self.user_bkg_region
        return self.bkg_region_file if self.bkg_method == "region" else None

    def config_files(self) -> list[str]:
        """Files named by these settings that the regions step reads (part of its inputs hash)."""
        out = [self.user_src_region, self.user_bkg_region]
        if self.bkg_method == "region":
            out.append(self.bkg_region_file)
        return [f for f in out if f]


def _optional_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


@dataclass(frozen=True)
class XspecSettings:
    """Options of the XSPEC engine (``xspec.*``): per-fit timeout [s], chatter, ESAS sky background."""

    timeout_s: float
    chatter: int
    esas_sky: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> XspecSettings:
        x = config_value(cfg, "xspec")
        return cls(
            timeout_s=float(config_value(x, "timeout_s", prefix="xspec.")),
            chatter=int(config_value(x, "chatter", prefix="xspec.")),
            esas_sky=bool(config_value(x, "esas_sky", prefix="xspec.")),
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``XspecEngine(...)``."""
        return {"timeout_s": self.timeout_s, "chatter": self.chatter, "esas_sky": self.esas_sky}


#: Engine name -> the settings class of its own options (engines without options are absent).
ENGINE_SETTINGS: dict[str, type[XspecSettings]] = {"xspec": XspecSettings}


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
    #: auto | correct | none: whether L500 divides out the aperture's vignetting (on-axis ARFs)
    arf_vignetting: str = "auto"
    #: matched | plain: the local background's sky part rescaled by the vignetting ratio, or area-scaled only
    local_background: str = "matched"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SpectraSettings:
        s = config_value(cfg, "spectra")
        return cls(
            grouping=str(config_value(s, "grouping", prefix="spectra.")),
            min_counts=int(config_value(s, "min_counts", prefix="spectra.")),
            responses=_responses(config_value(s, "responses", prefix="spectra.")),
            arf_vignetting=str(config_value(s, "arf_vignetting", prefix="spectra.")),
            local_background=str(config_value(s, "local_background", prefix="spectra.")),
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
    error_levels : tuple of float
        ``fit.error_levels``: the confidence level of ``err_lo``/``err_hi`` (0.683 = delta-stat 1), then
        the further levels (0.9) computed for the free shape parameters (``intervals`` of each).
    abund : str
    joint_cameras : bool
    flux_bands_kev : tuple of (float, float)
    cosmology : mapping {"H0", "Om0"}
    engine : str
        ``backend.fitting``.
    engine_options : mapping
        The engine's own options (:class:`XspecSettings` for ``xspec``; empty for ``builtin``): what
        ``engine_from_config`` builds the engine with.
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
    error_levels: tuple[float, ...] = (0.683, 0.9)
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
            error_levels=tuple(float(v) for v in config_value(f, "error_levels", prefix=pre)),
            abund=str(config_value(f, "abund", prefix=pre)),
            joint_cameras=bool(config_value(f, "joint_cameras", prefix=pre)),
            flux_bands_kev=tuple(
                (float(b[0]), float(b[1])) for b in config_value(f, "flux_bands_kev", prefix=pre)
            ),
            cosmology=cosmology_from_config(cfg),
            engine=engine,
            engine_options=engine_options_from_config(cfg, engine),
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
            "extra_error_levels": tuple(self.error_levels[1:]),
            "redshift": redshift,
            "cosmology": dict(self.cosmology),
            "flux_bands_kev": [tuple(b) for b in self.flux_bands_kev],
        }


def engine_options_from_config(cfg: Mapping[str, Any], engine: str) -> dict[str, Any]:
    """Keyword arguments of the engine ``engine`` from its own configuration section (empty if it has none)."""
    settings = ENGINE_SETTINGS.get(engine)
    return settings.from_config(cfg).options() if settings is not None else {}
