"""What an admin list offers around its rows: the filter bar (one control per filterable field, built
from the field type's ``filter_ops``), the active filters as removable chips, the bulk actions the
caller may take, and each user's saved views (``loom_saved_view``).

The filter bar writes the API's own query syntax (``filter[field][op]=value``), so the list URL, the
API and a saved view all say the same thing and are checked by the same parser
(:func:`~loomcrm.engine.runtime.query.parse_list_params`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlencode

import sqlalchemy as sa
from litestar import Request, Response
from litestar.response import Redirect

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity, Manifest, text_for
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import FILTER_KEY, ListQuery, parse_list_params

from .messages import translator
from .views import display, label, level_of, list_columns, shown

__all__ = ["FilterInput", "FilterControl", "filter_controls", "active_filters", "filter_messages", "bulk_actions",
           "list_params", "chosen_refs", "view_query", "ref_target", "SavedViews", "FEW_CHOICES", "SYSTEM_FILTERS"]

#: A ref filter is a select of the target's records up to this many; past it, an id input with a lookup.
FEW_CHOICES = 50
#: System fields offered under "More filters" beside the entity's own.
SYSTEM_FILTERS = ("owner", "created_at", "updated_at")
#: System fields that hold a user's id (filtered by picking a user).
USER_FIELDS = ("owner", "created_by", "updated_by")
#: List URL parameters a saved view keeps (the page it was on is not part of a view).
VIEW_PARAMS = ("sort",)
TEXT_TYPES = frozenset({"string", "text", "email", "phone", "url"})
NUMBER_TYPES = frozenset({"integer", "decimal", "money"})
#: A record picked in a ref input: ``<title> #<id>`` (the lookup's options), ``#<id>`` or ``<id>``.
CHOSEN_ID = re.compile(r"(?:^#?|\s#)(\d{1,18})\s*$")
#: Loom's own field types; a plugin's type gets a plain text filter (contains, else equals).
BUILT_IN = TEXT_TYPES | NUMBER_TYPES | {"boolean", "date", "datetime", "enum", "multi_enum", "json", "ref", "refs"}
OP_SIGNS = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "∈"}


@dataclass(frozen=True)
class FilterInput:
    """One input of a filter control: the URL parameter it fills and what it holds now.

    :ivar key: the query parameter, ``filter[field][op]``.
    :ivar kind: ``text``, ``number``, ``date``, ``datetime-local`` or ``select``.
    :ivar caption: the word before it (``from``, ``to``, ``contains``: a message key), or "".
    """

    key: str
    kind: str
    value: str = ""
    caption: str = ""
    step: str | None = None


@dataclass(frozen=True)
class FilterControl:
    """The filter of one field in the filter bar.

    :ivar kind: ``choice`` (enum, multi_enum, boolean, a ref with few records: one select),
        ``range`` (dates, numbers: from/to), ``text`` (contains) or ``ref`` (an id with a lookup).
    :ivar options: ``(value, label)`` of a select, in the reader's language.
    :ivar target: the plural of a ref's target (the lookup's URL).
    :ivar primary: a list column (shown in the bar); others go under "More filters".
    :ivar lookup: a ``ref`` control whose target the caller may read: its records can be looked up.
    """

    name: str
    label: str
    kind: str
    inputs: tuple[FilterInput, ...]
    options: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    primary: bool = True
    lookup: bool = False

    @property
    def active(self) -> bool:
        return any(i.value for i in self.inputs)


def list_params(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The list query of a request: empty inputs (a blank filter) and the page's own ``_`` keys left out."""
    return [(k, v) for k, v in items if str(v).strip() != "" and not k.startswith("_")]


