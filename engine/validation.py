"""Validate parsed config files against the spec models, with errors a person can act on.

pydantic reports *where* in the data a value failed; this module turns that into ``file:line:col``,
picks the one union member a value was meant as (``label: [a, b]`` gives one message, not one per
member), and phrases each problem with what to write instead.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from loomcrm.schemas import ConfigFileSpec
from loomcrm.schemas.project import PROJECT_ONLY_KEYS

from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from .loader import SourceFile
    from .overlays import Tree

__all__ = ["validate_file", "validate_tree", "located_errors", "describe_path"]

Path_ = tuple[Any, ...]


def validate_file(source: SourceFile, errors: list[ConfigError], *, is_project: bool,
                  provided: Callable[[Path_], bool] | None = None) -> ConfigFileSpec | None:
    """Validate one parsed file against ConfigFileSpec, turning pydantic errors into located ones.

    A file of an overlay may name base things partially (``phone: {label: Tel}``, without ``type``):
    a required key missing at a path where ``provided(path)`` is true comes from the base, and is no
    error. Such a file gives no spec of its own (None); its values are validated merged.
    """
    if source.data is None:
        return None
    if not isinstance(source.data, dict):
        errors.append(
            ConfigError(
                source.where(()),
                "E112",
                "a config file must be a mapping of keys",
                "start with 'app:'" if is_project else "start with 'entities:'",
            )
        )
        return None
    ok = True
    misplaced: set[str] = set()
    if not is_project:
        for key in PROJECT_ONLY_KEYS:
            if key in source.data:
                ok = False
                misplaced.add(key)
                errors.append(
                    ConfigError(
                        source.where((key,), key=True),
                        "E113",
                        f"'{key}' is only allowed in loom.yaml",
                        f"move '{key}:' to loom.yaml; included files may hold 'entities:'",
                    )
                )
    elif source.data.get("app") is None and ("app" in source.data or "extends" not in source.data):
        ok = False
        errors.append(
            ConfigError(
                source.where(("app",), key=True),
                "E111",
                "missing required key 'app'" if "app" not in source.data else "missing required key 'name' in 'app'",
                "add 'app: {name: My CRM}'",
            )
        )
    try:
        spec = ConfigFileSpec.model_validate(source.data)
    except ValidationError as exc:
        # inside a misplaced project-only key, E113 already says what to do
        errors.extend(located_errors(exc, source, skip=misplaced, provided=provided))
        return None
    return spec if ok else None


def validate_tree(tree: Tree, errors: list[ConfigError]) -> ConfigFileSpec | None:
    """Validate a merged config (:class:`~.overlays.Tree`); each error points at the file that said it."""
    try:
        return ConfigFileSpec.model_validate(tree.data)
    except ValidationError as exc:
        errors.extend(located_errors(exc, tree))
        return None


@dataclass(frozen=True)
class _Issue:
    """One pydantic error, placed in the data: ``path`` exists in it (or ends at a missing key).

    ``unions`` lists ``(depth, member)`` for each union the error passed through, outermost first:
    pydantic tries every member of ``label: str | dict[str, str]`` and reports each failure.
    """

    path: Path_
    unions: tuple[tuple[int, str], ...]
    type: str
    input: Any
    ctx: dict[str, Any]
    msg: str = ""
    members: tuple[str, ...] = ()


def located_errors(exc: ValidationError, source: SourceFile, *, skip: Iterable[str] = (),
                   provided: Callable[[Path_], bool] | None = None) -> list[ConfigError]:
    """pydantic's errors as ConfigErrors with file:line:col, one per problem a person must fix.

    Errors under the top-level keys in ``skip`` are left out, and so are missing keys that
    ``provided`` says the base config has (see :func:`validate_file`).
    """
    issues = _resolve_unions([_issue(source.data, err) for err in exc.errors()])
    return [_config_error(source, i) for i in issues if not (i.path and i.path[0] in set(skip))
            and not (provided and i.type == "missing" and _by_name(i.path) and provided(i.path))]


def _by_name(path: Path_) -> bool:
    """True for paths of mapping keys only: list items of an overlay are its own, never the base's."""
    return not any(isinstance(part, int) for part in path)


