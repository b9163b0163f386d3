"""OGIP spectral files: PHA (type I and rows of type II), RMF and ARF, read and written.

The readers follow OGIP memos CAL/GEN/92-007 (PHA) and CAL/GEN/92-002 (RMF/ARF) the way
XSPEC and Sherpa read them:

* PHA: COUNTS or RATE (rates are turned into counts with EXPOSURE), GROUPING / QUALITY,
  EXPOSURE / BACKSCAL / AREASCAL as a keyword or a column, STAT_ERR, POISSERR.
* RMF: ``MATRIX`` or ``SPECRESP MATRIX`` with N_GRP / F_CHAN / N_CHAN as variable-length or
  fixed-length arrays; the first channel number is the TLMIN of F_CHAN (else the first CHANNEL
  of EBOUNDS, else 1).
* RESPFILE / ANCRFILE / BACKFILE are resolved relative to the PHA's directory
  (:func:`resolve_sibling`).

Writers produce files that XSPEC and Sherpa load (HDUCLASS OGIP, HDUCLAS1 SPECTRUM, HDUVERS 1.2.1,
CHANTYPE, DETCHANS, TLMIN/TLMAX, POISSERR, EBOUNDS and MATRIX with variable-length columns) and
write atomically through :mod:`xmmcore.fsutil`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.sparse as sp
from astropy.io import fits

from .errors import InputDataError
from .fsutil import atomic_write_fits, file_version, regular_file

#: Largest PHA/RMF/ARF read [bytes] (a pn RMF is ~50 MB): a FIFO, a device or a runaway file is refused
#: by ``stat`` before anything opens it.
MAX_OGIP_BYTES = 2 << 30

__all__ = [
    "ARF",
    "PHA",
    "RMF",
    "read_arf",
    "read_pha",
    "read_rmf",
    "resolve_sibling",
    "write_arf",
    "write_pha",
    "write_rmf",
]

_NONE_NAMES = {"", "none", "NONE", "None", "%match%"}

# Keywords the writers set themselves (never copied from ``header``).
_STRUCTURAL = {
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "PCOUNT",
    "GCOUNT",
    "TFIELDS",
    "EXTNAME",
    "CHECKSUM",
    "DATASUM",
    "SIMPLE",
    "EXTEND",
    "END",
    "COMMENT",
    "HISTORY",
    "",
}


def _is_structural(key: str) -> bool:
    return (
        key in _STRUCTURAL
        or key[:5]
        in {"TTYPE", "TFORM", "TUNIT", "TLMIN", "TLMAX", "TDIM", "TNULL", "TSCAL", "TZERO", "TDISP"}
        or key[:5] == "NAXIS"
    )


@dataclass
class PHA:
    """A type I OGIP spectrum.

    Attributes
    ----------
    channel : ndarray of int
        Channel numbers.
    counts : ndarray of float
        Counts per channel (integer-valued for Poisson data).
    exposure : float
        Exposure time in s.
    backscal : float or ndarray
        Area scaling of the extraction region (BACKSCAL).
    areascal : float or ndarray
        AREASCAL (1 by default).
    grouping : ndarray of int or None
        1 = start of a group, -1 = continuation, 0 = no grouping information.
    quality : ndarray of int or None
        0 = good; anything else is excluded (XSPEC drops quality 1, 2 and 5).
    stat_err : ndarray or None
        STAT_ERR column (counts), used only when ``poisserr`` is False and asked for.
    poisserr : bool
        POISSERR keyword.
    respfile, ancrfile, backfile : str or None
        RESPFILE / ANCRFILE / BACKFILE as written in the header (``None`` if absent or "none").
    header : dict
        Other keywords of the SPECTRUM extension (TELESCOP, INSTRUME, OBS_ID, FILTER, ...).
    path : Path or None
        File the spectrum was read from.
    """

    channel: np.ndarray
    counts: np.ndarray
    exposure: float
    backscal: float | np.ndarray = 1.0
    areascal: float | np.ndarray = 1.0
    grouping: np.ndarray | None = None
    quality: np.ndarray | None = None
    stat_err: np.ndarray | None = None
    poisserr: bool = True
    respfile: str | None = None
    ancrfile: str | None = None
    backfile: str | None = None
    header: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def resolve(self, which: str) -> Path | None:
        """Return the path of ``respfile``, ``ancrfile`` or ``backfile`` relative to this PHA's directory."""
        name = getattr(self, which)
        return resolve_sibling(name, self.path)


