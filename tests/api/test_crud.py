"""Create, read, update and delete records through the REST API."""

from __future__ import annotations

from conftest import create


def test_create_returns_the_stored_record_with_system_fields(client):
    response = client.post("/api/accounts", json={"name": "Acme", "region": "在售", "revenue": "1250.5"})
    assert response.status_code == 201
    record = response.json()
    assert record["name"] == "Acme" and record["region"] == "在售"
    assert record["revenue"] == "1250.50"  # money: a string with the field's scale
    assert record["version"] == 1 and record["active"] is True  # default applied
    assert record["created_at"].endswith("Z") and record["created_at"] == record["updated_at"]
    assert response.headers["location"] == f"/api/accounts/{record['id']}"
    assert response.headers["etag"] == '"1"'
    assert client.get(response.headers["location"]).json() == record


def test_values_are_normalised_by_their_field_type(client):
    record = create(client, "accounts", name="N", email="Ada@EXAMPLE.com", phone="+49 30 901820",
                    website="https://example.com/x", founded="2024-01-05",
                    last_contact="2024-01-05T09:30:00+08:00", tags=["vip", "lead", "vip"], meta={"k": [1, 2]})
    assert record["email"] == "ada@example.com"
    assert record["phone"] == "+4930901820"
    assert record["founded"] == "2024-01-05"
    assert record["last_contact"] == "2024-01-05T01:30:00Z"  # stored and returned in UTC
    assert record["tags"] == ["vip", "lead"]
    assert record["meta"] == {"k": [1, 2]}


def test_unicode_text_round_trips(client):
    record = create(client, "accounts", name="上海明辉贸易有限公司", notes="重点客户 ✓")
    again = client.get(f"/api/accounts/{record['id']}").json()
    assert again["name"] == "上海明辉贸易有限公司" and again["notes"] == "重点客户 ✓"


def test_patch_changes_only_given_fields_and_bumps_version(client):
    record = create(client, "accounts", name="Acme", employees=10, notes="keep")
    response = client.patch(f"/api/accounts/{record['id']}", json={"employees": 11})
    assert response.status_code == 200
    changed = response.json()
    assert changed["employees"] == 11 and changed["notes"] == "keep" and changed["version"] == 2
    assert changed["updated_at"] >= record["updated_at"] and changed["created_at"] == record["created_at"]
    assert response.headers["etag"] == '"2"'


def test_empty_patch_changes_nothing_and_keeps_the_version(client):
    record = create(client, "accounts", name="Acme")
    response = client.patch(f"/api/accounts/{record['id']}", json={})
    assert response.status_code == 200 and response.json() == record


def test_patch_with_null_clears_an_optional_field(client):
    record = create(client, "accounts", name="Acme", employees=10)
    changed = client.patch(f"/api/accounts/{record['id']}", json={"employees": None}).json()
    assert changed["employees"] is None