def _issue(data: Any, err: dict) -> _Issue:
    path: list[Any] = []
    unions: list[tuple[int, str]] = []
    node = data
    for part in err["loc"]:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(part, str) and path_is_tag(part):
            unions.append((len(path), part))
        else:
            path.append(part)  # a missing or unknown key
            break
    return _Issue(tuple(path), tuple(unions), err["type"], err.get("input"), err.get("ctx") or {}, err["msg"])


def path_is_tag(part: str) -> bool:
    # pydantic names union members in loc: 'str', 'dict[str,str]', 'OptionSpec', 'function-after[...]'
    return part[:1].isupper() or "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


def _resolve_unions(issues: list[_Issue]) -> list[_Issue]:
    """Keep the errors of the union member the value was meant as, or one error for the value.

    A member whose errors lie *inside* the value matched its shape (``{value: won, lable: x}`` is
    an option mapping with a misspelt key): report only those. When every member failed on the
    value itself (``label: [a, b]``), report one ``union`` issue listing what was expected.
    """
    result: list[_Issue] = []
    sites: dict[Path_, dict[str, list[_Issue]]] = {}
    for issue in issues:
        if not issue.unions:
            result.append(issue)
            continue
        depth, member = issue.unions[0]
        sites.setdefault(issue.path[:depth], {}).setdefault(member, []).append(issue)
    for site, members in sites.items():
        inside = [m for m, group in members.items() if any(len(i.path) > len(site) for i in group)]
        if inside:
            chosen = min(inside, key=lambda m: len(members[m]))
            result += _resolve_unions([replace(i, unions=i.unions[1:]) for i in members[chosen]])
        else:
            first = next(iter(members.values()))[0]
            result.append(_Issue(site, (), "union", first.input, {}, members=tuple(members)))
    return result


def _config_error(source: SourceFile, issue: _Issue) -> ConfigError:
    path = issue.path
    if issue.type == "extra_forbidden":
        key, parent = path[-1], path[:-1]
        known = _known_keys(parent)
        return ConfigError(
            source.where(path, key=True),
            "E110",
            f"unknown key '{key}'{_in(parent)}",
            did_you_mean(str(key), known) or (f"allowed keys: {', '.join(sorted(known))}" if known else None),
        )
    if issue.type == "missing":
        key, parent = path[-1], path[:-1]
        return ConfigError(
            source.where(parent, key=True),
            "E111",
            f"missing required key '{key}'{_in(parent)}",
            f"add '{key}:', e.g. {key}: {MISSING_EXAMPLES.get(str(key), '...')}",
        )
    problem, hint = _problem(issue)
    return ConfigError(source.where(path), "E112", f"{describe_path(path)} {problem} (got {_shown(issue.input)})", hint)


#: What to write for a missing key, in hints.
MISSING_EXAMPLES = {"type": "string", "name": "My CRM", "value": "won", "fields": "[name]"}
#: How a person would name what a union member accepts.
MEMBER_NAMES = {"str": "text", "int": "a number", "float": "a number", "bool": "true or false",
                "dict[str,str]": "one text per locale"}
