"""The built-in fit: datasets x model x statistic -> best fit, errors, fluxes.

A joint fit shares every model parameter between datasets, except the factor of the ``constant``
component used for cross-normalisation (``cross_norm=True`` with several datasets): each dataset
gets its own factor, the first frozen at 1 (a ``constant*`` is put in front of the model if it has
none). Links tie one parameter to another, also across datasets (``"2:constant_1.factor"`` names
dataset 2's copy). The optimiser is iminuit's MIGRAD on the statistic (errordef 1), with restarts
from perturbed starting points when the fit is poor or did not converge. Errors: MINOS profiles
(``errors="profile"``, delta-stat 1.0 by default, 2.706 for 90 %), or the covariance
(``errors="covariance"``): for chi-square statistics (J^T J)^-1 from the Jacobian of the weighted
residuals (as Sherpa's ``covar``), for Poisson likelihoods 2 H^-1 from MIGRAD/HESSE.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..constants import DEFAULT_FLUX_BANDS_KEV
from ..errors import ConfigError, FitError
from . import stats as _stats
from .datasets import SpectrumDataset
from .expression import CompositeModel, parse_expression
from .fluxes import flux_table
from .parameters import Parameter
from .registry import canonical_abundance
from .results import FitResult

__all__ = ["Fit", "FitProblem", "fit", "level_label", "parse_setting"]

log = logging.getLogger(__name__)

DEFAULT_FLUX_BANDS = DEFAULT_FLUX_BANDS_KEV
_SAME_MINIMUM = 1e-3  # statistic difference of two MIGRAD minima taken as the same minimum
_FD_REL_STEP = 1e-3  # >= sqrt(float32 eps): XSPEC's float32 models need it for a non-zero gradient


@dataclass
class _Slot:
    """A fitted quantity: one model parameter shared by datasets, or a per-dataset copy of one."""

    param: Parameter
    name: str  # full name, e.g. wabs_1.nH
    number: int  # XSPEC number in the model
    dataset: str | None = None  # dataset name for per-dataset slots
    link: int | None = None  # slot index this one copies


def parse_setting(setting: Any) -> tuple[str, float | None, bool | None, str | None]:
    """Parse an XSPEC-like setting.

    Accepted forms: ``"1=0.0119,frozen"``, ``"wabs_1.nH=0.03,frozen"``, ``"PhoIndex=2"``,
    ``"zgauss_1.Sigma=0,free"``, ``"zgauss_1.Redshift=zbremss_1.Redshift"`` or ``"...=p3"`` (link),
    ``"2:constant_1.factor=1,frozen"`` (dataset 2), or a tuple ``(key, value[, frozen])``.

    Returns
    -------
    key, value, frozen, link_to
    """
    if isinstance(setting, (tuple, list)):
        key = str(setting[0])
        tuple_value = None if len(setting) < 2 or setting[1] is None else float(setting[1])
        tuple_frozen = None if len(setting) < 3 or setting[2] is None else bool(setting[2])
        return key, tuple_value, tuple_frozen, None
    text = str(setting).strip()
    if "=" not in text:
        raise ConfigError(f"parameter setting {text!r} is not 'name=value[,frozen]'")
    key, rhs = (s.strip() for s in text.split("=", 1))
    parts = [p.strip() for p in rhs.split(",") if p.strip()]
    frozen: bool | None = None
    value: float | None = None
    link: str | None = None
    for part in parts:
        low = part.lower()
        if low in ("frozen", "freeze", "f"):
            frozen = True
        elif low in ("free", "thaw", "thawed"):
            frozen = False
        else:
            try:
                value = float(part)
            except ValueError:
                link = part[1:] if re.fullmatch(r"[pP]\d+", part) else part
    if not key:
        raise ConfigError(f"parameter setting {text!r} has no parameter name")
    return key, value, frozen, link


class FitProblem:
    """Datasets + model + statistic, with the slot bookkeeping of shared / per-dataset parameters.

    Parameters
    ----------
    datasets : list of SpectrumDataset
    model : CompositeModel
    stat : str or Statistic
        Statistic name or object (see :mod:`~xmmcore.fitting.stats`); each dataset gets the one
        :meth:`~xmmcore.fitting.stats.Statistic.for_dataset` returns (cstat with a background: wstat).
    cross_norm : bool
        Per-dataset ``constant`` factors (first frozen at 1) when there are several datasets.
    abund : str, optional
        Abundance table of the model's components (default: the model's own, else the registry's).
    """

    def __init__(
        self,
        datasets: Sequence[SpectrumDataset],
        model: CompositeModel,
        stat: str | _stats.Statistic,
        *,
        cross_norm: bool = True,
        abund: str | None = None,
    ) -> None:
        if not datasets:
            raise ConfigError("no datasets to fit")
        self.datasets = list(datasets)
        self.statistic_object = _stats.get_statistic(stat)
        self.stat = self.statistic_object.name
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            for i, d in enumerate(self.datasets):
                d.name = f"{d.name}_{i + 1}"
        if cross_norm and len(self.datasets) > 1 and not any(c.name == "constant" for c in model.components):
            wrapped = parse_expression(f"constant*({model.expression})")
            for mp in model.parameters:
                wrapped.parameters[mp.number].param = copy.copy(mp.param)
                wrapped.parameters[mp.number].link = None if mp.link is None else mp.link + 1
            model = wrapped
        if abund is not None:
            model.abund = canonical_abundance(abund)
        self.model = model
        self.cross_norm = cross_norm and len(self.datasets) > 1
        self.dataset_statistics = [self.statistic_object.for_dataset(ds) for ds in self.datasets]
        npar = len(model.parameters)
        self.slots: list[_Slot] = [
            _Slot(copy.copy(mp.param), mp.full_name, mp.number) for mp in model.parameters
        ]
        self.index = np.tile(np.arange(npar), (len(self.datasets), 1))
        if self.cross_norm:
            ci = next(i for i, c in enumerate(model.components) if c.name == "constant")
            pi = model._slices[ci].start
            self.slots[pi].dataset = self.datasets[0].name
            self.slots[pi].param.value = 1.0
            self.slots[pi].param.frozen = True
            for di in range(1, len(self.datasets)):
                par = copy.copy(self.slots[pi].param)
                par.frozen = False
                par.value = 1.0
                par.min, par.max = max(par.min, 1e-3), min(par.max, 1e3)
                self.slots.append(
                    _Slot(par, self.slots[pi].name, self.slots[pi].number, self.datasets[di].name)
                )
                self.index[di, pi] = len(self.slots) - 1
        for i, mp in enumerate(model.parameters):
            if mp.link is not None:
                self.slots[i].link = int(mp.link)
        self._dataset_names = [d.name for d in self.datasets]

    # ------------------------------------------------------------------ addressing
    def slot_of(self, key: str | int) -> int:
        """Slot index for ``key`` (model parameter key, optionally prefixed ``"<dataset>:"``)."""
        dataset = 0
        k = str(key).strip()
        m = re.fullmatch(r"([^:]+):(.+)", k)
        if m:
            ds, k = m.group(1).strip(), m.group(2).strip()
            if ds.isdigit():
                dataset = int(ds) - 1
            elif ds in self._dataset_names:
                dataset = self._dataset_names.index(ds)
            else:
                raise ConfigError(f"no dataset {ds!r} (datasets: {', '.join(self._dataset_names)})")
            if not 0 <= dataset < len(self.datasets):
                raise ConfigError(f"dataset number {ds} out of range 1..{len(self.datasets)}")
        return int(self.index[dataset, self.model.index(k)])

    def apply_setting(self, setting: Any) -> None:
        """Apply one :func:`parse_setting` setting (value, frozen state, link)."""
        key, value, frozen, link = parse_setting(setting)
        s = self.slot_of(key)
        par = self.slots[s].param
        if value is not None:
            if not par.hard_min <= value <= par.hard_max:
                raise ConfigError(
                    f"{key}={value} outside the hard limits [{par.hard_min}, {par.hard_max}] "
                    f"of {self.slots[s].name}"
                )
            par.value = value
            par.min = min(par.min, value)
            par.max = max(par.max, value)
        if frozen is not None:
            par.frozen = frozen
        if link is not None:
            target = self.slot_of(link)
            if target == s:
                raise ConfigError(f"cannot link {key} to itself")
            self.slots[s].link = target

    def link(self, target: str, source: str) -> None:
        """Tie ``target`` to ``source`` (both keys may carry a ``"<dataset>:"`` prefix)."""
        t, s = self.slot_of(target), self.slot_of(source)
        if t == s:
            raise ConfigError(f"cannot link {target} to itself")
        self.slots[t].link = s

    @property
    def free(self) -> list[int]:
        """Indices of the slots the optimiser varies."""
        return [i for i, s in enumerate(self.slots) if not s.param.frozen and s.link is None]

    def slot_values(self, x_free: np.ndarray | None = None) -> np.ndarray:
        """All slot values with ``x_free`` put in the free slots and links resolved."""
        v = np.array([s.param.value for s in self.slots], dtype=float)
        if x_free is not None:
            v[self.free] = x_free
        for i, s in enumerate(self.slots):
            j, hops = s.link, 0
            while j is not None and hops <= len(self.slots):
                v[i] = v[j]
                j = self.slots[j].link
                hops += 1
        return v

    def dataset_values(self, slot_values: np.ndarray, d: int) -> np.ndarray:
        """Model parameter values (XSPEC order) of dataset ``d``."""
        return slot_values[self.index[d]]

    # ------------------------------------------------------------------ statistic
    def predicted(self, slot_values: np.ndarray, d: int) -> np.ndarray:
        """Predicted source counts per noticed group of dataset ``d``."""
        ds = self.datasets[d]
        flux = self.model.evaluate(ds.energ_lo, ds.energ_hi, self.dataset_values(slot_values, d))
        return ds.predict(flux)

    def effective_stat(self, d: int) -> str:
        """Name of the statistic applied to dataset ``d`` (cstat with a background becomes wstat, as in XSPEC)."""
        return self.dataset_statistics[d].name

    def dataset_stat(self, slot_values: np.ndarray, d: int) -> float:
        """Statistic of dataset ``d`` for all slot values (1e30 when the model is not finite)."""
        m = self.predicted(slot_values, d)
        if not np.all(np.isfinite(m)):
            return 1e30
        return self.dataset_statistics[d].calc_stat(self.datasets[d], m)

    def statistic(self, x_free: np.ndarray) -> float:
        """Total statistic for the free values ``x_free`` (clipped to the soft limits)."""
        v = self.slot_values(self.clip(x_free))
        return float(sum(self.dataset_stat(v, d) for d in range(len(self.datasets))))

    def residuals(self, x_free: np.ndarray) -> np.ndarray:
        """Weighted residuals (data - model) / sigma of all datasets (chi-square statistics)."""
        v = self.slot_values(x_free)
        out = []
        for d, stat in enumerate(self.dataset_statistics):
            if not isinstance(stat, _stats.Chi2):
                raise ConfigError(f"weighted residuals need a chi-square statistic, not {stat.name}")
            out.append(stat.residuals(self.datasets[d], self.predicted(v, d)))
        return np.concatenate(out)

    @property
    def n_bins(self) -> int:
        return int(sum(d.n_noticed for d in self.datasets))

    # ------------------------------------------------------------------ helpers
    def scale_norms(self) -> None:
        """Rescale the free additive ``norm`` slots so that the model predicts the observed net counts."""
        norm_slots = [i for i in self.free if self.slots[i].name.endswith(".norm")]
        if not norm_slots:
            return
        v = self.slot_values()
        pred = sum(float(self.predicted(v, d).sum()) for d in range(len(self.datasets)))
        net = 0.0
        for ds in self.datasets:
            net += float(ds.counts.sum())
            bkg_counts = ds.bkg_counts
            if bkg_counts is not None:  # same as ds.has_background
                net -= ds.bkg_scale * float(bkg_counts.sum())
        if pred > 0 and net > 0:
            factor = net / pred
            for i in norm_slots:
                par = self.slots[i].param
                par.value = float(np.clip(par.value * factor, max(par.min, 1e-300), par.max))

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Soft limits of the free slots for the optimiser.

        Very wide limits (beyond +-1e6, e.g. ``norm`` up to 1e24) are dropped: MINUIT's sine transform
        of a two-sided range loses all precision for values many orders of magnitude below the range.
        The statistic clips the values to the soft limits anyway.
        """
        out: list[tuple[float | None, float | None]] = []
        for i in self.free:
            p = self.slots[i].param
            lo = p.min if math.isfinite(p.min) and p.min > -1e6 else None
            hi = p.max if math.isfinite(p.max) and p.max < 1e6 else None
            out.append((lo, hi))
        return out

    def clip(self, x_free: np.ndarray) -> np.ndarray:
        """``x_free`` clipped to the soft limits."""
        lo = np.array([self.slots[i].param.min for i in self.free])
        hi = np.array([self.slots[i].param.max for i in self.free])
        return np.clip(np.asarray(x_free, dtype=float), lo, hi)


