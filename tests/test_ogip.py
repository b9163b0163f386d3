"""OGIP PHA/RMF/ARF readers and writers: round trips, real XMM files, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from astropy.io import fits

from xmmcore import ogip
from xmmcore.errors import InputDataError


def _small_rmf(offset: int = 1) -> ogip.RMF:
    edges = np.linspace(0.1, 10.0, 41)
    n_chan = 20
    rows, cols, vals = [], [], []
    for i in range(40):
        c = min(i // 2, n_chan - 1)
        for j, w in ((c - 1, 0.2), (c, 0.6), (c + 1, 0.2)):
            if 0 <= j < n_chan:
                rows.append(i)
                cols.append(j)
                vals.append(w)
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(40, n_chan))
    ch_edges = np.linspace(0.1, 10.0, n_chan + 1)
    return ogip.RMF(
        energ_lo=edges[:-1],
        energ_hi=edges[1:],
        matrix=mat,
        e_min=ch_edges[:-1],
        e_max=ch_edges[1:],
        channel_offset=offset,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN"},
    )


@pytest.mark.parametrize("offset", [0, 1])
def test_rmf_round_trip(tmp_path: Path, offset: int) -> None:
    rmf = _small_rmf(offset)
    path = ogip.write_rmf(rmf, tmp_path / "x.rmf")
    back = ogip.read_rmf(path)
    assert back.channel_offset == offset
    assert abs(back.matrix - rmf.matrix).max() < 1e-7
    np.testing.assert_allclose(back.e_min, rmf.e_min, rtol=1e-6)
    with fits.open(path) as hdul:
        m = hdul["MATRIX"].header
        assert m["HDUCLASS"] == "OGIP" and m["HDUCLAS1"] == "RESPONSE" and m["DETCHANS"] == 20
        assert m["TLMIN4"] == offset
        assert hdul["MATRIX"].columns["F_CHAN"].format.startswith("P")  # variable length
        assert hdul["EBOUNDS"].header["TLMIN1"] == offset


def test_pha_arf_round_trip(tmp_path: Path) -> None:
    counts = np.arange(20, dtype=float)
    grouping = np.where(np.arange(20) % 4 == 0, 1, -1)
    pha = ogip.PHA(
        channel=np.arange(20),
        counts=counts,
        exposure=1234.5,
        backscal=2.5e6,
        grouping=grouping,
        quality=np.zeros(20, int),
        respfile="x.rmf",
        ancrfile="x.arf",
        backfile=None,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN", "OBS_ID": "0123456789"},
    )
    path = ogip.write_pha(pha, tmp_path / "x.pha")
    with fits.open(path) as hdul:
        h = hdul["SPECTRUM"].header
        assert (h["HDUCLASS"], h["HDUCLAS1"], h["HDUVERS"], h["CHANTYPE"]) == (
            "OGIP",
            "SPECTRUM",
            "1.2.1",
            "PI",
        )
        assert h["DETCHANS"] == 20 and h["TLMIN1"] == 0 and h["TLMAX1"] == 19 and h["POISSERR"] is True
        assert hdul["SPECTRUM"].columns["COUNTS"].format == "J"
        assert h["BACKFILE"] == "none"
    back = ogip.read_pha(path)
    np.testing.assert_array_equal(back.counts, counts)
    np.testing.assert_array_equal(back.grouping, grouping)
    assert back.exposure == pytest.approx(1234.5) and back.backscal == pytest.approx(2.5e6)
    assert back.backfile is None and back.header["OBS_ID"] == "0123456789"
    assert back.resolve("respfile") == tmp_path / "x.rmf"
    arf = ogip.ARF(
        energ_lo=np.linspace(0.1, 9.9, 40),
        energ_hi=np.linspace(0.35, 10.0, 40),
        specresp=np.linspace(10, 500, 40),
    )
    back_arf = ogip.read_arf(ogip.write_arf(arf, tmp_path / "x.arf"))
    np.testing.assert_allclose(back_arf.specresp, arf.specresp, rtol=1e-6)


def test_rate_and_type2(tmp_path: Path) -> None:
    rate = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    cols = [
        fits.Column(name="SPEC_NUM", format="J", array=[1, 2]),
        fits.Column(name="CHANNEL", format="3J", array=np.tile(np.arange(1, 4), (2, 1))),
        fits.Column(name="RATE", format="3D", array=rate),
        fits.Column(name="EXPOSURE", format="D", array=[10.0, 100.0]),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    hdu.header["HDUCLAS4"] = "TYPE:II"
    path = tmp_path / "t2.pha"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    row = ogip.read_pha(path, row=1)
    np.testing.assert_allclose(row.counts, [100.0, 200.0, 300.0])
    assert row.exposure == 100.0
    with pytest.raises(InputDataError, match="type II"):
        ogip.read_pha(path)


def test_errors_name_file_and_keyword(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="does not exist"):
        ogip.read_pha(tmp_path / "missing.pha")
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="CHANNEL", format="J", array=[1, 2]),
            fits.Column(name="COUNTS", format="J", array=[1, 2]),
        ],
        name="SPECTRUM",
    )
    path = tmp_path / "noexp.pha"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with pytest.raises(InputDataError, match=r"noexp\.pha.*EXPOSURE"):
        ogip.read_pha(path)
    (tmp_path / "junk.rmf").write_text("not fits")
    with pytest.raises(InputDataError, match="junk.rmf"):
        ogip.read_rmf(tmp_path / "junk.rmf")


@pytest.mark.realdata
def test_real_files(xmm_data: Path) -> None:
    rmf = ogip.read_rmf(xmm_data / "sherpa_pn" / "epn_ff20_dY9.rmf")  # SPECRESP MATRIX, no TLMIN: offset 0
    assert rmf.matrix.shape == (1319, 4096) and rmf.channel_offset == 0
    fixed = ogip.read_rmf(xmm_data / "a2443_fakeit" / "pnS004-A2443_reg2.rmf")  # fixed-length F_CHAN (9I)
    assert fixed.matrix.shape == (2067, 4039)
    # redistribution rows sum to ~1 where the response is complete
    assert np.median(np.asarray(fixed.matrix.sum(axis=1)).ravel()[500:1500]) == pytest.approx(1.0, abs=0.02)
    pha = ogip.read_pha(xmm_data / "sherpa_pn" / "pn_pi_src_bin10.ds")
    assert pha.counts.sum() == 4784 and (pha.grouping == 1).sum() == 410
    assert int((pha.quality != 0).sum()) == 6 and pha.exposure == pytest.approx(11754.644, rel=1e-6)
    bkg = ogip.read_pha(xmm_data / "psrj0855" / "pn" / "xmm_pn_0605960101_bkg.pha")
    assert bkg.counts.sum() == pytest.approx(333378.75, rel=1e-6)


def test_rmf_cache_by_content(tmp_path: Path) -> None:
    """Identical files (canned responses in every ObsID) are parsed once; an edited file is parsed again."""
    import shutil

    a = ogip.write_rmf(_small_rmf(1), tmp_path / "a.rmf")
    b = tmp_path / "other" / "b.rmf"
    b.parent.mkdir()
    shutil.copy(a, b)
    ra, rb = ogip.read_rmf(a), ogip.read_rmf(b)
    assert rb.matrix is ra.matrix  # shared parse
    assert (ra.path, rb.path) == (a, b)  # each keeps its own file name
    with pytest.raises(ValueError, match="read-only"):
        ra.matrix.data[0] = 5.0  # a shared matrix cannot be changed by one caller
    edited = _small_rmf(1)
    edited.matrix = edited.matrix * 0.5
    ogip.write_rmf(edited, b)
    rc = ogip.read_rmf(b)
    assert rc.matrix is not ra.matrix
    assert rc.matrix.sum() == pytest.approx(0.5 * ra.matrix.sum())
    fifo = tmp_path / "pipe.rmf"
    import os

    os.mkfifo(fifo)
    with pytest.raises(InputDataError, match="not a regular file"):
        ogip.read_rmf(fifo)  # never blocks on a FIFO


def _without_checksum_times(raw: bytes) -> bytes:
    """The file bytes without CHECKSUM values and their comments (astropy writes the time into them)."""
    import re

    return re.sub(rb"(CHECKSUM= '[^']*'|updated \S+)", b"", raw)


def test_unverified_write_is_byte_identical(tmp_path: Path) -> None:
    """write_pha/write_events skip astropy's output verification: the same bytes as with it."""
    from xmmcore.fsutil import atomic_write_fits
    from xmmcore.sas_dss import dss_header_and_tables

    pha = ogip.PHA(
        channel=np.arange(4096),
        counts=np.arange(4096) % 7,
        exposure=1234.5,
        backscal=2.5e6,
        header={"OBS_ID": "0900500101", "DSVAL9": "x", "LIVETIME": 1200.0},
    )
    keys, tables = dss_header_and_tables(
        ccd_gtis={1: np.array([[0.0, 10.0]]), 4: np.array([[1.0, 5.0], [6.0, 9.0]])},
        flag_mask=0xFB0825,
        pattern_max=4,
        pi_range=(200.0, 15000.0),
        rows=[("CIRCLE", 100.0, 200.0, 50.0), ("!CIRCLE", 110.0, 210.0, 5.0)],
    )
    pha.header.update(keys)
    fast = ogip.write_pha(pha, tmp_path / "fast.pha", extra_hdus=tables, verify_extra=False)
    with fits.open(fast) as hdul:
        assert len(hdul) == 5 and all(h.verify_checksum() == 1 for h in hdul)
        again = fits.HDUList([h.copy() for h in hdul])
    # the same HDUs written with the verification pass
    slow = atomic_write_fits(again, tmp_path / "slow.pha", verify=True)
    assert _without_checksum_times(fast.read_bytes()) == _without_checksum_times(slow.read_bytes())
    assert ogip.read_pha(fast).counts.sum() == pha.counts.sum()


