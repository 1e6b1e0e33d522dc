"""The webhook side of the fault suite's reconciliation (tests/support/chaos.py tally_webhooks)."""

from tests.support.chaos import tally_webhooks


def test_every_wanted_event_delivered_under_one_webhook_id_is_clean() -> None:
    tally = tally_webhooks([("msg_1", "e1"), ("msg_2", "e2")], wanted={"e1", "e2"}, published={"e1", "e2"})
    assert (tally.expected, tally.delivered, tally.lost, tally.twice, tally.id_repeats, tally.strangers) == (
        2, 2, [], 0, 0, [])


def test_an_event_never_delivered_is_lost() -> None:
    tally = tally_webhooks([("msg_1", "e1")], wanted={"e1", "e2"}, published={"e1", "e2"})
    assert (tally.delivered, tally.lost) == (1, ["e2"])


def test_the_same_webhook_id_again_is_a_repeat_not_a_second_application() -> None:
    tally = tally_webhooks([("msg_1", "e1"), ("msg_1", "e1"), ("msg_1", "e1")], wanted={"e1"}, published={"e1"})
    assert (tally.delivered, tally.twice, tally.id_repeats) == (1, 0, 2)


def test_one_event_under_two_webhook_ids_is_delivered_twice() -> None:
    tally = tally_webhooks([("msg_1", "e1"), ("msg_2", "e1")], wanted={"e1"}, published={"e1"})
    assert (tally.delivered, tally.twice, tally.id_repeats) == (1, 1, 0)


def test_deliveries_of_other_scenarios_events_count_only_as_strangers_when_never_published() -> None:
    tally = tally_webhooks([("msg_0", "earlier"), ("msg_9", "poison-1")], wanted={"e1"},
                           published={"earlier", "e1"})
    assert (tally.delivered, tally.lost, tally.id_repeats, tally.strangers) == (0, ["e1"], 0, ["poison-1"])