def _steps(problem: FitProblem, x: np.ndarray) -> np.ndarray:
    steps = []
    for i, xi in zip(problem.free, x):
        p = problem.slots[i].param
        base = abs(xi) * 0.05 if xi != 0 else max(abs(p.delta), 1e-3)
        steps.append(max(base, abs(p.delta) * 0.1, 1e-12))
    return np.array(steps)


def _migrad(problem: FitProblem, x0: np.ndarray, *, tol: float = 0.01) -> Any:
    from iminuit import Minuit

    names = [f"p{i}" for i in problem.free]
    m = Minuit(problem.statistic, np.asarray(x0, dtype=float), name=names)
    m.errordef = 1.0
    m.limits = problem.bounds()
    m.errors = _steps(problem, x0)
    m.strategy = 1
    m.tol = tol
    m.print_level = 0
    m.migrad(ncall=20000)
    if not m.valid:
        m.simplex(ncall=5000)
        m.migrad(ncall=20000)
    return m


def _perturbed(problem: FitProblem, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.array(x, dtype=float)
    for k, i in enumerate(problem.free):
        p = problem.slots[i].param
        if problem.slots[i].name.endswith(".norm") or x[k] > 0 and p.min >= 0:
            out[k] = x[k] * math.exp(rng.normal(0, 0.5)) if x[k] > 0 else max(p.min, 1e-6)
        else:
            out[k] = x[k] + rng.normal(0, 0.3 * max(abs(x[k]), 1.0))
        lo = p.min if math.isfinite(p.min) else -1e30
        hi = p.max if math.isfinite(p.max) else 1e30
        out[k] = float(np.clip(out[k], lo, hi))
    return out


def _jacobian_covariance(problem: FitProblem, x: np.ndarray) -> np.ndarray:
    """(J^T J)^-1 from central differences of the weighted residuals (relative step 1e-3)."""
    r0 = problem.residuals(x)
    jac = np.empty((r0.size, x.size))
    for k in range(x.size):
        h = _FD_REL_STEP * abs(x[k]) if x[k] != 0 else 1e-6
        xp, xm = x.copy(), x.copy()
        xp[k] += h
        xm[k] -= h
        jac[:, k] = (problem.residuals(xp) - problem.residuals(xm)) / (2 * h)
    return np.linalg.pinv(jac.T @ jac)


def _delta_for(level: float) -> float:
    """delta-stat for a confidence level (0.683 -> 1.0, 0.9 -> 2.706) or a delta given directly (> 1)."""
    if level >= 1.0:
        return float(level)
    from scipy.stats import chi2

    return float(chi2.ppf(level, 1))


def level_label(level: float) -> str:
    """Key of a confidence level's intervals in records and catalogue names: 0.9 -> ``"90"``, 0.95 -> ``"95"``."""
    return f"{100.0 * float(level):.4g}".replace(".", "p")


class Fit:
    """One fit in phases, as Sherpa's ``Fit(data, model, stat, method, estmethod)`` and gammapy's ``Fit``.

    Construction sets the problem up (datasets, model, statistic object, abundance table, settings,
    links) and checks it; then :meth:`optimize` (MIGRAD with restarts), :meth:`covariance`,
    :meth:`confidence` (profile-likelihood intervals), :meth:`fluxes` and :meth:`goodness` run as
    separate phases, each using what the previous ones found; :meth:`result` assembles the
    :class:`FitResult` and :meth:`run` does them all in order (what :func:`fit` calls).

    Parameters
    ----------
    datasets, model, stat, set_params, links, cross_norm, abund, restarts, seed, log
        As in :func:`fit`; ``stat`` may also be a :class:`~xmmcore.fitting.stats.Statistic`.

    Raises
    ------
    FitError
        No data bins, no counts in a dataset, or no free parameter.
    """

    def __init__(
        self,
        datasets: Sequence[SpectrumDataset] | SpectrumDataset,
        model: str | CompositeModel,
        *,
        stat: str | _stats.Statistic = "cstat",
        set_params: Sequence[Any] = (),
        links: Sequence[tuple[str, str]] = (),
        cross_norm: bool = True,
        abund: str = "angr",
        restarts: int = 3,
        seed: int = 12345,
        log: logging.Logger | None = None,
    ) -> None:
        self.log = log or globals()["log"]
        self.t0 = time.perf_counter()
        self.abund = canonical_abundance(abund)
        self.datasets = [datasets] if isinstance(datasets, SpectrumDataset) else list(datasets)
        cmodel = parse_expression(model) if isinstance(model, str) else model.copy()
        problem = FitProblem(self.datasets, cmodel, stat, cross_norm=cross_norm, abund=self.abund)
        for setting in set_params:
            problem.apply_setting(setting)
        for target, source in links:
            problem.link(target, source)
        if problem.n_bins == 0:
            raise FitError("no noticed data bins to fit (check the energy range and QUALITY)")
        for ds in self.datasets:
            if float(np.sum(ds.counts)) <= 0.0:
                where = ds.pha.path if ds.pha.path is not None else ds.name
                raise FitError(f"{where}: no counts in the noticed channels: nothing to fit")
        if not problem.free:
            raise FitError("every parameter is frozen or linked: nothing to fit")
        if problem.n_bins <= len(problem.free):
            names = ", ".join(str(ds.pha.path or ds.name) for ds in self.datasets)
            raise FitError(
                f"{names}: {problem.n_bins} noticed bins for {len(problem.free)} free parameters "
                f"(dof {problem.n_bins - len(problem.free)}): too few counts or bins for a fit"
            )
        self.problem = problem
        self.free = problem.free
        self.dof = problem.n_bins - len(self.free)
        self.restarts = int(restarts)
        self.rng = np.random.default_rng(seed)
        self.minuit: Any = None
        self.best_x = np.empty(0)
        self.best_stat = math.nan
        self.converged = False
        self.cov: np.ndarray | None = None
        self.sigma = np.full(len(self.free), np.nan)
        self.err_lo = np.full(len(self.free), np.nan)
        self.err_hi = np.full(len(self.free), np.nan)
        self.error_method = "none"
        #: parameter name -> why its profile (MINOS) bound was replaced by the covariance error
        self.error_fallbacks: dict[str, str] = {}
        self.delta = 1.0
        #: level label ("90") -> parameter name -> ``{level, delta, err_lo, err_hi, method[, note]}``:
        #: the intervals of :meth:`level_intervals` beyond the main one (free shape parameters only)
        self.intervals: dict[str, dict[str, dict[str, Any]]] = {}
        self.extra_levels: list[float] = []

    # ------------------------------------------------------------------ phases
    def optimize(self) -> float:
        """MIGRAD from the (norm-scaled) start, with restarts when invalid or poor; returns the best statistic.

        Restarts (from perturbed starts) stop as soon as one finds no better minimum than a valid one.

        Raises
        ------
        FitError
            The statistic is not finite at the best fit.
        """
        problem = self.problem
        problem.scale_norms()
        x0 = problem.slot_values()[self.free]
        minuit = _migrad(problem, x0)
        best_x, best_stat = np.array(minuit.values), float(minuit.fval)
        for attempt in range(self.restarts):
            poor = self.dof > 0 and best_stat / self.dof > 2.0
            if minuit.valid and not poor:
                break
            trial = _migrad(problem, _perturbed(problem, best_x, self.rng))
            self.log.debug("restart %d: stat %.4f -> %.4f", attempt + 1, best_stat, trial.fval)
            same = minuit.valid and trial.valid and abs(trial.fval - best_stat) < _SAME_MINIMUM
            if trial.fval < best_stat - 1e-6 or (
                trial.valid and not minuit.valid and trial.fval <= best_stat + 1e-6
            ):
                minuit, best_x, best_stat = trial, np.array(trial.values), float(trial.fval)
            if same:
                # A perturbed start came back to the same minimum: the fit is poor because of the model,
                # not the start. Stop, drawing the skipped restarts' perturbations so that the random
                # stream (flux draws, simulations) is the same as after every restart.
                for _ in range(self.restarts - attempt - 1):
                    _perturbed(problem, best_x, self.rng)
                break
        if not math.isfinite(best_stat) or best_stat >= 1e29:
            raise FitError("the fit statistic is not finite at the best fit (model predicts no counts?)")
        self.minuit, self.best_x, self.best_stat = minuit, best_x, best_stat
        self.converged = bool(minuit.valid)
        return best_stat

    def covariance(self) -> np.ndarray | None:
        """Covariance of the free parameters at the best fit (``None`` when it cannot be computed).

        Chi-square statistics on every dataset: (J^T J)^-1 of the weighted residuals (Sherpa's
        ``covar``); Poisson likelihoods: 2 H^-1 from HESSE (errordef 1 on a -2 ln L statistic).
        """
        self._need_optimum()
        problem = self.problem
        cov = None
        try:
            if problem.statistic_object.is_chi2 and all(
                s.name == problem.stat for s in problem.dataset_statistics
            ):
                cov = _jacobian_covariance(problem, self.best_x)
            else:
                self.minuit.hesse()
                cov = None if self.minuit.covariance is None else np.array(self.minuit.covariance)
        except (RuntimeError, np.linalg.LinAlgError, ValueError) as exc:
            self.log.warning("covariance failed: %s", exc)
        self.cov = cov
        if cov is not None:
            self.sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
        return cov

    def covariance_errors(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric errors sigma * sqrt(delta) at ``level`` (delta-stat, or a confidence level < 1)."""
        if self.cov is None:
            self.covariance()
        self.delta = _delta_for(level)
        self.err_lo = self.sigma * math.sqrt(self.delta)
        self.err_hi = self.sigma * math.sqrt(self.delta)
        self.error_method = "covariance"
        return self.err_lo, self.err_hi

    def confidence(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Profile-likelihood (MINOS) intervals at ``level``; the covariance errors where MINOS fails.

        A bound MINOS cannot find (call limit, a new minimum, no crossing) is replaced by the
        covariance error of that side and recorded in :attr:`error_fallbacks` with the reason
        (``error_method`` is then ``"profile+covariance"``); a bound at a parameter limit is 0.
        A better minimum found while profiling becomes the best fit.
        """
        lo, hi = self.covariance_errors(level)
        err_lo, err_hi = lo.copy(), hi.copy()
        minuit = self.minuit
        names = [self.problem.slots[i].name for i in self.free]
        self.error_fallbacks = {}
        try:
            minuit.values = self.best_x
            minuit.errordef = self.delta
            minuit.minos()
            for k, name in enumerate(minuit.parameters):
                me = minuit.merrors[name]
                reasons = []
                for side, valid, at_limit, at_fcn, new_min, value in (
                    (
                        "lower",
                        me.lower_valid,
                        me.at_lower_limit,
                        me.at_lower_max_fcn,
                        me.lower_new_min,
                        me.lower,
                    ),
                    (
                        "upper",
                        me.upper_valid,
                        me.at_upper_limit,
                        me.at_upper_max_fcn,
                        me.upper_new_min,
                        me.upper,
                    ),
                ):
                    target = err_lo if side == "lower" else err_hi
                    if valid:
                        target[k] = abs(value)
                    elif at_limit:
                        target[k] = 0.0
                    else:
                        why = (
                            "call limit reached"
                            if at_fcn
                            else "new minimum"
                            if new_min
                            else "no crossing found"
                        )
                        reasons.append(f"{side} bound: {why}")
                        target[k] = lo[k] if side == "lower" else hi[k]
                if reasons:
                    label = names[k] if k < len(names) else str(name)
                    self.error_fallbacks[label] = "MINOS " + ", ".join(reasons) + "; covariance error used"
            minuit.errordef = 1.0
            if minuit.fmin is not None and minuit.fval < self.best_stat - 1e-3:
                self.log.warning(
                    "profiling found a better fit (%.4f < %.4f): using it", minuit.fval, self.best_stat
                )
                self.best_x, self.best_stat = np.array(minuit.values), float(minuit.fval)
        except RuntimeError as exc:
            self.log.warning("profile errors failed (%s); keeping covariance errors", exc)
            self.error_fallbacks = dict.fromkeys(names, f"MINOS failed: {exc}; covariance error used")
            return self.err_lo, self.err_hi
        self.err_lo, self.err_hi = err_lo, err_hi
        self.error_method = "profile+covariance" if self.error_fallbacks else "profile"
        if self.error_fallbacks:
            self.log.warning("profile errors fell back to covariance: %s", self.error_fallbacks)
        return err_lo, err_hi

    def shape_parameters(self) -> list[int]:
        """Positions (in :attr:`free`) of the free parameters that are not normalisations.

        Normalisations (``norm``) and cross-normalisation constants (``constant``/``factor``) are left
        out: their further intervals would cost a profile each and nobody quotes them at 90 %.
        """
        out = []
        for k, i in enumerate(self.free):
            comp, _, short = self.problem.slots[i].name.rpartition(".")
            if short.lower() in ("norm", "factor") or comp.lower().startswith("constant"):
                continue
            out.append(k)
        return out

    def level_intervals(self, levels: Sequence[float], method: str | None = "profile") -> None:
        """Intervals at further confidence ``levels`` (0.9 -> delta-stat 2.706, XSPEC's ``error``) for the
        free shape parameters (:meth:`shape_parameters`), kept in :attr:`intervals` under ``"90"``.

        ``method`` is the main error phase's: ``"profile"`` runs one MINOS per shape parameter at the
        level's delta-stat (a side MINOS cannot find is the covariance error of that side, with the
        reason in ``note``; a side at a parameter limit is 0); ``"covariance"`` scales the covariance
        sigma by sqrt(delta); ``None`` computes nothing. A better minimum found while profiling
        becomes the best fit, as in :meth:`confidence`.
        """
        self._need_optimum()
        self.intervals, self.extra_levels = {}, []
        name = "none" if method is None else str(method).lower()
        shape = self.shape_parameters()
        if name in ("none", "no", "false") or not shape or not levels:
            return
        if self.cov is None:
            self.covariance()
        labels = [self.problem.slots[self.free[k]].name for k in shape]
        for level in levels:
            if not 0.0 < float(level) < 1.0:
                raise ConfigError(f"error levels must be confidence levels in (0, 1), not {level!r}")
            delta = _delta_for(float(level))
            cov_err = self.sigma * math.sqrt(delta)
            table: dict[str, dict[str, Any]] = {}
            for k, label in zip(shape, labels):
                table[label] = {
                    "level": float(level),
                    "delta": delta,
                    "err_lo": float(cov_err[k]),
                    "err_hi": float(cov_err[k]),
                    "method": "covariance",
                }
            if name == "profile":
                self._profile_level(delta, shape, table, labels)
            self.intervals[level_label(float(level))] = table
            self.extra_levels.append(float(level))

    def _profile_level(
        self, delta: float, shape: list[int], table: dict[str, dict[str, Any]], labels: list[str]
    ) -> None:
        minuit = self.minuit
        names = [minuit.parameters[k] for k in shape]
        try:
            minuit.values = self.best_x
            minuit.errordef = delta
            minuit.minos(*names)
        except RuntimeError as exc:
            self.log.warning("profile errors at delta-stat %.3f failed (%s); covariance used", delta, exc)
            for label in labels:
                table[label]["note"] = f"MINOS failed: {exc}; covariance error used"
            return
        finally:
            minuit.errordef = 1.0
        for name, label in zip(names, labels):
            me = minuit.merrors[name]
            entry, reasons = table[label], []
            for side, valid, at_limit, at_fcn, new_min, value in (
                ("lower", me.lower_valid, me.at_lower_limit, me.at_lower_max_fcn, me.lower_new_min, me.lower),
                ("upper", me.upper_valid, me.at_upper_limit, me.at_upper_max_fcn, me.upper_new_min, me.upper),
            ):
                key = "err_lo" if side == "lower" else "err_hi"
                if valid:
                    entry[key] = float(abs(value))
                elif at_limit:
                    entry[key] = 0.0
                else:
                    why = (
                        "call limit reached" if at_fcn else "new minimum" if new_min else "no crossing found"
                    )
                    reasons.append(f"{side} bound: {why}")
            entry["method"] = "profile+covariance" if reasons else "profile"
            if reasons:
                entry["note"] = "MINOS " + ", ".join(reasons) + "; covariance error used"
        if minuit.fmin is not None and minuit.fval < self.best_stat - 1e-3:
            self.log.warning(
                "profiling at delta-stat %.3f found a better fit (%.4f < %.4f): using it",
                delta,
                minuit.fval,
                self.best_stat,
            )
            self.best_x, self.best_stat = np.array(minuit.values), float(minuit.fval)

    def errors(self, method: str | None = "profile", level: float = 1.0) -> None:
        """Run the error phase ``method``: ``"profile"``, ``"covariance"`` or ``None``/``"none"``.

        The covariance is always computed (flux errors draw from it).
        """
        self.covariance()
        self.delta = _delta_for(level)
        name = "none" if method is None else str(method).lower()
        if name in ("none", "no", "false"):
            self.err_lo = self.err_hi = np.full(len(self.free), np.nan)
            self.error_method = "none"
        elif name == "profile":
            self.confidence(level)
        elif name == "covariance":
            self.covariance_errors(level)
        else:
            raise ConfigError(f"errors must be 'profile', 'covariance' or None, not {method!r}")

    def fluxes(
        self,
        bands: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS,
        *,
        samples: int = 200,
        redshift: float | None = None,
        cosmology: Any = None,
    ) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """Absorbed/unabsorbed fluxes and luminosities per band, errors from ``samples`` covariance draws.

        Returns
        -------
        fluxes, luminosities, redshift
            The tables of :func:`~xmmcore.fitting.fluxes.flux_table` and the redshift used.
        """
        self._need_optimum()
        problem = self.problem
        model_values = problem.dataset_values(problem.slot_values(self.best_x), 0)
        draws_values = None
        cov = self.cov
        if cov is not None and samples > 0 and np.all(np.isfinite(cov)):
            draws = self.rng.multivariate_normal(self.best_x, cov, size=samples, check_valid="ignore")
            lows = np.array([b[0] if b[0] is not None else -np.inf for b in problem.bounds()])
            highs = np.array([b[1] if b[1] is not None else np.inf for b in problem.bounds()])
            draws = np.clip(draws, lows, highs)
            draws_values = np.array([problem.dataset_values(problem.slot_values(x), 0) for x in draws])
        z = redshift
        if z is None:
            z_index = [i for i, mp in enumerate(problem.model.parameters) if mp.name.lower() == "redshift"]
            z = float(model_values[z_index[0]]) if z_index else None
        fluxes, lums = flux_table(
            problem.model, model_values, bands, samples=draws_values, redshift=z, cosmology=cosmology
        )
        return fluxes, lums, z

    def goodness(self, n: int) -> float | None:
        """Fraction of ``n`` simulated spectra of the best fit that refit worse (Poisson statistics only)."""
        self._need_optimum()
        if n <= 0 or self.problem.statistic_object.is_chi2:
            return None
        return _simulated_pvalue(self.problem, self.best_x, self.best_stat, n, self.rng)

    def result(
        self,
        *,
        fluxes: dict[str, Any] | None = None,
        luminosities: dict[str, Any] | None = None,
        redshift: float | None = None,
        goodness_pvalue: float | None = None,
    ) -> FitResult:
        """The :class:`FitResult` of the phases run so far."""
        self._need_optimum()
        problem = self.problem
        all_values = problem.slot_values(self.best_x)
        params = []
        free_pos = {s: k for k, s in enumerate(self.free)}
        multi = len(self.datasets) > 1
        for i, slot in enumerate(problem.slots):
            fk = free_pos.get(i)
            entry = {
                "name": slot.name,
                "number": slot.number + len(problem.model.parameters) * _dataset_number(slot, self.datasets),
                "value": float(all_values[i]),
                "err_lo": float(self.err_lo[fk]) if fk is not None else 0.0,
                "err_hi": float(self.err_hi[fk]) if fk is not None else 0.0,
                "sigma": float(self.sigma[fk]) if fk is not None else 0.0,
                "unit": slot.param.unit,
                "frozen": bool(slot.param.frozen),
                "linked": slot.link is not None or (multi and slot.dataset is None),
                "link_to": None if slot.link is None else problem.slots[slot.link].name,
                "min": slot.param.min,
                "max": slot.param.max,
            }
            if slot.dataset is not None:
                entry["dataset"] = slot.dataset
            further = {
                label: dict(table[slot.name])
                for label, table in self.intervals.items()
                if fk is not None and slot.name in table
            }
            if further:
                entry["intervals"] = further
            params.append(entry)
        cov = self.cov
        result = FitResult(
            model=problem.model.expression,
            engine="builtin",
            stat=problem.stat,
            statistic=float(self.best_stat),
            dof=int(self.dof),
            parameters=params,
            fluxes=fluxes or {},
            luminosities=luminosities or {},
            converged=self.converged,
            datasets=[_dataset_info(ds, problem.effective_stat(d)) for d, ds in enumerate(self.datasets)],
            abund=self.abund,
            error_method=self.error_method,
            error_fallbacks=dict(self.error_fallbacks),
            error_delta=self.delta,
            extra_error_levels=list(self.extra_levels),
            redshift=redshift,
            goodness_pvalue=goodness_pvalue,
            fit_time_s=time.perf_counter() - self.t0,
            covariance={
                "parameters": [
                    problem.slots[i].name
                    + (f"[{problem.slots[i].dataset}]" if problem.slots[i].dataset else "")
                    for i in self.free
                ],
                "matrix": cov.tolist() if cov is not None else None,
            },
        )
        result.attach(problem, all_values)
        return result

    def run(
        self,
        *,
        errors: str | None = "profile",
        error_level: float = 1.0,
        extra_error_levels: Sequence[float] = (),
        redshift: float | None = None,
        cosmology: Any = None,
        flux_bands: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS,
        flux_samples: int = 200,
        goodness_sims: int = 0,
    ) -> FitResult:
        """optimize -> errors -> further levels -> fluxes -> goodness -> result (options as in :func:`fit`)."""
        self.optimize()
        self.errors(errors, error_level)
        self.level_intervals(extra_error_levels, errors)
        fluxes, lums, z = self.fluxes(
            flux_bands, samples=flux_samples, redshift=redshift, cosmology=cosmology
        )
        pvalue = self.goodness(goodness_sims)
        result = self.result(fluxes=fluxes, luminosities=lums, redshift=z, goodness_pvalue=pvalue)
        self.log.info(
            "fit %s (%s): stat %.3f / %d dof in %.2f s",
            self.problem.model.expression,
            self.problem.stat,
            self.best_stat,
            self.dof,
            result.fit_time_s,
        )
        return result

    def _need_optimum(self) -> None:
        if self.minuit is None:
            raise RuntimeError("run Fit.optimize() first")


def fit(
    datasets: Sequence[SpectrumDataset] | SpectrumDataset,
    model: str | CompositeModel,
    *,
    stat: str = "cstat",
    set_params: Sequence[Any] = (),
    links: Sequence[tuple[str, str]] = (),
    cross_norm: bool = True,
    errors: str | None = "profile",
    error_level: float = 1.0,
    extra_error_levels: Sequence[float] = (),
    abund: str = "angr",
    redshift: float | None = None,
    cosmology: Any = None,
    flux_bands: Sequence[Sequence[float]] = DEFAULT_FLUX_BANDS,
    restarts: int = 3,
    flux_samples: int = 200,
    goodness_sims: int = 0,
    seed: int = 12345,
    log: logging.Logger | None = None,
) -> FitResult:
    """Fit one or more spectra with an XSPEC model expression (all phases of :class:`Fit`).

    Parameters
    ----------
    datasets : SpectrumDataset or list of them
        Spectra with their filters already applied (:meth:`SpectrumDataset.notice`).
    model : str or CompositeModel
        Model expression (``"wabs*(zbremss+zgauss)"``) or a parsed model (its values are the start).
    stat : {"cstat", "wstat", "chi2", "chi2data", "chi2gehrels", "chi2model"}
        Statistic. ``cstat`` on a dataset with a background becomes ``wstat`` (as XSPEC).
    set_params : sequence
        Settings applied in order, see :func:`parse_setting`.
    links : sequence of (target, source)
        Extra parameter links, keys as in :func:`parse_setting` (``"2:constant_1.factor"``).
    cross_norm : bool
        Per-dataset ``constant`` factor, the first frozen at 1.
    errors : {"profile", "covariance", None}
        Profile-likelihood (MINOS) intervals, covariance errors, or none.
    error_level : float
        Delta-stat of the intervals (1.0 = 68 %, 2.706 = 90 %) or a confidence level < 1.
    extra_error_levels : sequence of float
        Further confidence levels (< 1; ``fit.error_levels`` after the first) whose intervals of the
        free shape parameters (not normalisations) are computed the same way (``errors``) and kept in
        each parameter's ``intervals`` (``{"90": {level, delta, err_lo, err_hi, method}}``).
    abund : str
        Abundance table of the components that use one (:data:`~xmmcore.fitting.registry.ABUNDANCE_TABLES`);
        passed to the model, no global state changes.
    redshift : float, optional
        Source redshift for luminosities (default: the first free-or-frozen ``Redshift`` parameter).
    cosmology : astropy cosmology or {"H0", "Om0"}, optional
    flux_bands : sequence of (lo, hi)
        Bands (keV) of fluxes and luminosities.
    restarts : int
        Extra MIGRAD runs from perturbed starts when the fit did not converge or is poor
        (reduced statistic > 2).
    flux_samples : int
        Covariance draws for the flux errors (0 = no flux errors).
    goodness_sims : int
        For Poisson statistics, simulate this many spectra from the best fit, refit them and report
        the fraction with a statistic above the observed one (``goodness_pvalue``).
    seed : int
        Random seed (restarts, flux errors, simulations).
    log : logging.Logger, optional

    Returns
    -------
    FitResult

    Raises
    ------
    FitError
        No data bins, no free parameters, or no finite statistic.
    """
    return Fit(
        datasets,
        model,
        stat=stat,
        set_params=set_params,
        links=links,
        cross_norm=cross_norm,
        abund=abund,
        restarts=restarts,
        seed=seed,
        log=log,
    ).run(
        errors=errors,
        error_level=error_level,
        extra_error_levels=extra_error_levels,
        redshift=redshift,
        cosmology=cosmology,
        flux_bands=flux_bands,
        flux_samples=flux_samples,
        goodness_sims=goodness_sims,
    )


def _dataset_number(slot: _Slot, ds_list: list[SpectrumDataset]) -> int:
    """0-based data group of a per-dataset slot (0 for shared slots), for XSPEC-style numbering."""
    if slot.dataset is None:
        return 0
    return next(k for k, d in enumerate(ds_list) if d.name == slot.dataset)


def _dataset_info(ds: SpectrumDataset, stat: str) -> dict[str, Any]:
    return {
        "name": ds.name,
        "pha": str(ds.pha.path) if ds.pha.path else None,
        "rmf": str(ds.rmf.path) if ds.rmf.path else None,
        "arf": str(ds.arf.path) if ds.arf is not None and ds.arf.path else None,
        "bkg": str(ds.bkg.path) if ds.bkg is not None and ds.bkg.path and ds.has_background else None,
        "exposure_s": ds.exposure,
        "n_bins": ds.n_noticed,
        "n_groups": ds.n_groups,
        "counts": float(ds.counts.sum()),
        "noticed_kev": [float(ds.group_lo_kev[ds.mask].min()), float(ds.group_hi_kev[ds.mask].max())]
        if ds.n_noticed
        else None,
        "ignored_kev": _ignored_ranges(ds),
        "stat": stat,
    }


def _ignored_ranges(ds: SpectrumDataset) -> list[list[float | None]]:
    """Energy ranges of the ignored groups as [lo, hi] pairs (None = open end), for XSPEC ``ignore``."""
    out: list[list[float | None]] = []
    mask = ds.mask
    i = 0
    n = mask.size
    while i < n:
        if mask[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and not mask[j + 1]:
            j += 1
        # Boundaries half-way between a group's edge and its centre: the same bins are selected whether
        # XSPEC tests bin centres or overlaps.
        lo = None if i == 0 else float(0.75 * ds.group_lo_kev[i] + 0.25 * ds.group_hi_kev[i])
        hi = None if j == n - 1 else float(0.25 * ds.group_lo_kev[j] + 0.75 * ds.group_hi_kev[j])
        out.append([lo, hi])
        i = j + 1
    return out


def _simulated_pvalue(
    problem: FitProblem, best_x: np.ndarray, best_stat: float, n: int, rng: np.random.Generator
) -> float:
    """Fraction of Poisson simulations of the best fit whose refitted statistic exceeds the observed one."""
    v = problem.slot_values(best_x)
    expected = [problem.predicted(v, d) for d in range(len(problem.datasets))]
    saved = [(ds.group_counts.copy(), ds.group_bkg_counts) for ds in problem.datasets]
    worse = 0
    try:
        for _ in range(n):
            for d, ds in enumerate(problem.datasets):
                sim = ds.group_counts.copy()
                bkg_counts = ds.bkg_counts
                bkg_mean = 0.0 if bkg_counts is None else ds.bkg_scale * bkg_counts
                sim[ds.mask] = rng.poisson(np.maximum(expected[d] + bkg_mean, 0))
                ds.group_counts = sim
            m = _migrad(problem, best_x)
            worse += m.fval >= best_stat
    finally:
        for ds, (c, b) in zip(problem.datasets, saved):
            ds.group_counts, ds.group_bkg_counts = c, b
    return worse / n
