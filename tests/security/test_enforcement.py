"""Roles enforced through the API: team scopes and managers, the union rule, anonymous callers,
projects without roles, expansion and related lists, history redaction, reassigning, explaining."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from loomcrm.engine.cli import main as loom_cli
from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, make_loom

FILES = {
    "loom.yaml": "app: {name: E}\ninclude: [entities.yaml, roles.yaml]\n",
    "entities.yaml": """
entities:
  user:
    fields:
      region: {type: enum, options: [east, west]}
  company:
    fields:
      name: {type: string, required: true}
      region: {type: enum, options: [east, west]}
      secret: {type: string}
  deal:
    fields:
      title: {type: string, required: true}
      company: {type: ref, to: company, on_delete: cascade}
      amount: {type: money}
      margin: {type: decimal}
""",
    "roles.yaml": """
roles:
  rep:
    entities:
      company: {read: all, where: "record.region == user.region"}
      deal: {read: team, create: true, update: own, delete: own}
    fields:
      company.secret: hidden
      deal.margin: hidden
  finance:
    entities:
      deal: {read: all}
    fields:
      deal.title: hidden
  boss:
    entities:
      company: {read: all, create: true, update: all, delete: all}
      deal: {read: all, create: true, update: all, delete: all}
      user: {read: all}
