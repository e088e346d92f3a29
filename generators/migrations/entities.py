"""Whole tables: creating new entities' tables (in an order foreign keys allow) and dropping removed ones."""

from __future__ import annotations

import warnings
from dataclasses import replace

import sqlalchemy as sa
from alembic.operations import Operations, ops
from sqlalchemy.schema import sort_tables_and_constraints

from ..tables import build_metadata
from .checks import LossCheck
from .steps import Plan, Step, planned_renames


def join_table_of(entity: str, fname: str, fjson: dict) -> tuple[str, str]:
    """The join table of a stored ``refs`` field and its owner column (as ``tables.join_table`` names them)."""
    return f"{entity}__{fname}", f"{entity}_id" if fjson["params"].get("to") != entity else "source_id"


def drop_entities(plan: Plan, removed: dict[str, dict]) -> None:
    """Drop the tables of removed entities: their join tables first, then each table after the removed
    tables that refer to it. A foreign key between removed tables that closes a cycle is dropped first.
    (A remaining entity cannot refer to a removed one: the compiler refuses such a config.)"""
    refs = {name: {f["params"]["to"] for f in e.get("fields", {}).values()
                   if f.get("type") == "ref" and f["params"].get("to") in removed and f["params"]["to"] != name}
            for name, e in removed.items()}
    for name, entity in sorted(removed.items()):
        for fname, fjson in entity.get("fields", {}).items():
            if fjson.get("type") == "refs":
                join = join_table_of(name, fname, fjson)[0]
                plan.steps.append(Step(f"drop table {join} (links of {name}.{fname})", ops.DropTableOp(join)))
    order: list[str] = []
    while len(order) < len(removed):
        # a table no remaining removed table refers to; in a cycle, the first by name, once the keys
        # referring to it are dropped
        left = [n for n in sorted(removed) if n not in order]
        free = [n for n in left if not any(n in refs[other] for other in left if other != n)]
        name = free[0] if free else left[0]
        for other in [] if free else left[1:]:
            for _fname, fjson in sorted(removed[other].get("fields", {}).items()):
                if name in refs[other] and fjson.get("type") == "ref" and fjson["params"].get("to") == name:
                    fk = f"fk_{other}_{fjson['column']}_{name}"
                    plan.steps.append(Step(f"drop foreign key {fk} on {other}", DropCycleForeignKeyOp(fk, other)))
            refs[other].discard(name)
        order.append(name)
        plan.steps.append(Step(f"drop table {name}", ops.DropTableOp(name),
                               check=LossCheck(f"entity '{name}'", "entity", name, None)))


class DropCycleForeignKeyOp(ops.DropConstraintOp):
    """Drop a foreign key between two tables about to be dropped: a no-op on SQLite (whose migrations
    run without enforcing foreign keys, and which cannot drop a constraint in place)."""

    def __init__(self, name: str, table_name: str) -> None:
        super().__init__(name, table_name, type_="foreignkey")


@Operations.implementation_for(DropCycleForeignKeyOp)
def _drop_cycle_foreign_key(operations: Operations, operation: DropCycleForeignKeyOp) -> None:
    if operations.impl.dialect.supports_alter:
        operations.drop_constraint(operation.constraint_name, operation.table_name, type_="foreignkey")


def sorted_tables(tables) -> list[sa.Table]:
    """``tables`` with referenced tables first, as far as cycles allow (without SQLAlchemy's warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # cycles are expected: see creation_order
        return [table for table, _ in sort_tables_and_constraints(list(tables)) if table is not None]


def creation_order(tables: list[sa.Table]) -> tuple[list[sa.Table], list[sa.ForeignKeyConstraint]]:
    """The order to create ``tables`` in, and the foreign keys to add once they all exist.

    A foreign key stays in its CREATE TABLE when the table it refers to exists by then: already in the
    database, the table itself, or created earlier; only those closing a cycle are deferred.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # a cycle: SQLAlchemy sets its keys apart
        sorted_ = sort_tables_and_constraints(tables)
    order = [table for table, _ in sorted_ if table is not None]
    position = {table: i for i, table in enumerate(order)}
    deferred = [fk for table, fks in sorted_ if table is None for fk in fks
                if fk.referred_table in position and position[fk.referred_table] > position[fk.parent]]
    return order, sorted(deferred, key=lambda fk: (position[fk.parent], fk.name or ""))


