"""The numpy components (MIT; no XSPEC library needed): constant, wabs, powerlaw, bremss, zbremss, gaussian,
zgauss, bbody, bbodyrad.

They follow XSPEC's own algorithms (Morrison & McCammon 1983 ``wabs`` with XSPEC's edge-aware trapezoid
average; ``bremss`` with the Kellogg, Baldwin & Koch 1975 Gaunt factor and a two-point integral; analytic
integrals for ``powerlaw``/``gaussian``) and are tested against XSPEC's library through ``xspectrampoline``.
Importing this module registers them (:func:`~xmmcore.fitting.registry.register_component`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
from scipy.special import erf

from .parameters import Parameter
from .registry import FunctionComponent, register_component

__all__: list[str] = []  # used through the registry: get_component("wabs")


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
    """XSPEC ``bremss`` (norm = 3.02e-15/(4 pi D^2) Int n_e n_I dV): two-point (trapezoid) bin integral.

    On a contiguous grid (every response's) the N + 1 distinct edges are evaluated once, not 2N.
    """
    if lo.size > 1 and np.array_equal(lo[1:], hi[:-1]):
        at_edges = _bremss_photons(np.append(lo, hi[-1]), kt)
        return 0.5 * (at_edges[:-1] + at_edges[1:]) * (hi - lo)
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
