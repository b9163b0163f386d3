"""Component base classes, the registry of components by XSPEC name, and the default abundance table.

A :class:`Component` is one XSPEC model (``wabs``, ``powerlaw``, ...) with XSPEC's parameter
names, units, defaults and limits. Its :meth:`Component.evaluate` works on an energy grid given
as bin edges (keV) and returns, per bin,

* additive (``kind="add"``): photons cm^-2 s^-1 integrated over the bin;
* multiplicative (``kind="mul"``): the dimensionless factor averaged over the bin.

Plug-ins
--------
Other modules add components with :func:`register_component` (a name and a zero-argument factory),
or with :func:`register_resolver` for parametrised names such as ``atable{apec.fits}`` (the resolver
gets the raw name and returns a component or ``None``). The numpy models
(:mod:`~xmmcore.fitting.numpy_models`) and the modules listed in ``_PLUGINS`` are imported lazily the
first time a name is not found.

Abundances
----------
Components whose output depends on the solar abundance table set ``uses_abundance = True`` and take
``abund=`` in :meth:`Component.evaluate`; a fit passes its table through
:class:`~xmmcore.fitting.expression.CompositeModel` (``abund``). :func:`set_abundance` only sets the
default used when no table is passed (a component evaluated on its own, as XSPEC's ``abund`` command).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .parameters import Parameter

__all__ = [
    "ABUNDANCE_TABLES",
    "Component",
    "FunctionComponent",
    "canonical_abundance",
    "get_abundance",
    "get_component",
    "known_components",
    "register_component",
    "register_resolver",
    "set_abundance",
]


class Component:
    """Base class of a model component.

    Subclasses (or :class:`FunctionComponent`) set ``name``, ``kind`` and ``params`` and implement
    :meth:`evaluate`. Instances are cheap: :func:`get_component` returns a fresh one each call.

    Attributes
    ----------
    name : str
        XSPEC model name (lower case).
    kind : {"add", "mul", "con"}
        Additive, multiplicative or convolution (convolution is not supported by the parser yet).
    params : list of Parameter
        Parameters in XSPEC order with XSPEC defaults. Additive components end with ``norm``.
    absorption : bool
        True for multiplicative components that are absorption (set to 1 for unabsorbed fluxes).
    uses_abundance : bool
        True when the output depends on the abundance table: :meth:`evaluate` then takes ``abund=``.
    """

    name: str = ""
    kind: str = "add"
    absorption: bool = False
    uses_abundance: bool = False

    def __init__(self) -> None:
        self.params: list[Parameter] = []

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        """Return the model per energy bin.

        Parameters
        ----------
        energ_lo, energ_hi : ndarray
            Bin edges in keV.
        values : sequence of float
            Parameter values in the order of ``params`` (including ``norm``).

        Returns
        -------
        ndarray
            photons cm^-2 s^-1 per bin (additive) or a dimensionless factor per bin (multiplicative).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        pars = ", ".join(f"{p.name}={p.value:g}" for p in self.params)
        return f"<{self.kind} component {self.name}({pars})>"


