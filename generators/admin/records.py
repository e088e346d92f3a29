"""The record pages of the admin app: a record with its related lists, activity and workflow buttons;
create and edit forms through the record pipeline; the global search and the reference lookup."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from litestar import MediaType, Request, Response
from litestar.datastructures import FormMultiDict
from litestar.response import Redirect
from markupsafe import escape

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity, text_for
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import Filter, ListQuery

from .messages import translator
from .security import HEADERS
from .views import (
    display,
    field_view,
    form_sections,
    label,
    level_of,
    list_columns,
    local_input,
    searchable_fields,
    shown,
)

#: Fields of the form that are not record fields.
FORM_KEYS = ("_csrf", "_version", "_next")
#: Rows a related list shows on a record page; hits per entity of the global search and of a ref lookup.
RELATED_ROWS, SEARCH_HITS, LOOKUP_HITS = 10, 5, 10
#: A chosen record in a ref input: ``<title> #<id>``.
REF_TEXT = re.compile(r"(?:^#?|\s#)(\d{1,18})\s*$")
CHOSEN = re.compile(r"\s*#\d{1,18}\s*$")
#: A field given with a transition: ``fields[<name>]`` (and its ``__present`` marker).
TRANSITION_FIELD = re.compile(r"^fields\[([^\[\]]+)\](.*)$")




class RecordPages:
    """The record, form, search and lookup pages of :class:`~.pages.AdminPages` (a mixin: ``self`` is one)."""

    def record_page(self, request: Request, ctx: Context, entity: Entity, record_id: int, *,
                    message: str = "", errors: list[dict] | None = None, values: dict | None = None,
                    failed: str = "", status: int = 200) -> Response:
        """A record: its fields by section, workflow buttons, related lists and activity. After a failed
        transition (``failed``), ``message`` and ``errors`` say why and ``values`` keep what was typed."""
        locale = self.locale(ctx)
        sections = form_sections(self.manifest, entity, ctx.access, locale, creating=False, include_system=True)
        refs = [v.name for s in sections for v in s.fields if v.target and self.may_read(ctx, self.by_plural[v.target])]
        record = self.records.get(entity, record_id, ctx, expand=refs)
        if isinstance(record.get("owner"), int):  # a user id: shown by the user's name
            record["owner"] = self.user_names({record["owner"]}).get(record["owner"]) or record["owner"]
        shown_sections = [{"title": s.title, "fields": [
            {"view": v, "text": display(v, shown(self.manifest, v, record.get(v.name)), locale)} for v in s.fields]}
            for s in sections]
        transitions = self.workflow_actions(entity, record_id, ctx, locale)
        field_errors: dict[str, list[str]] = {}
        general = []
        for error in errors or []:
            name = str(error.get("field") or "").removeprefix("fields.")
            (field_errors.setdefault(name, []) if name in entity.fields else general).append(error["message"])
        history = self.timeline(entity, self.records.history(entity, record_id, ctx, limit=20, before=None)
                                .get("data", []), locale, ctx=ctx)
        title = record.get(entity.title) if record.get(entity.title) not in (None, "") else f"#{record_id}"
        return self.render(request, "record", ctx, status=status, entity=entity, record=record,
                           sections=shown_sections, title=title, transitions=transitions, history=history,
                           message=message, general=general, field_errors=field_errors, failed=failed,
                           typed=values or {}, related=self.related_lists(entity, record_id, ctx, locale))

    def may_read(self, ctx: Context, entity: Entity, name: str | None = None) -> bool:
        """Whether the caller may read ``entity`` (and its field ``name``, when given)."""
        if ctx.access is None:
            return True
        return ctx.access.can(entity, "read") and (name is None or ctx.access.level(entity, name) != "hidden")

    def workflow_actions(self, entity: Entity, record_id: int, ctx: Context, locale: str) -> list[dict]:
        """The transitions from the record's current state as buttons: allowed or not (with the reasons:
        a role, a guard), and the inputs of the fields the target state requires that the record lacks
        (those the caller may see). Transitions from other states are left out."""
        if not self.records.transitions.of(entity):
            return []
        available = self.records.transitions.available(entity, record_id, ctx)
        fields = {w.name: w.field for w in self.manifest.workflows.values()}
        states = available["states"]
        # only what could happen from where the record is: the others would all say "wrong state"
        items = [item for item in available["data"]
                 if "*" in item["from"] or states.get(fields.get(item["workflow"])) in item["from"]]
        for item in items:
            item["inputs"] = [dataclasses.replace(field_view(self.manifest, entity, entity.fields[n], locale,
                                                             level_of(ctx.access, entity, n)), required=True)
                              for n in item["needs"] if n in entity.fields
                              and level_of(ctx.access, entity, n) != "hidden"]
        return items

    def related_lists(self, entity: Entity, record_id: int, ctx: Context, locale: str) -> list[dict]:
        """For each relation the caller may read: its first rows (the target's list columns), the count,
        where to see them all and how to add one that points here."""
        lists = []
        for name, relation in entity.relations.items():
            child = self.manifest.entities[relation.entity]
            many = relation.kind != "one_to_many"
            holder = entity if many and relation.owner_side else child
            if not (self.may_read(ctx, child) and self.may_read(ctx, holder, relation.field)):
                continue
            columns = [c for c in list_columns(self.manifest, child, ctx.access, locale)
                       if many or c.name != relation.field]
            expand = [c.name for c in columns if c.widget == "ref" and self.may_read(ctx, self.by_plural[c.target])]
            query = ListQuery(limit=RELATED_ROWS, count=True, expand=expand, sort=[(child.fields["id"], False)])
            try:
                page = self.records.related(entity, record_id, name, query, ctx)
            except Problem as exc:
                if exc.status == 403:
                    continue
                raise
            rows = [{"id": r["id"], "cells": [display(c, shown(self.manifest, c, r.get(c.name)), locale)
                                              for c in columns]} for r in page["data"]]
            field = None if many and relation.owner_side else child.fields.get(relation.field)
            may_link = field is not None and (ctx.access is None or (ctx.access.can(child, "create")
                                                                     and ctx.access.level(child, field.name) == "write"))
            lists.append({
                "name": name, "entity": child, "columns": columns, "rows": rows, "count": page.get("count"),
                "label": label(field.label, locale) if many and not relation.owner_side and field else "",
                "all_url": None if many else
                f"{self.prefix}/{quote(child.plural)}?filter[{relation.field}][eq]={record_id}",
                "new_url": self.url(child.plural, "new", **{relation.field: record_id})
                if may_link and not (many and relation.owner_side) else None,
            })
        return lists

    def timeline(self, entity: Entity, entries: list[dict], locale: str, *, ctx: Context | None = None) -> list[dict]:
        """History entries as the activity timeline shows them: who (by name), what (a transition by its
        label), and each changed field the caller may read, old -> new as display text."""
        t = translator(locale)
        names = self.user_names({e["actor"] for e in entries if e.get("actor")})
        verbs = {"create": t("created_by"), "update": t("changed"), "delete": t("deleted"),
                 "transition": t("transition")}
        access = ctx.access if ctx is not None else None
        views = {f.name: field_view(self.manifest, entity, f, locale, "read") for f in entity.fields.values()
                 if level_of(access, entity, f.name) != "hidden" and (not f.system or f.name == "owner")}
        ids: dict[str, set[int]] = {}
        for entry in entries:
            for name, change in (entry.get("changes") or {}).items():
                view = views.get(name)
                if view is not None and view.target and isinstance(change, list):
                    for value in change:
                        ids.setdefault(view.target, set()).update(
                            v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
        titles = {plural: self.titles(self.by_plural[plural], found, ctx) for plural, found in ids.items()}
        workflow = self.records.transitions.of(entity)
        shown_entries = []
        for entry in entries:
            changes = entry.get("changes") or {}
            fields = []
            if entry["action"] != "create":
                for name, change in changes.items():
                    view = views.get(name)
                    if view is None or not isinstance(change, list) or len(change) != 2:
                        continue
                    old, new = (self.text_of(view, v, titles.get(view.target, {}), locale) for v in change)
                    fields.append({"name": name, "label": view.label, "old": old, "new": new})
            step = ""
            if entry.get("transition"):
                found = workflow.get(entry["transition"].get("name", ""))
                step = text_for(found[1].label, locale) if found and found[1].label else \
                    str(entry["transition"].get("name", ""))
            shown_entries.append({"at": entry["at"], "actor_label": names.get(entry.get("actor"))
                                  or entry.get("channel", ""), "verb": verbs.get(entry["action"], entry["action"]),
                                  "transition": step, "fields": fields})
        return shown_entries

    def titles(self, target: Entity, ids: Any, ctx: Context | None) -> dict[int, str]:
        """``{id: title}`` of the records of ``target`` the caller may read (one query)."""
        ids = sorted({i for i in ids if isinstance(i, int)})
        ctx = ctx or Context(channel="admin")
        if not ids or not self.may_read(ctx, target, target.title) or target.title not in target.fields:
            return {}
        query = ListQuery(filters=[Filter(target.fields["id"], "in", ids)], limit=len(ids), fields=[target.title],
                          sort=[(target.fields["id"], False)])
        page = self.records.list(target, query, ctx)
        return {r["id"]: str(r.get(target.title) or f"#{r['id']}") for r in page["data"]}

    @staticmethod
    def text_of(view, value: Any, titles: dict[int, str], locale: str) -> str:
        """A value as text; ref ids by the title of their record when known."""
        if view.target and value is not None:
            if isinstance(value, list):
                value = [titles.get(v, v) if isinstance(v, int) else v for v in value]
            elif isinstance(value, int):
                value = titles.get(value, value)
        return display(view, value, locale)

    def user_names(self, ids: set[int]) -> dict[int, str]:
        """Display names of users, by id (one query), as Loom's own code reads them."""
        if not ids:
            return {}
        users = self.loom.entity("user")
        query = ListQuery(filters=[], limit=len(ids), fields=["id", "username", "name"])
        query.filters = [Filter(users.fields["id"], "in", sorted(ids))]
        page = self.records.list(users, query, Context(channel="admin"))
        return {u["id"]: u.get("name") or u.get("username") for u in page["data"]}

    def form_page(self, request: Request, ctx: Context, entity: Entity, record: dict | None, *,
                  values: dict | None = None, errors: list[dict] | None = None, status: int = 200,
                  notice: str = "", theirs: dict | None = None, differences: list[dict] | None = None) -> Response:
        """The create or edit form. A new record's form takes initial values from the query string
        (``?account=12``, as a related list's "New" link gives). Errors on inputs show beside them; the
        others (rules without fields, read-only fields, refusals) at the top."""
        locale = self.locale(ctx)
        creating = record is None
        sections = form_sections(self.manifest, entity, ctx.access, locale, creating=creating)
        views = {v.name: v for s in sections for v in s.fields}
        if creating and values is None:
            given = [(k, v) for k, v in request.query_params.multi_items() if k in views and views[k].editable]
            values = form_values(entity, FormMultiDict(given)) if given else {}
        data = dict(record or {})
        data.update(values or {})
        by_field: dict[str, list[str]] = {}
        general = []
        for error in errors or []:
            name = str(error.get("field") or "").split(".")[0].split("[")[0]
            view = views.get(name)
            if view is not None and view.editable:
                by_field.setdefault(name, []).append(error["message"])
            elif view is not None and not error["message"].startswith(f"{entity.name}.{name} "):
                general.append(f"{view.label}: {error['message']}")
            else:
                general.append(error["message"])
        ids: dict[str, set[int]] = {}
        for view in views.values():
            if view.target:
                value = data.get(view.name)
                ids.setdefault(view.target, set()).update(
                    v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
            elif view.widget == "datetime":
                data[view.name] = local_input(data.get(view.name), view.timezone)
        titles = {plural: self.titles(self.by_plural[plural], found, ctx) for plural, found in ids.items()}
        texts = {n: self.text_of(v, data.get(n), titles.get(v.target, {}), locale)
                 for n, v in views.items() if not v.editable}
        return self.render(request, "form", ctx, status=status, entity=entity, record=record, sections=sections,
                           data=data, errors=by_field, general=general, creating=creating, notice=notice,
                           theirs=theirs, differences=differences or [], titles=titles, texts=texts)

    def save(self, request: Request, ctx: Context, entity: Entity, record_id: int | None, form) -> Response:
        """Create or update from a submitted form, through the record pipeline. Errors come back inline
        with the input kept; a stale version shows what the other person changed beside the input."""
        data = form_values(entity, picked(entity, form))
        version = form.get("_version")
        since = int(version) if str(version or "").isdigit() else None
        try:
            if record_id is None:
                saved = self.records.create(entity, data, ctx)
            else:
                saved = self.records.update(entity, record_id, data, ctx, version=since)
        except Problem as exc:
            current = None if record_id is None else _quiet(lambda: self.records.get(entity, record_id, ctx))
            t = translator(self.locale(ctx))
            if exc.status == 409 and current is not None:
                return self.form_page(request, ctx, entity, {**current}, values=data, status=409,
                                      notice=t("conflict"), theirs=current,
                                      differences=self.differences(entity, record_id, since, data, current, ctx))
            notice = t("fix_errors") if exc.status == 422 else (exc.detail or exc.title)
            return self.form_page(request, ctx, entity, current, values=data, errors=exc.errors or [],
                                  status=exc.status, notice=notice)
        return Redirect(self.url(entity.plural, saved["id"]), status_code=303)

    def differences(self, entity: Entity, record_id: int, since: int | None, data: dict, current: dict,
                    ctx: Context) -> list[dict]:
        """What someone else changed since version ``since`` (from the history; without a version, the
        fields where the stored record and the input differ): each field's label, their value, the input."""
        locale = self.locale(ctx)
        changed: dict[str, None] = {}
        if since is not None:
            entries = _quiet(lambda: self.records.history(entity, record_id, ctx, limit=50, before=None)) or {}
            for entry in reversed(entries.get("data", [])):
                if entry.get("version", 0) > since:
                    changed.update(dict.fromkeys(entry.get("changes") or {}))
        if not changed:
            changed = dict.fromkeys(n for n in data if data[n] != current.get(n))
        views = {v.name: v for s in form_sections(self.manifest, entity, ctx.access, locale, creating=False)
                 for v in s.fields}
        ids: dict[str, set[int]] = {}
        for name in changed:
            view = views.get(name)
            if view is not None and view.target:
                for value in (current.get(name), data.get(name)):
                    ids.setdefault(view.target, set()).update(
                        v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
        titles = {plural: self.titles(self.by_plural[plural], found, ctx) for plural, found in ids.items()}
        return [{"name": n, "label": views[n].label,
                 "theirs": self.text_of(views[n], current.get(n), titles.get(views[n].target, {}), locale),
                 "yours": self.text_of(views[n], data[n], titles.get(views[n].target, {}), locale) if n in data
                 else None} for n in changed if n in views]

    def fire_transition(self, request: Request, ctx: Context, entity: Entity, record_id: int, name: str,
                        form) -> Response:
        """Fire a workflow transition from its button, with the fields its inline form gives
        (``fields[<name>]``); a refusal or an invalid field shows on the record page, the input kept."""
        pairs = []
        for key, value in form.multi_items():
            match = TRANSITION_FIELD.match(key)
            if match:
                pairs.append((match.group(1) + match.group(2), value))
        data = form_values(entity, picked(entity, FormMultiDict(pairs))) if pairs else {}
        version = form.get("_version")
        try:
            self.records.transitions.fire(entity, record_id, name, ctx, data=data,
                                          version=int(version) if str(version or "").isdigit() else None)
        except Problem as exc:
            if exc.status == 404:
                raise
            t = translator(self.locale(ctx))
            message = t("stale") if exc.status == 409 and exc.title == "Version conflict" else (exc.detail or exc.title)
            errors = exc.errors or []
            if exc.status == 422 and not exc.detail:
                message = t("fix_errors")
            return self.record_page(request, ctx, entity, record_id, message=message, errors=errors, values=data,
                                    failed=name, status=exc.status)
        return Redirect(self.url(entity.plural, record_id), status_code=303)

    def find(self, entity: Entity, text: str, ctx: Context, limit: int) -> list[dict]:
        """Up to ``limit`` records of ``entity`` the caller may read whose title or ``search:`` fields
        contain ``text`` (any case), or whose id it is (``12``, ``#12``); each with its title, and the
        field that matched when not the title. Empty ``text``: the newest records."""
        if not self.may_read(ctx, entity):
            return []
        fields = searchable_fields(entity, ctx.access)
        title = entity.title if self.may_read(ctx, entity, entity.title) and entity.title in entity.fields else None
        by_id = entity.fields["id"]
        searches: list[tuple[Any, list[Filter]]] = []
        number = text.lstrip("#")
        if number.isdigit() and len(number) < 19:
            searches.append((None, [Filter(by_id, "eq", int(number))]))
        if text:
            searches += [(f, [Filter(f, "contains", text)]) for f in fields]
        else:
            searches.append((None, []))
        hits: dict[int, dict] = {}
        locale = self.locale(ctx)
        for f, filters in searches:
            if len(hits) >= limit:
                break
            names = list(dict.fromkeys(n for n in (title, f.name if f is not None else None) if n))
            query = ListQuery(filters=filters, limit=limit, fields=names or ["id"],
                              sort=[(by_id, not text)])
            for row in self.records.list(entity, query, ctx)["data"]:
                if row["id"] in hits or len(hits) >= limit:
                    continue
                hits[row["id"]] = {
                    "id": row["id"], "title": str(row.get(title) or f"#{row['id']}") if title else f"#{row['id']}",
                    "field": label(f.label, locale) or f.name if f is not None and f.name != title else "",
                    "match": str(row.get(f.name) or "") if f is not None and f.name != title else "",
                }
        return list(hits.values())

    def search_page(self, request: Request, ctx: Context) -> Response:
        """The global search: up to :data:`SEARCH_HITS` records of each entity the caller may read."""
        text = str(request.query_params.get("q") or "").strip()[:200]
        locale = self.locale(ctx)
        groups = []
        if text:
            for entity in self.entities_for(ctx):
                hits = self.find(entity, text, ctx, SEARCH_HITS)
                if not hits:
                    continue
                title = entity.title if self.may_read(ctx, entity, entity.title) else None
                more = f"{self.prefix}/{quote(entity.plural)}?filter[{title}][contains]={quote(text)}" \
                    if title and len(hits) >= SEARCH_HITS else None
                groups.append({"entity": entity, "label": label(entity.plural_label, locale), "hits": hits,
                               "more_url": more})
        return self.render(request, "search", ctx, q=text, groups=groups)

    def lookup(self, request: Request, ctx: Context, entity: Entity) -> Response:
        """``<option>``s for a ref input's ``<datalist>``: records of the field's target (``?field=``; else
        of ``entity``) matching ``?q=`` (or the input's own value, as htmx sends it), in the caller's
        read scope. Each option reads ``<title> #<id>``, the form the ref inputs take."""
        params = request.query_params
        name = str(params.get("field") or "")
        target = entity
        if name:
            f = entity.fields.get(name)
            if f is None or f.target is None or not self.may_read(ctx, entity, name):
                raise Problem(404, "Not found", detail=f"{entity.name} has no ref field '{name}'")
            target = self.manifest.entities[f.target]
        typed = str(params.get("q") or (params.get(name) if name else "") or "").strip()
        text = (CHOSEN.sub("", typed).strip() or typed)[:200]  # "Acme #12" (a chosen record) looks for "Acme"
        hits = self.find(target, text, ctx, LOOKUP_HITS)
        body = "".join(f'<option value="{escape(h["title"])} #{h["id"]}">'
                       f'{escape(h["field"] + ": " + h["match"]) if h["field"] else ""}</option>' for h in hits)
        return Response(body, media_type=MediaType.HTML, headers=HEADERS)



def picked(entity: Entity, form) -> FormMultiDict:
    """The form with ref inputs read: a ref input shows the chosen record as ``<title> #<id>`` (the form
    the lookup's options take), which becomes the id; anything else is left for validation to judge."""
    pairs = []
    for key, value in form.multi_items():
        f = entity.fields.get(key[:-2] if key.endswith("[]") else key)
        if f is not None and f.type in ("ref", "refs") and isinstance(value, str):
            match = REF_TEXT.search(value)
            value = match.group(1) if match else value.strip()
        pairs.append((key, value))
    return FormMultiDict(pairs)


def form_values(entity: Entity, form) -> dict[str, Any]:
    """The record fields of a submitted form, as the API takes them: empty inputs are null, a checkbox
    is true when sent, multi-selects and refs lists are lists. Every posted field name goes through
    (so a forged read-only field meets the pipeline's refusal); other names are left out."""
    data: dict[str, Any] = {}
    for name in dict.fromkeys(k for k, _ in form.multi_items()):
        if name in FORM_KEYS or name.endswith("__present"):
            continue
        base = name[:-2] if name.endswith("[]") else name
        field = entity.fields.get(base)
        if field is None:
            continue
        values = [v for v in form.getall(name) if not (isinstance(v, str) and v.strip() == "")]
        if field.type == "boolean":
            data[base] = True
        elif field.type in ("multi_enum", "refs"):
            data[base] = [int(v) if field.type == "refs" and str(v).isdigit() else v for v in values]
        elif field.type == "ref":
            data[base] = int(values[0]) if values and str(values[0]).isdigit() else (values[0] if values else None)
        elif field.type == "json":
            import json

            try:
                data[base] = json.loads(values[0]) if values else None
            except ValueError:
                data[base] = values[0]
        else:
            data[base] = values[0] if values else None
    for key, _ in form.multi_items():  # an unchecked checkbox sends only its marker
        if key.endswith("__present"):
            base = key[: -len("__present")]
            if base in entity.fields and entity.fields[base].type == "boolean" and base not in data:
                data[base] = False
            if base in entity.fields and entity.fields[base].type in ("multi_enum", "refs") and base not in data:
                data[base] = []
    return data


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Problem:
        return None


