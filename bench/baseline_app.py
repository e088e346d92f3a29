"""A hand-written litestar + SQLAlchemy Core app for the ``account`` table of examples/sales.

The yardstick for ``bench/api.py``: what a competent developer would write by hand for one entity,
with the same JSON shapes as Loom, the same engine settings (``create_db_engine``: PRAGMAs, WAL,
``BEGIN IMMEDIATE`` for writes), the same in-process write lock on SQLite and the same
``LOOM_SYNC_TO_THREAD`` switch. Statements are built once; SQLAlchemy caches their compiled form.

Run: ``LOOM_DATABASE_URL=sqlite:////tmp/x.db uvicorn --factory --app-dir bench baseline_app:create_app``
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import json
import os
from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Litestar, Request, Response, get, post
from litestar.params import Parameter

from loomcrm.engine.database import create_db_engine, write_lock
from loomcrm.generators.tables import audit_table

REGIONS = frozenset({"north", "east", "south", "west", "overseas"})
INDUSTRIES = frozenset({"manufacturing", "retail", "technology", "finance", "healthcare", "education",
                        "logistics", "energy"})
TYPES = frozenset({"prospect", "customer", "partner"})
RATINGS = frozenset({"hot", "warm", "cold"})
CENT = decimal.Decimal("0.01")
MAX_REVENUE = decimal.Decimal("1e16")

metadata = sa.MetaData()
account = sa.Table(
    "account", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("industry", sa.String(255)),
    sa.Column("type", sa.String(255)),
    sa.Column("website", sa.String(2048)),
    sa.Column("phone", sa.String(32)),
    sa.Column("email", sa.String(254)),
    sa.Column("city", sa.String(100)),
    sa.Column("region", sa.String(255)),
    sa.Column("annual_revenue", sa.Numeric(18, 2)),
    sa.Column("employees", sa.BigInteger),
    sa.Column("rating", sa.String(255)),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.Integer),
    sa.Column("updated_by", sa.Integer),
    sa.Column("owner", sa.Integer),
    sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
)
c = account.c


def _iso(value: dt.datetime) -> str:
    value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value.isoformat().replace("+00:00", "Z")


#: (name, converter) per column, in table order: the JSON form of a row.
DUMPERS = [(col.name, _iso if isinstance(col.type, sa.DateTime) else str if isinstance(col.type, sa.Numeric)
            else None) for col in account.columns]


def dump(row: sa.Row) -> dict[str, Any]:
    return {name: value if conv is None or value is None else conv(value)
            for (name, conv), value in zip(DUMPERS, row, strict=True)}


# --- statements, built once ----------------------------------------------------------------------
def _list_stmt(by_region: bool, after: bool) -> sa.Select:
    stmt = sa.select(account)
    if by_region:
        stmt = stmt.where(c.region == sa.bindparam("region"))
    if after:
        stmt = stmt.where(c.id > sa.bindparam("after"))
    return stmt.order_by(c.id).limit(sa.bindparam("limit"))


LIST = {(r, a): _list_stmt(r, a) for r in (False, True) for a in (False, True)}
GET = sa.select(account).where(c.id == sa.bindparam("id"))
INSERT = account.insert().returning(*account.columns)
#: The audit trail Loom keeps is part of the job: with BASELINE_AUDIT=1 (the default) the baseline writes
#: the same row, {field: [null, value]} per field set, in the same transaction (Loom's table definition,
#: hand-written insert).
AUDIT_INSERT = audit_table(sa.MetaData()).insert()


SYSTEM = frozenset({"id", "created_at", "updated_at", "created_by", "updated_by", "owner", "version"})


def problem(status: int, title: str, errors: list[dict] | None = None) -> Response:
    return Response({"type": "about:blank", "title": title, "status": status, "errors": errors or []},
                    status_code=status, media_type="application/problem+json")


def _cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([last_id]).encode()).decode().rstrip("=")


def _after(cursor: str) -> int | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return value[0] if isinstance(value, list) and len(value) == 1 and isinstance(value[0], int) else None
    except ValueError:
        return None


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    industry: str | None = None
    type: str | None = "prospect"
    website: str | None = None
    phone: str | None = None
    email: str | None = None
    city: str | None = None
    region: str | None = None
    annual_revenue: float | str | None = None
    employees: int | None = None
    rating: str | None = None
    description: str | None = None


def validate(data: AccountIn) -> tuple[dict[str, Any], list[dict[str, str]]]:
    errors = []

    def bad(field: str, code: str, message: str) -> None:
        errors.append({"field": field, "code": code, "message": message})

    if not data.name.strip() or len(data.name) > 200:
        bad("name", "max_length", "must be 1 to 200 characters")
    for field, options in (("industry", INDUSTRIES), ("type", TYPES), ("region", REGIONS), ("rating", RATINGS)):
        value = getattr(data, field)
        if value is not None and value not in options:
            bad(field, "option", f"'{value}' is not one of the options")
    for field, limit in (("city", 100), ("website", 2048), ("phone", 32), ("email", 254)):
        value = getattr(data, field)
        if value is not None and len(value) > limit:
            bad(field, "max_length", f"must be at most {limit} characters")
    revenue = None
    if data.annual_revenue is not None:
        try:
            revenue = decimal.Decimal(str(data.annual_revenue).strip()).quantize(CENT)
            if not 0 <= revenue < MAX_REVENUE:
                bad("annual_revenue", "range", "must be from 0 to 10^16")
        except decimal.InvalidOperation:
            bad("annual_revenue", "type", "must be a number")
    if data.employees is not None and data.employees < 0:
        bad("employees", "min", "must be at least 0")
    values = {f: getattr(data, f) for f in AccountIn.__struct_fields__}
    values["annual_revenue"] = revenue
    return values, errors


def create_app() -> Litestar:
    engine = create_db_engine(os.environ["LOOM_DATABASE_URL"])
    sqlite = engine.dialect.name == "sqlite"
    sync = os.environ.get("LOOM_SYNC_TO_THREAD", "1") != "0"
    audit = os.environ.get("BASELINE_AUDIT", "1") != "0"

    @get("/api/accounts", sync_to_thread=sync)
    def list_accounts(request: Request, limit: int = Parameter(default=50, ge=1, le=500),
                      cursor: str | None = None) -> Any:
        params: dict[str, Any] = {"limit": limit + 1}
        for key, value in request.query_params.items():
            if key in ("filter[region]", "filter[region][eq]"):
                if value not in REGIONS:
                    return problem(400, "Invalid query parameters", [{"field": key, "code": "option"}])
                params["region"] = value
            elif key.startswith("filter["):
                return problem(400, "Invalid query parameters", [{"field": key, "code": "unknown_field"}])
        if cursor is not None:
            params["after"] = _after(cursor)
            if params["after"] is None:
                return problem(400, "Invalid query parameters", [{"field": "cursor", "code": "invalid_cursor"}])
        with engine.connect() as conn:
            rows = conn.execute(LIST["region" in params, cursor is not None], params).all()
        data = [dump(r) for r in rows[:limit]]
        return {"data": data, "next_cursor": _cursor(data[-1]["id"]) if len(rows) > limit else None}

    @get("/api/accounts/{record_id:int}", sync_to_thread=sync)
    def get_account(record_id: int) -> Any:
        with engine.connect() as conn:
            row = conn.execute(GET, {"id": record_id}).first()
        if row is None:
            return problem(404, "Not found")
        return Response(dump(row), headers={"ETag": f'"{row.version}"'})

    @post("/api/accounts", sync_to_thread=sync)
    def create_account(data: AccountIn) -> Any:
        values, errors = validate(data)
        if errors:
            return problem(422, "Validation failed", errors)
        now = dt.datetime.now(dt.UTC)
        values["created_at"] = values["updated_at"] = now.replace(tzinfo=None) if sqlite else now
        with (write_lock if sqlite else contextlib.nullcontext()), \
                engine.connect().execution_options(loom_write=True) as conn, conn.begin():
            row = conn.execute(INSERT, values).one()
            out = dump(row)
            if audit:
                changes = {k: [None, v] for k, v in out.items() if v is not None and k not in SYSTEM}
                conn.execute(AUDIT_INSERT, {"at": now, "actor": None, "channel": "api", "action": "create",
                                            "entity": "account", "record_id": row.id, "version": row.version,
                                            "changes": changes})
        return Response(out, status_code=201,
                        headers={"Location": f"/api/accounts/{row.id}", "ETag": f'"{row.version}"'})

    @get("/health", sync_to_thread=False)
    def health() -> dict:
        return {"status": "ok"}

    return Litestar([list_accounts, get_account, create_account, health], on_shutdown=[engine.dispose])
