"""Field by field: new columns, renames, required on and off, enum options taken out, drops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

from loomcrm.engine.manifest import Manifest

from ..tables import JSONValue, build_metadata
from .checks import BackfillFailed, LossCheck, NullCheck, OptionCheck, holding_option
from .conversions import CONVERSIONS, conversion_steps
from .entities import bare_column, join_table_of
from .indexes import index_signatures
from .refs import REF_CHANGES, ref_steps
from .steps import BACKFILL_PAGE, SCHEMA_ATTRS, SCHEMA_PARAMS, Plan, Step, n_rows, planned_renames


def diff_fields(plan: Plan, name: str, before: dict, entity, table: sa.Table,
                manifest: Manifest) -> dict[str, str | None]:
    """Field by field: new columns, renames, conversions, required on and off, options, drops.

    Returns the renamed columns, ``{old: new}``, so indexes are compared under their new names, and
    the columns a type change replaces, ``{column: None}``: their indexes and constraints go with the
    old column and are created again on the new one.
    """
    old_fields = before.get("fields", {})
    renames = _renames(plan, name, old_fields, entity)
    renamed: list[tuple[dict, Any]] = []
    required: list[Step] = []  # after the new columns and renames: a backfill may read them
    columns = {}
    for fname, field_ in entity.fields.items():
        old = old_fields.get(renames.get(fname, fname))
        where = f"{name}.{fname}"
        if fname in renames:
            if old["column"]:  # refused or not: its indexes are not "removed"
                columns[old["column"]] = field_.column
            if not _renamable(plan, name, old, field_):
                continue
            renamed.append((old, field_))
        if old is None:
            if field_.type == "refs":
                continue  # its join table is planned with the other tables
            column = table.c[field_.column]
            bare = bare_column(column)
            bare.nullable = True  # a required column gets its values first, then NOT NULL (below)
            plan.steps.append(Step(f"add column {table.name}.{column.name} ({column.type}, "
                                   f"{'required' if field_.required else 'optional'})",
                                   ops.AddColumnOp.from_column_and_tablename(None, table.name, bare),
                                   batch=table.name if field_.type == "ref" else None))
            if field_.required:
                required.extend(_required_steps(where, entity, field_, table, manifest, new=True))
            if field_.rollup is not None:
                _diff_rollup(plan, where, None, field_.rollup.to_json())
            continue
        changed = [a for a in SCHEMA_ATTRS if old.get(a) != getattr(field_, a)
                   and not (a == "column" and fname in renames)]
        changed += [p for p in SCHEMA_PARAMS if old.get("params", {}).get(p) != field_.params.get(p)]
        if set(changed) & set(CONVERSIONS):
            required.extend(conversion_steps(plan, where, old, field_, table, before, manifest))
            if "type" in changed:  # the new column gets its constraints and indexes again (diff_indexes)
                columns[old["column"]] = None
                _diff_rollup(plan, where, old.get("rollup"), field_.rollup.to_json() if field_.rollup else None)
                continue
        if "required" in changed and field_.column is not None and fname not in renames:
            changed.remove("required")
            if field_.required:
                required.extend(_required_steps(where, entity, field_, table, manifest, new=False))
            else:  # always safe: every value fits a nullable column
                column = table.c[field_.column]
                required.append(Step(f"drop NOT NULL of {table.name}.{column.name} ({where} is optional now)",
                                     ops.AlterColumnOp(table.name, column.name, modify_nullable=True,
                                                       existing_type=column.type, existing_nullable=False),
                                     batch=table.name))
        if "unique" in changed:  # a unique constraint added or dropped: see diff_indexes
            changed.remove("unique")
        if set(changed) & set(REF_CHANGES):
            required.extend(ref_steps(plan, where, old, field_, table, manifest))
        old_options = [o["value"] for o in old.get("params", {}).get("options", [])]
        new_options = [o["value"] for o in field_.params.get("options", [])]
        removed = [o for o in old_options if o not in new_options]
        if removed and old.get("type") == field_.type:  # a type change maps its values itself
            required.extend(_option_steps(where, field_, table, removed, new_options))
        added = [o for o in new_options if o not in old_options]
        if added:
            plan.notes.append(f"new options for {where}: {', '.join(added)}")
        _diff_rollup(plan, where, old.get("rollup"), field_.rollup.to_json() if field_.rollup else None)
        _diff_default(plan, where, old, field_)
    drops = []  # after the other changes of the table
    for fname, old in old_fields.items():
        if fname in entity.fields or fname in renames.values():
            continue
        where = f"{name}.{fname}"
        if old.get("type") == "refs":
            join, owner = join_table_of(name, fname, old)
            drops.append(Step(f"drop table {join} (links of {where})", ops.DropTableOp(join),
                              check=LossCheck(where, "field", join, None, "the links of ", key=owner)))
            continue
        operations = [ops.DropColumnOp(table.name, old["column"])]
        if ("ix", (old["column"],)) in index_signatures({"fields": {fname: old}}):  # batch mode keeps indexes
            operations.insert(0, ops.DropIndexOp(f"ix_{table.name}_{old['column']}", table_name=table.name))
        drops.append(Step(f"drop column {table.name}.{old['column']}", ops.ModifyTableOps(table.name, operations),
                          batch=table.name, check=LossCheck(where, "field", table.name, old["column"],
                                                            "the values of ")))
    if renamed:
        _rename_columns(plan, manifest, before, entity, table, renamed)
    plan.steps += required + drops
    return columns


def _required_steps(where: str, entity, field_, table: sa.Table, manifest: Manifest, *, new: bool) -> list[Step]:
    """Make a column NOT NULL: rows without a value get the ``backfill:`` or the literal ``default``
    first; without either, a data check refuses the plan when there are such rows (see :func:`check_data`)."""
    column = table.c[field_.column]
    not_null = ops.AlterColumnOp(table.name, column.name, modify_nullable=False, existing_type=column.type,
                                 existing_nullable=True)
    if field_.backfill is not None:
        fill = f'backfill "{field_.backfill.text}"'
        run = _backfill_expression(where, entity, field_, table, manifest.timezone)
    elif field_.default is not None:
        fill = f"default {field_.default!r}"
        run = _backfill_default(field_.default, table, column)
    else:
        check = NullCheck(where, table.name, column.name, None, new)
        return [Step(f"set {table.name}.{column.name} NOT NULL", not_null, batch=table.name, check=check)]
    check = NullCheck(where, table.name, column.name, fill, new)
    return [Step(f"backfill {where} from {fill}", None, run=run, check=check),
            Step(f"set {table.name}.{column.name} NOT NULL", not_null, batch=table.name)]


def _backfill_default(value: Any, table: sa.Table, column: sa.Column) -> Callable[[sa.Connection], None]:
    """One UPDATE giving every row without a value the default (a bare table: no onupdate columns)."""
    target = sa.table(table.name, sa.column(column.name, column.type))

    def run(conn: sa.Connection) -> None:
        conn.execute(sa.update(target).where(target.c[column.name].is_(None)).values({column.name: value}))
    return run


def _backfill_expression(where: str, entity, field_, table: sa.Table, timezone: str) -> Callable[[sa.Connection], None]:
    """Evaluate the backfill for each row without a value, page by page in id order, and write the
    results by id. Rows it gives no value or one the field cannot hold fail the migration, named."""
    from loomcrm.engine.actions import value_converter
    from loomcrm.engine.expressions import Binding
    from loomcrm.engine.fieldtypes import FieldValueError
    from loomcrm.engine.runtime.context import utcnow, zone

    expression = field_.backfill
    read = [entity.fields[n] for n in sorted(expression.reads.get("record", ())) if entity.fields[n].column]
    column = table.c[field_.column]
    target = sa.table(table.name, sa.column("id"), sa.column(column.name, column.type))
    select = sa.select(table.c.id, *(table.c[f.column] for f in read)).where(column.is_(None)) \
        .order_by(table.c.id).limit(BACKFILL_PAGE)
    update = sa.update(target).where(target.c.id == sa.bindparam("row_id")).values({column.name: sa.bindparam("v")})
    bind, convert = Binding(expression.reads), value_converter(field_, timezone)

    def run(conn: sa.Connection) -> None:
        now = utcnow()
        today = now.astimezone(zone(timezone)).date().isoformat()
        failed: list[str] = []
        after = 0
        while True:
            rows = conn.execute(select.where(table.c.id > after)).all()
            if not rows:
                break
            values = []
            for row in rows:
                record = {"id": row[0], **{f.name: v for f, v in zip(read, row[1:], strict=True)}}
                try:
                    value = convert(expression.evaluate(bind({"record": record, "now": now, "today": today})))
                except FieldValueError as exc:
                    failed.append(f"id {row[0]}: {exc.message}")
                    continue
                except Exception as exc:  # noqa: BLE001 - CEL errors: reported with the row
                    failed.append(f"id {row[0]}: {type(exc).__name__}: {exc}")
                    continue
                if value is None:
                    failed.append(f"id {row[0]}: no value")
                else:
                    values.append({"row_id": row[0], "v": value})
            if values:
                conn.execute(update, values)
            after = rows[-1][0]
        if failed:
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            raise BackfillFailed(f"backfill of {where} (\"{expression.text}\") failed for {n_rows(len(failed))}: "
                                 f"{'; '.join(failed[:5])}{more}: change 'backfill:' so it gives every row a "
                                 "value that fits, or fill those rows first; nothing was changed")
    return run


def _option_steps(where: str, field_, table: sa.Table, removed: list[str], options: list[str]) -> list[Step]:
    """Options taken out of an enum field need no DDL (the column is text, or JSON lists for
    multi_enum; options are checked in Python), but the rows holding one get what ``map:`` says;
    an option ``map:`` leaves out must be unused (a data check, see :func:`check_data`)."""
    column = table.c[field_.column]
    multi = isinstance(column.type, JSONValue)
    mapping = field_.option_map or {}
    steps = []
    for option in removed:
        check = OptionCheck(where, table.name, column.name, option, multi)
        if option in mapping:
            to = mapping[option]
            steps.append(Step(f"map {where}: {option!r} -> {'null' if to is None else repr(to)}", None,
                              run=_remap_option(table.name, column, option, to, multi), check=check))
            continue
        empty = "" if field_.required else f" (or {{{option}: null}})"
        fix = f"add map: {{{option}: {options[0]}}}{empty} under the field, or put the option back"
        steps.append(Step(f"remove option {option!r} of {where}", None, check=replace(check, fix=fix)))
    return steps


def _remap_option(table_name: str, column: sa.Column, option: str, to: str | None,
                  multi: bool) -> Callable[[sa.Connection], None]:
    """Give the rows holding ``option`` the value ``to``: one UPDATE; lists are rewritten by id, 500 rows
    at a time, with ``to`` in the option's place (once) or the option left out. ``version`` and
    ``updated_at`` stay as they were."""
    target = sa.table(table_name, sa.column("id"), sa.column(column.name, column.type))
    value = target.c[column.name]

    def rewritten(items: list[str]) -> list[str]:
        result = []
        for item in items:
            item = to if item == option else item
            if item is not None and item not in result:
                result.append(item)
        return result

    def run(conn: sa.Connection) -> None:
        holding = holding_option(value, option, multi, conn.dialect.name)
        if not multi:
            conn.execute(sa.update(target).where(holding).values({column.name: to}))
            return
        select = sa.select(target.c.id, value).where(holding).order_by(target.c.id).limit(BACKFILL_PAGE)
        update = sa.update(target).where(target.c.id == sa.bindparam("row_id")) \
            .values({column.name: sa.bindparam("v", type_=column.type)})
        after = None
        while rows := conn.execute(select if after is None else select.where(target.c.id > after)).all():
            conn.execute(update, [{"row_id": row_id, "v": rewritten(items)} for row_id, items in rows])
            after = rows[-1][0]
    return run


def _renames(plan: Plan, name: str, old_fields: dict, entity) -> dict[str, str]:
    """``{new name: old name}`` of the fields to rename (see :func:`~.steps.planned_renames`)."""
    return planned_renames(plan, {f: x.renamed_from for f, x in entity.fields.items() if x.renamed_from},
                           old_fields, label=lambda f: f"{name}.{f}", instead="is added as a new field")


def _renamable(plan: Plan, name: str, old: dict, new) -> bool:
    """A rename changes the name and nothing the table holds; anything more is refused (for now)."""
    where = f"{name}.{old['name']} -> {name}.{new.name}"
    if new.type == "refs" or old.get("type") == "refs":
        plan.refused.append(f"rename {where}: renaming a many-to-many field (its join table) is not supported yet; "
                            "remove 'renamed_from:' and keep the old name for now")
        return False
    changed = [a for a in ("type", "required", "unique", "indexed") if old.get(a) != getattr(new, a)]
    changed += [p for p in SCHEMA_PARAMS if old.get("params", {}).get(p) != new.params.get(p)]
    if changed:
        plan.refused.append(f"rename {where} also changes {', '.join(changed)}: rename first (migrate with the "
                            "old settings under the new name), then change it in a second migration")
        return False
    return True


def _rename_columns(plan: Plan, manifest: Manifest, before: dict, entity, table: sa.Table,
                    renamed: list[tuple[dict, Any]]) -> None:
    """Rename the columns, then every index and constraint the naming convention named after them.

    The columns are renamed in place (``ALTER TABLE ... RENAME``, natively on SQLite too: no copy,
    and SQLite rewrites the indexes and constraints that use them). The names that followed the old
    column are found on a copy of the table with the old column names, so they are exactly what the
    naming convention gave when they were created; constraints (SQLite keeps them in the table's
    definition) are renamed in one batch, indexes by dropping and creating them.
    """
    columns = {old["column"]: new.column for old, new in renamed}
    for old, new in renamed:
        column = table.c[new.column]
        plan.steps.append(Step(
            f"rename column {table.name}.{old['column']} -> {table.name}.{new.column} (data kept)",
            ops.AlterColumnOp(table.name, old["column"], modify_name=new.column, existing_type=column.type,
                              existing_nullable=column.nullable)))
    old_columns = {new.name: old["column"] for old, new in renamed}
    reverted = {n: replace(f, column=old_columns[n]) if n in old_columns else f for n, f in entity.fields.items()}
    as_before = replace(manifest, entities={**manifest.entities, entity.name: replace(entity, fields=reverted)})
    old_table = build_metadata(as_before).tables[table.name]
    existing = index_signatures(before)

    def counterpart(items, item):
        cols = tuple(columns.get(c, c) for c in item.columns.keys())
        return next(i for i in items if type(i) is type(item) and tuple(i.columns.keys()) == cols
                    and getattr(i, "unique", None) == getattr(item, "unique", None))

    constraints, indexes = [], []
    for item in sorted(old_table.constraints, key=lambda c: str(c.name)):
        cols = tuple(item.columns.keys())
        if not set(cols) & set(columns) or isinstance(item, sa.PrimaryKeyConstraint):
            continue
        if isinstance(item, sa.UniqueConstraint) and ("uq", cols) not in existing:
            continue
        new_item = counterpart(table.constraints, item)
        if new_item.name == item.name:
            continue
        if isinstance(item, sa.ForeignKeyConstraint):
            what, create = "foreign key", ops.CreateForeignKeyOp.from_constraint(new_item)
            drop = ops.DropConstraintOp(item.name, table.name, type_="foreignkey")
        else:
            what, create = "unique constraint", ops.CreateUniqueConstraintOp.from_constraint(new_item)
            drop = ops.DropConstraintOp(item.name, table.name, type_="unique")
        constraints.append(Step(f"rename {what} {item.name} -> {new_item.name} on {table.name}",
                                ops.ModifyTableOps(table.name, [drop, create]), batch=table.name))
    for item in sorted(old_table.indexes, key=lambda i: str(i.name)):
        cols = tuple(item.columns.keys())
        if not set(cols) & set(columns) or ("uix" if item.unique else "ix", cols) not in existing:
            continue
        new_item = counterpart(table.indexes, item)
        if new_item.name == item.name:
            continue
        indexes.append(Step(f"rename index {item.name} -> {new_item.name} on {table.name}",
                            ops.ModifyTableOps(table.name, [ops.DropIndexOp(item.name, table_name=table.name),
                                                            ops.CreateIndexOp.from_index(new_item)])))
    plan.steps += constraints + indexes


def _diff_default(plan: Plan, where: str, old: dict, field_: Any) -> None:
    """A changed ``default:`` needs no DDL (Loom applies defaults when records are created): new
    records get the new one, existing rows keep their values; the note says so."""
    now = field_.to_json()
    before = (old.get("default"), old.get("dynamic_default"))
    after = (now.get("default"), now.get("dynamic_default"))
    if before != after:
        shown = after[1] or (repr(after[0]) if after[0] is not None else "none")
        plan.notes.append(f"default of {where} is now {shown}: new records get it, existing rows keep their values")


def _diff_rollup(plan: Plan, where: str, old: dict | None, new: dict | None) -> None:
    """A rollup added to a field or changed needs no DDL, but its values are recomputed
    (``migrate`` does it); one taken away leaves the stored values as they are."""
    if old == new:
        return
    if new is None:
        plan.notes.append(f"{where} is no longer a rollup: its values stay as they are and people may change them")
    else:
        plan.notes.append(f"rollup {where} {'changed' if old else 'added'}: its values are recomputed")
        plan.refresh_rollups = True
