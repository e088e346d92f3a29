"""Migrations: changing a field's type, length or precision on a populated table. Every value is
converted by the new type (as if typed in again) and checked before anything changes; rows that do
not convert refuse the plan, by id, unless data loss is allowed for an optional field."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest
import sqlalchemy as sa

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.fieldtypes import FieldValueError
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import compile_files, migrated, project_files, sql_execute
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

FIELDS = {
    "employees": "{type: string, max_length: 20, indexed: true}",
    "industry": "{type: string}",
    "revenue": "{type: decimal, precision: 12, scale: 2}",
    "code": "{type: string, max_length: 40, unique: true}",
    "founded": "{type: string}",
    "rating": "{type: integer}",
}
INDUSTRIES = ["Banking", "bank", "Retail", "retail ", None, "Software"]  # row i gets INDUSTRIES[i % 6]
COUNT = 24


def config(**changes: str) -> str:
    fields = {**FIELDS, **changes}
    lines = "".join(f"      {name}: {spec}\n" for name, spec in fields.items())
    return f"entities:\n  account:\n    fields:\n      name: {{type: string, required: true}}\n{lines}"


def values(i: int) -> dict:
    return {
        "name": f"A{i}",
        "employees": None if i % 5 == 0 else (f" {i * 10} " if i % 2 else str(i * 10)),
        "industry": INDUSTRIES[i % 6],
        "revenue": None if i % 7 == 0 else f"{i * 1000}.{i:02d}",
        "code": f"C-{i:03d}",
        "founded": None if i % 4 == 0 else f"20{i:02d}-0{1 + i % 9}-1{i % 10}",
        "rating": i % 6,
    }


def select(*columns: str) -> str:
    return f"SELECT id, {', '.join(columns)}, version, updated_at FROM account ORDER BY id"


def history_count(url: str) -> int:
    return rows(url, "SELECT count(*) FROM loom_migrations")[0][0]


def columns(url: str) -> dict[str, dict]:
    engine = create_db_engine(url)
    try:
        return {c["name"]: c for c in sa.inspect(engine).get_columns("account")}
    finally:
        engine.dispose()


def indexes(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {i["name"] for i in inspector.get_indexes("account")} | \
            {u["name"] for u in inspector.get_unique_constraints("account")}
    finally:
        engine.dispose()


@pytest.fixture
def populated(db_url):
    with migrated(manifest_of(config()), db_url) as loom:
        for i in range(1, COUNT + 1):
            loom.records.create(loom.entity("account"), values(i), Context())
    return db_url


def test_text_becomes_integer_value_by_value_and_nothing_else_changes(populated):
    before = rows(populated, select("name", "employees", "industry", "revenue", "code", "founded", "rating"))
    the_plan = migrate_manifest(manifest_of(config(employees="{type: integer, indexed: true}")),
                                database_url=populated)
    assert "convert account.employees string -> integer (data check: 20 rows with a value, all convert)" \
        in the_plan.render()
    after = rows(populated, select("name", "employees", "industry", "revenue", "code", "founded", "rating"))
    assert after == [r[:2] + (None if r[2] is None else int(r[2].strip()),) + r[3:] for r in before]
    assert "INT" in str(columns(populated)["employees"]["type"]).upper()
    assert "ix_account_employees" in indexes(populated)  # its index is there again, on the new column
    assert "employees__loom_new" not in columns(populated)
    assert rows(populated, "SELECT id FROM account WHERE employees >= 200 ORDER BY employees") == [
        (i,) for i in range(20, COUNT + 1) if i % 5]  # compared as numbers, not as text

    loom = Loom.from_manifest(manifest_of(config(employees="{type: integer, indexed: true}")),
                              make_plugin_manager(), database_url=populated)
    try:  # the app reads, filters and writes the converted values
        account = loom.entity("account")
        assert loom.records.get(account, 3, Context())["employees"] == 30
        updated = loom.records.update(account, 1, {"employees": 11}, Context(), version=1)
        assert updated["employees"] == 11 and updated["version"] == 2
    finally:
        loom.close()


def test_rows_that_do_not_convert_refuse_the_plan_by_id_and_change_nothing(populated):
    sql_execute(populated, "UPDATE account SET employees = 'about 50' WHERE id IN (3, 9)")
    sql_execute(populated, "UPDATE account SET employees = '12.5' WHERE id = 11")
    snapshot = rows(populated, select("employees", "industry", "code"))
    schema = columns(populated)
    manifest = manifest_of(config(employees="{type: integer}"))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    [reason] = info.value.plan.refused
    assert reason.startswith("account.employees changes type string -> integer, but 3 rows do not convert "
                             "(id 3 ('about 50'): must be a whole number; id 9 ('about 50'): must be a whole number; "
                             "id 11 ('12.5'): must be a whole number): change those rows so they read as integer "
                             "values first, or run 'loom migrate --allow-data-loss' to empty them")
    assert rows(populated, select("employees", "industry", "code")) == snapshot
    assert columns(populated).keys() == schema.keys() and history_count(populated) == 1
    planned = plan_manifest(manifest, database_url=populated)
    assert "data check: 3 rows of 20 rows do not convert" in planned.plan.render()


def test_allowing_data_loss_empties_only_the_rows_that_do_not_convert(populated):
    sql_execute(populated, "UPDATE account SET employees = 'n/a' WHERE id = 4")
    before = rows(populated, select("employees"))
    the_plan = migrate_manifest(manifest_of(config(employees="{type: integer}")), database_url=populated,
                                allow_data_loss=True)
    assert "destructive: empties 1 row that do not convert" in the_plan.render()
    assert rows(populated, select("employees")) == [
        r[:1] + (None if r[1] in (None, "n/a") else int(r[1].strip()),) + r[2:] for r in before]


def test_free_text_becomes_an_enum_through_map_exactly_as_mapped(populated):
    before = rows(populated, select("industry"))
    spec = ("{type: enum, options: [finance, retail, software], "
            "map: {Banking: finance, bank: finance, Retail: retail}}")
    the_plan = migrate_manifest(manifest_of(config(industry=spec)), database_url=populated)
    assert "convert account.industry string -> enum" in the_plan.render()
    expected = {"Banking": "finance", "bank": "finance", "Retail": "retail", "retail ": "retail",
                "Software": "software", None: None}  # an option in other letter case or spacing is that option
    assert rows(populated, select("industry")) == [r[:1] + (expected[r[1]],) + r[2:] for r in before]


def test_free_text_not_an_option_nor_mapped_refuses_the_enum(populated):
    before = rows(populated, select("industry"))
    spec = "{type: enum, options: [finance, retail], map: {Banking: finance, bank: finance}}"  # no 'Software'
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(config(industry=spec)), database_url=populated)
    [reason] = info.value.plan.refused
    assert reason.startswith("account.industry changes type string -> enum, but 4 rows do not convert (id 5 "
                             "('Software'): is not one of the options (finance, retail) and 'map:' does not name it; "
                             "id 11 ('Software')")
    assert "add their values to 'map:' (each to an option, or null), or change those rows first" in reason
    assert rows(populated, select("industry")) == before


def test_numbers_dates_and_text_convert_both_ways(populated):
    before = rows(populated, select("revenue", "founded", "rating"))
    manifest = manifest_of(config(revenue="{type: string}", founded="{type: date}", rating="{type: decimal}"))
    migrate_manifest(manifest, database_url=populated)
    after = rows(populated, select("revenue", "founded", "rating"))
    for old, new in zip(before, after, strict=True):
        assert new[1] == (None if old[1] is None else str(decimal.Decimal(str(old[1])).quantize(decimal.Decimal("0.01"))))
        assert (None if new[2] is None else str(new[2])) == old[2]  # SQLite hands dates back as text
        assert decimal.Decimal(str(new[3])) == old[3]
        assert new[4:] == old[4:]  # version and updated_at: a migration is not an edit
    loom = Loom.from_manifest(manifest, make_plugin_manager(), database_url=populated)
    try:
        record = loom.records.get(loom.entity("account"), 1, Context())
        assert record["founded"] == "2001-02-11" and record["revenue"] == "1000.01"
    finally:
        loom.close()


def test_a_unique_field_keeps_its_constraint_through_a_type_change(populated):
    migrate_manifest(manifest_of(config(code="{type: text, unique: true}")), database_url=populated)
    assert "uq_account_code" in indexes(populated)
    with pytest.raises(sa.exc.IntegrityError):
        sql_execute(populated, "INSERT INTO account (name, code, version, created_at, updated_at) "
                               "VALUES ('x', 'C-001', 1, '2026-01-01', '2026-01-01')")


def test_a_conversion_that_breaks_a_constraint_half_way_leaves_schema_and_data_as_they_were(populated):
    sql_execute(populated, "UPDATE account SET code = CAST(id AS VARCHAR(40))")
    sql_execute(populated, "UPDATE account SET code = ' 7' WHERE id = 2")  # 7 twice once converted: unique breaks
    before = rows(populated, select("name", "employees", "industry", "code"))
    schema, named = columns(populated), indexes(populated)
    with pytest.raises(sa.exc.IntegrityError):
        migrate_manifest(manifest_of(config(code="{type: integer, unique: true}")), database_url=populated)
    assert rows(populated, select("name", "employees", "industry", "code")) == before
    assert columns(populated).keys() == schema.keys() and indexes(populated) == named
    assert history_count(populated) == 1


def test_shrinking_a_length_checks_every_value_first(populated):
    sql_execute(populated, "UPDATE account SET code = 'a code much longer than twelve' WHERE id = 6")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(config(code="{type: string, max_length: 12, unique: true}")),
                         database_url=populated)
    assert info.value.plan.refused == [
        "account.code changes max_length 40 -> 12, but 1 row does not convert (id 6 ('a code much longer than "
        "twelve'): must be at most 12 characters (got 30)): shorten those values first, or run 'loom migrate "
        "--allow-data-loss' to empty it"]
    sql_execute(populated, "UPDATE account SET code = 'C-006' WHERE id = 6")
    before = rows(populated, select("code"))
    the_plan = migrate_manifest(manifest_of(config(code="{type: string, max_length: 12, unique: true}")),
                                database_url=populated)
    assert "change account.code: max_length 40 -> 12" in the_plan.render()
    assert rows(populated, select("code")) == before
    if populated.startswith("postgresql"):  # SQLite does not keep lengths
        assert columns(populated)["code"]["type"].length == 12


def test_growing_a_length_or_precision_needs_no_check(populated):
    before = rows(populated, select("code", "revenue"))
    the_plan = migrate_manifest(manifest_of(config(code="{type: string, max_length: 80, unique: true}",
                                                   revenue="{type: decimal, precision: 16, scale: 4}")),
                                database_url=populated)
    assert "check" not in the_plan.render()
    assert rows(populated, select("code", "revenue")) == before
    if populated.startswith("postgresql"):
        assert (columns(populated)["revenue"]["type"].precision, columns(populated)["revenue"]["type"].scale) \
            == (16, 4)


def test_fewer_decimal_places_refuse_values_that_would_be_rounded(populated):
    sql_execute(populated, "UPDATE account SET revenue = 10.5 WHERE id = 2")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(config(revenue="{type: decimal, precision: 12, scale: 0}")),
                         database_url=populated)
    [reason] = info.value.plan.refused
    assert reason.startswith("account.revenue changes scale 2 -> 0, but 21 rows do not convert (id 1 (1000.01): "
                             "must have at most 0 decimal places")
    assert "round those values or make them smaller first" in reason


def test_refs_and_a_type_change_with_required_at_once_are_refused():
    old = manifest_of(config() + "      owner_account: {type: ref, to: account}\n").to_json()
    refused = plan_migration(old, manifest_of(config() + "      owner_account: {type: integer}\n")).refused
    assert refused == ["account.owner_account changes type ref -> integer, which Loom cannot convert (their values "
                       "mean something else): revert the type, or add a new field and fill it"]
    refused = plan_migration(manifest_of(config()).to_json(),
                             manifest_of(config(rating="{type: decimal, required: true}"))).refused
    assert refused == ["account.rating changes type integer -> decimal and becomes required at once: change the "
                       "type first (keep 'required:' as it was), then the rest in a second migration"]


def test_sql_of_a_type_change_adds_fills_and_swaps_the_column():
    the_plan = plan_migration(manifest_of(config()).to_json(), manifest_of(config(rating="{type: string}")))
    sql = render_sql(the_plan.steps, "postgresql")
    assert "ALTER TABLE account ADD COLUMN rating__loom_new VARCHAR(255)" in sql
    assert "-- convert account.rating integer -> string (Python, run by loom migrate)" in sql
    assert "ALTER TABLE account DROP COLUMN rating" in sql
    assert "ALTER TABLE account RENAME rating__loom_new TO rating" in sql


def test_a_map_naming_an_option_is_still_refused_when_the_config_compiles():
    with pytest.raises(ConfigErrors) as info:
        manifest_of(config(industry="{type: enum, options: [finance], map: {finance: finance}}"))
    assert "E147" in info.value.render()


def test_text_lists_become_multi_enum_items_and_yes_no_text_booleans(populated):
    sql_execute(populated, "UPDATE account SET industry = 'Banking; retail, Software' WHERE id = 1")
    sql_execute(populated, "UPDATE account SET founded = CASE WHEN MOD(id, 3) = 0 THEN 'yes' WHEN MOD(id, 3) = 1 "
                          "THEN ' No ' ELSE NULL END")
    before = rows(populated, select("industry", "founded"))
    spec = "{type: multi_enum, options: [finance, retail, software], map: {Banking: finance, bank: finance}}"
    migrate_manifest(manifest_of(config(industry=spec, founded="{type: boolean}")), database_url=populated)
    items = {"Banking; retail, Software": ["finance", "retail", "software"], "Banking": ["finance"],
             "bank": ["finance"], "Retail": ["retail"], "retail ": ["retail"], "Software": ["software"], None: None}
    after = rows(populated, select("industry", "founded"))
    for old, new in zip(before, after, strict=True):
        assert (json.loads(new[1]) if isinstance(new[1], str) else new[1]) == items[old[1]]
        assert new[2] == {"yes": True, " No ": False, None: None}[old[2]]
        assert new[3:] == old[3:]


def test_dates_become_midnight_in_the_app_time_zone_and_timestamps_their_local_day():
    from loomcrm.generators.migrations.conversions import converter

    app = "app: {name: Test CRM, timezone: Asia/Shanghai}"
    manifest = compile_files(project_files(config(founded="{type: datetime}", rating="{type: date}",
                                                  employees="{type: integer}"), app=app))
    fields = manifest.entities["account"].fields
    to_datetime = converter({"type": "date", "params": {}}, fields["founded"], manifest)
    assert to_datetime(dt.date(2026, 3, 1)) == dt.datetime(2026, 2, 28, 16, 0, tzinfo=dt.UTC)
    to_date = converter({"type": "datetime", "params": {}}, fields["rating"], manifest)
    assert to_date(dt.datetime(2026, 2, 28, 17, 0, tzinfo=dt.UTC)) == dt.date(2026, 3, 1)
    to_integer = converter({"type": "decimal", "params": {}}, fields["employees"], manifest)
    assert to_integer(decimal.Decimal("12.00")) == 12
    with pytest.raises(FieldValueError, match="has decimal places"):
        to_integer(decimal.Decimal("12.50"))


def test_a_new_default_is_a_note_and_existing_rows_keep_their_values(populated):
    before = rows(populated, select("rating"))
    the_plan = migrate_manifest(manifest_of(config(rating="{type: integer, default: 3}")), database_url=populated)
    assert the_plan.notes == ["default of account.rating is now 3: new records get it, existing rows keep their values"]
    assert not the_plan.steps and rows(populated, select("rating")) == before
    assert history_count(populated) == 2
