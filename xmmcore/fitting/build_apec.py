"""Build the APEC additive table model from the AtomDB emissivities in the ``jaxspec==0.0.3`` wheel.

``xmm-survey models build-apec`` runs :func:`build_apec`: it downloads the wheel with
``python -m pip download --no-deps jaxspec==0.0.3`` (jaxspec itself is never installed; or give a
wheel file), reads ``jaxspec/tables/apec.nc`` (HDF5, needs ``h5py``: ``pip install 'xmm-survey[apec]'``)
and writes an OGIP 92-009 table (see ``shared/data/models/PROVENANCE.md``):

* ``kT``: the 122 AtomDB temperature nodes from 0.0814 to 86.17 keV, log interpolation;
* ``Abundanc``: 0, 1, 5, linear (exact: the spectrum is linear in the metal abundance), scaling
  C N O Ne Mg Al Si S Ar Ca Fe Ni as XSPEC's apec; H, He and trace elements stay solar
  (Anders & Grevesse 1989, the abundances of the AtomDB emissivities);
* 3000 logarithmic bins from 0.05 to 20 keV; continuum and pseudo-continuum (ph cm^3 s^-1 keV^-1 at
  their nodes) are integrated per node interval by the trapezoid rule and spread uniformly over
  the interval (photon conserving); lines (ph cm^3 s^-1) go to the bin holding their energy, not broadened;
* values x 1e14: photons cm^-2 s^-1 per bin for apec norm = 1
  (norm = 1e-14 / (4 pi (D_A (1+z))^2) * int n_e n_H dV), ``REDSHIFT = T``.

The result is written atomically to the user cache (:func:`~xmmcore.fitting.atable.default_apec_cache_path`).
Licence: jaxspec is MIT; the AtomDB data are distributed for research and educational use.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import ConfigError, InputDataError
from ..fsutil import atomic_write_fits
from ..tools import run_tool
from .atable import default_apec_cache_path

__all__ = [
    "APEC_MEMBER",
    "JAXSPEC_REQUIREMENT",
    "METALS_Z",
    "apec_table_hdul",
    "build_apec",
    "download_jaxspec_wheel",
    "read_apec_nc",
]

log = logging.getLogger(__name__)

JAXSPEC_REQUIREMENT = "jaxspec==0.0.3"
APEC_MEMBER = "jaxspec/tables/apec.nc"
#: Elements scaled by ``Abundanc`` (atomic numbers), as in XSPEC's apec.
METALS_Z = (6, 7, 8, 10, 12, 13, 14, 16, 18, 20, 26, 28)
KT_MIN_KEV = 0.08
N_BINS = 3000
E_MIN_KEV, E_MAX_KEV = 0.05, 20.0
ABUNDANCES = (0.0, 1.0, 5.0)
EMISSIVITY_TO_NORM = 1e14


def download_jaxspec_wheel(
    dest_dir: str | Path, *, timeout_s: float = 1800.0, log_: logging.Logger | None = None
) -> Path:
    """Download the ``jaxspec==0.0.3`` wheel (no dependencies, not installed) into ``dest_dir``.

    Returns
    -------
    Path
        The wheel file (~100 MB).

    Raises
    ------
    ExternalToolError
        pip failed (no network, index unreachable).
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    run_tool(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(dest),
            JAXSPEC_REQUIREMENT,
        ],
        cwd=dest,
        timeout_s=timeout_s,
        log=log_ or log,
        check_sas_errors=False,
    )
    wheels = sorted(dest.glob("jaxspec-0.0.3-*.whl"))
    if not wheels:
        raise InputDataError("pip download finished but no jaxspec-0.0.3 wheel is there", dest)
    return wheels[0]


def _integrate_nodes(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Trapezoid integral of each node interval, spread uniformly over it, summed into ``edges`` bins."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return np.zeros(edges.size - 1)
    cum = np.concatenate(([0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))))
    return np.diff(np.interp(edges, x, cum))


