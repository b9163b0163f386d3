"""Strict, layered configuration: ``survey/defaults.yaml`` < a YAML file < command-line overrides.

Every key a user may set is in ``survey/defaults.yaml`` (the reference, with comments). A key that is
not there is an error naming its dotted path (``fit.modle``), and so is a value of the wrong type
(``cluster.workers: two``). The resolved configuration is written next to the results as
``results/config.resolved.yaml`` with its hash, so every product can be traced to the settings that
made it.

Examples
--------
>>> from survey.config import load_config
>>> cfg = load_config("survey.yaml", ["fit.stat=chi2", "cluster.workers=4"])
>>> cfg["fit"]["stat"], cfg.get("cluster.workers")
('chi2', 4)
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from xmmcore.errors import ConfigError
from xmmcore.fsutil import atomic_write_text
from xmmcore.products import SurveyLayout

__all__ = [
    "DEFAULTS_PATH",
    "MAX_CONFIG_BYTES",
    "MAX_LOCAL_WORKERS",
    "RESOLVED_NAME",
    "Config",
    "check_environment",
    "check_limits",
    "check_obsid_selection",
    "config_hash",
    "example_config_text",
    "load_config",
    "load_defaults",
    "parse_override",
    "read_resolved",
    "write_example_config",
    "write_resolved",
    "yaml_load_strict",
]

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
RESOLVED_NAME = SurveyLayout.RESOLVED_CONFIG

_NoneType = type(None)
# Keys whose type cannot be inferred from the default value alone (default null, or several forms).
_ALLOWED_TYPES: dict[str, tuple[type, ...]] = {
    "obsids": (_NoneType, list, str),
    "targets_csv": (_NoneType, str),
    "regions.centre": (str, list),
    "filter.*.flag": (str, int),
    "filter.*.ccds": (_NoneType, list),
    "regions.radius.r_kpc": (_NoneType, int, float),
    "regions.annuli": (_NoneType, list),
    "cluster.address": (_NoneType, str),
    "cluster.slurm.queue": (_NoneType, str),
    "cluster.slurm.account": (_NoneType, str),
    "cluster.slurm.interface": (_NoneType, str),
    "cluster.slurm.log_directory": (_NoneType, str),
    "cluster.slurm.python": (_NoneType, str),
    "cluster.slurm.scheduler_host": (_NoneType, str),
    "sas.sas_dir": (_NoneType, str),
    "sas.ccf_path": (_NoneType, str),
    "regions.background.region_file": (_NoneType, str),
    "regions.user_src_region": (_NoneType, str),
    "regions.user_bkg_region": (_NoneType, str),
    "pipeline.steps": (_NoneType, list),
    "flares.band_kev": (_NoneType, list),
    "flares.nsigma": (_NoneType, int, float),
}
# Mappings whose keys are free (camera -> file, ...): values are checked, keys are not.
_OPEN_MAPS = {"regions.background.blanksky_files", "spectra.responses"}
_CHOICES: dict[str, tuple[str, ...]] = {
    "cluster.kind": ("local", "slurm", "address"),
    "flares.method": ("histogram", "espfilt", "fixed", "none"),
    "regions.radius.method": ("fixed", "physical", "r500", "sb"),
    "regions.background.method": ("annulus", "region", "blanksky"),
    "spectra.grouping": ("min_counts", "optimal", "none"),
    "spectra.arf_vignetting": ("auto", "correct", "none"),
    "spectra.local_background": ("matched", "plain"),
    "fit.errors": ("profile", "covariance", "none"),
    "plots": ("all", "summary", "none"),
}
_POSITIVE = {
    "cluster.workers",
    "cluster.threads_per_worker",
    "cluster.slurm.cores",
    "cluster.slurm.processes",
}
# Numbers with a null default ("the method's default") that are still floats when set as integers.
_FLOAT_OR_NULL = {"flares.nsigma"}
_NON_NEGATIVE = {"retries.transient", "retries.backoff_s", "cluster.slurm.minimum_jobs"}


#: A configuration file larger than this is refused before it is parsed [bytes].
MAX_CONFIG_BYTES = 1 << 20


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*x``) and duplicate mapping keys.

    Aliases are refused while the document is composed, before anything is expanded, so a
    "billion laughs" document of a few hundred bytes cannot hang the run or exhaust memory.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} refused "
                "(anchors and aliases are not allowed in a configuration; write the value out)"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if first is not None:
                    raise yaml.YAMLError(
                        f"line {line}: duplicate key {key!r} (first given on line {first}); "
                        "give each key once"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def yaml_load_strict(text: str, where: str) -> Any:
    """Parse YAML ``text`` safely: no Python tags, no aliases, no duplicate keys.

    Raises
    ------
    ConfigError
        Naming ``where`` (a file, ``command line``) and the cause.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: {len(text)} characters is more than a configuration can be ({MAX_CONFIG_BYTES})"
        )
    loader = _StrictLoader(text)  # a SafeLoader subclass: no Python tags
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    except RecursionError as exc:
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from exc
    finally:
        loader.dispose()


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        _NoneType: "null",
        list: "list",
        dict: "mapping",
        str: "string",
        int: "integer",
        float: "number",
        bool: "true/false",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def _allowed_for(dotted: str, default: Any) -> tuple[type, ...]:
    for pattern, types in _ALLOWED_TYPES.items():
        parts, keys = pattern.split("."), dotted.split(".")
        if len(parts) == len(keys) and all(p in ("*", k) for p, k in zip(parts, keys)):
            return types
    if default is None:
        return (_NoneType, str, int, float, list)
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


