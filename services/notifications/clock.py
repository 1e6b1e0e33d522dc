"""The service's sense of now: the system clock, or one a test moves forward."""

from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, by: timedelta) -> None:
        """Move this clock forward (tests: make timers fall due without waiting)."""
        self.offset += by
