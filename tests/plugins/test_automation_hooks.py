"""Hooks of process automation: plugin action types, and the event of a fired transition."""

from __future__ import annotations

import pytest

from loomcrm.engine.actions import ActionError, ActionType
from loomcrm.engine.errors import Problem
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import config_errors, project_files

CRM = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      stage: {type: enum, options: [open, won]}
      tags: {type: string}
workflows:
  pipeline:
    entity: deal
    field: stage
    transitions:
      win:
        from: open
        to: won
        actions:
          - tag: {text: closed}
"""


class Tag(ActionType):
    """``tag: {text: <word>}``: appends a word to the record's tags (before it is saved)."""

    phase = "before"

    def compile(self, params, scope):
        if not isinstance(params, dict) or not isinstance(params.get("text"), str):
            raise ActionError("tag takes text: <word>", "e.g. tag: {text: vip}", ("text",))
        return params["text"]

    def run(self, run, params):
        run.values["tags"] = " ".join(filter(None, [run.record.get("tags"), params]))


class TagPlugin:
    def __init__(self):
        self.events = []

    @hookimpl
    def loom_action_types(self):
        return {"tag": Tag()}

    @hookimpl
    def loom_record_transitioned(self, ctx, entity, old, record, workflow, transition):
        self.events.append((workflow, transition, old["stage"], record["stage"], ctx.conn is None))


def test_hook_loom_action_types(loom_factory):
    loom = loom_factory(CRM, plugins=[TagPlugin()])
    deal = loom.records.create(loom.entity("deal"), {"title": "A", "tags": "big"}, Context())
    won = loom.records.transitions.fire(loom.entity("deal"), deal["id"], "win", Context())
    assert won["tags"] == "big closed"
    text = config_errors(project_files(CRM.replace("tag: {text: closed}", "tag: {word: closed}")),
                         plugins=[TagPlugin()])
    assert "E137 tag takes text: <word>" in text and "hint: e.g. tag: {text: vip}" in text
    assert "E137 unknown action type 'tag'" in config_errors(project_files(CRM))  # without the plugin


def test_hook_loom_record_transitioned(loom_factory):
    plugin = TagPlugin()
    loom = loom_factory(CRM, plugins=[plugin])
    deal = loom.records.create(loom.entity("deal"), {"title": "A"}, Context())
    loom.records.transitions.fire(loom.entity("deal"), deal["id"], "win", Context())
    assert plugin.events == [("pipeline", "win", "open", "won", True)]  # after commit
    with pytest.raises(Problem):
        loom.records.transitions.fire(loom.entity("deal"), deal["id"], "win", Context())
    assert len(plugin.events) == 1  # a refused transition is no event
