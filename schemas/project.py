"""Spec models for the project file ``loom.yaml`` and the shape every config file shares."""

from __future__ import annotations

from pydantic import Field

from .automation import AutomationSpec, ScheduleSpec, WebhookSpec, WorkflowSpec
from .entity import EntitySpec, SpecModel
from .security import RoleSpec

__all__ = ["AppSpec", "AuditSpec", "AuthSpec", "ConfigFileSpec", "DatabaseSpec", "PROJECT_ONLY_KEYS"]


class AppSpec(SpecModel):
    """Who the CRM is for and how it speaks."""

    name: str = Field(description="Application name, shown in the API docs and the admin app.")
    locales: list[str] = Field(default_factory=lambda: ["en"], min_length=1, description="First is default.")
    timezone: str = Field("UTC", description="IANA time zone for `today` and reports.")
    phone_region: str | None = Field(
        None, description="ISO 3166 region for phone numbers written without a country code (e.g. CN, DE)."
    )
    admin_path: str = Field("/admin", pattern=r"^/[a-z0-9][a-z0-9_-]*$",
                            description="Where the admin web app is served, e.g. /admin or /crm.")


class DatabaseSpec(SpecModel):
    url: str = Field(
        "sqlite:///loom.db",
        description=(
            "SQLAlchemy URL. Relative SQLite paths are relative to loom.yaml. "
            "The LOOM_DATABASE_URL environment variable overrides it."
        ),
    )


class AuditSpec(SpecModel):
    """The audit trail: one row per create, update and delete, written in the same transaction."""

    retain_days: int | None = Field(
        None, ge=1, description="Delete audit rows older than this (`loom purge-audit`); default: keep forever."
    )


class AuthSpec(SpecModel):
    """How people and programs sign in."""

    required: bool = Field(
        True, description="Every API request must be signed in (session cookie or API token). "
        "Turn off only for a local prototype: anonymous requests then act as nobody."
    )
    session_hours: int = Field(12, ge=1, le=24 * 90, description="How long a web sign-in lasts.")
    max_failures: int = Field(5, ge=1, le=100, description="Failed sign-ins per account, and per address, "
                              "within `lockout_minutes` before further attempts are refused (429).")
    lockout_minutes: int = Field(15, ge=1, le=24 * 60)


class ConfigFileSpec(SpecModel):
    """Any Loom config file. Only the project file (loom.yaml) may set app, extends, remove, include,
    database, plugins, audit and auth."""

    app: AppSpec | None = None
    extends: str | None = Field(
        None, description="The base config this one builds on, without editing it: a directory holding "
        "loom.yaml or a loom.yaml path (relative to this file), or an installed Python package whose "
        "directory holds loom.yaml. This project's files are merged on top of the base.")
    remove: list[str] = Field(
        default_factory=list, description="What to take out of the base, as dotted paths: entities.E, "
        "entities.E.fields.F, entities.E.fields.F.options.V, roles.R, roles.R.entities.E, roles.R.fields.E.F.")
    include: list[str] = Field(default_factory=list, description="Glob patterns, relative to loom.yaml.")
    database: DatabaseSpec | None = None
    plugins: list[str] = Field(default_factory=list, description="Python modules or entry-point names.")
    audit: AuditSpec | None = None
    auth: AuthSpec | None = None
    roles: dict[str, RoleSpec] = Field(default_factory=dict)
    entities: dict[str, EntitySpec] = Field(default_factory=dict)
    workflows: dict[str, WorkflowSpec] = Field(default_factory=dict, description="State machines by name.")
    automations: dict[str, AutomationSpec] = Field(default_factory=dict, description="Actions on record events, by name.")
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict, description="Time-based rules run by `loom worker`.")
    webhooks: dict[str, WebhookSpec] = Field(default_factory=dict, description="Webhook subscriptions by name.")


#: Keys that mean something only in the project file.
PROJECT_ONLY_KEYS = ("app", "extends", "remove", "include", "database", "plugins", "audit", "auth")
