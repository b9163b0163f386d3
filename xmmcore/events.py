"""XMM-Newton EPIC event lists: read, screen, write, and stream.

Reads the ``EVENTS`` extension of calibrated event lists (pn ``EPN``, MOS ``EMOS1``/``EMOS2``),
plain or gzip'd, with every column converted once to native byte order.  Per-CCD good
time intervals are taken from the GTI tables the event header's data-subspace (DSS) keywords
reference for ``TIME`` (e.g. ``GTI00006`` in XGA/XCS cleaned lists), else from ``STDGTInn``,
else from a single ``GTI``/``STDGTI`` table applying to every CCD.

Screening follows what SAS users write in ``evselect``:
pn ``#XMMEA_EP && PATTERN<=4``, MOS ``#XMMEA_EM && PATTERN<=12``, plus a PI range and CCD list.
The ``#XMMEA_E?`` masks are read from the event header (SAS defines them there); when absent the
SAS values are used (``XMMEA_EM = (FLAG & 0x766ba000) == 0`` as in the a907 headers,
``XMMEA_EP = (FLAG & 0xfa000c) == 0``).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from . import gti as gtimod
from .errors import InputDataError
from .fsutil import atomic_write_fits, file_version, regular_file

__all__ = [
    "read_clean_events",
    "CAMERA_TO_INSTRUME",
    "CENTRAL_CCD",
    "INSTRUME_TO_CAMERA",
    "REQUIRED_COLUMNS",
    "XMMEA_DEFAULT",
    "EventList",
    "flag_mask_for",
    "iter_event_chunks",
    "read_events",
    "read_unscreened_events",
    "screen",
    "screen_mask",
    "screen_with_gti",
    "stream_filter_bin",
    "write_events",
    "write_gti",
]

INSTRUME_TO_CAMERA = {"EPN": "pn", "EMOS1": "mos1", "EMOS2": "mos2"}
CAMERA_TO_INSTRUME = {v: k for k, v in INSTRUME_TO_CAMERA.items()}
XMMEA_DEFAULT = {"pn": 0xFA000C, "mos1": 0x766BA000, "mos2": 0x766BA000}
#: CCD whose GTIs ``ONTIME``/``LIVETIME`` refer to (MOS: CCD 1 holds the aim point; pn: CCD 4).
CENTRAL_CCD = {"pn": 4, "mos1": 1, "mos2": 1}
REQUIRED_COLUMNS = ("TIME", "X", "Y", "PI", "PATTERN", "FLAG", "CCDNR")
#: Largest event list read [bytes]: a sparse or runaway file is refused before it is opened.
MAX_EVENT_BYTES = 64 << 30
_XMMEA_RE = re.compile(r"FLAG\s*&\s*(0x[0-9a-fA-F]+)\s*\)\s*==\s*0")


@dataclass
class EventList:
    """An EPIC event list held as native-endian numpy columns.

    Attributes
    ----------
    camera : str
        ``pn``, ``mos1`` or ``mos2``.
    header : astropy.io.fits.Header
        The EVENTS header (WCS keywords, ONTIMEnn, LIVETInn...).
    columns : dict of str -> ndarray
        Column arrays, native byte order, all the same length.
    gti_ccd : dict of int -> ndarray
        Per-CCD good time intervals, ``(N, 2)`` [s].
    gti : ndarray
        Union of the per-CCD GTIs [s] (times when any CCD collected events).
    path : Path or None
        File it was read from.
    resorted : bool
        True if TIME was not ordered in the file and the rows were sorted on reading.
    n_rows_file : int or None
        Number of events in the file (more than ``len()`` when read with a ``prefilter``).
    """

    camera: str
    header: fits.Header
    columns: dict[str, np.ndarray]
    gti_ccd: dict[int, np.ndarray] = field(default_factory=dict)
    gti: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    path: Path | None = None
    resorted: bool = False
    n_rows_file: int | None = None

    def __len__(self) -> int:
        return int(next(iter(self.columns.values())).size) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def ccds(self) -> list[int]:
        """CCD numbers with a GTI table (the CCDs that were read out)."""
        return sorted(self.gti_ccd)

    def select(self, mask: np.ndarray) -> EventList:
        """Return a new list with the rows where ``mask`` is true (same header and GTIs)."""
        return replace(self, columns={k: v[mask] for k, v in self.columns.items()})

    def with_gti(self, gti: np.ndarray, *, keep: np.ndarray | None = None) -> EventList:
        """Return a copy whose per-CCD GTIs are intersected with ``gti`` and events outside dropped.

        ``keep`` (a boolean row mask, e.g. :func:`screen_mask`) is applied in the same pass, so the
        columns are copied once instead of once per selection.
        """
        gti_ccd = {c: gtimod.intersection(g, gti) for c, g in self.gti_ccd.items()}
        in_gti = _mask_ccd_gti(self.columns["TIME"], self.columns["CCDNR"], gti_ccd)
        keep = in_gti if keep is None else in_gti & np.asarray(keep, dtype=bool)
        out = replace(
            self,
            columns={k: v[keep] for k, v in self.columns.items()},
            gti_ccd=gti_ccd,
            gti=_gti_union(gti_ccd),
        )
        return out

    def ontime(self, ccd: int | None = None) -> float:
        """Sum of GTIs [s] of ``ccd`` (default: the camera's central CCD, else the union)."""
        ccd = CENTRAL_CCD[self.camera] if ccd is None else ccd
        if ccd in self.gti_ccd:
            return gtimod.exposure(self.gti_ccd[ccd])
        return gtimod.exposure(self.gti)

    def deadtime_factor(self, ccd: int | None = None) -> float:
        """``LIVETInn / ONTIMEnn`` from the input header (1.0 when the keywords are absent)."""
        ccd = CENTRAL_CCD[self.camera] if ccd is None else ccd
        live = self.header.get(f"LIVETI{ccd:02d}", self.header.get("LIVETIME"))
        on = self.header.get(f"ONTIME{ccd:02d}", self.header.get("ONTIME"))
        if live is None or on is None or not on or float(on) <= 0:
            return 1.0
        return float(min(max(float(live) / float(on), 0.0), 1.0))

    def sky_wcs_keywords(self) -> dict[str, float]:
        """Sky pixel WCS of the X/Y columns: ``crpix, crval, cdelt`` per axis [deg, phys px]."""
        return sky_wcs_keywords(self.header, path=self.path)


def _mask_ccd_gti(time: np.ndarray, ccdnr: np.ndarray, gti_ccd: Mapping[int, np.ndarray]) -> np.ndarray:
    """Rows whose TIME is in their own CCD's GTI (CCDs without a GTI table are dropped).

    CCDs that share one GTI table (the usual case after a flare GTI is applied) share one mask, computed
    on the whole time-sorted column by slices; per-CCD selection is then a lookup, not a copy per CCD.
    """
    groups: dict[bytes, list[int]] = {}
    tables: dict[bytes, np.ndarray] = {}
    for ccd, g in gti_ccd.items():
        key = np.ascontiguousarray(g, dtype=np.float64).tobytes()
        groups.setdefault(key, []).append(int(ccd))
        tables[key] = g
    if not groups or ccdnr.size == 0:
        return np.zeros(time.shape, dtype=bool)
    lut_size = int(max(int(ccdnr.max()), max(max(v) for v in groups.values()))) + 1
    if int(ccdnr.min()) < 0:
        raise ValueError("CCDNR holds negative values")
    keep = np.zeros(time.shape, dtype=bool)
    for key, ccds in groups.items():
        in_gti = gtimod.mask_in_gti(time, tables[key])
        lut = np.zeros(lut_size, dtype=bool)
        lut[ccds] = True
        keep |= in_gti & lut[ccdnr]
    return keep


def sky_wcs_keywords(header: Mapping[str, Any], *, path: str | Path | None = None) -> dict[str, float]:
    """X/Y sky-pixel WCS from ``REFXCRPX``... or the X/Y columns' ``TCRPXn``... keywords.

    Raises ``InputDataError`` naming the file (``path``) and the keywords that are missing or not
    numbers if neither set is complete (a list without a sky WCS cannot be placed on the sky:
    regions, images and catalogue positions need it).
    """
    ref = ("REFXCRPX", "REFYCRPX", "REFXCRVL", "REFYCRVL", "REFXCDLT", "REFYCDLT")
    names = ("crpix1", "crpix2", "crval1", "crval2", "cdelt1", "cdelt2")

    def _values(keys: Sequence[str]) -> tuple[dict[str, float] | None, list[str]]:
        out, bad = {}, []
        for name, key in zip(names, keys):
            try:
                out[name] = float(header[key])
            except (KeyError, ValueError, TypeError):
                bad.append(key)
        return (out if not bad else None), bad

    found, bad_ref = _values(ref)
    if found is not None:
        return found
    cols = {str(header[k]).strip().upper(): str(k)[5:] for k in header if str(k).upper().startswith("TTYPE")}
    if "X" not in cols or "Y" not in cols:
        missing = " and ".join(c for c in ("X", "Y") if c not in cols)
        raise InputDataError(
            f"event list has no sky WCS: no {missing} column, and {', '.join(bad_ref)} missing", path
        )
    ix, iy = cols["X"], cols["Y"]
    found, bad_col = _values(
        (f"TCRPX{ix}", f"TCRPX{iy}", f"TCRVL{ix}", f"TCRVL{iy}", f"TCDLT{ix}", f"TCDLT{iy}")
    )
    if found is not None:
        return found
    not_numbers = [k for k in bad_col + bad_ref if k in header]
    absent = [k for k in bad_col if k not in header]
    detail = f"missing {', '.join(absent)} (X is column {ix}, Y is column {iy})" if absent else ""
    if not_numbers:
        detail += ("; " if detail else "") + f"not numbers: {', '.join(not_numbers)}"
    raise InputDataError(
        f"event list has no sky WCS for X/Y: {detail}; nor the REFXCRPX/REFXCRVL/REFXCDLT... set "
        "(an event list needs TCRPXn/TCRVLn/TCDLTn on its X and Y columns to be placed on the sky)",
        path,
    )


def _native(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != ("<" if np.little_endian else ">"):
        return arr.astype(arr.dtype.newbyteorder("="))
    return np.array(arr, copy=True)


def _camera_of(header: Mapping[str, Any], path: Path) -> str:
    instr = str(header.get("INSTRUME", "")).strip().upper()
    if instr not in INSTRUME_TO_CAMERA:
        raise InputDataError(f"INSTRUME={instr!r} is not an EPIC camera (expected EPN, EMOS1 or EMOS2)", path)
    return INSTRUME_TO_CAMERA[instr]


def _dss_time_gti_refs(header: Mapping[str, Any]) -> dict[int, str]:
    """CCD -> GTI extension referenced for TIME by the DSS keywords (``nDSREFi``)."""
    ccd_axis = time_axis = None
    for key in header:
        m = re.fullmatch(r"DSTYP(\d+)", str(key))
        if not m:
            continue
        name = str(header[key]).strip().upper()
        if name == "CCDNR":
            ccd_axis = m.group(1)
        elif name == "TIME":
            time_axis = m.group(1)
    if ccd_axis is None or time_axis is None:
        return {}
    refs: dict[int, str] = {}
    for prefix in [""] + [str(i) for i in range(2, 100)]:
        val = header.get(f"{prefix}DSVAL{ccd_axis}")
        ref = header.get(f"{prefix}DSREF{time_axis}")
        if val is None:
            if prefix:
                break
            continue
        if ref is None and prefix:
            ref = header.get(f"DSREF{time_axis}")
        try:
            ccd = int(str(val).strip())
        except ValueError:
            continue
        if ref:
            refs[ccd] = str(ref).strip().lstrip(":")
    return refs


def _read_gti_table(hdu: fits.BinTableHDU, path: Path) -> np.ndarray:
    names = [n.upper() for n in hdu.columns.names]
    if "START" not in names or "STOP" not in names:
        raise InputDataError(f"GTI extension {hdu.name} lacks START/STOP columns", path)
    g = (
        np.column_stack(
            [_native(hdu.data["START"]).astype(np.float64), _native(hdu.data["STOP"]).astype(np.float64)]
        )
        if len(hdu.data)
        else np.zeros((0, 2))
    )
    return gtimod.normalise(g)


def _read_gtis(
    hdul: fits.HDUList, header: Mapping[str, Any], ccds_present: np.ndarray, path: Path
) -> dict[int, np.ndarray]:
    by_name = {h.name.upper(): h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)}
    out: dict[int, np.ndarray] = {}
    for ccd, ext in _dss_time_gti_refs(header).items():
        if ext.upper() in by_name:
            out[ccd] = _read_gti_table(by_name[ext.upper()], path)
    for name, hdu in by_name.items():
        m = re.fullmatch(r"STDGTI(\d\d)", name)
        if m and int(m.group(1)) not in out:
            std = _read_gti_table(hdu, path)
            out[int(m.group(1))] = std
    if not out:
        single = by_name.get("STDGTI") or by_name.get("GTI")
        if single is None:
            raise InputDataError("no GTI extension (STDGTInn, STDGTI or GTI) next to EVENTS", path)
        g = _read_gti_table(single, path)
        out = {int(c): g.copy() for c in np.unique(ccds_present)}
    return out


def read_events(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    camera: str | None = None,
    time_order: str = "sort",
    prefilter: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    chunk_rows: int = 2_000_000,
    keep_unscreened: bool = False,
) -> EventList:
    """Read an EPIC calibrated event list.

    Parameters
    ----------
    path : str or Path
        ``.fits``/``.FIT``/``.ds`` file, optionally gzip'd.
    columns : sequence of str, optional
        Columns to load (default: every column).  ``TIME, X, Y, PI, PATTERN, FLAG, CCDNR``
        are always required to be present in the file.
    camera : str, optional
        Expected camera; a different ``INSTRUME`` raises ``InputDataError``.
    time_order : {"sort", "require"}
        What to do when TIME decreases somewhere.  SAS lists merged per CCD/node (e.g. the
        XCS/XGA ``eclean`` lists of A907) are not time-ordered, so the default sorts the rows
        once (``EventList.resorted``); ``"require"`` raises ``InputDataError`` instead.
    prefilter : callable, optional
        ``f(columns_of_a_chunk) -> bool mask``: the streaming path for lists larger than memory.
        Rows are read ``chunk_rows`` at a time and only those passing are kept.
    chunk_rows : int
        Rows per chunk for ``prefilter``.
    keep_unscreened : bool
        With ``prefilter``, when the list is read in one chunk (every row is in memory anyway), also keep
        the whole list's :data:`REQUIRED_COLUMNS` for :func:`read_unscreened_events` (the filter step's
        unscreened list, which the spectra step reads again for the out-of-FOV background).

    Returns
    -------
    EventList

    Raises
    ------
    InputDataError
        Unreadable or truncated file, no EVENTS or GTI extension, missing columns, wrong
        instrument, no events, GTIs summing to 0 s, non-finite TIME, or (``time_order="require"``) TIME not
        monotonically non-decreasing.
    """
    path = regular_file(path, max_bytes=MAX_EVENT_BYTES, what="event file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=True, lazy_load_hdus=False) as hdul:
                return _read_open(
                    hdul, path, columns, camera, time_order, prefilter, chunk_rows, keep_unscreened
                )
    except InputDataError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, AstropyUserWarning) as exc:
        raise InputDataError(
            f"cannot read event list ({type(exc).__name__}: {exc}); truncated or not FITS?", path
        ) from exc


#: Bytes of column data :func:`read_clean_events` keeps in memory (about the cleaned lists of one pointing).
CLEAN_CACHE_BYTES = 96 * 2**20
#: Folders (one per ObsID) whose lists :func:`read_clean_events` keeps: a worker interleaves the steps of at
#: most a couple of ObsIDs, and lists of finished ObsIDs would only hold memory until the byte bound evicts them
#: (worker RSS then grows over the first tens of ObsIDs of a survey instead of staying flat).
CLEAN_CACHE_FOLDERS = 2
_clean_cache: OrderedDict[tuple[Any, ...], EventList] = OrderedDict()
_clean_cache_lock = threading.Lock()


def _gti_union(gti_ccd: Mapping[int, np.ndarray]) -> np.ndarray:
    """:attr:`EventList.gti` of per-CCD GTIs: their union (an empty GTI when there are none)."""
    return gtimod.union(*gti_ccd.values()) if gti_ccd else gtimod.as_gti(None)


def _make_read_only(evl: EventList) -> None:
    """Make the columns and GTIs of a list kept in a cache read-only (callers share the arrays)."""
    for arr in [*evl.columns.values(), *evl.gti_ccd.values(), evl.gti]:
        arr.setflags(write=False)


def _nbytes(evl: EventList) -> int:
    return sum(int(a.nbytes) for a in evl.columns.values())


def _clean_cache_put(key: tuple[Any, ...], evl: EventList) -> None:
    """Keep ``evl`` (its arrays made read-only) under ``key``, within the byte and folder bounds."""
    _make_read_only(evl)
    size = _nbytes(evl)
    with _clean_cache_lock:
        if size > CLEAN_CACHE_BYTES:
            return
        _clean_cache[key] = evl
        _clean_cache.move_to_end(key)
        while sum(_nbytes(e) for e in _clean_cache.values()) > CLEAN_CACHE_BYTES:
            _clean_cache.popitem(last=False)
        recent: list[str] = []  # folders, most recently used first
        for k in reversed(_clean_cache):
            folder = os.path.dirname(k[0])
            if folder not in recent:
                recent.append(folder)
        for k in [k for k in _clean_cache if os.path.dirname(k[0]) not in recent[:CLEAN_CACHE_FOLDERS]]:
            del _clean_cache[k]


def read_clean_events(path: str | Path, *, camera: str | None = None) -> EventList:
    """:func:`read_events` (every column) of a cleaned event list, read once per file version in a process.

    The regions step, the spectra step and the fit step's R500 re-extractions read the same cleaned
    lists one after the other; the most recent lists (at most :data:`CLEAN_CACHE_BYTES` of columns) are
    kept, keyed by the file's inode, size and modification time, so a rewritten file is read again.
    The columns of a kept list are read-only; each caller gets its own header and column mapping.
    """
    path = regular_file(path, max_bytes=MAX_EVENT_BYTES, what="event file")
    key = file_version(path)
    with _clean_cache_lock:
        evl = _clean_cache.get(key)
        if evl is not None:
            _clean_cache.move_to_end(key)
    if evl is None:
        evl = read_events(path)
        _clean_cache_put(key, evl)
    if camera is not None and camera != evl.camera:
        raise InputDataError(
            f"expected a {camera} event list but INSTRUME={evl.header.get('INSTRUME')!r} ({evl.camera})",
            path,
        )
    return replace(evl, header=evl.header.copy(), columns=dict(evl.columns), gti_ccd=dict(evl.gti_ccd))


#: The unscreened list of one ObsID folder kept by :func:`read_events` (``keep_unscreened``), by file version;
#: a list of another folder replaces them, so a worker holds the raw lists of its current ObsID only.
_unscreened_cache: dict[tuple[Any, ...], EventList] = {}


def _keep_unscreened(
    hdul: fits.HDUList,
    header: fits.Header,
    camera: str,
    whole: Mapping[str, np.ndarray],
    gti_ccd: Mapping[int, np.ndarray],
    ccd_kept: np.ndarray,
    path: Path,
    nrows: int,
) -> None:
    """Keep ``read_events(path, columns=REQUIRED_COLUMNS)`` built from the rows already in memory."""
    cols = {c: whole[c] for c in REQUIRED_COLUMNS}
    time = cols["TIME"]
    if not np.all(np.isfinite(time)):
        return  # the reader says why
    resorted = False
    if time.size > 1 and np.any(np.diff(time) < 0):
        order = np.argsort(time, kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        resorted = True
    else:
        cols = {k: v.copy() for k, v in cols.items()}
    # the GTIs depend on the rows only through the CCDs present (a single GTI table applies to each)
    same_ccds = np.array_equal(np.unique(ccd_kept), np.unique(cols["CCDNR"]))
    gtis = (
        {c: g.copy() for c, g in gti_ccd.items()}
        if same_ccds
        else _read_gtis(hdul, header, cols["CCDNR"], path)
    )
    evl = EventList(
        camera=camera,
        header=header.copy(),
        columns=cols,
        gti_ccd=gtis,
        gti=_gti_union(gtis),
        path=path,
        resorted=resorted,
        n_rows_file=nrows,
    )
    _make_read_only(evl)
    key = file_version(path)
    with _clean_cache_lock:
        for k in [k for k in _unscreened_cache if os.path.dirname(k[0]) != os.path.dirname(key[0])]:
            del _unscreened_cache[k]
        _unscreened_cache.pop(key, None)
        # at most CLEAN_CACHE_BYTES of columns in all: a list that does not fit is read again when needed
        if _nbytes(evl) + sum(_nbytes(e) for e in _unscreened_cache.values()) <= CLEAN_CACHE_BYTES:
            _unscreened_cache[key] = evl


def read_unscreened_events(path: str | Path, *, camera: str | None = None) -> EventList:
    """``read_events(path, camera=camera, columns=REQUIRED_COLUMNS)``, from memory when the filter step of this
    process kept the list (``read_events(..., keep_unscreened=True)``) and the file is unchanged.

    The columns of a kept list are read-only; each caller gets its own header and column mapping.
    """
    path = regular_file(path, max_bytes=MAX_EVENT_BYTES, what="event file")
    key = file_version(path)
    with _clean_cache_lock:
        evl = _unscreened_cache.get(key)
    if evl is None:
        return read_events(path, camera=camera, columns=REQUIRED_COLUMNS)
    if camera is not None and camera != evl.camera:
        raise InputDataError(
            f"expected a {camera} event list but INSTRUME={evl.header.get('INSTRUME')!r} ({evl.camera})",
            path,
        )
    return replace(evl, header=evl.header.copy(), columns=dict(evl.columns), gti_ccd=dict(evl.gti_ccd))


def _events_hdu(hdul: fits.HDUList, path: Path) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if hdu.name.upper() == "EVENTS" and isinstance(hdu, fits.BinTableHDU):
            return hdu
    raise InputDataError("no EVENTS extension", path)


def _read_open(
    hdul: fits.HDUList,
    path: Path,
    columns: Sequence[str] | None,
    camera: str | None,
    time_order: str = "sort",
    prefilter: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    chunk_rows: int = 2_000_000,
    keep_unscreened: bool = False,
) -> EventList:
    hdu = _events_hdu(hdul, path)
    header = hdu.header.copy()
    cam = _camera_of(header, path)
    if camera is not None and camera != cam:
        raise InputDataError(
            f"expected a {camera} event list but INSTRUME={header.get('INSTRUME')!r} ({cam})", path
        )
    names = [n.upper() for n in hdu.columns.names]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise InputDataError(f"EVENTS lacks required column(s) {', '.join(missing)}", path)
    wanted = (
        list(hdu.columns.names) if columns is None else list(dict.fromkeys([*REQUIRED_COLUMNS, *columns]))
    )
    absent = [c for c in wanted if c.upper() not in names]
    if absent:
        raise InputDataError(f"EVENTS lacks requested column(s) {', '.join(absent)}", path)
    nrows = int(header.get("NAXIS2", 0))
    if nrows == 0:
        raise InputDataError("EVENTS extension holds no events", path)
    data = hdu.data
    if data is None or len(data) != nrows:
        raise InputDataError("EVENTS data shorter than NAXIS2 (truncated file)", path)
    whole: dict[str, np.ndarray] | None = None
    if prefilter is None:
        cols = {c.upper(): _native(data[c]) for c in wanted}
    else:
        # Streaming path: only the rows passing ``prefilter`` are kept, chunk by chunk, so memory
        # is O(kept rows + one chunk) (uncompressed files are memory-mapped).
        parts: dict[str, list[np.ndarray]] = {c.upper(): [] for c in wanted}
        for start in range(0, nrows, chunk_rows):
            chunk = {c.upper(): _native(data.field(c)[start : start + chunk_rows]) for c in wanted}
            keep = np.asarray(prefilter(chunk), dtype=bool)
            for k, v in chunk.items():
                parts[k].append(v[keep])
        if keep_unscreened and nrows <= chunk_rows:
            whole = chunk  # the one chunk is the whole list
        cols = {k: np.concatenate(v) for k, v in parts.items()}
        if cols["TIME"].size == 0:
            raise InputDataError("no events pass the pre-selection", path)
    time = cols["TIME"]
    if not np.all(np.isfinite(time)):
        raise InputDataError("TIME holds non-finite values", path)
    resorted = False
    if time.size > 1:
        dt = np.diff(time)
        if np.any(dt < 0):
            i = int(np.flatnonzero(dt < 0)[0])
            if time_order == "require":
                raise InputDataError(
                    f"TIME is not monotonic (row {i + 1}: {time[i]!r} > row {i + 2}: {time[i + 1]!r})", path
                )
            # SAS-made lists merged per CCD/node are often not time-ordered: sort once, stably.
            order = np.argsort(time, kind="stable")
            cols = {k: v[order] for k, v in cols.items()}
            resorted = True
    gti_ccd = _read_gtis(hdul, header, cols["CCDNR"], path)
    if all(g.shape[0] == 0 for g in gti_ccd.values()):
        raise InputDataError("GTI tables sum to 0 s of exposure (no good time)", path)
    if whole is not None:
        _keep_unscreened(hdul, header, cam, whole, gti_ccd, cols["CCDNR"], path, nrows)
    return EventList(
        camera=cam,
        header=header,
        columns=cols,
        gti_ccd=gti_ccd,
        gti=_gti_union(gti_ccd),
        path=path,
        resorted=resorted,
        n_rows_file=nrows,
    )


def flag_mask_for(camera: str, flag: str | int | None, header: Mapping[str, Any] | None = None) -> int | None:
    """Translate a config ``flag`` (``xmmea`` | ``zero`` | int | None) into a FLAG bit mask.

    ``xmmea`` uses the ``XMMEA_EP``/``XMMEA_EM`` definition in ``header`` when present, else
    :data:`XMMEA_DEFAULT`; ``zero`` means ``FLAG == 0`` (mask of all bits); ``None`` no cut.
    """
    if flag is None:
        return None
    if isinstance(flag, (int, np.integer)) and not isinstance(flag, bool):
        return int(flag)
    text = str(flag).strip().lower()
    if text == "zero":
        return 0xFFFFFFFF
    if text == "xmmea":
        key = "XMMEA_EP" if camera == "pn" else "XMMEA_EM"
        if header is not None and key in header:
            m = _XMMEA_RE.search(str(header[key]))
            if m:
                return int(m.group(1), 16)
        return XMMEA_DEFAULT[camera]
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"flag must be 'xmmea', 'zero' or an integer bit mask, got {flag!r}") from None


def _mask_as(mask: int, dtype: Any) -> Any:
    """The bit mask in the FLAG column's dtype (two's complement for masks above its max)."""
    dtype = np.dtype(dtype)
    bits = 8 * dtype.itemsize
    mask &= (1 << bits) - 1
    return (
        np.array(mask, dtype=np.dtype(f"u{dtype.itemsize}")).view(dtype)[()]
        if dtype.kind == "i"
        else dtype.type(mask)
    )


def screen_mask(
    cols: Mapping[str, np.ndarray],
    *,
    pattern_max: int | None = None,
    flag_mask: int | None = None,
    pi_min: float | None = None,
    pi_max: float | None = None,
    ccds: Sequence[int] | None = None,
) -> np.ndarray:
    """Boolean mask of events passing the standard selections (see :func:`screen`)."""
    n = cols["PI"].size
    keep = cols["PATTERN"] <= pattern_max if pattern_max is not None else np.ones(n, dtype=bool)
    if flag_mask is not None:
        keep &= (cols["FLAG"] & _mask_as(flag_mask, cols["FLAG"].dtype)) == 0
    if pi_min is not None:
        keep &= cols["PI"] >= pi_min
    if pi_max is not None:
        keep &= cols["PI"] <= pi_max
    if ccds is not None:
        keep &= np.isin(cols["CCDNR"], np.asarray(list(ccds)))
    return keep


def screen(
    evl: EventList,
    *,
    camera: str | None = None,
    pattern_max: int | None = None,
    flag_mask: int | None = None,
    pi_min: float | None = None,
    pi_max: float | None = None,
    ccds: Sequence[int] | None = None,
) -> EventList:
    """Apply the SAS standard event selections.

    Parameters
    ----------
    evl : EventList
    camera : str, optional
        Checked against ``evl.camera``.
    pattern_max : int, optional
        Keep ``PATTERN <= pattern_max`` (pn 4, MOS 12).
    flag_mask : int, optional
        Keep ``(FLAG & flag_mask) == 0`` (see :func:`flag_mask_for`).
    pi_min, pi_max : float, optional
        PI range [eV], inclusive as in ``PI in [pi_min:pi_max]``.
    ccds : sequence of int, optional
        Keep only these CCDNR; the other CCDs' GTIs are dropped too.
    """
    if camera is not None and camera != evl.camera:
        raise ValueError(f"screen(camera={camera!r}) given a {evl.camera} event list")
    keep = screen_mask(
        evl.columns, pattern_max=pattern_max, flag_mask=flag_mask, pi_min=pi_min, pi_max=pi_max, ccds=ccds
    )
    out = evl.select(keep)
    if ccds is not None:
        out.gti_ccd = {c: g for c, g in evl.gti_ccd.items() if c in set(ccds)}
        out.gti = _gti_union(out.gti_ccd)
    return out


def screen_with_gti(
    evl: EventList,
    gti: np.ndarray,
    *,
    pattern_max: int | None = None,
    flag_mask: int | None = None,
    pi_min: float | None = None,
    pi_max: float | None = None,
    ccds: Sequence[int] | None = None,
    keep: np.ndarray | None = None,
) -> tuple[EventList, int]:
    """``screen(evl, ...).with_gti(gti)`` with one copy of the columns.

    ``keep`` is the :func:`screen_mask` of the same selections when the caller already has it.
    Returns the cleaned list and the number of events that passed the screening alone.
    """
    if keep is None:
        keep = screen_mask(
            evl.columns, pattern_max=pattern_max, flag_mask=flag_mask, pi_min=pi_min, pi_max=pi_max, ccds=ccds
        )
    base = evl
    if ccds is not None:
        gti_ccd = {c: g for c, g in evl.gti_ccd.items() if c in set(ccds)}
        base = replace(evl, gti_ccd=gti_ccd, gti=_gti_union(gti_ccd))
    return base.with_gti(gti, keep=keep), int(keep.sum())


def _gti_hdu(g: np.ndarray, name: str, *, ccd: int | None = None) -> fits.BinTableHDU:
    g = gtimod.as_gti(g)
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="START", format="D", unit="s", array=g[:, 0]),
            fits.Column(name="STOP", format="D", unit="s", array=g[:, 1]),
        ],
        name=name,
    )
    hdu.header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    hdu.header["HDUCLAS1"] = ("GTI", "table contains good time intervals")
    hdu.header["HDUCLAS2"] = ("STANDARD", "standard GTIs")
    hdu.header["TIMEUNIT"] = "s"
    hdu.header["ONTIME"] = (gtimod.exposure(g), "[s] sum of the GTIs")
    if ccd is not None:
        hdu.header["CCDID"] = (ccd, "CCD these GTIs apply to")
    if g.shape[0]:
        hdu.header["TSTART"] = float(g[0, 0])
        hdu.header["TSTOP"] = float(g[-1, 1])
    return hdu


