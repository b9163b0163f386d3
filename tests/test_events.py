"""Event-list reading, screening, writing and streaming on tiny event lists built in code."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from helpers.events import T0, make_event_file

from xmmcore import events as E
from xmmcore import gti as G
from xmmcore.errors import InputDataError


def test_read_native_endian_and_gtis(tmp_path):
    p = make_event_file(tmp_path / "m1.fits")
    evl = E.read_events(p)
    assert evl.camera == "mos1" and len(evl) == 400
    assert all(a.dtype.isnative for a in evl.columns.values())
    assert sorted(evl.gti_ccd) == [1, 2]
    assert G.exposure(evl.gti) == pytest.approx(1000.0)
    assert evl.deadtime_factor(1) == pytest.approx(0.97)


def test_gzip_and_columns(tmp_path):
    p = make_event_file(tmp_path / "pn.fits", instrume="EPN")
    gz = tmp_path / "pn.fits.gz"
    with open(p, "rb") as fi, gzip.open(gz, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    a, b = E.read_events(p), E.read_events(gz, columns=["PI"])
    assert b.camera == "pn" and np.array_equal(a["PI"], b["PI"])
    assert set(b.columns) == set(E.REQUIRED_COLUMNS)


@pytest.mark.parametrize(
    "kind, match",
    [
        ("nocol", "lacks required column"),
        ("instrume", "not an EPIC camera"),
        ("empty", "no events"),
        ("nogti", "no GTI extension"),
        ("truncated", "truncated|cannot read"),
        ("noevents", "no EVENTS"),
        ("camera", "expected a pn event list"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, kind, match):
    p = tmp_path / f"{kind}.fits"
    if kind == "nocol":
        make_event_file(p, drop=("PATTERN",))
    elif kind == "instrume":
        make_event_file(p, instrume="ACIS")
    elif kind == "empty":
        make_event_file(p, times=np.array([]))
    elif kind == "nogti":
        make_event_file(p, gti=False)
    elif kind == "truncated":
        full = make_event_file(tmp_path / "full.fits", n=5000)
        p.write_bytes(full.read_bytes()[: 2880 * 8])
    elif kind == "noevents":
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.BinTableHDU.from_columns([fits.Column(name="A", format="D", array=[1.0])], name="OTHER"),
            ]
        ).writeto(p)
    else:
        make_event_file(p)
    with pytest.raises(InputDataError, match=match) as info:
        E.read_events(p, camera="pn" if kind == "camera" else None)
    assert str(p) in str(info.value)


def test_unordered_time_sorted_or_rejected(tmp_path):
    t = T0 + np.array([0.0, 5.0, 3.0, 9.0])
    p = make_event_file(tmp_path / "u.fits", times=t)
    evl = E.read_events(p)
    assert evl.resorted and np.all(np.diff(evl["TIME"]) >= 0)
    with pytest.raises(InputDataError, match="not monotonic"):
        E.read_events(p, time_order="require")


def test_screen_and_flag_masks(tmp_path):
    p = make_event_file(tmp_path / "m.fits", n=2000, extra_header={"XMMEA_EM": "(FLAG & 0x766ba000) == 0"})
    evl = E.read_events(p)
    mask = E.flag_mask_for("mos1", "xmmea", evl.header)
    assert mask == 0x766BA000
    assert E.flag_mask_for("pn", "xmmea") == E.XMMEA_DEFAULT["pn"]
    s = E.screen(evl, pattern_max=12, flag_mask=mask, pi_min=200, pi_max=12000, ccds=[1])
    expect = (
        (evl["PATTERN"] <= 12)
        & ((evl["FLAG"] & 0x766BA000) == 0)
        & (evl["PI"] >= 200)
        & (evl["PI"] <= 12000)
        & (evl["CCDNR"] == 1)
    )
    assert len(s) == int(expect.sum()) > 0
    assert s.ccds == [1]
    zero = E.screen(evl, flag_mask=E.flag_mask_for("mos1", "zero"))
    assert len(zero) == int((evl["FLAG"] == 0).sum())


def test_write_roundtrip_with_gti(tmp_path):
    evl = E.read_events(make_event_file(tmp_path / "m.fits", n=1000))
    cut = np.array([[T0, T0 + 300.0], [T0 + 500.0, T0 + 800.0]])
    out = E.write_events(evl, tmp_path / "clean.fits", gti=cut)
    back = E.read_events(out)
    assert len(back) == int(G.mask_in_gti(evl["TIME"], cut).sum())
    assert G.exposure(back.gti_ccd[1]) == pytest.approx(600.0)
    assert back.header["ONTIME01"] == pytest.approx(600.0)
    assert back.deadtime_factor(1) == pytest.approx(0.97)


def test_stream_filter_bin_matches_in_memory(tmp_path):
    p = make_event_file(tmp_path / "pn.fits", n=5000, instrume="EPN")
    evl = E.read_events(p)
    g = np.array([[T0 + 100, T0 + 700]])
    hist, n_in, n_out = E.stream_filter_bin(
        E.iter_event_chunks(p, chunk_rows=777),
        gti=g,
        pattern_max=4,
        flag_mask=0xFA000C,
        pi_min=200,
        pi_max=15000,
    )
    keep = E.screen_mask(evl.columns, pattern_max=4, flag_mask=0xFA000C, pi_min=200, pi_max=15000)
    keep &= G.mask_in_gti(evl["TIME"], g)
    ref = np.bincount(evl["PI"][keep] // 5, minlength=4096)[:4096]
    assert n_in == 5000 and n_out == int(keep.sum())
    assert np.array_equal(hist, ref)


def test_zero_exposure_gti_is_input_error(tmp_path):
    p = make_event_file(tmp_path / "z.fits", span_s=0.0)
    with pytest.raises(InputDataError, match="0 s of exposure"):
        E.read_events(p)


def test_prefilter_streaming_read_matches_full_read(tmp_path):
    p = make_event_file(tmp_path / "big.fits", n=10000)
    full = E.read_events(p)

    def sel(c):
        return (c["PATTERN"] <= 4) & (c["PI"] >= 2000)

    part = E.read_events(p, prefilter=sel, chunk_rows=999)
    keep = sel(full.columns)
    assert part.n_rows_file == 10000 and len(part) == int(keep.sum())
    for k in full.columns:
        assert np.array_equal(part[k], full[k][keep])
    with pytest.raises(InputDataError, match="pre-selection"):
        E.read_events(p, prefilter=lambda c: np.zeros(c["PI"].size, bool))


def test_clean_event_cache_keeps_the_lists_of_the_two_latest_folders_only(tmp_path: Path) -> None:
    """read_clean_events shares a list between the steps of one ObsID; the lists of ObsIDs a worker has moved on
    from are dropped (not kept until the byte bound), so worker memory stays flat over a survey."""
    from astropy.io import fits as _fits

    from xmmcore import events as ev

    rng = np.random.default_rng(3)
    n = 2000
    cols = {
        "TIME": np.sort(rng.uniform(0.0, 1000.0, n)),
        "X": rng.integers(20000, 30000, n).astype(np.int32),
        "Y": rng.integers(20000, 30000, n).astype(np.int32),
        "PI": rng.integers(200, 12000, n).astype(np.int16),
        "PATTERN": np.zeros(n, np.uint8),
        "FLAG": np.zeros(n, np.int32),
        "CCDNR": np.full(n, 4, np.uint8),
    }
    header = _fits.Header({"INSTRUME": "EPN", "TELESCOP": "XMM"})
    evl = ev.EventList("pn", header, cols, {4: np.array([[0.0, 1000.0]])}, np.array([[0.0, 1000.0]]))
    paths = [ev.write_events(evl, tmp_path / f"090000000{i}" / "events" / "pn_clean.fits") for i in range(3)]
    ev._clean_cache.clear()
    first = ev.read_clean_events(paths[0], camera="pn")
    assert ev.read_clean_events(paths[0])["TIME"] is first["TIME"]  # shared within an ObsID
    ev.read_clean_events(paths[1])
    ev.read_clean_events(paths[2])
    folders = {Path(k[0]).parent.parent.name for k in ev._clean_cache}
    assert folders == {"0900000001", "0900000002"}
    assert len(first) == n and not first["TIME"].flags.writeable
    ev._clean_cache.clear()


def _assert_same_list(a: E.EventList, b: E.EventList) -> None:
    assert (a.camera, a.path, a.resorted, a.n_rows_file) == (b.camera, b.path, b.resorted, b.n_rows_file)
    assert list(a.columns) == list(b.columns)
    for k in a.columns:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert list(a.gti_ccd) == list(b.gti_ccd)
    for c in a.gti_ccd:
        assert np.array_equal(a.gti_ccd[c], b.gti_ccd[c]), c
    assert np.array_equal(a.gti, b.gti)
    assert [(c.keyword, c.value, c.comment) for c in a.header.cards] == [
        (c.keyword, c.value, c.comment) for c in b.header.cards
    ]


def test_write_events_remember_keeps_the_list_as_read_back(tmp_path: Path) -> None:
    """The filter step's cleaned lists go into read_clean_events' cache as written: what the regions and
    spectra steps get from the cache equals reading the file (columns, dtypes, GTIs, header cards)."""
    from xmmcore import events as ev

    raw = E.read_events(make_event_file(tmp_path / "pn.fits", instrume="EPN", n=3000, ccds=(4, 7, 1)))
    clean = raw.with_gti(np.array([[G.as_gti(raw.gti)[0, 0] + 100.0, G.as_gti(raw.gti)[0, 0] + 700.0]]))
    clean.header["QPBCORN"] = (123.0, "corner counts")
    ev._clean_cache.clear()
    out = E.write_events(
        clean, tmp_path / "0900000001" / "events" / "pn_clean.fits", history=["x"], remember=True
    )
    assert len(ev._clean_cache) == 1
    kept = E.read_clean_events(out, camera="pn")
    ev._clean_cache.clear()
    _assert_same_list(kept, E.read_events(out))
    assert not kept["TIME"].flags.writeable
    # a column whose dtype the file changes (float X written as J) is not kept: the reader reads the file
    floaty = E.EventList(
        clean.camera,
        clean.header,
        {**clean.columns, "X": clean["X"].astype(np.float64)},
        clean.gti_ccd,
        clean.gti,
    )
    E.write_events(floaty, tmp_path / "0900000002" / "events" / "pn_clean.fits", remember=True)
    assert len(ev._clean_cache) == 0


@pytest.mark.parametrize("shuffled", [False, True])
def test_unscreened_list_kept_by_the_filter_read_equals_reading_it(tmp_path: Path, shuffled: bool) -> None:
    """The spectra step's unscreened list (out-of-FOV background) comes from the filter step's read when the
    file is unchanged: equal to read_events(columns=REQUIRED_COLUMNS), also for a list not ordered in TIME."""
    from xmmcore import events as ev

    times = np.sort(np.random.default_rng(5).uniform(T0, T0 + 1000.0, 2000))
    if shuffled:
        times = times[np.random.default_rng(6).permutation(times.size)]
    for obsid in ("0900000001", "0900000002"):
        (tmp_path / obsid).mkdir()
    p = make_event_file(tmp_path / "0900000001" / "pn.fits", instrume="EPN", times=times, ccds=(4, 5))
    ev._unscreened_cache.clear()
    part = E.read_events(p, prefilter=lambda c: c["PATTERN"] <= 4, keep_unscreened=True)
    assert len(part) < 2000 and len(ev._unscreened_cache) == 1
    kept = E.read_unscreened_events(p, camera="pn")
    _assert_same_list(kept, E.read_events(p, camera="pn", columns=E.REQUIRED_COLUMNS))
    assert kept.resorted is shuffled and not kept["X"].flags.writeable
    with pytest.raises(InputDataError, match="expected a mos1"):
        E.read_unscreened_events(p, camera="mos1")
    # another ObsID's list replaces it (a worker holds its current ObsID's lists only); a changed file is read
    q = make_event_file(tmp_path / "0900000002" / "pn.fits", instrume="EPN")
    E.read_events(q, prefilter=lambda c: c["PATTERN"] <= 4, keep_unscreened=True)
    assert [Path(k[0]).parent.name for k in ev._unscreened_cache] == ["0900000002"]
    make_event_file(q, instrume="EPN", n=50, seed=9)
    assert len(E.read_unscreened_events(q)) == 50
    ev._unscreened_cache.clear()
