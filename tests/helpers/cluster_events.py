"""Small pn/MOS event lists of a beta-model cluster on a flat background (bad-input and fault tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

RA, DEC = 149.5922925, -11.0597


PIX_DEG = 0.05 / 3600.0


CENTRE = 25921.0


T0 = 3.0e8


def event_hdus(
    n: int = 4000,
    *,
    instrume: str = "EPN",
    exposure_s: float = 20_000.0,
    seed: int = 1,
    gti: list[tuple[float, float]] | None = None,
    flare: bool = False,
) -> list:
    """HDUs of a small pn/MOS event list: a beta-model cluster on a flat background, STDGTInn per CCD."""
    rng = np.random.default_rng(seed)
    n_src = n // 2
    rc = 1.0 * 60 / 0.05
    r = np.concatenate(
        [rc * np.sqrt((1 - rng.random(n_src)) ** -1.0 - 1), 12 * 60 / 0.05 * np.sqrt(rng.random(n - n_src))]
    )
    r = np.minimum(r, 14 * 60 / 0.05)
    ang = rng.uniform(0, 2 * np.pi, n)
    x = (CENTRE + r * np.cos(ang)).astype(np.int32)
    y = (CENTRE + r * np.sin(ang)).astype(np.int32)
    pi = np.concatenate([rng.exponential(2000.0, n_src) + 300, rng.uniform(300, 14000, n - n_src)]).astype(
        np.int16
    )
    time = np.sort(rng.uniform(T0, T0 + exposure_s, n))
    if flare:  # every 100 s bin is flared at a steady high rate: nothing quiescent remains
        hi = rng.uniform(T0, T0 + exposure_s, 60 * int(exposure_s / 100))
        time = np.concatenate([time, hi])
        extra = hi.size
        x = np.concatenate([x, rng.integers(10000, 40000, extra).astype(np.int32)])
        y = np.concatenate([y, rng.integers(10000, 40000, extra).astype(np.int32)])
        pi = np.concatenate([pi, rng.uniform(10000, 12000, extra).astype(np.int16)])
        order = np.argsort(time, kind="stable")
        time, x, y, pi = time[order], x[order], y[order], pi[order]
        n = time.size
    ccd = (((x > CENTRE).astype(int) * 2 + (y > CENTRE).astype(int)) * 3 + 1).astype(np.uint8)
    cols = [
        fits.Column(name="TIME", format="D", unit="s", array=time),
        fits.Column(name="X", format="J", array=x),
        fits.Column(name="Y", format="J", array=y),
        fits.Column(name="PI", format="I", unit="eV", array=pi),
        fits.Column(name="PATTERN", format="B", array=np.zeros(n, np.uint8)),
        fits.Column(name="FLAG", format="J", array=np.zeros(n, np.int32)),
        fits.Column(name="CCDNR", format="B", array=ccd),
    ]
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = ev.header
    h["TELESCOP"], h["INSTRUME"], h["OBS_ID"] = "XMM", instrume, "0000000001"
    h["TSTART"], h["TSTOP"], h["ONTIME"], h["LIVETIME"] = T0, T0 + exposure_s, exposure_s, exposure_s
    h["RA_OBJ"], h["DEC_OBJ"], h["RA_PNT"], h["DEC_PNT"] = RA, DEC, RA, DEC
    h["MJDREF"], h["DATE-OBS"] = 50814.0, "2009-01-01T00:00:00"
    for key, (c, v, d, t) in {
        "X": (CENTRE, RA, -PIX_DEG, "RA---TAN"),
        "Y": (CENTRE, DEC, PIX_DEG, "DEC--TAN"),
    }.items():
        h[f"REF{key}CRPX"], h[f"REF{key}CRVL"], h[f"REF{key}CDLT"], h[f"REF{key}CTYP"] = c, v, d, t
        h[f"REF{key}LMIN"], h[f"REF{key}LMAX"] = 1, 51840
    idx = {"X": 2, "Y": 3}
    for key, i in idx.items():
        h[f"TCRPX{i}"], h[f"TCRVL{i}"] = CENTRE, RA if key == "X" else DEC
        h[f"TCDLT{i}"], h[f"TCTYP{i}"] = (-PIX_DEG, "RA---TAN") if key == "X" else (PIX_DEG, "DEC--TAN")
    gti = gti if gti is not None else [(T0, T0 + exposure_s)]
    hdus = [fits.PrimaryHDU(), ev]
    for c in sorted(set(ccd.tolist())):
        hdus.append(
            fits.BinTableHDU.from_columns(
                [
                    fits.Column(name="START", format="D", array=[g[0] for g in gti]),
                    fits.Column(name="STOP", format="D", array=[g[1] for g in gti]),
                ],
                name=f"STDGTI{c:02d}",
            )
        )
    return hdus


def write_hdus(hdus: list, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def good_events(path: Path, **kw) -> Path:
    return write_hdus(event_hdus(**kw), path)
