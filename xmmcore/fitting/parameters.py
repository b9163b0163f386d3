"""Model parameters: XSPEC's :class:`Parameter` (value, limits, frozen) and a model's :class:`ModelParameter`."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ModelParameter", "Parameter"]

_INF = math.inf


@dataclass
class Parameter:
    """One model parameter, with XSPEC's conventions.

    Attributes
    ----------
    name : str
        XSPEC parameter name (``nH``, ``PhoIndex``, ``kT``, ``norm``...).
    value : float
        Default / current value.
    unit : str
        Unit as XSPEC prints it (``10^22``, ``keV``, ``""``).
    min, max : float
        Soft limits ("bot"/"top" in XSPEC): the fit is bounded by these.
    hard_min, hard_max : float
        Hard limits: ``set`` refuses values outside them.
    frozen : bool
        Frozen parameters are not fitted.
    delta : float
        XSPEC's fit delta (used as the initial step of the optimiser); negative means frozen by default.
    """

    name: str
    value: float
    unit: str = ""
    min: float = -_INF
    max: float = _INF
    hard_min: float = -_INF
    hard_max: float = _INF
    frozen: bool = False
    delta: float = 0.01


@dataclass
class ModelParameter:
    """A parameter of a :class:`CompositeModel` (component instance + its :class:`Parameter`).

    Attributes
    ----------
    number : int
        1-based XSPEC parameter number.
    component : str
        Component instance name, ``<name>_<n>`` (``wabs_1``).
    param : Parameter
        The parameter (value, limits, frozen).
    link : int or None
        0-based index of the parameter this one is tied to (its value is copied), or ``None``.
    """

    number: int
    component: str
    param: Parameter
    link: int | None = None

    @property
    def name(self) -> str:
        """Parameter name (``nH``)."""
        return self.param.name

    @property
    def full_name(self) -> str:
        """``component_n.param`` (``wabs_1.nH``)."""
        return f"{self.component}.{self.param.name}"

    @property
    def value(self) -> float:
        return self.param.value

    @property
    def frozen(self) -> bool:
        return self.param.frozen

    @property
    def free(self) -> bool:
        """Varied by the fit: not frozen and not linked."""
        return not self.param.frozen and self.link is None