def bare_column(column: sa.Column) -> sa.Column:
    """A copy of ``column`` without index/unique flags (those become steps of their own), keeping its
    foreign key (``_copy`` drops it), named by the naming convention as ``build_metadata`` names it."""
    copy = column._copy()
    copy.index = None
    copy.unique = None
    for fk in column.foreign_keys:  # the convention's name, shortened as the dialect needs (PostgreSQL: 63)
        copy.append_foreign_key(sa.ForeignKey(fk.target_fullname, ondelete=fk.ondelete, name=fk.constraint.name))
    return copy


def create_table(plan: Plan, table: sa.Table, what: str, skip=()) -> None:
    """Create ``table`` with its indexes; the foreign keys in ``skip`` are added by a later step.

    Where the database can ALTER a table to add a foreign key, CREATE TABLE leaves those out
    (``use_alter``); SQLite keeps them inline (it resolves the referenced table only when rows are
    written) and the later ``AddDeferredForeignKeyOp`` does nothing there.
    """
    operation = ops.CreateTableOp.from_table(table)
    if any(fk.parent is table for fk in skip):
        constraints = []
        for constraint in table.constraints:
            if constraint in skip:
                constraint = constraint._copy()
                constraint.use_alter = True
            constraints.append(constraint)
        operation = ops.CreateTableOp(
            table.name, list(table.c) + constraints, schema=table.schema, _namespace_metadata=table.metadata,
            _constraints_included=True, comment=table.comment, info=dict(table.info),
            prefixes=list(table._prefixes), **table.kwargs)
    plan.steps.append(Step(f"create table {table.name} ({what}, {len(table.columns)} columns)", operation))
    for index in sorted(table.indexes, key=lambda i: i.name or ""):
        plan.steps.append(Step(f"create index {index.name} on {table.name}", ops.CreateIndexOp.from_index(index)))


class AddDeferredForeignKeyOp(ops.CreateForeignKeyOp):
    """Add a foreign key its CREATE TABLE left out (see ``create_table``): a no-op on SQLite."""


@Operations.implementation_for(AddDeferredForeignKeyOp)
def _add_deferred_foreign_key(operations: Operations, operation: AddDeferredForeignKeyOp) -> None:
    if operations.impl.dialect.supports_alter:  # else CREATE TABLE kept it inline
        operations.impl.add_constraint(operation.to_constraint(operations.migration_context))


# --- entity renames --------------------------------------------------------------------------------------

def entity_renames(plan: Plan, old_entities: dict[str, dict], manifest) -> dict[str, str]:
    """``{new name: old name}`` of the entities to rename (see :func:`~.steps.planned_renames`)."""
    return planned_renames(plan, {n: e.renamed_from for n, e in manifest.entities.items() if e.renamed_from},
                           old_entities, label=lambda n: f"entity '{n}'", instead="is created as a new entity")


def under_new_names(old_entities: dict[str, dict], renames: dict[str, str]) -> dict[str, dict]:
    """The stored entities as if they had always had their new names: keys, ``name`` and the targets of
    ref and refs fields, so the rest of the diff compares like with like (``to: customer`` is no new
    target when ``customer`` was ``account``)."""
    new_name = {old: new for new, old in renames.items()}

    def field(f: dict) -> dict:
        target = f.get("params", {}).get("to")
        if f.get("type") in ("ref", "refs") and target in new_name:
            return {**f, "params": {**f["params"], "to": new_name[target]}}
        return f

    return {new_name.get(n, n): {**e, "name": new_name.get(n, n),
                                 "fields": {fn: field(f) for fn, f in e.get("fields", {}).items()}}
            for n, e in old_entities.items()}


