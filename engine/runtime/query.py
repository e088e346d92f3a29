"""List queries: parse ``filter[...]``, ``sort``, ``limit``, ``cursor``, ``fields``, ``expand``,
``count`` into a :class:`ListQuery` and turn it into SQL.

Pagination is keyset (cursor) based: the cursor holds the sort values of the last row returned,
so inserts and deletes between pages neither repeat nor skip rows.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..errors import Problem, did_you_mean
from ..fieldtypes import FieldValueError
from ..manifest import Entity, Field

__all__ = ["ListQuery", "Filter", "parse_list_params", "parse_page_params", "list_statements", "list_parameters", "query_shape",
           "order_by", "keyset_clause", "encode_cursor", "DEFAULT_LIMIT", "MAX_LIMIT"]

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
FILTER_KEY = re.compile(r"^filter\[([^\[\]]*)\](?:\[([^\[\]]*)\])?$")
LIST_PARAMS = ("sort", "limit", "cursor", "fields", "expand", "count")


@dataclass(frozen=True)
class Filter:
    field: Field
    op: str
    value: Any


@dataclass
class ListQuery:
    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[Field, bool]] = field(default_factory=list)  # (field, descending)
    limit: int = DEFAULT_LIMIT
    cursor: list[Any] | None = None
    fields: list[str] | None = None
    expand: list[str] = field(default_factory=list)
    count: bool = False


def parse_list_params(entity: Entity, items: Iterable[tuple[str, str]]) -> ListQuery:
    """Validate query-string pairs; raise one 400 Problem listing every bad parameter."""
    query, errors, seen = ListQuery(), [], set()
    raw_cursor = None

    def bad(param: str, code: str, message: str) -> None:
        errors.append({"field": param, "code": code, "message": message})

    for key, value in items:
        match = FILTER_KEY.match(key)
        if match:
            _parse_filter(entity, key, match.group(1), match.group(2) or "eq", value, query, bad)
            continue
        if key not in LIST_PARAMS:
            hint = did_you_mean(key, LIST_PARAMS)
            bad(key, "unknown_parameter", f"unknown query parameter '{key}'" + (f" ({hint})" if hint else "")
                + "; filters are written filter[field][op]=value")
            continue
        if key in seen:
            bad(key, "repeated", f"'{key}' may be given once")
            continue
        seen.add(key)
        if key == "limit":
            query.limit = _parse_limit(value, bad) or query.limit
        elif key == "count":
            if value.lower() not in ("true", "false", "1", "0"):
                bad("count", "type", "count must be true or false")
            query.count = value.lower() in ("true", "1")
        elif key == "sort":
            query.sort = _parse_sort(entity, value, bad)
        elif key == "fields":
            query.fields = _parse_names(entity, "fields", value, bad, lambda f: True)
        elif key == "expand":
            query.expand = _parse_names(entity, "expand", value, bad, lambda f: f.type in ("ref", "refs"),
                                        "only ref and refs fields can be expanded")
        elif key == "cursor":
            raw_cursor = value
    if not any(f.name == "id" for f, _ in query.sort):
        query.sort.append((entity.fields["id"], query.sort[-1][1] if query.sort else False))
    if raw_cursor is not None and not errors:
        query.cursor = _decode_cursor(raw_cursor, query.sort, bad)
    if errors:
        raise Problem(400, "Invalid query parameters", errors=errors)
    return query


def _parse_limit(value: str, bad) -> int | None:
    if not re.fullmatch(r"\d{1,6}", value) or not 1 <= int(value) <= MAX_LIMIT:
        bad("limit", "range", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return None
    return int(value)


def parse_page_params(items: Iterable[tuple[str, str]]) -> tuple[int, int | None]:
    """``limit`` and ``cursor`` of a simple newest-first listing (record history)."""
    limit, cursor, errors = DEFAULT_LIMIT, None, []

    def bad(param: str, code: str, message: str) -> None:
        errors.append({"field": param, "code": code, "message": message})

    for key, value in items:
        if key == "limit":
            limit = _parse_limit(value, bad) or limit
        elif key == "cursor":
            if value.isdigit() and 0 < int(value) < 2**63:
                cursor = int(value)
            else:
                bad("cursor", "invalid_cursor", "cursor must be the next_cursor of the previous page")
        else:
            bad(key, "unknown_parameter", f"unknown query parameter '{key}' (this list takes limit and cursor)")
    if errors:
        raise Problem(400, "Invalid query parameters", errors=errors)
    return limit, cursor


def _field(entity: Entity, name: str, param: str, bad) -> Field | None:
    field_ = entity.fields.get(name)
    if field_ is None:
        hint = did_you_mean(name, entity.fields)
        bad(param, "unknown_field", f"'{entity.name}' has no field '{name}'" + (f" ({hint})" if hint else ""))
    return field_


def _parse_filter(entity, key, name, op, value, query, bad) -> None:
    field_ = _field(entity, name, key, bad)
    if field_ is None:
        return
    allowed = field_.field_type.filter_ops
    if op not in allowed:
        ops = ", ".join(sorted(allowed)) or "none"
        bad(key, "bad_operator", f"operator '{op}' does not apply to {field_.type} field '{name}' (allowed: {ops})")
        return
    try:
        if op == "isnull":
            if value.lower() not in ("true", "false", "1", "0"):
                raise FieldValueError("type", "must be true or false")
            parsed: Any = value.lower() in ("true", "1")
        elif op in ("contains", "startswith") and field_.type != "multi_enum":
            parsed = value
        elif op == "in" or field_.type == "multi_enum":
            parts = [v for v in value.split(",")] if value else []
            if not parts:
                raise FieldValueError("type", "needs at least one value")
            parsed = [field_.field_type.parse(field_, v) for v in parts]
            if field_.type == "multi_enum":
                parsed = [v for sub in parsed for v in sub]
        else:
            parsed = field_.field_type.parse(field_, value)
    except FieldValueError as exc:
        bad(key, exc.code, f"{name} {exc.message}")
        return
    query.filters.append(Filter(field_, op, parsed))


def _parse_sort(entity, value, bad) -> list[tuple[Field, bool]]:
    result = []
    for part in [p.strip() for p in value.split(",") if p.strip()]:
        desc = part.startswith("-")
        field_ = _field(entity, part.lstrip("-+"), "sort", bad)
        if field_ is None:
            continue
        if not field_.field_type.sortable or field_.column is None:
            bad("sort", "not_sortable", f"{field_.type} field '{field_.name}' cannot be sorted by")
            continue
        if any(f.name == field_.name for f, _ in result):
            bad("sort", "repeated", f"'{field_.name}' appears twice in sort")
            continue
        result.append((field_, desc))
    return result


def _parse_names(entity, param, value, bad, allowed, why="") -> list[str]:
    names = []
    for name in [p.strip() for p in value.split(",") if p.strip()]:
        field_ = _field(entity, name, param, bad)
        if field_ is None:
            continue
        if not allowed(field_):
            bad(param, "not_allowed", f"'{name}': {why}")
            continue
        if name not in names:
            names.append(name)
    return names


# --- cursors ----------------------------------------------------------------------------------


def encode_cursor(sort: list[tuple[Field, bool]], record: dict[str, Any]) -> str:
    """Opaque cursor: the JSON of the last row's sort values (as the API shows them), base64url."""
    values = [record.get(f.name) for f, _ in sort]
    raw = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str, sort, bad) -> list[Any] | None:
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(values, list) or len(values) != len(sort):
            raise ValueError
        return [None if v is None else f.field_type.parse(f, v) for (f, _), v in zip(sort, values, strict=True)]
    except (ValueError, FieldValueError, UnicodeDecodeError):
        bad("cursor", "invalid_cursor", "cursor is invalid or belongs to another sort order; "
            "start again without it")
        return None


