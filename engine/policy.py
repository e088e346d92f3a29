"""Roles compiled into policies: per entity, which records each operation reaches; per field, a level.

Pure functions of the specs and the compiled entities. A user holding several roles gets their
union (:func:`combine`): the widest scope per operation, the most open level per field. Enforcing
the policies in the query layer is the runtime's job; this module only says what they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loomcrm.schemas.security import RoleSpec

from .errors import ConfigError, did_you_mean
from .manifest import Entity, text_for
from .names import check_identifier

__all__ = ["Grant", "Reach", "RolePolicy", "compile_roles", "combine", "SCOPES", "LEVELS", "OPERATIONS",
           "ROW_OPERATIONS"]

SCOPES = ("none", "own", "team", "all")
LEVELS = ("hidden", "read", "write")
OPERATIONS = ("read", "create", "update", "delete", "export")
#: The operations that reach existing rows (and so have a scope and row rules); ``create`` has neither.
ROW_OPERATIONS = ("read", "update", "delete", "export")


@dataclass(frozen=True)
class Grant:
    """What one role may do with one entity: a scope per operation (``create`` is all-or-nothing)."""

    read: str = "none"
    create: bool = False
    update: str = "none"
    delete: str = "none"
    export: str = "none"

    def scope(self, operation: str) -> str:
        value = getattr(self, operation)
        return ("all" if value else "none") if operation == "create" else value

    def union(self, other: Grant) -> Grant:
        wider = {op: max(getattr(self, op), getattr(other, op), key=SCOPES.index)
                 for op in ("read", "update", "delete", "export")}
        return Grant(create=self.create or other.create, **wider)


NO_GRANT = Grant()


@dataclass(frozen=True)
class Reach:
    """One way an operation reaches rows: a scope, optionally narrowed by a row rule (CEL, run as SQL).

    An operation reaches the rows that any of its reaches matches.
    """

    scope: str  # own | team | all
    rule: Any = None  # a rowrules.RowRule, or None

    @property
    def key(self) -> tuple:
        return self.scope, None if self.rule is None else self.rule.text


def simplify(reaches) -> tuple[Reach, ...]:
    """Drop reaches another one already covers: a plain scope covers narrower and ruled ones."""
    unique = list({r.key: r for r in reaches}.values())
    plain = [SCOPES.index(r.scope) for r in unique if r.rule is None]
    widest = max(plain, default=0)
    return tuple(r for r in unique if r.rule is None and SCOPES.index(r.scope) == widest
                 or r.rule is not None and SCOPES.index(r.scope) > widest)


@dataclass(frozen=True)
class RolePolicy:
    """A role, resolved: its inherited grants included, every field of every entity given a level.

    ``grants`` summarises (the widest scope per operation, for display and quick refusals);
    ``reaches`` is exact: per ``(entity, operation)``, the scopes and row rules that reach rows.
    """

    name: str
    label: str
    grants: dict[str, Grant] = field(default_factory=dict)
    levels: dict[str, dict[str, str]] = field(default_factory=dict)  # entity -> field -> level
    reaches: dict[tuple[str, str], tuple[Reach, ...]] = field(default_factory=dict)

    def grant(self, entity: str) -> Grant:
        return self.grants.get(entity, NO_GRANT)

    def level(self, entity: str, field_name: str) -> str:
        return self.levels.get(entity, {}).get(field_name, "hidden")

    def reach(self, entity: str, operation: str) -> tuple[Reach, ...]:
        return self.reaches.get((entity, operation), ())


def combine(policies: list[RolePolicy], name: str = "combined") -> RolePolicy:
    """The union of several roles' policies (the rule for users who hold more than one role):
    an operation reaches every row one of the roles reaches; a field gets its most open level."""
    grants: dict[str, Grant] = {}
    levels: dict[str, dict[str, str]] = {}
    reaches: dict[tuple[str, str], list[Reach]] = {}
    for policy in policies:
        for entity, grant in policy.grants.items():
            grants[entity] = grants.get(entity, NO_GRANT).union(grant)
        for entity, fields in policy.levels.items():
            mine = levels.setdefault(entity, {})
            for fname, level in fields.items():
                mine[fname] = max(mine.get(fname, "hidden"), level, key=LEVELS.index)
        for key, terms in policy.reaches.items():
            reaches.setdefault(key, []).extend(terms)
    return RolePolicy(name, name, grants, levels, {k: simplify(v) for k, v in reaches.items()})


def compile_roles(loaded, entities: dict[str, Entity], locale: str, errors: list[ConfigError]) -> dict[str, RolePolicy]:
    """Check every role and resolve inheritance; unknown names are errors with did-you-mean."""
    specs: dict[str, RoleSpec] = loaded.roles
    for name, spec in specs.items():
        problem = check_identifier(name, "role", frozenset())
        if problem:
            errors.append(ConfigError(loaded.where_role(name, key=True), *problem))
        for i, parent in enumerate(spec.inherits):
            if parent not in specs:
                errors.append(ConfigError(loaded.where_role(name, "inherits", i), "E124",
                                          f"role '{name}' inherits '{parent}', which is not a role",
                                          did_you_mean(parent, specs) or f"roles: {', '.join(sorted(specs))}"))
        for entity in spec.entities:
            if entity not in entities:
                errors.append(ConfigError(loaded.where_role(name, "entities", entity, key=True), "E124",
                                          f"role '{name}' grants access to '{entity}', which is not an entity",
                                          did_you_mean(entity, entities) or None))
        for path in spec.fields:
            entity, _, fname = path.partition(".")
            if entity not in entities or fname not in entities[entity].fields:
                known = [f"{e.name}.{f}" for e in entities.values() for f in e.fields]
                errors.append(ConfigError(loaded.where_role(name, "fields", path, key=True), "E125",
                                          f"role '{name}' sets the level of '{path}', which is not a field "
                                          "(write entity.field)", did_you_mean(path, known)))
    rules = _compile_rules(loaded, specs, entities, errors)
    resolved: dict[str, RolePolicy] = {}
    for name in specs:
        resolved[name] = _resolve(loaded, name, specs, entities, locale, rules, resolved, [], errors)
    return resolved


def _compile_rules(loaded, specs: dict[str, RoleSpec], entities: dict[str, Entity], errors) -> dict:
    """Each grant's ``where:`` row rule, checked against the entity and the user, ready for SQL."""
    rules = {}
    for name, spec in specs.items():
        for entity_name, grant in spec.entities.items():
            if grant.where is None or entity_name not in entities:
                continue
            from .rowrules import RowRuleError, compile_row_rule

            try:
                rules[(name, entity_name)] = compile_row_rule(grant.where, entities[entity_name], entities["user"])
            except RowRuleError as exc:
                errors.append(ConfigError(loaded.where_role(name, "entities", entity_name, "where"), "E131",
                                          f"row rule of role '{name}' on '{entity_name}': {exc.message}", exc.hint))
    return rules


