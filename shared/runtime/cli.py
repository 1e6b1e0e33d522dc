"""`funnelcast`: run the whole system on one machine, see what runs, and mint tokens.

    funnelcast up [--detach] [--replicas SERVICE=N ...]   start everything (foreground until Ctrl-C)
    funnelcast down                                       stop everything `up` started
    funnelcast status [--json]                            services, ports, readiness, lag, backlog, dead letters
    funnelcast token --user USER_ID [--role ROLE]         a bearer token for local use and tests
    funnelcast dlq list|show|replay TOPIC                 inspect and re-drive dead-lettered events
    funnelcast migrate [SERVICE ...]                      create and migrate the services' databases, then exit
    funnelcast asyncapi [--check] [--docs DIR]            write (or check) docs/asyncapi.yaml and docs/events.md
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from shared.auth import issue_token
from shared.org import OrgFileError, Role, load_organisation
from shared.runtime.broker import BrokerError
from shared.runtime.postgres import PostgresError
from shared.runtime.supervisor import (
    REPLICA_PORT_STEP,
    RuntimeState,
    Stack,
    StackError,
    plan_instances,
    status_report,
    stop_recorded,
)
from shared.settings import Settings
from shared.topology import PROCESSES, SERVICES, TOPICS

EXIT_USAGE = 2
_DEAD_LETTER_COUNT_TIMEOUT_S = 5.0  # status stays quick when the broker is unreachable
DEFAULT_READY_TIMEOUT_S = 90.0


class StopRequested(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """SIGINT or SIGTERM arrived: stop everything in order."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _say(message: str) -> None:
    print(message, flush=True)


def _complain(message: str) -> None:
    print(f"funnelcast: {message}", file=sys.stderr, flush=True)


# --- up ------------------------------------------------------------------------------------------


def parse_replicas(values: list[str]) -> dict[str, int]:
    replicas: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--replicas wants SERVICE=N with N >= 1, not {value!r}")
        if name not in PROCESSES:
            raise ValueError(f"--replicas: unknown service {name!r}; services and workers are {', '.join(PROCESSES)}")
        replicas[name] = int(count)
    return replicas


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    try:
        instances = plan_instances(settings, parse_replicas(args.replicas))
    except (ValueError, StackError) as exc:
        _complain(str(exc))
        return EXIT_USAGE
    if settings.auth_secret is None:
        _complain("warning: FUNNELCAST_AUTH_SECRET is unset; tokens are signed with the public dev secret")
    stack = Stack(settings, settings.home, instances, out=_say)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    started = time.monotonic()
    keep_running = False
    try:
        stack.start(args.ready_timeout)
        _say(f"ready in {time.monotonic() - started:.1f} s ({_timings(stack.timings)})")
        _print_status(_with_figures(status_report(stack.home, settings), settings))
        if args.detach:
            stack.detach()
            keep_running = True
            _say("running in the background; `funnelcast down` stops it")
            return 0
        _say("running; Ctrl-C stops everything")
        while True:
            death = stack.first_death()
            if death is not None:
                _complain(death)
                return 1
            time.sleep(0.5)
    except StopRequested as stop:
        _say(f"{stop}: stopping")
        return 0
    except (StackError, PostgresError, BrokerError) as exc:
        _complain(str(exc))
        return 1
    finally:
        if not keep_running:
            # A second Ctrl-C must not cut the orderly stop short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                stack.stop()
            except (StackError, PostgresError) as exc:
                _complain(f"stopping: {exc}")


def _timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())


# --- down, status ------------------------------------------------------------------------------


def cmd_down(_args: argparse.Namespace, settings: Settings) -> int:
    home = settings.home.absolute()
    try:
        state = RuntimeState.load(home)
    except StackError as exc:
        _complain(str(exc))
        return 1
    if state is None:
        _say(f"nothing is running (no runtime record in {home})")
        return 0
    if not state.live_processes():
        stop_recorded(state, home, settings, _say)
        _say("nothing was running; removed the stale runtime record")
        return 0
    try:
        stop_recorded(state, home, settings, _say)
    except (StackError, PostgresError) as exc:
        _complain(str(exc))
        return 1
    _say("stopped")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = _with_figures(status_report(settings.home.absolute(), settings), settings)
    except StackError as exc:
        _complain(str(exc))
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    all_ready = all(s["alive"] and s["readyz"] == 200 for s in report["services"])
    return 0 if report["running"] and all_ready else 1


