"""Must show (issues 3 and 4): the real A907 MOS event lists through the Python backend.

Three ObsIDs x MOS1/MOS2 from ``../shared/data/xmm/a907``: cleaned events, flare GTIs, images with
regions, spectra; exposure = GTI overlap, BACKSCAL ratio = independently integrated area ratio
(within 1 %), counts > 0, SAS channel grid and OGIP keywords.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from helpers.ogip import check_ogip_pha
from regions import PixCoord, Regions

from xmmcore import events as E
from xmmcore import gti as G
from xmmcore import images as I
from xmmcore.backends import get_backend
from xmmcore.observation import discover
from xmmcore.regions import make_regions

pytestmark = pytest.mark.realdata
OBSIDS = ("0201901401", "0201903501", "0404910601")
CAMS = ("mos1", "mos2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def a907(xmm_data, tmp_path_factory):
    cfg = yaml.safe_load((REPO / "survey" / "defaults.yaml").read_text())
    cfg["cameras"] = list(CAMS)
    cfg["regions"]["annuli"] = [0.0, 1.0, 2.0, 3.0]  # radial spectra out to the 3' source radius
    backend = get_backend("python")
    log = logging.getLogger("test_a907")
    out = {}
    for obsid in OBSIDS:
        obs = discover(xmm_data / "a907", obsid)
        outdir = tmp_path_factory.mktemp(obsid)
        filt = {c: backend.filter_camera(obs, c, outdir, cfg, log=log) for c in CAMS}
        regs = make_regions(obs, outdir, cfg, log=log)
        spec = {c: backend.spectra_camera(obs, c, outdir, regs, cfg, log=log) for c in CAMS}
        out[obsid] = (obs, outdir, filt, regs, spec)
    return out


def _events_and_flare_gti(obs, outdir, cam):
    """The raw and cleaned event lists of ``cam`` and the flare GTIs the filter step wrote."""
    raw = E.read_events(obs.event_files[cam])
    clean = E.read_events(outdir / "events" / f"{cam}_clean.fits")
    flare = fits.getdata(outdir / "events" / f"{cam}_gti.fits", "STDGTI")
    return raw, clean, np.column_stack([flare["START"], flare["STOP"]])


@pytest.mark.parametrize("obsid", OBSIDS)
@pytest.mark.parametrize("cam", CAMS)
def test_filter_products(a907, obsid, cam):
    obs, outdir, filt, _, _ = a907[obsid]
    s = filt[cam]
    raw, clean, fgti = _events_and_flare_gti(obs, outdir, cam)
    assert 0 < len(clean) < len(raw) == s["n_events_in"]
    assert len(clean) == s["n_events_out"]
    for ccd, g in clean.gti_ccd.items():
        # per-CCD GTIs of the clean list = input CCD GTIs AND flare GTIs; all events inside
        assert G.exposure(g) == pytest.approx(G.overlap(raw.gti_ccd[ccd], fgti), abs=1e-6)
        t = clean["TIME"][clean["CCDNR"] == ccd]
        assert G.mask_in_gti(t, g).all()
    assert np.all(clean["PATTERN"] <= 12) and np.all((clean["FLAG"] & 0x766BA000) == 0)
    assert clean["PI"].min() >= 200 and clean["PI"].max() <= 12000
    assert 0.0 <= s["flare_fraction"] < 0.3
    assert s["exposure_s"] == pytest.approx(G.overlap(raw.gti_ccd[1], fgti))
    assert s["exposure_raw_s"] == pytest.approx(raw.header["ONTIME01"], rel=1e-6)
    for name in (f"events/{cam}_lc.fits", f"plots/{cam}_lightcurve.png", f"plots/{cam}_image.png"):
        assert (outdir / name).stat().st_size > 0


@pytest.mark.parametrize("obsid", OBSIDS)
def test_regions_centre_on_a907(a907, obsid):
    _, outdir, _, regs, _ = a907[obsid]
    # X-ray peak of A907 (RXC J0958.3-1103: 09 58 22.2 -11 03 50): within 20 arcsec
    sep = np.hypot((regs["centre_ra"] - 149.5925) * np.cos(np.radians(-11.064)), regs["centre_dec"] + 11.0639)
    assert sep * 3600 < 20.0
    assert regs["r_src_arcmin"] == 3.0 and regs["bkg_inner_arcmin"] == pytest.approx(3.15)
    assert (outdir / "regions" / "ptsrc.reg").exists() and (outdir / "regions" / "regions.json").exists()


def _area_regions_pkg(reg_path: Path, header, footprints) -> float:
    """Independent area [phys px^2]: regions' pixel-centre masks on a 2" grid times CCD coverage."""
    regs = Regions.read(str(reg_path), format="ds9")
    ext = I.Extent(x0=18000.0, y0=18000.0, bin_phys=40.0, nx=400, ny=400)
    wcs = I.image_wcs(header, ext)
    cover = I.coverage_image(footprints, ext)
    inc = np.zeros((ext.ny, ext.nx))
    exc = np.zeros_like(inc)
    for r in regs:
        m = r.to_pixel(wcs).to_mask(mode="center").to_image((ext.ny, ext.nx))
        if m is None:
            continue
        if int(r.meta.get("include", 1)) == 0:
            exc = np.maximum(exc, m)
        else:
            inc = np.maximum(inc, m)
    return float((np.clip(inc - exc, 0, 1) * cover).sum() * ext.bin_phys**2)


