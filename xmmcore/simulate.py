"""Synthetic XMM-Newton EPIC observations of galaxy clusters, written in the real on-disk layout.

One simulated ObsID is ``<out_dir>/<obsid>/``::

    pps/P<obsid>PNS003PIEVLI0000.FIT     pn calibrated event list (EVENTS, STDGTI01..12, GTI)
    pps/P<obsid>M1S001MIEVLI0000.FIT     MOS1 (EVENTS, STDGTInn of the live CCDs, GTI)
    pps/P<obsid>M2S002MIEVLI0000.FIT     MOS2
    responses/{pn,mos1,mos2}.{rmf,arf}   the responses the events were folded through (xmmcore.responses)
    truth.json                           every simulated parameter and the expected counts
    meta.json                            what a user would put in a target list (name, ra, dec, z, nh, r500_kpc)

What is in a field
------------------
* **Cluster(s)**: a beta model ``S(r) ~ (1 + (r/rc)^2)^(0.5 - 3 beta)`` truncated at 3 R500 (at least 15 arcmin,
  so a naive local background annulus is contaminated as in real data) around a centre within 1 arcmin of the
  aim point. A third are cool cores (rc 25-70 kpc), a third flat cores (rc 250-420 kpc), the rest in between.
  The spectrum is an absorbed APEC plasma, ``tbabs*apec`` (the AtomDB table shipped in ``xmmcore/data/apec``,
  metal lines included) with abundance 0.2-0.5 solar (angr), evaluated by
  :func:`xmmcore.fitting.models.parse_expression`. R500 follows the R-T relation of Arnaud et al. (2005),
  ``E(z) R500 = 1104 kpc (kT/5 keV)^0.57`` (:data:`R500_RELATION`). kT is drawn in the kT range; the
  luminosity within R500 follows an L-T relation, ``L500(0.1-2.4 keV) = 1.5e44 (kT/5)^3 E(z) erg/s`` with
  0.12 dex scatter, and the redshift (within the z range) is the one at which pn detects a drawn number of
  photons -- so hot clusters lie farther away, as in a flux-limited survey. Fixing ``counts_pn`` sets the norm
  from the counts instead; fixing ``z`` keeps it. ``truth.json`` records L500 (0.1-2.4 and 0.5-2 keV, rest
  frame, within R500) and the same within the fixed ``region_radius_arcmin`` circle.
  ``targets_per_field > 1`` adds serendipitous clusters 6-11 arcmin off axis.
* **Point sources**: ``wabs*powerlaw`` (Gamma ~ 1.8), more than 5 arcmin from every cluster centre, plus in
  half of the fields one 1-2 arcmin from the target's centre (``near_centre``), with a
  King PSF ``(1 + (r/r0)^2)^-1.5``, ``r0 = 4 arcsec`` (FWHM 6 arcsec, HEW 14 arcsec, as the EPIC PSF).
* **Sky background**: cosmic X-ray background ``wabs*powerlaw`` (Gamma 1.46, 10.9 photons/cm^2/s/keV/sr at
  1 keV) plus a soft Galactic foreground ``bremss`` (kT 0.2 keV), uniform on the sky, vignetted.
* **Particle background**: flat over all live CCDs including the out-of-field-of-view corners (FLAG 0x10000
  there), not vignetted, not folded through the ARF/RMF: a flat continuum in PI with the fluorescence lines
  (Al K, Si K for MOS; Al K, Ni K, Cu K, Zn K for pn) and low-energy noise below 0.25 keV; up to 20.5 keV (pn)
  and 15 keV (MOS), i.e. beyond the spectral channel range.
* **Soft-proton flares**: intervals with a boosted rate in all bands including 10-12 keV, inside the field
  of view only, with a flatter vignetting than photons; a fraction ``flare_fraction`` of the exposure.

Every photon of a sky component gets a true energy from the model x on-axis ARF, a position (beta model or
PSF), survives with probability = vignetting x (lands on a live CCD inside the FOV), and gets
``E_obs = E_bin_mid + sigma(E) * N(0, 1)`` -- exactly the redistribution of the written RMF -- so
``PI = floor(1000 E_obs)`` eV. Events with PI < 0 or PI > TLMAX are lost, as in SAS.

Screening convention: all events described above are "good" (FLAG 0, PATTERN <= 4 for pn, <= 12 for MOS:
the ARF's quantum efficiency is the one of that pattern selection). On top, copies of a small fraction of them
are written as *extra* events -- bad FLAG bits (IN_BAD_FRAME, COSMIC_RAY, ON_BADPIX: rejected by #XMMEA_EM/EP
and FLAG==0) and invalid patterns (pn 5-12, MOS 26-31) -- that standard screening removes. Expected counts in
``truth.json`` are for the good events.

Coordinates: sky X/Y in 0.05 arcsec pixels, reference pixel 25921 at the pointing (RA_PNT, DEC_PNT),
RA---TAN/DEC--TAN; DETX/DETY in 0.05 arcsec about the optical axis, rotated by PA_PNT (MOS2 by 90 degrees
more). CCD layouts are approximate (pn 12 CCDs of 64 x 200 pixels of 4.1 arcsec in two rows; MOS 7 CCDs of
600 x 600 pixels of 1.1 arcsec); MOS1 CCD6 is dead after 2005-03-09 and CCD3 after 2012-12-11.

Everything is drawn from ``numpy.random.Generator`` streams spawned from ``SeedSequence([seed, index])``:
the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .constants import SKY_PIXEL_ARCSEC as _SKY_PIXEL_ARCSEC
from .constants import flat_lcdm
from .errors import ConfigError, InputDataError
from .fsutil import atomic_path, atomic_write_json
from .observation import CAMERAS, validate_obsid
from .responses import camera_spec, effective_area, energy_grid, sigma_kev, vignetting

__all__ = [
    "CLUSTER_MODEL",
    "R500_RELATION",
    "SKY_PIXEL_ARCSEC",
    "beta_fraction",
    "SKY_REF_PIXEL",
    "event_file_name",
    "flare_shape",
    "obsid_for",
    "simulate_events",
    "simulate_observation",
    "simulate_survey",
]

SKY_PIXEL_ARCSEC = _SKY_PIXEL_ARCSEC
SKY_REF_PIXEL = 25921.0
_MJDREF = 50814.0  # 1998-01-01T00:00:00 TT
_FOV_RADIUS_ARCMIN = 15.0
_BETA_TRUNC_ARCMIN = 15.0
_PSF_R0_ARCSEC = 4.0
_PSF_ALPHA = 1.5
_PSF_TRUNC_ARCSEC = 300.0
_SP_VIGNETTING_POWER = 0.5  # soft protons: v(theta, 1.5 keV) ** 0.5, flatter than photons
_CXB_NORM_PER_ARCMIN2 = 10.9 / 1.1818e7  # photons/cm^2/s/keV at 1 keV per arcmin^2
_LT_NORM_ERG_S = 1.5e44
_LT_SLOPE = 3.0
_LT_SCATTER_DEX = 0.12
_MC_POINTS = 120_000
_MC_ENERGIES = np.geomspace(0.05, 15.0, 48)

_FILE_TAGS = {"pn": "PNS003PIEVLI0000", "mos1": "M1S001MIEVLI0000", "mos2": "M2S002MIEVLI0000"}
_EXP_IDS = {"pn": "S003", "mos1": "S001", "mos2": "S002"}
_PATTERN_MAX = {"pn": 4, "mos1": 12, "mos2": 12}
_LIVE_FRACTION = {"pn": 0.9929, "mos1": 0.975, "mos2": 0.975}
_FRAME_S = {"pn": 0.0734, "mos1": 2.6, "mos2": 2.6}
_GAIN_EV_PER_ADU = {"pn": 5.0, "mos1": 3.26, "mos2": 3.26}
_SUBMODE = {"pn": "PrimeFullWindow", "mos1": "PrimeFullWindow", "mos2": "PrimeFullWindow"}
_FLAG_OUT_OF_FOV = 0x10000
_BAD_FLAGS = np.array([0x20000, 0x80000, 0x200000], dtype=np.int32)  # IN_BAD_FRAME, COSMIC_RAY, ON_BADPIX
# Quiescent particle background: counts/s/keV/arcmin^2 at 10-12 keV (pn ~0.15 ct/s, MOS ~0.1 ct/s in 10-12 keV).
_QPB_RATE = {"pn": 1.05e-4, "mos1": 6.0e-5, "mos2": 6.0e-5}
_QPB_TOP_KEV = {"pn": 20.4, "mos1": 15.0, "mos2": 15.0}
# Fluorescence lines of the particle background: (energy keV, counts relative to 1 keV of continuum).
_QPB_LINES = {
    "pn": ((1.486, 0.35), (7.47, 0.25), (8.04, 1.2), (8.63, 0.5), (8.90, 0.15)),
    "mos1": ((1.486, 0.9), (1.740, 0.5)),
    "mos2": ((1.486, 0.9), (1.740, 0.5)),
}
_EXTRA_BAD_FLAG_FRACTION = 0.01
_EXTRA_BAD_PATTERN_FRACTION = {"pn": 0.03, "mos1": 0.01, "mos2": 0.01}
# MOS1 lost CCD6 on 2005-03-09 and CCD3 on 2012-12-11 (micrometeoroid events): (MET s, CCD).
_MOS1_DEAD = ((226713664.184, 6), (471571267.184, 3))
_MET_2003 = 157766464.184  # 2003-01-01T00:00:00 UTC
_MET_2020 = 694137669.184  # 2019-12-31T00:00:00 UTC


# ------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class _Layout:
    """CCD rectangles in the detector frame (arcsec about the optical axis)."""

    camera: str
    ccd: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    pixel_arcsec: float
    raw_shape: tuple[int, int]  # (n RAWX, n RAWY)

    def locate(self, dx: np.ndarray, dy: np.ndarray, live: Sequence[int]) -> np.ndarray:
        """CCD number of each position (0 = in a gap, off the array or on a dead CCD)."""
        out = np.zeros(dx.shape, dtype=np.int16)
        for k, ccd in enumerate(self.ccd):
            if int(ccd) not in live:
                continue
            inside = (dx >= self.x0[k]) & (dx < self.x1[k]) & (dy >= self.y0[k]) & (dy < self.y1[k])
            out[inside] = ccd
        return out

    def raw(self, dx: np.ndarray, dy: np.ndarray, ccdnr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RAWX, RAWY (1-based CCD pixels) of positions on CCD ``ccdnr``."""
        idx = np.searchsorted(self.ccd, ccdnr)
        rawx = np.floor((dx - self.x0[idx]) / self.pixel_arcsec).astype(np.int32) + 1
        rawy = np.floor((dy - self.y0[idx]) / self.pixel_arcsec).astype(np.int32) + 1
        return np.clip(rawx, 1, self.raw_shape[0]), np.clip(rawy, 1, self.raw_shape[1])

    def live_area_arcmin2(self, live: Sequence[int]) -> float:
        keep = np.isin(self.ccd, list(live))
        return float(np.sum((self.x1 - self.x0)[keep] * (self.y1 - self.y0)[keep]) / 3600.0)


