"""Source and background regions: automatic centre and radius, point sources, DS9 io, areas.

Everything is computed in XMM physical sky pixels (0.05 arcsec) and written as DS9 files in
``fk5`` (sky) coordinates; DS9 files given by users may be in ``fk5``/``icrs`` or ``physical``
(the ``regions`` package does not read ``physical``, so those are read as image coordinates of
the physical grid).  Region areas (BACKSCAL) are in physical pixels squared, the unit SAS
``backscale`` writes, and count only sky that falls on a CCD (see :mod:`xmmcore.images`).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from regions import CirclePixelRegion, PixCoord, PixelRegion, Regions, SkyRegion
from scipy import ndimage, signal

from .constants import CAMERAS, flat_lcdm
from .corners import level_from_header
from .errors import ConfigError, InputDataError
from .events import EventList, read_clean_events
from .fsutil import atomic_write_json, atomic_write_text, regular_file
from .images import (
    PHYS_PIXEL_ARCSEC,
    CcdFootprints,
    Extent,
    bin_image,
    ccd_footprints,
    coverage_image,
    exposure_image,
    extent_of,
    phys_wcs,
)
from .products import ObsProducts
from .profile import fit_beta_profile, pixel_radii
from .settings import RegionSettings

__all__ = [
    "PointSource",
    "Selection",
    "auto_centre",
    "compact_sources",
    "auto_radius",
    "bkg_annulus",
    "detect_point_sources",
    "make_regions",
    "optical_axis_xy",
    "read_ds9",
    "region_area",
    "sb_radius",
    "selection_from_regions_dict",
    "write_ds9",
]

_ARCMIN_PHYS = 60.0 / PHYS_PIXEL_ARCSEC  # physical pixels per arcmin (1200)


@dataclass
class PointSource:
    """A detected point source (physical pixels, degrees, arcsec)."""

    x: float
    y: float
    ra: float
    dec: float
    r_arcsec: float
    snr: float

    def to_dict(self) -> dict[str, float]:
        return {
            "x": self.x,
            "y": self.y,
            "ra": self.ra,
            "dec": self.dec,
            "r_arcsec": self.r_arcsec,
            "snr": self.snr,
        }


@dataclass
class Selection:
    """A spatial selection: union of ``include`` regions minus union of ``exclude`` regions.

    Regions are ``regions`` PixelRegions whose 0-based pixel coordinates are ``physical - 1``
    (see :func:`xmmcore.images.phys_wcs`).
    """

    include: list[PixelRegion] = field(default_factory=list)
    exclude: list[PixelRegion] = field(default_factory=list)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True for physical positions inside the selection."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        pc = PixCoord(x - 1.0, y - 1.0)
        inc = np.zeros(x.shape, dtype=bool)
        for reg in self.include:
            inc |= np.asarray(reg.contains(pc), dtype=bool)
        for reg in self.exclude:
            inc &= ~np.asarray(reg.contains(pc), dtype=bool)
        return inc

    def bbox(self) -> tuple[float, float, float, float]:
        """Physical bounding box ``(xmin, xmax, ymin, ymax)`` of the include regions."""
        boxes = [r.bounding_box for r in self.include]
        return (
            min(b.ixmin for b in boxes) + 1.0,
            max(b.ixmax for b in boxes) + 1.0,
            min(b.iymin for b in boxes) + 1.0,
            max(b.iymax for b in boxes) + 1.0,
        )


def _phys_circle(x: float, y: float, r_phys: float, *, include: bool = True) -> CirclePixelRegion:
    from regions import RegionMeta

    return CirclePixelRegion(PixCoord(x - 1.0, y - 1.0), r_phys, meta=RegionMeta({"include": int(include)}))


def _phys_annulus(x: float, y: float, r_in: float, r_out: float) -> PixelRegion:
    from regions import CircleAnnulusPixelRegion

    return CircleAnnulusPixelRegion(PixCoord(x - 1.0, y - 1.0), r_in, r_out)


def region_area(sel: Selection, *, footprints: CcdFootprints | None = None, step_phys: float = 20.0) -> float:
    """Area of a selection on the detector [physical pixel^2], the SAS ``backscale`` unit.

    The selection is sampled on a grid of ``step_phys`` physical pixels (1 arcsec by default;
    the error on a 1 arcmin circle is below 0.1 %); points off every CCD footprint (chip gaps,
    outside the field of view) do not count.
    """
    if not sel.include:
        return 0.0
    xmin, xmax, ymin, ymax = sel.bbox()
    xs = np.arange(np.floor(xmin / step_phys) * step_phys + 0.5 * step_phys, xmax + step_phys, step_phys)
    ys = np.arange(np.floor(ymin / step_phys) * step_phys + 0.5 * step_phys, ymax + step_phys, step_phys)
    total = 0
    for row in np.array_split(ys, max(1, ys.size * xs.size // 400_000 + 1)):
        xx, yy = np.meshgrid(xs, row)
        ok = sel.contains(xx, yy)
        if footprints is not None and ok.any():
            ok[ok] = footprints.contains(xx[ok], yy[ok])
        total += int(ok.sum())
    return float(total) * step_phys**2


def _window_sums(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``ndimage.convolve(values, kernel, mode="constant")`` for a symmetric 0/1 ``kernel`` of odd size.

    Counts images and coverage masks hold integers, so their window sums are integers: for a kernel of
    many pixels (the 16-40" ring: ~300) they are computed by FFT (3x faster on a 500 x 500 image) and
    rounded, which equals the direct sums exactly.  Other values and small kernels are summed directly.
    """
    if (
        np.count_nonzero(kernel) > 64
        and values.size
        and np.all(values == np.rint(values))
        and float(np.abs(values).sum()) < 2**50
    ):
        return np.rint(signal.fftconvolve(values, kernel, mode="same"))
    return ndimage.convolve(values, kernel, mode="constant")


def compact_sources(
    image: np.ndarray,
    extent: Extent,
    *,
    coverage: np.ndarray | None = None,
    snr: float = 6.0,
    min_contrast: float = 8.0,
) -> list[tuple[float, float, float]]:
    """Compact (PSF-like) peaks of a counts image: ``[(x, y, net_counts)]`` [physical px], brightest first.

    The counts within 8" of each pixel are compared with the level of the 16-40" ring around it: a
    peak is kept when its excess is ``snr`` sigma above the ring's level and its surface brightness
    is ``min_contrast`` times the ring's (the EPIC PSF gives ~80, a cluster with a 4' core ~1, a
    cool core of a few arcsec can pass too: :func:`auto_centre` allows for that).
    """
    pix_arcsec = extent.bin_phys * PHYS_PIXEL_ARCSEC
    half = int(math.ceil(40.0 / pix_arcsec))
    jj, ii = np.mgrid[-half : half + 1, -half : half + 1]
    rk = np.hypot(ii, jj) * pix_arcsec
    k_in = (rk <= 8.0).astype(float)
    k_ring = ((rk > 16.0) & (rk <= 40.0)).astype(float)
    img = image.astype(float)
    on = np.ones_like(img) if coverage is None else (coverage > 0).astype(float)
    c_in, c_ring = _window_sums(img, k_in), _window_sums(img, k_ring)
    n_ring, n_in = _window_sums(on, k_ring), _window_sums(on, k_in)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # a pixel whose ring is mostly off the detector gets no level (no candidate)
        level = np.where(n_ring > 0.5 * k_ring.sum(), c_ring / np.maximum(n_ring, 1.0), np.inf)
        expected = level * n_in
        excess = np.where(np.isfinite(expected), c_in - expected, -np.inf)
        signif = np.where(np.isfinite(expected), excess / np.sqrt(expected + 1.0), 0.0)
        contrast = np.where(level > 0, (c_in / np.maximum(n_in, 1.0)) / level, np.inf)
    cand = (signif >= snr) & (contrast >= min_contrast) & (on > 0)
    peaks = cand & (excess == ndimage.maximum_filter(np.where(cand, excess, -np.inf), size=5))
    xs, ys = extent.centres()
    out = [(float(xs[i]), float(ys[j]), float(excess[j, i])) for j, i in zip(*np.nonzero(peaks), strict=True)]
    return sorted(out, key=lambda t: -t[2])


