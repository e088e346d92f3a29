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
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from litestar import MediaType, Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity
from loomcrm.engine.plugins import AdminPage, call_hook
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import Filter, ListQuery, parse_list_params

from .messages import LANGUAGE_NAMES, translator
from .views import display, form_sections, label, list_columns

__all__ = ["AdminPages", "admin_routers", "STATIC"]

STATIC = Path(__file__).resolve().parent.parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
LOCALE_COOKIE = "loom_locale"
#: Fields of the form that are not record fields.
FORM_KEYS = ("_csrf", "_version", "_next")


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
        chosen = request.cookies.get(LOCALE_COOKIE)
        if chosen in self.manifest.locales and not (ctx.access and ctx.access.user.get("locale")):
            ctx.locale = chosen
        return ctx

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
            language_names=LANGUAGE_NAMES, csrf=self.csrf(request) if signed_in else "", user=self.user_name(ctx),
            nav=[{"plural": e.plural, "label": label(e.plural_label, locale)} for e in self.entities_for(ctx)]
            if signed_in else [], menu=self.menu(ctx, locale) if signed_in else [], entity=entity,
            request_path=request.url.path, entity_label=(lambda e: label(e.label, locale)), **values)
        return Response(page, status_code=status, media_type=MediaType.HTML, headers={**HEADERS, **(headers or {})})

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

    def list_page(self, request: Request, ctx: Context, entity: Entity) -> Response:
        locale = self.locale(ctx)
        params = [(k, v) for k, v in request.query_params.multi_items() if v != "" and not k.startswith("_")]
        columns = list_columns(self.manifest, entity, ctx.access, locale)
        refs = [c.name for c in columns if c.widget == "ref"]
        query = parse_list_params(entity, params)
        query.expand = refs
        query.count = True
        if not query.sort:
            query.sort = []
        page = self.records.list(entity, query, ctx)
        rows = [{"id": r["id"], "cells": [display(c, shown(self.manifest, c, r.get(c.name)), locale) for c in columns]}
                for r in page["data"]]
        sort = dict(params).get("sort", "")
        return self.render(request, "list", ctx, entity=entity, columns=columns, rows=rows, count=page.get("count"),
                           next_cursor=page.get("next_cursor"), sort=sort, params=params,
                           query_without=lambda *keys: [(k, v) for k, v in params if k not in keys])

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
            item["inputs"] = [field_view(self.manifest, entity, entity.fields[n], locale,
                                         level_of(ctx.access, entity, n))
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
            field = child.fields.get(relation.field)
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
                  notice: str = "", theirs: dict | None = None) -> Response:
        locale = self.locale(ctx)
        creating = record is None
        sections = form_sections(self.manifest, entity, ctx.access, locale, creating=creating)
        data = dict(record or {})
        data.update(values or {})
        by_field: dict[str, list[str]] = {}
        general = []
        for error in errors or []:
            name = str(error.get("field") or "").split(".")[0].split("[")[0]
            (by_field.setdefault(name, []) if name in entity.fields else general).append(error["message"])
        return self.render(request, "form", ctx, status=status, entity=entity, record=record, sections=sections,
                           data=data, errors=by_field, general=general, creating=creating, notice=notice,
                           theirs=theirs)

    def save(self, request: Request, ctx: Context, entity: Entity, record_id: int | None, form) -> Response:
        """Create or update from a submitted form, through the record pipeline. Errors come back inline
        with the input kept; a stale version shows the other person's change."""
        data = form_values(entity, form)
        version = form.get("_version")
        try:
            if record_id is None:
                saved = self.records.create(entity, data, ctx)
            else:
                saved = self.records.update(entity, record_id, data, ctx,
                                            version=int(version) if str(version or "").isdigit() else None)
        except Problem as exc:
            current = None if record_id is None else _quiet(lambda: self.records.get(entity, record_id, ctx))
            t = translator(self.locale(ctx))
            if exc.status == 409 and current is not None:
                return self.form_page(request, ctx, entity, {**current}, values=data, status=409,
                                      notice=t("conflict"), theirs=current)
            notice = t("fix_errors") if exc.status == 422 else (exc.detail or exc.title)
            return self.form_page(request, ctx, entity, current, values=data, errors=exc.errors or [],
                                  status=exc.status, notice=notice)
        return Redirect(self.url(entity.plural, saved["id"]), status_code=303)


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


def admin_routers(loom, *, prefix: str = "/admin") -> list[Router]:
    """The admin app's routes, and its static files (cached for a day; file names carry versions)."""
    pages = AdminPages(loom, prefix)

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
    def listing(request: Request, plural: str) -> Response:
        return guarded(lambda r, c: pages.list_page(r, c, pages.entity(plural)))(request)

    @get("/{plural:str}/new", sync_to_thread=True)
    def new_form(request: Request, plural: str) -> Response:
        def page(r: Request, c: Context) -> Response:
            entity = pages.entity(plural)
            if c.access is not None:
                c.access.require(entity, "create")
            return pages.form_page(r, c, entity, None)
        return guarded(page)(request)

    @get("/{plural:str}/{record_id:int}", sync_to_thread=True)
    def record(request: Request, plural: str, record_id: int) -> Response:
        return guarded(lambda r, c: pages.record_page(r, c, pages.entity(plural), record_id))(request)

    @get("/{plural:str}/{record_id:int}/edit", sync_to_thread=True)
    def edit_form(request: Request, plural: str, record_id: int) -> Response:
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
    async def create(request: Request, plural: str) -> Response:
        return await submitted(request, lambda r, c, f: pages.save(r, c, pages.entity(plural), None, f))

    @post("/{plural:str}/{record_id:int}/edit", status_code=200)
    async def update(request: Request, plural: str, record_id: int) -> Response:
        return await submitted(request, lambda r, c, f: pages.save(r, c, pages.entity(plural), record_id, f))

    @post("/{plural:str}/{record_id:int}/transitions/{name:str}", status_code=200)
    async def transition(request: Request, plural: str, record_id: int, name: str) -> Response:
        def fire(r: Request, c: Context, form) -> Response:
            entity = pages.entity(plural)
            version = form.get("_version")
            try:
                pages.records.transitions.fire(entity, record_id, name, c,
                                               version=int(version) if str(version or "").isdigit() else None)
            except Problem as exc:
                if exc.status in (403, 404):
                    raise
                return pages.record_page(r, c, entity, record_id, message=exc.detail or exc.title)
            return Redirect(pages.url(entity.plural, record_id), status_code=303)
        return await submitted(request, fire)

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

    def failed(request: Request, exc: Exception) -> Response:
        """An error raised outside a page's own handling (a malformed form, a wrong method) as the
        admin app's error page, not the API's JSON."""
        status = exc.status if isinstance(exc, Problem) else getattr(exc, "status_code", 500)
        t = translator(pages.locale(None, request))
        message = {403: t("not_allowed"), 404: t("not_found")}.get(status, t("error"))
        return pages.render(request, "error", None, status=status, message=message, detail="", errors=[])

    return [Router(path=pages.prefix, route_handlers=[login_form, login, logout, choose_locale, home, *shown, listing,
                                                      new_form, record, edit_form, create, update, transition,
                                                      static], include_in_schema=False, after_request=secured,
                   exception_handlers={Problem: failed, HTTPException: failed})]


#: Paths of the admin app itself, which a plugin's page may not take.
OWN_PATHS = frozenset({"login", "logout", "locale", "static"})


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

