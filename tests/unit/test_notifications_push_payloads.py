"""How committed notifications travel to every instance: NOTIFY payloads that pack several
notifications, each payload under Postgres's size limit, in order."""

import json
from typing import Any

from services.notifications.store import push_payloads

POSTGRES_LIMIT = 8000  # bytes: Postgres refuses a NOTIFY payload this long


def notification(n: int, body: str = "H级线索（5天内购买）已分配给您。") -> dict[str, Any]:
    return {"id": f"00000000-0000-0000-0000-{n:012d}", "recipient": f"rep-{n % 7}", "seq": n, "title": f"线索{n}",
            "body": body}


def test_notifications_are_packed_into_few_payloads_under_the_limit_in_order() -> None:
    messages = [notification(n) for n in range(200)]
    payloads = push_payloads(messages)
    assert all(len(p.encode()) < POSTGRES_LIMIT for p in payloads)
    assert len(payloads) < 20
    assert [m for p in payloads for m in json.loads(p)] == messages


def test_a_notification_too_large_to_travel_goes_as_a_reference_between_the_others() -> None:
    huge = notification(2, body="长" * 5000)
    payloads = push_payloads([notification(1), huge, notification(3)])
    assert all(len(p.encode()) < POSTGRES_LIMIT for p in payloads)
    assert [m for p in payloads for m in json.loads(p)] == [
        notification(1), {"id": huge["id"], "recipient": "rep-2", "seq": 2, "ref": True}, notification(3)]


def test_no_notification_no_payload() -> None:
    assert push_payloads([]) == []
