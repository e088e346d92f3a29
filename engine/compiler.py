"""Compile a loaded config into a :class:`~loomcrm.engine.manifest.Manifest`.

Pure functions: they read specs and return frozen objects. Every problem is collected with the
``file:line:col`` it was written at, and all are raised together.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pluggy

from loomcrm.schemas import EntitySpec, FieldSpec

from .database import resolve_database_url
from .errors import ConfigError, ConfigErrors, did_you_mean
from .fieldtypes import COMMON_OPTIONS, FieldType, FieldValueError
from .loader import LoadedConfig
from .manifest import SYSTEM_FIELDS, Entity, Field, Index, Manifest, Relation
from .plugins import field_types, make_plugin_manager

__all__ = ["compile_manifest", "compile_project", "IDENTIFIER", "RESERVED_ENTITY_NAMES"]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MAX_IDENTIFIER = 48
#: Entity names Loom keeps for itself (system entities, SQL keywords that make poor table names).
RESERVED_ENTITY_NAMES = frozenset(
    {"user", "team", "role", "session", "token", "audit", "all", "and", "or", "not", "select", "from",
     "where", "table", "order", "group", "by", "limit", "offset", "join", "union", "check", "column",
     "constraint", "default", "primary", "foreign", "references", "index", "create", "drop", "alter",
     "grant", "having", "case", "when", "then", "else", "end", "null", "true", "false", "schema", "api"}
)
RESERVED_FIELD_NAMES = frozenset(SYSTEM_FIELDS)
DYNAMIC_DEFAULTS = {"now": ("datetime",), "today": ("date", "datetime"), "current_user": ("integer", "ref")}


def compile_project(path: str | os.PathLike, *, plugins: list | None = None) -> tuple[Manifest, pluggy.PluginManager]:
    """Load ``loom.yaml`` at ``path``, build its plugin manager and compile. The usual entry point."""
    from .loader import load_config

    loaded = load_config(path)
    pm = make_plugin_manager(
        [*loaded.project.plugins, *(plugins or [])],
        where=loaded.project_source.where(("plugins",), key=True),
    )
    return compile_manifest(loaded, pm), pm


def compile_manifest(loaded: LoadedConfig, pm: pluggy.PluginManager) -> Manifest:
    """Turn validated specs into a Manifest, or raise ConfigErrors listing every problem."""
    errors: list[ConfigError] = []
    app = loaded.project.app
    assert app is not None
    types = field_types(pm)
    entities: dict[str, Entity] = {}
    plurals: dict[str, str] = {}
    for name, spec in loaded.entities.items():
        entity = _compile_entity(loaded, name, spec, types, app, errors)
        if entity.plural in plurals:
            errors.append(_err(loaded, name, ("plural",) if spec.plural else (), "E123",
                               f"plural '{entity.plural}' is already used by entity '{plurals[entity.plural]}'",
                               "set a different 'plural:'"))
        plurals[entity.plural] = name
        entities[name] = entity
    _check_refs(loaded, entities, errors)
    if not errors:
        entities = _add_relations(loaded, entities, errors)
    if errors:
        raise ConfigErrors(errors)
    database = loaded.project.database
    url = resolve_database_url(database.url if database else None, loaded.project_dir)
    return Manifest(
        app_name=app.name,
        locales=tuple(app.locales),
        timezone=app.timezone,
        database_url=url,
        plugins=tuple(loaded.project.plugins),
        entities=entities,
        project_dir=str(loaded.project_dir),
    )


def _err(loaded, entity, path, code, message, hint=None, *, key=True) -> ConfigError:
    return ConfigError(loaded.where(entity, *path, key=key), code, message, hint)


def _check_identifier(loaded, entity, path, name, kind, reserved, errors) -> None:
    if not IDENTIFIER.match(name) or len(name) > MAX_IDENTIFIER:
        suggestion = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "name"
        if suggestion[:1].isdigit():
            suggestion = f"x_{suggestion}"
        errors.append(_err(loaded, entity, path, "E121",
                           f"{kind} name '{name}' must be snake_case ASCII (a-z, 0-9, _), "
                           f"start with a letter and have at most {MAX_IDENTIFIER} characters",
                           f"try '{suggestion[:MAX_IDENTIFIER]}'; put any other text in 'label:'"))
    elif name in reserved or name.startswith("loom_"):
        errors.append(_err(loaded, entity, path, "E122", f"{kind} name '{name}' is reserved",
                           f"choose another name, e.g. '{name}_1' or a more specific one"))


def _label(value: Any, fallback: str, locales: list[str]) -> dict[str, str]:
    if value is None:
        value = fallback
    if isinstance(value, str):
        return {locales[0]: value}
    return dict(value)


def humanize(name: str) -> str:
    return name.replace("_", " ").capitalize()


def pluralize(name: str) -> str:
    if re.search(r"[^aeiou]y$", name):
        return name[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", name):
        return name + "es"
    return name + "s"


def _compile_entity(loaded, name, spec: EntitySpec, types, app, errors) -> Entity:
    locales = list(app.locales)
    _check_identifier(loaded, name, (), name, "entity", RESERVED_ENTITY_NAMES, errors)
    plural = spec.plural or pluralize(name)
    if spec.plural:
        _check_identifier(loaded, name, ("plural",), plural, "plural", RESERVED_ENTITY_NAMES, errors)

    fields: dict[str, Field] = {"id": _system_field("id", types, locales)}
    columns: dict[str, str] = {}
    for fname, fspec in spec.fields.items():
        compiled = _compile_field(loaded, name, fname, fspec, types, app, errors)
        if compiled is None:
            continue
        if compiled.column and compiled.column in columns:
            errors.append(_err(loaded, name, ("fields", fname), "E123",
                               f"field '{fname}' needs column '{compiled.column}', which field "
                               f"'{columns[compiled.column]}' already uses", "rename one of the two fields"))
        columns[compiled.column or ""] = fname
        fields[fname] = compiled
    for system in SYSTEM_FIELDS[1:]:
        fields[system] = _system_field(system, types, locales)

    title = spec.title or next(
        (c for c in ("name", "title", "subject") if c in spec.fields),
        next((f for f, s in spec.fields.items() if s.type == "string"), "id"),
    )
    if title not in fields:
        errors.append(_err(loaded, name, ("title",), "E125", f"title field '{title}' does not exist",
                           did_you_mean(title, spec.fields) or "name one of the entity's fields", key=False))

    indexes = []
    for i, ispec in enumerate(spec.indexes):
        for j, fname in enumerate(ispec.fields):
            _check_field_ref(loaded, name, ("indexes", i, "fields", j), fname, fields, errors)
        indexes.append(Index(ispec.name, tuple(ispec.fields), ispec.unique))
    for i, group in enumerate(spec.unique_together):
        for j, fname in enumerate(group):
            _check_field_ref(loaded, name, ("unique_together", i, j), fname, fields, errors)
        indexes.append(Index(None, tuple(group), True))

    return Entity(
        name=name,
        label=_label(spec.label, humanize(name), locales),
        plural=plural,
        plural_label=_label(spec.plural_label, humanize(plural), locales),
        title=title,
        description=spec.description,
        fields=fields,
        indexes=tuple(indexes),
        source=str(loaded.where(name, key=True)),
    )


def _check_field_ref(loaded, entity, path, fname, fields, errors) -> None:
    field = fields.get(fname)
    if field is None:
        errors.append(_err(loaded, entity, path, "E125", f"field '{fname}' does not exist in entity '{entity}'",
                           did_you_mean(fname, fields), key=False))
    elif field.column is None:
        errors.append(_err(loaded, entity, path, "E126", f"field '{fname}' ({field.type}) cannot be indexed",
                           None, key=False))


def _system_field(name: str, types, locales) -> Field:
    kind = "datetime" if name.endswith("_at") else "integer"
    return Field(name=name, type=kind, field_type=types[kind], column=name,
                 label=_label(None, "ID" if name == "id" else humanize(name), locales), system=True,
                 read_only=True, required=name in ("id", "version", "created_at", "updated_at"))


def _compile_field(loaded, entity, name, spec: FieldSpec, types, app, errors) -> Field | None:
    path = ("fields", name)
    _check_identifier(loaded, entity, path, name, "field", RESERVED_FIELD_NAMES, errors)
    field_type: FieldType | None = types.get(spec.type)
    if field_type is None:
        errors.append(_err(loaded, entity, (*path, "type"), "E120", f"unknown field type '{spec.type}'",
                           did_you_mean(spec.type, types) or f"known types: {', '.join(sorted(types))}", key=False))
        return None
    for key in sorted(spec.model_fields_set - COMMON_OPTIONS - field_type.options):
        errors.append(_err(loaded, entity, (*path, key), "E126",
                           f"option '{key}' does not apply to {spec.type} field '{entity}.{name}'",
                           _options_hint(field_type)))
    params = field_type.params(spec, app)
    for key, code, message, hint in field_type.check(spec, params):
        errors.append(_err(loaded, entity, (*path, key), code, f"{message} (field '{entity}.{name}')", hint))
    field = Field(
        name=name, type=spec.type, field_type=field_type, column=None,
        label=_label(spec.label, humanize(name), list(app.locales)),
        help=_label(spec.help, "", list(app.locales)) if spec.help else {},
        required=spec.required, unique=spec.unique, indexed=spec.indexed, read_only=spec.read_only,
        min=_bound(field_type, spec.min), max=_bound(field_type, spec.max), pattern=spec.pattern,
        params=params, source=str(loaded.where(entity, *path, key=True)),
    )
    field = _replace(field, column=field_type.column_name(field))
    if spec.default is not None:
        field = _with_default(loaded, entity, name, spec, field, errors)
    return field


def _options_hint(field_type: FieldType) -> str:
    extra = sorted(field_type.options)
    return f"{field_type.name} fields take: {', '.join(sorted(COMMON_OPTIONS - {'type'}) + extra)}"


def _bound(field_type: FieldType, raw: Any) -> Any:
    if raw is None:
        return None
    try:
        return field_type.bound(raw)
    except Exception:  # already reported by the type's check()
        return None


def _with_default(loaded, entity, name, spec, field: Field, errors) -> Field:
    raw = spec.default
    if isinstance(raw, str) and raw in DYNAMIC_DEFAULTS and field.type in DYNAMIC_DEFAULTS[raw]:
        return _replace(field, dynamic_default=raw)
    if field.type == "refs":
        errors.append(_err(loaded, entity, ("fields", name, "default"), "E127",
                           "a refs field cannot have a default", None))
        return field
    try:
        value = field.field_type.parse(field, raw)
    except FieldValueError as exc:
        hint = None
        if isinstance(raw, str) and raw in DYNAMIC_DEFAULTS:
            hint = f"'{raw}' works on {' and '.join(DYNAMIC_DEFAULTS[raw])} fields"
        errors.append(_err(loaded, entity, ("fields", name, "default"), "E127",
                           f"default {raw!r} of field '{entity}.{name}' {exc.message}", hint, key=False))
        return field
    return _replace(field, default=value)


def _replace(field: Field, **changes) -> Field:
    from dataclasses import replace

    return replace(field, **changes)


def _check_refs(loaded, entities: dict[str, Entity], errors) -> None:
    for entity in entities.values():
        for field in entity.user_fields:
            target = field.target
            if field.type in ("ref", "refs") and target and target not in entities:
                errors.append(_err(loaded, entity.name, ("fields", field.name, "to"), "E124",
                                   f"field '{entity.name}.{field.name}' refers to entity '{target}', "
                                   "which does not exist",
                                   did_you_mean(target, entities) or f"entities: {', '.join(sorted(entities))}",
                                   key=False))


def _add_relations(loaded, entities: dict[str, Entity], errors) -> dict[str, Entity]:
    """Derive the reverse lists: account gets ``contacts`` for ``contact.account: {type: ref, to: account}``."""
    relations: dict[str, dict[str, Relation]] = {name: {} for name in entities}
    for entity in entities.values():
        for field in entity.user_fields:
            if field.type not in ("ref", "refs"):
                continue
            target = entities[field.target]
            kind = "one_to_many" if field.type == "ref" else "many_to_many"
            rel_name = field.params.get("related_name") or entity.plural
            clash = rel_name in target.fields or rel_name in relations[target.name]
            if clash:
                errors.append(_err(loaded, entity.name, ("fields", field.name), "E123",
                                   f"reverse list '{rel_name}' on entity '{target.name}' (from field "
                                   f"'{entity.name}.{field.name}') clashes with an existing name",
                                   f"set 'related_name:' on field '{entity.name}.{field.name}', "
                                   f"e.g. {entity.plural}_as_{field.name}"))
                continue
            relations[target.name][rel_name] = Relation(rel_name, entity.name, field.name, kind)
            if field.type == "refs":
                relations[entity.name][field.name] = Relation(field.name, target.name, field.name, kind, owner_side=True)
    from dataclasses import replace

    return {name: replace(e, relations=relations[name]) for name, e in entities.items()}
