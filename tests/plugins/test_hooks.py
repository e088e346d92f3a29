"""Every hook: field types, routes and app configuration, exceptions, the current user, before/after
writes inside the transaction, vetoes and record checks, events after commit; failures named.

Each hookspec has a test named ``test_hook_<name>`` (in any test folder); ``test_every_hookspec_has_a_test`` keeps it so.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar import Request, get
from litestar.params import FromPath
from litestar.testing import TestClient

from loomcrm.engine import hookspecs
from loomcrm.engine.app import Loom
from loomcrm.engine.errors import Problem
from loomcrm.engine.fieldtypes import FieldType, FieldValueError
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token

CRM = """
entities:
  account:
    fields:
      name: {type: string, required: true}
      score: {type: integer}
      iban: {type: iban}
"""


class IbanType(FieldType):
    name = "iban"
    filter_ops = frozenset({"eq", "isnull"})

    def column_type(self, field):
        return sa.String(34)

    def parse(self, field, value):
        text = str(value).replace(" ", "").upper()
        if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}", text):
            raise FieldValueError("iban", "is not an IBAN")
        digits = "".join(str(int(c, 36)) for c in text[4:] + text[:4])
        if int(digits) % 97 != 1:
            raise FieldValueError("iban", "has a wrong check digit")
        return text


class Recorder:
    """A plugin that records every call and can be told to fail."""

    def __init__(self, fail_in: str | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail_in = fail_in

    def _seen(self, hook, entity):
        self.calls.append((hook, entity.name))
        if self.fail_in == hook:
            raise Problem(422, "Refused by plugin", detail=f"{hook} said no")

    @hookimpl
    def loom_field_types(self):
        return [IbanType()]

    @hookimpl
    def loom_before_create(self, ctx, entity, data):
        self._seen("loom_before_create", entity)
        data["score"] = len(data["name"])

    @hookimpl
    def loom_after_create(self, ctx, entity, record):
        self._seen("loom_after_create", entity)
        assert ctx.conn is not None and record["id"]

    @hookimpl
    def loom_before_update(self, ctx, entity, old, changes):
        self._seen("loom_before_update", entity)
        if "name" in changes:
            changes["score"] = len(changes["name"])

    @hookimpl
    def loom_after_update(self, ctx, entity, old, record):
        self._seen("loom_after_update", entity)
        assert record["version"] == old["version"] + 1

    @hookimpl
    def loom_before_delete(self, ctx, entity, record):
        self._seen("loom_before_delete", entity)

    @hookimpl
    def loom_after_delete(self, ctx, entity, record):
        self._seen("loom_after_delete", entity)

    @hookimpl
    def loom_configure_app(self, app_config, manifest):
        @get("/plugin/ping", sync_to_thread=False)
        def ping() -> dict:
            return {"app": manifest.app_name}

        app_config.route_handlers.append(ping)


def build(loom_factory, plugin):
    return loom_factory(CRM, plugins=[plugin])


def names(loom) -> list[str]:
    return [r["name"] for r in loom.records.list(loom.entity("account"), _q(loom), Context())["data"]]


def _q(loom):
    from loomcrm.engine.runtime.query import parse_list_params

    return parse_list_params(loom.entity("account"), [])


def test_hook_loom_field_types(loom_factory):
    loom = build(loom_factory, Recorder())
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "A", "iban": "de89 3704 0044 0532 0130 00"}, Context())
    assert record["iban"] == "DE89370400440532013000"
    with pytest.raises(Problem) as info:
        loom.records.create(entity, {"name": "B", "iban": "DE00370400440532013000"}, Context())
    assert info.value.errors == [{"field": "iban", "code": "iban", "message": "has a wrong check digit"}]


def test_hook_loom_before_create(loom_factory):
    loom = build(loom_factory, Recorder())
    assert loom.records.create(loom.entity("account"), {"name": "Acme"}, Context())["score"] == 4


def test_hook_loom_after_create(loom_factory):
    plugin = Recorder(fail_in="loom_after_create")
    loom = build(loom_factory, plugin)
    with pytest.raises(Problem):
        loom.records.create(loom.entity("account"), {"name": "Rolled back"}, Context())
    assert names(loom) == []  # the insert was rolled back with the failing hook
    assert plugin.calls == [("loom_before_create", "account"), ("loom_after_create", "account")]


def test_hook_loom_before_update(loom_factory):
    loom = build(loom_factory, Recorder())
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "A"}, Context())
    assert loom.records.update(entity, record["id"], {"name": "Longer"}, Context())["score"] == 6


def test_hook_loom_after_update(loom_factory):
    loom = build(loom_factory, Recorder(fail_in="loom_after_update"))
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "Before"}, Context())
    with pytest.raises(Problem):
        loom.records.update(entity, record["id"], {"name": "After"}, Context())
    assert loom.records.get(entity, record["id"], Context())["name"] == "Before"


def test_hook_loom_before_delete(loom_factory):
    loom = build(loom_factory, Recorder(fail_in="loom_before_delete"))
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "Kept"}, Context())
    with pytest.raises(Problem):
        loom.records.delete(entity, record["id"], Context())
    assert names(loom) == ["Kept"]


def test_hook_loom_after_delete(loom_factory):
    plugin = Recorder(fail_in="loom_after_delete")
    loom = build(loom_factory, plugin)
    entity = loom.entity("account")
    record = loom.records.create(entity, {"name": "Kept"}, Context())
    with pytest.raises(Problem):
        loom.records.delete(entity, record["id"], Context())
    assert names(loom) == ["Kept"]
    assert ("loom_after_delete", "account") in plugin.calls


def test_hook_loom_configure_app(loom_factory):
    loom = build(loom_factory, Recorder())
    with TestClient(loom.asgi()) as client:
        assert client.get("/plugin/ping").json() == {"app": "Test CRM"}


def test_a_hook_value_that_breaks_the_field_type_is_rejected(loom_factory):
    class Bad:
        @hookimpl
        def loom_before_create(self, ctx, entity, data):
            data["score"] = "not a number"

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Bad()])
    with pytest.raises(Problem) as info:
        loom.records.create(loom.entity("account"), {"name": "A"}, Context())
    assert info.value.errors[0]["field"] == "score"


def test_a_plugin_can_replace_a_builtin_field_type(loom_factory):
    class ShoutingString(FieldType):
        name = "string"
        options = frozenset({"max_length", "pattern"})  # what Loom's own user entity uses
        filter_ops = frozenset({"eq"})

        def params(self, spec, app):
            return {"max_length": 255}

        def column_type(self, field):
            return sa.String(255)

        def parse(self, field, value):
            return str(value).upper()

    class Plugin:
        @hookimpl
        def loom_field_types(self):
            return [ShoutingString()]

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Plugin()])
    assert loom.records.create(loom.entity("account"), {"name": "quiet"}, Context())["name"] == "QUIET"


def test_hook_loom_contribute_config(loom_factory):
    class Banking:
        """Adds an entity and a field of an existing one; the project overrides a label it contributes."""

        @hookimpl
        def loom_contribute_config(self):
            return {"entities": {
                "payment": {"fields": {"amount": {"type": "money", "required": True},
                                       "account": {"type": "ref", "to": "account"}}},
                "account": {"fields": {"bank": {"type": "string", "label": "Bank"}}},
            }}

    crm = CRM.replace("      iban: {type: iban}\n", "") + "      bank: {type: string, label: Hausbank}\n"
    loom = loom_factory(crm, plugins=[Banking()])
    assert set(loom.manifest.entities) >= {"account", "payment"}
    assert loom.entity("account").fields["bank"].label["en"] == "Hausbank"  # the project's own value wins
    account = loom.records.create(loom.entity("account"), {"name": "A", "bank": "GLS"}, Context())
    payment = loom.records.create(loom.entity("payment"), {"amount": "10", "account": account["id"]}, Context())
    assert payment["amount"] == "10.00"


def test_a_bad_contribution_is_a_config_error_naming_the_plugin():
    from loomcrm.engine.testing import config_errors, project_files

    class Broken:
        @hookimpl
        def loom_contribute_config(self):
            return {"entities": {"payment": {"fields": {"amount": {"type": "monee"}}}}}

    text = config_errors(project_files(CRM.replace("      iban: {type: iban}\n", "")), plugins=[Broken()])
    assert "plugin Broken E120 unknown field type 'monee'" in text


def test_hook_loom_check_config():
    from loomcrm.engine.testing import config_errors, project_files

    class HouseRules:
        @hookimpl
        def loom_check_config(self, manifest):
            return [{"entity": name, "field": "score", "message": f"{name}.score must not be an integer here",
                     "hint": "use a decimal"}
                    for name, entity in manifest.entities.items()
                    if "score" in entity.fields and entity.fields["score"].type == "integer"]

    text = config_errors(project_files(CRM.replace("      iban: {type: iban}\n", "")), plugins=[HouseRules()])
    assert "entities.yaml:6:7 E134 account.score must not be an integer here" in text and "hint: use a decimal" in text


def test_hook_loom_commands(db_url, capsys):
    from loomcrm.engine.cli import main

    acme = Path(__file__).parents[2] / "examples" / "acme"
    assert main(["-p", str(acme), "migrate", "--database", db_url]) == 0
    loom = Loom.from_project(acme, database_url=db_url)
    account = loom.records.create(loom.entity("account"), {"name": "A"}, Context())
    deal = loom.records.create(loom.entity("deal"), {"title": "D", "account": account["id"], "amount": "2000000"},
                               Context())
    loom.records.update(loom.entity("deal"), deal["id"], {"score": 1}, Context(), trusted=True)  # stale score
    loom.close()
    capsys.readouterr()
    assert main(["-p", str(acme), "rescore", "--database", db_url]) == 0
    assert capsys.readouterr().out == "rescored 1 deals\n"
    assert main(["-p", str(acme), "rescore", "--database", db_url]) == 0 and "rescored 0" in capsys.readouterr().out


def test_hook_loom_routes(loom_factory):
    class Plugin:
        @hookimpl
        def loom_routes(self, loom):
            @get("/api/plugin/accounts-named/{name:str}", sync_to_thread=False)
            def named(request: Request, name: FromPath[str]) -> dict:
                from loomcrm.engine.runtime.query import parse_list_params

                query = parse_list_params(loom.entity("account"), [("filter[name]", name)])
                return loom.records.list(loom.entity("account"), query, loom.context(request))

            return [named]

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Plugin()])
    loom.records.create(loom.entity("account"), {"name": "Acme"}, Context())
    with TestClient(loom.asgi()) as client:
        assert client.get("/api/plugin/accounts-named/Acme").status_code == 401  # Loom's sign-in applies
        client.headers["Authorization"] = f"Bearer {api_token(loom)}"
        assert [r["name"] for r in client.get("/api/plugin/accounts-named/Acme").json()["data"]] == ["Acme"]


def test_hook_loom_handle_exception(loom_factory):
    class Conflict(Exception):
        pass

    class Plugin:
        @hookimpl
        def loom_configure_app(self, app_config, manifest):
            @get("/plugin/boom", sync_to_thread=False)
            def boom() -> None:
                raise Conflict("the ledger is closed")

            app_config.route_handlers.append(boom)

        @hookimpl
        def loom_handle_exception(self, exc):
            if isinstance(exc, Conflict):
                return Problem(409, "Ledger closed", detail=str(exc))
            return None

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Plugin()])
    with TestClient(loom.asgi()) as client:
        answer = client.get("/plugin/boom")
    assert answer.status_code == 409 and answer.json()["detail"] == "the ledger is closed"


def test_hook_loom_current_user(loom_factory):
    class TrustedProxy:
        """Single sign-on: the proxy in front of Loom puts the user id in a header."""

        @hookimpl
        def loom_current_user(self, headers, cookies):
            value = headers.get("x-remote-user-id")
            return int(value) if value else None

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[TrustedProxy()])
    from loomcrm.engine.identity import Users

    user = Users(loom).create("sso.user")
    with TestClient(loom.asgi()) as client:
        created = client.post("/api/accounts", json={"name": "Via SSO"}, headers={"X-Remote-User-Id": str(user["id"])})
        assert created.status_code == 201 and created.json()["created_by"] == user["id"]
        assert client.get("/api/accounts", headers={"X-Remote-User-Id": "99999"}).status_code == 401
        assert client.get("/api/accounts").status_code == 401  # no header: Loom's own sign-in, none given


class DealRules:
    """Won deals cannot be deleted; a discount needs a reason; events are collected after commit."""

    def __init__(self):
        self.events: list[tuple[str, str, bool]] = []

    @hookimpl
    def loom_permission_veto(self, ctx, entity, operation, record):
        if operation == "delete" and record.get("score") == 100:
            return "won deals (score 100) cannot be deleted"
        return None

    @hookimpl
    def loom_validate_record(self, ctx, entity, record, old):
        if (record.get("score") or 0) > 50 and not record.get("name", "").startswith("Big"):
            return [{"field": "name", "message": "a score above 50 needs a name starting with 'Big'"}]
        return None

    @hookimpl
    def loom_record_created(self, ctx, entity, record):
        self.events.append(("created", record["name"], ctx.conn is None))

    @hookimpl
    def loom_record_updated(self, ctx, entity, old, record):
        self.events.append(("updated", record["name"], ctx.conn is None))

    @hookimpl
    def loom_record_deleted(self, ctx, entity, record):
        self.events.append(("deleted", record["name"], ctx.conn is None))


def rules_app(loom_factory):
    plugin = DealRules()
    return loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[plugin]), plugin


def test_hook_loom_write(loom_factory):
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def loom_write(self, ctx, entity, operation):
            count = ctx.conn.execute(sa.text("SELECT count(*) FROM account")).scalar_one()
            result = yield
            after = ctx.conn.execute(sa.text("SELECT count(*) FROM account")).scalar_one()
            seen.append((operation, count, after))
            if after > 1:
                raise Problem(409, "One account only", detail="this CRM holds one account")
            return result

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Wrapper()])
    entity = loom.entity("account")
    first = loom.records.create(entity, {"name": "A"}, Context())
    assert first["name"] == "A" and seen == [("create", 0, 1)]
    with pytest.raises(Problem):
        loom.records.create(entity, {"name": "B"}, Context())
    assert names(loom) == ["A"]  # the wrapper's refusal after the insert rolled it back
    loom.records.delete(entity, first["id"], Context())
    assert seen[-1] == ("delete", 1, 0)


def test_hook_loom_permission_veto(loom_factory):
    loom, _ = rules_app(loom_factory)
    entity = loom.entity("account")
    won = loom.records.create(entity, {"name": "Big win", "score": 100}, Context())
    with pytest.raises(Problem) as info:
        loom.records.delete(entity, won["id"], Context())
    assert info.value.status == 403 and info.value.detail == "won deals (score 100) cannot be deleted"
    assert names(loom) == ["Big win"]


def test_hook_loom_validate_record(loom_factory):
    loom, _ = rules_app(loom_factory)
    entity = loom.entity("account")
    with pytest.raises(Problem) as info:
        loom.records.create(entity, {"name": "Small", "score": 60}, Context())
    assert info.value.status == 422
    assert info.value.errors == [{"field": "name", "code": "invalid",
                                  "message": "a score above 50 needs a name starting with 'Big'"}]
    record = loom.records.create(entity, {"name": "Small", "score": 10}, Context())
    with pytest.raises(Problem):  # on update the check sees the whole record: old values plus changes
        loom.records.update(entity, record["id"], {"score": 99}, Context())
    assert loom.records.get(entity, record["id"], Context())["score"] == 10


def test_hook_loom_record_created(loom_factory):
    loom, plugin = rules_app(loom_factory)
    loom.records.create(loom.entity("account"), {"name": "A"}, Context())
    assert plugin.events == [("created", "A", True)]  # after commit: no open transaction


def test_hook_loom_record_updated(loom_factory):
    loom, plugin = rules_app(loom_factory)
    record = loom.records.create(loom.entity("account"), {"name": "A"}, Context())
    loom.records.update(loom.entity("account"), record["id"], {"name": "B"}, Context())
    assert plugin.events[-1] == ("updated", "B", True)


def test_hook_loom_record_deleted(loom_factory):
    loom, plugin = rules_app(loom_factory)
    record = loom.records.create(loom.entity("account"), {"name": "A"}, Context())
    loom.records.delete(loom.entity("account"), record["id"], Context())
    assert plugin.events[-1] == ("deleted", "A", True)


def test_a_crashing_plugin_rolls_the_write_back_and_is_named(loom_factory):
    class Scoring:
        @hookimpl
        def loom_after_create(self, ctx, entity, record):
            raise ZeroDivisionError("division by zero")

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Scoring()])
    with pytest.raises(Problem) as info:
        loom.records.create(loom.entity("account"), {"name": "Half written?"}, Context())
    assert info.value.status == 500
    assert "failed in loom_after_create: ZeroDivisionError: division by zero; nothing was changed" in info.value.detail
    assert "plugin 'unknown'" not in info.value.detail
    assert names(loom) == []


def test_a_failing_event_is_logged_and_the_write_stands(loom_factory, caplog):
    class Notifier:
        @hookimpl
        def loom_record_created(self, ctx, entity, record):
            raise ConnectionError("mail server down")

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[Notifier()])
    loom.records.create(loom.entity("account"), {"name": "Stored"}, Context())
    assert names(loom) == ["Stored"]
    assert "ConnectionError: mail server down" in caplog.text


def test_async_hook_implementations_are_awaited(loom_factory):
    class AsyncPlugin:
        @hookimpl
        async def loom_before_create(self, ctx, entity, data):
            import asyncio

            await asyncio.sleep(0)
            if entity.name == "account":
                data["score"] = 7

    loom = loom_factory(CRM.replace("      iban: {type: iban}\n", ""), plugins=[AsyncPlugin()])
    assert loom.records.create(loom.entity("account"), {"name": "A"}, Context())["score"] == 7
    with TestClient(loom.asgi(sync_to_thread=False)) as client:  # handlers on the event loop too
        client.headers["Authorization"] = f"Bearer {api_token(loom)}"
        assert client.post("/api/accounts", json={"name": "B"}).json()["score"] == 7


def test_every_hookspec_has_a_test_and_is_documented():
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("loom_")]
    tests = "".join(path.read_text() for path in Path(__file__).parents[1].rglob("test_*.py"))  # any test folder
    docs_file = Path(__file__).parents[2] / "docs" / "plugins.md"
    docs = docs_file.read_text() if docs_file.exists() else ""
    for name in specs:
        assert f"def test_hook_{name}(" in tests, f"hook {name} has no test_hook_{name}"
        assert name in docs, f"hook {name} is not documented in docs/plugins.md"
