"""The write and read pipeline every channel goes through.

``validate input -> loom_before_* hooks -> write (one transaction) -> loom_after_* hooks -> commit``

Reads go through here too, so later stages (row and field security) have one place to live.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pluggy
import sqlalchemy as sa
from sqlalchemy.exc import DataError, IntegrityError

from ..database import write_lock
from ..errors import Problem, did_you_mean
from ..fieldtypes import FieldValueError
from ..manifest import Entity, Manifest
from ..plugins import call_hook, emit_event
from .access import Policies, describe_reach, forbidden
from .audit import history_page, write_entries
from .automation import Flow
from .context import Context, zone
from .outbox import Outbox
from .persistence import Store, dump_record
from .query import ListQuery
from .rollups import Rollups
from .rules import RecordRules
from .workflows import Transitions

__all__ = ["Records"]


class Records:
    """Create, read, update and delete records of one app. Thread-safe; one per app.

    Every method takes a :class:`Context`; results are JSON-ready dicts (``dump_record``).
    """

    def __init__(self, manifest: Manifest, engine: sa.Engine, pm: pluggy.PluginManager, store: Store):
        self.manifest = manifest
        self.engine = engine
        self.pm = pm
        self.store = store
        self.sqlite = engine.dialect.name == "sqlite"
        self.rules = RecordRules(manifest)
        self.policies = Policies(manifest)
        self.rollups = Rollups(manifest, store)
        self.outbox = Outbox(manifest, store, self.policies)
        self.flow = Flow(self)
        self.transitions = Transitions(self)

    # --- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, ctx: Context) -> Iterator[sa.Connection]:
        """One write transaction. On SQLite, writers queue on a process lock and take the database
        lock up front (BEGIN IMMEDIATE), so concurrent writers wait instead of failing. An action's
        write (``ctx.conn`` already open) joins the running transaction: all or nothing."""
        if ctx.conn is not None:
            yield ctx.conn
            return
        lock = write_lock if self.sqlite else contextlib.nullcontext()
        deferred: list = []
        try:
            with lock, self.engine.connect().execution_options(loom_write=True) as conn, conn.begin():
                ctx.conn, ctx.deferred = conn, deferred
                yield conn
        finally:
            ctx.conn, ctx.deferred = None, None
        for name, kwargs in deferred:  # events of actions' writes, now that they are committed
            emit_event(self.pm, name, **kwargs)

    def emit(self, ctx: Context, name: str, **kwargs: Any) -> None:
        """An after-commit event: now, or when the running transaction commits (an action's write)."""
        kwargs["ctx"] = ctx
        if ctx.deferred is not None:
            ctx.deferred.append((name, kwargs))
        else:
            emit_event(self.pm, name, **kwargs)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn

    def _implemented(self, name: str) -> bool:
        """Whether any plugin implements hook ``name`` (checking saves the call on hot paths)."""
        return bool(getattr(self.pm.hook, name).get_hookimpls())

    def _run(self, name: str, **kwargs: Any) -> list:
        """Run a hook inside the write: a plugin's failure rolls the write back, naming the plugin."""
        return call_hook(self.pm, name, **kwargs) if self._implemented(name) else []

    def _write(self, ctx: Context, entity: Entity, operation: str, write):
        """Run the statements of a write through ``loom_write`` (straight, when no plugin wraps it)."""
        if len(self.pm.hook.loom_write.get_hookimpls()) == 1:
            return write()
        results = call_hook(self.pm, "loom_write", ctx=ctx, entity=entity, operation=operation, write=write)
        return results[0] if results else None

    def _check_record(self, ctx: Context, entity: Entity, operation: str, record: dict, old: dict | None,
                      passed: bool | None = None) -> None:
        """The plugins' last word before a write: vetoes (403), then whole-record checks (422)."""
        if self._implemented("loom_permission_veto"):
            reasons = [r for r in call_hook(self.pm, "loom_permission_veto", ctx=ctx, entity=entity,
                                            operation=operation, record=record) if r]
            if reasons:
                raise forbidden("; ".join(str(r) for r in reasons))
        if operation == "delete":
            return
        errors = self.rules.errors(ctx, entity, record, old, passed) if entity.rules else []
        if self._implemented("loom_validate_record"):
            errors += [{"field": str(e.get("field", "")), "code": str(e.get("code", "invalid")),
                        "message": str(e.get("message", ""))}
                       for result in call_hook(self.pm, "loom_validate_record", ctx=ctx, entity=entity,
                                               record=record, old=old) for e in result or ()]
        if errors:
            raise invalid(errors)

    # --- reading ---------------------------------------------------------------------------------
    def get(self, entity: Entity, record_id: int, ctx: Context, *, fields: list[str] | None = None,
            expand: list[str] = ()) -> dict:
        """One record: 404 if it does not exist or is outside the caller's read scope (the two look
        the same); only fields the caller may read."""
        names, rows = self.view(ctx, entity, [*(("fields", n) for n in fields or ()),
                                               *(("expand", n) for n in expand)], expand)
        with self.reading() as conn:
            record = self.store.fetch(conn, entity, record_id, names=names, rows=rows)
            if record is None:
                raise not_found(entity, record_id)
            out = dump_record(entity, record, fields and _with_id(fields))
            if expand:
                self.store.expand(conn, entity, list(expand), [record], [out], ctx.access)
        return out

    def list(self, entity: Entity, query: ListQuery, ctx: Context,
             extra_where: list[sa.ColumnElement] = ()) -> dict:
        """One page of the records the caller may read; filters, sorts and counts see only those."""
        uses = [*((f"filter[{f.field.name}]", f.field.name) for f in query.filters),
                *(("sort", f.name) for f, _ in query.sort), *(("fields", n) for n in query.fields or ()),
                *(("expand", n) for n in query.expand)]
        names, rows = self.view(ctx, entity, uses, query.expand)
        with self.reading() as conn:
            records, next_cursor, total = self.store.list(conn, entity, query, extra_where, names=names, rows=rows)
            fields = _with_id(query.fields) if query.fields else None
            dumped = [dump_record(entity, r, fields) for r in records]
            if query.expand:
                self.store.expand(conn, entity, query.expand, records, dumped, ctx.access)
        page: dict[str, Any] = {"data": dumped, "next_cursor": next_cursor}
        if query.count:
            page["count"] = total
        return page

    def view(self, ctx: Context, entity: Entity, uses: list[tuple[str, str]], expand) -> tuple:
        """The fields and rows a read may touch: ``(None, None)`` for unrestricted callers; 403 when
        the caller may not read the entity, a field the query uses, or an expanded entity."""
        access = ctx.access
        if access is None:
            return None, None
        access.require(entity, "read")
        access.check_readable(entity, uses)
        for name in expand:
            access.require(self.manifest.entities[entity.fields[name].target], "read")
        return access.readable(entity), access.rows(entity, "read")

    def visible(self, ctx: Context, entity: Entity, record: dict) -> dict:
        """``record`` without the fields the caller may not read (a write's answer)."""
        if ctx.access is None:
            return record
        readable = set(ctx.access.readable(entity))
        return {k: v for k, v in record.items() if k in readable}

    def _find(self, conn, entity: Entity, record_id: int, ctx: Context) -> None:
        """404 unless the record exists and the caller may read it."""
        rows = ctx.access.rows(entity, "read") if ctx.access is not None else None
        if self.store.fetch(conn, entity, record_id, names=("id",), rows=rows) is None:
            raise not_found(entity, record_id)

    def related(self, entity: Entity, record_id: int, relation_name: str, query: ListQuery, ctx: Context) -> dict:
        """The records of ``entity.relations[relation_name]`` that point at (or are linked to) a record."""
        relation = entity.relations[relation_name]
        child = self.manifest.entities[relation.entity]
        if ctx.access is not None:
            ctx.access.require(entity, "read")
            ctx.access.require(child, "read")
            holder = entity if relation.kind != "one_to_many" and relation.owner_side else child
            ctx.access.check_readable(holder, [(relation_name, relation.field)])
        with self.reading() as conn:
            self._find(conn, entity, record_id, ctx)
        child_table = self.store.tables[child.name]
        if relation.kind == "one_to_many":
            condition = child_table.c[child.fields[relation.field].column] == record_id
        else:
            owner = entity if relation.owner_side else child
            join = self.store.metadata.tables[owner.join_table(relation.field)]
            left, right = join.info["join"]
            mine, theirs = (left, right) if relation.owner_side else (right, left)
            condition = child_table.c.id.in_(sa.select(join.c[theirs]).where(join.c[mine] == record_id))
        return self.list(child, query, ctx, [condition])

    def history(self, entity: Entity, record_id: int, ctx: Context, *, limit: int, before: int | None) -> dict:
        """The audit trail of one record, newest first; also for records deleted since (for callers
        who may read every record of the entity). Values of hidden fields are redacted."""
        access = ctx.access
        if access is not None:
            access.require(entity, "read")
        with self.reading() as conn:
            exists = self.store.exists(conn, entity, [record_id])
            if exists and access is not None:
                self._find(conn, entity, record_id, ctx)
            elif access is not None and access.rows(entity, "read") is not None:
                raise not_found(entity, record_id)
            entries, next_before = history_page(conn, entity, record_id, limit=limit, before=before)
            if not entries and before is None and not exists:
                raise not_found(entity, record_id)
        if access is not None:
            entries = access.redact(entity, entries)
        return {"data": entries, "next_cursor": None if next_before is None else str(next_before)}

    # --- writing ---------------------------------------------------------------------------------
    def create(self, entity: Entity, data: dict[str, Any], ctx: Context, *, owner: int | None = None,
               trusted: bool = False) -> dict:
        """Create a record, owned by the caller (or by ``owner``). ``trusted`` (Loom's own code: actions,
        seed data) may also set read-only fields."""
        if ctx.access is not None:
            ctx.access.require(entity, "create")
            ctx.access.check_writable(entity, data if isinstance(data, dict) else ())
        values = self.checked(entity, data, partial=False, trusted=trusted, ctx=ctx)
        if owner is not None:
            values["owner"] = owner
        self.flow.start(entity, values)  # before the defaults: an expression may read the state
        self._apply_defaults(entity, values, ctx)
        missing = [f for f in entity.user_fields if f.required and values.get(f.name) is None]
        if missing:
            raise invalid([_error(f.name, "required", "is required") for f in missing])
        try:
            with self.writing(ctx) as conn:
                if self._implemented("loom_before_create"):
                    before = dict(values)
                    self._run("loom_before_create", ctx=ctx, entity=entity, data=values)
                    self._revalidate(entity, before, values)
                pending = self.flow.before_save(ctx, entity, "create", values, None)
                passed = self.rules.compute(ctx, entity, values, values, None)
                self._check_references(conn, entity, values, ctx)
                self._check_record(ctx, entity, "create", values, None, passed)
                values.update(created_at=ctx.now, updated_at=ctx.now, created_by=ctx.actor,
                              updated_by=ctx.actor, owner=values.get("owner", ctx.actor))
                def insert() -> dict:
                    stored = self.store.insert(conn, entity, values)
                    if self._write_links(conn, entity, stored["id"], values):
                        self.store.attach_links(conn, entity, [stored])
                    return stored

                record = self._write(ctx, entity, "create", insert)
                self._run("loom_after_create", ctx=ctx, entity=entity, record=record)
                self.flow.after_save(ctx, entity, "create", None, record, pending)
        except IntegrityError as exc:
            raise self._integrity_problem(entity, exc, values) from None
        except DataError as exc:
            raise data_problem(entity, exc) from None
        self.emit(ctx, "loom_record_created", entity=entity, record=record)
        return self.visible(ctx, entity, dump_record(entity, record))

    def update(self, entity: Entity, record_id: int, data: dict[str, Any], ctx: Context,
               version: int | None = None, *, trusted: bool = False) -> dict:
        """Change a record. ``trusted`` (Loom's own code only) may also set read-only fields."""
        if ctx.access is not None:
            ctx.access.require(entity, "update")
            ctx.access.check_writable(entity, data if isinstance(data, dict) else ())
        changes = self.checked(entity, data, partial=True, trusted=trusted, ctx=ctx)
        try:
            with self.writing(ctx) as conn:
                old = self.current(conn, entity, record_id, version, ctx, "update")
                record = self.store_update(ctx, entity, old, changes)
        except IntegrityError as exc:
            raise self._integrity_problem(entity, exc, changes) from None
        except DataError as exc:
            raise data_problem(entity, exc) from None
        if record is None:  # nothing to change: no new version, no conflict for others
            return self.visible(ctx, entity, dump_record(entity, old))
        self.emit(ctx, "loom_record_updated", entity=entity, old=old, record=record)
        return self.visible(ctx, entity, dump_record(entity, record))

    def store_update(self, ctx: Context, entity: Entity, old: dict, changes: dict, transition=None) -> dict | None:
        """Store ``changes`` (validated) of the locked record ``old`` in the running write, with hooks,
        workflow checks, automations, computed fields, rules and audit; None when nothing changes.
        ``transition`` (a workflow's, fired by :mod:`.workflows`) may move the state field."""
        conn = ctx.conn
        record_id = old["id"]
        if self._implemented("loom_before_update"):
            before = dict(changes)
            self._run("loom_before_update", ctx=ctx, entity=entity, old=dict(old), changes=changes)
            self._revalidate(entity, before, changes)
        if not changes:
            return None
        cleared = [n for n, v in changes.items() if v is None and entity.fields[n].required]
        if cleared:
            raise invalid([_error(n, "required", "is required and cannot be emptied") for n in cleared])
        pending = self.flow.before_save(ctx, entity, "update", changes, old, transition)
        passed = self.rules.compute(ctx, entity, {**old, **changes}, changes, old)
        self._check_references(conn, entity, changes, ctx)
        self._check_record(ctx, entity, "update", {**old, **changes}, old, passed)
        changes.update(updated_at=ctx.now, updated_by=ctx.actor)

        def update() -> dict:
            if not self.store.update(conn, entity, record_id, old["version"], changes):
                raise stale(entity, record_id, None)
            self._write_links(conn, entity, record_id, changes)
            return self.store.fetch(conn, entity, record_id)

        record = self._write(ctx, entity, "update", update)
        self._run("loom_after_update", ctx=ctx, entity=entity, old=old, record=record)
        self.flow.after_save(ctx, entity, "update", old, record, pending)
        return record

    def delete(self, entity: Entity, record_id: int, ctx: Context, version: int | None = None) -> None:
        if ctx.access is not None:
            ctx.access.require(entity, "delete")
        try:
            with self.writing(ctx) as conn:
                old = self.current(conn, entity, record_id, version, ctx, "delete")
                self._run("loom_before_delete", ctx=ctx, entity=entity, record=dict(old))
                self._check_record(ctx, entity, "delete", old, None)
                pending = self.flow.before_save(ctx, entity, "delete", {}, old)

                def delete() -> None:
                    if not self.store.delete(conn, entity, record_id, old["version"]):
                        raise stale(entity, record_id, None)

                self._write(ctx, entity, "delete", delete)
                self._run("loom_after_delete", ctx=ctx, entity=entity, record=old)
                self.flow.after_save(ctx, entity, "delete", old, None, pending)
        except IntegrityError:
            raise self._restrict_problem(entity, record_id) from None
        except DataError as exc:
            raise data_problem(entity, exc) from None
        self.emit(ctx, "loom_record_deleted", entity=entity, record=old)

    def reassign(self, from_user: int, to_user: int, ctx: Context,
                 entities: list[Entity] | None = None) -> dict[str, int]:
        """Give every record ``from_user`` owns to ``to_user`` (staff turnover), in one transaction.

        Each record's version goes up and its history gets a ``reassign`` entry for ``owner``; record
        hooks are not called one by one (it is a bulk operation). A restricted caller needs the right
        to change every record of each entity involved. Returns the count per entity.
        """
        users = self.store.tables["user"]
        with self.reading() as conn:
            found = dict(conn.execute(sa.select(users.c.id, users.c.active)
                                      .where(users.c.id.in_([from_user, to_user]))).all())
        errors = [_error(key, "not_found", f"no user with id {uid}")
                  for key, uid in (("from", from_user), ("to", to_user)) if uid not in found]
        if not errors and not found[to_user]:
            errors.append(_error("to", "inactive", f"user {to_user} is disabled; enable them first or choose "
                                                   "another user"))
        if errors:
            raise invalid(errors)
        counts: dict[str, int] = {}
        access = ctx.access
        with self.writing(ctx) as conn:
            for entity in entities or list(self.manifest.entities.values()):
                table = self.store.tables[entity.name]
                moved = conn.execute(sa.select(table.c.id, table.c.version).where(table.c.owner == from_user)).all()
                if not moved:
                    continue
                if access is not None and (not access.can(entity, "update") or access.rows(entity, "update")):
                    raise forbidden(f"reassigning needs the right to change every {entity.name} record; "
                                    f"your roles do not give it (user {from_user} owns {len(moved)})")
                conn.execute(table.update().where(table.c.owner == from_user).values(
                    owner=to_user, updated_at=ctx.now, updated_by=ctx.actor, version=table.c.version + 1))
                write_entries(conn, [{"at": ctx.now, "actor": ctx.actor, "channel": ctx.channel, "action": "reassign",
                                      "entity": entity.name, "record_id": record_id, "version": version + 1,
                                      "changes": {"owner": [from_user, to_user]}} for record_id, version in moved])
                counts[entity.name] = len(moved)
        return counts

    def current(self, conn, entity: Entity, record_id: int, version: int | None, ctx: Context,
                 operation: str) -> dict:
        """The stored record, locked for this write; 404 if absent (or unreadable for the caller),
        403 if readable but outside the caller's scope for ``operation``, 409 if not at ``version``."""
        access = ctx.access  # what the caller cannot read does not exist for them
        rows = access.rows(entity, "read") if access is not None else None
        record = self.store.fetch(conn, entity, record_id, for_update=True, rows=rows)
        if record is None:
            raise not_found(entity, record_id)
        if access is not None and not self.store.in_rows(conn, entity, record_id, access.rows(entity, operation)):
            verb = "change" if operation == "update" else operation
            raise forbidden(f"your roles allow you to {verb} only some {entity.name} records "
                            f"({describe_reach(access.policy.reach(entity.name, operation))}); "
                            f"{entity.name} {record_id} is not one of them")
        if version is not None and version != record["version"]:
            if version > record["version"]:
                raise Problem(409, "Version conflict", detail=f"{entity.name} {record_id} is at version "
                              f"{record['version']}; version {version} was never written",
                              errors=[_error("version", "stale", f"no such version: {version}")])
            raise stale(entity, record_id, record["version"])
        return record

    # --- validation ------------------------------------------------------------------------------
    def checked(self, entity: Entity, data: dict[str, Any], *, partial: bool, trusted: bool = False,
                ctx: Context | None = None) -> dict[str, Any]:
        """:meth:`validate`, and when that fails, also name the references that point nowhere (or, for
        a restricted caller, at records they cannot read), so one answer lists every problem (the happy
        path leaves that check to the foreign keys and :meth:`_check_references`)."""
        try:
            return self.validate(entity, data, partial=partial, trusted=trusted)
        except Problem as problem:
            refs = {}
            for f in entity.user_fields:
                if f.type == "ref" and isinstance(data, dict) and data.get(f.name) is not None:
                    try:
                        refs[f.name] = (f.target, f.field_type.parse(f, data[f.name]))
                    except FieldValueError:
                        continue
            access = ctx.access if ctx is not None else None
            if refs:
                with self.reading() as conn:
                    for name, (target_name, ref_id) in refs.items():
                        if not self._pointable(conn, self.manifest.entities[target_name], [ref_id], access):
                            problem.errors.append(_error(name, "not_found", f"no {target_name} with id {ref_id}"))
            raise

    def validate(self, entity: Entity, data: dict[str, Any], *, partial: bool, trusted: bool = False) -> dict[str, Any]:
        """Parse every value through its field type; one 422 Problem lists every bad field."""
        if not isinstance(data, dict):
            raise Problem(422, "Validation failed", errors=[_error("", "type", "the body must be a JSON object")])
        values, errors = {}, []
        for name, value in data.items():
            field = entity.fields.get(name)
            if field is None:
                hint = did_you_mean(str(name), [f.name for f in entity.user_fields])
                errors.append(_error(name, "unknown_field",
                                     f"'{entity.name}' has no field '{name}'" + (f" ({hint})" if hint else "")))
                continue
            if field.rollup is not None or field.compute is not None:  # not even for Loom's own code
                errors.append(_error(name, "read_only", "is computed from other records; it cannot be set"
                                     if field.rollup is not None else "is computed; it cannot be set"))
                continue
            if field.system or (field.read_only and not trusted):
                errors.append(_error(name, "read_only", "is read-only"))
                continue
            if value is None or (value == "" and field.type not in ("json",)):
                if field.required and (partial or not self._defaulted(entity, field)):
                    errors.append(_error(name, "required", "is required"))
                values[name] = None if field.type != "refs" else []
                continue
            try:
                values[name] = field.field_type.parse(field, value)
            except FieldValueError as exc:
                errors.append(_error(name, exc.code, exc.message))
        if not partial:
            errors += [_error(f.name, "required", "is required") for f in entity.user_fields
                       if f.required and f.name not in data and not self._defaulted(entity, f)]
        if errors:
            raise invalid(errors)
        return values

    def _defaulted(self, entity: Entity, field) -> bool:
        """Whether a new record gets a value for ``field`` when none is given: a default, a default
        expression, or the initial state of a workflow bound to it."""
        return (field.default is not None or field.dynamic_default is not None or field.default_expr is not None
                or any(w.field == field.name for w in self.flow.workflows.get(entity.name, ())))

    def _revalidate(self, entity: Entity, before: dict, after: dict) -> None:
        changed = {k: v for k, v in after.items() if k not in before or before[k] is not v}
        if changed:
            after.update(self.validate(entity, {k: v for k, v in changed.items()
                                                if entity.fields.get(k) is None or entity.fields[k].writable},
                                       partial=True))

    def _apply_defaults(self, entity: Entity, values: dict, ctx: Context) -> None:
        """Fill the fields a create leaves out: literal and dynamic defaults, then ``default_expr:``
        (which read the values given, the workflows' initial states and those defaults; a failing one
        is a 422 naming its field)."""
        for field in entity.user_fields:
            if field.name in values:
                continue
            if field.dynamic_default == "now":
                values[field.name] = ctx.now
            elif field.dynamic_default == "today":
                values[field.name] = ctx.now.astimezone(zone(self.manifest.timezone)).date() \
                    if field.type == "date" else ctx.now
            elif field.dynamic_default == "current_user":
                values[field.name] = ctx.actor
            elif field.default is not None:
                values[field.name] = field.default
        self.rules.defaults(ctx, entity, values)

    def _check_references(self, conn, entity: Entity, values: dict, ctx: Context) -> None:
        """A restricted caller may only point at records they can read: a reference to one outside
        their read scope is refused exactly like one to a record that does not exist."""
        access = ctx.access
        if access is None:
            return
        errors = []
        for field in entity.user_fields:
            if field.type not in ("ref", "refs") or values.get(field.name) in (None, []):
                continue
            target = self.manifest.entities[field.target]
            if access.can(target, "read") and access.rows(target, "read") is None:
                continue  # every existing record is readable; the foreign key checks existence
            ids = list(values[field.name]) if field.type == "refs" else [values[field.name]]
            missing = sorted(set(ids) - self._pointable(conn, target, ids, access))
            if missing:
                errors.append(_error(field.name, "not_found", f"no {target.name} with id {', '.join(map(str, missing))}"))
        if errors:
            raise invalid(errors)

    def _pointable(self, conn, target: Entity, ids: list[int], access) -> set[int]:
        """Which of ``ids`` exist and (for a restricted caller) are within their read scope."""
        if access is None:
            return self.store.exists(conn, target, ids)
        if not access.can(target, "read"):
            return set()
        return self.store.exists(conn, target, ids, access.rows(target, "read"))

    def _write_links(self, conn, entity: Entity, record_id: int, values: dict) -> bool:
        """Store many-to-many links given in ``values``; True if the entity has any refs fields."""
        has_links = False
        for field in entity.user_fields:
            has_links = has_links or field.type == "refs"
            if field.type == "refs" and field.name in values:
                ids = values[field.name] or []
                target = self.manifest.entities[field.target]
                missing = sorted(set(ids) - self.store.exists(conn, target, ids)) if ids else []
                if missing:
                    raise invalid([_error(field.name, "not_found",
                                          f"no {target.name} with id {', '.join(map(str, missing))}")])
                self.store.set_links(conn, entity, field, record_id, ids)
        return has_links

    # --- turning database errors into answers -------------------------------------------------------
    def _integrity_problem(self, entity: Entity, exc: IntegrityError, values: dict) -> Problem:
        message = str(exc.orig)
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or ""
        if "UNIQUE" in message or constraint.startswith("uq_") or "unique" in message.lower():
            fields = self._unique_fields(entity, message, constraint)
            return Problem(422, "Validation failed", errors=[
                _error(f, "unique", f"another {entity.name} already has this value") for f in fields
            ] or [_error("", "unique", "a record with these values already exists")])
        if "FOREIGN KEY" in message.upper() or constraint.startswith("fk_"):
            errors = []
            with self.reading() as conn:
                for field in entity.user_fields:
                    if field.type == "ref" and values.get(field.name) is not None:
                        target = self.manifest.entities[field.target]
                        if not self.store.exists(conn, target, [values[field.name]]):
                            errors.append(_error(field.name, "not_found",
                                                 f"no {target.name} with id {values[field.name]}"))
            return invalid(errors or [_error("", "reference", "a referenced record does not exist")])
        return Problem(409, "Conflict", detail="the change conflicts with a database constraint")

    def _unique_fields(self, entity: Entity, message: str, constraint: str) -> list[str]:
        columns: list[str] = []
        match = re.search(r"UNIQUE constraint failed: (.+)$", message)
        if match:
            columns = [part.strip().split(".")[-1] for part in match.group(1).split(",")]
        elif constraint:
            table = self.store.tables[entity.name]
            for c in table.constraints:
                if c.name == constraint:
                    columns = [col.name for col in c.columns]
        by_column = {f.column: f.name for f in entity.column_fields}
        return [by_column.get(c, c) for c in columns]

    def _restrict_problem(self, entity: Entity, record_id: int) -> Problem:
        blockers = []
        with self.reading() as conn:
            for relation in entity.relations.values():
                if relation.kind != "one_to_many":
                    continue  # link rows always cascade
                child = self.manifest.entities[relation.entity]
                field = child.fields[relation.field]
                if field.params.get("on_delete") == "restrict":
                    count = self.store.count_referencing(conn, child, field, record_id)
                    if count:
                        blockers.append(f"{count} {child.name} record(s) via {child.name}.{field.name}")
        detail = (f"{entity.name} {record_id} is still referenced by " + ", ".join(blockers)
                  + " (on_delete: restrict); delete or reassign those first") if blockers else \
            f"{entity.name} {record_id} is still referenced by other records"
        return Problem(409, "Record is in use", detail=detail)


def _with_id(names: list[str]) -> list[str]:
    return names if "id" in names else ["id", *names]


def _error(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}


def data_problem(entity: Entity, exc: DataError) -> Problem:
    """A value the database refused to store (input is checked against the field types first, so this
    is a value worked out past them, such as a plugin's)."""
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    return invalid([_error("", "out_of_range", f"the database cannot store this {entity.name}: {reason}")])


def invalid(errors: list[dict[str, str]]) -> Problem:
    return Problem(422, "Validation failed", errors=errors)


def not_found(entity: Entity, record_id: int) -> Problem:
    return Problem(404, "Not found", detail=f"no {entity.name} with id {record_id}")


def stale(entity: Entity, record_id: int, current: int | None) -> Problem:
    detail = f"{entity.name} {record_id} was changed by someone else"
    detail += f" (now at version {current})" if current is not None else ""
    return Problem(409, "Version conflict", detail=detail + "; reload it and apply your change again",
                   errors=[_error("version", "stale", detail)])
