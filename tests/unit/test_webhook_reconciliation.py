"""The webhook side of the fault suite's reconciliation (tests/support/chaos.py): the tally, and what the
receiver counts as a delivery."""

import json
import socket

import httpx

from tests.support.chaos import WebhookReceiver, tally_webhooks


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


def test_a_request_whose_sender_died_before_its_body_is_no_delivery() -> None:
    """A SIGKILL of the notifications service can land after a request's headers were written and before its
    body (httpcore writes them separately). Recorded as a delivery, its event id read as "" made the
    mixed scenario's 'stranger'; the service sends it again whole, under the same webhook-id."""
    receiver = WebhookReceiver()
    receiver.start()
    try:
        body = json.dumps({"id": "e1"}).encode()
        headers = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nwebhook-id: msg_1\r\nContent-Length: %d\r\n\r\n"
        url = httpx.URL(receiver.url)
        with socket.create_connection((url.host, url.port), timeout=10) as cut:
            cut.sendall(headers % len(body) + body[:5])
            cut.shutdown(socket.SHUT_WR)  # the sender is gone: the rest of the body never comes
            answer = b"".join(iter(lambda: cut.recv(4096), b""))  # until the receiver closes the connection
        again = httpx.post(receiver.url, content=body, headers={"webhook-id": "msg_1"}, timeout=10)
        assert (answer, again.status_code, receiver.deliveries()) == (b"", 204, [("msg_1", "e1")])
    finally:
        receiver.stop()