@pytest.mark.parametrize("obsid", OBSIDS)
@pytest.mark.parametrize("cam", CAMS)
def test_spectra_consistent_with_inputs(a907, obsid, cam):
    obs, outdir, _, _regs, spec = a907[obsid]
    s = spec[cam]
    raw, clean, fgti = _events_and_flare_gti(obs, outdir, cam)
    src_h = check_ogip_pha(outdir / "spectra" / f"{cam}_src.pha", n_chan=800)
    bkg_h = check_ogip_pha(outdir / "spectra" / f"{cam}_bkg.pha", n_chan=800)
    assert src_h["INSTRUME"] == cam.upper().replace("MOS", "EMOS") and src_h["SPECDELT"] == 15
    assert src_h["BACKFILE"] == f"{cam}_bkg.pha"
    assert s["src_counts"] > 1000 and s["bkg_counts"] > 100
    # EXPOSURE: area-weighted (per CCD) GTI overlap of input CCD GTIs with the flare GTIs, x dead time
    w = {int(k): v for k, v in s["src_area_by_ccd"].items()}
    tot = sum(w.values())
    ontime = sum(a / tot * G.overlap(raw.gti_ccd[c], fgti) for c, a in w.items())
    live = sum(
        a
        / tot
        * G.overlap(raw.gti_ccd[c], fgti)
        * raw.header[f"LIVETI{c:02d}"]
        / raw.header[f"ONTIME{c:02d}"]
        for c, a in w.items()
    )
    assert src_h["ONTIME"] == pytest.approx(ontime, rel=1e-9)
    assert src_h["EXPOSURE"] == pytest.approx(live, rel=1e-9)
    # BACKSCAL: ratio equal to the independently integrated area ratio within 1 %
    fp = I.ccd_footprints(clean)
    a_src = _area_regions_pkg(outdir / "regions" / f"{cam}_src.reg", clean.header, fp)
    a_bkg = _area_regions_pkg(outdir / "regions" / f"{cam}_bkg.reg", clean.header, fp)
    assert src_h["BACKSCAL"] / bkg_h["BACKSCAL"] == pytest.approx(a_src / a_bkg, rel=0.01)
    assert src_h["BACKSCAL"] == pytest.approx(a_src, rel=0.01)
    assert src_h["BACKSCAL"] <= np.pi * (3.0 * 1200.0) ** 2 * 1.001  # 1" sampling grid
    # Counts: events of the clean list inside the DS9 source region (regions package), PI < 12000
    regs_src = Regions.read(str(outdir / "regions" / f"{cam}_src.reg"), format="ds9")
    pw = I.phys_wcs(clean.header)
    pc = PixCoord(clean["X"] - 1.0, clean["Y"] - 1.0)
    inside = np.zeros(len(clean), bool)
    for r in regs_src:
        m = np.asarray(r.to_pixel(pw).contains(pc))
        inside = inside & ~m if int(r.meta.get("include", 1)) == 0 else inside | m
    with fits.open(outdir / "spectra" / f"{cam}_src.pha") as h:
        assert int(h["SPECTRUM"].data["COUNTS"].sum()) == int((inside & (clean["PI"] < 12000)).sum())


