"""Migrations: unique constraints and indexes turned on and off on a populated table. A new unique rule
is checked against the rows first (duplicates refuse the plan, NULLs are no duplicates); indexes and
unique constraints taken out are dropped. No row changes either way."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomcrm.engine.cli import main
from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import migrated, project_files, replaced, sql_execute
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

EMAIL = "email: {type: string, indexed: true}"
CODE = "code: {type: string}"
INDEXES = """    indexes:
      - {fields: [region, name]}
      - {fields: [code, name], name: ix_account_lookup}
"""
BASE = f"""
entities:
  account:
    fields:
      name: {{type: string, required: true}}
      {EMAIL}
      {CODE}
      region: {{type: string}}
{INDEXES}"""
SELECT = "SELECT id, name, email, code, region, version, created_at, updated_at FROM account ORDER BY id"
NOW = "'2024-01-02 03:04:05'"


def code_of(i: int) -> str | None:
    return None if i % 7 == 0 else f"C{i % 4}"


def region_of(i: int) -> str | None:
    return ["north", "south", None][i % 3]


def changed(yaml: str = BASE, **replacements: tuple[str, str]) -> str:
    return replaced(yaml, **replacements)


@pytest.fixture
def populated(db_url):
    """20 accounts: distinct emails (every fifth has none), codes C0-C3 shared by 4 or 5 accounts
    each (ids 7 and 14 have none), regions north, south and none in turn."""
    with migrated(manifest_of(BASE), db_url) as loom:
        for i in range(1, 21):
            loom.records.create(loom.entity("account"), {
                "name": f"A{i}", "email": None if i % 5 == 0 else f"a{i}@x.test", "code": code_of(i),
                "region": region_of(i)}, Context())
    return db_url


def schema(url: str) -> dict:
    """Per table: columns, indexes (name, columns, unique), unique constraints and foreign keys."""
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {t: (sorted(c["name"] for c in inspector.get_columns(t)),
                    sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(t)),
                    sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(t)),
                    sorted((f["name"], f["referred_table"], str(f["options"])) for f in inspector.get_foreign_keys(t)))
                for t in inspector.get_table_names()}
    finally:
        engine.dispose()


def index_names(url: str) -> set[str]:
    _columns, indexes, uniques, _fks = schema(url)["account"]
    return {name for name, *_ in indexes} | {name for name, _ in uniques}


def snapshot(url: str) -> tuple:
    return schema(url), rows(url, SELECT), rows(url, "SELECT count(*) FROM loom_migrations")


def insert(url: str, name: str, **values: str) -> None:
    """One account written with plain SQL, below Loom's own checks: what the database itself accepts."""
    columns = ", ".join(["name", *values, "created_at", "updated_at"])
    literals = ", ".join([f"'{name}'", *(f"'{v}'" for v in values.values()), NOW, NOW])
    sql_execute(url, f"INSERT INTO account ({columns}) VALUES ({literals})")


