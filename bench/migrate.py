"""What ``loom plan`` and ``loom migrate`` cost on a large table, next to the hand-written statement.

One entity, ``item``, with ``--rows`` rows (default 1 000 000, bulk-inserted below Loom: ``executemany``
on SQLite, ``COPY`` on PostgreSQL) and a copy of them in ``item_raw``. Three changes, one after the
other, each made once by Loom (``plan`` with its data checks, then ``migrate``) on ``item`` and once
by hand on ``item_raw``:

* adding an optional field: ``ALTER TABLE ... ADD COLUMN``;
* renaming a field (``renamed_from:``): ``ALTER TABLE ... RENAME COLUMN``;
* converting a ``string`` field holding digits to ``type: integer``: ``ALTER COLUMN ... TYPE bigint
  USING code::bigint`` on PostgreSQL (Loom's integer columns are BIGINT); on SQLite, which cannot change
  a column's type, a new column filled with ``CAST(code AS INTEGER)`` takes the old one's place (add,
  update, drop, rename).

    .venv/bin/python bench/migrate.py                       # SQLite, 1 000 000 rows
    .venv/bin/python bench/migrate.py --rows 100000
    .venv/bin/python bench/migrate.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

A change Loom refuses is reported as ``refused: <reason>`` and the next one runs. A figure, not a
test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from api import database

BATCH = 50_000

#: The entity at each step; the first is the schema the rows are inserted into.
BASE = """\
      name: {type: string, required: true, max_length: 100}
      code: {type: string, max_length: 20}
      note: {type: string, max_length: 100}
"""
ADDED = BASE + "      rating: {type: integer}\n"
RENAMED = ADDED.replace("      note: {type: string, max_length: 100}\n",
                        "      memo: {type: string, max_length: 100, renamed_from: note}\n")
CONVERTED = RENAMED.replace("code: {type: string, max_length: 20}", "code: {type: integer}")


@dataclass(frozen=True)
class Change:
    """One change: the entity's fields after it, and the hand-written SQL doing the same per dialect."""

    title: str
    fields: str
    sql: dict[str, list[str]]


