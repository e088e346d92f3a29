"""Entities that refer to each other: the foreign key closing the cycle is added once both tables exist."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomcrm.engine.commands import plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.errors import Problem
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities, compile_files, make_loom, project_files
from loomcrm.generators.migrations import plan_migration, render_sql

CYCLE = """
entities:
  ping:
    fields:
      n: {type: integer}
      pong: {type: ref, to: pong, on_delete: set_null}
  pong:
    fields:
      n: {type: integer}
      ping: {type: ref, to: ping}
"""
#: Phase 1 of a cycle added later: two unrelated entities (one referring to itself).
APART = """
entities:
  ping:
    fields:
      n: {type: integer}
      parent: {type: ref, to: ping, on_delete: set_null}
"""
#: Phase 2: a new entity referring to the existing one, which gets a ref to the new one, plus a second
#: cycle between the existing entity and another new one, and a new refs field between them.
JOINED = """
entities:
  ping:
    fields:
      n: {type: integer}
      parent: {type: ref, to: ping, on_delete: set_null}
      pong: {type: ref, to: pong, on_delete: set_null}
      pang: {type: ref, to: pang, on_delete: set_null}
      pangs: {type: refs, to: pang, related_name: tagged}
  pong:
    fields:
      n: {type: integer}
      ping: {type: ref, to: ping}
  pang:
    fields:
      ping: {type: ref, to: ping, on_delete: cascade, related_name: owned}
      pong: {type: ref, to: pong, on_delete: set_null}
"""


def current_plan(url: str, entities_yaml: str):
    return plan_manifest(compile_entities(entities_yaml), database_url=url).plan


def test_a_cycle_is_created_from_nothing_with_the_closing_key_added_afterwards(db_url):
    plan = plan_migration(None, compile_files(project_files(CYCLE)))
    text = plan.render()
    assert not plan.refused, text
    descriptions = [step.description for step in plan.steps]
    [added] = [d for d in descriptions if d.startswith("add foreign key")]
    assert added in ("add foreign key fk_ping_pong_id_pong on ping", "add foreign key fk_pong_ping_id_ping on pong")
    table = added.split()[-1]
    assert descriptions.index(added) > max(descriptions.index(d) for d in descriptions
                                           if d.startswith(("create table ping ", "create table pong ")))
    pg = render_sql(plan.steps, "postgresql")
    assert pg.count("REFERENCES ping (id)") == pg.count("REFERENCES pong (id)") == 1
    assert f"ALTER TABLE {table} ADD CONSTRAINT fk_" in pg
    sqlite = render_sql(plan.steps, "sqlite")  # inline: SQLite checks the referenced table on writes only
    assert sqlite.count("REFERENCES ping (id)") == sqlite.count("REFERENCES pong (id)") == 1
    assert "batch" not in sqlite and "ALTER TABLE" not in sqlite

    loom = make_loom(project_files(CYCLE), db_url)
    try:
        ping_e, pong_e = loom.entity("ping"), loom.entity("pong")
        ping = loom.records.create(ping_e, {"n": 1}, Context())
        pong = loom.records.create(pong_e, {"n": 2, "ping": ping["id"]}, Context())
        ping = loom.records.update(ping_e, ping["id"], {"pong": pong["id"]}, Context())
        assert ping["pong"] == pong["id"] and pong["ping"] == ping["id"]
        with pytest.raises(Problem, match="still referenced by 1 pong"):  # pong.ping: restrict
            loom.records.delete(ping_e, ping["id"], Context())
        loom.records.delete(pong_e, pong["id"], Context())  # ping.pong: set null
        assert loom.records.get(ping_e, ping["id"], Context())["pong"] is None
        loom.records.delete(ping_e, ping["id"], Context())
    finally:
        loom.close()
    assert current_plan(db_url, CYCLE).render() == "The database is up to date."


def test_a_later_phase_closes_cycles_through_existing_tables(db_url):
    loom = make_loom(project_files(APART), db_url)
    try:
        root = loom.records.create(loom.entity("ping"), {"n": 1}, Context())
        child = loom.records.create(loom.entity("ping"), {"n": 2, "parent": root["id"]}, Context())
    finally:
        loom.close()

    plan = current_plan(db_url, JOINED)
    text = plan.render()
    assert not plan.refused, text
    for expected in ("create table pong", "create table pang", "create table ping__pangs",
                     "add column ping.pong_id", "add column ping.pang_id"):
        assert expected in text
    descriptions = [step.description for step in plan.steps]
    for table in ("pong", "pang"):  # the new tables exist before ping's new columns refer to them
        assert (descriptions.index(next(d for d in descriptions if d.startswith(f"create table {table} ")))
                < descriptions.index(f"add column ping.{table}_id (BIGINT, optional)"))

    loom = make_loom(project_files(JOINED), db_url)
    try:
        ping_e, pong_e, pang_e = loom.entity("ping"), loom.entity("pong"), loom.entity("pang")
        assert loom.records.get(ping_e, child["id"], Context())["parent"] == root["id"]  # data kept
        pong = loom.records.create(pong_e, {"n": 3, "ping": root["id"]}, Context())
        pang = loom.records.create(pang_e, {"ping": root["id"], "pong": pong["id"]}, Context())
        root = loom.records.update(ping_e, root["id"], {"pong": pong["id"], "pang": pang["id"],
                                                        "pangs": [pang["id"]]}, Context())
        assert (root["pong"], root["pang"], root["pangs"]) == (pong["id"], pang["id"], [pang["id"]])
        with pytest.raises(Problem, match="still referenced by 1 pong"):
            loom.records.delete(ping_e, root["id"], Context())
        loom.records.delete(pong_e, pong["id"], Context())  # pang.pong: set null
        assert loom.records.get(pang_e, pang["id"], Context())["pong"] is None
        loom.records.delete(ping_e, root["id"], Context())  # pang.ping: cascade; child.parent: set null
        with pytest.raises(Problem):
            loom.records.get(pang_e, pang["id"], Context())
        assert loom.records.get(ping_e, child["id"], Context())["parent"] is None
    finally:
        loom.close()
    assert current_plan(db_url, JOINED).render() == "The database is up to date."


def test_a_ref_column_added_later_keeps_its_foreign_key(db_url):
    make_loom(project_files(APART), db_url).close()
    make_loom(project_files(JOINED), db_url).close()
    engine = create_db_engine(db_url)
    try:
        keys = {fk["name"] for fk in sa.inspect(engine).get_foreign_keys("ping")}
    finally:
        engine.dispose()
    assert {"fk_ping_pong_id_pong", "fk_ping_pang_id_pang"} <= keys
    if db_url.startswith("sqlite"):  # the table copy that added the keys kept AUTOINCREMENT
        engine = create_db_engine(db_url)
        try:
            with engine.connect() as conn:
                ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'ping'").scalar()
        finally:
            engine.dispose()
        assert "AUTOINCREMENT" in ddl
