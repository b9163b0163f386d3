"""XSPEC-named model components and the model-expression parser.

A :class:`Component` is one XSPEC model (``wabs``, ``powerlaw``, ...) with XSPEC's parameter
names, units, defaults and limits. Its :meth:`Component.evaluate` works on an energy grid given
as bin edges (keV) and returns, per bin,

* additive (``kind="add"``): photons cm^-2 s^-1 integrated over the bin;
* multiplicative (``kind="mul"``): the dimensionless factor averaged over the bin.

:func:`parse_expression` combines components like XSPEC does (``constant*tbabs*(apec+gaussian)``;
``wabs(powerlaw)`` is implicit multiplication) into a :class:`CompositeModel`, whose parameters are
numbered in XSPEC order and named ``<component>_<n>.<param>`` where ``n`` counts repeats of the
component from the left (``wabs_1.nH``, ``wabs_2.nH``).

Plug-ins
--------
Other modules add components with :func:`register_component` (a name and a zero-argument factory),
or with :func:`register_resolver` for parametrised names such as ``atable{apec.fits}`` (the resolver
gets the raw name and returns a component or ``None``). The modules listed in ``_PLUGINS`` are
imported lazily the first time a name is not found. Plug-ins that depend on the element abundance
table read :func:`get_abundance` or subscribe with :func:`on_abundance_change`.

The numpy components here follow XSPEC's own algorithms (Morrison & McCammon 1983 ``wabs`` with
XSPEC's edge-aware trapezoid average; ``bremss`` with the Kellogg, Baldwin & Koch 1975 Gaunt factor
and a two-point integral; analytic integrals for ``powerlaw``/``gaussian``) and are tested against
XSPEC's library through ``xspectrampoline``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from scipy.special import erf

from ..errors import ConfigError

__all__ = [
    "ABUNDANCE_TABLES",
    "Component",
    "CompositeModel",
    "FunctionComponent",
    "ModelParameter",
    "Parameter",
    "auto_settings",
    "get_abundance",
    "get_component",
    "known_components",
    "on_abundance_change",
    "parse_expression",
    "register_component",
    "register_resolver",
    "set_abundance",
]

_INF = math.inf


# ------------------------------------------------------------------------------------- parameters
@dataclass
class Parameter:
    """One model parameter, with XSPEC's conventions.

    Attributes
    ----------
    name : str
        XSPEC parameter name (``nH``, ``PhoIndex``, ``kT``, ``norm``...).
    value : float
        Default / current value.
    unit : str
        Unit as XSPEC prints it (``10^22``, ``keV``, ``""``).
    min, max : float
        Soft limits ("bot"/"top" in XSPEC): the fit is bounded by these.
    hard_min, hard_max : float
        Hard limits: ``set`` refuses values outside them.
    frozen : bool
        Frozen parameters are not fitted.
    delta : float
        XSPEC's fit delta (used as the initial step of the optimiser); negative means frozen by default.
    """

    name: str
    value: float
    unit: str = ""
    min: float = -_INF
    max: float = _INF
    hard_min: float = -_INF
    hard_max: float = _INF
    frozen: bool = False
    delta: float = 0.01


class Component:
    """Base class of a model component.

    Subclasses (or :class:`FunctionComponent`) set ``name``, ``kind`` and ``params`` and implement
    :meth:`evaluate`. Instances are cheap: :func:`get_component` returns a fresh one each call.

    Attributes
    ----------
    name : str
        XSPEC model name (lower case).
    kind : {"add", "mul", "con"}
        Additive, multiplicative or convolution (convolution is not supported by the parser yet).
    params : list of Parameter
        Parameters in XSPEC order with XSPEC defaults. Additive components end with ``norm``.
    absorption : bool
        True for multiplicative components that are absorption (set to 1 for unabsorbed fluxes).
    """

    name: str = ""
    kind: str = "add"
    absorption: bool = False

    def __init__(self) -> None:
        self.params: list[Parameter] = []

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        """Return the model per energy bin.

        Parameters
        ----------
        energ_lo, energ_hi : ndarray
            Bin edges in keV.
        values : sequence of float
            Parameter values in the order of ``params`` (including ``norm``).

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per bin (additive) or a dimensionless factor per bin (multiplicative).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        pars = ", ".join(f"{p.name}={p.value:g}" for p in self.params)
        return f"<{self.kind} component {self.name}({pars})>"


