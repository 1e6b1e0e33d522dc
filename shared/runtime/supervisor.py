"""Starting and stopping the whole system on one machine.

`Stack` starts the embedded database and broker (unless external ones are configured), creates
the topics, runs every service and every service's worker (shared/topology.py PROCESSES) as its own
process and waits for their `/readyz`. Every pid it
starts is recorded in FUNNELCAST_HOME/runtime.json as soon as it exists, so `funnelcast down`
(`stop_recorded`) can stop the lot from another process, even after a crash of `up`.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared import kafka
from shared.runtime.broker import TansuBroker, stop_broker_process
from shared.runtime.postgres import EmbeddedPostgres
from shared.runtime.processes import LOCALHOST, ProcessRef, log_tail, port_in_use, stop_processes, wait_until
from shared.settings import Settings
from shared.topology import PROCESSES, WORKERS, port_variable

RUNTIME_FILE = "runtime.json"
REPLICA_PORT_STEP = 10  # instance k of a service listens on its base port + 10 * k
TOPIC_CREATION_TIMEOUT_S = 30.0
# A stopping service spends at most its grace period on its stages (shared/service.py StopDeadline), then
# closes its producer and database pool and exits: a moment, unless something hangs.
EXIT_AFTER_GRACE_S = 5.0

Output = Callable[[str], None]


class StackError(RuntimeError):
    pass


# --- what runs, and the record of it -----------------------------------------------------------


@dataclass(frozen=True)
class ServiceInstance:
    name: str
    instance: int
    port: int

    @property
    def label(self) -> str:
        return self.name if self.instance == 0 else f"{self.name}-{self.instance}"

    @property
    def readyz_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/readyz"


def plan_instances(settings: Settings, replicas: dict[str, int] | None = None) -> list[ServiceInstance]:
    """Every process to run: one per service and per worker, or N with --replicas (ports base + 10 * k)."""
    replicas = replicas or {}
    unknown = set(replicas) - set(PROCESSES)
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(sorted(unknown))}; services are {', '.join(PROCESSES)}")
    return [
        ServiceInstance(name, k, settings.port_for(name) + REPLICA_PORT_STEP * k)
        for name in PROCESSES
        for k in range(replicas.get(name, 1))
    ]


@dataclass
class ServiceRecord:
    name: str
    instance: int
    port: int
    pid: int
    create_time: float | None
    log: str  # relative to FUNNELCAST_HOME

    @property
    def label(self) -> str:
        return ServiceInstance(self.name, self.instance, self.port).label

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)


@dataclass
class ManagedServer:
    """The embedded broker or database, when this runtime started it."""

    pid: int
    create_time: float | None
    port: int
    log: str
    data_dir: str | None = None  # Postgres only

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.create_time)


@dataclass
class RuntimeState:
    kafka_bootstrap: str
    database_url: str  # without its password
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    supervisor: int | None = None  # pid of a foreground `funnelcast up`
    supervisor_create_time: float | None = None
    postgres: ManagedServer | None = None
    broker: ManagedServer | None = None
    services: list[ServiceRecord] = field(default_factory=list)

    @classmethod
    def load(cls, home: Path) -> "RuntimeState | None":
        path = home / RUNTIME_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read {path}: {exc}; remove it once nothing it names is running") from None
        return cls(
            kafka_bootstrap=raw["kafka_bootstrap"],
            database_url=raw["database_url"],
            started_at=raw["started_at"],
            supervisor=raw.get("supervisor"),
            supervisor_create_time=raw.get("supervisor_create_time"),
            postgres=ManagedServer(**raw["postgres"]) if raw.get("postgres") else None,
            broker=ManagedServer(**raw["broker"]) if raw.get("broker") else None,
            services=[ServiceRecord(**s) for s in raw.get("services", [])],
        )

    def save(self, home: Path) -> None:
        path = home / RUNTIME_FILE
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)

    @property
    def supervisor_process(self) -> ProcessRef | None:
        return ProcessRef(self.supervisor, self.supervisor_create_time) if self.supervisor else None

    def all_processes(self) -> list[ProcessRef]:
        refs = [s.process for s in self.services]
        refs += [server.process for server in (self.broker, self.postgres) if server]
        supervisor = self.supervisor_process
        return refs + ([supervisor] if supervisor else [])

    def live_processes(self) -> list[ProcessRef]:
        return [ref for ref in self.all_processes() if ref.alive()]


def redact_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def readyz_status(port: int, timeout: float = 1.0) -> int | None:
    """The HTTP status of GET /readyz on 127.0.0.1:port, or None when nothing answers."""
    # No proxy: an HTTP(S)_PROXY in the environment must not capture requests to localhost.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{LOCALHOST}:{port}/readyz", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


# --- starting ------------------------------------------------------------------------------------


class Stack:
    """The processes of one `funnelcast up`: start them, wait for them, watch them, stop them."""

    def __init__(
        self,
        settings: Settings,
        home: Path,
        instances: list[ServiceInstance],
        out: Output = print,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """`extra_env`: variables for the service processes beyond this process's environment."""
        self.settings = settings
        self.extra_env = dict(extra_env or {})
        self.home = home.absolute()
        self.instances = instances
        self.out = out
        self.logs = self.home / "logs"
        self.embedded_postgres = settings.database_url is None
        self.embedded_broker = settings.kafka_bootstrap is None
        self.state: RuntimeState | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.broker: TansuBroker | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}

    @property
    def database_url(self) -> str:
        return self.settings.server_url  # the embedded server's URL unless FUNNELCAST_DATABASE_URL is set

    @property
    def kafka_bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers  # likewise for the broker

    def check_free(self) -> None:
        """Refuse to start over a live stack or on busy ports, before starting anything."""
        previous = RuntimeState.load(self.home)
        if previous is not None:
            live = previous.live_processes()
            if live:
                pids = ", ".join(str(ref.pid) for ref in live)
                raise StackError(
                    f"a Funnelcast stack is already running from {self.home} (pids {pids}, started "
                    f"{previous.started_at}); run `funnelcast down` first, or `funnelcast status` to see it"
                )
            (self.home / RUNTIME_FILE).unlink()  # stale: nothing it names is alive
        wanted = {i.label: i.port for i in self.instances}
        if self.embedded_broker:
            wanted["broker"] = self.settings.embedded_kafka_port
        busy = [f"{who} port {port}" for who, port in wanted.items() if port_in_use(port)]
        if busy:
            raise StackError(f"cannot start: {', '.join(busy)} already in use on {LOCALHOST} (another stack?)")

    def start(self, ready_timeout: float) -> None:
        """Start everything and wait until every service is ready; on failure raise StackError (and leave
        stopping to `stop`)."""
        self.check_free()
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.state = RuntimeState(
            kafka_bootstrap=self.kafka_bootstrap, database_url=redact_url(self.database_url),
            supervisor=os.getpid(), supervisor_create_time=ProcessRef.of(os.getpid()).create_time,
        )
        if self.embedded_postgres:
            self._start_postgres()
        if self.embedded_broker:
            self._start_broker()
        self._create_topics()
        for instance in self.instances:
            self._start_service(instance)
        self._wait_ready(ready_timeout)

    def _start_postgres(self) -> None:
        assert self.state is not None
        started = time.monotonic()
        log_file = self._rotated(self.logs / "postgres.log")
        self.postgres = EmbeddedPostgres(self.home / "postgres", self.settings.embedded_postgres_port, log_file)
        self.out(f"starting Postgres on {LOCALHOST}:{self.postgres.port} (data in {self.postgres.data_dir})")
        self.postgres.start()
        pid = self.postgres.pid
        assert pid is not None
        ref = ProcessRef.of(pid)
        self.state.postgres = ManagedServer(
            pid, ref.create_time, self.postgres.port, "logs/postgres.log", str(self.postgres.data_dir)
        )
        self.state.save(self.home)
        self.timings["postgres"] = time.monotonic() - started

    def _start_broker(self) -> None:
        assert self.state is not None
        started = time.monotonic()
        self.broker = TansuBroker(self.settings.embedded_kafka_port, self._rotated(self.logs / "broker.log"),
                                  self.settings.tansu_bin)
        self.out(f"starting the Tansu broker on {self.broker.bootstrap} (in memory: topics start empty)")
        self.broker.start()
        pid = self.broker.pid
        assert pid is not None
        ref = ProcessRef.of(pid)
        self.state.broker = ManagedServer(pid, ref.create_time, self.broker.port, "logs/broker.log")
        self.state.save(self.home)
        self.timings["broker"] = time.monotonic() - started

    def _create_topics(self) -> None:
        started = time.monotonic()
        settings = self.settings.model_copy(update={"kafka_bootstrap": self.kafka_bootstrap})
        deadline = started + TOPIC_CREATION_TIMEOUT_S
        while True:
            try:
                asyncio.run(kafka.ensure_topics(settings))
                break
            except Exception as exc:  # noqa: BLE001 - any failure is retried until the deadline, then reported
                if time.monotonic() >= deadline:
                    raise StackError(f"cannot create the topics on {self.kafka_bootstrap}: {exc!r}") from None
                time.sleep(0.5)
        self.timings["topics"] = time.monotonic() - started

    def _service_env(self, instance: ServiceInstance) -> dict[str, str]:
        # a worker that runs takes its work from its service (in every process: the worker reads it too)
        hand_overs = {WORKERS[i.name].hand_over: "true" for i in self.instances if i.name in WORKERS}
        env = {
            **os.environ,
            "FUNNELCAST_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "FUNNELCAST_DATABASE_URL": self.database_url,
            "FUNNELCAST_HOME": str(self.home),
            port_variable(instance.name): str(instance.port),
            **hand_overs,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.embedded_broker or not self.settings.kafka_idempotence:
            env["FUNNELCAST_KAFKA_IDEMPOTENCE"] = "false"  # Tansu does not implement InitProducerId
        return env

    def _start_service(self, instance: ServiceInstance) -> None:
        assert self.state is not None
        log_file = self._rotated(self.logs / f"{instance.label}.log")
        with log_file.open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", PROCESSES[instance.name].module],
                env=self._service_env(instance), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[instance.label] = child
        ref = ProcessRef.of(child.pid)
        self.state.services.append(
            ServiceRecord(instance.name, instance.instance, instance.port, child.pid, ref.create_time,
                          f"logs/{instance.label}.log")
        )
        self.state.save(self.home)

    def _wait_ready(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        pending = {i.label: i for i in self.instances}
        last_status: dict[str, int | None] = {}
        while pending:
            for label, instance in list(pending.items()):
                code = self.children[label].poll()
                if code is not None:
                    raise StackError(
                        f"service {label} {_exit_description(code)} before it was ready\n"
                        f"--- {self.logs / f'{label}.log'} ---\n{log_tail(self.logs / f'{label}.log')}"
                    )
                last_status[label] = readyz_status(instance.port)
                if last_status[label] == 200:
                    del pending[label]
            if not pending:
                break
            if time.monotonic() >= deadline:
                reports = []
                for label, instance in pending.items():
                    answer = last_status.get(label)
                    said = f"/readyz answered {answer}" if answer else "no answer on /readyz"
                    log_file = self.logs / f"{label}.log"
                    reports.append(
                        f"service {label} (pid {self.children[label].pid}, port {instance.port}) is not ready "
                        f"after {timeout:g} s: {said}\n--- {log_file} ---\n{log_tail(log_file)}"
                    )
                raise StackError("\n".join(reports))
            time.sleep(0.2)
        self.timings["services"] = time.monotonic() - started

    def _rotated(self, log_file: Path) -> Path:
        """Keep the previous run's log as <name>.1 and start a fresh one."""
        if log_file.exists():
            os.replace(log_file, log_file.with_name(log_file.name + ".1"))
        return log_file

    # --- running in the foreground ---

    def first_death(self) -> str | None:
        """A description of the first started process found dead, if any."""
        for label, child in self.children.items():
            code = child.poll()
            if code is not None:
                log_file = self.logs / f"{label}.log"
                return f"service {label} (pid {child.pid}) {_exit_description(code)}\n--- {log_file} ---\n" + log_tail(
                    log_file
                )
        if self.broker is not None and self.broker.pid is None:
            log_file = self.logs / "broker.log"
            return f"the broker exited\n--- {log_file} ---\n{log_tail(log_file)}"
        if self.state is not None and self.state.postgres is not None and not self.state.postgres.process.alive():
            log_file = self.logs / "postgres.log"
            return f"Postgres exited\n--- {log_file} ---\n{log_tail(log_file)}"
        return None

    def detach(self) -> None:
        """Leave the processes running after this one exits: nobody supervises them any more."""
        if self.state is not None:
            self.state.supervisor = None
            self.state.supervisor_create_time = None
            self.state.save(self.home)

    def stop(self) -> None:
        if self.state is None:
            return
        self.state.supervisor = None  # that is us: do not wait for ourselves
        stop_recorded(self.state, self.home, self.settings, self.out)
        for child in self.children.values():
            child.poll()  # reap


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


# --- stopping ------------------------------------------------------------------------------------


def stop_recorded(state: RuntimeState, home: Path, settings: Settings, out: Output = print) -> None:
    """Stop everything a runtime record names: services, then the broker, then Postgres."""
    supervisor = state.supervisor_process
    if supervisor is not None and supervisor.alive() and supervisor.pid != os.getpid():
        # A foreground `up` stops its own children in order; let it, then clean up whatever is left.
        out(f"asking the foreground `funnelcast up` (pid {supervisor.pid}) to stop")
        supervisor.signal(signal.SIGTERM)
        if not wait_until(lambda: not supervisor.alive(), settings.shutdown_grace_s + 30.0, interval=0.2):
            out(f"the foreground `funnelcast up` (pid {supervisor.pid}) did not stop; killing it")
            stop_processes([supervisor], 0.0, group=False)
    services = [s for s in state.services if s.process.alive()]
    if services:
        out(f"stopping {len(services)} service process(es): {', '.join(s.label for s in services)}")
        waited_s = settings.shutdown_grace_s + EXIT_AFTER_GRACE_S
        killed = stop_processes([s.process for s in services], waited_s)
        if killed:
            out(f"killed after {waited_s:.0f} s: pids {', '.join(str(r.pid) for r in killed)}")
    if state.broker is not None and state.broker.process.alive():
        out(f"stopping the broker (pid {state.broker.pid})")
        stop_broker_process(state.broker.process)
    if state.postgres is not None and state.postgres.data_dir and state.postgres.process.alive():
        out(f"stopping Postgres (pid {state.postgres.pid})")
        EmbeddedPostgres(Path(state.postgres.data_dir), state.postgres.port).stop()
        if state.postgres.process.alive():
            stop_processes([state.postgres.process], 10.0, group=False)
    left = state.live_processes()
    if left:
        raise StackError(f"still running after stop: pids {', '.join(str(r.pid) for r in left)}")
    (home / RUNTIME_FILE).unlink(missing_ok=True)


def status_report(home: Path, settings: Settings) -> dict[str, Any]:
    """What runs, for `funnelcast status`: each service's pid, port and readiness, broker and database."""
    state = RuntimeState.load(home)
    if state is None:
        services = [
            {"name": i.name, "instance": i.instance, "label": i.label, "pid": None, "alive": False,
             "port": i.port, "readyz": readyz_status(i.port)}
            for i in plan_instances(settings)
        ]
        return {
            "home": str(home), "running": False, "services": services,
            "broker": {"bootstrap": settings.kafka_bootstrap_servers, "embedded": settings.kafka_bootstrap is None,
                       "pid": None, "alive": False},
            "database": {"url": redact_url(settings.server_url), "embedded": settings.database_url is None,
                         "pid": None, "alive": False},
        }
    services = [
        {"name": s.name, "instance": s.instance, "label": s.label, "pid": s.pid, "alive": s.process.alive(),
         "port": s.port, "readyz": readyz_status(s.port), "log": str(home / s.log)}
        for s in state.services
    ]
    return {
        "home": str(home),
        "running": bool(state.live_processes()),
        "started_at": state.started_at,
        "services": services,
        "broker": {"bootstrap": state.kafka_bootstrap, "embedded": state.broker is not None,
                   "pid": state.broker.pid if state.broker else None,
                   "alive": state.broker.process.alive() if state.broker else None},
        "database": {"url": state.database_url, "embedded": state.postgres is not None,
                     "pid": state.postgres.pid if state.postgres else None,
                     "alive": state.postgres.process.alive() if state.postgres else None},
    }
