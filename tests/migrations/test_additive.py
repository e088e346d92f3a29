"""Migrations, first slice: schema from nothing, additive changes, everything else refused."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from loomcrm.engine.commands import MigrationRefused, applied_manifest, migrate_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.engine.testing import table_names
from loomcrm.generators.migrations import plan_migration, render_sql

PHASE1 = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      region: {type: enum, options: [north, south]}
"""
PHASE2 = """
entities:
  account:
    label: {en: Customer, zh: 客户}
    fields:
      name: {type: string, required: true}
      region: {type: enum, options: [north, south, east]}
      industry: {type: string, indexed: true}
      email: {type: email, unique: true}
      parent: {type: ref, to: account, on_delete: set_null, related_name: children}
      tags: {type: refs, to: tag}
    indexes:
      - fields: [region, name]
  tag:
    fields:
      name: {type: string, required: true}
"""


def test_initial_migration_creates_tables_and_records_the_manifest(db_url):
    manifest = manifest_of(PHASE1)
    plan = migrate_manifest(manifest, database_url=db_url)
    assert plan.initial and "create table account" in plan.render()
    assert {"account", "loom_migrations"} <= table_names(db_url)
    [(hash_, stored)] = rows(db_url, "SELECT manifest_hash, manifest FROM loom_migrations")
    assert hash_ == manifest.hash() and json.loads(stored) == manifest.to_json()


def test_migrating_twice_changes_nothing(db_url):
    manifest = manifest_of(PHASE1)
    migrate_manifest(manifest, database_url=db_url)
    plan = migrate_manifest(manifest, database_url=db_url)
    assert plan.empty and plan.render() == "The database is up to date."
    assert rows(db_url, "SELECT count(*) FROM loom_migrations") == [(1,)]


def test_additive_changes_are_planned_and_applied_without_touching_data(db_url):
    from loomcrm.engine.app import Loom
    from loomcrm.engine.runtime.context import Context

    phase1 = manifest_of(PHASE1)
    migrate_manifest(phase1, database_url=db_url)
    loom = Loom.from_manifest(phase1, make_plugin_manager(), database_url=db_url)
    for i in range(5):
        loom.records.create(loom.entity("account"), {"name": f"A{i}", "region": "north"}, Context())
    loom.close()
    before = rows(db_url, "SELECT id, name, region, version FROM account ORDER BY id")

    phase2 = manifest_of(PHASE2)
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        old, _ = applied_manifest(conn)
    engine.dispose()
    plan = plan_migration(old, phase2)
    text = plan.render()
    assert not plan.refused, text
    for expected in ("create table tag", "add column account.industry", "add column account.email",
                     "add column account.parent_id", "create table account__tags",
                     "create index ix_account_industry", "add unique constraint uq_account_email",
                     "create index ix_account_region_name", "new options for account.region: east"):
        assert expected in text
    migrate_manifest(phase2, database_url=db_url)
    assert rows(db_url, "SELECT id, name, region, version FROM account ORDER BY id") == before

    loom = Loom.from_manifest(phase2, make_plugin_manager(), database_url=db_url)
    try:
        account = loom.entity("account")
        tag = loom.records.create(loom.entity("tag"), {"name": "vip"}, Context())
        child = loom.records.create(account, {"name": "Child", "parent": before[0][0], "region": "east",
                                              "email": "c@example.com", "tags": [tag["id"]]}, Context())
        assert child["parent"] == before[0][0] and child["tags"] == [tag["id"]]
    finally:
        loom.close()


@pytest.mark.parametrize("change, reason", [
    (PHASE1.replace("name: {type: string, required: true}", "name: {type: json, required: true}"),
     "account.name changes type string -> json, which Loom cannot convert"),
])
def test_non_additive_changes_are_refused_and_change_nothing(db_url, change, reason):
    migrate_manifest(manifest_of(PHASE1), database_url=db_url)
    before_tables = table_names(db_url)
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(change), database_url=db_url)
    assert any(reason in r for r in info.value.plan.refused), info.value.plan.refused
    assert "add a new field" in str(info.value) or "add it as optional first" in str(info.value)
    assert table_names(db_url) == before_tables
    assert rows(db_url, "SELECT count(*) FROM loom_migrations") == [(1,)]


def test_plan_renders_sql_for_both_dialects_without_a_database():
    plan = plan_migration(None, manifest_of(PHASE2))
    pg, lite = render_sql(plan.steps, "postgresql"), render_sql(plan.steps, "sqlite")
    assert "CREATE TABLE account" in pg and "BIGSERIAL" in pg
    assert "CREATE TABLE account" in lite and "BIGSERIAL" not in lite
    assert pg.index("CREATE TABLE tag") < pg.index("CREATE TABLE account__tags")


def test_concurrent_migrations_apply_the_plan_once(db_url):
    import threading

    manifest = manifest_of(PHASE2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate_manifest(manifest, database_url=db_url)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rows(db_url, "SELECT count(*) FROM loom_migrations") == [(1,)]


def test_a_database_migrated_before_the_audit_trail_gets_its_table(db_url):
    manifest = manifest_of(PHASE1)
    migrate_manifest(manifest, database_url=db_url)
    engine = create_db_engine(db_url)
    with engine.begin() as conn:  # as a database from before loom_audit existed looks
        conn.exec_driver_sql("DROP TABLE loom_audit")
        stored = json.loads(conn.exec_driver_sql("SELECT manifest FROM loom_migrations").scalar_one())
        stored["system_tables"].remove("loom_audit")
        conn.execute(sa.text("UPDATE loom_migrations SET manifest = :m"), {"m": json.dumps(stored)})
    engine.dispose()
    plan = migrate_manifest(manifest, database_url=db_url)
    assert [s.description for s in plan.steps][0] == "create table loom_audit (Loom's own, 9 columns)"
    assert "loom_audit" in table_names(db_url)
