"""A stand-in for the SAS/ESAS tasks, for tests on machines without SAS (``tests/sas_stub/install``).

``sas_stub.py TASK param=value ...`` behaves like the SAS task ``TASK`` as far as the pipeline can see:

* every ``param`` is checked against the task's whitelist (:mod:`xmmcore.sas_params`); an unknown
  parameter is a SAS error line and exit 1, as SAS does;
* the outputs are written under SAS's real product names (``P<obsid>M1U002MIEVLI0000.FIT`` from
  emchain, ``<prefix>-allevc.fits`` from espfilt, ``<prefix>-bkgregtdet.fits`` from cheese, ...) with
  real content where the pipeline reads it: evselect applies the selection terms the backend writes
  (PATTERN, PI range, FLAG masks, circle/annulus regions, gti()) and bins light curves, spectra and
  images; backscale computes the region area; rmfgen/arfgen write EPIC-like responses;
* ``XMM_STUB_FAIL="task[:text]"`` makes ``task`` print ``** task: error (StubFailure) ...`` and exit 1
  when the working directory contains ``text`` (an ObsID), to test that a failure stays with its ObsID;
* ``emchain``/``epchain`` copy the event lists found in ``$XMM_STUB_EVENTS/<obsid>/<camera>.fits``.

Each call appends ``{"task", "argv", "cwd"}`` to ``$XMM_STUB_LOG`` (JSON lines) when it is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from xmmcore.sas_params import unknown_params

RELEASE = "22.1.0-stub-20260101"
_CAM = {"M1": "mos1", "M2": "mos2", "PN": "pn"}


def _say(task: str, text: str) -> None:
    print(f"{task}:- {text}", flush=True)


def _fail(task: str, code: str, msg: str) -> None:
    print(f"** {task}: error ({code}), {msg}", flush=True)
    sys.exit(1)


def _params(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv:
        name, _sep, value = arg.partition("=")
        out[name] = value
    return out


def _yes(value: str | None) -> bool:
    return str(value).lower() in ("yes", "true", "y", "t")


def _path(value: str) -> Path:
    return Path(value.split("[", 1)[0]) if value else Path("")


def _write(hdus: list, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)


# ---------------------------------------------------------------------------------------- selection
_TERM_PATTERN = re.compile(r"^\(PATTERN(<=|==)(\d+)\)$")
_TERM_PI = re.compile(r"^\(PI in \[(\d+):(\d+)\]\)$")
_TERM_PIRANGE = re.compile(r"^\(PI>(\d+)&&PI<(\d+)\)$")
_TERM_FLAGMASK = re.compile(r"^\(\(FLAG & 0x([0-9a-fA-F]+)\)==0\)$")
_TERM_CIRCLE = re.compile(r"^(!?)\(\((X|DETX),(Y|DETY)\) IN circle\(([-\d.]+),([-\d.]+),([-\d.]+)\)\)$")
_TERM_ANNULUS = re.compile(
    r"^\(\((X|DETX),(Y|DETY)\) IN annulus\(([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)\)\)$"
)
_TERM_GTI = re.compile(r"^gti\(([^,]+),TIME\)$", re.IGNORECASE)
_TERM_RATE = re.compile(r"^RATE<=([-\d.eE+]+)$")
_XMMEA = {"#XMMEA_EM": 0x766BA000, "#XMMEA_EP": 0xFA000C, "(FLAG==0)": 0xFFFFFFFF}


def _split_terms(expr: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if depth == 0 and expr[i : i + 2] == "&&":
            terms.append(cur)
            cur = ""
            i += 2
            continue
        cur += ch
        i += 1
    if cur:
        terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def _select(data, expr: str) -> np.ndarray:
    """Rows of the EVENTS ``data`` passing ``expr`` (the terms the backend writes; others are ignored)."""
    keep = np.ones(len(data), bool)
    for term in _split_terms(expr or ""):
        if term in _XMMEA:
            keep &= (np.asarray(data["FLAG"]) & _XMMEA[term]) == 0
        elif m := _TERM_PATTERN.match(term):
            p = np.asarray(data["PATTERN"])
            keep &= (p <= int(m.group(2))) if m.group(1) == "<=" else (p == int(m.group(2)))
        elif m := _TERM_PI.match(term):
            pi = np.asarray(data["PI"])
            keep &= (pi >= int(m.group(1))) & (pi <= int(m.group(2)))
        elif m := _TERM_PIRANGE.match(term):
            pi = np.asarray(data["PI"])
            keep &= (pi > int(m.group(1))) & (pi < int(m.group(2)))
        elif m := _TERM_FLAGMASK.match(term):
            keep &= (np.asarray(data["FLAG"]) & int(m.group(1), 16)) == 0
        elif m := _TERM_CIRCLE.match(term):
            x, y = np.asarray(data[m.group(2)], float), np.asarray(data[m.group(3)], float)
            cx, cy, r = (float(m.group(i)) for i in (4, 5, 6))
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
            keep &= ~inside if m.group(1) else inside
        elif m := _TERM_ANNULUS.match(term):
            x, y = np.asarray(data[m.group(1)], float), np.asarray(data[m.group(2)], float)
            cx, cy, r0, r1 = (float(m.group(i)) for i in (3, 4, 5, 6))
            d2 = (x - cx) ** 2 + (y - cy) ** 2
            keep &= (d2 >= r0**2) & (d2 <= r1**2)
        elif m := _TERM_GTI.match(term):
            with fits.open(m.group(1)) as g:
                gti = g[1].data
                t = np.asarray(data["TIME"])
                ok = np.zeros(len(t), bool)
                for start, stop in zip(gti["START"], gti["STOP"], strict=True):
                    ok |= (t >= start) & (t < stop)
            keep &= ok
        elif term.startswith("(") and "CCDNR" in term:
            ccds = [int(c) for c in re.findall(r"CCDNR==(\d+)", term)]
            keep &= np.isin(np.asarray(data["CCDNR"]), ccds)
    return keep


def _area(expr: str) -> float:
    """Area [sky pixel^2] of the circle/annulus terms of ``expr``, minus excluded circles."""
    area = 0.0
    for term in _split_terms(expr or ""):
        if m := _TERM_CIRCLE.match(term):
            a = np.pi * float(m.group(6)) ** 2
            area += -a if m.group(1) else a
        elif m := _TERM_ANNULUS.match(term):
            area += np.pi * (float(m.group(6)) ** 2 - float(m.group(5)) ** 2)
    return max(area, 1.0)


def _exposure(hdul) -> float:
    gti = [h for h in hdul if h.name.startswith("STDGTI")]
    if gti:
        g = gti[0].data
        return float(np.sum(np.asarray(g["STOP"]) - np.asarray(g["START"])))
    hdr = hdul["EVENTS"].header
    return float(hdr.get("ONTIME", hdr.get("TSTOP", 1.0) - hdr.get("TSTART", 0.0)))


def _instrument(hdr) -> str:
    return {"EMOS1": "mos1", "EMOS2": "mos2", "EPN": "pn"}.get(str(hdr.get("INSTRUME")), "mos1")


# -------------------------------------------------------------------------------------------- tasks
def evselect(p: dict[str, str]) -> None:
    table = _path(p["table"])
    with fits.open(table) as hdul:
        events = hdul["EVENTS"]
        keep = _select(events.data, p.get("expression", ""))
        data = events.data[keep]
        hdr = events.header
        if _yes(p.get("withfilteredset")):
            out = fits.HDUList([h.copy() for h in hdul])
            out["EVENTS"].data = data
            out["EVENTS"].header["XPROC0"] = "evselect " + " ".join(f"{k}={v}" for k, v in p.items())
            path = Path(p["filteredset"])
            path.parent.mkdir(parents=True, exist_ok=True)
            out.writeto(path, overwrite=True)
        if _yes(p.get("withrateset")):
            t = np.asarray(data["TIME"])
            width = float(p.get("timebinsize", 100))
            t0, t1 = (
                float(hdr.get("TSTART", t.min() if t.size else 0)),
                float(hdr.get("TSTOP", t.max() + 1 if t.size else 1)),
            )
            edges = np.arange(t0, t1 + width, width)
            counts, _ = np.histogram(t, edges)
            cols = [
                fits.Column(name="TIME", format="D", array=edges[:-1] + width / 2),
                fits.Column(name="RATE", format="E", array=counts / width),
                fits.Column(name="ERROR", format="E", array=np.sqrt(counts) / width),
            ]
            _write([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="RATE")], Path(p["rateset"]))
        if _yes(p.get("withspectrumset")):
            binsize = int(p.get("spectralbinsize", 15))
            nchan = (int(p.get("specchannelmax", 11999)) + 1) // binsize
            chan = np.clip(np.asarray(data["PI"]) // binsize, 0, nchan - 1)
            counts = np.bincount(chan, minlength=nchan)
            cols = [
                fits.Column(name="CHANNEL", format="J", array=np.arange(nchan)),
                fits.Column(name="COUNTS", format="J", array=counts),
            ]
            spec = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
            h = spec.header
            h.update(
                TELESCOP="XMM",
                INSTRUME=hdr.get("INSTRUME"),
                FILTER="Thin1",
                EXPOSURE=_exposure(hdul),
                BACKSCAL=1.0,
                AREASCAL=1.0,
                CORRSCAL=1.0,
                POISSERR=True,
                HDUCLASS="OGIP",
                HDUCLAS1="SPECTRUM",
                HDUVERS="1.2.1",
                CHANTYPE="PI",
                DETCHANS=nchan,
                OBS_ID=hdr.get("OBS_ID", ""),
                RESPFILE="none",
                ANCRFILE="none",
                BACKFILE="none",
                CORRFILE="none",
            )
            h["DSTYP1"], h["DSVAL1"] = "PATTERN", "0:12"
            h["DSTYP2"], h["DSVAL2"], h["DSFORM2"] = "POS(X,Y)", "stub", "sky"
            h["STUBEXPR"] = p.get("expression", "")[:60]
            spec.header.add_history("SELEXPR " + p.get("expression", ""))
            _write([fits.PrimaryHDU(), spec], Path(p["spectrumset"]))
            Path(p["spectrumset"] + ".expr").write_text(p.get("expression", ""))
        if _yes(p.get("withimageset")):
            x, y = (
                np.asarray(data[p.get("xcolumn", "X")], float),
                np.asarray(data[p.get("ycolumn", "Y")], float),
            )
            b = float(p.get("ximagebinsize", 80))
            img, _, _ = (
                np.histogram2d(
                    y, x, bins=[np.arange(y.min(), y.max() + b, b), np.arange(x.min(), x.max() + b, b)]
                )
                if x.size
                else (np.zeros((1, 1)), 0, 0)
            )
            _write([fits.PrimaryHDU(img.astype(np.float32))], Path(p["imageset"]))
    _say("evselect", f"selected {int(keep.sum())} of {len(keep)} rows")


def tabgtigen(p: dict[str, str]) -> None:
    with fits.open(_path(p["table"])) as hdul:
        rate = hdul["RATE"].data
        m = _TERM_RATE.match(p["expression"].replace(" ", ""))
        good = np.asarray(rate["RATE"]) <= (float(m.group(1)) if m else np.inf)
        t = np.asarray(rate["TIME"])
        width = float(np.median(np.diff(t))) if t.size > 1 else 100.0
    starts, stops = [], []
    for ti, g in zip(t, good, strict=True):
        if g and stops and abs(stops[-1] - (ti - width / 2)) < 1e-6:
            stops[-1] = ti + width / 2
        elif g:
            starts.append(ti - width / 2)
            stops.append(ti + width / 2)
    cols = [
        fits.Column(name="START", format="D", array=starts),
        fits.Column(name="STOP", format="D", array=stops),
    ]
    _write([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="STDGTI")], Path(p["gtiset"]))


def _dss_region(hdul) -> list | None:
    """SHAPE/R rows of the spectrum's DSS region table (``DSTYPn = 'POS(X,Y)'`` -> ``DSREFn``), if any."""
    hdr = hdul["SPECTRUM"].header
    for key, value in hdr.items():
        if key.startswith("DSTYP") and str(value).startswith("POS("):
            ref = str(hdr.get("DSREF" + key[5:], "")).lstrip(":")
            if ref in hdul:
                return [(str(r["SHAPE"]).strip(), float(r["R"])) for r in hdul[ref].data]
    return None


