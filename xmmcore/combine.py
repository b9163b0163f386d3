"""Combination of independent measurements with asymmetric errors (Barlow 2004) and their consistency test.

:func:`weighted_mean` uses Barlow's "linear sigma" likelihood (physics/0406120 sec. 3.4); for symmetric errors it
is exactly the inverse-variance weighted mean. The catalogue's ``kind="combined"`` rows are made with it
(``catalog.rows.combine_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from .errors import InputDataError

__all__ = ["Combined", "weighted_mean"]


@dataclass(frozen=True)
class Combined:
    """A combined value with asymmetric errors and the consistency test of its inputs.

    Attributes
    ----------
    value, err_lo, err_hi : float
        Maximum-likelihood value and its positive 1-sigma errors (delta chi2 = 1).
    chi2 : float
        Chi2 of the inputs about ``value`` (with their asymmetric errors).
    dof : int
        ``n - 1``.
    pvalue : float
        Probability of a chi2 at least this large if all inputs measure the same value.
    n : int
        Number of inputs used (finite value and errors).
    """

    value: float
    err_lo: float
    err_hi: float
    chi2: float
    dof: int
    pvalue: float
    n: int


def _chi2_fn(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Callable[[float], float]:
    # Barlow's linear-sigma model: sigma_i(mu) = s_i + s'_i (mu - x_i), which passes through
    # sigma_+ at x+sigma_+ and sigma_- at x-sigma_-; floored so it never reaches zero.
    s = 2.0 * hi * lo / (hi + lo)
    sp = (hi - lo) / (hi + lo)
    floor = 0.05 * np.minimum(lo, hi)

    def chi2(mu: float) -> float:
        sig = np.maximum(s + sp * (mu - x), floor)
        return float(np.sum(((mu - x) / sig) ** 2))

    return chi2


def weighted_mean(
    values: Sequence[float], err_lo: Sequence[float], err_hi: Sequence[float] | None = None
) -> Combined:
    """Combine independent measurements with asymmetric errors; test their consistency.

    Parameters
    ----------
    values : sequence of float
        Measurements (same unit).
    err_lo, err_hi : sequence of float
        Positive lower/upper 1-sigma errors (``err_hi`` defaults to ``err_lo``: symmetric errors).

    Returns
    -------
    Combined
        For symmetric errors this is exactly the inverse-variance weighted mean with
        ``1/sqrt(sum 1/sigma^2)`` errors and the usual chi2.

    Raises
    ------
    InputDataError
        No measurement has a finite value and positive errors.
    """
    x = np.asarray(values, dtype=float)
    lo = np.abs(np.asarray(err_lo, dtype=float))
    hi = lo if err_hi is None else np.abs(np.asarray(err_hi, dtype=float))
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0)
    x, lo, hi = x[ok], lo[ok], hi[ok]
    if x.size == 0:
        raise InputDataError("weighted mean: no measurement with a finite value and positive errors")
    chi2 = _chi2_fn(x, lo, hi)
    w = 1.0 / (0.5 * (lo + hi)) ** 2
    lo_bound, hi_bound = float(np.min(x - 5 * lo)), float(np.max(x + 5 * hi))
    res = optimize.minimize_scalar(
        chi2, bounds=(lo_bound, hi_bound), method="bounded", options={"xatol": 1e-10 * (hi_bound - lo_bound)}
    )
    mu = float(res.x)
    cmin = chi2(mu)
    half = 1.0 / math.sqrt(float(np.sum(w)))

    def crossing(direction: float) -> float:
        step = half
        for _ in range(60):
            if chi2(mu + direction * step) - cmin > 1.0:
                break
            step *= 2.0
        root = optimize.brentq(
            lambda d: chi2(mu + direction * d) - cmin - 1.0, 0.0, step, xtol=1e-12 * max(1, step)
        )
        return float(root)

    dof = int(x.size - 1)
    pvalue = float(stats.chi2.sf(cmin, dof)) if dof > 0 else 1.0
    return Combined(mu, crossing(-1.0), crossing(+1.0), cmin, dof, pvalue, int(x.size))
