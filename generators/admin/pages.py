"""The admin app's core under ``/admin``: who is calling (the API's session cookie), CSRF tokens, rendering
with the headers of ``security.py``, sign-in and sign-out, the language switch, the home page, and the
routes of every page. :class:`AdminPages` gathers the list pages (``lists.ListPages``) and the record
pages (``records.RecordPages``).

Every write goes through the same record pipeline as the API (:class:`~loomcrm.engine.runtime.pipeline.Records`:
access, rules, hooks, audit, optimistic locking), on the ``admin`` channel. Forms carry a CSRF token
derived from the session (an attacker's page can neither read the cookie nor the token).
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
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity
from loomcrm.engine.plugins import AdminPage, call_hook
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import Filter, ListQuery

from .lists import (
    ListPages,
)
from .messages import LANGUAGE_NAMES, translator
from .records import RecordPages
from .security import HEADERS
from .views import (
    label,
)

__all__ = ["AdminPages", "admin_routers", "STATIC"]

STATIC = Path(__file__).resolve().parent.parent / "static"
LOCALE_COOKIE = "loom_locale"


class NotSignedIn(Exception):
    """The page needs a signed-in user: the handler sends the visitor to the sign-in page."""


class AdminPages(ListPages, RecordPages):
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

