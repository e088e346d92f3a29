"""examples/sales: the sales manager's process (process.yaml) works end to end through the REST API, on
SQLite and PostgreSQL: lead qualification, the opportunity pipeline with its follow-up tasks, the
account rollups, the service cases' SLA escalation and the close-date reminder.

The example is migrated once per database; each test starts from no records but the staff and creates
only what it needs (seeding the demo data would take seconds)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import migrate
from loomcrm.engine.errors import Problem
from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context, utcnow, zone
from loomcrm.engine.runtime.query import parse_list_params
from loomcrm.engine.runtime.schedules import run_schedules
from loomcrm.engine.testing import api_token

SALES = Path(__file__).resolve().parents[2] / "examples" / "sales"
#: username -> role; everyone works the east region, the manager manages the east team (the rep)
STAFF = {"zhang.rep": "sales_rep", "li.manager": "sales_manager", "chen.service": "service_agent",
         "wang.finance": "finance", "wu.marketing": "marketing"}


class Caller:
    """The API, signed in as one user."""

    def __init__(self, sales: Sales, username: str):
        self.sales, self.headers = sales, {"Authorization": f"Bearer {api_token(sales.loom, username)}"}

    def get(self, path: str, **kwargs):
        return self.sales.client.get(path, headers=self.headers, **kwargs)

    def post(self, path: str, json: dict | None = None):
        return self.sales.client.post(path, json=json, headers=self.headers)

    def patch(self, path: str, json: dict):
        return self.sales.client.patch(path, json=json, headers=self.headers)

    def fire(self, plural: str, record: dict, transition: str, **fields):
        return self.post(f"/api/{plural}/{record['id']}/transitions/{transition}",
                         {"fields": fields} if fields else None)


@dataclass
class Sales:
    """The example on its own database with its staff (``STAFF``): ``sales[username]`` calls the API as
    them; the other methods are Loom's own code (unrestricted)."""

    loom: Loom
    ids: dict[str, int]
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _client: TestClient | None = None

    @property
    def client(self) -> TestClient:
        if self._client is None:  # built on first use: tests of scheduled rules need no web app
            self._client = self.exits.enter_context(TestClient(self.loom.asgi()))
        return self._client

    def __getitem__(self, username: str) -> Caller:
        return Caller(self, username)

    def create(self, entity: str, data: dict, username: str = "zhang.rep", channel: str = "python") -> dict:
        """A record created for ``username`` (owned by them)."""
        return self.loom.records.create(self.loom.entity(entity), data,
                                        Context(actor=self.ids[username], channel=channel))

    def get(self, entity: str, record_id: int) -> dict:
        return self.loom.records.get(self.loom.entity(entity), record_id, Context())

    def all(self, entity: str) -> list[dict]:
        query = parse_list_params(self.loom.entity(entity), [("sort", "id"), ("limit", "500")])
        return self.loom.records.list(self.loom.entity(entity), query, Context())["data"]

    def advance(self, opportunity: dict, *transitions: str, username: str = "zhang.rep") -> dict:
        """Move ``opportunity`` through ``transitions`` as ``username``."""
        entity, ctx = self.loom.entity("opportunity"), Context(actor=self.ids[username])
        for name in transitions:
            opportunity = self.loom.records.transitions.fire(entity, opportunity["id"], name, ctx)
        return opportunity

    def forget_records(self) -> None:
        """Delete every record but the staff, with the audit trail, outbox and schedule marks."""
        with self.loom.engine.begin() as conn:
            for table in reversed(self.loom.metadata.sorted_tables):  # children before their parents
                if table.name not in STAFF_TABLES:
                    conn.execute(table.delete())


#: Tables holding the staff, their teams and API tokens: kept from test to test.
STAFF_TABLES = {"user", "team", "user__teams", "loom_credential", "loom_session", "loom_token", "loom_migrations"}


