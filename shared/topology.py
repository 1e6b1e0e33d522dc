"""The shape of the system: its services, their ports and the topics between them.

One place, read by the runtime, the services, the deployment tests and the docs.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    owns: str

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def database(self) -> str:
        return f"funnelcast_{self.name}"

    @property
    def source(self) -> str:
        """The CloudEvents `source` of every event this service publishes."""
        return f"/funnelcast/{self.name}"


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("leads", 8001, "leads, touches, campaigns"),
        Service("opportunities", 8002, "accounts, contacts, opportunities, quotes, contracts"),
        Service("scoring", 8003, "lead scores, opportunity win probabilities, account tiers, models"),
        Service("forecasting", 8004, "forecasts, quotas, funnel analytics"),
        Service("notifications", 8005, "rules, inbox, push streams, webhooks, e-mail"),
    )
}


@dataclass(frozen=True)
class Worker:
    """A process of a service's own beside it: the service's image, settings and database, another entry
    point (`python -m <module>`), and a port of its own for /healthz, /readyz and /metrics."""

    name: str
    service: str
    module: str
    port: int
    does: str
    # the variable that, set to true on the service, leaves this work to the worker; `funnelcast up`,
    # docker-compose.yml and deploy/k8s set it wherever they run the worker
    hand_over: str


WORKERS: dict[str, Worker] = {
    w.name: w
    for w in (
        Worker("notifications-worker", "notifications", "services.notifications.worker", 8006,
               "webhook and e-mail deliveries", "FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER"),
    )
}

# Every process the system runs, by name: the services, then their workers.
PROCESSES: dict[str, Service | Worker] = {**SERVICES, **WORKERS}


def port_variable(process: str) -> str:
    """The setting of a process's port: FUNNELCAST_LEADS_PORT, FUNNELCAST_NOTIFICATIONS_WORKER_PORT."""
    return f"FUNNELCAST_{process.upper().replace('-', '_')}_PORT"


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    publisher: str  # the one service whose outbox feeds this topic
    # The services that consume it (each as group funnelcast-<name>): a publisher re-publishing to a
    # new, empty broker starts from the oldest event one of them may not have consumed (shared/outbox.py).
    # A unit test checks this against the services' handlers; the relay also waits for any other group
    # that has committed offsets on the topic.
    consumers: tuple[str, ...] = ()

    @property
    def consumer_groups(self) -> list[str]:
        return [f"funnelcast-{name}" for name in self.consumers]

    @property
    def dead_letters(self) -> str:
        return f"{self.name}.dlq"


# Partition counts bound how many consumer instances share a topic's work;
# six lets up to six replicas of a consumer service split it.
TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("sales.leads", 6, "leads", ("opportunities", "scoring", "forecasting", "notifications")),
        Topic("sales.campaigns", 3, "leads", ("forecasting", "notifications")),
        Topic("sales.accounts", 6, "opportunities", ("notifications",)),
        Topic("sales.opportunities", 6, "opportunities", ("scoring", "forecasting", "notifications")),
        Topic("sales.contracts", 6, "opportunities", ("scoring", "forecasting", "notifications")),
        Topic("sales.scores", 6, "scoring", ("opportunities", "forecasting", "notifications")),
        Topic("sales.forecasts", 3, "forecasting", ("notifications",)),
        Topic("sales.notifications", 3, "notifications"),
    )
}


def published_topics(service: str) -> list[str]:
    """The topics a service publishes to (each topic has one publishing service)."""
    return [t.name for t in TOPICS.values() if t.publisher == service]


def all_topic_names() -> list[str]:
    """Every topic the system uses, dead-letter topics included."""
    names = list(TOPICS)
    return names + [TOPICS[n].dead_letters for n in names]
