"""A test double of PyXspec's ``xspec`` module: records every call, checks model strings like XSPEC 12.

Only what :mod:`xmmcore.fitting.engines.xspec_runner` uses. ``Model(expr, name, source)`` parses the
expression: unknown components and the ``/b`` qualifier (gone since XSPEC 12) raise as XSPEC does.
``Fit.perform()`` "needs" ``Fit.iterations_needed`` iterations: with fewer allowed (``nIterations``) it
writes XSPEC's "Number of trials exceeded" message to the log and, when ``Fit.query`` is ``"yes"``,
records that it would have asked (a real session would cycle on).
"""

from __future__ import annotations

import re
from typing import Any

CALLS: list[tuple[Any, ...]] = []

#: Parameters of the components the pipeline uses (XSPEC 12 names and order).
COMPONENTS = {
    "wabs": ("nH",),
    "phabs": ("nH",),
    "tbabs": ("nH",),
    "constant": ("factor",),
    "apec": ("kT", "Abundanc", "Redshift", "norm"),
    "mekal": ("kT", "nH", "Abundanc", "Redshift", "switch", "norm"),
    "zbremss": ("kT", "Redshift", "norm"),
    "bremss": ("kT", "norm"),
    "zgauss": ("LineE", "Sigma", "Redshift", "norm"),
    "gaussian": ("LineE", "Sigma", "norm"),
    "powerlaw": ("PhoIndex", "norm"),
}


def reset() -> None:
    CALLS.clear()
    AllData.spectra.clear()
    AllModels.models.clear()
    Fit.query, Fit.nIterations, Fit.iterations_needed, Fit.performed = "yes", 10, 5, 0
    Xset.log = None


class Parameter:
    def __init__(self, name: str, index: int):
        self.name, self.index = name, index
        self._values = [1.0, 0.01, -1e22, -1e22, 1e22, 1e22]
        self.frozen, self.link, self.sigma, self.unit = False, "", 0.1, ""
        self.error = (0.0, 0.0, "FFFFFFFFF")

    @property
    def values(self) -> list[float]:
        return self._values

    @values.setter
    def values(self, v: Any) -> None:
        CALLS.append(("set", self.name, v))
        self._values = [float(v), *self._values[1:]] if not isinstance(v, list) else [float(x) for x in v]

    def untie(self) -> None:
        CALLS.append(("untie", self.name))
        self.link = ""


class Component:
    def __init__(self, name: str, params: list[Parameter]):
        self.name = name
        self.parameterNames = [p.name for p in params]
        for p in params:
            setattr(self, p.name, p)


def _parse(expr: str) -> list[str]:
    if "/" in expr:
        raise Exception(f"Model expression error: qualifier in {expr!r} is not supported in XSPEC 12")
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)
    for n in names:
        if n.lower() not in COMPONENTS:
            raise Exception(f"Model expression error: unknown component {n!r}")
    if not re.fullmatch(r"[A-Za-z0-9_+*() ]+", expr) or expr.count("(") != expr.count(")"):
        raise Exception(f"Model expression error: cannot parse {expr!r}")
    return [n.lower() for n in names]


class Model:
    def __init__(self, expr: str, modName: str = "", sourceNum: int = 1, *, _group: int = 1):
        comps = _parse(expr)
        CALLS.append(("Model", expr, modName, sourceNum))
        self.expression, self.name, self.source = expr, modName, sourceNum
        self.componentNames: list[str] = []
        self._pars: list[Parameter] = []
        seen: dict[str, int] = {}
        for pos, comp in enumerate(comps, start=1):
            seen[comp] = seen.get(comp, 0) + 1
            cname = comp if seen[comp] == 1 else f"{comp}_{pos}"
            params = [Parameter(p, len(self._pars) + k + 1) for k, p in enumerate(COMPONENTS[comp])]
            self._pars += params
            self.componentNames.append(cname)
            setattr(self, cname, Component(cname, params))
        if _group == 1:
            AllModels.models[(modName, 1)] = self
            for g in range(2, len(AllData.spectra) + 1):
                other = Model(expr, modName, sourceNum, _group=g)
                for p in other._pars:
                    p.link = f"= p{p.index}"
                AllModels.models[(modName, g)] = other

    def __call__(self, idx: int) -> Parameter:
        return self._pars[int(idx) - 1]


