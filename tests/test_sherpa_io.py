"""Sherpa reads the OGIP files that :mod:`xmmcore.ogip` writes, and fits them as the built-in engine does.

A small synthetic spectrum (power law through a Gaussian RMF with an escape-peak second group, so
N_GRP varies, and a smooth ARF; Poisson counts and a background with its own BACKSCAL, GROUPING and a bad
QUALITY channel) is written with ``write_pha`` / ``write_rmf`` / ``write_arf`` and loaded with
``sherpa.astro.ui.load_pha`` (which follows RESPFILE, ANCRFILE and BACKFILE). Sherpa must not warn, and
every value it reads must equal what was written. Install Sherpa with ``.ci/install-sherpa.sh``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xmmcore.ogip import ARF, PHA, RMF, write_arf, write_pha, write_rmf

pytestmark = pytest.mark.sherpa

EXPOSURE_S = 30_000.0
GAMMA, NORM = 1.8, 5e-3  # power law, photons cm^-2 s^-1 keV^-1 at 1 keV
BKG_RATE = 2e-3  # background counts s^-1 per channel (in the background region)
SRC_BACKSCAL, BKG_BACKSCAL = 1.2e6, 6.0e6


@pytest.fixture()
def ui() -> Any:
    """A clean Sherpa session whose log records are captured by the test."""
    ui = pytest.importorskip("sherpa.astro.ui", reason="sherpa not installed (.ci/install-sherpa.sh)")
    ui.clean()
    yield ui
    ui.clean()


def _rmf(channel_offset: int) -> RMF:
    """Gaussian redistribution (FWHM ~ 2.35 * 0.04 sqrt(E) keV) plus a 3% escape peak 1.74 keV lower."""
    import scipy.sparse as sp

    e_edges = np.round(np.arange(0.2, 10.0 + 1e-9, 0.025), 6)
    energ_lo, energ_hi = e_edges[:-1], e_edges[1:]
    c_edges = np.round(np.arange(0.0, 10.0 + 1e-9, 0.05), 6)
    e_min, e_max = c_edges[:-1], c_edges[1:]
    mid = 0.5 * (energ_lo + energ_hi)
    rows = []
    for e in mid:
        sigma = 0.04 * np.sqrt(e)
        cdf = 0.5 * (1 + _erf((c_edges - e) / (sigma * np.sqrt(2))))
        row = np.diff(cdf)
        if e > 2.5:
            esc = np.diff(0.5 * (1 + _erf((c_edges - (e - 1.74)) / (sigma * np.sqrt(2)))))
            row = 0.97 * row + 0.03 * esc
        row[row < 1e-6] = 0.0
        rows.append(0.9 * row)
    matrix = sp.csr_matrix(np.array(rows))
    return RMF(
        energ_lo=energ_lo,
        energ_hi=energ_hi,
        matrix=matrix,
        e_min=e_min,
        e_max=e_max,
        channel_offset=channel_offset,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN"},
    )


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _arf(rmf: RMF) -> ARF:
    mid = 0.5 * (rmf.energ_lo + rmf.energ_hi)
    area = 900.0 * np.exp(-0.5 * ((np.log(mid) - np.log(1.5)) / 0.9) ** 2)  # cm^2, peak 900 at 1.5 keV
    return ARF(
        energ_lo=rmf.energ_lo,
        energ_hi=rmf.energ_hi,
        specresp=area,
        header={"TELESCOP": "XMM", "INSTRUME": "EPN"},
    )


def write_synthetic(folder: Path, *, channel_offset: int = 1, seed: int = 5) -> dict[str, Any]:
    """Write src.pha, bkg.pha, resp.rmf and resp.arf in ``folder``; return the objects written."""
    rng = np.random.default_rng(seed)
    rmf = _rmf(channel_offset)
    arf = _arf(rmf)
    photons = NORM * (rmf.energ_hi ** (1 - GAMMA) - rmf.energ_lo ** (1 - GAMMA)) / (1 - GAMMA)
    source_mu = EXPOSURE_S * (rmf.matrix.T @ (photons * arf.specresp))
    n_chan = rmf.n_chan
    channel = np.arange(channel_offset, channel_offset + n_chan)
    bkg_counts = rng.poisson(np.full(n_chan, BKG_RATE * EXPOSURE_S)).astype(float)
    counts = rng.poisson(source_mu + BKG_RATE * EXPOSURE_S * SRC_BACKSCAL / BKG_BACKSCAL).astype(float)
    grouping = np.ones(n_chan, dtype=int)
    grouping[60::2] = -1  # pairs of channels above 3 keV
    quality = np.zeros(n_chan, dtype=int)
    quality[:4] = 5  # the lowest channels are bad, as SAS flags them
    header = {"TELESCOP": "XMM", "INSTRUME": "EPN", "OBS_ID": "0000000000", "OBJECT": "synthetic"}
    src = PHA(
        channel=channel,
        counts=counts,
        exposure=EXPOSURE_S,
        backscal=SRC_BACKSCAL,
        grouping=grouping,
        quality=quality,
        respfile="resp.rmf",
        ancrfile="resp.arf",
        backfile="bkg.pha",
        header=dict(header),
    )
    bkg = PHA(
        channel=channel,
        counts=bkg_counts,
        exposure=EXPOSURE_S,
        backscal=BKG_BACKSCAL,
        header={**header, "HDUCLAS2": "BKG"},
    )
    write_rmf(rmf, folder / "resp.rmf")
    write_arf(arf, folder / "resp.arf")
    write_pha(bkg, folder / "bkg.pha")
    write_pha(src, folder / "src.pha")
    return {"src": src, "bkg": bkg, "rmf": rmf, "arf": arf, "pha_path": folder / "src.pha"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _load_quietly(ui: Any, pha_path: Path) -> list[str]:
    """``ui.load_pha`` with Python warnings and Sherpa log records of level WARNING and up collected."""
    handler = _Records()
    logger = logging.getLogger("sherpa")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ui.load_pha(str(pha_path))
    finally:
        logger.removeHandler(handler)
    return [str(w.message) for w in caught] + [r.getMessage() for r in handler.records]


@pytest.mark.parametrize("channel_offset", [0, 1])
def test_sherpa_reads_our_files(ui: Any, tmp_path: Path, channel_offset: int) -> None:
    written = write_synthetic(tmp_path, channel_offset=channel_offset)
    problems = _load_quietly(ui, written["pha_path"])
    assert problems == [], problems

    src, bkg, rmf, arf = written["src"], written["bkg"], written["rmf"], written["arf"]
    data = ui.get_data()
    np.testing.assert_array_equal(data.channel, src.channel)
    np.testing.assert_array_equal(data.counts, src.counts)
    assert data.exposure == src.exposure
    assert data.backscal == src.backscal
    assert data.areascal == 1.0
    np.testing.assert_array_equal(data.grouping, src.grouping)
    np.testing.assert_array_equal(data.quality, src.quality)
    assert data.grouped  # Sherpa groups on load when GROUPING is present

    # the background, found through BACKFILE relative to the PHA's folder
    assert data.background_ids == [1]
    b = ui.get_bkg()
    np.testing.assert_array_equal(b.counts, bkg.counts)
    assert b.exposure == bkg.exposure and b.backscal == bkg.backscal

    # the ARF, found through ANCRFILE (float32 on disk, as XSPEC reads it)
    a = ui.get_arf()
    np.testing.assert_array_equal(a.energ_lo, arf.energ_lo.astype(np.float32))
    np.testing.assert_array_equal(a.specresp, arf.specresp.astype(np.float32))

    # the RMF, found through RESPFILE: same grid, same offset, and the same matrix applied to any spectrum
    r = ui.get_rmf()
    assert r.offset == channel_offset
    assert r.detchans == rmf.n_chan
    np.testing.assert_array_equal(r.energ_lo, rmf.energ_lo.astype(np.float32))
    np.testing.assert_array_equal(r.e_min, rmf.e_min.astype(np.float32))
    assert int(np.max(r.n_grp)) == 2 and int(np.min(r.n_grp)) == 1  # variable N_GRP survived
    probe = np.random.default_rng(1).uniform(0.5, 2.0, rmf.energ_lo.size)
    ours = rmf.matrix.astype(np.float32).astype(float).T @ probe
    np.testing.assert_allclose(r.apply_rmf(probe), ours, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("stat", ["cstat", "wstat"])
def test_sherpa_fits_our_files_like_builtin(ui: Any, tmp_path: Path, stat: str) -> None:
    """Same files, same model (powerlaw), same statistic, same 0.5-7 keV band: same best fit."""
    from xmmcore.fitting import SpectrumDataset, fit

    written = write_synthetic(tmp_path)
    assert _load_quietly(ui, written["pha_path"]) == []
    # The bad-QUALITY channels lie below 0.5 keV, so no ui.ignore_bad() is needed (in Sherpa 4.19 it resets
    # the filter, and a notice() after it logs "1D filter has failed" when the data are grouped).
    ui.notice(0.5, 7.0)
    ui.set_stat(stat)
    ui.set_source(ui.powlaw1d.p1)
    logger = logging.getLogger("sherpa")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        ui.fit()
    finally:
        logger.setLevel(old)
    theirs = ui.get_fit_results()
    sigma = np.sqrt(np.diag(theirs.covar))

    ds = SpectrumDataset.from_pha(written["pha_path"], use_background=(stat == "wstat")).notice(0.5, 7.0)
    assert ds.n_noticed == theirs.numpoints
    ours = fit([ds], "powerlaw", stat=stat, errors="covariance", flux_bands=())
    assert ours.converged
    assert ours.dof == theirs.dof
    assert ours.statistic == pytest.approx(theirs.statval, rel=1e-4, abs=1e-3)
    for name, value, err in zip(("PhoIndex", "norm"), theirs.parvals, sigma):
        par = ours.parameter(name)
        assert abs(par["value"] - value) < 0.02 * err, (name, par["value"], value)
        assert par["sigma"] == pytest.approx(err, rel=0.05), (name, par["sigma"], err)
    if (
        stat == "wstat"
    ):  # with the background accounted for, both recover the index the counts were drawn from
        assert abs(ours.parameter("PhoIndex")["value"] - GAMMA) < 3 * sigma[0]
