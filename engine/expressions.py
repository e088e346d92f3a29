"""CEL expressions: compiled once when the config compiles, checked against the fields they read,
evaluated by the Rust-backed ``common-expression-language`` (a few microseconds each; never ``eval``).

Variables: ``record`` (the record as it will be stored), ``old`` (the stored record before an update;
on create every ``old.<field>`` is null), ``user`` (id, roles, teams and the user entity's fields),
``now`` (a timestamp, UTC) and ``today`` (``"YYYY-MM-DD"`` in the app's time zone).

Values as CEL sees them: text, enum and email as strings; integers as ints; decimal and money as
doubles; dates as ``"YYYY-MM-DD"`` strings (so ``record.close_date < today`` compares correctly);
datetimes as timestamps; refs as ids, refs and multi_enum as lists; an empty field as ``null``.

Names are checked with cel-python's parser (the Rust package exposes no syntax tree): an unknown
variable or field is a config error with did-you-mean.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel
from celpy.celparser import CELParseError, CELParser
from lark import Token, Tree

from .errors import did_you_mean
from .manifest import Entity

__all__ = ["Expression", "ExpressionError", "all_of", "bind", "compile_expression", "context", "layout", "reads_of", "cel_value",
           "VARIABLES"]

VARIABLES = ("record", "old", "user", "now", "today")
#: Macros bind their first argument as a variable of their own: record.tags.all(t, t != "x").
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
USER_EXTRAS = ("id", "roles", "teams")
RECORDS = ("record", "old", "user")
#: In an expression's ``reads``: the record variables it needs as whole maps (see :func:`_flattened`).
MAPS = "$maps"


class ExpressionError(Exception):
    """An expression Loom cannot use: bad syntax, or a name that does not exist."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Expression:
    """A checked, compiled CEL expression.

    :ivar reads: the variables it reads, each with the fields it reads of them (empty for ``now``).
    :ivar compiled: the text CEL compiled (records read as flat variables, see :func:`_flattened`).
    """

    text: str
    program: Any  # cel.Program
    reads: Mapping[str, frozenset[str]] = field(default_factory=dict)
    compiled: str = ""

    def evaluate(self, variables: Mapping[str, Any] | cel.Context) -> Any:
        """The value; raises whatever CEL raises (the caller turns it into a clear error). Pass a
        ``cel.Context`` (see :func:`context`) to evaluate several expressions over the same values:
        converting the values costs far more than evaluating."""
        return self.program.execute(variables if isinstance(variables, cel.Context) else dict(variables))


def all_of(checks: list[tuple[Expression | None, Expression]]) -> Any:
    """One CEL program giving the verdict of every ``(when, check)`` at once, as a list (``true``
    where ``when`` does not hold): a write that passes all its rules pays one evaluation, not one per
    rule. Errors are not told apart; evaluate the checks one by one to find the culprit."""
    items = [f"(({when.compiled}) == true) ? ({check.compiled}) : true" if when is not None else f"({check.compiled})"
             for when, check in checks]
    return cel.compile("[" + ", ".join(items) + "]")


def reads_of(expressions) -> dict[str, frozenset[str]]:
    """What a set of expressions reads together (to build one context for all of them)."""
    reads: dict[str, set[str]] = {}
    for expression in expressions:
        for name, fields in expression.reads.items():
            reads.setdefault(name, set()).update(fields)
    return {name: frozenset(fields) for name, fields in reads.items()}


def context(reads: Mapping[str, frozenset[str]], values: Mapping[str, Any]) -> cel.Context:
    """A CEL context holding only what ``reads`` names: of ``record``, ``old`` and ``user`` only the
    fields read (``values`` holds them as plain mappings of Python values), converted once, as the
    flat variables ``record__f`` compiled expressions read (and as maps where one needs the map).
    Code that builds contexts for the same ``reads`` over and over works out the :func:`layout` once
    and calls :func:`bind`."""
    return bind(layout(reads), values)


def layout(reads: Mapping[str, frozenset[str]]) -> tuple:
    """How to build a context for ``reads``: per variable, its name, the record fields read with the
    flat variable each becomes (None for ``now``, ``today``), and whether it must also be a map."""
    maps = reads.get(MAPS, ())
    return tuple((name, tuple((f, f"{name}__{f}") for f in sorted(fields)) if name in RECORDS else None, name in maps)
                 for name, fields in reads.items() if name != MAPS)


def bind(plan: tuple, values: Mapping[str, Any]) -> cel.Context:
    """The CEL context :func:`context` describes, from a :func:`layout`."""
    variables: dict[str, Any] = {}
    for name, fields, as_map in plan:
        value = values.get(name)
        if fields is None:
            variables[name] = cel_value(value)
            continue
        value = value or {}
        for f, flat in fields:
            item = value.get(f)
            variables[flat] = item if type(item) in _AS_IS else cel_value(item)
        if as_map:
            variables[name] = {f: variables[flat] for f, flat in fields}
    return cel.Context(variables)