def _disc_window(xc: np.ndarray, yc: np.ndarray, x: float, y: float, r: float) -> tuple[slice, slice]:
    """Rows and columns of the image (pixel centres ``xc``, ``yc``, increasing) that hold every pixel
    within ``r`` of (``x``, ``y``), with a pixel to spare: a test on those pixels selects the same
    pixels, in the same (raster) order, as on the whole image."""
    pad = r + float(xc[1] - xc[0] if xc.size > 1 else 0.0) + float(yc[1] - yc[0] if yc.size > 1 else 0.0)
    cols = slice(int(np.searchsorted(xc, x - pad)), int(np.searchsorted(xc, x + pad, side="right")))
    rows = slice(int(np.searchsorted(yc, y - pad)), int(np.searchsorted(yc, y + pad, side="right")))
    return rows, cols


def auto_centre(
    image: np.ndarray,
    extent: Extent,
    *,
    start_xy: tuple[float, float],
    coverage: np.ndarray | None = None,
    smooth_phys: float = 320.0,
    radii_arcmin: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
    n_iter: int = 10,
    mask_compact: bool = True,
) -> tuple[float, float]:
    """Iterative centroid of a Gaussian-smoothed image, shrinking the aperture.

    With ``mask_compact`` the centroid is first taken with the compact sources
    (:func:`compact_sources`) masked, so that a bright point source 1-2' from a flat core (rc 3-4')
    does not capture it (it did on simulated fields: centre 1.6' off, L500 1.4-1.8x); then, if a
    compact peak lies within 0.25' of that centre (a cool core, a central galaxy), the centroid is
    refined on the unmasked image at the two smallest apertures.

    Parameters
    ----------
    image : ndarray
        Counts image (e.g. 0.5-2 keV, all cameras).
    extent : Extent
        Its grid.
    start_xy : (float, float)
        Starting guess [physical px] (target position from the header or metadata).
    coverage : ndarray, optional
        Detector coverage (1/0); the smoothed image is normalised by the smoothed coverage so
        chip gaps do not pull the centroid.
    smooth_phys : float
        Gaussian sigma [physical px] (16 arcsec).
    radii_arcmin : sequence of float
        Apertures used in turn; at each, iterate the centroid ``n_iter`` times.

    Returns
    -------
    (x, y) : physical pixels.
    """
    if not mask_compact:
        return _centroid(image, extent, start_xy, coverage, smooth_phys, radii_arcmin, n_iter)
    peaks = compact_sources(image, extent, coverage=coverage)
    xc, yc = extent.centres()
    xx, yy = np.meshgrid(xc, yc)
    keep = np.ones(image.shape) if coverage is None else (coverage > 0).astype(float)
    for px_, py_, _ in peaks:
        win = _disc_window(xc, yc, px_, py_, 30.0 / PHYS_PIXEL_ARCSEC)
        keep[win][np.hypot(xx[win] - px_, yy[win] - py_) <= 30.0 / PHYS_PIXEL_ARCSEC] = 0.0
    x, y = _centroid(image * keep, extent, start_xy, keep, smooth_phys, radii_arcmin, n_iter)
    near = [p for p in peaks if math.hypot(p[0] - x, p[1] - y) <= 0.25 * _ARCMIN_PHYS]
    if near:
        x, y = _centroid(image, extent, (x, y), coverage, smooth_phys, tuple(radii_arcmin)[-2:], n_iter)
    return x, y


def _centroid(
    image: np.ndarray,
    extent: Extent,
    start_xy: tuple[float, float],
    coverage: np.ndarray | None,
    smooth_phys: float,
    radii_arcmin: Sequence[float],
    n_iter: int,
) -> tuple[float, float]:
    sig = smooth_phys / extent.bin_phys
    sm = ndimage.gaussian_filter(image.astype(float), sig)
    if coverage is not None:
        cov = ndimage.gaussian_filter(coverage.astype(float), sig)
        sm = np.where(cov > 0.2, sm / np.maximum(cov, 1e-9), 0.0)
    xc, yc = extent.centres()
    xx, yy = np.meshgrid(xc, yc)
    x, y = map(float, start_xy)
    for r_arcmin in radii_arcmin:
        r = r_arcmin * _ARCMIN_PHYS
        for _ in range(n_iter):
            win = _disc_window(xc, yc, x, y, r)
            xw, yw = xx[win], yy[win]
            sel = (xw - x) ** 2 + (yw - y) ** 2 <= r * r
            w = sm[win][sel]
            if w.sum() <= 0:
                break
            nx_, ny_ = float((xw[sel] * w).sum() / w.sum()), float((yw[sel] * w).sum() / w.sum())
            moved = np.hypot(nx_ - x, ny_ - y)
            x, y = nx_, ny_
            if moved < 0.1 * extent.bin_phys:
                break
    return x, y


def sb_radius(
    image: np.ndarray,
    extent: Extent,
    centre_xy: tuple[float, float],
    *,
    coverage: np.ndarray,
    nsigma: float = 3.0,
    width_arcmin: float = 0.25,
    bkg_arcmin: tuple[float, float] = (10.0, 13.0),
    r_min_arcmin: float = 0.5,
    r_max_arcmin: float = 10.0,
) -> float:
    """Radius [arcmin] out to which the surface brightness stays ``nsigma`` above background.

    Background = mean surface brightness in the ``bkg_arcmin`` annulus (on the detector);
    the radius is the outer edge of the last annulus before the first one whose net surface
    brightness is below ``nsigma`` times its Poisson error.
    """
    xc, yc = extent.centres()
    xx, yy = np.meshgrid(xc, yc)
    rr = np.hypot(xx - centre_xy[0], yy - centre_xy[1]) / _ARCMIN_PHYS
    on = coverage > 0
    bsel = on & (rr >= bkg_arcmin[0]) & (rr < bkg_arcmin[1])
    if bsel.sum() == 0:
        return r_max_arcmin
    b = image[bsel].sum() / bsel.sum()
    edges = np.arange(0.0, r_max_arcmin + width_arcmin, width_arcmin)
    radius = r_min_arcmin
    for lo, hi in itertools.pairwise(edges):
        sel = on & (rr >= lo) & (rr < hi)
        npix = sel.sum()
        if npix == 0:
            continue
        c = image[sel].sum()
        net = c - b * npix
        err = np.sqrt(max(c, 1.0) + (b * npix) ** 2 / max(bsel.sum() * b, 1.0))
        if net < nsigma * err:
            break
        radius = hi
    return float(np.clip(radius, r_min_arcmin, r_max_arcmin))


