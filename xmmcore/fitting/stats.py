"""Fit statistics as XSPEC defines them (all are "-2 ln L"-like: a 1-sigma interval is delta = 1).

* ``cstat``: Cash (1979) with XSPEC's data-dependent constant,
  C = 2 sum (m - d + d ln(d/m)), so that C follows chi2 for many counts.
* ``wstat``: the W statistic of XSPEC (Cash with the background profiled out,
  Wachter, Leach & Kellogg 1979), for a source spectrum with a Poisson background spectrum.
* ``pgstat``: Poisson source counts with a Gaussian background (a background spectrum with
  ``POISSERR = F`` and ``STAT_ERR``, e.g. the vignetting-matched or double-subtracted ones), the
  background profiled out bin by bin, as XSPEC's pgstat; ``cstat`` and ``wstat`` become ``pgstat`` on such a
  background, as in XSPEC.
* ``chi2``: sum (d - m)^2 / sigma^2 with the variance from the data (``chi2`` / ``chi2data``;
  counts, at least 1), Gehrels (1986) (``chi2gehrels``: sigma = 1 + sqrt(d + 0.75)) or the model
  (``chi2model``: sigma^2 = m).

The functions compute a statistic from arrays; the :class:`Statistic` objects (by name from
:func:`get_statistic`) apply one to a dataset and own its background handling: ``cstat`` on a dataset
with a background becomes ``wstat`` (as XSPEC), and the chi-square statistics subtract the scaled
background and add its variance.

Adding a statistic: a :class:`Statistic` subclass with ``name``, ``xspec`` (XSPEC's ``statMethod`` and
``weight``) and ``calc_stat`` (a chi-square one subclasses :class:`Chi2`), decorated with
:func:`register_statistic`. :data:`STATISTIC_CLASSES` is the one registry: :data:`STATISTICS` (a live
view of its names), :func:`canonical_stat`, :func:`get_statistic`, the configuration's ``fit.stat``
choices, the CLI's ``--stat``, the XSPEC engine and the ``.xcm`` export all read it.
"""

from __future__ import annotations

from collections.abc import KeysView
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from .datasets import SpectrumDataset

__all__ = [
    "STATISTICS",
    "STATISTIC_CLASSES",
    "CStat",
    "Chi2",
    "Chi2Data",
    "Chi2Gehrels",
    "Chi2Model",
    "PGStat",
    "Statistic",
    "WStat",
    "canonical_stat",
    "chi2",
    "chi2_variance",
    "cstat",
    "gehrels_sigma",
    "pgstat",
    "get_statistic",
    "register_statistic",
    "wstat",
    "xspec_stat",
]

#: The registry: canonical name -> :class:`Statistic` subclass (filled by :func:`register_statistic`).
STATISTIC_CLASSES: dict[str, type[Statistic]] = {}
#: Names of the registered statistics, in registration order (a live view of :data:`STATISTIC_CLASSES`).
STATISTICS: KeysView[str] = STATISTIC_CLASSES.keys()
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


def pgstat(data: np.ndarray, bkg: np.ndarray, bkg_var: np.ndarray, model: np.ndarray) -> float:
    """XSPEC's PG statistic: Poisson data ``d``, Gaussian background ``b +- sigma`` (counts in the source region).

    Parameters
    ----------
    data : ndarray
        Source counts per bin.
    bkg, bkg_var : ndarray
        Background estimate and its variance per bin, already scaled to the source region and exposure.
    model : ndarray
        Predicted source counts per bin (source model only).

    The background expectation ``f >= 0`` of each bin maximises
    ``Poisson(d | m + f) x Gauss(b | f, sigma)``: the positive root of
    ``f^2 + f (m + sigma^2 - b) + sigma^2 (m - d) - b m = 0``. The statistic is
    ``2 sum [m + f - d + d ln(d / (m + f))] + sum (b - f)^2 / sigma^2`` (zero for a perfect fit).
    """
    return _pgstat_value(_PGStatData.of(data, bkg, bkg_var), model)


