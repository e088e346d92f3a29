"""The Python API behind the CLI: plain functions that return results or raise Loom errors.

Each takes the project path (a directory holding loom.yaml, or the file itself).
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loomcrm.generators.migrations import (
    BackfillFailed,
    Plan,
    apply_steps,
    check_data,
    plan_migration,
    render_sql,
)
from loomcrm.generators.tables import MIGRATIONS_TABLE, build_metadata, migrations_table

from .app import Loom
from .compiler import compile_project
from .database import create_db_engine
from .errors import ConfigError, ConfigErrors, Location
from .manifest import Manifest
from .runtime.audit import purge_before
from .runtime.context import Context, utcnow

__all__ = ["validate", "plan", "migrate", "seed", "openapi", "purge_audit", "MigrationRefused", "applied_manifest",
           "LOOM_VERSION"]

LOOM_VERSION = "0.1.0"
ADVISORY_LOCK_ID = 0x4C4F4F4D  # "LOOM"


class MigrationRefused(Exception):
    """The plan holds changes this version cannot apply safely; nothing was changed."""

    def __init__(self, plan: Plan):
        self.plan = plan
        super().__init__("the migration was refused; nothing was changed:\n" + "\n".join(
            f"  - {r}" for r in plan.refused))


def validate(project: str | os.PathLike) -> Manifest:
    manifest, _ = compile_project(project)
    return manifest


@dataclass
class PlannedMigration:
    """A plan against a database. ``current``: the database's last migration applied exactly this
    config's manifest (a plan can be empty while it did not: a changed default or label needs no step,
    but ``migrate`` still records it)."""

    manifest: Manifest
    plan: Plan
    dialect: str
    current: bool = False

    def sql(self) -> str:
        return render_sql(self.plan.steps, self.dialect)


def applied_manifest(conn: sa.Connection) -> tuple[dict[str, Any] | None, bool]:
    """The manifest of the last applied migration, and whether the history table exists."""
    if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
        return None, False
    table = migrations_table(sa.MetaData())
    row = conn.execute(sa.select(table.c.manifest).order_by(table.c.id.desc()).limit(1)).first()
    return (json.loads(row[0]) if row else None), True


def plan(project: str | os.PathLike, *, database_url: str | None = None,
         allow_data_loss: bool = False) -> PlannedMigration:
    """What ``migrate`` would do, without changing anything; a drop that loses data is refused unless
    ``allow_data_loss``."""
    manifest, _ = compile_project(project)
    return plan_manifest(manifest, database_url=database_url, allow_data_loss=allow_data_loss)


def plan_manifest(manifest: Manifest, *, database_url: str | None = None,
                  allow_data_loss: bool = False) -> PlannedMigration:
    """:func:`plan` for a compiled manifest: the plan against the database, its data checks run."""
    url = database_url or manifest.database_url
    if _missing_sqlite_file(url):  # planning is read-only: do not create the file by connecting
        return PlannedMigration(manifest, plan_migration(None, manifest, has_migrations_table=False), "sqlite")
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            old, has_table = applied_manifest(conn)
            the_plan = plan_migration(old, manifest, has_migrations_table=has_table)
            check_data(the_plan, conn, allow_data_loss=allow_data_loss)
        return PlannedMigration(manifest, the_plan, engine.dialect.name, current=old == manifest.to_json())
    finally:
        engine.dispose()


def _missing_sqlite_file(url: str) -> bool:
    parsed = sa.engine.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
        and not Path(parsed.database).exists()


def migrate(project: str | os.PathLike, *, database_url: str | None = None, applied_by: str | None = None,
            backup: bool = False, allow_data_loss: bool = False) -> Plan:
    """Bring the database to the config, in one transaction; concurrent calls are serialized. With
    ``backup``, a SQLite file whose schema changes is copied first. Dropping a field or an entity
    that holds data is refused unless ``allow_data_loss``."""
    manifest, _ = compile_project(project)
    return migrate_manifest(manifest, database_url=database_url, applied_by=applied_by, backup=backup,
                            allow_data_loss=allow_data_loss)


def migrate_manifest(manifest: Manifest, *, database_url: str | None = None, applied_by: str | None = None,
                     backup: bool = False, allow_data_loss: bool = False) -> Plan:
    """Apply the plan from the stored manifest to ``manifest``. With ``backup``, a SQLite file that
    already holds a migrated schema is copied first (see :func:`backup_sqlite`); the plan's
    ``backup`` names the copy."""
    url = database_url or manifest.database_url
    copy = backup_sqlite(url) if backup and _needs_backup(url, manifest) else None
    engine = create_db_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect().execution_options(loom_write=True) as conn:
            if sqlite:  # table rebuilds must not fire ON DELETE actions; checked again before commit
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    if not sqlite:
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
                    old, has_table = applied_manifest(conn)  # read under the lock: the latest state
                    the_plan = plan_migration(old, manifest, has_migrations_table=has_table)
                    check_data(the_plan, conn, allow_data_loss=allow_data_loss)  # before anything changes
                    if the_plan.refused:
                        raise MigrationRefused(the_plan)
                    if old is not None and old == manifest.to_json():
                        return the_plan
                    try:
                        apply_steps(conn, the_plan.steps)
                    except BackfillFailed as exc:  # the transaction rolls back: nothing changed
                        the_plan.refused.append(str(exc))
                        raise MigrationRefused(the_plan) from None
                    if sqlite:
                        problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if problems:
                            raise RuntimeError(f"foreign key check failed after migration: {problems[:5]}")
                    if the_plan.refresh_rollups:
                        _refresh_rollups(conn, manifest, the_plan)
                    _record(conn, manifest, the_plan, applied_by)
            finally:
                if sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
        the_plan.backup = copy
        return the_plan
    finally:
        engine.dispose()


def _needs_backup(url: str, manifest: Manifest) -> bool:
    """A SQLite file with a schema that this manifest would change (nothing to keep otherwise)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or _missing_sqlite_file(url) or parsed.database in (None, "", ":memory:"):
        return False
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            old, has_table = applied_manifest(conn)
        return old is not None and not plan_migration(old, manifest, has_migrations_table=has_table).empty
    finally:
        engine.dispose()


