"""Background spectra: local, and blank-sky / filter-wheel-closed with double subtraction.

Local background
    The annulus (or user off-source region) of the same camera and ObsID; the fit uses it
    through BACKFILE with the BACKSCAL ratio (nothing here).

Blank-sky / FWC (Nevalainen, Markevitch & Lumb 2005, ApJ 629, 172)
    The user supplies, per camera, a blank-sky or filter-wheel-closed event list already in the
    observation's sky frame (e.g. reprojected with ESAS/``attcalc``).  The quiescent particle
    background varies from observation to observation; it is normalised by the ratio of the
    count rates in a band where the sky does not contribute: events *outside the field of
    view* (FLAG bit ``OUT_OF_FOV`` 0x10000, MOS corners) at high energy,
    ``scale = rate_obs / rate_template``.  The template spectrum from the source region, times
    ``scale``, is the particle + average-sky background.

Double subtraction (Arnaud et al. 2002; Nevalainen et al. 2005)
    The local soft X-ray foreground differs from the blank-sky average.  The residual is measured
    in a source-free annulus: ``R = (obs_annulus - scale * template_annulus)`` per unit area, and
    added, scaled by area, to the template: ``B = scale * T_src + R * A_src / A_ann``.  The result
    has non-Poisson counts, so it is written with ``POISSERR = F`` and a propagated ``STAT_ERR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import gti as gtimod
from .events import EventList, flag_mask_for
from .regions import Selection
from .spectra import extract, pi_histogram

__all__ = ["OUT_OF_FOV", "BlankSkyScale", "blanksky_scale", "double_subtracted_background", "oof_rate"]

#: EPIC FLAG bit of events outside the field of view (``XMMEA_16``).
OUT_OF_FOV = 0x10000


def oof_rate(
    evl: EventList,
    *,
    band_kev: tuple[float, float] = (10.0, 12.0),
    pattern_max: int = 12,
    gti: np.ndarray | None = None,
) -> tuple[float, int, float]:
    """Count rate of out-of-field-of-view events in a band.

    Uses events with the ``OUT_OF_FOV`` bit set and no other ``#XMMEA`` bad bit (so the list must
    not have been screened with ``#XMMEA_EM``, which removes them).  Returns
    ``(rate [ct/s], counts, exposure [s])``; exposure is the union GTI (intersected with ``gti``).
    """
    flag = evl["FLAG"].astype(np.int64)
    other = int(flag_mask_for(evl.camera, "xmmea", evl.header) or 0) & ~OUT_OF_FOV
    sel = ((flag & OUT_OF_FOV) != 0) & ((flag & other) == 0) & (evl["PATTERN"] <= pattern_max)
    sel &= (evl["PI"] >= band_kev[0] * 1000.0) & (evl["PI"] <= band_kev[1] * 1000.0)
    g = evl.gti if gti is None else gtimod.intersection(evl.gti, gti)
    sel &= gtimod.mask_in_gti(evl["TIME"], g)
    exp = gtimod.exposure(g)
    n = int(sel.sum())
    if exp <= 0:
        raise ValueError("no good time for the out-of-FOV rate")
    return n / exp, n, exp


@dataclass
class BlankSkyScale:
    """Normalisation of a blank-sky/FWC template to an observation (Nevalainen et al. 2005)."""

    scale: float
    scale_err: float
    obs_rate: float
    template_rate: float
    obs_counts: int
    template_counts: int
    band_kev: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bkg_scale_oof": self.scale,
            "bkg_scale_oof_err": self.scale_err,
            "oof_rate_obs": self.obs_rate,
            "oof_rate_template": self.template_rate,
            "oof_counts_obs": self.obs_counts,
            "oof_counts_template": self.template_counts,
            "oof_band_kev": list(self.band_kev),
        }


def blanksky_scale(
    obs_raw: EventList,
    template_raw: EventList,
    *,
    band_kev: tuple[float, float] = (10.0, 12.0),
    obs_gti: np.ndarray | None = None,
) -> BlankSkyScale:
    """``scale = rate_oof(obs) / rate_oof(template)`` with its Poisson error."""
    r_o, n_o, _ = oof_rate(obs_raw, band_kev=band_kev, gti=obs_gti)
    r_t, n_t, _ = oof_rate(template_raw, band_kev=band_kev)
    if n_o == 0 or n_t == 0:
        raise ValueError(
            f"no out-of-FOV events in {band_kev} keV (observation {n_o}, template {n_t}); "
            "use unscreened event lists (FLAG OUT_OF_FOV kept)"
        )
    s = r_o / r_t
    return BlankSkyScale(
        scale=float(s),
        scale_err=float(s * np.sqrt(1.0 / n_o + 1.0 / n_t)),
        obs_rate=r_o,
        template_rate=r_t,
        obs_counts=n_o,
        template_counts=n_t,
        band_kev=(float(band_kev[0]), float(band_kev[1])),
    )


def double_subtracted_background(
    *,
    obs_clean: EventList,
    template_clean: EventList,
    src: Selection,
    annulus: Selection,
    area_src: float,
    area_ann: float,
    exposure_s: float,
    template_exposure_s: float,
    scale: BlankSkyScale,
    header: dict | None = None,
):
    """Background PHA for the source region: ``scale * T_src + (O_ann - scale * T_ann) * A_src / A_ann``.

    All spectra are first converted to counts expected in the observation's ``exposure_s``
    (template counts times ``exposure_s / template_exposure_s``).  Returns an
    :class:`xmmcore.ogip.PHA` with ``BACKSCAL = area_src`` and ``POISSERR = F``.
    """
    cam = obs_clean.camera
    t_fac = exposure_s / template_exposure_s
    t_src = pi_histogram(template_clean["PI"][src.contains(template_clean["X"], template_clean["Y"])], cam)
    t_ann = pi_histogram(
        template_clean["PI"][annulus.contains(template_clean["X"], template_clean["Y"])], cam
    )
    o_ann = pi_histogram(obs_clean["PI"][annulus.contains(obs_clean["X"], obs_clean["Y"])], cam)
    k = scale.scale * t_fac
    ratio = area_src / area_ann
    counts = k * t_src + (o_ann - k * t_ann) * ratio
    var = k**2 * t_src + (o_ann + k**2 * t_ann) * ratio**2
    pha = extract(
        obs_clean,
        mask=np.zeros(len(obs_clean), bool),
        exposure=exposure_s,
        backscal=area_src,
        header={
            "HDUCLAS2": "BKG",
            "BKGMETH": "blanksky_double",
            "BKGSCALE": float(scale.scale),
            "BKGSCERR": float(scale.scale_err),
            **(header or {}),
        },
    )
    pha.counts = counts
    pha.stat_err = np.sqrt(np.maximum(var, 0.0))
    pha.poisserr = False
    return pha