def shared_conftest(config: pytest.Config):
    """tests/conftest.py as pytest loaded it (``import conftest`` may find tests/api's instead)."""
    module = config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))
    assert module is not None, "tests/conftest.py is not loaded"
    return module


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def example(request, tmp_path_factory) -> Iterator[Sales]:
    """The example migrated, with its staff, once per database for the whole module (migrating and
    building the web app for each test would take most of the time). The databases are conftest's
    ``db_url`` ones: PostgreSQL is skipped when unreachable, unless LOOM_REQUIRE_POSTGRES=1."""
    conftest = shared_conftest(request.config)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sales') / 'loom.db'}"
    else:
        conftest.require_postgres()
        url = conftest._create_pg_database()
    try:
        migrate(SALES, database_url=url)
        loom = Loom.from_project(SALES, database_url=url)
        users = Users(loom)
        ids = {name: users.create(name, None, roles=[role], region="east")["id"] for name, role in STAFF.items()}
        users.create_team("east", manager="li.manager")
        users.add_member("east", "zhang.rep")
        world = Sales(loom, ids)
        with world.exits:
            yield world
        loom.close()
    finally:
        if request.param == "postgresql":
            conftest._drop_pg_database(url)


@pytest.fixture
def sales(example: Sales) -> Sales:
    """The example with no records but its staff."""
    example.forget_records()
    return example


def in_days(days: int) -> str:
    """A date ``days`` from today in the app's time zone (the close-date rule's ``today``)."""
    return (dt.datetime.now(zone("Asia/Shanghai")).date() + dt.timedelta(days=days)).isoformat()


def east_account(sales: Sales, name: str = "Minghui Trade Co.") -> dict:
    return sales.create("account", {"name": name, "region": "east"})


def opportunity(sales: Sales, account: dict, name: str = "Fleet renewal", **data) -> dict:
    return sales.create("opportunity", {"name": name, "account": account["id"], **data})


def activities(sales: Sales, prefix: str) -> list[dict]:
    return [a for a in sales.all("activity") if a["subject"].startswith(prefix)]


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- lead qualification ---------------------------------------------------------------------------------
def test_qualifying_a_lead_without_email_or_phone_is_refused_with_the_configs_message(sales):
    rep = sales["zhang.rep"]
    lead = rep.post("/api/leads", {"last_name": "Wang", "company": "Minghui Trade Co.", "region": "east"})
    assert lead.status_code == 201, lead.text
    lead = lead.json()
    assert lead["status"] == "new"
    refused = rep.fire("leads", lead, "qualify")
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [{"field": "", "code": "guard",
                                         "message": "Add an email or a phone number first."}]
    with pytest.raises(Problem) as info:  # the message in the reader's language
        sales.loom.records.transitions.fire(sales.loom.entity("lead"), lead["id"], "qualify",
                                            Context(actor=sales.ids["zhang.rep"], locale="zh"))
    assert info.value.errors[0]["message"] == "请先填写邮箱或电话。"
    assert rep.get(f"/api/leads/{lead['id']}").json()["status"] == "new"
    assert sales.all("account") == []


def test_qualifying_a_lead_with_a_phone_creates_an_account_owned_by_whoever_qualified_it(sales):
    rep, manager = sales["zhang.rep"], sales["li.manager"]
    lead = rep.post("/api/leads", {"last_name": "Wang", "company": "Minghui Trade Co.", "region": "east",
                                   "phone": "+86 21 6000 1234"}).json()
    assert rep.fire("leads", lead, "start_working").json()["status"] == "working"
    qualified = manager.fire("leads", lead, "qualify")  # the manager qualifies the rep's lead
    assert qualified.status_code == 200, qualified.text
    assert qualified.json()["status"] == "qualified"
    [account] = sales.all("account")
    assert (account["name"], account["region"], account["phone"], account["type"]) == \
        ("Minghui Trade Co.", "east", "+862160001234", "prospect")
    assert account["owner"] == sales.ids["li.manager"] != lead["owner"]
    assert rep.fire("leads", lead, "disqualify", disqualify_reason="x").status_code == 409  # qualified is terminal


