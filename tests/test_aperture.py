"""Beta-model profile fit, L500 from the aperture luminosity, quality flags, R500 relation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from xmmcore import aperture as A
from xmmcore import profile as P
from xmmcore import simulate as S


@pytest.mark.parametrize(("rc", "beta"), [(0.2, 0.62), (0.6, 0.7), (2.0, 0.8)])  # cool, regular, flat core
def test_beta_profile_recovers_core_radius_and_slope(rc, beta):
    pix = 4.0 / 60.0
    n = 300
    r = P.pixel_radii((n, n), (n / 2, n / 2), pix)
    s0_pix, bkg_pix = 30.0, 0.2  # counts per pixel
    mu = s0_pix * (1 + (r / rc) ** 2) ** (0.5 - 3 * beta) + bkg_pix
    img = np.random.default_rng(3).poisson(mu).astype(float)
    weight = np.ones_like(img)
    weight[:, 140:146] = 0.0  # a chip gap through the centre
    prof = P.fit_beta_profile(img, radii_arcmin=r, weight=weight, pixel_arcmin=pix, r_max_arcmin=9.5)
    assert prof.rc_arcmin == pytest.approx(rc, rel=0.2)
    assert prof.beta == pytest.approx(beta, rel=0.1)
    assert prof.bkg_per_arcmin2 == pytest.approx(bkg_pix / pix**2, rel=0.1)
    # the closed-form fractions agree with the simulator's truncated-beta bookkeeping
    assert prof.fraction_ratio(3.0, 1.0) == pytest.approx(
        S.beta_fraction(3.0, prof.rc_arcmin, prof.beta, 1e6)
        / S.beta_fraction(1.0, prof.rc_arcmin, prof.beta, 1e6)
    )


@pytest.mark.parametrize(("rc", "beta"), [(0.25, 0.66), (3.4, 0.82)])  # cool core; flat core at low z
def test_beta_profile_with_vignetting_and_two_backgrounds(rc, beta):
    """Cluster and sky background seen through the vignetting, particles not (the counts of a real image):
    the old single flat background term took the vignetted sky's fall-off for cluster emission."""
    from xmmcore.responses import vignetting

    pix = 8.0 / 60.0
    n = 230
    r = P.pixel_radii((n, n), (n / 2, n / 2), pix)
    vig = vignetting(r, 1.2)
    s0, sky, part = (40.0 if rc < 1 else 4.0), 0.25, 0.05  # counts per pixel on axis
    mu = vig * (s0 * (1 + (r / rc) ** 2) ** (0.5 - 3 * beta) + sky) + part
    img = np.random.default_rng(5).poisson(mu).astype(float)
    weight = (r < 14.0).astype(float)
    prof = P.fit_beta_profile(
        img, radii_arcmin=r, weight=weight, pixel_arcmin=pix, r_max_arcmin=14.0, vignetting=vig
    )
    # rc and beta of a flat core are degenerate within a 14' field; the fluxes that L500 uses are not
    assert prof.beta == pytest.approx(beta, rel=0.2)
    truth = P.BetaProfile(rc, beta, s0 / pix**2, sky / pix**2, 14.0, 40, True)
    for r_to in (3.0, 8.0, 12.0):
        assert prof.flux_within(r_to) / truth.flux_within(r_to) == pytest.approx(1.0, abs=0.12)
    flat = P.fit_beta_profile(img, radii_arcmin=r, weight=weight, pixel_arcmin=pix, r_max_arcmin=14.0)
    # what the regions step did before: the vignetted sky's fall-off taken for cluster emission
    assert flat.flux_within(12.0) / truth.flux_within(12.0) > 1.15


def test_r500_relation_is_the_simulators():
    for kt, z in ((2.0, 0.05), (5.0, 0.2), (9.0, 0.4)):
        assert A.r500_kpc(kt, z) == pytest.approx(S._r500_kpc(kt, z))
    assert A.r500_kpc(5.0, 0.0) == pytest.approx(1104.0)
    assert "E(z)" in S.R500_RELATION and "Arnaud" in S.R500_RELATION


