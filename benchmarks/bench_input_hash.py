"""Cost of hashing a step's inputs by content: a 5e6-event pn list, sha256/blake2b vs size+mtime vs the read.

The inputs hash of a step covers the files the user provides by content (sha256), cached in the
step record by (size, mtime_ns, inode, ctime_ns), so that a resume only ``stat``s them. This measures,
on one 5e6-event list with the columns of a pn EVLI file (~50 bytes per event):

* ``stat`` (the old size+mtime signature, and the cost of a resume with a cached digest),
* sha256 (used) and blake2b-256 of the whole file (page cache warm: the step itself reads it right after),
* ``compute_inputs_hash`` of the filter step cold (hashes) and with the record's cache (stats),
* the filter step's own read of the list (``read_events`` of every column), for scale.

Run: ``python benchmarks/bench_input_hash.py [--events 5e6]`` (prints a Markdown table; wall seconds,
best of 3; say the load average beside the numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T0 = 3.0e8


def make_pn_list(path: Path, n: int, seed: int = 0) -> Path:
    """A pn event list with the EVLI columns (TIME, RAWX/Y, DETX/Y, X/Y, PHA, PI, FLAG, PATTERN, CCDNR...)."""
    rng = np.random.default_rng(seed)
    cols = [
        fits.Column("TIME", "D", array=np.sort(rng.uniform(T0, T0 + 50_000.0, n))),
        fits.Column("RAWX", "I", array=rng.integers(0, 64, n, dtype=np.int16)),
        fits.Column("RAWY", "I", array=rng.integers(0, 200, n, dtype=np.int16)),
        fits.Column("DETX", "I", array=rng.integers(-20000, 20000, n, dtype=np.int16)),
        fits.Column("DETY", "I", array=rng.integers(-20000, 20000, n, dtype=np.int16)),
        fits.Column("X", "J", array=rng.integers(20000, 32000, n, dtype=np.int32)),
        fits.Column("Y", "J", array=rng.integers(20000, 32000, n, dtype=np.int32)),
        fits.Column("PHA", "I", array=rng.integers(0, 4096, n, dtype=np.int16)),
        fits.Column("PI", "I", array=rng.integers(100, 20000, n, dtype=np.int16)),
        fits.Column("FLAG", "J", array=np.where(rng.random(n) < 0.05, 0x20000, 0).astype(np.int32)),
        fits.Column("PATTERN", "B", array=rng.integers(0, 13, n, dtype=np.uint8)),
        fits.Column("PAT_ID", "I", array=rng.integers(0, 100, n, dtype=np.int16)),
        fits.Column("PAT_SEQ", "B", array=rng.integers(0, 4, n, dtype=np.uint8)),
        fits.Column("OFFSETX", "B", array=rng.integers(0, 4, n, dtype=np.uint8)),
        fits.Column("OFFSETY", "B", array=rng.integers(0, 4, n, dtype=np.uint8)),
        fits.Column("CCDNR", "B", array=rng.integers(1, 13, n, dtype=np.uint8)),
        fits.Column("TLAG", "E", array=rng.random(n).astype(np.float32)),
    ]
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    ev.header["INSTRUME"] = "EPN"
    gti = fits.BinTableHDU.from_columns(
        [fits.Column("START", "D", array=[T0]), fits.Column("STOP", "D", array=[T0 + 50_000.0])],
        name="STDGTI",
    )
    fits.HDUList([fits.PrimaryHDU(), ev, gti]).writeto(path)
    return path


def _blake2b(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int) -> list[tuple[str, float, str]]:
    from survey import steps
    from xmmcore.events import read_events
    from xmmcore.observation import Observation

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data" / "0910000000"
        data.mkdir(parents=True)
        path = make_pn_list(data / "pn_evts.fits", n)
        mb = path.stat().st_size / 1e6
        time.sleep(2.1)  # older than the racy window, as a downloaded list is
        rows.append(("file size", mb, f"MB ({n:.0e} events, {path.stat().st_size / n:.0f} B/event)"))
        rows.append(("stat (size+mtime signature)", _best(lambda: os.stat(path)), "s"))
        t_sha = _best(lambda: steps.file_digest(path))
        rows.append(("sha256 of the file (steps.file_digest, used)", t_sha, f"s ({mb / t_sha:.0f} MB/s)"))
        t_b2 = _best(lambda: _blake2b(path))
        rows.append(("blake2b-256 of the file (for comparison)", t_b2, f"s ({mb / t_b2:.0f} MB/s)"))
        obs = Observation(obsid="0910000000", root=data, event_files={"pn": path})
        out = Path(tmp) / "results" / "0910000000"

        def cold() -> list:
            steps._DIGEST_CACHE.clear()
            return steps.compute_inputs_hash("filter", obs, out, {}, [path])[1]

        t_cold = _best(cold)
        inputs = cold()
        steps._DIGEST_CACHE.clear()
        t_warm = _best(lambda: steps.compute_inputs_hash("filter", obs, out, {}, [path], cache=inputs))
        rows.append(("inputs hash, first run (hashes the list)", t_cold, "s"))
        rows.append(("inputs hash, resume (digest from the record)", t_warm, "s"))
        t_read = _best(lambda: read_events(path), repeats=2)
        rows.append(("filter step's read of the list (read_events, all columns)", t_read, "s"))
        rows.append(("first-run hash / read of the list", t_cold / t_read, "x"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=float, default=5e6)
    args = ap.parse_args(argv)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores")
    print("| measure | value | unit |\n|---|---:|---|")
    for name, value, unit in measure(int(args.events)):
        print(f"| {name} | {value:.4g} | {unit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
