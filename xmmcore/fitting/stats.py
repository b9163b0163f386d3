"""Fit statistics as XSPEC defines them (all are "-2 ln L"-like: a 1-sigma interval is delta = 1).

* ``cstat``: Cash (1979) with XSPEC's data-dependent constant,
  C = 2 sum (m - d + d ln(d/m)), so that C follows chi2 for many counts.
* ``wstat``: the W statistic of XSPEC (Cash with the background profiled out,
  Wachter, Leach & Kellogg 1979), for a source spectrum with a Poisson background spectrum.
* ``chi2``: sum (d - m)^2 / sigma^2 with the variance from the data (``chi2`` / ``chi2data``;
  counts, at least 1), Gehrels (1986) (``chi2gehrels``: sigma = 1 + sqrt(d + 0.75)) or the model
  (``chi2model``: sigma^2 = m).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["STATISTICS", "canonical_stat", "chi2", "chi2_variance", "cstat", "gehrels_sigma", "wstat"]

STATISTICS = ("cstat", "wstat", "chi2", "chi2data", "chi2gehrels", "chi2model")
_ALIASES = {
    "cash": "cstat",
    "c": "cstat",
    "chi": "chi2",
    "chisq": "chi2",
    "chi2datavar": "chi2data",
    "chi2modvar": "chi2model",
    "chi2xspecvar": "chi2model",
    "gehrels": "chi2gehrels",
    "w": "wstat",
}
_TINY = 1e-300


def canonical_stat(name: str) -> str:
    """Canonical statistic name; unknown names raise ``ConfigError``."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STATISTICS:
        raise ConfigError(f"unknown fit statistic {name!r}; choose one of {', '.join(STATISTICS)}")
    return key


def cstat(data: np.ndarray, model: np.ndarray) -> float:
    """XSPEC C-statistic (counts ``data``, predicted counts ``model`` per bin)."""
    d = np.asarray(data, dtype=float)
    m = np.maximum(np.asarray(model, dtype=float), _TINY)
    pos = d > 0
    terms = m - d
    terms[pos] += d[pos] * np.log(d[pos] / m[pos])
    return float(2.0 * terms.sum())


def wstat(
    data: np.ndarray, bkg: np.ndarray, model: np.ndarray, t_src: float | np.ndarray, t_bkg: float | np.ndarray
) -> float:
    """XSPEC W statistic.

    Parameters
    ----------
    data, bkg : ndarray
        Source and background counts per bin.
    model : ndarray
        Predicted source counts per bin (source model only), i.e. ``t_src * y`` with y a rate.
    t_src : float or ndarray
        Source exposure x area scaling (s).
    t_bkg : float or ndarray
        Background exposure x its area scaling relative to the source (s): exposure_b * backscal_b / backscal_s.
    """
    s = np.asarray(data, dtype=float)
    b = np.asarray(bkg, dtype=float)
    ts = np.broadcast_to(np.asarray(t_src, dtype=float), s.shape)
    tb = np.broadcast_to(np.asarray(t_bkg, dtype=float), s.shape)
    y = np.maximum(np.asarray(model, dtype=float), _TINY) / ts
    tt = ts + tb
    out = np.empty_like(s)
    # General case.
    gen = (s > 0) & (b > 0)
    if np.any(gen):
        sg, bg, yg, tsg, tbg, ttg = s[gen], b[gen], y[gen], ts[gen], tb[gen], tt[gen]
        dd = np.sqrt((ttg * yg - sg - bg) ** 2 + 4.0 * ttg * bg * yg)
        f = (sg + bg - ttg * yg + dd) / (2.0 * ttg)
        f = np.maximum(f, _TINY)
        out[gen] = (
            tsg * yg
            + ttg * f
            - sg * np.log(tsg * yg + tsg * f)
            - bg * np.log(tbg * f)
            - sg * (1.0 - np.log(sg))
            - bg * (1.0 - np.log(bg))
        )
    s0 = s == 0
    if np.any(s0):
        bz = b[s0]
        val = ts[s0] * y[s0]
        pos = bz > 0
        val = val - np.where(pos, bz * np.log(tb[s0] / tt[s0]), 0.0)
        out[s0] = val
    b0 = (b == 0) & (s > 0)
    if np.any(b0):
        sz, yz, tsz, tbz, ttz = s[b0], y[b0], ts[b0], tb[b0], tt[b0]
        low = yz < sz / ttz
        out[b0] = np.where(
            low, -tbz * yz - sz * np.log(tsz / ttz), tsz * yz + sz * (np.log(sz) - np.log(tsz * yz) - 1.0)
        )
    return float(2.0 * out.sum())


def gehrels_sigma(counts: np.ndarray) -> np.ndarray:
    """Gehrels (1986) approximate upper 1-sigma error: 1 + sqrt(N + 0.75)."""
    return 1.0 + np.sqrt(np.asarray(counts, dtype=float) + 0.75)


def chi2_variance(
    stat: str, counts: np.ndarray, model: np.ndarray | None = None, stat_err: np.ndarray | None = None
) -> np.ndarray:
    """Variance of ``counts`` for a chi-square statistic.

    ``chi2``/``chi2data``: ``stat_err``^2 if given, else the counts (at least 1, as XSPEC);
    ``chi2gehrels``: Gehrels sigma squared; ``chi2model``: the model (at least 1e-10).
    """
    stat = canonical_stat(stat)
    c = np.asarray(counts, dtype=float)
    if stat == "chi2gehrels":
        return gehrels_sigma(c) ** 2
    if stat == "chi2model":
        if model is None:
            raise ValueError("chi2model needs the model counts")
        return np.maximum(np.asarray(model, dtype=float), 1e-10)
    if stat in ("chi2", "chi2data"):
        if stat_err is not None:
            return np.maximum(np.asarray(stat_err, dtype=float) ** 2, 1e-10)
        return np.maximum(c, 1.0)
    raise ConfigError(f"{stat} is not a chi-square statistic")


def chi2(data: np.ndarray, model: np.ndarray, variance: np.ndarray) -> float:
    """sum (data - model)^2 / variance."""
    d = np.asarray(data, dtype=float)
    m = np.asarray(model, dtype=float)
    return float(np.sum((d - m) ** 2 / np.asarray(variance, dtype=float)))
