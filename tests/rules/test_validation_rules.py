"""Validation rules: CEL checks per entity, compiled and name-checked with the config, run on create
and update for every channel, all failures reported together; evaluation errors are 422s naming the rule."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from loomcrm.engine.errors import Problem
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, config_errors, project_files

DEALS = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      amount: {type: money}
      discount: {type: money}
      stage: {type: enum, options: [open, won, lost], default: open}
      close_date: {type: date}
      units: {type: integer}
    rules:
      discount_limit:
        check: "record.discount == null || record.discount <= record.amount * 0.2"
        message: {en: "A discount may be at most 20 % of the amount.", zh: 折扣不能超过金额的 20%。}
        fields: [discount]
      won_needs_amount:
        when: "record.stage == 'won'"
        check: "record.amount != null && record.amount > 0.0"
        message: A won deal needs an amount.
        fields: [amount, stage]
      no_shrinking:
        when: "old.amount != null && record.amount != null"
        check: "record.amount >= old.amount"
        message: The amount of a deal cannot go down.
        fields: [amount]
      unit_price:
        when: "record.units != null"
        check: "int(record.amount) / record.units >= 1"
        message: Each unit must cost at least 1.
"""


def errors_of(info) -> list[tuple[str, str]]:
    return sorted((e["field"], e["code"]) for e in info.value.errors)


@pytest.fixture
def deals(loom_factory):
    return loom_factory(DEALS)


def test_every_failing_rule_is_reported_together_at_its_fields(deals):
    entity = deals.entity("deal")
    with pytest.raises(Problem) as info:
        deals.records.create(entity, {"title": "A", "amount": "100", "discount": "50", "stage": "won",
                                      "units": 0}, Context())
    assert info.value.status == 422
    assert errors_of(info) == [("", "rule_error"), ("discount", "discount_limit")]
    assert any("rule 'unit_price' could not be evaluated" in e["message"] for e in info.value.errors)
    with pytest.raises(Problem) as info:
        deals.records.create(entity, {"title": "B", "stage": "won"}, Context())
    assert errors_of(info) == [("amount", "won_needs_amount"), ("stage", "won_needs_amount")]


def test_rules_see_the_whole_record_and_the_old_values_on_update(deals):
    entity = deals.entity("deal")
    deal = deals.records.create(entity, {"title": "A", "amount": "100"}, Context())
    with pytest.raises(Problem) as info:
        deals.records.update(entity, deal["id"], {"amount": "90"}, Context())
    assert errors_of(info) == [("amount", "no_shrinking")]
    with pytest.raises(Problem):  # the stored amount (100) counts: 30 is more than 20 %
        deals.records.update(entity, deal["id"], {"discount": "30"}, Context())
    assert deals.records.update(entity, deal["id"], {"discount": "20", "amount": "150"}, Context())["version"] == 2


def test_messages_follow_the_readers_locale_and_the_api_answers_422(deals):
    entity = deals.entity("deal")
    with pytest.raises(Problem) as info:
        deals.records.create(entity, {"title": "A", "amount": "10", "discount": "5"}, Context(locale="zh"))
    assert info.value.errors[0]["message"] == "折扣不能超过金额的 20%。"
    with TestClient(deals.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(deals)}"
        answer = client.post("/api/deals", json={"title": "A", "amount": "10", "discount": "5"})
    assert answer.status_code == 422 and answer.json()["errors"] == [
        {"field": "discount", "code": "discount_limit", "message": "A discount may be at most 20 % of the amount."}]


def test_rules_read_the_user_today_and_now(loom_factory):
    loom = loom_factory("""
        entities:
          user:
            fields:
              region: {type: enum, options: [east, west]}
          visit:
            fields:
              region: {type: enum, options: [east, west]}
              day: {type: date}
            rules:
              own_region:
                when: "user.id != null"
                check: "record.region == user.region"
                message: Visits are logged in your own region.
              not_in_the_past:
                check: "record.day == null || record.day >= today"
                message: A visit cannot be planned in the past.
                fields: [day]
    """)
    from loomcrm.engine.identity import Users

    east = Users(loom).create("eve", None, region="east")["id"]
    visit = loom.entity("visit")
    assert loom.records.create(visit, {"region": "west"}, Context())["region"] == "west"  # Loom's own code: no user
    with pytest.raises(Problem) as info:
        loom.records.create(visit, {"region": "west", "day": "2001-01-01"}, Context(actor=east))
    assert errors_of(info) == [("", "own_region"), ("day", "not_in_the_past")]


def test_a_rule_naming_an_unknown_field_is_a_config_error_with_a_hint():
    text = config_errors(project_files("""
        entities:
          deal:
            fields:
              amount: {type: money}
            rules:
              positive:
                check: "record.amout > 0.0"
                message: Positive.
              typo:
                check: "record.amount = 1"
                message: x
                fields: [amont]
    """))
    assert "entities.yaml:8:16 E135 rule 'deal.positive': deal has no field 'amout' (record.amout)" in text
    assert "did you mean 'amount'?" in text
    assert "E135 rule 'deal.typo': 'record.amount = 1' is not valid CEL" in text
    assert "hint: compare with == (a single = is not an operator)" in text
    assert "E125 rule 'deal.typo' names field 'amont', which 'deal' does not have" in text
