"""Fit results: JSON record (the catalogue's input), XSPEC ``.xcm`` script and a text summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_write_json, atomic_write_text
from .stats import STATISTICS, xspec_stat

__all__ = ["SCHEMA_VERSION", "FitResult"]

SCHEMA_VERSION = 1


@dataclass
class FitResult:
    """The outcome of a spectral fit (same layout for every engine).

    Attributes
    ----------
    model : str
        Model expression as fitted (``constant*(...)`` when a cross-normalisation was added).
    engine : str
        ``builtin`` or ``xspec``.
    stat : str
        Statistic name.
    statistic : float
        Best-fit statistic value.
    dof : int
        Degrees of freedom (bins - free parameters).
    parameters : list of dict
        ``{name, number, value, err_lo, err_hi, sigma, unit, frozen, linked[, dataset][, intervals]}``;
        errors are positive distances from the value at ``error_delta``; ``sigma`` is the covariance
        1-sigma error; ``intervals`` (free shape parameters) holds the further levels of
        ``extra_error_levels`` by label: ``{"90": {level, delta, err_lo, err_hi, method[, note]}}``.
    fluxes : dict
        Band key (``"0.5-2.0"``) -> ``{absorbed, absorbed_err_lo, absorbed_err_hi, unabsorbed, ...}``
        in erg cm^-2 s^-1.
    luminosities : dict
        Rest-frame band key -> ``{value, err_lo, err_hi, redshift}`` in erg s^-1.
    converged : bool
        MIGRAD reported a valid minimum.
    datasets : list of dict
        Per dataset: name, files, exposure, bins, notice range, statistic used.
    """

    model: str
    engine: str
    stat: str
    statistic: float
    dof: int
    parameters: list[dict[str, Any]]
    fluxes: dict[str, Any] = field(default_factory=dict)
    luminosities: dict[str, Any] = field(default_factory=dict)
    converged: bool = True
    datasets: list[dict[str, Any]] = field(default_factory=list)
    abund: str = "angr"
    error_method: str = "covariance"
    #: parameter -> why its profile interval was replaced by the covariance error
    error_fallbacks: dict[str, str] = field(default_factory=dict)
    error_delta: float = 1.0
    #: confidence levels of the further intervals in each shape parameter's ``intervals`` (``[0.9]``)
    extra_error_levels: list[float] = field(default_factory=list)
    redshift: float | None = None
    goodness_pvalue: float | None = None
    fit_time_s: float = math.nan
    covariance: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    _problem: Any = field(default=None, repr=False, compare=False)
    _values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def attach(self, problem: Any, slot_values: np.ndarray) -> None:
        """Keep the fitted problem (datasets + model) for plots; not serialised."""
        self._problem = problem
        self._values = np.asarray(slot_values, dtype=float)

    # ------------------------------------------------------------------ lookups
    def parameter(self, name: str, dataset: str | None = None) -> dict[str, Any]:
        """The parameter record by full name (``wabs_2.nH``), unique short name (``PhoIndex``) or number."""
        cands = [p for p in self.parameters if (dataset is None or p.get("dataset") in (None, dataset))]
        for key in ("name",):
            hits = [p for p in cands if p[key] == name or str(p["number"]) == str(name)]
            if not hits:
                hits = [p for p in cands if p["name"].split(".")[-1] == name]
            if len(hits) >= 1 and (len(hits) == 1 or dataset is not None):
                return hits[0]
            if len(hits) > 1:
                raise KeyError(f"parameter {name!r} is ambiguous: {[h['name'] for h in hits]}")
        raise KeyError(f"no parameter {name!r}; have {[p['name'] for p in self.parameters]}")

    @property
    def reduced_statistic(self) -> float:
        """statistic / dof (NaN for dof <= 0)."""
        return self.statistic / self.dof if self.dof > 0 else math.nan

    # ------------------------------------------------------------------ exports
    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (``fits/fit.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "engine": self.engine,
            "stat": self.stat,
            "statistic": self.statistic,
            "dof": self.dof,
            "reduced_statistic": self.reduced_statistic,
            "converged": self.converged,
            "parameters": self.parameters,
            "fluxes": self.fluxes,
            "luminosities": self.luminosities,
            "datasets": self.datasets,
            "n_datasets": len(self.datasets),
            "abund": self.abund,
            "error_method": self.error_method,
            "error_fallbacks": self.error_fallbacks,
            "error_delta": self.error_delta,
            "extra_error_levels": list(self.extra_error_levels),
            "redshift": self.redshift,
            "goodness_pvalue": self.goodness_pvalue,
            "fit_time_s": self.fit_time_s,
            "covariance": self.covariance,
            "versions": self.versions,
        }

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` atomically."""
        return atomic_write_json(path, self.to_dict())

    def to_xcm(self, path: str | Path | None = None) -> str:
        """XSPEC script reproducing the fit (data groups, responses, filters, model and values).

        Returns the text; writes it atomically when ``path`` is given.
        """
        stat, weight = xspec_stat(self.stat) if self.stat in STATISTICS else ("cstat", None)
        lines = ["query yes", f"abund {self.abund}", "xsect vern" if self.abund else "", f"statistic {stat}"]
        if weight:
            lines.append(f"weight {weight}")
        for g, ds in enumerate(self.datasets, start=1):
            if ds.get("pha"):
                lines.append(f"data {g}:{g} {ds['pha']}")
        for g, ds in enumerate(self.datasets, start=1):
            if ds.get("rmf"):
                lines.append(f"response {g}:{g} {ds['rmf']}")
            lines.append(f"arf {g}:{g} {ds['arf']}" if ds.get("arf") else f"arf {g}:{g} none")
            lines.append(f"backgrnd {g} {ds['bkg']}" if ds.get("bkg") else f"backgrnd {g} none")
        lines.append("ignore bad")
        for g, ds in enumerate(self.datasets, start=1):
            for lo, hi in ds.get("ignored_kev") or []:
                lo_s = "**" if lo is None else f"{lo:.6g}"
                hi_s = "**" if hi is None else f"{hi:.6g}"
                lines.append(f"ignore {g}:{lo_s}-{hi_s}")
        lines.append(f"model {self.model}")
        shared = [
            p for p in self.parameters if "dataset" not in p or p.get("dataset") == self._first_dataset()
        ]
        shared.sort(key=lambda p: p["number"])
        npar = len(shared)
        by_number = {p["number"]: p for p in self.parameters}
        for g in range(1, max(1, len(self.datasets)) + 1):
            for k in range(1, npar + 1):
                number = (g - 1) * npar + k
                p = by_number.get(number) if g > 1 else next((q for q in shared if q["number"] == k), None)
                if g > 1 and p is None:
                    lines.append(f"= p{k}")
                    continue
                if p is None:
                    continue
                if p.get("link_to"):
                    target = next((q["number"] for q in shared if q["name"] == p["link_to"]), None)
                    if target is not None:
                        lines.append(f"= p{target}")
                        continue
                delta = -0.01 if p["frozen"] else 0.01
                lo = p.get("min", -1e22)
                hi = p.get("max", 1e22)
                lo = -1e22 if lo is None or not math.isfinite(lo) else lo
                hi = 1e22 if hi is None or not math.isfinite(hi) else hi
                lines.append(f"{p['value']:.8g} {delta:g} {lo:.6g} {lo:.6g} {hi:.6g} {hi:.6g}")
        lines += ["fit 1000", "show fit"]
        text = "\n".join(line for line in lines if line) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def _first_dataset(self) -> str | None:
        return self.datasets[0]["name"] if self.datasets else None

    def summary_text(self) -> str:
        """Plain-text summary: parameters with errors, statistic, fluxes, luminosities."""
        out = [
            f"Model: {self.model}   engine: {self.engine}   statistic: {self.stat}",
            "Datasets: " + ", ".join(f"{d['name']} ({d.get('n_bins', '?')} bins)" for d in self.datasets),
            (
                f"Fit statistic: {self.statistic:.4f} with {self.dof} d.o.f. (reduced {self.reduced_statistic:.4f})"
                f"   converged: {self.converged}"
            ),
            f"Errors: {self.error_method} (delta stat {self.error_delta:.3f})",
            "",
            f"{'#':>3} {'parameter':<24} {'dataset':<8} {'value':>13} {'-err':>11} {'+err':>11} {'unit':<8}",
        ]
        for p in self.parameters:
            state = "frozen" if p["frozen"] else (f"= {p['link_to']}" if p.get("link_to") else "")
            errs = (
                ("", "") if p["frozen"] or p.get("link_to") else (f"{p['err_lo']:.4g}", f"{p['err_hi']:.4g}")
            )
            out.append(
                f"{p['number']:>3} {p['name']:<24} {p.get('dataset') or '':<8} {p['value']:>13.6g} "
                f"{errs[0]:>11} {errs[1]:>11} {p['unit']:<8} {state}"
            )
        further = [(p, iv) for p in self.parameters for iv in (p.get("intervals") or {}).values()]
        if further:
            out += ["", "Further intervals (fit.error_levels):"]
            for p, iv in further:
                out.append(
                    f"  {p['name']:<24} {100 * iv['level']:g}% (delta stat {iv['delta']:.3f}): "
                    f"-{iv['err_lo']:.4g} +{iv['err_hi']:.4g} ({iv['method']})"
                )
        if self.fluxes:
            out += ["", "Fluxes [erg/cm^2/s] (68% from covariance draws):"]
            for key, f in self.fluxes.items():
                out.append(
                    f"  {key:>10} keV  absorbed {f['absorbed']:.4e} (-{f['absorbed_err_lo']:.2e} "
                    f"+{f['absorbed_err_hi']:.2e})  unabsorbed {f['unabsorbed']:.4e} "
                    f"(-{f['unabsorbed_err_lo']:.2e} +{f['unabsorbed_err_hi']:.2e})"
                )
        if self.luminosities:
            out += ["", f"Luminosities [erg/s] (rest frame, z = {self.redshift}):"]
            for key, lum in self.luminosities.items():
                out.append(f"  {key:>10} keV  {lum['value']:.4e} (-{lum['err_lo']:.2e} +{lum['err_hi']:.2e})")
        if self.goodness_pvalue is not None:
            out.append(f"\nGoodness of fit: simulated p-value {self.goodness_pvalue:.3f}")
        return "\n".join(out) + "\n"
