"""Load the CRM export in ../shared/data/crm_sales_opportunities through the public API.

8,800 opportunities of 35 agents under 6 managers in 3 regional offices. Their owners must be users
of the organisation, so the tool first writes an organisation file: the sample organisation plus the
data's agents (reps), managers (one team per manager, region = regional office):

    python -m services.opportunities.replay write-org maventech.toml
    FUNNELCAST_ORG_FILE=maventech.toml funnelcast up --detach
    python -m services.opportunities.replay load --url http://127.0.0.1:8002

Each deal is opened as the integration user `svc-erp` for its agent, then moved as the data says.
Stages map as: Prospecting -> `prospecting`; Engaging -> `bidding`; Won -> `bidding` then closed won;
Lost -> `bidding` then closed lost (the data names no competitor: "unknown (not in the source data)").
Amounts are USD: a won deal's close_value, otherwise the product's list price (lost deals have
close_value 0 in the data). Deals without an account go to the account "Unknown account". The data's
close date becomes `expected_close_date`; the API stamps the other times with now.
"""

import argparse
import asyncio
import csv
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.auth import issue_token
from shared.org import SAMPLE_ORG_FILE
from shared.settings import get_settings

DEFAULT_DATA = Path("../shared/data/crm_sales_opportunities")
REPLAY_USER = "svc-erp"  # the sample organisation's integration user
UNKNOWN_ACCOUNT = "Unknown account"
NO_COMPETITOR = "unknown (not in the source data)"
PRODUCT_ALIASES = {"GTXPro": "GTX Pro"}  # the pipeline's spelling of one product (SOURCE.md)
STAGE_PATHS = {
    "Prospecting": ([], None),
    "Engaging": (["bidding"], None),
    "Won": (["bidding"], "won"),
    "Lost": (["bidding"], "lost"),
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def agent_id(name: str) -> str:
    return f"agent-{slug(name)}"


def manager_id(name: str) -> str:
    return f"mgr-{slug(name)}"


@dataclass(frozen=True)
class Deal:
    source_id: str
    agent: str
    product: str
    account: str
    stage: str
    close_date: str | None
    amount: str
    region: str


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def load_deals(data: Path) -> list[Deal]:
    prices = {row["product"]: row["sales_price"] for row in _rows(data / "products.csv")}
    offices = {row["sales_agent"]: row["regional_office"] for row in _rows(data / "sales_teams.csv")}
    deals = []
    for row in _rows(data / "sales_pipeline.csv"):
        product = PRODUCT_ALIASES.get(row["product"], row["product"])
        amount = row["close_value"] if row["deal_stage"] == "Won" and row["close_value"] else prices[product]
        deals.append(Deal(
            source_id=row["opportunity_id"], agent=row["sales_agent"], product=product,
            account=row["account"] or UNKNOWN_ACCOUNT, stage=row["deal_stage"], close_date=row["close_date"] or None,
            amount=f"{amount}.00" if amount.isdigit() else amount, region=offices[row["sales_agent"]],
        ))
    return deals


def organisation_toml(data: Path) -> str:
    """The sample organisation plus the data's managers (one team each) and agents."""
    teams = _rows(data / "sales_teams.csv")
    lines = [SAMPLE_ORG_FILE.read_text(encoding="utf-8"), "\n# The MavenTech sales teams (crm_sales_opportunities)\n"]
    for manager in sorted({t["manager"] for t in teams}):
        office = next(t["regional_office"] for t in teams if t["manager"] == manager)
        lines += [
            "[[teams]]", f'id = "team-{slug(manager)}"', f'name = "{manager}\'s team"', f'region = "{office}"',
            f'manager = "{manager_id(manager)}"', "",
            "[[users]]", f'id = "{manager_id(manager)}"', f'name = "{manager}"', 'role = "manager"',
            f'team = "team-{slug(manager)}"', f'region = "{office}"', 'manager = "dir-1"', "",
        ]
    for row in teams:
        lines += [
            "[[users]]", f'id = "{agent_id(row["sales_agent"])}"', f'name = "{row["sales_agent"]}"', 'role = "rep"',
            f'team = "team-{slug(row["manager"])}"', f'region = "{row["regional_office"]}"',
            f'manager = "{manager_id(row["manager"])}"', "",
        ]
    return "\n".join(lines)


async def _send(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text}")
    answer: dict[str, Any] = response.json()
    return answer


async def replay_deal(client: httpx.AsyncClient, deal: Deal) -> str:
    opened = await _send(client, "/v1/opportunities", {
        "name": f"{deal.product} · {deal.account} ({deal.source_id})",
        "account_name": deal.account,
        "amount": deal.amount,
        "currency": "USD",
        "owner_id": agent_id(deal.agent),
        "expected_close_date": deal.close_date,
        "region": deal.region,
        "product": deal.product,
    })
    path = f"/v1/opportunities/{opened['id']}"
    moves, outcome = STAGE_PATHS[deal.stage]
    version = opened["version"]
    for stage in moves:
        version = (await _send(client, f"{path}/stage", {"stage": stage, "version": version}))["version"]
    if outcome == "won":
        await _send(client, f"{path}/close", {"outcome": "won", "reason": "won (imported)", "version": version})
    elif outcome == "lost":
        await _send(client, f"{path}/close", {
            "outcome": "lost", "reason": "lost (imported)", "competitor": NO_COMPETITOR, "version": version})
    return str(opened["id"])


async def replay(client: httpx.AsyncClient, deals: Iterable[Deal], *, concurrency: int = 16) -> Counter[str]:
    """Replay every deal, `concurrency` at a time; the count of deals per source stage."""
    queue: asyncio.Queue[Deal] = asyncio.Queue()
    for deal in deals:
        queue.put_nowait(deal)
    done: Counter[str] = Counter()

    async def worker() -> None:
        while not queue.empty():
            deal = queue.get_nowait()
            await replay_deal(client, deal)
            done[deal.stage] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _load(url: str, data: Path, limit: int | None, concurrency: int) -> None:
    deals = load_deals(data)[:limit]
    token = issue_token(REPLAY_USER, "integration", get_settings().signing_secret, 3600)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        done = await replay(client, deals, concurrency=concurrency)
    elapsed = time.monotonic() - started
    print(f"replayed {sum(done.values())} deals in {elapsed:.1f}s: {dict(done)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.opportunities.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    org = commands.add_parser("write-org", help="write the organisation file with the data's agents and managers")
    org.add_argument("path", type=Path)
    org.add_argument("--data", type=Path, default=DEFAULT_DATA)
    load = commands.add_parser("load", help="replay the deals through the opportunities API")
    load.add_argument("--url", default="http://127.0.0.1:8002")
    load.add_argument("--data", type=Path, default=DEFAULT_DATA)
    load.add_argument("--limit", type=int, default=None, help="only the first N deals")
    load.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if args.command == "write-org":
        args.path.write_text(organisation_toml(args.data), encoding="utf-8")
        print(f"wrote {args.path}; start the system with FUNNELCAST_ORG_FILE={args.path}")
    else:
        asyncio.run(_load(args.url, args.data, args.limit, args.concurrency))


if __name__ == "__main__":
    main(sys.argv[1:])
