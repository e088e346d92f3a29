"""``loom``: the command line. Thin: parses arguments, calls :mod:`loomcrm.engine.commands`, prints.

Exit codes: 0 success, 1 a problem with the config, database or data, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from loomcrm.schemas.system import SYSTEM_ENTITIES

from .errors import ConfigErrors

__all__ = ["main"]


def _parser(plugin_commands: list | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom", description="Loom: a CRM compiled from YAML. Run a command in a project directory, "
        "or point at one with -p.")
    parser.add_argument("-p", "--project", default=os.environ.get("LOOM_PROJECT", "."),
                        help="directory holding loom.yaml, or the file itself (default: . or $LOOM_PROJECT)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        return p

    command("validate", "check the config and print a summary; errors name file:line:col")
    p = command("plan", "show what 'migrate' would change; exits 1 if a change would be refused")
    p.add_argument("--sql", action="store_true", help="also print the SQL for this database's dialect")
    p.add_argument("--allow-data-loss", action="store_true", help="plan drops of fields and entities that "
                   "hold data (refused without it)")
    p.add_argument("--database", help="database URL (default: config, or $LOOM_DATABASE_URL)")
    p = command("migrate", "bring the database schema to the config, in one transaction")
    p.add_argument("--database", help="database URL (default: config, or $LOOM_DATABASE_URL)")
    p.add_argument("--allow-data-loss", action="store_true", help="drop fields and entities that hold data "
                   "(refused without it)")
    p.add_argument("--no-backup", action="store_true", help="SQLite: skip the copy of the database file made "
                   "before a schema change")
    p = command("check", "exit 1 when the database schema does not match the config (for CI and deploys)")
    p.add_argument("--database", help="database URL (default: config, or $LOOM_DATABASE_URL)")
    p = command("history", "list the migrations applied to the database, newest first")
    p.add_argument("--database", help="database URL (default: config, or $LOOM_DATABASE_URL)")
    p = command("seed", "load the project's demo data (seed.py), unless records exist already")
    p.add_argument("--database", help="database URL")
    p.add_argument("--force", action="store_true", help="seed even if the database has records")
    p = command("serve", "serve the REST API (and its OpenAPI UI) with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the database (default 1)")
    p.add_argument("--database", help="database URL")
    p = command("worker", "run scheduled rules and deliver webhooks, every few seconds until stopped")
    p.add_argument("--once", action="store_true", help="do one round and exit (e.g. from cron)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between rounds (default 2)")
    p.add_argument("--keep-days", type=int, help="days delivered and given-up webhook events are kept "
                   "(default: 30 delivered, 90 given up)")
    p.add_argument("--database", help="database URL")
    p = command("user", "manage users: create, passwd, disable, enable, list")
    p.add_argument("action", choices=["create", "passwd", "disable", "enable", "list"])
    p.add_argument("username", nargs="?")
    p.add_argument("--name", help="full name (create)")
    p.add_argument("--email", help="email address (create)")
    p.add_argument("--role", action="append", default=[], help="a role to give the user (create; repeatable)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input instead of prompting (create, passwd)")
    p.add_argument("--database", help="database URL")
    p = command("team", "manage teams: create, add, remove, list")
    p.add_argument("action", choices=["create", "add", "remove", "list"])
    p.add_argument("team", nargs="?")
    p.add_argument("username", nargs="?", help="the member (add, remove)")
    p.add_argument("--manager", help="username of the team's manager (create)")
    p.add_argument("--database", help="database URL")
    p = command("reassign", "give every record one user owns to another (staff turnover), audited")
    p.add_argument("--from", dest="from_user", required=True, metavar="USERNAME")
    p.add_argument("--to", dest="to_user", required=True, metavar="USERNAME")
    p.add_argument("--entity", action="append", default=[], help="only this entity (repeatable)")
    p.add_argument("--database", help="database URL")
    p = command("access", "print what a role may do, or explain why a user can or cannot reach a record")
    p.add_argument("role", nargs="?", help="a role name from 'roles:' in the config: print its matrix")
    p.add_argument("--user", metavar="USERNAME", help="explain this user's access to --entity/--id")
    p.add_argument("--entity", help="with --user: the entity")
    p.add_argument("--id", type=int, dest="record_id", help="with --user: the record id")
    p.add_argument("--database", help="database URL")
    command("plugins", "list the loaded plugins: where each comes from and which hooks it implements")
    command("explain-config", "print the merged config (overlays included) with the file:line of every value")
    p = command("purge-audit", "delete audit rows older than audit.retain_days (or --days)")
    p.add_argument("--days", type=int, help="keep this many days instead of the config's retain_days")
    p.add_argument("--database", help="database URL")
    p = command("schema", "print the JSON Schema of the config language")
    p.add_argument("--output", help="write to this file instead of printing")
    p = command("openapi", "print the OpenAPI document of the project's REST API")
    p.add_argument("--output", help="write to this file instead of printing")
    for plugin_command in plugin_commands or ():
        p = command(plugin_command.name, plugin_command.help)
        p.add_argument("--database", help="database URL")
        if plugin_command.arguments is not None:
            plugin_command.arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugin_commands = _plugin_commands(argv)
    except _UsageError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    args = _parser(plugin_commands).parse_args(argv)
    if getattr(args, "database", None):
        args.database = _from_cwd(args.database)
    try:
        if args.command not in COMMANDS:
            return _run_plugin_command(args, {c.name: c for c in plugin_commands}[args.command]) or 0
        return COMMANDS[args.command](args) or 0
    except ConfigErrors as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except _UsageError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a user-facing failure: say what happened, not a traceback
        from .commands import MigrationRefused

        if isinstance(exc, MigrationRefused):
            print(exc.plan.render(), file=sys.stderr)
            print("\nNothing was changed.", file=sys.stderr)
            return 1
        import sqlalchemy.exc

        from .database import DatabaseURLError
        from .errors import Problem
        from .identity import PasswordRejected

        if isinstance(exc, Problem):
            _print_problem(exc)
            return 1
        if isinstance(exc, DatabaseURLError | PasswordRejected):
            print(f"loom: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            print(f"loom: database error: {exc.orig if hasattr(exc, 'orig') else exc}", file=sys.stderr)
            print("hint: check the database URL (--database, $LOOM_DATABASE_URL or 'database:' in loom.yaml)",
                  file=sys.stderr)
            return 1
        raise


def _from_cwd(url: str) -> str:
    """``--database sqlite:///x.db`` means ./x.db wherever the command runs (workers included)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url  # reported when used
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return parsed.set(database=os.path.abspath(parsed.database)).render_as_string(hide_password=False)
    return url


