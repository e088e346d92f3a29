"""Action types: what a workflow transition, an automation or a scheduled rule does.

An action is written as ``{<type>: <parameters>}`` (plus ``when:``). Each type is an
:class:`ActionType`: it checks its parameters once, when the config compiles (``compile``), and acts
at write time (``run``). Its ``phase`` says when:

- ``before``: it changes the record being saved (``set``, ``assign``); the record's computed fields,
  rules and hooks then see the change, and it is stored with the write itself;
- ``after``: it acts once the record is stored (``update``, ``create``, ``webhook``), in the same
  transaction: if it fails, the write and every action before it are undone.

Plugins add types through the ``loom_action_types`` hook.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .errors import Problem, did_you_mean
from .expressions import Expression, ExpressionError, compile_expression, context, reads_of
from .fieldtypes import FieldValueError
from .manifest import Entity, Field

if TYPE_CHECKING:
    from .runtime.context import Context
    from .runtime.pipeline import Records

__all__ = ["Action", "ActionError", "ActionRun", "ActionScope", "ActionType", "BUILTIN_ACTIONS", "compile_actions",
           "to_field_value", "value_converter"]


class ActionError(Exception):
    """A problem with an action's parameters, found when the config compiles.

    :ivar path: where below the action's own key the problem is (``("set", "amount")``).
    """

    def __init__(self, message: str, hint: str | None = None, path: tuple = (), code: str = "E137"):
        super().__init__(message)
        self.message, self.hint, self.path, self.code = message, hint, path, code


@dataclass(frozen=True)
class Action:
    """One compiled action: its type object, the parameters it compiled, and its ``when``."""

    type: str
    kind: ActionType
    params: Any
    when: Expression | None = None

    @property
    def phase(self) -> str:
        return self.kind.phase


@dataclass(frozen=True)
class ActionScope:
    """What an action's parameters are checked against when the config compiles.

    :ivar entity: the entity whose record triggers the action (``record.*`` in its expressions).
    :ivar protected: fields no action may set (workflow state fields: they move by transitions only).
    """

    entity: Entity
    entities: Mapping[str, Entity]
    protected: frozenset[str] = frozenset()

    def expression(self, text: Any, path: tuple = ()) -> Expression:
        """``text`` compiled over the triggering record; a bad one is an E135 at ``path``."""
        if not isinstance(text, str):
            text = _literal(text)
        try:
            return compile_expression(text, self.entity, self.entities["user"])
        except ExpressionError as exc:
            raise ActionError(exc.message, exc.hint, path, code="E135") from None

    def values(self, target: Entity, mapping: Any, path: tuple, *, owner: bool = True) -> dict[str, Expression]:
        """``{field: CEL}`` for fields of ``target``: each must exist and be settable."""
        if not isinstance(mapping, dict) or not mapping:
            raise ActionError("expected a mapping of field: CEL value", f"e.g. {{{_example(target)}: ...}}", path)
        result = {}
        settable = [f.name for f in target.user_fields if f.compute is None and f.rollup is None]
        for name, text in mapping.items():
            field = target.fields.get(name)
            if name == "owner" and owner:
                pass
            elif field is None or field.system:
                raise ActionError(f"{target.name} has no field '{name}' an action can set",
                                  did_you_mean(str(name), settable) or f"its fields: {', '.join(settable)}",
                                  (*path, name))
            elif field.compute is not None or field.rollup is not None:
                raise ActionError(f"{target.name}.{name} is computed; actions cannot set it", None, (*path, name))
            elif target.name == self.entity.name and name in self.protected or (target.name, name) in self.protected:
                raise ActionError(f"{target.name}.{name} is a workflow's state: it changes only by a transition",
                                  "fire the transition instead (a transition's `to`)", (*path, name))
            result[name] = self.expression(text, (*path, name))
        return result


class ActionType:
    """Base of every action type. Subclass it, set ``phase``, and implement ``compile`` and ``run``.

    ``compile(params, scope)`` checks the parameters written in the config (raise :class:`ActionError`
    with a message that says what to write instead) and returns what ``run`` needs; ``run(run, params)``
    acts. A ``before`` action changes ``run.values``; an ``after`` one writes through ``run.records``
    with ``run.ctx`` (Loom's rights, the write's transaction).
    """

    phase = "after"

    def compile(self, params: Any, scope: ActionScope) -> Any:
        return params

    def run(self, run: ActionRun, params: Any) -> None:
        raise NotImplementedError


@dataclass
class ActionRun:
    """One action at write time.

    :ivar ctx: the context of the action's own writes: the caller as actor, Loom's rights, the
        running transaction (:meth:`Context.acting`).
    :ivar record: the record as it will be stored (``before``) or as stored (``after``; on delete,
        the deleted record).
    :ivar values: ``before`` actions: the changes being saved, which they may add to.
    :ivar old: the stored values before an update (None on create).
    """

    ctx: Context
    records: Records
    entity: Entity
    record: dict[str, Any]
    old: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    timezone: str = "UTC"
    user: dict[str, Any] | None = None  # the caller, as expressions see ``user``

    def evaluate(self, expressions: Mapping[str, Expression]) -> dict[str, Any]:
        """Evaluate ``{name: expression}`` over this record (one CEL context for all of them)."""
        from .runtime.context import zone

        reads = reads_of(expressions.values())
        today = self.ctx.now.astimezone(zone(self.timezone)).date().isoformat()
        variables = context(reads, {"record": self.record, "old": self.old, "now": self.ctx.now, "today": today,
                                    "user": self.user or {"id": self.ctx.actor}})
        out = {}
        for name, expression in expressions.items():
            try:
                out[name] = expression.evaluate(variables)
            except Exception as exc:
                raise Problem(422, "Action failed", detail=f"'{expression.text}' could not be evaluated for "
                              f"{name}: {type(exc).__name__}: {exc}") from None
        return out

    def field_values(self, target: Entity, expressions: Mapping[str, Expression]) -> dict[str, Any]:
        """The values of ``expressions`` for fields of ``target``, each checked by its field type."""
        raw = self.evaluate(expressions)
        out, errors = {}, []
        for name, value in raw.items():
            if name == "owner":
                out[name] = None if value is None else int(value)
                continue
            try:
                out[name] = to_field_value(target.fields[name], value, self.timezone)
            except FieldValueError as exc:
                errors.append({"field": name, "code": exc.code,
                               "message": f"the action's value for {target.name}.{name} {exc.message}"})
        if errors:
            raise Problem(422, "Action failed", detail=f"an action gave {target.name} values that do not fit",
                          errors=errors)
        return out


def to_field_value(field: Field, value: Any, timezone: str = "UTC") -> Any:
    """A CEL result as a value of ``field``: a timestamp for a date field is its day in the app's
    time zone; a double for a decimal field is rounded to its scale; the field type checks the rest."""
    return value_converter(field, timezone)(value)


def value_converter(field: Field, timezone: str = "UTC") -> Callable[[Any], Any]:
    """:func:`to_field_value` for one field, with what depends only on the field worked out once
    (a write that computes fields converts their values on every save)."""
    parse = partial(field.field_type.parse, field)
    if field.type == "date":
        from .runtime.context import zone

        tz = zone(timezone)

        def day(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                value = value.astimezone(tz).date() if value.tzinfo else value.date()
            return None if value is None else parse(value)
        return day
    if "scale" in field.params:
        scale = field.params["scale"]
        return lambda value: None if value is None else parse(round(value, scale) if type(value) is float else value)
    if field.type in ("refs", "multi_enum"):
        return lambda value: None if value is None else parse(list(value) if isinstance(value, tuple) else value)
    return lambda value: None if value is None else parse(value)


def _literal(value: Any) -> str:
    """A YAML scalar written without quotes (``probability: 100``) as CEL text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    raise ActionError(f"expected a CEL expression, got {type(value).__name__}", "write text, e.g. \"'won'\"")