def rename_entities(renames: dict[str, str], old_entities: dict[str, dict], manifest) -> list[Step]:
    """The steps renaming the tables of renamed entities, and everything the naming convention named after
    them: their join tables and the join tables of refs pointing at them (with their ``<entity>_id``
    column), and the primary keys, foreign keys, unique constraints and indexes of all those tables and
    of the tables whose refs point at a renamed entity (``fk_contact_account_id_account``).

    Tables are renamed in place (``ALTER TABLE ... RENAME``): every row, id and link stays, and foreign
    keys elsewhere follow the table (PostgreSQL refers to tables by oid; SQLite rewrites the references
    itself). The names that followed the old name are found by building the tables twice, once with
    the old entity names, exactly as the naming convention named them at creation; only what the
    database has (by the stored manifest) is renamed. Constraints are renamed in place on PostgreSQL;
    on SQLite a foreign key or unique constraint keeps its name inside the table's definition, so
    renaming it copies the table (batch mode), and a primary key keeps its old name there (it names
    nothing SQLite can look up, and is left as it is rather than copy the table for it).
    """
    current = under_new_names(old_entities, renames)
    existing = _existing_tables(current)
    stored = _columns_as_stored(current, manifest)
    between = build_metadata(stored)  # new names, the columns as the database has them
    before = build_metadata(_with_old_names(stored, renames))
    old_table = {new: old for new, old in renames.items()}
    for table in between.tables.values():
        if "join" in table.info:
            owner, fname = table.info["loom"].split(".")
            old_table[table.name] = f"{renames.get(owner, owner)}__{fname}"
    steps: list[Step] = []
    pairs = []
    for table in sorted_tables(between.tables.values()):
        if table.info.get("system") or table.name not in existing:
            continue
        old = before.tables[old_table.get(table.name, table.name)]
        columns = dict(zip(old.c.keys(), table.c.keys(), strict=True))
        if old.name == table.name and columns == {c: c for c in columns} and not _refers_to(table, renames):
            continue
        pairs.append((old, table, columns))
    for old, table, columns in pairs:  # tables first: foreign keys and indexes are renamed on the new names
        if old.name != table.name:
            what = (f"entity '{table.name}', renamed from '{old.name}'" if "join" not in table.info
                    else f"links of {table.info['loom']}")
            operations = [ops.RenameTableOp(old.name, table.name)]
            if "join" not in table.info:
                operations.append(RenameSequenceOp(f"{old.name}_id_seq", f"{table.name}_id_seq"))
            steps.append(Step(f"rename table {old.name} -> {table.name} ({what}; data kept)",
                              ops.ModifyTableOps(table.name, operations)))
        for before_column, after_column in columns.items():
            if before_column != after_column:
                steps.append(Step(f"rename column {table.name}.{before_column} -> {table.name}.{after_column} "
                                  "(data kept)", ops.AlterColumnOp(table.name, before_column, modify_name=after_column,
                                                                   existing_type=table.c[after_column].type)))
    for old, table, columns in pairs:
        steps += _renamed_names(old, table, columns, current.get(table.info["loom"]) or {})
    return steps


def refuse_checked_changes(plan: Plan, renames: dict[str, str]) -> None:
    """Refuse a plan that renames an entity and also changes something of its rows (or links) that a
    data check counts first: the checks run before anything changes, when the tables still have their
    old names."""
    for i, step in enumerate(plan.steps):
        table = getattr(step.check, "table", None)
        entity = (table or "").split("__")[0]
        if entity not in renames:
            continue
        plan.steps[i] = replace(step, check=None)  # it would look for the table under its new name
        plan.refused.append(f"rename entity {renames[entity]} -> {entity} also changes its data ({step.description}): "
                            f"rename first (migrate with 'renamed_from: {renames[entity]}' and the entity otherwise "
                            "as it was), then change it in a second migration")


def _columns_as_stored(current: dict[str, dict], manifest):
    """``manifest`` with the columns of renamed fields as the database has them (fields renamed in the
    same migration get their new column after the entity's table got its new name)."""
    entities = {}
    for name, entity in manifest.entities.items():
        stored = current.get(name, {}).get("fields", {})
        fields = {}
        for fname, f in entity.fields.items():
            old = stored.get(f.renamed_from) if fname not in stored and f.renamed_from else None
            fields[fname] = replace(f, column=old["column"]) if old and old.get("column") else f
        entities[name] = replace(entity, fields=fields)
    return replace(manifest, entities=entities)


