"""`funnelcast status` figures from a service's /metrics text."""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from shared.runtime.observe import figures_from_metrics, service_figures
from tests.support.waiting import free_port


def test_figures_sum_lag_over_partitions_and_leave_dead_letters_to_the_broker() -> None:
    registry = CollectorRegistry()
    lag = Gauge("funnelcast_consumer_lag", "", ["topic", "partition", "group"], registry=registry)
    lag.labels("sales.leads", "0", "funnelcast-scoring").set(40)
    lag.labels("sales.leads", "1", "funnelcast-scoring").set(2)
    lag.labels("sales.opportunities", "0", "funnelcast-scoring").set(1)
    Gauge("funnelcast_outbox_backlog", "", registry=registry).set(17)
    dead = Counter("funnelcast_dead_letters_total", "", ["topic"], registry=registry)
    dead.labels("sales.leads.dlq").inc(3)
    dead.labels("sales.opportunities.dlq").inc()
    Counter("funnelcast_events_published_total", "", ["type"], registry=registry).labels("x").inc(99)
    text = generate_latest(registry).decode()
    # the dead-letter counter restarts with the process: status counts what waits in the .dlq topics instead
    assert figures_from_metrics(text) == {"consumer_lag": 43, "outbox_backlog": 17}


def test_a_service_that_does_not_answer_has_no_figures() -> None:
    assert service_figures(free_port(), timeout_s=0.5) == {"consumer_lag": None, "outbox_backlog": None}


def test_figures_are_read_over_http() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = b"# TYPE funnelcast_outbox_backlog gauge\nfunnelcast_outbox_backlog 5.0\n"

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert service_figures(server.server_address[1]) == {"consumer_lag": 0, "outbox_backlog": 5}
    finally:
        server.shutdown()