def auto_radius(
    method: str,
    *,
    arcmin: float | None = None,
    r_kpc: float | None = None,
    z: float | None = None,
    r500_kpc: float | None = None,
    cosmology: dict[str, float] | None = None,
    sb: dict[str, Any] | None = None,
) -> tuple[float, str]:
    """Source radius [arcmin] from a config ``method`` and target metadata.

    ``fixed``: ``arcmin``; ``physical``: ``r_kpc`` at redshift ``z``; ``r500``: ``r500_kpc`` at ``z``
    (both with a flat LambdaCDM of ``cosmology`` H0, Om0); ``sb``: :func:`sb_radius` with the
    keyword arguments in ``sb``.  Returns the radius and a note of how it was obtained.
    """
    if method == "fixed":
        if not arcmin or arcmin <= 0:
            raise ConfigError("regions.radius.arcmin must be > 0 for method: fixed")
        return float(arcmin), f"fixed {arcmin} arcmin"
    if method in ("physical", "r500"):
        kpc = r_kpc if method == "physical" else r500_kpc
        if kpc is None or z is None:
            what = "regions.radius.r_kpc" if method == "physical" else "target metadata r500_kpc"
            raise InputDataError(f"radius method {method} needs {what} and the redshift z")
        cos = flat_lcdm(cosmology)
        scale = cos.kpc_proper_per_arcmin(float(z)).to_value(u.kpc / u.arcmin)
        return float(kpc) / scale, f"{method}: {kpc} kpc at z={z} ({scale:.1f} kpc/arcmin)"
    if method == "sb":
        r = sb_radius(**(sb or {}))
        nsigma = (sb or {}).get("nsigma", (sb_radius.__kwdefaults__ or {}).get("nsigma"))
        return r, f"sb: {nsigma} sigma above background"
    raise ConfigError(f"regions.radius.method must be fixed, physical, r500 or sb, got {method!r}")


def bkg_annulus(r_src_arcmin: float, *, inner: float = 1.05, outer: float = 1.5) -> tuple[float, float]:
    """Background annulus radii [arcmin] as multiples of the source radius (XGA default 1.05-1.5)."""
    if not 0 < inner < outer:
        raise ConfigError(f"background annulus needs 0 < inner < outer, got {inner}, {outer}")
    return r_src_arcmin * inner, r_src_arcmin * outer


def detect_point_sources(
    image: np.ndarray,
    extent: Extent,
    wcs: WCS,
    *,
    coverage: np.ndarray,
    snr: float = 5.0,
    cell: int = 3,
    bkg_box: int = 21,
    min_counts: int = 6,
    mask_radius_arcsec: float = 20.0,
    exclude_xy: tuple[float, float] | None = None,
    exclude_radius_phys: float = 0.0,
    extended_model: np.ndarray | None = None,
    compact_min: float = 0.5,
    core_xy: tuple[float, float] | None = None,
    core_radius_phys: float = 0.0,
    scale_masks: bool = False,
) -> list[PointSource]:
    """Sliding-cell detection (as ``eboxdetect`` in local mode).

    The counts in a ``cell x cell`` box are compared with the local background expected from a
    ``bkg_box`` square (the cell excluded, chip gaps excluded through ``coverage``); ``snr`` is the
    Gaussian-equivalent significance of the Poisson probability of ``>= C`` counts given ``B``
    (candidates pre-selected with ``(C - B) / sqrt(B)``).  Detections are local maxima with ``snr`` above the threshold and
    at least ``min_counts`` counts.  Positions within ``exclude_radius_phys`` of ``exclude_xy``
    are skipped.

    With ``extended_model`` (expected counts per pixel of the smooth extended emission, e.g. the
    fitted beta model of the cluster) the extended emission is modelled out, as wavelet detection
    separates scales: the expected counts of a cell are the model's plus the local background of the
    residual image, so a cluster core's peak is not a source. A candidate must then also be compact
    like the PSF: the fraction of its net counts within 10" of those within 25" at least
    ``compact_min`` (a King PSF gives ~0.75, an extended clump much less). Within
    ``core_radius_phys`` of ``core_xy`` (twice the cluster's core radius) a source must in addition
    be twice as significant as ``snr``. ``scale_masks`` sets each mask radius to where the source's
    PSF wings fall below 20% of the local surface brightness (10"-60") instead of ``mask_radius_arcsec``.
    """
    img = image * (coverage > 0)
    cov = (coverage > 0).astype(float)
    ext = np.zeros_like(img) if extended_model is None else np.asarray(extended_model, float) * (coverage > 0)
    resid = img - ext
    c_sum = ndimage.uniform_filter(img, cell, mode="constant") * cell**2
    c_cov = ndimage.uniform_filter(cov, cell, mode="constant") * cell**2
    c_ext = ndimage.uniform_filter(ext, cell, mode="constant") * cell**2
    c_res = c_sum - c_ext
    b_sum = ndimage.uniform_filter(resid, bkg_box, mode="constant") * bkg_box**2 - c_res
    b_cov = ndimage.uniform_filter(cov, bkg_box, mode="constant") * bkg_box**2 - c_cov
    with np.errstate(invalid="ignore", divide="ignore"):
        bkg_per_pix = np.where(b_cov > 0.25 * bkg_box**2, np.maximum(b_sum, 0.0) / b_cov, np.nan)
        expect = bkg_per_pix * c_cov + c_ext
        sig = (c_sum - expect) / np.sqrt(np.maximum(expect, 0.5))
    sig = np.nan_to_num(sig, nan=0.0)
    peak = (
        (sig == ndimage.maximum_filter(sig, size=cell))
        & (sig >= snr)
        & (c_sum >= min_counts)
        & (c_cov >= 0.9 * cell**2)
    )
    jj, ii = np.nonzero(peak)
    # Gaussian-equivalent significance of the Poisson tail P(N >= C | B): the (C-B)/sqrt(B)
    # shortcut overstates faint cells on low backgrounds.
    from scipy import stats

    p_tail = stats.poisson.sf(c_sum[jj, ii] - 1, np.maximum(expect[jj, ii], 1e-3))
    sig_p = stats.norm.isf(np.clip(p_tail, 1e-300, 0.5))
    good = sig_p >= snr
    jj, ii = jj[good], ii[good]
    sig[jj, ii] = sig_p[good]
    order = np.argsort(-sig[jj, ii])
    out: list[PointSource] = []
    for k in order:
        j, i = int(jj[k]), int(ii[k])
        # Refine to the count-weighted centroid of the cell.
        sl = (slice(max(j - 1, 0), j + 2), slice(max(i - 1, 0), i + 2))
        w = img[sl]
        gj, gi = np.mgrid[sl]
        if w.sum() > 0:
            fi, fj = float((gi * w).sum() / w.sum()), float((gj * w).sum() / w.sum())
        else:
            fi, fj = float(i), float(j)
        px, py = extent.to_phys(np.asarray(fi), np.asarray(fj))
        x, y = float(px), float(py)
        if exclude_xy is not None and np.hypot(x - exclude_xy[0], y - exclude_xy[1]) < exclude_radius_phys:
            continue
        if any(np.hypot(x - p.x, y - p.y) < max(p.r_arcsec, 10.0) / PHYS_PIXEL_ARCSEC for p in out):
            continue
        r_mask = float(mask_radius_arcsec)
        if extended_model is not None:
            net1, net2, local = _net_counts(img, ext, bkg_per_pix, extent, fi, fj, (10.0, 25.0))
            if net2 <= 0 or net1 / net2 < compact_min:
                continue  # not point-like: part of the extended emission
            near_core = core_xy is not None and np.hypot(x - core_xy[0], y - core_xy[1]) < core_radius_phys
            if near_core and sig[j, i] < 2.0 * snr:
                continue
            if scale_masks:
                r_mask = _mask_radius_arcsec(net2 / _KING_FRACTION_25, local)
        sky = wcs.pixel_to_world(fi, fj)
        out.append(
            PointSource(
                x=x,
                y=y,
                ra=float(sky.ra.deg),
                dec=float(sky.dec.deg),
                r_arcsec=r_mask,
                snr=float(sig[j, i]),
            )
        )
    return out


