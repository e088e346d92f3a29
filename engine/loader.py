"""Read YAML config files into spec models, keeping where every key and value was written.

``load_config(path)`` reads ``loom.yaml`` and the files it includes, validates each against
:class:`~loomcrm.schemas.ConfigFileSpec` (see :mod:`.validation`) and returns a :class:`LoadedConfig`.
Every error carries ``file:line:col``; all of them are collected and raised together as
:class:`ConfigErrors`.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from loomcrm.schemas import ConfigFileSpec, EntitySpec
from loomcrm.schemas.security import RoleSpec

from .errors import ConfigError, ConfigErrors, Location, did_you_mean
from .validation import validate_file

__all__ = ["LoadedConfig", "SourceFile", "load_config", "load_config_text", "find_project_file"]

PROJECT_FILE = "loom.yaml"
Path_ = tuple[Any, ...]


@dataclass
class SourceFile:
    """One parsed YAML file: plain data plus the position of every key and value."""

    name: str  # as shown in messages: relative to the project directory
    data: Any
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    value_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> Location:
        """Location of the value at ``path`` (or its key), falling back to the nearest ancestor."""
        path = tuple(path)
        while True:
            marks = self.key_marks if key else self.value_marks
            if path in marks:
                line, col = marks[path]
                return Location(self.name, line, col)
            if not path:
                return Location(self.name, 1, 1)
            path = path[:-1]
            key = True  # an ancestor is best pointed at by its key


@dataclass
class LoadedConfig:
    """The validated project: merged spec plus where each entity came from."""

    project_dir: Path
    project: ConfigFileSpec
    entities: dict[str, EntitySpec]
    entity_sources: dict[str, SourceFile]
    project_source: SourceFile
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    role_sources: dict[str, SourceFile] = field(default_factory=dict)

    def where_role(self, role: str, *path: Any, key: bool = False) -> Location:
        """Location of ``roles.<role>.<path...>``."""
        return self.role_sources.get(role, self.project_source).where(("roles", role, *path), key=key)

    def where(self, entity: str, *path: Any, key: bool = False) -> Location:
        """Location of ``entities.<entity>.<path...>`` in whichever file defined the entity."""
        source = self.entity_sources.get(entity, self.project_source)
        return source.where(("entities", entity, *path), key=key)


def find_project_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / PROJECT_FILE if p.is_dir() else p


def load_config(path: str | os.PathLike) -> LoadedConfig:
    """Load ``loom.yaml`` (or the ``loom.yaml`` inside directory ``path``) and everything it includes."""
    project_file = find_project_file(path).resolve()
    project_dir = project_file.parent
    if not project_file.is_file():
        raise ConfigErrors(
            [
                ConfigError(
                    Location(str(path)),
                    "E102",
                    "project file not found",
                    f"create {PROJECT_FILE} there, or pass the path of the directory that holds it",
                )
            ]
        )
    texts = {PROJECT_FILE: project_file.read_text(encoding="utf-8")}
    return _load(project_dir, project_file.name, texts, _DirectoryFiles(project_dir))


def load_config_text(files: dict[str, str], project_dir: str | os.PathLike = ".") -> LoadedConfig:
    """Load a config from in-memory texts, ``{"loom.yaml": ..., "entities/a.yaml": ...}`` (for tests).

    Include patterns match the names as they would match files on disk (``*`` stays within one
    directory, ``**`` spans several).
    """
    return _load(Path(project_dir), PROJECT_FILE, {PROJECT_FILE: files[PROJECT_FILE]}, _MemoryFiles(files))


class _MemoryFiles:
    def __init__(self, files: dict[str, str]):
        self.files = {n: t for n, t in files.items() if n != PROJECT_FILE}

    def matching(self, pattern: str) -> list[tuple[str, str]]:
        parts = pattern.removeprefix("./").split("/")
        return [(n, t) for n, t in sorted(self.files.items()) if _glob_match(n.split("/"), parts)]

    def names(self) -> list[str]:
        return sorted(self.files)


class _DirectoryFiles:
    def __init__(self, project_dir: Path):
        self.project_dir = project_dir

    def matching(self, pattern: str) -> list[tuple[str, str]]:
        found = []
        for match in sorted(glob.glob(str(self.project_dir / pattern), recursive=True)):
            p = Path(match)
            if p.is_file() and p.name != PROJECT_FILE:
                found.append((self._relative(p), p.read_text(encoding="utf-8")))
        return found

    def names(self) -> list[str]:
        files = [*self.project_dir.glob("**/*.yaml"), *self.project_dir.glob("**/*.yml")]
        return sorted(self._relative(p) for p in files if p.name != PROJECT_FILE)

    def _relative(self, p: Path) -> str:
        try:
            return p.resolve().relative_to(self.project_dir.resolve()).as_posix()
        except ValueError:  # included from outside the project directory
            return p.as_posix()


def _glob_match(names: list[str], parts: list[str]) -> bool:
    """Path segments against glob segments: ``*`` matches within one segment, ``**`` any number."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_glob_match(names[i:], parts[1:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _glob_match(names[1:], parts[1:])


