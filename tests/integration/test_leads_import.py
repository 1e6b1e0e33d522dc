"""CSV import of leads against the real Postgres and Tansu: a 10,000-row file with 3 bad rows,
line-numbered errors, idempotent re-import, column mapping and the limits."""

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from services.leads.main import service
from shared import kafka
from shared.auth import issue_token
from shared.events.envelope import parse_and_validate
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.service import create_service_app
from shared.settings import Settings
from tests.conftest import own_servers, settings_for
from tests.support.topics import read_topic
from tests.support.waiting import eventually

CSV = {"Content-Type": "text/csv; charset=utf-8"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """The import's 10,000s of events stay off the session broker, where other services' consumers would
    have to read through them."""
    yield from own_servers(tmp_path_factory, "import")


@pytest.fixture(scope="module")
async def import_settings(
    servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    own = settings_for(*servers, tmp_path_factory.mktemp("import-home"))
    await kafka.ensure_topics(own)
    return own


@pytest.fixture(scope="module")
async def client(import_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, import_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as http:
            yield http
        # every event reaches this module's broker before the app stops, none is left for the next app
        await eventually(lambda: outbox_drained(import_settings), timeout=120, interval=0.2)


async def outbox_drained(settings: Settings) -> bool:
    conn = await asyncpg.connect(settings.database_url_for("leads"))
    try:
        return not await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def leads_db(import_settings: Settings, client: httpx.AsyncClient) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(import_settings.database_url_for("leads"))
    yield conn
    await conn.close()


def headers(settings: Settings, user: str = "admin-1", role: str = "admin") -> dict[str, str]:
    return {**CSV, "Authorization": f"Bearer {issue_token(user, role, settings.signing_secret, 600)}"}


async def test_a_10000_row_file_with_3_bad_rows_imports_9997_and_again_nothing(
    client, import_settings, leads_db
):
    settings = import_settings
    batch = uuid.uuid4().hex[:8]
    lines = ["name,company,email,grade,utm_source"]
    bad_lines = {2 + 1234: "email", 2 + 5000: "grade", 2 + 9998: "contact"}
    for i in range(10_000):
        line_number = i + 2  # the header is line 1
        email = f"imp{i}.{batch}@example.cn"
        grade = "ABCH"[i % 4]
        row = f"客户{i},公司{i % 50},{email},{grade},expo"
        if bad_lines.get(line_number) == "email":
            row = f"客户{i},公司,not-an-email,{grade},expo"
        elif bad_lines.get(line_number) == "grade":
            row = f"客户{i},公司,{email},Z,expo"
        elif bad_lines.get(line_number) == "contact":
            row = f"客户{i},公司,,{grade},expo"
        lines.append(row)
    body = ("\n".join(lines) + "\n").encode()
    assert len(body) < settings.max_body_bytes

    first = await client.post("/v1/leads/import", content=body, headers=headers(settings))
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["rows"] == 10_000 and report["imported"] == 9_997 and report["duplicates"] == 0
    assert [e["line"] for e in report["errors"]] == sorted(bad_lines)
    reasons = {e["line"]: e["reason"] for e in report["errors"]}
    for line_number, field in bad_lines.items():
        assert field in reasons[line_number], reasons
    pattern = f"%.{batch}@example.cn"
    assert await leads_db.fetchval("SELECT count(*) FROM leads WHERE email LIKE $1", pattern) == 9_997
    attributes = await leads_db.fetchval("SELECT attributes FROM leads WHERE email = $1", f"imp0.{batch}@example.cn")
    assert attributes == '{"utm_source": "expo"}'

    again = await client.post("/v1/leads/import", content=body, headers=headers(settings))
    assert again.status_code == 200, again.text
    assert again.json()["imported"] == 0 and again.json()["duplicates"] == 9_997
    assert [e["line"] for e in again.json()["errors"]] == sorted(bad_lines)
    assert await leads_db.fetchval("SELECT count(*) FROM leads WHERE email LIKE $1", pattern) == 9_997
    assert await leads_db.fetchval(
        "SELECT count(*) FROM lead_notes n JOIN leads l ON l.id = n.lead_id WHERE l.email LIKE $1", pattern
    ) == 0

    one = await leads_db.fetchval("SELECT id FROM leads WHERE email = $1", f"imp7.{batch}@example.cn")
    records = await read_topic(settings, "sales.leads", count=1, match=one.encode(), timeout=60)
    event = parse_and_validate(records[0].value)
    assert event.type == "sales.lead.captured.v1" and event.sequence == 1 and event.data["source"] == "import"


async def test_chinese_headers_mapping_and_quoted_multiline_rows_keep_their_line_numbers(client, settings, leads_db):
    tag = uuid.uuid4().hex[:8]
    digits = tag[:4].translate(str.maketrans("abcdef", "123456"))
    text = (
        "姓名,公司名称,手机号,地区,备注,邮件\n"
        f'张三,"星河, 科技",138 0000 {digits},华东,"第一行\n第二行",z{tag}@a.cn\n'
        f"李四,云帆,12,华北,,l{tag}@a.cn\n"
        f"王五,云帆,,华北,,w{tag}@a.cn\n"
    )
    manager = headers(settings, "mgr-1", "manager")
    mapped = {"map": "邮件:email"}
    response = await client.post("/v1/leads/import", params=mapped, content=text.encode(), headers=manager)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["imported"] == 2
    assert report["errors"] == [{"line": 4, "reason": report["errors"][0]["reason"]}]
    assert "contact.phone" in report["errors"][0]["reason"]
    query = "SELECT company, region, owner_id, attributes FROM leads WHERE email = $1"
    row = await leads_db.fetchrow(query, f"z{tag}@a.cn")
    assert row["company"] == "星河, 科技" and row["region"] == "华东" and row["owner_id"] in {"rep-1", "rep-2"}
    assert row["attributes"] == '{"备注": "第一行\\n第二行"}'


async def test_a_header_without_a_name_or_a_way_to_reach_the_contact_is_a_422(client, settings):
    response = await client.post("/v1/leads/import", content=b"company,grade\nx,H\n", headers=headers(settings))
    assert response.status_code == 422 and "header" in response.json()["detail"]


async def test_a_rep_may_not_import_and_an_oversized_file_is_a_413(client, settings):
    rep = await client.post("/v1/leads/import", content=b"name,email\n", headers=headers(settings, "rep-1", "rep"))
    assert rep.status_code == 403
    huge = b"name,email\n" + b"x,y@z.cn\n" * (settings.max_body_bytes // 9 + 1)
    assert (await client.post("/v1/leads/import", content=huge, headers=headers(settings))).status_code == 413


async def test_a_browser_file_upload_imports_too(client, settings, leads_db):
    email = f"upload.{uuid.uuid4().hex[:10]}@example.cn"
    token = headers(settings)["Authorization"]
    files = {"file": ("leads.csv", f"姓名,邮箱\n赵六,{email}\n".encode("gb18030"), "text/csv")}
    response = await client.post("/v1/leads/import", files=files, headers={"Authorization": token})
    assert response.status_code == 200, response.text
    assert response.json()["imported"] == 1
    assert await leads_db.fetchval("SELECT contact_name FROM leads WHERE email = $1", email) == "赵六"
