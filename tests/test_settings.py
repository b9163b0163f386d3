"""Typed settings built once from the resolved configuration; dask-jobqueue gets only what the user set."""

from __future__ import annotations

import pytest

from survey.config import load_config
from xmmcore.errors import ConfigError
from xmmcore.settings import FitSettings, ScreenSettings, SpectraSettings


def test_fit_settings_from_the_defaults():
    fs = FitSettings.from_config(load_config())
    assert fs.model == "tbabs*apec" and fs.stat == "cstat" and fs.engine == "builtin"
    assert fs.notice_kev == (0.5, 7.0) and fs.errors == "profile" and fs.auto_set and fs.joint_cameras
    assert fs.flux_bands_kev == ((0.5, 2.0), (0.1, 2.4), (2.0, 10.0))
    assert fs.cosmology == {"H0": 70.0, "Om0": 0.3} and fs.abund == "angr"
    assert fs.set_params == ("apec_1.Abundanc=0.3,frozen",) and fs.free_abundance is False
    free = FitSettings.from_config(load_config(None, ["fit.free_abundance=true"]))
    assert free.parameter_settings(meta={})[-1] == "apec_1.Abundanc=free"
    assert fs.engine_options == {}
    with pytest.raises(AttributeError):
        fs.stat = "chi2"  # type: ignore[misc]  # frozen


def test_fit_settings_follow_the_config_and_meta():
    cfg = load_config(
        None,
        {
            "fit.errors": "none",
            "fit.stat": "wstat",
            "backend.fitting": "xspec",
            "xspec.timeout_s": 60,
            "fit.model": "wabs*zbremss",
            "fit.set": [],
        },
    )
    fs = FitSettings.from_config(cfg)
    assert fs.errors is None and fs.stat == "wstat" and fs.engine == "xspec"
    assert fs.engine_options["timeout_s"] == 60 and fs.engine_options["chatter"] == 0
    settings = fs.parameter_settings(meta={"z": 0.1, "nh": 0.03})
    assert any("Redshift=0.1" in s and "frozen" in s for s in settings), settings
    assert any("nH=0.03" in s for s in settings), settings
    assert fs.with_(auto_set=False).parameter_settings(meta={"z": 0.1}) == []
    kw = fs.fit_kwargs(redshift=0.1)
    assert kw["errors"] is None and kw["redshift"] == 0.1 and kw["flux_bands_kev"][0] == (0.5, 2.0)


def test_missing_key_names_it():
    cfg = load_config().to_dict()
    del cfg["fit"]["errors"]
    with pytest.raises(ConfigError, match="fit.errors"):
        FitSettings.from_config(cfg)


def test_screen_and_spectra_settings():
    cfg = load_config(None, {"filter.mos1.ccds": [1, 2], "spectra.min_counts": 5})
    scr = ScreenSettings.from_config(cfg, "mos1")
    assert (scr.pattern_max, scr.flag, scr.pi_min, scr.pi_max, scr.ccds) == (12, "xmmea", 200, 12000, (1, 2))
    assert scr.screen_kwargs(0x766BA000)["ccds"] == [1, 2]
    sp = SpectraSettings.from_config(cfg)
    assert (sp.grouping, sp.min_counts, dict(sp.responses)) == ("min_counts", 5, {})


