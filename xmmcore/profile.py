"""Surface-brightness profiles: a beta model fitted to the azimuthal profile of the cluster image.

The fitted profile is what the apertures need that a spectrum cannot give:

* the residual cluster emission in the local background annulus (a contamination flag),
* the fraction of the cluster's flux inside R500 relative to the extraction aperture (L500),
* the fraction of the aperture's flux lost to point-source masks and chip gaps.

The model of the counts is ``v(x) [S0 (1 + (r/rc)^2)^(0.5 - 3 beta) + B_sky] + B_part`` [counts / arcmin^2]:
the cluster and the sky background (cosmic X-ray background, Galactic foreground) are seen through the
telescope's vignetting ``v`` (1 on the optical axis), the quiescent particle background is not.  Without
the two background terms a cluster near the edge of the field looks more extended than it is (the
vignetted sky background falls off with radius like a flat beta model): on simulated fields a
single flat term gave beta 0.35-0.55 for true 0.65-0.8 and L500 up to 1.8x the truth.  It is fitted with
the Poisson likelihood (C statistic) to the counts in annuli out to the edge of the detector coverage,
with the masked pixels left out, by L-BFGS-B with the statistic's analytic gradient from 4-8 starts.  When the filter step measured the particle level in the
out-of-field corners (:mod:`xmmcore.corners`), ``B_part`` is that level per camera times one scale
with a Gaussian prior (1 +- 0.1) instead of a free flat term: where the cluster fills the field the
flat term and the cluster's wing are degenerate.  The projected beta model has a closed-form cumulative flux
(:func:`beta_cumulative`); ``S0`` and ``B_sky`` are on-axis (vignetting-corrected) surface brightnesses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult

__all__ = [
    "BetaProfile",
    "beta_cumulative",
    "fit_beta_profile",
    "pixel_radii",
]


def beta_cumulative(r: np.ndarray | float, rc: float, beta: float) -> np.ndarray:
    """Projected beta-model flux within radius ``r`` in units of ``pi S0 rc^2 / (3 beta - 1.5)``.

    ``int_0^r 2 pi r' (1 + (r'/rc)^2)^(0.5 - 3 beta) dr' = pi rc^2 / (1.5 - 3 beta) [(1 + (r/rc)^2)^(1.5 - 3 beta) - 1]``.
    """
    a = 1.5 - 3.0 * beta
    return (1.0 - (1.0 + (np.asarray(r, dtype=float) / rc) ** 2) ** a) / (-a)


@dataclass
class BetaProfile:
    """A fitted beta model (radii in arcmin, surface brightness in counts per arcmin^2).

    ``s0_per_arcmin2`` and ``bkg_per_arcmin2`` (sky background) are on-axis values (divide the
    counts by the vignetting); ``bkg_flat_per_arcmin2`` is the unvignetted (particle) background.
    """

    rc_arcmin: float
    beta: float
    s0_per_arcmin2: float
    bkg_per_arcmin2: float
    r_max_arcmin: float
    n_annuli: int
    converged: bool
    note: str = ""
    bkg_flat_per_arcmin2: float = 0.0
    particle_scale: float = float("nan")
    #: covariance of (ln S0, ln rc, beta) from the C statistic's curvature at the best fit (the
    #: backgrounds profiled), ``None`` when the curvature is not positive definite (unconstrained)
    covariance: list[list[float]] | None = None

    def draws(self, n: int, *, seed: int = 0) -> list[BetaProfile]:
        """``n`` profiles with (S0, rc, beta) drawn from :attr:`covariance` (beta kept in 0.35-2.5); [] without it."""
        if self.covariance is None:
            return []
        rng = np.random.default_rng(seed)
        mean = np.array([math.log(self.s0_per_arcmin2), math.log(self.rc_arcmin), self.beta])
        out = []
        for x in rng.multivariate_normal(mean, np.asarray(self.covariance), size=n):
            if max(x[0], x[1]) > 700.0:  # exp() would overflow: not a usable profile
                continue
            out.append(
                replace(
                    self,
                    s0_per_arcmin2=float(math.exp(x[0])),
                    rc_arcmin=float(math.exp(x[1])),
                    beta=float(np.clip(x[2], 0.35, 2.5)),
                    covariance=None,
                )
            )
        return out

    def brightness(self, r_arcmin: np.ndarray | float) -> np.ndarray:
        """Cluster surface brightness [counts / arcmin^2] at ``r_arcmin`` (without the background)."""
        r = np.asarray(r_arcmin, dtype=float)
        return self.s0_per_arcmin2 * (1.0 + (r / self.rc_arcmin) ** 2) ** (0.5 - 3.0 * self.beta)

    def flux_within(self, r_arcmin: float) -> float:
        """Cluster counts within a circle of radius ``r_arcmin`` (no masks, no gaps)."""
        k = math.pi * self.rc_arcmin**2 * self.s0_per_arcmin2
        return float(k * beta_cumulative(r_arcmin, self.rc_arcmin, self.beta))

    def flux_between(self, r_in_arcmin: float, r_out_arcmin: float) -> float:
        """Cluster counts in the annulus ``r_in``-``r_out`` (no masks, no gaps)."""
        return self.flux_within(r_out_arcmin) - self.flux_within(r_in_arcmin)

    def fraction_ratio(self, r_to: float, r_from: float) -> float:
        """Flux within ``r_to`` over flux within ``r_from`` (e.g. R500 over the aperture)."""
        return self.flux_within(r_to) / self.flux_within(r_from)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pixel_radii(shape: tuple[int, int], centre_ij: tuple[float, float], pixel_arcmin: float) -> np.ndarray:
    """Distance [arcmin] of each image pixel centre from ``centre_ij`` (0-based fractional i, j)."""
    jj, ii = np.indices(shape)
    return np.hypot(ii - centre_ij[0], jj - centre_ij[1]) * pixel_arcmin


# A step to a tiny core radius makes (r/rc)^2 overflow to inf, whose power is 0: the right limit,
# not an error, so the fit does not print numpy's "overflow encountered in multiply" for every such ObsID.
@np.errstate(over="ignore")
def fit_beta_profile(
    image: np.ndarray,
    *,
    radii_arcmin: np.ndarray,
    weight: np.ndarray,
    pixel_arcmin: float,
    r_max_arcmin: float,
    n_annuli: int = 40,
    vignetting: np.ndarray | None = None,
    particle: np.ndarray | None = None,
    particle_rel_error: float = 0.1,
) -> BetaProfile:
    """Fit ``v [S0 (1 + (r/rc)^2)^(0.5 - 3 beta) + B_sky] + B_part`` to the azimuthal profile of ``image``.

    Parameters
    ----------
    image : ndarray
        Counts per pixel.
    radii_arcmin : ndarray
        Distance of each pixel from the centre [arcmin] (:func:`pixel_radii`).
    weight : ndarray
        Usable fraction of each pixel (0 in chip gaps, off the detector and under point-source masks).
    pixel_arcmin : float
        Pixel size [arcmin].
    r_max_arcmin : float
        Outermost radius of the profile.
    n_annuli : int
        Number of annuli (logarithmic beyond the first pixel scale).
    vignetting : ndarray, optional
        Vignetting of each pixel in the image's band (effective area over the on-axis one).
        ``None``: no vignetting, and one flat background term.
    particle : ndarray, optional
        Expected particle counts of each pixel, measured from the out-of-field corners
        (:mod:`xmmcore.corners`; 0 under masks). The particle term is then this map times a
        scale with a Gaussian prior of mean 1 and width ``particle_rel_error``, instead of a free
        flat level: where the cluster fills the field the flat level and the cluster's wing are
        degenerate (simulated rc 3-4' clusters: fitted level 0, beta 0.84-1.4 for 0.72-0.74).
    """
    r_min = max(pixel_arcmin, 0.05)
    edges = np.concatenate([[0.0], np.geomspace(r_min, r_max_arcmin, n_annuli)])
    rr, ww, cc = radii_arcmin.ravel(), weight.ravel(), image.ravel()
    vv = np.ones_like(rr) if vignetting is None else np.asarray(vignetting, dtype=float).ravel()
    pp = np.zeros_like(rr) if particle is None else np.asarray(particle, dtype=float).ravel()
    ok = (rr < edges[-1]) & (ww > 0)
    rr, ww, cc, vv, pp = rr[ok], ww[ok], cc[ok], vv[ok], pp[ok]
    idx = np.digitize(rr, edges) - 1
    counts_all = np.bincount(idx, weights=cc, minlength=n_annuli)
    # The model is summed over fine radial bins of the usable pixels (not evaluated at each annulus'
    # mean radius), so that a core of a few pixels is not biased by the curvature of the profile.
    fine_edges = np.concatenate(
        [np.arange(0.0, 20 * r_min, 0.1 * pixel_arcmin), np.geomspace(20 * r_min, r_max_arcmin, 400)]
    )
    fidx = np.clip(np.digitize(rr, fine_edges) - 1, 0, fine_edges.size - 2)
    f_area = np.bincount(fidx, weights=ww, minlength=fine_edges.size - 1) * pixel_arcmin**2
    f_rsum = np.bincount(fidx, weights=ww * rr, minlength=fine_edges.size - 1) * pixel_arcmin**2
    f_varea = np.bincount(fidx, weights=ww * vv, minlength=fine_edges.size - 1) * pixel_arcmin**2
    f_part = np.bincount(fidx, weights=pp, minlength=fine_edges.size - 1)
    f_use = f_area > 0
    f_r = f_rsum[f_use] / f_area[f_use]
    f_area, f_varea, f_part = f_area[f_use], f_varea[f_use], f_part[f_use]
    f_ann_all = np.digitize(f_r, edges) - 1
    area_all = np.bincount(f_ann_all, weights=f_area, minlength=n_annuli)
    varea_all = np.bincount(f_ann_all, weights=f_varea, minlength=n_annuli)
    part_all = np.bincount(f_ann_all, weights=f_part, minlength=n_annuli)
    use = area_all > 0
    counts, area, varea, part = counts_all[use], area_all[use], varea_all[use], part_all[use]
    measured_particles = particle is not None and float(part.sum()) > 0
    f_ann = (np.cumsum(use) - 1)[f_ann_all]
    n_used = int(use.sum())
    if counts.size < 5 or counts.sum() < 50:
        raise ValueError(
            f"too few counts ({counts.sum():.0f}) or annuli ({counts.size}) for a beta-model fit"
        )
    outer = slice(max(1, int(0.8 * counts.size)), None)
    b0 = max(float(counts[outer].sum() / area[outer].sum()), 1e-6)
    s0 = max(float(counts[0] / area[0]) - b0, 1e-3)

    two_bkg = vignetting is not None or measured_particles
    # The fine bins are in radial order, so each annulus is a run of them (one reduceat instead of a
    # weighted bincount), and r^2 is computed once.
    f_r2 = f_r**2
    runs = np.flatnonzero(np.concatenate([[True], np.diff(f_ann) > 0]))
    in_order = runs.size == n_used and bool(np.all(np.diff(f_ann) >= 0))
    other = part if measured_particles else area  # the second background's template

    def per_annulus(values: np.ndarray) -> np.ndarray:
        return (
            np.add.reduceat(values, runs)
            if in_order
            else np.bincount(f_ann, weights=values, minlength=n_used)
        )

    def objective(p: Sequence[float] | np.ndarray, with_grad: bool) -> tuple[float, np.ndarray | None]:
        """The C statistic (+ the particle prior) and, ``with_grad``, its analytic gradient."""
        k = len(p)
        log_s0, log_rc, beta, log_b = (float(x) for x in p[:4])
        if not 0.35 <= beta <= 2.5:
            return 1e30, np.zeros(k) if with_grad else None
        try:
            q = math.exp(-2.0 * log_rc)
            s_0, b_sky = math.exp(log_s0), math.exp(log_b)
            b_2 = math.exp(float(p[4])) if two_bkg else 0.0
            prior = ((b_2 - 1.0) / particle_rel_error) ** 2 if measured_particles else 0.0
        except OverflowError:  # a step to exp(>709): as bad as a bound (simulated 0901302801)
            return 1e30, np.zeros(k) if with_grad else None
        a = 0.5 - 3.0 * beta
        u = 1.0 + f_r2 * q
        shape = u**a
        shape *= f_varea
        amp = per_annulus(shape)
        m = amp * s_0
        m += b_sky * varea
        if two_bkg:
            m += b_2 * other
        m = np.maximum(m, 1e-30)
        value = 2.0 * float(m.sum() - counts @ np.log(m)) + prior
        if not math.isfinite(value):
            return 1e30, np.zeros(k) if with_grad else None
        if not with_grad:
            return value, None
        # d(u^a)/d ln rc = -2 a q r^2 u^(a-1), d(u^a)/d beta = -3 ln(u) u^a
        amp_rc = per_annulus(shape * f_r2 / u) * (-2.0 * a * q)
        # where (r/rc)^2 overflowed, u^a = 0 and u^a ln(u) -> 0 (a < 0), not 0 x inf
        shape_log = np.multiply(shape, np.log(u), out=np.zeros_like(shape), where=shape > 0)
        amp_beta = per_annulus(shape_log) * -3.0
        dm = 2.0 * (1.0 - counts / m)  # dC/dm per annulus
        grad = [
            s_0 * float(dm @ amp),
            s_0 * float(dm @ amp_rc),
            s_0 * float(dm @ amp_beta),
            b_sky * float(dm @ varea),
        ]
        if two_bkg:
            grad.append(b_2 * float(dm @ other))
            if measured_particles:
                grad[-1] += 2.0 * (b_2 - 1.0) * b_2 / particle_rel_error**2
        gradient = np.array(grad)
        if not np.all(np.isfinite(gradient)):  # a finite statistic this far out: no direction to trust
            return 1e30, np.zeros(k)
        return value, gradient

    def cstat(p: Sequence[float]) -> float:
        return objective(p, False)[0]

    def cstat_and_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(p, True)
        assert grad is not None
        return value, grad

    best = None
    for rc0 in (0.1, 0.3, 1.0, 2.5):
        for share in (0.5,) if not two_bkg or measured_particles else (0.2, 0.8):
            x0 = [math.log(s0), math.log(rc0), 0.67]
            if measured_particles:
                b_rest = max(b0 - float(part[outer].sum() / area[outer].sum()), 0.05 * b0)
                x0 += [math.log(b_rest), 0.0]
            else:
                x0 += [math.log(b0 * share), math.log(b0 * (1.0 - share))] if two_bkg else [math.log(b0)]
            res = _local_minimum(cstat_and_grad, x0)
            if best is None or res.fun < best.fun:
                best = res
    assert best is not None
    if not best.success:
        # L-BFGS-B stopped without its convergence test (iteration limit, a failed line search):
        # Nelder-Mead from that point, as the fit did before it had gradients
        for _ in range(2):
            res = nelder_mead(cstat, best.x, maxiter=6000, xatol=1e-6, fatol=1e-7)
            if res.fun <= best.fun:
                best = res
    log_s0, log_rc, beta, log_b = best.x[:4]
    rc = float(math.exp(log_rc))
    covariance = _shape_covariance(cstat, best.x)
    note = ""
    if rc > r_max_arcmin:
        note = f"core radius {rc:.2f}' beyond the profile's {r_max_arcmin:.2f}': shape poorly constrained"
    return BetaProfile(
        rc_arcmin=rc,
        beta=float(beta),
        s0_per_arcmin2=float(math.exp(log_s0)),
        bkg_per_arcmin2=float(math.exp(log_b)),
        r_max_arcmin=float(r_max_arcmin),
        n_annuli=int(counts.size),
        converged=bool(best.success),
        note=note,
        bkg_flat_per_arcmin2=(
            float(math.exp(best.x[4]) * part.sum() / area.sum())
            if measured_particles
            else float(math.exp(best.x[4]))
            if two_bkg
            else 0.0
        ),
        particle_scale=float(math.exp(best.x[4])) if measured_particles else float("nan"),
        covariance=covariance,
    )


#: BLAS/LAPACK thread pools of the process (numpy's and scipy's OpenBLAS), limited to one thread while
#: L-BFGS-B runs: its small LAPACK calls cost ~3 ms each with a pool of threads on a loaded machine
#: (Dask workers already run with OPENBLAS_NUM_THREADS=1; ``xmm-survey run-one`` may not).
_BLAS_POOLS: Any = None


def _local_minimum(
    fun_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: Sequence[float]
) -> OptimizeResult:
    """L-BFGS-B from ``x0`` with the analytic gradient, beta (the third parameter) bounded to 0.35-2.5.

    The convergence tests are tight (``gtol`` 1e-7 on a C statistic of ~1e5-1e6, no relative-reduction
    stop): the minimum it returns agrees with 10 Nelder-Mead restarts to ~1e-6 in every parameter with
    ~60 instead of ~1000 evaluations per start.
    """
    global _BLAS_POOLS
    from scipy.optimize import minimize
    from threadpoolctl import ThreadpoolController

    if _BLAS_POOLS is None:
        _BLAS_POOLS = ThreadpoolController()
    bounds = [(None, None), (None, None), (0.35, 2.5)] + [(None, None)] * (len(x0) - 3)
    with _BLAS_POOLS.limit(limits=1, user_api="blas"):
        res = minimize(
            fun_and_grad,
            np.asarray(x0, dtype=float),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-7},
        )
    res.fun = float(res.fun)
    return res


def nelder_mead(
    fun: Callable[[list[float]], float],
    x0: Sequence[float],
    *,
    maxiter: int,
    xatol: float,
    fatol: float,
) -> OptimizeResult:
    """``scipy.optimize.minimize(fun, x0, method="Nelder-Mead", options=...)`` step for step, on floats.

    The same simplex (5% steps), the same reflection / expansion / contraction / shrink rules with the
    same coefficients and the same arithmetic in the same order, the same stable ordering of the
    vertices and the same stopping tests, so it returns the same ``x``, ``fun`` and ``success``
    bit for bit (tested against scipy); ``fun`` gets a list of floats (plain floats make the simplex
    bookkeeping ~5x cheaper than scipy's small-array numpy calls).  The beta-model fit uses it only
    where L-BFGS-B (:func:`_local_minimum`) did not converge.
    """
    n = len(x0)
    rho, chi, psi, sigma = 1, 2, 0.5, 0.5
    nonzdelt, zdelt = 0.05, 0.00025
    start = [float(v) for v in x0]
    sim = [start]
    for k in range(n):
        y = list(start)
        y[k] = (1 + nonzdelt) * y[k] if y[k] != 0 else zdelt
        sim.append(y)
    fsim = [float(fun(list(v))) for v in sim]

    def order() -> None:
        # numpy's own argsort, as scipy sorts the vertices (ties, e.g. penalised points, in its order)
        idx = np.argsort(np.array(fsim)).tolist()
        sim[:] = [sim[i] for i in idx]
        fsim[:] = [fsim[i] for i in idx]

    order()
    iterations = 1
    while iterations < maxiter:
        best, f0 = sim[0], fsim[0]
        if all(abs(v[j] - best[j]) <= xatol for v in sim[1:] for j in range(n)) and all(
            abs(f0 - f) <= fatol for f in fsim[1:]
        ):
            break
        xbar = list(sim[0])
        for v in sim[1:-1]:
            xbar = [a + b for a, b in zip(xbar, v, strict=True)]
        xbar = [a / n for a in xbar]
        worst = sim[-1]
        xr = [(1 + rho) * a - rho * w for a, w in zip(xbar, worst, strict=True)]
        fxr = float(fun(list(xr)))
        shrink = False
        if fxr < fsim[0]:
            xe = [(1 + rho * chi) * a - rho * chi * w for a, w in zip(xbar, worst, strict=True)]
            fxe = float(fun(list(xe)))
            if fxe < fxr:
                sim[-1], fsim[-1] = xe, fxe
            else:
                sim[-1], fsim[-1] = xr, fxr
        elif fxr < fsim[-2]:
            sim[-1], fsim[-1] = xr, fxr
        else:
            if fxr < fsim[-1]:
                xc = [(1 + psi * rho) * a - psi * rho * w for a, w in zip(xbar, worst, strict=True)]
                fxc = float(fun(list(xc)))
                if fxc <= fxr:
                    sim[-1], fsim[-1] = xc, fxc
                else:
                    shrink = True
            else:
                xcc = [(1 - psi) * a + psi * w for a, w in zip(xbar, worst, strict=True)]
                fxcc = float(fun(list(xcc)))
                if fxcc < fsim[-1]:
                    sim[-1], fsim[-1] = xcc, fxcc
                else:
                    shrink = True
            if shrink:
                for j in range(1, n + 1):
                    sim[j] = [b + sigma * (v - b) for b, v in zip(sim[0], sim[j], strict=True)]
                    fsim[j] = float(fun(list(sim[j])))
        iterations += 1
        order()
    fval = float("nan") if any(f != f for f in fsim) else fsim[0]  # np.min(fsim), as scipy returns it
    return OptimizeResult(x=np.array(sim[0]), fun=fval, nit=iterations, success=iterations < maxiter)


def _shape_covariance(cstat: Any, x: np.ndarray, step: float = 2e-3) -> list[list[float]] | None:
    """Covariance of the first three parameters (ln S0, ln rc, beta): ``2 H^-1`` of the C statistic.

    The Hessian is taken over every parameter (central differences), so the backgrounds' freedom
    (the degeneracy of a flat level with a cluster's wing) widens the shape's errors; ``None`` when
    it is not positive definite or the best fit sits at the beta bound.
    """
    if not 0.35 + 5 * step < x[2] < 2.5 - 5 * step:
        return None
    k = x.size
    h = np.full(k, step)
    f0 = cstat(x)
    hess = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            ei, ej = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
            if i == j:
                v = (cstat(x + ei) - 2.0 * f0 + cstat(x - ei)) / h[i] ** 2
            else:
                v = (cstat(x + ei + ej) - cstat(x + ei - ej) - cstat(x - ei + ej) + cstat(x - ei - ej)) / (
                    4.0 * h[i] * h[j]
                )
            hess[i, j] = hess[j, i] = v
    try:
        np.linalg.cholesky(hess)
        cov = 2.0 * np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return None
    sub = cov[:3, :3]
    if not np.all(np.isfinite(sub)) or np.any(np.diag(sub) <= 0):
        return None
    return [[float(v) for v in row] for row in sub]