#: A DS9 region file larger than this is refused before it is read [bytes].
MAX_REGION_BYTES = 1 << 20


# EPIC PSF as a King profile (1 + (r/r0)^2)^-alpha: r0 ~ 5", alpha 1.5 (on-axis, 1.5 keV; the simulator's 4").
_KING_R0_ARCSEC = 5.0
_KING_ALPHA = 1.5
_KING_FRACTION_25 = 1.0 - (1.0 + (25.0 / _KING_R0_ARCSEC) ** 2) ** (1.0 - _KING_ALPHA)


def _net_counts(
    img: np.ndarray,
    ext: np.ndarray,
    bkg_per_pix: np.ndarray,
    extent: Extent,
    fi: float,
    fj: float,
    radii_arcsec: tuple[float, float],
) -> tuple[float, float, float]:
    """Net counts (image - extended model - local background) within two radii of a candidate,
    and the local surface brightness (model + background) [counts / arcsec^2]."""
    pix_arcsec = extent.bin_phys * PHYS_PIXEL_ARCSEC
    rmax = radii_arcsec[1] / pix_arcsec
    j0, j1 = max(int(fj - rmax) - 1, 0), min(int(fj + rmax) + 2, img.shape[0])
    i0, i1 = max(int(fi - rmax) - 1, 0), min(int(fi + rmax) + 2, img.shape[1])
    jj, ii = np.mgrid[j0:j1, i0:i1]
    r = np.hypot(ii - fi, jj - fj) * pix_arcsec
    b = bkg_per_pix[int(round(fj)), int(round(fi))]
    b = 0.0 if not np.isfinite(b) else float(b)
    net = img[j0:j1, i0:i1] - ext[j0:j1, i0:i1] - b
    n1 = float(net[r <= radii_arcsec[0]].sum())
    n2 = float(net[r <= radii_arcsec[1]].sum())
    ring = (r > radii_arcsec[1] * 0.8) & (r <= radii_arcsec[1])
    local = float((ext[j0:j1, i0:i1][ring].mean() if ring.any() else 0.0) + b) / pix_arcsec**2
    return n1, n2, local


def _mask_radius_arcsec(total_counts: float, local_per_arcsec2: float) -> float:
    """Radius [arcsec] where a King-PSF source of ``total_counts`` falls to 20% of the local brightness."""
    if total_counts <= 0:
        return 10.0
    peak = total_counts * (_KING_ALPHA - 1.0) / (math.pi * _KING_R0_ARCSEC**2)
    level = 0.2 * max(local_per_arcsec2, 1e-6)
    if peak <= level:
        return 10.0
    r = _KING_R0_ARCSEC * math.sqrt((peak / level) ** (1.0 / _KING_ALPHA) - 1.0)
    return float(np.clip(r, 10.0, 60.0))


def read_ds9(path: str | Path, header) -> Selection:
    """Read a DS9 region file (fk5/icrs/galactic, image or physical) into a physical-pixel Selection.

    ``header`` is an EVENTS header giving the sky WCS.  Lines starting with ``-`` are exclusions.
    ``physical`` files are read as image coordinates of the physical grid (DS9's physical =
    event X/Y).  Unknown shapes raise ``InputDataError`` (the ``regions`` reader only warns).
    """
    import warnings

    path = regular_file(path, max_bytes=MAX_REGION_BYTES, what="region file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"cannot read region file ({exc})", path) from exc
    text = re.sub(r"(?im)^\s*physical\s*;?", "image;", text)
    wcs = phys_wcs(header)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            regs = Regions.parse(text, format="ds9")
        except Exception as exc:  # the regions parser raises several unrelated types
            raise InputDataError(f"cannot parse DS9 regions ({exc})", path) from exc
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message)]
    if skipped:
        raise InputDataError(f"unsupported DS9 content: {skipped[0]}", path)
    sel = Selection()
    for reg in regs:
        pix = reg.to_pixel(wcs) if isinstance(reg, SkyRegion) else reg
        if int(reg.meta.get("include", 1)) == 0:
            sel.exclude.append(pix)
        else:
            sel.include.append(pix)
    if not sel.include:
        raise InputDataError("region file has no include region", path)
    return sel


def _fmt_circle(ra: float, dec: float, r_arcsec: float, *, exclude: bool = False, comment: str = "") -> str:
    tail = f" # {comment}" if comment else ""
    return f'{"-" if exclude else ""}circle({ra:.7f},{dec:.7f},{r_arcsec:.3f}"){tail}'


