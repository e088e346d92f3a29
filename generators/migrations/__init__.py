"""Migration plans as data: diff the last applied manifest against a new one into alembic operations.

The flow: :func:`plan_migration` (``plan.py``) diffs whole tables (``entities.py``: entity renames, new
entities in an order foreign keys allow, and removed ones), then each kept table field by field (``fields.py``: new
columns, renames, required on and off, options taken out, drops; ``conversions.py``: type, length and
precision changes; ``refs.py``: ``to`` and ``on_delete``) and its indexes (``indexes.py``). Each change is
a :class:`Step` (``steps.py``); a change that depends on the data carries a check (``checks.py`` and the
modules above) that :func:`check_data` runs before anything changes, giving counts and sample ids:

- :class:`NullCheck`: a field becoming required over rows without a value (``default``/``backfill`` fill them);
- :class:`OptionCheck`: enum options taken out (``map:`` converts the rows);
- :class:`LossCheck`: dropping a field or an entity (destructive: refused unless data loss is allowed);
- :class:`ConversionCheck`: values that do not convert to a new type, length or precision;
- :class:`UniqueCheck`: a field or a group of fields becoming unique over rows that share a value;
- :class:`RetargetCheck`: a ref pointing at another entity (destructive: its values are cleared).

:func:`apply_steps` (``apply.py``) runs the steps in the caller's transaction (SQLite: alembic batch mode,
one table copy for consecutive steps); :func:`render_sql` shows their SQL. What cannot be done is listed
in ``Plan.refused`` with the reason, and ``migrate`` then applies nothing.
"""

from .apply import apply_steps, render_sql
from .checks import BackfillFailed, LossCheck, NullCheck, OptionCheck, check_data
from .conversions import ConversionCheck
from .indexes import UniqueCheck
from .plan import plan_migration
from .refs import RetargetCheck
from .steps import Plan, Step

__all__ = ["Step", "Plan", "NullCheck", "LossCheck", "OptionCheck", "ConversionCheck", "UniqueCheck", "RetargetCheck",
           "BackfillFailed", "plan_migration", "check_data", "apply_steps", "render_sql"]