def _with_figures(report: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Each live service's consumer lag and outbox backlog, from its /metrics, and the dead letters its
    consumer group left waiting (not re-driven yet), from the broker's dead-letter topics: on every
    instance of a consuming service, none (None) for a process that consumes nothing, and None for all
    when the broker does not answer."""
    from shared.runtime.observe import FIGURES, service_figures

    waiting = _waiting_dead_letters(settings) if report["running"] else None
    groups = {name: group for topic in TOPICS.values()
              for name, group in zip(topic.consumers, topic.consumer_groups, strict=True)}
    for service in report["services"]:
        service.update(service_figures(service["port"]) if service["alive"] else dict.fromkeys(FIGURES))
        group = groups.get(service["name"])
        service["dead_letters"] = waiting[group] if waiting is not None and group is not None else None
    return report


def _waiting_dead_letters(settings: Settings) -> Counter[str] | None:
    """Dead letters waiting per consumer group; None when the broker cannot tell within a few seconds."""
    from aiokafka.errors import KafkaError

    from shared.runtime.dlq import waiting_per_group

    try:
        return asyncio.run(asyncio.wait_for(waiting_per_group(settings), _DEAD_LETTER_COUNT_TIMEOUT_S))
    except (KafkaError, OSError, TimeoutError) as exc:
        _complain(f"dead letters not counted: the broker did not answer ({exc!r})")
        return None


def _print_status(report: dict[str, Any]) -> None:
    if report["running"]:
        _say(f"Funnelcast in {report['home']} (started {report.get('started_at', '?')})")
    else:
        _say(f"no Funnelcast stack is running from {report['home']}")
    rows = [("SERVICE", "PID", "ALIVE", "PORT", "READYZ", "LAG", "BACKLOG", "DEAD LETTERS WAITING")]
    for s in report["services"]:
        alive = "yes" if s["alive"] else "no"
        figures = [str(s.get(f)) if s.get(f) is not None else "-"
                   for f in ("consumer_lag", "outbox_backlog", "dead_letters")]
        rows.append((s["label"], str(s["pid"] or "-"), alive, str(s["port"]), str(s["readyz"] or "-"), *figures))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for title, key, where in (("broker", "broker", "bootstrap"), ("database", "database", "url")):
        part = report[key]
        if part["embedded"]:
            state = "alive" if part["alive"] else "not running"
            how = f"embedded, pid {part['pid']} ({state})" if part["pid"] else "embedded, not started"
        else:
            how = "external"
        _say(f"{title:<9} {part[where]}  [{how}]")


# --- token ---------------------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    try:
        org = load_organisation(settings.org_file)
    except OrgFileError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    user = org.user(args.user)
    if user is None:
        known = ", ".join(sorted(org.users))
        _complain(f"unknown user {args.user!r} in the organisation file; known users: {known}")
        return EXIT_USAGE
    role = Role(args.role) if args.role else user.role
    if role is not user.role:
        _complain(f"warning: {user.id}'s role is {user.role}; the services will refuse a token claiming {role}")
    ttl = args.ttl if args.ttl is not None else settings.token_ttl_s
    if ttl <= 0:
        _complain("--ttl must be a positive number of seconds")
        return EXIT_USAGE
    print(issue_token(user.id, role, settings.signing_secret, ttl))
    return 0


# --- dlq ---------------------------------------------------------------------------------------------


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from shared.runtime.dlq import DeadLetterError, read_dead_letters, replay_dead_letters

    try:
        if args.action == "replay":
            def sent(letter: Any) -> None:
                _say(f"re-driven {letter.position} -> {letter.original_topic}  {letter.summary()['event_id'] or ''}")

            letters = asyncio.run(replay_dead_letters(settings, args.topic, dry_run=args.dry_run, on_sent=sent))
            verb = "would re-drive" if args.dry_run else "re-drove"
            if args.dry_run:
                for letter in letters:
                    _say(f"would re-drive {letter.position} -> {letter.original_topic}")
            _say(f"{verb} {len(letters)} dead letters" + ("" if letters else " (none pending)"))
            return 0
        letters = asyncio.run(read_dead_letters(settings, args.topic))
    except DeadLetterError as exc:
        _complain(str(exc))
        return 1
    if args.action == "list":
        if args.json:
            print(json.dumps([letter.summary() for letter in letters], indent=2, ensure_ascii=False))
        else:
            _print_dead_letters([letter.summary() for letter in letters])
        return 0
    chosen = [letter for letter in letters if args.which in (letter.position, letter.summary()["event_id"])]
    if not chosen:
        _complain(f"no dead letter {args.which!r} on {args.topic} (give PARTITION:OFFSET or an event id)")
        return 1
    for letter in chosen:
        print(json.dumps(letter.details(), indent=2, ensure_ascii=False))
    return 0


def _print_dead_letters(summaries: list[dict[str, Any]]) -> None:
    if not summaries:
        _say("no dead letters")
        return
    columns = ("position", "state", "failed_at", "group", "type", "subject", "event_id", "error")
    rows = [tuple(c.upper() for c in columns)]
    rows += [tuple(str(s[c] or "-")[: 60 if c == "error" else 40] for c in columns) for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    pending = sum(s["state"] == "pending" for s in summaries)
    _say(f"{len(summaries)} dead letters, {pending} not re-driven yet")


# --- migrate ---------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """What every service does at start-up, as a step of its own (a Kubernetes Job before a rollout)."""
    import importlib

    from shared.db import SHARED_MIGRATIONS, ensure_database, migrate

    async def run(name: str) -> list[str]:
        import asyncpg

        definition = importlib.import_module(f"{SERVICES[name].module}.main").service
        await ensure_database(settings.server_url, SERVICES[name].database)
        conn = await asyncpg.connect(settings.database_url_for(name))
        try:
            own = [definition.migrations] if definition.migrations else []
            return await migrate(conn, SHARED_MIGRATIONS, *own)
        finally:
            await conn.close()

    unknown = [name for name in args.services if name not in SERVICES]
    if unknown:
        _complain(f"unknown services {', '.join(unknown)}; services are {', '.join(SERVICES)}")
        return EXIT_USAGE
    for name in args.services or list(SERVICES):
        try:
            applied = asyncio.run(run(name))
        except Exception as exc:  # any failure stops the Job, with the service and the error named
            _complain(f"{name}: migration failed: {exc!r}")
            return 1
        _say(f"{name}: {len(applied)} migrations applied" + (f" ({', '.join(applied)})" if applied else ""))
    return 0


# --- asyncapi ------------------------------------------------------------------------------------

DEFAULT_DOCS = Path(__file__).resolve().parents[2] / "docs"


def cmd_asyncapi(args: argparse.Namespace, _settings: Settings) -> int:
    from shared.events.asyncapi import render, render_catalogue

    docs = Path(args.docs)
    outputs = {docs / "asyncapi.yaml": render(), docs / "events.md": render_catalogue()}
    stale = [path for path, text in outputs.items() if not path.exists() or path.read_text("utf-8") != text]
    if args.check:
        for path in stale:
            _complain(f"{path} does not match the event registry; run `funnelcast asyncapi`")
        return 1 if stale else 0
    docs.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(outputs[path], encoding="utf-8")
        _say(f"wrote {path}")
    if not stale:
        _say("docs/asyncapi.yaml and docs/events.md are up to date")
    return 0


# --- the command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funnelcast", description="Run and inspect Funnelcast on one machine (the embedded runtime)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="start the database, the broker and every service",
        description="Start the embedded Postgres (unless FUNNELCAST_DATABASE_URL is set), the embedded Tansu "
        "broker (unless FUNNELCAST_KAFKA_BOOTSTRAP is set), create the topics and start every service; "
        "logs go to FUNNELCAST_HOME/logs.",
    )
    up.add_argument("--detach", action="store_true",
                    help="return once every service answers /readyz and leave it all running")
    up.add_argument("--replicas", action="extend", nargs="+", default=[], metavar="SERVICE=N",
                    help=f"run N instances of a service (one consumer group); instance k > 0 listens on the "
                         f"service's port + {REPLICA_PORT_STEP} * k, e.g. scoring=2 adds scoring on 8013")
    up.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S, metavar="SECONDS",
                    help=f"how long to wait for every /readyz (default {DEFAULT_READY_TIMEOUT_S:.0f})")
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", help="stop everything `funnelcast up` started")
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser(
        "status", help="services, ports, readiness, broker and database",
        description="Per service: pid, port, /readyz, consumer lag (messages behind, all topics), outbox "
        "backlog (events not yet published), both from its /metrics, and the dead letters its consumer group "
        "left waiting in the dead-letter topics, not re-driven yet (`funnelcast dlq list TOPIC` shows them). "
        "Exit status 0 when every service is alive and ready, 1 otherwise.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    token = commands.add_parser("token", help="print a bearer token signed with the configured secret")
    token.add_argument("--user", required=True, metavar="USER_ID", help="a user of the organisation file")
    token.add_argument("--role", choices=[str(r) for r in Role],
                       help="the role to claim (default: the user's role in the organisation file)")
    token.add_argument("--ttl", type=int, metavar="SECONDS", help="lifetime (default FUNNELCAST_TOKEN_TTL_S)")
    token.set_defaults(handler=cmd_token)

    dlq = commands.add_parser(
        "dlq", help="list, show and re-drive dead-lettered events",
        description="TOPIC is a topic (sales.leads) or its dead-letter topic (sales.leads.dlq). `replay` sends "
        "every dead letter not re-driven yet back to its original topic, with its key and original headers; "
        "consumers that had applied it skip it by event id, so fix the cause first, then replay.",
    )
    dlq_actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlq_list = dlq_actions.add_parser("list", help="every dead letter of TOPIC, pending or re-driven")
    dlq_list.add_argument("topic", metavar="TOPIC")
    dlq_list.add_argument("--json", action="store_true", help="machine-readable output")
    dlq_show = dlq_actions.add_parser("show", help="one dead letter: headers, error and the event")
    dlq_show.add_argument("topic", metavar="TOPIC")
    dlq_show.add_argument("which", metavar="PARTITION:OFFSET|EVENT_ID")
    dlq_replay = dlq_actions.add_parser("replay", help="re-drive the pending dead letters to their topic")
    dlq_replay.add_argument("topic", metavar="TOPIC")
    dlq_replay.add_argument("--dry-run", action="store_true", help="list what would be re-driven, send nothing")
    dlq.set_defaults(handler=cmd_dlq)

    migrate_ = commands.add_parser(
        "migrate", help="create and migrate the services' databases on FUNNELCAST_DATABASE_URL, then exit",
        description="Apply every pending migration of each service's database (all services by default): "
        "what a service does at start-up, as a separate step, e.g. a Kubernetes Job before a rollout.",
    )
    migrate_.add_argument("services", nargs="*", metavar="SERVICE", help="only these services")
    migrate_.set_defaults(handler=cmd_migrate)

    asyncapi = commands.add_parser(
        "asyncapi", help="write docs/asyncapi.yaml and docs/events.md from the event registry",
        description="Generate the AsyncAPI 3.0 document and the readable event catalogue from "
        "shared/events/catalog.py and its JSON Schemas. With --check, change nothing and exit 1 when "
        "either file differs from what the registry gives.",
    )
    asyncapi.add_argument("--check", action="store_true", help="only check that the files are current")
    asyncapi.add_argument("--docs", default=str(DEFAULT_DOCS), metavar="DIR", help="where to write (default docs/)")
    asyncapi.set_defaults(handler=cmd_asyncapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="funnelcast: %(levelname)s %(message)s")
    try:
        settings = Settings()
    except ValidationError as exc:
        _complain(f"invalid configuration: {exc}")
        return EXIT_USAGE
    return int(args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())