def _l500_regions(lost: float, oversubtraction: float, **extra: float):
    """A beta profile (rc 0.3', beta 0.67) and the regions summary of a 2' aperture that l500_block reads."""
    prof = P.BetaProfile(0.3, 0.67, 100.0, 1.0, 12.0, 30, True)
    regions = {
        "profile": prof.to_dict(),
        "r_src_arcmin": 2.0,
        "aperture_lost_fraction": lost,
        "bkg_oversubtraction": oversubtraction,
        **extra,
    }
    return prof, regions


def test_l500_scales_the_aperture_luminosity():
    prof, regions = _l500_regions(0.1, 0.05)
    lums = {
        "0.1-2.4": {"band_kev": [0.1, 2.4], "value": 1e44, "err_lo": 1e42, "err_hi": 2e42},
        "0.5-2.0": {"band_kev": [0.5, 2.0], "value": 6e43, "err_lo": 1e42, "err_hi": 1e42},
    }
    out = A.l500_block(lums, regions, r500_arcmin=4.0)
    ratio = prof.flux_within(4.0) / prof.flux_within(2.0)
    assert out["l500_over_aperture"] == pytest.approx(ratio) and ratio > 1
    assert out["L500_0p1_2p4"] == pytest.approx(1e44 * ratio / (0.9 * 0.95))
    assert out["L500_0p1_2p4_err_hi"] == pytest.approx(2e42 * ratio / (0.9 * 0.95))
    assert out["L500_0p5_2p0"] == pytest.approx(6e43 * ratio / (0.9 * 0.95))
    assert math.isnan(A.l500_block(lums, {}, r500_arcmin=4.0)["L500_0p1_2p4"])
    # an on-axis ARF misses the aperture's vignetting: divided out only when told so
    vig = A.l500_block(lums, {**regions, "aperture_vignetting": 0.8}, r500_arcmin=4.0, arf_on_axis=True)
    assert vig["L500_0p1_2p4"] == pytest.approx(out["L500_0p1_2p4"] / 0.8)
    assert A.l500_block(lums, {**regions, "aperture_vignetting": 0.8}, r500_arcmin=4.0)[
        "L500_0p1_2p4"
    ] == pytest.approx(out["L500_0p1_2p4"])


def test_quality_flags():
    fit = {
        "converged": False,
        "error_method": "covariance",
        "parameters": [
            {"name": "apec_1.kT", "value": 64.0, "err_lo": 40.0, "err_hi": 40.0, "min": 0.08, "max": 64.0},
            {"name": "apec_1.norm", "value": 2e-3, "err_lo": 1e-4, "err_hi": 1e-4, "min": 0.0, "max": 1e24},
            {"name": "apec_1.Abundanc", "value": 0.3, "frozen": True, "min": 0.0, "max": 5.0},
            {
                "name": "constant_1.factor",
                "value": 1.0,
                "err_lo": 9.0,
                "err_hi": 9.0,
                "min": 1e-3,
                "max": 1e3,
            },
        ],
    }
    regions = {"bkg_cluster_fraction": 0.2, "aperture_lost_fraction": 0.02}
    f = A.quality_flags(fit, regions, net_counts=300.0, requested_errors="profile", r500_converged=False)
    assert f["flag_unconstrained"] and f["unconstrained_parameters"] == "apec_1.kT"
    assert f["flag_at_limit"] and f["at_limit_parameters"] == "apec_1.kT"
    assert f["flag_low_counts"] and f["flag_not_converged"] and f["flag_errors_covariance"]
    assert f["flag_bkg_contamination"] and not f["flag_aperture_lost"] and f["flag_r500_not_converged"]
    assert f["quality_flags"].split(",") == [
        "unconstrained",
        "at_limit",
        "low_counts",
        "not_converged",
        "errors_covariance",
        "bkg_contamination",
        "r500_not_converged",
    ]
    good = dict(fit, converged=True, error_method="profile", parameters=fit["parameters"][1:3])
    f = A.quality_flags(good, {}, net_counts=5e4, requested_errors="profile", r500_converged=None)
    assert f["quality_flags"] == ""


class _FakeResult:
    def __init__(self, kt):
        self.kt = kt

    def to_dict(self):
        return {"parameters": [{"name": "apec_1.kT", "value": self.kt}]}