def write_ds9(
    path: str | Path,
    *,
    centre_radec: tuple[float, float],
    r_out_arcmin: float,
    r_in_arcmin: float = 0.0,
    point_sources: Sequence[PointSource] = (),
    comment: str = "",
    background: bool = False,
) -> Path:
    """Write a circle or annulus (fk5) with point sources as ``-circle`` exclusions (atomic).

    ``background=True`` tags the shapes ``# background`` (DS9's source/background property), so DS9,
    CIAO and ``regions`` see a background region.
    """
    ra, dec = centre_radec
    lines = [
        "# Region file format: DS9 version 4.1",
        f"# {comment}" if comment else "# xmm-survey region",
        'global color=green width=1 font="helvetica 10 normal roman"',
        "fk5",
    ]
    tag = "background " if background else ""
    if r_in_arcmin > 0:
        shape = f'annulus({ra:.7f},{dec:.7f},{r_in_arcmin * 60:.3f}",{r_out_arcmin * 60:.3f}")'
        lines.append(f"{shape} # {tag.strip()}" if tag else shape)
    else:
        lines.append(_fmt_circle(ra, dec, r_out_arcmin * 60.0, comment=tag.strip()))
    for p in point_sources:
        lines.append(
            _fmt_circle(p.ra, p.dec, p.r_arcsec, exclude=True, comment=f"{tag}text={{S/N {p.snr:.1f}}}")
        )
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _write_ptsrc(path: Path, point_sources: Sequence[PointSource]) -> Path:
    lines = [
        "# Region file format: DS9 version 4.1",
        "# point sources (sliding-cell detection), as exclusions: add them to any region to mask them",
        "global color=red",
        "fk5",
    ]
    lines += [
        _fmt_circle(p.ra, p.dec, p.r_arcsec, exclude=True, comment=f"text={{S/N {p.snr:.1f}}}")
        for p in point_sources
    ]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _sel_overlapping(
    points: Sequence[PointSource], x: float, y: float, r_out_phys: float
) -> list[PointSource]:
    return [p for p in points if np.hypot(p.x - x, p.y - y) < r_out_phys + p.r_arcsec / PHYS_PIXEL_ARCSEC]


def selection_from_regions_dict(regions: dict[str, Any], camera: str, which: str, header) -> Selection:
    """Selection of a camera's ``src`` or ``bkg`` region, from the DS9 file named in ``regions['files']``."""
    key = f"{camera}_{which}"
    files = regions.get("files", {})
    if key not in files:
        raise InputDataError(f"regions.json names no {key} region")
    return read_ds9(files[key], header)


def _centre_start(
    evls: Sequence[EventList], meta: dict[str, Any], cfg_centre: Any
) -> tuple[float, float, bool]:
    """Starting (ra, dec) and whether it is fixed by the config."""
    if isinstance(cfg_centre, (list, tuple)) and len(cfg_centre) == 2:
        return float(cfg_centre[0]), float(cfg_centre[1]), True
    if cfg_centre not in (None, "auto"):
        raise ConfigError(f"regions.centre must be 'auto' or [ra_deg, dec_deg], got {cfg_centre!r}")
    if meta.get("ra") is not None and meta.get("dec") is not None:
        return float(meta["ra"]), float(meta["dec"]), False
    h = evls[0].header
    if "RA_OBJ" in h and "DEC_OBJ" in h:
        return float(h["RA_OBJ"]), float(h["DEC_OBJ"]), False
    return float(h["RA_PNT"]), float(h["DEC_PNT"]), False


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _kpc_per_arcmin(z: Any, cosmology: Mapping[str, float] | None) -> float | None:
    zf = _finite(z)
    if zf is None:
        return None
    cos = flat_lcdm(cosmology)
    return float(cos.kpc_proper_per_arcmin(zf).to_value(u.kpc / u.arcmin))


