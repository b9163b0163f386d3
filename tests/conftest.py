"""Shared fixtures: the real XMM files in ../shared/data/xmm and marker skips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    env = os.environ.get("XMM_SURVEY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    for cand in candidates:
        if (cand / "xmm").is_dir():
            return cand
    return None


SHARED_DATA = _find_shared()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skip where it is absent (a user's clone), fail under CI."""
    if SHARED_DATA is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("../shared/data/xmm is missing under CI=true; the real-data tests must run in CI")
        pytest.skip("../shared/data/xmm not found (set XMM_SURVEY_SHARED_DATA to run the real-data tests)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def xmm_data(shared_data: Path) -> Path:
    return shared_data / "xmm"


@pytest.fixture(scope="module")
def sherpa_pn(xmm_data: Path):
    """The Sherpa test pn spectrum (``sherpa_pn/pn_pi_src_bin10.ds`` with its RMF), noticed 2-10 keV."""
    import warnings

    from xmmcore.fitting.datasets import SpectrumDataset

    d = xmm_data / "sherpa_pn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BACKFILE of this file is absent
        ds = SpectrumDataset.from_pha(d / "pn_pi_src_bin10.ds", rmf=d / "epn_ff20_dY9.rmf")
    return ds.notice(2.0, 10.0)


# Under pytest-xdist (`make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`) each test file is
# one unit of work, so that a module fixture (a simulated survey, a SLURM cluster) is built once, on one
# worker. The files are handed out longest first (seconds per file in a --durations run of main at
# 774b118 under load ~10), so that no long file starts last; the rest keep their usual order.
# The 3-node SLURM file goes first: it mostly waits on SLURM while the other worker computes.
XDIST_FIRST = (
    "test_slurm_multinode.py",  # 530
    "test_end_to_end.py",  # 459
    "test_faults.py",  # 237
    "test_joint.py",  # 158
    "test_survey_pipeline.py",  # 141
    "test_sas_stub_survey.py",  # 124
    "test_hostile.py",  # 72
    "test_interop.py",  # 62
    "test_survey.py",  # 59
    "test_survey_resume.py",  # 50
    "test_slurm.py",  # 48
    "test_models_thermal.py",  # 44
    "test_fit_injection.py",  # 31
    "test_simulate.py",  # 29
    "test_report.py",  # 29
    "test_sas_audit.py",  # 29
)


def _xdist_order(items) -> None:
    """Sort items by file, XDIST_FIRST first, keeping the order inside each file (a stable sort)."""
    rank = {name: i for i, name in enumerate(XDIST_FIRST)}
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.path.name, i)
    items.sort(key=lambda it: (rank.get(it.path.name, len(rank)), first_seen[it.path.name]))


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker (the controller collects nothing itself)
        _xdist_order(items)
    have = {
        "sas": shutil.which("evselect") is not None and bool(os.environ.get("SAS_DIR")),
        "xspec": shutil.which("xspec") is not None,
        "slurm": shutil.which("slurmctld") is not None and shutil.which("sbatch") is not None,
    }
    try:
        import sherpa  # noqa: F401

        have["sherpa"] = True
    except ImportError:
        have["sherpa"] = False
    reasons = {
        "sas": "SAS not installed (needs evselect on PATH and SAS_DIR set)",
        "xspec": "HEASoft/XSPEC not installed (needs xspec on PATH and PyXspec)",
        "slurm": "SLURM not installed (apt-get install slurm-wlm munge; .ci/run does this)",
        "sherpa": "sherpa not installed (pip install sherpa; needs bison, flex, libfftw3-dev)",
    }
    for item in items:
        for name, ok in have.items():
            if name in item.keywords and not ok:
                if name == "slurm" and os.environ.get("CI", "").lower() == "true":
                    continue  # CI installs SLURM: let the test fail loudly if it is missing
                item.add_marker(pytest.mark.skip(reason=reasons[name]))
