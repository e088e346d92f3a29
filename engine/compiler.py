"""Compile a loaded config into a :class:`~loomcrm.engine.manifest.Manifest`.

Pure functions: they read specs and return frozen objects. Every problem is collected with the
``file:line:col`` it was written at, and all are raised together.
"""

from __future__ import annotations

import os
import re
import sys
import zoneinfo
from dataclasses import replace
from typing import Any

import phonenumbers
import pluggy
from sqlalchemy import exc as sa_exc

from loomcrm.schemas import EntitySpec, FieldSpec
from loomcrm.schemas.project import AuthSpec
from loomcrm.schemas.system import EXTENSIBLE_KEYS, SYSTEM_ENTITIES

from .automation import compile_automation
from .database import ENV_DATABASE_URL, resolve_database_url
from .errors import ConfigError, ConfigErrors, Location, did_you_mean
from .fieldtypes import COMMON_OPTIONS, FieldType, FieldValueError
from .loader import LoadedConfig
from .manifest import SYSTEM_FIELDS, Entity, Field, Index, LayoutSection, Manifest, Relation, Rule, localized
from .names import (
    IDENTIFIER,
    MAX_IDENTIFIER,
    MAX_TABLE_NAME,
    RESERVED_ENTITY_NAMES,
    RESERVED_FIELD_NAMES,
    ROUTE_WORDS,
    check_identifier,
    humanize,
    pluralize,
)
from .plugins import call_hook, field_types, make_plugin_manager
from .policy import compile_roles
from .rollups import add_rollups
from .validation import describe_path
from .webhooks import compile_webhooks

__all__ = ["compile_manifest", "compile_project", "IDENTIFIER", "RESERVED_ENTITY_NAMES"]

LOCALE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
DYNAMIC_DEFAULTS = {"now": ("datetime",), "today": ("date", "datetime"), "current_user": ("integer", "ref")}


def compile_project(path: str | os.PathLike, *, plugins: list | None = None) -> tuple[Manifest, pluggy.PluginManager]:
    """Load ``loom.yaml`` at ``path``, build its plugin manager and compile. The usual entry point."""
    from .loader import load_config

    loaded = load_config(path)
    for directory in reversed(loaded.project_dirs or (loaded.project_dir,)):  # a base's plugins too
        importable(directory)
    pm = make_plugin_manager(
        [*loaded.project.plugins, *(plugins or [])],
        where=loaded.locate(("plugins",), key=True),
        project_dirs=list(reversed(loaded.project_dirs or (loaded.project_dir,))),  # a base's plugins/ first
    )
    loaded = with_contributions(loaded, pm, lambda contributions: load_config(path, contributions))
    return compile_manifest(loaded, pm), pm


def with_contributions(loaded: LoadedConfig, pm: pluggy.PluginManager, reload) -> LoadedConfig:
    """The config again, with the plugins' fragments beneath the project's own files (``reload``
    reads it given the contributions), or as it is when no plugin contributes."""
    contributions = plugin_contributions(pm)
    return reload(contributions) if contributions else loaded


def plugin_contributions(pm: pluggy.PluginManager) -> list[tuple[str, dict]]:
    """``(plugin name, config fragment)`` of every ``loom_contribute_config`` implementation."""
    result = []
    for impl in reversed(pm.hook.loom_contribute_config.get_hookimpls()):  # registered first, merged first
        name = impl.plugin_name if not impl.plugin_name.isdigit() else type(impl.plugin).__name__
        try:
            fragment = impl.function()
        except Exception as exc:
            raise ConfigErrors([ConfigError(Location(f"plugin {name}"), "E130",
                                            f"plugin '{name}' failed in loom_contribute_config: "
                                            f"{type(exc).__name__}: {exc}")]) from exc
        if fragment:
            result.append((name, fragment))
    return result


def importable(project_dir) -> None:
    """Let ``plugins:`` (and ``seed.py``) name modules that live beside loom.yaml."""
    directory = str(project_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)