class FunctionComponent(Component):
    """A component defined by a function ``func(energ_lo, energ_hi, *values)``.

    For additive components ``func`` receives the parameters without ``norm`` and returns the
    spectrum for norm = 1; the ``norm`` parameter is appended and applied here.

    Parameters
    ----------
    name : str
        XSPEC model name.
    kind : {"add", "mul"}
        Component type.
    params : list of Parameter
        Parameters (without ``norm`` for additive components).
    func : callable
        The model function.
    absorption : bool, optional
        Multiplicative absorption (dropped for unabsorbed fluxes). Default: ``kind == "mul"``.
    norm : Parameter, optional
        Custom ``norm`` parameter for an additive component.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        params: Sequence[Parameter],
        func: Callable[..., np.ndarray],
        *,
        absorption: bool | None = None,
        norm: Parameter | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("add", "mul"):
            raise ConfigError(f"component {name}: kind must be 'add' or 'mul', not {kind!r}")
        self.name = name
        self.kind = kind
        self.absorption = (kind == "mul") if absorption is None else absorption
        self._func = func
        self.params = [copy.copy(p) for p in params]
        if kind == "add":
            self.params.append(copy.copy(norm) if norm is not None else _norm())

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        vals = [float(v) for v in values]
        if self.kind == "add":
            return vals[-1] * np.asarray(self._func(lo, hi, *vals[:-1]), dtype=float)
        return np.asarray(self._func(lo, hi, *vals), dtype=float)


def _norm() -> Parameter:
    return Parameter("norm", 1.0, "", 0.0, 1e24, 0.0, 1e24, delta=0.01)


# ------------------------------------------------------------------------------- abundance hook
ABUNDANCE_TABLES = ("angr", "aspl", "feld", "aneb", "grsa", "wilm", "lodd", "lpgp", "lpgs")
_abundance = "angr"
_abundance_observers: list[Callable[[str], None]] = []


def set_abundance(table: str) -> None:
    """Select the solar abundance table (XSPEC ``abund``) and tell the observers.

    Parameters
    ----------
    table : str
        One of :data:`ABUNDANCE_TABLES` (case-insensitive).
    """
    global _abundance
    name = str(table).strip().lower()
    if name not in ABUNDANCE_TABLES:
        raise ConfigError(f"unknown abundance table {table!r}; known: {', '.join(ABUNDANCE_TABLES)}")
    _abundance = name
    for fn in _abundance_observers:
        fn(name)


def get_abundance() -> str:
    """Return the current abundance table name (default ``angr``)."""
    return _abundance


def on_abundance_change(fn: Callable[[str], None]) -> None:
    """Register ``fn(table)`` to be called whenever :func:`set_abundance` runs."""
    _abundance_observers.append(fn)


# ------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[[], Component]] = {}
_RESOLVERS: list[Callable[[str], Component | None]] = []
_PLUGINS = ("xmmcore.fitting.xsmodels", "xmmcore.fitting.atable")
_plugins_loaded = False


def register_component(name: str, factory: Callable[[], Component], *, replace: bool = True) -> None:
    """Register a component factory under an XSPEC name (case-insensitive).

    Parameters
    ----------
    name : str
        Model name used in expressions.
    factory : callable
        Zero-argument callable returning a new :class:`Component`.
    replace : bool
        If False, keep an existing registration (lets plug-ins provide only missing models).
    """
    key = name.lower()
    if not replace and key in _REGISTRY:
        return
    _REGISTRY[key] = factory


def register_resolver(fn: Callable[[str], Component | None]) -> None:
    """Register ``fn(name) -> Component | None`` for names the registry does not hold (``atable{...}``)."""
    _RESOLVERS.append(fn)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in _PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is not None and mod.startswith(exc.name) or exc.name == mod:
                continue
            raise
        except ImportError:
            continue


def known_components() -> list[str]:
    """Names of the registered components (after loading plug-ins)."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_component(name: str) -> Component:
    """Return a new component by XSPEC name.

    Raises
    ------
    ConfigError
        The name is not registered, not handled by a resolver and not provided by a plug-in.
    """
    raw = name.strip()
    key = raw.lower()
    for attempt in range(2):
        if key in _REGISTRY:
            return _REGISTRY[key]()
        for resolver in _RESOLVERS:
            resolved = resolver(raw)
            if resolved is not None:
                return resolved
        if attempt == 0:
            _load_plugins()
    raise ConfigError(f"unknown model component {raw!r}; known: {', '.join(sorted(_REGISTRY))}")


# --------------------------------------------------------------------------------------- models
def _constant(lo: np.ndarray, hi: np.ndarray, factor: float) -> np.ndarray:
    return np.full(lo.shape, factor)


# Morrison & McCammon (1983) fit coefficients, in XSPEC's units (sigma in 1e-22 cm^2 with E in keV):
# sigma(E) = (c0 + c1 E + c2 E^2) / E^3 in the range ending at _MM_EDGE[i].
_MM_EDGE = np.array(
    [
        0.03,
        0.1,
        0.284,
        0.4,
        0.532,
        0.707,
        0.867,
        1.303,
        1.840,
        2.471,
        3.210,
        4.038,
        7.111,
        8.331,
        10.0,
        np.inf,
    ]
)
_MM_C0 = np.array(
    [
        0.336,
        0.173,
        0.346,
        0.781,
        0.714,
        0.955,
        3.089,
        1.206,
        1.413,
        2.027,
        3.427,
        3.522,
        4.339,
        6.29,
        7.012,
        9.532,
    ]
)
_MM_C1 = np.array(
    [
        0.0,
        6.081,
        2.679,
        0.188,
        0.668,
        1.458,
        -3.806,
        1.693,
        1.468,
        1.047,
        0.187,
        0.187,
        -0.024,
        0.309,
        0.252,
        0.0,
    ]
)
_MM_C2 = np.array(
    [0.0, -21.5, -4.761, 0.043, -0.514, -0.611, 2.94, -0.477, -0.315, -0.17, 0.0, 0.0, 0.0075, 0.0, 0.0, 0.0]
)


