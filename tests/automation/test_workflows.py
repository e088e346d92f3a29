"""Workflows: state machines bound to an enum field. The state changes only through transitions,
which check the state, the caller's roles, a guard and the target state's required fields, run their
actions in the same transaction, and leave a ``transition`` entry in the audit trail."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from loomcrm.engine.errors import Problem
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, config_errors, project_files

PIPELINE = """
entities:
  company:
    fields:
      name: {type: string, required: true}
      kind: {type: enum, options: [prospect, customer], default: prospect}
      won_deals: {type: integer, default: 0}
  deal:
    fields:
      title: {type: string, required: true}
      company: {type: ref, to: company}
      amount: {type: money}
      probability: {type: integer}
      stage: {type: enum, options: [prospecting, proposal, negotiation, won, lost]}
      lost_reason: {type: text}
      approval: {type: enum, options: [none, requested, approved], default: none}
  task:
    fields:
      subject: {type: string, required: true}
      deal: {type: ref, to: deal, on_delete: cascade}
      due: {type: date}
      done: {type: boolean, default: false}

workflows:
  pipeline:
    entity: deal
    field: stage
    states:
      proposal: {required: [amount]}
      negotiation: {read_only: [amount]}
      won: {terminal: true}
      lost: {terminal: true, required: [lost_reason]}
    transitions:
      propose:
        from: prospecting
        to: proposal
        actions:
          - set: {probability: "25"}
      negotiate:
        from: proposal
        to: negotiation
        roles: [manager]
        when: "record.amount >= 1000.0"
        message: {en: Deals under 1000 are not negotiated., zh: 1000 以下的交易不议价。}
        actions:
          - set: {probability: "60"}
      win:
        from: [proposal, negotiation]
        to: won
        actions:
          - set: {probability: "100"}
          - update: {ref: company, set: {kind: "'customer'", won_deals: "1"}}
          - create: {entity: task, set: {subject: "'Kick-off: ' + record.title", deal: record.id,
                                         due: "now + duration('72h')", owner: record.owner}}
      lose:
        from: "*"
        to: lost
        actions:
          - set: {probability: "0"}
  approvals:
    entity: deal
    field: approval
    transitions:
      request: {from: none, to: requested}
      approve: {from: requested, to: approved, roles: [manager]}

roles:
  rep:
    entities:
      company: {read: all, create: true, update: all}
      deal: {read: all, create: true, update: all}
      task: {read: all}
  manager:
    inherits: [rep]
