"""What a lead merge does to the follow-up timers and the daily digest's leads (services/notifications/
handlers.py `_merge_changes`): the merged lead is closed, the survivor is updated, never closed."""

from datetime import UTC, datetime, timedelta

from services.notifications.handlers import FOLLOW_UP_ESCALATION, FOLLOW_UP_REMINDER, _merge_changes
from services.notifications.store import LeadWatch, TimerChange
from shared.events.envelope import CloudEvent

MERGED_AT = datetime(2026, 11, 4, 2, 0, tzinfo=UTC)
FOLLOW_UPS = (FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION)


def merged(**survivor: object) -> CloudEvent:
    data = {"lead_id": "lead-keep", "merged_lead_id": "lead-gone", "merged_by": "mgr-1",
            "merged_at": MERGED_AT.isoformat(), "owner_id": "rep-1", **survivor}
    return CloudEvent("sales.lead.merged.v1", "/funnelcast/leads", "lead-keep", data, time=MERGED_AT)


def test_an_older_merge_closes_the_merged_lead_and_leaves_the_survivor_alone():
    assert _merge_changes(merged()) == (
        [TimerChange("lead-gone", FOLLOW_UPS)], [LeadWatch("lead-gone", closed=True)])


def test_a_survivor_contacted_by_the_moved_touches_has_its_reminders_stopped_and_stays_open():
    contacted = MERGED_AT - timedelta(days=1)
    timers, leads = _merge_changes(merged(status="contacted", grade="H", last_contacted_at=contacted.isoformat(),
                                          follow_up_due_at=(MERGED_AT + timedelta(days=4)).isoformat()))
    assert timers == [TimerChange("lead-gone", FOLLOW_UPS), TimerChange("lead-keep", FOLLOW_UPS)]
    assert leads == [LeadWatch("lead-gone", closed=True),
                     LeadWatch("lead-keep", grade="H", follow_up_due_at=MERGED_AT + timedelta(days=4),
                               contacted_at=contacted)]


def test_a_new_survivors_reminder_moves_to_the_earlier_due_time_unless_it_has_passed():
    due = MERGED_AT + timedelta(days=3)
    timers, _ = _merge_changes(merged(status="new", grade="A", follow_up_due_at=due.isoformat()))
    assert timers[1] == TimerChange("lead-keep", FOLLOW_UPS, FOLLOW_UP_REMINDER, "rep-1", due, {
        "lead_id": "lead-keep", "grade": "A", "due_at": due.isoformat(), "owner_id": "rep-1"})
    passed = MERGED_AT - timedelta(hours=1)
    timers, leads = _merge_changes(merged(status="new", follow_up_due_at=passed.isoformat()))
    assert timers == [TimerChange("lead-gone", FOLLOW_UPS)]  # its own timers may have reminded already
    assert not any(watch.closed for watch in leads if watch.lead_id == "lead-keep")
