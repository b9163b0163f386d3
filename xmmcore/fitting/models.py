"""XSPEC-named model components and expressions: one import for the pieces that live in

* :mod:`~xmmcore.fitting.parameters`: :class:`Parameter`, :class:`ModelParameter`;
* :mod:`~xmmcore.fitting.registry`: :class:`Component`, :class:`FunctionComponent`, the registry
  (:func:`register_component`, :func:`register_resolver`, :func:`get_component`) and the default
  abundance table;
* :mod:`~xmmcore.fitting.numpy_models`: the numpy components (wabs, powerlaw, bremss, ...);
* :mod:`~xmmcore.fitting.expression`: the expression parser and :class:`CompositeModel`.

Adding a model: write a :class:`Component` (or a function wrapped by :class:`FunctionComponent`) and
register it by name with :func:`register_component`; expressions can use it at once.
"""

from __future__ import annotations

from . import numpy_models as _numpy_models  # noqa: F401 - registers the numpy components
from .expression import CompositeModel, grid_key, parse_expression
from .parameters import ModelParameter, Parameter
from .registry import (
    ABUNDANCE_TABLES,
    Component,
    FunctionComponent,
    canonical_abundance,
    get_abundance,
    get_component,
    known_components,
    register_component,
    register_resolver,
    set_abundance,
)

__all__ = [
    "ABUNDANCE_TABLES",
    "Component",
    "CompositeModel",
    "FunctionComponent",
    "ModelParameter",
    "Parameter",
    "canonical_abundance",
    "get_abundance",
    "get_component",
    "grid_key",
    "known_components",
    "parse_expression",
    "register_component",
    "register_resolver",
    "set_abundance",
]
