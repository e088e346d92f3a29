"""Row rules: the CEL predicates of a grant's ``where:``, checked when the config compiles and run in SQL.

``where: "record.region == user.region"`` narrows a grant to the rows the predicate matches. The
predicate becomes part of the query's WHERE clause, never a filter over fetched rows. cel-python's
parser only reads the text; this module checks the tree against the entity and the user and maps it
to SQLAlchemy.

The subset Loom runs in SQL:

* ``record.<field>``: a field of the entity stored in its table with one value per record (not
  refs, json or multi_enum fields).
* ``user.<attribute>``: ``user.id`` and any other field of the user entity that a record field
  could be, including the ones a project adds (``user.region``); and the lists ``user.teams`` (team
  ids) and ``user.roles`` (role names), or any other refs or multi_enum field of the user, which
  only go to the right of ``in``: ``record.owner in user.teams``, ``"manager" in user.roles``.
* literals: strings, integers, doubles, ``true``, ``false``, ``null``, and lists of them after ``in``.
  A literal compared with a field is read as that field's type reads input, so an enum option must
  exist and ``record.close_date < "2026-01-01"`` compares dates.
* ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` (as far as the field's type allows, like the API's
  filters), ``in`` (a list literal or a user list on the right), ``&&`` ``||`` ``!`` and
  parentheses. A boolean field alone means ``== true``.

Everything else (functions, macros, methods, arithmetic, ``?:``, indexing, maps, other names such as
``now``) is refused when the config compiles, with :class:`RowRuleError`.

Empty values:

* ``record.f == null`` and ``!= null`` test for an empty field (``IS NULL``, ``IS NOT NULL``).
* As in CEL, an empty field equals no value, so ``record.f != "x"`` and ``!(record.f in [...])``
  also match the rows where ``f`` is empty, and ``record.f == record.g`` holds when both are empty.
  Ordering an empty field (``<`` ...) is an error in CEL; here it matches nothing, either way round.
* A missing user value matches nothing (deny by default): a comparison that reads a ``user``
  attribute whose value is null is false, and so is its negation, so neither
  ``record.region == user.region`` nor ``record.region != user.region`` reaches any row for a user
  without a region. Only ``user.x == null`` (and ``!= null``) look at the absence itself. A user
  value that does not fit its field counts as missing; a missing list (``user.teams``) is empty.

Every user value is a bind parameter named by the caller's prefix and the attribute's position in
:attr:`RowRule.user_attributes`, so one statement serves every user.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import celstr
from lark import Token, Tree

from .errors import did_you_mean
from .fieldtypes import FieldValueError
from .manifest import Entity, Field

__all__ = ["RowRule", "RowRuleError", "compile_row_rule"]

SUPPORTED = ("a row rule compares record.<field> and user.<attribute> with literals or with each other "
             "(== != < <= > >= in), joined with && || ! and parentheses, "
             'e.g. record.region == user.region || record.stage in ["won", "lost"]')

#: Which field types compare with which (a plugin's type compares with its own type only).
KINDS = {"string": "text", "text": "text", "email": "text", "phone": "text", "url": "text", "enum": "text",
         "integer": "number", "decimal": "number", "money": "number", "ref": "number",
         "boolean": "boolean", "date": "date", "datetime": "datetime"}
#: User attributes holding lists, and the kind of their items.
LIST_TYPES = {"refs": "number", "multi_enum": "text"}
FILTER_OP = {"==": "eq", "!=": "ne", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "in": "in"}
RELATIONS = {"relation_eq": "==", "relation_ne": "!=", "relation_lt": "<", "relation_le": "<=",
             "relation_gt": ">", "relation_ge": ">=", "relation_in": "in"}
MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
OPERATORS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
             ">=": operator.ge}
NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
UNSUPPORTED = {
    "expr": "the conditional operator (a ? b : c)", "addition": "arithmetic (+ and -)",
    "multiplication": "arithmetic (*, / and %)", "unary_neg": "arithmetic (unary -)",
    "member_dot_arg": "method calls", "ident_arg": "functions and macros", "dot_ident_arg": "functions",
    "member_index": "indexing with [...]", "member_object": "message literals", "map_lit": "maps",
    "dot_ident": "names with a leading dot",
}
#: Grammar rules that only wrap their one child.
WRAPPERS = {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
            "member", "primary", "paren_expr"}


class RowRuleError(Exception):
    """A rule Loom cannot check or translate to SQL."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message if hint is None else f"{message} (hint: {hint})")
        self.message = message
        self.hint = hint


