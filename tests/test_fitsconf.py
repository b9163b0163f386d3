"""xmmcore.fitsconf: astropy.io.fits reads its settings from a snapshot inside a step, the same values."""

from __future__ import annotations

import threading

from astropy.config import configuration
from astropy.io import fits
from astropy.io.fits import card

from xmmcore.fitsconf import fits_conf_snapshot


def _header_bytes() -> bytes:
    hdr = fits.Header()
    for k in range(200):
        hdr[f"KEY{k}"] = (f"value {k}   ", f"comment {k}")
    hdr["HIERARCH LONG KEYWORD NAME"] = 1.5
    return hdr.tostring().encode()


def test_snapshot_gives_the_same_header_bytes_with_almost_no_config_lookups(monkeypatch):
    calls = {"n": 0}
    real_get = configuration.ConfigItem.__get__

    def counting(self, obj, objtype=None):
        if obj is not None:
            calls["n"] += 1
        return real_get(self, obj, objtype)

    monkeypatch.setattr(configuration.ConfigItem, "__get__", counting)
    plain = _header_bytes()
    outside = calls["n"]
    calls["n"] = 0
    with fits_conf_snapshot():
        assert card.conf is not fits.conf
        assert card.conf.strip_header_whitespace == fits.conf.strip_header_whitespace
        snap = _header_bytes()
    inside = calls["n"]
    assert snap == plain
    assert outside > 1000 and inside < outside / 100, (outside, inside)
    assert card.conf is fits.conf  # put back


def test_nested_and_threaded_uses_restore_the_real_conf_once_all_leave():
    started, release = threading.Event(), threading.Event()

    def worker() -> None:
        with fits_conf_snapshot():
            started.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    with fits_conf_snapshot():
        with fits_conf_snapshot():
            assert card.conf is not fits.conf
        assert card.conf is not fits.conf
    assert card.conf is not fits.conf  # the thread is still inside
    release.set()
    t.join(10)
    assert card.conf is fits.conf


def test_a_value_changed_outside_is_seen_by_the_next_snapshot():
    with fits.conf.set_temp("strip_header_whitespace", False), fits_conf_snapshot():
        assert card.conf.strip_header_whitespace is False
        assert fits.Card("A", "x   ").value == "x   "
    with fits_conf_snapshot():
        assert card.conf.strip_header_whitespace is True
        assert fits.Card("A", "x   ").value == "x"
