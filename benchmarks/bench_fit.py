"""Fit time of the built-in engine, and its ratio to Sherpa on the same spectrum and model when Sherpa is installed.

Spectrum: Sherpa's XMM pn regression (``../shared/data/xmm/sherpa_pn``), 2-10 keV (161 groups),
``wabs(0.0119 frozen) * wabs * powerlaw``, chi2 with Gehrels variance, no background, both started from the
XSPEC defaults (nH = 1, index = 1, norm = 1). Timed: the fit alone (files loaded beforehand), best of N.
Both engines report the best fit with covariance errors (Sherpa's ``fit()`` prints levmar's
``+/-``), so the built-in engine is timed with ``errors="covariance"``; the time without errors is in the note.

Sherpa from PyPI has no XSPEC module (it needs HEASoft), so unless ``sherpa.astro.xspec`` imports, Sherpa
evaluates ``wabs`` with the built-in engine's own ``wabs`` component (the same function, wrapped as a Sherpa
model without Sherpa's model cache), and its own ``powlaw1d`` (the same integral over each bin as XSPEC's
``powerlaw``). Folding, grouping, filtering, statistic and optimiser are Sherpa's.

Run: ``.venv/bin/python benchmarks/bench_fit.py [--quick]``, or through ``benchmarks/run.py``.
Install Sherpa with ``.ci/install-sherpa.sh .venv/bin/python``. Target ratio built-in/Sherpa <= 1.0.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATA", "builtin_time", "main", "run", "sherpa_available", "sherpa_load", "sherpa_time"]

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xmm" / "sherpa_pn"
PHA = "pn_pi_src_bin10.ds"
RMF = "epn_ff20_dY9.rmf"
TARGET = 1.0


def sherpa_available() -> bool:
    """True if ``sherpa.astro.ui`` imports."""
    try:
        with _quiet_sherpa():
            import sherpa.astro.ui  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_sherpa() -> Iterator[None]:
    """Silence Sherpa's INFO/WARNING log lines (fit summaries, absent XSPEC module, missing RESPFILE)."""
    logger = logging.getLogger("sherpa")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _wabs_model_class() -> Any:
    """A Sherpa model class evaluating ``wabs`` with the built-in engine's component (same function in both)."""
    from sherpa.models.model import ArithmeticModel
    from sherpa.models.parameter import Parameter

    from xmmcore.fitting.models import get_component

    class XSWabsTrampoline(ArithmeticModel):
        """``wabs`` (Morrison & McCammon 1983), nH in 1e22 cm^-2, from ``get_component("wabs")``, as a Sherpa model."""

        def __init__(self, name: str = "wabs") -> None:
            self.nH = Parameter(name, "nH", 1.0, 0.0, 1e5, 0.0, 1e6, units="10^22 atoms / cm^2")
            self._component = get_component("wabs")
            ArithmeticModel.__init__(self, name, (self.nH,))

        def calc(self, p: Any, lo: Any, hi: Any = None, *args: Any, **kwargs: Any) -> np.ndarray:
            lo = np.asarray(lo, dtype=float)
            if hi is None:  # point grid: a narrow bin around each energy
                hi = lo * (1 + 1e-6)
            return self._component.evaluate(lo, np.asarray(hi, dtype=float), [float(p[0])])

    return XSWabsTrampoline


def sherpa_load(data: Path = DATA, *, pha: str = PHA, rmf: str = RMF) -> tuple[Any, dict[str, Any]]:
    """Load the pn spectrum into Sherpa's session (dataset 1) and set up the regression model.

    Returns
    -------
    ui : module
        ``sherpa.astro.ui`` with the data, notice range, statistic and source set.
    comps : dict
        ``{"gal": ..., "abs1": ..., "pl": ..., "wabs": "xspec" | "builtin"}``.
    """
    with _quiet_sherpa():
        from sherpa.astro import ui

        ui.clean()
        ui.load_pha(str(data / pha))
        ui.load_rmf(str(data / rmf))
        ui.notice(2, 10)
    ui.set_stat("chi2gehrels")
    try:
        with _quiet_sherpa():
            import sherpa.astro.xspec  # noqa: F401
        gal = ui.create_model_component("xswabs", "gal")
        abs1 = ui.create_model_component("xswabs", "abs1")
        pl = ui.create_model_component("xspowerlaw", "p1")
        which = "xspec"
    except ImportError:
        cls = _wabs_model_class()
        gal, abs1 = cls("gal"), cls("abs1")
        pl = ui.create_model_component("powlaw1d", "p1")
        which = "builtin"
    ui.set_source(gal * abs1 * pl)
    gal.nH = 0.0119
    ui.freeze(gal.nH)
    return ui, {"gal": gal, "abs1": abs1, "pl": pl, "wabs": which}


