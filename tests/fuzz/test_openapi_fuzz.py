"""Schemathesis over the OpenAPI of every service, every operation, with valid tokens.

Every service runs as its own process (as `funnelcast up` runs it) against the session's Postgres and
broker. For each operation Hypothesis generates a bounded number of requests, valid and invalid, and
each answer must be: not a 5xx, a documented status code with the documented content type and schema,
and, when it is an error, problem+json with `type`, `title`, `status` and `detail`.

Operations that take a URL the product would call (webhook subscriptions) are left out: fuzzed input
must never make the product send traffic off this machine. They are tested by hand in the
notifications tests, with targets confined to loopback.
"""

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode

from shared.auth import issue_token
from shared.runtime.supervisor import ServiceInstance, Stack
from shared.settings import Settings
from shared.topology import SERVICES
from tests.support.waiting import free_port

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 20
# Operations whose input names a URL the service would call: never fuzzed (see the module docstring).
CALLS_OUT = re.compile(r"^/v1/webhooks")
# An admin sees everything, so a fuzzed id or filter is judged on the input; a rep meets the scope rules.
FUZZING_USERS = {"admin": "admin-1", "rep": "rep-1"}
SIGNING_SECRET = "fuzz-signing-secret-" + secrets.token_hex(16)


@dataclass(frozen=True)
class RunningService:
    base_url: str
    log_file: Path


@pytest.fixture(scope="module", params=sorted(SERVICES))
def service(
    request: pytest.FixtureRequest, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """One service process at a time, as `funnelcast up` runs it, signing tokens with SIGNING_SECRET."""
    instance = ServiceInstance(request.param, 0, free_port())
    home = Path(tmp_path_factory.mktemp("fuzz-home"))
    # Debug logging: whatever the service could ever log about a request is in the log to be checked.
    env = {"FUNNELCAST_AUTH_SECRET": SIGNING_SECRET, "FUNNELCAST_LOG_LEVEL": "DEBUG"}
    stack = Stack(settings, home, [instance], out=lambda _line: None, extra_env=env)
    try:
        stack.start(ready_timeout=90)
        yield RunningService(f"http://127.0.0.1:{instance.port}", home / "logs" / f"{instance.label}.log")
    finally:
        stack.stop()


@schemathesis.check
def errors_are_problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} answered with content-type {content_type!r}, not application/problem+json"
    )
    problem = response.json()
    missing = {"type", "title", "status", "detail"} - set(problem)
    assert not missing, f"problem details without {sorted(missing)}: {problem}"
    assert problem["status"] == response.status_code, f"problem status {problem['status']} on a {response.status_code}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    errors_are_problem_details,
]


@pytest.mark.parametrize("role", sorted(FUZZING_USERS))
def test_every_operation_answers_as_documented(service: RunningService, role: str) -> None:
    base_url = service.base_url
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {issue_token(FUZZING_USERS[role], role, SIGNING_SECRET, ttl_s=3600)}"}
    failures: list[str] = []
    statuses: set[int] = set()
    fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if CALLS_OUT.match(operation.path) and operation.method.upper() != "GET":
            continue
        fuzzed += 1

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(
            case=strategies.one_of(
                operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
            )
        )
        def answers_as_documented(case: Any) -> None:
            response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)
            statuses.add(response.status_code)

        try:
            answers_as_documented()
        except (Exception, FailureGroup) as failure:  # noqa: BLE001 - every operation is fuzzed; failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}:\n{failure}")
    assert fuzzed, f"{base_url} documents no operation"
    # Fuzzing that never gets past validation proves little: valid input must reach the handlers.
    assert any(200 <= status < 300 for status in statuses), f"no operation of {base_url} answered 2xx: {statuses}"
    assert not failures, f"{len(failures)} of {fuzzed} operations of {base_url} failed:\n\n" + "\n\n".join(failures)


def test_the_signing_secret_never_reaches_the_log(service: RunningService) -> None:
    """Runs after the fuzzing of the same service: thousands of requests, good and bad, were logged."""
    log = service.log_file.read_text(encoding="utf-8", errors="replace")
    assert log, f"{service.log_file} is empty: the check would prove nothing"
    assert SIGNING_SECRET not in log
