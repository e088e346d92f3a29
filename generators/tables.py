"""SQLAlchemy ``MetaData`` from a Manifest: one table per entity, join tables for many-to-many.

Constraint names come from a full naming convention, so they are stable across runs and the
migration planner can find them again. Each column carries its spec path in ``Column.info``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from loomcrm.engine.manifest import Entity, Manifest

__all__ = ["NAMING_CONVENTION", "build_metadata", "JSONValue", "UTCDateTime", "id_type", "MIGRATIONS_TABLE",
           "AUDIT_TABLE", "audit_table", "CREDENTIAL_TABLE", "credential_table", "webhook_tables",
           "SAVED_VIEW_TABLE", "saved_view_table"]

NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}
MIGRATIONS_TABLE = "loom_migrations"
AUDIT_TABLE = "loom_audit"
CREDENTIAL_TABLE = "loom_credential"
SAVED_VIEW_TABLE = "loom_saved_view"
ON_DELETE = {"restrict": "RESTRICT", "cascade": "CASCADE", "set_null": "SET NULL"}


def id_type() -> sa.types.TypeEngine:
    """64-bit ids on PostgreSQL; SQLite needs exactly INTEGER for its rowid primary key."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class JSONValue(sa.types.TypeDecorator):
    """JSON everywhere, JSONB on PostgreSQL (indexable, comparable)."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.JSON())


class UTCDateTime(sa.types.TypeDecorator):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


def build_metadata(manifest: Manifest) -> sa.MetaData:
    """All tables of the CRM plus Loom's own bookkeeping table."""
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    for entity in manifest.entities.values():
        entity_table(metadata, entity, manifest)
    for entity in manifest.entities.values():
        for field in entity.user_fields:
            if field.type == "refs":
                join_table(metadata, entity, field.name, manifest.entities[field.target])
    migrations_table(metadata)
    audit_table(metadata)
    credential_table(metadata)
    auth_tables(metadata)
    automation_tables(metadata)
    webhook_tables(metadata)
    saved_view_table(metadata)
    return metadata


def entity_table(metadata: sa.MetaData, entity: Entity, manifest: Manifest) -> sa.Table:
    columns: list[sa.SchemaItem] = [
        sa.Column("id", id_type(), primary_key=True, autoincrement=True, info={"loom": f"{entity.name}.id"})
    ]
    for field in entity.user_fields:
        if field.column is None:
            continue
        args = []
        if field.type == "ref":
            target = manifest.entities[field.target]
            args.append(sa.ForeignKey(f"{target.table}.id", ondelete=ON_DELETE[field.params["on_delete"]]))
        columns.append(
            sa.Column(
                field.column,
                field.field_type.column_type(field),
                *args,
                nullable=not field.required,
                unique=field.unique or None,
                index=(field.indexed or field.type == "ref") and not field.unique or None,
                info={"loom": f"{entity.name}.{field.name}", "source": field.source},
            )
        )
    system = [
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", id_type(), nullable=True),
        sa.Column("updated_by", id_type(), nullable=True),
        sa.Column("owner", id_type(), nullable=True, index=True),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    ]
    for column in system:
        column.info["loom"] = f"{entity.name}.{column.name}"
    columns += system
    table = sa.Table(entity.table, metadata, *columns, info={"loom": entity.name},
                     sqlite_autoincrement=True)  # ids of deleted records are never given out again
    for index in entity.indexes:
        cols = [table.c[entity.fields[f].column] for f in index.fields]
        if index.unique and index.name is None:
            table.append_constraint(sa.UniqueConstraint(*cols))
        else:
            sa.Index(index.name, *cols, unique=index.unique)
    return table


