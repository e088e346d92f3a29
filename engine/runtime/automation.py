"""What happens around every write besides storing it: workflow checks, automations' actions,
rollups and the webhook outbox. The pipeline calls :meth:`Flow.before_save` before computed fields
and rules, and :meth:`Flow.after_save` once the record is stored, both inside the write's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..actions import Action, ActionRun
from ..errors import Problem
from ..expressions import Expression, context
from ..manifest import Entity
from .context import Context, zone

if TYPE_CHECKING:
    from ..automation import Transition, Workflow
    from .pipeline import Records
    from .rollups import Doomed

__all__ = ["Flow", "MAX_DEPTH", "BYPASS_CHANNELS"]

#: How deep actions may write records whose automations write records... before Loom stops a loop.
MAX_DEPTH = 8
#: Channels that may create or change records in any workflow state (moving data from an old system).
BYPASS_CHANNELS = ("seed", "import")
LOOP = "Automation loop"
EVENTS = {"create": "created", "update": "updated", "delete": "deleted"}


@dataclass
class Pending:
    """What :meth:`Flow.before_save` leaves for :meth:`Flow.after_save`.

    :ivar actions: the ``after`` actions chosen before the write (their conditions saw the record as sent).
    :ivar doomed: for a delete, the rollups' parents of the children it takes along (by cascade).
    """

    actions: list[Action] = field(default_factory=list)
    transition: Transition | None = None
    doomed: Doomed = field(default_factory=dict)


class Flow:
    """Workflows and automations of one app, indexed by entity."""

    def __init__(self, records: Records):
        self.records = records
        manifest = records.manifest
        self.timezone = manifest.timezone
        self.workflows: dict[str, list[Workflow]] = {}
        for workflow in manifest.workflows.values():
            self.workflows.setdefault(workflow.entity, []).append(workflow)
        self.automations: dict[tuple[str, str], list] = {}
        for automation in manifest.automations.values():
            for event in automation.on:
                self.automations.setdefault((automation.entity, event), []).append(automation)

    # --- before the write ------------------------------------------------------------------------------
    def start(self, entity: Entity, values: dict) -> None:
        """A new record without a state starts in each workflow's initial state."""
        for workflow in self.workflows.get(entity.name, ()):
            if values.get(workflow.field) is None:
                values[workflow.field] = workflow.initial

    def before_save(self, ctx: Context, entity: Entity, event: str, values: dict, old: dict | None,
                    transition: Transition | None = None) -> Pending | None:
        """Check the write against the entity's workflows and run the ``before`` actions of the
        transition and of matching automations (they add to ``values``); returns the ``after`` ones."""
        if ctx.depth > MAX_DEPTH:
            raise Problem(422, LOOP, detail=f"actions wrote records {MAX_DEPTH} levels deep (last: "
                          f"{entity.name}); check automations that trigger each other")
        automations = self.automations.get((entity.name, event), ())
        if event == "delete":
            doomed = self.records.rollups.before_delete(ctx.conn, entity, old["id"])
            chosen = [a for a in automations if self.holds(a.when, ctx, old, None)]
            return Pending([action for a in chosen for action in a.actions], doomed=doomed) \
                if chosen or doomed else None
        workflows = self.workflows.get(entity.name, ())
        if workflows:
            self._check_workflows(ctx, entity, workflows, values, old, transition)
        if not automations and transition is None:
            return None
        def record() -> dict:  # as it will be stored, with what the actions so far changed
            return {**old, **values} if old else values

        pending = Pending(transition=transition)
        lists = [transition.actions] if transition is not None else []
        lists += [a.actions for a in automations if self.holds(a.when, ctx, record(), old)]
        for actions in lists:
            for action in actions:
                if action.phase == "after":
                    pending.actions.append(action)
                elif self.holds(action.when, ctx, record(), old):
                    self._run(action, ctx, entity, record(), old, values)
        if transition is not None:
            _require(self.records.manifest.workflows[transition.workflow].state(transition.to), record())
        return pending

    def _check_workflows(self, ctx: Context, entity: Entity, workflows, values: dict, old: dict | None,
                         transition: Transition | None) -> None:
        errors = []
        bypass = ctx.channel in BYPASS_CHANNELS
        for workflow in workflows:
            name = workflow.field
            if old is None:  # a new record starts in the initial state (see start)
                if values.get(name, workflow.initial) != workflow.initial and not bypass:
                    errors.append(_error(name, "workflow", f"new {entity.name} records start in '{workflow.initial}'; "
                                         f"move them on with a transition of workflow '{workflow.name}'"))
                continue
            moving = transition is not None and transition.workflow == workflow.name
            if name in values and values[name] != old[name] and not moving and not bypass:
                possible = [f"{t.name} (to {t.to})" for t in workflow.transitions.values() if old[name] in t.sources]
                errors.append(_error(name, "workflow", f"{name} changes only through a transition of workflow "
                                     f"'{workflow.name}' (POST /api/{entity.plural}/{old['id']}/transitions/<name>); "
                                     f"from '{old[name]}': {', '.join(possible) or 'none'}"))
            state = workflow.state(old[name])
            for fname in state.read_only:
                if fname in values and values[fname] != old.get(fname) and not bypass:
                    errors.append(_error(fname, "read_only_in_state", f"cannot be changed while {name} is "
                                         f"'{old[name]}'"))
        if old is None and not errors:
            for workflow in workflows:
                _require(workflow.state(values[workflow.field]), values)
        if errors:
            raise Problem(422, "Validation failed", errors=errors)

    # --- after the write -------------------------------------------------------------------------------
    def after_save(self, ctx: Context, entity: Entity, event: str, old: dict | None, record: dict | None,
                   pending: Pending | None) -> None:
        """Rollups, the chosen ``after`` actions, and the webhook events of a stored write."""
        self.records.rollups.after_write(ctx.conn, entity, old, record, pending.doomed if pending else None)
        subject = record if record is not None else old
        for action in pending.actions if pending else ():
            if self.holds(action.when, ctx, subject, old):
                self._run(action, ctx, entity, subject, old, None)
        outbox = self.records.outbox
        outbox.enqueue(ctx.conn, ctx, f"{entity.name}.{EVENTS[event]}", entity, subject, old)
        if pending is not None and pending.transition is not None:
            outbox.enqueue(ctx.conn, ctx, f"{entity.name}.transitioned", entity, subject, old)

    # --- outside a write: scheduled rules --------------------------------------------------------------
    def run_actions(self, ctx: Context, entity: Entity, record: dict, actions) -> None:
        """Run ``actions`` for the locked, stored ``record`` in the running write: ``before`` ones
        change it through one update (hooks, rules, audit), ``after`` ones act on the result."""
        changes: dict = {}
        for action in actions:
            if action.phase == "before" and self.holds(action.when, ctx, {**record, **changes}, record):
                self._run(action, ctx, entity, {**record, **changes}, record, changes)
        stored = self.records.store_update(ctx, entity, record, changes) if changes else None
        subject = stored or record
        for action in actions:
            if action.phase == "after" and self.holds(action.when, ctx, subject, record):
                self._run(action, ctx, entity, subject, record, None)

    # --- evaluating ------------------------------------------------------------------------------------
    def _variables(self, ctx: Context, expression: Expression, record: dict, old: dict | None):
        return context(expression.reads, {"record": record, "old": old, "now": ctx.now, "user": self._user(ctx),
                                          "today": ctx.now.astimezone(zone(self.timezone)).date().isoformat()})

    def holds(self, expression: Expression | None, ctx: Context, record: dict, old: dict | None) -> bool:
        """Whether a condition is true for ``record``; an error evaluating it is a 422 naming it."""
        if expression is None:
            return True
        try:
            return expression.evaluate(self._variables(ctx, expression, record, old)) is True
        except Exception as exc:
            raise Problem(422, "Condition failed", detail=f"'{expression.text}' could not be evaluated: "
                          f"{type(exc).__name__}: {exc}") from None

    def _user(self, ctx: Context) -> dict[str, Any]:
        return self.records.rules.cel_user(ctx)

    def _run(self, action: Action, ctx: Context, entity: Entity, record: dict, old: dict | None,
             values: dict | None) -> None:
        run = ActionRun(ctx.acting(), self.records, entity, record, old, values, self.timezone, self._user(ctx))
        try:
            action.kind.run(run, action.params)
        except Problem as problem:
            if problem.title == LOOP:
                raise
            detail = problem.detail or problem.title
            raise Problem(problem.status if problem.status < 500 else 422, "Action failed",
                          detail=f"{action.type} action on {entity.name}: {detail}", errors=problem.errors) from None


def _require(state, record: dict) -> None:
    """422 unless ``record`` has a value for every field ``state`` requires."""
    missing = [f for f in state.required if record.get(f) in (None, "", [])]
    if missing:
        raise Problem(422, "Validation failed", errors=[
            _error(f, "required_in_state", f"is required in state '{state.name}'") for f in missing])


def _error(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}
