"""A delivery worker: `python -m services.notifications.worker`.

It runs only the webhook and e-mail delivery loops (workers.py, deliveries.py) against the service's
database, for services started with `FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER=true`. Attempts to
endpoints then never share the consumer's event loop and CPU: measured in bench/notifications.py, a
capture's notification waited seconds behind 800 webhook attempts a second in the same process. The
work is in the tables (leased with FOR UPDATE SKIP LOCKED), so any number of workers and service
instances share it, each delivery once; a worker wakes on the NOTIFY that queued deliveries send at
commit (a push hub that listens for nothing else but configuration changes). Settings, health,
readiness and metrics (`funnelcast_webhook_deliveries_total` ...) are the service's, on a port of its
own (shared/topology.py WORKERS: 8006, FUNNELCAST_NOTIFICATIONS_WORKER_PORT); it consumes no events.
"""

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from services.notifications.main import background, configure, service
from shared.service import ServiceDefinition, serve


@contextlib.asynccontextmanager
async def delivering(app: FastAPI) -> AsyncIterator[None]:
    async with background(app, configure(app), push=False, timers=False, deliveries=True):
        yield


worker = ServiceDefinition(name=service.name, routers=(APIRouter(lifespan=delivering),), migrations=service.migrations)

if __name__ == "__main__":
    serve(worker, process="notifications-worker")