def _detector_edge_arcmin(coverage: np.ndarray, extent: Extent, centre_xy: tuple[float, float]) -> float:
    """Largest radius [arcmin] about the centre whose annulus (0.25' wide) is still >= 50% on the detector."""
    px_arcmin = extent.bin_phys / _ARCMIN_PHYS
    ci, cj = extent.to_pixel(np.asarray(centre_xy[0]), np.asarray(centre_xy[1]))
    r = pixel_radii(coverage.shape, (float(ci), float(cj)), px_arcmin)
    edges = np.arange(0.0, float(r.max()) + 0.25, 0.25)
    idx = np.digitize(r.ravel(), edges) - 1
    tot = np.bincount(idx, minlength=edges.size)
    cov = np.bincount(idx, weights=(coverage.ravel() > 0).astype(float), minlength=edges.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(tot > 0, cov / tot, 0.0)
    good = np.flatnonzero(frac >= 0.5)
    if good.size == 0:
        return float(edges[-1])
    # the first annulus below 50% after the centre ends the detector
    bad = np.flatnonzero((frac < 0.5) & (np.arange(frac.size) > good[0]))
    last = (bad[0] - 1) if bad.size else good[-1]
    return float(edges[min(last + 1, edges.size - 1)])


#: Draws of the beta model from its covariance that carry its uncertainty into L500.
PROFILE_DRAWS = 40

#: Energy [keV] at which the 0.5-2 keV image's vignetting is evaluated (its mean photon energy for a cluster).
_IMAGE_VIGNETTING_KEV = 1.2


def optical_axis_xy(header: Any) -> tuple[float, float] | None:
    """The optical axis (the pointing ``RA_PNT``/``DEC_PNT``) in physical X, Y; ``None`` without a pointing."""
    try:
        ra, dec = float(header["RA_PNT"]), float(header["DEC_PNT"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    px, py = phys_wcs(header).world_to_pixel(SkyCoord(ra * u.deg, dec * u.deg, frame="fk5"))
    return float(px) + 1.0, float(py) + 1.0


def vignetting_map(extent: Extent, header: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """Vignetting of each pixel of the 0.5-2 keV image (:func:`xmmcore.responses.vignetting`).

    The optical axis is the pointing (``RA_PNT``/``DEC_PNT`` of the event list); ``None`` when the
    header has no pointing (the profile then has one flat background term).
    """
    from .responses import vignetting

    axis = optical_axis_xy(header)
    if axis is None:
        return None
    xs, ys = extent.centres()
    gx, gy = np.meshgrid(xs, ys)
    theta = np.hypot(gx - axis[0], gy - axis[1]) / _ARCMIN_PHYS
    out = vignetting(theta, _IMAGE_VIGNETTING_KEV)
    return out if out.shape == shape else None


def _extended_model(
    image: np.ndarray,
    extent: Extent,
    coverage: np.ndarray,
    centre_xy: tuple[float, float],
    r_edge: float,
    vignetting: np.ndarray | None = None,
) -> tuple[np.ndarray | None, float]:
    """Expected counts per pixel of the cluster (beta model fitted without masks) and 2 core radii [phys].

    ``coverage``: relative exposure of each pixel (0 off the detector).
    """
    px_arcmin = extent.bin_phys / _ARCMIN_PHYS
    ci, cj = extent.to_pixel(np.asarray(centre_xy[0]), np.asarray(centre_xy[1]))
    r = pixel_radii(image.shape, (float(ci), float(cj)), px_arcmin)
    try:
        prof = fit_beta_profile(
            image,
            radii_arcmin=r,
            weight=coverage,
            pixel_arcmin=px_arcmin,
            r_max_arcmin=r_edge,
            vignetting=vignetting,
        )
    except ValueError:
        return None, 0.0
    vig = 1.0 if vignetting is None else vignetting
    model = prof.brightness(r) * vig * px_arcmin**2 * coverage
    return model, 2.0 * prof.rc_arcmin * _ARCMIN_PHYS


def _aperture_quantities(
    image: np.ndarray,
    extent: Extent,
    coverage: np.ndarray,
    rel_exposure: np.ndarray,
    centre_xy: tuple[float, float],
    points: Sequence[PointSource],
    *,
    r_src: float,
    b_in: float,
    b_out: float,
    r500_arcmin: float,
    r_edge: float,
    log: logging.Logger,
    vignetting: np.ndarray | None = None,
    particles: np.ndarray | None = None,
) -> dict[str, Any]:
    """Beta-model profile and what it implies for the apertures (see :mod:`xmmcore.profile`).

    ``particles``: expected particle counts per pixel from the cameras' out-of-field corners
    (:mod:`xmmcore.corners`), the profile's particle term (``None``: a free flat level).

    * ``bkg_cluster_fraction``: cluster share of the background annulus' counts;
      ``bkg_oversubtraction``: fraction of the source's cluster counts the background subtraction
      removes (the annulus' cluster counts per usable area times the source's usable area);
      ``bkg_oversubtraction_matched``: the same for the vignetting-matched background, which scales
      the annulus's sky part (with its cluster counts) by ``<v>_src / <v>_ann`` as well;
    * ``aperture_lost_fraction``: fraction of the beta model's flux in the source circle that falls
      in point-source masks and chip gaps (``coverage`` of the stacked cameras);
    * ``aperture_vignetting``: cluster-weighted mean vignetting of the usable source circle (what an
      on-axis ARF misses; arfgen's extended-source ARFs include it);
    * ``l500_over_aperture``: beta-model flux within R500 over the flux within the aperture.

    All counts are in the 0.5-2 keV image; the cluster model is seen through ``vignetting``.
    """
    px_arcmin = extent.bin_phys / _ARCMIN_PHYS
    ci, cj = extent.to_pixel(np.asarray(centre_xy[0]), np.asarray(centre_xy[1]))
    r = pixel_radii(image.shape, (float(ci), float(cj)), px_arcmin)
    usable = (coverage > 0).astype(float)
    xs, ys = extent.centres()
    gx, gy = np.meshgrid(xs, ys)
    masked = np.zeros(image.shape, dtype=bool)
    for p in points:
        win = _disc_window(xs, ys, p.x, p.y, p.r_arcsec / PHYS_PIXEL_ARCSEC)
        masked[win] |= np.hypot(gx[win] - p.x, gy[win] - p.y) <= p.r_arcsec / PHYS_PIXEL_ARCSEC
    weight = usable * ~masked
    fit_weight = rel_exposure * ~masked
    out: dict[str, Any] = {
        "profile": None,
        "bkg_cluster_fraction": float("nan"),
        "bkg_oversubtraction": float("nan"),
        "aperture_lost_fraction": float("nan"),
        "aperture_vignetting": float("nan"),
        "l500_over_aperture": float("nan"),
        "profile_note": "",
    }
    try:
        prof = fit_beta_profile(
            image,
            radii_arcmin=r,
            weight=fit_weight,
            pixel_arcmin=px_arcmin,
            r_max_arcmin=max(r_edge, b_out),
            vignetting=vignetting,
            particle=None if particles is None else particles * ~masked,
        )
    except ValueError as exc:
        out["profile_note"] = f"no beta-model fit: {exc}"
        log.warning("regions: %s", out["profile_note"])
        return out
    vig = np.ones_like(r) if vignetting is None else vignetting
    inside, ann = r <= r_src, (r >= b_in) & (r <= b_out)

    w_in, w_an = float(np.sum(weight[inside])), float(np.sum(weight[ann]))
    v_ratio = (
        float(np.sum((vig * weight)[inside])) / w_in / (float(np.sum((vig * weight)[ann])) / w_an)
        if w_in > 0 and w_an > 0 and float(np.sum((vig * weight)[ann])) > 0
        else float("nan")
    )

    # Every sum below is over the source circle or the annulus: the model is evaluated on those pixels
    # only (in raster order, so each sum adds the same values in the same order as on the whole image).
    used = inside | ann
    r_used, vig_used, weight_used = r[used], vig[used], weight[used]
    in_used, ann_used = inside[used], ann[used]
    w_src, w_ann = float(np.sum(weight[inside])), float(np.sum(weight[ann]))

    def fractions(pr: Any) -> dict[str, float]:
        # The model is integrated over sub-pixels near the centre, where a compact core spans few pixels.
        model = _subpixel_brightness(pr, r_used, px_arcmin)
        seen = model * vig_used * weight_used  # cluster counts per pixel in the data (vignetted, unmasked)
        bkg_seen = (pr.bkg_per_arcmin2 * vig_used + pr.bkg_flat_per_arcmin2) * weight_used
        src_seen = float(np.sum(seen[in_used]))
        ann_cluster = float(np.sum(seen[ann_used]))
        ann_total = ann_cluster + float(np.sum(bkg_seen[ann_used]))
        unmasked = float(np.sum((model * weight_used)[in_used]))
        nan = float("nan")
        return {
            "bkg_cluster_fraction": ann_cluster / ann_total if ann_total > 0 else nan,
            "bkg_oversubtraction": (ann_cluster / w_ann * w_src / src_seen)
            if w_ann > 0 and src_seen > 0
            else nan,
            # the vignetting-matched background (spectra.local_background: matched) scales the
            # annulus's sky part, where its cluster counts are, by <v>_src / <v>_ann on top of the areas
            "bkg_oversubtraction_matched": (ann_cluster / w_ann * w_src / src_seen) * v_ratio
            if w_ann > 0 and src_seen > 0
            else nan,
            "aperture_lost_fraction": 1.0 - unmasked / float(np.sum(model[in_used])),
            "aperture_vignetting": src_seen / unmasked if src_seen > 0 else nan,
        }

    out.update({"profile": prof.to_dict(), **fractions(prof), "profile_note": prof.note})
    # The profile's uncertainty for L500 (aperture.l500_block): the same fractions for draws of
    # (S0, rc, beta) from the fit's covariance, which the backgrounds' freedom widens.
    out["profile_draws"] = [
        {"rc_arcmin": d.rc_arcmin, "beta": d.beta, **fractions(d)} for d in prof.draws(PROFILE_DRAWS)
    ]
    if np.isfinite(r500_arcmin):
        out["l500_over_aperture"] = prof.fraction_ratio(r500_arcmin, r_src)
    return out


def _subpixel_brightness(prof: Any, r: np.ndarray, px_arcmin: float, n_sub: int = 5) -> np.ndarray:
    """Beta-model brightness per pixel averaged over ``n_sub`` x ``n_sub`` sub-pixels within 5 pixels of the centre.

    ``r``: the pixels' distances from the centre [arcmin] (an image, or the pixels of one as a 1-D array).
    """
    out = prof.brightness(r)
    near = r < 5.0 * px_arcmin
    if not near.any():
        return out
    # offsets along and across the radius: for a radially symmetric model this is the pixel average
    # up to the pixel's orientation
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    dx, dy = np.meshgrid(offs, offs)
    r_near = r[near]
    acc = np.zeros(r_near.size)
    for ox, oy in zip(dx.ravel(), dy.ravel(), strict=True):
        acc += prof.brightness(np.hypot(r_near + ox * px_arcmin, oy * px_arcmin))
    out[near] = acc / dx.size
    return out


def _camera_weight(evl: EventList, extent: Extent, footprints: CcdFootprints) -> np.ndarray:
    """Good time x on-axis effective area at 1.2 keV of one camera per pixel (its CCD footprints).

    The summed pn + MOS image sees ~3x fewer counts where only the MOS cover the sky (pn chip gaps,
    the edges of the pn field): the profile fit weights each pixel by this sum over cameras.
    """
    from .responses import effective_area

    area = float(effective_area(evl.camera, _IMAGE_VIGNETTING_KEV))
    return exposure_image(evl, extent, footprints=footprints) * area


def make_regions(
    obs: Any,
    outdir: str | Path,
    cfg: Mapping[str, Any] | RegionSettings,
    *,
    log: logging.Logger | None = None,
    r_src_arcmin: float | None = None,
) -> dict[str, Any]:
    """Regions step: centre, radius, background, point sources; DS9 files, ``regions.json``, image plots.

    Reads ``outdir/events/<cam>_clean.fits`` for every camera that the filter step produced.
    One centre, radius and point-source list is used for every camera (sky coordinates); the
    DS9 files per camera are identical apart from their name, and the per-camera areas on the
    detector (BACKSCAL) are computed by the spectra step.  User DS9 regions
    (``regions.user_src_region``/``user_bkg_region``) override the automatic ones.

    ``cfg`` is the resolved configuration or the :class:`~xmmcore.settings.RegionSettings` built from it;
    ``r_src_arcmin`` replaces the automatic source radius (the fit step's R500 iteration).

    Returns the ``regions`` dict of ``docs/CONTRACTS.md`` (also written to ``regions/regions.json``),
    plus ``outputs``: every file written (paths of :class:`~xmmcore.products.ObsProducts`).
    """
    log = log or logging.getLogger("xmmcore.regions")
    products = ObsProducts(outdir)
    rs = cfg if isinstance(cfg, RegionSettings) else RegionSettings.from_config(cfg)
    cams = [c for c in rs.cameras or CAMERAS if products.clean_events(c).exists()]
    if not cams:
        raise InputDataError("no cleaned event list: run the filter step first", products.events_dir)
    evls = {c: read_clean_events(products.clean_events(c)) for c in cams}
    ref = evls[cams[0]]
    pw = phys_wcs(ref.header)
    extent = extent_of(list(evls.values()), bin_phys=80.0)
    image = np.zeros((extent.ny, extent.nx))
    coverage = np.zeros_like(image)
    footprints = {}
    rel_exposure = np.zeros_like(image)
    particles: np.ndarray | None = np.zeros_like(image)
    for cam, e in evls.items():
        img, wcs, _ = bin_image(e, band_kev=(0.5, 2.0), extent=extent)
        image += img
        footprints[cam] = ccd_footprints(e)
        cam_cov = coverage_image(footprints[cam], extent)
        coverage = np.maximum(coverage, cam_cov)
        rel_exposure += _camera_weight(e, extent, footprints[cam])
        corner = level_from_header(e.header)
        if corner is None or particles is None:
            particles = None  # one camera without a corner level: the profile fits a free flat level
        else:
            particles += corner[0] / corner[1] * (extent.bin_phys / _ARCMIN_PHYS) ** 2 * cam_cov
    if rel_exposure.max() > 0:
        rel_exposure /= rel_exposure.max()
    ra0, dec0, fixed = _centre_start(list(evls.values()), getattr(obs, "meta", {}) or {}, rs.centre)
    sx, sy = pw.world_to_pixel(SkyCoord(ra0 * u.deg, dec0 * u.deg, frame="fk5"))
    start = (float(sx) + 1.0, float(sy) + 1.0)
    if fixed:
        cx, cy = start
        centre_note = "config"
    else:
        cx, cy = auto_centre(image, extent, start_xy=start, coverage=coverage)
        centre_note = "iterative centroid of the smoothed 0.5-2 keV image"
    csky = pw.pixel_to_world(cx - 1.0, cy - 1.0)
    meta = getattr(obs, "meta", {}) or {}
    method = rs.radius_method
    r500_kpc = _finite(meta.get("r500_kpc"))
    r500_source = "none"
    if method == "r500":
        r500_source = "given" if r500_kpc is not None and _finite(meta.get("z")) is not None else "iterated"
        if r500_source == "iterated":
            # R500 unknown: start from the fixed aperture; the fit step iterates kT -> R500 -> re-extract.
            method = "fixed"
    override = r_src_arcmin
    r_src, r_note = auto_radius(
        method,
        arcmin=rs.radius_arcmin,
        r_kpc=rs.radius_r_kpc,
        z=meta.get("z"),
        r500_kpc=meta.get("r500_kpc"),
        cosmology=dict(rs.cosmology),
        sb={
            "image": image,
            "extent": extent,
            "centre_xy": (cx, cy),
            "coverage": coverage,
            "nsigma": rs.sb_nsigma,
        },
    )
    if r500_source == "iterated":
        r_note = f"R500 unknown: initial {r_note}, to be iterated from the fitted kT"
    if override is not None:
        r_src, r_note = float(override), f"R500 iteration: {float(override):.3f} arcmin from the fitted kT"
    kpc_per_arcmin = _kpc_per_arcmin(meta.get("z"), rs.cosmology)
    r500_arcmin = (
        r500_kpc / kpc_per_arcmin
        if r500_source == "given" and r500_kpc is not None and kpc_per_arcmin
        else float("nan")
    )
    b_in, b_out = bkg_annulus(r_src, inner=rs.bkg_inner, outer=rs.bkg_outer)
    r_edge = _detector_edge_arcmin(coverage, extent, (cx, cy))
    bkg_note = f"{rs.bkg_inner}-{rs.bkg_outer} x the source radius"
    if b_out > r_edge:
        b_out = r_edge
        b_in = min(b_in, max(r_edge - max(1.0, 0.25 * r_edge), 0.5 * r_edge))
        bkg_note = (
            f"largest annulus on the detector ({b_in:.2f}-{b_out:.2f} arcmin): "
            f"{rs.bkg_outer} x the source radius is off the detector edge at {r_edge:.2f} arcmin"
        )
    vig_map = vignetting_map(extent, ref.header, image.shape)
    points: list[PointSource] = []
    if rs.detect_point_sources:
        ext_model, core_r_phys = _extended_model(image, extent, rel_exposure, (cx, cy), r_edge, vig_map)
        points = detect_point_sources(
            image,
            extent,
            wcs,
            coverage=coverage,
            snr=rs.ps_snr,
            mask_radius_arcsec=rs.ps_mask_radius_arcsec,
            extended_model=ext_model,
            core_xy=(cx, cy),
            core_radius_phys=core_r_phys,
            scale_masks=ext_model is not None,
            exclude_xy=None if ext_model is not None else (cx, cy),
            exclude_radius_phys=0.0 if ext_model is not None else 0.15 * r_src * _ARCMIN_PHYS,
        )
    aperture = _aperture_quantities(
        image,
        extent,
        coverage,
        rel_exposure,
        (cx, cy),
        points,
        r_src=r_src,
        b_in=b_in,
        b_out=b_out,
        r500_arcmin=r500_arcmin,
        r_edge=r_edge,
        log=log,
        vignetting=vig_map,
        particles=particles,
    )
    log.info(
        "regions: centre (%.5f, %.5f) [%s], R=%.2f arcmin (%s), bkg %.2f-%.2f arcmin, %d point sources",
        csky.ra.deg,
        csky.dec.deg,
        centre_note,
        r_src,
        r_note,
        b_in,
        b_out,
        len(points),
    )
    files: dict[str, str] = {}
    src_pts = _sel_overlapping(points, cx, cy, r_src * _ARCMIN_PHYS)
    bkg_pts = _sel_overlapping(points, cx, cy, b_out * _ARCMIN_PHYS)
    user_src, user_bkg = rs.user_src_region, rs.background_region
    if rs.bkg_method == "region" and not user_bkg:
        raise ConfigError("regions.background.method: region needs regions.background.region_file")
    for cam in cams:
        src_path, bkg_path = products.src_region(cam), products.bkg_region(cam)
        if user_src:
            read_ds9(user_src, evls[cam].header)  # validate before copying
            atomic_write_text(src_path, Path(user_src).read_text())
        else:
            write_ds9(
                src_path,
                centre_radec=(csky.ra.deg, csky.dec.deg),
                r_out_arcmin=r_src,
                point_sources=src_pts,
                comment=f"{obs.obsid} {cam} source, {r_note}",
            )
        if user_bkg:
            read_ds9(user_bkg, evls[cam].header)
            atomic_write_text(bkg_path, Path(user_bkg).read_text())
        else:
            write_ds9(
                bkg_path,
                centre_radec=(csky.ra.deg, csky.dec.deg),
                r_in_arcmin=b_in,
                r_out_arcmin=b_out,
                point_sources=bkg_pts,
                comment=f"{obs.obsid} {cam} background annulus",
                background=True,
            )
        files[f"{cam}_src"] = str(src_path)
        files[f"{cam}_bkg"] = str(bkg_path)
    annuli = rs.annuli
    if annuli:
        radii = [float(r) for r in annuli]
        if any(b <= a for a, b in itertools.pairwise(radii)):
            raise ConfigError(f"regions.annuli must increase, got {list(annuli)}")
        for cam in cams:
            for k, (a, b) in enumerate(itertools.pairwise(radii)):
                p = products.annulus_region(cam, k)
                write_ds9(
                    p,
                    centre_radec=(csky.ra.deg, csky.dec.deg),
                    r_in_arcmin=a,
                    r_out_arcmin=b,
                    point_sources=_sel_overlapping(points, cx, cy, b * _ARCMIN_PHYS),
                    comment=f"{obs.obsid} {cam} annulus {a}-{b} arcmin",
                )
                files[products.annulus_key(cam, k)] = str(p)
    if rs.core_excised:
        # core-excised (0.15-1 R) temperature: a second spectrum per camera, fitted as fits/fit_cex.json
        for cam in cams:
            p = products.regions_dir / f"{cam}_anncex_src.reg"
            write_ds9(
                p,
                centre_radec=(csky.ra.deg, csky.dec.deg),
                r_in_arcmin=0.15 * r_src,
                r_out_arcmin=r_src,
                point_sources=src_pts,
                comment=f"{obs.obsid} {cam} core-excised 0.15-1 x {r_src:.3f} arcmin",
            )
            files[f"{cam}_anncex_src"] = str(p)
    _write_ptsrc(products.ptsrc_region, points)
    result: dict[str, Any] = {
        "centre_ra": float(csky.ra.deg),
        "centre_dec": float(csky.dec.deg),
        "centre_x": float(cx),
        "centre_y": float(cy),
        "centre_method": centre_note,
        "r_src_arcmin": float(r_src),
        "r_src_kpc": float(r_src * kpc_per_arcmin) if kpc_per_arcmin else float("nan"),
        "radius_note": r_note,
        "r500_kpc": float(r500_kpc) if r500_source == "given" and r500_kpc is not None else float("nan"),
        "r500_arcmin": float(r500_arcmin),
        "r500_source": r500_source,
        "kpc_per_arcmin": float(kpc_per_arcmin) if kpc_per_arcmin else float("nan"),
        "bkg_inner_arcmin": float(b_in),
        "bkg_outer_arcmin": float(b_out),
        "bkg_note": bkg_note,
        "detector_edge_arcmin": float(r_edge),
        **aperture,
        "point_sources": [p.to_dict() for p in points],
        "n_point_sources": len(points),
        "annuli_arcmin": [float(r) for r in annuli] if annuli else None,
        "user_src_region": str(user_src) if user_src else None,
        "user_bkg_region": str(user_bkg) if user_bkg else None,
        "files": files,
        "ptsrc_file": str(products.ptsrc_region),
    }
    from .images import exposure_image, image_wcs, observation_keywords, write_image

    for cam in cams:
        img, wcs_c, _ = bin_image(evls[cam], band_kev=(0.5, 2.0), extent=extent)
        obs_keys = observation_keywords(evls[cam])
        write_image(
            img,
            wcs_c,
            extent,
            products.image(cam, (0.5, 2.0)),
            header_extra={**obs_keys, "BUNIT": "count", "E_MIN": 0.5, "E_MAX": 2.0},
        )
        expo = exposure_image(evls[cam], extent, footprints=footprints[cam])
        write_image(
            expo,
            image_wcs(evls[cam].header, extent),
            extent,
            products.flat_exposure(cam, (0.5, 2.0)),
            header_extra={
                **obs_keys,
                "BUNIT": "s",
                "COMMENT": "flat (un-vignetted) exposure: CCD footprints x GTI",
            },
        )
        files[f"{cam}_image"] = str(products.image(cam, (0.5, 2.0)))
        files[f"{cam}_expmap"] = str(products.flat_exposure(cam, (0.5, 2.0)))
    atomic_write_json(products.regions_json, result)
    outputs = [*files.values(), str(products.ptsrc_region), str(products.regions_json)]
    try:
        from .plots import plot_camera_images, wants_plot

        drawn = [cam for cam in cams if wants_plot(rs.plots, cam, cams)]
        images = []
        for cam in drawn:
            img, wcs_c, _ = bin_image(evls[cam], band_kev=(0.5, 2.0), extent=extent)
            images.append((img, wcs_c, products.image_plot(cam), f"{obs.obsid} {cam} 0.5-2 keV"))
        plot_camera_images(images, extent, result)  # one figure redrawn per camera
        outputs += [str(products.image_plot(cam)) for cam in drawn]
    except (ValueError, OSError) as exc:
        log.warning("image plot failed: %s", exc)
        result["plot_error"] = str(exc)
    return {**result, "outputs": outputs}
