"""Read YAML config files into spec models, keeping where every key and value was written.

``load_config(path)`` reads ``loom.yaml`` and the files it includes, validates each against
:class:`~loomcrm.schemas.ConfigFileSpec` (see :mod:`.validation`) and returns a :class:`LoadedConfig`.
Every error carries ``file:line:col``; all of them are collected and raised together as
:class:`ConfigErrors`.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from loomcrm.schemas import ConfigFileSpec, EntitySpec

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

    entities: dict[str, EntitySpec] = {}
    entity_sources: dict[str, SourceFile] = {}
    for source, spec in sources:
        if spec is None:
            continue
        for name, entity in spec.entities.items():
            if name in entities:
                first = entity_sources[name].where(("entities", name), key=True)
                errors.append(
                    ConfigError(
                        source.where(("entities", name), key=True),
                        "E123",
                        f"entity '{name}' is defined twice (first at {first})",
                        "rename one of them, or merge their fields into one definition",
                    )
                )
                continue
            entities[name] = entity
            entity_sources[name] = source
    if errors:
        raise ConfigErrors(errors)
    assert project_spec is not None
    return LoadedConfig(project_dir, project_spec, entities, entity_sources, project_source)


def _raw_include(source: SourceFile) -> list[str]:
    value = source.data.get("include") if isinstance(source.data, dict) else None
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# --- YAML with marks -------------------------------------------------------------------------------


def parse_yaml(name: str, text: str, errors: list[ConfigError]) -> SourceFile:
    """Parse YAML text into plain Python data, recording 1-based marks of every key and value."""
    yaml = YAML(typ="rt")
    try:
        node = yaml.load(text)
    except DuplicateKeyError as exc:
        errors.extend(_duplicate_keys(name, text) or [_yaml_error(name, exc)])
        return SourceFile(name, None)
    except MarkedYAMLError as exc:
        errors.append(_yaml_error(name, exc))
        return SourceFile(name, None)
    except (YAMLError, ValueError) as exc:  # e.g. '!!int abc': a tag its value does not fit
        errors.append(ConfigError(Location(name, 1, 1), "E100", f"invalid YAML: {exc}", YAML_HINT))
        return SourceFile(name, None)
    source = SourceFile(name, None)
    source.data = _plain(node, (), source)
    if source.data is None:
        source.data = {}
    return source


YAML_HINT = "check the indentation, quotes and brackets around this place"
_OPENERS = {"flow mapping": "'{'", "flow sequence": "'['", "quoted scalar": "quote"}


def _yaml_error(name: str, exc: MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "cannot be parsed"
    hint = YAML_HINT
    opener = next((o for kind, o in _OPENERS.items() if kind in (exc.context or "")), None)
    if opener and exc.context_mark:
        where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        hint = f"close the {opener} opened at {where}"
    elif "'\\t'" in problem:
        hint = "indent with spaces; YAML does not allow tabs"
    elif "mapping values are not allowed" in problem:
        hint = "put the value in quotes if it contains ': ', or start the nested mapping on a new line"
    elif "<block end>" in problem:
        hint = "keys of one mapping must start in the same column; check the indentation"
    return ConfigError(Location(name, line, col), "E100", f"invalid YAML: {problem}", hint)


def _duplicate_keys(name: str, text: str) -> list[ConfigError]:
    """Every duplicate key in the file, each pointing at the first one (ruamel stops at the first)."""
    try:
        root = YAML(typ="rt").compose(text)
    except YAMLError:
        return []
    errors: list[ConfigError] = []
    stack: list[Node | None] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode):
            first: dict[str, Node] = {}
            for key, value in node.value:
                stack.append(value)
                if not isinstance(key.value, str) or key.value == "<<":
                    continue
                if key.value in first:
                    line = first[key.value].start_mark.line + 1
                    errors.append(
                        ConfigError(
                            Location(name, key.start_mark.line + 1, key.start_mark.column + 1),
                            "E101",
                            f"duplicate key '{key.value}' (first written at line {line})",
                            "a key may appear once per mapping; remove one of them or merge them",
                        )
                    )
                else:
                    first[key.value] = key
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return errors


def _plain(node: Any, path: Path_, source: SourceFile) -> Any:
    if isinstance(node, CommentedMap):
        result = {}
        for k in node:
            line, col = node.lc.key(k)
            vline, vcol = node.lc.value(k)
            child = (*path, str(k))
            source.key_marks[child] = (line + 1, col + 1)
            # an empty value ('other:') has no place of its own; ruamel gives the next token's
            source.value_marks[child] = (vline + 1, vcol + 1) if node[k] is not None else (line + 1, col + 1)
            result[str(k)] = _plain(node[k], child, source)
        return result
    if isinstance(node, CommentedSeq):
        result = []
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            source.key_marks[(*path, i)] = source.value_marks[(*path, i)] = (line + 1, col + 1)
            result.append(_plain(item, (*path, i), source))
        return result
    if isinstance(node, dt.date):
        # YAML timestamps (min: 1900-01-01) become ISO text: the spec and its JSON Schema take
        # dates as strings, as JSON has no date type; each field type parses them.
        return node.isoformat()
    if hasattr(node, "__str__") and type(node).__module__.startswith("ruamel"):
        # ScalarFloat, ScalarBoolean, TaggedScalar...: plain builtins for pydantic
        for kind in (bool, int, float, str):
            if isinstance(node, kind):
                return kind(node)
    return node