@dataclass
class RMF:
    """A redistribution matrix (RMF or RSP).

    Attributes
    ----------
    energ_lo, energ_hi : ndarray
        Edges of the ``n_e`` photon-energy bins in keV.
    matrix : scipy.sparse.csr_matrix
        ``n_e x n_chan`` probability that a photon of energy bin i lands in channel j
        (includes the effective area for an RSP).
    e_min, e_max : ndarray
        Nominal channel energy bounds from EBOUNDS in keV (``n_chan``).
    channel_offset : int
        Number of the first channel (TLMIN of F_CHAN, or the first EBOUNDS CHANNEL).
    header : dict
        Other keywords of the matrix extension.
    path : Path or None
        File read from.
    """

    energ_lo: np.ndarray
    energ_hi: np.ndarray
    matrix: sp.csr_matrix
    e_min: np.ndarray
    e_max: np.ndarray
    channel_offset: int = 1
    header: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_chan(self) -> int:
        """Number of channels."""
        return int(self.matrix.shape[1])


@dataclass
class ARF:
    """An ancillary response (effective area).

    Attributes
    ----------
    energ_lo, energ_hi : ndarray
        Energy-bin edges in keV.
    specresp : ndarray
        Effective area in cm^2.
    header : dict
        Other keywords of the SPECRESP extension.
    path : Path or None
        File read from.
    """

    energ_lo: np.ndarray
    energ_hi: np.ndarray
    specresp: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# ----------------------------------------------------------------------------------------- helpers
def resolve_sibling(name: str | None, pha_path: str | Path | None) -> Path | None:
    """Resolve a RESPFILE/ANCRFILE/BACKFILE value relative to the PHA's directory.

    Returns ``None`` for an empty or ``none`` value. Type II row specifiers (``file{3}``)
    are dropped. The file need not exist: callers decide whether that is an error.
    """
    if name is None:
        return None
    name = str(name).strip()
    if name in _NONE_NAMES:
        return None
    if name.endswith("}") and "{" in name:
        name = name[: name.index("{")]
    p = Path(name)
    if not p.is_absolute() and pha_path is not None:
        p = Path(pha_path).parent / p
    return p


def _open(path: Path) -> fits.HDUList:
    if not path.exists():
        raise InputDataError("file does not exist", path)
    regular_file(path, max_bytes=MAX_OGIP_BYTES, what="OGIP file")
    try:
        hdul = fits.open(path, memmap=False)
    except Exception as exc:  # astropy raises OSError/ValueError/TypeError on corrupt files
        raise InputDataError(f"not a readable FITS file ({exc})", path) from exc
    try:
        # A truncated file fails here, by name, not later as a reshape error deep in astropy: every
        # HDU's data must end inside the file (headers are read, data only when used: a spectrum
        # carries a dozen data-subspace GTI tables that reading would parse for nothing).
        size = path.stat().st_size
        for i, hdu in enumerate(hdul):
            # the HDU's own fileinfo: HDUList.fileinfo(i) also checks every HDU for resizing (quadratic)
            end = hdu.fileinfo()["datLoc"] + _data_bytes(hdu.header)
            if end > size:
                raise OSError(f"the file is truncated: HDU {i} ({hdu.name}) ends at byte {end} of {size}")
    except Exception as exc:
        hdul.close()
        raise InputDataError(f"truncated or corrupt FITS data ({exc})", path) from exc
    return hdul


