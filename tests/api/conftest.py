"""The API tests' CRM: one config exercising every field type, served on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from loomcrm.engine.testing import api_token

CRM = """
entities:
  account:
    label: {en: Account, zh: 客户}
    fields:
      name: {type: string, required: true, max_length: 50}
      region: {type: enum, options: [north, south, {value: 在售, label: {en: On sale, zh: 在售}}]}
      revenue: {type: money, currency: EUR}
      employees: {type: integer, min: 0, max: 1000000}
      active: {type: boolean, default: true}
      founded: {type: date}
      last_contact: {type: datetime}
      tags: {type: multi_enum, options: [vip, partner, lead]}
      website: {type: url}
      email: {type: email, unique: true}
      phone: {type: phone}
      meta: {type: json}
      notes: {type: text}
      code: {type: string, pattern: "^[A-Z]{2}-[0-9]+$", read_only: false}
      segments: {type: refs, to: segment}
  contact:
    fields:
      name: {type: string, required: true}
      account: {type: ref, to: account, on_delete: cascade}
      score: {type: decimal, precision: 5, scale: 1}
  deal:
    fields:
      title: {type: string, required: true}
      account: {type: ref, to: account, required: true, on_delete: restrict}
      stage: {type: enum, options: [open, won, lost], default: open, required: true}
      locked: {type: string, read_only: true, default: fixed}
  segment:
    fields:
      name: {type: string, required: true}
"""


@pytest.fixture
def crm(loom_factory):
    return loom_factory(CRM)


@pytest.fixture
def client(crm):
    """A client signed in with an API token."""
    with TestClient(crm.asgi()) as test_client:
        test_client.headers["Authorization"] = f"Bearer {api_token(crm)}"
        yield test_client


def create(client, plural: str, **data) -> dict:
    response = client.post(f"/api/{plural}", json=data)
    assert response.status_code == 201, response.text
    return response.json()

