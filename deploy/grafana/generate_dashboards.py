"""Writes deploy/grafana/dashboards/*.json: the Funnelcast overview and one dashboard per service.

    python deploy/grafana/generate_dashboards.py          # rewrite the JSON files
    python deploy/grafana/generate_dashboards.py --check  # exit 1 when they differ from this script

Edit this script, not the JSON (Grafana provisions the JSON read-only). Metric names are CONTRACT.md's
and the services' own; tests/deploy/test_prometheus_rules.py fails when a panel names a metric that no
service exports, and promtool parses every query (tests/deploy/test_prometheus_config.py).
"""

import json
import sys
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICES = ("leads", "opportunities", "scoring", "forecasting", "notifications")
R = "$__rate_interval"

Target = tuple[str, str]  # (PromQL, legend)


def panel(title: str, description: str, unit: str, *targets: Target, stacked: bool = False) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if stacked:
        defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    }


def laid_out(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two panels a row, 8 high; ids in order."""
    return [
        {"id": i + 1, **p, "gridPos": {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8}}
        for i, p in enumerate(panels)
    ]


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              templating: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["funnelcast"],
        "description": description,
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": templating},
        "annotations": {"list": []},
        "links": [{"title": "Funnelcast", "type": "dashboards", "tags": ["funnelcast"], "asDropdown": True}],
        "panels": laid_out(panels),
    }


SERVICE_VARIABLE = {
    "name": "service",
    "label": "service",
    "type": "query",
    "datasource": DATASOURCE,
    "query": {"query": 'label_values(up{job="funnelcast"}, service)', "refId": "service"},
    "definition": 'label_values(up{job="funnelcast"}, service)',
    "multi": True,
    "includeAll": True,
    "allValue": ".*",
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "refresh": 2,
    "sort": 1,
}


def overview() -> dict[str, Any]:
    s = 'service=~"$service"'
    panels = [
        panel("HTTP requests per second", "All HTTP requests, per service.", "reqps",
              (f"sum by (service) (rate(funnelcast_http_requests_total{{{s}}}[{R}]))", "{{service}}")),
        panel("HTTP 5xx ratio", "Share of requests answered with a server error (alert: > 5% for 10 min).",
              "percentunit",
              (f'sum by (service) (rate(funnelcast_http_requests_total{{{s}, status=~"5.."}}[{R}]))'
               f" / sum by (service) (rate(funnelcast_http_requests_total{{{s}}}[{R}]))", "{{service}}")),
        panel("HTTP latency p50 / p95", "Request duration quantiles per service (SLO: 99% within 250 ms).", "s",
              (f"histogram_quantile(0.95, sum by (service, le) "
               f"(rate(funnelcast_http_request_duration_seconds_bucket{{{s}}}[{R}])))", "p95 {{service}}"),
              (f"histogram_quantile(0.5, sum by (service, le) "
               f"(rate(funnelcast_http_request_duration_seconds_bucket{{{s}}}[{R}])))", "p50 {{service}}")),
        panel("Events published per second by topic", "What each topic receives; its types are in docs/events.md.",
              "ops", (f"sum by (topic) (rate(funnelcast_events_published_total{{{s}}}[{R}]))", "{{topic}}"),
              stacked=True),
        panel("Events published per second by type", "Each event type (one topic each).", "ops",
              (f"sum by (type) (rate(funnelcast_events_published_total{{{s}}}[{R}]))", "{{type}}"), stacked=True),
        panel("Events consumed per second", "Applied by each consumer group.", "ops",
              (f"sum by (group) (rate(funnelcast_events_consumed_total{{{s}}}[{R}]))", "{{group}}"), stacked=True),
        panel("Consumer lag", "Messages behind the end of each topic, per consumer group (alert: > 1000).",
              "short", (f"sum by (group, topic) (funnelcast_consumer_lag{{{s}}})", "{{group}} {{topic}}")),
        panel("Outbox backlog", "Committed events not yet published, per service.", "short",
              (f"max by (service) (funnelcast_outbox_backlog{{{s}}})", "{{service}}")),
        panel("Oldest unpublished event", "Age of the oldest outbox event not yet published (alert: > 5 min).", "s",
              (f"max by (service) (funnelcast_outbox_oldest_unpublished_seconds{{{s}}})", "{{service}}")),
        panel("Dead letters (last hour)", "Messages sent to each dead-letter topic; `funnelcast dlq list TOPIC`.",
              "short", (f"sum by (topic) (increase(funnelcast_dead_letters_total{{{s}}}[1h]))", "{{topic}}")),
        panel("Ready instances", "Instances whose /readyz answers 200, per service.", "short",
              (f"sum by (service) (funnelcast_ready{{{s}}})", "{{service}}")),
    ]
    return dashboard("funnelcast-overview", "Funnelcast overview",
                     "HTTP traffic, events, consumer lag, outbox and dead letters of every Funnelcast service.",
                     panels, [SERVICE_VARIABLE])


OWN_PANELS: dict[str, list[dict[str, Any]]] = {
    "leads": [
        panel("Leads captured per second", "By channel.", "ops",
              (f"sum by (source) (rate(funnelcast_leads_captured_total[{R}]))", "{{source}}"), stacked=True),
        panel("Duplicates recognised per second", "Captures that named an existing lead instead.", "ops",
              (f"sum by (matched_on) (rate(funnelcast_lead_duplicates_total[{R}]))", "{{matched_on}}")),
        panel("Leads overdue for follow-up", "Still new past their follow-up due time, by team. Every instance"
              " counts all leads: the max over instances, not the sum.", "short",
              ("sum by (team) (max by (team, grade) (funnelcast_leads_follow_ups_overdue))", "{{team}}"),
              stacked=True),
    ],
    "scoring": [
        panel("Scores computed per second", "By kind and model version.", "ops",
              (f"sum by (kind, model_version) (rate(funnelcast_scores_computed_total[{R}]))",
               "{{kind}} {{model_version}}")),
        panel("Model AUC", "Held-out AUC of the current model.", "short",
              ("max by (kind) (funnelcast_model_auc)", "{{kind}}")),
    ],
    "forecasting": [
        panel("Forecast recomputations per second", "Forecast figures recomputed from events.", "ops",
              (f"sum(rate(funnelcast_forecast_recomputations_total[{R}]))", "recomputations")),
        panel("Forecast update lag p95", "From the causing event to the forecast update.", "s",
              (f"histogram_quantile(0.95, sum by (le) (rate(funnelcast_forecast_update_lag_seconds_bucket[{R}])))",
               "p95")),
    ],
    "notifications": [
        panel("Notifications per second", "By channel and outcome.", "ops",
              (f"sum by (channel, outcome) (rate(funnelcast_notifications_total[{R}]))", "{{channel}} {{outcome}}")),
        panel("Webhook delivery attempts", "By outcome (alert: > 20% not succeeded for 15 min).", "ops",
              (f"sum by (outcome) (rate(funnelcast_webhook_deliveries_total[{R}]))", "{{outcome}}"), stacked=True),
        panel("Push latency p95", "From the causing event to the notification on a WebSocket.", "s",
              (f"histogram_quantile(0.95, sum by (le) "
               f"(rate(funnelcast_notification_push_latency_seconds_bucket[{R}])))", "p95")),
        panel("Open WebSocket connections", "Per instance.", "short",
              ("sum by (instance) (funnelcast_websocket_connections)", "{{instance}}")),
        panel("Delivery workers", "notifications-worker processes (webhooks, e-mail) ready, and scraped.", "short",
              ('sum(funnelcast_ready{service="notifications-worker"})', "ready"),
              ('sum(up{job="funnelcast", service="notifications-worker"})', "up")),
    ],
}


def service_dashboard(name: str) -> dict[str, Any]:
    s = f'service="{name}"'
    panels = [
        panel("HTTP requests per second", "By route and status.", "reqps",
              (f"sum by (route, status) (rate(funnelcast_http_requests_total{{{s}}}[{R}]))", "{{route}} {{status}}")),
        panel("HTTP 5xx ratio", "Share of requests answered with a server error.", "percentunit",
              (f'sum(rate(funnelcast_http_requests_total{{{s}, status=~"5.."}}[{R}]))'
               f" / sum(rate(funnelcast_http_requests_total{{{s}}}[{R}]))", "5xx")),
        panel("HTTP latency p95 by route", "Request duration (SLO: 99% within 250 ms).", "s",
              (f"histogram_quantile(0.95, sum by (route, le) "
               f"(rate(funnelcast_http_request_duration_seconds_bucket{{{s}}}[{R}])))", "{{route}}")),
        panel("Latency SLO: share of slow requests", "Requests over 250 ms (error budget 1%), 5m and 1h windows.",
              "percentunit",
              ("service:funnelcast_http_slow:ratio_rate5m{" + s + "}", "5m"),
              ("service:funnelcast_http_slow:ratio_rate1h{" + s + "}", "1h")),
        panel("Events published per second", "By type.", "ops",
              (f"sum by (type) (rate(funnelcast_events_published_total{{{s}}}[{R}]))", "{{type}}"), stacked=True),
        panel("Outbox", "Backlog and the age of its oldest event.", "short",
              (f"max(funnelcast_outbox_backlog{{{s}}})", "backlog"),
              (f"max(funnelcast_outbox_oldest_unpublished_seconds{{{s}}})", "oldest (s)")),
        panel("Events consumed per second", "Applied, by type.", "ops",
              (f"sum by (type) (rate(funnelcast_events_consumed_total{{{s}}}[{R}]))", "{{type}}"), stacked=True),
        panel("Handler duration p95", "Time to apply one event, by type.", "s",
              (f"histogram_quantile(0.95, sum by (type, le) "
               f"(rate(funnelcast_handler_duration_seconds_bucket{{{s}}}[{R}])))", "{{type}}")),
        panel("Consumer lag", "By topic and partition.", "short",
              (f"sum by (topic, partition) (funnelcast_consumer_lag{{{s}}})", "{{topic}} [{{partition}}]")),
        panel("Failures and dead letters", "Events its consumers could not apply, and messages dead-lettered.",
              "short",
              (f"sum by (type) (increase(funnelcast_events_failed_total{{{s}}}[1h]))", "failed {{type}}"),
              (f"sum by (topic) (increase(funnelcast_dead_letters_total{{{s}}}[1h]))", "dead-lettered {{topic}}")),
        panel("Ready instances", "Instances whose /readyz answers 200, and instances scraped.", "short",
              (f"sum(funnelcast_ready{{{s}}})", "ready"), (f'sum(up{{job="funnelcast", {s}}})', "up")),
        *OWN_PANELS.get(name, []),
    ]
    return dashboard(f"funnelcast-{name}", f"Funnelcast {name}",
                     f"The {name} service: HTTP, events in and out, outbox, consumers, dead letters.", panels, [])


def render() -> dict[str, str]:
    boards = {"funnelcast-overview.json": overview()}
    boards.update({f"funnelcast-{name}.json": service_dashboard(name) for name in SERVICES})
    return {file: json.dumps(board, indent=2, ensure_ascii=False) + "\n" for file, board in boards.items()}


def main(argv: list[str]) -> int:
    stale = [f for f, text in render().items() if not (DASHBOARDS / f).exists() or (DASHBOARDS / f).read_text() != text]
    if "--check" in argv:
        for file in stale:
            print(f"deploy/grafana/dashboards/{file} differs from generate_dashboards.py", file=sys.stderr)
        return 1 if stale else 0
    for file, text in render().items():
        (DASHBOARDS / file).write_text(text, encoding="utf-8")
    print(f"wrote {len(render())} dashboards ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