CHANGES = [
    Change("add an optional field", ADDED, {
        "sqlite": ["ALTER TABLE item_raw ADD COLUMN rating BIGINT"],
        "postgresql": ["ALTER TABLE item_raw ADD COLUMN rating BIGINT"],
    }),
    Change("rename a field", RENAMED, {
        "sqlite": ["ALTER TABLE item_raw RENAME COLUMN note TO memo"],
        "postgresql": ["ALTER TABLE item_raw RENAME COLUMN note TO memo"],
    }),
    Change("convert string -> integer", CONVERTED, {
        "sqlite": ["ALTER TABLE item_raw ADD COLUMN code_new BIGINT",
                   "UPDATE item_raw SET code_new = CAST(code AS INTEGER)",
                   "ALTER TABLE item_raw DROP COLUMN code",
                   "ALTER TABLE item_raw RENAME COLUMN code_new TO code"],
        "postgresql": ["ALTER TABLE item_raw ALTER COLUMN code TYPE bigint USING code::bigint"],
    }),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the table (default 1000000)")
    p.add_argument("--backup", action="store_true", help="let migrate copy a SQLite file first, as 'loom "
                   "migrate' does without --no-backup (default: no copy, so only the change is timed)")
    p.add_argument("--database-url", help="run against this database instead of a temporary SQLite file; a "
                   "PostgreSQL URL naming database 'test' gets a temporary database created and dropped")
    return p.parse_args()


def write_project(directory: Path, fields: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "loom.yaml").write_text("app: {name: Migration bench}\ninclude: [entities.yaml]\n")
    (directory / "entities.yaml").write_text("entities:\n  item:\n    fields:\n" + fields)
    return directory


def item_rows(start: int, stop: int) -> list[dict]:
    """Deterministic rows; ``code`` holds digits (up to 9, so every value fits an integer)."""
    at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return [{"name": f"Item {i:07d}", "code": str(i * 7919 % 10**9), "note": f"note {i}", "created_at": at,
             "updated_at": at, "version": 1} for i in range(start, stop)]


def fill(url: str, project: Path, rows: int) -> None:
    """Insert ``rows`` items below Loom, then copy them into ``item_raw`` (same columns and index)."""
    from loomcrm.engine.compiler import compile_project
    from loomcrm.engine.database import create_db_engine
    from loomcrm.generators.tables import build_metadata

    manifest, _ = compile_project(project)
    table = build_metadata(manifest).tables["item"]
    raw = sa.Table("item_raw", sa.MetaData(), *(c._copy() for c in table.c))  # its owner index too
    columns = ["name", "code", "note", "created_at", "updated_at", "version"]
    engine = create_db_engine(url)
    started = time.perf_counter()
    try:
        with engine.connect().execution_options(loom_write=True) as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                with conn.connection.driver_connection.cursor() as cursor, \
                        cursor.copy(f"COPY item ({', '.join(columns)}) FROM STDIN") as copy:
                    for start in range(1, rows + 1, BATCH):
                        for row in item_rows(start, min(start + BATCH, rows + 1)):
                            copy.write_row([row[c] for c in columns])
            else:
                for start in range(1, rows + 1, BATCH):
                    conn.execute(table.insert(), item_rows(start, min(start + BATCH, rows + 1)))
            raw.create(conn)
            names = ", ".join(c.name for c in table.c)
            conn.exec_driver_sql(f"INSERT INTO item_raw ({names}) SELECT {names} FROM item")
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()
    print(f"inserted {rows} rows into item and item_raw in {time.perf_counter() - started:.1f} s")


def run_change(change: Change, project: Path, url: str, backup: bool) -> tuple[str, str, str, str]:
    """(plan, migrate, hand-written) timings and a note, as printed; Loom first, then the statements."""
    from loomcrm.engine import commands
    from loomcrm.engine.database import create_db_engine

    started = time.perf_counter()
    planned = commands.plan(project, database_url=url)
    plan_s = time.perf_counter() - started
    if planned.plan.refused:
        migrate_text, note = "-", "refused: " + "; ".join(planned.plan.refused)
    else:
        started = time.perf_counter()
        commands.migrate(project, database_url=url, backup=backup)
        migrate_text = f"{time.perf_counter() - started:8.3f} s"
        note = "; ".join(step.description for step in planned.plan.steps)
    engine = create_db_engine(url)
    try:
        started = time.perf_counter()
        with engine.connect().execution_options(loom_write=True) as conn, conn.begin():
            for statement in change.sql[engine.dialect.name]:
                conn.exec_driver_sql(statement)
        raw_s = time.perf_counter() - started
    finally:
        engine.dispose()
    return f"{plan_s:8.3f} s", migrate_text, f"{raw_s:8.3f} s", note


def same_values(url: str) -> str:
    """Whether item and item_raw hold the same values now (so both sides did the same work)."""
    from loomcrm.engine.database import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            loom = {c["name"]: str(c["type"]) for c in inspector.get_columns("item")}
            raw = {c["name"]: str(c["type"]) for c in inspector.get_columns("item_raw")}
            common = [c for c in loom if c in raw and c != "id"]
            text = "CAST({} AS VARCHAR(255))"  # compared as text: a refused conversion leaves code a string
            differ = " OR ".join(f"{text.format('l.' + c)} IS DISTINCT FROM {text.format('r.' + c)}"
                                 if engine.dialect.name == "postgresql" else
                                 f"{text.format('l.' + c)} IS NOT {text.format('r.' + c)}" for c in common)
            count = conn.exec_driver_sql(
                f"SELECT count(*) FROM item l JOIN item_raw r ON r.id = l.id WHERE {differ}").scalar_one()
    finally:
        engine.dispose()
    return (f"{count} rows differ between item and item_raw in ({', '.join(common)}); "
            f"column code is {loom.get('code')} in item, {raw.get('code')} in item_raw")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="loom-bench-migrate-") as tmp_name, \
            database(args.database_url, Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        dialect = sa.engine.make_url(url).get_backend_name()
        print(f"database: {dialect}, {args.rows} rows; migrate {'with' if args.backup else 'without'} backup copy")
        base = write_project(tmp / "v0", BASE)
        from loomcrm.engine import commands

        commands.migrate(base, database_url=url)
        fill(url, base, args.rows)
        results = []
        for n, change in enumerate(CHANGES, 1):
            results.append((change, *run_change(change, write_project(tmp / f"v{n}", change.fields), url,
                                                args.backup)))
        print(f"\n{'change':<28}{'loom plan':>12}{'loom migrate':>14}{'by hand':>12}")
        for change, plan_s, migrate_s, raw_s, _ in results:
            print(f"{change.title:<28}{plan_s:>12}{migrate_s:>14}{raw_s:>12}")
        print()
        for change, *_, note in results:
            print(f"{change.title}: {note}")
            print(f"  by hand: {'; '.join(change.sql[dialect])}")
        print(f"\nafterwards: {same_values(url)}")


if __name__ == "__main__":
    main()
