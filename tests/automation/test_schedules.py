"""Scheduled rules: ``loom worker`` runs a rule's actions once for each record that comes to match it,
however often it runs and however many workers run at once; a record that stops matching may run again."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap

import pytest

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import migrate
from loomcrm.engine.runtime.context import Context, utcnow
from loomcrm.engine.runtime.query import parse_list_params
from loomcrm.engine.runtime.schedules import run_schedule, run_schedules
from loomcrm.engine.testing import config_errors, project_files

CASES = """
entities:
  ticket:
    fields:
      subject: {type: string, required: true}
      status: {type: enum, options: [open, closed], default: open}
      priority: {type: enum, options: [normal, high], default: normal}
      opened_at: {type: datetime, default: now}
  note:
    fields:
      text: {type: string, required: true}
      ticket: {type: ref, to: ticket, on_delete: cascade}

schedules:
  escalate_stale_cases:
    entity: ticket
    every: 5m
    when: "record.status == 'open' && record.opened_at < now - duration('48h')"
    actions:
      - set: {priority: "'high'"}
      - create: {entity: note, set: {text: "'Escalated: ' + record.subject", ticket: record.id}}
"""

LONG_AGO = (utcnow() - dt.timedelta(days=3)).isoformat()


def notes(loom):
    return [n["text"] for n in loom.records.list(loom.entity("note"), parse_list_params(
        loom.entity("note"), [("sort", "id"), ("limit", "500")]), Context())["data"]]


@pytest.fixture
def crm(loom_factory):
    return loom_factory(CASES)


def test_a_rule_acts_once_per_matching_record_however_often_it_runs(crm):
    case = crm.entity("ticket")
    stale = crm.records.create(case, {"subject": "Broken", "opened_at": LONG_AGO}, Context())
    crm.records.create(case, {"subject": "New"}, Context())
    assert run_schedule(crm, crm.manifest.schedules["escalate_stale_cases"]) == 1
    assert run_schedule(crm, crm.manifest.schedules["escalate_stale_cases"]) == 0
    assert notes(crm) == ["Escalated: Broken"]
    stored = crm.records.get(case, stale["id"], Context())
    assert (stored["priority"], stored["version"]) == ("high", 2)
    history = crm.records.history(case, stale["id"], Context(), limit=5, before=None)["data"]
    assert history[0]["channel"] == "worker" and history[0]["changes"] == {"priority": ["normal", "high"]}


def test_a_record_that_stops_matching_runs_again_when_it_matches_again(crm):
    case = crm.entity("ticket")
    stale = crm.records.create(case, {"subject": "Broken", "opened_at": LONG_AGO}, Context())
    rule = crm.manifest.schedules["escalate_stale_cases"]
    run_schedule(crm, rule)
    crm.records.update(case, stale["id"], {"status": "closed"}, Context())
    assert run_schedule(crm, rule) == 0
    crm.records.update(case, stale["id"], {"status": "open"}, Context())
    assert run_schedule(crm, rule) == 1
    assert notes(crm) == ["Escalated: Broken", "Escalated: Broken"]


def test_every_is_one_run_per_period_across_workers(crm):
    crm.records.create(crm.entity("ticket"), {"subject": "Broken", "opened_at": LONG_AGO}, Context())
    now = utcnow()
    assert run_schedules(crm, now=now) == {"escalate_stale_cases": 1}
    assert run_schedules(crm, now=now + dt.timedelta(minutes=1)) == {}  # not due: another worker's period
    assert run_schedules(crm, now=now + dt.timedelta(minutes=6)) == {"escalate_stale_cases": 0}


def test_a_failing_record_is_logged_and_the_others_still_run(loom_factory):
    crm = loom_factory(CASES.replace("'Escalated: ' + record.subject", "record.subject == 'Bad' ? '' : record.subject"))
    for subject in ("Bad", "Good"):
        crm.records.create(crm.entity("ticket"), {"subject": subject, "opened_at": LONG_AGO}, Context())
    lines = []
    assert run_schedule(crm, crm.manifest.schedules["escalate_stale_cases"], log=lines.append) == 1
    assert notes(crm) == ["Good"]
    assert any("ticket 1" in line and "create action on ticket" in line for line in lines)
    bad = crm.records.get(crm.entity("ticket"), 1, Context())
    assert bad["priority"] == "normal"  # its set action was rolled back with the failed create


def test_a_record_the_condition_cannot_be_evaluated_for_does_not_stop_the_rule(crm):
    ticket = crm.entity("ticket")
    crm.records.create(ticket, {"subject": "No date", "opened_at": None}, Context())
    crm.records.create(ticket, {"subject": "Old", "opened_at": LONG_AGO}, Context())
    lines = []
    assert run_schedule(crm, crm.manifest.schedules["escalate_stale_cases"], log=lines.append) == 1
    assert notes(crm) == ["Escalated: Old"]
    assert any("ticket 1: '" in line and "could not be evaluated" in line for line in lines)


WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from loomcrm.engine.app import Loom
    from loomcrm.engine.runtime.schedules import run_schedules
    project, url, go = sys.argv[1:4]
    loom = Loom.from_project(project, database_url=url)
    while not pathlib.Path(go).exists():
        time.sleep(0.01)
    print(run_schedules(loom, force=True)["escalate_stale_cases"])
""")


def test_two_workers_running_at_once_do_each_job_once(db_url, tmp_path):
    for name, text in project_files(CASES).items():
        (tmp_path / name).write_text(text)
    migrate(tmp_path, database_url=db_url)
    loom = Loom.from_project(tmp_path, database_url=db_url)
    for i in range(40):
        loom.records.create(loom.entity("ticket"), {"subject": f"Case {i}", "opened_at": LONG_AGO}, Context())
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), db_url, str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.write_text("go")
    results = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in results]
    acted = [int(out.strip().splitlines()[-1]) for out, _ in results]
    assert sum(acted) == 40  # between them, each case once
    assert sorted(notes(loom)) == sorted(f"Escalated: Case {i}" for i in range(40))
    loom.close()


def test_schedule_mistakes_are_config_errors():
    text = config_errors(project_files(CASES.replace("every: 5m", "every: 5 minutes")))
    assert "entities.yaml:17:12 E112 'schedules.escalate_stale_cases.every' is invalid" in text
    text = config_errors(project_files(CASES.replace("entity: ticket\n    every", "entity: tickets\n    every")))
    assert "E136 'tickets' is not an entity" in text and "did you mean 'ticket'?" in text
    text = config_errors(project_files(CASES.replace("record.opened_at <", "record.opened <")))
    assert "E135 schedule 'escalate_stale_cases': ticket has no field 'opened'" in text