def test_delete_removes_the_record(client):
    record = create(client, "accounts", name="Gone")
    assert client.delete(f"/api/accounts/{record['id']}").status_code == 204
    response = client.get(f"/api/accounts/{record['id']}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == f"no account with id {record['id']}"


def test_delete_cascades_and_restricts_as_configured(client):
    account = create(client, "accounts", name="Parent")
    contact = create(client, "contacts", name="Child", account=account["id"])
    deal = create(client, "deals", title="Big", account=account["id"])
    response = client.delete(f"/api/accounts/{account['id']}")
    assert response.status_code == 409
    assert "1 deal record(s) via deal.account" in response.json()["detail"]
    assert client.get(f"/api/contacts/{contact['id']}").status_code == 200  # nothing was deleted
    assert client.delete(f"/api/deals/{deal['id']}").status_code == 204
    assert client.delete(f"/api/accounts/{account['id']}").status_code == 204
    assert client.get(f"/api/contacts/{contact['id']}").status_code == 404  # cascaded


def test_many_to_many_links_are_written_and_read_as_id_lists(client):
    s1, s2 = create(client, "segments", name="A"), create(client, "segments", name="B")
    account = create(client, "accounts", name="Linked", segments=[s2["id"], s1["id"]])
    assert account["segments"] == sorted([s1["id"], s2["id"]])
    changed = client.patch(f"/api/accounts/{account['id']}", json={"segments": [s2["id"]]}).json()
    assert changed["segments"] == [s2["id"]]
    related = client.get(f"/api/segments/{s2['id']}/accounts").json()
    assert [r["id"] for r in related["data"]] == [account["id"]]
    owner_side = client.get(f"/api/accounts/{account['id']}/segments").json()
    assert [r["name"] for r in owner_side["data"]] == ["B"]


def test_unknown_record_ids_are_404_not_errors(client):
    for path in ("/api/accounts/999999", "/api/accounts/99999999999999999999999", "/api/accounts/0/contacts"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
    assert client.patch("/api/accounts/424242", json={"name": "x"}).status_code == 404
    assert client.delete("/api/accounts/424242").status_code == 404


def test_python_api_uses_the_same_pipeline(crm):
    from loomcrm.engine.errors import Problem
    from loomcrm.engine.runtime.context import Context

    account = crm.entity("account")
    record = crm.records.create(account, {"name": "Direct", "email": "x@example.com"}, Context(actor=7))
    assert record["created_by"] == 7 and record["owner"] == 7
    try:
        crm.records.create(account, {"name": "Dup", "email": "x@example.com"}, Context())
    except Problem as exc:
        assert exc.status == 422 and exc.errors[0]["field"] == "email" and exc.errors[0]["code"] == "unique"
    else:
        raise AssertionError("duplicate email was accepted")


def test_datetimes_without_offset_are_read_in_the_app_time_zone(db_url):
    from loomcrm.engine.runtime.context import Context
    from loomcrm.engine.testing import make_loom, project_files

    files = project_files("entities:\n  call:\n    fields:\n      at: {type: datetime}\n",
                          app="app: {name: Shanghai CRM, timezone: Asia/Shanghai}")
    loom = make_loom(files, db_url)
    try:
        record = loom.records.create(loom.entity("call"), {"at": "2026-03-02 10:00"}, Context())
        assert record["at"] == "2026-03-02T02:00:00Z"
        record = loom.records.create(loom.entity("call"), {"at": "2026-03-02T10:00:00Z"}, Context())
        assert record["at"] == "2026-03-02T10:00:00Z"
    finally:
        loom.close()


def test_dynamic_defaults_take_the_writers_time_day_and_user(db_url):
    import datetime as dt

    from loomcrm.engine.identity import Users
    from loomcrm.engine.runtime.context import Context
    from loomcrm.engine.testing import make_loom, project_files

    files = project_files("""
entities:
  task:
    fields:
      title: {type: string, required: true}
      opened_at: {type: datetime, default: now}
      due: {type: date, default: today}
      assignee: {type: ref, to: user, default: current_user}
""", app="app: {name: Shanghai CRM, timezone: Asia/Shanghai}")
    loom = make_loom(files, db_url)
    try:
        user = Users(loom).create("zhang", "correct horse battery")
        moment = dt.datetime(2026, 3, 1, 20, 0, tzinfo=dt.UTC)  # already 2 March in Shanghai
        task = loom.records.create(loom.entity("task"), {"title": "Call back"}, Context(actor=user["id"], now=moment))
        assert (task["opened_at"], task["due"], task["assignee"]) == ("2026-03-01T20:00:00Z", "2026-03-02", user["id"])
        given = loom.records.create(loom.entity("task"), {"title": "Set", "due": "2026-04-01", "assignee": None},
                                    Context(actor=user["id"], now=moment))
        assert (given["due"], given["assignee"]) == ("2026-04-01", None)  # given values win, null included
    finally:
        loom.close()