def _validate(args) -> int:
    from .commands import validate

    manifest = validate(args.project)
    own = [e for e in manifest.entities.values() if e.name not in SYSTEM_ENTITIES]
    fields = sum(len(e.user_fields) for e in own)
    print(f"ok: {manifest.app_name}: {_count(len(own), 'entity', 'entities')}, "
          f"{_count(fields, 'field', 'fields')} (plus Loom's {' and '.join(SYSTEM_ENTITIES)})")
    for entity in own:
        print(f"  {entity.name:<24} /api/{entity.plural:<24} {len(entity.user_fields)} fields")
    for workflow in manifest.workflows.values():
        print(f"  workflow {workflow.name}: {workflow.entity}.{workflow.field}, "
              f"{_count(len(workflow.transitions), 'transition', 'transitions')}")
    for key, what in (("automations", "automations"), ("schedules", "scheduled rules"), ("webhooks", "webhooks")):
        named = getattr(manifest, key)
        if named:
            print(f"  {what}: {', '.join(named)}")
    if manifest.roles:
        print(f"  roles: {', '.join(manifest.roles)} (enforced: what no role grants is refused)")
    else:
        print("warning: no 'roles:' defined, so every signed-in user may read and change everything; "
              "define roles before real users sign in (see docs/config.md#roles)", file=sys.stderr)
    return 0


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _plan(args) -> int:
    from .commands import plan

    planned = plan(args.project, database_url=args.database, allow_data_loss=args.allow_data_loss)
    print(planned.plan.render())
    if args.sql and planned.plan.steps:
        print("\n-- SQL (" + planned.dialect + ")\n" + planned.sql())
    return 1 if planned.plan.refused else 0


