"""The admin app's pages under ``/admin``: server-rendered jinja2 templates (``templates/admin/``), htmx for
partial updates, one CSS file of Loom's own.

Every write goes through the same record pipeline as the API (:class:`~loomcrm.engine.runtime.pipeline.Records`:
access, rules, hooks, audit, optimistic locking), on the ``admin`` channel. Forms carry a CSRF token
derived from the session (an attacker's page can neither read the cookie nor the token); every page
is sent with a Content-Security-Policy that allows Loom's own static files only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from litestar import MediaType, Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import Filter, ListQuery, parse_list_params

from .messages import translator
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
        if ctx is not None and ctx.locale:
            return ctx.locale
        chosen = request.cookies.get(LOCALE_COOKIE) if request is not None else None
        return chosen if chosen in self.manifest.locales else self.manifest.locales[0]

    @staticmethod
    def csrf(request: Request) -> str:
        """The form token of the request's session: an HMAC of the session secret."""
        secret = request.cookies.get(SESSION_COOKIE, "")
        return hmac.new(secret.encode(), b"loom-admin-csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request, form) -> None:
        given = form.get("_csrf") or request.headers.get("x-csrf-token", "")
        if not request.cookies.get(SESSION_COOKIE) or not hmac.compare_digest(str(given), self.csrf(request)):
            raise Problem(403, "Forbidden", detail="the form is out of date or did not come from this site; "
                          "reload the page and try again")

    def url(self, *parts: Any, **query: Any) -> str:
        path = "/".join([self.prefix, *(quote(str(p)) for p in parts)])
        pairs = [(k, v) for k, v in query.items() if v not in (None, "")]
        return path + ("?" + urlencode(pairs) if pairs else "")

    def entities_for(self, ctx: Context) -> list[Entity]:
        """The entities the caller may read, in config order."""
        return [e for e in self.manifest.entities.values() if ctx.access is None or ctx.access.can(e, "read")]

    def render(self, request: Request, template: str, ctx: Context | None, *, status: int = 200,
               entity: Entity | None = None, **values: Any) -> Response:
        """Render ``template`` (``<name>-<entity>.html`` first when there is an entity, so a project can
        override one entity's page) with what every page needs."""
        locale = self.locale(ctx, request)
        names = [f"admin/{template}-{entity.name}.html", f"admin/{template}.html"] if entity else \
            [f"admin/{template}.html"]
        page = self.env.select_template(names).render(
            t=translator(locale), locale=locale, locales=self.manifest.locales, prefix=self.prefix, url=self.url,
            csrf=self.csrf(request) if ctx is not None else "", user=self.user_name(ctx),
            nav=[{"plural": e.plural, "label": label(e.plural_label, locale)} for e in self.entities_for(ctx)]
            if ctx is not None else [], entity=entity, request_path=request.url.path,
            entity_label=(lambda e: label(e.label, locale)), **values)
        return Response(page, status_code=status, media_type=MediaType.HTML, headers=HEADERS)

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
                    message: str = "") -> Response:
        locale = self.locale(ctx)
        refs = [f.name for f in entity.user_fields if f.type in ("ref", "refs")
                and (ctx.access is None or ctx.access.level(entity, f.name) != "hidden")]
        record = self.records.get(entity, record_id, ctx, expand=refs)
        sections = form_sections(self.manifest, entity, ctx.access, locale, creating=False, include_system=True)
        shown_sections = [{"title": s.title, "fields": [
            {"view": v, "text": display(v, shown(self.manifest, v, record.get(v.name)), locale)} for v in s.fields]}
            for s in sections]
        transitions = self.records.transitions.available(entity, record_id, ctx)["data"] \
            if self.records.transitions.of(entity) else []
        history = self.timeline(entity, self.records.history(entity, record_id, ctx, limit=20, before=None)
                                .get("data", []), locale)
        title = record.get(entity.title) if entity.title in record else f"#{record_id}"
        return self.render(request, "record", ctx, entity=entity, record=record, sections=shown_sections, title=title,
                           transitions=transitions, history=history, message=message)

    def timeline(self, entity: Entity, entries: list[dict], locale: str) -> list[dict]:
        """History entries as the activity timeline shows them: who (by name), what, which fields (by label)."""
        t = translator(locale)
        names = self.user_names({e["actor"] for e in entries if e.get("actor")})
        verbs = {"create": t("created_by"), "update": t("changed"), "delete": t("deleted"),
                 "transition": t("transition")}
        shown = []
        for entry in entries:
            changes = entry.get("changes") or {}
            fields = [label(entity.fields[n].label, locale) if n in entity.fields else n
                      for n in changes if not n.startswith("$")]
            if entry.get("transition"):
                fields.insert(0, str(entry["transition"].get("name", "")))
            shown.append({"at": entry["at"], "actor_label": names.get(entry.get("actor")) or entry.get("channel", ""),
                          "verb": verbs.get(entry["action"], entry["action"]), "fields": fields})
        return shown

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
    def login_form(request: Request, next: str = "") -> Response:  # noqa: A002 - the query parameter's name
        return pages.render(request, "login", None, next=_safe_next(next, pages.prefix), error="")

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
                                username=username)
        response = Redirect(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session.secret, httponly=True, samesite="lax", path="/",
                            expires=int(session.expires_at.timestamp()) if session.expires_at else None,
                            secure=request.url.scheme == "https")
        return response

    @post("/logout", status_code=303)
    async def logout(request: Request) -> Response:
        form = await request.form()
        try:
            pages.check_csrf(request, form)
            ctx = await sync_to_thread(pages.caller, request)
        except (Problem, NotSignedIn):
            return Redirect(pages.url("login"), status_code=303)
        everywhere = ctx.actor if form.get("everywhere") else None
        await sync_to_thread(pages.auth.logout, request.cookies.get(SESSION_COOKIE), everywhere_for=everywhere)
        response = Redirect(pages.url("login"), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @post("/locale", status_code=303)
    async def choose_locale(request: Request) -> Response:
        """Remember the reader's language: on the user (``user.locale``) when signed in, and in a cookie."""
        form = await request.form()
        chosen = str(form.get("locale") or "")
        target = _safe_next(str(form.get("_next") or ""), pages.prefix)
        response = Redirect(target, status_code=303)
        if chosen not in pages.manifest.locales:
            return response
        try:
            pages.check_csrf(request, form)
            ctx = await sync_to_thread(pages.caller, request)
            users = pages.loom.entity("user")
            await sync_to_thread(lambda: pages.records.update(users, ctx.actor, {"locale": chosen},
                                                              Context(actor=ctx.actor, channel="admin"), trusted=True))
            pages.auth.forget()
        except (Problem, NotSignedIn):
            pass
        response.set_cookie(LOCALE_COOKIE, chosen, httponly=True, samesite="lax", path="/",
                            max_age=365 * 24 * 3600)
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
    return [Router(path=pages.prefix, route_handlers=[login_form, login, logout, choose_locale, home, listing,
                                                      new_form, record, edit_form, create, update, transition,
                                                      static], include_in_schema=False)]


def _safe_next(target: str, prefix: str) -> str:
    """Where to go after signing in: a path of the admin app only (never another site)."""
    if target.startswith(prefix + "/") or target == prefix:
        if not target.startswith("//") and "\\" not in target:
            return target
    return prefix + "/"

