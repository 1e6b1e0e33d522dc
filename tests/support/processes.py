"""One service process (or a worker: shared/topology.py PROCESSES) run as `funnelcast up` runs it, on a test's
Postgres and broker, so a test can signal it, restart it and read its log."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.topology import PROCESSES, port_variable
from tests.support.waiting import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    name: str  # a key of PROCESSES: "leads", "notifications-worker" ...
    database_url: str
    kafka_bootstrap: str
    home: Path
    grace_s: float  # FUNNELCAST_SHUTDOWN_GRACE_S
    env: dict[str, str] = field(default_factory=dict)  # more FUNNELCAST_* settings
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    _log_from: int = 0  # where this run's output begins in `log_file`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def start(self) -> None:
        """Start the process (again); its output is appended to `log_file`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_")}
        env.update({
            "FUNNELCAST_DATABASE_URL": self.database_url, "FUNNELCAST_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "FUNNELCAST_KAFKA_IDEMPOTENCE": "false",  # Tansu does not implement InitProducerId
            port_variable(self.name): str(self.port), "FUNNELCAST_HOME": str(self.home),
            "FUNNELCAST_SHUTDOWN_GRACE_S": str(self.grace_s), "PYTHONUNBUFFERED": "1", **self.env,
        })
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._log_from = log.tell()
            self.popen = subprocess.Popen([sys.executable, "-m", PROCESSES[self.name].module], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until /readyz answers 200 (failing at once if the process died)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            async def answers() -> bool:
                assert self.popen is not None
                assert self.popen.poll() is None, f"{self.name} exited:\n{self.log()[-3000:]}"
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, timeout=timeout, interval=0.2)

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; wait for the exit (at most twice the grace period). Its exit code and the seconds it took."""
        assert self.popen is not None
        signalled = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.popen.wait, 2 * self.grace_s + 10)
        return code, time.monotonic() - signalled

    def stopped_cleanly(self, code: int) -> bool:
        """uvicorn re-raises the signal once its shutdown is complete, so a clean stop exits "by SIGTERM"."""
        return code in (0, -signal.SIGTERM) and "Application shutdown complete." in self.log()

    def kill(self) -> None:
        """SIGKILL, if it still runs (a test's clean-up)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def log(self) -> str:
        """What the current (or last) run wrote."""
        with self.log_file.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")
