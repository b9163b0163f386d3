"""Sky images, detector coverage and exposure-weighted images from EPIC event lists.

Images are binned in XMM sky pixels: physical pixel = 0.05 arcsec, the X/Y columns' unit, with
the tangent-plane WCS of the ``REFXCRPX``/``TCRPXn`` keywords.  An image of ``bin_phys`` physical
pixels per image pixel starting at physical ``x0`` holds X in ``[x0 + i*bin, x0 + (i+1)*bin)`` in
column ``i``; its header carries the DS9 ``LTM1_1``/``LTV1`` keywords, so DS9 shows physical
coordinates.

Detector coverage (chip gaps, chip edges, field-of-view edge, lost CCDs such as MOS1 CCD6 after
2005) is taken from the event list itself: the convex hull of the event positions of each CCD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from matplotlib.path import Path as MplPath
from scipy.spatial import ConvexHull, QhullError

from .constants import SKY_PIXEL_ARCSEC
from .events import EventList, sky_wcs_keywords
from .fsutil import atomic_write_fits

__all__ = [
    "PHYS_PIXEL_ARCSEC",
    "CcdFootprints",
    "Extent",
    "bin_image",
    "ccd_footprints",
    "coverage_image",
    "exposure_image",
    "extent_of",
    "image_wcs",
    "observation_keywords",
    "phys_wcs",
    "read_exposure_map",
    "write_image",
]

#: XMM sky (physical) pixel size [arcsec].
PHYS_PIXEL_ARCSEC = SKY_PIXEL_ARCSEC


@dataclass(frozen=True)
class Extent:
    """Image grid in physical pixels: lower-left corner ``(x0, y0)``, bin size and shape (ny, nx)."""

    x0: float
    y0: float
    bin_phys: float
    nx: int
    ny: int

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical X and Y of the pixel centres (1-D arrays of length nx and ny)."""
        return (
            self.x0 + (np.arange(self.nx) + 0.5) * self.bin_phys,
            self.y0 + (np.arange(self.ny) + 0.5) * self.bin_phys,
        )

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical -> 0-based fractional image pixel (centre of pixel 0 is 0.0)."""
        return (
            (np.asarray(x) - self.x0) / self.bin_phys - 0.5,
            (np.asarray(y) - self.y0) / self.bin_phys - 0.5,
        )

    def to_phys(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based image pixel -> physical X, Y."""
        return self.x0 + (np.asarray(i) + 0.5) * self.bin_phys, self.y0 + (
            np.asarray(j) + 0.5
        ) * self.bin_phys


def phys_wcs(header) -> WCS:
    """WCS whose 0-based pixel coordinates are ``physical - 1`` (regions' convention for DS9 image coords)."""
    k = sky_wcs_keywords(header)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [k["crpix1"], k["crpix2"]]
    w.wcs.crval = [k["crval1"], k["crval2"]]
    w.wcs.cdelt = [k["cdelt1"], k["cdelt2"]]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    return w


def image_wcs(header, extent: Extent) -> WCS:
    """Celestial WCS of an image on ``extent`` (FITS 1-based pixel convention)."""
    k = sky_wcs_keywords(header)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [
        (k["crpix1"] - extent.x0) / extent.bin_phys + 0.5,
        (k["crpix2"] - extent.y0) / extent.bin_phys + 0.5,
    ]
    w.wcs.crval = [k["crval1"], k["crval2"]]
    w.wcs.cdelt = [k["cdelt1"] * extent.bin_phys, k["cdelt2"] * extent.bin_phys]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    return w


