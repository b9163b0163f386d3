"""The survey catalogue: typed rows built from ``results/`` files, Parquet/FITS io, queries, plots, report.

``catalog`` reads only files under ``results/`` (step records, ``fits/fit.json``, ``regions/regions.json``,
``config.resolved.yaml``, joint records under ``results/joint/``); it fits nothing and never reads ``data/``
(joint fits, stacks and mosaics are made in xmmcore: ``fitting/joint.py``, ``stack.py``, ``combine.py``).
Modules: :mod:`~catalog.schema`, :mod:`~catalog.rows`, :mod:`~catalog.io`, :mod:`~catalog.query`,
:mod:`~catalog.plots` (with the BCES L-T fit), :mod:`~catalog.report`.

>>> import catalog
>>> df = catalog.build("results")            # one row per (obsid, camera, region, kind)
>>> catalog.io.write_catalogue(df, "results")
>>> df = catalog.load("results/catalogue.parquet")
>>> df.attrs["units"]["kT"]
'keV'
"""

from __future__ import annotations

from . import io, schema
from .rows import build, fit_to_row, load, parse_band, read_config, rows_for_obsid
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "build",
    "fit_to_row",
    "io",
    "load",
    "parse_band",
    "read_config",
    "rows_for_obsid",
    "schema",
]