def _registry_choices(dotted: str) -> tuple[str, ...] | None:
    """Names a registry-backed key accepts, from the registry itself (imported only when needed)."""
    if dotted == "backend.reduction":
        from xmmcore.backends import BACKENDS

        return tuple(BACKENDS)
    if dotted == "backend.fitting":
        from xmmcore.fitting.engines import ENGINES

        return tuple(ENGINES)
    if dotted == "fit.stat":
        from xmmcore.fitting.stats import STATISTIC_CLASSES

        return tuple(STATISTIC_CLASSES)
    return None


def _choices(dotted: str) -> tuple[str, ...] | None:
    return _CHOICES.get(dotted) or _registry_choices(dotted)


def _check_value(dotted: str, value: Any, default: Any, where: str) -> Any:
    allowed = _allowed_for(dotted, default)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        raise ConfigError(
            f"{where}: {dotted} must be {_type_name(allowed)}, got {value!r} ({type(value).__name__})"
        )
    choices = _choices(dotted)
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {dotted} must be one of {', '.join(choices)}, got {value!r}")
    if dotted in _POSITIVE and value < 1:
        raise ConfigError(f"{where}: {dotted} must be >= 1, got {value!r}")
    if dotted in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where}: {dotted} must be >= 0, got {value!r}")
    if (isinstance(default, float) or dotted in _FLOAT_OR_NULL) and isinstance(value, int):
        return float(value)
    return value


def _merge(
    base: dict[str, Any], layer: Mapping[str, Any], *, reference: dict[str, Any], prefix: str, where: str
) -> None:
    """Merge ``layer`` into ``base`` in place, checking every key and type against ``reference``."""
    if not isinstance(layer, Mapping):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the configuration'} must be a mapping, "
            f"got {type(layer).__name__}"
        )
    for key, value in layer.items():
        if not isinstance(key, str):
            raise ConfigError(
                f"{where}: key {key!r} under {prefix.rstrip('.') or 'top level'} is not a string"
            )
        dotted = prefix + key
        if dotted.rstrip(".") in _OPEN_MAPS:
            base[key] = copy.deepcopy(value)
            continue
        if key not in reference:
            known = ", ".join(sorted(reference))
            raise ConfigError(f"{where}: unknown configuration key {dotted!r} (known keys here: {known})")
        default = reference[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{where}: {dotted} must be a mapping of its own keys "
                    f"({', '.join(sorted(default))}), got {value!r}"
                )
            _merge(base[key], value, reference=default, prefix=dotted + ".", where=where)
        else:
            base[key] = _check_value(dotted, copy.deepcopy(value), default, where)


def _overrides_set_fit_set(overrides: Iterable[str] | Mapping[str, Any] | None) -> bool:
    if not overrides:
        return False
    keys = overrides.keys() if isinstance(overrides, Mapping) else (parse_override(o)[0] for o in overrides)
    return any(str(k).strip() == "fit.set" for k in keys)


def _check_fit_model(
    data: dict[str, Any], reference: dict[str, Any], where: str, *, user_set: bool = False
) -> None:
    """``fit.model`` parses and ``fit.set`` follows it (science's part of the load-time checks).

    ``fit.set`` left at its default keeps only the entries naming parameters the model has, so that
    setting ``fit.model`` alone works; entries the user set must all name parameters of the model.
    Mistakes are ``ConfigError`` (exit 2) here, before any reduction runs.
    """
    from xmmcore.fitting.models import parse_expression
    from xmmcore.fitting.optimize import parse_setting

    fit = data.get("fit")
    if not isinstance(fit, dict) or not isinstance(fit.get("model"), str):
        return
    expr = fit["model"]
    try:
        model = parse_expression(expr)
    except ConfigError as exc:
        raise ConfigError(f"{where}: fit.model {expr!r}: {exc}") from exc
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise ConfigError(f"{where}: fit.model {expr!r} is not a valid model expression: {exc}") from exc
    names = ", ".join(p.full_name for p in model.parameters)
    default_set = list(reference.get("fit", {}).get("set") or [])
    entries = list(fit.get("set") or [])
    left_at_default = not user_set and entries == default_set

    def known(key: str) -> bool:
        dataset, sep, bare = key.partition(":")
        name = bare if sep and dataset.strip().isdigit() else key
        if sep and name.strip().lower().startswith("constant"):
            return True  # the per-dataset cross-normalisation the fit adds itself
        try:
            model.index(name)
        except ConfigError:
            return False
        return True

    kept = []
    for entry in entries:
        try:
            key, _value, _frozen, link = parse_setting(entry)
        except ConfigError as exc:
            raise ConfigError(f"{where}: fit.set entry {entry!r}: {exc}") from exc
        ok = known(key) and (link is None or known(link))
        if ok:
            kept.append(entry)
        elif not left_at_default:
            raise ConfigError(
                f"{where}: fit.set entry {entry!r} names a parameter that fit.model {expr!r} does not have "
                f"(its parameters: {names})"
            )
    fit["set"] = kept
    if fit.get("free_abundance") and not any(p.name.lower() == "abundanc" for p in model.parameters):
        raise ConfigError(
            f"{where}: fit.free_abundance is true but fit.model {expr!r} has no Abundanc parameter ({names})"
        )