"""


@pytest.fixture
def crm(loom_factory):
    return loom_factory(PIPELINE)


def make_deal(crm, **data):
    company = crm.records.create(crm.entity("company"), {"name": "Northwind"}, Context())
    return crm.records.create(crm.entity("deal"), {"title": "Fleet", "company": company["id"], **data}, Context())


def fire(crm, deal, name, ctx=None, **kwargs):
    return crm.records.transitions.fire(crm.entity("deal"), deal["id"], name, ctx or Context(), **kwargs)


def test_a_new_record_starts_in_the_initial_state_and_cannot_start_elsewhere(crm):
    deal = make_deal(crm)
    assert (deal["stage"], deal["approval"]) == ("prospecting", "none")
    with pytest.raises(Problem) as info:
        make_deal(crm, stage="won")
    assert info.value.status == 422 and info.value.errors[0]["field"] == "stage"
    assert "start in 'prospecting'" in info.value.errors[0]["message"]
    imported = crm.records.create(crm.entity("deal"), {"title": "Old", "stage": "won"}, Context(channel="import"))
    assert imported["stage"] == "won"  # data moved from an old system keeps its state


def test_a_transition_moves_the_state_runs_its_actions_and_is_in_the_audit_trail(crm):
    deal = make_deal(crm, amount="500")
    moved = fire(crm, deal, "propose", version=1)
    assert (moved["stage"], moved["probability"], moved["version"]) == ("proposal", 25, 2)
    history = crm.records.history(crm.entity("deal"), deal["id"], Context(), limit=10, before=None)["data"]
    assert history[0]["action"] == "transition"
    assert history[0]["transition"] == {"workflow": "pipeline", "name": "propose"}
    assert history[0]["changes"]["stage"] == ["prospecting", "proposal"]


def test_the_state_field_cannot_be_patched_directly(crm):
    deal = make_deal(crm)
    with pytest.raises(Problem) as info:
        crm.records.update(crm.entity("deal"), deal["id"], {"stage": "won"}, Context())
    assert info.value.status == 422
    error = info.value.errors[0]
    assert error["field"] == "stage" and error["code"] == "workflow"
    assert "propose (to proposal)" in error["message"] and "lose (to lost)" in error["message"]
    assert crm.records.update(crm.entity("deal"), deal["id"], {"stage": "prospecting", "title": "Same"},
                              Context())["version"] == 2  # unchanged state is fine


def test_the_target_states_required_fields_must_be_given_or_present(crm):
    deal = make_deal(crm)
    with pytest.raises(Problem) as info:
        fire(crm, deal, "propose")
    assert [(e["field"], e["code"]) for e in info.value.errors] == [("amount", "required_in_state")]
    moved = fire(crm, deal, "propose", data={"amount": "1200"})  # given with the transition
    assert (moved["stage"], moved["amount"]) == ("proposal", "1200.00")
    with pytest.raises(Problem) as info:
        fire(crm, moved, "lose")
    assert info.value.errors[0]["field"] == "lost_reason"
    assert fire(crm, moved, "lose", data={"lost_reason": "budget cut"})["stage"] == "lost"


def test_the_guard_sees_the_fields_given_with_the_transition(crm):
    deal = fire(crm, make_deal(crm, amount="500"), "propose")
    with pytest.raises(Problem) as info:
        fire(crm, deal, "negotiate")
    assert info.value.errors[0]["code"] == "guard"
    assert fire(crm, deal, "negotiate", data={"amount": "2000"})["stage"] == "negotiation"


def test_read_only_fields_of_a_state_cannot_be_changed_while_in_it(crm):
    deal = fire(crm, make_deal(crm, amount="2000"), "propose")
    deal = fire(crm, deal, "negotiate")
    with pytest.raises(Problem) as info:
        crm.records.update(crm.entity("deal"), deal["id"], {"amount": "1"}, Context())
    assert info.value.errors[0] == {"field": "amount", "code": "read_only_in_state",
                                    "message": "cannot be changed while stage is 'negotiation'"}


def test_wrong_state_wrong_role_failed_guard_and_stale_version_are_refused(crm):
    client = TestClient(crm.asgi())
    rep = {"Authorization": f"Bearer {api_token(crm, 'rep1', ['rep'])}"}
    manager = {"Authorization": f"Bearer {api_token(crm, 'boss', ['manager'])}"}
    deal = make_deal(crm, amount="500")
    url = f"/api/deals/{deal['id']}/transitions"
    wrong_state = client.post(f"{url}/negotiate", json={}, headers=manager)
    assert wrong_state.status_code == 409 and "fires only from 'proposal'" in wrong_state.json()["detail"]
    assert client.post(f"{url}/propose", json={"version": 1}, headers=rep).status_code == 200
    stale = client.post(f"{url}/lose", json={"version": 1, "fields": {"lost_reason": "x"}}, headers=rep)
    assert stale.status_code == 409 and stale.json()["errors"][0]["code"] == "stale"
    wrong_role = client.post(f"{url}/negotiate", json={}, headers=rep)
    assert wrong_role.status_code == 403 and "manager" in wrong_role.json()["detail"]
    guard = client.post(f"{url}/negotiate", json={}, headers={**manager, "Accept-Language": "zh"})
    assert guard.status_code == 422 and guard.json()["errors"][0]["code"] == "guard"
    assert "1000 以下的交易不议价。" in guard.json()["detail"]  # the reader's language (Accept-Language)
    english = client.post(f"{url}/negotiate", json={}, headers=manager).json()
    assert "Deals under 1000 are not negotiated." in english["errors"][0]["message"]
    assert client.post(f"{url}/negotiat", json={}, headers=manager).status_code == 404
    after = client.get(f"/api/deals/{deal['id']}", headers=rep).json()
    assert (after["stage"], after["version"]) == ("proposal", 2)  # the refused calls changed nothing
    assert client.patch(f"/api/deals/{deal['id']}", json={"stage": "won"}, headers=rep).status_code == 422


def test_listing_transitions_says_which_may_be_fired_now_and_why_not_the_others(crm):
    client = TestClient(crm.asgi())
    rep = {"Authorization": f"Bearer {api_token(crm, 'rep1', ['rep'])}"}
    deal = fire(crm, make_deal(crm, amount="500"), "propose")
    listing = client.get(f"/api/deals/{deal['id']}/transitions", headers=rep).json()
    assert listing["states"] == {"stage": "proposal", "approval": "none"}
    by_name = {t["name"]: t for t in listing["data"]}
    assert by_name["win"]["allowed"] and by_name["lose"]["allowed"] and by_name["request"]["allowed"]
    assert by_name["lose"]["needs"] == ["lost_reason"]
    assert not by_name["negotiate"]["allowed"] and "manager" in by_name["negotiate"]["reasons"][0]
    assert not by_name["propose"]["allowed"] and "fires only from 'prospecting'" in by_name["propose"]["reasons"][0]
    assert by_name["propose"]["from"] == ["prospecting"]


def test_two_workflows_on_one_entity_move_independently(crm):
    deal = make_deal(crm)
    deal = fire(crm, deal, "request")
    assert (deal["stage"], deal["approval"]) == ("prospecting", "requested")
    with pytest.raises(Problem) as info:  # moving one workflow does not open the other's field
        fire(crm, deal, "propose", data={"amount": "10", "approval": "approved"})
    assert info.value.errors[0]["field"] == "approval"


def test_actions_update_the_referenced_record_and_create_a_follow_up_in_the_same_write(crm):
    deal = fire(crm, make_deal(crm, amount="500"), "propose")
    won = fire(crm, deal, "win")
    assert (won["stage"], won["probability"]) == ("won", 100)
    company = crm.records.get(crm.entity("company"), deal["company"], Context())
    assert (company["kind"], company["won_deals"]) == ("customer", 1)
    tasks = crm.records.list(crm.entity("task"), _query(crm, "task"), Context())["data"]
    assert [(t["subject"], t["deal"]) for t in tasks] == [("Kick-off: Fleet", deal["id"])]
    assert tasks[0]["due"] > won["updated_at"][:10]  # three days later


def test_a_failing_action_rolls_back_the_transition_and_every_action_before_it(loom_factory):
    crm = loom_factory(PIPELINE.replace("due: \"now + duration('72h')\"", "due: \"'not a date'\""))
    deal = fire(crm, make_deal(crm, amount="500"), "propose")
    with pytest.raises(Problem) as info:
        fire(crm, deal, "win")
    assert info.value.status == 422 and "create action on deal" in info.value.detail
    assert crm.records.get(crm.entity("deal"), deal["id"], Context())["stage"] == "proposal"
    company = crm.records.get(crm.entity("company"), deal["company"], Context())
    assert (company["kind"], company["won_deals"]) == ("prospect", 0)  # the update action was undone too
    assert crm.records.list(crm.entity("task"), _query(crm, "task"), Context())["data"] == []


def _query(crm, name):
    from loomcrm.engine.runtime.query import parse_list_params

    return parse_list_params(crm.entity(name), [])


# --- config errors ------------------------------------------------------------------------------------------


def test_workflow_mistakes_are_config_errors_with_file_line_and_hints():
    text = config_errors(project_files(PIPELINE.replace("to: proposal", "to: proposel")
                                       .replace("from: [proposal, negotiation]", "from: [won, negotiation]")
                                       .replace("roles: [manager]", "roles: [manger]")
                                       .replace("- set: {probability: \"0\"}", "- sett: {probability: \"0\"}")))
    assert "entities.yaml:36:13 E136 state 'proposel' is not an option of deal.stage" in text
    assert "did you mean 'proposal'?" in text
    assert "transition 'win' leaves 'won', a terminal state" in text
    assert "E136 transition 'negotiate' names role 'manger'" in text and "did you mean 'manager'?" in text
    assert "E137 unknown action type 'sett'" in text and "did you mean 'set'?" in text


def test_actions_cannot_set_a_state_field_and_workflows_need_an_enum_field():
    text = config_errors(project_files(PIPELINE.replace('set: {probability: "25"}', "set: {stage: \"'won'\"}")
                                       .replace("field: approval", "field: title")))
    assert "deal.stage is a workflow's state: it changes only by a transition" in text
    assert "deal.title is a string field; a workflow's state is a plain enum field" in text
    assert "did you mean" in text or "enum fields of deal" in text


def test_a_guard_naming_an_unknown_field_is_e135():
    text = config_errors(project_files(PIPELINE.replace("record.amount >= 1000.0", "record.amout >= 1000.0")))
    assert "E135 guard of transition 'negotiate': deal has no field 'amout'" in text


def test_the_transition_endpoints_are_in_the_openapi_document(crm):
    document = TestClient(crm.asgi()).get("/schema/openapi.json").json()
    fire_op = document["paths"]["/api/deals/{record_id}/transitions/{name}"]["post"]
    assert {"200", "403", "409", "422"} <= set(fire_op["responses"])
    assert "win" in fire_op["description"] and "approve" in fire_op["description"]
    listing = document["components"]["schemas"]["TransitionOption"]
    assert {"from", "to", "allowed", "reasons", "needs"} <= set(listing["properties"])
    assert "/api/companies/{record_id}/transitions" not in document["paths"]  # no workflow, no endpoint


def test_a_users_own_language_applies_without_accept_language(crm):
    from loomcrm.engine.identity import Users

    Users(crm, channel="python").create("wang", "a long password used only in tests", roles=["manager"], locale="zh")
    client = TestClient(crm.asgi())
    headers = {"Authorization": f"Bearer {api_token(crm, 'wang')}"}
    deal = fire(crm, make_deal(crm, amount="500"), "propose")
    answer = client.post(f"/api/deals/{deal['id']}/transitions/negotiate", json={}, headers=headers).json()
    assert answer["errors"][0]["message"] == "1000 以下的交易不议价。"