def backup_sqlite(url: str, now=None) -> Path:
    """Copy the SQLite database at ``url`` beside it as ``<name>.<UTC time>.bak`` with SQLite's online
    backup (consistent even while the server writes); returns the copy's path."""
    import sqlite3

    source = Path(sa.engine.make_url(url).database)
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    target, n = source.with_name(f"{source.name}.{stamp}.bak"), 2
    while target.exists():  # two migrations within a second keep both copies
        target, n = source.with_name(f"{source.name}.{stamp}-{n}.bak"), n + 1
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``loom_migrations``: when, by whom, which config, what changed."""

    id: int
    applied_at: Any
    applied_by: str | None
    manifest_hash: str
    summary: str
    loom_version: str


def history(project: str | os.PathLike, *, database_url: str | None = None) -> list[AppliedMigration]:
    """The migrations applied to the project's database, newest first (empty for a new database)."""
    manifest, _ = compile_project(project)
    url = database_url or manifest.database_url
    if _missing_sqlite_file(url):
        return []
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
                return []
            table = migrations_table(sa.MetaData())
            rows = conn.execute(sa.select(table.c.id, table.c.applied_at, table.c.applied_by, table.c.manifest_hash,
                                          table.c.summary, table.c.loom_version).order_by(table.c.id.desc())).all()
        return [AppliedMigration(*row) for row in rows]
    finally:
        engine.dispose()