def extent_of(
    evls: Sequence[EventList] | EventList, *, bin_phys: float = 80.0, pad_phys: float = 400.0
) -> Extent:
    """Grid covering the events of one or several lists, aligned to multiples of ``bin_phys``."""
    if isinstance(evls, EventList):
        evls = [evls]
    xs = [e["X"][e["X"] > -1e7] for e in evls if len(e)]
    ys = [e["Y"][e["Y"] > -1e7] for e in evls if len(e)]
    if not xs or not any(x.size for x in xs):
        raise ValueError("no events to define an image grid")
    xmin = min(float(x.min()) for x in xs if x.size) - pad_phys
    xmax = max(float(x.max()) for x in xs if x.size) + pad_phys
    ymin = min(float(y.min()) for y in ys if y.size) - pad_phys
    ymax = max(float(y.max()) for y in ys if y.size) + pad_phys
    x0 = np.floor(xmin / bin_phys) * bin_phys
    y0 = np.floor(ymin / bin_phys) * bin_phys
    return Extent(
        x0=float(x0),
        y0=float(y0),
        bin_phys=float(bin_phys),
        nx=int(np.ceil((xmax - x0) / bin_phys)),
        ny=int(np.ceil((ymax - y0) / bin_phys)),
    )


def bin_image(
    evl: EventList,
    *,
    band_kev: tuple[float, float] | None = (0.5, 2.0),
    bin_phys: float = 80.0,
    extent: Extent | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, WCS, Extent]:
    """Counts image in a PI band.

    Parameters
    ----------
    evl : EventList
    band_kev : (float, float) or None
        PI band [keV] (``None`` = all events).
    bin_phys : float
        Image pixel in physical pixels (80 = 4 arcsec, as XGA/SAS images).
    extent : Extent, optional
        Grid (default: covering the events).
    mask : ndarray of bool, optional
        Extra event selection.

    Returns
    -------
    image : ndarray (ny, nx) of float, wcs : astropy.wcs.WCS, extent : Extent
    """
    ext = extent or extent_of(evl, bin_phys=bin_phys)
    sel = np.ones(len(evl), dtype=bool) if mask is None else np.asarray(mask, dtype=bool).copy()
    if band_kev is not None:
        pi = evl["PI"]
        sel &= (pi >= band_kev[0] * 1000.0) & (pi < band_kev[1] * 1000.0)
    ix = np.floor((evl["X"][sel] - ext.x0) / ext.bin_phys).astype(np.int64)
    iy = np.floor((evl["Y"][sel] - ext.y0) / ext.bin_phys).astype(np.int64)
    ok = (ix >= 0) & (ix < ext.nx) & (iy >= 0) & (iy < ext.ny)
    img = np.bincount(iy[ok] * ext.nx + ix[ok], minlength=ext.nx * ext.ny).reshape(ext.ny, ext.nx)
    return img.astype(np.float64), image_wcs(evl.header, ext), ext


@dataclass
class CcdFootprints:
    """Per-CCD convex hulls of event positions in physical pixels (where the detector saw the sky)."""

    hulls: dict[int, np.ndarray]
    _labels: dict[tuple[float, float, float, int, int], np.ndarray] = field(
        default_factory=dict, repr=False, compare=False
    )

    def label_image(self, extent: Extent) -> np.ndarray:
        """CCD number whose footprint holds each pixel centre (0 in gaps), shape (ny, nx); cached per grid.

        Each CCD is rasterised once, inside its own bounding box; coverage and exposure images read this
        instead of testing every pixel against every CCD again.  Where hulls overlap the first CCD wins.
        """
        key = (float(extent.x0), float(extent.y0), float(extent.bin_phys), int(extent.nx), int(extent.ny))
        cached = self._labels.get(key)
        if cached is not None:
            return cached
        xc, yc = extent.centres()
        out = np.zeros((extent.ny, extent.nx), dtype=np.int16)
        for ccd, poly in self.hulls.items():
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            i0, i1 = np.searchsorted(xc, lo[0], "left"), np.searchsorted(xc, hi[0], "right")
            j0, j1 = np.searchsorted(yc, lo[1], "left"), np.searchsorted(yc, hi[1], "right")
            if i1 <= i0 or j1 <= j0:
                continue
            xx, yy = np.meshgrid(xc[i0:i1], yc[j0:j1])
            inside = (
                MplPath(poly).contains_points(np.column_stack([xx.ravel(), yy.ravel()])).reshape(xx.shape)
            )
            sub = out[j0:j1, i0:i1]
            sub[inside & (sub == 0)] = ccd
        out.setflags(write=False)
        self._labels[key] = out
        return out

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True for physical positions inside any CCD footprint."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        pts = np.column_stack([x.ravel(), y.ravel()])
        out = np.zeros(pts.shape[0], dtype=bool)
        for poly in self.hulls.values():
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            box = (
                (pts[:, 0] >= lo[0])
                & (pts[:, 0] <= hi[0])
                & (pts[:, 1] >= lo[1])
                & (pts[:, 1] <= hi[1])
                & ~out
            )
            if box.any():
                out[box] = MplPath(poly).contains_points(pts[box])
        return out.reshape(x.shape)

    def ccd_of(self, x: float, y: float) -> int | None:
        """CCD whose footprint contains the physical position (None if in a gap)."""
        for ccd, poly in sorted(self.hulls.items()):
            if MplPath(poly).contains_point((x, y)):
                return ccd
        return None


