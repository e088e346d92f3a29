"""SQL for records: select, insert, update, delete, many-to-many links, expansion, related lists.

Plain functions of (connection, entity, table, values); the pipeline decides *whether* to run them.
Records here are dicts keyed by field name holding Python values; :func:`dump_record` makes the
JSON form the API returns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..manifest import Entity, Field, Manifest
from .query import ListQuery, encode_cursor, list_parameters, list_statements, query_shape

if TYPE_CHECKING:
    from .access import RowFilter

LIST_CACHE_SIZE = 512

__all__ = ["Store", "dump_record"]


class Store:
    """Statements for one Manifest's tables. Builds the fixed statements once, not per request."""

    def __init__(self, manifest: Manifest, metadata: sa.MetaData):
        self.manifest = manifest
        self.metadata = metadata
        self.tables = {name: metadata.tables[e.table] for name, e in manifest.entities.items()}
        self._names = {name: tuple(f.name for f in e.column_fields) for name, e in manifest.entities.items()}
        self._get_by_id = {
            name: sa.select(*self._columns(e)).where(self.tables[name].c.id == sa.bindparam("id"))
            for name, e in manifest.entities.items()
        }
        self._list_cache: dict[tuple, tuple[sa.Select, sa.Select]] = {}
        self._insert = {name: self.tables[name].insert().returning(*self._columns(e))
                        for name, e in manifest.entities.items()}

    def _columns(self, entity: Entity, names: Iterable[str] | None = None) -> list[sa.Column]:
        table = self.tables[entity.name]
        fields = entity.column_fields if names is None else [entity.fields[n] for n in names]
        return [table.c[f.column] for f in fields if f.column is not None]

    # --- reading ---------------------------------------------------------------------------------
    def fetch(self, conn: sa.Connection, entity: Entity, record_id: int, *, for_update: bool = False,
              names: tuple[str, ...] | None = None, rows: RowFilter | None = None) -> dict | None:
        """One record by id: all fields, or only ``names``; None if absent or outside ``rows``."""
        if names is None and rows is None:
            stmt, columns = self._get_by_id[entity.name], self._names[entity.name]
        else:
            stmt, columns = self._select_one(entity, names, rows)
        if for_update and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt, {"id": record_id, **(rows.params if rows else {})}).first()
        if row is None:
            return None
        record = dict(zip(columns, row, strict=True))
        self.attach_links(conn, entity, [record], names)
        return record

    def _select_one(self, entity: Entity, names: tuple[str, ...] | None, rows: RowFilter | None) -> tuple:
        key = ("one", entity.name, names, rows and rows.key)
        cached = self._list_cache.get(key)
        if cached is None:
            table = self.tables[entity.name]
            columns = self._column_names(entity, names)
            stmt = sa.select(*self._columns(entity, columns)).where(table.c.id == sa.bindparam("id"))
            if rows is not None:
                stmt = stmt.where(rows.condition(table))
            cached = self._remember(key, (stmt, columns))
        return cached

    def in_rows(self, conn: sa.Connection, entity: Entity, record_id: int, rows: RowFilter | None) -> bool:
        """Whether the record is among ``rows`` (None: all rows)."""
        if rows is None:
            return True
        return self.fetch(conn, entity, record_id, names=("id",), rows=rows) is not None

    def scan(self, conn: sa.Connection, entity: Entity, after: int, limit: int) -> list[dict]:
        """Up to ``limit`` records with ids above ``after``, in id order (Loom's own batch jobs)."""
        table = self.tables[entity.name]
        stmt = sa.select(*self._columns(entity)).where(table.c.id > after).order_by(table.c.id).limit(limit)
        records = [dict(zip(self._names[entity.name], r, strict=True)) for r in conn.execute(stmt)]
        self.attach_links(conn, entity, records, None)
        return records

    def list(self, conn: sa.Connection, entity: Entity, query: ListQuery, extra_where: list[sa.ColumnElement] = (),
             *, names: tuple[str, ...] | None = None, rows: RowFilter | None = None,
             ) -> tuple[list[dict], str | None, int | None]:
        """One page of records (all fields, or only ``names``; only those among ``rows``), the cursor
        of the next page (or None), and the total if asked for."""
        dialect = conn.dialect.name
        page, count, columns = self._list_statements(entity, query, dialect, extra_where, names, rows)
        params = list_parameters(query, dialect)
        if rows is not None:
            params.update(rows.params)
        rows_ = conn.execute(page, params).all()
        records = [dict(zip(columns, r, strict=True)) for r in rows_[: query.limit]]
        next_cursor = None
        if len(rows_) > query.limit:
            last = dump_record(entity, records[-1], [f.name for f, _ in query.sort])
            next_cursor = encode_cursor(query.sort, last)
        total = None
        if query.count:
            total = conn.execute(count, params).scalar_one()
        self.attach_links(conn, entity, records, names)
        return records, next_cursor, total

    def _list_statements(self, entity: Entity, query: ListQuery, dialect: str, extra_where, names, rows) -> tuple:
        """Built once per query shape and reused (building SQL costs more than running it on SQLite);
        related lists (``extra_where``) are built each time."""
        table = self.tables[entity.name]
        columns = self._column_names(entity, names)
        where = [*extra_where, *([rows.condition(table)] if rows is not None else [])]
        if extra_where:
            return (*list_statements(table, self._columns(entity, columns), query, dialect, where), columns)
        key = (entity.name, dialect, query_shape(query), names, rows and rows.key)
        statements = self._list_cache.get(key)
        if statements is None:
            statements = self._remember(key, (*list_statements(table, self._columns(entity, columns), query,
                                                                dialect, where), columns))
        return statements

    def _column_names(self, entity: Entity, names: tuple[str, ...] | None) -> tuple[str, ...]:
        """Of ``names`` (default: every field), those stored in the entity's table."""
        if names is None:
            return self._names[entity.name]
        return tuple(n for n in names if entity.fields[n].column is not None)

    def _remember(self, key: tuple, value: tuple) -> tuple:
        if len(self._list_cache) >= LIST_CACHE_SIZE:
            self._list_cache.pop(next(iter(self._list_cache)))
        self._list_cache[key] = value
        return value

    def attach_links(self, conn: sa.Connection, entity: Entity, records: list[dict],
                     names: tuple[str, ...] | None = None) -> None:
        """Fill many-to-many fields (of ``names``, default all) with lists of ids: one query per
        refs field, not per record."""
        if not records:
            return
        for field in entity.user_fields:
            if field.type != "refs" or names is not None and field.name not in names:
                continue
            links = self.load_links(conn, entity, field, [r["id"] for r in records])
            for record in records:
                record[field.name] = links.get(record["id"], [])

    def load_links(self, conn, entity: Entity, field: Field, ids: list[int]) -> dict[int, list[int]]:
        table = self.metadata.tables[entity.join_table(field.name)]
        left, right = table.info["join"]
        rows = conn.execute(
            sa.select(table.c[left], table.c[right]).where(table.c[left].in_(ids)).order_by(table.c[right])
        )
        result: dict[int, list[int]] = defaultdict(list)
        for source, target in rows:
            result[source].append(target)
        return result

    def expand(self, conn, entity: Entity, names: list[str], records: list[dict], dumped: list[dict],
               access=None) -> None:
        """Replace ref ids in ``dumped`` by the target records: one query per expanded field.
        With an ``access``, targets show only readable fields, and those outside the caller's
        read scope show only their id."""
        for name in names:
            field = entity.fields[name]
            target = self.manifest.entities[field.target]
            ids = set()
            for record in records:
                value = record.get(name)
                ids.update(value if isinstance(value, list) else [value] if value is not None else [])
            if not ids:
                continue
            fields, rows = (None, None) if access is None else (access.readable(target), access.rows(target, "read"))
            columns = self._column_names(target, fields)
            stmt = sa.select(*self._columns(target, columns)).where(self.tables[target.name].c.id.in_(sorted(ids)))
            if rows is not None:
                stmt = stmt.where(rows.condition(self.tables[target.name]))
            found = conn.execute(stmt, rows.params if rows else {})
            targets = {r[0]: dict(zip(columns, r, strict=True)) for r in found}
            self.attach_links(conn, target, list(targets.values()), fields)
            by_id = {i: dump_record(target, t) for i, t in targets.items()}
            for record, out in zip(records, dumped, strict=True):
                value = record.get(name)
                if isinstance(value, list):
                    out[name] = [by_id.get(v, {"id": v}) for v in value]
                elif value is not None:
                    out[name] = by_id.get(value, {"id": value})

    def exists(self, conn, entity: Entity, ids: list[int], rows: RowFilter | None = None) -> set[int]:
        """Which of ``ids`` exist (and are among ``rows``)."""
        table = self.tables[entity.name]
        stmt = sa.select(table.c.id).where(table.c.id.in_(ids))
        if rows is not None:
            stmt = stmt.where(rows.condition(table))
        return set(conn.execute(stmt, rows.params if rows else {}).scalars())

    def count_referencing(self, conn, entity: Entity, field: Field, record_id: int) -> int:
        table = self.tables[entity.name]
        return conn.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c[field.column] == record_id)
        ).scalar_one()

    # --- writing ---------------------------------------------------------------------------------
    def insert(self, conn, entity: Entity, values: dict[str, Any]) -> dict[str, Any]:
        """Insert one row; return it as stored (defaults included) through RETURNING."""
        fields = entity.fields
        row = {fields[n].column: v for n, v in values.items() if fields[n].column is not None}
        stored = conn.execute(self._insert[entity.name], row).one()
        return dict(zip(self._names[entity.name], stored, strict=True))

    def update(self, conn, entity: Entity, record_id: int, version: int, values: dict[str, Any]) -> bool:
        """Update if the stored version is still ``version``; bump it. False when someone was faster."""
        table = self.tables[entity.name]
        row = {entity.fields[n].column: v for n, v in values.items() if entity.fields[n].column is not None}
        row["version"] = table.c.version + 1
        result = conn.execute(
            table.update().where(table.c.id == record_id, table.c.version == version).values(row)
        )
        return result.rowcount == 1

    def delete(self, conn, entity: Entity, record_id: int, version: int) -> bool:
        table = self.tables[entity.name]
        result = conn.execute(table.delete().where(table.c.id == record_id, table.c.version == version))
        return result.rowcount == 1

    def set_links(self, conn, entity: Entity, field: Field, record_id: int, ids: list[int]) -> None:
        table = self.metadata.tables[entity.join_table(field.name)]
        left, right = table.info["join"]
        conn.execute(table.delete().where(table.c[left] == record_id))
        if ids:
            conn.execute(table.insert(), [{left: record_id, right: i} for i in ids])


def dump_record(entity: Entity, record: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """The JSON form of a record: each value through its field type's ``dump``, in field order."""
    if names is None and not entity.has_links:
        out = dict(record)  # already in field order; convert only the values that need it
        for name, dump in entity.converters:
            value = out.get(name)
            if value is not None:
                out[name] = dump(value)
        return out
    dumpers = entity.dumpers
    out = {}
    for name in names if names is not None else dumpers:
        if name in record:
            value = record[name]
            dump = dumpers[name]
            out[name] = value if value is None or dump is None else dump(value)
    return out