def _refresh_rollups(conn: sa.Connection, manifest: Manifest, the_plan: Plan) -> int:
    """Compute every rollup of every record, in the migration's transaction, so existing records get
    their values (new records keep them current as their children change). A value its field cannot
    hold refuses the migration, naming the rollup."""
    from .runtime.persistence import Store
    from .runtime.rollups import RollupOverflow, Rollups

    try:
        return Rollups(manifest, Store(manifest, build_metadata(manifest))).refresh_all(conn)
    except RollupOverflow as exc:
        the_plan.refused.append(str(exc))
        raise MigrationRefused(the_plan) from None


def _record(conn: sa.Connection, manifest: Manifest, the_plan: Plan, applied_by: str | None) -> None:
    table = migrations_table(sa.MetaData())
    conn.execute(table.insert().values(
        applied_at=utcnow(), applied_by=applied_by or _login(), manifest_hash=manifest.hash(),
        manifest=json.dumps(manifest.to_json(), ensure_ascii=False, sort_keys=True),
        summary=the_plan.summary(), loom_version=LOOM_VERSION,
    ))


class SeedApi:
    """What a project's ``seed.py`` receives: ``api.create(entity, data, owner=None) -> record`` (it may
    set read-only fields and start records in any workflow state: it stands for an old system's data), and
    ``api.users`` (:class:`~loomcrm.engine.identity.Users`) for demo users, teams and passwords."""

    def __init__(self, loom: Loom):
        from .identity import Users

        self.loom = loom
        self.created = 0
        self.users = Users(loom, channel="seed")
        self._user_ids: dict[str, int] = {}

    def create(self, entity: str, data: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
        """Create a record; ``owner`` (a username) creates it as that user, who then owns it."""
        actor = None
        if owner is not None:
            if owner not in self._user_ids:
                self._user_ids[owner] = self.users.find(owner)["id"]
            actor = self._user_ids[owner]
        record = self.loom.records.create(self.loom.entity(entity), data, Context(actor=actor, channel="seed"),
                                          trusted=True)
        self.created += 1
        return record

    def count(self, entity: str) -> int:
        table = self.loom.metadata.tables[self.loom.entity(entity).table]
        with self.loom.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def seed(project: str | os.PathLike, *, database_url: str | None = None, force: bool = False) -> int | None:
    """Run the project's ``seed.py`` (its ``seed(api)`` function). Returns records created, or None
    when the database already holds records (unless ``force``)."""
    loom = Loom.from_project(project, database_url=database_url)
    try:
        project_dir = Path(loom.manifest.project_dir)
        seed_file = project_dir / "seed.py"
        if not seed_file.is_file():
            raise ConfigErrors([ConfigError(Location(str(seed_file)), "E102", "no seed.py in the project",
                                            "write seed.py with a function seed(api)")])
        api = SeedApi(loom)
        if not force and any(api.count(name) for name in loom.manifest.entities):
            return None
        spec = importlib.util.spec_from_file_location("loom_project_seed", seed_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules.pop("loom_project_seed", None)
        spec.loader.exec_module(module)
        module.seed(api)
        return api.created
    finally:
        loom.close()


def purge_audit(project: str | os.PathLike, *, database_url: str | None = None, days: int | None = None,
                now: dt.datetime | None = None) -> int | None:
    """Delete audit rows older than ``days`` (default: the config's ``audit.retain_days``).
    Returns how many, or None when no retention is configured."""
    manifest, _ = compile_project(project)
    days = days if days is not None else manifest.audit_retain_days
    if days is None:
        return None
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    engine = create_db_engine(database_url or manifest.database_url)
    try:
        with engine.connect().execution_options(loom_write=True) as conn, conn.begin():
            return purge_before(conn, cutoff)
    finally:
        engine.dispose()


def openapi(project: str | os.PathLike) -> dict[str, Any]:
    manifest, pm = compile_project(project)
    loom = Loom.from_manifest(manifest, pm, database_url="sqlite://")
    try:
        return loom.asgi().openapi_schema.to_schema()
    finally:
        loom.close()


def _login() -> str | None:
    """Who runs ``loom migrate``: the login name (``$USER``, ``$LOGNAME``, else the account), for history."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no such variable and no account entry (a bare container)
        return None
