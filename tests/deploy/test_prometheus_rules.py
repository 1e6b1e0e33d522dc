"""deploy/prometheus/rules/: promtool checks and unit tests (every alert firing and not firing), a
runbook for every alert, no rule or dashboard naming a metric that no service exports, or a histogram
bucket it does not have."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from services.leads.main import service
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.metric_names import exported_metric_names, metrics_used

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
DASHBOARDS = ROOT / "deploy" / "grafana"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: apt-get install prometheus (.ci/run does where it can)")
    return path


def rules() -> list[dict]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def test_the_issue_s_alerts_are_all_there() -> None:
    assert set(alerts()) == {
        "FunnelcastServiceDown", "FunnelcastNotReady", "FunnelcastConsumerLagHigh", "FunnelcastOutboxBacklogGrowing",
        "FunnelcastOutboxEventTooOld", "FunnelcastRelayStalled", "FunnelcastDeadLetters",
        "FunnelcastHttp5xxRatioHigh", "FunnelcastLatencySLOBurnFast", "FunnelcastLatencySLOBurnSlow",
        "FunnelcastWebhookDeliveriesFailing",
    }
    assert all(rule["labels"]["severity"] in ("page", "ticket") for rule in alerts().values())


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    for path in RULE_TESTS:
        result = subprocess.run([promtool(), "test", "rules", path.name], cwd=path.parent, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_firing_and_one_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    untested = {name: cases.get(name, set()) for name in alerts() if cases.get(name) != {True, False}}
    assert not untested, f"alerts without both a firing and a quiet case: {untested}"


def test_every_alert_names_its_written_runbook_and_every_runbook_an_alert() -> None:
    for name, rule in alerts().items():
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md"
        page = (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")
        assert page.startswith(f"# {name}\n")
        headings = re.findall(r"^## (.+)$", page, re.M)
        assert headings[:3] == ["What it means", "How to confirm", "How to fix"], f"{name}.md: {headings}"
        # the fourth part: what this alert means for dead letters, or how to re-drive what it left undone
        assert len(headings) == 4 and re.search(r"dead.letter|re-?drive", headings[3], re.I), (
            f"{name}.md needs a 4th section on dead letters or re-driving: {headings}")
        bodies = re.split(r"^## .+$", page, flags=re.M)[1:]
        assert all(body.strip() for body in bodies), f"{name}.md has an empty section"
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == set(alerts()), "a runbook without an alert, or the reverse"


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard panel."""
    found = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]
    for path in sorted((DASHBOARDS / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name}: {panel['title']}", target["expr"]) for target in panel["targets"]]
    return found


def test_every_metric_a_rule_or_dashboard_uses_is_exported_by_a_service() -> None:
    exported = exported_metric_names()
    assert "funnelcast_ready" in exported and "funnelcast_http_request_duration_seconds_bucket" in exported
    used: dict[str, set[str]] = {}
    for where, expr in _expressions():
        for metric in metrics_used(expr):
            used.setdefault(metric, set()).add(where)
    assert len(used) >= 10
    missing = {metric: sorted(where) for metric, where in used.items() if metric not in exported}
    assert not missing, f"metrics no service exports: {missing}"


async def _exported_buckets() -> dict[str, set[float]]:
    """The bucket bounds of each histogram with a series, after one request through a service app."""
    app = create_service_app(service, Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get("/healthz")).status_code == 200
    buckets: dict[str, set[float]] = {}
    for name, bound in re.findall(r'^(\w+)_bucket\{.*?le="([^"]+)"', generate_latest(REGISTRY).decode(), re.M):
        buckets.setdefault(name, set()).add(float(bound))
    return buckets


async def test_every_bucket_a_rule_or_dashboard_reads_is_one_its_histogram_has() -> None:
    exported = await _exported_buckets()
    used = [(where, histogram, bound) for where, expr in _expressions()
            for histogram, bound in re.findall(r'(\w+)_bucket\{[^}]*\ble="([^"]+)"', expr)]
    assert used, "the latency SLO rules read a bucket"
    for where, histogram, bound in used:
        assert histogram in exported, f"{where}: no series of {histogram} to read its buckets from"
        # as numbers: a client writes "1.0" where Prometheus 3 stores "1"
        assert float(bound) in exported[histogram], f"{where}: {histogram} has no bucket le={bound}"


def test_the_dashboards_are_what_their_generator_writes() -> None:
    result = subprocess.run([sys.executable, str(DASHBOARDS / "generate_dashboards.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_one_dashboard_per_service_and_an_overview() -> None:
    uids = {json.loads(p.read_text())["uid"] for p in (DASHBOARDS / "dashboards").glob("*.json")}
    assert uids == {"funnelcast-overview"} | {f"funnelcast-{s}" for s in
                                              ("leads", "opportunities", "scoring", "forecasting", "notifications")}


def test_the_kubernetes_scrape_config_is_valid_and_labels_series_by_service(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "funnelcast"  # the rules' up{job="funnelcast"}
    relabels = {r.get("target_label"): r["source_labels"] for r in job["relabel_configs"]}
    assert relabels["service"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    checked = dict(config, rule_files=[str(path) for path in RULES])
    copy = tmp_path / "kubernetes.yml"
    copy.write_text(yaml.safe_dump(checked))
    result = subprocess.run([promtool(), "check", "config", str(copy)], capture_output=True, text=True, timeout=60)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is): config not checked")
    assert result.returncode == 0, result.stdout + result.stderr
