"""Extended-source ARF: the on-axis effective area weighted, at each energy, by the vignetting over the region.

As SAS ``arfgen extendedsource=yes detmaptype=dataset`` does with a detector map of the region's counts, the
ARF of an extended source is the on-axis area times the mean vignetting over where the source photons fall::

    ARF(E) = A(E) <v(theta, E)>,   <v(E)> = sum_i v(theta_i, E) s_i / sum_i s_i

with ``s_i`` the source photon weights. Here the weights are the region's 0.5-2 keV events (where the cluster
dominates), each divided by its own vignetting at 1 keV (a counts image divided by the exposure map, i.e.
the sky surface brightness, not the vignetted counts), minus the expected background events of the region,
taken as spread over its live area (the area mean of the same quantities). ``v`` is
:func:`xmmcore.responses.vignetting` (the simulator's; the CCF's ``XRT*_XAREAEF`` is not read), theta from
the pointing. Energy dependence: the vignetting is steeper at high energy, so an on-axis ARF makes an
off-axis cluster look cooler than it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .images import CcdFootprints
    from .ogip import ARF
    from .regions import Selection

__all__ = ["WEIGHT_BAND_KEV", "ArfWeighting", "arf_is_weighted", "region_source_vignetting", "weighted_arf"]

#: Band of the events that weight the vignetting (keV), and the energy of their own vignetting.
WEIGHT_BAND_KEV = (0.5, 2.0)
_BAND_VIGNETTING_KEV = 1.0
#: Below this share of source weight (after the background is taken off), the area mean is used.
_MIN_SOURCE_SHARE = 0.05


@dataclass
class ArfWeighting:
    """The mean vignetting of a region's source photons at ``energies_kev`` and how it was obtained."""

    energies_kev: np.ndarray
    vignetting: np.ndarray
    n_events: int
    n_background: float
    method: str

    def record(self) -> dict[str, Any]:
        return {
            "arf_method": self.method,
            "arf_vignetting_1kev": float(np.interp(1.0, self.energies_kev, self.vignetting)),
            "arf_vignetting_6kev": float(np.interp(6.0, self.energies_kev, self.vignetting)),
            "arf_weight_events": int(self.n_events),
            "arf_weight_background": float(self.n_background),
        }


def region_source_vignetting(
    x: np.ndarray,
    y: np.ndarray,
    pi: np.ndarray,
    sel: Selection,
    footprints: CcdFootprints,
    axis_xy: tuple[float, float],
    energies_kev: np.ndarray,
    *,
    n_background: float,
    fov_footprints: CcdFootprints | None = None,
    step_phys: float = 120.0,
) -> ArfWeighting:
    """Mean vignetting of the source photons in ``sel`` (module docstring) at ``energies_kev``.

    ``x``, ``y``, ``pi``: the cleaned events (physical pixels, eV); ``n_background``: the expected background
    events of the region in :data:`WEIGHT_BAND_KEV`. When the background leaves less than 5% of the weight
    (no source to speak of), the area mean (a uniform source) is returned, ``method`` saying so.
    """
    from .background import region_grid_theta
    from .images import PHYS_PIXEL_ARCSEC
    from .responses import vignetting

    e = np.asarray(energies_kev, dtype=float)
    band = (pi >= WEIGHT_BAND_KEV[0] * 1000.0) & (pi < WEIGHT_BAND_KEV[1] * 1000.0)
    inside = band & sel.contains(x, y)
    theta_ev = np.hypot(x[inside] - axis_xy[0], y[inside] - axis_xy[1]) * PHYS_PIXEL_ARCSEC / 60.0
    # the region's live area on the background's grid (region_vignetting's), seen sky only
    theta_grid, sky = region_grid_theta(
        sel, footprints, axis_xy, fov_footprints=fov_footprints, step_phys=step_phys
    )
    theta_a = theta_grid[sky]
    if theta_a.size == 0:
        raise ValueError("the region has no area on the detector")
    inv_ev = 1.0 / vignetting(theta_ev, _BAND_VIGNETTING_KEV)
    inv_a = 1.0 / vignetting(theta_a, _BAND_VIGNETTING_KEV)
    n_b = max(float(n_background), 0.0)
    den = float(inv_ev.sum()) - n_b * float(inv_a.mean())
    area_mean = np.array([float(np.mean(vignetting(theta_a, ek))) for ek in e])
    if theta_ev.size == 0 or den < _MIN_SOURCE_SHARE * float(inv_ev.sum()):
        return ArfWeighting(
            e, area_mean, int(theta_ev.size), n_b, "area_mean (no source counts above background)"
        )
    num = np.array(
        [
            float(np.sum(vignetting(theta_ev, ek) * inv_ev))
            - n_b * float(np.mean(vignetting(theta_a, ek) * inv_a))
            for ek in e
        ]
    )
    vig = np.clip(num / den, 1e-3, 1.0)
    return ArfWeighting(e, vig, int(theta_ev.size), n_b, "counts_weighted")


def weighted_arf(on_axis: ARF, weighting: ArfWeighting) -> ARF:
    """``on_axis`` times the region's mean vignetting at each of its energies; header says how (``VIGNWGT``)."""
    import copy

    from .ogip import ARF as _ARF

    mid = 0.5 * (np.asarray(on_axis.energ_lo) + np.asarray(on_axis.energ_hi))
    factor = np.interp(mid, weighting.energies_kev, weighting.vignetting)
    header = dict(copy.deepcopy(on_axis.header))
    header.update(
        {
            "VIGNWGT": True,
            "VIGNMETH": weighting.method[:68],
            "VIGN1KEV": float(np.interp(1.0, mid, factor)),
            "VIGN6KEV": float(np.interp(6.0, mid, factor)),
        }
    )
    return _ARF(
        energ_lo=on_axis.energ_lo,
        energ_hi=on_axis.energ_hi,
        specresp=np.asarray(on_axis.specresp, dtype=float) * factor,
        header=header,
    )


def arf_is_weighted(path: Any) -> bool:
    """Whether the ARF file at ``path`` carries the region's vignetting (``VIGNWGT = T``, written here)."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            for hdu in hdul[1:]:
                if "VIGNWGT" in hdu.header:
                    return bool(hdu.header["VIGNWGT"])
    except (OSError, ValueError):
        return False
    return False
