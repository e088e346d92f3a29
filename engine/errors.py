"""Errors a person can act on: config errors with a place, a code and a hint; API problems.

Config error codes:

====  ===========================================================================
E100  YAML syntax error
E101  duplicate key in a mapping
E102  include pattern matched no file / file not found (also a base config named by extends:)
E110  unknown key (or a label locale the app does not have)
E111  missing required key
E112  value of the wrong type or out of range
E113  key only allowed in the project file
E120  unknown field type
E121  identifier is not snake_case ASCII / too long (also a derived table name)
E122  reserved identifier
E123  name defined or listed twice, or clashing with another
E124  reference to an entity that does not exist
E125  reference to a field that does not exist
E126  option does not apply to this field type
E127  invalid default value
E128  invalid enum options
E129  contradictory options; roles that inherit, or configs that extend, in a circle
E130  plugin could not be loaded
E131  row rule (`where:`) Loom cannot check or run in SQL
E132  overlay conflict: a base field's type or ref target, or an entity's plural, changed or clashing
E133  bad `remove:` entry: names nothing in the base config, or not a thing remove: can take
E134  a plugin's own check of the config (``loom_check_config``) failed
E135  expression (CEL) with bad syntax or an unknown name
E140  webhook Loom cannot send: not an http(s) URL, an event of no entity (or a typo of a known event),
      ``where`` over the events of several entities, ``secret_env`` that is not a variable name
E145  rollup Loom cannot compute (``of``, ``op``, ``field``, ``where``, the field's type, a circle)
E146  ``renamed_from:`` that cannot be a rename: the field or entity itself, a current field or entity, not a
      name, used twice
E147  ``map:`` of an enum field that cannot apply: a key still an option, a value not an option, null on a
      required field
E148  ``list:``, ``layout:`` or ``search:`` naming no field of the entity, a field in two sections, a search
      field that is not text
====  ===========================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ConfigError", "ConfigErrors", "Location", "did_you_mean", "Problem"]


@dataclass(frozen=True, order=True)
class Location:
    """Where something was written: file, 1-based line and column."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file


@dataclass(frozen=True)
class ConfigError:
    location: Location
    code: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.location} {self.code} {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigErrors(Exception):
    """All the errors found in a config, sorted by place. Raised once, after collecting them all."""

    def __init__(self, errors: Iterable[ConfigError]):
        self.errors = sorted(set(errors), key=lambda e: (e.location, e.code, e.message))
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.errors)
        lines = [str(e) for e in self.errors]
        lines.append(f"{count} error{'s' if count != 1 else ''} in the config.")
        return "\n".join(lines)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Return ``did you mean 'x'?`` for the closest candidate, or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


@dataclass
class Problem(Exception):
    """An API error, rendered as RFC 9457 problem+json.

    ``errors`` lists ``{"field": "body.name", "code": "max_length", "message": "..."}`` items.
    """

    status: int
    title: str
    detail: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail or self.title)

    def __str__(self) -> str:
        items = "; ".join(f"{e.get('field') or '(body)'}: {e.get('message')}" for e in self.errors or ())
        return f"{self.status} {self.detail or self.title}" + (f" ({items})" if items else "")

    def to_json(self) -> dict:
        body: dict = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors
        return body