def write_gti(
    gti: np.ndarray, path: str | Path, *, header: Mapping[str, Any] | None = None, extname: str = "STDGTI"
) -> Path:
    """Write a GTI table as an OGIP GTI file (atomic)."""
    hdu = _gti_hdu(gti, extname)
    if header:
        for key in ("TELESCOP", "INSTRUME", "OBS_ID", "MJDREF", "TIMESYS", "TIMEREF"):
            if key in header:
                hdu.header[key] = header[key]
    return atomic_write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), path, verify=False)


_KEEP_EVENT_KEYS = re.compile(
    r"^(TELESCOP|INSTRUME|OBS_ID|EXP_ID|EXPIDSTR|DATE-OBS|DATE-END|OBJECT|RA_OBJ|DEC_OBJ|RA_NOM|DEC_NOM|RA_PNT|"
    r"DEC_PNT|PA_PNT|FILTER|SUBMODE|DATAMODE|EQUINOX|RADECSYS|REF[XY]\w+|MJDREF|TIMESYS|TIMEREF|TIMEUNIT|"
    r"TASSIGN|TIMEZERO|CLOCKAPP|XMMEA_\w+|TELAPSE|REVOLUT|OBS_MODE|QPBCORN|QPBAREA)$"
)


def write_events(
    evl: EventList,
    path: str | Path,
    *,
    gti: np.ndarray | None = None,
    history: Sequence[str] = (),
    remember: bool = False,
) -> Path:
    """Write an event list with per-CCD ``STDGTInn`` tables and a combined ``GTI`` table (atomic).

    Parameters
    ----------
    evl : EventList
    path : str or Path
    gti : ndarray, optional
        Extra time filter [s]; per-CCD GTIs are intersected with it and events outside dropped.
    history : sequence of str
        HISTORY lines (e.g. the selection expression).
    remember : bool
        Also keep the written list in :func:`read_clean_events`' cache, as reading the file back would
        give it (the header is read back from the file, the columns are the ones written), so the next
        steps of the ObsID in this process do not read it again (the filter step's cleaned lists).
    """
    if gti is not None:
        evl = evl.with_gti(gti)
    cols = []
    formats: dict[str, str] = {}
    for name, arr in evl.columns.items():
        fmt = formats[name] = _EVENT_FORMATS.get(name) or _fits_format(arr)
        cols.append(fits.Column(name=name, format=fmt, array=arr))
    ev = fits.BinTableHDU.from_columns(cols, name="EVENTS")
    for key in evl.header:
        if _KEEP_EVENT_KEYS.match(str(key)):
            ev.header[key] = (evl.header[key], evl.header.comments[key])
    for name in ("X", "Y", "DETX", "DETY", "PI", "PATTERN", "CCDNR", "RAWX", "RAWY"):
        if name in evl.columns:
            _copy_column_keys(evl.header, ev.header, name)
    # Dead-time factors are properties of the input exposure: keep LIVETInn/ONTIMEnn for the new GTIs.
    for ccd, g in sorted(evl.gti_ccd.items()):
        on = gtimod.exposure(g)
        ev.header[f"ONTIME{ccd:02d}"] = (on, "[s] sum of GTIs for this CCD")
        ev.header[f"LIVETI{ccd:02d}"] = (on * evl.deadtime_factor(ccd), "[s] live time for this CCD")
    ev.header["ONTIME"] = (evl.ontime(), "[s] sum of GTIs for the central CCD")
    ev.header["LIVETIME"] = (evl.ontime() * evl.deadtime_factor(), "[s] live time for the central CCD")
    for line in history:
        ev.header.add_history(line)
    hdus: list[Any] = [fits.PrimaryHDU(), ev]
    for ccd, g in sorted(evl.gti_ccd.items()):
        hdus.append(_gti_hdu(g, f"STDGTI{ccd:02d}", ccd=ccd))
    hdus.append(_gti_hdu(evl.gti, "GTI"))
    for key in ("TELESCOP", "INSTRUME", "OBS_ID", "OBJECT", "FILTER", "DATE-OBS"):
        if key in evl.header:
            hdus[0].header[key] = evl.header[key]
    out = atomic_write_fits(fits.HDUList(hdus), path, verify=False)
    if remember:
        _remember_written(evl, out, formats)
    return out


