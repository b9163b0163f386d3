"""R500 apertures, L500 and the quality flags of a cluster fit.

* :func:`r500_kpc` -- R500 from the R-T relation of Arnaud, Pointecouteau & Pratt (2005),
  ``E(z) R500 = 1104 kpc (kT / 5 keV)^0.57`` (h70), ``E(z) = sqrt(Om0 (1 + z)^3 + 1 - Om0)`` -- the
  relation the simulator draws its clusters from (:data:`xmmcore.simulate.R500_RELATION`).
* :func:`l500_block` -- ``L500_0p1_2p4`` / ``L500_0p5_2p0`` [erg/s, rest frame, within R500]: the fitted
  spectrum's luminosity (which describes the cluster counts inside the unmasked, on-chip part of the
  aperture, less the cluster emission the local background subtraction removed) divided by
  ``(1 - aperture_lost_fraction) (1 - bkg_oversubtraction)``, divided by the cluster-weighted
  vignetting of the aperture when the ARF is an on-axis one (``spectra.arf_vignetting``), and
  multiplied by the beta model's R500-to-aperture flux ratio; all these numbers come from the beta
  model fitted (with the vignetting, a vignetted sky and a flat particle background) to the 0.5-2 keV
  surface-brightness profile by the regions step. Errors: the spectral luminosity's, with the
  profile's (the scatter of the correction over draws of the beta model from its covariance, which
  the background terms' freedom widens) added in quadrature.
* :func:`quality_flags` -- the flags of a fit row (see the function).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .profile import BetaProfile, beta_cumulative

__all__ = [
    "BKG_CONTAMINATION_LIMIT",
    "LOW_NET_COUNTS",
    "LOST_FRACTION_LIMIT",
    "l500_block",
    "quality_flags",
    "r500_kpc",
]

BKG_CONTAMINATION_LIMIT = 0.10  # cluster share of the background annulus above which a row is flagged
LOST_FRACTION_LIMIT = 0.10  # fraction of the aperture's flux in masks and gaps above which a row is flagged
LOW_NET_COUNTS = 500.0  # net source counts (all cameras) below which a row is flagged
UNCONSTRAINED_REL_ERROR = 0.5
PROFILE_REL_ERROR_LIMIT = 0.15  # profile share of L500's relative error above which a row is flagged


def e_of_z(z: float, om0: float = 0.3) -> float:
    """E(z) = H(z) / H0 (flat LambdaCDM)."""
    return math.sqrt(om0 * (1.0 + z) ** 3 + 1.0 - om0)


def r500_kpc(kt_kev: float, z: float, *, h0: float = 70.0, om0: float = 0.3) -> float:
    """R500 [kpc] from Arnaud et al. (2005): ``E(z) R500 = 1104 kpc (kT / 5 keV)^0.57 (70 / H0)``."""
    return 1104.0 * (kt_kev / 5.0) ** 0.57 / e_of_z(z, om0) * (70.0 / h0)


def _nan(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def l500_block(
    luminosities: Mapping[str, Any],
    regions: Mapping[str, Any],
    *,
    r500_arcmin: float,
    arf_on_axis: bool = False,
    matched_background: bool = False,
) -> dict[str, Any]:
    """L500 columns from the fit's aperture luminosities and the regions' beta-model profile.

    ``matched_background``: the spectra's background is the vignetting-matched one
    (``spectra.local_background: matched``), whose over-subtraction of cluster counts is
    ``bkg_oversubtraction_matched``.

    ``arf_on_axis``: the spectra were fitted with an on-axis (or point-source) ARF, so the fitted
    luminosity misses the aperture's cluster-weighted vignetting (``aperture_vignetting``), which is
    then divided out.

    Returns ``{"L500_0p1_2p4", "..._err_lo", "..._err_hi", "L500_0p5_2p0", ..., "l500_correction",
    "l500_over_aperture", "l500_vignetting", "l500_method"}``; NaN where the profile or R500 is missing.
    """
    prof = regions.get("profile")
    r_src = _nan(regions.get("r_src_arcmin"))
    lost = _nan(regions.get("aperture_lost_fraction"))
    over_key = "bkg_oversubtraction_matched" if matched_background else "bkg_oversubtraction"
    over = _nan(regions.get(over_key))
    vig = _nan(regions.get("aperture_vignetting")) if arf_on_axis else 1.0
    ratio = math.nan
    if isinstance(prof, Mapping) and math.isfinite(r500_arcmin) and r_src > 0:
        ratio = BetaProfile(**prof).fraction_ratio(r500_arcmin, r_src)
    lost = 0.0 if not math.isfinite(lost) else lost
    over = 0.0 if not math.isfinite(over) else min(over, 0.9)
    vig = 1.0 if not (math.isfinite(vig) and vig > 0) else vig
    corr = ratio / ((1.0 - lost) * (1.0 - over) * vig) if math.isfinite(ratio) else math.nan
    rel = _profile_rel_error(
        regions, r500_arcmin=r500_arcmin, r_src=r_src, corr=corr, arf_on_axis=arf_on_axis, over_key=over_key
    )
    out: dict[str, Any] = {
        "l500_over_aperture": ratio,
        "l500_vignetting": vig,
        "l500_correction": corr,
        "bkg_oversubtraction_used": over,
        "l500_profile_rel_err": rel,
        "l500_method": (
            "fitted aperture luminosity / (1 - masked-and-gap fraction) / (1 - background over-subtraction) "
            + ("/ cluster-weighted vignetting (on-axis ARF) " if arf_on_axis else "")
            + "x beta-model flux(R500) / flux(aperture); beta model with vignetted sky and flat particle "
            "background (its level from the out-of-FOV corners when measured) fitted to the 0.5-2 keV profile"
        ),
    }
    for band, col in (((0.1, 2.4), "L500_0p1_2p4"), ((0.5, 2.0), "L500_0p5_2p0")):
        entry = _band_entry(luminosities, band)
        v = _nan(entry.get("value")) if entry else math.nan
        lo = _nan(entry.get("err_lo")) if entry else math.nan
        hi = _nan(entry.get("err_hi")) if entry else math.nan
        # the profile's share (draws of the beta model) added in quadrature to the spectral errors
        prof_err = abs(v) * rel if math.isfinite(rel) else 0.0
        out[col] = v * corr
        out[f"{col}_err_lo"] = math.hypot(lo, prof_err) * corr
        out[f"{col}_err_hi"] = math.hypot(hi, prof_err) * corr
    return out


def _profile_rel_error(
    regions: Mapping[str, Any],
    *,
    r500_arcmin: float,
    r_src: float,
    corr: float,
    arf_on_axis: bool,
    over_key: str = "bkg_oversubtraction",
) -> float:
    """Relative 1-sigma scatter of the L500 correction over the regions step's profile draws.

    Each draw of (S0, rc, beta) from the beta-model fit's covariance (``profile_draws``) gives its
    own R500-to-aperture ratio, masked-and-gap fraction, background over-subtraction and
    vignetting; half the 16-84% range of the resulting corrections over the best one.  NaN when
    there is no profile or R500; ``inf`` when the fit has no covariance (shape unconstrained).
    """
    draws = regions.get("profile_draws")
    if not (math.isfinite(corr) and math.isfinite(r500_arcmin) and r_src > 0) or draws is None:
        return math.nan
    if not draws:
        return math.inf
    vals = []
    for d in draws:
        try:
            rc, beta = float(d["rc_arcmin"]), float(d["beta"])
            ratio = float(beta_cumulative(r500_arcmin, rc, beta) / beta_cumulative(r_src, rc, beta))
            lost = min(max(_nan(d.get("aperture_lost_fraction")), 0.0), 0.9)
            over = min(max(_nan(d.get(over_key)), 0.0), 0.9)
            vig = _nan(d.get("aperture_vignetting")) if arf_on_axis else 1.0
        except (KeyError, TypeError, ValueError):
            continue
        c = ratio / ((1.0 - lost) * (1.0 - over) * vig) if vig > 0 else math.nan
        if math.isfinite(c):
            vals.append(c)
    if len(vals) < 5:
        return math.inf
    lo, hi = np.percentile(vals, [16.0, 84.0])
    return float(0.5 * (hi - lo) / corr)


def _band_entry(luminosities: Mapping[str, Any], band: tuple[float, float]) -> Mapping[str, Any] | None:
    for entry in luminosities.values():
        if not isinstance(entry, Mapping):
            continue
        b = entry.get("band_kev")
        if b is not None and len(b) == 2 and abs(b[0] - band[0]) < 1e-6 and abs(b[1] - band[1]) < 1e-6:
            return entry
    return None


def quality_flags(
    fit: Mapping[str, Any],
    regions: Mapping[str, Any],
    *,
    net_counts: float,
    requested_errors: str,
    r500_converged: bool | None,
    error_fallback_reason: str | None = None,
    l500_profile_rel_err: float = math.nan,
) -> dict[str, Any]:
    """Quality flags of one fit row.

    ``flag_unconstrained`` (a free parameter's mean error > 50% of its value; cross-normalisations
    excluded), ``flag_at_limit`` (a free parameter within 0.1% of its value from a soft limit), ``flag_low_counts``
    (net counts < 500), ``flag_not_converged``, ``flag_errors_covariance`` (profile errors were asked
    for but covariance errors were given for some or all parameters; ``errors_fallback_reason`` says
    which and why, from the fit record's ``error_fallbacks``),
    ``flag_bkg_contamination`` (cluster share of the background annulus > 10%), ``flag_aperture_lost``
    (> 10% of the aperture's flux in masks and gaps), ``flag_r500_not_converged``,
    ``flag_profile_unconstrained`` (the surface-brightness profile leaves L500's correction uncertain by
    > 15%, or its fit has no covariance: background and cluster wing degenerate); ``quality_flags``
    lists the names of the raised flags, comma-separated.
    """
    unconstrained, at_limit = [], []
    for p in fit.get("parameters") or []:
        if p.get("frozen") or p.get("link_to") or str(p.get("name", "")).lower().startswith("constant"):
            continue
        v = _nan(p.get("value"))
        err = 0.5 * (abs(_nan(p.get("err_lo"))) + abs(_nan(p.get("err_hi"))))
        if math.isfinite(v) and v != 0 and (not math.isfinite(err) or err > UNCONSTRAINED_REL_ERROR * abs(v)):
            unconstrained.append(p["name"])
        lo, hi = _nan(p.get("min")), _nan(p.get("max"))
        tol = 1e-3 * max(abs(v), 1e-30) if math.isfinite(v) else math.nan
        if (math.isfinite(lo) and v - lo <= tol) or (math.isfinite(hi) and hi - v <= tol):
            at_limit.append(p["name"])
    method = str(fit.get("error_method") or "")
    fallbacks = fit.get("error_fallbacks") or {}
    covariance_fallback = requested_errors == "profile" and (method not in ("profile", "") or bool(fallbacks))
    if covariance_fallback and not error_fallback_reason and fallbacks:
        error_fallback_reason = "; ".join(f"{k}: {v}" for k, v in fallbacks.items())
    flags = {
        "flag_unconstrained": bool(unconstrained),
        "unconstrained_parameters": ",".join(unconstrained),
        "flag_at_limit": bool(at_limit),
        "at_limit_parameters": ",".join(at_limit),
        "flag_low_counts": bool(math.isfinite(net_counts) and net_counts < LOW_NET_COUNTS),
        "flag_not_converged": not bool(fit.get("converged", False)),
        "flag_errors_covariance": covariance_fallback,
        "errors_fallback_reason": (error_fallback_reason or f"error method {method}")
        if covariance_fallback
        else "",
        "flag_bkg_contamination": _nan(regions.get("bkg_cluster_fraction")) > BKG_CONTAMINATION_LIMIT,
        "flag_aperture_lost": _nan(regions.get("aperture_lost_fraction")) > LOST_FRACTION_LIMIT,
        "flag_r500_not_converged": r500_converged is False,
        "flag_profile_unconstrained": bool(l500_profile_rel_err > PROFILE_REL_ERROR_LIMIT),
    }
    flags["quality_flags"] = ",".join(k[5:] for k, v in flags.items() if k.startswith("flag_") and v is True)
    return flags


def fitted_kt(fit: Mapping[str, Any]) -> float:
    """The first free ``kT`` parameter of a fit record (NaN if none)."""
    for p in fit.get("parameters") or []:
        if str(p.get("name", "")).split(".")[-1].lower() == "kt":
            return _nan(p.get("value"))
    return math.nan


def net_counts_of(datasets: Sequence[Mapping[str, Any]]) -> float:
    """Sum of the source counts of the fitted datasets (background not subtracted: an upper bound)."""
    vals = [_nan(d.get("counts")) for d in datasets]
    vals = [v for v in vals if math.isfinite(v)]
    return float(sum(vals)) if vals else math.nan
