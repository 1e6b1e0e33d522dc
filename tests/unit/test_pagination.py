import pytest

from shared.errors import Unprocessable
from shared.pagination import MAX_LIMIT, clamp_limit, decode_cursor, encode_cursor


def test_a_cursor_round_trips() -> None:
    cursor = encode_cursor("2026-11-23T08:00:00+00:00", "lead-7")
    assert decode_cursor(cursor) == ("2026-11-23T08:00:00+00:00", "lead-7")


@pytest.mark.parametrize("cursor", ["not base64!", "e30", encode_cursor(1, "x")[:-3]])
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(Unprocessable, match="cursor"):
        decode_cursor(cursor)


def test_limits_are_bounded() -> None:
    assert clamp_limit(None) == 50
    assert clamp_limit(MAX_LIMIT) == MAX_LIMIT
    for bad in (0, MAX_LIMIT + 1):
        with pytest.raises(Unprocessable):
            clamp_limit(bad)
