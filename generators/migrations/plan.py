"""The diff: the last applied manifest against a new one, into a :class:`~.steps.Plan`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loomcrm.engine.manifest import Manifest

from ..tables import MIGRATIONS_TABLE, build_metadata
from .entities import (
    AddDeferredForeignKeyOp,
    create_table,
    creation_order,
    drop_entities,
    entity_renames,
    refuse_checked_changes,
    rename_entities,
    rename_subscriptions,
    sorted_tables,
    under_new_names,
)
from .fields import diff_fields
from .indexes import diff_indexes
from .steps import Plan, Step


def plan_migration(old: dict[str, Any] | None, new: Manifest, *, has_migrations_table: bool = True) -> Plan:
    """Diff ``old`` (a stored ``Manifest.to_json()``, or None for an empty database) against ``new``.

    New tables come first, referenced tables before the tables that refer to them; a foreign key that
    closes a cycle (two entities referring to each other) is added once both tables exist. Changes to
    existing tables follow, so a new ref column can point at a table created in the same migration.
    Renamed entities (``renamed_from:``) get their new names before anything else, and the rest of the
    diff compares the stored entities under their new names.
    """
    metadata = build_metadata(new)
    plan = Plan(initial=old is None)
    if not has_migrations_table:
        create_table(plan, metadata.tables[MIGRATIONS_TABLE], "Loom's migration history")
    old_entities: dict[str, Any] = (old or {}).get("entities", {})
    renames = entity_renames(plan, old_entities, new)
    if renames:
        plan.steps += rename_entities(renames, old_entities, new)
        if "loom_webhook" in (old or {}).get("system_tables", []):
            plan.steps.append(rename_subscriptions(renames))
        old_entities = under_new_names(old_entities, renames)
    creates: list[tuple[sa.Table, str]] = []
    changes: list[sa.Table] = []
    for table in sorted_tables(metadata.tables.values()):
        if table.name == MIGRATIONS_TABLE:
            continue
        if table.info.get("system"):  # Loom's own tables: created once, by name
            if table.name not in (old or {}).get("system_tables", []):
                creates.append((table, "Loom's own"))
            continue
        if "join" in table.info:
            owner, fname = table.info["loom"].split(".")
            if fname not in old_entities.get(owner, {}).get("fields", {}):
                creates.append((table, f"links of {owner}.{fname}"))
            continue
        entity = new.entities[table.info["loom"]]
        if entity.name not in old_entities:
            creates.append((table, f"entity '{entity.name}'"))
            plan.refresh_rollups |= any(f.rollup is not None for f in entity.fields.values())
        else:
            changes.append(table)
    order, deferred = creation_order([table for table, _ in creates])
    what = {table.name: text for table, text in creates}
    for table in order:
        create_table(plan, table, what[table.name], skip=deferred)
    for fk in deferred:
        plan.steps.append(Step(f"add foreign key {fk.name} on {fk.parent.name}",
                               AddDeferredForeignKeyOp.from_constraint(fk)))
    for table in changes:
        entity = new.entities[table.info["loom"]]
        before = old_entities[entity.name]
        renamed = diff_fields(plan, entity.name, before, entity, table, new)
        diff_indexes(plan, before, entity, table, renamed)
    drop_entities(plan, {n: e for n, e in old_entities.items() if n not in new.entities})
    if renames:
        refuse_checked_changes(plan, renames)
    return plan