#: FITS formats of the standard EPIC columns as written (others follow their dtype, :func:`_fits_format`).
_EVENT_FORMATS = {"TIME": "D", "X": "J", "Y": "J", "PI": "I", "PATTERN": "B", "FLAG": "J", "CCDNR": "B"}
#: Native dtype astropy reads each written format back as.
_FORMAT_DTYPES = {
    "D": np.float64,
    "E": np.float32,
    "K": np.int64,
    "J": np.int32,
    "I": np.int16,
    "B": np.uint8,
}


def _remember_written(evl: EventList, path: Path, formats: Mapping[str, str]) -> None:
    """Put the list just written to ``path`` into the clean-list cache as :func:`read_events` would read it.

    Only when reading it back could give nothing else: every column already has the dtype its format is
    read back as, TIME is finite and ordered, every CCD has its own ``STDGTInn`` table; otherwise (or on
    any doubt) nothing is kept and the next reader reads the file.
    """
    names = [n.upper() for n in evl.columns]
    if len(set(names)) != len(names) or any(c not in names for c in REQUIRED_COLUMNS):
        return
    cols: dict[str, np.ndarray] = {}
    for name, arr in evl.columns.items():
        dtype = _FORMAT_DTYPES.get(formats[name])
        if dtype is None or np.asarray(arr).dtype != np.dtype(dtype):
            return
        cols[name.upper()] = np.array(arr, dtype=dtype)
    time = cols["TIME"]
    if time.size == 0 or not np.all(np.isfinite(time)) or (time.size > 1 and np.any(np.diff(time) < 0)):
        return
    if not evl.gti_ccd or any(not 0 <= int(c) < 100 for c in evl.gti_ccd):
        return
    try:
        gti_ccd = {int(c): gtimod.normalise(gtimod.as_gti(evl.gti_ccd[c])) for c in sorted(evl.gti_ccd)}
        if all(g.shape[0] == 0 for g in gti_ccd.values()):
            return
        header = fits.getheader(path, "EVENTS")
        camera = _camera_of(header, path)
        key = file_version(path)
    except (OSError, ValueError, KeyError, InputDataError):
        return
    written = EventList(
        camera=camera,
        header=header,
        columns=cols,
        gti_ccd=gti_ccd,
        gti=_gti_union(gti_ccd),
        path=path,
        resorted=False,
        n_rows_file=int(time.size),
    )
    _clean_cache_put(key, written)


