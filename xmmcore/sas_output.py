"""Parsing the text that SAS tasks and XSPEC print.

SAS (XMM-Newton Science Analysis System) messages have the form documented in the SAS
Users' Guide and used by XGA/DAXA::

    ** cifbuild: error (UnexpectedEOF), Unexpected EOF in line #1257 of ODF summary file `...'
    ** odfingest: warning (...), ...

Every SAS task also announces itself (``evselect:- evselect (evselect-3.71.3)  [xmmsas_...] started:``)
and ``sasversion`` prints ``SAS release: 22.1.0-...``. XSPEC prints ``XSPEC version: 12.12.0``,
``***Warning: ...``/``***XSPEC Error: ...`` lines, ``error`` command tables
(``Parameter   Confidence Range (2.706)``) and ``flux`` lines (``Model Flux ... photons (... ergs/cm^2/s)``).

Every function here is pure: text in, values out. Nothing is matched against a list of known error
codes: any error line is an error (XGA #129: an unknown code must not pass).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

__all__ = [
    "SasMessage",
    "XspecMessage",
    "parse_sas_messages",
    "parse_sas_release",
    "parse_sasversion",
    "parse_task_version",
    "parse_task_versions",
    "parse_xspec_error_table",
    "parse_xspec_flux",
    "parse_xspec_messages",
    "parse_xspec_version",
]

_SAS_MSG = re.compile(
    r"^\s*\*\*\s*(?P<task>[A-Za-z0-9_.+-]+)\s*:\s*(?P<level>error|warning|fatal)\s*"
    r"(?:\((?P<code>[^)]*)\))?\s*,?\s*(?P<msg>.*?)\s*$",
    re.IGNORECASE,
)
# "evselect:- evselect (evselect-3.71.3)  [xmmsas_20230412_1735-21.0.0] started:  2023-..."
_TASK_BANNER = re.compile(
    r"^\s*(?P<task>[A-Za-z0-9_]+):-\s+(?P=task)\s+\((?P<version>[A-Za-z0-9_]+-[0-9][0-9A-Za-z.\-]*)\)"
    r"\s+\[(?P<build>[^\]]+)\]"
)
_BUILD_RELEASE = re.compile(r"(?:xmmsas_\d{8}_\d{4}-)?(?P<release>\d+\.\d+\.\d+)")
_SAS_RELEASE = re.compile(r"^\s*SAS release:\s*(?P<release>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class SasMessage:
    """One ``** task: level (code), message`` line."""

    task: str
    level: str  # "error" | "warning" | "fatal"
    code: str
    message: str
    line: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def parse_sas_messages(text: str) -> list[SasMessage]:
    """All SAS error/warning lines in ``text``, in order.

    Parameters
    ----------
    text : str
        stdout and/or stderr of one or more SAS tasks.
    """
    out = []
    for line in text.splitlines():
        m = _SAS_MSG.match(line)
        if m:
            out.append(
                SasMessage(
                    task=m["task"],
                    level=m["level"].lower(),
                    code=(m["code"] or "").strip(),
                    message=m["msg"].strip(" ,"),
                    line=line.strip(),
                )
            )
    return out


def parse_task_versions(text: str) -> dict[str, str]:
    """``{task: "task-x.y.z"}`` from the ``task:- task (task-x.y.z) [build] started:`` banners."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _TASK_BANNER.match(line)
        if m:
            out.setdefault(m["task"], m["version"])
    return out


def parse_task_version(text: str, task: str | None = None) -> str | None:
    """Version string (``evselect-3.71.3``) printed by ``task`` (or the first task) in ``text``."""
    versions = parse_task_versions(text)
    if task is not None and task in versions:
        return versions[task]
    return next(iter(versions.values()), None) if task is None else None


def parse_sas_release(text: str) -> str | None:
    """SAS release (``22.1.0``, ``18.0.0``) from ``sasversion`` output or any task banner.

    Understands ``SAS release: 22.1.0-a8f2c2afa-20250304`` and ``[xmmsas_20190531_1155-18.0.0]``.
    """
    m = _SAS_RELEASE.search(text)
    if m:
        rm = _BUILD_RELEASE.search(m["release"])
        return rm["release"] if rm else m["release"]
    for line in text.splitlines():
        b = _TASK_BANNER.match(line)
        if b:
            rm = _BUILD_RELEASE.search(b["build"])
            if rm:
                return rm["release"]
    return None


def parse_sasversion(text: str) -> dict[str, str]:
    """Fields of ``sasversion`` output: release, full build string, compile date, platform, SAS_* paths."""
    out: dict[str, str] = {}
    release = parse_sas_release(text)
    if release:
        out["release"] = release
    keys = {"SAS release": "build", "Compiled on": "compiled_on", "Platform": "platform"}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys and not key.strip().endswith("-"):
            out[keys[key.strip()]] = value.strip()
        k2, sep2, v2 = line.partition("=")
        if sep2 and k2.strip().startswith("SAS_") and " " not in k2.strip():
            out[k2.strip()] = v2.strip()
    return out


