"""Smooth, documented approximations of the EPIC responses: effective area (ARF), energy resolution (RMF).

These are *not* calibration products. They are smooth functions with the shape and size of the
real EPIC responses, so that simulated data and their responses agree exactly (the simulator folds
its spectra through the very same functions), and so that a fit of simulated data exercises the
same code paths as a fit of real data.

Channel grids (identical to the canned SAS RMFs, e.g. ``psrj0855/*/xmm_*_0605960101.rmf``):

====== ========== ============ ============================ =======================
camera channels   width [eV]   PI -> channel                 photon-energy grid
====== ========== ============ ============================ =======================
pn     4096 (0..) 5            ``channel = PI // 5``         0.05-15.0 keV, 10 eV bins
mos    800 (0..)  15           ``channel = PI // 15``        0.05-12.0 keV, 10 eV bins
====== ========== ============ ============================ =======================

Energy resolution
    A Gaussian of ``FWHM(E)^2 = A + B E`` (E in keV, FWHM in eV): the Fano-limited form with a
    read-noise floor. pn: ``A = 3956, B = 2444`` (80 eV at 1 keV, 140 eV at 6.4 keV, 168 eV at
    10 keV); MOS: ``A = 892, B = 2708`` (60 eV at 1 keV, 135 eV at 6.4 keV, 167 eV at 10 keV) -- the
    FWHM measured on the canned SAS RMFs in ``shared/data/xmm/psrj0855``. A row of the matrix is the
    Gaussian (centred on the bin's mid energy) integrated over each channel, truncated at +-6 sigma,
    and scaled by 1 - 1e-6, so every row sums to <= 1 even after float32 rounding (1 - 1e-6 unless the
    Gaussian runs off the channel grid).
    No low-energy tail, no pattern dependence.

Effective area (on axis)
    Mirror x filter (Medium) x quantum efficiency for the standard pattern selection (pn PATTERN<=4,
    MOS PATTERN<=12), given as knots (energy, area) read off the real on-axis ARFs
    (``a2443_fakeit/pnS004-A2443_reg2.arf`` for pn, ``psrj0855/mos1`` scaled to a full aperture for
    MOS) and interpolated monotonically (PCHIP) in log(area) -- the instrumental edges (O K 0.53 keV,
    Si K 1.84 keV, Au M 2.2 keV, Au L 11.9 keV) become smooth steps.

Vignetting
    ``v(theta, E) = exp(-(theta / theta_v(E))^2)`` with ``theta_v = 17 arcmin / (1 + 0.05 max(E - 1.5, 0))``:
    0.71 at 10 arcmin and 1.5 keV, 0.57 at 10 arcmin and 8 keV, as the EPIC vignetting curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.interpolate import PchipInterpolator
from scipy.special import ndtr

from .errors import InputDataError
from .observation import CAMERAS

__all__ = [
    "CAMERA_SPECS",
    "CameraSpec",
    "camera_spec",
    "channel_edges_kev",
    "effective_area",
    "energy_grid",
    "fwhm_kev",
    "make_arf",
    "make_rmf",
    "sigma_kev",
    "vignetting",
    "write_responses",
]


@dataclass(frozen=True)
class CameraSpec:
    """Fixed properties of one EPIC camera's spectral response.

    Attributes
    ----------
    camera : str
        ``pn``, ``mos1`` or ``mos2``.
    instrume : str
        INSTRUME keyword (``EPN``, ``EMOS1``, ``EMOS2``).
    n_chan : int
        Number of PI channels in the RMF (first channel is 0).
    chan_width_ev : float
        Width of one channel in eV (PI is in eV; ``channel = PI // chan_width_ev``).
    e_max_kev : float
        Upper end of the photon-energy grid of the ARF/RMF, keV.
    pi_max : int
        TLMAX of the PI column in event lists (eV).
    fwhm_a_ev2, fwhm_b_ev2_per_kev : float
        ``FWHM^2 [eV^2] = A + B * E[keV]``.
    area_knots : tuple
        (energy keV, on-axis effective area cm^2) pairs.
    """

    camera: str
    instrume: str
    n_chan: int
    chan_width_ev: float
    e_max_kev: float
    pi_max: int
    fwhm_a_ev2: float
    fwhm_b_ev2_per_kev: float
    area_knots: tuple[tuple[float, float], ...]


_PN_AREA = (
    (0.05, 2.0),
    (0.10, 30.0),
    (0.15, 110.0),
    (0.20, 300.0),
    (0.28, 330.0),
    (0.30, 270.0),
    (0.40, 560.0),
    (0.50, 820.0),
    (0.53, 860.0),
    (0.56, 800.0),
    (0.70, 1000.0),
    (1.00, 1190.0),
    (1.50, 1300.0),
    (1.80, 1290.0),
    (2.00, 1270.0),
    (2.15, 1230.0),
    (2.30, 1050.0),
    (2.60, 900.0),
    (3.00, 870.0),
    (4.00, 895.0),
    (5.00, 895.0),
    (6.00, 840.0),
    (7.00, 705.0),
    (8.00, 520.0),
    (9.00, 380.0),
    (10.0, 250.0),
    (11.0, 156.0),
    (11.8, 110.0),
    (12.0, 40.0),
    (13.0, 28.0),
    (14.0, 20.0),
    (15.0, 14.0),
)
_MOS_AREA = (
    (0.05, 0.5),
    (0.10, 3.0),
    (0.15, 12.0),
    (0.20, 26.0),
    (0.30, 24.0),
    (0.40, 85.0),
    (0.50, 185.0),
    (0.53, 195.0),
    (0.56, 180.0),
    (0.70, 215.0),
    (1.00, 385.0),
    (1.50, 550.0),
    (1.80, 530.0),
    (1.86, 460.0),
    (2.00, 450.0),
    (2.20, 455.0),
    (2.40, 390.0),
    (3.00, 385.0),
    (4.00, 395.0),
    (5.00, 340.0),
    (6.00, 245.0),
    (7.00, 152.0),
    (8.00, 84.0),
    (9.00, 46.0),
    (10.0, 24.5),
    (11.0, 12.6),
    (11.8, 8.0),
    (12.0, 2.9),
)

CAMERA_SPECS: dict[str, CameraSpec] = {
    "pn": CameraSpec("pn", "EPN", 4096, 5.0, 15.0, 20479, 3956.0, 2444.0, _PN_AREA),
    "mos1": CameraSpec("mos1", "EMOS1", 800, 15.0, 12.0, 15000, 892.0, 2708.0, _MOS_AREA),
    "mos2": CameraSpec("mos2", "EMOS2", 800, 15.0, 12.0, 15000, 892.0, 2708.0, _MOS_AREA),
}

_E_MIN_KEV = 0.05
_E_STEP_KEV = 0.01
_TRUNCATE_SIGMA = 6.0


def camera_spec(camera: str) -> CameraSpec:
    """Return the :class:`CameraSpec` of ``camera`` (``pn``, ``mos1``, ``mos2``)."""
    try:
        return CAMERA_SPECS[camera]
    except KeyError:
        raise InputDataError(
            f"unknown EPIC camera {camera!r} (expected one of {sorted(CAMERA_SPECS)})"
        ) from None


def energy_grid(camera: str) -> tuple[np.ndarray, np.ndarray]:
    """Photon-energy bin edges (``energ_lo``, ``energ_hi``) in keV of the ARF and RMF of ``camera``."""
    spec = camera_spec(camera)
    n = round((spec.e_max_kev - _E_MIN_KEV) / _E_STEP_KEV)
    edges = _E_MIN_KEV + _E_STEP_KEV * np.arange(n + 1)
    return edges[:-1].copy(), edges[1:].copy()


def channel_edges_kev(camera: str) -> np.ndarray:
    """Channel boundaries in keV (``n_chan + 1`` values; channel i covers ``[edges[i], edges[i+1])``)."""
    spec = camera_spec(camera)
    return np.arange(spec.n_chan + 1) * spec.chan_width_ev / 1000.0


def fwhm_kev(camera: str, energy_kev: np.ndarray | float) -> np.ndarray:
    """Energy resolution (FWHM, keV) at ``energy_kev``."""
    spec = camera_spec(camera)
    e = np.clip(np.asarray(energy_kev, dtype=float), 0.0, None)
    return np.sqrt(spec.fwhm_a_ev2 + spec.fwhm_b_ev2_per_kev * e) / 1000.0


def sigma_kev(camera: str, energy_kev: np.ndarray | float) -> np.ndarray:
    """Gaussian sigma (keV) of the energy redistribution at ``energy_kev``."""
    return fwhm_kev(camera, energy_kev) / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def effective_area(camera: str, energy_kev: np.ndarray | float) -> np.ndarray:
    """On-axis effective area (cm^2) at ``energy_kev``; zero outside the camera's energy grid."""
    spec = camera_spec(camera)
    knots = np.asarray(spec.area_knots, dtype=float)
    interp = PchipInterpolator(knots[:, 0], np.log(knots[:, 1]), extrapolate=False)
    e = np.asarray(energy_kev, dtype=float)
    out = np.exp(interp(np.clip(e, knots[0, 0], knots[-1, 0])))
    return np.where((e >= knots[0, 0]) & (e <= knots[-1, 0]), out, 0.0)


def vignetting(theta_arcmin: np.ndarray | float, energy_kev: np.ndarray | float) -> np.ndarray:
    """Fraction of the on-axis effective area at off-axis angle ``theta_arcmin`` and ``energy_kev``.

    Arrays broadcast against each other.
    """
    theta = np.asarray(theta_arcmin, dtype=float)
    e = np.asarray(energy_kev, dtype=float)
    theta_v = 17.0 / (1.0 + 0.05 * np.clip(e - 1.5, 0.0, None))
    return np.exp(-((theta / theta_v) ** 2))


def _header(camera: str, filter_name: str) -> dict[str, object]:
    spec = camera_spec(camera)
    return {
        "TELESCOP": "XMM",
        "INSTRUME": spec.instrume,
        "FILTER": filter_name,
        "CHANTYPE": "PI",
        "ORIGIN": "xmm-survey",
        "CREATOR": "xmmcore.responses",
        "COMMENT": "Smooth approximation of the EPIC response (xmmcore.responses); not a calibration product",
    }


def make_rmf(camera: str, *, filter_name: str = "Medium"):  # -> xmmcore.ogip.RMF
    """Build the redistribution matrix of ``camera`` (Gaussian, see module docstring).

    Returns
    -------
    xmmcore.ogip.RMF
        ``energ_lo``/``energ_hi`` from :func:`energy_grid`, channels from 0, ``HDUCLAS3 = REDIST``.
    """
    from .ogip import RMF

    spec = camera_spec(camera)
    lo, hi = energy_grid(camera)
    mid = 0.5 * (lo + hi)
    sig = sigma_kev(camera, mid)
    edges = channel_edges_kev(camera)
    width = spec.chan_width_ev / 1000.0
    first = np.clip(np.floor((mid - _TRUNCATE_SIGMA * sig) / width).astype(int), 0, spec.n_chan - 1)
    last = np.clip(np.ceil((mid + _TRUNCATE_SIGMA * sig) / width).astype(int), 0, spec.n_chan - 1)
    counts = last - first + 1
    rows = np.repeat(np.arange(lo.size), counts)
    starts = np.repeat(first, counts)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = starts + offsets
    z_lo = (edges[cols] - mid[rows]) / sig[rows]
    z_hi = (edges[cols + 1] - mid[rows]) / sig[rows]
    # 1 - 1e-6: a row stays <= 1 after the float32 rounding of the written MATRIX column.
    vals = (ndtr(z_hi) - ndtr(z_lo)) * (1.0 - 1e-6)
    keep = vals > 1e-9
    matrix = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(lo.size, spec.n_chan))
    header = _header(camera, filter_name) | {"HDUCLAS3": "REDIST", "LO_THRES": 1e-9}
    return RMF(
        energ_lo=lo,
        energ_hi=hi,
        matrix=matrix,
        e_min=edges[:-1].copy(),
        e_max=edges[1:].copy(),
        channel_offset=0,
        header=header,
    )


