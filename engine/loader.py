"""Read YAML config files into spec models, keeping where every key and value was written.

``load_config(path)`` reads ``loom.yaml`` and the files it includes, validates each against
:class:`~loomcrm.schemas.ConfigFileSpec` (see :mod:`.validation`) and returns a :class:`LoadedConfig`.
A project that says ``extends: <base>`` is read on top of its base, which is read first the same way
(with its own includes, and its own base); :mod:`.overlays` merges them. Every error carries
``file:line:col``, with file names relative to the project directory (a base's file reads
``../sales/entities/account.yaml``); all of them are collected and raised together as
:class:`ConfigErrors`.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.util
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from loomcrm.schemas import ConfigFileSpec, EntitySpec
from loomcrm.schemas.security import RoleSpec

from .errors import ConfigError, ConfigErrors, Location, did_you_mean
from .overlays import Provenance, Tree, has_path, merge_trees, remove_paths, union_of_files
from .validation import validate_file, validate_tree

__all__ = ["LoadedConfig", "SourceFile", "load_config", "load_config_text", "find_project_file"]

PROJECT_FILE = "loom.yaml"
#: Named things besides entities and roles that any config file may hold (``LoadedConfig.named``).
AUTOMATION_SECTIONS = ("workflows", "automations", "schedules", "webhooks")
#: Plugins' config fragments: ``(plugin name, {"entities": ..., "roles": ...})``.
Contributions = tuple[tuple[str, dict], ...] | list
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
            if not path:  # data that was never text (a plugin's fragment) has no lines
                return Location(self.name, 1, 1) if self.key_marks or self.value_marks else Location(self.name)
            path = path[:-1]
            key = True  # an ancestor is best pointed at by its key


@dataclass
class LoadedConfig:
    """The validated project: merged specs, and where each of their values was written.

    :ivar tree: the merged config as plain data (what the files say, before defaults).
    :ivar provenance: for every value of ``tree``, the file and place it was written at.
    :ivar sources: every file read, a base's before the files of the project that extends it.
    :ivar project_dirs: the project's directory, then those of the configs it extends (nearest first).
    :ivar entity_sources: per entity (and ``role_sources`` per role), the file that defined it first.
    """

    project_dir: Path
    project: ConfigFileSpec
    entities: dict[str, EntitySpec]
    entity_sources: dict[str, SourceFile]
    project_source: SourceFile
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    role_sources: dict[str, SourceFile] = field(default_factory=dict)
    named: dict[str, dict[str, Any]] = field(default_factory=dict)  # workflows, automations... by name
    provenance: Provenance | None = None
    tree: dict[str, Any] = field(default_factory=dict)
    sources: tuple[SourceFile, ...] = ()
    project_dirs: tuple[Path, ...] = ()

    def locate(self, path: Path_, *, key: bool = False) -> Location:
        """Location of the value at ``path`` of the merged config (or its key), in the file that wrote it."""
        if self.provenance is None:
            return self.project_source.where(tuple(path), key=key)
        return self.provenance.where(tuple(path), key=key)

    def where_role(self, role: str, *path: Any, key: bool = False) -> Location:
        """Location of ``roles.<role>.<path...>``."""
        if self.provenance is None:
            return self.role_sources.get(role, self.project_source).where(("roles", role, *path), key=key)
        return self.provenance.where(("roles", role, *path), key=key)

    def where(self, entity: str, *path: Any, key: bool = False) -> Location:
        """Location of ``entities.<entity>.<path...>`` in whichever file wrote that value."""
        if self.provenance is None:
            source = self.entity_sources.get(entity, self.project_source)
            return source.where(("entities", entity, *path), key=key)
        return self.provenance.where(("entities", entity, *path), key=key)


def find_project_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / PROJECT_FILE if p.is_dir() else p


def load_config(path: str | os.PathLike, contributions: Contributions = ()) -> LoadedConfig:
    """Load ``loom.yaml`` (or the ``loom.yaml`` inside directory ``path``) and everything it includes.

    ``contributions`` are config fragments of plugins (``loom_contribute_config``): ``(plugin name,
    {"entities": ..., "roles": ...})``, merged beneath the project's own files like a base config.
    """
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
    return _load(project_dir, project_file.name, _DirectoryFiles(project_dir), contributions)


def load_config_text(files: dict[str, str], project_dir: str | os.PathLike = ".",
                     contributions: Contributions = ()) -> LoadedConfig:
    """Load a config from in-memory texts, ``{"loom.yaml": ..., "entities/a.yaml": ...}`` (for tests).

    Include patterns match the names as they would match files on disk (``*`` stays within one
    directory, ``**`` spans several). A base config may be given the same way: ``extends: ../sales``
    reads ``../sales/loom.yaml`` from ``files``; an installed package named by ``extends:`` is read
    from disk.
    """
    return _load(Path(project_dir), PROJECT_FILE, _MemoryFiles(files, Path(project_dir)), contributions)


# --- where files come from: disk, or a dict of texts ------------------------------------------------------
# Both name a file by its path relative to the project directory, in POSIX form ('../sales/loom.yaml').


class _MemoryFiles:
    def __init__(self, files: dict[str, str], project_dir: Path):
        self.files = {posixpath.normpath(n): t for n, t in files.items()}
        self.project_dir = project_dir

    def read(self, name: str) -> str | None:
        return self.files.get(name)

    def is_file(self, name: str) -> bool:
        return name in self.files

    def identity(self, name: str) -> str:
        return name

    def matching(self, directory: str, pattern: str) -> list[str]:
        parts = posixpath.normpath(posixpath.join(directory, pattern)).split("/")
        return [n for n in sorted(self.files) if posixpath.basename(n) != PROJECT_FILE
                and _glob_match(n.split("/"), parts)]

    def names(self, directory: str) -> list[str]:
        prefix = f"{directory}/" if directory else ""
        return sorted(n.removeprefix(prefix) for n in self.files
                      if n.startswith(prefix) and posixpath.basename(n) != PROJECT_FILE)


class _DirectoryFiles:
    def __init__(self, project_dir: Path):
        self.project_dir = Path(os.path.abspath(project_dir))

    def path(self, name: str) -> Path:
        return Path(os.path.normpath(self.project_dir / name))

    def read(self, name: str) -> str | None:
        path = self.path(name)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def is_file(self, name: str) -> bool:
        return self.path(name).is_file()

    def identity(self, name: str) -> str:
        return os.path.realpath(self.path(name))

    def name_of(self, path: str | os.PathLike) -> str:
        return Path(os.path.relpath(os.path.abspath(path), self.project_dir)).as_posix()

    def matching(self, directory: str, pattern: str) -> list[str]:
        found = []
        for match in sorted(glob.glob(str(self.path(directory) / pattern), recursive=True)):
            p = Path(match)
            if p.is_file() and p.name != PROJECT_FILE:
                found.append(self.name_of(p))
        return found

    def names(self, directory: str) -> list[str]:
        root = self.path(directory)
        files = [*root.glob("**/*.yaml"), *root.glob("**/*.yml")]
        return sorted(Path(os.path.relpath(p, root)).as_posix() for p in files if p.name != PROJECT_FILE)


def _glob_match(names: list[str], parts: list[str]) -> bool:
    """Path segments against glob segments: ``*`` matches within one segment, ``**`` any number."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_glob_match(names[i:], parts[1:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _glob_match(names[1:], parts[1:])


MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _find_base(extends: str, directory: str, files) -> tuple[str, Any] | None:
    """The project file ``extends:`` names, and how to read it: a path first, then an installed package."""
    candidate = posixpath.normpath(posixpath.join(directory, extends))
    for name in (candidate, posixpath.normpath(posixpath.join(candidate, PROJECT_FILE))):
        if files.is_file(name):
            return (files.name_of(files.path(name)) if isinstance(files, _DirectoryFiles) else name), files
    if not MODULE_NAME.match(extends):
        return None
    try:
        spec = importlib.util.find_spec(extends)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / PROJECT_FILE
        if path.is_file():
            disk = files if isinstance(files, _DirectoryFiles) else _DirectoryFiles(files.project_dir)
            return disk.name_of(path), disk
    return None


# --- reading a project, and the configs it extends ------------------------------------------------------


@dataclass
class _Layer:
    """One config of an ``extends:`` chain: its files (project file first), merged onto its base's."""

    project: SourceFile
    spec: ConfigFileSpec | None  # None when invalid, or when it names base things partially
    sources: list[tuple[SourceFile, ConfigFileSpec | None]]
    directory: str  # relative to the top project's directory
    base: _Layer | None
    tree: Tree

    def chain(self) -> list[_Layer]:
        """This layer, then its base, its base's base..."""
        return [self, *(self.base.chain() if self.base else [])]


def _load(project_dir: Path, project_name: str, files, contributions: Contributions = ()) -> LoadedConfig:
    errors: list[ConfigError] = []
    layer = _read_layer(project_name, files.read(project_name) or "", files, errors, (), set(), contributions)
    layers = layer.chain()
    if layer.base is None and not contributions:
        # the files' own specs are the config: no second validation of a large project
        project_spec = layer.spec
        entities, entity_sources = _first_defined(layer.sources, "entities")
        roles, role_sources = _first_defined(layer.sources, "roles")
        named = {key: _first_defined(layer.sources, key)[0] for key in AUTOMATION_SECTIONS}
    else:
        project_spec = None if errors else validate_tree(layer.tree, errors)
        entities = dict(project_spec.entities) if project_spec else {}
        roles = dict(project_spec.roles) if project_spec else {}
        origin = layer.tree.provenance.origin_of
        entity_sources = {name: origin(("entities", name))[0] for name in entities}
        role_sources = {name: origin(("roles", name))[0] for name in roles}
        named = {key: dict(getattr(project_spec, key)) if project_spec else {} for key in AUTOMATION_SECTIONS}
    if errors:
        raise ConfigErrors(errors)
    assert project_spec is not None
    return LoadedConfig(
        project_dir, project_spec, entities, entity_sources, layer.project, roles, role_sources, named,
        provenance=layer.tree.provenance, tree=layer.tree.data,
        sources=tuple(source for each in reversed(layers) for source, _ in each.sources),
        project_dirs=tuple(Path(os.path.normpath(project_dir / each.directory)) for each in layers),
    )