@dataclass(frozen=True)
class _PGStatData:
    """The model-independent parts of :func:`pgstat` for one spectrum, computed once per fit."""

    d: np.ndarray
    b: np.ndarray
    v: np.ndarray
    four_vd: np.ndarray
    has_var: np.ndarray
    v_safe: np.ndarray
    pos: np.ndarray
    d_pos: np.ndarray

    @classmethod
    def of(cls, data: np.ndarray, bkg: np.ndarray, bkg_var: np.ndarray) -> _PGStatData:
        d = np.asarray(data, dtype=float)
        v = np.maximum(np.asarray(bkg_var, dtype=float), 0.0)
        pos = d > 0
        return cls(
            d=d,
            b=np.asarray(bkg, dtype=float),
            v=v,
            four_vd=4.0 * v * d,
            has_var=v > 0,
            v_safe=np.where(v > 0, v, 1.0),
            pos=pos,
            d_pos=d[pos],
        )


def _pgstat_value(c: _PGStatData, model: np.ndarray) -> float:
    m = np.maximum(np.asarray(model, dtype=float), _TINY)
    disc = np.sqrt((m + c.b - c.v) ** 2 + c.four_vd)
    f = 0.5 * (-(m + c.v - c.b) + disc)
    f = np.where(c.has_var, f, c.b)  # a bin whose background has no error: the background is known
    f = np.maximum(f, 0.0)
    mu = np.maximum(m + f, _TINY)
    terms = mu - c.d
    terms[c.pos] += c.d_pos * np.log(c.d_pos / mu[c.pos])
    gauss = np.where(c.has_var, (c.b - f) ** 2 / c.v_safe, 0.0)
    return float(2.0 * terms.sum() + gauss.sum())


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


