"""Overlays: a company config merged on top of the base config it ``extends:``, without editing it.

Pure functions over parsed files. A :class:`Tree` is plain config data together with its
:class:`Provenance`: for every value, the file and the path in that file it was written at. Errors
found later (by validation or the compiler) ask the provenance, so they point at the file that said it.

How one layer goes on top of another (see :data:`MERGE_RULES`): mappings named there merge key by key,
lists named there are appended to, enum options merge by value, and every other value the overlay
writes replaces the base's. Changing what a base field *is* (its ``type``, a ref's ``to``) or an
entity's ``plural`` is a conflict (E132); taking something out needs an explicit ``remove:`` entry
(E133 when it names nothing the base has), applied before the overlay's own additions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loomcrm.schemas.system import SYSTEM_ENTITIES

from .errors import ConfigError, Location, did_you_mean
from .names import pluralize

if TYPE_CHECKING:
    from .loader import SourceFile

__all__ = ["MERGE_RULES", "Provenance", "Tree", "merge_trees", "remove_paths", "union_of_files", "has_path"]

Path_ = tuple[Any, ...]
Origin = tuple["SourceFile", Path_]

#: How a value of the overlay meets the base's value at the same path (``*``: any name). ``merge``:
#: key by key, recursively; ``append``: items the base does not have already are added after its own;
#: ``options``: by ``value``, a known one relabelled in place, a new one appended. Anything else
#: the overlay writes replaces the base's value as a whole (labels, ``database``, a field's ``max_length``).
MERGE_RULES: dict[Path_, str] = {
    (): "merge",
    ("app",): "merge",
    ("audit",): "merge",
    ("auth",): "merge",
    ("plugins",): "append",
    ("entities",): "merge",
    ("entities", "*"): "merge",
    ("entities", "*", "fields"): "merge",
    ("entities", "*", "fields", "*"): "merge",
    ("entities", "*", "fields", "*", "options"): "options",
    ("entities", "*", "rules"): "merge",
    ("entities", "*", "rules", "*"): "merge",
    ("entities", "*", "indexes"): "append",
    ("entities", "*", "unique_together"): "append",
    ("entities", "*", "list"): "replace",
    ("entities", "*", "layout"): "replace",
    ("entities", "*", "search"): "replace",
    ("roles",): "merge",
    ("roles", "*"): "merge",
    ("roles", "*", "inherits"): "append",
    ("roles", "*", "entities"): "merge",
    ("roles", "*", "entities", "*"): "merge",
    ("roles", "*", "fields"): "merge",
    ("workflows",): "merge",
    ("workflows", "*"): "merge",
    ("workflows", "*", "states"): "merge",
    ("workflows", "*", "states", "*"): "merge",
    ("workflows", "*", "transitions"): "merge",
    ("workflows", "*", "transitions", "*"): "merge",
    ("automations",): "merge",
    ("schedules",): "merge",
    ("webhooks",): "merge",
    ("webhooks", "*"): "merge",
}

#: Top-level sections of named things any config file may hold, with what one of them is called.
NAMED_SECTIONS = (("entities", "entity"), ("roles", "role"), ("workflows", "workflow"),
                  ("automations", "automation"), ("schedules", "schedule"), ("webhooks", "webhook"))

# --- provenance --------------------------------------------------------------------------------------


class Provenance:
    """Where the values of a tree were written: a trie over its paths.

    A node's ``origin`` is ``(file, path in that file)`` of the value at the node's path; a node
    without one, and every path below a node that has no child for it, was written in the same place
    as its parent (copied verbatim), so a file's whole subtree costs one node.
    """

    __slots__ = ("origin", "children")

    def __init__(self, origin: Origin | None = None, children: dict[Any, Provenance] | None = None):
        self.origin = origin
        self.children: dict[Any, Provenance] = children if children is not None else {}

    def origin_of(self, path: Path_) -> Origin:
        """The file and the path in it where the value at ``path`` was written."""
        node, best, depth = self, self.origin, 0
        for i, part in enumerate(path):
            node = node.children.get(part)
            if node is None:
                break
            if node.origin is not None:
                best, depth = node.origin, i + 1
        assert best is not None, "a provenance root always has an origin"
        source, at = best
        return source, (*at, *path[depth:])

    def where(self, path: Path_ = (), *, key: bool = False) -> Location:
        """``file:line:col`` of the value at ``path`` (or of its key), as :meth:`SourceFile.where`."""
        source, at = self.origin_of(tuple(path))
        return source.where(at, key=key)

    def at(self, path: Path_) -> Provenance:
        """The provenance of the subtree at ``path``, standing alone (its origin resolved)."""
        node: Provenance | None = self
        for part in path:
            node = node.children.get(part) if node is not None else None
        return Provenance(self.origin_of(tuple(path)), dict(node.children) if node is not None else {})


@dataclass(frozen=True)
class Tree:
    """Config data and where each value of it was written (duck-types a SourceFile for validation)."""

    data: Any
    provenance: Provenance

    def where(self, path: Path_ = (), *, key: bool = False) -> Location:
        return self.provenance.where(path, key=key)


def has_path(data: Any, path: Path_) -> bool:
    """True when ``path`` leads to a value in ``data`` (mappings only)."""
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


# --- one layer: a project file and the files it includes ------------------------------------------------


def union_of_files(project: SourceFile, included: list[SourceFile], errors: list[ConfigError]) -> Tree:
    """The project file's keys, and the named things (:data:`NAMED_SECTIONS`) of every file; a name
    twice is E123. Included files contribute only those (validation reports anything else).
    """
    data = dict(project.data) if isinstance(project.data, dict) else {}
    root = Provenance((project, ()))
    for key, kind in NAMED_SECTIONS:
        items: dict[str, Any] = {}
        node = root.children[key] = Provenance()
        for source in (project, *included):
            written = source.data.get(key) if isinstance(source.data, dict) else None
            if not isinstance(written, dict):
                continue
            for name, item in written.items():
                if name in items:
                    first = node.children[name].where(key=True)
                    errors.append(ConfigError(source.where((key, name), key=True), "E123",
                                              f"{kind} '{name}' is defined twice (first at {first})",
                                              "rename one of them, or merge them into one definition"))
                    continue
                items[name] = item
                node.children[name] = Provenance((source, (key, name)))
        if items or key in data:
            data[key] = items
    return Tree(data, root)


# --- remove: -------------------------------------------------------------------------------------------

REMOVE_FORMS = ("entities.<entity>", "entities.<entity>.fields.<field>", "entities.<entity>.rules.<rule>",
                "entities.<entity>.fields.<field>.options.<value>", "roles.<role>",
                "roles.<role>.entities.<entity>", "roles.<role>.fields.<entity>.<field>", "workflows.<workflow>",
                "workflows.<workflow>.transitions.<transition>", "workflows.<workflow>.states.<state>",
                "automations.<automation>", "schedules.<schedule>", "webhooks.<webhook>")


def remove_paths(base: Tree, project: SourceFile, errors: list[ConfigError]) -> Tree:
    """The base without what the overlay's ``remove:`` names (E133 for entries that name nothing)."""
    entries = project.data.get("remove") if isinstance(project.data, dict) else None
    if not isinstance(entries, list):
        return base
    data, prov = base.data, base.provenance
    done: dict[str, int] = {}
    for i, text in enumerate(entries):
        if not isinstance(text, str):
            continue  # validation says what a remove: entry must be
        where = project.where(("remove", i))
        if text in done:
            errors.append(ConfigError(where, "E133", f"'{text}' is listed twice in 'remove' (first at item "
                                      f"{done[text] + 1})", "list each once"))
            continue
        done[text] = i
        path = _removal_path(text)
        if path is None:
            errors.append(ConfigError(where, "E133", f"'remove' cannot take '{text}'",
                                      f"write one of: {', '.join(REMOVE_FORMS)}"))
            continue
        problem = _missing(data, path)
        if problem:
            message, hint = problem
            errors.append(ConfigError(where, "E133", f"cannot remove '{text}': {message}", hint))
            continue
        data, prov = _without(data, prov, path)
    return Tree(data, prov)


