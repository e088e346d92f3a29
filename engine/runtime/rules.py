"""Expressions at write time: defaults (``default_expr:``) on create, computed fields (``compute:``),
then validation rules (``rules:``).

All three evaluate CEL (:mod:`loomcrm.engine.expressions`) over one ``cel.Context`` per step holding only
the values the expressions read: converting values for CEL costs far more than evaluating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..actions import to_field_value
from ..errors import Problem
from ..expressions import MAPS, all_of, bind, layout, reads_of
from ..fieldtypes import FieldValueError
from ..manifest import Entity, Manifest, text_for
from .context import Context, zone

__all__ = ["RecordRules"]


@dataclass(frozen=True)
class Evaluated:
    """What :meth:`RecordRules.compute` leaves for :meth:`RecordRules.errors`: the CEL context if it
    still holds the record as computed (else None), and True when every rule already passed."""

    variables: Any
    passed: bool | None = None


class RecordRules:
    """The expression defaults, computed fields and validation rules of one app's entities (plans
    cached per entity)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._plans: dict[str, tuple] = {}  # entity -> (computed fields, what they read)
        self._defaults: dict[str, tuple] = {}  # entity -> (its fields with default_expr, what they read)
        self._batches: dict[str, Any] = {}  # entity -> one CEL program checking all its rules

    def _plan(self, entity: Entity) -> tuple:
        """``(computed fields, what they and the rules read, one program for them all or None, the
        context's layout)``: one
        CEL context serves both. When no expression reads a computed field, one program computes the
        fields and checks the rules in a single evaluation (crossing into CEL costs more than evaluating)."""
        plan = self._plans.get(entity.name)
        if plan is None:
            computed = [f for f in entity.user_fields if f.compute is not None]
            rules = [e for rule in entity.rules for e in (rule.check, rule.when) if e is not None]
            reads = reads_of([*(f.compute for f in computed), *rules])
            independent = computed and "record" not in reads.get(MAPS, ()) and \
                not any(f.name in reads.get("record", ()) for f in computed)
            batch = all_of([(None, f.compute) for f in computed] + [(r.when, r.check) for r in entity.rules]) \
                if independent else None
            plan = self._plans[entity.name] = (computed, reads, batch, layout(reads))
        return plan

    def _context(self, ctx: Context, reads: dict, shape: tuple, record: dict, old: dict | None):
        return bind(shape, {"record": record, "old": old, "now": ctx.now,
                               "today": self._today(ctx) if "today" in reads else None,
                               "user": self.cel_user(ctx) if "user" in reads else None})

    def compute(self, ctx: Context, entity: Entity, record: dict, into: dict, old: dict | None):
        """Set every computed field (``compute:``) of ``record`` in ``into``, in field order, each value
        checked by its field type; a value that cannot be computed or does not fit is a 422. One CEL
        context serves them all, rebuilt only after a value that a later computation (or a rule) reads.
        Returns what :meth:`errors` can reuse: the context when it still holds the record as computed,
        and whether every rule passed when one program did it all."""
        computed, reads, batch, shape = self._plan(entity)
        if not computed:
            return None
        record, variables, errors, passed = dict(record), None, [], None
        results = None
        if batch is not None:
            variables = self._context(ctx, reads, shape, record, old)
            try:
                results = batch.execute(variables)
                passed = all(verdict is True for verdict in results[len(computed):])
            except Exception:  # one by one below: each error is told about on its own
                results = None
        for i, field in enumerate(computed):
            if variables is None:
                variables = self._context(ctx, reads, shape, record, old)
            try:
                result = results[i] if results is not None else field.compute.evaluate(variables)
                value = to_field_value(field, result, self.manifest.timezone)
            except FieldValueError as exc:
                errors.append(_field_error(field.name, exc.code, f"the computed value {exc.message}"))
                continue
            except Exception as exc:
                errors.append(_field_error(field.name, "compute_error", f"{entity.name}.{field.name} could not be "
                                     f"computed: {type(exc).__name__}: {exc}"))
                continue
            record[field.name] = into[field.name] = value
            if field.name in reads.get("record", ()):
                variables = None  # a later computation or a rule reads this value
        if errors:
            raise Problem(422, "Validation failed", errors=errors)
        return Evaluated(variables, passed)

    def defaults(self, ctx: Context, entity: Entity, values: dict) -> None:
        """Set, in field order, every field with a ``default_expr:`` that ``values`` (a create's input,
        literal defaults applied) leaves out; a later default reads an earlier one. The values go
        through the field's type as input would: a timestamp becomes a date in the app's time zone
        for a date field, a double is rounded to a decimal's scale. A value that cannot be worked
        out or does not fit is a 422 naming the field (``default_error``, or the type's code)."""
        defaulted, reads, shape = self._default_plan(entity)
        fields = [f for f in defaulted if f.name not in values]
        if not fields:
            return
        errors, variables = [], None
        for field in fields:
            if variables is None:
                variables = self._context(ctx, reads, shape, values, None)
            try:
                values[field.name] = to_field_value(field, field.default_expr.evaluate(variables),
                                                    self.manifest.timezone)
                if field.name in reads.get("record", ()):
                    variables = None  # a later default reads this value
            except FieldValueError as exc:
                errors.append(_field_error(field.name, exc.code, f"the default value {exc.message}"))
            except Exception as exc:  # CEL raises plain Python errors
                errors.append(_field_error(field.name, "default_error", f"the default of {entity.name}."
                                           f"{field.name} could not be worked out: {type(exc).__name__}: {exc}"))
        if errors:
            raise Problem(422, "Validation failed", errors=errors)

    def _default_plan(self, entity: Entity) -> tuple[list, dict, tuple]:
        """``(fields with a default_expr, what they all read, the context's layout)``: a create that gives some of them
        converts a value or two more for CEL than it needs, which costs less than working it out."""
        plan = self._defaults.get(entity.name)
        if plan is None:
            fields = [f for f in entity.user_fields if f.default_expr]
            reads = reads_of(f.default_expr for f in fields)
            plan = self._defaults[entity.name] = (fields, reads, layout(reads))
        return plan

    def _today(self, ctx: Context) -> str:
        return ctx.now.astimezone(zone(self.manifest.timezone)).date().isoformat()

    def errors(self, ctx: Context, entity: Entity, record: dict, old: dict | None,
               evaluated: Evaluated | None = None) -> list[dict[str, str]]:
        """The entity's validation rules (CEL): an error per failing rule and field, all together; a
        rule that cannot be evaluated (say, a division by zero) is an error naming it, never a 500.
        The values are converted for CEL once per write (``evaluated``: what :meth:`compute` did),
        and only those the rules read."""
        if evaluated is not None and evaluated.passed:
            return []
        variables = evaluated.variables if evaluated is not None else None
        if variables is None:
            _, reads, _, shape = self._plan(entity)
            variables = self._context(ctx, reads, shape, record, old)
        batch = self._batches.get(entity.name)
        if batch is None:
            batch = self._batches[entity.name] = all_of([(rule.when, rule.check) for rule in entity.rules])
        try:
            if all(verdict is True for verdict in batch.execute(variables)):
                return []
        except Exception:  # the rules one by one say which failed and how
            pass
        errors = []
        for rule in entity.rules:
            try:
                if rule.when is not None and rule.when.evaluate(variables) is not True:
                    continue
                passed = rule.check.evaluate(variables)
                if passed is True:
                    continue
                message = text_for(rule.message, ctx.locale or self.manifest.locales[0])
            except Exception as exc:  # CEL raises plain Python errors (ZeroDivisionError, KeyError...)
                passed, message = None, f"rule '{rule.name}' could not be evaluated: {type(exc).__name__}: {exc}"
            code = rule.name if passed is False else "rule_error"
            if passed not in (False, None):
                message = f"rule '{rule.name}' must give true or false, not {passed!r}"
            errors += [_field_error(f, code, message) for f in rule.fields or ("",)]
        return errors

    def cel_user(self, ctx: Context) -> dict[str, Any]:
        """``user`` for expressions: the caller's fields, id, roles and teams (nulls for Loom's own code)."""
        known = ctx.access.user if ctx.access is not None else {}
        return {**known, "id": ctx.actor, "roles": list(known.get("roles") or []),
                "teams": list(known.get("teams") or [])}


def _field_error(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}
