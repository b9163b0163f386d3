"""A fake results/<obsid>/ folder (step records, fit.json, regions.json) for the catalogue tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmmcore.fsutil import atomic_write_json


def _step(
    obsid: str, step: str, summary: dict, *, status: str = "done", reason: str = "", error_class: str = ""
) -> dict:
    return {
        "step": step,
        "obsid": obsid,
        "status": status,
        "reason": reason,
        "error_class": error_class,
        "inputs_hash": f"h-{obsid}-{step}",
        "started": f"2026-01-01T00:0{len(step) % 10}:00Z",
        "finished": f"2026-01-01T01:0{len(step) % 10}:00Z",
        "wall_s": 12.5,
        "versions": {"xmm-survey": "0.1.0", "backend": "python", "numpy": np.__version__},
        "config_hash": "cfg123",
        "summary": summary,
        "outputs": [],
    }


def make_obs(
    results: Path,
    obsid: str,
    *,
    kT: float,
    z: float,
    seed: int,
    fail_step: str | None = None,
    cams=("pn", "mos1", "mos2"),
    lum: float | None = None,
) -> None:
    """Write one ObsID's step records, regions.json and fit.json like the pipeline does."""
    rng = np.random.default_rng(seed)
    d = results / obsid
    atomic_write_json(
        d / "meta.json",
        {
            "name": f"CL{seed}",
            "ra": 10.0 + seed,
            "dec": -5.0 - seed,
            "z": z,
            "nh": 0.03,
            "r500_kpc": 900.0 + seed,
        },
    )
    filt = {
        "cameras": {
            c: {
                "n_events": int(rng.integers(1e4, 1e5)),
                "exposure_s": float(rng.uniform(1e4, 4e4)),
                "exposure_raw_s": 5e4,
                "flare_fraction": float(rng.uniform(0, 0.4)),
            }
            for c in cams
        }
    }
    spec = {
        "cameras": {
            c: {
                "src_counts": float(rng.integers(500, 5000)),
                "bkg_counts": float(rng.integers(100, 900)),
                "src_backscal": 1.0e6,
                "bkg_backscal": 4.0e6,
                "exposure_s": 2e4,
                "bkg_exposure_s": 2e4,
            }
            for c in cams
        }
    }
    regions = {
        "centre_ra": 10.0 + seed,
        "centre_dec": -5.0 - seed,
        "centre_x": 25000.5,
        "centre_y": 25100.0,
        "r_src_arcmin": 3.0,
        "bkg_inner_arcmin": 3.15,
        "bkg_outer_arcmin": 4.5,
        "point_sources": [{"x": 1, "y": 2, "ra": 0, "dec": 0, "r_arcsec": 20, "snr": 7}] * seed,
        "files": {},
    }
    for step, summ in (("filter", filt), ("regions", regions), ("spectra", spec), ("fit", {})):
        if fail_step == step:
            atomic_write_json(
                d / "steps" / f"{step}.json",
                _step(
                    obsid,
                    step,
                    {},
                    status="failed",
                    reason=f"{step} broke: no counts",
                    error_class="FitError",
                ),
            )
            return
        atomic_write_json(d / "steps" / f"{step}.json", _step(obsid, step, summ))
    atomic_write_json(d / "regions" / "regions.json", regions)
    params = [
        {
            "name": "constant_1.factor",
            "number": 1,
            "value": 1.0,
            "err_lo": 0.0,
            "err_hi": 0.0,
            "sigma": 0.0,
            "unit": "",
            "frozen": True,
            "linked": False,
            "dataset": "pn",
        },
        {
            "name": "constant_1.factor",
            "number": 2,
            "value": 1.04,
            "err_lo": 0.03,
            "err_hi": 0.035,
            "sigma": 0.03,
            "unit": "",
            "frozen": False,
            "linked": False,
            "dataset": "mos1",
        },
        {
            "name": "wabs_1.nH",
            "number": 3,
            "value": 0.03,
            "err_lo": 0.0,
            "err_hi": 0.0,
            "sigma": 0.0,
            "unit": "10^22",
            "frozen": True,
            "linked": True,
        },
        {
            "name": "zbremss_1.kT",
            "number": 4,
            "value": kT,
            "err_lo": 0.1 * kT,
            "err_hi": 0.12 * kT,
            "sigma": 0.11 * kT,
            "unit": "keV",
            "frozen": False,
            "linked": True,
        },
        {
            "name": "zbremss_1.Redshift",
            "number": 5,
            "value": z,
            "err_lo": 0,
            "err_hi": 0,
            "sigma": 0,
            "unit": "",
            "frozen": True,
            "linked": True,
        },
        {
            "name": "zbremss_1.norm",
            "number": 6,
            "value": 1e-3 * seed,
            "err_lo": 1e-5,
            "err_hi": 1.2e-5,
            "sigma": 1.1e-5,
            "unit": "",
            "frozen": False,
            "linked": True,
        },
    ]
    fit = {
        "model": "constant*wabs*zbremss",
        "engine": "builtin",
        "stat": "cstat",
        "statistic": 480.0 + seed,
        "dof": 470,
        "parameters": params,
        "converged": True,
        "fluxes": {
            "0.5-2.0": {
                "absorbed": 1e-12 * seed,
                "unabsorbed": 1.1e-12 * seed,
                "absorbed_err_lo": 1e-14,
                "absorbed_err_hi": 2e-14,
            },
            "2.0-10.0": {"absorbed": 2e-12, "unabsorbed": 2e-12},
        },
        "luminosities": {
            "0.1-2.4": {
                "value": lum or 1e44 * seed,
                "err_lo": 0.05 * (lum or 1e44 * seed),
                "err_hi": 0.06 * (lum or 1e44 * seed),
            }
        },
    }
    atomic_write_json(d / "fits" / "fit.json", fit)
