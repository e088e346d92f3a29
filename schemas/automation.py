"""Spec models for process automation: workflows (state machines), automations on record events,
scheduled rules and webhook subscriptions (``workflows:``, ``automations:``, ``schedules:``,
``webhooks:`` in any config file).

Every condition and value is CEL (see ``docs/config.md``). An *action* is a mapping with one key,
the action type, and optionally ``when:`` (CEL; the action runs only when it is true)::

    - set: {probability: "100"}                       # fields of this record (before it is saved)
    - update: {ref: account, set: {type: "'customer'"}}   # the record a ref field points at
    - create: {entity: activity, set: {subject: "'Follow up ' + record.name", owner: "record.owner"}}
    - assign: {team: East sales}                      # owner, round-robin over the team's active members
    - assign: {user: zhang.rep, when: "record.region == 'east'"}
    - webhook: {event: opportunity.won}               # to the subscriptions of that event
    - <type a plugin registers>: {...}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .entity import Label, SpecModel

__all__ = ["ActionSpec", "AutomationSpec", "ScheduleSpec", "StateSpec", "TransitionSpec", "WebhookSpec",
           "WorkflowSpec"]

#: One action: ``{<type>: <parameters>}``, plus ``when:`` (CEL) to run it only for some records.
ActionSpec = dict[str, Any]

ACTIONS_HELP = ("Actions, each a mapping with one action type (set, update, create, assign, webhook, or a "
                "plugin's) and an optional `when:` (CEL). They run in the write's transaction: one failing "
                "undoes the write and every action before it.")


class StateSpec(SpecModel):
    """One state of a workflow: an option of the enum field the workflow is bound to."""

    label: Label | None = Field(None, description="Shown instead of the option's label in workflow views.")
    required: list[str] = Field(default_factory=list, description="Fields that must have a value to enter "
                                "this state (checked after the transition's actions ran).")
    read_only: list[str] = Field(default_factory=list, description="Fields nobody may change while a record "
                                 "is in this state (except through a transition's actions).")
    terminal: bool = Field(False, description="No transition leaves this state.")


class TransitionSpec(SpecModel):
    """A named move from one or several states to another."""

    from_: str | list[str] = Field(alias="from", description="The state(s) it may be fired from; `*`: any "
                                   "state that is not terminal.")
    to: str = Field(description="The state it leads to.")
    label: Label | None = Field(None, description="Shown on the button; default: the name, humanized.")
    roles: list[str] = Field(default_factory=list, description="Roles that may fire it (besides the right "
                             "to change the record); empty: everyone who may change the record.")
    when: str | None = Field(None, description="CEL guard: the transition can be fired only when it is true.")
    message: Label | None = Field(None, description="Why the guard refuses, shown to the user "
                                  "(default: the guard's text).")
    actions: list[ActionSpec] = Field(default_factory=list, description=ACTIONS_HELP)


class WorkflowSpec(SpecModel):
    """A state machine bound to an enum field: the field changes only through its transitions."""

    entity: str = Field(description="The entity whose records move through the workflow.")
    field: str = Field(description="The enum field holding the state.")
    label: Label | None = None
    initial: str | None = Field(None, description="The state new records start in (default: the field's "
                                "`default`, else its first option).")
    states: dict[str, StateSpec] = Field(default_factory=dict, description="Settings per state; options "
                                         "not listed are plain states.")
    transitions: dict[str, TransitionSpec] = Field(default_factory=dict)


class AutomationSpec(SpecModel):
    """Actions run when a record is created, updated or deleted."""

    entity: str
    on: list[str] | str = Field(description="The record events it reacts to: create, update, delete (one, or a list).")
    when: str | None = Field(None, description="CEL: react only when true (`old` holds the values before an "
                             "update), e.g. `record.stage != old.stage`.")
    actions: list[ActionSpec] = Field(min_length=1, description=ACTIONS_HELP)
    description: str | None = None


class ScheduleSpec(SpecModel):
    """A time-based rule: ``loom worker`` runs its actions once for each record that comes to match
    ``when``; a record that stops matching may match (and run) again later."""

    entity: str
    when: str = Field(description="CEL over `record`, `now` and `today`, e.g. "
                      "`record.status == 'open' && record.created_at < now - duration('48h')`.")
    actions: list[ActionSpec] = Field(min_length=1, description=ACTIONS_HELP)
    every: str = Field("1m", pattern=r"^\d+[smhd]$", description="How often the worker checks: 30s, 5m, 1h, 1d.")
    description: str | None = None


class WebhookSpec(SpecModel):
    """An HTTP endpoint told about events, delivered by ``loom worker`` from a transactional outbox
    (at least once; each delivery carries an idempotency key) and signed with HMAC-SHA256."""

    url: str = Field(description="Where events are POSTed (http or https).")
    events: list[str] = Field(min_length=1, description="`<entity>.created`, `.updated`, `.deleted`, "
                              "`.transitioned`, an event a `webhook` action emits, or `<entity>.*`.")
    where: str | None = Field(None, description="CEL over `record`: only events of records it is true for.")
    secret_env: str | None = Field(None, description="Environment variable holding the signing secret "
                                   "(the `X-Loom-Signature` header); without it the body is not signed.")
    run_as: str | None = Field(None, description="Username whose field-level security shapes the payload "
                               "(hidden fields are left out); default: every field.")
    max_attempts: int = Field(8, ge=1, le=50, description="Deliveries tried before the event is given up.")
    backoff_seconds: float = Field(10, gt=0, le=3600, description="Wait before the first retry; doubled each time.")
    timeout_seconds: float = Field(10, gt=0, le=120)