def load_defaults() -> dict[str, Any]:
    """The defaults from ``survey/defaults.yaml`` as a plain dict."""
    data = yaml_load_strict(DEFAULTS_PATH.read_text(encoding="utf-8"), str(DEFAULTS_PATH))
    if not isinstance(data, dict):
        raise ConfigError(f"{DEFAULTS_PATH} is not a mapping")
    return data


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(data: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON form of a configuration mapping."""
    return hashlib.sha256(_canonical(data).encode()).hexdigest()


@dataclass(frozen=True)
class Config(Mapping[str, Any]):
    """A resolved configuration: read-only mapping of the keys of ``defaults.yaml``.

    Attributes
    ----------
    data : dict
        The resolved values (do not modify; use :meth:`to_dict` for a copy).
    sources : tuple of str
        The layers applied, lowest first (``defaults``, the file path, ``cli``).
    explicit : frozenset of str
        Dotted keys the user set (in the file or as overrides), whatever their value; see :meth:`is_set`.
    """

    data: dict[str, Any]
    sources: tuple[str, ...] = field(default=("defaults",))
    explicit: frozenset[str] = field(default=frozenset(), compare=False)

    def is_set(self, key: str) -> bool:
        """True when the user set ``key`` (dotted), or a key below it when ``key`` is a mapping.

        Settings passed on to a third-party library whose own configuration may apply (dask-jobqueue's
        ``jobqueue.yaml``) are passed only when this is true.
        """
        return any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in self.explicit)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Value at a dotted key (``"cluster.slurm.cores"``), or ``default`` when absent."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict[str, Any]:
        """A deep copy as a plain dict (what the steps receive)."""
        return copy.deepcopy(self.data)

    @property
    def hash(self) -> str:
        """sha256 of the resolved values (hex)."""
        return config_hash(self.data)

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> Config:
        """A new Config with dotted overrides applied (same checks as :func:`load_config`)."""
        data = self.to_dict()
        reference = load_defaults()
        _apply_overrides(data, overrides, reference=reference)
        check_limits(data, where="overrides")
        _check_fit_model(data, reference, "overrides", user_set=_overrides_set_fit_set(overrides))
        return Config(data, self.sources + ("overrides",), self.explicit | _override_keys(overrides))

    def to_yaml(self) -> str:
        """The resolved values as YAML, headed by the layers and the hash."""
        head = (
            f"# xmm-survey resolved configuration (do not edit; re-run with --config instead)\n"
            f"# layers: {' < '.join(self.sources)}\n# config_hash: sha256:{self.hash}\n"
        )
        return head + yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key.sub=value"`` into the dotted key and the YAML-parsed value.

    Raises
    ------
    ConfigError
        If there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    value = yaml_load_strict(raw, f"override {text!r}: value") if raw.strip() else None
    return key, value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _apply_overrides(
    data: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None, *, reference: dict[str, Any]
) -> None:
    if not overrides:
        return
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        if any(not part for part in key.split(".")):
            raise ConfigError(f"override key {key!r} has an empty part")
        _merge(data, _nest(key, value), reference=reference, prefix="", where="command line")


def _dotted_keys(layer: Any, prefix: str = "") -> set[str]:
    """The dotted keys of the values (leaves, not the mappings above them) a (validated) layer sets."""
    if not isinstance(layer, Mapping) or not layer:
        return {prefix.rstrip(".")} if prefix else set()
    out: set[str] = set()
    for key, value in layer.items():
        out |= _dotted_keys(value, f"{prefix}{key}.")
    return out


def _override_keys(overrides: Iterable[str] | Mapping[str, Any] | None) -> set[str]:
    if not overrides:
        return set()
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    out: set[str] = set()
    for key, value in items:
        out |= _dotted_keys(value, key + ".")
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    *,
    for_run: bool = False,
) -> Config:
    """Resolve the configuration: defaults < YAML file < overrides.

    Parameters
    ----------
    path : path, optional
        A YAML file with any subset of the keys of ``survey/defaults.yaml``.
    overrides : list of "key.sub=value" strings, or a mapping dotted key -> value, optional
        Command-line settings; string values are parsed as YAML (``fit.notice_kev=[0.3,8]``).
    for_run : bool
        Also check what a run needs before any work starts: :func:`check_environment` (the tools of the
        chosen backends, engines and cluster) and :func:`check_obsid_selection` (every listed ObsID
        has a folder).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Unknown key (named by its dotted path), wrong type, unreadable or invalid YAML file.
    """
    reference = load_defaults()
    data = copy.deepcopy(reference)
    sources = ["defaults"]
    explicit: set[str] = set()
    if path is not None:
        path = Path(path)
        try:
            if path.exists() and not path.is_file():
                raise ConfigError(f"cannot read configuration file {path}: not a regular file")
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"{path}: {path.stat().st_size} bytes is more than a configuration can be "
                    f"({MAX_CONFIG_BYTES})"
                )
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        layer = yaml_load_strict(text, str(path))
        if layer is not None:
            _merge(data, layer, reference=reference, prefix="", where=str(path))
            explicit |= _dotted_keys(layer)
        sources.append(str(path))
    if overrides:
        _apply_overrides(data, overrides, reference=reference)
        explicit |= _override_keys(overrides)
        sources.append("cli")
    where = " < ".join(sources[1:]) or "defaults"
    check_limits(data, where=where)
    check_step_settings(data, where=where)
    _check_fit_model(data, reference, " < ".join(sources), user_set=any(k == "fit.set" for k in explicit))
    if for_run:
        check_environment(data, where=where)
        check_obsid_selection(data, where=where)
        check_input_files(data, where=where)
    return Config(data, tuple(sources), frozenset(explicit))


def step_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every step's frozen settings object built from the resolved configuration ``data``.

    The settings classes read their keys without fallback values (defaults live only in
    ``survey/defaults.yaml``), so a key one of them needs that the configuration lacks is a
    ``ConfigError`` naming it.  Keys: ``screen.<cam>``, ``flares.<cam>``, ``regions``, ``spectra``,
    ``fit``, ``plots``, ``xspec``, ``sas``.
    """
    from xmmcore.backends.sas import SasSettings
    from xmmcore.constants import CAMERAS
    from xmmcore.flares import FlareSettings
    from xmmcore.settings import (
        FitSettings,
        PlotSettings,
        RegionSettings,
        ScreenSettings,
        SpectraSettings,
        XspecSettings,
    )

    out: dict[str, Any] = {}
    for cam in CAMERAS:
        out[f"screen.{cam}"] = ScreenSettings.from_config(data, cam)
        out[f"flares.{cam}"] = FlareSettings.from_config(data, cam)
    out["regions"] = RegionSettings.from_config(data)
    out["spectra"] = SpectraSettings.from_config(data)
    out["fit"] = FitSettings.from_config(data)
    out["plots"] = PlotSettings.from_config(data)
    out["xspec"] = XspecSettings.from_config(data)
    out["sas"] = SasSettings.from_config(data, environ={})
    return out


def check_step_settings(data: Mapping[str, Any], *, where: str = "configuration") -> None:
    """Build every step's settings once at load time (:func:`step_settings`): a missing key or a value
    a settings class refuses is a load error (exit 2) instead of a failure of every ObsID's step."""
    try:
        step_settings(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def write_resolved(cfg: Config, results_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``results/config.resolved.yaml`` atomically and return its path."""
    results = Path(results_dir if results_dir is not None else cfg["results_dir"])
    return atomic_write_text(results / RESOLVED_NAME, cfg.to_yaml())


def read_resolved(results_dir: str | os.PathLike[str]) -> Config:
    """Load ``results/config.resolved.yaml`` (written by a previous run) as a Config."""
    path = Path(results_dir) / RESOLVED_NAME
    if not path.exists():
        raise ConfigError(f"{path} not found: has a survey been run with --results {results_dir}?")
    return load_config(path)


def example_config_text() -> str:
    """The commented example configuration (``survey/defaults.yaml`` itself)."""
    return DEFAULTS_PATH.read_text(encoding="utf-8")


def write_example_config(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the commented example configuration to ``path`` (refuses to overwrite unless asked)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; use --force to overwrite it")
    return atomic_write_text(path, example_config_text())


# ---------------------------------------------------------------------------------------------
# Physical and operational limits of the values (checked once the layers are merged)
# ---------------------------------------------------------------------------------------------

#: Upper bound of ``cluster.workers`` (and ``threads_per_worker``): more processes than this on one
#: machine is a typo (``workers: 10000``), not a plan; SLURM scales with ``cluster.slurm.maximum_jobs``.
MAX_LOCAL_WORKERS = 256
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CAMERA_NAMES = ("pn", "mos1", "mos2")
# dotted key -> (low, low inclusive, high, high inclusive); None = unbounded. Wildcards match one level.
_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "cosmology.H0": (0.0, False, None, False),
    "cosmology.Om0": (0.0, False, 1.0, True),
    "spectra.min_counts": (1, True, None, False),
    "flares.bin_s": (0.0, False, None, False),
    "flares.nsigma": (0.0, False, None, False),
    "flares.min_gti_s": (0.0, True, None, False),
    "flares.fixed_rate.*": (0.0, False, None, False),
    "filter.*.pattern_max": (0, True, 31, True),
    "filter.*.pi_min": (0, True, None, False),
    "filter.*.pi_max": (0, False, None, False),
    "regions.radius.arcmin": (0.0, False, 60.0, True),
    "regions.radius.r_kpc": (0.0, False, None, False),
    "regions.radius.sb_nsigma": (0.0, False, None, False),
    "regions.background.inner": (0.0, True, None, False),
    "regions.background.outer": (0.0, False, None, False),
    "regions.point_sources.snr": (0.0, False, None, False),
    "regions.point_sources.mask_radius_arcsec": (0.0, False, None, False),
    "sas.timeout_s": (0.0, False, None, False),
    "xspec.timeout_s": (0.0, False, None, False),
    "cluster.workers": (1, True, MAX_LOCAL_WORKERS, True),
    "cluster.threads_per_worker": (1, True, MAX_LOCAL_WORKERS, True),
    "cluster.slurm.cores": (1, True, 4096, True),
    "cluster.slurm.processes": (1, True, 4096, True),
    "cluster.slurm.minimum_jobs": (0, True, 100_000, True),
    "cluster.slurm.maximum_jobs": (1, True, 100_000, True),
    "retries.transient": (0, True, 20, True),
    "pipeline.step_timeout_s": (0.0, True, None, False),
    "retries.backoff_s": (0.0, True, 3600.0, True),
}
# dotted key -> lowest allowed value of each end of an energy band [keV]
_BANDS = {"fit.notice_kev": 0.0, "flares.band_kev": 0.0}
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def _walk(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _walk(value, dotted + ".")
        else:
            yield dotted, value


def _matches(pattern: str, dotted: str) -> bool:
    parts, keys = pattern.split("."), dotted.split(".")
    return len(parts) == len(keys) and all(p in ("*", k) for p, k in zip(parts, keys))


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(dotted: str, value: Any, rule: tuple[Any, bool, Any, bool], where: str) -> None:
    if value is None:
        return
    lo, lo_in, hi, hi_in = rule
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(f"{where}: {dotted} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (value == lo and not lo_in)):
        raise ConfigError(f"{where}: {dotted} must be {'>=' if lo_in else '>'} {lo}, got {value!r}")
    if hi is not None and (value > hi or (value == hi and not hi_in)):
        raise ConfigError(f"{where}: {dotted} must be {'<=' if hi_in else '<'} {hi}, got {value!r}")


def _check_band(dotted: str, value: Any, low: float, where: str) -> None:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_number(v) and math.isfinite(v) for v in value)
    )
    if not ok:
        raise ConfigError(f"{where}: {dotted} must be two numbers [low, high] in keV, got {value!r}")
    if not low <= value[0] < value[1]:
        raise ConfigError(
            f"{where}: {dotted} must be an ordered band with {low} <= low < high [keV], got {value!r}"
        )


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_dashboard(value: Any, public: bool, where: str) -> None:
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{where}: cluster.dashboard_address must be host:port (e.g. 127.0.0.1:8787), got {value!r}"
        )
    if public:
        return
    if not host or not _loopback(host):
        try:
            everywhere = not host or ipaddress.ip_address(host.strip("[]")).is_unspecified
        except ValueError:
            everywhere = False
        raise ConfigError(
            f"{where}: cluster.dashboard_address {value!r} would listen on "
            f"{'every interface' if everywhere else host}; the dashboard "
            "has no password, so it must be on loopback (127.0.0.1:PORT) unless cluster.dashboard_public "
            "is true"
        )


#: Options of ``dask worker`` that say where it listens (their values are checked for loopback).
_WORKER_LISTEN_OPTIONS = ("--host", "--listen-address", "--contact-address", "--interface")
_NETWORK_ADVICE = (
    "Dask's scheduler and workers have no authentication (anyone who reaches the port runs code as "
    "you), so they stay on loopback unless cluster.allow_network is true (a real multi-node cluster on "
    "a trusted network)"
)


def _address_host(address: str) -> str:
    """The host of ``tcp://host:port``, ``host:port``, ``[v6]:port`` or a bare host."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    if text.count(":") == 1:
        return text.rpartition(":")[0]
    return text


def loopback_interface(name: str) -> bool:
    """True when the network interface ``name`` of this host has only loopback addresses (``lo``).

    An interface this host does not have (the compute nodes' ``ib0``) cannot be checked: it counts as
    not loopback.
    """
    import socket

    try:
        import psutil
    except ImportError:  # distributed depends on psutil; without it only the usual names are known
        return name in ("lo", "lo0")
    addrs = psutil.net_if_addrs().get(name)
    if not addrs:
        return False
    ips = [a.address.split("%", 1)[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    return bool(ips) and all(_loopback(ip) for ip in ips)


def worker_listen_values(args: Iterable[Any]) -> list[tuple[str, str]]:
    """``(option, value)`` of each listen option of a ``dask worker`` argument list (``--host X``, ``--host=X``)."""
    items = [str(a) for a in args]
    out = []
    for i, item in enumerate(items):
        opt, eq, val = item.partition("=")
        if opt in _WORKER_LISTEN_OPTIONS:
            value = val if eq else (items[i + 1] if i + 1 < len(items) else "")
            out.append((opt, value))
    return out


def _listen_problem(what: str, value: str, *, interface: bool = False) -> str | None:
    if "$" in value:  # a shell variable expanded on the compute node (e.g. $XMM_NODE_ADDR): not known here
        return None
    ok = loopback_interface(value) if interface else _loopback(_address_host(value))
    if ok:
        return None
    kind = "interface" if interface else "address"
    host = value if interface else _address_host(value)
    try:
        everywhere = not interface and (not host or ipaddress.ip_address(host).is_unspecified)
    except ValueError:
        everywhere = False
    return f"{what} = {value!r} is {'every interface' if everywhere else f'a non-loopback {kind}'}"


def check_network(data: Mapping[str, Any], *, where: str = "configuration") -> None:
    """Every address the configuration names for the cluster is on loopback, unless ``cluster.allow_network``.

    Checked: ``cluster.address`` (the scheduler ``kind: address`` connects to), ``cluster.slurm.scheduler_host``,
    ``cluster.slurm.interface`` (an interface of this host with only loopback addresses, e.g. ``lo``) and
    the listen options (``--host``, ``--listen-address``, ``--contact-address``, ``--interface``) in
    ``cluster.slurm.worker_extra_args``; a value holding a shell variable (``$XMM_NODE_ADDR``) expands on
    the compute node and is not known here. 127.0.0.0/8 and ::1 are loopback (the multi-node SLURM of
    ``slurm/local-cluster.sh`` puts its nodes on 127.0.0.11-13). The dashboard has its own key
    (``cluster.dashboard_public``). What a SLURM cluster really listens on (the site's ``jobqueue.yaml``
    included) is checked again when it starts (:func:`check_slurm_listen`).

    Raises
    ------
    ConfigError
        Naming the key, its value and ``cluster.allow_network``.
    """
    cluster = data.get("cluster") or {}
    if cluster.get("allow_network"):
        return
    slurm = cluster.get("slurm") or {}
    problems = []
    if cluster.get("address"):
        problems.append(_listen_problem("cluster.address", str(cluster["address"])))
    if slurm.get("scheduler_host"):
        problems.append(_listen_problem("cluster.slurm.scheduler_host", str(slurm["scheduler_host"])))
    if slurm.get("interface"):
        problems.append(_listen_problem("cluster.slurm.interface", str(slurm["interface"]), interface=True))
    for opt, value in worker_listen_values(slurm.get("worker_extra_args") or []):
        problems.append(
            _listen_problem(f"cluster.slurm.worker_extra_args {opt}", value, interface=opt == "--interface")
        )
    found = [p for p in problems if p]
    if found:
        raise ConfigError(f"{where}: {'; '.join(found)}: {_NETWORK_ADVICE}")


def check_slurm_listen(kwargs: Mapping[str, Any], *, allow_network: bool) -> None:
    """What a ``SLURMCluster`` built from ``kwargs`` (+ the site's dask config) listens on is loopback.

    The scheduler listens on ``scheduler_options`` host/interface, else the site's
    ``jobqueue.slurm.scheduler-options``, else the workers' ``interface``; with none of them it
    listens on every interface. A worker listens on its ``--host``/``--interface``... option, else on
    ``interface``, else on every interface of its node.

    Raises
    ------
    ConfigError
        Naming what would listen where and ``cluster.allow_network``.
    """
    if allow_network:
        return
    import dask

    sched = dict(dask.config.get("jobqueue.slurm.scheduler-options", default=None) or {})
    sched.update(kwargs.get("scheduler_options") or {})
    interface = kwargs.get("interface") or dask.config.get("jobqueue.slurm.interface", default=None)
    problems = []
    if sched.get("host"):
        problems.append(_listen_problem("the scheduler's host", str(sched["host"])))
    elif sched.get("interface") or interface:
        problems.append(
            _listen_problem(
                "the scheduler's interface", str(sched.get("interface") or interface), interface=True
            )
        )
    else:
        problems.append(
            "the scheduler would listen on every interface (set cluster.slurm.scheduler_host: 127.0.0.1 "
            "or cluster.slurm.interface: lo)"
        )
    listen = worker_listen_values(kwargs.get("worker_extra_args") or [])
    if listen:
        for opt, value in listen:
            problems.append(_listen_problem(f"worker {opt}", value, interface=opt == "--interface"))
    elif interface:
        problems.append(_listen_problem("the workers' interface", str(interface), interface=True))
    else:
        problems.append(
            "the workers would listen on every interface of their node (set cluster.slurm.interface: lo, "
            'or worker_extra_args: ["--host", "<loopback address>"])'
        )
    found = [p for p in problems if p]
    if found:
        raise ConfigError(f"cluster.kind = slurm: {'; '.join(found)}: {_NETWORK_ADVICE}")


#: Largest file the configuration may name that is read whole (regions, responses, lists) [bytes];
#: event lists (blank-sky) and table models have their own, larger limits where they are read.
_CONFIG_FILE_KEYS = (
    ("regions.user_src_region", 1 << 20),
    ("regions.user_bkg_region", 1 << 20),
    ("regions.background.region_file", 1 << 20),
    ("targets_csv", 64 << 20),
)


def check_input_files(data: Mapping[str, Any], *, where: str = "configuration") -> None:
    """Every file the configuration names is a regular file below its size limit (checked by ``stat``).

    User and background regions, the targets CSV, ``spectra.responses`` (RMF/ARF), the blank-sky event
    lists and the ``atable{}`` tables of ``fit.model``: a FIFO or a device would block a reader or feed it
    without end, so it is refused here, naming the key, before any work starts. The readers check again
    (the file may change before a step reads it).

    Raises
    ------
    ConfigError
        Naming the key, the file and what it is.
    """
    from xmmcore.errors import InputDataError
    from xmmcore.fsutil import regular_file
    from xmmcore.ogip import MAX_OGIP_BYTES

    named: list[tuple[str, Any, int]] = []
    for dotted, limit in _CONFIG_FILE_KEYS:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        named.append((dotted, node, limit))
    responses = (data.get("spectra") or {}).get("responses")
    if isinstance(responses, Mapping):
        named += [(f"spectra.responses.{k}", v, MAX_OGIP_BYTES) for k, v in responses.items()]
    blank = ((data.get("regions") or {}).get("background") or {}).get("blanksky_files") or {}
    if isinstance(blank, Mapping):
        named += [(f"regions.background.blanksky_files.{k}", v, 64 << 30) for k, v in blank.items()]
    for dotted, value, limit in named:
        if not value or not isinstance(value, str):
            continue
        try:
            regular_file(value, max_bytes=limit, what=f"{dotted} file")
        except InputDataError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


def check_limits(data: Mapping[str, Any], *, where: str = "configuration") -> None:
    """Check the physical and operational ranges of a merged configuration (types are already checked).

    Numbers within their ranges (H0 > 0, 0 < Om0 <= 1, min_counts >= 1, bin_s > 0, finite...),
    ordered 2-element energy bands, pi_min < pi_max, background inner < outer, workers <=
    :data:`MAX_LOCAL_WORKERS`, the dashboard on loopback unless ``cluster.dashboard_public``, a
    ``pipeline.module`` that is a dotted Python module name (checked before anything imports it).

    Raises
    ------
    ConfigError
        Naming the key, its value and the allowed range.
    """
    for dotted, value in _walk(data):
        for pattern, rule in _RANGES.items():
            if _matches(pattern, dotted):
                _check_range(dotted, value, rule, where)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {dotted} must be a finite number, got {value!r}")
    for dotted, low in _BANDS.items():
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            _check_band(dotted, node, low, where)
    fit = data.get("fit") or {}
    if "error_levels" in fit:
        _check_error_levels(fit["error_levels"], where)
    for i, band in enumerate(fit.get("flux_bands_kev") or []):
        _check_band(f"fit.flux_bands_kev[{i}]", band, 0.0, where)
    for cam, section in (data.get("filter") or {}).items():
        pi_min = section.get("pi_min") if isinstance(section, Mapping) else None
        pi_max = section.get("pi_max") if isinstance(section, Mapping) else None
        if _is_number(pi_min) and _is_number(pi_max) and float(pi_min) >= float(pi_max):
            raise ConfigError(
                f"{where}: filter.{cam}.pi_min ({pi_min}) must be below filter.{cam}.pi_max ({pi_max})"
            )
    regions = data.get("regions") or {}
    bkg = regions.get("background") or {}
    if _is_number(bkg.get("inner")) and _is_number(bkg.get("outer")) and bkg["inner"] >= bkg["outer"]:
        raise ConfigError(
            f"{where}: regions.background.inner ({bkg['inner']}) must be below "
            f"regions.background.outer ({bkg['outer']})"
        )
    centre = regions.get("centre")
    if isinstance(centre, list):
        ok = len(centre) == 2 and all(_is_number(v) and math.isfinite(v) for v in centre)
        if not ok or not (0.0 <= centre[0] <= 360.0 and -90.0 <= centre[1] <= 90.0):
            raise ConfigError(
                f"{where}: regions.centre must be auto or [ra_deg, dec_deg] with 0 <= ra <= 360 and "
                f"-90 <= dec <= 90, got {centre!r}"
            )
    elif centre is not None and centre != "auto":
        raise ConfigError(f"{where}: regions.centre must be auto or [ra_deg, dec_deg], got {centre!r}")
    annuli = regions.get("annuli")
    if annuli is not None:
        ok = len(annuli) >= 2 and all(_is_number(v) and math.isfinite(v) and v >= 0 for v in annuli)
        if not ok or any(b <= a for a, b in zip(annuli, annuli[1:])):
            raise ConfigError(
                f"{where}: regions.annuli must be >= 2 increasing radii >= 0 [arcmin], got {annuli!r}"
            )
    cameras = data.get("cameras")
    if isinstance(cameras, list):
        bad = [c for c in cameras if c not in _CAMERA_NAMES]
        if bad or not cameras or len(set(cameras)) != len(cameras):
            raise ConfigError(
                f"{where}: cameras must be distinct names among {', '.join(_CAMERA_NAMES)}, got {cameras!r}"
            )
    cluster = data.get("cluster") or {}
    slurm = cluster.get("slurm") or {}
    lo_jobs, hi_jobs = slurm.get("minimum_jobs"), slurm.get("maximum_jobs")
    if _is_number(lo_jobs) and _is_number(hi_jobs) and float(lo_jobs) > float(hi_jobs):
        raise ConfigError(
            f"{where}: cluster.slurm.minimum_jobs ({lo_jobs}) must not exceed "
            f"cluster.slurm.maximum_jobs ({hi_jobs})"
        )
    if "dashboard_address" in cluster:
        _check_dashboard(cluster["dashboard_address"], bool(cluster.get("dashboard_public")), where)
    check_network(data, where=where)
    _check_run_one_lock(cluster.get("run_one") or {}, where)
    module = (data.get("pipeline") or {}).get("module")
    if module is not None and not (isinstance(module, str) and _MODULE_RE.fullmatch(module)):
        raise ConfigError(
            f"{where}: pipeline.module must be a dotted Python module name (xmmcore.pipeline), got "
            f"{module!r}; it is checked before it is imported"
        )


#: Confidence levels ``fit.error_levels`` may add after the first (each has catalogue columns).
EXTRA_ERROR_LEVELS = (0.9,)


def _check_error_levels(levels: Any, where: str) -> None:
    """``fit.error_levels``: 0.683 (the ``*_err_lo``/``*_err_hi`` columns, delta-stat 1) first, then distinct
    levels among :data:`EXTRA_ERROR_LEVELS` (their ``*_err_lo90``/``*_err_hi90`` columns)."""
    ok = isinstance(levels, list) and levels and all(_is_number(v) for v in levels)
    if not ok or abs(float(levels[0]) - 0.683) > 1e-9:
        raise ConfigError(
            f"{where}: fit.error_levels must be a list starting with 0.683 (the 1-sigma intervals, delta-stat 1), "
            f"optionally followed by {', '.join(map(str, EXTRA_ERROR_LEVELS))}; got {levels!r}"
        )
    extra = [float(v) for v in levels[1:]]
    bad = [v for v in extra if not any(abs(v - e) < 1e-9 for e in EXTRA_ERROR_LEVELS)]
    if bad or len(set(extra)) != len(extra):
        raise ConfigError(
            f"{where}: fit.error_levels: after 0.683 only distinct levels among "
            f"{', '.join(map(str, EXTRA_ERROR_LEVELS))} have catalogue columns; got {levels!r}"
        )


def _check_run_one_lock(section: Mapping[str, Any], where: str) -> None:
    """``cluster.run_one``: a positive heartbeat, and a stale bound of at least three heartbeats."""
    beat, stale = section.get("lock_heartbeat_s"), section.get("lock_stale_s")
    for key, value in (("lock_heartbeat_s", beat), ("lock_stale_s", stale)):
        if value is not None and not (_is_number(value) and value > 0):
            raise ConfigError(f"{where}: cluster.run_one.{key} must be > 0 [s], got {value!r}")
    if _is_number(beat) and _is_number(stale) and stale < 3 * beat:
        raise ConfigError(
            f"{where}: cluster.run_one.lock_stale_s ({stale}) must be at least 3 x "
            f"cluster.run_one.lock_heartbeat_s ({beat}): a live holder would be taken over between two heartbeats"
        )


def check_environment(data: Mapping[str, Any], *, where: str = "configuration", cluster: bool = True) -> None:
    """Check that the tools the configuration selects are installed, before any work starts.

    ``backend.reduction: sas`` needs SAS (``SAS_DIR`` or ``sas.sas_dir`` and its tasks on the PATH),
    ``backend.fitting: xspec`` needs PyXspec, and (when ``cluster``) ``cluster.kind: slurm`` needs ``sbatch``
    on the PATH (``run-one`` inside a job array passes ``cluster=False``: compute nodes need no ``sbatch``).

    Raises
    ------
    ConfigError
        Naming the key, its value, the missing tool and what to install or set.
    """
    backend = data.get("backend") or {}
    if backend.get("reduction") == "sas":
        from xmmcore.backends.sas import SasBackend
        from xmmcore.errors import ToolNotFoundError

        try:
            SasBackend().check_installation(("evselect", "sasversion"), cfg=data)
        except ToolNotFoundError as exc:  # its message names backend.reduction and what to set
            raise ConfigError(f"{where}: {exc}") from exc
    if backend.get("fitting") == "xspec":
        from xmmcore.fitting.engines.xspec import missing_xspec_hint, xspec_available

        if not xspec_available():
            raise ConfigError(f"{where}: {missing_xspec_hint()}")
    kind = (data.get("cluster") or {}).get("kind")
    if cluster and kind == "slurm":
        _check_slurm(where)


def _check_slurm(where: str) -> None:
    """``sbatch`` on the PATH and a controller that answers ``sinfo`` (else dask-jobqueue retries forever)."""
    import shutil
    import tempfile

    from xmmcore.errors import ExternalToolError, ToolNotFoundError
    from xmmcore.tools import run_tool

    advice = (
        "run xmm-survey on a SLURM login node (or `sbatch slurm/driver.sbatch`), start SLURM "
        "(slurm/local-cluster.sh for one machine), or use cluster.kind: local"
    )
    if shutil.which("sbatch") is None:
        raise ConfigError(
            f"{where}: cluster.kind = slurm, but sbatch is not on the PATH of this machine: {advice}"
        )
    if shutil.which("sinfo") is None:
        return  # sbatch alone (a site wrapper): let the submission say what is wrong
    with tempfile.TemporaryDirectory(prefix="xmm-survey-sinfo-") as tmp:
        try:
            run_tool(["sinfo", "--noheader", "--format=%P"], cwd=tmp, timeout_s=20.0, check_sas_errors=False)
        except (ExternalToolError, ToolNotFoundError) as exc:
            tail = " ".join(str(getattr(exc, "output_tail", "") or exc).split())[-300:]
            raise ConfigError(
                f"{where}: cluster.kind = slurm, but the SLURM controller does not answer (sinfo: {tail}): {advice}"
            ) from exc


def _listed_obsids(spec: Any, where: str) -> list[tuple[str, str]]:
    """``(label, name)`` of every ObsID named by ``obsids`` (a list, a list file, or IDs with commas).

    A glob selects among existing folders, so it names none.
    """
    from xmmcore.errors import InputDataError
    from xmmcore.observation import validate_obsid

    if isinstance(spec, list):
        items = [(f"obsids[{i}]", str(v).strip()) for i, v in enumerate(spec)]
    elif isinstance(spec, str) and Path(spec).is_file():
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: obsids: cannot read the ObsID list {spec}: {exc}") from exc
        items = [
            (f"obsids ({spec}:{n})", line.split("#", 1)[0].strip())
            for n, line in enumerate(text.splitlines(), start=1)
            if line.split("#", 1)[0].strip()
        ]
    elif isinstance(spec, str) and not any(ch in spec for ch in "*?["):
        items = [("obsids", n.strip()) for n in spec.split(",") if n.strip()]
    else:
        return []
    for label, name in items:
        try:
            validate_obsid(name)
        except InputDataError as exc:
            raise ConfigError(f"{where}: {label}: {exc}") from exc
    return items


def check_obsid_selection(data: Mapping[str, Any], *, where: str = "configuration") -> None:
    """Every ObsID that ``obsids`` names is a plain name with a folder under ``data_dir``.

    A typo in a list is a configuration error before any cluster starts, with the closest folder names,
    not a failed ObsID (and a failed catalogue row) after the run. Skipped when ``data_dir`` does not exist
    (the run refuses that itself, naming the folder).

    Raises
    ------
    ConfigError
        Naming the entry (``obsids[2]``, ``obsids (list.txt:4)``) and the folders it could have meant.
    """
    import difflib

    items = _listed_obsids(data.get("obsids"), where)
    data_dir = Path(str(data.get("data_dir") or "data"))
    if not items or not data_dir.is_dir():
        return
    missing = [(label, name) for label, name in items if not (data_dir / name).is_dir()]
    if not missing:
        return
    folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    lines = []
    for label, name in missing[:10]:
        close = difflib.get_close_matches(name, folders, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        if label == "obsids" and len(items) == 1:
            hint += " and there is no ObsID list file of that name"
        lines.append(f"{label}: {name!r} has no folder in {data_dir}{hint}")
    more = f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise ConfigError(f"{where}: " + "; ".join(lines) + more)
