"""A handler's working set may refer back to its transaction (the scoring service's `Working` holds it,
forecasting and notifications close over it in their before-commit actions). Once the transaction is
over, reference counting alone must free the set: left to Python's cyclic collector, the scoring
service's loaded rows, scores and events piled up into full collections that paused its consumer for
tens of milliseconds (services/scoring/README.md)."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.db import Database, Transaction


class _WorkingSet:
    """What a handler keeps for its transaction: a reference back to it, and an action before commit."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.saved = False
        tx.state["working"] = self
        tx.before_commit(self.save)

    async def save(self) -> None:
        self.saved = True


@pytest.fixture
def no_cyclic_collection() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.disable()
    yield
    gc.enable()


@pytest.mark.usefixtures("no_cyclic_collection")
async def test_a_committed_transaction_leaves_no_cycle_through_its_working_set(db: Database) -> None:
    async with db.transaction() as tx:
        working = _WorkingSet(tx)
    assert working.saved
    freed = weakref.ref(working)
    del working, tx
    assert freed() is None


@pytest.mark.usefixtures("no_cyclic_collection")
async def test_a_failed_transaction_leaves_no_cycle_through_its_working_set(db: Database) -> None:
    freed = None
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            freed = weakref.ref(_WorkingSet(tx))
            raise RuntimeError("the handler failed")
    del tx
    assert freed is not None and freed() is None
