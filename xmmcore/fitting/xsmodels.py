"""XSPEC's own model library (``xspectrampoline``, GPL-3.0-or-later, optional extra ``models``).

Registers XSPEC components that have no numpy implementation here (``tbabs``, ``ztbabs``, ``phabs``,
``zphabs``, ``zwabs``, ``cabs``, ``mekal``, ``vmekal``, ``bknpower``, ``bkn2pow``, ``cutoffpl``,
``zcutoffpl``, ``zpowerlw``, ``zbbody``, ``diskbb``, ``lorentz``). Names, parameters, defaults and
limits are read from XSPEC's own ``model.dat``. Without ``xspectrampoline`` these names raise
:class:`~xmmcore.errors.ConfigError` telling the user to ``pip install xmm-survey[models]``.
:func:`xspec_component` gives the XSPEC version of any ``model.dat`` model with a C or single-precision
Fortran interface (``xspec_component("wabs")`` next to the numpy ``wabs``, for tests).

MEKAL data and ``HEADAS``
-------------------------
XSPEC finds model data under ``$HEADAS/spectral/modelData`` and reads ``HEADAS`` once, when the
library is loaded (``import xspectrampoline``); there is no C entry point to set the model-data path
later. The six MEKAL files ship as package data (``xmmcore/data/mekal/``), so :func:`load_library`
builds a private directory (``~/.cache/xmm-survey/headas/<libxspec>-<hash>``) of symlinks -- ``lib``
and ``spectral/manager`` to the wheel, ``spectral/modelData/mekal?.dat`` to the package data -- sets
``os.environ["HEADAS"]`` to it for the import only, and restores the previous value (or removes it)
right after. This is the one place the project touches ``os.environ``: the library reads the variable at
import, and restoring it keeps a user's HEASoft ``HEADAS`` intact for everything else.
If something imported ``xspectrampoline`` earlier with another ``HEADAS``, :func:`load_library`
re-runs the library's ``FNINIT`` (which re-reads ``HEADAS``) under the private directory, the same way.
``mekal``'s ``switch`` is fixed to 0 (calculate: switch 1 needs ``mekal.mod``, which is not shipped);
``C_meka`` is never called (with its data missing it ends the process).

Abundances: a fit passes its table (``evaluate(..., abund=)``; without one the registry's default,
:func:`xmmcore.fitting.models.get_abundance`), applied to the library before an evaluation when it
differs from the library's current table.

``tbabs`` is exp(-nH sigma(E)) with sigma depending only on the grid and the abundance table: sigma is
taken once from the (double-precision) library per (grid, table) and every evaluation after that is one
exponential, equal to the library's to 1e-13. ``phabs`` stays with the library: its single-precision
arithmetic is not exactly exp(-nH sigma) (relative differences up to 3e-5 where the transmission is below
e^-5, 1e-7 absolute), and a frozen phabs is evaluated once per grid anyway (the model's cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import shlex
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import models
from .models import Component, Parameter

__all__ = [
    "EXP_ABSORBERS",
    "MEKAL_FILES",
    "XSPEC_COMPONENTS",
    "ExpAbsorberComponent",
    "XspecComponent",
    "XspecModelInfo",
    "available",
    "library_version",
    "load_library",
    "model_info",
    "private_headas",
    "xspec_component",
]

log = logging.getLogger(__name__)

#: XSPEC models registered under their (lower-case) XSPEC names; the numpy ones in ``models`` stay.
XSPEC_COMPONENTS = (
    "tbabs",
    "ztbabs",
    "phabs",
    "zphabs",
    "zwabs",
    "cabs",
    "mekal",
    "vmekal",
    "bknpower",
    "bkn2pow",
    "cutoffpl",
    "zcutoffpl",
    "zpowerlw",
    "zbbody",
    "diskbb",
    "lorentz",
)
#: XSPEC models whose numpy version in ``models`` is kept; registered only if missing there.
_FALLBACKS = ("wabs", "powerlaw", "bremss", "zbremss", "gaussian", "zgauss", "bbody", "bbodyrad")
MEKAL_FILES = tuple(f"mekal{i}.dat" for i in range(1, 7))
_NEVER_CALL = {"C_meka", "C_vmeka"}  # end the process when their data are missing
_FIXED_SWITCH = {"mekal": 0.0, "vmekal": 0.0}

_INSTALL_HINT = "pip install 'xmm-survey[models]'"
_lock = threading.RLock()
_called: set[str] = set()
_state: dict[str, Any] = {"lib": None, "abund": None, "models": None}


# ------------------------------------------------------------------------------ locating the wheel
def available() -> bool:
    """True if ``xspectrampoline`` is installed (it is not imported)."""
    return importlib.util.find_spec("xspectrampoline") is not None


def _package_dir() -> Path:
    spec = importlib.util.find_spec("xspectrampoline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"XSPEC models need the optional xspectrampoline package: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _libxspec_dir() -> Path:
    pkg = _package_dir()
    cands = sorted(p for p in pkg.glob("LibXSPEC_*") if (p / "lib").is_dir())
    if not cands:
        raise ConfigError(
            f"xspectrampoline at {pkg} has no LibXSPEC_* directory; reinstall it ({_INSTALL_HINT})"
        )
    return cands[-1]


def _mekal_data_dir() -> Path:
    return Path(str(resources.files("xmmcore") / "data" / "mekal"))


def _symlink(target: Path, link: Path) -> None:
    """Create or refresh ``link -> target`` atomically (safe with concurrent workers)."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mktemp(prefix=f".{link.name}.", dir=link.parent))
    os.symlink(target, tmp)
    os.replace(tmp, link)


