"""The model-expression parser and :class:`CompositeModel`.

:func:`parse_expression` combines components like XSPEC does (``constant*tbabs*(apec+gaussian)``;
``wabs(powerlaw)`` is implicit multiplication) into a :class:`CompositeModel`, whose parameters are
numbered in XSPEC order and named ``<component>_<n>.<param>`` where ``n`` counts repeats of the
component from the left (``wabs_1.nH``, ``wabs_2.nH``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ..errors import ConfigError
from .parameters import ModelParameter
from .registry import Component, canonical_abundance, get_abundance, get_component

__all__ = ["CompositeModel", "grid_key", "parse_expression"]

_GRIDS_PER_COMPONENT = 8  # grids remembered per component (datasets x flux grids of one fit)
_GRID_KEYS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, bytes]] = {}


def grid_key(lo: np.ndarray, hi: np.ndarray) -> bytes:
    """A digest of an energy grid's contents, looked up by the arrays' identity after the first call.

    The entry holds ``lo`` and ``hi``, so their ids cannot be reused by other arrays while it exists.
    """
    hit = _GRID_KEYS.get((id(lo), id(hi)))
    if hit is not None and hit[0] is lo and hit[1] is hi:
        return hit[2]
    digest = hashlib.blake2b(np.ascontiguousarray(lo).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(hi).tobytes())
    key = lo.size.to_bytes(8, "little") + digest.digest()
    if len(_GRID_KEYS) > 64:  # each entry holds its two arrays alive: keep it small
        _GRID_KEYS.clear()
    _GRID_KEYS[(id(lo), id(hi))] = (lo, hi, key)
    return key


_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\{[^}]*\})?)|(?P<op>[*+()]))")


@dataclass
class _Node:
    op: str  # "comp", "mul", "add"
    children: list[_Node] = field(default_factory=list)
    index: int = -1


class CompositeModel:
    """Components combined by an XSPEC model expression.

    Parameters
    ----------
    expression : str
        The expression, e.g. ``"wabs*(zbremss+zgauss)"``.

    Attributes
    ----------
    expression : str
    components : list of Component
        Left to right as they appear.
    component_names : list of str
        ``<name>_<n>`` for each component.
    parameters : list of ModelParameter
        In XSPEC order (1-based number = index + 1).
    abund : str or None
        Abundance table passed to the components that use one (``None``: the registry's default).
    """

    def __init__(self, expression: str, *, abund: str | None = None) -> None:
        self.expression = expression.strip()
        self.abund = None if abund is None else canonical_abundance(abund)
        self._cache: dict[int, dict[bytes, tuple[tuple[object, ...], np.ndarray]]] = {}
        self.components: list[Component] = []
        self.component_names: list[str] = []
        self._tree = self._parse(self.expression)
        self.parameters: list[ModelParameter] = []
        self._slices: list[slice] = []
        counts: dict[str, int] = {}
        for comp in self.components:
            base = _instance_base(comp.name)
            counts[base] = counts.get(base, 0) + 1
            inst = f"{base}_{counts[base]}"
            self.component_names.append(inst)
            start = len(self.parameters)
            for p in comp.params:
                self.parameters.append(ModelParameter(len(self.parameters) + 1, inst, copy.copy(p)))
            self._slices.append(slice(start, len(self.parameters)))
        kind = self._kind(self._tree)
        if kind != "add":
            raise ConfigError(f"model {expression!r} has no additive component (it evaluates to a factor)")

    # ---------------------------------------------------------------- parsing
    def _parse(self, expr: str) -> _Node:
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(expr):
            if expr[pos:].strip() == "":
                break
            m = _TOKEN.match(expr, pos)
            if not m or m.end() == pos:
                raise ConfigError(f"model expression {expr!r}: cannot parse at {expr[pos:]!r}")
            tokens.append(("name", m.group("name")) if m.group("name") else ("op", m.group("op")))
            pos = m.end()
        if not tokens:
            raise ConfigError("empty model expression")
        self._tokens = tokens
        self._pos = 0
        node = self._parse_sum()
        if self._pos != len(tokens):
            raise ConfigError(f"model expression {expr!r}: unexpected {tokens[self._pos][1]!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _parse_sum(self) -> _Node:
        terms = [self._parse_product()]
        while self._peek() == ("op", "+"):
            self._pos += 1
            terms.append(self._parse_product())
        return terms[0] if len(terms) == 1 else _Node("add", terms)

    def _parse_product(self) -> _Node:
        factors = [self._parse_factor()]
        while True:
            tok = self._peek()
            if tok == ("op", "*"):
                self._pos += 1
                factors.append(self._parse_factor())
            elif tok is not None and (tok == ("op", "(") or tok[0] == "name"):
                factors.append(self._parse_factor())  # implicit product: wabs(powerlaw)
            else:
                break
        return factors[0] if len(factors) == 1 else _Node("mul", factors)

    def _parse_factor(self) -> _Node:
        tok = self._peek()
        if tok is None:
            raise ConfigError(f"model expression {self.expression!r} ends unexpectedly")
        if tok == ("op", "("):
            self._pos += 1
            node = self._parse_sum()
            if self._peek() != ("op", ")"):
                raise ConfigError(f"model expression {self.expression!r}: missing ')'")
            self._pos += 1
            return node
        if tok[0] == "name":
            self._pos += 1
            comp = get_component(tok[1])
            if comp.kind == "con":
                raise ConfigError(
                    f"convolution component {comp.name!r} is not supported by the built-in engine"
                )
            self.components.append(comp)
            return _Node("comp", index=len(self.components) - 1)
        raise ConfigError(f"model expression {self.expression!r}: unexpected {tok[1]!r}")

    def _kind(self, node: _Node) -> str:
        if node.op == "comp":
            return self.components[node.index].kind
        kinds = [self._kind(c) for c in node.children]
        if node.op == "add":
            if any(k != "add" for k in kinds):
                raise ConfigError(f"model {self.expression!r}: '+' needs additive components on both sides")
            return "add"
        n_add = sum(k == "add" for k in kinds)
        if n_add > 1:
            raise ConfigError(f"model {self.expression!r}: additive components multiplied together")
        return "add" if n_add else "mul"

    # ---------------------------------------------------------------- parameters
    def index(self, key: str | int) -> int:
        """0-based index of a parameter given by number (``1``, ``"1"``), ``comp_n.name``, ``comp.name``
        (component unique) or a unique parameter name."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.strip().isdigit()):
            num = int(key)
            if not 1 <= num <= len(self.parameters):
                raise ConfigError(
                    f"parameter number {num} out of range 1..{len(self.parameters)} for {self.expression}"
                )
            return num - 1
        k = str(key).strip()
        kl = k.lower()
        hits = [i for i, p in enumerate(self.parameters) if p.full_name.lower() == kl]
        if not hits and "." in k:
            comp, pname = kl.rsplit(".", 1)
            hits = [
                i
                for i, p in enumerate(self.parameters)
                if p.name.lower() == pname and _instance_base(p.component).lower() == comp
            ]
        if not hits and "." not in k:
            hits = [i for i, p in enumerate(self.parameters) if p.name.lower() == kl]
        if len(hits) == 1:
            return hits[0]
        names = ", ".join(p.full_name for p in self.parameters)
        if not hits:
            raise ConfigError(f"no parameter {k!r} in model {self.expression!r} (parameters: {names})")
        raise ConfigError(
            f"parameter {k!r} is ambiguous in {self.expression!r}; use one of: "
            + ", ".join(self.parameters[i].full_name for i in hits)
        )

    def set(self, key: str | int, value: float | None = None, frozen: bool | None = None) -> ModelParameter:
        """Set a parameter's value and/or frozen state, like XSPEC's ``newpar``.

        Raises
        ------
        ConfigError
            Unknown parameter, or a value outside the hard limits.
        """
        mp = self.parameters[self.index(key)]
        p = mp.param
        if value is not None:
            value = float(value)
            if not (p.hard_min <= value <= p.hard_max):
                raise ConfigError(
                    f"{mp.full_name}={value} outside its hard limits [{p.hard_min}, {p.hard_max}]"
                )
            p.value = value
            p.min = min(p.min, value)
            p.max = max(p.max, value)
        if frozen is not None:
            p.frozen = bool(frozen)
        return mp

    def link(self, key: str | int, to: str | int) -> None:
        """Tie parameter ``key`` to parameter ``to`` (XSPEC ``newpar key = to``)."""
        i, j = self.index(key), self.index(to)
        if i == j:
            raise ConfigError(f"cannot link {self.parameters[i].full_name} to itself")
        self.parameters[i].link = j

    @property
    def values(self) -> np.ndarray:
        """Current parameter values (links resolved)."""
        v = np.array([p.param.value for p in self.parameters], dtype=float)
        return self.resolve_links(v)

    def resolve_links(self, values: np.ndarray) -> np.ndarray:
        """Copy linked parameters' values from their targets."""
        v = np.array(values, dtype=float)
        for i, p in enumerate(self.parameters):
            j = p.link
            seen = 0
            while j is not None and seen < len(self.parameters):
                v[i] = v[j]
                j = self.parameters[j].link
                seen += 1
        return v

    # ---------------------------------------------------------------- evaluation
    def evaluate(
        self,
        energ_lo: np.ndarray,
        energ_hi: np.ndarray,
        values: Sequence[float] | np.ndarray | None = None,
        *,
        unabsorbed: bool = False,
        drop: Sequence[int] = (),
        abund: str | None = None,
    ) -> np.ndarray:
        """Evaluate the model on an energy grid.

        A component is evaluated again only when its parameter values, the grid or the abundance
        table changed since its last evaluation (frozen absorption is computed once per grid; datasets
        with the same grid, as MOS1 and MOS2, share the evaluation of every component).

        Parameters
        ----------
        energ_lo, energ_hi : ndarray
            Bin edges in keV.
        values : sequence of float or ndarray, optional
            All parameter values (XSPEC order); default the current values.
        unabsorbed : bool
            Set multiplicative absorption components to 1 (for unabsorbed fluxes).
        drop : sequence of int
            Indices of components to replace by 1 (multiplicative) or 0 (additive).
        abund : str, optional
            Abundance table for the components that use one (default :attr:`abund`, else the
            registry's default, :func:`~xmmcore.fitting.registry.get_abundance`).

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per bin.
        """
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        v = self.values if values is None else self.resolve_links(np.asarray(values, dtype=float))
        table = abund or self.abund
        grid = grid_key(lo, hi)
        skip = set(drop)
        if unabsorbed:
            skip |= {i for i, c in enumerate(self.components) if c.kind == "mul" and c.absorption}
        done: dict[int, np.ndarray] = {}

        def comp_value(i: int) -> np.ndarray:
            if i not in done:
                comp = self.components[i]
                if i in skip:
                    done[i] = np.ones_like(lo) if comp.kind == "mul" else np.zeros_like(lo)
                else:
                    done[i] = self._component_value(i, lo, hi, v[self._slices[i]], grid, table)
            return done[i]

        def ev(node: _Node) -> np.ndarray:
            if node.op == "comp":
                return comp_value(node.index)
            parts = [ev(c) for c in node.children]
            out = parts[0]
            for part in parts[1:]:
                out = out + part if node.op == "add" else out * part
            return out

        result = ev(self._tree)
        # A lone component's array is the cached one: hand out a copy the caller may change.
        return result.copy() if self._tree.op == "comp" else result

    def _component_value(
        self, i: int, lo: np.ndarray, hi: np.ndarray, values: np.ndarray, grid: bytes, table: str | None
    ) -> np.ndarray:
        """Component ``i`` on the grid, from the cache when its values, grid and table are unchanged."""
        comp = self.components[i]
        table_key = (table or get_abundance()) if comp.uses_abundance else None
        key = (grid, tuple(float(x) for x in values), table_key)
        per_grid = self._cache.setdefault(i, {})
        hit = per_grid.get(grid)
        if hit is not None and hit[0] == key:
            return hit[1]
        # Components accept any indexable of floats; the contract spells it Sequence[float].
        comp_values = cast("Sequence[float]", values)
        if comp.uses_abundance:  # these take abund= (Component.uses_abundance)
            out = cast("Any", comp).evaluate(lo, hi, comp_values, abund=table_key)
        else:
            out = comp.evaluate(lo, hi, comp_values)
        arr = np.asarray(out, dtype=float)
        arr.flags.writeable = False
        if len(per_grid) >= _GRIDS_PER_COMPONENT:
            per_grid.clear()
        per_grid[grid] = (key, arr)
        return arr

    def copy(self) -> CompositeModel:
        """An independent copy (same expression, copied parameters, its own evaluation cache)."""
        new = copy.copy(self)
        new._cache = {}
        new.parameters = [
            ModelParameter(p.number, p.component, copy.copy(p.param), p.link) for p in self.parameters
        ]
        return new

    def __repr__(self) -> str:
        return f"CompositeModel({self.expression!r})"

    def describe(self) -> str:
        """XSPEC-like table of the parameters."""
        lines = [f"Model {self.expression}", f"{'par':>4} {'component':<14} {'name':<10} {'unit':<8} value"]
        for p in self.parameters:
            state = " frozen" if p.param.frozen else (f" = p{p.link + 1}" if p.link is not None else "")
            lines.append(
                f"{p.number:>4} {p.component:<14} {p.name:<10} {p.param.unit:<8} {p.param.value:.6g}{state}"
            )
        return "\n".join(lines)


def _instance_base(name: str) -> str:
    """Component name used for ``<name>_<n>``: ``atable{/x/apec.fits}`` -> ``atable``."""
    base = name.split("{", 1)[0]
    if "_" in base and base.rsplit("_", 1)[1].isdigit():
        base = base.rsplit("_", 1)[0]
    return base


def parse_expression(expr: str, *, abund: str | None = None) -> CompositeModel:
    """Parse an XSPEC model expression into a :class:`CompositeModel`.

    Examples
    --------
    >>> m = parse_expression("wabs*(zbremss+zgauss)")
    >>> [p.full_name for p in m.parameters][:3]
    ['wabs_1.nH', 'zbremss_1.kT', 'zbremss_1.Redshift']
    """
    return CompositeModel(expr, abund=abund)
