"""Configurable pipelines through the opportunities service's HTTP API, against the session's real Postgres
and Tansu: the seeded default pipeline, an admin defining and changing one (validation, 403, 409, 412),
opportunities opening and moving in it (skipping refused), a stage in use that cannot be removed, a
changed probability reaching the open and suspended deals, each announcing it, and deals moving into another
pipeline, which a retired pipeline refuses.

Each test defines pipelines of its own: the default pipeline is shared with the other modules."""

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from services.opportunities import store
from services.opportunities.domain import DEFAULT_PIPELINE
from shared.events.envelope import parse_and_validate
from shared.settings import Settings
from tests.integration import test_opportunities_api
from tests.integration.test_opportunities_api import as_, open_opportunity, post, problem
from tests.support.topics import read_topic

http = test_opportunities_api.http  # the service app in-process, one for this module too
tables = test_opportunities_api.tables


def stage(key: str, zh: str, en: str, probability: int) -> dict[str, Any]:
    return {"key": key, "label": {"zh-CN": zh, "en": en}, "probability": probability}


STAGES = [stage("lead_in", "线索", "Lead in", 5), stage("demo", "演示", "Demo", 25),
          stage("proposal", "方案", "Proposal", 50), stage("signing", "签约", "Signing", 90)]


def definition(**changes: Any) -> dict[str, Any]:
    return {"name": {"zh-CN": "渠道销售", "en": "Channel sales"}, "stages": STAGES, "allow_skipping": False,
            **changes}


async def new_pipeline(http: httpx.AsyncClient, settings: Settings, **changes: Any) -> dict[str, Any]:
    body = {"id": f"channel-{uuid.uuid4().hex[:10]}", **definition(**changes)}
    created = await post(http, settings, "/v1/pipelines", body, user="admin-1")
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"' and created.headers["location"] == f"/v1/pipelines/{body['id']}"
    return dict(created.json())


async def put(http: httpx.AsyncClient, settings: Settings, pipeline_id: str, body: dict[str, Any],
              user: str = "admin-1", **headers: str) -> httpx.Response:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await http.put(f"/v1/pipelines/{pipeline_id}", json=body, headers={**as_(settings, user), **named})


async def read(http: httpx.AsyncClient, settings: Settings, opportunity_id: str) -> dict[str, Any]:
    got = await http.get(f"/v1/opportunities/{opportunity_id}", headers=as_(settings, "rep-1"))
    assert got.status_code == 200, got.text
    return dict(got.json())


