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

__all__ = ["SIMULATOR_OPTIONS", "add_parser"]

#: Options passed to :func:`xmmcore.simulate.simulate_survey`: (keyword, type or "range", default,
#: metavar, help). The defaults are the simulator's own (``tests/test_cli.py`` checks they agree).
SIMULATOR_OPTIONS: tuple[tuple[str, object, object, str, str], ...] = (
    (
        "exposure_ks",
        "range",
        (20.0, 35.0),
        "KS|MIN,MAX",
        "on-time per ObsID in ks, or the range it is drawn from",
    ),
    (
        "targets_per_field",
        int,
        1,
        "N",
        "clusters per field: the target near the aim point + N-1 serendipitous ones",
    ),
    ("point_sources", float, 8.0, "MEAN", "mean number of point sources per field"),
    ("flare_fraction", float, 0.15, "F", "fraction of the on-time in soft-proton flares, 0 = none"),
    (
        "cluster_counts",
        "range",
        (6000.0, 30000.0),
        "MIN,MAX",
        "detected pn photons of the target, drawn log-uniform",
    ),
    ("kt_range", "range", (2.0, 9.0), "MIN,MAX", "cluster temperature range in keV"),
    ("z_range", "range", (0.05, 0.4), "MIN,MAX", "redshift range"),
    ("nh_range", "range", (0.01, 0.1), "MIN,MAX", "Galactic nH range in 1e22 cm^-2, log-uniform"),
)


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
            progress=progress,
            **{name: getattr(args, name) for name, *_ in SIMULATOR_OPTIONS},
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
    for name, kind, default, metavar, what in SIMULATOR_OPTIONS:
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else f"{default:g}"
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_range if kind == "range" else kind,
            default=default,
            metavar=metavar,
            help=f"{what} (default {shown})",
        )
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=_run)
    return p
