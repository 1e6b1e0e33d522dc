"""The README's event catalogue is the registry's, not a copy drifting from it."""

import re
from pathlib import Path

from shared.events.catalog import EVENT_TYPES

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_catalogue_lists_every_event_type_and_no_other() -> None:
    rows = re.findall(r"^\| `(sales\.[a-z_.]+\.v\d+)` \| `([a-z.]+)` \|", README.read_text(encoding="utf-8"), re.M)
    assert set(rows) == {(e.type, e.topic) for e in EVENT_TYPES.values()}
