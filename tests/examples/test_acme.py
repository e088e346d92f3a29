"""examples/acme: a company's overlay on examples/sales with a local plugin boots, migrates and serves
on SQLite and PostgreSQL; the plugin's field type, scoring and veto work through the REST API."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main as loom_cli
from loomcrm.engine.testing import api_token

ACME = Path(__file__).resolve().parents[2] / "examples" / "acme"


@pytest.fixture
def acme(db_url):
    assert loom_cli(["-p", str(ACME), "migrate", "--database", db_url]) == 0
    loom = Loom.from_project(ACME, database_url=db_url)
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'boss', ['admin'])}"
        yield loom, client
    loom.close()


def test_acme_serves_its_overlay_with_the_plugins_field_type(acme):
    loom, client = acme
    created = client.post("/api/accounts", json={"name": "Müller GmbH", "region": "overseas",
                                                  "iban": "de89 3704 0044 0532 0130 00", "customer_number": "C-1"})
    assert created.status_code == 201, created.text
    assert created.json()["iban"] == "DE89370400440532013000" and created.json()["type"] == "customer"
    bad = client.post("/api/accounts", json={"name": "X", "iban": "DE00370400440532013000"})
    assert bad.json()["errors"] == [{"field": "iban", "code": "iban", "message": "has wrong check digits"}]
    assert client.post("/api/contacts", json={"last_name": "Li", "birthday": "1990-01-01"}).status_code == 422
    schema = client.get("/schema/openapi.json").json()["components"]["schemas"]
    iban = schema["AccountCreate"]["properties"]["iban"]
    assert iban["title"] == "Bank account (IBAN)" and iban["pattern"] == r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}"
    assert schema["Account"]["properties"]["name"]["title"] == "Customer name"  # Acme's words


def test_acme_scores_deals_and_keeps_won_ones(acme):
    loom, client = acme
    account = client.post("/api/accounts", json={"name": "Acme Buyer"}).json()
    deal = client.post("/api/deals", json={"title": "Presses", "account": account["id"], "amount": "500000"}).json()
    assert deal["score"] == 25
    won = client.patch(f"/api/deals/{deal['id']}", json={"stage": "won"}).json()
    assert won["score"] == 100
    refused = client.delete(f"/api/deals/{deal['id']}")
    assert refused.status_code == 403 and "won deals cannot be deleted" in refused.json()["detail"]
    assert client.patch(f"/api/deals/{deal['id']}", json={"score": 1}).status_code == 403  # read-only for all
