"""List endpoints: filters, sorting, projection, expansion, counts and related lists."""

from __future__ import annotations

import pytest
from conftest import create


@pytest.fixture
def accounts(client):
    rows = [
        dict(name="Alpha", region="north", employees=10, revenue="100", founded="2020-01-01", tags=["vip"]),
        dict(name="beta", region="south", employees=20, revenue="200", founded="2021-06-01", tags=["vip", "lead"]),
        dict(name="Gamma 100%", region="在售", employees=None, founded=None, tags=[]),
        dict(name="Delta", region=None, employees=40, revenue="50.5", founded="2023-03-03", tags=["partner"]),
    ]
    return [create(client, "accounts", **{k: v for k, v in r.items() if v is not None}) for r in rows]


def names(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["name"] for r in response.json()["data"]]


@pytest.mark.parametrize("query, expected", [
    ("filter[region]=north", ["Alpha"]),
    ("filter[region][eq]=在售", ["Gamma 100%"]),
    ("filter[region][ne]=north", ["beta", "Gamma 100%", "Delta"]),  # ne keeps records without a value
    ("filter[region][in]=north,south", ["Alpha", "beta"]),
    ("filter[employees][gt]=10", ["beta", "Delta"]),
    ("filter[employees][gte]=10&filter[employees][lt]=40", ["Alpha", "beta"]),
    ("filter[employees][lte]=20", ["Alpha", "beta"]),
    ("filter[revenue][gte]=100.00", ["Alpha", "beta"]),
    ("filter[founded][lt]=2022-01-01", ["Alpha", "beta"]),
    ("filter[name][contains]=ET", ["beta"]),  # case-insensitive
    ("filter[name][contains]=100%", ["Gamma 100%"]),  # % is literal, not a wildcard
    ("filter[name][startswith]=g", ["Gamma 100%"]),
    ("filter[employees][isnull]=true", ["Gamma 100%"]),
    ("filter[founded][isnull]=false", ["Alpha", "beta", "Delta"]),
    ("filter[tags][contains]=vip", ["Alpha", "beta"]),
    ("filter[tags][contains]=vip,lead", ["beta"]),
    ("filter[active]=true&filter[region][in]=south,north", ["Alpha", "beta"]),
])
def test_filters(client, accounts, query, expected):
    assert names(client.get(f"/api/accounts?{query}")) == expected


@pytest.mark.parametrize("query, field, code", [
    ("filter[nmae]=x", "filter[nmae]", "unknown_field"),
    ("filter[name][like]=x", "filter[name][like]", "bad_operator"),
    ("filter[tags][gt]=x", "filter[tags][gt]", "bad_operator"),
    ("filter[employees][gt]=lots", "filter[employees][gt]", "type"),
    ("filter[region]=west", "filter[region]", "option"),
    ("filter[founded]=yesterday", "filter[founded]", "type"),
    ("sort=notes", "sort", "not_sortable"),
    ("sort=bogus", "sort", "unknown_field"),
    ("limit=0", "limit", "range"),
    ("limit=501", "limit", "range"),
    ("limit=ten", "limit", "range"),
    ("cursor=garbage", "cursor", "invalid_cursor"),
    ("fields=nope", "fields", "unknown_field"),
    ("expand=name", "expand", "not_allowed"),
    ("filtr[name]=x", "filtr[name]", "unknown_parameter"),
    ("count=maybe", "count", "type"),
])
def test_bad_query_parameters_are_400_naming_the_parameter(client, query, field, code):
    response = client.get(f"/api/accounts?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert {"field": field, "code": code} == {k: response.json()["errors"][0][k] for k in ("field", "code")}


def test_every_bad_parameter_is_reported_at_once(client):
    response = client.get("/api/accounts?filter[nmae]=x&limit=0&bogus=1")
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"filter[nmae]", "limit", "bogus"}


def test_sort_ascending_descending_and_nulls_last(client, accounts):
    assert names(client.get("/api/accounts?sort=employees")) == ["Alpha", "beta", "Delta", "Gamma 100%"]
    assert names(client.get("/api/accounts?sort=-employees")) == ["Delta", "beta", "Alpha", "Gamma 100%"]
    assert names(client.get("/api/accounts?sort=-created_at,name"))[0] == "Delta"


def test_count_covers_all_matches_not_the_page(client, accounts):
    body = client.get("/api/accounts?filter[employees][isnull]=false&limit=1&count=true").json()
    assert body["count"] == 3 and len(body["data"]) == 1 and body["next_cursor"]
    assert "count" not in client.get("/api/accounts").json()


def test_fields_projection_returns_only_those_fields_and_id(client, accounts):
    body = client.get("/api/accounts?fields=name,region&limit=1").json()
    assert body["data"] == [{"id": accounts[0]["id"], "name": "Alpha", "region": "north"}]
    record = client.get(f"/api/accounts/{accounts[0]['id']}?fields=employees").json()
    assert record == {"id": accounts[0]["id"], "employees": 10}


def test_expand_replaces_ids_by_records_in_one_query_per_field(client, accounts):
    create(client, "contacts", name="Ann", account=accounts[0]["id"])
    create(client, "contacts", name="Bob", account=accounts[1]["id"])
    create(client, "contacts", name="Cid")
    body = client.get("/api/contacts?expand=account&sort=name").json()
    assert [c["account"] and c["account"]["name"] for c in body["data"]] == ["Alpha", "beta", None]


def test_related_list_filters_and_pages_like_a_list(client, accounts):
    for i in range(3):
        create(client, "contacts", name=f"C{i}", account=accounts[0]["id"])
    create(client, "contacts", name="Other", account=accounts[1]["id"])
    body = client.get(f"/api/accounts/{accounts[0]['id']}/contacts?limit=2&count=true&sort=-name").json()
    assert [c["name"] for c in body["data"]] == ["C2", "C1"] and body["count"] == 3
    rest = client.get(f"/api/accounts/{accounts[0]['id']}/contacts?limit=2&sort=-name&cursor={body['next_cursor']}")
    assert [c["name"] for c in rest.json()["data"]] == ["C0"] and rest.json()["next_cursor"] is None
