"""Read YAML config files into spec models, keeping where every key and value was written.

``load_config(path)`` reads ``loom.yaml`` and the files it includes, validates each against
:class:`~loomcrm.schemas.ConfigFileSpec` and returns a :class:`LoadedConfig`. Every error carries
``file:line:col``; all of them are collected and raised together as :class:`ConfigErrors`.
"""

from __future__ import annotations

import glob
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from loomcrm.schemas import ConfigFileSpec, EntitySpec
from loomcrm.schemas.project import PROJECT_ONLY_KEYS

from .errors import ConfigError, ConfigErrors, Location, did_you_mean

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
    return _load(project_dir, project_file.name, texts, read_include=_include_reader(project_dir))


def load_config_text(files: dict[str, str], project_dir: str | os.PathLike = ".") -> LoadedConfig:
    """Load a config from in-memory texts, ``{"loom.yaml": ..., "entities/a.yaml": ...}`` (for tests)."""

    def read_include(pattern: str) -> list[tuple[str, str]]:
        return [(n, t) for n, t in sorted(files.items()) if n != PROJECT_FILE and glob.fnmatch.fnmatch(n, pattern)]

    return _load(Path(project_dir), PROJECT_FILE, {PROJECT_FILE: files[PROJECT_FILE]}, read_include)


def _include_reader(project_dir: Path):
    def read_include(pattern: str) -> list[tuple[str, str]]:
        found = []
        for match in sorted(glob.glob(str(project_dir / pattern), recursive=True)):
            p = Path(match)
            if p.is_file() and p.name != PROJECT_FILE:
                found.append((p.relative_to(project_dir).as_posix(), p.read_text(encoding="utf-8")))
        return found

    return read_include