def make_arf(camera: str, *, offaxis_arcmin: float = 0.0, fraction: float = 1.0, filter_name: str = "Medium"):
    """Build the ARF of ``camera``: on-axis area x vignetting at ``offaxis_arcmin`` x ``fraction``.

    Parameters
    ----------
    camera : str
        ``pn``, ``mos1`` or ``mos2``.
    offaxis_arcmin : float
        Off-axis angle of the extraction region (arcmin); 0 = on axis.
    fraction : float
        Energy-independent factor (e.g. the encircled-energy fraction of a point-source region).

    Returns
    -------
    xmmcore.ogip.ARF
    """
    from .ogip import ARF

    lo, hi = energy_grid(camera)
    mid = 0.5 * (lo + hi)
    area = effective_area(camera, mid) * vignetting(offaxis_arcmin, mid) * float(fraction)
    return ARF(energ_lo=lo, energ_hi=hi, specresp=area, header=_header(camera, filter_name))


def write_responses(
    directory: str | Path, cameras: tuple[str, ...] = CAMERAS, *, filter_name: str = "Medium"
) -> dict[str, dict[str, Path]]:
    """Write ``<camera>.rmf`` and ``<camera>.arf`` (on-axis) for each camera into ``directory``.

    Returns
    -------
    dict
        camera -> {"rmf": path, "arf": path}.
    """
    from .ogip import write_arf, write_rmf

    directory = Path(directory)
    out: dict[str, dict[str, Path]] = {}
    for cam in cameras:
        out[cam] = {
            "rmf": write_rmf(make_rmf(cam, filter_name=filter_name), directory / f"{cam}.rmf"),
            "arf": write_arf(make_arf(cam, filter_name=filter_name), directory / f"{cam}.arf"),
        }
    return out