def _migrate(args) -> int:
    from .commands import migrate

    the_plan = migrate(args.project, database_url=args.database, backup=not args.no_backup,
                       allow_data_loss=args.allow_data_loss)
    print(the_plan.render())
    if the_plan.backup:
        print(f"backup of the database before the change: {the_plan.backup}")
    print("applied." if the_plan.steps or the_plan.notes else "nothing to do.")
    return 0


def _check(args) -> int:
    from .commands import plan

    planned = plan(args.project, database_url=args.database)
    if planned.current:
        print("ok: the database matches the config.")
        return 0
    print("The database does not match the config; 'loom migrate' would:", file=sys.stderr)
    print(planned.plan.render() if not planned.plan.empty or planned.plan.notes
          else "  record the config (no schema change)", file=sys.stderr)
    return 1


def _history(args) -> int:
    from .commands import history

    applied = history(args.project, database_url=args.database)
    if not applied:
        print("No migration has been applied to this database yet (run 'loom migrate').")
        return 0
    for m in applied:
        when = m.applied_at.strftime("%Y-%m-%d %H:%M:%SZ") if m.applied_at else "?"
        print(f"#{m.id}  {when}  by {m.applied_by or 'unknown'}  config {m.manifest_hash[:12]}  loom {m.loom_version}")
        print(f"     {m.summary}")
    return 0


def _seed(args) -> int:
    from .commands import seed

    created = seed(args.project, database_url=args.database, force=args.force)
    print("the database already holds records; not seeding (use --force to seed anyway)" if created is None
          else f"seeded {created} records")
    return 0


def _serve(args) -> int:
    import uvicorn

    os.environ["LOOM_PROJECT"] = os.path.abspath(args.project)
    if args.database:
        os.environ["LOOM_DATABASE_URL"] = args.database
    from .commands import validate

    manifest = validate(args.project)  # fail fast with config errors, before forking workers
    print(f"Loom: serving {manifest.app_name} at http://{args.host}:{args.port}/  "
          f"(API docs: http://{args.host}:{args.port}/schema/swagger)", flush=True)
    uvicorn.run("loomcrm.engine.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", access_log=False)
    return 0


def _worker(args) -> int:
    from .app import Loom
    from .worker import WorkerNotReady, run_worker

    if args.interval <= 0:
        raise _UsageError("--interval must be a positive number of seconds")
    if args.keep_days is not None and not 1 <= args.keep_days <= 36500:
        raise _UsageError("--keep-days must be a whole number of days from 1 to 36500")
    loom = Loom.from_project(args.project, database_url=args.database)
    try:
        return run_worker(loom, once=args.once, interval=args.interval, keep_days=args.keep_days)
    except WorkerNotReady as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 1
    finally:
        loom.close()


def _reassign(args) -> int:
    from .errors import did_you_mean
    from .runtime.context import Context

    with _users(args) as users:
        loom = users.loom
        unknown = [e for e in args.entity if e not in loom.manifest.entities]
        if unknown:
            hint = did_you_mean(unknown[0], loom.manifest.entities) or ""
            print(f"loom: no entity '{unknown[0]}' {f'({hint})' if hint else ''}".rstrip(), file=sys.stderr)
            return 1
        source, target = users.find(args.from_user), users.find(args.to_user)
        counts = loom.records.reassign(source["id"], target["id"], Context(channel="cli"),
                                       [loom.entity(e) for e in args.entity] or None)
    total = sum(counts.values())
    details = ", ".join(f"{n} {e}" for e, n in counts.items())
    print(f"reassigned {total} records from {args.from_user} to {args.to_user}" + (f": {details}" if details else ""))
    return 0


