"""Cursor pagination for list endpoints: stable under inserts, opaque to callers.

A cursor encodes the sort key and id of the last row returned; the next page asks for
rows after that pair (keyset pagination), so pages never skip or repeat a row that
already existed when the listing began.
"""

import base64
import json
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared.errors import Unprocessable

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(sort_value: Any, row_id: str) -> str:
    raw = json.dumps([sort_value, row_id], default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort_value, row_id = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise Unprocessable(f"cursor is not one this service issued: {exc}") from None
    if not isinstance(row_id, str):
        raise Unprocessable("cursor is not one this service issued")
    return sort_value, row_id


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1 or limit > MAX_LIMIT:
        raise Unprocessable(f"limit must be between 1 and {MAX_LIMIT}")
    return limit