def _example(entity: Entity) -> str:
    return next((f.name for f in entity.user_fields), "field")


# --- the built-in types -------------------------------------------------------------------------------------


class SetFields(ActionType):
    """``set: {field: CEL, ...}``: fields of the triggering record, before it is saved."""

    phase = "before"

    def compile(self, params, scope):
        return scope.values(scope.entity, params, ())

    def run(self, run, params):
        run.values.update(run.field_values(run.entity, params))


class Assign(ActionType):
    """``assign: {team: <team name>}`` (round-robin over the team's active members, fair across every
    worker process) or ``assign: {user: <username>}``: the record's owner, before it is saved."""

    phase = "before"

    def compile(self, params, scope):
        if not isinstance(params, dict) or len(params) != 1 or next(iter(params)) not in ("team", "user") \
                or not isinstance(next(iter(params.values())), str):
            raise ActionError("assign takes one of team: <team name> or user: <username>",
                              "e.g. assign: {team: East sales}")
        return next(iter(params.items()))

    def run(self, run, params):
        kind, name = params
        run.values["owner"] = _team_member(run, name) if kind == "team" else _user_id(run, name)


def _user_id(run: ActionRun, username: str) -> int:
    users = run.records.store.tables["user"]
    row = run.ctx.conn.execute(sa.select(users.c.id, users.c.active).where(users.c.username == username)).first()
    if row is None or not row.active:
        raise Problem(422, "Action failed", detail=f"assign: no active user '{username}'; create or enable them, "
                      "or change the action")
    return row.id