def _same_pha(a: ogip.PHA, b: ogip.PHA) -> None:
    for name in ("channel", "counts", "grouping", "quality", "stat_err", "backscal", "areascal"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), name
    for name in ("exposure", "poisserr", "respfile", "ancrfile", "backfile", "path"):
        assert getattr(a, name) == getattr(b, name), name
    assert list(a.header.items()) == list(b.header.items())


@pytest.mark.parametrize("integer", [True, False])
def test_written_spectrum_read_back_from_memory_equals_the_file(tmp_path: Path, integer: bool) -> None:
    """The fit step reads the spectra the spectra step has just written from memory: the same PHA (arrays,
    dtypes, keywords in order) as parsing the file; a changed file, or one of another folder, is read again."""
    rng = np.random.default_rng(2)
    counts = rng.poisson(5.0, 800).astype(float) + (0.0 if integer else 0.25)
    pha = ogip.PHA(
        channel=np.arange(800),
        counts=counts,
        exposure=12345.678901234,
        backscal=4071504.0716394805,
        grouping=np.where(np.arange(800) % 3 == 0, 1, -1),
        quality=np.zeros(800, int),
        stat_err=None if integer else np.sqrt(counts),
        poisserr=integer,
        respfile="pn.rmf",
        backfile="pn_bkg.pha",
        header={
            "INSTRUME": "EPN",
            "OBS_ID": "0900000001",
            "ONTIME": 23456.12345678901,
            "REGFILE": "pn_src.reg",
        },
    )
    ogip._written_phas.clear()
    path = ogip.write_pha(pha, tmp_path / "a" / "pn_src.pha")
    assert len(ogip._written_phas) == 1
    ogip.read_pha(path).counts[:] = -1.0  # each caller gets its own copy: the kept spectrum is unchanged
    kept = ogip.read_pha(path)
    ogip._written_phas.clear()
    _same_pha(kept, ogip.read_pha(path))
    ogip.write_pha(pha, tmp_path / "b" / "pn_src.pha")
    assert [Path(k[0]).parent.name for k in ogip._written_phas] == ["b"]
    with fits.open(path, mode="update") as h:
        h["SPECTRUM"].header["EXPOSURE"] = 1.0
    assert ogip.read_pha(path).exposure == 1.0
    ogip._written_phas.clear()