def _with_old_names(manifest, renames: dict[str, str]):
    """``manifest`` with the renamed entities under their old names, and the refs pointing at them too."""
    def field(f):
        if f.target in renames:
            return replace(f, params={**f.params, "to": renames[f.target]})
        return f

    entities = {}
    for name, entity in manifest.entities.items():
        fields = {n: field(f) for n, f in entity.fields.items()}
        old = renames.get(name, name)
        entities[old] = replace(entity, name=old, fields=fields)
    return replace(manifest, entities=entities)


def _existing_tables(current: dict[str, dict]) -> set[str]:
    """The tables the database has, under their new names: entity tables and join tables."""
    tables = set(current)
    for name, entity in current.items():
        tables |= {join_table_of(name, fname, f)[0] for fname, f in entity.get("fields", {}).items()
                   if f.get("type") == "refs"}
    return tables


def _refers_to(table: sa.Table, renames: dict[str, str]) -> bool:
    return any(fk.column.table.name in renames for fk in table.foreign_keys)


def _existing_objects(table: sa.Table, entity_json: dict) -> set[tuple[str, tuple[str, ...]]]:
    """(kind, columns) of the indexes and constraints the database has on ``table``, as the stored
    manifest says (a join table has all of its own); new ones of this migration are made later under
    their new names."""
    from .indexes import index_signatures

    if "join" in table.info:
        return {("pk", tuple(table.primary_key.columns.keys()))} | {("fk", (c.name,)) for c in table.c} \
            | {("ix", tuple(c.name for c in i.columns)) for i in table.indexes}
    fields = entity_json.get("fields", {})
    found = {("pk", ("id",)), ("ix", ("owner",))} | index_signatures(entity_json)
    found |= {("fk", (f["column"],)) for f in fields.values() if f.get("type") == "ref" and f.get("column")}
    return found


def _kind(item) -> str:
    if isinstance(item, sa.Index):
        return "uix" if item.unique else "ix"
    return {sa.PrimaryKeyConstraint: "pk", sa.ForeignKeyConstraint: "fk", sa.UniqueConstraint: "uq"}.get(type(item), "")


def _renamed_names(old: sa.Table, table: sa.Table, columns: dict[str, str], entity_json: dict) -> list[Step]:
    """The steps giving the constraints and indexes of ``table`` the names the naming convention gives
    them now (``old`` is the table as built under the old entity names, ``columns`` old -> new)."""
    existing = _existing_objects(old, entity_json)
    items = [*sorted(old.constraints, key=lambda c: str(c.name)), *sorted(old.indexes, key=lambda i: str(i.name))]
    constraints, indexes = [], []
    for item in items:
        cols = tuple(item.columns.keys())
        kind = _kind(item)
        if not kind or (kind, cols) not in existing:
            continue
        mapped = tuple(columns[c] for c in cols)
        new = next(i for i in [*table.constraints, *table.indexes] if _kind(i) == kind
                   and tuple(i.columns.keys()) == mapped)
        if new.name == item.name:
            continue
        if isinstance(item, sa.Index):
            indexes.append(Step(f"rename index {item.name} -> {new.name} on {table.name}",
                                RenameIndexOp(table.name, item.name, new)))
            continue
        what = {"pk": "primary key", "fk": "foreign key", "uq": "unique constraint"}[kind]
        constraints.append(Step(f"rename {what} {item.name} -> {new.name} on {table.name}",
                                RenameConstraintOp(table.name, item.name, new),
                                batch=table.name if kind != "pk" else None))
    return constraints + indexes


class RenameConstraintOp(ops.MigrateOperation):
    """Rename a constraint: in place where the database can (PostgreSQL: ``ALTER TABLE ... RENAME
    CONSTRAINT``, which renames a primary key's or unique constraint's index with it); on SQLite by
    dropping and adding it in the batch copy of the table, except a primary key (see
    :func:`rename_entities`)."""

    def __init__(self, table_name: str, old_name: str, constraint: sa.Constraint) -> None:
        self.table_name, self.old_name, self.constraint = table_name, old_name, constraint


