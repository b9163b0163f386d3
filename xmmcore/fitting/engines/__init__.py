"""Fit engines by name: ``builtin`` (numpy/iminuit, always available) and ``xspec`` (PyXspec, optional).

Every engine has ``name``, ``versions()`` and ``fit_files(inputs, model, *, stat, notice_kev, ...)``
returning a :class:`~xmmcore.fitting.results.FitResult` with the same ``to_dict()`` layout.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = ["ENGINES", "FitInput", "get_engine"]

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
