"""Roles compiled from YAML: grants per entity, field levels, inheritance and the union rule."""

from __future__ import annotations

import pytest

from loomcrm.engine.cli import main
from loomcrm.engine.policy import combine
from loomcrm.engine.testing import compile_files, config_errors

ENTITIES = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      revenue: {type: money}
      phone: {type: phone}
      code: {type: string, read_only: true}
"""


def project(roles: str) -> dict[str, str]:
    return {"loom.yaml": "app: {name: R}\ninclude: [entities.yaml, roles.yaml]\n",
            "entities.yaml": ENTITIES, "roles.yaml": roles}


ROLES = """
roles:
  viewer:
    entities:
      account: {read: all}
    fields:
      account.revenue: hidden
  rep:
    inherits: [viewer]
    entities:
      account: {read: own, create: true, update: own}
    fields:
      account.phone: read
  finance:
    entities:
      account: {read: team, export: team}
    fields:
      account.phone: hidden
"""


@pytest.fixture
def roles():
    return compile_files(project(ROLES)).roles


def test_everything_not_granted_is_refused(roles):
    viewer = roles["viewer"]
    assert viewer.grant("account").scope("update") == "none" and viewer.grant("account").create is False
    assert viewer.grant("user").scope("read") == "none"
    assert viewer.level("user", "username") == "hidden"


def test_field_levels_default_to_the_entity_access_and_can_be_narrowed(roles):
    viewer, rep = roles["viewer"], roles["rep"]
    assert viewer.level("account", "name") == "read" and viewer.level("account", "revenue") == "hidden"
    assert rep.level("account", "name") == "write" and rep.level("account", "phone") == "read"
    assert rep.level("account", "code") == "read"  # read-only fields are never writable
    assert rep.level("account", "id") == "read"


def test_inheritance_is_a_union_of_grants(roles):
    rep = roles["rep"].grant("account")
    assert (rep.read, rep.create, rep.update) == ("all", True, "own")  # read: all comes from viewer


def test_several_roles_combine_to_the_widest_grant_and_most_open_level(roles):
    both = combine([roles["viewer"], roles["finance"]])
    grant = both.grant("account")
    assert (grant.read, grant.export, grant.update) == ("all", "team", "none")
    assert both.level("account", "phone") == "read"  # hidden for finance, read for viewer
    assert both.level("account", "revenue") == "read"  # hidden for viewer, read for finance


def test_users_get_a_roles_field_listing_the_roles():
    manifest = compile_files(project(ROLES))
    options = [o["value"] for o in manifest.entities["user"].fields["roles"].params["options"]]
    assert options == ["viewer", "rep", "finance"]
    assert "roles" not in compile_files(project("roles: {}\n")).entities["user"].fields


def test_role_mistakes_are_config_errors_with_places():
    errors = config_errors(project("""
roles:
  rep:
    inherits: [viewr]
    entities:
      acount: {read: all}
    fields:
      account.revenu: hidden
  a:
    inherits: [b]
  b:
    inherits: [a]
"""))
    assert "roles.yaml:4:16 E124 role 'rep' inherits 'viewr', which is not a role" in errors
    assert "roles.yaml:6:7 E124 role 'rep' grants access to 'acount', which is not an entity" in errors
    assert "hint: did you mean 'account'?" in errors
    assert "E125 role 'rep' sets the level of 'account.revenu', which is not a field" in errors
    assert "hint: did you mean 'account.revenue'?" in errors
    assert "E129 roles inherit in a circle: a -> b -> a" in errors


def test_an_unknown_scope_is_refused_with_the_choices():
    errors = config_errors(project("roles:\n  rep:\n    entities:\n      account: {read: mine}\n"))
    assert errors.startswith("roles.yaml:4:23 E112 'roles.rep.entities.account.read' must be one of none, own, "
                             "team, all (got 'mine')")


def test_access_command_prints_the_matrix(tmp_path, capsys):
    for name, text in project(ROLES).items():
        (tmp_path / name).write_text(text)
    assert main(["-p", str(tmp_path), "access", "rep"]) == 0
    out = capsys.readouterr().out
    assert "account             all     all     own     none    none" in out
    assert "account: read only: code, phone" in out
    assert main(["-p", str(tmp_path), "access", "reps"]) == 1
    assert "did you mean 'rep'?" in capsys.readouterr().err


def test_the_sales_example_roles_say_what_each_department_sees():
    from pathlib import Path

    from loomcrm.engine.compiler import compile_project

    manifest, _ = compile_project(Path(__file__).parents[2] / "examples" / "sales")
    roles = manifest.roles
    assert set(roles) == {"admin", "sales_rep", "sales_manager", "marketing", "service_agent", "finance"}
    finance = roles["finance"]
    assert finance.level("account", "annual_revenue") == "read"
    assert finance.level("contact", "phone") == finance.level("contact", "mobile") == "hidden"
    assert roles["marketing"].level("account", "annual_revenue") == "hidden"
    manager = roles["sales_manager"].grant("activity")
    assert (manager.read, manager.update) == ("team", "team")
    assert roles["sales_rep"].grant("activity").read == "own"
