"""Row rules: CEL predicates checked against the entities and run as SQL conditions.

The SQL a rule becomes must select exactly the rows a plain Python reading of the rule selects,
on SQLite and PostgreSQL, with the null semantics documented in ``loomcrm.engine.rowrules``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from loomcrm.engine.rowrules import RowRule, RowRuleError, compile_row_rule
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_files, make_loom, project_files

ENTITIES = """
entities:
  user:
    fields:
      region: {type: enum, options: [north, south, east]}
      quota: {type: decimal}
  deal:
    fields:
      name: {type: string, required: true}
      region: {type: enum, options: [north, south, east]}
      origin: {type: enum, options: [north, south, east]}
      amount: {type: money, min: 0}
      close_date: {type: date}
      hot: {type: boolean}
      tags: {type: multi_enum, options: [vip, new]}
      partners: {type: refs, to: user}
      notes: {type: json}
roles:
  rep:
    entities:
      deal: {read: all}
  manager:
    entities:
      deal: {read: all}
"""

#: name, owner, region, origin, amount, close_date, hot
DEALS = [
    ("a", 1, "north", "north", "100", "2025-06-01", True),
    ("b", 2, "south", None, "5000", "2026-03-01", False),
    ("c", 3, "east", "east", "0", None, None),
    ("d", 1, None, None, None, "2025-12-31", True),
    ("e", 2, "north", "south", "2500.50", "2026-01-01", False),
]

#: The deals as Python reads them.
ROWS = {name: {"owner": owner, "region": region, "origin": origin, "hot": hot,
               "amount": None if amount is None else Decimal(amount),
               "close_date": None if close_date is None else dt.date.fromisoformat(close_date)}
        for name, owner, region, origin, amount, close_date, hot in DEALS}

NORTH = {"id": 1, "region": "north", "quota": Decimal("2500.50"), "teams": [2], "roles": ["rep"]}
SOUTH = {"id": 2, "region": "south", "quota": Decimal("100"), "teams": [1, 3], "roles": ["rep", "manager"]}
NOBODY = {"id": 9, "region": None, "quota": None, "teams": [], "roles": []}


def present(*values) -> bool:
    return all(v is not None for v in values)


#: Each rule and how plain Python reads it (r: the deal, u: the user), with Loom's null semantics:
#: an empty field equals no value (so != and "not in" include it), ordering an empty field is false
#: either way round, and a missing user value makes any comparison with it false.
CASES = [
    ("record.region == user.region", lambda r, u: present(r["region"], u["region"]) and r["region"] == u["region"]),
    ("record.region != user.region", lambda r, u: present(u["region"]) and r["region"] != u["region"]),
    ('record.region == "north"', lambda r, u: r["region"] == "north"),
    ('record.region != "north"', lambda r, u: r["region"] != "north"),
    ("record.amount < 1000", lambda r, u: present(r["amount"]) and r["amount"] < 1000),
    ("record.amount >= user.quota", lambda r, u: present(r["amount"], u["quota"]) and r["amount"] >= u["quota"]),
    ('record.close_date < "2026-01-01"',
     lambda r, u: present(r["close_date"]) and r["close_date"] < dt.date(2026, 1, 1)),
    ('"2026-01-01" <= record.close_date',
     lambda r, u: present(r["close_date"]) and r["close_date"] >= dt.date(2026, 1, 1)),
    ('record.region in ["north", "east"]', lambda r, u: r["region"] in ("north", "east")),
    ('!(record.region in ["north", "east"])', lambda r, u: r["region"] not in ("north", "east")),
    ('record.region in ["south", null]', lambda r, u: r["region"] in ("south", None)),
    ('!(record.region in ["south", null])', lambda r, u: r["region"] not in ("south", None)),
    ("record.owner == user.id", lambda r, u: r["owner"] == u["id"]),
    ("record.owner in user.teams", lambda r, u: r["owner"] in u["teams"]),
    ("!(record.owner in user.teams)", lambda r, u: r["owner"] not in u["teams"]),
    ('"manager" in user.roles', lambda r, u: "manager" in u["roles"]),
    ("user.id in [1, 2] && record.hot", lambda r, u: u["id"] in (1, 2) and r["hot"] is True),
    ("record.region == user.region && record.amount > 1000",
     lambda r, u: present(r["region"], u["region"], r["amount"]) and r["region"] == u["region"] and r["amount"] > 1000),
    ("record.region == user.region || record.hot",
     lambda r, u: present(r["region"], u["region"]) and r["region"] == u["region"] or r["hot"] is True),
    ('!(record.region == "north" || record.amount < 1000)',
     lambda r, u: r["region"] != "north" and present(r["amount"]) and r["amount"] >= 1000),
    ("!record.hot", lambda r, u: r["hot"] is not True),
    ("record.close_date == null", lambda r, u: r["close_date"] is None),
    ("record.amount != null && (record.region != user.region)",
     lambda r, u: present(r["amount"], u["region"]) and r["region"] != u["region"]),
    ("record.origin == record.region", lambda r, u: r["origin"] == r["region"]),
    ("record.origin != record.region", lambda r, u: r["origin"] != r["region"]),
    ('user.region == "north"', lambda r, u: u["region"] == "north"),
    ('user.region != "north"', lambda r, u: present(u["region"]) and u["region"] != "north"),
    ("user.region == null", lambda r, u: u["region"] is None),
    ('!(user.region in ["north"])', lambda r, u: present(u["region"]) and u["region"] != "north"),
]


@pytest.fixture(scope="module")
def manifest():
    return compile_files(project_files(ENTITIES))


def compile_rule(manifest, text: str) -> RowRule:
    return compile_row_rule(text, manifest.entities["deal"], manifest.entities["user"])


def refusal(manifest, text: str) -> RowRuleError:
    with pytest.raises(RowRuleError) as caught:
        compile_rule(manifest, text)
    return caught.value


@pytest.fixture
def crm(db_url):
    loom = make_loom(project_files(ENTITIES), db_url)
    deal = loom.entity("deal")
    for name, owner, region, origin, amount, close_date, hot in DEALS:
        data = {"name": name, "region": region, "origin": origin, "amount": amount, "close_date": close_date,
                "hot": hot}
        assert loom.records.create(deal, data, Context(actor=owner))["owner"] == owner
    yield loom
    loom.close()


def selected(loom, rule: RowRule, user: dict, prefix: str = "r0_") -> set[str]:
    table = loom.metadata.tables["deal"]
    stmt = sa.select(table.c.name).where(rule.condition(table, prefix))
    with loom.engine.connect() as conn:
        return set(conn.execute(stmt, rule.parameters(user, prefix)).scalars())


# --- the SQL matches the rule ----------------------------------------------------------------------
def test_rules_select_in_sql_exactly_the_rows_python_evaluation_selects(crm):
    wrong = []
    for text, python in CASES:
        rule = compile_rule(crm.manifest, text)
        for user in (NORTH, SOUTH, NOBODY):
            expected = {name for name, row in ROWS.items() if python(row, user)}
            got = selected(crm, rule, user)
            if got != expected:
                wrong.append(f"{text} for user {user['id']}: SQL {sorted(got)}, Python {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


def test_rule_comparing_to_an_empty_user_attribute_matches_no_rows(crm):
    for text in ("record.region == user.region", "record.region != user.region", "!(record.region == user.region)",
                 "record.amount <= user.quota", "!(record.amount <= user.quota)", 'user.region != "north"',
                 'user.region in ["north", "south", "east"]',
                 '!(user.region in ["north"])', "!(user.region in [])", "!(user.id in user.teams)"):
        assert selected(crm, compile_rule(crm.manifest, text), {**NOBODY, "id": None}) == set(), text
    # even rows whose region is empty too: a missing user value equals nothing
    assert selected(crm, compile_rule(crm.manifest, "record.region == user.region"), {"region": None}) == set()
    # a missing attribute counts as empty; a missing list as an empty list
    assert selected(crm, compile_rule(crm.manifest, "record.region == user.region"), {}) == set()
    assert selected(crm, compile_rule(crm.manifest, "!(record.owner in user.teams)"), {}) == set(ROWS)
    # only an explicit test for null looks at the absence itself
    assert selected(crm, compile_rule(crm.manifest, "user.region == null"), NOBODY) == set(ROWS)


def test_not_equal_and_not_in_match_rows_where_the_field_is_empty(crm):
    assert selected(crm, compile_rule(crm.manifest, 'record.region != "south"'), NORTH) == {"a", "c", "d", "e"}
    assert selected(crm, compile_rule(crm.manifest, '!(record.region == "south")'), NORTH) == {"a", "c", "d", "e"}
    assert selected(crm, compile_rule(crm.manifest, '!(record.region in ["south"])'), NORTH) == {"a", "c", "d", "e"}
    assert selected(crm, compile_rule(crm.manifest, "record.region != user.region"), NORTH) == {"b", "c", "d"}
    # ordering an empty field is false both ways round
    assert "d" not in selected(crm, compile_rule(crm.manifest, "record.amount < 1000"), NORTH)
    assert "d" not in selected(crm, compile_rule(crm.manifest, "!(record.amount < 1000)"), NORTH)


def test_one_compiled_condition_serves_every_user(crm):
    rule = compile_rule(crm.manifest, "record.region == user.region || record.owner in user.teams")
    table = crm.metadata.tables["deal"]
    stmt = sa.select(table.c.name).where(rule.condition(table, "r0_"))
    cache: dict = {}
    with crm.engine.connect() as conn:
        conn = conn.execution_options(compiled_cache=cache)
        north = set(conn.execute(stmt, rule.parameters(NORTH, "r0_")).scalars())
        south = set(conn.execute(stmt, rule.parameters(SOUTH, "r0_")).scalars())
        nobody = set(conn.execute(stmt, rule.parameters(NOBODY, "r0_")).scalars())
    assert (north, south, nobody) == ({"a", "b", "e"}, {"a", "b", "c", "d"}, set())
    assert len(cache) == 1  # compiled once, whatever the values and the length of the team list


def test_prefixes_keep_the_parameters_of_several_rules_apart(crm):
    by_region = compile_rule(crm.manifest, "record.region == user.region")
    by_quota = compile_rule(crm.manifest, "record.amount >= user.quota")
    table = crm.metadata.tables["deal"]
    stmt = sa.select(table.c.name).where(sa.or_(by_region.condition(table, "rule0_"),
                                                by_quota.condition(table, "rule1_")))
    params = {**by_region.parameters(SOUTH, "rule0_"), **by_quota.parameters(NORTH, "rule1_")}
    assert params == {"rule0_0": "south", "rule1_0": Decimal("2500.50")}
    with crm.engine.connect() as conn:
        assert set(conn.execute(stmt, params).scalars()) == {"b", "e"}


def test_condition_is_sql_with_user_values_as_bind_parameters(manifest):
    from loomcrm.generators.tables import build_metadata

    table = build_metadata(manifest).tables["deal"]

    def sql(text: str) -> str:
        return str(compile_rule(manifest, text).condition(table, "p").compile()).replace("\n", " ")

    assert sql("record.region == user.region") == "deal.region = :p0"
    assert sql('record.region != "north"') == "deal.region != :region_1 OR deal.region IS NULL"
    assert sql("record.region != user.region") == \
        "(deal.region != :p0 OR deal.region IS NULL) AND CAST(:p0 AS TEXT) IS NOT NULL"
    assert sql("record.owner in user.teams") == "deal.owner IN (__[POSTCOMPILE_p0])"
    assert sql("record.close_date == null") == "deal.close_date IS NULL"


def test_literals_are_read_as_the_field_reads_input(manifest):
    rule = compile_rule(manifest, 'record.close_date < "2026-01-01" && record.amount > 10')
    assert rule.predicate.left.right.value == dt.date(2026, 1, 1)
    assert rule.predicate.right.right.value == Decimal("10")
    assert compile_rule(manifest, "record.amount > -5")  # min: 0 limits what is stored, not comparisons
    error = refusal(manifest, 'record.close_date < "2026-13-01"')
    assert error.message == '"2026-13-01" cannot be compared with record.close_date: must be a date in ISO form, ' \
        "e.g. 2024-01-05"
    assert "must be text" in refusal(manifest, "record.name == 5").message


def test_user_attributes_lists_what_the_rule_reads_once_each(manifest):
    rule = compile_rule(manifest, "record.owner in user.teams || record.region == user.region && "
                                  "record.origin != user.region || user.id == 1")
    assert rule.user_attributes == ("teams", "region", "id")
    assert rule.parameters({**NORTH, "extra": 1}, "x") == {"x0": [2], "x1": "north", "x2": 1}
    assert compile_rule(manifest, 'record.region == "north"').user_attributes == ()


# --- rules Loom refuses -----------------------------------------------------------------------------
def test_enum_option_typo_is_refused_with_the_options_and_did_you_mean(manifest):
    error = refusal(manifest, 'record.region == "nroth"')
    assert error.message == '"nroth" cannot be compared with record.region: \'nroth\' is not one of the options: ' \
        "north, south, east"
    assert error.hint == "did you mean 'north'?"
    assert refusal(manifest, 'user.region in ["north", "sooth"]').hint == "did you mean 'south'?"
    assert refusal(manifest, '"boss" in user.roles').hint == "the options: rep, manager"


def test_unknown_fields_and_names_are_refused_with_did_you_mean(manifest):
    error = refusal(manifest, 'record.regoin == "north"')
    assert (error.message, error.hint) == ("deal has no field 'regoin' (record.regoin)", "did you mean 'region'?")
    error = refusal(manifest, "record.region == user.regio")
    assert (error.message, error.hint) == ("row rules cannot read user.regio: the user entity has no such field",
                                           "did you mean 'region'?")
    error = refusal(manifest, "recrod.region == user.region")
    assert (error.message, error.hint) == ("unknown name 'recrod'", "did you mean 'record'?")
    assert refusal(manifest, "record.created_at < now").message == "unknown name 'now'"
    assert "reads too deep" in refusal(manifest, "record.region.name == 1").message


@pytest.mark.parametrize(("text", "what"), [
    ('record.name.startsWith("a")', "method calls"),
    ("record.amount + 1 > 2", "arithmetic (+ and -)"),
    ("record.amount * 2 > 2", "arithmetic (*, / and %)"),
    ("-record.amount > 2", "arithmetic (unary -)"),
    ("record.hot ? true : false", "the conditional operator"),
    ("has(record.name)", "functions and macros"),
    ("size(record.name) > 2", "functions and macros"),
    ('record["name"] == "a"', "indexing"),
    ('{"a": 1} == record.name', "maps"),
    ('record.name == b"a"', "bytes literals"),
])
def test_unsupported_constructs_are_refused_saying_what_is_supported(manifest, text, what):
    error = refusal(manifest, text)
    assert error.message.startswith(what) and "cannot be used in a row rule" in error.message
    assert error.hint.startswith("a row rule compares record.<field> and user.<attribute>")


def test_syntax_errors_are_refused_with_their_column(manifest):
    error = refusal(manifest, 'record.region = "north"')
    assert error.message == "'record.region = \"north\"' is not valid CEL (syntax error at column 15)"
    assert error.hint == "compare with == (a single = is not an operator)"
    assert "syntax error" in refusal(manifest, "record.region == (").message
    assert refusal(manifest, "  ").message == "the row rule is empty"


@pytest.mark.parametrize(("text", "message"), [
    ("record.tags == null", "row rules cannot read record.tags (multi_enum)"),
    ("record.partners == null", "row rules cannot read record.partners (refs)"),
    ("record.notes == null", "row rules cannot read record.notes (json)"),
    ('record.region < "north"', "record.region (enum) cannot be compared with <"),
    ("record.hot in [true]", "record.hot (boolean) cannot be compared with in"),
    ("record.amount == record.close_date", "record.amount (money) and record.close_date (date) hold different kinds"),
    ("record.owner == user.region", "record.owner (integer) and user.region (enum) hold different kinds"),
    ('"a" == "b"', "compares two literals"),
    ("record.amount < null", "cannot be compared with null using <"),
    ("record.owner == user.teams", "user.teams is a list and cannot be compared with =="),
    ("record.region in user.region", "'in' needs a list on its right"),
    ("record.region in [user.region]", "the items of a list must be literals"),
    ("record.name", "'record.name' is not a condition"),
    ("record.hot == true == false", "is a condition, not a value"),
])
def test_comparisons_loom_cannot_run_are_refused(manifest, text, message):
    assert message in refusal(manifest, text).message


def test_row_rule_error_keeps_message_and_hint_apart():
    error = RowRuleError("deal has no field 'x'", "did you mean 'y'?")
    assert (error.message, error.hint, str(error)) == ("deal has no field 'x'", "did you mean 'y'?",
                                                       "deal has no field 'x' (hint: did you mean 'y'?)")
    assert RowRuleError("bad").hint is None
