"""Tiny XMM-like event lists built in code (big-endian columns, STDGTInn per CCD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

T0 = 2.0e8


def make_event_file(
    path: Path,
    *,
    n: int = 400,
    instrume: str = "EMOS1",
    seed: int = 1,
    times: np.ndarray | None = None,
    drop: tuple[str, ...] = (),
    gti: bool = True,
    ccds: tuple[int, ...] = (1, 2),
    span_s: float = 1000.0,
    xy: tuple[np.ndarray, np.ndarray] | None = None,
    pi: np.ndarray | None = None,
    extra_header: dict | None = None,
) -> Path:
    """Write an XMM-like event list (big-endian columns, STDGTInn per CCD) and return its path."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(T0, T0 + span_s, n)) if times is None else np.asarray(times, float)
    n = t.size
    x, y = xy if xy is not None else (rng.integers(24000, 28000, n), rng.integers(24000, 28000, n))
    cols = {
        "TIME": ("D", t),
        "X": ("J", np.asarray(x)),
        "Y": ("J", np.asarray(y)),
        "PI": ("I", rng.integers(100, 15000, n) if pi is None else np.asarray(pi)),
        "PATTERN": ("B", rng.integers(0, 16, n)),
        "FLAG": ("J", np.where(rng.random(n) < 0.1, 0x2000, 0)),
        "CCDNR": ("B", np.asarray(ccds)[rng.integers(0, len(ccds), n)]),
    }
    fcols = [fits.Column(name=k, format=f, array=a) for k, (f, a) in cols.items() if k not in drop]
    ev = fits.BinTableHDU.from_columns(fcols, name="EVENTS")
    h = ev.header
    h["INSTRUME"] = instrume
    h["TELESCOP"] = "XMM"
    h["OBS_ID"] = "0000000001"
    h["FILTER"] = "Thin1"
    for k, v in {
        "REFXCRPX": 25921,
        "REFYCRPX": 25921,
        "REFXCRVL": 149.6,
        "REFYCRVL": -11.08,
        "REFXCDLT": -1.38888888888889e-05,
        "REFYCDLT": 1.38888888888889e-05,
    }.items():
        h[k] = v
    for c in ccds:
        h[f"ONTIME{c:02d}"] = span_s
        h[f"LIVETI{c:02d}"] = 0.97 * span_s
    for k, v in (extra_header or {}).items():
        h[k] = v
    hdus = [fits.PrimaryHDU(), ev]
    if gti:
        for c in ccds:
            hdus.append(
                fits.BinTableHDU.from_columns(
                    [
                        fits.Column(name="START", format="D", array=[T0]),
                        fits.Column(name="STOP", format="D", array=[T0 + span_s]),
                    ],
                    name=f"STDGTI{c:02d}",
                )
            )
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path
