"""deploy/prometheus/prometheus.yml against the topology (the services and their workers), and through promtool
when it is installed."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.topology import PROCESSES

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return path


def service_targets(config: dict) -> list[tuple[str, int, str, str, dict]]:
    """(host, port, metrics_path, scheme, labels) of every target that is not Prometheus itself."""
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                if host in {"localhost", "127.0.0.1"}:
                    continue
                targets.append(
                    (
                        host,
                        int(port),
                        job.get("metrics_path", "/metrics"),
                        job.get("scheme", "http"),
                        static.get("labels", {}),
                    )
                )
    return targets


def test_scrapes_exactly_the_five_services_and_their_workers_at_their_ports(config):
    scraped = sorted((host, port) for host, port, *_ in service_targets(config))
    assert scraped == sorted((name, process.port) for name, process in PROCESSES.items())


def test_scrapes_metrics_over_http_and_labels_each_service(config):
    for host, _, metrics_path, scheme, labels in service_targets(config):
        assert (metrics_path, scheme) == ("/metrics", "http"), host
        # Dashboards and rules group by `service`; it must name the service the series came from.
        assert labels.get("service", host) == host


def test_scrapes_every_15_seconds(config):
    assert config["global"]["scrape_interval"] == "15s"
    for job in config["scrape_configs"]:
        assert job.get("scrape_interval", "15s") == "15s", job["job_name"]


def test_rule_files_are_where_compose_mounts_the_rules_directory(config):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (prometheus,) = [s for s in compose["services"].values() if str(s.get("image", "")).startswith("prom/prometheus")]
    mounts = dict(volume.split(":")[1::-1] for volume in prometheus["volumes"] if volume.startswith("./"))
    assert mounts.get("/etc/prometheus/prometheus.yml") == "./deploy/prometheus/prometheus.yml"
    rules_mount = mounts.get("/etc/prometheus/rules")
    assert rules_mount == "./deploy/prometheus/rules"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert RULES_DIR.is_dir()


def test_promtool_accepts_the_config_and_its_rules(config, tmp_path):
    tool = promtool()
    # promtool resolves rule_files on this machine: the container path /etc/prometheus/rules/*.yml
    # matches nothing here, so the check would pass without reading a single rule. A copy whose
    # rule_files point at the repository's rules directory makes promtool check those rules too.
    checked = dict(config, rule_files=[str(RULES_DIR / "*.yml")])
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(checked))
    result = subprocess.run([tool, "check", "config", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path):
    tool = promtool()
    # Grafana's variables are not PromQL; put in what Grafana would, then let promtool parse each
    # query as a recording rule.
    substitutions = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$service": ".*"}
    rules = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in substitutions.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: unknown variable in {expr}"
                record = re.sub(r"\W", "_", f"dashboard:{path.stem}:{panel['id']}:{target['refId']}")
                rules.append({"record": record, "expr": expr})
    assert rules, "no dashboard queries found"
    rule_file = tmp_path / "dashboards.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([tool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