# --- SQL ----------------------------------------------------------------------------------------


def query_shape(query: ListQuery) -> tuple:
    """What decides the SQL of a list query (not its values): statements are cached per shape."""
    filters = tuple((f.field.name, f.op, f.value if f.op == "isnull" else
                     len(f.value) if f.field.type == "multi_enum" else None) for f in query.filters)
    sort = tuple((f.name, desc) for f, desc in query.sort)
    cursor = None if query.cursor is None else tuple(v is None for v in query.cursor)
    return filters, sort, cursor


def list_statements(table: sa.Table, columns: list, query: ListQuery, dialect: str,
                    extra_where: Iterable[sa.ColumnElement] = ()) -> tuple[sa.Select, sa.Select]:
    """The page query and the count query for ``query``'s shape, with bind parameters named as
    :func:`list_parameters` fills them."""
    conditions = [_condition(table.c[f.field.column], f, i, dialect) for i, f in enumerate(query.filters)]
    conditions += list(extra_where)
    count = sa.select(sa.func.count()).select_from(table).where(*conditions)
    page = sa.select(*columns).where(*conditions)
    if query.cursor is not None:
        page = page.where(keyset_clause(table, query.sort, query.cursor))
    page = page.order_by(*order_by(table, query.sort)).limit(sa.bindparam("page_limit", type_=sa.Integer))
    return page, count


