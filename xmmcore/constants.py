"""Names and numbers defined once for the whole code base.

* :data:`CAMERAS` — the EPIC cameras, in the order rows, plots and loops use them;
* :data:`SKY_PIXEL_ARCSEC` — XMM physical sky pixel (the X/Y columns' unit);
* :data:`DEFAULT_COSMOLOGY`, :func:`flat_lcdm` — the cosmology of luminosities and kpc radii when none is given;
* :data:`DEFAULT_FLUX_BANDS_KEV` — flux bands of fits and catalogue columns when none are given.

Survey runs take cosmology and flux bands from the configuration (``survey/defaults.yaml``, which must
agree with the values here: ``tests/test_constants.py`` checks it); these defaults serve library calls
without a configuration. Step names are :data:`xmmcore.pipeline.STEPS`; exit codes are the
``exit_code`` attributes of :mod:`xmmcore.errors`; product paths are :class:`xmmcore.products.ObsProducts`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

__all__ = ["CAMERAS", "DEFAULT_COSMOLOGY", "DEFAULT_FLUX_BANDS_KEV", "SKY_PIXEL_ARCSEC", "flat_lcdm"]

#: EPIC cameras.
CAMERAS: tuple[str, ...] = ("pn", "mos1", "mos2")

#: XMM sky (physical) pixel size [arcsec]; 1200 pixels per arcmin.
SKY_PIXEL_ARCSEC = 0.05

#: Flat Lambda-CDM: H0 [km/s/Mpc], Om0.
DEFAULT_COSMOLOGY: Mapping[str, float] = {"H0": 70.0, "Om0": 0.3}

#: Flux bands [keV] (observed frame).
DEFAULT_FLUX_BANDS_KEV: tuple[tuple[float, float], ...] = ((0.5, 2.0), (0.1, 2.4), (2.0, 10.0))


def flat_lcdm(cosmology: Any = None) -> Any:
    """An astropy ``FlatLambdaCDM`` from ``None`` (the default), ``{"H0", "Om0"}`` (missing keys default)
    or an astropy cosmology (returned as is)."""
    if cosmology is None or isinstance(cosmology, Mapping):
        values = {**DEFAULT_COSMOLOGY, **(cosmology or {})}
        return _flat_lcdm(float(values["H0"]), float(values["Om0"]))
    return cosmology


@functools.lru_cache(maxsize=8)
def _flat_lcdm(h0: float, om0: float) -> Any:
    """One (immutable) astropy cosmology per (H0, Om0): building one costs ~20 ms, 3 times per ObsID."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=h0, Om0=om0)
