"""Database engines: URL resolution and the connection settings Loom relies on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

__all__ = ["resolve_database_url", "create_db_engine", "ENV_DATABASE_URL", "write_lock", "DatabaseURLError"]


class DatabaseURLError(ValueError):
    """A database URL Loom cannot use: malformed, or for a database it does not support."""

ENV_DATABASE_URL = "LOOM_DATABASE_URL"
DEFAULT_URL = "sqlite:///loom.db"


def resolve_database_url(url: str | None, project_dir: str | os.PathLike) -> str:
    """Apply the ``LOOM_DATABASE_URL`` override; make relative SQLite paths relative to the project."""
    url = os.environ.get(ENV_DATABASE_URL) or url or DEFAULT_URL
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.is_absolute():
            parsed = parsed.set(database=str((Path(project_dir) / path).resolve()))
        return parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, **kwargs) -> sa.Engine:
    """An engine with Loom's settings.

    SQLite: foreign keys on, WAL journal, a busy timeout, and real transactions: pysqlite's own
    transaction handling is switched off so DDL is transactional too, and a connection marked
    ``execution_options(loom_write=True)`` starts with ``BEGIN IMMEDIATE``, taking the write lock
    up front instead of failing with "database is locked" when two processes upgrade at once.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseURLError(f"'{url}' is not a database URL; write sqlite:///path/to/file.db "
                               "or postgresql+psycopg://user@host:5432/dbname") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseURLError(f"Loom runs on SQLite and PostgreSQL, not '{parsed.get_backend_name()}'; "
                               "write sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/dbname")
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", False)
        return sa.create_engine(url, **kwargs)

    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("loom_write") else "BEGIN")

    return engine


#: Serializes writes inside one process on SQLite (one writer at a time is all SQLite allows);
#: waiting on a lock here is far cheaper than SQLite's busy-retry sleeps.
write_lock = threading.Lock()
