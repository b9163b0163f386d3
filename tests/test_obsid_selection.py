"""Choosing ObsIDs: list file, glob, or plain ObsIDs on the command line."""

from __future__ import annotations

import pytest

from survey.api import resolve_obsids
from xmmcore.errors import ConfigError


@pytest.fixture
def data_dir(tmp_path):
    for name in ("0201901401", "0201903501", "0404910601"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mos1_clean_evts.fits").write_bytes(b"x")
    return tmp_path


def test_single_and_comma_separated_obsids(data_dir):
    assert resolve_obsids({"obsids": "0201903501", "data_dir": data_dir}) == ["0201903501"]
    assert resolve_obsids({"obsids": "0404910601, 0201901401", "data_dir": data_dir}) == [
        "0404910601",
        "0201901401",
    ]


def test_glob_and_list_file(data_dir, tmp_path_factory):
    assert resolve_obsids({"obsids": "02019*", "data_dir": data_dir}) == ["0201901401", "0201903501"]
    listing = tmp_path_factory.mktemp("lists") / "obsids.txt"
    listing.write_text("# A907\n0404910601\n\n0201901401  # short one\n")
    assert resolve_obsids({"obsids": str(listing), "data_dir": data_dir}) == ["0404910601", "0201901401"]


@pytest.mark.parametrize("spec", ["0999999999", "0201903501,nope", "../0201903501"])
def test_unknown_or_unsafe_obsids_are_config_errors(data_dir, spec):
    with pytest.raises(ConfigError, match="obsids"):
        resolve_obsids({"obsids": spec, "data_dir": data_dir})


def test_wrong_data_dir_on_retry_leaves_the_records_alone(tmp_path):
    from survey.api import run_survey
    from survey.config import load_config
    from xmmcore.errors import InputDataError

    results = tmp_path / "results"
    (results / "0201903501" / "steps").mkdir(parents=True)
    record = results / "0201903501" / "steps" / "fit.json"
    record.write_text('{"status": "failed", "reason": "no response matrix"}')
    cfg = load_config(None, {"data_dir": str(tmp_path / "typo"), "results_dir": str(results)})
    with pytest.raises(InputDataError, match="typo: data directory does not exist"):
        run_survey(cfg, obsids=["0201903501"], retry_failed=True)
    assert record.read_text() == '{"status": "failed", "reason": "no response matrix"}'
    assert not (results / "config.resolved.yaml").exists()
