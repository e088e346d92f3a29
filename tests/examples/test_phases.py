"""examples/sales/phases: the sales CRM grown phase by phase on one database, on SQLite and PostgreSQL.

Phase 1 is migrated and seeded, and every row of every table is kept; phases 2 and 3 are then migrated
onto the same database. No row is lost, and every value stays as it was or becomes exactly what the
config says: the renamed column keeps its values, the free-text industry becomes the option its
``map:`` names, and the contacts without a preferred language get what the ``backfill:`` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loomcrm.engine import commands
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.loader import parse_yaml

PHASES = Path(__file__).resolve().parents[2] / "examples" / "sales" / "phases"
PHASE1, PHASE2, PHASE3 = (PHASES / f"phase{n}" for n in (1, 2, 3))
#: The backfill of contact.preferred_language in phase 3, and what it gives, written out in Python.
BACKFILL = "record.mobile != null && record.mobile.startsWith('+86') ? 'zh' : 'en'"

Rows = dict[str, dict[tuple, dict[str, Any]]]  # table -> primary key -> column -> value


def backfilled_language(row: dict[str, Any]) -> str:
    return "zh" if row["mobile"] is not None and row["mobile"].startswith("+86") else "en"


def field_config(project: Path, entity_file: str, entity: str, field: str) -> dict[str, Any]:
    """A field as written in a phase's YAML (what the migration was asked to do)."""
    path = project / "entities" / entity_file
    errors: list = []
    data = parse_yaml(path.name, path.read_text(encoding="utf-8"), errors).data
    assert not errors
    return data["entities"][entity]["fields"][field]


def snapshot(url: str) -> Rows:
    """Every row of every table, keyed by primary key (or by the whole row, for tables without one)."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            rows: Rows = {}
            for table in inspector.get_table_names():
                key = inspector.get_pk_constraint(table)["constrained_columns"]
                result = conn.exec_driver_sql(f'SELECT * FROM "{table}"')
                columns = list(result.keys())
                rows[table] = {}
                for values in result:
                    row = dict(zip(columns, values, strict=True))
                    rows[table][tuple(row[c] for c in key) if key else tuple(values)] = row
            return rows
    finally:
        engine.dispose()


def expected_row(table: str, row: dict[str, Any], industry_map: dict[str, str], phase: int) -> dict[str, Any]:
    """What a phase-1 row must hold after migrating to ``phase``: its values, renamed and converted."""
    row = dict(row)
    if table == "account":
        row["annual_revenue"] = row.pop("revenue")
        if row["industry"] is not None:
            row["industry"] = industry_map.get(row["industry"], row["industry"])
    if table == "contact" and phase >= 3 and row["preferred_language"] is None:
        row["preferred_language"] = backfilled_language(row)
    return row


def assert_preserved(before: Rows, after: Rows, industry_map: dict[str, str], phase: int) -> None:
    for table, rows in before.items():
        assert table in after, f"table {table} is gone"
        if table == "loom_migrations":  # one more row per migration; the earlier ones stay as they were
            assert len(after[table]) > len(rows)
        else:
            assert len(after[table]) == len(rows), f"{table}: {len(rows)} rows before, {len(after[table])} after"
        for key, row in rows.items():
            assert key in after[table], f"{table} row {key} is gone"
            expected = expected_row(table, row, industry_map, phase)
            actual = {column: after[table][key][column] for column in expected}  # new columns left out
            assert actual == expected, f"{table} row {key}"


@pytest.fixture
def phase1_db(db_url) -> tuple[str, Rows]:
    """A database migrated to phase 1 and seeded, with the snapshot of every row."""
    commands.migrate(PHASE1, database_url=db_url)
    assert commands.seed(PHASE1, database_url=db_url) == 84
    return db_url, snapshot(db_url)


def test_phase2_plan_names_the_rename_the_conversion_and_the_new_tables(phase1_db):
    url, _ = phase1_db
    planned = commands.plan(PHASE2, database_url=url)
    assert planned.plan.refused == []
    steps = [step.description for step in planned.plan.steps]
    assert "rename column account.revenue -> account.annual_revenue (data kept)" in steps
    conversions = [s for s in steps if "account.industry" in s and "convert" in s]
    assert conversions, steps
    assert any("string -> enum" in s for s in conversions), conversions
    for table in ("lead", "opportunity"):
        assert f"create table {table} (entity '{table}', " in "\n".join(steps)
    assert not any(s.startswith(("create table account", "create table contact", "drop")) for s in steps)


def test_phases_2_and_3_keep_every_row_and_convert_exactly_as_planned(phase1_db):
    url, phase1 = phase1_db
    industry = field_config(PHASE2, "account.yaml", "account", "industry")
    industry_map, options = industry["map"], {o["value"] for o in industry["options"]}
    seeded = {row["industry"] for row in phase1["account"].values()}
    # the seed exercises every entry of the map, a value that already is an option, and no value
    assert set(industry_map) <= seeded and None in seeded and seeded & options
    assert seeded - {None} <= set(industry_map) | options

    commands.migrate(PHASE2, database_url=url)
    phase2 = snapshot(url)
    assert_preserved(phase1, phase2, industry_map, phase=2)
    assert {"lead", "opportunity"} <= set(phase2) and not phase2["lead"] and not phase2["opportunity"]
    assert "revenue" not in next(iter(phase2["account"].values()))
    assert {row["industry"] for row in phase2["account"].values()} <= options | {None}

    language = field_config(PHASE3, "contact.yaml", "contact", "preferred_language")
    assert language["required"] is True and language["backfill"] == BACKFILL
    missing = [key for key, row in phase1["contact"].items() if row["preferred_language"] is None]
    assert missing and {backfilled_language(phase1["contact"][k]) for k in missing} == {"zh", "en"}

    commands.migrate(PHASE3, database_url=url)
    phase3 = snapshot(url)
    assert_preserved(phase1, phase3, industry_map, phase=3)
    assert_preserved({t: phase2[t] for t in ("lead", "opportunity")}, phase3, industry_map, phase=3)
    assert {"ticket", "campaign"} <= set(phase3)
    assert all(row["preferred_language"] in ("en", "zh") for row in phase3["contact"].values())
    assert commands.plan(PHASE3, database_url=url).plan.empty
    assert [m.id for m in commands.history(PHASE3, database_url=url)] == [3, 2, 1]