def compile_manifest(loaded: LoadedConfig, pm: pluggy.PluginManager) -> Manifest:
    """Turn validated specs into a Manifest, or raise ConfigErrors listing every problem."""
    errors: list[ConfigError] = []
    app = loaded.project.app
    assert app is not None
    _check_app(loaded, errors)
    types = field_types(pm)
    entities: dict[str, Entity] = {}
    plurals: dict[str, str] = {}
    specs = _with_system_entities(loaded, errors)
    _check_entity_renames(loaded, specs, errors)
    for name, spec in specs.items():
        entity = _compile_entity(loaded, name, spec, types, app, errors)
        if entity.plural in plurals:
            errors.append(_err(loaded, name, ("plural",) if spec.plural else (), "E123",
                               f"plural '{entity.plural}' is already used by entity '{plurals[entity.plural]}'",
                               "set a different 'plural:'"))
        plurals[entity.plural] = name
        entities[name] = entity
    _check_refs(loaded, entities, errors)
    _check_index_names(loaded, errors)
    if not errors:
        entities = _add_relations(loaded, entities, errors)
    if not errors:
        entities = _add_rules(loaded, entities, app.locales, errors)
    if not errors:
        entities = add_rollups(loaded, entities, errors)
    roles = compile_roles(loaded, entities, app.locales[0], errors)
    workflows, automations, schedules = compile_automation(loaded, entities, roles, pm, errors) \
        if not errors else ({}, {}, {})
    webhooks = compile_webhooks(loaded, entities, errors) if not errors else {}
    database = loaded.project.database
    url = ""
    try:
        url = resolve_database_url(database.url if database else None, loaded.project_dir)
    except sa_exc.ArgumentError:
        # the environment's URL may hold a password: name the variable, never echo it
        from_env = bool(os.environ.get(ENV_DATABASE_URL))
        culprit = f"${ENV_DATABASE_URL}" if from_env else "'database.url'"
        errors.append(ConfigError(
            loaded.locate(("database", "url")), "E112",
            f"{culprit} is not a database URL SQLAlchemy can read" + ("" if from_env else f" (got {database.url!r})"),
            "e.g. sqlite:///crm.db or postgresql+psycopg://user:password@host/crm"))
    if errors:
        raise ConfigErrors(errors)
    manifest = Manifest(
        app_name=app.name,
        locales=tuple(app.locales),
        timezone=app.timezone,
        database_url=url,
        plugins=tuple(loaded.project.plugins),
        entities=entities,
        project_dir=str(loaded.project_dir),
        project_dirs=tuple(str(d) for d in loaded.project_dirs) or (str(loaded.project_dir),),
        audit_retain_days=loaded.project.audit.retain_days if loaded.project.audit else None,
        auth=(loaded.project.auth or AuthSpec()).model_dump(),
        roles=roles,
        workflows=workflows,
        automations=automations,
        schedules=schedules,
        webhooks=webhooks,
        admin_path=app.admin_path,
    )
    _plugin_checks(loaded, manifest, pm)
    return manifest


def _plugin_checks(loaded: LoadedConfig, manifest: Manifest, pm: pluggy.PluginManager) -> None:
    """The project's own rules about its config (``loom_check_config``), reported like Loom's (E134)."""
    errors = []
    for problems in call_hook(pm, "loom_check_config", manifest=manifest):
        for problem in problems or ():
            entity, field = problem.get("entity"), problem.get("field")
            if entity in manifest.entities:
                where = loaded.where(entity, *(("fields", field) if field else ()), key=True)
            else:
                where = loaded.locate(())
            errors.append(ConfigError(where, "E134", str(problem.get("message", "")), problem.get("hint")))
    if errors:
        raise ConfigErrors(errors)