def _access(args) -> int:
    from .commands import validate
    from .errors import did_you_mean
    from .policy import OPERATIONS

    if args.user or args.role is None:
        return _explain_access(args)
    manifest = validate(args.project)
    policy = manifest.roles.get(args.role)
    if policy is None:
        hint = did_you_mean(args.role, manifest.roles) or f"roles: {', '.join(sorted(manifest.roles)) or 'none'}"
        print(f"loom: no role '{args.role}' ({hint})", file=sys.stderr)
        return 1
    print(f"role {policy.name} ({policy.label}); scopes: none, own, team, all\n")
    print(f"{'entity':<20}" + "".join(f"{op:<8}" for op in OPERATIONS))
    rules = {}
    for entity in manifest.entities:
        grant = policy.grant(entity)
        cells = []
        for op in OPERATIONS:
            ruled = [r.rule.text for r in policy.reach(entity, op) if r.rule is not None]
            cells.append(grant.scope(op) + ("*" if ruled else ""))
            if ruled:
                rules.setdefault(entity, set()).update(ruled)
        print(f"{entity:<20}" + "".join(f"{cell:<8}" for cell in cells))
    for entity, texts in rules.items():
        print(f"  * {entity}: only where {' or '.join(sorted(texts))}")
    for entity, fields in policy.levels.items():
        hidden = sorted(f for f, level in fields.items() if level == "hidden")
        read = sorted(f for f, level in fields.items() if level == "read" and not manifest.entities[entity].fields[f].system)
        if hidden or read:
            print(f"\n{entity}: " + "; ".join(part for part in (
                f"hidden: {', '.join(hidden)}" if hidden else "", f"read only: {', '.join(read)}" if read else "")
                if part))
    return 0


def _explain_access(args) -> int:
    from .errors import did_you_mean
    from .runtime.access import explain

    if not (args.user and args.entity and args.record_id):
        raise _UsageError("give a role (loom access ROLE) or --user USERNAME --entity ENTITY --id ID")
    with _users(args) as users:
        loom = users.loom
        if args.entity not in loom.manifest.entities:
            hint = did_you_mean(args.entity, loom.manifest.entities)
            raise _UsageError(f"no entity '{args.entity}'" + (f" ({hint})" if hint else ""))
        user = users.find(args.user)
        access = loom.access(user["id"])
        print(f"{args.user} and {args.entity} {args.record_id}:")
        with loom.engine.connect() as conn:
            for line in explain(access, loom.records.store, conn, loom.entity(args.entity), args.record_id):
                print(line)
        if not user["active"]:
            print(f"note: {args.user} is disabled and cannot sign in at all")
    return 0


def _plugins(args) -> int:
    from .compiler import compile_project
    from .plugins import describe_plugins

    manifest, pm = compile_project(args.project)
    infos = describe_plugins(pm, manifest.plugins)
    print(f"{len(infos)} plugins, most recently registered first (pluggy calls them in this order, except "
          "where an implementation says tryfirst or trylast; the built-ins say trylast):")
    for info in reversed(infos):  # pluggy calls the last registered first
        print(f"\n{info.name}  [{info.origin}]  {info.where}")
        print("  hooks: " + (", ".join(info.hooks) or "none"))
    return 0


