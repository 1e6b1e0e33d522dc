"""Notification rules and the other rules of the business this service applies. No I/O.

A rule maps one event type and a condition on its data to recipients (the record's owner, the
owner's manager, the managers above the owner, the owner's team, everyone with a role, named users)
and channels (inbox, push, e-mail), with a title and body template per language (zh-CN, en).
Rules are plain data: admins replace them through the API, `parse_rule` validates them.

Also here: template rendering, quiet hours, the webhook retry schedule, the Standard Webhooks
signature, which addresses a webhook may be delivered to, and the rate limit of an endpoint.
"""

import base64
import hashlib
import hmac
import ipaddress
import random
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.org import Organisation, Role

CHANNELS = ("inbox", "push", "email")
LANGUAGES = ("zh-CN", "en")
DEFAULT_LANGUAGE = "zh-CN"
OPERATORS = ("eq", "ne", "in", "not_in", "present", "absent")
RECIPIENT_KINDS = ("owner", "owner_manager", "managers", "team", "role", "user", "field")
PRIORITIES = ("normal", "high")
_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class InvalidRule(ValueError):
    """A rule definition that cannot be applied; `problems` names each fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Condition:
    field: str  # a dotted path into the event's data, e.g. "grade" or "contact.city"
    op: str
    value: Any = None

    def holds(self, data: Mapping[str, Any]) -> bool:
        found, actual = _lookup(data, self.field)
        match self.op:
            case "present":
                return found and actual is not None
            case "absent":
                return not found or actual is None
            case "eq":
                return found and actual == self.value
            case "ne":
                return not found or actual != self.value
            case "in":
                return found and actual in self.value
            case "not_in":
                return not found or actual not in self.value
        raise AssertionError(f"unchecked operator {self.op}")


@dataclass(frozen=True)
class Recipient:
    kind: str
    value: str | None = None  # the role for "role", the user id for "user", a data field naming a user


@dataclass(frozen=True)
class Template:
    title: str
    body: str


@dataclass(frozen=True)
class Rule:
    id: str
    event_type: str
    recipients: tuple[Recipient, ...]
    channels: tuple[str, ...]
    templates: Mapping[str, Template]
    conditions: tuple[Condition, ...] = ()
    enabled: bool = True
    priority: str = "normal"
    description: str = ""

    def applies_to(self, event_type: str, data: Mapping[str, Any]) -> bool:
        return self.enabled and self.event_type == event_type and all(c.holds(data) for c in self.conditions)

    def template(self, language: str) -> Template:
        found = self.templates.get(language) or self.templates.get(DEFAULT_LANGUAGE)
        return found or next(iter(self.templates.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_type": self.event_type,
            "description": self.description,
            "enabled": self.enabled,
            "priority": self.priority,
            "conditions": [{"field": c.field, "op": c.op, "value": c.value} for c in self.conditions],
            "recipients": [{"kind": r.kind, "value": r.value} for r in self.recipients],
            "channels": list(self.channels),
            "templates": {lang: {"title": t.title, "body": t.body} for lang, t in self.templates.items()},
        }


def _lookup(data: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


def parse_rule(raw: Mapping[str, Any], known_event_types: Iterable[str], known_users: Iterable[str] = ()) -> Rule:
    """A rule from its JSON form, or InvalidRule naming every problem found."""
    problems: list[str] = []
    event_types, users = set(known_event_types), set(known_users)
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
        problems.append("id: lower-case letters, digits, '_', '.', '-', at most 64 characters")
    event_type = raw.get("event_type")
    if event_type not in event_types:
        problems.append(f"event_type: {event_type!r} is not a known event type")
    conditions = _parse_conditions(raw.get("conditions") or [], problems)
    recipients = _parse_recipients(raw.get("recipients"), users, problems)
    channels = raw.get("channels")
    if not isinstance(channels, list) or not channels or any(c not in CHANNELS for c in channels):
        problems.append(f"channels: a non-empty list drawn from {', '.join(CHANNELS)}")
        channels = []
    templates = _parse_templates(raw.get("templates"), problems)
    priority = raw.get("priority", "normal")
    if priority not in PRIORITIES:
        problems.append(f"priority: one of {', '.join(PRIORITIES)}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append("enabled: true or false")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        problems.append("description: a string")
    if problems:
        raise InvalidRule(problems)
    return Rule(
        id=str(rule_id),
        event_type=str(event_type),
        conditions=tuple(conditions),
        recipients=tuple(recipients),
        channels=tuple(dict.fromkeys(channels)),
        templates=templates,
        enabled=bool(enabled),
        priority=str(priority),
        description=str(description),
    )


def _parse_conditions(raw: Any, problems: list[str]) -> list[Condition]:
    if not isinstance(raw, list):
        problems.append("conditions: a list")
        return []
    conditions = []
    for i, item in enumerate(raw):
        where = f"conditions[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: an object with field, op and value")
            continue
        field_, op, value = item.get("field"), item.get("op"), item.get("value")
        if not isinstance(field_, str) or not _FIELD.match(field_):
            problems.append(f"{where}.field: a dotted path of names into the event data")
        if op not in OPERATORS:
            problems.append(f"{where}.op: one of {', '.join(OPERATORS)}")
        elif op in ("in", "not_in") and not isinstance(value, list):
            problems.append(f"{where}.value: a list for {op}")
        elif op in ("eq", "ne") and not (value is None or isinstance(value, str | int | float | bool)):
            problems.append(f"{where}.value: a string, number, boolean or null for {op}")
        conditions.append(Condition(str(field_), str(op), value))
    return conditions


def _parse_recipients(raw: Any, users: set[str], problems: list[str]) -> list[Recipient]:
    if not isinstance(raw, list) or not raw:
        problems.append("recipients: a non-empty list")
        return []
    recipients = []
    for i, item in enumerate(raw):
        where = f"recipients[{i}]"
        kind = item.get("kind") if isinstance(item, Mapping) else None
        value = item.get("value") if isinstance(item, Mapping) else None
        if kind not in RECIPIENT_KINDS:
            problems.append(f"{where}.kind: one of {', '.join(RECIPIENT_KINDS)}")
            continue
        if kind == "role" and value not in {str(r) for r in Role}:
            problems.append(f"{where}.value: a role ({', '.join(str(r) for r in Role)})")
        elif kind == "user" and value not in users:
            problems.append(f"{where}.value: {value!r} is not a user of the organisation")
        elif kind == "field" and not (isinstance(value, str) and _FIELD.match(value)):
            problems.append(f"{where}.value: the event data field that names a user, e.g. approver_id")
        recipients.append(Recipient(str(kind), str(value) if kind in ("role", "user", "field") else None))
    return recipients


def _parse_templates(raw: Any, problems: list[str]) -> dict[str, Template]:
    if not isinstance(raw, Mapping) or DEFAULT_LANGUAGE not in raw:
        problems.append(f"templates: an object by language, with at least {DEFAULT_LANGUAGE}")
        return {}
    templates = {}
    for language, item in raw.items():
        where = f"templates.{language}"
        if language not in LANGUAGES:
            problems.append(f"{where}: languages are {', '.join(LANGUAGES)}")
            continue
        if not isinstance(item, Mapping) or not isinstance(item.get("title"), str) or not isinstance(
            item.get("body"), str
        ):
            problems.append(f"{where}: an object with a title and a body (strings)")
            continue
        for part in ("title", "body"):
            fault = template_fault(item[part])
            if fault:
                problems.append(f"{where}.{part}: {fault}")
        templates[language] = Template(item["title"], item["body"])
    return templates


def template_fault(text: str) -> str | None:
    """Why a template cannot be rendered safely, or None: placeholders are plain `{name}` only."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"not a valid template ({exc})"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conversion:
            return f"placeholder {{{name}}} must be a plain name such as {{subject}} (no attributes, formats)"
    return None


