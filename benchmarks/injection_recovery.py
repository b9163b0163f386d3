"""Injection-recovery of the default configuration on simulated ObsIDs (issue 13's closing numbers).

    python benchmarks/injection_recovery.py --n-obsids 48 --seed 13 --out /tmp/ir [--workers 2] \
        [--set fit.free_abundance=true] [--deep 6]

Simulates ``n`` ObsIDs (``xmmcore.simulate``: tbabs*apec clusters, cool/regular/flat cores, point sources, some
within 1-2' of the centres), runs the survey with the default configuration (plus ``--set`` overrides) and
prints, from ``truth.json`` against the catalogue:

* median kT bias and the coverage of the kT intervals at each level the catalogue has: 68% (``kT_err_lo/hi``,
  delta-stat 1) and 90% (``kT_err_lo90/hi90``, delta-stat 2.706, ``fit.error_levels``); the same for the
  abundance when it is free, with its median pull (the side of the 68% interval towards the truth) and
  coverage per kT band (< 3, 3-5, 5-10, > 10 keV);
* median L500 (0.1-2.4 keV) ratio fit / truth and the largest deviation;
* per camera, the share of the flare counts the flare GTIs removed (``xmmcore.simulate.flare_shape``
  integrated over the removed good time) and the share of the quiescent time kept;
* false point sources within 2 core radii of the centres, and the completeness for injected sources
  above S/N 8 (S/N of the injected source's expected pn+MOS counts in a 15" circle against the
  expected background there).

It takes minutes per ObsID on a busy 2-core machine: this is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def _truth(data: Path, obsid: str) -> dict:
    return json.loads((data / obsid / "truth.json").read_text())


def _ps_snr(truth: dict, ps: dict) -> float:
    """S/N of an injected point source: its detected counts (pn scaled to pn+2 MOS) in 15" against the background."""
    exp = truth["expected_counts"]
    r_arcmin = float(exp["radius_arcmin"])
    counts, bkg = 0.0, 0.0
    for cam in ("pn", "mos1", "mos2"):
        if cam not in exp:
            continue
        e = exp[cam]
        per_area = (e["sky_background"] + e["particle_background"]) / (math.pi * r_arcmin**2)
        bkg += per_area * math.pi * 0.25**2
        counts += float(ps["counts_pn_detected"]) * (1.0 if cam == "pn" else 0.35) * 0.85
    return counts / math.sqrt(counts + bkg) if counts > 0 else 0.0


def _in_gti(t: np.ndarray, gti: np.ndarray) -> np.ndarray:
    out = np.zeros(t.shape, dtype=bool)
    for start, stop in np.asarray(gti, dtype=float).reshape(-1, 2):
        out |= (t >= start) & (t < stop)
    return out


def _flare_metrics(truth: dict, gti_file: Path) -> tuple[float, float]:
    """(share of the flare COUNTS removed, share of the quiescent time kept) of one camera's flare GTIs.

    The simulator draws flare events in proportion to ``xmmcore.simulate.flare_shape`` inside the
    input GTIs (truth.json), so its integral over the removed good time, over the one over all input
    good time, is the share of flare counts removed; quiescent = input good time outside every flare.
    NaN for the first when the ObsID has no flare.
    """
    from astropy.io import fits

    from xmmcore.simulate import flare_shape

    grid = np.arange(truth["tstart"], truth["tstop"], 1.0) + 0.5
    inp = _in_gti(grid, np.asarray(truth["gti"]))
    with fits.open(gti_file) as h:
        d = h[1].data
        kept = _in_gti(grid, np.column_stack([d["START"], d["STOP"]])) & inp
    rate = flare_shape(truth["flares"], grid)
    total = float((rate * inp).sum())
    removed = float((rate * (inp & ~kept)).sum()) / total if total > 0 else math.nan
    quiet = inp & (rate <= 0)
    return removed, float(kept[quiet].sum() / max(quiet.sum(), 1))


