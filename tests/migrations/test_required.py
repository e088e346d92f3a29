"""Migrations: making a field required (or adding a required field) on a populated table, with a
data check before anything changes and a backfill from ``default:`` or ``backfill:``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import migrated, project_files, sql_execute
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

BASE = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      kind: {type: enum, options: [customer, partner]}
      industry: {type: string}
"""
INDUSTRY = "industry: {type: string}"
NULL_IDS = [i for i in range(1, 31) if i % 3 == 0]  # 10 of 30 rows have no industry


def changed(industry: str) -> str:
    return BASE.replace(INDUSTRY, f"industry: {industry}")


def nullable(url: str, column: str) -> bool:
    engine = create_db_engine(url)
    try:
        return next(c["nullable"] for c in sa.inspect(engine).get_columns("account") if c["name"] == column)
    finally:
        engine.dispose()


def history_count(url: str) -> int:
    return rows(url, "SELECT count(*) FROM loom_migrations")[0][0]


@pytest.fixture
def populated(db_url):
    """30 accounts, alternately customers and partners; every third has no industry."""
    with migrated(manifest_of(BASE), db_url) as loom:
        for i in range(1, 31):
            loom.records.create(loom.entity("account"), {
                "name": f"A{i}", "kind": "customer" if i % 2 else "partner",
                "industry": None if i in NULL_IDS else f"ind{i}"}, Context())
    return db_url


SELECT = "SELECT id, name, kind, industry, version, updated_at FROM account ORDER BY id"


def test_required_with_default_fills_only_the_rows_without_a_value(populated):
    before = rows(populated, SELECT)
    manifest = manifest_of(changed("{type: string, required: true, default: other}"))
    the_plan = migrate_manifest(manifest, database_url=populated)
    text = the_plan.render()
    assert "backfill account.industry: 10 rows from default 'other'" in text
    assert "set account.industry NOT NULL" in text
    after = rows(populated, SELECT)
    assert after == [r[:3] + (("other",) if r[0] in NULL_IDS else (r[3],)) + r[4:] for r in before]
    assert not nullable(populated, "industry")

    loom = Loom.from_manifest(manifest, make_plugin_manager(), database_url=populated)
    try:  # the default applies to new records too
        assert loom.records.create(loom.entity("account"), {"name": "New"}, Context())["industry"] == "other"
    finally:
        loom.close()
    with pytest.raises(sa.exc.IntegrityError):
        sql_execute(populated, "INSERT INTO account (name, industry, version, created_at, updated_at) "
                               "VALUES ('x', NULL, 1, '2026-01-01', '2026-01-01')")


def test_backfill_expression_reads_other_fields_of_each_row(populated):
    before = rows(populated, SELECT)
    manifest = manifest_of(changed(
        """{type: string, required: true, backfill: "record.kind == 'customer' ? 'retail' : 'other'"}"""))
    text = migrate_manifest(manifest, database_url=populated).render()
    assert """backfill account.industry: 10 rows from backfill "record.kind == 'customer' ? 'retail' : 'other'\"""" \
        in text
    expected = [r[:3] + ((("retail" if r[2] == "customer" else "other"),) if r[0] in NULL_IDS else (r[3],)) + r[4:]
                for r in before]
    assert rows(populated, SELECT) == expected
    assert not nullable(populated, "industry")


def test_required_without_default_or_backfill_is_refused_with_count_and_sample_ids(populated, tmp_path):
    before = rows(populated, SELECT)
    yaml = changed("{type: string, required: true}")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    message = ("account.industry is now required, but 10 rows have no value (ids 3, 6, 9, 12, 15 ...): "
               "add 'default:' or 'backfill:' to fill them, or fill them first")
    assert message in info.value.plan.refused
    assert rows(populated, SELECT) == before and nullable(populated, "industry")
    assert history_count(populated) == 1

    for name, text in project_files(yaml).items():  # `loom plan` shows the check's result
        (tmp_path / name).write_text(text)
    planned = plan(tmp_path, database_url=populated)
    assert message in planned.plan.refused
    assert "set account.industry NOT NULL (data check: 10 rows without a value)" in planned.plan.render()