def test_disqualifying_a_lead_needs_a_reason(sales):
    rep = sales["zhang.rep"]
    lead = rep.post("/api/leads", {"last_name": "Brown", "email": "brown@example.com"}).json()
    refused = rep.fire("leads", lead, "disqualify")
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "disqualify_reason", "code": "required_in_state",
                                         "message": "is required in state 'disqualified'"}]
    done = rep.fire("leads", lead, "disqualify", disqualify_reason="No budget this year")
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["disqualify_reason"]) == ("disqualified", "No budget this year")


# --- the opportunity pipeline ---------------------------------------------------------------------------------
def test_each_pipeline_transition_sets_the_probability_and_recomputes_expected_revenue(sales):
    rep = sales["zhang.rep"]
    account = east_account(sales)
    created = rep.post("/api/opportunities", {"name": "Fleet renewal", "account": account["id"],
                                              "amount": "200000.00", "close_date": in_days(30)})
    assert created.status_code == 201, created.text
    deal = created.json()
    assert (deal["stage"], deal["probability"], Decimal(deal["expected_revenue"])) == ("prospecting", 10, 20000)
    for transition, stage, probability in [("qualify", "qualification", 20), ("propose", "proposal", 50),
                                           ("negotiate", "negotiation", 75), ("win", "won", 100)]:
        moved = rep.fire("opportunities", deal, transition)
        assert moved.status_code == 200, (transition, moved.text)
        deal = moved.json()
        assert (deal["stage"], deal["probability"]) == (stage, probability)
        assert Decimal(deal["expected_revenue"]) == Decimal(200000 * probability) / 100
    other = rep.post("/api/opportunities", {"name": "Spare parts", "account": account["id"],
                                            "amount": "10000.00"}).json()
    assert rep.fire("opportunities", other, "lose").json()["errors"][0]["code"] == "required_in_state"
    lost = rep.fire("opportunities", other, "lose", lost_reason="Lost on price").json()
    assert (lost["stage"], lost["probability"], Decimal(lost["expected_revenue"])) == ("lost", 0, 0)


def test_a_proposal_needs_an_amount_and_a_close_date(sales):
    rep = sales["zhang.rep"]
    deal = sales.advance(opportunity(sales, east_account(sales)), "qualify")
    refused = rep.fire("opportunities", deal, "propose")
    assert refused.status_code == 422
    assert {(e["field"], e["code"]) for e in refused.json()["errors"]} == \
        {("amount", "required_in_state"), ("close_date", "required_in_state")}
    assert sales.get("opportunity", deal["id"])["stage"] == "qualification"
    proposed = rep.fire("opportunities", deal, "propose", amount="80000.00", close_date=in_days(20))
    assert proposed.status_code == 200, proposed.text
    assert (proposed.json()["stage"], proposed.json()["amount"]) == ("proposal", "80000.00")


def test_only_opportunities_with_an_amount_are_negotiated(sales):
    rep = sales["zhang.rep"]
    deal = sales.advance(opportunity(sales, east_account(sales), amount="0.00", close_date=in_days(20)),
                         "qualify", "propose")
    refused = rep.fire("opportunities", deal, "negotiate")
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["message"] == "Only opportunities with an amount are negotiated."


def test_the_amount_is_read_only_in_negotiation(sales):
    rep, manager = sales["zhang.rep"], sales["li.manager"]
    deal = sales.advance(opportunity(sales, east_account(sales), amount="50000.00", close_date=in_days(20)),
                         "qualify", "propose", "negotiate")
    refused = rep.patch(f"/api/opportunities/{deal['id']}", {"amount": "45000.00"})
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "amount", "code": "read_only_in_state",
                                         "message": "cannot be changed while stage is 'negotiation'"}]
    assert rep.patch(f"/api/opportunities/{deal['id']}", {"name": "Fleet renewal 2027"}).status_code == 200
    assert manager.fire("opportunities", deal, "reopen_proposal").status_code == 200
    changed = rep.patch(f"/api/opportunities/{deal['id']}", {"amount": "45000.00"})
    assert changed.status_code == 200 and changed.json()["amount"] == "45000.00"