class _AllModels:
    def __init__(self) -> None:
        self.models: dict[tuple[str, int], Model] = {}

    def __call__(self, group: int, modName: str = "") -> Model:
        return self.models[(modName, int(group))]

    def clear(self) -> None:
        CALLS.append(("AllModels.clear",))
        self.models.clear()

    def calcFlux(self, arg: str) -> None:
        CALLS.append(("calcFlux", arg))
        for s in AllData.spectra:
            s.flux = (1e-12, 0.9e-12, 1.1e-12)

    def calcLumin(self, arg: str) -> None:
        CALLS.append(("calcLumin", arg))
        for s in AllData.spectra:
            s.lumin = (1.0, 0.9, 1.1)


class _Response:
    def __init__(self, rmf: str):
        self.rmf, self.arf = rmf, ""


class _MultiResponse(dict):
    def __init__(self, spectrum: Spectrum):
        super().__init__()
        self._spectrum = spectrum

    def __setitem__(self, key: int, value: str) -> None:
        CALLS.append(("multiresponse", self._spectrum.index, int(key), value))
        super().__setitem__(int(key), _Response(value))


class Spectrum:
    def __init__(self, index: int, path: str):
        self.index, self.path = index, path
        self._response: _Response | None = None
        self.background = None
        self.multiresponse = _MultiResponse(self)
        self.noticed = list(range(1, 101))
        self.energies = [(0.1 * i, 0.1 * (i + 1)) for i in range(100)]
        self.values = [0.1] * 100
        self.exposure = 1000.0
        self.flux = (0.0, 0.0, 0.0)
        self.lumin = (0.0, 0.0, 0.0)

    @property
    def response(self) -> _Response | None:
        return self._response

    @response.setter
    def response(self, rmf: str) -> None:
        CALLS.append(("response", self.index, rmf))
        self._response = _Response(rmf)

    def ignore(self, arg: str) -> None:
        CALLS.append(("ignore", self.index, arg))


class _AllData:
    def __init__(self) -> None:
        self.spectra: list[Spectrum] = []

    def __call__(self, arg: Any) -> Spectrum | None:
        if isinstance(arg, int):
            return self.spectra[arg - 1]
        CALLS.append(("AllData", arg))
        _, path = str(arg).split(" ", 1)
        self.spectra.append(Spectrum(len(self.spectra) + 1, path))
        return None

    def clear(self) -> None:
        CALLS.append(("AllData.clear",))
        self.spectra.clear()

    def ignore(self, arg: str) -> None:
        CALLS.append(("AllData.ignore", arg))


class _Fit:
    def __init__(self) -> None:
        self.query, self.statMethod, self.weight = "yes", "chi", "standard"
        self.nIterations, self.iterations_needed, self.performed = 10, 5, 0
        self.statistic, self.dof = 123.4, 100

    def perform(self) -> None:
        CALLS.append(("perform", self.query, self.nIterations))
        self.performed += 1
        if self.iterations_needed > self.nIterations:
            Xset.write(" Number of trials exceeded: last iteration delta = 0.125\n")
            if self.query == "yes":
                CALLS.append(("would ask: continue fitting?",))

    def error(self, arg: str) -> None:
        CALLS.append(("error", arg))


class _Xset:
    def __init__(self) -> None:
        self.chatter = self.logChatter = 10
        self.abund, self.xsect, self.cosmo = "angr", "vern", "70 0 0.73"
        self.version = ("2.1.4-double", "12.14.1-double")
        self.log: str | None = None

    def openLog(self, path: str) -> None:
        CALLS.append(("openLog", path))
        self.log = path

    def closeLog(self) -> None:
        CALLS.append(("closeLog",))

    def write(self, text: str) -> None:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(text)

    def save(self, path: str, info: str = "a") -> None:
        CALLS.append(("save", path))
        with open(path, "w") as fh:
            fh.write(
                "model " + " ".join(m.expression for (_n, g), m in AllModels.models.items() if g == 1) + "\n"
            )


AllData = _AllData()
AllModels = _AllModels()
Fit = _Fit()
Xset = _Xset()
