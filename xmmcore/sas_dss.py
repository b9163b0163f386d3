"""SAS data-subspace (DSS) keywords for spectra made outside SAS, in the form ``evselect`` writes them.

``rmfgen``, ``arfgen`` and ``backscale`` read the selection of a spectrum from its DSS: the CCDs, FLAG
and PATTERN masks, the PI range, the GTIs of each CCD (``DSREF = ':GTI00005'`` tables) and the region
(``POS(X,Y)`` -> a ``REG00106`` table of SHAPE/X/Y/R/COMPONENT rows). The form is copied from the real
SAS spectra in ``../shared/data/xmm`` (psrj0855 MOS, ngc7793_ulx4 pn): one DSS component per CCD,
``nDSVAL1`` the CCD and ``nDSREFk`` its GTI table; FLAG masks as ``b`` + one character per bit from the
highest set bit down (``0`` = must be 0, ``x`` = free: ``0xcfa0000`` -> ``b00xx00000x0x...``).
With them a Python-backend spectrum gets exact SAS responses (``spectra.responses: sas``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from .constants import SKY_PIXEL_ARCSEC

__all__ = ["dss_header_and_tables", "dss_keywords", "dss_tables", "flag_dsval", "region_rows"]


def flag_dsval(mask: int) -> str:
    """The DSVAL of a ``(FLAG & mask) == 0`` selection, as evselect writes it."""
    mask = int(mask)
    if mask <= 0:
        return "b0"
    return "b" + "".join("0" if (mask >> i) & 1 else "x" for i in range(mask.bit_length() - 1, -1, -1))


def region_rows(regions: Mapping[str, Any], kind: str) -> list[tuple[str, float, float, float]]:
    """SHAPE/X/Y/R rows (sky pixels) of the source circle or background annulus, minus point sources.

    An annulus is written as its outer circle and the inner one excluded (the same selection, with the
    scalar R column of the SAS region tables).
    """
    per_arcmin = 60.0 / SKY_PIXEL_ARCSEC
    cx, cy = float(regions["centre_x"]), float(regions["centre_y"])
    if kind == "src":
        rows = [("CIRCLE", cx, cy, float(regions["r_src_arcmin"]) * per_arcmin)]
    elif kind == "bkg":
        rows = [
            ("CIRCLE", cx, cy, float(regions["bkg_outer_arcmin"]) * per_arcmin),
            ("!CIRCLE", cx, cy, float(regions["bkg_inner_arcmin"]) * per_arcmin),
        ]
    else:
        raise ValueError(f"region kind must be 'src' or 'bkg', not {kind!r}")
    for ps in regions.get("point_sources") or []:
        rows.append(("!CIRCLE", float(ps["x"]), float(ps["y"]), float(ps["r_arcsec"]) / SKY_PIXEL_ARCSEC))
    return rows


def dss_header_and_tables(
    *,
    ccd_gtis: Mapping[int, np.ndarray],
    flag_mask: int,
    pattern_max: int,
    pi_range: tuple[float, float],
    rows: Sequence[tuple[str, float, float, float]],
) -> tuple[dict[str, Any], list[fits.BinTableHDU]]:
    """Keywords of the SPECTRUM header and the GTI/REG tables that go with them.

    Parameters
    ----------
    ccd_gtis : mapping
        CCD number -> (n, 2) GTI [s] of that CCD in the events the spectrum was made from.
    flag_mask, pattern_max, pi_range
        The screening of those events (FLAG mask, PATTERN <= n, PI [eV]).
    rows : sequence
        Region rows of :func:`region_rows`.
    """
    hdr = dss_keywords(ccd_gtis=ccd_gtis, flag_mask=flag_mask, pattern_max=pattern_max, pi_range=pi_range)
    return hdr, dss_tables(ccd_gtis=ccd_gtis, rows=rows)


def dss_keywords(
    *, ccd_gtis: Mapping[int, np.ndarray], flag_mask: int, pattern_max: int, pi_range: tuple[float, float]
) -> dict[str, Any]:
    """The keywords of :func:`dss_header_and_tables` alone (for a spectrum whose tables are not written)."""
    ccds = sorted(int(c) for c in ccd_gtis)
    if not ccds:
        raise ValueError("no CCD GTIs: the spectrum's events have no GTI table")
    hdr: dict[str, Any] = {
        "DSTYP1": "CCDNR",
        "DSVAL1": str(ccds[0]),
        "DSTYP2": "FLAG",
        "DSFORM2": "X",
        "DSVAL2": flag_dsval(flag_mask),
        "DSTYP3": "PATTERN",
        "DSVAL3": f":{int(pattern_max)}",
        "DSTYP4": "PI",
        "DSUNI4": "eV",
        "DSVAL4": f"({int(pi_range[0])}:{int(pi_range[1])})",
        "DSTYP5": "TIME",
        "DSUNI5": "s",
        "DSVAL5": "TABLE",
        "DSREF5": ":GTI00005",
        "DSTYP6": "POS(X,Y)",
        "DSVAL6": "TABLE",
        "DSREF6": ":REG00106",
        "MTYPE1": "POS",
        "MFORM1": "X,Y",
    }
    for k, ccd in enumerate(ccds):
        if k:
            hdr[f"{k + 1}DSVAL1"] = str(ccd)
            hdr[f"{k + 1}DSREF5"] = f":{_gti_name(k)}"
    return hdr


def _gti_name(k: int) -> str:
    return f"GTI{k:03d}05"


def dss_tables(
    *, ccd_gtis: Mapping[int, np.ndarray], rows: Sequence[tuple[str, float, float, float]]
) -> list[fits.BinTableHDU]:
    """The GTI table of each CCD and the region table the keywords of :func:`dss_keywords` refer to."""
    ccds = sorted(int(c) for c in ccd_gtis)
    if not ccds:
        raise ValueError("no CCD GTIs: the spectrum's events have no GTI table")
    tables = []
    for k, ccd in enumerate(ccds):
        g = np.asarray(ccd_gtis[ccd], dtype=float).reshape(-1, 2)
        hdu = fits.BinTableHDU.from_columns(
            [
                fits.Column(name="START", format="D", unit="s", array=g[:, 0]),
                fits.Column(name="STOP", format="D", unit="s", array=g[:, 1]),
            ],
            name=_gti_name(k),
        )
        hdu.header.update(CCDID=ccd, HDUCLASS="OGIP", HDUCLAS1="GTI", HDUCLAS2="STANDARD")
        tables.append(hdu)
    reg = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="SHAPE", format="16A", array=[r[0] for r in rows]),
            fits.Column(name="X", format="E", array=[r[1] for r in rows]),
            fits.Column(name="Y", format="E", array=[r[2] for r in rows]),
            fits.Column(name="R", format="E", array=[r[3] for r in rows]),
            fits.Column(name="COMPONENT", format="B", array=np.ones(len(rows), np.uint8)),
        ],
        name="REG00106",
    )
    reg.header.update(HDUCLASS="ASC", HDUCLAS1="REGION", HDUCLAS2="STANDARD", MTYPE1="pos", MFORM1="X,Y")
    tables.append(reg)
    return tables