@Operations.implementation_for(RenameConstraintOp)
def _rename_constraint(operations: Operations, operation: RenameConstraintOp) -> None:
    constraint = operation.constraint
    if operations.impl.dialect.name == "postgresql":
        quote = operations.impl.dialect.identifier_preparer.quote
        operations.execute(f"ALTER TABLE {quote(operation.table_name)} RENAME CONSTRAINT "
                           f"{quote(operation.old_name)} TO {quote(constraint.name)}")
    elif isinstance(constraint, sa.ForeignKeyConstraint):
        operations.invoke(ops.DropConstraintOp(operation.old_name, operation.table_name, type_="foreignkey"))
        operations.invoke(ops.CreateForeignKeyOp.from_constraint(constraint))
    elif isinstance(constraint, sa.UniqueConstraint):
        operations.invoke(ops.DropConstraintOp(operation.old_name, operation.table_name, type_="unique"))
        operations.invoke(ops.CreateUniqueConstraintOp.from_constraint(constraint))


class RenameIndexOp(ops.MigrateOperation):
    """Rename an index: in place on PostgreSQL (``ALTER INDEX ... RENAME``: no rebuild); SQLite cannot,
    so it is dropped and created again under the new name."""

    def __init__(self, table_name: str, old_name: str, index: sa.Index) -> None:
        self.table_name, self.old_name, self.index = table_name, old_name, index


@Operations.implementation_for(RenameIndexOp)
def _rename_index(operations: Operations, operation: RenameIndexOp) -> None:
    if operations.impl.dialect.name == "postgresql":
        quote = operations.impl.dialect.identifier_preparer.quote
        operations.execute(f"ALTER INDEX {quote(operation.old_name)} RENAME TO {quote(operation.index.name)}")
    else:
        operations.invoke(ops.DropIndexOp(operation.old_name, table_name=operation.table_name))
        operations.invoke(ops.CreateIndexOp.from_index(operation.index))


class RenameSequenceOp(ops.MigrateOperation):
    """Rename the sequence a PostgreSQL table's ids come from (``<table>_id_seq``), so a later entity
    with the old name can have it; SQLite renames its AUTOINCREMENT counter with the table itself."""

    def __init__(self, old_name: str, new_name: str) -> None:
        self.old_name, self.new_name = old_name, new_name


@Operations.implementation_for(RenameSequenceOp)
def _rename_sequence(operations: Operations, operation: RenameSequenceOp) -> None:
    if operations.impl.dialect.name == "postgresql":
        quote = operations.impl.dialect.identifier_preparer.quote
        operations.execute(f"ALTER SEQUENCE IF EXISTS {quote(operation.old_name)} "
                           f"RENAME TO {quote(operation.new_name)}")


def rename_subscriptions(renames: dict[str, str]) -> Step:
    """Webhook subscriptions made through the API name events by entity (``account.created``,
    ``account.*``): they get the new names, so they keep receiving the events they asked for. Unlike
    the history (mapped when read, see ``runtime.audit``), a subscription is a standing instruction
    about events to come, which only ever carry the new name. Events already in the outbox are sent as
    they were written."""
    new_name = {old: new for new, old in renames.items()}

    def renamed(event: str) -> str:
        entity, dot, what = event.partition(".")
        return f"{new_name.get(entity, entity)}{dot}{what}"

    def run(conn: sa.Connection) -> None:
        from ..tables import JSONValue

        events = sa.table("loom_webhook", sa.column("id"), sa.column("events", JSONValue()))
        for row_id, names in conn.execute(sa.select(events.c.id, events.c.events)).all():
            if [renamed(e) for e in names] != names:
                conn.execute(events.update().where(events.c.id == row_id).values(events=[renamed(e) for e in names]))
    olds = ", ".join(f"{old}.* -> {new}.*" for new, old in sorted(renames.items()))
    return Step(f"rename the events of webhook subscriptions made through the API ({olds})", None, run=run)