def _fits_format(arr: np.ndarray) -> str:
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f":
        return "D" if size == 8 else "E"
    if kind in "iu":
        return {1: "B", 2: "I", 4: "J", 8: "K"}[size]
    if kind == "b":
        return "L"
    raise ValueError(f"cannot write column of dtype {arr.dtype}")


def _copy_column_keys(src: Mapping[str, Any], dst: fits.Header, name: str) -> None:
    src_idx = next(
        (str(k)[5:] for k in src if str(k).startswith("TTYPE") and str(src[k]).strip() == name), None
    )
    dst_idx = next(
        (str(k)[5:] for k in dst if str(k).startswith("TTYPE") and str(dst[k]).strip() == name), None
    )
    if src_idx is None or dst_idx is None:
        return
    for stem in ("TLMIN", "TLMAX", "TCRPX", "TCRVL", "TCDLT", "TCTYP", "TCUNI", "TUNIT", "TNULL"):
        key = f"{stem}{src_idx}"
        if key in src:
            dst[f"{stem}{dst_idx}"] = src[key]


def iter_event_chunks(
    path: str | Path,
    *,
    columns: Sequence[str] = ("TIME", "PI", "PATTERN", "FLAG", "CCDNR"),
    chunk_rows: int = 2_000_000,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the EVENTS columns in row chunks (native byte order), for lists larger than memory.

    Uncompressed files are memory-mapped, so only one chunk is resident at a time.
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=True) as hdul:
            hdu = _events_hdu(hdul, path)
            names = [n.upper() for n in hdu.columns.names]
            missing = [c for c in columns if c.upper() not in names]
            if missing:
                raise InputDataError(f"EVENTS lacks column(s) {', '.join(missing)}", path)
            n = int(hdu.header.get("NAXIS2", 0))
            data = hdu.data
            for start in range(0, n, chunk_rows):
                stop = min(n, start + chunk_rows)
                yield {c.upper(): _native(data.field(c)[start:stop]) for c in columns}
    except InputDataError:
        raise
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read event list ({exc})", path) from exc


