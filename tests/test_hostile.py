"""Hostile inputs and faults (issue 16): a corpus generated in code, one case per defect or weak case.

Each test states the case it covers; every one asserts the clear error (file, key, cause) or the
value the pipeline must produce, never only that nothing raised.
"""

from __future__ import annotations

import time

import pytest

from survey.config import load_config, parse_override
from xmmcore.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Configuration: YAML safety, duplicate keys, physical ranges
# ----------------------------------------------------------------------------------------------


def _laughs(levels: int = 9) -> list[str]:
    """``&l0 [lol x 9]``, ``&l1 [*l0 x 9]``, ...: 9**levels strings once expanded."""
    items = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return items


BILLION_LAUGHS = {
    "fit.set": "fit:\n  set:\n" + "".join(f"    - {item}\n" for item in _laughs()),
    "spectra.responses": "spectra:\n  responses:\n"
    + "".join(f"    k{i}: {item}\n" for i, item in enumerate(_laughs())),
}


@pytest.mark.parametrize("where", sorted(BILLION_LAUGHS))
def test_yaml_alias_bomb_refused_before_expansion(tmp_path, where):
    """Defect 3: a few hundred bytes of aliases are refused while parsing, in bounded time."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS[where])
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.perf_counter() - t0 < 2.0
    msg = str(info.value)
    assert str(path) in msg and "alias" in msg and "line " in msg


def test_yaml_alias_in_command_line_value_refused():
    with pytest.raises(ConfigError, match="alias"):
        parse_override("fit.set=[&a x, *a]")


def test_duplicate_yaml_key_refused_with_both_lines(tmp_path):
    """Weak case: duplicate keys silently took the last value."""
    path = tmp_path / "dup.yaml"
    path.write_text("fit:\n  stat: cstat\n  model: powerlaw\n  stat: chi2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "duplicate key 'stat'" in msg and "line 4" in msg and "line 2" in msg


def test_defaults_have_no_duplicate_keys():
    """The reference itself is read with the strict loader (it held ``fit.auto_set`` twice)."""
    cfg = load_config()
    assert cfg["fit"]["auto_set"] is True


def test_huge_or_deep_config_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("fit:\n  set: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(deep)
    assert str(deep) in str(info.value)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="more than a configuration can be"):
        load_config(big)


@pytest.mark.parametrize(
    "override, words",
    [
        ("cosmology.H0=-70", ["cosmology.H0", "> 0", "-70"]),
        ("cosmology.H0=.nan", ["cosmology.H0", "finite"]),
        ("cosmology.Om0=5", ["cosmology.Om0", "<= 1", "5"]),
        ("cosmology.Om0=0", ["cosmology.Om0", "> 0"]),
        ("spectra.min_counts=-5", ["spectra.min_counts", ">= 1", "-5"]),
        ("flares.bin_s=0", ["flares.bin_s", "> 0"]),
        ("flares.nsigma=-1", ["flares.nsigma", "> 0"]),
        ("flares.fixed_rate.pn=0", ["flares.fixed_rate.pn", "> 0"]),
        ("fit.notice_kev=[7.0, 0.5]", ["fit.notice_kev", "ordered", "[7.0, 0.5]"]),
        ("fit.notice_kev=[0.5]", ["fit.notice_kev", "two numbers"]),
        ("fit.notice_kev=[-1, 7]", ["fit.notice_kev", "0.0 <= low"]),
        ("flares.band_kev=[12, 10]", ["flares.band_kev", "ordered"]),
        ("fit.flux_bands_kev=[[2, 0.5]]", ["fit.flux_bands_kev[0]", "ordered"]),
        ("cluster.workers=10000", ["cluster.workers", "<= 256", "10000"]),
        ("cluster.dashboard_address=':0'", ["cluster.dashboard_address", "every interface", "loopback"]),
        ("cluster.dashboard_address='0.0.0.0:8787'", ["every interface", "dashboard_public"]),
        ("cluster.dashboard_address='192.168.1.5:8787'", ["192.168.1.5", "loopback"]),
        ("cluster.dashboard_address='8787'", ["host:port"]),
        ("cluster.dashboard_address='127.0.0.1:99999'", ["host:port"]),
        ("filter.pn.pi_min=16000", ["filter.pn.pi_min", "below", "filter.pn.pi_max"]),
        ("filter.mos1.pattern_max=99", ["filter.mos1.pattern_max", "<= 31"]),
        ("regions.background.inner=2.0", ["regions.background.inner", "below", "outer"]),
        ("regions.radius.arcmin=0", ["regions.radius.arcmin", "> 0"]),
        ("regions.centre=[400, 0]", ["regions.centre", "ra"]),
        ("regions.annuli=[0, 2, 1]", ["regions.annuli", "increasing"]),
        ("cameras=[pn, pn]", ["cameras", "distinct"]),
        ("cameras=[acis]", ["cameras", "acis"]),
        ("cluster.slurm.minimum_jobs=20", ["minimum_jobs", "maximum_jobs"]),
        ("retries.transient=1000", ["retries.transient", "<= 20"]),
        ("pipeline.module='../../tmp/evil'", ["pipeline.module", "dotted Python module name", "before"]),
        ("pipeline.module='os; rm -rf ~'", ["pipeline.module"]),
    ],
)
def test_physical_and_operational_ranges(override, words):
    """Weak cases: out-of-range numbers were accepted and gave wrong or empty science (or a hang)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_ranges_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "survey.yaml"
    path.write_text("cosmology: {H0: -70, Om0: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "cosmology.H0" in str(info.value)


def test_limits_accept_what_is_valid():
    cfg = load_config(
        None,
        [
            "cluster.dashboard_address='[::1]:0'",
            "cosmology.Om0=1",
            "spectra.min_counts=1",
            "fit.notice_kev=[0.3, 10]",
            "regions.centre=[359.5, -89.0]",
            "pipeline.module=tests_helpers.my_pipeline",
        ],
    )
    assert cfg.get("cluster.dashboard_address") == "[::1]:0" and cfg.get("cosmology.Om0") == 1.0
    public = load_config(None, ["cluster.dashboard_public=true", "cluster.dashboard_address='0.0.0.0:8787'"])
    assert public.get("cluster.dashboard_address") == "0.0.0.0:8787"


def test_pipeline_module_checked_before_import(tmp_path, monkeypatch):
    """Weak case: ``pipeline.module`` was imported before it was validated."""
    from survey.steps import Pipeline

    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="dotted Python module name"):
        Pipeline.from_module(str(tmp_path / "evil_mod.py"))
    assert not marker.exists()