def backscale(p: dict[str, str]) -> None:
    path = Path(p["spectrumset"])
    with fits.open(path, mode="update") as hdul:
        rows = _dss_region(hdul)
        if rows is not None:  # a spectrum with evselect's DSS (Python backend): area from its region table
            area = sum((-1 if shape.startswith("!") else 1) * np.pi * r**2 for shape, r in rows)
        else:
            sidecar = Path(str(path) + ".expr")
            area = _area(sidecar.read_text() if sidecar.exists() else "")
        hdul["SPECTRUM"].header["BACKSCAL"] = max(float(area), 1.0)


def _need_dss(task: str, spectrum: Path) -> None:
    with fits.open(spectrum) as hdul:
        stub_made = "STUBEXPR" in hdul["SPECTRUM"].header
        if not stub_made and _dss_region(hdul) is None:
            _fail(task, "NoRegionDSS", f"{spectrum} has no POS(X,Y) data-subspace region: cannot model it")


def _spectrum_camera(path: Path) -> str:
    with fits.open(path) as hdul:
        return {"EMOS1": "mos1", "EMOS2": "mos2", "EPN": "pn"}.get(
            str(hdul["SPECTRUM"].header.get("INSTRUME")), "mos1"
        )


def rmfgen(p: dict[str, str]) -> None:
    from xmmcore.ogip import write_rmf
    from xmmcore.responses import make_rmf

    _need_dss("rmfgen", Path(p["spectrumset"]))
    write_rmf(make_rmf(_spectrum_camera(Path(p["spectrumset"]))), Path(p["rmfset"]))