def _plugin_commands(argv: list[str]) -> list:
    """Commands the project's plugins add (``loom_commands``), looked up only when ``argv`` names a
    command Loom does not have, so that Loom's own commands never pay for loading the project."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-p", "--project", default=os.environ.get("LOOM_PROJECT", "."))
    known, rest = pre.parse_known_args(argv)
    name = next((a for a in rest if not a.startswith("-")), None)
    if name is None or name in COMMANDS:
        return []
    from .compiler import compile_project
    from .plugins import call_hook

    try:
        _, pm = compile_project(known.project)
    except ConfigErrors:
        return []  # not a project: argparse reports the unknown command
    commands = [c for result in call_hook(pm, "loom_commands") for c in result or ()]
    clashes = [c.name for c in commands if c.name in COMMANDS]
    if clashes:
        raise _UsageError(f"a plugin command may not replace Loom's own: {', '.join(clashes)}")
    return commands


def _run_plugin_command(args, command) -> int | None:
    from .app import Loom

    loom = Loom.from_project(args.project, database_url=args.database)
    try:
        return command.run(args, loom)
    finally:
        loom.close()


def _explain_config(args) -> int:
    from .explain import explain_config

    print(explain_config(args.project), end="")
    return 0


def _purge_audit(args) -> int:
    from .commands import purge_audit

    if args.days is not None and args.days < 1:
        print("loom: --days must be at least 1", file=sys.stderr)
        return 2
    deleted = purge_audit(args.project, database_url=args.database, days=args.days)
    if deleted is None:
        print("no retention configured (audit: {retain_days: N} in loom.yaml, or --days N); nothing deleted")
    else:
        print(f"deleted {deleted} audit rows")
    return 0


def _read_password(args, username: str) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    try:
        first = getpass.getpass(f"password for {username}: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise _UsageError("no terminal to ask for the password: pipe it in with --password-stdin") from None
    if first != again:
        raise _UsageError("the passwords differ; nothing was changed")
    return first


class _UsageError(Exception):
    pass


@contextlib.contextmanager
def _users(args):
    """The app's users and teams, its database closed afterwards."""
    from .app import Loom
    from .identity import Users

    loom = Loom.from_project(args.project, database_url=args.database)
    try:
        yield Users(loom)
    finally:
        loom.close()


def _user(args) -> int:

    if args.action != "list" and not args.username:
        print(f"loom: 'user {args.action}' needs a username", file=sys.stderr)
        return 2
    with _users(args) as users:
        if args.action == "create":
            password = _read_password(args, args.username)
            fields = {k: v for k, v in (("name", args.name), ("email", args.email), ("roles", args.role)) if v}
            user = users.create(args.username, password, **fields)
            print(f"created user {user['username']} (id {user['id']})")
        elif args.action == "passwd":
            users.set_password(args.username, _read_password(args, args.username))
            print(f"password of {args.username} changed")
        elif args.action in ("disable", "enable"):
            users.set_active(args.username, args.action == "enable")
            print(f"{args.username} {args.action}d")
        else:
            for user in users.list():
                state = "" if user["active"] else "  (disabled)"
                print(f"{user['username']:<24} {user.get('name') or '':<30} {user.get('email') or ''}{state}")
    return 0


def _team(args) -> int:

    needs = {"create": ["team"], "add": ["team", "username"], "remove": ["team", "username"], "list": []}
    missing = [n for n in needs[args.action] if not getattr(args, n)]
    if missing:
        print(f"loom: 'team {args.action}' needs {' and '.join(missing)}", file=sys.stderr)
        return 2
    with _users(args) as users:
        if args.action == "create":
            team = users.create_team(args.team, manager=args.manager)
            print(f"created team {team['name']} (id {team['id']})")
        elif args.action == "add":
            users.add_member(args.team, args.username)
            print(f"{args.username} is now in {args.team}")
        elif args.action == "remove":
            users.remove_member(args.team, args.username)
            print(f"{args.username} left {args.team}")
        else:
            for team in users.teams():
                print(team["name"])
    return 0


def _print_problem(exc) -> None:
    details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors) or exc.detail or exc.title
    print(f"loom: {details}", file=sys.stderr)


def _output(text: str, path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _schema(args) -> int:
    from loomcrm.schemas import config_json_schema_text

    _output(config_json_schema_text(), args.output)
    return 0


def _openapi(args) -> int:
    from .commands import openapi

    _output(json.dumps(openapi(args.project), indent=2, ensure_ascii=False) + "\n", args.output)
    return 0


COMMANDS = {"validate": _validate, "plan": _plan, "migrate": _migrate, "check": _check, "history": _history, "seed": _seed, "serve": _serve, "worker": _worker,
            "user": _user, "team": _team, "access": _access, "reassign": _reassign, "plugins": _plugins, "explain-config": _explain_config, "purge-audit": _purge_audit, "schema": _schema, "openapi": _openapi}

if __name__ == "__main__":
    sys.exit(main())