async def test_the_default_pipeline_is_seeded_as_the_domain_defines_it(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    got = await http.get("/v1/pipelines/project_sales", headers=as_(settings, "rep-1"))
    assert got.status_code == 200 and got.headers["etag"] == f'"{got.json()["version"]}"'
    body = got.json()
    assert (body["name"], body["allow_skipping"]) == ({"zh-CN": "项目销售", "en": "Project sales"}, True)
    assert [(s["key"], s["label"], s["probability"], s["closed"]) for s in body["stages"]] == [
        (s.key, s.labels, s.probability, s.closed) for s in DEFAULT_PIPELINE.stages]
    listed = await http.get("/v1/pipelines", headers=as_(settings, "rep-2"))
    assert "project_sales" in [p["id"] for p in listed.json()["items"]]
    problem(await http.get("/v1/pipelines/no_such_pipeline", headers=as_(settings, "rep-1")), 404, "no_such_pipeline")
    assert (await open_opportunity(http, settings))["pipeline_id"] == "project_sales"


async def test_only_an_admin_defines_a_pipeline_and_a_bad_one_is_refused(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    body = {"id": f"p-{uuid.uuid4().hex[:8]}", **definition()}
    for user in ("rep-1", "mgr-1", "dir-1", "svc-erp"):
        problem(await post(http, settings, "/v1/pipelines", body, user=user), 403, "admin")
    for stages, words in [
        ([], ["at least one open stage"]),
        ([STAGES[0], STAGES[0]], ["lead_in is used twice"]),
        ([stage("lost", "输", "Lost", 0)], ["lost is a closed stage"]),
        ([stage("demo", "演示", "Demo", 101)], ["from 0 to 100, not 101"]),
    ]:
        problem(await post(http, settings, "/v1/pipelines", {**body, "stages": stages}, user="admin-1"), 422, *words)
    created = await post(http, settings, "/v1/pipelines", body, user="admin-1")
    assert created.status_code == 201, created.text
    problem(await post(http, settings, "/v1/pipelines", body, user="admin-1"), 409, body["id"], "exists")
    problem(await put(http, settings, body["id"], definition(), user="mgr-1"), 403, "admin")


async def test_a_deal_opens_and_moves_in_its_pipeline_without_skipping(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    pipeline = await new_pipeline(http, settings)
    problem(await post(http, settings, "/v1/opportunities", {
        "name": "X", "account_name": "Y", "pipeline_id": "no_such_pipeline"}), 422, "no_such_pipeline")
    opp = await open_opportunity(http, settings, pipeline_id=pipeline["id"])
    assert (opp["pipeline_id"], opp["stage"], opp["probability"]) == (pipeline["id"], "lead_in", 5)
    assert opp["stage_label"] == {"zh-CN": "线索", "en": "Lead in"}
    path = f"/v1/opportunities/{opp['id']}"
    problem(await post(http, settings, f"{path}/stage", {"stage": "proposal"}), 409, "next stage is demo")
    problem(await post(http, settings, f"{path}/stage", {"stage": "bidding"}), 409, "unknown stage",
            "lead_in, demo, proposal, signing")
    moved = await post(http, settings, f"{path}/stage", {"stage": "demo"})
    assert (moved.json()["stage"], moved.json()["probability"], moved.json()["version"]) == ("demo", 25, 2)
    problem(await post(http, settings, f"{path}/close", {"outcome": "won", "reason": "x"}), 409,
            "closed won from signing")
    listed = await http.get("/v1/opportunities", params={"pipeline_id": pipeline["id"]},
                            headers=as_(settings, "rep-1"))
    assert [o["id"] for o in listed.json()["items"]] == [opp["id"]]

    events = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=2, match=opp["id"].encode())]
    created, stage_changed = (e.data for e in events)
    assert (created["pipeline_id"], created["stage"], created["probability"]) == (pipeline["id"], "lead_in", 5)
    assert (stage_changed["pipeline_id"], stage_changed["from_stage"], stage_changed["to_stage"],
            stage_changed["probability"]) == (pipeline["id"], "lead_in", "demo", 25)


async def test_a_stage_in_use_stays_and_a_changed_probability_reaches_its_deals(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    pipeline = await new_pipeline(http, settings)
    moving = await open_opportunity(http, settings, pipeline_id=pipeline["id"])
    resting = await open_opportunity(http, settings, pipeline_id=pipeline["id"])
    ended = await open_opportunity(http, settings, pipeline_id=pipeline["id"])
    await post(http, settings, f"/v1/opportunities/{resting['id']}/suspend", {"reason": "budget frozen"})
    await post(http, settings, f"/v1/opportunities/{ended['id']}/terminate", {"reason": "cancelled"})

    without_lead_in = definition(stages=STAGES[1:], version=1)
    problem(await put(http, settings, pipeline["id"], without_lead_in), 409, "lead_in holds 2")
    renamed = definition(stages=[stage("first_call", "线索", "Lead in", 5), *STAGES[1:]])
    problem(await put(http, settings, pipeline["id"], renamed), 409, "lead_in holds 2")

    versions = [(await read(http, settings, deal["id"]))["version"] for deal in (moving, resting, ended)]
    repriced = definition(stages=[stage("lead_in", "线索（新）", "New lead", 15), *STAGES[1:]])
    changed = await put(http, settings, pipeline["id"], repriced, if_match='"1"')
    assert changed.status_code == 200 and changed.headers["etag"] == '"2"', changed.text
    assert changed.json()["stages"][0]["probability"] == 15
    problem(await put(http, settings, pipeline["id"], definition(), if_match='"1"'), 412, "version 2")
    # The open and suspended deals take it at once, each at a new version; the terminated one keeps its own.
    answers = [await read(http, settings, deal["id"]) for deal in (moving, resting, ended)]
    assert [(a["probability"], a["stage_label"]["en"], a["version"]) for a in answers] == [
        (15, "New lead", versions[0] + 1), (15, "New lead", versions[1] + 1), (5, "New lead", versions[2])]
    problem(await http.patch(f"/v1/opportunities/{moving['id']}", json={"amount": "1.00"},
                             headers={**as_(settings, "rep-1"), "If-Match": f'"{versions[0]}"'}), 412)
    edited = await http.patch(f"/v1/opportunities/{moving['id']}", json={"amount": "1.00"},
                              headers=as_(settings, "rep-1"))
    assert edited.json()["probability"] == 15

    # Once no open or suspended deal is in it, the stage may go; a terminated deal keeps its key as a label.
    await post(http, settings, f"/v1/opportunities/{moving['id']}/stage", {"stage": "demo"})
    await post(http, settings, f"/v1/opportunities/{resting['id']}/terminate", {"reason": "cancelled"})
    removed = await put(http, settings, pipeline["id"], without_lead_in | {"version": 2})
    assert removed.status_code == 200, removed.text
    assert (await read(http, settings, resting["id"]))["stage_label"] == {"zh-CN": "lead_in", "en": "lead_in"}
    assert (await open_opportunity(http, settings, pipeline_id=pipeline["id"]))["stage"] == "demo"

    # Every deal re-priced announced it once, in its own order (the refused changes announced nothing).
    events = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=4, match=moving["id"].encode())]
    assert [(e.type.split(".")[2], e.data["probability"], e.sequence) for e in events] == [
        ("created", 5, 1), ("repriced", 15, 2), ("updated", 15, 3), ("stage_changed", 25, 4)]
    assert {k: events[1].data[k] for k in ("pipeline_id", "stage", "status", "previous_probability",
                                           "changed_by")} == {
        "pipeline_id": pipeline["id"], "stage": "lead_in", "status": "open", "previous_probability": 5,
        "changed_by": "admin-1"}
    events = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=4, match=resting["id"].encode())]
    assert [(e.type.split(".")[2], e.data.get("status")) for e in events] == [
        ("created", "open"), ("suspended", None), ("repriced", "suspended"), ("terminated", None)]
    written = await tables.fetch("SELECT type FROM outbox WHERE aggregateid = $1 ORDER BY position", ended["id"])
    assert [r["type"] for r in written] == ["sales.opportunity.created.v1", "sales.opportunity.terminated.v1"]


