"""One definition each of cameras, sky pixel scale, cosmology and flux-band defaults, exit codes."""

from __future__ import annotations

import pytest

from survey.config import load_defaults
from xmmcore import constants
from xmmcore.errors import (
    EXIT_CODES,
    ConfigError,
    ExternalToolError,
    FitError,
    InputDataError,
    ToolError,
    ToolNotFoundError,
    TransientError,
    exit_code_for,
    exit_code_for_name,
)


def test_config_defaults_agree_with_the_library_defaults():
    d = load_defaults()
    assert tuple(d["cameras"]) == constants.CAMERAS
    assert d["cosmology"] == dict(constants.DEFAULT_COSMOLOGY)
    assert tuple(tuple(b) for b in d["fit"]["flux_bands_kev"]) == constants.DEFAULT_FLUX_BANDS_KEV


def test_every_user_of_a_constant_shares_the_one_definition():
    from catalog import schema
    from xmmcore import images, observation, simulate
    from xmmcore.fitting import optimize

    assert observation.CAMERAS is constants.CAMERAS and schema.CAMERA_ROWS is constants.CAMERAS
    from xmmcore import sas_dss
    from xmmcore.backends import sas

    assert images.PHYS_PIXEL_ARCSEC == simulate.SKY_PIXEL_ARCSEC == constants.SKY_PIXEL_ARCSEC == 0.05
    assert sas.SKY_PIXEL_ARCSEC is sas_dss.SKY_PIXEL_ARCSEC is constants.SKY_PIXEL_ARCSEC
    assert schema.DEFAULT_FLUX_BANDS_KEV is constants.DEFAULT_FLUX_BANDS_KEV
    assert optimize.DEFAULT_FLUX_BANDS is constants.DEFAULT_FLUX_BANDS_KEV


def test_flat_lcdm_defaults_and_overrides():
    astropy_cosmo = pytest.importorskip("astropy.cosmology")
    default = constants.flat_lcdm()
    assert default.H0.value == 70.0 and default.Om0 == 0.3
    partial = constants.flat_lcdm({"H0": 67.0})
    assert partial.H0.value == 67.0 and partial.Om0 == 0.3
    given = astropy_cosmo.Planck18
    assert constants.flat_lcdm(given) is given


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (ConfigError, 2),
        (ToolNotFoundError, 2),
        (InputDataError, 3),
        (ToolError, 4),
        (ExternalToolError, 4),
        (FitError, 4),
        (TransientError, 5),
    ],
)
def test_exit_codes_by_class_and_by_recorded_name(cls, code):
    exc = cls("boom") if cls is not InputDataError else cls("boom", "/x.fits")
    assert exit_code_for(exc) == code
    assert exit_code_for_name(cls.__name__) == code


def test_unexpected_errors_exit_1():
    assert exit_code_for(RuntimeError("x")) == 1
    assert exit_code_for_name("KilledWorker") == 1 and exit_code_for_name(None) == 1
    assert {c.__name__: v for c, v in EXIT_CODES.items()} == {
        "ConfigError": 2,
        "InputDataError": 3,
        "ToolError": 4,
        "TransientError": 5,
    }


def test_config_choices_come_from_the_registries():
    from survey.config import load_config
    from xmmcore.backends import BACKENDS
    from xmmcore.fitting.engines import ENGINES
    from xmmcore.fitting.stats import STATISTIC_CLASSES

    for key, names in (
        ("backend.reduction", BACKENDS),
        ("backend.fitting", ENGINES),
        ("fit.stat", STATISTIC_CLASSES),
    ):
        for name in names:
            assert load_config(None, {key: name}).get(key) == name
        with pytest.raises(ConfigError) as info:
            load_config(None, {key: "no-such-name"})
        assert key in str(info.value) and all(n in str(info.value) for n in names)
