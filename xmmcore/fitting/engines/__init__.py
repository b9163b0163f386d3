"""Fit engines by name: ``builtin`` (numpy/iminuit, always available) and ``xspec`` (PyXspec, optional).

Every engine implements :class:`FitEngine`: ``name``, ``from_config(cfg)`` (its options from the
resolved configuration), ``versions()`` and ``fit_files(inputs, model, *, stat, notice_kev, ...)``
returning a :class:`~xmmcore.fitting.results.FitResult` with the same ``to_dict()`` layout. The
pipeline calls :func:`engine_from_config` and never looks at the engine's name.

Adding an engine: a module ``engines/<name>.py`` with a class implementing :class:`FitEngine` and a
``get_engine(**options)`` function, and its name in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...settings import FitSettings
    from ..results import FitResult

__all__ = ["ENGINES", "FitEngine", "FitInput", "engine_from_config", "get_engine"]

ENGINES = ("builtin", "xspec")


@dataclass(frozen=True)
class FitInput:
    """Files of one spectrum to fit.

    Attributes
    ----------
    pha : Path
        Source spectrum.
    rmf, arf, bkg : Path or None
        Override RESPFILE / ANCRFILE / BACKFILE of the PHA header (``None`` = use the header).
    name : str
        Dataset label (camera name).
    """

    pha: Path
    rmf: Path | None = None
    arf: Path | None = None
    bkg: Path | None = None
    name: str = ""


def get_engine(name: str, **options: Any) -> Any:
    """Return the fit engine called ``name`` (``builtin`` | ``xspec``).

    ``options`` go to the engine's own ``get_engine`` (e.g. ``timeout_s``, ``chatter`` for XSPEC).

    Raises
    ------
    ConfigError
        Unknown engine name.
    ToolNotFoundError
        (from the xspec engine) HEASoft/PyXspec is not installed.
    """
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise ConfigError(f"unknown fit engine {name!r}; choose one of {', '.join(ENGINES)}")
    module = importlib.import_module(f"{__name__}.{key}")
    if hasattr(module, "get_engine"):
        return module.get_engine(**options)
    return module.ENGINE


@runtime_checkable
class FitEngine(Protocol):
    """What the pipeline, the CLI and joint fits need of a fit engine."""

    name: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | FitSettings) -> FitEngine:
        """The engine with its options taken from the resolved configuration (``cfg["xspec"]`` etc.) or
        from :attr:`FitSettings.engine_options <xmmcore.settings.FitSettings.engine_options>`."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the software the fits depend on (for provenance)."""
        ...

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
    ) -> FitResult:
        """Fit the spectra of ``inputs`` with the model expression ``model``."""
        ...


def engine_class(name: str) -> type[FitEngine]:
    """The engine class called ``name``; ``ConfigError`` for an unknown name."""
    key = str(name).strip().lower()
    if key not in ENGINES:
        raise ConfigError(f"unknown fit engine {name!r}; choose one of {', '.join(ENGINES)}")
    module = importlib.import_module(f"{__name__}.{key}")
    cls: type[FitEngine] = module.ENGINE_CLASS
    return cls


def engine_from_config(cfg: Mapping[str, Any] | FitSettings) -> FitEngine:
    """The engine selected by ``backend.fitting`` (or :attr:`FitSettings.engine`), built by its own
    ``from_config`` with its options (the resolved configuration's section, or ``engine_options``).

    Raises
    ------
    ConfigError
        Unknown engine name.
    ToolNotFoundError
        The engine's software (HEASoft/PyXspec for ``xspec``) is not installed.
    """
    from ...settings import FitSettings

    name = cfg.engine if isinstance(cfg, FitSettings) else cfg["backend"]["fitting"]
    return engine_class(name).from_config(cfg)