def _removal_path(text: str) -> Path_ | None:
    """``entities.account.fields.rating.options.cold`` -> the path in the tree (an option as ``("=", value)``)."""
    parts = text.split(".")
    if len(parts) < 2 or not all(parts):
        return None
    if parts[0] == "entities":
        if len(parts) == 2:
            return tuple(parts)
        if len(parts) == 4 and parts[2] in ("fields", "rules"):
            return tuple(parts)
        if len(parts) >= 6 and parts[2] == "fields" and parts[4] == "options":
            return (*parts[:5], ("=", ".".join(parts[5:])))
    elif parts[0] == "roles":
        if len(parts) == 2 or len(parts) == 4 and parts[2] == "entities":
            return tuple(parts)
        if len(parts) == 5 and parts[2] == "fields":
            return (*parts[:3], ".".join(parts[3:]))
    elif parts[0] == "workflows":
        if len(parts) == 2 or len(parts) == 4 and parts[2] in ("transitions", "states"):
            return tuple(parts)
    elif parts[0] in ("automations", "schedules", "webhooks") and len(parts) == 2:
        return tuple(parts)
    return None


def _dotted(path: Path_) -> str:
    return ".".join(p[1] if isinstance(p, tuple) else str(p) for p in path)


def _missing(data: Any, path: Path_) -> tuple[str, str | None] | None:
    """Why ``path`` names nothing in the base, with a did-you-mean for the name that went wrong."""
    node = data
    for depth, part in enumerate(path):
        if isinstance(part, tuple):  # an enum option, by value
            values = [v for v in map(option_value, node if isinstance(node, list) else []) if v is not None]
            if part[1] in values:
                return None
            field = f"{path[1]}.{path[3]}"
            if not values:
                return f"field '{field}' has no options", "only enum and multi_enum fields have options"
            return f"field '{field}' has no option '{part[1]}'", _suggest(path, depth, part[1], values)
        known = node if isinstance(node, dict) else {}
        if part not in known:
            hint = (_suggest(path, depth, part, known) if depth in (1, 3)
                    else "only enum and multi_enum fields have options" if depth == 4 else None)
            return _what_is_missing(path, depth), hint
        node = known[part]
    return None


