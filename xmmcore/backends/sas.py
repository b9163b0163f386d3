"""SAS/ESAS reduction backend: the XMM-Newton SOC tools, driven safely.

Steps only *build* :class:`Command` objects (task, argv, working directory, environment, expected
outputs); one runner (:func:`run_commands`) executes them through :func:`xmmcore.tools.run_tool`
and checks the outputs (DAXA's split between command builders and ``sas_call``). The same
commands are written out by ``xmm-survey plan --export run.sh``, so the script a user audits is
exactly what the backend runs.

Every task gets

* its own working directory ``results/<obsid>/sas/<step>/<label>/`` (ESAS tasks of one camera share
  ``sas/<step>/esas/``: ``mosback`` reads the intermediate files ``mosspectra`` leaves in the
  current directory, as the ESAS cookbook requires);
* its own parameter-file directory, ``PFILES="<taskdir>/pfiles;$SAS_DIR/config"``, so two tasks
  running at once never share ``.par`` files;
* ``SAS_ODF``, ``SAS_CCF``, ``SAS_CCFPATH`` and ``HEADASNOQUERY`` in its environment only (no global
  ``os.environ`` edits: pySAS's global state is what breaks parallel runs);
* a timeout (``sas.timeout_s``) after which its whole process group is killed.

The observing mode is checked before anything runs: timing/burst-mode pn has no imaging events to
screen, so the camera is skipped with a reason instead of failing ``epchain`` and everything after
it (DAXA #146).

Chain (SAS 21/22, ESAS cookbook for SAS 21):
``cifbuild`` -> ``odfingest`` -> ``emchain``/``epchain`` (or the PPS event lists) ->
``evselect`` light curve -> ``espfilt`` (ESAS) or ``tabgtigen`` -> ``evselect`` screening;
spectra: ``cheese`` -> ``mosspectra``/``pnspectra`` -> ``mosback``/``pnback`` -> ``specgroup`` (ESAS),
or ``evselect`` spectra -> ``backscale`` -> ``rmfgen`` -> ``arfgen extendedsource=yes detmaptype=dataset``
-> ``specgroup``; images: ``evselect`` -> ``eexpmap`` -> ``emosaic``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import SKY_PIXEL_ARCSEC  # sky (X/Y) and detector (DETX/DETY) pixel
from ..errors import ConfigError, InputDataError, ToolError, ToolNotFoundError
from ..flares import FlareSettings
from ..fsutil import atomic_path
from ..observation import CAMERAS, Observation, best_event_list, is_timing_submode, read_odf_summary
from ..products import ObsProducts
from ..sas_output import parse_sasversion
from ..sas_params import TASK_PARAMS, check_argv
from ..settings import config_value
from ..tools import ToolRun, run_tool

__all__ = [
    "SKY_PIXEL_ARCSEC",
    "Command",
    "SasBackend",
    "SasSettings",
    "build_filter_commands",
    "build_image_commands",
    "build_odf_commands",
    "build_response_commands",
    "build_spectra_commands",
    "camera_mode",
    "esas_prefix",
    "flare_lc_expression",
    "is_timing_mode",
    "missing_sas_hint",
    "plan_observation",
    "region_expression",
    "run_commands",
    "screen_expression",
    "script_lines",
    "sum_rewrite_lines",
    "settings_from_config",
    "spectrum_selection",
    "task_env",
]


def _sas_flare_method(method: str) -> str:
    """ESAS ``espfilt`` is what SAS runs for both ``histogram`` and its alias ``espfilt``."""
    return "espfilt" if method in ("histogram", "espfilt") else method


CAMERAS_ALL = CAMERAS
_INSTRUME = {"pn": "EPN", "mos1": "EMOS1", "mos2": "EMOS2"}
_PPS_TAG = {"pn": "PN", "mos1": "M1", "mos2": "M2"}
_DEFAULT_EXP = {"pn": "S003", "mos1": "S001", "mos2": "S002"}
# pn spectra: 5 eV bins up to channel 20479; MOS: 15 eV bins up to 11999 (SAS spectra thread).
_SPEC_BINNING = {"pn": (5, 20479), "mos1": (15, 11999), "mos2": (15, 11999)}
_TIMING_SUBMODES = ("timing", "burst", "fastuncompressed", "fastcompressed")
_SAS_TASKS_FILTER = ("evselect", "tabgtigen", "espfilt")
_SAS_TASKS_SPECTRA = (
    "evselect",
    "backscale",
    "rmfgen",
    "arfgen",
    "specgroup",
    "cheese",
    "mosspectra",
    "mosback",
    "pnspectra",
    "pnback",
)


# ------------------------------------------------------------------------------------------ commands
@dataclass(frozen=True)
class Command:
    """One SAS task invocation, fully specified before anything runs.

    Attributes
    ----------
    step : str
        Pipeline step and camera, e.g. ``"filter_pn"``; groups the task directories.
    label : str
        Unique name of this task within the step (``"evselect-lc"``); its directory name.
    argv : tuple of str
        Program and ``param=value`` arguments (no shell quoting needed).
    cwd : Path
        Working directory.
    env : dict
        Variables set for this task only (``PFILES``, ``SAS_ODF``, ``SAS_CCF``...).
    outputs : tuple of str
        Files the task must produce (absolute paths, or glob patterns for chain products).
    links : tuple of (name, target)
        Symbolic links made in ``cwd`` before the task runs (ESAS file-name conventions); a target may
        be a glob pattern matching exactly one file.
    description : str
        One line for logs and the exported script.
    timeout_s : float or None
        Wall-clock limit [s].
    """

    step: str
    label: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    description: str = ""
    timeout_s: float | None = None

    @property
    def task(self) -> str:
        return self.argv[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "label": self.label,
            "task": self.task,
            "argv": list(self.argv),
            "cwd": str(self.cwd),
            "env": dict(self.env),
            "outputs": list(self.outputs),
            "links": [list(x) for x in self.links],
            "description": self.description,
        }


def _param(name: str, value: object) -> str:
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return f"{name}={value}"


def _argv(task: str, **params: object) -> tuple[str, ...]:
    return (task, *(_param(k, v) for k, v in params.items() if v is not None))


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class SasSettings:
    """Where SAS lives and how to run it (from the ``sas:`` config section and the environment).

    Built by :meth:`from_config`; the field defaults serve library calls and tests that name only
    the installation and equal ``survey/defaults.yaml`` (``tests/test_settings.py`` checks it).
    """

    sas_dir: str | None
    ccf_path: str | None
    timeout_s: float = 7200.0
    use_pps_events: bool = True
    esas: bool = True
    headas: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> SasSettings:
        """The ``sas`` section of the resolved config; ``sas_dir``/``ccf_path`` null take ``$SAS_DIR``/
        ``$SAS_CCFPATH`` of ``environ`` (default: this process's environment)."""
        env = os.environ if environ is None else environ
        sas = config_value(cfg, "sas")

        def get(key: str) -> Any:
            return config_value(sas, key, prefix="sas.")

        return cls(
            sas_dir=get("sas_dir") or env.get("SAS_DIR") or None,
            ccf_path=get("ccf_path") or env.get("SAS_CCFPATH") or None,
            timeout_s=float(get("timeout_s")),
            use_pps_events=bool(get("use_pps_events")),
            esas=bool(get("esas")),
            headas=env.get("HEADAS") or None,
        )


def settings_from_config(cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> SasSettings:
    """``SasSettings.from_config(cfg, environ)``."""
    return SasSettings.from_config(cfg, environ)


def missing_sas_hint(tool: str) -> str:
    """How to point the pipeline to a missing SAS tool."""
    return (
        f"the SAS task {tool!r} was not found. Install XMM-Newton SAS "
        "(https://www.cosmos.esa.int/web/xmm-newton/sas-installation), then either initialise it in the "
        "shell that runs xmm-survey (export SAS_DIR=/path/to/xmmsas; source $SAS_DIR/setsas.sh) or set "
        "`sas.sas_dir: /path/to/xmmsas` in the config so that $SAS_DIR/bin is searched; point "
        "`sas.ccf_path` (or $SAS_CCFPATH) to the CCF directory. Or select `backend.reduction: python`."
    )


_SETSAS_CACHE: dict[str, dict[str, str]] = {}


def _setsas_env(sas_dir: str) -> dict[str, str] | None:
    """The variables ``source $SAS_DIR/setsas.sh`` sets (PATH, LD_LIBRARY_PATH, SAS_PATH, PERL5LIB...).

    Run once per SAS installation through ``run_tool`` (argv ``bash -c``, no shell string built from
    the path); ``None`` when the installation has no ``setsas.sh``.
    """
    if sas_dir in _SETSAS_CACHE:
        return dict(_SETSAS_CACHE[sas_dir])
    script = Path(sas_dir) / "setsas.sh"
    if not script.is_file():
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="setsas-") as tmp:
        run = run_tool(
            ["bash", "-c", 'source "$1" >/dev/null 2>&1 && env -0', "setsas", str(script)],
            cwd=tmp,
            env={"SAS_DIR": sas_dir},
            timeout_s=120,
            missing_hint="bash is needed to source setsas.sh",
        )
    out = {}
    for item in run.stdout.split("\0"):
        key, sep, value = item.partition("=")
        if sep and key and not key.startswith("BASH_FUNC") and os.environ.get(key) != value:
            out[key.strip()] = value
    out["SAS_DIR"] = sas_dir
    _SETSAS_CACHE[sas_dir] = out
    return dict(out)


def _sas_path_env(settings: SasSettings) -> dict[str, str]:
    """Variables of the SAS installation ``sas.sas_dir`` when it is not initialised in this shell.

    ``setsas.sh`` is sourced (once) when the installation has one: SAS needs more than ``PATH``
    (``SAS_PATH``, ``LD_LIBRARY_PATH``, ``PERL5LIB``...). Without it, ``bin``/``lib`` are added.
    """
    if not settings.sas_dir:
        return {}
    if os.environ.get("SAS_DIR") != settings.sas_dir:
        sourced = _setsas_env(settings.sas_dir)
        if sourced is not None:
            return sourced
    base = Path(settings.sas_dir)
    path = os.environ.get("PATH", os.defpath)
    add = [str(base / "bin"), str(base / "binextra")]
    new_path = os.pathsep.join([p for p in add if p not in path.split(os.pathsep)] + [path])
    out = {"PATH": new_path, "SAS_DIR": str(base), "SAS_PATH": os.environ.get("SAS_PATH", str(base))}
    lib = os.environ.get("LD_LIBRARY_PATH", "")
    if str(base / "libextra") not in lib:
        out["LD_LIBRARY_PATH"] = os.pathsep.join(
            x for x in (str(base / "lib"), str(base / "libextra"), lib) if x
        )
    return out


def task_env(
    task_dir: Path,
    settings: SasSettings,
    *,
    odf: str | os.PathLike[str] | None = None,
    ccf: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The variables one SAS task sees on top of the inherited environment.

    ``PFILES`` is ``"<task_dir>/pfiles;$SAS_DIR/config:$HEADAS/syspfiles"``: the task writes its
    ``.par`` files in its own directory and reads the system defaults from SAS and from HEASoft (the
    FTOOLs some SAS tasks call need theirs). When ``SAS_DIR``/``HEADAS`` are not known (planning on a
    machine without them) the literals ``${SAS_DIR}``/``${HEADAS}`` are left for the shell to expand.
    """
    sas_dir = settings.sas_dir or "${SAS_DIR}"
    headas = settings.headas or "${HEADAS}"
    env = {
        "PFILES": f"{task_dir}/pfiles;{sas_dir}/config:{headas}/syspfiles",
        "HEADASNOQUERY": "",
        "HEADASPROMPT": "/dev/null",
    }
    if odf is not None:
        env["SAS_ODF"] = str(odf)
    if ccf is not None:
        env["SAS_CCF"] = str(ccf)
    if settings.ccf_path:
        env["SAS_CCFPATH"] = str(settings.ccf_path)
    return env


# ------------------------------------------------------------------------------------ observing mode
def _read_sum_modes(sum_file: Path) -> dict[str, list[str]]:
    """Instrument -> list of ``MODE =`` values from an ODF summary file (``*SUM.SAS``)."""
    return read_odf_summary(sum_file).modes


def camera_mode(obs: Observation, camera: str) -> dict[str, str | None]:
    """Observing mode of ``camera``: ``{"datamode", "submode", "source"}``.

    Read from the event list header (``DATAMODE``/``SUBMODE``) when there is one, else from the ODF
    summary file (``MODE = PrimeFullWindow / ...`` in the instrument's configuration record).
    """
    evt = obs.event_files.get(camera)
    if evt is not None:
        from astropy.io import fits

        try:
            with fits.open(evt, memmap=True) as hdul:
                hdr = hdul["EVENTS"].header if "EVENTS" in hdul else hdul[0].header
                head0 = hdul[0].header
                return {
                    "datamode": hdr.get("DATAMODE", head0.get("DATAMODE")),
                    "submode": hdr.get("SUBMODE", head0.get("SUBMODE")),
                    "source": str(evt),
                }
        except OSError as exc:
            raise InputDataError(f"cannot read the event list header ({exc})", evt) from exc
    if camera in obs.skipped_cameras and camera in obs.modes:
        # left out at discovery (a timing/burst list): the mode read from its header then
        return {"datamode": None, "submode": obs.modes[camera], "source": obs.skipped_cameras[camera]}
    if obs.sum_file is not None:
        main = read_odf_summary(obs.sum_file).main_mode(camera)
        if main:
            return {"datamode": None, "submode": main, "source": str(obs.sum_file)}
    return {"datamode": None, "submode": None, "source": None}


def is_timing_mode(mode: Mapping[str, str | None]) -> bool:
    """True for timing/burst (pn) and fast (MOS central CCD) modes."""
    datamode = str(mode.get("datamode") or "")
    if datamode:
        return datamode.upper() in ("TIMING", "BURST")  # a MOS fast-mode list is IMAGING (outer CCDs)
    return is_timing_submode(mode.get("submode"))


#: pn modes the ESAS quiescent-particle background (pnspectra/pnback FWC data) is made for.
_ESAS_PN_MODES = ("PrimeFullWindow", "PrimeFullWindowExtended")


def mode_skip_reason(obs: Observation, camera: str, settings: SasSettings) -> str | None:
    """Why ``camera`` cannot be reduced in its observing mode (``None`` when it can), before any task runs.

    Timing/burst pn and fast-mode MOS have no imaging events (epchain then espfilt would fail one after
    the other, DAXA #146). With ESAS, pn small/large window has no filter-wheel-closed particle
    background in pnback: the camera is skipped with that reason (``sas.esas: false`` reduces it with
    evselect/arfgen). MOS partial-window modes are processed (the outer CCDs are imaging).
    """
    if camera in obs.skipped_cameras:
        return obs.skipped_cameras[camera]
    mode = camera_mode(obs, camera)
    label = mode.get("submode") or mode.get("datamode")
    if is_timing_mode(mode) and (camera == "pn" or mode.get("datamode")):
        return f"{camera} in {label} mode (timing/burst): no imaging events"
    sub = str(mode.get("submode") or "")
    if settings.esas and camera == "pn" and sub and sub not in _ESAS_PN_MODES:
        return (
            f"pn in {sub} mode: ESAS pnspectra/pnback model the particle background of full-frame "
            "modes only; set sas.esas: false to reduce it with evselect/backscale/rmfgen/arfgen"
        )
    return None


#: FLAG bit of events outside the field of view (the unexposed corners), pn and MOS.
OUT_OF_FOV_FLAG = 0x10000


def corner_event_count(path: str | Path) -> int:
    """Number of out-of-field-of-view (corner) events, ``FLAG & 0x10000``, in an event list."""
    import numpy as np
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True) as hdul:
            flag = np.asarray(hdul["EVENTS"].data["FLAG"])
    except (OSError, KeyError) as exc:
        raise InputDataError(f"cannot read the FLAG column ({exc})", path) from exc
    return int(np.count_nonzero(flag & OUT_OF_FOV_FLAG))


def esas_precondition(
    obs: Observation, camera: str, outdir: Path, cfg: Mapping[str, Any], settings: SasSettings
) -> str | None:
    """Why espfilt/cheese/mosspectra/mosback cannot run on this camera's input list (``None`` when they can).

    They need the unexposed corner events (the corner light curve, the particle-background scaling);
    cleaned lists such as XGA's ``eclean`` have none. Lists the chains make from the ODF always have them.
    """
    uses_espfilt = _sas_flare_method(cfg["flares"]["method"]) == "espfilt"
    if not (uses_espfilt or settings.esas):
        return None
    events = _input_events(obs, camera, outdir, settings)
    if any(ch in events for ch in "*?[") or not Path(events).exists():
        return None  # made by emchain/epchain in this run: corners included
    if corner_event_count(events) > 0:
        return None
    return (
        f"{Path(events).name} has no out-of-field-of-view (corner) events (FLAG & 0x10000): it is a "
        "pre-screened list (e.g. XGA eclean). ESAS espfilt/mosspectra/mosback need the corners: use the "
        "unfiltered PPS *MIEVLI*/*PIEVLI* lists or the emchain/epchain lists from the ODF "
        "(sas.use_pps_events: false), or set flares.method: fixed and sas.esas: false"
    )


# ---------------------------------------------------------------------------------------- expressions
def _flag_expression(camera: str, flag: object) -> str:
    if flag in ("xmmea", None):
        return "#XMMEA_EP" if camera == "pn" else "#XMMEA_EM"
    if flag == "zero":
        return "(FLAG==0)"
    if isinstance(flag, int) and not isinstance(flag, bool):
        return f"((FLAG & 0x{flag:x})==0)"
    raise ConfigError(f"filter.{camera}.flag must be xmmea, zero or an integer bit mask, not {flag!r}")


def screen_expression(camera: str, fcfg: Mapping[str, Any]) -> str:
    """Standard event screening: ``(PATTERN<=4)&&(PI in [200:15000])&&#XMMEA_EP`` (pn defaults).

    Parameters
    ----------
    camera : str
        ``pn``, ``mos1`` or ``mos2``.
    fcfg : mapping
        ``cfg["filter"][camera]`` (pattern_max, flag, pi_min, pi_max [eV], ccds).
    """
    parts = [
        f"(PATTERN<={int(fcfg['pattern_max'])})",
        f"(PI in [{int(fcfg['pi_min'])}:{int(fcfg['pi_max'])}])",
        _flag_expression(camera, fcfg["flag"]),
    ]
    if fcfg["ccds"]:
        parts.append("(" + "||".join(f"(CCDNR=={int(c)})" for c in fcfg["ccds"]) + ")")
    return "&&".join(parts)


def flare_lc_expression(camera: str, band_kev: Sequence[float]) -> str:
    """High-energy single-pattern light curve selection (SAS background-filtering thread)."""
    lo, hi = (round(1000 * float(b)) for b in band_kev)
    flag = "#XMMEA_EP" if camera == "pn" else "#XMMEA_EM"
    return f"{flag}&&(PI>{lo}&&PI<{hi})&&(PATTERN==0)"


def spectrum_selection(camera: str, fcfg: Mapping[str, Any]) -> str:
    """Event selection for spectra: pn ``(FLAG==0)&&(PATTERN<=4)``, MOS ``#XMMEA_EM&&(PATTERN<=12)``."""
    flag = "(FLAG==0)" if camera == "pn" else "#XMMEA_EM"
    return f"{flag}&&(PATTERN<={int(fcfg['pattern_max'])})"


def _num(x: float) -> str:
    return f"{float(x):.2f}".rstrip("0").rstrip(".")


def region_expression(
    regions: Mapping[str, Any],
    kind: str,
    *,
    coords: tuple[str, str] = ("X", "Y"),
    centre: tuple[float, float] | None = None,
) -> str:
    """SAS selection for the source circle (``kind="src"``) or background annulus, minus point sources.

    Radii in ``regions`` are arcmin; SAS sky and detector pixels are 0.05 arcsec.
    """
    cx, cy = centre if centre is not None else (float(regions["centre_x"]), float(regions["centre_y"]))
    per_arcmin = 60.0 / SKY_PIXEL_ARCSEC
    xc, yc = coords
    if kind == "src":
        shape = f"(({xc},{yc}) IN circle({_num(cx)},{_num(cy)},{_num(regions['r_src_arcmin'] * per_arcmin)}))"
    elif kind == "bkg":
        shape = (
            f"(({xc},{yc}) IN annulus({_num(cx)},{_num(cy)},{_num(regions['bkg_inner_arcmin'] * per_arcmin)},"
            f"{_num(regions['bkg_outer_arcmin'] * per_arcmin)}))"
        )
    else:
        raise ValueError(f"region kind must be 'src' or 'bkg', not {kind!r}")
    if coords == ("X", "Y"):
        for ps in regions.get("point_sources") or []:
            r = float(ps["r_arcsec"]) / SKY_PIXEL_ARCSEC
            shape += f"&&!((X,Y) IN circle({_num(ps['x'])},{_num(ps['y'])},{_num(r)}))"
    return shape


# --------------------------------------------------------------------------------------------- helpers
def esas_prefix(obs: Observation, camera: str) -> str:
    """ESAS file prefix, instrument + exposure: ``mos1S001``, ``pnS003``.

    ESAS tasks (SAS >= 21) derive it from the ``EXPIDSTR`` keyword of the event list, so that comes
    first; the PPS file name (``...M1S001MIEVLI...``) is the fallback.
    """
    evt = obs.event_files.get(camera)
    exp = None
    if evt is not None:
        from astropy.io import fits

        try:
            exp = fits.getheader(evt, "EVENTS").get("EXPIDSTR") or None
        except (OSError, KeyError):
            exp = None
        if exp is None:
            m = re.search(rf"{_PPS_TAG[camera]}([SU]\d{{3}})", evt.name, re.IGNORECASE)
            exp = m.group(1).upper() if m else None
    elif obs.sum_file is not None:
        exp = read_odf_summary(obs.sum_file).main_exposure(camera)  # what emchain/epchain will name it
    return f"{camera}{exp or _DEFAULT_EXP[camera]}"


def local_sum_file(obs: Observation, outdir: Path) -> tuple[Path, str] | None:
    """Where the ODF summary file with a local ``PATH`` goes, and its text; ``None`` when no rewrite is needed.

    odfingest records the folder it read the ODF from (``PATH /lustre/...`` of another machine in the
    a907 files); SAS tasks look for the ODF constituents there. As pySAS does, a copy with ``PATH``
    pointing to the local ODF folder is written under ``results/<obsid>/sas/odf/sum/`` and ``SAS_ODF``
    names that copy.
    """
    sum_file = obs.sum_file
    if sum_file is None or obs.odf_dir is None or not obs.odf_ingested:
        return None  # a raw ODF (*SUM.ASC only) has no PATH: odfingest writes the *SUM.SAS
    local = str(obs.odf_dir.resolve())
    summary = read_odf_summary(sum_file)
    if summary.odf_path is not None and summary.odf_path.rstrip("/") == local.rstrip("/"):
        return None
    lines = sum_file.read_text(errors="replace").splitlines()
    text = "\n".join(f"PATH {local}" if ln.startswith("PATH ") else ln for ln in lines) + "\n"
    return _sas_dir(outdir, "odf", "sum") / sum_file.name, text


def write_local_sum_file(obs: Observation, outdir: Path) -> Path | None:
    """Write the summary file of :func:`local_sum_file` (atomically, only when it changed)."""
    target = local_sum_file(obs, outdir)
    if target is None:
        return None
    path, text = target
    _write_region(path, text)
    return path


def _ccf_for(obs: Observation, outdir: Path, settings: SasSettings) -> tuple[str | None, list[Command]]:
    """CCF index to use and the commands needed to make it (cifbuild when only an ODF is there)."""
    if obs.ccf is not None:
        return str(obs.ccf.resolve()), []
    if obs.odf_dir is not None:
        cmds = build_odf_commands(obs, outdir, settings, chain=False)
        return str(_sas_dir(outdir, "odf", "cifbuild") / "ccf.cif"), cmds
    evt = obs.event_files.get("pn") or next(iter(obs.event_files.values()), None)
    if evt is not None:
        # A PPS/SAS event list carries a CALINDEX extension, usable as the CIF (SAS watch-out page).
        return str(evt.resolve()), []
    return None, []


def _odf_for(obs: Observation, outdir: Path, settings: SasSettings, camera: str) -> str | None:
    """``SAS_ODF`` of a task: the fresh odfingest summary file when the chain is rerun, else the ODF folder."""
    if obs.odf_dir is None:
        return None
    if not (settings.use_pps_events and camera in obs.event_files):
        # A folder holding one *SUM.SAS is a valid SAS_ODF (SAS Users' Guide, 2.6).
        return str(_sas_dir(outdir, "odf", "odfingest"))
    local = local_sum_file(obs, outdir)
    return str(local[0]) if local is not None else str(obs.odf_dir.resolve())


def _sas_dir(outdir: Path, step: str, label: str) -> Path:
    return ObsProducts(outdir).sas_task_dir(step, label).resolve()


def _cmd(
    step: str,
    label: str,
    argv: tuple[str, ...],
    outdir: Path,
    settings: SasSettings,
    *,
    odf: str | None = None,
    ccf: str | None = None,
    outputs: Iterable[str | Path] = (),
    links: Iterable[tuple[str, str]] = (),
    description: str = "",
    cwd: Path | None = None,
) -> Command:
    task_dir = cwd if cwd is not None else _sas_dir(outdir, step, label)
    env = task_env(task_dir if cwd is None else task_dir / f"par-{label}", settings, odf=odf, ccf=ccf)
    return Command(
        step=step,
        label=label,
        argv=argv,
        cwd=task_dir,
        env=env,
        outputs=tuple(str(o) for o in outputs),
        links=tuple((n, str(t)) for n, t in links),
        description=description,
        timeout_s=settings.timeout_s,
    )


def build_odf_commands(
    obs: Observation,
    outdir: Path,
    settings: SasSettings,
    *,
    chain: bool = True,
    cameras: Sequence[str] = CAMERAS,
) -> list[Command]:
    """``cifbuild`` + ``odfingest`` (+ ``emchain``/``epchain`` when ``chain``) for an observation with an ODF."""
    if obs.odf_dir is None:
        raise InputDataError("no ODF folder (*SUM.SAS or *SUM.ASC) to run cifbuild/odfingest on", obs.root)
    odf = str(obs.odf_dir.resolve())
    cif_dir = _sas_dir(outdir, "odf", "cifbuild")
    ccf = str(cif_dir / "ccf.cif")
    ingest_dir = _sas_dir(outdir, "odf", "odfingest")
    cmds = [
        _cmd(
            "odf",
            "cifbuild",
            _argv(
                "cifbuild",
                calindexset="ccf.cif",
                withccfpath="no",
                analysisdate="now",
                category="XMMCCF",
                fullpath="yes",
            ),
            outdir,
            settings,
            odf=odf,
            outputs=[ccf],
            description="calibration index file for this observation",
        ),
        _cmd(
            "odf",
            "odfingest",
            _argv("odfingest", odfdir=odf, outdir=str(ingest_dir)),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[str(ingest_dir / "*SUM.SAS")],
            description="ODF summary file with instrument modes",
        ),
    ]
    if chain:
        sum_glob = str(ingest_dir)  # the folder of the new *SUM.SAS (SAS_ODF may name a folder)
        if any(c.startswith("mos") for c in cameras):
            d = _sas_dir(outdir, "odf", "emchain")
            cmds.append(
                _cmd(
                    "odf",
                    "emchain",
                    ("emchain",),
                    outdir,
                    settings,
                    odf=sum_glob,
                    ccf=ccf,
                    outputs=[str(d / "P*M[12][SU]*MIEVLI*.FIT")],
                    description="MOS event lists",
                )
            )
        if "pn" in cameras:
            d = _sas_dir(outdir, "odf", "epchain")
            cmds.append(
                _cmd(
                    "odf",
                    "epchain-oot",
                    _argv("epchain", withoutoftime="true"),
                    outdir,
                    settings,
                    odf=sum_glob,
                    ccf=ccf,
                    cwd=d,
                    outputs=[str(d / "P*PN*OOEVLI*.FIT")],
                    description="pn out-of-time event list (needed by pnspectra/pnback)",
                )
            )
            cmds.append(
                _cmd(
                    "odf",
                    "epchain",
                    ("epchain",),
                    outdir,
                    settings,
                    odf=sum_glob,
                    ccf=ccf,
                    cwd=d,
                    outputs=[str(d / "P*PN*PIEVLI*.FIT")],
                    description="pn event list",
                )
            )
    return cmds


def _input_events(obs: Observation, camera: str, outdir: Path, settings: SasSettings) -> str:
    if settings.use_pps_events and camera in obs.event_files:
        return str(obs.event_files[camera].resolve())
    if obs.odf_dir is None:
        if camera in obs.event_files:
            return str(obs.event_files[camera].resolve())
        raise InputDataError(f"no {camera} event list and no ODF to run the chains on", obs.root)
    # S (scheduled) or U (unscheduled, e.g. U002 of a907 0201901401) exposures. When odfingest's summary
    # gives the exposures' durations, the pattern names the one the observation rule picks (longest imaging
    # exposure), so the run and an exported plan script (whose `pick` takes the first match) read the same
    # list; otherwise the run picks among the matches by the rule (best_event_list).
    exp = _chain_exposure(obs, camera) or "[SU]*"
    if camera == "pn":
        return str(_sas_dir(outdir, "odf", "epchain") / f"P*PN{exp}PIEVLI*.FIT")
    return str(_sas_dir(outdir, "odf", "emchain") / f"P*{_PPS_TAG[camera]}{exp}MIEVLI*.FIT")


def _chain_exposure(obs: Observation, camera: str) -> str | None:
    """The exposure of ``camera`` the chain products are read from, when the ODF summary settles it."""
    if obs.sum_file is None or not obs.odf_ingested:
        return None
    summary = read_odf_summary(obs.sum_file)
    tag = _PPS_TAG[camera]
    ids = summary.exposures.get(tag, [])
    if len(ids) == 1:
        return ids[0]
    if ids and all(tag + i in summary.durations_s for i in ids):
        return summary.main_exposure(camera)
    return None


# ------------------------------------------------------------------------------------------- filter
def build_filter_commands(
    obs: Observation, camera: str, outdir: Path, cfg: Mapping[str, Any], settings: SasSettings
) -> list[Command]:
    """Commands of the filter step for one camera (light curve, flare GTI, screened events).

    Products (in the task directories; published to ``events/<cam>_{lc,gti,clean}.fits``):
    ``evselect-lc/<cam>_lc.fits``, the GTI of ``tabgtigen`` or ``espfilt``, ``evselect-clean/<cam>_clean.fits``.
    """
    step = f"filter_{camera}"
    ccf, cmds = _ccf_for(obs, outdir, settings)
    odf = _odf_for(obs, outdir, settings, camera)
    if not (settings.use_pps_events and camera in obs.event_files) and obs.odf_dir is not None:
        # Reprocess from the ODF with the current SAS and CCF (cifbuild, odfingest, the chain).
        cmds = build_odf_commands(obs, outdir, settings, cameras=(camera,))
        ccf = str(_sas_dir(outdir, "odf", "cifbuild") / "ccf.cif")
    events = _input_events(obs, camera, outdir, settings)
    fls = FlareSettings.from_config(cfg, camera)
    fcfg = cfg["filter"][camera]
    lc_dir = _sas_dir(outdir, step, "evselect-lc")
    lc = lc_dir / f"{camera}_lc.fits"
    cmds.append(
        _cmd(
            step,
            "evselect-lc",
            _argv(
                "evselect",
                table=events,
                withrateset=True,
                rateset=str(lc),
                maketimecolumn=True,
                timecolumn="TIME",
                timebinsize=_num(fls.bin_s),
                makeratecolumn=True,
                expression=flare_lc_expression(camera, fls.band_kev),
            ),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[lc],
            description=f"{camera} {fls.band_kev[0]}-{fls.band_kev[1]} keV light curve, {fls.bin_s} s bins",
        )
    )
    method = _sas_flare_method(fls.method)
    screen = screen_expression(camera, fcfg)
    clean_dir = _sas_dir(outdir, step, "evselect-clean")
    clean = clean_dir / f"{camera}_clean.fits"
    if method == "espfilt":
        d = _sas_dir(outdir, step, "espfilt")
        prefix = esas_prefix(obs, camera)
        link = f"{prefix}.fits"
        links = [(link, events)]
        outputs = [d / f"{prefix}-gti.fits", d / f"{prefix}-allevc.fits"]
        oot_params: dict[str, object] = {}
        oot = _pn_oot_events(obs, outdir, settings, required=False) if camera == "pn" else None
        if oot is not None:
            # The same GTI is applied to the out-of-time list, which pnspectra/pnback need.
            links.append((f"{prefix}-oot.fits", oot))
            oot_params = {"withoot": True, "ootfile": f"{prefix}-oot.fits"}
            outputs.append(d / f"{prefix}-allevcoot.fits")
        cmds.append(
            _cmd(
                step,
                "espfilt",
                _argv(
                    "espfilt",
                    eventfile=link,
                    **oot_params,
                    method="histogram",
                    elow=2500,
                    ehigh=8500,
                    withsmoothing=True,
                    smooth=51,
                    rangescale=15.0 if camera == "pn" else 6.0,  # ESAS cookbook: pn 15, MOS 6
                    allowsigma=_num(fls.nsigma),
                    keepinterfiles=False,
                ),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                links=links,
                outputs=outputs,
                description=f"ESAS soft-proton flare filtering ({fls.nsigma} sigma around the rate histogram peak)",
            )
        )
        gti = d / f"{prefix}-gti.fits"
        table = str(d / f"{prefix}-allevc.fits")
        expression = screen
    elif method == "fixed":
        d = _sas_dir(outdir, step, "tabgtigen")
        gti = d / f"{camera}_gti.fits"
        rate = float(fls.rate if fls.rate is not None else 0.0)
        cmds.append(
            _cmd(
                step,
                "tabgtigen",
                _argv("tabgtigen", table=str(lc), expression=f"RATE<={_num(rate)}", gtiset=str(gti)),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                outputs=[gti],
                description=f"GTI where the {fls.band_kev[0]}-{fls.band_kev[1]} keV rate <= {rate} ct/s",
            )
        )
        table = events
        expression = f"{screen}&&gti({gti},TIME)"
    elif method == "none":
        gti = None
        table = events
        expression = screen
    else:
        raise ConfigError(f"flares.method must be histogram, espfilt, fixed or none, not {method!r}")
    cmds.append(
        _cmd(
            step,
            "evselect-clean",
            _argv(
                "evselect",
                table=table,
                withfilteredset=True,
                filteredset=str(clean),
                destruct=True,
                keepfilteroutput=True,
                updateexposure=True,
                filterexposure=True,
                expression=expression,
            ),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[clean],
            description=f"screened {camera} event list",
        )
    )
    return cmds


# ------------------------------------------------------------------------------------------- spectra
def _det_centre(events: Path, x: float, y: float) -> tuple[float, float]:
    """DETX/DETY of the sky position (x, y), from an affine fit of DET against sky coordinates of the events."""
    import numpy as np
    from astropy.io import fits

    with fits.open(events, memmap=True) as hdul:
        data = hdul["EVENTS"].data
        n = len(data)
        step = max(1, n // 200_000)
        cols = [np.asarray(data[c][::step], dtype=float) for c in ("X", "Y", "DETX", "DETY")]
    sx, sy, dx, dy = cols
    good = np.isfinite(sx) & np.isfinite(sy) & np.isfinite(dx) & np.isfinite(dy) & (sx > 0) & (sy > 0)
    if good.sum() < 10:
        raise InputDataError(
            "too few events with X/Y and DETX/DETY to map sky to detector coordinates", events
        )
    a = np.column_stack([sx[good], sy[good], np.ones(good.sum())])
    cx, *_ = np.linalg.lstsq(a, dx[good], rcond=None)
    cy, *_ = np.linalg.lstsq(a, dy[good], rcond=None)
    return float(cx @ [x, y, 1.0]), float(cy @ [x, y, 1.0])


def build_spectra_commands(
    obs: Observation,
    camera: str,
    outdir: Path,
    regions: Mapping[str, Any],
    cfg: Mapping[str, Any],
    settings: SasSettings,
    *,
    clean_events: str | Path | None = None,
) -> list[Command]:
    """Commands of the spectra step for one camera (ESAS or evselect/backscale/rmfgen/arfgen path).

    ``clean_events`` defaults to the published ``events/<cam>_clean.fits``.
    """
    step = f"spectra_{camera}"
    ccf, _ = _ccf_for(obs, outdir, settings)  # made by the filter step when it needed cifbuild
    cmds: list[Command] = []
    odf = _odf_for(obs, outdir, settings, camera)
    clean = (
        str(Path(clean_events).resolve())
        if clean_events
        else str(ObsProducts(outdir).clean_events(camera).resolve())
    )
    fcfg = cfg["filter"][camera]
    grouping = cfg["spectra"]["grouping"]
    min_counts = int(cfg["spectra"]["min_counts"])
    if settings.esas:
        return _esas_spectra(
            obs,
            camera,
            outdir,
            regions,
            settings,
            step,
            clean,
            ccf,
            odf,
            fcfg,
            grouping,
            min_counts,
            flare_method=_sas_flare_method(cfg["flares"]["method"]),
        )
    sel = spectrum_selection(camera, fcfg)
    binsize, chanmax = _SPEC_BINNING[camera]
    out: dict[str, Path] = {}
    for kind in ("src", "bkg"):
        label = f"evselect-{kind}"
        d = _sas_dir(outdir, step, label)
        out[kind] = d / f"{camera}_{kind}.pha"
        cmds.append(
            _cmd(
                step,
                label,
                _argv(
                    "evselect",
                    table=clean,
                    withspectrumset=True,
                    spectrumset=str(out[kind]),
                    energycolumn="PI",
                    spectralbinsize=binsize,
                    withspecranges=True,
                    specchannelmin=0,
                    specchannelmax=chanmax,
                    expression=f"{sel}&&{region_expression(regions, kind)}",
                ),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                outputs=[out[kind]],
                description=f"{camera} {kind} spectrum",
            )
        )
    rmf = _sas_dir(outdir, step, "rmfgen") / f"{camera}.rmf"
    arf = _sas_dir(outdir, step, "arfgen") / f"{camera}.arf"
    cmds += _response_chain(
        step,
        camera,
        outdir,
        settings,
        odf=odf,
        ccf=ccf,
        src=out["src"],
        bkg=out["bkg"],
        clean=clean,
        rmf=rmf,
        arf=arf,
        detmap_expression=f"{sel}&&{region_expression(regions, 'src')}",
        backscale_note="(area minus bad pixels/chip gaps)",
    )
    cmds += _specgroup(
        step, camera, outdir, settings, odf, ccf, out["src"], out["bkg"], rmf, arf, grouping, min_counts
    )
    return cmds


def build_response_commands(
    obs: Observation,
    camera: str,
    outdir: Path,
    *,
    src: Path,
    bkg: Path,
    clean: Path,
    rmf: Path,
    arf: Path,
    settings: SasSettings,
) -> list[Command]:
    """SAS responses for spectra made elsewhere (Python backend) that carry the evselect DSS keywords.

    ``backscale`` (both spectra, in place), ``rmfgen``, a DETX/DETY detector map of the source region and
    ``arfgen extendedsource=yes detmaptype=dataset`` (the ARF of an extended source).
    """
    step = f"responses_{camera}"
    ccf, _ = _ccf_for(obs, outdir, settings)
    odf = _odf_for(obs, outdir, settings, camera)
    return _response_chain(
        step,
        camera,
        outdir,
        settings,
        odf=odf,
        ccf=ccf,
        src=src,
        bkg=bkg,
        clean=str(clean),
        rmf=rmf,
        arf=arf,
        detmap_expression=None,
        backscale_note="from its DSS region",
    )


def _response_chain(
    step: str,
    camera: str,
    outdir: Path,
    settings: SasSettings,
    *,
    odf: str | None,
    ccf: str | None,
    src: Path,
    bkg: Path,
    clean: str,
    rmf: Path,
    arf: Path,
    detmap_expression: str | None,
    backscale_note: str,
) -> list[Command]:
    """``backscale`` of both spectra (in place), ``rmfgen``, a DETX/DETY detector map (of the events that
    ``detmap_expression`` selects; all of them when ``None``) and ``arfgen extendedsource=yes
    detmaptype=dataset``: the responses of an extended source, for the SAS and the Python spectra alike."""
    kw: dict[str, Any] = {"odf": odf, "ccf": ccf}
    cmds = [
        _cmd(
            step,
            f"backscale-{kind}",
            _argv("backscale", spectrumset=str(path), badpixlocation=clean),
            outdir,
            settings,
            outputs=[path],
            description=f"BACKSCAL of the {kind} spectrum {backscale_note}",
            **kw,
        )
        for kind, path in (("src", src), ("bkg", bkg))
    ]
    cmds.append(
        _cmd(
            step,
            "rmfgen",
            _argv("rmfgen", spectrumset=str(src), rmfset=str(rmf)),
            outdir,
            settings,
            outputs=[rmf],
            description="redistribution matrix",
            **kw,
        )
    )
    detmap = _sas_dir(outdir, step, "evselect-detmap") / f"{camera}_detmap.ds"
    cmds.append(
        _cmd(
            step,
            "evselect-detmap",
            _argv(
                "evselect",
                table=clean,
                withimageset=True,
                imageset=str(detmap),
                xcolumn="DETX",
                ycolumn="DETY",
                imagebinning="binSize",
                ximagebinsize=120,
                yimagebinsize=120,
                expression=detmap_expression,
            ),
            outdir,
            settings,
            outputs=[detmap],
            description=(
                "detector map of the source region (weights the ARF of an extended source)"
                if detmap_expression
                else "detector map (weights the ARF of an extended source)"
            ),
            **kw,
        )
    )
    cmds.append(
        _cmd(
            step,
            "arfgen",
            _argv(
                "arfgen",
                spectrumset=str(src),
                arfset=str(arf),
                withrmfset=True,
                rmfset=str(rmf),
                badpixlocation=clean,
                extendedsource=True,
                detmaptype="dataset",
                detmaparray=str(detmap),
            ),
            outdir,
            settings,
            outputs=[arf],
            description="ARF for an extended source",
            **kw,
        )
    )
    return cmds


def _specgroup(
    step: str,
    camera: str,
    outdir: Path,
    settings: SasSettings,
    odf: str | None,
    ccf: str | None,
    src: Path,
    bkg: Path,
    rmf: Path,
    arf: Path,
    grouping: str,
    min_counts: int,
) -> list[Command]:
    if grouping == "none":
        return []
    grp = _sas_dir(outdir, step, "specgroup") / f"{camera}_src_grp.pha"
    # rmfset/arfset/backgndset are read only with their with* switch (specgroup-1.7 XPROC of ngc7793_ulx4)
    params: dict[str, object] = {
        "spectrumset": str(src),
        "groupedset": str(grp),
        "withrmfset": True,
        "rmfset": str(rmf),
        "witharfset": True,
        "arfset": str(arf),
        "withbgdset": True,
        "backgndset": str(bkg),
    }
    if grouping == "min_counts":
        params["withCounts"] = True
        params["mincounts"] = min_counts
    elif grouping == "optimal":
        params["withoversampling"] = True
        params["oversample"] = 3
    else:
        raise ConfigError(f"spectra.grouping must be min_counts, optimal or none, not {grouping!r}")
    return [
        _cmd(
            step,
            "specgroup",
            _argv("specgroup", **params),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[grp],
            description=f"grouping ({grouping}) and RESPFILE/ANCRFILE/BACKFILE keywords",
        )
    ]


def _esas_spectra(
    obs: Observation,
    camera: str,
    outdir: Path,
    regions: Mapping[str, Any],
    settings: SasSettings,
    step: str,
    clean: str,
    ccf: str | None,
    odf: str | None,
    fcfg: Mapping[str, Any],
    grouping: str,
    min_counts: int,
    *,
    flare_method: str = "espfilt",
) -> list[Command]:
    prefix = esas_prefix(obs, camera)
    if flare_method != "espfilt":
        raise ConfigError(
            "sas.esas: true needs flares.method: espfilt: mosspectra/pnspectra and mosback/pnback "
            "use the unexposed corner events, which espfilt keeps and the screened list drops "
            f"(flares.method is {flare_method!r}); or set sas.esas: false"
        )
    d = _sas_dir(outdir, step, "esas")
    evt_link = f"{prefix}-allevc.fits"
    # espfilt's filtered list (FOV + corners), not the flag-screened events/<cam>_clean.fits.
    espfilt_dir = _sas_dir(outdir, f"filter_{camera}", "espfilt")
    lists = [("", str(espfilt_dir / evt_link))]
    cheese_params: dict[str, object] = {("pnfile" if camera == "pn" else f"{camera}file"): evt_link}
    if camera == "pn":
        _pn_oot_events(obs, outdir, settings)  # raises with advice when there is no OOT list at all
        # the OOT list filtered with the same GTI by espfilt in the filter step
        lists.append(("oot", str(espfilt_dir / f"{prefix}-allevcoot.fits")))
        cheese_params["pnootfile"] = f"{prefix}-allevcoot.fits"
    # SAS 22 espfilt no longer applies the FLAG screening: do it here, with the ESAS masks that keep
    # the out-of-FOV corners (0x10000 is not in them): MOS 0x766aa000, pn 0xcfa0000 (ESAS cookbook).
    flag_mask = 0xCFA0000 if camera == "pn" else 0x766AA000
    cmds: list[Command] = []
    for kind, espfilt_list in lists:
        name = f"{prefix}-allevc{kind}.fits"
        cmds.append(
            _cmd(
                step,
                f"evselect-esasflag{('-' + kind) if kind else ''}",
                _argv(
                    "evselect",
                    table=f"{prefix}-espfilt{kind}.fits",
                    withfilteredset=True,
                    filteredset=name,
                    destruct=True,
                    keepfilteroutput=True,
                    updateexposure=True,
                    filterexposure=True,
                    expression=f"((FLAG & 0x{flag_mask:x})==0)",
                ),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                cwd=d,
                links=[(f"{prefix}-espfilt{kind}.fits", espfilt_list)],
                outputs=[d / name],
                description=f"ESAS FLAG screening of espfilt's {kind or 'event'} list, corners kept",
            )
        )
    cheese_params.update(scale=0.5, ratetotal=1.0, dist=40.0, elowlist=400, ehighlist=7200, mlmin=15)
    att_cmds, att = _attitude_for_esas(obs, camera, outdir, settings, d, odf=odf, ccf=ccf, step=step)
    cmds += att_cmds
    cmds.append(
        _cmd(
            step,
            "cheese",
            _argv("cheese", **cheese_params),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            cwd=d,
            # cheese/mosspectra run atthkgen unless atthk.fits is in the working directory
            links=[] if att is None else [("atthk.fits", att)],
            outputs=[d / f"{prefix}-bkgregtdet.fits", d / f"{prefix}-bkgregtsky.fits"],
            description="point-source detection and masks (wraps edetect_chain)",
        )
    )
    # The region file of mosspectra/pnspectra is a selection in detector coordinates.
    events_for_map = (
        Path(clean) if Path(clean).exists() else Path(_input_events(obs, camera, outdir, settings))
    )
    if not events_for_map.exists():
        raise InputDataError(
            "the ESAS region needs an event list to map sky to detector coordinates: run the "
            "filter step first",
            events_for_map,
        )
    centre = _det_centre(events_for_map, float(regions["centre_x"]), float(regions["centre_y"]))
    region_text = "&&" + region_expression(regions, "src", coords=("DETX", "DETY"), centre=centre) + "\n"
    region_file = d / f"reg{camera}.txt"
    _write_region(region_file, region_text)
    common = {
        "withsrcrem": True,
        "maskdet": f"{prefix}-bkgregtdet.fits",
        "masksky": f"{prefix}-bkgregtsky.fits",
        "withregion": True,
        "regionfile": region_file.name,
        "keepinterfiles": True,
        "pattern": int(fcfg["pattern_max"]),
        "elow": 0,  # elow = ehigh = 0: spectra only, no images
        "ehigh": 0,
    }
    # pn and MOS differ in their tasks, the pn out-of-time events and quadrants, and the MOS CCD flags
    fovt = d / f"{prefix}-fovt.pi"
    if camera == "pn":
        quads = "T T T T"
        spectra_task = "pnspectra"
        spectra_args = {
            "eventfile": evt_link,
            "ootevtfile": f"{prefix}-allevcoot.fits",
            **common,
            "quads": quads,
        }
        spectra_outputs = [fovt, d / f"{prefix}-fovtoot.pi", d / f"{prefix}.rmf", d / f"{prefix}.arf"]
        back_task = "pnback"
        back_args = {
            "inspecfile": fovt.name,
            "inspecoot": f"{prefix}-fovtoot.pi",
            "elow": 0,
            "ehigh": 0,
            "quads": quads,
        }
    else:
        ccds = mos_ccds(obs, camera)
        spectra_task = "mosspectra"
        spectra_args = {"eventfile": evt_link, **common, "ccds": ccds}
        spectra_outputs = [fovt, d / f"{prefix}.rmf", d / f"{prefix}.arf"]
        back_task = "mosback"
        back_args = {"inspecfile": fovt.name, "elow": 0, "ehigh": 0, "ccds": ccds}
    for task, args, outputs, description in (
        (spectra_task, spectra_args, spectra_outputs, "source spectrum, RMF and ARF"),
        (back_task, back_args, [d / f"{prefix}-bkg.pi"], "quiescent particle background spectrum"),
    ):
        cmds.append(
            _cmd(
                step,
                task,
                _argv(task, **args),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                cwd=d,
                outputs=outputs,
                description=f"{camera} {description} (ESAS)",
            )
        )
    cmds += _specgroup(
        step,
        camera,
        outdir,
        settings,
        odf,
        ccf,
        d / f"{prefix}-fovt.pi",
        d / f"{prefix}-bkg.pi",
        d / f"{prefix}.rmf",
        d / f"{prefix}.arf",
        grouping,
        min_counts,
    )
    return cmds


#: MOS1 CCDs lost to micrometeoroid events: CCD6 on 2005-03-09, CCD3 on 2012-12-11.
_MOS1_CCD_LOSSES = (("2005-03-09", 6), ("2012-12-11", 3))


def _date_obs(obs: Observation, camera: str) -> str | None:
    evt = obs.event_files.get(camera)
    if evt is not None:
        from astropy.io import fits

        try:
            hdr = fits.getheader(evt, "EVENTS")
            return str(hdr.get("DATE-OBS") or fits.getheader(evt, 0).get("DATE-OBS") or "") or None
        except (OSError, KeyError):
            return None
    if obs.sum_file is not None:
        return read_odf_summary(obs.sum_file).start
    return None


def mos_ccds(obs: Observation, camera: str) -> str:
    """The ``ccds`` flags of mosspectra/mosback: every CCD, minus the MOS1 CCDs lost before the observation."""
    on = [True] * 7
    date = _date_obs(obs, camera)
    if camera == "mos1" and date:
        for lost_on, ccd in _MOS1_CCD_LOSSES:
            if date[:10] >= lost_on:
                on[ccd - 1] = False
    return " ".join("T" if x else "F" for x in on)


def _attitude_for_esas(
    obs: Observation,
    camera: str,
    outdir: Path,
    settings: SasSettings,
    cwd: Path,
    *,
    odf: str | None,
    ccf: str | None,
    step: str,
) -> tuple[list[Command], str | None]:
    """The attitude file linked as ``atthk.fits`` for cheese/mosspectra, and atthkgen when there is none."""
    att = _attitude_file(obs)
    if att is not None:
        return [], att
    if obs.odf_dir is None:
        raise InputDataError(
            "ESAS cheese/mosspectra need the attitude (*ATTTSR* or atthk.fits) or an ODF to run atthkgen",
            obs.root,
        )
    out = cwd / "atthk.fits"
    cmd = _cmd(
        step,
        "atthkgen",
        _argv("atthkgen", atthkset=str(out), timestep=1),
        outdir,
        settings,
        odf=odf,
        ccf=ccf,
        cwd=cwd,
        outputs=[out],
        description="attitude history (atthk.fits, read by cheese and mosspectra)",
    )
    return [cmd], None


def _pn_oot_events(
    obs: Observation, outdir: Path, settings: SasSettings, *, required: bool = True
) -> str | None:
    """The pn out-of-time event list: PPS ``*PNS003OOEVLI*`` file, or ``epchain withoutoftime=true`` output."""
    if settings.use_pps_events or obs.odf_dir is None:
        for path in sorted(obs.root.rglob("*")):
            if re.search(r"PN[SU]\d{3}OOEVLI", path.name, re.IGNORECASE):
                return str(path.resolve())
    if obs.odf_dir is not None:
        return str(_sas_dir(outdir, "odf", "epchain") / "P*PN*OOEVLI*.FIT")
    if not required:
        return None
    raise InputDataError(
        "ESAS pnspectra/pnback need the pn out-of-time event list (*PNS003OOEVLI*) or an ODF "
        "to make it with `epchain withoutoftime=true`; set sas.esas: false to use the "
        "evselect/arfgen path",
        obs.root,
    )


def _write_region(path: Path, text: str) -> None:
    from ..fsutil import atomic_write_text

    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


# -------------------------------------------------------------------------------------------- images
def _attitude_file(obs: Observation) -> str | None:
    for path in sorted(obs.root.rglob("*")):
        if re.search(r"ATTTSR|atthk", path.name, re.IGNORECASE):
            return str(path.resolve())
    return None


def build_image_commands(
    obs: Observation,
    camera: str,
    outdir: Path,
    cfg: Mapping[str, Any],
    settings: SasSettings,
    *,
    band_kev: tuple[float, float] = (0.5, 2.0),
    bin_phys: int = 80,
    clean_events: str | Path | None = None,
) -> list[Command]:
    """Counts image and exposure map (``evselect`` + ``eexpmap``) of one camera in one band."""
    step = f"images_{camera}"
    ccf, _ = _ccf_for(obs, outdir, settings)
    odf = _odf_for(obs, outdir, settings, camera)
    clean = (
        str(Path(clean_events).resolve())
        if clean_events
        else str(ObsProducts(outdir).clean_events(camera).resolve())
    )
    lo, hi = (round(1000 * b) for b in band_kev)
    tag = f"{camera}_{band_kev[0]:.2f}-{band_kev[1]:.2f}keV"
    img = _sas_dir(outdir, step, "evselect-img") / f"{tag}_img.fits"
    cmds = [
        _cmd(
            step,
            "evselect-img",
            _argv(
                "evselect",
                table=clean,
                withimageset=True,
                imageset=str(img),
                xcolumn="X",
                ycolumn="Y",
                imagebinning="binSize",
                ximagebinsize=bin_phys,
                yimagebinsize=bin_phys,
                expression=f"{screen_expression(camera, cfg['filter'][camera])}&&(PI in [{lo}:{hi}])",
            ),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[img],
            description=f"{camera} counts image {band_kev} keV",
        )
    ]
    att = _attitude_file(obs)
    if att is None:
        if obs.odf_dir is None:
            raise InputDataError(
                "eexpmap needs an attitude file (*ATTTSR*) or an ODF to run atthkgen", obs.root
            )
        d = _sas_dir(outdir, step, "atthkgen")
        att = str(d / "atthk.fits")
        cmds.append(
            _cmd(
                step,
                "atthkgen",
                _argv("atthkgen", atthkset=att, timestep=1),
                outdir,
                settings,
                odf=odf,
                ccf=ccf,
                outputs=[att],
                description="attitude history",
            )
        )
    expmap = _sas_dir(outdir, step, "eexpmap") / f"{tag}_expmap.fits"
    cmds.append(
        _cmd(
            step,
            "eexpmap",
            _argv(
                "eexpmap",
                imageset=str(img),
                attitudeset=att,
                eventset=clean,
                expimageset=str(expmap),
                pimin=lo,
                pimax=hi,
            ),
            outdir,
            settings,
            odf=odf,
            ccf=ccf,
            outputs=[expmap],
            description="vignetting-corrected exposure map",
        )
    )
    return cmds


def build_mosaic_command(
    images: Sequence[str | Path],
    mosaic: str | Path,
    outdir: Path,
    settings: SasSettings,
    *,
    label: str = "emosaic",
) -> Command:
    """``emosaic`` of several images (counts or exposure maps)."""
    return _cmd(
        "images",
        label,
        _argv("emosaic", imagesets=" ".join(str(i) for i in images), mosaicedset=str(mosaic)),
        outdir,
        settings,
        outputs=[mosaic],
        description="mosaic of the camera images",
    )


# ------------------------------------------------------------------------------------------ planning
def plan_observation(
    obs: Observation,
    outdir: Path,
    cfg: Mapping[str, Any],
    *,
    regions: Mapping[str, Any] | None = None,
    settings: SasSettings | None = None,
) -> tuple[list[Command], dict[str, str]]:
    """Every command the SAS backend would run for ``obs``, and the cameras it would skip (with reasons).

    Regions come from ``regions`` or ``outdir/regions/regions.json``; without them, spectra commands
    use a circle of ``regions.radius.arcmin`` around the target (``meta.json`` ra/dec or the pointing).
    """
    settings = settings or settings_from_config(cfg)
    outdir = Path(outdir)
    skipped: dict[str, str] = {}
    cmds: list[Command] = []
    cams = [c for c in (cfg["cameras"] or obs.cameras) if c in obs.cameras]
    _ccf, odf_cmds = _ccf_for(obs, outdir, settings)
    seen: set[tuple[str, str]] = set()

    def add(new: Iterable[Command]) -> None:
        for c in new:
            if (c.step, c.label) not in seen:
                seen.add((c.step, c.label))
                cmds.append(c)

    add(odf_cmds)
    for cam, why in obs.skipped_cameras.items():
        if cam in (cfg["cameras"] or CAMERAS_ALL):
            skipped[cam] = why  # left out at discovery (timing/burst list)
    active = []
    for cam in cams:
        reason = mode_skip_reason(obs, cam, settings) or esas_precondition(obs, cam, outdir, cfg, settings)
        if reason is not None:
            skipped[cam] = reason
            continue
        active.append(cam)
        add(build_filter_commands(obs, cam, outdir, cfg, settings))
    if regions is None:
        path = ObsProducts(outdir).regions_json
        regions = _json(path) if path.exists() else None
    for cam in active:
        evt = obs.event_files.get(cam)
        regs = regions if regions is not None else (_provisional_regions(obs, cam, cfg) if evt else None)
        if regs is None:
            skipped[f"{cam} spectra"] = (
                "the plan stops after the filter step: the ObsID has only an ODF, and the regions (and "
                "the sky-to-detector map of the ESAS region) need the event lists emchain/epchain make; "
                "run `xmm-survey run --set backend.reduction=sas` (the regions step runs between), then "
                "plan again for the spectra commands"
            )
            continue
        try:
            add(build_spectra_commands(obs, cam, outdir, regs, cfg, settings))
        except InputDataError as exc:
            skipped[f"{cam} spectra"] = f"the plan stops before the spectra: {exc}"
    return cmds, skipped


def _json(path: Path) -> dict[str, Any]:
    from ..fsutil import read_json

    return read_json(path)


def _provisional_regions(obs: Observation, camera: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Source circle/background annulus at the target position when the regions step has not run yet."""
    from astropy.io import fits

    evt = obs.event_files[camera]
    with fits.open(evt, memmap=True) as hdul:
        hdr = hdul["EVENTS"].header
        names = [c.name for c in hdul["EVENTS"].columns]
    ix, iy = names.index("X") + 1, names.index("Y") + 1
    ra = obs.meta.get("ra", hdr.get("RA_OBJ", hdr.get(f"TCRVL{ix}")))
    dec = obs.meta.get("dec", hdr.get("DEC_OBJ", hdr.get(f"TCRVL{iy}")))
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = [hdr[f"TCTYP{ix}"], hdr[f"TCTYP{iy}"]]
    w.wcs.crpix = [hdr[f"TCRPX{ix}"], hdr[f"TCRPX{iy}"]]
    w.wcs.crval = [hdr[f"TCRVL{ix}"], hdr[f"TCRVL{iy}"]]
    w.wcs.cdelt = [hdr[f"TCDLT{ix}"], hdr[f"TCDLT{iy}"]]
    x, y = w.all_world2pix([[float(ra), float(dec)]], 1)[0]
    r = float(cfg["regions"]["radius"]["arcmin"])
    bg = cfg["regions"]["background"]
    return {
        "centre_ra": float(ra),
        "centre_dec": float(dec),
        "centre_x": float(x),
        "centre_y": float(y),
        "r_src_arcmin": r,
        "bkg_inner_arcmin": r * float(bg["inner"]),
        "bkg_outer_arcmin": r * float(bg["outer"]),
        "point_sources": [],
        "provisional": True,
    }


# -------------------------------------------------------------------------------------------- running
def _is_glob(value: str) -> bool:
    return any(ch in Path(value).name for ch in "*?[")


def _glob_file(pattern: str) -> list[str]:
    """Files matching a chain-product pattern: only the file name is a pattern, the folder is literal."""
    folder, name = os.path.split(pattern)
    return sorted(glob.glob(os.path.join(glob.escape(folder), name)))


def _resolve_glob(pattern: str, what: str) -> str:
    if not _is_glob(pattern):
        return pattern
    matches = _glob_file(pattern)
    if not matches:
        raise ToolError(f"{what}: no file matches {pattern}")
    if len(matches) > 1 and re.search(r"EVLI", Path(pattern).name):
        # several exposures of one camera (S and U): the observation's rule picks one, never silently
        return str(best_event_list([Path(m) for m in matches]))
    return matches[0]


def _materialise(cmd: Command) -> tuple[list[str], dict[str, str]]:
    """argv/env with chain-product globs replaced by the files that now exist."""
    argv = []
    for arg in cmd.argv:
        name, sep, value = arg.partition("=")
        if sep and value.startswith("/") and _is_glob(value):
            arg = f"{name}={_resolve_glob(value, cmd.label)}"
        argv.append(arg)
    env = {k: (_resolve_glob(v, cmd.label) if k == "SAS_ODF" else v) for k, v in cmd.env.items()}
    return argv, env


def run_commands(
    cmds: Sequence[Command],
    *,
    settings: SasSettings,
    log: logging.Logger | None = None,
    log_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``cmds`` in order through ``run_tool``; check each command's outputs; return one record each.

    Raises
    ------
    ToolNotFoundError
        A task is not installed (message says how to point to SAS).
    ExternalToolError
        A task failed (exit code, SAS error line or timeout).
    ToolError
        A task ran but an expected output is missing.
    """
    records = []
    base_env = _sas_path_env(settings)
    for cmd in cmds:
        if Path(cmd.task).name in TASK_PARAMS:
            check_argv(cmd.argv, context=f"{cmd.step}/{cmd.label}")
    for cmd in cmds:
        cmd.cwd.mkdir(parents=True, exist_ok=True)
        pfiles_dir = Path(cmd.env["PFILES"].split(";", 1)[0])
        pfiles_dir.mkdir(parents=True, exist_ok=True)
        for name, target in cmd.links:
            real = _resolve_glob(target, cmd.label)
            link = cmd.cwd / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(real)
        argv, env = _materialise(cmd)
        if log is not None and cmd.description:
            log.info("[%s] %s: %s", cmd.step, cmd.label, cmd.description)
        run: ToolRun = run_tool(
            argv,
            cwd=cmd.cwd,
            env={**base_env, **env},
            timeout_s=cmd.timeout_s,
            log=log,
            log_path=(log_dir / f"{cmd.step}.log") if log_dir else cmd.cwd / f"{cmd.label}.log",
            missing_hint=missing_sas_hint(cmd.task),
        )
        missing = [o for o in cmd.outputs if not (_glob_file(o) if _is_glob(o) else Path(o).exists())]
        if missing:
            raise ToolError(
                f"{cmd.task} ({cmd.step}/{cmd.label}) finished but did not write {', '.join(missing)}"
            )
        rec = run.to_dict()
        rec.update(step=cmd.step, label=cmd.label, outputs=list(cmd.outputs))
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------- export
_SCRIPT_VARS = ("${SAS_DIR}", "${HEADAS}")
_SAFE_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")

#: Bash function of the exported script: the first file matching a chain-product pattern. The folder is
#: quoted by the caller (it may hold spaces or ``$(...)``); only the file-name pattern, built by the
#: backend from a fixed alphabet, is left for bash to expand.
SCRIPT_HELPERS = (
    'pick() { local f; for f in "$1"/$2; do if [ -e "$f" ]; then printf "%s\\n" "$f"; return 0; fi; done; '
    'echo "no file matches $1/$2" >&2; exit 4; }'
)


def _quote_env(value: str) -> str:
    # ${SAS_DIR}/${HEADAS} (not known when planning) are left for bash to expand; everything else is literal.
    parts = re.split(r"(\$\{SAS_DIR\}|\$\{HEADAS\})", value)
    return "".join(f'"{p}"' if p in _SCRIPT_VARS else (shlex.quote(p) if p else "") for p in parts)


def _glob_ref(pattern: str, names: dict[str, str], lines: list[str]) -> str:
    """``"$_gN"``: a variable the script sets to the file ``pattern`` matches (folder quoted, name safe)."""
    if pattern not in names:
        folder, name = os.path.split(pattern)
        if not _SAFE_PATTERN.match(name):
            raise ValueError(f"unsafe file-name pattern {name!r} in a SAS command")
        var = f"_g{len(names) + 1}"
        names[pattern] = var
        lines.append(f"{var}=$(pick {shlex.quote(folder)} {name})")
    return f'"${names[pattern]}"'


def _quote_arg(arg: str, names: dict[str, str], lines: list[str]) -> str:
    name, sep, value = arg.partition("=")
    if sep and value.startswith("/") and _is_glob(value):
        return shlex.quote(name + "=") + _glob_ref(value, names, lines)
    return shlex.quote(arg)


def script_lines(cmds: Sequence[Command], *, prelude: Sequence[str] = ()) -> list[str]:
    """Bash lines running ``cmds`` exactly as :func:`run_commands` does (cd, env, argv per task).

    Every path is quoted (``shlex.quote``); chain products whose names are only known after a task ran
    are found by :data:`SCRIPT_HELPERS` ``pick`` with the folder quoted, so a results path with spaces
    or ``$(...)`` is used as it is and never executed.
    """
    lines: list[str] = [SCRIPT_HELPERS, ""]
    lines += list(prelude)
    names: dict[str, str] = {}
    for cmd in cmds:
        lines.append(f"# [{cmd.step}] {cmd.label}: {cmd.description}".rstrip(": ").replace("\n", " "))
        pfiles_dir = cmd.env["PFILES"].split(";", 1)[0]
        lines.append(f"mkdir -p {shlex.quote(str(cmd.cwd))} {shlex.quote(pfiles_dir)}")
        for name, target in cmd.links:
            tgt = _glob_ref(target, names, lines) if _is_glob(target) else shlex.quote(target)
            lines.append(f"ln -sfn {tgt} {shlex.quote(str(cmd.cwd / name))}")
        env_parts = []
        for k, v in cmd.env.items():
            if k == "SAS_ODF" and _is_glob(v):
                env_parts.append(f"{k}={_glob_ref(v, names, lines)}")
            else:
                env_parts.append(f"{k}={_quote_env(v)}")
        argv = " ".join(_quote_arg(a, names, lines) for a in cmd.argv)
        lines.append(f"( cd {shlex.quote(str(cmd.cwd))} && env {' '.join(env_parts)} {argv} )")
        plain = [shlex.quote(o) for o in cmd.outputs if not _is_glob(o)]
        for o in cmd.outputs:
            if _is_glob(o):
                folder, name = os.path.split(o)
                if not _SAFE_PATTERN.match(name):
                    raise ValueError(f"unsafe file-name pattern {name!r} in a SAS command")
                lines.append(f"pick {shlex.quote(folder)} {name} >/dev/null")
        if plain:
            lines.append(
                f'for f in {" ".join(plain)}; do test -e "$f" || {{ echo "missing output: $f" >&2; exit 4; }}; done'
            )
        if cmd.label == "evselect-clean" and cmd.step.startswith("filter_") and cmd.outputs:
            # published as the backend does: the spectra and images commands read events/<cam>_clean.fits
            camera = cmd.step.split("_", 1)[1]
            published = ObsProducts(cmd.cwd.parents[2]).clean_events(camera)  # cwd = sas/<step>/<label>
            lines.append(f"mkdir -p {shlex.quote(str(published.parent))}")
            lines.append(f"cp {shlex.quote(cmd.outputs[0])} {shlex.quote(str(published))}")
        lines.append("")
    return lines


def sum_rewrite_lines(obs: Observation, outdir: Path) -> list[str]:
    """Script lines writing the ODF summary copy of :func:`local_sum_file` (``PATH`` = local ODF folder)."""
    target = local_sum_file(obs, outdir)
    if target is None or obs.sum_file is None or obs.odf_dir is None:
        return []
    path, _text = target
    src, odf = shlex.quote(str(obs.sum_file.resolve())), shlex.quote(str(obs.odf_dir.resolve()))
    return [
        "# ODF summary file with PATH pointing to the local ODF folder (its PATH names another machine)",
        f"mkdir -p {shlex.quote(str(path.parent))}",
        f"odf={odf}",
        'while IFS= read -r line || [ -n "$line" ]; do case $line in "PATH "*) printf "PATH %s\\n" "$odf";; '
        f'*) printf "%s\\n" "$line";; esac; done < {src} > {shlex.quote(str(path))}',
        "",
    ]


# ------------------------------------------------------------------------------------------- backend
class SasBackend:
    """``ReductionBackend`` running the SAS/ESAS tools (see ``docs/CONTRACTS.md``).

    Parameters
    ----------
    settings : SasSettings, optional
        Default: from the ``sas:`` section of each call's ``cfg`` and the environment.
    """

    name = "sas"

    def __init__(self, settings: SasSettings | None = None):
        self._settings = settings
        self._versions: dict[str, str] | None = None
        self._cfg: Mapping[str, Any] = {}

    def settings(self, cfg: Mapping[str, Any] | None = None) -> SasSettings:
        """Settings given at construction, else from ``cfg`` (or the last config a step was called with)."""
        if cfg:
            self._cfg = cfg
        return self._settings or settings_from_config(cfg or self._cfg)

    def check_installation(
        self, tools: Iterable[str] = ("sasversion", *_SAS_TASKS_FILTER), cfg: Mapping[str, Any] | None = None
    ) -> str:
        """Return ``SAS_DIR`` if it and every tool in ``tools`` are found, else ``ToolNotFoundError``."""
        settings = self.settings(cfg)
        if not settings.sas_dir:
            raise ToolNotFoundError(
                "backend.reduction is 'sas' but SAS_DIR is not set and sas.sas_dir is null: "
                + missing_sas_hint(next(iter(tools), "evselect"))
            )
        env_path = _sas_path_env(settings).get("PATH", os.environ.get("PATH", ""))
        for tool in tools:
            if shutil.which(tool, path=env_path) is None:
                raise ToolNotFoundError(f"SAS_DIR={settings.sas_dir}: " + missing_sas_hint(tool))
        return settings.sas_dir

    def versions(self, cfg: Mapping[str, Any] | None = None) -> dict[str, str]:
        """SAS release and build (from ``sasversion``), for provenance."""
        if self._versions is None:
            settings = self.settings(cfg)
            self.check_installation(("sasversion",), cfg)
            import tempfile

            with tempfile.TemporaryDirectory(prefix="sasversion-") as tmp:
                env = {**_sas_path_env(settings), **task_env(Path(tmp), settings)}
                run = run_tool(
                    ["sasversion"],
                    cwd=tmp,
                    env=env,
                    timeout_s=120,
                    missing_hint=missing_sas_hint("sasversion"),
                )
            info = parse_sasversion(run.output)
            self._versions = {
                "sas": info.get("release", "unknown"),
                "sas_build": info.get("build", "unknown"),
            }
            if run.task_version:
                self._versions["sasversion"] = run.task_version
        return dict(self._versions)

    # ---------------------------------------------------------------- steps
    def filter_camera(
        self, obs: Observation, camera: str, outdir: Path, cfg: Mapping[str, Any], *, log: logging.Logger
    ) -> dict[str, Any]:
        """Screen one camera with SAS; publish ``events/<cam>_{clean,gti,lc}.fits`` atomically."""
        outdir = Path(outdir)
        mode = camera_mode(obs, camera)
        settings = self.settings(cfg)
        # Checked before any task runs: a mode or an input list the chain cannot use is one clear
        # reason, not a cascade of task failures.
        # A missing SAS is the user's to fix for every ObsID: reported before the data preconditions.
        reason = mode_skip_reason(obs, camera, settings)
        if reason is None:
            tools = (
                ["evselect"]
                + (["espfilt"] if _sas_flare_method(cfg["flares"]["method"]) == "espfilt" else [])
                + (["tabgtigen"] if cfg["flares"]["method"] == "fixed" else [])
            )
            self.check_installation(tools, cfg)
            reason = esas_precondition(obs, camera, outdir, cfg, settings)
        if reason is not None:
            log.warning("filter %s skipped: %s", camera, reason)
            return {"camera": camera, "skipped": True, "reason": reason, "mode": mode}
        cmds = build_filter_commands(obs, camera, outdir, cfg, settings)
        local_sum = write_local_sum_file(obs, outdir)
        if local_sum is not None:
            log.info("ODF summary PATH rewritten to the local ODF folder: %s", local_sum)
        if any(c.step == "odf" for c in cmds):
            done = [c for c in cmds if c.step == "odf" and all(glob.glob(o) for o in c.outputs)]
            cmds = [c for c in cmds if c not in done]
        products = ObsProducts(outdir)
        records = run_commands(cmds, settings=settings, log=log, log_dir=products.logs_dir)
        lc = next(c.outputs[0] for c in cmds if c.label == "evselect-lc")
        clean = next(c.outputs[0] for c in cmds if c.label == "evselect-clean")
        gti = next((c.outputs[0] for c in cmds if c.label in ("tabgtigen", "espfilt")), None)
        published = {
            "clean": _publish(clean, products.clean_events(camera)),
            "lc": _publish(lc, products.light_curve(camera)),
        }
        if gti is not None:
            published["gti"] = _publish(gti, products.gti(camera))
        return {
            "camera": camera,
            "mode": mode,
            "products": {k: str(v) for k, v in published.items()},
            "tasks": records,
            "versions": {r["argv"][0]: r["task_version"] for r in records if r["task_version"]},
        }

    def spectra_camera(
        self,
        obs: Observation,
        camera: str,
        outdir: Path,
        regions: dict[str, Any],
        cfg: Mapping[str, Any],
        *,
        log: logging.Logger,
    ) -> dict[str, Any]:
        """Spectra, responses and background of one camera; publish ``spectra/<cam>_*`` atomically."""
        outdir = Path(outdir)
        settings = self.settings(cfg)
        cmds = build_spectra_commands(obs, camera, outdir, regions, cfg, settings)
        self.check_installation(sorted({c.task for c in cmds}), cfg)
        write_local_sum_file(obs, outdir)
        products = ObsProducts(outdir)
        records = run_commands(cmds, settings=settings, log=log, log_dir=products.logs_dir)
        by_label = {c.label: c for c in cmds}
        if settings.esas:
            esas = by_label["pnspectra" if camera == "pn" else "mosspectra"]
            back = by_label["pnback" if camera == "pn" else "mosback"]
            src, rmf, arf = esas.outputs[0], esas.outputs[-2], esas.outputs[-1]
            bkg = back.outputs[0]
        else:
            src, bkg = by_label["evselect-src"].outputs[0], by_label["evselect-bkg"].outputs[0]
            rmf, arf = by_label["rmfgen"].outputs[0], by_label["arfgen"].outputs[0]
        if "specgroup" in by_label:
            src = by_label["specgroup"].outputs[0]
        published = {
            "bkg": _publish(bkg, products.bkg_spectrum(camera)),
            "rmf": _publish(rmf, products.rmf(camera)),
            "arf": _publish(arf, products.arf(camera)),
            "src": _publish(
                src,
                products.src_spectrum(camera),
                keywords={
                    "RESPFILE": products.rmf(camera).name,
                    "ANCRFILE": products.arf(camera).name,
                    "BACKFILE": products.bkg_spectrum(camera).name,
                },
            ),
        }
        return {
            "camera": camera,
            "esas": settings.esas,
            "products": {k: str(v) for k, v in published.items()},
            "tasks": records,
            "versions": {r["argv"][0]: r["task_version"] for r in records if r["task_version"]},
        }

    def plan(
        self,
        obs: Observation,
        outdir: Path,
        cfg: Mapping[str, Any],
        *,
        regions: Mapping[str, Any] | None = None,
    ) -> tuple[list[Command], dict[str, str]]:
        """All commands for ``obs`` without running anything (see :func:`plan_observation`)."""
        return plan_observation(obs, outdir, cfg, regions=regions, settings=self.settings(cfg))


def _publish(src: str | Path, target: Path, *, keywords: Mapping[str, str] | None = None) -> Path:
    """Copy a task product to its contract path atomically (optionally fixing PHA file-name keywords)."""
    src = Path(src)
    if not src.exists():
        raise ToolError(f"expected SAS product {src} is missing")
    with atomic_path(target) as tmp:
        if keywords:
            from astropy.io import fits

            with fits.open(src) as hdul:
                ext = hdul["SPECTRUM"] if "SPECTRUM" in hdul else hdul[1]
                for key, value in keywords.items():
                    ext.header[key] = value
                hdul.writeto(tmp, checksum=True)
        else:
            shutil.copyfile(src, tmp)
    return target
