"""The embedded Python reduction backend: screening, flares, spectra without SAS.

Products and summaries follow ``docs/CONTRACTS.md``.  Responses: the Python backend does not
compute RMFs/ARFs; it copies the ones found beside the observation (``obs.rmf_files`` /
``obs.arf_files``) or named in the config, and records that exact, region-specific responses
need SAS ``rmfgen``/``arfgen`` (the ``sas`` backend).
"""

from __future__ import annotations

import logging
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..corners import HEADER_KEYS as CORNER_KEYS
from ..corners import corner_rows, particle_level
from ..errors import InputDataError
from ..events import (
    flag_mask_for,
    read_clean_events,
    read_events,
    read_unscreened_events,
    screen,
    screen_mask,
    screen_with_gti,
    write_events,
    write_gti,
)
from ..flares import FlareSettings, flare_gti, write_light_curve
from ..fsutil import atomic_path, regular_file
from ..images import PHYS_PIXEL_ARCSEC, ccd_footprints
from ..products import ObsProducts
from ..regions import optical_axis_xy, read_ds9
from ..settings import RegionSettings, ScreenSettings, SpectraSettings, config_value

__all__ = ["PythonBackend"]

RESPONSE_NOTE = (
    "responses copied from the observation folder/config; exact region-specific responses "
    "need SAS rmfgen/arfgen (backend: sas)"
)


def _events_header(path: Path) -> Any:
    """The EVENTS header (for the #XMMEA definitions), or None if unreadable (read_events then says why)."""
    from astropy.io import fits

    try:
        return fits.getheader(path, "EVENTS")
    except (OSError, KeyError, IndexError, ValueError):
        return None


class _FovFootprints:
    """The CCD footprints of a cleaned list's in-FOV events (FLAG without OUT_OF_FOV), built on first use."""

    def __init__(self, evl: Any) -> None:
        self._evl = evl
        self._footprints: Any = None

    def get(self) -> Any:
        if self._footprints is None:
            from ..background import OUT_OF_FOV

            evl = self._evl
            self._footprints = ccd_footprints(evl.select((evl["FLAG"].astype(np.int64) & OUT_OF_FOV) == 0))
        return self._footprints