@pytest.mark.sherpa
def test_pha_loads_in_sherpa(a907):
    from sherpa.astro import io as sio

    _, outdir, _, _, _ = a907[OBSIDS[0]]
    d = sio.read_pha(str(outdir / "spectra" / "mos1_src.pha"))
    assert d.exposure > 0 and d.counts.sum() > 0


def test_point_sources_repeat_across_obsids(a907):
    """Bright detections of the deepest ObsID are found again in the others (same sky, other epochs)."""
    deep = a907["0404910601"][3]["point_sources"]
    bright = [p for p in deep if p["snr"] > 10]
    assert bright
    others = [p for o in ("0201901401", "0201903501") for p in a907[o][3]["point_sources"]]
    for p in bright:
        d = [
            np.hypot((p["ra"] - q["ra"]) * np.cos(np.radians(p["dec"])), p["dec"] - q["dec"]) * 3600
            for q in others
        ]
        assert min(d) < 10.0, p


@pytest.mark.parametrize("obsid", OBSIDS)
def test_images_with_wcs(a907, obsid):
    _, _outdir, _, regs, _ = a907[obsid]
    with fits.open(regs["files"]["mos1_image"]) as h:
        from astropy.wcs import WCS

        w = WCS(h[0].header)
        img = h[0].data
        # the brightest 4" pixel of the smoothed image lies within 30" of the fitted centre
        from scipy import ndimage

        j, i = np.unravel_index(np.argmax(ndimage.gaussian_filter(img.astype(float), 3)), img.shape)
        sky = w.pixel_to_world(i, j)
        sep = (
            np.hypot(
                (sky.ra.deg - regs["centre_ra"]) * np.cos(np.radians(regs["centre_dec"])),
                sky.dec.deg - regs["centre_dec"],
            )
            * 3600
        )
        assert sep < 30.0
        assert h[0].header["LTM1_1"] == pytest.approx(1 / 80.0)
    with fits.open(regs["files"]["mos1_expmap"]) as h:
        assert h[0].data.max() == pytest.approx(a907[obsid][2]["mos1"]["exposure_s"], rel=0.05)


def test_responses_copied_and_optimal_grouping(a907, xmm_data, tmp_path):
    """With a canned MOS RMF/ARF beside the observation: copied atomically, RESPFILE/ANCRFILE set,
    channel grid identical to the RMF's EBOUNDS, Kaastra & Bleeker grouping from the RMF resolution."""
    import dataclasses
    import shutil

    from xmmcore.ogip import read_arf, read_rmf

    obs, outdir, _, regs, _ = a907["0201903501"]
    canned = xmm_data / "psrj0855" / "mos1"
    obs2 = dataclasses.replace(
        obs,
        rmf_files={"mos1": canned / "xmm_mos1_0605960101.rmf"},
        arf_files={"mos1": canned / "xmm_mos1_0605960101.arf"},
    )
    work = tmp_path / "out"
    shutil.copytree(outdir / "events", work / "events")
    cfg = yaml.safe_load((REPO / "survey" / "defaults.yaml").read_text())
    cfg["spectra"]["grouping"] = "optimal"
    s = get_backend("python").spectra_camera(obs2, "mos1", work, regs, cfg, log=logging.getLogger("t"))
    assert s["responses"]["rmf"] and "rmfgen" in s["responses"]["note"]
    rmf = read_rmf(work / "spectra" / "mos1.rmf")
    arf = read_arf(work / "spectra" / "mos1.arf")
    hdr = check_ogip_pha(work / "spectra" / "mos1_src.pha", n_chan=rmf.matrix.shape[1])
    assert hdr["RESPFILE"] == "mos1.rmf" and hdr["ANCRFILE"] == "mos1.arf"
    assert rmf.channel_offset == 0 and arf.specresp.size == rmf.energ_lo.size
    with fits.open(work / "spectra" / "mos1_src.pha") as h:
        g = h["SPECTRUM"].data["GROUPING"]
    assert 50 < (g == 1).sum() < 400