def arfgen(p: dict[str, str]) -> None:
    from xmmcore.ogip import write_arf
    from xmmcore.responses import make_arf

    if p.get("detmaptype") == "dataset" and not Path(p.get("detmaparray", "")).exists():
        _fail("arfgen", "NoDetMap", f"detector map {p.get('detmaparray')} not found")
    _need_dss("arfgen", Path(p["spectrumset"]))
    write_arf(make_arf(_spectrum_camera(Path(p["spectrumset"]))), Path(p["arfset"]))


def specgroup(p: dict[str, str]) -> None:
    src, out = Path(p["spectrumset"]), Path(p["groupedset"])
    with fits.open(src) as hdul:
        spec = hdul["SPECTRUM"]
        counts = np.asarray(spec.data["COUNTS"])
        grouping = np.ones(counts.size, np.int16)
        if _yes(p.get("withCounts")):
            need, acc = int(p.get("mincounts", 1)), 0
            for i, c in enumerate(counts):
                grouping[i] = 1 if acc == 0 else -1
                acc = 0 if acc + c >= need else acc + c
        cols = spec.columns + fits.ColDefs([fits.Column(name="GROUPING", format="I", array=grouping)])
        new = fits.BinTableHDU.from_columns(cols, header=spec.header, name="SPECTRUM")
        if _yes(p.get("withrmfset")):
            new.header["RESPFILE"] = Path(p["rmfset"]).name
        if _yes(p.get("witharfset")):
            new.header["ANCRFILE"] = Path(p["arfset"]).name
        if _yes(p.get("withbgdset")):
            new.header["BACKFILE"] = Path(p["backgndset"]).name
        _write([fits.PrimaryHDU(), new], out)


