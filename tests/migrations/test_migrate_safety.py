"""Migrations under stress (issue 6, "Tests that must exist"): two ``migrate`` processes at once, and a
failure half-way through a plan, each on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

import loomcrm.engine.commands as commands
from loomcrm.engine.app import Loom
from loomcrm.engine.commands import MigrationRefused, migrate
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import project_files
from loomcrm.engine.testing import sql_rows as rows

PHASE1 = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      kind: {type: enum, options: [customer, partner]}
      industry: {type: string}
      amount: {type: integer}
      divisor: {type: integer}
"""
# phase 2 for the concurrent test: a required field backfilled from its default, and a new entity
CONCURRENT_PHASE2 = PHASE1 + """\
      tier: {type: string, required: true, default: basic}
  contact:
    fields:
      name: {type: string, required: true}
      account: {type: ref, to: account, on_delete: cascade}
"""
# phase 2 for the failure test: a new column with an index, a new table, and an existing field made
# required with a backfill that divides by zero for one row (id 9: no industry, divisor 0)
FAILING_PHASE2 = PHASE1.replace(
    "industry: {type: string}",
    'industry: {type: string, required: true, backfill: "string(record.amount / record.divisor)"}') + """\
      region: {type: string, indexed: true}
  contact:
    fields:
      name: {type: string, required: true}
      account: {type: ref, to: account, on_delete: cascade}
"""
NULL_IDS = [i for i in range(1, 31) if i % 3 == 0]  # 10 of 30 accounts have no industry
ZERO_DIVISOR = 9

MIGRATOR = textwrap.dedent("""
    import pathlib, sys, time
    from loomcrm.engine.commands import migrate
    project, url, go = sys.argv[1:4]
    while not pathlib.Path(go).exists():
        time.sleep(0.005)
    print("empty" if migrate(project, database_url=url).empty else "applied")
""")


def write_project(path, entities_yaml: str) -> None:
    for name, text in project_files(entities_yaml).items():
        (path / name).write_text(text)


def populate(project, url: str) -> None:
    """Phase 1 migrated, with 30 accounts; every third has no industry, account 9 has divisor 0."""
    write_project(project, PHASE1)
    migrate(project, database_url=url)
    loom = Loom.from_project(project, database_url=url)
    try:
        for i in range(1, 31):
            loom.records.create(loom.entity("account"), {
                "name": f"A{i}", "kind": "customer" if i % 2 else "partner",
                "industry": None if i in NULL_IDS else f"ind{i}",
                "amount": i * 10, "divisor": 0 if i == ZERO_DIVISOR else i}, Context())
    finally:
        loom.close()


def schema(url: str) -> dict:
    """Every table with its columns (name, type, nullable), indexes and unique constraints."""
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "unique": sorted((u["name"] or "", tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
        } for table in sorted(inspector.get_table_names())}
    finally:
        engine.dispose()


def all_rows(url: str, tables) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    return {table: sorted(rows(url, f'SELECT * FROM "{table}"'), key=repr) for table in tables}


def test_two_migrate_processes_at_once_apply_the_plan_once(db_url, tmp_path):
    populate(tmp_path, db_url)
    before = rows(db_url, "SELECT id, name, kind, industry, amount, divisor, version, updated_at "
                          "FROM account ORDER BY id")
    write_project(tmp_path, CONCURRENT_PHASE2)
    go = tmp_path / "go"
    migrators = [subprocess.Popen([sys.executable, "-c", MIGRATOR, str(tmp_path), db_url, str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.write_text("go")
    results = [m.communicate(timeout=120) for m in migrators]
    assert all(m.returncode == 0 for m in migrators), [err for _, err in results]
    # one applied the plan; the other read the stored manifest under the lock and found nothing to do
    assert sorted(out.strip().splitlines()[-1] for out, _ in results) == ["applied", "empty"]

    assert rows(db_url, "SELECT count(*) FROM loom_migrations")[0][0] == 2
    tables = schema(db_url)
    assert "contact" in tables
    assert ("tier", False) in [(name, nullable) for name, _, nullable in tables["account"]["columns"]]
    after = rows(db_url, "SELECT id, name, kind, industry, amount, divisor, version, updated_at, tier "
                         "FROM account ORDER BY id")
    assert after == [r + ("basic",) for r in before]  # no row lost, none changed, each backfilled once
    assert not any(t.startswith("_alembic_tmp_") for t in tables)


@pytest.mark.parametrize("failure", ["backfill", "injected"])
def test_a_failure_half_way_through_a_plan_leaves_schema_and_data_unchanged(db_url, tmp_path, monkeypatch, failure):
    populate(tmp_path, db_url)
    schema_before = schema(db_url)
    data_before = all_rows(db_url, schema_before)
    assert rows(db_url, "SELECT count(*) FROM loom_migrations")[0][0] == 1

    if failure == "backfill":  # a CEL error for one row, after the column, index and table were made
        write_project(tmp_path, FAILING_PHASE2)
        with pytest.raises(MigrationRefused) as info:
            migrate(tmp_path, database_url=db_url)
        [reason] = info.value.plan.refused
        assert f"failed for 1 row: id {ZERO_DIVISOR}:" in reason
        descriptions = [step.description for step in info.value.plan.steps]
        backfill = next(i for i, d in enumerate(descriptions) if d.startswith("backfill account.industry"))
        ran_first = descriptions[:backfill]  # operations that ran before it, then were rolled back
        assert any(d.startswith("create table contact") for d in ran_first), descriptions
        assert any(d.startswith("add column account.region") for d in ran_first), descriptions
    else:  # every step ran (SQLite's table copies included), then something fails before the commit
        write_project(tmp_path, FAILING_PHASE2.replace("string(record.amount / record.divisor)", "record.name"))
        real = commands.apply_steps
        ran = []

        def apply_then_fail(conn, steps):
            real(conn, steps)
            ran.append(len(steps))
            assert "contact" in sa.inspect(conn).get_table_names()  # the changes are there, uncommitted
            raise RuntimeError("injected failure")

        monkeypatch.setattr(commands, "apply_steps", apply_then_fail)
        with pytest.raises(RuntimeError, match="injected failure"):
            migrate(tmp_path, database_url=db_url)
        assert ran and ran[0] >= 4

    schema_after = schema(db_url)
    assert schema_after == schema_before
    assert all_rows(db_url, schema_after) == data_before  # every table, every row, loom_migrations too
    assert rows(db_url, "SELECT count(*) FROM loom_migrations")[0][0] == 1
    assert not any(t.startswith("_alembic_tmp_") for t in schema_after)