def test_only_a_sales_manager_may_send_a_negotiation_back_to_proposal(sales):
    rep, manager = sales["zhang.rep"], sales["li.manager"]
    deal = sales.advance(opportunity(sales, east_account(sales), amount="50000.00", close_date=in_days(20)),
                         "qualify", "propose", "negotiate")
    offered = {t["name"]: t for t in rep.get(f"/api/opportunities/{deal['id']}/transitions").json()["data"]}
    assert offered["reopen_proposal"]["allowed"] is False and offered["win"]["allowed"] is True
    refused = rep.fire("opportunities", deal, "reopen_proposal")
    assert refused.status_code == 403
    assert "sales_manager, admin" in refused.json()["detail"]
    reopened = manager.fire("opportunities", deal, "reopen_proposal")
    assert reopened.status_code == 200, reopened.text
    assert (reopened.json()["stage"], reopened.json()["probability"]) == ("proposal", 50)


def test_the_stage_cannot_be_patched_directly(sales):
    rep = sales["zhang.rep"]
    deal = opportunity(sales, east_account(sales), amount="50000.00")
    refused = rep.patch(f"/api/opportunities/{deal['id']}", {"stage": "won"})
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert (error["field"], error["code"]) == ("stage", "workflow")
    assert "qualify (to qualification)" in error["message"] and "lose (to lost)" in error["message"]
    assert rep.post("/api/opportunities", {"name": "Skip ahead", "account": deal["account"],
                                           "stage": "won"}).status_code == 422
    assert sales.get("opportunity", deal["id"])["stage"] == "prospecting"


def test_winning_makes_the_account_a_customer(sales):
    account = east_account(sales)
    assert account["type"] == "prospect"
    won = sales["zhang.rep"].fire("opportunities", sales.advance(
        opportunity(sales, account, amount="50000.00", close_date=in_days(20)), "qualify", "propose"), "win")
    assert won.status_code == 200, won.text
    assert sales.get("account", account["id"])["type"] == "customer"


def test_every_stage_change_but_won_or_lost_creates_a_follow_up_task_for_the_owner(sales):
    account = east_account(sales)
    deal = opportunity(sales, account, amount="50000.00", close_date=in_days(20))
    assert activities(sales, "Follow up") == []  # creating one is not a move
    before = utcnow()
    deal = sales.advance(deal, "qualify", "propose", "negotiate")
    deal = sales.advance(deal, "reopen_proposal", username="li.manager")  # still the rep's task
    after = utcnow()
    tasks = activities(sales, "Follow up")
    assert len(tasks) == 4
    for task in tasks:
        assert (task["subject"], task["kind"], task["account"], task["owner"], task["done"]) == \
            ("Follow up: Fleet renewal", "task", account["id"], sales.ids["zhang.rep"], False)
        assert before + dt.timedelta(hours=72) <= parse_time(task["due_at"]) <= after + dt.timedelta(hours=72)
    sales.advance(deal, "win")
    lost = sales.advance(opportunity(sales, account, name="Spare parts"), "qualify")
    sales.loom.records.transitions.fire(sales.loom.entity("opportunity"), lost["id"], "lose",
                                        Context(actor=sales.ids["zhang.rep"]), data={"lost_reason": "Price"})
    assert [t["subject"] for t in activities(sales, "Follow up")] == \
        ["Follow up: Fleet renewal"] * 4 + ["Follow up: Spare parts"]  # won and lost add none