def _data_bytes(header: fits.Header) -> int:
    """Size of an HDU's data without padding (FITS standard 4.4.1: |BITPIX|/8 x GCOUNT x (PCOUNT + prod NAXISn))."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    first = 2 if header.get("GROUPS") and int(header.get("NAXIS1", 0)) == 0 else 1  # random groups
    for k in range(first, naxis + 1):
        n *= int(header.get(f"NAXIS{k}", 0))
    return (
        abs(int(header.get("BITPIX", 8)))
        // 8
        * int(header.get("GCOUNT", 1))
        * (int(header.get("PCOUNT", 0)) + n)
    )


def _find_hdu(hdul: fits.HDUList, path: Path, names: tuple[str, ...], hduclas: str | None = None) -> Any:
    for hdu in hdul[1:]:
        if hdu.name.upper() in names:
            return hdu
    if hduclas is not None:
        for hdu in hdul[1:]:
            if str(hdu.header.get("HDUCLAS1", "")).upper() == hduclas:
                return hdu
    raise InputDataError(f"no {' or '.join(names)} extension (HDUs: {[h.name for h in hdul]})", path)


def _header_dict(header: fits.Header) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in header.items():
        if not key or _is_structural(key):
            continue
        out[key] = value
    return out


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return None if s in _NONE_NAMES else s


def _col_or_key(hdu: Any, name: str, path: Path, default: Any, row: int | None) -> Any:
    """Value of ``name`` from a column (array, or one row) or from the header keyword."""
    cols = [c.upper() for c in hdu.columns.names]
    if name in cols:
        value = np.asarray(hdu.data[name])
        if row is not None:
            value = value[row]
        value = np.asarray(value, dtype=float)
        if value.ndim == 0:
            return float(value)
        return value
    if name in hdu.header:
        try:
            return float(hdu.header[name])
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"keyword {name}={hdu.header[name]!r} is not a number", path) from exc
    return default


def _native(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


# --------------------------------------------------------------------------------------------- PHA
def read_pha(path: str | Path, row: int | None = None) -> PHA:
    """Read a type I spectrum, or row ``row`` (0-based) of a type II file.

    Parameters
    ----------
    path : str or Path
        OGIP PHA file.
    row : int, optional
        Row of a type II file (required when the file is type II and has more than one row).

    Returns
    -------
    PHA
        RATE spectra are converted to counts (rate x EXPOSURE).

    Raises
    ------
    InputDataError
        Missing file or extension, missing CHANNEL/COUNTS/RATE column, bad EXPOSURE.
    """
    path = Path(path)
    if row is None:
        kept = _written_pha(path)
        if kept is not None:
            return kept
    with _open(path) as hdul:
        return _pha_from_hdu(_find_hdu(hdul, path, ("SPECTRUM",), hduclas="SPECTRUM"), path, row)


def _pha_from_hdu(hdu: Any, path: Path, row: int | None) -> PHA:
    """The :class:`PHA` of a SPECTRUM HDU (``read_pha`` after the file is opened)."""
    hdr = hdu.header
    data = hdu.data
    if data is None or len(data) == 0:
        raise InputDataError(f"extension {hdu.name} has no rows", path)
    cols = [c.upper() for c in hdu.columns.names]
    type2 = (
        str(hdr.get("HDUCLAS4", "")).upper() == "TYPE:II"
        or ("COUNTS" in cols and np.asarray(data["COUNTS"]).ndim == 2)
        or ("RATE" in cols and np.asarray(data["RATE"]).ndim == 2)
    )
    if type2:
        if row is None:
            if len(data) != 1:
                raise InputDataError(f"type II file with {len(data)} rows: give row=", path)
            row = 0
        if not 0 <= row < len(data):
            raise InputDataError(f"row {row} out of range (file has {len(data)} rows)", path)
    else:
        row = None

    def column(name: str, dtype: Any) -> np.ndarray | None:
        if name not in cols:
            return None
        value = np.asarray(data[name])
        if row is not None:
            value = np.asarray(value[row])
        return _native(value, dtype)

    exposure = _col_or_key(hdu, "EXPOSURE", path, None, row)
    if exposure is None:
        raise InputDataError("keyword EXPOSURE missing from the SPECTRUM extension", path)
    exposure = float(exposure)
    if not np.isfinite(exposure) or exposure < 0:
        raise InputDataError(f"keyword EXPOSURE={exposure} is not a valid exposure time", path)

    counts = column("COUNTS", float)
    if counts is None:
        rate = column("RATE", float)
        if rate is None:
            raise InputDataError(f"extension {hdu.name} has neither COUNTS nor RATE column", path)
        if exposure <= 0:
            raise InputDataError("RATE spectrum with EXPOSURE <= 0 cannot be turned into counts", path)
        counts = rate * exposure
    bad = np.flatnonzero(~np.isfinite(counts))
    if bad.size:
        raise InputDataError(
            f"COUNTS/RATE has {bad.size} non-finite value(s) (first at row {bad[0] + 1})", path
        )
    n = counts.size
    channel = column("CHANNEL", np.int64)
    if channel is None:
        tlmin = 1
        for i, c in enumerate(hdu.columns.names, start=1):
            if c.upper() in ("COUNTS", "RATE"):
                tlmin = int(hdr.get(f"TLMIN{i}", 1))
        channel = np.arange(tlmin, tlmin + n, dtype=np.int64)
    if channel.size != n:
        raise InputDataError(f"CHANNEL has {channel.size} entries but COUNTS has {n}", path)

    grouping = column("GROUPING", np.int64)
    if grouping is None and "GROUPING" in hdr and int(hdr["GROUPING"]) == 0:
        grouping = None
    quality = column("QUALITY", np.int64)
    if quality is None and "QUALITY" in hdr:
        q = int(hdr["QUALITY"])
        quality = np.full(n, q, dtype=np.int64) if q != 0 else None
    stat_err = column("STAT_ERR", float)
    poisserr = bool(hdr.get("POISSERR", stat_err is None))

    backscal = _col_or_key(hdu, "BACKSCAL", path, 1.0, row)
    areascal = _col_or_key(hdu, "AREASCAL", path, 1.0, row)

    def fname(key: str) -> str | None:
        if key.upper() in cols:
            v = np.asarray(data[key.upper()])
            return _str_or_none(v[row] if row is not None else v[0])
        return _str_or_none(hdr.get(key))

    header = _header_dict(hdr)
    for key in (
        "EXPOSURE",
        "BACKSCAL",
        "AREASCAL",
        "POISSERR",
        "RESPFILE",
        "ANCRFILE",
        "BACKFILE",
        "GROUPING",
        "QUALITY",
    ):
        header.pop(key, None)
    return PHA(
        channel=channel,
        counts=counts,
        exposure=exposure,
        backscal=backscal,
        areascal=areascal,
        grouping=grouping,
        quality=quality,
        stat_err=stat_err,
        poisserr=poisserr,
        respfile=fname("RESPFILE"),
        ancrfile=fname("ANCRFILE"),
        backfile=fname("BACKFILE"),
        header=header,
        path=path,
    )


#: Spectra written by :func:`write_pha` in this process, as :func:`read_pha` reads them back, by file version
#: (path, inode, size, mtime): the fit step of the ObsID reads the spectra its spectra step has just written.
#: Only the latest folder's are kept (a worker's current ObsID), so worker memory stays flat.
_written_phas: dict[tuple[Any, ...], PHA] = {}
_written_lock = threading.Lock()


class _WrittenRows(dict):  # type: ignore[type-arg]
    """Column arrays by name whose ``len`` is the number of rows, as a table's data."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        super().__init__(columns)
        self.n_rows = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self.n_rows


