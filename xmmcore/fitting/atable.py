"""OGIP 92-009 table models (XSPEC ``atable{file}`` / ``mtable{file}``) and ``apec`` as a table.

A table model file holds a grid of spectra (``SPECTRA``) over the interpolated parameters
(``PARAMETERS``) on an energy grid (``ENERGIES``). Evaluation follows XSPEC:

* each interpolated parameter is located on its grid and weighted linearly in the parameter
  (``METHOD`` = 0) or in its logarithm (``METHOD`` = 1); values outside the grid are clamped;
* the spectrum is the multilinear combination of the 2^n neighbouring grid spectra (plus
  ``p_k * ADDSPnnn`` for additional parameters);
* with ``REDSHIFT = T`` a ``redshift`` parameter is appended: the table is read at E (1 + z) and,
  for additive tables, divided by (1 + z) (time dilation);
* the result is rebinned onto the requested bins conserving photons (additive: the photons of a
  table bin are spread uniformly over that bin; multiplicative: bin-averaged factor, with the
  ``LOELEMNT``/``HIELEMNT`` values outside the table, default 0 for additive and 1 for
  multiplicative tables).

``apec`` is registered as the APEC table (``xmm-survey models build-apec`` makes it) with XSPEC's
apec parameters ``kT, Abundanc, Redshift, norm``; the table is looked up in
``$XMM_SURVEY_APEC_TABLE``, then in the user cache (:func:`default_apec_cache_path`), then in the
copy shipped as package data (:func:`packaged_apec_path`, so no download is ever needed at run time).
The table is built from AtomDB emissivities with Anders & Grevesse (1989) abundances; with another
abundance table selected (``abund``) it still uses angr and a warning says so.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import ConfigError, InputDataError
from ..fsutil import regular_file
from . import models
from .models import Component, Parameter

__all__ = [
    "APEC_TABLE_ENV",
    "TableComponent",
    "TableModel",
    "TableParameter",
    "apec_component",
    "default_apec_cache_path",
    "find_apec_table",
    "packaged_apec_path",
    "read_table_model",
    "resolve_table_name",
    "table_component",
]

log = logging.getLogger(__name__)

APEC_TABLE_ENV = "XMM_SURVEY_APEC_TABLE"


@dataclass(frozen=True)
class TableParameter:
    """One row of the ``PARAMETERS`` extension.

    Attributes
    ----------
    name : str
    method : int
        0 linear, 1 logarithmic interpolation.
    initial, delta, minimum, bottom, top, maximum : float
        XSPEC defaults and limits (``delta < 0`` means frozen by default).
    values : ndarray
        Grid values (``NUMBVALS`` of them; empty for additional parameters).
    """

    name: str
    method: int
    initial: float
    delta: float
    minimum: float
    bottom: float
    top: float
    maximum: float
    values: np.ndarray

    def to_parameter(self) -> Parameter:
        """The fit :class:`~xmmcore.fitting.models.Parameter` with the table's defaults and limits."""
        return Parameter(
            self.name,
            float(self.initial),
            "",
            float(self.bottom),
            float(self.top),
            float(self.minimum),
            float(self.maximum),
            frozen=bool(self.delta < 0),
            delta=float(abs(self.delta)) or 0.01,
        )