def read_apec_nc(source: str | Path) -> dict[str, np.ndarray]:
    """Per-element spectra from ``apec.nc`` (inside the wheel or extracted) on the table's energy grid.

    Parameters
    ----------
    source : path
        The jaxspec wheel (``.whl``) or the ``apec.nc`` file.

    Returns
    -------
    dict
        ``kT`` (keV, n_T), ``edges`` (keV, N_BINS + 1), ``solar`` and ``metals``: emissivity per bin
        (ph cm^3 s^-1, shape n_T x N_BINS) of the non-scaled and the scaled elements.
    """
    try:
        import h5py
    except ImportError as exc:
        raise ConfigError("building the APEC table needs h5py: pip install 'xmm-survey[apec]'") from exc
    src = Path(source)
    if not src.is_file():
        raise InputDataError("file not found", src)
    with tempfile.TemporaryDirectory(prefix="xmm-apec-") as tmp:
        nc = src
        if src.suffix == ".whl":
            try:
                with zipfile.ZipFile(src) as zf:
                    nc = Path(zf.extract(APEC_MEMBER, tmp))
            except KeyError as exc:
                raise InputDataError(
                    f"wheel has no {APEC_MEMBER} (only jaxspec 0.0.3 ships it)", src
                ) from exc
            except zipfile.BadZipFile as exc:
                raise InputDataError("not a wheel (zip) file", src) from exc
        try:
            fh = h5py.File(nc, "r")
        except OSError as exc:
            raise InputDataError(f"cannot read as HDF5/netCDF4: {exc}", src) from exc
        with fh:
            for key in (
                "temperature",
                "continuum_energy",
                "continuum_emissivity",
                "pseudo_energy",
                "pseudo_emissivity",
                "line_energy",
                "line_element",
                "line_emissivity",
            ):
                if key not in fh:
                    raise InputDataError(f"apec.nc has no variable {key!r}", src)
            temps = np.asarray(fh["temperature"][:], dtype=float)
            use = np.nonzero(temps >= KT_MIN_KEV)[0]
            edges = np.geomspace(E_MIN_KEV, E_MAX_KEV, N_BINS + 1)
            metal_idx = np.array(METALS_Z) - 1
            n_el = fh["continuum_energy"].shape[1]
            is_metal = np.isin(np.arange(n_el), metal_idx)
            solar = np.zeros((use.size, N_BINS))
            metals = np.zeros((use.size, N_BINS))
            for row, it in enumerate(use):
                ce, cm = fh["continuum_energy"][it], fh["continuum_emissivity"][it]
                pe, pm = fh["pseudo_energy"][it], fh["pseudo_emissivity"][it]
                le, lz, lm = fh["line_energy"][it], fh["line_element"][it], fh["line_emissivity"][it]
                ok = np.isfinite(le) & np.isfinite(lm) & np.isfinite(lz)
                le, lz, lm = le[ok], lz[ok].astype(int), lm[ok]
                for z in range(n_el):
                    spec = _integrate_nodes(ce[z], cm[z], edges) + _integrate_nodes(pe[z], pm[z], edges)
                    sel = lz == z
                    spec += np.histogram(le[sel], bins=edges, weights=lm[sel])[0]
                    (metals if is_metal[z] else solar)[row] += spec
    return {"kT": temps[use], "edges": edges, "solar": solar, "metals": metals}


