"""Test helpers for Loom and for plugin authors (registered as a pytest plugin).

``make_loom(files, database_url)`` builds a Loom app from YAML strings.
"""

from __future__ import annotations

import contextlib
import textwrap

__all__ = ["make_loom", "migrated", "project_files", "compile_files", "compile_entities", "config_errors", "api_token",
           "sql_rows", "sql_execute", "replaced", "table_names",
           "loom_app", "loom_client"]


def project_files(entities_yaml: str, *, app: str = "app: {name: Test CRM, locales: [en, zh]}",
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal project: loom.yaml including entities.yaml holding ``entities_yaml``."""
    return {
        "loom.yaml": f"{app}\ninclude: [entities.yaml]\n",
        "entities.yaml": textwrap.dedent(entities_yaml),
        **(extra or {}),
    }


def compile_files(files: dict[str, str], *, plugins: list | None = None):
    """Compile a project given as ``{path: yaml text}`` into a Manifest (raises ConfigErrors)."""
    return _compiled(files, plugins)[0]


def _compiled(files: dict[str, str], plugins: list | None):
    """(Manifest, plugin manager) of a project given as texts, plugins' contributions included."""
    from .compiler import compile_manifest, with_contributions
    from .loader import load_config_text
    from .plugins import make_plugin_manager

    loaded = load_config_text(files)
    pm = make_plugin_manager([*loaded.project.plugins, *(plugins or [])])
    loaded = with_contributions(loaded, pm, lambda contributions: load_config_text(files, contributions=contributions))
    return compile_manifest(loaded, pm), pm


def compile_entities(entities_yaml: str):
    """The Manifest of a minimal project holding ``entities_yaml`` (see :func:`project_files`)."""
    return compile_files(project_files(entities_yaml))


def config_errors(files: dict[str, str], **kwargs) -> str:
    """The rendered errors of a project that must fail to compile (AssertionError if it compiles)."""
    from .errors import ConfigErrors

    try:
        compile_files(files, **kwargs)
    except ConfigErrors as exc:
        return exc.render()
    raise AssertionError("the config compiled without errors")


def make_loom(files: dict[str, str], database_url: str, *, plugins: list | None = None, migrate: bool = True):
    """Load, compile and (by default) migrate a project given as ``{path: yaml text}``."""
    from .app import Loom
    from .commands import migrate_manifest

    manifest, pm = _compiled(files, plugins)
    if migrate:
        migrate_manifest(manifest, database_url=database_url)
    return Loom.from_manifest(manifest, pm, database_url=database_url)


@contextlib.contextmanager
def migrated(manifest, database_url: str):
    """A Loom on ``database_url`` after migrating it to ``manifest``, closed afterwards: for filling tables
    that a test then migrates further."""
    from .app import Loom
    from .commands import migrate_manifest
    from .plugins import make_plugin_manager

    migrate_manifest(manifest, database_url=database_url)
    loom = Loom.from_manifest(manifest, make_plugin_manager(), database_url=database_url)
    try:
        yield loom
    finally:
        loom.close()


def sql_rows(url: str, sql: str) -> list[tuple]:
    """The rows a plain SQL query gives on the database at ``url`` (to compare data before and after a
    migration, below Loom's own API)."""
    from .database import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def sql_execute(url: str, sql: str) -> None:
    """Run a plain SQL statement on the database at ``url`` and commit (to set up data below Loom's API,
    or to see what the database itself refuses)."""
    from .database import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def replaced(text: str, **replacements: tuple[str, str]) -> str:
    """``text`` with each ``(old, new)`` pair replaced; an ``old`` that is not there fails (a config edit
    a test means to make must happen)."""
    for old, new in replacements.values():
        assert old in text, f"{old!r} is not in the text"
        text = text.replace(old, new)
    return text


def table_names(url: str) -> set[str]:
    """The tables of the database at ``url``."""
    import sqlalchemy as sa

    from .database import create_db_engine

    engine = create_db_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def api_token(loom, username: str = "tester", roles: list[str] | None = None) -> str:
    """Create a user (if needed) and a personal API token for it; returns the token.

    The user holds ``roles``; by default every role of the project, so it may do what any role may.
    """
    from .identity import Users
    from .runtime.auth import Auth

    users = Users(loom, channel="python")
    try:
        user = users.find(username)
    except Exception:
        roles = list(loom.manifest.roles) if roles is None else roles
        user = users.create(username, "a long password used only in tests", **({"roles": roles} if roles else {}))
    return Auth(loom).create_token(user["id"], "tests").secret


# --- pytest fixtures for plugin authors (this module is registered as a pytest plugin) -------------------
try:
    import pytest
except ImportError:  # a production install without pytest: the helpers above still work
    pytest = None

if pytest is not None:

    @pytest.fixture
    def loom_app(tmp_path):
        """Build an app from YAML on a fresh SQLite file; closed after the test::

            def test_scoring(loom_app):
                loom = loom_app('''
                    entities:
                      lead: {fields: {name: {type: string}, score: {type: integer}}}
                ''', plugins=[scoring])

        Pass entities YAML (a ``loom.yaml`` is made around it) or ``{path: text}`` for a whole project;
        ``database_url=`` for another database.
        """
        apps = []

        def build(config, *, plugins=(), database_url: str | None = None):
            files = config if isinstance(config, dict) else project_files(config)
            url = database_url or f"sqlite:///{tmp_path / f'loom-{len(apps)}.db'}"
            app = make_loom(files, url, plugins=list(plugins))
            apps.append(app)
            return app

        yield build
        for app in apps:
            app.close()

    @pytest.fixture
    def loom_client():
        """``loom_client(loom, username="tester", roles=None)``: a litestar ``TestClient`` of the app,
        signed in with an API token of that user (holding ``roles``; default: every role)."""
        import contextlib

        from litestar.testing import TestClient

        with contextlib.ExitStack() as stack:
            def client(app, username: str = "tester", roles: list[str] | None = None):
                test_client = stack.enter_context(TestClient(app.asgi()))
                test_client.headers["Authorization"] = f"Bearer {api_token(app, username, roles)}"
                return test_client

            yield client
