"""The contract every field type fulfils, built-in or from a plugin.

A field type turns a field's spec into a database column, an API schema, and a parser that
validates input from any channel (JSON, query strings, imports). Built-in types live in
``loomcrm.plugins.field_types`` and are registered through the ``loom_field_types`` hook exactly
as a plugin's would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import sqlalchemy as sa

    from loomcrm.schemas import AppSpec, FieldSpec

    from .manifest import Field

__all__ = ["FieldType", "FieldValueError", "COMMON_OPTIONS", "FILTER_OPS"]

#: Spec keys every field type accepts.
COMMON_OPTIONS = frozenset({"type", "label", "help", "required", "unique", "indexed", "read_only", "default",
                            "compute", "default_expr", "rollup", "renamed_from", "backfill"})

#: Every list filter operator the API knows.
FILTER_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "startswith", "isnull")


class FieldValueError(ValueError):
    """A value that does not fit its field. ``code`` is machine-readable (``max_length``, ``type``...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class FieldType:
    """Base class: subclass it, set the class attributes, override what differs.

    :cvar name: the ``type:`` written in YAML.
    :cvar options: spec keys beyond :data:`COMMON_OPTIONS` that apply to this type.
    :cvar filter_ops: operators allowed in ``?filter[field][op]=``.
    :cvar sortable: whether ``sort=`` may use the field.
    :cvar has_column: False for types stored elsewhere (many-to-many join tables).
    """

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    filter_ops: ClassVar[frozenset[str]] = frozenset({"eq", "ne", "in", "isnull"})
    sortable: ClassVar[bool] = True
    has_column: ClassVar[bool] = True

    # --- compile time -----------------------------------------------------------------------------
    def params(self, spec: FieldSpec, app: AppSpec) -> dict[str, Any]:
        """Type-specific settings resolved from the spec (kept in ``Field.params``, JSON-serializable)."""
        return {}

    def check(self, spec: FieldSpec, params: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
        """Extra config checks: ``(spec key, code, message, hint)`` for each problem found."""
        return []

    def bound(self, raw: Any) -> Any:
        """Convert a ``min:``/``max:`` written in YAML to a comparable value (raise ValueError if unfit)."""
        raise ValueError(f"min/max do not apply to {self.name} fields")

    def column_name(self, field: Field) -> str | None:
        return field.name

    def column_type(self, field: Field) -> sa.types.TypeEngine:
        raise NotImplementedError(f"field type {self.name!r} must define column_type()")

    def python_type(self, field: Field) -> Any:
        """Python annotation for generated I/O models (drives the OpenAPI document)."""
        return Any

    # --- run time ---------------------------------------------------------------------------------
    def parse(self, field: Field, value: Any) -> Any:
        """Validate and convert ``value`` (JSON value, or text from a query string or file).

        Return the value to store; raise :class:`FieldValueError` when it does not fit.
        ``None`` never reaches this method.
        """
        return value

    def dump(self, field: Field, value: Any) -> Any:
        """Convert a stored value to its JSON form."""
        return value
