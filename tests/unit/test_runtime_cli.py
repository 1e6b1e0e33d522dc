"""The `funnelcast` command line's pure parts: replicas, ports, URLs shown, tokens."""

from pathlib import Path

import pytest

from shared.auth import verify_token
from shared.org import Role, load_organisation
from shared.runtime.cli import main, parse_replicas
from shared.runtime.supervisor import Stack, plan_instances, redact_url
from shared.settings import DEV_AUTH_SECRET, Settings


def test_replicas_listen_ten_ports_apart() -> None:
    instances = plan_instances(Settings(), parse_replicas(["scoring=3"]))
    scoring = [(i.label, i.port) for i in instances if i.name == "scoring"]
    assert scoring == [("scoring", 8003), ("scoring-1", 8013), ("scoring-2", 8023)]
    assert len(instances) == 8  # five services, two more scoring instances, the notifications worker


def test_up_runs_the_delivery_worker_and_leaves_the_deliveries_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER", raising=False)
    instances = plan_instances(Settings(), parse_replicas(["notifications-worker=2"]))
    workers = [(i.label, i.port) for i in instances if i.name == "notifications-worker"]
    assert workers == [("notifications-worker", 8006), ("notifications-worker-1", 8016)]
    stack = Stack(Settings(), tmp_path, instances, out=lambda _line: None)
    [service] = [i for i in instances if i.name == "notifications"]
    env = stack._service_env(service)  # noqa: SLF001 - what the service process is started with
    assert env["FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER"] == "true"
    assert env["FUNNELCAST_NOTIFICATIONS_PORT"] == "8005"
    alone = Stack(Settings(), tmp_path, [service], out=lambda _line: None)  # no worker: the service delivers
    assert "FUNNELCAST_NOTIFICATIONS_DELIVERY_WORKER" not in alone._service_env(service)  # noqa: SLF001


@pytest.mark.parametrize("value", ["scoring", "scoring=0", "scoring=two", "billing=2"])
def test_bad_replicas_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="--replicas"):
        parse_replicas([value])


def test_the_database_url_is_shown_without_its_password() -> None:
    assert redact_url("postgresql://app:s3cret@db.internal:5432/postgres") == "postgresql://app@db.internal:5432/postgres"
    assert redact_url("postgresql://postgres@127.0.0.1:15432/postgres") == "postgresql://postgres@127.0.0.1:15432/postgres"


def test_token_carries_the_users_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--user", "mgr-1", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    principal = verify_token(token, DEV_AUTH_SECRET, load_organisation())
    assert (principal.user_id, principal.role) == ("mgr-1", Role.MANAGER)


def test_token_for_an_unknown_user_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--user", "nobody"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown user 'nobody'" in captured.err
