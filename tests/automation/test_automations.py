"""Automations: actions on record events (create, update, delete) for records their ``when`` holds
for, run in the write's transaction; round-robin assignment; loops stopped; overlays merge them."""

from __future__ import annotations

import pytest

from loomcrm.engine.errors import Problem
from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import parse_list_params
from loomcrm.engine.testing import compile_files, config_errors, project_files

CRM = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      stage: {type: enum, options: [new, proposal, won]}
      amount: {type: money}
      touched: {type: integer, default: 0}
  task:
    fields:
      subject: {type: string, required: true}
      deal: {type: ref, to: deal, on_delete: set_null}
      due: {type: date}
  log:
    fields:
      text: {type: string, required: true}

automations:
  follow_up_on_stage_change:
    entity: deal
    on: update
    when: "record.stage != old.stage"
    actions:
      - create: {entity: task, set: {subject: "'Follow up ' + record.title + ' (' + record.stage + ')'",
                                     deal: record.id, due: "now + duration('24h')", owner: record.owner}}
  big_deals_get_a_manager:
    entity: deal
    on: [create, update]
    actions:
      - assign: {team: Sales}
        when: "record.amount != null && record.amount >= 10000.0"
      - set: {touched: "record.touched + 1"}
  deletions_are_logged:
    entity: deal
    on: delete
    actions:
      - create: {entity: log, set: {text: "'deleted ' + record.title"}}
"""


@pytest.fixture
def crm(loom_factory):
    loom = loom_factory(CRM)
    users = Users(loom, channel="python")
    team = loom.records.create(loom.entity("team"), {"name": "Sales"}, Context())
    for name in ("ann", "bob", "cat"):
        users.create(name, "a long password used only in tests", teams=[team["id"]])
    users.create("dan", "a long password used only in tests", teams=[team["id"]], active=False)
    return loom


def rows(crm, entity):
    return crm.records.list(crm.entity(entity), parse_list_params(crm.entity(entity), []), Context())["data"]


def test_an_update_automation_runs_only_when_its_condition_holds(crm):
    deal = crm.records.create(crm.entity("deal"), {"title": "Fleet", "stage": "new"}, Context(actor=None))
    crm.records.update(crm.entity("deal"), deal["id"], {"title": "Fleet 2"}, Context())
    assert rows(crm, "task") == []  # the stage did not change
    crm.records.update(crm.entity("deal"), deal["id"], {"stage": "proposal"}, Context())
    tasks = rows(crm, "task")
    assert [(t["subject"], t["deal"]) for t in tasks] == [("Follow up Fleet 2 (proposal)", deal["id"])]


def test_set_actions_change_the_record_before_it_is_stored(crm):
    deal = crm.records.create(crm.entity("deal"), {"title": "Fleet"}, Context())
    assert deal["touched"] == 1
    assert crm.records.update(crm.entity("deal"), deal["id"], {"title": "X"}, Context())["touched"] == 2
    history = crm.records.history(crm.entity("deal"), deal["id"], Context(), limit=5, before=None)["data"]
    assert history[0]["changes"]["touched"] == [1, 2]  # one write, one audit entry


def test_round_robin_assignment_takes_the_teams_active_members_in_turn(crm):
    users = {u["username"]: u["id"] for u in rows(crm, "user")}
    owners = [crm.records.create(crm.entity("deal"), {"title": f"D{i}", "amount": "20000"}, Context())["owner"]
              for i in range(5)]
    assert owners == [users["ann"], users["bob"], users["cat"], users["ann"], users["bob"]]  # dan is inactive
    small = crm.records.create(crm.entity("deal"), {"title": "Small", "amount": "5"}, Context(actor=users["dan"]))
    assert small["owner"] == users["dan"]  # the action's `when` did not hold


def test_a_delete_automation_sees_the_deleted_record(crm):
    deal = crm.records.create(crm.entity("deal"), {"title": "Gone"}, Context())
    crm.records.delete(crm.entity("deal"), deal["id"], Context())
    assert [r["text"] for r in rows(crm, "log")] == ["deleted Gone"]


def test_a_failing_action_rolls_back_the_write_and_the_actions_before_it(loom_factory):
    crm = loom_factory(CRM.replace("deal: record.id, due:", "deal: record.id, subject: \"''\", due:")
                       .replace("subject: \"'Follow up ' + record.title + ' (' + record.stage + ')'\",", ""))
    deal = crm.records.create(crm.entity("deal"), {"title": "Fleet", "stage": "new"}, Context())
    with pytest.raises(Problem) as info:
        crm.records.update(crm.entity("deal"), deal["id"], {"stage": "won"}, Context())
    assert info.value.status == 422 and "create action on deal" in info.value.detail
    stored = crm.records.get(crm.entity("deal"), deal["id"], Context())
    assert (stored["stage"], stored["touched"], stored["version"]) == ("new", 1, 1)
    assert rows(crm, "task") == []


def test_automations_that_trigger_each_other_are_stopped(loom_factory):
    loop = """
