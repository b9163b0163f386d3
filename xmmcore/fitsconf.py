"""astropy.io.fits configuration read once per step instead of on every header card.

``astropy.io.fits.card`` reads ``conf.strip_header_whitespace`` and
``conf.enable_record_valued_keyword_cards`` through astropy's configuration system on every access of a
card's value, comment or keyword: about 37,000 lookups of ~7 us each (~0.25 CPU-s) per simulated ObsID,
for two values that do not change during a run. Inside :func:`fits_conf_snapshot` that module sees a
plain snapshot of the same values, taken on entry, so the FITS files written and the headers read are
the same byte for byte. Nested and concurrent uses (the step-timeout thread, threads of one worker) share
one snapshot; the real object is put back when the last one leaves. Changing ``astropy.io.fits.conf``
inside the block takes effect after it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["fits_conf_snapshot"]

_lock = threading.Lock()
_depth = 0
_saved: Any = None


class _Snapshot:
    """The values of every ``ConfigItem`` of ``conf`` as plain attributes; anything else from ``conf``."""

    def __init__(self, conf: Any) -> None:
        from astropy.config import ConfigItem

        self._conf = conf
        for name in dir(type(conf)):
            if isinstance(getattr(type(conf), name, None), ConfigItem):
                setattr(self, name, getattr(conf, name))

    def __getattr__(self, name: str) -> Any:  # only for names that are not config items
        return getattr(self._conf, name)


@contextlib.contextmanager
def fits_conf_snapshot() -> Iterator[None]:
    """Run the block with ``astropy.io.fits.card`` reading a snapshot of ``astropy.io.fits.conf``."""
    global _depth, _saved
    from astropy.io.fits import card, conf

    with _lock:
        if _depth == 0 and card.conf is conf:
            _saved = card.conf
            card.conf = _Snapshot(conf)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                card.conf = _saved
                _saved = None
