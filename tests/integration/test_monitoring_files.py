"""deploy/server's monitoring: the dashboard asks only for series the server exposes, and
Prometheus scrapes the admin port that compose gives the server."""

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

SERVER_HOST = REPO / "deploy" / "server"
DASHBOARD = SERVER_HOST / "grafana" / "dashboards" / "fedsilo.json"
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


def scrape_jobs(name: str) -> dict[str, dict]:
    jobs = yaml.safe_load((SERVER_HOST / name).read_text())["scrape_configs"]
    return {job["job_name"]: job for job in jobs}


def test_prometheus_scrapes_the_admin_port_compose_gives_the_server() -> None:
    compose = yaml.safe_load((SERVER_HOST / "compose.yaml").read_text())
    command = compose["services"]["server"]["command"]
    health_port = command[command.index("--health-port") + 1]
    (local,) = scrape_jobs("prometheus.yml").values()
    assert local["scheme"] == "http" and local["metrics_path"] == "/metrics"
    assert local["static_configs"][0]["targets"] == [f"127.0.0.1:{health_port}"]
    assert compose["services"]["prometheus"]["network_mode"] == "service:server"


def test_the_remote_scrape_is_over_mutual_tls() -> None:
    (remote,) = scrape_jobs("prometheus-remote.yml").values()
    assert remote["scheme"] == "https" and remote["metrics_path"] == "/metrics"
    assert {"ca_file", "cert_file", "key_file", "server_name"} <= set(remote["tls_config"])