def _load(project_dir: Path, project_name: str, texts: dict[str, str], files) -> LoadedConfig:
    errors: list[ConfigError] = []
    project_source = parse_yaml(project_name, texts[PROJECT_FILE], errors)
    project_spec = validate_file(project_source, errors, is_project=True)

    sources = [(project_source, project_spec)]
    seen = {project_name}
    include = project_spec.include if project_spec else _raw_include(project_source)
    for i, pattern in enumerate(include):
        matched = files.matching(pattern)
        if not matched:
            errors.append(
                ConfigError(
                    project_source.where(("include", i)),
                    "E102",
                    f"include pattern '{pattern}' matched no file",
                    did_you_mean(pattern, files.names())
                    or "patterns are relative to loom.yaml, e.g. 'entities/*.yaml'",
                )
            )
        for name, text in matched:
            if name in seen:
                continue
            seen.add(name)
            source = parse_yaml(name, text, errors)
            sources.append((source, validate_file(source, errors, is_project=False)))

    entities, entity_sources = _collect(sources, "entities", "entity", errors)
    roles, role_sources = _collect(sources, "roles", "role", errors)
    if errors:
        raise ConfigErrors(errors)
    assert project_spec is not None
    return LoadedConfig(project_dir, project_spec, entities, entity_sources, project_source, roles, role_sources)


def _collect(sources, key: str, kind: str, errors: list[ConfigError]) -> tuple[dict, dict[str, SourceFile]]:
    """The named items under ``key`` across all files; a name defined twice is an error naming both."""
    items: dict[str, Any] = {}
    where: dict[str, SourceFile] = {}
    for source, spec in sources:
        if spec is None:
            continue
        for name, item in getattr(spec, key).items():
            if name in items:
                first = where[name].where((key, name), key=True)
                errors.append(ConfigError(source.where((key, name), key=True), "E123",
                                          f"{kind} '{name}' is defined twice (first at {first})",
                                          "rename one of them, or merge them into one definition"))
                continue
            items[name] = item
            where[name] = source
    return items, where


def _raw_include(source: SourceFile) -> list[str]:
    value = source.data.get("include") if isinstance(source.data, dict) else None
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# --- YAML with marks -------------------------------------------------------------------------------


def parse_yaml(name: str, text: str, errors: list[ConfigError]) -> SourceFile:
    """Parse YAML text into plain Python data, recording 1-based marks of every key and value.

    ruamel composes a node tree with marks (its C parser when ``ruamel.yaml.clib`` is installed:
    about eight times faster than the round-trip loader on large configs); the walk below turns it
    into builtins, reports every duplicate key, and keeps each node's place.
    """
    yaml = _composer()
    try:
        root = yaml.compose(text)
    except (YAMLError, ValueError):
        # libyaml follows YAML 1.1 and refuses some 1.2 text, e.g. '{url: sqlite:///x.db}': the pure
        # parser decides, and words any error the way the rest of Loom's messages expect
        yaml = YAML(typ="safe", pure=True)
        try:
            root = yaml.compose(text)
        except MarkedYAMLError as exc:
            errors.append(_yaml_error(name, exc, text))
            return SourceFile(name, None)
        except (YAMLError, ValueError) as exc:
            errors.append(ConfigError(Location(name, 1, 1), "E100", f"invalid YAML: {exc}", YAML_HINT))
            return SourceFile(name, None)
    source = SourceFile(name, None)
    walker = _Walker(source, yaml.constructor, errors)
    try:
        data = walker.plain(root, ()) if root is not None else {}
    except (YAMLError, ValueError) as exc:  # e.g. '!!int abc': a tag its value does not fit
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.append(ConfigError(Location(name, line, col), "E100", f"invalid YAML: {exc}", YAML_HINT))
        return SourceFile(name, None)
    if walker.duplicates:
        return SourceFile(name, None)
    source.data = {} if data is None else data
    return source


