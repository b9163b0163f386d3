"""An observation is data, not a place: paths and metadata of one ObsID, found on disk.

Layouts understood (``data/<obsid>/...``):

* simulator / plain folders: ``<obsid>/pn_evts.fits``, ``mos1*.fits``... (any depth)
* PPS products: ``*PNS003PIEVLI0000.FIT``, ``*M1S001MIEVLI0000.FIT`` (gzip'd or not)
* SAS/XGA cleaned lists: ``eclean/mos1_exp1_clean_evts.fits``, ``*_clean_evt.fits``
* ODF folder ``ODF/`` or ``odf/`` with ``*SUM.SAS`` and ``ccf.cif``

Responses (``*.rmf``, ``*.arf``) lying in the ObsID folder are picked up per camera; a
``truth.json`` (simulator) and ``meta.json`` (target metadata) are read if present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputDataError

__all__ = ["CAMERAS", "Observation", "camera_from_name", "discover", "list_obsids", "validate_obsid"]

CAMERAS = ("pn", "mos1", "mos2")

_EVENT_SUFFIX = re.compile(r"\.(fits|fit|evt|evts|ds)(\.gz)?$", re.IGNORECASE)
_CAMERA_PATTERNS = [
    ("pn", re.compile(r"(^|[^a-z0-9])(pn|epn)([^a-z0-9]|$)|PIEVLI|PN[SU]\d{3}", re.IGNORECASE)),
    ("mos1", re.compile(r"(^|[^a-z0-9])(mos1|m1|emos1)([^a-z0-9]|$)|M1[SU]\d{3}|mos1", re.IGNORECASE)),
    ("mos2", re.compile(r"(^|[^a-z0-9])(mos2|m2|emos2)([^a-z0-9]|$)|M2[SU]\d{3}|mos2", re.IGNORECASE)),
]
_OBSID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_obsid(obsid: str) -> str:
    """Return ``obsid`` if it is a safe folder name, else raise ``InputDataError``.

    ObsIDs become folder names under ``results/``; path separators or ``..`` would let
    a bad list write outside the results root.
    """
    if not _OBSID_RE.match(obsid) or obsid in {".", ".."} or ".." in obsid:
        raise InputDataError(f"ObsID {obsid!r} is not a plain name (letters, digits, _ . -)")
    return obsid


def camera_from_name(name: str) -> str | None:
    """Guess the EPIC camera from a file name (``None`` if it names none)."""
    stem = Path(name).name
    for cam, pattern in _CAMERA_PATTERNS:
        if pattern.search(stem):
            return cam
    return None


def _is_event_file(path: Path) -> bool:
    name = path.name.lower()
    if not _EVENT_SUFFIX.search(name):
        return False
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
        Camera (``pn``, ``mos1``, ``mos2``) -> calibrated event list.
    rmf_files, arf_files : dict
        Camera -> response files found beside the events (may be empty).
    odf_dir, ccf : Path or None
        ODF folder and ``ccf.cif`` for the SAS backend.
    meta : dict
        Target metadata (name, ra, dec, z, nh, r500_kpc...) from ``meta.json`` / a target CSV.
    truth : dict
        Simulation truth (``truth.json``), empty for real data.
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

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(c for c in CAMERAS if c in self.event_files)

    def with_meta(self, **meta: Any) -> Observation:
        """Return a copy with extra target metadata (e.g. from a CSV target list)."""
        merged = {**self.meta, **{k: v for k, v in meta.items() if v is not None}}
        return Observation(
            self.obsid,
            self.root,
            dict(self.event_files),
            dict(self.rmf_files),
            dict(self.arf_files),
            self.odf_dir,
            self.ccf,
            merged,
            dict(self.truth),
        )


def list_obsids(data_dir: str | Path) -> list[str]:
    """ObsID folders under ``data_dir`` that hold at least one event list, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputDataError("data directory does not exist", data_dir)
    out = []
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(_is_event_file(f) for f in sub.rglob("*") if f.is_file()):
            out.append(sub.name)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputDataError("expected a JSON object", path)
    return data


def discover(data_dir: str | Path, obsid: str) -> Observation:
    """Find the event lists, responses, ODF and metadata of ``obsid`` under ``data_dir``.

    Raises
    ------
    InputDataError
        If the folder is missing or holds no event list.
    """
    validate_obsid(obsid)
    root = Path(data_dir) / obsid
    if not root.is_dir():
        raise InputDataError("ObsID folder does not exist", root)
    events: dict[str, Path] = {}
    rmfs: dict[str, Path] = {}
    arfs: dict[str, Path] = {}
    odf_dir = ccf = None
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        low = path.name.lower()
        cam = camera_from_name(path.name)
        if low == "ccf.cif":
            ccf = path
            continue
        if low.endswith("sum.sas"):
            odf_dir = path.parent
            continue
        if low.endswith(".rmf") and cam:
            rmfs.setdefault(cam, path)
        elif low.endswith(".arf") and cam:
            arfs.setdefault(cam, path)
        elif _is_event_file(path) and cam:
            # Prefer cleaned lists, then shorter names (exposure 1 before 2).
            prev = events.get(cam)
            rank = (0 if "clean" in low else 1, len(path.name), str(path))
            if prev is None or rank < (0 if "clean" in prev.name.lower() else 1, len(prev.name), str(prev)):
                events[cam] = path
    if not events:
        raise InputDataError(
            "no EPIC event list found (looked for *pn*/*mos1*/*mos2*/PPS *EVLI* files)", root
        )
    return Observation(
        obsid=obsid,
        root=root,
        event_files=events,
        rmf_files=rmfs,
        arf_files=arfs,
        odf_dir=odf_dir,
        ccf=ccf,
        meta=_read_json(root / "meta.json"),
        truth=_read_json(root / "truth.json"),
    )
