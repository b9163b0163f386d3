"""Reduction backends by name: ``python`` (embedded, default) and ``sas`` (SAS/ESAS).

The SAS backend module is imported only when asked for, so the Python backend works where SAS
(and its Python helpers) are absent.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

__all__ = ["BACKENDS", "ReductionBackend", "get_backend"]

BACKENDS = ("python", "sas")


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
        Unknown name, or the module does not define a backend.
    """
    key = str(name).strip().lower()
    if key == "python":
        from .python import PythonBackend

        return PythonBackend()
    if key == "sas":
        mod = importlib.import_module(".sas", __name__)
        for attr in ("SasBackend", "SASBackend"):
            cls = getattr(mod, attr, None)
            if cls is not None:
                return cls()
        factory = getattr(mod, "get_backend", None) or getattr(mod, "backend", None)
        if callable(factory):
            return factory()
        raise ConfigError("xmmcore.backends.sas defines no SasBackend class")
    raise ConfigError(f"unknown reduction backend {name!r}; known: {', '.join(BACKENDS)}")
