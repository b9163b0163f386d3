"""Input discovery for the layouts users have, and atomic writes."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from xmmcore.errors import ConfigError, InputDataError, ToolNotFoundError, exit_code_for
from xmmcore.fsutil import atomic_path, atomic_write_json, sha256_file
from xmmcore.observation import camera_from_name, discover, list_obsids, validate_obsid


@pytest.mark.parametrize(
    ("name", "camera"),
    [
        ("P0201903501M1S001MIEVLI0000.FIT", "mos1"),
        ("P0201903501M2S002MIEVLI0000.FIT.gz", "mos2"),
        ("P0201903501PNS003PIEVLI0000.FIT", "pn"),
        ("mos1_exp1_clean_evts.fits", "mos1"),
        ("pn_clean_evt.fits.gz", "pn"),
        ("EPN_events.fits", "pn"),
        ("readme.txt", None),
    ],
)
def test_camera_from_name(name, camera):
    assert camera_from_name(name) == camera


def _touch(path, data=b"SIMPLE"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discover_pps_layout(tmp_path):
    root = tmp_path / "0123456789"
    _touch(root / "ODF" / "0809_0123456789_SCX00000SUM.SAS")
    _touch(root / "ODF" / "ccf.cif")
    m1 = _touch(root / "event" / "P0123456789M1S001MIEVLI0000.FIT")
    pn = _touch(root / "event" / "P0123456789PNS003PIEVLI0000.FIT.gz", gzip.compress(b"x"))
    _touch(root / "event" / "P0123456789M1S001IMAGE_8000.FIT")  # an image, not events
    (root / "meta.json").write_text(json.dumps({"z": 0.16, "name": "A907"}))
    obs = discover(tmp_path, "0123456789")
    assert obs.event_files == {"mos1": m1, "pn": pn}
    assert obs.cameras == ("pn", "mos1")
    assert obs.odf_dir == root / "ODF"
    assert obs.ccf == root / "ODF" / "ccf.cif"
    assert obs.meta["z"] == 0.16
    assert list_obsids(tmp_path) == ["0123456789"]


def test_discover_prefers_clean_lists(tmp_path):
    root = tmp_path / "0404910601"
    _touch(root / "pps" / "P0404910601M1S001MIEVLI0000.FIT")
    clean = _touch(root / "eclean" / "mos1_exp1_clean_evts.fits")
    assert discover(tmp_path, "0404910601").event_files["mos1"] == clean


def test_discover_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="empty.*no EPIC event list"):
        discover(tmp_path, "empty")
    with pytest.raises(InputDataError, match="does not exist"):
        discover(tmp_path, "missing")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "", "x" * 65, "a b"])
def test_obsid_with_path_characters_is_refused(bad):
    with pytest.raises(InputDataError):
        validate_obsid(bad)


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "cat.json"
    atomic_write_json(target, {"a": 1})
    before = sha256_file(target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert sha256_file(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat.json"]


def test_atomic_write_json_writes_nan_as_null(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"v": float("nan"), "p": tmp_path})
    assert json.loads(path.read_text()) == {"v": None, "p": str(tmp_path)}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.access(path, os.R_OK)


def test_exit_codes():
    assert exit_code_for(ConfigError("x")) == 2
    assert exit_code_for(InputDataError("x", "f.fits")) == 3
    assert exit_code_for(ToolNotFoundError("no evselect")) == 2
    assert exit_code_for(KeyError("x")) == 1
    assert str(InputDataError("truncated", "/d/f.fits")) == "/d/f.fits: truncated"


def test_pn_out_of_time_list_is_not_taken_as_events(tmp_path):
    root = tmp_path / "0123456789"
    pn = _touch(root / "pps" / "P0123456789PNS003PIEVLI0000.FIT")
    _touch(root / "pps" / "P0123456789PNS003OOEVLI0000.FIT")
    assert discover(tmp_path, "0123456789").event_files == {"pn": pn}