# --- the checked rule: operands and predicates ------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """``record.<field>``."""

    field: Field

    @property
    def label(self) -> str:
        return f"record.{self.field.name}"


@dataclass(frozen=True)
class Param:
    """``user.<attribute>``: bind parameter number ``index``."""

    index: int
    field: Field

    @property
    def label(self) -> str:
        return f"user.{self.field.name}"

    @property
    def is_list(self) -> bool:
        return self.field.type in LIST_TYPES


@dataclass(frozen=True)
class Constant:
    """A literal, already read as the type of what it is compared with (None is ``null``)."""

    value: Any


@dataclass(frozen=True)
class Constants:
    """A list literal after ``in``."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Compare:
    op: str
    left: Column | Param  # a column whenever one side is a column
    right: Column | Param | Constant


@dataclass(frozen=True)
class Member:
    left: Column | Param | Constant
    options: Constants | Param


@dataclass(frozen=True)
class Not:
    term: Any


@dataclass(frozen=True)
class Logic:
    op: str  # and | or
    left: Any
    right: Any


@dataclass(frozen=True)
class RowRule:
    """A checked row rule, ready to become SQL for any table of its entity and any user.

    :ivar text: the CEL source, as written.
    :ivar user_attributes: the ``user.<x>`` the rule reads; bind parameter ``i`` holds attribute ``i``.
    :ivar predicate: the checked tree (``Compare``, ``Member``, ``Not``, ``Logic``).
    :ivar user_fields: the user entity's field for each of ``user_attributes``.
    """

    text: str
    user_attributes: tuple[str, ...]
    predicate: Any = dataclasses.field(repr=False, compare=False)
    user_fields: tuple[Field, ...] = dataclasses.field(repr=False, compare=False)

    def condition(self, table: sa.Table, prefix: str) -> sa.ColumnElement[bool]:
        """The SQL condition over `table` (the entity's table); every user value is a bind parameter
        named f"{prefix}{i}" (lists: expanding bind params) so the statement can be cached and reused
        for every user."""
        return _sql(self.predicate, table, prefix, negate=False)

    def parameters(self, user: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """Values for the bind parameters of `condition`, from the user's attributes (a dict with
        at least the keys in user_attributes)."""
        return {f"{prefix}{i}": _user_value(field, user.get(name))
                for i, (name, field) in enumerate(zip(self.user_attributes, self.user_fields, strict=True))}

    @property
    def record_fields(self) -> tuple[str, ...]:
        """The ``record.<field>`` names the rule reads, in order: a change to any other field cannot
        change which rows it matches (rollups use this to skip writes that do not affect them)."""
        names: dict[str, None] = {}
        terms = [self.predicate]
        while terms:
            term = terms.pop(0)
            if isinstance(term, Logic):
                terms += [term.left, term.right]
            elif isinstance(term, Not):
                terms.append(term.term)
            elif isinstance(term, Compare | Member):
                operands = (term.left, term.right) if isinstance(term, Compare) else (term.left,)
                names.update((o.field.name, None) for o in operands if isinstance(o, Column))
        return tuple(names)


def compile_row_rule(text: str, entity: Entity, user: Entity) -> RowRule:
    """Parse and check `text` against `entity` (for record.*) and the `user` entity (for user.*);
    raise RowRuleError with a clear message (and did-you-mean hint where it helps) otherwise."""
    if not text.strip():
        raise RowRuleError("the row rule is empty", SUPPORTED)
    try:
        tree = CELParser().parse(text)
    except CELParseError as exc:
        hint = "compare with == (a single = is not an operator)" if re.search(r"(?<![=!<>])=(?!=)", text) \
            else SUPPORTED
        raise RowRuleError(f"'{text}' is not valid CEL (syntax error at column {exc.column or 1})", hint) from None
    checker = _Checker(text, entity, user)
    try:
        predicate = checker.predicate(tree)
    except RecursionError:
        raise RowRuleError("the row rule is nested too deeply", "split it across several grants") from None
    return RowRule(text, tuple(f.name for f in checker.user_fields), predicate, tuple(checker.user_fields))


# --- from the parse tree to the checked rule ---------------------------------------------------------
def _unwrap(node: Tree) -> Tree:
    while node.data in WRAPPERS and len(node.children) == 1 and isinstance(node.children[0], Tree):
        node = node.children[0]
    return node


class _Checker:
    """Reads cel-python's lark tree into checked predicates, resolving names against the entities."""

    def __init__(self, text: str, entity: Entity, user: Entity):
        self.text, self.entity, self.user = text, entity, user
        self.user_fields: list[Field] = []

    def source(self, node: Tree) -> str:
        return self.text[node.meta.start_pos:node.meta.end_pos]

    def unsupported(self, node: Tree) -> RowRuleError:
        what = UNSUPPORTED.get(node.data)
        if node.data == "unary":
            what = UNSUPPORTED[node.children[0].data]
        if what is None:
            return RowRuleError(f"'{self.source(node)}' cannot be used here", SUPPORTED)
        return RowRuleError(f"{what} cannot be used in a row rule: '{self.source(node)}'", SUPPORTED)

    # predicates
    def predicate(self, node: Tree):
        node = _unwrap(node)
        if node.data in ("conditionalor", "conditionaland"):
            return Logic("or" if node.data == "conditionalor" else "and",
                         self.predicate(node.children[0]), self.predicate(node.children[1]))
        if node.data == "unary" and node.children[0].data == "unary_not":
            return Not(self.predicate(node.children[1]))
        if node.data == "relation":
            relation, right = node.children
            op, left = RELATIONS[relation.data], relation.children[0]
            if op == "in":
                return self.membership(self.operand(left), self.operand(right))
            return self.comparison(op, self.operand(left), self.operand(right))
        operand = self.operand(node)
        if isinstance(operand, Column | Param) and operand.field.type == "boolean":
            return Compare("==", operand, Constant(True))
        raise RowRuleError(f"'{self.source(node)}' is not a condition",
                           "compare it with something, e.g. record.region == user.region")

    def comparison(self, op: str, left, right) -> Compare:
        for side in (left, right):
            if isinstance(side, Constants):
                raise RowRuleError(f"a list can only follow 'in' (in '{self.text}')", SUPPORTED)
            if isinstance(side, Param) and side.is_list:
                raise RowRuleError(f"{side.label} is a list and cannot be compared with {op}",
                                   f"test membership instead, e.g. record.owner in {side.label}")
        if isinstance(left, Constant) or isinstance(left, Param) and isinstance(right, Column):
            left, right, op = right, left, MIRRORED[op]  # the column (or else the user value) goes left
        if isinstance(left, Constant):
            raise RowRuleError(f"'{self.text}' compares two literals",
                               "compare record.<field> or user.<attribute> with a value")
        if isinstance(right, Constant) and right.value is None:
            if op not in ("==", "!="):
                raise RowRuleError(f"{left.label} cannot be compared with null using {op}",
                                   f"test for an empty value with {left.label} == null or != null")
            return Compare(op, left, right)
        self.check_operator(left, op)
        if isinstance(right, Constant):
            return Compare(op, left, Constant(self.constant(left, right.value)))
        self.check_operator(right, MIRRORED[op])
        self.check_kinds(left, right)
        return Compare(op, left, right)

    def membership(self, left, right) -> Member:
        if isinstance(left, Constants) or isinstance(left, Param) and left.is_list:
            raise RowRuleError(f"the left of 'in' must be a single value (in '{self.text}')",
                               'e.g. record.stage in ["won", "lost"] or record.owner in user.teams')
        if isinstance(right, Param) and right.is_list:
            if isinstance(left, Constant):
                if left.value is None:
                    raise RowRuleError(f"{right.label} never holds null", "test for a value that may be in it")
                return Member(Constant(self.constant(right, left.value, item=True)), right)
            self.check_operator(left, "in")
            self.check_kinds(left, right)
            return Member(left, right)
        if not isinstance(right, Constants):
            raise RowRuleError(f"'in' needs a list on its right (in '{self.text}')",
                               'a list literal such as ["won", "lost"], or user.teams or user.roles')
        if isinstance(left, Constant):
            raise RowRuleError(f"'{self.text}' tests a literal against a literal list",
                               "test record.<field> or user.<attribute> instead")
        self.check_operator(left, "in")
        return Member(left, Constants(tuple(v if v is None else self.constant(left, v) for v in right.values)))

    def check_operator(self, side: Column | Param, op: str) -> None:
        allowed = side.field.field_type.filter_ops
        if FILTER_OP[op] not in allowed:
            usable = " ".join(cel for cel, name in FILTER_OP.items() if name in allowed) or "none"
            raise RowRuleError(f"{side.label} ({side.field.type}) cannot be compared with {op}",
                               f"{side.field.type} fields allow: {usable}")

    def check_kinds(self, left: Column | Param, right: Column | Param) -> None:
        kinds = [LIST_TYPES[s.field.type] if isinstance(s, Param) and s.is_list
                 else KINDS.get(s.field.type, s.field.type) for s in (left, right)]
        if kinds[0] != kinds[1]:
            raise RowRuleError(f"{left.label} ({left.field.type}) and {right.label} ({right.field.type}) "
                               "hold different kinds of values", "compare text with text, numbers with numbers, "
                               "dates with dates")

    def constant(self, side: Column | Param, value: Any, *, item: bool = False) -> Any:
        """``value`` read as ``side``'s field reads input (an item of it for lists)."""
        field = _comparable(side.field)
        try:
            return field.field_type.parse(field, [value])[0] if item else field.field_type.parse(field, value)
        except FieldValueError as exc:
            options = [o["value"] for o in field.params.get("options", ())]
            hint = did_you_mean(value, options) if isinstance(value, str) else None
            if hint is None and options:
                hint = f"the options: {', '.join(options)}"
            raise RowRuleError(f"{json.dumps(value, ensure_ascii=False)} cannot be compared with {side.label}: {exc.message}", hint) from None

    # operands
    def operand(self, node: Tree):
        node = _unwrap(node)
        if node.data == "literal":
            return Constant(self.literal(node.children[0]))
        if node.data == "list_lit":
            items = [self.operand(item) for item in (node.children[0].children if node.children else ())]
            if not all(isinstance(item, Constant) for item in items):
                raise RowRuleError(f"the items of a list must be literals: '{self.source(node)}'", SUPPORTED)
            return Constants(tuple(item.value for item in items))
        if node.data == "member_dot":
            return self.variable(node)
        if node.data == "ident":
            name = str(node.children[0])
            if name in ("record", "user"):
                raise RowRuleError(f"'{name}' must be followed by a name, e.g. {name}.id", SUPPORTED)
            raise _unknown_name(name)
        if node.data == "unary" and node.children[0].data == "unary_neg":
            number = self.operand(node.children[1])
            if isinstance(number, Constant) and type(number.value) in (int, float):
                return Constant(-number.value)
        if node.data in ("relation", "conditionalor", "conditionaland") or node.data == "unary" \
                and node.children[0].data == "unary_not":
            raise RowRuleError(f"'{self.source(node)}' is a condition, not a value",
                               "join conditions with && and ||; comparisons do not chain (a == b == c)")
        raise self.unsupported(node)

    def variable(self, node: Tree) -> Column | Param:
        base, name = _unwrap(node.children[0]), str(node.children[1])
        root = str(base.children[0]) if base.data == "ident" else None
        if root == "record":
            return self.record_field(name)
        if root == "user":
            return self.user_attribute(name)
        if root is not None:
            raise _unknown_name(root)
        if base.data == "member_dot":
            raise RowRuleError(f"'{self.source(node)}' reads too deep: a rule reads record.<field> and "
                               "user.<attribute>", "compare a reference itself, e.g. record.account == 42")
        raise self.unsupported(base)

    def record_field(self, name: str) -> Column:
        field = self.entity.fields.get(name)
        if field is None:
            readable = [n for n, f in self.entity.fields.items() if _readable(f)]
            raise RowRuleError(f"{self.entity.name} has no field '{name}' (record.{name})",
                               did_you_mean(name, readable) or f"its fields: {', '.join(readable)}")
        if not _readable(field):
            raise RowRuleError(f"row rules cannot read record.{name} ({field.type})",
                               "a rule compares fields stored in the table with one value per record")
        return Column(field)

    def user_attribute(self, name: str) -> Param:
        field = self.user.fields.get(name)
        if field is None or not (_readable(field) or field.type in LIST_TYPES):
            usable = [n for n, f in self.user.fields.items() if _readable(f) or f.type in LIST_TYPES]
            why = f" ({field.type})" if field else ": the user entity has no such field"
            raise RowRuleError(f"row rules cannot read user.{name}{why}",
                               did_you_mean(name, usable) or f"user attributes: {', '.join(usable)}")
        if field not in self.user_fields:
            self.user_fields.append(field)
        return Param(self.user_fields.index(field), field)

    def literal(self, token: Token) -> Any:
        text = token.value
        if token.type in ("STRING_LIT", "MLSTRING_LIT"):
            return str(celstr(token))
        if token.type in ("INT_LIT", "UINT_LIT"):
            digits = text.rstrip("uU")
            return int(digits, 16 if "x" in digits.lower() else 10)
        if token.type == "FLOAT_LIT":
            return float(text)
        if token.type == "BOOL_LIT":
            return text == "true"
        if token.type == "NULL_LIT":
            return None
        raise RowRuleError(f"{token.type.removesuffix('_LIT').lower()} literals cannot be used in a row rule: {text}",
                           SUPPORTED)


