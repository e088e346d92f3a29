"""Names written in a config: what an identifier may be, which are reserved, and derived names.

Entity and field names become table, column and URL names, so they are snake_case ASCII and
short enough for every database; the text people read goes in ``label:``.
"""

from __future__ import annotations

import re

from .manifest import SYSTEM_FIELDS

__all__ = [
    "IDENTIFIER",
    "MAX_IDENTIFIER",
    "MAX_TABLE_NAME",
    "RESERVED_ENTITY_NAMES",
    "RESERVED_FIELD_NAMES",
    "ROUTE_WORDS",
    "SYSTEM_ENTITY_NAMES",
    "check_identifier",
    "humanize",
    "pluralize",
]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MAX_IDENTIFIER = 48
#: Longest table name PostgreSQL keeps (it silently cuts longer ones).
MAX_TABLE_NAME = 63
#: Entities Loom keeps for its own records.
SYSTEM_ENTITY_NAMES = frozenset({"user", "team", "role", "session", "token", "audit", "webhook"})
#: Entity names Loom keeps: its own entities, and SQL keywords that make poor table names.
RESERVED_ENTITY_NAMES = SYSTEM_ENTITY_NAMES | frozenset(
    {"all", "and", "or", "not", "select", "from", "where", "table", "order", "group", "by", "limit", "offset",
     "join", "union", "check", "column", "constraint", "default", "primary", "foreign", "references", "index",
     "create", "drop", "alter", "grant", "having", "case", "when", "then", "else", "end", "null", "true",
     "false", "schema", "api", "webhooks"}
)
RESERVED_FIELD_NAMES = frozenset(SYSTEM_FIELDS)
#: Path segments under ``/api/<plural>/{id}/`` that Loom uses itself, so no related list may take them.
ROUTE_WORDS = frozenset({"history"})


def check_identifier(name: str, kind: str, reserved: frozenset[str], *, owner: str = "") -> tuple[str, str, str] | None:
    """``(code, message, hint)`` when ``name`` cannot be used as a ``kind`` name, else None.

    ``owner`` (the entity a field belongs to) makes suggestions specific: ``account_owner``.
    """
    word = kind.replace(" ", "_")
    has_label = kind in ("entity", "field")  # other names (plural, index...) have no label of their own
    if not IDENTIFIER.match(name):
        message = (f"{kind} name '{name}' must be snake_case ASCII: lower-case letters, digits and '_', "
                   "starting with a letter")
        if not name.isascii():  # no spelling can be derived from another script
            keep = f", and keep '{name}' in 'label:'" if has_label else ""
            return "E121", message, f"choose an ASCII name, e.g. 'my_{word}'{keep}"
        suggestion = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or f"my_{word}"
        if suggestion[:1].isdigit():
            suggestion = f"{word}_{suggestion}"
        keep = "; put the text people read in 'label:'" if has_label else ""
        return "E121", message, f"try '{suggestion[:MAX_IDENTIFIER]}'{keep}"
    if len(name) > MAX_IDENTIFIER:
        keep = "; put the text people read in 'label:'" if has_label else ""
        return ("E121", f"{kind} name '{name}' has {len(name)} characters; at most {MAX_IDENTIFIER} are allowed",
                f"choose a shorter name{keep}")
    if name.startswith("loom_"):
        return ("E122", f"{kind} name '{name}' is reserved: names starting with 'loom_' are Loom's own",
                f"drop the prefix, e.g. '{name[5:]}'")
    if name in reserved:
        if reserved is RESERVED_FIELD_NAMES:
            why = "every entity has a system field of that name"
        elif name in SYSTEM_ENTITY_NAMES:
            why = "Loom keeps it for its own records"
        else:
            why = "it is an SQL keyword"
        keep = f"; 'label:' can still say '{humanize(name)}'" if has_label else ""
        better = f"{owner}_{name}" if owner else f"crm_{name}"
        return "E122", f"{kind} name '{name}' is reserved: {why}", f"choose another name, e.g. '{better}'{keep}"
    return None


def humanize(name: str) -> str:
    """``annual_revenue`` -> ``Annual revenue``: the default label."""
    return name.replace("_", " ").capitalize()


def pluralize(name: str) -> str:
    """English plural of a snake_case name (its last word): ``activity`` -> ``activities``."""
    if re.search(r"[^aeiou]y$", name):
        return name[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", name):
        return name + "es"
    return name + "s"
