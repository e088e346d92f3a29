"""``loom explain-config``: the merged config as YAML, each value followed by where it was written.

For a project that ``extends:`` a base, this answers "where does this label come from?" without
reading every file: each line ends with ``# file:line:col`` (paths relative to the project directory,
so a base's file reads ``../sales/entities/account.yaml``). The output is valid YAML and loads back
to the merged config. Pure: a function of :class:`~.loader.LoadedConfig`, plus a thin loader call.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any

from loomcrm.schemas import ConfigFileSpec

from .loader import LoadedConfig, load_config
from .overlays import Provenance

__all__ = ["explain_config", "render_config"]

#: Written after the project settings, in this order.
ROOT_LAST = ("entities", "roles")
#: Longest value written on one line (a mapping or list from one place, e.g. a label per locale).
INLINE_WIDTH = 72
#: Comments start in this column at most; longer lines put theirs two spaces after the text.
COMMENT_COLUMN = 64


def explain_config(project_path: str | os.PathLike) -> str:
    """The merged config of the project at ``project_path``, each value annotated with its place.

    Raises :class:`~.errors.ConfigErrors` when the config does not load.
    """
    return render_config(load_config(project_path))


def render_config(loaded: LoadedConfig) -> str:
    """``loaded.tree`` as YAML, one ``# file:line:col`` comment per key or list item."""
    provenance = loaded.provenance or Provenance((loaded.project_source, ()))
    order = [k for k in ConfigFileSpec.model_fields if k not in ROOT_LAST] + list(ROOT_LAST)
    tree = dict(sorted(loaded.tree.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    lines = _mapping(tree, (), provenance, 0)
    width = min(max((_width(text) for text, _ in lines), default=0), COMMENT_COLUMN)
    header = ["# The merged config: every value is followed by the file:line:col it was written at.",
              "# Files read, base configs first:"]
    header += [f"#   {source.name}" for source in loaded.sources or (loaded.project_source,)]
    body = [f"{text}{' ' * max(width - _width(text), 0)}  # {where}" if where else text for text, where in lines]
    return "\n".join([*header, *body]) + "\n"


def _mapping(value: dict, path: tuple, prov: Provenance, indent: int) -> list[tuple[str, str]]:
    lines = []
    for key, item in value.items():
        lines += _entry(f"{' ' * indent}{_scalar(key, flow=False)}:", item, (*path, key), prov, indent)
    return lines


def _entry(head: str, value: Any, path: tuple, prov: Provenance, indent: int) -> list[tuple[str, str]]:
    """``head`` (``key:`` or ``-``) with its value: on the same line when it fits, else below."""
    inline = _inline(value, flow=False) if _from_one_place(prov, path) else None
    if inline is not None and (len(inline) <= INLINE_WIDTH or not isinstance(value, dict | list)):
        return [(f"{head} {inline}", _place(prov, path, key=False))]
    if isinstance(value, dict):
        below = _mapping(value, path, prov, indent + 2)
    else:
        below = []
        for i, item in enumerate(value):
            below += _entry(f"{' ' * (indent + 2)}-", item, (*path, i), prov, indent + 2)
    if head.lstrip() == "-" and isinstance(value, dict):  # '- key: value' for a mapping in a list
        text, where = below[0]
        return [(f"{head} {text.lstrip()}", where), *below[1:]]
    return [(head, _place(prov, path, key=True)), *below]


def _place(prov: Provenance, path: tuple, *, key: bool) -> str:
    """``file:line:col`` of the value (or key) at ``path``; empty for a mapping that no one file wrote
    (``entities:`` gathered from several files)."""
    source, at = prov.origin_of(path)
    return str(source.where(at, key=key)) if at in (source.key_marks if key else source.value_marks) else ""


def _from_one_place(prov: Provenance, path: tuple) -> bool:
    """True when the value at ``path`` was written in one piece (not merged from several files)."""
    node: Provenance | None = prov
    for part in path:
        node = node.children.get(part) if node is not None else None
    if node is None:
        return True
    home = prov.origin_of(path)[0]
    stack = list(node.children.values())
    while stack:
        child = stack.pop()
        if child.origin is not None and child.origin[0] is not home:
            return False
        stack.extend(child.children.values())
    return True


def _inline(value: Any, *, flow: bool) -> str:
    """The value on one line: a mapping or list in flow style, a scalar as in :func:`_scalar`."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k, flow=True)}: {_inline(v, flow=True)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v, flow=True) for v in value) + "]"
    return _scalar(value, flow=flow)


#: Text YAML reads back as the same text when written plain (in a flow collection, ``,[]{}`` end it).
PLAIN = re.compile(r"^[^\s\-?:,\[\]{}#&*!|>'\"%@`]([^\n\t]*[^\s:])?$")
FLOW_INDICATORS = re.compile(r"[,\[\]{}:]")  # ':' too: libyaml (YAML 1.1) reads 'url: a:b' as a key
RESOLVED = re.compile(r"^(?i:true|false|yes|no|on|off|y|n|null|~)$|^[-+.]?[0-9]")


def _scalar(value: Any, *, flow: bool) -> str:
    """One YAML scalar: plain where that reads back as the same string, else double-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if (PLAIN.match(text) and not RESOLVED.match(text) and ": " not in text and " #" not in text
            and not (flow and FLOW_INDICATORS.search(text))):
        return text
    return json.dumps(text, ensure_ascii=False)


def _width(text: str) -> int:
    """Columns the text takes in a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
