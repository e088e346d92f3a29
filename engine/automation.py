"""Compile ``workflows:``, ``automations:`` and ``schedules:`` into frozen objects the runtime runs.

Every name they use (entity, field, state, role, action type) is checked here, with file:line and
did-you-mean: E136 for workflows, automations and schedules, E137 for actions, E135 for expressions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loomcrm.schemas.automation import AutomationSpec, ScheduleSpec, WorkflowSpec

from .actions import Action, ActionScope, compile_actions
from .errors import ConfigError, did_you_mean
from .expressions import Expression, ExpressionError, compile_expression
from .manifest import Entity, localized
from .names import check_identifier, humanize
from .plugins import action_types

__all__ = ["Automation", "Schedule", "State", "Transition", "Workflow", "compile_automation"]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EVENTS = ("create", "update", "delete")


@dataclass(frozen=True)
class State:
    name: str
    label: dict[str, str]
    required: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    terminal: bool = False


_PLAIN: dict[str, State] = {}


@dataclass(frozen=True)
class Transition:
    """A named move of a workflow: from ``sources`` to ``to``, for ``roles`` (all when empty),
    when ``when`` holds; its ``actions`` run in the same transaction."""

    name: str
    workflow: str
    label: dict[str, str]
    sources: tuple[str, ...]
    to: str
    roles: tuple[str, ...] = ()
    when: Expression | None = None
    message: dict[str, str] = field(default_factory=dict)
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Workflow:
    """A state machine over the enum field ``field`` of ``entity``."""

    name: str
    entity: str
    field: str
    label: dict[str, str]
    initial: str
    states: dict[str, State]
    transitions: dict[str, Transition]

    def state(self, value: str) -> State:
        """The settings of state ``value`` (a state the config says nothing about has none)."""
        found = self.states.get(value)
        return found if found is not None else _PLAIN.get(value) or _PLAIN.setdefault(value, State(value, {}))


@dataclass(frozen=True)
class Automation:
    """Actions on record events ``on`` of ``entity``, for records ``when`` holds for."""

    name: str
    entity: str
    on: frozenset[str]
    when: Expression | None
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Schedule:
    """A time-based rule: ``actions`` once for each record that comes to match ``when``."""

    name: str
    entity: str
    when: Expression
    actions: tuple[Action, ...]
    every: float  # seconds


def compile_automation(loaded, entities: dict[str, Entity], roles: Mapping[str, Any], pm,
                       errors: list[ConfigError]) -> tuple[dict[str, Workflow], dict[str, Automation], dict[str, Schedule]]:
    """Workflows, automations and schedules by name; problems go to ``errors``."""
    types = action_types(pm)
    locales = loaded.project.app.locales
    named = loaded.named
    protected = frozenset((spec.entity, spec.field) for spec in named.get("workflows", {}).values())
    compiler = _Compiler(loaded, entities, types, protected, errors)
    workflows = {}
    for name, spec in named.get("workflows", {}).items():
        workflow = compiler.workflow(name, spec, roles, locales)
        if workflow is not None:
            workflows[name] = workflow
    _check_bindings(loaded, workflows, errors)
    automations = {}
    for name, spec in named.get("automations", {}).items():
        automation = compiler.automation(name, spec)
        if automation is not None:
            automations[name] = automation
    schedules = {}
    for name, spec in named.get("schedules", {}).items():
        schedule = compiler.schedule(name, spec)
        if schedule is not None:
            schedules[name] = schedule
    return workflows, automations, schedules


def _check_bindings(loaded, workflows: dict[str, Workflow], errors: list[ConfigError]) -> None:
    """One workflow per field, and transition names unique per entity (they are URL segments)."""
    fields: dict[tuple[str, str], str] = {}
    names: dict[tuple[str, str], str] = {}
    for workflow in workflows.values():
        key = (workflow.entity, workflow.field)
        if key in fields:
            errors.append(ConfigError(loaded.locate(("workflows", workflow.name, "field")), "E136",
                                      f"workflows '{fields[key]}' and '{workflow.name}' are both bound to "
                                      f"{workflow.entity}.{workflow.field}", "bind each workflow to its own enum field"))
        fields[key] = workflow.name
        for transition in workflow.transitions:
            tkey = (workflow.entity, transition)
            if tkey in names:
                errors.append(ConfigError(loaded.locate(("workflows", workflow.name, "transitions", transition), key=True),
                                          "E136", f"transition '{transition}' of {workflow.entity} is also defined by "
                                          f"workflow '{names[tkey]}'", "give it another name: it is part of the URL "
                                          f"/api/<plural>/{{id}}/transitions/{transition}"))
            names[tkey] = workflow.name


class _Compiler:
    def __init__(self, loaded, entities, types, protected, errors):
        self.loaded, self.entities, self.types, self.protected, self.errors = loaded, entities, types, protected, errors

    def _error(self, path: tuple, message: str, hint: str | None = None, code: str = "E136", key: bool = False) -> None:
        self.errors.append(ConfigError(self.loaded.locate(path, key=key), code, message, hint))

    def _entity(self, path: tuple, name: str) -> Entity | None:
        entity = self.entities.get(name)
        if entity is None:
            self._error((*path, "entity"), f"'{name}' is not an entity",
                        did_you_mean(name, self.entities) or f"entities: {', '.join(self.entities)}")
        return entity

    def _expression(self, path: tuple, text: str | None, entity: Entity, what: str) -> Expression | None:
        if text is None:
            return None
        try:
            return compile_expression(text, entity, self.entities["user"])
        except ExpressionError as exc:
            self._error(path, f"{what}: {exc.message}", exc.hint, code="E135")
            return None

    def _actions(self, path: tuple, items: list, entity: Entity) -> tuple[Action, ...]:
        scope = ActionScope(entity, self.entities, self.protected)
        actions = []
        for action, problem, where in compile_actions(items, scope, self.types):
            if problem is not None:
                self._error((*path, *where), problem.message, problem.hint, code=problem.code, key=len(where) == 2)
            else:
                actions.append(action)
        return tuple(actions)

    def _name(self, path: tuple, name: str, kind: str) -> None:
        problem = check_identifier(name, kind, frozenset())
        if problem:
            self.errors.append(ConfigError(self.loaded.locate(path, key=True), *problem))

    # --- workflows ---------------------------------------------------------------------------------
    def workflow(self, name: str, spec: WorkflowSpec, roles, locales) -> Workflow | None:
        path = ("workflows", name)
        entity = self._named(path, "workflow", spec)
        if entity is None:
            return None
        field_ = entity.fields.get(spec.field)
        enums = [f.name for f in entity.user_fields if f.type == "enum"]
        if field_ is None or field_.type != "enum" or field_.compute is not None:
            what = "is not a field" if field_ is None else f"is a {field_.type} field" if field_.type != "enum" \
                else "is computed"
            self._error((*path, "field"), f"{entity.name}.{spec.field} {what}; a workflow's state is a plain enum field",
                        did_you_mean(spec.field, enums) or (f"enum fields of {entity.name}: {', '.join(enums)}"
                                                            if enums else f"add an enum field to {entity.name}"))
            return None
        options = [o if isinstance(o, str) else o["value"] for o in field_.params.get("options", [])]
        option_labels = {o["value"]: o.get("label") for o in field_.params.get("options", []) if isinstance(o, dict)}

        def known(value: str, where: tuple, what: str) -> bool:
            if value in options:
                return True
            self._error(where, f"{what} '{value}' is not an option of {entity.name}.{field_.name}",
                        did_you_mean(value, options) or f"options: {', '.join(options)}")
            return False

        def fields_of(names: list[str], where: tuple) -> tuple[str, ...]:
            for i, fname in enumerate(names):
                if fname not in entity.fields or entity.fields[fname].system:
                    self._error((*where, i), f"{entity.name} has no field '{fname}'",
                                did_you_mean(fname, [f.name for f in entity.user_fields]))
            return tuple(names)

        states = {}
        for state_name, state in spec.states.items():
            if known(state_name, (*path, "states", state_name), "state"):
                if field_.name in state.read_only:
                    self._error((*path, "states", state_name, "read_only"), f"the state field {field_.name} cannot "
                                "be read-only: transitions change it", "take it out of read_only")
                states[state_name] = State(
                    state_name, localized(state.label or option_labels.get(state_name) or humanize(state_name), locales),
                    fields_of(state.required, (*path, "states", state_name, "required")),
                    fields_of(state.read_only, (*path, "states", state_name, "read_only")), state.terminal)
        initial = spec.initial or field_.default or (options[0] if options else "")
        if spec.initial is not None:
            known(spec.initial, (*path, "initial"), "initial state")
        transitions = {}
        for tname, tspec in spec.transitions.items():
            transition = self._transition(path, name, tname, tspec, entity, options, known, states, roles, locales)
            if transition is not None:
                transitions[tname] = transition
        return Workflow(name, entity.name, field_.name, localized(spec.label or humanize(name), locales), initial,
                        states, transitions)

    def _transition(self, path, workflow, name, spec, entity, options, known, states, roles, locales):
        where = (*path, "transitions", name)
        self._name(where, name, "transition")
        written = [spec.from_] if isinstance(spec.from_, str) else list(spec.from_)
        if written == ["*"]:
            sources = tuple(o for o in options if not (o in states and states[o].terminal))
        else:
            sources = tuple(s for i, s in enumerate(written)
                            if known(s, (*where, "from", *(() if isinstance(spec.from_, str) else (i,))), "state"))
        for source in sources:
            if source in states and states[source].terminal:
                self._error((*where, "from"), f"transition '{name}' leaves '{source}', a terminal state",
                            f"remove '{source}' from 'from', or make it not terminal")
        ok = known(spec.to, (*where, "to"), "state")
        for i, role in enumerate(spec.roles):
            if role not in roles:
                self._error((*where, "roles", i), f"transition '{name}' names role '{role}', which is not a role",
                            did_you_mean(role, roles) or f"roles: {', '.join(roles) or 'none defined'}", code="E136")
        when = self._expression((*where, "when"), spec.when, entity, f"guard of transition '{name}'")
        actions = self._actions((*where, "actions"), spec.actions, entity)
        if not ok:
            return None
        message = localized(spec.message, locales) if spec.message is not None else {}
        return Transition(name, workflow, localized(spec.label or humanize(name), locales), sources, spec.to,
                          tuple(spec.roles), when, message, actions)

    # --- automations and schedules -------------------------------------------------------------------------
    def _named(self, path: tuple, kind: str, spec) -> Entity | None:
        """Check the name at ``path`` and return the entity ``spec`` names (None when it names none)."""
        self._name(path, path[-1], kind)
        return self._entity(path, spec.entity)

    def automation(self, name: str, spec: AutomationSpec) -> Automation | None:
        path = ("automations", name)
        entity = self._named(path, "automation", spec)
        if entity is None:
            return None
        on = frozenset([spec.on] if isinstance(spec.on, str) else spec.on)
        for i, event in enumerate([spec.on] if isinstance(spec.on, str) else spec.on):
            if event not in EVENTS:
                self._error((*path, "on", *(() if isinstance(spec.on, str) else (i,))),
                            f"automation '{name}' reacts to '{event}', which is not a record event",
                            did_you_mean(event, EVENTS) or f"events: {', '.join(EVENTS)}")
        when = self._expression((*path, "when"), spec.when, entity, f"automation '{name}'")
        actions = self._actions((*path, "actions"), spec.actions, entity)
        if "delete" in on:
            for i, action in enumerate(actions):
                if action.phase == "before":
                    self._error((*path, "actions", i), f"a '{action.type}' action changes the record, which a delete "
                                "removes", "use it on create or update only")
        return Automation(name, entity.name, on, when, actions)

    def schedule(self, name: str, spec: ScheduleSpec) -> Schedule | None:
        path = ("schedules", name)
        entity = self._named(path, "schedule", spec)
        if entity is None:
            return None
        when = self._expression((*path, "when"), spec.when, entity, f"schedule '{name}'")
        actions = self._actions((*path, "actions"), spec.actions, entity)
        if when is None:
            return None
        return Schedule(name, entity.name, when, actions, int(spec.every[:-1]) * UNITS[spec.every[-1]])