class _WrittenHDU:
    """The SPECTRUM HDU just written: its header read back from the file and the column arrays written."""

    def __init__(self, header: fits.Header, columns: dict[str, np.ndarray]) -> None:
        self.header = header
        self.name = "SPECTRUM"
        self.data = _WrittenRows(columns)
        self.columns = SimpleNamespace(names=list(columns))


def _remember_pha(path: Path, columns: dict[str, np.ndarray]) -> None:
    try:
        header = fits.getheader(path, "SPECTRUM")
        pha = _pha_from_hdu(_WrittenHDU(header, columns), path, None)
        key = file_version(path)
    except (OSError, KeyError, ValueError, InputDataError):
        return  # read_pha reads the file and says what is wrong
    with _written_lock:
        for k in [k for k in _written_phas if Path(k[0]).parent != Path(key[0]).parent]:
            del _written_phas[k]
        _written_phas[key] = pha


def _written_pha(path: Path) -> PHA | None:
    """A copy of the spectrum :func:`write_pha` wrote to ``path`` if the file is unchanged since, else None."""
    import copy

    try:
        key = file_version(path)
    except OSError:
        return None
    with _written_lock:
        pha = _written_phas.get(key)
    return None if pha is None else replace(copy.deepcopy(pha), path=path)


def _apply_extra(hdr: fits.Header, extra: dict[str, Any], skip: set[str]) -> None:
    for key, value in extra.items():
        if _is_structural(key) or key in skip or len(key) > 8:
            continue
        if isinstance(value, (np.generic,)):
            value = value.item()
        if isinstance(value, (str, int, float, bool)):
            hdr[key] = value


