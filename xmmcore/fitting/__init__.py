"""Spectral fitting: OGIP datasets, XSPEC-named models, statistics, the built-in fit engine.

>>> from xmmcore.fitting import SpectrumDataset, fit
>>> ds = SpectrumDataset.from_pha("pn_src.pha").notice(0.5, 7.0)
>>> result = fit([ds], "wabs*(zbremss+zgauss)", stat="cstat", set_params=["1=0.03,frozen"])
"""

from __future__ import annotations

from typing import Any

from .datasets import SpectrumDataset
from .models import CompositeModel, get_component, parse_expression, register_component, register_resolver
from .optimize import fit, parse_setting
from .results import FitResult

__all__ = [
    "CompositeModel",
    "FitResult",
    "SpectrumDataset",
    "fit",
    "get_component",
    "parse_expression",
    "parse_setting",
    "plot_fit",
    "register_component",
    "register_resolver",
]


def plot_fit(result: FitResult, datasets: Any, path: Any) -> Any:
    """Plot data, folded model and residuals (see :func:`xmmcore.fitting.plots.plot_fit`)."""
    from .plots import plot_fit as _plot_fit

    return _plot_fit(result, datasets, path)