def stream_filter_bin(
    chunks: Iterator[Mapping[str, np.ndarray]] | Sequence[Mapping[str, np.ndarray]],
    *,
    gti: np.ndarray | None = None,
    pattern_max: int | None = None,
    flag_mask: int | None = None,
    pi_min: float | None = None,
    pi_max: float | None = None,
    chan_width_ev: int = 5,
    n_chan: int = 4096,
) -> tuple[np.ndarray, int, int]:
    """Screen and bin events chunk by chunk into a PI channel histogram.

    Returns ``(counts per channel, events in, events kept)``; memory is O(chunk).
    Channel ``k`` covers ``PI`` in ``[k*chan_width_ev, (k+1)*chan_width_ev)`` as SAS ``specchannel``.
    """
    hist = np.zeros(n_chan, dtype=np.int64)
    g = None if gti is None else gtimod.normalise(gti)
    n_in = n_out = 0
    for cols in chunks:
        keep = screen_mask(cols, pattern_max=pattern_max, flag_mask=flag_mask, pi_min=pi_min, pi_max=pi_max)
        if g is not None:
            keep &= gtimod.mask_in_gti(cols["TIME"], g)
        pi = cols["PI"][keep]
        chan = pi // chan_width_ev
        chan = chan[(chan >= 0) & (chan < n_chan)]
        hist += np.bincount(chan.astype(np.intp), minlength=n_chan)[:n_chan]
        n_in += int(cols["PI"].size)
        n_out += int(keep.sum())
    return hist, n_in, n_out
