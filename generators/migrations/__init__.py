"""Migration plans as data: diff the last applied manifest against a new one into alembic operations.

Supported: creating the schema from nothing (entities that refer to each other included); *additive*
changes (a new entity, a new optional field, a new index or unique constraint, a new many-to-many
field, label, help and option additions, which need no DDL); field renames (``renamed_from:``: the
column, and the indexes and constraints named after it, get the new name; the data stays). Changes that
depend on the data carry a check that ``check_data`` runs against the database before anything changes:
making a field required (:class:`NullCheck`; ``default``/``backfill`` fill the rows), taking enum options
out (:class:`OptionCheck`; ``map:`` converts the rows), and dropping a field or an entity
(:class:`LossCheck`: destructive, refused while rows would lose data unless data loss is allowed).
Anything else (type changes, entity renames...) is listed in ``Plan.refused`` with the reason.
"""

from .apply import apply_steps, render_sql
from .checks import BackfillFailed, LossCheck, NullCheck, OptionCheck, check_data
from .plan import plan_migration
from .steps import Plan, Step

__all__ = ["Step", "Plan", "NullCheck", "LossCheck", "OptionCheck", "BackfillFailed", "plan_migration", "check_data",
           "apply_steps", "render_sql"]
