"""fit.model / fit.set checked at load: defaults follow the model, mistakes exit 2 before any reduction."""

from __future__ import annotations

import pytest

from survey.cli import main
from survey.config import load_config
from xmmcore.errors import ConfigError


def test_default_model_is_absorbed_apec_with_frozen_abundance():
    cfg = load_config()
    assert cfg["fit"]["model"] == "tbabs*apec"
    assert cfg["fit"]["set"] == ["apec_1.Abundanc=0.3,frozen"]
    assert cfg["fit"]["free_abundance"] is False


@pytest.mark.parametrize(
    ("model", "kept"),
    [
        ("wabs*(zbremss+zgauss)", []),  # no apec: the default Abundanc entry is dropped
        ("tbabs*apec", ["apec_1.Abundanc=0.3,frozen"]),
        ("phabs*apec", ["apec_1.Abundanc=0.3,frozen"]),
    ],
)
def test_setting_fit_model_alone_works(model, kept):
    cfg = load_config(None, [f"fit.model={model}"])
    assert cfg["fit"]["model"] == model and cfg["fit"]["set"] == kept


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fit.model=tbabs*apecc"], "unknown model component 'apecc'"),
        (["fit.model=tbabs*(apec"], "fit.model"),
        (['fit.set=["zgauss_1.LineE=6.7,frozen"]'], "zgauss_1.LineE.*does not have.*apec_1.kT"),
        (["fit.model=wabs*zbremss", 'fit.set=["apec_1.Abundanc=0.3,frozen"]'], "apec_1.Abundanc"),
        (['fit.set=["apec_1.kT=apec_1.Abundnc"]'], "apec_1.Abundnc"),
        (["fit.model=wabs*zbremss", "fit.free_abundance=true"], "no Abundanc parameter"),
    ],
)
def test_model_and_parameter_mistakes_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_user_fit_set_for_the_model_is_kept(tmp_path):
    cfg_file = tmp_path / "survey.yaml"
    cfg_file.write_text(
        'fit:\n  model: "wabs*(zbremss+zgauss)"\n  set: ["zgauss_1.LineE=6.7,frozen", "2:constant_1.factor=1"]\n'
    )
    cfg = load_config(cfg_file)
    assert cfg["fit"]["set"] == ["zgauss_1.LineE=6.7,frozen", "2:constant_1.factor=1"]


def test_cli_typo_exits_2_before_any_reduction(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "0900100001").mkdir(parents=True)
    results = tmp_path / "results"
    code = main(["run", "--data", str(data), "--results", str(results), "--set", "fit.model=tbabs*apecc"])
    assert code == 2
    assert "apecc" in capsys.readouterr().err
    assert not (results / "0900100001").exists()