def write_pha(pha: PHA, path: str | Path, *, extra_hdus: Any = (), verify_extra: bool = True) -> Path:
    """Write ``pha`` as an OGIP type I spectrum, atomically.

    Parameters
    ----------
    pha : PHA
        Spectrum to write. Integer-valued counts are written as 32-bit integers (``J``),
        others as doubles.
    path : str or Path
        Output file.
    extra_hdus : sequence of astropy HDUs
        Appended after the SPECTRUM extension (e.g. GTI, region).
    verify_extra : bool
        Run astropy's output verification for them (``False`` for HDUs built with the header API,
        whose cards were validated when created, as :func:`xmmcore.sas_dss.dss_header_and_tables`').

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    counts = np.asarray(pha.counts, dtype=float)
    n = counts.size
    channel = np.asarray(pha.channel, dtype=np.int64)
    if channel.size != n:
        raise InputDataError(f"PHA has {channel.size} channels but {n} counts", path)
    integer = bool(
        np.all(np.isfinite(counts))
        and np.all(counts == np.round(counts))
        and (n == 0 or np.abs(counts).max() < 2**31)
    )
    cols = [fits.Column(name="CHANNEL", format="J", array=channel.astype(np.int32))]
    if integer:
        cols.append(fits.Column(name="COUNTS", format="J", unit="count", array=counts.astype(np.int32)))
    else:
        cols.append(fits.Column(name="COUNTS", format="D", unit="count", array=counts))
    if pha.stat_err is not None:
        cols.append(
            fits.Column(name="STAT_ERR", format="D", unit="count", array=np.asarray(pha.stat_err, float))
        )
    if pha.grouping is not None:
        cols.append(fits.Column(name="GROUPING", format="I", array=np.asarray(pha.grouping, np.int16)))
    if pha.quality is not None:
        cols.append(fits.Column(name="QUALITY", format="I", array=np.asarray(pha.quality, np.int16)))
    for key in ("BACKSCAL", "AREASCAL"):
        value = getattr(pha, key.lower())
        if np.ndim(value) > 0:
            cols.append(fits.Column(name=key, format="D", array=np.asarray(value, float)))
    hdu = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    hdr = hdu.header
    tlmin = int(channel.min()) if n else 1
    tlmax = int(channel.max()) if n else 0
    hdr["TLMIN1"] = tlmin
    hdr["TLMAX1"] = tlmax
    extra = dict(pha.header)
    hdr["TELESCOP"] = str(extra.pop("TELESCOP", "XMM"))
    hdr["INSTRUME"] = str(extra.pop("INSTRUME", "UNKNOWN"))
    hdr["FILTER"] = str(extra.pop("FILTER", "NONE"))
    hdr["EXPOSURE"] = (float(pha.exposure), "exposure time [s]")
    for key in ("BACKSCAL", "AREASCAL"):
        value = getattr(pha, key.lower())
        if np.ndim(value) == 0:
            hdr[key] = float(value)
    hdr["CORRSCAL"] = float(extra.pop("CORRSCAL", 1.0))
    hdr["BACKFILE"] = pha.backfile or "none"
    hdr["CORRFILE"] = str(extra.pop("CORRFILE", "none"))
    hdr["RESPFILE"] = pha.respfile or "none"
    hdr["ANCRFILE"] = pha.ancrfile or "none"
    hdr["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    hdr["HDUCLAS1"] = ("SPECTRUM", "PHA dataset (OGIP memo OGIP-92-007)")
    hdr["HDUVERS"] = ("1.2.1", "version of format (OGIP memo OGIP-92-007)")
    hdr["HDUVERS1"] = "1.2.1"
    hdr["HDUCLAS2"] = str(extra.pop("HDUCLAS2", "TOTAL"))
    hdr["HDUCLAS3"] = ("COUNT", "PHA data stored as counts")
    hdr["CHANTYPE"] = str(extra.pop("CHANTYPE", "PI"))
    hdr["DETCHANS"] = int(extra.pop("DETCHANS", tlmax - tlmin + 1 if n else 0))
    hdr["POISSERR"] = bool(pha.poisserr)
    if pha.stat_err is None:
        hdr["STAT_ERR"] = 0
    hdr["SYS_ERR"] = 0
    if pha.grouping is None:
        hdr["GROUPING"] = 0
    if pha.quality is None:
        hdr["QUALITY"] = 0
    for key in (
        "HDUCLAS4",
        "HDUCLASS",
        "HDUCLAS1",
        "HDUCLAS3",
        "HDUVERS",
        "HDUVERS1",
        "STAT_ERR",
        "SYS_ERR",
        "GROUPING",
        "QUALITY",
        "POISSERR",
        "EXPOSURE",
        "BACKSCAL",
        "AREASCAL",
    ):
        extra.pop(key, None)
    _apply_extra(hdr, extra, skip=set())
    primary = fits.PrimaryHDU()
    for key in ("TELESCOP", "INSTRUME", "OBS_ID", "OBJECT"):
        if key in hdr:
            primary.header[key] = hdr[key]
    hdul = fits.HDUList([primary, hdu, *extra_hdus])
    # every card of the SPECTRUM HDU is set through the header API (validated when created): no output
    # verification pass unless extra HDUs of unknown origin come along
    out = atomic_write_fits(hdul, path, verify=bool(extra_hdus) and verify_extra)
    _remember_pha(out, {c.name: np.asarray(c.array) for c in cols})
    return out


# --------------------------------------------------------------------------------------------- RMF
def _rows_varlen(col: Any, n_rows: int) -> list[np.ndarray]:
    return [np.atleast_1d(np.asarray(col[i])) for i in range(n_rows)]


#: Parsed RMFs by content (SHA-1 of the file): the spectra and fit steps of every ObsID read the same
#: canned responses, so a worker parses each distinct file once.  Bounded, so worker memory stays flat.
_RMF_CACHE: OrderedDict[tuple[int, str], RMF] = OrderedDict()
_RMF_CACHE_SIZE = 4
_RMF_CACHE_LOCK = threading.Lock()


def read_rmf(path: str | Path) -> RMF:
    """Read an OGIP RMF (or RSP) into a sparse ``n_e x n_chan`` matrix (cached by file content).

    The returned matrix is shared between callers that read identical files: it is read-only.

    F_CHAN / N_CHAN / MATRIX may be variable-length or fixed-length arrays. The channel
    offset is the TLMIN keyword of F_CHAN when present, otherwise the first CHANNEL of
    EBOUNDS, otherwise 1 (OGIP's default).

    Raises
    ------
    InputDataError
        Missing MATRIX / EBOUNDS extension or column, inconsistent groups.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError("file does not exist", path)
    regular_file(path, max_bytes=MAX_OGIP_BYTES, what="RMF")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputDataError(f"cannot read RMF ({exc})", path) from exc
    key = (len(raw), hashlib.sha1(raw, usedforsecurity=False).hexdigest())
    with _RMF_CACHE_LOCK:
        hit = _RMF_CACHE.get(key)
        if hit is not None:
            _RMF_CACHE.move_to_end(key)
    if hit is not None:
        return replace(hit, path=path)
    rmf = _parse_rmf(path)
    for arr in (rmf.matrix.data, rmf.matrix.indices, rmf.matrix.indptr, rmf.energ_lo, rmf.energ_hi):
        arr.setflags(write=False)
    with _RMF_CACHE_LOCK:
        _RMF_CACHE[key] = rmf
        while len(_RMF_CACHE) > _RMF_CACHE_SIZE:
            _RMF_CACHE.popitem(last=False)
    return rmf


def _parse_rmf(path: Path) -> RMF:
    with _open(path) as hdul:
        mhdu = _find_hdu(hdul, path, ("MATRIX", "SPECRESP MATRIX"), hduclas="RESPONSE")
        ehdu = _find_hdu(hdul, path, ("EBOUNDS",))
        mcols = [c.upper() for c in mhdu.columns.names]
        for need in ("ENERG_LO", "ENERG_HI", "N_GRP", "F_CHAN", "N_CHAN", "MATRIX"):
            if need not in mcols:
                raise InputDataError(f"extension {mhdu.name} has no {need} column", path)
        ecols = [c.upper() for c in ehdu.columns.names]
        for need in ("CHANNEL", "E_MIN", "E_MAX"):
            if need not in ecols:
                raise InputDataError(f"EBOUNDS has no {need} column", path)
        e_chan = _native(ehdu.data["CHANNEL"], np.int64)
        e_min = _native(ehdu.data["E_MIN"], float)
        e_max = _native(ehdu.data["E_MAX"], float)
        n_chan = int(mhdu.header.get("DETCHANS", e_chan.size))
        if n_chan != e_chan.size:
            n_chan = e_chan.size
        fidx = mcols.index("F_CHAN") + 1
        if f"TLMIN{fidx}" in mhdu.header:
            offset = int(mhdu.header[f"TLMIN{fidx}"])
        elif e_chan.size:
            offset = int(e_chan[0])
        else:
            offset = 1
        data = mhdu.data
        n_e = len(data)
        energ_lo = _native(data["ENERG_LO"], float)
        energ_hi = _native(data["ENERG_HI"], float)
        n_grp = _native(data["N_GRP"], np.int64)
        f_chan = _rows_varlen(data["F_CHAN"], n_e)
        n_chan_col = _rows_varlen(data["N_CHAN"], n_e)
        mat = _rows_varlen(data["MATRIX"], n_e)
        rows: list[np.ndarray] = []
        colidx: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for i in range(n_e):
            ng = int(n_grp[i])
            if ng == 0:
                continue
            fc = f_chan[i][:ng].astype(np.int64) - offset
            nc = n_chan_col[i][:ng].astype(np.int64)
            total = int(nc.sum())
            m = np.asarray(mat[i], dtype=float)
            if m.size < total:
                raise InputDataError(
                    f"row {i + 1} of {mhdu.name}: MATRIX has {m.size} values but N_CHAN sums to {total}", path
                )
            idx = (
                np.concatenate([np.arange(f, f + c) for f, c in zip(fc, nc)])
                if ng > 1
                else np.arange(fc[0], fc[0] + nc[0])
            )
            if idx.size and (idx.min() < 0 or idx.max() >= n_chan):
                raise InputDataError(
                    f"row {i + 1} of {mhdu.name}: channels {idx.min() + offset}..{idx.max() + offset} outside "
                    f"{offset}..{offset + n_chan - 1} (check TLMIN of F_CHAN)",
                    path,
                )
            rows.append(np.full(idx.size, i, dtype=np.int64))
            colidx.append(idx)
            vals.append(m[:total])
        if rows:
            matrix = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(colidx))), shape=(n_e, n_chan)
            )
        else:
            matrix = sp.csr_matrix((n_e, n_chan))
        header = _header_dict(mhdu.header)
        return RMF(
            energ_lo=energ_lo,
            energ_hi=energ_hi,
            matrix=matrix,
            e_min=e_min,
            e_max=e_max,
            channel_offset=offset,
            header=header,
            path=path,
        )


