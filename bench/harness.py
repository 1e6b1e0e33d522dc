"""What every benchmark needs: its own embedded Postgres and broker, and percentiles."""

import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.support.waiting import free_port


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    broker: TansuBroker
    settings: Settings


@contextlib.contextmanager
def embedded_stack() -> Iterator[Stack]:
    """A Postgres and a Tansu of the benchmark's own, configured as `make run` configures them."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        home = Path(root)
        postgres = EmbeddedPostgres(home / "postgres", free_port(), home / "postgres.log")
        broker = TansuBroker(free_port(), home / "tansu.log")
        postgres.start()
        broker.start()
        try:
            settings = Settings(
                database_url=postgres.url, kafka_bootstrap=broker.bootstrap, kafka_idempotence=False, home=home
            )
            yield Stack(postgres, broker, settings)
        finally:
            broker.stop()
            postgres.stop()


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 in milliseconds."""
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p95": cuts[94] * 1000, "p99": cuts[98] * 1000}
