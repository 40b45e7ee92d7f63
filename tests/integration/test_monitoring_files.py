"""deploy/grafana and deploy/prometheus: the dashboard asks only for series the server exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedsilo.server.checkpoint import CHECKPOINT_FILE
from fedsilo.server.status import StatusView
from fedsilo.server.status_metrics import register_state_metrics
from tests.integration.conftest import REPO
from tests.server.status_helpers import config, federation

DASHBOARD = REPO / "deploy" / "grafana" / "fedsilo.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
SERIES = re.compile(r"\b((?:fedsilo|process)_[a-z0-9_]+)\b")


def exposed_series(tmp_path: Path) -> set[str]:
    """Every sample name a job's /metrics has (with a checkpoint on disk)."""
    fed = federation(tmp_path)
    settings = config(tmp_path)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / CHECKPOINT_FILE).write_bytes(b"x")
    view = StatusView(settings, fed.state, fed.telemetry)
    register_state_metrics(view)
    text = generate_latest(fed.telemetry.registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        # Declared series that have no sample yet (no round done, no refusal so far).
        if family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "sum", "count"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_dashboard_query_names_series_the_server_exposes(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    referenced = {name for expr in exprs for name in SERIES.findall(expr)}
    missing = referenced - exposed_series(tmp_path)
    assert not missing, f"the dashboard asks for series nobody exposes: {sorted(missing)}"
    sources = {t["datasource"]["uid"] for panel in dashboard["panels"] for t in panel["targets"]}
    assert sources == {"fedsilo-prometheus"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_prometheus_config_scrapes_loopback_plainly_and_elsewhere_over_mutual_tls() -> None:
    scrape = {
        job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    }
    local, remote = scrape["fedsilo-local"], scrape["fedsilo"]
    assert local["scheme"] == "http" and local["metrics_path"] == "/metrics"
    assert all(t.startswith("127.0.0.1:") for t in local["static_configs"][0]["targets"])
    assert remote["scheme"] == "https"
    assert {"ca_file", "cert_file", "key_file"} <= set(remote["tls_config"])