# --- rendering --------------------------------------------------------------------------------


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "—"


def template_context(event_type: str, subject: str, data: Mapping[str, Any], org: Organisation) -> dict[str, str]:
    """The names a template can use: the event data flattened (contact.name -> contact_name), the
    subject and event type, and `<field>_name` for user ids (owner_name, changed_by_name ...)."""
    context: dict[str, str] = {"subject": subject, "event_type": event_type}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                flatten(f"{prefix}_{key}" if prefix else str(key), inner)
        elif value is None:
            context.setdefault(prefix, "—")
        elif isinstance(value, list):
            context[prefix] = ", ".join(str(v) for v in value)
        else:
            context[prefix] = str(value)

    flatten("", dict(data))
    for key, value in list(context.items()):
        user = org.user(value) if key.endswith(("_id", "_by")) else None
        if user is not None:
            context[f"{key.removesuffix('_id')}_name"] = user.name
    return context


def render(template: Template, context: Mapping[str, str]) -> tuple[str, str]:
    values = _Blank(context)
    return template.title.format_map(values), template.body.format_map(values)


# --- recipients -------------------------------------------------------------------------------


def resolve_recipients(rule: Rule, data: Mapping[str, Any], org: Organisation) -> list[str]:
    """The user ids a rule reaches for this event's data, each once, in the rule's order."""
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    found: dict[str, None] = {}
    for recipient in rule.recipients:
        if recipient.kind == "field":
            _, named = _lookup(data, recipient.value or "")
            if isinstance(named, str) and org.user(named) is not None:
                found[named] = None
            continue
        for user_id in _expand(recipient, owner, org):
            if org.user(user_id) is not None:
                found[user_id] = None
    return list(found)


