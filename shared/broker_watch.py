"""Which broker is this? A new, empty broker must be told from the one events went to.

The embedded broker (Tansu) keeps topics and committed offsets in memory: a restarted one
is empty, and everything published to the old one and not yet consumed is gone. Each start
of the embedded broker has a cluster id of its own (shared/runtime/broker.py), while Apache
Kafka keeps its cluster id across restarts (meta.properties). So the cluster id is the
broker's identity: the same id means the same log, a new id means a new, empty log.

Both halves of a service act on a new identity (docs/broker-restarts.md):
- the outbox relay re-publishes from its checkpoint (shared/outbox.py);
- the consumer starts a new Faust app that reads every partition from offset 0 until it has
  committed there itself (shared/streaming.py): the old app's in-memory read positions point
  into the lost log (Faust drops records below them), and so do any offsets it committed on
  the new broker before it was stopped. The inbox makes the repeats harmless.
"""

import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

# How often a consumer asks the broker who it is (a metadata request; cheap).
WATCH_INTERVAL_S = 0.5


class BrokerWatch:
    """The broker's identity and the consumer groups' committed offsets, over one admin client."""

    def __init__(self, bootstrap_servers: str, request_timeout_ms: int = 5000) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.request_timeout_ms = request_timeout_ms
        self._admin: AIOKafkaAdminClient | None = None

    async def identity(self) -> str:
        """The broker's cluster id; raises KafkaError or OSError while it cannot be reached."""
        metadata = await self._call("describe_cluster")
        return str(metadata["cluster_id"])

    async def groups(self) -> list[str]:
        """Every consumer group the broker knows."""
        return [str(group[0]) for group in await self._call("list_consumer_groups")]

    async def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The group's committed offset per partition of `topic` (-1: none)."""
        # Partitions named explicitly: Tansu drops the connection on an "all partitions" OffsetFetch.
        offsets = await self._call(
            "list_consumer_group_offsets", group, partitions=[TopicPartition(topic, p) for p in partitions]
        )
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, request_timeout_ms=self.request_timeout_ms
                )
                await admin.start()
                self._admin = admin
            return await getattr(self._admin, method)(*args, **kwargs)
        except (KafkaError, OSError):
            await self.close()  # start afresh next time: the broker may be another one by then
            raise

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except (KafkaError, OSError) as exc:
                log.debug("closing the broker watch: %r", exc)