def write_rmf(rmf: RMF, path: str | Path) -> Path:
    """Write ``rmf`` as an OGIP RMF (MATRIX + EBOUNDS, variable-length columns), atomically."""
    path = Path(path)
    mat = sp.csr_matrix(rmf.matrix)
    n_e, n_chan = mat.shape
    offset = int(rmf.channel_offset)
    n_grp = np.zeros(n_e, dtype=np.int16)
    f_chan: list[np.ndarray] = []
    n_chan_l: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for i in range(n_e):
        lo, hi = mat.indptr[i], mat.indptr[i + 1]
        idx = mat.indices[lo:hi]
        val = mat.data[lo:hi]
        order = np.argsort(idx)
        idx, val = idx[order], val[order]
        keep = val != 0
        idx, val = idx[keep], val[keep]
        if idx.size == 0:
            f_chan.append(np.array([offset], dtype=np.int32))
            n_chan_l.append(np.array([0], dtype=np.int32))
            values.append(np.zeros(0, dtype=np.float32))
            continue
        breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [idx.size]])
        n_grp[i] = starts.size
        f_chan.append((idx[starts] + offset).astype(np.int32))
        n_chan_l.append((ends - starts).astype(np.int32))
        values.append(val.astype(np.float32))
    maxg = max(1, max(len(a) for a in f_chan))
    maxm = max(1, max(len(a) for a in values))
    cols = [
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=np.asarray(rmf.energ_lo, np.float32)),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=np.asarray(rmf.energ_hi, np.float32)),
        fits.Column(name="N_GRP", format="I", array=n_grp),
        fits.Column(name="F_CHAN", format=f"PJ({maxg})", array=np.array(f_chan, dtype=object)),
        fits.Column(name="N_CHAN", format=f"PJ({maxg})", array=np.array(n_chan_l, dtype=object)),
        fits.Column(name="MATRIX", format=f"PE({maxm})", array=np.array(values, dtype=object)),
    ]
    mhdu = fits.BinTableHDU.from_columns(cols, name="MATRIX")
    h = mhdu.header
    h["TLMIN4"] = offset
    h["TLMAX4"] = offset + n_chan - 1
    extra = dict(rmf.header)
    h["TELESCOP"] = str(extra.get("TELESCOP", "XMM"))
    h["INSTRUME"] = str(extra.get("INSTRUME", "UNKNOWN"))
    h["FILTER"] = str(extra.get("FILTER", "NONE"))
    h["CHANTYPE"] = str(extra.get("CHANTYPE", "PI"))
    h["DETCHANS"] = n_chan
    h["LO_THRES"] = float(extra.get("LO_THRES", 0.0))
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "RESPONSE"
    h["HDUCLAS2"] = "RSP_MATRIX"
    h["HDUCLAS3"] = str(extra.get("HDUCLAS3", "REDIST"))
    h["HDUVERS"] = "1.3.0"
    h["HDUVERS1"] = "1.3.0"
    h["HDUVERS2"] = "1.3.0"
    h["RMFVERSN"] = "1992a"
    _apply_extra(
        h,
        extra,
        skip={
            "DETCHANS",
            "HDUCLAS1",
            "HDUCLAS2",
            "HDUVERS",
            "HDUVERS1",
            "HDUVERS2",
            "TLMIN4",
            "TLMAX4",
            "HDUCLASS",
        },
    )
    channels = np.arange(offset, offset + n_chan, dtype=np.int32)
    ehdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="CHANNEL", format="J", array=channels),
            fits.Column(name="E_MIN", format="E", unit="keV", array=np.asarray(rmf.e_min, np.float32)),
            fits.Column(name="E_MAX", format="E", unit="keV", array=np.asarray(rmf.e_max, np.float32)),
        ],
        name="EBOUNDS",
    )
    eh = ehdu.header
    eh["TLMIN1"] = offset
    eh["TLMAX1"] = offset + n_chan - 1
    for key in ("TELESCOP", "INSTRUME", "FILTER", "CHANTYPE"):
        eh[key] = h[key]
    eh["DETCHANS"] = n_chan
    eh["HDUCLASS"] = "OGIP"
    eh["HDUCLAS1"] = "RESPONSE"
    eh["HDUCLAS2"] = "EBOUNDS"
    eh["HDUVERS"] = "1.2.0"
    eh["HDUVERS1"] = "1.2.0"
    eh["HDUVERS2"] = "1.2.0"
    eh["RMFVERSN"] = "1992a"
    return atomic_write_fits(fits.HDUList([fits.PrimaryHDU(), mhdu, ehdu]), path, verify=False)


