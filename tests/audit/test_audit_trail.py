"""The audit trail: every write leaves one row in its own transaction, and a record's history
replays to its current state."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from loomcrm.engine.errors import Problem
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.runtime.audit import AUDIT
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token

CRM = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      region: {type: enum, options: [north, south, 在售]}
      revenue: {type: money, currency: EUR}
      since: {type: date}
      tags: {type: refs, to: tag}
  tag:
    fields:
      name: {type: string, required: true}
"""


@pytest.fixture
def crm(loom_factory):
    return loom_factory(CRM)


def entries(loom, entity="account", record_id=None):
    with loom.engine.connect() as conn:
        stmt = sa.select(AUDIT).where(AUDIT.c.entity == entity).order_by(AUDIT.c.id)
        if record_id is not None:
            stmt = stmt.where(AUDIT.c.record_id == record_id)
        return [dict(r._mapping) for r in conn.execute(stmt)]


def test_each_write_records_who_when_what_and_channel(crm):
    entity = crm.entity("account")
    record = crm.records.create(entity, {"name": "Acme", "region": "在售", "revenue": "10"}, Context(actor=7))
    crm.records.update(entity, record["id"], {"revenue": "12.5", "region": None}, Context(actor=8, channel="import"))
    crm.records.delete(entity, record["id"], Context(actor=9, channel="api"))
    rows = entries(crm)
    assert [(r["action"], r["actor"], r["channel"], r["version"]) for r in rows] == [
        ("create", 7, "python", 1), ("update", 8, "import", 2), ("delete", 9, "api", 2)]
    assert rows[0]["changes"] == {"name": [None, "Acme"], "region": [None, "在售"], "revenue": [None, "10.00"]}
    assert rows[1]["changes"] == {"revenue": ["10.00", "12.50"], "region": ["在售", None]}
    assert rows[2]["changes"] == {"name": ["Acme", None], "revenue": ["12.50", None]}
    assert all(r["at"].tzinfo is not None for r in rows)


def test_a_rolled_back_write_leaves_no_audit_row(loom_factory):
    class Veto:
        @hookimpl
        def loom_after_update(self, ctx, entity, old, record):
            raise Problem(422, "Refused", detail="no")

    loom = loom_factory(CRM, plugins=[Veto()])
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "Acme"}, Context())
    with pytest.raises(Problem):
        loom.records.update(entity, record["id"], {"name": "Changed"}, Context())
    assert [r["action"] for r in entries(loom)] == ["create"]


def test_history_endpoint_pages_newest_first_and_survives_deletion(crm):
    with TestClient(crm.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(crm)}"
        record = client.post("/api/accounts", json={"name": "v1"}).json()
        for i in range(2, 6):
            client.patch(f"/api/accounts/{record['id']}", json={"name": f"v{i}"})
        client.delete(f"/api/accounts/{record['id']}")
        first = client.get(f"/api/accounts/{record['id']}/history?limit=4").json()
        assert [e["action"] for e in first["data"]] == ["delete", "update", "update", "update"]
        assert first["data"][1]["changes"] == {"name": ["v4", "v5"]}
        rest = client.get(f"/api/accounts/{record['id']}/history?limit=4&cursor={first['next_cursor']}").json()
        assert [e["action"] for e in rest["data"]] == ["update", "create"] and rest["next_cursor"] is None
        assert client.get("/api/accounts/424242/history").status_code == 404
        bad = client.get(f"/api/accounts/{record['id']}/history?cursor=x&sort=at")
        assert bad.status_code == 400 and {e["field"] for e in bad.json()["errors"]} == {"cursor", "sort"}


def test_history_of_one_record_does_not_show_others(crm):
    entity = crm.entity("account")
    a = crm.records.create(entity, {"name": "A"}, Context())
    crm.records.create(entity, {"name": "B"}, Context())
    page = crm.records.history(entity, a["id"], Context(), limit=50, before=None)
    assert [e["changes"]["name"] for e in page["data"]] == [[None, "A"]]


def test_purge_deletes_only_rows_older_than_retention(crm, tmp_path):
    from loomcrm.engine.runtime.audit import purge_before

    entity = crm.entity("account")
    old_ctx = Context(now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    crm.records.create(entity, {"name": "Old"}, old_ctx)
    crm.records.create(entity, {"name": "New"}, Context())
    with crm.engine.connect() as conn, conn.begin():
        assert purge_before(conn, dt.datetime.now(dt.UTC) - dt.timedelta(days=30)) == 1
    assert [r["changes"]["name"][1] for r in entries(crm)] == ["New"]


def replay(history: list[dict]) -> dict | None:
    state: dict | None = None
    for entry in history:  # oldest first
        if entry["action"] == "create":
            state = {}
        for name, (_, new) in entry["changes"].items():
            state[name] = new
        if entry["action"] == "delete":
            state = None
    return state


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.tuples(
    st.sampled_from(["update", "update", "update", "delete_create"]),
    st.fixed_dictionaries({}, optional={
        "name": st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20)
                .filter(lambda s: s.strip() == s and s),
        "region": st.sampled_from([None, "north", "south", "在售"]),
        "revenue": st.one_of(st.none(), st.decimals(min_value=0, max_value=10**6, places=2).map(str)),
        "since": st.one_of(st.none(), st.dates(min_value=dt.date(1990, 1, 1)).map(str)),
        "tag_links": st.lists(st.integers(0, 2), max_size=3),
    })), min_size=1, max_size=8))
def test_history_replays_to_the_current_state(crm, steps):
    account = crm.entity("account")
    tags = [crm.records.create(crm.entity("tag"), {"name": f"t{i}"}, Context())["id"] for i in range(3)]
    record = crm.records.create(account, {"name": "start"}, Context())
    for action, change in steps:
        change = dict(change)
        links = change.pop("tag_links", None)
        if links is not None:
            change["tags"] = [tags[i] for i in links]
        if action == "delete_create":
            crm.records.delete(account, record["id"], Context())
            record = crm.records.create(account, {"name": "again", **change}, Context())
        else:
            crm.records.update(account, record["id"], change, Context())
    current = crm.records.get(account, record["id"], Context())
    history = list(reversed(crm.records.history(account, record["id"], Context(), limit=500, before=None)["data"]))
    state = replay(history)

    def present(values: dict) -> dict:
        return {k: v for k, v in values.items() if v not in (None, [])}

    assert present(state) == present({f.name: current[f.name] for f in account.user_fields})