def ccd_footprints(evl: EventList, *, min_events: int = 20) -> CcdFootprints:
    """Convex hull of each CCD's event positions (X, Y); CCDs with fewer than ``min_events`` are skipped."""
    hulls: dict[int, np.ndarray] = {}
    x, y, ccd = evl["X"], evl["Y"], evl["CCDNR"]
    for c in np.unique(ccd):
        sel = (ccd == c) & (x > -1e7) & (y > -1e7)
        if sel.sum() < min_events:
            continue
        pts = np.column_stack([x[sel], y[sel]]).astype(float)
        try:
            hull = ConvexHull(pts)
        except QhullError:
            continue
        hulls[int(c)] = pts[hull.vertices]
    return CcdFootprints(hulls)


def coverage_image(footprints: CcdFootprints, extent: Extent) -> np.ndarray:
    """1.0 where the pixel centre lies on a CCD footprint, else 0.0 (shape ny, nx)."""
    return (footprints.label_image(extent) > 0).astype(np.float64)


def exposure_image(
    evl: EventList, extent: Extent, *, gti: np.ndarray | None = None, footprints: CcdFootprints | None = None
) -> np.ndarray:
    """Flat (un-vignetted) exposure image [s]: each CCD footprint filled with its good time.

    Use an ``eexpmap`` exposure map (:func:`read_exposure_map`) for vignetting-corrected rates.
    """
    from . import gti as gtimod

    fp = footprints or ccd_footprints(evl)
    labels = fp.label_image(extent)
    lut = np.zeros(int(max([int(labels.max()), *fp.hulls, 0])) + 1)
    for ccd in fp.hulls:
        g = evl.gti_ccd.get(ccd, evl.gti)
        lut[ccd] = gtimod.exposure(g if gti is None else gtimod.intersection(g, gti))
    return lut[labels]


def read_exposure_map(path: str | Path, extent: Extent, *, wcs: WCS | None = None) -> np.ndarray:
    """Read an ``eexpmap`` exposure map [s] and sample it at the pixel centres of ``extent`` (nearest pixel).

    The map's physical grid is taken from its DS9 ``LTM``/``LTV`` keywords; maps without them (older
    ``eexpmap``) are sampled through celestial coordinates, which needs ``wcs``, the celestial WCS of
    ``extent`` (:func:`image_wcs`).  Pixels outside the map are 0.
    """
    from .errors import InputDataError

    path = Path(path)
    try:
        with fits.open(path) as hdul:
            data = np.asarray(hdul[0].data, dtype=float)
            h = hdul[0].header
    except OSError as exc:
        raise InputDataError(f"cannot read exposure map ({exc})", path) from exc
    if data.ndim != 2:
        raise InputDataError("exposure map is not a 2-D image", path)
    xc, yc = extent.centres()
    if "LTM1_1" in h and "LTV1" in h:
        # DS9 image pixel (1-based) = LTM * physical + LTV.
        ix = np.round(float(h["LTM1_1"]) * xc + float(h["LTV1"])).astype(int) - 1
        iy = (
            np.round(float(h.get("LTM2_2", h["LTM1_1"])) * yc + float(h.get("LTV2", h["LTV1"]))).astype(int)
            - 1
        )
        xx, yy = np.meshgrid(ix, iy)
    else:
        if wcs is None:
            raise InputDataError(
                "exposure map has no LTM/LTV keywords: pass the image WCS to sample it", path
            )
        jj, ii = np.mgrid[0 : extent.ny, 0 : extent.nx]
        world = wcs.pixel_to_world(ii, jj)
        import warnings

        from astropy.wcs import FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # eexpmap headers: DATE-OBS/MJD fixes only
            map_wcs = WCS(h)
        px, py = map_wcs.world_to_pixel(world)
        xx, yy = np.round(px).astype(int), np.round(py).astype(int)
    ok = (xx >= 0) & (xx < data.shape[1]) & (yy >= 0) & (yy < data.shape[0])
    out = np.zeros((extent.ny, extent.nx))
    out[ok] = data[yy[ok], xx[ok]]
    return out


