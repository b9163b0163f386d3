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
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xmmcore.errors import ConfigError
from xmmcore.fsutil import atomic_write_text

__all__ = [
    "DEFAULTS_PATH",
    "RESOLVED_NAME",
    "Config",
    "config_hash",
    "example_config_text",
    "load_config",
    "load_defaults",
    "parse_override",
    "read_resolved",
    "write_example_config",
    "write_resolved",
]

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
RESOLVED_NAME = "config.resolved.yaml"

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
    "backend.reduction": ("python", "sas"),
    "backend.fitting": ("builtin", "xspec"),
    "flares.method": ("histogram", "espfilt", "fixed", "none"),
    "regions.radius.method": ("fixed", "physical", "r500", "sb"),
    "regions.background.method": ("annulus", "region", "blanksky"),
    "spectra.grouping": ("min_counts", "optimal", "none"),
    "fit.stat": ("cstat", "wstat", "chi2", "chi2data", "chi2gehrels", "chi2model"),
    "fit.errors": ("profile", "covariance", "none"),
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


def _check_value(dotted: str, value: Any, default: Any, where: str) -> Any:
    allowed = _allowed_for(dotted, default)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        raise ConfigError(
            f"{where}: {dotted} must be {_type_name(allowed)}, got {value!r} ({type(value).__name__})"
        )
    if dotted in _CHOICES and value not in _CHOICES[dotted]:
        raise ConfigError(f"{where}: {dotted} must be one of {', '.join(_CHOICES[dotted])}, got {value!r}")
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


def load_defaults() -> dict[str, Any]:
    """The defaults from ``survey/defaults.yaml`` as a plain dict."""
    data = yaml.safe_load(DEFAULTS_PATH.read_text(encoding="utf-8"))
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
    """

    data: dict[str, Any]
    sources: tuple[str, ...] = field(default=("defaults",))

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
        _apply_overrides(data, overrides, reference=load_defaults())
        return Config(data, self.sources + ("overrides",))

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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
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


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Iterable[str] | Mapping[str, Any] | None = None
) -> Config:
    """Resolve the configuration: defaults < YAML file < overrides.

    Parameters
    ----------
    path : path, optional
        A YAML file with any subset of the keys of ``survey/defaults.yaml``.
    overrides : list of "key.sub=value" strings, or a mapping dotted key -> value, optional
        Command-line settings; string values are parsed as YAML (``fit.notice_kev=[0.3,8]``).

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
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        try:
            layer = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if layer is not None:
            _merge(data, layer, reference=reference, prefix="", where=str(path))
        sources.append(str(path))
    if overrides:
        _apply_overrides(data, overrides, reference=reference)
        sources.append("cli")
    return Config(data, tuple(sources))


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
