"""Run one XSPEC fit described by a JSON job file, in its own process (used by the ``xspec`` engine).

Usage::

    python -m xmmcore.fitting.engines.xspec_runner job.json
    python -m xmmcore.fitting.engines.xspec_runner --version

The job (written by :class:`xmmcore.fitting.engines.xspec.XspecEngine`) names the spectra and the
settings; this script loads them into PyXspec, fits, runs ``error``, ``flux`` and ``lumin`` and
writes ``result_path`` (JSON) atomically. Any Python error is written to the result as
``{"error": ...}`` with exit status 2; a crash of XSPEC itself (segmentation fault on a poor
spectrum) kills only this process, and the engine records the failure from the exit status.

Exit status: 0 done, 2 fit failed (error recorded), 3 PyXspec not importable.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from ..stats import xspec_stat

__all__ = ["ESAS_INSTRUMENT_COMPONENTS", "ESAS_SKY_COMPONENTS", "main", "run_job"]

EXIT_FAILED = 2
EXIT_NO_XSPEC = 3

_ABSORBERS = ("wabs", "phabs", "tbabs", "tbgrain", "tbvarabs", "zwabs", "zphabs", "ztbabs")

#: Sky components appended for the ESAS background option (folded through the ARF, like the source):
#: local hot bubble, absorbed Galactic halo and CXB power law (index 1.46).
ESAS_SKY_COMPONENTS = "apec + wabs*(apec + powerlaw)"
#: Instrumental components of the ESAS option, not folded through the ARF: Al K and Si K fluorescent
#: lines and the soft-proton power law. XSPEC 12 has no ``/b`` qualifier any more; they are a second
#: model (``instr``) on a second response of every spectrum that has the RMF only (multiresponse).
ESAS_INSTRUMENT_COMPONENTS = "gaussian + gaussian + powerlaw"
ESAS_INSTRUMENT_MODEL = "instr"
#: XSPEC's message when Fit.nIterations is reached (with Fit.query "no" it then stops).
ITERATION_LIMIT_TEXT = "Number of trials exceeded"


def _write_json(path: str, obj: Any) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            obj,
            fh,
            indent=2,
            default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else str(o),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _our_names(component_names: list[str]) -> list[str]:
    """XSPEC component names (``apec``, ``apec_3``) -> pipeline names (``apec_1``, ``apec_2``)."""
    seen: dict[str, int] = {}
    out = []
    for name in component_names:
        base = name.rsplit("_", 1)[0] if "_" in name and name.rsplit("_", 1)[1].isdigit() else name
        seen[base] = seen.get(base, 0) + 1
        out.append(f"{base}_{seen[base]}")
    return out


def _param_table(model: Any) -> list[tuple[str, Any, int]]:
    """(pipeline full name, Parameter, local index) for every parameter of ``model`` in XSPEC order."""
    names = _our_names(list(model.componentNames))
    out = []
    for comp_name, our in zip(model.componentNames, names):
        comp = getattr(model, comp_name)
        for pname in comp.parameterNames:
            par = getattr(comp, pname)
            out.append((f"{our}.{pname}", par, int(par.index)))
    return out


def _resolve(key: str, table: list[tuple[str, Any, int]]) -> int:
    """Local parameter index (1-based) of a setting key: number, full name or unique short name."""
    if key.isdigit():
        return int(key)
    low = key.lower()
    hits = [idx for name, _, idx in table if name.lower() == low]
    if not hits:
        hits = [idx for name, _, idx in table if name.split(".", 1)[1].lower() == low]
    if len(hits) != 1:
        raise ValueError(
            f"parameter {key!r} is {'ambiguous' if hits else 'unknown'}; have "
            + ", ".join(name for name, _, _ in table)
        )
    return hits[0]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Do the fit described by ``job`` with PyXspec and return the result record."""
    import xspec

    xs = xspec
    xs.Xset.chatter = int(job.get("chatter", 0))
    xs.Xset.logChatter = 10
    # The log is also how a fit stopped by the iteration limit is recognised (ITERATION_LIMIT_TEXT).
    log_path = job.get("log_path") or tempfile.mkstemp(prefix="xspec-", suffix=".log")[1]
    xs.Xset.openLog(log_path)
    xs.Xset.abund = job.get("abund", "angr")
    xs.Xset.xsect = job.get("xsect", "vern")
    cosmo = job.get("cosmology") or {}
    if cosmo:
        h0 = float(cosmo.get("H0", 70.0))
        lam = 1.0 - float(cosmo.get("Om0", 0.3))
        xs.Xset.cosmo = f"{h0} 0.0 {lam}"
    xs.AllData.clear()
    xs.AllModels.clear()
    # "no": at the iteration limit XSPEC stops instead of asking (or, with "yes", cycling on to the
    # engine's timeout); the limit is then reported as not converged.
    xs.Fit.query = "no"
    stat, weight = xspec_stat(job["stat"])
    xs.Fit.statMethod = stat
    if weight:
        xs.Fit.weight = weight
    datasets = job["datasets"]
    spectra = []
    for g, ds in enumerate(datasets, start=1):
        xs.AllData(f"{g}:{g} {ds['pha']}")
        s = xs.AllData(g)
        if ds.get("rmf"):
            s.response = ds["rmf"]
        if ds.get("arf"):
            s.response.arf = ds["arf"]
        if ds.get("bkg"):
            s.background = ds["bkg"]
        spectra.append(s)
    xs.AllData.ignore("bad")
    lo, hi = job["notice_kev"]
    for s in spectra:
        s.ignore(f"**-{float(lo):.6f} {float(hi):.6f}-**")

    expr = job["model"]
    model = xs.Model(expr)
    groups = [xs.AllModels(g) for g in range(1, len(spectra) + 1)]
    table = _param_table(model)
    npar = len(table)

    if job.get("cross_norm") and len(spectra) > 1:
        const = next((idx for name, _, idx in table if name.startswith("constant_1.")), None)
        if const is not None:
            groups[0](const).values = 1.0
            groups[0](const).frozen = True
            for m in groups[1:]:
                m(const).untie()
                m(const).frozen = False
    sky = job.get("esas_sky")
    if sky:
        _setup_esas_sky(model, groups, table, sky)
        _setup_esas_instrument(xs, spectra, datasets, sp_index=float(sky.get("sp_index", 0.4)))
    for key, value, frozen, link, group in job.get("settings", []):
        m = groups[(group or 1) - 1]
        idx = _resolve(key, table)
        par = m(idx)
        if link:
            par.link = str(_resolve(link, table) if not link.isdigit() else link)
            continue
        if group and group > 1:
            par.untie()
        if value is not None:
            par.values = float(value)
        if frozen is not None:
            par.frozen = bool(frozen)

    n_iter = int(job.get("max_iterations", 1000))
    xs.Fit.nIterations = n_iter
    converged = True
    fit_error: str | None = None
    log_before = _log_size(log_path)
    try:
        xs.Fit.perform()
    except Exception as exc:  # noqa: BLE001 - PyXspec raises plain Exception; the values are still reported
        converged = False
        fit_error = str(exc)
    if ITERATION_LIMIT_TEXT in _log_since(xs, log_path, log_before):
        converged = False
        fit_error = (
            f"iteration limit reached (Fit.nIterations = {n_iter}) before the fit converged: "
            "the parameters are those of the last iteration"
        )

    delta = float(job.get("error_delta", 1.0))
    free = []
    for g, m in enumerate(groups, start=1):
        for _name, _, idx in table:
            par = m(idx)
            if g > 1 and par.link:
                continue
            if not par.frozen and not par.link:
                free.append(((g - 1) * npar + idx, g, idx))
    error_flags: dict[int, str] = {}
    if job.get("errors") == "profile" and free:
        for number, g, idx in free:
            try:
                xs.Fit.error(f"stopat 20 0.01 maximum 1e6 {delta} {number}")
            except Exception as exc:  # noqa: BLE001 - one parameter must not lose the fit
                error_flags[number] = f"error failed: {exc}"
            flags = groups[g - 1](idx).error[2]
            if "T" in flags:
                error_flags[number] = flags

    params = []
    multi = len(groups) > 1
    # Parameters with their own value in some other data group (cross-normalisation constants...):
    # their group-1 entry belongs to the first dataset, as in the built-in engine.
    untied = {idx for m in groups[1:] for _, _, idx in table if not _links_to_same(m(idx).link, idx)}
    for g, m in enumerate(groups, start=1):
        for name, _, idx in table:
            par = m(idx)
            if g > 1 and par.link and _links_to_same(par.link, idx):
                continue
            number = (g - 1) * npar + idx
            value = float(par.values[0])
            sigma = _finite(par.sigma) or 0.0
            err_lo = err_hi = sigma
            if job.get("errors") == "profile" and not par.frozen and not par.link:
                lo_b, hi_b = par.error[0], par.error[1]
                if lo_b or hi_b:
                    err_lo, err_hi = max(value - float(lo_b), 0.0), max(float(hi_b) - value, 0.0)
            if par.frozen or par.link:
                err_lo = err_hi = sigma = 0.0
            entry = {
                "name": name,
                "number": number,
                "value": value,
                "err_lo": err_lo,
                "err_hi": err_hi,
                "sigma": sigma,
                "unit": par.unit or "",
                "frozen": bool(par.frozen),
                "linked": bool(par.link) or (multi and g == 1 and idx not in untied),
                "link_to": _link_target(par.link, table, npar) if par.link else None,
                "min": _finite(par.values[2]),
                "max": _finite(par.values[5]),
            }
            if g > 1 or idx in untied:
                entry["dataset"] = datasets[g - 1]["name"]
            if number in error_flags:
                entry["error_flags"] = error_flags[number]
            params.append(entry)

    extra_levels = _extra_intervals(xs, groups, npar, params, job)
    fluxes, lums, redshift = _fluxes(xs, model, groups, table, job)
    ds_info = []
    for s, ds in zip(spectra, datasets):
        noticed = list(s.noticed)
        energies = s.energies
        ds_info.append(
            {
                "name": ds["name"],
                "pha": ds["pha"],
                "rmf": ds.get("rmf"),
                "arf": ds.get("arf"),
                "bkg": ds.get("bkg"),
                "exposure_s": float(s.exposure),
                "n_bins": len(noticed),
                "n_groups": len(energies),
                "counts": float(sum(s.values)) * float(s.exposure),
                "noticed_kev": [float(energies[noticed[0] - 1][0]), float(energies[noticed[-1] - 1][1])]
                if noticed
                else None,
                "ignored_kev": [[None, float(lo)], [float(hi), None]],
                "stat": job["stat"] if not (ds.get("bkg") and job["stat"] == "cstat") else "wstat",
            }
        )
    if job.get("xcm_path"):
        # Saved under a temporary name beside the target, then renamed: a fit killed while XSPEC writes
        # never leaves a half-written session, and an older one stays until the new one is whole.
        xcm = Path(job["xcm_path"])
        tmp = xcm.with_name(f".{xcm.stem}.{os.getpid()}.tmp.xcm")  # ends .xcm: XSPEC appends none
        if tmp.exists():
            tmp.unlink()  # Xset.save refuses to overwrite
        try:
            xs.Xset.save(str(tmp), info="a")
            os.replace(tmp, xcm)
        finally:
            if tmp.exists():
                tmp.unlink()
    version = xs.Xset.version
    return {
        "model": expr,
        "engine": "xspec",
        "stat": job["stat"],
        "statistic": float(xs.Fit.statistic),
        "dof": int(xs.Fit.dof),
        "parameters": params,
        "fluxes": fluxes,
        "luminosities": lums,
        "converged": converged,
        "fit_error": fit_error,
        "datasets": ds_info,
        "abund": job.get("abund", "angr"),
        "error_method": "profile" if job.get("errors") == "profile" else "covariance",
        "error_delta": delta if job.get("errors") == "profile" else 1.0,
        "extra_error_levels": extra_levels,
        "redshift": redshift,
        "versions": {"engine": "xspec", "pyxspec": str(version[0]), "xspec": str(version[1])},
    }