def test_unique_field_over_distinct_values_is_added_and_the_database_then_refuses_a_duplicate(populated):
    before = rows(populated, SELECT)
    yaml = changed(email=(EMAIL, "email: {type: string, unique: true}"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    text = the_plan.render()
    assert "add unique constraint uq_account_email on account (data check: no duplicate values)" in text
    assert "drop index ix_account_email on account (no row changes)" in text  # the constraint indexes it
    assert rows(populated, SELECT) == before
    assert "uq_account_email" in index_names(populated) and "ix_account_email" not in index_names(populated)
    assert rows(populated, "SELECT count(*) FROM loom_migrations") == [(2,)]
    with pytest.raises(sa.exc.IntegrityError):
        insert(populated, "Twin", email="a1@x.test")
    insert(populated, "No mail 1")  # NULLs are no duplicates: ids 5, 10, 15 and 20 have none already
    insert(populated, "No mail 2")
    assert rows(populated, "SELECT count(*) FROM account WHERE email IS NULL") == [(6,)]
    assert plan_migration(manifest_of(yaml).to_json(), manifest_of(yaml)).empty


def test_unique_field_over_duplicates_is_refused_naming_values_and_ids_and_nothing_changes(populated, tmp_path):
    before = snapshot(populated)
    yaml = changed(code=(CODE, "code: {type: string, unique: true}"))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    assert info.value.plan.refused == [
        "account.code is now unique, but 4 values are held by more than one row (18 rows in all): "
        "'C0' (ids 4, 8, 12, 16, 20), 'C1' (ids 1, 5, 9, 13, 17), 'C2' (ids 2, 6, 10, 18) ...: change or merge "
        "those rows first so each value is held once, or keep the field non-unique (remove 'unique: true')"]
    assert snapshot(populated) == before

    for name, text in project_files(yaml).items():  # `loom plan` says the same and exits 1
        (tmp_path / name).write_text(text)
    planned = plan_manifest(manifest_of(yaml), database_url=populated)
    assert planned.plan.refused == info.value.plan.refused
    assert ("add unique constraint uq_account_code on account (data check: 4 duplicate values in 18 rows)"
            in planned.plan.render())
    assert main(["-p", str(tmp_path), "plan", "--database", populated]) == 1
    assert snapshot(populated) == before


def test_one_duplicate_value_is_named_with_its_ids_and_fixing_the_rows_lets_the_constraint_on(populated):
    sql_execute(populated, "UPDATE account SET email = 'a3@x.test' WHERE id IN (9, 12)")
    before = snapshot(populated)
    manifest = manifest_of(changed(email=(EMAIL, "email: {type: string, unique: true}")))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    assert info.value.plan.refused[0].startswith(
        "account.email is now unique, but 1 value is held by more than one row (3 rows in all): "
        "'a3@x.test' (ids 3, 9, 12): change or merge")
    assert snapshot(populated) == before

    sql_execute(populated, "UPDATE account SET email = NULL WHERE id IN (9, 12)")
    expected = rows(populated, SELECT)
    migrate_manifest(manifest, database_url=populated)
    assert rows(populated, SELECT) == expected


def test_unique_together_counts_only_groups_without_nulls(populated):
    # (code, region) pairs shared by several rows; rows with no code or no region are never duplicates
    groups: dict[tuple, list[int]] = {}
    for i in range(1, 21):
        if code_of(i) and region_of(i):
            groups.setdefault((code_of(i), region_of(i)), []).append(i)
    shared = sorted((k, v) for k, v in groups.items() if len(v) > 1)
    assert len(shared) == 4  # the fixture's data: the message below names the first three
    before = snapshot(populated)
    yaml = changed(indexes=(INDEXES, INDEXES + "    unique_together:\n      - [code, region]\n"))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    samples = ", ".join(f"('{c}', '{r}') (ids {', '.join(map(str, ids))})" for (c, r), ids in shared[:3])
    assert info.value.plan.refused == [
        f"account (code, region) is now unique together, but 4 values are held by more than one row "
        f"({sum(len(v) for _, v in shared)} rows in all): {samples} ...: change or merge those rows first so each "
        "value is held once, or remove [code, region] from unique_together (or the unique index)"]
    assert snapshot(populated) == before

    for _, ids in shared:  # one row of each shared pair keeps its region
        sql_execute(populated, f"UPDATE account SET region = NULL WHERE id IN ({', '.join(map(str, ids[1:]))})")
    expected = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert ("add unique constraint uq_account_code_region on account (data check: no duplicate values)"
            in the_plan.render())
    assert rows(populated, SELECT) == expected
    insert(populated, "Same code, no region", code="C1")  # NULL region: allowed any number of times
    insert(populated, "Again", code="C1")
    with pytest.raises(sa.exc.IntegrityError):
        insert(populated, "Twin", code=shared[0][0][0], region=shared[0][0][1])


def test_unique_off_drops_the_constraint_keeps_every_row_and_accepts_a_duplicate(populated):
    unique = changed(email=(EMAIL, "email: {type: string, unique: true}"))
    migrate_manifest(manifest_of(unique), database_url=populated)
    before = rows(populated, SELECT)
    back = migrate_manifest(manifest_of(BASE), database_url=populated)
    text = back.render()
    assert "drop unique constraint uq_account_email on account (no row changes)" in text
    assert "create index ix_account_email on account" in text
    assert not back.refused
    assert rows(populated, SELECT) == before
    assert "uq_account_email" not in index_names(populated) and "ix_account_email" in index_names(populated)
    insert(populated, "Twin", email="a1@x.test")
    assert rows(populated, "SELECT id FROM account WHERE email = 'a1@x.test' ORDER BY id") == [(1,), (21,)]
    assert plan_manifest(manifest_of(BASE), database_url=populated).plan.empty


def test_removing_indexes_drops_them_in_place_and_keeps_every_row(populated):
    before = snapshot(populated)
    assert {"ix_account_email", "ix_account_region_name", "ix_account_lookup"} <= index_names(populated)
    yaml = changed(email=(EMAIL, "email: {type: string}"), indexes=(INDEXES, ""))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert [s.description for s in the_plan.steps] == [
        "drop index ix_account_lookup on account (no row changes)",
        "drop index ix_account_email on account (no row changes)",
        "drop index ix_account_region_name on account (no row changes)"]
    assert all(s.batch is None for s in the_plan.steps)  # no copy of the table, on SQLite either
    assert not {"ix_account_email", "ix_account_region_name", "ix_account_lookup"} & index_names(populated)
    columns, *_ = schema(populated)["account"]
    assert columns == before[0]["account"][0]
    assert rows(populated, SELECT) == before[1]
    assert plan_manifest(manifest_of(yaml), database_url=populated).plan.empty


def test_named_unique_index_is_checked_then_created_and_dropped_again(populated):
    lookup = "      - {fields: [code, name], name: ix_account_lookup}\n"
    unique = changed(indexes=(lookup, "      - {fields: [email, region], name: ix_account_contact, unique: true}\n"))
    before = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(unique), database_url=populated)
    assert [s.description for s in the_plan.steps] == [
        "drop index ix_account_lookup on account (no row changes)",
        "create unique index ix_account_contact on account (data check: no duplicate values)"]
    assert rows(populated, SELECT) == before
    with pytest.raises(sa.exc.IntegrityError):
        insert(populated, "Twin", email="a1@x.test", region="south")

    sql_execute(populated, "DROP INDEX ix_account_contact")
    sql_execute(populated, "UPDATE account SET email = 'a1@x.test', region = 'south' WHERE id = 4")
    with pytest.raises(MigrationRefused) as info:  # checked like a constraint: the ids holding the value
        migrate_manifest(manifest_of(unique.replace("ix_account_contact", "ix_account_reach")), database_url=populated)
    assert info.value.plan.refused[0].startswith(
        "the new unique index ix_account_reach on account (email, region), but 1 value is held by more than one "
        "row (2 rows in all): ('a1@x.test', 'south') (ids 1, 4): change or merge")
    assert info.value.plan.refused[0].endswith("or make the index non-unique")


def test_moving_a_named_index_to_other_fields_drops_it_before_creating_it_again(populated):
    before = rows(populated, SELECT)
    yaml = changed(indexes=("[code, name], name: ix_account_lookup", "[region, code], name: ix_account_lookup"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert [s.description for s in the_plan.steps] == [
        "drop index ix_account_lookup on account (no row changes)",
        "create index ix_account_lookup on account"]
    assert ("ix_account_lookup", ("region", "code"), False) in schema(populated)["account"][1]
    assert rows(populated, SELECT) == before


def test_sql_of_the_plan_names_each_drop_and_the_sqlite_copy():
    unique = manifest_of(changed(email=(EMAIL, "email: {type: string, unique: true}"), indexes=(INDEXES, "")))
    on = plan_migration(manifest_of(BASE).to_json(), unique)
    postgresql = render_sql(on.steps, "postgresql")
    assert "DROP INDEX ix_account_lookup;" in postgresql and "DROP INDEX ix_account_region_name;" in postgresql
    assert "ALTER TABLE account ADD CONSTRAINT uq_account_email UNIQUE (email);" in postgresql
    assert "-- copy table account (SQLite batch mode) to: add unique constraint uq_account_email on account" \
        in render_sql(on.steps, "sqlite")
    off = plan_migration(unique.to_json(), manifest_of(BASE))
    assert "ALTER TABLE account DROP CONSTRAINT uq_account_email;" in render_sql(off.steps, "postgresql")
    sqlite = render_sql(off.steps, "sqlite")
    assert "-- copy table account (SQLite batch mode) to: drop unique constraint uq_account_email on account" in sqlite
    assert "CREATE INDEX ix_account_region_name ON account (region, name);" in sqlite


def test_constraint_removed_while_its_column_is_renamed_is_dropped_by_the_name_it_has(populated):
    together = INDEXES + "    unique_together:\n      - [region, email]\n"
    migrate_manifest(manifest_of(changed(indexes=(INDEXES, together))), database_url=populated)
    before = rows(populated, SELECT)
    yaml = changed(email=(EMAIL, "mail: {type: string, indexed: true, renamed_from: email}"))
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    text = the_plan.render()
    assert "rename index ix_account_email -> ix_account_mail on account" in text
    assert "drop unique constraint uq_account_region_email on account (no row changes)" in text  # its old name
    names = index_names(populated)
    assert "ix_account_mail" in names and not {"ix_account_email", "uq_account_region_email"} & names
    assert rows(populated, SELECT.replace("email", "mail")) == before
    insert(populated, "Twin", mail="a1@x.test", region="south")  # the pair is no longer unique


def test_a_default_filling_rows_of_a_new_unique_field_counts_as_their_value(populated):
    before = snapshot(populated)
    new = "\n      badge: {type: string, required: true, unique: true, default: none}"
    with pytest.raises(MigrationRefused) as info:  # 20 rows would all get 'none'
        migrate_manifest(manifest_of(changed(code=(CODE, CODE + new))), database_url=populated)
    assert info.value.plan.refused == [
        "account.badge is now unique, but 1 value is held by more than one row once the default 'none' fills the "
        "rows without one (20 rows in all): 'none' (ids 1, 2, 3, 4, 5 ...): change or merge those rows first so "
        "each value is held once, give it a 'backfill:' that gives each row its own value, or keep the field "
        "non-unique (remove 'unique: true')"]
    assert snapshot(populated) == before

    required = "email: {type: string, unique: true, required: true, default: nobody@x.test}"
    with pytest.raises(MigrationRefused) as info:  # ids 5, 10, 15 and 20 have no email
        migrate_manifest(manifest_of(changed(email=(EMAIL, required))), database_url=populated)
    assert info.value.plan.refused[0].startswith(
        "account.email is now unique, but 1 value is held by more than one row once the default 'nobody@x.test' "
        "fills the rows without one (4 rows in all): 'nobody@x.test' (ids 5, 10, 15, 20): change or merge")
    assert snapshot(populated) == before

    sql_execute(populated, "UPDATE account SET email = 'a' || id || '@y.test' WHERE id IN (5, 10, 15)")
    expected = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(changed(email=(EMAIL, required))), database_url=populated)
    assert "add unique constraint uq_account_email on account (data check: no duplicate values)" in the_plan.render()
    assert rows(populated, SELECT) == [r if r[0] != 20 else (20, "A20", "nobody@x.test", *r[3:]) for r in expected]
