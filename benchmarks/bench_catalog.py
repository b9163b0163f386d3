"""Catalogue load + query time on 100,000 rows: the typed ``catalog.load`` against a plain pandas read.

Synthetic rows follow the catalogue schema (``catalog.schema.columns``: every column, realistic
value ranges), are conformed and written with ``catalog.io.write_parquet`` (the survey's writer). Then:

* typed: ``catalog.load(path)`` (units/dtypes/schema version restored), then a science query;
* plain: ``pandas.read_parquet(path)`` of the same file, then the same query.

The query is what a user runs first: the EPIC rows of converged fits of hot (kT > 5 keV), nearby
(z < 0.3) clusters with S/N > 10, sorted by 0.5-2 keV luminosity. Each timing is the median of
several repeats. The ratio typed/plain says what the schema costs.

Run ``python benchmarks/bench_catalog.py [--rows 100000]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["TARGET_QUERY_S", "TARGET_RATIO", "measure", "query", "run", "synthetic_catalogue"]

#: The typed load may cost at most this many times a plain ``pandas.read_parquet``.
TARGET_RATIO = 3.0
#: Load + query of 100,000 rows must be interactive.
TARGET_QUERY_S = 2.0


def synthetic_catalogue(n_rows: int, *, seed: int = 3) -> pd.DataFrame:
    """Return a conformed catalogue of ``n_rows`` synthetic rows (one ``epic`` + three camera rows per ObsID)."""
    from catalog.schema import columns, conform

    rng = np.random.default_rng(seed)
    cols = columns()
    n_obs = -(-n_rows // 4)
    obsids = np.array([f"{800000000 + i:010d}" for i in range(n_obs)], dtype=object)
    data: dict[str, Any] = {}
    data["obsid"] = np.repeat(obsids, 4)[:n_rows]
    data["camera"] = np.tile(np.array(["epic", "pn", "mos1", "mos2"], dtype=object), n_obs)[:n_rows]
    data["region"] = np.full(n_rows, "src", dtype=object)
    data["kind"] = np.full(n_rows, "obs", dtype=object)
    data["target"] = np.array([f"CL{int(o) % 100000:05d}" for o in data["obsid"]], dtype=object)
    data["obsids"] = data["obsid"]
    data["n_obs"] = np.ones(n_rows, dtype=np.int64)
    z = rng.uniform(0.02, 1.2, n_rows)
    kt = rng.lognormal(np.log(4.0), 0.5, n_rows)
    for col in cols:
        if col.name in data:
            continue
        if col.dtype == "float64":
            if col.name.endswith(("_err_lo", "_err_hi")):
                data[col.name] = rng.uniform(0.01, 0.3, n_rows)
            elif col.unit == "erg cm-2 s-1":
                data[col.name] = 10 ** rng.uniform(-14, -10, n_rows)
            elif col.unit == "erg s-1":
                data[col.name] = 10 ** rng.uniform(42, 45.5, n_rows)
            else:
                data[col.name] = rng.normal(1.0, 0.3, n_rows)
        elif col.dtype == "int64":
            data[col.name] = rng.integers(0, 500, n_rows)
        elif col.dtype == "bool":
            data[col.name] = rng.random(n_rows) < 0.9
        else:
            data[col.name] = np.full(n_rows, "", dtype=object)
    data["kT"], data["z_target"], data["z"] = kt, z, z
    data["snr"] = rng.lognormal(np.log(20.0), 0.8, n_rows)
    data["ra_deg"], data["dec_deg"] = (
        rng.uniform(0, 360, n_rows),
        np.degrees(np.arcsin(rng.uniform(-1, 1, n_rows))),
    )
    data["fit_model"] = np.full(n_rows, "wabs*(zbremss+zgauss)", dtype=object)
    data["fit_engine"] = np.full(n_rows, "builtin", dtype=object)
    data["fit_stat"] = np.full(n_rows, "cstat", dtype=object)
    data["status"] = np.where(rng.random(n_rows) < 0.95, "done", "failed").astype(object)
    data["config_hash"] = np.full(n_rows, "3f2a9c1e0b7d", dtype=object)
    data["schema_version"] = np.full(n_rows, "1.0", dtype=object)
    return conform(pd.DataFrame(data), cols)


def query(df: pd.DataFrame) -> pd.DataFrame:
    """Converged EPIC fits of hot nearby clusters with S/N > 10, brightest first."""
    sel = df[
        (df["camera"] == "epic")
        & df["converged"]
        & (df["kT"] > 5.0)
        & (df["z_target"] < 0.3)
        & (df["snr"] > 10.0)
    ]
    return sel.sort_values("lum_0p5_2p0", ascending=False)[
        ["obsid", "kT", "kT_err_lo", "kT_err_hi", "z_target", "lum_0p5_2p0"]
    ]


def _median_time(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(n_rows: int = 100_000, *, repeats: int = 5) -> dict[str, Any]:
    """Time typed and plain load+query of an ``n_rows`` catalogue; return timings [s] and row counts."""
    import catalog
    from catalog.io import write_parquet

    df = synthetic_catalogue(n_rows)
    with tempfile.TemporaryDirectory(prefix="xmm-bench-cat-") as tmp:
        path = Path(tmp) / "catalogue.parquet"
        t0 = time.perf_counter()
        write_parquet(df, path)
        write_s = time.perf_counter() - t0
        typed_s, typed = _median_time(lambda: query(catalog.load(path)), repeats)
        plain_s, plain = _median_time(lambda: query(pd.read_parquet(path)), repeats)
        size_mb = path.stat().st_size / 1e6
    if len(typed) != len(plain) or not np.allclose(typed["kT"].to_numpy(), plain["kT"].to_numpy()):
        raise AssertionError("typed and plain queries disagree")
    return {
        "rows": n_rows,
        "typed_s": typed_s,
        "plain_s": plain_s,
        "write_s": write_s,
        "selected": len(typed),
        "size_mb": size_mb,
        "n_columns": df.shape[1],
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Benchmark rows for ``benchmarks/run.py`` (``quick`` uses 3 repeats instead of 5)."""
    m = measure(100_000, repeats=3 if quick else 5)
    ratio = m["typed_s"] / m["plain_s"]
    note = (
        f"{m['rows']} rows x {m['n_columns']} cols, {m['size_mb']:.1f} MB parquet; plain pandas "
        f"{m['plain_s']:.3f} s; {m['selected']} rows selected"
    )
    return [
        {
            "name": "catalogue load+query, 100,000 rows (catalog.load)",
            "value": round(m["typed_s"], 3),
            "unit": "s",
            "target": f"<= {TARGET_QUERY_S:.0f} s",
            "ratio": round(m["typed_s"] / TARGET_QUERY_S, 3),
            "ok": m["typed_s"] <= TARGET_QUERY_S,
            "note": note,
        },
        {
            "name": "catalogue load+query time ratio vs plain pandas",
            "value": round(ratio, 2),
            "unit": "x",
            "target": f"<= {TARGET_RATIO:.0f}x",
            "ratio": round(ratio / TARGET_RATIO, 3),
            "ok": ratio <= TARGET_RATIO,
            "note": "typed load (dtypes, units, schema version) / pandas.read_parquet",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    m = measure(args.rows)
    print(
        f"rows={m['rows']} typed_s={m['typed_s']:.3f} plain_s={m['plain_s']:.3f} "
        f"ratio={m['typed_s'] / m['plain_s']:.2f} write_s={m['write_s']:.2f} selected={m['selected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
