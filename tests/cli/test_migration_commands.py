"""``loom check`` (does the database match the config?), ``loom history`` (what was applied, when, by
whom) and the backup copy ``loom migrate`` makes of a SQLite file before changing its schema."""

from __future__ import annotations

import sqlite3

import pytest

from loomcrm.engine.cli import main

PHASE_1 = """
app: {name: Phases}
database: {url: "sqlite:///crm.db"}
entities:
  account:
    fields:
      name: {type: string, required: true}
"""
PHASE_2 = PHASE_1 + """      city: {type: string}
"""


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path):
    (tmp_path / "loom.yaml").write_text(PHASE_1)
    return tmp_path


def test_check_fails_until_the_database_is_migrated(project, capsys):
    code, _, err = run(capsys, "-p", project, "check")
    assert code == 1 and "does not match the config" in err and "create table account" in err
    assert run(capsys, "-p", project, "migrate")[0] == 0
    assert run(capsys, "-p", project, "check")[:2] == (0, "ok: the database matches the config.\n")
    (project / "loom.yaml").write_text(PHASE_2)
    code, _, err = run(capsys, "-p", project, "check")
    assert code == 1 and "add column account.city" in err


def test_check_fails_after_a_change_that_needs_no_schema_step_until_it_is_recorded(project, capsys):
    run(capsys, "-p", project, "migrate")
    (project / "loom.yaml").write_text(PHASE_1.replace("{type: string, required: true}",
                                                       "{type: string, required: true, default: Unnamed}"))
    code, _, err = run(capsys, "-p", project, "check")
    assert code == 1 and "default of account.name is now 'Unnamed'" in err
    assert run(capsys, "-p", project, "migrate")[0] == 0
    assert run(capsys, "-p", project, "check")[0] == 0


def test_history_lists_each_applied_migration_newest_first(project, capsys, monkeypatch):
    monkeypatch.setenv("USER", "ops-anna")
    assert "No migration has been applied" in run(capsys, "-p", project, "history")[1]
    run(capsys, "-p", project, "migrate")
    (project / "loom.yaml").write_text(PHASE_2)
    run(capsys, "-p", project, "migrate")
    code, out, _ = run(capsys, "-p", project, "history")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("#2 ") and "by ops-anna" in lines[0]
    assert "add column account.city" in lines[1]
    assert lines[2].startswith("#1 ") and "initial schema" in lines[3]


def test_migrate_copies_a_sqlite_database_before_changing_its_schema(project, capsys):
    run(capsys, "-p", project, "migrate")
    assert not list(project.glob("crm.db.*.bak"))  # nothing to keep before the first schema
    with sqlite3.connect(project / "crm.db") as conn:
        conn.execute("INSERT INTO account (name, created_at, updated_at, version) VALUES ('Kept', '2026-01-01', "
                     "'2026-01-01', 1)")
    (project / "loom.yaml").write_text(PHASE_2)
    code, out, _ = run(capsys, "-p", project, "migrate")
    backups = list(project.glob("crm.db.*.bak"))
    assert code == 0 and len(backups) == 1 and str(backups[0]) in out
    with sqlite3.connect(backups[0]) as conn:  # the copy is the database as it was before
        assert conn.execute("SELECT name FROM account").fetchall() == [("Kept",)]
        assert "city" not in [row[1] for row in conn.execute("PRAGMA table_info(account)")]
    assert run(capsys, "-p", project, "migrate")[0] == 0
    assert len(list(project.glob("crm.db.*.bak"))) == 1  # no change, no copy
    (project / "loom.yaml").write_text(PHASE_2 + "      zip: {type: string}\n")
    run(capsys, "-p", project, "migrate", "--no-backup")
    assert len(list(project.glob("crm.db.*.bak"))) == 1
