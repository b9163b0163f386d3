"""An observation is data, not a place: paths and metadata of one ObsID, found on disk.

Layouts understood (``data/<obsid>/...``):

* simulator / plain folders: ``<obsid>/pn_evts.fits``, ``mos1*.fits``... (any depth)
* XSA/PPS products: ``P<obsid><II><S|U><eee><code>0000.<ext>`` with ``II`` = ``PN``/``M1``/``M2``,
  ``code`` = ``PIEVLI`` (pn imaging), ``MIEVLI`` (MOS imaging), ``TIEVLI`` (timing/burst) or
  ``OOEVLI`` (pn out-of-time, never a science list), and ``ext`` = ``FTZ`` (gzip'd FITS, as the
  archive serves them), ``FIT``, ``FIT.gz``, ``FITS``
* SAS/XGA cleaned lists: ``eclean/mos1_exp1_clean_evts.fits``, ``*_clean_evt.fits``
* ODF folder ``ODF/`` or ``odf/`` with ``*SUM.SAS`` and the raw ODF files
  (``<rev>_<obsid>_<II><S|U><eee>...IME.FIT``...). Raw ODF files are never taken as event lists: an
  ODF-only folder needs the SAS backend (cifbuild, odfingest, emchain/epchain).

Several exposures of one camera (``S001`` and ``U002``...): **one list per camera is used**, chosen by
this rule: a cleaned list (``*clean*``) first; then an imaging-mode list before a timing/burst one;
then the longest exposure (``ONTIME``, else ``TSTOP - TSTART`` of the EVENTS header); then scheduled
before unscheduled; then the shorter name. The other exposures are never dropped silently: they are
in :attr:`Observation.other_exposures` with the reason, and the filter step records them.

Observing modes are read from the headers before any work: a camera whose chosen list is in timing
or burst mode (``TIEVLI``, ``DATAMODE = TIMING``/``BURST``) is left out with the reason
(:attr:`Observation.skipped_cameras`); small/large window pn is imaging and processed (the mode is in
:attr:`Observation.modes`).

Responses (``*.rmf``, ``*.arf``) lying in the ObsID folder are picked up per camera; a
``truth.json`` (simulator) and ``meta.json`` (target metadata) are read if present.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import CAMERAS
from .errors import InputDataError
from .products import SurveyLayout

__all__ = [
    "CAMERAS",
    "DataScan",
    "Observation",
    "OdfSummary",
    "best_event_list",
    "camera_from_name",
    "discover",
    "is_timing_submode",
    "list_obsids",
    "printable_name",
    "read_meta",
    "read_odf_summary",
    "read_targets_csv",
    "scan_data_dir",
    "validate_obsid",
]

_EVENT_SUFFIX = re.compile(r"\.(fits|fit|ftz|evt|evts|ds)(\.gz)?$", re.IGNORECASE)
_CAMERA_PATTERNS = [
    ("pn", re.compile(r"(^|[^a-z0-9])(pn|epn)([^a-z0-9]|$)|PIEVLI|PN[SU]\d{3}", re.IGNORECASE)),
    ("mos1", re.compile(r"(^|[^a-z0-9])(mos1|m1|emos1)([^a-z0-9]|$)|M1[SU]\d{3}|mos1", re.IGNORECASE)),
    ("mos2", re.compile(r"(^|[^a-z0-9])(mos2|m2|emos2)([^a-z0-9]|$)|M2[SU]\d{3}|mos2", re.IGNORECASE)),
]
_OBSID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: PPS product name (XMM Data Files Handbook, table 37): P + ObsID + instrument + S/U + exposure + code.
_PPS_NAME = re.compile(
    r"^P(?P<obsid>\d{10})(?P<inst>PN|M1|M2)(?P<sched>[SU])(?P<exp>\d{3})(?P<code>[A-Z0-9]{6})",
    re.IGNORECASE,
)
_PPS_EVENT_CODES = {"PIEVLI", "MIEVLI", "TIEVLI"}
_PPS_INST = {"PN": "pn", "M1": "mos1", "M2": "mos2"}
#: Raw ODF constituent: ``<rev>_<obsid>_<II><S|U|X><eee><..>``, e.g. ``0809_0201901401_M1U00210IME.FIT``.
_ODF_RAW = re.compile(r"^\d{4}_\d{10}_[A-Z0-9]{2}[SUX]\d{3}", re.IGNORECASE)
_TIMING_WORDS = ("timing", "burst", "fastuncompressed", "fastcompressed")


#: Names of the results root's own files and folders: an ObsID may not take one of them (compared
#: without case, for case-insensitive file systems).
RESERVED_NAMES = SurveyLayout.RESERVED


def printable_name(name: object) -> str:
    """``name`` as printable ASCII for messages, logs and JSON (undecodable bytes as ``\\xNN``)."""
    text = str(name)
    raw = text.encode("utf-8", "surrogateescape")
    return (
        raw.decode("ascii", "backslashreplace")
        .encode("unicode_escape")
        .decode("ascii")
        .replace("\\\\x", "\\x")
    )


def validate_obsid(obsid: str) -> str:
    """Return ``obsid`` if it is a safe folder name, else raise ``InputDataError``.

    ObsIDs become folder names under ``results/`` and Dask task keys: only ASCII letters, digits,
    ``_ . -`` (not first: ``.`` or ``-``), at most 64 characters, no ``..``, no newline, and not a
    name of the results root's own files (:data:`RESERVED_NAMES`).
    """
    if not isinstance(obsid, str) or not _OBSID_RE.fullmatch(obsid) or ".." in obsid:
        raise InputDataError(
            f"ObsID '{printable_name(obsid)}' is not a plain name (letters, digits, _ . -; "
            "not starting with . or -; at most 64 characters)"
        )
    if obsid.lower() in RESERVED_NAMES:
        raise InputDataError(
            f"ObsID {obsid!r} is reserved for the results folder's own files "
            f"({', '.join(sorted(RESERVED_NAMES))})"
        )
    return obsid


def camera_from_name(name: str) -> str | None:
    """Guess the EPIC camera from a file name (``None`` if it names none)."""
    stem = Path(name).name
    m = _PPS_NAME.match(stem)
    if m:
        return _PPS_INST[m.group("inst").upper()]
    for cam, pattern in _CAMERA_PATTERNS:
        if pattern.search(stem):
            return cam
    return None


def is_timing_submode(text: str | None) -> bool:
    """True for pn timing/burst and MOS fast (timing) modes, from ``DATAMODE``/``SUBMODE``/ODF ``MODE``."""
    low = (text or "").lower()
    return any(word in low for word in _TIMING_WORDS)


def _is_event_file(path: Path) -> bool:
    name = path.name.lower()
    if not _EVENT_SUFFIX.search(name):
        return False
    if _ODF_RAW.match(path.name):
        return False  # raw ODF constituents are not calibrated event lists (they need emchain/epchain)
    pps = _PPS_NAME.match(path.name)
    if pps:
        return pps.group("code").upper() in _PPS_EVENT_CODES
    if any(
        tag in name
        for tag in (
            "img",
            "expmap",
            "image",
            "att",
            "rmf",
            "arf",
            "pha",
            "spec",
            "bkg",
            "gti",
            "ooevli",
            "_oot",
        )
    ):
        return False  # products, and pn out-of-time event lists (they are used only to subtract OOT events)
    return (
        "evli" in name
        or "evt" in name
        or "event" in name
        or "clean" in name
        or camera_from_name(name) is not None
    )


# ------------------------------------------------------------------------------------ ODF summary
@dataclass(frozen=True)
class OdfSummary:
    """What an ODF summary file (odfingest's ``*SUM.SAS``, or the raw ODF's ``*SUM.ASC``) says.

    Attributes
    ----------
    path : Path
    odf_path : str or None
        The ``PATH`` record: where odfingest found the ODF (often another machine's folder).
    obsid : str or None
    modes : dict
        Instrument tag (``PN``, ``M1``, ``M2``...) -> ``MODE`` of each exposure, in file order.
    exposures : dict
        Instrument tag -> exposure ids (``S001``, ``U002``...), in file order.
    durations_s : dict
        ``"<tag><id>"`` (``M1U002``) -> actual end - start of the exposure [s], when the file says.
    start : str or None
        Observation start time (ISO), used for the MOS1 CCD losses.
    """

    path: Path
    odf_path: str | None
    obsid: str | None
    modes: dict[str, list[str]]
    exposures: dict[str, list[str]]
    durations_s: dict[str, float] = field(default_factory=dict)
    start: str | None = None

    def main_exposure(self, camera: str) -> str | None:
        """The exposure of ``camera`` the chains' products are used from (the module rule: longest imaging)."""
        tag = {"pn": "PN", "mos1": "M1", "mos2": "M2"}[camera]
        ids = self.exposures.get(tag, [])
        modes = self.modes.get(tag, [])
        ranked = sorted(
            range(len(ids)),
            key=lambda i: (
                0
                if i >= len(modes)
                else 2
                if not modes[i].startswith(("Prime", "Fast"))
                else 1
                if is_timing_submode(modes[i])
                else 0,
                -self.durations_s.get(tag + ids[i], 0.0),
                0 if ids[i].startswith("S") else 1,
                i,
            ),
        )
        return ids[ranked[0]] if ranked else None

    def main_mode(self, camera: str) -> str | None:
        """``MODE`` of :meth:`main_exposure` (e.g. ``PrimeFullWindow``, ``PrimeSmallWindow``, ``FastTiming``)."""
        tag = {"pn": "PN", "mos1": "M1", "mos2": "M2"}[camera]
        exp = self.main_exposure(camera)
        ids, modes = self.exposures.get(tag, []), self.modes.get(tag, [])
        if exp is None or ids.index(exp) >= len(modes):
            return None
        return modes[ids.index(exp)]

    @property
    def cameras(self) -> tuple[str, ...]:
        """EPIC cameras with at least one exposure."""
        tags = {"pn": "PN", "mos1": "M1", "mos2": "M2"}
        return tuple(c for c in CAMERAS if self.exposures.get(tags[c]))


def read_odf_summary(sum_file: str | Path) -> OdfSummary:
    """Parse the records of ``*SUM.SAS`` that the pipeline needs (PATH, ObsID, exposures, modes).

    Raises
    ------
    InputDataError
        The file cannot be read.
    """
    sum_file = Path(sum_file)
    try:
        lines = sum_file.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise InputDataError(f"cannot read the ODF summary file ({exc})", sum_file) from exc
    odf_path = obsid = None
    modes: dict[str, list[str]] = {}
    exposures: dict[str, list[str]] = {}
    current: str | None = None
    expect: str | None = None
    durations: dict[str, float] = {}
    start: str | None = None
    times: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("PATH ") and odf_path is None:
            odf_path = line[5:].strip()
            continue
        if line in ("INSTRUMENT", "OBSERVATION", "EXPOSURE"):
            expect = line
            continue
        if expect is not None:
            value = line.split("/", 1)[0].strip()
            if expect == "INSTRUMENT":
                current = value.split()[0] if value else None
            elif expect == "OBSERVATION":
                obsid = value or None
                expect = "OBSTIMES"
                continue
            elif expect == "OBSTIMES":
                if "Observation Start Time" in line:
                    start = value
                    expect = None
                continue
            elif expect == "EXPOSURE" and current:
                m = re.search(r"\[also ([SU]\d{3})\]", line)
                exposures.setdefault(current, []).append(m.group(1) if m else value)
                times = []
                expect = "EXPTIMES"
                continue
            elif expect == "EXPTIMES" and current:
                if "Actual Start Time" in line or "Actual End Time" in line:
                    times.append(value)
                if len(times) == 2:
                    durations[current + exposures[current][-1]] = _seconds_between(*times)
                    expect = None
                elif line.startswith(("//", "CONFIGURATION")):
                    expect = None
                continue
            expect = None
            continue
        if current and re.match(r"MODE\s*=", line):
            modes.setdefault(current, []).append(line.split("=", 1)[1].split("/", 1)[0].strip())
    if not exposures:
        # A raw ODF as the archive delivers it: ``*SUM.ASC`` (odfingest has not run) names the instrument
        # records only through its constituents, ``RRRR_OOOOOOOOOO_M1S00100AUX.FIT``; the exposures come
        # from those names (the files list, or the folder), the modes stay unknown until odfingest.
        exposures = _exposures_from_constituents(lines, sum_file.parent)
    return OdfSummary(sum_file, odf_path, obsid, modes, exposures, durations, start)


_CONSTITUENT = re.compile(r"^\d{4}_\d{10}_(PN|M1|M2)([SU]\d{3})", re.IGNORECASE)


def _exposures_from_constituents(lines: list[str], folder: Path) -> dict[str, list[str]]:
    names = [ln.split("/", 1)[0].strip() for ln in lines]
    try:
        names += [p.name for p in folder.iterdir()]
    except OSError:
        pass
    exposures: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        m = _CONSTITUENT.match(name)
        if m:
            tag, exp = m.group(1).upper(), m.group(2).upper()
            if exp not in exposures.setdefault(tag, []):
                exposures[tag].append(exp)
    return exposures


def is_summary_file(name: str) -> bool:
    """True for an ODF summary file: ``*SUM.SAS`` (odfingest's) or ``*SUM.ASC`` (the raw ODF's)."""
    return name.upper().endswith(("SUM.SAS", "SUM.ASC"))


def summary_file(odf_dir: Path) -> Path | None:
    """The ODF summary of ``odf_dir``: odfingest's ``*SUM.SAS`` when there is one, else the raw ``*SUM.ASC``."""
    try:
        found = sorted(p for p in odf_dir.iterdir() if p.is_file() and is_summary_file(p.name))
    except OSError:
        return None
    return next((p for p in found if p.name.upper().endswith("SUM.SAS")), found[0] if found else None)


def _seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return 0.0


def best_event_list(paths: list[Path]) -> Path:
    """The list the module rule picks among several event lists of one camera (e.g. emchain's S/U products)."""
    return sorted(paths, key=lambda p: _rank(p, _list_info(p)))[0]


# ------------------------------------------------------------------------------------ observation
@dataclass(frozen=True)
class Observation:
    """Paths and metadata of one XMM-Newton observation.

    Attributes
    ----------
    obsid : str
        Observation identifier (folder name under ``data/``).
    root : Path
        ``data/<obsid>``.
    event_files : dict
        Camera (``pn``, ``mos1``, ``mos2``) -> calibrated event list (one per camera, see the module rule).
    rmf_files, arf_files : dict
        Camera -> response files found beside the events (may be empty).
    odf_dir, ccf : Path or None
        ODF folder and ``ccf.cif`` for the SAS backend.
    meta : dict
        Target metadata (name, ra, dec, z, nh, r500_kpc...) from ``meta.json`` / a target CSV.
    truth : dict
        Simulation truth (``truth.json``), empty for real data.
    other_exposures : dict
        Camera -> ``[(path, reason)]`` of the event lists found but not used.
    skipped_cameras : dict
        Camera -> reason it is left out before any work (timing/burst mode).
    modes : dict
        Camera -> observing mode (``SUBMODE`` of the list, or the ODF ``MODE``) when known.
    odf_cameras : tuple
        Cameras with an exposure in the ODF summary (what emchain/epchain would make).
    """

    obsid: str
    root: Path
    event_files: dict[str, Path] = field(default_factory=dict)
    rmf_files: dict[str, Path] = field(default_factory=dict)
    arf_files: dict[str, Path] = field(default_factory=dict)
    odf_dir: Path | None = None
    ccf: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    other_exposures: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped_cameras: dict[str, str] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    odf_cameras: tuple[str, ...] = ()

    @property
    def odf_only(self) -> bool:
        """True when there is an ODF but no calibrated event list (the SAS chains must run first)."""
        return not self.event_files and self.odf_dir is not None

    @property
    def cameras(self) -> tuple[str, ...]:
        """Cameras to process: those with an event list, or (ODF only) those the ODF has."""
        if self.odf_only:
            return tuple(c for c in self.odf_cameras if c not in self.skipped_cameras)
        return tuple(c for c in CAMERAS if c in self.event_files)

    @property
    def sum_file(self) -> Path | None:
        """The ODF summary file, if any."""
        if self.odf_dir is None:
            return None
        return summary_file(self.odf_dir)

    @property
    def odf_ingested(self) -> bool:
        """True when the ODF summary is odfingest's ``*SUM.SAS`` (a raw ODF has only ``*SUM.ASC``)."""
        sum_file = self.sum_file
        return sum_file is not None and sum_file.name.upper().endswith("SUM.SAS")

    def with_meta(self, **meta: Any) -> Observation:
        """Return a copy with extra target metadata (e.g. from a CSV target list)."""
        merged = {**self.meta, **{k: v for k, v in meta.items() if v is not None}}
        return dataclasses.replace(self, meta=merged)


#: Target metadata that must be numbers, with their allowed ranges (low, high), inclusive.
META_RANGES: dict[str, tuple[float, float]] = {
    "z": (0.0, 20.0),
    "ra": (0.0, 360.0),
    "dec": (-90.0, 90.0),
    "nh": (0.0, 100.0),
    "r500_kpc": (0.0, 1e5),
}
#: A metadata file (meta.json, truth.json, targets CSV) larger than this is refused [bytes].
MAX_META_BYTES = 10 << 20


def _check_meta_value(key: str, value: Any, path: Path, label: str) -> float:
    lo, hi = META_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (sexagesimal? give decimal degrees)" if key in ("ra", "dec") and ":" in str(value) else ""
        raise InputDataError(f"{label} = {value!r} is not a number{hint}", path)
    number = float(value)
    if not (lo <= number <= hi):  # also refuses NaN
        raise InputDataError(f"{label} = {value!r} is outside {lo:g}..{hi:g}", path)
    return number


def _read_text(path: Path) -> str:
    try:
        if not path.is_file():
            raise InputDataError("not a regular file", path)
        size = path.stat().st_size
        if size > MAX_META_BYTES:
            raise InputDataError(f"{size} bytes is more than a metadata file can be ({MAX_META_BYTES})", path)
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"cannot read ({exc})", path) from exc


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputDataError(f"cannot read JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputDataError("expected a JSON object", path)
    return data


def read_meta(path: str | Path) -> dict[str, Any]:
    """Target metadata from ``meta.json`` (empty when absent), numbers checked with the key named.

    ``z``, ``ra``, ``dec`` [deg], ``nh`` [1e22 cm^-2], ``r500_kpc`` must be JSON numbers within
    :data:`META_RANGES` (a string such as ``"0.1"`` or ``"12:30:00"`` is refused, not guessed).

    Raises
    ------
    InputDataError
        Unreadable file, not a JSON object, or a value that is not a number in its range.
    """
    path = Path(path)
    meta = _read_json(path)
    for key in META_RANGES:
        if meta.get(key) is not None:
            meta[key] = _check_meta_value(key, meta[key], path, f"key {key!r}")
    return meta


def read_targets_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-target metadata from a CSV with columns ``obsid,name,ra,dec,z,nh,r500_kpc``: the one reader.

    The pipeline and the catalogue both read targets through this function. Only ``obsid`` is
    required; a UTF-8 byte-order mark (Excel) is ignored; lines starting with ``#`` are comments; empty
    cells are missing values; numbers are checked like :func:`read_meta`; other columns are text. Where
    an ObsID has both, the CSV's values win over its ``meta.json`` (:meth:`Observation.with_meta`).

    Raises
    ------
    InputDataError
        Missing file, no ``obsid`` column, a duplicate column or ObsID row, a value that is not a
        number (named by row and column).
    """
    import csv

    path = Path(path)
    text = _read_text(path)
    numbered = [
        (n, line) for n, line in enumerate(text.splitlines(), start=1) if not line.lstrip().startswith("#")
    ]
    numbered = [(n, line) for n, line in numbered if line.strip()]
    if not numbered:
        raise InputDataError("empty targets CSV (no header with an 'obsid' column)", path)
    reader = csv.reader(line for _n, line in numbered)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InputDataError(f"not a valid CSV ({exc})", path) from exc
    header = [h.strip().lower() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1 and h})
    if dupes:
        raise InputDataError(f"duplicate column(s) {', '.join(dupes)} in the header", path)
    if "obsid" not in header:
        raise InputDataError(f"no 'obsid' column (columns: {rows[0]})", path)
    out: dict[str, dict[str, Any]] = {}
    first_row: dict[str, int] = {}
    for (number, _line), cells in zip(numbered[1:], rows[1:]):
        if len(cells) > len(header):
            raise InputDataError(f"row {number}: {len(cells)} cells for {len(header)} columns", path)
        clean = dict(zip(header, (c.strip() for c in cells)))
        obsid = clean.pop("obsid", "")
        try:
            validate_obsid(obsid)
        except InputDataError as exc:
            raise InputDataError(f"row {number}: {exc}", path) from exc
        if obsid in first_row:
            raise InputDataError(
                f"row {number}: ObsID {obsid} is listed twice (first on row {first_row[obsid]}); give each once",
                path,
            )
        first_row[obsid] = number
        meta: dict[str, Any] = {}
        for key, value in clean.items():
            if value == "" or not key:
                continue
            if key in META_RANGES:
                try:
                    number_value: Any = float(value)
                except ValueError:
                    number_value = value
                meta[key] = _check_meta_value(key, number_value, path, f"row {number}: column {key}")
            else:
                meta[key] = value
        out[obsid] = meta
    return out


def _list_info(path: Path) -> dict[str, Any]:
    """Mode and exposure length of an event list from its headers (empty when unreadable).

    Cached by (path, size, mtime): a survey discovers each folder more than once (listing, skipped
    folders, the run), and a changed file has a new size or mtime.
    """
    try:
        st = path.stat()
    except OSError:
        return {}
    return dict(_list_info_cached(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8192)
def _list_info_cached(name: str, _size: int, _mtime_ns: int) -> dict[str, Any]:
    path = Path(name)
    info: dict[str, Any] = {}
    pps = _PPS_NAME.match(path.name)
    if pps:
        info["exp"] = (pps.group("sched") + pps.group("exp")).upper()
    else:
        m = re.search(r"(PN|M1|M2)([SU]\d{3})", path.name, re.IGNORECASE)
        if m:
            info["exp"] = m.group(2).upper()
    try:
        import warnings

        from astropy.io import fits

        with warnings.catch_warnings(), fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            warnings.simplefilter("ignore")
            hdr = hdul["EVENTS"].header if "EVENTS" in hdul else hdul[1].header
            head0 = hdul[0].header
            datamode = str(hdr.get("DATAMODE", head0.get("DATAMODE", "")) or "")
            submode = str(hdr.get("SUBMODE", head0.get("SUBMODE", "")) or "")
            if datamode or submode:
                info["mode"] = " ".join(x for x in (datamode, submode) if x)
                info["submode"] = submode or datamode
                # DATAMODE decides when present: a MOS list of a fast-mode exposure is IMAGING (outer CCDs)
                info["timing"] = (
                    datamode.upper() in ("TIMING", "BURST") if datamode else is_timing_submode(submode)
                )
            expid = hdr.get("EXPIDSTR", head0.get("EXPIDSTR"))
            if expid:
                info["exp"] = str(expid).upper()
            ontime = hdr.get("ONTIME")
            if ontime is None and hdr.get("TSTART") is not None and hdr.get("TSTOP") is not None:
                ontime = float(hdr["TSTOP"]) - float(hdr["TSTART"])
            if ontime is not None:
                info["exposure_s"] = float(ontime)
    except (OSError, KeyError, IndexError, ValueError, TypeError, EOFError):
        pass  # unreadable here: events.read_events names the file and the cause when it is used
    if pps and pps.group("code").upper() == "TIEVLI" and not info.get("timing"):
        info["mode"] = "timing/burst (TIEVLI)"  # the product code says so even when the header does not
        info["timing"] = True
    return info


def _rank(path: Path, info: dict[str, Any]) -> tuple[Any, ...]:
    low = path.name.lower()
    return (
        0 if "clean" in low else 1,
        1 if info.get("timing") else 0,
        -float(info.get("exposure_s") or 0.0),
        0 if str(info.get("exp", "S")).startswith("S") else 1,
        len(path.name),
        str(path),
    )


def _odf_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("*") if p.is_file() and is_summary_file(p.name)}


def discover(data_dir: str | Path, obsid: str, *, backend: str | None = None) -> Observation:
    """Find the event lists, responses, ODF and metadata of ``obsid`` under ``data_dir``.

    Parameters
    ----------
    backend : str, optional
        Reduction backend that will use the observation. ``"python"`` refuses an ODF-only folder
        ("ODF only: needs the SAS backend"); ``None`` accepts every layout.

    Raises
    ------
    InputDataError
        If the folder is missing, holds no event list (nor ODF), only timing/burst-mode lists,
        or (Python backend) only an ODF.
    """
    validate_obsid(obsid)
    root = Path(data_dir) / obsid
    if not root.is_dir():
        raise InputDataError("ObsID folder does not exist", root)
    candidates: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    rmfs: dict[str, Path] = {}
    arfs: dict[str, Path] = {}
    odf_dir = ccf = None
    odf_dirs = _odf_dirs(root)
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        low = path.name.lower()
        cam = camera_from_name(path.name)
        if low == "ccf.cif":
            ccf = path
            continue
        if is_summary_file(path.name):
            odf_dir = path.parent
            continue
        if path.parent in odf_dirs:
            continue  # raw ODF constituents: input of emchain/epchain, never event lists
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden copies (.ipynb_checkpoints, .Trash) are not the observation's files
        if low.endswith(".rmf") and cam:
            rmfs.setdefault(cam, path)
        elif low.endswith(".arf") and cam:
            arfs.setdefault(cam, path)
        elif _is_event_file(path) and cam:
            candidates.setdefault(cam, []).append((path, _list_info(path)))
    events: dict[str, Path] = {}
    others: dict[str, list[tuple[str, str]]] = {}
    skipped: dict[str, str] = {}
    modes: dict[str, str] = {}
    for cam in CAMERAS:
        found = sorted(candidates.get(cam, []), key=lambda pi: _rank(*pi))
        if not found:
            continue
        (best, info), rest = found[0], found[1:]
        if rest:
            others[cam] = [
                (
                    str(p),
                    f"not used: one list per camera, {best.name} ranks first "
                    "(cleaned, imaging, longest exposure, scheduled)",
                )
                for p, _ in rest
            ]
        mode = str(info.get("mode") or "")
        if mode:
            modes[cam] = str(info.get("submode") or mode)
        if info.get("timing"):
            skipped[cam] = f"{cam} in {mode} mode (timing/burst): no imaging events ({best.name})"
            continue
        events[cam] = best
    sum_path = summary_file(odf_dir) if odf_dir else None
    summary = read_odf_summary(sum_path) if sum_path else None
    odf_cameras: tuple[str, ...] = ()
    if summary is not None:
        odf_cameras = summary.cameras
        for cam in odf_cameras:
            main = summary.main_mode(cam)
            if main and cam not in modes:
                modes[cam] = main
            # MOS fast modes read out only the central CCD in timing: emchain still makes the imaging list
            if not events and main and cam == "pn" and is_timing_submode(main):
                skipped.setdefault(cam, f"{cam} in {main} mode (ODF, timing/burst): no imaging events")
    if not events:
        if skipped and (summary is None or not [c for c in odf_cameras if c not in skipped]):
            raise InputDataError("unsupported mode: " + "; ".join(skipped.values()), root)
        if summary is None:
            raise InputDataError(
                "no EPIC event list found (looked for *pn*/*mos1*/*mos2*, PPS *PIEVLI*/*MIEVLI* "
                "(.FTZ/.FIT/.FIT.gz) files) and no ODF (*SUM.SAS or *SUM.ASC)",
                root,
            )
        if not odf_cameras:
            raise InputDataError("ODF summary lists no EPIC exposure", summary.path)
        if backend == "python":
            raise InputDataError(
                "ODF only: needs the SAS backend (backend.reduction: sas runs cifbuild, odfingest, "
                "emchain/epchain); the Python backend starts from calibrated event lists",
                root,
            )
    return Observation(
        obsid=obsid,
        root=root,
        event_files=events,
        rmf_files=rmfs,
        arf_files=arfs,
        odf_dir=odf_dir,
        ccf=ccf,
        meta=read_meta(root / "meta.json"),
        truth=_read_json(root / "truth.json"),
        other_exposures=others,
        skipped_cameras=skipped,
        modes=modes,
        odf_cameras=odf_cameras,
    )


# ------------------------------------------------------------------------------------ data folder
@dataclass(frozen=True)
class DataScan:
    """Every folder of a data directory: the ObsIDs to process and the others with their reason."""

    obsids: list[str]
    skipped: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"obsids": list(self.obsids), "skipped": dict(self.skipped)}


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def scan_data_dir(
    data_dir: str | Path, *, backend: str | None = None, exclude: Sequence[str | Path] = ()
) -> DataScan:
    """Sort every folder of ``data_dir`` into ObsIDs to process and skipped folders (with the reason).

    Reasons: ``hidden folder``, ``not a plain name`` (not UTF-8, path or shell characters, a trailing
    newline...), ``reserved`` (a name of the results folder's own files), ``a results folder`` (one of
    ``exclude`` or holding ``config.resolved.yaml``: ``--results`` inside ``--data``), ``empty folder``,
    ``ODF only: needs the SAS backend`` (Python backend), ``unsupported mode: ...``, ``no EPIC event
    list ...``. Plain files at the top level are not folders and are ignored. Skipped folder names are
    printable (:func:`printable_name`), so they can be logged and written as JSON.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputDataError("data directory does not exist", data_dir)
    excluded = [Path(e) for e in exclude]
    obsids: list[str] = []
    skipped: dict[str, str] = {}
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        name = printable_name(sub.name)
        if sub.name.startswith("."):
            skipped[name] = "hidden folder"
            continue
        if any(_same_dir(sub, e) for e in excluded) or (sub / SurveyLayout.RESOLVED_CONFIG).exists():
            skipped[name] = "a results folder (results_dir inside data_dir), not an ObsID"
            continue
        try:
            validate_obsid(sub.name)
        except InputDataError as exc:
            skipped[name] = str(exc)
            continue
        if not any(f.is_file() for f in sub.rglob("*")):
            skipped[name] = "empty folder"
            continue
        try:
            discover(data_dir, sub.name, backend=backend)
        except InputDataError as exc:
            text = str(exc)
            # The folder's own path is the row's name; a file inside it (meta.json) stays named.
            own = exc.path is not None and Path(exc.path) == sub and text.startswith(exc.path)
            skipped[name] = text.split(": ", 1)[1] if own else text
            continue
        obsids.append(sub.name)
    return DataScan(obsids, skipped)


def list_obsids(
    data_dir: str | Path, *, backend: str | None = None, exclude: Sequence[str | Path] = ()
) -> list[str]:
    """ObsID folders under ``data_dir`` that hold an event list (or, unless ``backend="python"``, an ODF)."""
    return scan_data_dir(data_dir, backend=backend, exclude=exclude).obsids
