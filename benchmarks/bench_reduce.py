"""Reduction throughput: 5 million pn events screened, GTI-filtered and binned into a PI spectrum.

Compares, in the same run and on the same arrays, the end-to-end path of the Python backend
(``xmmcore.events.stream_filter_bin`` over ``iter_event_chunks`` of a FITS event list on disk,
i.e. including FITS reading and byte-swapping) with a plain numpy pass over in-memory native
arrays (boolean mask + ``np.bincount``).  Target: ratio (ours / plain, in events per second) >= 0.5.

Run: ``python benchmarks/bench_reduce.py`` (or through ``benchmarks/run.py``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmmcore import events as E
from xmmcore import gti as G

N_EVENTS = 5_000_000
TARGET = 0.5
T0 = 3.0e8


def _make_list(path: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "TIME": np.sort(rng.uniform(T0, T0 + 50_000.0, n)),
        "X": rng.integers(20000, 32000, n, dtype=np.int32),
        "Y": rng.integers(20000, 32000, n, dtype=np.int32),
        "PI": rng.integers(100, 20000, n, dtype=np.int16),
        "PATTERN": rng.integers(0, 13, n, dtype=np.uint8),
        "FLAG": np.where(rng.random(n) < 0.05, 0x20000, 0).astype(np.int32),
        "CCDNR": rng.integers(1, 13, n, dtype=np.uint8),
    }
    fmt = {"TIME": "D", "X": "J", "Y": "J", "PI": "I", "PATTERN": "B", "FLAG": "J", "CCDNR": "B"}
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=fmt[k], array=v) for k, v in cols.items()], name="EVENTS"
    )
    hdu.header["INSTRUME"] = "EPN"
    gti = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="START", format="D", array=[T0]),
            fits.Column(name="STOP", format="D", array=[T0 + 50_000.0]),
        ],
        name="STDGTI",
    )
    fits.HDUList([fits.PrimaryHDU(), hdu, gti]).writeto(path)
    return cols


def measure(n: int = N_EVENTS, repeats: int = 3) -> dict[str, float]:
    gti = np.array([[T0 + 1000.0 * k, T0 + 1000.0 * k + 800.0] for k in range(50)])  # 50 GTIs
    sel = {"pattern_max": 4, "flag_mask": 0xFA000C, "pi_min": 200, "pi_max": 15000}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pn_5e6.fits"
        cols = _make_list(path, n)
        native = {k: np.ascontiguousarray(v) for k, v in cols.items()}

        def plain() -> np.ndarray:
            c = native
            m = (c["PATTERN"] <= 4) & ((c["FLAG"] & 0xFA000C) == 0) & (c["PI"] >= 200) & (c["PI"] <= 15000)
            m &= G.mask_in_gti(c["TIME"], gti)
            return np.bincount(c["PI"][m] // 5, minlength=4096)[:4096]

        def ours() -> np.ndarray:
            hist, _, _ = E.stream_filter_bin(E.iter_event_chunks(path, chunk_rows=1_000_000), gti=gti, **sel)
            return hist

        def ours_in_memory() -> np.ndarray:
            from xmmcore.spectra import pi_histogram

            evl = E.read_events(path, columns=("TIME", "PI", "PATTERN", "FLAG", "CCDNR"))
            keep = E.screen_mask(evl.columns, **sel) & G.mask_in_gti(evl["TIME"], gti)
            return pi_histogram(evl["PI"][keep], "pn")

        ref, got, got2 = plain(), ours(), ours_in_memory()
        if not (np.array_equal(ref, got) and np.array_equal(ref, got2)):
            raise AssertionError("xmmcore histogram differs from the plain numpy one")
        t_plain = min(_time(plain) for _ in range(repeats))
        t_ours = min(_time(ours) for _ in range(repeats))
        t_mem = min(_time(ours_in_memory) for _ in range(repeats))
    return {
        "n": n,
        "plain_s": t_plain,
        "ours_s": t_ours,
        "plain_rate": n / t_plain,
        "ours_rate": n / t_ours,
        "ratio": t_plain / t_ours,
        "kept": int(ref.sum()),
        "mem_s": t_mem,
        "mem_ratio": t_plain / t_mem,
    }


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    """Rows for ``benchmarks/run.py``."""
    m = measure(repeats=2 if quick else 3)
    return [
        {
            "name": "reduce: 5e6 pn events filtered+binned (stream from FITS) vs plain numpy in memory",
            "value": round(m["ours_rate"] / 1e6, 2),
            "unit": "Mevents/s",
            "target": f">= {TARGET} x numpy",
            "ratio": round(m["ratio"], 3),
            "ok": m["ratio"] >= TARGET,
            "note": f"plain numpy {m['plain_rate'] / 1e6:.1f} Mevents/s; {m['kept']} events kept",
        },
        {
            "name": "reduce: read_events (whole list) + screen + GTI + PI histogram vs plain numpy",
            "value": round(m["n"] / m["mem_s"] / 1e6, 2),
            "unit": "Mevents/s",
            "target": f">= {TARGET} x numpy",
            "ratio": round(m["mem_ratio"], 3),
            "ok": m["mem_ratio"] >= TARGET,
            "note": "in-memory path used by the backend (includes FITS read, byte swap, time-order check)",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    m = measure()
    print(f"events: {m['n']:,}  kept: {m['kept']:,}")
    print(
        f"plain numpy (in memory, mask + bincount): {m['plain_s']:.3f} s  ({m['plain_rate'] / 1e6:.1f} Mevents/s)"
    )
    print(
        f"xmmcore stream_filter_bin (FITS on disk):  {m['ours_s']:.3f} s  ({m['ours_rate'] / 1e6:.1f} Mevents/s)"
    )
    print(f"xmmcore read_events+screen+GTI+histogram: {m['mem_s']:.3f} s  (ratio {m['mem_ratio']:.2f})")
    print(f"ratio ours/plain (events per second): {m['ratio']:.2f}  (target >= {TARGET})")
    return 0 if m["ratio"] >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