class TableModel:
    """An OGIP 92-009 table model loaded in memory.

    Use :func:`read_table_model` (cached) rather than the constructor.

    Attributes
    ----------
    path : Path
    name : str
        ``MODLNAME``.
    additive : bool
        ``ADDMODEL``.
    redshift : bool
        ``REDSHIFT`` (adds a ``redshift`` parameter after the table's parameters).
    interp_params, add_params : list of TableParameter
    energ_lo, energ_hi : ndarray
        Table energy bins (keV).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            hdul = fits.open(self.path, memmap=False)
        except FileNotFoundError as exc:
            raise InputDataError("table model file not found", self.path) from exc
        except OSError as exc:
            raise InputDataError(f"cannot read table model as FITS: {exc}", self.path) from exc
        with hdul:
            self._read(hdul)

    def _fail(self, msg: str) -> InputDataError:
        return InputDataError(msg, self.path)

    def _read(self, hdul: fits.HDUList) -> None:
        for ext in ("PARAMETERS", "ENERGIES", "SPECTRA"):
            if ext not in hdul:
                raise self._fail(f"no {ext} extension (not an OGIP 92-009 table model)")
        prim = hdul[0].header
        self.name = str(prim.get("MODLNAME", self.path.stem)).strip()
        self.unit = str(prim.get("MODLUNIT", "")).strip()
        if "ADDMODEL" not in prim:
            raise self._fail("primary header has no ADDMODEL keyword")
        self.additive = bool(prim["ADDMODEL"])
        self.redshift = bool(prim.get("REDSHIFT", False))
        default_fill = 0.0 if self.additive else 1.0
        self.low_value = float(prim.get("LOELEMNT", default_fill))
        self.high_value = float(prim.get("HIELEMNT", default_fill))

        phdr = hdul["PARAMETERS"].header
        pdata = hdul["PARAMETERS"].data
        for col in (
            "NAME",
            "METHOD",
            "INITIAL",
            "DELTA",
            "MINIMUM",
            "BOTTOM",
            "TOP",
            "MAXIMUM",
            "NUMBVALS",
            "VALUE",
        ):
            if col not in pdata.columns.names:
                raise self._fail(f"PARAMETERS has no {col} column")
        n_int = int(phdr.get("NINTPARM", len(pdata)))
        n_add = int(phdr.get("NADDPARM", 0))
        if n_int + n_add != len(pdata) or n_int < 1:
            raise self._fail(
                f"PARAMETERS: NINTPARM={n_int} + NADDPARM={n_add} does not match {len(pdata)} rows"
            )
        params = []
        for i, row in enumerate(pdata):
            nval = int(row["NUMBVALS"])
            values = np.atleast_1d(np.asarray(row["VALUE"], dtype=float))[:nval] if i < n_int else np.empty(0)
            method = int(row["METHOD"])
            name = str(row["NAME"]).strip()
            if i < n_int:
                if nval < 1 or values.size != nval:
                    raise self._fail(f"PARAMETERS: {name} has NUMBVALS={nval} but {values.size} values")
                if np.any(np.diff(values) <= 0):
                    raise self._fail(f"PARAMETERS: grid of {name} is not strictly increasing")
                if method == 1 and np.any(values <= 0):
                    raise self._fail(
                        f"PARAMETERS: {name} uses log interpolation (METHOD=1) but has values <= 0"
                    )
            params.append(
                TableParameter(
                    name,
                    method,
                    float(row["INITIAL"]),
                    float(row["DELTA"]),
                    float(row["MINIMUM"]),
                    float(row["BOTTOM"]),
                    float(row["TOP"]),
                    float(row["MAXIMUM"]),
                    values,
                )
            )
        self.interp_params = params[:n_int]
        self.add_params = params[n_int:]

        edata = hdul["ENERGIES"].data
        try:
            self.energ_lo = np.asarray(edata["ENERG_LO"], dtype=float)
            self.energ_hi = np.asarray(edata["ENERG_HI"], dtype=float)
        except KeyError as exc:
            raise self._fail("ENERGIES needs ENERG_LO and ENERG_HI columns") from exc
        if (
            self.energ_lo.size == 0
            or np.any(self.energ_hi <= self.energ_lo)
            or np.any(self.energ_lo[1:] < self.energ_hi[:-1] * (1 - 1e-6))
        ):
            raise self._fail("ENERGIES: bins must be increasing and not overlap")
        self._edges = np.append(self.energ_lo, self.energ_hi[-1])
        self._contiguous = bool(np.allclose(self.energ_lo[1:], self.energ_hi[:-1], rtol=1e-6, atol=0))

        sdata = hdul["SPECTRA"].data
        if "PARAMVAL" not in sdata.columns.names or "INTPSPEC" not in sdata.columns.names:
            raise self._fail("SPECTRA needs PARAMVAL and INTPSPEC columns")
        shape = tuple(p.values.size for p in self.interp_params)
        n_en = self.energ_lo.size
        if len(sdata) != int(np.prod(shape)):
            raise self._fail(f"SPECTRA has {len(sdata)} rows, the parameter grid needs {int(np.prod(shape))}")
        paramval = np.asarray(sdata["PARAMVAL"], dtype=float).reshape(len(sdata), -1)
        if paramval.shape[1] != n_int:
            raise self._fail(f"SPECTRA PARAMVAL has {paramval.shape[1]} values per row, expected {n_int}")
        spectra = np.asarray(sdata["INTPSPEC"], dtype=float).reshape(len(sdata), -1)
        if spectra.shape[1] != n_en:
            raise self._fail(f"SPECTRA INTPSPEC has {spectra.shape[1]} bins, ENERGIES has {n_en}")
        # place each row on the grid by its PARAMVAL (the row order is then irrelevant)
        index = []
        for k, p in enumerate(self.interp_params):
            pos = np.searchsorted(p.values, paramval[:, k])
            pos = np.clip(pos, 0, p.values.size - 1)
            lower = np.clip(pos - 1, 0, None)
            pick = np.where(
                np.abs(p.values[lower] - paramval[:, k]) < np.abs(p.values[pos] - paramval[:, k]), lower, pos
            )
            if not np.allclose(p.values[pick], paramval[:, k], rtol=1e-5, atol=1e-12):
                raise self._fail(f"SPECTRA PARAMVAL values of {p.name} are not on its PARAMETERS grid")
            index.append(pick)
        flat = np.ravel_multi_index(tuple(index), shape)
        if np.unique(flat).size != flat.size:
            raise self._fail("SPECTRA has duplicate parameter combinations")
        self._grid = np.empty((int(np.prod(shape)), n_en))
        self._grid[flat] = spectra
        self._shape = shape
        #: Interpolated axes weighted by Catmull-Rom cubics instead of XSPEC's linear weights (apec's kT).
        self.cubic_axes: frozenset[int] = frozenset()
        self._add_grids = []
        for k in range(1, n_add + 1):
            col = f"ADDSP{k:03d}"
            if col not in sdata.columns.names:
                raise self._fail(f"SPECTRA has no {col} column for additional parameter {k}")
            g = np.empty_like(self._grid)
            g[flat] = np.asarray(sdata[col], dtype=float).reshape(len(sdata), -1)
            self._add_grids.append(g)

    # ------------------------------------------------------------------ parameters
    def parameters(self, *, redshift_name: str = "redshift") -> list[Parameter]:
        """Fit parameters in XSPEC order: interpolated, additional, then redshift (no ``norm``)."""
        pars = [p.to_parameter() for p in self.interp_params + self.add_params]
        if self.redshift:
            pars.append(Parameter(redshift_name, 0.0, "", 0.0, 5.0, 0.0, 5.0, frozen=True, delta=0.01))
        return pars

    @property
    def n_params(self) -> int:
        """Number of parameter values :meth:`evaluate` takes (no ``norm``)."""
        return len(self.interp_params) + len(self.add_params) + int(self.redshift)

    # ------------------------------------------------------------------ evaluation
    def interpolate(self, values: Sequence[float]) -> np.ndarray:
        """Spectrum on the table's own energy bins for the interpolated (+ additional) parameter values.

        Parameters
        ----------
        values : sequence of float
            One value per interpolated parameter, then one per additional parameter.

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per table bin (additive, norm = 1) or the factor per bin (read-only).
        """
        # The last values' spectrum is kept: a fit evaluates each (kT, Z) on every camera's grid (pn, MOS)
        # and the flux draws on the observed and the rest-frame grid, all from the same interpolation.
        # The key holds the cubic axes: apec's table is a shallow copy of the cached one, with other weights.
        key = (tuple(float(v) for v in values), self.cubic_axes)
        last = getattr(self, "_interp_last", None)
        if last is not None and last[0] == key:
            return last[1]
        spec = self._interpolate(values)
        spec.flags.writeable = False
        self._interp_last = (key, spec)  # one assignment: safe for threads sharing the table
        return spec

    def _node_list(self, k: int) -> list[float]:
        lists = getattr(self, "_node_lists", None)
        if lists is None:
            lists = [p.values.tolist() for p in self.interp_params]
            self._node_lists = lists
        return lists[k]

    def _strides(self) -> tuple[int, ...]:
        shape = tuple(int(n) for n in self._shape)
        return tuple(math.prod(shape[k + 1 :]) for k in range(len(shape)))

    def _interpolate(self, values: Sequence[float]) -> np.ndarray:
        n_int = len(self.interp_params)
        axes: list[tuple[tuple[int, float], ...]] = []
        for k, (p, v) in enumerate(zip(self.interp_params, values[:n_int])):
            grid = p.values
            if grid.size == 1:
                axes.append(((0, 1.0),))
                continue
            # np.searchsorted(grid, v, side="right") on the grid as a list: the same index, without
            # numpy's per-call cost (a fit interpolates ~400 times, the flux draws 200 more)
            i = min(max(bisect.bisect_right(self._node_list(k), v) - 1, 0), grid.size - 2)
            if p.method == 1:
                vv = min(max(float(v), grid[0]), grid[-1])
                frac = np.log(vv / grid[i]) / np.log(grid[i + 1] / grid[i])
            else:
                frac = (float(v) - grid[i]) / (grid[i + 1] - grid[i])
            frac = min(max(frac, 0.0), 1.0)
            if k in self.cubic_axes and 1 <= i <= grid.size - 3:
                # Catmull-Rom: C1 in the (log) parameter, through every node, so the statistic has no
                # kinks at the grid nodes (linear weights make fits stick to nodes with a near-zero Hessian).
                t = frac
                axes.append(
                    (
                        (i - 1, -0.5 * t**3 + t**2 - 0.5 * t),
                        (i, 1.5 * t**3 - 2.5 * t**2 + 1.0),
                        (i + 1, -1.5 * t**3 + 2.0 * t**2 + 0.5 * t),
                        (i + 2, 0.5 * t**3 - 0.5 * t**2),
                    )
                )
                continue
            axes.append(((i, 1.0 - frac), (i + 1, frac)))
        corners = []
        weights = []
        strides = self._strides()
        for combo in itertools.product(*axes):
            # the product in np.prod's order (left to right) and the C-order flat index of
            # np.ravel_multi_index, on Python numbers
            w = float(math.prod(c[1] for c in combo))
            if w == 0.0:
                continue
            corners.append(sum(c[0] * st for c, st in zip(combo, strides, strict=True)))
            weights.append(w)
        w_arr = np.asarray(weights)
        spec = w_arr @ self._grid[corners]
        for k, g in enumerate(self._add_grids):
            spec = spec + float(values[n_int + k]) * (w_arr @ g[corners])
        if self.cubic_axes:
            spec = np.maximum(spec, 0.0)  # a cubic may undershoot where a line switches on
        return spec

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        """Evaluate the table on arbitrary energy bins.

        Parameters
        ----------
        energ_lo, energ_hi : ndarray
            Requested bins (keV, observed frame).
        values : sequence of float
            :attr:`n_params` values: interpolated, additional, then redshift if the table has it.

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per bin for norm = 1 (additive) or the bin-averaged factor.
        """
        vals = [float(v) for v in values]
        if len(vals) != self.n_params:
            raise ConfigError(f"table model {self.path} takes {self.n_params} parameters, got {len(vals)}")
        spec = self.interpolate(vals)
        zfac = 1.0 + (vals[-1] if self.redshift else 0.0)
        lo = np.asarray(energ_lo, dtype=float) * zfac
        hi = np.asarray(energ_hi, dtype=float) * zfac
        if self.additive:
            return self._rebin_photons(spec, lo, hi) / zfac
        return self._rebin_factor(spec, lo, hi)

    def _cumulative(self, per_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._contiguous:
            return self._edges, np.concatenate(([0.0], np.cumsum(per_bin)))
        # gaps between table bins hold nothing: interleave lo/hi edges
        x = np.empty(2 * per_bin.size)
        x[0::2], x[1::2] = self.energ_lo, self.energ_hi
        c = np.empty(2 * per_bin.size)
        c[1::2] = np.cumsum(per_bin)
        c[0] = 0.0
        c[2::2] = c[1:-1:2]
        return x, c

    def _rebin_photons(self, spec: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        x, cum = self._cumulative(spec)
        if lo.size > 1 and np.array_equal(lo[1:], hi[:-1]):
            # contiguous bins (every RMF grid): each edge is interpolated once, not as a bin's hi and the
            # next bin's lo (np.interp is elementwise: the same numbers)
            at_edges = np.interp(np.append(lo, hi[-1]), x, cum)
            return at_edges[1:] - at_edges[:-1]
        return np.interp(hi, x, cum) - np.interp(lo, x, cum)

    def _rebin_factor(self, spec: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        x, cum = self._cumulative(spec * (self.energ_hi - self.energ_lo))
        e0, e1 = x[0], x[-1]

        def integral(e: np.ndarray) -> np.ndarray:
            inside = np.interp(e, x, cum)
            below = np.minimum(e - e0, 0.0) * self.low_value
            above = np.maximum(e - e1, 0.0) * self.high_value
            return inside + below + above

        width = hi - lo
        safe = np.where(width > 0, width, 1.0)
        return np.where(width > 0, (integral(hi) - integral(lo)) / safe, self.low_value)


#: A table model larger than this is refused before it is opened [bytes] (APEC tables are ~0.1 GB).
MAX_TABLE_BYTES = 4 << 30
_CACHE: dict[tuple[str, int, int], TableModel] = {}
_CACHE_LOCK = threading.Lock()


def read_table_model(path: str | os.PathLike[str]) -> TableModel:
    """Read (and cache by path, size and mtime) an OGIP table model.

    Raises
    ------
    InputDataError
        Missing file, not FITS, or not a valid OGIP 92-009 table (the message names the file and
        the extension / keyword at fault).
    """
    p = regular_file(path, max_bytes=MAX_TABLE_BYTES, what="table model file")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = TableModel(p)
        return _CACHE[key]


class TableComponent(Component):
    """A model component backed by a :class:`TableModel`.

    Parameters
    ----------
    table : TableModel
    name : str
        Component name as written in expressions (``atable{/path/t.fits}`` or ``apec``).
    params : list of Parameter, optional
        Override the table's parameters (same number and order; ``norm`` is appended for additive tables).
    """

    def __init__(self, table: TableModel, name: str, *, params: Sequence[Parameter] | None = None) -> None:
        super().__init__()
        self.table = table
        self.name = name
        self.kind = "add" if table.additive else "mul"
        self.absorption = not table.additive
        pars = list(params) if params is not None else table.parameters()
        if len(pars) != table.n_params:
            raise ConfigError(
                f"{name}: {len(pars)} parameters given, table {table.path} has {table.n_params}"
            )
        self.params = [copy.copy(p) for p in pars]
        self._unit_cache: dict[bytes, tuple[tuple[float, ...], np.ndarray]] = {}
        if table.additive:
            self.params.append(Parameter("norm", 1.0, "", 0.0, 1e24, 0.0, 1e24, delta=0.01))

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        vals = [float(v) for v in values]
        if self.kind == "add":
            return vals[-1] * self._unit_spectrum(energ_lo, energ_hi, vals[:-1])
        return self.table.evaluate(energ_lo, energ_hi, vals)

    def _unit_spectrum(self, energ_lo: np.ndarray, energ_hi: np.ndarray, vals: list[float]) -> np.ndarray:
        """The norm-1 spectrum, kept per grid for the last values of the other parameters.

        The norm only multiplies it, and a fit moves the norm alone in many steps (its gradient, the
        profile of the other parameters' intervals): those steps reuse the interpolation and rebinning.
        """
        from .expression import grid_key

        lo, hi = np.asarray(energ_lo, dtype=float), np.asarray(energ_hi, dtype=float)
        grid = grid_key(lo, hi)
        key = tuple(vals)
        hit = self._unit_cache.get(grid)
        if hit is not None and hit[0] == key:
            return hit[1]
        spec = self.table.evaluate(lo, hi, vals)
        spec.flags.writeable = False
        if len(self._unit_cache) >= 8:  # a few grids per fit (cameras, flux bands)
            self._unit_cache.clear()
        self._unit_cache[grid] = (key, spec)
        return spec


def table_component(path: str | os.PathLike[str], *, kind: str = "add") -> TableComponent:
    """Component for ``atable{path}`` (``kind="add"``) or ``mtable{path}`` (``kind="mul"``).

    Raises
    ------
    ConfigError
        The table's ``ADDMODEL`` does not match ``kind``.
    InputDataError
        The file is missing or invalid.
    """
    table = read_table_model(path)
    want_add = kind == "add"
    if table.additive != want_add:
        which = "additive" if table.additive else "multiplicative"
        raise ConfigError(
            f"{path} is an {which} table: use {'atable' if table.additive else 'mtable'}{{...}}"
        )
    return TableComponent(table, f"{'atable' if want_add else 'mtable'}{{{path}}}")


def resolve_table_name(name: str) -> TableComponent | None:
    """Resolver for :func:`~xmmcore.fitting.models.register_resolver`: ``atable{file}`` / ``mtable{file}``."""
    raw = name.strip()
    low = raw.lower()
    for prefix, kind in (("atable{", "add"), ("mtable{", "mul")):
        if low.startswith(prefix) and raw.endswith("}"):
            inner = raw[len(prefix) : -1].strip()
            if not inner:
                raise ConfigError(f"{raw}: no table file given")
            return table_component(inner, kind=kind)
    return None


# ------------------------------------------------------------------------------------------ apec
def default_apec_cache_path() -> Path:
    """User cache location of the APEC table: ``$XDG_CACHE_HOME/xmm-survey/apec_table.fits``
    (``~/.cache/xmm-survey/apec_table.fits``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmm-survey" / "apec_table.fits"


def packaged_apec_path() -> Path:
    """The APEC table shipped as package data (``xmmcore/data/apec/``, see the PROVENANCE.md beside it)."""
    return Path(__file__).resolve().parent.parent / "data" / "apec" / "apec_atomdb_jaxspec003_atable.fits"


def find_apec_table() -> Path | None:
    """Return the APEC table file to use, or ``None``: ``$XMM_SURVEY_APEC_TABLE``, then the user cache
    (``xmm-survey models build-apec``), then the copy shipped as package data.

    Raises
    ------
    ConfigError
        ``$XMM_SURVEY_APEC_TABLE`` is set but names a missing file.
    """
    env = os.environ.get(APEC_TABLE_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"{APEC_TABLE_ENV}={env} does not exist; unset it or run `xmm-survey models build-apec`"
            )
        return p
    cached = default_apec_cache_path()
    if cached.is_file():
        return cached
    packaged = packaged_apec_path()
    return packaged if packaged.is_file() else None


# XSPEC apec defaults and limits (model.dat), limited to the table's kT range.
def _apec_params(table: TableModel) -> list[Parameter]:
    names = [p.name.lower() for p in table.interp_params]
    if names != ["kt", "abundanc"] or not table.additive or not table.redshift:
        raise InputDataError(
            "not an APEC table: need additive, REDSHIFT=T, parameters kT and Abundanc", table.path
        )
    kt_grid = table.interp_params[0].values
    ab_grid = table.interp_params[1].values
    kt_lo, kt_hi = max(0.008, kt_grid[0]), min(64.0, kt_grid[-1])
    ab_hi = min(5.0, ab_grid[-1])
    return [
        Parameter("kT", min(max(1.0, kt_lo), kt_hi), "keV", kt_lo, kt_hi, kt_lo, kt_hi, delta=0.01),
        Parameter("Abundanc", 1.0, "", 0.0, ab_hi, 0.0, ab_hi, frozen=True, delta=0.001),
        Parameter("Redshift", 0.0, "", -0.999, 10.0, -0.999, 10.0, frozen=True, delta=0.01),
    ]


_warned_abundance = False


class _ApecComponent(TableComponent):
    uses_abundance = True  # only to warn: the table is angr whatever is selected

    def evaluate(
        self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float], *, abund: str | None = None
    ) -> np.ndarray:
        global _warned_abundance
        table = abund or models.get_abundance()
        if table != "angr" and not _warned_abundance:
            _warned_abundance = True
            log.warning(
                "apec: the APEC table uses Anders & Grevesse (angr) abundances; the selected table "
                "%r is not applied to apec (it is to absorption and mekal)",
                table,
            )
        return super().evaluate(energ_lo, energ_hi, values)


def apec_component() -> TableComponent:
    """The ``apec`` component (parameters ``kT, Abundanc, Redshift, norm`` as XSPEC's apec).

    Raises
    ------
    ConfigError
        No APEC table is available: run ``xmm-survey models build-apec``.
    """
    path = find_apec_table()
    if path is None:
        raise ConfigError(
            "apec needs the APEC table model, which is not built yet: run "
            "`xmm-survey models build-apec` (or set "
            f"{APEC_TABLE_ENV} to an APEC atable FITS file); expected {default_apec_cache_path()}"
        )
    table = copy.copy(read_table_model(path))  # the cached table keeps XSPEC's linear atable weights
    # Smooth in kT: the AtomDB grid steps by ~6% in kT, about the statistical error of a typical cluster;
    # linear weights pull best fits onto the nodes. The abundance axis stays linear (lines scale with Z).
    table.cubic_axes = frozenset({0})
    return _ApecComponent(table, "apec", params=_apec_params(table))


models.register_resolver(resolve_table_name)
models.register_component("apec", apec_component, replace=False)
