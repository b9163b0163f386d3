"""Stacking across ObsIDs: exposure-corrected mosaics on a common WCS and stacked spectra per camera.

* :func:`mosaic` bins the events of every (ObsID, camera) directly onto one tangent-plane grid
  (sky X/Y -> RA/Dec through the event file's column WCS -> the common grid; no image resampling) and
  sums exposure maps sampled at the grid pixel centres. When no exposure map is given for an event list,
  a flat map is used: each CCD's footprint (convex hull of its events' sky positions) times that CCD's
  LIVETIME (``LIVETInn``; ``ONTIME`` otherwise), i.e. without vignetting; the output header says so.
* :func:`stack_spectra` sums counts channel by channel, sums exposures, and averages the ARF, RMF and
  BACKSCAL with exposure weights (what SAS ``epicspeccombine`` / ``addarf`` / ``addrmf`` do for spectra of
  the same camera). On the SAS backend use ``epicspeccombine`` instead (:func:`epicspeccombine_argv`).
* :func:`mosaic_observations` is the multi-observation path of a data folder of one target (``data/a907``): it
  takes stock of the event lists, responses and exposure maps (:func:`data_inputs`), writes the mosaic to
  ``results/joint/<name>_mosaic.fits`` and records what a joint spectral fit would still need in
  ``results/joint/<name>.json``; the report shows both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .constants import CAMERAS
from .errors import InputDataError
from .fsutil import atomic_write_fits, atomic_write_json
from .products import SurveyLayout

__all__ = [
    "Mosaic",
    "data_inputs",
    "epicspeccombine_argv",
    "events_radec",
    "mosaic",
    "mosaic_observations",
    "read_mosaic",
    "stack_spectra",
    "write_mosaic",
    "write_stack",
]


@dataclass
class Mosaic:
    """A mosaic on a common tangent-plane grid.

    Attributes
    ----------
    counts : ndarray
        Counts per pixel (band ``band_kev``).
    exposure : ndarray
        Summed exposure per pixel [s] (vignetted where exposure maps were given).
    wcs : astropy.wcs.WCS
        Celestial WCS of the grid.
    band_kev : tuple
        Energy band [keV].
    inputs : list of dict
        Per event list: path, camera, obsid, events used, exposure source (``expmap`` path or ``flat``).
    """

    counts: np.ndarray
    exposure: np.ndarray
    wcs: Any
    band_kev: tuple[float, float]
    inputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> np.ndarray:
        """Count rate [count/s per pixel]; 0 where there is no exposure."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(
                self.exposure > 0, self.counts / np.where(self.exposure > 0, self.exposure, 1), 0.0
            )


def _column_wcs(header: Any, path: Path):
    from astropy.wcs import WCS

    names = [header.get(f"TTYPE{i}", "") for i in range(1, int(header.get("TFIELDS", 0)) + 1)]
    try:
        ix, iy = names.index("X") + 1, names.index("Y") + 1
    except ValueError as exc:
        raise InputDataError("event list has no X/Y sky columns", path) from exc
    w = WCS(naxis=2)
    try:
        w.wcs.ctype = [header[f"TCTYP{ix}"], header[f"TCTYP{iy}"]]
        w.wcs.crval = [header[f"TCRVL{ix}"], header[f"TCRVL{iy}"]]
        w.wcs.crpix = [header[f"TCRPX{ix}"], header[f"TCRPX{iy}"]]
        w.wcs.cdelt = [header[f"TCDLT{ix}"], header[f"TCDLT{iy}"]]
    except KeyError as exc:
        raise InputDataError(f"event list X/Y columns lack the sky WCS keyword {exc}", path) from exc
    return w


