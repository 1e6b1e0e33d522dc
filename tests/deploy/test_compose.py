"""docker-compose.yml and deploy/Dockerfile, checked against the code.

No Docker engine runs in CI, so these tests read the files and hold them to shared/topology.py and
shared/settings.py; where a piece of a file is a command (the image's health check and entrypoint),
they run it.
"""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings

from shared.settings import Settings
from shared.topology import PROCESSES, SERVICES, WORKERS, port_variable
from tests.support.metric_names import exported_metric_names, metrics_used

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
GRAFANA = ROOT / "deploy" / "grafana"

# CONTRACT.md "Metric names"; a histogram is queried through its _bucket/_sum/_count series.
CONTRACT_METRICS = {
    "funnelcast_events_published_total",
    "funnelcast_events_consumed_total",
    "funnelcast_events_failed_total",
    "funnelcast_dead_letters_total",
    "funnelcast_outbox_backlog",
    "funnelcast_outbox_oldest_unpublished_seconds",
    "funnelcast_consumer_lag",
    "funnelcast_handler_duration_seconds",
    "funnelcast_http_requests_total",
    "funnelcast_http_request_duration_seconds",
}


# --- reading the files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves anchors and `<<` merges


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, required_placeholder: str = "set-from-the-environment") -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} as if the variable were unset (or, for a
    required one, set to a placeholder)."""

    def replace(match: re.Match) -> str:
        op = match["op"] or ""
        if op.endswith("-"):
            return match["arg"]
        if op.endswith("?"):
            return required_placeholder
        return ""

    return _INTERPOLATION.sub(replace, value)


def app_services(compose: dict) -> dict[str, dict]:
    """The containers built from this repository (the rest are images: Kafka, Postgres ...)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def built_image(compose: dict, name: str) -> str:
    """The image a built container runs: its `image`, or the name compose gives a build (<project>-<name>)."""
    return str(compose["services"][name].get("image", f"{compose['name']}-{name}"))