def test_r500_iteration_converges_and_records_why(monkeypatch, tmp_path):
    import logging

    from survey.config import load_config
    from xmmcore import pipeline, regions

    z, kpa = 0.1, 110.0  # kpc per arcmin
    radii = []

    dirs = []

    def fake_regions(obs, outdir, cfg, log=None, r_src_arcmin=None):
        r = r_src_arcmin
        radii.append(r)
        dirs.append(outdir)
        return {
            "r_src_arcmin": r,
            "kpc_per_arcmin": kpa,
            "r500_source": "iterated",
            "outputs": [str(outdir / "regions" / "regions.json")],
        }

    monkeypatch.setattr(regions, "make_regions", fake_regions)
    monkeypatch.setattr(
        pipeline,
        "_spectra",
        lambda obs, outdir, *a, **k: {"outputs": [str(outdir / "spectra" / "pn_src.pha")]},
    )
    monkeypatch.setattr(
        pipeline, "fit_inputs", lambda outdir, cams: ([SimpleNamespace(name=c) for c in cams], {})
    )

    # a cluster whose temperature rises slowly with the aperture (a cool core)
    def run_fit(inputs):
        return _FakeResult(4.0 + 0.1 * radii[-1])

    class Obs:
        meta = {"z": z}

    start = {"r_src_arcmin": 3.0, "kpc_per_arcmin": kpa, "r500_source": "iterated"}
    result, _, reg, rec = pipeline._iterate_r500(
        Obs(),
        tmp_path,
        load_config().to_dict(),
        logging.getLogger("t"),
        run_fit,
        _FakeResult(4.3),
        [SimpleNamespace(name="pn")],
        start,
    )
    assert rec["r500_converged"] is True and "< 5%" in rec["r500_stop_reason"]
    hist = rec["r500_iterations"]
    assert 2 <= len(hist) <= 6
    last = hist[-1]
    assert last["r500_arcmin"] == pytest.approx(A.r500_kpc(last["kT"], z) / kpa)
    assert abs(last["r500_arcmin"] - last["r_src_arcmin"]) < 0.05 * last["r500_arcmin"]
    # re-extraction goes to results/<obsid>/r500/, never over the regions and spectra steps' products
    # (they stay done on resume); the fit step declares those files
    assert dirs and all(d == tmp_path / "r500" for d in dirs)
    assert (tmp_path / "r500" / "events").is_symlink()
    assert rec["products_dir"] == str(tmp_path / "r500")
    assert rec["outputs"] == [
        str(tmp_path / "r500" / "regions" / "regions.json"),
        str(tmp_path / "r500" / "spectra" / "pn_src.pha"),
    ]
    # a fit without a usable kT stops at once and says so
    _, _, _, rec = pipeline._iterate_r500(
        Obs(),
        tmp_path,
        load_config().to_dict(),
        logging.getLogger("t"),
        run_fit,
        _FakeResult(float("nan")),
        [SimpleNamespace(name="pn")],
        start,
    )
    assert rec["r500_converged"] is False and "no usable kT" in rec["r500_stop_reason"]