async def test_a_deal_moves_into_another_pipeline_and_a_retired_one_takes_no_new_deal(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    leaving, joining = await new_pipeline(http, settings), await new_pipeline(http, settings)
    opp = await open_opportunity(http, settings, pipeline_id=leaving["id"])
    staying = await open_opportunity(http, settings, pipeline_id=leaving["id"])
    path = f"/v1/opportunities/{opp['id']}"
    await post(http, settings, f"{path}/stage", {"stage": "demo"})

    problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": "no_such_pipeline"}), 422,
            "no_such_pipeline")
    problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": leaving["id"]}), 409, "already")
    for stage_key in ("bidding", "won"):
        problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": joining["id"], "stage": stage_key}),
                409, "lead_in, demo, proposal, signing")
    problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": joining["id"]}, if_match='"1"'), 412)
    problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": joining["id"]}, user="rep-2"), 403)
    # Into any open stage, though the pipeline forbids skipping: the deal keeps the progress it made.
    moved = await post(http, settings, f"{path}/pipeline", {"pipeline_id": joining["id"], "stage": "proposal"},
                       if_match='"2"')
    assert moved.status_code == 200, moved.text
    assert (moved.json()["pipeline_id"], moved.json()["stage"], moved.json()["probability"],
            moved.json()["version"], moved.headers["etag"]) == (joining["id"], "proposal", 50, 3, '"3"')
    history = (await read(http, settings, opp["id"]))["stage_history"]
    assert [(h["from_stage"], h["to_stage"]) for h in history][-1] == ("demo", "proposal")

    retiring = definition(retired=True)
    retired = await put(http, settings, leaving["id"], retiring, if_match='"1"')
    assert retired.status_code == 200 and retired.json()["retired"] is True, retired.text
    problem(await post(http, settings, "/v1/opportunities", {
        "name": "X", "account_name": "Y", "pipeline_id": leaving["id"]}), 409, "retired")
    problem(await post(http, settings, f"{path}/pipeline", {"pipeline_id": leaving["id"]}), 409, "retired")
    # The deals in it carry on to their close.
    kept_moving = await post(http, settings, f"/v1/opportunities/{staying['id']}/stage", {"stage": "demo"})
    assert kept_moving.status_code == 200, kept_moving.text
    problem(await put(http, settings, "project_sales", {
        "name": {"zh-CN": "项目销售", "en": "Project sales"}, "retired": True,
        "stages": [{"key": s.key, "label": s.labels, "probability": s.probability}
                   for s in DEFAULT_PIPELINE.open_stages]}), 422, "cannot be retired")
    assert (await put(http, settings, leaving["id"], definition(), if_match='"2"')).json()["retired"] is False
    assert (await open_opportunity(http, settings, pipeline_id=leaving["id"]))["pipeline_id"] == leaving["id"]

    events = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=3, match=opp["id"].encode())]
    assert [(e.type.split(".")[2], e.data.get("from_pipeline_id"), e.data["pipeline_id"], e.sequence)
            for e in events] == [("created", None, leaving["id"], 1), ("stage_changed", None, leaving["id"], 2),
                                 ("stage_changed", leaving["id"], joining["id"], 3)]
    assert (events[2].data["from_stage"], events[2].data["to_stage"], events[2].data["probability"]) == (
        "demo", "proposal", 50)


async def test_a_move_validated_against_an_older_pipeline_version_changes_nothing(
    http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    """An admin's change between a move's load and its update (the stage may be gone) makes the update miss."""
    pipeline = await new_pipeline(http, settings, allow_skipping=True)
    opp = await open_opportunity(http, settings, pipeline_id=pipeline["id"])
    async with tables.acquire() as conn:
        row = await store.opportunity(conn, opp["id"])
        assert row is not None
        loaded = store.to_domain(row)
        reordered = definition(allow_skipping=True, stages=[STAGES[0], STAGES[2], STAGES[1], STAGES[3]])
        assert (await put(http, settings, pipeline["id"], reordered)).status_code == 200
        now = datetime.now(UTC)
        moved, change = loaded.move_to("proposal", now)
        saved = await store.save_opportunity(conn, moved, expected_version=loaded.version,
                                             move=store.RecordedMove(change, "rep-1", now))
    assert saved is None
    assert (await read(http, settings, opp["id"]))["stage"] == "lead_in"

