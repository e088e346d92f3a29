"""Bad input gets a 4xx problem+json naming each field, and nothing is written."""

from __future__ import annotations

import pytest
from conftest import create


def errors_of(response) -> dict[str, str]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["status"] == response.status_code
    return {e["field"]: e["code"] for e in body["errors"]}


def count(client, plural="accounts") -> int:
    return client.get(f"/api/{plural}?count=true&limit=1").json()["count"]


def test_all_field_errors_are_reported_together(client):
    response = client.post("/api/accounts", json={
        "name": "x" * 51, "region": "west", "employees": -1, "email": "nope", "phone": "12",
        "website": "ftp://x", "founded": "2024-13-01", "code": "bad",
    })
    assert response.status_code == 422
    assert errors_of(response) == {
        "name": "max_length", "region": "option", "employees": "min", "email": "email", "phone": "phone",
        "website": "url", "founded": "type", "code": "pattern",
    }
    assert count(client) == 0


def test_wrong_json_types_are_422_with_the_field(client):
    response = client.post("/api/accounts", json={"name": 5, "employees": "many", "active": "perhaps"})
    assert response.status_code == 422
    assert set(errors_of(response)) == {"name", "employees", "active"}


def test_unknown_and_missing_fields_are_named(client):
    response = client.post("/api/accounts", json={"nmae": "Acme"})
    assert response.status_code == 422
    assert errors_of(response) == {"nmae": "unknown_field", "name": "required"}


def test_system_and_read_only_fields_cannot_be_written(client):
    response = client.post("/api/accounts", json={"name": "A", "version": 7, "id": 3})
    assert response.status_code == 422
    assert errors_of(response) == {"version": "read_only", "id": "read_only"}
    account = create(client, "accounts", name="A")
    response = client.post("/api/deals", json={"title": "D", "account": account["id"], "locked": "mine"})
    assert response.status_code == 422 and errors_of(response) == {"locked": "read_only"}
    deal = create(client, "deals", title="D", account=account["id"])
    assert deal["locked"] == "fixed" and deal["stage"] == "open"


def test_required_field_cannot_be_emptied_by_patch(client):
    account = create(client, "accounts", name="Keep")
    response = client.patch(f"/api/accounts/{account['id']}", json={"name": None})
    assert response.status_code == 422 and errors_of(response) == {"name": "required"}
    assert client.get(f"/api/accounts/{account['id']}").json()["name"] == "Keep"


def test_reference_to_a_missing_record_is_a_field_error(client):
    response = client.post("/api/contacts", json={"name": "Orphan", "account": 424242})
    assert response.status_code == 422
    assert errors_of(response) == {"account": "not_found"}
    assert count(client, "contacts") == 0
    response = client.post("/api/accounts", json={"name": "A", "segments": [424242]})
    assert response.status_code == 422 and errors_of(response) == {"segments": "not_found"}
    assert count(client) == 0  # the account insert was rolled back with the bad links


def test_missing_references_are_reported_with_the_other_errors(client):
    response = client.post("/api/contacts", json={"name": 5, "account": 424242})
    assert response.status_code == 422
    assert errors_of(response) == {"name": "type", "account": "not_found"}


def test_unique_violation_names_the_field_and_keeps_the_first(client):
    create(client, "accounts", name="First", email="a@example.com")
    response = client.post("/api/accounts", json={"name": "Second", "email": "A@example.com"})
    assert response.status_code == 422
    assert errors_of(response) == {"email": "unique"}
    assert count(client) == 1


def test_decimal_precision_and_scale_are_enforced(client):
    assert errors_of(client.post("/api/contacts", json={"name": "a", "score": "12.34"})) == {"score": "scale"}
    assert errors_of(client.post("/api/contacts", json={"name": "a", "score": 123456})) == {"score": "precision"}
    assert create(client, "contacts", name="a", score=1234.5)["score"] == "1234.5"


def test_malformed_json_is_400(client):
    response = client.post("/api/accounts", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("body", [[], "text", 5, None])
def test_a_body_that_is_not_an_object_is_rejected(client, body):
    response = client.post("/api/accounts", json=body)
    assert 400 <= response.status_code < 500


def test_json_field_values_must_satisfy_its_json_schema(loom_factory):
    from loomcrm.engine.errors import Problem
    from loomcrm.engine.runtime.context import Context

    loom = loom_factory("""
        entities:
          product:
            fields:
              name: {type: string, required: true}
              specs:
                type: json
                json_schema:
                  type: object
                  properties: {weight_kg: {type: number, minimum: 0}}
                  required: [weight_kg]
        """)
    entity = loom.entity("product")
    record = loom.records.create(entity, {"name": "Box", "specs": {"weight_kg": 1.5}}, Context())
    assert record["specs"] == {"weight_kg": 1.5}
    with pytest.raises(Problem) as info:
        loom.records.create(entity, {"name": "Bad", "specs": {"weight_kg": -1}}, Context())
    assert info.value.errors == [{"field": "specs", "code": "json_schema",
                                  "message": "['weight_kg']: -1 is less than the minimum of 0"}]


def test_nul_characters_are_refused_in_text_and_json(client):
    response = client.post("/api/accounts", json={"name": "a\u0000b", "meta": {"k": "\u0000"}})
    assert response.status_code == 422
    assert errors_of(response) == {"name": "type", "meta": "type"}