def _is_shape(name: str) -> bool:
    """A parameter that is not a normalisation or cross-normalisation constant (as the built-in engine's)."""
    comp, _, short = name.rpartition(".")
    return short.lower() not in ("norm", "factor") and not comp.lower().startswith("constant")


def _extra_intervals(
    xs: Any, groups: list[Any], npar: int, params: list[dict[str, Any]], job: dict[str, Any]
) -> list[float]:
    """``error`` at each further delta-stat of the job for the free shape parameters, into ``intervals``.

    Run after the main intervals were read into ``params`` (``error`` overwrites ``par.error``).
    """
    levels = job.get("extra_error_levels") or []
    if not levels or job.get("errors") not in ("profile", "covariance"):
        return []
    for label, level, delta in levels:
        for entry in params:
            if entry["frozen"] or entry.get("link_to") or not _is_shape(entry["name"]):
                continue
            number = int(entry["number"])
            g, idx = (number - 1) // npar + 1, (number - 1) % npar + 1
            sigma = float(entry.get("sigma") or 0.0) * float(delta) ** 0.5
            out = {"level": level, "delta": delta, "err_lo": sigma, "err_hi": sigma, "method": "covariance"}
            if job.get("errors") == "profile":
                try:
                    xs.Fit.error(f"stopat 20 0.01 maximum 1e6 {delta} {number}")
                    par = groups[g - 1](idx)
                    lo_b, hi_b, flags = par.error[0], par.error[1], par.error[2]
                    if lo_b or hi_b:
                        out["err_lo"] = max(entry["value"] - float(lo_b), 0.0)
                        out["err_hi"] = max(float(hi_b) - entry["value"], 0.0)
                        out["method"] = "profile"
                    if "T" in flags:
                        out["note"] = f"error flags {flags}"
                except Exception as exc:  # noqa: BLE001 - one parameter must not lose the fit
                    out["note"] = f"error failed: {exc}; covariance error used"
            entry.setdefault("intervals", {})[label] = out
    return [float(level) for _, level, _ in levels]


