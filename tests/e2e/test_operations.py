"""The running embedded stack as an operator sees it: `funnelcast status` with lag, backlog and dead
letters per service, and every metric the alert rules and dashboards use served by some service."""

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from shared.topology import SERVICES
from tests.e2e.test_cli_up_down import funnelcast, service_ports, stack_env, up_detached  # noqa: F401 - fixture
from tests.support.metric_names import metrics_used

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_TYPE = re.compile(r"^# TYPE (\S+) (\w+)$", re.M)


def used_by_rules_and_dashboards() -> set[str]:
    used: set[str] = set()
    for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            used |= {m for rule in group["rules"] for m in metrics_used(rule["expr"])}
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            used |= {m for target in panel["targets"] for m in metrics_used(target["expr"])}
    return used


def test_status_figures_and_the_metrics_every_rule_and_dashboard_needs(stack_env: dict[str, str]) -> None:  # noqa: F811
    up_detached(stack_env)
    ports = service_ports(stack_env)

    served: set[str] = set()
    for name, port in ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert re.search(r"^funnelcast_ready 1\.0$", text, re.M), f"{name} is not ready by its own metric"
        for metric, kind in _TYPE.findall(text):
            served.add(metric)
            served.update(metric + suffix for suffix in {"histogram": ("_bucket", "_sum", "_count")}.get(kind, ()))
    missing = used_by_rules_and_dashboards() - served
    assert not missing, f"rules or dashboards use metrics no running service serves: {sorted(missing)}"

    status = funnelcast("status", "--json", env=stack_env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert {s["name"] for s in report["services"]} == set(SERVICES)
    for service in report["services"]:
        figures = (service["consumer_lag"], service["outbox_backlog"], service["dead_letters"])
        assert all(isinstance(f, int) and f >= 0 for f in figures), service
    table = funnelcast("status", env=stack_env)
    assert "LAG" in table.stdout and "BACKLOG" in table.stdout and "DEAD-LETTERED" in table.stdout

    down = funnelcast("down", env=stack_env)
    assert down.returncode == 0, down.stderr