def chosen_refs(manifest: Manifest, entity: Entity, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``params`` with each ref filter's value read as an id: a record picked from the lookup reads
    ``<title> #<id>`` (as in the forms' ref inputs), a typed ``#12`` or ``12`` is the id itself."""
    result = []
    for key, value in params:
        match = FILTER_KEY.match(key)
        f = entity.fields.get(match.group(1)) if match else None
        if f is not None and ref_target(manifest, f) is not None:
            picked = CHOSEN_ID.search(value)
            value = picked.group(1) if picked else value
        result.append((key, value))
    return result


def filter_controls(manifest: Manifest, entity: Entity, access: Any, locale: str, params: list[tuple[str, str]],
                    columns: Iterable[str], ref_choices: dict[str, list[tuple[str, str]]]) -> list[FilterControl]:
    """The filter bar of ``entity``'s list for a caller: the list's columns first, then the other fields
    they may read and filter on (system fields ``owner``, ``created_at``, ``updated_at`` last). Hidden
    fields never appear. ``ref_choices`` holds a ref field's target records when they are few."""
    current = dict(params)
    columns = list(columns)
    names = [*columns, *(n for n, f in entity.fields.items() if not f.system and n not in columns),
             *(n for n in SYSTEM_FILTERS if n not in columns)]
    controls = []
    for name in names:
        f = entity.fields.get(name)
        if f is None or f.column is None or level_of(access, entity, name) == "hidden":
            continue
        control = _control(manifest, entity, name, locale, current, ref_choices.get(name), name in columns,
                           access)
        if control is not None:
            controls.append(control)
    return controls


def _control(manifest: Manifest, entity: Entity, name: str, locale: str, current: dict[str, str],
             choices: list[tuple[str, str]] | None, primary: bool, access: Any) -> FilterControl | None:
    f = entity.fields[name]
    ops = f.field_type.filter_ops
    text = label(f.label, locale) or name

    def one(op: str, kind: str, caption: str = "", step: str | None = None) -> FilterInput:
        key = f"filter[{name}][{op}]"
        return FilterInput(key, kind, current.get(key, ""), caption, step)

    def make(kind: str, inputs: tuple[FilterInput, ...], options=(), target=None, lookup=False) -> FilterControl:
        return FilterControl(name, text, kind, inputs, tuple(options), target, primary, lookup)

    options = tuple((o["value"], label(o.get("label"), locale) or o["value"]) for o in f.params.get("options", []))
    if f.type == "enum" and "eq" in ops:
        return make("choice", (one("eq", "select"),), options)
    if f.type == "multi_enum" and "contains" in ops:
        return make("choice", (one("contains", "select", "contains"),), options)
    if f.type == "boolean" and "eq" in ops:
        t = translator(locale)
        return make("choice", (one("eq", "select"),), (("true", t("yes")), ("false", t("no"))))
    if ref_target(manifest, f) is not None and "eq" in ops:
        target = manifest.entities[ref_target(manifest, f)]
        if choices is not None:
            return make("choice", (one("eq", "select"),), choices, target.plural)
        return make("ref", (one("eq", "text"),), (), target.plural, access is None or access.can(target, "read"))
    if f.type in ("date", "datetime") or f.type in NUMBER_TYPES:
        if not {"gte", "lte"} <= ops:
            return None
        kind = {"date": "date", "datetime": "datetime-local"}.get(f.type, "number")
        step = _step(f) if kind == "number" else None
        return make("range", (one("gte", kind, "from", step), one("lte", kind, "to", step)))
    if "contains" in ops and (f.type in TEXT_TYPES or f.type not in BUILT_IN):
        return make("text", (one("contains", "text", "contains"),))
    if "eq" in ops and f.type not in BUILT_IN:  # a plugin's type: its values typed as text
        return make("text", (one("eq", "text"),))
    return None


def ref_target(manifest: Manifest, f) -> str | None:
    """The entity a field's values point at: a ref's target, and ``user`` for the owner (a system field
    holding a user's id)."""
    if f.type == "ref":
        return f.target
    if f.system and f.name in USER_FIELDS and "user" in manifest.entities:
        return "user"
    return None


def _step(f) -> str:
    scale = f.params.get("scale")
    if f.type == "integer" or scale == 0:
        return "1"
    return "0." + "0" * (scale - 1) + "1" if scale else "any"


def active_filters(params: list[tuple[str, str]], controls: list[FilterControl],
                   t) -> list[dict[str, Any]]:
    """Every filter of the list's URL as a chip: ``{"text", "keys"}``, the keys to drop to remove it.
    Option values read as their labels, refs by the title when the filter bar knows it. A field the bar
    does not offer (hidden from the caller, unknown) is named as the URL names it, never by its label."""
    by_name = {c.name: c for c in controls}
    chips = []
    for key, value in params:
        match = FILTER_KEY.match(key)
        if not match:
            continue
        name, op = match.group(1), match.group(2) or "eq"
        control = by_name.get(name)
        field_label = control.label if control else name  # not in the bar (hidden, unknown): as typed
        names = dict(control.options) if control else {}
        is_ref = control is not None and control.target is not None
        shown = ", ".join(names.get(v, f"#{v}" if is_ref and v.isdigit() else v) for v in value.split(",")) \
            if names or is_ref else value
        if op == "contains":
            text = f"{field_label} {t('contains')} “{shown}”"
        elif op == "isnull":
            text = f"{field_label} {t('is_empty') if value.lower() in ('true', '1') else t('is_not_empty')}"
        elif op in ("gte", "lte") and control is not None and control.kind == "range":
            text = f"{field_label} {t('from') if op == 'gte' else t('to')} {shown}"
        else:
            text = f"{field_label} {OP_SIGNS.get(op, op)} {shown}"
        chips.append({"text": text, "keys": (key,)})
    return chips


def filter_messages(problem: Problem, controls: list[FilterControl]) -> tuple[dict[str, list[str]], list[str]]:
    """A 400 of :func:`parse_list_params` as messages by filter input (its parameter) and the rest."""
    keys = {i.key for c in controls for i in c.inputs}
    by_key: dict[str, list[str]] = {}
    general: list[str] = []
    for error in problem.errors or [{"field": "", "message": problem.detail or problem.title}]:
        key, message = str(error.get("field") or ""), str(error.get("message") or "")
        (by_key.setdefault(key, []) if key in keys else general).append(message)
    return by_key, general


def bulk_actions(entity: Entity, access: Any, transitions: dict, locale: str, t) -> list[tuple[str, str]]:
    """``(action, label)`` of what the caller may do to selected records: ``delete`` when their roles may
    delete the entity's records, ``transition:<name>`` for each transition they may fire (they may
    change records and hold one of its roles). Row scopes and guards are checked per record."""
    actions = []
    if access is None or access.can(entity, "delete"):
        actions.append(("delete", t("delete")))
    if access is None or access.can(entity, "update"):
        held = set(access.user.get("roles") or ()) if access is not None else set()
        for _workflow, transition in transitions.values():
            if access is None or not transition.roles or held & set(transition.roles):
                actions.append((f"transition:{transition.name}", text_for(transition.label, locale) or transition.name))
    return actions


def view_query(params: list[tuple[str, str]]) -> str:
    """The query text a saved view keeps: the filters and the sort of the list URL, not its page."""
    return urlencode([(k, v) for k, v in params if FILTER_KEY.match(k) or k in VIEW_PARAMS])


class SavedViews:
    """Users' saved views of lists, in ``loom_saved_view``: one user sees and deletes only their own."""

    def __init__(self, loom):
        self.loom = loom
        self.table: sa.Table = loom.metadata.tables["loom_saved_view"]

    def of(self, user_id: int, entity: Entity) -> list[dict[str, Any]]:
        """The user's views of ``entity``'s list, by name."""
        v = self.table
        with self.loom.engine.connect() as conn:
            rows = conn.execute(sa.select(v.c.id, v.c.name, v.c.query).where(
                v.c.user_id == user_id, v.c.entity == entity.name).order_by(v.c.name, v.c.id)).all()
        return [{"id": r.id, "name": r.name, "query": r.query, "params": parse_qsl(r.query)} for r in rows]

    def save(self, user_id: int, entity: Entity, name: str, query: str) -> int:
        """Save the view ``name`` (replacing the user's view of that name); 422 for a bad name."""
        name = " ".join(name.split())
        if not 1 <= len(name) <= 100:
            raise Problem(422, "Validation failed", detail="a view needs a name of 1 to 100 characters",
                          errors=[{"field": "name", "code": "length",
                                   "message": "a view needs a name of 1 to 100 characters"}])
        v = self.table
        with self.loom.records.writing(Context(actor=user_id)) as conn:
            found = conn.execute(sa.select(v.c.id).where(v.c.user_id == user_id, v.c.entity == entity.name,
                                                         v.c.name == name)).scalar()
            if found is not None:
                conn.execute(v.update().where(v.c.id == found).values(query=query))
                return found
            return conn.execute(v.insert().values(user_id=user_id, entity=entity.name, name=name, query=query,
                                                  created_at=dt.datetime.now(dt.UTC)).returning(v.c.id)).scalar_one()

    def delete(self, user_id: int, view_id: int) -> None:
        """Delete one of the user's views; 404 for another user's view (which looks like none)."""
        v = self.table
        with self.loom.records.writing(Context(actor=user_id)) as conn:
            done = conn.execute(v.delete().where(v.c.id == view_id, v.c.user_id == user_id))
        if done.rowcount == 0:
            raise Problem(404, "Not found", detail=f"you have no saved view {view_id}")


class ListPages:
    """The list pages of :class:`~.pages.AdminPages`: a list with its filter bar, saved views and bulk
    actions (a mixin: ``self`` is one)."""

    @cached_property
    def saved_views(self) -> SavedViews:
        return SavedViews(self.loom)

    def list_page(self, request: Request, ctx: Context, entity: Entity, *, params: list[tuple[str, str]] | None = None,
                  report: dict | None = None, status: int = 200) -> Response:
        """The list: a filter bar from the field types, sortable columns, keyset pages, the total, saved
        views and bulk actions. The URL holds the state (the API's query syntax); a bad filter value is
        shown inline (400), never an error page. An htmx request for ``#records`` gets the table only."""
        locale = self.locale(ctx)
        t = translator(locale)
        if params is None:
            params = chosen_refs(self.manifest, entity, list_params(request.query_params.multi_items()))
        columns = list_columns(self.manifest, entity, ctx.access, locale)
        choices = self.ref_choices(entity, ctx)
        controls = filter_controls(self.manifest, entity, ctx.access, locale, params, [c.name for c in columns],
                                   choices)
        rows, count, next_cursor, errors, general = [], None, None, {}, []
        try:
            query = parse_list_params(entity, params)
        except Problem as exc:
            if exc.status != 400:
                raise
            errors, general = filter_messages(exc, controls)
            status = 400
        else:
            query.expand = [c.name for c in columns if c.widget == "ref"]
            query.count = True
            page = self.records.list(entity, query, ctx)
            rows = [{"id": r["id"], "version": r.get("version"),
                     "cells": [display(c, shown(self.manifest, c, r.get(c.name)), locale) for c in columns]}
                    for r in page["data"]]
            count, next_cursor = page.get("count"), page.get("next_cursor")
        sort = dict(params).get("sort", "")
        current = view_query(params)
        views = [{**v, "current": sorted(v["params"]) == sorted(parse_qsl(current))}
                 for v in self.saved_views.of(ctx.actor, entity)] if ctx.actor is not None else []
        partial = request.headers.get("hx-request") == "true" and request.headers.get("hx-target") == "records"
        base = self.url(entity.plural)
        return self.render(
            request, "_table" if partial else "list", ctx, entity=entity,
            status=200 if partial else status,  # htmx swaps 2xx answers only: the message must reach the table
            columns=columns, rows=rows, count=count, next_cursor=next_cursor, sort=sort, params=params,
            query_without=lambda *keys: [(k, v) for k, v in params if k not in keys], list_url=base,
            controls=controls, filter_errors=errors, filter_general=general,
            chips=active_filters(params, controls, t),
            clear_url=base + ("?" + urlencode([("sort", sort)]) if sort else ""), query_text=urlencode(params),
            views=views, view_query=current, actions=bulk_actions(entity, ctx.access, self.records.transitions.of(entity),
                                                                  locale, t),
            can_create=ctx.access is None or ctx.access.can(entity, "create"), report=report, partial=partial,
            page_title=label(entity.plural_label, locale) or entity.plural)

    def ref_choices(self, entity: Entity, ctx: Context) -> dict[str, list[tuple[str, str]]]:
        """For each filterable ref field whose target has few records the caller may read, those records
        as ``(id, title)``: the filter bar offers them in a select."""
        found: dict[str, list[tuple[str, str]]] = {}
        for f in entity.fields.values():
            if ref_target(self.manifest, f) is None or f.column is None or \
                    (f.system and f.name not in SYSTEM_FILTERS) or level_of(ctx.access, entity, f.name) == "hidden":
                continue
            target = self.manifest.entities[ref_target(self.manifest, f)]
            if ctx.access is not None and not (ctx.access.can(target, "read")
                                               and level_of(ctx.access, target, target.title) != "hidden"):
                continue
            fields = ["id", target.title] if target.title in target.fields else ["id"]
            try:
                page = self.records.list(target, ListQuery(limit=FEW_CHOICES, fields=fields, sort=[
                    (target.fields["id"], False)]), ctx)
            except Problem:
                continue
            if page.get("next_cursor") is None:
                found[f.name] = [(str(r["id"]), str(r.get(target.title) or f"#{r['id']}")) for r in page["data"]]
        return found

    def bulk(self, request: Request, ctx: Context, entity: Entity, form) -> Response:
        """Apply a bulk action to the selected records (``ids``: ``id:version``; with ``_all``, every
        record of the page the form came from), each in its own transaction through the pipeline; the
        list comes back with how many succeeded and why the others did not."""
        t = translator(self.locale(ctx))
        action = str(form.get("action") or "")
        allowed = dict(bulk_actions(entity, ctx.access, self.records.transitions.of(entity), self.locale(ctx), t))
        if action not in allowed:
            raise Problem(403, "Forbidden", detail=f"you may not apply '{action}' to {entity.name} records")
        picked = form.getall("_page", []) if form.get("_all") else form.getall("ids", [])
        chosen: dict[int, int | None] = {}
        for item in picked:
            record_id, _, version = str(item).partition(":")
            if record_id.isdigit():
                chosen[int(record_id)] = int(version) if version.isdigit() else None
        done, failed = 0, []
        for record_id, version in chosen.items():
            try:
                if action == "delete":
                    self.records.delete(entity, record_id, ctx, version=version)
                else:
                    self.records.transitions.fire(entity, record_id, action.split(":", 1)[1], ctx, version=version)
                done += 1
            except Problem as exc:
                reasons = [str(e.get("message")) for e in exc.errors or () if e.get("message")]
                failed.append({"id": record_id, "reason": "; ".join([exc.detail or exc.title, *reasons][:3])})
        report = {"action": allowed[action], "done": done, "failed": failed, "empty": not chosen}
        params = list_params(parse_qsl(str(form.get("_query") or "")))
        return self.list_page(request, ctx, entity, params=[(k, v) for k, v in params if k != "cursor"],
                              report=report)

    def save_view(self, request: Request, ctx: Context, entity: Entity, form) -> Response:
        """Save the list's current filters and sort under a name, for the signed-in user only."""
        if ctx.access is not None:
            ctx.access.require(entity, "read")
        query = view_query(list_params(parse_qsl(str(form.get("_query") or ""))))
        parse_list_params(entity, parse_qsl(query))  # a view holds a query the list can run (400 otherwise)
        self.saved_views.save(ctx.actor, entity, str(form.get("name") or ""), query)
        return Redirect(self.url(entity.plural) + ("?" + query if query else ""), status_code=303)

    def delete_view(self, request: Request, ctx: Context, entity: Entity, view_id: int, form) -> Response:
        self.saved_views.delete(ctx.actor, view_id)
        query = str(form.get("_query") or "")
        return Redirect(self.url(entity.plural) + ("?" + urlencode(list_params(parse_qsl(query))) if query else ""),
                        status_code=303)