@cache
def _layout(camera: str) -> _Layout:
    if camera == "pn":
        w, h, gap, qgap = 64 * 4.1, 200 * 4.1, 6.0, 12.0
        # Aim point on CCD4, ~25 pixels (100 arcsec) from the gap between the two rows (as the real pn).
        shift_x, shift_y = -(0.5 * w + 0.5 * gap), -100.0 - 0.5 * qgap
        x0s: list[float] = []
        y0s: list[float] = []
        ccds: list[int] = []
        for row, (y_row, order) in enumerate(((0.5 * qgap, range(6)), (-0.5 * qgap - h, range(5, -1, -1)))):
            for n, col in enumerate(order):
                x0s.append((col - 3) * (w + gap) + 0.5 * gap + shift_x)
                y0s.append(y_row + shift_y)
                ccds.append(row * 6 + n + 1)
        x0 = np.array(x0s)
        y0 = np.array(y0s)
        return _Layout("pn", np.array(ccds), x0, x0 + w, y0, y0 + h, 4.1, (64, 200))
    s, gap = 600 * 1.1, 10.0
    step = s + gap
    centres = {
        1: (0.0, 0.0),
        2: (0.0, step),
        3: (-step, 0.5 * step),
        4: (-step, -0.5 * step),
        5: (0.0, -step),
        6: (step, -0.5 * step),
        7: (step, 0.5 * step),
    }
    ccd = np.arange(1, 8)
    cx = np.array([centres[int(c)][0] for c in ccd])
    cy = np.array([centres[int(c)][1] for c in ccd])
    return _Layout(camera, ccd, cx - s / 2, cx + s / 2, cy - s / 2, cy + s / 2, 1.1, (600, 600))


def _live_ccds(camera: str, tstart: float) -> tuple[int, ...]:
    ccds = [int(c) for c in _layout(camera).ccd]
    if camera == "mos1":
        ccds = [c for c in ccds if not any(tstart >= t and c == dead for t, dead in _MOS1_DEAD)]
    return tuple(ccds)


def _rotation_deg(camera: str, pa_deg: float) -> float:
    return pa_deg + (90.0 if camera == "mos2" else 0.0)


