"""The Dask dashboard the survey starts is really served, on localhost, with Bokeh content."""

from __future__ import annotations

import urllib.request

from survey.cluster import start_cluster
from survey.config import load_config


def test_dashboard_serves_the_status_page_on_localhost(tmp_path):
    cfg = load_config(
        None, {"results_dir": str(tmp_path), "cluster.workers": 1, "cluster.dashboard_address": "127.0.0.1:0"}
    )
    with start_cluster(cfg, results_dir=tmp_path) as handle:
        link = handle.dashboard_link
        assert link and link.startswith("http://127.0.0.1:"), link
        with urllib.request.urlopen(link, timeout=30) as resp:
            page = resp.read().decode("utf-8", "replace")
        assert resp.status == 200
        assert "Bokeh" in page or "bokeh" in page, page[:500]
        assert "Dask" in page
