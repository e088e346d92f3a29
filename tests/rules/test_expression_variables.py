"""How expressions see records: ``record.f`` is compiled as a flat variable (cheap to hand to CEL), while
an expression that needs the record as a map (``has()``, the record as a whole) still gets one."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from loomcrm.engine.expressions import MAPS, Binding, compile_expression, context
from loomcrm.engine.testing import compile_files, project_files

CRM = """
entities:
  deal:
    fields:
      title: {type: string}
      amount: {type: money}
      tags: {type: multi_enum, options: [a, b, c]}
      extra: {type: json}
"""


@pytest.fixture(scope="module")
def deal():
    manifest = compile_files(project_files(CRM))
    return manifest.entities["deal"], manifest.entities["user"]


@pytest.mark.parametrize(("text", "expected", "maps"), [
    ("record.amount > 10.0 && record.title == 'Fleet'", True, set()),
    ("record.tags.all(t, t != 'c') && record.tags.exists(t, t == 'a')", True, set()),
    ("record.extra.size == 'big'", True, set()),
    ("has(record.title) && size(record.title) == 5", True, {"record"}),
    ("size(record) >= 4", True, {"record"}),
    ("old.amount == null && user.id == 7", True, set()),
    ("record . amount == 12.5", True, set()),
])
def test_every_form_of_reading_a_record_sees_its_values(deal, text, expected, maps):
    entity, user = deal
    expression = compile_expression(text, entity, user)
    assert set(expression.reads.get(MAPS, ())) == maps
    values = {"record": {"title": "Fleet", "amount": 12.5, "tags": ["a", "b"], "extra": {"size": "big"}},
              "old": None, "user": {"id": 7}}
    assert expression.evaluate(context(expression.reads, values)) is expected


# --- Binding: one context per thread, values converted again only when they change ----------------------


def binding_of(deal, text):
    entity, user = deal
    expression = compile_expression(text, entity, user)
    return expression, Binding(expression.reads)


def test_a_binding_reuses_its_context_and_sees_every_changed_value(deal):
    expression, bind = binding_of(deal, "record.title + ':' + string(record.amount)")
    first = bind({"record": {"title": "Fleet", "amount": Decimal("12.50")}})
    assert expression.evaluate(first) == "Fleet:12.5"
    second = bind({"record": {"title": "Lorry", "amount": Decimal("12.50")}})
    assert second is first  # the same context, only the title set again
    assert expression.evaluate(second) == "Lorry:12.5"
    assert expression.evaluate(bind({"record": {"title": "Van", "amount": Decimal("3")}})) == "Van:3"


@pytest.mark.parametrize(("before", "after", "text", "expected"), [
    (1, 1.0, "record.extra + 0.5 == 1.5", True),  # equal in Python, not in CEL (int + double fails)
    (1, True, "record.extra == true", True),
    (0.0, -0.0, "1.0 / record.extra < 0.0", True),  # 0.0 == -0.0; CEL tells them apart
    ("a", "b", "record.extra == 'b'", True),
    ([1], [1, 2], "size(record.extra) == 2", True),  # lists are always set again
    ({"k": 1}, {"k": 2}, "record.extra.k == 2", True),
    (None, "x", "record.extra == 'x'", True),
    ("x", None, "record.extra == null", True),
])
def test_a_binding_tells_values_apart_as_cel_does(deal, before, after, text, expected):
    expression, bind = binding_of(deal, text)
    bind({"record": {"extra": before}})
    assert expression.evaluate(bind({"record": {"extra": after}})) is expected


def test_a_value_cel_refuses_leaves_the_context_as_it_was(deal):
    expression, bind = binding_of(deal, "record.extra == 'ok'")
    bind({"record": {"extra": "first"}})
    with pytest.raises(ValueError):
        bind({"record": {"extra": object()}})
    assert expression.evaluate(bind({"record": {"extra": "ok"}})) is True
    assert expression.evaluate(bind({"record": {"extra": "first"}})) is False


def test_each_thread_binds_its_own_context(deal):
    expression, bind = binding_of(deal, "record.title")
    mine = bind({"record": {"title": "main"}})
    seen = {}

    def other():
        context = bind({"record": {"title": "worker"}})
        seen["same"], seen["value"] = context is mine, expression.evaluate(context)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"same": False, "value": "worker"}
    assert expression.evaluate(mine) == "main"


def test_a_record_read_as_a_map_is_bound_again_each_time(deal):
    expression, bind = binding_of(deal, "has(record.title) && record.title == 'b'")
    assert expression.evaluate(bind({"record": {"title": "a"}})) is False
    assert expression.evaluate(bind({"record": {"title": "b"}})) is True