# --- account rollups -----------------------------------------------------------------------------------------
def test_the_accounts_rollups_follow_its_opportunities(sales):
    account = east_account(sales)
    assert (Decimal(account["won_amount"]), account["open_opportunities"]) == (0, 0)
    big = opportunity(sales, account, "Big", amount="100000.00", close_date=in_days(20))
    small = opportunity(sales, account, "Small", amount="30000.00")
    opportunity(sales, account, "Other", amount="5000.00")
    opportunity(sales, east_account(sales, "Someone else"), "Elsewhere", amount="7000.00")
    counted = sales.get("account", account["id"])
    assert (Decimal(counted["won_amount"]), counted["open_opportunities"]) == (0, 3)
    assert counted["version"] == account["version"]  # a rollup is not an edit of the account

    sales.advance(big, "qualify", "propose", "win")
    won = sales.get("account", account["id"])
    assert (Decimal(won["won_amount"]), won["open_opportunities"], won["type"]) == (100000, 2, "customer")

    lost = sales["zhang.rep"].fire("opportunities", small, "lose", lost_reason="Lost on price")
    assert lost.status_code == 200, lost.text
    after_loss = sales.get("account", account["id"])
    assert (Decimal(after_loss["won_amount"]), after_loss["open_opportunities"]) == (100000, 1)
    assert after_loss["version"] == won["version"]

    assert sales["zhang.rep"].patch(f"/api/opportunities/{big['id']}", {"amount": "120000.00"}).status_code == 200
    assert Decimal(sales.get("account", account["id"])["won_amount"]) == 120000
    refused = sales["zhang.rep"].patch(f"/api/accounts/{account['id']}", {"won_amount": "1.00"})
    assert refused.status_code == 403 and refused.json()["errors"][0]["field"] == "won_amount"
    with pytest.raises(Problem) as info:  # Loom sets it, not even Loom's own code
        sales.loom.records.update(sales.loom.entity("account"), account["id"], {"won_amount": "1.00"}, Context())
    assert (info.value.status, info.value.errors[0]["code"]) == (422, "read_only")


def test_finance_sees_the_won_amount_and_marketing_does_not(sales):
    account = east_account(sales)
    sales.advance(opportunity(sales, account, amount="50000.00", close_date=in_days(20)), "qualify", "propose", "win")
    seen = sales["wang.finance"].get(f"/api/accounts/{account['id']}").json()
    assert (seen["won_amount"], seen["open_opportunities"]) == ("50000.00", 0)
    assert sales["zhang.rep"].get(f"/api/accounts/{account['id']}").json()["won_amount"] == "50000.00"
    marketing = sales["wu.marketing"].get(f"/api/accounts/{account['id']}").json()
    assert "won_amount" not in marketing and marketing["open_opportunities"] == 0
    assert sales["wu.marketing"].get("/api/accounts", params={"sort": "-won_amount"}).status_code == 403


def test_the_last_case_date_follows_the_accounts_service_cases(sales):
    account = east_account(sales)
    assert account["last_case_at"] is None
    sales.create("ticket", {"subject": "Old", "account": account["id"], "opened_at": "2026-01-05T09:00:00Z"},
                 "chen.service")
    sales.create("ticket", {"subject": "Newer", "account": account["id"], "opened_at": "2026-02-05T09:00:00Z"},
                 "chen.service")
    assert parse_time(sales.get("account", account["id"])["last_case_at"]) == \
        dt.datetime(2026, 2, 5, 9, tzinfo=dt.UTC)


