"""Peak memory of one worker reducing a 5-million-event pn ObsID (filter -> regions -> spectra).

A pn event list with exactly ``n_events`` events is simulated with ``xmmcore.simulate.simulate_events``
(cluster, point sources, sky and particle backgrounds, soft-proton flares); when the simulator is not
importable, :func:`synthesise_pn_events` writes a simpler one (beta-model cluster on a flat background,
a flare in the last tenth of the exposure, PPS-style header and per-CCD ``STDGTInn`` tables). A fresh *spawned* process then runs the per-ObsID steps on it exactly as a
survey worker does (``xmmcore.pipeline.run_step`` with the Python backend and the default configuration);
when the pipeline modules are not all there yet, it falls back to the core of the filter+spectrum step
(``read_events`` -> ``screen`` -> high-energy light curve -> PI histogram). The child reports its own
peak resident set (``VmHWM``, i.e. ``ru_maxrss`` of its own address space); a second child that only imports the same modules gives the baseline, so both the total peak
and the part that scales with the events are printed.

Run ``python benchmarks/bench_memory.py [--events 5e6]``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TARGET_PEAK_MB", "measure_peak_memory", "run", "synthesise_pn_events"]

#: Peak RSS a worker may use for a 5e6-event ObsID: half the default ``cluster.memory_limit`` (4 GiB),
#: so that two workers fit on an 8 GB laptop with room for the OS.
TARGET_PEAK_MB = 2048.0

_PN_PIX_DEG = 0.05 / 3600.0  # sky pixel of the X/Y columns [deg]
_CENTRE_PIX = 25921.0
_RA, _DEC = 149.5922925, -11.0597  # A907, so that the header looks like a real pointing


def synthesise_pn_events(
    path: str | Path, n_events: int, *, seed: int = 5, exposure_s: float = 40_000.0
) -> Path:
    """Write a PPS-like pn event list of ``n_events`` events and return its path.

    Parameters
    ----------
    path : path-like
        Output FITS file.
    n_events : int
        Number of rows of the EVENTS table.
    seed : int
        Random seed.
    exposure_s : float
        Length of the observation [s].
    """
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    n_src = int(0.4 * n_events)
    n_bkg = n_events - n_src
    # Beta model (beta = 2/3, r_c = 1.5 arcmin) sampled by inverse CDF of the projected profile.
    rc_pix = 1.5 * 60.0 / 0.05
    u = rng.random(n_src)
    r_src = rc_pix * np.sqrt((1.0 - u) ** (-1.0) - 1.0)
    r_src = np.minimum(r_src, 14.0 * 60.0 / 0.05)
    phi = rng.uniform(0, 2 * np.pi, n_src)
    r_bkg = 15.0 * 60.0 / 0.05 * np.sqrt(rng.random(n_bkg))
    phi_b = rng.uniform(0, 2 * np.pi, n_bkg)
    r = np.concatenate([r_src, r_bkg])
    ang = np.concatenate([phi, phi_b])
    x = (_CENTRE_PIX + r * np.cos(ang)).astype(np.int32)
    y = (_CENTRE_PIX + r * np.sin(ang)).astype(np.int32)
    # Source: thermal-like exponential in energy; background: flat to 15 keV. PI in eV.
    pi_src = np.clip(rng.exponential(2500.0, n_src) + 150.0, 0, 20_000)
    pi_bkg = rng.uniform(150.0, 15_000.0, n_bkg)
    pi = np.concatenate([pi_src, pi_bkg]).astype(np.int16)
    t0 = 3.0e8
    # 8 % of events in a flare in the last 10 % of the observation.
    n_flare = int(0.08 * n_events)
    times = np.concatenate(
        [
            rng.uniform(t0, t0 + exposure_s, n_events - n_flare),
            rng.uniform(t0 + 0.9 * exposure_s, t0 + exposure_s, n_flare),
        ]
    )
    order = rng.permutation(n_events)
    x, y, pi = x[order], y[order], pi[order]
    times.sort()
    quadrant = (x > _CENTRE_PIX).astype(np.uint8) * 2 + (y > _CENTRE_PIX).astype(np.uint8)
    ccdnr = (quadrant * 3 + rng.integers(1, 4, n_events)).astype(np.uint8)
    pattern = rng.choice(
        np.array([0, 1, 2, 3, 4, 5, 8, 12], dtype=np.uint8),
        n_events,
        p=[0.62, 0.12, 0.12, 0.05, 0.05, 0.02, 0.01, 0.01],
    )
    flag = np.where(rng.random(n_events) < 0.02, 0x10000, 0).astype(np.int32)
    cols = [
        fits.Column(name="TIME", format="D", unit="s", array=times),
        fits.Column(name="RAWX", format="I", array=rng.integers(1, 65, n_events).astype(np.int16)),
        fits.Column(name="RAWY", format="I", array=rng.integers(1, 201, n_events).astype(np.int16)),
        fits.Column(name="DETX", format="I", array=(x - _CENTRE_PIX).astype(np.int16) // 2),
        fits.Column(name="DETY", format="I", array=(y - _CENTRE_PIX).astype(np.int16) // 2),
        fits.Column(name="X", format="J", unit="0.05 arcsec", array=x),
        fits.Column(name="Y", format="J", unit="0.05 arcsec", array=y),
        fits.Column(name="PHA", format="I", array=(pi // 5).astype(np.int16)),
        fits.Column(name="PI", format="I", unit="eV", array=pi),
        fits.Column(name="FLAG", format="J", array=flag),
        fits.Column(name="PATTERN", format="B", array=pattern),
        fits.Column(name="CCDNR", format="B", array=ccdnr),
    ]
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = ev.header
    h["TELESCOP"], h["INSTRUME"], h["OBS_ID"] = "XMM", "EPN", "0999999901"
    h["OBJECT"], h["FILTER"], h["SUBMODE"] = "SYNTH_BENCH", "Thin1", "PrimeFullWindow"
    h["DATE-OBS"], h["MJDREF"], h["TIMESYS"] = "2009-07-05T00:00:00", 50814.0, "TT"
    h["TSTART"], h["TSTOP"] = t0, t0 + exposure_s
    h["ONTIME"], h["LIVETIME"] = exposure_s, 0.97 * exposure_s
    h["RA_OBJ"], h["DEC_OBJ"], h["RA_PNT"], h["DEC_PNT"], h["RA_NOM"], h["DEC_NOM"] = (_RA, _DEC) * 3
    h["XMMEA_EP"] = "(FLAG & 0xfa000c) == 0"
    ix, iy = 6, 7
    for idx, crval in ((ix, _RA), (iy, _DEC)):
        h[f"TCTYP{idx}"] = "RA---TAN" if idx == ix else "DEC--TAN"
        h[f"TCRPX{idx}"], h[f"TCRVL{idx}"] = _CENTRE_PIX, crval
        h[f"TCDLT{idx}"] = -_PN_PIX_DEG if idx == ix else _PN_PIX_DEG
        h[f"TLMIN{idx}"], h[f"TLMAX{idx}"] = 1, 51840
    for axis, prefix in (("X", "REFX"), ("Y", "REFY")):
        h[f"{prefix}CTYP"] = "RA---TAN" if axis == "X" else "DEC--TAN"
        h[f"{prefix}CRPX"], h[f"{prefix}CRVL"] = _CENTRE_PIX, _RA if axis == "X" else _DEC
        h[f"{prefix}CDLT"] = -_PN_PIX_DEG if axis == "X" else _PN_PIX_DEG
        h[f"{prefix}LMIN"], h[f"{prefix}LMAX"] = 1, 51840
    h["TLMIN9"], h["TLMAX9"] = 0, 20479
    hdus = [fits.PrimaryHDU(), ev]
    for ccd in range(1, 13):
        h[f"ONTIME{ccd:02d}"] = exposure_s
        h[f"LIVETI{ccd:02d}"] = 0.97 * exposure_s
        g = fits.BinTableHDU.from_columns(
            [
                fits.Column(name="START", format="D", unit="s", array=[t0]),
                fits.Column(name="STOP", format="D", unit="s", array=[t0 + exposure_s]),
            ],
            name=f"STDGTI{ccd:02d}",
        )
        g.header["CCDID"] = ccd
        hdus.append(g)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def _resolved_config() -> dict[str, Any]:
    try:
        from survey.config import load_config

        cfg = load_config()
        for attr in ("to_dict", "as_dict", "resolved"):
            if hasattr(cfg, attr):
                value = getattr(cfg, attr)
                return value() if callable(value) else value
        if isinstance(cfg, dict):
            return cfg
    except ImportError:
        pass
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "survey" / "defaults.yaml").read_text())


def _pipeline_available() -> bool:
    import importlib.util

    return all(
        importlib.util.find_spec(m) is not None
        for m in ("xmmcore.backends.python", "xmmcore.regions", "xmmcore.spectra")
    )


def _child(data_dir: str, results_dir: str, mode: str, queue: Any) -> None:
    """Run in a spawned process: do the work, then report this process's peak RSS."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"mode": mode}
    try:
        from xmmcore import events
        from xmmcore.observation import discover

        obs = discover(data_dir, "0999999901")
        if mode == "pipeline":
            from xmmcore.pipeline import run_step

            cfg = _resolved_config()
            cfg["cameras"] = ["pn"]
            log = logging.getLogger("bench_memory")
            for step in ("filter", "regions", "spectra"):
                run_step(step, obs, Path(results_dir) / obs.obsid, cfg, log=log)
        elif mode == "core":
            from xmmcore import gti as gtimod

            evl = events.read_events(obs.event_files["pn"])
            clean = events.screen(
                evl,
                pattern_max=4,
                flag_mask=events.flag_mask_for("pn", "xmmea", evl.header),
                pi_min=200,
                pi_max=15000,
            )
            hi = (evl["PI"] >= 10000) & (evl["PI"] <= 12000) & (evl["PATTERN"] == 0)
            edges = np.arange(evl.gti[0, 0], evl.gti[-1, 1] + 100.0, 100.0)
            rate = np.histogram(evl["TIME"][hi], edges)[0] / 100.0
            good = rate < np.median(rate) + 3 * np.sqrt(np.median(rate) * 100.0) / 100.0
            flare_gti = gtimod.from_bins(edges, good)
            clean = clean.with_gti(flare_gti)
            np.bincount((clean["PI"] // 5).astype(np.intp), minlength=4096)
            out["kept"] = len(clean)
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it in the table
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["wall_s"] = time.perf_counter() - t0
    out["maxrss_mb"] = _peak_rss_mb()
    queue.put(out)


def _peak_rss_mb() -> float:
    """This process's peak resident set [MB].

    ``VmHWM`` from ``/proc/self/status`` is per address space, so it does not include the parent's
    peak that Linux carries over in ``ru_maxrss`` across fork+exec; ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _spawn(data_dir: Path, results_dir: Path, mode: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(data_dir), str(results_dir), mode, queue))
    proc.start()
    result = queue.get(timeout=900)
    proc.join(60)
    return result


def measure_peak_memory(
    n_events: int = 5_000_000, *, workdir: str | Path | None = None, mode: str | None = None
) -> dict[str, Any]:
    """Synthesise an ObsID of ``n_events`` pn events and measure a worker's peak RSS reducing it.

    Returns
    -------
    dict
        ``n_events``, ``mode`` ("pipeline" or "core"), ``peak_mb`` (total RSS of the worker),
        ``baseline_mb`` (RSS after imports only), ``wall_s``, ``ok`` and ``error``.
    """
    mode = mode or ("pipeline" if _pipeline_available() else "core")
    with tempfile.TemporaryDirectory(prefix="xmm-bench-mem-", dir=workdir) as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        events = data / "0999999901" / "pn_evts.fits"
        try:
            from xmmcore.simulate import simulate_events

            simulate_events(events, n_events=n_events, seed=5, camera="pn", obsid="0999999901")
            source = "xmmcore.simulate"
        except ImportError:
            synthesise_pn_events(events, n_events)
            source = "synthesised"
        try:  # responses beside the events, as for a real ObsID, so the spectra step copies them
            from xmmcore.responses import write_responses

            write_responses(data / "0999999901", ("pn",))
        except ImportError:
            pass
        synth_s = time.perf_counter() - t0
        base = _spawn(data, Path(tmp) / "results_base", "baseline")
        work = _spawn(data, Path(tmp) / "results", mode)
        if mode == "pipeline" and not work.get("ok"):
            # Report the pipeline failure but still measure the core step so the table has a number.
            core = _spawn(data, Path(tmp) / "results_core", "core")
            core["pipeline_error"] = work.get("error")
            work = core
    return {
        "n_events": n_events,
        "mode": work["mode"],
        "peak_mb": work["maxrss_mb"],
        "source": source,
        "baseline_mb": base["maxrss_mb"],
        "wall_s": work["wall_s"],
        "synth_s": synth_s,
        "ok": bool(work.get("ok")),
        "error": work.get("error") or work.get("pipeline_error", ""),
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Benchmark rows for ``benchmarks/run.py``.

    ``quick`` does not change the size: the figure asked for is the 5-million-event ObsID, and it
    takes under a minute on 2 cores.
    """
    m = measure_peak_memory(5_000_000)
    per_m = (m["peak_mb"] - m["baseline_mb"]) / (m["n_events"] / 1e6)
    steps = "filter, regions, spectra" if m["mode"] == "pipeline" else "read, screen, flare GTI, PI histogram"
    note = (
        f"{m['source']} events; {m['mode']} steps ({steps}), {m['wall_s']:.0f} s; "
        f"baseline {m['baseline_mb']:.0f} MB after imports"
    )
    if m["error"]:
        note += f"; error: {m['error'][:120]}"
    return [
        {
            "name": "peak memory per worker, 5e6-event pn ObsID",
            "value": round(m["peak_mb"], 1),
            "unit": "MB",
            "target": f"<= {TARGET_PEAK_MB:.0f} MB",
            "ratio": round(m["peak_mb"] / TARGET_PEAK_MB, 3),
            "ok": m["ok"] and m["peak_mb"] <= TARGET_PEAK_MB,
            "note": note,
        },
        {
            "name": "memory per million events (above baseline)",
            "value": round(per_m, 1),
            "unit": "MB/Mevent",
            "target": "",
            "ratio": None,
            "ok": m["ok"],
            "note": "(peak - baseline) / 5",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=float, default=5e6, help="number of events (default 5e6)")
    parser.add_argument("--mode", choices=("pipeline", "core"), default=None)
    args = parser.parse_args(argv)
    m = measure_peak_memory(int(args.events), mode=args.mode)
    per_m = (m["peak_mb"] - m["baseline_mb"]) / (m["n_events"] / 1e6)
    print(
        f"events={m['n_events']} mode={m['mode']} peak_mb={m['peak_mb']:.1f} baseline_mb={m['baseline_mb']:.1f} "
        f"mb_per_million={per_m:.1f} wall_s={m['wall_s']:.1f} ok={m['ok']} {m['error']}"
    )
    return 0 if m["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