#: Keywords an image takes from its event list (DS9, ximage and SAS read them for the time and exposure).
_OBS_KEYWORDS = ("TELESCOP", "INSTRUME", "FILTER", "OBS_ID", "OBJECT", "DATE-OBS", "DATE-END", "TIMESYS")


def observation_keywords(evl: EventList) -> dict[str, object]:
    """Header keywords of an image made from ``evl``: OBS_ID, DATE-OBS/END, MJDREF, TSTART/TSTOP, EXPOSURE.

    ``EXPOSURE`` [s] is the live time of the central CCD's GTIs (no vignetting), as SAS ``evselect`` writes it;
    ``MJDREF`` comes
    from ``MJDREF`` or ``MJDREFI + MJDREFF`` of the events (XMM: 50814.0), never the WCS default 0.
    """
    h = evl.header
    out: dict[str, object] = {k: h[k] for k in _OBS_KEYWORDS if h.get(k) not in (None, "")}
    if h.get("MJDREF") is not None:
        out["MJDREF"] = float(h["MJDREF"])
    elif h.get("MJDREFI") is not None:
        out["MJDREF"] = float(h["MJDREFI"]) + float(h.get("MJDREFF", 0.0))
    if "MJDREF" in out:
        # written out, so that WCS readers need not derive them (astropy's 'datfix' warns when it must)
        from astropy.time import Time

        scale = str(out.get("TIMESYS", "TT")).lower()
        scale = scale if scale in ("tt", "utc", "tai", "tdb") else "tt"
        out["DATEREF"] = Time(float(str(out["MJDREF"])), format="mjd", scale=scale).isot
        for key, mjd_key in (("DATE-OBS", "MJD-OBS"), ("DATE-END", "MJD-END")):
            if key in out:
                try:
                    out[mjd_key] = float(Time(str(out[key]), scale=scale).mjd)
                except ValueError:
                    pass
    gti = np.asarray(evl.gti, dtype=float).reshape(-1, 2)
    if gti.size:
        out["TSTART"] = float(gti[0, 0])
        out["TSTOP"] = float(gti[-1, 1])
    out["EXPOSURE"] = float(evl.ontime() * evl.deadtime_factor())
    return out


def write_image(
    image: np.ndarray, wcs: WCS, extent: Extent, path: str | Path, *, header_extra: dict | None = None
) -> Path:
    """Write an image with celestial WCS and DS9 physical (LTM/LTV) keywords (atomic).

    ``header_extra`` (e.g. :func:`observation_keywords`) is written after the WCS, so its ``MJDREF``
    replaces the 0 that a WCS without time information carries.
    """
    hdu = fits.PrimaryHDU(np.asarray(image, dtype=np.float32), header=wcs.to_header())
    h = hdu.header
    h["LTM1_1"] = 1.0 / extent.bin_phys
    h["LTM2_2"] = 1.0 / extent.bin_phys
    h["LTV1"] = 0.5 - extent.x0 / extent.bin_phys
    h["LTV2"] = 0.5 - extent.y0 / extent.bin_phys
    for k, v in (header_extra or {}).items():
        h[k] = v
    return atomic_write_fits(fits.HDUList([hdu]), path)
