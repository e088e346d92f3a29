"""The admin app's pages under ``/admin``: server-rendered jinja2 templates (``templates/admin/``), htmx for
partial updates, one CSS file of Loom's own.

Every write goes through the same record pipeline as the API (:class:`~loomcrm.engine.runtime.pipeline.Records`:
access, rules, hooks, audit, optimistic locking), on the ``admin`` channel. Forms carry a CSRF token
derived from the session (an attacker's page can neither read the cookie nor the token); every page
is sent with a Content-Security-Policy that allows Loom's own static files only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from litestar import MediaType, Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import CacheControlHeader, FormMultiDict
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from markupsafe import escape

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity, text_for
from loomcrm.engine.plugins import AdminPage, call_hook
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import Filter, ListQuery, parse_list_params

from .lists import (
    FEW_CHOICES,
    SYSTEM_FILTERS,
    SavedViews,
    active_filters,
    bulk_actions,
    chosen_refs,
    filter_controls,
    filter_messages,
    list_params,
    ref_target,
    view_query,
)
from .messages import LANGUAGE_NAMES, translator
from .views import (
    display,
    field_view,
    form_sections,
    label,
    level_of,
    list_columns,
    local_input,
    searchable_fields,
)

__all__ = ["AdminPages", "admin_routers", "STATIC"]

STATIC = Path(__file__).resolve().parent.parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
LOCALE_COOKIE = "loom_locale"
#: Fields of the form that are not record fields.
FORM_KEYS = ("_csrf", "_version", "_next")
#: Rows a related list shows on a record page; hits per entity of the global search and of a ref lookup.
RELATED_ROWS, SEARCH_HITS, LOOKUP_HITS = 10, 5, 10
#: A chosen record in a ref input: ``<title> #<id>``.
REF_TEXT = re.compile(r"(?:^#?|\s#)(\d{1,18})\s*$")
CHOSEN = re.compile(r"\s*#\d{1,18}\s*$")
#: A field given with a transition: ``fields[<name>]`` (and its ``__present`` marker).
TRANSITION_FIELD = re.compile(r"^fields\[([^\[\]]+)\](.*)$")


class NotSignedIn(Exception):
    """The page needs a signed-in user: the handler sends the visitor to the sign-in page."""


class AdminPages:
    """What the handlers share: the app, its templates, the caller of a request, rendering."""

    def __init__(self, loom, prefix: str = "/admin"):
        self.loom, self.prefix = loom, prefix.rstrip("/")
        self.records, self.manifest, self.auth = loom.records, loom.manifest, loom.auth
        self.env = loom.templates
        self.by_plural = {e.plural: e for e in self.manifest.entities.values()}
        self.plugin_pages: list[AdminPage] = []  # set by admin_routers from loom_admin_pages

    # --- callers, tokens, rendering ----------------------------------------------------------------
    def caller(self, request: Request) -> Context:
        """The signed-in user of a page request (NotSignedIn without a valid session)."""
        if not request.cookies.get(SESSION_COOKIE):
            raise NotSignedIn
        try:
            ctx = self.auth.context(request.headers, request.cookies, channel="admin")
        except Problem as exc:
            if exc.status == 401:
                raise NotSignedIn from None
            raise
        if ctx.actor is None:
            raise NotSignedIn
        locales = self.manifest.locales
        own = ctx.access.user.get("locale") if ctx.access is not None else self.own_locale(ctx.actor)
        chosen = request.cookies.get(LOCALE_COOKIE)
        if own in locales:  # chosen with the language switch, on any device: beats the cookie and the browser
            ctx.locale = own
        elif chosen in locales:
            ctx.locale = chosen
        return ctx

    def own_locale(self, actor: int) -> str | None:
        """The ``user.locale`` of a user, where no roles give the caller's Access (which holds it)."""
        users = self.loom.entity("user")
        query = ListQuery(filters=[Filter(users.fields["id"], "eq", actor)], limit=1, fields=["id", "locale"])
        found = self.records.list(users, query, Context(channel="admin"))["data"]
        return found[0].get("locale") if found else None

    def locale(self, ctx: Context | None, request: Request | None = None) -> str:
        """The reader's language: the signed-in user's (their ``user.locale``, else the language cookie,
        else Accept-Language; see :meth:`caller`); for a visitor the cookie, else the first language of
        Accept-Language the app speaks; else the app's default (its first locale)."""
        if ctx is not None and ctx.locale:
            return ctx.locale
        locales = self.manifest.locales
        if request is None:
            return locales[0]
        chosen = request.cookies.get(LOCALE_COOKIE)
        if chosen in locales:
            return chosen
        for part in request.headers.get("accept-language", "").split(","):
            tag = part.split(";")[0].strip().replace("_", "-")
            for candidate in (tag, tag.split("-")[0]):
                if candidate in locales:
                    return candidate
        return locales[0]

    @staticmethod
    def csrf(request: Request) -> str:
        """The form token of the request's session: an HMAC keyed with the session secret, so it changes
        with every session, cannot be forged without the cookie, and does not reveal the secret."""
        secret = request.cookies.get(SESSION_COOKIE, "")
        return hmac.new(secret.encode(), b"loom-admin-csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request, form) -> None:
        """403 unless the form (``_csrf``) or the htmx header (``X-CSRF-Token``) carries the session's token.

        Every POST of a signed-in user is checked. Only the sign-in form goes without: before signing in
        there is no session to derive a token from, and a forged sign-in is stopped by the password
        (and the session cookie's ``SameSite=Lax``)."""
        given = str(form.get("_csrf") or request.headers.get("x-csrf-token") or "")
        if not request.cookies.get(SESSION_COOKIE) or not given or \
                not hmac.compare_digest(given.encode(), self.csrf(request).encode()):
            t = translator(self.locale(None, request))
            raise Problem(403, "Forbidden", detail=t("forbidden_form"))

    def url(self, *parts: Any, **query: Any) -> str:
        path = "/".join([self.prefix, *(quote(str(p)) for p in parts)])
        pairs = [(k, v) for k, v in query.items() if v not in (None, "")]
        return path + ("?" + urlencode(pairs) if pairs else "")

    def entities_for(self, ctx: Context) -> list[Entity]:
        """The entities the caller may read, in config order."""
        return [e for e in self.manifest.entities.values() if ctx.access is None or ctx.access.can(e, "read")]

    def render(self, request: Request, template: str, ctx: Context | None, *, status: int = 200,
               entity: Entity | None = None, headers: dict[str, str] | None = None, **values: Any) -> Response:
        """Render ``admin/<template>.html`` (``admin/<template>-<entity>.html`` first when there is an
        entity, so a project can override one entity's page; a name ending in ``.html`` as it is) with
        what every page needs (documented in docs/templates.md), sent with :data:`HEADERS`."""
        locale = self.locale(ctx, request)
        if template.endswith(".html"):
            names = [template]
        else:
            names = [f"admin/{template}-{entity.name}.html", f"admin/{template}.html"] if entity else \
                [f"admin/{template}.html"]
        signed_in = ctx is not None and ctx.actor is not None
        page = self.env.select_template(names).render(
            t=translator(locale), locale=locale, locales=self.manifest.locales, prefix=self.prefix, url=self.url,
            language_names=LANGUAGE_NAMES, csrf=self.csrf(request) if signed_in else "", signed_in=signed_in,
            user=self.user_name(ctx),
            nav=[{"plural": e.plural, "label": label(e.plural_label, locale)} for e in self.entities_for(ctx)]
            if signed_in else [], menu=self.menu(ctx, locale) if signed_in else [], entity=entity,
            request_path=request.url.path, entity_label=(lambda e: label(e.label, locale)), **values)
        return Response(page, status_code=status, media_type=MediaType.HTML, headers={**HEADERS, **(headers or {})})

    def owns(self, path: str) -> bool:
        """Whether ``path`` is the admin app's (its errors are pages, not the API's JSON)."""
        return path == self.prefix or path.startswith(self.prefix + "/")

    def error_response(self, request: Request, exc: Exception) -> Response:
        """An error raised outside a page's own handling (no such page, a wrong method, a malformed form,
        a bug) as the admin app's error page, with its headers, not the API's JSON."""
        status = exc.status if isinstance(exc, Problem) else getattr(exc, "status_code", 500)
        t = translator(self.locale(None, request))
        message = {403: t("not_allowed"), 404: t("not_found")}.get(status, t("error"))
        return self.render(request, "error", None, status=status, message=message, detail="", errors=[])

    def menu(self, ctx: Context, locale: str) -> list[dict[str, str]]:
        """The side nav's entries after the entities: the pages plugins add (``loom_admin_pages``)
        that the caller may open."""
        return [{"path": page.path, "url": self.url(*page.path.split("/")), "label": label(page.title, locale)}
                for page in self.plugin_pages if page.menu and (page.allowed is None or page.allowed(ctx))]

    def user_name(self, ctx: Context | None) -> str:
        if ctx is None or ctx.access is None:
            return ""
        user = ctx.access.user
        return str(user.get("name") or user.get("username") or "")

    def entity(self, plural: str) -> Entity:
        found = self.by_plural.get(plural)
        if found is None:
            raise Problem(404, "Not found", detail=f"no list called '{plural}'")
        return found

    # --- pages -------------------------------------------------------------------------------------
    def home(self, request: Request, ctx: Context) -> Response:
        locale = self.locale(ctx)
        cards = []
        for entity in self.entities_for(ctx):
            total = self.records.list(entity, ListQuery(limit=1, fields=["id"], count=True), ctx).get("count")
            cards.append({"plural": entity.plural, "label": label(entity.plural_label, locale), "count": total})
        return self.render(request, "home", ctx, cards=cards)

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

    def record_page(self, request: Request, ctx: Context, entity: Entity, record_id: int, *,
                    message: str = "", errors: list[dict] | None = None, values: dict | None = None,
                    failed: str = "", status: int = 200) -> Response:
        """A record: its fields by section, workflow buttons, related lists and activity. After a failed
        transition (``failed``), ``message`` and ``errors`` say why and ``values`` keep what was typed."""
        locale = self.locale(ctx)
        sections = form_sections(self.manifest, entity, ctx.access, locale, creating=False, include_system=True)
        refs = [v.name for s in sections for v in s.fields if v.target and self.may_read(ctx, self.by_plural[v.target])]
        record = self.records.get(entity, record_id, ctx, expand=refs)
        shown_sections = [{"title": s.title, "fields": [
            {"view": v, "text": display(v, shown(self.manifest, v, record.get(v.name)), locale)} for v in s.fields]}
            for s in sections]
        if isinstance(record.get("owner"), int):  # a user id: shown by the user's name
            record["owner"] = self.user_names({record["owner"]}).get(record["owner"]) or record["owner"]
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
        """The record's transitions as buttons: allowed or not (with the reasons), and the inputs of the
        fields the target state requires that the record lacks (those the caller may see)."""
        if not self.records.transitions.of(entity):
            return []
        items = self.records.transitions.available(entity, record_id, ctx)["data"]
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


def shown(manifest, view, value: Any) -> Any:
    """An expanded ref (the target record, as ``expand`` gives it) as the target's title, a list of them
    as a list of titles; anything else as it is."""
    if view.target is None or value is None:
        return value
    title = next(e.title for e in manifest.entities.values() if e.plural == view.target)

    def one(item: Any) -> Any:
        return item.get(title) or f"#{item.get('id')}" if isinstance(item, dict) else item
    return [one(v) for v in value] if isinstance(value, list) else one(value)


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Problem:
        return None


def admin_routers(loom, *, prefix: str = "/admin", pages: AdminPages | None = None) -> list[Router]:
    """The admin app's routes, and its static files (cached for a day; file names carry versions)."""
    pages = pages or AdminPages(loom, prefix)

    def guarded(fn: Callable[..., Response]) -> Callable[..., Response]:
        """Run a page: the sign-in page for visitors, an error page for refusals."""
        def run(request: Request, *args: Any) -> Response:
            try:
                ctx = pages.caller(request)
            except NotSignedIn:
                return Redirect(pages.url("login", next=request.url.path), status_code=303)
            try:
                return fn(request, ctx, *args)
            except Problem as exc:
                if exc.status == 401:
                    return Redirect(pages.url("login", next=request.url.path), status_code=303)
                t = translator(pages.locale(ctx))
                message = {403: t("not_allowed"), 404: t("not_found")}.get(exc.status, exc.title)
                return pages.render(request, "error", ctx, status=exc.status, message=message,
                                    detail=exc.detail or "", errors=exc.errors or [])
        return run

    @get("/login", sync_to_thread=False)
    def login_form(request: Request) -> Response:
        target = _safe_next(request.query_params.get("next", ""), pages.prefix)
        return pages.render(request, "login", None, next=target, error="")

    @post("/login", status_code=303)
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username") or ""), str(form.get("password") or "")
        target = _safe_next(str(form.get("_next") or ""), pages.prefix)
        address = request.client.host if request.client else "unknown"
        try:
            _, session = await sync_to_thread(pages.auth.login, username, password, address)
        except Problem as exc:
            t = translator(pages.locale(None, request))
            error = t("too_many") if exc.status == 429 else t("wrong_login")
            return pages.render(request, "login", None, status=exc.status, next=target, error=error,
                                username=username, headers={k: v for k, v in (exc.headers or {}).items()
                                                            if k.lower() == "retry-after"})
        response = Redirect(target, status_code=303, headers=HEADERS)
        response.set_cookie(SESSION_COOKIE, session.secret, httponly=True, samesite="lax", path="/",
                            expires=int(session.expires_at.timestamp()) if session.expires_at else None,
                            secure=request.url.scheme == "https")
        return response

    @post("/logout", status_code=303)
    async def logout(request: Request) -> Response:
        """End this session; with ``everywhere=1`` every session of the user (other browsers, devices)."""
        form = await request.form()
        try:
            ctx = await sync_to_thread(pages.caller, request)
        except NotSignedIn:
            response = Redirect(pages.url("login"), status_code=303, headers=HEADERS)
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response
        try:
            pages.check_csrf(request, form)
        except Problem as exc:  # a forged sign-out (it would end every session with everywhere=1)
            return pages.render(request, "error", ctx, status=403, message=translator(pages.locale(ctx))(
                "not_allowed"), detail=exc.detail or "", errors=[])
        everywhere = ctx.actor if form.get("everywhere") else None
        await sync_to_thread(pages.auth.logout, request.cookies.get(SESSION_COOKIE), everywhere_for=everywhere)
        response = Redirect(pages.url("login"), status_code=303, headers=HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @post("/locale", status_code=303)
    async def choose_locale(request: Request) -> Response:
        """Remember the reader's language: on the user (``user.locale``, so every later session and
        device has it) when signed in, and in a cookie (which is all a visitor on the sign-in page has;
        it changes nothing on the server, so that form carries no token)."""
        form = await request.form()
        chosen = str(form.get("locale") or "")
        target = _safe_next(str(form.get("_next") or ""), pages.prefix)
        response = Redirect(target, status_code=303, headers=HEADERS)
        if chosen not in pages.manifest.locales:
            return response
        try:
            ctx = await sync_to_thread(pages.caller, request)
        except NotSignedIn:
            ctx = None
        if ctx is not None:
            try:
                pages.check_csrf(request, form)
            except Problem as exc:
                return pages.render(request, "error", ctx, status=403, message=translator(pages.locale(ctx))(
                    "not_allowed"), detail=exc.detail or "", errors=[])
            users = pages.loom.entity("user")
            await sync_to_thread(lambda: pages.records.update(users, ctx.actor, {"locale": chosen},
                                                              Context(actor=ctx.actor, channel="admin"), trusted=True))
            pages.auth.forget()
        response.set_cookie(LOCALE_COOKIE, chosen, httponly=True, samesite="lax", path="/",
                            max_age=365 * 24 * 3600, secure=request.url.scheme == "https")
        return response

    @get("/", sync_to_thread=True)
    def home(request: Request) -> Response:
        return guarded(pages.home)(request)

    @get("/{plural:str}", sync_to_thread=True)
    def listing(request: Request, plural: FromPath[str]) -> Response:
        return guarded(lambda r, c: pages.list_page(r, c, pages.entity(plural)))(request)

    @get("/{plural:str}/new", sync_to_thread=True)
    def new_form(request: Request, plural: FromPath[str]) -> Response:
        def page(r: Request, c: Context) -> Response:
            entity = pages.entity(plural)
            if c.access is not None:
                c.access.require(entity, "create")
            return pages.form_page(r, c, entity, None)
        return guarded(page)(request)

    @get("/{plural:str}/{record_id:int}", sync_to_thread=True)
    def record(request: Request, plural: FromPath[str], record_id: FromPath[int]) -> Response:
        return guarded(lambda r, c: pages.record_page(r, c, pages.entity(plural), record_id))(request)

    @get("/{plural:str}/{record_id:int}/edit", sync_to_thread=True)
    def edit_form(request: Request, plural: FromPath[str], record_id: FromPath[int]) -> Response:
        def page(r: Request, c: Context) -> Response:
            entity = pages.entity(plural)
            return pages.form_page(r, c, entity, pages.records.get(entity, record_id, c))
        return guarded(page)(request)

    async def submitted(request: Request, action: Callable[[Request, Context, Any], Response]) -> Response:
        form = await request.form()

        def run(r: Request, c: Context) -> Response:
            pages.check_csrf(r, form)
            return action(r, c, form)
        return await sync_to_thread(guarded(run), request)

    @post("/{plural:str}/new", status_code=200)
    async def create(request: Request, plural: FromPath[str]) -> Response:
        return await submitted(request, lambda r, c, f: pages.save(r, c, pages.entity(plural), None, f))

    @post("/{plural:str}/{record_id:int}/edit", status_code=200)
    async def update(request: Request, plural: FromPath[str], record_id: FromPath[int]) -> Response:
        return await submitted(request, lambda r, c, f: pages.save(r, c, pages.entity(plural), record_id, f))

    @post("/{plural:str}/{record_id:int}/transitions/{name:str}", status_code=200)
    async def transition(request: Request, plural: FromPath[str], record_id: FromPath[int], name: FromPath[str]) -> Response:
        return await submitted(request, lambda r, c, f: pages.fire_transition(r, c, pages.entity(plural), record_id,
                                                                              name, f))

    @get("/{plural:str}/lookup", sync_to_thread=True)
    def lookup(request: Request, plural: FromPath[str]) -> Response:
        return guarded(lambda r, c: pages.lookup(r, c, pages.entity(plural)))(request)

    @post("/{plural:str}/bulk", status_code=200)
    async def bulk(request: Request, plural: FromPath[str]) -> Response:
        return await submitted(request, lambda r, c, f: pages.bulk(r, c, pages.entity(plural), f))

    @post("/{plural:str}/views", status_code=303)
    async def save_view(request: Request, plural: FromPath[str]) -> Response:
        return await submitted(request, lambda r, c, f: pages.save_view(r, c, pages.entity(plural), f))

    @post("/{plural:str}/views/{view_id:int}/delete", status_code=303)
    async def delete_view(request: Request, plural: FromPath[str], view_id: FromPath[int]) -> Response:
        return await submitted(request, lambda r, c, f: pages.delete_view(r, c, pages.entity(plural), view_id, f))

    list_handlers = [lookup, bulk, save_view, delete_view]  # the list page's own (issue 7: lists)

    @get("/search", sync_to_thread=True)
    def search(request: Request) -> Response:
        return guarded(pages.search_page)(request)
    static = create_static_files_router(path="/static", directories=[STATIC], name="admin_static",
                                        cache_control=CacheControlHeader(max_age=86400, public=True))
    pages.plugin_pages = admin_pages(loom, pages)
    shown = [plugin_page(pages, page, guarded) for page in pages.plugin_pages]

    def secured(response: Response) -> Response:
        """Every answer of the admin app (pages, redirects, files) carries :data:`HEADERS`; a header a
        handler set itself (the static files' Cache-Control) stays."""
        for name, value in HEADERS.items():
            if name not in response.headers:
                response.headers[name] = value
        return response

    def failed(request: Request, exc: Exception) -> Response:  # a function: litestar copies its handlers
        return pages.error_response(request, exc)

    return [Router(path=pages.prefix, route_handlers=[login_form, login, logout, choose_locale, home, *shown, listing,
                                                      new_form, record, edit_form, create, update, transition,
                                                      static, *list_handlers, search], include_in_schema=False, after_request=secured,
                   exception_handlers={Problem: failed, HTTPException: failed,
                                                         ValidationException: failed})]


#: Paths of the admin app itself, which a plugin's page may not take.
OWN_PATHS = frozenset({"login", "logout", "locale", "static", "search"})


def admin_pages(loom, pages: AdminPages) -> list[AdminPage]:
    """The pages plugins add (``loom_admin_pages``), checked: a path must be new and well formed."""
    found: list[AdminPage] = []
    taken = set(OWN_PATHS) | set(pages.by_plural)
    for result in call_hook(loom.pm, "loom_admin_pages", loom=loom):
        for page in result or ():
            path = page.path.strip("/")
            if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", path) or path.split("/")[0] in taken:
                raise ValueError(f"loom_admin_pages: the page path {page.path!r} is not allowed: use letters, "
                                 f"digits, '-', '_' and '/', not one of {', '.join(sorted(taken))}")
            taken.add(path)
            found.append(dataclasses.replace(page, path=path))
    return found


def plugin_page(pages: AdminPages, page: AdminPage, guarded: Callable[..., Callable[..., Response]]) -> Any:
    """The route handler of a plugin's page: signed-in users only, rendered like Loom's own pages."""
    def run(request: Request, ctx: Context) -> Response:
        if page.allowed is not None and not page.allowed(ctx):
            raise Problem(403, "Forbidden", detail=f"the page {page.path} is not for you")
        values = page.context(request, ctx) if page.context is not None else {}
        if isinstance(values, Response):
            return values
        return pages.render(request, page.template, ctx, title=label(page.title, pages.locale(ctx)),
                            current_page=page.path, **(values or {}))

    @get(f"/{page.path}", sync_to_thread=True)
    def show(request: Request) -> Response:
        return guarded(run)(request)
    return show


def _safe_next(target: str, prefix: str) -> str:
    """Where to go after signing in: a path of the admin app only (never another site)."""
    if target.startswith(prefix + "/") or target == prefix:
        if not target.startswith("//") and "\\" not in target:
            return target
    return prefix + "/"

