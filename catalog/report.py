"""Static HTML survey report: opens from disk without a server (relative links only, no scripts, no CDN).

Layout (``results/report/``)::

    index.html            summary, survey figures, catalogue table, failures, multi-observation section
    img/*.png             survey figures (and mosaics)
    obs/<obsid>.html      per-ObsID page: metadata, cameras, fit, light curves, image + regions, spectrum + fit

    obs/<obsid>/*.png     copies of results/<obsid>/plots/ (light curves, image + regions, spectrum + fit)
    data/catalogue.*      copies of the catalogue (Parquet, FITS)

Every link is relative and every file it points to is inside the folder, so ``report/`` can be copied,
zipped or mailed on its own.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xmmcore.fsutil import atomic_path, atomic_write_text
from xmmcore.observation import CAMERAS
from xmmcore.products import ObsProducts, SurveyLayout

from . import build, load
from .query import failures, science_rows

__all__ = ["build_report", "mosaic_figure"]

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #3465a4;padding-bottom:.1em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}
th{background:#dde6f3} td.l,th.l{text-align:left} tr:nth-child(even){background:#f4f6fa}
.failed{color:#a40000;font-weight:bold} .done{color:#2e7d32;font-weight:bold} .partial{color:#c17d11;font-weight:bold}
.figs img{max-width:46%;margin:.4em;border:1px solid #ccc;vertical-align:top} .note{color:#555;font-size:.9em}
.stats{display:flex;gap:1.2em;flex-wrap:wrap} .stat{background:#3465a4;color:#fff;padding:.6em 1.1em;border-radius:6px}
.stat b{font-size:1.5em;display:block} code{background:#eee;padding:0 3px}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return "" if value == -1 else str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return ""
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _pm(row: pd.Series, col: str) -> str:
    v = row.get(col, np.nan)
    if not isinstance(v, (float, np.floating)) or not math.isfinite(v):
        return ""
    lo, hi = float(row.get(f"{col}_err_lo", np.nan)), float(row.get(f"{col}_err_hi", np.nan))
    text = _fmt(v)
    if math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi > 0):
        text += f" <sub>-{_fmt(lo, 2)}</sub><sup>+{_fmt(hi, 2)}</sup>"
    elif row.get(f"{col}_frozen", False):
        text += " (frozen)"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _status(s: str) -> str:
    return f'<span class="{html.escape(s)}">{html.escape(s)}</span>'


def _mosaic_png(rec: dict[str, Any], results_dir: Path, out_dir: Path) -> str | None:
    """Render the mosaic FITS of a multi-observation record (``xmmcore.stack.mosaic_observations``) as a PNG."""
    if not rec.get("mosaic_fits"):
        return None
    from xmmcore.stack import read_mosaic

    name = str(rec.get("name") or "mosaic")
    path = Path(str(rec["mosaic_fits"]))
    if not path.exists():  # results folder moved since: the mosaic sits beside the record
        path = SurveyLayout(results_dir).joint_dir / path.name
    m = read_mosaic(path)
    png = mosaic_figure(
        m,
        out_dir / "img" / f"mosaic_{name}.png",
        title=f"{name}: {rec.get('n_obsids', '?')} ObsIDs x {len(m.inputs)} event lists, "
        f"{m.band_kev[0]:g}-{m.band_kev[1]:g} keV",
    )
    return os.path.relpath(png, out_dir)


def mosaic_figure(m: Any, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """PNG of a :class:`xmmcore.stack.Mosaic` rate image (Gaussian-smoothed, log stretch, RA/Dec axes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    sm_c = gaussian_filter(m.counts, 1.5)
    sm_e = gaussian_filter(m.exposure, 1.5)
    rate = np.where(sm_e > 0.05 * sm_e.max(), sm_c / np.maximum(sm_e, 1e-9), np.nan)
    fig = plt.figure(figsize=(6, 5.4))
    ax = fig.add_subplot(111, projection=m.wcs)
    finite = rate[np.isfinite(rate) & (rate > 0)]
    vmin, vmax = (np.percentile(finite, 5), np.percentile(finite, 99.9)) if finite.size else (1e-9, 1)
    im = ax.imshow(
        np.log10(np.clip(rate, vmin, None)),
        origin="lower",
        cmap="magma",
        vmin=np.log10(vmin),
        vmax=np.log10(vmax),
    )
    ax.set_xlabel("RA")
    ax.set_ylabel("Dec")
    ax.set_title(title or f"mosaic {m.band_kev[0]}-{m.band_kev[1]} keV, {len(m.inputs)} event lists")
    fig.colorbar(im, ax=ax, label="log10 rate [count/s/pixel]")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _catalogue(results_dir: Path) -> pd.DataFrame:
    if SurveyLayout(results_dir).catalogue_parquet.exists():
        return load(SurveyLayout(results_dir).catalogue_parquet)
    return build(results_dir)


def _copy_into(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` atomically (the report keeps its own copies of figures and catalogue)."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def quality_notes(r: Any) -> list[str]:
    """Short flags a reader should see next to a row: failed/partial, fit not converged, low S/N,
    flare-dominated exposure, poor fit, masked point sources, and any ``quality_flags`` the catalogue has."""
    notes = []
    if getattr(r, "status", "done") != "done":
        notes.append(str(r.status))
    if getattr(r, "fit_model", "") and not bool(getattr(r, "converged", True)):
        notes.append("fit not converged")
    snr = getattr(r, "snr", math.nan)
    if isinstance(snr, (float, np.floating)) and math.isfinite(snr) and snr < 5:
        notes.append("S/N < 5")
    flare = getattr(r, "flare_fraction", math.nan)
    if isinstance(flare, (float, np.floating)) and math.isfinite(flare) and flare > 0.5:
        notes.append(f"flares removed {flare:.0%}")
    spd = getattr(r, "stat_per_dof", math.nan)
    if isinstance(spd, (float, np.floating)) and math.isfinite(spd) and spd > 1.5:
        notes.append("stat/dof > 1.5")
    n_pts = getattr(r, "n_ptsrc", None)
    if n_pts is not None and n_pts is not pd.NA and int(n_pts) > 0:
        notes.append(f"{int(n_pts)} pt src masked")
    extra = getattr(r, "quality_flags", "")
    if isinstance(extra, str) and extra:
        notes.append(extra)
    return notes


def _summary_rows(df: pd.DataFrame) -> list[list[str]]:
    out = []
    rows = df[(df["camera"] == "epic")]
    for _, r in rows.iterrows():
        link = (
            f'<a href="obs/{html.escape(r.obsid)}.html">{html.escape(r.obsid)}</a>'
            if r.kind == "obs"
            else html.escape(r.obsid)
        )
        out.append(
            [
                link,
                _fmt(r.target),
                html.escape(r.kind),
                _status(r.status),
                _fmt(r.exposure_s / 1e3),
                _fmt(r.net_counts),
                _fmt(r.snr),
                _pm(r, "kT"),
                _pm(r, "abund"),
                _pm(r, "nH"),
                _pm(r, "z"),
                _pm(r, "flux_0p5_2p0_abs"),
                _fmt(r.r_src_kpc),
                _pm(r, "lum_0p1_2p4"),
                f"{_fmt(r.r500_kpc)} ({html.escape(str(r.r500_source or '-'))})",
                _pm(r, "L500_0p1_2p4"),
                html.escape(str(r.quality_flags or "")),
                _fmt(r.stat_per_dof),
                _fmt(r.r_src_arcmin),
                html.escape(", ".join(quality_notes(r))),
            ]
        )
    return out


def _obs_page(df: pd.DataFrame, obsid: str, results_dir: Path, out_dir: Path) -> str:
    rows = df[(df["obsid"] == obsid) & (df["kind"] == "obs")]
    epic = rows[rows["camera"] == "epic"].iloc[0]
    order = {c: i for i, c in enumerate(CAMERAS)}
    cams = rows[rows["camera"] != "epic"].sort_values(
        "camera", key=lambda s: s.map(lambda c: order.get(c, 9))
    )
    parts = [
        f'<p><a href="../index.html">&larr; survey report</a></p><h1>ObsID {html.escape(obsid)}</h1>',
        (
            f"<p>Target <b>{_fmt(epic.target)}</b>, status {_status(epic.status)}"
            f"{' &mdash; steps done: ' + html.escape(epic.steps_done) if epic.steps_done else ''}</p>"
        ),
    ]
    flags = quality_notes(epic)
    parts.append(f"<p>Flags: {html.escape(', '.join(flags)) if flags else 'none'}</p>")
    if epic.status != "done":
        parts.append(
            f'<p class="failed">Failed step: {html.escape(epic.failed_step or "-")}; '
            f"{html.escape(epic.error_class)}: {html.escape(epic.failure_reason)}</p>"
        )
    parts.append(
        "<h2>Target and region</h2>"
        + _table(
            [
                "RA [deg]",
                "Dec [deg]",
                "z",
                "nH gal [1e22]",
                "centre RA",
                "centre Dec",
                "r_src [arcmin]",
                "bkg annulus [arcmin]",
                "point sources",
            ],
            [
                [
                    _fmt(epic.ra_deg, 7),
                    _fmt(epic.dec_deg, 6),
                    _fmt(epic.z_target),
                    _fmt(epic.nh_gal),
                    _fmt(epic.centre_ra, 7),
                    _fmt(epic.centre_dec, 6),
                    _fmt(epic.r_src_arcmin),
                    f"{_fmt(epic.bkg_inner_arcmin)}-{_fmt(epic.bkg_outer_arcmin)}",
                    _fmt(epic.n_ptsrc),
                ]
            ],
            left=0,
        )
    )
    if len(cams):
        parts.append(
            "<h2>Cameras</h2>"
            + _table(
                [
                    "camera",
                    "exposure [ks]",
                    "flare fraction",
                    "src counts",
                    "bkg counts",
                    "net counts",
                    "S/N",
                    "cross-norm",
                ],
                [
                    [
                        html.escape(c.camera),
                        _fmt(c.exposure_s / 1e3),
                        _fmt(c.flare_fraction),
                        _fmt(c.src_counts),
                        _fmt(c.bkg_counts),
                        _fmt(c.net_counts),
                        _fmt(c.snr),
                        _pm(c, "cross_norm"),
                    ]
                    for _, c in cams.iterrows()
                ],
            )
        )
    if epic.fit_model:
        params = [
            [p, _pm(epic, p), "frozen" if epic[f"{p}_frozen"] else ("linked" if epic[f"{p}_linked"] else "")]
            for p in ("kT", "abund", "nH", "z", "norm", "gamma")
            if math.isfinite(epic[p])
        ]
        parts.append(
            f"<h2>Fit</h2><p><code>{html.escape(epic.fit_model)}</code> with {html.escape(epic.fit_engine)}"
            f", {html.escape(epic.fit_stat)} = {_fmt(epic.statistic)} for {_fmt(epic.dof)} dof"
            f" (converged: {'yes' if epic.converged else 'no'})</p>"
            + _table(["parameter", "value", ""], params)
        )
    products = ObsProducts(results_dir / obsid)
    figs = []
    for label, paths in (
        ("Light curves", [products.lightcurve_plot(c) for c in CAMERAS]),
        ("Image and regions", [products.image_plot(c) for c in CAMERAS]),
        ("Spectra and fit", [products.fit_plot]),
    ):
        present = [
            (f"{obsid}/{_copy_into(p, out_dir / 'obs' / obsid / p.name).name}", p.name)
            for p in paths
            if p.exists()
        ]
        figs.append(f"<h2>{label}</h2>")
        if present:
            figs.append(
                '<div class="figs">'
                + "".join(
                    f'<a href="{html.escape(r)}"><img src="{html.escape(r)}" alt="{n}"></a>'
                    for r, n in present
                )
                + "</div>"
            )
        else:
            figs.append(
                f'<p class="note">not produced ({", ".join(p.name for p in paths)} absent in {obsid}/{products.rel(products.plots_dir)}/)</p>'
            )
    parts += figs
    parts.append(
        f'<h2>Provenance</h2><p class="note">config hash <code>{html.escape(epic.config_hash)}</code>, '
        f"inputs hash <code>{html.escape(epic.inputs_hash)}</code>, backend {html.escape(epic.backend)}, "
        f"{html.escape(epic.started_utc)} &ndash; {html.escape(epic.finished_utc)}, "
        f'wall {_fmt(epic.wall_s)} s</p><pre class="note">{html.escape(epic.software_versions)}</pre>'
    )
    return _page(f"ObsID {obsid}", "\n".join(parts))


def _joint_section(df: pd.DataFrame, results_dir: Path, out_dir: Path) -> str:
    parts = ["<h2>Multi-observation analysis</h2>"]
    jrows = df[df["is_joint"] & (df["camera"] == "epic")]
    if len(jrows):
        parts.append(
            _table(
                [
                    "target",
                    "kind",
                    "ObsIDs",
                    "kT [keV]",
                    "abundance [solar]",
                    "gamma",
                    "stat/dof",
                    "consistency p",
                ],
                [
                    [
                        html.escape(r.obsid),
                        html.escape(r.kind),
                        html.escape(r.obsids),
                        _pm(r, "kT"),
                        _pm(r, "abund"),
                        _pm(r, "gamma"),
                        _fmt(r.stat_per_dof),
                        _fmt(r.consistency_pvalue),
                    ]
                    for _, r in jrows.iterrows()
                ],
            )
        )
        per_ds = df[df["is_joint"] & (df["camera"] != "epic")]
        if len(per_ds):
            parts.append(
                "<p>Cross-normalisations of the joint fits:</p>"
                + _table(
                    ["target", "dataset", "constant"],
                    [
                        [html.escape(r.obsid), html.escape(r.camera), _pm(r, "cross_norm")]
                        for _, r in per_ds.iterrows()
                    ],
                )
            )
    for path in SurveyLayout(results_dir).joint_records():
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("missing"):
            parts.append(
                f'<p class="failed">{html.escape(rec.get("name", path.stem))}: joint spectral fit not run, '
                "inputs missing:</p><ul>"
                + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in rec["missing"])
                + "</ul>"
            )
        for note in rec.get("notes") or []:
            parts.append(f'<p class="note">{html.escape(str(note))}</p>')
        png = _mosaic_png(rec, results_dir, out_dir)
        if png:
            parts.append(f'<div class="figs"><img src="{html.escape(png)}" alt="mosaic"></div>')
    if len(parts) == 1:
        parts.append('<p class="note">No target with several ObsIDs was analysed jointly.</p>')
    return "\n".join(parts)


def _catalogue_links(results_dir: Path, out_dir: Path) -> str:
    """Copies of the catalogue inside the report (``data/``), linked relatively."""
    links = []
    for path in SurveyLayout(results_dir).catalogue_files:
        if path.exists():
            _copy_into(path, out_dir / "data" / path.name)
            links.append(f'<a href="data/{path.name}">{path.name}</a>')
    return " / ".join(links) if links else "the catalogue (not written yet: `xmm-survey catalog build`)"


def build_report(
    results_dir: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    df: pd.DataFrame | None = None,
) -> Path:
    """Write the static HTML report and return the path of ``index.html``.

    Parameters
    ----------
    results_dir : path-like
        Survey results folder.
    out_dir : path-like, optional
        Report folder (default ``results/report``); keep it inside ``results/`` so relative links work.
    df : pandas.DataFrame, optional
        Catalogue (default: ``results/catalogue.parquet``, else built from ``results/``).
    """
    from .plots import survey_figures

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else SurveyLayout(results_dir).report_dir
    if df is None:
        df = _catalogue(results_dir)
    figs = survey_figures(df, out_dir / "img")
    obs_epic = df[(df["kind"] == "obs") & (df["camera"] == "epic")]
    n_done = int((obs_epic["status"] == "done").sum())
    n_fail = int((obs_epic["status"] == "failed").sum())
    body = [
        "<h1>XMM-Newton survey report</h1>",
        (
            f'<p class="note">results: <code>{html.escape(str(results_dir.resolve()))}</code>; '
            f"catalogue schema {html.escape(str(df.attrs.get('schema_version', '')))}</p>"
        ),
        (
            '<div class="stats">'
            f'<div class="stat"><b>{len(obs_epic)}</b>ObsIDs</div>'
            f'<div class="stat"><b>{n_done}</b>done</div>'
            f'<div class="stat"><b>{n_fail}</b>failed</div>'
            f'<div class="stat"><b>{int((df["is_joint"] & (df["camera"] == "epic")).sum())}</b>joint/combined</div>'
            "</div>"
        ),
    ]
    fit = figs["lt_fit"]
    body.append("<h2>Survey figures</h2>")
    if fit is not None:
        body.append(
            f"<p>L-T (BCES {fit.method}, {fit.n} clusters): L<sub>0.1-2.4</sub>/10<sup>44</sup> = "
            f"10<sup>{fit.intercept:.2f}&plusmn;{fit.intercept_err:.2f}</sup> (kT/5 keV)<sup>"
            f"{fit.slope:.2f}&plusmn;{fit.slope_err:.2f}</sup>; scatter {fit.scatter_total:.3f} dex total, "
            f"{fit.scatter_intrinsic:.3f} dex intrinsic.</p>"
        )
    body.append(
        '<div class="figs">'
        + "".join(
            f'<img src="img/{Path(figs[k]).name}" alt="{k}">' for k in ("lt", "hist", "sky", "exposure_snr")
        )
        + "</div>"
    )
    body.append(
        "<h2>Catalogue</h2>"
        + _table(
            [
                "ObsID",
                "target",
                "kind",
                "status",
                "exp [ks]",
                "net counts",
                "S/N",
                "kT [keV]",
                "abundance [solar]",
                "nH [1e22]",
                "z",
                "F(0.5-2) [cgs]",
                "r_src [kpc]",
                "L(0.1-2.4) in r_src [erg/s]",
                "R500 [kpc] (source)",
                "L500(0.1-2.4) [erg/s]",
                "quality flags",
                "stat/dof",
                "R src [arcmin]",
                "flags",
            ],
            _summary_rows(df),
            left=3,
        )
    )
    fails = failures(df)
    body.append("<h2>Failures</h2>")
    if len(fails):
        body.append(
            _table(
                ["ObsID", "status", "step", "error", "reason"],
                [
                    [
                        f'<a href="obs/{html.escape(r.obsid)}.html">{html.escape(r.obsid)}</a>',
                        _status(r.status),
                        html.escape(r.failed_step),
                        html.escape(r.error_class),
                        html.escape(r.failure_reason),
                    ]
                    for _, r in fails.iterrows()
                ],
                left=5,
            )
        )
    else:
        body.append('<p class="note">none</p>')
    body.append(_joint_section(df, results_dir, out_dir))
    n_sci = len(science_rows(df))
    body.append(
        f'<p class="note">{n_sci} fitted rows; per-camera rows and all columns are in {_catalogue_links(results_dir, out_dir)}.</p>'
    )
    for obsid in obs_epic["obsid"]:
        atomic_write_text(out_dir / "obs" / f"{obsid}.html", _obs_page(df, obsid, results_dir, out_dir))
    return atomic_write_text(
        SurveyLayout(results_dir).report_index(out_dir), _page("XMM-Newton survey report", "\n".join(body))
    )
