"""What one caller may see and change: the one place every channel asks.

An :class:`Access` is a caller's roles combined into one policy (the union rule of
:func:`~loomcrm.engine.policy.combine`) plus what row scopes need about the caller: their id, the
users whose records the ``team`` scope reaches, and their attributes for row rules. The pipeline
asks it before every read and write; list and get queries carry its row conditions as SQL and
select only the columns it lets the caller read. Exports, reports, forms and webhooks ask the same
object, so no channel has a side door.

``ctx.access is None`` means unrestricted: Loom's own code (the command line, seeding, plugins
calling the Python API), and every caller of a project that defines no ``roles:`` at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import Problem
from ..manifest import Entity, Manifest
from ..policy import RolePolicy, combine

__all__ = ["Access", "Policies", "RowFilter", "access_for", "describe_reach", "forbidden"]

#: A redacted value in history entries: the field changed, but the reader may not see it.
REDACTED = "redacted"


@dataclass(frozen=True)
class RowFilter:
    """The rows an operation reaches, as SQL: ``key`` names the condition's shape (for statement
    caches), ``condition(table)`` builds it with bind parameters, ``params`` holds their values."""

    key: tuple
    build: Any
    params: dict[str, Any]

    def condition(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return self.build(table)


@dataclass
class Access:
    """A caller's combined policy, and the facts about the caller its row scopes need."""

    policy: RolePolicy
    actor: int | None
    team_owners: tuple[int, ...] = ()  # users whose records 'team' reaches: my teams', my managed teams'
    user: Mapping[str, Any] = field(default_factory=dict)  # the caller's attributes, for row rules
    _readable: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _rows: dict[tuple[str, str], RowFilter | None] = field(default_factory=dict, repr=False)

    # --- entities and fields -----------------------------------------------------------------------
    def can(self, entity: Entity, operation: str) -> bool:
        return self.policy.grant(entity.name).scope(operation) != "none"

    def require(self, entity: Entity, operation: str) -> None:
        """403 unless the caller's roles allow ``operation`` on some ``entity`` records."""
        if not self.can(entity, operation):
            verb = {"read": "read", "create": "create", "update": "change", "delete": "delete",
                    "export": "export"}[operation]
            raise forbidden(f"your roles do not allow you to {verb} {entity.name} records")

    def readable(self, entity: Entity) -> tuple[str, ...]:
        """Names of the fields the caller may see, in field order (``id`` always, if any)."""
        names = self._readable.get(entity.name)
        if names is None:
            levels = self.policy.levels.get(entity.name, {})
            names = tuple(n for n in entity.fields if levels.get(n, "hidden") != "hidden")
            self._readable[entity.name] = names
        return names

    def level(self, entity: Entity, name: str) -> str:
        return self.policy.level(entity.name, name)

    def check_readable(self, entity: Entity, uses: Iterable[tuple[str, str]]) -> None:
        """403 naming every ``(parameter, field)`` that uses a field the caller may not read."""
        visible = set(self.readable(entity))
        errors = [{"field": param, "code": "forbidden", "message": f"'{name}' of {entity.name} is hidden from "
                   "your roles; it cannot be filtered, sorted, selected or expanded"}
                  for param, name in uses if name not in visible]
        if errors:
            raise forbidden("the query uses fields your roles cannot read", errors)

    def check_writable(self, entity: Entity, names: Iterable[str]) -> None:
        """403 naming every field the caller may not write (unknown names are left to validation)."""
        errors = []
        for name in names:
            if name in entity.fields and self.level(entity, name) != "write" and not entity.fields[name].system:
                level = self.level(entity, name)
                why = "is hidden from your roles" if level == "hidden" else "is read-only for your roles"
                errors.append({"field": name, "code": "forbidden", "message": f"{entity.name}.{name} {why}"})
        if errors:
            raise forbidden("your roles do not allow writing " + ", ".join(e["field"] for e in errors), errors)

    # --- rows --------------------------------------------------------------------------------------
    def rows(self, entity: Entity, operation: str) -> RowFilter | None:
        """The rows ``operation`` reaches; None for all of them. Call :meth:`require` first."""
        cache_key = (entity.name, operation)
        if cache_key in self._rows:
            return self._rows[cache_key]
        reaches = self.policy.reach(entity.name, operation)
        result: RowFilter | None
        if any(r.scope == "all" and r.rule is None for r in reaches):
            result = None
        else:
            result = self.filter_for(reaches)
        self._rows[cache_key] = result
        return result

    def filter_for(self, reaches) -> RowFilter:
        """The SQL of a set of reaches: any of them lets a row through."""
        params: dict[str, Any] = {}
        parts = []
        for i, reach in enumerate(reaches):
            prefix = f"rule{i}_"
            if reach.rule is not None:
                params.update(reach.rule.parameters(self.user, prefix))
            parts.append((reach.scope, reach.rule, prefix))
        if any(scope == "own" for scope, _, _ in parts):
            params["scope_actor"] = self.actor
        if any(scope == "team" for scope, _, _ in parts):
            params["scope_team"] = list(self.team_owners)

        def build(table: sa.Table) -> sa.ColumnElement[bool]:
            alternatives = []
            for scope, rule, prefix in parts:
                terms = []
                if scope == "own":
                    terms.append(table.c.owner == sa.bindparam("scope_actor"))
                elif scope == "team":
                    terms.append(table.c.owner.in_(sa.bindparam("scope_team", expanding=True)))
                if rule is not None:
                    terms.append(rule.condition(table, prefix))
                alternatives.append(sa.and_(*terms) if terms else sa.true())
            return sa.or_(*alternatives) if alternatives else sa.false()

        return RowFilter(tuple(r.key for r in reaches), build, params)

    # --- history -----------------------------------------------------------------------------------
    def redact(self, entity: Entity, entries: list[dict]) -> list[dict]:
        """History entries with the values of hidden fields replaced by ``"redacted"``."""
        visible = set(self.readable(entity))
        for entry in entries:
            changes = entry["changes"]
            for name in changes:
                if name not in visible:
                    changes[name] = [REDACTED, REDACTED]
        return entries


