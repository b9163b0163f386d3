"""The built-in fit engine: reads the files with :mod:`xmmcore.ogip`, fits with :func:`xmmcore.fitting.fit`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...settings import FitSettings
from ..datasets import BackgroundMissingWarning, SpectrumDataset
from ..optimize import fit
from ..results import FitResult
from . import FitInput

__all__ = ["ENGINE", "ENGINE_CLASS", "BuiltinEngine", "get_engine", "load_datasets"]


def load_datasets(
    inputs: Sequence[FitInput],
    *,
    notice_kev: Sequence[float] | None = None,
    use_background: bool = True,
    log: logging.Logger | None = None,
) -> list[SpectrumDataset]:
    """Build noticed :class:`SpectrumDataset` objects from :class:`FitInput` records."""
    logger = log or logging.getLogger(__name__)
    out = []
    for k, inp in enumerate(inputs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BackgroundMissingWarning)
            ds = SpectrumDataset.from_pha(
                inp.pha,
                rmf=inp.rmf,
                arf=inp.arf,
                bkg=inp.bkg,
                use_background=use_background,
                name=inp.name or f"ds{k + 1}",
            )
        for w in caught:
            logger.warning("%s", w.message)
        if notice_kev is not None:
            ds.notice(float(notice_kev[0]), float(notice_kev[1]))
        out.append(ds)
    return out


class BuiltinEngine:
    """numpy models + scipy.sparse folding + iminuit (no HEASoft needed)."""

    name = "builtin"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | FitSettings) -> BuiltinEngine:
        """The engine (it has no options of its own: the fit options come with each call)."""
        return ENGINE

    def versions(self) -> dict[str, str]:
        """Versions of the libraries the fit depends on (for provenance)."""
        import iminuit
        import numpy
        import scipy

        out = {
            "engine": "builtin",
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "iminuit": iminuit.__version__,
        }
        try:
            from importlib.metadata import version

            out["xspectrampoline"] = version("xspectrampoline")
        except Exception as exc:  # noqa: BLE001 - the plug-in models are optional; provenance must not fail
            logging.getLogger(__name__).debug("xspectrampoline version unavailable: %s", exc)
        return out

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
        use_background: bool = True,
        links: Sequence[tuple[str, str]] = (),
        error_level: float = 1.0,
        extra_error_levels: Sequence[float] = (),
    ) -> FitResult:
        """Fit the spectra in ``inputs`` (see :func:`xmmcore.fitting.fit` for the options).

        ``workdir`` is unused (the built-in engine writes nothing); it exists for the XSPEC engine.
        """
        datasets = load_datasets(inputs, notice_kev=notice_kev, use_background=use_background, log=log)
        result = fit(
            datasets,
            model,
            stat=stat,
            set_params=set_params,
            links=links,
            cross_norm=cross_norm,
            errors=errors,
            error_level=error_level,
            extra_error_levels=extra_error_levels,
            abund=abund,
            redshift=redshift,
            cosmology=cosmology,
            flux_bands=tuple(tuple(b) for b in flux_bands_kev),
            log=log,
        )
        result.versions = self.versions()
        return result


ENGINE = BuiltinEngine()
ENGINE_CLASS = BuiltinEngine


def get_engine() -> BuiltinEngine:
    """The engine instance."""
    return ENGINE
