"""Type changes and length/precision changes: converting the values a column holds.

Every value is converted in Python by the new field type itself (``parse``, as input through the API
would be), so a conversion gives exactly what typing the value in again would: ``" 42 "`` becomes
``42`` for an integer, ``"+86 138 0013 8000"`` a normalized phone number, a free-text ``industry``
the option ``map:`` names. Before anything changes, a :class:`ConversionCheck` converts every row
and refuses the plan when some do not convert (naming them); ``--allow-data-loss`` empties those of
an optional field instead.

A **type change** fills a new column beside the old one (``<column>__loom_new``), page by page in id
order, then drops the old column and gives the new one its name: the indexes and constraints of the
column are dropped with it and created again (see ``diff_indexes``). A **length or precision change**
(``max_length``, ``precision``, ``scale``) alters the column in place; when it shrinks, the same check
first makes sure every value still fits. On SQLite both use alembic's batch mode (a copy of the table).

Conversions from and to ``ref``, ``refs`` and ``json`` (but json to text) are refused: their values
mean something else in the other type; add a new field instead.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

from loomcrm.engine.fieldtypes import FieldValueError
from loomcrm.engine.manifest import Manifest

from ..tables import JSONValue
from .checks import described
from .steps import Plan, Step, n_rows

#: What a change of one of these field attributes (or params) converts.
CONVERSIONS = ("type", "max_length", "precision", "scale")

#: Rows a conversion reads and writes at a time.
CONVERSION_PAGE = 5000

#: Types whose values are text: any value converts to them as its text.
TEXTUAL = frozenset({"string", "text", "email", "phone", "url"})
#: Types no conversion reads or writes.
UNCONVERTIBLE = frozenset({"ref", "refs"})

__all__ = ["CONVERSIONS", "ConversionCheck", "conversion_steps", "converter"]


@dataclass(frozen=True)
class ConversionCheck:
    """Convert every stored value of ``column`` before anything changes, and count those that do not
    convert: any such row refuses the plan, unless data loss is allowed and the field is optional
    (those rows are then emptied).

    :ivar where: ``entity.field``, as messages name it.
    :ivar change: what changes, as messages say it (``string -> integer``, ``max_length 80 -> 20``).
    :ivar old_type: the column's type now, to read the values as the app stored them.
    :ivar convert: a stored value -> the new field's value; raises ``FieldValueError`` if it cannot.
    :ivar hint: how to fix the rows that do not convert.
    """

    where: str
    change: str
    table: str
    column: str
    old_type: Any
    convert: Callable[[Any], Any]
    required: bool
    hint: str

    def run(self, conn: sa.Connection, step: Step, allow_data_loss: bool) -> tuple[Step, str | None]:
        converted, failed, failures = 0, 0, []
        for row_id, value in _pages(conn, self.table, self.column, self.old_type):
            try:
                self.convert(value)
                converted += 1
            except FieldValueError as exc:
                failed += 1
                if len(failures) < 5:
                    failures.append(f"id {row_id} {_shown(value)}: {exc.message}")
        if not failed:
            return described(step, f"data check: {n_rows(converted)} with a value, all convert"), None
        empties = allow_data_loss and not self.required
        if empties:
            return described(step, f"destructive: empties {n_rows(failed)} that do not convert"), None
        step = described(step, f"data check: {n_rows(failed)} of {n_rows(converted + failed)} do not convert")
        more = f" and {failed - len(failures)} more" if failed > len(failures) else ""
        loss = "" if self.required else (", or run 'loom migrate --allow-data-loss' to empty "
                                         f"{'it' if failed == 1 else 'them'}")
        return step, (f"{self.where} changes {self.change}, but {n_rows(failed)} "
                      f"{'does' if failed == 1 else 'do'} not convert ({'; '.join(failures)}{more}): "
                      f"{self.hint}{loss}")


def conversion_steps(plan: Plan, where: str, old: dict, field_: Any, table: sa.Table, before: dict,
                     manifest: Manifest) -> list[Step]:
    """The steps converting ``where`` from its stored definition ``old`` to ``field_``: a type change
    (a new column filled and swapped in), or a length/precision change (the column altered in place).
    What cannot be converted is refused, with the reason."""
    old_type, new_type = old.get("type"), field_.type
    if old_type != new_type:
        return _type_change(plan, where, old, field_, table, before, manifest)
    changed = {p: (old.get("params", {}).get(p), field_.params.get(p)) for p in CONVERSIONS[1:]
               if old.get("params", {}).get(p) != field_.params.get(p)}
    words = ", ".join(f"{p} {a} -> {b}" for p, (a, b) in changed.items())
    column = table.c[field_.column]
    previous = _column_type(old, manifest)
    alter = ops.AlterColumnOp(table.name, column.name, modify_type=column.type, existing_type=previous,
                              existing_nullable=column.nullable)
    step = Step(f"change {where}: {words}", alter, batch=table.name)
    if _shrinks(old, field_):
        hint = ("shorten those values first" if "max_length" in changed
                else "round those values or make them smaller first")
        check = ConversionCheck(where, words, table.name, column.name, previous,
                                converter(old, field_, manifest), field_.required, hint)
        return [Step(f"check {where} fits {words}", None, run=_empty_unconvertible(table.name, column.name, previous,
                                                                                   check.convert), check=check),
                step]
    return [step]


def _type_change(plan: Plan, where: str, old: dict, field_: Any, table: sa.Table, before: dict,
                 manifest: Manifest) -> list[Step]:
    old_type, new_type = old["type"], field_.type
    if old_type in UNCONVERTIBLE or new_type in UNCONVERTIBLE or new_type == "json" or \
            (old_type == "json" and new_type != "text"):
        plan.refused.append(f"{where} changes type {old_type} -> {new_type}, which Loom cannot convert (their "
                            "values mean something else): revert the type, or add a new field and fill it")
        return []
    if old.get("required") != field_.required:
        plan.refused.append(f"{where} changes type {old_type} -> {new_type} and becomes "
                            f"{'required' if field_.required else 'optional'} at once: change the type first "
                            "(keep 'required:' as it was), then the rest in a second migration")
        return []
    column = table.c[field_.column]
    previous = _column_type(old, manifest)
    temporary = f"{column.name[:50]}__loom_new"
    convert = _remembered(converter(old, field_, manifest))  # the data check's work serves the fill
    if new_type in ("enum", "multi_enum"):
        hint = "add their values to 'map:' (each to an option, or null), or change those rows first"
    else:
        hint = f"change those rows so they read as {new_type} values first"
    check = ConversionCheck(where, f"type {old_type} -> {new_type}", table.name, column.name, previous, convert,
                            field_.required, hint)
    swap = [*_index_drops(table.name, before, column.name), ops.DropColumnOp(table.name, column.name),
            ops.AlterColumnOp(table.name, temporary, modify_name=column.name, existing_type=_plain_type(column.type),
                              modify_nullable=column.nullable, existing_nullable=True)]
    return [
        Step(f"add column {table.name}.{temporary} ({column.type}) for the converted values",
             ops.AddColumnOp(table.name, sa.Column(temporary, column.type, nullable=True))),
        Step(f"convert {where} {old_type} -> {new_type}", None,
             run=_fill(table.name, column.name, previous, temporary, column.type, convert), check=check),
        Step(f"replace {table.name}.{column.name} by the converted column (data kept as converted)",
             ops.ModifyTableOps(table.name, swap), batch=table.name, closes_batch=True),
    ]


def converter(old: dict, field_: Any, manifest: Manifest) -> Callable[[Any], Any]:
    """A stored value of the field as ``old`` defines it -> the value of ``field_``, through its type's
    ``parse`` (raising ``FieldValueError`` when it does not convert). For an enum, the text keys of
    ``map:`` come first (``{"Banking": finance}`` turns the text ``Banking`` into the option
    ``finance``), then the options, also in other letter case or with spaces around."""
    parse = field_.field_type.parse
    new_type, mapping = field_.type, field_.option_map or {}
    options = [o["value"] for o in field_.params.get("options", [])]
    timezone = manifest.timezone

    def option(value: Any) -> str | None:
        text = _text(value, timezone)
        for candidate in (text, text.strip()):
            if candidate in mapping:
                return mapping[candidate]
            if candidate in options:
                return candidate
        same = [o for o in options if o.casefold() == text.strip().casefold()]
        if len(same) == 1:  # 'Retail' is the option 'retail'
            return same[0]
        shown = ", ".join(options[:10]) + (", ..." if len(options) > 10 else "")
        raise FieldValueError("option", f"is not one of the options ({shown}) and 'map:' does not name it")

    def one(value: Any) -> Any:
        if new_type in ("enum", "multi_enum"):
            return option(value)
        if new_type in TEXTUAL:
            return parse(field_, _text(value, timezone))
        if isinstance(value, bool) and new_type != "boolean":
            raise FieldValueError("type", f"is a yes/no value, which is not a {new_type}")
        if new_type == "integer" and isinstance(value, decimal.Decimal):
            if value != value.to_integral_value():
                raise FieldValueError("type", "has decimal places, so it is not a whole number")
            value = int(value)
        elif new_type in ("decimal", "money") and not isinstance(value, str):
            value = str(value)
        elif new_type == "date" and isinstance(value, dt.datetime):
            value = value.astimezone(_zone(timezone)).date()
        elif new_type == "datetime" and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = value.isoformat() + "T00:00:00"  # midnight in the app's time zone
        return parse(field_, value)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if new_type != "multi_enum":
            return one(value)
        items = value if isinstance(value, list) else [v for v in re.split(r"\s*[,;]\s*", _text(value, timezone))
                                                          if v]
        converted = [one(item) for item in items]
        return parse(field_, [v for i, v in enumerate(converted) if v is not None and v not in converted[:i]]) \
            or None
    return convert


#: Distinct values a conversion remembers between the data check and the fill.
REMEMBERED = 250_000


def _remembered(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, remembering the result (or the error) of up to :data:`REMEMBERED` distinct values:
    the data check converts every value before anything changes, the fill then reuses it, and values
    that repeat (an industry typed by hand) are converted once."""
    known: dict[Any, tuple[bool, Any]] = {}

    def remembered(value: Any) -> Any:
        try:
            hit = known.get(value)
        except TypeError:  # a list: not remembered
            return convert(value)
        if hit is None:
            try:
                hit = (True, convert(value))
            except FieldValueError as exc:
                hit = (False, exc)
            if len(known) < REMEMBERED:
                known[value] = hit
        if hit[0]:
            return hit[1]
        raise hit[1]
    return remembered