def test_profile_uncertainty_reaches_the_l500_errors():
    """A flat core filling the field: with a free flat particle level the beta model's wing and the
    background trade off, and the L500 errors must say so; the corner-measured level narrows them."""
    from xmmcore.responses import vignetting

    pix = 8.0 / 60.0
    n = 230
    r = P.pixel_radii((n, n), (n / 2, n / 2), pix)
    vig = vignetting(r, 1.2)
    rc, beta, s0, sky, part = 3.4, 0.75, 4.0, 0.25, 0.05  # counts per pixel on axis
    mu = vig * (s0 * (1 + (r / rc) ** 2) ** (0.5 - 3 * beta) + sky) + part
    img = np.random.default_rng(5).poisson(mu).astype(float)
    weight = (r < 14.0).astype(float)
    kw = {"radii_arcmin": r, "weight": weight, "pixel_arcmin": pix, "r_max_arcmin": 14.0, "vignetting": vig}
    free = P.fit_beta_profile(img, **kw)
    measured = P.fit_beta_profile(img, **kw, particle=np.full(img.shape, part) * weight)
    assert measured.particle_scale == pytest.approx(1.0, abs=0.2)
    lums = {"0.1-2.4": {"band_kev": [0.1, 2.4], "value": 1e44, "err_lo": 1e42, "err_hi": 1e42}}
    rel = {}
    for name, prof in (("free", free), ("measured", measured)):
        draws = [
            {
                "rc_arcmin": d.rc_arcmin,
                "beta": d.beta,
                "aperture_lost_fraction": 0.0,
                "bkg_oversubtraction": 0.0,
            }
            for d in prof.draws(40)
        ]
        assert len(draws) == 40
        regions = {"profile": prof.to_dict(), "r_src_arcmin": 6.0, "profile_draws": draws}
        out = A.l500_block(lums, regions, r500_arcmin=10.0)
        rel[name] = out["l500_profile_rel_err"]
        assert 0.0 < rel[name] < 1.0
        # the spectral 1% and the profile's share in quadrature
        expect = math.hypot(1e42, 1e44 * rel[name]) * out["l500_correction"]
        assert out["L500_0p1_2p4_err_hi"] == pytest.approx(expect)
    assert rel["free"] > 1.5 * rel["measured"], rel
    # no covariance (the fit's curvature not positive definite): unbounded, and flagged
    out = A.l500_block(
        lums, {"profile": free.to_dict(), "r_src_arcmin": 6.0, "profile_draws": []}, r500_arcmin=10.0
    )
    assert math.isinf(out["l500_profile_rel_err"])
    fit = {"converged": True, "parameters": []}
    flags = A.quality_flags(
        fit, {}, net_counts=5e4, requested_errors="none", r500_converged=None, l500_profile_rel_err=math.inf
    )
    assert flags["flag_profile_unconstrained"] and flags["quality_flags"] == "profile_unconstrained"


def test_l500_follows_the_background_the_spectra_have():
    # the vignetting-matched background scales the annulus's cluster counts by <v>_src/<v>_ann too
    _prof, regions = _l500_regions(0.0, 0.06, bkg_oversubtraction_matched=0.08)
    lums = {"0.1-2.4": {"band_kev": [0.1, 2.4], "value": 1e44, "err_lo": 1e42, "err_hi": 1e42}}
    plain = A.l500_block(lums, regions, r500_arcmin=2.0)
    matched = A.l500_block(lums, regions, r500_arcmin=2.0, matched_background=True)
    assert plain["L500_0p1_2p4"] == pytest.approx(1e44 / 0.94)
    assert matched["L500_0p1_2p4"] == pytest.approx(1e44 / 0.92)
    assert matched["bkg_oversubtraction_used"] == 0.08


def _small_profile_image():
    pix = 8.0 / 60.0
    n = 120
    r = P.pixel_radii((n, n), (n / 2, n / 2), pix)
    mu = 20.0 * (1 + (r / 0.5) ** 2) ** (0.5 - 3 * 0.7) + 0.2 + 0.05
    img = np.random.default_rng(11).poisson(mu).astype(float)
    weight = (r < 7.5).astype(float)
    kw = {"radii_arcmin": r, "weight": weight, "pixel_arcmin": pix, "r_max_arcmin": 7.5}
    return img, kw, np.full(img.shape, 0.05) * weight


def test_profile_fit_scores_a_simplex_step_that_overflows_as_a_bound(monkeypatch):
    """Regression of d326160: a Nelder-Mead vertex at exp(>709) raised OverflowError out of the regions
    step (math.exp since eef18cc; np.exp gave inf); it now scores 1e30, as a bound does."""
    img, kw, particle = _small_profile_image()
    real = P._local_minimum
    scores = []

    def probing(fun_and_grad, x0):
        # points an optimiser step can reach: ln S0, ln rc (exp(-2 ln rc)), ln B_sky, ln particle scale
        # (ln particle scale 400: exp() is finite, the prior's square is not)
        for k, value in ((0, 800.0), (1, -400.0), (3, 800.0), (4, 800.0), (4, 400.0)):
            x = np.array(x0, dtype=float)
            x[k] = value
            scores.append(fun_and_grad(x)[0])
        return real(fun_and_grad, x0)

    monkeypatch.setattr(P, "_local_minimum", probing)
    prof = P.fit_beta_profile(img, **kw, particle=particle)
    assert len(scores) >= 5 and set(scores) == {1e30}
    # and the fit, which never takes a vertex scored 1e30, still finds the profile
    assert prof.converged and prof.beta == pytest.approx(0.7, rel=0.2)
    assert prof.rc_arcmin == pytest.approx(0.5, rel=0.3)


