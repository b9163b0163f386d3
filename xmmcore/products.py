"""The one layout of the results folder: :class:`SurveyLayout` (``results/``) and :class:`ObsProducts`
(``results/<obsid>/``).

Every path a step, the survey driver, the catalogue or the report writes or reads is named here and
nowhere else: the backends, the pipeline's ``step_inputs``/``fit_inputs``, the joint step, status,
logs, the lock, the catalogue row builder and the report all ask a :class:`SurveyLayout` or an
:class:`ObsProducts` for them.

>>> s = SurveyLayout("results")
>>> s.rel(s.catalogue_parquet), s.rel(s.joint_outdir("A2029")), s.rel(s.lock)
('catalogue.parquet', 'joint/A2029', '.lock')

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
from typing import Any

__all__ = ["ObsProducts", "SurveyLayout"]


@dataclass(frozen=True)
class SurveyLayout:
    """Paths of the survey-level products under ``results/`` (``results_dir``).

    ``catalogue.parquet``/``catalogue.fits`` (the catalogue), ``config.resolved.yaml``,
    ``skipped.json`` (data folders not processed), ``.lock`` (one writer), ``plots/`` (survey
    figures), ``report/index.html``, ``logs/`` (driver, workers, Dask, SLURM, the Dask profile) and
    ``joint/`` (joint-fit records ``<target>.json``, the joint step's ``<slug>/`` folders, stacked
    spectra ``<target>_stack/``, mosaics ``<name>_mosaic.fits``); ``<obsid>/`` is :meth:`obs`.
    """

    results_dir: Path

    CATALOGUE_PARQUET = "catalogue.parquet"
    CATALOGUE_FITS = "catalogue.fits"
    RESOLVED_CONFIG = "config.resolved.yaml"
    SKIPPED = "skipped.json"
    LOCK = ".lock"
    PLOTS = "plots"
    REPORT = "report"
    LOGS = "logs"
    JOINT = "joint"
    #: Names of the root's own files and folders: an ObsID may not take one of them.
    RESERVED = frozenset(
        {
            LOGS,
            PLOTS,
            JOINT,
            REPORT,
            "catalogue",
            CATALOGUE_PARQUET,
            CATALOGUE_FITS,
            RESOLVED_CONFIG,
            SKIPPED,
            "steps",
        }
    )

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "results_dir", Path(results_dir))

    def obs(self, obsid: str) -> ObsProducts:
        """The products of one ObsID (``results/<obsid>/``)."""
        return ObsProducts(self.results_dir / obsid)

    # ------------------------------------------------------------------ root files
    @property
    def catalogue_parquet(self) -> Path:
        return self.results_dir / self.CATALOGUE_PARQUET

    @property
    def catalogue_fits(self) -> Path:
        return self.results_dir / self.CATALOGUE_FITS

    @property
    def catalogue_files(self) -> tuple[Path, Path]:
        return self.catalogue_parquet, self.catalogue_fits

    @property
    def resolved_config(self) -> Path:
        return self.results_dir / self.RESOLVED_CONFIG

    def read_resolved_config(self) -> dict[str, Any]:
        """``config.resolved.yaml`` as a dict (empty when absent); invalid YAML or a top level that is not
        a mapping is an ``InputDataError`` naming the file."""
        path = self.resolved_config
        if not path.exists():
            return {}
        import yaml

        from .errors import InputDataError

        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputDataError(f"invalid YAML ({exc})", path) from exc
        if not isinstance(cfg, dict):
            raise InputDataError("expected a mapping at the top level", path)
        return cfg

    @property
    def skipped(self) -> Path:
        return self.results_dir / self.SKIPPED

    @property
    def lock(self) -> Path:
        return self.results_dir / self.LOCK

    # ------------------------------------------------------------------ figures, report
    @property
    def plots_dir(self) -> Path:
        return self.results_dir / self.PLOTS

    @property
    def report_dir(self) -> Path:
        return self.results_dir / self.REPORT

    def report_index(self, out_dir: str | os.PathLike[str] | None = None) -> Path:
        """``index.html`` of the report (in ``out_dir``, default ``results/report/``)."""
        return (Path(out_dir) if out_dir is not None else self.report_dir) / "index.html"

    # ------------------------------------------------------------------ logs
    @property
    def logs_dir(self) -> Path:
        return self.results_dir / self.LOGS

    def driver_log(self, filename: str = "survey.log") -> Path:
        return self.logs_dir / filename

    @property
    def workers_log_dir(self) -> Path:
        return self.logs_dir / "workers"

    @property
    def dask_log(self) -> Path:
        return self.logs_dir / "dask.log"

    @property
    def slurm_log_dir(self) -> Path:
        return self.logs_dir / "slurm"

    @property
    def dask_profile(self) -> Path:
        return self.logs_dir / "dask-profile.html"

    # ------------------------------------------------------------------ joint fits, stacks, mosaics
    @property
    def joint_dir(self) -> Path:
        return self.results_dir / self.JOINT

    def joint_record(self, name: str) -> Path:
        """The joint-fit (or mosaic) record ``joint/<name>.json`` the catalogue and report read."""
        return self.joint_dir / f"{name}.json"

    def joint_records(self) -> list[Path]:
        """Every record ``joint/*.json`` (sorted; hidden files left out)."""
        if not self.joint_dir.is_dir():
            return []
        return sorted(p for p in self.joint_dir.glob("*.json") if not p.name.startswith("."))

    def joint_outdir(self, slug: str) -> Path:
        """The joint step's folder of one target, ``joint/<slug>/`` (``steps/joint.json``, ``logs/``)."""
        return self.joint_dir / slug

    def joint_stack_dir(self, target: str) -> Path:
        """Stacked spectra of a target, ``joint/<target>_stack/``."""
        return self.joint_dir / f"{target}_stack"

    def mosaic(self, name: str) -> Path:
        """Mosaic image of a multi-ObsID data folder, ``joint/<name>_mosaic.fits``."""
        return self.joint_dir / f"{name}_mosaic.fits"

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``results/`` (POSIX separators)."""
        return Path(path).relative_to(self.results_dir).as_posix()


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
