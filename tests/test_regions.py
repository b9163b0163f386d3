"""Regions: DS9 io, areas on the detector, auto centre, point-source detection, radius methods."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.events import make_event_file

from xmmcore import events as E
from xmmcore import images as I
from xmmcore import regions as R
from xmmcore.errors import InputDataError


@pytest.fixture()
def header(tmp_path):
    return E.read_events(make_event_file(tmp_path / "m.fits")).header


def test_ds9_roundtrip_fk5_and_physical(tmp_path, header):
    pw = I.phys_wcs(header)
    c = pw.pixel_to_world(26000 - 1.0, 26000 - 1.0)
    ps = [R.PointSource(x=26300, y=26000, ra=0, dec=0, r_arcsec=10.0, snr=7.0)]
    s = pw.pixel_to_world(26300 - 1.0, 26000 - 1.0)
    ps[0].ra, ps[0].dec = float(s.ra.deg), float(s.dec.deg)
    path = R.write_ds9(
        tmp_path / "src.reg", centre_radec=(c.ra.deg, c.dec.deg), r_out_arcmin=1.0, point_sources=ps
    )
    sel = R.read_ds9(path, header)
    assert len(sel.include) == 1 and len(sel.exclude) == 1
    assert sel.contains(
        np.array([26000.0, 26300.0, 27300.0]), np.array([26000.0, 26000.0, 26000.0])
    ).tolist() == [True, False, False]
    area = R.region_area(sel)
    expect = np.pi * 1200.0**2 - np.pi * 200.0**2
    assert area == pytest.approx(expect, rel=2e-3)
    phys = tmp_path / "phys.reg"
    phys.write_text("physical\ncircle(26000,26000,1200)\n-circle(26300,26000,200)\n")
    sel2 = R.read_ds9(phys, header)
    assert R.region_area(sel2) == pytest.approx(area, rel=1e-3)
    bad = tmp_path / "bad.reg"
    bad.write_text("fk5\nfoo(1,2,3)\n")
    with pytest.raises(InputDataError):
        R.read_ds9(bad, header)


def test_ds9_background_tag_and_exclusions(tmp_path, header):
    """The background annulus carries DS9's ``# background`` property on every shape, point sources are
    ``-circle`` exclusions, and both the ``regions`` package and our reader parse them (``regions`` keeps no
    source/background flag: DS9 itself checks the tag in test_interop.py)."""
    from regions import Regions

    pw = I.phys_wcs(header)
    c = pw.pixel_to_world(26000 - 1.0, 26000 - 1.0)
    s = pw.pixel_to_world(27000 - 1.0, 26000 - 1.0)
    ps = [R.PointSource(x=27000, y=26000, ra=float(s.ra.deg), dec=float(s.dec.deg), r_arcsec=10.0, snr=7.0)]
    path = R.write_ds9(
        tmp_path / "bkg.reg",
        centre_radec=(c.ra.deg, c.dec.deg),
        r_in_arcmin=0.5,
        r_out_arcmin=1.5,
        point_sources=ps,
        background=True,
    )
    shapes = [ln for ln in path.read_text().splitlines() if ln.startswith(("annulus", "-circle"))]
    assert len(shapes) == 2 and all("# background" in ln for ln in shapes)
    assert shapes[1].startswith("-circle(")
    regs = Regions.read(str(path), format="ds9")
    assert [r.meta.get("include") for r in regs] == [1, 0]
    sel = R.read_ds9(path, header)
    assert len(sel.include) == 1 and len(sel.exclude) == 1
    assert sel.contains(np.array([26000.0 + 1200.0, 27000.0]), np.array([26000.0, 26000.0])).tolist() == [
        True,
        False,
    ]
    src = R.write_ds9(tmp_path / "src.reg", centre_radec=(c.ra.deg, c.dec.deg), r_out_arcmin=1.0)
    assert "background" not in src.read_text()


def test_area_respects_ccd_coverage(tmp_path):
    # Events fill two chips with a 1000-px gap between them.
    rng = np.random.default_rng(0)
    n = 20000
    x = np.where(rng.random(n) < 0.5, rng.uniform(20000, 25000, n), rng.uniform(26000, 31000, n))
    y = rng.uniform(20000, 31000, n)
    ccd = np.where(x < 25500, 1, 2)
    p = make_event_file(tmp_path / "m.fits", n=n, xy=(x.astype(int), y.astype(int)))
    evl = E.read_events(p)
    evl.columns["CCDNR"] = ccd[np.argsort(np.zeros(n), kind="stable")].astype(np.uint8)
    evl.columns["X"], evl.columns["Y"] = x.astype(np.int32), y.astype(np.int32)
    fp = I.ccd_footprints(evl)
    sel = R.Selection(include=[R._phys_circle(25500.0, 25500.0, 2400.0)])
    full = np.pi * 2400.0**2
    gap = 2 * np.sqrt(2400.0**2 - np.linspace(-500, 500, 2001) ** 2).mean() * 1000.0
    assert R.region_area(sel, footprints=fp) == pytest.approx(full - gap, rel=0.01)


def _beta_image(extent, xc, yc, rc=400.0, amp=50.0, bkg=0.2, seed=1, points=()):
    rng = np.random.default_rng(seed)
    xs, ys = extent.centres()
    xx, yy = np.meshgrid(xs, ys)
    mu = amp * (1 + ((xx - xc) ** 2 + (yy - yc) ** 2) / rc**2) ** (-3.0 * 0.67 + 0.5) + bkg
    for px, py, f in points:
        mu = mu + f * np.exp(-0.5 * ((xx - px) ** 2 + (yy - py) ** 2) / 80.0**2) / (
            2 * np.pi * (80.0 / 80.0) ** 2
        )
    return rng.poisson(mu).astype(float)


def test_auto_centre_and_point_sources(header):
    ext = I.Extent(x0=20000.0, y0=20000.0, bin_phys=80.0, nx=150, ny=150)
    xc, yc = 26013.0, 25987.0
    pts = [(23000.0, 24000.0, 60.0), (28500.0, 27000.0, 60.0)]
    img = _beta_image(ext, xc, yc, points=pts)
    cov = np.ones_like(img)
    x, y = R.auto_centre(img, ext, start_xy=(25500.0, 26500.0), coverage=cov)
    assert np.hypot(x - xc, y - yc) < 80.0  # within one 4" image pixel
    found = R.detect_point_sources(
        img,
        ext,
        I.image_wcs(header, ext),
        coverage=cov,
        snr=5.0,
        exclude_xy=(x, y),
        exclude_radius_phys=1500.0,
    )
    for px, py, _ in pts:
        assert min(np.hypot(p.x - px, p.y - py) for p in found) < 120.0
    assert len(found) <= 4


def test_radius_methods():
    r, _ = R.auto_radius("fixed", arcmin=3.0)
    assert r == 3.0
    r, _note = R.auto_radius("physical", r_kpc=1000.0, z=0.16, cosmology={"H0": 70.0, "Om0": 0.3})
    # 1 Mpc at z = 0.16 (flat LCDM 70/0.3): 2.755 kpc/arcsec -> 6.05 arcmin
    assert r == pytest.approx(6.05, rel=0.01)
    with pytest.raises(InputDataError, match="r500_kpc"):
        R.auto_radius("r500", z=0.1)
    assert R.bkg_annulus(2.0) == pytest.approx((2.1, 3.0))
    ext = I.Extent(x0=10000.0, y0=10000.0, bin_phys=80.0, nx=400, ny=400)
    img = _beta_image(ext, 26000.0, 26000.0, amp=20.0, bkg=0.5)
    r_sb = R.sb_radius(img, ext, (26000.0, 26000.0), coverage=np.ones_like(img), nsigma=3.0)
    # net SB per 0.25' annulus drops below 3 sigma near 2' for this beta model (rc = 0.33', 0.5 ct/px bkg)
    assert 1.25 < r_sb < 3.0
    assert R.sb_radius(img, ext, (26000.0, 26000.0), coverage=np.ones_like(img), nsigma=10.0) < r_sb


def _king_image(extent, xc, yc, *, rc_phys, beta, amp, bkg, points=(), seed=1):
    """Cluster (beta model) + King-PSF point sources (r0 4", as the simulator) + flat background, Poisson."""
    rng = np.random.default_rng(seed)
    xs, ys = extent.centres()
    xx, yy = np.meshgrid(xs, ys)
    mu = amp * (1 + ((xx - xc) ** 2 + (yy - yc) ** 2) / rc_phys**2) ** (0.5 - 3.0 * beta) + bkg
    r0 = 80.0  # 4" in physical pixels
    pix_area = extent.bin_phys**2
    for px, py, n in points:
        r2 = (xx - px) ** 2 + (yy - py) ** 2
        mu = mu + n * 0.5 / (np.pi * r0**2) * (1 + r2 / r0**2) ** -1.5 * pix_area
    return rng.poisson(mu).astype(float)


@pytest.mark.parametrize(
    ("rc_phys", "beta", "amp"),
    [
        (200.0, 0.62, 400.0),
        (400.0, 0.67, 120.0),
        (3000.0, 0.75, 30.0),
    ],  # cool core, regular, flat core (deep)
)
def test_point_sources_do_not_carve_the_cluster(header, rc_phys, beta, amp):
    ext = I.Extent(x0=14000.0, y0=14000.0, bin_phys=80.0, nx=300, ny=300)
    xc, yc = 26000.0, 26000.0
    agn = (26000.0 + 1500.0, 26000.0 + 600.0, 400.0)  # 1.35' from the centre
    far = (19000.0, 31000.0, 150.0)
    cov = np.ones((ext.ny, ext.nx))
    for seed in range(3):
        img = _king_image(
            ext, xc, yc, rc_phys=rc_phys, beta=beta, amp=amp, bkg=0.3, points=[agn, far], seed=seed
        )
        model, core_r = R._extended_model(img, ext, cov, (xc, yc), 9.0)
        assert model is not None
        found = R.detect_point_sources(
            img,
            ext,
            I.image_wcs(header, ext),
            coverage=cov,
            snr=5.0,
            extended_model=model,
            core_xy=(xc, yc),
            core_radius_phys=core_r,
            scale_masks=True,
        )
        # no false source within 2 core radii (at least 0.5') of the centre
        false = [
            p
            for p in found
            if np.hypot(p.x - xc, p.y - yc) < max(2 * rc_phys, 600.0)
            and min(np.hypot(p.x - s[0], p.y - s[1]) for s in (agn, far)) > 120.0
        ]
        assert false == [], (seed, [(p.x, p.y, p.snr) for p in false])
        # both injected sources found; the brighter one gets the larger mask, the masks scale (10-60")
        d = {
            k: min(found, key=lambda p, s=s: np.hypot(p.x - s[0], p.y - s[1]))
            for k, s in (("agn", agn), ("far", far))
        }
        assert np.hypot(d["agn"].x - agn[0], d["agn"].y - agn[1]) < 120.0
        assert np.hypot(d["far"].x - far[0], d["far"].y - far[1]) < 120.0
        assert all(10.0 <= p.r_arcsec <= 60.0 for p in found)


def test_auto_centre_of_a_flat_core_is_not_captured_by_a_point_source():
    # A 4' core with a 1400-count point source 1.5' from its centre (simulated 0901302501: the
    # centroid locked on the source, 1.55' off, and L500 came out 1.76x the truth).
    ext = I.Extent(x0=12000.0, y0=12000.0, bin_phys=80.0, nx=350, ny=350)
    xc, yc = 26013.0, 25987.0
    ps = (xc + 1500.0, yc + 1000.0, 1400.0)
    img = _beta_image(ext, xc, yc, rc=4800.0, amp=1.5, bkg=0.4, seed=3, points=[ps])
    cov = np.ones_like(img)
    x, y = R.auto_centre(img, ext, start_xy=(xc, yc), coverage=cov)
    assert np.hypot(x - xc, y - yc) < 400.0  # 20": the noise of a 4' core's centroid
    peaks = R.compact_sources(img, ext, coverage=cov)
    assert np.hypot(peaks[0][0] - ps[0], peaks[0][1] - ps[1]) < 120.0
    x0, y0 = R.auto_centre(img, ext, start_xy=(xc, yc), coverage=cov, mask_compact=False)
    assert np.hypot(x0 - ps[0], y0 - ps[1]) < 200.0  # what the plain centroid does


def test_auto_centre_keeps_a_compact_cool_core():
    ext = I.Extent(x0=20000.0, y0=20000.0, bin_phys=80.0, nx=150, ny=150)
    xc, yc = 26013.0, 25987.0
    img = _beta_image(ext, xc, yc, rc=120.0, amp=400.0, bkg=0.2, seed=4)
    cov = np.ones_like(img)
    assert R.compact_sources(img, ext, coverage=cov)  # the 6" core looks point-like
    x, y = R.auto_centre(img, ext, start_xy=(25700.0, 26300.0), coverage=cov)
    assert np.hypot(x - xc, y - yc) < 80.0
