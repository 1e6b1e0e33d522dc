"""`funnelcast up --detach`, `status` and `down` as a user runs them: real processes, real ports."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.runtime.processes import ProcessRef, port_in_use
from shared.runtime.supervisor import REPLICA_PORT_STEP
from shared.topology import PROCESSES, port_variable
from tests.support.waiting import free_port

pytestmark = pytest.mark.slow

FUNNELCAST = Path(sys.executable).with_name("funnelcast")
UP_TIMEOUT_S = 180


def funnelcast(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FUNNELCAST), *args], env=env, capture_output=True, text=True, timeout=timeout)


def free_port_with_replica_room(taken: set[int]) -> int:
    """A free port whose replica port (base + 10) is free too, neither of them `taken` by another process's
    port or replica port (which is added to `taken`)."""
    while True:
        port = free_port()
        replica = port + REPLICA_PORT_STEP
        if replica < 65536 and not port_in_use(replica) and not {port, replica} & taken:
            taken.update((port, replica))
            return port


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FUNNELCAST_")}
    env["FUNNELCAST_HOME"] = str(tmp_path / "home")
    env["FUNNELCAST_EMBEDDED_POSTGRES_PORT"] = str(free_port())
    env["FUNNELCAST_EMBEDDED_KAFKA_PORT"] = str(free_port())
    taken: set[int] = set()
    for name in PROCESSES:
        env[port_variable(name)] = str(free_port_with_replica_room(taken))
    yield env
    if (tmp_path / "home" / "runtime.json").exists():  # a failed test must not leave processes behind
        funnelcast("down", env=env)


def service_ports(env: dict[str, str]) -> dict[str, int]:
    """Every process's port: the five services' and the notifications delivery worker's."""
    return {name: int(env[port_variable(name)]) for name in PROCESSES}


def up_detached(env: dict[str, str], *args: str) -> None:
    up = funnelcast("up", "--detach", *args, env=env, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, f"stdout:\n{up.stdout}\nstderr:\n{up.stderr}"
    assert "FUNNELCAST_AUTH_SECRET is unset" in up.stderr


def status_report(env: dict[str, str]) -> dict[str, Any]:
    status = funnelcast("status", "--json", env=env)
    assert status.returncode == 0, f"stdout:\n{status.stdout}\nstderr:\n{status.stderr}"
    report: dict[str, Any] = json.loads(status.stdout)
    return report


def assert_all_ready(report: dict[str, Any], ports: dict[str, int]) -> None:
    for label, port in ports.items():
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert answer.status_code == 200, f"{label}: {answer.status_code} {answer.text}"
    assert report["running"] is True
    assert {s["label"]: (s["port"], s["alive"], s["readyz"]) for s in report["services"]} == {
        label: (port, True, 200) for label, port in ports.items()
    }


def test_up_status_down(stack_env: dict[str, str]) -> None:
    home = Path(stack_env["FUNNELCAST_HOME"])
    ports = service_ports(stack_env)

    up_detached(stack_env)
    report = status_report(stack_env)
    assert_all_ready(report, ports)
    broker = report["broker"]
    assert broker["bootstrap"] == f"127.0.0.1:{stack_env['FUNNELCAST_EMBEDDED_KAFKA_PORT']}"
    assert (broker["embedded"], broker["alive"]) == (True, True)
    postgres_port = stack_env["FUNNELCAST_EMBEDDED_POSTGRES_PORT"]
    assert report["database"]["url"] == f"postgresql://postgres@127.0.0.1:{postgres_port}/postgres"
    assert report["database"]["alive"] is True

    again = funnelcast("up", "--detach", env=stack_env)
    assert again.returncode == 1
    assert "already running" in again.stderr

    recorded = json.loads((home / "runtime.json").read_text())
    processes = [ProcessRef(s["pid"], s["create_time"]) for s in recorded["services"]]
    processes += [ProcessRef(recorded[k]["pid"], recorded[k]["create_time"]) for k in ("broker", "postgres")]
    assert len(processes) == len(ports) + 2
    assert all(p.alive() for p in processes)

    down = funnelcast("down", env=stack_env, timeout=120)
    assert down.returncode == 0, f"stdout:\n{down.stdout}\nstderr:\n{down.stderr}"
    assert [p.pid for p in processes if p.alive()] == []
    all_ports = [*ports.values(), int(postgres_port), int(stack_env["FUNNELCAST_EMBEDDED_KAFKA_PORT"])]
    assert [port for port in all_ports if port_in_use(port)] == []
    assert not (home / "runtime.json").exists()

    twice = funnelcast("down", env=stack_env)
    assert twice.returncode == 0
    assert "nothing is running" in twice.stdout


def test_replicas_run_side_by_side(stack_env: dict[str, str]) -> None:
    ports = service_ports(stack_env)
    ports["scoring-1"] = ports["scoring"] + REPLICA_PORT_STEP

    up_detached(stack_env, "--replicas", "scoring=2")
    assert_all_ready(status_report(stack_env), ports)

    down = funnelcast("down", env=stack_env, timeout=120)
    assert down.returncode == 0, f"stdout:\n{down.stdout}\nstderr:\n{down.stderr}"
    assert [port for port in ports.values() if port_in_use(port)] == []