def _resolve(loaded, name, specs, entities, locale, rules, done, chain, errors) -> RolePolicy:
    if name in done:
        return done[name]
    spec = specs[name]
    if name in chain:
        errors.append(ConfigError(loaded.where_role(name, "inherits", key=True), "E129",
                                  f"roles inherit in a circle: {' -> '.join([*chain, name])}",
                                  "remove one of the 'inherits:' entries"))
        return RolePolicy(name, name)
    parents = [_resolve(loaded, p, specs, entities, locale, rules, done, [*chain, name], errors)
               for p in spec.inherits if p in specs]
    grants = {e: Grant(g.read, g.create, g.update, g.delete, g.export)
              for e, g in spec.entities.items() if e in entities}
    reaches: dict[tuple[str, str], list[Reach]] = {}
    for entity_name, grant in grants.items():
        rule = rules.get((name, entity_name))
        for op in ROW_OPERATIONS:
            if grant.scope(op) != "none":
                reaches.setdefault((entity_name, op), []).append(Reach(grant.scope(op), rule))
    for parent in parents:
        for entity, grant in parent.grants.items():
            grants[entity] = grants.get(entity, NO_GRANT).union(grant)
        for key, terms in parent.reaches.items():
            reaches.setdefault(key, []).extend(terms)
    levels: dict[str, dict[str, str]] = {}
    for entity_name, grant in grants.items():
        entity = entities[entity_name]
        default = "write" if grant.create or grant.update != "none" else "read" if grant.read != "none" else "hidden"
        levels[entity_name] = {
            f.name: ("read" if f.system or f.read_only else default) if default != "hidden" else "hidden"
            for f in entity.fields.values()
        }
    for path, level in spec.fields.items():
        entity_name, _, fname = path.partition(".")
        if entity_name in levels and fname in levels[entity_name]:
            field_ = entities[entity_name].fields[fname]
            levels[entity_name][fname] = "read" if level == "write" and (field_.system or field_.read_only) else level
    for parent in parents:  # a level an inherited role opens stays open (union)
        for entity_name, fields in parent.levels.items():
            mine = levels.setdefault(entity_name, {})
            for fname, level in fields.items():
                if path_of(entity_name, fname) not in spec.fields:
                    mine[fname] = max(mine.get(fname, "hidden"), level, key=LEVELS.index)
    label = spec.label if isinstance(spec.label, str) else text_for(spec.label or {}, locale) or name
    policy = RolePolicy(name, label or name, grants, levels, {k: simplify(v) for k, v in reaches.items()})
    done[name] = policy
    return policy


def path_of(entity: str, field_name: str) -> str:
    return f"{entity}.{field_name}"
