"""CLI: ``xmm-survey simulate --out DIR --n-obsids N --seed S`` -- write a synthetic survey.

Thin shell over :func:`xmmcore.simulate.simulate_survey`: ``DIR/<obsid>/`` gets PPS-named pn/MOS1/MOS2
event lists, responses, ``truth.json`` and ``meta.json``; ``xmm-survey run --data DIR`` then processes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xmmcore.errors import XmmSurveyError, exit_code_for

__all__ = ["add_parser"]


def _range(text: str) -> tuple[float, float]:
    """``"25"`` -> (25, 25); ``"20,35"`` or ``"20:35"`` -> (20, 35)."""
    parts = text.replace(":", ",").split(",")
    try:
        vals = [float(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or MIN,MAX, got {text!r}") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or vals[0] > vals[1] or vals[0] <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number or MIN,MAX with MIN <= MAX, got {text!r}"
        )
    return vals[0], vals[1]


def _run(args: argparse.Namespace) -> int:
    from xmmcore.simulate import simulate_survey

    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    out = Path(args.out)
    t0 = time.monotonic()

    def progress(i: int, obsid: str) -> None:
        if not args.quiet:
            print(f"[{i + 1}/{args.n_obsids}] {out / obsid}", flush=True)

    try:
        obsids = simulate_survey(
            out,
            n_obsids=args.n_obsids,
            seed=args.seed,
            cameras=cameras,
            exposure_ks=args.exposure_ks,
            targets_per_field=args.targets_per_field,
            point_sources=args.point_sources,
            flare_fraction=args.flare_fraction,
            cluster_counts=args.cluster_counts,
            kt_range=args.kt_range,
            z_range=args.z_range,
            nh_range=args.nh_range,
            progress=progress,
        )
    except XmmSurveyError as exc:
        print(f"xmm-survey: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    print(
        f"simulated {len(obsids)} ObsIDs (seed {args.seed}) in {time.monotonic() - t0:.1f} s -> {out}/"
        f"<obsid>/ (truth in <obsid>/truth.json)"
    )
    print(f"next: xmm-survey run --data {out} --results <results dir>")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``simulate`` on the ``xmm-survey`` sub-command parser."""
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic survey (event lists, responses, truth) in the real data layout",
        description="Simulate XMM-Newton EPIC observations of galaxy clusters (beta model, absorbed "
        "bremsstrahlung + Fe K line), point sources, sky + particle background and soft-proton "
        "flares. Writes DIR/<obsid>/pps/P<obsid>{PNS003PIEVLI,M1S001MIEVLI,M2S002MIEVLI}0000.FIT, "
        "DIR/<obsid>/responses/<camera>.{rmf,arf}, truth.json and meta.json. "
        "The same seed gives the same files, byte for byte.",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="data folder to write <obsid>/ sub-folders into"
    )
    p.add_argument("--n-obsids", type=int, default=12, metavar="N", help="number of ObsIDs (default 12)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--cameras", default="pn,mos1,mos2", help="comma-separated cameras (default pn,mos1,mos2)")
    p.add_argument(
        "--exposure-ks",
        type=_range,
        default=(20.0, 35.0),
        metavar="KS|MIN,MAX",
        help="on-time per ObsID in ks, or the range it is drawn from (default 20,35)",
    )
    p.add_argument(
        "--targets-per-field",
        type=int,
        default=1,
        metavar="N",
        help="clusters per field: the target near the aim point + N-1 serendipitous ones (default 1)",
    )
    p.add_argument(
        "--point-sources",
        type=float,
        default=8.0,
        metavar="MEAN",
        help="mean number of point sources per field (default 8)",
    )
    p.add_argument(
        "--flare-fraction",
        type=float,
        default=0.15,
        metavar="F",
        help="fraction of the on-time in soft-proton flares, 0 = none (default 0.15)",
    )
    p.add_argument(
        "--cluster-counts",
        type=_range,
        default=(6000.0, 30000.0),
        metavar="MIN,MAX",
        help="detected pn photons of the target, drawn log-uniform (default 6000,30000)",
    )
    p.add_argument(
        "--kt-range",
        type=_range,
        default=(2.0, 9.0),
        metavar="MIN,MAX",
        help="cluster temperature range in keV (default 2,9)",
    )
    p.add_argument(
        "--z-range",
        type=_range,
        default=(0.05, 0.4),
        metavar="MIN,MAX",
        help="redshift range (default 0.05,0.4)",
    )
    p.add_argument(
        "--nh-range",
        type=_range,
        default=(0.01, 0.1),
        metavar="MIN,MAX",
        help="Galactic nH range in 1e22 cm^-2, log-uniform (default 0.01,0.1)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=_run)
    return p