# --------------------------------------------------------------------------------------------- ARF
def read_arf(path: str | Path) -> ARF:
    """Read an OGIP ARF (SPECRESP extension, cm^2)."""
    path = Path(path)
    with _open(path) as hdul:
        hdu = _find_hdu(hdul, path, ("SPECRESP",), hduclas="RESPONSE")
        cols = [c.upper() for c in hdu.columns.names]
        for need in ("ENERG_LO", "ENERG_HI", "SPECRESP"):
            if need not in cols:
                raise InputDataError(f"extension {hdu.name} has no {need} column", path)
        specresp = _native(hdu.data["SPECRESP"], float)
        if not np.all(np.isfinite(specresp)):
            raise InputDataError("SPECRESP column has non-finite values", path)
        if np.any(specresp < 0):
            raise InputDataError(
                f"SPECRESP has {int(np.sum(specresp < 0))} negative values (an effective area is >= 0 cm^2)",
                path,
            )
        if specresp.size == 0 or not np.any(specresp > 0):
            raise InputDataError("SPECRESP is zero everywhere: no effective area to fit with", path)
        return ARF(
            energ_lo=_native(hdu.data["ENERG_LO"], float),
            energ_hi=_native(hdu.data["ENERG_HI"], float),
            specresp=specresp,
            header=_header_dict(hdu.header),
            path=path,
        )


