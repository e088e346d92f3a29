"""What the admin pages show of an entity, worked out from the manifest and the caller's access: the
widget of each field, the form's sections, the list's columns, labels and values in the reader's
language. Pure functions: the handlers (``pages.py``) pass in the access, the templates render.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loomcrm.engine.manifest import Entity, Field, Manifest, text_for

from .messages import translator

__all__ = ["WIDGETS", "FieldView", "Section", "field_view", "form_sections", "list_columns", "display",
           "level_of", "label", "local_input", "searchable_fields"]

#: The input each field type gets in a form (plugins' types fall back to ``text``).
WIDGETS = {
    "string": "text", "text": "textarea", "integer": "number", "decimal": "number", "money": "money",
    "boolean": "checkbox", "date": "date", "datetime": "datetime", "enum": "select", "multi_enum": "multiselect",
    "email": "email", "phone": "tel", "url": "url", "json": "json", "ref": "ref", "refs": "refs",
}
#: System fields shown on a record page (read-only), after the entity's own.
SYSTEM_SHOWN = ("owner", "created_at", "updated_at", "version")
#: Columns a list shows when the config names none: the title, then the first fields that fit a table.
DEFAULT_COLUMNS = 5
LISTABLE = frozenset(WIDGETS) - {"text", "json", "refs", "multi_enum"}


def label(text: dict[str, str] | str | None, locale: str) -> str:
    if isinstance(text, dict):
        return text_for(text, locale)
    return text or ""


def level_of(access: Any, entity: Entity, name: str) -> str:
    """``write``, ``read`` or ``hidden``: what the caller may do with a field (everything without roles)."""
    if access is None:
        return "write"
    return access.level(entity, name)


@dataclass(frozen=True)
class FieldView:
    """One field as a page shows it.

    :ivar widget: the input (see :data:`WIDGETS`); ``editable`` False renders the value, not an input.
    :ivar options: ``(value, label)`` of an enum or multi_enum, in the reader's language.
    :ivar target: the entity a ref or refs field points at (its plural, for links and pickers).
    :ivar timezone: a datetime's time zone (the app's): inputs and texts show wall-clock time there.
    """

    name: str
    label: str
    widget: str
    required: bool
    editable: bool
    help: str = ""
    options: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    step: str | None = None
    currency: str | None = None
    max_length: int | None = None
    min: Any = None
    max: Any = None
    timezone: str | None = None


@dataclass(frozen=True)
class Section:
    title: str
    fields: tuple[FieldView, ...] = field(default_factory=tuple)


def field_view(manifest: Manifest, entity: Entity, f: Field, locale: str, level: str, *,
               creating: bool = False) -> FieldView:
    """The view of field ``f`` for a reader whose level on it is ``level``."""
    widget = WIDGETS.get(f.type, "text")
    options = tuple((o["value"], label(o.get("label"), locale) or o["value"]) for o in f.params.get("options", []))
    scale = f.params.get("scale")
    step = None
    if f.type == "integer":
        step = "1"
    elif scale is not None:
        step = "1" if scale == 0 else "0." + "0" * (scale - 1) + "1"
    elif f.type in ("decimal", "money"):
        step = "any"
    target = manifest.entities[f.target].plural if f.target else None
    editable = level == "write" and f.writable and f.compute is None and f.rollup is None
    return FieldView(f.name, label(f.label, locale) or f.name, widget, f.required and editable, editable,
                     label(f.help, locale), options, target, step, f.params.get("currency"),
                     f.params.get("max_length"), f.min, f.max,
                     f.params.get("timezone") if f.type == "datetime" else None)


def form_sections(manifest: Manifest, entity: Entity, access: Any, locale: str, *, creating: bool,
                  include_system: bool = False) -> list[Section]:
    """The fields the caller may see, grouped in sections: the config's ``layout:`` when it has one
    (fields it leaves out come last, under "More"), else one section. Hidden fields are left out."""
    views = {}
    for f in entity.fields.values():
        if f.system and not (include_system and f.name in SYSTEM_SHOWN):
            continue
        level = level_of(access, entity, f.name)
        if level == "hidden":
            continue
        views[f.name] = field_view(manifest, entity, f, locale, level, creating=creating)
    sections = []
    placed: set[str] = set()
    for section in getattr(entity, "layout", ()) or ():
        names = [n for n in section.fields if n in views]
        placed.update(section.fields)
        if names:
            sections.append(Section(label(section.label, locale), tuple(views[n] for n in names)))
    rest = [v for n, v in views.items() if n not in placed and n not in SYSTEM_SHOWN]
    if rest:
        sections.append(Section("" if not sections else "More", tuple(rest)))
    system = [views[n] for n in SYSTEM_SHOWN if n in views]
    if system:
        sections.append(Section("System", tuple(system)))
    return sections


def list_columns(manifest: Manifest, entity: Entity, access: Any, locale: str) -> list[FieldView]:
    """The columns of the entity's list: the config's ``list:`` when it has one, else its title and
    the first fields that fit a table; only fields the caller may read."""
    configured = list(getattr(entity, "list_fields", ()) or ())
    if configured:
        names = configured
    else:
        names = [entity.title] if entity.title in entity.fields else []
        names += [n for n, f in entity.fields.items() if not f.system and n not in names and f.type in LISTABLE]
        names = names[:DEFAULT_COLUMNS]
    columns = []
    for name in names:
        level = level_of(access, entity, name)
        if name in entity.fields and level != "hidden":
            columns.append(field_view(manifest, entity, entity.fields[name], locale, "read"))
    return columns


def display(view: FieldView, value: Any, locale: str) -> str:
    """A stored value (as the API gives it) as text for a reader in ``locale``: options by label,
    numbers grouped, dates in the locale's order, refs by their title (given as text) or id."""
    if value is None or value == "" or value == []:
        return ""
    if view.widget in ("select",):
        return dict(view.options).get(value, str(value))
    if view.widget == "multiselect":
        names = dict(view.options)
        return ", ".join(names.get(v, str(v)) for v in value)
    if view.widget == "checkbox":
        return translator(locale)("yes" if value else "no")
    if view.widget == "ref":
        return str(value) if isinstance(value, str) else f"#{value}"
    if view.widget == "refs":
        return ", ".join(str(v) if isinstance(v, str) else f"#{v}" for v in value)
    if view.widget in ("number", "money"):
        return _number(value, view, locale)
    if view.widget == "json" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if view.widget == "date":
        return _date(dt.date.fromisoformat(value) if isinstance(value, str) else value, locale)
    if view.widget == "datetime":
        moment = _moment(value, view.timezone)
        if moment is None:
            return str(value)
        return _date(moment.date(), locale) + moment.strftime(" %H:%M")
    return str(value)


