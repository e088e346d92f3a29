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
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel
from celpy.celparser import CELParseError, CELParser
from lark import Token, Tree

from .errors import did_you_mean
from .manifest import Entity

__all__ = ["Binding", "Expression", "ExpressionError", "all_of", "compile_expression", "context", "layout", "reads_of",
           "cel_value", "VARIABLES"]

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


def all_of(checks: list[tuple[Expression | None, Expression]], values: list[Expression] = ()) -> Any:
    """One CEL program giving, as a list, the value of each of ``values`` (computed fields), then one
    verdict: whether every ``(when, check)`` holds (``when`` false: it holds). A write that passes
    all its rules pays one evaluation, not one per rule. Anything but ``true`` (a rule that fails,
    one that cannot be evaluated) means: evaluate them one by one to say which and why."""
    verdicts = [f"((({when.compiled}) == true) ? ({check.compiled}) : true)" if when is not None
                else f"({check.compiled})" for when, check in checks]
    return cel.compile("[" + ", ".join([*(f"({v.compiled})" for v in values), " && ".join(verdicts) or "true"]) + "]")


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
    Code that builds contexts for the same ``reads`` over and over uses a :class:`Binding`."""
    return cel.Context({name: _cel(value) for name, value in _values(layout(reads), values)})


def layout(reads: Mapping[str, frozenset[str]]) -> tuple[tuple[str, str, str | None, tuple[str, ...] | None], ...]:
    """The variables of a context for ``reads``, each as ``(variable, what it comes from, the field
    it is of that or None, the fields of a map or None)``: ``("record__amount", "record", "amount",
    None)``, ``("now", "now", None, None)``, ``("record", "record", None, ("amount", ...))`` for a
    record an expression reads as a whole."""
    maps = reads.get(MAPS, ())
    slots = []
    for name, fields in reads.items():
        if name == MAPS:
            continue
        if name not in RECORDS:
            slots.append((name, name, None, None))
            continue
        slots += [(f"{name}__{f}", name, f, None) for f in sorted(fields)]
        if name in maps:
            slots.append((name, name, None, tuple(sorted(fields))))
    return tuple(slots)


def _values(slots: tuple, values: Mapping[str, Any]):
    """``(variable, Python value)`` for each of a :func:`layout`'s variables."""
    for name, source, field_name, map_fields in slots:
        value = values.get(source)
        if field_name is not None:
            value = value.get(field_name) if value else None
        elif map_fields is not None:
            value = {f: _cel(value.get(f) if value else None) for f in map_fields}
        yield name, value


def _cel(value: Any) -> Any:
    return value if type(value) in _AS_IS else cel_value(value)


class Binding:
    """The CEL contexts of one set of expressions, built over and over (an entity's rules, on every
    write): each thread keeps one context and changes only the variables whose values changed since
    it last bound them. Converting a value for CEL costs more than evaluating an expression, and
    from one write of an entity to the next most values repeat (a stage, a currency, a date, the user).

    A context returned holds these values until the thread binds again: use it before then.
    """

    def __init__(self, reads: Mapping[str, frozenset[str]]):
        self.reads = reads
        self._layout = layout(reads)
        self._local = threading.local()

    def __call__(self, values: Mapping[str, Any]) -> cel.Context:
        local = self._local
        last = getattr(local, "last", None)  # per variable, the Python value the context holds
        if last is None:
            current = list(_values(self._layout, values))
            local.context = cel.Context({name: _cel(value) for name, value in current})
            local.last = [value for _, value in current]
            return local.context
        context = local.context
        for i, (name, source, field_name, map_fields) in enumerate(self._layout):  # _values, inlined: hot
            value = values.get(source)
            if field_name is not None:
                value = value.get(field_name) if value else None
            elif map_fields is not None:
                value = {f: _cel(value.get(f) if value else None) for f in map_fields}
            previous, kind = last[i], type(value)
            if kind is not type(previous) or kind not in _COMPARED or value != previous or \
                    (kind is float or kind is decimal.Decimal) and not value:
                context.add_variable(name, value if kind in _AS_IS else cel_value(value))  # refused: unchanged
                last[i] = value
        return context


#: Types whose equal values CEL sees alike, so an equal value is not converted again (``1``, ``1.0``
#: and ``True`` are equal in Python but not in CEL: the types must match too). A zero decimal or
#: double is always converted (``0.0`` and ``-0.0`` are equal; CEL tells them apart); lists, maps
#: and timestamps are always converted: comparing them costs about what converting does.
_COMPARED = frozenset({str, int, float, bool, type(None), decimal.Decimal, dt.date})


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