def _read_layer(name: str, text: str, files, errors: list[ConfigError], chain: tuple[tuple[str, str], ...],
                read: set[str], contributions: Contributions = ()) -> _Layer:
    """Read one project file, the config it extends (first), and the files it includes; plugins'
    ``contributions`` go between the base and this layer's own files."""
    project = parse_yaml(name, text, errors)
    read.add(files.identity(name))
    directory = posixpath.dirname(name)
    data = project.data if isinstance(project.data, dict) else {}
    base = _read_base(project, data.get("extends"), directory, files, errors,
                      (*chain, (files.identity(name), name)), read)
    base_tree = remove_paths(base.tree, project, errors) if base else None
    if contributions:
        contributed = _contributed(contributions, errors)
        base_tree = merge_trees(base_tree, contributed, errors) if base_tree is not None else contributed
    if base_tree is not None:
        def provided(path: Path_) -> bool:
            return has_path(base_tree.data, path)
    else:  # without a base there is nothing to fill in, unless the base could not be read (reported)
        provided = (lambda path: True) if "extends" in data else None
        if data.get("remove") and "extends" not in data:
            errors.append(ConfigError(project.where(("remove",), key=True), "E133",
                                      "'remove' takes things out of the base config, and there is none",
                                      "name the base with 'extends:', or delete what you do not want"))
    spec = validate_file(project, errors, is_project=True, provided=provided)
    sources = [(project, spec)]
    for i, pattern in enumerate(_raw_include(project)):
        matched = files.matching(directory, pattern)
        if not matched:
            errors.append(
                ConfigError(
                    project.where(("include", i)),
                    "E102",
                    f"include pattern '{pattern}' matched no file",
                    did_you_mean(pattern, files.names(directory))
                    or "patterns are relative to loom.yaml, e.g. 'entities/*.yaml'",
                )
            )
        for included in matched:
            if files.identity(included) in read:  # matched twice, or a base's file
                continue
            read.add(files.identity(included))
            source = parse_yaml(included, files.read(included) or "", errors)
            sources.append((source, validate_file(source, errors, is_project=False, provided=provided)))
    own = union_of_files(project, [source for source, _ in sources[1:]], errors)
    tree = merge_trees(base_tree, own, errors) if base_tree is not None else own
    return _Layer(project, spec, sources, directory, base, tree)


def _contributed(contributions: Contributions, errors: list[ConfigError]) -> Tree:
    """Plugins' config fragments as one tree; each value is located at ``plugin <name>``."""
    pieces = []
    for plugin, fragment in contributions:
        source = SourceFile(f"plugin {plugin}", fragment if isinstance(fragment, dict) else {})
        validate_file(source, errors, is_project=False, provided=lambda path: True)
        pieces.append(source)
    return union_of_files(SourceFile("plugins", {}), pieces, errors)


def _read_base(project: SourceFile, extends: Any, directory: str, files, errors: list[ConfigError],
               chain: tuple[tuple[str, str], ...], read: set[str]) -> _Layer | None:
    if not isinstance(extends, str) or not extends:
        return None  # validation says what 'extends' must be
    found = _find_base(extends, directory, files)
    if found is None:
        errors.append(ConfigError(project.where(("extends",)), "E102", f"base config '{extends}' not found",
                                  "'extends' takes a directory holding loom.yaml or a loom.yaml path, relative "
                                  "to this file, or the name of an installed Python package holding loom.yaml"))
        return None
    name, base_files = found
    identity = base_files.identity(name)
    if identity in {seen for seen, _ in chain}:
        circle = " -> ".join([*(shown for _, shown in chain), name])
        errors.append(ConfigError(project.where(("extends",)), "E129",
                                  f"configs extend each other in a circle: {circle}",
                                  "remove the 'extends:' of one of them"))
        return None
    return _read_layer(name, base_files.read(name) or "", base_files, errors, chain, read)


def _first_defined(sources, key: str) -> tuple[dict, dict[str, SourceFile]]:
    """The named items under ``key`` across valid files; the first definition of a name wins (a
    second one is an error, reported by :func:`~.overlays.union_of_files`)."""
    items: dict[str, Any] = {}
    where: dict[str, SourceFile] = {}
    for source, spec in sources:
        if spec is None:
            continue
        for name, item in getattr(spec, key).items():
            if name not in items:
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
