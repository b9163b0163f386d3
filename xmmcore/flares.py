"""Soft-proton flare screening: high-energy light curves and flare GTIs.

Two methods, as X-ray cluster papers use them:

``espfilt``
    In the spirit of ESAS ``espfilt``: histogram the high-energy count rate, fit a Gaussian
    to the quiescent peak (iteratively, within +/- 3 sigma of the mode), and keep the
    light-curve bins with rate <= mean + ``nsigma`` * sigma.
``fixed``
    Keep bins with rate <= a fixed threshold (pn 0.4, MOS 0.35 ct/s in 10-12 keV, single
    events, the SAS thread values).

The kept bins are turned into GTIs, intersected with the input GTIs (STDGTI) and intervals
shorter than ``min_gti_s`` dropped.  The flare fraction is ``1 - kept / input`` exposure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.optimize import curve_fit

from . import gti as gtimod
from .events import EventList, flag_mask_for, screen_mask
from .fsutil import atomic_write_fits

__all__ = ["FlareResult", "fit_quiescent_peak", "flare_gti", "light_curve", "write_light_curve"]


@dataclass
class FlareResult:
    """Outcome of flare screening.

    Attributes
    ----------
    gti : ndarray
        Flare-free GTIs ``(N, 2)`` [s], already intersected with the input GTIs.
    lc_time : ndarray
        Bin centres [s].
    lc_rate : ndarray
        Count rate per bin [ct/s] (NaN where the bin has no good time).
    lc_exposure : ndarray
        Good time in each bin [s].
    threshold : float
        Rate above which a bin is flagged [ct/s].
    mean, sigma : float
        Gaussian fit to the quiescent peak [ct/s] (NaN for ``fixed``).
    flare_fraction : float
        Fraction of the input good time removed.
    method : str
    band_kev : tuple of float
    bin_s : float
    exposure_in_s, exposure_out_s : float
        Input and output good time [s].
    """

    gti: np.ndarray
    lc_time: np.ndarray
    lc_rate: np.ndarray
    lc_exposure: np.ndarray
    threshold: float
    mean: float
    sigma: float
    flare_fraction: float
    method: str
    band_kev: tuple[float, float]
    bin_s: float
    exposure_in_s: float
    exposure_out_s: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers for the step summary / catalogue."""
        return {
            "flare_method": self.method,
            "flare_band_kev": list(self.band_kev),
            "flare_bin_s": self.bin_s,
            "flare_threshold_ctps": self.threshold,
            "flare_mean_ctps": self.mean,
            "flare_sigma_ctps": self.sigma,
            "flare_fraction": self.flare_fraction,
            "exposure_in_s": self.exposure_in_s,
            "exposure_out_s": self.exposure_out_s,
            "n_gti": int(self.gti.shape[0]),
            "flare_notes": list(self.notes),
        }