_AS_IS = frozenset({str, int, float, bool, type(None)})


def compile_expression(text: str, entity: Entity, user: Entity) -> Expression:
    """Check ``text`` against ``entity`` (``record.*``, ``old.*``) and ``user`` and compile it."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty", "write a CEL expression, e.g. record.amount > 0")
    try:
        tree = CELParser().parse(text)
    except CELParseError as exc:
        hint = "compare with == (a single = is not an operator)" if re.search(r"(?<![=!<>])=(?!=)", text) \
            else "see https://github.com/google/cel-spec for the syntax"
        raise ExpressionError(f"'{text}' is not valid CEL (syntax error at column {exc.column or 1})", hint) from None
    reads = _check_names(tree, entity, user, _bound_names(tree))
    flat, maps = _flattened(text, tree)
    if maps:
        reads[MAPS] = frozenset(maps)
    try:
        program = cel.compile(flat)
    except ValueError as exc:
        raise ExpressionError(f"'{text}' is not valid CEL: {str(exc).splitlines()[0]}") from None
    return Expression(text, program, reads, flat)


def _flattened(text: str, tree: Tree) -> tuple[str, set[str]]:
    """``text`` with each ``record.f`` (``old.f``, ``user.f``) written as one variable ``record__f``, and
    the record variables that must stay maps (read as a whole, or inside ``has()``). Handing CEL flat
    values instead of maps makes a context about ten times cheaper to build, which is most of the
    cost of evaluating expressions at all."""
    in_has = {id(sub) for node in tree.iter_subtrees() if node.data == "ident_arg" and str(node.children[0]) == "has"
              for sub in node.iter_subtrees() if sub.data == "member_dot"}
    spans, maps, flat_bases = [], set(), set()
    for node in tree.iter_subtrees():
        if node.data != "member_dot":
            continue
        base = _unwrap(node.children[0])
        if not (isinstance(base, Tree) and base.data == "ident" and str(base.children[0]) in RECORDS):
            continue
        root, name = base.children[0], node.children[1]
        if id(node) in in_has:
            maps.add(str(root))
            continue
        flat_bases.add(id(base))
        spans.append((root.start_pos, name.end_pos, f"{root}__{name}"))
    for node in tree.iter_subtrees():
        if node.data == "ident" and str(node.children[0]) in RECORDS and id(node) not in flat_bases:
            maps.add(str(node.children[0]))  # read as a whole
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text, maps


def _bound_names(tree: Tree) -> set[str]:
    bound = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) in MACROS and len(node.children) > 2:
            args = node.children[2]
            first = args.children[0] if isinstance(args, Tree) and args.children else None
            for token in (first.scan_values(lambda v: isinstance(v, Token)) if isinstance(first, Tree) else ()):
                bound.add(str(token))
                break
    return bound


def _check_names(tree: Tree, entity: Entity, user: Entity, bound: set[str]) -> dict[str, frozenset[str]]:
    """Every name must exist; returns what the expression reads (variables, and fields of records).
    A record read as a whole (``size(record)``) reads all its fields."""
    fields = {"record": list(entity.fields), "old": list(entity.fields),
              "user": list(dict.fromkeys([*USER_EXTRAS, *user.fields]))}
    reads: dict[str, set[str]] = {}
    members = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot":
            base = _unwrap(node.children[0])
            if isinstance(base, Tree) and base.data == "ident":
                root, name = str(base.children[0]), str(node.children[1])
                if root in fields and name not in fields[root]:
                    owner = entity.name if root != "user" else "user"
                    raise ExpressionError(f"{owner} has no field '{name}' ({root}.{name})",
                                          did_you_mean(name, fields[root]) or f"its fields: {', '.join(fields[root])}")
                if root in fields:
                    reads.setdefault(root, set()).add(name)
                    members.add(id(base))
    for node in tree.iter_subtrees():
        if node.data == "ident":
            name = str(node.children[0])
            if name not in VARIABLES and name not in bound:
                close = did_you_mean(name, VARIABLES)
                raise ExpressionError(f"unknown name '{name}'", (f"{close[:-1]}, or the text " if close else
                                      f"expressions read {', '.join(VARIABLES)}; for the text ")
                                      + f"'{name}', write it in quotes: \"'{name}'\"")
            if name in VARIABLES and id(node) not in members:  # read as a whole
                reads.setdefault(name, set()).update(fields.get(name, ()))
    return {name: frozenset(names) for name, names in reads.items()}


def _unwrap(node: Any) -> Any:
    while isinstance(node, Tree) and len(node.children) == 1 and isinstance(node.children[0], Tree) \
            and node.data not in ("ident", "member_dot", "member_dot_arg"):
        node = node.children[0]
    return node


def cel_value(value: Any) -> Any:
    """A stored Python value in the form CEL expressions see (see the module docstring)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