def apec_table_hdul(grid: dict[str, np.ndarray]) -> fits.HDUList:
    """The OGIP 92-009 table (PARAMETERS, ENERGIES, SPECTRA) from :func:`read_apec_nc` output."""
    kt = grid["kT"]
    edges = grid["edges"]
    n_kt = kt.size
    prim = fits.PrimaryHDU()
    h = prim.header
    h["MODLNAME"] = ("apecdrv", "model name")
    h["MODLUNIT"] = ("photons/cm^2/s", "model units")
    h["REDSHIFT"] = (True, "add a redshift parameter")
    h["ADDMODEL"] = (True, "additive model")
    h["HDUCLASS"] = "OGIP"
    h["HDUCLAS1"] = "XSPEC TABLE MODEL"
    h["HDUVERS"] = "1.0.0"
    h["CREATOR"] = "xmm-survey build-apec"
    h.add_comment(
        f"APEC CIE spectra from the AtomDB emissivities in {JAXSPEC_REQUIREMENT} ({APEC_MEMBER}, MIT)."
    )
    h.add_comment("Anders & Grevesse 1989 abundances; Abundanc scales C,N,O,Ne,Mg,Al,Si,S,Ar,Ca,Fe,Ni.")
    h.add_comment("Lines not broadened. norm = 1e-14/(4 pi (D_A(1+z))^2) Int ne nH dV.")
    h.add_comment("AtomDB data: distributed for research and educational use.")

    nmax = max(n_kt, len(ABUNDANCES))
    values = np.zeros((2, nmax), dtype=np.float32)
    values[0, :n_kt] = kt
    values[1, : len(ABUNDANCES)] = ABUNDANCES
    pars = fits.BinTableHDU.from_columns(
        [
            fits.Column("NAME", "12A", array=np.array(["kT", "Abundanc"])),
            fits.Column("METHOD", "J", array=np.array([1, 0])),
            fits.Column("INITIAL", "E", array=np.array([1.0, 1.0])),
            fits.Column("DELTA", "E", array=np.array([0.01, 0.01])),
            fits.Column("MINIMUM", "E", array=np.array([kt[0], 0.0])),
            fits.Column("BOTTOM", "E", array=np.array([kt[0], 0.0])),
            fits.Column("TOP", "E", array=np.array([kt[-1], ABUNDANCES[-1]])),
            fits.Column("MAXIMUM", "E", array=np.array([kt[-1], ABUNDANCES[-1]])),
            fits.Column("NUMBVALS", "J", array=np.array([n_kt, len(ABUNDANCES)])),
            fits.Column("VALUE", f"{nmax}E", array=values),
        ],
        name="PARAMETERS",
    )
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "PARAMETERS"),
        ("HDUVERS", "1.0.0"),
        ("NINTPARM", 2),
        ("NADDPARM", 0),
    ):
        pars.header[key] = val

    energies = fits.BinTableHDU.from_columns(
        [
            fits.Column("ENERG_LO", "E", array=edges[:-1]),
            fits.Column("ENERG_HI", "E", array=edges[1:]),
        ],
        name="ENERGIES",
    )
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "ENERGIES"),
        ("HDUVERS", "1.0.0"),
    ):
        energies.header[key] = val

    paramval = np.array([[t, a] for t in kt for a in ABUNDANCES], dtype=np.float32)
    spectra = np.array(
        [
            EMISSIVITY_TO_NORM * (grid["solar"][i] + a * grid["metals"][i])
            for i in range(n_kt)
            for a in ABUNDANCES
        ],
        dtype=np.float32,
    )
    spec = fits.BinTableHDU.from_columns(
        [
            fits.Column("PARAMVAL", "2E", array=paramval),
            fits.Column("INTPSPEC", f"{N_BINS}E", unit="photons/cm^2/s", array=spectra),
        ],
        name="SPECTRA",
    )
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "MODEL SPECTRA"),
        ("HDUVERS", "1.0.0"),
    ):
        spec.header[key] = val
    return fits.HDUList([prim, pars, energies, spec])


def build_apec(
    *, out: str | Path | None = None, wheel: str | Path | None = None, log_: logging.Logger | None = None
) -> Path:
    """Build the APEC table and write it atomically.

    Parameters
    ----------
    out : path, optional
        Output FITS file; default the user cache (``~/.cache/xmm-survey/apec_table.fits``).
    wheel : path, optional
        A downloaded ``jaxspec-0.0.3-*.whl`` (or ``apec.nc``); default: download it with pip.

    Returns
    -------
    Path
        The table file.
    """
    lg = log_ or log
    target = Path(out).expanduser() if out is not None else default_apec_cache_path()
    with tempfile.TemporaryDirectory(prefix="xmm-jaxspec-") as tmp:
        src = Path(wheel).expanduser() if wheel is not None else download_jaxspec_wheel(tmp, log_=lg)
        lg.info("reading AtomDB emissivities from %s", src)
        grid = read_apec_nc(src)
    hdul = apec_table_hdul(grid)
    atomic_write_fits(hdul, target)
    lg.info(
        "APEC table (%d kT x %d Abundanc, %d bins) -> %s", grid["kT"].size, len(ABUNDANCES), N_BINS, target
    )
    return target
