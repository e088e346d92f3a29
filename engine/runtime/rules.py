"""Expressions at write time: defaults (``default_expr:``) on create, computed fields (``compute:``),
then validation rules (``rules:``).

All three evaluate CEL (:mod:`loomcrm.engine.expressions`) over one ``cel.Context`` per step holding only
the values the expressions read, kept per thread and entity (a :class:`~loomcrm.engine.expressions.Binding`):
converting values for CEL costs far more than evaluating them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..actions import value_converter
from ..errors import Problem
from ..expressions import MAPS, Binding, all_of, reads_of
from ..fieldtypes import FieldValueError
from ..manifest import Entity, Field, Manifest, text_for
from .context import Context, zone

__all__ = ["RecordRules"]


@dataclass(frozen=True)
class Plan:
    """How one entity's computed fields and rules are evaluated, worked out on its first write.

    :ivar computed: the fields with ``compute:``, in field order, each with its value converter;
        ``names`` their names.
    :ivar bind: builds the one CEL context that serves the computations and the rules: what they read.
    :ivar batch: when no expression reads a computed field, one program that computes the fields and
        checks the rules in a single evaluation (crossing into CEL costs more than evaluating); else None.
    :ivar verdict: one program checking the rules alone.
    :ivar rereads: the computed fields an expression reads: the context is bound again after each.
    """

    computed: tuple[tuple[Field, Callable[[Any], Any]], ...]
    names: tuple[str, ...]
    bind: Binding
    batch: Any
    verdict: Any
    rereads: frozenset[str]


class RecordRules:
    """The expression defaults, computed fields and validation rules of one app's entities (plans
    cached per entity)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._plans: dict[str, Plan] = {}
        self._defaults: dict[str, tuple] = {}  # entity -> (its fields with default_expr, their Binding)

    def _plan(self, entity: Entity) -> Plan:
        plan = self._plans.get(entity.name)
        if plan is None:
            computed = [f for f in entity.user_fields if f.compute is not None]
            rules = [e for rule in entity.rules for e in (rule.check, rule.when) if e is not None]
            reads = reads_of([*(f.compute for f in computed), *rules])
            rereads = frozenset(f.name for f in computed) & reads.get("record", frozenset())
            independent = computed and "record" not in reads.get(MAPS, ()) and not rereads
            batch = all_of([(r.when, r.check) for r in entity.rules], [f.compute for f in computed]) \
                if independent else None
            plan = self._plans[entity.name] = Plan(
                tuple((f, value_converter(f, self.manifest.timezone)) for f in computed), tuple(f.name for f in computed),
                Binding(reads), batch, all_of([(r.when, r.check) for r in entity.rules]), rereads)
        return plan

    def _context(self, ctx: Context, bind: Binding, record: dict, old: dict | None):
        reads = bind.reads
        return bind({"record": record, "old": old, "now": ctx.now,
                     "today": self._today(ctx) if "today" in reads else None,
                     "user": self.cel_user(ctx) if "user" in reads else None})

    def compute(self, ctx: Context, entity: Entity, record: dict, into: dict, old: dict | None) -> bool | None:
        """Set every computed field (``compute:``) of ``record`` in ``into``, in field order, each value
        checked by its field type; a value that cannot be computed or does not fit is a 422. The
        context is bound again only after a value that a later computation (or a rule) reads.
        Returns True when one program computed the fields and found that every rule passes (then
        :meth:`errors` has nothing left to do)."""
        plan = self._plan(entity)
        if not plan.computed:
            return None
        variables, results = None, None
        if plan.batch is not None:
            variables = self._context(ctx, plan.bind, record, old)
            try:
                results = plan.batch.execute(variables)
            except Exception:  # one by one below: each error is told about on its own
                pass
            else:
                try:  # the usual case: every value fits its field
                    values = [convert(result) for (_, convert), result in zip(plan.computed, results, strict=False)]
                except Exception:
                    pass
                else:
                    into.update(zip(plan.names, values, strict=True))
                    return results[-1] is True
        record, errors = dict(record), []
        for i, (field, convert) in enumerate(plan.computed):
            if variables is None:
                variables = self._context(ctx, plan.bind, record, old)
            try:
                value = convert(results[i] if results is not None else field.compute.evaluate(variables))
            except FieldValueError as exc:
                errors.append(_field_error(field.name, exc.code, f"the computed value {exc.message}"))
                continue
            except Exception as exc:
                errors.append(_field_error(field.name, "compute_error", f"{entity.name}.{field.name} could not be "
                                     f"computed: {type(exc).__name__}: {exc}"))
                continue
            record[field.name] = into[field.name] = value
            if field.name in plan.rereads:
                variables = None  # a later computation or a rule reads this value
        if errors:
            raise Problem(422, "Validation failed", errors=errors)
        return None

    def defaults(self, ctx: Context, entity: Entity, values: dict) -> None:
        """Set, in field order, every field with a ``default_expr:`` that ``values`` (a create's input,
        literal defaults applied) leaves out; a later default reads an earlier one. The values go
        through the field's type as input would: a timestamp becomes a date in the app's time zone
        for a date field, a double is rounded to a decimal's scale. A value that cannot be worked
        out or does not fit is a 422 naming the field (``default_error``, or the type's code)."""
        defaulted, bind = self._default_plan(entity)
        fields = [(f, convert) for f, convert in defaulted if f.name not in values]
        if not fields:
            return
        errors, variables = [], None
        for field, convert in fields:
            if variables is None:
                variables = self._context(ctx, bind, values, None)
            try:
                values[field.name] = convert(field.default_expr.evaluate(variables))
                if field.name in bind.reads.get("record", ()):
                    variables = None  # a later default reads this value
            except FieldValueError as exc:
                errors.append(_field_error(field.name, exc.code, f"the default value {exc.message}"))
            except Exception as exc:  # CEL raises plain Python errors
                errors.append(_field_error(field.name, "default_error", f"the default of {entity.name}."
                                           f"{field.name} could not be worked out: {type(exc).__name__}: {exc}"))
        if errors:
            raise Problem(422, "Validation failed", errors=errors)

    def _default_plan(self, entity: Entity) -> tuple[list, Binding]:
        """``(fields with a default_expr and their converters, the Binding of what they all read)``: a
        create that gives some of them converts a value or two more for CEL than it needs, which
        costs less than working it out."""
        plan = self._defaults.get(entity.name)
        if plan is None:
            fields = [f for f in entity.user_fields if f.default_expr]
            plan = self._defaults[entity.name] = ([(f, value_converter(f, self.manifest.timezone)) for f in fields],
                                                  Binding(reads_of(f.default_expr for f in fields)))
        return plan

    def _today(self, ctx: Context) -> str:
        return ctx.now.astimezone(zone(self.manifest.timezone)).date().isoformat()

    def errors(self, ctx: Context, entity: Entity, record: dict, old: dict | None,
               passed: bool | None = None) -> list[dict[str, str]]:
        """The entity's validation rules (CEL): an error per failing rule and field, all together; a
        rule that cannot be evaluated (say, a division by zero) is an error naming it, never a 500.
        ``passed``: what :meth:`compute` returned (True: they were checked with the computations)."""
        if passed:
            return []
        plan = self._plan(entity)
        variables = self._context(ctx, plan.bind, record, old)
        try:
            if plan.verdict.execute(variables)[-1] is True:
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
