"""xmmcore.profile.nelder_mead is scipy's Nelder-Mead step for step: same x, fun and success, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from xmmcore.profile import nelder_mead


def _scipy(fun, x0, *, maxiter, xatol, fatol):
    return minimize(
        fun,
        x0=np.asarray(x0, float),
        method="Nelder-Mead",
        options={"maxiter": maxiter, "xatol": xatol, "fatol": fatol},
    )


@pytest.mark.parametrize("seed", range(6))
def test_same_as_scipy_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(5, 5))
    centre = rng.normal(size=5)

    def fun(p):
        p = np.asarray(p, dtype=float)
        if p[2] > 1.5:  # a penalised region: many vertices share one value (ties in the ordering)
            return 1e30
        return float(np.sum((a @ (p - centre)) ** 2) + np.sum(np.cos(3 * p)))

    x0 = rng.normal(size=5).tolist()
    x0[seed % 5] = 0.0  # a zero start coordinate gets the absolute initial step
    for maxiter, xatol, fatol in ((6000, 1e-6, 1e-7), (40, 1e-5, 1e-6)):
        ref = _scipy(fun, x0, maxiter=maxiter, xatol=xatol, fatol=fatol)
        got = nelder_mead(fun, x0, maxiter=maxiter, xatol=xatol, fatol=fatol)
        assert got.x.tolist() == ref.x.tolist()
        assert got.fun == ref.fun
        assert got.success == ref.success
    assert not nelder_mead(fun, x0, maxiter=40, xatol=1e-12, fatol=1e-12).success