def write_arf(arf: ARF, path: str | Path) -> Path:
    """Write ``arf`` as an OGIP ARF (SPECRESP extension), atomically."""
    path = Path(path)
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="ENERG_LO", format="E", unit="keV", array=np.asarray(arf.energ_lo, np.float32)),
            fits.Column(name="ENERG_HI", format="E", unit="keV", array=np.asarray(arf.energ_hi, np.float32)),
            fits.Column(
                name="SPECRESP", format="E", unit="cm**2", array=np.asarray(arf.specresp, np.float32)
            ),
        ],
        name="SPECRESP",
    )
    h = hdu.header
    extra = dict(arf.header)
    h["TELESCOP"] = str(extra.get("TELESCOP", "XMM"))
    h["INSTRUME"] = str(extra.get("INSTRUME", "UNKNOWN"))
    h["FILTER"] = str(extra.get("FILTER", "NONE"))
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "RESPONSE"
    h["HDUCLAS2"] = "SPECRESP"
    h["HDUVERS"] = "1.1.0"
    h["HDUVERS1"] = "1.1.0"
    h["ARFVERSN"] = "1992a"
    _apply_extra(h, extra, skip={"HDUCLASS", "HDUCLAS1", "HDUCLAS2", "HDUVERS", "HDUVERS1"})
    return atomic_write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), path, verify=False)