def list_parameters(query: ListQuery, dialect: str) -> dict[str, Any]:
    """The values for the bind parameters of :func:`list_statements` (one row more than the page,
    to tell whether there is a next page)."""
    params: dict[str, Any] = {"page_limit": query.limit + 1}
    for i, f in enumerate(query.filters):
        if f.op == "isnull":
            continue
        if f.field.type == "multi_enum":
            if dialect == "postgresql":
                params[f"f{i}"] = list(f.value)
            else:
                params.update({f"f{i}_{j}": v for j, v in enumerate(f.value)})
        elif f.op == "contains":
            params[f"f{i}"] = f"%{_escape_like(f.value)}%"
        elif f.op == "startswith":
            params[f"f{i}"] = f"{_escape_like(f.value)}%"
        else:
            params[f"f{i}"] = f.value
    for i, value in enumerate(query.cursor or ()):
        if value is not None:
            params[f"c{i}"] = value
    return params


def _escape_like(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _condition(col, f: Filter, i: int, dialect: str) -> sa.ColumnElement:
    op, param = f.op, sa.bindparam(f"f{i}")
    if op == "isnull":
        return col.is_(None) if f.value else col.is_not(None)
    if f.field.type == "multi_enum":  # contains: the list holds every given option
        if dialect == "postgresql":
            return sa.type_coerce(col, postgresql.JSONB).contains(sa.bindparam(f"f{i}", type_=postgresql.JSONB))
        items = sa.func.json_each(col).table_valued("value")
        return sa.and_(*(sa.exists(sa.select(1).select_from(items).where(items.c.value == sa.bindparam(f"f{i}_{j}")))
                         for j in range(len(f.value))))
    if op == "eq":
        return col == param
    if op == "ne":  # "not equal" includes records with no value, as people expect
        return sa.or_(col != param, col.is_(None))
    if op == "in":
        return col.in_(sa.bindparam(f"f{i}", expanding=True))
    if op in ("contains", "startswith"):  # case-insensitive; % and _ in the value are literal
        return sa.func.lower(col).like(sa.func.lower(sa.bindparam(f"f{i}", type_=sa.String)), escape="/")
    return {"lt": col < param, "lte": col <= param, "gt": col > param, "gte": col >= param}[op]


def order_by(table: sa.Table, sort: list[tuple[Field, bool]]) -> list[sa.ColumnElement]:
    """NULLs sort last in both directions, on SQLite and PostgreSQL alike."""
    result = []
    for f, desc in sort:
        col = table.c[f.column]
        result.append((col.desc() if desc else col.asc()).nulls_last() if not f.required else
                      (col.desc() if desc else col.asc()))
    return result


def keyset_clause(table: sa.Table, sort: list[tuple[Field, bool]], values: list[Any]) -> sa.ColumnElement:
    """Rows strictly after the cursor ``values`` (bound as ``c0``, ``c1``...) in :func:`order_by` order."""
    alternatives = []
    for i, ((f, desc), value) in enumerate(zip(sort, values, strict=True)):
        if value is None:
            continue  # nothing sorts after NULL within this key (NULLs are last)
        col = table.c[f.column]
        equal_before = [table.c[g.column].is_(None) if values[j] is None else table.c[g.column] == sa.bindparam(f"c{j}")
                        for j, (g, _) in enumerate(sort[:i])]
        after = col < sa.bindparam(f"c{i}") if desc else col > sa.bindparam(f"c{i}")
        if not f.required:
            after = sa.or_(after, col.is_(None))
        alternatives.append(sa.and_(*equal_before, after))
    return sa.or_(*alternatives) if alternatives else sa.false()
