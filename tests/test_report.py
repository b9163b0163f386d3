"""Survey figures (BCES L-T) and the static HTML report, rendered by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.catalog import make_obs

import catalog
from catalog import io as cio
from catalog import plots, report

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_bces_recovers_injected_relation() -> None:
    rng = np.random.default_rng(7)
    n = 300
    x = rng.normal(0.0, 0.25, n)
    y = 0.1 + 2.9 * x + rng.normal(0.0, 0.08, n)  # intrinsic scatter 0.08 dex
    ex = np.full(n, 0.03)
    ey = np.full(n, 0.04)
    fit = plots.bces(x + rng.normal(0, ex), y + rng.normal(0, ey), ex, ey, method="orthogonal", n_boot=400)
    assert abs(fit.slope - 2.9) < 3 * fit.slope_err + 0.05
    assert abs(fit.intercept - 0.1) < 3 * fit.intercept_err
    assert fit.scatter_intrinsic == pytest.approx(0.08, abs=0.03)
    assert fit.scatter_total > fit.scatter_intrinsic
    yx = plots.bces(x, y, np.zeros(n), np.zeros(n), method="y|x", n_boot=10)
    assert yx.slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-10)  # no errors: BCES(Y|X) is OLS


def _plot_png(path: Path, kind: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(4, 3))
    if kind == "lc":
        ax.step(np.arange(200) * 100, rng.poisson(20, 200) / 100)
        ax.set_xlabel("time [s]")
    elif kind == "img":
        yy, xx = np.mgrid[:64, :64]
        ax.imshow(rng.poisson(1 + 40 * np.exp(-((xx - 32) ** 2 + (yy - 30) ** 2) / 60)), origin="lower")
        ax.add_patch(plt.Circle((32, 30), 12, fill=False, color="w"))
    else:
        e = np.geomspace(0.5, 7, 100)
        ax.loglog(e, e**-1.5 * rng.uniform(0.8, 1.2, 100), ".")
        ax.loglog(e, e**-1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def figure_pngs(tmp_path_factory) -> dict[str, Path]:
    """One light curve, image and spectrum PNG, drawn once and linked into every ObsID."""
    root = tmp_path_factory.mktemp("pngs")
    out = {}
    for kind in ("lc", "img", "spec"):
        out[kind] = root / f"{kind}.png"
        _plot_png(out[kind], kind, 3)
    return out


@pytest.fixture()
def survey(tmp_path: Path, figure_pngs: dict[str, Path]) -> Path:
    results = tmp_path / "results"
    rng = np.random.default_rng(11)
    for i in range(8):
        kT = float(rng.uniform(1.5, 9))
        lum = 1e44 * (kT / 5.0) ** 2.9 * 10 ** rng.normal(0, 0.15)
        make_obs(
            results,
            f"01000{i:02d}0101",
            kT=kT,
            z=float(rng.uniform(0.05, 0.4)),
            seed=i + 1,
            fail_step="fit" if i == 5 else None,
            lum=lum,
        )
        if i != 5:
            plots_dir = results / f"01000{i:02d}0101" / "plots"
            plots_dir.mkdir(parents=True)
            for cam in ("pn", "mos1", "mos2"):
                shutil.copyfile(figure_pngs["lc"], plots_dir / f"{cam}_lightcurve.png")
                shutil.copyfile(figure_pngs["img"], plots_dir / f"{cam}_image.png")
            shutil.copyfile(figure_pngs["spec"], plots_dir / "spectrum_fit.png")
    cio.write_catalogue(catalog.build(results), results)
    return results


def test_report_files_and_links(survey: Path) -> None:
    index = report.build_report(survey)
    text = index.read_text()
    assert "01000050101" in text and "fit broke: no counts" in text
    assert "BCES orthogonal" in text
    for link in re.findall(r'(?:src|href)="([^"]+)"', text):
        assert not link.startswith(("http:", "https:", "/")), link
        assert (index.parent / link).exists(), link
    page = (index.parent / "obs" / "01000000101.html").read_text()
    for link in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert (index.parent / "obs" / link).exists(), link
    assert "mos1_lightcurve.png" in page and "spectrum_fit.png" in page
    failed = (index.parent / "obs" / "01000050101.html").read_text()
    assert "Failed step: fit" in failed and "not produced" in failed


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(survey: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run must install it)")
    index = report.build_report(survey)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_index.png"
    if shot.exists():
        shot.unlink()
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--hide-scrollbars",
        "--window-size=1280,1800",
        f"--screenshot={shot}",
        index.resolve().as_uri(),
    ]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path
    )
    assert shot.exists(), f"no screenshot; chromium exit {proc.returncode}: {proc.stderr[-2000:]}"
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert img.std() > 20, f"screenshot looks blank (pixel std {img.std():.1f})"
    # the figures are drawn: a good fraction of the page is neither white nor one flat colour
    assert (img < 200).mean() > 0.05


def test_lt_uses_one_point_per_cluster(survey: Path) -> None:
    from xmmcore.fitting import joint

    df = catalog.build(survey)
    n_obs = int(((df.kind == "obs") & (df.camera == "epic") & (df.status == "done")).sum())
    assert plots.fit_lt(df, n_boot=50).n == n_obs
    # a joint fit of two ObsIDs replaces their two points by one
    fit = {
        "model": "wabs*zbremss",
        "engine": "builtin",
        "stat": "cstat",
        "statistic": 900.0,
        "dof": 880,
        "converged": True,
        "parameters": [{"name": "zbremss_1.kT", "value": 5.0, "err_lo": 0.2, "err_hi": 0.2}],
        "luminosities": {"0.1-2.4": {"value": 1e44, "err_lo": 1e42, "err_hi": 1e42}},
    }
    inputs = [joint.JointInput(o, "pn", Path("x")) for o in ("01000000101", "01000010101")]
    joint.record_joint(survey, "CLJ", fit=fit, inputs=inputs)
    assert plots.fit_lt(catalog.build(survey), n_boot=50).n == n_obs - 1


def test_report_folder_is_self_contained(survey: Path, tmp_path: Path) -> None:
    """The report folder copied elsewhere (the results gone) still has every image and link it names;
    the catalogue table shows the aperture and the flags of each ObsID."""
    index = report.build_report(survey)
    moved = tmp_path / "mailed" / "report"
    shutil.copytree(index.parent, moved)
    shutil.rmtree(survey)
    pages = [moved / "index.html", *sorted((moved / "obs").glob("*.html"))]
    assert len(pages) == 9
    n_links = 0
    for page in pages:
        for link in re.findall(r'(?:src|href)="([^"]+)"', page.read_text()):
            assert not link.startswith(("http:", "https:", "/", "..")) or link == "../index.html", (
                page,
                link,
            )
            assert (page.parent / link).resolve().is_relative_to(moved.resolve()), (page, link)
            assert (page.parent / link).exists(), (page, link)
            n_links += 1
    assert n_links > 8 * 7 and (moved / "data" / "catalogue.fits").exists()
    text = (moved / "index.html").read_text()
    assert "R src [arcmin]" in text and "flags" in text and "pt src masked" in text
    assert "fit broke" in text  # the failed ObsID's reason


def test_log_axes_carry_plain_numbers_on_short_ranges() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog.plots import readable_log_axis

    fig, ax = plt.subplots()
    ax.loglog([2.0, 9.0], [15.0, 40.0])
    readable_log_axis(ax)
    fig.canvas.draw()
    xt = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    yt = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert "2" in xt and "5" in xt and all("times" not in t and "^" not in t for t in xt + yt), (xt, yt)
    assert "20" in yt
    fig2, ax2 = plt.subplots()
    ax2.loglog([1e-3, 10.0], [1.0, 2.0])
    readable_log_axis(ax2, "x")  # five decades: powers of ten stay
    fig2.canvas.draw()
    assert any("10^" in t.get_text() for t in ax2.get_xticklabels())
    plt.close("all")
