"""Plot of a fit: data and folded model per dataset (counts s^-1 keV^-1, log energy) with residuals."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_path
from .results import FitResult

__all__ = ["plot_fit"]


def plot_fit(result: FitResult, datasets: Sequence[Any] | None, path: str | Path) -> Path:
    """Write a PNG/PDF with the data, the folded model and (data - model) / sigma per dataset.

    Parameters
    ----------
    result : FitResult
        A result of the built-in engine (it keeps the fitted datasets). For results of other engines
        the spectra in ``datasets`` are re-read and the model evaluated with the result's parameters.
    datasets : sequence of SpectrumDataset or FitInput, optional
        Used when ``result`` carries no datasets.
    path : str or Path
        Output image.
    """
    problem = result._problem
    values = result._values
    if problem is None:
        problem, values = _rebuild(result, datasets)
    with _FIG_LOCK:
        global _FIGURE
        if _FIGURE is None:
            _FIGURE = _FitFigure()
        return _FIGURE.save(result, problem, values, Path(path))


class _FitFigure:
    """The two axes of :func:`plot_fit`, kept for the process and given each fit's artists anew.

    Creating a figure's axes and their (log-axis minor) ticks cost about half of drawing a fit plot; every
    fit plot has the same layout, so only the lines, legend, title and tick locators are replaced.
    """

    def __init__(self) -> None:
        from matplotlib.figure import Figure

        from ..plots import _figure, figure_canvas, place_labels

        _figure()  # the Agg backend, as for every figure here
        # A Figure outside pyplot: kept for the process without pyplot's figure registry holding it.
        self.fig = fig = Figure(figsize=(7.5, 6.0))
        figure_canvas(fig)
        self.ax, self.axr = fig.subplots(
            2,
            1,
            sharex=True,
            gridspec_kw={
                "height_ratios": [3, 1],
                "left": 0.115,
                "right": 0.98,
                "bottom": 0.085,
                "top": 0.955,
                "hspace": 0.06,
            },
        )
        self.ax.set_ylabel("normalised counts [s\u207b\u00b9 keV\u207b\u00b9]")  # unicode: no mathtext parse
        self.axr.set_xlabel("energy [keV]")
        self.axr.set_ylabel("(data \u2212 model) / \u03c3")
        place_labels(self.ax, y_in=0.5)
        place_labels(self.axr, x_in=0.3, y_in=0.5)
        fig.set_layout_engine("none")  # fixed margins (gridspec above): one draw, no tight_layout pass

    def save(self, result: FitResult, problem: Any, values: Any, path: Path) -> Path:
        from ..plots import readable_log_axis, save_png, unicode_log_labels

        ax, axr = self.ax, self.axr
        for artist in [*ax.lines, *axr.lines]:
            artist.remove()
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        # Fresh scales (default locators and formatters) and data limits, as on a new figure.
        for a in (ax, axr):
            a.relim()
            a.set_autoscale_on(True)
        axr.set_yscale("linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        import matplotlib as mpl

        colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
        for d, ds in enumerate(problem.datasets):
            colour = colours[d % len(colours)]
            lo = ds.group_lo_kev[ds.mask]
            hi = ds.group_hi_kev[ds.mask]
            width = np.maximum(hi - lo, 1e-6)
            centre = 0.5 * (lo + hi)
            counts = ds.counts
            model = problem.predicted(values, d)
            net = counts.astype(float)
            var = np.maximum(counts, 1.0)
            if ds.has_background:
                net = counts - ds.bkg_scale * ds.bkg_counts
                var = var + ds.bkg_scale**2 * np.maximum(ds.bkg_counts, 1.0)
            norm = ds.exposure * width
            _error_bars(ax, centre, net / norm, lo, hi, np.sqrt(var) / norm, colour=colour, label=ds.name)
            ax.step(
                np.r_[lo, hi[-1:]],
                np.r_[model / norm, (model / norm)[-1:]],
                where="post",
                color=colour,
                lw=1.0,
            )
            _error_bars(axr, centre, (net - model) / np.sqrt(var), lo, hi, 1.0, colour=colour)
        axr.axhline(0, color="k", lw=0.8)
        ax.set_title(
            f"{result.model}  ({result.stat} = {result.statistic:.1f} / {result.dof} dof)", fontsize=9
        )
        ax.legend(fontsize=8)
        readable_log_axis(axr, "x")  # the shared x axis: plain 0.5, 1, 2, 5 keV ticks
        ax.xaxis.set_major_formatter(axr.xaxis.get_major_formatter())
        ax.tick_params(labelbottom=False)
        unicode_log_labels(ax, "y")
        readable_log_axis(ax, "y")
        fmt = path.suffix.lstrip(".").lower() or "png"
        if fmt == "png":
            save_png(self.fig, path, dpi=120)
        else:
            with atomic_path(path) as tmp:
                self.fig.savefig(tmp, dpi=120, format=fmt)
        return path


_FIG_LOCK = threading.Lock()
_FIGURE: _FitFigure | None = None


def _error_bars(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    x_lo: np.ndarray,
    x_hi: np.ndarray,
    y_err: Any,
    *,
    colour: str,
    label: str | None = None,
) -> None:
    """Points with x (bin) and y (1 sigma) error bars, as ``errorbar(fmt=".", ms=2, lw=0.6)`` draws them.

    The bars are ONE polyline with NaN breaks instead of two collections of one path per bin: on log axes
    a collection transforms each of its ~1000 paths separately, which made the fit plot the slowest figure.
    """
    y = np.asarray(y, dtype=float)
    y_err = np.broadcast_to(np.asarray(y_err, dtype=float), y.shape)
    gap = np.full_like(y, np.nan)
    bar_x = np.column_stack([x_lo, x_hi, gap, x, x, gap]).ravel()
    bar_y = np.column_stack([y, y, gap, y - y_err, y + y_err, gap]).ravel()
    ax.plot(bar_x, bar_y, color=colour, lw=0.6)
    ax.plot(x, y, ".", ms=2, color=colour, label=label)


def _rebuild(result: FitResult, datasets: Sequence[Any] | None) -> tuple[Any, np.ndarray]:
    from .datasets import SpectrumDataset
    from .engines.builtin import load_datasets
    from .models import parse_expression
    from .optimize import FitProblem

    if not datasets:
        raise ValueError("plot_fit needs the datasets for a result without them")
    ds_list = [d for d in datasets if isinstance(d, SpectrumDataset)]
    if len(ds_list) != len(datasets):
        ds_list = load_datasets(list(datasets), notice_kev=None)
        for ds, info in zip(ds_list, result.datasets):
            rng = info.get("noticed_kev")
            if rng:
                ds.notice(rng[0] + 1e-9, rng[1] - 1e-9)
    problem = FitProblem(
        ds_list, parse_expression(result.model), result.stat, cross_norm=len(ds_list) > 1, abund=result.abund
    )
    values = problem.slot_values()
    for p in result.parameters:
        key = p["name"] if not p.get("dataset") else f"{p['dataset']}:{p['name']}"
        try:
            values[problem.slot_of(key)] = float(p["value"])
        except (KeyError, ValueError):  # a parameter the rebuilt model lacks is skipped
            continue
    return problem, values
