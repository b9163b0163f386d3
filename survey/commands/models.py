"""CLI: ``xmm-survey models list`` and ``xmm-survey models build-apec [--out F] [--wheel F]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xmmcore.errors import XmmSurveyError, exit_code_for

__all__ = ["add_parser"]


def _fail(exc: BaseException) -> int:
    print(f"xmm-survey: error: {exc}", file=sys.stderr)
    return exit_code_for(exc)


def _list(args: argparse.Namespace) -> int:
    from xmmcore.fitting import atable, models, xsmodels

    rows = []
    for name in models.known_components():
        try:
            comp = models.get_component(name)
        except XmmSurveyError as exc:
            first = (
                str(exc).split(":", 1)[-1].strip() if name != "apec" else "run `xmm-survey models build-apec`"
            )
            rows.append((name, "-", "unavailable", first))
            continue
        if isinstance(comp, xsmodels.XspecComponent):
            source = "XSPEC library"
        elif isinstance(comp, atable.TableComponent):
            source = f"table {comp.table.path}"
        else:
            source = "numpy"
        rows.append((name, comp.kind, source, " ".join(p.name for p in comp.params)))
    width = max(len(r[0]) for r in rows)
    for name, kind, source, params in rows:
        print(f"{name:<{width}}  {kind:<3}  {source:<14}  {params}")
    print(f"{'atable{FILE}':<{width}}  add  table          parameters from the OGIP table FILE")
    print(f"{'mtable{FILE}':<{width}}  mul  table          parameters from the OGIP table FILE")
    return 0


def _build_apec(args: argparse.Namespace) -> int:
    from xmmcore.fitting.build_apec import build_apec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_apec(out=args.out, wheel=args.wheel)
    except XmmSurveyError as exc:
        return _fail(exc)
    print(f"APEC table -> {path}")
    return 0


def add_parser(subparsers) -> None:
    """Register ``models`` (``list``, ``build-apec``) on the ``xmm-survey`` parser."""
    m = subparsers.add_parser("models", help="spectral model components and the APEC table")
    msub = m.add_subparsers(dest="models_command", required=True)

    ls = msub.add_parser("list", help="print the available model components")
    ls.set_defaults(func=_list)

    b = msub.add_parser("build-apec", help="build the APEC table model from AtomDB (jaxspec 0.0.3 wheel)")
    b.add_argument(
        "--out", type=Path, default=None, help="output FITS file [~/.cache/xmm-survey/apec_table.fits]"
    )
    b.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="use this jaxspec-0.0.3 wheel (or apec.nc) instead of downloading it with pip",
    )
    b.set_defaults(func=_build_apec)