SCOPE_WORDS = {"own": "records you own", "team": "records owned by you or your teams' members",
               "all": "all records"}


def describe_reach(reaches) -> str:
    """``records you own, or all records where record.region == user.region`` (for messages)."""
    if not reaches:
        return "none"
    return ", or ".join(SCOPE_WORDS[r.scope] + (f" where {r.rule.text}" if r.rule is not None else "")
                        for r in reaches)


def forbidden(detail: str, errors: list[dict[str, str]] | None = None) -> Problem:
    return Problem(403, "Forbidden", detail=detail, errors=errors)


class Policies:
    """Combined policies per set of roles, built once (users share few role combinations)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._combined: dict[frozenset[str], RolePolicy] = {}

    @property
    def enforced(self) -> bool:
        """Roles are enforced as soon as the project defines any."""
        return bool(self.manifest.roles)

    def for_roles(self, roles: Iterable[str]) -> RolePolicy:
        key = frozenset(r for r in roles if r in self.manifest.roles)
        policy = self._combined.get(key)
        if policy is None:
            policy = combine([self.manifest.roles[r] for r in sorted(key)], "+".join(sorted(key)) or "no role")
            self._combined[key] = policy
        return policy


def access_for(policies: Policies, store, conn: sa.Connection, actor: int | None) -> Access | None:
    """The caller's Access (None when the project defines no roles). Anonymous callers hold no role."""
    if not policies.enforced:
        return None
    if actor is None:
        return Access(policies.for_roles(()), None)
    user_entity = store.manifest.entities["user"]
    user = store.fetch(conn, user_entity, actor) or {}
    teams = set(user.get("teams") or [])
    team_table = store.tables["team"]
    manager = team_table.c[store.manifest.entities["team"].fields["manager"].column]
    teams.update(conn.execute(sa.select(team_table.c.id).where(manager == actor)).scalars())
    owners = {actor}
    if teams:
        join = store.metadata.tables[user_entity.join_table("teams")]
        member, team = join.info["join"]
        owners.update(conn.execute(sa.select(join.c[member]).where(join.c[team].in_(sorted(teams)))).scalars())
    attributes = {**user, "teams": sorted(set(user.get("teams") or [])), "roles": list(user.get("roles") or [])}
    return Access(policies.for_roles(attributes["roles"]), actor, tuple(sorted(owners)), attributes)


def explain(access: Access | None, store, conn: sa.Connection, entity: Entity, record_id: int) -> list[str]:
    """Why the caller can or cannot see and change one record: a line per operation, naming the
    scope or row rule that reaches it (or that none does), then the field levels."""
    from ..policy import ROW_OPERATIONS

    if access is None:
        return ["the project defines no roles: every signed-in user may do everything"]
    record = store.fetch(conn, entity, record_id, names=("id", "owner"))
    if record is None:
        return [f"no {entity.name} with id {record_id}"]
    users = store.tables["user"]
    owner = conn.execute(sa.select(users.c.username).where(users.c.id == record["owner"])).scalar()
    owner_text = "nobody" if record["owner"] is None else f"{owner} (user {record['owner']})"
    lines = [f"roles: {access.policy.name}; {entity.name} {record_id} is owned by {owner_text}"
             + (", that is you" if record["owner"] == access.actor and access.actor is not None else "")]
    for operation in ROW_OPERATIONS:
        reaches = access.policy.reach(entity.name, operation)
        matching = [r for r in reaches if store.in_rows(conn, entity, record_id, _single(access, r))]
        if matching:
            verdict = f"yes: {describe_reach(matching[:1])}"
        elif reaches:
            verdict = f"no: your roles reach only {describe_reach(reaches)}, and this record is not one of them"
        else:
            verdict = f"no: none of your roles grants {operation} on {entity.name}"
        lines.append(f"  {operation:<7} {verdict}")
    create = "yes" if access.can(entity, "create") else f"no: none of your roles grants create on {entity.name}"
    lines.append(f"  {'create':<7} {create} (for new records)")
    levels: dict[str, list[str]] = {}
    for name in entity.fields:
        levels.setdefault(access.level(entity, name), []).append(name)
    for level in ("write", "read", "hidden"):
        if levels.get(level):
            lines.append(f"  fields {level}: {', '.join(levels[level])}")
    return lines


def _single(access: Access, reach) -> RowFilter | None:
    """The row filter of one reach alone (to say which one lets a record through)."""
    if reach.scope == "all" and reach.rule is None:
        return None
    return access.filter_for((reach,))
