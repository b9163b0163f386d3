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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from regions import CirclePixelRegion, PixCoord, PixelRegion, Regions, SkyRegion
from scipy import ndimage

from .constants import CAMERAS, flat_lcdm
from .errors import ConfigError, InputDataError
from .events import EventList, read_events
from .fsutil import atomic_write_json, atomic_write_text, regular_file
from .images import (
    PHYS_PIXEL_ARCSEC,
    CcdFootprints,
    Extent,
    bin_image,
    ccd_footprints,
    coverage_image,
    extent_of,
    phys_wcs,
)
from .products import ObsProducts

__all__ = [
    "PointSource",
    "Selection",
    "auto_centre",
    "auto_radius",
    "bkg_annulus",
    "detect_point_sources",
    "make_regions",
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


def auto_centre(
    image: np.ndarray,
    extent: Extent,
    *,
    start_xy: tuple[float, float],
    coverage: np.ndarray | None = None,
    smooth_phys: float = 320.0,
    radii_arcmin: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
    n_iter: int = 10,
) -> tuple[float, float]:
    """Iterative centroid of a Gaussian-smoothed image, shrinking the aperture.

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
            sel = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
            w = sm[sel]
            if w.sum() <= 0:
                break
            nx_, ny_ = float((xx[sel] * w).sum() / w.sum()), float((yy[sel] * w).sum() / w.sum())
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
        return r, f"sb: {sb.get('nsigma', 3.0) if sb else 3.0} sigma above background"
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
) -> list[PointSource]:
    """Sliding-cell detection (as ``eboxdetect`` in local mode).

    The counts in a ``cell x cell`` box are compared with the local background expected from a
    ``bkg_box`` square (the cell excluded, chip gaps excluded through ``coverage``); ``snr`` is the
    Gaussian-equivalent significance of the Poisson probability of ``>= C`` counts given ``B``
    (candidates pre-selected with ``(C - B) / sqrt(B)``).  Detections are local maxima with ``snr`` above the threshold and
    at least ``min_counts`` counts.  Positions within ``exclude_radius_phys`` of ``exclude_xy``
    (the cluster core, whose peak is not a point source) are skipped.
    """
    img = image * (coverage > 0)
    cov = (coverage > 0).astype(float)
    c_sum = ndimage.uniform_filter(img, cell, mode="constant") * cell**2
    c_cov = ndimage.uniform_filter(cov, cell, mode="constant") * cell**2
    b_sum = ndimage.uniform_filter(img, bkg_box, mode="constant") * bkg_box**2 - c_sum
    b_cov = ndimage.uniform_filter(cov, bkg_box, mode="constant") * bkg_box**2 - c_cov
    with np.errstate(invalid="ignore", divide="ignore"):
        bkg_per_pix = np.where(b_cov > 0.25 * bkg_box**2, b_sum / b_cov, np.nan)
        expect = bkg_per_pix * c_cov
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
        if any(np.hypot(x - p.x, y - p.y) < mask_radius_arcsec / PHYS_PIXEL_ARCSEC for p in out):
            continue
        sky = wcs.pixel_to_world(fi, fj)
        out.append(
            PointSource(
                x=x,
                y=y,
                ra=float(sky.ra.deg),
                dec=float(sky.dec.deg),
                r_arcsec=float(mask_radius_arcsec),
                snr=float(sig[j, i]),
            )
        )
    return out


#: A DS9 region file larger than this is refused before it is read [bytes].
MAX_REGION_BYTES = 1 << 20


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


def make_regions(
    obs: Any, outdir: str | Path, cfg: dict[str, Any], *, log: logging.Logger | None = None
) -> dict[str, Any]:
    """Regions step: centre, radius, background, point sources; DS9 files, ``regions.json``, image plots.

    Reads ``outdir/events/<cam>_clean.fits`` for every camera that the filter step produced.
    One centre, radius and point-source list is used for every camera (sky coordinates); the
    DS9 files per camera are identical apart from their name, and the per-camera areas on the
    detector (BACKSCAL) are computed by the spectra step.  User DS9 regions
    (``regions.user_src_region``/``user_bkg_region``) override the automatic ones.

    Returns the ``regions`` dict of ``docs/CONTRACTS.md`` (also written to ``regions/regions.json``),
    plus ``outputs``: every file written (paths of :class:`~xmmcore.products.ObsProducts`).
    """
    log = log or logging.getLogger("xmmcore.regions")
    products = ObsProducts(outdir)
    rcfg = cfg.get("regions", {})
    cams = [c for c in cfg.get("cameras") or CAMERAS if products.clean_events(c).exists()]
    if not cams:
        raise InputDataError("no cleaned event list: run the filter step first", products.events_dir)
    evls = {c: read_events(products.clean_events(c), columns=("X", "Y", "PI", "CCDNR")) for c in cams}
    ref = evls[cams[0]]
    pw = phys_wcs(ref.header)
    extent = extent_of(list(evls.values()), bin_phys=80.0)
    image = np.zeros((extent.ny, extent.nx))
    coverage = np.zeros_like(image)
    footprints = {}
    for cam, e in evls.items():
        img, wcs, _ = bin_image(e, band_kev=(0.5, 2.0), extent=extent)
        image += img
        footprints[cam] = ccd_footprints(e)
        coverage = np.maximum(coverage, coverage_image(footprints[cam], extent))
    ra0, dec0, fixed = _centre_start(
        list(evls.values()), getattr(obs, "meta", {}) or {}, rcfg.get("centre", "auto")
    )
    sx, sy = pw.world_to_pixel(SkyCoord(ra0 * u.deg, dec0 * u.deg, frame="fk5"))
    start = (float(sx) + 1.0, float(sy) + 1.0)
    if fixed:
        cx, cy = start
        centre_note = "config"
    else:
        cx, cy = auto_centre(image, extent, start_xy=start, coverage=coverage)
        centre_note = "iterative centroid of the smoothed 0.5-2 keV image"
    csky = pw.pixel_to_world(cx - 1.0, cy - 1.0)
    rad = rcfg.get("radius", {})
    meta = getattr(obs, "meta", {}) or {}
    r_src, r_note = auto_radius(
        rad.get("method", "fixed"),
        arcmin=rad.get("arcmin"),
        r_kpc=rad.get("r_kpc"),
        z=meta.get("z"),
        r500_kpc=meta.get("r500_kpc"),
        cosmology=cfg.get("cosmology"),
        sb={
            "image": image,
            "extent": extent,
            "centre_xy": (cx, cy),
            "coverage": coverage,
            "nsigma": rad.get("sb_nsigma", 3.0),
        },
    )
    bcfg = rcfg.get("background", {})
    b_in, b_out = bkg_annulus(r_src, inner=bcfg.get("inner", 1.05), outer=bcfg.get("outer", 1.5))
    pcfg = rcfg.get("point_sources", {})
    points: list[PointSource] = []
    if pcfg.get("detect", True):
        points = detect_point_sources(
            image,
            extent,
            wcs,
            coverage=coverage,
            snr=pcfg.get("snr", 5.0),
            mask_radius_arcsec=pcfg.get("mask_radius_arcsec", 20.0),
            exclude_xy=(cx, cy),
            exclude_radius_phys=0.15 * r_src * _ARCMIN_PHYS,
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
    user_src, user_bkg = rcfg.get("user_src_region"), rcfg.get("user_bkg_region")
    if bcfg.get("method", "annulus") == "region" and not user_bkg:
        user_bkg = bcfg.get("region_file")
        if not user_bkg:
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
    annuli = rcfg.get("annuli")
    if annuli:
        radii = [float(r) for r in annuli]
        if any(b <= a for a, b in itertools.pairwise(radii)):
            raise ConfigError(f"regions.annuli must increase, got {annuli}")
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
    _write_ptsrc(products.ptsrc_region, points)
    result: dict[str, Any] = {
        "centre_ra": float(csky.ra.deg),
        "centre_dec": float(csky.dec.deg),
        "centre_x": float(cx),
        "centre_y": float(cy),
        "centre_method": centre_note,
        "r_src_arcmin": float(r_src),
        "radius_note": r_note,
        "bkg_inner_arcmin": float(b_in),
        "bkg_outer_arcmin": float(b_out),
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
        from .plots import plot_image_regions, wants_plot

        for cam in cams:
            if not wants_plot(cfg, cam, cams):
                continue
            img, wcs_c, _ = bin_image(evls[cam], band_kev=(0.5, 2.0), extent=extent)
            plot_image_regions(
                img,
                wcs_c,
                extent,
                result,
                products.image_plot(cam),
                title=f"{obs.obsid} {cam} 0.5-2 keV",
            )
            outputs.append(str(products.image_plot(cam)))
    except (ValueError, OSError) as exc:
        log.warning("image plot failed: %s", exc)
        result["plot_error"] = str(exc)
    return {**result, "outputs": outputs}