def cifbuild(p: dict[str, str]) -> None:
    cols = [
        fits.Column(name="SCOPE", format="4A", array=["XMM"]),
        fits.Column(name="TYPEID", format="20A", array=["STUB"]),
    ]
    _write(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="CALINDEX")],
        Path(p.get("calindexset", "ccf.cif")),
    )


def _sum_file(odf: str) -> Path:
    path = Path(odf)
    if path.is_dir():
        found = sorted(path.glob("*SUM.SAS"))
        if not found:
            _fail("odfingest", "NoSummaryFile", f"no *SUM.SAS in {path}")
        return found[0]
    return path


def odfingest(p: dict[str, str]) -> None:
    src = _sum_file(p.get("odfdir") or os.environ["SAS_ODF"])
    odfdir = str(Path(p.get("odfdir") or src.parent))
    lines = src.read_text(errors="replace").splitlines()
    text = "\n".join(f"PATH {odfdir}" if ln.startswith("PATH ") else ln for ln in lines) + "\n"
    out = Path(p.get("outdir", ".")) / src.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _chain(task: str, p: dict[str, str], cameras: tuple[str, ...], code: str) -> None:
    from xmmcore.observation import read_odf_summary

    summary = read_odf_summary(_sum_file(os.environ["SAS_ODF"]))
    source = Path(os.environ.get("XMM_STUB_EVENTS", "/nonexistent")) / str(summary.obsid)
    made = 0
    for cam in cameras:
        exp = summary.main_exposure(cam)
        src = source / f"{cam}.fits"
        if exp is None or not src.exists():
            continue
        tag = {"pn": "PN", "mos1": "M1", "mos2": "M2"}[cam]
        shutil.copyfile(src, Path.cwd() / f"P{summary.obsid}{tag}{exp}{code}0000.FIT")
        made += 1
    cols = [fits.Column(name="TIME", format="D", array=[0.0, 1.0])]
    _write(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="ATTHK")],
        Path.cwd() / f"P{summary.obsid}OBX000ATTTSR0000.FIT",
    )
    if not made:
        _fail(task, "NoExposure", f"no exposure of {', '.join(cameras)} to process in {summary.path}")