def _unknown_name(name: str) -> RowRuleError:
    return RowRuleError(f"unknown name '{name}'", did_you_mean(name, ["record", "user"])
                        or "a rule reads record.<field> and user.<attribute>, and no other names (such as now)")


def _readable(field: Field) -> bool:
    """Fields with one value per record that SQL can compare (not refs, json, multi_enum)."""
    return field.column is not None and "eq" in field.field_type.filter_ops


def _comparable(field: Field) -> Field:
    # min/max limit what may be stored, not what a rule may compare with (amount < 0 is a fine rule)
    return dataclasses.replace(field, min=None, max=None) if field.min is not None or field.max is not None else field


def _user_value(field: Field, value: Any) -> Any:
    if field.type in LIST_TYPES:
        return list(value or ())  # no teams is an empty list
    if value is None:
        return None
    try:
        return field.field_type.parse(_comparable(field), value)
    except FieldValueError:
        return None  # counts as missing, so the rule reaches no row through it


# --- from the checked rule to SQL --------------------------------------------------------------------
def _sql(term, table: sa.Table, prefix: str, negate: bool) -> sa.ColumnElement[bool]:
    """``term`` (or its negation) as SQL. Negation is pushed down to the comparisons, each of which
    knows its own negation; so SQL's NULL never decides an outcome that CEL decides otherwise."""
    if isinstance(term, Not):
        return _sql(term.term, table, prefix, not negate)
    if isinstance(term, Logic):
        parts = (_sql(term.left, table, prefix, negate), _sql(term.right, table, prefix, negate))
        return sa.and_(*parts) if (term.op == "and") != negate else sa.or_(*parts)
    if isinstance(term, Compare):
        return _compare(NEGATED[term.op] if negate else term.op, term.left, term.right, table, prefix)
    return _member(term, table, prefix, negate)


