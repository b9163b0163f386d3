"""One spectrum ready to fit: PHA + RMF (+ ARF) (+ background), grouping, quality and energy filter.

Forward folding: the model (photons cm^-2 s^-1 per RMF energy bin) times the ARF (cm^2) times the
exposure (s) and AREASCAL, through the RMF (sparse ``n_e x n_chan``), summed over the channels of
each group, gives the predicted counts of each noticed group. The folding matrix for the noticed
groups is built once (``scipy.sparse``) and rebuilt when the filter changes.

Conventions (as XSPEC and Sherpa):

* channels with QUALITY != 0 take no part (neither in data nor in model);
* a group starts at GROUPING = 1 and continues over -1 (GROUPING 0 or absent = no grouping);
* a group's energy range runs from E_MIN of its first channel to E_MAX of its last (EBOUNDS);
* :meth:`SpectrumDataset.notice` / :meth:`SpectrumDataset.ignore` act on whole groups that overlap
  the energy range (Sherpa's ``notice(2, 10)``); the first ``notice`` replaces the default
  "everything", later ones add to it, like XSPEC's ``ignore **-0.5 7.0-**``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputDataError
from ..ogip import ARF, PHA, RMF, read_arf, read_pha, read_rmf

__all__ = ["BackgroundMissingWarning", "SpectrumDataset"]

log = logging.getLogger(__name__)


class BackgroundMissingWarning(UserWarning):
    """The BACKFILE keyword names a file that does not exist; the fit goes on without background."""


def _scalar(value: float | np.ndarray, mask: np.ndarray | None = None) -> float:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return float(arr)
    return float(np.mean(arr[mask] if mask is not None else arr))


@dataclass
class SpectrumDataset:
    """A spectrum with its responses, background, grouping and energy filter.

    Use :meth:`from_pha` to build one from files. Attributes hold the OGIP objects
    (:class:`~xmmcore.ogip.PHA`, ``RMF``, ``ARF``) so that tests can build datasets in memory.

    Attributes
    ----------
    pha : PHA
        Source spectrum.
    rmf : RMF
        Redistribution matrix (its energy grid is the model grid).
    arf : ARF or None
        Effective area (cm^2) on the RMF energy grid.
    bkg : PHA or None
        Background spectrum (used when ``use_background``).
    name : str
        Label (``pn``, ``mos1``...).
    """

    pha: PHA
    rmf: RMF
    arf: ARF | None = None
    bkg: PHA | None = None
    name: str = ""
    use_background: bool = True
    _noticed: np.ndarray | None = field(default=None, repr=False)
    _filtered: bool = field(default=False, repr=False)
    _fold: sp.csr_matrix | None = field(default=None, repr=False)
    #: pgstat's model-independent terms, with the arrays they were computed from (``stats.PGStat``)
    _pgstat_data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_chan = self.rmf.n_chan
        if self.pha.counts.size != n_chan:
            raise InputDataError(
                f"spectrum has {self.pha.counts.size} channels but the RMF {self.rmf.path} has {n_chan}",
                self.pha.path,
            )
        if self.arf is not None and self.arf.specresp.size != self.rmf.energ_lo.size:
            raise InputDataError(
                f"ARF has {self.arf.specresp.size} energy bins but the RMF {self.rmf.path} has "
                f"{self.rmf.energ_lo.size}",
                self.arf.path,
            )
        if self.arf is not None and not np.allclose(
            self.arf.energ_lo, self.rmf.energ_lo, rtol=1e-4, atol=1e-6
        ):
            raise InputDataError(f"ARF energy grid differs from the RMF {self.rmf.path}", self.arf.path)
        if self.bkg is not None and self.bkg.counts.size != n_chan:
            raise InputDataError(
                f"background has {self.bkg.counts.size} channels, source has {n_chan}", self.bkg.path
            )
        if not self.name:
            self.name = self.pha.path.stem if self.pha.path else "spectrum"
        if self.pha.exposure <= 0:
            raise InputDataError("EXPOSURE must be > 0 to fit", self.pha.path)
        self._build_groups()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pha(
        cls,
        path: str | Path,
        *,
        rmf: str | Path | None = None,
        arf: str | Path | None = None,
        bkg: str | Path | None = None,
        use_background: bool = True,
        name: str | None = None,
        row: int | None = None,
    ) -> SpectrumDataset:
        """Read a PHA and its responses / background.

        Files not given are taken from RESPFILE / ANCRFILE / BACKFILE, relative to the PHA's folder.
        A missing RESPFILE is an error; a BACKFILE that does not exist gives a
        :class:`BackgroundMissingWarning` and the fit goes on without background.

        Raises
        ------
        InputDataError
            No response, or an unreadable / inconsistent file (the message names the file and keyword).
        """
        pha = read_pha(path, row=row)
        rmf_path = Path(rmf) if rmf is not None else pha.resolve("respfile")
        if rmf_path is None:
            raise InputDataError("no RESPFILE keyword and no RMF given", pha.path)
        if not rmf_path.exists():
            raise InputDataError(
                f"RESPFILE {pha.respfile!r} not found (looked for {rmf_path}); give the RMF explicitly",
                pha.path,
            )
        rmf_obj = read_rmf(rmf_path)
        arf_path = Path(arf) if arf is not None else pha.resolve("ancrfile")
        arf_obj = None
        if arf_path is not None:
            if not arf_path.exists():
                raise InputDataError(f"ANCRFILE {pha.ancrfile!r} not found (looked for {arf_path})", pha.path)
            arf_obj = read_arf(arf_path)
        bkg_obj = None
        if use_background:
            bkg_path = Path(bkg) if bkg is not None else pha.resolve("backfile")
            if bkg_path is not None:
                if bkg_path.exists():
                    bkg_obj = read_pha(bkg_path)
                elif bkg is not None:
                    raise InputDataError("background file not found", bkg_path)
                else:
                    msg = f"{pha.path}: BACKFILE {pha.backfile!r} not found ({bkg_path}); fitting without background"
                    warnings.warn(msg, BackgroundMissingWarning, stacklevel=2)
                    log.warning(msg)
        return cls(
            pha=pha, rmf=rmf_obj, arf=arf_obj, bkg=bkg_obj, name=name or "", use_background=use_background
        )

    # ------------------------------------------------------------------ grouping
    def _build_groups(self) -> None:
        n = self.pha.counts.size
        good = np.ones(n, dtype=bool) if self.pha.quality is None else (np.asarray(self.pha.quality) == 0)
        grouping = self.pha.grouping
        starts = (
            np.ones(n, dtype=bool)
            if grouping is None or not np.any(grouping == -1)
            else (np.asarray(grouping) != -1)
        )
        chan = np.nonzero(good)[0]
        # a good channel starts a group if it is flagged as a start or follows a dropped channel's group start
        group_id = np.cumsum(starts)[chan]
        _, first_idx, inverse = np.unique(group_id, return_index=True, return_inverse=True)
        self.group_of_channel = np.full(n, -1, dtype=np.int64)
        self.group_of_channel[chan] = inverse
        n_groups = first_idx.size
        last_idx = np.r_[first_idx[1:] - 1, chan.size - 1] if n_groups else first_idx
        self.group_first = chan[first_idx]
        self.group_last = chan[last_idx]
        self.n_groups = n_groups
        self.group_lo_kev = self.rmf.e_min[self.group_first]
        self.group_hi_kev = self.rmf.e_max[self.group_last]
        rows = self.group_of_channel[chan]
        self._gmat = sp.csr_matrix((np.ones(chan.size), (rows, chan)), shape=(n_groups, n))
        self.group_counts = self._gmat @ self.pha.counts
        stat_err = self.pha.stat_err
        self.group_stat_err = None if stat_err is None else np.sqrt(self._gmat @ (np.asarray(stat_err) ** 2))
        self.group_bkg_var: np.ndarray | None = None
        if self.bkg is not None and self.use_background:
            self.group_bkg_counts = self._gmat @ self.bkg.counts
            if not self.bkg.poisserr:
                if self.bkg.stat_err is None:
                    raise InputDataError("background has POISSERR = F but no STAT_ERR column", self.bkg.path)
                self.group_bkg_var = self._gmat @ (np.asarray(self.bkg.stat_err, dtype=float) ** 2)
        else:
            self.group_bkg_counts = None
        self._noticed = np.ones(n_groups, dtype=bool)
        self._filtered = False
        self._fold = None

    @property
    def has_background(self) -> bool:
        """True when a background spectrum is used."""
        return self.group_bkg_counts is not None

    @property
    def exposure(self) -> float:
        """Source exposure in s."""
        return float(self.pha.exposure)

    @property
    def bkg_scale(self) -> float:
        """Factor turning background counts into expected background counts in the source spectrum.

        (exposure x BACKSCAL x AREASCAL)_src / (exposure x BACKSCAL x AREASCAL)_bkg.
        """
        if self.bkg is None:
            return 0.0
        src = self.pha.exposure * _scalar(self.pha.backscal) * _scalar(self.pha.areascal)
        bkg = self.bkg.exposure * _scalar(self.bkg.backscal) * _scalar(self.bkg.areascal)
        if bkg <= 0:
            raise InputDataError("background EXPOSURE x BACKSCAL x AREASCAL must be > 0", self.bkg.path)
        return src / bkg

    # ------------------------------------------------------------------ filters
    def _overlap(self, lo: float | None, hi: float | None) -> np.ndarray:
        lo_v = -math.inf if lo is None else float(lo)
        hi_v = math.inf if hi is None else float(hi)
        return (self.group_hi_kev > lo_v) & (self.group_lo_kev < hi_v)

    def notice(self, lo_kev: float | None, hi_kev: float | None) -> SpectrumDataset:
        """Notice the groups overlapping ``lo_kev``..``hi_kev`` (``None`` = open end)."""
        sel = self._overlap(lo_kev, hi_kev)
        self._noticed = sel if not self._filtered else (self._noticed | sel)
        self._filtered = True
        self._fold = None
        return self

    def ignore(self, lo_kev: float | None, hi_kev: float | None) -> SpectrumDataset:
        """Ignore the groups overlapping ``lo_kev``..``hi_kev`` (``None`` = open end, XSPEC's ``**``)."""
        self._noticed = self._noticed & ~self._overlap(lo_kev, hi_kev)
        self._filtered = True
        self._fold = None
        return self

    def notice_all(self) -> SpectrumDataset:
        """Remove every energy filter."""
        self._noticed = np.ones(self.n_groups, dtype=bool)
        self._filtered = False
        self._fold = None
        return self

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask over the groups: True = noticed."""
        if self._noticed is None:  # only before __post_init__ has built the groups
            raise RuntimeError(f"{self.name}: grouping not built yet")
        return self._noticed

    @property
    def n_noticed(self) -> int:
        """Number of noticed groups (data bins of the fit)."""
        return int(self.mask.sum())

    # ------------------------------------------------------------------ folding
    @property
    def energ_lo(self) -> np.ndarray:
        """Model grid lower edges (keV)."""
        return self.rmf.energ_lo

    @property
    def energ_hi(self) -> np.ndarray:
        """Model grid upper edges (keV)."""
        return self.rmf.energ_hi

    @property
    def fold_matrix(self) -> sp.csr_matrix:
        """``n_noticed x n_e`` matrix: model photons cm^-2 s^-1 per energy bin -> counts per noticed group."""
        if self._fold is None:
            area = np.ones(self.rmf.energ_lo.size) if self.arf is None else self.arf.specresp
            scale = self.exposure * _scalar(self.pha.areascal)
            resp = sp.diags(area * scale) @ self.rmf.matrix  # n_e x n_chan
            g = self._gmat[self._noticed]
            self._fold = sp.csr_matrix((resp @ g.T).T)
        return self._fold

    def predict(self, flux: np.ndarray) -> np.ndarray:
        """Predicted source counts per noticed group for ``flux`` (photons cm^-2 s^-1 per RMF energy bin)."""
        return self.fold_matrix @ flux

    def predict_all_groups(self, flux: np.ndarray) -> np.ndarray:
        """Predicted source counts for every group (noticed or not)."""
        area = np.ones(self.rmf.energ_lo.size) if self.arf is None else self.arf.specresp
        chan = (flux * area * self.exposure * _scalar(self.pha.areascal)) @ self.rmf.matrix
        return self._gmat @ np.asarray(chan).ravel()

    @property
    def counts(self) -> np.ndarray:
        """Source counts per noticed group."""
        return self.group_counts[self._noticed]

    @property
    def bkg_poisson(self) -> bool:
        """False when the background spectrum has ``POISSERR = F`` (a modelled or rescaled one, with STAT_ERR)."""
        return self.group_bkg_var is None

    @property
    def bkg_variance(self) -> np.ndarray | None:
        """Variance (STAT_ERR^2 summed per group) of a non-Poisson background's noticed groups, else None."""
        return None if self.group_bkg_var is None else self.group_bkg_var[self._noticed]

    @property
    def bkg_counts(self) -> np.ndarray | None:
        """Background counts per noticed group (``None`` without background)."""
        return None if self.group_bkg_counts is None else self.group_bkg_counts[self._noticed]

    def __repr__(self) -> str:
        bkg = "bkg" if self.has_background else "no bkg"
        return (
            f"<SpectrumDataset {self.name}: {self.n_noticed}/{self.n_groups} groups noticed, "
            f"{self.group_counts[self._noticed].sum():.0f} counts, {bkg}>"
        )