def emchain(p: dict[str, str]) -> None:
    _chain("emchain", p, ("mos1", "mos2"), "MIEVLI")


def epchain(p: dict[str, str]) -> None:
    _chain("epchain", p, ("pn",), "OOEVLI" if _yes(p.get("withoutoftime")) else "PIEVLI")


def _copy_events(src: str, dest: Path) -> None:
    shutil.copyfile(Path(src).resolve(), dest)


def espfilt(p: dict[str, str]) -> None:
    evt = Path(p["eventfile"])
    with fits.open(evt) as hdul:
        hdr = hdul["EVENTS"].header
        inst = {"EMOS1": "mos1", "EMOS2": "mos2", "EPN": "pn"}[str(hdr.get("INSTRUME"))]
        prefix = f"{inst}{hdr.get('EXPIDSTR', 'S001')}"
        t0, t1 = float(hdr.get("TSTART", 0.0)), float(hdr.get("TSTOP", 1.0))
    cols = [
        fits.Column(name="START", format="D", array=[t0]),
        fits.Column(name="STOP", format="D", array=[t1]),
    ]
    _write(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="STDGTI")], Path(f"{prefix}-gti.fits")
    )
    _copy_events(str(evt), Path(f"{prefix}-allevc.fits"))
    if _yes(p.get("withoot")):
        _copy_events(p["ootfile"], Path(f"{prefix}-allevcoot.fits"))


def cheese(p: dict[str, str]) -> None:
    evt = next(v for k, v in p.items() if k.endswith("file") and k != "pnootfile")
    prefix = Path(evt).name.split("-", 1)[0]
    if not Path("atthk.fits").exists():
        _fail("cheese", "NoAttitude", "atthk.fits not found and atthkgen not available")
    for name in ("bkgregtdet", "bkgregtsky"):
        cols = [fits.Column(name="SHAPE", format="16A", array=["CIRCLE"])]
        _write(
            [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="REGION")],
            Path(f"{prefix}-{name}.fits"),
        )


