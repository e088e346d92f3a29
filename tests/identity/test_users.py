"""Loom's own user and team entities, passwords, and the ``loom user`` / ``loom team`` commands."""

from __future__ import annotations

import io
import json

import pytest
from litestar.testing import TestClient

from loomcrm.engine import identity
from loomcrm.engine.cli import main
from loomcrm.engine.errors import Problem
from loomcrm.engine.identity import PasswordRejected, Users
from loomcrm.engine.testing import api_token, config_errors, project_files

CRM = """
entities:
  user:
    label: {en: Colleague, zh: 同事}
    fields:
      region: {type: enum, options: [north, south]}
  account:
    fields:
      name: {type: string, required: true}
"""
PASSWORD = "correct horse battery"


@pytest.fixture
def users(loom_factory):
    return Users(loom_factory(CRM))


def test_every_project_has_users_and_teams_it_can_extend(users):
    user = users.loom.entity("user")
    assert user.label["en"] == "Colleague" and user.plural == "users"
    assert {"username", "name", "email", "active", "teams", "region"} <= set(user.fields)
    assert users.loom.entity("team").relations["members"].entity == "user"


def test_loom_fields_of_user_cannot_be_redefined_nor_its_name_changed():
    errors = config_errors(project_files("entities:\n  user:\n    plural: people\n    fields:\n"
                                         "      email: {type: string}\n"))
    assert "E123 field 'user.email' is Loom's own and cannot be redefined" in errors
    assert "E126 'plural' of Loom's own entity 'user' cannot be changed" in errors


def test_passwords_are_argon2_hashes_kept_out_of_every_api(users):
    user = users.create("zhang", PASSWORD, name="张伟", region="north")
    with users.loom.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM loom_credential").scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with TestClient(users.loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(users.loom, 'zhang')}"
        body = client.get(f"/api/users/{user['id']}").text
        document = client.get("/schema/openapi.json").text
    assert "password" not in body and "argon2" not in body
    schema = json.loads(document)["components"]["schemas"]
    assert not any("password" in name for name in schema["User"]["properties"])
    assert "password_hash" not in document and "loom_credential" not in document


def test_authenticate_accepts_only_the_right_password_of_an_active_user(users):
    users.create("zhang", PASSWORD)
    assert users.authenticate("zhang", PASSWORD)["username"] == "zhang"
    assert users.authenticate("zhang", PASSWORD + "!") is None
    assert users.authenticate("nobody", PASSWORD) is None
    users.set_active("zhang", False)
    assert users.authenticate("zhang", PASSWORD) is None
    users.set_active("zhang", True)
    users.set_password("zhang", "another long secret")
    assert users.authenticate("zhang", PASSWORD) is None
    assert users.authenticate("zhang", "another long secret") is not None


def test_unknown_usernames_cost_a_password_verification_too(users, monkeypatch):
    calls = []
    real = identity.verify_password
    monkeypatch.setattr(identity, "verify_password", lambda h, p: calls.append(h) or real(h, p))
    users.authenticate("nobody", PASSWORD)
    assert calls == [None]  # verify_password(None, ...) checks against a dummy hash
    assert real(None, PASSWORD) is False


@pytest.mark.parametrize("password, reason", [("short", "at least 10"), ("zhang-is-great", "username")])
def test_weak_passwords_are_rejected_before_anything_is_written(users, password, reason):
    with pytest.raises(PasswordRejected, match=reason):
        users.create("zhang", password)
    assert users.list() == []


def test_team_membership_and_manager(users):
    users.create("li", PASSWORD)
    users.create("wang", PASSWORD)
    team = users.create_team("east", manager="li")
    users.add_member("east", "wang")
    users.add_member("east", "wang")  # adding twice keeps one membership
    assert users.find("wang")["teams"] == [team["id"]]
    with TestClient(users.loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(users.loom, 'li')}"
        members = client.get(f"/api/teams/{team['id']}/members").json()["data"]
    assert [m["username"] for m in members] == ["wang"]
    users.remove_member("east", "wang")
    assert users.find("wang")["teams"] == []
    with pytest.raises(Problem):
        users.add_member("west", "wang")


