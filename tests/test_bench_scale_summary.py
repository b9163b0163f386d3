"""``benchmarks/bench_survey_scale.py --summarize`` reports the stopped run's own settings.

It wrote ``plots: none`` whatever the run drew; the plots setting now comes from the run's
``config.resolved.yaml``. (The benchmark itself is not run here: a small survey's records are summarized.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from helpers import survey_steps as helpers

from survey.api import run_one
from survey.config import load_config, write_resolved

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_survey_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_survey_scale_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summarize_reads_the_plots_setting_of_the_run(tmp_path):
    ids = helpers.make_survey(tmp_path / "data", 2)
    results = tmp_path / "results"
    for plots in ("summary", "all"):
        cfg = load_config(
            None,
            {
                "data_dir": str(tmp_path / "data"),
                "results_dir": str(results),
                "pipeline.module": "helpers.survey_steps",
                "plots": plots,
            },
        )
        for obsid in ids:
            assert {o["status"] for o in run_one(cfg, obsid).values()} <= {"done", "cached"}
        write_resolved(cfg)
        out = _bench().summarize_partial(results, cluster="local", workers=1, n_planned=2)
        assert out["plots"] == plots
        assert out["done"] == 2 and out["failed"] == 0 and out["n_planned"] == 2