@pytest.mark.parametrize("obsid", OBSIDS)
def test_binning_reproduces_sas_evselect_image(xmm_data, obsid):
    """Our binning of the input list on the grid of the SAS (evselect) 0.5-2 keV image is identical pixel by
    pixel, and our image WCS equals SAS's: checks the X/Y, LTM/LTV and WCS conventions against SAS."""
    img_path = next((xmm_data / "a907" / obsid / "images").glob("*mos1*keVimg.fits"))
    with fits.open(img_path) as h:
        sas = h[0].data.astype(float)
        hd = h[0].header
    b = 1.0 / hd["LTM1_1"]
    ext = I.Extent(
        x0=(0.5 - hd["LTV1"]) * b, y0=(0.5 - hd["LTV2"]) * b, bin_phys=b, nx=hd["NAXIS1"], ny=hd["NAXIS2"]
    )
    evl = E.read_events(next((xmm_data / "a907" / obsid / "eclean").glob("mos1*")))
    sel = E.screen_mask(evl.columns, pattern_max=12, flag_mask=0x766BA000, pi_min=500, pi_max=2000)
    ours, wcs, _ = I.bin_image(evl, band_kev=None, extent=ext, mask=sel)
    assert ours.sum() == sas.sum() > 1000
    assert np.array_equal(ours, sas)
    assert wcs.wcs.crpix == pytest.approx([hd["CRPIX1"], hd["CRPIX2"]], abs=1e-6)
    assert wcs.wcs.cdelt == pytest.approx([hd["CDELT1"], hd["CDELT2"]], rel=1e-9)
    assert wcs.wcs.crval == pytest.approx([hd["CRVAL1"], hd["CRVAL2"]], abs=1e-9)


@pytest.mark.parametrize("obsid", OBSIDS)
def test_sas_exposure_map_sampled_on_our_grid(xmm_data, obsid):
    """eexpmap maps (with or without LTM/LTV) land on our grid; the on-axis value is the central CCD's
    live time corrected for vignetting (<= LIVETI01, within 3 %)."""
    p = next((xmm_data / "a907" / obsid / "images").glob("*mos1*expmap.fits"))
    evl = E.read_events(next((xmm_data / "a907" / obsid / "eclean").glob("mos1*")))
    with fits.open(p) as h:
        sas = h[0].data.astype(float)
        hd = h[0].header
    b = 87.0
    # the SAS image grid: CRPIX of the image = (25921 - x0) / b + 0.5
    x0 = 25921.0 - (hd["CRPIX1"] - 0.5) * b
    y0 = 25921.0 - (hd["CRPIX2"] - 0.5) * b
    ext = I.Extent(x0=x0, y0=y0, bin_phys=b, nx=hd["NAXIS1"], ny=hd["NAXIS2"])
    ours = I.read_exposure_map(p, ext, wcs=I.image_wcs(evl.header, ext))
    assert np.allclose(ours, sas)
    assert 0.97 * evl.header["LIVETI01"] < ours.max() <= 1.02 * evl.header["LIVETI01"]


@pytest.mark.parametrize("obsid", OBSIDS)
def test_annuli_partition_the_source_region(a907, obsid):
    """Radial spectra 0-1-2-3': counts and BACKSCAL add up to the 3' source spectrum; counts fall with radius
    per unit area (a centrally peaked cluster)."""
    _, _, _, _, spec = a907[obsid]
    for cam in CAMS:
        s = spec[cam]
        ann = s["annuli"]
        assert len(ann) == 3
        assert sum(a["counts"] for a in ann) == s["src_counts"]
        assert sum(a["backscal"] for a in ann) == pytest.approx(s["src_backscal"], rel=1e-3)
        sb = [a["counts"] / a["backscal"] for a in ann]
        assert sb[0] > sb[1] > sb[2]