def join_table(metadata: sa.MetaData, entity: Entity, field_name: str, target: Entity) -> sa.Table:
    """``<entity>__<field>`` with one row per link; both sides cascade on delete."""
    left, right = f"{entity.name}_id", f"{target.name}_id"
    if left == right:
        left, right = "source_id", "target_id"
    return sa.Table(
        entity.join_table(field_name),
        metadata,
        sa.Column(left, id_type(), sa.ForeignKey(f"{entity.table}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column(right, id_type(), sa.ForeignKey(f"{target.table}.id", ondelete="CASCADE"), primary_key=True,
                  index=True),
        info={"loom": f"{entity.name}.{field_name}", "join": (left, right)},
    )


def migrations_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        MIGRATIONS_TABLE,
        metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("applied_at", UTCDateTime(), nullable=False),
        sa.Column("applied_by", sa.String(200), nullable=True),
        sa.Column("manifest_hash", sa.String(64), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("loom_version", sa.String(40), nullable=False),
    )


def audit_table(metadata: sa.MetaData) -> sa.Table:
    """One row per change of a record, written in the change's own transaction.

    ``changes`` maps each changed field to ``[old, new]`` (JSON forms). The indexes serve the three
    ways the trail is read: one record's history (newest first), what one user did, and purging by age.
    """
    table = sa.Table(
        AUDIT_TABLE,
        metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", id_type(), nullable=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_id", id_type(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("changes", JSONValue(), nullable=False),
        info={"system": True},
    )
    sa.Index("ix_loom_audit_record", table.c.entity, table.c.record_id, table.c.id)
    sa.Index("ix_loom_audit_actor", table.c.actor, table.c.at)
    sa.Index("ix_loom_audit_at", table.c.at)
    return table


def credential_table(metadata: sa.MetaData) -> sa.Table:
    """Password hashes (argon2), one row per user who has a password; never part of any API."""
    return sa.Table(
        CREDENTIAL_TABLE,
        metadata,
        sa.Column("user_id", id_type(), sa.ForeignKey("user.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        info={"system": True},
    )


def auth_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    """Sessions and API tokens (stored as SHA-256 of the secret, never the secret itself), and failed
    sign-ins counted per account and per address, in the database so every worker process shares them."""
    user_fk = sa.ForeignKey("user.id", ondelete="CASCADE")
    sessions = sa.Table(
        "loom_session", metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", id_type(), user_fk, nullable=False, index=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        info={"system": True},
    )
    tokens = sa.Table(
        "loom_token", metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("user_id", id_type(), sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        info={"system": True},
    )
    failures = sa.Table(
        "loom_login_failure", metadata,
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        info={"system": True},
    )
    return sessions, tokens, failures


def automation_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Counters (round-robin assignment, shared by every worker process) and the marks of scheduled
    rules: one row per rule and record it has run for, so each runs once while the record matches."""
    counters = sa.Table(
        "loom_counter", metadata,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        info={"system": True},
    )
    marks = sa.Table(
        "loom_schedule_mark", metadata,
        sa.Column("schedule", sa.String(100), primary_key=True),
        sa.Column("record_id", id_type(), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        info={"system": True},
    )
    return counters, marks


def webhook_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The webhook outbox, subscriptions made through the API, and the log of delivery attempts.

    An outbox row is one event for one subscription (``subscription`` holds a ``webhooks:`` name or
    ``api:<id>``), written in the transaction of the change it reports, so a change that rolls back
    sends nothing. ``key`` is the idempotency key every attempt carries. The worker claims due rows
    (``status``, ``next_attempt_at``) by setting ``claimed_until``, so several workers never send one
    event at once. The API's secrets are stored as given (signing needs them) and shown once.
    """
    outbox = sa.Table(
        "loom_outbox", metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("event", sa.String(150), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_id", id_type(), nullable=False),
        sa.Column("subscription", sa.String(120), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", JSONValue(), nullable=False),
        sa.Column("key", sa.String(32), nullable=False, unique=True),
        sa.Column("status", sa.String(20), nullable=False),  # pending | delivered | dead
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        info={"system": True},
        sqlite_autoincrement=True,
    )
    sa.Index("ix_loom_outbox_due", outbox.c.status, outbox.c.next_attempt_at)
    sa.Index("ix_loom_outbox_subscription", outbox.c.subscription, outbox.c.id)
    subscriptions = sa.Table(
        "loom_webhook", metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", JSONValue(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("run_as", id_type(), sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        info={"system": True},
        sqlite_autoincrement=True,
    )
    deliveries = sa.Table(
        "loom_webhook_delivery", metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("outbox_id", id_type(), sa.ForeignKey("loom_outbox.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        info={"system": True},
    )
    return outbox, subscriptions, deliveries


def saved_view_table(metadata: sa.MetaData) -> sa.Table:
    """The admin lists' saved views: a user's named filters and sort of one entity's list, kept as the
    list URL's query text (the API's syntax), so a view is re-checked against the config when opened."""
    return sa.Table(
        SAVED_VIEW_TABLE, metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("user_id", id_type(), sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("user_id", "entity", "name"),
        info={"system": True},
    )
