"""A stop's grace period is one budget (shared/service.py StopDeadline): counted from the signal, each stage
of the stop has what the stages before it left, and nothing once it has run out."""

from shared.service import StopDeadline


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_each_stage_has_what_the_stages_before_it_left() -> None:
    clock = ManualClock()
    deadline = StopDeadline(10.0, clock)  # the signal
    assert deadline.left() == 10.0  # the HTTP drain may take it all
    clock.now += 4.0  # the requests in flight finished
    assert deadline.left() == 6.0  # the webhook attempts in flight
    clock.now += 5.5
    assert deadline.left() == 0.5  # the consumer's stop


def test_once_the_grace_period_has_run_out_every_later_stage_has_nothing() -> None:
    clock = ManualClock()
    deadline = StopDeadline(1.0, clock)
    clock.now += 3.0  # a drain cut short only after its own work, e.g. uvicorn's fixed pause
    assert deadline.left() == 0.0  # not negative: the relay's flush is cut short at once
    assert deadline.grace_s == 1.0  # what the stages cut short report
