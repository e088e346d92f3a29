"""Ref changes: a ref field pointing at another entity, or deleting differently (``on_delete``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loomcrm.engine.manifest import Manifest

from .steps import Plan, Step

#: The ref params whose change alters the foreign key.
REF_CHANGES = ("to", "on_delete")


def ref_steps(plan: Plan, where: str, old: dict, field_: Any, table: sa.Table, manifest: Manifest) -> list[Step]:
    """The steps changing the foreign key of ref field ``where`` from ``old`` to ``field_``."""
    changed = [p for p in REF_CHANGES if old.get("params", {}).get(p) != field_.params.get(p)]
    plan.refused.append(f"field {where} changed {', '.join(changed)}; changing a ref's target or on_delete is not "
                        "supported yet: revert that change, or add a new field instead")
    return []
