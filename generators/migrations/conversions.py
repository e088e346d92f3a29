"""Type changes and length/precision changes: converting the values a column holds."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loomcrm.engine.manifest import Manifest

from .steps import Plan, Step

#: What a change of one of these field attributes (or params) converts.
CONVERSIONS = ("type", "max_length", "precision", "scale")


def conversion_steps(plan: Plan, where: str, old: dict, field_: Any, table: sa.Table, manifest: Manifest) -> list[Step]:
    """The steps converting ``where`` from its stored definition ``old`` to ``field_``."""
    changed = [a for a in ("type",) if old.get(a) != getattr(field_, a)]
    changed += [p for p in CONVERSIONS[1:] if old.get("params", {}).get(p) != field_.params.get(p)]
    plan.refused.append(f"field {where} changed {', '.join(changed)}; converting values is not supported yet: "
                        "revert that change, or add a new field instead")
    return []