def _expand(recipient: Recipient, owner: str | None, org: Organisation) -> list[str]:
    match recipient.kind:
        case "owner":
            return [owner] if owner else []
        case "owner_manager":
            manager = org.manager_of(owner) if owner else None
            return [manager] if manager else []
        case "managers":
            return _managers_above(owner, org)
        case "team":
            team = org.team_of(owner) if owner else None
            if team is None:
                return [owner] if owner else []
            manager = org.teams[team].manager
            return [u.id for u in org.users.values() if u.team == team] + ([manager] if manager else [])
        case "role":
            return [u.id for u in org.with_role(Role(recipient.value or ""))]
        case "user":
            return [recipient.value] if recipient.value else []
    raise AssertionError(f"unchecked recipient kind {recipient.kind}")


def _managers_above(user_id: str | None, org: Organisation) -> list[str]:
    chain: list[str] = []
    current = org.manager_of(user_id) if user_id else None
    while current and current not in chain:
        chain.append(current)
        current = org.manager_of(current)
    return chain


# --- preferences and quiet hours --------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    language: str = DEFAULT_LANGUAGE
    opted_out: frozenset[str] = frozenset()  # channels the user turned off (the inbox cannot be)
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str = "Asia/Shanghai"

    def channels(self, wanted: Iterable[str]) -> list[str]:
        return [c for c in wanted if c == "inbox" or c not in self.opted_out]

    def quiet_until(self, now: datetime) -> datetime | None:
        """When the quiet hours around `now` end, or None when `now` is not in quiet hours."""
        if self.quiet_start is None or self.quiet_end is None or self.quiet_start == self.quiet_end:
            return None
        local = now.astimezone(ZoneInfo(self.timezone))
        start, end, clock = self.quiet_start, self.quiet_end, local.time().replace(tzinfo=None)
        if start < end:  # e.g. 12:00-14:00
            inside = start <= clock < end
        else:  # across midnight, e.g. 22:00-08:00
            inside = clock >= start or clock < end
        if not inside:
            return None
        ends = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
        if ends <= local:
            ends += timedelta(days=1)
        return ends.astimezone(UTC)


def next_digest_at(after: datetime, hour: int, timezone: str) -> datetime:
    """The first `hour`:00 in `timezone` strictly after `after` (the daily digest's time), in UTC."""
    local = after.astimezone(ZoneInfo(timezone))
    at = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if at <= local:
        at = (local + timedelta(days=1)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return at.astimezone(UTC)


@dataclass(frozen=True)
class Digest:
    """One rep's morning summary: overdue follow-ups, deals closing this week, new high-score leads."""

    overdue: tuple[str, ...] = ()
    closing: tuple[str, ...] = ()
    hot: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.overdue or self.closing or self.hot)

    def context(self) -> dict[str, str]:
        def listed(ids: tuple[str, ...]) -> str:
            shown = ", ".join(ids[:10])
            return shown + (f" (+{len(ids) - 10})" if len(ids) > 10 else "") if ids else "—"

        return {"overdue_count": str(len(self.overdue)), "closing_count": str(len(self.closing)),
                "hot_count": str(len(self.hot)), "overdue": listed(self.overdue), "closing": listed(self.closing),
                "hot": listed(self.hot)}