""",
}


@pytest.fixture
def crm(db_url):
    loom = make_loom(FILES, db_url)
    users = Users(loom)
    ids = {}
    for name, roles, region in (("ann", ["rep"], "east"), ("bob", ["rep"], "east"), ("cid", ["rep"], "west"),
                                ("fay", ["finance"], None), ("max", ["boss"], None), ("duo", ["rep", "finance"], "east"),
                                ("nobody", [], None)):
        ids[name] = users.create(name, None, **({"roles": roles} if roles else {}),
                                 **({"region": region} if region else {}))["id"]
    users.create_team("blue", manager="max")
    users.add_member("blue", "ann")
    users.add_member("blue", "bob")
    users.create_team("solo")
    users.add_member("solo", "cid")
    with TestClient(loom.asgi()) as client:
        yield loom, client, ids
    loom.close()


def as_user(loom, client, name: str) -> TestClient:
    client.headers["Authorization"] = f"Bearer {api_token(loom, name)}"
    return client


def make(loom, entity: str, owner: int, **data) -> dict:
    return loom.records.create(loom.entity(entity), data, Context(actor=owner))


def ids_of(response) -> set[int]:
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["data"]}


def test_team_scope_reaches_teammates_records_and_managers_reach_their_teams(crm):
    loom, client, ids = crm
    deals = {name: make(loom, "deal", ids[name], title=f"{name}'s deal")["id"] for name in ("ann", "bob", "cid")}
    assert ids_of(as_user(loom, client, "ann").get("/api/deals")) == {deals["ann"], deals["bob"]}
    assert ids_of(as_user(loom, client, "cid").get("/api/deals")) == {deals["cid"]}
    # max manages team blue without being a member; his boss role reads all anyway: check via access
    access = loom.access(ids["max"])
    assert set(access.team_owners) >= {ids["ann"], ids["bob"], ids["max"]}
    assert ids["cid"] not in access.team_owners


def test_counts_and_pages_cover_only_the_rows_the_caller_reaches(crm):
    loom, client, ids = crm
    for name in ("ann", "cid", "cid", "cid"):
        make(loom, "deal", ids[name], title="x")
    page = as_user(loom, client, "ann").get("/api/deals?count=true&limit=1").json()
    assert page["count"] == 1 and page["next_cursor"] is None


def test_row_rule_limits_reads_to_the_users_region_in_sql(crm):
    loom, client, ids = crm
    east = make(loom, "company", ids["max"], name="East Co", region="east")["id"]
    west = make(loom, "company", ids["max"], name="West Co", region="west")["id"]
    assert ids_of(as_user(loom, client, "ann").get("/api/companies")) == {east}
    assert ids_of(as_user(loom, client, "cid").get("/api/companies")) == {west}
    assert client.get(f"/api/companies/{east}").status_code == 404  # cid: exists, but not for him
    assert as_user(loom, client, "fay").get("/api/companies").status_code == 403


def test_several_roles_combine_as_the_union_of_rows_and_fields(crm):
    loom, client, ids = crm
    mine = make(loom, "deal", ids["duo"], title="Duo's", margin="0.25")["id"]
    theirs = make(loom, "deal", ids["cid"], title="Cid's", margin="0.5")["id"]
    # rep alone: team rows, margin hidden; finance alone: all rows, title hidden; duo holds both
    records = {r["id"]: r for r in as_user(loom, client, "duo").get("/api/deals").json()["data"]}
    assert set(records) == {mine, theirs}
    assert records[theirs]["title"] == "Cid's" and records[theirs]["margin"] == "0.50"
    fay = {r["id"]: r for r in as_user(loom, client, "fay").get("/api/deals").json()["data"]}
    assert "title" not in fay[mine] and fay[mine]["margin"] == "0.25"


def test_a_user_without_roles_and_an_anonymous_caller_reach_nothing(crm, db_url):
    loom, client, ids = crm
    make(loom, "deal", ids["ann"], title="x")
    assert as_user(loom, client, "nobody").get("/api/deals").status_code == 403
    files = {**FILES, "loom.yaml": "app: {name: E}\ninclude: [entities.yaml, roles.yaml]\nauth: {required: false}\n"}
    open_loom = make_loom(files, db_url, migrate=False)
    with TestClient(open_loom.asgi()) as anonymous:
        answer = anonymous.get("/api/deals")
        assert answer.status_code == 403 and "deal" in answer.json()["detail"]
    open_loom.close()


def test_a_project_without_roles_lets_every_signed_in_user_do_everything(db_url):
    files = {"loom.yaml": "app: {name: N}\ninclude: [entities.yaml]\n", "entities.yaml": FILES["entities.yaml"]}
    loom = make_loom(files, db_url)
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'anyone')}"
        created = client.post("/api/companies", json={"name": "Free", "secret": "s"})
        assert created.status_code == 201 and created.json()["secret"] == "s"
    loom.close()


def test_expanded_references_show_readable_fields_and_only_ids_outside_the_scope(crm):
    loom, client, ids = crm
    east = make(loom, "company", ids["max"], name="East Co", region="east", secret="s3cr3t-east")["id"]
    west = make(loom, "company", ids["max"], name="West Co", region="west", secret="s3cr3t-west")["id"]
    make(loom, "deal", ids["ann"], title="A", company=east)
    make(loom, "deal", ids["ann"], title="B", company=west)
    answer = as_user(loom, client, "ann").get("/api/deals?expand=company&sort=title")
    first, second = answer.json()["data"]
    assert first["company"] == {k: v for k, v in first["company"].items() if k != "secret"}
    assert first["company"]["name"] == "East Co" and second["company"] == {"id": west}
    assert "s3cr3t" not in answer.text
    assert as_user(loom, client, "fay").get("/api/deals?expand=company").status_code == 403  # cannot read companies


def test_related_lists_apply_the_childs_scope_and_refuse_hidden_links(crm):
    loom, client, ids = crm
    east = make(loom, "company", ids["max"], name="East Co", region="east")["id"]
    ann = make(loom, "deal", ids["ann"], title="A", company=east)["id"]
    make(loom, "deal", ids["cid"], title="C", company=east)
    assert ids_of(as_user(loom, client, "ann").get(f"/api/companies/{east}/deals")) == {ann}
    assert as_user(loom, client, "cid").get(f"/api/companies/{east}/deals").status_code == 404  # west rep


def test_refused_writes_name_the_field_and_change_nothing(crm):
    loom, client, ids = crm
    deal = make(loom, "deal", ids["ann"], title="A", margin="0.1")
    client = as_user(loom, client, "ann")
    answer = client.patch(f"/api/deals/{deal['id']}", json={"title": "B", "margin": "0.9"})
    assert answer.status_code == 403
    assert [e["field"] for e in answer.json()["errors"]] == ["margin"]
    stored = loom.records.get(loom.entity("deal"), deal["id"], Context())
    assert stored["title"] == "A" and stored["margin"] == "0.10" and stored["version"] == 1
    bob = make(loom, "deal", ids["bob"], title="Bob's")
    refused = client.patch(f"/api/deals/{bob['id']}", json={"title": "mine now"})
    assert refused.status_code == 403 and "records you own" in refused.json()["detail"]
    assert client.delete(f"/api/deals/{bob['id']}").status_code == 403
    assert as_user(loom, client, "fay").post("/api/deals", json={"title": "x"}).status_code == 403


def test_references_may_only_point_at_records_the_caller_can_read(crm):
    loom, client, ids = crm
    east = make(loom, "company", ids["max"], name="East Co", region="east")["id"]
    west = make(loom, "company", ids["max"], name="West Co", region="west")["id"]
    client = as_user(loom, client, "ann")
    refused = client.post("/api/deals", json={"title": "Probe", "company": west})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "company", "code": "not_found", "message": f"no company with id {west}"}]
    assert client.post("/api/deals", json={"title": "Fine", "company": east}).status_code == 201
    deal = make(loom, "deal", ids["ann"], title="Mine")
    assert client.patch(f"/api/deals/{deal['id']}", json={"company": west}).status_code == 422
    assert loom.records.get(loom.entity("deal"), deal["id"], Context())["company"] is None


def test_history_redacts_values_of_hidden_fields(crm):
    loom, client, ids = crm
    deal = make(loom, "deal", ids["ann"], title="A", margin="0.1")
    loom.records.update(loom.entity("deal"), deal["id"], {"margin": "0.2", "title": "B"}, Context(actor=ids["max"]))
    entries = as_user(loom, client, "bob").get(f"/api/deals/{deal['id']}/history").json()["data"]
    assert entries[0]["changes"]["margin"] == ["redacted", "redacted"]
    assert entries[0]["changes"]["title"] == ["A", "B"]
    assert "0.2" not in client.get(f"/api/deals/{deal['id']}/history").text
    assert as_user(loom, client, "cid").get(f"/api/deals/{deal['id']}/history").status_code == 404


def test_reassign_endpoint_needs_the_right_to_change_every_record(crm):
    loom, client, ids = crm
    for _ in range(3):
        make(loom, "deal", ids["ann"], title="A")
    body = {"from_user": ids["ann"], "to_user": ids["bob"]}
    assert as_user(loom, client, "ann").post("/api/reassign", json=body).status_code == 403
    answer = as_user(loom, client, "max").post("/api/reassign", json=body)
    assert answer.status_code == 200 and answer.json() == {"moved": {"deal": 3}}
    assert as_user(loom, client, "max").post("/api/reassign", json={"from_user": ids["bob"], "to_user": 99999,
                                                                     "entities": ["dael"]}).status_code == 422
    assert {d["owner"] for d in client.get("/api/deals").json()["data"]} == {ids["bob"]}


def test_loom_access_explains_why_a_user_can_or_cannot_reach_a_record(crm, tmp_path, db_url, capsys):
    loom, client, ids = crm
    west = make(loom, "company", ids["max"], name="West Co", region="west")["id"]
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    assert loom_cli(["-p", str(tmp_path), "access", "--user", "ann", "--entity", "company", "--id", str(west),
                     "--database", db_url]) == 0
    out = capsys.readouterr().out
    assert "read    no: your roles reach only all records where record.region == user.region" in out
    assert "fields hidden: secret" in out
    assert loom_cli(["-p", str(tmp_path), "access", "--user", "cid", "--entity", "company", "--id", str(west),
                     "--database", db_url]) == 0
    assert "read    yes: all records where record.region == user.region" in capsys.readouterr().out
