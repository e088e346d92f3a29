"""Shared fixtures: every persistence test runs on SQLite and on PostgreSQL.

PostgreSQL tests create a database with a unique name and drop it afterwards. When the server is
unreachable they are skipped with the reason, unless ``LOOM_REQUIRE_POSTGRES=1`` (set by .ci/run),
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from loomcrm.engine.testing import make_loom, project_files

PG_ADMIN_URL = os.environ.get("LOOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("LOOM_REQUIRE_POSTGRES") == "1"


def _pg_unavailable() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {type(exc).__name__}"
    return None


_PG_REASON: list[str | None] = []


def pg_reason() -> str | None:
    if not _PG_REASON:
        _PG_REASON.append(_pg_unavailable())
    return _PG_REASON[0]


def require_postgres() -> None:
    reason = pg_reason()
    if reason:
        if REQUIRE_PG:
            pytest.fail(f"LOOM_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)


def _create_pg_database() -> str:
    name = f"loom_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'loom.db'}"
        return
    require_postgres()
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture
def loom_factory(db_url):
    """Build (and migrate) a Loom app from entity YAML: ``loom_factory(entities_yaml)``."""
    created = []

    def factory(entities_yaml: str, **kwargs):
        loom = make_loom(project_files(entities_yaml), db_url, **kwargs)
        created.append(loom)
        return loom

    yield factory
    for loom in created:
        loom.close()
