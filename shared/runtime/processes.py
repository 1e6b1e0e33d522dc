"""Process and port plumbing shared by the embedded servers and the supervisor.

A process is named by its pid *and* its start time: `funnelcast down` may run long after
`up`, and a recycled pid must never be signalled by mistake.
"""

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    create_time: float | None = None

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return cls(pid, None)

    def alive(self) -> bool:
        """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
        try:
            process = psutil.Process(self.pid)
            if self.create_time is not None and abs(process.create_time() - self.create_time) > 1.0:
                return False  # the pid was recycled
            return bool(process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def signal(self, signum: int, group: bool = False) -> None:
        """Send a signal to the process (or its process group) if it is still the same process."""
        if not self.alive():
            return
        try:
            if group and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_processes(refs: list[ProcessRef], grace_s: float, group: bool = True) -> list[ProcessRef]:
    """SIGTERM every process, SIGKILL what is left after `grace_s`; returns the ones that were killed."""
    for ref in refs:
        ref.signal(signal.SIGTERM, group=group)
    wait_until(lambda: not any(ref.alive() for ref in refs), grace_s)
    leftovers = [ref for ref in refs if ref.alive()]
    for ref in leftovers:
        ref.signal(signal.SIGKILL, group=group)
    wait_until(lambda: not any(ref.alive() for ref in leftovers), 5.0)
    return leftovers


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on now (the system's choice), for a server started next."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """True when something listens on host:port (a bind with SO_REUSEADDR fails only for a listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    if path is None:
        return ""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