def _sky_to_det(ox: np.ndarray, oy: np.ndarray, rot_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky offsets from the optical axis (arcsec) -> detector frame (arcsec)."""
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    return c * ox + s * oy, -s * ox + c * oy


# ------------------------------------------------------------------------------------------ sampling
def _sample_beta(rng: np.random.Generator, n: int, rc: float, beta: float, r_max: float) -> np.ndarray:
    """Radii (same unit as rc) of a 2-D beta model truncated at r_max (inverse CDF)."""
    a = 1.5 - 3.0 * beta  # exponent of the cumulative profile, < 0 for beta > 0.5
    u_max = 1.0 - (1.0 + (r_max / rc) ** 2) ** a
    u = rng.random(n) * u_max
    return rc * np.sqrt((1.0 - u) ** (1.0 / a) - 1.0)


def _sample_king(rng: np.random.Generator, n: int) -> np.ndarray:
    """Radii (arcsec) of the King PSF (1 + (r/r0)^2)^-alpha, truncated at _PSF_TRUNC_ARCSEC."""
    a = 1.0 - _PSF_ALPHA
    u_max = 1.0 - (1.0 + (_PSF_TRUNC_ARCSEC / _PSF_R0_ARCSEC) ** 2) ** a
    u = rng.random(n) * u_max
    return _PSF_R0_ARCSEC * np.sqrt((1.0 - u) ** (1.0 / a) - 1.0)


def _polar(rng: np.random.Generator, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    phi = rng.random(r.size) * 2.0 * np.pi
    return r * np.cos(phi), r * np.sin(phi)


def _uniform_disk(rng: np.random.Generator, n: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    return _polar(rng, radius * np.sqrt(rng.random(n)))


def _times_in_gti(rng: np.random.Generator, n: int, gti: np.ndarray) -> np.ndarray:
    lengths = gti[:, 1] - gti[:, 0]
    k = rng.choice(gti.shape[0], size=n, p=lengths / lengths.sum())
    return gti[k, 0] + rng.random(n) * lengths[k]


def _sample_bins(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), weights.size - 1)


# ------------------------------------------------------------------------------------------ models
@cache
def _model(expr: str):
    from .fitting.models import parse_expression

    return parse_expression(expr)


CLUSTER_MODEL = "tbabs*apec"
_CLUSTER_PARAMS = ("tbabs_1.nH", "apec_1.kT", "apec_1.Abundanc", "apec_1.Redshift", "apec_1.norm")


def _cluster_values(p: Mapping[str, float], norm: float) -> list[float]:
    # tbabs(nH) * apec(kT, Abundanc, Redshift, norm): the AtomDB table, metal lines included
    return [p["nh"], p["kT"], p["abundance"], p["z"], norm]


def _cluster_photon_flux(p: Mapping[str, float], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return _model(CLUSTER_MODEL).evaluate(lo, hi, _cluster_values(p, p["norm"]))


def _powerlaw_flux(nh: float, index: float, norm: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return _model("wabs*powerlaw").evaluate(lo, hi, [nh, index, norm])


def _sky_flux_per_arcmin2(
    nh: float, cxb_scale: float, gal_norm: float, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    cxb = _powerlaw_flux(nh, 1.46, _CXB_NORM_PER_ARCMIN2 * cxb_scale, lo, hi)
    return cxb + _model("bremss").evaluate(lo, hi, [0.2, gal_norm])


def _galactic_norm(nh: float, ratio: float) -> float:
    """bremss(0.2 keV) norm per arcmin^2 whose 0.5-1 keV photon flux is ``ratio`` x the absorbed CXB's."""
    lo, hi = np.array([0.5]), np.array([1.0])
    cxb = _powerlaw_flux(nh, 1.46, _CXB_NORM_PER_ARCMIN2, lo, hi)[0]
    per_norm = _model("bremss").evaluate(lo, hi, [0.2, 1.0])[0]
    return float(ratio * cxb / per_norm)


def _qpb_density(camera: str, e_kev: np.ndarray) -> np.ndarray:
    """Particle-background counts/s/keV/arcmin^2 at PI energy ``e_kev``."""
    cont = np.where(e_kev >= 0.15, (np.maximum(e_kev, 0.15) / 11.0) ** -0.15, 0.0)
    lines = sum(
        w
        * np.exp(-0.5 * ((e_kev - e0) / sigma_kev(camera, e0)) ** 2)
        / (np.sqrt(2 * np.pi) * sigma_kev(camera, e0))
        for e0, w in _QPB_LINES[camera]
    )
    noise = np.where((e_kev > 0.02) & (e_kev < 0.25), 3.0 * np.exp(-e_kev / 0.05), 0.0)
    dens = cont + lines + noise
    return _QPB_RATE[camera] * np.where(e_kev <= _QPB_TOP_KEV[camera], dens, 0.0)


def _sp_density(camera: str, e_kev: np.ndarray) -> np.ndarray:
    """Soft-proton spectrum (counts per keV) normalised to 1 count in 10-12 keV."""
    dens = np.where((e_kev >= 0.15) & (e_kev <= _QPB_TOP_KEV[camera]), np.maximum(e_kev, 0.15) ** -0.5, 0.0)
    norm = (12.0**0.5 - 10.0**0.5) / 0.5
    return dens / norm


def _pi_grid(camera: str) -> tuple[np.ndarray, np.ndarray]:
    """Fine PI grid (keV): 5 eV bins up to TLMAX."""
    top = camera_spec(camera).pi_max / 1000.0
    edges = np.arange(0.0, top + 0.005, 0.005)
    return edges[:-1], edges[1:]


# ------------------------------------------------------------------------------------------ field
def obsid_for(seed: int, index: int) -> str:
    """The 10-digit ObsID of field ``index`` of a survey simulated with ``seed`` (``09SSSIII01``)."""
    return f"09{seed % 1000:03d}{index % 1000:03d}01"


def event_file_name(obsid: str, camera: str) -> str:
    """PPS name of the calibrated event list of ``camera`` (e.g. ``P0900100101PNS003PIEVLI0000.FIT``)."""
    return f"P{obsid}{_FILE_TAGS[camera]}.FIT"


def _ra_dec_to_pix(ra: np.ndarray | float, dec: np.ndarray | float, ra0: float, dec0: float):
    """Gnomonic projection onto sky pixels (RA---TAN/DEC--TAN, 0.05 arcsec, reference 25921 at ra0/dec0)."""
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    ra0_r, dec0_r = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(dec0_r) * np.sin(dec_r) + np.cos(dec0_r) * np.cos(dec_r) * np.cos(ra_r - ra0_r)
    xi = np.cos(dec_r) * np.sin(ra_r - ra0_r) / cosc
    eta = (np.cos(dec0_r) * np.sin(dec_r) - np.sin(dec0_r) * np.cos(dec_r) * np.cos(ra_r - ra0_r)) / cosc
    scale = 3600.0 / SKY_PIXEL_ARCSEC
    return SKY_REF_PIXEL - np.degrees(xi) * scale, SKY_REF_PIXEL + np.degrees(eta) * scale


def _pix_to_ra_dec(x: np.ndarray | float, y: np.ndarray | float, ra0: float, dec0: float):
    scale = 3600.0 / SKY_PIXEL_ARCSEC
    xi = -np.radians((np.asarray(x, float) - SKY_REF_PIXEL) / scale)
    eta = np.radians((np.asarray(y, float) - SKY_REF_PIXEL) / scale)
    ra0_r, dec0_r = math.radians(ra0), math.radians(dec0)
    den = np.cos(dec0_r) - eta * np.sin(dec0_r)
    ra = ra0_r + np.arctan2(xi, den)
    dec = np.arctan2(np.sin(dec0_r) + eta * np.cos(dec0_r), np.hypot(xi, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


R500_RELATION = (
    "Arnaud, Pointecouteau & Pratt (2005, A&A 441, 893), R-T for T > 3.5 keV: "
    "E(z) R500 = 1104 kpc (kT / 5 keV)^0.57 (h70), E(z) = sqrt(Om0 (1+z)^3 + 1 - Om0)"
)


def _ez(z: float, om0: float = 0.3) -> float:
    """E(z) = H(z)/H0 for a flat LambdaCDM cosmology."""
    return math.sqrt(om0 * (1 + z) ** 3 + 1 - om0)


def _r500_kpc(kt: float, z: float, h0: float = 70.0, om0: float = 0.3) -> float:
    """R500 [kpc] from the R-T relation of Arnaud et al. (2005): E(z) R500 = 1104 kpc (kT / 5 keV)^0.57."""
    return 1104.0 * (kt / 5.0) ** 0.57 / _ez(z, om0) * (70.0 / h0)


def beta_fraction(r: float, rc: float, beta: float, r_max: float) -> float:
    """Fraction of a projected beta model truncated at ``r_max`` that falls within radius ``r``."""
    a = 1.5 - 3.0 * beta
    r = min(r, r_max)
    return (1.0 - (1.0 + (r / rc) ** 2) ** a) / (1.0 - (1.0 + (r_max / rc) ** 2) ** a)


@lru_cache(maxsize=1)
def _cosmology():
    return flat_lcdm()


def _kpc_per_arcsec(z: float) -> float:
    return float(_cosmology().kpc_proper_per_arcmin(z).value / 60.0)


# Core types: (probability, rc range kpc, beta range). Cool cores are compact and bright, flat cores wide.
_CORE_TYPES = {
    "cool": (1.0 / 3.0, (25.0, 70.0), (0.60, 0.72)),
    "regular": (1.0 / 3.0, (100.0, 220.0), (0.60, 0.75)),
    "flat": (1.0 / 3.0, (250.0, 420.0), (0.65, 0.85)),
}
_RC_ARCSEC_RANGE = (4.0, 300.0)


def _rc_arcsec(rc_kpc: float, z: float) -> float:
    return float(np.clip(rc_kpc / _kpc_per_arcsec(z), *_RC_ARCSEC_RANGE))


def _beta_r_max_arcsec(p: Mapping[str, float]) -> float:
    """Truncation radius of the beta model: 3 R500 (at least 15 arcmin), so it reaches any local background."""
    return max(_BETA_TRUNC_ARCMIN * 60.0, 3.0 * p["r500_kpc"] / _kpc_per_arcsec(p["z"]))


def _draw_cluster(
    rng: np.random.Generator,
    *,
    z_range,
    kt_range,
    nh: float,
    counts_range,
    centre_xy: tuple[float, float],
    overrides: Mapping[str, float] | None,
) -> dict[str, float]:
    kinds = list(_CORE_TYPES)
    kind = kinds[int(rng.choice(len(kinds), p=[_CORE_TYPES[k][0] for k in kinds]))]
    _, rc_range, beta_range = _CORE_TYPES[kind]
    p: dict[str, Any] = {
        "kT": float(rng.uniform(*kt_range)),
        "z": float(rng.uniform(*z_range)),
        "abundance": float(rng.uniform(0.2, 0.5)),
        "rc_kpc": float(rng.uniform(*rc_range)),
        "beta": float(rng.uniform(*beta_range)),
        "counts_pn": float(math.exp(rng.uniform(math.log(counts_range[0]), math.log(counts_range[1])))),
        "nh": nh,
        "core": kind,
    }
    p["lt_scatter_dex"] = float(rng.normal(0.0, _LT_SCATTER_DEX))
    # With a given counts_pn the norm follows the counts; else from the L-T relation (z chosen to give ~counts_pn).
    p["norm_from_counts"] = 1.0 if "counts_pn" in (overrides or {}) else 0.0
    p["z_fixed"] = 1.0 if "z" in (overrides or {}) else 0.0
    p["z_min"], p["z_max"] = float(z_range[0]), float(z_range[1])
    p.update({k: (str(v) if k == "core" else float(v)) for k, v in (overrides or {}).items()})
    p["rc_kpc_drawn"] = p["rc_kpc"]
    p["rc_fixed"] = 1.0 if "rc_arcsec" in (overrides or {}) else 0.0
    if "rc_arcsec" not in (overrides or {}):
        p["rc_arcsec"] = _rc_arcsec(p["rc_kpc"], p["z"])
    p["rc_kpc"] = p["rc_arcsec"] * _kpc_per_arcsec(p["z"])
    p["r500_kpc"] = _r500_kpc(p["kT"], p["z"])
    p["x"], p["y"] = centre_xy
    return p


@dataclass
class _Field:
    obsid: str
    ra_pnt: float
    dec_pnt: float
    pa: float
    tstart: float
    ontime: float
    gti: np.ndarray
    nh: float
    clusters: list[dict[str, Any]]
    point_sources: list[dict[str, Any]]
    cxb_scale: float
    gal_norm: float
    qpb_scale: dict[str, float]
    flares: list[dict[str, float]]
    flare_peak_10_12: dict[str, float]


def _ks_range(exposure_ks: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(exposure_ks, (int, float, np.integer, np.floating)):
        return float(exposure_ks), float(exposure_ks)
    lo, hi = exposure_ks
    return float(lo), float(hi)


def _draw_field(
    rng: np.random.Generator,
    obsid: str,
    *,
    exposure_ks,
    targets_per_field: int,
    point_sources: float,
    flare_fraction: float,
    counts_range,
    kt_range,
    z_range,
    nh_range,
    cluster_overrides: Mapping[str, float] | None,
) -> _Field:
    ra_pnt = float(rng.uniform(0.0, 360.0))
    dec_pnt = float(
        np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-60)), math.sin(math.radians(70)))))
    )
    pa = float(rng.uniform(0.0, 360.0))
    tstart = float(np.floor(rng.uniform(_MET_2003, _MET_2020)))
    lo_ks, hi_ks = _ks_range(exposure_ks)
    ontime_target = float(rng.uniform(lo_ks, hi_ks)) * 1000.0
    # A few short telemetry drop-outs split the GTI.
    n_gaps = int(rng.integers(0, 4))
    cuts = np.sort(rng.uniform(0.05, 0.95, n_gaps)) * ontime_target
    lengths = rng.uniform(5.0, 60.0, n_gaps)
    starts, stops, t = [], [], tstart
    for c, ln in zip(cuts, lengths):
        # two cuts closer than a drop-out (short exposures): the next one waits for the last to end,
        # so no GTI starts after it stops (fields without such a pair are unchanged)
        c = max(float(c), t - tstart + 1.0)
        starts.append(t)
        stops.append(tstart + c)
        t = tstart + c + ln
    starts.append(t)
    stops.append(tstart + ontime_target + float(lengths.sum()))
    gti = np.column_stack([starts, stops])
    ontime = float(np.sum(gti[:, 1] - gti[:, 0]))
    nh = float(math.exp(rng.uniform(math.log(nh_range[0]), math.log(nh_range[1]))))

    clusters = []
    for k in range(max(1, targets_per_field)):
        if k == 0:
            r_off, theta = rng.uniform(0.0, 60.0), rng.uniform(0, 2 * np.pi)
            cr = counts_range
            ov = cluster_overrides
        else:
            r_off, theta = rng.uniform(360.0, 660.0), rng.uniform(0, 2 * np.pi)
            cr = (counts_range[0] * 0.3, counts_range[1] * 0.3)
            ov = None
        xy = (
            SKY_REF_PIXEL + r_off * math.cos(theta) / SKY_PIXEL_ARCSEC,
            SKY_REF_PIXEL + r_off * math.sin(theta) / SKY_PIXEL_ARCSEC,
        )
        clusters.append(
            _draw_cluster(
                rng, z_range=z_range, kt_range=kt_range, nh=nh, counts_range=cr, centre_xy=xy, overrides=ov
            )
        )

    n_ps = int(rng.poisson(point_sources)) if point_sources > 0 else 0
    pss: list[dict[str, float]] = []
    while len(pss) < n_ps:
        ox, oy = _uniform_disk(rng, 1, 13.0 * 60.0)
        x = SKY_REF_PIXEL + ox[0] / SKY_PIXEL_ARCSEC
        y = SKY_REF_PIXEL + oy[0] / SKY_PIXEL_ARCSEC
        if all(math.hypot(x - c["x"], y - c["y"]) * SKY_PIXEL_ARCSEC > 300.0 for c in clusters):
            pss.append(
                {
                    "x": float(x),
                    "y": float(y),
                    "index": float(rng.normal(1.8, 0.2)),
                    "counts_pn": float(50.0 * (1.0 - rng.random()) ** (-1.0 / 1.2)),
                }
            )
    for ps in pss:
        ps["counts_pn"] = min(ps["counts_pn"], 3000.0)
    if point_sources > 0 and rng.random() < 0.5:
        # An AGN seen through the cluster, 1-2 arcmin from the target's centre (as in real fields).
        c0 = clusters[0]
        r_ps, phi = rng.uniform(60.0, 120.0), rng.uniform(0.0, 2 * np.pi)
        pss.append(
            {
                "x": float(c0["x"] + r_ps * math.cos(phi) / SKY_PIXEL_ARCSEC),
                "y": float(c0["y"] + r_ps * math.sin(phi) / SKY_PIXEL_ARCSEC),
                "index": float(rng.normal(1.8, 0.2)),
                "counts_pn": float(math.exp(rng.uniform(math.log(150.0), math.log(1500.0)))),
                "near_centre": 1.0,
            }
        )

    flares: list[dict[str, float]] = []
    if flare_fraction > 0:
        n_fl = int(rng.integers(1, 4))
        durations = rng.dirichlet(np.ones(n_fl)) * flare_fraction * ontime
        free = ontime - durations.sum()
        gaps = rng.dirichlet(np.ones(n_fl + 1)) * free
        t = tstart
        for d, g in zip(durations, gaps[:-1]):
            t += g
            flares.append(
                {"tstart": float(t), "tstop": float(t + d), "peak_factor": float(rng.uniform(2.0, 6.0))}
            )
            t += d
    qpb_scale = {cam: float(rng.uniform(0.8, 1.4)) for cam in CAMERAS}
    return _Field(
        obsid=obsid,
        ra_pnt=ra_pnt,
        dec_pnt=dec_pnt,
        pa=pa,
        tstart=tstart,
        ontime=ontime,
        gti=gti,
        nh=nh,
        clusters=clusters,
        point_sources=pss,
        cxb_scale=float(rng.uniform(0.85, 1.15)),
        gal_norm=_galactic_norm(nh, float(rng.uniform(0.4, 0.8))),
        qpb_scale=qpb_scale,
        flares=flares,
        flare_peak_10_12={},
    )


def _flare_profile(field: _Field, t: np.ndarray) -> np.ndarray:
    """Flare shape (0..1 per flare x peak_factor summed) at times ``t``: flat top, 10% linear ramps."""
    return flare_shape(field.flares, t)


