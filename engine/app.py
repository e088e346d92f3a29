"""Assemble a running Loom: Manifest + plugins + database + generated routes = a litestar app.

``Loom.from_project("examples/sales")`` gives the Python API (``loom.records``);
``loom.asgi()`` the web application. ``create_app()`` is the factory uvicorn workers call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property

import jinja2
import pluggy
import sqlalchemy as sa
from litestar import Litestar, MediaType, Request, Response, get
from litestar.config.app import AppConfig
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from loomcrm.generators.admin import AdminPages, admin_routers
from loomcrm.generators.models import build_models
from loomcrm.generators.routes import admin_router, auth_router, entity_router
from loomcrm.generators.tables import build_metadata
from loomcrm.generators.templates import template_environment
from loomcrm.generators.webhook_routes import webhook_router

from .compiler import compile_project
from .database import create_db_engine
from .errors import Problem
from .manifest import Manifest, text_for
from .plugins import call_hook
from .runtime.access import Access, Policies, access_for
from .runtime.auth import SESSION_COOKIE, Auth
from .runtime.context import Context
from .runtime.persistence import Store
from .runtime.pipeline import Records
from .runtime.subscriptions import Subscriptions

__all__ = ["Loom", "create_app", "ENV_PROJECT"]

log = logging.getLogger("loomcrm")
ENV_PROJECT = "LOOM_PROJECT"
PROBLEM_JSON = "application/problem+json"


@dataclass
class Loom:
    """One CRM, ready to serve: its Manifest, plugins, database engine and record pipeline."""

    manifest: Manifest
    pm: pluggy.PluginManager
    engine: sa.Engine
    metadata: sa.MetaData
    records: Records

    @classmethod
    def from_project(cls, path: str | os.PathLike, *, database_url: str | None = None,
                     plugins: list | None = None) -> Loom:
        manifest, pm = compile_project(path, plugins=plugins)
        return cls.from_manifest(manifest, pm, database_url=database_url)

    @classmethod
    def from_manifest(cls, manifest: Manifest, pm: pluggy.PluginManager, *, database_url: str | None = None) -> Loom:
        engine = create_db_engine(database_url or manifest.database_url)
        metadata = build_metadata(manifest)
        store = Store(manifest, metadata)
        return cls(manifest, pm, engine, metadata, Records(manifest, engine, pm, store))

    def entity(self, name: str):
        return self.manifest.entities[name]

    @cached_property
    def policies(self) -> Policies:
        return self.records.policies

    @cached_property
    def templates(self) -> jinja2.Environment:
        """Jinja2 templates: the project's ``templates/`` > plugins' folders > Loom's own."""
        return template_environment(self.manifest, self.pm, self.manifest.project_dirs)

    @cached_property
    def auth(self) -> Auth:
        """Sign-in, sessions and tokens of this app."""
        return Auth(self)

    def context(self, request: Request, channel: str = "api") -> Context:
        """The caller of an HTTP request (for routes a plugin adds); 401 without valid credentials
        where sign-in is required."""
        return self.auth.context(request.headers, request.cookies, channel=channel)

    def access(self, actor: int | None) -> Access | None:
        """What user ``actor`` may see and change; None (unrestricted) in a project without roles."""
        with self.engine.connect() as conn:
            return access_for(self.policies, self.records.store, conn, actor)

    def asgi(self, *, sync_to_thread: bool = True, debug: bool = False) -> Litestar:
        """The litestar application: ``/api/<plural>`` per entity, OpenAPI under ``/schema``."""
        models = build_models(self.manifest)
        auth = self.auth

        def api_context(request: Request) -> Context:
            return auth.context(request.headers, request.cookies)

        routers = [entity_router(self.records, e, models, sync_to_thread=sync_to_thread, api_context=api_context)
                   for e in self.manifest.entities.values()]
        routers.append(auth_router(auth, api_context, sync_to_thread=sync_to_thread))
        routers.append(admin_router(self.records, api_context, sync_to_thread=sync_to_thread))
        routers.append(webhook_router(Subscriptions(self.records), api_context, sync_to_thread=sync_to_thread))
        admin = AdminPages(self, self.manifest.admin_path)
        routers.extend(admin_routers(self, pages=admin))
        for handlers in call_hook(self.pm, "loom_routes", loom=self):
            routers.extend(handlers or ())

        def unexpected(request: Request, exc: Exception) -> Response:
            for problem in call_hook(self.pm, "loom_handle_exception", exc=exc):
                if isinstance(problem, Problem):
                    return problem_response(request, problem)
            if admin.owns(request.url.path):  # logged like any other, answered as a page
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return admin.error_response(request, exc)
            return unexpected_response(request, exc)

        def http_error(request: Request, exc: HTTPException) -> Response:
            """No such path or method: under the admin app a page, elsewhere problem+json."""
            if admin.owns(request.url.path):
                return admin.error_response(request, exc)
            return http_error_response(request, exc)

        def configure(app_config: AppConfig) -> AppConfig:
            self.pm.hook.loom_configure_app(app_config=app_config, manifest=self.manifest)
            return app_config

        templates = self.templates
        default_locale = self.manifest.locales[0]
        listed = [{"plural": e.plural, "plural_label": text_for(e.plural_label, default_locale),
                   "fields": len(e.user_fields)} for e in self.manifest.entities.values()]

        @get("/", include_in_schema=False, sync_to_thread=False, media_type=MediaType.HTML)
        def index() -> Response:
            page = templates.get_template("index.html").render(locale=default_locale, entities=listed,
                                                               admin_path=self.manifest.admin_path)
            return Response(page, media_type=MediaType.HTML, headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'self'"})

        return Litestar(
            route_handlers=[*routers, health, index],
            exception_handlers={Problem: problem_response, ValidationException: validation_response,
                                HTTPException: http_error, Exception: unexpected},
            openapi_config=OpenAPIConfig(
                title=f"{self.manifest.app_name} API", version="1", path="/schema",
                render_plugins=[SwaggerRenderPlugin()],
                description="Generated by Loom from the project's YAML config. Sign in with POST "
                "/api/auth/login (session cookie) or send 'Authorization: Bearer <token>' (POST /api/auth/tokens).",
                components=Components(security_schemes={
                    "token": SecurityScheme(type="http", scheme="bearer", description="A personal API token"),
                    "session": SecurityScheme(type="apiKey", name=SESSION_COOKIE, security_scheme_in="cookie"),
                }),
                security=[{"token": []}, {"session": []}],
            ),
            on_app_init=[configure],
            on_shutdown=[self.engine.dispose],
            debug=debug,
        )

    def close(self) -> None:
        self.engine.dispose()


@get("/health", include_in_schema=False, sync_to_thread=False)
def health() -> dict:
    return {"status": "ok"}


# --- every error becomes problem+json (RFC 9457) ------------------------------------------------


def problem_response(request: Request, exc: Problem) -> Response:
    return Response(exc.to_json(), status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers)


PYDANTIC_CODES = {"Field required": "required", "Extra inputs are not permitted": "unknown_field"}


def validation_response(request: Request, exc: ValidationException) -> Response:
    """Body validation by the generated models (query parameters are parsed by Loom itself)."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            errors.append({"field": str(item.get("key") or ""), "code": PYDANTIC_CODES.get(message, "invalid"),
                           "message": message})
    detail = None if errors else str(exc.detail)
    return problem_response(request, Problem(422, "Validation failed", detail=detail, errors=errors))


def http_error_response(request: Request, exc: HTTPException) -> Response:
    return problem_response(request, Problem(exc.status_code, _title(exc.status_code), detail=str(exc.detail),
                                             headers=dict(exc.headers or {})))


def unexpected_response(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return Response(Problem(500, "Internal Server Error", detail="an unexpected error occurred; it was logged")
                    .to_json(), status_code=500, media_type=PROBLEM_JSON)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def create_app() -> Litestar:
    """ASGI factory for ``uvicorn --factory`` (used by ``loom serve --workers N``)."""
    project = os.environ.get(ENV_PROJECT, ".")
    sync = os.environ.get("LOOM_SYNC_TO_THREAD", "1") != "0"
    return Loom.from_project(project).asgi(sync_to_thread=sync)

