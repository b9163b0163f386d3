"""Issue 14: Python-backend spectra carry evselect's data-subspace keywords, so SAS can make their responses.

The DSS form is compared with the real SAS spectra in ``../shared/data/xmm`` (psrj0855 MOS,
ngc7793_ulx4 pn); ``spectra.responses: sas`` runs backscale/rmfgen/arfgen (extendedsource, detector map)
on them with the stub SAS tools (which refuse a spectrum without a DSS region); without SAS the error
says which tool is missing and how to point to SAS.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits
from sas_stub import install

from xmmcore.backends import get_backend
from xmmcore.errors import ToolNotFoundError
from xmmcore.observation import discover
from xmmcore.regions import make_regions
from xmmcore.sas_dss import flag_dsval

OBSID = "0201901401"
LOG = logging.getLogger("test_hybrid")


def test_flag_dsval_matches_the_real_sas_spectra(xmm_data):
    hdr = fits.getheader(xmm_data / "ngc7793_ulx4" / "PNbackground_spectrum.fits", "SPECTRUM")
    assert flag_dsval(0xCFA0000) == hdr["DSVAL2"]  # pn: the ESAS mask, as evselect wrote it


@pytest.fixture(scope="module")
def a907_mos1(xmm_data, tmp_path_factory):
    from survey.config import load_config

    cfg = load_config(None, {"cameras": ["mos1"], "regions.point_sources.detect": False}).to_dict()
    obs = discover(xmm_data / "a907", OBSID)
    out = tmp_path_factory.mktemp("hybrid") / OBSID
    get_backend("python").filter_camera(obs, "mos1", out, cfg, log=LOG)
    regions = make_regions(obs, out, cfg, log=LOG)
    return obs, out, cfg, regions


def test_python_spectra_carry_the_evselect_dss(a907_mos1, xmm_data):
    obs, out, cfg, regions = a907_mos1
    get_backend("python").spectra_camera(obs, "mos1", out, regions, cfg, log=LOG)
    real = fits.getheader(xmm_data / "psrj0855" / "mos1" / "xmm_mos1_0605960101_src.pha", "SPECTRUM")
    with fits.open(out / "spectra" / "mos1_src.pha") as hdul:
        hdr = hdul["SPECTRUM"].header
        types = {hdr[k] for k in hdr if k.startswith("DSTYP")}
        assert {"CCDNR", "FLAG", "PATTERN", "TIME"} <= types and {"CCDNR", "FLAG", "PATTERN", "TIME"} <= {
            real[k] for k in real if k.startswith("DSTYP")
        }
        pos = next(k for k in hdr if k.startswith("DSTYP") and hdr[k] == "POS(X,Y)")
        reg = hdul[hdr["DSREF" + pos[5:]].lstrip(":")].data
        assert reg["SHAPE"][0].strip() == "CIRCLE"
        assert reg["R"][0] == pytest.approx(regions["r_src_arcmin"] * 1200.0)
        assert hdr["DSVAL2"] == flag_dsval(0x766BA000)  # the #XMMEA_EM screening of the filter step
        # one DSS component per CCD, each with the GTI table of that CCD (nDSVAL1 / nDSREF5)
        gti_names = [hdr["DSREF5"]] + [hdr[k] for k in hdr if k.endswith("DSREF5") and k[0].isdigit()]
        ccds = [hdr["DSVAL1"]] + [hdr[k] for k in hdr if k.endswith("DSVAL1") and k[0].isdigit()]
        assert len(gti_names) == len(ccds) == 7
        for name, ccd in zip(gti_names, ccds, strict=True):
            assert hdul[name.lstrip(":")].header["CCDID"] == int(ccd) and len(hdul[name.lstrip(":")].data) > 0
    with fits.open(out / "spectra" / "mos1_bkg.pha") as hdul:
        shapes = [s.strip() for s in hdul["REG00106"].data["SHAPE"]]
        assert shapes[:2] == ["CIRCLE", "!CIRCLE"]  # annulus = outer circle minus inner circle


def test_responses_sas_runs_backscale_rmfgen_arfgen(a907_mos1, tmp_path, monkeypatch):
    obs, out, cfg, regions = a907_mos1
    sas_dir = install(tmp_path / "xmmsas")
    monkeypatch.delenv("SAS_DIR", raising=False)
    monkeypatch.setenv("XMM_STUB_LOG", str(tmp_path / "calls.jsonl"))
    cfg = {
        **cfg,
        "spectra": {**cfg["spectra"], "responses": "sas"},
        "sas": {**cfg["sas"], "sas_dir": str(sas_dir)},
    }
    res = get_backend("python").spectra_camera(obs, "mos1", out, regions, cfg, log=LOG)
    import json

    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["task"] for c in calls] == ["backscale", "backscale", "rmfgen", "evselect", "arfgen"]
    arfgen = calls[-1]["argv"]
    assert "extendedsource=yes" in arfgen and "detmaptype=dataset" in arfgen
    with fits.open(out / "spectra" / "mos1_src.pha") as hdul:
        hdr = hdul["SPECTRUM"].header
        # backscale read the DSS region: pi r^2 of the source circle [sky pixel^2]
        assert hdr["BACKSCAL"] == pytest.approx(np.pi * (regions["r_src_arcmin"] * 1200.0) ** 2, rel=1e-5)
        assert hdr["RESPFILE"] == "mos1.rmf" and hdr["ANCRFILE"] == "mos1.arf"
    assert (out / "spectra" / "mos1.rmf").exists() and (out / "spectra" / "mos1.arf").exists()
    assert res["responses"]["sas_tasks"] == ["backscale", "backscale", "rmfgen", "evselect", "arfgen"]


def test_responses_sas_without_sas_is_a_clear_error(a907_mos1, monkeypatch):
    obs, out, cfg, regions = a907_mos1
    monkeypatch.delenv("SAS_DIR", raising=False)
    cfg = {**cfg, "spectra": {**cfg["spectra"], "responses": "sas"}, "sas": {**cfg["sas"], "sas_dir": None}}
    with pytest.raises(ToolNotFoundError, match="SAS_DIR is not set.*sas-installation"):
        get_backend("python").spectra_camera(obs, "mos1", out, regions, cfg, log=LOG)