def _esas_spectra(p: dict[str, str]) -> None:
    evt = Path(p["eventfile"])
    prefix = evt.name.split("-", 1)[0]
    region = Path(p.get("regionfile", "")).read_text().strip().lstrip("&") if p.get("regionfile") else ""
    fake = {
        "table": str(evt),
        "withspectrumset": "yes",
        "spectrumset": f"{prefix}-fovt.pi",
        "expression": region,
    }
    cam = "pn" if prefix.startswith("pn") else "mos"
    fake.update(
        spectralbinsize="5" if cam == "pn" else "15", specchannelmax="20479" if cam == "pn" else "11999"
    )
    evselect(fake)
    if cam == "pn":
        shutil.copyfile(f"{prefix}-fovt.pi", f"{prefix}-fovtoot.pi")
    rmfgen({"spectrumset": f"{prefix}-fovt.pi", "rmfset": f"{prefix}.rmf"})
    arfgen({"spectrumset": f"{prefix}-fovt.pi", "arfset": f"{prefix}.arf"})


def mosspectra(p: dict[str, str]) -> None:
    _esas_spectra(p)


def pnspectra(p: dict[str, str]) -> None:
    _esas_spectra(p)


def _esas_back(p: dict[str, str]) -> None:
    spec = Path(p["inspecfile"])
    prefix = spec.name.split("-", 1)[0]
    with fits.open(spec) as hdul:
        hdul["SPECTRUM"].data["COUNTS"] = np.asarray(hdul["SPECTRUM"].data["COUNTS"]) // 10
        hdul.writeto(f"{prefix}-bkg.pi", overwrite=True)


def mosback(p: dict[str, str]) -> None:
    _esas_back(p)


def pnback(p: dict[str, str]) -> None:
    _esas_back(p)


def atthkgen(p: dict[str, str]) -> None:
    cols = [fits.Column(name="TIME", format="D", array=[0.0, 1.0])]
    _write([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="ATTHK")], Path(p["atthkset"]))


def eexpmap(p: dict[str, str]) -> None:
    with fits.open(p["imageset"]) as hdul:
        _write([fits.PrimaryHDU(np.ones_like(hdul[0].data))], Path(p["expimageset"]))


def emosaic(p: dict[str, str]) -> None:
    first = p["imagesets"].split()[0]
    shutil.copyfile(first, p["mosaicedset"])


def sasversion(p: dict[str, str]) -> None:
    print(
        f"sasversion:- XMM-Newton SAS release and build information:\n\nSAS release: {RELEASE}\nPlatform   : stub\n"
    )
    print(f"SAS_DIR = {os.environ.get('SAS_DIR', '')}")


def main(argv: list[str]) -> int:
    task, args = Path(argv[1]).name, argv[2:]
    if os.environ.get("XMM_STUB_LOG"):
        with open(os.environ["XMM_STUB_LOG"], "a") as log:
            log.write(json.dumps({"task": task, "argv": [task, *args], "cwd": os.getcwd()}) + "\n")
    _say(task, f"Executing (routine): {task} {' '.join(args)}")
    print(f"{task}:- {task} ({task}-0.0.0-stub) [{RELEASE}] started:  2026-01-01T00:00:00.000", flush=True)
    problems = unknown_params([task, *args])
    if problems:
        _fail(task, "InvalidParameter", "; ".join(problems))
    fail = os.environ.get("XMM_STUB_FAIL", "")
    for rule in filter(None, fail.split(",")):
        name, _sep, where = rule.partition(":")
        if name == task and (not where or where in os.getcwd()):
            _fail(task, "StubFailure", f"{task} failed on purpose in {os.getcwd()}")
    globals()[task](_params(args))
    print(f"{task}:- {task} ({task}-0.0.0-stub) [{RELEASE}] ended:    2026-01-01T00:00:01.000", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