# --- scheduled rules -------------------------------------------------------------------------------------------
def test_a_case_open_for_more_than_48_hours_is_escalated_exactly_once(sales):
    account = east_account(sales)
    def hours_ago(hours: int) -> str:
        return (utcnow() - dt.timedelta(hours=hours)).isoformat()

    stale = sales.create("ticket", {"subject": "Invoice amount wrong", "account": account["id"],
                                    "opened_at": hours_ago(49)}, "chen.service")
    fresh = sales.create("ticket", {"subject": "Cannot sign in", "account": account["id"],
                                    "opened_at": hours_ago(47)}, "chen.service")
    waiting = sales.create("ticket", {"subject": "Late delivery", "opened_at": hours_ago(49)}, "chen.service")
    ticket, ctx = sales.loom.entity("ticket"), Context(actor=sales.ids["chen.service"])
    for name in ("start", "wait_for_customer"):  # waiting for the customer is not the service desk's delay
        sales.loom.records.transitions.fire(ticket, waiting["id"], name, ctx)

    assert run_schedules(sales.loom, force=True)["sla_escalation"] == 1
    escalated = sales.get("ticket", stale["id"])
    assert (escalated["priority"], escalated["escalated"]) == ("urgent", True)
    for untouched in (sales.get("ticket", fresh["id"]), sales.get("ticket", waiting["id"])):
        assert (untouched["priority"], untouched["escalated"]) == ("normal", False)
    [task] = activities(sales, "SLA breached")
    assert (task["subject"], task["kind"], task["account"], task["owner"]) == \
        ("SLA breached: Invoice amount wrong", "task", account["id"], sales.ids["chen.service"])

    assert run_schedules(sales.loom, force=True)["sla_escalation"] == 0
    assert len(activities(sales, "SLA breached")) == 1
    assert sales.get("ticket", stale["id"])["version"] == escalated["version"]


def test_an_opportunity_closing_within_three_days_gets_one_reminder(sales):
    account = east_account(sales)
    closing = opportunity(sales, account, "Closing soon", close_date=in_days(2))
    opportunity(sales, account, "In four days", close_date=in_days(4))
    opportunity(sales, account, "Undated")
    sales.create("opportunity", {"name": "Already won", "account": account["id"], "close_date": in_days(1),
                                 "stage": "won"}, channel="seed")  # a closed deal needs no reminder

    assert run_schedules(sales.loom, force=True)["close_date_reminder"] == 1
    [reminder] = activities(sales, "Closing soon")
    assert (reminder["subject"], reminder["kind"], reminder["account"], reminder["owner"]) == \
        ("Closing soon: Closing soon", "task", account["id"], closing["owner"])
    assert run_schedules(sales.loom, force=True)["close_date_reminder"] == 0
    assert len(activities(sales, "Closing soon")) == 1


# --- history ---------------------------------------------------------------------------------------------------
def test_the_history_of_an_opportunity_lists_its_transitions(sales):
    rep = sales["zhang.rep"]
    deal = rep.post("/api/opportunities", {"name": "Fleet renewal", "account": east_account(sales)["id"]}).json()
    rep.fire("opportunities", deal, "qualify")
    rep.fire("opportunities", deal, "propose", amount="80000.00", close_date=in_days(20))
    rep.fire("opportunities", deal, "lose", lost_reason="Lost on price")
    history = rep.get(f"/api/opportunities/{deal['id']}/history")
    assert history.status_code == 200, history.text
    entries = history.json()["data"]
    assert [(e["action"], (e.get("transition") or {}).get("name")) for e in entries] == \
        [("transition", "lose"), ("transition", "propose"), ("transition", "qualify"), ("create", None)]
    assert all(e["actor"] == sales.ids["zhang.rep"] and e["channel"] == "api" for e in entries)
    lose, propose, qualify, _ = entries
    assert lose["transition"] == {"workflow": "pipeline", "name": "lose"}
    assert lose["changes"]["stage"] == ["proposal", "lost"] and lose["changes"]["probability"] == [50, 0]
    assert lose["changes"]["lost_reason"] == [None, "Lost on price"]
    assert propose["changes"]["stage"] == ["qualification", "proposal"]
    assert propose["changes"]["amount"] == [None, "80000.00"]
    assert qualify["changes"]["stage"] == ["prospecting", "qualification"]
    assert qualify["changes"]["probability"] == [10, 20]
