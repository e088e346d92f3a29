"""Rollup fields and defaults from expressions, compiled with the config.

A rollup summarises the records that point at a record: an account's ``won_amount`` is
``{of: opportunity.account, op: sum, field: amount, where: "record.stage == 'won'"}``. It is
stored in the parent's column (so lists filter and sort by it) and kept current in SQL by
:mod:`loomcrm.engine.runtime.rollups` whenever a child is written. ``default_expr:`` is a CEL
expression giving a field's value when a create leaves it out.

Both are compiled after validation rules, when every entity and field exists. Problems are E145
(rollups) and E135 (expressions), with ``file:line:col``; contradictory options are E129.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError, did_you_mean
from .expressions import ExpressionError, compile_expression
from .fieldtypes import FieldValueError
from .manifest import Entity, Field
from .rowrules import RowRule, RowRuleError, compile_row_rule

__all__ = ["Rollup", "add_rollups", "rollups_of"]

NUMERIC = ("integer", "decimal", "money")
ORDERED = (*NUMERIC, "date", "datetime")
#: Which child field types each operation takes.
SUMMARISABLE = {"sum": NUMERIC, "min": ORDERED, "max": ORDERED}
#: Options a rollup field cannot have: Loom sets its value.
CONFLICTS = ("compute", "default", "default_expr", "required")
#: Digits before the decimal point of the default decimal(18, 2): enough for any sum a CRM keeps.
WIDE = 16


@dataclass(frozen=True)
class Rollup:
    """A checked rollup: field ``entity.name`` holds ``op`` over the ``child`` records whose ``ref``
    field points at it (and that ``where`` matches).

    :ivar field: the child field summarised; None for ``count``.
    :ivar where: the child records counted, as a :class:`~loomcrm.engine.rowrules.RowRule` over the
        child's table (it reads no ``user``); None for all of them.
    :ivar reads: the child fields whose change can change the value (ref, field, and those ``where`` reads).
    :ivar source: ``file:line:col`` of the ``rollup:`` key.
    """

    entity: str
    name: str
    child: str
    ref: str
    op: str
    field: str | None = None
    where: RowRule | None = dataclasses.field(default=None, compare=False)
    reads: frozenset[str] = frozenset()
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """The definition as the manifest stores it: a changed one makes ``loom migrate`` recompute."""
        return {"of": f"{self.child}.{self.ref}", "op": self.op, "field": self.field,
                "where": self.where.text if self.where else None}


def rollups_of(entities: dict[str, Entity]) -> list[Rollup]:
    """Every rollup of the app, each after the rollups it reads (a rollup may sum another one)."""
    return _ordered(entities)[0]


def _ordered(entities: dict[str, Entity]) -> tuple[list[Rollup], list[list[tuple[str, str]]]]:
    """:func:`rollups_of`, and the circles of rollups reading one another that the walk met (each as
    ``(entity, field)`` keys from a rollup back to itself; the compiler refuses them)."""
    found = {(e.name, f.name): f.rollup for e in entities.values() for f in e.fields.values() if f.rollup}
    ordered: dict[tuple[str, str], Rollup] = {}
    visiting: list[tuple[str, str]] = []  # the path from the rollup the walk started at
    circles = []

    def visit(key: tuple[str, str]) -> None:
        if key in visiting:
            circles.append([*visiting[visiting.index(key):], key])
            return
        if key in ordered:
            return
        visiting.append(key)
        rollup = found[key]
        for name in sorted(rollup.reads):
            if (rollup.child, name) in found:
                visit((rollup.child, name))
        visiting.pop()
        ordered[key] = rollup

    for key in found:
        visit(key)
    return list(ordered.values()), circles


def add_rollups(loaded, entities: dict[str, Entity], errors: list[ConfigError]) -> dict[str, Entity]:
    """``entities`` with their ``default_expr:`` and ``rollup:`` fields compiled into the fields'
    ``default_expr`` and ``rollup``; problems are appended to ``errors``."""
    result = {}
    for name, entity in entities.items():
        spec = loaded.entities.get(name)
        changed = {}
        for fname, fspec in (spec.fields.items() if spec else ()):
            field = entity.fields.get(fname)
            if field is None:  # it failed to compile and has its own error
                continue
            if fspec.default_expr is not None:
                field = _with_default_expr(loaded, entities, entity, field, fspec, errors)
            if fspec.rollup is not None:
                field = _with_rollup(loaded, entities, entity, field, fspec, errors)
            if field is not entity.fields[fname]:
                changed[fname] = field
        result[name] = replace(entity, fields={n: changed.get(n, f) for n, f in entity.fields.items()}) \
            if changed else entity
    _check_dependencies(loaded, result, errors)
    return result


def _err(loaded, entity: str, path: tuple, code: str, message: str, hint: str | None = None, *,
         key: bool = False) -> ConfigError:
    return ConfigError(loaded.where(entity, *path, key=key), code, message, hint)


# --- default_expr -------------------------------------------------------------------------------------
def _with_default_expr(loaded, entities, entity: Entity, field: Field, fspec, errors) -> Field:
    """The field with its ``default_expr`` compiled: CEL over the values given so far and the user."""
    path = ("fields", field.name, "default_expr")
    what = f"default of '{entity.name}.{field.name}'"
    for other in ("compute", "default"):
        if other in fspec.model_fields_set:
            errors.append(_err(loaded, entity.name, path, "E129", f"field '{entity.name}.{field.name}' has both "
                               f"'default_expr:' and '{other}:'", f"keep one of the two; {_WHY[other]}", key=True))
            return field
    try:
        expression = compile_expression(fspec.default_expr, entity, entities["user"])
    except ExpressionError as exc:
        errors.append(_err(loaded, entity.name, path, "E135", f"{what}: {exc.message}", exc.hint))
        return field
    if "old" in expression.reads:
        errors.append(_err(loaded, entity.name, path, "E135", f"{what}: a default is set when a record is "
                           "created, so there is no 'old' record to read", "read 'record' (the values given)"))
        return field
    return replace(field, default_expr=expression)


_WHY = {"compute": "compute sets the value on every save, default_expr only when a create leaves it out",
        "default": "default is a fixed value, default_expr an expression"}


# --- rollup -------------------------------------------------------------------------------------------
def _with_rollup(loaded, entities, entity: Entity, field: Field, fspec, errors) -> Field:
    """The field with its ``rollup`` compiled, or unchanged after appending what is wrong with it."""
    spec = fspec.rollup
    where = f"rollup '{entity.name}.{field.name}'"
    path = ("fields", field.name)
    count = len(errors)
    for option in CONFLICTS:
        if option in fspec.model_fields_set and (option != "required" or fspec.required):
            errors.append(_err(loaded, entity.name, (*path, option), "E145",
                               f"{where} cannot also have '{option}:'",
                               "Loom sets a rollup's value from the child records; remove "
                               f"'{option}:'" + (" (an empty min or max is null)" if option == "required" else ""),
                               key=True))
    found = _child_and_ref(loaded, entities, entity, field, spec.of, errors)
    if found is None:
        return field
    child, ref = found
    summarised = _summarised(loaded, entity, field, child, spec, errors)
    rule = _where(loaded, entities, entity, field, child, spec.where, errors)
    if len(errors) > count:
        return field
    reads = {ref.name, *([summarised.name] if summarised else []), *(rule.record_fields if rule else ())}
    rollup = Rollup(entity.name, field.name, child.name, ref.name, spec.op, summarised and summarised.name, rule,
                    frozenset(reads), str(loaded.where(entity.name, *path, "rollup", key=True)))
    return replace(field, rollup=rollup, default=_empty_value(field, spec.op))


def _empty_value(field: Field, op: str) -> Any:
    """The value of a record without children (so a new record starts with it): 0 for count and
    sum, null for min and max (and for a count or sum whose ``min:`` excludes 0)."""
    try:
        return field.field_type.parse(field, 0) if op in ("count", "sum") else None
    except FieldValueError:
        return None


def _child_and_ref(loaded, entities, entity: Entity, field: Field, of: str, errors) -> tuple[Entity, Field] | None:
    """The child entity and its ref field named by ``of: <child>.<ref>``, which must point here."""
    path = ("fields", field.name, "rollup", "of")
    where = f"rollup '{entity.name}.{field.name}'"
    pointing = [f"{e.name}.{f.name}" for e in entities.values() for f in e.user_fields
                if f.type == "ref" and f.target == entity.name]
    choices = f"records that point at {entity.name}: {', '.join(pointing)}" if pointing else \
        f"no entity has a ref field to {entity.name} yet; add one, e.g. {{type: ref, to: {entity.name}}}"
    child_name, _, ref_name = of.partition(".")
    if not ref_name or "." in ref_name:
        errors.append(_err(loaded, entity.name, path, "E145", f"{where}: 'of' must be <child entity>.<ref field>, "
                           f"not '{of}'", did_you_mean(of, pointing) or choices))
        return None
    child = entities.get(child_name)
    if child is None:
        errors.append(_err(loaded, entity.name, path, "E145", f"{where}: there is no entity '{child_name}'",
                           did_you_mean(of, pointing) or did_you_mean(child_name, entities) or choices))
        return None
    ref = child.fields.get(ref_name)
    if ref is None or ref.type != "ref" or ref.target != entity.name:
        refs = [f.name for f in child.user_fields if f.type == "ref" and f.target == entity.name]
        problem = f"{child_name} has no field '{ref_name}'" if ref is None else \
            f"{child_name}.{ref_name} is {_a(ref.type)} field" + (f" pointing at {ref.target}" if ref.target else "")
        errors.append(_err(loaded, entity.name, path, "E145",
                           f"{where}: {problem}; 'of' needs a ref field of {child_name} pointing at {entity.name}",
                           did_you_mean(ref_name, refs) or choices))
        return None
    return child, ref


def _summarised(loaded, entity: Entity, field: Field, child: Entity, spec, errors) -> Field | None:
    """The child field ``op`` summarises (None for count); checks it and the rollup field's own type."""
    where = f"rollup '{entity.name}.{field.name}'"
    path = ("fields", field.name, "rollup")
    type_path = ("fields", field.name, "type")
    if spec.op == "count":
        if spec.field is not None:
            errors.append(_err(loaded, entity.name, (*path, "field"), "E145",
                               f"{where}: count counts records and reads no field",
                               "remove 'field:', or use op: sum, min or max to summarise it"))
        if field.type != "integer":
            errors.append(_err(loaded, entity.name, type_path, "E145",
                               f"{where}: a count is a whole number, not {_a(field.type)}", "make it type: integer"))
        return None
    kinds = SUMMARISABLE[spec.op]
    usable = [f.name for f in child.user_fields if f.type in kinds and f.column is not None]
    if spec.field is None:
        errors.append(_err(loaded, entity.name, (*path, "op"), "E145", f"{where}: {spec.op} needs 'field:', the "
                           f"{child.name} field it summarises", f"{child.name} fields it can take: "
                           f"{', '.join(usable) or 'none'}"))
        return None
    summarised = child.fields.get(spec.field)
    if summarised is None or summarised.type not in kinds:
        problem = f"{child.name} has no field '{spec.field}'" if summarised is None else \
            f"{spec.op} cannot summarise {child.name}.{spec.field}, {_a(summarised.type)} field"
        errors.append(_err(loaded, entity.name, (*path, "field"), "E145", f"{where}: {problem}",
                           did_you_mean(spec.field, usable) or f"{spec.op} takes {', '.join(kinds)} fields; "
                           f"{child.name} has: {', '.join(usable) or 'none'}"))
        return None
    if field.type != summarised.type:
        errors.append(_err(loaded, entity.name, type_path, "E145",
                           f"{where}: the {spec.op} of {child.name}.{summarised.name} ({summarised.type}) needs "
                           f"{_a(summarised.type)} field, not {_a(field.type)} field",
                           f"make it type: {summarised.type}"))
    elif field.params.get("currency") and summarised.params.get("currency") not in (None,
                                                                                     field.params["currency"]):
        errors.append(_err(loaded, entity.name, type_path, "E145",
                           f"{where}: {child.name}.{summarised.name} is in {summarised.params['currency']}, "
                           f"the field in {field.params['currency']}",
                           f"give both the same currency, e.g. currency: {summarised.params['currency']}"))
    if field.type == summarised.type and "precision" in field.params and not _holds(field, summarised, spec.op):
        errors.append(_err(loaded, entity.name, (*path[:-1], "precision"), "E145",
                           f"{where}: {field.name} has {_digits(field)} digits before the decimal point and "
                           f"{child.name}.{summarised.name} {_digits(summarised)}, so "
                           + ("the sum of two records may not fit" if spec.op == "sum" else "a value may not fit"),
                           f"give {field.name} precision {_room(field, summarised, spec.op)}"))
    return summarised