# ---------------------------------------------------------------------------------- objects
class Statistic:
    """A fit statistic applied to a :class:`~xmmcore.fitting.datasets.SpectrumDataset`.

    Attributes
    ----------
    name : str
        Canonical name (a key of :data:`STATISTIC_CLASSES`).
    is_chi2 : bool
        Chi-square statistics have weighted residuals (:meth:`terms`), used for the covariance.
    """

    name: ClassVar[str] = ""
    is_chi2: ClassVar[bool] = False
    #: XSPEC's ``Fit.statMethod`` and ``Fit.weight`` (None: XSPEC's own) for this statistic.
    xspec: ClassVar[tuple[str, str | None]] = ("cstat", None)

    def for_dataset(self, dataset: SpectrumDataset) -> Statistic:
        """The statistic actually applied to ``dataset`` (``cstat`` with a background is ``wstat``)."""
        return self

    def calc_stat(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> float:
        """Statistic of the noticed groups of ``dataset`` for the predicted source counts ``model_counts``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_S = TypeVar("_S", bound=type[Statistic])


def register_statistic(cls: _S) -> _S:
    """Class decorator: add ``cls`` to :data:`STATISTIC_CLASSES` under ``cls.name``."""
    if not cls.name or cls.name in _ALIASES:
        raise ValueError(f"{cls.__name__}: a statistic needs a name that is not an alias, got {cls.name!r}")
    STATISTIC_CLASSES[cls.name] = cls
    return cls


@register_statistic
class CStat(Statistic):
    """XSPEC's C-statistic; with a background spectrum it is W-stat (:class:`WStat`), as in XSPEC."""

    name = "cstat"

    def for_dataset(self, dataset: SpectrumDataset) -> Statistic:
        if not dataset.has_background:
            return self
        return WStat() if getattr(dataset, "bkg_poisson", True) else PGStat()

    def calc_stat(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> float:
        return cstat(dataset.counts, model_counts)


@register_statistic
class WStat(Statistic):
    """XSPEC's W statistic: the Poisson background is profiled out bin by bin."""

    name = "wstat"

    def for_dataset(self, dataset: SpectrumDataset) -> Statistic:
        if not dataset.has_background:
            return CStat()
        return self if getattr(dataset, "bkg_poisson", True) else PGStat()

    def calc_stat(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> float:
        bkg_counts = dataset.bkg_counts
        if bkg_counts is None:  # for_dataset() only keeps wstat when there is a background
            raise RuntimeError(f"{dataset.name}: W-stat needs a background spectrum")
        t_src = dataset.exposure * float(np.mean(dataset.pha.areascal))
        t_bkg = t_src / dataset.bkg_scale
        return wstat(dataset.counts, bkg_counts, model_counts, t_src, t_bkg)


@register_statistic
class PGStat(Statistic):
    """XSPEC's PG statistic: Poisson data, Gaussian background (``POISSERR = F`` with ``STAT_ERR``)."""

    name = "pgstat"
    xspec = ("pgstat", None)

    def for_dataset(self, dataset: SpectrumDataset) -> Statistic:
        return self if dataset.has_background else CStat()

    def calc_stat(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> float:
        # The data's part is kept on the dataset while its arrays (the same objects: simulations and
        # notice() replace them) and background scale are unchanged: a fit evaluates it ~600 times.
        key = (dataset.group_counts, dataset.group_bkg_counts, dataset.group_bkg_var, dataset.mask)
        scale = dataset.bkg_scale
        hit = getattr(dataset, "_pgstat_data", None)
        if hit is None or hit[1] != scale or any(a is not b for a, b in zip(hit[0], key, strict=True)):
            bkg_counts = dataset.bkg_counts
            if bkg_counts is None:  # for_dataset() only keeps pgstat when there is a background
                raise RuntimeError(f"{dataset.name}: pgstat needs a background spectrum")
            var = dataset.bkg_variance
            if var is None:  # a Poisson background: its counts are its variance
                var = np.asarray(bkg_counts, dtype=float)
            hit = (key, scale, _PGStatData.of(dataset.counts, scale * bkg_counts, scale * scale * var))
            dataset._pgstat_data = hit
        return _pgstat_value(hit[2], model_counts)


@register_statistic
class Chi2(Statistic):
    """Chi-square with the data variance (``stat_err`` of the PHA when it has one, else the counts, >= 1).

    A background is subtracted (scaled by :attr:`SpectrumDataset.bkg_scale`) and its variance added.
    """

    name = "chi2"
    is_chi2 = True
    xspec = ("chi", "standard")

    def variance(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> np.ndarray:
        """Variance of the source counts of the noticed groups."""
        stat_err = None
        if dataset.group_stat_err is not None and not dataset.pha.poisserr:
            stat_err = dataset.group_stat_err[dataset.mask]
        return chi2_variance(self.name, dataset.counts, model_counts, stat_err)

    def background_variance(self, bkg_counts: np.ndarray) -> np.ndarray:
        """Variance of the background counts (at least 1, as XSPEC)."""
        return np.maximum(bkg_counts, 1.0)

    def terms(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data (background-subtracted counts) and variance per noticed group."""
        var = self.variance(dataset, model_counts)
        data = dataset.counts
        b = dataset.bkg_counts
        if b is not None:  # same as dataset.has_background
            scale = dataset.bkg_scale
            data = data - scale * b
            bvar = dataset.bkg_variance
            var = var + scale * scale * (
                self.background_variance(b) if bvar is None else np.maximum(bvar, 1e-10)
            )
        return data, var

    def calc_stat(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> float:
        data, var = self.terms(dataset, model_counts)
        return chi2(data, model_counts, var)

    def residuals(self, dataset: SpectrumDataset, model_counts: np.ndarray) -> np.ndarray:
        """Weighted residuals (data - model) / sigma per noticed group."""
        data, var = self.terms(dataset, model_counts)
        return np.asarray((data - model_counts) / np.sqrt(var))


@register_statistic
class Chi2Data(Chi2):
    """``chi2data``: the same as ``chi2`` (data variance)."""

    name = "chi2data"


@register_statistic
class Chi2Gehrels(Chi2):
    """Chi-square with Gehrels (1986) variances for the source and the background counts."""

    name = "chi2gehrels"
    xspec = ("chi", "gehrels")

    def background_variance(self, bkg_counts: np.ndarray) -> np.ndarray:
        return gehrels_sigma(bkg_counts) ** 2


@register_statistic
class Chi2Model(Chi2):
    """Chi-square with the model variance (at least 1e-10)."""

    name = "chi2model"
    xspec = ("chi", "model")


def get_statistic(name: str | Statistic) -> Statistic:
    """The :class:`Statistic` called ``name`` (aliases allowed); unknown names raise ``ConfigError``."""
    if isinstance(name, Statistic):
        return name
    return STATISTIC_CLASSES[canonical_stat(name)]()


def xspec_stat(name: str) -> tuple[str, str | None]:
    """XSPEC's ``(statMethod, weight)`` for the statistic ``name`` (``ConfigError`` if unknown)."""
    return STATISTIC_CLASSES[canonical_stat(name)].xspec