def test_user_changes_are_in_the_audit_trail_without_passwords(users):
    user = users.create("zhang", PASSWORD)
    users.set_active("zhang", False)
    history = users.loom.records.history(users.loom.entity("user"), user["id"], users._ctx(), limit=10, before=None)
    assert [e["action"] for e in history["data"]] == ["update", "create"]
    assert history["data"][0]["channel"] == "cli" and "password" not in str(history)


def test_user_and_team_commands(tmp_path, capsys, monkeypatch):
    (tmp_path / "loom.yaml").write_text("app: {name: T}\ndatabase: {url: sqlite:///t.db}\n")
    project = str(tmp_path)
    assert main(["-p", project, "migrate"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["-p", project, "user", "create", "zhang", "--name", "张伟", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["-p", project, "user", "create", "li", "--password-stdin"]) == 1
    assert main(["-p", project, "team", "create", "east", "--manager", "zhang"]) == 0
    assert main(["-p", project, "team", "add", "east", "zhang"]) == 0
    assert main(["-p", project, "team", "add", "west", "zhang"]) == 1
    assert main(["-p", project, "user", "disable", "zhang"]) == 0
    assert main(["-p", project, "user", "passwd"]) == 2
    monkeypatch.setattr("getpass.getpass", lambda prompt="": (_ for _ in ()).throw(EOFError()))
    assert main(["-p", project, "user", "passwd", "zhang"]) == 1  # no terminal, no --password-stdin
    capsys.readouterr()
    assert main(["-p", project, "user", "list"]) == 0
    out, _ = capsys.readouterr()
    assert "zhang" in out and "张伟" in out and "(disabled)" in out and "li" not in out


def test_reassign_moves_ownership_in_one_audited_operation(users):
    from loomcrm.engine.runtime.context import Context

    leaver, successor = users.create("leaver", PASSWORD), users.create("successor", PASSWORD)
    account = users.loom.entity("account")
    mine = [users.loom.records.create(account, {"name": f"A{i}"}, Context(actor=leaver["id"])) for i in range(3)]
    other = users.loom.records.create(account, {"name": "theirs"}, Context(actor=successor["id"]))
    counts = users.loom.records.reassign(leaver["id"], successor["id"], Context(channel="cli"), [account])
    assert counts == {"account": 3}
    for record in mine:
        now = users.loom.records.get(account, record["id"], Context())
        assert (now["owner"], now["version"]) == (successor["id"], 2)
        entry = users.loom.records.history(account, record["id"], Context(), limit=1, before=None)["data"][0]
        assert (entry["action"], entry["changes"]) == ("reassign", {"owner": [leaver["id"], successor["id"]]})
    assert users.loom.records.get(account, other["id"], Context())["version"] == 1


def test_reassign_command(tmp_path, capsys, monkeypatch):
    (tmp_path / "loom.yaml").write_text("app: {name: T}\ndatabase: {url: sqlite:///t.db}\n")
    project = str(tmp_path)
    main(["-p", project, "migrate"])
    for name in ("leaver", "successor"):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        assert main(["-p", project, "user", "create", name, "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["-p", project, "reassign", "--from", "leaver", "--to", "successor"]) == 0
    assert capsys.readouterr().out.strip() == "reassigned 0 records from leaver to successor"
    assert main(["-p", project, "reassign", "--from", "leaver", "--to", "nobody"]) == 1
    assert main(["-p", project, "reassign", "--from", "leaver", "--to", "successor", "--entity", "acount"]) == 1
    main(["-p", project, "user", "disable", "successor"])
    assert main(["-p", project, "reassign", "--from", "leaver", "--to", "successor"]) == 1
    assert "disabled" in capsys.readouterr().err