def published_ports(service: dict) -> list[tuple[int, int]]:
    """(published, container) pairs from the short ("[ip:]host:container") or long syntax."""
    pairs = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            pairs.append((int(entry["published"]), int(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {entry!r} is not published on the host"
            pairs.append((int(parts[-2]), int(parts[-1])))
    return pairs


def infrastructure(compose: dict, image_prefix: str) -> dict[str, dict]:
    return {
        name: svc for name, svc in compose["services"].items() if str(svc.get("image", "")).startswith(image_prefix)
    }


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped (a comment
    line inside a continuation is dropped too, as Docker does)."""
    instructions, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not current):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list, or the words of a shell-form one."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", arguments]
    assert isinstance(value, list)
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


# --- the five services and their workers ---------------------------------------------------------


def test_the_built_containers_are_exactly_the_topology_s_processes(compose):
    assert sorted(app_services(compose)) == sorted(PROCESSES)


def test_five_images_one_per_service_and_a_worker_runs_its_service_s(compose):
    assert len({built_image(compose, name) for name in app_services(compose)}) == len(SERVICES)
    for worker in WORKERS.values():
        container, service = compose["services"][worker.name], compose["services"][worker.service]
        assert built_image(compose, worker.name) == built_image(compose, worker.service)
        assert container["build"] == service["build"], "the same image must come from the same build"
        assert container["entrypoint"] == ["python", "-m", worker.module]
        assert importlib.util.find_spec(worker.module) is not None


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_a_worker_publishes_no_host_port_and_exposes_its_own(compose, name):
    container = compose["services"][name]
    assert "ports" not in container, "a worker serves only /healthz, /readyz and /metrics, to the compose network"
    assert [int(port) for port in container["expose"]] == [WORKERS[name].port]


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_a_service_whose_worker_runs_leaves_the_work_to_it(compose, name):
    hand_over = WORKERS[name].hand_over
    for container in (name, WORKERS[name].service):
        value = interpolate(environment(compose["services"][container]).get(hand_over, "false"))
        assert TypeAdapter(bool).validate_python(value) is True, f"{container}: {hand_over}={value!r}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_builds_the_shared_dockerfile_with_its_name_and_port(compose, name):
    build = compose["services"][name]["build"]
    assert (ROOT / build.get("context", ".")).resolve() == ROOT
    assert build["dockerfile"] == "deploy/Dockerfile"
    args = build.get("args") or {}
    assert args.get("SERVICE") == name
    assert str(args.get("PORT")) == str(SERVICES[name].port)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_publishes_its_topology_port(compose, name):
    assert published_ports(compose["services"][name]) == [(SERVICES[name].port, SERVICES[name].port)]


def test_no_two_containers_publish_the_same_host_port(compose):
    host_ports = [published for svc in compose["services"].values() for published, _ in published_ports(svc)]
    assert len(host_ports) == len(set(host_ports)), host_ports


# --- configuration -------------------------------------------------------------------------------


def services_own_settings() -> set[str]:
    """The FUNNELCAST_* variables of the services' own settings classes (services/<name>/config.py)."""
    variables = set()
    for service in SERVICES:
        if importlib.util.find_spec(f"services.{service}.config") is None:
            continue
        for value in vars(importlib.import_module(f"services.{service}.config")).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
                prefix = value.model_config.get("env_prefix", "")
                variables |= {f"{prefix}{field}".upper() for field in value.model_fields}
    return variables


def _is_setting(variable: str) -> bool:
    field = variable.removeprefix("FUNNELCAST_").lower()
    port_overrides = {port_variable(name) for name in PROCESSES}
    return field in Settings.model_fields or variable in port_overrides or variable in services_own_settings()


def test_a_misspelt_variable_is_not_taken_for_a_setting():
    assert _is_setting("FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER")
    assert not _is_setting("FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKERS")
    assert _is_setting("FUNNELCAST_NOTIFICATIONS_WORKER_PORT") and not _is_setting("FUNNELCAST_WORKER_PORT")


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_every_funnelcast_variable_is_a_real_setting(compose, name):
    # Settings ignores unknown FUNNELCAST_* variables (extra="ignore"), so a misspelt one in
    # compose would be silently dropped: catch it here.
    variables = [key for key in environment(compose["services"][name]) if key.startswith("FUNNELCAST_")]
    assert variables
    unknown = [key for key in variables if not _is_setting(key)]
    assert not unknown, f"not fields of shared.settings.Settings: {unknown}"


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_the_environment_is_accepted_by_settings(compose, name, monkeypatch):
    """Values must parse as their fields' types (a bool as a bool, a number as a number)."""
    for key in list(os.environ):
        if key.startswith("FUNNELCAST_"):
            monkeypatch.delenv(key)
    env = {k: interpolate(v) for k, v in environment(compose["services"][name]).items() if k.startswith("FUNNELCAST_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.kafka_bootstrap and settings.database_url
    assert settings.port_for(name) == PROCESSES[name].port


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_required_settings_are_set(compose, name):
    env = environment(compose["services"][name])
    assert env.get("FUNNELCAST_HOST") == "0.0.0.0", "the service would bind 127.0.0.1 inside its container"
    assert env.get("FUNNELCAST_KAFKA_BOOTSTRAP"), "unset, the service would start no broker and find none"
    assert env.get("FUNNELCAST_DATABASE_URL"), "unset, the service would look for an embedded Postgres"
    # The secret comes from the environment of `docker compose up`, with no default to fall back on.
    assert re.fullmatch(r"\$\{FUNNELCAST_AUTH_SECRET:\?[^}]+\}", env.get("FUNNELCAST_AUTH_SECRET", "")), (
        "FUNNELCAST_AUTH_SECRET must be ${FUNNELCAST_AUTH_SECRET:?message}"
    )


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    result = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_bootstrap_servers_are_listeners_of_the_kafka_service(compose, name):
    kafkas = infrastructure(compose, "apache/kafka")
    assert kafkas, "no apache/kafka service"
    bootstrap = environment(compose["services"][name])["FUNNELCAST_KAFKA_BOOTSTRAP"]
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        assert host in kafkas, f"{server} does not name a Kafka service ({sorted(kafkas)})"
        kafka_env = environment(kafkas[host])
        advertised = _listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
        bound = _listeners(kafka_env["KAFKA_LISTENERS"])
        names = [listener for listener, address in advertised.items() if address == (host, int(port))]
        assert names, f"{server} is not among Kafka's advertised listeners {advertised}"
        assert bound[names[0]][1] == int(port), f"listener {names[0]} is not bound on port {port}"
        assert names[0] not in kafka_env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "").split(",")
        assert name in app_services(compose) and host in compose["services"][name]["depends_on"]


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_database_url_names_the_postgres_service_and_its_user(compose, name):
    postgreses = infrastructure(compose, "postgres")
    assert postgreses, "no postgres service"
    url = urlsplit(environment(compose["services"][name])["FUNNELCAST_DATABASE_URL"])
    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname in postgreses, f"{url.hostname} is not a postgres service ({sorted(postgreses)})"
    assert (url.port or 5432) == 5432
    pg_env = environment(postgreses[url.hostname])
    # The image's POSTGRES_USER is the server's superuser: allowed to create each service's database.
    assert url.username == pg_env.get("POSTGRES_USER", "postgres")
    assert url.password == pg_env.get("POSTGRES_PASSWORD")
    # The URL's own database must exist before any service has created one.
    existing = {"postgres", pg_env.get("POSTGRES_DB") or pg_env.get("POSTGRES_USER", "postgres")}
    assert url.path.lstrip("/") in existing


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_service_waits_for_healthy_kafka_and_postgres(compose, name):
    depends_on = compose["services"][name].get("depends_on") or {}
    assert isinstance(depends_on, dict), "the list form of depends_on cannot wait for health"
    for dependency in (*infrastructure(compose, "apache/kafka"), *infrastructure(compose, "postgres")):
        assert depends_on.get(dependency, {}).get("condition") == "service_healthy", dependency
        assert compose["services"][dependency].get("healthcheck", {}).get("test"), f"{dependency} has no health check"


# --- observability wiring ------------------------------------------------------------------------


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path, for the bind mounts of a service."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if source.startswith("."):
            result[target] = str((ROOT / source).resolve().relative_to(ROOT))
    return result


def test_grafana_is_provisioned_from_the_repository(compose):
    grafana = infrastructure(compose, "grafana/grafana")
    assert len(grafana) == 1
    mounts = _mounts(next(iter(grafana.values())))
    assert mounts.get("/etc/grafana/provisioning") == "deploy/grafana/provisioning"

    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "funnelcast.yml").read_text())["providers"]
    for provider in providers:
        assert mounts.get(provider["options"]["path"]) == "deploy/grafana/dashboards", provider


def test_grafana_datasource_is_the_prometheus_service(compose):
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    url = urlsplit(datasource["url"])
    prometheus = infrastructure(compose, "prom/prometheus")
    assert url.hostname in prometheus
    # 9090 is the port Prometheus listens on inside its container.
    assert url.port == 9090 and (9090, 9090) in published_ports(prometheus[url.hostname])


def _dashboards() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))]