def _team_member(run: ActionRun, team_name: str) -> int:
    """The next active member of the team, in id order, by a counter stored in the database (locked
    by the write's transaction, so concurrent writers never hand out the same turn)."""
    store, conn = run.records.store, run.ctx.conn
    teams, users = store.tables["team"], store.tables["user"]
    team_id = conn.execute(sa.select(teams.c.id).where(teams.c.name == team_name)).scalar()
    if team_id is None:
        raise Problem(422, "Action failed", detail=f"assign: no team named '{team_name}'; create it or change the action")
    join = store.metadata.tables[run.records.manifest.entities["user"].join_table("teams")]
    member, team = join.info["join"]
    members = conn.execute(sa.select(users.c.id).join(join, join.c[member] == users.c.id)
                           .where(join.c[team] == team_id, users.c.active.is_(True)).order_by(users.c.id)).scalars().all()
    if not members:
        raise Problem(422, "Action failed", detail=f"assign: team '{team_name}' has no active members")
    turn = next_counter(conn, store.metadata.tables["loom_counter"], f"assign:team:{team_id}")
    return members[(turn - 1) % len(members)]


def next_counter(conn: sa.Connection, counters: sa.Table, key: str) -> int:
    """Add one to the counter ``key`` and return it (1 the first time); row-locked until commit."""
    updated = conn.execute(counters.update().where(counters.c.key == key).values(value=counters.c.value + 1)
                           .returning(counters.c.value)).scalar()
    if updated is not None:
        return updated
    conn.execute(counters.insert().values(key=key, value=1))
    return 1


class UpdateRelated(ActionType):
    """``update: {ref: <ref field>, set: {field: CEL}}``: the record a ref field of this one points at
    (mark the unit sold when its deal is signed); nothing when the ref is empty."""

    def compile(self, params, scope):
        if not isinstance(params, dict) or set(params) != {"ref", "set"}:
            raise ActionError("update takes ref: <ref field> and set: {field: CEL}",
                              "e.g. update: {ref: account, set: {type: \"'customer'\"}}")
        refs = [f.name for f in scope.entity.user_fields if f.type == "ref"]
        field = scope.entity.fields.get(params["ref"])
        if field is None or field.type != "ref":
            raise ActionError(f"{scope.entity.name} has no ref field '{params['ref']}'",
                              did_you_mean(str(params["ref"]), refs) or f"its ref fields: {', '.join(refs) or 'none'}",
                              ("ref",))
        target = scope.entities[field.target]
        return field.name, target.name, scope.values(target, params["set"], ("set",), owner=False)

    def run(self, run, params):
        ref, target_name, values = params
        target_id = run.record.get(ref)
        if target_id is None:
            return
        target = run.records.manifest.entities[target_name]
        run.records.update(target, target_id, run.field_values(target, values), run.ctx, trusted=True)