def flare_shape(flares: Sequence[Mapping[str, float]], t: np.ndarray) -> np.ndarray:
    """Soft-proton rate of the ``flares`` of a ``truth.json`` at times ``t`` [s], in units of the quiescent rate.

    Each flare is flat-topped at ``peak_factor`` with linear ramps of 10% of its length; the events of
    a camera are drawn in proportion to this (inside the input GTIs), so integrating it over the
    removed and the input good time gives the share of flare *counts* a filter removed.
    """
    t = np.asarray(t, dtype=float)
    out = np.zeros_like(t)
    for fl in flares:
        d = fl["tstop"] - fl["tstart"]
        ramp = max(0.1 * d, 1.0)
        up = np.clip((t - fl["tstart"]) / ramp, 0.0, 1.0)
        down = np.clip((fl["tstop"] - t) / ramp, 0.0, 1.0)
        out += fl["peak_factor"] * np.minimum(up, down)
    return out


# ------------------------------------------------------------------------------------------ per camera
@dataclass
class _Events:
    dx: np.ndarray  # detector frame, arcsec
    dy: np.ndarray
    ox: np.ndarray  # sky offsets from the optical axis, arcsec (X direction in pixels * 0.05)
    oy: np.ndarray
    pi: np.ndarray
    time: np.ndarray
    ccd: np.ndarray
    kind: np.ndarray  # 0 photon, 1 particle, 2 soft proton


