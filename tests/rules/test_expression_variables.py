"""How expressions see records: ``record.f`` is compiled as a flat variable (cheap to hand to CEL), while
an expression that needs the record as a map (``has()``, the record as a whole) still gets one."""

from __future__ import annotations

import pytest

from loomcrm.engine.expressions import MAPS, compile_expression, context
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