def _what_is_missing(path: Path_, depth: int) -> str:
    kind, name = path[0], path[1]
    if depth <= 1:
        return f"the base has no {dict(NAMED_SECTIONS)[kind]} '{name}'"
    if kind == "workflows":
        return f"workflow '{name}' has no {path[2][:-1]} '{path[3]}'"
    if kind == "entities":
        if depth <= 3:
            return f"entity '{name}' has no {'rule' if path[2] == 'rules' else 'field'} '{path[3]}'"
        return f"field '{name}.{path[3]}' has no options"
    if path[2] == "entities":
        return f"role '{name}' has no grant for '{path[3]}'"
    return f"role '{name}' sets no level for '{path[3]}'"


def _suggest(path: Path_, depth: int, word: str, candidates) -> str:
    names = [str(c) for c in candidates]
    close = did_you_mean(str(word), names)
    if close is None:
        return f"the base has: {', '.join(sorted(names))}" if 0 < len(names) <= 12 else \
            "`loom explain-config` shows what the base defines"
    fixed = close.split("'")[1]
    return f"did you mean '{_dotted((*path[:depth], fixed, *path[depth + 1:]))}'?"


def _without(data: Any, prov: Provenance, path: Path_) -> tuple[Any, Provenance]:
    """``data`` without the value at ``path``: copies along the path, shares the rest."""
    head, rest = path[0], path[1:]
    if isinstance(head, tuple):  # an enum option: a list item, found by value
        keep = [i for i, item in enumerate(data) if option_value(item) != head[1]]
        node = Provenance(prov.origin_of(()), {j: prov.at((i,)) for j, i in enumerate(keep)})
        return [data[i] for i in keep], node
    node = Provenance(prov.origin_of(()), dict(prov.children))
    copied = dict(data)
    if not rest:
        del copied[head]
        node.children.pop(head, None)
    else:
        copied[head], node.children[head] = _without(data[head], prov.at((head,)), rest)
    return copied, node


# --- merging a layer on top of its base -------------------------------------------------------------------


def merge_trees(base: Tree, top: Tree, errors: list[ConfigError]) -> Tree:
    """``top`` merged on top of ``base`` by :data:`MERGE_RULES`; conflicts are E132 naming both places."""
    data, prov = _merge((), base.data, base.provenance, top.data, top.provenance, errors)
    prov.origin = top.provenance.origin_of(())  # the overlay's project file speaks for the whole
    return Tree(data, prov)


def rule_for(path: Path_) -> str:
    pattern = tuple("*" if i in (1, 3) and len(path) > i and path[0] in dict(NAMED_SECTIONS) else p
                    for i, p in enumerate(path))
    return MERGE_RULES.get(pattern, "replace")