LABEL_KEYS = ("label", "help", "plural_label")
TYPE_PHRASES = {
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "text",
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "list_type": "a list",
    "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}


def _problem(issue: _Issue) -> tuple[str, str | None]:
    """``must be ...`` and a hint for an E112 issue."""
    path, value, ctx = issue.path, issue.input, issue.ctx
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    scalar = isinstance(value, int | float) and not isinstance(value, bool)
    if issue.type == "union":
        hint = None
        if path[-2:-1] == ("options",):
            expected = "an option value (text) or a mapping with 'value' and 'label'"
            hint = "e.g. '- won' or '- {value: won, label: {en: Won, zh: 赢单}}'"
        elif key in LABEL_KEYS and path[-1] == key:
            expected = "text or one text per locale"
            hint = f"e.g. '{key}: Account' or '{key}: {{en: Account, zh: 客户}}'"
        elif key in ("min", "max"):
            expected = "a number or a date"
            hint = f"e.g. '{key}: 0' or '{key}: 2024-01-01'"
        else:
            names = list(dict.fromkeys(MEMBER_NAMES.get(m, "a mapping of keys") for m in issue.members))
            expected = " or ".join(names)
        if scalar and "str" in issue.members:
            hint = f"put it in quotes to use it as text: '{value}'"
        return f"must be {expected}", hint
    if issue.type in TYPE_PHRASES:
        expected = TYPE_PHRASES[issue.type]
        hint = None
        if issue.type == "string_type" and (scalar or isinstance(value, bool)):
            hint = f"put it in quotes to use it as text: '{_shown(value)}'"
        elif issue.type == "list_type" and isinstance(value, str):
            hint = f"write a list: [{value}]"
        elif expected == "a mapping of keys" and path[:1] == ("entities",):
            if len(path) == 2:
                hint = f"write it as '{path[1]}: {{fields: {{name: {{type: string}}}}}}'"
            elif len(path) == 4 and path[2] == "fields":
                example = f"{{type: {value}}}" if isinstance(value, str) and value else "{type: string}"
                hint = f"write it as '{path[3]}: {example}'"
            elif path[2:3] == ("indexes",) and len(path) == 4:
                shown = ", ".join(map(str, value)) if isinstance(value, list) else "name"
                hint = f"write it as '- {{fields: [{shown}]}}'"
        return f"must be {expected}", hint
    if issue.type in ("greater_than_equal", "less_than_equal"):
        bound = "at least" if issue.type == "greater_than_equal" else "at most"
        return f"must be {bound} {ctx.get('ge', ctx.get('le'))}", None
    if issue.type in ("greater_than", "less_than"):
        bound = "greater than" if issue.type == "greater_than" else "less than"
        return f"must be {bound} {ctx.get('gt', ctx.get('lt'))}", None
    if issue.type == "too_short":
        least = ctx.get("min_length", 1)
        return ("must not be empty" if least == 1 else f"must have at least {least} items"), None
    if issue.type == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else None
        return f"must be one of {', '.join(choices)}", hint
    return f"is invalid: {issue.msg[:1].lower()}{issue.msg[1:]}", None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return str(value)


def describe_path(path: Path_) -> str:
    """The value at ``path`` as a person would name it: ``'required' of field 'account.name'``."""
    if not path:
        return "the file"
    if path[0] == "entities" and len(path) >= 2:
        if len(path) >= 4 and path[2] == "fields":
            owner, rest = f"field '{path[1]}.{path[3]}'", path[4:]
        else:
            owner, rest = f"entity '{path[1]}'", path[2:]
        return f"'{_dotted(rest)}' of {owner}" if rest else owner
    return f"'{_dotted(path)}'"


def _in(parent: Path_) -> str:
    return f" in {describe_path(parent)}" if parent else ""


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
def _known_keys(path: Path_) -> list[str]:
    """The keys the spec model at ``path`` accepts (walks ConfigFileSpec's annotations)."""
    annotation: Any = ConfigFileSpec
    for part in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            f = annotation.model_fields.get(str(part))
            if f is None:
                return []
            annotation = f.annotation
        else:
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
            if origin is dict and args:
                annotation = args[1]
            elif origin is list and args:
                annotation = args[0]
            else:
                return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X; a union of several models -> the first model."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
        non_none = [a for a in typing.get_args(annotation) if a is not type(None)]
        return non_none[0] if len(non_none) == 1 else annotation
    return annotation
