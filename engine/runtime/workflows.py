"""Firing workflow transitions, and telling a caller which ones they may fire now (and why not).

A transition is an update of the record that also moves its state field: it goes through the same
pipeline (locks, optimistic version, field security, rules, hooks, audit), with three extra checks
before it: the record is in one of the transition's ``from`` states, the caller has one of its
``roles``, and its ``when`` guard holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Problem, did_you_mean
from ..manifest import Entity, text_for
from .access import forbidden
from .context import Context
from .persistence import dump_record

if TYPE_CHECKING:
    from ..automation import Transition, Workflow
    from .pipeline import Records

__all__ = ["Transitions"]


class Transitions:
    """The transitions of one app's workflows, by entity."""

    def __init__(self, records: Records):
        self.records = records
        self.by_entity: dict[str, dict[str, tuple[Workflow, Transition]]] = {}
        for workflow in records.manifest.workflows.values():
            for transition in workflow.transitions.values():
                self.by_entity.setdefault(workflow.entity, {})[transition.name] = (workflow, transition)

    def of(self, entity: Entity) -> dict[str, tuple[Workflow, Transition]]:
        return self.by_entity.get(entity.name, {})

    def _find(self, entity: Entity, name: str) -> tuple[Workflow, Transition]:
        found = self.of(entity).get(name)
        if found is None:
            names = list(self.of(entity))
            close = did_you_mean(name, names)
            raise Problem(404, "Not found", detail=f"{entity.name} has no transition '{name}'"
                          + (f" ({close})" if close else "")
                          + (f"; its transitions: {', '.join(names)}" if names else ""))
        return found

    def refusal(self, ctx: Context, workflow: Workflow, transition: Transition, record: dict) -> Problem | None:
        """Why ``ctx``'s caller cannot fire ``transition`` on ``record`` now: a 409 (wrong state), 403
        (role) or 422 (guard), or None when they can."""
        state = record.get(workflow.field)
        if state not in transition.sources:
            return Problem(409, "Transition not available",
                           detail=f"{workflow.entity} {record['id']} is '{state}'; '{transition.name}' fires only from "
                           f"{', '.join(repr(s) for s in transition.sources) or 'no state'}",
                           errors=[_error(workflow.field, "state", f"is '{state}'")])
        access = ctx.access
        if transition.roles and access is not None:
            held = set(access.user.get("roles") or ())
            if not held & set(transition.roles):
                return forbidden(f"'{transition.name}' may be fired by {', '.join(transition.roles)} only; "
                                 f"your roles: {', '.join(sorted(held)) or 'none'}")
        if transition.when is not None:
            flow = self.records.flow
            try:
                passed = flow.holds(transition.when, ctx, record, None)
            except Problem as problem:
                return Problem(422, "Guard failed", detail=problem.detail,
                               errors=[_error("", "guard_error", problem.detail or "")])
            if not passed:
                message = text_for(transition.message, ctx.locale) if transition.message else \
                    f"the condition {transition.when.text} is not met"
                return Problem(422, "Guard failed", detail=f"'{transition.name}' cannot be fired: {message}",
                               errors=[_error("", "guard", message)])
        return None

    def fire(self, entity: Entity, record_id: int, name: str, ctx: Context, *, version: int | None = None,
             data: dict[str, Any] | None = None) -> dict:
        """Fire transition ``name``: move the record and store ``data`` (fields given with it, e.g. a
        lost reason) in one write; its actions run in the same transaction."""
        workflow, transition = self._find(entity, name)
        records = self.records
        data = data or {}
        if ctx.access is not None:
            ctx.access.require(entity, "update")
            ctx.access.check_writable(entity, data if isinstance(data, dict) else ())
        if isinstance(data, dict) and workflow.field in data:
            raise Problem(422, "Validation failed", errors=[_error(f"fields.{workflow.field}", "workflow",
                          f"the transition sets {workflow.field} to '{transition.to}'; leave it out")])
        changes = records.checked(entity, data, partial=True, ctx=ctx)
        with records.writing(ctx) as conn:  # the same transaction as every action of the transition
            old = records.current(conn, entity, record_id, version, ctx, "update")
            problem = self.refusal(ctx, workflow, transition, {**old, **changes})  # the guard sees the fields given
            if problem is not None:
                raise problem
            changes[workflow.field] = transition.to
            ctx.transition = (workflow.name, transition.name)
            try:
                record = records.store_update(ctx, entity, old, changes, transition)
            finally:
                ctx.transition = None
        records.emit(ctx, "loom_record_updated", entity=entity, old=old, record=record)
        records.emit(ctx, "loom_record_transitioned", entity=entity, old=old, record=record,
                      workflow=workflow.name, transition=transition.name)
        return records.visible(ctx, entity, dump_record(entity, record))

    def available(self, entity: Entity, record_id: int, ctx: Context) -> dict:
        """Every transition of the record's entity: whether the caller may fire it now, and if not, why;
        and the fields its target state requires that the record lacks (give them with the call)."""
        records = self.records
        names, rows = records.view(ctx, entity, [], ())
        with records.reading() as conn:
            record = records.store.fetch(conn, entity, record_id, rows=rows)
            if record is None:
                raise Problem(404, "Not found", detail=f"no {entity.name} with id {record_id}")
            may_change = ctx.access is None or (ctx.access.can(entity, "update") and records.store.in_rows(
                conn, entity, record_id, ctx.access.rows(entity, "update")))
        locale = ctx.locale
        items = []
        for workflow, transition in self.of(entity).values():
            reasons = [] if may_change else ["your roles do not allow you to change this record"]
            problem = self.refusal(ctx, workflow, transition, record)
            if problem is not None:
                reasons.append(problem.detail or problem.title)
            target = workflow.state(transition.to)
            items.append({
                "name": transition.name, "workflow": workflow.name, "label": text_for(transition.label, locale),
                "from": list(transition.sources), "to": transition.to, "allowed": not reasons, "reasons": reasons,
                "needs": [f for f in target.required if record.get(f) in (None, "", [])],
            })
        states = {w.field: record.get(w.field) for w, _ in self.of(entity).values()}
        return {"id": record_id, "version": record["version"], "states": states, "data": items}


def _error(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}
