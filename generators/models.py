"""Pydantic I/O models per entity: what the API reads and returns, and so what OpenAPI documents.

``Create``: writable fields (required ones required unless they have a default).
``Update``: every writable field optional, plus ``version`` for optimistic locking.
``Record``: every field, as returned. ``Page``: one page of a list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Optional, get_args, get_origin

from pydantic import BaseModel, ConfigDict, StringConstraints, create_model
from pydantic import Field as PydanticField

from loomcrm.engine.manifest import Entity, Field, Manifest, text_for

__all__ = ["EntityModels", "build_models", "model_name"]

INPUT_CONFIG = ConfigDict(extra="forbid", regex_engine="python-re")
OUTPUT_CONFIG = ConfigDict(regex_engine="python-re")


@dataclass(frozen=True)
class EntityModels:
    record: type[BaseModel]
    create: type[BaseModel]
    update: type[BaseModel]
    page: type[BaseModel]


def model_name(entity: Entity) -> str:
    return "".join(part.capitalize() for part in entity.name.split("_"))


def build_models(manifest: Manifest) -> dict[str, EntityModels]:
    return {name: _entity_models(entity, manifest) for name, entity in manifest.entities.items()}


def _describe(field: Field, manifest: Manifest) -> dict[str, Any]:
    info: dict[str, Any] = {"title": text_for(field.label, manifest.locales[0])}
    if field.help:
        info["description"] = text_for(field.help, manifest.locales[0])
    return info


def _output_type(field: Field) -> Any:
    if field.type == "ref":  # an id, or the target record with ?expand=
        return int | dict[str, Any]
    if field.type == "refs":
        return list[int | dict[str, Any]]
    if field.type in ("decimal", "money"):
        return Annotated[str, PydanticField(pattern=r"^-?\d+(\.\d+)?$")]
    if field.system and field.type == "integer":
        return int
    return field.field_type.python_type(field)


def _input_type(field: Field) -> Any:
    if field.type in ("decimal", "money"):
        return float | Annotated[str, PydanticField(pattern=r"^\s*-?\d+(\.\d+)?\s*$")]
    return field.field_type.python_type(field)


def _optional(kind: Any) -> Any:
    """``kind`` or null, keeping its constraints where litestar's OpenAPI generator sees them.

    ``Optional[Annotated[str, Field(pattern=...)]]`` loses ``pattern`` and ``maxLength`` in the
    document; ``Annotated[Optional[str], MaxLen(...), StringConstraints(pattern=...)]`` keeps them (and
    JSON Schema applies them to strings only, so null stays valid).
    """
    if kind is Any:
        return kind
    if get_origin(kind) is not Annotated:
        return Optional[kind]  # noqa: UP045
    base, *metadata = get_args(kind)
    flat = []
    for item in metadata:
        for constraint in getattr(item, "metadata", None) or [item]:
            pattern = getattr(constraint, "pattern", None)
            generic = type(constraint).__name__ == "_PydanticGeneralMetadata"
            flat.append(StringConstraints(pattern=pattern) if generic and pattern is not None else constraint)
    return Annotated[Optional[base], *flat]  # noqa: UP045


def _entity_models(entity: Entity, manifest: Manifest) -> EntityModels:
    base = model_name(entity)
    record_fields: dict[str, Any] = {}
    create_fields: dict[str, Any] = {}
    update_fields: dict[str, Any] = {}
    for field in entity.fields.values():
        info = _describe(field, manifest)
        always = field.name == "id"  # everything else may be left out by ?fields=
        out = _output_type(field)
        if always:
            record_fields[field.name] = (out, PydanticField(**info))
        else:  # Optional[Any] would document null twice (oneOf: {}, null): _optional leaves Any alone
            record_fields[field.name] = (_optional(out), PydanticField(None, **info))
        if not field.writable:
            continue
        kind = _input_type(field)
        optional_kind = _optional(kind)
        has_default = field.default is not None or field.dynamic_default is not None
        if field.required and not has_default:
            create_fields[field.name] = (kind, PydanticField(**info))
        else:
            create_fields[field.name] = (optional_kind, PydanticField(None, **info))
        update_fields[field.name] = (optional_kind, PydanticField(None, **info))
    update_fields["version"] = (Optional[int], PydanticField(  # noqa: UP045
        None, ge=1, description="The version you read; a stale one gets 409 and changes nothing."))
    record = create_model(base, __config__=OUTPUT_CONFIG, **record_fields)
    create = create_model(f"{base}Create", __config__=INPUT_CONFIG, **create_fields)
    update = create_model(f"{base}Update", __config__=INPUT_CONFIG, **update_fields)
    page = create_model(
        f"{base}Page",
        __config__=OUTPUT_CONFIG,
        data=(list[record], PydanticField(description="The records of this page.")),
        next_cursor=(Optional[str], PydanticField(None, description="Pass as ?cursor= for the next page; "  # noqa: UP045
                                                                   "null on the last page.")),
        count=(Optional[int], PydanticField(None, description="Total matching records (with count=true).")),  # noqa: UP045
    )
    return EntityModels(record, create, update, page)