def _copy_atomic(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


class PythonBackend:
    """Reduction with numpy/astropy only (see :mod:`xmmcore.events`, :mod:`xmmcore.flares`, :mod:`xmmcore.spectra`)."""

    name = "python"

    def versions(self) -> dict[str, str]:
        import astropy
        import regions
        import scipy

        return {
            "backend": "python",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "astropy": astropy.__version__,
            "scipy": scipy.__version__,
            "regions": regions.__version__,
        }

    # ------------------------------------------------------------------ filter
    def filter_camera(
        self,
        obs: Any,
        camera: str,
        outdir: str | Path,
        cfg: dict[str, Any],
        *,
        log: logging.Logger | None = None,
    ) -> dict[str, Any]:
        """Screen events, find flare GTIs, write ``events/<cam>_clean.fits``, ``_gti.fits``, ``_lc.fits``."""
        log = log or logging.getLogger("xmmcore.python")
        products = ObsProducts(outdir)
        path = obs.event_files.get(camera)
        if path is None:
            raise InputDataError(f"no {camera} event list for ObsID {obs.obsid}", obs.root)
        scr = ScreenSettings.from_config(cfg, camera)
        fls = FlareSettings.from_config(cfg, camera)
        method = fls.method
        band = fls.band_kev
        flag_mask = flag_mask_for(camera, scr.flag, _events_header(path))
        lc_mask = flag_mask_for(camera, "xmmea", _events_header(path))
        screen_kw = scr.screen_kwargs(flag_mask)

        def wanted(cols: Any) -> np.ndarray:
            # Streaming pre-selection: rows that pass the screening, feed the flare light curve or
            # lie in the out-of-field corners (the particle level of the regions step's profile).
            return (
                screen_mask(cols, **screen_kw)
                | screen_mask(
                    cols, pattern_max=0, flag_mask=lc_mask, pi_min=band[0] * 1000.0, pi_max=band[1] * 1000.0
                )
                | corner_rows(cols, pattern_max=scr.pattern_max, flag_mask=flag_mask)
            )

        evl = read_events(path, camera=camera, prefilter=wanted, keep_unscreened=True)
        if evl.resorted:
            log.info("%s: TIME was not ordered in %s; rows sorted", camera, path)
        screened = screen_mask(evl.columns, **screen_kw)
        n_screened = int(screened.sum())
        if n_screened == 0:
            raise InputDataError(f"no {camera} events pass the screening (PATTERN/FLAG/PI/CCD)", path)
        res = flare_gti(
            evl,
            method=method,
            band_kev=band,
            bin_s=fls.bin_s,
            nsigma=fls.nsigma,
            rate=fls.rate,
            min_gti_s=fls.min_gti_s,
        )
        for note in res.notes:
            log.warning("%s: flare filtering: %s", camera, note)
        if res.gti.shape[0] == 0:
            raise InputDataError(
                f"no good time left after flare filtering ({method}, threshold {res.threshold:.3g} ct/s)",
                path,
            )
        corner = corner_rows(evl.columns, pattern_max=scr.pattern_max, flag_mask=flag_mask)
        qpb = particle_level(evl.columns, res.gti, corner=corner, in_fov=screened & ~corner)
        clean_t, _ = screen_with_gti(
            evl, res.gti, **screen_kw, keep=screened
        )  # screening and flare GTI in one copy
        if qpb is not None:
            clean_t.header[CORNER_KEYS["counts"]] = (qpb["counts"], "0.5-2 keV out-of-FOV counts in the GTIs")
            clean_t.header[CORNER_KEYS["area"]] = (qpb["area_arcmin2"], "[arcmin2] out-of-FOV CCD area")
        sel = (
            f"PATTERN<={scr.pattern_max} && (FLAG & {hex(flag_mask) if flag_mask is not None else 'none'})"
            f"==0 && PI in [{scr.pi_min}:{scr.pi_max}] && CCDNR in {list(scr.ccds) if scr.ccds else 'all'} "
            f"&& GTI({products.gti(camera).name})"
        )
        clean_path = write_events(
            clean_t, products.clean_events(camera), history=[f"xmm-survey python: {sel}"], remember=True
        )
        gti_path = write_gti(res.gti, products.gti(camera), header=evl.header)
        lc_path = write_light_curve(res, products.light_curve(camera), header=evl.header)
        plot_path = products.lightcurve_plot(camera)
        outputs = [str(clean_path), str(gti_path), str(lc_path)]
        summary: dict[str, Any] = {}
        try:
            from ..plots import plot_lightcurve, wants_plot

            present = [c for c in config_value(cfg, "cameras") or () if c in obs.event_files]
            if wants_plot(cfg, camera, present):
                plot_lightcurve(res, plot_path, title=f"{obs.obsid} {camera}")
                outputs.append(str(plot_path))
        except (ValueError, OSError) as exc:
            log.warning("light-curve plot failed: %s", exc)
            summary["plot_error"] = str(exc)
        exp_raw = evl.ontime()
        exp_clean = clean_t.ontime()
        summary.update(
            {
                "camera": camera,
                "input": str(path),
                "n_events_in": evl.n_rows_file,
                "n_events_screened": n_screened,
                "n_events_out": len(clean_t),
                "flag_mask": flag_mask,
                "pattern_max": scr.pattern_max,
                "pi_range": [scr.pi_min, scr.pi_max],
                "ccds": sorted(clean_t.gti_ccd),
                "exposure_raw_s": exp_raw,
                "exposure_s": exp_clean,
                "livetime_s": exp_clean * clean_t.deadtime_factor(),
                "time_resorted": evl.resorted,
                "corner_particle": qpb,
                "outputs": outputs,  # the plot only when drawn (a missing plot never looks unfinished)
            }
        )
        summary.update(res.summary())
        log.info(
            "%s: %d -> %d events, exposure %.0f -> %.0f s (central CCD), flare fraction %.3f",
            camera,
            evl.n_rows_file,
            len(clean_t),
            exp_raw,
            exp_clean,
            res.flare_fraction,
        )
        return summary

    # ------------------------------------------------------------------ spectra
    def spectra_camera(
        self,
        obs: Any,
        camera: str,
        outdir: str | Path,
        regions: dict[str, Any],
        cfg: dict[str, Any],
        *,
        log: logging.Logger | None = None,
    ) -> dict[str, Any]:
        """Source/background spectra (and annuli) with EXPOSURE, BACKSCAL, grouping; responses copied."""
        from ..ogip import write_pha
        from ..spectra import extract, fwhm_channels, group_min_counts, group_optimal, region_geometry

        log = log or logging.getLogger("xmmcore.python")
        products = ObsProducts(outdir)
        evl = read_clean_events(products.clean_events(camera), camera=camera)
        fp = ccd_footprints(evl)
        fov_fp = _FovFootprints(evl)  # the in-FOV footprints, built once for the ARF weights and background
        files = regions.get("files", {})
        sps = SpectraSettings.from_config(cfg)
        sas_responses = sps.responses == "sas"
        if sas_responses:
            from .sas import SasBackend

            # before any work: without SAS this is the user's to fix (ToolNotFoundError names the tool)
            SasBackend().check_installation(("evselect", "backscale", "rmfgen", "arfgen"), cfg)
            resp: dict[str, Any] = {
                "note": "SAS rmfgen/arfgen (spectra.responses: sas)",
                "outputs": [],
                "rmf_name": products.rmf(camera).name,
                "arf_name": products.arf(camera).name,
            }
        else:
            resp = self._responses(obs, camera, products, sps, log)
        fwhm = resp.pop("fwhm_chan", None)
        grouping, min_counts = sps.grouping, sps.min_counts
        dss = _dss_inputs(camera, evl, cfg)
        out: dict[str, Any] = {"camera": camera, "responses": resp, "grouping": grouping}
        # the copied ARFs are on-axis ones unless spectra.arf_vignetting is none: weight them per region
        weight_arfs = bool(resp.get("arf")) and not sas_responses and sps.arf_vignetting != "none"

        def ancrfile(key: str) -> str | None:
            if weight_arfs and key != f"{camera}_src" and optical_axis_xy(evl.header) is not None:
                return f"{key}.arf"
            return resp.get("arf_name")

        selections: dict[str, Any] = {}  # region files read once, for the background models too
        phas: dict[str, Any] = {}  # the spectra as written (the background models start from them)
        dss_rows: dict[str, Any] = {}
        regions_settings = RegionSettings.from_config(cfg)
        # the annulus spectrum the matched background replaces is written only if that falls back to plain
        defer_bkg = (
            not sas_responses
            and regions_settings.bkg_method != "blanksky"
            and sps.local_background == "matched"
        )

        def write(key: str) -> Path:
            from ..sas_dss import dss_tables

            rows = dss_rows.get(key)
            extra = [] if rows is None or dss is None else dss_tables(ccd_gtis=dss["ccd_gtis"], rows=rows)
            return write_pha(phas[key], products.spectrum(key), extra_hdus=extra, verify_extra=False)

        def one(key: str, kind: str, backfile: str | None, *, deferred: bool = False) -> dict[str, Any]:
            sel = selections[key] = read_ds9(files[key], evl.header)
            geom = region_geometry(sel, fp, evl)
            if geom.area_phys2 <= 0:
                raise InputDataError(f"{key} region lies off the {camera} detector", files[key])
            mask = sel.contains(evl["X"], evl["Y"])
            pha = extract(
                evl,
                mask=mask,
                camera=camera,
                exposure=geom.livetime_s,
                backscal=geom.area_phys2,
                respfile=resp.get("rmf_name") if kind == "src" else None,
                ancrfile=ancrfile(key) if kind == "src" else None,
                backfile=backfile,
                header={
                    "ONTIME": (geom.ontime_s, "[s] region-area-weighted GTI sum"),
                    "LIVETIME": (geom.livetime_s, "[s] region-area-weighted live time"),
                    "REGFILE": Path(files[key]).name,
                    "BKGMETH": "local",
                    "CREATOR": "xmm-survey python backend",
                    "RESPNOTE": "canned/copied response; exact needs SAS rmfgen/arfgen",
                },
            )
            if kind == "src" and grouping != "none":
                if grouping == "optimal":
                    pha.grouping, pha.quality = group_optimal(
                        pha.counts, fwhm if fwhm is not None else fwhm_channels(camera), min_counts=min_counts
                    )
                elif grouping == "min_counts":
                    pha.grouping, pha.quality = group_min_counts(pha.counts, min_counts)
                else:
                    raise InputDataError(
                        f"spectra.grouping must be min_counts, optimal or none, got {grouping!r}"
                    )
            if dss is not None and key in (f"{camera}_src", f"{camera}_bkg") and "centre_x" in regions:
                from ..sas_dss import dss_keywords, region_rows

                pha.header.update(dss_keywords(**dss))
                dss_rows[key] = region_rows(regions, kind)
            phas[key] = pha
            path = products.spectrum(key) if deferred else write(key)
            return {
                "path": str(path),
                "counts": int(pha.counts.sum()),
                "exposure_s": geom.livetime_s,
                "ontime_s": geom.ontime_s,
                "backscal": geom.area_phys2,
                "area_arcmin2": geom.area_phys2 * (PHYS_PIXEL_ARCSEC / 60.0) ** 2,
                "area_by_ccd": {str(k): v for k, v in geom.area_by_ccd.items()},
                "n_groups": int((pha.grouping == 1).sum()) if pha.grouping is not None else None,
            }

        backfile = products.bkg_spectrum(camera).name
        bkg = one(f"{camera}_bkg", "bkg", None, deferred=defer_bkg)
        src = one(f"{camera}_src", "src", backfile)
        if sas_responses:
            resp.update(_sas_responses(obs, camera, products, cfg, log))
        bkg_pha: Any = phas[f"{camera}_bkg"]  # the background spectrum on disk at the end (None: read it)
        if regions_settings.bkg_method == "blanksky":
            out.update(
                self._blanksky(
                    obs, camera, evl, files, src, bkg, regions_settings.blanksky_files, cfg, products, log
                )
            )
            bkg = dict(
                bkg, counts=out["bkg_model_counts"], backscal=src["backscal"], exposure_s=src["exposure_s"]
            )
            bkg_pha = None
        elif sps.local_background == "matched":
            matched, matched_pha = self._matched_background(
                obs,
                camera,
                evl,
                fp,
                fov_fp,
                (selections[f"{camera}_src"], selections[f"{camera}_bkg"]),
                (phas[f"{camera}_src"], phas[f"{camera}_bkg"]),
                products,
                cfg,
                log,
            )
            out.update(matched)
            if matched_pha is None:
                if defer_bkg:
                    write(f"{camera}_bkg")
            else:
                bkg_pha = matched_pha
                bkg = dict(
                    bkg,
                    counts=matched["bkg_model_counts"],
                    backscal=src["backscal"],
                    exposure_s=src["exposure_s"],
                )
        scale = src["backscal"] * src["exposure_s"] / (bkg["backscal"] * bkg["exposure_s"])
        net = src["counts"] - scale * bkg["counts"]
        out.update(
            {
                "src_pha": src["path"],
                "bkg_pha": bkg["path"],
                "src_counts": src["counts"],
                "bkg_counts": bkg["counts"],
                "src_backscal": src["backscal"],
                "bkg_backscal": bkg["backscal"],
                "src_exposure_s": src["exposure_s"],
                "bkg_exposure_s": bkg["exposure_s"],
                "src_ontime_s": src["ontime_s"],
                "bkg_ontime_s": bkg["ontime_s"],
                "src_area_arcmin2": src["area_arcmin2"],
                "bkg_area_arcmin2": bkg["area_arcmin2"],
                "bkg_scale": scale,
                "net_counts": net,
                "net_counts_err": float(np.sqrt(src["counts"] + scale**2 * bkg["counts"])),
                "src_area_by_ccd": src["area_by_ccd"],
                "n_groups": src["n_groups"],
                "background_method": out.get("background_method", "local"),
                "outputs": [src["path"], bkg["path"], *resp.get("outputs", [])],
            }
        )
        annuli = sorted(k for k in files if k.startswith(f"{camera}_ann") and k.endswith("_src"))
        if annuli:
            out["annuli"] = [one(k, "src", backfile) for k in annuli]
            out["outputs"] += [a["path"] for a in out["annuli"]]
        if weight_arfs:
            out.update(
                self._weight_arfs(
                    camera,
                    evl,
                    fp,
                    fov_fp,
                    regions,
                    selections,
                    products,
                    resp,
                    src,
                    bkg,
                    bkg_pha,
                    annuli,
                    out,
                    log,
                )
            )
        log.info(
            "%s: src %d counts (BACKSCAL %.4g, EXPOSURE %.0f s), bkg %d counts (BACKSCAL %.4g), net %.1f",
            camera,
            src["counts"],
            src["backscal"],
            src["exposure_s"],
            bkg["counts"],
            bkg["backscal"],
            net,
        )
        if src["counts"] == 0:
            raise InputDataError(f"no {camera} events in the source region", files[f"{camera}_src"])
        return out

    def _weight_arfs(
        self,
        camera: str,
        evl: Any,
        footprints: Any,
        fov_footprints: _FovFootprints,
        regions: dict[str, Any],
        selections: dict[str, Any],
        products: ObsProducts,
        resp: dict[str, Any],
        src: dict[str, Any],
        bkg: dict[str, Any],
        bkg_pha: Any,
        annuli: list[str],
        out: dict[str, Any],
        log: logging.Logger,
    ) -> dict[str, Any]:
        """The copied (on-axis) ARF weighted by the source region's vignetting per energy (:mod:`xmmcore.arfweight`).

        The source region's ARF replaces ``<cam>.arf``; each radial or core-excised annulus gets its own,
        ``<key>.arf`` (its ANCRFILE). Without a pointing the copied ARF stays and the record says so (the
        L500 step then divides out the scalar vignetting, as for any ARF without ``VIGNWGT``).
        ``selections``: the region Selections the spectra were extracted with, by product key; ``bkg_pha``:
        the background spectrum as written to ``bkg["path"]`` (``None``: read it from there).
        """
        from ..arfweight import WEIGHT_BAND_KEV, region_source_vignetting, weighted_arf
        from ..background import _VIGNETTING_GRID_KEV
        from ..ogip import read_arf, read_pha, write_arf
        from ..spectra import channel_grid

        axis = optical_axis_xy(evl.header)
        if axis is None:
            note = "no RA_PNT/DEC_PNT pointing: the copied ARF is used as it is (on-axis)"
            log.warning("%s: %s", camera, note)
            return {"arf_method": "copied", "arf_note": note}
        on_axis = read_arf(resp["arf_source"])
        fov = fov_footprints.get()
        # expected background events of the source region in the weighting band (its background PHA, scaled)
        bpha = read_pha(bkg["path"]) if bkg_pha is None else bkg_pha
        _, width = channel_grid(camera)
        e_chan = (np.arange(bpha.counts.size) + 0.5) * width / 1000.0
        in_band = (e_chan >= WEIGHT_BAND_KEV[0]) & (e_chan < WEIGHT_BAND_KEV[1])
        scale = src["backscal"] * src["exposure_s"] / (bkg["backscal"] * bkg["exposure_s"])
        n_bkg = scale * float(np.asarray(bpha.counts)[in_band].sum())
        # the background holds a share of the cluster's own counts (annulus emission, bkg_oversubtraction):
        # n_bkg = B + over (N - B) for N events of which B background, so B = (n_bkg - over N) / (1 - over)
        over = regions.get("bkg_oversubtraction_matched", regions.get("bkg_oversubtraction"))
        over = (
            min(max(float(over), 0.0), 0.9) if isinstance(over, (int, float)) and np.isfinite(over) else 0.0
        )
        src_sel = selections[f"{camera}_src"]
        band_ev = (evl["PI"] >= WEIGHT_BAND_KEV[0] * 1000.0) & (evl["PI"] < WEIGHT_BAND_KEV[1] * 1000.0)
        n_src = float(np.count_nonzero(band_ev & src_sel.contains(evl["X"], evl["Y"])))
        n_bkg_src = max((n_bkg - over * n_src) / (1.0 - over), 0.0)
        record: dict[str, Any] = {}
        targets: list[tuple[str, Path, dict[str, Any], Path | None]] = [
            (f"{camera}_src", products.arf(camera), src, None)
        ]
        for k, ann in zip(annuli, out.get("annuli", [])):
            targets.append((k, products.spectra_dir / f"{k}.arf", ann, Path(ann["path"])))
        for key, arf_path, spec, pha_path in targets:
            sel = selections[key]
            n_b = n_bkg_src * spec["backscal"] * spec["exposure_s"] / (src["backscal"] * src["exposure_s"])
            wgt = region_source_vignetting(
                evl["X"],
                evl["Y"],
                evl["PI"],
                sel,
                footprints,
                axis,
                _VIGNETTING_GRID_KEV,
                n_background=n_b,
                fov_footprints=fov,
            )
            write_arf(weighted_arf(on_axis, wgt), arf_path)
            if pha_path is None:
                record.update(wgt.record())
            else:  # its ANCRFILE names this file (spectra_camera)
                spec["arf"] = str(arf_path)
                spec.update({k2: v for k2, v in wgt.record().items() if k2.startswith("arf_vign")})
                out["outputs"].append(str(arf_path))
        log.info(
            "%s: ARF weighted by the source region's vignetting: %.3f at 1 keV, %.3f at 6 keV (%s)",
            camera,
            record["arf_vignetting_1kev"],
            record["arf_vignetting_6kev"],
            record["arf_method"],
        )
        return record

    def _matched_background(
        self,
        obs: Any,
        camera: str,
        evl: Any,
        footprints: Any,
        fov_footprints: _FovFootprints,
        src_ann: tuple[Any, Any],
        src_ann_pha: tuple[Any, Any],
        products: ObsProducts,
        cfg: dict[str, Any],
        log: logging.Logger,
    ) -> tuple[dict[str, Any], Any]:
        """Write the vignetting-matched background PHA (:mod:`xmmcore.background`) as the local background.

        ``src_ann``: the source and background (annulus) region Selections the spectra were made with;
        ``src_ann_pha``: their spectra (the annulus one is not written yet when this replaces it). Returns the
        record and the PHA written, or ``None`` for the plain annulus.

        Falls back to the plain area-scaled annulus (said in the record and the log) when the list has no
        pointing or the unscreened list no out-of-FOV events to measure the particle background with.
        """
        from ..background import (
            _VIGNETTING_GRID_KEV,
            oof_spectrum,
            region_vignetting,
            vignetting_matched_background,
        )
        from ..ogip import write_pha

        def plain(why: str) -> tuple[dict[str, Any], None]:
            log.warning(
                "%s: vignetting-matched background not possible (%s): plain area-scaled annulus", camera, why
            )
            return {
                "background_method": "local",
                "bkg_vignetting_method": "plain",
                "bkg_vignetting_note": why,
            }, None

        axis = optical_axis_xy(evl.header)
        if axis is None:
            return plain("no RA_PNT/DEC_PNT pointing in the event list")
        raw_path = obs.event_files.get(camera)
        if raw_path is None:
            return plain("no unscreened event list")
        raw = read_unscreened_events(raw_path, camera=camera)  # from memory after this process's filter step
        scr = ScreenSettings.from_config(cfg, camera)
        oof = oof_spectrum(
            raw,
            pattern_max=scr.pattern_max,
            pi_min=scr.pi_min,
            pi_max=scr.pi_max,
            gti=evl.gti,
        )
        if oof.total < 100 or oof.area_phys2 <= 0:
            return plain(f"{oof.total} out-of-FOV events in the unscreened list (need >= 100)")
        fov = fov_footprints.get()
        src_sel, ann_sel = src_ann
        e = _VIGNETTING_GRID_KEV
        vig_src = region_vignetting(src_sel, footprints, axis, e, fov_footprints=fov)
        vig_ann = region_vignetting(ann_sel, footprints, axis, e, fov_footprints=fov)
        ann_path = products.bkg_spectrum(camera)
        pha, record = vignetting_matched_background(
            src_ann_pha[1],
            src_ann_pha[0],
            oof=oof,
            vig_src=vig_src,
            vig_ann=vig_ann,
            energies_kev=e,
            camera=camera,
        )
        write_pha(pha, ann_path)
        log.info(
            "%s: vignetting-matched background: sky x %.3f (1 keV) / %.3f (6 keV) of the area scaling, "
            "particle share of the annulus %.2f (%d out-of-FOV events)",
            camera,
            record["bkg_sky_rescale_1kev"],
            record["bkg_sky_rescale_6kev"],
            record["bkg_particle_fraction_0p5_7"],
            oof.total,
        )
        return {
            "background_method": "local_vignetting_matched",
            "bkg_model_counts": float(pha.counts.sum()),
            **record,
        }, pha

    def _blanksky(
        self,
        obs: Any,
        camera: str,
        evl: Any,
        files: dict[str, str],
        src: dict[str, Any],
        bkg: dict[str, Any],
        blanksky_files: Mapping[str, str],
        cfg: dict[str, Any],
        products: ObsProducts,
        log: logging.Logger,
    ) -> dict[str, Any]:
        """Replace the local background by a blank-sky/FWC template, OOF-scaled and double-subtracted."""
        from ..background import blanksky_scale, double_subtracted_background
        from ..ogip import write_pha

        tpl_path = blanksky_files.get(camera)
        if not tpl_path:
            raise InputDataError(f"regions.background.method: blanksky needs blanksky_files.{camera}")
        scr = ScreenSettings.from_config(cfg, camera)
        raw_obs = read_events(obs.event_files[camera], camera=camera)
        raw_tpl = read_events(
            regular_file(tpl_path, max_bytes=8 << 30, what="blank-sky event file"), camera=camera
        )
        try:
            scale = blanksky_scale(
                raw_obs,
                raw_tpl,
                band_kev=FlareSettings.from_config(cfg, camera).band_kev,
                obs_gti=evl.gti,
            )
        except ValueError as exc:
            raise InputDataError(f"cannot scale the blank-sky template: {exc}", tpl_path) from exc
        tpl = screen(
            raw_tpl,
            **scr.screen_kwargs(flag_mask_for(camera, scr.flag, raw_tpl.header)),
        )
        src_sel = read_ds9(files[f"{camera}_src"], evl.header)
        ann_sel = read_ds9(files[f"{camera}_bkg"], evl.header)
        pha = double_subtracted_background(
            obs_clean=evl,
            template_clean=tpl,
            src=src_sel,
            annulus=ann_sel,
            area_src=src["backscal"],
            area_ann=bkg["backscal"],
            exposure_s=src["exposure_s"],
            template_exposure_s=tpl.ontime() * tpl.deadtime_factor(),
            scale=scale,
            header={"BKGFILE": Path(tpl_path).name},
        )
        path = write_pha(pha, products.bkg_spectrum(camera))
        log.info(
            "%s: blank-sky background %s scaled by %.3f +- %.3f (out-of-FOV rates), double-subtracted",
            camera,
            tpl_path,
            scale.scale,
            scale.scale_err,
        )
        return {
            "background_method": "blanksky_double",
            "blanksky_file": str(tpl_path),
            "bkg_model_counts": float(pha.counts.sum()),
            "bkg_pha": str(path),
            **scale.to_dict(),
        }

    def _responses(
        self, obs: Any, camera: str, products: ObsProducts, sps: SpectraSettings, log: logging.Logger
    ) -> dict[str, Any]:
        rcfg: Any = {} if isinstance(sps.responses, str) else sps.responses
        rmf_src = _response_source(rcfg, obs, camera, "rmf")
        arf_src = _response_source(rcfg, obs, camera, "arf")
        out: dict[str, Any] = {"note": RESPONSE_NOTE, "outputs": []}
        if rmf_src:
            dst = _copy_atomic(Path(rmf_src), products.rmf(camera))
            out.update(rmf=str(dst), rmf_name=dst.name, rmf_source=str(rmf_src))
            out["outputs"].append(str(dst))
            if sps.grouping == "optimal":  # the resolution is what optimal grouping needs, nothing else
                try:
                    from ..ogip import read_rmf
                    from ..spectra import fwhm_from_rmf

                    out["fwhm_chan"] = fwhm_from_rmf(read_rmf(dst))
                except (ImportError, ValueError, OSError, InputDataError) as exc:
                    log.info("could not measure the RMF resolution (%s); using the default FWHM(E)", exc)
        else:
            out["rmf"] = None
            out["no_response"] = (
                f"no {camera} RMF in the observation folder or config; the fit step will skip {camera}"
            )
            log.warning(out["no_response"])
        if arf_src:
            dst = _copy_atomic(Path(arf_src), products.arf(camera))
            out.update(arf=str(dst), arf_name=dst.name, arf_source=str(arf_src))
            out["outputs"].append(str(dst))
        else:
            out["arf"] = None
        fw = out.pop("fwhm_chan", None)
        result = dict(out)
        if fw is not None:
            result["fwhm_chan"] = fw
        return result


def _response_source(rcfg: Any, obs: Any, camera: str, kind: str) -> Path | None:
    """The RMF/ARF of ``camera``: ``spectra.responses.<cam>_<kind>`` or the one beside the events, if any.

    Checked with ``stat`` before it is copied: a FIFO, a device or a file above the OGIP size limit is an
    ``InputDataError`` naming the file and the key, never a copy that blocks or fills the disk.
    """
    from ..ogip import MAX_OGIP_BYTES

    given = rcfg.get(f"{camera}_{kind}")
    found = getattr(obs, f"{kind}_files", {}).get(camera)
    src = given or found
    if not src:
        return None
    what = f"{camera} {kind.upper()} (" + (
        f"spectra.responses.{camera}_{kind})" if given else "observation folder)"
    )
    return regular_file(src, max_bytes=MAX_OGIP_BYTES, what=what)


def _dss_inputs(camera: str, evl: Any, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The screening and CCD GTIs the DSS keywords of this camera's spectra describe."""
    gtis = getattr(evl, "gti_ccd", None) or {}
    if not gtis:
        return None
    scr = ScreenSettings.from_config(cfg, camera)
    mask = flag_mask_for(camera, scr.flag, evl.header) or 0
    return {
        "ccd_gtis": gtis,
        "flag_mask": mask,
        "pattern_max": int(cast(int, scr.pattern_max)),
        "pi_range": (float(cast(float, scr.pi_min)), float(cast(float, scr.pi_max))),
    }


def _sas_responses(
    obs: Any, camera: str, products: ObsProducts, cfg: dict[str, Any], log: logging.Logger
) -> dict[str, Any]:
    """``spectra.responses: sas``: SAS backscale, rmfgen, detector map and arfgen on the Python spectra.

    The spectra carry the DSS keywords, so the tasks see the same selection as for evselect spectra.
    """
    from .sas import SasBackend, build_response_commands, run_commands

    backend = SasBackend()
    settings = backend.settings(cfg)
    rmf, arf = products.rmf(camera), products.arf(camera)
    cmds = build_response_commands(
        obs,
        camera,
        products.outdir,
        src=products.src_spectrum(camera),
        bkg=products.bkg_spectrum(camera),
        clean=products.clean_events(camera),
        rmf=rmf,
        arf=arf,
        settings=settings,
    )
    records = run_commands(cmds, settings=settings, log=log, log_dir=products.logs_dir)
    return {
        "rmf": str(rmf),
        "arf": str(arf),
        "sas_tasks": [r["argv"][0] for r in records],
        "outputs": [str(rmf), str(arf)],
    }