class FunctionComponent(Component):
    """A component defined by a function ``func(energ_lo, energ_hi, *values)``.

    For additive components ``func`` receives the parameters without ``norm`` and returns the
    spectrum for norm = 1; the ``norm`` parameter is appended and applied here.

    Parameters
    ----------
    name : str
        XSPEC model name.
    kind : {"add", "mul"}
        Component type.
    params : list of Parameter
        Parameters (without ``norm`` for additive components).
    func : callable
        The model function.
    absorption : bool, optional
        Multiplicative absorption (dropped for unabsorbed fluxes). Default: ``kind == "mul"``.
    norm : Parameter, optional
        Custom ``norm`` parameter for an additive component.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        params: Sequence[Parameter],
        func: Callable[..., np.ndarray],
        *,
        absorption: bool | None = None,
        norm: Parameter | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("add", "mul"):
            raise ConfigError(f"component {name}: kind must be 'add' or 'mul', not {kind!r}")
        self.name = name
        self.kind = kind
        self.absorption = (kind == "mul") if absorption is None else absorption
        self._func = func
        self.params = [copy.copy(p) for p in params]
        if kind == "add":
            self.params.append(copy.copy(norm) if norm is not None else _norm())

    def evaluate(self, energ_lo: np.ndarray, energ_hi: np.ndarray, values: Sequence[float]) -> np.ndarray:
        lo = np.asarray(energ_lo, dtype=float)
        hi = np.asarray(energ_hi, dtype=float)
        vals = [float(v) for v in values]
        if self.kind == "add":
            return vals[-1] * np.asarray(self._func(lo, hi, *vals[:-1]), dtype=float)
        return np.asarray(self._func(lo, hi, *vals), dtype=float)


def _norm() -> Parameter:
    return Parameter("norm", 1.0, "", 0.0, 1e24, 0.0, 1e24, delta=0.01)


ABUNDANCE_TABLES = ("angr", "aspl", "feld", "aneb", "grsa", "wilm", "lodd", "lpgp", "lpgs")
_abundance = "angr"


def canonical_abundance(table: str) -> str:
    """Lower-case name of an abundance table; unknown names raise ``ConfigError``."""
    name = str(table).strip().lower()
    if name not in ABUNDANCE_TABLES:
        raise ConfigError(f"unknown abundance table {table!r}; known: {', '.join(ABUNDANCE_TABLES)}")
    return name


def set_abundance(table: str) -> None:
    """Set the default solar abundance table (XSPEC ``abund``).

    Fits pass their table explicitly (``fit(..., abund=)``); this default applies to components
    evaluated without one.

    Parameters
    ----------
    table : str
        One of :data:`ABUNDANCE_TABLES` (case-insensitive).
    """
    global _abundance
    name = canonical_abundance(table)
    _abundance = name


def get_abundance() -> str:
    """Return the default abundance table name (``angr`` unless :func:`set_abundance` changed it)."""
    return _abundance


_REGISTRY: dict[str, Callable[[], Component]] = {}
_RESOLVERS: list[Callable[[str], Component | None]] = []
_PLUGINS = ("xmmcore.fitting.xsmodels", "xmmcore.fitting.atable")
_plugins_loaded = False


def register_component(name: str, factory: Callable[[], Component], *, replace: bool = True) -> None:
    """Register a component factory under an XSPEC name (case-insensitive).

    Parameters
    ----------
    name : str
        Model name used in expressions.
    factory : callable
        Zero-argument callable returning a new :class:`Component`.
    replace : bool
        If False, keep an existing registration (lets plug-ins provide only missing models).
    """
    key = name.lower()
    if not replace and key in _REGISTRY:
        return
    _REGISTRY[key] = factory


def register_resolver(fn: Callable[[str], Component | None]) -> None:
    """Register ``fn(name) -> Component | None`` for names the registry does not hold (``atable{...}``)."""
    _RESOLVERS.append(fn)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("xmmcore.fitting.numpy_models")
    for mod in _PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is not None and mod.startswith(exc.name) or exc.name == mod:
                continue
            raise
        except ImportError:
            continue


def known_components() -> list[str]:
    """Names of the registered components (after loading plug-ins)."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_component(name: str) -> Component:
    """Return a new component by XSPEC name.

    Raises
    ------
    ConfigError
        The name is not registered, not handled by a resolver and not provided by a plug-in.
    """
    raw = name.strip()
    key = raw.lower()
    for attempt in range(2):
        if key in _REGISTRY:
            return _REGISTRY[key]()
        for resolver in _RESOLVERS:
            resolved = resolver(raw)
            if resolved is not None:
                return resolved
        if attempt == 0:
            _load_plugins()
    raise ConfigError(f"unknown model component {raw!r}; known: {', '.join(sorted(_REGISTRY))}")
