"""The one layout of the per-ObsID products under ``results/<obsid>/``.

Every path a step writes or reads is named here and nowhere else: the backends, the pipeline's
``step_inputs``/``fit_inputs``, the catalogue row builder and the report all ask an
:class:`ObsProducts` for them.

>>> p = ObsProducts("results/0900100001")
>>> p.clean_events("pn").relative_to(p.outdir).as_posix()
'events/pn_clean.fits'
>>> p.rel(p.src_spectrum("mos1"))
'spectra/mos1_src.pha'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ObsProducts"]


@dataclass(frozen=True)
class ObsProducts:
    """Paths of every product of one ObsID (``outdir`` = ``results/<obsid>/``).

    Folders: ``events/`` (screened events, GTIs, light curves), ``regions/`` (DS9 files, images,
    ``regions.json``), ``spectra/`` (OGIP spectra and responses), ``fits/`` (fit results),
    ``plots/`` (diagnostic figures), ``logs/`` (per-step logs), ``steps/`` (step records),
    ``sas/`` (SAS task folders, intermediate products).
    """

    outdir: Path

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "outdir", Path(outdir))

    # ------------------------------------------------------------------ folders
    @property
    def events_dir(self) -> Path:
        return self.outdir / "events"

    @property
    def regions_dir(self) -> Path:
        return self.outdir / "regions"

    @property
    def spectra_dir(self) -> Path:
        return self.outdir / "spectra"

    @property
    def fits_dir(self) -> Path:
        return self.outdir / "fits"

    @property
    def plots_dir(self) -> Path:
        return self.outdir / "plots"

    @property
    def logs_dir(self) -> Path:
        return self.outdir / "logs"

    @property
    def steps_dir(self) -> Path:
        return self.outdir / "steps"

    @property
    def sas_dir(self) -> Path:
        return self.outdir / "sas"

    #: Folders that hold bookkeeping, not science products.
    BOOKKEEPING = ("steps", "logs")

    # ------------------------------------------------------------------ filter step
    def clean_events(self, camera: str) -> Path:
        """Screened, flare-filtered event list with its GTI extension."""
        return self.events_dir / f"{camera}_clean.fits"

    def gti(self, camera: str) -> Path:
        """Flare GTI table."""
        return self.events_dir / f"{camera}_gti.fits"

    def light_curve(self, camera: str) -> Path:
        """High-energy light curve used for the flare GTI."""
        return self.events_dir / f"{camera}_lc.fits"

    def lightcurve_plot(self, camera: str) -> Path:
        return self.plots_dir / f"{camera}_lightcurve.png"

    # ------------------------------------------------------------------ regions step
    @property
    def regions_json(self) -> Path:
        """Region geometry and file names (``regions`` dict of docs/CONTRACTS.md)."""
        return self.regions_dir / "regions.json"

    def src_region(self, camera: str) -> Path:
        return self.regions_dir / f"{camera}_src.reg"

    def bkg_region(self, camera: str) -> Path:
        return self.regions_dir / f"{camera}_bkg.reg"

    @staticmethod
    def annulus_key(camera: str, k: int) -> str:
        """Key (and file stem) of annulus ``k`` of ``camera`` (``regions.json`` ``files``, spectra)."""
        return f"{camera}_ann{k}_src"

    def annulus_region(self, camera: str, k: int) -> Path:
        return self.regions_dir / f"{self.annulus_key(camera, k)}.reg"

    @property
    def ptsrc_region(self) -> Path:
        return self.regions_dir / "ptsrc.reg"

    def image(self, camera: str, band_kev: tuple[float, float] = (0.5, 2.0)) -> Path:
        """Counts image in ``band_kev``."""
        return self.regions_dir / f"{camera}_img_{band_kev[0]:g}-{band_kev[1]:g}keV.fits"

    def flat_exposure(self, camera: str, band_kev: tuple[float, float] = (0.5, 2.0)) -> Path:
        """Flat (un-vignetted) exposure map in ``band_kev``."""
        return self.regions_dir / f"{camera}_flatexp_{band_kev[0]:g}-{band_kev[1]:g}keV.fits"

    def image_plot(self, camera: str) -> Path:
        return self.plots_dir / f"{camera}_image.png"

    # ------------------------------------------------------------------ spectra step
    def spectrum(self, key: str) -> Path:
        """Spectrum named by a region key (``<cam>_src``, ``<cam>_bkg``, ``<cam>_ann<k>_src``)."""
        return self.spectra_dir / f"{key}.pha"

    def src_spectrum(self, camera: str) -> Path:
        return self.spectrum(f"{camera}_src")

    def bkg_spectrum(self, camera: str) -> Path:
        return self.spectrum(f"{camera}_bkg")

    def rmf(self, camera: str) -> Path:
        return self.spectra_dir / f"{camera}.rmf"

    def arf(self, camera: str) -> Path:
        return self.spectra_dir / f"{camera}.arf"

    # ------------------------------------------------------------------ fit step
    @property
    def fit_json(self) -> Path:
        """``FitResult.to_dict()`` of the per-ObsID fit."""
        return self.fits_dir / "fit.json"

    @property
    def fit_xcm(self) -> Path:
        return self.fits_dir / "fit.xcm"

    @property
    def fit_txt(self) -> Path:
        return self.fits_dir / "fit.txt"

    @property
    def fit_plot(self) -> Path:
        return self.plots_dir / "spectrum_fit.png"

    # ------------------------------------------------------------------ bookkeeping
    def step_log(self, step: str) -> Path:
        return self.logs_dir / f"{step}.log"

    def step_record(self, step: str) -> Path:
        return self.steps_dir / f"{step}.json"

    def sas_task_dir(self, step: str, label: str) -> Path:
        """Working folder of one SAS task (``sas/<step>/<label>/``)."""
        return self.sas_dir / step / label

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``outdir`` (POSIX form) if it lies inside, else as given."""
        p = Path(path)
        for a, b in ((p, self.outdir), (p.resolve(), self.outdir.resolve())):
            try:
                return a.relative_to(b).as_posix()
            except ValueError:
                continue
        return str(p)