def light_curve(
    time: np.ndarray,
    gti: np.ndarray,
    *,
    bin_s: float,
    tstart: float | None = None,
    tstop: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin event times into a light curve corrected for partial good time in each bin.

    Returns ``(edges, counts, good_time_s, rate)``; ``rate`` is NaN in bins with no good time.
    """
    g = gtimod.normalise(gti)
    t0 = float(g[0, 0]) if tstart is None else tstart
    t1 = float(g[-1, 1]) if tstop is None else tstop
    nbin = max(1, int(np.ceil((t1 - t0) / bin_s)))
    edges = t0 + bin_s * np.arange(nbin + 1)
    counts = np.histogram(time, bins=edges)[0].astype(np.float64)
    # Good time per bin: overlap of each bin with the GTIs, via cumulative good time at the edges.
    cum = _cumulative_good_time(edges, g)
    good = np.diff(cum)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(good > 0, counts / good, np.nan)
    return edges, counts, good, rate


def _cumulative_good_time(t: np.ndarray, g: np.ndarray) -> np.ndarray:
    if g.shape[0] == 0:
        return np.zeros_like(t)
    lengths = g[:, 1] - g[:, 0]
    cum_before = np.concatenate([[0.0], np.cumsum(lengths)])
    idx = np.searchsorted(g[:, 0], t, side="right") - 1
    out = np.zeros_like(t, dtype=np.float64)
    ok = idx >= 0
    i = idx[ok]
    out[ok] = cum_before[i] + np.minimum(t[ok] - g[i, 0], lengths[i])
    return out


def _gauss(x: np.ndarray, amp: float, mu: float, sig: float) -> np.ndarray:
    return amp * np.exp(-0.5 * ((x - mu) / sig) ** 2)


def fit_quiescent_peak(
    rate: np.ndarray, *, weights: np.ndarray | None = None, n_iter: int = 5
) -> tuple[float, float]:
    """Gaussian fit to the quiescent peak of a rate histogram (as ESAS ``espfilt``).

    Starts from the histogram mode and a robust width (MAD), then refits the histogram
    within +/- 3 sigma of the current mean.  Returns ``(mean, sigma)`` [ct/s]; falls back
    to the median/MAD of the rates when the histogram is too sparse for a fit.
    """
    r = np.asarray(rate, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(r))
    mad = float(np.median(np.abs(r - med))) * 1.4826
    if r.size < 8 or mad <= 0:
        return med, max(mad, float(np.std(r)))
    mu, sig = med, mad
    for _ in range(n_iter):
        lo, hi = mu - 3 * sig, mu + 3 * sig
        sel = r[(r >= lo) & (r <= hi)]
        if sel.size < 8:
            break
        nb = int(np.clip(np.sqrt(sel.size) * 2, 10, 60))
        hist, edges = np.histogram(sel, bins=nb, range=(max(lo, 0.0) if lo < 0 else lo, hi))
        centres = 0.5 * (edges[1:] + edges[:-1])
        try:
            p, _ = curve_fit(
                _gauss,
                centres,
                hist,
                p0=(hist.max(), mu, sig),
                sigma=np.sqrt(np.maximum(hist, 1.0)),
                maxfev=2000,
            )
        except (RuntimeError, ValueError):
            break
        new_mu, new_sig = float(p[1]), abs(float(p[2]))
        if not (np.isfinite(new_mu) and np.isfinite(new_sig)) or new_sig <= 0 or not (lo <= new_mu <= hi):
            break
        converged = abs(new_mu - mu) < 1e-3 * max(sig, 1e-9) and abs(new_sig - sig) < 1e-3 * sig
        mu, sig = new_mu, new_sig
        if converged:
            break
    return mu, sig


def flare_gti(
    evl: EventList,
    *,
    method: str = "espfilt",
    band_kev: tuple[float, float] = (10.0, 12.0),
    bin_s: float = 100.0,
    nsigma: float = 2.0,
    rate: float | None = None,
    min_gti_s: float = 100.0,
    pattern_max: int = 0,
    flag: str | int | None = "xmmea",
    min_bin_fraction: float = 0.5,
) -> FlareResult:
    """Flare-free GTIs from the high-energy light curve of an event list.

    Parameters
    ----------
    evl : EventList
        Unscreened or screened events (the band/pattern/flag selection is applied here).
    method : {"espfilt", "fixed", "none"}
    band_kev : (float, float)
        Light-curve band [keV]; PI in eV.
    bin_s : float
        Light-curve bin [s].
    nsigma : float
        ``espfilt`` threshold: mean + nsigma * sigma of the quiescent peak.
    rate : float, optional
        ``fixed`` threshold [ct/s].
    min_gti_s : float
        Minimum length of a kept interval [s].
    pattern_max : int
        Patterns used for the light curve (0 = singles, as the SAS threads).
    flag : {"xmmea", "zero"} or int or None
        FLAG selection for the light-curve events.
    min_bin_fraction : float
        Bins with less good time than this fraction of ``bin_s`` are not used for the rate
        histogram (their rate is too noisy) but are kept or dropped by the same threshold.
    """
    if method not in ("espfilt", "fixed", "none"):
        raise ValueError(f"flare method must be espfilt, fixed or none, got {method!r}")
    in_gti = evl.gti
    if in_gti.shape[0] == 0:
        raise ValueError("event list has no good time")
    cols = evl.columns
    sel = screen_mask(
        cols,
        pattern_max=pattern_max,
        flag_mask=flag_mask_for(evl.camera, flag, evl.header),
        pi_min=band_kev[0] * 1000.0,
        pi_max=band_kev[1] * 1000.0,
    )
    edges, counts, good, lc_rate = light_curve(cols["TIME"][sel], in_gti, bin_s=bin_s)
    exp_in = gtimod.exposure(in_gti)
    notes: list[str] = []
    mean = sigma = float("nan")
    if method == "none":
        threshold = float("inf")
    elif method == "fixed":
        if rate is None:
            raise ValueError("flare method 'fixed' needs a rate threshold [ct/s]")
        threshold = float(rate)
    else:
        mean, sigma = fit_quiescent_peak(lc_rate[good >= min_bin_fraction * bin_s])
        if not np.isfinite(mean):
            threshold = float("inf")
            notes.append("no usable light-curve bins; no flare filtering applied")
        else:
            # Poisson floor: a bin of the mean rate cannot be told apart below ~1 count of scatter.
            sigma = max(sigma, np.sqrt(max(mean, 0.0) * bin_s) / bin_s if mean > 0 else sigma)
            threshold = mean + nsigma * sigma
    full = good >= min_bin_fraction * bin_s
    keep = np.isfinite(lc_rate) & (lc_rate <= threshold)
    if np.isfinite(threshold):
        # Bins with little good time have noisy rates: flag them only if their counts exceed
        # what the threshold rate allows by 3 Poisson sigma.
        allowed = threshold * good
        keep[~full] = (good[~full] > 0) & (
            counts[~full] <= allowed[~full] + 3.0 * np.sqrt(allowed[~full]) + 1.0
        )
    if method == "none":
        keep = good > 0
    out = gtimod.intersection(gtimod.from_bins(edges, keep), in_gti)
    out = gtimod.drop_short(out, min_length_s=min_gti_s)
    exp_out = gtimod.exposure(out)
    frac = 1.0 - exp_out / exp_in if exp_in > 0 else float("nan")
    return FlareResult(
        gti=out,
        lc_time=0.5 * (edges[1:] + edges[:-1]),
        lc_rate=lc_rate,
        lc_exposure=good,
        threshold=threshold,
        mean=mean,
        sigma=sigma,
        flare_fraction=float(frac),
        method=method,
        band_kev=(float(band_kev[0]), float(band_kev[1])),
        bin_s=float(bin_s),
        exposure_in_s=exp_in,
        exposure_out_s=exp_out,
        notes=notes,
    )


def write_light_curve(res: FlareResult, path: str | Path, *, header: dict[str, Any] | None = None) -> Path:
    """Write the high-energy light curve as an OGIP ``RATE`` table plus the flare GTIs (atomic)."""
    with np.errstate(invalid="ignore"):
        err = np.where(
            res.lc_exposure > 0,
            np.sqrt(np.nan_to_num(res.lc_rate) * res.lc_exposure)
            / np.where(res.lc_exposure > 0, res.lc_exposure, 1.0),
            np.nan,
        )
    rate = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="TIME", format="D", unit="s", array=res.lc_time),
            fits.Column(name="RATE", format="E", unit="count/s", array=res.lc_rate),
            fits.Column(name="ERROR", format="E", unit="count/s", array=err),
            fits.Column(name="FRACEXP", format="E", array=res.lc_exposure / res.bin_s),
        ],
        name="RATE",
    )
    h = rate.header
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "LIGHTCURVE"
    h["TIMEDEL"] = (res.bin_s, "[s] bin size")
    h["E_MIN"] = (res.band_kev[0], "[keV] band low")
    h["E_MAX"] = (res.band_kev[1], "[keV] band high")
    h["FLMETHOD"] = (res.method, "flare screening method")
    h["FLTHRESH"] = (res.threshold if np.isfinite(res.threshold) else -1.0, "[ct/s] flare threshold")
    h["FLMEAN"] = (res.mean if np.isfinite(res.mean) else -1.0, "[ct/s] quiescent mean")
    h["FLSIGMA"] = (res.sigma if np.isfinite(res.sigma) else -1.0, "[ct/s] quiescent sigma")
    h["FLFRAC"] = (res.flare_fraction, "fraction of good time removed")
    for key in ("TELESCOP", "INSTRUME", "OBS_ID", "MJDREF", "TIMESYS"):
        if header and key in header:
            h[key] = header[key]
    g = gtimod.as_gti(res.gti)
    gti = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="START", format="D", unit="s", array=g[:, 0]),
            fits.Column(name="STOP", format="D", unit="s", array=g[:, 1]),
        ],
        name="GTI",
    )
    return atomic_write_fits(fits.HDUList([fits.PrimaryHDU(), rate, gti]), path)
