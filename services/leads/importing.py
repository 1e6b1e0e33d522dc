"""CSV import of leads: `POST /v1/leads/import`.

The header row names the columns; known names (English or the usual Chinese labels) map to lead
fields, `?map=手机号:phone,客户:company` adds or overrides mappings, every other column goes into the
lead's `attributes`. Each row is checked like a `POST /v1/leads` body; the answer reports every row
it did not import with its line number and reason.
"""

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from services.leads import handlers
from services.leads.api import LeadIn, Org, capture_command
from shared.auth import Principal
from shared.errors import Unprocessable
from shared.org import Role
from shared.service import ServiceDatabase
from shared.web import require_roles

router = APIRouter(prefix="/v1/leads", tags=["leads"])

Importer = Annotated[Principal, Depends(require_roles(Role.MANAGER, Role.DIRECTOR, Role.ADMIN, Role.INTEGRATION))]

_CONTACT_FIELDS = {"name", "company", "phone", "email"}
_LEAD_FIELDS = {"source", "grade", "region", "owner_id", "campaign_id", "captured_at", "left_at"}
ALIASES = {
    **{f: f for f in _CONTACT_FIELDS | _LEAD_FIELDS},
    "姓名": "name",
    "联系人": "name",
    "公司": "company",
    "公司名称": "company",
    "手机": "phone",
    "电话": "phone",
    "手机号": "phone",
    "邮箱": "email",
    "电子邮件": "email",
    "来源": "source",
    "意向等级": "grade",
    "等级": "grade",
    "地区": "region",
    "区域": "region",
    "负责人": "owner_id",
    "市场活动": "campaign_id",
    "到店时间": "captured_at",
    "离店时间": "left_at",
}


def _mapping(header: list[str], extra: str | None) -> dict[str, str]:
    aliases = dict(ALIASES)
    for pair in (extra or "").split(","):
        if not pair.strip():
            continue
        column, sep, target = pair.partition(":")
        if not sep or target.strip() not in _CONTACT_FIELDS | _LEAD_FIELDS:
            raise Unprocessable(f"map: {pair!r} is not column:field with field one of the lead's fields")
        aliases[column.strip()] = target.strip()
    return {column: aliases.get(column.strip(), "") for column in header}


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("gb18030")  # Excel on Chinese Windows saves CSV in GB18030


def _row_body(row: dict[str, str], mapping: dict[str, str]) -> dict[str, Any]:
    contact: dict[str, Any] = {}
    body: dict[str, Any] = {"source": "import", "attributes": {}}
    for column, value in row.items():
        value = (value or "").strip()
        target = mapping.get(column, "")
        if not value:
            continue
        if target in _CONTACT_FIELDS:
            contact[target] = value
        elif target:
            body[target] = value
        else:
            body["attributes"][column.strip()] = value
    contact.setdefault("name", "")
    return {**body, "contact": contact}


async def _file(request: Request) -> bytes:
    """The CSV: the body itself, or the first file of a multipart form (a browser's file field)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body()
    form = await request.form(max_files=1, max_fields=10)
    for _, value in form.multi_items():
        if isinstance(value, StarletteUploadFile):
            return await value.read()
    raise Unprocessable("file: the form carries no file")


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()
    )


@router.post("/import", summary="Import leads from a CSV file (header row; every bad row reported by line)")
async def import_leads(
    request: Request,
    principal: Importer,
    db: ServiceDatabase,
    org: Org,
    map: str | None = Query(None, description="extra column mappings, `column:field,...`"),  # noqa: A002
) -> dict[str, Any]:
    text = _decode(await _file(request))
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise Unprocessable("file: the CSV has no header row")
    mapping = _mapping(header, map)
    fields = set(mapping.values())
    if "name" not in fields or not fields & {"phone", "email"}:
        raise Unprocessable("file: the header needs a name column and a phone or an e-mail column")
    rows: list[tuple[int, handlers.CaptureLead]] = []
    invalid: list[tuple[int, str]] = []
    line = reader.line_num
    for values in reader:
        first_line, line = line + 1, reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            invalid.append((first_line, f"row: {len(values)} values for {len(header)} columns"))
            continue
        try:
            body = LeadIn.model_validate(_row_body(dict(zip(header, values, strict=True)), mapping))
        except ValidationError as exc:
            invalid.append((first_line, _reason(exc)))
            continue
        rows.append((first_line, capture_command(body)))
    report = await handlers.import_leads(db, org, principal, rows)
    errors = sorted(invalid + report.rejected)
    return {
        "rows": len(rows) + len(invalid),
        "imported": len(report.created),
        "duplicates": len(report.duplicates),
        "rejected": len(errors),
        "errors": [{"line": n, "reason": reason} for n, reason in errors],
        "duplicate_lines": [{"line": n, "lead_id": lead_id} for n, lead_id in report.duplicates],
    }