def _text(value: Any, timezone: str) -> str:
    """A stored value as text, as a person would type it: dates in ISO form, decimals as written,
    yes/no as true/false, lists comma-separated, JSON as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date | decimal.Decimal | int | float):
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _zone(name: str):
    from loomcrm.engine.runtime.context import zone

    return zone(name)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _text(value, "UTC")
    return f"({text[:40]}{'...' if len(text) > 40 else ''})"


def _shrinks(old: dict, field_: Any) -> bool:
    """Whether some value of the old definition may not fit the new one."""
    before, after = old.get("params", {}), field_.params
    if before.get("max_length") != after.get("max_length"):
        return after.get("max_length") is not None and (before.get("max_length") is None
                                                        or after["max_length"] < before["max_length"])
    digits = lambda p: (p.get("precision") or 0) - (p.get("scale") or 0)  # noqa: E731 - before the point
    return (after.get("scale") or 0) < (before.get("scale") or 0) or digits(after) < digits(before)


def _plain_type(column_type: Any) -> Any:
    """The type a Loom type decorator wraps (JSON, DateTime): alembic's batch mode cannot rename a
    column whose ``existing_type`` is a decorator."""
    return column_type.impl_instance if isinstance(column_type, sa.types.TypeDecorator) else column_type


def _column_type(old: dict, manifest: Manifest) -> Any:
    """The SQLAlchemy type of the column as ``old`` (a stored field) defined it."""
    field_type = _field_type(old["type"], manifest)
    stand_in = _StandIn(old["type"], old.get("params", {}))
    return field_type.column_type(stand_in)


@dataclass(frozen=True)
class _StandIn:
    """Enough of a field for ``FieldType.column_type``: its type and params."""

    type: str
    params: dict


def _field_type(name: str, manifest: Manifest) -> Any:
    for entity in manifest.entities.values():
        for f in entity.fields.values():
            if f.type == name:
                return f.field_type
    from loomcrm.plugins.field_types import BUILTIN_TYPES

    for field_type in BUILTIN_TYPES:
        if field_type.name == name:
            return field_type
    raise LookupError(f"no field type {name!r} is installed")


def _pages(conn: sa.Connection, table_name: str, column: str, column_type: Any):
    """``(id, value)`` of every row with a value, page by page in id order, typed as stored."""
    table = sa.table(table_name, sa.column("id"), sa.column(column, column_type))
    select = sa.select(table.c.id, table.c[column]).where(table.c[column].is_not(None)) \
        .order_by(table.c.id).limit(CONVERSION_PAGE)
    after = None
    while rows := conn.execute(select if after is None else select.where(table.c.id > after)).all():
        yield from rows
        after = rows[-1][0]


def _fill(table_name: str, column: str, column_type: Any, target: str, target_type: Any,
          convert: Callable[[Any], Any]) -> Callable[[sa.Connection], None]:
    """Write each row's converted value into the new column. A conversion depends on the value only,
    so each distinct value is converted once, into a temporary table (old value -> new value), and
    one ``UPDATE ... FROM`` writes every row; lists (JSON) cannot be matched that way and are written
    row by row. A value that does not convert is left empty (the data check refused the plan unless
    that was allowed)."""
    table = sa.table(table_name, sa.column("id"), sa.column(column, column_type), sa.column(target, target_type))

    def run(conn: sa.Connection) -> None:
        if isinstance(column_type, JSONValue):
            _fill_rows(conn, table, column, column_type, target, target_type, convert)
            return
        pairs = sa.Table("loom_conversion", sa.MetaData(), sa.Column("old", column_type, primary_key=True),
                         sa.Column("new", target_type), prefixes=["TEMPORARY"])
        pairs.create(conn)
        try:
            old = table.c[column]
            distinct = sa.select(old).where(old.is_not(None)).distinct() \
                .execution_options(yield_per=CONVERSION_PAGE)  # one scan, read a page at a time
            for values in conn.execute(distinct).scalars().partitions():
                converted = []
                for value in values:
                    try:
                        converted.append({"old": value, "new": convert(value)})
                    except FieldValueError:
                        continue
                if converted:
                    _insert(conn, pairs, converted)
            conn.execute(sa.update(table).values({target: pairs.c.new}).where(old == pairs.c.old))
        finally:
            pairs.drop(conn)
    return run


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert ``rows`` into ``table``: through ``COPY`` on PostgreSQL (executemany is ten times slower
    there), values turned into what the columns' types would bind."""
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), rows)
        return
    names = [c.name for c in table.columns]
    binds = [c.type._cached_bind_processor(conn.dialect) for c in table.columns]
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[n] if bind is None else bind(row[n]) for n, bind in zip(names, binds, strict=True)])


