"""Settings, regions and small event/attitude files shared by the SAS-backend tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from survey.config import load_config
from xmmcore.backends.sas import SasSettings

SETTINGS = SasSettings(
    sas_dir="/opt/xmmsas", ccf_path="/ccf", timeout_s=600.0, use_pps_events=True, esas=True
)


REGIONS = {
    "centre_ra": 149.5923,
    "centre_dec": -11.0597,
    "centre_x": 25800.0,
    "centre_y": 26100.0,
    "r_src_arcmin": 3.0,
    "bkg_inner_arcmin": 3.15,
    "bkg_outer_arcmin": 4.5,
    "point_sources": [
        {"x": 27000.0, "y": 25000.0, "ra": 149.55, "dec": -11.07, "r_arcsec": 20.0, "snr": 8.0}
    ],
}


def _cfg(**overrides):
    return load_config(None, overrides).to_dict()


def _write_events(path: Path, instrume: str, submode: str, expid: str, n: int = 2000) -> None:
    """A small calibrated-event-list-shaped FITS file (the backend reads its header and X/Y/DETX/DETY)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(20000, 32000, n)
    y = rng.uniform(20000, 32000, n)
    # DET = rotation by 30 deg about the pointing + offset, as for a real attitude.
    ang = np.deg2rad(30.0)
    detx = np.cos(ang) * (x - 25921) - np.sin(ang) * (y - 25921) + 100.0
    dety = np.sin(ang) * (x - 25921) + np.cos(ang) * (y - 25921) - 50.0
    cols = [
        fits.Column(name="TIME", format="D", array=np.sort(rng.uniform(0, 1e4, n))),
        fits.Column(name="X", format="J", array=x.astype(np.int32)),
        fits.Column(name="Y", format="J", array=y.astype(np.int32)),
        fits.Column(name="DETX", format="I", array=detx.astype(np.int16)),
        fits.Column(name="DETY", format="I", array=dety.astype(np.int16)),
        fits.Column(name="PI", format="I", array=rng.integers(200, 12000, n).astype(np.int16)),
        fits.Column(name="PATTERN", format="B", array=rng.integers(0, 5, n).astype(np.uint8)),
        # a PPS list keeps the out-of-FOV corner events (FLAG 0x10000) that ESAS needs: one in 20 here
        fits.Column(
            name="FLAG", format="J", array=np.where(np.arange(n) % 20 == 0, 0x10000, 0).astype(np.int32)
        ),
        fits.Column(name="CCDNR", format="B", array=rng.integers(1, 8, n).astype(np.uint8)),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    h = hdu.header
    h["INSTRUME"], h["DATAMODE"], h["SUBMODE"], h["EXPIDSTR"] = instrume, "IMAGING", submode, expid
    if "Timing" in submode:
        h["DATAMODE"] = "TIMING"
    h["RA_OBJ"], h["DEC_OBJ"] = 149.5923, -11.0597
    for i, axis in ((2, "RA---TAN"), (3, "DEC--TAN")):
        h[f"TCTYP{i}"], h[f"TCRPX{i}"] = axis, 25921.0
        h[f"TCRVL{i}"] = 149.6005 if i == 2 else -11.0868
        h[f"TCDLT{i}"] = -1.388888888889e-05 if i == 2 else 1.388888888889e-05
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def _write_attitude(path: Path) -> None:
    """A PPS attitude time series (ATTHK extension), linked as atthk.fits for cheese/mosspectra."""
    cols = [
        fits.Column(name=c, format="D", array=np.linspace(0, 1e4, 11)) for c in ("TIME", "AHFRA", "AHFDEC")
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="ATTHK")]).writeto(path)