def events_radec(
    path: str | os.PathLike[str], *, band_kev: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """RA, Dec [deg] and CCD number of the events of an event list (optionally in a PI band).

    Returns
    -------
    ra, dec : ndarray
        Sky positions [deg].
    ccd : ndarray of int
        ``CCDNR`` (zeros if absent).
    header : dict
        EVENTS header keywords.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul["EVENTS"]
            header = hdu.header
            data = hdu.data
            x = np.asarray(data["X"], dtype=float)
            y = np.asarray(data["Y"], dtype=float)
            pi = np.asarray(data["PI"], dtype=float)
            ccd = (
                np.asarray(data["CCDNR"], dtype=int)
                if "CCDNR" in hdu.columns.names
                else np.zeros(x.size, int)
            )
            wcs = _column_wcs(header, path)
            head = dict(header)
    except (OSError, KeyError) as exc:
        raise InputDataError(f"cannot read an EVENTS table with X, Y, PI ({exc})", path) from exc
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if band_kev is not None:
        # EPIC PI channels are 1 eV wide
        keep &= (pi >= band_kev[0] * 1000.0) & (pi < band_kev[1] * 1000.0)
    ra, dec = wcs.wcs_pix2world(x[keep], y[keep], 1)
    return ra, dec, ccd[keep], head


def _grid_wcs(centre: tuple[float, float], npix: int, pixel_arcsec: float):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [centre[0], centre[1]]
    w.wcs.crpix = [(npix + 1) / 2.0, (npix + 1) / 2.0]
    w.wcs.cdelt = [-pixel_arcsec / 3600.0, pixel_arcsec / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


def _flat_exposure(
    ra: np.ndarray, dec: np.ndarray, ccd: np.ndarray, header: dict[str, Any], wcs: Any, shape: tuple[int, int]
) -> np.ndarray:
    from matplotlib.path import Path as MplPath
    from scipy.spatial import ConvexHull, QhullError

    ny, nx = shape
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    expo = np.zeros(nx * ny)
    px, py = wcs.wcs_world2pix(ra, dec, 0)
    default = float(header.get("LIVETIME") or header.get("ONTIME") or header.get("EXPOSURE") or 0.0)
    for c in np.unique(ccd):
        sel = ccd == c
        if sel.sum() < 20:
            continue
        xy = np.column_stack([px[sel], py[sel]])
        try:
            hull = ConvexHull(xy)
        except QhullError:
            continue
        inside = MplPath(xy[hull.vertices]).contains_points(pts)
        live = header.get(f"LIVETI{int(c):02d}") or header.get(f"ONTIME{int(c):02d}") or default
        expo[inside] += float(live)
    return expo.reshape(shape)


def _sample_expmap(path: Path, wcs: Any, shape: tuple[int, int]) -> np.ndarray:
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with fits.open(path, memmap=False) as hdul, warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # SAS maps use the old RADECSYS keyword
            img = np.asarray(hdul[0].data, dtype=float)
            ewcs = WCS(hdul[0].header).celestial
    except OSError as exc:
        raise InputDataError(f"cannot read exposure map ({exc})", path) from exc
    ny, nx = shape
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    ra, dec = wcs.wcs_pix2world(gx.ravel(), gy.ravel(), 0)
    ex, ey = ewcs.wcs_world2pix(ra, dec, 0)
    ix, iy = np.rint(ex).astype(int), np.rint(ey).astype(int)
    ok = (ix >= 0) & (iy >= 0) & (ix < img.shape[1]) & (iy < img.shape[0])
    out = np.zeros(nx * ny)
    out[ok] = img[iy[ok], ix[ok]]
    return out.reshape(shape)


def mosaic(
    event_files: Sequence[str | os.PathLike[str]],
    *,
    band_kev: tuple[float, float] = (0.5, 2.0),
    centre: tuple[float, float] | None = None,
    size_arcmin: float = 30.0,
    pixel_arcsec: float = 8.0,
    exposure_maps: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Mosaic:
    """Mosaic event lists of several ObsIDs/cameras onto one tangent-plane grid.

    Parameters
    ----------
    event_files : sequence of path-like
        Calibrated (cleaned) event lists with X/Y sky columns and their WCS (TCRVL/TCRPX/TCDLT/TCTYP).
    band_kev : (float, float)
        Energy band [keV] (PI in eV).
    centre : (ra, dec) in deg, optional
        Grid centre (default: ``RA_OBJ``/``DEC_OBJ`` of the first event list, else its pointing).
    size_arcmin : float
        Side of the square grid [arcmin].
    pixel_arcsec : float
        Pixel size [arcsec].
    exposure_maps : dict, optional
        ``str(event file) -> exposure map`` (FITS image with celestial WCS) for the same band.
    """
    if not event_files:
        raise InputDataError("mosaic: no event lists given")
    npix = round(size_arcmin * 60.0 / pixel_arcsec)
    shape = (npix, npix)
    maps = {str(k): Path(v) for k, v in (exposure_maps or {}).items()}
    counts = np.zeros(shape)
    exposure = np.zeros(shape)
    wcs = None
    inputs: list[dict[str, Any]] = []
    for path in event_files:
        path = Path(path)
        ra_all, dec_all, ccd_all, header = events_radec(path)
        if wcs is None:
            if centre is None:
                ra0 = header.get("RA_OBJ", header.get("RA_PNT"))
                dec0 = header.get("DEC_OBJ", header.get("DEC_PNT"))
                if ra0 is None or dec0 is None:
                    raise InputDataError("no RA_OBJ/DEC_OBJ or RA_PNT/DEC_PNT to centre the mosaic on", path)
                centre = (float(ra0), float(dec0))
            wcs = _grid_wcs(centre, npix, pixel_arcsec)
        ra, dec, _, _ = events_radec(path, band_kev=band_kev)
        px, py = wcs.wcs_world2pix(ra, dec, 0)
        h, _, _ = np.histogram2d(py, px, bins=[np.arange(npix + 1) - 0.5, np.arange(npix + 1) - 0.5])
        counts += h
        exp_src = maps.get(str(path))
        if exp_src is not None:
            exposure += _sample_expmap(exp_src, wcs, shape)
            how = str(exp_src)
        else:
            exposure += _flat_exposure(ra_all, dec_all, ccd_all, header, wcs, shape)
            how = "flat (CCD footprint x LIVETIME, no vignetting)"
        inputs.append(
            {
                "path": str(path),
                "obsid": str(header.get("OBS_ID", "")),
                "instrument": str(header.get("INSTRUME", "")),
                "events_in_band": int(h.sum()),
                "exposure": how,
            }
        )
    return Mosaic(counts, exposure, wcs, (float(band_kev[0]), float(band_kev[1])), inputs)


def write_mosaic(m: Mosaic, path: str | os.PathLike[str]) -> Path:
    """Write COUNTS, EXPOSURE and RATE images (same WCS) to a FITS file atomically."""
    from astropy.io import fits

    hdr = m.wcs.to_header()
    hdr["E_MIN"] = (m.band_kev[0], "[keV] band lower edge")
    hdr["E_MAX"] = (m.band_kev[1], "[keV] band upper edge")
    hdr["NINPUTS"] = (len(m.inputs), "event lists in the mosaic")
    for i, inp in enumerate(m.inputs, start=1):
        hdr[f"INFIL{i:03d}"] = Path(inp["path"]).name
        hdr[f"EXPSR{i:03d}"] = Path(inp["exposure"]).name if inp["exposure"].endswith(".fits") else "flat"
    hdus = [fits.PrimaryHDU(m.counts.astype(np.float32), header=hdr)]
    hdus[0].header["BUNIT"] = "count"
    ehdr = hdr.copy()
    ehdr["BUNIT"] = "s"
    rhdr = hdr.copy()
    rhdr["BUNIT"] = "count/s"
    hdus.append(fits.ImageHDU(m.exposure.astype(np.float32), header=ehdr, name="EXPOSURE"))
    hdus.append(fits.ImageHDU(m.rate.astype(np.float32), header=rhdr, name="RATE"))
    return atomic_write_fits(fits.HDUList(hdus), path)


def _on_grid(
    x_lo: np.ndarray, x_hi: np.ndarray, ref_lo: np.ndarray, ref_hi: np.ndarray, values: np.ndarray, path: Any
) -> np.ndarray:
    if x_lo.shape == ref_lo.shape and np.allclose(x_lo, ref_lo) and np.allclose(x_hi, ref_hi):
        return values
    # different energy grids: interpolate at bin centres (ARFs are smooth on these scales)
    mid, ref_mid = 0.5 * (x_lo + x_hi), 0.5 * (ref_lo + ref_hi)
    return np.interp(ref_mid, mid, values, left=0.0, right=0.0)


def stack_spectra(
    phas: Sequence[str | os.PathLike[str]],
    *,
    rmfs: Sequence[str | os.PathLike[str]],
    arfs: Sequence[str | os.PathLike[str]],
    bkgs: Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, Any]:
    """Stack spectra of one camera from several ObsIDs.

    Parameters
    ----------
    phas, rmfs, arfs : sequence of path-like
        Source spectra and their responses (same camera, same channel grid).
    bkgs : sequence of path-like, optional
        Background spectra.

    Returns
    -------
    dict
        ``{"pha": PHA, "rmf": RMF, "arf": ARF, "bkg": PHA | None, "weights": exposure weights}`` (xmmcore.ogip
        objects); counts summed, exposure summed, ARF/RMF/BACKSCAL exposure-weighted.
    """
    import scipy.sparse as sp

    from .ogip import ARF, PHA, RMF, read_arf, read_pha, read_rmf

    if not phas or not (len(phas) == len(rmfs) == len(arfs)):
        raise InputDataError("stack_spectra: give one RMF and one ARF per spectrum")
    spectra = [read_pha(Path(p)) for p in phas]
    n_chan = {s.counts.size for s in spectra}
    if len(n_chan) != 1:
        raise InputDataError(
            f"stack_spectra: spectra have different channel counts {sorted(n_chan)}", phas[0]
        )
    expo = np.array([s.exposure for s in spectra], dtype=float)
    if np.any(expo <= 0):
        raise InputDataError("stack_spectra: a spectrum has EXPOSURE <= 0", phas[int(np.argmin(expo))])
    w = expo / expo.sum()
    r0 = read_rmf(Path(rmfs[0]))
    a0 = read_arf(Path(arfs[0]))
    matrix = sp.csr_matrix(r0.matrix.shape, dtype=float)
    area = np.zeros_like(a0.specresp, dtype=float)
    for wi, rmf_path, arf_path in zip(w, rmfs, arfs):
        r = read_rmf(Path(rmf_path))
        if r.matrix.shape != r0.matrix.shape:
            raise InputDataError(f"RMF shape {r.matrix.shape} differs from {r0.matrix.shape}", rmf_path)
        if not np.allclose(r.energ_lo, r0.energ_lo) or not np.allclose(r.energ_hi, r0.energ_hi):
            raise InputDataError("RMF energy grid differs from the first RMF of the stack", rmf_path)
        matrix = matrix + wi * r.matrix
        a = read_arf(Path(arf_path))
        area += wi * _on_grid(a.energ_lo, a.energ_hi, a0.energ_lo, a0.energ_hi, a.specresp, arf_path)
    backscal = float(np.sum(w * np.array([float(np.mean(s.backscal)) for s in spectra])))
    header = dict(spectra[0].header)
    header["OBS_ID"] = ",".join(str(s.header.get("OBS_ID", "")) for s in spectra)[:68]
    header["NSTACKED"] = len(spectra)
    pha = PHA(
        channel=spectra[0].channel.copy(),
        counts=np.sum([s.counts for s in spectra], axis=0),
        exposure=float(expo.sum()),
        backscal=backscal,
        header=header,
    )
    bkg = None
    if bkgs:
        bspec = [read_pha(Path(p)) for p in bkgs]
        bexpo = np.array([b.exposure for b in bspec], dtype=float)
        bw = bexpo / bexpo.sum()
        bkg = PHA(
            channel=bspec[0].channel.copy(),
            counts=np.sum([b.counts for b in bspec], axis=0),
            exposure=float(bexpo.sum()),
            backscal=float(np.sum(bw * np.array([float(np.mean(b.backscal)) for b in bspec]))),
            header=dict(bspec[0].header),
            poisserr=all(b.poisserr for b in bspec),
        )
    rmf = RMF(
        energ_lo=r0.energ_lo,
        energ_hi=r0.energ_hi,
        matrix=sp.csr_matrix(matrix),
        e_min=r0.e_min,
        e_max=r0.e_max,
        channel_offset=r0.channel_offset,
        header=dict(r0.header),
    )
    arf = ARF(energ_lo=a0.energ_lo, energ_hi=a0.energ_hi, specresp=area, header=dict(a0.header))
    return {"pha": pha, "rmf": rmf, "arf": arf, "bkg": bkg, "weights": w}


def write_stack(stack: dict[str, Any], outdir: str | os.PathLike[str], *, stem: str) -> dict[str, Path]:
    """Write a stack from :func:`stack_spectra` as ``<stem>_src.pha``, ``_bkg.pha``, ``.rmf``, ``.arf``."""
    from .ogip import write_arf, write_pha, write_rmf

    outdir = Path(outdir)
    paths = {"rmf": outdir / f"{stem}.rmf", "arf": outdir / f"{stem}.arf", "pha": outdir / f"{stem}_src.pha"}
    write_rmf(stack["rmf"], paths["rmf"])
    write_arf(stack["arf"], paths["arf"])
    pha = stack["pha"]
    pha.respfile, pha.ancrfile = paths["rmf"].name, paths["arf"].name
    if stack.get("bkg") is not None:
        paths["bkg"] = outdir / f"{stem}_bkg.pha"
        write_pha(stack["bkg"], paths["bkg"])
        pha.backfile = paths["bkg"].name
    write_pha(pha, paths["pha"])
    return paths


def epicspeccombine_argv(
    phas: Sequence[str | os.PathLike[str]],
    *,
    bkgs: Sequence[str | os.PathLike[str]],
    rmfs: Sequence[str | os.PathLike[str]],
    arfs: Sequence[str | os.PathLike[str]],
    filepha: str = "epic_spc_src.ds",
    filebkg: str = "epic_spc_bkg.ds",
    filersp: str = "epic_rsp.ds",
    allow_he_diff: bool = False,
) -> list[str]:
    """argv of SAS ``epicspeccombine`` (the SAS-backend equivalent of :func:`stack_spectra`).

    The four lists go in the same order (first spectrum with first background, RMF and ARF); SAS wants them as
    one space-separated value each. Run it with ``xmmcore.tools.run_tool(argv, cwd=..., env=<SAS env>)``.
    """
    lists = {"pha": phas, "bkg": bkgs, "rmf": rmfs, "arf": arfs}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1 or not phas:
        raise InputDataError(
            f"epicspeccombine needs equally long, non-empty pha/bkg/rmf/arf lists, got {lengths}"
        )
    argv = ["epicspeccombine"] + [f"{k}={' '.join(str(p) for p in v)}" for k, v in lists.items()]
    argv += [
        f"filepha={filepha}",
        f"filebkg={filebkg}",
        f"filersp={filersp}",
        f"allowHEdiff={'yes' if allow_he_diff else 'no'}",
    ]
    return argv


def read_mosaic(path: str | os.PathLike[str]) -> Mosaic:
    """Read a mosaic written by :func:`write_mosaic` (COUNTS, EXPOSURE, band and input names)."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul, warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            hdr = hdul[0].header
            counts = np.asarray(hdul[0].data, dtype=float)
            exposure = np.asarray(hdul["EXPOSURE"].data, dtype=float)
            wcs = WCS(hdr).celestial
            band = (float(hdr["E_MIN"]), float(hdr["E_MAX"]))
            inputs = [
                {"path": str(hdr[f"INFIL{i:03d}"]), "exposure": str(hdr.get(f"EXPSR{i:03d}", ""))}
                for i in range(1, int(hdr.get("NINPUTS", 0)) + 1)
            ]
    except (OSError, KeyError, TypeError) as exc:
        raise InputDataError(f"not a mosaic written by write_mosaic ({exc})", path) from exc
    return Mosaic(counts, exposure, wcs, band, inputs)


def data_inputs(
    data_dir: str | os.PathLike[str], *, cameras: Sequence[str] = CAMERAS
) -> tuple[dict[str, dict[str, dict[str, Path | None]]], list[str]]:
    """Inventory of a multi-ObsID data folder (``data/<obsid>/...``) for the multi-observation path.

    Returns
    -------
    inventory : dict
        ObsID -> camera -> {"events", "rmf", "arf", "expmap"} paths (``None`` where absent); cameras
        without an event list are left out.
    missing : list of str
        Exact statements of what is missing for a joint spectral fit, one per ObsID x camera, e.g.
        ``"0201901401 mos1: no RMF (*.rmf) and no ARF (*.arf) under a907/0201901401"``.
    """
    from .observation import discover, list_obsids

    data_dir = Path(data_dir)
    inventory: dict[str, dict[str, dict[str, Path | None]]] = {}
    missing: list[str] = []
    for obsid in list_obsids(data_dir):
        obs = discover(data_dir, obsid)
        inventory[obsid] = {}
        for cam in cameras:
            events = obs.event_files.get(cam)
            if events is None:
                missing.append(f"{obsid} {cam}: no event list under {data_dir.name}/{obsid}")
                continue
            expmaps = sorted(p for p in (data_dir / obsid).rglob(f"*{cam}*expmap*.fits"))
            entry = {
                "events": Path(events),
                "rmf": obs.rmf_files.get(cam),
                "arf": obs.arf_files.get(cam),
                "expmap": expmaps[0] if expmaps else None,
            }
            inventory[obsid][cam] = entry
            lack = [f"no {k.upper()} (*.{k})" for k in ("rmf", "arf") if entry[k] is None]
            if lack:
                missing.append(f"{obsid} {cam}: " + " and ".join(lack) + f" under {data_dir.name}/{obsid}")
    return inventory, missing


def mosaic_observations(
    data_dir: str | os.PathLike[str], results_dir: str | os.PathLike[str], *, name: str | None = None
) -> dict[str, Any]:
    """Run the multi-observation path on a data folder of one target (e.g. ``data/a907``).

    Makes the mosaic of every event list (exposure maps used where present) in
    ``results/joint/<name>_mosaic.fits``, lists exactly which inputs of a joint spectral fit are missing, and
    records both in ``results/joint/<name>.json`` (``{"name", "missing", "notes", "mosaic_fits", "n_obsids",
    "n_event_lists"}``) for the catalogue report.
    """
    from .observation import validate_obsid

    data_dir = Path(data_dir)
    name = validate_obsid(name or data_dir.name)
    inventory, missing = data_inputs(data_dir)
    events: list[str | os.PathLike[str]] = []
    expmaps: dict[str, str | os.PathLike[str]] = {}
    for cams in inventory.values():
        for entry in cams.values():
            ev, em = entry["events"], entry["expmap"]
            if ev is None:
                continue
            events.append(ev)
            if em is not None:
                expmaps[str(ev)] = em
    notes: list[str] = []
    rec: dict[str, Any] = {
        "name": name,
        "missing": missing,
        "notes": notes,
        "n_obsids": len(inventory),
        "n_event_lists": len(events),
    }
    if events:
        m = mosaic(events, exposure_maps=expmaps)
        fits_path = write_mosaic(m, SurveyLayout(results_dir).mosaic(name))
        rec["mosaic_fits"] = str(fits_path)
        flat = [i["path"] for i in m.inputs if i["exposure"].startswith("flat")]
        notes.append(
            f"{name}: mosaic of {len(events)} event lists ({m.counts.sum():.0f} counts in 0.5-2 keV) "
            f"written to {fits_path.name}; exposure maps used for {len(expmaps)}, flat CCD-footprint "
            f"exposure (no vignetting) for {len(flat)}: "
            + ", ".join(Path(p).parent.parent.name + "/" + Path(p).name for p in flat)
        )
    rec["path"] = atomic_write_json(SurveyLayout(results_dir).joint_record(name), rec)
    return rec
