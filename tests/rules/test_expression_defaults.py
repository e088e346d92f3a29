"""Defaults from expressions (``default_expr:``): CEL worked out on create when a value is missing, read
through the field's type, kept when given, changeable later; bad expressions are config errors."""

from __future__ import annotations

import datetime as dt

import pytest

from loomcrm.engine.errors import Problem
from loomcrm.engine.expressions import reads_of
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import config_errors, make_loom, project_files

DEALS = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      amount: {type: money}
      commission: {type: money, default_expr: "record.amount * 0.1"}
      follow_up: {type: date, default_expr: "now + duration('240h')"}
      label: {type: string, default_expr: "record.title + ' (' + record.stage + ')'"}
      stage: {type: enum, options: [open, won], default: open}
      reviewer: {type: integer, default_expr: "user.id"}
"""
APP = "app: {name: Test CRM, locales: [en], timezone: Asia/Shanghai}"
EVENING = dt.datetime(2026, 3, 1, 20, 0, tzinfo=dt.UTC)  # already 2 March in Shanghai


@pytest.fixture
def deals(db_url):
    loom = make_loom(project_files(DEALS, app=APP), db_url)
    yield loom
    loom.close()


def test_missing_values_come_from_the_expressions(deals):
    deal = deals.records.create(deals.entity("deal"), {"title": "Big", "amount": "1000.50"},
                                Context(actor=None, now=EVENING))
    assert deal["commission"] == "100.05"  # a double, rounded to the field's scale
    assert deal["follow_up"] == "2026-03-12"  # a timestamp becomes a date in the app's time zone
    assert deal["label"] == "Big (open)"  # reads the values given and the other defaults
    assert deal["reviewer"] is None  # no user: user.id is null


def test_given_values_are_kept_and_can_be_changed_later(deals):
    entity = deals.entity("deal")
    deal = deals.records.create(entity, {"title": "Big", "amount": "1000", "commission": "5",
                                         "follow_up": "2026-01-01", "label": "mine"}, Context(now=EVENING))
    assert (deal["commission"], deal["follow_up"], deal["label"]) == ("5.00", "2026-01-01", "mine")
    changed = deals.records.update(entity, deal["id"], {"commission": "7", "amount": "2000"}, Context())
    assert changed["commission"] == "7.00"  # a default, not a computation


def test_a_default_can_read_the_user(deals):
    from loomcrm.engine.identity import Users

    user = Users(deals, channel="python").create("zhang", "a long password used only in tests")
    deal = deals.records.create(deals.entity("deal"), {"title": "Big", "amount": "1"}, Context(actor=user["id"]))
    assert deal["reviewer"] == user["id"]


def test_a_default_that_cannot_be_worked_out_is_a_422_naming_the_field(deals):
    with pytest.raises(Problem) as info:  # null * 0.1
        deals.records.create(deals.entity("deal"), {"title": "No amount"}, Context())
    assert info.value.status == 422
    [error] = info.value.errors
    assert error["field"] == "commission" and error["code"] == "default_error"
    assert "deal.commission" in error["message"]


def test_a_default_that_does_not_fit_its_field_is_a_422_naming_the_field(db_url):
    loom = make_loom(project_files("""
        entities:
          deal:
            fields:
              size: {type: integer, max: 10, default_expr: "100"}
    """), db_url)
    try:
        with pytest.raises(Problem) as info:
            loom.records.create(loom.entity("deal"), {}, Context())
        assert info.value.errors[0]["field"] == "size" and info.value.errors[0]["code"] == "max"
    finally:
        loom.close()


def test_default_expression_mistakes_are_config_errors_with_their_place():
    text = config_errors(project_files("""
        entities:
          deal:
            fields:
              amount: {type: money}
              commission: {type: money, default_expr: "record.amont * 0.1"}
              previous: {type: money, default_expr: "old.amount"}
              fee: {type: money, default: 1, default_expr: "record.amount"}
    """))
    assert ("entities.yaml:6:47 E135 default of 'deal.commission': deal has no field 'amont' (record.amont)\n"
            "    hint: did you mean 'amount'?") in text
    assert "E135 default of 'deal.previous': a default is set when a record is created, so there is no 'old'" \
           in text
    assert "E129 field 'deal.fee' has both 'default_expr:' and 'default:'" in text


def test_a_default_reads_the_initial_state_of_a_workflow(db_url):
    loom = make_loom(project_files("""
        entities:
          deal:
            fields:
              stage: {type: enum, options: [new, won]}
              label: {type: string, default_expr: "'a ' + record.stage + ' deal'"}
        workflows:
          pipeline:
            entity: deal
            field: stage
            transitions:
              win: {from: new, to: won}
    """), db_url)
    try:
        assert loom.records.create(loom.entity("deal"), {}, Context())["label"] == "a new deal"
    finally:
        loom.close()


def test_what_the_defaults_read_is_worked_out_once_per_entity(deals, monkeypatch):
    from loomcrm.engine.runtime import rules

    calls = []
    monkeypatch.setattr(rules, "reads_of", lambda expressions: calls.append(1) or reads_of(expressions))
    entity, ctx = deals.entity("deal"), Context(now=EVENING)
    deals.records.create(entity, {"title": "First", "amount": "1"}, ctx)
    first = len(calls)
    for title in ("Second", "Third"):
        deals.records.create(entity, {"title": title, "amount": "1", "label": "given"}, ctx)
    assert len(calls) == first