def _builtin_dataset(data: Path = DATA) -> Any:
    from xmmcore.fitting import SpectrumDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BACKFILE of this file is absent
        return SpectrumDataset.from_pha(data / PHA, rmf=data / RMF).notice(2.0, 10.0)


def builtin_time(repeat: int, *, errors: str | None = "covariance", data: Path = DATA) -> tuple[float, Any]:
    """Best wall time (s) of ``repeat`` built-in fits, and the last fit result."""
    from xmmcore.fitting import fit

    ds = _builtin_dataset(data)
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fit(
            [ds],
            "wabs*wabs*powerlaw",
            stat="chi2gehrels",
            set_params=["1=0.0119,frozen"],
            errors=errors,
            flux_bands=(),
        )
        best = min(best, time.perf_counter() - t0)
    return best, result


def sherpa_time(repeat: int, *, data: Path = DATA) -> tuple[float, dict[str, Any]] | None:
    """Best wall time (s) of ``repeat`` Sherpa fits from the default start, or None without Sherpa.

    Returns the time and ``{"statistic", "dof", "PhoIndex", "nH", "wabs", "version"}`` of the last fit.
    """
    if not sherpa_available():
        return None
    import sherpa

    best, info = float("inf"), {}
    for _ in range(repeat):
        ui, comps = sherpa_load(data)
        with _quiet_sherpa():
            t0 = time.perf_counter()
            ui.fit()
            best = min(best, time.perf_counter() - t0)
        res = ui.get_fit_results()
        index = comps["pl"].PhoIndex.val if comps["wabs"] == "xspec" else comps["pl"].gamma.val
        info = {
            "statistic": float(res.statval),
            "dof": int(res.dof),
            "PhoIndex": float(index),
            "nH": float(comps["abs1"].nH.val),
            "wabs": comps["wabs"],
            "version": sherpa.__version__,
        }
    with _quiet_sherpa():
        from sherpa.astro import ui as session

        session.clean()  # leave an empty session for whoever runs next
    return best, info


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/run.py``: built-in fit time, and the built-in/Sherpa time ratio.

    Parameters
    ----------
    quick : bool
        Best of 2 instead of best of 5.
    """
    repeat = 2 if quick else 5
    name_t = "fit time, built-in engine (pn 2-10 keV, wabs*wabs*powerlaw, chi2gehrels)"
    name_r = "fit time ratio built-in/Sherpa (same spectrum and model)"
    if not (DATA / PHA).exists():
        note = f"{DATA / PHA} not found (needs ../shared/data)"
        return [
            {
                "name": name_t,
                "value": None,
                "unit": "s",
                "target": None,
                "ratio": None,
                "ok": None,
                "note": note,
            },
            {
                "name": name_r,
                "value": None,
                "unit": "x",
                "target": f"<= {TARGET}",
                "ratio": None,
                "ok": None,
                "note": note,
            },
        ]
    t_cov, res = builtin_time(repeat, errors="covariance")
    t_none, _ = builtin_time(repeat, errors=None)
    ours = (
        f"statistic {res.statistic:.2f}/{res.dof} dof, PhoIndex {res.parameter('PhoIndex')['value']:.3f}; "
        f"best of {repeat}; without errors {t_none:.3f} s"
    )
    rows = [
        {
            "name": name_t,
            "value": t_cov,
            "unit": "s",
            "target": None,
            "ratio": None,
            "ok": None,
            "note": f"with covariance errors; {ours}",
        }
    ]
    got = sherpa_time(repeat)
    if got is None:
        rows.append(
            {
                "name": name_r,
                "value": None,
                "unit": "x",
                "target": f"<= {TARGET}",
                "ratio": None,
                "ok": None,
                "note": "sherpa not installed: run .ci/install-sherpa.sh .venv/bin/python (builds from source)",
            }
        )
        return rows
    t_sherpa, info = got
    ratio = t_cov / t_sherpa
    note = (
        f"built-in {t_cov:.3f} s vs Sherpa {info['version']} levmar {t_sherpa:.3f} s "
        f"(statistic {info['statistic']:.2f}/{info['dof']}, PhoIndex {info['PhoIndex']:.3f}; wabs via "
        f"{'Sherpa XSPEC module' if info['wabs'] == 'xspec' else 'the same wabs function in both'}); "
        f"without errors ratio {t_none / t_sherpa:.2f}"
    )
    rows.append(
        {
            "name": name_r,
            "value": ratio,
            "unit": "x",
            "target": f"<= {TARGET}",
            "ratio": ratio,
            "ok": bool(ratio <= TARGET),
            "note": note,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the fit times and the ratio."""
    from rows import quick_main

    return quick_main(run, "Fit time of the built-in engine vs Sherpa.", "best of 2 instead of 5", argv)


if __name__ == "__main__":
    raise SystemExit(main())