def private_headas() -> Path:
    """Build (if needed) and return the private ``HEADAS`` directory for the installed xspectrampoline.

    Layout: ``lib`` and ``spectral/manager`` link to the wheel's ``LibXSPEC_*``;
    ``spectral/modelData/mekal1..6.dat`` link to ``xmmcore/data/mekal/``.
    """
    libxspec = _libxspec_dir()
    mekal = _mekal_data_dir()
    tag = hashlib.sha256(f"{libxspec.resolve()}|{mekal.resolve()}".encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "xmm-survey" / "headas" / f"{libxspec.name}-{tag}"
    _symlink(libxspec / "lib", root / "lib")
    _symlink(libxspec / "spectral" / "manager", root / "spectral" / "manager")
    for name in MEKAL_FILES:
        if (mekal / name).is_file():
            _symlink(mekal / name, root / "spectral" / "modelData" / name)
    return root


@contextlib.contextmanager
def _stdout_to_log() -> Iterator[None]:
    """Send what the Fortran/C++ library prints on fd 1 to the log (keeps ``--json`` stdout clean)."""
    fd = 1  # the C/Fortran library writes to the process's fd 1, whatever sys.stdout is
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace").strip()
            if text:
                log.info("XSPEC library: %s", " | ".join(line.strip() for line in text.splitlines()))


@contextlib.contextmanager
def _headas_set(headas: Path) -> Iterator[None]:
    """``HEADAS`` set for the duration of the block only (the library reads it at import/FNINIT)."""
    previous = os.environ.get("HEADAS")
    os.environ["HEADAS"] = str(headas)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HEADAS", None)
        else:
            os.environ["HEADAS"] = previous


def load_library() -> Any:
    """Import xspectrampoline (once) with the private ``HEADAS`` and return its ``LibXSPEC`` handle.

    Raises
    ------
    ConfigError
        xspectrampoline is not installed (``pip install xmm-survey[models]``) or fails to load.
    """
    with _lock:
        if _state["lib"] is not None:
            return _state["lib"]
        if not available():
            raise ConfigError(f"XSPEC models need the optional xspectrampoline package: {_INSTALL_HINT}")
        headas = private_headas()
        try:
            with _headas_set(headas), _stdout_to_log():
                import xspectrampoline
        except Exception as exc:  # NoLibXSPEC, OSError from dlopen
            raise ConfigError(
                f"xspectrampoline failed to load ({exc!r}); reinstall it: {_INSTALL_HINT}"
            ) from exc
        used = Path(xspectrampoline.get_HEADAS())
        if not all((used / "spectral" / "modelData" / n).is_file() for n in MEKAL_FILES):
            # imported earlier by someone else with another HEADAS: FNINIT re-reads it (model-data path)
            log.info("xspectrampoline was imported with HEADAS=%s; re-initialising it with %s", used, headas)
            with _headas_set(headas), _stdout_to_log():
                xspectrampoline.get_libraries().lib_xs_functions.FNINIT()
        lib = xspectrampoline.get_libraries()
        funcs = lib.lib_xs_functions
        funcs.FPSOLR.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        funcs.FPSOLR.restype = None
        funcs.FGSOLR.restype = ctypes.c_char_p
        _state["lib"] = lib
        _state["abund"] = funcs.FGSOLR().decode().strip().lower()
        return lib


def library_version() -> str:
    """Version of the XSPEC model library in use (``xspectrampoline x.y.z (LibXSPEC_v6_35_1)``), or ``""``."""
    if not available():
        return ""
    from importlib.metadata import version

    return f"xspectrampoline {version('xspectrampoline')} ({_libxspec_dir().name})"


def _apply_abundance(table: str | None = None) -> None:
    want = table or models.get_abundance()
    if want == _state["abund"]:
        return
    ierr = ctypes.c_int(0)
    with _stdout_to_log():
        _state["lib"].lib_xs_functions.FPSOLR(want.encode(), ctypes.byref(ierr))
    if ierr.value != 0:
        raise ConfigError(f"XSPEC library rejected abundance table {want!r} (error {ierr.value})")
    _state["abund"] = want


# ------------------------------------------------------------------------------------ model.dat
@dataclass(frozen=True)
class XspecModelInfo:
    """One model of XSPEC's ``model.dat``.

    Attributes
    ----------
    name : str
        XSPEC name as written there (``TBabs``).
    kind : str
        ``add``, ``mul``, ``con``...
    function : str
        Library function (``C_tbabs``, ``xsphab``).
    params : tuple of Parameter
        Fit parameters (no ``norm``).
    switches : tuple of (int, float)
        Positions (in the full parameter array) and default values of switch/scale parameters.
    n_total : int
        Length of the parameter array the function takes.
    """

    name: str
    kind: str
    function: str
    params: tuple[Parameter, ...]
    switches: tuple[tuple[int, float], ...]
    n_total: int


def _parse_model_dat(path: Path) -> dict[str, XspecModelInfo]:
    out: dict[str, XspecModelInfo] = {}
    lines = path.read_text(errors="replace").splitlines()
    i = 0
    while i < len(lines):
        head = lines[i].split()
        i += 1
        if len(head) < 6 or head[5] not in ("add", "mul", "con", "acn", "mix", "amx"):
            continue
        try:
            npar = int(head[1])
        except ValueError:
            continue
        params: list[Parameter] = []
        switches: list[tuple[int, float]] = []
        for k in range(npar):
            if i >= len(lines):
                break
            raw = lines[i].strip()
            i += 1
            try:
                tok = shlex.split(raw)
            except ValueError:
                tok = raw.split()
            if not tok:
                continue
            if tok[0].startswith("$") or tok[0].startswith("*"):
                value = next((float(t) for t in tok[1:] if _is_float(t)), 0.0)
                switches.append((k, value))
                continue
            nums = (
                [float(t) for t in tok[2:8]]
                if len(tok) >= 8 and all(_is_float(t) for t in tok[2:8])
                else None
            )
            if nums is None:
                continue
            default, hard_min, soft_min, soft_max, hard_max, delta = nums
            unit = tok[1].strip()
            params.append(
                Parameter(
                    tok[0],
                    default,
                    unit,
                    soft_min,
                    soft_max,
                    hard_min,
                    hard_max,
                    frozen=delta < 0,
                    delta=abs(delta) or 0.01,
                )
            )
        out[head[0].lower()] = XspecModelInfo(head[0], head[5], head[4], tuple(params), tuple(switches), npar)
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _model_table() -> dict[str, XspecModelInfo]:
    with _lock:
        if _state["models"] is None:
            _state["models"] = _parse_model_dat(_libxspec_dir() / "spectral" / "manager" / "model.dat")
        return _state["models"]


def model_info(name: str) -> XspecModelInfo:
    """The ``model.dat`` entry of an XSPEC model (case-insensitive).

    Raises
    ------
    ConfigError
        xspectrampoline is missing, or XSPEC has no such model.
    """
    table = _model_table()
    try:
        return table[name.lower()]
    except KeyError:
        raise ConfigError(f"XSPEC's model library has no model {name!r}") from None


# ------------------------------------------------------------------------------------ component
class XspecComponent(Component):
    """A component evaluated by XSPEC's model library.

    Parameters
    ----------
    info : XspecModelInfo
        The ``model.dat`` entry.
    """

    def __init__(self, info: XspecModelInfo) -> None:
        super().__init__()
        if info.kind not in ("add", "mul"):
            raise ConfigError(f"XSPEC model {info.name} is of type {info.kind!r}; only add/mul are supported")
        if info.function in _NEVER_CALL:
            raise ConfigError(
                f"XSPEC model {info.name} ({info.function}) needs model data that is not shipped"
            )
        self.info = info
        self.name = info.name.lower()
        self.kind = info.kind
        self.absorption = info.kind == "mul"
        self.uses_abundance = True  # several models read the library's table; the cache keys on it
        self.params = [Parameter(**vars(p)) for p in info.params]
        if info.kind == "add":
            self.params.append(Parameter("norm", 1.0, "", 0.0, 1e24, 0.0, 1e24, delta=0.01))
        fn = info.function
        self._dtype: type[np.floating[Any]]
        if fn.startswith("C_"):
            self._symbol, self._dtype = fn, np.float64
        elif fn.startswith(("F_", "c_", "f_")):
            raise ConfigError(f"XSPEC model {info.name}: interface of {fn} is not supported")
        else:
            self._symbol, self._dtype = fn + "_", np.float32
        self._call: Any = None

    def _function(self) -> Any:
        if self._call is None:
            lib = load_library()
            try:
                self._call = lib.get_model(self._symbol)
            except AttributeError:
                raise ConfigError(
                    f"XSPEC library has no function {self._symbol} for {self.info.name}"
                ) from None
        return self._call

    def _full_params(self, values: Sequence[float]) -> np.ndarray:
        full = np.empty(self.info.n_total, dtype=self._dtype)
        fixed = dict(self.info.switches)
        if self.name in _FIXED_SWITCH:
            fixed = dict.fromkeys(fixed, _FIXED_SWITCH[self.name])
        vals = iter(values)
        for k in range(self.info.n_total):
            full[k] = fixed[k] if k in fixed else next(vals)
        return full

    def evaluate(
        self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float], *, abund: str | None = None
    ) -> np.ndarray:
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        return self._library_evaluate(lo, hi, [float(v) for v in values], abund)

    def _library_evaluate(
        self, lo: np.ndarray, hi: np.ndarray, vals: list[float], abund: str | None
    ) -> np.ndarray:
        """The library's function on the grid (``vals`` including ``norm`` for additive models)."""
        norm = 1.0
        if self.kind == "add":
            norm = vals.pop()
        if lo.size == 0:
            return np.zeros(0)
        contiguous = lo.size == 1 or np.array_equal(lo[1:], hi[:-1])
        if contiguous:
            edges = np.append(lo, hi[-1])
        else:  # evaluate on lo0, hi0, lo1, hi1, ... and keep every other bin
            edges = np.empty(2 * lo.size)
            edges[0::2], edges[1::2] = lo, hi
        edges = np.ascontiguousarray(edges, dtype=self._dtype)
        pars = self._full_params(vals)
        out = np.zeros(edges.size - 1, dtype=self._dtype)
        err = np.zeros_like(out)
        func = self._function()
        with _lock:
            _apply_abundance(abund)
            if self._symbol in _called:
                func(edges, pars, out, err)
            else:  # many models print a notice on their first call
                with _stdout_to_log():
                    func(edges, pars, out, err)
                _called.add(self._symbol)
        result = out.astype(float)
        if not contiguous:
            result = result[0::2]
        return norm * result if self.kind == "add" else result