entities:
  ping: {fields: {n: {type: integer}}}
  pong: {fields: {n: {type: integer}}}
automations:
  ping_creates_pong:
    entity: ping
    on: create
    actions: [{create: {entity: pong, set: {n: "1"}}}]
  pong_creates_ping:
    entity: pong
    on: create
    actions: [{create: {entity: ping, set: {n: "1"}}}]
"""
    crm = loom_factory(loop)
    with pytest.raises(Problem) as info:
        crm.records.create(crm.entity("ping"), {"n": 0}, Context())
    assert (info.value.status, info.value.title) == (422, "Automation loop")
    assert info.value.detail.startswith("actions wrote records 8 levels deep")
    assert rows(crm, "ping") == [] and rows(crm, "pong") == []


def test_action_mistakes_are_config_errors_at_their_line():
    text = config_errors(project_files(CRM.replace("create: {entity: log,", "create: {entity: logs,")
                                       .replace("assign: {team: Sales}", "assign: {group: Sales}")
                                       .replace("record.touched + 1", "record.touched + record.nope")))
    assert "E137 'logs' is not an entity" in text and "did you mean 'log'?" in text
    assert "E137 assign takes one of team: <team name> or user: <username>" in text
    assert "E135 deal has no field 'nope' (record.nope)" in text
    text = config_errors(project_files(CRM.replace("on: update", "on: updated").replace("'Follow up '", "Follow")))
    assert "E136 automation 'follow_up_on_stage_change' reacts to 'updated', which is not a record event" in text
    assert "hint: did you mean 'update'?" in text
    assert "unknown name 'Follow'" in text and "for the text 'Follow', write it in quotes: \"'Follow'\"" in text


def test_an_overlay_adds_removes_and_changes_automations_and_transitions():
    base = project_files(CRM + """
workflows:
  pipeline:
    entity: deal
    field: stage
    transitions:
      propose: {from: new, to: proposal}
      win: {from: proposal, to: won}
""")
    overlay = {f"base/{k}": v for k, v in base.items()}
    overlay["loom.yaml"] = ("extends: base\nremove: [automations.deletions_are_logged, "
                            "workflows.pipeline.transitions.win]\ninclude: [more.yaml]\n")
    overlay["more.yaml"] = """
workflows:
  pipeline:
    transitions:
      propose: {roles: []}
      close: {from: [new, proposal], to: won}
automations:
  stamp:
    entity: deal
    on: create
    actions: [{set: {touched: "42"}}]
"""
    manifest = compile_files(overlay)
    assert sorted(manifest.automations) == ["big_deals_get_a_manager", "follow_up_on_stage_change", "stamp"]
    assert sorted(manifest.workflows["pipeline"].transitions) == ["close", "propose"]
    assert manifest.workflows["pipeline"].transitions["close"].sources == ("new", "proposal")


def test_a_context_used_again_after_a_failed_write_still_gets_its_events(loom_factory):
    from loomcrm.engine.hookspecs import hookimpl

    class Events:
        def __init__(self):
            self.seen = []

        @hookimpl
        def loom_record_created(self, ctx, entity, record):
            self.seen.append(record["title"])

    events = Events()
    crm = loom_factory(CRM, plugins=[events])
    ctx = Context()
    with pytest.raises(Problem):  # fails inside the transaction
        crm.records.update(crm.entity("deal"), 999, {"title": "x"}, ctx)
    assert (ctx.conn, ctx.deferred) == (None, None)  # nothing of the failed write stays on the context
    crm.records.create(crm.entity("deal"), {"title": "Good"}, ctx)
    assert events.seen == ["Good"]