def parse_preferences(raw: Mapping[str, Any]) -> Preferences:
    problems = []
    language = raw.get("language", DEFAULT_LANGUAGE)
    if language not in LANGUAGES:
        problems.append(f"language: one of {', '.join(LANGUAGES)}")
    opted_out = raw.get("opted_out") or []
    if not isinstance(opted_out, list) or any(c not in ("push", "email") for c in opted_out):
        problems.append("opted_out: a list drawn from push, email (the inbox keeps everything)")
        opted_out = []
    timezone = raw.get("timezone") or "Asia/Shanghai"
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"timezone: {timezone!r} is not an IANA time zone")
    quiet = raw.get("quiet_hours")
    start = end = None
    if quiet is not None:
        try:
            start, end = time.fromisoformat(quiet["start"]), time.fromisoformat(quiet["end"])
        except (KeyError, TypeError, ValueError):
            problems.append('quiet_hours: {"start": "HH:MM", "end": "HH:MM"} or null')
    if problems:
        raise InvalidRule(problems)
    return Preferences(str(language), frozenset(opted_out), start, end, str(timezone))


# --- webhooks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential back-off with jitter: try n (n >= 1) failed -> wait about base * 2^(n-1),
    capped, drawn from [half, full] of that (equal jitter) so failing endpoints are not hit in step."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    max_attempts: int = 8

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> timedelta | None:
        """How long to wait after failed attempt `attempt`; None when it was the last try."""
        if attempt >= self.max_attempts:
            return None
        full = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        draw = (rng or random).uniform(full / 2, full)
        return timedelta(seconds=draw)


SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret `whsec_<base64>`; ValueError when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("the secret must look like whsec_<base64 key>")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("the secret's key is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("the secret's key must be 24 to 64 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks: v1 = HMAC-SHA256 of id.timestamp.body)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def new_secret(token: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(token).decode()


# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS over IPv6, Alibaba Cloud): the
# address an SSRF wants most, since it hands out the machine's credentials.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 addresses a NAT64 gateway translates to IPv4
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _effective(address: str) -> Address:
    """The address a connection really reaches: an IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16) or
    NAT64 IPv6 address reaches its embedded IPv4 address, so it is judged as that."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return embedded
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify_address(address: str) -> str:
    """`public`, or what else an address is: `metadata`, `loopback`, `unspecified`, `link-local`,
    `multicast`, `private` or `reserved` (anything else not globally reachable, e.g. 100.64.0.0/10)."""
    ip = _effective(address)
    if ip in _METADATA:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"  # 0.0.0.0 and :: reach this machine on Linux
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    return "public" if ip.is_global else "reserved"


@dataclass(frozen=True)
class NetworkPolicy:
    """Webhook targets may only resolve to public addresses, unless an operator allowed the network
    (FUNNELCAST_WEBHOOK_ALLOWED_NETWORKS). A cloud metadata address stays refused inside an allowed
    network unless that network is the one address itself: allowing 169.254.0.0/16 for devices on
    the link must not hand out the machine's credentials."""

    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, cidrs: str) -> "NetworkPolicy":
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs.split(",") if c.strip()))

    def refusal(self, address: str) -> str | None:
        """None when a webhook may be delivered to the address; otherwise its kind (`classify_address`)."""
        kind = classify_address(address)
        if kind == "public":
            return None
        ip = _effective(address)
        if any(ip in network and (kind != "metadata" or network.num_addresses == 1) for network in self.allowed):
            return None
        return kind

    def permits(self, address: str) -> bool:
        return self.refusal(address) is None


@dataclass
class TokenBucket:
    """A rate limit: on average `rate` takes per second, up to `burst` at once. Time is passed in."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, now: float) -> "TokenBucket":
        """A bucket allowing one second's worth at once (at least one)."""
        burst = max(1.0, rate)
        return cls(rate, burst, burst, now)

    def available(self, now: float) -> int:
        """How many may be taken now."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        return int(self.tokens)

    def take(self, count: int, now: float) -> None:
        if count > self.available(now):
            raise ValueError(f"{count} taken, {int(self.tokens)} available")
        self.tokens -= count