def _check_app(loaded: LoadedConfig, errors: list[ConfigError]) -> None:
    """What the runtime relies on: a real time zone, a known phone region, distinct language tags."""
    app = loaded.project.app
    where = loaded.locate
    try:
        zoneinfo.ZoneInfo(app.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        errors.append(ConfigError(where(("app", "timezone")), "E112",
                                  f"'app.timezone' is not an IANA time zone (got {app.timezone!r})",
                                  did_you_mean(app.timezone, zoneinfo.available_timezones())
                                  or "e.g. Europe/Berlin, Asia/Shanghai or UTC"))
    region = app.phone_region
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        hint = (f"write it in capitals: {region.upper()}" if region.upper() in phonenumbers.SUPPORTED_REGIONS
                else "use a two-letter ISO 3166 region code, e.g. CN, DE or US")
        errors.append(ConfigError(where(("app", "phone_region")), "E112",
                                  f"'app.phone_region' is not a phone number region (got {region!r})", hint))
    for i, locale in enumerate(app.locales):
        if not LOCALE.match(locale):
            errors.append(ConfigError(where(("app", "locales", i)), "E112",
                                      f"'app.locales[{i}]' is not a language tag (got {locale!r})",
                                      "e.g. en, zh, de or pt-BR"))
        elif locale in app.locales[:i]:
            errors.append(ConfigError(where(("app", "locales", i)), "E123",
                                      f"locale '{locale}' is listed twice in 'app.locales'", "list each once"))


def _err(loaded, entity, path, code, message, hint=None, *, key=True) -> ConfigError:
    return ConfigError(loaded.where(entity, *path, key=key), code, message, hint)


def _identifier(loaded, entity, path, name, kind, reserved, errors, *, owner: str = "") -> None:
    problem = check_identifier(name, kind, reserved, owner=owner)
    if problem:
        errors.append(_err(loaded, entity, path, *problem))


def _label(loaded, entity, path, value: Any, fallback: str, locales: list[str], errors) -> dict[str, str]:
    """The text in every app locale; a locale the app does not have is an error (often a typo)."""
    if isinstance(value, dict):
        for locale in value:
            if locale not in locales:
                errors.append(_err(loaded, entity, (*path, locale), "E110",
                                   f"unknown locale '{locale}' in {describe_path(('entities', entity, *path))}",
                                   f"{did_you_mean(locale, locales) or 'remove it, or add it to app.locales'} "
                                   f"(the app's locales: {', '.join(locales)})"))
    return localized(value, locales, fallback)


def _with_system_entities(loaded: LoadedConfig, errors: list[ConfigError]) -> dict[str, EntitySpec]:
    """Loom's ``user`` and ``team`` first, extended by the project's fields and labels; then the rest."""
    specs: dict[str, EntitySpec] = {}
    locales = list(loaded.project.app.locales)
    for name, system in SYSTEM_ENTITIES.items():
        system = _in_locales(system, locales)
        if name == "user" and loaded.roles:  # which roles a user holds (the union of their grants applies)
            roles = FieldSpec(type="multi_enum", options=list(loaded.roles), label="Roles")
            system = system.model_copy(update={"fields": {**system.fields, "roles": roles}})
        extension = loaded.entities.get(name)
        if extension is None:
            specs[name] = system
            continue
        for key in sorted(extension.model_fields_set - {"fields", *EXTENSIBLE_KEYS}):
            errors.append(_err(loaded, name, (key,), "E126", f"'{key}' of Loom's own entity '{name}' cannot be "
                               "changed", f"a project may add fields and set {', '.join(EXTENSIBLE_KEYS)}"))
        for fname in extension.fields:
            if fname in system.fields:
                errors.append(_err(loaded, name, ("fields", fname), "E123",
                                   f"field '{name}.{fname}' is Loom's own and cannot be redefined",
                                   f"give your field another name, e.g. '{name}_{fname}'"))
        overrides = {k: getattr(extension, k) for k in EXTENSIBLE_KEYS if k in extension.model_fields_set}
        specs[name] = system.model_copy(update={**overrides, "fields": {**extension.fields, **system.fields}})
    specs.update((n, s) for n, s in loaded.entities.items() if n not in SYSTEM_ENTITIES)
    return specs


def _in_locales(spec: EntitySpec, locales: list[str]) -> EntitySpec:
    """A system entity's texts in the app's locales (English where Loom has none of them)."""

    def pick(text):
        if not isinstance(text, dict):
            return text
        kept = {loc: text[loc] for loc in locales if loc in text}
        return kept or text["en"]

    fields = {n: f.model_copy(update={"label": pick(f.label), "help": pick(f.help)}) for n, f in spec.fields.items()}
    return spec.model_copy(update={"label": pick(spec.label), "plural_label": pick(spec.plural_label),
                                   "fields": fields})


def _compile_entity(loaded, name, spec: EntitySpec, types, app, errors) -> Entity:
    locales = list(app.locales)
    if name not in SYSTEM_ENTITIES:
        _identifier(loaded, name, (), name, "entity", RESERVED_ENTITY_NAMES, errors)
    plural = spec.plural or pluralize(name)
    if spec.plural:
        _identifier(loaded, name, ("plural",), plural, "plural", RESERVED_ENTITY_NAMES, errors)
    label = _label(loaded, name, ("label",), spec.label, humanize(name), locales, errors)
    plural_label = _label(loaded, name, ("plural_label",), spec.plural_label, humanize(plural), locales, errors)

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
    _check_renames(loaded, name, spec, fields, errors)

    title = spec.title or next(
        (c for c in ("name", "title", "subject") if c in spec.fields),
        next((f for f, s in spec.fields.items() if s.type == "string"), "id"),
    )
    if title not in fields and title not in spec.fields:  # a field that failed has its own error
        errors.append(_err(loaded, name, ("title",), "E125", f"title field '{title}' does not exist in entity '{name}'",
                           did_you_mean(title, spec.fields) or "name one of the entity's fields", key=False))
    elif title in fields and fields[title].column is None:
        errors.append(_err(loaded, name, ("title",), "E126",
                           f"title field '{title}' is a {fields[title].type} field, which cannot name a record",
                           "choose a field with one value per record, e.g. a string field", key=False))

    return Entity(
        name=name,
        label=label,
        plural=plural,
        plural_label=plural_label,
        title=title,
        description=spec.description,
        fields=fields,
        indexes=_indexes(loaded, name, spec, fields, errors),
        source=str(loaded.where(name, key=True)),
        renamed_from=spec.renamed_from,
        **_screens(loaded, name, spec, fields, locales, errors),
    )


def _screens(loaded, name, spec: EntitySpec, fields: dict[str, Field], locales, errors) -> dict[str, Any]:
    """``list:``, ``layout:`` and ``search:``: each name must be a field of the entity (E148); ``search:``
    takes text fields only, a field is in one section at most."""

    def known(path, fname, *, text: bool = False) -> bool:
        if fname not in fields:
            errors.append(_err(loaded, name, path, "E148", f"'{fname}' is not a field of entity '{name}'",
                               did_you_mean(fname, fields) or f"fields: {', '.join(list(fields)[:12])}", key=False))
            return False
        if text and fields[fname].type not in ("string", "text", "email", "phone", "url"):
            errors.append(_err(loaded, name, path, "E148", f"search looks in text, and '{name}.{fname}' has type "
                               f"{fields[fname].type}", "name string, text, email, phone or url fields",
                               key=False))
            return False
        return True

    columns = tuple(f for i, f in enumerate(spec.columns) if known(("list", i), f))
    sections, placed = [], {}
    for i, section in enumerate(spec.layout):
        names = []
        for j, fname in enumerate(section.fields):
            path = ("layout", i, "fields", j)
            if not known(path, fname):
                continue
            if fname in placed:
                errors.append(_err(loaded, name, path, "E148", f"field '{fname}' is in two sections of the "
                                   f"layout of '{name}'", "keep it in one section", key=False))
                continue
            placed[fname] = i
            names.append(fname)
        heading = _label(loaded, name, ("layout", i, "label"), section.label, "", list(locales), errors)
        sections.append(LayoutSection(heading, tuple(names)))
    search = tuple(f for i, f in enumerate(spec.search) if known(("search", i), f, text=True))
    return {"list_fields": columns, "layout": tuple(sections), "search_fields": search}


def _check_renames(loaded, name, spec: EntitySpec, fields: dict[str, Field], errors) -> None:
    """``renamed_from:`` names an identifier that is no current field (else the old and the new column
    would be one) and that no other field of the entity was renamed from (E146)."""
    renamed: dict[str, str] = {}
    for fname, fspec in spec.fields.items():
        old = fspec.renamed_from
        if old is None:
            continue
        path = ("fields", fname, "renamed_from")
        if old == fname:
            problem = (f"field '{name}.{fname}' is renamed from itself",
                       "remove 'renamed_from:', or write the field's previous name")
        elif not IDENTIFIER.match(old) or len(old) > MAX_IDENTIFIER:
            problem = (f"renamed_from '{old}' of field '{name}.{fname}' is not a field name",
                       "write the previous name exactly as it was: snake_case ASCII")
        elif old in fields or old in spec.fields:
            problem = (f"field '{name}.{fname}' is renamed from '{old}', which is still a field of '{name}'",
                       f"remove field '{old}' (its column becomes '{fname}'), or remove 'renamed_from:' to keep both")
        elif old in renamed:
            problem = (f"fields '{name}.{renamed[old]}' and '{name}.{fname}' are both renamed from '{old}'",
                       "one column can get one new name: remove one 'renamed_from:'")
        else:
            renamed[old] = fname
            continue
        errors.append(_err(loaded, name, path, "E146", *problem, key=False))


def _check_entity_renames(loaded, specs: dict[str, EntitySpec], errors) -> None:
    """An entity's ``renamed_from:`` names an identifier that is no current entity (else the old and
    the new table would be one) and that no other entity was renamed from (E146, like fields)."""
    renamed: dict[str, str] = {}
    for name, spec in specs.items():
        old = spec.renamed_from
        if old is None:
            continue
        if old == name:
            problem = (f"entity '{name}' is renamed from itself",
                       "remove 'renamed_from:', or write the entity's previous name")
        elif not IDENTIFIER.match(old) or len(old) > MAX_IDENTIFIER:
            problem = (f"renamed_from '{old}' of entity '{name}' is not an entity name",
                       "write the previous name exactly as it was: snake_case ASCII")
        elif old in specs:
            problem = (f"entity '{name}' is renamed from '{old}', which is still an entity",
                       f"remove entity '{old}' (its table becomes '{name}'), or remove 'renamed_from:' to keep both")
        elif old in renamed:
            problem = (f"entities '{renamed[old]}' and '{name}' are both renamed from '{old}'",
                       "one table can get one new name: remove one 'renamed_from:'")
        else:
            renamed[old] = name
            continue
        errors.append(_err(loaded, name, ("renamed_from",), "E146", *problem, key=False))


def _indexes(loaded, name, spec: EntitySpec, fields: dict[str, Field], errors) -> tuple[Index, ...]:
    """``indexes:`` and ``unique_together:``, leaving out any the table has already.

    A ref or ``indexed`` field has a one-column index and a ``unique`` field a unique constraint;
    declaring the same again would create a second object under the same generated name.
    """
    present = {((f.name,), True) for f in fields.values() if f.unique}
    present |= {((f.name,), False) for f in fields.values() if (f.indexed or f.type == "ref") and not f.unique}
    declared = [(("indexes", i, "fields"), s.fields, s.unique, s.name) for i, s in enumerate(spec.indexes)]
    declared += [(("unique_together", i), g, True, None) for i, g in enumerate(spec.unique_together)]
    indexes = []
    for path, names, unique, index_name in declared:
        ok = True
        for j, fname in enumerate(names):
            ok = _check_field_ref(loaded, name, (*path, j), fname, fields, errors) and ok
            if fname in names[:j]:
                ok = False
                errors.append(_err(loaded, name, (*path, j), "E123",
                                   f"field '{fname}' is listed twice in {describe_path(('entities', name, *path))}",
                                   "list each field once", key=False))
        if index_name is not None:
            _identifier(loaded, name, (*path[:2], "name"), index_name, "index", frozenset(), errors)
        key = (tuple(names), unique)
        if ok and (index_name is not None or key not in present):
            present.add(key)
            indexes.append(Index(index_name, tuple(names), unique))
    return tuple(indexes)


def _check_field_ref(loaded, entity, path, fname, fields, errors) -> bool:
    field = fields.get(fname)
    if field is None:
        errors.append(_err(loaded, entity, path, "E125", f"field '{fname}' does not exist in entity '{entity}'",
                           did_you_mean(fname, fields) or f"fields: {', '.join(fields)}", key=False))
        return False
    if field.column is None:
        errors.append(_err(loaded, entity, path, "E126", f"field '{fname}' ({field.type}) cannot be indexed",
                           "its links live in a join table, which is indexed already", key=False))
        return False
    return True


def _check_index_names(loaded: LoadedConfig, errors) -> None:
    """Explicit index names share one namespace per database (PostgreSQL), across all tables."""
    seen: dict[str, str] = {}
    for entity, spec in loaded.entities.items():
        for i, index in enumerate(spec.indexes):
            if index.name is None:
                continue
            where = str(loaded.where(entity, "indexes", i, "name"))
            if index.name in seen:
                errors.append(_err(loaded, entity, ("indexes", i, "name"), "E123",
                                   f"index name '{index.name}' is already used (at {seen[index.name]})",
                                   "index names must be unique across all entities; rename one", key=False))
            seen.setdefault(index.name, where)


def _system_field(name: str, types, locales) -> Field:
    kind = "datetime" if name.endswith("_at") else "integer"
    return Field(name=name, type=kind, field_type=types[kind], column=name,
                 label=localized(None, locales, "ID" if name == "id" else humanize(name)), system=True,
                 read_only=True, required=name in ("id", "version", "created_at", "updated_at"))


def _compile_field(loaded, entity, name, spec: FieldSpec, types, app, errors) -> Field | None:
    path = ("fields", name)
    locales = list(app.locales)
    _identifier(loaded, entity, path, name, "field", RESERVED_FIELD_NAMES, errors, owner=entity)
    if spec.related_name is not None:
        _identifier(loaded, entity, (*path, "related_name"), spec.related_name, "reverse list",
                    RESERVED_FIELD_NAMES, errors, owner=entity)
    label = _label(loaded, entity, (*path, "label"), spec.label, humanize(name), locales, errors)
    help_text = _label(loaded, entity, (*path, "help"), spec.help, "", locales, errors) if spec.help else {}
    for i, option in enumerate(spec.options or []):
        if not isinstance(option, str):
            _label(loaded, entity, (*path, "options", i, "label"), option.label, option.value, locales, errors)
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
        errors.append(_err(loaded, entity, (*path, key), code, f"{message} (field '{entity}.{name}')", hint,
                           key=False))
    field = Field(
        name=name, type=spec.type, field_type=field_type, column=None, label=label, help=help_text,
        required=spec.required, unique=spec.unique, indexed=spec.indexed,
        read_only=spec.read_only or spec.compute is not None or spec.rollup is not None,
        min=_bound(field_type, spec.min), max=_bound(field_type, spec.max), pattern=spec.pattern,
        params=params, source=str(loaded.where(entity, *path, key=True)), renamed_from=spec.renamed_from,
    )
    field = replace(field, column=field_type.column_name(field))
    join_table = f"{entity}__{name}"
    if not field_type.has_column and len(join_table) > MAX_TABLE_NAME:
        errors.append(_err(loaded, entity, path, "E121",
                           f"field '{entity}.{name}' needs the join table '{join_table}', which is longer than "
                           f"the {MAX_TABLE_NAME} characters a table name may have",
                           "shorten the field name or the entity name"))
    if spec.default is not None:
        field = _with_default(loaded, entity, name, spec, field, errors)
    if spec.map is not None and "map" in field_type.options:
        field = _with_option_map(loaded, entity, name, spec, field, errors)
    return field


def _with_option_map(loaded, entity, name, spec, field: Field, errors) -> Field:
    """``map:`` takes values that are no longer options (E147) to a current option, or to null when the
    field is optional: a key that is still an option would change values people may keep choosing."""
    options = [o["value"] for o in field.params.get("options", [])]
    where = f"'{entity}.{name}'"
    for old, new in spec.map.items():
        path = ("fields", name, "map", old)
        if old in options:
            errors.append(_err(loaded, entity, path, "E147",
                               f"map key '{old}' of {where} is still one of its options",
                               f"a key is a value taken out of 'options': remove '{old}' from options, "
                               "or remove it from map"))
        if new is None and field.required:
            errors.append(_err(loaded, entity, path, "E147",
                               f"map of {where} empties '{old}', but the field is required",
                               f"map it to an option: {', '.join(options[:10])}", key=False))
        elif new is not None and new not in options:
            errors.append(_err(loaded, entity, path, "E147",
                               f"map of {where} turns '{old}' into '{new}', which is not one of its options",
                               did_you_mean(new, options) or f"options: {', '.join(options[:10])}", key=False))
    return replace(field, option_map=dict(spec.map))


def _options_hint(field_type: FieldType) -> str:
    return f"{field_type.name} fields take: {', '.join(sorted((COMMON_OPTIONS | field_type.options) - {'type'}))}"


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
        return replace(field, dynamic_default=raw)
    if field.type == "refs":
        errors.append(_err(loaded, entity, ("fields", name, "default"), "E127",
                           f"refs field '{entity}.{name}' cannot have a default", "remove 'default:'"))
        return field
    try:
        value = field.field_type.parse(field, raw)
    except FieldValueError as exc:
        hint = None
        if isinstance(raw, str) and raw in DYNAMIC_DEFAULTS:
            hint = f"'{raw}' works on {' and '.join(DYNAMIC_DEFAULTS[raw])} fields"
            fits = [f"'{d}'" for d, kinds in DYNAMIC_DEFAULTS.items() if field.type in kinds]
            if fits:
                hint += f"; on a {field.type} field use {' or '.join(fits)}"
        errors.append(_err(loaded, entity, ("fields", name, "default"), "E127",
                           f"default {raw!r} of field '{entity}.{name}' {exc.message}", hint, key=False))
        return field
    return replace(field, default=value)


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


def _add_rules(loaded, entities: dict[str, Entity], locales, errors) -> dict[str, Entity]:
    """Compile every entity's validation rules; a rule that reads an unknown name is E135."""
    from .expressions import ExpressionError, compile_expression

    result = {}
    for name, entity in entities.items():
        spec = loaded.entities[name] if name in loaded.entities else None
        rules = []
        for rule_name, rule in (spec.rules if spec else {}).items():
            _identifier(loaded, name, ("rules", rule_name), rule_name, "rule", frozenset(), errors)
            compiled = {}
            for key in ("check", "when"):
                text = getattr(rule, key)
                if text is None:
                    continue
                try:
                    compiled[key] = compile_expression(text, entity, entities["user"])
                except ExpressionError as exc:
                    errors.append(_err(loaded, name, ("rules", rule_name, key), "E135",
                                       f"rule '{name}.{rule_name}': {exc.message}", exc.hint, key=False))
            unknown = [f for f in rule.fields if f not in entity.fields]
            for f in unknown:
                errors.append(_err(loaded, name, ("rules", rule_name, "fields", rule.fields.index(f)), "E125",
                                   f"rule '{name}.{rule_name}' names field '{f}', which '{name}' does not have",
                                   did_you_mean(f, entity.fields) or None))
            if "check" in compiled and not unknown:
                rules.append(Rule(rule_name, compiled["check"], localized(rule.message, locales),
                                  compiled.get("when"), tuple(rule.fields)))
        computed = {}
        for fname, fspec in (spec.fields.items() if spec else ()):
            if fspec.backfill is not None and fname in entity.fields:
                try:
                    backfill = compile_expression(fspec.backfill, entity, entities["user"])
                    if not {"old", "user"}.isdisjoint(backfill.reads):  # a migration has neither
                        raise ExpressionError("a backfill reads the existing `record` only",
                                              "remove 'old.' and 'user.' from it")
                    computed[fname] = replace(entity.fields[fname], backfill=backfill)
                except ExpressionError as exc:
                    errors.append(_err(loaded, name, ("fields", fname, "backfill"), "E135",
                                       f"backfill of '{name}.{fname}': {exc.message}", exc.hint, key=False))
            if fspec.compute is None or fname not in entity.fields:
                continue
            if fspec.type in ("refs",) or entity.fields[fname].column is None:
                errors.append(_err(loaded, name, ("fields", fname, "compute"), "E126",
                                   f"a {fspec.type} field cannot be computed", "compute a field stored in a column",
                                   key=False))
                continue
            try:
                computed[fname] = replace(computed.get(fname, entity.fields[fname]),
                                          compute=compile_expression(fspec.compute, entity, entities["user"]))
            except ExpressionError as exc:
                errors.append(_err(loaded, name, ("fields", fname, "compute"), "E135",
                                   f"computed field '{name}.{fname}': {exc.message}", exc.hint, key=False))
        if computed:
            entity = replace(entity, fields={n: computed.get(n, f) for n, f in entity.fields.items()})
        result[name] = replace(entity, rules=tuple(rules)) if rules else entity
    return result


def _add_relations(loaded, entities: dict[str, Entity], errors) -> dict[str, Entity]:
    """Derive the reverse lists: account gets ``contacts`` for ``contact.account: {type: ref, to: account}``."""
    relations: dict[str, dict[str, Relation]] = {name: {} for name in entities}
    for entity in entities.values():
        for field in entity.user_fields:
            if field.type not in ("ref", "refs"):
                continue
            target = entities[field.target]
            kind = "one_to_many" if field.type == "ref" else "many_to_many"
            explicit = field.params.get("related_name")
            rel_name = explicit or entity.plural
            taken = relations[target.name].get(rel_name)
            route = rel_name if rel_name in ROUTE_WORDS else field.name if field.type == "refs" and \
                field.name in ROUTE_WORDS else None
            if route:
                errors.append(_err(loaded, entity.name, ("fields", field.name), "E122",
                                   f"'{route}' cannot name a related list: /api/<plural>/{{id}}/{route} is Loom's own",
                                   f"set 'related_name:' (or rename field '{entity.name}.{field.name}')"))
                continue
            if rel_name in target.fields or taken:
                other = (f"field '{target.name}.{rel_name}'" if rel_name in target.fields or taken.owner_side
                         else f"the reverse list of field '{taken.entity}.{taken.field}'")
                errors.append(_err(loaded, entity.name, ("fields", field.name, *(("related_name",) if explicit else ())),
                                   "E123",
                                   f"field '{entity.name}.{field.name}' gives entity '{target.name}' the reverse "
                                   f"list '{rel_name}', which clashes with {other}",
                                   f"set a different 'related_name:' on field '{entity.name}.{field.name}', "
                                   f"e.g. related_name: {entity.plural}_as_{field.name}"))
                continue
            relations[target.name][rel_name] = Relation(rel_name, entity.name, field.name, kind)
            if field.type == "refs":
                relations[entity.name][field.name] = Relation(field.name, target.name, field.name, kind, owner_side=True)
    return {name: replace(e, relations=relations[name]) for name, e in entities.items()}