class _CameraSim:
    """Samples the good events of one camera for one field, and the expected counts in a region."""

    def __init__(self, field: _Field, camera: str, rng: np.random.Generator, mc_rng: np.random.Generator):
        self.field = field
        self.camera = camera
        self.rng = rng
        self.mc_rng = mc_rng
        self.layout = _layout(camera)
        self.live = _live_ccds(camera, field.tstart)
        self.rot = _rotation_deg(camera, field.pa)
        self.lo, self.hi = energy_grid(camera)
        self.mid = 0.5 * (self.lo + self.hi)
        self.sig = sigma_kev(camera, self.mid)
        self.area = effective_area(camera, self.mid)
        # GTI edges on the camera's frame grid, so frame-time stamps stay inside the GTIs.
        frame = _FRAME_S[camera]
        k0 = np.ceil((field.gti[:, 0] - field.tstart) / frame - 1e-9)
        k1 = np.floor((field.gti[:, 1] - field.tstart) / frame + 1e-9)
        self._frames = (k0, k1)
        self.gti = np.column_stack([field.tstart + k0 * frame, field.tstart + k1 * frame])
        self.ontime = float(np.sum(self.gti[:, 1] - self.gti[:, 0]))
        self.livetime = self.ontime * _LIVE_FRACTION[camera]
        self.parts: list[_Events] = []
        self.sp_acceptance = float("nan")  # fraction of soft protons detected (set by expected())

    # -- geometry helpers
    def _accept(
        self, ox: np.ndarray, oy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        dx, dy = _sky_to_det(ox, oy, self.rot)
        ccd = self.layout.locate(dx, dy, self.live)
        in_fov = np.hypot(dx, dy) <= _FOV_RADIUS_ARCMIN * 60.0
        return dx, dy, ccd, (ccd > 0) & in_fov

    def _weights(
        self, ox: np.ndarray, oy: np.ndarray, region: tuple[float, float, float] | None, *, sp: bool = False
    ) -> np.ndarray:
        """Mean over positions of live x vignetting(E) [x in region], on the fine energy grid."""
        _, _, _, ok = self._accept(ox, oy)
        if region is not None:
            cx, cy, r = region
            ok &= np.hypot(ox - cx, oy - cy) <= r
        theta = np.hypot(ox, oy)[ok] / 60.0
        if sp:
            return np.full(
                self.mid.shape, float(np.sum(vignetting(theta, 1.5) ** _SP_VIGNETTING_POWER)) / ox.size
            )
        coarse = np.array([np.sum(vignetting(theta, e)) for e in _MC_ENERGIES]) / ox.size
        return np.interp(self.mid, _MC_ENERGIES, coarse)

    def _band_prob(self, band: tuple[float, float]) -> np.ndarray:
        from scipy.special import ndtr

        return ndtr((band[1] - self.mid) / self.sig) - ndtr((band[0] - self.mid) / self.sig)

    # -- sky photons
    def _photons(self, lam: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> None:
        """Thin ``len(ox)`` photons with true-energy bin weights ``lam`` by vignetting and live area; keep them."""
        rng = self.rng
        n = ox.size
        ebin = _sample_bins(rng, n, lam)
        dx, dy, ccd, ok = self._accept(ox, oy)
        theta = np.hypot(ox, oy) / 60.0
        ok &= rng.random(n) < vignetting(theta, self.mid[ebin])
        e_obs = self.mid[ebin[ok]] + self.sig[ebin[ok]] * rng.standard_normal(int(ok.sum()))
        pi = np.floor(e_obs * 1000.0)
        m = ok.sum()
        self.parts.append(
            _Events(
                dx[ok],
                dy[ok],
                ox[ok],
                oy[ok],
                pi,
                _times_in_gti(rng, m, self.gti),
                ccd[ok],
                np.zeros(m, np.int8),
            )
        )

    def cluster_lambda(self, p: Mapping[str, float]) -> np.ndarray:
        return _cluster_photon_flux(p, self.lo, self.hi) * self.area * self.livetime

    def cluster_positions(self, rng: np.random.Generator, p: Mapping[str, float], n: int):
        r = _sample_beta(rng, n, p["rc_arcsec"], p["beta"], _beta_r_max_arcsec(p))
        ox, oy = _polar(rng, r)
        px, py = _polar(rng, _sample_king(rng, n))
        return (
            ox + px + (p["x"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
            oy + py + (p["y"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
        )

    def ps_positions(self, rng: np.random.Generator, ps: Mapping[str, float], n: int):
        px, py = _polar(rng, _sample_king(rng, n))
        return (
            px + (ps["x"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
            py + (ps["y"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
        )

    def ps_lambda(self, ps: Mapping[str, float]) -> np.ndarray:
        return (
            _powerlaw_flux(self.field.nh, ps["index"], ps["norm"], self.lo, self.hi)
            * self.area
            * self.livetime
        )

    def sky_lambda(self) -> np.ndarray:
        """Sky photons (all of the FOV disk, before vignetting)."""
        f = self.field
        per = _sky_flux_per_arcmin2(f.nh, f.cxb_scale, f.gal_norm, self.lo, self.hi)
        return per * self.area * self.livetime * math.pi * _FOV_RADIUS_ARCMIN**2

    def simulate_sky(self, scale: float = 1.0) -> None:
        f = self.field
        rng = self.rng
        for c in f.clusters:
            lam = self.cluster_lambda(c) * scale
            n = int(rng.poisson(lam.sum()))
            self._photons(lam, *self.cluster_positions(rng, c, n))
        for ps in f.point_sources:
            lam = self.ps_lambda(ps) * scale
            n = int(rng.poisson(lam.sum()))
            self._photons(lam, *self.ps_positions(rng, ps, n))
        lam = self.sky_lambda() * scale
        n = int(rng.poisson(lam.sum()))
        self._photons(lam, *_uniform_disk(rng, n, _FOV_RADIUS_ARCMIN * 60.0))

    # -- particles and soft protons (sampled directly in PI)
    def _pi_events(
        self, n: int, density: np.ndarray, pi_lo: np.ndarray, ox, oy, dx, dy, ccd, times, kind
    ) -> None:
        b = _sample_bins(self.rng, n, density)
        pi = np.floor((pi_lo[b] + self.rng.random(n) * 0.005) * 1000.0)
        self.parts.append(_Events(dx, dy, ox, oy, pi, times, ccd, np.full(n, kind, np.int8)))

    def qpb_rate(self) -> float:
        """Particle counts/s over the live CCDs (all PI)."""
        lo, hi = _pi_grid(self.camera)
        dens = _qpb_density(self.camera, 0.5 * (lo + hi)) * self.field.qpb_scale[self.camera]
        return float(np.sum(dens * (hi - lo)) * self.layout.live_area_arcmin2(self.live))

    def simulate_particles(self, scale: float = 1.0) -> None:
        rng = self.rng
        lo, hi = _pi_grid(self.camera)
        dens = _qpb_density(self.camera, 0.5 * (lo + hi))
        n = int(rng.poisson(self.qpb_rate() * self.livetime * scale))
        lay = self.layout
        keep = np.isin(lay.ccd, list(self.live))
        areas = ((lay.x1 - lay.x0) * (lay.y1 - lay.y0))[keep]
        k = np.flatnonzero(keep)[_sample_bins(rng, n, areas)]
        dx = lay.x0[k] + rng.random(n) * (lay.x1 - lay.x0)[k]
        dy = lay.y0[k] + rng.random(n) * (lay.y1 - lay.y0)[k]
        ox, oy = _sky_to_det(dx, dy, -self.rot)
        times = _times_in_gti(rng, n, self.gti)
        self._pi_events(n, dens * (hi - lo), lo, ox, oy, dx, dy, lay.ccd[k].astype(np.int16), times, 1)

    def _flare_grid(self) -> tuple[np.ndarray, np.ndarray]:
        f = self.field
        edges = np.arange(self.gti[0, 0], self.gti[-1, 1] + 10.0, 10.0)
        t = 0.5 * (edges[:-1] + edges[1:])
        ingti = np.zeros(t.size, bool)
        for a, b in self.gti:
            ingti |= (t >= a) & (t < b)
        return t, _flare_profile(f, t) * ingti * 10.0 * _LIVE_FRACTION[self.camera]

    def sp_emitted_10_12(self) -> float:
        """Soft-proton 10-12 keV rate (ct/s) emitted over the FOV disk at a flare's peak (before thinning)."""
        lo, hi = _pi_grid(self.camera)
        q = _qpb_density(self.camera, 0.5 * (lo + hi)) * self.field.qpb_scale[self.camera]
        band = (lo >= 10.0) & (hi <= 12.0)
        quiescent = float(np.sum((q * (hi - lo))[band])) * self.layout.live_area_arcmin2(self.live)
        return quiescent  # peak_factor multiplies the quiescent particle rate in 10-12 keV

    def simulate_flares(self, scale: float = 1.0) -> None:
        if not self.field.flares:
            return
        rng = self.rng
        t, w = self._flare_grid()
        n = int(rng.poisson(w.sum() * self.sp_emitted_10_12() * scale / self._sp_band_fraction()))
        k = _sample_bins(rng, n, w)
        times = t[k] + (rng.random(n) - 0.5) * 10.0
        ox, oy = _uniform_disk(rng, n, _FOV_RADIUS_ARCMIN * 60.0)
        dx, dy, ccd, ok = self._accept(ox, oy)
        ok &= rng.random(n) < vignetting(np.hypot(ox, oy) / 60.0, 1.5) ** _SP_VIGNETTING_POWER
        lo, hi = _pi_grid(self.camera)
        dens = _sp_density(self.camera, 0.5 * (lo + hi)) * (hi - lo)
        m = int(ok.sum())
        self._pi_events(m, dens, lo, ox[ok], oy[ok], dx[ok], dy[ok], ccd[ok], times[ok], 2)

    def _sp_band_fraction(self) -> float:
        lo, hi = _pi_grid(self.camera)
        dens = _sp_density(self.camera, 0.5 * (lo + hi)) * (hi - lo)
        return float(dens[(lo >= 10.0) & (hi <= 12.0)].sum() / dens.sum())

    # -- expected counts
    def expected(self, region: tuple[float, float, float], band: tuple[float, float]) -> dict[str, float]:
        """Expected good events in ``region`` (sky offsets arcsec: cx, cy, r) and PI ``band`` (keV)."""
        f = self.field
        mc = self.mc_rng
        bprob = self._band_prob(band)
        out: dict[str, float] = {}
        total = 0.0
        for i, c in enumerate(f.clusters):
            ox, oy = self.cluster_positions(mc, c, _MC_POINTS)
            val = float(np.sum(self.cluster_lambda(c) * self._weights(ox, oy, region) * bprob))
            out[f"cluster_{i}" if i else "cluster"] = val
            total += val
        ps_total = 0.0
        for ps in f.point_sources:
            ox, oy = self.ps_positions(mc, ps, _MC_POINTS // 8)
            ps_total += float(np.sum(self.ps_lambda(ps) * self._weights(ox, oy, region) * bprob))
        out["point_sources"] = ps_total
        ox, oy = _uniform_disk(mc, _MC_POINTS, _FOV_RADIUS_ARCMIN * 60.0)
        out["sky_background"] = float(np.sum(self.sky_lambda() * self._weights(ox, oy, region) * bprob))
        # particles: uniform on live CCDs -> live area in the region x density in band
        cx, cy, r = region
        rx, ry = _uniform_disk(mc, _MC_POINTS, r)
        _, _, ccd, _ = self._accept(rx + cx, ry + cy)
        area_live = math.pi * (r / 60.0) ** 2 * float(np.mean(ccd > 0))
        lo, hi = _pi_grid(self.camera)
        dens = _qpb_density(self.camera, 0.5 * (lo + hi)) * f.qpb_scale[self.camera] * (hi - lo)
        inband = (lo >= band[0]) & (hi <= band[1])
        out["particle_background"] = float(dens[inband].sum() * area_live * self.livetime)
        self.sp_acceptance = float(self._weights(ox, oy, None, sp=True)[0])
        if f.flares:
            _, w = self._flare_grid()
            n_emit = w.sum() * self.sp_emitted_10_12() / self._sp_band_fraction()
            frac = self._weights(ox, oy, region, sp=True)[0]
            sp = _sp_density(self.camera, 0.5 * (lo + hi)) * (hi - lo)
            out["flares"] = float(n_emit * frac * sp[inband].sum() / sp.sum())
        else:
            out["flares"] = 0.0
        out["total"] = total + sum(
            out[k] for k in ("point_sources", "sky_background", "particle_background", "flares")
        )
        return out

    def expected_cluster_detected(self, p: Mapping[str, float]) -> float:
        """Expected detected photons of cluster ``p`` (all energies, all the detector)."""
        ox, oy = self.cluster_positions(self.mc_rng, p, _MC_POINTS)
        return float(np.sum(self.cluster_lambda(p) * self._weights(ox, oy, None)))

    # -- assemble
    def events(self) -> dict[str, np.ndarray]:
        """All events (good + extra) as XMM columns, sorted by time."""
        rng = self.rng
        cam = self.camera
        ev = _Events(
            *(
                np.concatenate([getattr(p, k) for p in self.parts])
                for k in ("dx", "dy", "ox", "oy", "pi", "time", "ccd", "kind")
            )
        )
        spec = camera_spec(cam)
        valid = (ev.pi >= 0) & (ev.pi <= spec.pi_max)
        ev = _Events(*(getattr(ev, k)[valid] for k in ("dx", "dy", "ox", "oy", "pi", "time", "ccd", "kind")))
        n = ev.pi.size
        e_kev = ev.pi / 1000.0
        flag = np.zeros(n, np.int32)
        flag[np.hypot(ev.dx, ev.dy) > _FOV_RADIUS_ARCMIN * 60.0] = _FLAG_OUT_OF_FOV
        pattern = _good_patterns(rng, cam, e_kev, ev.kind)
        # extra events: copies with bad FLAG bits, and with invalid patterns
        n_bad = int(rng.binomial(n, _EXTRA_BAD_FLAG_FRACTION))
        i_bad = rng.integers(0, n, n_bad)
        n_pat = int(rng.binomial(n, _EXTRA_BAD_PATTERN_FRACTION[cam]))
        i_pat = rng.integers(0, n, n_pat)
        idx = np.concatenate([np.arange(n), i_bad, i_pat])
        flag = np.concatenate([flag, flag[i_bad] | rng.choice(_BAD_FLAGS, n_bad), flag[i_pat]])
        bad_pat = (rng.integers(5, 13, n_pat) if cam == "pn" else rng.integers(26, 32, n_pat)).astype(
            np.uint8
        )
        pattern = np.concatenate([pattern, pattern[i_bad], bad_pat])
        order = np.argsort(ev.time[idx], kind="stable")
        idx, flag, pattern = idx[order], flag[order], pattern[order]
        frame = _FRAME_S[cam]
        t0 = self.field.tstart
        t_raw = ev.time[idx]
        k = np.floor((t_raw - t0) / frame)
        g = np.clip(np.searchsorted(self.gti[:, 0], t_raw, side="right") - 1, 0, self.gti.shape[0] - 1)
        k = np.clip(k, self._frames[0][g], self._frames[1][g] - 1)
        time = t0 + (k + 0.5) * frame
        ccd = ev.ccd[idx].astype(np.uint8)
        rawx, rawy = self.layout.raw(ev.dx[idx], ev.dy[idx], ccd)
        gain = _GAIN_EV_PER_ADU[cam] * (1.0 + 0.01 * np.sin(1.7 * ccd))
        pi = ev.pi[idx]
        pha = np.clip(np.round(pi / gain), 0, 4095)
        x = np.round(SKY_REF_PIXEL + ev.ox[idx] / SKY_PIXEL_ARCSEC)
        y = np.round(SKY_REF_PIXEL + ev.oy[idx] / SKY_PIXEL_ARCSEC)
        return {
            "TIME": time.astype(np.float64),
            "RAWX": rawx.astype(np.int16),
            "RAWY": rawy.astype(np.int16),
            "DETX": np.round(ev.dx[idx] / SKY_PIXEL_ARCSEC).astype(np.int16),
            "DETY": np.round(ev.dy[idx] / SKY_PIXEL_ARCSEC).astype(np.int16),
            "X": x.astype(np.int32),
            "Y": y.astype(np.int32),
            "PHA": pha.astype(np.int16),
            "PI": pi.astype(np.int16),
            "FLAG": flag.astype(np.int32),
            "PATTERN": pattern.astype(np.uint8),
            "CCDNR": ccd,
        }


def _good_patterns(rng: np.random.Generator, camera: str, e_kev: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """PATTERN of good events: singles (0), doubles (1-4) and, for MOS, triples/quads (5-12)."""
    n = e_kev.size
    u = rng.random(n)
    single = np.clip(0.78 - 0.03 * e_kev, 0.5, 0.78)
    single = np.where(kind == 1, 0.5, single)  # particle events are more often split
    pattern = np.zeros(n, np.uint8)
    if camera == "pn":
        split = u >= single
        pattern[split] = rng.integers(1, 5, int(split.sum()))
        return pattern
    multi = np.clip(0.04 + 0.01 * e_kev, 0.04, 0.15)
    double = (u >= single) & (u < 1.0 - multi)
    tq = u >= 1.0 - multi
    pattern[double] = rng.integers(1, 5, int(double.sum()))
    pattern[tq] = rng.integers(5, 13, int(tq.sum()))
    return pattern


# ------------------------------------------------------------------------------------------ FITS
def _iso(met: float) -> str:
    from astropy.time import Time, TimeDelta

    t = Time(_MJDREF, format="mjd", scale="tt") + TimeDelta(met, format="sec")
    return t.utc.isot[:19]


def _common_keys(field: _Field, camera: str, target: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    tstop = float(field.gti[-1, 1])
    return [
        ("TELESCOP", "XMM", "XMM mission"),
        ("INSTRUME", camera_spec(camera).instrume, "EPIC instrument"),
        ("OBS_ID", field.obsid, "Observation Identifier"),
        ("EXP_ID", field.obsid + _EXP_IDS[camera][1:], "Exposure Identifier"),
        ("EXPIDSTR", _EXP_IDS[camera], "Exposure ID"),
        ("DATE-OBS", _iso(field.tstart), "Start time of exposure"),
        ("DATE-END", _iso(tstop), "End time of exposure"),
        ("OBS_MODE", "POINTING", "Observation mode (pointing or slew)"),
        ("DATAMODE", "IMAGING", "Instrument mode (IMAGING or TIMING)"),
        ("SUBMODE", _SUBMODE[camera], "Guest Observer mode"),
        ("FILTER", "Medium", "Filter ID"),
        ("OBJECT", target["name"], "Name of observed object"),
        ("RA_OBJ", target["ra"], "[deg] RA of target"),
        ("DEC_OBJ", target["dec"], "[deg] Dec of target"),
        ("RA_NOM", field.ra_pnt, "[deg] RA of nominal boresight"),
        ("DEC_NOM", field.dec_pnt, "[deg] Dec of nominal boresight"),
        ("RA_PNT", field.ra_pnt, "[deg] Mean pointing RA of the optical axis"),
        ("DEC_PNT", field.dec_pnt, "[deg] Mean pointing Dec of the optical axis"),
        ("PA_PNT", field.pa, "[deg] Mean position angle"),
        ("EQUINOX", 2000.0, "Equinox for sky coordinate x/y axes"),
        ("RADECSYS", "FK5", "World coord. system for this file"),
        ("TIMESYS", "TT", "XMM time will be TT (Terrestrial Time)"),
        ("MJDREF", _MJDREF, "[d] 1998-01-01T00:00:00 (TT) expressed in MJD"),
        ("TIMEREF", "LOCAL", "Reference location of photon arrival times"),
        ("TASSIGN", "SATELLITE", "Location of time assignment"),
        ("TIMEUNIT", "s", "All times in s unless specified otherwise"),
        ("CLOCKAPP", True, "Clock correction applied"),
        ("ORIGIN", "xmm-survey simulator", "SIMULATED DATA (xmmcore.simulate)"),
        ("CREATOR", "xmmcore.simulate", "Program that wrote this file"),
    ]


def _events_hdu(
    cols: dict[str, np.ndarray],
    field: _Field,
    camera: str,
    target: Mapping[str, Any],
    live: Sequence[int],
    gti: np.ndarray,
):
    from astropy.io import fits

    spec = camera_spec(camera)
    forms = {
        "TIME": ("D", "s"),
        "RAWX": ("I", "pixel"),
        "RAWY": ("I", "pixel"),
        "DETX": ("I", "pixel"),
        "DETY": ("I", "pixel"),
        "X": ("J", "pixel"),
        "Y": ("J", "pixel"),
        "PHA": ("I", "CHAN"),
        "PI": ("I", "CHAN"),
        "FLAG": ("J", None),
        "PATTERN": ("B", None),
        "CCDNR": ("B", None),
    }
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format=forms[k][0], unit=forms[k][1], array=cols[k]) for k in forms],
        name="EVENTS",
    )
    h = hdu.header
    raw = _layout(camera).raw_shape
    limits = {
        "RAWX": (1, raw[0]),
        "RAWY": (1, raw[1]),
        "DETX": (-21000, 21000),
        "DETY": (-21000, 21000),
        "X": (1, 51840),
        "Y": (1, 51840),
        "PHA": (0, 4095),
        "PI": (0, spec.pi_max),
        "PATTERN": (0, 31),
        "CCDNR": (1, 12 if camera == "pn" else 7),
    }
    names = list(forms)
    for key, (lo, hi) in limits.items():
        i = names.index(key) + 1
        h[f"TLMIN{i}"] = lo
        h[f"TLMAX{i}"] = hi
    for key, ctype in (("DETX", "DETX_ANG"), ("DETY", "DETY_ANG")):
        i = names.index(key) + 1
        h[f"TCRPX{i}"] = 0
        h[f"TCRVL{i}"] = 0.0
        h[f"TCDLT{i}"] = (SKY_PIXEL_ARCSEC / 3600.0, "[degrees] Pixel size")
        h[f"TCTYP{i}"] = ctype
        h[f"TCUNI{i}"] = "deg"
    for key, ctype, crval, cdlt in (
        ("X", "RA---TAN", field.ra_pnt, -SKY_PIXEL_ARCSEC / 3600.0),
        ("Y", "DEC--TAN", field.dec_pnt, SKY_PIXEL_ARCSEC / 3600.0),
    ):
        i = names.index(key) + 1
        h[f"TNULL{i}"] = -99999999
        h[f"TCRPX{i}"] = (SKY_REF_PIXEL, "axis reference pixel of projected image")
        h[f"TCTYP{i}"] = (ctype, "Coord. type: tangent plane projection")
        h[f"TCRVL{i}"] = (crval, "[deg] coord. at axis ref. pixel")
        h[f"TCDLT{i}"] = (cdlt, "[deg/pix] increment at ref. pixel")
        h[f"TCUNI{i}"] = "deg"
    for key, val, com in _common_keys(field, camera, target):
        h[key] = (val, com)
    for ax, ctype, crval, cdlt in (
        ("X", "RA---TAN", field.ra_pnt, -SKY_PIXEL_ARCSEC / 3600.0),
        ("Y", "DEC--TAN", field.dec_pnt, SKY_PIXEL_ARCSEC / 3600.0),
    ):
        h[f"REF{ax}CTYP"] = (ctype, "WCS Coord. type")
        h[f"REF{ax}CRPX"] = (SKY_REF_PIXEL, "WCS axis reference pixel of projected image")
        h[f"REF{ax}CRVL"] = (crval, "[deg] WCS coord. at axis ref. pixel")
        h[f"REF{ax}CDLT"] = (cdlt, "[deg/pix] WCS increment at ref. pixel")
        h[f"REF{ax}LMIN"] = 1
        h[f"REF{ax}LMAX"] = 51840
        h[f"REF{ax}CUNI"] = "deg"
    ontime = float(np.sum(gti[:, 1] - gti[:, 0]))
    livetime = ontime * _LIVE_FRACTION[camera]
    h["TSTART"] = (float(gti[0, 0]), "[s] Start time of first frame")
    h["TSTOP"] = (float(gti[-1, 1]), "[s] End time of last frame")
    h["TELAPSE"] = (float(gti[-1, 1] - gti[0, 0]), "[s] Full time interval for the exposure")
    for c in live:
        h[f"ONTIME{c:02d}"] = (ontime, "Sum of GTIs for a particular CCD")
        h[f"LIVETI{c:02d}"] = (livetime, "Live time for a particular CCD")
    h["ONTIME"] = (ontime, "[s] Sum of GTIs for the central CCD")
    h["LIVETIME"] = (livetime, "[s] Live time for the central CCD")
    h["EXPOSURE"] = (livetime, "[s] Exposure (live time of the central CCD)")
    h["DEADC"] = (_LIVE_FRACTION[camera], "Dead-time correction (LIVETIME / ONTIME)")
    h["FRMTIME"] = (_FRAME_S[camera] * 1000.0, "[ms] Frame time")
    h["XMMEA_16"] = ("(FLAG & 0x10000) != 0", "OUT_OF_FOV")
    h["XMMEA_17"] = ("(FLAG & 0x20000) != 0", "IN_BAD_FRAME")
    h["XMMEA_19"] = ("(FLAG & 0x80000) != 0", "COSMIC_RAY")
    h["XMMEA_21"] = ("(FLAG & 0x200000) != 0", "ON_BADPIX")
    if camera != "pn":
        h["XMMEA_EM"] = ("(FLAG & 0x766ba000) == 0", "Select good MOS events")
    return hdu


def _gti_hdu(name: str, gti: np.ndarray, field: _Field, camera: str, ccd: int | None):
    from astropy.io import fits

    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="START", format="D", unit="s", array=gti[:, 0]),
            fits.Column(name="STOP", format="D", unit="s", array=gti[:, 1]),
        ],
        name=name,
    )
    h = hdu.header
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "GTI"
    h["HDUCLAS2"] = "STANDARD"
    h["TELESCOP"] = "XMM"
    h["INSTRUME"] = camera_spec(camera).instrume
    h["OBS_ID"] = field.obsid
    h["TIMESYS"] = "TT"
    h["MJDREF"] = _MJDREF
    h["TSTART"] = float(gti[0, 0])
    h["TSTOP"] = float(gti[-1, 1])
    if ccd is not None:
        h["CCDID"] = (ccd, "Numerical identifier of the CCD")
        h["CCDNODE"] = (0, "CCD Node")
    return hdu


def _write_event_file(
    path: Path,
    cols: dict[str, np.ndarray],
    field: _Field,
    camera: str,
    target: Mapping[str, Any],
    live: Sequence[int],
    gti: np.ndarray,
) -> Path:
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, val, com in _common_keys(field, camera, target):
        primary.header[key] = (val, com)
    hdus = [primary, _events_hdu(cols, field, camera, target, live, gti)]
    hdus += [_gti_hdu(f"STDGTI{c:02d}", gti, field, camera, c) for c in live]
    hdus.append(_gti_hdu("GTI", gti, field, camera, None))
    return _write_fits(fits.HDUList(hdus), path)


# ------------------------------------------------------------------------------------------ public API
def _target_meta(field: _Field) -> dict[str, Any]:
    c = field.clusters[0]
    ra, dec = _pix_to_ra_dec(c["x"], c["y"], field.ra_pnt, field.dec_pnt)
    ra, dec = float(ra), float(dec)
    h = ra / 15.0
    hh, mm = int(h), (h - int(h)) * 60.0
    sign = "+" if dec >= 0 else "-"
    dd, dm = int(abs(dec)), int((abs(dec) - int(abs(dec))) * 60.0)
    return {
        "name": f"XSIM J{hh:02d}{mm:04.1f}{sign}{dd:02d}{dm:02d}",
        "ra": ra,
        "dec": dec,
        "z": c["z"],
        "nh": field.nh,
        "r500_kpc": _r500_kpc(c["kT"], c["z"]),
    }


_CLUSTER_KEYS = {"kT", "z", "abundance", "rc_arcsec", "rc_kpc", "beta", "counts_pn", "core"}


def _check_options(
    *,
    cameras,
    exposure_ks,
    targets_per_field,
    point_sources,
    flare_fraction,
    cluster_counts,
    kt_range,
    z_range,
    nh_range,
    cluster,
) -> None:
    """Raise ``ConfigError`` naming the first bad simulation option."""
    if not cameras or any(cam not in CAMERAS for cam in cameras):
        raise ConfigError(f"cameras must be a non-empty subset of {CAMERAS}, got {tuple(cameras)}")
    try:
        exp = _ks_range(exposure_ks)
    except (TypeError, ValueError):
        raise ConfigError(
            f"simulation option exposure_ks={exposure_ks!r} is not a number or (min, max)"
        ) from None
    checks = [
        ("exposure_ks", exp, 0 < exp[0] <= exp[1] <= 1000),
        ("targets_per_field", targets_per_field, int(targets_per_field) >= 1),
        ("point_sources", point_sources, point_sources >= 0),
        ("flare_fraction", flare_fraction, 0.0 <= flare_fraction < 0.9),
        ("cluster_counts", cluster_counts, 0 < cluster_counts[0] <= cluster_counts[1]),
        ("kt_range", kt_range, 0.1 <= kt_range[0] <= kt_range[1] <= 50.0),
        ("z_range", z_range, 0.001 <= z_range[0] <= z_range[1] <= 3.0),
        ("nh_range", nh_range, 0 < nh_range[0] <= nh_range[1] <= 10.0),
    ]
    for name, value, ok in checks:
        if not ok:
            raise ConfigError(f"simulation option {name}={value!r} is out of range")
    unknown = set(cluster or {}) - _CLUSTER_KEYS
    if unknown:
        raise ConfigError(f"unknown cluster parameter(s) {sorted(unknown)}; known: {sorted(_CLUSTER_KEYS)}")


def simulate_observation(
    out_dir: str | Path,
    obsid: str,
    *,
    seed: int,
    index: int = 0,
    cameras: Sequence[str] = CAMERAS,
    exposure_ks: float | tuple[float, float] = (20.0, 35.0),
    targets_per_field: int = 1,
    point_sources: float = 8.0,
    flare_fraction: float = 0.15,
    cluster_counts: tuple[float, float] = (6000.0, 30000.0),
    kt_range: tuple[float, float] = (2.0, 9.0),
    z_range: tuple[float, float] = (0.05, 0.4),
    nh_range: tuple[float, float] = (0.01, 0.1),
    region_radius_arcmin: float = 3.0,
    band_kev: tuple[float, float] = (0.5, 7.0),
    cluster: Mapping[str, float] | None = None,
) -> Path:
    """Simulate one ObsID and write ``<out_dir>/<obsid>/`` (event lists, responses, truth.json, meta.json).

    Parameters
    ----------
    out_dir : str or Path
        Data folder (``data/``); the ObsID folder is created inside it.
    obsid : str
        Folder name and OBS_ID keyword.
    seed, index : int
        The random streams are spawned from ``SeedSequence([seed, index])``.
    cameras : sequence of str
        Subset of ``("pn", "mos1", "mos2")``.
    exposure_ks : float or (float, float)
        On-time in ks, or the range it is drawn from.
    targets_per_field : int
        Number of clusters (the first is the target near the aim point; others 6-11 arcmin off axis).
    point_sources : float
        Mean number of point sources in the field.
    flare_fraction : float
        Fraction of the on-time inside soft-proton flares (0 = none).
    cluster_counts : (float, float)
        Range (log-uniform) of the target's detected pn photons (all energies): with the L-T relation
        this sets the redshift (clipped to ``z_range``, so the counts may fall outside this range).
    kt_range, z_range, nh_range : (float, float)
        Ranges of kT [keV], redshift and nH [1e22 cm^-2] (nH log-uniform).
    region_radius_arcmin : float
        Radius of the circle about the target for the expected counts in ``truth.json``.
    band_kev : (float, float)
        PI band of the expected counts (``band[0] <= PI/1000 < band[1]``).
    cluster : mapping, optional
        Fixed values for the target (``kT``, ``z``, ``abundance``, ``rc_arcsec`` or ``rc_kpc``, ``beta``,
        ``counts_pn``, ``core`` = cool | regular | flat) instead of drawn ones. ``counts_pn`` makes the norm
        follow the counts (no L-T).

    Returns
    -------
    Path
        ``<out_dir>/<obsid>``.
    """
    validate_obsid(obsid)
    _check_options(
        cameras=cameras,
        exposure_ks=exposure_ks,
        targets_per_field=targets_per_field,
        point_sources=point_sources,
        flare_fraction=flare_fraction,
        cluster_counts=cluster_counts,
        kt_range=kt_range,
        z_range=z_range,
        nh_range=nh_range,
        cluster=cluster,
    )
    root = Path(out_dir) / obsid
    ss = np.random.SeedSequence([int(seed), int(index)])
    s_field, s_mc, *s_cams = ss.spawn(2 + len(CAMERAS))
    field = _draw_field(
        np.random.default_rng(s_field),
        obsid,
        exposure_ks=exposure_ks,
        targets_per_field=targets_per_field,
        point_sources=point_sources,
        flare_fraction=flare_fraction,
        counts_range=cluster_counts,
        kt_range=kt_range,
        z_range=z_range,
        nh_range=nh_range,
        cluster_overrides=cluster,
    )
    mc_rng = np.random.default_rng(s_mc)
    sims = {
        cam: _CameraSim(field, cam, np.random.default_rng(s_cams[CAMERAS.index(cam)]), mc_rng)
        for cam in CAMERAS
    }
    _normalise_sources(field, sims["pn"])
    target = _target_meta(field)
    c0 = field.clusters[0]
    region = (
        (c0["x"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
        (c0["y"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC,
        region_radius_arcmin * 60.0,
    )
    expected: dict[str, Any] = {}
    event_files: dict[str, str] = {}
    for cam in cameras:
        sim = sims[cam]
        sim.simulate_sky()
        sim.simulate_particles()
        sim.simulate_flares()
        cols = sim.events()
        path = _write_event_file(
            root / "pps" / event_file_name(obsid, cam), cols, field, cam, target, sim.live, sim.gti
        )
        event_files[cam] = str(path.relative_to(root))
        exp = sim.expected(region, band_kev)
        exp["cluster_detected_all"] = sim.expected_cluster_detected(c0)
        exp["n_events_written"] = int(cols["TIME"].size)
        expected[cam] = exp
    _write_responses(root / "responses", tuple(cameras))
    truth = _truth(
        field, target, sims, cameras, expected, region_radius_arcmin, band_kev, event_files, seed, index
    )
    atomic_write_json(root / "truth.json", truth)
    atomic_write_json(root / "meta.json", target)
    return root


def _lt_luminosity(kt: float, z: float, scatter_dex: float) -> float:
    """L500(0.1-2.4 keV, rest, within R500) [erg/s] = 1.5e44 (kT/5 keV)^3 E(z) 10^scatter
    (close to Pratt et al. 2009, h70)."""
    return _LT_NORM_ERG_S * (kt / 5.0) ** _LT_SLOPE * _ez(z) * 10.0**scatter_dex


def _set_redshift(c: dict[str, Any], z: float) -> None:
    c["z"] = float(z)
    if not c["rc_fixed"]:
        c["rc_arcsec"] = _rc_arcsec(c["rc_kpc_drawn"], z)
    c["rc_kpc"] = c["rc_arcsec"] * _kpc_per_arcsec(z)
    c["r500_kpc"] = _r500_kpc(c["kT"], z)


def _unit_norms(c: dict[str, Any]) -> None:
    c["norm"] = 1.0


def _r500_fraction(c: Mapping[str, Any]) -> float:
    """Fraction of the cluster's emission (projected, truncated beta model) within R500."""
    r500_arcsec = c["r500_kpc"] / _kpc_per_arcsec(c["z"])
    return beta_fraction(r500_arcsec, c["rc_arcsec"], c["beta"], _beta_r_max_arcsec(c))


def _normalise_sources(field: _Field, pn: _CameraSim) -> None:
    """Set cluster norms (and Fe line norms) and point-source norms.

    A cluster's norm comes from the L-T relation (:func:`_lt_luminosity`); unless its redshift was given,
    the redshift (within the z range) is the one at which the pn camera detects about ``counts_pn``
    photons -- hot, luminous clusters end up farther away, as in a flux-limited survey. With a given
    ``counts_pn`` the norm is set from those counts instead.
    """
    for c in field.clusters:
        _unit_norms(c)
        if not c["norm_from_counts"]:
            if not c["z_fixed"]:
                # detected fraction of on-axis photons (vignetting, gaps), ~independent of z
                acc = pn.expected_cluster_detected(c) / float(pn.cluster_lambda(c).sum())
                zs = np.linspace(c["z_min"], c["z_max"], 24)
                counts = []
                for z in zs:
                    _set_redshift(c, z)
                    _unit_norms(c)
                    lum = _cluster_fluxes(c)["lum_0.1_2.4_kev_rest"] * _r500_fraction(c)
                    norm = _lt_luminosity(c["kT"], z, c["lt_scatter_dex"]) / lum
                    counts.append(acc * norm * float(pn.cluster_lambda(c).sum()))
                # counts fall with z: the z whose counts are closest to the target (log), interpolated
                logc = np.log(np.asarray(counts))[::-1]
                z_best = float(np.interp(math.log(c["counts_pn"]), logc, zs[::-1]))
                _set_redshift(c, z_best)
                _unit_norms(c)
            scale = _lt_luminosity(c["kT"], c["z"], c["lt_scatter_dex"]) / (
                _cluster_fluxes(c)["lum_0.1_2.4_kev_rest"] * _r500_fraction(c)
            )
        else:
            scale = c["counts_pn"] / pn.expected_cluster_detected(c)
        c["norm"] *= scale
        c["counts_pn"] = pn.expected_cluster_detected(c)
    for ps in field.point_sources:
        ps["norm"] = 1.0
        lam = pn.ps_lambda(ps)
        theta = math.hypot(ps["x"] - SKY_REF_PIXEL, ps["y"] - SKY_REF_PIXEL) * SKY_PIXEL_ARCSEC / 60.0
        ps["norm"] = ps["counts_pn"] / float(np.sum(lam * vignetting(theta, pn.mid)))


@lru_cache(maxsize=4)
def _response_bytes(camera: str) -> tuple[bytes, bytes]:
    """The RMF and ARF files of ``camera`` as bytes (built once per process, then copied per ObsID)."""
    import tempfile

    from astropy.io import fits

    from .ogip import write_arf, write_rmf
    from .responses import make_arf, make_rmf

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in (
            write_rmf(make_rmf(camera), Path(tmp) / f"{camera}.rmf"),
            write_arf(make_arf(camera), Path(tmp) / f"{camera}.arf"),
        ):
            with fits.open(path) as hdul:
                hdul.readall()
                _fixed_checksums(hdul)
                buf = io.BytesIO()
                hdul.writeto(buf, checksum=False)
            out.append(buf.getvalue())
    return out[0], out[1]


def _fixed_checksums(hdul) -> None:
    """CHECKSUM/DATASUM with a constant comment (astropy's default comment is the time: not reproducible)."""
    for hdu in hdul:
        hdu.add_checksum(when="xmmcore.simulate")


def _write_fits(hdul, target: Path) -> Path:
    """Atomic, reproducible FITS write (same HDUs -> same bytes)."""
    _fixed_checksums(hdul)
    with atomic_path(target) as tmp:
        hdul.writeto(tmp, checksum=False)
    return Path(target)


def _write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _write_responses(directory: Path, cameras: tuple[str, ...]) -> None:
    for cam in cameras:
        rmf, arf = _response_bytes(cam)
        _write_bytes(directory / f"{cam}.rmf", rmf)
        _write_bytes(directory / f"{cam}.arf", arf)


_KEV_TO_ERG = 1.602176634e-9


def _band_energy_flux(p: Mapping[str, float], band: tuple[float, float], *, unabsorbed: bool) -> float:
    edges = np.linspace(band[0], band[1], 2001)
    lo, hi = edges[:-1], edges[1:]
    phot = _model(CLUSTER_MODEL).evaluate(lo, hi, _cluster_values(p, p["norm"]), unabsorbed=unabsorbed)
    return float(np.sum(phot * 0.5 * (lo + hi)) * _KEV_TO_ERG)


def _cluster_fluxes(p: Mapping[str, float]) -> dict[str, float]:
    """Observed-frame fluxes (erg/cm^2/s) and the rest-frame 0.1-2.4 keV luminosity (erg/s, H0 70, Om0 0.3)."""
    z = p["z"]
    d_l = float(_cosmology().luminosity_distance(z).to("cm").value)
    rest = (0.1 / (1.0 + z), 2.4 / (1.0 + z))
    rest_05_20 = (0.5 / (1.0 + z), 2.0 / (1.0 + z))
    return {
        "flux_0.5_2.0_kev": _band_energy_flux(p, (0.5, 2.0), unabsorbed=False),
        "flux_unabs_0.5_2.0_kev": _band_energy_flux(p, (0.5, 2.0), unabsorbed=True),
        "flux_unabs_2.0_10.0_kev": _band_energy_flux(p, (2.0, 10.0), unabsorbed=True),
        "lum_0.1_2.4_kev_rest": 4.0 * math.pi * d_l**2 * _band_energy_flux(p, rest, unabsorbed=True),
        "lum_0.5_2.0_kev_rest": 4.0 * math.pi * d_l**2 * _band_energy_flux(p, rest_05_20, unabsorbed=True),
    }


def _truth(field: _Field, target, sims, cameras, expected, radius, band, event_files, seed, index) -> dict:
    def cl(c: Mapping[str, Any]) -> dict[str, Any]:
        ra, dec = _pix_to_ra_dec(c["x"], c["y"], field.ra_pnt, field.dec_pnt)
        fluxes = _cluster_fluxes(c)
        kpc_per_arcsec = _kpc_per_arcsec(c["z"])
        r500_arcmin = c["r500_kpc"] / kpc_per_arcsec / 60.0
        r_max = _beta_r_max_arcsec(c)
        f500 = beta_fraction(r500_arcmin * 60.0, c["rc_arcsec"], c["beta"], r_max)
        f_ap = beta_fraction(radius * 60.0, c["rc_arcsec"], c["beta"], r_max)
        return {
            "model": CLUSTER_MODEL,
            "nH": field.nh,
            "kT": c["kT"],
            "z": c["z"],
            "norm": c["norm"],
            "abundance": c["abundance"],
            "core": c.get("core", "regular"),
            "rc_arcsec": c["rc_arcsec"],
            "rc_kpc": c["rc_kpc"],
            "beta": c["beta"],
            "beta_r_max_arcmin": r_max / 60.0,
            "r500_kpc": c["r500_kpc"],
            "r500_arcmin": r500_arcmin,
            "r500_relation": R500_RELATION,
            "E_z": _ez(c["z"]),
            "lt_relation": "L500(0.1-2.4 keV) = 1.5e44 erg/s (kT/5 keV)^3 E(z), 0.12 dex scatter",
            "ra": float(ra),
            "dec": float(dec),
            "x": c["x"],
            "y": c["y"],
            "counts_pn_detected": c["counts_pn"],
            **fluxes,
            # rest frame, unabsorbed, projected within R500 (H0 70, Om0 0.3)
            "L500_0p1_2p4": fluxes["lum_0.1_2.4_kev_rest"] * f500,
            "L500_0p5_2p0": fluxes["lum_0.5_2.0_kev_rest"] * f500,
            "fraction_within_r500": f500,
            # the same within the fixed circle of expected_counts (radius_arcmin)
            "aperture_radius_arcmin": radius,
            "fraction_within_aperture": f_ap,
            "Lap_0p1_2p4": fluxes["lum_0.1_2.4_kev_rest"] * f_ap,
            "Lap_0p5_2p0": fluxes["lum_0.5_2.0_kev_rest"] * f_ap,
            "parameters": dict(zip(_CLUSTER_PARAMS, _cluster_values(c, c["norm"]))),
        }

    pss = []
    for ps in field.point_sources:
        ra, dec = _pix_to_ra_dec(ps["x"], ps["y"], field.ra_pnt, field.dec_pnt)
        pss.append(
            {
                "model": "wabs*powerlaw",
                "ra": float(ra),
                "dec": float(dec),
                "x": ps["x"],
                "y": ps["y"],
                "PhoIndex": ps["index"],
                "norm": ps["norm"],
                "nH": field.nh,
                "counts_pn_detected": ps["counts_pn"],
                "near_centre": bool(ps.get("near_centre", 0.0)),
            }
        )
    flares = []
    for fl in field.flares:
        flares.append(
            {
                "tstart": fl["tstart"],
                "tstop": fl["tstop"],
                "peak_factor": fl["peak_factor"],
                "peak_rate_10_12_kev": {
                    cam: fl["peak_factor"]
                    * sims[cam].sp_emitted_10_12()
                    * sims[cam].sp_acceptance
                    * _LIVE_FRACTION[cam]
                    for cam in cameras
                },
            }
        )
    return {
        "simulator": "xmmcore.simulate",
        "seed": int(seed),
        "index": int(index),
        "obsid": field.obsid,
        "target": target,
        "pointing": {
            "ra": field.ra_pnt,
            "dec": field.dec_pnt,
            "pa": field.pa,
            "sky_ref_pixel": SKY_REF_PIXEL,
            "sky_pixel_arcsec": SKY_PIXEL_ARCSEC,
        },
        "tstart": field.tstart,
        "tstop": float(field.gti[-1, 1]),
        "gti": field.gti.tolist(),
        "ontime_s": field.ontime,
        "ontime_s_by_camera": {cam: sims[cam].ontime for cam in cameras},
        "livetime_s": {cam: sims[cam].livetime for cam in cameras},
        "live_ccds": {cam: list(sims[cam].live) for cam in cameras},
        "event_files": event_files,
        "cluster": cl(field.clusters[0]),
        "extra_clusters": [cl(c) for c in field.clusters[1:]],
        "point_sources": pss,
        "background": {
            "sky": {
                "cxb_model": "wabs*powerlaw",
                "cxb_index": 1.46,
                "cxb_norm_per_arcmin2": _CXB_NORM_PER_ARCMIN2 * field.cxb_scale,
                "galactic_model": "bremss",
                "galactic_kT": 0.2,
                "galactic_norm_per_arcmin2": field.gal_norm,
            },
            "particle_rate_cts_per_s": {cam: sims[cam].qpb_rate() for cam in cameras},
            "particle_rate_10_12_kev": {cam: sims[cam].sp_emitted_10_12() for cam in cameras},
        },
        "flares": flares,
        "flare_shape": "peak_factor x the quiescent 10-12 keV particle rate, flat top, 10% linear ramps, "
        "inside the input GTIs (xmmcore.simulate.flare_shape)",
        "flare_fraction": float(sum(f["tstop"] - f["tstart"] for f in field.flares) / field.ontime),
        "expected_counts": {
            "band_kev": list(band),
            "radius_arcmin": radius,
            "centre_x": field.clusters[0]["x"],
            "centre_y": field.clusters[0]["y"],
            "screening": {"pattern_max": {c: _PATTERN_MAX[c] for c in cameras}, "flag": 0},
            **{cam: expected[cam] for cam in cameras},
        },
    }


def simulate_survey(
    out_dir: str | Path,
    *,
    n_obsids: int,
    seed: int,
    cameras: Sequence[str] = CAMERAS,
    exposure_ks: float | tuple[float, float] = (20.0, 35.0),
    targets_per_field: int = 1,
    point_sources: float = 8.0,
    flare_fraction: float = 0.15,
    cluster_counts: tuple[float, float] = (6000.0, 30000.0),
    kt_range: tuple[float, float] = (2.0, 9.0),
    z_range: tuple[float, float] = (0.05, 0.4),
    nh_range: tuple[float, float] = (0.01, 0.1),
    progress: Any = None,
) -> list[str]:
    """Simulate ``n_obsids`` observations into ``out_dir/<obsid>/`` and return the ObsIDs.

    ObsID ``i`` is :func:`obsid_for(seed, i) <obsid_for>` and is simulated by
    :func:`simulate_observation` with ``index=i``; other options are passed through.
    ``progress`` (optional) is called as ``progress(i, obsid)`` after each ObsID.
    """
    if n_obsids < 1:
        raise ConfigError(f"n_obsids must be >= 1, got {n_obsids}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obsids = []
    for i in range(n_obsids):
        obsid = obsid_for(seed, i)
        simulate_observation(
            out,
            obsid,
            seed=seed,
            index=i,
            cameras=cameras,
            exposure_ks=exposure_ks,
            targets_per_field=targets_per_field,
            point_sources=point_sources,
            flare_fraction=flare_fraction,
            cluster_counts=cluster_counts,
            kt_range=kt_range,
            z_range=z_range,
            nh_range=nh_range,
        )
        obsids.append(obsid)
        if progress is not None:
            progress(i, obsid)
    return obsids


def simulate_events(
    path: str | Path,
    *,
    n_events: int,
    seed: int = 0,
    camera: str = "pn",
    flare_fraction: float = 0.15,
    obsid: str = "0999999901",
) -> Path:
    """Write one big calibrated event list of ``camera`` with exactly ``n_events`` events (for benchmarks).

    A field as in :func:`simulate_observation` (cluster, point sources, backgrounds, flares), its rates
    scaled so that about ``n_events`` good events are drawn over a 40 ks exposure; exactly ``n_events``
    of the good + extra events are kept (a random subset). No truth, no responses.
    """
    if camera not in CAMERAS:
        raise ConfigError(f"unknown camera {camera!r} (expected one of {CAMERAS})")
    if n_events < 1:
        raise ConfigError(f"n_events must be >= 1, got {n_events}")
    validate_obsid(obsid)
    ss = np.random.SeedSequence([int(seed), 999_999])
    s_field, s_mc, s_cam, s_pick = ss.spawn(4)
    field = _draw_field(
        np.random.default_rng(s_field),
        obsid,
        exposure_ks=40.0,
        targets_per_field=1,
        point_sources=8.0,
        flare_fraction=flare_fraction,
        counts_range=(20000.0, 20000.0),
        kt_range=(2.0, 9.0),
        z_range=(0.05, 0.4),
        nh_range=(0.01, 0.1),
        cluster_overrides={"counts_pn": 20000.0},
    )
    mc_rng = np.random.default_rng(s_mc)
    pn = _CameraSim(field, "pn", mc_rng, mc_rng)
    _normalise_sources(field, pn)
    sim = _CameraSim(field, camera, np.random.default_rng(s_cam), mc_rng)
    probe = sim.qpb_rate() * sim.livetime + float(sim.sky_lambda().sum()) * 0.8
    probe += sum(float(sim.cluster_lambda(c).sum()) for c in field.clusters)
    probe += sum(float(sim.ps_lambda(p).sum()) for p in field.point_sources)
    probe *= 1.0 + 1.5 * flare_fraction
    scale = 1.15 * n_events / probe
    for _ in range(5):
        sim.parts.clear()
        sim.simulate_sky(scale)
        sim.simulate_particles(scale)
        sim.simulate_flares(scale)
        if sum(p.pi.size for p in sim.parts) * 1.0 >= n_events:
            break
        scale *= 1.5
    cols = sim.events()
    n_all = cols["TIME"].size
    if n_all < n_events:
        raise InputDataError(f"could not draw {n_events} events (got {n_all})")
    keep = np.sort(np.random.default_rng(s_pick).choice(n_all, size=n_events, replace=False))
    cols = {k: v[keep] for k, v in cols.items()}
    target = _target_meta(field)
    return _write_event_file(Path(path), cols, field, camera, target, sim.live, sim.gti)
