"""Atomic file writes and checksums: nothing already written is ever half-overwritten."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_fits",
    "atomic_write_json",
    "atomic_write_text",
    "file_version",
    "is_disk_full_message",
    "regular_file",
    "sha256_file",
]


def regular_file(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file") -> Path:
    """Return ``path`` if it is a regular file of at most ``max_bytes``, else raise ``InputDataError``.

    Checked with ``stat`` (which never blocks) before anything opens the file: a FIFO would block a
    reader forever and ``/dev/zero`` would feed it until the worker's memory limit kills it.
    """
    import stat as stat_mod

    from .errors import InputDataError

    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise InputDataError(f"{what} not found (does not exist)", p) from exc
    except OSError as exc:
        raise InputDataError(f"cannot read {what} ({exc.strerror or exc})", p) from exc
    if not stat_mod.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat_mod.S_ISFIFO(st.st_mode)
            else "a device"
            if stat_mod.S_ISCHR(st.st_mode) or stat_mod.S_ISBLK(st.st_mode)
            else "a directory"
            if stat_mod.S_ISDIR(st.st_mode)
            else "not a regular file"
        )
        raise InputDataError(f"{what} is {kind}, not a regular file", p)
    if st.st_size > max_bytes:
        raise InputDataError(f"{what} is {st.st_size} bytes, more than the limit of {max_bytes}", p)
    return p


def file_version(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """Key of one version of a file for in-process caches: resolved path, inode, size and mtime [ns].

    A file rewritten (atomically: a new inode) or touched is another version.
    """
    path = Path(path)
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from ``path``; a file that is not one raises :class:`~xmmcore.errors.InputDataError`
    naming the file and the cause (a missing or unreadable file raises its ``OSError``, which names it)."""
    from .errors import InputDataError

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputDataError(f"invalid JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputDataError("expected a JSON object", path)
    return data


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if no exception was raised.

    The temporary file lives in the same directory so that ``os.replace`` is atomic.
    On error the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers such as astropy refuse to overwrite an existing file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(target)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN written as null)."""
    return atomic_write_text(target, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_fits(hdul: Any, target: str | os.PathLike[str], *, verify: bool = True) -> Path:
    """Write an ``astropy.io.fits.HDUList`` atomically, with checksums.

    ``verify=False`` skips astropy's output verification of every card, for HDUs built here whose every
    keyword was set through the header API: astropy validates a card (keyword, printable ASCII value
    and comment, no NaN) when it is created, so the pass finds nothing, and the bytes written are the
    same (tests/test_ogip.py); it is ~40% of writing a spectrum with its GTI tables.  Headers read
    from a file (cards parsed lazily) need the default.

    astropy reports a full disk as a plain ``OSError`` ("Not enough space on disk ...", no errno, no
    file name); it is raised again as ``ENOSPC`` naming ``target``, so that callers see a disk-full error.
    """
    import errno

    try:
        with atomic_path(target) as tmp:
            hdul.writeto(tmp, checksum=True, output_verify="exception" if verify else "ignore")
    except OSError as exc:
        if exc.errno is None and is_disk_full_message(str(exc)):
            raise OSError(errno.ENOSPC, f"No space left on device ({exc})", str(target)) from exc
        raise
    return Path(target)


#: How writers that drop the errno (astropy) word a full disk.
_DISK_FULL_WORDS = ("not enough space on disk", "no space left on device", "disk quota exceeded")


def is_disk_full_message(text: str) -> bool:
    """True when an error message without an errno says the disk is full (astropy's wording included)."""
    low = text.lower()
    return any(word in low for word in _DISK_FULL_WORDS)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
