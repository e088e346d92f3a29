"""Spec models for roles (``roles:`` in any config file): who may do what, to which records and fields.

Everything not granted is refused (allow-list). A user holding several roles gets the union of
their grants: the widest scope per operation, the most open level per field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .entity import Label, SpecModel

__all__ = ["RoleSpec", "EntityGrantSpec", "Scope", "FieldLevel"]

#: Which records an operation reaches: none; those the user owns; those owned by the user's teams
#: (a team's manager reaches its members' records); all.
Scope = Literal["none", "own", "team", "all"]
#: hidden: never selected nor shown; read: shown, not writable; write: shown and writable.
FieldLevel = Literal["hidden", "read", "write"]


class EntityGrantSpec(SpecModel):
    """What a role may do with one entity. Anything left out is ``none`` / ``false``."""

    read: Scope = "none"
    create: bool = False
    update: Scope = "none"
    delete: Scope = "none"
    export: Scope = "none"
    where: str | None = Field(
        None, description="A CEL row rule narrowing read, update, delete and export to the records it "
        "matches, run in SQL: `record.region == user.region`. Supported: record.<field>, user.<field> "
        "(and user.id, user.teams, user.roles), literals, lists, == != < <= > >= in && || !.")


class RoleSpec(SpecModel):
    """A role: grants per entity, levels per field, and roles it builds on."""

    label: Label | None = None
    description: str | None = None
    inherits: list[str] = Field(default_factory=list, description="Roles whose grants this role also has.")
    entities: dict[str, EntityGrantSpec] = Field(default_factory=dict)
    fields: dict[str, FieldLevel] = Field(
        default_factory=dict,
        description="`entity.field: hidden|read|write`. Unlisted fields of a readable entity are `write` "
        "where the role may create or update the entity, else `read`.",
    )