def test_profile_draws_that_would_overflow_are_skipped():
    """Regression of d326160: a draw of ln S0 or ln rc beyond exp's range raised OverflowError."""
    prof = P.BetaProfile(
        0.3,
        0.67,
        100.0,
        1.0,
        12.0,
        30,
        True,
        covariance=[[1e6, 0.0, 0.0], [0.0, 1e-2, 0.0], [0.0, 0.0, 1e-3]],
    )
    rng = np.random.default_rng(0)
    mean = [math.log(100.0), math.log(0.3), 0.67]
    n_over = int(np.sum(rng.multivariate_normal(mean, prof.covariance, size=200)[:, 0] > 700.0))
    assert n_over > 10  # the same draws as draws(200, seed=0): many would overflow
    draws = prof.draws(200, seed=0)
    assert len(draws) == 200 - n_over
    # kept: every draw of ln S0 up to 700 (a very negative one underflows to S0 = 0, which is no error)
    assert all(0.0 <= d.s0_per_arcmin2 <= math.exp(700.0) for d in draws)
    assert max(d.s0_per_arcmin2 for d in draws) > math.exp(100.0)
    assert all(d.rc_arcmin > 0 and 0.35 <= d.beta <= 2.5 for d in draws)


def test_profile_fit_vertex_at_a_tiny_core_radius_is_silent(monkeypatch):
    """A vertex with exp(-2 ln rc) finite but (r/rc)^2 beyond float range scored without numpy's
    RuntimeWarning (printed once per ObsID by the 500-ObsID benchmark's workers)."""
    import warnings

    img, kw, particle = _small_profile_image()
    real = P._local_minimum
    scores = []

    def probing(fun_and_grad, x0):
        x = np.array(x0, dtype=float)
        x[1] = -353.0  # exp(706) ~ 1e306: finite; times r^2 > 2 arcmin^2 overflows
        scores.append(fun_and_grad(x)[0])
        return real(fun_and_grad, x0)

    monkeypatch.setattr(P, "_local_minimum", probing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prof = P.fit_beta_profile(img, **kw, particle=particle)
    assert scores and all(math.isfinite(s) for s in scores)
    assert prof.converged and prof.beta == pytest.approx(0.7, rel=0.2)


def test_profile_fit_gradient_is_the_derivative_of_its_statistic(monkeypatch):
    """The beta-model fit's analytic gradient (L-BFGS-B) against central differences of its C statistic,
    with measured particles (prior) and with a free flat level, at the start and near the minimum."""
    img, kw, particle = _small_profile_image()
    real = P._local_minimum
    checked = []

    def probing(fun_and_grad, x0):
        res = real(fun_and_grad, x0)
        for x in (np.array(x0, dtype=float), res.x + 0.01):
            value, grad = fun_and_grad(x)
            numeric = np.empty_like(grad)
            for k in range(x.size):
                h = np.zeros_like(x)
                h[k] = 1e-6
                numeric[k] = (fun_and_grad(x + h)[0] - fun_and_grad(x - h)[0]) / 2e-6
            checked.append(np.max(np.abs(grad - numeric) / np.maximum(np.abs(numeric), 1.0)))
        return res

    monkeypatch.setattr(P, "_local_minimum", probing)
    vig = np.clip(1.0 - 0.03 * kw["radii_arcmin"], 0.5, 1.0)
    P.fit_beta_profile(img, **kw, particle=particle)
    P.fit_beta_profile(img, **kw, vignetting=vig)
    P.fit_beta_profile(img, **kw)
    assert len(checked) == 2 * (4 + 8 + 4)
    assert max(checked) < 1e-4