#: double-precision absorbers that are exp(-nH sigma(E)) with nH their only parameter
EXP_ABSORBERS = ("tbabs",)
_NH_LADDER = 10.0 ** np.arange(-6.0, 4.0)  # nH values the cross section is read at (1e22 cm^-2)
_SIGMA_CACHE: dict[tuple[str, bytes, str], np.ndarray] = {}


class ExpAbsorberComponent(XspecComponent):
    """``tbabs``: exp(-nH sigma(E)), sigma read from the library once per (grid, abundance table).

    sigma (per 1e22 H atoms, bin-averaged as the library does it) comes from the library's own
    transmission at a ladder of nH values, taking in each bin the one whose optical depth is nearest
    1 (no underflow, -ln(T) well conditioned).
    """

    def evaluate(
        self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float], *, abund: str | None = None
    ) -> np.ndarray:
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        nh = float(values[0])
        sigma = self.cross_section(lo, hi, abund)
        return np.exp(-nh * sigma)

    def cross_section(self, lo: np.ndarray, hi: np.ndarray, abund: str | None = None) -> np.ndarray:
        """sigma(E) per bin in units of 1/(1e22 cm^-2), cached per grid and abundance table.

        A grid made of several contiguous pieces (the flux bands side by side) is cached piece by piece:
        the library's value in a bin depends on that bin only, and the observed-frame bands are the same
        for every source, so only the rest-frame bands of a new redshift are read from the library.
        """
        from .expression import grid_key

        table = abund or models.get_abundance()
        key = (self.name, grid_key(lo, hi), table)
        sigma = _SIGMA_CACHE.get(key)
        if sigma is None:
            breaks = np.flatnonzero(lo[1:] != hi[:-1]) + 1
            if breaks.size:
                pieces = zip(np.r_[0, breaks], np.r_[breaks, lo.size], strict=True)
                sigma = np.concatenate([self.cross_section(lo[a:b], hi[a:b], table) for a, b in pieces])
            else:
                sigma = self._read_cross_section(lo, hi, table)
            sigma.flags.writeable = False
            if len(_SIGMA_CACHE) > 64:
                _SIGMA_CACHE.clear()
            _SIGMA_CACHE[key] = sigma
        return sigma

    def _read_cross_section(self, lo: np.ndarray, hi: np.ndarray, table: str) -> np.ndarray:
        best = np.full(lo.size, np.inf)  # |ln(tau)|: distance of the optical depth from 1
        sigma = np.zeros(lo.size)
        for nh in _NH_LADDER:
            trans = self._library_evaluate(lo, hi, [float(nh)], table)
            with np.errstate(divide="ignore", invalid="ignore"):
                tau = -np.log(trans)
                score = np.abs(np.log(tau))
            use = np.isfinite(score) & (trans > 0) & (score < best)
            sigma[use] = tau[use] / nh
            best[use] = score[use]
        return sigma


def xspec_component(name: str) -> XspecComponent:
    """XSPEC-library version of any ``model.dat`` add/mul model (``xspec_component("wabs")``).

    Raises
    ------
    ConfigError
        xspectrampoline is not installed, the model is unknown, or its interface is unsupported.
    """
    if not available():
        raise ConfigError(f"XSPEC model {name!r} needs the optional xspectrampoline package: {_INSTALL_HINT}")
    info = model_info(name)
    if info.name.lower() in EXP_ABSORBERS:
        return ExpAbsorberComponent(info)
    return XspecComponent(info)


def _factory(name: str) -> Any:
    return lambda: xspec_component(name)


for _name in XSPEC_COMPONENTS:
    models.register_component(_name, _factory(_name))
for _name in _FALLBACKS:
    models.register_component(_name, _factory(_name), replace=False)