def test_config_knows_which_keys_the_user_set(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("cluster:\n  slurm:\n    memory: 8GB\n")
    cfg = load_config(path, ["cluster.slurm.walltime=02:00:00"])
    assert cfg.is_set("cluster.slurm.memory") and cfg.is_set("cluster.slurm.walltime")
    assert cfg.is_set("cluster.slurm") and not cfg.is_set("cluster.slurm.cores")
    assert cfg.with_overrides({"cluster.slurm.cores": 2}).is_set("cluster.slurm.cores")
    assert not load_config().is_set("cluster.slurm.memory")


def _job_script(kw):
    from dask_jobqueue.slurm import SLURMJob

    return SLURMJob(
        scheduler="tcp://127.0.0.1:8786",
        name="w",
        **{k: v for k, v in kw.items() if k != "scheduler_options"},
    ).job_script()


def test_site_jobqueue_yaml_applies_where_the_user_set_nothing(tmp_path):
    pytest.importorskip("dask_jobqueue")
    import dask

    from survey.cluster import slurm_cluster_kwargs

    site = {
        "jobqueue.slurm.memory": "7GB",
        "jobqueue.slurm.walltime": "03:00:00",
        "jobqueue.slurm.queue": "site-q",
        "jobqueue.slurm.cores": 4,
        "jobqueue.slurm.processes": 2,
        "jobqueue.slurm.job-extra-directives": ["--qos=site"],
    }
    cfg = load_config(None, {"results_dir": str(tmp_path), "cluster.slurm.walltime": "00:20:00"})
    with dask.config.set(site):
        kw = slurm_cluster_kwargs(cfg, tmp_path)
        script = _job_script(kw)
    assert "memory" not in kw and "queue" not in kw and "cores" not in kw and "job_extra_directives" not in kw
    assert kw["walltime"] == "00:20:00"  # the user's choice wins over the site's
    assert kw["worker_extra_args"] == ["--resources", "slots=2"]  # site cores 4 / processes 2
    for line in (
        "#SBATCH -p site-q",
        "#SBATCH --qos=site",
        "#SBATCH -t 00:20:00",
        "#SBATCH --cpus-per-task=4",
    ):
        assert line in script, line
    assert "--mem=7G" in script or "--mem=6.5G" in script or "--mem=6676M" in script, script

    # no site configuration: the values of survey/defaults.yaml are passed
    kw = slurm_cluster_kwargs(load_config(None, {"results_dir": str(tmp_path)}), tmp_path)
    assert (kw["memory"], kw["walltime"], kw["cores"], kw["processes"]) == ("4GB", "01:00:00", 1, 1)
    assert "queue" not in kw and kw["job_extra_directives"] == []


def test_one_fit_settings_for_per_obsid_and_joint_fits(tmp_path):
    import inspect

    from survey.config import write_resolved
    from xmmcore.fitting import joint

    defaults = FitSettings.from_config(load_config())
    assert FitSettings() == defaults  # the library defaults are survey/defaults.yaml's
    assert joint.joint_settings(tmp_path) == defaults  # no resolved configuration
    assert inspect.signature(joint.joint_fit).parameters["errors"].default == "profile"
    cfg = load_config(None, {"results_dir": str(tmp_path), "fit.errors": "covariance", "fit.stat": "chi2"})
    write_resolved(cfg)
    js = joint.joint_settings(tmp_path)
    assert js == FitSettings.from_config(cfg) and js.errors == "covariance" and js.stat == "chi2"


# ------------------------------------------------ every step's settings: from defaults.yaml, no fallbacks
#: Configuration the per-ObsID steps read: every leaf key below these must be read by a settings
#: class (so a key missing from defaults.yaml fails loudly); ``flares.fixed_rate.<cam>`` may be
#: absent (the SOC threshold of the camera applies, documented in defaults.yaml).
STEP_KEYS = ("cameras", "plots", "backend.fitting", "sas", "xspec", "filter", "flares", "regions", "spectra")
STEP_KEYS += ("fit", "cosmology")


def _leaves(node, prefix=""):
    for key, value in node.items():
        path = prefix + key
        if isinstance(value, dict) and value and key != "fixed_rate":
            yield from _leaves(value, path + ".")
        else:
            yield path


def _without(data, dotted):
    import copy

    out = copy.deepcopy(data)
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    del node[last]
    return out


def test_every_step_settings_object_is_built_from_the_defaults():
    from survey.config import load_defaults, step_settings
    from xmmcore.backends.sas import SasSettings
    from xmmcore.flares import FlareSettings
    from xmmcore.settings import PlotSettings, RegionSettings, XspecSettings

    built = step_settings(load_config())
    assert {type(v) for v in built.values()} == {
        ScreenSettings,
        FlareSettings,
        RegionSettings,
        SpectraSettings,
        FitSettings,
        PlotSettings,
        XspecSettings,
        SasSettings,
    }
    reg = built["regions"]
    assert (reg.centre, reg.radius_method, reg.radius_arcmin, reg.sb_nsigma) == ("auto", "r500", 3.0, 3.0)
    assert (reg.bkg_method, reg.bkg_inner, reg.bkg_outer, reg.blanksky_files) == ("annulus", 1.05, 1.5, {})
    assert (reg.detect_point_sources, reg.ps_snr, reg.ps_mask_radius_arcsec) == (True, 5.0, 20.0)
    assert reg.cameras == ("pn", "mos1", "mos2") and reg.plots.level == "all" and reg.annuli is None
    assert built["flares.pn"] == FlareSettings("histogram", (10.0, 12.0), 2.0, 0.4, 100.0, 100.0)
    assert built["flares.mos2"].band_kev == (10.0, 15.0)
    assert built["xspec"] == XspecSettings(timeout_s=1800.0, chatter=0, esas_sky=False)
    sas = built["sas"]
    assert (sas.sas_dir, sas.ccf_path, sas.timeout_s, sas.use_pps_events, sas.esas) == (
        None,
        None,
        7200.0,
        True,
        True,
    )
    # the field defaults that serve library calls equal survey/defaults.yaml
    assert SasSettings(sas_dir=None, ccf_path=None) == sas
    assert FitSettings() == built["fit"]
    # every key of the step sections is read by some settings class: removing it is an error naming it
    defaults = load_defaults()
    keys = [k for k in _leaves(defaults) if k.startswith(STEP_KEYS)]
    assert len(keys) > 40, keys
    for key in keys:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            step_settings(_without(defaults, key))


def test_a_key_absent_from_defaults_yaml_is_a_load_error(monkeypatch):
    import survey.config as C

    full = C.load_defaults()
    monkeypatch.setattr(C, "load_defaults", lambda: _without(full, "regions.point_sources.snr"))
    with pytest.raises(ConfigError, match=r"regions\.point_sources\.snr"):
        C.load_config()
    monkeypatch.setattr(C, "load_defaults", lambda: _without(full, "flares.bin_s"))
    with pytest.raises(ConfigError, match=r"flares\.bin_s"):
        C.load_config()


def test_region_flare_sas_xspec_plot_settings_follow_the_config():
    from xmmcore.backends.sas import SasSettings
    from xmmcore.flares import FlareSettings
    from xmmcore.settings import PlotSettings, RegionSettings, XspecSettings

    cfg = load_config(
        None,
        {
            "regions.centre": [149.5, -11.0],
            "regions.radius.method": "fixed",
            "regions.background.method": "region",
            "regions.background.region_file": "off.reg",
            "regions.annuli": [0, 1, 2],
            "flares.method": "espfilt",
            "flares.bin_s": 50.0,
            "sas.timeout_s": 60,
            "xspec.chatter": 5,
            "plots": "summary",
            "cameras": ["mos1"],
        },
    )
    reg = RegionSettings.from_config(cfg)
    assert reg.centre == (149.5, -11.0) and reg.radius_method == "fixed" and reg.annuli == (0.0, 1.0, 2.0)
    assert reg.background_region == "off.reg" and reg.config_files() == ["off.reg"]
    assert reg.cameras == ("mos1",) and not reg.plots.wants("mos2", ["mos1", "mos2"])
    fl = FlareSettings.from_config(cfg, "mos1")
    assert (fl.method, fl.band_kev, fl.nsigma, fl.bin_s) == ("espfilt", (2.5, 8.5), 3.0, 50.0)
    sas = SasSettings.from_config(cfg, environ={"SAS_DIR": "/opt/sas", "SAS_CCFPATH": "/ccf"})
    assert (sas.sas_dir, sas.ccf_path, sas.timeout_s) == ("/opt/sas", "/ccf", 60.0)
    assert XspecSettings.from_config(cfg).chatter == 5
    assert PlotSettings.from_config(cfg) == PlotSettings("summary")
    with pytest.raises(ConfigError, match="plots must be one of"):
        PlotSettings("some")
    with pytest.raises(ConfigError, match="regions.centre"):
        load_config(None, {"regions.centre": [1.0, 2.0, 3.0]})