def _value(operand, table: sa.Table, prefix: str) -> Any:
    if isinstance(operand, Column):
        return table.c[operand.field.column]
    if isinstance(operand, Param):
        if operand.is_list:
            return sa.bindparam(f"{prefix}{operand.index}", expanding=True)
        field = operand.field
        return sa.bindparam(f"{prefix}{operand.index}", type_=field.field_type.column_type(field))
    return sa.literal(operand.value)


def _present(operand, expr) -> sa.ColumnElement[bool]:
    # PostgreSQL cannot type a parameter that stands alone; every value converts to text
    return (sa.cast(expr, sa.Text()) if isinstance(operand, Param) else expr).is_not(None)


def _compare(op: str, left, right, table: sa.Table, prefix: str) -> sa.ColumnElement[bool]:
    a = _value(left, table, prefix)
    if isinstance(right, Constant) and right.value is None:
        present = _present(left, a)
        return present if op == "!=" else sa.not_(present)
    b = right.value if isinstance(right, Constant) else _value(right, table, prefix)
    if isinstance(left, Column) and isinstance(right, Column) and op in ("==", "!="):
        return a.is_not_distinct_from(b) if op == "==" else a.is_distinct_from(b)  # CEL: null == null
    if op != "!=" or not isinstance(left, Column):
        return OPERATORS[op](a, b)  # NULL, so no row, when the field is empty or the user value missing
    different = sa.or_(a != b, a.is_(None))  # CEL: null != "x"
    return sa.and_(different, _present(right, b)) if isinstance(right, Param) else different


def _member(term: Member, table: sa.Table, prefix: str, negate: bool) -> sa.ColumnElement[bool]:
    a = _value(term.left, table, prefix)
    if isinstance(term.options, Param):
        values, nulls = _value(term.options, table, prefix), False
    else:
        values = [v for v in term.options.values if v is not None]
        nulls = len(values) < len(term.options.values)
    if not negate:
        return sa.or_(a.in_(values), sa.not_(_present(term.left, a))) if nulls else a.in_(values)
    if nulls or isinstance(term.left, Param):  # a missing user value is neither in a list nor outside it
        return sa.and_(a.not_in(values), _present(term.left, a))
    if isinstance(term.left, Column):
        return sa.or_(a.not_in(values), a.is_(None))  # CEL: null in [...] is false
    return a.not_in(values)
