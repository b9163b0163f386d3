"""Fit time of the built-in engine, and its ratio to Sherpa on the same spectrum and model when Sherpa is installed.

Spectrum: Sherpa's XMM pn regression (``../shared/data/xmm/sherpa_pn``), 2-10 keV, wabs*wabs*powerlaw, chi2gehrels.
Run: ``.venv/bin/python benchmarks/bench_fit.py [--repeat N]``. Target ratio builtin/Sherpa <= 1.0.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xmm" / "sherpa_pn"


def builtin_time(repeat: int) -> float:
    from xmmcore.fitting import SpectrumDataset, fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = SpectrumDataset.from_pha(DATA / "pn_pi_src_bin10.ds", rmf=DATA / "epn_ff20_dY9.rmf").notice(2, 10)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fit([ds], "wabs*wabs*powerlaw", stat="chi2gehrels", set_params=["1=0.0119,frozen"], errors=None,
            flux_bands=())
        best = min(best, time.perf_counter() - t0)
    return best


def sherpa_time(repeat: int) -> float | None:
    try:
        from sherpa.astro import ui
    except ImportError:
        return None
    best = float("inf")
    for _ in range(repeat):
        ui.clean()
        ui.load_pha(str(DATA / "pn_pi_src_bin10.ds"))
        ui.load_rmf(str(DATA / "epn_ff20_dY9.rmf"))
        ui.notice(2, 10)
        ui.set_stat("chi2gehrels")
        ui.set_source(ui.xswabs.gal * ui.xswabs.abs1 * ui.xspowerlaw.p1)
        ui.gal.nH = 0.0119
        ui.freeze(ui.gal.nH)
        t0 = time.perf_counter()
        ui.fit()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    t_builtin = builtin_time(args.repeat)
    print(f"builtin fit: {t_builtin:.3f} s (best of {args.repeat})")
    t_sherpa = sherpa_time(args.repeat)
    if t_sherpa is None:
        print("sherpa not installed: no ratio (pip install sherpa needs bison, flex, libfftw3-dev)")
    else:
        print(f"sherpa fit:  {t_sherpa:.3f} s\nratio builtin/sherpa = {t_builtin / t_sherpa:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