def _queries(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [q for value in node.values() for q in _queries(value)]
    if isinstance(node, list):
        return [q for value in node for q in _queries(value)]
    return []


def test_dashboards_use_the_provisioned_datasource_and_contract_metrics():
    uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0][
        "uid"
    ]
    dashboards = _dashboards()
    assert dashboards, "no dashboard under deploy/grafana/dashboards/"
    for dashboard in dashboards:
        assert dashboard.get("uid") and dashboard.get("title")
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]
        queries = _queries(dashboard["panels"])
        assert queries, dashboard["title"]
        used = {m for q in queries for m in metrics_used(q)}
        # CONTRACT.md's names, and the services' own (tests/deploy/test_prometheus_rules.py checks those exist).
        unknown = {
            m for m in used
            if re.sub(r"_(bucket|sum|count)$", "", m) not in CONTRACT_METRICS and m not in exported_metric_names()
        }
        assert not unknown, f"{dashboard['title']}: metrics neither in CONTRACT.md nor exported: {unknown}"


# --- the image -----------------------------------------------------------------------------------


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".funnelcast", ".pytest_cache"} <= patterns


def test_dockerfile_is_multi_stage_on_a_slim_python_311(dockerfile):
    bases = [arguments.split()[0] for keyword, arguments in dockerfile if keyword == "FROM"]
    assert len(bases) >= 2, "build and runtime should be separate stages"
    assert all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base) for base in bases), bases
    assert any(k == "COPY" and a.startswith("--from=") for k, a in final_stage(dockerfile)), (
        "runtime copies nothing from the builder"
    )


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [arguments for keyword, arguments in final_stage(dockerfile) if keyword == "USER"]
    assert users, "the runtime stage never leaves root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_takes_the_service_and_listens_on_every_interface(dockerfile):
    stage = final_stage(dockerfile)
    args = {a.split("=")[0] for k, a in stage if k == "ARG"}
    assert {"SERVICE", "PORT"} <= args
    assert ("EXPOSE", "${PORT}") in stage
    env = " ".join(a for k, a in stage if k == "ENV")
    assert re.search(r"\bFUNNELCAST_HOST=0\.0\.0\.0\b", env)
    assert re.search(r"\bSERVICE=\$\{?SERVICE\}?", env), "the service name must outlive the build as ENV"


