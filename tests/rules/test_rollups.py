"""Rollup fields (``rollup:``): summaries of child records computed in SQL, kept current on every child
write (create, change, move, delete, cascade), rolled back with the write, filterable and sortable,
recomputed by ``loom migrate``; bad definitions are config errors with file:line."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from loomcrm.engine.commands import MigrationRefused
from loomcrm.engine.errors import Problem
from loomcrm.engine.fieldtypes import FieldType
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import ListQuery
from loomcrm.engine.testing import compile_files, config_errors, make_loom, project_files
from loomcrm.generators.migrations import plan_migration

CRM = """
entities:
  region:
    fields:
      name: {type: string, required: true}
      won_amount: {type: money, rollup: {of: account.region, op: sum, field: won_amount}}
  account:
    fields:
      name: {type: string, required: true}
      region: {type: ref, to: region, on_delete: set_null}
      opportunity_count: {type: integer, rollup: {of: opportunity.account}}
      won_amount: {type: money, rollup: {of: opportunity.account, op: sum, field: amount, where: "record.stage == 'won'"}}
      last_close: {type: date, rollup: {of: opportunity.account, op: max, field: close_date}}
  campaign:
    fields:
      name: {type: string, required: true}
      opportunity_count: {type: integer, rollup: {of: opportunity.campaign}}
  opportunity:
    fields:
      name: {type: string, required: true}
      account: {type: ref, to: account, on_delete: cascade}
      campaign: {type: ref, to: campaign, on_delete: set_null}
      amount: {type: money}
      stage: {type: enum, options: [open, won, lost], default: open}
      close_date: {type: date}
"""

ROLLUPS = ("opportunity_count", "won_amount", "last_close")

TIGHT = """
entities:
  account:
    fields:
      name: {type: string}
      total: {type: decimal, precision: 6, scale: 2, rollup: {of: deal.account, op: sum, field: amount}}
  deal:
    fields:
      account: {type: ref, to: account}
      amount: {type: decimal, precision: 5, scale: 2}