# --------------------------------------------------------------------------------------------- XSPEC
_XSPEC_MSG = re.compile(
    r"^\s*\*{3}\s*(?P<kind>XSPEC Error|Error|Warning)\s*:?\s*(?P<msg>.*?)\s*$", re.IGNORECASE
)
_XSPEC_VERSION = re.compile(r"XSPEC\s+version:\s*(?P<version>\d+\.\d+\.\d+[a-z]?)", re.IGNORECASE)
_ERR_HEADER = re.compile(r"Parameter\s+Confidence Range\s+\((?P<delta>[0-9.]+)\)")
_ERR_ROW = re.compile(
    r"^\s*#?\s*(?P<num>\d+)\s+(?P<lo>\S+)\s+(?P<hi>\S+)\s+\((?P<dlo>[^,()]+),(?P<dhi>[^,()]+)\)"
)
_FLUX = re.compile(
    r"Model Flux\s+(?P<photons>\S+)\s+photons\s+\((?P<erg>\S+)\s+ergs/cm\^2/s\)\s+range\s+"
    r"\((?P<lo>\S+)\s+-\s+(?P<hi>\S+)\s+keV\)"
)
_FLUX_ERR = re.compile(
    r"Error range\s+(?P<plo>\S+)\s+-\s+(?P<phi>\S+)\s+\((?P<elo>\S+)\s+-\s+(?P<ehi>\S+)\)\s+"
    r"\((?P<cl>[0-9.]+)% confidence\)"
)


@dataclass(frozen=True)
class XspecMessage:
    """One ``***Warning: ...`` or ``***XSPEC Error: ...`` line."""

    level: str  # "warning" | "error"
    message: str
    line: str


def parse_xspec_messages(text: str) -> list[XspecMessage]:
    """XSPEC warning and error lines in ``text``."""
    out = []
    for line in text.splitlines():
        m = _XSPEC_MSG.match(line)
        if m:
            level = "warning" if m["kind"].lower() == "warning" else "error"
            out.append(XspecMessage(level=level, message=m["msg"], line=line.strip()))
    return out


def parse_xspec_version(text: str) -> str | None:
    """``12.12.0`` from the ``XSPEC version: 12.12.0`` banner."""
    m = _XSPEC_VERSION.search(text)
    return m["version"] if m else None


def parse_xspec_error_table(text: str) -> dict[int, dict[str, float | str]]:
    """Rows of the ``error`` command table: ``{param: {lo, hi, err_lo, err_hi, delta_stat, note}}``.

    ``err_lo`` is the (negative) distance of the lower bound from the best fit, as XSPEC prints it.
    Rows before the first ``Parameter   Confidence Range (x)`` header are ignored.
    """
    out: dict[int, dict[str, float | str]] = {}
    delta: float | None = None
    for line in text.splitlines():
        h = _ERR_HEADER.search(line)
        if h:
            delta = float(h["delta"])
            continue
        if delta is None:
            continue
        m = _ERR_ROW.match(line)
        if not m:
            continue
        try:
            row: dict[str, float | str] = {
                "lo": float(m["lo"]),
                "hi": float(m["hi"]),
                "err_lo": float(m["dlo"]),
                "err_hi": float(m["dhi"]),
                "delta_stat": delta,
            }
        except ValueError:
            continue
        note = line[m.end() :].strip()
        if note:
            row["note"] = note
        out[int(m["num"])] = row
    return out


def parse_xspec_flux(text: str) -> list[dict[str, float]]:
    """``flux`` command results: ``[{lo_kev, hi_kev, photons, erg, [erg_lo, erg_hi, cl]}]``.

    Units: photons cm^-2 s^-1 and erg cm^-2 s^-1, as printed by XSPEC.
    """
    out: list[dict[str, float]] = []
    for line in text.splitlines():
        m = _FLUX.search(line)
        if m:
            out.append(
                {
                    "lo_kev": float(m["lo"]),
                    "hi_kev": float(m["hi"]),
                    "photons": float(m["photons"]),
                    "erg": float(m["erg"]),
                }
            )
            continue
        e = _FLUX_ERR.search(line)
        if e and out:
            out[-1].update(
                {
                    "photons_lo": float(e["plo"]),
                    "photons_hi": float(e["phi"]),
                    "erg_lo": float(e["elo"]),
                    "erg_hi": float(e["ehi"]),
                    "cl": float(e["cl"]),
                }
            )
    return out