def _composer() -> YAML:
    try:
        return YAML(typ="safe", pure=False)
    except Exception:  # no C extension on this platform
        return YAML(typ="safe", pure=True)


class _Walker:
    """Node tree -> builtins, with marks, every duplicate key reported."""

    MERGE = "tag:yaml.org,2002:merge"

    def __init__(self, source: SourceFile, constructor, errors: list[ConfigError]):
        self.source = source
        self.constructor = constructor
        self.errors = errors
        self.duplicates = False
        self.active: set[int] = set()

    def plain(self, node: Node, path: Path_) -> Any:
        if id(node) in self.active:
            raise ValueError("a YAML alias refers to itself")
        if isinstance(node, MappingNode):
            self.active.add(id(node))
            try:
                return self._mapping(node, path)
            finally:
                self.active.discard(id(node))
        if isinstance(node, SequenceNode):
            result = []
            for i, item in enumerate(node.value):
                mark = (item.start_mark.line + 1, item.start_mark.column + 1)
                self.source.key_marks[(*path, i)] = self.source.value_marks[(*path, i)] = mark
                result.append(self.plain(item, (*path, i)))
            return result
        if node.tag.endswith(":timestamp"):
            # dates (min: 1900-01-01) stay text: the spec and its JSON Schema take dates as strings,
            # as JSON has no date type; each field type parses them
            return str(node.value)
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: Path_) -> dict:
        result: dict[str, Any] = {}
        first: dict[str, Node] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == self.MERGE:
                merged += value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                continue
            key = str(self.plain(key_node, path)) if not isinstance(key_node, MappingNode | SequenceNode) \
                else str(key_node.value)
            if key in first:
                self.duplicates = True
                self.errors.append(ConfigError(
                    Location(self.source.name, key_node.start_mark.line + 1, key_node.start_mark.column + 1),
                    "E101", f"duplicate key '{key}' (first written at line {first[key].start_mark.line + 1})",
                    "a key may appear once per mapping; remove one of them or merge them"))
                continue
            first[key] = key_node
            child = (*path, key)
            key_mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            self.source.key_marks[child] = key_mark
            empty = getattr(value_node, "tag", "").endswith(":null") and not getattr(value_node, "value", "x")
            # an empty value ('other:') has no place of its own: point at its key
            self.source.value_marks[child] = key_mark if empty else (
                value_node.start_mark.line + 1, value_node.start_mark.column + 1)
            result[key] = self.plain(value_node, child)
        for extra in merged:  # YAML merge keys (<<: *defaults): explicit keys win
            for key, value in (self.plain(extra, path) or {}).items():
                result.setdefault(key, value)
        return result


YAML_HINT = "check the indentation, quotes and brackets around this place"
_OPENERS = {"flow mapping": "'{'", "flow sequence": "'['", "quoted scalar": "quote"}


def _char_at(text: str, mark) -> str:
    lines = text.splitlines()
    if mark is None or mark.line >= len(lines) or mark.column >= len(lines[mark.line]):
        return ""
    return lines[mark.line][mark.column]


def _yaml_error(name: str, exc: MarkedYAMLError, text: str = "") -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "cannot be parsed"
    hint = YAML_HINT
    opener = next((o for kind, o in _OPENERS.items() if kind in (exc.context or "")), None)
    if opener and exc.context_mark:
        where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        hint = f"close the {opener} opened at {where}"
    elif "'\\t'" in problem or _char_at(text, mark) == "\t":
        hint = "indent with spaces; YAML does not allow tabs"
    elif "mapping values are not allowed" in problem:
        hint = "put the value in quotes if it contains ': ', or start the nested mapping on a new line"
    elif "<block end>" in problem:
        hint = "keys of one mapping must start in the same column; check the indentation"
    return ConfigError(Location(name, line, col), "E100", f"invalid YAML: {problem}", hint)
