"""The ``loom`` command: exit codes 0 ok / 1 user error / 2 usage, and what each command prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loomcrm.engine.cli import main
from loomcrm.engine.manifest import SYSTEM_TABLES

ROOT = Path(__file__).resolve().parents[2]
SALES = ROOT / "examples" / "sales"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "entities").mkdir()
    (tmp_path / "loom.yaml").write_text("app: {name: Tiny}\ninclude: [entities/*.yaml]\n"
                                        "database: {url: sqlite:///tiny.db}\n")
    (tmp_path / "entities" / "lead.yaml").write_text(
        "entities:\n  lead:\n    fields:\n      name: {type: string, required: true}\n")
    return tmp_path


def tables(path: Path) -> set[str]:
    import sqlite3

    if not path.exists():
        return set()
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT LIKE 'sqlite_%'")}


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_prints_a_summary(capsys, project):
    code, out, _ = run(capsys, "-p", project, "validate")
    assert code == 0 and "ok: Tiny: 1 entity, 1 field" in out and "/api/leads" in out


def test_validate_warns_that_a_project_without_roles_restricts_nobody(capsys, project):
    _, _, err = run(capsys, "-p", project, "validate")
    assert "warning: no 'roles:' defined, so every signed-in user may read and change everything" in err
    _, out, err = run(capsys, "-p", SALES, "validate")
    assert "warning" not in err and "roles: admin, sales_rep" in out


def test_config_errors_exit_1_with_file_and_line(capsys, project):
    (project / "entities" / "lead.yaml").write_text(
        "entities:\n  lead:\n    fields:\n      name: {type: strng}\n")
    code, _, err = run(capsys, "-p", project, "validate")
    assert code == 1
    assert "entities/lead.yaml:4:" in err and "E120 unknown field type 'strng'" in err
    assert "did you mean 'string'?" in err and "1 error in the config." in err


def test_missing_project_exits_1(capsys, tmp_path):
    code, _, err = run(capsys, "-p", tmp_path / "nowhere", "validate")
    assert code == 1 and "project file not found" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_plan_then_migrate_then_plan_again(capsys, project):
    code, out, _ = run(capsys, "-p", project, "plan")
    assert code == 0 and "+ create table lead" in out
    code, out, _ = run(capsys, "-p", project, "plan", "--sql")
    assert "CREATE TABLE lead" in out
    assert tables(project / "tiny.db") == set()  # plan never changes the database
    code, out, _ = run(capsys, "-p", project, "migrate")
    assert code == 0 and "applied." in out and tables(project / "tiny.db") == {
        "lead", "loom_migrations", *SYSTEM_TABLES, "user", "team", "user__teams"}
    code, out, _ = run(capsys, "-p", project, "plan")
    assert code == 0 and "The database is up to date." in out


def test_refused_plan_exits_1_and_migrate_changes_nothing(capsys, project):
    run(capsys, "-p", project, "migrate")
    (project / "entities" / "lead.yaml").write_text(
        "entities:\n  lead:\n    fields:\n      name: {type: json, required: true}\n")
    code, out, _ = run(capsys, "-p", project, "plan")
    assert code == 1 and "refused: lead.name changes type string -> json, which Loom cannot convert" in out
    code, _, err = run(capsys, "-p", project, "migrate")
    assert code == 1 and "Nothing was changed." in err


def test_database_option_and_environment_override(capsys, project, tmp_path, monkeypatch):
    other = tmp_path / "other.db"
    run(capsys, "-p", project, "migrate", "--database", f"sqlite:///{other}")
    assert other.exists() and not (project / "tiny.db").exists()
    env_db = tmp_path / "env.db"
    monkeypatch.setenv("LOOM_DATABASE_URL", f"sqlite:///{env_db}")
    run(capsys, "-p", project, "migrate")
    assert env_db.exists() and not (project / "tiny.db").exists()


def test_unreachable_database_is_a_clear_error(capsys, project):
    code, _, err = run(capsys, "-p", project, "plan", "--database", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 1 and "database error" in err and "hint:" in err


def test_unsupported_database_url_is_a_clear_error(capsys, project):
    code, _, err = run(capsys, "-p", project, "plan", "--database", "mysql://x/y")
    assert code == 1 and "loom: " in err and "sqlite:///" in err and "Traceback" not in err


def test_plan_does_not_create_a_missing_sqlite_file(capsys, project):
    code, out, _ = run(capsys, "-p", project, "plan")
    assert code == 0 and "create table lead" in out and not (project / "tiny.db").exists()


def test_relative_database_option_is_relative_to_the_working_directory(capsys, project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(capsys, "-p", project, "migrate", "--database", "sqlite:///here.db")
    assert (tmp_path / "here.db").exists()


def test_seed_loads_the_example_once(capsys, tmp_path):
    db = f"sqlite:///{tmp_path / 'sales.db'}"
    assert run(capsys, "-p", SALES, "migrate", "--database", db)[0] == 0
    code, out, _ = run(capsys, "-p", SALES, "seed", "--database", db)
    assert code == 0 and out.startswith("seeded ")
    assert int(out.split()[1]) >= 1000
    code, out, _ = run(capsys, "-p", SALES, "seed", "--database", db)
    assert code == 0 and "already holds records" in out


def test_schema_and_openapi_print_json(capsys, project):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "Loom config file"
    code, out, _ = run(capsys, "-p", project, "openapi")
    assert code == 0 and "/api/leads" in json.loads(out)["paths"]


def test_console_script_is_installed():
    result = subprocess.run([Path(sys.executable).parent / "loom", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "migrate" in result.stdout and "serve" in result.stdout


def test_plugins_beside_loom_yaml_load_from_the_command_line(capsys, project):
    (project / "loom.yaml").write_text((project / "loom.yaml").read_text() + "plugins: [local_types]\n")
    (project / "local_types.py").write_text(
        "import sqlalchemy as sa\n"
        "from loomcrm.engine.fieldtypes import FieldType\n"
        "from loomcrm.engine.hookspecs import hookimpl\n\n"
        "class Sku(FieldType):\n    name = 'sku'\n\n    def column_type(self, field):\n"
        "        return sa.String(12)\n\n"
        "@hookimpl\ndef loom_field_types():\n    return [Sku()]\n")
    (project / "entities" / "lead.yaml").write_text(
        "entities:\n  lead:\n    fields:\n      name: {type: string}\n      sku: {type: sku}\n")
    code, out, err = run(capsys, "-p", project, "validate")
    assert code == 0, err
    assert "1 entity, 2 fields" in out


def test_purge_audit_uses_the_configured_retention(capsys, project):
    run(capsys, "-p", project, "migrate")
    code, out, _ = run(capsys, "-p", project, "purge-audit")
    assert code == 0 and "no retention configured" in out
    (project / "loom.yaml").write_text((project / "loom.yaml").read_text() + "audit: {retain_days: 30}\n")
    code, out, _ = run(capsys, "-p", project, "purge-audit")
    assert code == 0 and out.strip() == "deleted 0 audit rows"


def test_explain_config_names_the_file_and_line_of_every_value(capsys):
    code, out, _ = run(capsys, "-p", ROOT / "examples" / "acme", "explain-config")
    assert code == 0
    assert any(line.startswith("  name: Acme CRM") and line.endswith("# loom.yaml:7:9") for line in out.splitlines())
    assert "# ../sales/entities/account.yaml:" in out
