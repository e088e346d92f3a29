"""Computed fields (``compute:``): recomputed on every save through every channel, read-only, stored
(so filterable and sortable), seen by validation rules; bad expressions are config errors."""

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
      probability: {type: integer, min: 0, max: 100}
      weighted: {type: money, compute: "record.amount == null || record.probability == null ? null : record.amount * double(record.probability) / 100.0"}
      size: {type: enum, options: [small, big], compute: "record.amount != null && record.amount >= 10000.0 ? 'big' : 'small'"}
      units: {type: integer}
      unit_price: {type: money, compute: "record.amount / double(record.units)"}
    rules:
      big_deals_are_likely:
        check: "record.size != 'big' || record.probability >= 50"
        message: Big deals need a probability of at least 50.
        fields: [probability]
"""


@pytest.fixture
def deals(loom_factory):
    return loom_factory(DEALS)


def test_computed_fields_are_set_on_create_and_recomputed_on_update(deals):
    entity = deals.entity("deal")
    deal = deals.records.create(entity, {"title": "A", "amount": "1000.50", "probability": 40, "units": 3}, Context())
    assert deal["weighted"] == "400.20" and deal["size"] == "small" and deal["unit_price"] == "333.50"
    changed = deals.records.update(entity, deal["id"], {"probability": 10}, Context())
    assert changed["weighted"] == "100.05"


def test_computed_values_are_stored_so_lists_filter_and_sort_by_them(deals):
    entity = deals.entity("deal")
    for title, amount in (("small", "10"), ("big", "20000"), ("mid", "500")):
        deals.records.create(entity, {"title": title, "amount": amount, "probability": 60, "units": 1}, Context())
    with TestClient(deals.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(deals)}"
        page = client.get("/api/deals?filter[size]=big").json()["data"]
        assert [d["title"] for d in page] == ["big"]
        ordered = client.get("/api/deals?sort=-weighted&fields=title").json()["data"]
        assert [d["title"] for d in ordered] == ["big", "mid", "small"]
        refused = client.post("/api/deals", json={"title": "x", "weighted": "1"})
        assert refused.status_code == 422 and refused.json()["errors"][0]["code"] == "read_only"


def test_rules_see_computed_values_and_a_bad_computation_is_a_422(deals):
    entity = deals.entity("deal")
    with pytest.raises(Problem) as info:
        deals.records.create(entity, {"title": "Huge", "amount": "50000", "probability": 20, "units": 1}, Context())
    assert [e["code"] for e in info.value.errors] == ["big_deals_are_likely"]
    with pytest.raises(Problem) as info:  # amount is null: null / double -> CEL error, named
        deals.records.create(entity, {"title": "No amount", "units": 2}, Context())
    assert info.value.errors[0]["field"] == "unit_price" and info.value.errors[0]["code"] == "compute_error"


def test_a_computation_naming_an_unknown_field_is_a_config_error():
    text = config_errors(project_files("""
        entities:
          deal:
            fields:
              amount: {type: money}
              twice: {type: money, compute: "record.amont * 2.0"}
    """))
    assert "E135 computed field 'deal.twice': deal has no field 'amont' (record.amont)" in text
    assert "did you mean 'amount'?" in text


INDEPENDENT = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      amount: {type: money}
      units: {type: integer}
      net: {type: money, compute: "record.amount == null ? null : record.amount * 0.9"}
      unit_price: {type: money, compute: "record.units == null ? null : record.amount / double(record.units)"}
    rules:
      positive: {check: "record.amount == null || record.amount > 0.0", message: Must be positive., fields: [amount]}
      per_unit: {check: "record.units == null || 100.0 / double(record.units) > 1.0", message: Too many units.}
"""


def test_fields_and_rules_evaluated_in_one_go_still_report_each_problem_on_its_own(loom_factory):
    """Where no expression reads a computed field, one CEL program computes and checks everything;
    a failure anywhere falls back to one by one, so each error still names its field or rule."""
    crm = loom_factory(INDEPENDENT)
    entity = crm.entity("deal")
    deal = crm.records.create(entity, {"title": "A", "amount": "100", "units": 4}, Context())
    assert (deal["net"], deal["unit_price"]) == ("90.00", "25.00")
    with pytest.raises(Problem) as info:
        crm.records.create(entity, {"title": "B", "amount": "-5"}, Context())
    assert [(e["field"], e["code"]) for e in info.value.errors] == [("amount", "positive")]
    with pytest.raises(Problem) as info:  # 0 units: the price per unit is infinite, which money cannot hold
        crm.records.create(entity, {"title": "C", "amount": "100", "units": 0}, Context())
    assert [(e["field"], e["code"]) for e in info.value.errors] == [("unit_price", "type")]
    with pytest.raises(Problem) as info:
        crm.records.update(entity, deal["id"], {"units": 200}, Context())
    assert [(e["field"], e["code"]) for e in info.value.errors] == [("", "per_unit")]


@pytest.mark.parametrize(("amount", "factor", "expected"), [
    ("0.10", "3", "0.30"),  # 0.1 * 3.0 is 0.30000000000000004 as a double: rounded to the scale
    ("402.20", "1", "402.20"),
    ("0.05", "0.5", "0.03"),  # 0.025, a hair above it as a double
    ("12345678901.23", "1", "12345678901.23"),
    ("9999999999999.99", "1", "9999999999999.99"),  # 15 digits: the last a double keeps exactly
    ("-0.01", "0.1", "0.00"),  # -0.001: rounded to a zero, which the database stores unsigned
])
def test_a_computed_decimal_is_the_double_rounded_to_the_scale(loom_factory, amount, factor, expected):
    crm = loom_factory("""
        entities:
          line:
            fields:
              amount: {type: money}
              factor: {type: decimal, scale: 4}
              total: {type: money, compute: "record.amount * record.factor"}
    """)
    line = crm.records.create(crm.entity("line"), {"amount": amount, "factor": factor}, Context())
    assert line["total"] == expected


@pytest.mark.parametrize(("value", "result"), [
    (1234.5, "1234.50"), (0.1, "0.10"), (-0.0, "-0.00"), (9999999999999.99, "9999999999999.99"),
    (123456789012345.0, "123456789012345.00"), (0.001, "scale"), (0.30000000000000004, "scale"),
    (1e16, "precision"), (float("inf"), "type"), (float("nan"), "type"),
])
def test_a_double_given_for_a_decimal_is_read_as_written(loom_factory, value, result):
    """JSON numbers are doubles: one with no more decimals than the scale is stored as written,
    one with more is refused, never rounded (the fast path for doubles gives what text would)."""
    from loomcrm.engine.fieldtypes import FieldValueError

    crm = loom_factory("entities:\n  line:\n    fields:\n      amount: {type: money}\n")
    field = crm.entity("line").fields["amount"]
    try:
        assert str(field.field_type.parse(field, value)) == result
    except FieldValueError as exc:
        assert exc.code == result
