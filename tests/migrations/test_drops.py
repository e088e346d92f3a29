"""Migrations: dropping a field or an entity. Without data the drop is safe; with data it is refused
(with counts and sample ids) unless data loss is allowed, and then every other value is kept."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main
from loomcrm.engine.commands import MigrationRefused, applied_manifest, migrate_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import migrated, project_files
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration

FAX = "      fax: {type: string, indexed: true}\n"
TAGS = "      tags: {type: refs, to: tag}\n"
PARENT = "      parent: {type: ref, to: account, on_delete: set_null}\n"
LEAD = """  lead:
    fields:
      title: {type: string, required: true}
      account: {type: ref, to: account, on_delete: cascade}
      watchers: {type: refs, to: account, related_name: watched_leads}
"""
BASE = f"""
entities:
  account:
    fields:
      name: {{type: string, required: true}}
{FAX}{TAGS}{PARENT}  tag:
    fields:
      name: {{type: string, required: true}}
{LEAD}"""
FAX_IDS = [i for i in range(1, 21) if i % 3 == 2]  # 2, 5, 8, ...: 7 of 20 accounts have a fax
SELECT = "SELECT id, name, parent_id, version, created_at, updated_at FROM account ORDER BY id"
LEADS = "SELECT id, title, account_id FROM lead ORDER BY id"


def schema(url: str) -> dict[str, list[str]]:
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()}
    finally:
        engine.dispose()


def stored_plan(url: str, manifest):
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            old, has_table = applied_manifest(conn)
        return plan_migration(old, manifest, has_migrations_table=has_table)
    finally:
        engine.dispose()


@pytest.fixture
def populated(db_url):
    """20 accounts (every third from the second has a fax, every one after the first has a parent and
    tags), 2 tags, 4 leads with watchers."""
    with migrated(manifest_of(BASE), db_url) as loom:
        tags = [loom.records.create(loom.entity("tag"), {"name": n}, Context())["id"] for n in ("vip", "new")]
        for i in range(1, 21):
            loom.records.create(loom.entity("account"), {
                "name": f"A{i}", "fax": f"+1 555 {i}" if i in FAX_IDS else None,
                "parent": 1 if i > 1 else None, "tags": tags[: i % 3]}, Context())
        for i in range(1, 5):
            loom.records.create(loom.entity("lead"), {"title": f"L{i}", "account": i, "watchers": [i, i + 1]},
                                Context())
    return db_url


def snapshot(url: str) -> tuple:
    return (schema(url), rows(url, SELECT), rows(url, "SELECT id, fax FROM account ORDER BY id"),
            rows(url, LEADS), rows(url, "SELECT * FROM account__tags ORDER BY 1, 2"),
            rows(url, "SELECT count(*) FROM loom_migrations"))


def test_dropping_a_field_with_values_is_refused_with_counts_and_ids(populated):
    before = snapshot(populated)
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(BASE.replace(FAX, "")), database_url=populated)
    copied = " (the SQLite database is copied first)" if populated.startswith("sqlite") else ""
    assert info.value.plan.refused == [
        "dropping account.fax would lose the values of 7 rows (ids 2, 5, 8, 11, 14 ...): run 'loom migrate "
        f"--allow-data-loss' to drop them{copied}, or put the field back"]
    assert "drop column account.fax (destructive: loses the values of 7 rows)" in info.value.plan.render()
    assert snapshot(populated) == before


def test_dropping_a_field_with_data_loss_allowed_keeps_every_other_value(populated):
    before = rows(populated, SELECT)
    leads, links = rows(populated, LEADS), rows(populated, "SELECT * FROM account__tags ORDER BY 1, 2")
    manifest = manifest_of(BASE.replace(FAX, ""))
    the_plan = migrate_manifest(manifest, database_url=populated, allow_data_loss=True)
    assert "drop column account.fax (destructive: loses the values of 7 rows)" in the_plan.render()
    assert "fax" not in schema(populated)["account"]
    assert rows(populated, SELECT) == before
    assert rows(populated, LEADS) == leads
    assert rows(populated, "SELECT * FROM account__tags ORDER BY 1, 2") == links
    assert stored_plan(populated, manifest).empty
    loom = Loom.from_manifest(manifest, make_plugin_manager(), database_url=populated)
    try:  # the table still works: ids keep counting, the index on the other columns stay
        assert loom.records.create(loom.entity("account"), {"name": "New", "parent": 2}, Context())["id"] == 21
    finally:
        loom.close()


def test_an_empty_column_is_dropped_without_the_flag(populated):
    engine = create_db_engine(populated)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE account SET fax = NULL")
    engine.dispose()
    before = rows(populated, SELECT)
    the_plan = migrate_manifest(manifest_of(BASE.replace(FAX, "")), database_url=populated)
    assert "drop column account.fax (no row has data to lose)" in the_plan.render()
    assert "fax" not in schema(populated)["account"] and rows(populated, SELECT) == before


def test_dropping_a_ref_field_and_a_refs_field(populated):
    before = rows(populated, "SELECT id, name, fax FROM account ORDER BY id")
    manifest = manifest_of(BASE.replace(PARENT, "").replace(TAGS, ""))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    assert sorted(r.split(" (")[0] for r in info.value.plan.refused) == [
        "dropping account.parent would lose the values of 19 rows",
        "dropping account.tags would lose the links of 14 rows"]
    the_plan = migrate_manifest(manifest, database_url=populated, allow_data_loss=True)
    assert "drop table account__tags (links of account.tags) (destructive: loses the links of 14 rows)" \
        in the_plan.render()
    tables = schema(populated)
    assert "account__tags" not in tables and "parent_id" not in tables["account"]
    assert rows(populated, "SELECT id, name, fax FROM account ORDER BY id") == before
    assert stored_plan(populated, manifest).empty


def test_dropping_an_entity_with_rows_is_refused_then_applied_with_the_flag(populated):
    before = snapshot(populated)
    manifest = manifest_of(BASE.replace(LEAD, ""))
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest, database_url=populated)
    assert [r.split(":")[0] for r in info.value.plan.refused] == [
        "dropping entity 'lead' would lose 4 rows (ids 1, 2, 3, 4)"]
    assert info.value.plan.refused[0].endswith("or put the entity back")
    assert snapshot(populated) == before

    the_plan = migrate_manifest(manifest, database_url=populated, allow_data_loss=True)
    text = the_plan.render()
    assert text.index("drop table lead__watchers") < text.index("drop table lead (destructive: loses 4 rows)")
    tables = schema(populated)
    assert "lead" not in tables and "lead__watchers" not in tables
    assert {t: c for t, c in before[0].items() if not t.startswith("lead")} == tables
    assert rows(populated, SELECT) == before[1] and rows(populated, "SELECT * FROM account__tags ORDER BY 1, 2") \
        == before[4]
    assert rows(populated, "SELECT count(*) FROM loom_audit WHERE entity = 'lead'")[0][0] == 4  # the trail stays
    assert stored_plan(populated, manifest).empty


def test_two_removed_entities_that_refer_to_each_other_are_dropped(db_url):
    pair = """  a:
    fields:
      b: {type: ref, to: b}
  b:
    fields:
      a: {type: ref, to: a}
"""
    migrate_manifest(manifest_of(BASE + pair), database_url=db_url)
    the_plan = migrate_manifest(manifest_of(BASE), database_url=db_url)
    assert "drop foreign key fk_b_a_id_a on b" in the_plan.render()
    assert not {"a", "b"} & set(schema(db_url))


def test_cli_plan_exits_1_naming_the_flag_and_migrate_applies_with_it(populated, tmp_path, capsys):
    for name, text in project_files(BASE.replace(FAX, "")).items():
        (tmp_path / name).write_text(text)
    assert main(["-p", str(tmp_path), "plan", "--database", populated]) == 1
    assert "--allow-data-loss" in capsys.readouterr().out
    assert main(["-p", str(tmp_path), "plan", "--database", populated, "--allow-data-loss"]) == 0
    assert main(["-p", str(tmp_path), "migrate", "--database", populated]) == 1
    assert "fax" in schema(populated)["account"]
    assert main(["-p", str(tmp_path), "migrate", "--database", populated, "--allow-data-loss"]) == 0
    assert "fax" not in schema(populated)["account"]
    assert main(["-p", str(tmp_path), "plan", "--database", populated]) == 0
    assert "up to date" in capsys.readouterr().out