def _links_to_same(link: str, idx: int) -> bool:
    """True for the default tie of a data group's parameter to the same parameter of group 1."""
    m = re.fullmatch(r"\s*=?\s*[pP]?(\d+)\s*", link or "")
    return m is not None and int(m.group(1)) == idx


def _link_target(link: str, table: list[tuple[str, Any, int]], npar: int) -> str | None:
    m = re.search(r"p?(\d+)", link or "")
    if not m:
        return None
    k = int(m.group(1))
    local = (k - 1) % npar + 1
    return next((name for name, _, idx in table if idx == local), None)


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _log_since(xs: Any, path: str, offset: int) -> str:
    """What XSPEC wrote to its log after ``offset`` (the log is flushed by closing and reopening it)."""
    try:
        xs.Xset.closeLog()
        with open(path, errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
        xs.Xset.openLog(path)
    except OSError:
        return ""
    return text


def _setup_esas_instrument(
    xs: Any, spectra: list[Any], datasets: list[dict[str, Any]], *, sp_index: float = 0.4
) -> Any:
    """The ESAS instrumental lines and soft protons as model ``instr`` on response 2 (RMF, no ARF).

    Al K (1.486 keV) and Si K (1.739 keV) lines of zero width and the soft-proton power law: every
    spectrum gets ``multiresponse[1]`` = its RMF, so these are folded through the redistribution only.
    Their values are free per spectrum (cameras differ).
    """
    for s, ds in zip(spectra, datasets, strict=True):
        if not ds.get("rmf"):
            raise ValueError(f"the ESAS instrumental model needs the RMF of {ds['name']}")
        s.multiresponse[1] = ds["rmf"]
    instr = xs.Model(ESAS_INSTRUMENT_COMPONENTS, ESAS_INSTRUMENT_MODEL, 2)
    comps = list(instr.componentNames)
    for g in range(1, len(spectra) + 1):
        m = xs.AllModels(g, ESAS_INSTRUMENT_MODEL)
        al, si, sp = (getattr(m, c) for c in comps)
        if g > 1:
            for par in (al.LineE, al.norm, si.LineE, si.norm, sp.PhoIndex, sp.norm):
                par.untie()
        al.LineE.values, al.LineE.frozen = 1.486, True
        si.LineE.values, si.LineE.frozen = 1.739, True
        for line in (al, si):
            line.Sigma.values, line.Sigma.frozen = 0.0, True
        sp.PhoIndex.values = sp_index
    return instr


def _setup_esas_sky(
    model: Any, groups: list[Any], table: list[tuple[str, Any, int]], sky: dict[str, Any]
) -> None:
    """Start values and ties of the ESAS sky components (the last 4 of the source model)."""
    comps = list(model.componentNames)[-4:]
    lhb, habs, halo, cxb = (getattr(model, c) for c in comps)
    lhb.kT.values, lhb.kT.frozen = float(sky.get("lhb_kT", 0.1)), True
    lhb.Abundanc.values, lhb.Redshift.values = 1.0, 0.0
    halo.kT.values = float(sky.get("halo_kT", 0.25))
    halo.Abundanc.values, halo.Redshift.values = 1.0, 0.0
    cxb.PhoIndex.values, cxb.PhoIndex.frozen = 1.46, True
    absorber = next(
        (
            idx
            for name, _, idx in table
            if name.split("_", 1)[0] in _ABSORBERS and name.endswith(".nH") and idx < habs.nH.index
        ),
        None,
    )
    if absorber is not None:
        habs.nH.link = str(absorber)
    else:
        habs.nH.values, habs.nH.frozen = float(sky.get("nh", 0.03)), True


def _zero_absorbers(groups: list[Any], table: list[tuple[str, Any, int]]) -> list[tuple[Any, float, bool]]:
    saved = []
    for name, _, idx in table:
        if name.split("_", 1)[0] in _ABSORBERS and name.split(".", 1)[1].lower() == "nh":
            par = groups[0](idx)
            saved.append((par, float(par.values[0]), bool(par.frozen)))
            par.values = 0.0
    return saved


def _fluxes(
    xs: Any, model: Any, groups: list[Any], table: list[tuple[str, Any, int]], job: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """Absorbed/unabsorbed fluxes [erg/cm^2/s] and rest-frame luminosities [erg/s] of data group 1."""
    bands = [tuple(map(float, b)) for b in job.get("flux_bands_kev", [])]
    trials = int(job.get("flux_trials", 200))
    z = job.get("redshift")
    if z is None:
        z = next(
            (
                float(groups[0](idx).values[0])
                for name, _, idx in table
                if name.split(".", 1)[1].lower() == "redshift"
            ),
            None,
        )
    fluxes: dict[str, Any] = {}
    lums: dict[str, Any] = {}
    s1 = xs.AllData(1)
    for lo, hi in bands:
        key = job["band_keys"][f"{lo}-{hi}"]
        entry: dict[str, Any] = {"band_kev": [lo, hi], "unit": "erg cm^-2 s^-1"}
        for which in ("absorbed", "unabsorbed"):
            saved = _zero_absorbers(groups, table) if which == "unabsorbed" else []
            try:
                xs.AllModels.calcFlux(f"{lo} {hi} err {trials} 68.0")
                f = s1.flux
                entry[which] = float(f[0])
                entry[f"{which}_err_lo"] = max(float(f[0]) - float(f[1]), 0.0)
                entry[f"{which}_err_hi"] = max(float(f[2]) - float(f[0]), 0.0)
            finally:
                for par, value, frozen in saved:
                    par.values = value
                    par.frozen = frozen
        fluxes[key] = entry
        if z is not None and z > 0:
            saved = _zero_absorbers(groups, table)
            try:
                xs.AllModels.calcLumin(f"{lo} {hi} {z} err {trials} 68.0")
                lum = s1.lumin
            finally:
                for par, value, frozen in saved:
                    par.values = value
                    par.frozen = frozen
            v = float(lum[0]) * 1e44
            lums[key] = {
                "band_kev": [lo, hi],
                "value": v,
                "err_lo": max(v - float(lum[1]) * 1e44, 0.0),
                "err_hi": max(float(lum[2]) * 1e44 - v, 0.0),
                "redshift": z,
                "unit": "erg s^-1",
            }
    return fluxes, lums, z


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m xmmcore.fitting.engines.xspec_runner job.json | --version", file=sys.stderr)
        return EXIT_FAILED
    try:
        import xspec
    except ImportError as exc:
        msg = (
            f"PyXspec is not importable by {sys.executable} ({exc}); initialise HEASoft "
            "(source $HEADAS/headas-init.sh) before running xmm-survey"
        )
        print(msg, file=sys.stderr)
        if args[0] != "--version":
            job = json.loads(Path(args[0]).read_text())
            _write_json(job["result_path"], {"error": msg, "kind": "no_xspec"})
        return EXIT_NO_XSPEC
    if args[0] == "--version":
        version = xspec.Xset.version
        print(json.dumps({"pyxspec": str(version[0]), "xspec": str(version[1])}))
        return 0
    job = json.loads(Path(args[0]).read_text())
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a recorded result, never a lost worker
        _write_json(
            job["result_path"],
            {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "kind": "fit_failed",
            },
        )
        print(f"***XSPEC Error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _write_json(job["result_path"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