def _fill_rows(conn: sa.Connection, table: Any, column: str, column_type: Any, target: str, target_type: Any,
               convert: Callable[[Any], Any]) -> None:
    """:func:`_fill` row by row, by id."""
    update = sa.update(table).where(table.c.id == sa.bindparam("row_id")) \
        .values({target: sa.bindparam("v", type_=target_type)})
    batch = []
    for row_id, value in _pages(conn, table.name, column, column_type):
        try:
            batch.append({"row_id": row_id, "v": convert(value)})
        except FieldValueError:
            continue
        if len(batch) >= CONVERSION_PAGE:
            conn.execute(update, batch)
            batch = []
    if batch:
        conn.execute(update, batch)


def _empty_unconvertible(table_name: str, column: str, column_type: Any,
                         convert: Callable[[Any], Any]) -> Callable[[sa.Connection], None]:
    """Before a column shrinks in place: empty the values that would not fit (only reached when the
    data check allowed it), so the database is never left to truncate or round them itself."""
    table = sa.table(table_name, sa.column("id"), sa.column(column, column_type))

    def run(conn: sa.Connection) -> None:
        bad = []
        for row_id, value in _pages(conn, table_name, column, column_type):
            try:
                convert(value)
            except FieldValueError:
                bad.append(row_id)
        for start in range(0, len(bad), CONVERSION_PAGE):
            conn.execute(sa.update(table).where(table.c.id.in_(bad[start:start + CONVERSION_PAGE]))
                         .values({column: None}))
    return run


def _index_drops(table_name: str, before: dict, column: str) -> list[ops.MigrateOperation]:
    """Drop the indexes and unique constraints of ``before`` (a stored entity) that use ``column``,
    by the names the naming convention gave them (see ``generators.tables``)."""
    drops: list[ops.MigrateOperation] = []
    fields = before.get("fields", {})
    for f in fields.values():
        if f.get("column") != column or f.get("system"):
            continue
        if f.get("unique"):
            drops.append(ops.DropConstraintOp(f"uq_{table_name}_{column}", table_name, type_="unique"))
        elif f.get("indexed") or f.get("type") == "ref":
            drops.append(ops.DropIndexOp(f"ix_{table_name}_{column}", table_name=table_name))
    for index in before.get("indexes", []):
        cols = [fields[n]["column"] if n in fields else n for n in index["fields"]]
        if column not in cols:
            continue
        if index["unique"] and not index.get("name"):
            drops.append(ops.DropConstraintOp(f"uq_{table_name}_{'_'.join(cols)}", table_name, type_="unique"))
        else:
            drops.append(ops.DropIndexOp(index.get("name") or f"ix_{table_name}_{'_'.join(cols)}",
                                         table_name=table_name))
    return drops
