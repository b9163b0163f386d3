"""``xmm-survey fit``: a one-off spectral fit, like a short XSPEC session.

Examples
--------
::

    xmm-survey fit pn_src.pha --model "wabs*wabs*powerlaw" --set 1=0.0119,frozen --stat chi2gehrels \\
        --notice 2-10 --rmf pn.rmf --json
    xmm-survey fit pn.pha mos1.pha mos2.pha --model "constant*tbabs*apec" --set tbabs_1.nH=0.03,frozen
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from xmmcore.errors import ConfigError

__all__ = ["add_parser", "parse_notice", "run"]


def parse_notice(text: str) -> tuple[float, float]:
    """``"0.5-8.0"`` -> (0.5, 8.0) keV; ``"**-8"`` / ``"0.5-**"`` give open ends."""
    lo_s, sep, hi_s = str(text).strip().partition("-")
    if not sep:
        raise ConfigError(f"--notice {text!r}: expected LO-HI in keV, e.g. 0.5-8.0")
    try:
        lo = 0.0 if lo_s.strip() in ("", "**") else float(lo_s)
        hi = float("inf") if hi_s.strip() in ("", "**") else float(hi_s)
    except ValueError as exc:
        raise ConfigError(f"--notice {text!r}: expected LO-HI in keV, e.g. 0.5-8.0") from exc
    if not hi > lo:
        raise ConfigError(f"--notice {text!r}: the upper energy must exceed the lower")
    return lo, hi


def _per_pha(option: list[str] | None, n: int, flag: str) -> list[Path | None]:
    if not option:
        return [None] * n
    if len(option) != n:
        raise ConfigError(f"{flag} given {len(option)} times for {n} spectra: give it once per PHA, in order")
    return [None if str(v).lower() in ("none", "header", "") else Path(v) for v in option]


def run(args: argparse.Namespace) -> int:
    """Run the fit described by parsed ``args``; print a summary (or JSON) on stdout."""
    from survey.config import load_config
    from xmmcore.fitting.engines import FitInput, engine_from_config

    n = len(args.pha)
    rmfs = _per_pha(args.rmf, n, "--rmf")
    arfs = _per_pha(args.arf, n, "--arf")
    bkgs = _per_pha(args.bkg, n, "--bkg")
    inputs = [
        FitInput(
            pha=Path(p),
            rmf=r,
            arf=a,
            bkg=b,
            name=(args.name[k] if args.name and k < len(args.name) else Path(p).stem),
        )
        for k, (p, r, a, b) in enumerate(zip(args.pha, rmfs, arfs, bkgs))
    ]
    log = logging.getLogger("xmm-survey.fit")
    # the engine as a survey builds it: its options from survey/defaults.yaml (the `xspec:` section)
    engine = engine_from_config(load_config(None, {"backend.fitting": args.engine}))
    kwargs: dict[str, Any] = {}
    if args.no_background:
        if engine.name != "builtin":
            raise ConfigError("--no-background is only supported by the builtin engine")
        kwargs["use_background"] = False
    cosmology = {"H0": args.H0, "Om0": args.Om0}
    levels = _error_levels(args.error_levels)
    result = engine.fit_files(
        inputs,
        args.model,
        stat=args.stat,
        notice_kev=parse_notice(args.notice),
        set_params=list(args.set or []),
        abund=args.abund,
        errors=None if args.errors == "none" else args.errors,
        extra_error_levels=tuple(levels[1:]),
        redshift=args.redshift,
        cosmology=cosmology,
        flux_bands_kev=[parse_notice(b) for b in (args.flux_band or ["0.5-2.0", "2.0-10.0"])],
        cross_norm=not args.no_cross_norm,
        workdir=args.workdir,
        log=log,
        **kwargs,
    )
    if args.json:
        from xmmcore.fsutil import _jsonable

        out = result.to_dict()
        out.pop("covariance", None)
        json.dump(_jsonable(out), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.summary_text())
    if args.out_json:
        result.write_json(args.out_json)
    if args.xcm:
        result.to_xcm(args.xcm)
    if args.plot:
        from xmmcore.fitting.plots import plot_fit

        plot_fit(result, inputs, args.plot)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fit`` on the ``xmm-survey`` sub-command parser and return it."""
    from xmmcore.fitting.engines import ENGINES
    from xmmcore.fitting.stats import STATISTICS

    p = subparsers.add_parser(
        "fit",
        help="fit one or more spectra (joint fit) with an XSPEC model expression",
        description="Fit PHA spectra like a short XSPEC session. Parameters are addressed by number "
        "(--set 1=0.0119,frozen) or by name (--set wabs_2.nH=1, --set PhoIndex=2).",
    )
    p.add_argument("pha", nargs="+", help="source spectra (OGIP PHA); several = joint fit")
    p.add_argument("--model", "-m", required=True, help='model expression, e.g. "wabs*(zbremss+zgauss)"')
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE[,frozen]",
        help="parameter value/state (repeatable): 1=0.0119,frozen | wabs_1.nH=0.03 | "
        "zgauss_1.Redshift=zbremss_1.Redshift (link) | 2:constant_1.factor=1,frozen",
    )
    p.add_argument("--rmf", action="append", metavar="FILE", help="RMF, once per PHA (overrides RESPFILE)")
    p.add_argument("--arf", action="append", metavar="FILE", help="ARF, once per PHA (overrides ANCRFILE)")
    p.add_argument(
        "--bkg", action="append", metavar="FILE", help="background PHA, once per PHA (overrides BACKFILE)"
    )
    p.add_argument("--name", action="append", metavar="LABEL", help="dataset label, once per PHA")
    p.add_argument(
        "--notice",
        default="0.5-7.0",
        metavar="LO-HI",
        help="energy range in keV [0.5-7.0, as fit.notice_kev]",
    )
    p.add_argument(
        "--stat",
        default="cstat",
        choices=list(STATISTICS),
        help="fit statistic [cstat]",
    )
    p.add_argument("--abund", default="angr", help="abundance table (angr, wilm, aspl, ...) [angr]")
    p.add_argument(
        "--errors",
        default="profile",
        choices=["profile", "covariance", "none"],
        help="parameter errors [profile]",
    )
    p.add_argument(
        "--error-levels",
        default="0.683,0.90",
        metavar="CL,CL",
        help="confidence levels: 0.683 (the errors), then 0.90 (90%% intervals of the shape parameters, "
        "delta-stat 2.706) [0.683,0.90, as fit.error_levels]",
    )
    p.add_argument("--no-background", action="store_true", help="ignore BACKFILE / --bkg")
    p.add_argument(
        "--no-cross-norm",
        action="store_true",
        help="joint fits: no per-dataset constant (default: constant, first frozen at 1)",
    )
    p.add_argument("--redshift", type=float, default=None, help="redshift for luminosities")
    p.add_argument("--H0", type=float, default=70.0, help="Hubble constant [70]")
    p.add_argument("--Om0", type=float, default=0.3, help="matter density [0.3]")
    p.add_argument("--flux-band", action="append", metavar="LO-HI", help="flux band in keV (repeatable)")
    p.add_argument("--engine", default="builtin", choices=list(ENGINES), help="fit engine [builtin]")
    p.add_argument("--workdir", type=Path, default=None, help="working folder (xspec engine)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--out-json", type=Path, default=None, help="also write the JSON result here")
    p.add_argument("--xcm", type=Path, default=None, help="write an XSPEC script reproducing the fit")
    p.add_argument("--plot", type=Path, default=None, help="write a plot of data, model and residuals")
    p.set_defaults(func=run)
    return p


def _error_levels(text: str) -> list[float]:
    """``--error-levels`` as ``fit.error_levels`` (0.683 first, then 0.90), checked as the configuration is."""
    from survey.config import _check_error_levels

    try:
        levels = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--error-levels must be comma-separated numbers, got {text!r}") from exc
    _check_error_levels(levels, "--error-levels")
    return levels
