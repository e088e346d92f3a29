"""The Manifest: the fully resolved, frozen model of one CRM, produced by the compiler.

Everything later stages need is here, already checked: entities with their fields (system fields
included), each field's type object, relations in both directions, and where each thing was
written. ``Manifest.to_json()`` is what migrations store and diff.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from .fieldtypes import FieldType

__all__ = ["Manifest", "Entity", "Field", "Relation", "Index", "Rule", "SYSTEM_FIELDS", "text_for", "localized"]

#: Loom's own tables beside the entities' (created by migrations like entity tables).
SYSTEM_TABLES = ("loom_audit", "loom_credential", "loom_session", "loom_token", "loom_login_failure", "loom_counter",
                 "loom_schedule_mark", "loom_outbox", "loom_webhook", "loom_webhook_delivery", "loom_saved_view")

#: Columns every entity has, in table order. ``id`` comes first, the rest after the entity's fields.
SYSTEM_FIELDS = ("id", "created_at", "updated_at", "created_by", "updated_by", "owner", "version")


def text_for(label: dict[str, str], locale: str | None = None) -> str:
    """The label in ``locale``, else in the first locale it has."""
    if locale and locale in label:
        return label[locale]
    return next(iter(label.values()), "")


def localized(text: str | Mapping[str, str] | None, locales: Sequence[str], fallback: str = "") -> dict[str, str]:
    """Text in every one of the app's ``locales``, in their order (the first is the default).

    Plain text reads the same in every locale. A locale a mapping leaves out gets the default
    locale's text, else the first text given, so ``{zh: 客户}`` in an ``[en, zh]`` app is
    ``{en: 客户, zh: 客户}``. ``None`` means ``fallback`` everywhere.
    """
    if text is None:
        text = fallback
    if isinstance(text, str):
        return {locale: text for locale in locales}
    given = {k: v for k, v in text.items() if k in locales}
    default = given.get(locales[0]) or next(iter(given.values()), None) or fallback
    return {locale: given.get(locale, default) for locale in locales}


@dataclass(frozen=True)
class Field:
    """One field of an entity.

    :ivar name: identifier used in the API and (except refs) as the column name.
    :ivar type: the field type's name; ``field_type`` is the object that implements it.
    :ivar column: database column, or None for fields stored elsewhere (many-to-many).
    :ivar params: type-specific settings (``max_length``, ``options``, ``to``...), JSON-serializable.
    :ivar default: a literal (already parsed), or one of ``now``, ``today``, ``current_user``.
    :ivar system: True for the columns Loom manages (id, created_at, ...), never writable.
    :ivar source: ``file:line:col`` where the field was written.
    :ivar renamed_from: the field's previous name (``renamed_from:``): the migration renames its column;
        stored with the manifest so the audit trail can show older entries under the new name.
    :ivar backfill: CEL (``backfill:``) giving existing rows their value when the field becomes required;
        read by ``loom migrate`` only, so not part of the stored manifest.
    :ivar option_map: ``map:`` of an enum or multi_enum field, ``{old value: option or None}``: what stored
        values of options taken out become; read by ``loom migrate`` from the new config only, so not
        part of the stored manifest.
    """

    name: str
    type: str
    field_type: FieldType = field(compare=False, repr=False)
    column: str | None
    label: dict[str, str]
    help: dict[str, str] = field(default_factory=dict)
    required: bool = False
    unique: bool = False
    indexed: bool = False
    read_only: bool = False
    default: Any = None
    dynamic_default: str | None = None
    min: Any = None
    max: Any = None
    pattern: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    system: bool = False
    source: str = ""
    renamed_from: str | None = None
    compute: Any = field(default=None, compare=False, repr=False)  # expressions.Expression: recomputed on save
    default_expr: Any = field(default=None, compare=False, repr=False)  # expressions.Expression: value on create
    rollup: Any = field(default=None, compare=False, repr=False)  # rollups.Rollup: summary of child records
    backfill: Any = field(default=None, compare=False, repr=False)  # expressions.Expression: value of old rows
    option_map: dict[str, str | None] | None = None

    @property
    def writable(self) -> bool:
        return not (self.system or self.read_only)

    @property
    def target(self) -> str | None:
        """The entity a ref/refs field points at."""
        return self.params.get("to") if self.type in ("ref", "refs") else None

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name, "type": self.type, "column": self.column, "label": self.label,
            "required": self.required, "unique": self.unique, "indexed": self.indexed,
            "read_only": self.read_only, "default": _jsonable(self.default),
            "dynamic_default": self.dynamic_default, "min": _jsonable(self.min), "max": _jsonable(self.max),
            "pattern": self.pattern, "params": self.params, "system": self.system,
        }
        if self.help:
            data["help"] = self.help
        if self.rollup is not None:  # a changed definition makes `loom migrate` recompute the values
            data["rollup"] = self.rollup.to_json()
        if self.renamed_from is not None:  # only when set: manifests stored before renames keep their hash
            data["renamed_from"] = self.renamed_from
        return data


@dataclass(frozen=True)
class Relation:
    """A list of records pointing at this one: reverse of a ref, or either side of a refs.

    :ivar name: path segment (``/api/accounts/{id}/<name>``).
    :ivar entity: the entity whose records are listed.
    :ivar field: the ref/refs field that links them. For a refs field declared on *this* entity,
        ``owner_side`` is True and ``entity`` is the target.
    """

    name: str
    entity: str
    field: str
    kind: str  # "one_to_many" | "many_to_many"
    owner_side: bool = False


@dataclass(frozen=True)
class Index:
    name: str | None
    fields: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Rule:
    """A validation rule: ``check`` (an :class:`~loomcrm.engine.expressions.Expression`) must be true
    on create and update, for records ``when`` is true for (always without ``when``)."""

    name: str
    check: Any
    message: dict[str, str]
    when: Any = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayoutSection:
    """A group of fields on the record page and in forms (``layout:``)."""

    label: dict[str, str]
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Entity:
    """One kind of record, with its table, API resource and fields.

    :ivar list_fields: the admin list's columns (``list:``); empty: a default.
    :ivar layout: the admin record page's and forms' sections (``layout:``).
    :ivar search_fields: fields the admin search looks in beside the title (``search:``).
    Those three shape screens only: they are not part of the stored manifest.

    :ivar renamed_from: the entity's previous name (``renamed_from:``): the migration renames its table;
        stored with the manifest so the history can follow the rename (see ``runtime.audit``).
    """

    name: str
    label: dict[str, str]
    plural: str
    plural_label: dict[str, str]
    title: str
    description: str | None
    fields: dict[str, Field]
    indexes: tuple[Index, ...] = ()
    relations: dict[str, Relation] = field(default_factory=dict)
    source: str = ""
    rules: tuple[Rule, ...] = ()
    renamed_from: str | None = None
    list_fields: tuple[str, ...] = ()
    layout: tuple[LayoutSection, ...] = ()
    search_fields: tuple[str, ...] = ()

    @property
    def table(self) -> str:
        return self.name

    @cached_property
    def user_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if not f.system]

    @cached_property
    def column_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if f.column is not None]

    @cached_property
    def dumpers(self) -> dict[str, Any]:
        """Per field, the function that makes a stored value JSON-ready, or None when it already is."""
        return {
            f.name: None if type(f.field_type).dump is FieldType.dump else partial(f.field_type.dump, f)
            for f in self.fields.values()
        }

    @cached_property
    def converters(self) -> list[tuple[str, Any]]:
        """The ``(name, dump)`` pairs of :attr:`dumpers` that do something."""
        return [(name, dump) for name, dump in self.dumpers.items() if dump is not None]

    @cached_property
    def former_names(self) -> dict[str, str]:
        """``{previous name: field}`` of the fields renamed with ``renamed_from:`` (for the audit trail)."""
        return {f.renamed_from: f.name for f in self.fields.values() if f.renamed_from is not None}

    @cached_property
    def has_links(self) -> bool:
        """True when the entity has many-to-many fields (stored outside its table)."""
        return any(f.column is None for f in self.fields.values())

    def join_table(self, field_name: str) -> str:
        return f"{self.name}__{field_name}"

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name, "label": self.label, "plural": self.plural, "plural_label": self.plural_label,
            "title": self.title, "description": self.description,
            "fields": {n: f.to_json() for n, f in self.fields.items()},
            "indexes": [{"name": i.name, "fields": list(i.fields), "unique": i.unique} for i in self.indexes],
            "relations": {
                n: {"entity": r.entity, "field": r.field, "kind": r.kind, "owner_side": r.owner_side}
                for n, r in self.relations.items()
            },
        }
        if self.renamed_from is not None:  # only when set: manifests stored before renames keep their hash
            data["renamed_from"] = self.renamed_from
        return data


@dataclass(frozen=True)
class Manifest:
    """One compiled CRM.

    :ivar app_name: shown in API docs and the admin app.
    :ivar locales: the first is the default.
    :ivar database_url: resolved (env override applied, SQLite paths absolute).
    :ivar plugins: the project's plugin modules, as listed in loom.yaml.
    """

    app_name: str
    locales: tuple[str, ...]
    timezone: str
    database_url: str
    plugins: tuple[str, ...]
    entities: dict[str, Entity]
    project_dir: str = "."
    project_dirs: tuple[str, ...] = ()  # the project's, then those of the configs it extends
    audit_retain_days: int | None = None
    roles: dict[str, Any] = field(default_factory=dict)  # name -> policy.RolePolicy
    auth: dict[str, Any] = field(default_factory=lambda: {"required": True, "session_hours": 12, "max_failures": 5,
                                                          "lockout_minutes": 15})
    workflows: dict[str, Any] = field(default_factory=dict)  # name -> automation.Workflow
    automations: dict[str, Any] = field(default_factory=dict)  # name -> automation.Automation
    schedules: dict[str, Any] = field(default_factory=dict)  # name -> automation.Schedule
    webhooks: dict[str, Any] = field(default_factory=dict)  # name -> webhooks.Webhook
    admin_path: str = "/admin"

    def to_json(self) -> dict[str, Any]:
        """The schema-relevant content: stored with each migration and diffed by the planner."""
        return {
            "format": 1,
            "app": {"name": self.app_name, "locales": list(self.locales), "timezone": self.timezone},
            "system_tables": list(SYSTEM_TABLES),
            "entities": {n: e.to_json() for n, e in self.entities.items()},
        }

    def hash(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)