def _coverage(rows: list[dict], par: str, level: str) -> np.ndarray:
    """Per row: the truth within the ``level`` interval of ``par`` (NaN where the catalogue has none)."""
    out = []
    for r in rows:
        lo, hi = r.get(f"{par}_lo{level}", math.nan), r.get(f"{par}_hi{level}", math.nan)
        ok = math.isfinite(lo) and math.isfinite(hi)
        out.append(float(r[par] - lo <= r[f"{par}_true"] <= r[par] + hi) if ok else math.nan)
    return np.array(out)


def _fmt(cov: np.ndarray) -> str:
    n = int(np.isfinite(cov).sum())
    return f"{np.nanmean(cov):.3f} (of {n})" if n else "- (no 90% intervals in the catalogue)"


def _pull(r: dict, par: str) -> float:
    """(fit - truth) over the 68% interval's side towards the truth."""
    d = r[par] - r[f"{par}_true"]
    side = r[f"{par}_lo"] if d > 0 else r[f"{par}_hi"]
    return d / side if side > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-obsids", type=int, default=48)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--deep", type=int, default=0, help="extra deep (150-200 ks) ObsIDs for the false-source count"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--no-run",
        action="store_true",
        help="only read OUT/results/catalogue.parquet of an earlier run (no simulation, no survey)",
    )
    args = ap.parse_args(argv)

    from survey.api import run_survey
    from survey.config import load_config
    from xmmcore.simulate import simulate_survey

    data, results = args.out / "data", args.out / "results"
    failed: dict[str, str] = {}
    if not args.no_run:
        if not data.exists():
            simulate_survey(data, n_obsids=args.n_obsids, seed=args.seed)
            if args.deep:
                simulate_survey(data, n_obsids=args.deep, seed=args.seed + 500, exposure_ks=(150.0, 200.0))
        cfg = load_config(
            None,
            [
                f"data_dir={data}",
                f"results_dir={results}",
                f"cluster.workers={args.workers}",
                *args.overrides,
            ],
        )
        failed = dict(run_survey(cfg, progress=False).failed)
    import catalog

    df = catalog.load(results / "catalogue.parquet")
    epic = df[(df["kind"] == "obs") & (df["camera"] == "epic")].set_index("obsid")
    free_abund = any(o.replace(" ", "") == "fit.free_abundance=true" for o in args.overrides)
    rows, false_src, n_inj, n_found = [], 0, 0, 0
    flares: dict[str, list[tuple[str, bool, float, float]]] = {}
    for obsid in sorted(p.name for p in data.iterdir() if (p / "truth.json").exists()):
        t = _truth(data, obsid)
        c = t["cluster"]
        deep = t["ontime_s"] > 100e3
        reg_path = results / obsid / "regions" / "regions.json"
        if reg_path.exists():
            reg = json.loads(reg_path.read_text())
            pts = reg.get("point_sources") or []
            px = 0.05  # arcsec per physical pixel
            for p in pts:
                d_centre = math.hypot(p["x"] - c["x"], p["y"] - c["y"]) * px
                near_true = any(
                    math.hypot(p["x"] - s["x"], p["y"] - s["y"]) * px < 15.0 for s in t["point_sources"]
                )
                if d_centre < 2.0 * c["rc_arcsec"] and not near_true:
                    false_src += 1
            for s in t["point_sources"]:
                if _ps_snr(t, s) >= 8.0:
                    n_inj += 1
                    n_found += any(math.hypot(p["x"] - s["x"], p["y"] - s["y"]) * px < 15.0 for p in pts)
        for cam in ("pn", "mos1", "mos2"):
            gti_file = results / obsid / "events" / f"{cam}_gti.fits"
            if gti_file.exists():
                flares.setdefault(cam, []).append((obsid, deep, *_flare_metrics(t, gti_file)))
        if deep or obsid not in epic.index or epic.loc[obsid, "status"] != "done":
            continue
        r = epic.loc[obsid]
        rows.append(
            {
                "obsid": obsid,
                "core": c.get("core"),
                "kT_true": c["kT"],
                "kT": r["kT"],
                "kT_lo": r["kT_err_lo"],
                "kT_hi": r["kT_err_hi"],
                "Z_true": c["abundance"],
                "Z": r.get("abund", r.get("Z", math.nan)),
                "Z_lo": r.get("abund_err_lo", r.get("Z_err_lo", math.nan)),
                "Z_hi": r.get("abund_err_hi", r.get("Z_err_hi", math.nan)),
                "kT_lo90": r.get("kT_err_lo90", math.nan),
                "kT_hi90": r.get("kT_err_hi90", math.nan),
                "Z_lo90": r.get("abund_err_lo90", math.nan),
                "Z_hi90": r.get("abund_err_hi90", math.nan),
                "L500_true": c["L500_0p1_2p4"],
                "L500": r["L500_0p1_2p4"],
                "flags": r["quality_flags"],
            }
        )
    if not rows:
        print("no fitted ObsIDs; failed:", failed)
        return 1
    kt = np.array([(r["kT"] - r["kT_true"]) / r["kT_true"] for r in rows])
    cov = np.array([r["kT"] - r["kT_lo"] <= r["kT_true"] <= r["kT"] + r["kT_hi"] for r in rows])
    lr = np.array([r["L500"] / r["L500_true"] for r in rows])
    print(f"ObsIDs fitted: {len(rows)} (failed: {len(failed)})")
    for core in ("cool", "regular", "flat"):
        sel = np.array([r["core"] == core for r in rows])
        if sel.any():
            print(
                f"  {core:8s} n={sel.sum():2d} median kT bias {np.median(kt[sel]):+.3f} "
                f"coverage {cov[sel].mean():.2f} median L500 ratio {np.median(lr[sel]):.3f}"
            )
    print(f"median kT bias {np.median(kt):+.4f}; 68% coverage {cov.mean():.3f}")
    cov90 = _coverage(rows, "kT", "90")
    print(f"kT coverage of the 90% intervals (delta-stat 2.706, kT_err_lo90/hi90): {_fmt(cov90)}")
    print(
        f"median L500 ratio {np.median(lr):.4f}; max |ratio-1| {np.max(np.abs(lr - 1)):.3f}; "
        f"within 15%: {np.mean(np.abs(lr - 1) <= 0.15):.3f}"
    )
    if free_abund:
        zc = np.array([r["Z"] - r["Z_lo"] <= r["Z_true"] <= r["Z"] + r["Z_hi"] for r in rows])
        print(f"abundance within its 68% interval (delta-stat 1, abund_err_lo/hi): {zc.mean():.3f}")
        z90 = _coverage(rows, "Z", "90")
        print(f"abundance within its 90% interval (delta-stat 2.706, abund_err_lo90/hi90): {_fmt(z90)}")
        pulls = np.array([_pull(r, "Z") for r in rows])
        kt_true = np.array([r["kT_true"] for r in rows])
        for lo, hi in ((0.0, 3.0), (3.0, 5.0), (5.0, 10.0), (10.0, math.inf)):
            sel = (kt_true >= lo) & (kt_true < hi)
            if sel.any():
                print(
                    f"  kT_true {lo:g}-{hi:g} keV n={sel.sum():2d}: Z median pull (68% side) "
                    f"{np.median(pulls[sel]):+.2f}, 68% coverage {zc[sel].mean():.2f}, "
                    f"90% coverage {_fmt(z90[sel])}; kT 68% coverage {cov[sel].mean():.2f}, 90% {_fmt(cov90[sel])}"
                )
    for cam, vals in flares.items():
        rem = np.array([v[2] for v in vals if np.isfinite(v[2])])
        kept = np.array([v[3] for v in vals])
        worst = min((v for v in vals if np.isfinite(v[2])), key=lambda v: v[2], default=None)
        print(
            f"flares {cam:4s} ({len(vals)} lists): flare counts removed median {np.median(rem):.3f} "
            f"min {rem.min():.3f} ({worst[0] if worst else '-'}), >= 0.9: {np.mean(rem >= 0.9):.3f}; "
            f"quiescent time kept median {np.median(kept):.3f} min {kept.min():.3f}"
        )
    print(f"false point sources within 2 core radii: {false_src}")
    print(f"completeness above S/N 8: {n_found}/{n_inj} = {n_found / max(n_inj, 1):.3f}")
    (args.out / "injection_recovery.json").write_text(json.dumps(rows, indent=1, default=str))
    (args.out / "flares.json").write_text(json.dumps(flares, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