def test_required_is_applied_when_no_row_lacks_a_value(populated):
    sql_execute(populated, "UPDATE account SET industry = 'filled' WHERE industry IS NULL")
    before = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(changed("{type: string, required: true}")), database_url=populated)
    assert "set account.industry NOT NULL (data check: 0 rows without a value)" in the_plan.render()
    assert rows(populated, SELECT) == before and not nullable(populated, "industry")


def test_a_backfill_that_leaves_rows_without_a_value_fails_and_changes_nothing(populated):
    before = rows(populated, SELECT)
    manifest = manifest_of(changed(
        """{type: string, required: true, backfill: "record.kind == 'customer' ? 'retail' : null"}"""))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    partners = [i for i in NULL_IDS if i % 2 == 0]  # 6, 12, 18, 24, 30
    [reason] = info.value.plan.refused
    assert f"failed for {len(partners)} rows" in reason
    assert all(f"id {i}: no value" in reason for i in partners)
    assert rows(populated, SELECT) == before and nullable(populated, "industry")
    assert history_count(populated) == 1


def test_a_backfill_value_the_field_cannot_hold_fails_naming_the_row(populated):
    before = rows(populated, SELECT)
    manifest = manifest_of(BASE + "      code: {type: string, max_length: 5, required: true, "
                                  "backfill: \"record.name == 'A7' ? 'a-far-too-long-code' : record.name\"}\n")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    [reason] = info.value.plan.refused
    assert "backfill of account.code" in reason and "failed for 1 row: id 7:" in reason
    assert rows(populated, SELECT) == before
    assert "code" not in {c["name"] for c in sa.inspect(create_db_engine(populated)).get_columns("account")}


def test_new_required_field_with_default_on_a_populated_table(populated):
    before = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(BASE + "      score: {type: integer, required: true, default: 5}\n"),
                                database_url=populated)
    text = the_plan.render()
    assert "add column account.score (BIGINT, required)" in text
    assert "backfill account.score: 30 rows from default 5" in text
    assert rows(populated, SELECT.replace("updated_at", "updated_at, score")) == [r + (5,) for r in before]
    assert not nullable(populated, "score")


def test_new_required_field_without_a_fill_is_refused_on_a_populated_table(populated):
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(BASE + "      score: {type: integer, required: true}\n"), database_url=populated)
    assert info.value.plan.refused == [
        "new field account.score is required, but 30 rows have no value (ids 1, 2, 3, 4, 5 ...): "
        "add 'default:' or 'backfill:' to fill them, or fill them first"]
    assert "score" not in {c["name"] for c in sa.inspect(create_db_engine(populated)).get_columns("account")}


def test_new_required_field_on_an_empty_table_needs_no_fill(db_url):
    migrate_manifest(manifest_of(BASE), database_url=db_url)
    migrate_manifest(manifest_of(BASE + "      score: {type: integer, required: true}\n"), database_url=db_url)
    assert not nullable(db_url, "score")


def test_required_off_is_always_applied(populated):
    before = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(BASE.replace("name: {type: string, required: true}",
                                                         "name: {type: string}")), database_url=populated)
    assert "drop NOT NULL of account.name" in the_plan.render()
    assert rows(populated, SELECT) == before and nullable(populated, "name")


def test_plan_without_a_database_lists_the_backfill_and_its_sql():
    old = manifest_of(BASE).to_json()
    the_plan = plan_migration(old, manifest_of(changed("{type: string, required: true, default: other}")))
    assert [s.description for s in the_plan.steps] == ["backfill account.industry from default 'other'",
                                                       "set account.industry NOT NULL"]
    pg = render_sql(the_plan.steps, "postgresql")
    assert "-- backfill account.industry from default 'other'" in pg
    assert "ALTER TABLE account ALTER COLUMN industry SET NOT NULL" in pg


def test_backfill_reading_an_unknown_field_is_a_config_error():
    with pytest.raises(ConfigErrors) as info:
        manifest_of(changed("{type: string, required: true, backfill: record.sector}"))
    assert "E135" in str(info.value) and "backfill of 'account.industry'" in str(info.value)
