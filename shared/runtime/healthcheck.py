"""The container image's health check (deploy/Dockerfile): `python -m shared.runtime.healthcheck` exits 0
when the process the container runs answers GET /healthz, 1 otherwise.

An image is built per service ($SERVICE) and runs the service or one of its workers (shared/topology.py
WORKERS: the notifications delivery worker runs from the notifications image with another command), each
on a port of its own. So the check asks each of the service's processes at its port (FUNNELCAST_*_PORT
overrides honoured): only the one the container runs listens there.
"""

import os
import sys
import urllib.request

from shared.settings import Settings
from shared.topology import WORKERS

TIMEOUT_S = 4.0  # below the HEALTHCHECK's --timeout


def ports_of(service: str, settings: Settings) -> list[int]:
    """The ports of a service's own process and of its workers."""
    processes = [service, *(worker.name for worker in WORKERS.values() if worker.service == service)]
    return [settings.port_for(process) for process in processes]


def answers_healthz(port: int) -> bool:
    # No proxy: an HTTP(S)_PROXY in the container's environment must not capture a request to loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as answer:
            return 200 <= int(answer.status) < 300
    except OSError:  # refused, timed out, or an error status (HTTPError)
        return False


def main() -> int:
    return 0 if any(answers_healthz(port) for port in ports_of(os.environ["SERVICE"], Settings())) else 1


if __name__ == "__main__":
    sys.exit(main())
