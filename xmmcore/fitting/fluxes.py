"""Model fluxes (absorbed / unabsorbed) in energy bands and luminosities with astropy.cosmology.

Fluxes are integrals of E x N(E) over the band on a fine logarithmic grid (erg cm^-2 s^-1).
"Unabsorbed" sets every multiplicative absorption component to 1 (cross-normalisation constants
are kept at the first dataset's value, 1). Luminosities are 4 pi D_L^2 times the unabsorbed flux in
the observed band that corresponds to the rest-frame band: [lo, hi] / (1 + z) (as XSPEC ``lumin``).
Errors come from sampling the parameters' covariance (multivariate normal, clipped to the limits):
16th and 84th percentiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..constants import flat_lcdm
from .models import CompositeModel

__all__ = ["KEV_TO_ERG", "band_flux", "band_key", "flux_table", "luminosity_distance_cm"]

KEV_TO_ERG = 1.602176634e-9
_N_GRID = 1000


def band_key(band: Sequence[float]) -> str:
    """Dictionary key of a band: ``(0.5, 2) -> "0.5-2.0"``."""

    def fmt(x: float) -> str:
        return f"{x:.1f}" if abs(round(x, 1) - x) < 1e-12 else f"{x:g}"

    return f"{fmt(float(band[0]))}-{fmt(float(band[1]))}"


def band_flux(
    model: CompositeModel, values: np.ndarray, band: Sequence[float], *, unabsorbed: bool = False
) -> float:
    """Energy flux of the model in ``band`` (keV) in erg cm^-2 s^-1."""
    lo, hi = float(band[0]), float(band[1])
    edges = np.geomspace(lo, hi, _N_GRID + 1)
    photons = model.evaluate(edges[:-1], edges[1:], values, unabsorbed=unabsorbed)
    emid = 0.5 * (edges[:-1] + edges[1:])
    return float(np.sum(photons * emid) * KEV_TO_ERG)


def _cosmology(cosmology: Any) -> Any:
    return flat_lcdm(cosmology)


def luminosity_distance_cm(z: float, cosmology: Any = None) -> float:
    """Luminosity distance in cm for redshift ``z`` (``cosmology``: astropy object or {H0, Om0})."""
    return float(_cosmology(cosmology).luminosity_distance(z).to("cm").value)


def flux_table(
    model: CompositeModel,
    best: np.ndarray,
    bands: Sequence[Sequence[float]],
    *,
    samples: np.ndarray | None = None,
    redshift: float | None = None,
    cosmology: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fluxes and luminosities with errors.

    Parameters
    ----------
    model : CompositeModel
        The model.
    best : ndarray
        Best-fit parameter values (all model parameters, XSPEC order).
    bands : sequence of (lo, hi)
        Bands in keV (observed frame for fluxes, rest frame for luminosities).
    samples : ndarray, optional
        ``n x n_par`` parameter draws for the errors.
    redshift : float, optional
        Source redshift; luminosities need ``redshift > 0``.
    cosmology : astropy cosmology or mapping, optional
        Default flat LambdaCDM with H0 = 70, Om0 = 0.3.

    Returns
    -------
    fluxes : dict
        ``{"0.5-2.0": {"band_kev", "absorbed", "absorbed_err_lo", "absorbed_err_hi", "unabsorbed",
        "unabsorbed_err_lo", "unabsorbed_err_hi", "unit"}}``.
    luminosities : dict
        ``{"0.5-2.0": {"band_kev", "value", "err_lo", "err_hi", "redshift", "unit"}}`` (rest-frame bands).
    """
    fluxes: dict[str, Any] = {}
    lums: dict[str, Any] = {}

    def with_errors(fn: Callable[[np.ndarray], float]) -> tuple[float, float, float]:
        value = fn(best)
        if samples is None or len(samples) < 2:
            return value, float("nan"), float("nan")
        draws = np.array([fn(s) for s in samples])
        p16, p84 = np.percentile(draws, [15.865, 84.135])
        return value, max(value - p16, 0.0), max(p84 - value, 0.0)

    for band in bands:
        key = band_key(band)
        entry: dict[str, Any] = {"band_kev": [float(band[0]), float(band[1])], "unit": "erg cm-2 s-1"}
        for which, unabs in (("absorbed", False), ("unabsorbed", True)):
            v, lo, hi = with_errors(functools.partial(band_flux, model, band=band, unabsorbed=unabs))
            entry[which], entry[f"{which}_err_lo"], entry[f"{which}_err_hi"] = v, lo, hi
        fluxes[key] = entry
        if redshift is not None and redshift > 0:
            dl = luminosity_distance_cm(redshift, cosmology)
            factor = 4.0 * np.pi * dl * dl
            obs_band = (band[0] / (1.0 + redshift), band[1] / (1.0 + redshift))

            def luminosity(p: np.ndarray, b: Sequence[float] = obs_band, f: float = factor) -> float:
                return f * band_flux(model, p, b, unabsorbed=True)

            v, lo, hi = with_errors(luminosity)
            lums[key] = {
                "band_kev": [float(band[0]), float(band[1])],
                "value": v,
                "err_lo": lo,
                "err_hi": hi,
                "redshift": float(redshift),
                "unit": "erg s-1",
            }
    return fluxes, lums