def _merge(path: Path_, base: Any, bprov: Provenance, top: Any, tprov: Provenance,
           errors: list[ConfigError]) -> tuple[Any, Provenance]:
    rule = rule_for(path)
    if rule == "merge" and isinstance(base, dict) and isinstance(top, dict):
        _check_conflicts(path, base, bprov, top, tprov, errors)
        merged = dict(base)
        # every base key gets its own node, so that the node's origin may change (see merge_trees)
        node = Provenance(bprov.origin_of(()), {key: bprov.at((key,)) for key in base})
        for key, value in top.items():
            if key in base:
                merged[key], node.children[key] = _merge((*path, key), base[key], bprov.at((key,)),
                                                         value, tprov.at((key,)), errors)
            else:
                merged[key], node.children[key] = value, tprov.at((key,))
        return merged, node
    if rule in ("append", "options") and isinstance(base, list) and isinstance(top, list):
        items = list(base)
        children = {i: bprov.at((i,)) for i in range(len(base))}
        by_value = {option_value(item): i for i, item in enumerate(base)} if rule == "options" else {}
        for j, item in enumerate(top):
            if rule == "options" and option_value(item) in by_value:
                i = by_value[option_value(item)]
                if isinstance(item, dict) and set(item) - {"value"}:  # relabelled, in its place
                    items[i], children[i] = item, tprov.at((j,))
                continue
            if rule == "append" and item in items:
                continue
            children[len(items)] = tprov.at((j,))
            items.append(item)
        return items, Provenance(bprov.origin_of(()), children)
    return top, tprov


def option_value(item: Any) -> Any:
    """The value of an enum option as written: ``won`` or ``{value: won, label: ...}``."""
    return item.get("value") if isinstance(item, dict) else item if isinstance(item, str) else None


def _check_conflicts(path: Path_, base: dict, bprov: Provenance, top: dict, tprov: Provenance,
                     errors: list[ConfigError]) -> None:
    """What an overlay may not change: a field's type and target, an entity's plural."""
    if len(path) == 4 and path[0] == "entities" and path[2] == "fields":
        name = f"{path[1]}.{path[3]}"
        fix = (f"add a new field instead, or remove the base field with remove: [entities.{path[1]}.fields."
               f"{path[3]}] and define it again")
        kind, new_kind = base.get("type"), top.get("type")
        if isinstance(kind, str) and isinstance(new_kind, str) and kind != new_kind:
            errors.append(ConfigError(tprov.where(("type",)), "E132",
                                      f"field '{name}' is {_a(kind)} in {bprov.where(('type',))} and cannot "
                                      f"become {_a(new_kind)} here", fix))
        target, new_target = base.get("to"), top.get("to")
        if isinstance(target, str) and isinstance(new_target, str) and target != new_target:
            errors.append(ConfigError(tprov.where(("to",)), "E132",
                                      f"field '{name}' refers to '{target}' in {bprov.where(('to',))} and "
                                      f"cannot refer to '{new_target}' here", fix))
    elif len(path) == 2 and path[0] == "entities":
        plural, new_plural = _plural(path[1], base), top.get("plural")
        if isinstance(new_plural, str) and new_plural != plural:
            at = bprov.where(("plural",)) if "plural" in base else bprov.where(key=True)
            errors.append(ConfigError(tprov.where(("plural",)), "E132",
                                      f"entity '{path[1]}' has the plural '{plural}' in {at} and cannot change it "
                                      "here", f"the plural is the entity's URL (/api/{plural}); keep it, or remove "
                                      f"the entity with remove: [entities.{path[1]}] and define it again"))
    elif path == ("entities",):
        taken = {_plural(name, spec): name for name, spec in base.items()}
        for name, spec in top.items():
            other = taken.get(_plural(name, spec))
            if name in base or name in SYSTEM_ENTITIES or other is None:
                continue
            explicit = isinstance(spec, dict) and "plural" in spec
            written = isinstance(base[other], dict) and "plural" in base[other]
            at = bprov.where((other, "plural")) if written else bprov.where((other,), key=True)
            errors.append(ConfigError(tprov.where((name, "plural") if explicit else (name,), key=not explicit),
                                      "E132", f"entity '{name}' has the plural '{_plural(name, spec)}', which "
                                      f"entity '{other}' uses in {at}", f"set a different 'plural:' on '{name}'"))
        _check_new_entities(base, bprov, top, tprov, errors)


def _check_new_entities(base: dict, bprov: Provenance, top: dict, tprov: Provenance, errors) -> None:
    """A new entity with no fields whose name is close to a base entity's is a misspelt override."""
    for name, spec in top.items():
        if name in base or name in SYSTEM_ENTITIES or not isinstance(spec, dict) or "fields" in spec:
            continue
        close = did_you_mean(name, base)
        if close:
            errors.append(ConfigError(tprov.where((name,), key=True), "E124",
                                      f"entity '{name}' is not in the base config, and has no fields of its own",
                                      f"{close} (a new entity needs 'fields:')"))


def _plural(name: str, spec: Any) -> str:
    plural = spec.get("plural") if isinstance(spec, dict) else None
    return plural if isinstance(plural, str) else pluralize(name)


def _a(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeio' else 'a'} {kind}"