def local_input(value: Any, timezone: str | None) -> str:
    """A datetime as a ``datetime-local`` input holds it: wall-clock time in ``timezone`` (the app's),
    minutes only. The API gives UTC (``...Z``); text typed into the form has no offset and is kept as
    typed (the field type reads offset-less input in the same zone, so the round trip is exact)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and not _has_offset(value):
        return value[:16]
    moment = _moment(value, timezone)
    return moment.strftime("%Y-%m-%dT%H:%M") if moment is not None else str(value)


def searchable_fields(entity: Entity, access: Any) -> list[Field]:
    """The fields the global search looks in: the title and the ``search:`` fields, those the caller may
    read and that can be searched by ``contains`` (stored in the entity's table)."""
    names = dict.fromkeys([entity.title, *getattr(entity, "search_fields", ())])
    found = []
    for name in names:
        f = entity.fields.get(name)
        if f is None or f.column is None or "contains" not in f.field_type.filter_ops:
            continue
        if level_of(access, entity, name) != "hidden":
            found.append(f)
    return found


def _has_offset(text: str) -> bool:
    return text.endswith("Z") or (len(text) > 19 and text[-6] in "+-" and text[-3] == ":")


def _zone(name: str | None) -> dt.tzinfo:
    try:
        return ZoneInfo(name) if name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _moment(value: Any, timezone: str | None) -> dt.datetime | None:
    """A datetime (or its ISO text) in ``timezone``; offset-less values are taken as already there."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(_zone(timezone)) if value.tzinfo is not None else value


def _number(value: Any, view: FieldView, locale: str) -> str:
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return str(value)
    places = max(-number.as_tuple().exponent, 0) if isinstance(number.as_tuple().exponent, int) else 0
    if view.widget == "money" and view.step and view.step.startswith("0."):  # money shows its scale: 1,200.50
        places = max(places, len(view.step) - 2)
    text = f"{number:,.{places}f}"
    if locale.startswith("de") or locale.startswith("fr"):
        text = text.replace(",", " ").replace(".", ",")
    return f"{view.currency} {text}" if view.currency else text


def _date(day: dt.date, locale: str) -> str:
    if locale.startswith("zh"):
        return f"{day.year}年{day.month}月{day.day}日"
    return day.isoformat()


def shown(manifest, view, value: Any) -> Any:
    """An expanded ref (the target record, as ``expand`` gives it) as the target's title, a list of them
    as a list of titles; anything else as it is."""
    if view.target is None or value is None:
        return value
    title = next(e.title for e in manifest.entities.values() if e.plural == view.target)

    def one(item: Any) -> Any:
        return item.get(title) or f"#{item.get('id')}" if isinstance(item, dict) else item
    return [one(v) for v in value] if isinstance(value, list) else one(value)