"""


@pytest.fixture
def crm(loom_factory):
    return loom_factory(CRM)


def create(loom, entity: str, **values) -> dict:
    return loom.records.create(loom.entity(entity), values, Context())


def rollups(loom, account: dict) -> tuple:
    record = loom.records.get(loom.entity("account"), account["id"], Context())
    return tuple(record[name] for name in ROLLUPS)


def test_a_new_parent_starts_at_zero_and_children_fill_count_sum_where_and_max(crm):
    acme = create(crm, "account", name="Acme")
    assert rollups(crm, acme) == (0, "0.00", None)
    create(crm, "opportunity", name="A", account=acme["id"], amount="0.10", stage="won", close_date="2026-01-05")
    create(crm, "opportunity", name="B", account=acme["id"], amount="0.20", stage="won", close_date="2026-03-01")
    create(crm, "opportunity", name="C", account=acme["id"], amount="500", stage="lost", close_date="2026-02-01")
    assert rollups(crm, acme) == (3, "0.30", "2026-03-01")  # 0.1 + 0.2 is exactly 0.30, lost not summed


def test_changing_a_summarised_or_filtered_field_updates_the_parent_without_a_new_version(crm):
    acme = create(crm, "account", name="Acme")
    deal = create(crm, "opportunity", name="A", account=acme["id"], amount="100", close_date="2026-01-05")
    opportunity = crm.entity("opportunity")
    assert rollups(crm, acme) == (1, "0.00", "2026-01-05")
    crm.records.update(opportunity, deal["id"], {"stage": "won"}, Context())
    assert rollups(crm, acme) == (1, "100.00", "2026-01-05")
    crm.records.update(opportunity, deal["id"], {"amount": "250.50", "close_date": "2026-06-30"}, Context())
    assert rollups(crm, acme) == (1, "250.50", "2026-06-30")
    crm.records.update(opportunity, deal["id"], {"amount": None}, Context())
    assert rollups(crm, acme) == (1, "0.00", "2026-06-30")
    stored = crm.records.get(crm.entity("account"), acme["id"], Context())
    assert stored["version"] == 1  # a derived value: editing the account stays free of conflicts


def test_moving_a_child_to_another_parent_updates_both(crm):
    acme, globex = create(crm, "account", name="Acme"), create(crm, "account", name="Globex")
    deal = create(crm, "opportunity", name="A", account=acme["id"], amount="70", stage="won", close_date="2026-01-05")
    create(crm, "opportunity", name="B", account=acme["id"], amount="30", stage="won")
    crm.records.update(crm.entity("opportunity"), deal["id"], {"account": globex["id"]}, Context())
    assert rollups(crm, acme) == (1, "30.00", None)
    assert rollups(crm, globex) == (1, "70.00", "2026-01-05")


def test_deleting_a_child_updates_its_parent(crm):
    acme = create(crm, "account", name="Acme")
    deal = create(crm, "opportunity", name="A", account=acme["id"], amount="70", stage="won", close_date="2026-01-05")
    crm.records.delete(crm.entity("opportunity"), deal["id"], Context())
    assert rollups(crm, acme) == (0, "0.00", None)


def test_children_deleted_by_cascade_leave_the_rollups_of_their_other_parents(crm):
    spring = create(crm, "campaign", name="Spring")
    acme, globex = create(crm, "account", name="Acme"), create(crm, "account", name="Globex")
    for account in (acme, acme, globex):
        create(crm, "opportunity", name="A", account=account["id"], campaign=spring["id"])
    campaign = crm.entity("campaign")
    assert crm.records.get(campaign, spring["id"], Context())["opportunity_count"] == 3
    crm.records.delete(crm.entity("account"), acme["id"], Context())  # its opportunities go with it
    assert crm.records.get(campaign, spring["id"], Context())["opportunity_count"] == 1


def test_a_rollup_over_a_rollup_follows_the_grandchildren(crm):
    east = create(crm, "region", name="East")
    acme, globex = (create(crm, "account", name=n, region=east["id"]) for n in ("Acme", "Globex"))
    create(crm, "opportunity", name="A", account=acme["id"], amount="10", stage="won")
    deal = create(crm, "opportunity", name="B", account=globex["id"], amount="5", stage="won")
    region = crm.entity("region")
    assert crm.records.get(region, east["id"], Context())["won_amount"] == "15.00"
    crm.records.update(crm.entity("opportunity"), deal["id"], {"stage": "lost"}, Context())
    assert crm.records.get(region, east["id"], Context())["won_amount"] == "10.00"
    crm.records.update(crm.entity("account"), acme["id"], {"region": None}, Context())
    assert crm.records.get(region, east["id"], Context())["won_amount"] == "0.00"


def test_a_child_write_that_rolls_back_leaves_the_rollup_unchanged(crm):
    acme = create(crm, "account", name="Acme")
    create(crm, "opportunity", name="A", account=acme["id"], amount="10", stage="won")
    account = crm.entity("account")
    ctx = Context()
    with pytest.raises(RuntimeError, match="undo"), crm.records.writing(ctx) as conn:
        crm.records.create(crm.entity("opportunity"), {"name": "B", "account": acme["id"], "amount": "5",
                                                       "stage": "won"}, ctx)  # joins the transaction
        assert crm.records.store.fetch(conn, account, acme["id"])["opportunity_count"] == 2
        raise RuntimeError("undo")
    assert rollups(crm, acme) == (1, "10.00", None)


def test_concurrent_children_of_one_parent_are_all_counted(crm):
    """The second writer waits for the first to commit, then counts its child too (on PostgreSQL an
    UPDATE that merely waited for the parent's row lock would still count from its older snapshot)."""
    acme = create(crm, "account", name="Acme")
    opportunity, store, rollups_ = crm.entity("opportunity"), crm.records.store, crm.records.rollups
    first_written, errors, amounts = threading.Event(), [], {"A": 10, "B": 5}

    def write_child(name: str) -> None:
        with crm.engine.connect().execution_options(loom_write=True) as conn, conn.begin():
            now = Context().now
            record = store.insert(conn, opportunity, {"name": name, "account": acme["id"], "amount": amounts[name],
                                                      "stage": "won", "created_at": now, "updated_at": now})
            rollups_.after_write(conn, opportunity, None, record)
            if name == "A":
                first_written.set()
                time.sleep(0.5)  # B inserts its child and reaches the parent's row meanwhile

    def second() -> None:
        first_written.wait()
        try:
            write_child("B")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    write_child("A")
    thread.join()
    assert not errors
    assert rollups(crm, acme)[:2] == (2, "15.00")


def test_rollups_filter_and_sort_through_the_api_and_cannot_be_written(crm, loom_client):
    for name, amounts in (("Acme", ["10", "20"]), ("Globex", ["100"]), ("Initech", [])):
        account = create(crm, "account", name=name)
        for amount in amounts:
            create(crm, "opportunity", name="x", account=account["id"], amount=amount, stage="won")
    client = loom_client(crm)
    busy = client.get("/api/accounts?filter[opportunity_count][gte]=1&sort=-won_amount&fields=name").json()
    assert [a["name"] for a in busy["data"]] == ["Globex", "Acme"]
    idle = client.get("/api/accounts?filter[won_amount]=0").json()["data"]
    assert [a["name"] for a in idle] == ["Initech"]
    refused = client.post("/api/accounts", json={"name": "Hooli", "opportunity_count": 5})
    assert refused.status_code == 422 and refused.json()["errors"][0]["code"] == "read_only"


def test_migrate_computes_a_new_rollup_and_recomputes_a_changed_one(db_url):
    before = "\n".join(line for line in CRM.splitlines() if "won_amount" not in line)
    old = make_loom(project_files(before), db_url)
    try:
        acme = create(old, "account", name="Acme")
        create(old, "opportunity", name="A", account=acme["id"], amount="10", stage="won")
        create(old, "opportunity", name="B", account=acme["id"], amount="5", stage="lost")
    finally:
        old.close()
    for config, expected in ((CRM, "10.00"), (CRM.replace("'won'", "'lost'"), "5.00")):
        new = make_loom(project_files(config), db_url)  # migrates
        try:
            assert rollups(new, acme)[:2] == (2, expected)
        finally:
            new.close()


def test_plan_tells_that_a_changed_rollup_is_recomputed():
    before = compile_files(project_files(CRM)).to_json()
    plan = plan_migration(before, compile_files(project_files(CRM.replace("'won'", "'lost'"))))
    assert plan.steps == [] and plan.notes == ["rollup account.won_amount changed: its values are recomputed"]


def test_rollup_mistakes_are_config_errors_with_their_place():
    text = config_errors(project_files("""
        entities:
          account:
            fields:
              name: {type: string}
              deals: {type: integer, rollup: {of: oportunity.account}}
              total: {type: money, rollup: {of: opportunity.account, op: sum, field: stage}}
              biggest: {type: integer, compute: "1", rollup: {of: opportunity.account, op: max, field: amount}}
              mine: {type: integer, rollup: {of: opportunity.account, where: "record.owner == user.id"}}
          opportunity:
            fields:
              account: {type: ref, to: account}
              amount: {type: money}
              stage: {type: enum, options: [open, won]}
    """))
    assert ("entities.yaml:6:43 E145 rollup 'account.deals': there is no entity 'oportunity'\n"
            "    hint: did you mean 'opportunity.account'?") in text
    assert ("entities.yaml:7:78 E145 rollup 'account.total': sum cannot summarise opportunity.stage, an enum "
            "field\n    hint: sum takes integer, decimal, money fields; opportunity has: amount") in text
    assert "entities.yaml:8:32 E145 rollup 'account.biggest' cannot also have 'compute:'" in text
    assert ("entities.yaml:8:23 E145 rollup 'account.biggest': the max of opportunity.amount (money) needs a "
            "money field, not an integer field\n    hint: make it type: money") in text
    assert ("entities.yaml:9:70 E145 rollup 'account.mine' where: reads user.id, but a rollup holds one value "
            "for every user") in text


def test_rollups_that_read_each_other_in_a_circle_are_refused():
    text = config_errors(project_files("""
        entities:
          node:
            fields:
              parent: {type: ref, to: node}
              total: {type: integer, rollup: {of: node.parent, op: sum, field: total}}
    """))
    assert "E145 rollups read each other in a circle: node.total -> node.total" in text


def test_a_sum_needs_more_digits_than_the_values_it_adds_up():
    text = config_errors(project_files("""
        entities:
          account:
            fields:
              total: {type: decimal, precision: 5, scale: 2, rollup: {of: deal.account, op: sum, field: amount}}
              biggest: {type: decimal, precision: 4, scale: 2, rollup: {of: deal.account, op: max, field: amount}}
              roomy: {type: decimal, precision: 6, scale: 2, rollup: {of: deal.account, op: sum, field: amount}}
              largest: {type: decimal, precision: 5, scale: 2, rollup: {of: deal.account, op: max, field: amount}}
          deal:
            fields:
              account: {type: ref, to: account}
              amount: {type: decimal, precision: 5, scale: 2}
    """))
    assert ("entities.yaml:5:41 E145 rollup 'account.total': total has 3 digits before the decimal point and "
            "deal.amount 3, so the sum of two records may not fit\n    hint: give total precision 18") in text
    assert ("E145 rollup 'account.biggest': biggest has 2 digits before the decimal point and deal.amount 3, so "
            "a value may not fit\n    hint: give biggest precision 5") in text
    assert "roomy" not in text and "largest" not in text  # a digit more holds the sum of ten records


def test_a_sum_that_outgrows_its_field_is_a_422_and_changes_nothing(loom_factory, db_url):
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite stores any number in a decimal column; PostgreSQL refuses one past its precision")
    loom = loom_factory(TIGHT)
    account = create(loom, "account", name="Acme")
    for _ in range(10):
        create(loom, "deal", account=account["id"], amount="999.99")
    with pytest.raises(Problem) as info:  # 10 999.89 needs 5 digits before the point
        create(loom, "deal", account=account["id"], amount="999.99")
    assert info.value.status == 422
    assert info.value.errors == [{"field": "", "code": "rollup_overflow", "message": (
        "account.total cannot hold the sum of its deal records: it has 4 digits before the decimal point "
        "(precision 6, scale 2); give it a larger precision")}]
    assert loom.records.get(loom.entity("account"), account["id"], Context())["total"] == "9999.90"
    assert loom.records.list(loom.entity("deal"), ListQuery(count=True), Context())["count"] == 10


def test_any_value_the_database_refuses_is_a_422(loom_factory, db_url):
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite stores any number in an integer column")

    class Percent(FieldType):  # a plugin's type that leaves the range to the column
        name = "percent"

        def column_type(self, field):
            return sa.SmallInteger()

        def parse(self, field, value):
            return int(value)

    class Plugin:
        @hookimpl
        def loom_field_types(self):
            return [Percent()]

    loom = loom_factory("""
        entities:
          deal:
            fields:
              share: {type: percent}
    """, plugins=[Plugin()])
    with pytest.raises(Problem) as info:
        create(loom, "deal", share=100000)
    assert info.value.status == 422
    [error] = info.value.errors
    assert error["code"] == "out_of_range" and error["message"].startswith("the database cannot store this deal: ")


def test_migrate_refuses_a_rollup_that_the_stored_records_outgrow(db_url):
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite stores any number in a decimal column; PostgreSQL refuses one past its precision")
    old = make_loom(project_files(TIGHT.replace("total:", "# total:")), db_url)
    try:
        account = create(old, "account", name="Acme")
        for _ in range(11):
            create(old, "deal", account=account["id"], amount="999.99")
    finally:
        old.close()
    with pytest.raises(MigrationRefused) as info:
        make_loom(project_files(TIGHT), db_url)
    assert "account.total cannot hold the sum of its deal records" in str(info.value)
    engine = sa.create_engine(db_url)
    try:
        assert "total" not in {c["name"] for c in sa.inspect(engine).get_columns("account")}  # rolled back
    finally:
        engine.dispose()


def test_trusted_writes_cannot_set_a_rollup_or_a_computed_field(loom_factory):
    loom = loom_factory(TIGHT.replace("name: {type: string}", 'name: {type: string}\n      code: {type: string, '
                                      'compute: "record.name"}'))
    with pytest.raises(Problem) as info:  # seed data and actions are trusted, yet Loom sets these
        loom.records.create(loom.entity("account"), {"name": "Acme", "total": "5", "code": "A"},
                            Context(channel="seed"), trusted=True)
    assert info.value.errors == [
        {"field": "total", "code": "read_only", "message": "is computed from other records; it cannot be set"},
        {"field": "code", "code": "read_only", "message": "is computed; it cannot be set"}]


def test_plan_says_when_the_rollups_are_recomputed():
    before = compile_files(project_files(CRM)).to_json()
    changed = compile_files(project_files(CRM.replace("'won'", "'lost'")))
    relabelled = compile_files(project_files(CRM.replace("name: {type: string, required: true}",
                                                         "name: {type: string, required: true, label: Name}")))
    assert plan_migration(None, changed).refresh_rollups  # a new database: new entities with rollups
    assert plan_migration(before, changed).refresh_rollups
    assert not plan_migration(before, relabelled).refresh_rollups


def test_a_delete_hands_over_the_parents_its_cascade_changes(crm):
    spring = create(crm, "campaign", name="Spring")
    acme = create(crm, "account", name="Acme")
    create(crm, "opportunity", name="A", account=acme["id"], campaign=spring["id"])
    with crm.engine.connect() as conn:
        doomed = crm.records.rollups.before_delete(conn, crm.entity("account"), acme["id"])
    assert {(r.entity, r.name): ids for r, ids in doomed.items()} == {("campaign", "opportunity_count"): {spring["id"]}}


def test_a_circle_of_rollups_is_one_error():
    text = config_errors(project_files("""
        entities:
          team:
            fields:
              lead: {type: ref, to: person}
              size: {type: integer, rollup: {of: person.team, op: sum, field: reports}}
          person:
            fields:
              team: {type: ref, to: team}
              reports: {type: integer, rollup: {of: team.lead, op: sum, field: size}}
    """))
    assert text.count("circle") == 1
    assert "E145 rollups read each other in a circle: team.size -> person.reports -> team.size" in text
