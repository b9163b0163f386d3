"""Cheap but real step functions and tiny event lists for the orchestration tests (no tests here).

The steps read and write real FITS/JSON files: ``filter`` screens PI with the configured limits,
``regions`` takes the centroid of the cleaned events, ``spectra`` bins PI into a spectrum inside
the source circle, ``fit`` computes the mean energy and the count. Target metadata (``meta.json``
beside the events) can ask a step to take time (``work_s``), fail (``fail``), raise a
``TransientError`` a few times (``transient``), kill its own worker process once (``kill_once``) or
block in a read of a FIFO (``block_read``: ``{"step", "path"}``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from xmmcore.errors import InputDataError, ToolError, TransientError
from xmmcore.fsutil import atomic_write_fits, atomic_write_json

STEPS = ("filter", "regions", "spectra", "fit")
__all__ = ["STEPS", "make_survey", "run_step", "step_inputs", "write_events"]


def write_events(path: Path, *, n: int, seed: int, centre=(25000.0, 25000.0), sigma=400.0) -> Path:
    """A tiny XMM-like EVENTS table (TIME, X, Y, PI, PATTERN, FLAG) with a Gaussian 'cluster'."""
    rng = np.random.default_rng(seed)
    cols = [
        fits.Column("TIME", "D", unit="s", array=np.sort(rng.uniform(0, 1e4, n))),
        fits.Column("X", "J", array=rng.normal(centre[0], sigma, n).astype(np.int32)),
        fits.Column("Y", "J", array=rng.normal(centre[1], sigma, n).astype(np.int32)),
        fits.Column("PI", "J", unit="eV", array=rng.integers(100, 12000, n).astype(np.int32)),
        fits.Column("PATTERN", "I", array=rng.integers(0, 13, n).astype(np.int16)),
        fits.Column("FLAG", "J", array=np.zeros(n, np.int32)),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    hdu.header["INSTRUME"] = "EPN"
    hdu.header["EXPOSURE"] = 1e4
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), path)


def make_survey(
    data_dir: Path, n: int, *, n_events: int = 300, meta: dict[str, dict] | None = None
) -> list[str]:
    """``data_dir/<obsid>/pn_evts.fits`` for ``n`` ObsIDs (+ ``meta.json`` from ``meta``)."""
    obsids = [f"{910000000 + i:010d}" for i in range(n)]
    for i, obsid in enumerate(obsids):
        write_events(data_dir / obsid / "pn_evts.fits", n=n_events, seed=i)
        if meta and obsid in meta:
            atomic_write_json(data_dir / obsid / "meta.json", meta[obsid])
    return obsids


def _behave(step: str, obs: Any, outdir: Path) -> None:
    meta = obs.meta
    work = float(meta.get("work_s", 0.0))
    if work:
        # busy work, not sleep: the benchmark measures CPU scheduling
        t_end = time.perf_counter() + work
        x = 0.0
        while time.perf_counter() < t_end:
            x += float(np.sum(np.sqrt(np.arange(2000.0))))
    if meta.get("kill_once") == step:
        marker = outdir / f".killed-{step}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    transient = meta.get("transient") or {}
    if transient.get("step") == step:
        counter = outdir / f".transient-{step}"
        count = int(counter.read_text()) if counter.exists() else 0
        counter.parent.mkdir(parents=True, exist_ok=True)
        counter.write_text(str(count + 1))
        if count < int(transient["times"]):
            raise TransientError(f"simulated NFS hiccup #{count + 1}")
    block = meta.get("block_read") or {}
    if block.get("step") == step:
        # a read that never returns (a FIFO nobody writes: as a stalled NFS mount looks to the reader)
        with open(block["path"], "rb") as fh:
            fh.read()
    fail = meta.get("fail") or {}
    if fail.get("step") == step:
        cls = {"InputDataError": InputDataError, "ToolError": ToolError}[fail["kind"]]
        raise cls(f"simulated {fail['kind']} in {step}")


def _filter(obs, outdir: Path, cfg: dict, log) -> dict:
    src = obs.event_files["pn"]
    try:
        with fits.open(src) as hdul:
            ev = hdul["EVENTS"].data
            pi, x, y = np.array(ev["PI"]), np.array(ev["X"]), np.array(ev["Y"])
    except (OSError, KeyError, TypeError) as exc:
        raise InputDataError(f"cannot read EVENTS ({exc})", src) from exc
    f = cfg["filter"]["pn"]
    keep = (pi >= f["pi_min"]) & (pi <= f["pi_max"])
    cols = [
        fits.Column("X", "J", array=x[keep]),
        fits.Column("Y", "J", array=y[keep]),
        fits.Column("PI", "J", array=pi[keep]),
    ]
    out = outdir / "events" / "pn_clean.fits"
    atomic_write_fits(
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="EVENTS")]), out
    )
    log.info("kept %d of %d events", int(keep.sum()), pi.size)
    return {"n_in": int(pi.size), "n_clean": int(keep.sum()), "outputs": [str(out)]}


def _regions(obs, outdir: Path, cfg: dict, log) -> dict:
    with fits.open(outdir / "events" / "pn_clean.fits") as hdul:
        x, y = np.array(hdul[1].data["X"], float), np.array(hdul[1].data["Y"], float)
    r = cfg["regions"]["radius"]["arcmin"] * 60 / 0.05  # sky pixels of 0.05 arcsec
    reg = {"centre_x": float(np.median(x)), "centre_y": float(np.median(y)), "r_src_phys": r}
    atomic_write_json(outdir / "regions" / "regions.json", reg)
    return reg


def _spectra(obs, outdir: Path, cfg: dict, log) -> dict:
    reg = json.loads((outdir / "regions" / "regions.json").read_text())
    with fits.open(outdir / "events" / "pn_clean.fits") as hdul:
        d = hdul[1].data
        x, y, pi = np.array(d["X"], float), np.array(d["Y"], float), np.array(d["PI"])
    inside = np.hypot(x - reg["centre_x"], y - reg["centre_y"]) < reg["r_src_phys"]
    counts, edges = np.histogram(pi[inside], bins=np.arange(0, 12001, 500))
    atomic_write_json(
        outdir / "spectra" / "pn_src.json", {"counts": counts.tolist(), "edges_ev": edges.tolist()}
    )
    return {"counts": int(counts.sum())}


def _fit(obs, outdir: Path, cfg: dict, log) -> dict:
    spec = json.loads((outdir / "spectra" / "pn_src.json").read_text())
    counts, edges = np.array(spec["counts"]), np.array(spec["edges_ev"])
    mid = 0.5 * (edges[1:] + edges[:-1]) / 1000.0
    mean = float(np.sum(counts * mid) / max(counts.sum(), 1))
    result = {
        "obsid": obs.obsid,
        "mean_kev": mean,
        "counts": int(counts.sum()),
        "z": obs.meta.get("z"),
        "stat": cfg["fit"]["stat"],
    }
    atomic_write_json(outdir / "fits" / "fit.json", result)
    return result


_FUNCS = {"filter": _filter, "regions": _regions, "spectra": _spectra, "fit": _fit}


def run_step(step: str, obs, outdir, cfg: dict, *, log) -> dict:
    outdir = Path(outdir)
    _behave(step, obs, outdir)
    return _FUNCS[step](obs, outdir, cfg, log)


def step_inputs(step: str, obs, outdir) -> list[Path]:
    outdir = Path(outdir)
    return {
        "filter": sorted(obs.event_files.values()),
        "regions": [outdir / "events" / "pn_clean.fits"],
        "spectra": [outdir / "events" / "pn_clean.fits", outdir / "regions" / "regions.json"],
        "fit": [outdir / "spectra" / "pn_src.json"],
    }[step]