def _digits(field: Field) -> int:
    """How many digits a decimal or money field holds before the decimal point."""
    return field.params["precision"] - field.params["scale"]


def _holds(field: Field, summarised: Field, op: str) -> bool:
    """Whether ``field`` can hold the ``op`` of ``summarised`` values: a min or max is one of them; a
    sum needs a digit more than each (room for ten records), or the default's width at least."""
    mine, theirs = _digits(field), _digits(summarised)
    if op != "sum":
        return mine >= theirs
    return mine > theirs or mine >= max(theirs, WIDE)


def _room(field: Field, summarised: Field, op: str) -> int:
    """The precision to suggest for ``field`` (at its scale): as many digits before the point as
    ``summarised`` for a min or max; for a sum the default's, or the child's when that is wider."""
    return field.params["scale"] + (max(_digits(summarised), WIDE) if op == "sum" else _digits(summarised))


def _where(loaded, entities, entity: Entity, field: Field, child: Entity, text: str | None,
           errors) -> RowRule | None:
    """``where:`` as a row rule over the child's table; it may not read ``user`` (one value for all)."""
    if text is None:
        return None
    path = ("fields", field.name, "rollup", "where")
    where = f"rollup '{entity.name}.{field.name}' where"
    try:
        rule = compile_row_rule(text, child, entities["user"])
    except RowRuleError as exc:
        errors.append(_err(loaded, entity.name, path, "E145", f"{where}: {exc.message}", exc.hint))
        return None
    if rule.user_attributes:
        errors.append(_err(loaded, entity.name, path, "E145",
                           f"{where}: reads user.{rule.user_attributes[0]}, but a rollup holds one value for "
                           "every user", f"compare record.<field> of {child.name} with literals only"))
        return None
    return rule


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


# --- across rollups -----------------------------------------------------------------------------------
def _check_dependencies(loaded, entities: dict[str, Entity], errors) -> None:
    """A rollup may summarise another rollup, but not in a circle; a computed field may not read a
    rollup, which changes without its record being saved (the computed value would go stale)."""
    for circle in _ordered(entities)[1]:
        entity, name = circle[0]
        errors.append(_err(loaded, entity, ("fields", name, "rollup"), "E145",
                           "rollups read each other in a circle: " + " -> ".join(f"{e}.{f}" for e, f in circle),
                           "a rollup may summarise another rollup only when that one does not depend on it",
                           key=True))
    for entity in entities.values():
        own = {f.name for f in entity.fields.values() if f.rollup}
        for field in entity.fields.values():
            read = own & set(field.compute.reads.get("record", ())) if field.compute and own else set()
            if read:
                errors.append(_err(loaded, entity.name, ("fields", field.name, "compute"), "E145",
                                   f"computed field '{entity.name}.{field.name}' reads rollup field "
                                   f"'{sorted(read)[0]}', which changes without this record being saved, so "
                                   "the computed value would go stale",
                                   "compute it from stored fields, or read the rollup where it is needed "
                                   "(validation rules, filters)"))
