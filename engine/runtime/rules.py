"""Expressions at write time: computed fields (``compute:``), then validation rules (``rules:``).

Both evaluate CEL (:mod:`loomcrm.engine.expressions`) over one ``cel.Context`` per step holding only
the values the expressions read: converting values for CEL costs far more than evaluating them.
"""

from __future__ import annotations

from typing import Any

from ..errors import Problem
from ..expressions import context, reads_of
from ..fieldtypes import FieldValueError
from ..manifest import Entity, Manifest, text_for
from .context import Context, zone

__all__ = ["RecordRules"]


class RecordRules:
    """The computed fields and validation rules of one app's entities (plans cached per entity)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._plans: dict[str, tuple] = {}  # entity -> (computed fields, what they read)
        self._reads: dict[str, dict] = {}  # entity -> what its rules read

    def compute(self, ctx: Context, entity: Entity, record: dict, into: dict, old: dict | None) -> None:
        """Set every computed field (``compute:``) of ``record`` in ``into``, in field order, each value
        checked by its field type; a value that cannot be computed or does not fit is a 422. One CEL
        context serves them all, rebuilt only after a value that a later computation reads."""
        plan = self._plans.get(entity.name)
        if plan is None:
            computed = [f for f in entity.user_fields if f.compute is not None]
            plan = self._plans[entity.name] = (computed, reads_of(f.compute for f in computed))
        computed, reads = plan
        if not computed:
            return
        record, variables, errors = dict(record), None, []
        for field in computed:
            if variables is None:
                variables = context(reads, {"record": record, "old": old, "now": ctx.now,
                                            "today": self._today(ctx) if "today" in reads else None,
                                            "user": self._cel_user(ctx) if "user" in reads else None})
            try:
                value = field.compute.evaluate(variables)
                if isinstance(value, float) and "scale" in field.params:  # decimal arithmetic in CEL is binary
                    value = round(value, field.params["scale"])
                value = None if value is None else field.field_type.parse(field, value)
            except FieldValueError as exc:
                errors.append(_field_error(field.name, exc.code, f"the computed value {exc.message}"))
                continue
            except Exception as exc:
                errors.append(_field_error(field.name, "compute_error", f"{entity.name}.{field.name} could not be "
                                     f"computed: {type(exc).__name__}: {exc}"))
                continue
            record[field.name] = into[field.name] = value
            if field.name in reads.get("record", ()):
                variables = None  # a later computation reads this value
        if errors:
            raise Problem(422, "Validation failed", errors=errors)

    def _today(self, ctx: Context) -> str:
        return ctx.now.astimezone(zone(self.manifest.timezone)).date().isoformat()

    def errors(self, ctx: Context, entity: Entity, record: dict, old: dict | None) -> list[dict[str, str]]:
        """The entity's validation rules (CEL): an error per failing rule and field, all together; a
        rule that cannot be evaluated (say, a division by zero) is an error naming it, never a 500.
        The values are converted for CEL once per write, and only those the rules read."""
        reads = self._reads.get(entity.name)
        if reads is None:
            reads = self._reads[entity.name] = reads_of(
                e for rule in entity.rules for e in (rule.check, rule.when) if e is not None)
        variables = context(reads, {
            "record": record, "old": old, "now": ctx.now,
            "user": self._cel_user(ctx) if "user" in reads else None,
            "today": self._today(ctx) if "today" in reads else None})
        locale = ctx.locale or self.manifest.locales[0]
        errors = []
        for rule in entity.rules:
            try:
                if rule.when is not None and rule.when.evaluate(variables) is not True:
                    continue
                passed = rule.check.evaluate(variables)
                message = text_for(rule.message, locale)
            except Exception as exc:  # CEL raises plain Python errors (ZeroDivisionError, KeyError...)
                passed, message = None, f"rule '{rule.name}' could not be evaluated: {type(exc).__name__}: {exc}"
            if passed is not True:
                code = rule.name if passed is False else "rule_error"
                if passed not in (True, False, None):
                    message = f"rule '{rule.name}' must give true or false, not {passed!r}"
                errors += [_field_error(f, code, message) for f in rule.fields or ("",)]
        return errors

    def _cel_user(self, ctx: Context) -> dict[str, Any]:
        """``user`` for expressions: the caller's fields, id, roles and teams (nulls for Loom's own code)."""
        known = ctx.access.user if ctx.access is not None else {}
        return {**known, "id": ctx.actor, "roles": list(known.get("roles") or []),
                "teams": list(known.get("teams") or [])}


def _field_error(field: str, code: str, message: str) -> dict[str, str]:
    return {"field": field, "code": code, "message": message}
