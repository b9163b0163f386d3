"""xmmcore.stack on small files built in code: stacked spectra (sums and exposure weights), mosaics and their
FITS round trip, the data-folder inventory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from helpers.cluster_events import event_hdus, write_hdus

from xmmcore import stack
from xmmcore.errors import InputDataError
from xmmcore.ogip import ARF, PHA, RMF, read_pha, write_arf, write_pha, write_rmf

N_CHAN, N_E = 8, 10


def _spectrum(
    d: Path, *, counts, exposure: float, area: float, backscal: float, diag: float
) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    e = np.linspace(0.5, 5.5, N_E + 1)
    m = np.zeros((N_E, N_CHAN))
    for i in range(N_E):
        m[i, min(i, N_CHAN - 1)] = diag
        m[i, min(i + 1, N_CHAN - 1)] += 1 - diag
    ch_e = np.linspace(0.5, 5.5, N_CHAN + 1)
    write_rmf(RMF(e[:-1], e[1:], sp.csr_matrix(m), ch_e[:-1], ch_e[1:], channel_offset=0), d / "mos1.rmf")
    write_arf(ARF(e[:-1], e[1:], np.full(N_E, area)), d / "mos1.arf")
    hdr = {"TELESCOP": "XMM", "INSTRUME": "EMOS1", "OBS_ID": d.name, "FILTER": "Medium"}
    chan = np.arange(N_CHAN)
    write_pha(
        PHA(chan, np.asarray(counts, float), exposure=exposure, backscal=backscal, header=hdr),
        d / "mos1_src.pha",
    )
    write_pha(
        PHA(chan, np.ones(N_CHAN), exposure=exposure, backscal=4 * backscal, header=hdr), d / "mos1_bkg.pha"
    )
    return {
        k: d / f"mos1{s}"
        for k, s in (("pha", "_src.pha"), ("bkg", "_bkg.pha"), ("rmf", ".rmf"), ("arf", ".arf"))
    }


def test_stack_spectra_sums_counts_and_weights_responses(tmp_path: Path) -> None:
    a = _spectrum(
        tmp_path / "A", counts=np.arange(N_CHAN), exposure=1000.0, area=100.0, backscal=2.0, diag=1.0
    )
    b = _spectrum(
        tmp_path / "B", counts=np.full(N_CHAN, 3), exposure=3000.0, area=200.0, backscal=6.0, diag=0.6
    )
    st = stack.stack_spectra(
        [a["pha"], b["pha"]], rmfs=[a["rmf"], b["rmf"]], arfs=[a["arf"], b["arf"]], bkgs=[a["bkg"], b["bkg"]]
    )
    assert list(st["weights"]) == [0.25, 0.75]
    assert list(st["pha"].counts) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert st["pha"].exposure == 4000.0 and st["pha"].backscal == pytest.approx(0.25 * 2 + 0.75 * 6)
    assert np.allclose(st["arf"].specresp, 0.25 * 100 + 0.75 * 200)
    # the diagonal of the first energy bin: 0.25 * 1.0 + 0.75 * 0.6
    assert st["rmf"].matrix.toarray()[0, 0] == pytest.approx(0.7)
    assert np.allclose(st["rmf"].matrix.toarray().sum(axis=1), 1.0)  # still a probability per energy
    assert st["bkg"].exposure == 4000.0 and st["bkg"].counts.sum() == 2 * N_CHAN
    assert st["pha"].header["NSTACKED"] == 2 and st["pha"].header["OBS_ID"] == "A,B"
    paths = stack.write_stack(st, tmp_path / "out", stem="mos1")
    back = read_pha(paths["pha"])
    assert back.counts.sum() == 52 and back.respfile == "mos1.rmf" and back.backfile == "mos1_bkg.pha"


def test_stack_spectra_refuses_mismatched_inputs(tmp_path: Path) -> None:
    a = _spectrum(tmp_path / "A", counts=np.ones(N_CHAN), exposure=1000.0, area=1.0, backscal=1.0, diag=1.0)
    short = tmp_path / "short.pha"
    write_pha(PHA(np.arange(4), np.ones(4), exposure=10.0), short)
    with pytest.raises(InputDataError, match="different channel counts"):
        stack.stack_spectra([a["pha"], short], rmfs=[a["rmf"]] * 2, arfs=[a["arf"]] * 2)
    zero = tmp_path / "zero.pha"
    write_pha(PHA(np.arange(N_CHAN), np.ones(N_CHAN), exposure=0.0), zero)
    with pytest.raises(InputDataError, match="EXPOSURE <= 0"):
        stack.stack_spectra([a["pha"], zero], rmfs=[a["rmf"]] * 2, arfs=[a["arf"]] * 2)
    with pytest.raises(InputDataError, match="one RMF and one ARF"):
        stack.stack_spectra([a["pha"]], rmfs=[], arfs=[a["arf"]])


def test_mosaic_of_two_event_lists_and_fits_round_trip(tmp_path: Path) -> None:
    ev1 = write_hdus(event_hdus(3000, exposure_s=10_000.0, seed=1), tmp_path / "a" / "pn_evts.fits")
    ev2 = write_hdus(event_hdus(2000, exposure_s=5_000.0, seed=2), tmp_path / "b" / "pn_evts.fits")
    m = stack.mosaic([ev1, ev2], band_kev=(0.5, 2.0), size_arcmin=30.0, pixel_arcsec=20.0)
    assert m.counts.shape == (90, 90)
    # every 0.5-2 keV event lands on the 30' grid (the lists extend to 14' from the centre)
    expected = 0
    for ev in (ev1, ev2):
        ra, _, _, _ = stack.events_radec(ev, band_kev=(0.5, 2.0))
        expected += ra.size
    assert m.counts.sum() == expected == sum(i["events_in_band"] for i in m.inputs)
    # flat exposure: both footprints cover the centre, so it sees 10 ks + 5 ks of LIVETIME
    assert m.exposure[45, 45] == pytest.approx(15_000.0)
    assert m.exposure[0, 0] == 0.0 and m.rate[0, 0] == 0.0
    path = stack.write_mosaic(m, tmp_path / "mosaic.fits")
    back = stack.read_mosaic(path)
    assert back.band_kev == (0.5, 2.0) and len(back.inputs) == 2
    assert np.allclose(back.counts, m.counts) and np.allclose(back.exposure, m.exposure)
    assert back.wcs.wcs_pix2world([[45.0, 45.0]], 0) == pytest.approx(m.wcs.wcs_pix2world([[45.0, 45.0]], 0))
    bad = tmp_path / "bad.fits"
    bad.write_text("no")
    with pytest.raises(InputDataError, match="bad.fits"):
        stack.read_mosaic(bad)


def test_data_inputs_names_what_a_joint_fit_lacks(tmp_path: Path) -> None:
    data = tmp_path / "T1"
    write_hdus(event_hdus(500, instrume="EMOS1"), data / "0000000001" / "mos1_evts.fits")
    (data / "0000000001" / "mos1.rmf").write_text("x")
    inventory, missing = stack.data_inputs(data, cameras=("pn", "mos1"))
    assert list(inventory) == ["0000000001"] and set(inventory["0000000001"]) == {"mos1"}
    assert inventory["0000000001"]["mos1"]["expmap"] is None
    assert missing == [
        "0000000001 pn: no event list under T1/0000000001",
        "0000000001 mos1: no ARF (*.arf) under T1/0000000001",
    ]
