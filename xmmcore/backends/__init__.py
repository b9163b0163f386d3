"""Reduction backends by name: ``python`` (embedded, default) and ``sas`` (SAS/ESAS).

The SAS backend module is imported only when asked for, so the Python backend works where SAS
(and its Python helpers) are absent.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

__all__ = ["BACKENDS", "ReductionBackend", "get_backend"]

#: Backend name -> (module under ``xmmcore.backends``, class). The one list of backend names
#: (``backend.reduction`` accepts exactly these).
BACKENDS: dict[str, tuple[str, str]] = {"python": ("python", "PythonBackend"), "sas": ("sas", "SasBackend")}


@runtime_checkable
class ReductionBackend(Protocol):
    """What every reduction backend provides (see ``docs/CONTRACTS.md``)."""

    name: str

    def versions(self) -> dict[str, str]: ...

    def filter_camera(self, obs: Any, camera: str, outdir: Any, cfg: dict[str, Any], *, log: Any) -> dict: ...

    def spectra_camera(
        self, obs: Any, camera: str, outdir: Any, regions: dict[str, Any], cfg: dict[str, Any], *, log: Any
    ) -> dict: ...


def get_backend(name: str) -> ReductionBackend:
    """Return the reduction backend called ``name`` (``python`` | ``sas``).

    Raises
    ------
    ConfigError
        Unknown name.
    """
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ConfigError(f"unknown reduction backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[key]
    backend: ReductionBackend = getattr(importlib.import_module(f".{module}", __name__), cls)()
    return backend
