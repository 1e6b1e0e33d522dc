"""The relay's checkpoint: where to re-publish from when a broker restarts empty."""

import collections
import importlib

from shared.outbox import SentBatch, checkpoint_position
from shared.topology import SERVICES, TOPICS


def sent(*batches: SentBatch) -> "collections.deque[SentBatch]":
    return collections.deque(batches)


def test_consumed_batches_are_dropped_and_the_checkpoint_is_the_oldest_left() -> None:
    batches = sent(SentBatch(1, 10, {0: 4, 1: 4}), SentBatch(11, 20, {0: 9}), SentBatch(21, 30, {1: 9}))
    committed = [{0: 5, 1: 5}, {0: 10, 1: 5}]  # both groups past the first batch, one not past the second
    assert checkpoint_position(batches, committed, next_position=31) == 11
    assert [b.min_position for b in batches] == [11, 21]


def test_everything_consumed_means_from_the_next_position() -> None:
    batches = sent(SentBatch(1, 10, {0: 4}), SentBatch(11, 20, {0: 9}))
    assert checkpoint_position(batches, [{0: 10}], next_position=21) == 21
    assert not batches


def test_a_group_without_a_commit_has_consumed_nothing() -> None:
    batches = sent(SentBatch(1, 10, {0: 4}))
    assert checkpoint_position(batches, [{0: 5}, {0: -1}], next_position=11) == 1
    assert checkpoint_position(batches, [{0: 5}, {}], next_position=11) == 1


def test_a_row_that_committed_late_lowers_the_checkpoint() -> None:
    # position 5 committed after 6..10 had been sent: it went out in the next batch
    batches = sent(SentBatch(6, 10, {0: 4}), SentBatch(5, 12, {0: 7}))
    assert checkpoint_position(batches, [{0: 5}], next_position=13) == 5


def test_the_topology_names_every_consumer_of_every_topic() -> None:
    """A publisher waits for the groups the topology names: they must be the services that consume."""
    consumers: dict[str, set[str]] = collections.defaultdict(set)
    for name in SERVICES:
        definition = importlib.import_module(f"{SERVICES[name].module}.main").service
        for topic in definition.consumed_topics:
            consumers[topic].add(name)
    for topic in TOPICS.values():
        assert set(topic.consumers) == consumers[topic.name], topic.name