def _load(project_dir: Path, project_name: str, texts: dict[str, str], read_include) -> LoadedConfig:
    errors: list[ConfigError] = []
    project_source = parse_yaml(project_name, texts[PROJECT_FILE], errors)
    project_spec = validate_file(project_source, errors, is_project=True)

    sources = [(project_source, project_spec)]
    seen = {project_name}
    include = project_spec.include if project_spec else _raw_include(project_source)
    for i, pattern in enumerate(include):
        matched = read_include(pattern)
        if not matched:
            errors.append(
                ConfigError(
                    project_source.where(("include", i)),
                    "E102",
                    f"include pattern '{pattern}' matched no file",
                    "patterns are relative to loom.yaml, e.g. 'entities/*.yaml'",
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
        mark = exc.problem_mark
        key = _duplicate_key_name(exc)
        errors.append(
            ConfigError(
                Location(name, mark.line + 1, mark.column + 1),
                "E101",
                f"duplicate key {key}" if key else "duplicate key",
                "a key may appear once per mapping; remove or rename one of them",
            )
        )
        return SourceFile(name, None)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.append(ConfigError(Location(name, line, col), "E100", f"invalid YAML: {exc.problem}", None))
        return SourceFile(name, None)
    source = SourceFile(name, None)
    source.data = _plain(node, (), source)
    if source.data is None:
        source.data = {}
    return source


def _duplicate_key_name(exc: DuplicateKeyError) -> str | None:
    problem = exc.problem or ""
    if '"' in problem:
        return "'" + problem.split('"')[1] + "'"
    return None


def _plain(node: Any, path: Path_, source: SourceFile) -> Any:
    if isinstance(node, CommentedMap):
        result = {}
        for k in node:
            line, col = node.lc.key(k)
            vline, vcol = node.lc.value(k)
            child = (*path, str(k))
            source.key_marks[child] = (line + 1, col + 1)
            source.value_marks[child] = (vline + 1, vcol + 1)
            result[str(k)] = _plain(node[k], child, source)
        return result
    if isinstance(node, CommentedSeq):
        result = []
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            source.key_marks[(*path, i)] = source.value_marks[(*path, i)] = (line + 1, col + 1)
            result.append(_plain(item, (*path, i), source))
        return result
    if hasattr(node, "__str__") and type(node).__module__.startswith("ruamel"):
        # ScalarFloat, ScalarBoolean, TaggedScalar...: plain builtins for pydantic
        for kind in (bool, int, float, str):
            if isinstance(node, kind):
                return kind(node)
    return node


# --- validation --------------------------------------------------------------------------------------


def validate_file(source: SourceFile, errors: list[ConfigError], *, is_project: bool) -> ConfigFileSpec | None:
    """Validate one parsed file against ConfigFileSpec, turning pydantic errors into located ones."""
    if source.data is None:
        return None
    if not isinstance(source.data, dict):
        errors.append(
            ConfigError(source.where(()), "E112", "a config file must be a mapping of keys", "start with 'entities:'")
        )
        return None
    ok = True
    if not is_project:
        for key in PROJECT_ONLY_KEYS:
            if key in source.data:
                ok = False
                errors.append(
                    ConfigError(
                        source.where((key,), key=True),
                        "E113",
                        f"'{key}' is only allowed in loom.yaml",
                        "move it to the project file",
                    )
                )
    elif "app" not in source.data:
        ok = False
        errors.append(
            ConfigError(source.where(()), "E111", "missing required key 'app'", "add 'app: {name: My CRM}'")
        )
    try:
        spec = ConfigFileSpec.model_validate(source.data)
    except ValidationError as exc:
        errors.extend(_located_errors(exc, source))
        return None
    return spec if ok else None


def _located_errors(exc: ValidationError, source: SourceFile) -> list[ConfigError]:
    by_path: dict[Path_, list[dict]] = {}
    for err in exc.errors():
        path = _data_path(source.data, err["loc"])
        by_path.setdefault(path, []).append(err)
    result = []
    for path, errs in by_path.items():
        result.append(_one_error(source, path, errs))
    return result


def _data_path(data: Any, loc: tuple) -> Path_:
    """Strip pydantic's union tags from ``loc`` so the path exists in the data (or ends at a missing key)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part not in node and not path_is_tag(part):
            path.append(part)  # a missing or unknown key
            break
        else:
            continue
    return tuple(path)


def path_is_tag(part: str) -> bool:
    # pydantic names union members in loc: 'str', 'dict[str,str]', 'OptionSpec', 'function-after[...]'
    return part[:1].isupper() or "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


def _one_error(source: SourceFile, path: Path_, errs: list[dict]) -> ConfigError:
    kinds = {e["type"] for e in errs}
    what = _describe(path)
    if "extra_forbidden" in kinds:
        key = path[-1]
        known = _known_keys(path[:-1])
        return ConfigError(
            source.where(path, key=True),
            "E110",
            f"unknown key '{key}'{what}",
            did_you_mean(str(key), known) or (f"allowed keys: {', '.join(sorted(known))}" if known else None),
        )
    if "missing" in kinds:
        key = path[-1]
        return ConfigError(
            source.where(path[:-1], key=True), "E111", f"missing required key '{key}'{_describe(path[:-1])}", None
        )
    if len(errs) > 1:  # several union members failed
        message = f"invalid value{what}: expected {_expected(errs)}"
    else:
        message = f"invalid value{what}: {errs[0]['msg']}"
    return ConfigError(source.where(path), "E112", message, None)


def _expected(errs: list[dict]) -> str:
    names = []
    for e in errs:
        tag = next((str(p) for p in reversed(e["loc"]) if isinstance(p, str) and path_is_tag(p)), None)
        kind = {"str": "text", "dict[str,str]": "a mapping of locale to text"}.get(tag or "", tag or e["msg"])
        if kind not in names:
            names.append(kind)
    return " or ".join(names)


def _describe(path: Path_) -> str:
    if len(path) >= 4 and path[0] == "entities" and path[2] == "fields":
        return f" in field '{path[1]}.{path[3]}'"
    if len(path) >= 2 and path[0] == "entities":
        return f" in entity '{path[1]}'"
    if path:
        return f" in '{'.'.join(str(p) for p in path)}'" if len(path) > 1 else ""
    return ""


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
