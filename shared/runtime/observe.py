"""A running service's operational figures, read from its /metrics: for `funnelcast status`.

Its dead letters are not among them: the service's counter starts again at 0 with the process, while
the letters wait in the dead-letter topics until re-driven, so status counts them there
(shared/runtime/dlq.py `waiting_per_group`)."""

import http.client
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

FIGURES = ("consumer_lag", "outbox_backlog")


def figures_from_metrics(text: str) -> dict[str, int]:
    """Consumer lag (summed over its topics and partitions) and outbox backlog."""
    sums = dict.fromkeys(FIGURES, 0.0)
    names = {
        "funnelcast_consumer_lag": "consumer_lag",
        "funnelcast_outbox_backlog": "outbox_backlog",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            figure = names.get(sample.name)
            if figure is not None:
                sums[figure] += sample.value
    return {figure: int(value) for figure, value in sums.items()}


def service_figures(port: int, timeout_s: float = 2.0) -> dict[str, Any]:
    """The figures of the service on 127.0.0.1:`port`, or None for each when it does not answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", "/metrics")
        answer = connection.getresponse()
        if answer.status != 200:
            return dict.fromkeys(FIGURES)
        return dict(figures_from_metrics(answer.read().decode()))
    except (OSError, http.client.HTTPException, ValueError):
        return dict.fromkeys(FIGURES)
    finally:
        connection.close()