def _healthcheck_command(dockerfile) -> list[str]:
    checks = [a for k, a in final_stage(dockerfile) if k == "HEALTHCHECK"]
    assert len(checks) == 1, "one HEALTHCHECK in the runtime stage"
    options, _, command = checks[0].partition("CMD ")
    assert command, "HEALTHCHECK without CMD"
    return exec_form(command.strip())


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the http.server hook's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _closed_ports(count: int) -> list[int]:
    """Ports nothing listens on: the other processes' ports must answer nothing in the check."""
    sockets = [ThreadingHTTPServer(("127.0.0.1", 0), _Health) for _ in range(count)]
    ports = [server.server_address[1] for server in sockets]
    for server in sockets:
        server.server_close()
    return ports


def _run_in_image_env(argv: list[str], env: dict[str, str], path: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_")}
    if path is not None:
        base["PATH"] = path
    return subprocess.run(argv, env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("process", ["leads", *sorted(WORKERS)])
@pytest.mark.parametrize("answer", [200, 503, None])
def test_dockerfile_healthcheck_probes_healthz_on_the_process_s_port(dockerfile, answer, process):
    """The image of `leads` runs the service; a worker's image (its service's) runs with another command and
    only the worker's port answers."""
    argv = _healthcheck_command(dockerfile)
    assert argv[0] in {"python", "python3"}, "the slim image has no curl or wget: use Python"
    argv = [sys.executable, *argv[1:]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Health", (_Health,), {"status": answer or 200}))
    port = server.server_address[1]
    if answer is None:
        server.server_close()  # nothing listens: the check must fail, not hang
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    service = WORKERS[process].service if process in WORKERS else process
    env = {port_variable(name): str(free) for name, free in zip(PROCESSES, _closed_ports(len(PROCESSES)), strict=True)}
    try:
        result = _run_in_image_env(argv, {**env, "SERVICE": service, port_variable(process): str(port)})
    finally:
        if answer is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) == (answer == 200), result.stderr


def test_dockerfile_entrypoint_execs_python_m_services_name(dockerfile, tmp_path):
    stage = final_stage(dockerfile)
    entrypoint = [exec_form(a) for k, a in stage if k == "ENTRYPOINT"]
    cmd = [exec_form(a) for k, a in stage if k == "CMD"]
    argv = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    assert argv, "no ENTRYPOINT or CMD"
    # A stand-in `python` that reports its arguments and its process id: the same id as the
    # process Docker started means the shell exec'd Python (PID 1 then gets SIGTERM itself).
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$$ $*"\n')
    fake.chmod(0o755)
    process = subprocess.Popen(
        argv,
        env={"SERVICE": "notifications", "PATH": f"{tmp_path}:/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    pid, *args = shlex.split(out)
    assert args == ["-m", "services.notifications"]
    assert int(pid) == process.pid, "python does not replace the shell as the container's main process"