class CreateRelated(ActionType):
    """``create: {entity: <entity>, set: {field: CEL, owner: CEL}}``: a new record (a follow-up task
    for the owner, due in three days)."""

    def compile(self, params, scope):
        if not isinstance(params, dict) or set(params) != {"entity", "set"}:
            raise ActionError("create takes entity: <entity> and set: {field: CEL}",
                              "e.g. create: {entity: activity, set: {subject: \"'Call ' + record.name\"}}")
        target = scope.entities.get(params["entity"])
        if target is None:
            raise ActionError(f"'{params['entity']}' is not an entity", did_you_mean(str(params["entity"]),
                              scope.entities), ("entity",))
        return target.name, scope.values(target, params["set"], ("set",))

    def run(self, run, params):
        target_name, values = params
        target = run.records.manifest.entities[target_name]
        data = run.field_values(target, values)
        owner = data.pop("owner", None)
        run.records.create(target, data, run.ctx, owner=owner, trusted=True)


class EmitWebhook(ActionType):
    """``webhook: {event: <name>}`` (or ``webhook: <name>``): tell the subscriptions of that event,
    with the record as its payload (delivered after commit by ``loom worker``). The event is one of the
    record's own entity (``opportunity.won`` in an action of ``opportunity``): its payload is that record,
    and the run_as users' rights to it decide who hears of it."""

    def compile(self, params, scope):
        from .webhooks import check_event, event_entity

        written = isinstance(params, dict) and set(params) == {"event"}
        event = params.get("event") if written else params
        path = ("event",) if written else ()
        if not isinstance(event, str) or not event.strip():
            raise ActionError("webhook takes event: <event name>", "e.g. webhook: {event: opportunity.won}")
        entity = scope.entity.name
        if "." not in event:
            raise ActionError(f"event '{event}' names no entity", f"write {entity}.{event}", path)
        found = check_event(event, scope.entities)
        if found:
            raise ActionError(*found, path)
        word = event.partition(".")[2]
        if word == "*":
            raise ActionError(f"'{event}' stands for every event of {entity}; an action emits one",
                              f"name it, e.g. {entity}.won", path)
        if event_entity(event) != entity:
            raise ActionError(f"an action on {entity} records emits {entity} events, not '{event}': its payload "
                              f"is the {entity} record", f"write {entity}.{word}", path)
        return event

    def run(self, run, params):
        run.records.outbox.enqueue(run.ctx.conn, run.ctx, params, run.entity, run.record, run.old)


BUILTIN_ACTIONS: dict[str, ActionType] = {
    "set": SetFields(), "assign": Assign(), "update": UpdateRelated(), "create": CreateRelated(),
    "webhook": EmitWebhook(),
}


def compile_actions(items: list, scope: ActionScope, types: Mapping[str, ActionType]) -> list[tuple[Action | None, ActionError | None, tuple]]:
    """Each written action compiled, or the error it has and where (path below the list)."""
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            result.append((None, ActionError("an action is a mapping: {<type>: <parameters>}",
                                             f"types: {', '.join(types)}"), (i,)))
            continue
        kinds = [k for k in item if k != "when"]
        if len(kinds) != 1:
            problem = ActionError(f"an action has exactly one type, not {len(kinds)} ({', '.join(map(str, kinds))})"
                                  if kinds else "the action names no type", f"types: {', '.join(types)}")
            result.append((None, problem, (i,)))
            continue
        kind = kinds[0]
        if kind not in types:
            result.append((None, ActionError(f"unknown action type '{kind}'", did_you_mean(str(kind), types)
                                             or f"types: {', '.join(types)}"), (i, kind)))
            continue
        try:
            when = scope.expression(item["when"], ("when",)) if item.get("when") is not None else None
            params = types[kind].compile(item[kind], scope)
        except ActionError as exc:
            path = (i, "when") if exc.path == ("when",) else (i, kind, *exc.path)
            result.append((None, exc, path))
            continue
        result.append((Action(kind, types[kind], params, when), None, (i,)))
    return result