def _mm_sigma(e: np.ndarray, rng: np.ndarray) -> np.ndarray:
    """Morrison & McCammon cross section per 1e22 H atoms (0 below 13.6 eV, where wabs transmits)."""
    einv = 1.0 / e
    sigma = einv * (_MM_C2[rng] + einv * (_MM_C1[rng] + einv * _MM_C0[rng]))
    return np.where(e < 0.0136, 0.0, sigma)


_WABS_GRIDS: dict[tuple[int, bytes], tuple[np.ndarray, ...]] = {}
_WABS_BY_ID: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]] = {}


def _wabs_grid(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Segments of each bin cut at the M&M edges, with the cross sections at their ends.

    They depend only on the energy grid, which stays the same through a fit, so they are cached
    (keyed by the grid's bytes): a fit then costs two exponentials per segment per evaluation.
    """
    by_id = _WABS_BY_ID.get((id(lo), id(hi)))
    if by_id is not None and by_id[0] is lo and by_id[1] is hi:  # the cache holds lo/hi: ids stay theirs
        return by_id[2]
    key = (lo.size, hashlib.blake2b(lo.tobytes() + hi.tobytes(), digest_size=16).digest())
    grid = _WABS_GRIDS.get(key)
    if grid is not None:
        _remember_by_id(lo, hi, grid)
        return grid
    bins = [np.arange(lo.size)]
    starts = [lo]
    for edge in _MM_EDGE[:-1]:
        inside = np.nonzero((lo < edge) & (hi > edge))[0]
        if inside.size:
            bins.append(inside)
            starts.append(np.full(inside.size, edge))
    seg_bin = np.concatenate(bins)
    a = np.concatenate(starts)
    order = np.lexsort((a, seg_bin))
    seg_bin, a = seg_bin[order], a[order]
    b = np.empty_like(a)
    b[:-1] = a[1:]
    last = np.ones(a.size, dtype=bool)
    last[:-1] = seg_bin[1:] != seg_bin[:-1]
    b[last] = hi[seg_bin[last]]
    rng = np.searchsorted(_MM_EDGE, 0.5 * (a + b), side="right")
    width = hi - lo
    half_over_width = np.where(width > 0, 0.5 / np.where(width > 0, width, 1.0), 0.0)
    grid = (seg_bin, b - a, _mm_sigma(a, rng), _mm_sigma(b, rng), half_over_width)
    if len(_WABS_GRIDS) > 64:
        _WABS_GRIDS.clear()
    _WABS_GRIDS[key] = grid
    _remember_by_id(lo, hi, grid)
    return grid


def _remember_by_id(lo: np.ndarray, hi: np.ndarray, grid: tuple[np.ndarray, ...]) -> None:
    if len(_WABS_BY_ID) > 64:
        _WABS_BY_ID.clear()
    _WABS_BY_ID[(id(lo), id(hi))] = (lo, hi, grid)


def _wabs(lo: np.ndarray, hi: np.ndarray, nh: float) -> np.ndarray:
    """XSPEC ``wabs``: bin-averaged exp(-nH sigma_MM83(E)) by the trapezoid rule, split at the M&M edges.

    Each bin is cut at the absorption edges it contains; each piece is integrated with the cross
    section of the range it lies in (so the value just below an edge uses the lower range, as XSPEC does).
    """
    seg_bin, seg_width, sigma_a, sigma_b, half_over_width = _wabs_grid(lo, hi)
    area = seg_width * (np.exp(-nh * sigma_a) + np.exp(-nh * sigma_b))
    return np.bincount(seg_bin, weights=area, minlength=lo.size) * half_over_width


def _powerlaw(lo: np.ndarray, hi: np.ndarray, index: float) -> np.ndarray:
    """Integral of E^-index over each bin (photons cm^-2 s^-1 for norm 1 at 1 keV)."""
    if abs(1.0 - index) < 1e-10:
        return np.log(hi / lo)
    p = 1.0 - index
    return (hi**p - lo**p) / p


# Kellogg, Baldwin & Koch (1975) Gaunt factor as coded in XSPEC (with the Molnar/Hughes fixes to the
# polynomial fits to Karzas & Latter 1961, and Kurucz's table at low temperature).
_GAM2 = np.array([0.7783, 1.2217, 2.6234, 4.3766, 20.0, 70.0])
_GAM3 = np.array([1.0, 1.7783, 3.0, 5.6234, 10.0, 30.0])
_KBK_A = np.array(
    [
        [
            1.001,
            1.004,
            1.017,
            1.036,
            1.056,
            1.121,
            1.001,
            1.005,
            1.017,
            1.046,
            1.073,
            1.115,
            0.9991,
            1.005,
            1.03,
            1.055,
            1.102,
            1.176,
            0.997,
            1.005,
            1.035,
            1.069,
            1.134,
            1.186,
            0.9962,
            1.004,
            1.042,
            1.1,
            1.193,
            1.306,
            0.9874,
            0.9962,
            1.047,
            1.156,
            1.327,
            1.485,
            0.9681,
            0.9755,
            1.020,
            1.208,
            1.525,
            1.965,
        ],
        [
            0.3029,
            0.1616,
            0.04757,
            0.013,
            0.0049,
            -0.0032,
            0.4905,
            0.2155,
            0.08357,
            0.02041,
            0.00739,
            0.00029,
            0.654,
            0.2833,
            0.08057,
            0.03257,
            0.00759,
            -0.00151,
            1.029,
            0.391,
            0.1266,
            0.05149,
            0.01274,
            0.00324,
            0.9569,
            0.4891,
            0.1764,
            0.05914,
            0.01407,
            -0.00024,
            1.236,
            0.7579,
            0.326,
            0.1077,
            0.028,
            0.00548,
            1.327,
            1.017,
            0.6017,
            0.205,
            0.0605,
            0.00187,
        ],
        [
            -1.323,
            -0.254,
            -0.01571,
            -0.001,
            -0.000184,
            0.00008,
            -4.762,
            -0.3386,
            -0.03571,
            -0.001786,
            -0.0003,
            0.00001,
            -6.349,
            -0.4206,
            -0.02571,
            -0.003429,
            -0.000234,
            0.00005,
            -13.231,
            -0.59,
            -0.04571,
            -0.005714,
            -0.000445,
            -0.00004,
            -7.672,
            -0.6852,
            -0.0643,
            -0.005857,
            -0.00042,
            0.00004,
            -7.143,
            -0.9947,
            -0.12,
            -0.01007,
            -0.000851,
            -0.00004,
            -3.175,
            -1.116,
            -0.2270,
            -0.01821,
            -0.001729,
            0.00023,
        ],
    ]
).reshape(3, 7, 6)  # [coef, m (gamma column), n (u row)] from Fortran order A(6,7,3)
_KURUCZ = np.array(
    [
        5.40,
        5.25,
        5.00,
        4.69,
        4.48,
        4.16,
        3.85,
        4.77,
        4.63,
        4.40,
        4.13,
        3.87,
        3.52,
        3.27,
        4.15,
        4.02,
        3.80,
        3.57,
        3.27,
        2.98,
        2.70,
        3.54,
        3.41,
        3.22,
        2.97,
        2.70,
        2.45,
        2.20,
        2.94,
        2.81,
        2.65,
        2.44,
        2.21,
        2.01,
        1.81,
        2.41,
        2.32,
        2.19,
        2.02,
        1.84,
        1.67,
        1.50,
        1.95,
        1.90,
        1.80,
        1.68,
        1.52,
        1.41,
        1.30,
        1.55,
        1.56,
        1.51,
        1.42,
        1.33,
        1.25,
        1.17,
        1.17,
        1.30,
        1.32,
        1.30,
        1.20,
        1.15,
        1.11,
        0.86,
        1.00,
        1.15,
        1.18,
        1.15,
        1.11,
        1.08,
        0.59,
        0.76,
        0.97,
        1.09,
        1.13,
        1.10,
        1.08,
        0.38,
        0.53,
        0.76,
        0.96,
        1.08,
        1.09,
        1.09,
    ]
).reshape(12, 7)  # [k, j] from Fortran YA(7,12)


def _gaunt(e: np.ndarray, kt: float, z: float) -> np.ndarray:
    """Thermal free-free Gaunt factor (KBK75 as in XSPEC) at energies ``e`` (keV) for ``kT`` (keV), charge ``z``."""
    e = np.asarray(e, dtype=float)
    out = np.zeros_like(e)
    ok = (e > 0) & (e <= 50.0 * kt) & (kt > 0)
    if not np.any(ok):
        return out
    u = e[ok] / kt
    gam = z * z * 0.01358 / kt
    gam1 = min(gam * 1000.0, 100.0)
    if gam > 0.1:
        rj = 2.0 * math.log10(gam) + 3.0
        j = int(rj)
        rk = 2.0 * np.log10(u) + 9.0
        k = np.maximum(rk.astype(int), 1)
        res = np.zeros_like(u)
        if 1 <= j < 7:
            tg = (math.log10(gam) - (j - 3.0) / 2.0) / 0.5
            good = k < 12
            kk = k[good]
            uu = (np.log10(u[good]) - (kk - 9.0) / 2.0) / 0.5
            ya = _KURUCZ
            res[good] = (
                (1 - tg) * (1 - uu) * ya[kk - 1, j - 1]
                + tg * (1 - uu) * ya[kk - 1, j]
                + tg * uu * ya[kk, j]
                + (1 - tg) * uu * ya[kk, j - 1]
            )
        out[ok] = res
        return out
    u1 = 0.5 * u
    t = u1 / 3.75
    u12 = 0.5 * u1
    ak = np.empty_like(u)
    small = u12 <= 1.0
    t2 = t[small] ** 2
    t4 = t2 * t2
    t8 = t4 * t4
    ai = (
        1
        + 3.5156229 * t2
        + 3.089942 * t4
        + 1.2067492 * t2 * t4
        + 0.2659732 * t8
        + 0.0360768 * t8 * t2
        + 0.0045813 * t8 * t4
    )
    q = u12[small] ** 2
    ak[small] = (
        -np.log(u12[small]) * ai
        - 0.57721566
        + q
        * (
            0.4227842
            + q * (0.23069756 + q * (0.0348859 + q * (0.00262698 + q * (0.0001075 + q * 0.0000074))))
        )
    )
    w = -1.0 / u12[~small]
    big = 1.25331414 + w * (
        0.07832358 + w * (0.02189568 + w * (0.01062446 + w * (0.00587872 + w * (0.0025154 + w * 0.00053208))))
    )
    ak[~small] = big / (np.exp(u1[~small]) * np.sqrt(u1[~small]))
    born = 0.5513 * np.exp(u1) * ak
    if gam1 < 1.0:
        out[ok] = born
        return out
    up = np.maximum(u, 0.003)
    n = np.searchsorted(np.array([0.03, 0.30, 1.0, 5.0, 15.0]), up, side="left")
    m = int(np.searchsorted(np.array([1.773, 3.0, 5.6234, 10.0, 30.0]), gam1, side="left"))
    a = _KBK_A
    g1 = (a[0, m, n] + a[1, m, n] * up + a[2, m, n] * up * up) * born
    g2 = (a[0, m + 1, n] + a[1, m + 1, n] * up + a[2, m + 1, n] * up * up) * born
    p = (gam1 - _GAM3[m]) / _GAM2[m]
    out[ok] = (1 - p) * g1 + p * g2
    return out


def _bremss_photons(e: np.ndarray, kt: float, he_h: float = 0.085) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        val = (_gaunt(e, kt, 1.0) + 4 * he_h * _gaunt(e, kt, 2.0)) * np.exp(-e / kt) / e / math.sqrt(kt)
    return np.where((e > 0) & (e < 50 * kt), val, 0.0)


def _bremss(lo: np.ndarray, hi: np.ndarray, kt: float) -> np.ndarray:
    """XSPEC ``bremss`` (norm = 3.02e-15/(4 pi D^2) Int n_e n_I dV): two-point (trapezoid) bin integral."""
    return 0.5 * (_bremss_photons(lo, kt) + _bremss_photons(hi, kt)) * (hi - lo)


def _zbremss(lo: np.ndarray, hi: np.ndarray, kt: float, z: float) -> np.ndarray:
    zf = 1.0 + z
    return _bremss(lo * zf, hi * zf, kt) / zf


def _gaussian(lo: np.ndarray, hi: np.ndarray, line_e: float, sigma: float) -> np.ndarray:
    """Gaussian line of unit total flux integrated over each bin (delta function for sigma = 0)."""
    if sigma <= 0:
        return ((lo <= line_e) & (hi > line_e)).astype(float)
    s = sigma * math.sqrt(2.0)
    return 0.5 * (erf((hi - line_e) / s) - erf((lo - line_e) / s))


def _zgauss(lo: np.ndarray, hi: np.ndarray, line_e: float, sigma: float, z: float) -> np.ndarray:
    zf = 1.0 + z
    return _gaussian(lo * zf, hi * zf, line_e, sigma) / zf


_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def _integrate(fn: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    half = 0.5 * (hi - lo)
    mid = 0.5 * (hi + lo)
    e = mid[:, None] + half[:, None] * _GL_X[None, :]
    return (fn(e) * _GL_W[None, :]).sum(axis=1) * half


def _planck(e: np.ndarray, kt: float) -> np.ndarray:
    x = e / kt
    with np.errstate(over="ignore"):
        return np.where(x < 1e-4, e * kt, e * e / np.expm1(np.minimum(x, 700.0)))


def _bbody(lo: np.ndarray, hi: np.ndarray, kt: float) -> np.ndarray:
    """XSPEC ``bbody``: norm = L39 / D10^2; 8.0525 E^2 dE / (kT^4 (exp(E/kT) - 1))."""
    return 8.0525 / kt**4 * _integrate(lambda e: _planck(e, kt), lo, hi)


def _bbodyrad(lo: np.ndarray, hi: np.ndarray, kt: float) -> np.ndarray:
    """XSPEC ``bbodyrad``: norm = R_km^2 / D10^2; 1.0344e-3 E^2 dE / (exp(E/kT) - 1)."""
    return 1.0344e-3 * _integrate(lambda e: _planck(e, kt), lo, hi)


def _redshift() -> Parameter:
    return Parameter("Redshift", 0.0, "", -0.999, 10.0, -0.999, 10.0, frozen=True, delta=-0.01)


def _kt(default: float) -> Parameter:
    return Parameter("kT", default, "keV", 1e-4, 200.0, 1e-4, 200.0, delta=0.01)


def _line_params() -> list[Parameter]:
    return [
        Parameter("LineE", 6.5, "keV", 0.0, 1e6, 0.0, 1e6, delta=0.05),
        Parameter("Sigma", 0.1, "keV", 0.0, 10.0, 0.0, 20.0, delta=0.05),
    ]


def _builtin(
    name: str,
    kind: str,
    params: Callable[[], list[Parameter]],
    func: Callable[..., np.ndarray],
    absorption: bool | None = None,
) -> None:
    register_component(name, lambda: FunctionComponent(name, kind, params(), func, absorption=absorption))


_builtin(
    "constant",
    "mul",
    lambda: [Parameter("factor", 1.0, "", 0.0, 1e10, 0.0, 1e10, delta=0.01)],
    _constant,
    absorption=False,
)
_builtin("wabs", "mul", lambda: [Parameter("nH", 1.0, "10^22", 0.0, 1e5, 0.0, 1e6, delta=0.001)], _wabs)
_builtin(
    "powerlaw", "add", lambda: [Parameter("PhoIndex", 1.0, "", -2.0, 9.0, -3.0, 10.0, delta=0.01)], _powerlaw
)
_builtin("bremss", "add", lambda: [_kt(7.0)], _bremss)
_builtin("zbremss", "add", lambda: [_kt(7.0), _redshift()], _zbremss)
_builtin("gaussian", "add", _line_params, _gaussian)
_builtin("zgauss", "add", lambda: [*_line_params(), _redshift()], _zgauss)
_builtin("bbody", "add", lambda: [_kt(3.0)], _bbody)
_builtin("bbodyrad", "add", lambda: [_kt(3.0)], _bbodyrad)


# ------------------------------------------------------------------------------ composite model
@dataclass
class ModelParameter:
    """A parameter of a :class:`CompositeModel` (component instance + its :class:`Parameter`).

    Attributes
    ----------
    number : int
        1-based XSPEC parameter number.
    component : str
        Component instance name, ``<name>_<n>`` (``wabs_1``).
    param : Parameter
        The parameter (value, limits, frozen).
    link : int or None
        0-based index of the parameter this one is tied to (its value is copied), or ``None``.
    """

    number: int
    component: str
    param: Parameter
    link: int | None = None

    @property
    def name(self) -> str:
        """Parameter name (``nH``)."""
        return self.param.name

    @property
    def full_name(self) -> str:
        """``component_n.param`` (``wabs_1.nH``)."""
        return f"{self.component}.{self.param.name}"

    @property
    def value(self) -> float:
        return self.param.value

    @property
    def frozen(self) -> bool:
        return self.param.frozen

    @property
    def free(self) -> bool:
        """Varied by the fit: not frozen and not linked."""
        return not self.param.frozen and self.link is None


_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\{[^}]*\})?)|(?P<op>[*+()]))")


@dataclass
class _Node:
    op: str  # "comp", "mul", "add"
    children: list[_Node] = field(default_factory=list)
    index: int = -1


class CompositeModel:
    """Components combined by an XSPEC model expression.

    Parameters
    ----------
    expression : str
        The expression, e.g. ``"wabs*(zbremss+zgauss)"``.

    Attributes
    ----------
    expression : str
    components : list of Component
        Left to right as they appear.
    component_names : list of str
        ``<name>_<n>`` for each component.
    parameters : list of ModelParameter
        In XSPEC order (1-based number = index + 1).
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        self.components: list[Component] = []
        self.component_names: list[str] = []
        self._tree = self._parse(self.expression)
        self.parameters: list[ModelParameter] = []
        self._slices: list[slice] = []
        counts: dict[str, int] = {}
        for comp in self.components:
            base = _instance_base(comp.name)
            counts[base] = counts.get(base, 0) + 1
            inst = f"{base}_{counts[base]}"
            self.component_names.append(inst)
            start = len(self.parameters)
            for p in comp.params:
                self.parameters.append(ModelParameter(len(self.parameters) + 1, inst, copy.copy(p)))
            self._slices.append(slice(start, len(self.parameters)))
        kind = self._kind(self._tree)
        if kind != "add":
            raise ConfigError(f"model {expression!r} has no additive component (it evaluates to a factor)")

    # ---------------------------------------------------------------- parsing
    def _parse(self, expr: str) -> _Node:
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(expr):
            if expr[pos:].strip() == "":
                break
            m = _TOKEN.match(expr, pos)
            if not m or m.end() == pos:
                raise ConfigError(f"model expression {expr!r}: cannot parse at {expr[pos:]!r}")
            tokens.append(("name", m.group("name")) if m.group("name") else ("op", m.group("op")))
            pos = m.end()
        if not tokens:
            raise ConfigError("empty model expression")
        self._tokens = tokens
        self._pos = 0
        node = self._parse_sum()
        if self._pos != len(tokens):
            raise ConfigError(f"model expression {expr!r}: unexpected {tokens[self._pos][1]!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _parse_sum(self) -> _Node:
        terms = [self._parse_product()]
        while self._peek() == ("op", "+"):
            self._pos += 1
            terms.append(self._parse_product())
        return terms[0] if len(terms) == 1 else _Node("add", terms)

    def _parse_product(self) -> _Node:
        factors = [self._parse_factor()]
        while True:
            tok = self._peek()
            if tok == ("op", "*"):
                self._pos += 1
                factors.append(self._parse_factor())
            elif tok is not None and (tok == ("op", "(") or tok[0] == "name"):
                factors.append(self._parse_factor())  # implicit product: wabs(powerlaw)
            else:
                break
        return factors[0] if len(factors) == 1 else _Node("mul", factors)

    def _parse_factor(self) -> _Node:
        tok = self._peek()
        if tok is None:
            raise ConfigError(f"model expression {self.expression!r} ends unexpectedly")
        if tok == ("op", "("):
            self._pos += 1
            node = self._parse_sum()
            if self._peek() != ("op", ")"):
                raise ConfigError(f"model expression {self.expression!r}: missing ')'")
            self._pos += 1
            return node
        if tok[0] == "name":
            self._pos += 1
            comp = get_component(tok[1])
            if comp.kind == "con":
                raise ConfigError(
                    f"convolution component {comp.name!r} is not supported by the built-in engine"
                )
            self.components.append(comp)
            return _Node("comp", index=len(self.components) - 1)
        raise ConfigError(f"model expression {self.expression!r}: unexpected {tok[1]!r}")

    def _kind(self, node: _Node) -> str:
        if node.op == "comp":
            return self.components[node.index].kind
        kinds = [self._kind(c) for c in node.children]
        if node.op == "add":
            if any(k != "add" for k in kinds):
                raise ConfigError(f"model {self.expression!r}: '+' needs additive components on both sides")
            return "add"
        n_add = sum(k == "add" for k in kinds)
        if n_add > 1:
            raise ConfigError(f"model {self.expression!r}: additive components multiplied together")
        return "add" if n_add else "mul"

    # ---------------------------------------------------------------- parameters
    def index(self, key: str | int) -> int:
        """0-based index of a parameter given by number (``1``, ``"1"``), ``comp_n.name``, ``comp.name``
        (component unique) or a unique parameter name."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.strip().isdigit()):
            num = int(key)
            if not 1 <= num <= len(self.parameters):
                raise ConfigError(
                    f"parameter number {num} out of range 1..{len(self.parameters)} for {self.expression}"
                )
            return num - 1
        k = str(key).strip()
        kl = k.lower()
        hits = [i for i, p in enumerate(self.parameters) if p.full_name.lower() == kl]
        if not hits and "." in k:
            comp, pname = kl.rsplit(".", 1)
            hits = [
                i
                for i, p in enumerate(self.parameters)
                if p.name.lower() == pname and _instance_base(p.component).lower() == comp
            ]
        if not hits and "." not in k:
            hits = [i for i, p in enumerate(self.parameters) if p.name.lower() == kl]
        if len(hits) == 1:
            return hits[0]
        names = ", ".join(p.full_name for p in self.parameters)
        if not hits:
            raise ConfigError(f"no parameter {k!r} in model {self.expression!r} (parameters: {names})")
        raise ConfigError(
            f"parameter {k!r} is ambiguous in {self.expression!r}; use one of: "
            + ", ".join(self.parameters[i].full_name for i in hits)
        )

    def set(self, key: str | int, value: float | None = None, frozen: bool | None = None) -> ModelParameter:
        """Set a parameter's value and/or frozen state, like XSPEC's ``newpar``.

        Raises
        ------
        ConfigError
            Unknown parameter, or a value outside the hard limits.
        """
        mp = self.parameters[self.index(key)]
        p = mp.param
        if value is not None:
            value = float(value)
            if not (p.hard_min <= value <= p.hard_max):
                raise ConfigError(
                    f"{mp.full_name}={value} outside its hard limits [{p.hard_min}, {p.hard_max}]"
                )
            p.value = value
            p.min = min(p.min, value)
            p.max = max(p.max, value)
        if frozen is not None:
            p.frozen = bool(frozen)
        return mp

    def link(self, key: str | int, to: str | int) -> None:
        """Tie parameter ``key`` to parameter ``to`` (XSPEC ``newpar key = to``)."""
        i, j = self.index(key), self.index(to)
        if i == j:
            raise ConfigError(f"cannot link {self.parameters[i].full_name} to itself")
        self.parameters[i].link = j

    @property
    def values(self) -> np.ndarray:
        """Current parameter values (links resolved)."""
        v = np.array([p.param.value for p in self.parameters], dtype=float)
        return self.resolve_links(v)

    def resolve_links(self, values: np.ndarray) -> np.ndarray:
        """Copy linked parameters' values from their targets."""
        v = np.array(values, dtype=float)
        for i, p in enumerate(self.parameters):
            j = p.link
            seen = 0
            while j is not None and seen < len(self.parameters):
                v[i] = v[j]
                j = self.parameters[j].link
                seen += 1
        return v

    # ---------------------------------------------------------------- evaluation
    def evaluate(
        self,
        energ_lo: np.ndarray,
        energ_hi: np.ndarray,
        values: Sequence[float] | np.ndarray | None = None,
        *,
        unabsorbed: bool = False,
        drop: Sequence[int] = (),
    ) -> np.ndarray:
        """Evaluate the model on an energy grid.

        Parameters
        ----------
        energ_lo, energ_hi : ndarray
            Bin edges in keV.
        values : sequence of float or ndarray, optional
            All parameter values (XSPEC order); default the current values.
        unabsorbed : bool
            Set multiplicative absorption components to 1 (for unabsorbed fluxes).
        drop : sequence of int
            Indices of components to replace by 1 (multiplicative) or 0 (additive).

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per bin.
        """
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        v = self.values if values is None else self.resolve_links(np.asarray(values, dtype=float))
        skip = set(drop)
        if unabsorbed:
            skip |= {i for i, c in enumerate(self.components) if c.kind == "mul" and c.absorption}
        cache: dict[int, np.ndarray] = {}

        def comp_value(i: int) -> np.ndarray:
            if i not in cache:
                comp = self.components[i]
                if i in skip:
                    cache[i] = np.ones_like(lo) if comp.kind == "mul" else np.zeros_like(lo)
                else:
                    # Components accept any indexable of floats; the contract spells it Sequence[float].
                    comp_values = cast("Sequence[float]", v[self._slices[i]])
                    cache[i] = np.asarray(comp.evaluate(lo, hi, comp_values), dtype=float)
            return cache[i]

        def ev(node: _Node) -> np.ndarray:
            if node.op == "comp":
                return comp_value(node.index)
            parts = [ev(c) for c in node.children]
            out = parts[0]
            for part in parts[1:]:
                out = out + part if node.op == "add" else out * part
            return out

        return ev(self._tree)

    def copy(self) -> CompositeModel:
        """An independent copy (same expression, copied parameters)."""
        new = copy.copy(self)
        new.parameters = [
            ModelParameter(p.number, p.component, copy.copy(p.param), p.link) for p in self.parameters
        ]
        return new

    def __repr__(self) -> str:
        return f"CompositeModel({self.expression!r})"

    def describe(self) -> str:
        """XSPEC-like table of the parameters."""
        lines = [f"Model {self.expression}", f"{'par':>4} {'component':<14} {'name':<10} {'unit':<8} value"]
        for p in self.parameters:
            state = " frozen" if p.param.frozen else (f" = p{p.link + 1}" if p.link is not None else "")
            lines.append(
                f"{p.number:>4} {p.component:<14} {p.name:<10} {p.param.unit:<8} {p.param.value:.6g}{state}"
            )
        return "\n".join(lines)


def _instance_base(name: str) -> str:
    """Component name used for ``<name>_<n>``: ``atable{/x/apec.fits}`` -> ``atable``."""
    base = name.split("{", 1)[0]
    if "_" in base and base.rsplit("_", 1)[1].isdigit():
        base = base.rsplit("_", 1)[0]
    return base


def parse_expression(expr: str) -> CompositeModel:
    """Parse an XSPEC model expression into a :class:`CompositeModel`.

    Examples
    --------
    >>> m = parse_expression("wabs*(zbremss+zgauss)")
    >>> [p.full_name for p in m.parameters][:3]
    ['wabs_1.nH', 'zbremss_1.kT', 'zbremss_1.Redshift']
    """
    return CompositeModel(expr)


_ABSORBERS = ("wabs", "phabs", "tbabs", "ztbabs", "zphabs", "zwabs")


def _finite_number(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def auto_settings(model: str, meta: Mapping[str, Any]) -> list[str]:
    """XSPEC-style settings from target metadata: every Redshift frozen at ``z``, absorbers' nH at ``nh``.

    Parameters
    ----------
    model : str
        Model expression, e.g. ``"wabs*(zbremss+zgauss)"``.
    meta : mapping
        Target metadata; ``z`` and ``nh`` (1e22 cm^-2) are used when they are finite numbers.
    """
    out = []
    for par in parse_expression(model).parameters:
        comp, _, pname = par.full_name.partition(".")
        if pname.lower() == "redshift" and _finite_number(meta.get("z")):
            out.append(f"{par.full_name}={float(meta['z'])},frozen")
        elif (
            pname.lower() == "nh" and comp.rsplit("_", 1)[0] in _ABSORBERS and _finite_number(meta.get("nh"))
        ):
            out.append(f"{par.full_name}={float(meta['nh'])},frozen")
    return out
