"""A running service keeps what start-up built out of the garbage collector's full collections
(gc.freeze), and gives it back to the collector when it stops."""

import gc

from services.scoring.main import service as scoring
from shared.service import ServiceRuntime
from shared.settings import Settings
from tests.support.waiting import eventually


async def test_start_up_is_frozen_while_the_service_runs(settings: Settings) -> None:
    runtime = ServiceRuntime(scoring, settings)
    await runtime.start()
    try:
        async def frozen() -> bool:  # the freeze comes last, once the consumer app has started
            return gc.get_freeze_count() > 0

        await eventually(frozen, timeout=60)
        assert runtime.stream is not None and runtime.relay is not None and runtime.relay.is_leader
    finally:
        await runtime.stop()
    assert gc.get_freeze_count() == 0
